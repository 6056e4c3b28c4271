//! One declarative feature pipeline, run two ways with bit-identical results.
//!
//! A pipeline file (TOML) declares the event schema, filters, lookup and as-of joins, per-entity
//! windowed aggregates, derived features and the encoding of the model's input. This crate:
//!
//! - checks the file once into a [`Pipeline`] ([`spec`]), with errors that name file, line and field;
//! - runs it **online**, one JSON event at a time with per-key state ([`OnlineEngine`]);
//! - runs it **offline** over whole tables with polars ([`offline`], feature `offline`);
//! - fits and applies the encoding ([`FittedState`]) and fingerprints spec plus fitted state.
//!
//! The parity contract: for the same events in the same order, both engines produce bit-identical
//! rows. It holds by construction where it can: both engines feed their rows through the same
//! [`engine::Stages`] (windows, derived features) and [`FittedState::transform`]; polars does
//! reading, filtering, joins and sorting offline, and the parity check proves those agree with
//! the online decoder, filters and hash joins.
//!
//! Apart from the `offline` module, this crate does no I/O: bytes and typed rows in, features out.

pub mod decode;
pub mod engine;
pub mod error;
pub mod eval;
pub mod events;
pub mod fitted;
#[cfg(feature = "offline")]
pub mod offline;
#[cfg(feature = "offline")]
pub mod parity;
pub mod spec;
pub mod tables;
pub mod time;
pub mod value;
pub mod window;

pub use engine::{OnlineEngine, Stages};
pub use error::{DataError, EventError};
pub use fitted::{FittedState, fingerprint};
pub use spec::{Pipeline, SpecError};
pub use tables::Tables;
pub use value::{FieldType, Key, Row, Value};
