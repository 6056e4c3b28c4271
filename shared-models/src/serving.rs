//! A bundle made ready to serve: the checked pipeline, its tables, the fitted feature state and
//! the model, all validated against the manifest.

use std::sync::Arc;

use shared_features::{FittedState, Pipeline, Tables, fingerprint};

use crate::bundle::Bundle;
use crate::error::RegistryError;
use crate::predictor::Predictor;

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
}

impl Servable {
    /// Validate a fetched bundle (whose checksums [`crate::Registry::fetch`] has checked): the
    /// pipeline parses, the tables match the digests the features were fitted with, the
    /// fingerprint recomputed from the bundle equals the manifest's, and the model's inputs
    /// equal the input signature.
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
        let text = std::str::from_utf8(file("pipeline.toml")?)
            .map_err(|e| bad(format!("pipeline.toml: {e}")))?;
        let pipeline = Pipeline::parse(text, "pipeline.toml").map_err(|e| bad(e.to_string()))?;
        let fitted: FittedState = serde_json::from_slice(file("fitted.json")?)
            .map_err(|e| bad(format!("fitted.json: {e}")))?;
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
        let names = fitted.names();
        if names != m.input_signature || !model.accepts(names.len()) {
            return Err(bad(format!(
                "input signature: features give {} inputs, the manifest lists {}, and the model \
                 {} them",
                names.len(),
                m.input_signature.len(),
                if model.accepts(names.len()) {
                    "takes"
                } else {
                    "does not take"
                }
            )));
        }
        Ok(Self {
            name: m.name.clone(),
            version: m.version,
            id,
            fingerprint: fp,
            pipeline: Arc::new(pipeline),
            tables: Arc::new(tables),
            fitted,
            model,
            metrics: m.metrics.clone(),
        })
    }
}
