//! Log formats given the way servers define them: an nginx `log_format`
//! string or an Apache `LogFormat` string, pasted as-is, compiled once into a
//! list of literals and fields that a byte-level matcher walks (no regex).
//!
//! ```text
//! $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time
//! %h %l %u %t \"%r\" %>s %b \"%{Referer}i\" \"%{User-agent}i\" %D
//! ```
//!
//! Matching: a field ends where the literal after it begins. A field between
//! two `"` is quoted: it ends at a `"` not escaped by `\` (Apache's `\"`;
//! nginx writes `\x22`, which contains no quote), so a quote inside a user
//! agent does not end it early. Two fields with no literal between them
//! cannot be told apart, and are rejected when the format is compiled.
//! Variables logpipe has no use for are matched and ignored.
//!
//! Once the time and status are read, a line that ends early (cut inside the
//! user agent, as real logs have) still counts: the field it ends in keeps what is there, later ones are absent;
//! bytes after the last field are ignored (formats grow at the end).
//!
//! `$upstream_response_time` can be a list (`0.002, 0.010 : 0.5` — commas
//! for retries, colons for internal redirects): its value is the **sum**, the
//! time the request spent upstream in total; `-` entries count as 0.

mod compile;

use std::fmt;

use super::scan::{find_lit, opt_dash, parse_seconds, split_request, starts_with, upstream_sum};
use super::time::{parse_clf_time, parse_iso8601, strftime_time};
use super::{AccessLine, Escape, ParseError};
use compile::{
    compile_apache, compile_nginx, describe, describe_end, unwrap_config_line, Tok, Var,
};
use logpipe_wire::parse_decimal as decimal;

/// A compiled format.
#[derive(Debug, Clone)]
pub struct LogFormat {
    toks: Vec<Tok>,
    /// Per token, what an error at it says is expected.
    expected: Vec<&'static str>,
    /// Per token, where the line ends when it ends there.
    ends: Vec<&'static str>,
    /// Per token, whether it is a field between quotes (its end skips `\"`).
    quoted: Vec<bool>,
    /// nginx `escape=` of the pasted `log_format` (Apache: its own, `Default`).
    escape: Escape,
    /// Whether lines carry their time (else the record timestamp is used).
    has_time: bool,
    /// Whether the format has a body-bytes field (a cut line needs it read).
    needs_bytes: bool,
    /// Whether the format has a client address field.
    needs_client: bool,
    spec: String,
}

/// Why a format string cannot be used, naming the offending part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FormatError {}

/// nginx's predefined `combined`.
pub const NGINX_COMBINED: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent""#;
/// Apache's `common`.
pub const APACHE_COMMON: &str = r#"%h %l %u %t "%r" %>s %b"#;
/// Apache's `combined`.
pub const APACHE_COMBINED: &str = r#"%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i""#;

impl LogFormat {
    /// A built-in name (`combined`, `common`, `apache-combined`) or a format
    /// string: nginx when it has `$variables`, Apache when it has `%`
    /// directives. Surrounding quotes from a config file are removed.
    pub fn new(spec: &str) -> Result<LogFormat, FormatError> {
        let trimmed = spec.trim();
        let unwrapped;
        let mut escape = Escape::Default;
        let s = match trimmed {
            "combined" => NGINX_COMBINED,
            "common" => APACHE_COMMON,
            "apache-combined" => APACHE_COMBINED,
            _ => {
                let (body, esc) = unwrap_config_line(trimmed)?;
                unwrapped = body;
                escape = esc;
                &unwrapped
            }
        };
        let toks = if s.contains('$') {
            compile_nginx(s)?
        } else if s.contains('%') {
            compile_apache(s)?
        } else {
            return Err(FormatError(format!(
                "'{spec}' is neither a built-in format (combined, common, apache-combined, json) \
                 nor a format string with nginx $variables or Apache %directives"
            )));
        };
        let has = |v: Var| toks.iter().any(|t| matches!(t, Tok::Var(x, _) if *x == v));
        // Without a time in the line, the record's timestamp (when the
        // producer read the line) is the event time: deterministic on replay.
        let has_time = [
            Var::TimeLocal,
            Var::TimeIso8601,
            Var::EpochSeconds,
            Var::EpochMillis,
            Var::EpochMicros,
            Var::TimeStrftime,
        ]
        .into_iter()
        .any(has);
        if !has(Var::Status) {
            return Err(FormatError(format!(
                "'{s}' has no status ($status, %>s): error rates need it"
            )));
        }
        for w in toks.windows(2) {
            if let [Tok::Var(_, a), Tok::Var(_, b)] = w {
                return Err(FormatError(format!(
                    "{a} and {b} follow each other with nothing between them: \
                     where one ends cannot be known"
                )));
            }
        }
        let needs_bytes = has(Var::BodyBytes);
        let expected = (0..toks.len()).map(|k| describe(&toks, k)).collect();
        let ends = (0..toks.len()).map(|k| describe_end(&toks, k)).collect();
        let needs_client = has(Var::Client);
        let quoted = (0..toks.len())
            .map(|k| k > 0 && matches!(&toks[k - 1], Tok::Lit(l) if l.ends_with(b"\"")))
            .collect();
        Ok(LogFormat {
            toks,
            expected,
            ends,
            quoted,
            escape,
            has_time,
            needs_bytes,
            needs_client,
            spec: s.to_string(),
        })
    }

    /// The format string it was compiled from.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Matches one whole line: every token of the format, up to its end;
    /// after a final literal only a space (further fields) or nothing may
    /// follow. A line that ends earlier is an error naming the field.
    pub fn parse<'a>(&self, line: &'a [u8]) -> Result<AccessLine<'a>, ParseError> {
        self.parse_line(line, false)
    }

    /// A line the producer cut at `--max-line-bytes`: it counts when its
    /// time, status, body bytes and client (those the format has) are whole
    /// (each followed by the literal after it); the field the cut falls in
    /// and every later one are absent.
    pub fn parse_cut<'a>(&self, line: &'a [u8]) -> Result<AccessLine<'a>, ParseError> {
        self.parse_line(line, true)
    }

    fn parse_line<'a>(&self, line: &'a [u8], cut: bool) -> Result<AccessLine<'a>, ParseError> {
        if self.escape != Escape::None {
            if let Some(e) = ParseError::nul_byte(line) {
                return Err(e);
            }
        }
        let mut out = AccessLine {
            client: b"",
            user: None,
            time_ms: i64::MIN,
            request: b"",
            method: None,
            path: None,
            status: 0,
            body_bytes: 0,
            referer: None,
            user_agent: None,
            request_time_s: None,
            upstream_time_s: None,
            host: None,
            escape: self.escape,
        };
        let mut forwarded: Option<&[u8]> = None;
        let mut have_status = false;
        let needs_bytes = self.needs_bytes;
        let mut have_bytes = false;
        let mut i = 0;
        let result = (|| -> Result<(), ParseError> {
            for (k, tok) in self.toks.iter().enumerate() {
                match tok {
                    Tok::Lit(l) => {
                        let rest = &line[i..];
                        if !starts_with(rest, l) {
                            return Err(if l.starts_with(rest) {
                                ParseError::ends(line.len(), self.ends[k])
                            } else {
                                ParseError::expected(i, self.expected[k])
                            });
                        }
                        i += l.len();
                        if k + 1 == self.toks.len() && i < line.len() && line[i] != b' ' {
                            return Err(ParseError::expected(
                                i,
                                "a space or the end of the line after the format",
                            ));
                        }
                    }
                    Tok::Var(var, name) => {
                        let quoted = self.quoted[k];
                        // Set when the line ends right after this field,
                        // in the first bytes of the literal after it: the
                        // field is whole, the line is not.
                        let mut ends_after = None;
                        let end = match self.toks.get(k + 1) {
                            // The last field runs to the end of the line; in
                            // a cut line it may be cut short: not read.
                            None if cut => return Ok(()),
                            None => line.len(),
                            Some(Tok::Lit(next)) => {
                                match field_end(line, i, next, quoted, var.is_list()) {
                                    Some(end) => end,
                                    None => {
                                        let rest = &line[i..];
                                        let partial = (1..next.len())
                                            .rev()
                                            .find(|&n| rest.ends_with(&next[..n]))
                                            .filter(|&n| {
                                                let escaped = quoted
                                                    && rest[..rest.len() - n].ends_with(b"\\");
                                                !(var.is_list() || escaped)
                                            });
                                        let Some(n) = partial else {
                                            // The line ends inside this field
                                            // (which may have gone on).
                                            return Err(ParseError::ends(line.len(), self.ends[k]));
                                        };
                                        ends_after =
                                            Some(ParseError::ends(line.len(), self.ends[k + 1]));
                                        line.len() - n
                                    }
                                }
                            }
                            Some(Tok::Var(..)) => unreachable!("rejected when compiled"),
                        };
                        let f = &line[i..end];
                        let at = i;
                        i = end;
                        let err = |expected| ParseError::expected(at, expected);
                        match var {
                            Var::Client => out.client = f,
                            Var::ForwardedFor => forwarded = opt_dash(f),
                            Var::User => out.user = opt_dash(f),
                            Var::TimeLocal => {
                                out.time_ms = parse_clf_time(f)
                                    .ok_or(err("time like 10/Oct/2000:13:55:36 -0700"))?
                            }
                            Var::TimeIso8601 => {
                                out.time_ms = parse_iso8601(f)
                                    .ok_or(err("time like 2000-10-10T13:55:36-07:00"))?
                            }
                            Var::EpochSeconds => {
                                out.time_ms = parse_seconds(f)
                                    .filter(|s| *s < 1e12)
                                    .map(|s| (s * 1000.0).round() as i64)
                                    .ok_or(err("seconds since the epoch like 1704067200.123"))?
                            }
                            Var::EpochMillis | Var::EpochMicros => {
                                let div = if *var == Var::EpochMillis { 1 } else { 1000 };
                                out.time_ms = std::str::from_utf8(f)
                                    .ok()
                                    .and_then(|s| s.parse::<i64>().ok())
                                    .filter(|n| *n >= 0 && *n / div < 100_000_000_000_000)
                                    .map(|n| n / div)
                                    .ok_or(err(
                                        "a whole number of milli- or microseconds since the epoch",
                                    ))?
                            }
                            Var::TimeStrftime => {
                                out.time_ms = strftime_time(f, name)
                                    .ok_or(err("a time in the %{...}t format"))?
                            }
                            Var::Request => {
                                out.request = f;
                                let (m, p) = split_request(f);
                                out.method = out.method.or(m);
                                out.path = out.path.or(p);
                            }
                            Var::Method => out.method = opt_dash(f),
                            Var::Path => out.path = opt_dash(f),
                            Var::Status => {
                                out.status = decimal(f)
                                    .filter(|s| (100..=999).contains(s))
                                    .ok_or(err("a 3-digit status"))?
                                    as u16;
                                have_status = true;
                            }
                            Var::BodyBytes => {
                                out.body_bytes = if f == b"-" {
                                    0
                                } else {
                                    decimal(f).ok_or(err("body bytes or '-'"))?
                                };
                                have_bytes = true;
                            }
                            Var::RequestSeconds => out.request_time_s = parse_seconds(f),
                            Var::RequestMicros => {
                                out.request_time_s = parse_seconds(f).map(|u| u / 1e6)
                            }
                            Var::RequestMillis => {
                                out.request_time_s = parse_seconds(f).map(|u| u / 1e3)
                            }
                            Var::UpstreamSeconds => out.upstream_time_s = upstream_sum(f),
                            Var::Host => out.host = opt_dash(f),
                            Var::Referer => out.referer = opt_dash(f),
                            Var::UserAgent => out.user_agent = opt_dash(f),
                            Var::Ignored | Var::IgnoredList => {}
                        }
                        if let Some(e) = ends_after {
                            return Err(e);
                        }
                    }
                }
            }
            Ok(())
        })();
        // Only a line the producer cut may end early, and only after the
        // fields the metrics need.
        let whole_enough = || {
            let missing = (self.has_time && out.time_ms == i64::MIN)
                || !have_status
                || (needs_bytes && !have_bytes)
                || (self.needs_client && out.client.is_empty());
            !missing
        };
        match result {
            Err(e) if !cut || e.kind != crate::parse::ErrorKind::Ends || !whole_enough() => {
                return Err(e)
            }
            Ok(()) if cut && !whole_enough() => return Err(ParseError::ends(
                line.len(),
                "where the producer cut it (--max-line-bytes), before the fields a request needs",
            )),
            _ => {}
        }
        if out.client.is_empty() {
            // No address field (or `-`): the first hop of X-Forwarded-For.
            if let Some(xff) = forwarded {
                let first = xff.split(|&c| c == b',').next().unwrap_or(xff);
                out.client = first.trim_ascii();
            }
        }
        Ok(out)
    }
}

/// Where a field that is followed by literal `next` ends. A quoted field
/// skips `\`-escaped quotes; a list-valued one (`a, b : c`) skips the spaces
/// inside its separators.
fn field_end(line: &[u8], from: usize, next: &[u8], quoted: bool, list: bool) -> Option<usize> {
    let rest = &line[from..];
    if quoted && next[0] == b'"' {
        let mut j = 0;
        while j < rest.len() {
            match memchr::memchr2(b'"', b'\\', &rest[j..]) {
                Some(n) if rest[j + n] == b'\\' => j += n + 2,
                Some(n) if rest[j + n..].starts_with(next) => return Some(from + j + n),
                Some(n) => j += n + 1,
                None => return None,
            }
        }
        return None;
    }
    let mut j = 0;
    loop {
        let n = find_lit(&rest[j..], next)? + j;
        let inside_list = list
            && next[0] == b' '
            && (rest[..n].ends_with(b",")
                || rest[..n].ends_with(b" :")
                || rest[n..].starts_with(b" : "));
        if !inside_list {
            return Some(from + n);
        }
        j = n + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_that_cannot_work_are_rejected_naming_the_part() {
        // No time: the record timestamp will be used.
        let f = LogFormat::new("$remote_addr $status").unwrap();
        assert_eq!(f.parse(b"1.2.3.4 200").unwrap().time_ms, i64::MIN);
        let e = LogFormat::new("[$time_local] $request_time").unwrap_err();
        assert!(e.0.contains("has no status"), "{e}");
        let e = LogFormat::new("[$time_local] $status$body_bytes_sent").unwrap_err();
        assert!(e.0.contains("$status and $body_bytes_sent"), "{e}");
        let e = LogFormat::new("[$time_local] $status ${host").unwrap_err();
        assert!(e.0.contains("missing its '}'"), "{e}");
        let e = LogFormat::new("%t %>s %{fortnight}t").unwrap_err();
        assert!(e.0.contains("the time directive knows %t"), "{e}");
        // Found by cargo fuzz: a multi-byte character after '%'.
        let e = LogFormat::new("%h %t %>s %\u{6c4}").unwrap_err();
        assert!(e.0.contains("not followed by a directive letter"), "{e}");
        let e = LogFormat::new("jsonish").unwrap_err();
        assert!(e.0.contains("neither a built-in"), "{e}");
    }

    #[test]
    fn quoted_fields_end_at_an_unescaped_quote() {
        let f = LogFormat::new(APACHE_COMBINED).unwrap();
        let l = f
            .parse(br#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /a HTTP/1.0" 200 5 "-" "say \"hi\" now""#)
            .unwrap();
        assert_eq!(l.user_agent, Some(&br#"say \"hi\" now"#[..]));
    }

    #[test]
    fn upstream_lists_are_summed() {
        assert_eq!(upstream_sum(b"0.002, 0.010 : 0.5"), Some(0.512));
        assert_eq!(upstream_sum(b"-, 0.25"), Some(0.25));
        assert_eq!(upstream_sum(b"-"), None);
    }
}

/// Random formats and lines: compiling and matching never panic, and every
/// error points inside the line.
#[cfg(test)]
mod fuzzish {
    use super::*;
    use proptest::prelude::*;

    const PIECES: &[&str] = &[
        "$remote_addr",
        "$remote_user",
        "[$time_local]",
        "$time_iso8601",
        "$msec",
        "\"$request\"",
        "$status",
        "$body_bytes_sent",
        "\"$http_referer\"",
        "\"$http_user_agent\"",
        "$request_time",
        "$upstream_response_time",
        "$upstream_addr",
        "$host",
        "${host}",
        "$",
        "%h",
        "%t",
        "%>s",
        "%b",
        "%D",
        "%{Referer}i",
        "%{ms}T",
        "%{%d/%b/%Y %H:%M:%S}t",
        "%{msec}t",
        "%%",
        "%{",
        " ",
        " - ",
        "\"",
        "[",
        "]",
        ",",
        ":",
    ];

    fn format_string() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..12).prop_map(|v| v.concat())
    }

    fn line_for() -> impl Strategy<Value = Vec<u8>> {
        let good = r#"203.0.113.9 - al ice [21/Nov/2026:10:00:00 +0000] "GET /a\"b HTTP/1.1" 200 612 "-" "UA \"x\"" 0.5 0.1, 0.2 : 0.3"#;
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            (0..good.len(), any::<u8>()).prop_map(move |(i, b)| {
                let mut v = good.as_bytes().to_vec();
                v[i] = b;
                v
            }),
            (0..good.len()).prop_map(move |i| good.as_bytes()[..i].to_vec()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn compiling_and_matching_never_panic(spec in format_string(), line in line_for()) {
            if let Ok(f) = LogFormat::new(&spec) {
                if let Err(e) = f.parse(&line) {
                    prop_assert!(e.at <= line.len());
                }
                let _ = LogFormat::new(f.spec()).expect("a compiled spec compiles again");
            }
        }

        #[test]
        fn combined_compiled_agrees_with_the_built_in_parser(line in line_for()) {
            let f = LogFormat::new("combined").unwrap();
            let a = crate::parse::parse_combined(&line).ok();
            let b = f.parse(&line).ok();
            if let (Some(a), Some(b)) = (&a, &b) {
                // (The client may differ on a line whose address has a space:
                // ambiguous, and each parser cuts it at a different space.)
                prop_assert_eq!(
                    (a.time_ms, a.status, a.body_bytes),
                    (b.time_ms, b.status, b.body_bytes)
                );
            }
        }
    }
}
