//! Checkpoints of window state in the model store, so that a restart or a partition that moves
//! to another instance restores in time proportional to the state, not to the retention.
//!
//! # Where and what
//!
//! One object per snapshot, beside the models, at
//! `checkpoints/<group>/<topic>/<partition>/<offset, 20 digits>.ckpt`: the window state of that
//! input partition after every event before `offset`, as the scoring loop held it. The store is
//! the one the models come from (as Flink and Arroyo keep checkpoints in object storage): the
//! scorer already needs it, it outlives brokers, and a snapshot costs one PUT whatever the
//! retention of the topic. (A compacted changelog topic, as Kafka Streams keeps, would write
//! every window update to the broker and replay them all at restore: a cost that grows with
//! the update rate, which is what this avoids.)
//!
//! A snapshot is: the magic `KMLCKPT1`, a JSON header (topic, partition, offset, the state's
//! fingerprint, the model that wrote it), the engine's saved state ([`Scorer::save_state`]), and
//! a SHA-256 of everything before it. It is written with one PUT, which object stores make
//! atomic (a local directory: a temporary file renamed into place), so a scorer killed while
//! writing leaves nothing that loads; a snapshot that does not check (truncated, corrupt, of
//! another pipeline) is refused with the reason logged, and the next older one is tried.
//!
//! # Which snapshot a restore uses
//!
//! The newest at or below the offset scoring resumes at (the group's committed offset), then
//! the events from its offset on are read as warm-up. A snapshot above the committed offset is
//! useless to a restart, so pruning keeps, per partition, the newest snapshot at or below the
//! offset that was committable [`PRUNE_LAG`] ago (the group's commit follows within about a
//! second) and everything newer, and deletes the rest.
//!
//! [`Scorer::save_state`]: crate::score::Scorer::save_state

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first bytes of every snapshot.
const MAGIC: &[u8; 8] = b"KMLCKPT1";

/// How far behind its committable offset pruning stays (see the module docs).
pub const PRUNE_LAG: Duration = Duration::from_secs(10);

/// What a snapshot says about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    /// Input topic.
    pub topic: String,
    /// Input partition.
    pub partition: i32,
    /// The state covers every event before this offset.
    pub offset: i64,
    /// [`crate::score::state_fingerprint`] of the pipeline and tables that built the state.
    pub fingerprint: String,
    /// The model serving when it was written (for people; restore does not depend on it).
    pub model: String,
    /// When it was written (epoch ms).
    pub written_at_ms: i64,
}

/// Frame a snapshot: magic, header, state, checksum.
pub fn encode(header: &Header, state: &[u8]) -> Vec<u8> {
    // A struct of strings and integers always serializes.
    let h = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(8 + 4 + h.len() + 8 + state.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&(state.len() as u64).to_le_bytes());
    out.extend_from_slice(state);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// Check a snapshot's frame and checksum; its header and state bytes. Every way bytes can be
/// wrong is an error naming it.
pub fn decode(bytes: &[u8]) -> Result<(Header, &[u8]), String> {
    if bytes.len() < MAGIC.len() + 4 + 8 + 32 {
        return Err(format!("{} bytes: too short to be a snapshot", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("not a snapshot (no KMLCKPT1 magic)".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err("checksum mismatch: the snapshot is corrupt or truncated".into());
    }
    let take = |at: usize, n: usize| -> Result<&[u8], String> {
        body.get(at..at.checked_add(n).ok_or("length overflows")?)
            .ok_or_else(|| format!("frame runs past the end at byte {at}"))
    };
    let mut len4 = [0u8; 4];
    len4.copy_from_slice(take(8, 4)?);
    let hlen = u32::from_le_bytes(len4) as usize;
    let header: Header = serde_json::from_slice(take(12, hlen)?)
        .map_err(|e| format!("header does not parse: {e}"))?;
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(take(12 + hlen, 8)?);
    let slen = usize::try_from(u64::from_le_bytes(len8)).map_err(|e| e.to_string())?;
    let state = take(20 + hlen, slen)?;
    if 20 + hlen + slen != body.len() {
        return Err("bytes after the state".into());
    }
    Ok((header, state))
}

/// A snapshot write that finished, well or not.
#[derive(Debug)]
pub struct Written {
    /// Input topic.
    pub topic: String,
    /// Input partition.
    pub partition: i32,
    /// The offset it covers.
    pub offset: i64,
    /// Its size.
    pub bytes: usize,
    /// How long the PUT (and pruning) took.
    pub elapsed: Duration,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Older snapshots deleted after it.
    pub pruned: usize,
}

/// The snapshots of one consumer group in an object store.
pub struct Checkpoints {
    store: Arc<dyn ObjectStore>,
    group: String,
    rt: tokio::runtime::Handle,
    tx: Sender<Written>,
    rx: Receiver<Written>,
}

impl Checkpoints {
    /// Snapshots of `group` in `store`, written and read on `rt`.
    pub fn new(store: Arc<dyn ObjectStore>, group: &str, rt: tokio::runtime::Handle) -> Self {
        let (tx, rx) = channel();
        Self {
            store,
            group: group.to_string(),
            rt,
            tx,
            rx,
        }
    }

    fn dir(&self, topic: &str, partition: i32) -> Path {
        Path::from_iter([
            "checkpoints",
            self.group.as_str(),
            topic,
            &partition.to_string(),
        ])
    }

    /// Where the snapshot of `topic`/`partition` at `offset` lives.
    pub fn path(&self, topic: &str, partition: i32, offset: i64) -> Path {
        self.dir(topic, partition)
            .join(format!("{offset:020}.ckpt"))
    }

    /// Write a framed snapshot in the background; the outcome arrives in [`Checkpoints::done`].
    /// With `prune_floor`, older snapshots are then pruned (see the module docs).
    pub fn write(&self, header: &Header, state: &[u8], prune_floor: Option<i64>) {
        let bytes = encode(header, state);
        let store = self.store.clone();
        let path = self.path(&header.topic, header.partition, header.offset);
        let dir = self.dir(&header.topic, header.partition);
        let tx = self.tx.clone();
        let (topic, partition, offset) = (header.topic.clone(), header.partition, header.offset);
        self.rt.spawn(async move {
            let t0 = Instant::now();
            let n = bytes.len();
            let (error, pruned) = match store.put(&path, bytes.into()).await {
                Ok(_) => match prune_floor {
                    Some(floor) => match prune(&*store, &dir, floor).await {
                        Ok(n) => (None, n),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot prune old snapshots");
                            (None, 0)
                        }
                    },
                    None => (None, 0),
                },
                Err(e) => (Some(e.to_string()), 0),
            };
            let _ = tx.send(Written {
                topic,
                partition,
                offset,
                bytes: n,
                elapsed: t0.elapsed(),
                error,
                pruned,
            });
        });
    }

    /// Writes finished since the last call.
    pub fn done(&self) -> Vec<Written> {
        self.rx.try_iter().collect()
    }

    /// Wait up to `timeout` for `n` writes to finish; returns them.
    pub fn wait(&self, n: usize, timeout: Duration) -> Vec<Written> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(w) => out.push(w),
                Err(_) => break,
            }
        }
        out
    }

    /// Offsets of the snapshots of `topic`/`partition`, newest first.
    pub fn list(&self, topic: &str, partition: i32) -> Result<Vec<i64>> {
        let dir = self.dir(topic, partition);
        let store = self.store.clone();
        self.rt
            .block_on(async move { offsets(&*store, &dir).await })
            .with_context(|| format!("cannot list the snapshots of {topic}/{partition}"))
    }

    /// The newest snapshot of `topic`/`partition` at or below `at_most` that checks (frame,
    /// checksum, position, `fingerprint`) and that `load` accepts; its offset. Each one refused
    /// is logged with the reason and counted in `refused`.
    pub fn restore(
        &self,
        topic: &str,
        partition: i32,
        at_most: i64,
        fingerprint: &str,
        refused: &mut u64,
        mut load: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Option<i64> {
        let offsets = match self.list(topic, partition) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no snapshot can be read; rebuilding");
                return None;
            }
        };
        for offset in offsets.into_iter().filter(|o| *o <= at_most) {
            let path = self.path(topic, partition, offset);
            let store = self.store.clone();
            let got = self.rt.block_on(async move {
                let r = store.get(&path).await?;
                r.bytes().await
            });
            let why = match got {
                Err(e) => format!("cannot read it: {e}"),
                Ok(bytes) => match decode(&bytes) {
                    Err(e) => e,
                    Ok((h, _))
                        if (h.topic.as_str(), h.partition, h.offset)
                            != (topic, partition, offset) =>
                    {
                        format!(
                            "it says it is {}/{} at offset {}",
                            h.topic, h.partition, h.offset
                        )
                    }
                    Ok((h, _)) if h.fingerprint != fingerprint => format!(
                        "written for another pipeline (state fingerprint {}, this one is {})",
                        h.fingerprint, fingerprint
                    ),
                    Ok((_, state)) => match load(state) {
                        Ok(()) => return Some(offset),
                        Err(e) => e,
                    },
                },
            };
            *refused += 1;
            tracing::warn!(
                partition = %format!("{topic}/{partition}"), offset, reason = %why,
                "snapshot refused; trying an older one"
            );
        }
        None
    }
}

async fn offsets(store: &dyn ObjectStore, dir: &Path) -> Result<Vec<i64>> {
    let mut list = store.list(Some(dir));
    let mut out: Vec<i64> = Vec::new();
    while let Some(meta) = list.next().await {
        let meta = meta?;
        let Some(name) = meta.location.filename() else {
            continue;
        };
        // Only complete snapshots: `<20 digits>.ckpt`; anything else (a staging file) is not one.
        if let Some(o) = name
            .strip_suffix(".ckpt")
            .filter(|s| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
        {
            out.push(o);
        }
    }
    out.sort_unstable_by(|a, b| b.cmp(a));
    Ok(out)
}

/// Delete the snapshots older than the newest one at or below `floor`.
async fn prune(store: &dyn ObjectStore, dir: &Path, floor: i64) -> Result<usize> {
    let all = offsets(store, dir).await?;
    let Some(keep) = all.iter().copied().find(|o| *o <= floor) else {
        return Ok(0);
    };
    let mut n = 0;
    for o in all.into_iter().filter(|o| *o < keep) {
        let path = dir.clone().join(format!("{o:020}.ckpt"));
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => n += 1,
            Err(e) => bail!("cannot delete {path}: {e}"),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn header() -> Header {
        Header {
            topic: "flights".into(),
            partition: 3,
            offset: 1234,
            fingerprint: "abc".into(),
            model: "m@1".into(),
            written_at_ms: 0,
        }
    }

    #[test]
    fn a_frame_round_trips_and_every_damage_is_refused() {
        let bytes = encode(&header(), b"state bytes");
        let (h, s) = decode(&bytes).unwrap();
        assert_eq!((h, s), (header(), &b"state bytes"[..]));
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "truncated to {n} bytes");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            let err = decode(&b).unwrap_err();
            assert!(
                err.contains("checksum") || err.contains("magic"),
                "byte {i}: {err}"
            );
        }
    }

    #[test]
    fn restore_takes_the_newest_valid_snapshot_at_or_below_the_offset_and_prune_keeps_it() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let c = Checkpoints::new(store.clone(), "g", rt.handle().clone());
        for offset in [100, 200, 300, 400] {
            let h = Header { offset, ..header() };
            c.write(&h, format!("state at {offset}").as_bytes(), None);
        }
        assert!(
            c.wait(4, Duration::from_secs(10))
                .iter()
                .all(|w| w.error.is_none())
        );
        // 300 is corrupt; 400 is beyond the committed offset.
        let p300 = c.path("flights", 3, 300);
        rt.block_on(store.put(&p300, b"KMLCKPT1 garbage".to_vec().into()))
            .unwrap();
        let mut refused = 0;
        let mut loaded = Vec::new();
        let got = c.restore("flights", 3, 350, "abc", &mut refused, |s| {
            loaded.push(String::from_utf8_lossy(s).to_string());
            Ok(())
        });
        assert_eq!(got, Some(200));
        assert_eq!(loaded, ["state at 200"]);
        assert_eq!(refused, 1, "the corrupt one");
        // Another pipeline's state is refused by fingerprint.
        let mut refused = 0;
        let got = c.restore("flights", 3, 350, "other", &mut refused, |_| Ok(()));
        assert_eq!(
            (got, refused),
            (None, 3),
            "300 by checksum, 200 and 100 by fingerprint"
        );
        // Pruning at 350 keeps 300 (the newest at or below it; pruning reads names, not
        // contents) and everything newer.
        let n = rt
            .block_on(prune(&*store, &c.dir("flights", 3), 350))
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(c.list("flights", 3).unwrap(), [400, 300]);
    }
}
