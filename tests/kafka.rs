//! What only Apache Kafka itself can show: retention deleting records an
//! analyzer had not read (the loss is named and counted exactly), and Kafka's
//! own tools (consumer groups, console consumer, from the same jars as the
//! broker) agreeing with what logpipe claims.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use logpipe_traffic::Generator;
use std::process::{Command, Stdio};

use logpipe_testkit::{
    produce_all, unique, wait_until, Analyzer, Child, Influx, Kafka, Membership,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

const BIN: &str = env!("CARGO_BIN_EXE_logpipe");
/// 2024-01-01T00:00:00Z.
const START_MS: i64 = 1_704_067_200_000;

/// Appends `n` well-formed lines from `g` to `path`.
fn append(path: &Path, g: &mut Generator, n: usize) {
    let mut f = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap(),
    );
    for _ in 0..n {
        let (line, req) = g.next_line();
        assert!(req.is_some(), "the generator makes no malformed lines here");
        writeln!(f, "{line}").unwrap();
    }
    f.flush().unwrap();
}

/// Sum of `count` over every `access_log` point.
fn counted(influx: &Influx, db: &str) -> u64 {
    influx
        .query(db, "SELECT sum(count) FROM access_log")
        .first()
        .and_then(|s| s["values"][0][1].as_u64())
        .unwrap_or(0)
}

fn last_metric(influx: &Influx, db: &str, field: &str) -> u64 {
    influx
        .query(
            db,
            &format!(
                "SELECT sum(v) FROM (SELECT last({field}) AS v FROM logpipe GROUP BY analyzer)"
            ),
        )
        .first()
        .and_then(|s| s["values"][0][1].as_u64())
        .unwrap_or(0)
}

fn low_watermark(bootstrap: &str, topic: &str, partition: i32) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    c.fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks")
        .0
}

/// `logpipe archive` of `topic` into `out` as group `group`, its log to `log`.
fn archive(kafka: &Kafka, topic: &str, group: &str, out: &Path, log: &Path) -> Child {
    let mut c = Command::new(BIN);
    c.args(["archive", "--brokers", &kafka.bootstrap, "--topic", topic])
        .arg("--dir")
        .arg(out)
        .args(["--group", group, "--commit-interval", "200ms"])
        .args([
            "--kafka",
            "session.timeout.ms=6000,heartbeat.interval.ms=1000",
        ])
        .stdout(Stdio::null())
        .stderr(logpipe_testkit::append_to(log));
    Child::spawn("archive", &mut c)
}

/// Lines in the archive's `.log` files under `dir`.
fn archived_lines(dir: &Path) -> usize {
    walk(dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .count()
        })
        .sum()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

fn membership(kafka: &Kafka, topic: &str) -> Membership {
    Membership::new(&kafka.bootstrap, topic)
}

/// `logpipe produce --exit-on-eof` publishing wire v1, a record per line
/// (`--lines-per-record 1`), so the retention test's offsets count lines.
fn produce_v1(brokers: &str, topic: &str, checkpoints: &Path, paths: &[PathBuf]) {
    let v1 = ["--lines-per-record", "1"];
    logpipe_testkit::produce_all_with(Path::new(BIN), brokers, topic, checkpoints, paths, &v1);
}

/// The analyzers are stopped while the topic grows past its retention, so
/// the broker deletes records they never read, the restore point's offset
/// among them. Started again, the analyzer names the partition, the range and
/// the number lost, adds exactly that many to `offsets_skipped`, and counts
/// every line still on the topic. Lines the first run had read past the
/// restore point stay in the open windows it wrote (their records are among
/// the lost), so counted + skipped = written + those lines. The archive
/// (stopped after its first 2 000 lines) and a replay from offset 0 name and
/// count their losses the same way. The topic is wire v1, so records are
/// lines (with v2 runs the same is named and counted in records).
#[test]
fn records_deleted_by_retention_before_they_were_read_are_named_and_counted() {
    let kafka = Kafka::start();
    let topic = unique("retained");
    // 1 MiB segments, at most about 1 MiB kept (Kafka's smallest segment).
    kafka.create_topic_with(
        &topic,
        1,
        &[("segment.bytes", "1048576"), ("retention.bytes", "1048576")],
    );
    kafka.create_topic_with(&logpipe_testkit::dlq_topic(&topic), 1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let paths: Vec<PathBuf> = vec![log.clone()];
    let cps = dir.path().join("checkpoints");
    let mut g = Generator::new(7, START_MS, 20.0).malformed_one_in(0);
    let influx = Influx::start();
    let db = influx.create_db(&unique("loss"));
    let m = membership(&kafka, &topic);

    // 1. Read 2 000 lines, then stop.
    append(&log, &mut g, 2_000);
    let mut a = Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db)
        .log_name("a0-1")
        .start();
    produce_v1(&kafka.bootstrap, &topic, &cps, &paths);
    wait_until(Duration::from_secs(60), || {
        (counted(&influx, &db) == 2_000).then_some(())
    })
    .unwrap_or_else(|| panic!("first 2 000 lines not counted:\n{}", a.log()));
    assert!(
        a.child.terminate(Duration::from_secs(30)).success(),
        "{}",
        a.log()
    );
    let (out, alog) = (dir.path().join("archive"), dir.path().join("archive.log"));
    let agroup = unique("archive");
    let mut ar = archive(&kafka, &topic, &agroup, &out, &alog);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    wait_until(Duration::from_secs(60), || {
        (archived_lines(&out) == 2_000).then_some(())
    })
    .unwrap_or_else(|| panic!("first 2 000 lines not archived:\n{}", read(&alog)));
    assert!(
        ar.terminate(Duration::from_secs(30)).success(),
        "{}",
        read(&alog)
    );
    let restore: i64 = influx
        .query(&db, "SELECT last(restore_offset) FROM logpipe_state")
        .first()
        .and_then(|s| s["values"][0][1].as_i64())
        .expect("a restore point");

    // 2. 40 000 more lines while no analyzer runs: retention deletes the
    // oldest segments, the restore point's offset among them.
    append(&log, &mut g, 40_000);
    produce_v1(&kafka.bootstrap, &topic, &cps, &paths);
    let mut lo = 0;
    wait_until(Duration::from_secs(60), || {
        let now = low_watermark(&kafka.bootstrap, &topic, 0);
        let settled = now > restore && now == lo;
        lo = now;
        std::thread::sleep(Duration::from_secs(2));
        settled.then_some(())
    })
    .unwrap_or_else(|| panic!("retention did not delete past offset {restore} (log start {lo})"));
    let lost = (lo - restore) as u64;

    // 3. Started again: the loss is named, counted, and nothing else is lost.
    let a = Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db)
        .log_name("a0-2")
        .start();
    let total = 42_000u64 + (2_000 - restore) as u64;
    wait_until(Duration::from_secs(120), || {
        (counted(&influx, &db) + last_metric(&influx, &db, "offsets_skipped") == total)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "counted {} + skipped {} != written 42 000 + read again {} (lost {lost} expected):\n{}",
            2_000 - restore,
            counted(&influx, &db),
            last_metric(&influx, &db, "offsets_skipped"),
            a.log()
        )
    });
    assert_eq!(
        last_metric(&influx, &db, "offsets_skipped"),
        lost,
        "{}",
        a.log()
    );
    let text = a.log();
    let line = text
        .lines()
        .find(|l| l.contains("were deleted by the broker before they were read"))
        .unwrap_or_else(|| panic!("no error names the loss:\n{text}"));
    eprintln!("the analyzer said: {line}");
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&format!(
            "records {restore}..={} of partition 0 ({lost})",
            lo - 1
        )),
        "names the range and count: {line}"
    );

    // 4. The archive resumes from its commit (2 000): the same.
    let mut ar = archive(&kafka, &topic, &agroup, &out, &alog);
    let kept = 42_000 - lo as usize;
    wait_until(Duration::from_secs(60), || {
        (archived_lines(&out) == 2_000 + kept).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "archive holds {} lines, not 2 000 + the {kept} still on the topic:\n{}",
            archived_lines(&out),
            read(&alog)
        )
    });
    assert!(
        ar.terminate(Duration::from_secs(30)).success(),
        "{}",
        read(&alog)
    );
    let text = read(&alog);
    let line = text
        .lines()
        .find(|l| l.contains("were deleted by the broker before they were archived"))
        .unwrap_or_else(|| panic!("the archive names no loss:\n{text}"));
    eprintln!("the archive said: {line}");
    let alost = lo - 2_000;
    assert!(
        line.contains("ERROR")
            && line.contains(&format!(
                "records 2000..={} of partition 0 ({alost})",
                lo - 1
            )),
        "{line}"
    );
    assert!(
        text.contains(&format!("offsets_skipped={alost}")),
        "its exit counts them:\n{text}"
    );

    // 5. A replay told to start at offset 0 refuses, naming the range; one
    // by time from before the first line warns that its first windows may be
    // short (what was deleted cannot be counted by time).
    let replay = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["replay", "--brokers", &kafka.bootstrap, "--topic", &topic])
            .args(["--dry-run", "--influx-url", &influx.url, "--influx-db", &db])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, text) = replay(&["--from-offsets", "0:0"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "offset 0 of partition 0 is outside what the broker holds ({lo}..42000): the records before it were deleted (retention)"
        )),
        "{text}"
    );
    let from = chrono::DateTime::from_timestamp_millis(START_MS - 3_600_000)
        .unwrap()
        .to_rfc3339();
    let (ok, text) = replay(&["--from", &from]);
    assert!(ok, "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("were deleted by the broker (retention)"))
        .unwrap_or_else(|| panic!("the replay does not warn:\n{text}"));
    eprintln!("the replay said: {line}");
    assert!(
        line.contains("WARN") && line.contains(&format!("records before offset {lo} ")),
        "{line}"
    );
}

/// After the pipeline drained, Kafka's consumer-groups tool shows the
/// analyzers' group with lag 0 on every partition (and the archive's once it
/// holds every line; a replay's group has no offsets: it never commits), and
/// the console consumer reads the records (v2 runs) with the wire
/// contract's headers, each value its count of written lines.
#[test]
fn kafkas_own_tools_see_the_group_drained_and_the_headers() {
    let kafka = Kafka::start();
    let topic = unique("logs");
    kafka.create_topic(&topic, 3);
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = ["shop", "api", "blog"]
        .iter()
        .map(|n| dir.path().join(format!("{n}.log")))
        .collect();
    for (i, p) in paths.iter().enumerate() {
        let mut g = Generator::new(30 + i as u64, START_MS, 20.0).malformed_one_in(0);
        append(p, &mut g, 3_000);
    }
    let influx = Influx::start();
    let db = influx.create_db(&unique("tools"));
    let m = membership(&kafka, &topic);
    let commit = ["--commit-interval".to_string(), "1s".to_string()];
    let a = Analyzer::cmd(Path::new(BIN), dir.path(), &m, &influx.url, &db)
        .args(&commit)
        .start();
    produce_all(
        Path::new(BIN),
        &kafka.bootstrap,
        &topic,
        &dir.path().join("checkpoints"),
        &paths,
    );
    wait_until(Duration::from_secs(60), || {
        (counted(&influx, &db) == 9_000).then_some(())
    })
    .unwrap_or_else(|| panic!("not all lines counted:\n{}", a.log()));
    let mut rows = vec![];
    wait_until(Duration::from_secs(60), || {
        rows = kafka.describe_group(&m.group);
        // A partition no source hashed to has nothing to commit: end 0, lag "-".
        (rows.len() == 3
            && rows
                .iter()
                .all(|r| r.3 == "0" || (r.2 == "0" && r.3 == "-")))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("the group is not shown drained: {rows:?}\n{}", a.log()));
    eprintln!("kafka-consumer-groups --describe: {rows:?}");
    // Wire v2: the log-end offsets count the runs, which hold the 9 000 lines.
    let ends: u64 = rows.iter().map(|r| r.2.parse::<u64>().unwrap()).sum();
    let records = logpipe_testkit::read_records(&kafka.bootstrap, &topic);
    assert_eq!(ends, records.len() as u64, "{rows:?}");
    let lines: usize = records.iter().map(|r| r.lines().len()).sum();
    assert_eq!(lines, 9_000, "{rows:?}");
    assert!(rows.iter().all(|r| r.1 == r.2 || r.2 == "0"), "{rows:?}");

    // The archive's group, once it holds every line: lag 0 likewise.
    let (out, alog) = (dir.path().join("archive"), dir.path().join("archive.log"));
    let agroup = unique("archive");
    let mut ar = archive(&kafka, &topic, &agroup, &out, &alog);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let mut arows = vec![];
    wait_until(Duration::from_secs(60), || {
        if archived_lines(&out) != 9_000 {
            return None;
        }
        arows = kafka.describe_group(&agroup);
        (arows.len() == 3
            && arows
                .iter()
                .all(|r| r.3 == "0" || (r.2 == "0" && r.3 == "-")))
        .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "archive: {} lines, group {arows:?}:\n{}",
            archived_lines(&out),
            read(&alog)
        )
    });
    eprintln!("kafka-consumer-groups --describe (archive): {arows:?}");
    assert!(
        ar.terminate(Duration::from_secs(30)).success(),
        "{}",
        read(&alog)
    );

    // A replay commits nothing (its start is its plan, never the group's):
    // the tool knows no offsets of `logpipe-replay` after one ran.
    let replayed = Command::new(BIN)
        .args(["replay", "--brokers", &kafka.bootstrap, "--topic", &topic])
        .args(["--from-offsets", "earliest", "--dry-run"])
        .args(["--influx-url", &influx.url, "--influx-db", &db])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&replayed.stderr);
    assert!(replayed.status.success(), "{text}");
    assert!(text.contains("read 9000 lines"), "{text}");
    let rrows = kafka.describe_group("logpipe-replay");
    eprintln!("kafka-consumer-groups --describe (logpipe-replay): {rrows:?}");
    assert!(rrows.is_empty(), "a replay committed offsets: {rrows:?}");

    // Sources hash to partitions by a key holding the (random) tempdir path,
    // so any partition may be empty: read one that holds records.
    let partition = rows
        .iter()
        .find(|r| r.2.parse::<u64>().unwrap() >= 5)
        .map(|r| r.0.to_string())
        .unwrap_or_else(|| panic!("no partition holds 5 records: {rows:?}"));
    // A v2 value holds its run's lines joined by `\n`: records are told
    // apart by a separator of their own.
    const END: &str = "<end of record>";
    let out = kafka.run_tool(
        "org.apache.kafka.tools.consumer.ConsoleConsumer",
        &[
            "--bootstrap-server",
            &kafka.bootstrap,
            "--topic",
            &topic,
            "--partition",
            &partition,
            "--offset",
            "0",
            "--max-messages",
            "5",
            "--timeout-ms",
            "30000",
            "--formatter-property",
            "print.headers=true",
            "--formatter-property",
            "print.key=true",
            "--formatter-property",
            &format!("line.separator={END}\n"),
        ],
    );
    let records: Vec<&str> = out
        .split(&format!("{END}\n"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(records.len(), 5, "{out}");
    let written: Vec<String> = paths
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    for r in records {
        // headers <TAB> key <TAB> value
        let cols: Vec<&str> = r.splitn(3, '\t').collect();
        assert_eq!(cols.len(), 3, "{r}");
        for h in ["host:testhost", "source:", "file:", "offset:", "lines:"] {
            assert!(cols[0].contains(h), "header {h} in {r}");
        }
        assert!(cols[1].starts_with("testhost:"), "key host:source in {r}");
        let n: usize = cols[0]
            .split(',')
            .find_map(|h| h.strip_prefix("lines:"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a line count in {r}"));
        let values: Vec<&str> = cols[2].split('\n').collect();
        assert_eq!(values.len(), n, "the run holds its count of lines: {r}");
        for v in values {
            assert!(
                written.iter().any(|l| l == v),
                "every line of the value is a written line: {v}"
            );
        }
    }
}

/// `${NAME:-default}` → default (the compose file's own defaults).
fn compose_defaults(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out += &rest[..i];
        let end = rest[i..].find('}').expect("closing brace") + i;
        let inner = &rest[i + 2..end];
        out += inner.split_once(":-").map(|(_, d)| d).unwrap_or("");
        rest = &rest[end + 1..];
    }
    out + rest
}

/// What the apache/kafka image does with its environment: every `KAFKA_*`
/// variable becomes a `server.properties` key (`KAFKA_FOO_BAR` → `foo.bar`,
/// `__` → `_`, `___` → `-`).
fn kafka_property(var: &str) -> Option<String> {
    let k = var.strip_prefix("KAFKA_")?;
    Some(
        k.to_lowercase()
            .replace("___", "-")
            .replace("__", "\u{0}")
            .replace('_', ".")
            .replace('\u{0}', "_"),
    )
}

/// The compose file's `kafka` service, for real: its `KAFKA_*` variables
/// translated as the image does, with only the addresses moved to free
/// loopback ports and the data directory (the `kafka-data` volume's mount)
/// into a temporary one; then the `topics` service's commands and the
/// health check run against it with Kafka's own tools, and a pipeline
/// through it counts every line.
#[test]
fn the_compose_files_kafka_settings_run_a_broker_and_its_topics_service() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"))
            .unwrap();
    let c: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let kafka = &c["services"]["kafka"];
    let env = kafka["environment"]
        .as_mapping()
        .expect("kafka environment");
    let volume = kafka["volumes"][0].as_str().expect("kafka volume");
    let mount = volume.split_once(':').expect("volume:path").1;
    let (p, ctl, ext) = (
        logpipe_testkit::free_port(),
        logpipe_testkit::free_port(),
        logpipe_testkit::free_port(),
    );
    let data = tempfile::tempdir().unwrap();
    let addr = |v: &str| {
        v.replace("kafka:9092", &format!("127.0.0.1:{p}"))
            .replace("kafka:9093", &format!("127.0.0.1:{ctl}"))
            .replace("localhost:9094", &format!("127.0.0.1:{ext}"))
            .replace("://:9092", &format!("://127.0.0.1:{p}"))
            .replace("://:9093", &format!("://127.0.0.1:{ctl}"))
            .replace("://:9094", &format!("://127.0.0.1:{ext}"))
    };
    let mut props = vec![];
    for (k, v) in env {
        let k = k.as_str().unwrap();
        let v = match v {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            other => panic!("{k}: {other:?}"),
        };
        let key = kafka_property(k).unwrap_or_else(|| panic!("{k} is not a KAFKA_ variable"));
        let v = compose_defaults(&v);
        let v = if key == "log.dirs" {
            assert_eq!(v, mount, "log.dirs is the kafka-data volume's mount");
            data.path().display().to_string()
        } else {
            addr(&v)
        };
        props.push((key, v));
    }
    assert!(
        props.iter().any(|(k, _)| k == "log.dirs"),
        "KAFKA_LOG_DIRS must put the data in the kafka-data volume ({mount})"
    );
    let broker = Kafka::from_properties(&props, &format!("127.0.0.1:{p}"));
    let bootstrap = broker.bootstrap.clone();

    // The health check's command, then the topics service's.
    let health = compose_defaults(kafka["healthcheck"]["test"][1].as_str().unwrap());
    assert!(
        health.contains("kafka-broker-api-versions.sh --bootstrap-server localhost:9092"),
        "{health}"
    );
    let out = broker.run_tool(
        "org.apache.kafka.tools.BrokerApiVersionsCommand",
        &["--bootstrap-server", &bootstrap],
    );
    assert!(out.contains("ApiVersions"), "{out}");
    let cmd = c["services"]["topics"]["command"][0].as_str().unwrap();
    let mut created = vec![];
    for step in cmd.split("&&") {
        let args: Vec<String> = step
            .split_whitespace()
            .map(|a| a.replace("kafka:9092", &bootstrap))
            .collect();
        assert_eq!(args[0], "/opt/kafka/bin/kafka-topics.sh", "{step}");
        let refs: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        broker.run_tool("org.apache.kafka.tools.TopicCommand", &refs);
        let t = args.iter().position(|a| a == "--topic").unwrap() + 1;
        let n = args.iter().position(|a| a == "--partitions").unwrap() + 1;
        created.push((args[t].clone(), args[n].parse::<usize>().unwrap()));
    }
    assert_eq!(
        created,
        vec![
            ("logs".to_string(), 6),
            ("logs.dlq".to_string(), 1),
            ("logs.windows".to_string(), 6)
        ]
    );
    let windows = broker.run_tool(
        "org.apache.kafka.tools.TopicCommand",
        &[
            "--bootstrap-server",
            &bootstrap,
            "--describe",
            "--topic",
            "logs.windows",
        ],
    );
    assert!(
        windows.contains("cleanup.policy=compact"),
        "the fleet topic is compacted: {windows}"
    );
    let described = broker.run_tool(
        "org.apache.kafka.tools.TopicCommand",
        &[
            "--bootstrap-server",
            &bootstrap,
            "--describe",
            "--topic",
            "logs",
        ],
    );
    assert_eq!(described.matches("Partition: ").count(), 6, "{described}");

    // The stack's own services on it, from their `command` and
    // `environment` as written (hosts and volumes mapped to this machine):
    // `traffic` writes for 15 s, `producer` follows, two `analyzer`s (as
    // with `--scale analyzer=2`) count. Every line written is counted or
    // dead-lettered, exactly.
    let mut c = c;
    c.apply_merge().expect("compose merge keys");
    let dir = tempfile::tempdir().unwrap();
    let influx = Influx::start();
    let path = |v: &str| {
        v.replace(
            "/var/log/traffic",
            &dir.path().join("traffic").display().to_string(),
        )
        .replace(
            "/var/lib/logpipe",
            &dir.path().join("state").display().to_string(),
        )
        .replace("kafka:9092", &bootstrap)
        .replace("http://influxdb:8086", &influx.url)
    };
    let service = |name: &str, log: &str| {
        let svc = &c["services"][name];
        let mut cmd = std::process::Command::new(BIN);
        for a in svc["command"].as_sequence().expect("command") {
            cmd.arg(path(a.as_str().unwrap()));
        }
        for (k, v) in svc["environment"].as_mapping().expect("environment") {
            let v = match v {
                serde_yaml::Value::String(s) => s.clone(),
                other => panic!("{name}: {k:?}: {other:?}"),
            };
            cmd.env(k.as_str().unwrap(), path(&compose_defaults(&v)));
        }
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap());
        Child::spawn(name, &mut cmd)
    };
    let read = |log: &str| std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
    let a0 = service("analyzer", "analyzer-0.log");
    let a1 = service("analyzer", "analyzer-1.log");
    // The rollup joins its group on the fleet topic the analyzers publish to
    // (15 s of live traffic closes no window with the default 30 s
    // lateness, so it has nothing to merge here; tests/fleet.rs merges).
    let mut rollup = service("rollup", "rollup.log");
    let mut producer = service("producer", "producer.log");
    let mut traffic = service("traffic", "traffic.log");
    std::thread::sleep(Duration::from_secs(15));
    assert!(
        traffic.terminate(Duration::from_secs(10)).success(),
        "{}",
        read("traffic.log")
    );
    let written: u64 = walk(&dir.path().join("traffic"))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count() as u64)
        .sum();
    assert!(
        written > 1_000,
        "traffic wrote {written} lines:\n{}",
        read("traffic.log")
    );
    // Dead letters by the line they are (file, offset): a line an analyzer
    // dead-lettered before a rebalance and its successor again is one line.
    let dead = || {
        logpipe_testkit::read_topic(&bootstrap, "logs.dlq")
            .iter()
            .map(|r| {
                (
                    r.header("file").map(str::to_string),
                    r.header("offset").map(str::to_string),
                )
            })
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64
    };
    let mut seen = (0, 0);
    wait_until(Duration::from_secs(90), || {
        seen = (counted(&influx, "logs"), dead());
        (seen.0 + seen.1 == written).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{written} lines written, {} counted + {} dead-lettered:\n{}\n{}\n{}",
            seen.0,
            seen.1,
            read("producer.log"),
            read("analyzer-0.log"),
            read("analyzer-1.log")
        )
    });
    eprintln!(
        "compose services: {written} lines written by traffic, {} counted, {} dead-lettered",
        seen.0, seen.1
    );
    assert!(producer.terminate(Duration::from_secs(30)).success());
    for (mut a, log) in [(a0, "analyzer-0.log"), (a1, "analyzer-1.log")] {
        assert!(
            a.terminate(Duration::from_secs(30)).success(),
            "{}",
            read(log)
        );
        assert!(
            read(log).contains("partitions assigned"),
            "{log} took part:\n{}",
            read(log)
        );
    }
    assert!(
        rollup.terminate(Duration::from_secs(30)).success(),
        "{}",
        read("rollup.log")
    );
    assert!(
        read("rollup.log").contains("partitions assigned"),
        "rollup took part:\n{}",
        read("rollup.log")
    );
    assert!(
        std::fs::read_dir(data.path()).unwrap().count() > 0,
        "the data lives in the volume's directory"
    );
}

/// A member that owns no partition because its group has more members than
/// the topic partitions says so, with the group's member count as the
/// coordinator tells it (librdkafka's mock has no DescribeGroups: Apache
/// Kafka here; the other quiet cases are tested on the mock in
/// consumer/src/group.rs).
#[test]
fn a_member_without_a_partition_says_the_group_outnumbers_them() {
    use logpipe_consumer::{Batch, GroupConfig, GroupConsumer, RebalanceEvent};
    let kafka = Kafka::start();
    let topic = unique("one");
    kafka.create_topic(&topic, 1);
    let group = unique("group");
    let member = || {
        GroupConsumer::new(
            &GroupConfig {
                brokers: kafka.bootstrap.clone(),
                topic: topic.clone(),
                group: group.clone(),
                extra: vec![
                    ("session.timeout.ms".into(), "6000".into()),
                    ("heartbeat.interval.ms".into(), "1000".into()),
                ],
                partitions: None,
            },
            None,
        )
        .unwrap()
    };
    let members = [member(), member()];
    let mut owned = [0usize; 2];
    let mut batch = Batch::with_capacity(16);
    let stable = || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.bootstrap)
            .create()
            .unwrap();
        c.fetch_group_list(Some(&group), Duration::from_secs(5))
            .ok()
            .and_then(|l| {
                l.groups()
                    .iter()
                    .find(|g| g.name() == group)
                    .map(|g| g.state() == "Stable" && g.members().len() == 2)
            })
            .unwrap_or(false)
    };
    wait_until(Duration::from_secs(60), || {
        for (i, m) in members.iter().enumerate() {
            assert!(m
                .poll_batch(&mut batch, Duration::from_millis(100))
                .is_none());
            batch.clear();
            while let Some(ev) = m.take_rebalance() {
                match ev {
                    RebalanceEvent::Assigned(ps) => owned[i] += ps.len(),
                    RebalanceEvent::Revoked(ps) => owned[i] -= ps.len(),
                    RebalanceEvent::Lost => owned[i] = 0,
                    RebalanceEvent::AssignFailed(e) => panic!("{e}"),
                }
            }
        }
        (owned.iter().sum::<usize>() == 1 && stable()).then_some(())
    })
    .unwrap_or_else(|| panic!("the group did not settle: {owned:?}"));
    let idle = &members[usize::from(owned[0] == 1)];
    let note = idle.quiet_note(Duration::from_secs(30));
    assert!(
        note.contains(&format!(
            "owns none of its 1 partitions: group {group} has 2 members, more than {topic} has partitions"
        )),
        "{note}"
    );
}
