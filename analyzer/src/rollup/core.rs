//! The fleet roll-up's state — pure: no I/O; the wall clock comes in as an
//! argument.
//!
//! A partition of the fleet topic carries whole windows (every source's
//! record of window `W` lands in partition `W mod partitions`), so each
//! partition is merged on its own: per window, the latest record of every
//! (host, source) — a record for a key it already holds replaces it (a
//! re-published window, never a second count).
//!
//! **When a window is written.** A window is *complete* when every source
//! that sent the partition's previous window has sent this one or a later
//! one (a source publishes its windows in order, so a later window means
//! it had no requests in this one). A complete window is written at once,
//! an incomplete one when `grace` has passed since its first record. After
//! that, any change (a late source, a re-published window) rewrites its
//! points at the next flush. Points are a function of the records held,
//! written with the full field set, so a rewrite replaces the earlier
//! point in InfluxDB.
//!
//! **Restore points.** A window is forgotten once it is written and older
//! than the newest window by more than `keep`; its end becomes the
//! partition's *horizon*, below which records are ignored (counted as
//! `too_old`, or `replayed` when re-read after a restore). The restore
//! point is the smallest offset of any record of a held window, with the
//! horizon: a rollup that restarts from it re-reads every record of every
//! held window, so its points are the ones an uninterrupted run writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::fleet::WindowSketch;
use crate::window::{Agg, Metrics};

/// The restore point's pseudo-source that carries the horizon.
pub const HORIZON_KEY: &str = "(horizon)";

/// What a roll-up merges and when.
#[derive(Debug, Clone)]
pub struct RollupSpec {
    /// How long an incomplete window waits for its missing sources.
    pub grace: Duration,
    /// How far behind the newest window a written window is kept for
    /// rewrites (event time).
    pub keep_ms: i64,
    /// Ranked keys written per dimension and group.
    pub top_k: u16,
    pub groups: Arc<Groups>,
}

/// One group's identity in the points: tags `scope` and `group`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    /// `all`, `host` or `group` (from the groups file).
    pub scope: &'static str,
    pub name: String,
}

/// A named group of the groups file.
#[derive(Debug, Clone)]
struct Named {
    name: String,
    hosts: Option<GlobSet>,
    sources: Option<GlobSet>,
}

/// Which groups a source belongs to: `all`, its host (unless switched
/// off), and every named group whose globs match it.
#[derive(Debug, Clone)]
pub struct Groups {
    per_host: bool,
    named: Vec<Named>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupsFile {
    #[serde(default)]
    group: Vec<GroupEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupEntry {
    name: String,
    hosts: Option<Vec<String>>,
    sources: Option<Vec<String>>,
}

fn globs(name: &str, what: &str, pats: Option<Vec<String>>) -> Result<Option<GlobSet>, String> {
    let Some(pats) = pats else {
        return Ok(None);
    };
    let mut b = GlobSetBuilder::new();
    for p in &pats {
        b.add(Glob::new(p).map_err(|e| format!("group {name:?}: {what} pattern {p:?}: {e}"))?);
    }
    b.build()
        .map(Some)
        .map_err(|e| format!("group {name:?}: {what}: {e}"))
}

impl Groups {
    /// `all` and one group per host.
    pub fn new(per_host: bool) -> Self {
        Groups {
            per_host,
            named: Vec::new(),
        }
    }

    /// Adds the groups of a groups file (TOML: `[[group]]` tables with
    /// `name` and optional `hosts` / `sources` glob lists).
    pub fn with_file(mut self, text: &str) -> Result<Self, String> {
        let f: GroupsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for g in f.group {
            if g.name.is_empty() {
                return Err("a group without a name".into());
            }
            if self.named.iter().any(|n| n.name == g.name) {
                return Err(format!("group {:?} twice", g.name));
            }
            self.named.push(Named {
                hosts: globs(&g.name, "hosts", g.hosts)?,
                sources: globs(&g.name, "sources", g.sources)?,
                name: g.name,
            });
        }
        Ok(self)
    }

    /// The groups of a (host, source), `all` first.
    pub fn of(&self, host: &str, source: &str, out: &mut Vec<GroupKey>) {
        out.clear();
        out.push(GroupKey {
            scope: "all",
            name: "all".into(),
        });
        if self.per_host {
            out.push(GroupKey {
                scope: "host",
                name: if host.is_empty() {
                    "-".into()
                } else {
                    host.into()
                },
            });
        }
        for n in &self.named {
            if n.hosts.as_ref().is_none_or(|g| g.is_match(host))
                && n.sources.as_ref().is_none_or(|g| g.is_match(source))
            {
                out.push(GroupKey {
                    scope: "group",
                    name: n.name.clone(),
                });
            }
        }
    }
}

/// A held record of one source.
#[derive(Clone)]
struct Held {
    agg: Arc<Agg>,
    offset: i64,
}

/// One window of a partition.
struct FleetWindow {
    window_ms: i64,
    sources: BTreeMap<(String, String), Held>,
    first_seen: Instant,
    /// Written once (complete, or its grace passed): every change since is
    /// a rewrite, written at the next flush.
    released: bool,
    /// Changed since its points were last handed out.
    dirty: bool,
}

/// What [`PartitionFleet::record`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// A new source's window, or a window published again (replaced).
    Added,
    Replaced,
    /// Its window is older than the horizon: already written and forgotten.
    TooOld,
    /// Its window length differs from the other records of its window
    /// (analyzers with different `--window`): not merged.
    OtherLength,
}

/// One fleet point: a group's merged window.
pub struct FleetPoint {
    pub group: GroupKey,
    pub start_ms: i64,
    pub window_ms: i64,
    /// Source windows merged into it.
    pub sources: u64,
    pub agg: Agg,
}

impl FleetPoint {
    pub fn metrics(&self) -> Metrics {
        self.agg.summary()
    }
}

/// The held windows of one partition.
pub struct PartitionFleet {
    windows: BTreeMap<i64, FleetWindow>,
    /// Windows starting before this were written and forgotten.
    horizon_ms: i64,
    /// Newest window start seen.
    newest_ms: i64,
    /// Per source, the newest window it sent here.
    latest: HashMap<(String, String), i64>,
    /// Offset after the last record seen.
    next_offset: Option<i64>,
}

impl PartitionFleet {
    /// A partition read from its beginning, or resumed below a restored
    /// `horizon_ms`.
    pub fn new(horizon_ms: i64) -> Self {
        PartitionFleet {
            windows: BTreeMap::new(),
            horizon_ms,
            newest_ms: i64::MIN,
            latest: HashMap::new(),
            next_offset: None,
        }
    }

    pub fn horizon_ms(&self) -> i64 {
        self.horizon_ms
    }

    /// Takes one record read at `offset`.
    pub fn record(&mut self, w: WindowSketch, offset: i64, now: Instant) -> Taken {
        self.next_offset = Some(offset + 1);
        if w.start_ms < self.horizon_ms {
            return Taken::TooOld;
        }
        if self
            .windows
            .get(&w.start_ms)
            .is_some_and(|fw| fw.window_ms != w.window_ms)
        {
            return Taken::OtherLength;
        }
        self.newest_ms = self.newest_ms.max(w.start_ms);
        let key = (w.host, w.source);
        let latest = self.latest.entry(key.clone()).or_insert(w.start_ms);
        *latest = (*latest).max(w.start_ms);
        let fw = self
            .windows
            .entry(w.start_ms)
            .or_insert_with(|| FleetWindow {
                window_ms: w.window_ms,
                sources: BTreeMap::new(),
                first_seen: now,
                released: false,
                dirty: false,
            });
        fw.dirty = true;
        let held = Held {
            agg: Arc::new(w.agg),
            offset,
        };
        match fw.sources.insert(key, held) {
            None => Taken::Added,
            Some(_) => Taken::Replaced,
        }
    }

    /// Whether every source of the window before `start` has sent `start`
    /// or a later window.
    fn complete(&self, start: i64) -> bool {
        let Some((_, prev)) = self.windows.range(..start).next_back() else {
            return false;
        };
        prev.sources
            .keys()
            .all(|k| self.latest.get(k).is_some_and(|&l| l >= start))
    }

    /// Hands out the points of every window due (complete, past its grace,
    /// older than `keep`, or everything with `all`) that changed since, then forgets written
    /// windows older than `keep`. Returns the windows released incomplete
    /// (by grace or `all`).
    pub fn drain(
        &mut self,
        spec: &RollupSpec,
        now: Instant,
        all: bool,
        out: &mut Vec<FleetPoint>,
    ) -> u64 {
        let mut graced = 0;
        let starts: Vec<i64> = self
            .windows
            .iter()
            .filter(|(_, w)| w.dirty)
            .map(|(&s, _)| s)
            .collect();
        let mut groups = Vec::new();
        // Windows this far behind are written even before their grace ends.
        let cut = self.newest_ms.saturating_sub(spec.keep_ms);
        for start in starts {
            let complete = self.complete(start);
            let w = self.windows.get_mut(&start).expect("listed");
            if !w.released {
                let late = now.saturating_duration_since(w.first_seen) >= spec.grace || start < cut;
                if !(complete || late || all) {
                    continue;
                }
                w.released = true;
                graced += u64::from(!complete);
            }
            w.dirty = false;
            let mut merged: BTreeMap<GroupKey, (u64, Agg)> = BTreeMap::new();
            // In (host, source) order: the same merge whatever order the
            // records came in.
            for ((host, source), h) in &w.sources {
                spec.groups.of(host, source, &mut groups);
                for g in groups.drain(..) {
                    let e = merged.entry(g).or_default();
                    e.0 += 1;
                    e.1.merge(&h.agg);
                }
            }
            out.extend(merged.into_iter().map(|(group, (n, agg))| FleetPoint {
                group,
                start_ms: start,
                window_ms: w.window_ms,
                sources: n,
                agg,
            }));
        }
        // Forget written windows far enough behind.
        while let Some((&start, w)) = self.windows.first_key_value() {
            if !(start < cut && w.released && !w.dirty) {
                break;
            }
            self.horizon_ms = self.horizon_ms.max(start + w.window_ms);
            self.windows.pop_first();
        }
        graced
    }

    /// Where a new owner resumes: the smallest offset of a held window's
    /// record (else the next offset), the next offset, and the horizon.
    pub fn restore_point(&self) -> Option<(i64, i64, i64)> {
        let next = self.next_offset?;
        let offset = self
            .windows
            .values()
            .flat_map(|w| w.sources.values().map(|h| h.offset))
            .min()
            .unwrap_or(next);
        Some((offset, next, self.horizon_ms))
    }

    /// Windows held.
    pub fn held(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::tests::window;

    fn spec() -> RollupSpec {
        RollupSpec {
            grace: Duration::from_secs(60),
            keep_ms: 30_000,
            top_k: 10,
            groups: Arc::new(
                Groups::new(true)
                    .with_file("[[group]]\nname = \"eu\"\nhosts = [\"eu-*\"]\n")
                    .unwrap(),
            ),
        }
    }

    fn sk(host: &str, source: &str, start_ms: i64, n: u64) -> WindowSketch {
        WindowSketch {
            host: host.into(),
            source: source.into(),
            start_ms,
            window_ms: 10_000,
            agg: window(n, n / 2 + 1, 0.01, true).0,
        }
    }

    fn counts(out: &[FleetPoint]) -> Vec<(i64, String, u64, u64)> {
        out.iter()
            .map(|p| (p.start_ms, p.group.name.clone(), p.sources, p.agg.count))
            .collect()
    }

    #[test]
    fn complete_windows_go_at_once_incomplete_after_grace_and_rewrites_replace() {
        let s = spec();
        let t0 = Instant::now();
        let mut p = PartitionFleet::new(i64::MIN);
        let mut out = Vec::new();
        // Window 0 from two sources: no previous window, so it waits.
        p.record(sk("eu-1", "a", 0, 10), 0, t0);
        p.record(sk("us-1", "b", 0, 20), 1, t0);
        assert_eq!(p.drain(&s, t0, false, &mut out), 0);
        assert!(out.is_empty());
        // Grace passed: written, incomplete.
        assert_eq!(p.drain(&s, t0 + s.grace, false, &mut out), 1);
        assert_eq!(
            counts(&out),
            [
                (0, "all".into(), 2, 30),
                (0, "eu".into(), 1, 10),
                (0, "eu-1".into(), 1, 10),
                (0, "us-1".into(), 1, 20)
            ]
        );
        // Window 10 s: complete once both sources sent it.
        out.clear();
        p.record(sk("eu-1", "a", 10_000, 5), 2, t0);
        assert_eq!(p.drain(&s, t0, false, &mut out), 0);
        assert!(out.is_empty(), "us-1 may still send window 10 s");
        p.record(sk("us-1", "b", 20_000, 7), 3, t0);
        p.drain(&s, t0, false, &mut out);
        assert_eq!(
            counts(&out)[0],
            (10_000, "all".into(), 1, 5),
            "us-1 moved past it"
        );
        // A re-published window replaces, a late source adds: rewritten.
        out.clear();
        assert_eq!(p.record(sk("eu-1", "a", 0, 10), 4, t0), Taken::Replaced);
        assert_eq!(p.record(sk("eu-2", "c", 0, 1), 5, t0), Taken::Added);
        let mut other = sk("eu-3", "d", 0, 1);
        other.window_ms = 60_000;
        assert_eq!(p.record(other, 6, t0), Taken::OtherLength);
        p.drain(&s, t0, false, &mut out);
        assert_eq!(counts(&out)[0], (0, "all".into(), 3, 31));
    }

    #[test]
    fn old_windows_are_forgotten_behind_the_horizon_and_the_restore_point_rebuilds_the_rest() {
        let s = spec();
        let t0 = Instant::now();
        let feed: Vec<WindowSketch> = (0..10)
            .flat_map(|i| {
                [
                    sk("h1", "a", i * 10_000, 10 + i as u64),
                    sk("h2", "b", i * 10_000, 3),
                ]
            })
            .collect();
        let mut p = PartitionFleet::new(i64::MIN);
        let mut written = BTreeMap::new();
        let mut out = Vec::new();
        for (o, w) in feed.iter().enumerate() {
            p.record(w.clone(), o as i64, t0);
            p.drain(&s, t0, false, &mut out);
            for f in out.drain(..) {
                written.insert((f.start_ms, f.group.clone()), f.metrics());
            }
        }
        assert!(p.held() <= 5, "held {}", p.held());
        let (offset, next, horizon) = p.restore_point().unwrap();
        assert_eq!(next, 20);
        assert!(horizon > 0);
        // A new owner from the restore point: same points for what it holds.
        let mut q = PartitionFleet::new(horizon);
        for (o, w) in feed.iter().enumerate().skip(offset as usize) {
            let t = q.record(w.clone(), o as i64, t0);
            assert_ne!(t, Taken::TooOld, "records from the restore offset are held");
        }
        q.drain(&s, t0, true, &mut out);
        for f in out.drain(..) {
            if let Some(m) = written.get(&(f.start_ms, f.group.clone())) {
                assert_eq!(&f.metrics(), m);
            }
        }
        assert_eq!(q.record(feed[0].clone(), 0, t0), Taken::TooOld);
    }

    #[test]
    fn groups_file_errors_name_the_problem() {
        let e = Groups::new(true)
            .with_file("[[group]]\nnam = \"x\"\n")
            .unwrap_err();
        assert!(e.contains("unknown field `nam`"), "{e}");
        let e = Groups::new(true)
            .with_file("[[group]]\nname = \"x\"\nhosts = [\"[\"]\n")
            .unwrap_err();
        assert!(e.contains("group \"x\": hosts pattern"), "{e}");
        let mut out = Vec::new();
        Groups::new(false).of("h", "s", &mut out);
        assert_eq!(out.len(), 1);
    }
}
