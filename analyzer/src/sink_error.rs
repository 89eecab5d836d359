//! The error of a write to a sink, shared by the sinks and the restore-point
//! stores beside them (its own module so that `sink` and `state` do not
//! import each other).

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
