//! Apache Kafka brokers as child processes: the release pinned in
//! `tests/kafka/pom.xml`, resolved from Maven Central by `./scripts/test`
//! into `target/kafka/<version>/libs`, started in KRaft mode on free
//! loopback ports (each node a combined broker and controller), killed by
//! PID on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::process::{free_port, wait_until, Child};

/// The Apache Kafka release the tests run (keep equal to `tests/kafka/pom.xml`).
pub const KAFKA_VERSION: &str = "4.4.0";

/// Where the broker's jars are: `LOGPIPE_KAFKA_LIBS`, else
/// `<repo>/target/kafka/<version>/libs` (where `./scripts/test` puts them).
pub fn kafka_libs() -> Result<PathBuf, String> {
    let dir = match std::env::var_os("LOGPIPE_KAFKA_LIBS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/kafka")
            .join(KAFKA_VERSION)
            .join("libs"),
    };
    let has_broker = std::fs::read_dir(&dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("kafka_2.13-{KAFKA_VERSION}"))
        })
    });
    if has_broker {
        Ok(dir)
    } else {
        Err(format!(
            "Apache Kafka {KAFKA_VERSION} is not in {}: run ./scripts/test (it resolves it from \
             Maven Central with `mvn -f tests/kafka/pom.xml dependency:copy-dependencies \
             -DoutputDirectory=target/kafka/{KAFKA_VERSION}/libs`), or set LOGPIPE_KAFKA_LIBS",
            dir.display()
        ))
    }
}

fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("java"))
}

/// One KRaft node (broker and controller in one JVM).
struct Node {
    id: u32,
    port: u16,
    props: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running Apache Kafka cluster of one or more nodes.
pub struct Kafka {
    pub bootstrap: String,
    nodes: Vec<Node>,
    classpath: String,
    log4j: PathBuf,
    dir: tempfile::TempDir,
}

/// Broker settings every test cluster gets: small internal topics, no
/// initial rebalance delay, sessions as short as the tests ask for (both
/// group protocols).
const TEST_SETTINGS: &[(&str, &str)] = &[
    ("group.initial.rebalance.delay.ms", "0"),
    ("offsets.topic.num.partitions", "5"),
    ("group.min.session.timeout.ms", "1000"),
    ("group.consumer.min.session.timeout.ms", "1000"),
    ("group.consumer.session.timeout.ms", "6000"),
    ("group.consumer.min.heartbeat.interval.ms", "500"),
    ("group.consumer.heartbeat.interval.ms", "1000"),
    ("num.partitions", "1"),
    ("log.retention.check.interval.ms", "1000"),
];

impl Kafka {
    /// One node. Panics, naming the cause, when Kafka cannot start: a test
    /// that needs Kafka never passes without it.
    pub fn start() -> Kafka {
        Self::cluster(1, &[])
    }

    /// One node with `topics` (each with `partitions` and a one-partition
    /// `<topic>.dlq`) created.
    pub fn with_topics(topics: &[&str], partitions: i32) -> Kafka {
        let k = Self::start();
        for t in topics {
            k.create_topic(t, partitions);
        }
        k
    }

    /// `n` nodes, each broker and controller, with `extra` broker settings.
    pub fn cluster(n: u32, extra: &[(&str, &str)]) -> Kafka {
        let libs = kafka_libs().unwrap_or_else(|msg| panic!("{msg}"));
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let voters: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1))
            .collect();
        let rf = n.min(3).to_string();
        let mut nodes = vec![];
        for (i, (port, cport)) in ports.iter().enumerate() {
            let id = i as u32 + 1;
            let data = dir.path().join(format!("node-{id}"));
            let mut props = vec![
                ("process.roles".to_string(), "broker,controller".to_string()),
                ("node.id".into(), id.to_string()),
                ("controller.quorum.voters".into(), voters.join(",")),
                (
                    "listeners".into(),
                    format!("PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}"),
                ),
                (
                    "advertised.listeners".into(),
                    format!("PLAINTEXT://127.0.0.1:{port}"),
                ),
                ("controller.listener.names".into(), "CONTROLLER".into()),
                (
                    "listener.security.protocol.map".into(),
                    "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".into(),
                ),
                ("log.dirs".into(), data.display().to_string()),
                ("offsets.topic.replication.factor".into(), rf.clone()),
                (
                    "transaction.state.log.replication.factor".into(),
                    rf.clone(),
                ),
                ("transaction.state.log.min.isr".into(), "1".into()),
            ];
            for (k, v) in TEST_SETTINGS.iter().chain(extra) {
                props.retain(|(pk, _)| pk != k);
                props.push((k.to_string(), v.to_string()));
            }
            let text: String = props.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            let path = dir.path().join(format!("node-{id}.properties"));
            std::fs::write(&path, text).unwrap();
            nodes.push(Node {
                id,
                port: *port,
                props: path,
                log: dir.path().join(format!("node-{id}.log")),
                child: None,
            });
        }
        let bootstrap = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",");
        Self::launch(libs, dir, nodes, bootstrap)
    }

    /// One node from exactly `props` (a `server.properties` as key/value
    /// pairs, e.g. translated from the compose file's `KAFKA_*` variables),
    /// its clients reaching it at `bootstrap`.
    pub fn from_properties(props: &[(String, String)], bootstrap: &str) -> Kafka {
        let libs = kafka_libs().unwrap_or_else(|msg| panic!("{msg}"));
        let dir = tempfile::tempdir().expect("tempdir");
        let text: String = props.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let path = dir.path().join("server.properties");
        std::fs::write(&path, text).unwrap();
        let id = props
            .iter()
            .find(|(k, _)| k == "node.id")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(1);
        let port = bootstrap
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let node = Node {
            id,
            port,
            props: path,
            log: dir.path().join("node.log"),
            child: None,
        };
        Self::launch(libs, dir, vec![node], bootstrap.to_string())
    }

    /// Formats every node's storage with one cluster id, starts them and
    /// waits until metadata lists them all.
    fn launch(libs: PathBuf, dir: tempfile::TempDir, nodes: Vec<Node>, bootstrap: String) -> Kafka {
        let log4j = dir.path().join("log4j2.yaml");
        std::fs::write(
            &log4j,
            "Configuration:\n  Appenders:\n    Console:\n      name: STDOUT\n      PatternLayout:\n        \
             pattern: \"[%d] %p %m (%c)%n\"\n  Loggers:\n    Logger:\n      - name: kafka.server.KafkaServer\n        \
             level: INFO\n    Root:\n      level: WARN\n      AppenderRef:\n        - ref: STDOUT\n",
        )
        .unwrap();
        let n = nodes.len();
        let mut k = Kafka {
            bootstrap,
            nodes,
            classpath: format!("{}/*", libs.display()),
            log4j,
            dir,
        };
        let cluster_id = k.run_tool("kafka.tools.StorageTool", &["random-uuid"]);
        let cluster_id = cluster_id.trim().to_string();
        for i in 0..n {
            let props = k.nodes[i].props.display().to_string();
            k.run_tool(
                "kafka.tools.StorageTool",
                &["format", "-t", &cluster_id, "-c", &props],
            );
        }
        for i in 0..n {
            k.start_node(i);
        }
        k.wait_ready(n, Duration::from_secs(90));
        k
    }

    fn java_cmd(&self, class: &str) -> Command {
        let mut cmd = Command::new(java());
        cmd.arg("-cp")
            .arg(&self.classpath)
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.log4j.display()
            ))
            .arg(class);
        cmd
    }

    /// Runs one of Kafka's own tools (a main class from the same jars) to
    /// completion and returns its stdout; panics with its output on failure.
    pub fn run_tool(&self, class: &str, args: &[&str]) -> String {
        let out = self
            .java_cmd(class)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run java ({}): {e}", java().display()));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{class} {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The rows of `kafka-consumer-groups --describe --group <group>`, per
    /// partition: (partition, current offset, log end offset, lag), as the
    /// tool prints them (`-` where it has no value).
    pub fn describe_group(&self, group: &str) -> Vec<(i32, String, String, String)> {
        let out = self.run_tool(
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            &[
                "--bootstrap-server",
                &self.bootstrap,
                "--describe",
                "--group",
                group,
            ],
        );
        let mut rows = vec![];
        for l in out.lines() {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() >= 6 && cols[0] == group {
                if let Ok(p) = cols[2].parse::<i32>() {
                    rows.push((p, cols[3].into(), cols[4].into(), cols[5].into()));
                }
            }
        }
        rows.sort();
        rows
    }

    /// Starts node `i` (0-based) again after [`Kafka::kill_node`].
    pub fn start_node(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.nodes[i].log)
            .unwrap();
        let mut cmd = Command::new(java());
        cmd.args(["-Xms128m", "-Xmx768m", "-XX:+UseG1GC"])
            .arg("-cp")
            .arg(&self.classpath)
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.log4j.display()
            ))
            .arg("kafka.Kafka")
            .arg(&self.nodes[i].props)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let name = format!("kafka node {}", self.nodes[i].id);
        self.nodes[i].child = Some(Child::spawn(&name, &mut cmd));
    }

    /// `kill -9` of node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill();
        }
    }

    /// The PID of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// Node `i`'s client address, `127.0.0.1:<port>`.
    pub fn node_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].port)
    }

    /// The node id (`node.id`, 1-based) of node `i`.
    pub fn node_id(&self, i: usize) -> u32 {
        self.nodes[i].id
    }

    /// Waits until metadata lists `brokers` brokers.
    pub fn wait_ready(&self, brokers: usize, timeout: Duration) {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("metadata client");
        let start = Instant::now();
        let ok = wait_until(timeout, || {
            let md = c.fetch_metadata(None, Duration::from_secs(2)).ok()?;
            (md.brokers().len() >= brokers).then_some(())
        });
        if ok.is_none() {
            panic!(
                "Apache Kafka did not list {brokers} broker(s) on {} within {:?}:\n{}",
                self.bootstrap,
                start.elapsed(),
                self.log()
            );
        }
    }

    /// Creates `name` (and its dead-letter topic `<name>.dlq`, one
    /// partition) with the cluster's replication (up to 3).
    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.create_topic_with(name, partitions, &[]);
        self.create_topic_with(&crate::dlq_topic(name), 1, &[]);
    }

    /// Creates one topic with topic-level `config` (e.g. `retention.bytes`).
    pub fn create_topic_with(&self, name: &str, partitions: i32, config: &[(&str, &str)]) {
        let rf = self.nodes.len().min(3) as i32;
        crate::kafka::create_topic_with(&self.bootstrap, name, partitions, rf, config);
    }

    /// Every node's log, for a failing test's message.
    pub fn log(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out += &format!("--- kafka node {} (last lines)\n", n.id);
            for l in tail.into_iter().rev() {
                out += l;
                out += "\n";
            }
        }
        out
    }

    /// The cluster's scratch directory (data, logs, settings).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
