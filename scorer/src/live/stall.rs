//! Waiting for the schema registry: a record whose writer schema the registry did not give (it
//! is down, or answered 5xx) is not the record's fault, so it is not dead-lettered. Its partition
//! is paused and sought back to it; after a backoff the partition resumes and the record is read
//! again. The window state is kept (the record never reached it), and nothing after the record
//! is read meanwhile, so the partition's order holds. Other partitions go on.

use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;

use super::Live;

/// The first wait; each failure in a row doubles it, up to [`LAST_WAIT`].
pub(super) const FIRST_WAIT: Duration = Duration::from_millis(200);
const LAST_WAIT: Duration = Duration::from_secs(10);

/// A partition waiting for the registry.
pub(super) struct Waiting {
    /// When to resume.
    until: Instant,
    /// The record to read again; records before it arriving from the old fetch are dropped.
    offset: i64,
    resumed: bool,
}

impl Live {
    /// Pause `slot` at the record at `offset`, to be read again after a backoff.
    pub(super) fn wait_for_registry(&mut self, slot: usize, offset: i64, why: &str) {
        let wait = self.registry_wait;
        self.registry_wait = (wait * 2).min(LAST_WAIT);
        let Some(part) = self.parts.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&part.topic, part.partition);
        let _ = self.consumer.pause(&tpl);
        if let Err(e) = self.consumer.seek(
            &part.topic,
            part.partition,
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            tracing::warn!(error = %e, "cannot seek back to the record waiting for the registry");
        }
        part.waiting = Some(Waiting {
            until: Instant::now() + wait,
            offset,
            resumed: false,
        });
        tracing::warn!(
            partition = %format!("{}/{}", part.topic, part.partition), offset,
            retry_in_ms = wait.as_millis() as u64, error = %why,
            "the record waits for the schema registry; its partition is paused"
        );
    }

    /// Resume the partitions whose wait is over.
    pub(super) fn resume_waiting(&mut self) {
        let now = Instant::now();
        for part in self.parts.iter_mut().flatten() {
            if let Some(w) = part.waiting.as_mut()
                && !w.resumed
                && w.until <= now
            {
                w.resumed = true;
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&part.topic, part.partition);
                let _ = self.consumer.resume(&tpl);
            }
        }
    }

    /// Whether to drop this record unread: its partition waits for the registry, or it was
    /// fetched before the partition was sought back. The waiting record itself ends the wait.
    pub(super) fn skip_while_waiting(&mut self, slot: usize, offset: i64) -> bool {
        let Some(part) = self.parts.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        let Some(w) = &part.waiting else {
            return false;
        };
        if w.resumed && offset == w.offset {
            part.waiting = None;
            return false;
        }
        true
    }
}
