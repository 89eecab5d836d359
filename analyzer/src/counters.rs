//! The analyzer's self-metrics: one place where they are counted and encoded
//! as the `logpipe` measurement.
//!
//! They reconcile: `consumed = parsed + dead_lettered + duplicates + pieces
//! + continuation_lines` (plus the records of lines still held in pieces,
//! and the lines of application records still open) and
//! `parsed = counted + late + replayed`.

use crate::line_protocol::{encode_counters, SELF_METRICS};

/// Cumulative counts since this analyzer started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Lines consumed from `logs` (of owned partitions): one per v1
    /// record, a run's lines of a v2 record (a damaged v2 record counts
    /// once, as its one dead letter).
    pub consumed: u64,
    /// Records consumed from `logs` (not part of the `logpipe` measurement).
    pub records: u64,
    /// Lines dropped as producer re-sends (same `file` and `offset`).
    pub duplicates: u64,
    /// Lines parsed into a request, and application records.
    pub parsed: u64,
    /// Lines that did not parse, sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// `dead_lettered` by why (not part of the `logpipe` measurement).
    pub dead_letter_kinds: DeadLetterKinds,
    /// Records that were pieces of a line completed (or given up) by a
    /// later record, which counts the line (`partial: idle` pieces).
    pub pieces: u64,
    /// Lines that continued an application record (a traceback's): the
    /// record counts once, in `parsed`, when it is complete.
    pub continuation_lines: u64,
    /// Parsed lines (application records) added to a window.
    pub counted: u64,
    /// Parsed lines whose window had already closed.
    pub late: u64,
    /// Parsed lines re-read after a restore whose window was already final.
    pub replayed: u64,
    /// Final windows accepted by the sink.
    pub windows_written: u64,
    /// Final access windows' sketch records handed to the fleet topic.
    pub sketches_published: u64,
    /// Sink writes that failed and were retried.
    pub write_retries: u64,
    /// Offsets that were gone from the broker when read (retention outran us).
    pub offsets_skipped: u64,
    /// Records on the broker not consumed yet (owned partitions, at the last flush).
    pub lag: u64,
    /// Replay: final windows not written because they straddle or lie outside
    /// the replayed range (not part of the `logpipe` measurement).
    pub windows_outside_range: u64,
}

/// Dead letters by why the line failed; they add up to `dead_lettered`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterKinds {
    /// A byte that does not fit the format.
    pub malformed: u64,
    /// The line ends before its format does (cut short in the file).
    pub cut: u64,
    /// The line holds a NUL byte.
    pub damaged: u64,
    /// A piece of a line that was never joined (its other piece missing,
    /// too long, or not in time).
    pub unjoined: u64,
}

impl DeadLetterKinds {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &DeadLetterKinds) {
        self.malformed += other.malformed;
        self.cut += other.cut;
        self.damaged += other.damaged;
        self.unjoined += other.unjoined;
    }
}

impl Counters {
    /// Adds another analyzer's counts to these (the analyzers of one
    /// process; `lag` too, as they own different partitions).
    pub fn add(&mut self, o: &Counters) {
        self.consumed += o.consumed;
        self.records += o.records;
        self.duplicates += o.duplicates;
        self.parsed += o.parsed;
        self.dead_lettered += o.dead_lettered;
        self.dead_letter_kinds.add(&o.dead_letter_kinds);
        self.pieces += o.pieces;
        self.continuation_lines += o.continuation_lines;
        self.counted += o.counted;
        self.late += o.late;
        self.replayed += o.replayed;
        self.windows_written += o.windows_written;
        self.sketches_published += o.sketches_published;
        self.write_retries += o.write_retries;
        self.offsets_skipped += o.offsets_skipped;
        self.lag += o.lag;
        self.windows_outside_range += o.windows_outside_range;
    }

    /// Appends the `logpipe` point for `analyzer`, timestamped now.
    pub fn encode(&self, out: &mut Vec<u8>, analyzer: &str) {
        let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        encode_counters(
            out,
            SELF_METRICS,
            &[("analyzer", analyzer)],
            &[
                ("consumed", self.consumed),
                ("continuation_lines", self.continuation_lines),
                ("counted", self.counted),
                ("dead_lettered", self.dead_lettered),
                ("duplicates", self.duplicates),
                ("lag", self.lag),
                ("late", self.late),
                ("offsets_skipped", self.offsets_skipped),
                ("parsed", self.parsed),
                ("pieces", self.pieces),
                ("replayed", self.replayed),
                ("sketches_published", self.sketches_published),
                ("windows_written", self.windows_written),
                ("write_retries", self.write_retries),
            ],
            now_ns,
        );
    }
}
