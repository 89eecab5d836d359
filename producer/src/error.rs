//! Why the producer stopped.

use std::path::{Path, PathBuf};

use crate::checkpoint::CheckpointError;
use crate::collect;
use crate::discover::DiscoverError;
use crate::publish::PublishError;

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

/// An I/O error reading `path`, as the producer reports it.
pub(crate) fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> ProduceError + '_ {
    move |source| ProduceError::Read {
        path: path.to_path_buf(),
        source,
    }
}
