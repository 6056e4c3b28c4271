//! The pipeline file as written: serde structs that mirror the TOML, with spans for messages.
//!
//! Nothing here is checked beyond TOML syntax and shape; [`super::check`] turns it into a
//! [`super::Pipeline`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub(crate) type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPipeline {
    pub pipeline: RawMeta,
    pub events: RawEvents,
    #[serde(default)]
    pub filter: Vec<RawFilter>,
    #[serde(default)]
    pub lookup: Vec<RawLookup>,
    #[serde(default)]
    pub asof: Vec<RawAsof>,
    #[serde(default)]
    pub window: Vec<RawWindow>,
    #[serde(default)]
    pub derive: Vec<RawDerive>,
    pub features: RawFeatures,
    pub label: Option<RawLabel>,
    pub split: Option<RawSplit>,
    /// Checked by the trainer, which knows the model kinds; kept here so the file is one unit.
    pub model: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMeta {
    pub name: S<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEvents {
    pub path: Option<S<String>>,
    pub key: S<String>,
    #[serde(default)]
    pub lateness: Option<S<String>>,
    #[serde(default)]
    pub idle_key_ttl: Option<S<String>>,
    #[serde(default)]
    pub max_future: Option<S<String>>,
    #[serde(default)]
    pub numbers_from_strings: Option<S<Vec<S<String>>>>,
    pub fields: S<BTreeMap<String, S<String>>>,
    pub time: S<RawEventTime>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEventTime {
    #[serde(rename = "fn")]
    pub func: S<String>,
    pub field: Option<S<String>>,
    pub date: Option<S<Vec<S<String>>>>,
    pub hhmm: Option<S<String>>,
    pub reference_hhmm: Option<S<String>>,
    pub tz: Option<S<String>>,
    pub unit: Option<S<String>>,
    pub format: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFilter {
    pub field: S<String>,
    pub op: S<String>,
    pub value: Option<S<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLookup {
    pub name: S<String>,
    pub path: S<String>,
    pub on: S<String>,
    pub key: S<String>,
    #[serde(default)]
    pub prefix: String,
    pub columns: S<BTreeMap<String, S<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAsof {
    pub name: S<String>,
    pub path: S<String>,
    pub on: S<String>,
    pub key: S<String>,
    pub time: S<String>,
    pub tolerance: Option<S<String>>,
    #[serde(default)]
    pub prefix: String,
    pub columns: S<BTreeMap<String, S<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWindow {
    pub name: S<String>,
    pub key: S<String>,
    pub length: S<String>,
    #[serde(default)]
    pub include_current: bool,
    pub aggs: S<Vec<S<RawAgg>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgg {
    pub name: S<String>,
    #[serde(rename = "fn")]
    pub func: S<String>,
    pub field: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDerive {
    pub name: S<String>,
    #[serde(rename = "fn")]
    pub func: S<String>,
    pub args: S<Vec<S<String>>>,
    pub tz: Option<S<String>>,
    pub bounds: Option<S<Vec<f64>>>,
    pub value: Option<S<toml::Value>>,
    pub sep: Option<S<String>>,
    /// Computed after the joins and before the windows, so that windows can key or aggregate
    /// by it (it cannot use window columns).
    #[serde(default)]
    pub before_windows: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFeatures {
    #[serde(default)]
    pub numeric: Vec<S<String>>,
    #[serde(default)]
    pub categorical: Vec<S<String>>,
    #[serde(default)]
    pub min_count: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLabel {
    pub field: S<String>,
    pub op: S<String>,
    pub value: Option<S<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSplit {
    pub valid_from: S<String>,
}
