//! Answers of a model server (`scorer run --model-server`): each answered request's rows become
//! predictions (or dead letters) in their rows' order.

use std::time::Duration;

use super::{Live, SourceEvent};
use crate::remote::{self, Remote, RowResult};
use crate::score::{ServedBy, SourcePos, write_prediction};
use crate::sink::{To, lineage_headers};

impl Live {
    /// Send the predictions (or dead letters) of every answered model-server request, oldest
    /// first.
    pub(super) fn poll_remote(&mut self) {
        while let Some(d) = self.remote.as_mut().and_then(Remote::next_done) {
            self.on_remote_done(d);
        }
    }

    /// At shutdown: wait up to `timeout` for the model server's answers to every row pushed,
    /// and send them. What is not answered by then is not committed (scored again next time).
    pub(super) fn drain_remote(&mut self, timeout: Duration) {
        let Some(mut r) = self.remote.take() else {
            return;
        };
        let mut answered = Vec::new();
        if !r.drain(timeout, |d| answered.push(d)) {
            tracing::warn!(
                rows = r.waiting(),
                "rows still waiting for the model server at shutdown are not committed"
            );
        }
        self.remote = Some(r);
        for d in answered {
            self.on_remote_done(d);
        }
    }

    /// The outputs of one answered model-server request, in its rows' order. Rows of
    /// partitions no longer ours, or rewound since, are dropped (their new scoring repeats
    /// them).
    fn on_remote_done(&mut self, d: remote::Done) {
        let Some(model) = d.batch.model().cloned() else {
            return;
        };
        let url = self
            .remote
            .as_ref()
            .map(|r| r.client().url().to_string())
            .unwrap_or_default();
        let served_by = ServedBy {
            url: &url,
            model: &d.model,
            version: &d.version,
        };
        let mut pred = std::mem::take(&mut self.pred);
        let mut topic = String::new();
        let mut topic_slot = usize::MAX;
        for (row, result) in d.batch.rows().iter().zip(&d.results) {
            let (slot, seq) = (row.slot, row.seq);
            if !self.tracker.current(slot, seq) {
                continue;
            }
            if topic_slot != slot {
                let Some(p) = self.parts.get(slot).and_then(Option::as_ref) else {
                    continue;
                };
                topic.clone_from(&p.topic);
                topic_slot = slot;
            }
            let pos = SourcePos {
                topic: &topic,
                partition: row.partition,
                offset: row.offset,
            };
            let (mut pbuf, mut obuf) = (itoa::Buffer::new(), itoa::Buffer::new());
            let position = crate::sink::source_headers(pos, &mut pbuf, &mut obuf);
            let (src_key, src_payload) = d.batch.source(row);
            let key = d.batch.key(row);
            match result {
                RowResult::Score(score, decision) => {
                    let decision = decision.unwrap_or_else(|| model.model.decide(*score));
                    let text = std::str::from_utf8(key).unwrap_or_default();
                    let ev = row.event_time;
                    let sb = Some(served_by);
                    write_prediction(&mut pred, &model, text, ev, (*score, decision), pos, sb);
                    let all = lineage_headers(&position, &model.id);
                    let headers: &[(&'static str, &[u8])] =
                        if self.cfg.lineage_headers { &all } else { &[] };
                    let source = SourceEvent {
                        key: src_key,
                        payload: src_payload,
                        timestamp: row.timestamp,
                        position: &position,
                    };
                    let (t, to) = (Some(row.event_time), To::Output);
                    self.send(slot, seq, key, &pred, t, headers, &source, to);
                }
                RowResult::Refused(why) => {
                    let tag = self.tracker.expect(slot, seq, true);
                    let ts = row.timestamp;
                    self.send_dead_letter(tag, src_key, src_payload, ts, &position, why);
                }
            }
            self.tracker.unhold(slot, seq);
        }
        self.pred = pred;
        if let Some(r) = self.remote.as_mut() {
            r.recycle(d.batch);
        }
    }
}
