//! What a record's headers say about its line: one reader of the `file`,
//! `offset`, `partial` and `cut` headers for every consumer of the topic
//! (analyzer, archive, test kit). Where a header appears twice, the last
//! one wins, as in Kafka's own tools.

use std::ffi::CStr;

/// A header list that can be asked for the last value of a name.
///
/// Implemented for rdkafka's header types here and for the consumer
/// crate's in-place batch records there (which compares names in C).
pub trait HeaderLookup {
    /// How many headers the list holds.
    fn count(&self) -> usize;
    /// The value of the last header called `name` (`Some(&[])` for a header
    /// without a value). `c_name` is the same name as a C string, for lists
    /// that compare names without turning each into a `&str`.
    fn last(&self, name: &str, c_name: &CStr) -> Option<&[u8]>;
}

/// The headers of one record that locate and qualify its line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordMeta<'a> {
    /// The [`FILE`](crate::FILE) header: identity of the file generation.
    pub file: Option<&'a [u8]>,
    /// The [`OFFSET`](crate::OFFSET) header, when it is a decimal number.
    pub offset: Option<u64>,
    /// The [`PARTIAL`](crate::PARTIAL) header: this record is a piece of a line.
    pub partial: Option<&'a [u8]>,
    /// The [`CUT`](crate::CUT) header, when it is a decimal number: the full
    /// length of a line cut short.
    pub cut: Option<u64>,
    /// The [`LINES`](crate::LINES) header of a v2 record (a run of lines):
    /// its line count; `Some(0)` when it is not a positive decimal. `None`:
    /// a v1 record, one line.
    pub lines: Option<u64>,
    /// A v2 record whose lines ended in `\r\n` ([`EOL`](crate::EOL) `crlf`).
    pub crlf: bool,
    /// The [`MARKS`](crate::MARKS) header of a v2 record.
    pub marks: Option<&'a [u8]>,
}

impl<'a> RecordMeta<'a> {
    /// Reads the headers of a record (`None`: a record without headers).
    /// The exceptional headers are only searched on records with more than
    /// the headers every record of their version has
    /// ([`LINE_HEADERS`](crate::LINE_HEADERS) for v1,
    /// [`RUN_HEADERS`](crate::RUN_HEADERS) for v2).
    pub fn from_headers<H: HeaderLookup + ?Sized>(h: Option<&'a H>) -> Self {
        let Some(h) = h else {
            return RecordMeta::default();
        };
        let count = h.count();
        let lines = if count >= crate::RUN_HEADERS {
            h.last(crate::LINES, crate::LINES_C)
                .map(|n| parse_decimal(n).unwrap_or(0))
        } else {
            None
        };
        let mut meta = RecordMeta {
            file: h.last(crate::FILE, crate::FILE_C),
            offset: h
                .last(crate::OFFSET, crate::OFFSET_C)
                .and_then(parse_decimal),
            lines,
            ..RecordMeta::default()
        };
        if lines.is_some() {
            if count > crate::RUN_HEADERS {
                meta.crlf = h.last(crate::EOL, crate::EOL_C) == Some(b"crlf");
                meta.marks = h.last(crate::MARKS, crate::MARKS_C);
            }
        } else if count > crate::LINE_HEADERS {
            meta.partial = h.last(crate::PARTIAL, crate::PARTIAL_C);
            meta.cut = h.last(crate::CUT, crate::CUT_C).and_then(parse_decimal);
        }
        meta
    }

    /// (`file`, `offset`) when the record has both: what [`Dedup`](crate::Dedup) keys on.
    pub fn position(&self) -> Option<(&'a [u8], u64)> {
        Some((self.file?, self.offset?))
    }
}

/// A header value as an unsigned decimal: ASCII digits only, no sign, no
/// blanks, at most 19 digits (always fits a `u64`). Also the compiled
/// formats' status and body-bytes reader: `#[inline]` for their hot path.
#[inline]
pub fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

fn last_of<'h, H: rdkafka::message::Headers>(h: &'h H, name: &str) -> Option<&'h [u8]> {
    h.iter()
        .filter(|x| x.key == name)
        .last()
        .map(|x| x.value.unwrap_or(&[]))
}

impl HeaderLookup for rdkafka::message::BorrowedHeaders {
    fn count(&self) -> usize {
        rdkafka::message::Headers::count(self)
    }
    fn last(&self, name: &str, _: &CStr) -> Option<&[u8]> {
        last_of(self, name)
    }
}

impl HeaderLookup for rdkafka::message::OwnedHeaders {
    fn count(&self) -> usize {
        rdkafka::message::Headers::count(self)
    }
    fn last(&self, name: &str, _: &CStr) -> Option<&[u8]> {
        last_of(self, name)
    }
}

/// Owned `(name, value)` pairs, as a test or a dead-letter reader keeps them.
impl HeaderLookup for [(String, Vec<u8>)] {
    fn count(&self) -> usize {
        self.len()
    }
    fn last(&self, name: &str, _: &CStr) -> Option<&[u8]> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};

    fn owned(pairs: &[(&str, &str)]) -> OwnedHeaders {
        pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(*v),
            })
        })
    }

    #[test]
    fn every_line_header_is_read_and_the_last_duplicate_wins() {
        let h = owned(&[
            ("host", "web1"),
            ("source", "/l/a.log"),
            ("file", "1:2:0"),
            ("offset", "10"),
            ("offset", "42"),
            ("partial", "idle"),
            ("cut", "70000"),
        ]);
        let m = RecordMeta::from_headers(Some(&h));
        assert_eq!(m.file, Some(&b"1:2:0"[..]));
        assert_eq!(m.offset, Some(42));
        assert_eq!(m.partial, Some(&b"idle"[..]));
        assert_eq!(m.cut, Some(70000));
        assert_eq!(m.position(), Some((&b"1:2:0"[..], 42)));
        // The same answers from owned pairs.
        let pairs: Vec<(String, Vec<u8>)> = [("file", "1:2:0"), ("offset", "10"), ("offset", "42")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        let m = RecordMeta::from_headers(Some(&pairs[..]));
        assert_eq!(m.position(), Some((&b"1:2:0"[..], 42)));
    }

    #[test]
    fn marks_are_only_looked_for_beyond_the_four_line_headers() {
        // A record of four headers is a whole line even if one is named `cut`.
        let h = owned(&[("file", "f"), ("offset", "1"), ("cut", "9"), ("host", "h")]);
        let m = RecordMeta::from_headers(Some(&h));
        assert_eq!((m.partial, m.cut), (None, None));
        assert_eq!(
            RecordMeta::from_headers::<OwnedHeaders>(None),
            RecordMeta::default()
        );
    }

    #[test]
    fn offsets_are_plain_decimals_or_nothing() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(
            parse_decimal(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b" 5",
            b"5x",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_decimal(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let h = owned(&[("file", "f"), ("offset", "twelve")]);
        assert_eq!(RecordMeta::from_headers(Some(&h)).position(), None);
    }
}
