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

impl Analyzer {
    /// Starts `logpipe analyze` as analyzer id `id`, logging to `dir/<log_name>.log`.
    pub fn start(
        bin: &Path,
        dir: &Path,
        id: &str,
        log_name: &str,
        m: &Membership,
        influx_url: &str,
        db: &str,
    ) -> Analyzer {
        Self::start_with(bin, dir, id, log_name, m, influx_url, db, &[])
    }

    /// [`Analyzer::start`] with more arguments for `logpipe analyze`.
    #[allow(clippy::too_many_arguments)]
    pub fn start_with(
        bin: &Path,
        dir: &Path,
        id: &str,
        log_name: &str,
        m: &Membership,
        influx_url: &str,
        db: &str,
        extra: &[String],
    ) -> Analyzer {
        let log = dir.join(format!("{log_name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = Child::spawn(
            "logpipe analyze",
            Command::new(bin)
                .args(["analyze", "--brokers", &m.brokers, "--topic", &m.topic])
                .args(["--group", &m.group, "--analyzer-id", id])
                .args(["--dlq-topic", &crate::dlq_topic(&m.topic)])
                .args(["--influx-url", influx_url, "--influx-db", db])
                .args(["--flush-interval", "300ms"])
                .args(m.group_args())
                .args(extra)
                .stdout(Stdio::null())
                .stderr(f),
        );
        Analyzer { child, log }
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
    let out = produce_cmd(bin, brokers, topic, checkpoints, paths, true)
        .output()
        .expect("run logpipe produce");
    assert!(
        out.status.success(),
        "logpipe produce failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
