//! The registry on `memory://`, on `file://` and on `s3://` against a real S3-compatible server
//! (moto, started by the test through `ci/s3-server`): publish, list, resolve, promote, roll
//! back, corrupt bundles and interrupted publishes.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use shared_models::{Manifest, ModelRef, Registry, RegistryError};

fn manifest(name: &str, auc: f64) -> Manifest {
    Manifest {
        format: 1,
        name: name.to_string(),
        version: 0,
        created_at: String::new(),
        kind: "logistic_regression".into(),
        hyperparameters: serde_json::json!({ "alpha": 0.1 }),
        feature_fingerprint: "f".repeat(64),
        input_signature: vec!["dep_delay".into(), "carrier=AA".into()],
        metrics: BTreeMap::from([("auc".to_string(), auc)]),
        training_data_fingerprint: "d".repeat(64),
        files: BTreeMap::new(),
    }
}

fn files(weights: &str) -> Vec<(String, Bytes)> {
    vec![
        ("weights.json".into(), Bytes::from(weights.to_string())),
        (
            "fitted.json".into(),
            Bytes::from_static(b"{\"scalers\":[]}"),
        ),
    ]
}

async fn lifecycle(reg: &Registry) {
    let m1 = reg
        .publish(manifest("delay", 0.71), files("[1.0]"))
        .await
        .unwrap();
    let m2 = reg
        .publish(manifest("delay", 0.74), files("[2.0]"))
        .await
        .unwrap();
    assert_eq!((m1.version, m2.version), (1, 2));
    assert_eq!(m2.files.len(), 2);
    assert_eq!(reg.versions("delay").await.unwrap(), vec![1, 2]);
    let listed = reg.list().await.unwrap();
    assert_eq!(
        listed.iter().map(Manifest::id).collect::<Vec<_>>(),
        ["delay@1", "delay@2"]
    );
    assert_eq!(listed[1], m2, "what is listed is what was published");

    // Resolve by version, newest, alias.
    assert_eq!(
        reg.resolve(&ModelRef::parse("delay@1").unwrap())
            .await
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        reg.resolve(&ModelRef::parse("delay").unwrap())
            .await
            .unwrap()
            .version,
        2
    );
    let champion = ModelRef::parse("delay@champion").unwrap();
    assert!(matches!(
        reg.resolve(&champion).await,
        Err(RegistryError::NotFound(_))
    ));

    // Promote, then roll back.
    reg.set_alias("delay", "champion", 2).await.unwrap();
    assert_eq!(reg.resolve(&champion).await.unwrap().version, 2);
    reg.set_alias("delay", "champion", 1).await.unwrap();
    assert_eq!(reg.resolve(&champion).await.unwrap().version, 1);
    let bundle = reg
        .fetch(&reg.resolve(&champion).await.unwrap())
        .await
        .unwrap();
    assert_eq!(bundle.file("weights.json").unwrap(), &Bytes::from("[1.0]"));

    // An alias only points at a version that exists.
    assert!(matches!(
        reg.set_alias("delay", "champion", 9).await,
        Err(RegistryError::NotFound(_))
    ));
    assert_eq!(reg.alias("delay", "champion").await.unwrap(), Some(1));
}

#[tokio::test]
async fn lifecycle_in_memory() {
    lifecycle(&Registry::open("memory://").unwrap()).await;
}

#[tokio::test]
async fn lifecycle_on_the_file_system() {
    let dir = std::env::temp_dir().join(format!("registry-{}", std::process::id()));
    let url = format!("file://{}", dir.display());
    lifecycle(&Registry::open_to_publish(&url).unwrap()).await;
    // A second registry on the same directory sees the same models: they are on disk.
    let again = Registry::open(&url).unwrap();
    assert_eq!(again.versions("delay").await.unwrap(), vec![1, 2]);
    assert!(dir.join("models/delay/versions/2/manifest.json").exists());
    std::fs::remove_dir_all(dir).ok();
}

/// moto's S3 server on a free loopback port (`ci/s3-server start`), killed on drop, with one
/// empty bucket.
struct S3Server {
    endpoint: String,
    pid: String,
    dir: std::path::PathBuf,
}

impl S3Server {
    fn start(bucket: &str) -> Self {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = std::env::temp_dir().join(format!(
            "kml-s3-{}-{bucket}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s3");
        let out = std::process::Command::new(root.join("ci/s3-server"))
            .arg("start")
            .arg(&file)
            .arg(bucket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().trim().to_string();
        S3Server {
            endpoint: read(&file),
            pid: read(&dir.join("s3.pid")),
            dir,
        }
    }

    fn options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("aws_region", "us-east-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The raw store under `prefix` (to damage bundles behind the registry's back) and a
    /// registry on the same place.
    fn open(&self, url: &str) -> (Arc<dyn ObjectStore>, Registry) {
        let reg = Registry::open_with_options(url, self.options()).unwrap();
        (reg.store(), reg)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").arg(&self.pid).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Distinguishes servers started by tests of one process.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn lifecycle_on_s3() {
    let s3 = S3Server::start("models");
    let (_, reg) = s3.open("s3://models/team-a");
    lifecycle(&reg).await;
    // Another registry on the same bucket and prefix sees them; another prefix does not.
    let (_, again) = s3.open("s3://models/team-a");
    assert_eq!(again.versions("delay").await.unwrap(), vec![1, 2]);
    let (_, other) = s3.open("s3://models/team-b");
    assert!(other.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_corrupt_file_is_refused_and_named_on_s3() {
    let s3 = S3Server::start("models");
    let (store, reg) = s3.open("s3://models");
    corrupt_file(store, reg).await;
}

#[tokio::test]
async fn an_interrupted_publish_leaves_no_visible_version_on_s3() {
    let s3 = S3Server::start("models");
    let (store, reg) = s3.open("s3://models");
    interrupted_publish(store, reg).await;
}

#[tokio::test]
async fn a_corrupt_file_is_refused_and_named() {
    let store = Arc::new(InMemory::new());
    let reg = Registry::with_store(store.clone(), "memory://");
    corrupt_file(store, reg).await;
}

async fn corrupt_file(store: Arc<dyn ObjectStore>, reg: Registry) {
    let m = reg
        .publish(manifest("delay", 0.7), files("[1.0]"))
        .await
        .unwrap();
    store
        .put(
            &Path::from("models/delay/versions/1/weights.json"),
            Bytes::from("[9.9]").into(),
        )
        .await
        .unwrap();
    match reg.fetch(&m).await {
        Err(RegistryError::Checksum { file, model, .. }) => {
            assert_eq!((file.as_str(), model.as_str()), ("weights.json", "delay@1"))
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_interrupted_publish_leaves_no_visible_version() {
    let store = Arc::new(InMemory::new());
    let reg = Registry::with_store(store.clone(), "memory://");
    interrupted_publish(store, reg).await;
}

async fn interrupted_publish(store: Arc<dyn ObjectStore>, reg: Registry) {
    reg.publish(manifest("delay", 0.7), files("[1.0]"))
        .await
        .unwrap();
    // A publish that died after writing a file of version 2 and before its manifest.
    store
        .put(
            &Path::from("models/delay/versions/2/weights.json"),
            Bytes::from("[2.0]").into(),
        )
        .await
        .unwrap();
    assert_eq!(reg.versions("delay").await.unwrap(), vec![1]);
    assert_eq!(reg.list().await.unwrap().len(), 1);
    assert_eq!(
        reg.resolve(&ModelRef::parse("delay").unwrap())
            .await
            .unwrap()
            .version,
        1
    );
    assert!(matches!(
        reg.set_alias("delay", "champion", 2).await,
        Err(RegistryError::NotFound(_))
    ));
    // The next publish does not reuse the half-written number.
    assert_eq!(
        reg.publish(manifest("delay", 0.8), files("[3.0]"))
            .await
            .unwrap()
            .version,
        3
    );
}

#[tokio::test]
async fn reading_a_store_that_does_not_exist_creates_nothing() {
    let root = std::env::temp_dir().join(format!("registry-missing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("a/b");
    for url in [
        format!("file://{}", dir.display()),
        dir.display().to_string(),
    ] {
        let err = Registry::open(&url).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "store `{url}`: store directory {} does not exist (publishing creates it; \
                 reading never does)",
                dir.display()
            )
        );
        assert!(!root.exists(), "{url}: a read created {}", root.display());
    }
    // A file where the directory should be.
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("file"), b"x").unwrap();
    let url = format!("file://{}/file", root.display());
    let err = Registry::open(&url).unwrap_err().to_string();
    assert!(err.ends_with("/file is not a directory"), "{err}");
    // Publishing creates it, and then reads open it.
    let url = format!("file://{}", dir.display());
    let reg = Registry::open_to_publish(&url).unwrap();
    assert!(dir.is_dir());
    assert!(reg.list().await.unwrap().is_empty());
    reg.publish(manifest("delay", 0.7), files("[1.0]"))
        .await
        .unwrap();
    assert_eq!(
        Registry::open(&url)
            .unwrap()
            .versions("delay")
            .await
            .unwrap(),
        vec![1]
    );
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test]
async fn a_manifest_of_another_version_or_with_odd_file_names_is_refused() {
    let store = Arc::new(InMemory::new());
    let reg = Registry::with_store(store.clone(), "memory://");
    let m = reg
        .publish(manifest("delay", 0.7), files("[1.0]"))
        .await
        .unwrap();
    // Version 2's manifest copied from version 1: it would make `fetch` read version 1's files.
    let body = serde_json::to_vec(&m).unwrap();
    store
        .put(
            &Path::from("models/delay/versions/2/manifest.json"),
            Bytes::from(body).into(),
        )
        .await
        .unwrap();
    let err = reg.manifest("delay", 2).await.unwrap_err();
    assert!(matches!(err, RegistryError::Manifest { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "models/delay/versions/2/manifest.json: says it is delay@1, not delay@2"
    );
    assert_eq!(err.kind(), "manifest");
    // A manifest listing a file outside its version directory.
    let mut odd = m.clone();
    odd.files.insert("../1/weights.json".into(), "0".repeat(64));
    let err = reg.fetch(&odd).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "models/delay/versions/1/manifest.json: lists `../1/weights.json`, which is not a \
         usable bundle file name"
    );
}

#[test]
fn references_parse_or_say_what_is_wrong() {
    assert_eq!(
        ModelRef::parse("delay").unwrap(),
        ModelRef::Latest("delay".into())
    );
    assert_eq!(
        ModelRef::parse("delay@12").unwrap(),
        ModelRef::Version("delay".into(), 12)
    );
    assert_eq!(
        ModelRef::parse("delay@champion").unwrap(),
        ModelRef::Alias("delay".into(), "champion".into())
    );
    for bad in [
        "",
        "@1",
        "delay@",
        "de lay",
        "delay@a/b",
        "../x",
        "delay@1@2",
    ] {
        let err = ModelRef::parse(bad).unwrap_err();
        assert!(
            err.to_string().contains("is not a model reference"),
            "{bad}: {err}"
        );
    }
    assert!(
        Registry::open("ftp://host/x")
            .unwrap_err()
            .to_string()
            .contains("unsupported scheme")
    );
}
