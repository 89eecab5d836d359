//! The tail-producer: follow log files and publish every line to Kafka, with
//! checkpoints that advance only on proof of delivery.
//!
//! - [`config`]: the settings and their defaults (the CLI shows the same).
//! - [`discover`]: which paths (globs, excludes) and under which source name.
//! - [`identity`]: which file is which — device, inode, first-line fingerprint,
//!   generation; the reasons are written there.
//! - [`tail`]: one file's bytes cut into lines (partial, `\r\n`, too long).
//! - `follow`: the loop over the followed files — each a phase and an
//!   identity, reconciled with every scan — and the checkpoint it assembles
//!   (how files are followed is written there).
//! - `backfill`: compressed rotations read once before following.
//! - [`publish`]: the idempotent Kafka producer and per-file delivery tracking.
//! - [`checkpoint`]: versioned, atomically written read positions.
//! - [`collect`]: inputs that are not files (TCP, HTTP, Python `logging`, plugins).
//! - [`stats`]: health counters.

mod backfill;
pub mod checkpoint;
pub mod collect;
pub mod config;
pub mod discover;
mod error;
mod follow;
pub mod identity;
pub mod publish;
pub mod stats;
pub mod tail;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use follow::Follower;
use logpipe_wire::Shutdown;
use publish::PublishError;
pub use stats::Stats;

pub use config::ProducerConfig;
pub use error::ProduceError;
pub use publish::Packing;

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProduceSummary {
    pub lines: u64,
    pub bytes: u64,
}

/// How a caller stops a run and watches it.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// A stop: stop reading, wait for acks, write the checkpoint. An abort:
    /// return at once, no drain, no checkpoint, as `kill -9` (tests).
    pub shutdown: Shutdown,
    /// How many records may be sent: reading waits, record by record, once
    /// that many were (nothing is lost: the files are the buffer).
    /// `logpipe demo` moves it as its analyzers fetch, so the embedded
    /// broker never holds more unread records than it keeps.
    pub send_limit: Arc<SendLimit>,
    pub stats: Arc<Stats>,
    /// New inputs to follow from now on (SIGHUP re-reads `--config`).
    pub reload: Arc<Reload>,
}

/// Inputs handed to a running producer ([`Control::reload`]): it follows
/// their files from the next scan; files only the old inputs matched are
/// read to their end and closed, as rotated files are.
#[derive(Debug, Default)]
pub struct Reload(std::sync::Mutex<Option<Vec<discover::InputSpec>>>);

impl Reload {
    /// Asks the producer to follow `inputs` instead.
    pub fn request(&self, inputs: Vec<discover::InputSpec>) {
        *self.0.lock().unwrap() = Some(inputs);
    }
    pub(crate) fn take(&self) -> Option<Vec<discover::InputSpec>> {
        self.0.lock().unwrap().take()
    }
}

/// The number of records a producer may have sent ([`Control::send_limit`]);
/// no limit by default.
#[derive(Debug)]
pub struct SendLimit(AtomicU64);

impl Default for SendLimit {
    fn default() -> Self {
        SendLimit(AtomicU64::new(u64::MAX))
    }
}

impl SendLimit {
    /// Records may be sent while fewer than `n` were.
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    /// A record may be sent after `sent` were.
    pub fn allows(&self, sent: u64) -> bool {
        sent < self.0.load(Ordering::Relaxed)
    }
}

/// Runs until every file reached its end (`exit_on_eof`) or `shutdown` is
/// asked; then waits for outstanding acks and writes the checkpoint.
pub fn run(cfg: ProducerConfig, shutdown: Shutdown) -> Result<ProduceSummary, ProduceError> {
    run_with(
        cfg,
        Control {
            shutdown,
            ..Control::default()
        },
    )
}

/// [`run`] with a hold switch and counters the caller can read.
pub fn run_with(cfg: ProducerConfig, ctl: Control) -> Result<ProduceSummary, ProduceError> {
    let collect_cfg = cfg.collect.clone();
    let mut p = Follower::start(cfg, &ctl)?;
    let mut collectors = if collect_cfg.any() {
        let c = collect::Collectors::start(
            collect_cfg,
            p.publisher.clone(),
            &p.cfg.host,
            ctl.stats.clone(),
        )?;
        p.collect_failed = Some(c.failed.clone());
        Some(c)
    } else {
        None
    };
    let compressed: Vec<_> = std::mem::take(&mut p.compressed)
        .into_iter()
        .map(|f| {
            let source = p.source_for(f.input, &f.path);
            (f, source)
        })
        .collect();
    let backfilled = backfill::Backfill {
        cfg: &p.cfg,
        publisher: &p.publisher,
        stats: &p.stats,
        checkpointed: &p.checkpointed,
        buf: &mut p.buf,
        run: &mut p.run,
        summary: &mut p.summary,
    }
    .run(&ctl, compressed);
    let result = match backfilled.and_then(|()| p.follow(&ctl)) {
        // A send waiting for room gave up because of the shutdown: not an error.
        Err(ProduceError::Publish(PublishError::Stopping)) => Ok(()),
        r => r,
    };
    if ctl.shutdown.is_aborted() {
        return result.map(|()| p.summary);
    }
    // Streams hand over what they received before the final flush.
    if let Some(c) = &mut collectors {
        c.stop();
        let (lines, bytes) = c.totals();
        p.summary.lines += lines;
        p.summary.bytes += bytes;
    }
    result?;
    p.finish(&ctl)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
