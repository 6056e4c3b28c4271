//! The bundle format: a manifest and named files.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shared_features::tables::sha256_hex;

use crate::error::RegistryError;

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

/// Whether `file` may name a bundle file: not the manifest, no directory parts.
pub(crate) fn valid_file_name(file: &str) -> bool {
    !file.is_empty() && file != MANIFEST && file != "." && file != ".." && !file.contains('/')
}

/// A file the manifest lists has a usable bundle file name (checked before it is read, so a bad
/// name never reaches a store). `dir` is where the manifest was read (for messages).
pub(crate) fn check_name(dir: &str, file: &str) -> Result<(), RegistryError> {
    if valid_file_name(file) {
        return Ok(());
    }
    Err(RegistryError::Manifest {
        path: format!("{dir}/{MANIFEST}"),
        message: format!("lists `{file}`, which is not a usable bundle file name"),
    })
}

/// A file's bytes have the sha256 its manifest lists.
pub(crate) fn check_sum(
    manifest: &Manifest,
    file: &str,
    expected: &str,
    bytes: &[u8],
) -> Result<(), RegistryError> {
    let actual = sha256_hex(bytes);
    if actual != expected {
        return Err(RegistryError::Checksum {
            model: manifest.id(),
            file: file.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

impl Bundle {
    /// A bundle from its files as read by another reader than [`crate::Registry`] (the
    /// WebAssembly build reads them through JavaScript): `manifest.json`'s bytes and the files
    /// by name. Checked exactly as [`crate::Registry::fetch`] checks what it reads: the manifest
    /// parses, every file it lists is there and matches its sha256. Files it does not list are
    /// ignored. `dir` names where they came from, for messages.
    pub fn from_files(
        dir: &str,
        manifest: &[u8],
        mut files: BTreeMap<String, Bytes>,
    ) -> Result<Self, RegistryError> {
        let manifest: Manifest =
            serde_json::from_slice(manifest).map_err(|e| RegistryError::Manifest {
                path: format!("{dir}/{MANIFEST}"),
                message: e.to_string(),
            })?;
        let mut checked = BTreeMap::new();
        for (file, expected) in &manifest.files {
            check_name(dir, file)?;
            let Some(bytes) = files.remove(file) else {
                return Err(RegistryError::Invalid {
                    model: manifest.id(),
                    message: format!("`{dir}/{file}`, which the manifest lists, is missing"),
                });
            };
            check_sum(&manifest, file, expected, &bytes)?;
            checked.insert(file.clone(), bytes);
        }
        Ok(Self {
            manifest,
            files: checked,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: &[(&str, &[u8])]) -> Vec<u8> {
        let m = Manifest {
            format: FORMAT,
            name: "m".into(),
            version: 2,
            created_at: String::new(),
            kind: "logistic_regression".into(),
            hyperparameters: serde_json::Value::Null,
            feature_fingerprint: String::new(),
            input_signature: vec![],
            metrics: BTreeMap::new(),
            training_data_fingerprint: String::new(),
            files: files
                .iter()
                .map(|(n, b)| (n.to_string(), sha256_hex(b)))
                .collect(),
        };
        serde_json::to_vec(&m).unwrap_or_default()
    }

    fn files(files: &[(&str, &[u8])]) -> BTreeMap<String, Bytes> {
        files
            .iter()
            .map(|(n, b)| (n.to_string(), Bytes::copy_from_slice(b)))
            .collect()
    }

    #[test]
    fn files_from_another_reader_are_checked_as_the_registry_checks_them() {
        let good: &[(&str, &[u8])] = &[("a.json", b"{}"), ("b.csv", b"x\n1\n")];
        let m = manifest(good);
        let b = Bundle::from_files("d", &m, files(good)).map_err(|e| e.to_string());
        assert_eq!(b.map(|b| b.files.len()), Ok(2));
        // A file the manifest does not list is left out.
        let mut extra = files(good);
        extra.insert("c.txt".into(), Bytes::from_static(b"?"));
        let b = Bundle::from_files("d", &m, extra).map_err(|e| e.to_string());
        assert_eq!(b.map(|b| b.files.len()), Ok(2));

        let err = |m: &[u8], f: BTreeMap<String, Bytes>| match Bundle::from_files("d", m, f) {
            Ok(_) => String::from("accepted"),
            Err(e) => e.to_string(),
        };
        let changed = files(&[("a.json", b"{ }"), ("b.csv", b"x\n1\n")]);
        assert_eq!(
            err(&m, changed),
            format!(
                "bundle m@2: file `a.json` is corrupt: sha256 {}, manifest says {}",
                sha256_hex(b"{ }"),
                sha256_hex(b"{}")
            )
        );
        let missing = files(&[("a.json", b"{}")]);
        assert_eq!(
            err(&m, missing),
            "bundle m@2: `d/b.csv`, which the manifest lists, is missing"
        );
        let odd: &[(&str, &[u8])] = &[("../a.json", b"{}")];
        assert_eq!(
            err(&manifest(odd), files(odd)),
            "d/manifest.json: lists `../a.json`, which is not a usable bundle file name"
        );
        assert!(
            err(b"{\"format\": 1", files(good)).starts_with("d/manifest.json: EOF while parsing")
        );
    }
}
