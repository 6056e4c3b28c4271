//! The model server's client: one OIP inference over REST or gRPC, its answer read into
//! per-row scores or errors, and the server's metadata checked against the bundle.

use std::time::Duration;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{RemoteArgs, transport_error};
use crate::grpc::proto;
use crate::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;

/// The input tensor's datatype.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    /// 64-bit floats: the features as computed, bit for bit.
    #[value(name = "FP64")]
    Fp64,
    /// 32-bit floats.
    #[value(name = "FP32")]
    Fp32,
}

impl Datatype {
    fn name(self) -> &'static str {
        match self {
            Datatype::Fp64 => "FP64",
            Datatype::Fp32 => "FP32",
        }
    }
}

/// Why a call did not give scores.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Not the rows' fault (down, slow, overloaded, an answer that makes no sense): retry.
    Down(String),
    /// The server refused the request's contents, with this reason.
    Refused(String),
}

/// What the server said about one row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowResult {
    /// Its score, and the decision if the server gave one.
    Score(f64, Option<bool>),
    /// Refused, with the server's reason: a dead letter.
    Refused(String),
}

/// The answer to one request.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) rows: Vec<RowResult>,
    pub(super) model: String,
    pub(super) version: String,
}

/// How to reach the server.
#[derive(Clone)]
enum Transport {
    Rest {
        http: reqwest::Client,
        base: String,
    },
    Grpc {
        client: GrpcInferenceServiceClient<tonic::transport::Channel>,
    },
}

/// A client of one model on one Open Inference Protocol server.
#[derive(Clone)]
pub struct Client {
    transport: Transport,
    pub(super) url: String,
    pub(super) model: String,
    version: Option<String>,
    input: String,
    datatype: Datatype,
    output: String,
    pub(super) width: usize,
    pub(super) timeout: Duration,
}

/// `{"error": "..."}`, the protocol's error body.
#[derive(Deserialize)]
struct RestError {
    error: String,
}

#[derive(Serialize)]
struct RestRequest<'a> {
    inputs: [RestInput<'a>; 1],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    outputs: Vec<RestRequested<'a>>,
}

#[derive(Serialize)]
struct RestInput<'a> {
    name: &'a str,
    shape: [usize; 2],
    datatype: &'static str,
    data: RestData<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum RestData<'a> {
    F64(&'a [f64]),
    F32(Vec<f32>),
}

#[derive(Serialize)]
struct RestRequested<'a> {
    name: &'a str,
}

#[derive(Deserialize)]
struct RestReply {
    #[serde(default)]
    model_name: String,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    outputs: Vec<RestOutput>,
}

#[derive(Deserialize)]
struct RestOutput {
    name: String,
    #[serde(default)]
    shape: Vec<i64>,
    #[serde(default)]
    data: Json,
}

#[derive(Deserialize)]
struct RestMetadata {
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    inputs: Vec<RestTensorMeta>,
    #[serde(default)]
    outputs: Vec<RestTensorMeta>,
}

#[derive(Deserialize)]
struct RestTensorMeta {
    name: String,
    #[serde(default)]
    shape: Vec<i64>,
}

/// One output of an answer, decoded.
enum Column {
    F64(Vec<f64>),
    Bool(Vec<bool>),
    Text(Vec<String>),
}

/// What the model's metadata says, checked against the bundle.
#[derive(Debug)]
pub struct Checked {
    /// Versions the server lists.
    pub versions: Vec<String>,
}

impl Client {
    /// A client for `args` (the server need not be up yet), feeding vectors of `width`
    /// features of the bundle `bundle`.
    pub fn new(args: &RemoteArgs, url: &str, bundle: &str, width: usize) -> Result<Self> {
        let timeout = Duration::from_secs_f64(args.model_server_timeout);
        let transport = if let Some(rest) = url.strip_prefix("grpc://") {
            let rest = rest.trim_end_matches('/');
            if rest.is_empty() || rest.contains('/') {
                bail!("--model-server {url}: give grpc://HOST:PORT");
            }
            let channel = tonic::transport::Channel::from_shared(format!("http://{rest}"))
                .map_err(|e| anyhow::anyhow!("--model-server {url}: {e}"))?
                .connect_timeout(timeout)
                .timeout(timeout)
                .connect_lazy();
            Transport::Grpc {
                client: GrpcInferenceServiceClient::new(channel)
                    .max_decoding_message_size(256 << 20)
                    .max_encoding_message_size(256 << 20),
            }
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let http = reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .build()
                .map_err(|e| anyhow::anyhow!("--model-server {url}: {e}"))?;
            Transport::Rest {
                http,
                base: url.trim_end_matches('/').to_string(),
            }
        } else {
            bail!(
                "--model-server {url}: the scheme must be http://, https:// (Open Inference \
                 Protocol over REST) or grpc:// (over gRPC)"
            );
        };
        if args.model_server_batch == 0 || args.model_server_batch > 100_000 {
            bail!(
                "--model-server-batch {} must be between 1 and 100000",
                args.model_server_batch
            );
        }
        if args.model_server_in_flight == 0 || args.model_server_in_flight > 1024 {
            bail!(
                "--model-server-in-flight {} must be between 1 and 1024",
                args.model_server_in_flight
            );
        }
        Ok(Self {
            transport,
            url: url.to_string(),
            model: args
                .model_server_model
                .clone()
                .unwrap_or_else(|| format!("{bundle}_features")),
            version: args.model_server_version.clone().filter(|v| !v.is_empty()),
            input: args.model_server_input.clone(),
            datatype: args.model_server_datatype,
            output: args.model_server_output.clone(),
            width,
            timeout,
        })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The model's name on the server.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Read the model's metadata and check it against the bundle: the input tensor, when the
    /// server lists inputs, must be there with the bundle's width; the score output, when it
    /// lists outputs, too. `Refused` is a configuration error; `Down`, a server to wait for.
    pub async fn check(&self) -> Result<Checked, Failure> {
        let (versions, inputs, outputs) = match &self.transport {
            Transport::Rest { http, base } => {
                let url = self.model_url(base);
                let (status, body) = exchange(http.get(&url)).await?;
                if !status.is_success() {
                    return Err(Failure::Down(format!(
                        "GET {url}: {status}: {}",
                        error_text(&body)
                    )));
                }
                let m: RestMetadata = serde_json::from_slice(&body)
                    .map_err(|e| Failure::Refused(format!("GET {url}: not model metadata: {e}")))?;
                let tensors = |t: Vec<RestTensorMeta>| -> Vec<(String, Vec<i64>)> {
                    t.into_iter().map(|t| (t.name, t.shape)).collect()
                };
                (m.versions, tensors(m.inputs), tensors(m.outputs))
            }
            Transport::Grpc { client } => {
                let mut c = client.clone();
                let r = c
                    .model_metadata(proto::ModelMetadataRequest {
                        name: self.model.clone(),
                        version: self.version.clone().unwrap_or_default(),
                    })
                    .await
                    .map_err(|s| Failure::Down(status_text(&s)))?
                    .into_inner();
                let tensors = |t: Vec<proto::model_metadata_response::TensorMetadata>| {
                    t.into_iter().map(|t| (t.name, t.shape)).collect::<Vec<_>>()
                };
                (r.versions, tensors(r.inputs), tensors(r.outputs))
            }
        };
        let model = &self.model;
        if !inputs.is_empty() {
            let Some((_, shape)) = inputs.iter().find(|(n, _)| *n == self.input) else {
                let names: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
                return Err(Failure::Refused(format!(
                    "model `{model}` on {} has no input `{}` (it has {names:?}); set \
                     --model-server-input",
                    self.url, self.input
                )));
            };
            if let Some(&d) = shape.last()
                && shape.len() == 2
                && d >= 0
                && d as usize != self.width
            {
                return Err(Failure::Refused(format!(
                    "model `{model}` on {} takes {d} features in `{}`, the bundle encodes {}: \
                     not the model this pipeline was fitted for",
                    self.url, self.input, self.width
                )));
            }
        }
        if !outputs.is_empty() && !outputs.iter().any(|(n, _)| *n == self.output) {
            let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Failure::Refused(format!(
                "model `{model}` on {} has no output `{}` (it has {names:?}); set \
                 --model-server-output",
                self.url, self.output
            )));
        }
        Ok(Checked { versions })
    }

    /// The outputs to ask for: the score, and with `scorer serve`'s names, its decision and
    /// per-row errors.
    fn requested(&self) -> Vec<&str> {
        if self.output == "score" {
            vec!["score", "decision", "error"]
        } else {
            vec![self.output.as_str()]
        }
    }

    /// One request for the rows of `x` (`n` rows of `width`).
    pub(super) async fn infer(&self, x: &[f64]) -> Result<Reply, Failure> {
        let n = x.len() / self.width.max(1);
        let requested = self.requested();
        let (model, version, columns) = match &self.transport {
            Transport::Rest { http, base } => {
                let url = format!("{}/infer", self.model_url(base));
                let data = match self.datatype {
                    Datatype::Fp64 => RestData::F64(x),
                    Datatype::Fp32 => RestData::F32(x.iter().map(|&v| v as f32).collect()),
                };
                let req = RestRequest {
                    inputs: [RestInput {
                        name: &self.input,
                        shape: [n, self.width],
                        datatype: self.datatype.name(),
                        data,
                    }],
                    outputs: requested
                        .iter()
                        .map(|&name| RestRequested { name })
                        .collect(),
                };
                let body = serde_json::to_vec(&req).map_err(|e| Failure::Down(e.to_string()))?;
                let post = http.post(&url).header("content-type", "application/json");
                let (status, body) = exchange(post.body(body)).await?;
                if !status.is_success() {
                    let why = format!("{status}: {}", error_text(&body));
                    return Err(match status.as_u16() {
                        400 | 413 | 422 => Failure::Refused(why),
                        _ => Failure::Down(why),
                    });
                }
                let reply: RestReply = serde_json::from_slice(&body)
                    .map_err(|e| Failure::Down(format!("not an inference response: {e}")))?;
                let mut columns = Vec::new();
                for o in reply.outputs {
                    if let Some(c) = rest_column(&o.data) {
                        columns.push((o.name, o.shape, c));
                    }
                }
                (
                    reply.model_name,
                    reply.model_version.unwrap_or_default(),
                    columns,
                )
            }
            Transport::Grpc { client } => {
                let contents = match self.datatype {
                    Datatype::Fp64 => proto::InferTensorContents {
                        fp64_contents: x.to_vec(),
                        ..Default::default()
                    },
                    Datatype::Fp32 => proto::InferTensorContents {
                        fp32_contents: x.iter().map(|&v| v as f32).collect(),
                        ..Default::default()
                    },
                };
                let req = proto::ModelInferRequest {
                    model_name: self.model.clone(),
                    model_version: self.version.clone().unwrap_or_default(),
                    inputs: vec![proto::model_infer_request::InferInputTensor {
                        name: self.input.clone(),
                        datatype: self.datatype.name().to_string(),
                        shape: vec![n as i64, self.width as i64],
                        contents: Some(contents),
                        ..Default::default()
                    }],
                    outputs: requested
                        .iter()
                        .map(
                            |&name| proto::model_infer_request::InferRequestedOutputTensor {
                                name: name.to_string(),
                                ..Default::default()
                            },
                        )
                        .collect(),
                    ..Default::default()
                };
                let mut c = client.clone();
                let mut request = tonic::Request::new(req);
                request.set_timeout(self.timeout);
                let r = c.model_infer(request).await.map_err(|s| {
                    use tonic::Code;
                    let why = status_text(&s);
                    match s.code() {
                        Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted => {
                            Failure::Refused(why)
                        }
                        _ => Failure::Down(why),
                    }
                })?;
                let r = r.into_inner();
                let mut columns = Vec::new();
                for (i, o) in r.outputs.into_iter().enumerate() {
                    let c = match r.raw_output_contents.get(i) {
                        Some(raw) => raw_column(&o.datatype, raw),
                        None => o.contents.map(typed_column),
                    };
                    if let Some(c) = c {
                        columns.push((o.name, o.shape, c));
                    }
                }
                (r.model_name, r.model_version, columns)
            }
        };
        let rows = self.rows_of(n, columns)?;
        Ok(Reply {
            rows,
            model: if model.is_empty() {
                self.model.clone()
            } else {
                model
            },
            version,
        })
    }

    /// The per-row results of an answer's outputs.
    fn rows_of(
        &self,
        n: usize,
        columns: Vec<(String, Vec<i64>, Column)>,
    ) -> Result<Vec<RowResult>, Failure> {
        let mut score = None;
        let mut decision = None;
        let mut error = None;
        for (name, shape, c) in columns {
            match (name.as_str(), c) {
                (o, Column::F64(v)) if o == self.output => score = Some((shape, v)),
                ("decision", Column::Bool(v)) => decision = Some(v),
                ("error", Column::Text(v)) => error = Some(v),
                _ => {}
            }
        }
        let Some((shape, values)) = score else {
            return Err(Failure::Down(format!(
                "the answer has no numeric output `{}`",
                self.output
            )));
        };
        // [n], [n, 1]: one score per row; [n, 2]: the second column.
        let (stride, col) = if values.len() == n {
            (1, 0)
        } else if values.len() == 2 * n && shape.last() == Some(&2) {
            (2, 1)
        } else {
            return Err(Failure::Down(format!(
                "output `{}` has shape {shape:?} ({} values) for {n} rows; expected [{n}], \
                 [{n}, 1] or [{n}, 2]",
                self.output,
                values.len()
            )));
        };
        let decision = decision.filter(|d| d.len() == n);
        let error = error.filter(|e| e.len() == n);
        Ok((0..n)
            .map(|i| {
                if let Some(why) = error.as_ref().map(|e| &e[i]).filter(|w| !w.is_empty()) {
                    return RowResult::Refused(format!("the model server refused the row: {why}"));
                }
                let s = values[i * stride + col];
                if !s.is_finite() {
                    return RowResult::Refused(format!(
                        "the model server's score is {s}, not a finite number"
                    ));
                }
                RowResult::Score(s, decision.as_ref().map(|d| d[i]))
            })
            .collect())
    }
}

fn rest_column(data: &Json) -> Option<Column> {
    let mut flat = Vec::new();
    crate::oip::flatten(data, &mut flat);
    if flat.iter().all(|v| v.is_boolean()) && !flat.is_empty() {
        return Some(Column::Bool(
            flat.iter().map(|v| v.as_bool() == Some(true)).collect(),
        ));
    }
    if flat.iter().all(|v| v.is_string()) && !flat.is_empty() {
        return Some(Column::Text(
            flat.iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect(),
        ));
    }
    // Numbers, with null for a refused row's NaN (`scorer serve`).
    flat.iter()
        .map(|v| match v {
            Json::Null => Some(f64::NAN),
            v => v.as_f64(),
        })
        .collect::<Option<Vec<f64>>>()
        .map(Column::F64)
}

fn typed_column(c: proto::InferTensorContents) -> Column {
    if !c.fp64_contents.is_empty() {
        Column::F64(c.fp64_contents)
    } else if !c.fp32_contents.is_empty() {
        Column::F64(c.fp32_contents.into_iter().map(f64::from).collect())
    } else if !c.bool_contents.is_empty() {
        Column::Bool(c.bool_contents)
    } else if !c.bytes_contents.is_empty() {
        Column::Text(
            c.bytes_contents
                .into_iter()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .collect(),
        )
    } else if !c.int64_contents.is_empty() {
        Column::F64(c.int64_contents.into_iter().map(|v| v as f64).collect())
    } else {
        Column::F64(c.int_contents.into_iter().map(f64::from).collect())
    }
}

fn raw_column(datatype: &str, raw: &[u8]) -> Option<Column> {
    match datatype {
        "FP64" => Some(Column::F64(
            raw.chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .collect(),
        )),
        "FP32" => Some(Column::F64(
            raw.chunks_exact(4)
                .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap_or([0; 4]))))
                .collect(),
        )),
        "BOOL" => Some(Column::Bool(raw.iter().map(|&b| b != 0).collect())),
        "BYTES" => {
            let mut out = Vec::new();
            let mut rest = raw;
            while rest.len() >= 4 {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let item = rest.get(4..4 + len)?;
                out.push(String::from_utf8_lossy(item).into_owned());
                rest = &rest[4 + len..];
            }
            Some(Column::Text(out))
        }
        _ => None,
    }
}

impl Client {
    /// `{base}/v2/models/{model}`, with `/versions/{v}` when a version is asked for.
    fn model_url(&self, base: &str) -> String {
        match &self.version {
            Some(v) => format!("{base}/v2/models/{}/versions/{v}", self.model),
            None => format!("{base}/v2/models/{}", self.model),
        }
    }
}

/// Send a REST request and read the whole answer; a transport failure is the server's.
async fn exchange(
    req: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, bytes::Bytes), Failure> {
    let r = req
        .send()
        .await
        .map_err(|e| Failure::Down(transport_error(&e)))?;
    let status = r.status();
    let body = r
        .bytes()
        .await
        .map_err(|e| Failure::Down(transport_error(&e)))?;
    Ok((status, body))
}

fn status_text(s: &tonic::Status) -> String {
    format!("gRPC {:?}: {}", s.code(), s.message())
}

/// The error text of a refusal's body: the protocol's `{"error": ...}`, else the body (cut).
fn error_text(body: &[u8]) -> String {
    if let Ok(e) = serde_json::from_slice::<RestError>(body) {
        return e.error;
    }
    let text = String::from_utf8_lossy(body);
    crate::sink::cut_str(text.trim(), 500).to_string()
}

#[cfg(test)]
mod tests;
