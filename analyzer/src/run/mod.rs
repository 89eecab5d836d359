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
//!
//! - `control`: [`Control`], how a run is ended and what it reports.
//! - `ingest`: one record's way into its partition's windows.
//! - `rebalance`: restore points loaded, partitions taken over and forgotten.
//! - `flush`: the pure plan of the next write; `write` hands it to the sink
//!   and commits.

mod control;
mod flush;
mod ingest;
pub(crate) mod rebalance;
mod records;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logpipe_consumer::{Batch as RecordBatch, GroupConsumer, StartOffsets};
use rdkafka::message::Message;

use crate::counters::Counters;
use crate::dlq::DeadLetters;
use crate::parse::sources::SourceTable;
use crate::store::{Scope, Sink, SinkError, StoredPoint};
use crate::window::WindowValue;
use control::Running;
use flush::Pending;
use ingest::{Ingest, Part, WireRecord};
use logpipe_wire::Request;
use rebalance::start_offsets;

use crate::config::AnalyzerConfig;
pub use control::{Control, Status};
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
    #[error("fleet topic: {0}")]
    Fleet(String),
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
    /// The last write's error, until a write succeeds.
    write_error: Option<String>,
    /// Restore offsets accepted by the sink and not yet committed.
    uncommitted: BTreeMap<i32, i64>,
    last_commit: Instant,
    /// The fleet topic and its partition count, when window sketches are
    /// published.
    fleet: Option<(String, i32)>,
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
    let fleet = match &cfg.fleet_topic {
        Some(t) => Some((
            t.clone(),
            dlq.partitions(t, Duration::from_secs(10))
                .map_err(AnalyzeError::Fleet)?,
        )),
        None => None,
    };
    // The group's member list (kafka-consumer-groups, `logpipe status`)
    // names the analyzer.
    if !cfg.group.extra.iter().any(|(k, _)| k == "client.id") {
        let id = cfg.analyzer_id.clone();
        cfg.group.extra.push(("client.id".into(), id));
    }
    let consumer = GroupConsumer::new(&cfg.group, Some(start))?;
    let formats = cfg.formats.clone();
    tracing::info!(analyzer = %cfg.analyzer_id, topic = %cfg.group.topic, group = %cfg.group.group, sink = %sink.describe(), dead_letters = %cfg.dlq_topic, fleet_topic = ?cfg.fleet_topic, formats = ?cfg.formats, "analyzer started");
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
            template: Vec::new(),
        },
        batch: Pending::default(),
        paused: false,
        write_error: None,
        uncommitted: BTreeMap::new(),
        last_commit: Instant::now(),
        fleet,
        last_counters: Instant::now(),
    }
    .run(&consumer)
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
                .fetch_add(self.passed() - reported, Ordering::Relaxed);
            reported = self.passed();
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
                drop(progress);
                self.report_status(consumer);
            }
            if last_flush.elapsed() >= backoff {
                last_flush = Instant::now();
                match self.flush(consumer, false) {
                    Ok(()) => {
                        backoff = self.cfg.flush_interval;
                        self.write_error = None;
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
                        self.write_error = Some(e.to_string());
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

    /// Records consumed, or deleted by the broker before they were read.
    fn passed(&self) -> u64 {
        self.ingest.counters.records + self.ingest.counters.offsets_skipped
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

    /// Publishes this analyzer's counters, lag per partition and write
    /// state to its [`Control`] (metrics and readiness read them there).
    fn report_status(&self, consumer: &GroupConsumer) {
        let lag = self
            .parts
            .iter()
            .map(|(&p, part)| {
                let lag = consumer
                    .cached_high_watermark(p)
                    .zip(part.next)
                    .map(|(hi, next)| (hi - next).max(0) as u64);
                (p, lag)
            })
            .collect();
        let status = control::Status {
            counters: self.ingest.counters,
            lag,
            write_error: self.write_error.clone(),
        };
        self.control
            .status
            .lock()
            .unwrap()
            .insert(self.cfg.analyzer_id.clone(), status);
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
