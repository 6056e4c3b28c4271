//! L2-regularised logistic regression by Newton's method (iteratively reweighted least
//! squares), the trainer's default solver.
//!
//! It minimises the same objective as linfa-logistic, `sum(log loss) + alpha/2 |w|^2` with the
//! intercept unpenalised, so `alpha` means the same with either solver. With tens of features the
//! Hessian is small: each iteration is one pass that builds `X' diag(p (1 - p)) X` (a matrix
//! product, where the time goes) and one Cholesky solve, and it converges in a handful of
//! iterations where L-BFGS takes hundreds of cheaper ones. Deterministic: no randomness, and the
//! same operations in the same order on every run.

use ndarray::{Array1, Array2, ArrayView2, Axis, Slice};

use shared_models::sigmoid;

/// Rows per block: the solver's unit of work, and all it needs of the matrix at once (fewer in
/// unit tests, so that the fixtures make several blocks).
pub const BLOCK: usize = if cfg!(test) { 256 } else { 4096 };

/// What is done with a block: given its first row and its rows; an error stops the pass.
pub type Visit<'a> = dyn FnMut(usize, ArrayView2<f64>) -> Result<(), String> + 'a;

/// The training matrix as the solver reads it: in blocks of [`BLOCK`] rows (the last may be
/// shorter), in order, once per pass. A matrix held whole is one; the trainer's compact training
/// set encodes each block as it is asked for, so the matrix is never held (`training.rs`).
pub trait Blocks {
    /// Rows and columns.
    fn dim(&self) -> (usize, usize);

    /// Call `f` with each block's first row and the block, in order; stop at its first error.
    fn each(&self, f: &mut Visit<'_>) -> Result<(), String>;
}

impl Blocks for ArrayView2<'_, f64> {
    fn dim(&self) -> (usize, usize) {
        ArrayView2::dim(self)
    }

    fn each(&self, f: &mut Visit<'_>) -> Result<(), String> {
        for (k, rows) in self.axis_chunks_iter(Axis(0), BLOCK).enumerate() {
            f(k * BLOCK, rows)?;
        }
        Ok(())
    }
}

/// What the solver found.
#[derive(Debug)]
pub struct Fit {
    /// One weight per column.
    pub weights: Vec<f64>,
    /// The intercept.
    pub intercept: f64,
    /// Newton steps taken.
    pub iterations: u64,
}

/// Fit `p(y) = sigmoid(x w + b)`. Stops when the gradient's Euclidean norm is at most
/// `tolerance`, when a step no longer lowers the objective, or after `max_iterations`.
///
/// Memory beyond `x` is a few numbers per row (labels, logits, probabilities) and one block:
/// `x` is read block by block, so it need not be held whole. The blocks are cut at the same
/// rows however `x` gives them, so the result is the same bits either way.
pub fn fit(
    x: &dyn Blocks,
    y: &[bool],
    alpha: f64,
    max_iterations: u64,
    tolerance: f64,
) -> Result<Fit, String> {
    let (n, d) = x.dim();
    if n == 0 || n != y.len() {
        return Err(format!("{n} rows for {} labels", y.len()));
    }
    x.each(
        &mut |first, rows| match rows.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            Some((i, v)) => Err(format!(
                "row {} feature {} is {v}: logistic regression needs finite inputs",
                first + i / d.max(1),
                i % d.max(1)
            )),
            None => Ok(()),
        },
    )?;
    let target: Array1<f64> = y.iter().map(|&b| f64::from(u8::from(b))).collect();
    // The intercept is the last coefficient. Each block gets a column of ones appended in a
    // scratch block, so memory beyond the input is one block, not another copy of the matrix.
    let logits = |beta: &Array1<f64>| -> Result<Array1<f64>, String> {
        let w = beta.slice_axis(Axis(0), Slice::from(..d));
        let mut z = Array1::<f64>::zeros(n);
        x.each(&mut |first, rows| {
            let mut out = z.slice_axis_mut(Axis(0), Slice::from(first..first + rows.nrows()));
            out.assign(&(rows.dot(&w) + beta[d]));
            Ok(())
        })?;
        Ok(z)
    };
    let mut beta = Array1::<f64>::zeros(d + 1);
    // The objective, with the logits it was computed from (the next step's weights need them).
    let objective = |beta: &Array1<f64>| -> Result<(f64, Array1<f64>), String> {
        let z = logits(beta)?;
        let loss: f64 = z
            .iter()
            .zip(&target)
            // log(1 + e^z) - y z, in the form that does not overflow.
            .map(|(&z, &t)| z.max(0.0) + (-z.abs()).exp().ln_1p() - t * z)
            .sum();
        let penalty = 0.5 * alpha * beta.iter().take(d).map(|b| b * b).sum::<f64>();
        Ok((loss + penalty, z))
    };
    let (mut current, mut z) = objective(&beta)?;
    let mut iterations = 0;
    let mut block = Array2::<f64>::zeros((BLOCK, d + 1));
    while iterations < max_iterations {
        let p = z.mapv(sigmoid);
        let residual = &p - &target;
        let mut grad = Array1::<f64>::zeros(d + 1);
        // H = X' W X + alpha I (intercept unpenalised), W = p (1 - p): each block's rows are
        // scaled by sqrt(W) so that its share is one symmetric matrix product.
        let mut h = Array2::<f64>::zeros((d + 1, d + 1));
        x.each(&mut |first, rows| {
            let m = rows.nrows();
            let mut b = block.slice_axis_mut(Axis(0), Slice::from(..m));
            for (i, (mut out, row)) in b.rows_mut().into_iter().zip(rows.rows()).enumerate() {
                let (pi, ri) = (p[first + i], residual[first + i]);
                let root_w = (pi * (1.0 - pi)).sqrt();
                for (j, v) in row.iter().enumerate() {
                    out[j] = v * root_w;
                    grad[j] += ri * v;
                }
                out[d] = root_w;
                grad[d] += ri;
            }
            ndarray::linalg::general_mat_mul(1.0, &b.t(), &b, 1.0, &mut h);
            Ok(())
        })?;
        for j in 0..d {
            grad[j] += alpha * beta[j];
            h[(j, j)] += alpha;
        }
        if grad.dot(&grad).sqrt() <= tolerance {
            break;
        }
        let step = solve_spd(h, &grad)?;
        // Halve the step until the objective falls (a pure Newton step almost always does).
        let mut t = 1.0;
        let mut improved = None;
        for _ in 0..30 {
            let trial = &beta - &(&step * t);
            let (value, trial_z) = objective(&trial)?;
            if value.is_finite() && value < current {
                improved = Some((trial, value, trial_z));
                break;
            }
            t *= 0.5;
        }
        iterations += 1;
        match improved {
            Some((b, value, trial_z)) => {
                let gain = current - value;
                beta = b;
                current = value;
                z = trial_z;
                // At the limit of floating point: a relative gain of 1e-15 is rounding.
                if gain <= 1e-15 * current.abs().max(1.0) {
                    break;
                }
            }
            None => break,
        }
    }
    Ok(Fit {
        weights: beta.iter().take(d).copied().collect(),
        intercept: beta[d],
        iterations,
    })
}

/// Solve `a x = b` for a symmetric positive definite `a` by Cholesky. A matrix that is only
/// semi-definite (a constant column with `alpha = 0`) gets the smallest ridge that makes the
/// factorisation succeed.
fn solve_spd(a: Array2<f64>, b: &Array1<f64>) -> Result<Array1<f64>, String> {
    let n = b.len();
    let scale = (0..n).map(|i| a[(i, i)].abs()).fold(0.0, f64::max).max(1.0);
    let mut ridge = 0.0;
    for _ in 0..12 {
        if let Some(l) = cholesky(&a, ridge) {
            // Forward then back substitution: L y = b, L' x = y.
            let mut y = b.clone();
            for i in 0..n {
                let mut v = y[i];
                for k in 0..i {
                    v -= l[(i, k)] * y[k];
                }
                y[i] = v / l[(i, i)];
            }
            for i in (0..n).rev() {
                let mut v = y[i];
                for k in i + 1..n {
                    v -= l[(k, i)] * y[k];
                }
                y[i] = v / l[(i, i)];
            }
            return Ok(y);
        }
        ridge = if ridge == 0.0 {
            scale * 1e-12
        } else {
            ridge * 100.0
        };
    }
    Err("the Hessian is not positive definite even with a ridge; are there NaN features?".into())
}

fn cholesky(a: &Array2<f64>, ridge: f64) -> Option<Array2<f64>> {
    let n = a.nrows();
    let mut l = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..=i {
            let mut v = a[(i, j)] + if i == j { ridge } else { 0.0 };
            for k in 0..j {
                v -= l[(i, k)] * l[(j, k)];
            }
            if i == j {
                if v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[(i, i)] = v.sqrt();
            } else {
                l[(i, j)] = v / l[(j, j)];
            }
        }
    }
    Some(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_a_small_system() {
        let a = ndarray::arr2(&[[4.0, 2.0], [2.0, 3.0]]);
        let x = solve_spd(a.clone(), &ndarray::arr1(&[2.0, 1.0])).unwrap();
        let back = a.dot(&x);
        assert!(
            (back[0] - 2.0).abs() < 1e-12 && (back[1] - 1.0).abs() < 1e-12,
            "{x}"
        );
    }

    #[test]
    fn reaches_the_optimum_where_the_gradient_vanishes() {
        // Overlapping classes, so the optimum is finite even with alpha = 0.
        let n = 400;
        let x = Array2::from_shape_fn((n, 2), |(i, j)| {
            let t = i as f64 / n as f64;
            if j == 0 {
                t
            } else {
                ((i * 37) % 11) as f64 / 11.0
            }
        });
        let y: Vec<bool> = (0..n).map(|i| (i * 7919) % 100 < i * 100 / n).collect();
        for alpha in [0.0, 1.0] {
            let f = fit(&x.view(), &y, alpha, 100, 1e-9).unwrap();
            // The gradient of the objective at the answer, computed from scratch.
            let mut g = [0.0; 3];
            for i in 0..n {
                let z = f.intercept + f.weights[0] * x[(i, 0)] + f.weights[1] * x[(i, 1)];
                let r = sigmoid(z) - f64::from(u8::from(y[i]));
                g[0] += r * x[(i, 0)];
                g[1] += r * x[(i, 1)];
                g[2] += r;
            }
            g[0] += alpha * f.weights[0];
            g[1] += alpha * f.weights[1];
            let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!(
                norm < 1e-6,
                "alpha {alpha}: gradient {g:?} after {} steps",
                f.iterations
            );
            assert!(f.iterations < 20, "{}", f.iterations);
            assert!(f.weights[0] > 1.0, "the label rises with x0: {f:?}");
        }
    }

    #[test]
    fn non_finite_inputs_are_refused_with_their_place() {
        let mut x = Array2::<f64>::zeros((3, 2));
        x[(1, 1)] = f64::INFINITY;
        let err = fit(&x.view(), &[true, false, true], 1.0, 10, 1e-6).unwrap_err();
        assert_eq!(
            err,
            "row 1 feature 1 is inf: logistic regression needs finite inputs"
        );
    }
}
