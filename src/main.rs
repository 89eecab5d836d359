//! `logpipe`: one binary, one subcommand per role. Parses flags, sets up
//! logging, calls the role's `run`, maps errors to exit codes (1 runtime, 2 usage).

#[macro_use]
mod output;
mod cli;
mod config;
mod demo;
mod metrics;
mod replay;
mod status;
mod summary;
mod top;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use cli::{
    AnalyzeArgs, BrokerArgs, Cli, Command, DlqArgs, FormatArgs, GenerateArgs, InfluxArgs,
    ProduceArgs, WindowArgs,
};
use logpipe_analyzer::anomaly::AnomalySpec;
use logpipe_analyzer::parse::{Formats, Parser as LogParser};
use logpipe_analyzer::top::TopSpec;
use logpipe_analyzer::{AnalyzerConfig, Control, InfluxApi, InfluxConfig, InfluxSink, WindowSpec};
use logpipe_consumer::{GroupConfig, MockBroker};

/// mimalloc, also for librdkafka's C allocations (`override`): the producer
/// allocates headers on the reading thread and librdkafka frees them on its
/// broker thread, which glibc's malloc serialises on an arena lock.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // --config's settings become environment variables before the command
    // line is parsed: flags and variables already set override them.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let config = match config::apply(&args) {
        Ok(c) => c,
        Err(e) => {
            crate::errln!("logpipe: error: {e:#}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(&args);
    // The demo's first screen is its table: the components' start-up lines
    // and each dead letter (summed by kind every 10 s instead) would fill
    // it. LOGPIPE_LOG=info shows them.
    let default_filter = match cli.command {
        Command::Demo(_) => format!("warn,{}=off", logpipe_analyzer::DEAD_LETTER_LOG),
        _ => "info".to_string(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOGPIPE_LOG")
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(output::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The commands that exist to print stop, cleanly, when their reader goes.
    if matches!(
        cli.command,
        Command::Demo(_) | Command::Dlq(_) | Command::Replay(_) | Command::Status(_)
    ) {
        output::stop_when_closed();
    }
    let result = match cli.command {
        Command::Produce(a) => produce(a, config),
        Command::Analyze(a) => analyze(a),
        Command::Broker(a) => broker(a),
        Command::Demo(a) => demo::run(a),
        Command::Dlq(a) => dlq(a),
        Command::Replay(a) => replay::run(a),
        Command::Archive(a) => archive(a),
        Command::Rollup(a) => rollup(a),
        Command::Status(a) => status::run(a),
        Command::Top(a) => top::run(a),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "logpipe",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { dir } => man(&dir),
        Command::Generate(a) => generate(a),
    };
    if let Err(e) = result {
        crate::errln!("logpipe: error: {e:#}");
        std::process::exit(1);
    }
}

pub use output::shutdown;

pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

pub fn window_spec(w: &WindowArgs) -> Result<WindowSpec> {
    let window_ms = w.window.as_millis() as i64;
    if window_ms < 1000 || window_ms % 1000 != 0 {
        bail!(
            "--window must be a whole number of seconds, at least 1s (got {:?})",
            w.window
        );
    }
    if w.flush_interval.is_zero() {
        bail!("--flush-interval must be above 0");
    }
    Ok(WindowSpec {
        window_ms,
        lateness_ms: w.lateness.as_millis() as i64,
        error_status: w.error_status,
        error_level: w.error_level,
        top: top_spec(w)?,
        anomaly: anomaly_spec(w)?,
    })
}

fn anomaly_spec(w: &WindowArgs) -> Result<Option<AnomalySpec>> {
    if !(w.anomaly_threshold.is_finite() && w.anomaly_threshold >= 0.0) {
        bail!(
            "--anomaly-threshold must be 0 (off) or above (got {})",
            w.anomaly_threshold
        );
    }
    if w.anomaly_threshold == 0.0 {
        return Ok(None);
    }
    let min_history = AnomalySpec::DEFAULT.min_history;
    if w.anomaly_history < min_history {
        bail!(
            "--anomaly-history must be at least {min_history} windows (got {})",
            w.anomaly_history
        );
    }
    Ok(Some(AnomalySpec {
        history: w.anomaly_history,
        min_history,
        threshold: w.anomaly_threshold,
    }))
}

fn top_spec(w: &WindowArgs) -> Result<TopSpec> {
    if w.top_k > w.top_capacity {
        bail!(
            "--top-k {} is above --top-capacity {}: a summary cannot rank more keys than it holds",
            w.top_k,
            w.top_capacity
        );
    }
    Ok(TopSpec {
        k: w.top_k,
        capacity: w.top_capacity,
        path: w.top_path,
    })
}

pub fn influx_sink(i: &InfluxArgs) -> Result<Option<InfluxSink>> {
    let Some(url) = &i.influx_url else {
        return Ok(None);
    };
    let api = match (&i.influx_db, &i.influx_bucket) {
        (Some(db), None) => {
            if i.influx_password.is_some() && i.influx_user.is_none() {
                bail!("--influx-password needs --influx-user");
            }
            InfluxApi::V1 {
                db: db.clone(),
                user: i.influx_user.clone(),
                password: i.influx_password.clone(),
            }
        }
        (None, Some(bucket)) => InfluxApi::V2 {
            org: i
                .influx_org
                .clone()
                .context("--influx-bucket needs --influx-org")?,
            bucket: bucket.clone(),
            token: i
                .influx_token
                .clone()
                .context("--influx-bucket needs --influx-token")?,
        },
        _ => bail!("--influx-url needs --influx-db (InfluxDB 1.x) or --influx-bucket (2.x/3.x)"),
    };
    let cfg = InfluxConfig {
        url: url.clone(),
        api,
        timeout: i.influx_timeout,
    };
    Ok(Some(InfluxSink::new(cfg)?))
}

fn generate(a: GenerateArgs) -> Result<()> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let stop = shutdown()?;
    let per_site = a.rate / a.sites.len().max(1) as f64;
    let threads: Vec<_> = a
        .sites
        .iter()
        .enumerate()
        .map(|(i, site)| {
            demo::spawn_generator(
                a.dir.join(format!("{site}.access.log")),
                i as u64,
                per_site,
                a.rotate_lines,
                stop.clone(),
            )
        })
        .collect::<Result<_>>()?;
    crate::errln!(
        "logpipe generate: {} lines/s into {} ({})",
        a.rate,
        a.dir.display(),
        a.sites.join(", ")
    );
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// The producer's inputs: the config file's `[[input]]` tables, then the
/// command line's paths.
fn inputs(
    config: Option<(&std::path::Path, &str)>,
    cli: Option<&logpipe_producer::discover::InputSpec>,
) -> Result<Vec<logpipe_producer::discover::InputSpec>> {
    let mut inputs = Vec::new();
    if let Some((path, text)) = config {
        inputs = logpipe_producer::discover::inputs_from_toml(text)
            .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
    }
    inputs.extend(cli.cloned());
    Ok(inputs)
}

/// SIGHUP: the inputs of `config` read again and handed to the producer
/// (its other settings need a restart).
fn reload_on_hangup(
    config: Option<std::path::PathBuf>,
    cli: Option<logpipe_producer::discover::InputSpec>,
    reload: std::sync::Arc<logpipe_producer::Reload>,
) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .context("installing the SIGHUP handler")?;
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                let Some(path) = &config else {
                    tracing::warn!("SIGHUP: no --config to read again; inputs unchanged");
                    continue;
                };
                let read = std::fs::read_to_string(path)
                    .with_context(|| format!("--config {}", path.display()))
                    .and_then(|text| {
                        // The whole file is checked, as at start.
                        config::settings(&text, path, "produce")?;
                        inputs(Some((path, &text)), cli.as_ref())
                    });
                match read {
                    Ok(i) => {
                        tracing::info!(config = %path.display(), "SIGHUP: inputs read again (other settings take a restart)");
                        reload.request(i);
                    }
                    Err(e) => tracing::error!("SIGHUP: {e:#}; inputs unchanged"),
                }
            }
        })
        .context("starting the SIGHUP thread")?;
    Ok(())
}

fn produce(a: ProduceArgs, config: Option<(std::path::PathBuf, String)>) -> Result<()> {
    let cli_input = (!a.paths.is_empty()).then(|| logpipe_producer::discover::InputSpec {
        paths: a.paths.clone(),
        exclude: a.exclude.clone(),
        source: a.source.clone(),
    });
    let inputs = inputs(
        config.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
        cli_input.as_ref(),
    )?;
    let network =
        a.tcp.is_some() || a.http.is_some() || a.python_logging.is_some() || a.exec.is_some();
    if network && a.exit_on_eof {
        bail!("--exit-on-eof reads files to their end; it cannot be combined with --tcp, --http, --python-logging or --exec, which have no end");
    }
    if a.checkpoint_dir.is_none() && !a.exit_on_eof && !inputs.is_empty() {
        tracing::warn!("no --checkpoint-dir: a restart starts again at the end of the files, so lines written while logpipe is stopped are not read");
    }
    let host = a.host.unwrap_or_else(hostname);
    let mut cfg =
        logpipe_producer::ProducerConfig::new(&a.kafka.brokers, &a.kafka.topic, &host, inputs);
    cfg.from_beginning = a.from_beginning;
    cfg.exit_on_eof = a.exit_on_eof;
    cfg.checkpoint_dir = a.checkpoint_dir;
    cfg.ignore_older = a.ignore_older;
    cfg.max_line_bytes = a.max_line_bytes;
    cfg.partial_line_timeout = a.partial_line_timeout;
    cfg.max_in_flight_bytes = a.max_in_flight;
    cfg.packing = logpipe_producer::Packing {
        lines_per_record: a.lines_per_record,
        record_max_bytes: a.record_max_bytes,
    };
    cfg.rotate_wait = a.rotate_wait;
    cfg.poll_interval = a.poll_interval;
    cfg.scan_interval = a.scan_interval;
    cfg.checkpoint_interval = a.checkpoint_interval;
    cfg.shutdown_timeout = a.shutdown_timeout;
    cfg.stats_interval = a.stats_interval;
    cfg.extra = cli::flat(a.kafka.kafka);
    let c = &mut cfg.collect;
    c.tcp = a.tcp;
    c.tcp_source = a.tcp_source;
    c.http = a.http;
    c.http_source = a.http_source;
    c.http_max_body = a.http_max_body;
    c.http_ack_timeout = a.http_ack_timeout;
    c.python_logging = a.python_logging;
    c.exec = a.exec;
    c.exec_restart_backoff = a.exec_restart_backoff;
    c.max_line_bytes = a.max_line_bytes;
    c.max_connections = a.max_connections;
    let control = logpipe_producer::Control {
        shutdown: shutdown()?,
        ..Default::default()
    };
    reload_on_hangup(config.map(|c| c.0), cli_input, control.reload.clone())?;
    let (scrape, ready) = metrics::producer(control.stats.clone());
    metrics::serve(a.metrics.metrics_addr.as_deref(), "produce", scrape, ready)?;
    let summary = logpipe_producer::run_with(cfg, control)?;
    crate::errln!(
        "logpipe produce: {} lines ({} bytes) acknowledged by Kafka",
        summary.lines,
        summary.bytes
    );
    Ok(())
}

/// The parsers of `--format` / `--formats`.
pub fn formats(a: &FormatArgs) -> Result<Formats> {
    let format = LogParser::with_time(&a.format, a.datefmt.as_deref(), a.timezone)
        .map_err(|e| anyhow::anyhow!("--format: {e}"))?;
    Ok(match &a.formats {
        Some(path) => {
            Formats::load(path, format, a.timezone).map_err(|e| anyhow::anyhow!("--formats {e}"))?
        }
        None => Formats::single(format),
    })
}

fn analyze(a: AnalyzeArgs) -> Result<()> {
    let spec = window_spec(&a.analysis.window)?;
    let formats = formats(&a.analysis.parse)?;
    let sink = influx_sink(&a.analysis.influx)?
        .context("logpipe analyze needs --influx-url and --influx-db (or --influx-bucket)")?;
    // Wrong URL, credentials or database: say so now, before joining the group.
    sink.check_ready(a.analysis.influx.influx_create_db)?;
    let group = GroupConfig {
        brokers: a.kafka.brokers,
        topic: a.kafka.topic,
        group: a.group,
        extra: cli::flat(a.kafka.kafka),
        partitions: a.partitions,
    };
    let default_id = format!("{}-{}", hostname(), std::process::id());
    let cfg = AnalyzerConfig {
        commit_interval: a.commit_interval,
        ..a.analysis.config(group, spec, formats, default_id)
    };
    let control = Control::with_shutdown(shutdown()?);
    let (scrape, ready) = metrics::analyzer(control.clone());
    metrics::serve(a.metrics.metrics_addr.as_deref(), "analyze", scrape, ready)?;
    let counters = logpipe_analyzer::run(cfg, Box::new(sink), None, control)?;
    crate::errln!(
        "logpipe analyze: {} records consumed, {} duplicates, {} parsed, {} dead-lettered, {} counted, {} late, {} replayed, {} final windows written",
        counters.consumed,
        counters.duplicates,
        counters.parsed,
        counters.dead_lettered,
        counters.counted,
        counters.late,
        counters.replayed,
        counters.windows_written
    );
    Ok(())
}

fn rollup(a: cli::RollupArgs) -> Result<()> {
    use logpipe_analyzer::rollup::{self, Groups, RollupConfig, RollupSpec};
    let mut groups = Groups::new(!a.no_per_host);
    if let Some(f) = &a.groups {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading the groups file {}", f.display()))?;
        groups = groups
            .with_file(&text)
            .map_err(|e| anyhow::anyhow!("groups file {}: {e}", f.display()))?;
    }
    let sink = influx_sink(&a.influx)?
        .context("logpipe rollup needs --influx-url and --influx-db (or --influx-bucket)")?;
    sink.check_ready(a.influx.influx_create_db)?;
    let cfg = RollupConfig {
        group: GroupConfig {
            brokers: a.brokers,
            topic: a.topic,
            group: a.group,
            extra: cli::flat(a.kafka),
            partitions: None,
        },
        spec: RollupSpec {
            grace: a.grace,
            keep_ms: a.keep.as_millis().min(i64::MAX as u128) as i64,
            top_k: a.top,
            groups: std::sync::Arc::new(groups),
        },
        flush_interval: a.flush_interval,
        id: a
            .id
            .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id())),
        recompute: a.recompute,
        status: Default::default(),
    };
    let (scrape, ready) = metrics::rollup(cfg.status.clone());
    metrics::serve(a.metrics.metrics_addr.as_deref(), "rollup", scrape, ready)?;
    let control = Control::with_shutdown(shutdown()?);
    let c = rollup::run(cfg, Box::new(sink), control)?;
    crate::errln!(
        "logpipe rollup: {} records read, {} replaced, {} rejected, {} too old, {} fleet points written",
        c.records,
        c.replaced,
        c.rejected,
        c.too_old,
        c.points_written
    );
    Ok(())
}

/// Man pages: `logpipe.1` and `logpipe-<command>.1` for every command.
fn man(dir: &std::path::Path) -> Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    let write = |name: String, c: clap::Command| -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(c)
            .title(name.to_uppercase())
            .render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("logpipe-{}", sub.get_name());
        write(name.clone(), sub.clone().name(name))?;
    }
    write("logpipe".into(), cmd)
}

fn archive(a: cli::ArchiveArgs) -> Result<()> {
    let progress = std::sync::Arc::new(logpipe_archive::Progress::default());
    let (scrape, ready) = metrics::archive(progress.clone());
    metrics::serve(a.metrics.metrics_addr.as_deref(), "archive", scrape, ready)?;
    Ok(logpipe_archive::run_with(
        a.into(),
        &shutdown()?,
        &progress,
    )?)
}

fn dlq(a: DlqArgs) -> Result<()> {
    use logpipe_analyzer::{render_dead_letter as render, DlqReader};
    let reader = DlqReader::open(&a.brokers, &a.topic, a.count, &cli::flat(a.kafka))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let recent = reader.recent().map_err(|e| anyhow::anyhow!("{e}"))?;
    if recent.is_empty() {
        // Empty is not proof that every line parsed: retention deletes
        // dead letters too, and no analyzer may have run.
        crate::errln!(
            "logpipe dlq: {} holds no dead letter (none was written, or retention deleted them){}",
            a.topic,
            if a.tail {
                "; waiting for new ones (Ctrl-C stops)"
            } else {
                ""
            }
        );
    }
    for d in &recent {
        crate::outln!("{}", render(d));
    }
    if a.tail {
        let stop = shutdown()?;
        while !stop.is_requested() {
            if let Some(d) = reader
                .next(Duration::from_millis(200))
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                crate::outln!("{}", render(&d));
            }
        }
    }
    Ok(())
}

fn broker(a: BrokerArgs) -> Result<()> {
    let stop = shutdown()?;
    let b = MockBroker::start(a.brokers_count).context("starting the mock cluster")?;
    for t in &a.topics {
        b.create_topic(t, a.partitions)
            .with_context(|| format!("creating topic {t}"))?;
    }
    // The first line of stdout is the bootstrap address, for scripts and tests.
    crate::outln!("{}", b.bootstrap());
    crate::errln!("logpipe broker: development broker (librdkafka mock cluster) on {}; topics {:?} with {} partitions; Ctrl-C to stop", b.bootstrap(), a.topics, a.partitions);
    stop.wait();
    Ok(())
}
