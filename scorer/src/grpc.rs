//! The Open Inference Protocol over gRPC (`scorer serve --grpc-addr`): the service
//! `inference.GRPCInferenceService` of `proto/inference.proto` on tonic, with the same two models
//! per bundle, the same checks and the same scoring as the REST routes ([`crate::oip`]).
//!
//! Input data comes in `raw_input_contents` (what tritonclient sends: little-endian, BYTES
//! elements length-prefixed) or in the tensor's typed `contents`; outputs go back in
//! `raw_output_contents`, in the order asked for (all three when none is named). Refusals are
//! `INVALID_ARGUMENT` (`NOT_FOUND` for an unknown model or version) naming the tensor; a message
//! larger than `--max-body-bytes` is `RESOURCE_EXHAUSTED` (tonic's decoding limit).

use std::time::Duration;

use axum::http::StatusCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::oip::{
    Entry, InputTensor, Refusal, entry, float_elements, length_prefixed, rows_of, score_events,
};
use crate::serve::App;

/// The code generated from `proto/inference.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::model_metadata_response::TensorMetadata;
use proto::*;

fn status(r: Refusal) -> Status {
    if r.0 == StatusCode::NOT_FOUND {
        Status::not_found(r.1)
    } else {
        Status::invalid_argument(r.1)
    }
}

fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

struct Service {
    app: App,
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        req: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = req.into_inner();
        let ready = entry(&self.app, &r.name, version(&r.version)).is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "kafka-ml scorer".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec![],
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let (e, _, v, width) = entry(&self.app, &r.name, version(&r.version)).map_err(status)?;
        let tensor = |name: &str, datatype: &str, shape: Vec<i64>| TensorMetadata {
            name: name.into(),
            datatype: datatype.into(),
            shape,
        };
        let input = match e {
            Entry::Events => tensor("event", "BYTES", vec![-1]),
            Entry::Features => tensor("features", "FP64", vec![-1, width as i64]),
        };
        Ok(Response::new(ModelMetadataResponse {
            name: r.name,
            versions: vec![v.to_string()],
            platform: "kafka-ml".into(),
            inputs: vec![input],
            outputs: vec![
                tensor("score", "FP64", vec![-1]),
                tensor("decision", "BOOL", vec![-1]),
                tensor("error", "BYTES", vec![-1]),
            ],
        }))
    }

    async fn model_infer(
        &self,
        req: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let started = std::time::Instant::now();
        let r = req.into_inner();
        let app = &self.app;
        let (e, bundle, v, width) =
            entry(app, &r.model_name, version(&r.model_version)).map_err(status)?;
        let want = match e {
            Entry::Events => "event",
            Entry::Features => "features",
        };
        let [input] = &r.inputs[..] else {
            return Err(Status::invalid_argument(format!(
                "model `{}` takes one input, `{want}`; the request has {}",
                r.model_name,
                r.inputs.len()
            )));
        };
        if input.name != want {
            return Err(Status::invalid_argument(format!(
                "model `{}` takes the input `{want}`, not `{}`",
                r.model_name, input.name
            )));
        }
        // Typed contents become the raw layout, so both arrive at the same checks.
        let from_contents;
        let raw: &[u8] = match (r.raw_input_contents.first(), &input.contents) {
            (Some(raw), _) => raw,
            (None, Some(c)) => {
                from_contents = match input.datatype.as_str() {
                    "BYTES" => length_prefixed(c.bytes_contents.iter().map(Vec::as_slice)),
                    "FP64" => c
                        .fp64_contents
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect(),
                    "FP32" => c
                        .fp32_contents
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect(),
                    _ => Vec::new(),
                };
                &from_contents
            }
            (None, None) => {
                return Err(Status::invalid_argument(format!(
                    "input `{want}` has no data"
                )));
            }
        };
        let outputs = requested(&r)?;
        let t = InputTensor {
            name: input.name.clone(),
            shape: input.shape.clone(),
            datatype: input.datatype.clone(),
            parameters: None,
            data: None,
        };
        let rows = match e {
            Entry::Events => {
                let n = rows_of(&t, &[&[-1], &[-1, 1]]).map_err(status)?;
                if t.datatype != "BYTES" {
                    return Err(Status::invalid_argument(format!(
                        "input `event` is BYTES (one event per element), not {}",
                        t.datatype
                    )));
                }
                let events = crate::oip::bytes_elements(&t, Some(raw), n).map_err(status)?;
                app.prepare(&events).await.map_err(Status::unavailable)?;
                score_events(app, &events).await
            }
            Entry::Features => {
                let n = rows_of(&t, &[&[-1, width as i64]]).map_err(status)?;
                let xs = float_elements(&t, Some(raw), n * width).map_err(status)?;
                crate::oip::score_vectors(app, &xs, width)
            }
        };
        app.metrics.latency.observe(started.elapsed().as_secs_f64());
        let n = rows.score.len() as i64;
        let mut out = ModelInferResponse {
            model_name: r.model_name.clone(),
            model_version: v.to_string(),
            id: r.id.clone(),
            parameters: [(
                "bundle".to_string(),
                InferParameter {
                    parameter_choice: Some(infer_parameter::ParameterChoice::StringParam(bundle)),
                },
            )]
            .into(),
            outputs: Vec::new(),
            raw_output_contents: Vec::new(),
        };
        for name in outputs {
            let (datatype, bytes) = rows.raw(name);
            out.outputs.push(model_infer_response::InferOutputTensor {
                name: name.to_string(),
                datatype: datatype.into(),
                shape: vec![n],
                parameters: Default::default(),
                contents: None,
            });
            out.raw_output_contents.push(bytes);
        }
        Ok(Response::new(out))
    }
}

/// The outputs asked for, in order (all three when none is named); another name is refused.
fn requested(r: &ModelInferRequest) -> Result<Vec<&'static str>, Status> {
    if r.outputs.is_empty() {
        return Ok(vec!["score", "decision", "error"]);
    }
    r.outputs
        .iter()
        .map(|o| match o.name.as_str() {
            "score" => Ok("score"),
            "decision" => Ok("decision"),
            "error" => Ok("error"),
            other => Err(Status::invalid_argument(format!(
                "model `{}` has the outputs score, decision and error, not `{other}`",
                r.model_name
            ))),
        })
        .collect()
}

/// Serve gRPC on `listener` until `token` is cancelled: at most `max_requests` requests at a
/// time over all connections, each within `timeout`, messages up to `max_message_bytes`.
pub(crate) async fn serve(
    listener: TcpListener,
    app: App,
    max_message_bytes: usize,
    max_requests: usize,
    timeout: Duration,
    token: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let svc = GrpcInferenceServiceServer::new(Service { app })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes.saturating_mul(2));
    tonic::transport::Server::builder()
        .timeout(timeout)
        .concurrency_limit_per_connection(64)
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(max_requests))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(svc)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            token.cancelled_owned(),
        )
        .await
}
