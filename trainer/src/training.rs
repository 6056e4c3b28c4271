//! The training set of `trainer fit`, held compactly: per labelled event only what encoding
//! needs (each numeric feature as an `f64` and whether it is missing, each categorical one as
//! an index into its column's distinct texts, the label and the split), never the engine's
//! rows. Parquet history (not from a topic) streams through the engine slice by slice
//! (`shared_features::offline::stream`) straight into this form, the encoding fitted as the
//! rows pass ([`FitAccumulator`]), so the history and its rows are never in memory at once;
//! other history, or a Parquet file not in event-time order within the lateness, is computed
//! whole ([`Dataset`]) and then put in the same form.
//!
//! The matrices are those `Dataset::matrix` (now the unit test's oracle) built, bit for bit:
//! the same rows in the same order, encoded by the same arithmetic
//! ([`FittedState::transform`]'s), and the fitted state is the same because the accumulator
//! sums in the same order.

use std::collections::HashMap;

use ndarray::{Array1, Array2};
use shared_features::offline::TimeRange;
use shared_features::offline::stream::{self, StreamError};
use shared_features::time::format_timestamp;
use shared_features::{FitAccumulator, FittedState, Pipeline, Value, eval};

use crate::dataset::{Dataset, Input};

/// Categorical value absent (null, or not text or an integer).
const NONE: u32 = u32::MAX;

/// The labelled events of a history, split and ready to encode.
pub struct Training {
    /// Scaler and vocabularies fitted on the training split.
    pub fitted: FittedState,
    /// The event times found, and how many fall before the cut.
    pub times: TimeRange,
    /// `(table, sha256)` of every lookup and as-of table.
    pub table_digests: Vec<(String, String)>,
    /// Events in the training split.
    pub train_rows: usize,
    /// Events in the validation split.
    pub valid_rows: usize,
    rows: Compact,
}

/// The labelled events, column by column, in event order.
struct Compact {
    train: Vec<bool>,
    labels: Vec<bool>,
    numeric: Vec<Vec<f64>>,
    missing: Vec<Vec<bool>>,
    categorical: Vec<Vec<u32>>,
    /// Per categorical column: its distinct texts, by index, and the index of each.
    texts: Vec<Texts>,
    /// Each event's time, when kept (for the export).
    times: Option<Vec<i64>>,
    /// Each event's key as text (an index into the distinct texts, [`NONE`] for null), when
    /// kept (for the export's `--with-key`).
    keys: Option<(Vec<u32>, Texts)>,
}

/// What the compact training set keeps beyond what fitting needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Keep {
    /// Each event's time.
    pub times: bool,
    /// Each event's key.
    pub keys: bool,
}

/// The index of `text` among `texts`, added if new.
fn intern((all, index): &mut Texts, text: &str) -> u32 {
    match index.get(text) {
        Some(&id) => id,
        None => {
            let id = all.len() as u32;
            all.push(text.into());
            index.insert(text.into(), id);
            id
        }
    }
}

/// A categorical column's distinct texts, by index, and the index of each.
type Texts = (Vec<Box<str>>, HashMap<Box<str>, u32>);

impl Compact {
    fn new(p: &Pipeline, keep: Keep) -> Self {
        let f = &p.features;
        Self {
            times: keep.times.then(Vec::new),
            keys: keep.keys.then(Default::default),
            train: Vec::new(),
            labels: Vec::new(),
            numeric: vec![Vec::new(); f.numeric.len()],
            missing: vec![Vec::new(); f.numeric.len()],
            categorical: vec![Vec::new(); f.categorical.len()],
            texts: vec![Default::default(); f.categorical.len()],
        }
    }

    fn push(&mut self, p: &Pipeline, row: &[Value], train: bool, label: bool) {
        self.train.push(train);
        self.labels.push(label);
        for (i, &c) in p.features.numeric.iter().enumerate() {
            let x = row[c].as_f64();
            self.numeric[i].push(x.unwrap_or(0.0));
            self.missing[i].push(x.is_none());
        }
        let mut buf = String::new();
        for (i, &c) in p.features.categorical.iter().enumerate() {
            // The text `FittedState::transform` looks up.
            let text = shared_features::fitted::category_text(&row[c], &mut buf);
            let id = text.map_or(NONE, |t| intern(&mut self.texts[i], t));
            self.categorical[i].push(id);
        }
        if let Some(times) = &mut self.times {
            times.push(row[p.event_time_col()].as_i64().unwrap_or(i64::MIN));
        }
        if let Some((ids, texts)) = &mut self.keys {
            let id = row[p.key].key_text().map_or(NONE, |k| intern(texts, &k));
            ids.push(id);
        }
    }

    fn len(&self) -> usize {
        self.labels.len()
    }
}

impl Training {
    /// Compute features, split and fit the encoding, streaming the history when it can. Events
    /// without a label (null) are left out of both splits.
    pub fn build(input: &Input, valid_from: i64) -> anyhow::Result<Self> {
        Self::build_keeping(input, valid_from, Keep::default())
    }

    /// [`Training::build`], keeping what `keep` asks for besides.
    pub fn build_keeping(input: &Input, valid_from: i64, keep: Keep) -> anyhow::Result<Self> {
        if input.history.is_none() && stream::streams(&input.events) {
            match Self::streamed(input, valid_from, keep) {
                Ok(t) => return Ok(t),
                Err(Failed::Unordered(e)) => eprintln!("{e}; computing it whole instead"),
                Err(Failed::Other(e)) => return Err(e),
            }
        }
        let data = Dataset::build(input, valid_from)?;
        let p = &input.pipeline;
        let mut rows = Compact::new(p, keep);
        // The rows of each split in event order, as `Dataset::matrix` takes them.
        let mut all: Vec<(usize, bool, bool)> = (data.train.iter().map(|&(i, y)| (i, true, y)))
            .chain(data.valid.iter().map(|&(i, y)| (i, false, y)))
            .collect();
        all.sort_unstable_by_key(|r| r.0);
        for (i, train, y) in all {
            rows.push(p, &data.run.rows[i], train, y);
        }
        Ok(Self {
            fitted: data.fitted,
            times: data.times,
            table_digests: data.run.table_digests,
            train_rows: data.train.len(),
            valid_rows: data.valid.len(),
            rows,
        })
    }

    fn streamed(input: &Input, valid_from: i64, keep: Keep) -> Result<Self, Failed> {
        let p = &input.pipeline;
        let Some(label) = p.label.clone() else {
            return Err(Failed::Other(anyhow::anyhow!(
                "{}: training needs a [label]",
                input.file
            )));
        };
        let et = p.event_time_col();
        let mut rows = Compact::new(p, keep);
        let mut acc = FitAccumulator::new(p);
        let (mut first, mut last, mut events, mut before_cut) = (None::<i64>, None::<i64>, 0, 0);
        let (mut train_rows, mut valid_rows) = (0, 0);
        let run = stream::stream(
            p,
            &input.events,
            &input.base,
            stream::SLICE_ROWS,
            &mut |row, _| {
                let t = row[et].as_i64();
                if let Some(t) = t {
                    first = Some(first.map_or(t, |f| f.min(t)));
                    last = Some(last.map_or(t, |l| l.max(t)));
                    events += 1;
                    before_cut += usize::from(t < valid_from);
                }
                let Some(y) = eval::label(&label, row) else {
                    return Ok(());
                };
                let train = t.unwrap_or(i64::MIN) < valid_from;
                if train {
                    acc.push(p, row);
                    train_rows += 1;
                } else {
                    valid_rows += 1;
                }
                rows.push(p, row, train, y == 1.0);
                Ok(())
            },
        );
        let run = match run {
            Ok(run) => run,
            Err(StreamError::Unordered(e)) => return Err(Failed::Unordered(e.to_string())),
            Err(StreamError::Data(e)) => {
                return Err(Failed::Other(anyhow::Error::new(e).context(format!(
                    "computing features from {}",
                    input.events_source
                ))));
            }
        };
        let times = TimeRange {
            first: first.map(format_timestamp),
            last: last.map(format_timestamp),
            events,
            before_cut,
        }
        .check(p, Some(valid_from), last)
        .map_err(|m| Failed::Other(anyhow::anyhow!("{}: {m}", input.events_source)))?;
        if train_rows == 0 || valid_rows == 0 {
            return Err(Failed::Other(anyhow::anyhow!(
                "{}: empty split: {train_rows} training and {valid_rows} validation events with \
                 a label around valid_from {} (event times from {} to {})",
                input.file,
                format_timestamp(valid_from),
                times.first.as_deref().unwrap_or("-"),
                times.last.as_deref().unwrap_or("-")
            )));
        }
        eprintln!(
            "features streamed: {} records, at most {} held for the lateness",
            run.records, run.held_max
        );
        Ok(Self {
            fitted: acc.finish(p, run.table_digests.clone()),
            times,
            table_digests: run.table_digests,
            train_rows,
            valid_rows,
            rows,
        })
    }

    /// Rows in the training split (`train`) or the validation split.
    fn split_rows(&self, train: bool) -> usize {
        if train {
            self.train_rows
        } else {
            self.valid_rows
        }
    }

    /// The events of a split (`train`) by index, in event order.
    fn split_index(&self, train: bool) -> impl Iterator<Item = usize> + '_ {
        let r = &self.rows;
        (0..r.len()).filter(move |&i| r.train[i] == train)
    }

    /// A split's event times, in event order, when kept ([`Keep::times`]).
    pub fn times(&self, train: bool) -> Option<Vec<i64>> {
        let times = self.rows.times.as_ref()?;
        Some(self.split_index(train).map(|i| times[i]).collect())
    }

    /// A split's keys as text, in event order, when kept ([`Keep::keys`]).
    pub fn keys(&self, train: bool) -> Option<Vec<Option<&str>>> {
        let (ids, (texts, _)) = self.rows.keys.as_ref()?;
        Some(
            self.split_index(train)
                .map(|i| texts.get(ids[i] as usize).map(|t| &**t))
                .collect(),
        )
    }

    /// The labels of a split, in event order.
    pub fn labels(&self, train: bool) -> Vec<bool> {
        let r = &self.rows;
        (0..r.len())
            .filter(|&i| r.train[i] == train)
            .map(|i| r.labels[i])
            .collect()
    }

    /// The encoded matrix and labels of the training split (`train`) or the validation split,
    /// in event order: what `Dataset::matrix` gives, bit for bit (the unit test's oracle).
    pub fn matrix(&self, train: bool) -> (Array2<f64>, Array1<bool>) {
        let e = Encoding::new(self);
        let mut x = Array2::<f64>::zeros((self.split_rows(train), self.fitted.width()));
        let r = &self.rows;
        for (k, i) in (0..r.len()).filter(|&i| r.train[i] == train).enumerate() {
            e.encode(self, i, x.row_mut(k));
        }
        (x, Array1::from(self.labels(train)))
    }

    /// A split's rows for a reader that asks for them in any order (the MLP's shuffled
    /// mini-batches): row `k` of the split's matrix, encoded when asked for.
    pub fn rows(&self, train: bool) -> SplitRows<'_> {
        SplitRows {
            t: self,
            index: self.split_index(train).map(|i| i as u32).collect(),
            encoding: Encoding::new(self),
        }
    }

    /// A split's matrix as blocks encoded one at a time (for the Newton solver and for
    /// scoring), never held whole.
    pub fn blocks(&self, train: bool) -> SplitBlocks<'_> {
        SplitBlocks {
            t: self,
            index: self.split_index(train).map(|i| i as u32).collect(),
            encoding: Encoding::new(self),
        }
    }

    /// One encoded column of a split (slot `j` of the encoding), in event order: the matrix's
    /// column `j`, bit for bit, without the matrix.
    pub fn column(&self, train: bool, j: usize) -> Vec<f64> {
        let (f, r) = (&self.fitted, &self.rows);
        let rows = (0..r.len()).filter(|&i| r.train[i] == train);
        if let Some(s) = f.scalers.get(j) {
            return rows
                .map(|i| {
                    if r.missing[j][i] {
                        0.0
                    } else {
                        (r.numeric[j][i] - s.mean) / s.std
                    }
                })
                .collect();
        }
        // A one-hot slot: which categorical column, and which of its slots.
        let e = Encoding::new(self);
        let mut start = f.scalers.len();
        for (c, v) in f.vocabs.iter().enumerate() {
            let width = v.levels.len() + 1;
            if j < start + width {
                let slot = j - start;
                return rows
                    .map(|i| f64::from(u8::from(e.slot(self, c, i) == slot)))
                    .collect();
            }
            start += width;
        }
        Vec::new()
    }
}

/// How the compact rows encode: each categorical column's slot per distinct text (its level,
/// or `<other>`), found once.
struct Encoding {
    slots: Vec<Vec<usize>>,
}

impl Encoding {
    fn new(t: &Training) -> Self {
        let slots = (t.fitted.vocabs.iter().zip(&t.rows.texts))
            .map(|(v, (texts, _))| texts.iter().map(|t| v.slot(Some(t))).collect())
            .collect();
        Self { slots }
    }

    /// The slot of categorical column `c` that row `i` sets.
    fn slot(&self, t: &Training, c: usize, i: usize) -> usize {
        let id = t.rows.categorical[c][i];
        if id == NONE {
            t.fitted.vocabs[c].slot(None)
        } else {
            self.slots[c][id as usize]
        }
    }

    /// Row `i` encoded into `out` (which must be zeros), as `FittedState::transform` encodes.
    fn encode(&self, t: &Training, i: usize, mut out: ndarray::ArrayViewMut1<f64>) {
        let (f, r) = (&t.fitted, &t.rows);
        for (j, s) in f.scalers.iter().enumerate() {
            out[j] = if r.missing[j][i] {
                0.0
            } else {
                (r.numeric[j][i] - s.mean) / s.std
            };
        }
        let mut start = f.scalers.len();
        for (c, v) in f.vocabs.iter().enumerate() {
            out[start + self.slot(t, c, i)] = 1.0;
            start += v.levels.len() + 1;
        }
    }
}

/// A split of a [`Training`] by row, each encoded when asked for.
pub struct SplitRows<'a> {
    t: &'a Training,
    /// The compact set's index of each row of the split.
    index: Vec<u32>,
    encoding: Encoding,
}

impl SplitRows<'_> {
    /// Row `k` of the split's matrix into `out` (the matrix's width).
    pub fn row(&self, k: usize, out: &mut [f64]) {
        out.fill(0.0);
        self.encoding.encode(
            self.t,
            self.index[k] as usize,
            ndarray::ArrayViewMut1::from(out),
        );
    }

    /// The matrix's width.
    pub fn width(&self) -> usize {
        self.t.fitted.width()
    }
}

/// A split of a [`Training`] as the Newton solver's blocks, each encoded when asked for.
pub struct SplitBlocks<'a> {
    t: &'a Training,
    /// The compact set's index of each row of the split.
    index: Vec<u32>,
    encoding: Encoding,
}

impl crate::newton::Blocks for SplitBlocks<'_> {
    fn dim(&self) -> (usize, usize) {
        (self.index.len(), self.t.fitted.width())
    }

    fn each(&self, f: &mut crate::newton::Visit<'_>) -> Result<(), String> {
        use crate::newton::BLOCK;
        let (n, w) = crate::newton::Blocks::dim(self);
        let mut block = Array2::<f64>::zeros((BLOCK.min(n), w));
        for (b, rows) in self.index.chunks(BLOCK).enumerate() {
            let mut view =
                block.slice_axis_mut(ndarray::Axis(0), ndarray::Slice::from(..rows.len()));
            view.fill(0.0);
            for (out, &i) in view.rows_mut().into_iter().zip(rows) {
                self.encoding.encode(self.t, i as usize, out);
            }
            f(b * BLOCK, view.view())?;
        }
        Ok(())
    }
}

/// Why streaming did not give the training set.
enum Failed {
    /// The file is not in event-time order within the lateness: compute it whole.
    Unordered(String),
    Other(anyhow::Error),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The fixture flights with their pipeline, fetched, and the validation cut the tests use.
    fn fixtures() -> (Input, i64) {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let pipeline = repo.join("data/flights/pipeline.toml");
        let base = repo.join("data/flights/fixtures");
        let mut input = Input::load(&pipeline, Some(&base), None, None).unwrap();
        input.fetch().unwrap();
        let cut = input.valid_from(Some("2013-01-03")).unwrap();
        (input, cut)
    }

    /// On the fixture flights, computed whole: the compact set's matrices are the rows'
    /// encoding, bit for bit, in the same order, and its fitted state is the same.
    #[test]
    fn compact_matrices_are_the_encoded_rows() {
        let (input, cut) = fixtures();
        let data = Dataset::build(&input, cut).unwrap();
        let t = Training::build(&input, cut).unwrap();
        assert_eq!(t.fitted, data.fitted);
        let p = &input.pipeline;
        assert!(!p.features.categorical.is_empty() && !p.features.numeric.is_empty());
        for (train, split) in [(true, &data.train), (false, &data.valid)] {
            let (x, y) = t.matrix(train);
            let (x0, y0) = data.matrix(p, split);
            assert!(x.nrows() > 500, "{}", x.nrows());
            assert_eq!(y, y0);
            assert_eq!(x.dim(), x0.dim());
            let bits = |a: &Array2<f64>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&x), bits(&x0), "split train={train}");
        }
    }

    /// The blocks the Newton solver reads, and each column the drift reference reads, are the
    /// matrix's, bit for bit; so the fit from blocks is the fit from the matrix held whole.
    #[test]
    fn blocks_and_columns_are_the_matrix_and_fit_alike() {
        use crate::newton::{BLOCK, Blocks};
        let (input, cut) = fixtures();
        let t = Training::build(&input, cut).unwrap();
        let bits = |a: ndarray::ArrayView2<f64>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for train in [true, false] {
            let (x, y) = t.matrix(train);
            assert_eq!(t.labels(train), y.to_vec());
            let mut starts = Vec::new();
            let mut joined = Vec::new();
            t.blocks(train)
                .each(&mut |first, rows| {
                    starts.push(first);
                    joined.extend(bits(rows));
                    Ok(())
                })
                .unwrap();
            assert_eq!(joined, bits(x.view()), "train={train}");
            assert_eq!(starts, (0..x.nrows()).step_by(BLOCK).collect::<Vec<_>>());
            for j in 0..x.ncols() {
                let column: Vec<u64> = t.column(train, j).iter().map(|v| v.to_bits()).collect();
                let want: Vec<u64> = x.column(j).iter().map(|v| v.to_bits()).collect();
                assert_eq!(column, want, "train={train} column {j}");
            }
        }
        // Unit tests cut blocks of 256 rows, so the fixtures make several.
        let (x, y) = t.matrix(true);
        assert!(x.nrows() > 3 * BLOCK, "{}", x.nrows());
        let whole = crate::newton::fit(&x.view(), &y.to_vec(), 1.0, 50, 1e-9).unwrap();
        let blocks = crate::newton::fit(&t.blocks(true), &t.labels(true), 1.0, 50, 1e-9).unwrap();
        assert!(whole.iterations > 1);
        assert_eq!(blocks.iterations, whole.iterations);
        assert_eq!(blocks.intercept.to_bits(), whole.intercept.to_bits());
        let w = |f: &crate::newton::Fit| f.weights.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(w(&blocks), w(&whole));

        // The MLP's rows, asked for one at a time in shuffled order, are the matrix's too, and
        // so is what it learns from them.
        let rows = t.rows(true);
        let mut row = vec![0.0; rows.width()];
        for k in 0..x.nrows() {
            rows.row(k, &mut row);
            let want: Vec<u64> = x.row(k).iter().map(|v| v.to_bits()).collect();
            assert_eq!(
                row.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want,
                "row {k}"
            );
        }
        let p = mlp::Params {
            hidden: vec![4],
            epochs: 2,
            batch_size: 64,
            learning_rate: 0.01,
            weight_decay: 0.0,
            seed: 3,
            threshold: 0.5,
        };
        let flat: Vec<f64> = x.iter().copied().collect();
        let held = mlp::fit(&flat, x.ncols(), &y.to_vec(), &p, |_, _| {}).unwrap();
        let asked = mlp::fit_rows(
            &|k, out| rows.row(k, out),
            rows.width(),
            &t.labels(true),
            &p,
            |_, _| {},
        )
        .unwrap();
        assert_eq!(asked, held);
    }
}
