//! A flush's I/O: the planned write handed to the sink, and offsets
//! committed once it accepted them.

use std::time::{Duration, Instant};

use logpipe_consumer::GroupConsumer;

use super::{flush, Analyzer, WindowReport};
use crate::fleet;
use crate::store::{SinkError, StateBatch};

impl Analyzer {
    /// Writes the batch plus every closed window and changed partial and the
    /// restore points they allow, then commits the restore offsets.
    pub(super) fn flush(
        &mut self,
        consumer: &GroupConsumer,
        close_all: bool,
    ) -> Result<(), SinkError> {
        self.ingest.counters.windows_outside_range += flush::plan(
            &mut self.parts,
            &self.ingest.sources,
            self.cfg.spec,
            self.cfg.replay.as_ref(),
            close_all,
            &mut self.batch,
        );
        if self.batch.is_empty() && self.last_counters.elapsed() < self.cfg.flush_interval * 5 {
            return Ok(());
        }
        self.last_counters = Instant::now();
        self.publish_sketches();
        // Dead letters and window sketches before any restore point that
        // moves past them.
        self.ingest.dlq.flush(Duration::from_secs(5))?;
        let mut lp = Vec::with_capacity(self.batch.windows.len() * 256);
        self.batch
            .encode(&self.ingest.sources, self.cfg.spec, &mut lp);
        let finals = self.batch.finals().count() as u64;
        let mut counters = self.ingest.counters;
        counters.windows_written += finals;
        counters.lag = self.lag(consumer);
        counters.encode(&mut lp, &self.cfg.analyzer_id);
        self.sink.write(
            &lp,
            &StateBatch {
                scope: &self.scope,
                analyzer: &self.cfg.analyzer_id,
                points: &self.batch.state,
            },
        )?;
        self.ingest.counters.windows_written = counters.windows_written;
        self.ingest.counters.lag = counters.lag;
        let batch = std::mem::take(&mut self.batch);
        for (p, u) in &batch.state {
            if let Some(part) = self.parts.get_mut(p) {
                part.written = Some((u.offset, u.next_offset));
            }
        }
        if let Some(obs) = self.observer.as_mut() {
            for v in batch.finals() {
                let n = self.ingest.sources.name(v.source);
                obs(&WindowReport {
                    host: &n.host,
                    source: &n.source,
                    window_ms: self.cfg.spec.window_ms,
                    value: v,
                });
            }
        }
        // The group's commit is the restore point's next offset (what was
        // read and is vouched for by an accepted restore point), so lag
        // tools show 0 once caught up; the restore offset, which trails by
        // the open windows, resumes from InfluxDB.
        self.uncommitted
            .extend(batch.state.iter().map(|(&p, u)| (p, u.next_offset)));
        self.commit(consumer, false);
        Ok(())
    }

    /// Hands the batch's final access windows to the fleet topic's
    /// producer, once each (a retried write does not send them again: the
    /// producer keeps what it has until Kafka acknowledges it).
    fn publish_sketches(&mut self) {
        let mut buf = Vec::new();
        for v in self.batch.windows.values_mut().filter(|v| v.is_final) {
            let Some(agg) = v.sketch.take() else {
                continue;
            };
            let Some((topic, partitions)) = &self.fleet else {
                continue;
            };
            let n = self.ingest.sources.name(v.source);
            let window_ms = self.cfg.spec.window_ms;
            buf.clear();
            fleet::encode(&mut buf, &n.host, &n.source, v.start_ms, window_ms, &agg);
            let key = fleet::record_key(&n.host, &n.source, v.start_ms);
            let p = fleet::partition_of(v.start_ms, window_ms, *partitions);
            self.ingest.dlq.send_window(topic, p, &key, &buf);
            self.ingest.counters.sketches_published += 1;
        }
    }

    /// Commits accepted restore points' next offsets, at most every `commit_interval`
    /// unless `now`. Only for lag tools: the restore point in the sink is
    /// what resumes, so a failed commit is retried at the next one. (Rarely,
    /// too: every commit is a group-coordinator request.)
    pub(super) fn commit(&mut self, consumer: &GroupConsumer, now: bool) {
        if self.uncommitted.is_empty()
            || self.cfg.replay.is_some()
            || (!now && self.last_commit.elapsed() < self.cfg.commit_interval)
        {
            return;
        }
        self.last_commit = Instant::now();
        let commits: Vec<(i32, i64)> = std::mem::take(&mut self.uncommitted).into_iter().collect();
        // The last commit waits for its answer: the member leaves next.
        if let Err(e) = consumer.commit(&commits, now) {
            tracing::debug!(error = %e, "offset commit failed; the next commit retries");
            if !now {
                self.uncommitted.extend(commits);
            }
        }
    }
}
