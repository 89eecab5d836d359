//! End-to-end: `logpipe produce` and two `logpipe analyze` processes against a
//! Kafka-protocol broker process and a real InfluxDB; every window must equal
//! the independent truth exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use logpipe_analyzer::top::TopSpec;
use logpipe_testkit::{
    diff, dlq_topic, produce_all, read_topic, top_from_influx, unique, wait_for_group, wait_until,
    Analyzer, Expected, GroupProtocol, Influx, Kafka, LogpipeBroker, Membership, Tansu,
};

const BIN: &str = env!("CARGO_BIN_EXE_logpipe");
const WINDOW_MS: i64 = 10_000;
/// 2024-01-01T00:00:00Z: a fixed past, so nothing depends on the clock.
const START_MS: i64 = 1_704_067_200_000;

/// Three sources with known truth: 3 × 2500 lines at 20 lines/s (~125 s of
/// event time each, so windows both close and stay open at the end).
fn write_logs(dir: &Path) -> (Vec<PathBuf>, Expected) {
    let mut expected = Expected::new(WINDOW_MS);
    let mut paths = vec![];
    for (i, name) in ["shop", "api", "blog"].iter().enumerate() {
        let p = dir.join(format!("{name}.log"));
        expected.generate_file(
            &p,
            &p.display().to_string(),
            100 + i as u64,
            START_MS,
            20.0,
            2500,
        );
        paths.push(p);
    }
    (paths, expected)
}

/// Sum over analyzers of the latest `dead_lettered` self-metric.
fn malformed_counted(influx: &Influx, db: &str) -> u64 {
    influx
        .query(
            db,
            "SELECT last(dead_lettered) FROM logpipe GROUP BY analyzer",
        )
        .iter()
        .map(|s| s["values"][0][1].as_u64().unwrap_or(0))
        .sum()
}

fn run_pipeline(
    brokers: &str,
    topic: &str,
    partitions: usize,
    session_ms: u64,
    protocol: GroupProtocol,
) {
    let dir = tempfile::tempdir().unwrap();
    let (paths, expected) = write_logs(dir.path());
    let influx = Influx::start();
    let db = influx.create_db(&unique("e2e"));
    let m = Membership {
        brokers: brokers.into(),
        topic: topic.into(),
        group: unique("group"),
        session_ms,
        protocol,
    };
    let mut analyzers: Vec<Analyzer> = (0..2)
        .map(|n| {
            let id = format!("a{n}");
            Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db)
                .id(&id)
                .start()
        })
        .collect();
    // Both members own partitions before the first line arrives (no rebalance mid-stream here).
    wait_for_group(&analyzers, partitions);

    produce_all(
        Path::new(BIN),
        brokers,
        topic,
        &dir.path().join("checkpoints"),
        &paths,
    );

    let mut got = BTreeMap::new();
    let matched = wait_until(Duration::from_secs(90), || {
        got = Expected::from_influx(&influx, &db);
        (got == expected.windows && malformed_counted(&influx, &db) == expected.malformed)
            .then_some(())
    });
    if matched.is_none() {
        panic!(
            "InfluxDB does not match the truth ({} windows expected, {} found; malformed expected {}, counted {}):\n{}\nself-metrics: {:?}\nanalyzer logs:\n{}\n---\n{}",
            expected.windows.len(),
            got.len(),
            expected.malformed,
            malformed_counted(&influx, &db),
            diff(&expected.windows, &got),
            influx.query(&db, "SELECT last(*) FROM logpipe GROUP BY analyzer"),
            analyzers[0].log(),
            analyzers[1].log()
        );
    }
    assert!(
        expected.malformed > 0 && expected.windows.len() > 30,
        "the workload has malformed lines and many windows"
    );
    let late: u64 = influx
        .query(&db, "SELECT last(late) FROM logpipe GROUP BY analyzer")
        .iter()
        .map(|s| s["values"][0][1].as_u64().unwrap())
        .sum();
    assert_eq!(
        late, 0,
        "lines out of order by a few seconds are within --lateness"
    );
    // consumed = parsed + dead-lettered (+ duplicates: none here).
    for s in influx.query(
        &db,
        "SELECT last(consumed), last(parsed), last(dead_lettered), last(duplicates) FROM logpipe GROUP BY analyzer",
    ) {
        let v: Vec<u64> = s["values"][0].as_array().unwrap()[1..]
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(v[0], v[1] + v[2] + v[3], "consumed = parsed + dead_lettered + duplicates: {s}");
    }
    check_dead_letters(brokers, topic, &expected);
    // Every window carries the full field set and the producer's host tag.
    let rows = influx.query(&db, "SELECT count(qps), count(error_rate), count(status_2xx) FROM access_log WHERE host = 'testhost'");
    let counts: Vec<u64> = rows[0]["values"][0].as_array().unwrap()[1..]
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![expected.windows.len() as u64; 3]);
    // Top-K: exact where a window's keys fit the capacity (paths, agents,
    // referrers), within Space-Saving's bounds where they do not (random
    // clients, ~200 per window).
    let top = TopSpec::DEFAULT;
    let (diff, exact, beyond) = expected.check_top(
        &top_from_influx(&influx, &db),
        usize::from(top.k),
        usize::from(top.capacity),
    );
    assert!(
        diff.is_empty(),
        "access_top differs from the requests:\n{diff}"
    );
    assert!(
        exact > 0 && beyond > 0,
        "exact {exact}, beyond capacity {beyond}"
    );
    for a in &mut analyzers {
        let st = a.child.terminate(Duration::from_secs(20));
        assert!(st.success(), "analyzer exit {st:?}: {}", a.log());
    }
}

/// Every malformed line is in the dead-letter topic exactly once, with the
/// original key and headers plus `error`, `analyzer` and `origin`; and
/// `logpipe dlq` shows them with their errors.
fn check_dead_letters(brokers: &str, topic: &str, expected: &Expected) {
    let dlq = dlq_topic(topic);
    let records = read_topic(brokers, &dlq);
    let mut got: Vec<(String, String)> = records.iter().map(|r| r.source_and_line()).collect();
    got.sort();
    assert_eq!(
        got,
        expected.malformed_sorted(),
        "dead letters differ from the malformed lines written"
    );
    for r in &records {
        let err = r.header("error").unwrap_or("");
        assert!(
            (err.starts_with("expected ")
                || err.starts_with("line ends ")
                || err.starts_with("a NUL byte"))
                && err.contains(" at byte "),
            "error header: {r:?}"
        );
        assert!(matches!(r.header("analyzer"), Some("a0" | "a1")), "{r:?}");
        let origin = r.header("origin").unwrap_or("");
        assert!(
            origin.starts_with(&format!("{topic}/")),
            "origin {origin:?}"
        );
        let source = r.header("source").unwrap();
        assert_eq!(
            r.key,
            format!("testhost:{source}").into_bytes(),
            "original key"
        );
        assert!(
            r.header("file").is_some() && r.header("offset").is_some(),
            "original headers: {r:?}"
        );
    }
    let out = Command::new(BIN)
        .args(["dlq", "--brokers", brokers, "--topic", &dlq, "-n", "5"])
        .output()
        .expect("run logpipe dlq");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "logpipe dlq: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("  error: ").count(), 5, "{stdout}");
    assert_eq!(stdout.matches("  line:  ").count(), 5, "{stdout}");
}

/// The mock cluster as a separate `logpipe broker` process.
#[test]
fn exact_windows_through_logpipe_broker_process() {
    let topic = unique("logs");
    let broker = LogpipeBroker::start(Path::new(BIN), &[&topic], 6);
    run_pipeline(&broker.bootstrap, &topic, 6, 6_000, GroupProtocol::Classic);
}

/// Apache Kafka, the classic consumer group protocol.
#[test]
fn exact_windows_through_apache_kafka() {
    let kafka = Kafka::start();
    let topic = unique("logs");
    kafka.create_topic(&topic, 6);
    run_pipeline(&kafka.bootstrap, &topic, 6, 6_000, GroupProtocol::Classic);
}

/// Apache Kafka, KIP-848's `consumer` group protocol (the broker assigns).
#[test]
fn exact_windows_through_apache_kafka_kip848() {
    let kafka = Kafka::start();
    let topic = unique("logs");
    kafka.create_topic(&topic, 6);
    run_pipeline(&kafka.bootstrap, &topic, 6, 6_000, GroupProtocol::Consumer);
}

/// Tansu, an independent Kafka-protocol broker (sqlite storage, lz4 batches;
/// opt-in, `LOGPIPE_TEST_TANSU=1`).
#[test]
fn exact_windows_through_tansu() {
    let Some(tansu) = Tansu::start() else { return };
    let topic = unique("logs");
    tansu.create_topic(&topic, 6);
    run_pipeline(&tansu.bootstrap, &topic, 6, 30_000, GroupProtocol::Classic);
    let _ = tansu.pid();
}

/// Runs `logpipe demo --input F --from-beginning --exit-on-eof` into `db`;
/// returns its stdout and stderr after checking it succeeded.
fn one_shot_demo(input: &Path, influx: &Influx, db: &str, extra: &[&str]) -> (String, String) {
    let out = Command::new(BIN)
        .args(["demo", "--input"])
        .arg(input)
        .args([
            "--from-beginning",
            "--exit-on-eof",
            "--influx-url",
            &influx.url,
            "--influx-db",
            db,
        ])
        .args(extra)
        // The demo hides dead-letter lines by default; these tests read them.
        .env("LOGPIPE_LOG", "info")
        .current_dir(input.parent().expect("input has a directory"))
        .output()
        .expect("run logpipe demo");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "demo failed: {stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// The unterminated end of a file read with `--exit-on-eof` (published as
/// `partial: eof`) counts when it is a whole line and is a dead letter
/// saying so when it is cut short.
#[test]
fn an_unterminated_last_line_counts_only_when_whole() {
    let dir = tempfile::tempdir().unwrap();
    let line = |i: u32| {
        format!(
            r#"203.0.113.{i} - - [01/Jan/2024:00:00:0{i} +0000] "GET / HTTP/1.1" 200 100 "-" "curl/8""#
        )
    };
    let influx = Influx::start();
    for (name, last, count, traffic) in [
        ("whole", line(4), 4, 400),
        ("cut", line(4)[..70].to_string(), 3, 300),
    ] {
        let path = dir.path().join(format!("{name}.log"));
        std::fs::write(
            &path,
            format!("{}\n{}\n{}\n{last}", line(1), line(2), line(3)),
        )
        .unwrap();
        let db = unique(name);
        let (_, stderr) = one_shot_demo(&path, &influx, &db, &[]);
        let rows = influx.query(&db, "SELECT sum(count), sum(traffic) FROM access_log");
        let got = (
            rows[0]["values"][0][1].as_u64(),
            rows[0]["values"][0][2].as_u64(),
        );
        assert_eq!(got, (Some(count), Some(traffic)), "{name}: {stderr}");
        if name == "cut" {
            assert!(
                stderr.contains("line ends") && stderr.contains("partial: eof"),
                "the dead letter says where the line ends and that it was the file's end: {stderr}"
            );
        }
    }
}

/// `logpipe demo --input F --from-beginning --exit-on-eof` gives the same numbers, all final.
#[test]
fn demo_one_shot_analysis_matches_truth() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let mut expected = Expected::new(WINDOW_MS);
    expected.generate_file(&path, &path.display().to_string(), 7, START_MS, 50.0, 6000);
    let influx = Influx::start();
    let db = unique("demo");
    let (stdout, stderr) = one_shot_demo(&path, &influx, &db, &[]);
    let got = Expected::from_influx(&influx, &db);
    assert!(
        got == expected.windows,
        "demo windows differ:\n{}",
        diff(&expected.windows, &got)
    );
    assert!(
        stderr.contains(&format!("{} dead-lettered", expected.malformed)),
        "{stderr}"
    );
    // Every window was printed once as a table line (plus headers), then
    // the totals.
    let table = &stdout[..stdout.find("\nSummary of ").expect("totals at the end")];
    let rows = table.lines().filter(|l| l.contains("access.log")).count();
    assert_eq!(rows, expected.windows.len(), "{stdout}");
}

/// A file far larger than the embedded broker keeps (it drops the oldest
/// batches beyond ~5 MiB per partition): 300 000 lines in one source, one
/// partition. The producer is held back while the analyzer is behind, so
/// every line is counted (before, most were deleted unread).
#[test]
fn demo_on_a_file_larger_than_the_embedded_broker_keeps_counts_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.log");
    let mut expected = Expected::new(WINDOW_MS);
    expected.generate_file(
        &path,
        &path.display().to_string(),
        9,
        START_MS,
        500.0,
        300_000,
    );
    assert!(
        std::fs::metadata(&path).unwrap().len() > 40 << 20,
        "well over 5 MiB even compressed"
    );
    let influx = Influx::start();
    let db = unique("big");
    let (_, stderr) = one_shot_demo(&path, &influx, &db, &[]);
    let got = Expected::from_influx(&influx, &db);
    assert!(
        got == expected.windows,
        "demo windows differ:\n{}\n{stderr}",
        diff(&expected.windows, &got)
    );
    assert!(
        stderr.contains("300000 lines produced; 300000 read"),
        "{stderr}"
    );
}

/// The real 10 000-line Apache log of `tests/data`, analysed by the demo,
/// against an independent count (a regex and chrono, not logpipe's parser).
#[test]
fn demo_on_real_access_log_matches_an_independent_count() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/apache_combined_10k.log");
    let text = std::fs::read_to_string(&data).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the test data is part of the repository)",
            data.display()
        )
    });
    // Whole combined lines: the referer and the agent closed (a line cut
    // inside its agent, as this log has one, is a dead letter).
    let re = regex::Regex::new(
        r#"^(\S+) \S+ (.+?) \[([^\]]+)\] "((?:[^"\\]|\\.)*)" (\d{3}) (\d+|-) "(?:[^"\\]|\\.)*" "(?:[^"\\]|\\.)*"(?: .*)?$"#,
    )
    .unwrap();
    let source = data.display().to_string();
    let mut expected = BTreeMap::new();
    let mut unmatched = 0u64;
    for line in text.lines() {
        let Some(c) = re.captures(line) else {
            unmatched += 1;
            continue;
        };
        let t = chrono::DateTime::parse_from_str(&c[3], "%d/%b/%Y:%H:%M:%S %z")
            .expect("time")
            .timestamp_millis();
        let status: u16 = c[5].parse().unwrap();
        let w: &mut logpipe_testkit::WindowTruth = expected
            .entry((source.clone(), t.div_euclid(WINDOW_MS) * WINDOW_MS))
            .or_default();
        w.count += 1;
        w.traffic += c[6].parse::<u64>().unwrap_or(0);
        w.status[(status / 100 - 1) as usize] += 1;
    }
    let influx = Influx::start();
    let db = unique("real");
    let (_, stderr) = one_shot_demo(&data, &influx, &db, &["--lateness", "1h"]);
    let got = Expected::from_influx(&influx, &db);
    assert!(
        got == expected,
        "windows differ from the independent count:\n{}",
        diff(&expected, &got)
    );
    assert!(
        stderr.contains(&format!("{unmatched} dead-lettered")),
        "{stderr}"
    );
    assert!(
        expected.len() > 100 && unmatched == 1,
        "{} windows, {unmatched} unmatched (the log has one line cut inside its agent)",
        expected.len()
    );
}

/// One analyzer group reads three kinds of logs at once through a formats
/// file: JSON lines, an Apache `LogFormat` with `%D`, and a pasted nginx
/// `log_format` with `$request_time $upstream_response_time`. Lines are
/// written here with known times, statuses and sizes; the windows must match
/// them, the latency max must come from each format's own time unit, and the
/// broken lines must be dead letters.
#[test]
fn one_group_reads_json_apache_and_nginx_sources_through_a_formats_file() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("logs");
    let broker = LogpipeBroker::start(Path::new(BIN), &[&topic], 3);
    let influx = Influx::start();
    let db = influx.create_db(&unique("formats"));
    let formats = dir.path().join("formats.toml");
    std::fs::write(
        &formats,
        r#"
[[source]]
match = "*/api.log"
format = "json"
json = { time = "ts", client = "ip" }

[[source]]
match = "*/apache.log"
format = 'LogFormat "%h %l %u %t \"%r\" %>s %b \"%{Referer}i\" \"%{User-agent}i\" %D" combined_us'

[[source]]
match = "*/nginx.log"
format = '''log_format timed '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time $upstream_response_time';'''
"#,
    )
    .unwrap();
    let mut truth: BTreeMap<(String, i64), logpipe_testkit::WindowTruth> = BTreeMap::new();
    let mut broken = Vec::new();
    let mut paths = Vec::new();
    for kind in ["api", "apache", "nginx"] {
        let path = dir.path().join(format!("{kind}.log"));
        let source = path.display().to_string();
        let mut text = String::new();
        for i in 0..600i64 {
            // 5 lines/s from START_MS (+ up to 2 h of zone offset in the line).
            let t = START_MS + i * 200;
            let status = [200, 200, 304, 404, 503][(i % 5) as usize];
            let bytes = i * 7;
            let dt = chrono::DateTime::from_timestamp_millis(t).unwrap();
            let local = dt.with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap());
            let clf = local.format("%d/%b/%Y:%H:%M:%S %z");
            let line = match kind {
                "api" => format!(
                    r#"{{"ts":{:.3},"ip":"10.1.0.{}","request":"GET /v1/x?i={i} HTTP/1.1","status":{status},"body_bytes_sent":{bytes},"request_time":"0.{:03}"}}"#,
                    t as f64 / 1000.0,
                    i % 250,
                    i % 1000
                ),
                "apache" => format!(
                    r#"10.2.0.{} - - [{clf}] "GET /a HTTP/1.1" {status} {bytes} "-" "ua \"q\"" {}"#,
                    i % 250,
                    (i % 1000) * 1000
                ),
                _ => format!(
                    r#"10.3.0.{} - - [{clf}] "GET /n HTTP/1.1" {status} {bytes} "-" "ua" 0.{:03} 0.001, 0.002 : 0.003"#,
                    i % 250,
                    i % 1000
                ),
            };
            text.push_str(&line);
            text.push('\n');
            let w = truth
                .entry((source.clone(), t.div_euclid(WINDOW_MS) * WINDOW_MS))
                .or_default();
            w.count += 1;
            w.traffic += bytes as u64;
            w.status[(status / 100 - 1) as usize] += 1;
            if i % 150 == 75 {
                let bad = format!("{kind} line {i} cut off [");
                text.push_str(&bad);
                text.push('\n');
                broken.push((source.clone(), bad));
            }
        }
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let m = Membership::new(&broker.bootstrap, &topic);
    let args = vec!["--formats".to_string(), formats.display().to_string()];
    let mut a = Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db)
        .args(&args)
        .start();
    produce_all(
        Path::new(BIN),
        &broker.bootstrap,
        &topic,
        &dir.path().join("checkpoints"),
        &paths,
    );
    let mut got = BTreeMap::new();
    // The last window of each source stays open (its watermark does not pass it).
    let closed: BTreeMap<_, _> = truth
        .iter()
        .filter(|((_, w), _)| *w < START_MS + 600 * 200 - 30_000 - WINDOW_MS)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let ok = wait_until(Duration::from_secs(60), || {
        got = Expected::from_influx(&influx, &db);
        closed
            .iter()
            .all(|(k, v)| got.get(k) == Some(v))
            .then_some(())
    });
    assert!(
        ok.is_some(),
        "windows differ:\n{}\n{}",
        diff(&closed, &got),
        a.log()
    );
    // Latency max per source, in seconds, from three units (s, µs, s).
    for (kind, max) in [("api", 0.599), ("apache", 0.599), ("nginx", 0.599)] {
        let rows = influx.query(
            &db,
            &format!("SELECT max(latency_max) FROM access_log WHERE source =~ /{kind}.log$/"),
        );
        let v = rows[0]["values"][0][1].as_f64().unwrap();
        assert!((v - max).abs() < 1e-9, "{kind}: latency_max {v}");
    }
    wait_until(Duration::from_secs(30), || {
        (read_topic(&broker.bootstrap, &dlq_topic(&topic)).len() == broken.len()).then_some(())
    })
    .unwrap_or_else(|| panic!("dead letters missing: {}", a.log()));
    let mut dead: Vec<(String, String)> = read_topic(&broker.bootstrap, &dlq_topic(&topic))
        .iter()
        .map(|r| {
            (
                r.header("source").unwrap().to_string(),
                String::from_utf8_lossy(&r.value).into_owned(),
            )
        })
        .collect();
    dead.sort();
    broken.sort();
    assert_eq!(dead, broken);
    let st = a.child.terminate(Duration::from_secs(20));
    assert!(st.success(), "analyzer exit {st:?}: {}", a.log());
}

/// Wire v2 records written by hand: a run whose `lines` header does not
/// match its value is one dead letter that names the mismatch (the whole
/// value, never a guess at its lines); the runs around it count every line,
/// and a malformed line inside a run is a dead letter of its own with that
/// line's own byte offset.
#[test]
fn a_damaged_v2_record_is_one_dead_letter_and_the_runs_around_it_count() {
    use logpipe_wire::RunEncoder;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let topic = unique("logs");
    let dlq = dlq_topic(&topic);
    let broker = LogpipeBroker::start(Path::new(BIN), &[&topic], 1);
    let influx = Influx::start();
    let db = influx.create_db(&unique("runs"));
    let dir = tempfile::tempdir().unwrap();
    let mut g = logpipe_traffic::Generator::new(5, START_MS, 20.0).malformed_one_in(0);
    let lines: Vec<String> = (0..6).map(|_| g.next_line().0).collect();
    let bad = "this is not an access line";
    // (lines header, eol, value, first offset)
    let mut records: Vec<(String, Vec<u8>, u64)> = vec![];
    let mut run = RunEncoder::new();
    let mut at = 0u64;
    for l in &lines[..3] {
        assert!(run.push(l.as_bytes(), at, at + l.len() as u64 + 1, None, None));
        at += l.len() as u64 + 1;
    }
    records.push((run.lines().to_string(), run.value().to_vec(), 0));
    // Says 5 lines, holds 2.
    let damaged = format!("{}\n{}", lines[3], lines[4]);
    records.push(("5".into(), damaged.clone().into_bytes(), at));
    at += damaged.len() as u64 + 1;
    let mut run = RunEncoder::new();
    let bad_at = at + lines[5].len() as u64 + 1;
    for l in [&lines[5], bad] {
        assert!(run.push(l.as_bytes(), at, at + l.len() as u64 + 1, None, None));
        at += l.len() as u64 + 1;
    }
    records.push((
        run.lines().to_string(),
        run.value().to_vec(),
        bad_at - lines[5].len() as u64 - 1,
    ));
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    for (n, value, offset) in &records {
        let offset = offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "host",
                value: Some("h"),
            })
            .insert(Header {
                key: "source",
                value: Some("runs.log"),
            })
            .insert(Header {
                key: "file",
                value: Some("1:2:3:0"),
            })
            .insert(Header {
                key: "offset",
                value: Some(&offset),
            })
            .insert(Header {
                key: "lines",
                value: Some(n),
            });
        p.send(
            BaseRecord::to(&topic)
                .key("h:runs.log")
                .payload(value)
                .headers(headers),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let m = Membership::new(&broker.bootstrap, &topic);
    let mut a = Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db).start();
    let counted = || {
        influx
            .query(&db, "SELECT sum(count) FROM access_log")
            .first()
            .and_then(|s| s["values"][0][1].as_u64())
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(60), || (counted() == 4).then_some(())).unwrap_or_else(|| {
        panic!(
            "counted {} of the 4 lines of the good runs:\n{}",
            counted(),
            a.log()
        )
    });
    let mut dead = vec![];
    wait_until(Duration::from_secs(30), || {
        // As stored: the damaged run's dead letter keeps its `lines` header.
        dead = logpipe_testkit::read_records(&broker.bootstrap, &dlq);
        (dead.len() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("dead letters: {dead:?}\n{}", a.log()));
    dead.sort_by_key(|r| r.value.len());
    let (line, run) = (&dead[0], &dead[1]);
    assert_eq!(line.value, bad.as_bytes());
    assert_eq!(
        line.header("offset"),
        Some(bad_at.to_string().as_str()),
        "{line:?}"
    );
    assert_eq!(
        line.header("lines"),
        None,
        "a line's dead letter is shaped as v1: {line:?}"
    );
    assert_eq!(run.value, damaged.as_bytes());
    let e = run.header("error").unwrap_or_default();
    assert!(
        e.contains("says 5 lines") && e.contains("holds 2"),
        "the error names the mismatch: {e}"
    );
    assert_eq!(run.header("origin"), Some(format!("{topic}/0/1").as_str()));
    let st = a.child.terminate(Duration::from_secs(20));
    assert!(st.success(), "analyzer exit {st:?}: {}", a.log());
}

/// Injected incidents are what a window's top-K names first: a burst of 5xx
/// on one path leads `path_5xx` in every window of the burst, a scanner
/// leads `client` in every window of its scan, and neither appears in any
/// other window; every ranking equals the requests' (exact where keys fit,
/// within the bounds where they do not).
#[test]
fn top_k_names_the_injected_incidents_first() {
    use logpipe_traffic::{Generator, Incident, IncidentKind};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.log");
    let (burst, scan) = (
        (START_MS + 60_000, START_MS + 90_000),
        (START_MS + 150_000, START_MS + 170_000),
    );
    let (bad_path, scanner) = ("/api/v1/checkout", "203.0.113.66");
    let g = Generator::new(7, START_MS, 50.0)
        .with_incident(Incident {
            from_ms: burst.0,
            to_ms: burst.1,
            share: 0.3,
            kind: IncidentKind::ErrorBurst {
                path: bad_path.into(),
            },
        })
        .with_incident(Incident {
            from_ms: scan.0,
            to_ms: scan.1,
            share: 0.4,
            kind: IncidentKind::Scanner {
                client: scanner.into(),
            },
        });
    let mut expected = Expected::new(WINDOW_MS);
    expected.generate_file_with(&path, &path.display().to_string(), g, 12_000);
    let influx = Influx::start();
    let db = influx.create_db(&unique("incidents"));
    one_shot_demo(&path, &influx, &db, &["--window", "10s"]);

    let rows = top_from_influx(&influx, &db);
    let top = TopSpec::DEFAULT;
    let (diff, exact, beyond) =
        expected.check_top(&rows, usize::from(top.k), usize::from(top.capacity));
    assert!(
        diff.is_empty(),
        "access_top differs from the requests:\n{diff}"
    );
    assert!(exact > 0 && beyond > 0, "exact {exact}, beyond {beyond}");

    let inside = |(from, to): (i64, i64), t: i64| t >= from && t + WINDOW_MS <= to;
    let touches = |(from, to): (i64, i64), t: i64| t < to && t + WINDOW_MS > from;
    let (mut burst_windows, mut scan_windows) = (0, 0);
    for ((_, t), (dim, rank, key, ..)) in &rows {
        if dim == "path_5xx" && *rank == 1 && inside(burst, *t) {
            assert_eq!(key, bad_path, "window {t}: 5xx burst not first");
            burst_windows += 1;
        }
        if dim == "client" && *rank == 1 && inside(scan, *t) {
            assert_eq!(key, scanner, "window {t}: scanner not first");
            scan_windows += 1;
        }
        if key == bad_path {
            assert!(touches(burst, *t), "{dim} {key} outside the burst at {t}");
        }
        if key == scanner || key.contains("zgrab") {
            assert!(touches(scan, *t), "{dim} {key} outside the scan at {t}");
        }
    }
    assert_eq!((burst_windows, scan_windows), (3, 2));
}

/// Anomalies: a 5xx burst, a latency spike and a traffic drop injected into
/// steady generated traffic are flagged (`access_anomaly`, the right metric
/// and direction) in every window they fill, and no other window is
/// flagged; the windows closed only by the end of the input are not scored.
#[test]
fn anomalies_flag_every_incident_window_and_nothing_else() {
    use logpipe_traffic::{Generator, Incident, IncidentKind};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.log");
    let at = |s: i64| START_MS + s * 1000;
    let cases = [
        (
            "error_rate",
            "up",
            at(200),
            at(230),
            IncidentKind::ErrorBurst {
                path: "/api/v1/pay".into(),
            },
            0.3,
        ),
        (
            "latency_p99",
            "up",
            at(300),
            at(330),
            IncidentKind::LatencySpike { factor: 8 },
            0.2,
        ),
        (
            "requests",
            "down",
            at(400),
            at(430),
            IncidentKind::TrafficDrop,
            0.8,
        ),
    ];
    let mut g = Generator::new(11, START_MS, 50.0).with_request_time();
    for (_, _, from_ms, to_ms, kind, share) in &cases {
        g = g.with_incident(Incident {
            from_ms: *from_ms,
            to_ms: *to_ms,
            share: *share,
            kind: kind.clone(),
        });
    }
    let mut expected = Expected::new(WINDOW_MS);
    expected.generate_file_with(&path, &path.display().to_string(), g, 30_000);
    let influx = Influx::start();
    let db = influx.create_db(&unique("anomalies"));
    one_shot_demo(&path, &influx, &db, &[]);

    let rows = logpipe_testkit::anomalies_from_influx(&influx, &db);
    for ((_, t), (metric, direction, value, baseline, score)) in &rows {
        println!("{t} {metric} {direction} value {value} baseline {baseline} score {score:.1}");
    }
    let got: Vec<(i64, String, String)> = rows
        .into_iter()
        .map(|((_, t), (metric, direction, ..))| (t, metric, direction))
        .collect();
    let mut want = vec![];
    for (metric, direction, from_ms, to_ms, ..) in &cases {
        for t in (*from_ms..*to_ms).step_by(WINDOW_MS as usize) {
            want.push((t, metric.to_string(), direction.to_string()));
        }
    }
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(got_sorted, want, "flags differ from the incidents");
    // The traffic dashboard's annotation query shows each of them.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards/traffic-overview.json"),
    )
    .unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let q = d["annotations"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "Anomalies")
        .expect("an Anomalies annotation")["query"]
        .as_str()
        .unwrap()
        .replace("$timeFilter", "time >= 0")
        .replace("$host", ".*")
        .replace("$source", ".*");
    let rows: usize = influx
        .query(&db, &q)
        .iter()
        .map(|s| s["values"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(rows, want.len(), "{q}");
}
