//! Wire contract v2: one record carries a run of consecutive lines of one
//! file generation (or one network or plugin stream).
//!
//! - value: the lines, each without its line ending, joined by `\n` (a line
//!   never holds a `\n`, so the join is unambiguous);
//! - header [`LINES`]: how many lines the value holds — its presence is what
//!   tells a v2 record from a v1 record (one line, no `lines` header);
//! - header [`OFFSET`](crate::OFFSET): the byte offset of the first line;
//! - header [`EOL`] = `crlf` when the run's lines ended in `\r\n` (the `\r`
//!   is not in the value); absent: `\n`;
//! - header [`MARKS`], only when a line of the run is exceptional:
//!   comma-separated `<index>:cut=<full length>` and `<index>:<piece>` with
//!   `<piece>` one of `idle`, `eof`, `rest` — the v1 `cut` and `partial`
//!   headers of that line, in line order.
//!
//! Every line's own byte offset follows from the first one: a line ends
//! after its bytes (its full length when cut, plus the `\r` under `crlf`
//! when whole) and its newline — except an `idle` or `eof` piece, which has
//! no newline. So de-duplication stays per line on (`file`, `offset`), and
//! a dead letter carries its line's own offset. A run whose lines do not
//! follow that rule is never built: [`RunEncoder::push`] refuses the line
//! and the caller closes the run.

use crate::meta::{parse_decimal, RecordMeta};

/// Header of a v2 record: the number of lines in its value (decimal).
pub const LINES: &str = "lines";
pub const LINES_C: &std::ffi::CStr = c"lines";
/// Header of a v2 record whose lines ended in `\r\n`: value `crlf`.
pub const EOL: &str = "eol";
pub const EOL_C: &std::ffi::CStr = c"eol";
/// Header of a v2 record with exceptional lines (see the module doc).
pub const MARKS: &str = "marks";
pub const MARKS_C: &std::ffi::CStr = c"marks";
/// Headers every v2 record carries: host, source, file, offset, lines.
pub const RUN_HEADERS: usize = 5;

/// One line as every consumer of the topic reads it: its bytes and what the
/// v1 headers of a record holding it alone would say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLine<'a> {
    pub value: &'a [u8],
    /// Identity of the file generation (the record's `file` header).
    pub file: Option<&'a [u8]>,
    /// The line's own byte offset in that file.
    pub offset: Option<u64>,
    /// A piece of a line: `idle`, `eof` or `rest`.
    pub partial: Option<&'a [u8]>,
    /// Cut short: the line's full length.
    pub cut: Option<u64>,
}

impl WireLine<'_> {
    /// (`file`, `offset`) when the line has both: what [`Dedup`](crate::Dedup) keys on.
    pub fn position(&self) -> Option<(&[u8], u64)> {
        Some((self.file?, self.offset?))
    }

    /// Where the next line of its file starts (`None` without an offset).
    fn end(&self, crlf: bool) -> Option<u64> {
        Some(self.offset? + line_span(self.value.len(), self.cut, self.partial, crlf))
    }
}

/// Bytes a line takes in its file: its full length, the `\r` of a whole
/// line under `crlf`, and its newline unless it is an `idle`/`eof` piece.
fn line_span(value_len: usize, cut: Option<u64>, partial: Option<&[u8]>, crlf: bool) -> u64 {
    let terminated = !matches!(partial, Some(b"idle") | Some(b"eof"));
    let body = cut.unwrap_or(value_len as u64 + u64::from(crlf && terminated));
    body + u64::from(terminated)
}

/// A v2 record that does not hold what its headers say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("a v2 record whose `lines` header is not a count of 1 or more")]
    Count,
    #[error("a v2 record whose `lines` header says {said} lines but whose value holds {held}")]
    Mismatch { said: u64, held: u64 },
    #[error("a v2 record with a `marks` header that does not read: {0}")]
    Marks(String),
}

impl<'a> RecordMeta<'a> {
    /// The headers a v1 record holding `line` alone would carry, from the
    /// record's `headers`: a v1 record's own, unchanged; for a line of a v2
    /// run, the run's headers but `offset`, `lines`, `eol` and `marks`,
    /// then the line's own `offset`, `cut` and `partial`. What a dead
    /// letter of the line carries, and how the test kit shows a run's lines.
    pub fn line_headers<'h>(
        &self,
        headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
        line: &WireLine<'_>,
    ) -> Vec<(String, Option<Vec<u8>>)> {
        let own = |(k, v): (&str, Option<&[u8]>)| (k.to_string(), v.map(<[u8]>::to_vec));
        if self.lines.is_none() {
            return headers.into_iter().map(own).collect();
        }
        let run_only = [crate::OFFSET, LINES, EOL, MARKS];
        let mut hs: Vec<_> = headers
            .into_iter()
            .filter(|(k, _)| !run_only.contains(k))
            .map(own)
            .collect();
        let mut number = |k: &str, n: Option<u64>| {
            if let Some(n) = n {
                hs.push((k.to_string(), Some(n.to_string().into_bytes())));
            }
        };
        number(crate::OFFSET, line.offset);
        number(crate::CUT, line.cut);
        if let Some(p) = line.partial {
            hs.push((crate::PARTIAL.to_string(), Some(p.to_vec())));
        }
        hs
    }
}

/// The lines of a record, v1 or v2, in order, without copying.
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    rest: Option<&'a [u8]>,
    file: Option<&'a [u8]>,
    next: Option<u64>,
    crlf: bool,
    index: u64,
    marks: &'a [u8],
    /// A v1 record: its value is one line, with these marks.
    single: Option<(Option<&'a [u8]>, Option<u64>)>,
}

impl<'a> RecordMeta<'a> {
    /// The lines of a record whose value is `value`: one for a v1 record,
    /// the run of a v2 record — or why the v2 record is damaged (checked
    /// whole before any line is handed out).
    pub fn lines(&self, value: &'a [u8]) -> Result<Lines<'a>, RunError> {
        let marks = self.marks.unwrap_or(b"");
        if let Some(count) = self.lines {
            if count == 0 {
                return Err(RunError::Count);
            }
            let held = memchr::memchr_iter(b'\n', value).count() as u64 + 1;
            if held != count {
                return Err(RunError::Mismatch { said: count, held });
            }
            check_marks(marks, count)?;
        }
        Ok(Lines {
            rest: Some(value),
            file: self.file,
            next: self.offset,
            crlf: self.crlf,
            index: 0,
            marks,
            single: self.lines.is_none().then_some((self.partial, self.cut)),
        })
    }
}

/// The marks of a run of `count` lines read, in order, each of a line.
fn check_marks(mut marks: &[u8], count: u64) -> Result<(), RunError> {
    let mut last = 0;
    while !marks.is_empty() {
        let (index, cut, partial, rest) = next_mark(marks)
            .ok_or_else(|| RunError::Marks(String::from_utf8_lossy(marks).into_owned()))?;
        if index >= count || index < last {
            return Err(RunError::Marks(format!(
                "line {index} out of order or beyond the {count} lines"
            )));
        }
        if cut == Some(0) || partial.is_some_and(|p| !matches!(p, b"idle" | b"eof" | b"rest")) {
            return Err(RunError::Marks(
                String::from_utf8_lossy(&marks[..marks.len() - rest.len()]).into_owned(),
            ));
        }
        last = index;
        marks = rest;
    }
    Ok(())
}

/// The first mark of `marks`: (line index, cut, piece, what follows).
#[allow(clippy::type_complexity)]
fn next_mark(marks: &[u8]) -> Option<(u64, Option<u64>, Option<&[u8]>, &[u8])> {
    let end = memchr::memchr(b',', marks).unwrap_or(marks.len());
    let (mark, rest) = (&marks[..end], marks.get(end + 1..).unwrap_or(b""));
    let colon = memchr::memchr(b':', mark)?;
    let index = parse_decimal(&mark[..colon])?;
    let what = &mark[colon + 1..];
    match what.strip_prefix(b"cut=") {
        Some(n) => Some((index, Some(parse_decimal(n)?), None, rest)),
        None => Some((index, None, Some(what), rest)),
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = WireLine<'a>;

    fn next(&mut self) -> Option<WireLine<'a>> {
        let rest = self.rest?;
        if let Some((partial, cut)) = self.single {
            self.rest = None;
            return Some(WireLine {
                value: rest,
                file: self.file,
                offset: self.next,
                partial,
                cut,
            });
        }
        let value = match memchr::memchr(b'\n', rest) {
            Some(nl) => {
                self.rest = Some(&rest[nl + 1..]);
                &rest[..nl]
            }
            None => {
                self.rest = None;
                rest
            }
        };
        let (mut cut, mut partial) = (None, None);
        // Checked by `RecordMeta::lines`: every mark reads, in order.
        while let Some((index, c, p, after)) = next_mark(self.marks) {
            if index != self.index {
                break;
            }
            cut = c.or(cut);
            partial = p.or(partial);
            self.marks = after;
        }
        let line = WireLine {
            value,
            file: self.file,
            offset: self.next,
            partial,
            cut,
        };
        self.next = line.end(self.crlf);
        self.index += 1;
        Some(line)
    }
}

/// Builds the value and marks of one v2 record from consecutive lines.
#[derive(Debug, Default)]
pub struct RunEncoder {
    value: Vec<u8>,
    marks: String,
    lines: u64,
    first: u64,
    next: u64,
    crlf: bool,
}

impl RunEncoder {
    pub fn new() -> Self {
        RunEncoder::default()
    }

    /// Adds the line at `offset..end` of its file (`end`: where the next
    /// line starts) when it continues the run: `false`, and nothing added,
    /// when it does not — it starts elsewhere, its line ending differs, or
    /// its span does not follow the contract's rule (a stream whose
    /// offsets are not byte positions, a value holding a `\n`). Send the
    /// run then and push the line into an empty one; a line an empty run
    /// refuses goes out as a v1 record of its own.
    pub fn push(
        &mut self,
        value: &[u8],
        offset: u64,
        end: u64,
        cut: Option<u64>,
        partial: Option<&str>,
    ) -> bool {
        let p = partial.map(str::as_bytes);
        if p.is_some_and(|p| !matches!(p, b"idle" | b"eof" | b"rest"))
            || cut == Some(0)
            || memchr::memchr(b'\n', value).is_some()
        {
            return false;
        }
        let span = |crlf| offset.checked_add(line_span(value.len(), cut, p, crlf));
        if self.lines == 0 {
            self.crlf = if span(false) == Some(end) {
                false
            } else if span(true) == Some(end) {
                true
            } else {
                return false;
            };
            self.first = offset;
        } else if offset != self.next || span(self.crlf) != Some(end) {
            return false;
        } else {
            self.value.push(b'\n');
        }
        self.value.extend_from_slice(value);
        let i = self.lines;
        let mut mark = |what: std::fmt::Arguments<'_>| {
            use std::fmt::Write;
            if !self.marks.is_empty() {
                self.marks.push(',');
            }
            let _ = write!(self.marks, "{i}:{what}");
        };
        if let Some(n) = cut {
            mark(format_args!("cut={n}"));
        }
        if let Some(p) = partial {
            mark(format_args!("{p}"));
        }
        self.lines += 1;
        self.next = end;
        true
    }

    /// Lines in the run.
    pub fn lines(&self) -> u64 {
        self.lines
    }
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }
    /// The record's value: the lines joined by `\n`.
    pub fn value(&self) -> &[u8] {
        &self.value
    }
    /// Byte offset of the first line (the record's `offset` header).
    pub fn first_offset(&self) -> u64 {
        self.first
    }
    /// Where the line after the run starts (what an acknowledgement of the
    /// record delivers).
    pub fn end(&self) -> u64 {
        self.next
    }
    /// The [`EOL`] header's value, when the run needs one.
    pub fn eol(&self) -> Option<&'static str> {
        self.crlf.then_some("crlf")
    }
    /// The [`MARKS`] header's value, when the run needs one.
    pub fn marks(&self) -> Option<&str> {
        (!self.marks.is_empty()).then_some(self.marks.as_str())
    }
    /// Empties the run, keeping its buffers.
    pub fn clear(&mut self) {
        self.value.clear();
        self.marks.clear();
        self.lines = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One line as a producer hands it out: bytes, offset, end, marks.
    #[derive(Debug, Clone)]
    struct Sent {
        value: Vec<u8>,
        offset: u64,
        end: u64,
        cut: Option<u64>,
        partial: Option<&'static str>,
    }

    /// A file's bytes cut into lines as the producer's tail does it.
    fn lines_of(text: &[u8], max_line: usize, pieces: &[usize]) -> Vec<Sent> {
        let mut out = vec![];
        let mut at = 0u64;
        let mut continues = false;
        for raw in text.split_inclusive(|&b| b == b'\n') {
            let Some(body) = raw.strip_suffix(b"\n") else {
                continue; // an unterminated end stays in the file
            };
            let mut body = body;
            let mut start = at;
            // Idle pieces at the given lengths.
            for &p in pieces {
                if p == 0 || p >= body.len() {
                    continue;
                }
                let (piece, after) = body.split_at(p);
                let cut = (piece.len() > max_line).then_some(piece.len() as u64);
                out.push(Sent {
                    value: piece[..piece.len().min(max_line)].to_vec(),
                    offset: start,
                    end: start + piece.len() as u64,
                    cut,
                    partial: Some("idle"),
                });
                start += piece.len() as u64;
                body = after;
                continues = true;
                break;
            }
            let len = body.len() as u64;
            let cut = (body.len() > max_line).then_some(len);
            let value = if cut.is_some() {
                &body[..max_line]
            } else {
                body.strip_suffix(b"\r").unwrap_or(body)
            };
            out.push(Sent {
                value: value.to_vec(),
                offset: start,
                end: start + len + 1,
                cut,
                partial: continues.then_some("rest"),
            });
            continues = false;
            at += raw.len() as u64;
        }
        out
    }

    /// A record: (lines, eol, marks, first offset, value).
    type Packed = (
        Option<u64>,
        Option<&'static str>,
        Option<String>,
        u64,
        Vec<u8>,
    );

    /// Lines packed into records as the producer packs them.
    fn pack(sent: &[Sent]) -> Vec<Packed> {
        let mut out = vec![];
        let mut run = RunEncoder::new();
        let close = |run: &mut RunEncoder, out: &mut Vec<_>| {
            if !run.is_empty() {
                out.push((
                    Some(run.lines()),
                    run.eol(),
                    run.marks().map(str::to_string),
                    run.first_offset(),
                    run.value().to_vec(),
                ));
                run.clear();
            }
        };
        for s in sent {
            if !run.push(&s.value, s.offset, s.end, s.cut, s.partial) {
                close(&mut run, &mut out);
                assert!(
                    run.push(&s.value, s.offset, s.end, s.cut, s.partial),
                    "an empty run takes any line the tail hands out: {s:?}"
                );
            }
            if run.value().len() > 40 {
                close(&mut run, &mut out);
            }
        }
        close(&mut run, &mut out);
        out
    }

    fn unpack(records: &[Packed]) -> Vec<Sent> {
        let mut out = vec![];
        for (lines, eol, marks, offset, value) in records {
            let meta = RecordMeta {
                file: Some(b"f"),
                offset: Some(*offset),
                lines: *lines,
                crlf: eol.is_some(),
                marks: marks.as_deref().map(str::as_bytes),
                ..RecordMeta::default()
            };
            let mut it = meta.lines(value).expect("a record the encoder built reads");
            let mut prev_end = None;
            for l in it.by_ref() {
                let p = l.partial.map(|p| match p {
                    b"idle" => "idle",
                    b"eof" => "eof",
                    _ => "rest",
                });
                let start = l.offset.unwrap();
                if let Some(e) = prev_end {
                    assert_eq!(e, start);
                }
                let end = start + line_span(l.value.len(), l.cut, l.partial, *eol == Some("crlf"));
                prev_end = Some(end);
                out.push(Sent {
                    value: l.value.to_vec(),
                    offset: start,
                    end,
                    cut: l.cut,
                    partial: p,
                });
            }
        }
        out
    }

    fn same(a: &[Sent], b: &[Sent]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(
                (&x.value, x.offset, x.end, x.cut, x.partial),
                (&y.value, y.offset, y.end, y.cut, y.partial)
            );
        }
    }

    #[test]
    fn a_run_reads_back_line_by_line_with_each_lines_offset() {
        let text = b"GET /a\nGET /bb\r\nxxxxxxxxxxxxxxxxxxxxxxx\n\nlast\n";
        let sent = lines_of(text, 10, &[3]);
        let records = pack(&sent);
        same(&sent, &unpack(&records));
        // The crlf line cannot share a run with its `\n` neighbours.
        assert!(records.len() >= 3, "{records:?}");
    }

    #[test]
    fn v1_records_are_one_line_with_their_headers() {
        let meta = RecordMeta {
            file: Some(b"f"),
            offset: Some(7),
            partial: Some(b"idle"),
            cut: Some(99),
            ..RecordMeta::default()
        };
        let lines: Vec<_> = meta.lines(b"a\nb").unwrap().collect();
        assert_eq!(
            lines,
            vec![WireLine {
                value: b"a\nb",
                file: Some(b"f"),
                offset: Some(7),
                partial: Some(b"idle"),
                cut: Some(99)
            }]
        );
    }

    #[test]
    fn a_lines_headers_are_those_of_a_v1_record_of_it_alone() {
        let run: Vec<(&str, Option<&[u8]>)> = vec![
            ("host", Some(b"h")),
            ("file", Some(b"f")),
            ("offset", Some(b"10")),
            ("lines", Some(b"2")),
            ("marks", Some(b"1:cut=9,1:idle")),
        ];
        let meta = RecordMeta {
            file: Some(b"f"),
            offset: Some(10),
            lines: Some(2),
            marks: Some(b"1:cut=9,1:idle"),
            ..RecordMeta::default()
        };
        let second = meta.lines(b"abc\nde").unwrap().nth(1).unwrap();
        let hs = meta.line_headers(run.iter().copied(), &second);
        let text: Vec<(&str, &[u8])> = hs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref().unwrap()))
            .collect();
        assert_eq!(
            text,
            vec![
                ("host", &b"h"[..]),
                ("file", b"f"),
                ("offset", b"14"),
                ("cut", b"9"),
                ("partial", b"idle")
            ]
        );
        // A v1 record's headers stay as they are.
        let v1 = RecordMeta::default();
        let line = v1.lines(b"x").unwrap().next().unwrap();
        assert_eq!(v1.line_headers(run.iter().copied(), &line).len(), run.len());
    }

    #[test]
    fn damaged_runs_are_refused_whole() {
        let meta = |lines, marks: Option<&'static [u8]>| RecordMeta {
            file: Some(b"f"),
            offset: Some(0),
            lines: Some(lines),
            marks,
            ..RecordMeta::default()
        };
        assert_eq!(
            meta(3, None).lines(b"a\nb").unwrap_err(),
            RunError::Mismatch { said: 3, held: 2 }
        );
        assert_eq!(meta(0, None).lines(b"").unwrap_err(), RunError::Count);
        for bad in [
            &b"2:idle"[..],
            b"1:cut=x",
            b"1:cut=0",
            b"1:nope",
            b"x:idle",
            b"1:idle,0:rest",
            b"1idle",
        ] {
            assert!(
                matches!(meta(2, Some(bad)).lines(b"a\nb"), Err(RunError::Marks(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // One empty line is a run of one.
        assert_eq!(meta(1, None).lines(b"").unwrap().count(), 1);
    }

    #[test]
    fn lines_that_do_not_continue_the_run_are_refused() {
        let mut run = RunEncoder::new();
        assert!(run.push(b"abc", 10, 14, None, None));
        assert!(!run.push(b"def", 15, 19, None, None), "a gap");
        assert!(!run.push(b"def", 14, 19, None, None), "crlf after lf");
        assert!(!run.push(b"d\nf", 14, 18, None, None), "a newline inside");
        assert!(run.push(b"def", 14, 18, None, None));
        let mut fresh = RunEncoder::new();
        assert!(
            !fresh.push(b"abc", 0, 9, None, None),
            "a span no rule gives"
        );
        assert_eq!(
            (run.lines(), run.value(), run.end()),
            (2, &b"abc\ndef"[..], 18)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// What `fuzz/fuzz_targets/wire_run.rs` checks, in the suite:
        /// arbitrary headers and bytes read as their lines or are refused.
        #[test]
        fn arbitrary_runs_read_as_the_value_or_are_refused(
            lines in 0u64..6,
            crlf in any::<bool>(),
            marks in proptest::option::of("[0-9:,a-z=]{0,16}"),
            offset in proptest::option::of(0u64..1000),
            value in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), any::<u8>()], 0..24),
        ) {
            let meta = RecordMeta {
                file: Some(b"f"),
                offset,
                lines: Some(lines),
                crlf,
                marks: marks.as_deref().map(str::as_bytes),
                ..RecordMeta::default()
            };
            if let Ok(run) = meta.lines(&value) {
                let got: Vec<_> = run.collect();
                prop_assert_eq!(got.len() as u64, lines);
                let parts: Vec<&[u8]> = got.iter().map(|l| l.value).collect();
                prop_assert_eq!(parts.join(&b'\n'), value.clone());
                for w in got.windows(2) {
                    if let (Some(a), Some(b)) = (w[0].offset, w[1].offset) {
                        prop_assert!(b >= a);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn any_file_cut_into_runs_reads_back_the_same_lines(
            lines in proptest::collection::vec(("[a-z \\r]{0,30}", any::<bool>()), 0..40),
            max_line in 1usize..25,
            pieces in proptest::collection::vec(0usize..20, 0..3),
        ) {
            let mut text = Vec::new();
            for (l, crlf) in &lines {
                text.extend_from_slice(l.as_bytes());
                if *crlf { text.push(b'\r'); }
                text.push(b'\n');
            }
            let sent = lines_of(&text, max_line, &pieces);
            same(&sent, &unpack(&pack(&sent)));
        }
    }
}
