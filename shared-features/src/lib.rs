//! One declarative feature pipeline, run two ways with bit-identical results.
//!
//! A pipeline file (TOML) declares the event schema, filters, lookup and as-of joins, per-entity
//! windowed aggregates, derived features and the encoding of the model's input. This crate:
//!
//! - checks the file once into a [`Pipeline`] ([`spec`]), with errors that name file, line and field;
//! - runs it **online**, one JSON event at a time with per-key state ([`OnlineEngine`]);
//! - runs it **offline** over whole tables with polars (module `offline`, feature `offline`);
//! - fits and applies the encoding ([`FittedState`]) and fingerprints spec plus fitted state.
//!
//! The parity contract: for the same events in the same order, both engines produce bit-identical
//! rows. It holds by construction where it can: both engines feed their rows through the same
//! [`engine::Stages`] (windows, derived features) and [`FittedState::transform`]; polars does
//! reading, filtering, joins and sorting offline, and the parity check proves those agree with
//! the online decoder, filters and hash joins.
//!
//! Apart from the `offline` module, this crate does no I/O: bytes and typed rows in, features out.
//!
//! # What an event can do
//!
//! No input panics: every bad event is an [`EventError`] naming the field and value, in both
//! engines alike ([`EventError::kind`] names the kind).
//!
//! - An event must be UTF-8 JSON in every byte (RFC 8259), with each declared field once
//!   ([`decode::Decoder`]).
//! - Its time must be computable and within chrono's calendar (about 262,000 years either side of
//!   year 0); all time arithmetic is checked ([`time`], [`eval::event_time`]).
//! - It may be at most `[events] max_future` (default [`spec::DEFAULT_MAX_FUTURE_MS`], seven days)
//!   ahead of the stream's progress, a clock driven by the events themselves, and at most
//!   `[events] lateness` behind its window keys' newest events; otherwise it is refused before it
//!   touches any window ([`Stages`] defines both rules).
//! - However many events a key has at one instant or in one window, each costs amortised O(1)
//!   per aggregate ([`window`]); the result is a deterministic function of the sequence of
//!   events, which is what keeps the two engines bit-identical.

pub mod decode;
pub mod engine;
pub mod error;
pub mod eval;
pub mod events;
pub mod fitted;
#[cfg(feature = "offline")]
pub mod offline;
pub mod ordered;
#[cfg(feature = "offline")]
pub mod parity;
pub mod spec;
pub mod tables;
pub mod time;
pub mod value;
pub mod window;
#[cfg(feature = "avro")]
pub mod wire;

pub use engine::{Admission, EventDecoder, OnlineEngine, Split, Stages};
pub use error::{DataError, EventError};
pub use fitted::{FitAccumulator, FittedState, fingerprint};
pub use ordered::{Order, OrderedEngine};
pub use spec::{Pipeline, SpecError};
pub use tables::Tables;
pub use value::{FieldType, Key, Row, Value};
