//! `logpipe status` against a running pipeline on Apache Kafka: two
//! analyzers drained (each partition owned, lag 0, restore points and
//! sources from InfluxDB, the dead letters of the last hour counted, no
//! warning); one analyzer `kill -9`ed (the other owns every partition once
//! the group notices); both killed while lines keep coming (no member, the
//! lag of every new line, warnings that say so).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use logpipe_testkit::{
    produce_all, unique, wait_for_group, wait_until, Analyzer, Influx, Kafka, Membership,
};
use logpipe_traffic::Generator;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_logpipe");
/// 2024-01-01T00:00:00Z.
const START_MS: i64 = 1_704_067_200_000;

/// Appends `n` lines of `g` to `path`; returns how many were malformed.
fn append(path: &Path, g: &mut Generator, n: usize) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut bad = 0;
    for _ in 0..n {
        let (line, req) = g.next_line();
        bad += u64::from(req.is_none());
        writeln!(f, "{line}").unwrap();
    }
    bad
}

fn status(kafka: &Kafka, m: &Membership, influx: &Influx, db: &str, json: bool) -> String {
    let mut c = Command::new(BIN);
    c.args(["status", "--brokers", &kafka.bootstrap, "--topic", &m.topic])
        .args([
            "--group",
            &m.group,
            "--dlq-topic",
            &format!("{}.dlq", m.topic),
        ])
        .args(["--influx-url", &influx.url, "--influx-db", db])
        .args(["--sample", "1s"])
        // One list for every role (a producer's property and a consumer's):
        // its clients take their own kind's and librdkafka warns of none.
        .args(["--kafka", "linger.ms=5,fetch.wait.max.ms=100"]);
    if json {
        c.arg("--json");
    }
    let out = c.output().expect("run logpipe status");
    assert!(
        out.status.success(),
        "logpipe status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("will be ignored"), "{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn report(kafka: &Kafka, m: &Membership, influx: &Influx, db: &str) -> Value {
    serde_json::from_str(&status(kafka, m, influx, db, true)).unwrap()
}

fn total_lag(r: &Value) -> i64 {
    r["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["lag"].as_i64().unwrap_or(-1_000_000))
        .sum()
}

#[test]
fn status_shows_owners_lag_restore_points_and_what_is_wrong() {
    let kafka = Kafka::start();
    let topic = unique("logs");
    kafka.create_topic(&topic, 3);
    let dir = tempfile::tempdir().unwrap();
    let influx = Influx::start();
    let db = influx.create_db(&unique("status"));
    let paths: Vec<PathBuf> = ["shop", "api", "blog"]
        .iter()
        .map(|n| dir.path().join(format!("{n}.log")))
        .collect();
    let mut gens: Vec<Generator> = (0..3)
        .map(|i| Generator::new(90 + i, START_MS, 20.0).malformed_one_in(50))
        .collect();
    let mut bad = 0;
    for (p, g) in paths.iter().zip(&mut gens) {
        bad += append(p, g, 2_000);
    }
    let mut m = Membership::new(&kafka.bootstrap, &topic);
    m.session_ms = 6_000;
    let commit = ["--commit-interval", "200ms"];
    let mut analyzers = vec![
        Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db)
            .id("a0")
            .args(&commit)
            .start(),
        Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db)
            .id("a1")
            .args(&commit)
            .start(),
    ];
    wait_for_group(&analyzers, 3);
    let checkpoints = dir.path().join("checkpoints");
    produce_all(
        Path::new(BIN),
        &kafka.bootstrap,
        &topic,
        &checkpoints,
        &paths,
    );
    let logs = |a: &[Analyzer]| a.iter().map(Analyzer::log).collect::<Vec<_>>().join("\n");

    // Drained: every partition owned by a0 or a1, lag 0, restore points.
    let mut r = Value::Null;
    wait_until(Duration::from_secs(60), || {
        r = report(&kafka, &m, &influx, &db);
        let ps = r["partitions"].as_array().unwrap();
        (total_lag(&r) == 0
            && ps.iter().all(|p| {
                p["end"] == 0 || (p["restore_offset"].is_i64() && p["committed"] == p["end"])
            })
            && r["sources"].as_array().unwrap().len() == 3)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "status never showed the drained group: {r:#}\n{}",
            logs(&analyzers)
        )
    });
    assert_eq!(r["members"].as_array().unwrap().len(), 2, "{r:#}");
    let mut clients: Vec<&str> = r["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["client_id"].as_str().unwrap())
        .collect();
    clients.sort();
    assert_eq!(
        clients,
        ["a0", "a1"],
        "members named by their analyzer ids: {r:#}"
    );
    for p in r["partitions"].as_array().unwrap() {
        let owner = p["owner"].as_str().unwrap_or("");
        assert!(owner.starts_with("a0") || owner.starts_with("a1"), "{p}");
        if p["end"] != 0 {
            assert!(p["newest_window_ms"].as_i64().unwrap() >= START_MS, "{p}");
        }
    }
    for s in r["sources"].as_array().unwrap() {
        assert_eq!(s["host"], "testhost", "{s}");
        assert!(s["newest_event_ms"].as_i64().unwrap() > START_MS, "{s}");
    }
    assert_eq!(r["dead_letters_last_hour"].as_u64(), Some(bad), "{r:#}");
    assert_eq!(r["warnings"], serde_json::json!([]), "{r:#}");
    let screen = status(&kafka, &m, &influx, &db, false);
    println!("{screen}");
    assert!(
        screen.contains("2 members") && screen.contains("no warnings"),
        "{screen}"
    );

    // kill -9 a1: once the group notices, a0 owns every partition.
    analyzers[1].child.kill();
    wait_until(Duration::from_secs(60), || {
        r = report(&kafka, &m, &influx, &db);
        let ps = r["partitions"].as_array().unwrap();
        (r["members"].as_array().unwrap().len() == 1
            && ps
                .iter()
                .all(|p| p["owner"].as_str().is_some_and(|o| o.starts_with("a0"))))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("a0 never took over: {r:#}\n{}", logs(&analyzers)));

    // kill -9 a0 too, and lines keep coming: nobody consumes them.
    analyzers[0].child.kill();
    for (p, g) in paths.iter().zip(&mut gens) {
        append(p, g, 500);
    }
    produce_all(
        Path::new(BIN),
        &kafka.bootstrap,
        &topic,
        &checkpoints,
        &paths,
    );
    wait_until(Duration::from_secs(60), || {
        r = report(&kafka, &m, &influx, &db);
        (r["members"].as_array().unwrap().is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("the killed members never left: {r:#}"));
    let screen = status(&kafka, &m, &influx, &db, false);
    println!("{screen}");
    let warnings = r["warnings"].to_string();
    assert!(warnings.contains("has no members"), "{r:#}");
    // Every record of the new lines is lag (records, not lines: wire v2
    // packs a run of lines per record).
    let ends: i64 = r["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["end"].as_i64().unwrap() - p["committed"].as_i64().unwrap_or(0))
        .sum();
    assert!(ends > 0 && total_lag(&r) == ends, "{r:#}");
    assert!(
        screen.contains("warnings:") && screen.contains("(none)"),
        "{screen}"
    );
}
