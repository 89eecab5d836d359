//! `logpipe archive`: raw lines from the topic into one file per source per
//! UTC day, each line exactly once, whatever kills the archive.
//!
//! # Layout
//! `DIR/<source>/<YYYY-MM-DD>.log` (the date of the record time, UTC); with
//! `--compress`, a day that closed (`--close-after` past its end) becomes
//! `<YYYY-MM-DD>.log.zst`. Lines of a closed day that arrive late are written
//! to a new `.log` and appended to the `.zst` as another zstd frame when the
//! day closes again (`zstd -d` reads concatenated frames as one file). A
//! source name is escaped (bytes outside `A-Za-z0-9._-`, and a leading
//! `.`, as `%XX`), so `/var/log/nginx/access.log` is the directory
//! `%2Fvar%2Flog%2Fnginx%2Faccess.log` and no name leaves `DIR`.
//!
//! # Exactly once
//! `DIR/.archive-state.json` records, atomically (tmp + fsync + rename), the
//! length of every archive file, each partition's next offset and its
//! de-duplication state (highest `offset` per `file` header, as the
//! analyzers keep it). Every `--commit-interval` the archive writes its
//! buffered lines, fsyncs the files (and new directories), saves the state,
//! and only then commits the offsets to the group. After a crash it cuts
//! every file back to its recorded length, removes archive files the state
//! does not know (created after the last save), and resumes each partition
//! at the state's offset — so what was written after the last save is
//! written again exactly once; producer re-sends are dropped by
//! (`file`, `offset`). A `DIR` with archive files but no state is refused.
//! `DIR/.archive.lock` (flock) keeps a second archive out of the directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use logpipe_analyzer::dedup::Dedup;
use logpipe_consumer::{Batch, GroupConfig, GroupConsumer, RebalanceEvent};
use rdkafka::message::{Headers, Message};
use serde::{Deserialize, Serialize};

use crate::cli::ArchiveArgs;

const STATE: &str = ".archive-state.json";
const LOCK: &str = ".archive.lock";
const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    topic: String,
    /// Partition → where to resume and what was seen.
    partitions: BTreeMap<i32, PartState>,
    /// Archive file (relative to DIR) → its length when saved.
    files: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct PartState {
    next: i64,
    /// (`file` header, highest offset), least recently seen first.
    seen: Vec<(String, u64)>,
}

/// `source` as a directory name: `A-Za-z0-9._-` kept, other bytes and a
/// leading `.` as `%XX`; never empty, at most ~200 bytes (a longer name is
/// cut and given a hash of the whole, so names stay distinct).
pub fn dir_name(source: &[u8]) -> String {
    let mut s = String::with_capacity(source.len());
    for (i, &b) in source.iter().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if keep {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    if s.is_empty() {
        s.push_str("%00");
    }
    if s.len() > 200 {
        let h = crc32fast::hash(source);
        s.truncate(180);
        while s.ends_with('%') || s[s.len().saturating_sub(2)..].starts_with('%') {
            s.pop();
        }
        s.push_str(&format!("~{h:08x}"));
    }
    s
}

/// `YYYY-MM-DD` (UTC) of a record time in ms.
fn day_of(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts_ms)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// The end of day `d` (UTC), in ms.
fn day_end_ms(d: &str) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()?;
    Some(
        date.succ_opt()?
            .and_hms_opt(0, 0, 0)?
            .and_utc()
            .timestamp_millis(),
    )
}

/// Is `rel` a name the archive writes (`<dir>/<YYYY-MM-DD>.log[.zst]`)?
fn is_archive_name(rel: &str) -> Option<(&str, &str, bool)> {
    let (dir, name) = rel.split_once('/')?;
    let (day, zst) = match name.strip_suffix(".log.zst") {
        Some(d) => (d, true),
        None => (name.strip_suffix(".log")?, false),
    };
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
    Some((dir, day, zst))
}

fn fsync_dir(p: &Path) -> Result<()> {
    File::open(p)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", p.display()))
}

struct Open {
    file: File,
    /// Bytes not yet written to `file`.
    pending: Vec<u8>,
    /// Written and pending.
    len: u64,
    dirty: bool,
}

struct Archive {
    dir: PathBuf,
    files: HashMap<String, Open>,
    /// Every archive file's length as of the last save plus what is open.
    lengths: BTreeMap<String, u64>,
    parts: HashMap<i32, (i64, Dedup)>,
    /// Next offsets the consumer starts newly assigned partitions at.
    starts: Arc<Mutex<HashMap<i32, i64>>>,
    new_dirs: HashSet<PathBuf>,
    pending: usize,
    dedup_capacity: usize,
    compress: bool,
    close_after: Duration,
    topic: String,
    archived: u64,
    duplicates: u64,
    /// Records the broker deleted before they were read (a gap in offsets).
    offsets_skipped: u64,
    /// State as last saved (a save with no change is skipped).
    last_saved: Vec<u8>,
    /// The previous record's source, UTC day (start, ms) and file.
    last_file: Option<(Vec<u8>, i64, String)>,
}

impl Archive {
    fn open(a: &ArchiveArgs) -> Result<(Archive, File)> {
        let dir = &a.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))
            .with_context(|| format!("opening {}", dir.join(LOCK).display()))?;
        // SAFETY: flock on our own open file.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "{} is in use by another logpipe archive (its {LOCK} is locked)",
                dir.display()
            );
        }
        let state_path = dir.join(STATE);
        let on_disk = Self::scan(dir)?;
        let state: State = match std::fs::read(&state_path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is damaged", state_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(f) = on_disk.first() {
                    bail!(
                        "{} holds archive files ({f}, …) but no {STATE}: they were not written by this archive, or the state was removed. Appending would write lines twice; move them away or use an empty directory",
                        dir.display()
                    );
                }
                State {
                    version: 1,
                    topic: a.kafka.topic.clone(),
                    ..State::default()
                }
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", state_path.display())),
        };
        if state.version != 1 {
            bail!(
                "{}: unknown state version {}",
                state_path.display(),
                state.version
            );
        }
        if state.topic != a.kafka.topic {
            bail!(
                "{} archives topic {:?}, not {:?}",
                dir.display(),
                state.topic,
                a.kafka.topic
            );
        }
        // Back to the last save: cut what was written after it.
        let mut lengths = BTreeMap::new();
        for (rel, &len) in &state.files {
            let p = dir.join(rel);
            match std::fs::metadata(&p) {
                Ok(md) if md.len() > len => {
                    tracing::info!(file = %p.display(), saved = len, size = md.len(), "cutting what was written after the last save (those lines are read again from Kafka)");
                    let f = OpenOptions::new().write(true).open(&p)?;
                    f.set_len(len)?;
                    f.sync_all()?;
                    lengths.insert(rel.clone(), len);
                }
                Ok(md) => {
                    if md.len() < len {
                        tracing::warn!(file = %p.display(), saved = len, size = md.len(), "archive file is shorter than saved: changed outside logpipe");
                    }
                    lengths.insert(rel.clone(), md.len());
                }
                Err(_) => {
                    tracing::warn!(file = %p.display(), "archive file is gone (removed outside logpipe); forgotten");
                }
            }
        }
        for rel in on_disk {
            if !state.files.contains_key(&rel) {
                let p = dir.join(&rel);
                tracing::info!(file = %p.display(), "removing an archive file created after the last save (its lines are read again from Kafka)");
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        let cap = a.dedup_files;
        let parts: HashMap<i32, (i64, Dedup)> = state
            .partitions
            .iter()
            .map(|(&p, s)| {
                let d = Dedup::restore(cap, s.seen.iter().map(|(f, o)| (f.as_bytes(), *o)));
                (p, (s.next, d))
            })
            .collect();
        let starts = parts.iter().map(|(&p, (n, _))| (p, *n)).collect();
        if !state.partitions.is_empty() {
            tracing::info!(partitions = ?state.partitions.iter().map(|(p, s)| (*p, s.next)).collect::<Vec<_>>(), files = lengths.len(), "resuming from the saved state");
        }
        Ok((
            Archive {
                dir: dir.clone(),
                files: HashMap::new(),
                lengths,
                parts,
                starts: Arc::new(Mutex::new(starts)),
                new_dirs: HashSet::new(),
                pending: 0,
                dedup_capacity: cap,
                compress: a.compress,
                close_after: a.close_after,
                topic: a.kafka.topic.clone(),
                archived: 0,
                duplicates: 0,
                offsets_skipped: 0,
                last_saved: Vec::new(),
                last_file: None,
            },
            lock,
        ))
    }

    /// Archive files in `dir` (relative names).
    fn scan(dir: &Path) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if !e.file_type()?.is_dir() {
                continue;
            }
            let sub = e.file_name().to_string_lossy().into_owned();
            for f in std::fs::read_dir(e.path())? {
                let f = f?;
                let rel = format!("{sub}/{}", f.file_name().to_string_lossy());
                if is_archive_name(&rel).is_some() {
                    out.push(rel);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn record<M: Message>(
        &mut self,
        m: &M,
        file_hdr: Option<&[u8]>,
        off_hdr: Option<&[u8]>,
    ) -> Result<()> {
        let p = m.partition();
        let cap = self.dedup_capacity;
        let (next, dedup) = self
            .parts
            .entry(p)
            .or_insert_with(|| (m.offset(), Dedup::new(cap)));
        if m.offset() > *next {
            let lost = (m.offset() - *next) as u64;
            self.offsets_skipped += lost;
            tracing::error!(
                partition = p,
                from = *next,
                to = m.offset() - 1,
                lost,
                "records {}..={} of partition {p} ({lost}) were deleted by the broker before they were archived; their lines are lost",
                *next,
                m.offset() - 1
            );
        }
        *next = m.offset() + 1;
        if let (Some(f), Some(o)) = (file_hdr, off_hdr) {
            let o = std::str::from_utf8(o)
                .ok()
                .and_then(|o| o.parse::<u64>().ok());
            if let (Some(o), true) = (o, std::str::from_utf8(f).is_ok()) {
                if dedup.is_duplicate(f, o) {
                    self.duplicates += 1;
                    return Ok(());
                }
            }
        }
        let source = m
            .headers()
            .and_then(|h| h.iter().filter(|h| h.key == logpipe_wire::SOURCE).last())
            .and_then(|h| h.value)
            .or_else(|| {
                m.key()
                    .and_then(|k| logpipe_wire::split_key(k))
                    .map(|(_, s)| s)
            })
            .unwrap_or(b"");
        let ts = match m.timestamp().to_millis() {
            Some(t) if t >= 0 => t,
            _ => chrono::Utc::now().timestamp_millis(),
        };
        // Records of one source and day come in runs: name the file once per run.
        let day_start = ts.div_euclid(DAY_MS) * DAY_MS;
        let rel = match &self.last_file {
            Some((s, d, rel)) if s.as_slice() == source && *d == day_start => rel.clone(),
            _ => {
                let rel = format!("{}/{}.log", dir_name(source), day_of(ts));
                self.last_file = Some((source.to_vec(), day_start, rel.clone()));
                rel
            }
        };
        let value = m.payload().unwrap_or(b"");
        let open = match self.files.get_mut(&rel) {
            Some(o) => o,
            None => {
                let o = self.open_file(&rel)?;
                self.files.entry(rel.clone()).or_insert(o)
            }
        };
        open.pending.extend_from_slice(value);
        open.pending.push(b'\n');
        open.len += value.len() as u64 + 1;
        open.dirty = true;
        self.pending += value.len() + 1;
        self.archived += 1;
        Ok(())
    }

    /// Hands what each file got from a batch to the kernel (no fsync: that
    /// is for [`Archive::save`]), so memory holds at most one batch.
    /// A partition was assigned and starts at `offset`: its first record is
    /// checked against it.
    fn starts_at(&mut self, p: i32, offset: i64) {
        let cap = self.dedup_capacity;
        self.parts
            .entry(p)
            .or_insert_with(|| (offset, Dedup::new(cap)))
            .0 = offset;
    }

    fn write_through(&mut self) -> Result<()> {
        for (rel, o) in &mut self.files {
            if !o.pending.is_empty() {
                o.file
                    .write_all(&o.pending)
                    .with_context(|| format!("writing {}", self.dir.join(rel).display()))?;
                o.pending.clear();
            }
        }
        Ok(())
    }

    fn open_file(&mut self, rel: &str) -> Result<Open> {
        let p = self.dir.join(rel);
        let parent = p.parent().expect("in a source directory");
        if !parent.exists() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
            self.new_dirs.insert(self.dir.clone());
        }
        let existed = p.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))?;
        if !existed {
            self.new_dirs.insert(parent.to_path_buf());
        }
        let len = file.metadata()?.len();
        self.lengths.entry(rel.to_string()).or_insert(len);
        Ok(Open {
            file,
            pending: Vec::new(),
            len,
            dirty: false,
        })
    }

    /// Writes and fsyncs every line so far, closes days that are over,
    /// saves the state; returns the offsets that may now be committed.
    fn save(&mut self) -> Result<Vec<(i32, i64)>> {
        for (rel, o) in &mut self.files {
            if !o.dirty {
                continue;
            }
            let p = self.dir.join(rel);
            o.file
                .write_all(&o.pending)
                .and_then(|()| o.file.sync_data())
                .with_context(|| format!("writing {}", p.display()))?;
            o.pending.clear();
            o.dirty = false;
            self.lengths.insert(rel.clone(), o.len);
        }
        self.pending = 0;
        for d in std::mem::take(&mut self.new_dirs) {
            fsync_dir(&d)?;
        }
        self.write_state()?;
        self.close_days()?;
        Ok(self.parts.iter().map(|(&p, (n, _))| (p, *n)).collect())
    }

    fn write_state(&mut self) -> Result<()> {
        let state = State {
            version: 1,
            topic: self.topic.clone(),
            partitions: self
                .parts
                .iter()
                .map(|(&p, (next, d))| {
                    let seen = d
                        .entries()
                        .into_iter()
                        .map(|(f, o)| (String::from_utf8_lossy(f).into_owned(), o))
                        .collect();
                    (p, PartState { next: *next, seen })
                })
                .collect(),
            files: self.lengths.clone(),
        };
        let bytes = serde_json::to_vec(&state)?;
        if bytes == self.last_saved {
            return Ok(());
        }
        let path = self.dir.join(STATE);
        let tmp = self.dir.join(format!("{STATE}.tmp"));
        let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        fsync_dir(&self.dir)?;
        self.last_saved = bytes;
        *self.starts.lock().unwrap() = self.parts.iter().map(|(&p, (n, _))| (p, *n)).collect();
        Ok(())
    }

    /// Days over for `--close-after`: their handles are closed and, with
    /// `--compress`, their `.log` becomes (another frame of) the `.log.zst`.
    fn close_days(&mut self) -> Result<()> {
        let now = chrono::Utc::now().timestamp_millis();
        let over = |rel: &str| {
            is_archive_name(rel)
                .filter(|(_, _, zst)| !zst)
                .and_then(|(_, day, _)| day_end_ms(day))
                .is_some_and(|end| end + self.close_after.as_millis() as i64 <= now)
        };
        let closing: Vec<String> = self.lengths.keys().filter(|r| over(r)).cloned().collect();
        if closing.is_empty() {
            return Ok(());
        }
        for rel in &closing {
            // Saved above: nothing pending.
            self.files.remove(rel);
        }
        if !self.compress {
            return Ok(());
        }
        for rel in closing {
            let log = self.dir.join(&rel);
            let zrel = format!("{rel}.zst");
            let zpath = self.dir.join(&zrel);
            let mut input = Vec::new();
            File::open(&log)
                .and_then(|mut f| f.read_to_end(&mut input))
                .with_context(|| format!("reading {}", log.display()))?;
            let frame = zstd::bulk::compress(&input, 9).context("zstd")?;
            let mut z = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&zpath)
                .with_context(|| format!("opening {}", zpath.display()))?;
            let before = *self.lengths.get(&zrel).unwrap_or(&0);
            // A frame appended before a crash that the state does not know.
            z.set_len(before)?;
            z.seek(std::io::SeekFrom::End(0))?;
            z.write_all(&frame)?;
            z.sync_all()?;
            self.lengths.insert(zrel, before + frame.len() as u64);
            self.lengths.remove(&rel);
            self.write_state()?;
            std::fs::remove_file(&log).with_context(|| format!("removing {}", log.display()))?;
            tracing::info!(file = %zpath.display(), bytes = input.len(), compressed = frame.len(), "day closed and compressed");
        }
        fsync_dir(&self.dir)?;
        Ok(())
    }
}

pub fn run(a: ArchiveArgs) -> Result<()> {
    let (mut ar, _lock) = Archive::open(&a)?;
    let shutdown = crate::shutdown_flag()?;
    let starts = ar.starts.clone();
    let cfg = GroupConfig {
        brokers: a.kafka.brokers.clone(),
        topic: a.kafka.topic.clone(),
        group: a.group.clone(),
        extra: crate::cli::flat(a.kafka.kafka.clone()),
        partitions: None,
    };
    let consumer = GroupConsumer::new(
        &cfg,
        Some(Box::new(move |ps: &[i32]| {
            let s = starts.lock().unwrap();
            Ok(ps
                .iter()
                .filter_map(|p| s.get(p).map(|&o| (*p, o)))
                .collect())
        })),
    )
    .context("joining the archive's consumer group")?;
    tracing::info!(dir = %a.dir.display(), topic = %a.kafka.topic, group = %a.group, "archiving");
    let mut batch = Batch::with_capacity(1024);
    let mut last_save = Instant::now();
    let mut last_stats = Instant::now();
    let save = |ar: &mut Archive| -> Result<()> {
        let offsets = ar.save()?;
        if let Err(e) = consumer.commit(&offsets, false) {
            tracing::debug!(error = %e, "commit failed (the saved state is what counts; the next commit supersedes it)");
        }
        Ok(())
    };
    while !shutdown.load(Ordering::Relaxed) {
        let stray = consumer.poll_batch(&mut batch, Duration::from_millis(100));
        while let Some(ev) = consumer.take_rebalance() {
            match ev {
                RebalanceEvent::Revoked(ps) => {
                    save(&mut ar)?;
                    tracing::info!(partitions = ?ps, "partitions revoked");
                }
                RebalanceEvent::Lost => save(&mut ar)?,
                RebalanceEvent::Assigned(ps) => {
                    tracing::info!(partitions = ?ps, "partitions assigned");
                    let saved = ar.starts.lock().unwrap().clone();
                    let unknown: Vec<i32> = ps
                        .iter()
                        .copied()
                        .filter(|p| !saved.contains_key(p))
                        .collect();
                    let mut at: Vec<(i32, i64)> = ps
                        .iter()
                        .filter_map(|p| saved.get(p).map(|&o| (*p, o)))
                        .collect();
                    match consumer.start_positions(&unknown, Duration::from_secs(10)) {
                        Ok(found) => at.extend(found),
                        Err(e) => {
                            tracing::warn!(error = %e, partitions = ?unknown, "cannot learn where these partitions start: records the broker deleted before their first record would go unnoticed")
                        }
                    }
                    for (p, o) in at {
                        ar.starts_at(p, o);
                    }
                }
                RebalanceEvent::AssignFailed(e) => bail!("taking partitions: {e}"),
            }
        }
        if let Some(m) = stray {
            match m {
                Ok(m) => {
                    let (f, o) = file_offset(&m);
                    let (f, o) = (f.map(<[u8]>::to_vec), o.map(<[u8]>::to_vec));
                    ar.record(&m, f.as_deref(), o.as_deref())?;
                }
                Err(e) => logpipe_consumer::health::consumer_error(&e),
            }
        }
        for r in batch.iter() {
            if let Some(e) = r.error() {
                tracing::warn!(error = %e, partition = r.partition(), "Kafka consumer error");
                continue;
            }
            let h = r.headers();
            let (f, o) = match &h {
                Some(h) => (
                    h.get_last(logpipe_wire::FILE_C),
                    h.get_last(logpipe_wire::OFFSET_C),
                ),
                None => (None, None),
            };
            ar.record(&r, f, o)?;
        }
        batch.clear();
        ar.write_through()?;
        if last_save.elapsed() >= a.commit_interval || ar.pending >= 64 << 20 {
            save(&mut ar)?;
            last_save = Instant::now();
        }
        if last_stats.elapsed() >= a.stats_interval {
            tracing::info!(
                archived = ar.archived,
                duplicates_dropped = ar.duplicates,
                offsets_skipped = ar.offsets_skipped,
                open_files = ar.files.len(),
                "archive"
            );
            last_stats = Instant::now();
        }
    }
    save(&mut ar)?;
    tracing::info!(
        archived = ar.archived,
        duplicates_dropped = ar.duplicates,
        offsets_skipped = ar.offsets_skipped,
        "archive stopped; everything written is saved"
    );
    Ok(())
}

fn file_offset<M: Message>(m: &M) -> (Option<&[u8]>, Option<&[u8]>) {
    let Some(h) = m.headers() else {
        return (None, None);
    };
    let get = |name: &str| {
        h.iter()
            .filter(|x| x.key == name)
            .last()
            .and_then(|x| x.value)
    };
    (get(logpipe_wire::FILE), get(logpipe_wire::OFFSET))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_never_leave_the_directory_and_stay_distinct() {
        assert_eq!(dir_name(b"nginx"), "nginx");
        assert_eq!(
            dir_name(b"/var/log/nginx/access.log"),
            "%2Fvar%2Flog%2Fnginx%2Faccess.log"
        );
        assert_eq!(dir_name(b".."), "%2E.");
        assert_eq!(dir_name(b"."), "%2E");
        assert_eq!(dir_name(b""), "%00");
        assert_eq!(dir_name(b"a/b"), "a%2Fb");
        assert_ne!(dir_name(b"a/b"), dir_name(b"a_b"));
        assert_eq!(dir_name("ü".as_bytes()), "%C3%BC");
        let long = vec![b'x'; 500];
        let mut other = long.clone();
        other[499] = b'y';
        assert!(dir_name(&long).len() <= 200);
        assert_ne!(dir_name(&long), dir_name(&other));
        for s in [&b"../../etc"[..], b"a/../../b", b"\0", b"~root"] {
            let d = dir_name(s);
            assert!(
                !d.contains('/') && d != "." && d != ".." && !d.starts_with('.'),
                "{d}"
            );
        }
    }

    #[test]
    fn days_are_utc_dates_of_the_record_time() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_764_633_599_999), "2025-12-01");
        assert_eq!(day_of(1_764_633_600_000), "2025-12-02");
        assert_eq!(day_end_ms("2025-12-01"), Some(1_764_633_600_000));
        assert_eq!(
            is_archive_name("web/2025-12-01.log"),
            Some(("web", "2025-12-01", false))
        );
        assert_eq!(
            is_archive_name("web/2025-12-01.log.zst"),
            Some(("web", "2025-12-01", true))
        );
        assert_eq!(is_archive_name("web/notes.txt"), None);
    }
}
