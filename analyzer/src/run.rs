//! The analyzer's I/O shell: a group member polled on one thread, feeding the
//! pure window core, writing window points to a sink every flush interval and
//! committing offsets only after the sink accepted them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logpipe_consumer::{GroupConfig, GroupConsumer, RebalanceEvent};
use rdkafka::message::{Headers, Message};

use crate::counters::Counters;
use crate::line_protocol;
use crate::parse::parse_combined;
use crate::sink::{Sink, SinkError};
use crate::window::{Hit, PartitionWindows, Recorded, SourceId, WindowSpec, WindowValue};

/// Settings of one analyzer.
#[derive(Debug, Clone)]
pub struct AnalyzerConfig {
    pub group: GroupConfig,
    pub spec: WindowSpec,
    /// How often open windows' partial values (and closed windows) are written.
    pub flush_interval: Duration,
    /// Name of this analyzer in the `logpipe` self-metrics (tag `analyzer`).
    pub analyzer_id: String,
}

/// How a run is asked to end; shared between the analyzer and whoever controls it.
#[derive(Debug, Default)]
pub struct Control {
    mode: AtomicU8,
    /// Next offset consumed per partition, refreshed about every 100 ms.
    progress: Mutex<HashMap<i32, i64>>,
    /// Partitions currently owned, per analyzer id.
    assignments: Mutex<HashMap<String, usize>>,
}

const RUN: u8 = 0;
const STOP: u8 = 1;
const FINISH: u8 = 2;

impl Control {
    pub fn new() -> Arc<Self> {
        Arc::new(Control::default())
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
}

struct SourceTable {
    by_key: HashMap<Box<[u8]>, SourceId>,
    names: Vec<(String, String)>,
}

impl SourceTable {
    fn id(
        &mut self,
        key: Option<&[u8]>,
        headers: Option<&rdkafka::message::BorrowedHeaders>,
    ) -> SourceId {
        let key = key.unwrap_or(b"");
        if let Some(&id) = self.by_key.get(key) {
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
        self.names.push((host, source));
        self.by_key.insert(key.into(), id);
        id
    }
}

/// A write that the sink has not accepted yet, kept for the next attempt.
struct Pending {
    body: Vec<u8>,
    finals: Vec<WindowValue>,
    commits: Vec<(i32, i64)>,
}

/// Runs one analyzer until `control` says stop or finish, or a permanent error.
pub fn run(
    cfg: AnalyzerConfig,
    mut sink: Box<dyn Sink>,
    mut observer: Option<Observer>,
    control: Arc<Control>,
) -> Result<Counters, AnalyzeError> {
    let consumer = GroupConsumer::new(&cfg.group)?;
    tracing::info!(analyzer = %cfg.analyzer_id, topic = %cfg.group.topic, group = %cfg.group.group, sink = %sink.describe(), "analyzer started");
    let mut parts: HashMap<i32, PartitionWindows> = HashMap::new();
    let mut next_offsets: HashMap<i32, i64> = HashMap::new();
    let mut sources = SourceTable {
        by_key: HashMap::new(),
        names: Vec::new(),
    };
    let mut counters = Counters::default();
    let mut pending: Option<Pending> = None;
    let mut last_flush = Instant::now();
    let mut last_progress = Instant::now();
    let mut backoff = cfg.flush_interval;
    let mut owned: HashSet<i32> = HashSet::new();

    loop {
        let finishing = control.mode.load(Ordering::SeqCst);
        if finishing != RUN {
            // Final drain: write until accepted (or a permanent error), then leave.
            let close_all = finishing == FINISH;
            let mut tries = 0;
            loop {
                match flush(
                    &cfg,
                    &mut *sink,
                    &consumer,
                    &mut parts,
                    &sources,
                    &mut counters,
                    &mut pending,
                    close_all,
                    &mut observer,
                ) {
                    Ok(()) => break,
                    Err(SinkError::Retryable(e)) if tries < 10 => {
                        tries += 1;
                        counters.write_retries += 1;
                        tracing::warn!(error = %e, "final write failed, retrying");
                        std::thread::sleep(Duration::from_millis(200 * tries));
                    }
                    Err(e) => return Err(AnalyzeError::Sink(e)),
                }
            }
            tracing::info!(analyzer = %cfg.analyzer_id, ?counters, "analyzer stopped");
            return Ok(counters);
        }

        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                while let Some(ev) = consumer.take_rebalance() {
                    apply_rebalance(
                        ev,
                        &mut parts,
                        &mut next_offsets,
                        &mut owned,
                        &cfg.analyzer_id,
                        &control,
                    );
                }
                counters.lines_read += 1;
                let partition = msg.partition();
                let offset = msg.offset();
                if let Some(expected) = next_offsets.insert(partition, offset + 1) {
                    if offset > expected {
                        // Records vanished between two we read: the broker deleted
                        // them (retention; the mock keeps ~5 MiB per partition).
                        counters.offsets_skipped += (offset - expected) as u64;
                        tracing::error!(partition, from = expected, to = offset, "records were deleted by the broker before they were read; their lines are lost");
                    }
                }
                let windows = parts
                    .entry(partition)
                    .or_insert_with(|| PartitionWindows::new(cfg.spec));
                let source = sources.id(msg.key(), msg.headers());
                let line = msg.payload().unwrap_or(b"");
                match parse_combined(line) {
                    Ok(l) => {
                        counters.parsed += 1;
                        let hit = Hit {
                            source,
                            time_ms: l.time_ms,
                            status: l.status,
                            body_bytes: l.body_bytes,
                            offset,
                        };
                        if windows.record(hit) == Recorded::Late {
                            counters.late += 1;
                        }
                    }
                    Err(e) => {
                        counters.malformed += 1;
                        windows.skip(offset);
                        if counters.malformed <= 20 || counters.malformed % 1000 == 0 {
                            let (host, src) = &sources.names[source as usize];
                            tracing::warn!(%host, source = %src, partition, offset, error = %e, malformed_so_far = counters.malformed,
                                line = %String::from_utf8_lossy(&line[..line.len().min(200)]), "malformed line");
                        }
                    }
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "Kafka consumer error"),
            None => {}
        }
        while let Some(ev) = consumer.take_rebalance() {
            apply_rebalance(
                ev,
                &mut parts,
                &mut next_offsets,
                &mut owned,
                &cfg.analyzer_id,
                &control,
            );
        }
        if last_progress.elapsed() >= Duration::from_millis(100) {
            last_progress = Instant::now();
            control
                .progress
                .lock()
                .unwrap()
                .extend(next_offsets.iter().map(|(&p, &o)| (p, o)));
        }
        if last_flush.elapsed() >= backoff {
            last_flush = Instant::now();
            match flush(
                &cfg,
                &mut *sink,
                &consumer,
                &mut parts,
                &sources,
                &mut counters,
                &mut pending,
                false,
                &mut observer,
            ) {
                Ok(()) => backoff = cfg.flush_interval,
                Err(SinkError::Retryable(e)) => {
                    counters.write_retries += 1;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    tracing::warn!(error = %e, retry_in = ?backoff, "write failed; offsets stay uncommitted");
                }
                Err(e) => return Err(AnalyzeError::Sink(e)),
            }
        }
    }
}

fn apply_rebalance(
    ev: RebalanceEvent,
    parts: &mut HashMap<i32, PartitionWindows>,
    next: &mut HashMap<i32, i64>,
    owned: &mut HashSet<i32>,
    analyzer_id: &str,
    control: &Control,
) {
    match ev {
        // Open windows of a revoked partition are dropped, not written: the new
        // owner rebuilds them from the committed restore offset.
        RebalanceEvent::Revoked(ps) => {
            tracing::info!(count = ps.len(), partitions = ?ps, "partitions revoked");
            for p in ps {
                parts.remove(&p);
                next.remove(&p);
                owned.remove(&p);
                control.progress.lock().unwrap().remove(&p);
            }
        }
        RebalanceEvent::Lost => {
            tracing::warn!("partition assignment lost");
            parts.clear();
            next.clear();
            owned.clear();
        }
        RebalanceEvent::Assigned(ps) => {
            tracing::info!(count = ps.len(), partitions = ?ps, "partitions assigned");
            owned.extend(ps);
        }
    }
    control
        .assignments
        .lock()
        .unwrap()
        .insert(analyzer_id.to_string(), owned.len());
}

/// Writes what is pending plus every closed window and changed partial, then
/// commits each partition's restore offset.
#[allow(clippy::too_many_arguments)]
fn flush(
    cfg: &AnalyzerConfig,
    sink: &mut dyn Sink,
    consumer: &GroupConsumer,
    parts: &mut HashMap<i32, PartitionWindows>,
    sources: &SourceTable,
    counters: &mut Counters,
    pending: &mut Option<Pending>,
    close_all: bool,
    observer: &mut Option<Observer>,
) -> Result<(), SinkError> {
    let p = pending.get_or_insert_with(|| Pending {
        body: Vec::new(),
        finals: Vec::new(),
        commits: Vec::new(),
    });
    let mut values = Vec::new();
    for (&partition, w) in parts.iter_mut() {
        w.drain(true, close_all, &mut values);
        if let Some(o) = w.restore_offset() {
            p.commits.retain(|&(q, _)| q != partition);
            p.commits.push((partition, o));
        }
    }
    for v in &values {
        let (host, source) = &sources.names[v.source as usize];
        line_protocol::encode_window(
            &mut p.body,
            host.as_bytes(),
            source.as_bytes(),
            cfg.spec.window_ms,
            v,
        );
    }
    p.finals.extend(values.into_iter().filter(|v| v.is_final));
    if p.body.is_empty() && p.commits.is_empty() {
        *pending = None;
        return Ok(());
    }
    counters.windows_written += p.finals.len() as u64;
    let mut body = std::mem::take(&mut p.body);
    let data_len = body.len();
    counters.encode(&mut body, &cfg.analyzer_id);
    let result = sink.write(&body);
    body.truncate(data_len);
    p.body = body;
    if let Err(e) = result {
        counters.windows_written -= p.finals.len() as u64;
        return Err(e);
    }
    let p = pending.take().expect("pending set above");
    if let Some(obs) = observer.as_mut() {
        for v in &p.finals {
            let (host, source) = &sources.names[v.source as usize];
            obs(&WindowReport {
                host,
                source,
                window_ms: cfg.spec.window_ms,
                value: v,
            });
        }
    }
    if let Err(e) = consumer.commit(&p.commits) {
        tracing::debug!(error = %e, "offset commit failed; the next flush commits again");
    }
    Ok(())
}
