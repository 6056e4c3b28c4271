//! Hand-corrupted bundles of every model kind: each is refused at load, by
//! `Servable::from_bundle`, with an error naming the file, the parameter and the value, and none
//! panics.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Value, json};
use shared_features::{FittedState, Pipeline, fingerprint};
use shared_models::{Bundle, FORMAT, Manifest, RegistryError, Servable};

const PIPELINE: &str = r#"
[pipeline]
name = "tiny"

[events]
key = "id"
fields = { id = "str", ts = "timestamp", x = "float", cat = "str" }
time = { fn = "field", field = "ts" }

[features]
numeric = ["x"]
categorical = ["cat"]
"#;

/// Four inputs: `x`, `cat=a`, `cat=b`, `cat=<other>`.
fn fitted() -> Value {
    json!({
        "scalers": [{"column": "x", "mean": 2.0, "std": 0.5}],
        "vocabs": [{"column": "cat", "levels": ["a", "b"]}],
        "tables": [],
        "rows": 10
    })
}

fn linear() -> Value {
    json!({"weights": [0.5, -1.0, 0.25, 0.0], "intercept": 0.1, "threshold": 0.5})
}

fn tree() -> Value {
    let leaf = |p: f64| json!({"feature": 0, "split": 0.0, "left": 0, "right": 0, "leaf": p});
    json!({
        "nodes": [
            {"feature": 0, "split": 0.5, "left": 1, "right": 2, "leaf": null},
            leaf(0.2),
            {"feature": 3, "split": 0.5, "left": 3, "right": 4, "leaf": null},
            leaf(0.6),
            leaf(0.9)
        ],
        "threshold": 0.5
    })
}

fn mlp() -> Value {
    json!({
        "layers": [
            {"inputs": 4, "outputs": 2, "weights": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
             "bias": [0.0, 0.1]},
            {"inputs": 2, "outputs": 1, "weights": [1.0, -1.0], "bias": [0.5]}
        ],
        "threshold": 0.5
    })
}

/// A bundle of `kind` whose manifest agrees with its files: fingerprint and input signature
/// computed from `fitted` as the trainer does.
fn bundle(kind: &str, model: &Value, fitted: &Value) -> Bundle {
    let pipeline = Pipeline::parse(PIPELINE, "pipeline.toml").unwrap();
    let state: FittedState = serde_json::from_value(fitted.clone()).unwrap();
    let manifest = Manifest {
        format: FORMAT,
        name: "tiny".into(),
        version: 1,
        created_at: "2026-01-01T00:00:00.000Z".into(),
        kind: kind.into(),
        hyperparameters: json!({}),
        feature_fingerprint: fingerprint(&pipeline, &state),
        input_signature: state.names(),
        metrics: BTreeMap::new(),
        training_data_fingerprint: "d".repeat(64),
        files: BTreeMap::new(),
    };
    let files = [
        ("pipeline.toml", Bytes::from(PIPELINE)),
        ("fitted.json", Bytes::from(fitted.to_string())),
        ("model.json", Bytes::from(model.to_string())),
    ]
    .into_iter()
    .map(|(n, b)| (n.to_string(), b))
    .collect();
    Bundle { manifest, files }
}

/// The load error of a bundle, as the scorer and `trainer show` print it.
fn refusal(b: &Bundle) -> String {
    match Servable::from_bundle(b) {
        Err(e @ RegistryError::Invalid { .. }) => e.to_string(),
        Err(other) => panic!("expected an invalid bundle, got {other:?}"),
        Ok(s) => panic!("{} loaded", s.id),
    }
}

/// `model` with the JSON value at `pointer` replaced.
fn with(model: &Value, pointer: &str, value: Value) -> Value {
    let mut m = model.clone();
    *m.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer}")) = value;
    m
}

#[test]
fn sane_bundles_of_every_kind_load_and_score() {
    for (kind, model) in [
        ("logistic_regression", linear()),
        ("decision_tree", tree()),
        ("mlp", mlp()),
    ] {
        let s = Servable::from_bundle(&bundle(kind, &model, &fitted())).unwrap();
        assert_eq!(s.model.kind(), kind);
        let p = s.model.predict_proba(&[1.0, 0.0, 1.0, 0.0]);
        assert!((0.0..=1.0).contains(&p), "{kind}: {p}");
    }
}

#[test]
fn a_logistic_regression_with_insane_parameters_is_refused_naming_them() {
    let kind = "logistic_regression";
    for (pointer, value, words) in [
        (
            "/weights/2",
            json!(1e300),
            "weights[2] is 1e300: parameters must be finite",
        ),
        ("/weights/0", json!(-1e300), "weights[0] is -1e300"),
        ("/intercept", json!(2e6), "intercept is 2000000.0"),
        (
            "/threshold",
            json!(7.5),
            "threshold is 7.5: a decision threshold is a probability",
        ),
        ("/threshold", json!(-0.5), "threshold is -0.5"),
    ] {
        let e = refusal(&bundle(kind, &with(&linear(), pointer, value), &fitted()));
        assert!(
            e.starts_with("bundle tiny@1: model.json: ") && e.contains(words),
            "{pointer}: {e}"
        );
    }
    // JSON cannot spell NaN; a weight too large for f64 does not parse, and says where.
    let text = linear().to_string().replacen("0.25", "1e400", 1);
    let mut b = bundle(kind, &linear(), &fitted());
    b.files.insert("model.json".into(), Bytes::from(text));
    let e = refusal(&b);
    assert!(
        e.contains("model.json: number out of range at line 1"),
        "{e}"
    );
}

#[test]
fn a_logistic_regression_of_another_width_names_the_model_as_the_culprit() {
    let short = with(&linear(), "/weights", json!([0.5, -1.0, 0.25]));
    assert_eq!(
        refusal(&bundle("logistic_regression", &short, &fitted())),
        "bundle tiny@1: input signature: model.json does not take the 4 inputs that \
         fitted.json encodes and the manifest lists: the model has 3 weights, one per input"
    );
    // The manifest's signature renamed: the manifest is the one that differs.
    let mut b = bundle("logistic_regression", &linear(), &fitted());
    b.manifest.input_signature[1] = "cat=z".into();
    let e = refusal(&b);
    assert!(
        e.contains("the manifest's input signature differs")
            && e.contains("slot 1 is `cat=a` in fitted.json but `cat=z` in the manifest"),
        "{e}"
    );
}

#[test]
fn a_malformed_or_insane_decision_tree_is_refused_naming_the_node() {
    let kind = "decision_tree";
    for (pointer, value, words) in [
        (
            "/nodes/2/right",
            json!(99),
            "nodes[2].right is 99: a child must be one of the nodes",
        ),
        ("/nodes/2/left", json!(0), "nodes[2].left is 0"),
        ("/nodes/2/left", json!(2), "nodes[2].left is 2"),
        (
            "/nodes/4/leaf",
            json!(1.5),
            "nodes[4].leaf is 1.5: a leaf holds a share",
        ),
        ("/nodes/1/leaf", json!(-0.1), "nodes[1].leaf is -0.1"),
        ("/nodes", json!([]), "a tree needs at least one node"),
        ("/threshold", json!(7.5), "threshold is 7.5"),
        // A slot beyond the inputs, up to the largest index: refused, not overflowed.
        ("/nodes/2/feature", json!(4), "the tree reads input slot 4"),
        (
            "/nodes/2/feature",
            json!(u64::MAX),
            "the tree reads input slot 18446744073709551615",
        ),
    ] {
        let e = refusal(&bundle(kind, &with(&tree(), pointer, value), &fitted()));
        assert!(e.contains(words), "{pointer}: {e}");
        assert!(
            e.contains("model.json") || e.contains("input signature"),
            "{e}"
        );
    }
    // Leaves must say what they are: a node with neither a leaf value nor valid children.
    let e = refusal(&bundle(
        kind,
        &with(&tree(), "/nodes/1/leaf", json!(null)),
        &fitted(),
    ));
    assert!(e.contains("nodes[1].left is 0"), "{e}");
}

#[test]
fn a_malformed_or_insane_mlp_is_refused_naming_the_layer() {
    let kind = "mlp";
    for (pointer, value, words) in [
        (
            "/layers/0/weights/5",
            json!(1e30),
            "layers[0].weights[5] is 1.0000000150474662e30",
        ),
        (
            "/layers/1/bias/0",
            json!(-2e6),
            "layers[1].bias[0] is -2000000.0",
        ),
        (
            "/layers/0/weights",
            json!([0.1, 0.2]),
            "layer 0: 2 weights and 2 biases for 4 x 2",
        ),
        (
            "/layers/0/bias",
            json!([0.0]),
            "layer 0: 8 weights and 1 biases for 4 x 2",
        ),
        (
            "/layers/1/inputs",
            json!(3),
            "layer 1 takes 3 inputs but the layer before gives 2",
        ),
        (
            "/layers/1/outputs",
            json!(2),
            "the last layer has 2 outputs",
        ),
        ("/layers", json!([]), "an MLP needs at least one layer"),
        ("/threshold", json!(7.5), "threshold is 7.5"),
        // inputs x outputs overflows usize: refused, not multiplied.
        (
            "/layers/0/inputs",
            json!(u64::MAX),
            "layer 0: 8 weights and 2 biases",
        ),
    ] {
        let e = refusal(&bundle(kind, &with(&mlp(), pointer, value), &fitted()));
        assert!(
            e.starts_with("bundle tiny@1: model.json: ") && e.contains(words),
            "{pointer}: {e}"
        );
    }
    // A hidden layer of width 0 chains, and used to panic on the first event it scored.
    let hollow = json!({
        "layers": [
            {"inputs": 4, "outputs": 0, "weights": [], "bias": []},
            {"inputs": 0, "outputs": 1, "weights": [], "bias": [0.5]}
        ],
        "threshold": 0.5
    });
    assert_eq!(
        refusal(&bundle(kind, &hollow, &fitted())),
        "bundle tiny@1: model.json: layer 0 is 4 x 0: a layer needs at least one input and one \
         output"
    );
    // A weight beyond f32 does not parse at all.
    let text = mlp().to_string().replacen("0.8", "1e300", 1);
    let mut b = bundle(kind, &mlp(), &fitted());
    b.files.insert("model.json".into(), Bytes::from(text));
    assert!(refusal(&b).contains("model.json: number out of range"));
    // The first layer's width is the model's input count.
    let wide = with(
        &with(&mlp(), "/layers/0/inputs", json!(5)),
        "/layers/0/weights",
        json!(vec![0.0; 10]),
    );
    let e = refusal(&bundle(kind, &wide, &fitted()));
    assert!(e.ends_with("the MLP's first layer takes 5 inputs"), "{e}");
}

#[test]
fn fitted_state_that_would_encode_nan_or_misplace_inputs_is_refused() {
    for (pointer, value, words) in [
        (
            "/scalers/0/std",
            json!(0.0),
            "scalers[0] (x): std is 0.0; a scale must be finite and positive",
        ),
        ("/scalers/0/std", json!(-1.0), "std is -1.0"),
        (
            "/scalers/0/column",
            json!("y"),
            "scalers[0] is for `y` but the pipeline's feature there is `x`",
        ),
        (
            "/scalers",
            json!([]),
            "0 scalers for the pipeline's 1 features",
        ),
        (
            "/vocabs/0/levels",
            json!(["b", "a"]),
            "vocabs[0] (cat): levels[1] `a` does not come after `b`",
        ),
        (
            "/vocabs/0/levels",
            json!(["a", "a"]),
            "levels[1] `a` does not come after `a`",
        ),
    ] {
        let f = with(&fitted(), pointer, value);
        // A model that fits the corrupted state, so that nothing else is wrong.
        let width = serde_json::from_value::<FittedState>(f.clone())
            .unwrap()
            .width();
        let model = json!({"weights": vec![0.1; width], "intercept": 0.0, "threshold": 0.5});
        let e = refusal(&bundle("logistic_regression", &model, &f));
        assert!(
            e.starts_with("bundle tiny@1: fitted.json: ") && e.contains(words),
            "{pointer}: {e}"
        );
    }
}

#[test]
fn a_newer_format_or_a_missing_file_is_refused() {
    let mut b = bundle("mlp", &mlp(), &fitted());
    b.manifest.format = 2;
    assert_eq!(
        refusal(&b),
        "bundle tiny@1: manifest.json: format 2 is not one this build reads (1)"
    );
    let mut b = bundle("mlp", &mlp(), &fitted());
    b.files.remove("model.json");
    assert_eq!(refusal(&b), "bundle tiny@1: the bundle has no `model.json`");
    let b = bundle("forest", &mlp(), &fitted());
    assert_eq!(
        refusal(&b),
        "bundle tiny@1: manifest.json: unknown model kind `forest` (known: \
         logistic_regression, decision_tree, mlp)"
    );
}

/// JSON pointers of every number in `v`.
fn numbers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Number(_) => out.push(at),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                numbers(x, format!("{at}/{i}"), out);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                numbers(x, format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn whatever_loads_scores_a_probability_and_nothing_panics() {
    // Every number of every model kind replaced, one at a time, by each hostile value: the
    // bundle is refused, or it loads and scores a probability in [0, 1] on every input; no
    // combination panics.
    let hostile = [
        json!(0),
        json!(1),
        json!(-1),
        json!(2),
        json!(7.5),
        json!(-7.5),
        json!(1e6),
        json!(1.5e6),
        json!(-1e300),
        json!(1e300),
        json!(3.4e38),
        json!(u64::MAX),
        json!(i64::MIN),
    ];
    let inputs = [
        [1.0, 0.0, 1.0, 0.0],
        [-3.0, 1.0, 0.0, 0.0],
        [40.0, 0.0, 0.0, 1.0],
    ];
    let (mut loaded, mut refused) = (0, 0);
    for (kind, model) in [
        ("logistic_regression", linear()),
        ("decision_tree", tree()),
        ("mlp", mlp()),
    ] {
        let mut pointers = Vec::new();
        numbers(&model, String::new(), &mut pointers);
        for pointer in &pointers {
            for value in &hostile {
                let b = bundle(kind, &with(&model, pointer, value.clone()), &fitted());
                let outcome = std::panic::catch_unwind(|| match Servable::from_bundle(&b) {
                    Ok(s) => Some(inputs.map(|x| s.model.predict_proba(&x))),
                    Err(_) => None,
                });
                match outcome {
                    Err(_) => panic!("{kind} {pointer} = {value} panicked"),
                    Ok(None) => refused += 1,
                    Ok(Some(scores)) => {
                        loaded += 1;
                        assert!(
                            scores.iter().all(|p| (0.0..=1.0).contains(p)),
                            "{kind} {pointer} = {value} loaded and scores {scores:?}"
                        );
                    }
                }
            }
        }
    }
    eprintln!("{loaded} loaded, {refused} refused");
    assert!(
        loaded > 100 && refused > 100,
        "{loaded} loaded, {refused} refused"
    );
}
