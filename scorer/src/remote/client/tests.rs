//! The client's unit tests: answers read into scores and row errors, retries and splits, raw
//! bytes, URLs.

// The client's own items, and the batching's (`score_rows`) above it.
use super::super::*;
use super::*;

fn client(output: &str) -> Client {
    let args = RemoteArgs {
        model_server: Some("http://127.0.0.1:1".into()),
        model_server_model: None,
        model_server_version: None,
        model_server_input: "features".into(),
        model_server_datatype: Datatype::Fp64,
        model_server_output: output.into(),
        model_server_batch: 8,
        model_server_in_flight: 2,
        model_server_timeout: 1.0,
    };
    Client::new(&args, "http://127.0.0.1:1", "m", 3).unwrap()
}

#[test]
fn scores_come_from_one_or_two_columns_and_errors_refuse_their_row() {
    let c = client("score");
    let rows = c
        .rows_of(
            2,
            vec![
                ("score".into(), vec![2], Column::F64(vec![0.25, f64::NAN])),
                ("decision".into(), vec![2], Column::Bool(vec![false, false])),
                (
                    "error".into(),
                    vec![2],
                    Column::Text(vec!["".into(), "row 1: bad".into()]),
                ),
            ],
        )
        .unwrap();
    assert_eq!(rows[0], RowResult::Score(0.25, Some(false)));
    assert_eq!(
        rows[1],
        RowResult::Refused("the model server refused the row: row 1: bad".into())
    );
    let c = client("predict_proba");
    let rows = c
        .rows_of(
            2,
            vec![(
                "predict_proba".into(),
                vec![2, 2],
                Column::F64(vec![0.9, 0.1, 0.3, 0.7]),
            )],
        )
        .unwrap();
    assert_eq!(
        rows,
        vec![RowResult::Score(0.1, None), RowResult::Score(0.7, None)]
    );
    // Three columns, or a missing output: the server's fault, retried.
    let three = c.rows_of(
        1,
        vec![(
            "predict_proba".into(),
            vec![1, 3],
            Column::F64(vec![0.2, 0.3, 0.5]),
        )],
    );
    assert!(matches!(three, Err(Failure::Down(m)) if m.contains("[1, 3]")));
    let none = c.rows_of(1, vec![]);
    assert!(matches!(none, Err(Failure::Down(m)) if m.contains("predict_proba")));
}

/// A fake model server (unit test): the first request fails with 503, a request holding a
/// row whose first feature is 13 is refused with 400, others are scored `x0 / 100`.
async fn fake_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::extract::State;
    use axum::http::StatusCode;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    async fn infer(
        State(calls): State<Arc<AtomicUsize>>,
        body: axum::body::Bytes,
    ) -> (StatusCode, String) {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return (StatusCode::SERVICE_UNAVAILABLE, "warming up".into());
        }
        let req: Json = serde_json::from_slice(&body).unwrap();
        let input = &req["inputs"][0];
        let width = input["shape"][1].as_u64().unwrap() as usize;
        let x: Vec<f64> = input["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let firsts: Vec<f64> = x.chunks(width).map(|r| r[0]).collect();
        if firsts.contains(&13.0) {
            let e = serde_json::json!({"error": "a row has 13"});
            return (StatusCode::BAD_REQUEST, e.to_string());
        }
        let scores: Vec<f64> = firsts.iter().map(|v| v / 100.0).collect();
        let reply = serde_json::json!({
            "model_name": "m_features", "model_version": "7",
            "outputs": [{"name": "score", "datatype": "FP64", "shape": [scores.len()], "data": scores}],
        });
        (StatusCode::OK, reply.to_string())
    }
    let app = axum::Router::new()
        .route("/v2/models/m_features/infer", axum::routing::post(infer))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), calls)
}

#[test]
fn a_down_server_is_retried_and_a_refused_batch_split_until_the_refused_rows_are_alone() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (url, calls) = fake_server().await;
        let mut c = client("score");
        c = Client::new(
            &RemoteArgs {
                model_server: Some(url.clone()),
                ..args_of(&c)
            },
            &url,
            "m",
            3,
        )
        .unwrap();
        let firsts = [0.0, 1.0, 13.0, 3.0, 4.0, 13.0, 6.0];
        let x: Vec<f64> = firsts.iter().flat_map(|&f| [f, 0.5, -1.0]).collect();
        let metrics = Metrics::new();
        let answer = score_rows(c, x, CancellationToken::new(), metrics.clone()).await;
        let Answer::Done {
            rows,
            model,
            version,
            ..
        } = answer
        else {
            panic!("cancelled")
        };
        assert_eq!((model.as_str(), version.as_str()), ("m_features", "7"));
        let refused = RowResult::Refused(
            "the model server refused the row: 400 Bad Request: a row has 13".into(),
        );
        let want: Vec<RowResult> = firsts
            .iter()
            .map(|&f| {
                if f == 13.0 {
                    refused.clone()
                } else {
                    RowResult::Score(f / 100.0, None)
                }
            })
            .collect();
        assert_eq!(rows, want);
        assert_eq!(metrics.model_server_failures.get(), 1, "the 503, retried");
        assert!(metrics.model_server_refusals.get() >= 2);
        assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 5);
    });
}

fn args_of(c: &Client) -> RemoteArgs {
    RemoteArgs {
        model_server: Some(c.url.clone()),
        model_server_model: None,
        model_server_version: None,
        model_server_input: c.input.clone(),
        model_server_datatype: c.datatype,
        model_server_output: c.output.clone(),
        model_server_batch: 8,
        model_server_in_flight: 2,
        model_server_timeout: 2.0,
    }
}

#[test]
fn raw_bytes_outputs_decode_length_prefixed_elements() {
    let raw = [2u8, 0, 0, 0, b'o', b'k', 0, 0, 0, 0];
    match raw_column("BYTES", &raw) {
        Some(Column::Text(v)) => assert_eq!(v, vec!["ok".to_string(), String::new()]),
        _ => panic!("not text"),
    }
    // A length past the end is not a column.
    assert!(raw_column("BYTES", &[9, 0, 0, 0, 1]).is_none());
}

#[test]
fn a_url_without_a_known_scheme_is_refused() {
    let mut args = RemoteArgs {
        model_server: None,
        model_server_model: None,
        model_server_version: None,
        model_server_input: "features".into(),
        model_server_datatype: Datatype::Fp64,
        model_server_output: "score".into(),
        model_server_batch: 8,
        model_server_in_flight: 2,
        model_server_timeout: 1.0,
    };
    let e = Client::new(&args, "localhost:8000", "m", 3)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("http://") && e.contains("grpc://"), "{e}");
    args.model_server_batch = 0;
    let e = Client::new(&args, "http://x:1", "m", 3)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--model-server-batch 0"), "{e}");
}
