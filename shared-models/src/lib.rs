//! Model bundles and the registry that versions them in object storage.
//!
//! A bundle is a directory `<store>/models/<name>/versions/<version>/` holding its files and a
//! `manifest.json` that lists every file with its sha256. The manifest is written last, with a
//! create-only put, so a version is either complete or invisible: an interrupted publish leaves
//! files that no listing, resolution or alias will ever see. Aliases
//! (`<store>/models/<name>/aliases/<alias>`) are single objects, so moving one is one atomic put;
//! that is how a model is promoted or rolled back.
//!
//! Without the default feature `registry` (object storage) the crate is the serving half only:
//! bundles checked from files read by someone else, the predictors and the prediction record.
//! That is what the WebAssembly build (`wasm/`) takes.

mod bundle;
pub mod drift;
mod error;
mod linear;
pub mod metrics;
mod mlp;
#[cfg(feature = "plots")]
pub mod plots;
pub mod prediction;
mod predictor;
#[cfg(feature = "registry")]
mod registry;
#[cfg(feature = "schema-registry")]
pub mod schema_registry;
mod serving;
mod tree;
#[cfg(feature = "schema-registry")]
pub mod wait;

pub use bundle::{Bundle, FORMAT, MANIFEST, Manifest};
pub use error::RegistryError;
pub use linear::{LinearModel, sigmoid};
pub use mlp::{DenseLayer, MAX_WIDTH, MlpModel};
pub use predictor::{MAX_ABS_WEIGHT, Predictor};
#[cfg(feature = "registry")]
pub use registry::{
    ModelRef, Registry, download_prefix, get_url, is_bucket_url, put_url_from_file,
};
pub use serving::{REFERENCE, Servable, bundle_table_file};
pub use tree::{TreeModel, TreeNode};
