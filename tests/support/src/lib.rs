//! Test harness for logpipe: real components only, each test with its own
//! topic, group and database.
//!
//! - [`influx`]: a real `influxd` (Debian package `influxdb`) as a child process.
//! - [`apache_kafka`]: Apache Kafka itself, one node or a cluster, as child
//!   processes (KRaft), and its own tools.
//! - [`kafka`]: the stand-ins — the mock cluster in-process
//!   ([`logpipe_consumer::MockBroker`]), the `logpipe broker` process, and
//!   (opt-in, `LOGPIPE_TEST_TANSU=1`) Tansu as a process.
//! - [`truth`]: expected windows computed from generated requests, not by parsing.
//! - [`prometheus`]: a real Prometheus scraping given targets.
//! - [`process`]: child processes that are killed on drop, and polling helpers.

pub mod apache_kafka;
pub mod influx;
pub mod kafka;
pub mod logpipe;
pub mod process;
pub mod prometheus;
pub mod tmux;
pub mod truth;

pub use apache_kafka::Kafka;
pub use influx::Influx;
pub use kafka::{read_records, read_topic, LogpipeBroker, Record, Tansu, Tap};
pub use logpipe::{
    produce_all, produce_all_with, produce_cmd, rollup_cmd, wait_for_group, AnalyzeCmd, Analyzer,
    GroupProtocol, Membership,
};
pub use process::{append_to, free_port, wait_until, Child};
pub use tmux::Tmux;
pub use truth::{
    anomalies_from_influx, diff, diff_points, points_from_influx, reference_points,
    top_from_influx, top_rows, AnomalyRow, Expected, Point, TopRow, WindowTruth,
};

/// True when running under CI: missing components fail instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The dead-letter topic tests use for `topic`; [`Analyzer`] passes it as
/// `--dlq-topic`, and the brokers here create it beside `topic`.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// A name unique to this test run, for topics, groups and databases.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
