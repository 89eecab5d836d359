//! Read positions that survive a restart, written atomically with a version.
//!
//! A position is recorded only once Kafka acknowledged every line before it,
//! so after a crash the producer resends at most the unacknowledged tail —
//! and those re-sent lines carry the same (`file`, `offset`) headers, which is
//! what lets the analyzers drop them as duplicates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use logpipe_wire::state_file;

use serde::{Deserialize, Serialize};

/// Where one file (one generation of it) was acknowledged up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    /// The `file` header its lines carry.
    pub file: String,
    /// Device and inode of the file.
    pub dev: u64,
    pub ino: u64,
    /// Bytes of the first line hashed, and the hash (see `identity`); a length
    /// of 0 matches any file (a position carried over from version 1).
    pub fingerprint_len: u32,
    pub fingerprint: u64,
    /// Bumped each time the file was truncated (copytruncate).
    pub generation: u32,
    /// Byte offset after the last acknowledged line.
    pub offset: u64,
    /// Offset up to which lines had been handed to Kafka when this was
    /// written: lines between `offset` and here were in flight, and may have
    /// been acknowledged before a crash (then they are sent again).
    pub read: u64,
    /// Where it was last seen, and the source its lines are published as.
    pub path: PathBuf,
    pub source: String,
}

/// Where one file was acknowledged up to (checkpoint version 1, keyed by path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePositionV1 {
    pub dev: u64,
    pub ino: u64,
    pub generation: u32,
    pub offset: u64,
}

/// The checkpoint file's content, tagged with its format version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Checkpoint {
    /// Positions keyed by path, identity device:inode:generation.
    #[serde(rename = "1")]
    V1 {
        files: BTreeMap<PathBuf, FilePositionV1>,
    },
    /// Positions of files known by identity (device, inode, fingerprint).
    #[serde(rename = "2")]
    V2 { files: Vec<FileState> },
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint::V2 { files: Vec::new() }
    }
}

/// A checkpoint that could not be read or written.
pub type CheckpointError = logpipe_wire::state_file::StateFileError;

impl Checkpoint {
    /// The positions, a version-1 checkpoint carried over: its files are
    /// recognised by device and inode alone and keep their old `file` header.
    pub fn into_files(self) -> Vec<FileState> {
        match self {
            Checkpoint::V2 { files } => files,
            Checkpoint::V1 { files } => files
                .into_iter()
                .map(|(path, p)| FileState {
                    file: format!("{:x}:{:x}:{}", p.dev, p.ino, p.generation),
                    dev: p.dev,
                    ino: p.ino,
                    fingerprint_len: 0,
                    fingerprint: 0,
                    generation: p.generation,
                    offset: p.offset,
                    read: p.offset,
                    source: path.display().to_string(),
                    path,
                })
                .collect(),
        }
    }

    /// Loads `path`; a missing file is an empty checkpoint.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        Ok(state_file::load(path, "checkpoint")?.unwrap_or_default())
    }

    /// Writes `path` atomically (see [`state_file`]).
    pub fn store(&self, path: &Path) -> Result<(), CheckpointError> {
        state_file::store(path, "checkpoint", self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn round_trips_and_names_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/checkpoints.json");
        assert_eq!(Checkpoint::load(&path).unwrap(), Checkpoint::default());
        let cp = Checkpoint::V2 {
            files: vec![FileState {
                file: "1:2:00000000000000ff:0".into(),
                dev: 1,
                ino: 2,
                fingerprint_len: 80,
                fingerprint: 255,
                generation: 0,
                offset: 99,
                read: 120,
                path: "/var/log/a.log".into(),
                source: "web".into(),
            }],
        };
        cp.store(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\": \"2\""), "{text}");
        assert_eq!(Checkpoint::load(&path).unwrap(), cp);
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn version_1_is_carried_over_with_its_file_headers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        fs::write(
            &path,
            r#"{"version":"1","files":{"/l/a.log":{"dev":10,"ino":255,"generation":2,"offset":7}}}"#,
        )
        .unwrap();
        let files = Checkpoint::load(&path).unwrap().into_files();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].file, "a:ff:2");
        assert_eq!((files[0].offset, files[0].fingerprint_len), (7, 0));
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
