//! The totals of a one-shot analysis (`demo --input F --exit-on-eof`): what
//! someone analysing a historical log reads first. Summed from the final
//! windows the sink accepted, so they agree with what was written.

use std::collections::BTreeMap;

use logpipe_analyzer::{DeadLetterKinds, WindowReport};
use serde::Serialize;

/// Totals over every final window of a run.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Lines the producer read and Kafka acknowledged.
    pub lines: u64,
    /// Requests counted in windows.
    pub requests: u64,
    /// Body bytes sent.
    pub traffic_bytes: u64,
    /// Requests with a status at or above `error_status`.
    pub errors: u64,
    pub error_status: u16,
    /// `errors / requests` in percent (0 without requests).
    pub error_percent: f64,
    pub status: StatusClasses,
    /// Start of the first window and end of the last, RFC 3339 UTC.
    pub first_window_start: Option<String>,
    pub last_window_end: Option<String>,
    pub span_s: i64,
    pub window_s: i64,
    /// Points written: one per (host, source, window).
    pub windows: u64,
    pub busiest: Option<Busiest>,
    /// Parsed lines whose window had closed already (in no window).
    pub late: u64,
    pub dead_letters: DeadLetters,
    /// Application logs' totals (absent when none was read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<AppTotals>,
    #[serde(skip)]
    first_ms: Option<i64>,
    #[serde(skip)]
    last_ms: Option<i64>,
}

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct StatusClasses {
    #[serde(rename = "1xx")]
    pub s1xx: u64,
    #[serde(rename = "2xx")]
    pub s2xx: u64,
    #[serde(rename = "3xx")]
    pub s3xx: u64,
    #[serde(rename = "4xx")]
    pub s4xx: u64,
    #[serde(rename = "5xx")]
    pub s5xx: u64,
}

/// The window with the most requests (the earliest of equals).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Busiest {
    pub start: String,
    pub host: String,
    pub source: String,
    pub requests: u64,
    /// The window's first key in each top-K dimension (empty with top-K off).
    pub top: Vec<TopKey>,
    #[serde(skip)]
    start_ms: i64,
}

/// The first-ranked key of one top-K dimension of a window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopKey {
    pub dim: &'static str,
    pub key: String,
    pub requests: u64,
    /// `requests − error` is a lower bound (0: exact).
    pub error: u64,
}

/// Totals of the application-log windows: records, their lines, errors,
/// records per level and the most frequent message templates.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct AppTotals {
    pub records: u64,
    pub lines: u64,
    /// Records at or above `--error-level`.
    pub errors: u64,
    pub levels: BTreeMap<&'static str, u64>,
    /// The ten templates with the most records, summed over the windows'
    /// top templates (exact while each window's fit its summary).
    pub templates: Vec<TemplateCount>,
    #[serde(skip)]
    sums: BTreeMap<String, (&'static str, u64)>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TemplateCount {
    pub level: &'static str,
    pub template: String,
    pub id: String,
    pub records: u64,
}

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct DeadLetters {
    pub total: u64,
    #[serde(flatten)]
    pub kinds: DeadLetterKinds,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

impl Summary {
    pub fn new(window_ms: i64, error_status: u16) -> Self {
        Summary {
            window_s: window_ms / 1000,
            error_status,
            ..Default::default()
        }
    }

    /// Adds one final window.
    pub fn add(&mut self, r: &WindowReport<'_>) {
        let m = &r.value.metrics;
        let start = r.value.start_ms;
        self.windows += 1;
        self.first_ms = Some(self.first_ms.map_or(start, |f| f.min(start)));
        let end = start + r.window_ms;
        self.last_ms = Some(self.last_ms.map_or(end, |l| l.max(end)));
        if let Some(app) = &r.value.app {
            let a = self.app.get_or_insert_with(AppTotals::default);
            a.records += m.count;
            a.lines += app.lines;
            a.errors += m.errors;
            for (_, level, n) in &app.levels {
                *a.levels.entry(level.name()).or_default() += n;
            }
            for (level, _, entries) in &app.templates {
                for e in entries {
                    let t = a.sums.entry(e.key.clone()).or_insert((level.name(), 0));
                    t.1 += e.count;
                }
            }
            return;
        }
        self.requests += m.count;
        self.traffic_bytes += m.traffic;
        self.errors += m.errors;
        let s = &mut self.status;
        for (total, n) in [
            &mut s.s1xx,
            &mut s.s2xx,
            &mut s.s3xx,
            &mut s.s4xx,
            &mut s.s5xx,
        ]
        .into_iter()
        .zip(m.status)
        {
            *total += n;
        }
        let busier = match &self.busiest {
            None => true,
            Some(b) => m.count > b.requests || (m.count == b.requests && start < b.start_ms),
        };
        if busier && m.count > 0 {
            self.busiest = Some(Busiest {
                start: rfc3339(start),
                host: r.host.to_string(),
                source: r.source.to_string(),
                requests: m.count,
                top: r
                    .value
                    .top
                    .iter()
                    .flat_map(|t| t.dims.iter())
                    .filter_map(|(dim, _, entries)| {
                        let e = entries.first()?;
                        Some(TopKey {
                            dim: dim.name(),
                            key: e.key.clone(),
                            requests: e.count,
                            error: e.error,
                        })
                    })
                    .collect(),
                start_ms: start,
            });
        }
    }

    /// Fills in what the run's counters know, once every window is in.
    pub fn finish(&mut self, lines: u64, late: u64, dead: DeadLetterKinds, dead_total: u64) {
        self.lines = lines;
        self.late = late;
        self.dead_letters = DeadLetters {
            total: dead_total,
            kinds: dead,
        };
        self.error_percent = if self.requests == 0 {
            0.0
        } else {
            100.0 * self.errors as f64 / self.requests as f64
        };
        if let Some(a) = &mut self.app {
            let mut all: Vec<(&String, &(&'static str, u64))> = a.sums.iter().collect();
            all.sort_by(|x, y| y.1 .1.cmp(&x.1 .1).then_with(|| x.0.cmp(y.0)));
            a.templates = all
                .into_iter()
                .take(10)
                .map(|(t, &(level, n))| TemplateCount {
                    level,
                    template: t.clone(),
                    id: logpipe_analyzer::template::template_id(t.as_bytes()),
                    records: n,
                })
                .collect();
        }
        self.first_window_start = self.first_ms.map(rfc3339);
        self.last_window_end = self.last_ms.map(rfc3339);
        self.span_s = match (self.first_ms, self.last_ms) {
            (Some(f), Some(l)) => (l - f) / 1000,
            _ => 0,
        };
    }

    /// The totals block printed at the end of a run.
    pub fn render(&self, input: &str) -> String {
        let s = &self.status;
        let mut out = format!("\nSummary of {input}\n");
        let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<13}{v}\n"));
        row("lines", format!("{} read", self.lines));
        if let Some(a) = &self.app {
            row(
                "records",
                format!("{} (application log, {} lines)", a.records, a.lines),
            );
            row(
                "errors",
                format!(
                    "{:.2} % ({} at the error level or above)",
                    100.0 * a.errors as f64 / a.records.max(1) as f64,
                    a.errors
                ),
            );
            let levels: Vec<String> = a.levels.iter().map(|(l, n)| format!("{l} {n}")).collect();
            row("levels", levels.join(" · "));
            for (i, t) in a.templates.iter().enumerate() {
                row(
                    if i == 0 { "templates" } else { "" },
                    format!("{:<7} {:<8} {}", t.records, t.level, t.template),
                );
            }
        }
        if self.requests == 0 && self.app.is_some() {
            return self.render_rest(out);
        }
        row("requests", self.requests.to_string());
        row(
            "traffic",
            format!(
                "{} ({} bytes)",
                human_bytes(self.traffic_bytes),
                self.traffic_bytes
            ),
        );
        row(
            "errors",
            format!(
                "{:.2} % ({} with status ≥ {})",
                self.error_percent, self.errors, self.error_status
            ),
        );
        row(
            "status",
            format!(
                "1xx {} · 2xx {} · 3xx {} · 4xx {} · 5xx {}",
                s.s1xx, s.s2xx, s.s3xx, s.s4xx, s.s5xx
            ),
        );
        self.render_rest(out)
    }

    /// Time span, windows, busiest window, late lines and dead letters.
    fn render_rest(&self, mut out: String) -> String {
        let d = &self.dead_letters;
        let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<13}{v}\n"));
        match (&self.first_window_start, &self.last_window_end) {
            (Some(f), Some(l)) => row(
                "time span",
                format!(
                    "{f} .. {l} ({})",
                    humantime::format_duration(std::time::Duration::from_secs(
                        self.span_s.max(0) as u64
                    ))
                ),
            ),
            _ => row("time span", "no window".into()),
        }
        row(
            "windows",
            format!(
                "{} of {} s (one per host, source and window)",
                self.windows, self.window_s
            ),
        );
        if let Some(b) = &self.busiest {
            row(
                "busiest",
                format!(
                    "{} {} {}: {} requests ({:.1}/s)",
                    b.start,
                    b.host,
                    b.source,
                    b.requests,
                    b.requests as f64 / self.window_s.max(1) as f64
                ),
            );
            for t in &b.top {
                let bound = if t.error == 0 {
                    String::new()
                } else {
                    format!(" (at least {})", t.requests - t.error)
                };
                row(
                    &format!("  {}", t.dim.replace('_', " ")),
                    format!("{}: {}{bound}", t.key, t.requests),
                );
            }
        }
        row("late", format!("{} (in no window)", self.late));
        row(
            "dead letters",
            format!(
                "{}: {} malformed, {} cut short, {} damaged (NUL bytes), {} pieces never joined",
                d.total, d.kinds.malformed, d.kinds.cut, d.kinds.damaged, d.kinds.unjoined
            ),
        );
        out
    }
}

/// Bytes in binary units, one decimal (`23.4 MiB`).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logpipe_analyzer::top::{Dim, TopEntry, TopLists};
    use logpipe_analyzer::{Metrics, WindowValue};

    fn window(start_ms: i64, count: u64, status: [u64; 5]) -> WindowValue {
        WindowValue {
            source: 0,
            start_ms,
            metrics: Metrics {
                count,
                traffic: count * 100,
                errors: status[3] + status[4],
                status,
                unique_clients: 1,
                latency: None,
            },
            top: None,
            app: None,
            anomalies: Vec::new(),
            is_final: true,
            sketch: None,
        }
    }

    #[test]
    fn totals_span_and_the_busiest_window() {
        let mut s = Summary::new(10_000, 400);
        let ws = [
            ("a", 20_000, 5, [0, 4, 0, 1, 0]),
            ("b", 0, 7, [0, 5, 1, 0, 1]),
            ("a", 10_000, 7, [0, 7, 0, 0, 0]),
        ];
        for (src, start, count, status) in ws {
            let mut v = window(start, count, status);
            if src == "b" {
                let e = |key: &str, count, error| TopEntry {
                    key: key.into(),
                    count,
                    error,
                };
                v.top = Some(std::sync::Arc::new(TopLists {
                    dims: vec![
                        (Dim::Path, 7, vec![e("/cart", 4, 0), e("/", 3, 0)]),
                        (Dim::Client, 7, vec![e("203.0.113.7", 5, 2)]),
                    ],
                }));
            }
            s.add(&WindowReport {
                host: "h",
                source: src,
                window_ms: 10_000,
                value: &v,
            });
        }
        let kinds = DeadLetterKinds {
            malformed: 1,
            cut: 2,
            damaged: 0,
            unjoined: 0,
        };
        s.finish(22, 0, kinds, 3);
        assert_eq!(s.requests, 19);
        assert_eq!(s.traffic_bytes, 1900);
        assert_eq!(s.errors, 2);
        assert_eq!(s.status.s2xx, 16);
        assert_eq!(s.windows, 3);
        assert_eq!(s.span_s, 30);
        assert_eq!(
            s.first_window_start.as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
        assert_eq!(s.last_window_end.as_deref(), Some("1970-01-01T00:00:30Z"));
        let b = s.busiest.clone().unwrap();
        assert_eq!(
            (b.source.as_str(), b.requests, b.start_ms),
            ("b", 7, 0),
            "earliest of equals"
        );
        let text = s.render("x.log");
        assert!(text.contains("requests     19\n"), "{text}");
        assert!(text.contains("3: 1 malformed, 2 cut short"), "{text}");
        assert!(text.contains("    path       /cart: 4\n"), "{text}");
        assert!(
            text.contains("    client     203.0.113.7: 5 (at least 3)\n"),
            "{text}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["status"]["2xx"], 16);
        assert_eq!(json["dead_letters"]["cut"], 2);
        assert_eq!(json["busiest"]["start"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn application_windows_sum_into_records_levels_and_templates() {
        use logpipe_analyzer::applog::AppReport;
        use logpipe_analyzer::parse::Level;
        let mut s = Summary::new(10_000, 400);
        let e = |key: &str, count| TopEntry {
            key: key.into(),
            count,
            error: 0,
        };
        for (start, info, errors) in [(0, 8, 1), (10_000, 5, 3)] {
            let mut v = window(start, info + errors, [0; 5]);
            v.metrics.errors = errors;
            v.app = Some(std::sync::Arc::new(AppReport {
                lines: info + 4 * errors,
                levels: vec![
                    ("web".into(), Level::Info, info),
                    ("web".into(), Level::Error, errors),
                ],
                templates: vec![
                    (Level::Info, info, vec![e("served <num>", info)]),
                    (
                        Level::Error,
                        errors,
                        vec![e("failed | KeyError: <str>", errors)],
                    ),
                ],
                new_templates: vec![],
            }));
            s.add(&WindowReport {
                host: "h",
                source: "app.log",
                window_ms: 10_000,
                value: &v,
            });
        }
        s.finish(29, 0, DeadLetterKinds::default(), 0);
        assert_eq!(s.requests, 0, "records are not requests");
        let a = s.app.clone().unwrap();
        assert_eq!((a.records, a.lines, a.errors), (17, 29, 4));
        assert_eq!(a.levels[&"INFO"], 13);
        assert_eq!(a.templates[0].template, "served <num>");
        assert_eq!(a.templates[1].records, 4);
        let text = s.render("app.log");
        assert!(
            text.contains("records      17 (application log, 29 lines)\n"),
            "{text}"
        );
        assert!(text.contains("levels       ERROR 4 · INFO 13\n"), "{text}");
        assert!(!text.contains("requests"), "{text}");
        assert_eq!(serde_json::to_value(&s).unwrap()["app"]["records"], 17);
    }

    #[test]
    fn bytes_in_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
    }
}
