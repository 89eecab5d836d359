//! The analyzer's hot path without Kafka or InfluxDB: the `combined` parser
//! plus the window core, from lines in memory, on one core.
//!
//! `cargo bench -p logpipe-analyzer --bench core` prints lines/s (median of
//! five runs over 1 M generated lines) and the peak RSS with 10 000 sources.

use std::time::Instant;

use logpipe_analyzer::parse::parse_combined;
use logpipe_analyzer::parse::LogFormat;
use logpipe_analyzer::parse::Parser;
use logpipe_analyzer::top::TopSpec;
use logpipe_analyzer::window::{Hit, PartitionWindows, WindowSpec};
use logpipe_traffic::Generator;

const SPEC: WindowSpec = WindowSpec {
    window_ms: 10_000,
    lateness_ms: 30_000,
    error_status: 400,
    error_level: logpipe_analyzer::parse::Level::Error,
    top: TopSpec::DEFAULT,
    anomaly: Some(logpipe_analyzer::anomaly::AnomalySpec::DEFAULT),
};
const NO_TOP: WindowSpec = WindowSpec {
    top: TopSpec::OFF,
    anomaly: None,
    ..SPEC
};

fn lines(n: usize, request_time: bool) -> Vec<String> {
    let g = Generator::new(42, 1_704_067_200_000, 2_000.0);
    let mut g = if request_time {
        g.with_request_time()
    } else {
        g
    };
    (0..n).map(|_| g.next_line().0).collect()
}

/// Parses and aggregates every line; returns lines/s.
fn run(lines: &[String], sources: u32, spec: WindowSpec) -> f64 {
    let mut w = PartitionWindows::new(spec);
    let mut out = Vec::new();
    let t = Instant::now();
    for (i, line) in lines.iter().enumerate() {
        if let Ok(l) = parse_combined(line.as_bytes()) {
            w.record(&Hit::from_line(i as u32 % sources, &l, i as i64));
        }
        if i % 100_000 == 99_999 {
            out.clear();
            w.drain(false, false, &mut out);
        }
    }
    w.drain(true, true, &mut out);
    std::hint::black_box(&out);
    lines.len() as f64 / t.elapsed().as_secs_f64()
}

/// The same requests as nginx writes them with a typical `escape=json` template.
fn as_json(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|line| {
            let l = parse_combined(line.as_bytes()).ok()?;
            let t = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or(b"-")).into_owned();
            let time_local = line.split_once('[')?.1.split_once(']')?.0;
            Some(
                serde_json::json!({
                    "time_local": time_local,
                    "remote_addr": t(Some(l.client)),
                    "remote_user": t(l.user),
                    "request": t(Some(l.request)),
                    "status": l.status.to_string(),
                    "body_bytes_sent": l.body_bytes.to_string(),
                    "request_time": l.request_time_s.map_or("-".into(), |s| format!("{s:.3}")),
                    "http_referrer": t(l.referer),
                    "http_user_agent": t(l.user_agent),
                })
                .to_string(),
            )
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A memory figure of `/proc/self/status` (`VmHWM:` peak, `VmRSS:` now), MB.
fn status_mb(field: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// Parses every line (no windows); returns lines/s.
fn parse_only(lines: &[String], parse: &dyn Fn(&[u8]) -> Option<u16>) -> f64 {
    let t = Instant::now();
    let mut ok = 0u64;
    for line in lines {
        if let Some(s) = parse(line.as_bytes()) {
            ok += u64::from(s);
        }
    }
    std::hint::black_box(ok);
    lines.len() as f64 / t.elapsed().as_secs_f64()
}

fn report(what: &str, runs: Vec<f64>) {
    println!(
        "{what}: median {:.2} M lines/s (runs: {})",
        median(runs.clone()) / 1e6,
        runs.iter()
            .map(|r| format!("{:.2}", r / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Python `logging` lines in the seed's format: five loggers, eight
/// message shapes, a traceback (4 more lines) every 50th record.
fn app_lines(n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let loggers = ["shop.checkout", "shop.cart", "db", "auth", "worker.email"];
    let mut i = 0usize;
    while out.len() < n {
        let t = chrono::DateTime::from_timestamp_millis(1_704_067_200_000 + i as i64 * 2).unwrap();
        let ts = t.format("%Y-%m-%d %H:%M:%S,%3f");
        let logger = loggers[i % loggers.len()];
        let (level, msg) = match i % 8 {
            0 => ("INFO", format!("order {} paid by user {}", i, i % 977)),
            1 => (
                "DEBUG",
                format!("query took {:.1} ms rows={}", i as f64 / 7.0, i % 50),
            ),
            2 => (
                "INFO",
                format!(
                    "login from 10.{}.{}.{} as 'user{}'",
                    i % 3,
                    i % 200,
                    i % 250,
                    i % 900
                ),
            ),
            3 => (
                "WARNING",
                format!("slow query on table orders ({} rows)", i * 3),
            ),
            4 => (
                "INFO",
                format!("GET /api/v1/items/{}?page={} 200", i % 5000, i % 9),
            ),
            5 => ("DEBUG", format!("cache miss key=session:{:x}", i * 7919)),
            6 => (
                "INFO",
                format!("sent mail {} to queue {}", uuid_like(i), i % 4),
            ),
            _ => (
                "ERROR",
                format!("card processor {:#x} unreachable", 0xdead_0000 + i),
            ),
        };
        out.push(format!("{ts} - {logger} - {level} - {msg}"));
        if i % 50 == 49 {
            out.push("Traceback (most recent call last):".into());
            out.push("  File \"/srv/app/pay.py\", line 17, in charge".into());
            out.push("    return 1 / 0".into());
            out.push("ZeroDivisionError: division by zero".into());
        }
        i += 1;
    }
    out.truncate(n);
    out
}

fn uuid_like(i: usize) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        i,
        i % 65536,
        i % 4096,
        (i * 7) % 4096,
        i * 31
    )
}

/// Parses application lines with `f`, templates each record and counts it
/// in its window (continuation lines are tried and skipped); returns lines/s.
fn run_app(lines: &[String], f: &logpipe_analyzer::parse::AppFormat, spec: WindowSpec) -> f64 {
    use logpipe_analyzer::applog::AppHit;
    let mut w = PartitionWindows::new(spec);
    let mut out = Vec::new();
    let mut template = Vec::new();
    let t = Instant::now();
    for (i, line) in lines.iter().enumerate() {
        if let Ok(l) = f.parse(line.as_bytes()) {
            logpipe_analyzer::template::template_with_exception(&l.message, None, &mut template);
            let hit = AppHit {
                level: l.level,
                logger: &l.logger,
                template: &template,
                lines: 1,
            };
            w.record(&Hit::from_app(0, l.time_ms, hit, i as i64, i as i64));
        }
        if i % 100_000 == 99_999 {
            out.clear();
            w.drain(false, false, &mut out);
        }
    }
    w.drain(true, true, &mut out);
    std::hint::black_box(&out);
    lines.len() as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let n = 1_000_000;
    if std::env::var("LOGPIPE_BENCH_ONLY").as_deref() == Ok("app") {
        let ls = app_lines(n);
        let f = logpipe_analyzer::parse::AppFormat::new(
            "%(asctime)s - %(name)s - %(levelname)s - %(message)s",
            None,
            logpipe_analyzer::parse::Zone::Utc,
        )
        .unwrap()
        .unwrap();
        let (mut off, mut on) = (vec![], vec![]);
        for _ in 0..5 {
            off.push(run_app(&ls, &f, NO_TOP));
            on.push(run_app(&ls, &f, SPEC));
        }
        report("application log (Python Formatter), parse + template + window core, top-K off (templates made, not ranked)", off);
        report(
            "application log (Python Formatter), parse + template + window core, top templates on",
            on,
        );
        return;
    }
    // Parsers alone on the same lines (combined + $request_time).
    let only = std::env::var("LOGPIPE_BENCH_ONLY").unwrap_or_default();
    let ls = lines(n, true);
    let pasted = LogFormat::new(
        r#"log_format timed '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time';"#,
    )
    .unwrap();
    let compiled_combined = LogFormat::new("combined").unwrap();
    let built_in = |b: &[u8]| parse_combined(b).ok().map(|l| l.status);
    let by_pasted = |b: &[u8]| pasted.parse(b).ok().map(|l| l.status);
    let by_compiled = |b: &[u8]| compiled_combined.parse(b).ok().map(|l| l.status);
    if only != "window" {
        for (name, f) in [
            (
                "built-in combined parser",
                &built_in as &dyn Fn(&[u8]) -> Option<u16>,
            ),
            ("compiled `combined` format", &by_compiled),
            ("pasted nginx format with $request_time", &by_pasted),
        ] {
            report(
                &format!("parse only, {name}"),
                (0..5).map(|_| parse_only(&ls, f)).collect(),
            );
        }

        let js = as_json(&ls);
        let json = Parser::new("json").unwrap();
        let by_json = |b: &[u8]| json.parse(b).ok().map(|l| l.status);
        report(
            &format!(
                "parse only, JSON lines ({} of them, nginx escape=json template)",
                js.len()
            ),
            (0..5).map(|_| parse_only(&js, &by_json)).collect(),
        );
        drop(js);
    }
    if only == "parse" {
        return;
    }

    for (name, request_time) in [("combined", false), ("combined + $request_time", true)] {
        let ls = lines(n, request_time);
        // Top-K off and on in alternating runs, so both see the same noise.
        let (mut off, mut on) = (vec![], vec![]);
        for _ in 0..5 {
            off.push(run(&ls, 3, NO_TOP));
            on.push(run(&ls, 3, SPEC));
        }
        report(
            &format!("parse + window core, {name}, 3 sources, top-K off"),
            off,
        );
        report(
            &format!("parse + window core, {name}, 3 sources, top-K on (k 10 of 64)"),
            on,
        );
    }
    if only == "window" {
        return;
    }
    // Memory with many sources: 10 000 sources (each with a request time,
    // so every window holds a latency sketch), flushed as in a live run.
    let ls = lines(4 * n, true);
    let before = peak_rss_mb();
    let (most_open, _) = fill(&ls, 10_000, SPEC);
    println!(
        "10 000 sources, top-K on: at most {most_open} open windows, peak RSS {:.0} MB (of which {before:.0} MB were reached before, holding the test lines in memory)",
        peak_rss_mb(),
    );
    // Memory per open window with full top-K summaries: 200 sources, ~100
    // requests per source and window (random clients: that summary is full),
    // resident memory of the windows open at the end, top-K off and on.
    let ls = lines(n, true);
    for (name, spec) in [("top-K off", NO_TOP), ("top-K on", SPEC)] {
        let base = rss_mb();
        let (_, w) = fill(&ls, 200, spec);
        let held = rss_mb() - base;
        println!(
            "200 sources, {name}: {} windows open at the end hold {held:.1} MB, {:.1} KB per window",
            w.open_windows(),
            held * 1024.0 / w.open_windows().max(1) as f64,
        );
    }
}

/// Aggregates `lines` over `sources` sources, draining every 10 000 lines as
/// a live run flushes; returns the most windows open at once and the state.
fn fill(lines: &[String], sources: u32, spec: WindowSpec) -> (usize, PartitionWindows) {
    let mut w = PartitionWindows::new(spec);
    let mut out = Vec::new();
    let mut most_open = 0;
    for (i, line) in lines.iter().enumerate() {
        if let Ok(l) = parse_combined(line.as_bytes()) {
            w.record(&Hit::from_line(i as u32 % sources, &l, i as i64));
        }
        if i % 10_000 == 9_999 {
            most_open = most_open.max(w.open_windows());
            out.clear();
            w.drain(true, false, &mut out);
        }
    }
    (most_open, w)
}
