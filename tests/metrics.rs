//! `--metrics-addr` under a real Prometheus (Debian's `prometheus`): a
//! producer, an analyzer and an archive on Apache Kafka, scraped every
//! second; after a drained run Prometheus' query API holds what was
//! produced, exactly: lines read, acknowledged, consumed, parsed and
//! dead-lettered by kind, archived; lag 0 on every partition. `/ready`
//! follows the analyzer's sink: 503 naming the failing write while InfluxDB
//! is stopped, 200 again once it is back.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use logpipe_testkit::prometheus::Prometheus;
use logpipe_testkit::{
    append_to, free_port, produce_cmd, unique, wait_until, Analyzer, Child, Influx, Kafka,
    Membership,
};
use logpipe_traffic::Generator;

const BIN: &str = env!("CARGO_BIN_EXE_logpipe");
/// 2024-01-01T00:00:00Z.
const START_MS: i64 = 1_704_067_200_000;

/// Writes `n` lines of `g` to `path`; returns (well-formed, malformed).
fn write_log(path: &Path, g: &mut Generator, n: usize) -> (u64, u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let (mut good, mut bad) = (0, 0);
    for _ in 0..n {
        let (line, req) = g.next_line();
        if req.is_some() {
            good += 1;
        } else {
            bad += 1;
        }
        writeln!(f, "{line}").unwrap();
    }
    f.flush().unwrap();
    (good, bad)
}

fn get(url: &str) -> (u16, String) {
    match reqwest::blocking::get(url) {
        Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// One `--kafka` list for every role, as one `LOGPIPE_KAFKA` gives it:
/// producers' properties and a consumer's. zstd batches (the producer's
/// lines, the analyzer's dead letters) are read by the analyzer and the archive.
const MIXED: &str = "linger.ms=5,fetch.wait.max.ms=100,compression.type=zstd";

#[test]
fn prometheus_scrapes_every_role_and_readiness_follows_the_sink() {
    let kafka = Kafka::start();
    let topic = unique("logs");
    kafka.create_topic(&topic, 3);
    let dir = tempfile::tempdir().unwrap();
    let mut good = 0;
    let mut bad = 0;
    let paths: Vec<PathBuf> = ["shop", "api", "blog"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let p = dir.path().join(format!("{n}.log"));
            let mut g = Generator::new(70 + i as u64, START_MS, 20.0).malformed_one_in(40);
            let (g, b) = write_log(&p, &mut g, 2_000);
            good += g;
            bad += b;
            p
        })
        .collect();
    assert!(bad > 0, "the generator made malformed lines");
    let lines = good + bad;

    let mut influx = Influx::start();
    let db = influx.create_db(&unique("metrics"));
    let (pa, pp, par) = (free_port(), free_port(), free_port());
    let m = Membership::new(&kafka.bootstrap, &topic);
    let mut analyzer = Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db)
        .args(&["--metrics-addr", &format!("127.0.0.1:{pa}")])
        .args(&["--kafka", MIXED])
        .start();
    let a_url = format!("http://127.0.0.1:{pa}");
    // Alive at once; ready once it owns partitions (restore points loaded).
    wait_until(Duration::from_secs(30), || {
        (get(&format!("{a_url}/health")).0 == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("analyzer /health never answered:\n{}", analyzer.log()));
    wait_until(Duration::from_secs(60), || {
        (get(&format!("{a_url}/ready")).0 == 200).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "analyzer never ready: {:?}\n{}",
            get(&format!("{a_url}/ready")),
            analyzer.log()
        )
    });

    let plog = dir.path().join("producer.log");
    let mut producer = Child::spawn(
        "logpipe produce",
        produce_cmd(
            Path::new(BIN),
            &kafka.bootstrap,
            &topic,
            &dir.path().join("checkpoints"),
            &paths,
            false,
        )
        .args(["--metrics-addr", &format!("127.0.0.1:{pp}")])
        .args(["--kafka", MIXED])
        .stdout(Stdio::null())
        .stderr(append_to(&plog)),
    );
    let alog = dir.path().join("archive.log");
    let mut archive = Child::spawn(
        "logpipe archive",
        Command::new(BIN)
            .args(["archive", "--brokers", &kafka.bootstrap, "--topic", &topic])
            .arg("--dir")
            .arg(dir.path().join("archive"))
            .args(["--group", &unique("archive"), "--commit-interval", "200ms"])
            .args(["--metrics-addr", &format!("127.0.0.1:{par}")])
            .args(["--kafka", MIXED])
            .stdout(Stdio::null())
            .stderr(append_to(&alog)),
    );
    let targets: Vec<String> = [pa, pp, par]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let prom = Prometheus::start(&targets);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let a_log = analyzer.log.clone();
    let logs = || {
        format!(
            "analyzer:\n{}\nproducer:\n{}\narchive:\n{}",
            read(&a_log),
            read(&plog),
            read(&alog)
        )
    };

    // Drained: every role's counters, as Prometheus scraped them.
    let n = lines as f64;
    let drained = [
        ("logpipe_producer_lines_read_total", n),
        ("logpipe_producer_lines_acked_total", n),
        ("logpipe_producer_lines_in_flight", 0.0),
        ("logpipe_analyzer_lines_consumed_total", n),
        ("logpipe_analyzer_lines_parsed_total", good as f64),
        (
            "sum(logpipe_analyzer_lines_dead_lettered_total)",
            bad as f64,
        ),
        ("logpipe_analyzer_lines_counted_total", good as f64),
        ("sum(logpipe_analyzer_lag_records)", 0.0),
        ("logpipe_analyzer_partitions_owned", 3.0),
        ("logpipe_archive_lines_archived_total", n),
        ("logpipe_archive_partitions_owned", 3.0),
    ];
    let mut seen = Vec::new();
    wait_until(Duration::from_secs(90), || {
        seen = drained.iter().map(|(q, _)| prom.value(q)).collect();
        drained
            .iter()
            .zip(&seen)
            .all(|((_, want), got)| *got == Some(*want))
            .then_some(())
    })
    .unwrap_or_else(|| {
        let got: Vec<_> = drained.iter().map(|d| d.0).zip(&seen).collect();
        panic!(
            "Prometheus does not show the drained run ({lines} lines, {bad} malformed): {got:?}\ntargets: {}\n{}",
            prom.targets(),
            logs()
        )
    });
    eprintln!("drained, as Prometheus scraped it: {seen:?}");
    // Every target up, and each says which role it is.
    let up = prom.query("up");
    assert_eq!(up.len(), 3, "{up:?}");
    assert!(up.iter().all(|(_, v)| *v == 1.0), "{up:?}");
    let roles: Vec<String> = prom
        .query("logpipe_build_info")
        .iter()
        .map(|(m, _)| m["role"].as_str().unwrap_or("").to_string())
        .collect();
    let mut sorted = roles.clone();
    sorted.sort();
    assert_eq!(sorted, ["analyze", "archive", "produce"], "{roles:?}");
    // Dead letters by kind: every line is whole here, so no piece is
    // left unjoined; the generator's bad lines are of the other kinds.
    let kinds = prom.query("logpipe_analyzer_lines_dead_lettered_total");
    assert_eq!(kinds.len(), 4, "one series per kind: {kinds:?}");
    for (m, v) in &kinds {
        if m["kind"] == "unjoined" {
            assert_eq!(*v, 0.0, "{kinds:?}");
        }
    }
    // The exposition itself: types and units as Prometheus expects them.
    let (status, text) = get(&format!("http://127.0.0.1:{pp}/metrics"));
    assert_eq!(status, 200);
    assert!(
        text.contains("# TYPE logpipe_producer_read_bytes counter")
            && text.contains("# UNIT logpipe_producer_read_bytes bytes"),
        "{text}"
    );
    assert_eq!(get(&format!("http://127.0.0.1:{pp}/ready")).0, 200);
    assert_eq!(get(&format!("http://127.0.0.1:{par}/ready")).0, 200);

    // InfluxDB stops: the analyzer's next write fails and /ready says so.
    influx.stop();
    let mut answer = (0, String::new());
    wait_until(Duration::from_secs(30), || {
        answer = get(&format!("{a_url}/ready"));
        (answer.0 == 503).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "analyzer still ready with InfluxDB stopped: {answer:?}\n{}",
            logs()
        )
    });
    assert!(answer.1.contains("writes to the sink fail"), "{answer:?}");
    assert_eq!(get(&format!("{a_url}/health")).0, 200, "alive all the same");
    influx.resume();
    wait_until(Duration::from_secs(30), || {
        (get(&format!("{a_url}/ready")).0 == 200).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "analyzer not ready again: {:?}\n{}",
            get(&format!("{a_url}/ready")),
            logs()
        )
    });
    wait_until(Duration::from_secs(30), || {
        prom.value("logpipe_analyzer_write_retries_total")
            .filter(|&v| v > 0.0)
    })
    .unwrap_or_else(|| {
        panic!(
            "the failed writes are not counted in Prometheus\n{}",
            logs()
        )
    });

    for (name, c) in [
        ("producer", &mut producer),
        ("archive", &mut archive),
        ("analyzer", &mut analyzer.child),
    ] {
        assert!(
            c.terminate(Duration::from_secs(30)).success(),
            "{name} did not stop cleanly\n{}",
            logs()
        );
    }
    // Every client took only the properties of its kind: librdkafka warned
    // about none (a consumer's property given to the dead-letter producer,
    // a producer's to a consumer).
    let all = logs();
    for warning in ["CONFWARN", "will be ignored"] {
        assert!(!all.contains(warning), "{warning}:\n{all}");
    }
}
