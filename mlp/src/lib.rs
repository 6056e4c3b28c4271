//! The burn multilayer perceptron: dense layers with ReLU, a logistic output, trained with
//! burn's autodiff backend over its ndarray backend on the CPU (Adam, binary cross-entropy on
//! logits, shuffled mini-batches).
//!
//! Training is reproducible bit for bit: weights are initialised and batches shuffled from the
//! `seed` by our own generator (burn's backend generator is one process-wide state that
//! concurrent fits would share), and the ndarray backend runs single-threaded.
//!
//! The fitted weights become a [`MlpModel`], which the scorer evaluates without burn;
//! [`predict`] runs the same weights on burn's ndarray backend so that tests can hold the two
//! forward passes against each other.

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::Linear;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use shared_models::{DenseLayer, MAX_WIDTH, MlpModel};

type Train = Autodiff<NdArray<f32>>;
type Serve = NdArray<f32>;

/// Hyperparameters of a fit (serialised into the bundle's manifest).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Params {
    /// Widths of the hidden layers, input side first.
    pub hidden: Vec<usize>,
    /// Passes over the training rows.
    pub epochs: usize,
    /// Rows per gradient step.
    pub batch_size: usize,
    /// Adam's step size.
    pub learning_rate: f64,
    /// L2 penalty added to the gradients (0 for none).
    pub weight_decay: f64,
    /// Seed of the initial weights and the batch order.
    pub seed: u64,
    /// Decision threshold stored with the model.
    pub threshold: f64,
}

/// The network: `layers.len() - 1` hidden layers with ReLU, then one logit.
#[derive(Module, Debug)]
struct Net<B: Backend> {
    layers: Vec<Linear<B>>,
}

impl<B: Backend> Net<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.layers.len().saturating_sub(1);
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h);
            if i < last {
                h = relu(h);
            }
        }
        h
    }

    fn from_model(model: &MlpModel, device: &B::Device) -> Self {
        let layers = model
            .layers
            .iter()
            .map(|l| {
                dense(
                    l.weights.clone(),
                    l.bias.clone(),
                    l.inputs,
                    l.outputs,
                    device,
                )
            })
            .collect();
        Self { layers }
    }

    fn to_model(&self, threshold: f64) -> Result<MlpModel, String> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let w = l.weight.val();
            let [inputs, outputs] = w.dims();
            let weights = w
                .into_data()
                .to_vec::<f32>()
                .map_err(|e| format!("{e:?}"))?;
            let bias = match &l.bias {
                Some(b) => b
                    .val()
                    .into_data()
                    .to_vec::<f32>()
                    .map_err(|e| format!("{e:?}"))?,
                None => vec![0.0; outputs],
            };
            layers.push(DenseLayer {
                inputs,
                outputs,
                weights,
                bias,
            });
        }
        Ok(MlpModel { layers, threshold })
    }
}

fn dense<B: Backend>(
    weights: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
    device: &B::Device,
) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(weights, [inputs, outputs]),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bias, [outputs]),
            device,
        ))),
    }
}

/// SplitMix64: small, fast, and the same sequence on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-k, k)`.
    fn symmetric(&mut self, k: f32) -> f32 {
        let unit = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * unit - 1.0) * k
    }

    /// Fisher-Yates.
    fn shuffle(&mut self, v: &mut [usize]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Check hyperparameters; the trainer calls this before reading any data.
pub fn check(p: &Params) -> Result<(), String> {
    if p.hidden.iter().any(|&h| h == 0 || h > MAX_WIDTH) {
        return Err(format!(
            "hidden layer widths must be between 1 and {MAX_WIDTH}, got {:?}",
            p.hidden
        ));
    }
    if p.epochs == 0 || p.batch_size == 0 {
        return Err("epochs and batch_size must be positive".into());
    }
    if !(p.learning_rate > 0.0 && p.learning_rate.is_finite()) {
        return Err(format!(
            "learning_rate must be positive, got {}",
            p.learning_rate
        ));
    }
    if !(p.weight_decay >= 0.0 && p.weight_decay.is_finite()) {
        return Err(format!("weight_decay must be >= 0, got {}", p.weight_decay));
    }
    if !(0.0..=1.0).contains(&p.threshold) {
        return Err(format!("threshold must be in [0, 1], got {}", p.threshold));
    }
    Ok(())
}

/// Fit on `x` (row-major, `cols` values per row) and labels `y`. `on_epoch(epoch, mean loss)`
/// is called after every pass. Deterministic: the same inputs and seed give the same weights,
/// bit for bit.
pub fn fit(
    x: &[f64],
    cols: usize,
    y: &[bool],
    p: &Params,
    on_epoch: impl FnMut(usize, f64),
) -> Result<MlpModel, String> {
    if y.is_empty() || cols == 0 || x.len() != y.len() * cols {
        return Err(format!(
            "{} values do not make {} rows of {cols} features",
            x.len(),
            y.len()
        ));
    }
    fit_rows(
        &|i, out: &mut [f64]| out.copy_from_slice(&x[i * cols..(i + 1) * cols]),
        cols,
        y,
        p,
        on_epoch,
    )
}

/// [`fit`] with the rows given one at a time: `row(i, out)` writes row `i`'s `cols` values
/// into `out`. Each epoch's shuffled mini-batches ask for their rows as they are formed, so
/// the matrix need not be held: the trainer encodes each row from its compact training set.
/// The same rows give the same weights as [`fit`], bit for bit.
pub fn fit_rows(
    row: &dyn Fn(usize, &mut [f64]),
    cols: usize,
    y: &[bool],
    p: &Params,
    mut on_epoch: impl FnMut(usize, f64),
) -> Result<MlpModel, String> {
    check(p)?;
    let rows = y.len();
    if rows == 0 || cols == 0 {
        return Err(format!("{rows} rows of {cols} features"));
    }
    let mut values = vec![0.0; cols];
    for i in 0..rows {
        row(i, &mut values);
        if let Some(j) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "row {i} feature {j} is {}: the MLP needs finite inputs",
                values[j]
            ));
        }
    }
    let device = Default::default();
    let mut rng = Rng(p.seed);
    let mut widths = vec![cols];
    widths.extend(&p.hidden);
    widths.push(1);
    let layers = widths
        .windows(2)
        .enumerate()
        .map(|(i, io)| {
            let (inputs, outputs) = (io[0], io[1]);
            // He for layers feeding a ReLU, Glorot for the logit.
            let k = if i + 2 < widths.len() {
                (6.0 / inputs as f32).sqrt()
            } else {
                (6.0 / (inputs + outputs) as f32).sqrt()
            };
            let weights = (0..inputs * outputs).map(|_| rng.symmetric(k)).collect();
            dense::<Train>(weights, vec![0.0; outputs], inputs, outputs, &device)
        })
        .collect();
    let mut net = Net { layers };
    let mut adam = AdamConfig::new();
    if p.weight_decay > 0.0 {
        adam = adam.with_weight_decay(Some(WeightDecayConfig::new(p.weight_decay as f32)));
    }
    let mut optim = adam.init::<Train, Net<Train>>();

    let mut order: Vec<usize> = (0..rows).collect();
    let mut xb = Vec::with_capacity(p.batch_size * cols);
    let mut yb = Vec::with_capacity(p.batch_size);
    for epoch in 1..=p.epochs {
        rng.shuffle(&mut order);
        let mut total = 0.0;
        for batch in order.chunks(p.batch_size) {
            xb.clear();
            yb.clear();
            for &i in batch {
                row(i, &mut values);
                xb.extend(values.iter().map(|&v| v as f32));
                yb.push(if y[i] { 1.0f32 } else { 0.0 });
            }
            let n = batch.len();
            let xt = Tensor::<Train, 2>::from_data(TensorData::new(xb.clone(), [n, cols]), &device);
            let yt = Tensor::<Train, 2>::from_data(TensorData::new(yb.clone(), [n, 1]), &device);
            let loss = logistic_loss(net.forward(xt), yt);
            total += f64::from(loss.clone().into_scalar()) * n as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(p.learning_rate, net, grads);
        }
        let mean = total / rows as f64;
        if !mean.is_finite() {
            return Err(format!(
                "training diverged in epoch {epoch} (loss {mean}); lower learning_rate"
            ));
        }
        on_epoch(epoch, mean);
    }
    net.valid().to_model(p.threshold)
}

/// Mean binary cross-entropy of logits `z` against 0/1 targets `y`, in the form that does not
/// overflow: `max(z, 0) - z y + ln(1 + e^-|z|)`.
fn logistic_loss<B: Backend>(z: Tensor<B, 2>, y: Tensor<B, 2>) -> Tensor<B, 1> {
    let soft = z.clone().abs().neg().exp().log1p();
    (relu(z.clone()) - z * y + soft).mean()
}

/// Probabilities from burn's ndarray backend for rows of `x` (row-major, `cols` per row).
pub fn predict(model: &MlpModel, x: &[f64], cols: usize) -> Result<Vec<f64>, String> {
    model.validate()?;
    if cols != model.inputs() || cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(format!(
            "{} values are not rows of the model's {} inputs",
            x.len(),
            model.inputs()
        ));
    }
    let device = Default::default();
    let net = Net::<Serve>::from_model(model, &device);
    let mut out = Vec::with_capacity(x.len() / cols);
    for chunk in x.chunks(4096 * cols) {
        let rows = chunk.len() / cols;
        let data: Vec<f32> = chunk.iter().map(|&v| v as f32).collect();
        let xt = Tensor::<Serve, 2>::from_data(TensorData::new(data, [rows, cols]), &device);
        let p = burn::tensor::activation::sigmoid(net.forward(xt));
        let v = p
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        out.extend(v.into_iter().map(f64::from));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            hidden: vec![8],
            epochs: 30,
            batch_size: 32,
            learning_rate: 0.01,
            weight_decay: 0.0,
            seed: 7,
            threshold: 0.5,
        }
    }

    /// XOR of the signs of two inputs, plus a noise column: no linear model separates it.
    fn xor(n: usize) -> (Vec<f64>, Vec<bool>) {
        let mut rng = Rng(99);
        let mut x = Vec::with_capacity(n * 3);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let (a, b, c) = (rng.symmetric(1.0), rng.symmetric(1.0), rng.symmetric(1.0));
            x.extend([f64::from(a), f64::from(b), f64::from(c)]);
            y.push((a > 0.0) != (b > 0.0));
        }
        (x, y)
    }

    #[test]
    fn learns_xor_reproducibly_and_burn_agrees_with_the_served_forward_pass() {
        let (x, y) = xor(1000);
        let mut losses = Vec::new();
        let a = fit(&x, 3, &y, &params(), |_, l| losses.push(l)).unwrap();
        let b = fit(&x, 3, &y, &params(), |_, _| {}).unwrap();
        assert_eq!(a, b, "same data and seed, same weights bit for bit");
        let c = fit(
            &x,
            3,
            &y,
            &Params {
                seed: 8,
                ..params()
            },
            |_, _| {},
        )
        .unwrap();
        assert_ne!(a, c, "the seed matters");
        assert_eq!(losses.len(), 30);
        assert!(
            losses[29] < losses[0] * 0.5,
            "loss falls: {:?}",
            (losses[0], losses[29])
        );

        let burn = predict(&a, &x, 3).unwrap();
        let mut right = 0;
        for (i, p) in burn.iter().enumerate() {
            let served = a.predict_proba(&x[i * 3..i * 3 + 3]);
            assert!(
                (served - p).abs() < 1e-5,
                "row {i}: served {served}, burn ndarray {p}"
            );
            right += usize::from(a.decide(served) == y[i]);
        }
        assert!(right >= 900, "{right}/1000 right on XOR");
    }

    #[test]
    fn bad_input_is_refused_with_its_place() {
        let (mut x, y) = xor(10);
        assert!(
            check(&Params {
                hidden: vec![0],
                ..params()
            })
            .is_err()
        );
        assert!(
            fit(
                &x,
                3,
                &y,
                &Params {
                    learning_rate: -1.0,
                    ..params()
                },
                |_, _| {}
            )
            .unwrap_err()
            .contains("learning_rate")
        );
        assert!(
            fit(&x, 4, &y, &params(), |_, _| {})
                .unwrap_err()
                .contains("10 rows of 4")
        );
        x[7] = f64::NAN;
        assert_eq!(
            fit(&x, 3, &y, &params(), |_, _| {}).unwrap_err(),
            "row 2 feature 1 is NaN: the MLP needs finite inputs"
        );
    }
}
