//! Exactly-once effect, end to end: real `logpipe produce` and `logpipe
//! analyze` processes, a real InfluxDB, against Apache Kafka (both consumer
//! group protocols), the `logpipe broker` process, and (opt-in,
//! `LOGPIPE_TEST_TANSU=1`) Tansu. Log files grow while the pipeline runs; analyzers are
//! killed, restarted, added and removed, the producer is killed — and the
//! final `access_log` points must equal the independent truth (count,
//! traffic, status classes) and the uninterrupted reference in every field
//! (error rate, QPS, unique clients, latency quantiles).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use logpipe_analyzer::window::WindowSpec;
use logpipe_testkit::{
    diff, diff_points, dlq_topic, points_from_influx, produce_cmd, read_topic, reference_points,
    unique, wait_until, Analyzer, Child, Expected, GroupProtocol, Influx, Kafka, LogpipeBroker,
    Membership, Point, Tansu,
};
use logpipe_traffic::{Generator, Incident, IncidentKind};
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_logpipe");
const WINDOW_MS: i64 = 10_000;
/// 2024-01-01T00:00:00Z: a fixed past, so nothing depends on the clock.
const START_MS: i64 = 1_704_067_200_000;
const SPEC: WindowSpec = WindowSpec {
    window_ms: WINDOW_MS,
    lateness_ms: 30_000,
    error_status: 400,
    error_level: logpipe_analyzer::parse::Level::Error,
    top: logpipe_analyzer::top::TopSpec::DEFAULT,
    anomaly: Some(logpipe_analyzer::anomaly::AnomalySpec::DEFAULT),
};
/// The files grow in this many steps...
const CHUNKS: usize = 24;
/// ...this far apart.
const CHUNK_EVERY: Duration = Duration::from_millis(400);

#[derive(Clone, Copy, Debug)]
enum Broker {
    Mock,
    /// Apache Kafka, one KRaft node, analyzers on this group protocol.
    Kafka(GroupProtocol),
    /// Apache Kafka, three KRaft nodes, topics replicated 3 times with
    /// `min.insync.replicas=2`.
    KafkaCluster,
    Tansu,
}

/// A broker, a topic, an InfluxDB and three growing logs with their truth.
struct Stack {
    dir: tempfile::TempDir,
    membership: Membership,
    influx: Influx,
    db: String,
    paths: Vec<PathBuf>,
    /// Per file, the lines in CHUNKS pieces.
    chunks: Vec<Vec<Vec<String>>>,
    expected: Expected,
    reference: BTreeMap<(String, i64), Point>,
    /// Analyzers take fixed partitions (`--partitions`) instead of a group.
    fixed_partitions: bool,
    _broker: Box<dyn std::any::Any>,
}

impl Stack {
    fn new(kind: Broker) -> Option<Stack> {
        let topic = unique("logs");
        let (bootstrap, session_ms, broker): (String, u64, Box<dyn std::any::Any>) = match kind {
            Broker::Mock => {
                let b = LogpipeBroker::start(Path::new(BIN), &[&topic], 6);
                (b.bootstrap.clone(), 3_000, Box::new(b))
            }
            Broker::Kafka(_) => {
                let k = Kafka::start();
                k.create_topic(&topic, 6);
                (k.bootstrap.clone(), 6_000, Box::new(k))
            }
            Broker::KafkaCluster => {
                let k = Kafka::cluster(3, &[("min.insync.replicas", "2")]);
                k.create_topic(&topic, 6);
                (k.bootstrap.clone(), 6_000, Box::new(k))
            }
            Broker::Tansu => {
                let t = Tansu::start()?;
                t.create_topic(&topic, 6);
                (t.bootstrap.clone(), 10_000, Box::new(t))
            }
        };
        let protocol = match kind {
            Broker::Kafka(p) => p,
            Broker::KafkaCluster => GroupProtocol::Classic,
            _ => GroupProtocol::Classic,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut expected = Expected::new(WINDOW_MS);
        let mut paths = vec![];
        let mut chunks = vec![];
        let mut sources = vec![];
        for (i, name) in ["shop", "api", "blog"].iter().enumerate() {
            let p = dir.path().join(format!("{name}.log"));
            std::fs::File::create(&p).unwrap();
            let source = p.display().to_string();
            // 10 lines/s: 24 windows per source, enough history for the
            // anomaly baselines to score (and the incidents to be flagged)
            // before the end; final windows are flagged in every scenario.
            let mut g = Generator::new(200 + i as u64, START_MS, 10.0).with_request_time();
            let at = |s: i64| START_MS + s * 1000;
            let kind = match *name {
                "shop" => Some(IncidentKind::ErrorBurst {
                    path: "/api/v1/pay".into(),
                }),
                "api" => Some(IncidentKind::LatencySpike { factor: 8 }),
                _ => None,
            };
            if let Some(kind) = kind {
                g = g.with_incident(Incident {
                    from_ms: at(150),
                    to_ms: at(170),
                    share: 0.5,
                    kind,
                });
            }
            let lines = expected.generate(g, &source, 2400);
            chunks.push(
                lines
                    .chunks(lines.len() / CHUNKS)
                    .map(<[String]>::to_vec)
                    .collect(),
            );
            sources.push((source, lines));
            paths.push(p);
        }
        let reference = reference_points(SPEC, &sources);
        let flagged = reference
            .values()
            .filter(|p| !p.anomalies.is_empty())
            .count();
        assert!(
            flagged >= 4,
            "the reference flags {flagged} windows, the incidents at least 4"
        );
        let influx = Influx::start();
        let db = influx.create_db(&unique("exact"));
        Some(Stack {
            membership: Membership {
                brokers: bootstrap,
                topic,
                group: unique("group"),
                session_ms,
                protocol,
            },
            dir,
            influx,
            db,
            paths,
            chunks,
            expected,
            reference,
            fixed_partitions: false,
            _broker: broker,
        })
    }

    /// Appends the logs chunk by chunk on a thread, as a web server would.
    fn start_writing(&self) -> std::thread::JoinHandle<()> {
        let paths = self.paths.clone();
        let chunks = self.chunks.clone();
        std::thread::spawn(move || {
            for step in 0..CHUNKS {
                for (p, c) in paths.iter().zip(&chunks) {
                    let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
                    for line in &c[step] {
                        writeln!(f, "{line}").unwrap();
                    }
                }
                std::thread::sleep(CHUNK_EVERY);
            }
        })
    }

    fn producer(&self, n: usize) -> Child {
        self.producer_of("", &self.paths, &[], n)
    }

    /// A producer of `paths` with `args` (its checkpoints and log named by
    /// `name` and incarnation `n`).
    fn producer_of(&self, name: &str, paths: &[PathBuf], args: &[&str], n: usize) -> Child {
        let log =
            std::fs::File::create(self.dir.path().join(format!("producer{name}-{n}.log"))).unwrap();
        Child::spawn(
            "logpipe produce",
            produce_cmd(
                Path::new(BIN),
                &self.membership.brokers,
                &self.membership.topic,
                &self.dir.path().join(format!("checkpoints{name}")),
                paths,
                false,
            )
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(log),
        )
    }

    fn analyzer(&self, id: &str, incarnation: usize) -> Analyzer {
        // With fixed partitions, analyzer aK consumes partitions 2K and 2K+1.
        let fixed = match (self.fixed_partitions, id[1..].parse::<i32>()) {
            (true, Ok(k)) => Some(format!("{},{}", 2 * k, 2 * k + 1)),
            _ => None,
        };
        self.analyzer_on(id, incarnation, fixed.as_deref())
    }

    /// An analyzer on fixed `partitions` (`--partitions`), or in the group.
    fn analyzer_on(&self, id: &str, incarnation: usize, partitions: Option<&str>) -> Analyzer {
        let extra: Vec<String> = partitions
            .map(|p| vec!["--partitions".into(), p.into()])
            .unwrap_or_default();
        Analyzer::cmd(
            Path::new(BIN),
            self.dir.path(),
            &self.membership,
            &self.influx.url,
            &self.db,
        )
        .id(id)
        .log_name(&format!("{id}-{incarnation}"))
        .args(&extra)
        .start()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.path().extension().is_some_and(|x| x == "log")
                    && e.path()
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().contains('-'))
            })
            .collect();
        entries.sort_by_key(|e| e.path());
        if let Some(t) = self._broker.downcast_ref::<Tansu>() {
            let log = t.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            out += "--- tansu (last lines)\n";
            for l in tail.into_iter().rev() {
                out += l;
                out += "\n";
            }
        }
        if let Some(k) = self._broker.downcast_ref::<Kafka>() {
            out += &k.log();
        }
        for e in entries {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("line does not parse"))
                .rev()
                .take(25)
                .collect();
            out += &format!("--- {} (last lines)\n", e.path().display());
            for l in tail.into_iter().rev() {
                out += l;
                out += "\n";
            }
        }
        out
    }

    /// Waits until InfluxDB holds exactly the reference points, then checks
    /// the truth and the self-metrics; panics with the differences otherwise.
    fn assert_exact(&self, what: &str) {
        let mut got = BTreeMap::new();
        let ok = wait_until(Duration::from_secs(150), || {
            got = points_from_influx(&self.influx, &self.db);
            (got == self.reference).then_some(())
        });
        if ok.is_none() {
            panic!(
                "{what}: InfluxDB differs from the uninterrupted reference ({} points expected, {} found):\n{}\nself-metrics: {:?}\n{}",
                self.reference.len(),
                got.len(),
                diff_points(&self.reference, &got),
                self.influx.query(&self.db, "SELECT last(*) FROM logpipe GROUP BY analyzer"),
                self.logs()
            );
        }
        // The independent truth (computed from the generated requests).
        let counts = logpipe_testkit::Expected::from_influx(&self.influx, &self.db);
        assert!(
            counts == self.expected.windows,
            "{what}: counts differ from the truth:\n{}",
            diff(&self.expected.windows, &counts)
        );
        assert!(
            self.reference.len() >= 3 * 12,
            "the workload spans many windows"
        );
        eprintln!(
            "{what}: {} lines written ({} malformed), {} counted in {} windows equal to the truth: 0 lost, 0 counted twice",
            self.expected.lines,
            self.expected.malformed,
            counts.values().map(|w| w.count).sum::<u64>(),
            counts.len()
        );
        // Every malformed line reached the dead-letter topic: none lost;
        // copies (same file and offset) only from a crash between a dead
        // letter's acknowledgement and the next restore point.
        let records = read_topic(&self.membership.brokers, &dlq_topic(&self.membership.topic));
        let mut seen = std::collections::BTreeSet::new();
        let mut got: Vec<(String, String)> = records
            .iter()
            .filter(|r| seen.insert(r.meta().position()))
            .map(|r| r.source_and_line())
            .collect();
        got.sort();
        assert_eq!(
            got,
            self.expected.malformed_sorted(),
            "{what}: dead letters differ from the malformed lines"
        );
        eprintln!(
            "{what}: {} dead letters, {} distinct",
            records.len(),
            seen.len()
        );
        assert!(
            self.reference
                .values()
                .all(|p| p.latency.is_some() && p.unique_clients > 0),
            "every point has latency quantiles and unique clients"
        );
        // Self-metrics reconcile for every analyzer's latest report.
        for s in self.influx.query(
            &self.db,
            "SELECT last(consumed), last(parsed), last(dead_lettered), last(duplicates), last(counted), last(late), last(replayed) FROM logpipe GROUP BY analyzer",
        ) {
            let v: Vec<u64> = s["values"][0].as_array().unwrap()[1..]
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            let [consumed, parsed, dead, dups, counted, late, replayed] = v[..] else {
                panic!("{s}")
            };
            assert_eq!(consumed, parsed + dead + dups, "{what}: {s}");
            assert_eq!(parsed, counted + late + replayed, "{what}: {s}");
            assert_eq!(
                late,
                0,
                "{what}: nothing is out of order beyond --lateness: {s}\n{}",
                self.logs()
            );
        }
    }
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Stops analyzers gracefully and checks they exit 0.
fn stop_all(analyzers: &mut [Analyzer]) {
    for a in analyzers {
        let st = a.child.terminate(Duration::from_secs(30));
        assert!(st.success(), "analyzer exit {st:?}: {}", a.log());
    }
}

/// Waits until the analyzers together own all six partitions, each some.
fn settled(s: &Stack, analyzers: &[Analyzer]) {
    wait_until(Duration::from_secs(90), || {
        let owned: Vec<usize> = analyzers.iter().map(Analyzer::owned).collect();
        (owned.iter().sum::<usize>() == 6 && owned.iter().all(|&n| n > 0)).then_some(())
    })
    .unwrap_or_else(|| panic!("group did not settle:\n{}", s.logs()));
}

/// (a) One analyzer, never interrupted.
fn one_analyzer(kind: Broker) {
    let Some(s) = Stack::new(kind) else { return };
    let mut a = vec![s.analyzer("a0", 0)];
    let mut producer = s.producer(0);
    s.start_writing().join().unwrap();
    s.assert_exact("one analyzer");
    producer.terminate(Duration::from_secs(30));
    stop_all(&mut a);
}

/// (b) Three analyzers sharing the partitions.
fn three_analyzers(kind: Broker) {
    let Some(mut s) = Stack::new(kind) else {
        return;
    };
    s.fixed_partitions = matches!(kind, Broker::Tansu); // see TANSU below
    let mut a: Vec<Analyzer> = (0..3).map(|i| s.analyzer(&format!("a{i}"), 0)).collect();
    let mut producer = s.producer(0);
    s.start_writing().join().unwrap();
    s.assert_exact("three analyzers");
    producer.terminate(Duration::from_secs(30));
    stop_all(&mut a);
}

/// (c) Three analyzers; one of them `kill -9`ed and restarted at random
/// moments, five times.
fn analyzers_killed_and_restarted(kind: Broker) {
    let Some(mut s) = Stack::new(kind) else {
        return;
    };
    // See TANSU below.
    s.fixed_partitions = matches!(kind, Broker::Tansu);
    let mut a: Vec<Analyzer> = (0..3).map(|i| s.analyzer(&format!("a{i}"), 0)).collect();
    settled(&s, &a);
    let mut producer = s.producer(0);
    let writer = s.start_writing();
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id().into());
    for round in 1..=5 {
        sleep_ms(rng.random_range(300..2_500));
        let k = rng.random_range(0..3);
        a[k].child.kill();
        eprintln!("round {round}: killed a{k}");
        sleep_ms(rng.random_range(0..1_500));
        a[k] = s.analyzer(&format!("a{k}"), round);
    }
    writer.join().unwrap();
    s.assert_exact("analyzers killed and restarted");
    producer.terminate(Duration::from_secs(30));
    stop_all(&mut a);
}

// TANSU: against Tansu, scenarios with more than one analyzer use fixed partitions
// (`--partitions`): Tansu 0.6.0's group coordinator is not reliable enough
// on a loaded machine — seen: heartbeats unanswered for 10 s, members
// assigned nothing, partitions left to dead members, the group reset to
// generation 0, for minutes, with dynamic and with static membership
// (docs/design.md, "Facts about the brokers"). What these scenarios test —
// sharing, resuming exactly after `kill -9`, handing partitions from one
// analyzer to another — is the same; the mock runs them all through its
// group coordinator.

/// (d) against Tansu: partitions handed from analyzer to analyzer while lines
/// flow — graceful stops and starts on fixed partitions, the handovers a
/// rebalance makes.
fn analyzers_handed_over(s: Stack) {
    let mut a0 = s.analyzer_on("a0", 0, Some("0,1,2,3,4,5"));
    settled(&s, std::slice::from_ref(&a0));
    let mut producer = s.producer(0);
    let writer = s.start_writing();
    sleep_ms(1_500);
    assert!(
        a0.child.terminate(Duration::from_secs(30)).success(),
        "{}",
        a0.log()
    );
    let mut a = vec![
        s.analyzer_on("a1", 0, Some("0,1,2")),
        s.analyzer_on("a2", 0, Some("3,4,5")),
    ];
    sleep_ms(1_500);
    assert!(
        a[0].child.terminate(Duration::from_secs(30)).success(),
        "{}",
        a[0].log()
    );
    a[0] = s.analyzer_on("a3", 0, Some("0,1,2"));
    sleep_ms(1_500);
    assert!(
        a[1].child.terminate(Duration::from_secs(30)).success(),
        "{}",
        a[1].log()
    );
    a[1] = s.analyzer_on("a4", 0, Some("3,4,5"));
    writer.join().unwrap();
    s.assert_exact("analyzers handed over");
    producer.terminate(Duration::from_secs(30));
    stop_all(&mut a);
}

/// (d) Analyzers added and removed while lines flow (rebalances).
fn analyzers_added_and_removed(kind: Broker) {
    let Some(s) = Stack::new(kind) else { return };
    if matches!(kind, Broker::Tansu) {
        return analyzers_handed_over(s); // see TANSU above
    }
    let mut a = vec![s.analyzer("a0", 0)];
    settled(&s, &a);
    let mut producer = s.producer(0);
    let writer = s.start_writing();
    sleep_ms(1_500);
    a.push(s.analyzer("a1", 0));
    sleep_ms(1_500);
    a.push(s.analyzer("a2", 0));
    sleep_ms(1_500);
    let mut gone = a.remove(0);
    assert!(
        gone.child.terminate(Duration::from_secs(30)).success(),
        "{}",
        gone.log()
    );
    sleep_ms(1_500);
    a.push(s.analyzer("a3", 0));
    sleep_ms(1_500);
    let mut gone = a.remove(0);
    assert!(
        gone.child.terminate(Duration::from_secs(30)).success(),
        "{}",
        gone.log()
    );
    writer.join().unwrap();
    s.assert_exact("analyzers added and removed");
    producer.terminate(Duration::from_secs(30));
    stop_all(&mut a);
}

/// (e) The producer `kill -9`ed and restarted mid-stream (it re-sends what
/// its checkpoint had not recorded; the analyzers drop the duplicates).
fn producer_killed_and_restarted(kind: Broker) {
    let Some(s) = Stack::new(kind) else { return };
    let halves = ["0,1,2", "3,4,5"]; // see TANSU above
    let mut a: Vec<Analyzer> = (0..2)
        .map(|i| {
            let fixed = matches!(kind, Broker::Tansu).then_some(halves[i]);
            s.analyzer_on(&format!("a{i}"), 0, fixed)
        })
        .collect();
    settled(&s, &a);
    let mut producer = s.producer(0);
    let writer = s.start_writing();
    let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(std::process::id()) + 1);
    for round in 1..=3 {
        sleep_ms(rng.random_range(500..2_500));
        producer.kill();
        eprintln!("round {round}: killed the producer");
        producer = s.producer(round);
    }
    writer.join().unwrap();
    s.assert_exact("producer killed and restarted");
    producer.terminate(Duration::from_secs(30));
    stop_all(&mut a);
}

/// (g) Wire v1 and v2 in one topic, runs cut at restore points and kills:
/// one producer publishes `shop` one line per record (v1,
/// `--lines-per-record 1`), another `api` and `blog` in runs of at most 37
/// lines (v2, so runs end at lines no window or read boundary chooses).
/// Both producers are `kill -9`ed twice (their re-sends start inside runs
/// already stored: de-duplication is per line) and analyzers are
/// `kill -9`ed and restarted at random moments (their restore offsets
/// point into runs whose first lines are already in final windows).
fn v1_and_v2_runs_across_kills(kind: Broker) {
    let Some(s) = Stack::new(kind) else { return };
    let mut a: Vec<Analyzer> = (0..2).map(|i| s.analyzer(&format!("a{i}"), 0)).collect();
    settled(&s, &a);
    let v1 = ["--lines-per-record", "1"];
    let v2 = ["--lines-per-record", "37"];
    let mut p1 = s.producer_of("-v1", &s.paths[..1], &v1, 0);
    let mut p2 = s.producer_of("-v2", &s.paths[1..], &v2, 0);
    let writer = s.start_writing();
    let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(std::process::id()) + 7);
    for round in 1..=6 {
        sleep_ms(rng.random_range(300..1_500));
        match round {
            2 | 5 => {
                p2.kill();
                p2 = s.producer_of("-v2", &s.paths[1..], &v2, round);
                eprintln!("round {round}: killed the v2 producer");
            }
            3 | 6 => {
                p1.kill();
                p1 = s.producer_of("-v1", &s.paths[..1], &v1, round);
                eprintln!("round {round}: killed the v1 producer");
            }
            _ => {}
        }
        let k = rng.random_range(0..2);
        a[k].child.kill();
        eprintln!("round {round}: killed a{k}");
        sleep_ms(rng.random_range(0..1_000));
        a[k] = s.analyzer(&format!("a{k}"), round);
    }
    writer.join().unwrap();
    s.assert_exact("v1 and v2 runs across kills");
    // The topic holds both versions.
    let records = logpipe_testkit::read_records(&s.membership.brokers, &s.membership.topic);
    let runs = records.iter().filter(|r| r.meta().lines.is_some()).count();
    assert!(
        runs > 0 && runs < records.len(),
        "{runs} v2 records of {}",
        records.len()
    );
    p1.terminate(Duration::from_secs(30));
    p2.terminate(Duration::from_secs(30));
    stop_all(&mut a);
}

/// The partition with the most records and its leader's node id.
fn busiest_partition(bootstrap: &str, topic: &str) -> (i32, i32) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (_, hi) = c
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .unwrap_or((0, 0));
            (hi, p.id(), p.leader())
        })
        .max()
        .map(|(_, p, leader)| (p, leader))
        .expect("partitions")
}

/// Two analyzers settled in the group, the producer, and the logs growing
/// for 2 s: where the fault scenarios strike.
fn two_analyzers_under_way(s: &Stack) -> (Vec<Analyzer>, Child, std::thread::JoinHandle<()>) {
    let a: Vec<Analyzer> = (0..2).map(|i| s.analyzer(&format!("a{i}"), 0)).collect();
    settled(s, &a);
    let producer = s.producer(0);
    let writer = s.start_writing();
    sleep_ms(2_000);
    (a, producer, writer)
}

/// (f) Broker faults on a three-node cluster while lines flow: `kill -9` of
/// the broker leading the busiest partition, started again 4 s later; then
/// another broker frozen (SIGSTOP) past its 9 s broker session and thawed.
fn broker_faults(kind: Broker) {
    let Some(mut s) = Stack::new(kind) else {
        return;
    };
    let (mut a, mut producer, writer) = two_analyzers_under_way(&s);
    let (partition, leader) = busiest_partition(&s.membership.brokers, &s.membership.topic);
    let k = s._broker.downcast_mut::<Kafka>().expect("a Kafka cluster");
    let killed = (0..3)
        .find(|&i| k.node_id(i) as i32 == leader)
        .expect("leader");
    let addr = k.node_addr(killed);
    k.kill_node(killed);
    eprintln!("killed node {leader}, leader of partition {partition}");
    sleep_ms(4_000);
    k.start_node(killed);
    eprintln!("node {leader} started again");
    sleep_ms(2_000);
    let frozen = (killed + 1) % 3;
    let pid = k.pid(frozen).expect("running") as i32;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    eprintln!("node {} frozen", k.node_id(frozen));
    sleep_ms(12_000);
    unsafe { libc::kill(pid, libc::SIGCONT) };
    eprintln!("node {} thawed", k.node_id(frozen));
    writer.join().unwrap();
    s.assert_exact("broker faults");
    producer.terminate(Duration::from_secs(30));
    stop_all(&mut a);
    // What the producer and the analyzers said about it: the killed broker's
    // outage once and its return once per process that noticed it (a
    // process holding no connection to it notices neither); the producer,
    // which wrote to its partitions, always does.
    let down = format!("Kafka unreachable: broker {addr}:");
    let back = format!("Kafka reachable again: broker {addr} ");
    for name in ["producer-0", "a0-0", "a1-0"] {
        let text = std::fs::read_to_string(s.dir.path().join(format!("{name}.log"))).unwrap();
        let said: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("Kafka unreachable") || l.contains("Kafka reachable again"))
            .collect();
        eprintln!("{name}: {said:#?}");
        let (d, b) = (text.matches(&down).count(), text.matches(&back).count());
        assert!(
            d <= 1 && b == d,
            "{name}: outage {d}×, return {b}×: {said:#?}"
        );
        if name == "producer-0" {
            assert_eq!(d, 1, "the producer saw the outage: {said:#?}");
        }
    }
}

/// Scenario (f) on a three-node Apache Kafka cluster.
#[test]
fn kafka_f_broker_killed_and_frozen_on_three_nodes() {
    broker_faults(Broker::KafkaCluster);
}

/// Scenario (a) on librdkafka's mock cluster.
#[test]
fn mock_a_one_analyzer() {
    one_analyzer(Broker::Mock);
}
/// Scenario (b) on librdkafka's mock cluster.
#[test]
fn mock_b_three_analyzers() {
    three_analyzers(Broker::Mock);
}
/// Scenario (c) on librdkafka's mock cluster.
#[test]
fn mock_c_analyzers_killed_and_restarted() {
    analyzers_killed_and_restarted(Broker::Mock);
}
/// Scenario (d) on librdkafka's mock cluster.
#[test]
fn mock_d_analyzers_added_and_removed() {
    analyzers_added_and_removed(Broker::Mock);
}
/// Scenario (e) on librdkafka's mock cluster.
#[test]
fn mock_e_producer_killed_and_restarted() {
    producer_killed_and_restarted(Broker::Mock);
}
/// Scenario (g) on librdkafka's mock cluster.
#[test]
fn mock_g_v1_and_v2_runs_across_kills() {
    v1_and_v2_runs_across_kills(Broker::Mock);
}
const CLASSIC: Broker = Broker::Kafka(GroupProtocol::Classic);
const KIP848: Broker = Broker::Kafka(GroupProtocol::Consumer);

/// Scenario (a) on Apache Kafka, classic group protocol.
#[test]
fn kafka_a_one_analyzer() {
    one_analyzer(CLASSIC);
}
/// Scenario (b) on Apache Kafka, classic group protocol.
#[test]
fn kafka_b_three_analyzers() {
    three_analyzers(CLASSIC);
}
/// Scenario (c) on Apache Kafka, classic group protocol.
#[test]
fn kafka_c_analyzers_killed_and_restarted() {
    analyzers_killed_and_restarted(CLASSIC);
}
/// Scenario (d) on Apache Kafka, classic group protocol.
#[test]
fn kafka_d_analyzers_added_and_removed() {
    analyzers_added_and_removed(CLASSIC);
}
/// Scenario (e) on Apache Kafka, classic group protocol.
#[test]
fn kafka_e_producer_killed_and_restarted() {
    producer_killed_and_restarted(CLASSIC);
}
/// Scenario (g) on Apache Kafka, classic group protocol.
#[test]
fn kafka_g_v1_and_v2_runs_across_kills() {
    v1_and_v2_runs_across_kills(CLASSIC);
}
/// Scenario (b) on Apache Kafka, the KIP-848 consumer group protocol.
#[test]
fn kafka_kip848_b_three_analyzers() {
    three_analyzers(KIP848);
}
/// Scenario (c) on Apache Kafka, the KIP-848 consumer group protocol.
#[test]
fn kafka_kip848_c_analyzers_killed_and_restarted() {
    analyzers_killed_and_restarted(KIP848);
}
/// Scenario (d) on Apache Kafka, the KIP-848 consumer group protocol.
#[test]
fn kafka_kip848_d_analyzers_added_and_removed() {
    analyzers_added_and_removed(KIP848);
}
/// Scenario (a) on Tansu (only with `LOGPIPE_TEST_TANSU=1`).
#[test]
fn tansu_a_one_analyzer() {
    one_analyzer(Broker::Tansu);
}
/// Scenario (b) on Tansu (only with `LOGPIPE_TEST_TANSU=1`).
#[test]
fn tansu_b_three_analyzers() {
    three_analyzers(Broker::Tansu);
}
/// Scenario (c) on Tansu (only with `LOGPIPE_TEST_TANSU=1`).
#[test]
fn tansu_c_analyzers_killed_and_restarted() {
    analyzers_killed_and_restarted(Broker::Tansu);
}
/// Scenario (d) on Tansu (only with `LOGPIPE_TEST_TANSU=1`).
#[test]
fn tansu_d_analyzers_added_and_removed() {
    analyzers_added_and_removed(Broker::Tansu);
}
/// Scenario (e) on Tansu (only with `LOGPIPE_TEST_TANSU=1`).
#[test]
fn tansu_e_producer_killed_and_restarted() {
    producer_killed_and_restarted(Broker::Tansu);
}

/// InfluxDB stopped for 30 s mid-stream: the analyzers pause and retry; no
/// window is missing or wrong afterwards.
#[test]
fn influx_outage_of_30_seconds_loses_nothing() {
    let Some(mut s) = Stack::new(CLASSIC) else {
        return;
    };
    let (mut a, mut producer, writer) = two_analyzers_under_way(&s);
    s.influx.stop();
    let stopped = Instant::now();
    sleep_ms(30_000);
    s.influx.resume();
    eprintln!("InfluxDB was down for {:?}", stopped.elapsed());
    writer.join().unwrap();
    s.assert_exact("InfluxDB outage");
    let retries: u64 = s
        .influx
        .query(
            &s.db,
            "SELECT last(write_retries) FROM logpipe GROUP BY analyzer",
        )
        .iter()
        .map(|x| x["values"][0][1].as_u64().unwrap())
        .sum();
    assert!(retries > 0, "the analyzers saw the outage");
    producer.terminate(Duration::from_secs(30));
    stop_all(&mut a);
}

/// Runs `logpipe analyze` expected to fail at start-up; returns its stderr.
fn analyze_fails(influx: &Influx, brokers: &str, extra: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .args(["analyze", "--brokers", brokers, "--topic", "logs"])
        .args(["--influx-url", &influx.url])
        .args(extra)
        .output()
        .expect("run logpipe analyze");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "analyze should fail: {stderr}");
    assert!(
        !stderr.contains("partitions assigned"),
        "it must not join the group: {stderr}"
    );
    stderr
}

/// A wrong InfluxDB password and an unknown database stop the analyzer
/// before it joins the group, with an error that names the cause.
#[test]
fn bad_credentials_and_unknown_database_are_named() {
    let broker = LogpipeBroker::start(Path::new(BIN), &["logs"], 2);
    let influx = Influx::start_with_auth();
    let db = influx.create_db("metrics");
    let e = analyze_fails(
        &influx,
        &broker.bootstrap,
        &[
            "--influx-db",
            &db,
            "--influx-user",
            "admin",
            "--influx-password",
            "wrong",
        ],
    );
    assert!(
        e.contains("401") && e.contains("credentials were refused"),
        "names the cause: {e}"
    );
    let e = analyze_fails(
        &influx,
        &broker.bootstrap,
        &[
            "--influx-db",
            "nosuchdb",
            "--influx-user",
            "admin",
            "--influx-password",
            "secret",
        ],
    );
    assert!(
        e.contains("\"nosuchdb\" does not exist") && e.contains("--influx-create-db"),
        "names the database and the fix: {e}"
    );
    assert_eq!(
        e.lines().filter(|l| l.contains("error")).count(),
        1,
        "one error line: {e}"
    );
}
