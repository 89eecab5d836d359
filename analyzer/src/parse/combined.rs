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

use super::scan::{opt_dash, parse_seconds, split_request};
use super::time::parse_clf_time;
use super::{AccessLine, ErrorKind, Escape, ParseError};

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
    let open = super::scan::find_lit(rest, b" [")
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
    fn every_request_line_parses_back_to_its_request_and_malformed_ones_do_not() {
        let mut plain =
            logpipe_traffic::Generator::new(1, 1_700_000_000_000, 1000.0).malformed_one_in(50);
        let mut timed = logpipe_traffic::Generator::new(2, 1_700_000_000_000, 1000.0)
            .malformed_one_in(50)
            .with_request_time();
        let (mut good, mut bad) = (0, 0);
        for i in 0..20_000 {
            let g = if i % 2 == 0 { &mut plain } else { &mut timed };
            let (line, req) = g.next_line();
            match req {
                Some(req) => {
                    let l =
                        parse_combined(line.as_bytes()).unwrap_or_else(|e| panic!("{e}: {line}"));
                    assert_eq!(l.time_ms, req.time_ms);
                    assert_eq!(l.status, req.status);
                    assert_eq!(l.body_bytes, req.body_bytes.unwrap_or(0));
                    assert_eq!(l.client, req.client.as_bytes());
                    assert_eq!(l.user, req.user.as_deref().map(str::as_bytes));
                    assert_eq!(
                        l.request_time_s,
                        req.request_time_ms.map(|ms| f64::from(ms) / 1000.0)
                    );
                    assert_eq!(req.request_time_ms.is_some(), i % 2 == 1);
                    good += 1;
                }
                None => {
                    assert!(parse_combined(line.as_bytes()).is_err(), "{line}");
                    bad += 1;
                }
            }
        }
        assert!(good > 19_000 && bad > 200, "{good} {bad}");
    }
}
