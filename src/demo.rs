//! `logpipe demo`: the embedded default. A mock Kafka broker, a producer and
//! analyzers in one process, closed windows printed as a live table.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use logpipe_analyzer::{AnalyzerConfig, Control, LpFileSink, Observer, Sink, WindowReport};
use logpipe_consumer::{GroupConfig, MockBroker};
use logpipe_traffic::Generator;
use logpipe_wire::Shutdown;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::cli::DemoArgs;
use crate::summary::Summary;

const GROUP: &str = "logpipe-demo";

/// Bytes of records the embedded broker may hold that no analyzer has
/// fetched yet. It is librdkafka's mock cluster, which keeps at most 5 MiB
/// of batches per partition and drops the oldest beyond that; a producer
/// reading a large file faster than an analyzer consumes would have lines
/// deleted before they are read (a 1 M-line file lost 90 % of its lines this
/// way before the producer was held).
const MAX_UNFETCHED_BYTES: u64 = 3 << 20;
/// What a record costs beside its value: key, headers, record framing.
const RECORD_OVERHEAD_BYTES: u64 = 200;

/// Lets the producer send records only up to what the analyzers fetched
/// (consumed, or in their fetch queues; counted a little late, so never
/// too many) plus [`MAX_UNFETCHED_BYTES`] of records of the largest size
/// sent so far; before the first record is sent, one. A limit and not a
/// switch: a producer of 64 KiB runs sends several MiB in the millisecond
/// a switch takes to flip (with wire v2 the embedded broker lost records
/// that way in half the runs of the 1 M-line bench). Returns the switch
/// that ends the watch.
fn hold_producer_while_behind(
    pctl: logpipe_producer::Control,
    control: Arc<Control>,
) -> Arc<AtomicBool> {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        while !d.load(Ordering::Relaxed) {
            let sent = pctl.stats.records_sent.load(Ordering::Relaxed);
            let largest = pctl.stats.record_bytes_max.load(Ordering::Relaxed);
            let fetched = control.fetched();
            let room = if sent == 0 {
                1
            } else {
                (MAX_UNFETCHED_BYTES / (largest + RECORD_OVERHEAD_BYTES)).max(1)
            };
            pctl.send_limit.set(fetched + room);
            std::thread::sleep(Duration::from_micros(200));
        }
        pctl.send_limit.set(u64::MAX);
    });
    done
}

/// Where this run's points go: a fresh file per run (the state file of its
/// restore points beside it), never one that earlier runs wrote.
fn points_file(explicit: Option<&PathBuf>) -> Result<(PathBuf, bool)> {
    let path = match explicit {
        Some(p) => p.clone(),
        None => {
            let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
            let dir =
                std::env::temp_dir().join(format!("logpipe-demo-{stamp}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.join("points.lp")
        }
    };
    let mut state = path.as_os_str().to_owned();
    state.push(".state.json");
    let replaced = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
    for p in [path.clone(), PathBuf::from(state)] {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("replacing {}", p.display()));
            }
            _ => {}
        }
    }
    Ok((path, replaced))
}

pub fn run(a: DemoArgs) -> Result<()> {
    let spec = crate::window_spec(&a.window)?;
    let formats = std::sync::Arc::new(crate::formats(&a.parse)?);
    if a.analyzers == 0 {
        bail!("--analyzers must be at least 1");
    }
    let flag = crate::shutdown()?;
    let influx = crate::influx_sink(&a.influx)?;
    if let Some(s) = &influx {
        s.ensure_database()
            .context("creating the InfluxDB database")?;
    }
    let lp_out = match &influx {
        Some(_) => None,
        None => Some(points_file(a.lp_out.as_ref())?),
    };
    // The first line says where the numbers go, and how to send them elsewhere.
    let out_desc = match (&influx, &lp_out) {
        (Some(s), _) => {
            crate::errln!("logpipe demo: writing points to {}", s.describe());
            s.describe()
        }
        (None, Some((path, replaced))) => {
            crate::errln!(
                "logpipe demo: writing points to {}{} (InfluxDB line protocol; \
                 --influx-url http://127.0.0.1:8086 --influx-db logs writes them to InfluxDB instead)",
                path.display(),
                if *replaced { ", replacing what an earlier run wrote there" } else { "" }
            );
            format!("line-protocol file {}", path.display())
        }
        (None, None) => unreachable!("a sink is chosen above"),
    };
    // A terminal gets the full-screen view of `logpipe top` over the
    // demo's own windows; a pipe, a file, --plain and a one-shot run the table.
    let screen = {
        use std::io::IsTerminal;
        !a.plain && !a.exit_on_eof && std::io::stdout().is_terminal()
    };
    let broker = MockBroker::start(1).context("starting the embedded broker")?;
    broker.create_topic(logpipe_wire::DEFAULT_TOPIC, a.partitions)?;
    broker.create_topic(logpipe_wire::DEFAULT_DLQ_TOPIC, 1)?;
    crate::errln!(
        "logpipe demo: embedded broker on {}, {} analyzers, windows of {:?}; Ctrl-C stops (LOGPIPE_LOG=info shows the components' log)",
        broker.bootstrap(),
        a.analyzers,
        a.window.window
    );

    // The embedded topic is new on every run, so restore points of earlier
    // runs (in the same database or state file) must not apply: one group per run.
    let group = format!("{GROUP}-{}", chrono::Utc::now().timestamp_millis());
    // Analyzers first, so the group is settled before the first line arrives.
    let control = Control::new();
    let table = Arc::new(Mutex::new(Table {
        lines: 0,
        app_header: false,
        summary: Summary::new(spec.window_ms, spec.error_status),
    }));
    let feed = Arc::new(Mutex::new(crate::top::Feed::default()));
    let mut analyzers = Vec::new();
    for i in 0..a.analyzers {
        let sink: Box<dyn Sink> = match crate::influx_sink(&a.influx)? {
            Some(s) => Box::new(s),
            None => Box::new(LpFileSink::create(&lp_out.as_ref().expect("a file").0)?),
        };
        let group = GroupConfig {
            brokers: broker.bootstrap().to_string(),
            topic: logpipe_wire::DEFAULT_TOPIC.to_string(),
            group: group.clone(),
            extra: vec![
                ("session.timeout.ms".into(), "2000".into()),
                ("heartbeat.interval.ms".into(), "500".into()),
                // The mock broker holds a fetch this long when there is
                // nothing new, and does not answer it early when records
                // arrive (500 ms by default: a held producer then waited).
                // A one-shot run keeps its analyzers right behind a
                // producer held 3 MiB ahead of them: each fetch that found
                // nothing new cost the whole wait, 10 ms per 3 MiB (half of
                // a 1 M-line run's time with wire v2); 1 ms there, 10 ms
                // for a live run, which is mostly idle.
                (
                    "fetch.wait.max.ms".into(),
                    if a.exit_on_eof { "1" } else { "10" }.into(),
                ),
                // Wire v2 records are ~64 KiB: librdkafka's 1 MiB per
                // partition and fetch made the one partition of a one-source
                // input wait a round trip per 16 records.
                ("max.partition.fetch.bytes".into(), (4 << 20).to_string()),
            ],
            // A one-shot run has no members coming and going: fixed
            // partitions spare it the group's join (about a second).
            partitions: a.exit_on_eof.then(|| {
                (0..a.partitions)
                    .filter(|p| *p as usize % a.analyzers == i)
                    .collect()
            }),
        };
        let cfg = AnalyzerConfig {
            flush_interval: a.window.flush_interval,
            formats: formats.clone(),
            ..AnalyzerConfig::new(group, spec, format!("demo-{i}"))
        };
        let observer: Observer = if screen {
            let f = feed.clone();
            Box::new(move |r: &WindowReport<'_>| f.lock().unwrap().add(r))
        } else {
            let t = table.clone();
            Box::new(move |r: &WindowReport<'_>| t.lock().unwrap().print(r))
        };
        let c = control.clone();
        analyzers.push(std::thread::spawn(move || {
            logpipe_analyzer::run(cfg, sink, Some(observer), c)
        }));
    }
    wait_for_assignment(&control, a.partitions, a.analyzers, &flag);
    report_dead_letters(control.clone(), broker.bootstrap().to_string());

    // The input: a given log, or generated traffic written to a file we follow.
    // The producer's and generators' own switch, stopped at a signal.
    let stop_input = Shutdown::new();
    let (paths, from_beginning, generated) = match &a.input {
        Some(p) => (vec![p.clone()], a.from_beginning, None),
        None => {
            // Three virtual hosts, so the table and the partitions have some
            // variety; their files are removed however the run ends.
            let dir = tempfile::Builder::new()
                .prefix("logpipe-demo-input-")
                .tempdir()
                .context("creating the generated logs' directory")?;
            let paths: Vec<PathBuf> = ["shop", "api", "blog"]
                .iter()
                .map(|n| dir.path().join(format!("{n}.access.log")))
                .collect();
            let mut threads = Vec::new();
            for (i, p) in paths.iter().enumerate() {
                threads.push(spawn_generator(
                    p.clone(),
                    i as u64,
                    a.rate / 3.0,
                    0,
                    stop_input.clone(),
                )?);
            }
            (paths, true, Some((dir, threads)))
        }
    };
    // Generated logs are named by their site (`shop`, not a temporary
    // path); a given file keeps its path as its source, as `produce` does.
    let inputs = paths
        .iter()
        .map(|p| logpipe_producer::discover::InputSpec {
            paths: vec![p.display().to_string()],
            source: generated.as_ref().and_then(|_| site_of(p)),
            ..Default::default()
        })
        .collect();
    let mut pcfg = logpipe_producer::ProducerConfig::new(
        broker.bootstrap(),
        logpipe_wire::DEFAULT_TOPIC,
        &crate::hostname(),
        inputs,
    );
    pcfg.from_beginning = from_beginning;
    pcfg.exit_on_eof = a.exit_on_eof;
    pcfg.packing.lines_per_record = a.lines_per_record;
    pcfg.poll_interval = Duration::from_millis(50);
    // The broker is in this process: compressing batches only costs CPU
    // (lz4 was a third of the producer's Kafka thread and a copy on both ends).
    pcfg.extra.push(("compression.type".into(), "none".into()));
    let pctl = logpipe_producer::Control {
        shutdown: stop_input.clone(),
        ..Default::default()
    };
    let producer = {
        let pctl = pctl.clone();
        std::thread::spawn(move || logpipe_producer::run_with(pcfg, pctl))
    };
    let gate = hold_producer_while_behind(pctl, control.clone());
    {
        let stop = stop_input.clone();
        let c = control.clone();
        let signal = flag.clone();
        // Sleeps until the process is asked to stop, then stops input and analyzers.
        std::thread::spawn(move || {
            signal.wait();
            stop.stop();
            c.stop();
        });
    }

    if screen {
        show_screen(&feed, &control, &out_desc, &flag, &producer)?;
    }
    let produced = producer
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))?;
    gate.store(true, Ordering::Relaxed);
    let produced = produced?;
    if let Some((dir, threads)) = generated {
        threads.into_iter().for_each(|t| drop(t.join()));
        drop(dir);
    }
    if a.exit_on_eof && !flag.is_requested() {
        // Wait until the analyzers consumed everything that was produced, then close every window.
        let ends = end_offsets(broker.bootstrap(), a.partitions)?;
        let started = Instant::now();
        loop {
            let progress = control.progress();
            let done = ends
                .iter()
                .enumerate()
                .all(|(p, &end)| end == 0 || progress.get(&(p as i32)).is_some_and(|&o| o >= end));
            if done || control.is_stopping() {
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!("analyzers did not reach the end of the topic within 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        control.finish();
    } else {
        control.stop();
    }
    let mut total = logpipe_analyzer::Counters::default();
    for h in analyzers {
        let c = h
            .join()
            .map_err(|_| anyhow::anyhow!("an analyzer thread panicked"))??;
        total.add(&c);
    }
    let k = &total.dead_letter_kinds;
    crate::errln!(
        "logpipe demo: {} lines produced; {} read, {} parsed, {} dead-lettered ({} malformed, {} cut short, {} damaged, {} pieces never joined), {} late; {} windows written to {out_desc}",
        produced.lines, total.consumed, total.parsed, total.dead_lettered, k.malformed, k.cut, k.damaged, k.unjoined, total.late, total.windows_written
    );
    let finished = a.exit_on_eof && !flag.is_requested();
    if finished {
        let mut summary = std::mem::take(&mut table.lock().unwrap().summary);
        summary.finish(
            produced.lines,
            total.late,
            total.dead_letter_kinds,
            total.dead_lettered,
        );
        let input = a
            .input
            .as_ref()
            .map_or("".into(), |p| p.display().to_string());
        crate::outln!("{}", summary.render(&input));
        if let Some(path) = &a.summary_json {
            let json = serde_json::to_string_pretty(&summary)?;
            std::fs::write(path, json + "\n")
                .with_context(|| format!("--summary-json {}", path.display()))?;
        }
    }
    // Records the analyzers found gone, and (a one-shot run knows) lines.
    let records = total.offsets_skipped;
    let lines = if a.exit_on_eof && !flag.is_requested() {
        produced.lines.saturating_sub(total.consumed)
    } else {
        0
    };
    if records > 0 || lines > 0 {
        let lines = if lines > 0 {
            format!(" ({lines} lines)")
        } else {
            String::new()
        };
        bail!(
            "{records} records{lines} were deleted by the embedded broker before the analyzers \
             read them (it keeps about 5 MiB per partition); the numbers above miss them"
        );
    }
    Ok(())
}

/// The full-screen view until a key quits it (or a signal, or the
/// pipeline stopping), then the demo stops. Meanwhile the process's
/// messages are kept and its newest shown under the table; they are written
/// out when the terminal is given back.
fn show_screen<T>(
    feed: &Mutex<crate::top::Feed>,
    control: &Control,
    out_desc: &str,
    flag: &Shutdown,
    producer: &std::thread::JoinHandle<T>,
) -> Result<()> {
    let mut m = crate::top::Model::new();
    m.title = "logpipe demo".into();
    m.note = format!("points to {out_desc}");
    crate::output::capture_stderr();
    let shown = crate::top::run_screen(
        m,
        Duration::from_millis(500),
        |m| {
            feed.lock().unwrap().fill(m);
            m.messages = crate::output::captured_newest(3);
            let c = control.totals();
            if m.sources.is_empty() {
                format!(
                    "{} lines read; the first windows show when they close",
                    c.consumed
                )
            } else {
                format!(
                    "{} lines read, {} dead-lettered",
                    c.consumed, c.dead_lettered
                )
            }
        },
        || flag.is_requested() || control.is_stopping() || producer.is_finished(),
    );
    flag.stop();
    crate::output::release_stderr();
    shown
}

/// Says what the analyzers dead-lettered, by kind, once every 10 s when it
/// changed (the lines themselves: `logpipe dlq`), until they stop.
fn report_dead_letters(control: Arc<Control>, bootstrap: String) {
    std::thread::spawn(move || {
        let mut said = logpipe_analyzer::DeadLetterKinds::default();
        while !control.shutdown().wait_timeout(Duration::from_secs(10)) {
            let k = control.totals().dead_letter_kinds;
            if k == said {
                continue;
            }
            said = k;
            let kinds: Vec<String> = [
                (k.malformed, "malformed"),
                (k.cut, "cut short"),
                (k.damaged, "damaged (NUL bytes)"),
                (k.unjoined, "pieces never joined"),
            ]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
            crate::errln!(
                "logpipe demo: dead letters so far: {}; `logpipe dlq --brokers {bootstrap}` shows them",
                kinds.join(", ")
            );
        }
    });
}

/// Waits (up to 15 s, or until interrupted) until every partition has an
/// owner and every analyzer has one.
fn wait_for_assignment(control: &Control, partitions: i32, analyzers: usize, stop: &Shutdown) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !stop.is_requested() {
        let a = control.assignments();
        if a.len() == analyzers
            && a.values().sum::<usize>() == partitions as usize
            && a.values().all(|&n| n > 0)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!("consumer group not settled after 15 s; starting anyway");
}

fn end_offsets(bootstrap: &str, partitions: i32) -> Result<Vec<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    (0..partitions)
        .map(|p| {
            Ok(
                c.fetch_watermarks(logpipe_wire::DEFAULT_TOPIC, p, Duration::from_secs(10))?
                    .1,
            )
        })
        .collect()
}

/// Writes generated traffic to `path`: the last 45 s at once (so windows
/// close within seconds), then `rate` lines per second in real time.
/// Appends generated lines to `path` in real time (starting 45 s in the
/// past, so windows close soon); with `rotate_lines` > 0 the file is renamed
/// to `<path>.1` and started anew after that many lines, like logrotate.
pub fn spawn_generator(
    path: PathBuf,
    seed: u64,
    rate: f64,
    rotate_lines: u64,
    stop: Shutdown,
) -> Result<std::thread::JoinHandle<()>> {
    let open = |p: &PathBuf| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("creating {}", p.display()))
    };
    let mut file = open(&path)?;
    let now_ms = || chrono::Utc::now().timestamp_millis();
    let mut g = Generator::new(seed ^ now_ms() as u64, now_ms() - 45_000, rate).with_request_time();
    Ok(std::thread::spawn(move || {
        let mut buf = String::new();
        let mut in_file = 0u64;
        while !stop.is_requested() {
            while g.now_ms() < now_ms() {
                buf.push_str(&g.next_line().0);
                buf.push('\n');
                in_file += 1;
                if rotate_lines > 0 && in_file >= rotate_lines {
                    let rotated = path.with_extension("log.1");
                    if file.write_all(buf.as_bytes()).is_err()
                        || std::fs::rename(&path, rotated).is_err()
                    {
                        return;
                    }
                    buf.clear();
                    in_file = 0;
                    match open(&path) {
                        Ok(f) => file = f,
                        Err(_) => return,
                    }
                }
            }
            if file.write_all(buf.as_bytes()).is_err() {
                return;
            }
            buf.clear();
            stop.wait_timeout(Duration::from_millis(100));
        }
    }))
}

/// The live terminal table of closed windows, and their totals.
struct Table {
    lines: usize,
    /// Whether the last header was the application-log one.
    app_header: bool,
    summary: Summary,
}

impl Table {
    fn print(&mut self, r: &WindowReport<'_>) {
        self.summary.add(r);
        if crate::output::stdout_gone() {
            return;
        }
        if let Some(app) = &r.value.app {
            return self.print_app(r, app);
        }
        if self.lines % 40 == 0 || self.app_header {
            self.app_header = false;
            crate::outln!(
                "{:<20} {:<12} {:<24} {:>7} {:>8} {:>11} {:>6} {:>5} {:>6} {:>5} {:>5} {:>5}",
                "window (UTC)",
                "host",
                "source",
                "count",
                "qps",
                "traffic",
                "err%",
                "1xx",
                "2xx",
                "3xx",
                "4xx",
                "5xx"
            );
        }
        self.lines += 1;
        let v = r.value;
        let m = &v.metrics;
        let t = chrono::DateTime::from_timestamp_millis(v.start_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        crate::outln!(
            "{:<20} {:<12} {:<24} {:>7} {:>8} {:>11} {:>6.2} {:>5} {:>6} {:>5} {:>5} {:>5}",
            t,
            short(r.host, 12),
            source_label(r.source),
            m.count,
            per_second(m.count as f64 * 1000.0 / r.window_ms as f64),
            indicatif::DecimalBytes(m.traffic).to_string(),
            100.0 * m.errors as f64 / m.count.max(1) as f64,
            m.status[0],
            m.status[1],
            m.status[2],
            m.status[3],
            m.status[4]
        );
    }
}

impl Table {
    /// A window of an application log: records, lines, error share and
    /// records per level.
    fn print_app(&mut self, r: &WindowReport<'_>, app: &logpipe_analyzer::applog::AppReport) {
        use logpipe_analyzer::parse::Level;
        if self.lines % 40 == 0 || !self.app_header {
            self.app_header = true;
            crate::outln!(
                "{:<20} {:<12} {:<24} {:>7} {:>8} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
                "window (UTC)",
                "host",
                "source",
                "records",
                "rec/s",
                "lines",
                "err%",
                "debug",
                "info",
                "warn",
                "error",
                "crit"
            );
        }
        self.lines += 1;
        let v = r.value;
        let m = &v.metrics;
        let level = |l: Level| -> u64 {
            app.levels
                .iter()
                .filter(|(_, x, _)| *x == l)
                .map(|(_, _, n)| n)
                .sum()
        };
        let t = chrono::DateTime::from_timestamp_millis(v.start_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        crate::outln!(
            "{:<20} {:<12} {:<24} {:>7} {:>8} {:>7} {:>6.2} {:>6} {:>6} {:>6} {:>6} {:>6}",
            t,
            short(r.host, 12),
            source_label(r.source),
            m.count,
            per_second(m.count as f64 * 1000.0 / r.window_ms as f64),
            app.lines,
            100.0 * m.errors as f64 / m.count.max(1) as f64,
            level(Level::Debug) + level(Level::Trace),
            level(Level::Info),
            level(Level::Warning),
            level(Level::Error),
            level(Level::Critical)
        );
    }
}

/// `shop` of `…/shop.access.log`.
fn site_of(p: &std::path::Path) -> Option<String> {
    let name = p.file_name()?.to_str()?;
    Some(name.split('.').next().unwrap_or(name).to_string())
}

/// How a source shows in the table: a path by its file name (the demo's
/// temporary directories say nothing), a name as it is.
fn source_label(source: &str) -> String {
    let name = source.rsplit('/').next().filter(|n| !n.is_empty());
    short(name.unwrap_or(source), 24)
}

/// A count per second with an SI prefix: `950.0`, `1.2 k`, `3.4 M`.
fn per_second(x: f64) -> String {
    match x {
        x if x >= 1e6 => format!("{:.1} M", x / 1e6),
        x if x >= 1e3 => format!("{:.1} k", x / 1e3),
        x => format!("{x:.1}"),
    }
}

/// The last `n` characters (paths are most telling at their end).
fn short(s: &str, n: usize) -> String {
    let count = s.chars().count();
    if count <= n {
        return s.to_string();
    }
    let tail: String = s.chars().skip(count - (n - 1)).collect();
    format!("…{tail}")
}
