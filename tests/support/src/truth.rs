//! The expected windows of generated traffic, computed from the requests
//! themselves (not by parsing lines), so the analyzer is checked against an
//! independent count.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use logpipe_analyzer::generate::Generator;

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
    pub lines: u64,
}

impl Expected {
    pub fn new(window_ms: i64) -> Self {
        Expected {
            window_ms,
            windows: BTreeMap::new(),
            malformed: 0,
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
        let mut g = Generator::new(seed, start_ms, lines_per_sec).malformed_one_in(100);
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create log"));
        for _ in 0..lines {
            let (line, req) = g.next_line();
            writeln!(f, "{line}").unwrap();
            self.lines += 1;
            match req {
                None => self.malformed += 1,
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
        }
        f.flush().unwrap();
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
    let mut out = String::new();
    for (k, e) in expected {
        match got.get(k) {
            Some(g) if g == e => {}
            Some(g) => out += &format!("window {k:?}: expected {e:?}, got {g:?}\n"),
            None => out += &format!("window {k:?}: missing (expected {e:?})\n"),
        }
    }
    for k in got.keys().filter(|k| !expected.contains_key(*k)) {
        out += &format!("window {k:?}: unexpected\n");
    }
    out
}
