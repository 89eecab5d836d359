//! The analyzer's I/O shell: a group member polled on one thread, feeding the
//! pure window core, writing window points and restore points to a sink every
//! flush interval, committing offsets only after the sink accepted them.
//!
//! Everything happens on the polling thread, so a rebalance is applied between
//! two steps: no write is in flight when partitions are revoked, and values of
//! revoked partitions that were not written yet are dropped, never written
//! later over the new owner's.
//!
//! When a write fails with a retryable error the analyzer pauses its
//! partitions (it stays in the group), keeps the batch and retries with
//! backoff for as long as it takes; memory stays at the open windows plus one
//! batch, offsets stay where the last accepted write put them.

mod control;
mod flush;
mod ingest;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logpipe_consumer::{Batch as RecordBatch, GroupConsumer, RebalanceEvent, StartOffsets};
use rdkafka::message::Message;

use crate::counters::Counters;
use crate::dlq::DeadLetters;
use crate::parse::sources::SourceTable;
use crate::store::{Scope, Sink, SinkError, StateBatch, StateStore, StoredPoint};
use crate::window::{PartitionWindows, WindowValue};
use control::Running;
use flush::Pending;
use ingest::{Ingest, Part, WireRecord};
use logpipe_wire::Request;

use crate::config::AnalyzerConfig;
pub use control::Control;
pub use ingest::DEAD_LETTER_LOG;

/// A window as reported to an observer (the demo's terminal table).
pub struct WindowReport<'a> {
    pub host: &'a str,
    pub source: &'a str,
    pub window_ms: i64,
    pub value: &'a WindowValue,
}

/// Called for every final window after the sink accepted it.
pub type Observer = Box<dyn FnMut(&WindowReport<'_>) + Send>;

/// Why an analyzer stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Consumer(#[from] logpipe_consumer::ConsumerError),
    #[error("writing window points failed: {0}")]
    Sink(SinkError),
    #[error("cannot take over partitions: {0}")]
    Restore(String),
    #[error("dead-letter producer: {0}")]
    DeadLetters(String),
}

struct Analyzer {
    cfg: AnalyzerConfig,
    scope: Scope,
    sink: Box<dyn Sink>,
    observer: Option<Observer>,
    control: Arc<Control>,
    /// Restore points loaded in the rebalance callback, taken on `Assigned`.
    loaded: Arc<Mutex<HashMap<i32, StoredPoint>>>,
    parts: HashMap<i32, Part>,
    ingest: Ingest,
    batch: Pending,
    /// Paused after a failed write until a write succeeds.
    paused: bool,
    /// Restore offsets accepted by the sink and not yet committed.
    uncommitted: BTreeMap<i32, i64>,
    last_commit: Instant,
    /// When the self-metrics were last written: also every five flush
    /// intervals without data, so lag and liveness show while idle.
    last_counters: Instant,
}

/// Runs one analyzer until `control` says stop or finish, or a permanent error.
pub fn run(
    cfg: AnalyzerConfig,
    sink: Box<dyn Sink>,
    observer: Option<Observer>,
    control: Arc<Control>,
) -> Result<Counters, AnalyzeError> {
    let scope = Scope {
        group: cfg.group.group.clone(),
        topic: cfg.group.topic.clone(),
    };
    let mut cfg = cfg;
    let _running = Running::new(control.clone());
    let loaded = Arc::new(Mutex::new(HashMap::new()));
    let start: StartOffsets = match &cfg.replay {
        // A replay reads fixed partitions from its plan; restore points are
        // the live group's and are neither read nor written.
        Some(r) => {
            let mut ps: Vec<i32> = r.starts.keys().copied().collect();
            ps.sort_unstable();
            cfg.group.partitions = Some(ps);
            let starts = r.starts.clone();
            Box::new(move |_: &[i32]| Ok(starts.clone()))
        }
        None => start_offsets(
            sink.state_store(),
            scope.clone(),
            loaded.clone(),
            control.clone(),
        ),
    };
    let dlq = DeadLetters::new(
        &cfg.group.brokers,
        &cfg.dlq_topic,
        &cfg.analyzer_id,
        &cfg.group.extra,
    )
    .map_err(|e| AnalyzeError::DeadLetters(e.to_string()))?;
    let consumer = GroupConsumer::new(&cfg.group, Some(start))?;
    let formats = cfg.formats.clone();
    tracing::info!(analyzer = %cfg.analyzer_id, topic = %cfg.group.topic, group = %cfg.group.group, sink = %sink.describe(), dead_letters = %cfg.dlq_topic, formats = ?cfg.formats, "analyzer started");
    Analyzer {
        cfg,
        scope,
        sink,
        observer,
        control,
        loaded,
        parts: HashMap::new(),
        ingest: Ingest {
            sources: SourceTable::new(formats),
            counters: Counters::default(),
            dlq,
        },
        batch: Pending::default(),
        paused: false,
        uncommitted: BTreeMap::new(),
        last_commit: Instant::now(),
        last_counters: Instant::now(),
    }
    .run(&consumer)
}

/// Loads restore points inside the rebalance callback; retries a store that
/// cannot be reached for up to four minutes (the group waits meanwhile; below
/// librdkafka's default `max.poll.interval.ms` of five minutes), then gives up
/// and the analyzer exits with the cause.
fn start_offsets(
    store: Arc<dyn StateStore>,
    scope: Scope,
    loaded: Arc<Mutex<HashMap<i32, StoredPoint>>>,
    control: Arc<Control>,
) -> StartOffsets {
    Box::new(move |ps: &[i32]| {
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut wait = Duration::from_millis(200);
        loop {
            match store.load(&scope, ps) {
                Ok(points) => {
                    let offsets = points.iter().map(|(&p, pt)| (p, pt.offset)).collect();
                    tracing::info!(partitions = ?ps, restored = points.len(), "restore points loaded");
                    loaded.lock().unwrap().extend(points);
                    return Ok(offsets);
                }
                Err(SinkError::Retryable(e))
                    if Instant::now() < deadline && !control.is_stopping() =>
                {
                    tracing::warn!(error = %e, "cannot read restore points yet, retrying");
                    control.shutdown().wait_timeout(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(format!("reading restore points failed: {e}")),
            }
        }
    })
}

impl Analyzer {
    fn run(mut self, consumer: &GroupConsumer) -> Result<Counters, AnalyzeError> {
        let mut last_flush = Instant::now();
        let mut last_progress = Instant::now();
        let mut backoff = self.cfg.flush_interval;
        // Clocks and the dead-letter producer are looked at once per batch
        // (up to 1024 records), not per record: at a million records a
        // second, reading the clock twice per record was an eighth of the
        // polling thread's time.
        let mut reported = 0u64;
        let mut reported_queued = 0u64;
        let mut records = RecordBatch::with_capacity(1024);
        loop {
            if let Some(request) = self.control.shutdown.requested() {
                self.control
                    .queued
                    .fetch_sub(reported_queued, Ordering::Relaxed);
                return match request {
                    Request::Abort => Ok(self.ingest.counters),
                    r => self.shut_down(consumer, r == Request::Finish),
                };
            }
            let stray = consumer.poll_batch(&mut records, Duration::from_millis(100));
            // Assignment changes made inside this poll come first: a record of
            // a newly assigned partition needs its restored state.
            while let Some(ev) = consumer.take_rebalance() {
                self.apply_rebalance(consumer, ev)?;
            }
            match stray {
                Some(Ok(msg)) => self.record(consumer, &msg),
                Some(Err(e)) => logpipe_consumer::health::consumer_error(&e),
                None => {}
            }
            for rec in records.iter() {
                match rec.error() {
                    None => self.record(consumer, &rec),
                    Some(e) => {
                        tracing::warn!(error = %e, partition = rec.partition(), "Kafka consumer error")
                    }
                }
            }
            records.clear();
            self.control
                .consumed
                .fetch_add(self.ingest.counters.consumed - reported, Ordering::Relaxed);
            reported = self.ingest.counters.consumed;
            let queued = consumer.queued() as u64;
            // Deltas, so that several analyzers add up in one counter.
            self.control
                .queued
                .fetch_add(queued.wrapping_sub(reported_queued), Ordering::Relaxed);
            reported_queued = queued;
            self.ingest.dlq.poll();
            if last_progress.elapsed() >= Duration::from_millis(100) {
                last_progress = Instant::now();
                let mut progress = self.control.progress.lock().unwrap();
                let mut event_ms = i64::MIN;
                for (&p, part) in &self.parts {
                    if let Some(n) = part.next {
                        progress.insert(p, n);
                    }
                    event_ms = event_ms.max(part.windows.max_event_ms().unwrap_or(i64::MIN));
                }
                self.control.event_ms.fetch_max(event_ms, Ordering::Relaxed);
            }
            if last_flush.elapsed() >= backoff {
                last_flush = Instant::now();
                match self.flush(consumer, false) {
                    Ok(()) => {
                        backoff = self.cfg.flush_interval;
                        if self.paused {
                            self.paused = false;
                            let owned: Vec<i32> = self.parts.keys().copied().collect();
                            if let Err(e) = consumer.resume(&owned) {
                                tracing::warn!(error = %e, "resuming partitions failed");
                            }
                            tracing::info!("write succeeded again; consuming resumed");
                        }
                    }
                    Err(SinkError::Retryable(e)) => {
                        self.ingest.counters.write_retries += 1;
                        backoff =
                            (backoff * 2).clamp(Duration::from_millis(500), Duration::from_secs(5));
                        if !self.paused {
                            self.paused = true;
                            let owned: Vec<i32> = self.parts.keys().copied().collect();
                            if let Err(e) = consumer.pause(&owned) {
                                tracing::warn!(error = %e, "pausing partitions failed");
                            }
                        }
                        tracing::warn!(error = %e, retry_in = ?backoff, "write failed; consuming paused, offsets stay put");
                    }
                    Err(e) => return Err(AnalyzeError::Sink(e)),
                }
            }
        }
    }

    /// One record: de-duplicate, parse, aggregate (a replay first checks
    /// that the record is inside its plan).
    fn record<M: WireRecord>(&mut self, consumer: &GroupConsumer, msg: &M) {
        let p = msg.partition();
        // A record of a partition not owned (fetched before a revoke) is not ours.
        let Some(part) = self.parts.get_mut(&p) else {
            return;
        };
        let Some(r) = &self.cfg.replay else {
            return self.ingest.record(part, msg);
        };
        if part.done {
            return;
        }
        if let Err(why) = r.admits(p, msg.offset(), msg.timestamp().to_millis()) {
            return self.replay_done(consumer, p, why);
        }
        self.ingest.record(part, msg);
        if r.done_after(p, msg.offset()) {
            self.replay_done(consumer, p, "end offset reached");
        }
    }

    /// Writes every open window (final with `close_all`) until accepted, then
    /// returns; dropping the consumer leaves the group.
    fn shut_down(
        mut self,
        consumer: &GroupConsumer,
        close_all: bool,
    ) -> Result<Counters, AnalyzeError> {
        if close_all {
            // The input ended: lines still in pieces never will be whole.
            let mut ps: Vec<i32> = self.parts.keys().copied().collect();
            ps.sort_unstable();
            for p in ps {
                let part = self.parts.get_mut(&p).expect("owned");
                self.ingest.end_of_input(part);
            }
        }
        let mut tries = 0;
        loop {
            match self.flush(consumer, close_all) {
                Ok(()) => break,
                Err(SinkError::Retryable(e)) if tries < 10 => {
                    tries += 1;
                    self.ingest.counters.write_retries += 1;
                    tracing::warn!(error = %e, "final write failed, retrying");
                    std::thread::sleep(Duration::from_millis(200 * tries));
                }
                Err(e) => return Err(AnalyzeError::Sink(e)),
            }
        }
        self.commit(consumer, true);
        // Leave the group only after the other analyzers of this process
        // made their last commit (bounded: one may be stuck on its sink).
        let c = &self.control;
        c.committed_last.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.committed_last.load(Ordering::SeqCst) < c.running.load(Ordering::SeqCst)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::info!(analyzer = %self.cfg.analyzer_id, counters = ?self.ingest.counters, "analyzer stopped");
        Ok(self.ingest.counters)
    }

    fn apply_rebalance(
        &mut self,
        consumer: &GroupConsumer,
        ev: RebalanceEvent,
    ) -> Result<(), AnalyzeError> {
        match ev {
            RebalanceEvent::Revoked(ps) => {
                tracing::info!(count = ps.len(), partitions = ?ps, "partitions revoked");
                self.forget(&ps);
            }
            RebalanceEvent::Lost => {
                tracing::warn!("partition assignment lost");
                let ps: Vec<i32> = self.parts.keys().copied().collect();
                self.forget(&ps);
            }
            RebalanceEvent::Assigned(ps) => {
                tracing::info!(count = ps.len(), partitions = ?ps, "partitions assigned");
                let mut loaded = self.loaded.lock().unwrap();
                let mut unknown = vec![];
                for &p in &ps {
                    let mut dead_lettered_below = 0;
                    let mut start = None;
                    let windows = match loaded.remove(&p) {
                        Some(pt) => {
                            start = Some(pt.offset);
                            dead_lettered_below = pt.next_offset;
                            let sources = &mut self.ingest.sources;
                            let point = pt.map_sources(|k| sources.id_of_key(k));
                            PartitionWindows::restored(self.cfg.spec, &point)
                        }
                        None => PartitionWindows::new(self.cfg.spec),
                    };
                    if let Some(r) = &self.cfg.replay {
                        start = r.starts.get(&p).copied();
                        if !r.dead_letter {
                            dead_lettered_below = i64::MAX;
                        }
                    }
                    if start.is_none() {
                        unknown.push(p);
                    }
                    let partial_wait_ms =
                        i64::try_from(self.cfg.partial_wait.as_millis()).unwrap_or(i64::MAX);
                    self.parts.insert(
                        p,
                        Part::new(
                            windows,
                            self.cfg.dedup_files,
                            partial_wait_ms,
                            start,
                            dead_lettered_below,
                        ),
                    );
                }
                drop(loaded);
                // Without a restore point a partition starts at the group's
                // commit, else at its log start: learn which, so that a first
                // record beyond it is seen as a loss.
                match consumer.start_positions(&unknown, Duration::from_secs(10)) {
                    Ok(starts) => {
                        for (p, o) in starts {
                            if let Some(part) = self.parts.get_mut(&p) {
                                part.next.get_or_insert(o);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        partitions = ?unknown,
                        "cannot learn where these partitions start: records the broker deleted before their first record would go unnoticed"
                    ),
                }
                if self.paused {
                    let _ = consumer.pause(&ps);
                }
                if let Some(r) = &self.cfg.replay {
                    // Partitions with nothing to read are done at once.
                    let empty: Vec<i32> = ps
                        .iter()
                        .copied()
                        .filter(|&p| r.is_empty_partition(p))
                        .collect();
                    for p in empty {
                        self.replay_done(consumer, p, "nothing to read");
                    }
                }
            }
            RebalanceEvent::AssignFailed(e) => return Err(AnalyzeError::Restore(e)),
        }
        self.control
            .assignments
            .lock()
            .unwrap()
            .insert(self.cfg.analyzer_id.clone(), self.parts.len());
        Ok(())
    }

    /// Drops revoked partitions' state and unwritten values: the new owner
    /// rebuilds them from the last restore point the sink accepted.
    fn forget(&mut self, ps: &[i32]) {
        let mut progress = self.control.progress.lock().unwrap();
        for p in ps {
            self.parts.remove(p);
            progress.remove(p);
            // The next owner commits; ours would be refused or stale.
            self.uncommitted.remove(p);
        }
        self.batch.drop_partitions(ps);
    }

    /// Writes the batch plus every closed window and changed partial and the
    /// restore points they allow, then commits the restore offsets.
    fn flush(&mut self, consumer: &GroupConsumer, close_all: bool) -> Result<(), SinkError> {
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
        // Dead letters before any restore point that moves past them.
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

    /// Commits accepted restore points' next offsets, at most every `commit_interval`
    /// unless `now`. Only for lag tools: the restore point in the sink is
    /// what resumes, so a failed commit is retried at the next one. (Rarely,
    /// too: every commit is a group-coordinator request.)
    fn commit(&mut self, consumer: &GroupConsumer, now: bool) {
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

    /// Replay: marks a partition done, stops fetching it, and finishes the
    /// run (every window closed and written) when it was the last.
    fn replay_done(&mut self, consumer: &GroupConsumer, p: i32, why: &str) {
        let Some(part) = self.parts.get_mut(&p) else {
            return;
        };
        if part.done {
            return;
        }
        part.done = true;
        let next = part.next;
        if let Some(n) = next {
            self.control.progress.lock().unwrap().insert(p, n);
        }
        tracing::info!(partition = p, next_offset = ?next, "partition done: {why}");
        if let Err(e) = consumer.pause(&[p]) {
            tracing::debug!(error = %e, "pausing a finished partition failed");
        }
        if self.parts.values().all(|p| p.done) {
            self.control.finish();
        }
    }

    /// Records on the broker not consumed yet, over owned partitions.
    fn lag(&self, consumer: &GroupConsumer) -> u64 {
        self.parts
            .iter()
            .filter_map(|(&p, part)| {
                let hi = consumer.cached_high_watermark(p)?;
                Some((hi - part.next?).max(0) as u64)
            })
            .sum()
    }
}
