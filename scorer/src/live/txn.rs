//! Exactly-once transactions of the live loop: committed every `--transaction-interval` or
//! `--transaction-max-events`, aborted (every partition rewound to its last committed offset)
//! when an output fails, and the producer replaced when it fails fatally.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::Live;
use crate::sink::Sink;

/// Outputs of the open transaction, counted when it commits.
#[derive(Default)]
pub(super) struct Txn {
    pub(super) started: Option<Instant>,
    pub(super) events: usize,
    pub(super) predicted: u64,
    pub(super) dead: u64,
    pub(super) failed: bool,
    /// Owed dead letters sent (`Part::owed_dead`), by slot and offset: paid once it commits.
    pub(super) letters: Vec<(usize, i64)>,
}

impl Live {
    pub(super) fn maybe_commit_transaction(&mut self) {
        let Some(started) = self.txn.started else {
            return;
        };
        if self.txn.failed {
            self.abort_transaction("an output of the transaction failed");
            return;
        }
        if started.elapsed() >= self.cfg.transaction_interval
            || self.txn.events >= self.cfg.transaction_max_events
        {
            self.commit_transaction(Duration::from_secs(10));
        }
    }

    /// Commit the open transaction with the offsets after every event it covers.
    pub(super) fn commit_transaction(&mut self, timeout: Duration) {
        let mut tpl = TopicPartitionList::new();
        for p in self.parts.iter().flatten().filter(|p| p.next >= 0) {
            let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next));
        }
        let Some(group) = self.consumer.group_metadata() else {
            self.abort_transaction("the consumer has no group metadata");
            return;
        };
        match self.sink.commit(&tpl, &group, timeout) {
            Ok(()) => {
                // Every report of the transaction has arrived once commit returns.
                let _ = self.settle();
                if self.txn.failed {
                    tracing::error!("an output failed after its transaction committed");
                }
                self.metrics.transactions.inc();
                self.summary.transactions += 1;
                let (predicted, dead) = (self.txn.predicted, self.txn.dead);
                self.count_delivered(false, predicted);
                self.count_delivered(true, dead);
                for p in self.parts.iter_mut().flatten().filter(|p| p.next >= 0) {
                    p.resume = Some(p.next);
                }
                for &(slot, offset) in &self.txn.letters {
                    if let Some(p) = self.parts.get_mut(slot).and_then(Option::as_mut) {
                        p.owed_dead.remove(&offset);
                    }
                }
                self.txn = Txn::default();
            }
            Err(e) => self.abort_transaction(&format!("{e:#}")),
        }
    }

    /// Abort the open transaction and rewind every partition to the last committed one.
    pub(super) fn abort_transaction(&mut self, why: &str) {
        tracing::error!(reason = why, "aborting the transaction");
        if let Err(e) = self.sink.abort(Duration::from_secs(10)) {
            tracing::error!(error = %e, "cannot abort the transaction");
        }
        self.metrics.transactions_aborted.inc();
        self.summary.transactions_aborted += 1;
        let _ = self.sink.reports(); // of aborted records: they count for nothing
        self.txn = Txn::default();
        for slot in 0..self.parts.len() {
            let resume = self.parts[slot]
                .as_ref()
                .and_then(|p| p.resume.or(self.tracker.first_incomplete(slot)));
            if let Some(offset) = resume {
                self.rewind(slot, offset);
            }
        }
        if let Some(fatal) = self.sink.fatal()
            && let Err(e) = self.replace_producer(&fatal)
        {
            tracing::error!(error = %format!("{e:#}"), "cannot replace the producer");
        }
    }

    pub(super) fn replace_producer(&mut self, fatal: &str) -> Result<()> {
        tracing::error!(error = fatal, "the producer failed fatally; replacing it");
        self.metrics.producer_restarts.inc();
        let sink = Sink::new(
            &self.cfg.kafka,
            &self.cfg.output,
            &self.cfg.dlq,
            self.cfg.transactional_id.as_deref(),
        )?;
        let sink = match &self.cfg.repartition {
            Some(r) => sink.with_repartition(&r.topic),
            None => sink,
        }
        .with_shadows(&self.cfg.shadow_output);
        if self.cfg.exactly_once() {
            crate::retry_until_cancelled(&self.token, "cannot initialise transactions", || {
                sink.init_transactions(Duration::from_secs(10))
                    .context("cannot initialise transactions")
            })?;
        }
        self.sink = sink;
        self.txn = Txn::default();
        // The old producer's outputs in flight are lost with it: score them again.
        for slot in 0..self.parts.len() {
            let at = if self.cfg.exactly_once() {
                self.parts[slot].as_ref().and_then(|p| p.resume)
            } else {
                self.tracker.first_incomplete(slot)
            };
            if let Some(offset) = at {
                self.rewind(slot, offset);
            }
        }
        Ok(())
    }
}
