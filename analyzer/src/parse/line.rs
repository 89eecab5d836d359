//! The parsed line every parser returns, and why a line does not parse.

use std::fmt;

/// One parsed access-log line, borrowing from the raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLine<'a> {
    pub client: &'a [u8],
    pub user: Option<&'a [u8]>,
    /// Event time, milliseconds since the Unix epoch (UTC); `i64::MIN` when
    /// the format has no time (the record timestamp stands in for it).
    pub time_ms: i64,
    /// The raw request between the quotes, escapes untouched.
    pub request: &'a [u8],
    pub method: Option<&'a [u8]>,
    pub path: Option<&'a [u8]>,
    pub status: u16,
    pub body_bytes: u64,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    /// `$request_time` in seconds, when a number follows the user agent
    /// (the common `combined` + `$request_time` format).
    pub request_time_s: Option<f64>,
    /// `$upstream_response_time` in seconds, summed over a list (formats only).
    pub upstream_time_s: Option<f64>,
    /// `$host` / `%v` (formats only).
    pub host: Option<&'a [u8]>,
    /// How the text fields above are escaped; [`AccessLine::decoded`] undoes it.
    pub escape: Escape,
}

/// How a server escaped the text it logged. Fields are kept raw (parsing
/// never copies) and decoded on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Escape {
    /// nginx's default (`\x22` for a quote, `\xHH` for other bytes) and
    /// Apache's (`\"`, `\\`, `\xhh`, `\n`, `\t`).
    #[default]
    Default,
    /// JSON string escapes: nginx `escape=json`, JSON lines.
    Json,
    /// nginx `escape=none`: bytes as they came.
    None,
}

impl<'a> AccessLine<'a> {
    /// A text field with the server's escapes undone (borrowed when it has none).
    pub fn decoded(&self, field: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        unescape(self.escape, field)
    }
}

/// Undoes `escape` in `raw`; an escape that is not well-formed stays as it is.
pub fn unescape(escape: Escape, raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if escape == Escape::None || memchr::memchr(b'\\', raw).is_none() {
        return std::borrow::Cow::Borrowed(raw);
    }
    let hex = |b: &[u8]| -> Option<u32> {
        let s = std::str::from_utf8(b).ok()?;
        u32::from_str_radix(s, 16).ok()
    };
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' || i + 1 >= raw.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let next = raw[i + 1];
        let simple = match next {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'n' => Some(b'\n'),
            b't' => Some(b'\t'),
            b'r' => Some(b'\r'),
            b'/' if escape == Escape::Json => Some(b'/'),
            b'b' if escape == Escape::Json => Some(0x08),
            b'f' if escape == Escape::Json => Some(0x0c),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            i += 2;
            continue;
        }
        match (escape, next) {
            (Escape::Default, b'x')
                if i + 4 <= raw.len() && raw[i + 2..i + 4].iter().all(u8::is_ascii_hexdigit) =>
            {
                out.push(hex(&raw[i + 2..i + 4]).unwrap_or(0) as u8);
                i += 4;
            }
            (Escape::Json, b'u')
                if i + 6 <= raw.len() && raw[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit) =>
            {
                let mut cp = hex(&raw[i + 2..i + 6]).unwrap_or(0);
                let mut len = 6;
                // A surrogate pair: \uD83D\uDE00.
                if (0xD800..0xDC00).contains(&cp)
                    && raw.get(i + 6..i + 8) == Some(b"\\u")
                    && raw
                        .get(i + 8..i + 12)
                        .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
                {
                    let lo = hex(&raw[i + 8..i + 12]).unwrap_or(0);
                    if (0xDC00..0xE000).contains(&lo) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        len = 12;
                    }
                }
                let c = char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER);
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                i += len;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Why a line is not an access-log line: what was expected and at which byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError {
    pub at: usize,
    /// What was expected (`a 3-digit status`), or with [`ErrorKind::Ends`]
    /// where the line ended (`inside the user-agent field`).
    pub expected: &'static str,
    pub kind: ErrorKind,
}

/// How a line failed, for operators (and the dead-letter counts by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A byte that does not fit the format.
    Expected,
    /// The line ends before the format does: a line cut short in the file
    /// (a crash mid-write, a full disk) or a piece of a line.
    Ends,
    /// The line holds a NUL byte: servers escape control bytes, so this is
    /// damage (a file preallocated before a crash is full of NULs).
    Damaged,
}

impl ParseError {
    /// `expected` was not found at byte `at`.
    #[inline]
    pub const fn expected(at: usize, expected: &'static str) -> Self {
        ParseError {
            at,
            expected,
            kind: ErrorKind::Expected,
        }
    }

    /// The line ends at byte `at`, `where_` (`inside the user-agent field`).
    #[inline]
    pub const fn ends(at: usize, where_: &'static str) -> Self {
        ParseError {
            at,
            expected: where_,
            kind: ErrorKind::Ends,
        }
    }

    /// A NUL byte at `at`, or `None` for a line without one.
    #[inline]
    pub fn nul_byte(line: &[u8]) -> Option<Self> {
        memchr::memchr(0, line).map(|at| ParseError {
            at,
            expected: "a NUL byte: a damaged line (servers escape control bytes)",
            kind: ErrorKind::Damaged,
        })
    }

    /// A short name of the kind, for counts (`expected`, `ends`, `damaged`).
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ErrorKind::Expected => "expected",
            ErrorKind::Ends => "ends",
            ErrorKind::Damaged => "damaged",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::Expected => write!(f, "expected {} at byte {}", self.expected, self.at),
            ErrorKind::Ends => write!(f, "line ends {} at byte {}", self.expected, self.at),
            ErrorKind::Damaged => write!(f, "{} at byte {}", self.expected, self.at),
        }
    }
}

impl std::error::Error for ParseError {}

/// A `'static` copy of an error description, kept once per distinct text
/// (so that parse errors stay `Copy` and cheap). Formats are compiled at
/// start-up, so this holds a few strings per format, not per line.
pub(crate) fn intern(s: String) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static TEXTS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = TEXTS.get_or_init(Default::default).lock().unwrap();
    if let Some(&t) = set.get(s.as_str()) {
        return t;
    }
    let t: &'static str = Box::leak(s.into_boxed_str());
    set.insert(t);
    t
}
