//! Ownership changes: restore points loaded inside the rebalance callback,
//! partitions taken over from them, and revoked partitions forgotten.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logpipe_consumer::{GroupConsumer, RebalanceEvent, StartOffsets};

use super::ingest::Part;
use super::{AnalyzeError, Analyzer, Control};
use crate::store::{Scope, SinkError, StateStore, StoredPoint};
use crate::window::PartitionWindows;

/// Loads restore points inside the rebalance callback; retries a store that
/// cannot be reached for up to four minutes (the group waits meanwhile; below
/// librdkafka's default `max.poll.interval.ms` of five minutes), then gives up
/// and the analyzer exits with the cause.
pub(crate) fn start_offsets(
    store: Arc<dyn StateStore>,
    scope: Scope,
    loaded: Arc<Mutex<HashMap<i32, StoredPoint>>>,
    control: Arc<Control>,
) -> StartOffsets {
    Box::new(move |ps: &[i32]| {
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut wait = Duration::from_millis(200);
        let _restoring = Restoring::new(&control);
        loop {
            match store.load(&scope, ps) {
                Ok(points) => {
                    let offsets = points.iter().map(|(&p, pt)| (p, pt.offset)).collect();
                    tracing::info!(partitions = ?ps, restored = points.len(), "restore points loaded");
                    loaded.lock().unwrap().extend(points);
                    return Ok(offsets);
                }
                Err(SinkError::Retryable(e))
                    if Instant::now() < deadline && !control.is_stopping() =>
                {
                    tracing::warn!(error = %e, "cannot read restore points yet, retrying");
                    control.shutdown().wait_timeout(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(format!("reading restore points failed: {e}")),
            }
        }
    })
}

/// Counts a load of restore points in [`Control::restoring`] while it lasts.
struct Restoring<'a>(&'a Control);

impl<'a> Restoring<'a> {
    fn new(c: &'a Control) -> Self {
        c.restoring.fetch_add(1, Ordering::Relaxed);
        Restoring(c)
    }
}

impl Drop for Restoring<'_> {
    fn drop(&mut self) {
        self.0.restoring.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Analyzer {
    pub(super) fn apply_rebalance(
        &mut self,
        consumer: &GroupConsumer,
        ev: RebalanceEvent,
    ) -> Result<(), AnalyzeError> {
        match ev {
            RebalanceEvent::Revoked(ps) => {
                tracing::info!(count = ps.len(), partitions = ?ps, "partitions revoked");
                self.forget(&ps);
            }
            RebalanceEvent::Lost => {
                tracing::warn!("partition assignment lost");
                let ps: Vec<i32> = self.parts.keys().copied().collect();
                self.forget(&ps);
            }
            RebalanceEvent::Assigned(ps) => {
                tracing::info!(count = ps.len(), partitions = ?ps, "partitions assigned");
                let mut loaded = self.loaded.lock().unwrap();
                let mut unknown = vec![];
                for &p in &ps {
                    let mut dead_lettered_below = 0;
                    let mut start = None;
                    let windows = match loaded.remove(&p) {
                        Some(pt) => {
                            start = Some(pt.offset);
                            dead_lettered_below = pt.next_offset;
                            let sources = &mut self.ingest.sources;
                            let point = pt.map_sources(|k| sources.id_of_key(k));
                            PartitionWindows::restored(self.cfg.spec, &point)
                        }
                        None => PartitionWindows::new(self.cfg.spec),
                    };
                    if let Some(r) = &self.cfg.replay {
                        start = r.starts.get(&p).copied();
                        if !r.dead_letter {
                            dead_lettered_below = i64::MAX;
                        }
                    }
                    if start.is_none() {
                        unknown.push(p);
                    }
                    let partial_wait_ms =
                        i64::try_from(self.cfg.partial_wait.as_millis()).unwrap_or(i64::MAX);
                    self.parts.insert(
                        p,
                        Part::new(
                            windows,
                            self.cfg.dedup_files,
                            partial_wait_ms,
                            start,
                            dead_lettered_below,
                        ),
                    );
                }
                drop(loaded);
                // Without a restore point a partition starts at the group's
                // commit, else at its log start: learn which, so that a first
                // record beyond it is seen as a loss.
                match consumer.start_positions(&unknown, Duration::from_secs(10)) {
                    Ok(starts) => {
                        for (p, o) in starts {
                            if let Some(part) = self.parts.get_mut(&p) {
                                part.next.get_or_insert(o);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        partitions = ?unknown,
                        "cannot learn where these partitions start: records the broker deleted before their first record would go unnoticed"
                    ),
                }
                if self.paused {
                    let _ = consumer.pause(&ps);
                }
                if let Some(r) = &self.cfg.replay {
                    // Partitions with nothing to read are done at once.
                    let empty: Vec<i32> = ps
                        .iter()
                        .copied()
                        .filter(|&p| r.is_empty_partition(p))
                        .collect();
                    for p in empty {
                        self.replay_done(consumer, p, "nothing to read");
                    }
                }
            }
            RebalanceEvent::AssignFailed(e) => return Err(AnalyzeError::Restore(e)),
        }
        self.control
            .assignments
            .lock()
            .unwrap()
            .insert(self.cfg.analyzer_id.clone(), self.parts.len());
        Ok(())
    }

    /// Drops revoked partitions' state and unwritten values: the new owner
    /// rebuilds them from the last restore point the sink accepted.
    fn forget(&mut self, ps: &[i32]) {
        let mut progress = self.control.progress.lock().unwrap();
        for p in ps {
            self.parts.remove(p);
            progress.remove(p);
            // The next owner commits; ours would be refused or stale.
            self.uncommitted.remove(p);
        }
        self.batch.drop_partitions(ps);
    }
}
