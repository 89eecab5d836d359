//! The tail-producer: follow log files and publish every line to Kafka, with
//! checkpoints that advance only on proof of delivery.
//!
//! - [`discover`]: which paths (globs, excludes) and under which source name.
//! - [`identity`]: which file is which — device, inode, first-line fingerprint,
//!   generation; the reasons are written there.
//! - [`tail`]: one file's bytes cut into lines (partial, `\r\n`, too long).
//! - [`publish`]: the idempotent Kafka producer and per-file delivery tracking.
//! - [`checkpoint`]: versioned, atomically written read positions.
//! - [`stats`]: health counters.
//!
//! # How files are followed
//!
//! Every scan (start, directory events from `notify`, and every
//! `scan_interval`) lists the inputs' paths and stats them. A path whose device
//! and inode belong to a followed file is that file, renamed or not. A followed
//! file no longer at any path (rotated away, symlink swapped, deleted) is read
//! to its end and closed once nothing was written to it for `rotate_wait` — it
//! is read before newer files of the same source, so a source's lines go out in
//! file order. A file smaller than what was read, or whose first line changed,
//! was truncated: it is read again from 0 as a new generation. A new file is
//! read from its beginning when it appears while running; at start-up, files
//! never seen before start at their end unless `from_beginning` (a file at a
//! path the checkpoint knows is new since the last run and starts at 0).
//! Checkpointed files that moved while the producer was stopped are looked for
//! in their old directory and drained.

pub mod checkpoint;
pub mod collect;
mod compressed;
pub mod discover;
pub mod identity;
pub mod publish;
pub mod stats;
pub mod tail;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use checkpoint::{Checkpoint, CheckpointError, FileState};
use discover::{DiscoverError, Discovery, Found, InputSpec};
use identity::Fingerprint;
use publish::{Line, PublishError, Publisher};
use stats::Stats;
use tail::{LineOut, ReadError, Tail};

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
            poll_interval: Duration::from_millis(500),
            scan_interval: Duration::from_secs(5),
            ignore_older: None,
            max_line_bytes: 1 << 20,
            partial_line_timeout: None,
            rotate_wait: Duration::from_secs(5),
            max_in_flight_bytes: 4 << 20,
            checkpoint_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            stats_interval: Duration::from_secs(60),
            extra: Vec::new(),
            collect: collect::CollectConfig::new(),
        }
    }
}

/// Why the producer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error(transparent)]
    Discover(#[from] DiscoverError),
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
    #[error("{}: cannot decompress past byte {offset} of its content: {reason}; the lines before were sent and recorded — replace the file with an undamaged copy (or remove it) and run again to continue", path.display())]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("no file matches {0} (with --exit-on-eof there is nothing to wait for)")]
    NothingToRead(String),
    #[error(transparent)]
    Collect(#[from] collect::CollectError),
    #[error("an input collector stopped (see the log above); the producer stops too")]
    CollectorFailed,
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProduceSummary {
    pub lines: u64,
    pub bytes: u64,
}

/// How a caller stops a run and watches it.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Graceful: stop reading, wait for acks, write the checkpoint.
    pub shutdown: Arc<AtomicBool>,
    /// Abrupt, like `kill -9`: return at once, no drain, no checkpoint (tests).
    pub abort: Arc<AtomicBool>,
    /// While set, reading waits, line by line (nothing is lost: the files
    /// are the buffer).
    /// `logpipe demo` holds its producer while the analyzers are further
    /// behind than the embedded broker keeps records.
    pub hold: Arc<AtomicBool>,
    pub stats: Arc<Stats>,
}

/// Runs until every file reached its end (`exit_on_eof`) or `shutdown` is set;
/// then waits for outstanding acks and writes the checkpoint.
pub fn run(cfg: ProducerConfig, shutdown: Arc<AtomicBool>) -> Result<ProduceSummary, ProduceError> {
    run_with(
        cfg,
        Control {
            shutdown,
            ..Control::default()
        },
    )
}

/// [`run`] with an abort switch and counters the caller can read.
pub fn run_with(cfg: ProducerConfig, ctl: Control) -> Result<ProduceSummary, ProduceError> {
    let collect_cfg = cfg.collect.clone();
    let mut p = Producer::start(cfg, &ctl)?;
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
    let compressed = std::mem::take(&mut p.compressed);
    let result = match p
        .backfill_compressed(&ctl, compressed)
        .and_then(|()| p.follow(&ctl))
    {
        // A send waiting for room gave up because of the shutdown: not an error.
        Err(ProduceError::Publish(PublishError::Stopping)) => Ok(()),
        r => r,
    };
    if ctl.abort.load(Ordering::SeqCst) {
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

/// A followed file.
struct Followed {
    tail: Tail,
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// None right after a truncation until the new first line is complete.
    fp: Option<Fingerprint>,
    generation: u32,
    /// The `file` header of this generation.
    id: String,
    source: String,
    key: Vec<u8>,
    slot: usize,
    last_len: u64,
    last_data: Instant,
    at_eof: bool,
    /// Since when no input path leads to it.
    gone_since: Option<Instant>,
    deleted: bool,
    /// While a truncated file's new first line is incomplete: its checkpoint
    /// entry from before the truncation (a restart then sees the rewrite).
    before_truncation: Option<FileState>,
}

impl Followed {
    /// Its checkpoint entry with `offset` acknowledged (none before its first
    /// line is known).
    fn state(&self, offset: u64) -> Option<FileState> {
        let fp = self.fp?;
        Some(FileState {
            file: self.id.clone(),
            dev: self.dev,
            ino: self.ino,
            fingerprint_len: fp.len,
            fingerprint: fp.hash,
            generation: self.generation,
            offset,
            read: self.tail.line_start,
            path: self.path.clone(),
            source: self.source.clone(),
        })
    }
}

/// A file seen but not followed yet: no complete first line, or ignored.
struct Unidentified {
    /// Where reading will start, decided when it was first seen.
    start: u64,
    /// Skipped by `ignore_older`: followed from `start` once its size changes.
    ignored_len: Option<u64>,
}

struct Producer {
    cfg: ProducerConfig,
    discovery: Discovery,
    publisher: Arc<Publisher>,
    /// Set when a collector failed for good.
    collect_failed: Option<Arc<AtomicBool>>,
    files: Vec<Followed>,
    unidentified: HashMap<(u64, u64), Unidentified>,
    /// Checkpoint entries of files not found yet (start-up only).
    known: Vec<FileState>,
    /// Paths the checkpoint knew at start-up.
    known_paths: HashSet<PathBuf>,
    /// Closed files and old generations whose lines are still in flight.
    retired: Vec<(usize, Option<FileState>)>,
    cp_path: Option<PathBuf>,
    last_cp: Vec<u8>,
    /// What the last checkpoint was built from: acks, files, retired, paths
    /// (a cheap test for "nothing changed" with many idle files).
    last_cp_basis: (u64, usize, usize, u64),
    last_cp_full: Instant,
    summary: ProduceSummary,
    stats: Arc<Stats>,
    events: mpsc::Receiver<()>,
    rescan: Arc<AtomicBool>,
    _watcher: Option<notify::RecommendedWatcher>,
    buf: Vec<u8>,
    /// Compressed rotations to backfill before following (see `compressed.rs`).
    compressed: Vec<Found>,
    /// The checkpoint's entries as loaded, for recognising a compressed copy
    /// of a file that was followed (`known` is consumed at start-up).
    checkpointed: Vec<FileState>,
    /// [`Control::hold`].
    hold: Arc<AtomicBool>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Offset just after the last newline before `len` (0 if none within reach).
fn last_line_start(file: &File, len: u64, max_line: usize) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut end = len;
    let floor = len.saturating_sub(max_line as u64 + 1);
    while end > floor {
        let start = end.saturating_sub(buf.len() as u64).max(floor);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    // No newline within a line's length: start at the end.
    Ok(if floor == 0 { 0 } else { len })
}

impl Producer {
    fn start(cfg: ProducerConfig, ctl: &Control) -> Result<Self, ProduceError> {
        let discovery = Discovery::new(cfg.inputs.clone())?;
        let mut publisher = Publisher::new(
            &cfg.brokers,
            &cfg.topic,
            cfg.max_in_flight_bytes,
            cfg.max_line_bytes,
            &cfg.extra,
            ctl.stats.clone(),
            vec![ctl.shutdown.clone(), ctl.abort.clone()],
        )?;
        publisher.hold_with(ctl.hold.clone());
        let cp_path = cfg
            .checkpoint_dir
            .as_ref()
            .map(|d| d.join("checkpoints.json"));
        let known = match &cp_path {
            Some(p) => Checkpoint::load(p)?.into_files(),
            None => Vec::new(),
        };
        let in_flight: u64 = known.iter().map(|k| k.read.saturating_sub(k.offset)).sum();
        if !known.is_empty() {
            tracing::info!(
                files = known.len(),
                bytes_in_flight_at_last_checkpoint = in_flight,
                "resuming from checkpoint; lines Kafka acknowledged after the last checkpoint are sent again with the same (file, offset) headers, so analyzers drop them — at most the lines in flight then plus one checkpoint interval of reading"
            );
        }
        // Directory events wake the loop at once; polling covers the rest.
        let (tx, events) = mpsc::sync_channel(1);
        let rescan = Arc::new(AtomicBool::new(false));
        let watcher = {
            let rescan = rescan.clone();
            notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                if let Ok(ev) = ev {
                    if !matches!(
                        ev.kind,
                        notify::EventKind::Modify(notify::event::ModifyKind::Data(_))
                            | notify::EventKind::Access(_)
                    ) {
                        rescan.store(true, Ordering::Relaxed);
                    }
                }
                let _ = tx.try_send(());
            })
        };
        let watcher = match watcher {
            Ok(mut w) => {
                use notify::Watcher;
                for (dir, recursive) in discovery.watch_dirs() {
                    let mode = if recursive {
                        notify::RecursiveMode::Recursive
                    } else {
                        notify::RecursiveMode::NonRecursive
                    };
                    if let Err(e) = w.watch(&dir, mode) {
                        tracing::debug!(dir = %dir.display(), error = %e, "not watching directory; polling it");
                    }
                }
                Some(w)
            }
            Err(e) => {
                tracing::info!(error = %e, "no file change events; polling");
                None
            }
        };
        let known_paths = known.iter().map(|k| k.path.clone()).collect();
        let mut p = Producer {
            discovery,
            publisher: Arc::new(publisher),
            collect_failed: None,
            files: Vec::new(),
            unidentified: HashMap::new(),
            known,
            known_paths,
            retired: Vec::new(),
            cp_path,
            last_cp: Vec::new(),
            last_cp_basis: (u64::MAX, 0, 0, 0),
            last_cp_full: Instant::now(),
            summary: ProduceSummary::default(),
            stats: ctl.stats.clone(),
            events,
            rescan,
            _watcher: watcher,
            buf: vec![0u8; 1 << 20],
            compressed: Vec::new(),
            checkpointed: Vec::new(),
            hold: ctl.hold.clone(),
            cfg,
        };
        let found = p.discovery.scan();
        let compressed = p.discovery.scan_kind(discover::Kind::Compressed);
        if p.cfg.from_beginning && p.cfg.exit_on_eof {
            p.compressed = compressed.clone();
            p.checkpointed = p.known.clone();
        } else if !compressed.is_empty() {
            tracing::warn!(files = compressed.len(), first = %compressed[0].path.display(), "compressed files match the inputs and are not followed; to load them, backfill once with --from-beginning --exit-on-eof");
        }
        for (i, spec) in p.cfg.inputs.iter().enumerate() {
            if !found.iter().any(|f| f.input == i) && !compressed.iter().any(|f| f.input == i) {
                tracing::warn!(paths = ?spec.paths, "no file matches these paths yet; watching for them");
            }
        }
        if found.is_empty() && p.compressed.is_empty() && p.cfg.exit_on_eof && p.known.is_empty() {
            let all: Vec<&str> = p
                .cfg
                .inputs
                .iter()
                .flat_map(|i| i.paths.iter().map(String::as_str))
                .collect();
            return Err(ProduceError::NothingToRead(all.join(", ")));
        }
        p.reconcile(found, true)?;
        p.find_moved_while_stopped()?;
        p.known_paths.clear();
        // A source's older files first: those rotated away while stopped,
        // then by modification time, then the higher rotation number
        // (`access.log.1` before `access.log`), as for compressed ones.
        p.files.sort_by_cached_key(|f| {
            let mtime = std::fs::metadata(&f.path).and_then(|m| m.modified()).ok();
            (
                f.gone_since.is_none(),
                mtime,
                std::cmp::Reverse(compressed::rotation_number(&f.path)),
            )
        });
        Ok(p)
    }

    fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> ProduceError + '_ {
        move |source| ProduceError::Read {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Lists the inputs and reconciles them with the followed files.
    fn scan(&mut self, startup: bool) -> Result<(), ProduceError> {
        let found = self.discovery.scan();
        self.reconcile(found, startup)
    }

    fn reconcile(&mut self, found: Vec<Found>, startup: bool) -> Result<(), ProduceError> {
        let now = Instant::now();
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        tracing::trace!(paths = found.len(), followed = self.files.len(), "scan");
        for Found { path, input } in found {
            // Follows symlinks: a swapped link leads to another file.
            let Ok(md) = std::fs::metadata(&path) else {
                continue;
            };
            let key = (md.dev(), md.ino());
            if !seen.insert(key) {
                continue;
            }
            if let Some(f) = self
                .files
                .iter_mut()
                .find(|f| (f.dev, f.ino) == key && !f.deleted)
            {
                if f.path != path {
                    tracing::info!(from = %f.path.display(), to = %path.display(), file = %f.id, "followed file renamed");
                    if f.gone_since.is_none() {
                        Stats::add(&self.stats.rotations, 1);
                    }
                    f.path = path;
                }
                f.gone_since = None;
                continue;
            }
            self.consider(path, input, &md, startup)?;
        }
        for f in &mut self.files {
            if !seen.contains(&(f.dev, f.ino)) && f.gone_since.is_none() {
                f.gone_since = Some(now);
                Stats::add(&self.stats.rotations, 1);
                tracing::info!(path = %f.path.display(), file = %f.id, "file no longer at its path (rotated, replaced or deleted); reading it to its end");
            }
        }
        for i in 0..self.files.len() {
            self.check_file(i)?;
        }
        // Files seen without a first line that are gone (deleted, or no
        // longer matched): forgotten, so they are not looked for again.
        self.unidentified.retain(|k, _| seen.contains(k));
        Ok(())
    }

    /// A path leading to a file not followed yet.
    fn consider(
        &mut self,
        path: PathBuf,
        input: usize,
        md: &std::fs::Metadata,
        startup: bool,
    ) -> Result<(), ProduceError> {
        let key = (md.dev(), md.ino());
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open file; trying again at the next scan");
                return Ok(());
            }
        };
        let len = md.len();
        let Some(fp) =
            Fingerprint::of(&file, self.cfg.exit_on_eof).map_err(Self::read_err(&path))?
        else {
            // No complete first line yet: nothing to send; decide the start now.
            if !self.unidentified.contains_key(&key) {
                // Without a newline there is no whole line to skip: 0, unless
                // what is there is longer than a line may be.
                let start = if self.starts_at_end(startup, &path) {
                    last_line_start(&file, len, self.cfg.max_line_bytes)
                        .map_err(Self::read_err(&path))?
                } else {
                    0
                };
                self.unidentified.insert(
                    key,
                    Unidentified {
                        start,
                        ignored_len: None,
                    },
                );
            }
            return Ok(());
        };
        // A checkpointed file, under this path or another.
        let resumed = self.known.iter().position(|k| {
            (k.dev, k.ino) == key
                && (k.fingerprint_len == 0
                    || Fingerprint {
                        len: k.fingerprint_len,
                        hash: k.fingerprint,
                    }
                    .matches(&file)
                    .unwrap_or(false))
        });
        if let Some(i) = resumed {
            let k = self.known.swap_remove(i);
            return self.follow_file(file, path, Some(fp), k.source.clone(), Some(k), 0);
        }
        if let Some(i) = self.known.iter().position(|k| (k.dev, k.ino) == key) {
            // Rewritten (truncated while stopped, or right before a crash) or
            // a new file on a reused inode: either way new content, from 0, as
            // the next generation — the identity the running producer gave it
            // if it saw the truncation, so re-sent lines keep their headers.
            let k = self.known.swap_remove(i);
            tracing::info!(path = %path.display(), old_path = %k.path.display(), "file's first line changed since the checkpoint (rewritten, or a new file on a reused inode); reading it from its beginning");
            let source = self.source_for(input, &path);
            self.follow_file(file, path, Some(fp), source, None, 0)?;
            let f = self.files.last_mut().expect("just added");
            f.generation = k.generation + 1;
            f.id = identity::file_id(f.dev, f.ino, fp, f.generation);
            return Ok(());
        }
        let start = match self.unidentified.remove(&key) {
            Some(u) => {
                if let Some(ignored) = u.ignored_len {
                    if ignored == len {
                        self.unidentified.insert(key, u);
                        return Ok(());
                    }
                }
                u.start
            }
            None => {
                let at_end = self.starts_at_end(startup, &path);
                let stale = self.cfg.ignore_older.is_some_and(|age| is_older(md, age));
                if !(at_end || stale) {
                    0
                } else {
                    let end = last_line_start(&file, len, self.cfg.max_line_bytes)
                        .map_err(Self::read_err(&path))?;
                    if stale {
                        self.ignore(&path, key, end, len);
                        return Ok(());
                    }
                    end
                }
            }
        };
        let source = self.source_for(input, &path);
        self.follow_file(file, path, Some(fp), source, None, start)
    }

    /// A file first seen at start-up, never checkpointed, at a path the
    /// checkpoint does not know: `tail -F` semantics unless `from_beginning`.
    fn starts_at_end(&self, startup: bool, path: &Path) -> bool {
        startup && !self.cfg.from_beginning && !self.known_paths.contains(path)
    }

    fn source_for(&self, input: usize, path: &Path) -> String {
        self.discovery
            .spec(input)
            .source
            .clone()
            .unwrap_or_else(|| discover::rotation_base(path).display().to_string())
    }

    fn ignore(&mut self, path: &Path, key: (u64, u64), start: u64, len: u64) {
        tracing::info!(path = %path.display(), "not following: unchanged for longer than --ignore-older (followed from its current end once it changes)");
        self.unidentified.insert(
            key,
            Unidentified {
                start,
                ignored_len: Some(len),
            },
        );
    }

    fn follow_file(
        &mut self,
        file: File,
        path: PathBuf,
        fp: Option<Fingerprint>,
        source: String,
        resumed: Option<FileState>,
        start: u64,
    ) -> Result<(), ProduceError> {
        let md = file.metadata().map_err(Self::read_err(&path))?;
        let fp = fp.expect("identified");
        let (generation, offset, id) = match &resumed {
            Some(k) if md.len() < k.offset => {
                tracing::warn!(path = %path.display(), checkpoint = k.offset, size = md.len(), "file is shorter than its checkpoint: truncated while stopped; reading it from the start as a new generation");
                Stats::add(&self.stats.truncations, 1);
                let g = k.generation + 1;
                (g, 0, identity::file_id(md.dev(), md.ino(), fp, g))
            }
            Some(k) => (k.generation, k.offset, k.file.clone()),
            None => (0, start, identity::file_id(md.dev(), md.ino(), fp, 0)),
        };
        if let Some(k) = &resumed {
            if k.path != path {
                Stats::add(&self.stats.rotations, 1);
            }
            tracing::info!(path = %path.display(), checkpointed_as = %k.path.display(), %source, offset, in_flight_at_checkpoint = k.read.saturating_sub(k.offset), file = %id, "resuming file");
        } else {
            tracing::info!(path = %path.display(), %source, offset, file = %id, "following file");
        }
        let tail =
            Tail::new(file, offset, self.cfg.max_line_bytes).map_err(Self::read_err(&path))?;
        Stats::add(&self.stats.files_followed, 1);
        self.files.push(Followed {
            tail,
            dev: md.dev(),
            ino: md.ino(),
            fp: Some(fp),
            generation,
            key: logpipe_wire::record_key(&self.cfg.host, &source).into_bytes(),
            id,
            source,
            slot: self.publisher.add_slot(offset)?,
            last_len: md.len(),
            last_data: Instant::now(),
            at_eof: false,
            gone_since: None,
            deleted: false,
            before_truncation: None,
            path,
        });
        Ok(())
    }

    /// Checkpointed files not found at any input path: rotated while we were
    /// stopped? Look for them (same device, inode, first line) in their old
    /// directory and drain them; the rest are gone.
    fn find_moved_while_stopped(&mut self) -> Result<(), ProduceError> {
        for k in std::mem::take(&mut self.known) {
            let dir = k.path.parent().unwrap_or(Path::new("."));
            let found = std::fs::read_dir(dir).ok().and_then(|rd| {
                rd.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                    std::fs::metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == (k.dev, k.ino))
                })
            });
            let file = found.as_ref().and_then(|p| File::open(p).ok());
            let same = file.as_ref().is_some_and(|f| {
                k.fingerprint_len == 0
                    || Fingerprint {
                        len: k.fingerprint_len,
                        hash: k.fingerprint,
                    }
                    .matches(f)
                    .unwrap_or(false)
            });
            match (found, file) {
                (Some(path), Some(file)) if same => {
                    tracing::info!(from = %k.path.display(), to = %path.display(), "file rotated while logpipe was stopped; reading it to its end");
                    let fp = Fingerprint {
                        len: k.fingerprint_len,
                        hash: k.fingerprint,
                    };
                    let source = k.source.clone();
                    self.follow_file(file, path, Some(fp), source, Some(k), 0)?;
                    let f = self.files.last_mut().expect("just added");
                    f.gone_since = Some(Instant::now());
                }
                _ => tracing::warn!(path = %k.path.display(), offset = k.offset, file = %k.file,
                    "checkpointed file not found (deleted or compressed while logpipe was stopped); lines written to it after the checkpoint, if any, were not read"),
            }
        }
        Ok(())
    }

    fn check_file(&mut self, i: usize) -> Result<(), ProduceError> {
        check_file(
            &mut self.files[i],
            &self.publisher,
            &self.stats,
            &mut self.retired,
        )
    }

    /// Reads every file once (up to a budget each); true when anything was read.
    fn read_round(&mut self) -> Result<bool, ProduceError> {
        const BUDGET: usize = 8 << 20;
        let mut progressed = false;
        // A source's older file (rotated) is read to its end before its newer one.
        let mut busy: HashSet<&str> = HashSet::new();
        let ts = now_ms();
        let Producer {
            files,
            publisher,
            cfg,
            buf,
            summary,
            stats,
            retired,
            ..
        } = self;
        for f in files.iter_mut() {
            if busy.contains(f.source.as_str()) {
                continue;
            }
            if f.at_eof || f.fp.is_none() {
                // New bytes after a pause may belong to a rewritten file: look
                // before reading, so no line of new content goes out under the
                // old identity.
                check_file(f, publisher, stats, retired)?;
                if f.fp.is_none() {
                    continue; // truncated; its new first line is not complete yet
                }
            }
            let mut read = 0;
            let (mut lines, mut bytes) = (0u64, 0u64);
            loop {
                let Followed {
                    tail,
                    slot,
                    key,
                    source,
                    id,
                    ..
                } = f;
                let n = tail
                    .read_lines(buf, |l: LineOut<'_>| {
                        lines += 1;
                        bytes += l.value.len() as u64;
                        publisher.send(&Line {
                            slot: *slot,
                            key,
                            value: l.value,
                            host: &cfg.host,
                            source,
                            file_id: id,
                            offset: l.offset,
                            end: l.end,
                            marks: l.marks,
                            timestamp_ms: ts,
                        })?;
                        if l.marks.cut.is_some() {
                            Stats::add(&stats.lines_cut, 1);
                        }
                        Ok(())
                    })
                    .map_err(|e| match e {
                        ReadError::Io(source) => ProduceError::Read {
                            path: f.path.clone(),
                            source,
                        },
                        ReadError::Sink(e) => ProduceError::Publish(e),
                    });
                let n = match n {
                    Ok(n) => n,
                    Err(e) => {
                        Stats::add(&stats.lines_read, lines);
                        Stats::add(&stats.bytes_read, bytes);
                        return Err(e);
                    }
                };
                read += n;
                f.at_eof = n == 0;
                summary.lines += lines;
                summary.bytes += bytes;
                Stats::add(&stats.lines_read, lines);
                Stats::add(&stats.bytes_read, bytes);
                stats.sample_in_flight();
                (lines, bytes) = (0, 0);
                if n == 0 || read >= BUDGET {
                    break;
                }
            }
            if read > 0 {
                progressed = true;
                f.last_data = Instant::now();
            }
            if !f.at_eof {
                busy.insert(f.source.as_str());
            }
        }
        Ok(progressed)
    }

    /// Sends an incomplete last line held by file `i`, marked `why`.
    fn send_partial(&mut self, i: usize, why: &'static str) -> Result<(), ProduceError> {
        let f = &mut self.files[i];
        let Followed {
            tail,
            slot,
            key,
            source,
            id,
            ..
        } = f;
        let mut len = 0;
        let sent = tail.take_partial(why, |l| {
            len = l.value.len() as u64;
            self.publisher.send(&Line {
                slot: *slot,
                key,
                value: l.value,
                host: &self.cfg.host,
                source,
                file_id: id,
                offset: l.offset,
                end: l.end,
                marks: l.marks,
                timestamp_ms: now_ms(),
            })
        })?;
        if sent {
            self.summary.lines += 1;
            self.summary.bytes += len;
            Stats::add(&self.stats.lines_read, 1);
            Stats::add(&self.stats.bytes_read, len);
            Stats::add(&self.stats.partial_lines, 1);
        }
        Ok(())
    }

    /// Idle partial lines, files done after rotation or deletion, drained slots.
    fn housekeeping(&mut self) -> Result<(), ProduceError> {
        let now = Instant::now();
        for i in 0..self.files.len() {
            let f = &self.files[i];
            if let Some(t) = self.cfg.partial_line_timeout {
                if f.at_eof && f.tail.holds_partial() && now - f.last_data >= t {
                    self.send_partial(i, "idle")?;
                }
            }
        }
        let mut i = 0;
        while i < self.files.len() {
            let f = &self.files[i];
            let quiet = now - f.last_data >= self.cfg.rotate_wait;
            let done = f.at_eof
                && (f.deleted
                    || f.gone_since
                        .is_some_and(|g| now - g >= self.cfg.rotate_wait))
                && quiet;
            // `at_eof` is from the last read: bytes may have come since.
            let drained = || {
                f.tail
                    .file
                    .metadata()
                    .is_ok_and(|m| m.len() <= f.tail.read_pos())
            };
            if !done || !drained() {
                i += 1;
                continue;
            }
            // The writer is done with it: an unterminated last line is whole.
            self.send_partial(i, "eof")?;
            let f = self.files.remove(i);
            tracing::info!(path = %f.path.display(), file = %f.id, deleted = f.deleted, "file read to its end; closed");
            self.stats
                .files_followed
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let state = self.state_of(&f);
            self.retired.push((f.slot, state));
        }
        let publisher = &self.publisher;
        self.retired
            .retain(|(slot, _)| !publisher.remove_slot_if_done(*slot));
        Ok(())
    }

    fn state_of(&self, f: &Followed) -> Option<FileState> {
        match f.fp {
            None => f.before_truncation.clone(),
            Some(_) => f.state(self.publisher.delivered(f.slot)?),
        }
    }

    /// Writes the checkpoint if anything changed.
    fn checkpoint(&mut self) -> Result<(), ProduceError> {
        let Some(path) = &self.cp_path else {
            return Ok(());
        };
        let basis = (
            self.stats.acked.lines.load(Ordering::Relaxed),
            self.files.len(),
            self.retired.len(),
            self.stats.rotations.load(Ordering::Relaxed)
                + self.stats.truncations.load(Ordering::Relaxed)
                + self.stats.deletions.load(Ordering::Relaxed),
        );
        // Renames of idle files change no counter here: look every 30 s anyway.
        if basis == self.last_cp_basis && self.last_cp_full.elapsed() < Duration::from_secs(30) {
            return Ok(());
        }
        self.last_cp_basis = basis;
        self.last_cp_full = Instant::now();
        let mut files: Vec<FileState> =
            self.files.iter().filter_map(|f| self.state_of(f)).collect();
        for (slot, state) in &self.retired {
            if let Some(mut s) = state.clone() {
                if let Some(d) = self.publisher.delivered(*slot) {
                    s.offset = d;
                }
                files.push(s);
            }
        }
        let cp = Checkpoint::V2 { files };
        let bytes = serde_json::to_vec(&cp).expect("checkpoint serializes");
        if bytes != self.last_cp {
            cp.store(path)?;
            self.last_cp = bytes;
        }
        Ok(())
    }

    /// The main loop, until shutdown, abort or (with `exit_on_eof`) the end.
    fn follow(&mut self, ctl: &Control) -> Result<(), ProduceError> {
        let mut last_scan = Instant::now();
        let mut last_cp = Instant::now();
        let mut last_stats = Instant::now();
        loop {
            if ctl.shutdown.load(Ordering::Relaxed) || ctl.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            if self
                .collect_failed
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
            {
                return Err(ProduceError::CollectorFailed);
            }
            if self.hold.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let progressed = match self.read_round() {
                Err(ProduceError::Publish(PublishError::Stopping)) => {
                    return Ok(());
                }
                r => r?,
            };
            self.publisher.check()?;
            if !progressed {
                if self.cfg.exit_on_eof && self.files.iter().all(|f| f.at_eof) {
                    self.scan(false)?;
                    if self.files.iter().all(|f| f.at_eof) {
                        return Ok(());
                    }
                    continue;
                }
                let _ = self.events.recv_timeout(self.cfg.poll_interval);
                // Idle partial lines and finished files are not left to the scan.
                self.housekeeping()?;
            }
            // A file seen before its first line was complete (a new empty log
            // after rotation) is followed once it has one: looked at again
            // every 100 ms, not only at the next scan (up to 5 s of lines late).
            if last_scan.elapsed() >= Duration::from_millis(100)
                && self.unidentified.values().any(|u| u.ignored_len.is_none())
            {
                self.rescan.store(true, Ordering::Relaxed);
            }
            if self.rescan.swap(false, Ordering::Relaxed)
                || last_scan.elapsed() >= self.cfg.scan_interval
            {
                last_scan = Instant::now();
                self.scan(false)?;
                self.housekeeping()?;
            }
            if last_cp.elapsed() >= self.cfg.checkpoint_interval {
                last_cp = Instant::now();
                self.checkpoint()?;
            }
            if last_stats.elapsed() >= self.cfg.stats_interval {
                last_stats = Instant::now();
                self.stats.log("producer stats");
            }
        }
    }

    /// End of input or shutdown: last lines, wait for acks, checkpoint.
    fn finish(&mut self, ctl: &Control) -> Result<ProduceSummary, ProduceError> {
        let stopping = ctl.shutdown.load(Ordering::Relaxed);
        if self.cfg.exit_on_eof && !stopping {
            // The input is complete, so a last line without a newline is whole.
            for i in 0..self.files.len() {
                self.send_partial(i, "eof")?;
            }
        }
        let wait = if self.cfg.exit_on_eof && !stopping {
            Duration::from_secs(3600)
        } else {
            self.cfg.shutdown_timeout
        };
        let deadline = Instant::now() + wait;
        while self.publisher.in_flight() > 0 && Instant::now() < deadline {
            let _ = self.publisher.flush(Duration::from_millis(200));
            self.publisher.check()?;
            if ctl.abort.load(Ordering::Relaxed) {
                return Ok(self.summary);
            }
        }
        let left = self.publisher.in_flight();
        self.last_cp_basis.0 = u64::MAX; // always written at the end
        self.checkpoint()?;
        self.stats.log("producer done");
        if left > 0 {
            if self.cfg.exit_on_eof && !stopping {
                return Err(ProduceError::Unacknowledged(left));
            }
            tracing::warn!(
                lines = left,
                "shutdown: Kafka did not acknowledge these lines in time; the checkpoint is before them, so they are read again at the next start"
            );
        } else {
            tracing::info!(
                lines = self.summary.lines,
                bytes = self.summary.bytes,
                "producer stopped; every line read was acknowledged"
            );
        }
        Ok(self.summary)
    }
}

/// Truncation, rewrite, deletion of a followed file.
fn check_file(
    f: &mut Followed,
    publisher: &Publisher,
    stats: &Stats,
    retired: &mut Vec<(usize, Option<FileState>)>,
) -> Result<(), ProduceError> {
    let err = |source| ProduceError::Read {
        path: f.path.clone(),
        source,
    };
    let md = f.tail.file.metadata().map_err(err)?;
    if md.nlink() == 0 && !f.deleted {
        f.deleted = true;
        Stats::add(&stats.deletions, 1);
        tracing::info!(path = %f.path.display(), file = %f.id, "file deleted; reading what is left of it");
    }
    let len = md.len();
    let changed = len != f.last_len;
    f.last_len = len;
    let rewritten = match &f.fp {
        Some(fp) if changed => !fp.matches(&f.tail.file).map_err(err)?,
        Some(_) => false,
        None => {
            // After a truncation: the new generation is named by its first line.
            f.fp = Fingerprint::of(&f.tail.file, false).map_err(err)?;
            if let Some(fp) = f.fp {
                f.id = identity::file_id(f.dev, f.ino, fp, f.generation);
            }
            false
        }
    };
    if len < f.tail.read_pos() || rewritten {
        Stats::add(&stats.truncations, 1);
        f.before_truncation = publisher
            .delivered(f.slot)
            .and_then(|offset| f.state(offset));
        f.generation += 1;
        let old = std::mem::take(&mut f.id);
        // The new generation is named by its own first line (and nothing is
        // read before that line is complete), so a producer restarted from an
        // older checkpoint names it the same way: see `consider`.
        f.fp = Fingerprint::of(&f.tail.file, false).map_err(err)?;
        if let Some(fp) = f.fp {
            f.id = identity::file_id(f.dev, f.ino, fp, f.generation);
        }
        tracing::warn!(path = %f.path.display(), read = f.tail.read_pos(), size = len, %old, new = %f.id,
            "file truncated (copytruncate) or rewritten; reading it again from the start as a new generation");
        f.tail.reset().map_err(err)?;
        // Acks of the old generation still arrive; they count for the old slot.
        retired.push((f.slot, None));
        f.slot = publisher.add_slot(0)?;
        f.at_eof = false;
        f.last_len = len;
    }
    Ok(())
}

fn is_older(md: &std::fs::Metadata, age: Duration) -> bool {
    md.modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|e| e > age)
}
