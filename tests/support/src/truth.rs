//! The expected windows of generated traffic, computed from the requests
//! themselves (not by parsing lines), so the analyzer is checked against an
//! independent count.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use logpipe_analyzer::parse::parse_combined;
use logpipe_analyzer::window::{Hit, PartitionWindows, WindowSpec, WindowValue};
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
    /// Exact requests per (source, window) and (top-K dimension, key),
    /// from the requests (paths without their query string).
    pub keys: BTreeMap<(String, i64), KeyCounts>,
}

/// Requests per (top-K dimension, key) of one window.
pub type KeyCounts = BTreeMap<(&'static str, String), u64>;

impl Expected {
    pub fn new(window_ms: i64) -> Self {
        Expected {
            window_ms,
            windows: BTreeMap::new(),
            malformed: 0,
            malformed_lines: Vec::new(),
            lines: 0,
            keys: BTreeMap::new(),
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
                    let keys = self.keys.entry((source.to_string(), start)).or_default();
                    let mut count = |dim: &'static str, key: &str| {
                        *keys.entry((dim, key.to_string())).or_default() += 1;
                    };
                    count("client", &r.client);
                    for (dim, v) in [("user_agent", &r.user_agent), ("referer", &r.referer)] {
                        if v != "-" {
                            count(dim, v);
                        }
                    }
                    // `METHOD path HTTP/x`; `-` and binary garbage have no path.
                    let parts: Vec<&str> = r.request.split(' ').collect();
                    if parts.len() == 3 && parts[0].bytes().all(|b| b.is_ascii_uppercase()) {
                        let path = parts[1].split(['?', '#']).next().unwrap_or_default();
                        count("path", path);
                        match r.status {
                            400..=499 => count("path_4xx", path),
                            500..=599 => count("path_5xx", path),
                            _ => {}
                        }
                    }
                }
            }
            out.push(line);
        }
        out
    }

    /// Compares the `access_top` rows of every window with the exact counts:
    /// a dimension whose distinct keys fit `capacity` must be the exact top
    /// `k` (count descending, then key) with error 0; one beyond it must
    /// hold only keys with `count − error ≤ true ≤ count` and every key
    /// whose true count exceeds total/capacity. Returns the differences and
    /// how many dimensions were exact and how many were beyond capacity.
    pub fn check_top(
        &self,
        rows: &[((String, i64), TopRow)],
        k: usize,
        capacity: usize,
    ) -> (String, usize, usize) {
        let mut got: BTreeMap<(String, i64, String), Vec<&TopRow>> = BTreeMap::new();
        for ((source, t), row) in rows {
            got.entry((source.clone(), *t, row.0.clone()))
                .or_default()
                .push(row);
        }
        let (mut out, mut exact, mut beyond) = (String::new(), 0, 0);
        for ((source, t), keys) in &self.keys {
            for dim in [
                "path",
                "client",
                "user_agent",
                "referer",
                "path_4xx",
                "path_5xx",
            ] {
                let truth: Vec<(&String, u64)> = keys
                    .iter()
                    .filter(|((d, _), _)| *d == dim)
                    .map(|((_, key), c)| (key, *c))
                    .collect();
                let total: u64 = truth.iter().map(|x| x.1).sum();
                let mut rows = got
                    .remove(&(source.clone(), *t, dim.to_string()))
                    .unwrap_or_default();
                rows.sort_by_key(|r| r.1);
                let at = format!("{source} {t} {dim}");
                if rows.iter().any(|r| r.5 != total) {
                    out += &format!("{at}: total is not {total}: {rows:?}\n");
                }
                if truth.len() <= capacity {
                    exact += 1;
                    let mut want = truth.clone();
                    want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
                    want.truncate(k);
                    let have: Vec<(&String, u64, u64)> =
                        rows.iter().map(|r| (&r.2, r.3, r.4)).collect();
                    let want: Vec<(&String, u64, u64)> =
                        want.into_iter().map(|(key, c)| (key, c, 0)).collect();
                    if have != want {
                        out += &format!("{at}:\n  expected {want:?}\n  got      {have:?}\n");
                    }
                } else {
                    beyond += 1;
                    if rows.len() != k {
                        out += &format!("{at}: {} ranks, expected {k}\n", rows.len());
                    }
                    for r in &rows {
                        let t = keys.get(&(dim, r.2.clone())).copied().unwrap_or(0);
                        if !(r.3 >= t && r.3 - r.4 <= t) {
                            out += &format!("{at}: {r:?} but the true count is {t}\n");
                        }
                    }
                    // A key held (true count above total/capacity) whose
                    // true count beats the lowest reported upper bound
                    // must be reported.
                    let lowest = rows.last().map_or(0, |r| r.3);
                    for (key, c) in &truth {
                        if *c * capacity as u64 > total
                            && *c > lowest
                            && !rows.iter().any(|r| &&r.2 == key)
                        {
                            out += &format!("{at}: heavy hitter {key} ({c} of {total}) missing\n");
                        }
                    }
                }
                if out.len() > 4000 {
                    return (out, exact, beyond);
                }
            }
        }
        for k in got.keys() {
            out += &format!("unexpected top-K rows {k:?}\n");
        }
        (out, exact, beyond)
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
#[derive(Debug, Clone)]
pub struct Point {
    pub count: u64,
    pub traffic: u64,
    pub status: [u64; 5],
    pub error_rate: f64,
    pub qps: f64,
    pub unique_clients: u64,
    /// p50, p90, p99, max.
    pub latency: Option<[f64; 4]>,
    /// The window's `access_top` points, sorted.
    pub top: Vec<TopRow>,
    /// The window's `access_anomaly` points: metric, direction, value,
    /// baseline, score; sorted.
    pub anomalies: Vec<AnomalyRow>,
}

/// One `access_anomaly` point: metric, direction, value, baseline, score.
pub type AnomalyRow = (String, String, f64, f64, f64);

fn anomaly_rows(v: &WindowValue) -> Vec<AnomalyRow> {
    let mut rows: Vec<AnomalyRow> = v
        .anomalies
        .iter()
        .map(|a| {
            (
                a.metric.name().to_string(),
                a.direction.name().to_string(),
                a.value,
                a.baseline,
                a.score,
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

/// One `access_top` point: dim, rank, key, count, error, total.
pub type TopRow = (String, u32, String, u64, u64, u64);

/// The `access_top` rows of a window value, as the analyzer writes them.
pub fn top_rows(v: &WindowValue) -> Vec<TopRow> {
    let mut rows = Vec::new();
    for (dim, total, entries) in v.top.iter().flat_map(|t| t.dims.iter()) {
        for (i, e) in entries.iter().enumerate() {
            rows.push((
                dim.name().to_string(),
                i as u32 + 1,
                e.key.clone(),
                e.count,
                e.error,
                *total,
            ));
        }
    }
    rows.sort();
    rows
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
            && self.top == o.top
            && self.anomalies.len() == o.anomalies.len()
            && self.anomalies.iter().zip(&o.anomalies).all(|(a, b)| {
                a.0 == b.0 && a.1 == b.1 && close(a.2, b.2) && close(a.3, b.3) && close(a.4, b.4)
            })
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
        // The windows the last line closes are final (and scored); those
        // still open stay partial in a live run, so they carry no flags.
        let mut values = vec![];
        w.drain(false, false, &mut values);
        let mut rest = vec![];
        w.drain(false, true, &mut rest);
        values.extend(rest.into_iter().map(|v| WindowValue {
            anomalies: Vec::new(),
            ..v
        }));
        for v in values {
            let m = v.metrics;
            let top = top_rows(&v);
            let anomalies = anomaly_rows(&v);
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
                    top,
                    anomalies,
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
                    top: Vec::new(),
                    anomalies: Vec::new(),
                },
            );
        }
    }
    for ((source, t), row) in top_from_influx(influx, db) {
        if let Some(p) = out.get_mut(&(source, t)) {
            p.top.push(row);
        }
    }
    for ((source, t), row) in anomalies_from_influx(influx, db) {
        if let Some(p) = out.get_mut(&(source, t)) {
            p.anomalies.push(row);
        }
    }
    for p in out.values_mut() {
        p.top.sort();
        p.anomalies.sort_by(|a, b| a.0.cmp(&b.0));
    }
    out
}

/// Every `access_anomaly` point in `db`, by (source, window start).
pub fn anomalies_from_influx(influx: &crate::Influx, db: &str) -> Vec<((String, i64), AnomalyRow)> {
    let mut out = Vec::new();
    let q = "SELECT \"direction\", \"value\", \"baseline\", \"score\" FROM access_anomaly GROUP BY source, metric";
    for series in influx.query(db, q) {
        let tag = |k: &str| series["tags"][k].as_str().unwrap_or_default().to_string();
        let (source, metric) = (tag("source"), tag("metric"));
        for row in series["values"].as_array().into_iter().flatten() {
            let f = |i: usize| row[i].as_f64().unwrap_or(f64::NAN);
            out.push((
                (source.clone(), row[0].as_i64().expect("time")),
                (
                    metric.clone(),
                    row[1].as_str().unwrap_or_default().to_string(),
                    f(2),
                    f(3),
                    f(4),
                ),
            ));
        }
    }
    out
}

/// Every `access_top` point in `db`, by (source, window start).
pub fn top_from_influx(influx: &crate::Influx, db: &str) -> Vec<((String, i64), TopRow)> {
    let mut out = Vec::new();
    let q = "SELECT \"key\", \"count\", \"error\", \"total\" FROM access_top GROUP BY source, dim, rank";
    for series in influx.query(db, q) {
        let tag = |k: &str| series["tags"][k].as_str().unwrap_or_default().to_string();
        let (source, dim) = (tag("source"), tag("dim"));
        let rank: u32 = tag("rank").parse().unwrap_or(0);
        for row in series["values"].as_array().into_iter().flatten() {
            let n = |i: usize| row[i].as_u64().unwrap_or(u64::MAX);
            out.push((
                (source.clone(), row[0].as_i64().expect("time")),
                (
                    dim.clone(),
                    rank,
                    row[1].as_str().unwrap_or_default().to_string(),
                    n(2),
                    n(3),
                    n(4),
                ),
            ));
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
