//! Which files are followed: every scan's paths reconciled with the
//! followed files (renamed, gone, new), the identity decisions for a file
//! not followed yet (resumed from the checkpoint, rewritten while stopped,
//! new, ignored), and checkpointed files looked for after a restart.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::file::{Followed, Identity, Phase};
use super::Follower;
use crate::checkpoint::FileState;
use crate::discover::{self, Found};
use crate::error::read_err;
use crate::identity::{self, Fingerprint};
use crate::stats::Stats;
use crate::tail::Tail;
use crate::ProduceError;

/// A file seen but not followed yet: no complete first line, or ignored.
pub(super) struct Unidentified {
    /// Where reading will start, decided when it was first seen.
    pub(super) start: u64,
    /// Skipped by `ignore_older`: followed from `start` once its size changes.
    pub(super) ignored_len: Option<u64>,
}

impl Follower {
    /// Lists the inputs and reconciles them with the followed files.
    pub(super) fn scan(&mut self, startup: bool) -> Result<(), ProduceError> {
        let found = self.discovery.scan();
        self.reconcile(found, startup)
    }

    pub(super) fn reconcile(
        &mut self,
        found: Vec<Found>,
        startup: bool,
    ) -> Result<(), ProduceError> {
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
                .find(|f| (f.dev, f.ino) == key && !f.is_deleted())
            {
                if f.path != path {
                    tracing::info!(from = %f.path.display(), to = %path.display(), file = %f.id, "followed file renamed");
                    if f.is_live() {
                        Stats::add(&self.stats.rotations, 1);
                    }
                    f.path = path;
                }
                f.phase = Phase::Live;
                continue;
            }
            self.consider(path, input, &md, startup)?;
        }
        for f in &mut self.files {
            if !seen.contains(&(f.dev, f.ino)) && f.is_live() {
                f.gone(now);
                Stats::add(&self.stats.rotations, 1);
                tracing::info!(path = %f.path.display(), file = %f.id, "file no longer at its path (rotated, replaced or deleted); reading it to its end");
            }
        }
        for f in &mut self.files {
            f.check(&self.publisher, &self.stats, &mut self.retired)?;
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
        let Some(fp) = Fingerprint::of(&file, self.cfg.exit_on_eof).map_err(read_err(&path))?
        else {
            // No complete first line yet: nothing to send; decide the start now.
            if !self.unidentified.contains_key(&key) {
                // Without a newline there is no whole line to skip: 0, unless
                // what is there is longer than a line may be.
                let start = if self.starts_at_end(startup, &path) {
                    last_line_start(&file, len, self.cfg.max_line_bytes).map_err(read_err(&path))?
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
            return self.follow_file(file, path, fp, k.source.clone(), Some(k), 0);
        }
        if let Some(i) = self.known.iter().position(|k| (k.dev, k.ino) == key) {
            // Rewritten (truncated while stopped, or right before a crash) or
            // a new file on a reused inode: either way new content, from 0, as
            // the next generation — the identity the running producer gave it
            // if it saw the truncation, so re-sent lines keep their headers.
            let k = self.known.swap_remove(i);
            tracing::info!(path = %path.display(), old_path = %k.path.display(), "file's first line changed since the checkpoint (rewritten, or a new file on a reused inode); reading it from its beginning");
            let source = self.source_for(input, &path);
            self.follow_file(file, path, fp, source, None, 0)?;
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
                        .map_err(read_err(&path))?;
                    if stale {
                        self.ignore(&path, key, end, len);
                        return Ok(());
                    }
                    end
                }
            }
        };
        let source = self.source_for(input, &path);
        self.follow_file(file, path, fp, source, None, start)
    }

    /// A file first seen at start-up, never checkpointed, at a path the
    /// checkpoint does not know: `tail -F` semantics unless `from_beginning`.
    fn starts_at_end(&self, startup: bool, path: &Path) -> bool {
        startup && !self.cfg.from_beginning && !self.known_paths.contains(path)
    }

    pub(crate) fn source_for(&self, input: usize, path: &Path) -> String {
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
        fp: Fingerprint,
        source: String,
        resumed: Option<FileState>,
        start: u64,
    ) -> Result<(), ProduceError> {
        let md = file.metadata().map_err(read_err(&path))?;
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
        } else if offset > 0 && offset == md.len() {
            // A new file taken at its end: what is in it now is not sent,
            // which on a first run looks like nothing happening.
            tracing::info!(path = %path.display(), %source, offset, file = %id,
                "following file from its end: the {offset} bytes already in it are not sent, \
                 only lines written from now on (--from-beginning sends a new file whole)");
        } else {
            tracing::info!(path = %path.display(), %source, offset, file = %id, "following file");
        }
        let tail = Tail::new(file, offset, self.cfg.max_line_bytes).map_err(read_err(&path))?;
        Stats::add(&self.stats.files_followed, 1);
        self.files.push(Followed {
            tail,
            dev: md.dev(),
            ino: md.ino(),
            identity: Identity::Known(fp),
            generation,
            key: logpipe_wire::record_key(&self.cfg.host, &source).into_bytes(),
            id,
            source,
            slot: self.publisher.add_slot(offset)?,
            last_len: md.len(),
            last_data: Instant::now(),
            at_eof: false,
            phase: Phase::Live,
            path,
        });
        Ok(())
    }

    /// Checkpointed files not found at any input path: rotated while we were
    /// stopped? Look for them (same device, inode, first line) in their old
    /// directory and drain them; the rest are gone.
    pub(super) fn find_moved_while_stopped(&mut self) -> Result<(), ProduceError> {
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
                    self.follow_file(file, path, fp, source, Some(k), 0)?;
                    let f = self.files.last_mut().expect("just added");
                    f.gone(Instant::now());
                }
                _ => tracing::warn!(path = %k.path.display(), offset = k.offset, file = %k.file,
                    "checkpointed file not found (deleted or compressed while logpipe was stopped); lines written to it after the checkpoint, if any, were not read"),
            }
        }
        Ok(())
    }
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

fn is_older(md: &std::fs::Metadata, age: Duration) -> bool {
    md.modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|e| e > age)
}
