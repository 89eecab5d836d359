//! The producer's settings and their defaults (`logpipe produce --help`
//! shows the same values: clap reads them from [`defaults`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::collect;
use crate::discover::InputSpec;

/// Defaults of `logpipe produce`, one place for the library and the CLI.
pub mod defaults {
    use std::time::Duration;

    pub const fn poll_interval() -> Duration {
        Duration::from_millis(500)
    }
    pub const fn scan_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub const fn max_line_bytes() -> usize {
        1 << 20
    }
    pub const fn rotate_wait() -> Duration {
        Duration::from_secs(5)
    }
    pub const fn lines_per_record() -> usize {
        100_000
    }
    pub const fn record_max_bytes() -> usize {
        64 << 10
    }
    pub const fn max_in_flight_bytes() -> usize {
        4 << 20
    }
    pub const fn checkpoint_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub const fn shutdown_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub const fn stats_interval() -> Duration {
        Duration::from_secs(60)
    }
}

/// Settings of `logpipe produce`.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub brokers: String,
    pub topic: String,
    /// Node name: header `host` and the first part of the key.
    pub host: String,
    pub inputs: Vec<InputSpec>,
    /// Start never-seen files at their beginning instead of their end.
    pub from_beginning: bool,
    /// Read every file to its end, wait for all acks, return.
    pub exit_on_eof: bool,
    /// Where `checkpoints.json` lives; none: no resume across restarts.
    pub checkpoint_dir: Option<PathBuf>,
    /// How often files are read again when no change event arrived.
    pub poll_interval: Duration,
    /// How often the inputs' paths are listed again (also on directory events).
    pub scan_interval: Duration,
    /// Files never seen before whose last change is older are not followed
    /// (until they change).
    pub ignore_older: Option<Duration>,
    /// Longer lines are cut to this many bytes and marked (`cut` header).
    pub max_line_bytes: usize,
    /// An incomplete last line is sent (marked `partial: idle`) after the file
    /// was quiet this long; none: held until its newline comes.
    pub partial_line_timeout: Option<Duration>,
    /// A file no longer at a followed path is closed once quiet this long.
    pub rotate_wait: Duration,
    /// Bytes of lines handed to Kafka and not yet acknowledged, at most.
    pub max_in_flight_bytes: usize,
    /// How lines are packed into records (wire v2; 1 line: v1).
    pub packing: crate::publish::Packing,
    pub checkpoint_interval: Duration,
    /// How long a shutdown waits for outstanding acknowledgements.
    pub shutdown_timeout: Duration,
    /// How often the health counters are logged.
    pub stats_interval: Duration,
    /// Extra librdkafka properties.
    pub extra: Vec<(String, String)>,
    /// Inputs that are not files (TCP, HTTP, Python logging, plugins).
    pub collect: collect::CollectConfig,
}

impl ProducerConfig {
    /// The defaults of `logpipe produce`.
    pub fn new(brokers: &str, topic: &str, host: &str, inputs: Vec<InputSpec>) -> Self {
        ProducerConfig {
            brokers: brokers.into(),
            topic: topic.into(),
            host: host.into(),
            inputs,
            from_beginning: false,
            exit_on_eof: false,
            checkpoint_dir: None,
            poll_interval: defaults::poll_interval(),
            scan_interval: defaults::scan_interval(),
            ignore_older: None,
            max_line_bytes: defaults::max_line_bytes(),
            partial_line_timeout: None,
            rotate_wait: defaults::rotate_wait(),
            max_in_flight_bytes: defaults::max_in_flight_bytes(),
            packing: crate::publish::Packing {
                lines_per_record: defaults::lines_per_record(),
                record_max_bytes: defaults::record_max_bytes(),
            },
            checkpoint_interval: defaults::checkpoint_interval(),
            shutdown_timeout: defaults::shutdown_timeout(),
            stats_interval: defaults::stats_interval(),
            extra: Vec::new(),
            collect: collect::CollectConfig::new(),
        }
    }
}
