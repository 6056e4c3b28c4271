//! A bundle made ready to serve: the checked pipeline, its tables, the fitted feature state and
//! the model, all validated against the manifest.

use std::sync::Arc;

use shared_features::{FittedState, Pipeline, Tables, fingerprint};

use crate::bundle::{Bundle, FORMAT};
use crate::error::RegistryError;
use crate::predictor::Predictor;

/// The bundle file of the reference distributions ([`crate::drift::Reference`]).
pub const REFERENCE: &str = "reference.json";

/// The bundle file that carries the table `name` (a `[[lookup]]` or `[[asof]]` of the pipeline).
pub fn bundle_table_file(name: &str) -> String {
    format!("table-{name}.csv")
}

/// Everything the scorer needs to turn an event into a score.
#[derive(Debug)]
pub struct Servable {
    /// `name@version`.
    pub id: String,
    /// The model's name.
    pub name: String,
    /// The model's version.
    pub version: u64,
    /// The feature fingerprint, recomputed from the bundle and equal to the manifest's.
    pub fingerprint: String,
    /// The pipeline, checked.
    pub pipeline: Arc<Pipeline>,
    /// Its lookup and as-of tables.
    pub tables: Arc<Tables>,
    /// Scalers and vocabularies.
    pub fitted: FittedState,
    /// The model.
    pub model: Predictor,
    /// Validation metrics recorded at training time (`auc`, ...).
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// The training split's distributions of the inputs and the score (`reference.json`);
    /// `None` for a bundle published before there were any (drift is then unavailable).
    pub reference: Option<crate::drift::Reference>,
    /// The bundle's part of every prediction record, as JSON (see
    /// [`crate::prediction::write_prediction`]): written once, not per event.
    pub(crate) lineage_json: Box<str>,
}

impl Servable {
    /// Validate a fetched bundle (whose checksums [`crate::Registry::fetch`] has checked): the
    /// manifest's format is one this build reads, the pipeline parses, the fitted state matches
    /// the pipeline's features and is finite (standard deviations positive, vocabularies sorted),
    /// the tables match the digests the features were fitted with, the fingerprint recomputed
    /// from the bundle equals the manifest's, the model passes [`Predictor::validate`] (shapes,
    /// finite and bounded parameters, threshold in [0, 1]), and its inputs equal the input
    /// signature. Each refusal names the file, the parameter and the value.
    pub fn from_bundle(b: &Bundle) -> Result<Self, RegistryError> {
        let m = &b.manifest;
        let id = m.id();
        let bad = |message: String| RegistryError::Invalid {
            model: id.clone(),
            message,
        };
        let file = |name: &str| {
            b.file(name)
                .ok_or_else(|| bad(format!("the bundle has no `{name}`")))
        };
        if m.format != FORMAT {
            return Err(bad(format!(
                "{}: format {} is not one this build reads ({FORMAT})",
                crate::MANIFEST,
                m.format
            )));
        }
        let text = std::str::from_utf8(file("pipeline.toml")?)
            .map_err(|e| bad(format!("pipeline.toml: {e}")))?;
        let pipeline = Pipeline::parse(text, "pipeline.toml").map_err(|e| bad(e.to_string()))?;
        let fitted: FittedState = serde_json::from_slice(file("fitted.json")?)
            .map_err(|e| bad(format!("fitted.json: {e}")))?;
        check_fitted(&pipeline, &fitted).map_err(|e| bad(format!("fitted.json: {e}")))?;
        if !Predictor::KINDS.contains(&m.kind.as_str()) {
            return Err(bad(format!(
                "{}: unknown model kind `{}` (known: {})",
                crate::MANIFEST,
                m.kind,
                Predictor::KINDS.join(", ")
            )));
        }
        let model = Predictor::from_json(&m.kind, file("model.json")?)
            .map_err(|e| bad(format!("model.json: {e}")))?;
        let names: Vec<(String, String)> = pipeline
            .table_paths()
            .map(|(n, p)| (n.to_string(), p.to_string()))
            .collect();
        let tables = Tables::load(&pipeline, |path| {
            let name = names
                .iter()
                .find(|(_, p)| p == path)
                .map(|(n, _)| n.as_str())
                .unwrap_or(path);
            let f = bundle_table_file(name);
            b.file(&f)
                .map(|bytes| bytes.to_vec())
                .ok_or_else(|| format!("the bundle has no `{f}`"))
        })
        .map_err(|e| bad(e.to_string()))?;
        if tables.digests != fitted.tables {
            return Err(bad(format!(
                "tables {:?} differ from those the features were fitted with {:?}",
                tables.digests, fitted.tables
            )));
        }
        let fp = fingerprint(&pipeline, &fitted);
        if fp != m.feature_fingerprint {
            return Err(bad(format!(
                "feature fingerprint {fp} of the bundle's pipeline and state differs from the \
                 manifest's {}",
                m.feature_fingerprint
            )));
        }
        check_signature(&fitted.names(), &m.input_signature, &model)
            .map_err(|e| bad(format!("input signature: {e}")))?;
        let reference = match b.file(REFERENCE) {
            None => None,
            Some(bytes) => {
                let r: crate::drift::Reference =
                    serde_json::from_slice(bytes).map_err(|e| bad(format!("{REFERENCE}: {e}")))?;
                let names: Vec<&str> = r.inputs.iter().map(|d| d.name.as_str()).collect();
                if names != m.input_signature {
                    return Err(bad(format!(
                        "{REFERENCE}: its inputs {names:?} are not the input signature {:?}",
                        m.input_signature
                    )));
                }
                Some(r)
            }
        };
        let lineage_json = crate::prediction::lineage_json(&m.name, m.version, &fp);
        Ok(Self {
            lineage_json,
            name: m.name.clone(),
            version: m.version,
            id,
            fingerprint: fp,
            pipeline: Arc::new(pipeline),
            tables: Arc::new(tables),
            fitted,
            model,
            metrics: m.metrics.clone(),
            reference,
        })
    }
}

/// The fitted state belongs to the pipeline (one scaler per numeric feature, one vocabulary per
/// categorical feature, by name and in order) and encodes without NaN or infinities: means
/// finite, standard deviations finite and positive, levels sorted and distinct (the encoder
/// finds them by binary search).
fn check_fitted(p: &Pipeline, f: &FittedState) -> Result<(), String> {
    let names = |cols: &[usize]| -> Vec<String> {
        cols.iter()
            .map(|&c| {
                p.layout
                    .get(c)
                    .map_or(String::new(), |col| col.name.clone())
            })
            .collect()
    };
    let (numeric, categorical) = (names(&p.features.numeric), names(&p.features.categorical));
    let columns = |what: &str, got: Vec<&String>, want: &[String]| {
        if got.len() != want.len() {
            return Err(format!(
                "{} {what} for the pipeline's {} features",
                got.len(),
                want.len()
            ));
        }
        match got.iter().zip(want).position(|(g, w)| *g != w) {
            Some(i) => Err(format!(
                "{what}[{i}] is for `{}` but the pipeline's feature there is `{}`",
                got[i], want[i]
            )),
            None => Ok(()),
        }
    };
    columns(
        "scalers",
        f.scalers.iter().map(|s| &s.column).collect(),
        &numeric,
    )?;
    columns(
        "vocabs",
        f.vocabs.iter().map(|v| &v.column).collect(),
        &categorical,
    )?;
    for (i, s) in f.scalers.iter().enumerate() {
        if !s.mean.is_finite() {
            return Err(format!(
                "scalers[{i}] ({}): mean is {:?}; it must be finite",
                s.column, s.mean
            ));
        }
        if !(s.std.is_finite() && s.std > 0.0) {
            return Err(format!(
                "scalers[{i}] ({}): std is {:?}; a scale must be finite and positive",
                s.column, s.std
            ));
        }
    }
    for (i, v) in f.vocabs.iter().enumerate() {
        if let Some(j) = v.levels.windows(2).position(|w| w[0] >= w[1]) {
            return Err(format!(
                "vocabs[{i}] ({}): levels[{}] `{}` does not come after `{}`; levels are sorted \
                 and distinct",
                v.column,
                j + 1,
                v.levels[j + 1],
                v.levels[j]
            ));
        }
    }
    Ok(())
}

/// The three descriptions of the input vector agree: the slots `fitted.json` encodes (which the
/// feature fingerprint covers), the manifest's input signature, and what `model.json` takes.
/// When they do not, say which one differs and how.
fn check_signature(
    features: &[String],
    manifest: &[String],
    model: &Predictor,
) -> Result<(), String> {
    let (nf, nm) = (features.len(), manifest.len());
    if features == manifest {
        return model.check_inputs(nf).map_err(|why| {
            format!(
                "model.json does not take the {} that fitted.json encodes and the manifest \
                 lists: {why}",
                inputs(nf)
            )
        });
    }
    let diff = match features.iter().zip(manifest).position(|(a, b)| a != b) {
        Some(i) => format!(
            "slot {i} is `{}` in fitted.json but `{}` in the manifest",
            features[i], manifest[i]
        ),
        None if nf > nm => format!("fitted.json has {} more, from `{}`", nf - nm, features[nm]),
        None => format!("the manifest has {} more, from `{}`", nm - nf, manifest[nf]),
    };
    let counts = format!(
        "fitted.json encodes {}, the manifest lists {}",
        inputs(nf),
        inputs(nm)
    );
    Err(match (model.check_inputs(nf), model.check_inputs(nm)) {
        (Ok(()), _) => format!(
            "the manifest's input signature differs from the inputs that fitted.json encodes \
             and model.json takes: {counts}; {diff}"
        ),
        (Err(why), Ok(())) => format!(
            "fitted.json encodes other inputs than the manifest lists and model.json takes \
             ({why}): {counts}; {diff}"
        ),
        (Err(why), Err(_)) => format!(
            "fitted.json, the manifest and model.json disagree: {counts}; {diff}; and {why}"
        ),
    })
}

/// `1 input`, `3 inputs`.
fn inputs(n: usize) -> String {
    format!("{n} input{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear::LinearModel;

    fn linear(width: usize) -> Predictor {
        Predictor::Linear(LinearModel {
            weights: vec![0.5; width],
            intercept: 0.0,
            threshold: 0.5,
        })
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_signature_mismatch_names_the_one_that_differs() {
        let abc = names(&["a", "b", "c"]);
        assert_eq!(check_signature(&abc, &abc, &linear(3)), Ok(()));
        // The old message said "features give 3 inputs, the manifest lists 3, and the model
        // does not take them": the model is the culprit, and it says what it takes.
        assert_eq!(
            check_signature(&abc, &abc, &linear(2)).unwrap_err(),
            "model.json does not take the 3 inputs that fitted.json encodes and the manifest \
             lists: the model has 2 weights, one per input"
        );
        assert_eq!(
            check_signature(&abc, &names(&["a", "x", "c"]), &linear(3)).unwrap_err(),
            "the manifest's input signature differs from the inputs that fitted.json encodes \
             and model.json takes: fitted.json encodes 3 inputs, the manifest lists 3 inputs; slot 1 \
             is `b` in fitted.json but `x` in the manifest"
        );
        assert_eq!(
            check_signature(&abc, &names(&["a", "b"]), &linear(2)).unwrap_err(),
            "fitted.json encodes other inputs than the manifest lists and model.json takes \
             (the model has 2 weights, one per input): fitted.json encodes 3 inputs, the \
             manifest lists 2 inputs; fitted.json has 1 more, from `c`"
        );
        assert_eq!(
            check_signature(&names(&["a"]), &names(&["a", "b"]), &linear(3)).unwrap_err(),
            "fitted.json, the manifest and model.json disagree: fitted.json encodes 1 input, \
             the manifest lists 2 inputs; the manifest has 1 more, from `b`; and the model has 3 \
             weights, one per input"
        );
    }
}
