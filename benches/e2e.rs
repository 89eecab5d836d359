//! End to end, side by side: the same generated 1 M-line nginx log through
//! - `logpipe demo --input F --from-beginning --exit-on-eof` (embedded broker,
//!   2 analyzers) into a real InfluxDB, with wire v2 (the default) and with
//!   wire v1 (`--lines-per-record 1`);
//! - separate processes: a `logpipe broker` (or Apache Kafka 4.4), 2 ×
//!   `logpipe analyze`, then `logpipe produce --exit-on-eof`, timed from the
//!   producer's start until InfluxDB holds every window with its final count;
//! - `logpipe replay --from-offsets earliest` of the Apache Kafka row's
//!   topic, right after each of its runs, into a fresh database;
//! - publishing alone into a `logpipe broker`: `logpipe produce` (v2 and
//!   v1) and `kcat -P -l` (librdkafka, a record per line);
//! - GoAccess 1.7 (`goaccess F --log-format=COMBINED -o report.json`);
//! - the Python approach logpipe replaces (`bench/baseline/original.py`);
//! - mtail 3.0 (`mtail --one_shot` with `bench/baseline/nginx_combined.mtail`).
//!
//! - Tansu as the broker of the multi-process path, with `LOGPIPE_BENCH_TANSU=1`;
//! - then latency: `logpipe produce` following a file that this bench appends
//!   to at 50 000 lines/s for 20 s, a `logpipe broker`, 2 × `logpipe
//!   analyze` with the default 1 s flush interval; InfluxDB is queried every
//!   ~25 ms, and a line is visible at the first answer whose count for its
//!   window includes it (lines of one source are counted in file order, so a
//!   window's count k means its first k lines written). Reported: p50, p90,
//!   p99 and max of (answer received − line written).
//!
//! Run it with `bench/run` (installs GoAccess when missing). Prints one table:
//! wall seconds, lines/s, peak RSS, CPU seconds, logpipe's speed over each
//! peer's, and whether each one's numbers equal the generator's truth.
//! `LOGPIPE_BENCH_RUNS` (default 3) runs of each; the table shows medians;
//! `LOGPIPE_BENCH_ONLY=<text>` runs only the rows whose name contains it
//! (`latency` for the latency run alone); `LOGPIPE_BENCH_PRODUCER_KAFKA`
//! passes `--kafka` properties to the multi-process rows' producer (e.g.
//! `compression.type=none`). Peak RSS of the multi-process rows
//! is the sum of each process's own peak.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use logpipe_testkit::{unique, Influx};
use logpipe_traffic::Generator;

mod common;
use common::{bin, log_file, median, runs, wait_measured, Broker, LINES, RATE, SEED, START_MS};

const WINDOW_MS: i64 = 10_000;

/// (count, traffic, errors) per 10 s window, from the generated requests.
type Windows = BTreeMap<i64, (u64, u64, u64)>;

fn truth() -> Windows {
    let mut g = Generator::new(SEED, START_MS, RATE).malformed_one_in(0);
    let mut w = Windows::new();
    for _ in 0..LINES {
        let r = g.next_line().1.expect("no malformed lines");
        let e = w
            .entry(r.time_ms.div_euclid(WINDOW_MS) * WINDOW_MS)
            .or_default();
        e.0 += 1;
        e.1 += r.body_bytes.unwrap_or(0);
        e.2 += u64::from(r.status >= 400);
    }
    w
}

fn from_influx(influx: &Influx, db: &str) -> Windows {
    let mut w = Windows::new();
    let rows = influx.query(
        db,
        "SELECT count, traffic, status_4xx, status_5xx FROM access_log",
    );
    for s in rows {
        for r in s["values"].as_array().into_iter().flatten() {
            let n = |i: usize| r[i].as_u64().unwrap_or(0);
            w.insert(r[0].as_i64().unwrap(), (n(1), n(2), n(3) + n(4)));
        }
    }
    w
}

/// One measured run.
#[derive(Clone, Copy)]
struct Run {
    wall: f64,
    cpu: f64,
    rss: f64,
}

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(i) = stat.rfind(')') else { return 0.0 };
    let f: Vec<&str> = stat[i + 2..].split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// `lines_per_record`: `--lines-per-record` (none: the default, which
/// builds before wire v2 did not know).
fn demo(
    log: &Path,
    influx: &Influx,
    truth: &Windows,
    lines_per_record: Option<&str>,
) -> (Run, String) {
    let db = unique("demo");
    let started = Instant::now();
    let packing: Vec<&str> = lines_per_record
        .map(|n| vec!["--lines-per-record", n])
        .unwrap_or_default();
    let mut child = Command::new(bin())
        .arg("demo")
        .args(packing)
        .arg("--input")
        .arg(log)
        .args([
            "--from-beginning",
            "--exit-on-eof",
            "--influx-url",
            &influx.url,
        ])
        .args(["--influx-db", &db])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (wall, cpu, rss) = wait_measured(&mut child, started);
    let got = from_influx(influx, &db);
    (Run { wall, cpu, rss }, verdict(truth, &got))
}

fn verdict(truth: &Windows, got: &Windows) -> String {
    if got == truth {
        return "yes".into();
    }
    let want: u64 = truth.values().map(|w| w.0).sum();
    let have: u64 = got.values().map(|w| w.0).sum();
    format!("no: {have} of {want} requests")
}

/// Librdkafka properties of the benchmark's analyzers. The mock broker
/// (`logpipe broker`) keeps only ~5 MiB per partition and holds a fetch that
/// finds nothing for the whole `fetch.wait.max.ms` even when records arrive
/// meanwhile: with librdkafka's 500 ms, a producer at a million lines a
/// second had filled the partition before the first answer and 90 % of the
/// lines were gone. With 10 ms, one run in three still lost half of them:
/// the producer outran the analyzer by more than librdkafka prefetches
/// (`queued.min.messages`, 100 000 records) plus what the mock keeps. So the
/// analyzers prefetch up to the whole file (counted in their RSS). With wire
/// v2 the producer publishes a source's 1 M lines (one partition) at
/// ~300 MB/s, and fetches of librdkafka's default 1 MiB per partition lost
/// lines in two runs of three: the analyzers fetch up to 4 MiB at once. A
/// real Kafka needs none of this. Short sessions let the group settle in
/// seconds.
const ANALYZER_KAFKA: &str = "session.timeout.ms=6000,heartbeat.interval.ms=1000,\
    fetch.wait.max.ms=10,queued.min.messages=1000000,queued.max.messages.kbytes=1000000,\
    max.partition.fetch.bytes=4194304";

/// Starts two `logpipe analyze` members of a new group; returns once each
/// owns half of the 6 partitions (as in a running system, before the first line).
fn start_analyzers(
    bootstrap: &str,
    topic: &str,
    settings: &str,
    influx_url: &str,
    db: &str,
    dir: &Path,
) -> Vec<std::process::Child> {
    let group = unique("bench");
    let analyzers: Vec<std::process::Child> = (0..2)
        .map(|i| {
            Command::new(bin())
                .args(["analyze", "--brokers", bootstrap, "--topic", topic])
                .args([
                    "--group",
                    &group,
                    "--dlq-topic",
                    &logpipe_testkit::dlq_topic(topic),
                ])
                .args(["--influx-url", influx_url, "--influx-db", db])
                .args(["--analyzer-id", &format!("a{i}")])
                .args(["--kafka", settings])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("a{i}.log"))).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    // Each member's last assignment change is "assigned count=3".
    let owns = |i: usize| -> usize {
        let log = std::fs::read_to_string(dir.join(format!("a{i}.log"))).unwrap_or_default();
        log.lines()
            .rev()
            .find(|l| {
                l.contains("partitions assigned")
                    || l.contains("partitions revoked")
                    || l.contains("assignment lost")
            })
            .filter(|l| l.contains("partitions assigned"))
            .and_then(|l| l.split("count=").nth(1)?.split(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(owns(0) == 3 && owns(1) == 3) {
        assert!(Instant::now() < deadline, "the group did not settle");
        std::thread::sleep(Duration::from_millis(50));
    }
    analyzers
}

/// The broker of the multi-process rows.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// `logpipe broker` (librdkafka's mock cluster).
    Mock,
    /// Apache Kafka, one KRaft node (JVM of up to 768 MiB heap).
    Kafka,
    Tansu,
}

/// Analyzer settings against Apache Kafka: only short sessions, so the
/// group settles in seconds; fetching and prefetching stay librdkafka's
/// defaults (Kafka answers a fetch as soon as there is data, and keeps what
/// is not read yet).
const ANALYZER_APACHE_KAFKA: &str = "session.timeout.ms=6000,heartbeat.interval.ms=1000";

/// Broker, two analyzers, then the producer; until every window is final.
fn processes(log: &Path, influx: &Influx, truth: &Windows, via: Via) -> (Run, String) {
    processes_then(log, influx, truth, via, |_, _| {})
}

/// [`processes`], then `after(bootstrap, topic)` while the broker still
/// holds the topic.
fn processes_then(
    log: &Path,
    influx: &Influx,
    truth: &Windows,
    via: Via,
    after: impl FnOnce(&str, &str),
) -> (Run, String) {
    let topic = unique("logs");
    let (bootstrap, broker_pid, _mock, _tansu, _kafka) = match via {
        Via::Tansu => {
            let t =
                logpipe_testkit::Tansu::start().expect("LOGPIPE_TEST_TANSU=1 and tansu installed");
            t.create_topic(&topic, 6);
            (t.bootstrap.clone(), t.pid(), None, Some(t), None)
        }
        Via::Kafka => {
            let k = logpipe_testkit::Kafka::start();
            k.create_topic(&topic, 6);
            let pid = k.pid(0).expect("running");
            (k.bootstrap.clone(), pid, None, None, Some(k))
        }
        Via::Mock => {
            let b = Broker::start(&topic, 6);
            (b.bootstrap.clone(), b.pid(), Some(b), None, None)
        }
    };
    let db = influx.create_db(&unique("procs"));
    let dir = tempfile::tempdir().unwrap();
    let settings = if via == Via::Kafka {
        ANALYZER_APACHE_KAFKA
    } else {
        ANALYZER_KAFKA
    };
    let analyzers = start_analyzers(&bootstrap, &topic, settings, &influx.url, &db, dir.path());
    let pids: Vec<u32> = analyzers.iter().map(|c| c.id()).collect();
    let cpu0: f64 = pids.iter().map(|&p| cpu_secs(p)).sum::<f64>() + cpu_secs(broker_pid);
    let started = Instant::now();
    let mut producer = Command::new(bin());
    producer
        .args([
            "produce",
            "--brokers",
            &bootstrap,
            "--topic",
            &topic,
            "--host",
            "bench",
        ])
        .args(["--from-beginning", "--exit-on-eof"]);
    // e.g. compression.type=none, to compare with the default lz4.
    if let Ok(k) = std::env::var("LOGPIPE_BENCH_PRODUCER_KAFKA") {
        producer.args(["--kafka", &k]);
    }
    let mut producer = producer
        .arg(log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (_, producer_cpu, producer_rss) = wait_measured(&mut producer, started);
    let want: u64 = truth.values().map(|w| w.0).sum();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut got = Windows::new();
    while Instant::now() < deadline {
        let total = influx.query(&db, "SELECT sum(count) FROM access_log");
        let n = total
            .first()
            .and_then(|s| s["values"][0][1].as_u64())
            .unwrap_or(0);
        if n >= want {
            got = from_influx(influx, &db);
            if got == *truth {
                break;
            }
        }
        // Lines the broker deleted before they were read never come.
        let lost = (0..2).any(|i| {
            std::fs::read_to_string(dir.path().join(format!("a{i}.log")))
                .unwrap_or_default()
                .contains("deleted by the broker")
        });
        if lost {
            eprintln!("the broker deleted lines before the analyzers read them");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = started.elapsed().as_secs_f64();
    if got.is_empty() {
        got = from_influx(influx, &db);
    }
    let cpu =
        pids.iter().map(|&p| cpu_secs(p)).sum::<f64>() + cpu_secs(broker_pid) - cpu0 + producer_cpu;
    let rss = pids.iter().map(|&p| peak_rss_mib(p)).sum::<f64>()
        + peak_rss_mib(broker_pid)
        + producer_rss;
    for mut a in analyzers {
        let _ = a.kill();
        let _ = a.wait();
    }
    after(&bootstrap, &topic);
    (Run { wall, cpu, rss }, verdict(truth, &got))
}

/// `logpipe replay --from-offsets earliest` of a topic holding the whole
/// log, into a fresh database: the whole process, checked against the truth.
fn replay(bootstrap: &str, topic: &str, influx: &Influx, truth: &Windows) -> (Run, String) {
    let db = influx.create_db(&unique("replay"));
    let started = Instant::now();
    let mut child = Command::new(bin())
        .args(["replay", "--brokers", bootstrap, "--topic", topic])
        .args(["--from-offsets", "earliest", "--influx-url", &influx.url])
        .args(["--influx-db", &db])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (wall, cpu, rss) = wait_measured(&mut child, started);
    (
        Run { wall, cpu, rss },
        verdict(truth, &from_influx(influx, &db)),
    )
}

/// Publishing alone into a `logpipe broker` process: `logpipe produce
/// --exit-on-eof` (`args` added), or kcat's producer reading lines
/// (`kcat -P -l`: librdkafka producing one record per line, the floor of
/// wire v1). The broker keeps ~5 MiB per partition and deletes the rest,
/// which costs the same for both; checked: the producer's own count of
/// what the broker acknowledged.
fn publish_alone(log: &Path, kcat: bool, args: &[&str]) -> Option<(Run, String)> {
    let broker = Broker::start("logs", 6);
    let cp = tempfile::tempdir().unwrap();
    let err = cp.path().join("stderr");
    let mut cmd = if kcat {
        let mut c = Command::new("kcat");
        c.args(["-P", "-b", &broker.bootstrap, "-t", "logs", "-l"])
            .args(["-X", "enable.idempotence=true", "-X", "linger.ms=10"])
            .args(["-X", "batch.size=1000000", "-X", "compression.type=lz4"])
            .arg(log);
        c
    } else {
        let mut c = Command::new(bin());
        c.args(["produce", "--brokers", &broker.bootstrap, "--host", "bench"])
            .args(["--from-beginning", "--exit-on-eof", "--checkpoint-dir"])
            .arg(cp.path())
            .args(args)
            .arg(log);
        c
    };
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .ok()?;
    let (wall, cpu, rss) = wait_measured(&mut child, started);
    let text = std::fs::read_to_string(&err).unwrap_or_default();
    let ok = if kcat {
        // kcat exits 0 only once every message was delivered.
        if text.contains("ERROR") {
            format!("no: {}", text.lines().next().unwrap_or(""))
        } else {
            "exit 0, every line delivered".into()
        }
    } else {
        let acked = format!("logpipe produce: {LINES} lines");
        if text.contains(&acked) {
            format!("{LINES} lines acknowledged")
        } else {
            format!("no: {}", text.lines().last().unwrap_or(""))
        }
    };
    Some((Run { wall, cpu, rss }, ok))
}

/// Debian's mtail 3.0 in one-shot mode with `bench/baseline/nginx_combined.mtail`
/// (requests and bytes per status): its totals against the truth.
fn mtail(log: &Path, truth: &Windows) -> Option<(Run, String)> {
    let progs = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/baseline/nginx_combined.mtail"),
        progs.path().join("nginx_combined.mtail"),
    )
    .unwrap();
    let out = progs.path().join("metrics.json");
    let started = Instant::now();
    let mut child = Command::new("mtail")
        .args(["--one_shot", "--one_shot_format", "json", "--logtostderr"])
        .arg("--progs")
        .arg(progs.path())
        .arg("--logs")
        .arg(log)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let (wall, cpu, rss) = wait_measured(&mut child, started);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    // {"requests": [{"LabelValues": [...], "Value": {"Value": n}} ...], ...} or a list of metrics.
    let total = |name: &str| -> u64 {
        let metrics: Vec<&serde_json::Value> = match &v {
            serde_json::Value::Object(m) => {
                m.values().flat_map(|x| x.as_array()).flatten().collect()
            }
            serde_json::Value::Array(a) => a.iter().collect(),
            _ => vec![],
        };
        metrics
            .iter()
            .filter(|m| m["Name"] == name)
            .flat_map(|m| m["LabelValues"].as_array().into_iter().flatten())
            .filter_map(|lv| lv["Value"]["Value"].as_u64())
            .sum()
    };
    let ok = totals_verdict(truth, total("requests"), total("bytes"));
    Some((Run { wall, cpu, rss }, ok))
}

/// A tool without 10 s windows: its totals are what can be compared.
fn totals_verdict(truth: &Windows, requests: u64, bytes: u64) -> String {
    let want = (
        truth.values().map(|w| w.0).sum::<u64>(),
        truth.values().map(|w| w.1).sum::<u64>(),
    );
    if (requests, bytes) == want {
        "totals yes (no windows)".to_string()
    } else {
        format!("no: {requests} requests, {bytes} bytes")
    }
}

fn goaccess(log: &Path, truth: &Windows) -> Option<(Run, String)> {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let started = Instant::now();
    let mut child = Command::new("goaccess")
        .arg(log)
        .args(["--log-format=COMBINED", "--no-progress", "-o"])
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let (wall, cpu, rss) = wait_measured(&mut child, started);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let ok = totals_verdict(
        truth,
        v["general"]["valid_requests"].as_u64().unwrap_or(0),
        v["general"]["bandwidth"].as_u64().unwrap_or(0),
    );
    Some((Run { wall, cpu, rss }, ok))
}

fn python(log: &Path, truth: &Windows) -> (Run, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/baseline/original.py");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("windows.json");
    let started = Instant::now();
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(log)
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .unwrap();
    let (wall, cpu, rss) = wait_measured(&mut child, started);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let got: Windows = v["windows"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, w)| {
            let n = |i: usize| w[i].as_u64().unwrap();
            (k.parse().unwrap(), (n(0), n(1), n(2)))
        })
        .collect();
    let matched = v["matched"].as_u64().unwrap_or(0);
    let ok = if got == *truth {
        "yes".to_string()
    } else {
        format!(
            "no: {:.1} % of lines silently dropped",
            100.0 * (LINES as u64 - matched) as f64 / LINES as f64
        )
    };
    (Run { wall, cpu, rss }, ok)
}

/// Lines written per second and for how long, in the latency run.
const LATENCY_RATE: f64 = 50_000.0;
const LATENCY_SECS: u64 = 20;

/// Write-to-visible latency in seconds, one value per line written.
fn latency(influx: &Influx) -> Vec<f64> {
    let broker = Broker::start("logs", 6);
    let db = influx.create_db(&unique("latency"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    std::fs::write(&log, "").unwrap();
    let mut analyzers = start_analyzers(
        &broker.bootstrap,
        "logs",
        ANALYZER_KAFKA,
        &influx.url,
        &db,
        dir.path(),
    );
    let mut producer = Command::new(bin())
        .args(["produce", "--brokers", &broker.bootstrap, "--host", "bench"])
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The producer is at the (empty) file's end.
    std::thread::sleep(Duration::from_secs(2));

    // Polls InfluxDB until told to stop: (answer received, count per window).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let epoch = Instant::now();
    let poller = {
        let (url, db, stop) = (influx.url.clone(), db.clone(), stop.clone());
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            let mut seen: Vec<(f64, Vec<(i64, u64)>)> = vec![];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client
                    .get(format!("{url}/query"))
                    .query(&[
                        ("db", db.as_str()),
                        ("epoch", "ms"),
                        ("q", "SELECT count FROM access_log"),
                    ])
                    .send()
                    .and_then(|r| r.text());
                let at = epoch.elapsed().as_secs_f64();
                if let Ok(v) =
                    r.map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap_or_default())
                {
                    let counts = v["results"][0]["series"][0]["values"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| Some((r[0].as_i64()?, r[1].as_u64()?)))
                        .collect();
                    seen.push((at, counts));
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            seen
        })
    };

    // The writer: lines whose time is now, appended every 10 ms.
    let now_ms = || chrono::Utc::now().timestamp_millis();
    let mut g = Generator::new(SEED, now_ms(), LATENCY_RATE).malformed_one_in(0);
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    // (written at, window, the line's rank among its window's lines)
    let mut written: Vec<(f64, i64, u64)> = vec![];
    let mut per_window: BTreeMap<i64, u64> = BTreeMap::new();
    let mut buf = String::new();
    let until = Instant::now() + Duration::from_secs(LATENCY_SECS);
    let mut pending = vec![];
    while Instant::now() < until {
        while g.now_ms() < now_ms() {
            let (line, r) = g.next_line();
            let w = r.unwrap().time_ms.div_euclid(WINDOW_MS) * WINDOW_MS;
            let n = per_window.entry(w).or_default();
            *n += 1;
            pending.push((w, *n));
            buf.push_str(&line);
            buf.push('\n');
        }
        std::io::Write::write_all(&mut file, buf.as_bytes()).unwrap();
        let at = epoch.elapsed().as_secs_f64();
        written.extend(pending.drain(..).map(|(w, n)| (at, w, n)));
        buf.clear();
        std::thread::sleep(Duration::from_millis(10));
    }
    // Until every window shows every line (or a minute passes).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = influx.query(&db, "SELECT count FROM access_log");
        let got: BTreeMap<i64, u64> = rows
            .first()
            .and_then(|s| s["values"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r[0].as_i64()?, r[1].as_u64()?)))
            .collect();
        if got == per_window || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = poller.join().unwrap();
    let _ = producer.kill();
    for a in analyzers.iter_mut() {
        let _ = a.kill();
    }
    let _ = producer.wait();
    for mut a in analyzers {
        let _ = a.wait();
    }

    // Per window, the answers in time order (counts only grow).
    let mut by_window: BTreeMap<i64, Vec<(f64, u64)>> = BTreeMap::new();
    for (at, counts) in &seen {
        for &(w, c) in counts {
            by_window.entry(w).or_default().push((*at, c));
        }
    }
    let missing = written
        .iter()
        .filter(|(_, w, n)| {
            by_window
                .get(w)
                .and_then(|v| v.last())
                .is_none_or(|&(_, c)| c < *n)
        })
        .count();
    assert_eq!(missing, 0, "{missing} lines never became visible");
    written
        .iter()
        .map(|&(at, w, n)| {
            let v = &by_window[&w];
            let i = v.partition_point(|&(t, c)| c < n || t < at);
            v[i].0 - at
        })
        .collect()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn med(runs: &[Run]) -> Run {
    Run {
        wall: median(runs.iter().map(|r| r.wall).collect()),
        cpu: median(runs.iter().map(|r| r.cpu).collect()),
        rss: median(runs.iter().map(|r| r.rss).collect()),
    }
}

fn main() {
    let runs = runs(3);
    let log = log_file();
    let truth = truth();
    let influx = Influx::start();
    // Replays measured right after each Apache Kafka run, shown as their own row.
    let replays = std::cell::RefCell::new(Vec::new());
    let mut rows: Vec<(&str, Vec<Run>, String)> = vec![];
    type Case<'a> = (&'a str, Box<dyn Fn() -> Option<(Run, String)> + 'a>);
    let cases: Vec<Case<'_>> = vec![
        (
            "logpipe demo (embedded broker, 2 analyzers)",
            Box::new(|| Some(demo(&log, &influx, &truth, None))),
        ),
        (
            "logpipe demo, wire v1 (--lines-per-record 1)",
            Box::new(|| Some(demo(&log, &influx, &truth, Some("1")))),
        ),
        (
            "logpipe broker + produce + 2 × analyze",
            Box::new(|| Some(processes(&log, &influx, &truth, Via::Mock))),
        ),
        (
            "Apache Kafka 4.4 + produce + 2 × analyze",
            Box::new(|| {
                Some(processes_then(&log, &influx, &truth, Via::Kafka, |b, t| {
                    // The replay row: the same topic, right after.
                    replays.borrow_mut().push(replay(b, t, &influx, &truth));
                }))
            }),
        ),
        (
            "logpipe replay --from-offsets earliest (Apache Kafka 4.4, the topic above)",
            Box::new(|| replays.borrow_mut().pop()),
        ),
        (
            "logpipe produce alone → logpipe broker",
            Box::new(|| publish_alone(&log, false, &[])),
        ),
        (
            "logpipe produce --lines-per-record 1 (wire v1) → logpipe broker",
            Box::new(|| publish_alone(&log, false, &["--lines-per-record", "1"])),
        ),
        (
            "kcat -P -l (a record per line) → logpipe broker",
            Box::new(|| publish_alone(&log, true, &[])),
        ),
        (
            "Tansu + produce + 2 × analyze",
            Box::new(|| {
                (std::env::var("LOGPIPE_BENCH_TANSU").as_deref() == Ok("1"))
                    .then(|| processes(&log, &influx, &truth, Via::Tansu))
            }),
        ),
        (
            "GoAccess 1.7 --log-format=COMBINED",
            Box::new(|| goaccess(&log, &truth)),
        ),
        (
            "Python baseline (bench/baseline/original.py)",
            Box::new(|| Some(python(&log, &truth))),
        ),
        (
            "mtail 3.0 --one_shot (bench/baseline/nginx_combined.mtail)",
            Box::new(|| mtail(&log, &truth)),
        ),
    ];
    // LOGPIPE_BENCH_ONLY=Tansu runs only the rows whose name contains it.
    let only = std::env::var("LOGPIPE_BENCH_ONLY").unwrap_or_default();
    for (name, f) in cases.iter().filter(|c| c.0.contains(&only)) {
        let mut rs = vec![];
        let mut ok = String::new();
        for i in 0..runs {
            let Some((r, v)) = f() else {
                eprintln!("{name}: skipped (not installed, or not asked for)");
                break;
            };
            eprintln!(
                "{name} run {}: {:.2} s, {:.0} lines/s, CPU {:.2} s, peak RSS {:.1} MiB, equal to the truth: {v}",
                i + 1,
                r.wall,
                LINES as f64 / r.wall,
                r.cpu,
                r.rss
            );
            rs.push(r);
            ok = v;
        }
        if !rs.is_empty() {
            rows.push((name, rs, ok));
        }
    }
    let latency_line = "latency".contains(&only).then(|| {
        let mut l = latency(&influx);
        l.sort_by(f64::total_cmp);
        format!(
            "\nwrite-to-visible latency, {} lines written at {:.0} lines/s for {LATENCY_SECS} s (file → logpipe produce → logpipe broker → 2 × logpipe analyze, flush interval {} → InfluxDB): p50 {:.3} s, p90 {:.3} s, p99 {:.3} s, max {:.3} s",
            l.len(),
            LATENCY_RATE,
            // The analyzers read it like any flag (`--flush-interval`).
            std::env::var("LOGPIPE_FLUSH_INTERVAL").unwrap_or_else(|_| "the default".into()),
            percentile(&l, 0.5),
            percentile(&l, 0.9),
            percentile(&l, 0.99),
            l[l.len() - 1]
        )
    });
    print_table(&rows, runs, &log);
    if let Some(l) = latency_line {
        println!("{l}");
    }
}

fn print_table(rows: &[(&str, Vec<Run>, String)], runs: usize, log: &Path) {
    let Some(first) = rows.first() else { return };
    let logpipe = LINES as f64 / med(&first.1).wall;
    println!(
        "\n{} lines ({:.0} MB, nginx combined), medians of {runs} runs; `logpipe ×` = logpipe demo's lines/s over the row's\n",
        LINES,
        std::fs::metadata(log).unwrap().len() as f64 / 1e6
    );
    println!("| | wall s | lines/s | peak RSS MiB | CPU s | logpipe × | numbers equal the truth |");
    println!("|---|---|---|---|---|---|---|");
    for (name, rs, ok) in rows {
        let m = med(rs);
        let rate = LINES as f64 / m.wall;
        println!(
            "| {name} | {:.2} | {:.0} | {:.1} | {:.2} | {:.1} | {ok} |",
            m.wall,
            rate,
            m.rss,
            m.cpu,
            logpipe / rate
        );
    }
}
