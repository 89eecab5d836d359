//! `logpipe replay` against real brokers and a real InfluxDB: a dropped
//! database rebuilt field for field, a middle range that leaves every other
//! window alone, a second replay that changes nothing, another window size,
//! and start offsets found by record time (Apache Kafka answers
//! offsets-for-times; the mock cluster cannot, so the binary search finds the
//! same offsets).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use logpipe_analyzer::window::WindowSpec;
use logpipe_testkit::{
    diff, diff_points, points_from_influx, produce_all, reference_points, unique, wait_until,
    Analyzer, Expected, Influx, Kafka, LogpipeBroker, Membership, Point,
};
use logpipe_traffic::Generator;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

const BIN: &str = env!("CARGO_BIN_EXE_logpipe");
/// 2024-01-01T00:00:00Z.
const START_MS: i64 = 1_704_067_200_000;

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Runs `logpipe replay` into InfluxDB `url` database `db` with `args`;
/// returns its stderr after checking it exited 0.
fn replay(brokers: &str, topic: &str, (url, db): (&str, &str), args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["replay", "--brokers", brokers, "--topic", topic])
        .args(["--influx-url", url, "--influx-db", db])
        .args(["--flush-interval", "300ms"])
        .args(args)
        .env("LOGPIPE_LOG", "info")
        .output()
        .expect("run logpipe replay");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "logpipe replay {args:?} failed:\n{stderr}"
    );
    stderr
}

/// Three sources, 2500 lines each at 20 lines/s from START_MS (one in 100
/// malformed), written to `dir`; the truth for `window_ms`.
fn write_logs(dir: &Path, window_ms: i64) -> (Vec<PathBuf>, Expected) {
    let mut expected = Expected::new(window_ms);
    let paths: Vec<PathBuf> = ["shop", "api", "blog"]
        .iter()
        .map(|n| dir.join(format!("{n}.log")))
        .collect();
    for (i, p) in paths.iter().enumerate() {
        let g = Generator::new(100 + i as u64, START_MS, 20.0).with_request_time();
        expected.generate_file_with(p, &p.display().to_string(), g, 2500);
    }
    (paths, expected)
}

/// Overwrites every point of `points` with sentinel values (the full field
/// set, so nothing of the old point survives a merge).
fn write_sentinels(influx: &Influx, db: &str, points: &BTreeMap<(String, i64), Point>) {
    let mut lp = String::new();
    for (source, t) in points.keys() {
        lp.push_str(&format!(
            "access_log,host=testhost,source={} count=999999i,error_rate=0.5,qps=1.5,status_1xx=1i,status_2xx=1i,status_3xx=1i,status_4xx=1i,status_5xx=1i,traffic=7i,unique_clients=3i,latency_p50=9.0,latency_p90=9.0,latency_p99=9.0,latency_max=9.0 {t}\n",
            source.replace(' ', "\\ ").replace(',', "\\,")
        ));
    }
    influx.write(db, &lp);
}

fn is_sentinel(p: &Point) -> bool {
    p.count == 999_999
}

/// The number in "read N lines" of replay's summary.
fn lines_read(stderr: &str) -> u64 {
    let s = stderr
        .split("logpipe replay: read ")
        .nth(1)
        .expect("summary line");
    s.split_whitespace().next().unwrap().parse().unwrap()
}

/// Live run, then: drop the database and replay (equal field for field);
/// replay again (no change); sentinels everywhere and a middle range (only
/// windows inside it restored); a 30 s window into another database (equal
/// to the truth for 30 s windows). Apache Kafka: start offsets by offsets-for-times.
#[test]
fn replay_rebuilds_history_exactly_and_only_inside_its_range() {
    let topic = unique("logs");
    let broker = Kafka::with_topics(&[&topic], 3);
    let dir = tempfile::tempdir().unwrap();
    let (paths, expected) = write_logs(dir.path(), 10_000);
    let influx = Influx::start();
    let db = influx.create_db(&unique("live"));
    let m = Membership::new(&broker.bootstrap, &topic);
    let mut live = Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db).start();
    produce_all(
        Path::new(BIN),
        &broker.bootstrap,
        &topic,
        &dir.path().join("checkpoints"),
        &paths,
    );
    let mut got = BTreeMap::new();
    wait_until(Duration::from_secs(90), || {
        got = Expected::from_influx(&influx, &db);
        (got == expected.windows).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "live run differs from the truth:\n{}\n{}",
            diff(&expected.windows, &got),
            live.log()
        )
    });
    assert!(
        live.child.terminate(Duration::from_secs(20)).success(),
        "{}",
        live.log()
    );
    let live_points = points_from_influx(&influx, &db);
    assert_eq!(live_points.len(), expected.windows.len());

    // 1. The database is lost: replay from the start rebuilds every point.
    influx.execute(&format!("DROP DATABASE \"{db}\""));
    influx.create_db(&db);
    // The generator's first lines are a few seconds before START_MS.
    let from = rfc3339(START_MS - 60_000);
    let args = ["--from", &from];
    let log = replay(&broker.bootstrap, &topic, (&influx.url, &db), &args);
    assert!(log.contains("start by offsets-for-times"), "{log}");
    assert_eq!(lines_read(&log), expected.lines, "{log}");
    let replayed = points_from_influx(&influx, &db);
    assert!(
        replayed == live_points,
        "replay differs from the live run:\n{}",
        diff_points(&live_points, &replayed)
    );

    // 2. Again: nothing changes.
    replay(&broker.bootstrap, &topic, (&influx.url, &db), &args);
    let again = points_from_influx(&influx, &db);
    assert!(
        again == live_points,
        "second replay changed points:\n{}",
        diff_points(&live_points, &again)
    );

    // 3. Sentinels everywhere, then [START+35s, START+85s): windows 40..80 s
    // come back, the straddling 30 s and 80 s windows and all others do not.
    write_sentinels(&influx, &db, &live_points);
    let (t1, t2) = (rfc3339(START_MS + 35_000), rfc3339(START_MS + 85_000));
    let log = replay(
        &broker.bootstrap,
        &topic,
        (&influx.url, &db),
        &["--from-offsets", "earliest", "--from", &t1, "--to", &t2],
    );
    let after = points_from_influx(&influx, &db);
    assert_eq!(after.len(), live_points.len(), "{log}");
    let mut restored = 0;
    for (k, p) in &after {
        let inside = k.1 >= START_MS + 40_000 && k.1 < START_MS + 80_000;
        if inside {
            assert!(
                p == &live_points[k],
                "window {k:?} inside the range: {p:?} != {:?}\n{log}",
                live_points[k]
            );
            restored += 1;
        } else {
            assert!(
                is_sentinel(p),
                "window {k:?} outside the range was written: {p:?}\n{log}"
            );
        }
    }
    assert_eq!(restored, 3 * 4, "four windows of three sources");

    // 4. Another window size into another database: the 30 s truth exactly.
    let mut expected30 = Expected::new(30_000);
    for (i, p) in paths.iter().enumerate() {
        let g = Generator::new(100 + i as u64, START_MS, 20.0).with_request_time();
        expected30.generate(g, &p.display().to_string(), 2500);
    }
    let db30 = influx.create_db(&unique("w30"));
    let log = replay(
        &broker.bootstrap,
        &topic,
        (&influx.url, &db30),
        &["--from", &from, "--window", "30s"],
    );
    let got30 = Expected::from_influx(&influx, &db30);
    assert!(
        got30 == expected30.windows,
        "30 s windows differ from the truth:\n{}\n{log}",
        diff(&expected30.windows, &got30)
    );
    let total: u64 = got30.values().map(|w| w.count).sum();
    assert_eq!(total, expected.lines - expected.malformed);
}

/// The same logs published twice, as wire v1 (`--lines-per-record 1`) and
/// as wire v2 runs (the default, and runs of at most 7 lines, so runs end
/// anywhere), each into its own topic, and replayed from the earliest
/// offsets: every replay writes the same points field for field, equal to
/// the truth, reading the same lines in far fewer records.
#[test]
fn v1_and_v2_topics_replay_identically() {
    let topics = [unique("logs-v1"), unique("logs-v2"), unique("logs-v2-7")];
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let broker = LogpipeBroker::start(Path::new(BIN), &names, 3);
    let dir = tempfile::tempdir().unwrap();
    let (paths, expected) = write_logs(dir.path(), 10_000);
    let influx = Influx::start();
    let packings: [&[&str]; 3] = [
        &["--lines-per-record", "1"],
        &[],
        &["--lines-per-record", "7"],
    ];
    let mut all = vec![];
    for (i, (topic, packing)) in topics.iter().zip(packings).enumerate() {
        logpipe_testkit::produce_all_with(
            Path::new(BIN),
            &broker.bootstrap,
            topic,
            &dir.path().join(format!("checkpoints-{i}")),
            &paths,
            packing,
        );
        let records = logpipe_testkit::read_records(&broker.bootstrap, topic);
        let runs = records.iter().filter(|r| r.meta().lines.is_some()).count();
        let db = influx.create_db(&unique("replayed"));
        let log = replay(
            &broker.bootstrap,
            topic,
            (&influx.url, &db),
            &[
                "--from-offsets",
                "earliest",
                "--kafka",
                "fetch.wait.max.ms=10",
            ],
        );
        assert_eq!(lines_read(&log), expected.lines, "{log}");
        let got = Expected::from_influx(&influx, &db);
        assert!(
            got == expected.windows,
            "{topic}: replay differs from the truth:
{}",
            diff(&expected.windows, &got)
        );
        eprintln!(
            "{topic}: {} records ({runs} v2), {} lines replayed exactly",
            records.len(),
            expected.lines
        );
        if i == 0 {
            assert_eq!(
                (runs, records.len() as u64),
                (0, expected.lines),
                "v1: a record per line"
            );
        } else {
            assert_eq!(runs, records.len(), "v2: every record a run");
            assert!(
                records.len() as u64 * 5 < expected.lines,
                "{} records",
                records.len()
            );
        }
        all.push(points_from_influx(&influx, &db));
    }
    for (topic, points) in topics.iter().zip(&all).skip(1) {
        assert!(
            points == &all[0],
            "{topic} replays differently from v1:
{}",
            diff_points(&all[0], points)
        );
    }
}

/// Three hours of history, one source per partition, each record stamped
/// with its line's time + 5 s as the ingest time a producer would give it.
/// Returns each source's lines.
fn write_history(bootstrap: &str, topic: &str) -> Vec<(String, Vec<String>)> {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    let mut sources = vec![];
    for i in 0..3i32 {
        let name = format!("src{i}");
        let key = format!("testhost:{name}");
        let mut g = Generator::new(7 + i as u64, START_MS, 0.5)
            .with_request_time()
            .malformed_one_in(100);
        let mut lines = vec![];
        let mut t = START_MS;
        for _ in 0..5400 {
            let (line, req) = g.next_line();
            if let Some(r) = req {
                t = r.time_ms;
            }
            loop {
                match p.send(
                    BaseRecord::to(topic)
                        .partition(i)
                        .key(&key)
                        .payload(&line)
                        .timestamp(t + 5_000),
                ) {
                    Ok(()) => break,
                    Err((e, _)) => {
                        assert!(
                            matches!(
                                e,
                                rdkafka::error::KafkaError::MessageProduction(
                                    rdkafka::types::RDKafkaErrorCode::QueueFull
                                )
                            ),
                            "{e}"
                        );
                        p.poll(Duration::from_millis(10));
                    }
                }
            }
            lines.push(line);
        }
        sources.push((name, lines));
    }
    p.flush(Duration::from_secs(30)).unwrap();
    sources
}

/// The "partition P: offsets S..E" lines of replay's plan.
fn plan_offsets(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("partition ") && l.contains(": offsets "))
        .map(|l| l.trim().split(" (").next().unwrap().to_string())
        .collect()
}

/// Replays [START+2h, START+2h30m) of three hours of history: Kafka answers
/// offsets-for-times, the mock cluster cannot and the binary search finds the
/// same start offsets; both read the same records (stopping at records
/// ingested after --to + --max-delay) and write exactly the windows inside
/// the range, equal to an uninterrupted run over all of history.
#[test]
fn replay_starts_by_record_time_with_or_without_the_brokers_help() {
    let kafka = Kafka::start();
    let mock_topic = unique("hist");
    let mock = LogpipeBroker::start(Path::new(BIN), &[&mock_topic], 3);
    let topic = unique("hist");
    kafka.create_topic(&topic, 3);
    let sources = write_history(&kafka.bootstrap, &topic);
    assert_eq!(write_history(&mock.bootstrap, &mock_topic), sources);

    let spec = WindowSpec {
        window_ms: 10_000,
        lateness_ms: 30_000,
        error_status: 400,
        error_level: logpipe_analyzer::parse::Level::Error,
        top: logpipe_analyzer::top::TopSpec::DEFAULT,
        anomaly: Some(logpipe_analyzer::anomaly::AnomalySpec::DEFAULT),
    };
    let (from, to) = (START_MS + 7_200_000, START_MS + 9_000_000);
    let want: BTreeMap<(String, i64), Point> = reference_points(spec, &sources)
        .into_iter()
        .filter(|((_, t), _)| *t >= from && *t + 10_000 <= to)
        .collect();
    assert_eq!(want.len(), 3 * 180);
    let influx = Influx::start();
    let mut plans = vec![];
    for (brokers, topic, how) in [
        (&kafka.bootstrap, &topic, "offsets-for-times"),
        (
            &mock.bootstrap,
            &mock_topic,
            "binary search over record timestamps",
        ),
    ] {
        let db = influx.create_db(&unique("hist"));
        let log = replay(
            brokers,
            topic,
            (&influx.url, &db),
            &[
                "--from",
                &rfc3339(from),
                "--to",
                &rfc3339(to),
                "--max-delay",
                "1m",
            ],
        );
        assert_eq!(log.matches(&format!("start by {how})")).count(), 3, "{log}");
        // Only about 32 of 180 minutes are read.
        let read = lines_read(&log);
        assert!(
            read > 3 * 900 && read < 3 * 1100,
            "read {read} records:
{log}"
        );
        let got = points_from_influx(&influx, &db);
        assert!(
            got == want,
            "{how}: points differ from an uninterrupted run:
{}
{log}",
            diff_points(&want, &got)
        );
        plans.push((plan_offsets(&log), read));
    }
    assert_eq!(plans[0], plans[1], "both brokers give the same plan");
    assert_eq!(plans[0].0.len(), 3);
}

/// Writes `lines` gzip-compressed to `path`, keeping only the first
/// `keep_percent` of the compressed bytes (100: all), modified at `mtime_s`.
fn write_gz(path: &Path, lines: &[String], keep_percent: usize, mtime_s: u64) {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for l in lines {
        writeln!(enc, "{l}").unwrap();
    }
    let bytes = enc.finish().unwrap();
    std::fs::write(path, &bytes[..bytes.len() * keep_percent / 100]).unwrap();
    set_mtime(path, mtime_s);
}

fn set_mtime(path: &Path, s: u64) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(s))
        .unwrap();
}

/// History in `access.log.3.gz`, `.2.gz`, `.1.gz` and the live `access.log`:
/// a backfill stopped by a damaged `.2.gz` (the error names it) and run again
/// once it is whole sends every line, oldest first, as one source; a third
/// run sends nothing; a replay from the earliest offsets counts every line
/// once (the windows equal the truth).
#[test]
fn backfill_of_gzip_rotations_resumes_and_counts_every_line_once() {
    let topic = unique("backfill");
    let broker = Kafka::with_topics(&[&topic], 3);
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("access.log");
    let source = live.display().to_string();
    let mut expected = Expected::new(10_000);
    let g = Generator::new(42, START_MS, 20.0).with_request_time();
    let lines = expected.generate(g, &source, 8000);
    let chunks: Vec<&[String]> = lines.chunks(2000).collect();
    let gz = |n: u32| dir.path().join(format!("access.log.{n}.gz"));
    let day = 86_400;
    write_gz(&gz(3), chunks[0], 100, 1_000 * day);
    write_gz(&gz(2), chunks[1], 60, 1_001 * day);
    write_gz(&gz(1), chunks[2], 100, 1_002 * day);
    std::fs::write(&live, chunks[3].join("\n") + "\n").unwrap();
    let glob = vec![dir.path().join("access.log*")];
    let checkpoints = dir.path().join("checkpoints");
    let run = || {
        logpipe_testkit::produce_cmd(
            Path::new(BIN),
            &broker.bootstrap,
            &topic,
            &checkpoints,
            &glob,
            true,
        )
        .arg("--checkpoint-interval")
        .arg("100ms")
        .output()
        .unwrap()
    };
    let first = run();
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(
        !first.status.success(),
        "a damaged file stops the backfill:\n{err}"
    );
    assert!(
        err.contains("access.log.2.gz"),
        "the error names the file:\n{err}"
    );

    write_gz(&gz(2), chunks[1], 100, 1_001 * day);
    let second = run();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{err}");
    assert!(err.contains("already backfilled; skipped"), "{err}");
    let third = run();
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(third.status.success(), "{err}");
    assert!(
        err.contains("logpipe produce: 0 lines"),
        "nothing is sent twice:\n{err}"
    );

    // On the topic: one source, every line once by (file, offset), oldest first.
    let records = logpipe_testkit::read_topic(&broker.bootstrap, &topic);
    let mut seen = std::collections::HashSet::new();
    let mut firsts = vec![];
    for r in &records {
        assert_eq!(r.header("source"), Some(source.as_str()), "{r:?}");
        let key = (
            r.header("file").unwrap().to_string(),
            r.header("offset").unwrap().to_string(),
        );
        if seen.insert(key) {
            firsts.push(String::from_utf8_lossy(&r.value).into_owned());
        }
    }
    assert_eq!(firsts, lines, "every line once, in time order");

    let influx = Influx::start();
    let db = influx.create_db(&unique("backfill"));
    let log = replay(
        &broker.bootstrap,
        &topic,
        (&influx.url, &db),
        &["--from-offsets", "earliest"],
    );
    let got = Expected::from_influx(&influx, &db);
    assert!(
        got == expected.windows,
        "windows differ from the truth:\n{}\n{log}",
        diff(&expected.windows, &got)
    );
    assert!(log.contains(" 0 late"), "{log}");
}
