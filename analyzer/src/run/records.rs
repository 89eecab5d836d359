//! Application records that span lines, joined per source: a line that
//! starts a record (it parses as the format's first line) ends the record
//! before it; a line that does not continues it. A record is also complete
//! when a record of its partition arrives more than `--partial-wait` after
//! it (by the producer's timestamps, so the decision depends only on the
//! records, never on a clock), and when the input ends. Until then its
//! first line's offset holds the partition's restore point back, so a new
//! owner reads the whole record again.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::parse::{AppLine, Level};
use crate::window::SourceId;

/// What the parse of a record's first line found, kept so the line is not
/// parsed again when the record completes: the logger and the message as
/// byte ranges of the first line.
pub(super) struct Head {
    pub(super) time_ms: i64,
    pub(super) level: Level,
    pub(super) logger: Range<usize>,
    pub(super) message: Range<usize>,
}

impl Head {
    /// `l` parsed from `line`; `None` when its logger or message is not a
    /// slice of the line (never for the text formats, which borrow).
    pub(super) fn of(line: &[u8], l: &AppLine<'_>) -> Option<Head> {
        let span = |part: &[u8]| -> Option<Range<usize>> {
            let start = (part.as_ptr() as usize).checked_sub(line.as_ptr() as usize)?;
            (start + part.len() <= line.len()).then_some(start..start + part.len())
        };
        Some(Head {
            time_ms: l.time_ms,
            level: l.level,
            logger: span(&l.logger)?,
            message: span(&l.message)?,
        })
    }
}

/// A record whose lines are still coming.
pub(super) struct Open {
    /// The first line, then `\n` and each continuation line.
    pub(super) text: Vec<u8>,
    pub(super) first_len: usize,
    /// Kafka offset of the first line.
    pub(super) offset: i64,
    /// Kafka offset of the last line read so far.
    pub(super) last_offset: i64,
    pub(super) timestamp: Option<i64>,
    pub(super) lines: u32,
    pub(super) head: Head,
}

impl Open {
    pub(super) fn logger(&self) -> &[u8] {
        &self.text[self.head.logger.clone()]
    }

    pub(super) fn message(&self) -> &[u8] {
        &self.text[self.head.message.clone()]
    }

    /// The continuation lines, when there are any.
    pub(super) fn rest(&self) -> Option<&[u8]> {
        (self.lines > 1).then(|| &self.text[self.first_len + 1..])
    }
}

/// Longest record kept whole (bytes); further continuation lines are
/// counted but not kept (the template reads only the start and the
/// exception line of what is kept).
pub(super) const MAX_RECORD_BYTES: usize = 256 * 1024;

/// The open records of one partition, by source.
pub(super) struct Records {
    open: BTreeMap<SourceId, Open>,
    wait_ms: i64,
}

impl Records {
    pub(super) fn new(wait_ms: i64) -> Self {
        Records {
            open: BTreeMap::new(),
            wait_ms,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Starts `source`'s next record; returns the one it completes.
    pub(super) fn start(
        &mut self,
        source: SourceId,
        line: &[u8],
        head: Head,
        offset: i64,
        end_offset: i64,
        timestamp: Option<i64>,
    ) -> Option<Open> {
        self.open.insert(
            source,
            Open {
                text: line.to_vec(),
                first_len: line.len(),
                offset,
                last_offset: end_offset,
                timestamp,
                lines: 1,
                head,
            },
        )
    }

    /// Adds a continuation line to `source`'s open record; `false` when it
    /// has none.
    pub(super) fn continue_with(&mut self, source: SourceId, line: &[u8], end_offset: i64) -> bool {
        let Some(r) = self.open.get_mut(&source) else {
            return false;
        };
        if r.text.len() + 1 + line.len() <= MAX_RECORD_BYTES {
            r.text.push(b'\n');
            r.text.extend_from_slice(line);
        }
        r.lines = r.lines.saturating_add(1);
        r.last_offset = end_offset;
        true
    }

    /// The records a record with `timestamp` completes by time.
    pub(super) fn expired(&mut self, timestamp: Option<i64>, out: &mut Vec<(SourceId, Open)>) {
        let Some(now) = timestamp else { return };
        let wait = self.wait_ms;
        let done: Vec<SourceId> = self
            .open
            .iter()
            .filter(|(_, r)| r.timestamp.is_some_and(|t| t.saturating_add(wait) < now))
            .map(|(&s, _)| s)
            .collect();
        for s in done {
            out.push((s, self.open.remove(&s).expect("listed")));
        }
    }

    /// Every open record (the input ended).
    pub(super) fn take_all(&mut self) -> Vec<(SourceId, Open)> {
        std::mem::take(&mut self.open).into_iter().collect()
    }

    /// The smallest first-line offset of an open record.
    pub(super) fn floor(&self) -> Option<i64> {
        self.open.values().map(|r| r.offset).min()
    }
}
