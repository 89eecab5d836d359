//! The command line: every flag can also come from a `LOGPIPE_<FLAG>`
//! environment variable (e.g. `LOGPIPE_BROKERS`, `LOGPIPE_INFLUX_URL`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use logpipe_analyzer::anomaly::AnomalySpec;
use logpipe_analyzer::defaults as analyzer_defaults;
use logpipe_analyzer::top::{PathKey, TopSpec};
use logpipe_producer::config::defaults;

#[derive(Debug, Parser)]
#[command(name = "logpipe", version, about = "Access logs → Kafka → exact event-time metrics in InfluxDB", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// A TOML file of settings for every command: keys are flag names
    /// (`brokers`, `influx-url`, …) at the top (for every command that has
    /// the flag) or in a table per command (`[analyze]`); the producer's
    /// inputs are `[[input]]` tables (`paths`, `exclude`, `source`).
    /// Environment variables and flags override it. See docs/logpipe.toml.
    #[arg(long, env = "LOGPIPE_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Follow log files and publish every line to Kafka (one record per line).
    Produce(ProduceArgs),
    /// Consume lines as a member of a consumer group and write per-window metrics to InfluxDB.
    Analyze(AnalyzeArgs),
    /// Run a development Kafka broker (librdkafka's mock cluster) for trying logpipe and for tests.
    ///
    /// Not for production: nothing is persisted and it holds everything in memory.
    /// The bootstrap address is printed as the first line of standard output;
    /// it runs until SIGTERM or Ctrl-C.
    Broker(BrokerArgs),
    /// Everything in one process: a broker, a producer and analyzers, windows printed live.
    ///
    /// With no --input it generates realistic nginx traffic for three virtual hosts
    /// (starting 45 s in the past, so windows close within seconds). With --input F --from-beginning
    /// --exit-on-eof it is a one-shot analysis of a historical log.
    Demo(DemoArgs),
    /// Write realistic generated nginx traffic (`combined` + `$request_time`)
    /// to log files, in real time: the traffic source of the compose stack.
    Generate(GenerateArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    /// to stdout, e.g. `logpipe completions bash > /etc/bash_completion.d/logpipe`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (logpipe.1 and one per command, logpipe-analyze.1,
    /// …) into DIR; the Debian package ships them.
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Recompute the windows of an event-time range from what is on the topic.
    ///
    /// Reads its partitions directly (never disturbing the live analyzers'
    /// group), from the records ingested --max-delay before --from (found by
    /// timestamp, by binary search where the broker cannot answer) to the end
    /// the topic had when it began, and writes the final points of the
    /// windows entirely inside the range. Exits 0 when done.
    Replay(ReplayArgs),
    /// Write the raw lines of the topic to DIR/<source>/<YYYY-MM-DD>.log (UTC
    /// day of the record time), each line exactly once across crashes.
    ///
    /// A consumer in its own group (--group). Offsets are committed only after
    /// the lines are fsynced and the directory's state saved; after a crash
    /// the files are cut back to the saved state and the rest is read again.
    /// Producer re-sends are dropped by their (file, offset) headers.
    Archive(ArchiveArgs),
    /// Merge the analyzers' window sketches across hosts and sources into
    /// fleet-wide points (`access_fleet`): true percentiles, unique clients
    /// and top-K over many servers.
    ///
    /// A consumer-group member on the fleet topic (analyzers publish to it
    /// with --fleet-topic). Per window and group (all, each host, the groups
    /// of --groups) it writes counts, traffic, status classes, error rate,
    /// latency p50/p90/p99 from the merged DDSketch, unique clients from the
    /// merged HyperLogLog and the merged top-K, once every source that sent
    /// the previous window has sent this one (or after --grace); a late or
    /// re-published source window rewrites the points. Restore points live
    /// in InfluxDB beside the points, like the analyzers'.
    Rollup(RollupArgs),
    /// One screen for whoever is on call: per partition the member that owns
    /// it, committed and end offsets, lag and how it moved over --sample,
    /// the restore point and its age, the newest window written; per source
    /// its newest event time and lines/s (with --influx-url); dead letters
    /// of the last hour; warnings for what is wrong (no member, lag growing,
    /// a restore point older than the topic's retention). --json for scripts.
    Status(StatusArgs),
    /// A live terminal view of what the analyzers wrote to InfluxDB: per
    /// source a requests/s sparkline over its recent windows, QPS, error
    /// rate, p99, status mix and anomaly flags; the selected source's top
    /// paths and clients. Keys: s sort, / filter, arrows select, q quit.
    Top(TopArgs),
    /// Show the most recent dead letters: lines the analyzers could not parse,
    /// with the error and a caret under the byte where parsing stopped.
    Dlq(DlqArgs),
}

/// Parses `10s`, `1m`, `500ms`.
/// A default duration as `--help` shows it and [`duration`] reads it.
fn show_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A default size as `--help` shows it and [`bytes`] reads it.
fn show_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => n.to_string(),
    }
}

pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 10s, 1m, 500ms)"))
}

/// Parses `key=value[,key=value...]`. A comma starts a new property only
/// when `key=` follows it, so values with commas pass through:
/// `debug=broker,topic,acks=all` is `debug` = `broker,topic` and `acks` = `all`.
pub fn key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in s.split(',') {
        let starts_property = part
            .split_once('=')
            .is_some_and(|(k, _)| !k.trim().is_empty() && !k.contains([' ', ':', '/']));
        match out.last_mut() {
            Some((_, v)) if !starts_property => {
                v.push(',');
                v.push_str(part);
            }
            _ => {
                let (k, v) = part
                    .split_once('=')
                    .ok_or_else(|| format!("expected key=value, got {s:?}"))?;
                out.push((k.trim().to_string(), v.to_string()));
            }
        }
    }
    Ok(out)
}

/// All `--kafka` properties, in the order given.
pub fn flat(props: Vec<Vec<(String, String)>>) -> Vec<(String, String)> {
    props.into_iter().flatten().collect()
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub influx: InfluxArgs,
    /// How often the view is read again from InfluxDB.
    #[arg(long, env = "LOGPIPE_TOP_REFRESH", default_value = "2s", value_parser = duration)]
    pub refresh: Duration,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The analyzers' consumer group.
    #[arg(long, env = "LOGPIPE_GROUP", default_value = logpipe_wire::DEFAULT_GROUP)]
    pub group: String,
    /// The dead-letter topic.
    #[arg(long, env = "LOGPIPE_DLQ_TOPIC", default_value = logpipe_wire::DEFAULT_DLQ_TOPIC)]
    pub dlq_topic: String,
    /// The analyzers' InfluxDB (restore points, sources, newest windows);
    /// without it only what Kafka knows is shown.
    #[command(flatten)]
    pub influx: InfluxArgs,
    /// Offsets are read twice this far apart, to tell a lag that grows
    /// from one that shrinks (0: once).
    #[arg(long, env = "LOGPIPE_STATUS_SAMPLE", default_value = "2s", value_parser = duration)]
    pub sample: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, e.g. 127.0.0.1:9092.
    #[arg(long, env = "LOGPIPE_BROKERS")]
    pub brokers: String,
    /// Topic of raw log lines.
    #[arg(long, env = "LOGPIPE_TOPIC", default_value = logpipe_wire::DEFAULT_TOPIC)]
    pub topic: String,
    /// Extra librdkafka properties, repeatable or comma-separated (e.g.
    /// --kafka security.protocol=ssl,compression.type=zstd); a value may hold
    /// commas (--kafka debug=broker,topic).
    #[arg(long = "kafka", env = "LOGPIPE_KAFKA", value_name = "KEY=VALUE[,KEY=VALUE]", value_parser = key_values)]
    pub kafka: Vec<Vec<(String, String)>>,
}

/// Parses a byte size: `1048576`, `64KiB`, `16MiB`, `1GiB` (also `k`, `M`, `G` as powers of 1024).
pub fn bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (use e.g. 1048576, 64KiB, 16MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => return Err(format!("unknown size unit {u:?} (use KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `--metrics-addr`, for every long-running role.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics, liveness at /health
    /// and readiness at /ready (503 with the reason when not ready), e.g.
    /// 127.0.0.1:9898; port 0 picks a free port (logged).
    #[arg(long, env = "LOGPIPE_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<String>,
}

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// The archive directory (created if missing; one archive per directory).
    #[arg(long, env = "LOGPIPE_ARCHIVE_DIR")]
    pub dir: PathBuf,
    /// Consumer group of the archive (its own: the analyzers' offsets are not touched).
    #[arg(long, env = "LOGPIPE_ARCHIVE_GROUP", default_value = "logpipe-archive")]
    pub group: String,
    /// zstd-compress each day once it is closed: DIR/<source>/<day>.log.zst.
    #[arg(long, env = "LOGPIPE_ARCHIVE_COMPRESS")]
    pub compress: bool,
    /// A day is closed this long after its end (UTC midnight); later lines of
    /// it are still archived (as another zstd frame when compressed).
    #[arg(long, env = "LOGPIPE_ARCHIVE_CLOSE_AFTER", default_value = "1h", value_parser = duration)]
    pub close_after: Duration,
    /// How often lines are fsynced, the state saved and offsets committed
    /// (what a crash makes the archive read again).
    #[arg(long, env = "LOGPIPE_ARCHIVE_COMMIT_INTERVAL", default_value = "1s", value_parser = duration)]
    pub commit_interval: Duration,
    /// Files (`file` headers) remembered per partition for dropping producer re-sends.
    #[arg(long, env = "LOGPIPE_ARCHIVE_DEDUP_FILES", default_value = "4096")]
    pub dedup_files: usize,
    /// How often the counters are logged.
    #[arg(long, env = "LOGPIPE_STATS_INTERVAL", default_value = "60s", value_parser = duration)]
    pub stats_interval: Duration,
}

impl From<ArchiveArgs> for logpipe_archive::ArchiveConfig {
    fn from(a: ArchiveArgs) -> Self {
        logpipe_archive::ArchiveConfig {
            brokers: a.kafka.brokers,
            topic: a.kafka.topic,
            kafka: flat(a.kafka.kafka),
            dir: a.dir,
            group: a.group,
            compress: a.compress,
            close_after: a.close_after,
            commit_interval: a.commit_interval,
            dedup_files: a.dedup_files,
            stats_interval: a.stats_interval,
        }
    }
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// This node's name (header `host`, first part of the key). Default: the hostname.
    #[arg(long, env = "LOGPIPE_HOST")]
    pub host: Option<String>,
    /// Source name for the lines of the PATHS (default: each file's path).
    #[arg(long, env = "LOGPIPE_SOURCE")]
    pub source: Option<String>,
    /// Glob of paths (or file names) not to follow, repeatable. Compressed
    /// files (*.gz, *.zst, ...) are never followed.
    #[arg(long, env = "LOGPIPE_EXCLUDE", value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Start files never seen before at their beginning (backfill) instead of
    /// their end. Files that appear while running are always read from their beginning.
    #[arg(long, env = "LOGPIPE_FROM_BEGINNING")]
    pub from_beginning: bool,
    /// Do not follow never-seen files unchanged for longer than this (e.g. 7d);
    /// once such a file changes, what is written after the skip is read.
    #[arg(long, env = "LOGPIPE_IGNORE_OLDER", value_parser = duration)]
    pub ignore_older: Option<Duration>,
    /// Read every file to its end, wait until Kafka acknowledged every line, exit 0.
    #[arg(long, env = "LOGPIPE_EXIT_ON_EOF")]
    pub exit_on_eof: bool,
    /// Directory for checkpoints (read positions acknowledged by Kafka), to resume after a restart.
    #[arg(long, env = "LOGPIPE_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// A longer line is cut to this size and sent with a `cut` header holding its length.
    #[arg(long, env = "LOGPIPE_MAX_LINE_BYTES", default_value = show_bytes(defaults::max_line_bytes()), value_parser = bytes)]
    pub max_line_bytes: usize,
    /// Send an incomplete last line (marked `partial: idle`) once its file was
    /// quiet this long. Default: hold it until its newline arrives.
    #[arg(long, env = "LOGPIPE_PARTIAL_LINE_TIMEOUT", value_parser = duration)]
    pub partial_line_timeout: Option<Duration>,
    /// Bytes of lines sent and not yet acknowledged by Kafka, at most; when
    /// Kafka is slow or down, reading pauses here (the files are the buffer).
    #[arg(long, env = "LOGPIPE_MAX_IN_FLIGHT", default_value = show_bytes(defaults::max_in_flight_bytes()), value_parser = bytes)]
    pub max_in_flight: usize,
    /// Most lines in one Kafka record. Consecutive lines of one file (what
    /// one read returned) travel as one record (wire v2), closed at the end
    /// of the read, so no line waits for more. 1 sends wire v1, one record
    /// per line, for consumers outside logpipe that expect that (kcat,
    /// Kafka Connect sinks, a Logstash or Vector reading the topic).
    #[arg(long, env = "LOGPIPE_LINES_PER_RECORD", default_value_t = defaults::lines_per_record(), value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub lines_per_record: usize,
    /// A record is closed before its value passes this size (a longer line
    /// goes alone); keep it well below the brokers' `max.message.bytes`.
    #[arg(long, env = "LOGPIPE_RECORD_MAX_BYTES", default_value = show_bytes(defaults::record_max_bytes()), value_parser = bytes)]
    pub record_max_bytes: usize,
    /// A file no longer at a followed path (rotated away, deleted) is closed
    /// once nothing was written to it for this long.
    #[arg(long, env = "LOGPIPE_ROTATE_WAIT", default_value = show_duration(defaults::rotate_wait()), value_parser = duration)]
    pub rotate_wait: Duration,
    /// How often files are read again when no change event arrived.
    #[arg(long, env = "LOGPIPE_POLL_INTERVAL", default_value = show_duration(defaults::poll_interval()), value_parser = duration)]
    pub poll_interval: Duration,
    /// How often the paths are listed again for new, rotated and deleted files.
    #[arg(long, env = "LOGPIPE_SCAN_INTERVAL", default_value = show_duration(defaults::scan_interval()), value_parser = duration)]
    pub scan_interval: Duration,
    /// How often acknowledged positions are written to the checkpoint (only when changed).
    #[arg(long, env = "LOGPIPE_CHECKPOINT_INTERVAL", default_value = show_duration(defaults::checkpoint_interval()), value_parser = duration)]
    pub checkpoint_interval: Duration,
    /// On SIGTERM/Ctrl-C, how long to wait for Kafka to acknowledge what was sent.
    #[arg(long, env = "LOGPIPE_SHUTDOWN_TIMEOUT", default_value = show_duration(defaults::shutdown_timeout()), value_parser = duration)]
    pub shutdown_timeout: Duration,
    /// How often the counters (lines read/acked, in flight, files, rotations...) are logged.
    #[arg(long, env = "LOGPIPE_STATS_INTERVAL", default_value = show_duration(defaults::stats_interval()), value_parser = duration)]
    pub stats_interval: Duration,
    /// Receive newline-delimited lines over TCP on this address (e.g.
    /// 0.0.0.0:5140), published as --tcp-source. A closed connection's
    /// unterminated last piece is sent too, marked `partial: eof`.
    #[arg(long, env = "LOGPIPE_TCP", help_heading = "Network and plugin inputs")]
    pub tcp: Option<std::net::SocketAddr>,
    /// Source name of the --tcp lines.
    #[arg(
        long,
        env = "LOGPIPE_TCP_SOURCE",
        default_value = "tcp",
        help_heading = "Network and plugin inputs"
    )]
    pub tcp_source: String,
    /// Serve `POST /lines` (newline-delimited body, gzip allowed; answered
    /// once Kafka acknowledged every line) and `GET /health` on this address.
    /// Source: `?source=NAME`, the `X-Logpipe-Source` header, or --http-source.
    #[arg(long, env = "LOGPIPE_HTTP", help_heading = "Network and plugin inputs")]
    pub http: Option<std::net::SocketAddr>,
    /// Source name of --http lines whose request names none.
    #[arg(
        long,
        env = "LOGPIPE_HTTP_SOURCE",
        default_value = "http",
        help_heading = "Network and plugin inputs"
    )]
    pub http_source: String,
    /// Largest request body (compressed, and decompressed); larger: 413.
    #[arg(long, env = "LOGPIPE_HTTP_MAX_BODY", default_value = "64MiB", value_parser = bytes, help_heading = "Network and plugin inputs")]
    pub http_max_body: usize,
    /// How long a request waits for Kafka's acknowledgement before it is answered 503.
    #[arg(long, env = "LOGPIPE_HTTP_ACK_TIMEOUT", default_value = "30s", value_parser = duration, help_heading = "Network and plugin inputs")]
    pub http_ack_timeout: Duration,
    /// Receive Python `logging.handlers.SocketHandler` records (TCP) and
    /// `DatagramHandler` records (UDP) on this address; each is published as
    /// one JSON line with the logger name as its source. Pickles are decoded
    /// as plain data only: anything naming a Python object is refused.
    #[arg(
        long,
        env = "LOGPIPE_PYTHON_LOGGING",
        help_heading = "Network and plugin inputs"
    )]
    pub python_logging: Option<std::net::SocketAddr>,
    /// Run tcollector-style plugins: executables in DIR/0/ run continuously
    /// (restarted when they exit), those in DIR/<N>/ every N seconds (killed
    /// when still running at the next run). Each stdout line is published
    /// with the plugin's file name as source; stderr goes to the log.
    #[arg(long, env = "LOGPIPE_EXEC", help_heading = "Network and plugin inputs")]
    pub exec: Option<PathBuf>,
    /// First wait before a DIR/0/ plugin that exited is started again (doubles up to 1 min).
    #[arg(long, env = "LOGPIPE_EXEC_RESTART_BACKOFF", default_value = "1s", value_parser = duration, help_heading = "Network and plugin inputs")]
    pub exec_restart_backoff: Duration,
    /// Most connections at once on each of --tcp, --http and --python-logging.
    #[arg(
        long,
        env = "LOGPIPE_MAX_CONNECTIONS",
        default_value = "1024",
        help_heading = "Network and plugin inputs"
    )]
    pub max_connections: usize,
    /// Files and globs to follow (`/var/log/nginx/*.log`, `/srv/**/access.log`).
    #[arg(
        env = "LOGPIPE_PATHS",
        value_delimiter = ',',
        required_unless_present_any = ["config", "tcp", "http", "python_logging", "exec"]
    )]
    pub paths: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct WindowArgs {
    /// Length of the tumbling event-time windows.
    #[arg(long, env = "LOGPIPE_WINDOW", default_value = "10s", value_parser = duration)]
    pub window: Duration,
    /// How far behind the newest event time a line may arrive and still count.
    #[arg(long, env = "LOGPIPE_LATENESS", default_value = "30s", value_parser = duration)]
    pub lateness: Duration,
    /// How often open windows' partial values are written (live dashboards).
    #[arg(long, env = "LOGPIPE_FLUSH_INTERVAL", default_value = show_duration(analyzer_defaults::flush_interval()), value_parser = duration)]
    pub flush_interval: Duration,
    /// Status at or above which a request counts as an error (error_rate).
    #[arg(long, env = "LOGPIPE_ERROR_STATUS", default_value_t = 400)]
    pub error_status: u16,
    /// Level at or above which an application record counts as an error
    /// (error_share): debug, info, warning, error, critical.
    #[arg(long, env = "LOGPIPE_ERROR_LEVEL", default_value = "error", value_parser = parse_level)]
    pub error_level: logpipe_analyzer::parse::Level,
    /// Keys ranked per window in each top-K dimension (paths, clients, user
    /// agents, referrers, 4xx paths, 5xx paths), written to `access_top`; 0
    /// turns top-K off.
    #[arg(long, env = "LOGPIPE_TOP_K", default_value_t = TopSpec::DEFAULT.k)]
    pub top_k: u16,
    /// Keys held per dimension and window. Counts are exact while a window's
    /// distinct keys fit; beyond, each key's `error` bounds its overcount.
    /// Memory per open window grows with it (at most 6 × capacity keys of up
    /// to 256 bytes).
    #[arg(long, env = "LOGPIPE_TOP_CAPACITY", default_value_t = TopSpec::DEFAULT.capacity)]
    pub top_capacity: u16,
    /// How a request path becomes a top-K key: `stripped` (without the query
    /// string), `full` (as logged), `masked` (stripped, id-like segments such
    /// as numbers, UUIDs and long hex strings replaced by `{id}`).
    #[arg(long, env = "LOGPIPE_TOP_PATH", default_value = "stripped")]
    pub top_path: PathKey,
    /// Robust score (distance from the median of the source's recent final
    /// windows, in MADs or the metric's own noise) at which a window's
    /// requests, error rate or p99 is flagged in `access_anomaly`; 0 turns
    /// anomaly flags off.
    #[arg(long, env = "LOGPIPE_ANOMALY_THRESHOLD", default_value_t = AnomalySpec::DEFAULT.threshold)]
    pub anomaly_threshold: f64,
    /// Final windows per source the anomaly baseline remembers (scored from
    /// the 10th on).
    #[arg(long, env = "LOGPIPE_ANOMALY_HISTORY", default_value_t = AnomalySpec::DEFAULT.history)]
    pub anomaly_history: usize,
}

#[derive(Debug, Args, Clone)]
pub struct InfluxArgs {
    /// InfluxDB base URL, e.g. http://127.0.0.1:8086.
    #[arg(long, env = "LOGPIPE_INFLUX_URL")]
    pub influx_url: Option<String>,
    /// InfluxDB 1.x database (writes go to /write?db=).
    #[arg(long, env = "LOGPIPE_INFLUX_DB", conflicts_with = "influx_bucket")]
    pub influx_db: Option<String>,
    /// InfluxDB 1.x user (basic auth).
    #[arg(long, env = "LOGPIPE_INFLUX_USER")]
    pub influx_user: Option<String>,
    #[arg(long, env = "LOGPIPE_INFLUX_PASSWORD", hide_env_values = true)]
    pub influx_password: Option<String>,
    /// InfluxDB 2.x/3.x bucket (writes go to /api/v2/write; needs --influx-org and --influx-token).
    #[arg(long, env = "LOGPIPE_INFLUX_BUCKET")]
    pub influx_bucket: Option<String>,
    /// InfluxDB 2.x/3.x organization.
    #[arg(long, env = "LOGPIPE_INFLUX_ORG", requires = "influx_bucket")]
    pub influx_org: Option<String>,
    /// InfluxDB 2.x/3.x API token.
    #[arg(
        long,
        env = "LOGPIPE_INFLUX_TOKEN",
        hide_env_values = true,
        requires = "influx_bucket"
    )]
    pub influx_token: Option<String>,
    /// Create the 1.x database at start-up if it does not exist (otherwise a
    /// missing database is an error).
    #[arg(long, env = "LOGPIPE_INFLUX_CREATE_DB")]
    pub influx_create_db: bool,
    /// Timeout of one InfluxDB request.
    #[arg(long, env = "LOGPIPE_INFLUX_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub influx_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Consumer group; analyzers in one group share the partitions.
    #[arg(long, env = "LOGPIPE_GROUP", default_value = logpipe_wire::DEFAULT_GROUP)]
    pub group: String,
    /// Consume exactly these partitions (e.g. `0,1`) instead of sharing them
    /// through the group coordinator: no rebalances; each partition must be
    /// given to exactly one analyzer. For brokers whose group coordination is
    /// unreliable, or placement managed outside Kafka.
    #[arg(long, env = "LOGPIPE_PARTITIONS", value_delimiter = ',')]
    pub partitions: Option<Vec<i32>>,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
    /// How often consumed offsets are committed to the group, for lag tools
    /// (kafka-consumer-groups, Burrow). Resuming does not depend on them: the
    /// restore points stored with the windows do.
    #[arg(long, env = "LOGPIPE_COMMIT_INTERVAL", default_value = show_duration(analyzer_defaults::commit_interval()), value_parser = duration)]
    pub commit_interval: Duration,
}

/// What `analyze` and `replay` share: parsing, windows, InfluxDB, identity.
#[derive(Debug, Args)]
pub struct AnalysisArgs {
    #[command(flatten)]
    pub parse: FormatArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    #[command(flatten)]
    pub influx: InfluxArgs,
    /// Name of this analyzer in the self-metrics (default: hostname-pid;
    /// for a replay: replay-hostname-pid).
    #[arg(long, env = "LOGPIPE_ANALYZER_ID")]
    pub analyzer_id: Option<String>,
    /// Files remembered per partition to drop producer re-sends by (file, offset).
    #[arg(long, env = "LOGPIPE_DEDUP_FILES", default_value_t = analyzer_defaults::DEDUP_FILES)]
    pub dedup_files: usize,
    /// A line the producer published in pieces (`partial: idle`, after its
    /// --partial-line-timeout) is held until its rest comes; it becomes a
    /// dead letter when its source sends a record stamped this much later
    /// without the rest.
    #[arg(long, env = "LOGPIPE_PARTIAL_WAIT", default_value = show_duration(analyzer_defaults::partial_wait()), value_parser = duration)]
    pub partial_wait: Duration,
    /// Publish every final access-log window's sketches (counts, distinct
    /// clients, request times, top-K) to this topic, for `logpipe rollup`'s
    /// fleet-wide numbers (`logs.windows`; create it compacted). Acknowledged
    /// before the restore point that passes the window.
    #[arg(long, env = "LOGPIPE_FLEET_TOPIC")]
    pub fleet_topic: Option<String>,
}

impl AnalysisArgs {
    /// The analyzer these options describe, a member of `group` with
    /// windows of `spec` (its id `default_id` unless `--analyzer-id`).
    pub fn config(
        &self,
        group: logpipe_consumer::GroupConfig,
        spec: logpipe_analyzer::WindowSpec,
        formats: logpipe_analyzer::Formats,
        default_id: String,
    ) -> logpipe_analyzer::AnalyzerConfig {
        let id = self.analyzer_id.clone().unwrap_or(default_id);
        logpipe_analyzer::AnalyzerConfig {
            flush_interval: self.window.flush_interval,
            dedup_files: self.dedup_files,
            partial_wait: self.partial_wait,
            formats: std::sync::Arc::new(formats),
            dlq_topic: self.parse.dlq_topic.clone(),
            fleet_topic: self.fleet_topic.clone(),
            ..logpipe_analyzer::AnalyzerConfig::new(group, spec, id)
        }
    }
}

fn parse_level(s: &str) -> Result<logpipe_analyzer::parse::Level, String> {
    s.parse()
}

fn parse_zone(s: &str) -> Result<logpipe_analyzer::parse::Zone, String> {
    s.parse()
}

/// How lines are parsed, and where those that do not parse go.
#[derive(Debug, Args)]
pub struct FormatArgs {
    /// Log format: `combined` (nginx, plus an optional trailing
    /// `$request_time`), `common`, `apache-combined`, `json` (JSON lines with
    /// nginx variable names as keys), or a format pasted from the server's
    /// config — an nginx `log_format` line or its quoted string
    /// (`'$remote_addr - $remote_user [$time_local] "$request" $status ...'`),
    /// or an Apache `LogFormat` (`"%h %l %u %t \"%r\" %>s %b ... %D"`).
    ///
    /// Application logs: `python-json` (the records `produce
    /// --python-logging` publishes), a Python `logging.Formatter` string
    /// pasted as-is (`'%(asctime)s - %(name)s - %(levelname)s - %(message)s'`),
    /// or `app` (`2024-05-01T12:00:00.123Z INFO [logger] message`). Lines
    /// that do not start a record (a traceback) belong to the record before.
    #[arg(long, env = "LOGPIPE_FORMAT", default_value = "combined")]
    pub format: String,
    /// The zone of application-log times written without one (Python's
    /// `asctime` is the writer's local time): UTC, an offset (`+02:00`) or
    /// an IANA name (`Europe/Berlin`). A formats file may set it per source.
    #[arg(long, env = "LOGPIPE_TIMEZONE", default_value = "UTC", value_parser = parse_zone)]
    pub timezone: logpipe_analyzer::parse::Zone,
    /// The Python Formatter's `datefmt` for `%(asctime)s` (strftime), when
    /// it has one; default Python's `2023-12-12 11:02:09,123`.
    #[arg(long, env = "LOGPIPE_DATEFMT")]
    pub datefmt: Option<String>,
    /// A formats file (TOML) mapping source names (exact or glob) to formats,
    /// for groups that read several kinds of logs; --format is the default for
    /// sources it does not match. See docs/formats.md.
    #[arg(long, env = "LOGPIPE_FORMATS")]
    pub formats: Option<PathBuf>,
    /// Topic for lines that do not parse (with an `error` header).
    #[arg(long, env = "LOGPIPE_DLQ_TOPIC", default_value = logpipe_wire::DEFAULT_DLQ_TOPIC)]
    pub dlq_topic: String,
}

/// Recompute windows from what is on the topic; see `logpipe replay --help`.
#[derive(Debug, Args)]
#[command(after_long_help = REPLAY_HELP)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Start of the event-time range: RFC 3339 (`2024-05-01T00:00:00Z`,
    /// `2024-05-01T02:00:00+02:00`) or relative to now (`-6h`, `-2d`).
    /// Without it the range is open below.
    #[arg(long, env = "LOGPIPE_REPLAY_FROM", value_parser = time_arg, allow_hyphen_values = true)]
    pub from: Option<i64>,
    /// End of the event-time range (exclusive), same forms as --from.
    /// Without it, up to the end of the topic as it was when the replay began.
    #[arg(long, env = "LOGPIPE_REPLAY_TO", value_parser = time_arg, allow_hyphen_values = true)]
    pub to: Option<i64>,
    /// The longest a line takes from its server's log to Kafka. Reading
    /// starts at the first record ingested at --from minus this, and (with
    /// --to) stops at records ingested after --to plus this. Lines that
    /// reached Kafka later than this (backfilled history) are only found
    /// with --from-offsets earliest.
    #[arg(long, env = "LOGPIPE_MAX_DELAY", default_value = "1h", value_parser = duration)]
    pub max_delay: Duration,
    /// Where to start reading instead of by time: `earliest`, or
    /// `PARTITION:OFFSET,...` (only the partitions listed are read). Reads to
    /// the end of the topic as it was when the replay began; --from/--to
    /// still choose which windows are written.
    #[arg(long, env = "LOGPIPE_FROM_OFFSETS")]
    pub from_offsets: Option<String>,
    /// Read only these partitions (e.g. `0,1`), so several replay processes
    /// can split a topic.
    #[arg(long, env = "LOGPIPE_PARTITIONS", value_delimiter = ',')]
    pub partitions: Option<Vec<i32>>,
    /// Read and aggregate, print the plan and which windows would be
    /// written; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Send lines that do not parse to the dead-letter topic again (they were
    /// sent when the live analyzers read them; use after changing the format).
    #[arg(long)]
    pub dead_letter: bool,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
}

const REPLAY_HELP: &str = "\
Which windows are written: only those entirely inside [--from, --to). A
window that straddles a bound is left as it is in InfluxDB, so a replay never
replaces a correct point with a partial one. Points are idempotent: replaying
a range twice changes nothing; replaying after changing --format or --window
recomputes it. Restore points and offsets of the live analyzers are not
touched (the replay reads its partitions directly, outside any group).

Examples:
  # InfluxDB lost the last day: recompute it
  logpipe replay --brokers kafka:9092 --from -1d --influx-url http://influx:8086 --influx-db logs
  # history backfilled with `logpipe produce --from-beginning --exit-on-eof`
  logpipe replay --brokers kafka:9092 --from-offsets earliest --influx-url ... --influx-db logs
  # see what a range would read and write
  logpipe replay --brokers kafka:9092 --from 2024-05-01T00:00:00Z --to 2024-05-02T00:00:00Z --dry-run";

/// Parses an RFC 3339 time or `-<duration>` relative to now; ms since the epoch.
pub fn time_arg(s: &str) -> Result<i64, String> {
    time_at(s, chrono::Utc::now().timestamp_millis())
}

fn time_at(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now_ms);
    }
    if let Some(rel) = s.strip_prefix('-') {
        let d = humantime::parse_duration(rel)
            .map_err(|e| format!("{s:?}: {e} (use e.g. -6h, -2d, -30m)"))?;
        return Ok(now_ms - d.as_millis() as i64);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            format!("{s:?}: {e} (use RFC 3339 like 2024-05-01T00:00:00Z, or -6h relative to now)")
        })
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Directory to write `<name>.access.log` files into (created if missing).
    #[arg(long, env = "LOGPIPE_GENERATE_DIR")]
    pub dir: PathBuf,
    /// Virtual hosts, one file each.
    #[arg(
        long,
        env = "LOGPIPE_GENERATE_SITES",
        value_delimiter = ',',
        default_value = "shop,api,blog"
    )]
    pub sites: Vec<String>,
    /// Lines per second over all files.
    #[arg(long, env = "LOGPIPE_GENERATE_RATE", default_value_t = 300.0)]
    pub rate: f64,
    /// Rotate each file (rename to `.1`, start a new one) after this many lines; 0: never.
    #[arg(long, env = "LOGPIPE_GENERATE_ROTATE_LINES", default_value_t = 0)]
    pub rotate_lines: u64,
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    /// Kafka bootstrap servers, e.g. 127.0.0.1:9092.
    #[arg(long, env = "LOGPIPE_BROKERS")]
    pub brokers: String,
    /// The dead-letter topic.
    #[arg(long, env = "LOGPIPE_DLQ_TOPIC", default_value = logpipe_wire::DEFAULT_DLQ_TOPIC)]
    pub topic: String,
    /// How many of the most recent dead letters to show.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub count: usize,
    /// Keep running and print dead letters as they arrive (Ctrl-C to stop).
    #[arg(long, short = 'f')]
    pub tail: bool,
    /// Extra librdkafka properties, repeatable or comma-separated.
    #[arg(long = "kafka", value_name = "KEY=VALUE[,KEY=VALUE]", value_parser = key_values)]
    pub kafka: Vec<Vec<(String, String)>>,
}

#[derive(Debug, Args)]
pub struct RollupArgs {
    /// Kafka bootstrap servers, e.g. 127.0.0.1:9092.
    #[arg(long, env = "LOGPIPE_BROKERS")]
    pub brokers: String,
    /// The fleet topic the analyzers publish their window sketches to.
    #[arg(long, env = "LOGPIPE_FLEET_TOPIC", default_value = logpipe_wire::DEFAULT_FLEET_TOPIC)]
    pub topic: String,
    /// Consumer group; rollups in one group share the partitions (each
    /// partition holds whole windows).
    #[arg(long, env = "LOGPIPE_ROLLUP_GROUP", default_value = logpipe_analyzer::rollup::defaults::GROUP)]
    pub group: String,
    /// Extra librdkafka properties, as for `analyze`.
    #[arg(long = "kafka", env = "LOGPIPE_KAFKA", value_name = "KEY=VALUE[,KEY=VALUE]", value_parser = key_values)]
    pub kafka: Vec<Vec<(String, String)>>,
    #[command(flatten)]
    pub influx: InfluxArgs,
    /// A groups file (TOML): `[[group]]` tables with a `name` and optional
    /// `hosts` and `sources` glob lists, e.g. a site's hosts; a source may
    /// be in several groups. See docs/fleet.md.
    #[arg(long, env = "LOGPIPE_GROUPS")]
    pub groups: Option<PathBuf>,
    /// Do not write a group per host.
    #[arg(long, env = "LOGPIPE_NO_PER_HOST")]
    pub no_per_host: bool,
    /// How long a window waits for a source that sent the window before it
    /// (by the wall clock, from the window's first record).
    #[arg(long, env = "LOGPIPE_GRACE", default_value = show_duration(logpipe_analyzer::rollup::defaults::grace()), value_parser = duration)]
    pub grace: Duration,
    /// How long (in event time, behind the newest window) written windows
    /// are kept so a late or re-published source window updates them; older
    /// ones are forgotten (a record for them is logged and counted
    /// `too_old`).
    #[arg(long, env = "LOGPIPE_KEEP", default_value = show_duration(logpipe_analyzer::rollup::defaults::keep()), value_parser = duration)]
    pub keep: Duration,
    /// Ranked keys written per dimension and group (`access_fleet_top`).
    #[arg(long, env = "LOGPIPE_TOP", default_value_t = 10)]
    pub top: u16,
    /// How often changed points are written.
    #[arg(long, env = "LOGPIPE_FLUSH_INTERVAL", default_value = "1s", value_parser = duration)]
    pub flush_interval: Duration,
    /// Read the whole topic from its beginning (outside the group, no
    /// restore points), write every window, exit: rebuilds the fleet
    /// points, e.g. after a replay re-published old windows.
    #[arg(long, env = "LOGPIPE_RECOMPUTE")]
    pub recompute: bool,
    /// Name in the self-metrics (default: hostname-pid).
    #[arg(long, env = "LOGPIPE_ROLLUP_ID")]
    pub id: Option<String>,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Partitions of each topic.
    #[arg(long, env = "LOGPIPE_PARTITIONS", default_value_t = 6)]
    pub partitions: i32,
    /// Number of mock brokers in the cluster.
    #[arg(long, env = "LOGPIPE_BROKERS_COUNT", default_value_t = 1)]
    pub brokers_count: i32,
    /// Topics to create.
    #[arg(long = "topic", env = "LOGPIPE_TOPICS", value_delimiter = ',', default_values_t = [logpipe_wire::DEFAULT_TOPIC.to_string(), logpipe_wire::DEFAULT_DLQ_TOPIC.to_string(), logpipe_wire::DEFAULT_FLEET_TOPIC.to_string()])]
    pub topics: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// A log to follow (in --format, default nginx `combined`); without it,
    /// traffic is generated.
    #[arg(long, env = "LOGPIPE_INPUT")]
    pub input: Option<PathBuf>,
    /// Read --input from its beginning instead of its end.
    #[arg(long, env = "LOGPIPE_FROM_BEGINNING")]
    pub from_beginning: bool,
    /// Stop at the end of --input: every window is flushed as final, then exit 0.
    #[arg(long, env = "LOGPIPE_EXIT_ON_EOF", requires = "input")]
    pub exit_on_eof: bool,
    /// Print closed windows as lines of a table instead of the full-screen
    /// view (`logpipe top` over the demo's own windows) that a terminal
    /// gets by default. Output that is not a terminal, and --exit-on-eof,
    /// always get the table.
    #[arg(long, env = "LOGPIPE_PLAIN")]
    pub plain: bool,
    /// Analyzers (consumer-group members) to run.
    #[arg(long, env = "LOGPIPE_ANALYZERS", default_value_t = 2)]
    pub analyzers: usize,
    /// Partitions of the embedded topic.
    #[arg(long, env = "LOGPIPE_PARTITIONS", default_value_t = 6)]
    pub partitions: i32,
    /// Generated lines per second (without --input).
    #[arg(long, env = "LOGPIPE_RATE", default_value_t = 1500.0)]
    pub rate: f64,
    /// Most lines in one Kafka record (1: wire v1, a record per line; see
    /// `logpipe produce --help`).
    #[arg(long, env = "LOGPIPE_LINES_PER_RECORD", default_value_t = logpipe_producer::config::defaults::lines_per_record(), value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub lines_per_record: usize,
    #[command(flatten)]
    pub window: WindowArgs,
    #[command(flatten)]
    pub parse: FormatArgs,
    #[command(flatten)]
    pub influx: InfluxArgs,
    /// Line-protocol output file when no --influx-url is given; replaced,
    /// not appended to. Default: a new file per run in the temporary
    /// directory, named on the first line of output.
    #[arg(long, env = "LOGPIPE_LP_OUT")]
    pub lp_out: Option<PathBuf>,
    /// With --exit-on-eof: also write the closing totals (requests, traffic,
    /// errors, status classes, time span, busiest window, dead letters by
    /// kind) as JSON to this file.
    #[arg(long, env = "LOGPIPE_SUMMARY_JSON", requires = "exit_on_eof")]
    pub summary_json: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_properties_split_on_commas_that_start_a_property() {
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            key_values("debug=broker,topic,acks=all").unwrap(),
            vec![kv("debug", "broker,topic"), kv("acks", "all")]
        );
        assert_eq!(
            key_values("sasl.jaas=a=b,c").unwrap(),
            vec![kv("sasl.jaas", "a=b,c")]
        );
        assert_eq!(
            key_values("bootstrap.servers=h1:9092,h2:9092").unwrap(),
            vec![kv("bootstrap.servers", "h1:9092,h2:9092")]
        );
        assert!(key_values("nokey").unwrap_err().contains("key=value"));
    }

    /// `logpipe produce` without options runs with the library's defaults
    /// (clap reads them from `logpipe_producer::config::defaults`).
    #[test]
    fn produce_defaults_are_the_librarys() {
        let cli = Cli::try_parse_from([
            "logpipe",
            "produce",
            "--brokers",
            "b:9092",
            "/var/log/a.log",
        ])
        .unwrap();
        let Command::Produce(a) = cli.command else {
            panic!("not produce");
        };
        let lib = logpipe_producer::ProducerConfig::new("b", "t", "h", Vec::new());
        assert_eq!(a.max_line_bytes, lib.max_line_bytes);
        assert_eq!(a.max_in_flight, lib.max_in_flight_bytes);
        assert_eq!(a.lines_per_record, lib.packing.lines_per_record);
        assert_eq!(a.record_max_bytes, lib.packing.record_max_bytes);
        assert_eq!(a.rotate_wait, lib.rotate_wait);
        assert_eq!(a.poll_interval, lib.poll_interval);
        assert_eq!(a.scan_interval, lib.scan_interval);
        assert_eq!(a.checkpoint_interval, lib.checkpoint_interval);
        assert_eq!(a.shutdown_timeout, lib.shutdown_timeout);
        assert_eq!(a.stats_interval, lib.stats_interval);
        assert_eq!(show_bytes(1 << 20), "1MiB");
        assert_eq!(show_duration(Duration::from_millis(500)), "500ms");
    }
}

#[cfg(test)]
mod time_tests {
    use super::time_at;

    #[test]
    fn times_are_rfc3339_or_relative_to_now() {
        let now = 1_704_067_200_000;
        assert_eq!(time_at("2024-01-01T00:00:00Z", 0), Ok(now));
        assert_eq!(time_at("2024-01-01T02:00:00+02:00", 0), Ok(now));
        assert_eq!(time_at("2024-01-01T00:00:00.250Z", 0), Ok(now + 250));
        assert_eq!(time_at("-6h", now), Ok(now - 6 * 3_600_000));
        assert_eq!(time_at("-1d", now), Ok(now - 86_400_000));
        assert_eq!(time_at("now", now), Ok(now));
        let e = time_at("yesterday", now).unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
        let e = time_at("-6 fortnights", now).unwrap_err();
        assert!(e.contains("-6h"), "{e}");
    }
}
