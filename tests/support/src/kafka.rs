//! Kafka-protocol brokers as separate processes: `logpipe broker` (the mock
//! cluster) and Tansu (an independent implementation, sqlite storage; its
//! tests are opt-in with `LOGPIPE_TEST_TANSU=1`, see [`Tansu::start`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::process::{free_port, wait_until, Child};

/// The `logpipe broker` process: a mock cluster reachable over loopback.
pub struct LogpipeBroker {
    pub bootstrap: String,
    _child: Child,
}

impl LogpipeBroker {
    /// Starts `bin broker` with `topics`, each with `partitions` and a
    /// one-partition dead-letter topic `<topic>.dlq`, and reads the bootstrap
    /// address from its first line of stdout.
    pub fn start(bin: &Path, topics: &[&str], partitions: i32) -> LogpipeBroker {
        let mut cmd = Command::new(bin);
        cmd.arg("broker")
            .arg("--partitions")
            .arg(partitions.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for t in topics {
            cmd.arg("--topic").arg(t);
            cmd.arg("--topic").arg(crate::dlq_topic(t));
        }
        let mut child = Child::spawn("logpipe broker", &mut cmd);
        let mut line = String::new();
        BufReader::new(child.stdout().expect("stdout"))
            .read_line(&mut line)
            .expect("read bootstrap line");
        let bootstrap = line.trim().to_string();
        assert!(
            bootstrap.contains(':'),
            "logpipe broker printed {line:?} instead of a bootstrap address"
        );
        LogpipeBroker {
            bootstrap,
            _child: child,
        }
    }
}

/// A Tansu broker process with sqlite storage in a temp dir.
pub struct Tansu {
    pub bootstrap: String,
    child: Child,
    _dir: tempfile::TempDir,
}

/// Where the `tansu` binary is, if installed.
pub fn tansu_path() -> Option<PathBuf> {
    let candidates = [
        std::env::var("LOGPIPE_TANSU").ok().map(PathBuf::from),
        std::env::var("CARGO_HOME")
            .ok()
            .map(|h| PathBuf::from(h).join("bin/tansu")),
        std::env::var("HOME")
            .ok()
            .map(|h| PathBuf::from(h).join(".cargo/bin/tansu")),
        Some(PathBuf::from("tansu")),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

impl Tansu {
    /// Starts Tansu when its tests are asked for (`LOGPIPE_TEST_TANSU=1`;
    /// `./scripts/test` then installs it), else returns `None` with a message:
    /// Apache Kafka is the broker the guarantees are proven on, and Tansu
    /// 0.6.0's group coordinator has known faults (docs/design.md). Asked
    /// for and missing, it fails the test.
    pub fn start() -> Option<Tansu> {
        if !std::env::var("LOGPIPE_TEST_TANSU").is_ok_and(|v| v == "1") {
            eprintln!("SKIPPED: Tansu tests are opt-in (LOGPIPE_TEST_TANSU=1)");
            return None;
        }
        let Some(bin) = tansu_path() else {
            panic!(
                "LOGPIPE_TEST_TANSU=1 but Tansu 0.6.0 is not installed: run ./scripts/test with \
                 it set (it installs it with `cargo install tansu --version 0.6.0 --features \
                 dynostore,libsql`) or set LOGPIPE_TANSU to its path"
            );
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("tansu.log")).unwrap();
        let child = Child::spawn(
            "tansu",
            Command::new(bin)
                .arg("broker")
                .arg("--listener-url")
                .arg(&url)
                .arg("--advertised-listener-url")
                .arg(&url)
                .arg("--storage-engine")
                .arg("sqlite://tansu.db")
                .current_dir(dir.path())
                .env(
                    "RUST_LOG",
                    std::env::var("LOGPIPE_TANSU_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let bootstrap = format!("127.0.0.1:{port}");
        let b = bootstrap.clone();
        wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(&b).ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "Tansu did not listen on {b} within 30 s: {}",
                std::fs::read_to_string(dir.path().join("tansu.log")).unwrap_or_default()
            )
        });
        Some(Tansu {
            bootstrap,
            child,
            _dir: dir,
        })
    }

    /// Creates a topic through the CreateTopics API and waits until its
    /// metadata shows every partition.
    /// Creates `name` and its dead-letter topic `<name>.dlq`.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        create_topic(&self.bootstrap, name, partitions);
        create_topic(&self.bootstrap, &crate::dlq_topic(name), 1);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("tansu.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Creates a topic on a broker that implements CreateTopics (not the mock).
pub fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    create_topic_with(bootstrap, name, partitions, 1, &[]);
}

/// Creates a topic with `replication` and topic-level `config`, and waits
/// until its metadata shows every partition with a leader.
pub fn create_topic_with(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    replication: i32,
    config: &[(&str, &str)],
) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    for (k, v) in config {
        topic = topic.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let res = futures_executor::block_on(admin.create_topics([&topic], &opts))
        .expect("create_topics request");
    for r in res {
        if let Err((t, e)) = r {
            if e != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                panic!("creating topic {t}: {e}");
            }
        }
    }
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    wait_until(Duration::from_secs(30), || {
        let md = c.fetch_metadata(Some(name), Duration::from_secs(5)).ok()?;
        let t = md.topics().first()?;
        (t.partitions().len() == partitions as usize
            && t.partitions().iter().all(|p| p.leader() >= 0))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("topic {name} did not show {partitions} partitions with leaders"));
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// (`source` header, value as text): how tests compare dead letters
    /// with the malformed lines they wrote.
    pub fn source_and_line(&self) -> (String, String) {
        (
            self.header("source").unwrap_or("?").to_string(),
            String::from_utf8_lossy(&self.value).into_owned(),
        )
    }

    /// The last header called `name`, as text (the wire contract's reading:
    /// the last duplicate wins).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// What the headers say about the line, read as the analyzers read them.
    pub fn meta(&self) -> logpipe_wire::RecordMeta<'_> {
        logpipe_wire::RecordMeta::from_headers(Some(&self.headers[..]))
    }
}

/// Every line of `topic` (all partitions, from the start to the high
/// watermark at the time of the call), by partition and offset: a v2
/// record's lines each as a record of its own with the v1 headers it would
/// have had (the line's own `offset`, its `cut` and `partial`), at the
/// run's Kafka offset, as the wire crate's reader gives them.
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<Record> {
    read_records(bootstrap, topic)
        .iter()
        .flat_map(Record::lines)
        .collect()
}

/// Every record of `topic` as it is on the broker (v2 runs not split).
pub fn read_records(bootstrap: &str, topic: &str) -> Vec<Record> {
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "logpipe-testkit-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let t = Duration::from_secs(10);
    let md = c.fetch_metadata(Some(topic), t).expect("metadata");
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    assert!(!parts.is_empty(), "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for &p in &parts {
        let (lo, hi) = c.fetch_watermarks(topic, p, t).expect("watermarks");
        if hi > lo {
            tpl.add_partition_offset(topic, p, Offset::Offset(lo))
                .unwrap();
            ends.insert(p, hi);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    c.assign(&tpl).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} timed out: {ends:?} left"
        );
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.expect("consume");
        if m.offset() + 1 >= ends.get(&m.partition()).copied().unwrap_or(i64::MAX) {
            ends.remove(&m.partition());
        }
        out.push(Record::of(&m));
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

impl Record {
    /// The lines of a record: itself when it is v1; a v2 run's lines, each
    /// with the headers a v1 record of it alone would carry.
    pub fn lines(&self) -> Vec<Record> {
        let meta = self.meta();
        if meta.lines.is_none() {
            return vec![self.clone()];
        }
        let lines = meta
            .lines(&self.value)
            .unwrap_or_else(|e| panic!("record {}/{}: {e}", self.partition, self.offset));
        let headers = || self.headers.iter().map(|(k, v)| (k.as_str(), Some(&v[..])));
        lines
            .map(|l| Record {
                partition: self.partition,
                offset: self.offset,
                key: self.key.clone(),
                value: l.value.to_vec(),
                headers: meta
                    .line_headers(headers(), &l)
                    .into_iter()
                    .map(|(k, v)| (k, v.unwrap_or_default()))
                    .collect(),
            })
            .collect()
    }

    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
        use rdkafka::message::{Headers, Message};
        Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().unwrap_or(b"").to_vec(),
            value: m.payload().unwrap_or(b"").to_vec(),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or(b"").to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Reads a topic from its beginning while it is written, for topics that
/// outgrow what the mock broker keeps (about 5 MiB per partition): start it
/// before the records are produced. It holds lines, as [`read_topic`]
/// returns them.
pub struct Tap {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    records: std::sync::Arc<std::sync::Mutex<Vec<Record>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Tap {
    pub fn start(bootstrap: &str, topic: &str) -> Tap {
        use rdkafka::{Offset, TopicPartitionList};
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "logpipe-testkit-tap")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("consumer");
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        assert!(tpl.count() > 0, "topic {topic} has no partitions");
        c.assign(&tpl).expect("assign");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let records: std::sync::Arc<std::sync::Mutex<Vec<Record>>> = Default::default();
        let handle = {
            let (stop, records) = (stop.clone(), records.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                        records.lock().unwrap().extend(Record::of(&m).lines());
                    }
                }
            })
        };
        Tap {
            stop,
            records,
            handle: Some(handle),
        }
    }

    pub fn len(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every record so far, once there are `n` (or `timeout` passed).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Record> {
        let deadline = std::time::Instant::now() + timeout;
        while self.len() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.records.lock().unwrap().clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
