//! Topics in Avro or Protobuf through a schema registry (Confluent's REST API, which Karapace, Redpanda and
//! Apicurio's compatibility layer also speak): the `--value-format` and `--schema-registry`
//! options, and the client that fetches writer schemas by id into the engines' cache
//! ([`shared_features::wire::Schemas`]).
//!
//! An id is fetched once, the first time a record names it (`GET /schemas/ids/{id}`). An id the
//! registry does not know is remembered as refused: its records are dead-lettered, naming it. A
//! registry that does not answer is not the record's fault: the record waits (live scoring pauses
//! its partition and reads it again after a backoff; a replay or warm-up retries in place), and
//! `kml_schema_registry_failures_total` counts the failed look-ups. At start, each input topic's
//! subject (`<topic>-value`, Confluent's default naming) is checked: its latest schema must give
//! every declared field with a type the field can be read as.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use shared_features::Pipeline;
use shared_features::wire::{Format, Known, Schemas, protobuf, resolve_fields, split_header};
use tokio_util::sync::CancellationToken;

/// How the input topics' record values are encoded.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ValueFormat {
    /// One JSON object per record.
    #[default]
    Json,
    /// Avro in the schema registry's wire format (a zero byte, the schema id, the record), as
    /// Confluent's serializers write it; needs `--schema-registry`.
    Avro,
    /// Protobuf in the schema registry's wire format (the schema id, the message indexes, the
    /// message), as Confluent's serializers write it; needs `--schema-registry`.
    Protobuf,
}

/// `--value-format` and `--schema-registry`.
#[derive(clap::Args, Debug, Clone)]
pub struct FormatArgs {
    /// How the input topics' record values are encoded: `json`, or `avro` or `protobuf` in the
    /// schema registry's wire format. The features do not depend on it: the same events in either
    /// format give the same predictions.
    #[arg(long, value_enum, default_value = "json")]
    pub value_format: ValueFormat,
    /// The schema registry's URL, for `--value-format avro` and `protobuf`. Basic auth as
    /// `https://USER:PASSWORD@host`, or in KML_SCHEMA_REGISTRY_AUTH as `USER:PASSWORD`.
    #[arg(long, env = "KML_SCHEMA_REGISTRY")]
    pub schema_registry: Option<String>,
}

impl FormatArgs {
    /// The registry client these options ask for (`None` for JSON), refusing a registry
    /// without the format that needs it and the reverse.
    pub fn open(
        &self,
        rt: tokio::runtime::Handle,
        token: CancellationToken,
        failures: Counter,
    ) -> Result<Option<Arc<SchemaRegistry>>> {
        match (self.value_format, &self.schema_registry) {
            (ValueFormat::Json, None) => Ok(None),
            (ValueFormat::Json, Some(url)) => bail!(
                "--schema-registry {url} is given but --value-format is json: give \
                 --value-format avro or protobuf to read records through it"
            ),
            (f, None) => bail!(
                "--value-format {} needs the schema registry's URL: give --schema-registry URL \
                 (or set KML_SCHEMA_REGISTRY)",
                if f == ValueFormat::Avro {
                    "avro"
                } else {
                    "protobuf"
                }
            ),
            (kind, Some(url)) => Ok(Some(Arc::new(SchemaRegistry::new(
                url, kind, rt, token, failures,
            )?))),
        }
    }
}

/// A runtime of its own for a command that blocks on the registry (replay, evaluate), and the
/// client (both `None` for JSON). Keep the runtime as long as the client is used.
pub type Blocking = (Option<tokio::runtime::Runtime>, Option<Arc<SchemaRegistry>>);

impl FormatArgs {
    /// [`FormatArgs::open`] for a command without a runtime of its own.
    pub fn open_blocking(&self, token: CancellationToken) -> Result<Blocking> {
        if self.value_format == ValueFormat::Json && self.schema_registry.is_none() {
            return Ok((None, None));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let registry = self.open(rt.handle().clone(), token, Counter::default())?;
        Ok((Some(rt), registry))
    }
}

/// A schema registry's client and the writer schemas fetched from it.
#[derive(Debug)]
pub struct SchemaRegistry {
    kind: ValueFormat,
    http: reqwest::Client,
    base: String,
    auth: Option<(String, String)>,
    schemas: Arc<Schemas>,
    rt: tokio::runtime::Handle,
    token: CancellationToken,
    failures: Counter,
}

/// The registry's answer for one schema (`/schemas/ids/{id}`, `/subjects/{s}/versions/latest`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaAnswer {
    schema: String,
    schema_type: Option<String>,
    id: Option<u32>,
    version: Option<i64>,
}

/// What went wrong talking to the registry.
enum Failure {
    /// It answered 404: the id or subject does not exist.
    NotFound(String),
    /// It did not answer, or answered with another error: try again later.
    Down(String),
}

impl SchemaRegistry {
    /// A client for the registry at `url`. `rt` runs its requests (the caller blocks on them);
    /// `token` ends waits for a registry that does not answer.
    pub fn new(
        url: &str,
        kind: ValueFormat,
        rt: tokio::runtime::Handle,
        token: CancellationToken,
        failures: Counter,
    ) -> Result<Self> {
        let Ok(mut parsed) = reqwest::Url::parse(url) else {
            bail!("--schema-registry {url}: not a URL (give http://HOST:PORT)");
        };
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("--schema-registry {url}: the scheme must be http:// or https://");
        }
        let mut auth = None;
        if !parsed.username().is_empty() {
            auth = Some((
                parsed.username().to_string(),
                parsed.password().unwrap_or_default().to_string(),
            ));
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
        } else if let Ok(pair) = std::env::var("KML_SCHEMA_REGISTRY_AUTH") {
            let Some((user, password)) = pair.split_once(':') else {
                bail!("KML_SCHEMA_REGISTRY_AUTH must be USER:PASSWORD");
            };
            auth = Some((user.to_string(), password.to_string()));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| anyhow::anyhow!("--schema-registry {url}: {e}"))?;
        Ok(Self {
            kind,
            http,
            base: parsed.as_str().trim_end_matches('/').to_string(),
            auth,
            schemas: Schemas::new(),
            rt,
            token,
            failures,
        })
    }

    /// The value format the engines read with, with this registry's schemas.
    pub fn format(&self) -> Format {
        match self.kind {
            ValueFormat::Protobuf => Format::Protobuf(self.schemas.clone()),
            _ => Format::Avro(self.schemas.clone()),
        }
    }

    /// The schema `id` as the engines take it: a Protobuf one in the registry's serialized form
    /// (asked for when the registry gave the .proto text).
    async fn schema(&self, id: u32) -> Result<SchemaAnswer, Failure> {
        let a = self.get(&format!("/schemas/ids/{id}")).await?;
        if a.schema_type.as_deref() == Some("PROTOBUF") && !protobuf::is_serialized(&a.schema) {
            return self
                .get(&format!("/schemas/ids/{id}?format=serialized"))
                .await;
        }
        Ok(a)
    }

    /// The registry's URL, without credentials.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Make sure the schema a record names is known (fetched, or refused by the registry), so
    /// that the engine can decode it. `Err`: the registry did not answer; the record must wait.
    /// A record without a readable header passes: the engine refuses it, naming why.
    pub fn prepare(&self, payload: Option<&[u8]>) -> Result<(), String> {
        match self.unknown(payload) {
            Some(id) => self.rt.block_on(self.fetch(id)),
            None => Ok(()),
        }
    }

    /// [`SchemaRegistry::prepare`] from async code (a server's request handler).
    pub async fn prepare_async(&self, payload: Option<&[u8]>) -> Result<(), String> {
        match self.unknown(payload) {
            Some(id) => self.fetch(id).await,
            None => Ok(()),
        }
    }

    /// The schema id a record names, if it has not been looked up yet.
    fn unknown(&self, payload: Option<&[u8]>) -> Option<u32> {
        let Some(Ok((id, _))) = payload.map(split_header) else {
            return None;
        };
        self.schemas.get(id).is_none().then_some(id)
    }

    /// Look `id` up and record the answer (see [`SchemaRegistry::prepare`]).
    async fn fetch(&self, id: u32) -> Result<(), String> {
        match self.schema(id).await {
            Ok(a) => {
                if let Known::Refused(why) =
                    self.schemas.insert(id, a.schema_type.as_deref(), &a.schema)
                {
                    tracing::warn!(schema_id = id, registry = %self.base, "{why}");
                }
                Ok(())
            }
            Err(Failure::NotFound(why)) => {
                self.schemas.refuse(
                    id,
                    &format!("not known to the schema registry at {} ({why})", self.base),
                );
                Ok(())
            }
            Err(Failure::Down(why)) => {
                self.failures.inc();
                Err(format!(
                    "the schema registry at {} did not give schema id {id}: {why}",
                    self.base
                ))
            }
        }
    }

    /// [`SchemaRegistry::prepare`], waiting for a registry that does not answer until it does
    /// or the run is cancelled (a replay, a warm-up: no other partition to get on with).
    pub fn prepare_waiting(&self, payload: Option<&[u8]>) {
        let _ = crate::wait::retry_until_cancelled(
            &self.token,
            "schema registry not answering",
            || self.prepare(payload).map_err(anyhow::Error::msg),
        );
    }

    /// Check each input topic's subject (`<topic>-value`): its latest schema must give every
    /// field the pipeline declares, with a type it can be read as. A topic without a subject
    /// (records named by another strategy) is checked record by record instead. A registry that
    /// does not answer is waited for, as the broker is.
    pub fn check_topics(&self, topics: &[String], p: &Pipeline) -> Result<()> {
        let fields: Vec<_> = p.fields().iter().map(|c| (c.name.clone(), c.ty)).collect();
        for topic in topics {
            let subject = format!("{topic}-value");
            let path = format!("/subjects/{subject}/versions/latest");
            let answer = crate::wait::retry_until_cancelled(
                &self.token,
                "schema registry not answering",
                || match self.rt.block_on(self.get(&path)) {
                    Ok(a) => Ok(Some(a)),
                    Err(Failure::NotFound(_)) => Ok(None),
                    Err(Failure::Down(why)) => {
                        self.failures.inc();
                        Err(anyhow::anyhow!(
                            "the schema registry at {} did not answer: {why}",
                            self.base
                        ))
                    }
                },
            )?;
            let Some(a) = answer else {
                tracing::warn!(
                    topic, subject, registry = %self.base,
                    "no such subject in the schema registry: each record's schema is checked as \
                     it arrives"
                );
                continue;
            };
            let id = a.id.unwrap_or_default();
            let version = a.version.unwrap_or_default();
            let a = if a.schema_type.as_deref() == Some("PROTOBUF")
                && !protobuf::is_serialized(&a.schema)
            {
                crate::wait::retry_until_cancelled(
                    &self.token,
                    "schema registry not answering",
                    || {
                        self.rt
                            .block_on(self.schema(id))
                            .map_err(|(Failure::Down(w) | Failure::NotFound(w))| anyhow::anyhow!(w))
                    },
                )?
            } else {
                a
            };
            let fits = match self.schemas.insert(id, a.schema_type.as_deref(), &a.schema) {
                Known::Avro(s) if self.kind == ValueFormat::Avro => resolve_fields(&s, &fields),
                Known::Protobuf(file) if self.kind == ValueFormat::Protobuf => {
                    // The subject names a file; the topic's records are one of its messages.
                    let mut first = None;
                    let fits =
                        file.messages()
                            .find_map(|m| match protobuf::resolve_fields(&m, &fields) {
                                Ok(_) => Some(()),
                                Err(e) => {
                                    first.get_or_insert(e);
                                    None
                                }
                            });
                    fits.ok_or_else(|| first.unwrap_or_else(|| "no message".into()))
                        .map(|()| Vec::new())
                }
                Known::Refused(why) => bail!(
                    "topic {topic}: subject {subject} (version {version}, schema id {id}): {why}"
                ),
                _ => bail!(
                    "topic {topic}: subject {subject} (version {version}, schema id {id}) is a \
                     {} schema, not the --value-format given",
                    a.schema_type.as_deref().unwrap_or("AVRO")
                ),
            };
            if let Err(why) = fits {
                bail!(
                    "topic {topic}: the latest schema of subject {subject} (version {version}, \
                     schema id {id}) does not fit pipeline {}: {why}",
                    p.name
                );
            }
            tracing::info!(
                topic, subject, version, schema_id = id, registry = %self.base,
                "the topic's latest schema gives every declared field"
            );
        }
        Ok(())
    }

    async fn get(&self, path: &str) -> Result<SchemaAnswer, Failure> {
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .header("Accept", "application/vnd.schemaregistry.v1+json");
        if let Some((user, password)) = &self.auth {
            req = req.basic_auth(user, Some(password));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::Down(transport_error(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Failure::Down(transport_error(&e)))?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(Failure::NotFound(error_message(&body, status)));
        }
        if !status.is_success() {
            return Err(Failure::Down(error_message(&body, status)));
        }
        serde_json::from_slice(&body)
            .map_err(|e| Failure::Down(format!("GET {path}: an answer that is not a schema ({e})")))
    }
}

/// The registry's own words for an error (`{"error_code": 40403, "message": "..."}`), or the
/// HTTP status.
fn error_message(body: &[u8], status: reqwest::StatusCode) -> String {
    #[derive(Deserialize)]
    struct Error {
        error_code: Option<i64>,
        message: Option<String>,
    }
    match serde_json::from_slice::<Error>(body) {
        Ok(Error {
            error_code: Some(code),
            message: Some(m),
        }) => format!("error {code}: {m}"),
        _ => format!("HTTP {status}"),
    }
}

/// A reqwest error with its causes (the connection refused, the timeout), for messages.
pub fn transport_error(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
