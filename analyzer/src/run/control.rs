//! [`Control`]: how a run is asked to end (its [`Shutdown`]), and what it
//! reports while it runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use logpipe_wire::Shutdown;

use crate::counters::Counters;

/// How a run is asked to end and what it reports; shared between the
/// analyzers of one process and whoever controls them.
#[derive(Debug)]
pub struct Control {
    /// A stop: write what is open as partial values, commit, return. A
    /// finish: close every window as final first. An abort: return at once.
    pub(super) shutdown: Shutdown,
    /// Next offset consumed per partition, refreshed about every 100 ms.
    pub(super) progress: Mutex<HashMap<i32, i64>>,
    /// Partitions currently owned, per analyzer id.
    pub(super) assignments: Mutex<HashMap<String, usize>>,
    /// The largest event time seen, refreshed with `progress` (`i64::MIN`
    /// before the first line).
    pub(super) event_ms: AtomicI64,
    /// Records consumed by every analyzer of this control, or found deleted
    /// by the broker before they were read, refreshed every batch of
    /// records (a partition re-read after a rebalance counts again).
    pub(super) consumed: AtomicU64,
    /// Records fetched from the broker and not yet consumed, over every
    /// analyzer of this control, refreshed with `consumed`.
    pub(super) queued: AtomicU64,
    /// Analyzers of this control that are running, and those that made
    /// their last commit: a member leaves the group only when every other
    /// one has committed too (a member leaving starts a rebalance, during
    /// which the group refuses commits).
    pub(super) running: AtomicUsize,
    pub(super) committed_last: AtomicUsize,
    /// What each analyzer last reported (about every 100 ms): for
    /// `--metrics-addr` and readiness.
    pub(super) status: Mutex<HashMap<String, Status>>,
    /// Analyzers loading restore points now (a partition is owned, and
    /// in [`Status::lag`], only once its restore point is loaded).
    pub(super) restoring: AtomicUsize,
}

/// One analyzer's state as its metrics and readiness show it.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub counters: Counters,
    /// Per owned partition: records on the broker not consumed yet, when
    /// the partition's high watermark is known.
    pub lag: BTreeMap<i32, Option<u64>>,
    /// Why writes are failing, while they are (consuming is paused).
    pub write_error: Option<String>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            shutdown: Shutdown::new(),
            progress: Mutex::default(),
            assignments: Mutex::default(),
            event_ms: AtomicI64::new(i64::MIN),
            consumed: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            committed_last: AtomicUsize::new(0),
            status: Mutex::default(),
            restoring: AtomicUsize::new(0),
        }
    }
}

impl Control {
    pub fn new() -> Arc<Self> {
        Arc::new(Control::default())
    }
    /// A control ended by `shutdown` (the process's, so a signal stops the
    /// analyzers).
    pub fn with_shutdown(shutdown: Shutdown) -> Arc<Self> {
        Arc::new(Control {
            shutdown,
            ..Control::default()
        })
    }
    /// The switch that ends the run.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }
    /// Records consumed so far by the analyzers of this control (with those
    /// the broker deleted before they were read: passed either way).
    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }
    /// Records taken from the broker so far: consumed, or fetched and
    /// waiting in the analyzers' queues.
    pub fn fetched(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed) + self.queued.load(Ordering::Relaxed)
    }
    /// The largest event time seen so far, if any line was.
    pub fn event_ms(&self) -> Option<i64> {
        Some(self.event_ms.load(Ordering::Relaxed)).filter(|&t| t != i64::MIN)
    }
    /// Stop reading, write what is open as partial values, commit, return.
    /// Open windows are rebuilt by whoever consumes the partitions next.
    pub fn stop(&self) {
        self.shutdown.stop();
    }
    /// End of input: close every window as final, write, commit, return.
    pub fn finish(&self) {
        self.shutdown.finish();
    }
    pub fn is_stopping(&self) -> bool {
        self.shutdown.is_requested()
    }
    /// Next offset consumed per partition, as last reported by analyzers.
    pub fn progress(&self) -> HashMap<i32, i64> {
        self.progress.lock().unwrap().clone()
    }
    /// Number of partitions each analyzer currently owns.
    pub fn assignments(&self) -> HashMap<String, usize> {
        self.assignments.lock().unwrap().clone()
    }
    /// What each running analyzer last reported, by analyzer id.
    pub fn status(&self) -> Vec<(String, Status)> {
        let mut v: Vec<_> = self
            .status
            .lock()
            .unwrap()
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
    /// The counters of every running analyzer, summed.
    pub fn totals(&self) -> Counters {
        let mut c = Counters::default();
        for s in self.status.lock().unwrap().values() {
            c.add(&s.counters);
        }
        c
    }
    /// Whether the analyzers can do their work: each owns partitions whose
    /// restore points are loaded, and its writes are accepted.
    pub fn ready(&self) -> Result<(), String> {
        let status = self.status();
        if self.restoring.load(Ordering::Relaxed) > 0 {
            return Err("loading restore points from the sink".into());
        }
        if status.is_empty() {
            return Err("the analyzer has not joined its group yet".into());
        }
        for (id, s) in &status {
            if let Some(e) = &s.write_error {
                return Err(format!("{id}: writes to the sink fail: {e}"));
            }
            if s.lag.is_empty() {
                return Err(format!(
                    "{id}: no partitions assigned (more members than partitions, or a rebalance under way)"
                ));
            }
        }
        Ok(())
    }
}

/// Counts an analyzer out of [`Control::running`] however its run ends.
pub(super) struct Running(Arc<Control>);

impl Running {
    pub(super) fn new(control: Arc<Control>) -> Self {
        control.running.fetch_add(1, Ordering::SeqCst);
        Running(control)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}
