//! The line-protocol file sink and its restore-point file.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use super::{Scope, Sink, SinkError, StateBatch, StateStore, StoredPoint};

/// Appends line protocol to a file (the demo's default output), fsynced per
/// batch; restore points go to `<file>.state.json`.
pub struct LpFileSink {
    path: PathBuf,
    file: File,
    state: Arc<PointFile>,
}

impl LpFileSink {
    pub fn create(path: &Path) -> Result<Self, SinkError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| SinkError::Permanent(format!("cannot open {}: {e}", path.display())))?;
        let mut state_path = path.as_os_str().to_owned();
        state_path.push(".state.json");
        Ok(LpFileSink {
            path: path.to_owned(),
            file,
            state: PointFile::open(PathBuf::from(state_path))?,
        })
    }
}

impl Sink for LpFileSink {
    fn write(&mut self, lp: &[u8], st: &StateBatch<'_>) -> Result<(), SinkError> {
        self.file
            .write_all(lp)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| SinkError::Retryable(format!("writing {}: {e}", self.path.display())))?;
        self.state.save(st)
    }

    fn describe(&self) -> String {
        format!("line-protocol file {}", self.path.display())
    }

    fn state_store(&self) -> Arc<dyn StateStore> {
        self.state.clone()
    }
}

/// Restore points of the line-protocol file sink, in a JSON file replaced
/// atomically. One instance per path in a process (the demo's analyzers share
/// one output file).
pub struct PointFile {
    path: PathBuf,
    data: Mutex<FileData>,
}

/// The file's format versions.
#[derive(Serialize, Deserialize)]
enum Stored<'a> {
    #[serde(rename = "1")]
    V1(std::borrow::Cow<'a, FileData>),
}

const WHAT: &str = "restore-point file";

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct FileData {
    /// `group`, `topic`, partition → point.
    points: BTreeMap<String, BTreeMap<String, BTreeMap<i32, FilePoint>>>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct FilePoint {
    offset: i64,
    next_offset: i64,
    sources: BTreeMap<String, i64>,
    /// Anomaly baselines by source (absent in files of older builds).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    baselines: BTreeMap<String, String>,
    /// Template histories by source (absent in files of older builds).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    templates: BTreeMap<String, String>,
}

impl PointFile {
    pub fn open(path: PathBuf) -> Result<Arc<PointFile>, SinkError> {
        static OPEN: OnceLock<Mutex<HashMap<PathBuf, Arc<PointFile>>>> = OnceLock::new();
        let mut open = OPEN.get_or_init(Default::default).lock().unwrap();
        if let Some(s) = open.get(&path) {
            return Ok(s.clone());
        }
        let data = match logpipe_wire::state_file::load::<Stored>(&path, WHAT) {
            Ok(Some(Stored::V1(d))) => d.into_owned(),
            Ok(None) => FileData::default(),
            Err(e) => return Err(SinkError::Permanent(e.to_string())),
        };
        let s = Arc::new(PointFile {
            path: path.clone(),
            data: Mutex::new(data),
        });
        open.insert(path, s.clone());
        Ok(s)
    }

    pub fn save(&self, st: &StateBatch<'_>) -> Result<(), SinkError> {
        if st.points.is_empty() {
            return Ok(());
        }
        let mut data = self.data.lock().unwrap();
        let parts = data
            .points
            .entry(st.scope.group.clone())
            .or_default()
            .entry(st.scope.topic.clone())
            .or_default();
        for (&partition, u) in st.points {
            let p = parts.entry(partition).or_default();
            p.offset = u.offset;
            p.next_offset = u.next_offset;
            p.sources.extend(u.max_event_ms.iter().cloned());
            p.baselines.extend(u.baselines.iter().cloned());
            p.templates.extend(u.templates.iter().cloned());
        }
        logpipe_wire::state_file::store(
            &self.path,
            WHAT,
            &Stored::V1(std::borrow::Cow::Borrowed(&*data)),
        )
        .map_err(|e| SinkError::Retryable(e.to_string()))
    }
}

impl StateStore for PointFile {
    fn load(
        &self,
        scope: &Scope,
        partitions: &[i32],
    ) -> Result<HashMap<i32, StoredPoint>, SinkError> {
        let data = self.data.lock().unwrap();
        let Some(parts) = data
            .points
            .get(&scope.group)
            .and_then(|t| t.get(&scope.topic))
        else {
            return Ok(HashMap::new());
        };
        Ok(partitions
            .iter()
            .filter_map(|p| {
                let fp = parts.get(p)?;
                Some((
                    *p,
                    StoredPoint {
                        offset: fp.offset,
                        next_offset: fp.next_offset,
                        max_event_ms: fp.sources.iter().map(|(k, &m)| (k.clone(), m)).collect(),
                        // One file, one writer at a time (the demo's
                        // analyzers share it inside one process).
                        ahead: Vec::new(),
                        baselines: fp
                            .baselines
                            .iter()
                            .map(|(k, b)| (k.clone(), b.clone()))
                            .collect(),
                        templates: fp
                            .templates
                            .iter()
                            .map(|(k, t)| (k.clone(), t.clone()))
                            .collect(),
                    },
                ))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::scope;

    #[test]
    fn file_state_merges_updates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.lp.state.json");
        let s = scope();
        let st = PointFile::open(path.clone()).unwrap();
        let u1 = BTreeMap::from([(
            0,
            StoredPoint {
                offset: 5,
                next_offset: 9,
                max_event_ms: vec![("a".into(), 10), ("b".into(), 20)],
                ahead: vec![],
                baselines: vec![],
                templates: vec![],
            },
        )]);
        st.save(&StateBatch {
            scope: &s,
            analyzer: "x",
            points: &u1,
        })
        .unwrap();
        let u2 = BTreeMap::from([(
            0,
            StoredPoint {
                offset: 7,
                next_offset: 12,
                max_event_ms: vec![("b".into(), 30)],
                ahead: vec![],
                baselines: vec![],
                templates: vec![],
            },
        )]);
        st.save(&StateBatch {
            scope: &s,
            analyzer: "x",
            points: &u2,
        })
        .unwrap();
        let data: FileData = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let p = &data.points["logpipe-analyzers"]["logs"][&0];
        assert_eq!((p.offset, p.next_offset), (7, 12));
        assert_eq!(p.sources.get("a"), Some(&10));
        assert_eq!(p.sources.get("b"), Some(&30));
        let got = st.load(&s, &[0, 1]).unwrap();
        assert_eq!(
            got[&0].max_event_ms,
            vec![("a".into(), 10), ("b".into(), 30)]
        );
    }
}
