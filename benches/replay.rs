//! `logpipe replay` as operators run it: its own process, reading a topic of
//! 1 M lines and writing the windows to a real InfluxDB (`influxd` as a child
//! process, a fresh database per run). Two rows, side by side in one run: the
//! topic on a `logpipe broker` process (librdkafka's mock cluster) and on an
//! Apache Kafka 4.4 node (KRaft, the tests' settings); the replay's own
//! settings are its defaults on both (no `--kafka`).
//!
//! `cargo bench --bench replay` prints, as medians of `LOGPIPE_BENCH_RUNS`
//! (default 5) runs: records/s over the whole process (start-up, planning,
//! reading, writing every window, exit), records/s of the read-and-aggregate
//! phase as replay reports it, CPU seconds and peak RSS.
//!
//! The topic: 64 sources × 15 625 lines (the generator's nginx `combined`
//! with `$request_time`, 500 s of event time each) over 32 partitions — the mock
//! broker keeps at most 5 MiB of batches per partition, so 1 M lines need
//! that many partitions to stay whole (checked: the replay must read every line).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use logpipe_testkit::{unique, Influx, Kafka};
use logpipe_traffic::Generator;

mod common;
use common::{bin, median, runs, wait_measured, Broker};

const SOURCES: usize = 64;
const PER_SOURCE: usize = 15_625;
const LINES: u64 = (SOURCES * PER_SOURCE) as u64;

fn fill_topic(bootstrap: &str, dir: &Path) {
    let mut paths = vec![];
    for i in 0..SOURCES {
        let p = dir.join(format!("site{i:02}.log"));
        let mut g = Generator::new(1000 + i as u64, 1_704_067_200_000, 31.25)
            .with_request_time()
            .malformed_one_in(0);
        let text: String = (0..PER_SOURCE).map(|_| g.next_line().0 + "\n").collect();
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let out = Command::new(bin())
        .args(["produce", "--brokers", bootstrap, "--host", "bench"])
        .args(["--from-beginning", "--exit-on-eof"])
        .args(&paths)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One replay into a fresh database: (wall s, CPU s, peak RSS MiB, replay's
/// own records/s of its reading phase).
fn replay_once(bootstrap: &str, influx: &Influx, log: &Path) -> (f64, f64, f64, f64) {
    let db = influx.create_db(&unique("bench"));
    let started = Instant::now();
    let mut child = Command::new(bin())
        .args(["replay", "--brokers", bootstrap, "--topic", "logs"])
        .args(["--from-offsets", "earliest", "--influx-url", &influx.url])
        .args(["--influx-db", &db])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let (wall, cpu, rss) = wait_measured(&mut child, started);
    let text = std::fs::read_to_string(log).unwrap();
    let summary = text
        .split("logpipe replay: read ")
        .nth(1)
        .expect("replay summary");
    let read: u64 = summary.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(
        read, LINES,
        "every line read (none trimmed by the broker):\n{text}"
    );
    let rate: f64 = summary
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    let windows = influx.query(&db, "SELECT count(count) FROM access_log");
    let n = windows[0]["values"][0][1].as_u64().unwrap();
    // 500 s of event time per source, plus a window at either end for the
    // generator's jitter.
    assert!(n >= SOURCES as u64 * 50, "every window written: {n}");
    (wall, cpu, rss, rate)
}

fn row(name: &str, bootstrap: &str, influx: &Influx, runs: usize) {
    let dir = tempfile::tempdir().unwrap();
    fill_topic(bootstrap, dir.path());
    println!("replay on {name}: {LINES} lines ({SOURCES} sources, 32 partitions) into influxd ({runs} runs)");
    let (mut walls, mut cpus, mut rss, mut inner) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        let (wall, cpu, peak, rate) =
            replay_once(bootstrap, influx, &dir.path().join("replay.log"));
        println!(
            "  run {}: {wall:.2} s, {:.0} lines/s whole process ({rate:.0} lines/s reading), CPU {cpu:.2} s, peak RSS {peak:.1} MiB",
            i + 1,
            LINES as f64 / wall
        );
        walls.push(LINES as f64 / wall);
        cpus.push(cpu);
        rss.push(peak);
        inner.push(rate);
    }
    println!(
        "replay 1M lines, {name}: median {:.0} lines/s whole process, {:.0} lines/s reading, CPU {:.2} s, peak RSS {:.1} MiB",
        median(walls),
        median(inner),
        median(cpus),
        median(rss)
    );
}

fn main() {
    let runs = runs(5);
    let influx = Influx::start();
    {
        let broker = Broker::start("logs", 32);
        row("logpipe broker (mock)", &broker.bootstrap, &influx, runs);
    }
    let kafka = Kafka::start();
    kafka.create_topic("logs", 32);
    row("Apache Kafka 4.4", &kafka.bootstrap, &influx, runs);
}
