//! Lines published in pieces, joined again — pure: no I/O, no clock.
//!
//! When a writer pauses in the middle of a line for longer than the
//! producer's `--partial-line-timeout`, the producer publishes what it has
//! (`partial: idle`) and later the rest up to the newline (`partial: rest`);
//! a longer pause can make several `idle` pieces. This module holds such
//! pieces per file until the line is whole, so the parser, the windows, the
//! de-duplication and the dead letters see one line, at the first piece's
//! offset.
//!
//! Pieces are matched by position, not by their marks: a record of the same
//! file whose byte `offset` is where the held bytes end continues them. The
//! `rest` mark is not persisted by the producer, so after a producer restart
//! the rest comes unmarked — and is still joined. A record of the held file
//! that starts at one of the held pieces' starts is a producer's re-send
//! (from a checkpoint before that piece): it replaces the held bytes from
//! there, so a line re-sent whole is counted once, whole.
//!
//! A held piece is given up — a dead letter, never counted — when
//! - its file goes on at another byte (the bytes in between never came);
//! - a later record of the same source is stamped more than `wait` after
//!   the piece (the producer's timestamps: one clock per source);
//! - the joined line grows past [`MAX_JOINED`];
//! - the input ends ([`Pieces::give_up_all`]).
//!
//! A `rest` with no held piece (the first piece was deleted by the broker,
//! or lies before a replay's start) is a dead letter. An `eof` piece (the
//! unterminated end of a file or a connection) is parsed as a line and is a
//! dead letter unless it is whole.
//!
//! Every decision depends only on the records and their order, so a live
//! run, a run restored from a restore point and a replay decide alike; the
//! restore offset never passes a held piece ([`Pieces::floor`]).

use crate::window::SourceId;

/// A joined line longer than this is given up (each piece is at most the
/// producer's `--max-line-bytes`; many idle pieces could grow without bound).
pub const MAX_JOINED: usize = 4 << 20;

/// The `partial` header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// A whole line (no `partial` header).
    Whole,
    Idle,
    Rest,
    Eof,
}

impl Mark {
    pub fn from_header(v: Option<&[u8]>) -> Mark {
        match v {
            None => Mark::Whole,
            Some(b"idle") => Mark::Idle,
            Some(b"rest") => Mark::Rest,
            Some(b"eof") => Mark::Eof,
            // An unknown mark: some kind of piece; treat it as the end.
            Some(_) => Mark::Eof,
        }
    }
}

/// What a dead letter of a held line carries: the first piece's record.
#[derive(Debug, Clone)]
pub struct FirstPiece {
    pub topic: String,
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Option<i64>,
}

/// One record as the joiner sees it.
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    /// Kafka offset.
    pub offset: i64,
    /// Byte offset of the record's first byte in its file.
    pub at: u64,
    pub mark: Mark,
    /// The `cut` header: the piece's full length in the file.
    pub cut: Option<u64>,
    pub value: &'a [u8],
    pub timestamp: Option<i64>,
    pub source: SourceId,
}

impl Piece<'_> {
    /// Bytes the piece spans in its file.
    fn file_len(&self) -> u64 {
        self.cut.unwrap_or(self.value.len() as u64)
    }
}

/// Bytes of one line held until the rest comes.
#[derive(Debug, Clone)]
pub struct Held {
    /// Kafka offset of the first piece: the line's offset.
    pub offset: i64,
    pub source: SourceId,
    /// The bytes so far.
    pub line: Vec<u8>,
    /// A piece was cut at `--max-line-bytes`: the line has a hole after
    /// `line[..n]`; only those bytes are parsed, as a cut line.
    pub cut_at: Option<usize>,
    /// Stamp of the first piece.
    pub timestamp: Option<i64>,
    /// Where the file must go on.
    file_end: u64,
    /// (file offset, length of `line` before it) of every piece held.
    starts: Vec<(u64, usize)>,
    pub first: FirstPiece,
}

impl Held {
    /// Records the line is made of so far.
    pub fn records(&self) -> u64 {
        self.starts.len() as u64
    }
}

/// Why a held line is a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// Its file went on at another byte.
    Gap { expected: u64, got: u64 },
    /// A later record of the source was stamped more than `wait` after it.
    Waited,
    /// Longer than [`MAX_JOINED`].
    TooLong,
    /// The input ended first.
    InputEnded,
}

impl GaveUp {
    pub fn describe(&self) -> &'static str {
        match self {
            GaveUp::Gap { .. } => {
                "the first piece of a line (partial: idle) whose rest never came: its file went on at another byte"
            }
            GaveUp::Waited => {
                "the first piece of a line (partial: idle) whose rest did not come within --partial-wait"
            }
            GaveUp::TooLong => "a line in pieces longer than 4 MiB",
            GaveUp::InputEnded => {
                "the first piece of a line (partial: idle) whose rest had not come when the input ended"
            }
        }
    }
}

/// What to do with a record.
#[derive(Debug)]
pub enum Step {
    /// Not a piece: parse the record's own value.
    Line,
    /// The record completes a held line: parse this (at `held.offset`).
    Joined(Box<Held>, Mark),
    /// The record is held (an `idle` piece), or went into a held line
    /// given up: nothing to parse.
    Taken,
    /// A `rest` with no held piece before it: a dead letter.
    Orphan,
}

/// The held pieces of one partition.
#[derive(Debug)]
pub struct Pieces {
    held: crate::FastMap<Box<[u8]>, Held>,
    /// Give up on a piece when its source sends a record stamped this
    /// much later (ms).
    wait_ms: i64,
}

impl Pieces {
    pub fn new(wait_ms: i64) -> Self {
        Pieces {
            held: crate::FastMap::default(),
            wait_ms,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The smallest Kafka offset held: the restore offset must not pass it.
    pub fn floor(&self) -> Option<i64> {
        self.held.values().map(|h| h.offset).min()
    }

    /// Whether (`file`, `at`) starts a piece held: a re-send that the
    /// de-duplication must not drop, since it replaces the held bytes.
    pub fn is_resend_of_held(&self, file: &[u8], at: u64) -> bool {
        !self.held.is_empty()
            && self
                .held
                .get(file)
                .is_some_and(|h| h.starts.iter().any(|&(s, _)| s == at))
    }

    /// Held lines of `p.source` that waited too long by `p`'s stamp; call
    /// for every record of a partition with held pieces, before [`Pieces::offer`].
    pub fn expired(&mut self, p: &Piece<'_>, out: &mut Vec<(Held, GaveUp)>) {
        let (Some(ts), false) = (p.timestamp, self.held.is_empty()) else {
            return;
        };
        let wait = self.wait_ms;
        let gone: Vec<Box<[u8]>> = self
            .held
            .iter()
            .filter(|(_, h)| {
                h.source == p.source && h.timestamp.is_some_and(|t| ts.saturating_sub(t) > wait)
            })
            .map(|(f, _)| f.clone())
            .collect();
        for f in gone {
            if let Some(h) = self.held.remove(&f) {
                out.push((h, GaveUp::Waited));
            }
        }
    }

    /// One record of `file` (after de-duplication). A held line that this
    /// record shows can never be completed goes to `gave_up`.
    pub fn offer(
        &mut self,
        file: &[u8],
        p: &Piece<'_>,
        first: impl FnOnce() -> FirstPiece,
        gave_up: &mut Vec<(Held, GaveUp)>,
    ) -> Step {
        if let Some(mut h) = self.held.remove(file) {
            // A re-send from a piece's start replaces the bytes from there.
            if let Some(&(_, keep)) = h.starts.iter().find(|&&(s, _)| s == p.at) {
                h.line.truncate(keep);
                h.starts.retain(|&(_, k)| k < keep);
                h.cut_at = h.cut_at.filter(|&c| c <= keep);
                h.file_end = p.at;
                if h.starts.is_empty() {
                    // From the first piece on: as if nothing was held.
                    return self.fresh(file, p, first);
                }
            }
            if p.at == h.file_end {
                if h.cut_at.is_none() && p.cut.is_some() {
                    h.cut_at = Some(h.line.len() + p.value.len());
                }
                h.starts.push((p.at, h.line.len()));
                h.line.extend_from_slice(p.value);
                h.file_end = p.at + p.file_len();
                if h.line.len() > MAX_JOINED {
                    gave_up.push((h, GaveUp::TooLong));
                    return Step::Taken;
                }
                if p.mark == Mark::Idle {
                    self.held.insert(file.into(), h);
                    return Step::Taken;
                }
                return Step::Joined(Box::new(h), p.mark);
            }
            let expected = h.file_end;
            gave_up.push((
                h,
                GaveUp::Gap {
                    expected,
                    got: p.at,
                },
            ));
        }
        self.fresh(file, p, first)
    }

    fn fresh(&mut self, file: &[u8], p: &Piece<'_>, first: impl FnOnce() -> FirstPiece) -> Step {
        match p.mark {
            Mark::Whole | Mark::Eof => Step::Line,
            Mark::Rest => Step::Orphan,
            Mark::Idle => {
                self.held.insert(
                    file.into(),
                    Held {
                        offset: p.offset,
                        source: p.source,
                        line: p.value.to_vec(),
                        cut_at: p.cut.map(|_| p.value.len()),
                        timestamp: p.timestamp,
                        file_end: p.at + p.file_len(),
                        starts: vec![(p.at, 0)],
                        first: first(),
                    },
                );
                Step::Taken
            }
        }
    }

    /// Every held line, given up (end of input).
    pub fn give_up_all(&mut self, out: &mut Vec<(Held, GaveUp)>) {
        let mut all: Vec<Held> = self.held.drain().map(|(_, h)| h).collect();
        all.sort_by_key(|h| h.offset);
        out.extend(all.into_iter().map(|h| (h, GaveUp::InputEnded)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first() -> FirstPiece {
        FirstPiece {
            topic: "logs".into(),
            partition: 0,
            key: None,
            headers: Vec::new(),
            timestamp: None,
        }
    }

    fn piece(offset: i64, at: u64, mark: Mark, value: &[u8], ts: i64) -> Piece<'_> {
        Piece {
            offset,
            at,
            mark,
            cut: None,
            value,
            timestamp: Some(ts),
            source: 0,
        }
    }

    fn joined(step: Step) -> (Vec<u8>, i64, Mark) {
        match step {
            Step::Joined(h, m) => (h.line, h.offset, m),
            s => panic!("not joined: {s:?}"),
        }
    }

    #[test]
    fn idle_pieces_and_their_rest_are_one_line_at_the_first_offset() {
        let mut ps = Pieces::new(60_000);
        let mut gone = Vec::new();
        assert!(matches!(
            ps.offer(
                b"f",
                &piece(10, 100, Mark::Idle, b"abc", 0),
                first,
                &mut gone
            ),
            Step::Taken
        ));
        assert_eq!(ps.floor(), Some(10));
        assert!(matches!(
            ps.offer(
                b"f",
                &piece(11, 103, Mark::Idle, b"de", 1),
                first,
                &mut gone
            ),
            Step::Taken
        ));
        let (line, offset, mark) =
            joined(ps.offer(b"f", &piece(12, 105, Mark::Rest, b"f", 2), first, &mut gone));
        assert_eq!(
            (line.as_slice(), offset, mark),
            (&b"abcdef"[..], 10, Mark::Rest)
        );
        assert!(ps.is_empty() && gone.is_empty());
        assert_eq!(ps.floor(), None);
    }

    #[test]
    fn an_unmarked_rest_after_a_producer_restart_is_joined_by_its_offset() {
        let mut ps = Pieces::new(60_000);
        let mut gone = Vec::new();
        ps.offer(
            b"f",
            &piece(10, 100, Mark::Idle, b"abc", 0),
            first,
            &mut gone,
        );
        // Another file's line meanwhile changes nothing.
        assert!(matches!(
            ps.offer(b"g", &piece(11, 0, Mark::Whole, b"x", 0), first, &mut gone),
            Step::Line
        ));
        let (line, ..) = joined(ps.offer(
            b"f",
            &piece(12, 103, Mark::Whole, b"def", 1),
            first,
            &mut gone,
        ));
        assert_eq!(line, b"abcdef");
    }

    #[test]
    fn a_resend_from_a_piece_start_replaces_the_held_bytes() {
        let mut ps = Pieces::new(60_000);
        let mut gone = Vec::new();
        ps.offer(
            b"f",
            &piece(10, 100, Mark::Idle, b"abc", 0),
            first,
            &mut gone,
        );
        ps.offer(
            b"f",
            &piece(11, 103, Mark::Idle, b"de", 0),
            first,
            &mut gone,
        );
        assert!(ps.is_resend_of_held(b"f", 103) && ps.is_resend_of_held(b"f", 100));
        assert!(!ps.is_resend_of_held(b"f", 105));
        // The producer restarted from its checkpoint after the first piece.
        let (line, offset, _) = joined(ps.offer(
            b"f",
            &piece(20, 103, Mark::Whole, b"def", 1),
            first,
            &mut gone,
        ));
        assert_eq!((line.as_slice(), offset), (&b"abcdef"[..], 10));
        // Restarted from before the first piece: the whole line, not joined.
        ps.offer(
            b"f",
            &piece(30, 200, Mark::Idle, b"ab", 0),
            first,
            &mut gone,
        );
        assert!(matches!(
            ps.offer(
                b"f",
                &piece(31, 200, Mark::Whole, b"abcd", 1),
                first,
                &mut gone
            ),
            Step::Line
        ));
        assert!(ps.is_empty() && gone.is_empty(), "{gone:?}");
    }

    #[test]
    fn pieces_whose_rest_cannot_come_are_given_up() {
        let mut ps = Pieces::new(60_000);
        let mut gone = Vec::new();
        ps.offer(
            b"f",
            &piece(10, 100, Mark::Idle, b"abc", 0),
            first,
            &mut gone,
        );
        assert!(matches!(
            ps.offer(
                b"f",
                &piece(11, 110, Mark::Whole, b"x", 1),
                first,
                &mut gone
            ),
            Step::Line
        ));
        assert_eq!(gone.len(), 1);
        assert_eq!(
            gone[0].1,
            GaveUp::Gap {
                expected: 103,
                got: 110
            }
        );
        gone.clear();
        // Waited: a later record of the same source, stamped past the wait.
        ps.offer(
            b"f",
            &piece(12, 200, Mark::Idle, b"abc", 1_000),
            first,
            &mut gone,
        );
        ps.expired(&piece(13, 0, Mark::Whole, b"y", 61_000), &mut gone);
        assert!(gone.is_empty(), "exactly the wait is not past it");
        let mut other = piece(14, 0, Mark::Whole, b"y", 999_999);
        other.source = 1;
        ps.expired(&other, &mut gone);
        assert!(gone.is_empty(), "another source's clock is not looked at");
        ps.expired(&piece(15, 0, Mark::Whole, b"y", 61_001), &mut gone);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].1, GaveUp::Waited);
        gone.clear();
        ps.offer(
            b"f",
            &piece(16, 300, Mark::Idle, b"abc", 0),
            first,
            &mut gone,
        );
        ps.give_up_all(&mut gone);
        assert_eq!(
            (gone.len(), gone[0].1, gone[0].0.offset),
            (1, GaveUp::InputEnded, 16)
        );
    }

    #[test]
    fn a_rest_without_its_first_piece_is_an_orphan_and_eof_is_a_line() {
        let mut ps = Pieces::new(60_000);
        let mut gone = Vec::new();
        assert!(matches!(
            ps.offer(b"f", &piece(1, 5, Mark::Rest, b"x", 0), first, &mut gone),
            Step::Orphan
        ));
        assert!(matches!(
            ps.offer(b"f", &piece(2, 9, Mark::Eof, b"x", 0), first, &mut gone),
            Step::Line
        ));
        ps.offer(b"f", &piece(3, 20, Mark::Idle, b"ab", 0), first, &mut gone);
        let (line, _, mark) =
            joined(ps.offer(b"f", &piece(4, 22, Mark::Eof, b"c", 0), first, &mut gone));
        assert_eq!((line.as_slice(), mark), (&b"abc"[..], Mark::Eof));
    }

    #[test]
    fn a_cut_piece_leaves_a_hole_after_its_kept_bytes() {
        let mut ps = Pieces::new(60_000);
        let mut gone = Vec::new();
        let mut p = piece(1, 0, Mark::Idle, b"abcd", 0);
        p.cut = Some(10);
        ps.offer(b"f", &p, first, &mut gone);
        match ps.offer(b"f", &piece(2, 10, Mark::Rest, b"xyz", 0), first, &mut gone) {
            Step::Joined(h, _) => {
                assert_eq!((h.line.as_slice(), h.cut_at), (&b"abcdxyz"[..], Some(4)))
            }
            s => panic!("{s:?}"),
        }
    }

    mod joined_whole {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]
            /// Any line, split at any bytes into pieces (the rest marked or
            /// not), with other files' lines between them and, maybe, a
            /// producer re-send from one piece's start on: one line, whole,
            /// at the first piece's offset.
            #[test]
            fn a_line_in_any_pieces_is_joined_whole_once(
                line in prop::collection::vec(any::<u8>(), 1..300),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
                rest_marked in any::<bool>(),
                resend in prop::option::of(any::<prop::sample::Index>()),
                base in 0u64..1_000_000,
            ) {
                let mut at: Vec<usize> = cuts.iter().map(|i| i.index(line.len())).filter(|&c| c > 0).collect();
                at.sort_unstable();
                at.dedup();
                let mut bounds = vec![0];
                bounds.extend(at);
                bounds.push(line.len());
                let mut ps = Pieces::new(60_000);
                let mut gone = Vec::new();
                let mut offset = 100;
                let mut result = None;
                let n = bounds.len() - 1;
                // With a re-send, the producer restarts after piece `r` was
                // sent and sends the line again from piece `r`'s start.
                let resend_from = resend.filter(|_| n > 1).map(|i| i.index(n - 1));
                let mut k = 0;
                let mut resent = false;
                while k < n {
                    let (a, b) = (bounds[k], bounds[n.min(k + 1)]);
                    let last = k + 1 == n;
                    let mark = if !last { Mark::Idle } else if rest_marked && n > 1 { Mark::Rest } else { Mark::Whole };
                    // Another file's line between the pieces changes nothing.
                    let other = piece(offset, 7, Mark::Whole, b"x", 0);
                    prop_assert!(matches!(ps.offer(b"other", &other, first, &mut gone), Step::Line));
                    offset += 1;
                    let p = piece(offset, base + a as u64, mark, &line[a..b], 0);
                    let step = ps.offer(b"f", &p, first, &mut gone);
                    offset += 1;
                    if let (Some(r), false) = (resend_from, resent) {
                        if k == r + 1 {
                            // The producer restarts: from piece r's start, the
                            // whole rest of the line in one record.
                            resent = true;
                            prop_assert!(ps.is_resend_of_held(b"f", base + bounds[r] as u64) || r == 0 || matches!(step, Step::Joined(..)));
                            if !matches!(step, Step::Joined(..)) {
                                let from = bounds[r];
                                let p = piece(offset, base + from as u64, Mark::Whole, &line[from..], 0);
                                let step = ps.offer(b"f", &p, first, &mut gone);
                                match step {
                                    Step::Joined(h, _) => result = Some((h.line.clone(), h.offset)),
                                    Step::Line => result = Some((line[from..].to_vec(), -1)),
                                    s => prop_assert!(false, "{:?}", s),
                                }
                                break;
                            }
                        }
                    }
                    match step {
                        Step::Taken => prop_assert!(!last),
                        Step::Joined(h, _) => { prop_assert!(last); result = Some((h.line.clone(), h.offset)); }
                        Step::Line => { prop_assert!(n == 1 && last); result = Some((line.clone(), 101)); }
                        Step::Orphan => prop_assert!(false, "orphan"),
                    }
                    k += 1;
                }
                prop_assert!(gone.is_empty(), "{:?}", gone);
                prop_assert!(ps.is_empty());
                let (joined, first_offset) = result.expect("a line");
                if first_offset == -1 {
                    // Re-sent from the very first piece: that record is the line.
                    prop_assert_eq!(resend_from, Some(0));
                    prop_assert_eq!(joined, line);
                } else {
                    prop_assert_eq!(joined, line);
                    prop_assert_eq!(first_offset, 101);
                }
            }
        }
    }
}
