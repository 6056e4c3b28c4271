//! What both libFuzzer targets share: an engine per input, and the checks on its outcome.

use std::sync::Arc;

use shared_features::{OnlineEngine, Pipeline, Tables, Value};

/// Split one fuzzer input into events at newlines, so that one input is a short stream (windows,
/// lateness and the future bound all need more than one event), and check each outcome.
pub fn run(p: &Arc<Pipeline>, tables: &Arc<Tables>, data: &[u8]) {
    let mut e = OnlineEngine::new(p.clone(), tables.clone());
    for event in data.split(|&b| b == b'\n').take(64) {
        match e.process(event) {
            Ok(Some(row)) => {
                assert_eq!(row.len(), p.layout.len());
                assert!(
                    !row.iter()
                        .any(|v| matches!(v, Value::Float(x) if x.is_nan()))
                );
            }
            Ok(None) => {}
            Err(err) => assert!(!err.to_string().is_empty()),
        }
    }
}
