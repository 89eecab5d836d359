//! `logpipe analyze` and `logpipe produce` as child processes, the way an
//! operator runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::process::Child;

/// Where analyzers consume and how fast a dead member is noticed.
#[derive(Debug, Clone)]
pub struct Membership {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    /// `session.timeout.ms`: short for the mock (its rebalance waits about one
    /// session), longer for Tansu (its coordinator answers heartbeats slowly
    /// on a loaded machine, and a spurious session timeout means a rebalance).
    pub session_ms: u64,
    /// The consumer group protocol the analyzers use (`group.protocol`).
    pub protocol: GroupProtocol,
}

/// Kafka's two consumer group protocols: `classic` (client-side assignment,
/// the client's session timeout) and KIP-848's `consumer` (the broker
/// assigns; sessions and heartbeats are the broker's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupProtocol {
    #[default]
    Classic,
    Consumer,
}

/// A running `logpipe analyze`, its stderr in a file.
pub struct Analyzer {
    pub child: Child,
    pub log: PathBuf,
}

impl Membership {
    /// A new group (a unique name) on `topic`, classic protocol, 6 s sessions.
    pub fn new(brokers: &str, topic: &str) -> Membership {
        Membership {
            brokers: brokers.into(),
            topic: topic.into(),
            group: crate::unique("group"),
            session_ms: 6_000,
            protocol: GroupProtocol::Classic,
        }
    }

    /// The `--kafka` arguments that select the group protocol and, for
    /// `classic`, the session: KIP-848's protocol refuses client-side
    /// session and heartbeat settings (the broker's apply).
    pub fn group_args(&self) -> Vec<String> {
        match self.protocol {
            GroupProtocol::Classic => vec![
                "--kafka".into(),
                format!("session.timeout.ms={}", self.session_ms),
                "--kafka".into(),
                format!("heartbeat.interval.ms={}", self.session_ms / 6),
            ],
            GroupProtocol::Consumer => vec!["--kafka".into(), "group.protocol=consumer".into()],
        }
    }
}

/// `logpipe analyze` as the tests run it, to be [`AnalyzeCmd::start`]ed:
/// a member of a [`Membership`] writing to one InfluxDB database, flushing
/// every 300 ms, its stderr in `<dir>/<log name>.log`.
pub struct AnalyzeCmd<'a> {
    bin: &'a Path,
    dir: &'a Path,
    m: &'a Membership,
    influx_url: &'a str,
    db: &'a str,
    id: String,
    log_name: Option<String>,
    extra: Vec<String>,
}

impl AnalyzeCmd<'_> {
    /// The analyzer id (default `a0`), also its log's name unless
    /// [`AnalyzeCmd::log_name`] says otherwise.
    pub fn id(mut self, id: &str) -> Self {
        self.id = id.into();
        self
    }

    /// The log's name, for an analyzer restarted under the same id.
    pub fn log_name(mut self, name: &str) -> Self {
        self.log_name = Some(name.into());
        self
    }

    /// More arguments for `logpipe analyze`.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.extra
            .extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }

    pub fn start(self) -> Analyzer {
        let name = self.log_name.as_deref().unwrap_or(&self.id);
        let log = self.dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let m = self.m;
        let child = Child::spawn(
            "logpipe analyze",
            Command::new(self.bin)
                .args(["analyze", "--brokers", &m.brokers, "--topic", &m.topic])
                .args(["--group", &m.group, "--analyzer-id", &self.id])
                .args(["--dlq-topic", &crate::dlq_topic(&m.topic)])
                .args(["--influx-url", self.influx_url, "--influx-db", self.db])
                .args(["--flush-interval", "300ms"])
                .args(m.group_args())
                .args(&self.extra)
                .stdout(Stdio::null())
                .stderr(f),
        );
        Analyzer { child, log }
    }
}

impl Analyzer {
    /// `logpipe analyze` (the binary `bin`) in `m`, writing to `db` at
    /// `influx_url`, its log in `dir`.
    pub fn cmd<'a>(
        bin: &'a Path,
        dir: &'a Path,
        m: &'a Membership,
        influx_url: &'a str,
        db: &'a str,
    ) -> AnalyzeCmd<'a> {
        AnalyzeCmd {
            bin,
            dir,
            m,
            influx_url,
            db,
            id: "a0".into(),
            log_name: None,
            extra: Vec::new(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Partitions owned now, from the analyzer's own assignment log lines.
    pub fn owned(&self) -> usize {
        let mut owned = 0usize;
        for line in self.log().lines() {
            let count = || {
                line.split("count=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|c| c.parse::<usize>().ok())
                    .unwrap_or(0)
            };
            if line.contains("partitions assigned") {
                owned += count();
            } else if line.contains("partitions revoked") {
                owned = owned.saturating_sub(count());
            }
        }
        owned
    }
}

/// `logpipe produce --from-beginning` following `paths`, checkpoints in
/// `checkpoints`, host `testhost`; `exit_on_eof` makes it a one-shot run.
pub fn produce_cmd(
    bin: &Path,
    brokers: &str,
    topic: &str,
    checkpoints: &Path,
    paths: &[PathBuf],
    exit_on_eof: bool,
) -> Command {
    let mut c = Command::new(bin);
    c.args(["produce", "--brokers", brokers, "--topic", topic])
        .args(["--host", "testhost", "--from-beginning"])
        .arg("--checkpoint-dir")
        .arg(checkpoints)
        .args(["--poll-interval", "100ms"]);
    if exit_on_eof {
        c.arg("--exit-on-eof");
    }
    c.args(paths);
    c
}

/// Runs [`produce_cmd`] with `--exit-on-eof` to its end (checkpoints in
/// `checkpoints`) and checks it succeeded.
pub fn produce_all(bin: &Path, brokers: &str, topic: &str, checkpoints: &Path, paths: &[PathBuf]) {
    produce_all_with(bin, brokers, topic, checkpoints, paths, &[]);
}

/// [`produce_all`] with more arguments (`--lines-per-record 1`, …).
pub fn produce_all_with(
    bin: &Path,
    brokers: &str,
    topic: &str,
    checkpoints: &Path,
    paths: &[PathBuf],
    args: &[&str],
) {
    let out = produce_cmd(bin, brokers, topic, checkpoints, paths, true)
        .args(args)
        .output()
        .expect("run logpipe produce");
    assert!(
        out.status.success(),
        "logpipe produce failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until every analyzer owns partitions and together they own all
/// `partitions`, so no rebalance happens mid-stream; panics with their logs
/// after 60 s.
pub fn wait_for_group(analyzers: &[Analyzer], partitions: usize) {
    crate::wait_until(std::time::Duration::from_secs(60), || {
        let owned: Vec<usize> = analyzers.iter().map(Analyzer::owned).collect();
        (owned.iter().all(|&n| n > 0) && owned.iter().sum::<usize>() == partitions).then_some(())
    })
    .unwrap_or_else(|| {
        let logs: Vec<String> = analyzers.iter().map(Analyzer::log).collect();
        panic!("consumer group did not settle:\n{}", logs.join("\n---\n"))
    });
}

/// `logpipe rollup` as the tests run it: a member of `group` on the fleet
/// topic `topic`, writing to `db` at `influx_url`, flushing every 300 ms,
/// 6 s sessions; more arguments and its stderr are the caller's.
pub fn rollup_cmd(
    bin: &Path,
    brokers: &str,
    topic: &str,
    group: &str,
    influx_url: &str,
    db: &str,
) -> Command {
    let mut c = Command::new(bin);
    c.args(["rollup", "--brokers", brokers, "--topic", topic])
        .args(["--group", group])
        .args(["--influx-url", influx_url, "--influx-db", db])
        .args(["--flush-interval", "300ms"])
        .args(["--kafka", "session.timeout.ms=6000"])
        .args(["--kafka", "heartbeat.interval.ms=1000"])
        // A producer's property (one LOGPIPE_KAFKA for every role): the
        // rollup's consumers leave it, and librdkafka has nothing to warn of.
        .args(["--kafka", "linger.ms=5"])
        .stdout(Stdio::null());
    c
}
