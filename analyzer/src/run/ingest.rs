//! One record's way in: gap check, de-duplication, pieces joined, parsed,
//! counted in its partition's windows, or a dead letter.

use logpipe_wire::{Dedup, HeaderLookup, RecordMeta, WireLine};
use rdkafka::message::{Headers, Message};

use crate::counters::Counters;
use crate::dlq::DeadLetters;
use crate::parse::sources::SourceTable;
use crate::parse::{AccessLine, ErrorKind, ParseError};
use crate::pieces::{FirstPiece, GaveUp, Held, Mark, Piece, Pieces, Step};
use crate::window::{Hit, PartitionWindows, Recorded, SourceId};

use super::records::{Head, Open, Records};

/// One owned partition.
pub(super) struct Part {
    pub(super) windows: PartitionWindows,
    pub(super) dedup: Dedup,
    /// Lines held in pieces until their rest comes.
    pub(super) pieces: Pieces,
    /// Application records whose lines are still coming.
    pub(super) records: Records,
    /// Offset after the last record consumed, or before the first the offset
    /// the partition must start at (gap detection, progress): a first record
    /// beyond it means the broker deleted records before they were read.
    pub(super) next: Option<i64>,
    /// (offset, next offset) of the last restore point the sink accepted.
    pub(super) written: Option<(i64, i64)>,
    /// Records below this offset were handled by a previous owner, which had
    /// their dead letters acknowledged before it wrote its restore point.
    pub(super) dead_lettered_below: i64,
    /// Replay: this partition reached its end.
    pub(super) done: bool,
}

/// A record as the analyzer reads it: rdkafka's [`Message`] whose headers
/// the wire contract's [`RecordMeta`] can read.
pub(super) trait WireRecord: Message<Headers: HeaderLookup> {}

impl<M: Message<Headers: HeaderLookup>> WireRecord for M {}

impl Part {
    /// A newly assigned partition: restored windows, or new ones; reading
    /// starts at `next` when known; records below `dead_lettered_below`
    /// had their dead letters sent by a previous owner.
    pub(super) fn new(
        windows: PartitionWindows,
        dedup_files: usize,
        partial_wait_ms: i64,
        next: Option<i64>,
        dead_lettered_below: i64,
    ) -> Self {
        Part {
            windows,
            dedup: Dedup::new(dedup_files),
            pieces: Pieces::new(partial_wait_ms),
            records: Records::new(partial_wait_ms),
            next,
            written: None,
            dead_lettered_below,
            done: false,
        }
    }
}

/// What the handling of every record shares: the sources seen, the
/// counters, the dead-letter producer.
pub(super) struct Ingest {
    pub(super) sources: SourceTable,
    pub(super) counters: Counters,
    pub(super) dlq: DeadLetters,
    /// Scratch for a record's message template.
    pub(super) template: Vec<u8>,
}

impl Ingest {
    /// One record of `part`: its lines (one for v1, a run for v2), each
    /// de-duplicated, joined from pieces, parsed, aggregated.
    pub(super) fn record<M: WireRecord>(&mut self, part: &mut Part, msg: &M) {
        let partition = msg.partition();
        let offset = msg.offset();
        self.counters.records += 1;
        if let Some(expected) = part.next {
            if offset > expected {
                // Records vanished before we read them: the broker deleted them
                // (retention, or the mock's ~5 MiB per partition), whether
                // between two records or before the first (librdkafka's
                // `auto.offset.reset` then moved the start past them).
                let lost = (offset - expected) as u64;
                self.counters.offsets_skipped += lost;
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
        let meta = RecordMeta::from_headers(msg.headers());
        let source = self.sources.id(msg.key().unwrap_or(b""), msg.headers());
        let value = msg.payload().unwrap_or(b"");
        if !part.records.is_empty() {
            let mut done = Vec::new();
            part.records.expired(msg.timestamp().to_millis(), &mut done);
            self.finish_records(part, done, Some(offset));
        }
        let rec = Rec {
            msg,
            meta,
            source,
            offset,
            timestamp: msg.timestamp().to_millis(),
        };
        let parsed = self.counters.parsed;
        match meta.lines(value) {
            Ok(lines) => {
                for line in lines {
                    self.line(part, &rec, &line);
                }
            }
            Err(e) => {
                // A run that does not hold what its headers say: one dead
                // letter, the record as it is.
                let Ingest {
                    sources,
                    counters,
                    dlq,
                    ..
                } = self;
                counters.consumed += 1;
                let e = LineError::Run(e);
                dead_letter(sources, counters, source, offset, &e, value);
                part.windows.skip(offset);
                if offset >= part.dead_lettered_below {
                    dlq.send(msg, &e);
                }
            }
        }
        // Per record, not per line: what the hint below needs to know.
        if self.counters.parsed != parsed {
            self.sources.parsed(source);
        }
    }

    /// One line of a record.
    fn line<M: WireRecord>(&mut self, part: &mut Part, rec: &Rec<'_, M>, wire: &WireLine<'_>) {
        let Ingest {
            sources,
            counters,
            dlq,
            template,
        } = self;
        let Rec {
            source,
            offset,
            timestamp: ts,
            ..
        } = *rec;
        counters.consumed += 1;
        let WireLine {
            value: line,
            file,
            offset: at,
            partial,
            cut,
        } = *wire;
        let mark = Mark::from_header(partial);
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
                        .offer(file, &piece, || rec.first_piece(wire), &mut gave_up)
                }
            }
            // Without a file and offset, pieces cannot be matched: as they are.
            _ => Step::Line,
        };
        let app = sources.parser(source).app().is_some();
        match step {
            Step::Line if app => {
                let at = (offset, offset);
                let r = app_line(
                    part,
                    sources,
                    counters,
                    template,
                    source,
                    line,
                    cut.is_some(),
                    at,
                    ts,
                );
                if let Err(e) = r {
                    dead_letter(sources, counters, source, offset, &e, line);
                    part.windows.skip(offset);
                    if offset >= part.dead_lettered_below {
                        rec.send_dead_letter(dlq, wire, &e);
                    }
                }
            }
            Step::Joined(held, _) if app => {
                counters.pieces += held.records() - 1;
                let whole = held.cut_at.map_or(&held.line[..], |n| &held.line[..n]);
                let at = (held.offset, offset);
                let (cut, ts) = (held.cut_at.is_some(), held.timestamp);
                let r = app_line(
                    part, sources, counters, template, source, whole, cut, at, ts,
                );
                if let Err(e) = r {
                    dead_letter(sources, counters, source, offset, &e, &held.line);
                    part.windows.skip(offset);
                    if offset >= part.dead_lettered_below {
                        send_held(dlq, &held, &e);
                    }
                }
            }
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
                        rec.send_dead_letter(dlq, wire, &e);
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
                    rec.send_dead_letter(dlq, wire, &LineError::Orphan);
                }
            }
        }
        give_up(part, sources, counters, dlq, gave_up, offset);
    }

    /// Lines still held in pieces when the input ended: they never will be
    /// whole, so they are dead letters.
    pub(super) fn end_of_input(&mut self, part: &mut Part) {
        let open = part.records.take_all();
        self.finish_records(part, open, None);
        let mut gave_up = Vec::new();
        part.pieces.give_up_all(&mut gave_up);
        give_up(
            part,
            &mut self.sources,
            &mut self.counters,
            &mut self.dlq,
            gave_up,
            i64::MAX,
        );
    }
}

impl Ingest {
    /// Counts application records that are complete; `by` is the offset of
    /// the record that completed them (`None`: each its own last line's).
    fn finish_records(&mut self, part: &mut Part, done: Vec<(SourceId, Open)>, by: Option<i64>) {
        for (source, r) in done {
            let end = by.unwrap_or(r.last_offset).max(r.last_offset);
            finish(
                part,
                &self.sources,
                &mut self.counters,
                &mut self.template,
                source,
                &r,
                end,
            );
        }
        part.windows.hold_records_from(part.records.floor());
    }
}

/// One line of an application log: a JSON record, counted; the first line
/// of a text record, which completes the source's open record and opens
/// its own; or a line that continues the open record. `at` is the offset
/// of the line's first piece and of the record that made it whole.
#[allow(clippy::too_many_arguments)]
fn app_line(
    part: &mut Part,
    sources: &SourceTable,
    counters: &mut Counters,
    template: &mut Vec<u8>,
    source: SourceId,
    line: &[u8],
    cut: bool,
    (offset, end_offset): (i64, i64),
    ts: Option<i64>,
) -> Result<(), LineError> {
    let app = sources.parser(source).app().expect("an application source");
    if !app.multiline() {
        if cut {
            return Err(LineError::Parse(ParseError::ends(
                line.len(),
                "where the producer cut it (--max-line-bytes): a cut JSON object is not whole",
            )));
        }
        let l = app.parse(line).map_err(LineError::Parse)?;
        let time_ms = time_or_timestamp(l.time_ms, ts).map_err(LineError::Parse)?;
        crate::template::template_with_exception(&l.message, l.exception.as_deref(), template);
        let lines = l
            .exception
            .as_deref()
            .map_or(0, |e| memchr::memchr_iter(b'\n', e).count() + 1);
        let hit = crate::applog::AppHit {
            level: l.level,
            logger: &l.logger,
            template,
            lines: 1 + lines as u32,
        };
        add(
            part,
            counters,
            Hit::from_app(source, time_ms, hit, offset, end_offset),
        );
        return Ok(());
    }
    match app.parse(line).map(|l| Head::of(line, &l)) {
        // The text formats' fields are slices of the line; were one not,
        // the line is refused rather than counted with made-up fields.
        Ok(None) => {
            return Err(LineError::Parse(ParseError::expected(
                0,
                "a record whose logger and message lie in its first line",
            )))
        }
        Ok(Some(head)) => {
            if let Some(done) = part
                .records
                .start(source, line, head, offset, end_offset, ts)
            {
                finish(part, sources, counters, template, source, &done, offset);
            }
            part.windows.skip(end_offset);
        }
        Err(e) => {
            counters.continuation_lines += 1;
            // Without an open record: part of one a previous owner
            // completed and counted (re-read after a restore), or an orphan.
            if !part.records.continue_with(source, line, end_offset)
                && !part.windows.was_seen_before(end_offset)
            {
                return Err(LineError::Continuation(e));
            }
            part.windows.skip(end_offset);
        }
    }
    part.windows.hold_records_from(part.records.floor());
    Ok(())
}

/// Counts one complete application record, completed at `end_offset`.
fn finish(
    part: &mut Part,
    sources: &SourceTable,
    counters: &mut Counters,
    template: &mut Vec<u8>,
    source: SourceId,
    r: &Open,
    end_offset: i64,
) {
    let Ok(time_ms) = time_or_timestamp(r.head.time_ms, r.timestamp) else {
        tracing::error!(
            source = %sources.name(source).source,
            offset = r.offset,
            "an application record without a time; not counted"
        );
        return;
    };
    crate::template::template_with_exception(r.message(), r.rest(), template);
    let hit = crate::applog::AppHit {
        level: r.head.level,
        logger: r.logger(),
        template,
        lines: r.lines,
    };
    add(
        part,
        counters,
        Hit::from_app(source, time_ms, hit, r.offset, end_offset),
    );
}

fn time_or_timestamp(time_ms: i64, ts: Option<i64>) -> Result<i64, ParseError> {
    if time_ms != i64::MIN {
        return Ok(time_ms);
    }
    ts.ok_or(ParseError::expected(
        0,
        "a time: the line has none and the record no timestamp",
    ))
}

/// Why a line is a dead letter: the parser's word, or what became of its pieces.
#[derive(Debug)]
enum LineError {
    Parse(ParseError),
    /// An application-log line that does not start a record, with no
    /// record before it to continue.
    Continuation(ParseError),
    /// The unterminated end of a file or connection (`partial: eof`).
    Eof(ParseError),
    /// A line joined from pieces.
    Joined(ParseError),
    /// A `partial: rest` whose first piece was not read.
    Orphan,
    GaveUp(GaveUp),
    /// A v2 record whose run does not read.
    Run(logpipe_wire::RunError),
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineError::Parse(e) => e.fmt(f),
            LineError::Continuation(e) => write!(
                f,
                "{e}: not the start of a record, and no record before it to continue"
            ),
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
            LineError::Run(e) => e.fmt(f),
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
    let parser = sources.parser(source);
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
    sources: &mut SourceTable,
    counters: &mut Counters,
    source: SourceId,
    offset: i64,
    e: &LineError,
    line: &[u8],
) {
    counters.dead_lettered += 1;
    let kinds = &mut counters.dead_letter_kinds;
    match e {
        LineError::Parse(p)
        | LineError::Eof(p)
        | LineError::Joined(p)
        | LineError::Continuation(p) => match p.kind {
            ErrorKind::Expected => kinds.malformed += 1,
            ErrorKind::Ends => kinds.cut += 1,
            ErrorKind::Damaged => kinds.damaged += 1,
        },
        LineError::Orphan | LineError::GaveUp(_) => kinds.unjoined += 1,
        LineError::Run(_) => kinds.damaged += 1,
    }
    if counters.dead_lettered <= 20 || counters.dead_lettered.is_multiple_of(1000) {
        let n = sources.name(source);
        let (host, src) = (&n.host, &n.source);
        tracing::warn!(target: DEAD_LETTER_LOG, %host, source = %src, offset, error = %e, dead_lettered_so_far = counters.dead_lettered,
            line = %String::from_utf8_lossy(&line[..line.len().min(200)]), "line does not parse; sent to the dead-letter topic");
    }
    if sources.dead_lettered(source) {
        let n = sources.name(source);
        let format = sources.parser(source).describe();
        tracing::warn!(host = %n.host, source = %n.source, %format, last_error = %e,
            "none of the first {} lines of {} parse as {format}: if this source writes another format, \
             name it with --format, or with a rule for it in a --formats file (docs/formats.md); \
             its lines are in the dead-letter topic (`logpipe dlq`)",
            crate::parse::sources::NOTHING_PARSES, n.source);
    }
}

/// Dead letters for held lines that can no longer be completed; `offset`
/// is the record that decided it.
fn give_up(
    part: &mut Part,
    sources: &mut SourceTable,
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

/// The record a line came in, as its lines need it.
struct Rec<'m, M> {
    msg: &'m M,
    /// Its headers as the wire contract reads them (a v2 record's lines
    /// get headers of their own in dead letters).
    meta: RecordMeta<'m>,
    source: SourceId,
    /// Kafka offset.
    offset: i64,
    timestamp: Option<i64>,
}

impl<M: WireRecord> Rec<'_, M> {
    /// The headers a v1 record holding `line` alone would carry.
    fn line_headers(&self, line: &WireLine<'_>) -> Vec<(String, Option<Vec<u8>>)> {
        let headers = self.msg.headers().into_iter().flat_map(|h| h.iter());
        self.meta
            .line_headers(headers.map(|h| (h.key, h.value)), line)
    }

    /// What a dead letter of a held line needs of its first piece's record.
    fn first_piece(&self, line: &WireLine<'_>) -> FirstPiece {
        FirstPiece {
            topic: self.msg.topic().to_string(),
            partition: self.msg.partition(),
            key: self.msg.key().map(<[u8]>::to_vec),
            headers: self.line_headers(line),
            timestamp: self.timestamp,
        }
    }

    /// `line` as a dead letter: the record itself (v1), or the line with
    /// its own headers and the record's key, timestamp and origin (v2).
    fn send_dead_letter(&self, dlq: &mut DeadLetters, line: &WireLine<'_>, e: &LineError) {
        if self.meta.lines.is_none() {
            return dlq.send(self.msg, e);
        }
        let hs = self.line_headers(line);
        let headers: Vec<(&str, Option<&[u8]>)> =
            hs.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
        let origin = format!(
            "{}/{}/{}",
            self.msg.topic(),
            self.msg.partition(),
            self.offset
        );
        dlq.send_parts(
            self.msg.key(),
            line.value,
            &headers,
            self.timestamp,
            &origin,
            e,
        );
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
