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

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logpipe_consumer::{
    Batch as RecordBatch, GroupConfig, GroupConsumer, RebalanceEvent, StartOffsets,
};
use rdkafka::message::{Headers, Message};

use crate::counters::Counters;
use crate::dlq::DeadLetters;
use crate::formats::{Formats, Parser};
use crate::line_protocol;
use crate::parse::{AccessLine, ErrorKind, ParseError};
use crate::pieces::{FirstPiece, GaveUp, Held, Mark, Piece, Pieces, Step};
use crate::replay::Replay;
use crate::sink::{Sink, SinkError};
use crate::state::{Scope, StateBatch, StateStore, StateUpdate, StoredPoint};
use crate::window::{
    Hit, PartitionWindows, Recorded, RestorePoint, SourceId, WindowSpec, WindowValue,
};
use logpipe_wire::{Dedup, HeaderLookup, RecordMeta};

/// Settings of one analyzer.
#[derive(Debug, Clone)]
pub struct AnalyzerConfig {
    pub group: GroupConfig,
    pub spec: WindowSpec,
    /// How often open windows' partial values (and closed windows) are written.
    pub flush_interval: Duration,
    /// Name of this analyzer in the `logpipe` self-metrics (tag `analyzer`).
    pub analyzer_id: String,
    /// Files remembered per partition for de-duplication.
    pub dedup_files: usize,
    /// How long (by the source's record stamps) a line's first piece waits
    /// for its rest before it is a dead letter (see [`crate::pieces`]).
    pub partial_wait: Duration,
    /// How often restore offsets are committed to the group (for lag tools;
    /// resuming uses the restore points in the sink).
    pub commit_interval: Duration,
    /// Which parser reads which source.
    pub formats: Arc<Formats>,
    /// Where lines that do not parse go (`logs.dlq`).
    pub dlq_topic: String,
    /// A replay instead of a live group member (see [`crate::replay`]).
    pub replay: Option<Replay>,
}

/// How a run is asked to end; shared between the analyzer and whoever controls it.
#[derive(Debug)]
pub struct Control {
    mode: AtomicU8,
    /// Next offset consumed per partition, refreshed about every 100 ms.
    progress: Mutex<HashMap<i32, i64>>,
    /// Partitions currently owned, per analyzer id.
    assignments: Mutex<HashMap<String, usize>>,
    /// The largest event time seen, refreshed with `progress` (`i64::MIN`
    /// before the first line).
    event_ms: AtomicI64,
    /// Records consumed by every analyzer of this control, refreshed every
    /// batch of records (a partition re-read after a rebalance counts again).
    consumed: AtomicU64,
    /// Records fetched from the broker and not yet consumed, over every
    /// analyzer of this control, refreshed with `consumed`.
    queued: AtomicU64,
    /// Analyzers of this control that are running, and those that made
    /// their last commit: a member leaves the group only when every other
    /// one has committed too (a member leaving starts a rebalance, during
    /// which the group refuses commits).
    running: AtomicUsize,
    committed_last: AtomicUsize,
}

const RUN: u8 = 0;
const STOP: u8 = 1;
const FINISH: u8 = 2;

impl Default for Control {
    fn default() -> Self {
        Control {
            mode: AtomicU8::new(RUN),
            progress: Mutex::default(),
            assignments: Mutex::default(),
            event_ms: AtomicI64::new(i64::MIN),
            consumed: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            committed_last: AtomicUsize::new(0),
        }
    }
}

impl Control {
    pub fn new() -> Arc<Self> {
        Arc::new(Control::default())
    }
    /// Records consumed so far by the analyzers of this control.
    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }
    /// Records taken from the broker so far: consumed, or fetched and
    /// waiting in the analyzers' queues.
    pub fn fetched(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed) + self.queued.load(Ordering::Relaxed)
    }
    /// The largest event time seen so far, if any line was.
    pub fn event_ms(&self) -> Option<i64> {
        Some(self.event_ms.load(Ordering::Relaxed)).filter(|&t| t != i64::MIN)
    }
    /// Stop reading, write what is open as partial values, commit, return.
    /// Open windows are rebuilt by whoever consumes the partitions next.
    pub fn stop(&self) {
        let _ = self
            .mode
            .compare_exchange(RUN, STOP, Ordering::SeqCst, Ordering::SeqCst);
    }
    /// End of input: close every window as final, write, commit, return.
    pub fn finish(&self) {
        self.mode.store(FINISH, Ordering::SeqCst);
    }
    pub fn is_stopping(&self) -> bool {
        self.mode.load(Ordering::SeqCst) != RUN
    }
    /// Next offset consumed per partition, as last reported by analyzers.
    pub fn progress(&self) -> HashMap<i32, i64> {
        self.progress.lock().unwrap().clone()
    }
    /// Number of partitions each analyzer currently owns.
    pub fn assignments(&self) -> HashMap<String, usize> {
        self.assignments.lock().unwrap().clone()
    }
}

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

/// Sources by record key; names from the first record's headers.
struct SourceTable {
    by_key: crate::FastMap<Box<[u8]>, SourceId>,
    /// (host, source, key as text) per id.
    names: Vec<(String, String, String)>,
    /// The parser of each source, resolved when it is first seen.
    parsers: Vec<Arc<Parser>>,
    /// The source of the previous record.
    last: Option<SourceId>,
    formats: Arc<Formats>,
}

impl SourceTable {
    fn id<H: Headers>(&mut self, key: &[u8], headers: Option<&H>) -> SourceId {
        // Records of one source come in runs: the previous key first.
        if let Some(last) = self.last {
            if self.names[last as usize].2.as_bytes() == key {
                return last;
            }
        }
        if let Some(&id) = self.by_key.get(key) {
            self.last = Some(id);
            return id;
        }
        let header = |name: &str| {
            headers
                .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let (kh, ks) = logpipe_wire::split_key(key).unwrap_or((b"-", key));
        let host =
            header(logpipe_wire::HOST).unwrap_or_else(|| String::from_utf8_lossy(kh).into_owned());
        let source = header(logpipe_wire::SOURCE)
            .unwrap_or_else(|| String::from_utf8_lossy(ks).into_owned());
        let id = self.names.len() as SourceId;
        let parser = self.formats.for_source(&source);
        tracing::debug!(%host, %source, format = %parser.describe(), "new source");
        self.parsers.push(parser);
        self.names
            .push((host, source, String::from_utf8_lossy(key).into_owned()));
        self.by_key.insert(key.into(), id);
        self.last = Some(id);
        id
    }

    /// The id of a source known by its key alone (a restore point's).
    fn id_of_key(&mut self, key: &str) -> SourceId {
        self.id::<rdkafka::message::OwnedHeaders>(key.as_bytes(), None)
    }

    fn key(&self, id: SourceId) -> &str {
        &self.names[id as usize].2
    }
}

/// One owned partition.
struct Part {
    windows: PartitionWindows,
    dedup: Dedup,
    /// Lines held in pieces until their rest comes.
    pieces: Pieces,
    /// Offset after the last record consumed, or before the first the offset
    /// the partition must start at (gap detection, progress): a first record
    /// beyond it means the broker deleted records before they were read.
    next: Option<i64>,
    /// (offset, next offset) of the last restore point the sink accepted.
    written: Option<(i64, i64)>,
    /// Records below this offset were handled by a previous owner, which had
    /// their dead letters acknowledged before it wrote its restore point.
    dead_lettered_below: i64,
    /// Replay: this partition reached its end.
    done: bool,
}

/// What the sink has not accepted yet; retried as a whole, newest values win.
#[derive(Default)]
struct Batch {
    windows: BTreeMap<(i32, SourceId, i64), WindowValue>,
    state: BTreeMap<i32, StateUpdate>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.state.is_empty()
    }
    fn drop_partitions(&mut self, ps: &[i32]) {
        self.windows.retain(|k, _| !ps.contains(&k.0));
        self.state.retain(|p, _| !ps.contains(p));
    }
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
    sources: SourceTable,
    dlq: DeadLetters,
    counters: Counters,
    batch: Batch,
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
    control.running.fetch_add(1, Ordering::SeqCst);
    let _running = Running(control.clone());
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
        sources: SourceTable {
            by_key: crate::FastMap::default(),
            names: Vec::new(),
            parsers: Vec::new(),
            last: None,
            formats,
        },
        dlq,
        counters: Counters::default(),
        batch: Batch::default(),
        paused: false,
        uncommitted: BTreeMap::new(),
        last_commit: Instant::now(),
        last_counters: Instant::now(),
    }
    .run(&consumer)
}

/// Counts an analyzer out of [`Control::running`] however its run ends.
struct Running(Arc<Control>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
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
                    std::thread::sleep(wait);
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
            let mode = self.control.mode.load(Ordering::SeqCst);
            if mode != RUN {
                self.control
                    .queued
                    .fetch_sub(reported_queued, Ordering::Relaxed);
                return self.shut_down(consumer, mode == FINISH);
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
                .fetch_add(self.counters.consumed - reported, Ordering::Relaxed);
            reported = self.counters.consumed;
            let queued = consumer.queued() as u64;
            // Deltas, so that several analyzers add up in one counter.
            self.control
                .queued
                .fetch_add(queued.wrapping_sub(reported_queued), Ordering::Relaxed);
            reported_queued = queued;
            self.dlq.poll();
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
                        self.counters.write_retries += 1;
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
        if self.cfg.replay.is_none() || self.replay_wants(consumer, msg) {
            handle(
                &mut self.parts,
                &mut self.sources,
                &mut self.counters,
                &mut self.dlq,
                msg,
            );
            if self.cfg.replay.is_some() {
                self.replay_after(consumer, msg.partition(), msg.offset());
            }
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
                let mut gave_up = Vec::new();
                part.pieces.give_up_all(&mut gave_up);
                give_up(
                    part,
                    &self.sources,
                    &mut self.counters,
                    &mut self.dlq,
                    gave_up,
                    i64::MAX,
                );
            }
        }
        let mut tries = 0;
        loop {
            match self.flush(consumer, close_all) {
                Ok(()) => break,
                Err(SinkError::Retryable(e)) if tries < 10 => {
                    tries += 1;
                    self.counters.write_retries += 1;
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
        tracing::info!(analyzer = %self.cfg.analyzer_id, counters = ?self.counters, "analyzer stopped");
        Ok(self.counters)
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
                            let point = RestorePoint {
                                offset: pt.offset,
                                next_offset: pt.next_offset,
                                max_event_ms: pt
                                    .sources
                                    .iter()
                                    .map(|(k, m)| (self.sources.id_of_key(k), *m))
                                    .collect(),
                                ahead: pt
                                    .ahead
                                    .iter()
                                    .map(|(k, u)| (self.sources.id_of_key(k), *u))
                                    .collect(),
                            };
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
                    self.parts.insert(
                        p,
                        Part {
                            windows,
                            dedup: Dedup::new(self.cfg.dedup_files),
                            pieces: Pieces::new(
                                i64::try_from(self.cfg.partial_wait.as_millis())
                                    .unwrap_or(i64::MAX),
                            ),
                            next: start,
                            written: None,
                            dead_lettered_below,
                            done: false,
                        },
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
                        .filter(|p| matches!((r.starts.get(p), r.ends.get(p)), (Some(s), Some(e)) if s >= e))
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
        let mut values = Vec::new();
        let mut changed = Vec::new();
        for (&partition, part) in self.parts.iter_mut() {
            values.clear();
            changed.clear();
            if let Some(r) = &self.cfg.replay {
                // Final windows inside the range only; no restore points.
                part.windows.drain(false, close_all, &mut values);
                for v in &values {
                    if r.range.holds_window(v.start_ms, self.cfg.spec.window_ms) {
                        self.batch
                            .windows
                            .insert((partition, v.source, v.start_ms), *v);
                    } else {
                        self.counters.windows_outside_range += 1;
                    }
                }
                continue;
            }
            part.windows.drain(true, close_all, &mut values);
            part.windows.take_changed_sources(&mut changed);
            for v in &values {
                self.batch
                    .windows
                    .insert((partition, v.source, v.start_ms), *v);
            }
            let Some(point) = part.windows.restore_point() else {
                continue;
            };
            if changed.is_empty()
                && part.written == Some((point.offset, point.next_offset))
                && !self.batch.state.contains_key(&partition)
            {
                continue;
            }
            let u = self
                .batch
                .state
                .entry(partition)
                .or_insert_with(|| StateUpdate {
                    partition,
                    offset: 0,
                    next_offset: 0,
                    sources: Vec::new(),
                });
            u.offset = point.offset;
            u.next_offset = point.next_offset;
            for &(s, m) in &changed {
                let key = self.sources.key(s);
                match u.sources.iter_mut().find(|(k, _)| k == key) {
                    Some(e) => e.1 = m,
                    None => u.sources.push((key.to_string(), m)),
                }
            }
        }
        if self.batch.is_empty() && self.last_counters.elapsed() < self.cfg.flush_interval * 5 {
            return Ok(());
        }
        self.last_counters = Instant::now();
        // Dead letters before any restore point that moves past them.
        self.dlq.flush(Duration::from_secs(5))?;
        let mut lp = Vec::with_capacity(self.batch.windows.len() * 256);
        for v in self.batch.windows.values() {
            let (host, source, _) = &self.sources.names[v.source as usize];
            line_protocol::encode_window(
                &mut lp,
                host.as_bytes(),
                source.as_bytes(),
                self.cfg.spec.window_ms,
                v,
            );
        }
        let finals = self.batch.windows.values().filter(|v| v.is_final).count() as u64;
        let mut counters = self.counters;
        counters.windows_written += finals;
        counters.lag = self.lag(consumer);
        counters.encode(&mut lp, &self.cfg.analyzer_id);
        let updates: Vec<StateUpdate> = self.batch.state.values().cloned().collect();
        self.sink.write(
            &lp,
            &StateBatch {
                scope: &self.scope,
                analyzer: &self.cfg.analyzer_id,
                updates: &updates,
            },
        )?;
        self.counters.windows_written = counters.windows_written;
        self.counters.lag = counters.lag;
        let batch = std::mem::take(&mut self.batch);
        for u in &updates {
            if let Some(part) = self.parts.get_mut(&u.partition) {
                part.written = Some((u.offset, u.next_offset));
            }
        }
        if let Some(obs) = self.observer.as_mut() {
            for v in batch.windows.values().filter(|v| v.is_final) {
                let (host, source, _) = &self.sources.names[v.source as usize];
                obs(&WindowReport {
                    host,
                    source,
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
            .extend(updates.iter().map(|u| (u.partition, u.next_offset)));
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

    /// Replay: should this record be read? Records at or after a partition's
    /// end offset, or (starting by time) with an ingest time past the
    /// range's end plus the maximum delay, end the partition instead.
    fn replay_wants<M: Message>(&mut self, consumer: &GroupConsumer, msg: &M) -> bool {
        let Some(r) = &self.cfg.replay else {
            return true;
        };
        let p = msg.partition();
        let Some(part) = self.parts.get(&p) else {
            return false;
        };
        if part.done {
            return false;
        }
        if r.ends.get(&p).is_some_and(|&e| msg.offset() >= e) {
            self.replay_done(consumer, p, "end offset reached");
            return false;
        }
        let ts = msg.timestamp().to_millis();
        if let (Some(stop), Some(ts)) = (r.stop_after_ts_ms, ts) {
            if ts > stop {
                self.replay_done(consumer, p, "records past --to + --max-delay");
                return false;
            }
        }
        true
    }

    /// Replay: the partition is done after the record at `offset` when that
    /// was the last one before its end offset.
    fn replay_after(&mut self, consumer: &GroupConsumer, p: i32, offset: i64) {
        let end = self
            .cfg
            .replay
            .as_ref()
            .and_then(|r| r.ends.get(&p).copied());
        if end.is_some_and(|e| offset + 1 >= e) {
            self.replay_done(consumer, p, "end offset reached");
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

/// A record as the analyzer reads it: rdkafka's [`Message`] whose headers
/// the wire contract's [`RecordMeta`] can read.
trait WireRecord: Message<Headers: HeaderLookup> {}

impl<M: Message<Headers: HeaderLookup>> WireRecord for M {}

/// One record: de-duplicate, join pieces, parse, aggregate.
fn handle<M: WireRecord>(
    parts: &mut HashMap<i32, Part>,
    sources: &mut SourceTable,
    counters: &mut Counters,
    dlq: &mut DeadLetters,
    msg: &M,
) {
    let partition = msg.partition();
    let offset = msg.offset();
    // A record of a partition not owned (fetched before a revoke) is not ours.
    let Some(part) = parts.get_mut(&partition) else {
        return;
    };
    counters.consumed += 1;
    if let Some(expected) = part.next {
        if offset > expected {
            // Records vanished before we read them: the broker deleted them
            // (retention, or the mock's ~5 MiB per partition), whether
            // between two records or before the first (librdkafka's
            // `auto.offset.reset` then moved the start past them).
            let lost = (offset - expected) as u64;
            counters.offsets_skipped += lost;
            tracing::error!(
                partition,
                from = expected,
                to = offset - 1,
                lost,
                "records {expected}..={} of partition {partition} ({lost}) were deleted by the broker before they were read; their lines are lost",
                offset - 1
            );
        }
    }
    part.next = Some(offset + 1);
    let RecordMeta {
        file,
        offset: at,
        partial,
        cut,
    } = RecordMeta::from_headers(msg.headers());
    let mark = Mark::from_header(partial);
    let key = msg.key().unwrap_or(b"");
    let source = sources.id(key, msg.headers());
    let line = msg.payload().unwrap_or(b"");
    let ts = msg.timestamp().to_millis();
    let mut gave_up = Vec::new();
    let step = match (file, at) {
        (Some(file), Some(at)) => {
            let piece = Piece {
                offset,
                at,
                mark,
                cut,
                value: line,
                timestamp: ts,
                source,
            };
            if !part.pieces.is_empty() {
                part.pieces.expired(&piece, &mut gave_up);
            }
            // A re-send of a held piece replaces it: not a duplicate.
            if !part.pieces.is_resend_of_held(file, at) && part.dedup.is_duplicate(file, at) {
                counters.duplicates += 1;
                part.windows.skip(offset);
                give_up(part, sources, counters, dlq, gave_up, offset);
                return;
            }
            if part.pieces.is_empty() && mark == Mark::Whole {
                Step::Line
            } else {
                part.pieces
                    .offer(file, &piece, || first_piece(msg), &mut gave_up)
            }
        }
        // Without a file and offset, pieces cannot be matched: as they are.
        _ => Step::Line,
    };
    match step {
        Step::Line => match parse_line(sources, source, line, cut.is_some(), ts) {
            Ok(l) => add(part, counters, Hit::from_line(source, &l, offset)),
            Err(e) => {
                let e = match mark {
                    Mark::Eof => LineError::Eof(e),
                    _ => LineError::Parse(e),
                };
                dead_letter(sources, counters, source, offset, &e, line);
                part.windows.skip(offset);
                if offset >= part.dead_lettered_below {
                    dlq.send(msg, &e);
                }
            }
        },
        Step::Joined(held, end_mark) => {
            counters.pieces += held.records() - 1;
            let whole = held.cut_at.map_or(&held.line[..], |n| &held.line[..n]);
            match parse_line(
                sources,
                source,
                whole,
                held.cut_at.is_some(),
                held.timestamp,
            ) {
                Ok(l) => {
                    let mut hit = Hit::from_line(source, &l, held.offset);
                    hit.end_offset = offset;
                    add(part, counters, hit);
                }
                Err(e) => {
                    let e = match end_mark {
                        Mark::Eof => LineError::Eof(e),
                        _ => LineError::Joined(e),
                    };
                    dead_letter(sources, counters, source, offset, &e, &held.line);
                    part.windows.skip(offset);
                    // What decides is the record that completed the line: an
                    // earlier owner that read it sent the dead letter.
                    if offset >= part.dead_lettered_below {
                        send_held(dlq, &held, &e);
                    }
                }
            }
        }
        Step::Taken => part.windows.skip(offset),
        Step::Orphan => {
            dead_letter(sources, counters, source, offset, &LineError::Orphan, line);
            part.windows.skip(offset);
            if offset >= part.dead_lettered_below {
                dlq.send(msg, &LineError::Orphan);
            }
        }
    }
    give_up(part, sources, counters, dlq, gave_up, offset);
}

/// Why a line is a dead letter: the parser's word, or what became of its pieces.
#[derive(Debug)]
enum LineError {
    Parse(ParseError),
    /// The unterminated end of a file or connection (`partial: eof`).
    Eof(ParseError),
    /// A line joined from pieces.
    Joined(ParseError),
    /// A `partial: rest` whose first piece was not read.
    Orphan,
    GaveUp(GaveUp),
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineError::Parse(e) => e.fmt(f),
            LineError::Eof(e) => write!(
                f,
                "{e} (the unterminated end of a file or connection, partial: eof)"
            ),
            LineError::Joined(e) => write!(f, "{e} (a line joined from pieces)"),
            LineError::Orphan => f.write_str(
                "the rest of a line (partial: rest) whose first piece was not read: \
                 deleted by the broker, or before the start of a replay",
            ),
            LineError::GaveUp(g @ GaveUp::Gap { expected, got }) => write!(
                f,
                "{}: the next line starts at byte {got}, the rest was due at byte {expected}",
                g.describe()
            ),
            LineError::GaveUp(g) => f.write_str(g.describe()),
        }
    }
}

/// Parses with the source's parser (as a cut line when `cut`); a line
/// without a time takes its record's timestamp.
fn parse_line<'a>(
    sources: &SourceTable,
    source: SourceId,
    line: &'a [u8],
    cut: bool,
    timestamp: Option<i64>,
) -> Result<AccessLine<'a>, ParseError> {
    let parser = &sources.parsers[source as usize];
    let mut l = if cut {
        parser.parse_cut(line)?
    } else {
        parser.parse(line)?
    };
    if l.time_ms == i64::MIN {
        // No time in the line: when the producer read it.
        l.time_ms = timestamp.ok_or(ParseError::expected(
            0,
            "a time: the line has none and the record no timestamp",
        ))?;
    }
    Ok(l)
}

fn add(part: &mut Part, counters: &mut Counters, hit: Hit<'_>) {
    counters.parsed += 1;
    match part.windows.record(&hit) {
        Recorded::Added => counters.counted += 1,
        Recorded::Late => counters.late += 1,
        Recorded::Replayed => counters.replayed += 1,
    }
}

/// The log target of the first dead letters' lines (and every 1000th), so
/// a filter can leave them out (`logpipe demo` does by default).
pub const DEAD_LETTER_LOG: &str = "logpipe::dead_letter";

/// Counts and logs a dead letter (the caller sends it when it is its to send).
fn dead_letter(
    sources: &SourceTable,
    counters: &mut Counters,
    source: SourceId,
    offset: i64,
    e: &LineError,
    line: &[u8],
) {
    counters.dead_lettered += 1;
    let kinds = &mut counters.dead_letter_kinds;
    match e {
        LineError::Parse(p) | LineError::Eof(p) | LineError::Joined(p) => match p.kind {
            ErrorKind::Expected => kinds.malformed += 1,
            ErrorKind::Ends => kinds.cut += 1,
            ErrorKind::Damaged => kinds.damaged += 1,
        },
        LineError::Orphan | LineError::GaveUp(_) => kinds.unjoined += 1,
    }
    if counters.dead_lettered <= 20 || counters.dead_lettered.is_multiple_of(1000) {
        let (host, src, _) = &sources.names[source as usize];
        tracing::warn!(target: DEAD_LETTER_LOG, %host, source = %src, offset, error = %e, dead_lettered_so_far = counters.dead_lettered,
            line = %String::from_utf8_lossy(&line[..line.len().min(200)]), "line does not parse; sent to the dead-letter topic");
    }
}

/// Dead letters for held lines that can no longer be completed; `offset`
/// is the record that decided it.
fn give_up(
    part: &mut Part,
    sources: &SourceTable,
    counters: &mut Counters,
    dlq: &mut DeadLetters,
    gave_up: Vec<(Held, GaveUp)>,
    offset: i64,
) {
    for (held, why) in gave_up {
        counters.pieces += held.records() - 1;
        let e = LineError::GaveUp(why);
        dead_letter(sources, counters, held.source, held.offset, &e, &held.line);
        if offset >= part.dead_lettered_below {
            send_held(dlq, &held, &e);
        }
    }
    part.windows.hold_from(part.pieces.floor());
}

/// What a dead letter of a held line needs of its first piece's record.
fn first_piece<M: Message>(msg: &M) -> FirstPiece {
    FirstPiece {
        topic: msg.topic().to_string(),
        partition: msg.partition(),
        key: msg.key().map(<[u8]>::to_vec),
        headers: msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
        timestamp: msg.timestamp().to_millis(),
    }
}

/// A held line as a dead letter: its bytes, with the first piece's key,
/// headers, timestamp and origin.
fn send_held(dlq: &mut DeadLetters, held: &Held, e: &LineError) {
    let f = &held.first;
    let headers: Vec<(&str, Option<&[u8]>)> = f
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref()))
        .collect();
    let origin = format!("{}/{}/{}", f.topic, f.partition, held.offset);
    dlq.send_parts(
        f.key.as_deref(),
        &held.line,
        &headers,
        f.timestamp,
        &origin,
        e,
    );
}
