//! Realistic synthetic nginx `combined` traffic, deterministic for a seed: the
//! demo's default input, the tests' known truth, the benchmarks' workload.
//!
//! Every line comes with the request it encodes (or `None` for a deliberately
//! malformed line), so a test can compute the expected windows from the
//! requests themselves, independently of the parser and the window code.
//! The mix covers what the old scripts lost: IPv6 clients, logged-in users,
//! `"-"` and garbage requests (status 400), escaped quotes (`\"` and `\x22`),
//! `-` body sizes, and timestamps out of order by a few seconds. Half of
//! the malformed lines are valid lines cut short after their status (as a
//! crash mid-write leaves them), some followed by NUL bytes.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;

/// One generated request, as it will appear in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub client: String,
    pub user: Option<String>,
    /// Event time in ms since the epoch; always a whole second (CLF has no fraction).
    pub time_ms: i64,
    /// The request line between the quotes, already escaped.
    pub request: String,
    pub status: u16,
    /// `None` is logged as `-`.
    pub body_bytes: Option<u64>,
    pub referer: String,
    pub user_agent: String,
    /// `$request_time` in ms, logged after the agent as seconds (`0.042`).
    pub request_time_ms: Option<u32>,
}

impl Request {
    /// The nginx `combined` line for this request (time zone `+0000`).
    pub fn render(&self) -> String {
        let t = chrono::DateTime::from_timestamp_millis(self.time_ms).expect("time in range");
        let mut line = format!(
            "{} - {} [{}] \"{}\" {} {} \"{}\" \"{}\"",
            self.client,
            self.user.as_deref().unwrap_or("-"),
            t.format("%d/%b/%Y:%H:%M:%S +0000"),
            self.request,
            self.status,
            self.body_bytes.map_or("-".to_string(), |b| b.to_string()),
            self.referer,
            self.user_agent
        );
        if let Some(ms) = self.request_time_ms {
            line += &format!(" {}.{:03}", ms / 1000, ms % 1000);
        }
        line
    }
}

const PATHS: &[&str] = &[
    "/",
    "/index.html",
    "/api/v1/items",
    "/api/v1/items/42",
    "/login",
    "/static/app.js",
    "/static/style.css",
    "/images/logo.png",
    "/search?q=rust+kafka&page=2",
    "/feed.xml",
    "/robots.txt",
    "/favicon.ico",
];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "curl/8.5.0",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
    "python-requests/2.31.0",
    "Mozilla/5.0 \\\"quoted\\\" agent",
    "Agent with \\x22nginx escapes\\x22",
];
const MALFORMED: &[&str] = &[
    "",
    "this is not an access log line",
    "10.0.0.1 - - [not a time] \"GET / HTTP/1.1\" 200 12 \"-\" \"-\"",
    "10.0.0.1 - - [01/Jan/2024:00:00:00 +0000] \"GET / HTTP/1.1\" OK 12 \"-\" \"-\"",
    "10.0.0.1 - - [01/Jan/2024:00:00:00 +0000] \"GET /unterminated HTTP/1.1 200 12",
];

/// Something that happens to the traffic during `[from_ms, to_ms)` of event
/// time: the truth the analysis tests look for.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub from_ms: i64,
    pub to_ms: i64,
    /// Share of the requests in the interval that the incident takes over.
    pub share: f64,
    pub kind: IncidentKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncidentKind {
    /// `GET <path>` answered 500 or 503.
    ErrorBurst { path: String },
    /// One client probing for well-known admin paths, answered 404.
    Scanner { client: String },
    /// The request takes `factor` times as long (with `with_request_time`).
    LatencySpike { factor: u32 },
    /// The request never comes: the stream is thinner by `share`.
    TrafficDrop,
}

/// Paths a scanner probes.
const PROBES: &[&str] = &[
    "/wp-login.php",
    "/.env",
    "/phpmyadmin/index.php",
    "/admin/config.php",
    "/.git/config",
    "/cgi-bin/luci",
];

/// A deterministic stream of lines starting at `start_ms`, `lines_per_sec` on average.
pub struct Generator {
    rng: Pcg64,
    t_ms: f64,
    step_ms: f64,
    /// One line in this many is malformed (0: never).
    malformed_one_in: u32,
    request_time: bool,
    incidents: Vec<Incident>,
    /// Draws for the incidents alone, so the requests they leave alone are
    /// those of the same seed without incidents.
    incident_rng: Pcg64,
}

impl Generator {
    pub fn new(seed: u64, start_ms: i64, lines_per_sec: f64) -> Self {
        Generator {
            rng: Pcg64::seed_from_u64(seed),
            t_ms: start_ms as f64,
            step_ms: 1000.0 / lines_per_sec,
            malformed_one_in: 200,
            request_time: false,
            incidents: Vec::new(),
            incident_rng: Pcg64::seed_from_u64(seed ^ 0x1bad_5eed),
        }
    }

    /// Adds an incident (see [`Incident`]).
    pub fn with_incident(mut self, incident: Incident) -> Self {
        self.incidents.push(incident);
        self
    }

    /// Appends `$request_time` (1 ms … ~3 s, log-uniform) to every line.
    pub fn with_request_time(mut self) -> Self {
        self.request_time = true;
        self
    }

    /// Sets how often a malformed line appears (one in `n`, 0 for never).
    pub fn malformed_one_in(mut self, n: u32) -> Self {
        self.malformed_one_in = n;
        self
    }

    /// The event time the stream has reached.
    pub fn now_ms(&self) -> i64 {
        self.t_ms as i64
    }

    /// The next line and the request it encodes (`None`: malformed on purpose).
    pub fn next_line(&mut self) -> (String, Option<Request>) {
        loop {
            if let Some(next) = self.next_line_or_dropped() {
                return next;
            }
        }
    }

    /// [`Generator::next_line`], `None` when a traffic drop took it.
    fn next_line_or_dropped(&mut self) -> Option<(String, Option<Request>)> {
        self.t_ms += self.step_ms;
        let r = &mut self.rng;
        let damaged = self.malformed_one_in > 0 && r.random_range(0..self.malformed_one_in) == 0;
        if damaged && r.random_bool(0.5) {
            let m = MALFORMED[r.random_range(0..MALFORMED.len())];
            return Some((m.to_string(), None));
        }
        let (line, req) = self.request()?;
        if !damaged {
            return Some((line, Some(req)));
        }
        // A line cut short in the file (a crash mid-write, a full disk): it
        // keeps its status and ends in the size, the referer or the agent —
        // the cuts that used to be counted with made-up values. Now and
        // then NULs follow, as in a file preallocated before a crash.
        let r = &mut self.rng;
        let status_end = line.find(&format!("\" {} ", req.status)).expect("status") + 6;
        let agent_close = line.len()
            - req
                .request_time_ms
                .map_or(0, |_| line.len() - line.rfind(' ').unwrap())
            - 1;
        let mut cut = line[..r.random_range(status_end..agent_close)].to_string();
        if r.random_bool(0.2) {
            cut.push_str(&"\0".repeat(r.random_range(1..64)));
        }
        Some((cut, None))
    }

    /// A valid request and its line (`None`: dropped by an incident).
    fn request(&mut self) -> Option<(String, Request)> {
        let r = &mut self.rng;
        // A few seconds out of order now and then, as with buffered writers.
        let jitter = if r.random_bool(0.05) {
            r.random_range(1..=5) * 1000
        } else {
            0
        };
        let time_ms = ((self.t_ms as i64 - jitter) / 1000) * 1000;
        let client = if r.random_bool(0.2) {
            format!(
                "2001:db8:{:x}::{:x}",
                r.random_range(0..0xffff),
                r.random_range(1..0xffff)
            )
        } else {
            format!(
                "{}.{}.{}.{}",
                r.random_range(1..224),
                r.random_range(0..256),
                r.random_range(0..256),
                r.random_range(1..255)
            )
        };
        let user = match r.random_range(0..20) {
            0 => Some("alice".to_string()),
            1 => Some("bob.smith@example.com".to_string()),
            2 => Some("carol jones".to_string()),
            _ => None,
        };
        let (request, status) = match r.random_range(0..100) {
            0 => ("-".to_string(), 400),
            1 => ("\\x16\\x03\\x01\\x00\\xF4\\x01\\x00".to_string(), 400),
            2 => ("GET /a\\x22quoted\\x22 HTTP/1.1".to_string(), 404),
            _ => {
                let method = [
                    "GET", "GET", "GET", "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS",
                ][r.random_range(0..9)];
                let path = PATHS[r.random_range(0..PATHS.len())];
                let status = match r.random_range(0..1000) {
                    0..=2 => 101,
                    3..=799 => 200,
                    800..=839 => 206,
                    840..=899 => 304,
                    900..=929 => 301,
                    930..=969 => 404,
                    970..=979 => 403,
                    980..=989 => 500,
                    990..=994 => 502,
                    _ => 503,
                };
                (
                    format!(
                        "{method} {path} HTTP/{}",
                        ["1.0", "1.1", "2.0"][r.random_range(0..3)]
                    ),
                    status,
                )
            }
        };
        let body_bytes = match status {
            101 | 304 => {
                if r.random_bool(0.5) {
                    None
                } else {
                    Some(0)
                }
            }
            _ => Some(r.random_range(0..200_000)),
        };
        let referer = if r.random_bool(0.5) {
            "-".to_string()
        } else {
            format!(
                "https://example.com{}",
                PATHS[r.random_range(0..PATHS.len())]
            )
        };
        let user_agent = AGENTS[r.random_range(0..AGENTS.len())].to_string();
        let request_time_ms = self
            .request_time
            .then(|| r.random_range(0.0f64..8.0).exp() as u32);
        let mut req = Request {
            client,
            user,
            time_ms,
            request,
            status,
            body_bytes,
            referer,
            user_agent,
            request_time_ms,
        };
        for inc in &self.incidents {
            if !(inc.from_ms..inc.to_ms).contains(&time_ms) {
                continue;
            }
            let r = &mut self.incident_rng;
            if !r.random_bool(inc.share) {
                continue;
            }
            match &inc.kind {
                IncidentKind::ErrorBurst { path } => {
                    req.request = format!("GET {path} HTTP/1.1");
                    req.status = if r.random_bool(0.5) { 500 } else { 503 };
                }
                IncidentKind::Scanner { client } => {
                    req.client = client.clone();
                    req.request =
                        format!("GET {} HTTP/1.1", PROBES[r.random_range(0..PROBES.len())]);
                    req.status = 404;
                    req.user = None;
                    req.referer = "-".to_string();
                    req.user_agent = "Mozilla/5.0 zgrab/0.x".to_string();
                }
                IncidentKind::LatencySpike { factor } => {
                    req.request_time_ms = req.request_time_ms.map(|t| t.saturating_mul(*factor));
                }
                IncidentKind::TrafficDrop => return None,
            }
            break;
        }
        Some((req.render(), req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incident_changes_only_its_interval() {
        let plain: Vec<_> = {
            let mut g = Generator::new(3, 0, 100.0).malformed_one_in(0);
            (0..3000).map(|_| g.next_line().1.unwrap()).collect()
        };
        let mut g = Generator::new(3, 0, 100.0)
            .malformed_one_in(0)
            .with_incident(Incident {
                from_ms: 10_000,
                to_ms: 20_000,
                share: 0.5,
                kind: IncidentKind::Scanner {
                    client: "203.0.113.9".into(),
                },
            });
        let mut taken = 0;
        for p in &plain {
            let r = g.next_line().1.unwrap();
            if (10_000..20_000).contains(&p.time_ms) && r != *p {
                assert_eq!((r.client.as_str(), r.status), ("203.0.113.9", 404));
                taken += 1;
            } else {
                assert_eq!(&r, p);
            }
        }
        // About half of the ~1 000 requests in the interval.
        assert!((400..600).contains(&taken), "{taken}");
    }

    #[test]
    fn same_seed_same_lines() {
        let a: Vec<_> = (0..100)
            .map({
                let mut g = Generator::new(7, 0, 100.0);
                move |_| g.next_line().0
            })
            .collect();
        let mut g = Generator::new(7, 0, 100.0);
        assert!(a.iter().all(|l| *l == g.next_line().0));
    }
}
