//! Golden tests of the format compiler: each `tests/golden/*.case` file holds
//! a format as pasted from a server config (`format:`), raw lines (`< `) and,
//! after each line, the fields it must parse to (`> `), compared exactly.
//! `<cut ` instead of `< ` marks a line the producer cut at
//! `--max-line-bytes` (it carries the `cut` header).
//! `LOGPIPE_BLESS=1 cargo test --test golden` rewrites the `> ` lines (review
//! the diff before committing it).

use std::fmt::Write as _;
use std::path::Path;

use logpipe_analyzer::parse::AccessLine;
use logpipe_analyzer::parse::Parser;

/// Text fields are shown decoded (`escape=json`, `\x22`, ...).
fn text(b: Option<std::borrow::Cow<'_, [u8]>>) -> String {
    b.map_or("-".into(), |b| format!("{:?}", String::from_utf8_lossy(&b)))
}

fn render(r: Result<AccessLine<'_>, logpipe_analyzer::parse::ParseError>) -> String {
    let l = match r {
        Ok(l) => l,
        Err(e) => return format!("error: {e}"),
    };
    let mut s = String::new();
    write!(
        s,
        "client={} user={} time_ms={} method={} path={} status={} bytes={} referer={} agent={} request_time={:?} upstream_time={:?} host={}",
        text(Some(l.decoded(l.client))),
        text(l.user.map(|f| l.decoded(f))),
        if l.time_ms == i64::MIN {
            "record".to_string()
        } else {
            l.time_ms.to_string()
        },
        text(l.method.map(|f| l.decoded(f))),
        text(l.path.map(|f| l.decoded(f))),
        l.status,
        l.body_bytes,
        text(l.referer.map(|f| l.decoded(f))),
        text(l.user_agent.map(|f| l.decoded(f))),
        l.request_time_s,
        l.upstream_time_s,
        text(l.host.map(|f| l.decoded(f))),
    )
    .unwrap();
    s
}

/// Each `tests/golden/*.case` (a format, lines, the fields expected) parses to
/// exactly its recorded fields (`LOGPIPE_BLESS=1` records them anew).
#[test]
fn every_case_parses_to_its_recorded_fields() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var("LOGPIPE_BLESS").is_ok_and(|v| v == "1");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "case"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "golden cases: {cases:?}");
    let mut failures = Vec::new();
    for path in cases {
        let body = std::fs::read_to_string(&path).unwrap();
        let spec = body
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("format: "))
            .unwrap_or_else(|| panic!("{}: first line must be 'format: ...'", path.display()));
        let f = Parser::new(spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut out = format!("format: {spec}\n");
        let mut expected = Vec::new();
        let mut got = Vec::new();
        for line in body.lines().skip(1) {
            if let Some(raw) = line.strip_prefix("< ") {
                let r = render(f.parse(raw.as_bytes()));
                writeln!(out, "< {raw}\n> {r}").unwrap();
                got.push(r);
            } else if let Some(raw) = line.strip_prefix("<cut ") {
                // A line the producer cut at --max-line-bytes (`cut` header).
                let r = render(f.parse_cut(raw.as_bytes()));
                writeln!(out, "<cut {raw}\n> {r}").unwrap();
                got.push(r);
            } else if let Some(e) = line.strip_prefix("> ") {
                expected.push(e.to_string());
            }
        }
        if bless {
            std::fs::write(&path, out).unwrap();
        } else if got != expected {
            failures.push(format!(
                "{}:\n  expected {expected:#?}\n  got {got:#?}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
