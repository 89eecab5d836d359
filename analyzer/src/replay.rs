//! What makes a run a replay: fixed partitions read from planned start
//! offsets to the end offsets captured when it began, only final windows
//! written, and only those entirely inside the event-time range.
//!
//! A replay never writes restore points and never commits: the live
//! analyzers' state and offsets are theirs. It does not send dead letters
//! again unless asked (the live analyzers sent them when they read the lines).
//!
//! The range rule: a window `[start, start + window)` is written only when
//! `from <= start` and `start + window <= to`. A window that straddles a
//! bound holds lines the replay may not have read (before its start offset,
//! after it stopped), so writing it could replace a correct point with a
//! partial one; it is left as it is.

use std::collections::HashMap;

/// An event-time range in ms since the epoch; `None` is unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl Range {
    /// Is the window starting at `start_ms` entirely inside the range?
    pub fn holds_window(&self, start_ms: i64, window_ms: i64) -> bool {
        self.from_ms.is_none_or(|f| start_ms >= f)
            && self
                .to_ms
                .is_none_or(|t| start_ms.saturating_add(window_ms) <= t)
    }
}

/// The plan of a replay run.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    pub range: Range,
    /// First offset to read per partition; the partitions to read.
    pub starts: HashMap<i32, i64>,
    /// End offset per partition (next offset to be written when the replay
    /// began): records at or after it are not read.
    pub ends: HashMap<i32, i64>,
    /// A partition is done at its first record whose timestamp (ingest time)
    /// is after this (`--to` + `--max-delay`, when starting by time).
    pub stop_after_ts_ms: Option<i64>,
    /// Send lines that do not parse to the dead-letter topic again.
    pub dead_letter: bool,
}

impl Replay {
    /// Records the plan covers.
    pub fn total_records(&self) -> u64 {
        self.starts
            .iter()
            .map(|(p, &s)| (self.ends.get(p).copied().unwrap_or(s) - s).max(0) as u64)
            .sum()
    }

    /// Is the record at `offset` of partition `p`, stamped `ts_ms`, inside
    /// the plan? `Err` says why the partition is done instead: it reached
    /// its end offset, or (starting by time) records are stamped past the
    /// range's end plus the maximum delay.
    pub fn admits(&self, p: i32, offset: i64, ts_ms: Option<i64>) -> Result<(), &'static str> {
        if self.ends.get(&p).is_some_and(|&e| offset >= e) {
            return Err("end offset reached");
        }
        if let (Some(stop), Some(ts)) = (self.stop_after_ts_ms, ts_ms) {
            if ts > stop {
                return Err("records past --to + --max-delay");
            }
        }
        Ok(())
    }

    /// Is partition `p` done after its record at `offset` (the last one
    /// before its end offset)?
    pub fn done_after(&self, p: i32, offset: i64) -> bool {
        self.ends.get(&p).is_some_and(|&e| offset + 1 >= e)
    }

    /// Is there nothing to read in partition `p`?
    pub fn is_empty_partition(&self, p: i32) -> bool {
        matches!((self.starts.get(&p), self.ends.get(&p)), (Some(s), Some(e)) if s >= e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_windows_entirely_inside_the_range_are_held() {
        let r = Range {
            from_ms: Some(35_000),
            to_ms: Some(85_000),
        };
        let held: Vec<i64> = (0..12)
            .map(|i| i * 10_000)
            .filter(|&s| r.holds_window(s, 10_000))
            .collect();
        assert_eq!(held, vec![40_000, 50_000, 60_000, 70_000]);
        let aligned = Range {
            from_ms: Some(30_000),
            to_ms: Some(90_000),
        };
        assert!(aligned.holds_window(30_000, 10_000));
        assert!(aligned.holds_window(80_000, 10_000));
        assert!(!aligned.holds_window(90_000, 10_000));
        assert!(Range::default().holds_window(i64::MIN, 10_000));
        assert!(Range::default().holds_window(i64::MAX, 10_000));
    }

    #[test]
    fn a_partition_ends_at_its_end_offset_or_past_the_time_bound() {
        let r = Replay {
            starts: HashMap::from([(0, 10), (1, 5), (2, 7)]),
            ends: HashMap::from([(0, 20), (1, 5)]),
            stop_after_ts_ms: Some(1_000),
            ..Replay::default()
        };
        assert_eq!(r.admits(0, 19, Some(1_000)), Ok(()));
        assert_eq!(r.admits(0, 20, Some(0)), Err("end offset reached"));
        assert_eq!(
            r.admits(2, 1_000_000, None),
            Ok(()),
            "no end offset, no stamp"
        );
        assert_eq!(
            r.admits(2, 8, Some(1_001)),
            Err("records past --to + --max-delay")
        );
        assert!(!r.done_after(0, 18));
        assert!(r.done_after(0, 19));
        assert!(
            !r.done_after(2, i64::MAX - 1),
            "partition 2 has no end offset"
        );
        assert!(r.is_empty_partition(1));
        assert!(!r.is_empty_partition(0));
        assert!(!r.is_empty_partition(2));
        assert_eq!(r.total_records(), 10);
    }
}
