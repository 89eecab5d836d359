//! The tail-producer: follow log files and publish every line to Kafka, with
//! checkpoints that advance only on proof of delivery.
//!
//! - [`tail`]: one followed file — complete lines, partial-line holding,
//!   truncation (a new generation).
//! - [`publish`]: the idempotent Kafka producer and per-file delivery tracking.
//! - [`checkpoint`]: versioned, atomically written read positions.
//!
//! File identity is `device:inode:generation` (the `file` header). This slice
//! handles plain files, truncation and restarts; rotation, globs and inode
//! reuse are handled in the producer issue and documented there.

pub mod checkpoint;
pub mod publish;
pub mod tail;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use checkpoint::{Checkpoint, CheckpointError, FilePosition};
use publish::{Line, PublishError, Publisher};
use tail::{ReadError, Tailed};

/// Settings of `logpipe produce`.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub brokers: String,
    pub topic: String,
    /// Node name: header `host` and the first part of the key.
    pub host: String,
    /// Source name for every path (default: each file's path).
    pub source: Option<String>,
    pub paths: Vec<PathBuf>,
    /// Start never-seen files at their beginning instead of their end.
    pub from_beginning: bool,
    /// Read every path to its end, wait for all acks, return.
    pub exit_on_eof: bool,
    /// Where `checkpoints.json` lives; none: no resume across restarts.
    pub checkpoint_dir: Option<PathBuf>,
    /// How often a file at its end is looked at again.
    pub poll_interval: Duration,
    /// Extra librdkafka properties.
    pub extra: Vec<(String, String)>,
}

/// Why the producer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("Kafka did not acknowledge {0} lines in time")]
    Unacknowledged(i32),
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProduceSummary {
    pub lines: u64,
    pub bytes: u64,
}

struct Input {
    tailed: Tailed,
    slot: usize,
    source: String,
    key: Vec<u8>,
    file_id: String,
    /// Path key in the checkpoint.
    path: PathBuf,
}

/// Runs until every file reached its end (`exit_on_eof`) or `shutdown` is set;
/// then waits for outstanding acks and writes the checkpoint.
pub fn run(cfg: ProducerConfig, shutdown: Arc<AtomicBool>) -> Result<ProduceSummary, ProduceError> {
    let publisher = Publisher::new(&cfg.brokers, &cfg.topic, &cfg.extra)?;
    let cp_path = cfg
        .checkpoint_dir
        .as_ref()
        .map(|d| d.join("checkpoints.json"));
    let mut checkpoint = match &cp_path {
        Some(p) => Checkpoint::load(p)?,
        None => Checkpoint::default(),
    };
    let mut inputs = Vec::new();
    for path in &cfg.paths {
        let open_err = |source| ProduceError::Open {
            path: path.clone(),
            source,
        };
        let md = std::fs::metadata(path).map_err(open_err)?;
        use std::os::unix::fs::MetadataExt;
        let (offset, generation) = match checkpoint.files().get(path) {
            Some(p) if p.dev == md.dev() && p.ino == md.ino() && p.offset <= md.len() => {
                (p.offset, p.generation)
            }
            Some(p) if p.dev == md.dev() && p.ino == md.ino() => (0, p.generation + 1),
            // A checkpointed path now holding another file: it is new since we last ran.
            Some(_) => (0, 0),
            None if cfg.from_beginning => (0, 0),
            None => (md.len(), 0),
        };
        let tailed = Tailed::open(path, offset, generation).map_err(open_err)?;
        let source = cfg
            .source
            .clone()
            .unwrap_or_else(|| path.display().to_string());
        let key = logpipe_wire::record_key(&cfg.host, &source).into_bytes();
        let file_id = tailed.file_id();
        tracing::info!(path = %path.display(), %source, offset, file = %file_id, "following file");
        inputs.push(Input {
            slot: publisher.add_slot(offset),
            tailed,
            source,
            key,
            file_id,
            path: path.clone(),
        });
    }

    let mut summary = ProduceSummary::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut last_checkpoint = Instant::now();
    while !shutdown.load(Ordering::Relaxed) {
        let mut progressed = false;
        let now_ms = chrono_now_ms();
        for input in &mut inputs {
            let Input {
                tailed,
                slot,
                source,
                key,
                file_id,
                path,
            } = input;
            let n = tailed
                .read_lines(&mut buf, |value, offset, end| {
                    summary.lines += 1;
                    summary.bytes += value.len() as u64;
                    let line = Line {
                        slot: *slot,
                        key,
                        value,
                        host: &cfg.host,
                        source,
                        file_id,
                        offset,
                        end,
                        timestamp_ms: now_ms,
                    };
                    publisher.send(&line)
                })
                .map_err(|e| match e {
                    ReadError::Io(source) => ProduceError::Read {
                        path: path.clone(),
                        source,
                    },
                    ReadError::Sink(e) => ProduceError::Publish(e),
                })?;
            progressed |= n > 0;
        }
        if !progressed {
            if cfg.exit_on_eof {
                break;
            }
            for input in &mut inputs {
                if input
                    .tailed
                    .was_truncated()
                    .map_err(|source| ProduceError::Read {
                        path: input.path.clone(),
                        source,
                    })?
                {
                    tracing::warn!(path = %input.path.display(), "file truncated; reading it again from the start as a new generation");
                    input.tailed.restart_after_truncation().map_err(|source| {
                        ProduceError::Read {
                            path: input.path.clone(),
                            source,
                        }
                    })?;
                    input.file_id = input.tailed.file_id();
                    // Acks of the old generation must not count for the new one.
                    while publisher.in_flight() > 0 && !shutdown.load(Ordering::Relaxed) {
                        let _ = publisher.flush(Duration::from_millis(200));
                        publisher.check()?;
                    }
                    publisher.reset_slot(input.slot);
                }
            }
            std::thread::sleep(cfg.poll_interval);
        }
        publisher.check()?;
        if let Some(p) = &cp_path {
            if last_checkpoint.elapsed() >= Duration::from_secs(1) {
                last_checkpoint = Instant::now();
                record_positions(&mut checkpoint, &inputs, &publisher);
                checkpoint.store(p)?;
            }
        }
    }
    if cfg.exit_on_eof {
        // The input is complete, so a last line without a newline is whole.
        for input in &mut inputs {
            if let Some((value, offset, end)) = input.tailed.take_unterminated() {
                summary.lines += 1;
                summary.bytes += value.len() as u64;
                let i = &*input;
                publisher.send(&Line {
                    slot: i.slot,
                    key: &i.key,
                    value: &value,
                    host: &cfg.host,
                    source: &i.source,
                    file_id: &i.file_id,
                    offset,
                    end,
                    timestamp_ms: chrono_now_ms(),
                })?;
            }
        }
    }
    // Drain: wait for every ack so the checkpoint covers all that was read.
    let deadline = Instant::now() + Duration::from_secs(if cfg.exit_on_eof { 3600 } else { 30 });
    while publisher.in_flight() > 0 && Instant::now() < deadline {
        let _ = publisher.flush(Duration::from_millis(500));
        publisher.check()?;
    }
    let left = publisher.in_flight();
    if let Some(p) = &cp_path {
        record_positions(&mut checkpoint, &inputs, &publisher);
        checkpoint.store(p)?;
    }
    if left > 0 {
        return Err(ProduceError::Unacknowledged(left));
    }
    tracing::info!(
        lines = summary.lines,
        bytes = summary.bytes,
        "producer done; every line acknowledged"
    );
    Ok(summary)
}

fn record_positions(cp: &mut Checkpoint, inputs: &[Input], publisher: &Publisher) {
    for i in inputs {
        if let Some(offset) = publisher.delivered(i.slot) {
            cp.files_mut().insert(
                i.path.clone(),
                FilePosition {
                    dev: i.tailed.dev,
                    ino: i.tailed.ino,
                    generation: i.tailed.generation,
                    offset,
                },
            );
        }
    }
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
