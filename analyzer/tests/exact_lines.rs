//! Whole lines only: random valid lines of several formats, cut at every
//! kind of byte. A prefix of a line (a line cut short in the file) is never
//! counted; the whole line is counted with its real values; a line the
//! producer cut at `--max-line-bytes` counts only once its size is whole.
//!
//! The one prefix that cannot be told from a whole line is one that ends
//! inside the format's *last* field when that field is unquoted (`… 0.04` of
//! `… 0.042`, or the optional `$request_time` of `combined` cut off whole):
//! nothing in the line says more was to come. The test asserts exactly that
//! boundary: a prefix parses only when it ends inside that final field, and
//! then every other value is the whole line's.

use logpipe_analyzer::parse::Parser;
use logpipe_traffic::{Generator, Request};
use proptest::prelude::*;

/// A format, how a request is written in it, and where (in a rendered
/// line) the fields end that a cut must not reach into unnoticed.
struct Case {
    parser: Parser,
    render: fn(&Request) -> String,
    /// Bytes of the line before its final unquoted field (the whole line
    /// when the format ends in a quoted field or a literal).
    exact_until: fn(&Request, &str) -> usize,
    /// Bytes a cut line needs for its size to be whole.
    cut_needs: fn(&Request, &str) -> usize,
}

fn without_time(r: &Request) -> Request {
    Request {
        request_time_ms: None,
        ..r.clone()
    }
}

/// End of the body-bytes field plus the space after it.
/// The format declares `$request_time`: every line has one.
fn timed(r: &Request) -> String {
    Request {
        request_time_ms: Some(r.request_time_ms.unwrap_or(42)),
        ..r.clone()
    }
    .render()
}

fn after_size(r: &Request, line: &str) -> usize {
    let status = format!(" {} ", r.status);
    let bytes = r.body_bytes.map_or("-".to_string(), |b| b.to_string());
    let at = line
        .find(&format!("\"{status}{bytes} "))
        .expect("status and size in the line");
    at + 1 + status.len() + bytes.len() + 1
}

fn apache(r: &Request) -> String {
    // Apache `%b` writes `-` for no body, as the generator's `None`.
    without_time(r).render()
}

fn json(r: &Request) -> String {
    let t = chrono::DateTime::from_timestamp_millis(r.time_ms).unwrap();
    serde_json::json!({
        "time_iso8601": t.to_rfc3339(),
        "remote_addr": r.client,
        "request": r.request,
        "status": r.status,
        "body_bytes_sent": r.body_bytes.unwrap_or(0),
        "http_user_agent": r.user_agent,
        "request_time": r.request_time_ms.map(|ms| f64::from(ms) / 1000.0),
    })
    .to_string()
}

fn cases() -> Vec<Case> {
    vec![
        // Built-in combined, with the optional trailing $request_time.
        Case {
            parser: Parser::new("combined").unwrap(),
            render: Request::render,
            exact_until: |r, _| without_time(r).render().len(),
            cut_needs: after_size,
        },
        // A pasted nginx log_format that ends with $request_time.
        Case {
            parser: Parser::new(
                r#"log_format main '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time';"#,
            )
            .unwrap(),
            render: timed,
            exact_until: |r, _| without_time(r).render().len() + 1,
            cut_needs: after_size,
        },
        // Apache's combined, ending in the quoted user agent.
        Case {
            parser: Parser::new(r#"LogFormat "%h %l %u %t \"%r\" %>s %b \"%{Referer}i\" \"%{User-agent}i\"" combined"#).unwrap(),
            render: apache,
            exact_until: |_, line| line.len(),
            cut_needs: after_size,
        },
        // JSON lines: an object cut short is never whole.
        Case {
            parser: Parser::new("json").unwrap(),
            render: json,
            exact_until: |_, line| line.len(),
            cut_needs: |_, line| line.len() + 1,
        },
    ]
}

fn requests() -> impl Strategy<Value = Request> {
    (any::<u64>(), any::<bool>()).prop_map(|(seed, timed)| {
        let g = Generator::new(seed, 1_764_000_000_000, 100.0).malformed_one_in(0);
        let mut g = if timed { g.with_request_time() } else { g };
        g.next_line().1.expect("no malformed lines asked for")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Every format and every cut point of a generated request: a prefix of a line
    /// never counts as a line, and the whole line parses to its request.
    #[test]
    fn a_prefix_is_never_counted_and_the_whole_line_is(r in requests(), cut_frac in 0.0f64..1.0) {
        for case in cases() {
            let line = (case.render)(&r);
            let whole = case.parser.parse(line.as_bytes())
                .unwrap_or_else(|e| panic!("whole line refused: {e}: {line}"));
            prop_assert_eq!(whole.status, r.status);
            prop_assert_eq!(whole.body_bytes, r.body_bytes.unwrap_or(0));
            prop_assert_eq!(whole.time_ms, r.time_ms);

            let cut = ((line.len() as f64) * cut_frac) as usize;
            let prefix = &line.as_bytes()[..cut];
            let exact_until = (case.exact_until)(&r, &line);
            match case.parser.parse(prefix) {
                Err(_) => {}
                Ok(l) => {
                    // Only a prefix ending inside the final unquoted field
                    // is taken for a whole line, with the same values.
                    prop_assert!(cut >= exact_until,
                        "a prefix of {cut} bytes was counted: {:?}", String::from_utf8_lossy(prefix));
                    prop_assert_eq!((l.status, l.body_bytes, l.time_ms),
                        (whole.status, whole.body_bytes, whole.time_ms));
                }
            }
            // As cut by the producer (`cut` header): counted only when the
            // size is whole, then with the real status and size.
            match case.parser.parse_cut(prefix) {
                Ok(l) => {
                    prop_assert!(cut >= (case.cut_needs)(&r, &line),
                        "cut line of {cut} bytes counted before its size was whole: {line}");
                    prop_assert_eq!((l.status, l.body_bytes, l.time_ms),
                        (whole.status, whole.body_bytes, whole.time_ms));
                    prop_assert_eq!(l.request_time_s, None, "a cut line's last field is not read");
                }
                Err(e) => prop_assert!(cut < (case.cut_needs)(&r, &line),
                    "cut line of {cut} bytes with a whole size refused: {e}: {line}"),
            }
        }
    }
}

/// Every cut point of one line, not a sample: the issue's reproduction (one
/// valid line and its truncations that keep `" 200 `) counts one request.
#[test]
fn every_truncation_that_keeps_the_status_is_a_dead_letter() {
    let line = r#"203.0.113.9 - - [21/Nov/2026:10:00:00 +0000] "GET /index.html HTTP/1.1" 200 1234 "https://example.com/" "Mozilla/5.0 (X11; Linux x86_64)""#;
    let parser = Parser::new("combined").unwrap();
    let from = line.find("\" 200 ").unwrap() + 6;
    let mut counted = 0;
    let mut traffic = 0;
    for cut in from..=line.len() {
        if let Ok(l) = parser.parse(&line.as_bytes()[..cut]) {
            counted += 1;
            traffic += l.body_bytes;
        }
    }
    assert_eq!((counted, traffic), (1, 1234));
}
