//! Anomalies of a source's window series — pure, deterministic.
//!
//! For each source a [`Baseline`] keeps the values of its last `history`
//! final windows: requests, error rate and latency p99. Each new final window
//! is scored against them before it joins them:
//!
//! `score = (value − median) / scale`, `scale = max(1.4826 · MAD, floor)`
//!
//! — a robust z-score (median and median absolute deviation, so past
//! incidents in the history do not hide the next one), with a floor per
//! metric so a flat history does not turn noise into alarms — the noise of
//! the metric itself: requests √median (Poisson) and at least 1, error rate
//! √(p(1−p)/n) for the median rate p (at least 0.001) over the window's n
//! requests (binomial), p99 10 % of the median and at least 1 ms. A window is
//! flagged when |score| ≥ the threshold in a direction that matters:
//! requests up and down, error rate and p99 up only. An error rate is scored
//! only with at least [`MIN_ERRORS`] errors in the window, a p99 only with at
//! least [`MIN_REQUESTS_FOR_P99`] requests.
//!
//! Windows of the source that never came between two final windows had no
//! requests: they join the requests history as 0 (a source that thins out
//! is a drop), not the other two (a rate or a percentile of nothing). A
//! silence at least as long as the history starts the baseline again, so a
//! source that sends only now and then is not flagged whenever it sends.
//! A source that stops altogether has no next window to flag.
//!
//! Final windows reach a source's baseline in window order, the order the
//! window core closes them in; a live run, a restarted one and a replay that
//! reads the same history feed it the same values, so they flag the same
//! windows.
//!
//! The window core scores each final window (`PartitionWindows::drain`);
//! a source's baseline is stored as text ([`Baseline::encode`]) in the
//! restore point beside its max event time, so a new owner continues it.
//! The false-positive and detection rates on generated traffic are measured
//! in the tests below (docs/analysis.md).
//!
//! An application source's baseline also keeps, per logger that has had
//! errors (at most [`MAX_LOGGERS`]), its errors per window (0 in a window
//! without them, a logger first seen erroring starts from zeros as long as
//! the source's history), scored like requests (floor √median, at least 1)
//! and flagged up only, with at least [`MIN_ERRORS`] errors. A logger whose
//! history holds no error any more is forgotten.

use std::collections::{BTreeMap, VecDeque};

use crate::window::Metrics;

/// Anomaly settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnomalySpec {
    /// Final windows a baseline remembers.
    pub history: usize,
    /// Windows needed before a metric is scored.
    pub min_history: usize,
    /// |score| at or above which a window is flagged.
    pub threshold: f64,
}

impl AnomalySpec {
    /// 30 windows (5 min of 10 s windows), scored from the 10th, flagged at 5
    /// (no flag in 12 969 metric-windows of steady generated traffic, every
    /// window of the large test incidents; see the tests).
    pub const DEFAULT: AnomalySpec = AnomalySpec {
        history: 30,
        min_history: 10,
        threshold: 5.0,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    Requests,
    ErrorRate,
    LatencyP99,
    /// An application logger's errors (the anomaly names the logger).
    LoggerErrors,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Requests => "requests",
            Metric::ErrorRate => "error_rate",
            Metric::LatencyP99 => "latency_p99",
            Metric::LoggerErrors => "errors",
        }
    }
}

/// Loggers with errors a baseline follows per source.
pub const MAX_LOGGERS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// One flagged metric of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    pub metric: Metric,
    /// The logger of [`Metric::LoggerErrors`].
    pub logger: Option<String>,
    pub value: f64,
    /// The median of the history.
    pub baseline: f64,
    pub score: f64,
    pub direction: Direction,
}

/// The recent final windows of one source; see the module docs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baseline {
    /// Start of the window after the last one seen.
    next_start: Option<i64>,
    requests: VecDeque<f64>,
    error_rate: VecDeque<f64>,
    p99: VecDeque<f64>,
    /// Errors per window of each logger that had errors in the history.
    loggers: BTreeMap<String, VecDeque<f64>>,
}

/// An error rate is scored only in a window with at least this many errors
/// (one error in a window of two requests is no incident).
pub const MIN_ERRORS: u64 = 5;
/// A p99 is scored only in a window with at least this many requests (below,
/// it is one of the slowest few requests).
pub const MIN_REQUESTS_FOR_P99: u64 = 20;

fn push(h: &mut VecDeque<f64>, v: f64, cap: usize) {
    if h.len() == cap {
        h.pop_front();
    }
    h.push_back(v);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// (median, score) of `x` against `h`, `None` with too little history.
fn score(h: &VecDeque<f64>, x: f64, min: usize, floor: impl Fn(f64) -> f64) -> Option<(f64, f64)> {
    if h.len() < min.max(1) {
        return None;
    }
    let mut v: Vec<f64> = h.iter().copied().collect();
    let med = median(&mut v);
    let mut dev: Vec<f64> = v.iter().map(|y| (y - med).abs()).collect();
    let mad = median(&mut dev);
    let scale = (1.4826 * mad).max(floor(med));
    Some((med, (x - med) / scale))
}

impl Baseline {
    /// Scores the final window at `start_ms` with values `m` (and, for an
    /// application log, `logger_errors`: errors per logger that had any),
    /// appends what it flags to `out`, then remembers it.
    pub fn observe(
        &mut self,
        spec: &AnomalySpec,
        window_ms: i64,
        start_ms: i64,
        m: &Metrics,
        logger_errors: &[(String, u64)],
        out: &mut Vec<Anomaly>,
    ) {
        let cap = spec.history.max(1);
        if let Some(next) = self.next_start {
            // Windows that never came had no requests; a silence as long as
            // the history starts the baseline again (a source that sends
            // now and then is not an incident each time it sends).
            let missing = (start_ms - next) / window_ms;
            if missing >= cap as i64 {
                *self = Baseline::default();
            } else {
                for _ in 0..missing.max(0) {
                    push(&mut self.requests, 0.0, cap);
                    for h in self.loggers.values_mut() {
                        push(h, 0.0, cap);
                    }
                }
            }
        }
        self.next_start = Some(self.next_start.map_or(start_ms, |n| n.max(start_ms)) + window_ms);
        let requests = m.count as f64;
        let mut check =
            |metric, h: &VecDeque<f64>, x: f64, floor: &dyn Fn(f64) -> f64, down: bool| {
                if let Some((baseline, s)) = score(h, x, spec.min_history, floor) {
                    let direction = if s >= spec.threshold {
                        Some(Direction::Up)
                    } else if down && s <= -spec.threshold {
                        Some(Direction::Down)
                    } else {
                        None
                    };
                    if let Some(direction) = direction {
                        out.push(Anomaly {
                            metric,
                            logger: None,
                            value: x,
                            baseline,
                            score: s,
                            direction,
                        });
                    }
                }
            };
        check(
            Metric::Requests,
            &self.requests,
            requests,
            &|med: f64| med.sqrt().max(1.0),
            true,
        );
        let error_rate = (m.count > 0).then(|| m.errors as f64 / m.count as f64);
        if let Some(e) = error_rate.filter(|_| m.errors >= MIN_ERRORS) {
            let n = m.count as f64;
            let binomial = |med: f64| {
                let p = med.max(0.001);
                (p * (1.0 - p) / n).sqrt()
            };
            check(Metric::ErrorRate, &self.error_rate, e, &binomial, false);
        }
        let p99 = m.latency.map(|l| l.p99);
        if let Some(p) = p99.filter(|_| m.count >= MIN_REQUESTS_FOR_P99) {
            check(
                Metric::LatencyP99,
                &self.p99,
                p,
                &|med: f64| (0.1 * med).max(0.001),
                false,
            );
        }
        // Per logger: score, then remember (0 for those without errors).
        let floor = |med: f64| med.sqrt().max(1.0);
        let known = self.requests.len();
        for (logger, n) in logger_errors.iter().filter(|(_, n)| *n > 0) {
            if !self.loggers.contains_key(logger) && self.loggers.len() >= MAX_LOGGERS {
                continue;
            }
            let h = self
                .loggers
                .entry(logger.clone())
                .or_insert_with(|| std::iter::repeat_n(0.0, known.min(cap)).collect());
            let x = *n as f64;
            if *n >= MIN_ERRORS {
                if let Some((baseline, s)) = score(h, x, spec.min_history, floor) {
                    if s >= spec.threshold {
                        out.push(Anomaly {
                            metric: Metric::LoggerErrors,
                            logger: Some(logger.clone()),
                            value: x,
                            baseline,
                            score: s,
                            direction: Direction::Up,
                        });
                    }
                }
            }
        }
        for (logger, h) in self.loggers.iter_mut() {
            let n = logger_errors
                .iter()
                .find(|(l, _)| l == logger)
                .map_or(0, |(_, n)| *n);
            push(h, n as f64, cap);
        }
        self.loggers.retain(|_, h| h.iter().any(|&v| v > 0.0));
        push(&mut self.requests, requests, cap);
        if let Some(e) = error_rate {
            push(&mut self.error_rate, e, cap);
        }
        if let Some(p) = p99 {
            push(&mut self.p99, p, cap);
        }
    }

    /// The state as text, for a restore point: `1;<next start>;<requests>;
    /// <error rates>;<p99s>`, values comma-separated, shortest round-trip
    /// decimal form.
    pub fn encode(&self) -> String {
        let list = |h: &VecDeque<f64>| {
            h.iter()
                .map(|v| format!("{v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut s = format!(
            "1;{};{};{};{}",
            self.next_start.map_or(String::new(), |n| n.to_string()),
            list(&self.requests),
            list(&self.error_rate),
            list(&self.p99)
        );
        // Version 2 adds `;logger=n,n,…|logger=…`, names percent-escaped.
        if !self.loggers.is_empty() {
            s.replace_range(0..1, "2");
            s.push(';');
            let entries: Vec<String> = self
                .loggers
                .iter()
                .map(|(l, h)| format!("{}={}", escape(l), list(h)))
                .collect();
            s.push_str(&entries.join("|"));
        }
        s
    }

    /// Reads [`Baseline::encode`]'s text back.
    pub fn decode(s: &str) -> Result<Baseline, String> {
        let parts: Vec<&str> = s.split(';').collect();
        let (version, next, requests, error_rate, p99, loggers) = match parts[..] {
            ["1", n, r, e, p] => ("1", n, r, e, p, ""),
            ["2", n, r, e, p, l] => ("2", n, r, e, p, l),
            [v, ..] if v != "1" && v != "2" => {
                return Err(format!("unknown baseline version {v:?}"))
            }
            _ => {
                return Err(format!(
                    "a baseline has 5 (version 1) or 6 (version 2) parts separated by ';', not {}: {s:?}",
                    parts.len()
                ))
            }
        };
        let _ = version;
        let list = |t: &str| -> Result<VecDeque<f64>, String> {
            t.split(',')
                .filter(|v| !v.is_empty())
                .map(|v| {
                    v.parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| format!("not a number in a baseline: {v:?}"))
                })
                .collect()
        };
        Ok(Baseline {
            next_start: if next.is_empty() {
                None
            } else {
                Some(
                    next.parse()
                        .map_err(|_| format!("bad window start in a baseline: {next:?}"))?,
                )
            },
            requests: list(requests)?,
            error_rate: list(error_rate)?,
            p99: list(p99)?,
            loggers: loggers
                .split('|')
                .filter(|e| !e.is_empty())
                .map(|e| {
                    let (name, values) = e
                        .rsplit_once('=')
                        .ok_or_else(|| format!("a logger's errors without '=': {e:?}"))?;
                    Ok((unescape(name)?, list(values)?))
                })
                .collect::<Result<_, String>>()?,
        })
    }
}

/// A logger name with `%`, `;`, `|`, `=` and `,` as `%XX`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' | ';' | '|' | '=' | ',' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape in a logger name: {s:?}"))?;
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("a logger name that is not UTF-8: {s:?}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use logpipe_traffic::{Generator, Incident, IncidentKind};

    use super::*;
    use crate::parse::parse_combined;
    use crate::top::TopSpec;
    use crate::window::{Hit, Latency, PartitionWindows, WindowSpec};

    fn metrics(count: u64, errors: u64, p99: Option<f64>) -> Metrics {
        Metrics {
            count,
            errors,
            latency: p99.map(|p99| Latency {
                p99,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_jump_is_flagged_after_enough_history_and_a_gap_is_a_drop() {
        let spec = AnomalySpec::DEFAULT;
        let mut b = Baseline::default();
        let mut out = vec![];
        for i in 0..20 {
            b.observe(
                &spec,
                10,
                i * 10,
                &metrics(100 + (i as u64 % 5), 2, Some(0.2)),
                &[],
                &mut out,
            );
        }
        assert!(out.is_empty(), "{out:?}");
        b.observe(&spec, 10, 200, &metrics(100, 40, Some(2.0)), &[], &mut out);
        let flagged: Vec<(Metric, Direction)> =
            out.iter().map(|a| (a.metric, a.direction)).collect();
        assert_eq!(
            flagged,
            [
                (Metric::ErrorRate, Direction::Up),
                (Metric::LatencyP99, Direction::Up)
            ]
        );
        out.clear();
        // 20 windows without a line, then one: the zeros are history now.
        b.observe(&spec, 10, 410, &metrics(100, 1, None), &[], &mut out);
        assert_eq!(b.requests.iter().filter(|&&r| r == 0.0).count(), 20);
        // A silence as long as the history: the baseline starts again, and
        // the window after it is not scored.
        out.clear();
        b.observe(&spec, 10, 720, &metrics(500, 1, None), &[], &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(b.requests.len(), 1);
        out.clear();
        let mut fresh = Baseline::default();
        for i in 0..12 {
            fresh.observe(&spec, 10, i * 10, &metrics(100, 1, None), &[], &mut out);
        }
        // After twelve windows of 100 requests, one of 3 is a drop.
        fresh.observe(&spec, 10, 120, &metrics(3, 0, None), &[], &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].metric, out[0].direction),
            (Metric::Requests, Direction::Down)
        );
    }

    #[test]
    fn a_loggers_error_burst_is_flagged_and_its_history_round_trips() {
        let spec = AnomalySpec::DEFAULT;
        let mut b = Baseline::default();
        let mut out = vec![];
        let errs = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
            v.iter().map(|(l, n)| (l.to_string(), *n)).collect()
        };
        for i in 0..20i64 {
            // web: 1–3 errors a window; db: none.
            let e = errs(&[("web", 1 + (i as u64 % 3))]);
            b.observe(&spec, 10, i * 10, &metrics(100, 2, None), &e, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        // Steady web, and db's first errors ever: 12 of them.
        let e = errs(&[("web", 2), ("db;a|b=c,d%", 12)]);
        b.observe(&spec, 10, 200, &metrics(100, 14, None), &e, &mut out);
        let flagged: Vec<(Metric, Option<&str>)> = out
            .iter()
            .map(|a| (a.metric, a.logger.as_deref()))
            .collect();
        assert!(
            flagged.contains(&(Metric::LoggerErrors, Some("db;a|b=c,d%"))),
            "{out:?}"
        );
        assert!(!flagged.contains(&(Metric::LoggerErrors, Some("web"))));
        let text = b.encode();
        assert!(text.starts_with("2;"), "{text}");
        assert_eq!(Baseline::decode(&text).unwrap(), b);
        // Four errors are too few to score, however new.
        out.clear();
        b.observe(
            &spec,
            10,
            210,
            &metrics(100, 4, None),
            &errs(&[("cache", 4)]),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        // A logger whose errors left its history is forgotten.
        for i in 22..60i64 {
            b.observe(&spec, 10, i * 10, &metrics(100, 0, None), &[], &mut out);
        }
        assert!(b.loggers.is_empty(), "{:?}", b.loggers.keys());
        assert!(b.encode().starts_with("1;"));
    }

    #[test]
    fn the_state_round_trips_as_text() {
        let spec = AnomalySpec::DEFAULT;
        let mut b = Baseline::default();
        let mut out = vec![];
        for i in 0..40 {
            b.observe(
                &spec,
                10,
                i * 10,
                &metrics(90 + i as u64, i as u64, Some(0.1 + i as f64 / 7.0)),
                &[],
                &mut out,
            );
        }
        let text = b.encode();
        assert_eq!(Baseline::decode(&text).unwrap(), b);
        assert_eq!(
            Baseline::decode(&Baseline::default().encode()).unwrap(),
            Baseline::default()
        );
        assert!(Baseline::decode("2;;;;").unwrap_err().contains("version"));
        assert!(Baseline::decode("1;0;1,x;;").unwrap_err().contains("\"x\""));
        assert!(Baseline::decode("1;0").is_err());
    }

    /// Window series of generated traffic (20 lines/s, 10 s windows, 4 h)
    /// through the parser and the window core, with incidents; returns per
    /// window start its metrics, in order.
    fn series(seed: u64, incidents: &[Incident]) -> BTreeMap<i64, Metrics> {
        let start = 1_704_067_200_000;
        let mut g = Generator::new(seed, start, 20.0)
            .with_request_time()
            .malformed_one_in(0);
        for i in incidents {
            g = g.with_incident(i.clone());
        }
        let spec = WindowSpec {
            window_ms: 10_000,
            lateness_ms: 30_000,
            error_status: 500,
            error_level: crate::parse::Level::Error,
            top: TopSpec::OFF,
            anomaly: None,
        };
        let mut w = PartitionWindows::new(spec);
        let mut values = vec![];
        for i in 0..(20 * 4 * 3600) {
            let (line, _) = g.next_line();
            if let Ok(l) = parse_combined(line.as_bytes()) {
                w.record(&Hit::from_line(0, &l, i));
            }
        }
        w.drain(false, true, &mut values);
        values
            .into_iter()
            .map(|v| (v.start_ms, v.metrics))
            .collect()
    }

    /// Flagged (window, metric) of a series.
    fn flags(spec: &AnomalySpec, s: &BTreeMap<i64, Metrics>) -> Vec<(i64, Metric)> {
        let mut b = Baseline::default();
        let mut out = vec![];
        let mut flagged = vec![];
        let last = *s.keys().last().unwrap();
        for (&t, m) in s {
            if t == last {
                break; // cut short by the end of the input
            }
            out.clear();
            b.observe(spec, 10_000, t, m, &[], &mut out);
            flagged.extend(out.iter().map(|a| (t, a.metric)));
        }
        flagged
    }

    /// Flags of a run with `incidents` (metric each should raise): how many
    /// incident windows were flagged for their metric, of how many, and how
    /// many flags fell outside the incidents.
    fn detection(
        spec: &AnomalySpec,
        incidents: &[(Metric, Incident)],
        s: &BTreeMap<i64, Metrics>,
    ) -> (usize, usize, usize) {
        let got = flags(spec, s);
        let (mut detected, mut windows) = (0, 0);
        for (metric, inc) in incidents {
            for t in (inc.from_ms..inc.to_ms).step_by(10_000) {
                windows += 1;
                detected += usize::from(got.contains(&(t, *metric)));
            }
        }
        let outside = got
            .iter()
            .filter(|(t, _)| {
                !incidents
                    .iter()
                    .any(|(_, i)| (i.from_ms..i.to_ms).contains(t))
            })
            .count();
        (detected, windows, outside)
    }

    fn incidents(
        error_share: f64,
        slow_share: f64,
        factor: u32,
        drop: f64,
    ) -> Vec<(Metric, Incident)> {
        let at = |min: i64| 1_704_067_200_000 + min * 60_000;
        vec![
            (
                Metric::ErrorRate,
                Incident {
                    from_ms: at(60),
                    to_ms: at(62),
                    share: error_share,
                    kind: IncidentKind::ErrorBurst {
                        path: "/api/v1/checkout".into(),
                    },
                },
            ),
            (
                Metric::LatencyP99,
                Incident {
                    from_ms: at(120),
                    to_ms: at(122),
                    share: slow_share,
                    kind: IncidentKind::LatencySpike { factor },
                },
            ),
            (
                Metric::Requests,
                Incident {
                    from_ms: at(180),
                    to_ms: at(182),
                    share: drop,
                    kind: IncidentKind::TrafficDrop,
                },
            ),
        ]
    }

    /// Steady traffic: how many windows a threshold flags (the
    /// false-positive rate); traffic with incidents, large (30 % errors,
    /// 20 % of requests 8× slower, 80 % of traffic gone) and small (8 %
    /// errors, 5 % 3× slower, 40 % gone): how many incident windows are
    /// flagged for their metric. Prints the rates per threshold; the default
    /// must flag nothing on steady traffic and every window of the large
    /// incidents.
    #[test]
    fn steady_traffic_is_quiet_and_incidents_are_flagged() {
        let steady: Vec<BTreeMap<i64, Metrics>> = (1..=3).map(|seed| series(seed, &[])).collect();
        let large = incidents(0.3, 0.2, 8, 0.8);
        let small = incidents(0.08, 0.05, 3, 0.4);
        let with = |inc: &[(Metric, Incident)], seed| {
            series(
                seed,
                &inc.iter().map(|(_, i)| i.clone()).collect::<Vec<_>>(),
            )
        };
        let (large_series, small_series) = (with(&large, 1), with(&small, 2));
        for threshold in [3.0, 4.0, 5.0, 6.0, 8.0] {
            let spec = AnomalySpec {
                threshold,
                ..AnomalySpec::DEFAULT
            };
            let windows: usize = steady.iter().map(|s| s.len() - 1).sum();
            let false_flags: usize = steady.iter().map(|s| flags(&spec, s).len()).sum();
            let big = detection(&spec, &large, &large_series);
            let little = detection(&spec, &small, &small_series);
            println!(
                "threshold {threshold}: steady traffic {false_flags} flags in {windows} windows × 3 metrics; \
                 large incidents {} of {} windows flagged ({} flags outside); \
                 small incidents {} of {} ({} outside)",
                big.0, big.1, big.2, little.0, little.1, little.2
            );
            if threshold == AnomalySpec::DEFAULT.threshold {
                assert_eq!(false_flags, 0, "the default flags steady traffic");
                assert_eq!(
                    (big.0, big.2),
                    (big.1, 0),
                    "the default and the large incidents"
                );
                assert_eq!(little.2, 0, "the default flags outside the small incidents");
            }
        }
    }
}
