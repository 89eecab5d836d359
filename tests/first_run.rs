//! What a new user meets first: the demo's output, its exits whichever way
//! its output is read, distinct counts that are never impossible, and the
//! closing totals of a one-shot analysis. Real pipes, real signals, real
//! `head` and `tee`; no InfluxDB (the demo writes its line-protocol file).

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use logpipe_testkit::{dlq_topic, produce_all, unique, Child, Expected, LogpipeBroker};
use logpipe_traffic::Generator;

const BIN: &str = env!("CARGO_BIN_EXE_logpipe");
const WINDOW_MS: i64 = 10_000;
/// 2024-01-01T00:00:00Z.
const START_MS: i64 = 1_704_067_200_000;

/// One `access_log` point of a line-protocol file.
#[derive(Debug, Clone, PartialEq)]
struct Point {
    count: u64,
    unique_clients: u64,
}

/// The last value of every `access_log` point (series and time) in `path`:
/// the file holds partial values first, then the final one.
fn points(path: &Path) -> BTreeMap<(String, i64), Point> {
    let text = std::fs::read_to_string(path).expect("read the demo's points");
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("access_log,")) {
        let mut parts = line.rsplitn(3, ' ');
        let ts: i64 = parts.next().unwrap().parse().expect("timestamp");
        let fields = parts.next().unwrap();
        let series = parts.next().unwrap().to_string();
        let field = |name: &str| -> u64 {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.trim_end_matches('i').parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line}"))
        };
        out.insert(
            (series, ts / 1_000_000),
            Point {
                count: field("count"),
                unique_clients: field("unique_clients"),
            },
        );
    }
    out
}

/// Entries of `dir` whose name starts with `prefix`.
fn entries(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Reads a child's stderr to its end on a thread.
fn collect(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// What a clean stop looks like on stderr: the closing line, no warning, no
/// panic.
fn assert_clean_stop(stderr: &str) {
    assert!(
        stderr.contains("lines produced;"),
        "the closing summary is printed:\n{stderr}"
    );
    for bad in [" WARN ", " ERROR ", "panicked", "logpipe: error"] {
        assert!(!stderr.contains(bad), "{bad:?} at a clean stop:\n{stderr}");
    }
}

/// A one-shot demo of `log` (read whole, then exit) with `extra` flags and
/// its temporary files under `tmp`; it must exit 0. Its stderr.
fn one_shot(log: &Path, tmp: &Path, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["demo", "--from-beginning", "--exit-on-eof", "--input"])
        .arg(log)
        .args(extra)
        .env("TMPDIR", tmp)
        .env_remove("LOGPIPE_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// The demo on generated traffic, with its temporary files under `tmp`.
fn demo(tmp: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("demo")
        .arg("--lp-out")
        .arg(tmp.join("points.lp"))
        .env("TMPDIR", tmp)
        .env_remove("LOGPIPE_LOG")
        .stdin(Stdio::null());
    c
}

/// Every point of the demo's own traffic: the distinct clients never exceed
/// the requests, and the windows were large (~5 000 requests, nearly one
/// client each: where the old estimate overshot).
fn assert_possible_distinct_counts(path: &Path) {
    let pts = points(path);
    assert!(!pts.is_empty(), "the demo wrote points");
    for (k, p) in &pts {
        assert!(p.unique_clients <= p.count, "{k:?}: {p:?}");
    }
    let biggest = pts.values().map(|p| p.count).max().unwrap();
    assert!(
        biggest > 1000,
        "windows of the demo's traffic are large: {biggest}"
    );
}

/// The reader of the table goes away mid-run: the demo stops as on SIGTERM
/// and exits 0, its generated logs removed, no warning, no panic.
#[test]
fn a_closed_reader_stops_the_demo_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Child::spawn(
        "logpipe demo",
        demo(tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let stderr = collect(child_stderr(&mut child));
    let mut out = BufReader::new(child.stdout().unwrap());
    let mut line = String::new();
    for _ in 0..4 {
        line.clear();
        out.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the demo printed its table");
    }
    drop(out);
    let status = child.wait(Duration::from_secs(60));
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "exit {status:?}:\n{stderr}");
    assert_clean_stop(&stderr);
    assert_eq!(
        entries(tmp.path(), "logpipe-demo-input-"),
        Vec::<String>::new()
    );
    assert_possible_distinct_counts(&tmp.path().join("points.lp"));
}

fn child_stderr(child: &mut Child) -> std::process::ChildStderr {
    child.stderr().expect("stderr piped")
}

/// `logpipe demo | head -1` in a shell: one line, then exit 0.
#[test]
fn demo_piped_into_head_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sh = Command::new("bash");
    sh.arg("-c")
        .arg(r#""$0" demo --lp-out "$TMPDIR/points.lp" 2>"$TMPDIR/stderr" | head -1; echo "status=${PIPESTATUS[0]}""#)
        .arg(BIN)
        .env("TMPDIR", tmp.path())
        .env_remove("LOGPIPE_LOG")
        .stdout(Stdio::piped());
    let mut child = Child::spawn("bash -c 'logpipe demo | head -1'", &mut sh);
    let mut stdout = String::new();
    child.stdout().unwrap().read_to_string(&mut stdout).unwrap();
    child.wait(Duration::from_secs(60));
    let stderr = std::fs::read_to_string(tmp.path().join("stderr")).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}\n{stderr}");
    assert!(lines[0].starts_with("window (UTC)"), "{stdout}");
    assert_eq!(lines[1], "status=0", "{stderr}");
    assert_clean_stop(&stderr);
    assert_eq!(
        entries(tmp.path(), "logpipe-demo-input-"),
        Vec::<String>::new()
    );
}

/// The demo's first screen is its table and a few lines that say what is
/// going on: short source names, traffic in human units, dead letters
/// summed by kind (with where to see them), and no log lines from the
/// components — no librdkafka configuration warning, no line per dead
/// letter.
#[test]
fn the_demos_first_screen_is_its_table() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Child::spawn(
        "logpipe demo",
        demo(tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let stderr = collect(child_stderr(&mut child));
    let mut out = BufReader::new(child.stdout().unwrap());
    let mut rows = Vec::new();
    while rows.len() < 7 {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        rows.push(line.trim_end().to_string());
    }
    // The dead-letter summary comes every 10 s; then stop as Ctrl-C does.
    std::thread::sleep(Duration::from_secs(11));
    // SAFETY: kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait(Duration::from_secs(60));
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "exit {status:?}:\n{stderr}");
    assert_clean_stop(&stderr);
    assert!(rows[0].starts_with("window (UTC)"), "{rows:?}");
    for row in &rows[1..] {
        let cols: Vec<&str> = row.split_whitespace().collect();
        // window date, time, host, source, count, qps [k], traffic value, unit, …
        assert!(
            ["shop", "api", "blog"].contains(&cols[3]),
            "a short source name: {row}"
        );
        let unit = cols.iter().find(|c| c.ends_with('B')).copied();
        assert!(
            matches!(unit, Some("B" | "kB" | "MB" | "GB")),
            "traffic in human units: {row}"
        );
    }
    for line in stderr.lines() {
        assert!(
            line.starts_with("logpipe demo: "),
            "only the demo's own lines on its first screen, not {line:?}:\n{stderr}"
        );
    }
    let dead = stderr
        .lines()
        .find(|l| l.contains("dead letters so far: "))
        .unwrap_or_else(|| panic!("dead letters summed:\n{stderr}"));
    assert!(
        dead.contains(" malformed") && dead.contains("`logpipe dlq --brokers 127.0.0.1:"),
        "{dead}"
    );
}

/// Ctrl-C in a terminal reaches the whole pipeline (`logpipe demo | tee F`):
/// `tee` dies, the demo drains, prints its summary on stderr and exits 0.
#[test]
fn ctrl_c_to_the_process_group_under_tee() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Child::spawn(
        "logpipe demo",
        demo(tmp.path())
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let pgid = child.id() as i32;
    let stderr = collect(child_stderr(&mut child));
    let teed = tmp.path().join("teed");
    let mut tee = Child::spawn(
        "tee",
        Command::new("tee")
            .arg(&teed)
            .stdin(Stdio::from(child.stdout().unwrap()))
            .stdout(Stdio::null())
            .process_group(pgid),
    );
    let rows = logpipe_testkit::wait_until(Duration::from_secs(60), || {
        let t = std::fs::read_to_string(&teed).unwrap_or_default();
        (t.lines().count() >= 3).then_some(())
    });
    assert!(rows.is_some(), "tee saw the table");
    // SAFETY: kill(2) of the process group we created.
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGINT) }, 0);
    let status = child.wait(Duration::from_secs(60));
    tee.wait(Duration::from_secs(10));
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "exit {status:?}:\n{stderr}");
    assert_clean_stop(&stderr);
    assert_eq!(
        entries(tmp.path(), "logpipe-demo-input-"),
        Vec::<String>::new()
    );
    assert_possible_distinct_counts(&tmp.path().join("points.lp"));
}

/// Each run writes a fresh file named on its first line; an explicit
/// `--lp-out` is replaced, not appended to.
#[test]
fn every_demo_run_writes_its_own_points() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("access.log");
    Expected::new(WINDOW_MS).generate_file(&log, "x", 3, START_MS, 20.0, 500);
    let run = |extra: &[&str]| one_shot(&log, tmp.path(), extra);
    let named = |stderr: &str| -> String {
        let first = stderr.lines().next().unwrap_or_default();
        let rest = first
            .strip_prefix("logpipe demo: writing points to ")
            .unwrap_or_else(|| panic!("the first line names the file: {first}"));
        assert!(
            rest.contains("--influx-url"),
            "and how to use InfluxDB instead: {first}"
        );
        rest.split([' ', ',']).next().unwrap().to_string()
    };
    let (a, b) = (named(&run(&[])), named(&run(&[])));
    assert_ne!(a, b, "two runs, two files");
    assert_eq!(
        points(Path::new(&a)),
        points(Path::new(&b)),
        "same input, same points"
    );

    let explicit = tmp.path().join("mine.lp");
    let old = "access_log,host=old,source=old count=9i,unique_clients=9i 1000000";
    std::fs::write(&explicit, format!("{old}\n")).unwrap();
    let stderr = run(&["--lp-out", explicit.to_str().unwrap()]);
    assert!(
        stderr.contains("replacing what an earlier run wrote"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&explicit).unwrap();
    assert!(!text.contains(old), "replaced, not appended to");
    assert_eq!(points(&explicit), points(Path::new(&a)));
}

/// The closing totals of `demo --input F --exit-on-eof`, on stdout and as
/// `--summary-json`, against the generator's own requests (not parsed back);
/// and every window's distinct clients exactly as many as it had.
#[test]
fn one_shot_summary_matches_the_generators_truth() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("access.log");
    let source = log.display().to_string();
    let (seed, rate, lines) = (11, 400.0, 40_000);
    let mut expected = Expected::new(WINDOW_MS);
    expected.generate_file_with(&log, &source, Generator::new(seed, START_MS, rate), lines);
    // The same stream again, for what Expected does not keep: clients per
    // window, and which dead letters are damaged (hold a NUL byte).
    let mut clients: BTreeMap<i64, HashSet<String>> = BTreeMap::new();
    let mut damaged = 0;
    let mut g = Generator::new(seed, START_MS, rate).malformed_one_in(100);
    for _ in 0..lines {
        match g.next_line() {
            (_, Some(r)) => {
                let w = r.time_ms.div_euclid(WINDOW_MS) * WINDOW_MS;
                clients.entry(w).or_default().insert(r.client);
            }
            (line, None) => damaged += u64::from(line.contains('\0')),
        }
    }
    let json_path = tmp.path().join("summary.json");
    let lp = tmp.path().join("points.lp");
    let out = Command::new(BIN)
        .args(["demo", "--from-beginning", "--exit-on-eof", "--input"])
        .arg(&log)
        .arg("--lp-out")
        .arg(&lp)
        .arg("--summary-json")
        .arg(&json_path)
        .env("TMPDIR", tmp.path())
        .env_remove("LOGPIPE_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_clean_stop(&stderr);

    let w = &expected.windows;
    let sum = |f: &dyn Fn(&logpipe_testkit::WindowTruth) -> u64| w.values().map(f).sum::<u64>();
    let requests = sum(&|t| t.count);
    let errors = sum(&|t| t.status[3] + t.status[4]);
    let (busiest_start, busiest) =
        w.iter()
            .map(|((_, start), t)| (*start, t.count))
            .fold(
                (0, 0),
                |best, (s, n)| if n > best.1 { (s, n) } else { best },
            );
    let first = w.keys().map(|k| k.1).min().unwrap();
    let last = w.keys().map(|k| k.1).max().unwrap() + WINDOW_MS;
    let rfc = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };

    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(s["lines"], expected.lines);
    assert_eq!(s["requests"], requests);
    assert_eq!(s["traffic_bytes"], sum(&|t| t.traffic));
    assert_eq!(s["errors"], errors);
    assert_eq!(s["error_status"], 400);
    let pct = s["error_percent"].as_f64().unwrap();
    assert!(
        (pct - 100.0 * errors as f64 / requests as f64).abs() < 1e-9,
        "{pct}"
    );
    for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        assert_eq!(s["status"][class], sum(&|t| t.status[i]), "{class}");
    }
    assert_eq!(s["windows"], w.len());
    assert_eq!(s["window_s"], 10);
    assert_eq!(s["first_window_start"], rfc(first));
    assert_eq!(s["last_window_end"], rfc(last));
    assert_eq!(s["span_s"], (last - first) / 1000);
    assert_eq!(s["busiest"]["requests"], busiest);
    assert_eq!(s["busiest"]["start"], rfc(busiest_start));
    assert_eq!(s["busiest"]["source"], source);
    assert_eq!(s["late"], 0);
    let d = &s["dead_letters"];
    assert_eq!(d["total"], expected.malformed);
    assert_eq!(d["damaged"], damaged);
    assert!(damaged > 0, "the generator damaged some lines");
    let kinds: u64 = ["malformed", "cut", "damaged", "unjoined"]
        .iter()
        .map(|k| d[k].as_u64().unwrap())
        .sum();
    assert_eq!(kinds, expected.malformed, "the kinds add up: {d}");

    // The same totals on stdout, after the table.
    let block = &stdout[stdout.find("Summary of ").expect("a totals block")..];
    assert!(
        block.contains(&format!("requests     {requests}\n")),
        "{block}"
    );
    assert!(
        block.contains(&format!("windows      {} of 10 s", w.len())),
        "{block}"
    );
    assert!(
        block.contains(&format!("dead letters {}:", expected.malformed)),
        "{block}"
    );

    // Distinct clients: exact (every window is below the exact limit).
    let pts = points(&lp);
    assert_eq!(pts.len(), clients.len());
    for ((_, ts), p) in &pts {
        let truth = clients[ts].len() as u64;
        assert_eq!(p.unique_clients, truth, "window {ts}: {p:?}");
        assert!(p.unique_clients <= p.count);
    }
    assert!(
        clients.values().map(|c| c.len()).max().unwrap() > 3000,
        "large windows, nearly one client per request"
    );
}

/// `logpipe dlq --tail` whose reader goes: it stops at the next dead letter
/// it cannot print, and exits 0.
#[test]
fn dlq_tail_stops_when_its_reader_goes() {
    let topic = unique("first");
    let dlq = dlq_topic(&topic);
    let broker = LogpipeBroker::start(Path::new(BIN), &[&topic], 1);
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    let send = |i: usize| {
        let line = format!("not a log line {i}");
        producer
            .send(rdkafka::producer::BaseRecord::<(), _>::to(&dlq).payload(&line))
            .unwrap();
        rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    };
    send(0);
    let mut child = Child::spawn(
        "logpipe dlq --tail",
        Command::new(BIN)
            .args([
                "dlq",
                "--brokers",
                &broker.bootstrap,
                "--topic",
                &dlq,
                "--tail",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let stderr = collect(child_stderr(&mut child));
    let mut out = BufReader::new(child.stdout().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "the dead letter was shown");
    drop(out);
    let mut sent = 1;
    let exited = logpipe_testkit::wait_until(Duration::from_secs(60), || {
        send(sent);
        sent += 1;
        child.exited().then_some(())
    });
    assert!(exited.is_some(), "dlq --tail stopped");
    let status = child.wait(Duration::from_secs(1));
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `logpipe replay --dry-run 2>&1 | head -1`: the plan's first line, then
/// the rest of its output into a closed pipe — exit 0, no panic.
#[test]
fn replay_into_a_closed_pipe_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let topic = unique("first-replay");
    let broker = LogpipeBroker::start(Path::new(BIN), &[&topic], 2);
    let log = tmp.path().join("a.log");
    Expected::new(WINDOW_MS).generate_file(&log, "a", 5, START_MS, 50.0, 3000);
    produce_all(
        Path::new(BIN),
        &broker.bootstrap,
        &topic,
        &tmp.path().join("cp"),
        &[log],
    );
    let mut sh = Command::new("bash");
    sh.arg("-c")
        .arg(r#""$0" replay --brokers "$1" --topic "$2" --from-offsets earliest --dry-run 2>&1 | head -1; echo "status=${PIPESTATUS[0]}""#)
        .args([BIN, &broker.bootstrap, &topic])
        .env_remove("LOGPIPE_LOG")
        .stdout(Stdio::piped());
    let mut child = Child::spawn("bash -c 'logpipe replay 2>&1 | head -1'", &mut sh);
    let mut stdout = String::new();
    child.stdout().unwrap().read_to_string(&mut stdout).unwrap();
    child.wait(Duration::from_secs(120));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[1], "status=0", "{stdout}");
}

/// A log in another format than the one given: every line is a dead
/// letter, and the analyzer says which source, which format it tried and
/// what to do; given its format, the same file parses whole.
#[test]
fn a_log_in_another_format_is_named_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("app.log");
    let text: String = (0..150)
        .map(|i| {
            format!(
                "2024-05-01T12:00:{:02}.000Z INFO [shop.cart] item {i} added\n",
                i % 60
            )
        })
        .collect();
    std::fs::write(&log, text).unwrap();
    let points = tmp.path().join("points.lp");
    let points = points.to_str().unwrap();
    let run = |format: &str| one_shot(&log, tmp.path(), &["--format", format, "--lp-out", points]);
    let wrong = run("combined");
    let hint = wrong
        .lines()
        .find(|l| l.contains("none of the first 100 lines of"))
        .unwrap_or_else(|| panic!("no hint:\n{wrong}"));
    for want in [
        &log.display().to_string(),
        "parse as combined",
        "--format",
        "logpipe dlq",
    ] {
        assert!(hint.contains(want), "{want:?} not in {hint}");
    }
    assert_eq!(
        wrong.matches("none of the first").count(),
        1,
        "said once:\n{wrong}"
    );
    assert!(
        wrong.contains("150 lines produced; 150 read, 0 parsed, 150 dead-lettered"),
        "{wrong}"
    );
    let right = run("app");
    assert!(!right.contains("none of the first"), "{right}");
    assert!(
        right.contains("150 lines produced; 150 read, 150 parsed, 0 dead-lettered"),
        "{right}"
    );
}
