//! The bundle format: a manifest and named files.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The manifest's file name inside a version directory.
pub const MANIFEST: &str = "manifest.json";

/// The bundle format this build writes and reads.
pub const FORMAT: u32 = 1;

/// What a published version is. Serialized as `manifest.json`, written after every file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Bundle format version.
    pub format: u32,
    /// Model name.
    pub name: String,
    /// Version number, from 1, assigned by the registry.
    pub version: u64,
    /// When it was published (RFC 3339, UTC).
    pub created_at: String,
    /// The model kind (e.g. `logistic_regression`).
    pub kind: String,
    /// Hyperparameters as fitted.
    pub hyperparameters: serde_json::Value,
    /// Fingerprint of the feature spec and fitted state the model expects.
    pub feature_fingerprint: String,
    /// Names of the input vector's slots, in order.
    pub input_signature: Vec<String>,
    /// Metrics on the held-out split.
    pub metrics: BTreeMap<String, f64>,
    /// Fingerprint of the training data.
    pub training_data_fingerprint: String,
    /// sha256 of every file of the bundle, by file name.
    pub files: BTreeMap<String, String>,
}

impl Manifest {
    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// A bundle read back from the store, every file checked against the manifest.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The manifest.
    pub manifest: Manifest,
    /// File contents by name.
    pub files: BTreeMap<String, Bytes>,
}

impl Bundle {
    /// A file's bytes.
    pub fn file(&self, name: &str) -> Option<&Bytes> {
        self.files.get(name)
    }
}
