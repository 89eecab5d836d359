//! Which paths to follow: literal paths and globs (`*`, `?`, `[...]`, `{a,b}`,
//! `**`), minus exclude patterns, each input naming its source.
//!
//! A glob is split into the directory before its first wildcard (walked with
//! `walkdir`) and the pattern (matched with `globset`, `*` not crossing `/`).
//! Discovery runs at start, on directory change events and every scan
//! interval, so files created later are picked up.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

/// One group of paths with the same source naming.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Paths and globs.
    pub paths: Vec<String>,
    /// Globs of paths (or file names) not to follow.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Source name for every file of this input; none: each file's path.
    #[serde(default)]
    pub source: Option<String>,
}

/// The `[[input]]` tables of a config file (its other keys are the other
/// settings, which `logpipe`'s `--config` checks).
#[derive(Debug, serde::Deserialize)]
struct InputsFile {
    #[serde(default)]
    input: Vec<InputSpec>,
}

/// Parses a produce config file:
///
/// ```toml
/// [[input]]
/// paths = ["/var/log/nginx/*.access.log"]
/// exclude = ["*.1"]
/// source = "nginx"
/// ```
pub fn inputs_from_toml(text: &str) -> Result<Vec<InputSpec>, String> {
    let f: InputsFile = toml::from_str(text).map_err(|e| e.to_string())?;
    if let Some(i) = f.input.iter().position(|i| i.paths.is_empty()) {
        return Err(format!("[[input]] number {} has no paths", i + 1));
    }
    Ok(f.input)
}

/// Compressed rotations are not text to follow: never followed, read only by
/// a backfill (`--from-beginning --exit-on-eof`, gzip; see `compressed.rs`).
const COMPRESSED: &[&str] = &["*.gz", "*.bz2", "*.xz", "*.zst", "*.zip", "*.lz4"];

/// Is this a compressed file's name?
pub fn is_compressed(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    COMPRESSED
        .iter()
        .any(|p| name.ends_with(p.trim_start_matches('*')))
}

/// The name a rotated file had while it was written: `access.log.2.gz`,
/// `access.log.1` and `access.log-20240501` all come from `access.log`.
/// Used as the source of files first seen under a rotated name, so history
/// and the live file publish as one source.
pub fn rotation_base(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    if let Some(ext) = COMPRESSED
        .iter()
        .map(|p| p.trim_start_matches('*'))
        .find(|e| name.ends_with(e))
    {
        name.truncate(name.len() - ext.len());
    }
    if let Some(i) = name.rfind(['.', '-']) {
        let tail = &name[i + 1..];
        if i > 0 && !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) {
            name.truncate(i);
        }
    }
    path.with_file_name(name)
}

/// A pattern or config that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("bad glob {pattern:?}: {source}")]
    Glob {
        pattern: String,
        source: globset::Error,
    },
    #[error("input has no paths")]
    NoPaths,
}

#[derive(Debug)]
enum Pattern {
    Literal(PathBuf),
    Glob {
        base: PathBuf,
        matcher: GlobMatcher,
        /// Directory levels below `base` (None: any, for `**`).
        depth: Option<usize>,
    },
}

#[derive(Debug)]
struct Input {
    patterns: Vec<Pattern>,
    exclude: GlobSet,
}

/// Which files a scan returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text files to follow.
    Plain,
    /// Compressed files (for a backfill).
    Compressed,
}

/// The compiled inputs.
#[derive(Debug)]
pub struct Discovery {
    inputs: Vec<Input>,
    specs: Vec<InputSpec>,
}

/// A path found, and which input found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub input: usize,
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

fn glob(pattern: &str) -> Result<Glob, DiscoverError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|source| DiscoverError::Glob {
            pattern: pattern.to_string(),
            source,
        })
}

impl Discovery {
    pub fn new(specs: Vec<InputSpec>) -> Result<Self, DiscoverError> {
        let mut inputs = Vec::new();
        for spec in &specs {
            if spec.paths.is_empty() {
                return Err(DiscoverError::NoPaths);
            }
            let mut patterns = Vec::new();
            for p in &spec.paths {
                if !is_glob(p) {
                    patterns.push(Pattern::Literal(PathBuf::from(p)));
                    continue;
                }
                let path = Path::new(p);
                let mut base = PathBuf::new();
                let mut rest = 0;
                for (i, c) in path.components().enumerate() {
                    if is_glob(&c.as_os_str().to_string_lossy()) {
                        rest = path.components().count() - i;
                        break;
                    }
                    base.push(c);
                }
                if base.as_os_str().is_empty() {
                    base.push(".");
                }
                let depth = if p.contains("**") { None } else { Some(rest) };
                let pattern = if path.is_relative() {
                    // Walked paths start with "./" when the base is ".".
                    format!("{{{p},./{p}}}")
                } else {
                    p.clone()
                };
                patterns.push(Pattern::Glob {
                    base,
                    matcher: glob(&pattern)?.compile_matcher(),
                    depth,
                });
            }
            let mut ex = GlobSetBuilder::new();
            for e in spec.exclude.iter().map(String::as_str) {
                ex.add(glob(e)?);
                // A pattern without '/' also applies to the file name.
                if !e.contains('/') {
                    ex.add(glob(&format!("**/{e}"))?);
                }
            }
            let exclude = ex.build().map_err(|source| DiscoverError::Glob {
                pattern: spec.exclude.join(","),
                source,
            })?;
            inputs.push(Input { patterns, exclude });
        }
        Ok(Discovery { inputs, specs })
    }

    pub fn spec(&self, input: usize) -> &InputSpec {
        &self.specs[input]
    }

    /// Every existing path of every input (a path in two inputs: the first),
    /// compressed files left out.
    pub fn scan(&self) -> Vec<Found> {
        self.scan_kind(Kind::Plain)
    }

    /// Every existing path of one kind.
    pub fn scan_kind(&self, kind: Kind) -> Vec<Found> {
        let wanted = |p: &Path| is_compressed(p) == (kind == Kind::Compressed);
        let mut out: Vec<Found> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, input) in self.inputs.iter().enumerate() {
            for p in &input.patterns {
                match p {
                    Pattern::Literal(path) => {
                        // Named explicitly: followed even if an exclude matches.
                        if path.is_file() && wanted(path) && seen.insert(path.clone()) {
                            out.push(Found {
                                path: path.clone(),
                                input: i,
                            });
                        }
                    }
                    Pattern::Glob {
                        base,
                        matcher,
                        depth,
                    } => {
                        let mut walk = walkdir::WalkDir::new(base).min_depth(1);
                        if let Some(d) = depth {
                            walk = walk.max_depth(*d);
                        }
                        let mut found: Vec<PathBuf> = walk
                            .into_iter()
                            .filter_map(Result::ok)
                            .filter(|e| !e.file_type().is_dir())
                            .map(walkdir::DirEntry::into_path)
                            .filter(|p| {
                                matcher.is_match(p) && !input.exclude.is_match(p) && wanted(p)
                            })
                            .filter(|p| p.is_file())
                            .collect();
                        found.sort();
                        for path in found {
                            if seen.insert(path.clone()) {
                                out.push(Found { path, input: i });
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Directories to watch for changes: (dir, recursive).
    pub fn watch_dirs(&self) -> Vec<(PathBuf, bool)> {
        let mut dirs = Vec::new();
        for input in &self.inputs {
            for p in &input.patterns {
                let d = match p {
                    Pattern::Literal(path) => (
                        path.parent()
                            .filter(|d| !d.as_os_str().is_empty())
                            .unwrap_or(Path::new("."))
                            .to_path_buf(),
                        false,
                    ),
                    Pattern::Glob { base, depth, .. } => (base.clone(), *depth != Some(1)),
                };
                if !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
        dirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(d: &Discovery, root: &Path) -> Vec<(String, usize)> {
        d.scan()
            .into_iter()
            .map(|f| {
                let rel = f.path.strip_prefix(root).unwrap();
                (rel.display().to_string(), f.input)
            })
            .collect()
    }

    #[test]
    fn globs_excludes_double_star_and_literals() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "a.log",
            "b.log",
            "b.log.1",
            "b.log.2.gz",
            "skip.log",
            "sub/c.log",
            "sub/deep/d.log",
            "other.txt",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x\n").unwrap();
        }
        let r = root.display();
        let d = Discovery::new(vec![
            InputSpec {
                paths: vec![format!("{r}/*.log*")],
                exclude: vec!["skip.*".into()],
                source: Some("web".into()),
            },
            InputSpec {
                paths: vec![format!("{r}/sub/**/*.log"), format!("{r}/other.txt")],
                exclude: vec![],
                source: None,
            },
        ])
        .unwrap();
        assert_eq!(
            names(&d, root),
            vec![
                ("a.log".into(), 0),
                ("b.log".into(), 0),
                ("b.log.1".into(), 0),
                ("sub/c.log".into(), 1),
                ("sub/deep/d.log".into(), 1),
                ("other.txt".into(), 1),
            ]
        );
        let gz: Vec<String> = d
            .scan_kind(Kind::Compressed)
            .iter()
            .map(|f| f.path.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(gz, vec!["b.log.2.gz".to_string()]);
        let dirs = d.watch_dirs();
        assert!(dirs.contains(&(root.to_path_buf(), false)), "{dirs:?}");
        assert!(dirs.contains(&(root.join("sub"), true)), "{dirs:?}");
    }

    #[test]
    fn rotated_names_lead_back_to_the_live_file() {
        for (rotated, base) in [
            ("/l/access.log.2.gz", "/l/access.log"),
            ("/l/access.log.1", "/l/access.log"),
            ("/l/access.log-20240501.gz", "/l/access.log"),
            ("/l/access.log", "/l/access.log"),
            ("/l/shop.access.log", "/l/shop.access.log"),
            ("/l/app.2024.log", "/l/app.2024.log"),
            ("/l/.1", "/l/.1"),
        ] {
            assert_eq!(
                rotation_base(Path::new(rotated)),
                Path::new(base),
                "{rotated}"
            );
        }
        assert!(is_compressed(Path::new("a.log.3.gz")));
        assert!(!is_compressed(Path::new("a.gz.log")));
    }

    #[test]
    fn config_file_maps_paths_to_sources() {
        let inputs = inputs_from_toml(
            "[[input]]\npaths = [\"/l/*.log\"]\nsource = \"web\"\n[[input]]\npaths = [\"/m/a.log\"]\nexclude = [\"*.1\"]\n",
        )
        .unwrap();
        assert_eq!(inputs[0].source.as_deref(), Some("web"));
        assert_eq!(inputs[1].exclude, vec!["*.1".to_string()]);
        let e = inputs_from_toml("[[input]]\npath = [\"x\"]\n").unwrap_err();
        assert!(e.contains("unknown field `path`"), "{e}");
    }

    #[test]
    fn a_bad_glob_names_itself() {
        let e = Discovery::new(vec![InputSpec {
            paths: vec!["/var/log/[".into()],
            ..Default::default()
        }])
        .unwrap_err();
        assert!(e.to_string().contains("\"/var/log/[\""), "{e}");
    }
}
