//! Where window points go and where the restore points live beside them —
//! see docs/design.md, "Where the restore point lives".
//!
//! A sink's `write` returns `Ok` only when the batch is durably accepted; the
//! analyzer commits offsets only after that. Errors tell a retryable outside
//! failure (5xx, 429, timeout, connection refused) from a permanent one (bad
//! request, auth, missing database) so the caller can retry or stop.
//!
//! Restore points travel in the same write as the windows they vouch for.
//!
//! - [`influx`]: InfluxDB over HTTP (v1 `/write` or v2 `/api/v2/write`); its
//!   restore points are `logpipe_state*` points at the end of each request.
//! - `file`: a line-protocol file, its restore points in a JSON file beside
//!   it, replaced atomically after the lines are synced.
//! - `dry_run`: accepts everything, keeps nothing (`logpipe replay --dry-run`).

mod dry_run;
mod file;
pub mod influx;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::window::RestorePoint;

pub use dry_run::DryRunSink;
pub use file::{LpFileSink, PointFile};
pub use influx::{InfluxApi, InfluxConfig, InfluxSink};

/// A destination for line protocol plus the restore points that go with it.
pub trait Sink: Send {
    /// Writes one batch of window points and, after them, the restore points
    /// they vouch for; `Ok` means both are durably accepted.
    fn write(&mut self, line_protocol: &[u8], state: &StateBatch<'_>) -> Result<(), SinkError>;
    /// Where it writes, for logs.
    fn describe(&self) -> String;
    /// Reads back restore points; used from the consumer's rebalance callback.
    fn state_store(&self) -> Arc<dyn StateStore>;
}

/// A failed write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth trying again later: the data is not lost, only not yet written.
    #[error("{0} (will retry)")]
    Retryable(String),
    /// Trying again cannot help; the analyzer stops with this message.
    #[error("{0}")]
    Permanent(String),
}

/// Whose restore points: one consumer group on one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub group: String,
    pub topic: String,
}

/// The restore points that go with one write, per partition; each carries
/// only the sources whose max event time changed since the last write.
#[derive(Debug, Clone, Copy)]
pub struct StateBatch<'a> {
    pub scope: &'a Scope,
    pub analyzer: &'a str,
    pub points: &'a BTreeMap<i32, RestorePoint<String>>,
}

/// A restore point as a store holds it: sources by record key.
pub type StoredPoint = RestorePoint<String>;

/// Reads restore points back (on assignment).
pub trait StateStore: Send + Sync {
    fn load(
        &self,
        scope: &Scope,
        partitions: &[i32],
    ) -> Result<HashMap<i32, StoredPoint>, SinkError>;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::Scope;

    /// The scope the stores' tests write and read.
    pub(crate) fn scope() -> Scope {
        Scope {
            group: "logpipe-analyzers".into(),
            topic: "logs".into(),
        }
    }
}
