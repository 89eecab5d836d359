//! Application logs end to end, from real Python processes: the `logging`
//! module writing the seed's Formatter to a file (tracebacks included, in
//! a local time zone), and its SocketHandler sending to `logpipe produce
//! --python-logging`. The Python side writes its own truth (records per
//! window, logger, level and expected template); the windows the analyzer
//! wrote to InfluxDB must equal it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use logpipe_testkit::{
    free_port, in_ci, unique, wait_until, Analyzer, Child, Influx, Kafka, LogpipeBroker, Membership,
};

const BIN: &str = env!("CARGO_BIN_EXE_logpipe");
const WINDOW_MS: i64 = 10_000;
const SEED_FORMAT: &str = "%(asctime)s - %(name)s - %(levelname)s - %(message)s";

/// The Python side: records at 5 per second of simulated time from
/// `start` (a filter sets `created`), through a FileHandler with the seed's
/// formatter (`file PATH`) or a SocketHandler (`socket PORT`); the truth,
/// one JSON line per record, to stdout.
const PY: &str = r#"
import json, logging, logging.handlers, sys

mode, target, start, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
# An incident: records from..to (by index) each bring two gateway errors.
burst = range(int(sys.argv[5]), int(sys.argv[6])) if len(sys.argv) > 6 else range(0)
if mode == "file":
    h = logging.FileHandler(target, mode="w")
    h.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
else:
    h = logging.handlers.SocketHandler("127.0.0.1", int(target))

clock = {"t": start}
class Clock(logging.Filter):
    def filter(self, record):
        record.created = clock["t"]
        record.msecs = int((record.created - int(record.created)) * 1000)
        return True

h.addFilter(Clock())
root = logging.getLogger()
root.addHandler(h)
root.setLevel(logging.DEBUG)
shop, db, auth = (logging.getLogger(x) for x in ("shop.checkout", "db", "auth"))

def emit(logger, level, template, call):
    lines = call() or 1
    created = clock["t"]
    ms = int(created) * 1000 + int((created - int(created)) * 1000)
    print(json.dumps({"logger": logger.name, "level": level, "template": template,
                      "lines": lines, "ms": ms}))

def pay(i):
    try:
        1 / 0
    except ZeroDivisionError:
        shop.exception("payment %d failed", i)
        # The record's lines: the message's and the traceback's.
        return 2 + logging.Formatter().formatException(sys.exc_info()).count("\n")

for i in range(n):
    clock["t"] = start + i * 0.2
    k = i % 10
    if i in burst:
        for _ in range(2):
            emit(shop, "ERROR", "payment gateway <str> timed out after <num> s", lambda: shop.error("payment gateway %r timed out after %d s", "gw-3", 30))
    if i % 150 == 100 or i % 30 == 9:
        emit(shop, "ERROR", "payment <num> failed | ZeroDivisionError: division by zero", lambda: pay(i))
    elif k < 5:
        emit(shop, "INFO", "order <num> paid by user <num>", lambda: shop.info("order %d paid by user %d", i, i % 17))
    elif k < 7:
        emit(db, "DEBUG", "query took <num> ms", lambda: db.debug("query took %.1f ms", i / 7))
    elif k == 7:
        emit(auth, "INFO", "login from <ip> as <str>", lambda: auth.info("login from %s as %r", "10.0.%d.%d" % (i % 3, i % 250), "user%d" % i))
    elif k == 8:
        emit(db, "WARNING", "slow query on table orders (<num> rows)", lambda: db.warning("slow query on table %s (%d rows)", "orders", i * 3))
    else:
        emit(shop, "CRITICAL", "card processor <hex> unreachable", lambda: shop.critical("card processor %#x unreachable", 0xdeadbeef00 + i))
h.close()
"#;

/// Records per (source, window): (logger, level) → count, level → {template
/// → count}, lines, errors, and the templates first seen in the window →
/// their records in it.
#[derive(Debug, Default, PartialEq, Eq)]
struct AppWindow {
    levels: BTreeMap<(String, String), u64>,
    templates: BTreeMap<String, BTreeMap<String, u64>>,
    new: BTreeMap<String, u64>,
    lines: u64,
    records: u64,
    errors: u64,
}

type AppWindows = BTreeMap<(String, i64), AppWindow>;

fn need_python() -> bool {
    let ok = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok || !in_ci(), "python3 is needed by this test");
    ok
}

/// Runs the Python side; returns its truth per (source, window). With
/// `per_logger` each logger is its own source (the SocketHandler input).
fn python(args: &[&str], tz: &str, source: Option<&str>) -> AppWindows {
    let out = Command::new("python3")
        .arg("-c")
        .arg(PY)
        .args(args)
        .env("TZ", tz)
        .output()
        .expect("python3");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut truth = AppWindows::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let j: serde_json::Value = serde_json::from_str(line).unwrap();
        let s = |k: &str| j[k].as_str().unwrap().to_string();
        let src = source.map_or_else(|| s("logger"), str::to_string);
        let ms = j["ms"].as_i64().unwrap();
        let w = truth
            .entry((src, ms.div_euclid(WINDOW_MS) * WINDOW_MS))
            .or_default();
        *w.levels.entry((s("logger"), s("level"))).or_default() += 1;
        *w.templates
            .entry(s("level"))
            .or_default()
            .entry(s("template"))
            .or_default() += 1;
        w.lines += j["lines"].as_u64().unwrap();
        w.records += 1;
        w.errors += u64::from(matches!(s("level").as_str(), "ERROR" | "CRITICAL"));
    }
    // A template is new in the first window of its source that has it.
    let mut first: BTreeMap<(String, String), i64> = BTreeMap::new();
    for ((src, start), w) in &truth {
        for t in w.templates.values().flat_map(|t| t.keys()) {
            first.entry((src.clone(), t.clone())).or_insert(*start);
        }
    }
    for ((src, t), start) in first {
        let w = truth.get_mut(&(src, start)).unwrap();
        let n = w.templates.values().filter_map(|m| m.get(&t)).sum();
        w.new.insert(t, n);
    }
    truth
}

fn from_influx(influx: &Influx, db: &str) -> AppWindows {
    let mut got = AppWindows::new();
    for series in influx.query(
        db,
        "SELECT \"count\" FROM app_level GROUP BY source, logger, level",
    ) {
        let tag = |k: &str| series["tags"][k].as_str().unwrap().to_string();
        for row in series["values"].as_array().into_iter().flatten() {
            let w = got
                .entry((tag("source"), row[0].as_i64().unwrap()))
                .or_default();
            w.levels
                .insert((tag("logger"), tag("level")), row[1].as_u64().unwrap());
        }
    }
    let q = "SELECT \"template\", \"count\", \"error\", template_id FROM app_template GROUP BY source, level, rank";
    for series in influx.query(db, q) {
        let tag = |k: &str| series["tags"][k].as_str().unwrap().to_string();
        for row in series["values"].as_array().into_iter().flatten() {
            let w = got
                .entry((tag("source"), row[0].as_i64().unwrap()))
                .or_default();
            let t = row[1].as_str().unwrap().to_string();
            assert_eq!(row[3], 0, "every template fits the summary: exact counts");
            assert_eq!(
                row[4].as_str().unwrap(),
                logpipe_analyzer::template::template_id(t.as_bytes())
            );
            w.templates
                .entry(tag("level"))
                .or_default()
                .insert(t, row[2].as_u64().unwrap());
        }
    }
    let q = "SELECT \"template\", \"count\", template_id FROM app_template_new GROUP BY source, level, n";
    for series in influx.query(db, q) {
        let tag = |k: &str| series["tags"][k].as_str().unwrap().to_string();
        for row in series["values"].as_array().into_iter().flatten() {
            let w = got
                .entry((tag("source"), row[0].as_i64().unwrap()))
                .or_default();
            let t = row[1].as_str().unwrap().to_string();
            assert_eq!(
                row[3].as_str().unwrap(),
                logpipe_analyzer::template::template_id(t.as_bytes())
            );
            w.new.insert(t, row[2].as_u64().unwrap());
        }
    }
    for series in influx.query(
        db,
        "SELECT records, lines, errors FROM app_log GROUP BY source",
    ) {
        let tag = |k: &str| series["tags"][k].as_str().unwrap().to_string();
        for row in series["values"].as_array().into_iter().flatten() {
            let w = got
                .entry((tag("source"), row[0].as_i64().unwrap()))
                .or_default();
            (w.records, w.lines, w.errors) = (
                row[1].as_u64().unwrap(),
                row[2].as_u64().unwrap(),
                row[3].as_u64().unwrap(),
            );
        }
    }
    got
}

/// Every `app_anomaly` point: (source, window, metric, logger), all `up`.
fn flags(influx: &Influx, db: &str) -> Vec<(String, i64, String, String)> {
    let mut out = Vec::new();
    let q = "SELECT direction FROM app_anomaly GROUP BY source, metric, logger";
    for s in influx.query(db, q) {
        let tag = |k: &str| s["tags"][k].as_str().unwrap_or_default().to_string();
        for r in s["values"].as_array().unwrap() {
            assert_eq!(r[1], "up", "{s}");
            out.push((
                tag("source"),
                r[0].as_i64().unwrap(),
                tag("metric"),
                tag("logger"),
            ));
        }
    }
    out.sort();
    out
}

/// The windows of `truth` a run must have closed: all but each source's
/// last ones (the watermark is the max time − lateness).
fn closed(truth: &AppWindows, lateness_ms: i64) -> AppWindows {
    let mut max: BTreeMap<&str, i64> = BTreeMap::new();
    for (s, w) in truth.keys() {
        let m = max.entry(s).or_insert(*w);
        *m = (*m).max(*w + WINDOW_MS - 1);
    }
    truth
        .iter()
        .filter(|((s, w), _)| {
            w + WINDOW_MS <= (max[s.as_str()] - lateness_ms).div_euclid(WINDOW_MS) * WINDOW_MS
        })
        .map(|(k, v)| (k.clone(), clone_window(v)))
        .collect()
}

fn clone_window(w: &AppWindow) -> AppWindow {
    AppWindow {
        levels: w.levels.clone(),
        templates: w.templates.clone(),
        new: w.new.clone(),
        lines: w.lines,
        records: w.records,
        errors: w.errors,
    }
}

fn wait_equal(influx: &Influx, db: &str, want: &AppWindows, a: &Analyzer) {
    assert!(
        want.len() >= 5,
        "too few closed windows to compare: {want:?}"
    );
    let mut got = AppWindows::new();
    let ok = wait_until(Duration::from_secs(60), || {
        got = from_influx(influx, db);
        want.iter()
            .all(|(k, v)| got.get(k) == Some(v))
            .then_some(())
    });
    if ok.is_none() {
        let (k, v) = want.iter().find(|(k, v)| got.get(*k) != Some(*v)).unwrap();
        panic!(
            "window {k:?}:\nwant {v:?}\n got {:?}\n{}",
            got.get(k),
            a.log()
        );
    }
}

/// The seed's Formatter writing a file in Berlin time, with tracebacks:
/// records per logger and level, templates, the templates first seen in
/// each window, lines and errors per window equal what Python logged;
/// nothing is a dead letter. The analyzer is
/// killed (SIGKILL) when the file so far ends inside a traceback, and the
/// rest is written after its restart: the record is counted once, whole.
#[test]
fn python_logging_files_with_tracebacks_count_per_level_and_template() {
    files_with_tracebacks(false);
}

/// The same through Apache Kafka.
#[test]
fn python_logging_files_with_tracebacks_through_apache_kafka() {
    files_with_tracebacks(true);
}

fn files_with_tracebacks(apache_kafka: bool) {
    if !need_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let full = dir.path().join("full.log");
    // 2024-01-01T00:00:00Z; 600 records over 120 s.
    let truth = python(
        &[
            "file",
            full.to_str().unwrap(),
            "1704067200.0",
            "600",
            "500",
            "550",
        ],
        "Europe/Berlin",
        Some(path.to_str().unwrap()),
    );
    let text = std::fs::read_to_string(&full).unwrap();
    assert!(
        text.starts_with("2024-01-01 01:00:00,000 - shop.checkout - INFO - order 0"),
        "{}",
        &text[..80]
    );
    // The file as it was when the analyzer died: up to the middle of the
    // traceback of record 400, the first of its window (80 s in; with no
    // lateness every window before it closes once it is complete).
    let head = text.find("payment 400 failed").unwrap();
    let tb = "Traceback (most recent call last):\n";
    let cut = head + text[head..].find(tb).unwrap() + tb.len();
    std::fs::write(&path, &text[..cut]).unwrap();
    let topic = unique("applogs");
    let (_dev, _kafka, bootstrap) = if apache_kafka {
        let k = Kafka::with_topics(&[&topic], 2);
        let b = k.bootstrap.clone();
        (None, Some(k), b)
    } else {
        let d = LogpipeBroker::start(Path::new(BIN), &[&topic], 2);
        let b = d.bootstrap.clone();
        (Some(d), None, b)
    };
    let influx = Influx::start();
    let db = influx.create_db(&unique("applogs"));
    let m = Membership::new(&bootstrap, &topic);
    let args = [
        "--format",
        SEED_FORMAT,
        "--timezone",
        "Europe/Berlin",
        "--lateness",
        "0s",
    ];
    let mut a = Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db)
        .args(&args)
        .start();
    // One line per record, so a traceback's lines travel in records of their own.
    let produce = || {
        logpipe_testkit::produce_all_with(
            Path::new(BIN),
            &bootstrap,
            &topic,
            &dir.path().join("checkpoints"),
            std::slice::from_ref(&path),
            &["--lines-per-record", "1"],
        )
    };
    produce();
    // Wait for the first windows, and a restore point that holds the
    // unfinished record, then kill.
    wait_until(Duration::from_secs(30), || {
        (!from_influx(&influx, &db).is_empty()).then_some(())
    })
    .expect("first windows");
    std::thread::sleep(Duration::from_secs(2));
    a.child.kill();
    let mut rest = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut rest, &text.as_bytes()[cut..]).unwrap();
    drop(rest);
    let mut a = Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db)
        .args(&args)
        .log_name("a0-restarted")
        .start();
    produce();
    wait_equal(&influx, &db, &closed(&truth, 0), &a);
    // An error burst after the restart (records 500..550, the window at
    // 100 s), scored against the baselines the killed analyzer stored.
    let burst = 1_704_067_200_000 + 100_000;
    let file = path.display().to_string();
    assert_eq!(
        flags(&influx, &db),
        [
            ("error_share", ""),
            ("errors", "shop.checkout"),
            ("records", "")
        ]
        .map(|(m, l)| (file.clone(), burst, m.to_string(), l.to_string())),
        "{}",
        a.log()
    );
    let rows = influx.query(
        &db,
        "SELECT last(dead_lettered), last(continuation_lines) FROM logpipe GROUP BY analyzer",
    );
    for r in &rows {
        assert_eq!(r["values"][0][1], 0, "dead letters: {}", a.log());
    }
    assert!(rows.iter().any(|r| r["values"][0][2].as_u64().unwrap() > 0));
    let st = a.child.terminate(Duration::from_secs(20));
    assert!(st.success(), "analyzer exit {st:?}: {}", a.log());
    // A replay of the whole topic writes the same closed windows, new
    // templates included (its history is built from the same windows).
    let replayed = influx.create_db(&unique("applogs_replay"));
    let out = Command::new(BIN)
        .args(["replay", "--brokers", &bootstrap, "--topic", &topic])
        .args(["--influx-url", &influx.url, "--influx-db", &replayed])
        .args(["--from-offsets", "earliest"])
        .args(args)
        .env("LOGPIPE_LOG", "info")
        .output()
        .expect("logpipe replay");
    assert!(
        out.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let live = from_influx(&influx, &db);
    let again = from_influx(&influx, &replayed);
    let want = closed(&truth, 0);
    for k in want.keys() {
        assert_eq!(
            live.get(k),
            again.get(k),
            "window {k:?}: live and replay differ"
        );
    }
    assert_eq!(flags(&influx, &db), flags(&influx, &replayed), "anomalies");
    // The replay's last windows, closed by the end of the topic, are
    // final too, and whole: Python's.
    let last = truth.keys().last().unwrap();
    assert_eq!(
        again.get(last).map(|w| w.records),
        Some(truth[last].records)
    );
}

/// SocketHandler → `logpipe produce --python-logging` → `--format
/// python-json`: each logger is a source; its records, levels and
/// templates (exceptions from `exc_text`) equal what Python logged.
#[test]
fn python_socket_handler_records_count_per_logger_level_and_template() {
    if !need_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("applogs");
    let broker = LogpipeBroker::start(Path::new(BIN), &[&topic], 2);
    let influx = Influx::start();
    let db = influx.create_db(&unique("pylog"));
    let m = Membership::new(&broker.bootstrap, &topic);
    let mut a = Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db)
        .args(&["--format", "python-json", "--lateness", "5s"])
        .start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut p = Child::spawn(
        "produce",
        Command::new(BIN)
            .args([
                "produce",
                "--brokers",
                &broker.bootstrap,
                "--topic",
                &topic,
                "--host",
                "app1",
            ])
            .args(["--python-logging", &addr])
            .env("LOGPIPE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("produce.log")).unwrap()),
    );
    wait_until(Duration::from_secs(30), || {
        std::net::TcpStream::connect(&addr).ok().map(|_| ())
    })
    .expect("producer listening");
    // A record's lines: its message's and its `exc_text`'s. 1 000 records
    // over 200 s; an error burst in the window at 160 s (records 800..850).
    let truth = python(
        &[
            "socket",
            &port.to_string(),
            "1704067200.0",
            "1000",
            "800",
            "850",
        ],
        "UTC",
        None,
    );
    wait_equal(&influx, &db, &closed(&truth, 5_000), &a);
    // The burst is shop.checkout's only flagged window (error share up; the
    // records too, 150 instead of 25); db and auth have none.
    // The burst is shop.checkout's only flagged window: its error share,
    // its records (150 instead of 25) and its logger's errors, up; db and
    // auth have none.
    let burst = 1_704_067_200_000 + 160_000;
    assert_eq!(
        flags(&influx, &db),
        [
            ("error_share", ""),
            ("errors", "shop.checkout"),
            ("records", "")
        ]
        .map(|(m, l)| (
            "shop.checkout".to_string(),
            burst,
            m.to_string(),
            l.to_string()
        )),
        "{}",
        a.log()
    );
    check_dashboard(&influx, &db, &truth);
    let st = p.terminate(Duration::from_secs(20));
    assert!(st.success());
    let st = a.child.terminate(Duration::from_secs(20));
    assert!(st.success(), "analyzer exit {st:?}: {}", a.log());
}

/// Every query of the application-logs dashboard returns rows from this
/// run, and its totals (records per level, templates over the range) are
/// Python's.
fn check_dashboard(influx: &Influx, db: &str, truth: &AppWindows) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/grafana/dashboards/app-logs.json"
    ))
    .unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (from, to) = (
        1_704_067_200_000i64 - 3_600_000,
        1_704_067_200_000i64 + 3_600_000,
    );
    let sub = |q: &str| {
        q.replace(
            "$timeFilter",
            &format!("time >= {from}ms and time <= {to}ms"),
        )
        .replace("$__interval", "10s")
        .replace("$host", ".*")
        .replace("$source", ".*")
    };
    let mut queries: Vec<(String, String)> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["title"].as_str().unwrap().to_string(),
                sub(p["targets"][0]["query"].as_str().unwrap()),
            )
        })
        .collect();
    for a in d["annotations"]["list"].as_array().unwrap() {
        if let Some(q) = a["query"].as_str() {
            queries.push((format!("annotation {}", a["name"]), sub(q)));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        queries.push((
            format!("variable {}", v["name"]),
            sub(v["query"].as_str().unwrap()),
        ));
    }
    let total: u64 = truth.values().map(|w| w.records).sum();
    let mut templates: BTreeMap<String, u64> = BTreeMap::new();
    for w in truth.values() {
        for (t, n) in w.templates.values().flatten() {
            *templates.entry(t.clone()).or_default() += n;
        }
    }
    // The open windows' partial values come with the next flush.
    let ok = wait_until(Duration::from_secs(30), || {
        let per_level = influx.query(db, &queries[0].1);
        let sum: f64 = per_level
            .iter()
            .flat_map(|s| s["values"].as_array().unwrap().iter())
            .map(|r| r[1].as_f64().unwrap_or(0.0))
            .sum();
        (sum as u64 == total).then_some(())
    });
    assert!(ok.is_some(), "Records per level does not add up to {total}");
    for (title, q) in &queries {
        let rows: usize = influx
            .query(db, q)
            .iter()
            .map(|s| s["values"].as_array().map_or(0, Vec::len))
            .sum();
        let errors_only = title == "Errors per logger";
        assert!(
            rows > 0 || errors_only && templates.keys().all(|t| !t.contains("failed")),
            "{title}: no rows: {q}"
        );
    }
    // The templates table, summed over the range as its transformation does.
    let (_, q) = queries
        .iter()
        .find(|(t, _)| t == "Top templates (range)")
        .unwrap();
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    for s in influx.query(db, q) {
        let cols: Vec<&str> = s["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let (ci, ti) = (
            cols.iter().position(|c| *c == "count").unwrap(),
            cols.iter().position(|c| *c == "template").unwrap(),
        );
        for r in s["values"].as_array().unwrap() {
            *got.entry(r[ti].as_str().unwrap().to_string()).or_default() += r[ci].as_u64().unwrap();
        }
    }
    assert_eq!(
        got, templates,
        "the templates table differs from Python's records"
    );
    // Each template is new once, in the first window that has it.
    let (_, q) = queries.iter().find(|(t, _)| t == "New templates").unwrap();
    let mut new: Vec<String> = Vec::new();
    for s in influx.query(db, q) {
        let cols: Vec<&str> = s["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let ti = cols.iter().position(|c| *c == "template").unwrap();
        for r in s["values"].as_array().unwrap() {
            new.push(r[ti].as_str().unwrap().to_string());
        }
    }
    new.sort();
    assert_eq!(
        new,
        templates.keys().cloned().collect::<Vec<_>>(),
        "new templates"
    );
}
