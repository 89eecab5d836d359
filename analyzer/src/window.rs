//! Event-time tumbling windows of one partition — pure: no I/O, no clock.
//!
//! Each *source* in the partition has its own watermark: `max event time seen
//! from that source − lateness`. Every window of the source whose end is at or
//! below it is closed and final. The boundary below which a source's windows
//! are final, its *closed-through time* `C`, is derived from its max event time
//! `M` alone (`C = floor((M − lateness) / window) · window`), and a line is late
//! when its window ends at or before the `C` of the source's earlier lines.
//! Lateness therefore depends only on the order of records, never on when a
//! flush timer fired — which is what makes a live run, a restarted run and a
//! replay produce the same windows.
//!
//! Why per source and not per partition: several sources share a partition,
//! and their lines interleave in whatever order producers sent them. A backfill
//! that publishes one file after another (or a host whose clock is behind)
//! would otherwise push the shared watermark past the other sources' windows
//! and turn their lines late. The cost: an idle source's last windows stay
//! open (their partial values are written, so dashboards are right) and hold
//! the partition's restore offset back until the source sends again or the
//! input ends (see docs/design.md, "Windows").
//!
//! **Restore points.** [`PartitionWindows::restore_point`] says where a new
//! owner of the partition must resume: the smallest offset of any record in an
//! open window (`offset`), the offset after the last record seen
//! (`next_offset`), and every source's `M`. [`PartitionWindows::restored`]
//! rebuilds the state from it: records before `next_offset` whose window is
//! already closed were counted in a final point and are *replayed* (skipped,
//! not late); records of open windows are aggregated again from scratch.
//! Because `M` only grows and is restored exactly, every later decision
//! (closing, lateness) is the one an uninterrupted run makes.

use std::collections::BTreeMap;
use std::sync::Arc;

use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use crate::anomaly::{Anomaly, AnomalySpec, Baseline};
use crate::applog::{AppAgg, AppHit, AppReport, TemplateHistory};
use crate::parse::{AccessLine, Level};
use crate::top::{TopLists, TopSet, TopSpec};

pub use crate::parse::sources::SourceId;

/// Relative accuracy of the latency quantiles (DDSketch `alpha`): a reported
/// p50/p90/p99 is within ±1 % of the nearest-rank quantile's value (see
/// [`nearest_rank`]).
pub const LATENCY_RELATIVE_ERROR: f64 = 0.01;

/// Distinct clients per window: exact up to [`crate::distinct::EXACT_LIMIT`],
/// never more than the window's requests.
type Clients = crate::distinct::Distinct;

/// Aggregates of one open window (mergeable sketches included).
#[derive(Clone, Default)]
pub struct Agg {
    pub count: u64,
    pub traffic: u64,
    /// Requests with status ≥ the error threshold.
    pub errors: u64,
    /// Requests per status class, `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub status: [u64; 5],
    pub(crate) clients: Clients,
    /// Request times in seconds; allocated on the first line that has one.
    pub(crate) latency: Option<Box<DDSketch>>,
    /// Top-K summaries; allocated on the first line when top-K is on.
    pub(crate) top: Option<Box<TopSet>>,
    /// Application records' counts and templates (application sources).
    app: Option<Box<AppAgg>>,
}

impl std::fmt::Debug for Agg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agg")
            .field("count", &self.count)
            .field("traffic", &self.traffic)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Equal when what is written of them is: the summary and every ranked key.
impl PartialEq for Agg {
    fn eq(&self, o: &Agg) -> bool {
        self.summary() == o.summary() && self.top(u16::MAX) == o.top(u16::MAX)
    }
}

impl Agg {
    fn add(&mut self, hit: &Hit<'_>, spec: &WindowSpec) {
        self.count += 1;
        if let Some(a) = &hit.app {
            // An application record: `count` is records, `errors` those at
            // or above the error level.
            if a.level >= spec.error_level && a.level != Level::Other {
                self.errors += 1;
            }
            self.app.get_or_insert_default().add(a, &spec.top);
            return;
        }
        self.traffic += hit.body_bytes;
        if spec.top.enabled() {
            self.top
                .get_or_insert_with(|| Box::new(TopSet::new(&spec.top)))
                .add(
                    &spec.top,
                    hit.client,
                    hit.path,
                    hit.user_agent,
                    hit.referer,
                    hit.status,
                );
        }
        if hit.status >= spec.error_status {
            self.errors += 1;
        }
        if (100..600).contains(&hit.status) {
            self.status[usize::from(hit.status / 100 - 1)] += 1;
        }
        self.clients.insert(hit.client);
        if let Some(t) = hit.request_time_s {
            if t.is_finite() && t >= 0.0 {
                self.latency
                    .get_or_insert_with(|| Box::new(latency_sketch()))
                    .add(t);
            }
        }
    }

    /// Adds another window's requests (an access log's; the fleet roll-up):
    /// counts add up, clients, request times and top-K summaries merge.
    pub fn merge(&mut self, o: &Agg) {
        self.count += o.count;
        self.traffic += o.traffic;
        self.errors += o.errors;
        for (a, b) in self.status.iter_mut().zip(o.status) {
            *a += b;
        }
        self.clients.merge(&o.clients);
        if let Some(theirs) = &o.latency {
            match &mut self.latency {
                // Both from the same configuration (`latency_sketch`, or
                // both read back from records): merging cannot fail.
                Some(mine) => {
                    if mine.merge(theirs).is_err() {
                        tracing::warn!("latency sketches of different accuracy; one not merged");
                    }
                }
                None => self.latency = Some(theirs.clone()),
            }
        }
        if let Some(theirs) = &o.top {
            match &mut self.top {
                Some(mine) => mine.merge(theirs),
                None => self.top = Some(theirs.clone()),
            }
        }
    }

    /// Whether this is an application log's window.
    pub fn is_app(&self) -> bool {
        self.app.is_some()
    }

    /// The values written for this window.
    pub fn summary(&self) -> Metrics {
        let latency = self.latency.as_ref().map(|s| Latency {
            p50: nearest_rank(s, 500),
            p90: nearest_rank(s, 900),
            p99: nearest_rank(s, 990),
            max: s.max().unwrap_or(0.0),
        });
        Metrics {
            count: self.count,
            traffic: self.traffic,
            errors: self.errors,
            status: self.status,
            unique_clients: self.clients.count(self.count),
            latency,
        }
    }

    /// The window's ranked keys, `None` when top-K is off.
    pub fn top(&self, k: u16) -> Option<Arc<TopLists>> {
        self.top.as_ref().map(|t| t.report(usize::from(k)))
    }

    /// The window's application records, `None` for an access log.
    pub fn app(&self, k: u16) -> Option<AppReport> {
        self.app.as_ref().map(|a| a.report(usize::from(k)))
    }
}

/// An empty sketch of request times: ±1 %, up to 2048 bins (a range of
/// about e^41 between the smallest and the largest time), times below 1 µs
/// counted as 0.
pub fn latency_sketch() -> DDSketch {
    DDSketch::new(SketchConfig::new(LATENCY_RELATIVE_ERROR, 2048, 1e-6))
}

/// The nearest-rank quantile `per_mille`/1000 of the sketch: the value of
/// the `⌈q·n⌉`-th smallest request time (1-based), within the sketch's
/// relative error of that value.
///
/// DDSketch's own `quantile(q)` answers for rank `⌊q·(n−1)⌋` (0-based),
/// which is one rank below nearest-rank for most `n`: across a gap in the
/// distribution that is a different value altogether (issue 18 reported p99 5.755 where the
/// 99th-percentile request took 6.272 s). The rank is computed here in
/// integers and handed to the sketch as a `q` that floors to it.
pub fn nearest_rank(s: &DDSketch, per_mille: u64) -> f64 {
    let n = s.count() as u64;
    if n == 0 {
        return 0.0;
    }
    // 0-based index of the ⌈q·n⌉-th value.
    let k = (per_mille * n).div_ceil(1000).clamp(1, n) - 1;
    if k == n - 1 {
        return s.max().unwrap_or(0.0);
    }
    if k == 0 {
        return s.min().unwrap_or(0.0);
    }
    // ⌊q'·(n−1)⌋ = k with half a rank to spare for rounding.
    let q = (k as f64 + 0.5) / (n - 1) as f64;
    s.quantile(q).ok().flatten().unwrap_or(0.0)
}

/// Request-time quantiles of a window, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// A window's values as written to the sink.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Metrics {
    pub count: u64,
    pub traffic: u64,
    pub errors: u64,
    pub status: [u64; 5],
    pub unique_clients: u64,
    /// `None` when no line of the window had a request time.
    pub latency: Option<Latency>,
}

/// One request as the window core needs it.
#[derive(Debug, Clone, Copy)]
pub struct Hit<'a> {
    pub source: SourceId,
    pub time_ms: i64,
    pub status: u16,
    pub body_bytes: u64,
    /// Client address bytes, for `unique_clients` and top-K.
    pub client: &'a [u8],
    /// Request target, user agent and referrer as logged, for top-K.
    pub path: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    pub referer: Option<&'a [u8]>,
    /// `$request_time` in seconds, when the format has it.
    pub request_time_s: Option<f64>,
    /// Kafka offset of the record, for the restore point (of its first
    /// piece, for a line joined from pieces).
    pub offset: i64,
    /// Kafka offset of the record that made the line whole (`offset` but
    /// for a line joined from pieces, or an application record completed
    /// by the next one): what an owner must have read to have counted it.
    pub end_offset: i64,
    /// An application record (the access fields above are then empty).
    pub app: Option<AppHit<'a>>,
}

impl<'a> Hit<'a> {
    /// The hit of a parsed line of `source` at Kafka `offset`.
    pub fn from_line(source: SourceId, l: &AccessLine<'a>, offset: i64) -> Self {
        Hit {
            source,
            time_ms: l.time_ms,
            status: l.status,
            body_bytes: l.body_bytes,
            client: l.client,
            path: l.path,
            user_agent: l.user_agent,
            referer: l.referer,
            request_time_s: l.request_time_s,
            offset,
            end_offset: offset,
            app: None,
        }
    }

    /// The hit of an application record of `source` at `time_ms` whose
    /// first line is at `offset`, completed at `end_offset`.
    pub fn from_app(
        source: SourceId,
        time_ms: i64,
        app: AppHit<'a>,
        offset: i64,
        end_offset: i64,
    ) -> Self {
        Hit {
            source,
            time_ms,
            status: 0,
            body_bytes: 0,
            client: b"",
            path: None,
            user_agent: None,
            referer: None,
            request_time_s: None,
            offset,
            end_offset,
            app: Some(app),
        }
    }
}

/// A window's value as written to the sink.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowValue {
    pub source: SourceId,
    pub start_ms: i64,
    pub metrics: Metrics,
    /// Ranked keys per dimension (`None` when top-K is off).
    pub top: Option<Arc<TopLists>>,
    /// An application log's counts and templates (`None` for access logs).
    pub app: Option<Arc<AppReport>>,
    /// What the source's baseline flags in this window (final windows only).
    pub anomalies: Vec<Anomaly>,
    /// `true` when the window is closed and this is its final value.
    pub is_final: bool,
    /// A final access window's aggregates, sketches included: what the
    /// fleet record carries (see [`crate::fleet`]).
    pub sketch: Option<Arc<Agg>>,
}

#[derive(Debug, Clone)]
struct Open {
    agg: Agg,
    /// Smallest record offset in the window: the restore point must not pass it.
    min_offset: i64,
    /// Changed since it was last handed out by [`PartitionWindows::drain`].
    dirty: bool,
}

/// What [`PartitionWindows::record`] did with a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Added,
    /// Its window was already closed; counted, not added.
    Late,
    /// Re-read after a restore and its window is already final: skipped.
    Replayed,
}

/// Window parameters, validated.
#[derive(Debug, Clone, Copy)]
pub struct WindowSpec {
    pub window_ms: i64,
    pub lateness_ms: i64,
    pub error_status: u16,
    /// Application records at or above this level are errors.
    pub error_level: Level,
    pub top: TopSpec,
    /// `None`: no anomaly scoring.
    pub anomaly: Option<AnomalySpec>,
}

/// Where a new owner of a partition resumes; see the module docs.
///
/// The one restore-point type of the analyzer. The window core names
/// sources by [`SourceId`]; a store names them by record key
/// (`RestorePoint<String>`), and [`RestorePoint::map_sources`] converts at
/// that boundary. A point on its way to a store carries only the sources
/// whose max changed since the last write (the store keeps the others) and
/// no `ahead`; a point read back carries every source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestorePoint<S = SourceId> {
    /// First offset to read: the smallest offset in an open window.
    pub offset: i64,
    /// Offset after the last record the state had seen.
    pub next_offset: i64,
    /// Max event time per source.
    pub max_event_ms: Vec<(S, i64)>,
    /// Sources whose max was stored by a writer that had read further than
    /// `next_offset` (a former owner still writing during a rebalance), with
    /// how far: their records before that in windows the max closes were
    /// counted by that writer, so they are replayed.
    pub ahead: Vec<(S, i64)>,
    /// Anomaly baselines per source ([`Baseline::encode`]), stored with the
    /// max event time whenever it changes (final windows only close then).
    pub baselines: Vec<(S, String)>,
    /// Template histories per source ([`TemplateHistory::encode`]), stored
    /// with the max event time when they changed (a store keeps the last
    /// one it was given).
    pub templates: Vec<(S, String)>,
}

impl<S> RestorePoint<S> {
    /// The same point with its sources named by `f`.
    pub fn map_sources<T>(&self, mut f: impl FnMut(&S) -> T) -> RestorePoint<T> {
        RestorePoint {
            offset: self.offset,
            next_offset: self.next_offset,
            max_event_ms: self.max_event_ms.iter().map(|(s, m)| (f(s), *m)).collect(),
            ahead: self.ahead.iter().map(|(s, n)| (f(s), *n)).collect(),
            baselines: self
                .baselines
                .iter()
                .map(|(s, b)| (f(s), b.clone()))
                .collect(),
            templates: self
                .templates
                .iter()
                .map(|(s, t)| (f(s), t.clone()))
                .collect(),
        }
    }
}

/// Open windows of one partition, ordered by (start, source) so closing pops
/// from the front.
#[derive(Debug)]
pub struct PartitionWindows {
    spec: WindowSpec,
    open: BTreeMap<(i64, SourceId), Open>,
    /// Max event time seen per source, the base of its watermark.
    max_event_ms: crate::FastMap<SourceId, i64>,
    /// Sources whose `M` changed since [`PartitionWindows::take_changed_sources`].
    changed: Vec<SourceId>,
    /// Offset after the last record seen.
    next_offset: Option<i64>,
    /// Records before this offset were seen by a previous owner.
    replay_until: i64,
    /// The smallest offset of a line held in pieces (see `crate::pieces`):
    /// the restore offset must not pass it.
    held_from: Option<i64>,
    /// The smallest first-line offset of an unfinished application record.
    records_held_from: Option<i64>,
    /// Per source, when a previous writer had seen further (see
    /// [`RestorePoint::ahead`]).
    replay_until_source: crate::FastMap<SourceId, i64>,
    /// Anomaly baselines of the sources with a final window.
    baselines: crate::FastMap<SourceId, Baseline>,
    /// Template histories of the application sources with a final window.
    histories: crate::FastMap<SourceId, TemplateHistory>,
    /// Sources whose history changed since [`PartitionWindows::take_history_text`].
    histories_changed: Vec<SourceId>,
    late: u64,
}

impl PartitionWindows {
    pub fn new(spec: WindowSpec) -> Self {
        PartitionWindows {
            spec,
            open: BTreeMap::new(),
            max_event_ms: crate::FastMap::default(),
            changed: Vec::new(),
            next_offset: None,
            replay_until: i64::MIN,
            held_from: None,
            records_held_from: None,
            replay_until_source: crate::FastMap::default(),
            baselines: crate::FastMap::default(),
            histories: crate::FastMap::default(),
            histories_changed: Vec::new(),
            late: 0,
        }
    }

    /// The state a previous owner vouched for: nothing open, every source's
    /// watermark where it was. Records from `point.offset` on must be fed
    /// again; those of already-final windows come back as [`Recorded::Replayed`].
    pub fn restored(spec: WindowSpec, point: &RestorePoint) -> Self {
        let mut w = PartitionWindows::new(spec);
        w.max_event_ms.extend(point.max_event_ms.iter().copied());
        w.replay_until = point.next_offset;
        w.replay_until_source.extend(point.ahead.iter().copied());
        for (s, text) in &point.baselines {
            match Baseline::decode(text) {
                Ok(b) => {
                    w.baselines.insert(*s, b);
                }
                // The baseline restarts empty: flags of the next windows
                // may differ from an uninterrupted run's, nothing else does.
                Err(e) => {
                    tracing::warn!(source = s, error = %e, "stored anomaly baseline unreadable; starting it again")
                }
            }
        }
        for (s, text) in &point.templates {
            match TemplateHistory::decode(text) {
                Ok(h) => {
                    w.histories.insert(*s, h);
                }
                // Every template of the next final window is reported new.
                Err(e) => {
                    tracing::warn!(source = s, error = %e, "stored template history unreadable; starting it again")
                }
            }
        }
        w
    }

    /// A source's template history as stored in a restore point, when it
    /// changed since the last call for that source.
    pub fn take_history_text(&mut self, source: SourceId) -> Option<String> {
        let i = self.histories_changed.iter().position(|&s| s == source)?;
        self.histories_changed.swap_remove(i);
        self.histories.get(&source).map(TemplateHistory::encode)
    }

    /// A source's anomaly baseline as stored in a restore point.
    pub fn baseline_text(&self, source: SourceId) -> Option<String> {
        self.baselines.get(&source).map(Baseline::encode)
    }

    /// Start of the window holding `t`.
    pub fn window_start(&self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.spec.window_ms) * self.spec.window_ms
    }

    /// Every window of `source` ending at or before this time is closed (`C`),
    /// once the source was seen.
    pub fn closed_through_ms(&self, source: SourceId) -> Option<i64> {
        let m = *self.max_event_ms.get(&source)?;
        Some(self.window_start(m.saturating_sub(self.spec.lateness_ms)))
    }

    pub fn late_count(&self) -> u64 {
        self.late
    }

    /// Notes a record that carries no hit (a malformed line, a duplicate), so
    /// the restore point can move past it.
    pub fn skip(&mut self, offset: i64) {
        self.next_offset = Some(offset + 1);
    }

    /// Sets the smallest offset of a line held in pieces (`None`: none held).
    pub fn hold_from(&mut self, offset: Option<i64>) {
        self.held_from = offset;
    }

    /// Sets the smallest first-line offset of an application record whose
    /// lines are still coming (`None`: none): a restore point never splits
    /// a record.
    pub fn hold_records_from(&mut self, offset: Option<i64>) {
        self.records_held_from = offset;
    }

    /// Whether the record at `offset` was seen by a previous owner (a
    /// restored state re-reads it).
    pub fn was_seen_before(&self, offset: i64) -> bool {
        offset < self.replay_until
    }

    pub fn record(&mut self, hit: &Hit<'_>) -> Recorded {
        self.next_offset = Some(
            self.next_offset
                .map_or(hit.end_offset + 1, |n| n.max(hit.end_offset + 1)),
        );
        let start = self.window_start(hit.time_ms);
        if let Some(c) = self.closed_through_ms(hit.source) {
            if start + self.spec.window_ms <= c {
                if hit.end_offset < self.replay_until
                    || self
                        .replay_until_source
                        .get(&hit.source)
                        .is_some_and(|&u| hit.end_offset < u)
                {
                    return Recorded::Replayed;
                }
                self.late += 1;
                return Recorded::Late;
            }
        }
        match self.max_event_ms.get_mut(&hit.source) {
            Some(m) if *m >= hit.time_ms => {}
            Some(m) => {
                *m = hit.time_ms;
                self.changed.push(hit.source);
            }
            None => {
                self.max_event_ms.insert(hit.source, hit.time_ms);
                self.changed.push(hit.source);
            }
        }
        let w = self.open.entry((start, hit.source)).or_insert(Open {
            agg: Agg::default(),
            min_offset: hit.offset,
            dirty: true,
        });
        w.agg.add(hit, &self.spec);
        w.min_offset = w.min_offset.min(hit.offset);
        w.dirty = true;
        Recorded::Added
    }

    /// Hands out the windows to write: every window the watermark has closed
    /// (final, removed from state) and, with `partials`, the open windows that
    /// changed since the last drain. With `close_all` every window is final
    /// (end of input).
    pub fn drain(&mut self, partials: bool, close_all: bool, out: &mut Vec<WindowValue>) {
        let window_ms = self.spec.window_ms;
        let closing: Vec<(i64, SourceId)> = self
            .open
            .keys()
            .filter(|&&(start, source)| {
                close_all
                    || self
                        .closed_through_ms(source)
                        .is_some_and(|c| start + window_ms <= c)
            })
            .copied()
            .collect();
        for key in closing {
            let w = self.open.remove(&key).expect("key from open");
            let metrics = w.agg.summary();
            let mut anomalies = Vec::new();
            // A window closed by the end of the input, not by the watermark,
            // is cut short by the input: neither scored nor remembered.
            let by_watermark = self
                .closed_through_ms(key.1)
                .is_some_and(|c| key.0 + window_ms <= c);
            if let (Some(a), true) = (&self.spec.anomaly, by_watermark) {
                let logger_errors = w
                    .agg
                    .app
                    .as_ref()
                    .map(|app| app.errors_per_logger(self.spec.error_level))
                    .unwrap_or_default();
                self.baselines.entry(key.1).or_default().observe(
                    a,
                    window_ms,
                    key.0,
                    &metrics,
                    &logger_errors,
                    &mut anomalies,
                );
            }
            let mut app = w.agg.app(self.spec.top.k);
            if let (Some(report), Some(agg), true) = (&mut app, &w.agg.app, by_watermark) {
                let history = self.histories.entry(key.1).or_default();
                report.new_templates = agg.new_templates(history);
                if !report.new_templates.is_empty() && !self.histories_changed.contains(&key.1) {
                    self.histories_changed.push(key.1);
                }
            }
            out.push(WindowValue {
                source: key.1,
                start_ms: key.0,
                metrics,
                top: w.agg.top(self.spec.top.k),
                app: app.map(Arc::new),
                anomalies,
                is_final: true,
                sketch: (!w.agg.is_app()).then(|| Arc::new(w.agg)),
            });
        }
        if close_all {
            // Nothing is open any more: later records of these sources are late.
            for (&s, m) in self.max_event_ms.iter_mut() {
                let end = m.saturating_add(self.spec.lateness_ms + window_ms);
                if *m != end {
                    *m = end;
                    self.changed.push(s);
                }
            }
        }
        if partials {
            for (&(start, source), w) in self.open.iter_mut().filter(|(_, w)| w.dirty) {
                w.dirty = false;
                out.push(WindowValue {
                    source,
                    start_ms: start,
                    metrics: w.agg.summary(),
                    top: w.agg.top(self.spec.top.k),
                    app: w.agg.app(self.spec.top.k).map(Arc::new),
                    anomalies: Vec::new(),
                    is_final: false,
                    sketch: None,
                });
            }
        }
    }

    /// The offset to resume from so that every open window can be rebuilt:
    /// the smallest offset in an open window, else the next offset.
    pub fn restore_offset(&self) -> Option<i64> {
        let open = self
            .open
            .values()
            .map(|w| w.min_offset)
            .min()
            .or(self.next_offset);
        [open, self.held_from, self.records_held_from]
            .into_iter()
            .flatten()
            .min()
    }

    /// The restore point of the current state (`None` before any record).
    /// Call right after [`PartitionWindows::drain`] so the windows it
    /// vouches for as closed are in the same write.
    pub fn restore_point(&self) -> Option<RestorePoint> {
        let next_offset = self.next_offset?;
        Some(RestorePoint {
            offset: self.restore_offset().unwrap_or(next_offset),
            next_offset,
            max_event_ms: self.max_event_ms.iter().map(|(&s, &m)| (s, m)).collect(),
            ahead: Vec::new(),
            baselines: Vec::new(),
            templates: Vec::new(),
        })
    }

    /// Sources whose max event time changed since the last call, with it.
    pub fn take_changed_sources(&mut self, out: &mut Vec<(SourceId, i64)>) {
        self.changed.sort_unstable();
        self.changed.dedup();
        for s in self.changed.drain(..) {
            out.push((s, self.max_event_ms[&s]));
        }
    }

    /// The largest event time seen over all sources.
    pub fn max_event_ms(&self) -> Option<i64> {
        self.max_event_ms.values().copied().max()
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantiles_are_nearest_rank_within_the_relative_error() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        // Distributions with gaps (two far-apart clusters, the split
        // anywhere), heavy tails (Pareto-like), ties, and tiny counts.
        let dist = prop_oneof![
            (1usize..3000, 0.0f64..1.0, 1.0f64..100.0).prop_map(|(n, split, gap)| {
                let low = (n as f64 * split) as usize;
                (0..n)
                    .map(|i| {
                        if i < low {
                            0.01 + i as f64 * 1e-5
                        } else {
                            gap + i as f64 * 1e-3
                        }
                    })
                    .collect::<Vec<f64>>()
            }),
            prop::collection::vec(
                (0.0f64..1.0).prop_map(|u| 0.001 / (1.0 - u).powf(1.5)),
                1..3000
            ),
            prop::collection::vec(prop::sample::select(vec![0.005, 0.1, 6.272, 30.0]), 1..500),
        ];
        let mut runner = TestRunner::new(Config::with_cases(500));
        runner
            .run(&dist, |mut v| {
                let mut s = super::latency_sketch();
                for &t in &v {
                    s.add(t);
                }
                v.sort_by(f64::total_cmp);
                for pm in [500u64, 900, 990] {
                    let n = v.len() as u64;
                    let truth = v[((pm * n).div_ceil(1000) - 1) as usize];
                    let got = super::nearest_rank(&s, pm);
                    prop_assert!(
                        (got - truth).abs()
                            <= truth * super::LATENCY_RELATIVE_ERROR * 1.0001 + 1e-9,
                        "q{pm}/1000 of {n}: {got} vs nearest-rank {truth}"
                    );
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn the_issue_case_a_gap_at_the_99th_rank() {
        // 150 values, the slow ones last: nearest-rank p99 is the 149th
        // (⌈148.5⌉); DDSketch's own rank ⌊0.99·149⌋ is the 148th, one below,
        // which across the gap is a fast request instead of a slow one.
        for (fast, want) in [(149, 0.05), (148, 6.272)] {
            let mut s = super::latency_sketch();
            for i in 0..150 {
                s.add(if i < fast { 0.05 } else { 6.272 });
            }
            let got = super::nearest_rank(&s, 990);
            assert!(
                (got - want).abs() <= want * 0.01,
                "{fast} fast: p99 {got}, want {want}"
            );
        }
    }

    use super::*;

    const SPEC: WindowSpec = WindowSpec {
        window_ms: 10_000,
        lateness_ms: 30_000,
        error_status: 400,
        error_level: crate::parse::Level::Error,
        top: crate::top::TopSpec::DEFAULT,
        anomaly: Some(crate::anomaly::AnomalySpec::DEFAULT),
    };

    fn hit(source: SourceId, time_ms: i64, status: u16, offset: i64) -> Hit<'static> {
        Hit {
            source,
            time_ms,
            status,
            body_bytes: 100,
            client: b"10.0.0.1",
            path: None,
            user_agent: None,
            referer: None,
            request_time_s: None,
            offset,
            end_offset: offset,
            app: None,
        }
    }

    /// An unfinished application record holds the restore point at its
    /// first line even when no open window does (its source's windows
    /// before it are closed, and it is not in a window yet).
    #[test]
    fn an_unfinished_record_holds_the_restore_point() {
        let mut w = PartitionWindows::new(SPEC);
        w.record(&hit(0, 1_000, 200, 0));
        w.record(&hit(0, 50_000, 200, 1));
        w.skip(2);
        w.skip(3);
        let mut out = vec![];
        w.drain(false, false, &mut out);
        assert_eq!(w.restore_point().unwrap().offset, 1, "the open window");
        // A record opened at 2 and continued at 3, whose source's last
        // window closed: nothing but the record holds the point.
        let mut w = PartitionWindows::new(SPEC);
        w.record(&hit(0, 1_000, 200, 0));
        w.skip(1);
        w.drain(false, true, &mut out);
        w.skip(2);
        w.skip(3);
        assert_eq!(w.restore_point().unwrap().offset, 4);
        w.hold_records_from(Some(2));
        assert_eq!(w.restore_point().unwrap().offset, 2);
        w.hold_records_from(None);
        assert_eq!(w.restore_point().unwrap().offset, 4);
    }

    /// A template is new in the first final window of its source that has
    /// it, also for a state restored from the stored history.
    #[test]
    fn templates_are_new_once_per_source_and_the_history_is_restored() {
        let app = |w: &mut PartitionWindows, t_ms: i64, template: &str, offset: i64| {
            let hit = AppHit {
                level: Level::Info,
                logger: b"l",
                template: template.as_bytes(),
                lines: 1,
            };
            w.record(&Hit::from_app(0, t_ms, hit, offset, offset));
        };
        let news = |out: &[WindowValue]| -> Vec<(i64, Vec<String>)> {
            out.iter()
                .map(|v| {
                    let n = v.app.as_ref().unwrap().new_templates.iter();
                    (v.start_ms, n.map(|t| t.template.clone()).collect())
                })
                .collect()
        };
        let mut w = PartitionWindows::new(SPEC);
        app(&mut w, 1_000, "a <num>", 0);
        app(&mut w, 2_000, "b", 1);
        app(&mut w, 11_000, "a <num>", 2);
        app(&mut w, 12_000, "c", 3);
        app(&mut w, 55_000, "c", 4);
        let mut out = vec![];
        w.drain(false, false, &mut out);
        assert_eq!(
            news(&out),
            vec![
                (0, vec!["a <num>".into(), "b".into()]),
                (10_000, vec!["c".into()])
            ]
        );
        let text = w.take_history_text(0).expect("changed");
        assert_eq!(w.take_history_text(0), None, "taken");
        let point = RestorePoint {
            offset: 4,
            next_offset: 5,
            max_event_ms: vec![(0, 55_000)],
            templates: vec![(0, text)],
            ..RestorePoint::default()
        };
        let mut r = PartitionWindows::restored(SPEC, &point);
        app(&mut r, 55_000, "c", 4);
        app(&mut r, 56_000, "d", 5);
        app(&mut r, 95_000, "e", 6);
        out.clear();
        r.drain(false, false, &mut out);
        assert_eq!(news(&out), vec![(50_000, vec!["d".into()])]);
    }

    fn finals(w: &mut PartitionWindows) -> Vec<WindowValue> {
        let mut out = vec![];
        w.drain(false, false, &mut out);
        out
    }

    #[test]
    fn windows_close_when_the_watermark_passes_their_end() {
        let mut w = PartitionWindows::new(SPEC);
        w.record(&hit(0, 1_000, 200, 0));
        w.record(&hit(0, 9_999, 404, 1));
        w.record(&hit(1, 5_000, 503, 2));
        assert!(finals(&mut w).is_empty(), "watermark -20s closes nothing");
        // Source 0: M = 40s → watermark 10s → its [0,10s) closes; source 1's stays open.
        w.record(&hit(0, 40_000, 200, 3));
        let out = finals(&mut w);
        assert_eq!(out.len(), 1);
        assert!(out[0].is_final && out[0].start_ms == 0 && out[0].source == 0);
        assert_eq!(
            out[0].metrics,
            Metrics {
                count: 2,
                traffic: 200,
                errors: 1,
                status: [0, 1, 0, 1, 0],
                unique_clients: 1,
                latency: None,
            }
        );
        assert_eq!(
            w.restore_offset(),
            Some(2),
            "source 1's open window starts at offset 2"
        );
    }

    #[test]
    fn late_lines_are_counted_not_added_and_do_not_move_the_watermark() {
        let mut w = PartitionWindows::new(SPEC);
        w.record(&hit(0, 45_000, 200, 0)); // C = 10s
        assert_eq!(w.record(&hit(0, 9_000, 200, 1)), Recorded::Late);
        assert_eq!(
            w.record(&hit(0, 10_000, 200, 2)),
            Recorded::Added,
            "[10s,20s) still open"
        );
        assert_eq!(w.late_count(), 1);
        assert_eq!(w.closed_through_ms(0), Some(10_000));
    }

    #[test]
    fn records_a_writer_ahead_already_counted_are_replayed_not_late() {
        // The partition's point says next_offset 2, but source 0's max (45s,
        // which closes [0,10s)) was stored by a former owner that had read to
        // offset 4. Its offsets 2 and 3 in [0,10s) were in that owner's final
        // point; offset 4 on is new and late for real.
        let point = RestorePoint {
            offset: 1,
            next_offset: 2,
            max_event_ms: vec![(0, 45_000), (1, 45_000)],
            ahead: vec![(0, 4)],
            baselines: vec![],
            templates: vec![],
        };
        let mut w = PartitionWindows::restored(SPEC, &point);
        assert_eq!(w.record(&hit(0, 9_000, 200, 2)), Recorded::Replayed);
        assert_eq!(w.record(&hit(0, 9_000, 200, 3)), Recorded::Replayed);
        assert_eq!(
            w.record(&hit(1, 9_000, 200, 3)),
            Recorded::Late,
            "source 1 was not ahead"
        );
        assert_eq!(w.record(&hit(0, 9_000, 200, 4)), Recorded::Late);
        assert_eq!(w.late_count(), 2);
    }

    #[test]
    fn each_source_has_its_own_watermark() {
        // Source 0 was backfilled first and reached 45s; source 1 starts at 0s
        // in the same partition and must not be late.
        let mut w = PartitionWindows::new(SPEC);
        w.record(&hit(0, 45_000, 200, 0));
        assert_eq!(w.record(&hit(1, 1_000, 200, 1)), Recorded::Added);
        assert!(finals(&mut w).is_empty(), "source 1's watermark is at -29s");
        w.record(&hit(1, 41_000, 200, 2));
        let out = finals(&mut w);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].source, out[0].start_ms), (1, 0));
    }

    #[test]
    fn partials_are_handed_out_only_when_changed() {
        let mut w = PartitionWindows::new(SPEC);
        w.record(&hit(0, 1_000, 200, 0));
        let mut out = vec![];
        w.drain(true, false, &mut out);
        assert_eq!(out.len(), 1);
        assert!(!out[0].is_final);
        out.clear();
        w.drain(true, false, &mut out);
        assert!(out.is_empty());
        w.record(&hit(0, 2_000, 500, 1));
        w.drain(true, false, &mut out);
        assert_eq!(out[0].metrics.count, 2);
    }

    #[test]
    fn close_all_finalises_everything_and_restore_moves_past_malformed() {
        let mut w = PartitionWindows::new(SPEC);
        w.record(&hit(0, 1_000, 200, 5));
        w.skip(6);
        assert_eq!(w.restore_offset(), Some(5));
        let mut out = vec![];
        w.drain(true, true, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].is_final);
        assert_eq!(w.restore_offset(), Some(7));
        assert_eq!(w.open_windows(), 0);
        assert_eq!(
            w.record(&hit(0, 9_000, 200, 7)),
            Recorded::Late,
            "a closed window stays closed"
        );
    }

    #[test]
    fn negative_times_fall_in_the_right_window() {
        let w = PartitionWindows::new(SPEC);
        assert_eq!(w.window_start(-1), -10_000);
    }

    #[test]
    fn unique_clients_and_latency_quantiles() {
        let mut w = PartitionWindows::new(SPEC);
        let clients: Vec<String> = (0..50).map(|i| format!("2001:db8::{i:x}")).collect();
        for i in 0..1000i64 {
            let mut h = hit(0, 1_000 + i, 200, i);
            h.client = clients[(i % 50) as usize].as_bytes();
            h.request_time_s = Some((i + 1) as f64 / 1000.0); // 1 ms … 1 s
            w.record(&h);
        }
        let mut out = vec![];
        w.drain(true, true, &mut out);
        let m = out[0].metrics;
        assert_eq!(m.unique_clients, 50, "small sets are counted exactly");
        let l = m.latency.expect("request times were present");
        let close =
            |got: f64, want: f64| (got - want).abs() <= want * LATENCY_RELATIVE_ERROR * 1.01;
        assert!(close(l.p50, 0.5), "p50 {}", l.p50);
        assert!(close(l.p90, 0.9), "p90 {}", l.p90);
        assert!(close(l.p99, 0.99), "p99 {}", l.p99);
        assert_eq!(l.max, 1.0);
    }

    /// The restore contract: cut a run anywhere, restore from the restore
    /// point the last flush recorded, feed the records from its offset again —
    /// the final windows equal those of the uninterrupted run, and none is
    /// written final twice with a different value.
    #[test]
    fn a_run_restored_at_any_flush_equals_the_uninterrupted_run() {
        // Three sources interleaved, out of order by up to 20 s, some late.
        let mut rng = 7u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let records: Vec<Hit<'static>> = (0..3000i64)
            .map(|i| {
                let source = (next() % 3) as SourceId;
                let jitter = (next() % 20_000) as i64;
                let late = if next() % 97 == 0 { 60_000 } else { 0 };
                hit(
                    source,
                    i * 100 - jitter - late,
                    [200, 404, 500][(next() % 3) as usize],
                    i,
                )
            })
            .collect();
        let run = |cut_every: usize, restore_at_flush: bool| {
            let mut finals: BTreeMap<(SourceId, i64), Metrics> = BTreeMap::new();
            let mut w = PartitionWindows::new(SPEC);
            let mut i = 0usize;
            let mut flushes = 0usize;
            let mut high = 0usize;
            while i < records.len() {
                w.record(&records[i]);
                i += 1;
                if i.is_multiple_of(50) && i > high {
                    high = i;
                    let mut out = vec![];
                    w.drain(false, false, &mut out);
                    for v in out {
                        let prev = finals.insert((v.source, v.start_ms), v.metrics);
                        assert!(
                            prev.is_none_or(|p| p == v.metrics),
                            "final rewritten differently"
                        );
                    }
                    let saved = w.restore_point();
                    flushes += 1;
                    if restore_at_flush && flushes.is_multiple_of(cut_every) {
                        // Crash some records later, restore from the saved point.
                        let p = saved.unwrap();
                        w = PartitionWindows::restored(SPEC, &p);
                        i = p.offset as usize;
                    }
                }
            }
            let mut out = vec![];
            w.drain(false, true, &mut out);
            for v in out {
                finals.insert((v.source, v.start_ms), v.metrics);
            }
            finals
        };
        let straight = run(1, false);
        assert!(straight.len() > 50);
        for cut in [1, 3, 7] {
            assert_eq!(run(cut, true), straight, "restored every {cut} flushes");
        }
    }
}
