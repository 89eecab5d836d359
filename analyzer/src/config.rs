//! The analyzer's settings and their defaults (`logpipe analyze --help`
//! shows the same values: clap reads them from [`defaults`]).

use std::sync::Arc;
use std::time::Duration;

use logpipe_consumer::GroupConfig;

use crate::parse::{Formats, Parser};
use crate::replay::Replay;
use crate::window::WindowSpec;

/// Defaults of `logpipe analyze` and `logpipe replay`, one place for the
/// library and the CLI.
pub mod defaults {
    use std::time::Duration;

    pub const fn flush_interval() -> Duration {
        Duration::from_millis(500)
    }
    pub const DEDUP_FILES: usize = 65_536;
    pub const fn partial_wait() -> Duration {
        Duration::from_secs(600)
    }
    pub const fn commit_interval() -> Duration {
        Duration::from_secs(5)
    }
}

/// Settings of one analyzer.
#[derive(Debug, Clone)]
pub struct AnalyzerConfig {
    pub group: GroupConfig,
    pub spec: WindowSpec,
    /// How often open windows' partial values (and closed windows) are written.
    pub flush_interval: Duration,
    /// Name of this analyzer in the `logpipe` self-metrics (tag `analyzer`).
    pub analyzer_id: String,
    /// Files remembered per partition for de-duplication.
    pub dedup_files: usize,
    /// How long (by the source's record stamps) a line's first piece waits
    /// for its rest before it is a dead letter (see [`crate::pieces`]).
    pub partial_wait: Duration,
    /// How often restore offsets are committed to the group (for lag tools;
    /// resuming uses the restore points in the sink).
    pub commit_interval: Duration,
    /// Which parser reads which source.
    pub formats: Arc<Formats>,
    /// Where lines that do not parse go (`logs.dlq`).
    pub dlq_topic: String,
    /// A replay instead of a live group member (see [`crate::replay`]).
    pub replay: Option<Replay>,
    /// Where final access windows' sketches go for `logpipe rollup`
    /// (`logs.windows`); `None`: not published.
    pub fleet_topic: Option<String>,
}

impl AnalyzerConfig {
    /// A live group member named `analyzer_id` with the defaults: the
    /// built-in `combined` parser for every source, dead letters to
    /// `logs.dlq`.
    pub fn new(group: GroupConfig, spec: WindowSpec, analyzer_id: String) -> Self {
        AnalyzerConfig {
            group,
            spec,
            flush_interval: defaults::flush_interval(),
            analyzer_id,
            dedup_files: defaults::DEDUP_FILES,
            partial_wait: defaults::partial_wait(),
            commit_interval: defaults::commit_interval(),
            formats: Arc::new(Formats::single(Parser::Combined)),
            dlq_topic: logpipe_wire::DEFAULT_DLQ_TOPIC.to_string(),
            replay: None,
            fleet_topic: None,
        }
    }
}
