//! Test harness: a real tansu broker on loopback, a model fitted on the fixtures, the scorer
//! binary, and readers of topics.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::topic_partition_list::Offset;

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

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Rec {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap()
    }
}

/// Whether `topic` exists yet.
pub fn broker_has(broker: &Broker, topic: &str) -> bool {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    c.fetch_metadata(Some(topic), Duration::from_secs(5))
        .is_ok_and(|m| {
            m.topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        })
}

/// The high watermark of partition 0 of `topic`.
pub fn high_watermark(broker: &Broker, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    c.fetch_watermarks(topic, 0, Duration::from_secs(10))
        .map_or(0, |(_, high)| high)
}

/// Every record of partition 0 of `topic`, up to its high watermark now.
pub fn read_all(broker: &Broker, topic: &str) -> Vec<Rec> {
    read_partition(broker, topic, 0)
}

/// Every record of every partition of `topic`, partition by partition.
pub fn read_every_partition(broker: &Broker, topic: &str) -> Vec<Rec> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let n = md.topics()[0].partitions().len() as i32;
    (0..n)
        .flat_map(|p| read_partition(broker, topic, p))
        .collect()
}

/// Every record of `partition` of `topic`, up to its high watermark now.
pub fn read_partition(broker: &Broker, topic: &str, partition: i32) -> Vec<Rec> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (low, high) = c
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap();
    let mut out = Vec::new();
    if high <= low {
        return out;
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(low))
        .unwrap();
    c.assign(&tpl).unwrap();
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "reading {topic} timed out"
        );
        // Read past the high watermark until quiet: tansu's counts only the first record of
        // the newest batch. Transaction markers take offsets but are never delivered, so the
        // position tells where reading is, not the last message.
        let Some(m) = c.poll(Duration::from_millis(500)) else {
            match c.position().unwrap().elements()[0].offset() {
                Offset::Offset(at) if at >= high => break,
                _ => continue,
            }
        };
        let m = m.unwrap();
        let mut headers = BTreeMap::new();
        if let Some(h) = m.headers() {
            for x in h.iter() {
                headers.insert(
                    x.key.to_string(),
                    String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        out.push(Rec {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().unwrap_or_default().to_vec(),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    out
}

/// The committed offset of `group` on partition 0 of `topic` (`None`: nothing committed).
pub fn committed(broker: &Broker, group: &str, topic: &str) -> Option<i64> {
    committed_all(broker, group, topic, 1)[0]
}

/// The committed offsets of `group` on partitions `0..n` of `topic`.
pub fn committed_all(broker: &Broker, group: &str, topic: &str, n: i32) -> Vec<Option<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .collect()
}

/// Produce raw records to partition 0 of `topic`.
pub fn produce_raw<K: AsRef<str>>(broker: &Broker, topic: &str, records: &[(K, Vec<u8>)]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    for (k, v) in records {
        p.send(
            BaseRecord::to(topic)
                .key(k.as_ref())
                .payload(v.as_slice())
                .partition(0),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
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

/// Produce records with any key and payload (`None`: no payload) to partition 0 of `topic`,
/// allowing records of up to 2 MB, in order.
pub fn produce_records(broker: &Broker, topic: &str, records: &[(Vec<u8>, Option<Vec<u8>>)]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    create_topic(broker, topic, 1);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("message.max.bytes", "2000000")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for (k, v) in records {
        let mut rec: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).key(k.as_slice()).partition(0);
        if let Some(v) = v {
            rec = rec.payload(v.as_slice());
        }
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((e, r)) => {
                    assert!(
                        e.to_string().contains("Queue full"),
                        "cannot produce to {topic}: {e}"
                    );
                    p.poll(Duration::from_millis(10));
                    rec = r;
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// The scorer's `replay` of a whole topic to a JSON-lines file: score bits by source offset.
pub fn replay_scores(broker: &Broker, store: &Path, topic: &str) -> BTreeMap<i64, u64> {
    replay_scores_of(broker, store, "flights_delay@champion", topic)
}

/// [`replay_scores`] with `model`.
pub fn replay_scores_of(
    broker: &Broker,
    store: &Path,
    model: &str,
    topic: &str,
) -> BTreeMap<i64, u64> {
    let out = store.join(format!("{topic}.{model}.replay.jsonl"));
    replay_with(
        broker,
        store,
        model,
        topic,
        &["--out", out.to_str().unwrap()],
    );
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["offset"].as_i64().unwrap(),
                v["score"].as_f64().unwrap().to_bits(),
            )
        })
        .collect()
}

/// `scorer replay` of `topic` with `model` from `store`, plus `extra` arguments; it must succeed.
pub fn replay_with(
    broker: &Broker,
    store: &Path,
    model: &str,
    topic: &str,
    extra: &[&str],
) -> Output {
    run_ok(
        scorer()
            .current_dir(repo())
            .args([
                "replay",
                "--brokers",
                &broker.addr,
                "--store",
                &store_url(store),
            ])
            .args(["--model", model, "--input", topic])
            .args(extra),
    )
}

/// Create `topic` with `partitions` partitions unless it exists.
pub fn create_topic(broker: &Broker, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let r = rt
        .block_on(admin.create_topics(&[new], &AdminOptions::new()))
        .unwrap();
    for x in r {
        match x {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => panic!("cannot create {t}: {e}"),
        }
    }
}

/// Score of each source offset, from a predictions topic; repeats are counted.
pub fn scores_by_offset(recs: &[Rec]) -> (BTreeMap<i64, f64>, usize) {
    let mut m = BTreeMap::new();
    let mut repeats = 0;
    for r in recs {
        let v = r.json();
        let off = v["offset"].as_i64().unwrap();
        if m.insert(off, v["score"].as_f64().unwrap()).is_some() {
            repeats += 1;
        }
    }
    (m, repeats)
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
    let d = std::env::temp_dir().join(format!("kml-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// A test's directory ([`tempdir`]): removed when dropped, kept when the test fails (to look
/// into).
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
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

/// The predictions of a JSON-lines file.
pub fn predictions(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `scorer replay` of `topic` with `--order`, as `(key, event time ms) -> score bits`.
pub fn replay_by_event(
    broker: &Broker,
    store: &Path,
    topic: &str,
    order: &str,
) -> Vec<(String, i64, u64)> {
    let out = store.join(format!("{topic}-{order}.jsonl"));
    replay_with(
        broker,
        store,
        "flights_delay@champion",
        topic,
        &["--order", order, "--out", out.to_str().unwrap()],
    );
    let mut scores: Vec<(String, i64, u64)> = predictions(&out)
        .iter()
        .map(|v| {
            (
                v["key"].as_str().unwrap().to_string(),
                v["event_time_ms"].as_i64().unwrap(),
                v["score"].as_f64().unwrap().to_bits(),
            )
        })
        .collect();
    scores.sort();
    scores
}

/// `(key, event time ms, score bits)` of each prediction, sorted.
pub type Scores = Vec<(String, i64, u64)>;

/// The fixture flights fed to topic `ordered` and replayed (in arrival order) to learn their
/// times, then the same records in a disordered arrival order: each delayed by up to 59
/// minutes after its event time, none past the lateness. Returns the replay's scores
/// (`(key, event time ms) -> score bits`, sorted) and the disordered records.
pub fn disordered_flights(broker: &Broker, store: &Path) -> (Scores, Vec<(String, Vec<u8>)>) {
    feed(broker, "ordered");
    let sorted = replay_by_event(broker, store, "ordered", "arrival");
    assert!(sorted.len() > 2600);
    // Each event's time from its prediction (by offset); cancelled flights, filtered and
    // never predicted, travel with the event before them.
    let by_offset: std::collections::BTreeMap<i64, i64> =
        predictions(&store.join("ordered-arrival.jsonl"))
            .iter()
            .map(|v| {
                (
                    v["offset"].as_i64().unwrap(),
                    v["event_time_ms"].as_i64().unwrap(),
                )
            })
            .collect();
    let recs = read_all(broker, "ordered");
    let mut t = 0;
    let mut arrival: Vec<(i64, usize)> = recs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            t = by_offset.get(&r.offset).copied().unwrap_or(t);
            // A fixed spread of delays in [0, 59 min]: no event arrives past the lateness.
            let delay = (r.offset * 7919 % 60) * 60_000;
            (t + delay, i)
        })
        .collect();
    arrival.sort();
    let moved = arrival
        .iter()
        .enumerate()
        .filter(|(pos, (_, i))| pos != i)
        .count();
    assert!(moved > 2000, "{moved} events change place");
    let shuffled = arrival
        .iter()
        .map(|&(_, i)| {
            (
                String::from_utf8(recs[i].key.clone()).unwrap(),
                recs[i].payload.clone(),
            )
        })
        .collect();
    (sorted, shuffled)
}
