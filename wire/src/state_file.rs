//! Every state file logpipe keeps (the producer's checkpoints and
//! compressed-file progress, the file sink's restore points, the archive's
//! state) is written and read here: JSON replaced atomically (a temp file
//! beside it, fsync, rename, fsync of the directory), its format an enum of
//! the caller's with one variant per version, renamed `"1"`, `"2"`, … On
//! disk the variant is the object's `version` field beside the version's
//! own fields (`{"version": "2", "files": …}`), so an old file is carried
//! over by its variant and an unknown one is refused by name.
//!
//! (The helper moves the tag itself instead of serde's `tag = "version"`:
//! serde reads an internally tagged enum through a buffer that no longer
//! turns the string keys of a JSON object into integers, so a state with a
//! `BTreeMap<i32, _>` would not read back.)

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} is not a logpipe {what} of a known version ({source}); move it away to start afresh", path.display())]
    Format {
        what: &'static str,
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Reads the state file `path` (`None`: there is none yet). `what` names it
/// in errors ("checkpoint", "archive state", …).
///
/// A `version` written as a JSON number (the files of earlier releases) is
/// read as the same tag in a string.
pub fn load<T: DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<Option<T>, StateFileError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateFileError::Io {
                what,
                path: path.into(),
                source,
            })
        }
    };
    let format = |source| StateFileError::Format {
        what,
        path: path.into(),
        source,
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(format)?;
    let serde_json::Value::Object(mut fields) = v else {
        return Err(format(serde::de::Error::custom("not a JSON object")));
    };
    let version = match fields.remove("version") {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => return Err(format(serde::de::Error::missing_field("version"))),
    };
    let mut tagged = serde_json::Map::new();
    tagged.insert(version, serde_json::Value::Object(fields));
    serde_json::from_value(serde_json::Value::Object(tagged))
        .map(Some)
        .map_err(format)
}

/// Replaces the state file `path` with `value`, atomically.
pub fn store<T: Serialize>(
    path: &Path,
    what: &'static str,
    value: &T,
) -> Result<(), StateFileError> {
    store_bytes(path, what, &encode(value))
}

/// `value` as the bytes [`store`] writes (for callers that skip a write
/// when nothing changed).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let v = serde_json::to_value(value).expect("state files are plain data");
    let serde_json::Value::Object(tagged) = v else {
        panic!("a state file's type is an enum of versions with fields: {v}");
    };
    let Some((version, serde_json::Value::Object(fields))) = tagged.into_iter().next() else {
        panic!("a state file's version holds fields");
    };
    let mut out = serde_json::Map::new();
    out.insert("version".into(), version.into());
    out.extend(fields);
    serde_json::to_vec_pretty(&out).expect("state files are plain data")
}

/// Replaces `path` with `bytes` atomically: a temp file beside it, fsync,
/// rename, fsync the directory (created when missing).
pub fn store_bytes(path: &Path, what: &'static str, bytes: &[u8]) -> Result<(), StateFileError> {
    let io = |source| StateFileError::Io {
        what,
        path: path.into(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Demo {
        #[serde(rename = "1")]
        V1 { n: u32 },
        #[serde(rename = "2")]
        V2(Two),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Two {
        by_partition: std::collections::BTreeMap<i32, u64>,
    }

    #[test]
    fn round_trips_atomically_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("s.json");
        assert_eq!(load::<Demo>(&path, "demo state").unwrap(), None);
        store(&path, "demo state", &Demo::V1 { n: 7 }).unwrap();
        assert_eq!(
            load::<Demo>(&path, "demo state").unwrap(),
            Some(Demo::V1 { n: 7 })
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\": \"1\""), "{text}");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file is left: {names:?}");
        // A newtype version with integer map keys (JSON strings on disk).
        let two = Demo::V2(Two {
            by_partition: [(0, 5), (2, 9)].into(),
        });
        store(&path, "demo state", &two).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"version\": \"2\"") && text.contains("\"2\": 9"),
            "{text}"
        );
        assert_eq!(load::<Demo>(&path, "demo state").unwrap(), Some(two));
    }

    #[test]
    fn a_numeric_version_reads_as_its_tag_and_an_unknown_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        fs::write(&path, r#"{"version":1,"n":3}"#).unwrap();
        assert_eq!(
            load::<Demo>(&path, "demo state").unwrap(),
            Some(Demo::V1 { n: 3 })
        );
        fs::write(&path, r#"{"version":"9","n":3}"#).unwrap();
        let e = load::<Demo>(&path, "demo state").unwrap_err().to_string();
        assert!(
            e.contains("is not a logpipe demo state of a known version"),
            "{e}"
        );
        assert!(e.contains("s.json"), "{e}");
        fs::write(&path, "{").unwrap();
        assert!(load::<Demo>(&path, "demo state").is_err());
    }
}
