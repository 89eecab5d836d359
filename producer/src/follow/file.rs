//! One followed file: where it is in its life ([`Phase`]), which content it
//! holds ([`Identity`]), and the checks that move it on (truncation, rewrite,
//! deletion).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Instant;

use crate::checkpoint::FileState;
use crate::identity::{self, Fingerprint};
use crate::publish::{Origin, Publisher};
use crate::stats::Stats;
use crate::tail::Tail;
use crate::ProduceError;

/// Where a followed file is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// An input path leads to it: read as it grows.
    Live,
    /// No input path leads to it since `since` (rotated away, replaced, or
    /// `deleted`: its last link is gone). Read to its end; closed once read
    /// and quiet for `rotate_wait` (a deleted one as soon as it is read).
    Gone { since: Instant, deleted: bool },
}

/// Which content the file holds, as its `file` header names it.
#[derive(Debug, Clone)]
pub(super) enum Identity {
    /// Named by its first line.
    Known(Fingerprint),
    /// Truncated, and the new first line is not complete yet: nothing is
    /// read until it is. `before` is the checkpoint entry from before the
    /// truncation (a restart then sees the rewrite too).
    Truncated { before: Option<FileState> },
}

/// A followed file.
pub(super) struct Followed {
    pub(super) tail: Tail,
    pub(super) path: PathBuf,
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) identity: Identity,
    pub(super) generation: u32,
    /// The `file` header of this generation.
    pub(super) id: String,
    pub(super) source: String,
    pub(super) key: Vec<u8>,
    /// Its delivery slot in the publisher.
    pub(super) slot: usize,
    pub(super) last_len: u64,
    pub(super) last_data: Instant,
    /// The last read reached the end of what was there.
    pub(super) at_eof: bool,
    pub(super) phase: Phase,
}

impl Followed {
    /// Its reader, and what every line of this generation carries.
    pub(super) fn tail_and_origin<'a>(&'a mut self, host: &'a str) -> (&'a mut Tail, Origin<'a>) {
        let Followed {
            tail,
            slot,
            key,
            source,
            id,
            ..
        } = self;
        let origin = Origin {
            slot: *slot,
            key,
            host,
            source,
            file_id: id,
        };
        (tail, origin)
    }

    pub(super) fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    pub(super) fn is_deleted(&self) -> bool {
        matches!(self.phase, Phase::Gone { deleted: true, .. })
    }

    /// No input path leads to it any more (from the next scan that misses it).
    pub(super) fn gone(&mut self, now: Instant) {
        if self.is_live() {
            self.phase = Phase::Gone {
                since: now,
                deleted: false,
            };
        }
    }

    /// Read to its end and done with: deleted, or gone for `rotate_wait`,
    /// and quiet for as long.
    pub(super) fn is_done(&self, now: Instant, rotate_wait: std::time::Duration) -> bool {
        let gone_long_enough = match self.phase {
            Phase::Live => false,
            Phase::Gone { deleted: true, .. } => true,
            Phase::Gone { since, .. } => now - since >= rotate_wait,
        };
        self.at_eof && gone_long_enough && now - self.last_data >= rotate_wait
    }

    /// Its checkpoint entry with `offset` acknowledged (none before its first
    /// line is known).
    pub(super) fn state(&self, offset: u64) -> Option<FileState> {
        let Identity::Known(fp) = self.identity else {
            return None;
        };
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

    /// Its checkpoint entry as far as Kafka acknowledged it.
    pub(super) fn checkpoint_state(&self, publisher: &Publisher) -> Option<FileState> {
        match &self.identity {
            Identity::Truncated { before } => before.clone(),
            Identity::Known(_) => self.state(publisher.delivered(self.slot)?),
        }
    }

    /// Looks at the file for truncation, rewrite and deletion. A truncated or
    /// rewritten file is read again from 0 as the next generation; its old
    /// slot goes to `retired` (acknowledgements of the old generation still
    /// arrive there).
    pub(super) fn check(
        &mut self,
        publisher: &Publisher,
        stats: &Stats,
        retired: &mut Vec<(usize, Option<FileState>)>,
    ) -> Result<(), ProduceError> {
        let path = self.path.clone();
        let err = |source| ProduceError::Read { path, source };
        let md = self.tail.file.metadata().map_err(err.clone())?;
        if md.nlink() == 0 && !self.is_deleted() {
            // No path leads to it now; counted as a rotation when the scan
            // that would have marked it gone did not see it first.
            if self.is_live() {
                Stats::add(&stats.rotations, 1);
            }
            let since = match self.phase {
                Phase::Gone { since, .. } => since,
                Phase::Live => Instant::now(),
            };
            self.phase = Phase::Gone {
                since,
                deleted: true,
            };
            Stats::add(&stats.deletions, 1);
            tracing::info!(path = %self.path.display(), file = %self.id, "file deleted; reading what is left of it");
        }
        let len = md.len();
        let changed = len != self.last_len;
        self.last_len = len;
        let rewritten = match &self.identity {
            Identity::Known(fp) if changed => !fp.matches(&self.tail.file).map_err(err.clone())?,
            Identity::Known(_) => false,
            Identity::Truncated { .. } => {
                // After a truncation: the new generation is named by its first line.
                if let Some(fp) = Fingerprint::of(&self.tail.file, false).map_err(err.clone())? {
                    self.identity = Identity::Known(fp);
                    self.id = identity::file_id(self.dev, self.ino, fp, self.generation);
                }
                false
            }
        };
        if len < self.tail.read_pos() || rewritten {
            Stats::add(&stats.truncations, 1);
            let before = publisher
                .delivered(self.slot)
                .and_then(|offset| self.state(offset));
            self.generation += 1;
            let old = std::mem::take(&mut self.id);
            // The new generation is named by its own first line (and nothing is
            // read before that line is complete), so a producer restarted from an
            // older checkpoint names it the same way: see `consider`.
            self.identity = match Fingerprint::of(&self.tail.file, false).map_err(err.clone())? {
                Some(fp) => {
                    self.id = identity::file_id(self.dev, self.ino, fp, self.generation);
                    Identity::Known(fp)
                }
                None => Identity::Truncated { before },
            };
            tracing::warn!(path = %self.path.display(), read = self.tail.read_pos(), size = len, %old, new = %self.id,
                "file truncated (copytruncate) or rewritten; reading it again from the start as a new generation");
            self.tail.reset().map_err(err)?;
            // Acks of the old generation still arrive; they count for the old slot.
            retired.push((self.slot, None));
            self.slot = publisher.add_slot(0)?;
            self.at_eof = false;
            self.last_len = len;
        }
        Ok(())
    }
}
