//! The stall a joining analyzer causes: one analyzer consumes a topic of 6
//! partitions while a producer follows a log written at ~2 000 lines/s; a
//! second analyzer of the same group starts. Measured from the analyzers'
//! own log lines (`partitions revoked` / `partitions assigned`), medians of
//! `LOGPIPE_BENCH_RUNS` (default 3) runs per row:
//!
//! - *join*: from the second analyzer's start to its first assignment (its
//!   partitions consume again);
//! - *paused*: how long the first analyzer consumed nothing after its
//!   revoke (→ its next assignment; eager protocols revoke all; 0 when it
//!   was never revoked);
//! - *moved idle*: how long the partitions that moved were read by nobody
//!   (the first analyzer's revoke → the second's assignment).
//!
//! Rows: `logpipe broker` (librdkafka's mock cluster) with the README's 6 s
//! session and with librdkafka's default 45 s; Apache Kafka 4.4 with the
//! classic protocol (librdkafka's default eager `range,roundrobin`; 6 s and
//! 45 s sessions; the broker's
//! `group.initial.rebalance.delay.ms=0` as in the tests) and with KIP-848's
//! `consumer` protocol (the broker's 6 s session, 1 s heartbeat).
//!
//! `cargo bench --bench join`

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use logpipe_testkit::{
    produce_cmd, unique, wait_until, Analyzer, Child, GroupProtocol, Influx, Kafka, Membership,
};
use logpipe_traffic::Generator;

mod common;
use common::{bin, median, runs, Broker};

/// Times of the log lines of `log` containing `what`, at or after `after`.
fn times(log: &str, what: &str, after: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|t| t.parse::<DateTime<Utc>>().ok())
        .filter(|t| *t >= after)
        .collect()
}

fn secs(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}

/// One run: (join s, paused s, moved idle s).
fn once(bootstrap: &str, m: &Membership, influx: &Influx, dir: &Path) -> (f64, f64, f64) {
    let db = influx.create_db(&unique("join"));
    let log = dir.join(format!("{}.log", m.group));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut g = Generator::new(3, 1_704_067_200_000, 2_000.0).malformed_one_in(0);
            let mut f = std::fs::File::create(&log).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let chunk: String = (0..200).map(|_| g.next_line().0 + "\n").collect();
                f.write_all(chunk.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let cps = dir.join(format!("cp-{}", m.group));
    let mut producer = Child::spawn(
        "produce",
        produce_cmd(&bin(), bootstrap, &m.topic, &cps, &[log], false)
            .stderr(std::process::Stdio::null()),
    );
    // librdkafka's own heartbeat (3 s) with its default 45 s session, else a
    // sixth of the session.
    let extra: Vec<String> = if m.session_ms == 45_000 {
        vec!["--kafka".into(), "heartbeat.interval.ms=3000".into()]
    } else {
        vec![]
    };
    let start = |id: &str| {
        let log = format!("{}-{id}", m.group);
        Analyzer::cmd(&bin(), dir, m, &influx.url, &db)
            .id(id)
            .log_name(&log)
            .args(&extra)
            .start()
    };
    let mut a = start("a0");
    wait_until(Duration::from_secs(120), || (a.owned() == 6).then_some(()))
        .unwrap_or_else(|| panic!("the first analyzer got no partitions:\n{}", a.log()));
    std::thread::sleep(Duration::from_secs(3));
    let started: DateTime<Utc> = SystemTime::now().into();
    let mut b = start("a1");
    wait_until(Duration::from_secs(180), || {
        (b.owned() > 0 && a.owned() + b.owned() == 6).then_some(())
    })
    .unwrap_or_else(|| panic!("no balanced group:\n{}\n{}", a.log(), b.log()));
    let (alog, blog) = (a.log(), b.log());
    let b_assigned = times(&blog, "partitions assigned", started)[0];
    let join = secs(started, b_assigned);
    let revoked = times(&alog, "partitions revoked", started).first().copied();
    let paused = match revoked {
        Some(r) => {
            let back = times(&alog, "partitions assigned", r);
            back.first().map_or(f64::NAN, |&t| secs(r, t))
        }
        None => 0.0,
    };
    let idle = revoked.map_or(f64::NAN, |r| secs(r, b_assigned));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    a.child.terminate(Duration::from_secs(30));
    b.child.terminate(Duration::from_secs(30));
    producer.terminate(Duration::from_secs(30));
    (join, paused, idle)
}

fn row(name: &str, bootstrap: &str, topic: &str, protocol: GroupProtocol, session_ms: u64) {
    let influx = Influx::start();
    let dir = tempfile::tempdir().unwrap();
    let (mut joins, mut pauses, mut idles) = (vec![], vec![], vec![]);
    for i in 0..runs(3) {
        let m = Membership {
            brokers: bootstrap.into(),
            topic: topic.into(),
            group: unique("join"),
            session_ms,
            protocol,
        };
        let (j, p, d) = once(bootstrap, &m, &influx, dir.path());
        println!(
            "  {name}, run {}: join {j:.1} s, first analyzer paused {p:.1} s, moved partitions idle {d:.1} s",
            i + 1
        );
        joins.push(j);
        pauses.push(p);
        idles.push(d);
    }
    println!(
        "join stall, {name}: median join {:.1} s, first analyzer paused {:.1} s, moved partitions idle {:.1} s",
        median(joins),
        median(pauses),
        median(idles)
    );
}

fn main() {
    {
        let broker = Broker::start("logs", 6);
        row(
            "logpipe broker, 6 s session",
            &broker.bootstrap,
            "logs",
            GroupProtocol::Classic,
            6_000,
        );
        row(
            "logpipe broker, default 45 s session",
            &broker.bootstrap,
            "logs",
            GroupProtocol::Classic,
            45_000,
        );
    }
    let kafka = Kafka::start();
    kafka.create_topic("logs", 6);
    row(
        "Apache Kafka 4.4 classic, 6 s session",
        &kafka.bootstrap,
        "logs",
        GroupProtocol::Classic,
        6_000,
    );
    row(
        "Apache Kafka 4.4 classic, default 45 s session",
        &kafka.bootstrap,
        "logs",
        GroupProtocol::Classic,
        45_000,
    );
    row(
        "Apache Kafka 4.4 KIP-848 consumer",
        &kafka.bootstrap,
        "logs",
        GroupProtocol::Consumer,
        6_000,
    );
}
