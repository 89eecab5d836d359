//! The expected windows of generated traffic, computed from the requests
//! themselves (not by parsing lines), so the analyzer is checked against an
//! independent count.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use logpipe_analyzer::parse::parse_combined;
use logpipe_analyzer::window::{Hit, PartitionWindows, WindowSpec};
use logpipe_traffic::Generator;

/// Expected aggregates of one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowTruth {
    pub count: u64,
    pub traffic: u64,
    pub status: [u64; 5],
}

/// Expected windows keyed by (source, window start ms), plus malformed lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Window length the truth is computed for (the analyzer's `--window`).
    pub window_ms: i64,
    pub windows: BTreeMap<(String, i64), WindowTruth>,
    pub malformed: u64,
    /// (source, line) of every malformed line, in the order written.
    pub malformed_lines: Vec<(String, String)>,
    pub lines: u64,
}

impl Expected {
    pub fn new(window_ms: i64) -> Self {
        Expected {
            window_ms,
            windows: BTreeMap::new(),
            malformed: 0,
            malformed_lines: Vec::new(),
            lines: 0,
        }
    }

    /// Writes `lines` generated lines (seed, start, rate) to `path`, adding
    /// their truth under `source`.
    pub fn generate_file(
        &mut self,
        path: &Path,
        source: &str,
        seed: u64,
        start_ms: i64,
        lines_per_sec: f64,
        lines: usize,
    ) {
        self.generate_file_with(
            path,
            source,
            Generator::new(seed, start_ms, lines_per_sec),
            lines,
        );
    }

    /// [`Expected::generate_file`] with a generator set up by the caller.
    pub fn generate_file_with(&mut self, path: &Path, source: &str, g: Generator, lines: usize) {
        let text = self.generate(g, source, lines);
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create log"));
        for line in text {
            writeln!(f, "{line}").unwrap();
        }
        f.flush().unwrap();
    }

    /// Draws `lines` lines from `g` (one in 100 malformed), adding their truth
    /// under `source`; returns the lines.
    pub fn generate(&mut self, g: Generator, source: &str, lines: usize) -> Vec<String> {
        let mut g = g.malformed_one_in(100);
        let mut out = Vec::with_capacity(lines);
        for _ in 0..lines {
            let (line, req) = g.next_line();
            self.lines += 1;
            match req {
                None => {
                    self.malformed += 1;
                    self.malformed_lines
                        .push((source.to_string(), line.clone()));
                }
                Some(r) => {
                    let start = r.time_ms.div_euclid(self.window_ms) * self.window_ms;
                    let w = self.windows.entry((source.to_string(), start)).or_default();
                    w.count += 1;
                    w.traffic += r.body_bytes.unwrap_or(0);
                    if (100..600).contains(&r.status) {
                        w.status[(r.status / 100 - 1) as usize] += 1;
                    }
                }
            }
            out.push(line);
        }
        out
    }

    /// (source, line) of every malformed line, sorted.
    pub fn malformed_sorted(&self) -> Vec<(String, String)> {
        let mut v = self.malformed_lines.clone();
        v.sort();
        v
    }

    /// The `access_log` windows in `db` in the same shape, read with InfluxQL.
    pub fn from_influx(influx: &crate::Influx, db: &str) -> BTreeMap<(String, i64), WindowTruth> {
        let mut out = BTreeMap::new();
        let q = "SELECT count, traffic, status_1xx, status_2xx, status_3xx, status_4xx, status_5xx FROM access_log GROUP BY source";
        for series in influx.query(db, q) {
            let source = series["tags"]["source"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            for row in series["values"].as_array().into_iter().flatten() {
                let n = |i: usize| row[i].as_u64().unwrap_or(u64::MAX);
                let t = row[0].as_i64().expect("time");
                out.insert(
                    (source.clone(), t),
                    WindowTruth {
                        count: n(1),
                        traffic: n(2),
                        status: [n(3), n(4), n(5), n(6), n(7)],
                    },
                );
            }
        }
        out
    }
}

/// Describes the first differences between two window maps.
pub fn diff(
    expected: &BTreeMap<(String, i64), WindowTruth>,
    got: &BTreeMap<(String, i64), WindowTruth>,
) -> String {
    diff_maps("window", expected, got)
}

/// The differences between two maps keyed by (source, window start), cut
/// after about 4000 characters.
fn diff_maps<V: PartialEq + std::fmt::Debug>(
    what: &str,
    expected: &BTreeMap<(String, i64), V>,
    got: &BTreeMap<(String, i64), V>,
) -> String {
    let mut out = String::new();
    for (k, e) in expected {
        match got.get(k) {
            Some(g) if g == e => {}
            Some(g) => out += &format!("{what} {k:?}:\n  expected {e:?}\n  got      {g:?}\n"),
            None => out += &format!("{what} {k:?}: missing (expected {e:?})\n"),
        }
        if out.len() > 4000 {
            return out;
        }
    }
    for k in got.keys().filter(|k| !expected.contains_key(*k)) {
        out += &format!("{what} {k:?}: unexpected\n");
    }
    out
}

/// Every field of one `access_log` point. Floats compare equal within one
/// part in 10^12: InfluxDB 1.6's float parser is not correctly rounded, so a
/// value can come back one unit in the last place off what was written.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub count: u64,
    pub traffic: u64,
    pub status: [u64; 5],
    pub error_rate: f64,
    pub qps: f64,
    pub unique_clients: u64,
    /// p50, p90, p99, max.
    pub latency: Option<[f64; 4]>,
}

impl PartialEq for Point {
    fn eq(&self, o: &Point) -> bool {
        let close = |a: f64, b: f64| a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
        let lat = match (self.latency, o.latency) {
            (None, None) => true,
            (Some(a), Some(b)) => a.iter().zip(&b).all(|(x, y)| close(*x, *y)),
            _ => false,
        };
        self.count == o.count
            && self.traffic == o.traffic
            && self.status == o.status
            && self.unique_clients == o.unique_clients
            && close(self.error_rate, o.error_rate)
            && close(self.qps, o.qps)
            && lat
    }
}

/// The points an uninterrupted analyzer writes for these sources' lines (fed
/// in file order): the reference every interrupted run must equal in every
/// field, sketches included. Uses the analyzer's parser and window core; the
/// independent check of counts is [`Expected`].
pub fn reference_points(
    spec: WindowSpec,
    sources: &[(String, Vec<String>)],
) -> BTreeMap<(String, i64), Point> {
    let mut out = BTreeMap::new();
    for (name, lines) in sources {
        let mut w = PartitionWindows::new(spec);
        for (i, line) in lines.iter().enumerate() {
            if let Ok(l) = parse_combined(line.as_bytes()) {
                w.record(&Hit::from_line(0, &l, i as i64));
            }
        }
        let mut values = vec![];
        w.drain(true, true, &mut values);
        for v in values {
            let m = v.metrics;
            out.insert(
                (name.clone(), v.start_ms),
                Point {
                    count: m.count,
                    traffic: m.traffic,
                    status: m.status,
                    error_rate: if m.count == 0 {
                        0.0
                    } else {
                        m.errors as f64 / m.count as f64
                    },
                    qps: m.count as f64 * 1000.0 / spec.window_ms as f64,
                    unique_clients: m.unique_clients,
                    latency: m.latency.map(|l| [l.p50, l.p90, l.p99, l.max]),
                },
            );
        }
    }
    out
}

/// Every `access_log` point in `db`, all fields.
pub fn points_from_influx(influx: &crate::Influx, db: &str) -> BTreeMap<(String, i64), Point> {
    let mut out = BTreeMap::new();
    let q = "SELECT count, traffic, status_1xx, status_2xx, status_3xx, status_4xx, status_5xx, \
             error_rate, qps, unique_clients, latency_p50, latency_p90, latency_p99, latency_max \
             FROM access_log GROUP BY source";
    for series in influx.query(db, q) {
        let source = series["tags"]["source"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for row in series["values"].as_array().into_iter().flatten() {
            let n = |i: usize| row[i].as_u64().unwrap_or(u64::MAX);
            let f = |i: usize| row[i].as_f64();
            let latency = match (f(11), f(12), f(13), f(14)) {
                (Some(a), Some(b), Some(c), Some(d)) => Some([a, b, c, d]),
                _ => None,
            };
            out.insert(
                (source.clone(), row[0].as_i64().expect("time")),
                Point {
                    count: n(1),
                    traffic: n(2),
                    status: [n(3), n(4), n(5), n(6), n(7)],
                    error_rate: f(8).unwrap_or(f64::NAN),
                    qps: f(9).unwrap_or(f64::NAN),
                    unique_clients: n(10),
                    latency,
                },
            );
        }
    }
    out
}

/// Describes the first differences between two point maps.
pub fn diff_points(
    expected: &BTreeMap<(String, i64), Point>,
    got: &BTreeMap<(String, i64), Point>,
) -> String {
    diff_maps("point", expected, got)
}
