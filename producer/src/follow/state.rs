//! The checkpoint, assembled from the followed files and the closed ones
//! whose lines are still in flight; written only when it changed.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Follower;
use crate::checkpoint::{Checkpoint, FileState};
use crate::ProduceError;

impl Follower {
    /// Writes the checkpoint if anything changed.
    pub(super) fn checkpoint(&mut self) -> Result<(), ProduceError> {
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
        let mut files: Vec<FileState> = self
            .files
            .iter()
            .filter_map(|f| f.checkpoint_state(&self.publisher))
            .collect();
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
}
