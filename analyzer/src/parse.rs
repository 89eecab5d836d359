//! The nginx `combined` parser (also reads Apache `combined`), byte-level, no
//! allocation: fields borrow from the line.
//!
//! ```text
//! $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"
//! ```
//!
//! Why not a regex: the scripts logpipe replaces used one that silently dropped
//! IPv6 clients, logged-in users and `"-"` requests. Here every field is cut at
//! its real delimiter, and the failure names the byte where the line stopped
//! making sense.
//! - `$remote_user` ends at ` [` (a user name may contain spaces);
//! - quoted fields honour both escapes: Apache's `\"` and nginx's `\x22` (the
//!   latter contains no `"`, so it needs no special case to skip);
//! - `$request` may be `-` or garbage (status 400): method and path are then `None`;
//! - `$body_bytes_sent` may be `-` (Apache's `%b` for zero).

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
    pub const fn expected(at: usize, expected: &'static str) -> Self {
        ParseError {
            at,
            expected,
            kind: ErrorKind::Expected,
        }
    }

    /// The line ends at byte `at`, `where_` (`inside the user-agent field`).
    pub const fn ends(at: usize, where_: &'static str) -> Self {
        ParseError {
            at,
            expected: where_,
            kind: ErrorKind::Ends,
        }
    }

    /// A NUL byte at `at`, or `None` for a line without one.
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

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn at_end(&self) -> bool {
        self.i >= self.b.len()
    }

    /// `lit` here, else: the line ended (`ends`), or something else is here.
    fn expect(
        &mut self,
        lit: &'static [u8],
        what: &'static str,
        ends: &'static str,
    ) -> Result<(), ParseError> {
        let rest = &self.b[self.i..];
        if rest.starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else if lit.starts_with(rest) {
            Err(ParseError::ends(self.b.len(), ends))
        } else {
            Err(ParseError::expected(self.i, what))
        }
    }

    /// Bytes up to (not including) the next `delim`; the cursor moves past
    /// it. No `delim`: the line ends inside this field.
    fn until(&mut self, delim: u8, ends: &'static str) -> Result<&'a [u8], ParseError> {
        let rest = &self.b[self.i..];
        match memchr::memchr(delim, rest) {
            Some(n) => {
                self.i += n + 1;
                Ok(&rest[..n])
            }
            None => Err(ParseError::ends(self.b.len(), ends)),
        }
    }

    /// A `"`-quoted field; `\x` escapes are skipped over, not decoded.
    fn quoted(&mut self, what: &'static str, ends: &'static str) -> Result<&'a [u8], ParseError> {
        self.expect(b"\"", what, ends)?;
        let start = self.i;
        let b = self.b;
        let mut j = start;
        while j < b.len() {
            match memchr::memchr2(b'"', b'\\', &b[j..]) {
                Some(n) if b[j + n] == b'\\' => j += n + 2,
                Some(n) => {
                    self.i = j + n + 1;
                    return Ok(&b[start..j + n]);
                }
                None => break,
            }
        }
        Err(ParseError::ends(b.len(), ends))
    }

    /// Decimal digits; `ends` when the line ends before the first one.
    fn uint(&mut self, what: &'static str, ends: &'static str) -> Result<u64, ParseError> {
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(&c) = self.b.get(self.i) {
            if !c.is_ascii_digit() {
                break;
            }
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                .ok_or(ParseError::expected(start, what))?;
            self.i += 1;
        }
        if self.i == start {
            return Err(if self.at_end() {
                ParseError::ends(self.i, ends)
            } else {
                ParseError::expected(self.i, what)
            });
        }
        Ok(v)
    }
}

fn opt_dash(f: &[u8]) -> Option<&[u8]> {
    (f != b"-").then_some(f)
}

/// Parses one whole nginx/Apache `combined` line, with an optional trailing
/// `$request_time` (and further trailing fields after a space, ignored).
///
/// Every field up to the user agent's closing quote must be there: a line
/// that ends earlier (cut short in the file) is an error saying where it
/// ends, never a request with made-up values. Apache `common` lines (no
/// referer, no agent) need `--format common`.
pub fn parse_combined(line: &[u8]) -> Result<AccessLine<'_>, ParseError> {
    parse_combined_line(line, false)
}

/// A line the producer cut at `--max-line-bytes` (the `cut` header): it
/// counts when the cut falls after the body bytes (they are followed by the
/// space that opens the referer); the field the cut falls in and everything
/// after it are absent, the trailing `$request_time` too.
pub fn parse_combined_cut(line: &[u8]) -> Result<AccessLine<'_>, ParseError> {
    parse_combined_line(line, true)
}

fn parse_combined_line(line: &[u8], cut: bool) -> Result<AccessLine<'_>, ParseError> {
    if let Some(e) = ParseError::nul_byte(line) {
        return Err(e);
    }
    let mut c = Cursor { b: line, i: 0 };
    let client = c.until(b' ', "inside the client address")?;
    if client.is_empty() {
        return Err(ParseError::expected(0, "client address"));
    }
    // `$remote_user` may contain spaces: it ends at the ` [` that opens the time.
    let ident_start = c.i;
    let rest = &line[ident_start..];
    let open = crate::scan::find_lit(rest, b" [")
        .ok_or(ParseError::ends(line.len(), "before the time"))?;
    // ident (`-`) and user are separated by the first space of this stretch.
    let stretch = &rest[..open];
    let user = match memchr::memchr(b' ', stretch) {
        Some(sp) => opt_dash(&stretch[sp + 1..]),
        None => return Err(ParseError::expected(c.i, "'- ' ident field")),
    };
    c.i = ident_start + open + 2;
    let time_start = c.i;
    let time = c.until(b']', "inside the time")?;
    let time_ms = parse_clf_time(time).ok_or(ParseError::expected(
        time_start,
        "time like 10/Oct/2000:13:55:36 -0700",
    ))?;
    c.expect(b" ", "a space", "after the time")?;
    let request = c.quoted("'\"' opening the request", "inside the request field")?;
    c.expect(b" ", "a space", "after the request")?;
    let status_at = c.i;
    let status = c.uint("status", "before the status")?;
    if c.at_end() {
        return Err(ParseError::ends(c.i, "inside the status"));
    }
    if !(100..=999).contains(&status) || c.i - status_at != 3 {
        return Err(ParseError::expected(status_at, "a 3-digit status"));
    }
    // The status is whole only when something follows it.
    c.expect(b" ", "a space", "after the status")?;
    let bytes_at = c.i;
    let body_bytes = if line[c.i..].starts_with(b"-") {
        c.i += 1;
        0
    } else {
        c.uint("body bytes or '-'", "before the body bytes")?
    };
    // The body bytes are whole only when the referer's space follows them.
    if c.at_end() {
        return Err(ParseError::ends(
            c.i,
            "after the body bytes (before the referer)",
        ));
    }
    if line[c.i] != b' ' {
        return Err(ParseError::expected(bytes_at, "body bytes or '-'"));
    }
    c.i += 1;
    let mut tail = || -> Result<_, ParseError> {
        let referer = opt_dash(c.quoted("'\"' opening the referer", "inside the referer field")?);
        c.expect(b" ", "a space", "after the referer")?;
        let user_agent =
            opt_dash(c.quoted("'\"' opening the user agent", "inside the user-agent field")?);
        let rest = &line[c.i..];
        let request_time_s = match rest.first() {
            None => None,
            Some(b' ') => {
                let r = &rest[1..];
                match memchr::memchr(b' ', r) {
                    Some(end) => parse_seconds(&r[..end]),
                    // The last bytes of a cut line may be a number cut short.
                    None if cut => None,
                    None => parse_seconds(r),
                }
            }
            Some(_) => {
                return Err(ParseError::expected(
                    c.i,
                    "a space or the end of the line after the user agent",
                ))
            }
        };
        Ok((referer, user_agent, request_time_s))
    };
    let (referer, user_agent, request_time_s) = match tail() {
        Ok(t) => t,
        // A cut line keeps what came before the field the cut fell in.
        Err(e) if cut && e.kind == ErrorKind::Ends => (None, None, None),
        Err(e) => return Err(e),
    };
    let (method, path) = split_request(request);
    Ok(AccessLine {
        client,
        user,
        time_ms,
        request,
        method,
        path,
        status: status as u16,
        body_bytes,
        referer,
        user_agent,
        request_time_s,
        upstream_time_s: None,
        host: None,
        escape: Escape::Default,
    })
}

/// `0.123`, `12`, `1.5` → seconds; anything else (`-`, names) → `None`.
pub(crate) fn parse_seconds(b: &[u8]) -> Option<f64> {
    let ok = !b.is_empty()
        && b[0].is_ascii_digit()
        && b.iter().all(|&c| c.is_ascii_digit() || c == b'.')
        && b.iter().filter(|&&c| c == b'.').count() <= 1;
    if !ok {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// `GET /path HTTP/1.1` → method and path; `None` for `-` or garbage.
pub(crate) fn split_request(req: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let Some(sp) = memchr::memchr(b' ', req) else {
        return (None, None);
    };
    let method = &req[..sp];
    if method.is_empty() || !method.iter().all(|c| c.is_ascii_uppercase()) {
        return (None, None);
    }
    let rest = &req[sp + 1..];
    let path = match memchr::memrchr(b' ', rest) {
        Some(e) if rest[e + 1..].starts_with(b"HTTP/") => &rest[..e],
        _ => rest,
    };
    (Some(method), Some(path))
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0i64, |v, &c| v * 10 + i64::from(c - b'0')))
}

/// Parses `$time_local`: `10/Oct/2000:13:55:36 -0700` → ms since the epoch (UTC).
pub fn parse_clf_time(t: &[u8]) -> Option<i64> {
    if t.len() != 26 || t[2] != b'/' || t[6] != b'/' || t[11] != b':' || t[20] != b' ' {
        return None;
    }
    let days = clf_days(&t[..11])?;
    let (h, mi, s) = (
        digits(&t[12..14])?,
        digits(&t[15..17])?,
        digits(&t[18..20])?,
    );
    if t[14] != b':' || t[17] != b':' || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let sign = match t[21] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (zh, zm) = (digits(&t[22..24])?, digits(&t[24..26])?);
    let offset_s = sign * (zh * 3600 + zm * 60);
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) - offset_s) * 1000)
}

/// Days since the epoch of `10/Oct/2000`. Lines come in time order, so the
/// last date is remembered (per thread) and most lines skip the arithmetic.
fn clf_days(date: &[u8]) -> Option<i64> {
    use std::cell::Cell;
    thread_local! {
        static LAST: Cell<([u8; 11], i64)> = const { Cell::new(([0; 11], 0)) };
    }
    let key: [u8; 11] = date.try_into().ok()?;
    let (k, d) = LAST.get();
    if k == key {
        return Some(d);
    }
    let day = digits(&date[0..2])?;
    let month = MONTHS.iter().position(|m| &date[3..6] == *m)? as i64 + 1;
    let year = digits(&date[7..11])?;
    if !(1..=31).contains(&day) {
        return None;
    }
    let d = days_from_civil(year, month, day);
    LAST.set((key, d));
    Some(d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> AccessLine<'_> {
        parse_combined(s.as_bytes()).unwrap_or_else(|e| panic!("{e}: {s}"))
    }

    #[test]
    fn plain_ipv4_line() {
        let l = p(
            r#"83.149.9.216 - - [17/May/2015:10:05:03 +0000] "GET /presentations/logstash-monitorama-2013/images/kibana-search.png HTTP/1.1" 200 203023 "http://semicomplete.com/presentations/logstash-monitorama-2013/" "Mozilla/5.0 (Macintosh)""#,
        );
        assert_eq!(l.client, b"83.149.9.216");
        assert_eq!(l.user, None);
        assert_eq!(l.time_ms, 1_431_857_103_000);
        assert_eq!(l.method, Some(&b"GET"[..]));
        assert_eq!(
            l.path,
            Some(&b"/presentations/logstash-monitorama-2013/images/kibana-search.png"[..])
        );
        assert_eq!((l.status, l.body_bytes), (200, 203_023));
        assert_eq!(
            l.referer,
            Some(&b"http://semicomplete.com/presentations/logstash-monitorama-2013/"[..])
        );
        assert_eq!(l.user_agent, Some(&b"Mozilla/5.0 (Macintosh)"[..]));
        assert_eq!(l.request_time_s, None);
    }

    #[test]
    fn request_time_after_the_agent() {
        let base =
            r#"10.0.0.1 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8""#;
        assert_eq!(p(&format!("{base} 0.125")).request_time_s, Some(0.125));
        assert_eq!(p(&format!("{base} 3 upstream")).request_time_s, Some(3.0));
        assert_eq!(p(&format!("{base} -")).request_time_s, None);
        assert_eq!(p(&format!("{base} 1.2.3")).request_time_s, None);
        assert_eq!(p(&format!("{base} example.com")).request_time_s, None);
    }

    #[test]
    fn ipv6_client_and_logged_in_user_with_space() {
        let l = p(
            r#"2001:db8::7 - alice smith [01/Jan/2024:00:00:00 +0100] "POST /login HTTP/2.0" 302 0 "-" "curl/8.0""#,
        );
        assert_eq!(l.client, b"2001:db8::7");
        assert_eq!(l.user, Some(&b"alice smith"[..]));
        assert_eq!(l.time_ms, 1_704_063_600_000);
        assert_eq!(l.referer, None);
    }

    #[test]
    fn dash_request_garbage_request_and_dash_bytes() {
        let l = p(r#"10.0.0.1 - - [01/Jan/2024:00:00:00 +0000] "-" 400 - "-" "-""#);
        assert_eq!(
            (l.method, l.path, l.status, l.body_bytes),
            (None, None, 400, 0)
        );
        let l = p(
            r#"10.0.0.1 - - [01/Jan/2024:00:00:00 +0000] "\x16\x03\x01\x00\xF4\x01" 400 157 "-" "-""#,
        );
        assert_eq!((l.method, l.status, l.body_bytes), (None, 400, 157));
    }

    #[test]
    fn both_quote_escapes_inside_fields() {
        let l = p(
            r#"10.0.0.1 - - [01/Jan/2024:00:00:00 +0000] "GET /a\"b HTTP/1.1" 200 5 "-" "say \"hi\" \x22x\x22""#,
        );
        assert_eq!(l.path, Some(&br#"/a\"b"#[..]));
        assert_eq!(l.user_agent, Some(&br#"say \"hi\" \x22x\x22"#[..]));
    }

    #[test]
    fn trailing_fields_after_a_space_are_accepted_and_common_lines_are_not() {
        let l = p(r#"::1 - - [01/Jan/2024:00:00:09 +0000] "GET / HTTP/1.1" 200 1 "-" "ua" 0.004"#);
        assert_eq!(l.user_agent, Some(&b"ua"[..]));
        // A `common` line is a `combined` line cut after its size.
        let e = parse_combined(br#"::1 - - [01/Jan/2024:00:00:09 -0000] "HEAD / HTTP/1.0" 304 0"#)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "line ends after the body bytes (before the referer) at byte 60"
        );
        let e = parse_combined(
            br#"::1 - - [01/Jan/2024:00:00:09 +0000] "GET / HTTP/1.1" 200 1 "-" "ua"x"#,
        )
        .unwrap_err();
        assert_eq!(
            (e.expected, e.at),
            ("a space or the end of the line after the user agent", 68)
        );
    }

    #[test]
    fn malformed_lines_say_where() {
        let e = |s: &str| parse_combined(s.as_bytes()).unwrap_err();
        assert_eq!(
            e("").to_string(),
            "line ends inside the client address at byte 0"
        );
        assert_eq!(e("garbage").kind, ErrorKind::Ends);
        assert_eq!(
            e("1.2.3.4 - - [bad] \"GET /\" 200 1").expected,
            "time like 10/Oct/2000:13:55:36 -0700"
        );
        let err = e(r#"1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" abc 1"#);
        assert_eq!((err.expected, err.at), ("status", 58));
        let err = e(r#"1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 2000 1 "-" "-""#);
        assert_eq!((err.expected, err.at), ("a 3-digit status", 58));
        assert_eq!(
            e(r#"1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1 200 1"#).to_string(),
            "line ends inside the request field at byte 62"
        );
        let err =
            e("1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"x\0\0\0");
        assert_eq!((err.kind, err.at), (ErrorKind::Damaged, 70));
    }

    #[test]
    fn a_line_cut_short_in_the_file_is_an_error_naming_the_field() {
        // As in the real log of tests/data: the agent lost its closing quote.
        let line = r#"46.118.127.106 - - [20/May/2015:12:05:17 +0000] "GET /x.py HTTP/1.1" 200 235 "-" "Mozilla/5.0 (compatible; Googlebot/2.1"#;
        assert_eq!(
            parse_combined(line.as_bytes()).unwrap_err().to_string(),
            format!(
                "line ends inside the user-agent field at byte {}",
                line.len()
            )
        );
        let e =
            parse_combined(br#"1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "x" 200 1 "-" "trailing\"#)
                .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Ends);
        // Ending inside the size would have added made-up bytes.
        let e =
            parse_combined(br#"1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "x" 200 12"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Ends);
        let e = parse_combined(br#"1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "x" 20"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Ends);
    }

    #[test]
    fn a_line_the_producer_cut_counts_once_its_size_is_whole() {
        let full = r#"1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 1234 "https://example.com/" "Mozilla/5.0" 0.250"#;
        let after_size = full.find(" \"https").unwrap();
        for cut in 0..full.len() {
            let r = parse_combined_cut(&full.as_bytes()[..cut]);
            if cut <= after_size {
                assert!(r.is_err(), "cut at {cut}: {:?}", r);
                continue;
            }
            let l = r.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_eq!((l.status, l.body_bytes), (200, 1234), "cut at {cut}");
            // The field the cut falls in is absent; the time at the end too.
            assert_eq!(l.request_time_s, None, "cut at {cut}");
            if cut < full.find(" \"Mozilla").unwrap() + 13 {
                assert_eq!(l.user_agent, None, "cut at {cut}");
            }
        }
        assert_eq!(
            parse_combined_cut(full.as_bytes()).unwrap().request_time_s,
            None
        );
        assert_eq!(
            parse_combined(full.as_bytes()).unwrap().request_time_s,
            Some(0.25)
        );
    }

    #[test]
    fn time_parsing_handles_offsets_and_rejects_nonsense() {
        assert_eq!(parse_clf_time(b"01/Jan/1970:00:00:00 +0000"), Some(0));
        assert_eq!(parse_clf_time(b"01/Jan/1970:01:00:00 +0100"), Some(0));
        assert_eq!(
            parse_clf_time(b"29/Feb/2024:23:59:59 -0530"),
            Some(1_709_270_999_000)
        );
        assert_eq!(parse_clf_time(b"01/Foo/2024:00:00:00 +0000"), None);
        assert_eq!(parse_clf_time(b"01/Jan/2024:25:00:00 +0000"), None);
        assert_eq!(parse_clf_time(b"01/Jan/2024:00:00:00 +00"), None);
    }
}
