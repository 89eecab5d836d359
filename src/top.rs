//! `logpipe top`: a live terminal view of what the analyzers wrote to
//! InfluxDB (ratatui). Per source: a requests-per-second sparkline over its
//! recent windows, the newest window's QPS, error rate, p99 and status mix,
//! the anomalies flagged in those windows; for the selected source its top
//! paths and clients. Keys sort, filter, select and quit.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use logpipe_analyzer::InfluxSink;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState};
use ratatui::Frame;

use crate::cli::TopArgs;

/// Windows per source shown in the sparkline.
const HISTORY: usize = 30;

/// One source's newest windows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceView {
    pub host: String,
    pub source: String,
    /// QPS per window, oldest first.
    pub qps: Vec<f64>,
    /// The newest window.
    pub count: u64,
    pub error_rate: f64,
    pub p99: Option<f64>,
    /// Shares of 2xx, 3xx, 4xx, 5xx in the newest window.
    pub status: [f64; 4],
    /// Anomalies flagged in the windows shown.
    pub anomalies: u64,
    /// The newest and oldest window shown (start, ms).
    pub newest_ms: i64,
    pub oldest_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Qps,
    Errors,
    P99,
    Name,
}

impl Sort {
    fn next(self) -> Sort {
        match self {
            Sort::Qps => Sort::Errors,
            Sort::Errors => Sort::P99,
            Sort::P99 => Sort::Name,
            Sort::Name => Sort::Qps,
        }
    }
    fn label(self) -> &'static str {
        match self {
            Sort::Qps => "qps",
            Sort::Errors => "err%",
            Sort::P99 => "p99",
            Sort::Name => "name",
        }
    }
}

/// What the screen shows.
#[derive(Debug, Clone)]
pub struct Model {
    pub sources: Vec<SourceView>,
    pub sort: Sort,
    pub filter: String,
    /// Typing a filter (after `/`).
    pub editing: bool,
    pub selected: usize,
    /// The selected source's top paths and clients (key, count).
    pub top_paths: Vec<(String, u64)>,
    pub top_clients: Vec<(String, u64)>,
    pub status_line: String,
    /// The first words of the header: `logpipe top`, `logpipe demo`.
    pub title: String,
    /// Said after the sort and filter in the header (where the demo's points go).
    pub note: String,
    /// The newest messages of the process (the demo's, while it draws).
    pub messages: Vec<String>,
}

impl Model {
    pub fn new() -> Self {
        Model {
            sources: Vec::new(),
            sort: Sort::Qps,
            filter: String::new(),
            editing: false,
            selected: 0,
            top_paths: Vec::new(),
            top_clients: Vec::new(),
            status_line: String::new(),
            title: "logpipe top".into(),
            note: String::new(),
            messages: Vec::new(),
        }
    }

    /// The sources shown: filtered, sorted.
    pub fn visible(&self) -> Vec<&SourceView> {
        let f = self.filter.to_lowercase();
        let mut v: Vec<&SourceView> = self
            .sources
            .iter()
            .filter(|s| {
                f.is_empty()
                    || format!("{} {}", s.host, s.source)
                        .to_lowercase()
                        .contains(&f)
            })
            .collect();
        let last = |s: &SourceView| s.qps.last().copied().unwrap_or(0.0);
        match self.sort {
            Sort::Qps => v.sort_by(|a, b| last(b).total_cmp(&last(a))),
            Sort::Errors => v.sort_by(|a, b| b.error_rate.total_cmp(&a.error_rate)),
            Sort::P99 => v.sort_by(|a, b| b.p99.unwrap_or(-1.0).total_cmp(&a.p99.unwrap_or(-1.0))),
            Sort::Name => v.sort_by(|a, b| (&a.host, &a.source).cmp(&(&b.host, &b.source))),
        }
        v
    }

    /// The selected source, if any is shown.
    pub fn current(&self) -> Option<&SourceView> {
        let v = self.visible();
        v.get(self.selected.min(v.len().saturating_sub(1))).copied()
    }

    /// Applies a key; returns false to quit.
    pub fn key(&mut self, code: KeyCode, mods: KeyModifiers) -> bool {
        if mods.contains(KeyModifiers::CONTROL) && code == KeyCode::Char('c') {
            return false;
        }
        if self.editing {
            match code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => drop(self.filter.pop()),
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            self.selected = 0;
            return true;
        }
        match code {
            KeyCode::Char('q') | KeyCode::Esc => return false,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('/') => self.editing = true,
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(self.visible().len().saturating_sub(1))
            }
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            _ => {}
        }
        true
    }
}

/// `values` as a line of block characters, scaled to their maximum.
pub fn sparkline(values: &[f64]) -> String {
    use ratatui::symbols::bar::NINE_LEVELS as L;
    let levels = [
        L.empty,
        L.one_eighth,
        L.one_quarter,
        L.three_eighths,
        L.half,
        L.five_eighths,
        L.three_quarters,
        L.seven_eighths,
        L.full,
    ];
    let max = values.iter().copied().fold(0.0, f64::max);
    values
        .iter()
        .map(|&v| {
            let i = if max > 0.0 {
                ((v / max) * 8.0).round() as usize
            } else {
                0
            };
            levels[i.min(8)]
        })
        .collect()
}

/// Draws the model.
pub fn draw(f: &mut Frame, m: &Model) {
    let [head, table, detail, messages, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(8),
        Constraint::Length(m.messages.len() as u16),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(
        Paragraph::new(Line::from(vec![
            m.title.clone().bold(),
            format!(
                "  {} sources · sorted by {}{}{}",
                m.sources.len(),
                m.sort.label(),
                if m.filter.is_empty() {
                    String::new()
                } else {
                    format!(" · filter \"{}\"", m.filter)
                },
                if m.note.is_empty() {
                    String::new()
                } else {
                    format!(" · {}", m.note)
                }
            )
            .into(),
        ])),
        head,
    );
    let rows: Vec<Row> = m
        .visible()
        .iter()
        .map(|s| {
            let st = s.status;
            Row::new(vec![
                Cell::from(s.host.clone()),
                Cell::from(short_source(&s.source)),
                Cell::from(sparkline(&s.qps)),
                Cell::from(format!("{:.1}", s.qps.last().copied().unwrap_or(0.0))),
                Cell::from(format!("{:.2}", s.error_rate * 100.0)),
                Cell::from(s.p99.map_or("-".into(), |p| format!("{:.3}", p))),
                Cell::from(format!(
                    "{:.0}/{:.0}/{:.0}/{:.0}",
                    st[0] * 100.0,
                    st[1] * 100.0,
                    st[2] * 100.0,
                    st[3] * 100.0
                )),
                Cell::from(if s.anomalies > 0 {
                    format!("! {}", s.anomalies)
                } else {
                    String::new()
                }),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(14),
        Constraint::Length(24),
        Constraint::Length(HISTORY as u16),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(15),
        Constraint::Length(5),
    ];
    let t = Table::new(rows, widths)
        .header(
            Row::new([
                "host",
                "source",
                "requests/s (newest right)",
                "qps",
                "err%",
                "p99 s",
                "2/3/4/5xx %",
                "anom",
            ])
            .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .block(Block::new().borders(Borders::TOP));
    let mut state = TableState::default().with_selected(Some(m.selected));
    f.render_stateful_widget(t, table, &mut state);
    let title = m.current().map_or("top keys".into(), |s| {
        format!("top keys of {} {}", s.host, short_source(&s.source))
    });
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(detail);
    let list = |items: &[(String, u64)]| -> Vec<Line> {
        items
            .iter()
            .map(|(k, n)| Line::from(format!("{n:>7}  {k}")))
            .collect()
    };
    f.render_widget(
        Paragraph::new(list(&m.top_paths))
            .block(Block::bordered().title(format!("{title}: paths"))),
        left,
    );
    f.render_widget(
        Paragraph::new(list(&m.top_clients)).block(Block::bordered().title("clients")),
        right,
    );
    f.render_widget(
        Paragraph::new(
            m.messages
                .iter()
                .map(|l| Line::from(l.as_str()))
                .collect::<Vec<_>>(),
        ),
        messages,
    );
    let keys = if m.editing {
        format!("filter: {}▏ (Enter applies, Esc clears)", m.filter)
    } else {
        format!("q quit · s sort · / filter · ↑↓ select · {}", m.status_line)
    };
    f.render_widget(Paragraph::new(keys).dim(), foot);
}

/// A path source by its file name.
fn short_source(s: &str) -> String {
    s.rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or(s)
        .to_string()
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

/// Reads every source's newest windows, and the selected one's top keys.
fn load(sink: &InfluxSink, m: &mut Model) -> Result<()> {
    let series = sink
        .select(&format!(
            "SELECT qps, error_rate, latency_p99, count, status_2xx, status_3xx, status_4xx, status_5xx \
             FROM access_log GROUP BY \"host\", \"source\" ORDER BY time DESC LIMIT {HISTORY}"
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut sources = Vec::new();
    for s in &series {
        let host = s["tags"]["host"].as_str().unwrap_or("").to_string();
        let source = s["tags"]["source"].as_str().unwrap_or("").to_string();
        let Some(rows) = s["values"].as_array() else {
            continue;
        };
        let Some(newest) = rows.first() else { continue };
        let f = |i: usize| newest[i].as_f64();
        let count = f(4).unwrap_or(0.0);
        let share = |i: usize| f(i).unwrap_or(0.0) / count.max(1.0);
        sources.push(SourceView {
            qps: rows
                .iter()
                .rev()
                .map(|r| r[1].as_f64().unwrap_or(0.0))
                .collect(),
            count: count as u64,
            error_rate: f(2).unwrap_or(0.0),
            p99: f(3),
            status: [share(5), share(6), share(7), share(8)],
            anomalies: 0,
            newest_ms: newest[0].as_i64().unwrap_or(0),
            oldest_ms: rows.last().and_then(|r| r[0].as_i64()).unwrap_or(0),
            host,
            source,
        });
    }
    // Flags of the windows shown (one series per metric; GROUP BY merges them).
    let flags = sink
        .select(&format!(
            "SELECT score FROM access_anomaly GROUP BY \"host\", \"source\" ORDER BY time DESC LIMIT {}",
            HISTORY * 3
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for s in flags {
        let host = s["tags"]["host"].as_str().unwrap_or("");
        let source = s["tags"]["source"].as_str().unwrap_or("");
        if let Some(v) = sources
            .iter_mut()
            .find(|v| v.host == host && v.source == source)
        {
            v.anomalies = s["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r[0].as_i64().is_some_and(|t| t >= v.oldest_ms))
                .count() as u64;
        }
    }
    m.sources = sources;
    if let Some(cur) = m.current().cloned() {
        let top = |dim: &str| -> Vec<(String, u64)> {
            let q = format!(
                "SELECT \"key\", \"count\" FROM access_top WHERE \"host\" = '{}' AND \"source\" = '{}' AND \"dim\" = '{dim}' AND time = {}ms GROUP BY \"rank\"",
                esc(&cur.host),
                esc(&cur.source),
                cur.newest_ms
            );
            let mut v: Vec<(u64, String, u64)> = sink
                .select(&q)
                .unwrap_or_default()
                .iter()
                .filter_map(|s| {
                    let rank = s["tags"]["rank"].as_str()?.parse().ok()?;
                    let key = s["values"][0][1].as_str()?.to_string();
                    Some((rank, key, s["values"][0][2].as_u64()?))
                })
                .collect();
            v.sort();
            v.into_iter().map(|(_, k, n)| (k, n)).collect()
        };
        m.top_paths = top("path");
        m.top_clients = top("client");
    }
    Ok(())
}

pub fn run(a: TopArgs) -> Result<()> {
    use std::io::IsTerminal;
    let sink = crate::influx_sink(&a.influx)?
        .context("logpipe top reads the analyzers' InfluxDB: give --influx-url and --influx-db (or --influx-bucket)")?;
    sink.check_ready(false)?;
    if !std::io::stdout().is_terminal() {
        bail!("logpipe top draws on a terminal and stdout is not one; `logpipe status` prints a report");
    }
    run_screen(
        Model::new(),
        a.refresh,
        |m| match load(&sink, m) {
            Ok(()) => format!("refreshed {}", chrono::Utc::now().format("%H:%M:%S")),
            Err(e) => format!("InfluxDB: {e}"),
        },
        || false,
    )
}

/// Draws `m` on the terminal until a key quits or `done` says so: `load`
/// refreshes it every `refresh` (and at once when the selection changes)
/// and returns the status line.
pub fn run_screen(
    mut m: Model,
    refresh: Duration,
    mut load: impl FnMut(&mut Model) -> String,
    done: impl Fn() -> bool,
) -> Result<()> {
    let mut terminal =
        ratatui::try_init().context("taking the terminal for the full-screen view")?;
    let result = (|| -> Result<()> {
        let mut loaded = Instant::now() - refresh;
        while !done() {
            if loaded.elapsed() >= refresh {
                loaded = Instant::now();
                m.status_line = load(&mut m);
            }
            terminal.draw(|f| draw(f, &m))?;
            let wait = refresh
                .saturating_sub(loaded.elapsed())
                .min(Duration::from_millis(250));
            if event::poll(wait)? {
                if let Event::Key(k) = event::read()? {
                    if k.kind == KeyEventKind::Press {
                        let selected = m.current().map(|s| (s.host.clone(), s.source.clone()));
                        if !m.key(k.code, k.modifiers) {
                            return Ok(());
                        }
                        // A new selection shows its top keys at once.
                        if m.current().map(|s| (s.host.clone(), s.source.clone())) != selected {
                            loaded = Instant::now() - refresh;
                        }
                    }
                }
            }
        }
        Ok(())
    })();
    ratatui::restore();
    result
}

/// The view of windows as analyzers close them (the demo's, which has no
/// InfluxDB to read): per source its newest windows and top keys.
#[derive(Debug, Default)]
pub struct Feed {
    sources: std::collections::BTreeMap<(String, String), Fed>,
}

#[derive(Debug, Default)]
struct Fed {
    view: SourceView,
    /// Start and flags of each window shown, oldest first (beside `view.qps`).
    windows: std::collections::VecDeque<(i64, u64)>,
    paths: Vec<(String, u64)>,
    clients: Vec<(String, u64)>,
}

impl Feed {
    /// Adds a final window: an access log's requests, or an application
    /// log's records (its QPS is records per second, its p99 none).
    pub fn add(&mut self, r: &logpipe_analyzer::WindowReport<'_>) {
        use logpipe_analyzer::top::Dim;
        let v = r.value;
        let m = &v.metrics;
        let fed = self
            .sources
            .entry((r.host.to_string(), r.source.to_string()))
            .or_default();
        if v.start_ms < fed.view.newest_ms {
            return;
        }
        let s = &mut fed.view;
        s.host = r.host.to_string();
        s.source = r.source.to_string();
        s.qps
            .push(m.count as f64 * 1000.0 / r.window_ms.max(1) as f64);
        fed.windows
            .push_back((v.start_ms, v.anomalies.len() as u64));
        if s.qps.len() > HISTORY {
            s.qps.remove(0);
            fed.windows.pop_front();
        }
        s.oldest_ms = fed.windows.front().map_or(v.start_ms, |w| w.0);
        s.newest_ms = v.start_ms;
        s.count = m.count;
        s.error_rate = m.errors as f64 / m.count.max(1) as f64;
        s.p99 = m.latency.map(|l| l.p99);
        let n = m.count.max(1) as f64;
        s.status = [
            m.status[1] as f64 / n,
            m.status[2] as f64 / n,
            m.status[3] as f64 / n,
            m.status[4] as f64 / n,
        ];
        s.anomalies = fed.windows.iter().map(|w| w.1).sum();
        let keys = |dim: Dim| -> Vec<(String, u64)> {
            v.top
                .as_ref()
                .and_then(|t| t.dims.iter().find(|(d, _, _)| *d == dim))
                .map(|(_, _, e)| e.iter().map(|e| (e.key.clone(), e.count)).collect())
                .unwrap_or_default()
        };
        fed.paths = keys(Dim::Path);
        fed.clients = keys(Dim::Client);
    }

    /// Puts the sources, and the selected one's top keys, into `m`.
    pub fn fill(&self, m: &mut Model) {
        m.sources = self.sources.values().map(|f| f.view.clone()).collect();
        let cur = m.current().map(|s| (s.host.clone(), s.source.clone()));
        let fed = cur.and_then(|k| self.sources.get(&k));
        m.top_paths = fed.map(|f| f.paths.clone()).unwrap_or_default();
        m.top_clients = fed.map(|f| f.clients.clone()).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn source(host: &str, source: &str, qps: &[f64], err: f64, p99: f64) -> SourceView {
        SourceView {
            host: host.into(),
            source: source.into(),
            qps: qps.to_vec(),
            count: 100,
            error_rate: err,
            p99: Some(p99),
            status: [0.8, 0.1, 0.07, 0.03],
            anomalies: 0,
            newest_ms: 0,
            oldest_ms: 0,
        }
    }

    fn screen(m: &Model) -> String {
        let mut t = Terminal::new(TestBackend::new(130, 24)).unwrap();
        t.draw(|f| draw(f, m)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn model() -> Model {
        let mut m = Model::new();
        m.sources = vec![
            source(
                "web-1",
                "/var/log/nginx/shop.log",
                &[10.0, 20.0, 40.0],
                0.01,
                0.2,
            ),
            source("web-2", "api", &[5.0, 5.0, 80.0], 0.25, 1.5),
        ];
        m.sources[1].anomalies = 2;
        m.top_paths = vec![("/checkout".into(), 42), ("/".into(), 7)];
        m.top_clients = vec![("10.0.0.9".into(), 30)];
        m
    }

    #[test]
    fn the_screen_shows_sources_sparklines_and_top_keys() {
        let m = model();
        let s = screen(&m);
        for want in [
            "logpipe top  2 sources · sorted by qps",
            "shop.log",
            "80.0",
            "25.00",
            "1.500",
            "80/10/7/3",
            "! 2",
            "▁▁█",
            "▂▄█",
            "42  /checkout",
            "30  10.0.0.9",
            "q quit · s sort",
        ] {
            assert!(s.contains(want), "{want:?} not on the screen:\n{s}");
        }
        // Sorted by the newest QPS: api (80) above shop (40).
        assert!(s.find("api").unwrap() < s.find("shop.log").unwrap(), "{s}");
    }

    #[test]
    fn keys_sort_filter_select_and_quit() {
        let mut m = model();
        let none = KeyModifiers::NONE;
        assert!(m.key(KeyCode::Char('s'), none));
        assert_eq!(m.sort, Sort::Errors);
        assert_eq!(m.visible()[0].source, "api");
        m.key(KeyCode::Char('s'), none);
        m.key(KeyCode::Char('s'), none);
        assert_eq!(m.sort, Sort::Name);
        assert_eq!(m.visible()[0].host, "web-1");
        m.key(KeyCode::Down, none);
        assert_eq!(m.current().unwrap().host, "web-2");
        m.key(KeyCode::Char('/'), none);
        for c in "shop".chars() {
            m.key(KeyCode::Char(c), none);
        }
        assert!(screen(&m).contains("filter: shop"));
        m.key(KeyCode::Enter, none);
        assert_eq!(m.visible().len(), 1);
        assert_eq!(m.current().unwrap().host, "web-1");
        assert!(screen(&m).contains("filter \"shop\""));
        assert!(!m.key(KeyCode::Char('q'), none));
        assert!(!m.key(KeyCode::Char('c'), KeyModifiers::CONTROL));
    }

    #[test]
    fn sparklines_scale_to_their_maximum() {
        assert_eq!(sparkline(&[0.0, 4.0, 8.0]), " ▄█");
        assert_eq!(sparkline(&[0.0, 0.0]), "  ");
    }

    fn window(
        start_ms: i64,
        count: u64,
        errors: u64,
        flags: usize,
    ) -> logpipe_analyzer::WindowValue {
        use logpipe_analyzer::anomaly::{Anomaly, Direction, Metric};
        use logpipe_analyzer::top::{Dim, TopEntry, TopLists};
        let entry = |k: &str, n| TopEntry {
            key: k.into(),
            count: n,
            error: 0,
        };
        logpipe_analyzer::WindowValue {
            source: 0,
            start_ms,
            metrics: logpipe_analyzer::Metrics {
                count,
                errors,
                status: [0, count - errors, 0, 0, errors],
                ..Default::default()
            },
            top: Some(std::sync::Arc::new(TopLists {
                dims: vec![
                    (Dim::Path, count, vec![entry("/a", count)]),
                    (Dim::Client, count, vec![entry("10.0.0.1", 3)]),
                ],
            })),
            app: None,
            anomalies: (0..flags)
                .map(|_| Anomaly {
                    metric: Metric::ErrorRate,
                    logger: None,
                    value: 1.0,
                    baseline: 0.0,
                    score: 9.0,
                    direction: Direction::Up,
                })
                .collect(),
            is_final: true,
            sketch: None,
        }
    }

    #[test]
    fn the_feed_keeps_each_sources_newest_windows() {
        let mut feed = Feed::default();
        let add = |feed: &mut Feed, source: &str, v: &logpipe_analyzer::WindowValue| {
            feed.add(&logpipe_analyzer::WindowReport {
                host: "h",
                source,
                window_ms: 2_000,
                value: v,
            })
        };
        for i in 0..(HISTORY as i64 + 5) {
            add(
                &mut feed,
                "shop",
                &window(
                    i * 2_000,
                    200 + i as u64,
                    20,
                    usize::from(i == 3 || i == 30),
                ),
            );
        }
        add(&mut feed, "api", &window(0, 10, 0, 0));
        // A window older than the newest shown is not drawn after it.
        add(&mut feed, "api", &window(-2_000, 99, 0, 0));
        let mut m = Model::new();
        feed.fill(&mut m);
        assert_eq!(m.sources.len(), 2);
        let shop = m.sources.iter().find(|s| s.source == "shop").unwrap();
        assert_eq!(shop.qps.len(), HISTORY);
        assert_eq!(*shop.qps.last().unwrap(), (200.0 + 34.0) / 2.0);
        assert_eq!(shop.qps[0], (200.0 + 5.0) / 2.0);
        assert_eq!((shop.oldest_ms, shop.newest_ms), (10_000, 68_000));
        // The flag of window 3 has scrolled off; window 30's is shown.
        assert_eq!(shop.anomalies, 1);
        assert_eq!(shop.error_rate, 20.0 / 234.0);
        assert_eq!(shop.status[3], 20.0 / 234.0);
        let api = m.sources.iter().find(|s| s.source == "api").unwrap();
        assert_eq!(api.qps, vec![5.0]);
        // shop (117 qps) is selected first: its top keys.
        assert_eq!(m.top_paths, vec![("/a".to_string(), 234)]);
        assert_eq!(m.top_clients, vec![("10.0.0.1".to_string(), 3)]);
    }
}
