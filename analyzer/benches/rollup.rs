//! The fleet roll-up's work per source window, on one core, without Kafka
//! or InfluxDB: decode the record, hold it, merge it into its window's
//! groups (all, its host, and one named group) and encode the points.
//!
//! `cargo bench -p logpipe-analyzer --bench rollup` prints, per fleet
//! shape, the record size (raw, and gzip level 1 as an estimate of what
//! Kafka's batch compression leaves) and source windows merged per second
//! (median of five runs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use logpipe_analyzer::fleet;
use logpipe_analyzer::parse::parse_combined;
use logpipe_analyzer::rollup::{encode_point, Groups, PartitionFleet, RollupSpec};
use logpipe_analyzer::top::TopSpec;
use logpipe_analyzer::window::{Hit, PartitionWindows, WindowSpec};
use logpipe_traffic::Generator;

const SPEC: WindowSpec = WindowSpec {
    window_ms: 10_000,
    lateness_ms: 0,
    error_status: 400,
    error_level: logpipe_analyzer::parse::Level::Error,
    top: TopSpec::DEFAULT,
    anomaly: None,
};

/// The fleet records of `sources` sources × `windows` windows with
/// `per_window` requests each (generated nginx traffic with request times),
/// in window order as analyzers publish them.
fn records(sources: u32, windows: i64, per_window: u32, top: bool) -> Vec<Vec<u8>> {
    let spec = WindowSpec {
        top: if top { TopSpec::DEFAULT } else { TopSpec::OFF },
        ..SPEC
    };
    let rate = f64::from(sources * per_window) / 10.0;
    let mut g = Generator::new(7, 1_704_067_200_000, rate).with_request_time();
    let n = (rate * 10.0) as i64 * (windows + 1);
    let mut w = PartitionWindows::new(spec);
    let mut values = Vec::new();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut drain = |w: &mut PartitionWindows, all: bool, out: &mut Vec<Vec<u8>>| {
        values.clear();
        w.drain(false, all, &mut values);
        for v in values.iter().filter(|v| v.is_final) {
            let Some(agg) = &v.sketch else { continue };
            buf.clear();
            let host = format!("web-{}", v.source % 40);
            let src = format!("/var/log/nginx/site-{}.log", v.source);
            fleet::encode(&mut buf, &host, &src, v.start_ms, 10_000, agg);
            out.push(buf.clone());
        }
    };
    for i in 0..n {
        let (line, _) = g.next_line();
        if let Ok(l) = parse_combined(line.as_bytes()) {
            w.record(&Hit::from_line(i as u32 % sources, &l, i));
        }
        if i % 10_000 == 9_999 {
            drain(&mut w, false, &mut out);
        }
    }
    drain(&mut w, true, &mut out);
    out
}

/// Decodes, holds and merges every record, writing points as windows
/// complete; returns source windows per second.
fn merge_all(records: &[Vec<u8>], spec: &RollupSpec) -> (f64, usize) {
    let mut p = PartitionFleet::new(i64::MIN);
    let mut points = Vec::new();
    let mut lp = Vec::new();
    let now = Instant::now();
    let t = Instant::now();
    for (i, r) in records.iter().enumerate() {
        let w = fleet::decode(r).expect("a record this bench encoded");
        p.record(w, i as i64, now);
        if i % 100 == 99 {
            p.drain(spec, now, false, &mut points);
            for f in points.drain(..) {
                encode_point(&mut lp, &f, spec.top_k);
            }
        }
    }
    p.drain(spec, now, true, &mut points);
    for f in points.drain(..) {
        encode_point(&mut lp, &f, spec.top_k);
    }
    (records.len() as f64 / t.elapsed().as_secs_f64(), lp.len())
}

/// Heap bytes in use: the benchmark's allocator counts them.
struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting sizes.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Heap per record held (decoded, never written).
fn held_bytes(records: &[Vec<u8>]) -> usize {
    let before = live();
    let mut p = PartitionFleet::new(i64::MIN);
    let now = Instant::now();
    for (i, r) in records.iter().enumerate() {
        p.record(fleet::decode(r).unwrap(), i as i64, now);
    }
    let grown = live().saturating_sub(before);
    std::hint::black_box(&p);
    grown / records.len().max(1)
}

fn gzip_len(records: &[Vec<u8>]) -> usize {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for r in records {
        e.write_all(r).unwrap();
    }
    e.finish().unwrap().len()
}

fn main() {
    let groups = Groups::new(true)
        .with_file("[[group]]\nname = \"eu\"\nhosts = [\"web-1*\"]\n")
        .unwrap();
    let spec = RollupSpec {
        grace: Duration::from_secs(30),
        keep_ms: 600_000,
        top_k: 10,
        groups: Arc::new(groups),
    };
    println!("| sources | requests per source window | top-K | source windows | bytes per record | gzip -1 | held in memory per record | source windows/s (median of 5) | line protocol per window |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (sources, windows, per_window, top) in [
        (100, 30, 500, true),
        (100, 30, 500, false),
        (1000, 6, 50, true),
        (1000, 6, 50, false),
    ] {
        let recs = records(sources, windows, per_window, top);
        let bytes: usize = recs.iter().map(Vec::len).sum();
        let mut rates = Vec::new();
        let mut lp = 0;
        for _ in 0..5 {
            let (r, n) = merge_all(&recs, &spec);
            rates.push(r);
            lp = n;
        }
        rates.sort_by(f64::total_cmp);
        let windows_out = (recs.len() as f64 / f64::from(sources)).max(1.0);
        println!(
            "| {sources} | {per_window} | {} | {} | {} | {} | {} | {:.0} | {} B |",
            if top { "on" } else { "off" },
            recs.len(),
            bytes / recs.len().max(1),
            gzip_len(&recs) / recs.len().max(1),
            held_bytes(&recs),
            rates[2],
            (lp as f64 / windows_out) as usize,
        );
    }
}
