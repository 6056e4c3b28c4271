//! The Open Inference Protocol (KServe v2) over REST, on `scorer serve`'s axum router: what
//! KServe, Triton and Seldon clients speak.
//!
//! Two models per bundle, both in the model metadata:
//!
//! - **`<bundle name>`** (e.g. `flights_delay`), raw events in: one input `event`, `BYTES`,
//!   shape `[n]` (or `[n, 1]`), each element one event exactly as on the topic (JSON, or with
//!   `--value-format avro` or `protobuf` a record in the schema registry's wire format, best sent
//!   as binary tensor data; a registry that does not answer gets 503, nothing scored). Features
//!   are computed here by the same engine as live scoring, window state advancing as with
//!   `/v1/score` (one state for the server, events in request order).
//! - **`<bundle name>_features`**, encoded feature vectors in: one input `features`, `FP64` or
//!   `FP32`, shape `[n, d]` with `d` the bundle's input width, in its input order (`GET
//!   /v1/model` lists the names): the model only, for an application that computes its own
//!   features.
//!
//! Outputs, `n` elements each: `score` (`FP64`), `decision` (`BOOL`) and `error` (`BYTES`: empty
//! for a scored row, `filtered` for an event a filter dropped, else why the row was refused;
//! such rows have score NaN, `null` in JSON, and decision false). A request whose rows are all
//! refused still answers 200: the rows say why. Requests that are wrong as a whole (unknown
//! model or version, tensor name, datatype, shape, data that does not match the shape) get 400
//! with `{"error": "..."}` naming the tensor; an oversized body gets 413.
//!
//! The binary tensor data extension is supported: inputs with a `binary_data_size` parameter
//! are read from after the JSON header (`Inference-Header-Content-Length`), and outputs asked
//! for with `binary_data` (or the request's `binary_data_output`) are returned so.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::serve::{App, Scored, score_one};

/// The header giving the JSON part's length when binary tensor data follows it.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// The routes, under `/v2`.
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
}

/// A request refused as a whole: status and message.
pub(crate) struct Refusal(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.1 });
        (
            self.0,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

fn bad(msg: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, msg.into())
}

/// Which of the two entries a model name means.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    Events,
    Features,
}

/// The entry `name` (and `version`, when given) names, with the served bundle's name, version
/// and input width.
pub(crate) fn entry(
    app: &App,
    name: &str,
    version: Option<&str>,
) -> Result<(Entry, String, u64, usize), Refusal> {
    let m = app.lock().model().clone();
    let e = if name == m.name {
        Entry::Events
    } else if name.strip_suffix("_features") == Some(m.name.as_str()) {
        Entry::Features
    } else {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            format!(
                "unknown model `{name}`: this server serves `{0}` (raw events) and `{0}_features` \
                 (feature vectors)",
                m.name
            ),
        ));
    };
    if let Some(v) = version
        && v != m.version.to_string()
    {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            format!(
                "model `{name}` has no version {v} here: version {} is served",
                m.version
            ),
        ));
    }
    Ok((e, m.name.clone(), m.version, m.fitted.width()))
}

fn json_ok(v: &Json) -> Response {
    json_ok_text(v.to_string())
}

async fn server_metadata() -> Response {
    json_ok(&json!({
        "name": "kafka-ml scorer",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

async fn live() -> Response {
    json_ok(&json!({ "live": true }))
}

async fn ready(State(app): State<App>) -> Response {
    // A model is loaded before the server listens, and a new one replaces it only once valid.
    let _ = app.lock().model();
    json_ok(&json!({ "ready": true }))
}

async fn model_metadata(State(app): State<App>, Path(name): Path<String>) -> Response {
    metadata(&app, &name, None).unwrap_or_else(IntoResponse::into_response)
}

async fn model_metadata_v(
    State(app): State<App>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    metadata(&app, &name, Some(&version)).unwrap_or_else(IntoResponse::into_response)
}

fn metadata(app: &App, name: &str, version: Option<&str>) -> Result<Response, Refusal> {
    let (e, bundle, v, width) = entry(app, name, version)?;
    let inputs = match e {
        Entry::Events => json!([{ "name": "event", "datatype": "BYTES", "shape": [-1] }]),
        Entry::Features => {
            json!([{ "name": "features", "datatype": "FP64", "shape": [-1, width] }])
        }
    };
    let m = app.lock().model().clone();
    Ok(json_ok(&json!({
        "name": name,
        "versions": [v.to_string()],
        "platform": "kafka-ml",
        "inputs": inputs,
        "outputs": [
            { "name": "score", "datatype": "FP64", "shape": [-1] },
            { "name": "decision", "datatype": "BOOL", "shape": [-1] },
            { "name": "error", "datatype": "BYTES", "shape": [-1] },
        ],
        "parameters": {
            "bundle": bundle,
            "fingerprint": m.fingerprint,
            "feature_names": m.fitted.names(),
            "inputs_accepted": match e {
                Entry::Events => "event: BYTES [n] or [n, 1], one event per element, as on the topic",
                Entry::Features => "features: FP64 or FP32 [n, d], d the bundle's input width, in feature_names order",
            },
            "rows_refused": "score NaN (null in JSON), decision false, error names why; `filtered` for an event a filter dropped",
        },
    })))
}

async fn model_ready(State(app): State<App>, Path(name): Path<String>) -> Response {
    match entry(&app, &name, None) {
        Ok(_) => json_ok(&json!({ "name": name, "ready": true })),
        Err(r) => r.into_response(),
    }
}

async fn model_ready_v(
    State(app): State<App>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    match entry(&app, &name, Some(&version)) {
        Ok(_) => json_ok(&json!({ "name": name, "ready": true })),
        Err(r) => r.into_response(),
    }
}

#[derive(Deserialize)]
struct InferRequest {
    id: Option<String>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Json>>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Option<Vec<OutputRequest>>,
}

#[derive(Deserialize)]
pub(crate) struct InputTensor {
    pub(crate) name: String,
    pub(crate) shape: Vec<i64>,
    pub(crate) datatype: String,
    #[serde(default)]
    pub(crate) parameters: Option<serde_json::Map<String, Json>>,
    #[serde(default)]
    pub(crate) data: Option<Json>,
}

#[derive(Deserialize)]
struct OutputRequest {
    name: String,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Json>>,
}

async fn infer(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run_infer(&app, &name, None, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn infer_v(
    State(app): State<App>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run_infer(&app, &name, Some(&version), &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The rows of one answer.
pub(crate) struct Rows {
    pub(crate) score: Vec<f64>,
    pub(crate) decision: Vec<bool>,
    pub(crate) error: Vec<String>,
}

impl Rows {
    fn with_capacity(n: usize) -> Self {
        Self {
            score: Vec::with_capacity(n),
            decision: Vec::with_capacity(n),
            error: Vec::with_capacity(n),
        }
    }

    /// Output `name`'s datatype and its data in the binary layout (little-endian; BYTES
    /// length-prefixed), shared by REST's binary outputs and gRPC's raw contents.
    pub(crate) fn raw(&self, name: &str) -> (&'static str, Vec<u8>) {
        match name {
            "score" => (
                "FP64",
                self.score.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            "decision" => ("BOOL", self.decision.iter().map(|&d| u8::from(d)).collect()),
            _ => (
                "BYTES",
                length_prefixed(self.error.iter().map(String::as_bytes)),
            ),
        }
    }

    fn push(&mut self, s: Scored) {
        let (score, decision, error) = match s {
            Scored::Score(x, d) => (x, d, String::new()),
            Scored::Filtered => (f64::NAN, false, "filtered".to_string()),
            Scored::Refused(why) => (f64::NAN, false, why),
        };
        self.score.push(score);
        self.decision.push(decision);
        self.error.push(error);
    }
}

async fn run_infer(
    app: &App,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refusal> {
    let started = std::time::Instant::now();
    let (e, bundle, v, width) = entry(app, name, version)?;
    // The JSON part, and binary tensor data after it when the header says so.
    let (head, binary) = match headers.get(HEADER_LENGTH) {
        None => (body, &[][..]),
        Some(h) => {
            let n: usize = h
                .to_str()
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .ok_or_else(|| bad(format!("{HEADER_LENGTH}: {h:?} is not a length")))?;
            if n > body.len() {
                return Err(bad(format!(
                    "{HEADER_LENGTH} is {n}, the body has {} bytes",
                    body.len()
                )));
            }
            body.split_at(n)
        }
    };
    let req: InferRequest = serde_json::from_slice(head)
        .map_err(|err| bad(format!("the request is not an inference request: {err}")))?;
    let want = match e {
        Entry::Events => "event",
        Entry::Features => "features",
    };
    let [input] = &req.inputs[..] else {
        return Err(bad(format!(
            "model `{name}` takes one input, `{want}`; the request has {}",
            req.inputs.len()
        )));
    };
    if input.name != want {
        return Err(bad(format!(
            "model `{name}` takes the input `{want}`, not `{}`",
            input.name
        )));
    }
    let size = input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
        .map(|s| {
            s.as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| {
                    bad(format!(
                        "input `{want}`: binary_data_size {s} is not a size"
                    ))
                })
        })
        .transpose()?;
    let raw = match size {
        Some(n) if n > binary.len() => {
            return Err(bad(format!(
                "input `{want}`: binary_data_size {n}, but {} bytes follow the header",
                binary.len()
            )));
        }
        Some(n) => Some(&binary[..n]),
        None => None,
    };
    // Everything about the request is checked before any event touches the window state.
    let outputs = requested_outputs(&req, name)?;
    let rows = match e {
        Entry::Events => {
            let n = rows_of(input, &[&[-1], &[-1, 1]])?;
            if input.datatype != "BYTES" {
                return Err(bad(format!(
                    "input `event` is BYTES (one event per element), not {}",
                    input.datatype
                )));
            }
            let events = bytes_elements(input, raw, n)?;
            app.prepare(&events)
                .await
                .map_err(|why| Refusal(StatusCode::SERVICE_UNAVAILABLE, why))?;
            score_events(app, &events).await
        }
        Entry::Features => {
            let n = rows_of(input, &[&[-1, width as i64]])?;
            let xs = float_elements(input, raw, n * width)?;
            score_vectors(app, &xs, width)
        }
    };
    app.metrics.latency.observe(started.elapsed().as_secs_f64());
    Ok(answer(&req, name, v, &bundle, &outputs, &rows))
}

/// The outputs asked for (all three when none is named), each with whether it goes binary.
fn requested_outputs(req: &InferRequest, name: &str) -> Result<Vec<(String, bool)>, Refusal> {
    let all_binary = req
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_output"))
        .and_then(Json::as_bool)
        .unwrap_or(false);
    let outputs: Vec<(String, bool)> = match &req.outputs {
        Some(outs) if !outs.is_empty() => outs
            .iter()
            .map(|o| {
                let binary = o
                    .parameters
                    .as_ref()
                    .and_then(|p| p.get("binary_data"))
                    .and_then(Json::as_bool)
                    .unwrap_or(all_binary);
                (o.name.clone(), binary)
            })
            .collect(),
        _ => ["score", "decision", "error"]
            .iter()
            .map(|n| (n.to_string(), all_binary))
            .collect(),
    };
    if let Some((other, _)) = outputs
        .iter()
        .find(|(o, _)| !matches!(o.as_str(), "score" | "decision" | "error"))
    {
        return Err(bad(format!(
            "model `{name}` has the outputs score, decision and error, not `{other}`"
        )));
    }
    Ok(outputs)
}

/// BYTES elements in the binary layout: each a 4-byte little-endian length, then the bytes.
pub(crate) fn length_prefixed<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for b in items {
        out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(b);
    }
    out
}

/// The row count of an input whose shape must be one of `allowed` (-1: any length).
pub(crate) fn rows_of(t: &InputTensor, allowed: &[&[i64]]) -> Result<usize, Refusal> {
    let fits = |a: &&[i64]| {
        a.len() == t.shape.len()
            && a.iter()
                .zip(&t.shape)
                .all(|(&want, &got)| got >= 0 && (want == -1 || want == got))
    };
    if !allowed.iter().any(fits) {
        let shapes: Vec<String> = allowed
            .iter()
            .map(|a| {
                let dims: Vec<String> = a
                    .iter()
                    .map(|&d| if d == -1 { "n".into() } else { d.to_string() })
                    .collect();
                format!("[{}]", dims.join(", "))
            })
            .collect();
        return Err(bad(format!(
            "input `{}`: shape {:?}, the model takes {}",
            t.name,
            t.shape,
            shapes.join(" or ")
        )));
    }
    Ok(usize::try_from(t.shape[0]).unwrap_or(0))
}

/// JSON `data` flattened in row-major order (nested arrays allowed, as the protocol says).
pub(crate) fn flatten<'a>(data: &'a Json, out: &mut Vec<&'a Json>) {
    match data {
        Json::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

pub(crate) fn bytes_elements<'a>(
    t: &'a InputTensor,
    raw: Option<&'a [u8]>,
    n: usize,
) -> Result<Vec<&'a [u8]>, Refusal> {
    let mut out = Vec::with_capacity(n);
    match (raw, &t.data) {
        (Some(mut b), _) => {
            while !b.is_empty() {
                let Some((len, rest)) = b.split_first_chunk::<4>() else {
                    return Err(bad(format!(
                        "input `{}`: element {} of the binary data is cut short in its length",
                        t.name,
                        out.len()
                    )));
                };
                let len = u32::from_le_bytes(*len) as usize;
                if len > rest.len() {
                    return Err(bad(format!(
                        "input `{}`: element {} is {len} bytes, {} are left",
                        t.name,
                        out.len(),
                        rest.len()
                    )));
                }
                let (el, rest) = rest.split_at(len);
                out.push(el);
                b = rest;
            }
        }
        (None, Some(data)) => {
            let mut flat = Vec::new();
            flatten(data, &mut flat);
            for (i, el) in flat.into_iter().enumerate() {
                let Json::String(s) = el else {
                    return Err(bad(format!(
                        "input `{}`: element {i} is {el}, not a string (one JSON event as text)",
                        t.name
                    )));
                };
                out.push(s.as_bytes());
            }
        }
        (None, None) => return Err(bad(format!("input `{}` has no data", t.name))),
    }
    if out.len() != n {
        return Err(bad(format!(
            "input `{}`: shape {:?} holds {n} elements, the data has {}",
            t.name,
            t.shape,
            out.len()
        )));
    }
    Ok(out)
}

pub(crate) fn float_elements(
    t: &InputTensor,
    raw: Option<&[u8]>,
    n: usize,
) -> Result<Vec<f64>, Refusal> {
    let out: Vec<f64> = match (t.datatype.as_str(), raw, &t.data) {
        ("FP64", Some(b), _) => {
            if b.len() != n * 8 {
                return Err(bad(format!(
                    "input `{}`: {n} FP64 elements are {} bytes, the binary data has {}",
                    t.name,
                    n * 8,
                    b.len()
                )));
            }
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect()
        }
        ("FP32", Some(b), _) => {
            if b.len() != n * 4 {
                return Err(bad(format!(
                    "input `{}`: {n} FP32 elements are {} bytes, the binary data has {}",
                    t.name,
                    n * 4,
                    b.len()
                )));
            }
            b.chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap_or_default())))
                .collect()
        }
        ("FP64" | "FP32", None, Some(data)) => {
            let mut flat = Vec::new();
            flatten(data, &mut flat);
            let mut xs = Vec::with_capacity(flat.len());
            for (i, el) in flat.into_iter().enumerate() {
                let x = el.as_f64().ok_or_else(|| {
                    bad(format!(
                        "input `{}`: element {i} is {el}, not a number",
                        t.name
                    ))
                })?;
                // JSON FP32 data is the f32 the client meant: round to it, as binary data is.
                xs.push(if t.datatype == "FP32" {
                    f64::from(x as f32)
                } else {
                    x
                });
            }
            if xs.len() != n {
                return Err(bad(format!(
                    "input `{}`: shape {:?} holds {n} elements, the data has {}",
                    t.name,
                    t.shape,
                    xs.len()
                )));
            }
            xs
        }
        ("FP64" | "FP32", None, None) => {
            return Err(bad(format!("input `{}` has no data", t.name)));
        }
        (other, ..) => {
            return Err(bad(format!(
                "input `{}` is FP64 or FP32, not {other}",
                t.name
            )));
        }
    };
    Ok(out)
}

/// Score raw events in order with the server's window state, in slices under the lock.
pub(crate) async fn score_events(app: &App, events: &[&[u8]]) -> Rows {
    let mut rows = Rows::with_capacity(events.len());
    for (k, slice) in events.chunks(crate::serve::SLICE).enumerate() {
        if k > 0 {
            tokio::task::yield_now().await;
        }
        let mut g = app.lock();
        for ev in slice {
            rows.push(score_one(app, &mut g, ev, |_| {}));
        }
    }
    rows
}

/// Score encoded vectors with the model alone.
pub(crate) fn score_vectors(app: &App, xs: &[f64], width: usize) -> Rows {
    let m = app.lock().model().clone();
    let mut rows = Rows::with_capacity(xs.len() / width.max(1));
    for (i, x) in xs.chunks_exact(width.max(1)).enumerate() {
        app.metrics.events_in.inc();
        if let Some(j) = x.iter().position(|v| !v.is_finite()) {
            app.metrics.dead_lettered.inc();
            let names = m.fitted.names();
            rows.push(Scored::Refused(format!(
                "row {i}: input {j} (`{}`) is {}, not a finite number",
                names.get(j).map_or("?", String::as_str),
                x[j]
            )));
            continue;
        }
        let score = m.model.predict_proba(x);
        app.metrics.predictions.inc();
        rows.push(Scored::Score(score, m.model.decide(score)));
    }
    rows
}

/// The response: JSON outputs, or binary ones after the JSON header where asked for.
fn answer(
    req: &InferRequest,
    name: &str,
    version: u64,
    bundle: &str,
    names: &[(String, bool)],
    rows: &Rows,
) -> Response {
    let n = rows.score.len();
    let mut outputs = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    for (out, binary) in names {
        if *binary {
            let (datatype, bytes) = rows.raw(out);
            outputs.push(json!({
                "name": out, "datatype": datatype, "shape": [n],
                "parameters": { "binary_data_size": bytes.len() },
            }));
            tail.extend_from_slice(&bytes);
            continue;
        }
        let (datatype, data) = match out.as_str() {
            "score" => (
                "FP64",
                json!(
                    rows.score
                        .iter()
                        .map(|x| x.is_finite().then_some(*x))
                        .collect::<Vec<_>>()
                ),
            ),
            "decision" => ("BOOL", json!(rows.decision)),
            _ => ("BYTES", json!(rows.error)),
        };
        outputs.push(json!({ "name": out, "datatype": datatype, "shape": [n], "data": data }));
    }
    let mut head = json!({
        "model_name": name,
        "model_version": version.to_string(),
        "outputs": outputs,
        "parameters": { "bundle": bundle },
    });
    if let Some(id) = &req.id {
        head["id"] = json!(id);
    }
    let head = head.to_string();
    if tail.is_empty() {
        return json_ok_text(head);
    }
    let len = head.len();
    let mut body = head.into_bytes();
    body.extend_from_slice(&tail);
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
        h.insert(HEADER_LENGTH, v);
    }
    r
}

fn json_ok_text(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
