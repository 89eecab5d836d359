//! A sink that keeps nothing.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Scope, Sink, SinkError, StateBatch, StateStore, StoredPoint};

/// `logpipe replay --dry-run`: accepts every batch and keeps nothing, so the
/// run reads and aggregates exactly as it would and reports what it would
/// have written.
#[derive(Debug, Default)]
pub struct DryRunSink {
    /// Bytes of line protocol that would have been written.
    pub bytes: u64,
}

/// The restore points of a sink that stores none.
struct NoState;

impl StateStore for NoState {
    fn load(&self, _: &Scope, _: &[i32]) -> Result<HashMap<i32, StoredPoint>, SinkError> {
        Ok(HashMap::new())
    }
}

impl Sink for DryRunSink {
    fn write(&mut self, lp: &[u8], _: &StateBatch<'_>) -> Result<(), SinkError> {
        self.bytes += lp.len() as u64;
        Ok(())
    }

    fn describe(&self) -> String {
        "nothing (dry run)".to_string()
    }

    fn state_store(&self) -> Arc<dyn StateStore> {
        Arc::new(NoState)
    }
}
