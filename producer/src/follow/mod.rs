//! Following files: the loop that reads them as they grow, closes them when
//! rotated away, and writes the checkpoint.
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
//!
//! - [`file`]: one followed file, its phase and identity, and the checks
//!   (truncation, rewrite, deletion) that move it on.
//! - `reconcile`: scans reconciled with the followed files; the identity
//!   decisions for files not followed yet.
//! - `state`: the checkpoint assembled from followed and closed files.

mod file;
mod reconcile;
mod state;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::{Checkpoint, FileState};
use crate::discover::{self, Discovery, Found};
use crate::publish::{PublishError, Publisher, Run};
use crate::stats::Stats;
use crate::tail::{LineOut, ReadError};
use crate::{now_ms, Control, ProduceError, ProduceSummary, ProducerConfig};
use file::{Followed, Identity};
use reconcile::Unidentified;

/// The producer's file side: the followed files and what it knows of them.
pub(crate) struct Follower {
    pub(crate) cfg: ProducerConfig,
    discovery: Discovery,
    pub(crate) publisher: Arc<Publisher>,
    /// Set when a collector failed for good.
    pub(crate) collect_failed: Option<Arc<AtomicBool>>,
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
    pub(crate) summary: ProduceSummary,
    pub(crate) stats: Arc<Stats>,
    events: mpsc::Receiver<()>,
    rescan: Arc<AtomicBool>,
    watcher: Option<notify::RecommendedWatcher>,
    /// [`Control::reload`].
    reload: Arc<crate::Reload>,
    pub(crate) buf: Vec<u8>,
    /// The record being gathered from the current read.
    pub(crate) run: Run,
    /// Compressed rotations to backfill before following (see `compressed.rs`).
    pub(crate) compressed: Vec<Found>,
    /// The checkpoint's entries as loaded, for recognising a compressed copy
    /// of a file that was followed (`known` is consumed at start-up).
    pub(crate) checkpointed: Vec<FileState>,
    /// [`Control::send_limit`].
    send_limit: Arc<crate::SendLimit>,
}

/// Watches the directories of `discovery`'s inputs (a directory that cannot
/// be watched is polled by the scans).
fn watch_dirs(w: &mut notify::RecommendedWatcher, discovery: &Discovery) {
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
}

impl Follower {
    pub(crate) fn start(cfg: ProducerConfig, ctl: &Control) -> Result<Self, ProduceError> {
        let discovery = Discovery::new(cfg.inputs.clone())?;
        let mut publisher = Publisher::new(&cfg, ctl.stats.clone(), ctl.shutdown.clone())?;
        publisher.hold_with(ctl.send_limit.clone());
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
                watch_dirs(&mut w, &discovery);
                Some(w)
            }
            Err(e) => {
                tracing::info!(error = %e, "no file change events; polling");
                None
            }
        };
        let known_paths = known.iter().map(|k| k.path.clone()).collect();
        let mut p = Follower {
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
            watcher,
            reload: ctl.reload.clone(),
            buf: vec![0u8; 1 << 20],
            run: Run::new(),
            compressed: Vec::new(),
            checkpointed: Vec::new(),
            send_limit: ctl.send_limit.clone(),
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
                f.is_live(),
                mtime,
                std::cmp::Reverse(crate::backfill::rotation_number(&f.path)),
            )
        });
        Ok(p)
    }

    /// Reads every file once (up to a budget each); true when anything was read.
    fn read_round(&mut self) -> Result<bool, ProduceError> {
        const BUDGET: usize = 8 << 20;
        let mut progressed = false;
        // A source's older file (rotated) is read to its end before its newer one.
        let mut busy: HashSet<&str> = HashSet::new();
        let ts = now_ms();
        let Follower {
            files,
            publisher,
            cfg,
            buf,
            run,
            summary,
            stats,
            retired,
            ..
        } = self;
        for f in files.iter_mut() {
            if busy.contains(f.source.as_str()) {
                continue;
            }
            if f.at_eof || matches!(f.identity, Identity::Truncated { .. }) {
                // New bytes after a pause may belong to a rewritten file: look
                // before reading, so no line of new content goes out under the
                // old identity.
                f.check(publisher, stats, retired)?;
                if matches!(f.identity, Identity::Truncated { .. }) {
                    continue; // truncated; its new first line is not complete yet
                }
            }
            let mut read = 0;
            let (mut lines, mut bytes) = (0u64, 0u64);
            loop {
                let (tail, origin) = f.tail_and_origin(&cfg.host);
                let n = tail
                    .read_lines(buf, |l: LineOut<'_>| {
                        lines += 1;
                        bytes += l.value.len() as u64;
                        publisher.add(run, &origin.line(l.value, l.offset, l.end, l.marks, ts))?;
                        if l.marks.cut.is_some() {
                            Stats::add(&stats.lines_cut, 1);
                        }
                        Ok(())
                    })
                    // The read's lines go out now: none waits for more.
                    .and_then(|n| publisher.close(run).map(|_| n).map_err(ReadError::Sink))
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
                        run.discard();
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
        let (tail, origin) = self.files[i].tail_and_origin(&self.cfg.host);
        let mut len = 0;
        let (publisher, run) = (&self.publisher, &mut self.run);
        let sent = tail
            .take_partial(why, |l| {
                len = l.value.len() as u64;
                publisher.add(
                    run,
                    &origin.line(l.value, l.offset, l.end, l.marks, now_ms()),
                )?;
                publisher.close(run)
            })
            .inspect_err(|_| run.discard())?;
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
            let done = f.is_done(now, self.cfg.rotate_wait);
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
            tracing::info!(path = %f.path.display(), file = %f.id, deleted = f.is_deleted(), "file read to its end; closed");
            self.stats
                .files_followed
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let state = f.checkpoint_state(&self.publisher);
            self.retired.push((f.slot, state));
        }
        let publisher = &self.publisher;
        self.retired
            .retain(|(slot, _)| !publisher.remove_slot_if_done(*slot));
        Ok(())
    }

    /// The main loop, until shutdown, abort or (with `exit_on_eof`) the end.
    pub(crate) fn follow(&mut self, ctl: &Control) -> Result<(), ProduceError> {
        let mut last_scan = Instant::now();
        let mut last_cp = Instant::now();
        let mut last_stats = Instant::now();
        loop {
            if ctl.shutdown.is_requested() {
                return Ok(());
            }
            if let Some(inputs) = self.reload.take() {
                self.reload_inputs(inputs);
            }
            if self
                .collect_failed
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
            {
                return Err(ProduceError::CollectorFailed);
            }
            if !self
                .send_limit
                .allows(self.stats.records_sent.load(Ordering::Relaxed))
            {
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

    /// Follows `inputs` from the next scan (at once). Files only the old
    /// inputs matched are no longer found there: they are read to their
    /// end and closed, like rotated files. Followed files keep their
    /// source names; new files take the new inputs'. Bad inputs (a glob
    /// that does not parse) leave the old ones in place.
    fn reload_inputs(&mut self, inputs: Vec<discover::InputSpec>) {
        let discovery = match Discovery::new(inputs.clone()) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "inputs not reloaded; following the previous ones");
                return;
            }
        };
        if let Some(w) = self.watcher.as_mut() {
            watch_dirs(w, &discovery);
        }
        let paths: Vec<&str> = inputs
            .iter()
            .flat_map(|i| i.paths.iter().map(String::as_str))
            .collect();
        tracing::info!(inputs = inputs.len(), paths = ?paths, "inputs reloaded; files only the previous inputs matched are read to their end and closed");
        self.discovery = discovery;
        self.cfg.inputs = inputs;
        self.rescan.store(true, Ordering::Relaxed);
    }

    /// End of input or shutdown: last lines, wait for acks, checkpoint.
    pub(crate) fn finish(&mut self, ctl: &Control) -> Result<ProduceSummary, ProduceError> {
        let stopping = ctl.shutdown.is_requested();
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
            if ctl.shutdown.is_aborted() {
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
