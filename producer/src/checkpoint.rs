//! Read positions that survive a restart, written atomically with a version.
//!
//! A position is recorded only once Kafka acknowledged every line before it,
//! so after a crash the producer resends at most the unacknowledged tail —
//! and those re-sent lines carry the same (`file`, `offset`) headers, which is
//! what lets the analyzers drop them as duplicates.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where one file was acknowledged up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    /// Device and inode of the file when the position was taken.
    pub dev: u64,
    pub ino: u64,
    /// Generation: bumped each time the file was truncated (copytruncate).
    pub generation: u32,
    /// Byte offset after the last acknowledged line.
    pub offset: u64,
}

/// The checkpoint file's content, tagged with its format version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum Checkpoint {
    #[serde(rename = "1")]
    V1 {
        files: BTreeMap<PathBuf, FilePosition>,
    },
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint::V1 {
            files: BTreeMap::new(),
        }
    }
}

/// A checkpoint that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is not a logpipe checkpoint of a known version: {source}")]
    Format {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl Checkpoint {
    pub fn files(&self) -> &BTreeMap<PathBuf, FilePosition> {
        match self {
            Checkpoint::V1 { files } => files,
        }
    }

    pub fn files_mut(&mut self) -> &mut BTreeMap<PathBuf, FilePosition> {
        match self {
            Checkpoint::V1 { files } => files,
        }
    }

    /// Loads `path`; a missing file is an empty checkpoint.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Format {
                path: path.into(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint::default()),
            Err(source) => Err(CheckpointError::Io {
                path: path.into(),
                source,
            }),
        }
    }

    /// Writes `path` atomically: a temp file beside it, fsync, rename, fsync the directory.
    pub fn store(&self, path: &Path) -> Result<(), CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.into(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(self).expect("checkpoint serializes"))
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, path).map_err(io)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/checkpoints.json");
        assert_eq!(Checkpoint::load(&path).unwrap(), Checkpoint::default());
        let mut cp = Checkpoint::default();
        cp.files_mut().insert(
            "/var/log/a.log".into(),
            FilePosition {
                dev: 1,
                ino: 2,
                generation: 0,
                offset: 99,
            },
        );
        cp.store(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\": \"1\""), "{text}");
        assert_eq!(Checkpoint::load(&path).unwrap(), cp);
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn unknown_version_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        fs::write(&path, r#"{"version":"9","files":{}}"#).unwrap();
        let e = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("not a logpipe checkpoint of a known version"),
            "{e}"
        );
    }
}
