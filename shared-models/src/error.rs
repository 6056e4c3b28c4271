//! Registry errors.

/// What went wrong with a store, a bundle or a reference.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store URL cannot be used.
    #[error("store `{url}`: {message}")]
    Store {
        /// The URL as given.
        url: String,
        /// Why.
        message: String,
    },
    /// A reference like `name@3` or `name@champion` is malformed.
    #[error("`{0}` is not a model reference: write name, name@version or name@alias")]
    BadRef(String),
    /// No such model, version or alias.
    #[error("{0} not found")]
    NotFound(String),
    /// A file of a bundle does not match the checksum in its manifest.
    #[error("bundle {model}: file `{file}` is corrupt: sha256 {actual}, manifest says {expected}")]
    Checksum {
        /// `name@version`.
        model: String,
        /// The file.
        file: String,
        /// From the manifest.
        expected: String,
        /// Of the bytes read.
        actual: String,
    },
    /// A manifest that cannot be read.
    #[error("{path}: {message}")]
    Manifest {
        /// The object path.
        path: String,
        /// Why.
        message: String,
    },
    /// Another publisher took the version number first.
    #[error("version {version} of `{name}` was published concurrently; publish again")]
    Conflict {
        /// The model.
        name: String,
        /// The contested version.
        version: u64,
    },
    /// A bundle whose files are intact but cannot be served.
    #[error("bundle {model}: {message}")]
    Invalid {
        /// `name@version`.
        model: String,
        /// Why.
        message: String,
    },
    /// The object store failed.
    #[cfg(feature = "registry")]
    #[error(transparent)]
    ObjectStore(#[from] object_store::Error),
}

impl RegistryError {
    /// A short, stable name of the kind of failure, for metric labels and logs: `store`,
    /// `bad_ref`, `not_found`, `checksum`, `manifest`, `conflict`, `invalid` or `object_store`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Store { .. } => "store",
            Self::BadRef(_) => "bad_ref",
            Self::NotFound(_) => "not_found",
            Self::Checksum { .. } => "checksum",
            Self::Manifest { .. } => "manifest",
            Self::Conflict { .. } => "conflict",
            Self::Invalid { .. } => "invalid",
            #[cfg(feature = "registry")]
            Self::ObjectStore(_) => "object_store",
        }
    }
}
