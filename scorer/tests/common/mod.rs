//! Test harness: a real tansu broker on loopback, a model fitted on the fixtures, the scorer
//! binary; topics produced and read back (`topics.rs`); reference scores from `scorer replay`
//! and the disordered fixture topic (`replays.rs`); test directories (`TempDir`).
#![allow(dead_code)]

mod replays;
// The test directory of shared-features' harness: the same file, not a copy.
#[path = "../../../shared-features/tests/common/tempdir.rs"]
mod tempdir;
mod topics;

// Not every test uses every helper.
#[allow(unused_imports)]
pub use replays::*;
#[allow(unused_imports)]
pub use topics::*;

pub use tempdir::TempDir;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tansu broker (memory storage) on a free loopback port, killed on drop.
pub struct Broker {
    pub addr: String,
    child: Child,
}

impl Broker {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    /// A broker on a given port (one that a client may already be trying to reach).
    pub fn start_on(port: u16) -> Self {
        let out = Command::new(repo().join("ci/broker"))
            .arg("path")
            .output()
            .expect("run ci/broker path");
        assert!(
            out.status.success(),
            "ci/broker path: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let addr = format!("127.0.0.1:{port}");
        let url = format!("tcp://{addr}");
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let t0 = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "tansu did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { addr, child }
    }
}

impl Broker {
    /// Send the broker a signal (`STOP`, `CONT`): a broker that stops answering.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed (SIGKILL) when dropped, so that a failing test leaves none behind.
pub struct Guard(Option<Child>);

impl Guard {
    pub fn new(c: Child) -> Self {
        Guard(Some(c))
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }

    /// Wait for the child to exit on its own and collect its output.
    pub fn output(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }

    /// SIGTERM the child (a clean stop), and collect its output.
    pub fn terminate(mut self) -> Output {
        let pid = self.child().id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.output()
    }
}

/// Start `scorer` with `args`, its stdout piped (for the summary) and its log in `log`.
pub fn spawn_scorer(args: &[String], log: &Path) -> Guard {
    Guard::new(
        scorer()
            .current_dir(repo())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Events a running scorer has finished with (predicted, dead-lettered or filtered), from its
/// metrics endpoint `addr`.
pub fn events_done(addr: &str) -> f64 {
    let text = http_get(addr, "/metrics").1;
    metric(&text, "kml_predictions_total")
        + metric(&text, "kml_dead_lettered_total")
        + metric(&text, "kml_filtered_total")
}

/// Copy version `from` of model `name` in the `file://` store at `store` to version `to`,
/// every file but the manifest and the claim, each through `edit` (which may change its bytes
/// or, returning `None`, leave it out); the manifest gets the new version and the files'
/// checksums.
pub fn copy_version(
    store: &Path,
    name: &str,
    (from, to): (u64, u64),
    edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>,
) {
    use sha2::{Digest, Sha256};
    let versions = store.join(format!("models/{name}/versions"));
    let (src, dst) = (
        versions.join(from.to_string()),
        versions.join(to.to_string()),
    );
    std::fs::create_dir_all(&dst).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("manifest.json")).unwrap()).unwrap();
    manifest["version"] = serde_json::json!(to);
    let files = manifest["files"].as_object_mut().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let path = e.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if file == "manifest.json" || file == "claim" {
            continue;
        }
        match edit(&file, std::fs::read(&path).unwrap()) {
            Some(bytes) => {
                let sha: String = Sha256::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                files.insert(file.clone(), serde_json::json!(sha));
                std::fs::write(dst.join(&file), bytes).unwrap();
            }
            None => {
                files.remove(&file);
            }
        }
    }
    std::fs::write(
        dst.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn scorer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scorer"))
}

/// The trainer binary, built beside the scorer by `cargo test --workspace`.
pub fn trainer() -> Command {
    let dir = Path::new(env!("CARGO_BIN_EXE_scorer"))
        .parent()
        .unwrap()
        .to_path_buf();
    let bin = dir.join("trainer");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (cargo test --workspace)",
        bin.display()
    );
    Command::new(bin)
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

pub fn json_out(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

pub const PIPELINE: &str = "data/flights/pipeline.toml";
pub const FIXTURES: &str = "data/flights/fixtures";

/// Fit the flights model on the fixtures into `store` (a directory) and set `alias`.
pub fn fit(store: &Path, alias: &str, extra: &[&str]) -> serde_json::Value {
    fit_with(PIPELINE, &store_url(store), alias, extra, &[])
}

/// Fit `pipeline` on the fixtures into the store at `url` and set `alias`, with `env` set (the
/// credentials and endpoint of a bucket, say).
pub fn fit_with(
    pipeline: &str,
    url: &str,
    alias: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let out = run_ok(
        trainer()
            .current_dir(repo())
            .envs(env.iter().copied())
            .args([
                "fit",
                "--pipeline",
                pipeline,
                "--base",
                FIXTURES,
                "--store",
                url,
            ])
            .args(["--valid-from", "2013-01-03", "--alias", alias, "--json"])
            .args(extra),
    );
    json_out(&out)
}

pub fn store_url(store: &Path) -> String {
    format!("file://{}", store.display())
}

/// Feed the fixture flights into `topic`.
pub fn feed(broker: &Broker, topic: &str) -> serde_json::Value {
    let out = run_ok(
        scorer()
            .current_dir(repo())
            .args(["feed", "--brokers", &broker.addr, "--pipeline", PIPELINE])
            .args([
                "--events",
                &format!("{FIXTURES}/raw/flights.csv"),
                "--topic",
                topic,
                "--json",
            ]),
    );
    json_out(&out)
}

/// The fixture flights as topic records (key, JSON value), in event order, as `scorer feed`
/// publishes them.
pub fn read_fixture_events() -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let out = std::env::temp_dir().join(format!("kml-fixture-events-{}.jsonl", std::process::id()));
    run_ok(
        scorer()
            .current_dir(repo())
            .args(["feed", "--pipeline", PIPELINE])
            .args(["--events", &format!("{FIXTURES}/raw/flights.csv")])
            .args(["--out", out.to_str().unwrap()]),
    );
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let key = v["tailnum"]
                .as_str()
                .unwrap_or_default()
                .as_bytes()
                .to_vec();
            (key, Some(l.as_bytes().to_vec()))
        })
        .collect()
}

/// Fit the flights pipeline with the aircraft windows only (other features than the
/// champion's) into `store` and set `alias`.
pub fn fit_by_aircraft(store: &Path, alias: &str) -> serde_json::Value {
    fit_with(
        "data/flights/pipeline-by-aircraft.toml",
        &store_url(store),
        alias,
        &[],
        &[],
    )
}

/// Common `scorer run` arguments for tests.
pub fn run_args(broker: &Broker, store: &Path, input: &str, group: &str) -> Vec<String> {
    run_args_at(&broker.addr, store, input, group)
}

/// [`run_args`] for a broker address.
pub fn run_args_at(brokers: &str, store: &Path, input: &str, group: &str) -> Vec<String> {
    [
        "run",
        "--brokers",
        brokers,
        "--store",
        &store_url(store),
        "--model",
        "flights_delay@champion",
        "--input",
        input,
        "--output",
        &format!("{input}.pred"),
        "--dlq",
        &format!("{input}.dlq"),
        "--group",
        group,
        "--metrics-addr",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// GET a path of the scorer's HTTP endpoint.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// The value of a metric in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no metric {name}"))
        .trim()
        .parse()
        .unwrap()
}

/// The `addr` of the first JSON log line containing `message`, waiting up to 30 s for it.
pub fn addr_in_log(log: &Path, message: &str) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(message)) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            return v["addr"].as_str().unwrap().to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no `{message}` in {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Arguments of a scorer a test SIGKILLs: a member killed without leaving holds up the
/// restart's join for the poll interval, so that is short; batches of 100 events.
pub const KILLABLE: [&str; 6] = [
    "--batch-size",
    "100",
    "-X",
    "max.poll.interval.ms=8000",
    "-X",
    "session.timeout.ms=6000",
];

/// Watermark order, exactly-once, transactions of at most 100 events, no checkpoints.
pub const EOS_WATERMARK: [&str; 7] = [
    "--order",
    "watermark",
    "--exactly-once",
    "--transaction-max-events",
    "100",
    "--checkpoint-interval",
    "off",
];

/// A fresh directory for one test, under the system's temporary directory.
pub fn tempdir(name: &str) -> TempDir {
    TempDir::fresh(std::env::temp_dir().join(format!("kml-test-{name}-{}", std::process::id())))
}

/// Wait until `f` holds, checking every 100 ms; fail naming `what` after `secs` seconds.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An S3-compatible server (moto, started by `ci/s3-server`) with one bucket; stopped on drop.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pid: String,
}

impl S3Server {
    /// Start one with `bucket`, its port and pid files in `dir`.
    pub fn start(dir: &Path, bucket: &str) -> Self {
        let file = dir.join("s3");
        let out = Command::new(repo().join("ci/s3-server"))
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
        Self {
            endpoint: std::fs::read_to_string(&file).unwrap().trim().to_string(),
            pid: std::fs::read_to_string(dir.join("s3.pid"))
                .unwrap()
                .trim()
                .to_string(),
        }
    }

    /// The environment that points object_store's S3 client at it.
    pub fn env(&self) -> [(&'static str, &str); 5] {
        [
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.pid).status();
    }
}
