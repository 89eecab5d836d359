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

use std::collections::{BTreeMap, HashMap};

/// Index of a source (host, source name) in the analyzer's source table.
pub type SourceId = u32;

/// Aggregates of one window of one source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metrics {
    pub count: u64,
    pub traffic: u64,
    /// Requests with status ≥ the error threshold.
    pub errors: u64,
    /// Requests per status class, `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub status: [u64; 5],
}

impl Metrics {
    fn add(&mut self, status: u16, bytes: u64, error_status: u16) {
        self.count += 1;
        self.traffic += bytes;
        if status >= error_status {
            self.errors += 1;
        }
        if (100..600).contains(&status) {
            self.status[usize::from(status / 100 - 1)] += 1;
        }
    }
}

/// One request as the window core needs it.
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    pub source: SourceId,
    pub time_ms: i64,
    pub status: u16,
    pub body_bytes: u64,
    /// Kafka offset of the record, for the restore point.
    pub offset: i64,
}

/// A window's value as written to the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowValue {
    pub source: SourceId,
    pub start_ms: i64,
    pub metrics: Metrics,
    /// `true` when the window is closed and this is its final value.
    pub is_final: bool,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    metrics: Metrics,
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
}

/// Window parameters, validated.
#[derive(Debug, Clone, Copy)]
pub struct WindowSpec {
    pub window_ms: i64,
    pub lateness_ms: i64,
    pub error_status: u16,
}

/// Open windows of one partition, ordered by (start, source) so closing pops
/// from the front.
#[derive(Debug)]
pub struct PartitionWindows {
    spec: WindowSpec,
    open: BTreeMap<(i64, SourceId), Open>,
    /// Max event time seen per source, the base of its watermark.
    max_event_ms: HashMap<SourceId, i64>,
    /// Offset after the last record seen.
    next_offset: Option<i64>,
    late: u64,
}

impl PartitionWindows {
    pub fn new(spec: WindowSpec) -> Self {
        PartitionWindows {
            spec,
            open: BTreeMap::new(),
            max_event_ms: HashMap::new(),
            next_offset: None,
            late: 0,
        }
    }

    /// Start of the window holding `t`.
    pub fn window_start(&self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.spec.window_ms) * self.spec.window_ms
    }

    /// Every window of `source` ending at or before this time is closed (`C`),
    /// once the source was seen.
    pub fn closed_through_ms(&self, source: SourceId) -> Option<i64> {
        let m = *self.max_event_ms.get(&source)?;
        Some(self.window_start(m - self.spec.lateness_ms))
    }

    pub fn late_count(&self) -> u64 {
        self.late
    }

    /// Notes a record that carries no hit (e.g. a malformed line), so the
    /// restore point can move past it.
    pub fn skip(&mut self, offset: i64) {
        self.next_offset = Some(offset + 1);
    }

    pub fn record(&mut self, hit: Hit) -> Recorded {
        self.next_offset = Some(hit.offset + 1);
        let start = self.window_start(hit.time_ms);
        if let Some(c) = self.closed_through_ms(hit.source) {
            if start + self.spec.window_ms <= c {
                self.late += 1;
                return Recorded::Late;
            }
        }
        let m = self.max_event_ms.entry(hit.source).or_insert(hit.time_ms);
        *m = (*m).max(hit.time_ms);
        let w = self.open.entry((start, hit.source)).or_insert(Open {
            metrics: Metrics::default(),
            min_offset: hit.offset,
            dirty: true,
        });
        w.metrics
            .add(hit.status, hit.body_bytes, self.spec.error_status);
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
            out.push(WindowValue {
                source: key.1,
                start_ms: key.0,
                metrics: w.metrics,
                is_final: true,
            });
        }
        if partials {
            for (&(start, source), w) in self.open.iter_mut().filter(|(_, w)| w.dirty) {
                w.dirty = false;
                out.push(WindowValue {
                    source,
                    start_ms: start,
                    metrics: w.metrics,
                    is_final: false,
                });
            }
        }
    }

    /// The offset to resume from so that every open window can be rebuilt:
    /// the smallest offset in an open window, else the next offset.
    pub fn restore_offset(&self) -> Option<i64> {
        self.open
            .values()
            .map(|w| w.min_offset)
            .min()
            .or(self.next_offset)
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: WindowSpec = WindowSpec {
        window_ms: 10_000,
        lateness_ms: 30_000,
        error_status: 400,
    };

    fn hit(source: SourceId, time_ms: i64, status: u16, offset: i64) -> Hit {
        Hit {
            source,
            time_ms,
            status,
            body_bytes: 100,
            offset,
        }
    }

    #[test]
    fn windows_close_when_the_watermark_passes_their_end() {
        let mut w = PartitionWindows::new(SPEC);
        w.record(hit(0, 1_000, 200, 0));
        w.record(hit(0, 9_999, 404, 1));
        w.record(hit(1, 5_000, 503, 2));
        let mut out = vec![];
        w.drain(false, false, &mut out);
        assert!(out.is_empty(), "watermark -20s closes nothing");
        // Source 0: M = 40s → watermark 10s → its [0,10s) closes; source 1's stays open.
        w.record(hit(0, 40_000, 200, 3));
        w.drain(false, false, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out.iter().all(|v| v.is_final && v.start_ms == 0));
        let m = out.iter().find(|v| v.source == 0).unwrap().metrics;
        assert_eq!(
            m,
            Metrics {
                count: 2,
                traffic: 200,
                errors: 1,
                status: [0, 1, 0, 1, 0]
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
        w.record(hit(0, 45_000, 200, 0)); // C = 10s
        assert_eq!(w.record(hit(0, 9_000, 200, 1)), Recorded::Late);
        assert_eq!(
            w.record(hit(0, 10_000, 200, 2)),
            Recorded::Added,
            "[10s,20s) still open"
        );
        assert_eq!(w.late_count(), 1);
        assert_eq!(w.closed_through_ms(0), Some(10_000));
    }

    #[test]
    fn each_source_has_its_own_watermark() {
        // Source 0 was backfilled first and reached 45s; source 1 starts at 0s
        // in the same partition and must not be late.
        let mut w = PartitionWindows::new(SPEC);
        w.record(hit(0, 45_000, 200, 0));
        assert_eq!(w.record(hit(1, 1_000, 200, 1)), Recorded::Added);
        let mut out = vec![];
        w.drain(false, false, &mut out);
        assert!(out.is_empty(), "source 1's watermark is at -29s");
        w.record(hit(1, 41_000, 200, 2));
        w.drain(false, false, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].source, out[0].start_ms), (1, 0));
    }

    #[test]
    fn partials_are_handed_out_only_when_changed() {
        let mut w = PartitionWindows::new(SPEC);
        w.record(hit(0, 1_000, 200, 0));
        let mut out = vec![];
        w.drain(true, false, &mut out);
        assert_eq!(out.len(), 1);
        assert!(!out[0].is_final);
        out.clear();
        w.drain(true, false, &mut out);
        assert!(out.is_empty());
        w.record(hit(0, 2_000, 500, 1));
        w.drain(true, false, &mut out);
        assert_eq!(out[0].metrics.count, 2);
    }

    #[test]
    fn close_all_finalises_everything_and_restore_moves_past_malformed() {
        let mut w = PartitionWindows::new(SPEC);
        w.record(hit(0, 1_000, 200, 5));
        w.skip(6);
        assert_eq!(w.restore_offset(), Some(5));
        let mut out = vec![];
        w.drain(true, true, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].is_final);
        assert_eq!(w.restore_offset(), Some(7));
        assert_eq!(w.open_windows(), 0);
    }

    #[test]
    fn negative_times_fall_in_the_right_window() {
        let w = PartitionWindows::new(SPEC);
        assert_eq!(w.window_start(-1), -10_000);
    }
}
