//! `logpipe rollup`: the fleet roll-up's I/O shell — a consumer-group
//! member on the fleet topic (`logs.windows`) that merges every source's
//! final window per window and group ([`core`]) and writes `access_fleet`
//! and `access_fleet_top` points, with its restore points beside them in
//! the same sink, like the analyzers (see docs/design.md, "Fleet roll-up").
//!
//! A recompute (`--recompute`) reads every partition from its beginning to
//! the end it had when it started, writes every window and exits; it reads
//! and writes no restore points and commits nothing.

pub mod core;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logpipe_consumer::{Batch as RecordBatch, GroupConfig, GroupConsumer, Probe, StartOffsets};
use rdkafka::message::Message;

use crate::fleet;
use crate::line_protocol::{self, ACCESS_FLEET, ACCESS_FLEET_TOP, SELF_METRICS};
use crate::run::rebalance::start_offsets;
use crate::run::Control;
use crate::store::{Scope, Sink, SinkError, StateBatch, StoredPoint};
use crate::window::RestorePoint;
pub use core::{FleetPoint, GroupKey, Groups, PartitionFleet, RollupSpec, Taken};

/// Defaults of `logpipe rollup`.
pub mod defaults {
    use std::time::Duration;
    pub const GROUP: &str = "logpipe-rollup";
    pub const fn grace() -> Duration {
        Duration::from_secs(30)
    }
    pub const fn keep() -> Duration {
        Duration::from_secs(600)
    }
}

/// Settings of one rollup member.
#[derive(Debug, Clone)]
pub struct RollupConfig {
    /// The fleet topic and the rollup's group.
    pub group: GroupConfig,
    pub spec: RollupSpec,
    pub flush_interval: Duration,
    /// Name in the self-metrics (tag `rollup`).
    pub id: String,
    /// Read everything from the beginning, write, exit (see the module docs).
    pub recompute: bool,
    /// Where the member reports its counters, partitions and write state
    /// (refreshed every poll), for `--metrics-addr`.
    pub status: Arc<Mutex<RollupStatus>>,
}

/// A rollup member's state as its metrics and readiness show it.
#[derive(Debug, Clone, Default)]
pub struct RollupStatus {
    pub counters: RollupCounters,
    /// Partitions owned now.
    pub owned: usize,
    /// Windows held (written and kept for rewrites, or waiting) over the
    /// owned partitions.
    pub windows_held: usize,
    /// Why writes are failing, while they are.
    pub write_error: Option<String>,
}

impl RollupStatus {
    /// Ready when it owns partitions and its last write was accepted.
    pub fn ready(&self) -> Result<(), String> {
        if let Some(e) = &self.write_error {
            return Err(format!("writes to the sink fail: {e}"));
        }
        if self.owned == 0 {
            return Err("no partitions assigned (not joined yet, a rebalance under way, or more members than partitions)".into());
        }
        Ok(())
    }
}

/// Cumulative counts of one rollup member (`logpipe_rollup` measurement).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupCounters {
    /// Fleet records read.
    pub records: u64,
    /// Records that are not window sketches this rollup can read, or of
    /// another window length than their window's other records (logged).
    pub rejected: u64,
    /// Records replacing a held record of the same source and window.
    pub replaced: u64,
    /// Records of windows already written and forgotten (older than --keep).
    pub too_old: u64,
    /// Records re-read after a restore whose window was already forgotten.
    pub replayed: u64,
    /// Windows written without every expected source, after --grace.
    pub windows_graced: u64,
    /// Fleet points accepted by the sink (a rewrite counts again).
    pub points_written: u64,
    pub write_retries: u64,
}

impl RollupCounters {
    fn encode(&self, out: &mut Vec<u8>, id: &str) {
        let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        line_protocol::encode_counters(
            out,
            &format!("{SELF_METRICS}_rollup"),
            &[("rollup", id)],
            &[
                ("points_written", self.points_written),
                ("records", self.records),
                ("rejected", self.rejected),
                ("replaced", self.replaced),
                ("replayed", self.replayed),
                ("too_old", self.too_old),
                ("windows_graced", self.windows_graced),
                ("write_retries", self.write_retries),
            ],
            now_ns,
        );
    }
}

/// Why a rollup stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    #[error(transparent)]
    Consumer(#[from] logpipe_consumer::ConsumerError),
    #[error("writing fleet points failed: {0}")]
    Sink(SinkError),
    #[error("{0}")]
    Topic(String),
}

struct Part {
    fleet: PartitionFleet,
    /// Records below this were read by a former owner (from its restore point).
    restored_next: i64,
    /// The restore point last accepted by the sink.
    written: Option<(i64, i64, i64)>,
}

struct Rollup {
    cfg: RollupConfig,
    scope: Scope,
    sink: Box<dyn Sink>,
    control: Arc<Control>,
    loaded: Arc<Mutex<HashMap<i32, StoredPoint>>>,
    parts: HashMap<i32, Part>,
    counters: RollupCounters,
    /// Recompute: where each partition starts and ends.
    ends: Option<HashMap<i32, (i64, i64)>>,
    /// Points handed out and not yet accepted (newest value wins).
    pending: BTreeMap<(i64, GroupKey), FleetPoint>,
    last_counters: Instant,
    warned_too_old: i64,
    /// The last write's error, until a write succeeds.
    write_error: Option<String>,
}

/// Runs one rollup member until `control` says stop (or, recomputing,
/// until the end of the topic), or a permanent error.
pub fn run(
    cfg: RollupConfig,
    sink: Box<dyn Sink>,
    control: Arc<Control>,
) -> Result<RollupCounters, RollupError> {
    let scope = Scope {
        group: cfg.group.group.clone(),
        topic: cfg.group.topic.clone(),
    };
    let mut cfg = cfg;
    let loaded = Arc::new(Mutex::new(HashMap::new()));
    let mut ends = None;
    // A missing topic is said at once, not waited for in silence.
    let probe = Probe::new(&cfg.group.brokers, &cfg.group.topic, &cfg.group.extra)
        .map_err(|e| RollupError::Topic(format!("{}: {e}", cfg.group.topic)))?;
    let ps = probe
        .partitions()
        .map_err(|e| RollupError::Topic(format!("{}: {e}", cfg.group.topic)))?;
    if ps.is_empty() {
        return Err(RollupError::Topic(format!(
            "topic {} does not exist: create it compacted (cleanup.policy=compact), the analyzers publish to it with --fleet-topic",
            cfg.group.topic
        )));
    }
    let start: StartOffsets = if cfg.recompute {
        let mut starts = HashMap::new();
        let mut e = HashMap::new();
        for &p in &ps {
            let (lo, hi) = probe
                .watermarks(p)
                .map_err(|e| RollupError::Topic(format!("{} [{p}]: {e}", cfg.group.topic)))?;
            starts.insert(p, lo);
            e.insert(p, (lo, hi));
        }
        tracing::info!(topic = %cfg.group.topic, ends = ?e, "recompute: reading every partition to its end");
        cfg.group.partitions = Some(ps);
        ends = Some(e);
        Box::new(move |_: &[i32]| Ok(starts.clone()))
    } else {
        start_offsets(
            sink.state_store(),
            scope.clone(),
            loaded.clone(),
            control.clone(),
        )
    };
    let consumer = GroupConsumer::new(&cfg.group, Some(start))?;
    tracing::info!(rollup = %cfg.id, topic = %cfg.group.topic, group = %cfg.group.group, sink = %sink.describe(), grace = ?cfg.spec.grace, keep_ms = cfg.spec.keep_ms, "rollup started");
    Rollup {
        cfg,
        scope,
        sink,
        control,
        loaded,
        parts: HashMap::new(),
        counters: RollupCounters::default(),
        ends,
        pending: BTreeMap::new(),
        last_counters: Instant::now(),
        warned_too_old: i64::MIN,
        write_error: None,
    }
    .run(&consumer)
}

impl Rollup {
    fn run(mut self, consumer: &GroupConsumer) -> Result<RollupCounters, RollupError> {
        let mut records = RecordBatch::with_capacity(1024);
        let mut last_flush = Instant::now();
        let mut backoff = self.cfg.flush_interval;
        loop {
            if self.control.shutdown().requested().is_some() {
                return self.shut_down(consumer, false);
            }
            if self.recompute_done() {
                return self.shut_down(consumer, true);
            }
            let stray = consumer.poll_batch(&mut records, Duration::from_millis(100));
            while let Some(ev) = consumer.take_rebalance() {
                self.rebalance(ev)?;
            }
            if let Some(Ok(m)) = stray {
                self.record(m.partition(), m.offset(), m.payload());
            }
            for rec in records.iter() {
                match rec.error() {
                    None => self.record(rec.partition(), rec.offset(), rec.payload()),
                    Some(e) => {
                        tracing::warn!(error = %e, partition = rec.partition(), "Kafka consumer error")
                    }
                }
            }
            records.clear();
            if last_flush.elapsed() >= backoff {
                last_flush = Instant::now();
                match self.flush(consumer, false) {
                    Ok(()) => {
                        backoff = self.cfg.flush_interval;
                        self.write_error = None;
                    }
                    Err(SinkError::Retryable(e)) => {
                        self.counters.write_retries += 1;
                        self.write_error = Some(e.to_string());
                        backoff =
                            (backoff * 2).clamp(Duration::from_millis(500), Duration::from_secs(5));
                        tracing::warn!(error = %e, retry_in = ?backoff, "write failed; offsets stay put");
                    }
                    Err(e) => return Err(RollupError::Sink(e)),
                }
            }
            self.report_status();
        }
    }

    fn report_status(&self) {
        *self.cfg.status.lock().unwrap() = RollupStatus {
            counters: self.counters,
            owned: self.parts.len(),
            windows_held: self.parts.values().map(|p| p.fleet.held()).sum(),
            write_error: self.write_error.clone(),
        };
    }

    fn recompute_done(&self) -> bool {
        let Some(ends) = &self.ends else {
            return false;
        };
        !self.parts.is_empty()
            && ends.iter().all(|(p, &(start, end))| {
                start >= end
                    || self.parts.get(p).is_some_and(|part| {
                        part.fleet
                            .restore_point()
                            .is_some_and(|(_, next, _)| next >= end)
                    })
            })
    }

    fn rebalance(&mut self, ev: logpipe_consumer::RebalanceEvent) -> Result<(), RollupError> {
        use logpipe_consumer::RebalanceEvent::*;
        match ev {
            Assigned(ps) => {
                tracing::info!(partitions = ?ps, "partitions assigned");
                let mut loaded = self.loaded.lock().unwrap();
                for p in ps {
                    let pt = loaded.remove(&p);
                    let horizon = pt
                        .as_ref()
                        .and_then(|pt| pt.max_event_ms.iter().find(|(k, _)| k == core::HORIZON_KEY))
                        .map_or(i64::MIN, |&(_, h)| h);
                    self.parts.insert(
                        p,
                        Part {
                            fleet: PartitionFleet::new(horizon),
                            restored_next: pt.as_ref().map_or(0, |pt| pt.next_offset),
                            written: None,
                        },
                    );
                }
            }
            Revoked(ps) => {
                tracing::info!(partitions = ?ps, "partitions revoked");
                for p in ps {
                    self.parts.remove(&p);
                }
                self.pending.clear();
            }
            Lost => {
                tracing::warn!("partition assignment lost");
                self.parts.clear();
                self.pending.clear();
            }
            AssignFailed(e) => return Err(RollupError::Topic(e)),
        }
        Ok(())
    }

    fn record(&mut self, partition: i32, offset: i64, payload: Option<&[u8]>) {
        let Some(part) = self.parts.get_mut(&partition) else {
            return;
        };
        self.counters.records += 1;
        let w = match fleet::decode(payload.unwrap_or_default()) {
            Ok(w) => w,
            Err(e) => {
                self.counters.rejected += 1;
                tracing::warn!(partition, offset, error = %e, "fleet record skipped");
                return;
            }
        };
        let start = w.start_ms;
        let (host, source, window_ms) = (w.host.clone(), w.source.clone(), w.window_ms);
        match part.fleet.record(w, offset, Instant::now()) {
            Taken::Added => {}
            Taken::OtherLength => {
                self.counters.rejected += 1;
                tracing::warn!(partition, offset, %host, %source, window_ms, window_start_ms = start, "fleet record skipped: its window length differs from the other sources' of this window (analyzers must share --window)");
            }
            Taken::Replaced => self.counters.replaced += 1,
            Taken::TooOld if offset < part.restored_next => self.counters.replayed += 1,
            Taken::TooOld => {
                self.counters.too_old += 1;
                if start > self.warned_too_old {
                    self.warned_too_old = start;
                    tracing::warn!(partition, offset, window_start_ms = start, horizon_ms = part.fleet.horizon_ms(), "a window older than --keep arrived after it was written and forgotten; its fleet points are not updated (recompute with `logpipe rollup --recompute`)");
                }
            }
        }
    }

    /// Writes due and changed fleet points with the restore points they
    /// allow; commits the next offsets once the sink accepted them.
    fn flush(&mut self, consumer: &GroupConsumer, all: bool) -> Result<(), SinkError> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut state = BTreeMap::new();
        for (&p, part) in self.parts.iter_mut() {
            self.counters.windows_graced += part.fleet.drain(&self.cfg.spec, now, all, &mut out);
            if self.ends.is_some() {
                continue;
            }
            if let Some(rp) = part.fleet.restore_point() {
                if part.written != Some(rp) {
                    state.insert(
                        p,
                        RestorePoint {
                            offset: rp.0,
                            next_offset: rp.1,
                            max_event_ms: vec![(core::HORIZON_KEY.to_string(), rp.2)],
                            ..RestorePoint::default()
                        },
                    );
                }
            }
        }
        for f in out {
            self.pending.insert((f.start_ms, f.group.clone()), f);
        }
        let idle = self.last_counters.elapsed() >= self.cfg.flush_interval * 5;
        if self.pending.is_empty() && state.is_empty() && !idle {
            return Ok(());
        }
        self.last_counters = Instant::now();
        let mut lp = Vec::with_capacity(self.pending.len() * 300);
        for f in self.pending.values() {
            encode_point(&mut lp, f, self.cfg.spec.top_k);
        }
        let mut counters = self.counters;
        counters.points_written += self.pending.len() as u64;
        counters.encode(&mut lp, &self.cfg.id);
        self.sink.write(
            &lp,
            &StateBatch {
                scope: &self.scope,
                analyzer: &self.cfg.id,
                points: &state,
            },
        )?;
        self.counters.points_written = counters.points_written;
        self.pending.clear();
        let mut commits = Vec::new();
        for (p, rp) in &state {
            if let Some(part) = self.parts.get_mut(p) {
                part.written = Some((rp.offset, rp.next_offset, rp.max_event_ms[0].1));
            }
            commits.push((*p, rp.next_offset));
        }
        if !commits.is_empty() {
            if let Err(e) = consumer.commit(&commits, false) {
                tracing::debug!(error = %e, "offset commit failed; the next one retries");
            }
        }
        Ok(())
    }

    fn shut_down(
        mut self,
        consumer: &GroupConsumer,
        all: bool,
    ) -> Result<RollupCounters, RollupError> {
        let mut tries = 0;
        loop {
            match self.flush(consumer, all) {
                Ok(()) => break,
                Err(SinkError::Retryable(e)) if tries < 10 => {
                    tries += 1;
                    self.counters.write_retries += 1;
                    tracing::warn!(error = %e, "final write failed, retrying");
                    std::thread::sleep(Duration::from_millis(200 * tries));
                }
                Err(e) => return Err(RollupError::Sink(e)),
            }
        }
        tracing::info!(rollup = %self.cfg.id, counters = ?self.counters, "rollup stopped");
        Ok(self.counters)
    }
}

/// The `access_fleet` point of a group's window (the `access_log` fields
/// plus `sources`, tags `group` and `scope`) and its `access_fleet_top`
/// rows.
pub fn encode_point(out: &mut Vec<u8>, f: &FleetPoint, top_k: u16) {
    let tags: [(&str, &[u8]); 2] = [
        ("group", f.group.name.as_bytes()),
        ("scope", f.group.scope.as_bytes()),
    ];
    line_protocol::encode_metrics(
        out,
        ACCESS_FLEET,
        &tags,
        f.window_ms,
        f.start_ms,
        &f.metrics(),
        &[("sources", f.sources)],
    );
    if let Some(top) = f.agg.top(top_k) {
        line_protocol::encode_top_lists(out, ACCESS_FLEET_TOP, &tags, f.start_ms, &top);
    }
}
