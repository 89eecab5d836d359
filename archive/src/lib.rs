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

use logpipe_wire::Shutdown;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logpipe_consumer::{Batch, ConsumerError, GroupConfig, GroupConsumer, RebalanceEvent};
use logpipe_wire::state_file::{self, StateFileError};
use logpipe_wire::{Dedup, RecordMeta};
use rdkafka::message::{Headers, Message};
use serde::{Deserialize, Serialize};

/// What one archive does: the command line's `logpipe archive` options.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// Kafka bootstrap servers.
    pub brokers: String,
    pub topic: String,
    /// Extra librdkafka properties.
    pub kafka: Vec<(String, String)>,
    /// The archive directory (created if missing).
    pub dir: PathBuf,
    /// The archive's own consumer group.
    pub group: String,
    /// zstd-compress each day once it is closed.
    pub compress: bool,
    /// A day is closed this long after its end (UTC midnight).
    pub close_after: Duration,
    /// How often lines are fsynced, the state saved and offsets committed.
    pub commit_interval: Duration,
    /// Files (`file` headers) remembered per partition for dropping re-sends.
    pub dedup_files: usize,
    /// How often the counters are logged.
    pub stats_interval: Duration,
}

/// Why an archive stopped.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is in use by another logpipe archive (its {LOCK} is locked)", dir.display())]
    InUse { dir: PathBuf },
    #[error("{} holds archive files ({file}, …) but no {STATE}: they were not written by this archive, or the state was removed. Appending would write lines twice; move them away or use an empty directory", dir.display())]
    NoState { dir: PathBuf, file: String },
    #[error("{} archives topic {has:?}, not {wanted:?}", dir.display())]
    OtherTopic {
        dir: PathBuf,
        has: String,
        wanted: String,
    },
    #[error(transparent)]
    State(#[from] StateFileError),
    #[error("joining the archive's consumer group: {0}")]
    Join(#[source] ConsumerError),
    #[error("taking partitions: {0}")]
    Assign(String),
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

mod layout;
pub use layout::dir_name;
use layout::{day_end_ms, day_of, is_archive_name};

/// Names the action and the path of an I/O error.
trait At<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T>;
}

impl<T> At<T> for std::io::Result<T> {
    fn at(self, action: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| ArchiveError::Io {
            action,
            path: path.to_path_buf(),
            source,
        })
    }
}

const STATE: &str = ".archive-state.json";
const LOCK: &str = ".archive.lock";
const DAY_MS: i64 = 86_400_000;

/// `.archive-state.json`, by format version.
#[derive(Debug, Serialize, Deserialize)]
enum StateFile {
    #[serde(rename = "1")]
    V1(State),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
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

fn fsync_dir(p: &Path) -> Result<()> {
    File::open(p).and_then(|d| d.sync_all()).at("fsync", p)
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
    fn open(a: &ArchiveConfig) -> Result<(Archive, File)> {
        let dir = &a.dir;
        std::fs::create_dir_all(dir).at("creating", dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))
            .at("opening", &dir.join(LOCK))?;
        // SAFETY: flock on our own open file.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(ArchiveError::InUse { dir: dir.clone() });
        }
        let state_path = dir.join(STATE);
        let on_disk = Self::scan(dir)?;
        let state = match state_file::load::<StateFile>(&state_path, "archive state")? {
            Some(StateFile::V1(s)) => s,
            None => {
                if let Some(f) = on_disk.first() {
                    return Err(ArchiveError::NoState {
                        dir: dir.clone(),
                        file: f.clone(),
                    });
                }
                State {
                    topic: a.topic.clone(),
                    ..State::default()
                }
            }
        };
        if state.topic != a.topic {
            return Err(ArchiveError::OtherTopic {
                dir: dir.clone(),
                has: state.topic,
                wanted: a.topic.clone(),
            });
        }
        // Back to the last save: cut what was written after it.
        let mut lengths = BTreeMap::new();
        for (rel, &len) in &state.files {
            let p = dir.join(rel);
            match std::fs::metadata(&p) {
                Ok(md) if md.len() > len => {
                    tracing::info!(file = %p.display(), saved = len, size = md.len(), "cutting what was written after the last save (those lines are read again from Kafka)");
                    OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .and_then(|f| f.set_len(len).and_then(|()| f.sync_all()))
                        .at("cutting", &p)?;
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
                std::fs::remove_file(&p).at("removing", &p)?;
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
                topic: a.topic.clone(),
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
        for e in std::fs::read_dir(dir).at("reading", dir)? {
            let e = e.at("reading", dir)?;
            if !e.file_type().at("reading", &e.path())?.is_dir() {
                continue;
            }
            let sub = e.file_name().to_string_lossy().into_owned();
            for f in std::fs::read_dir(e.path()).at("reading", &e.path())? {
                let f = f.at("reading", &e.path())?;
                let rel = format!("{sub}/{}", f.file_name().to_string_lossy());
                if is_archive_name(&rel).is_some() {
                    out.push(rel);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn record<M: Message<Headers: logpipe_wire::HeaderLookup>>(&mut self, m: &M) -> Result<()> {
        let p = m.partition();
        let cap = self.dedup_capacity;
        let next = &mut self
            .parts
            .entry(p)
            .or_insert_with(|| (m.offset(), Dedup::new(cap)))
            .0;
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
        let meta = RecordMeta::from_headers(m.headers());
        let value = m.payload().unwrap_or(b"");
        let lines = match meta.lines(value) {
            Ok(lines) => lines,
            Err(e) => {
                // A run that does not read: archived as it is, one line per
                // `\n` (the bytes are what was sent), and named.
                tracing::warn!(partition = p, offset = m.offset(), error = %e, "archiving a damaged v2 record as it is");
                RecordMeta::default()
                    .lines(value)
                    .expect("a v1 reading never fails")
            }
        };
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
        if !self.files.contains_key(&rel) {
            let o = self.open_file(&rel)?;
            self.files.insert(rel.clone(), o);
        }
        let open = self.files.get_mut(&rel).expect("opened above");
        let dedup = &mut self.parts.get_mut(&p).expect("entered above").1;
        for line in lines {
            if let Some((f, o)) = line.position() {
                if dedup.is_duplicate(f, o) {
                    self.duplicates += 1;
                    continue;
                }
            }
            open.pending.extend_from_slice(line.value);
            open.pending.push(b'\n');
            open.len += line.value.len() as u64 + 1;
            self.pending += line.value.len() + 1;
            self.archived += 1;
        }
        open.dirty = true;
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
                    .at("writing", &self.dir.join(rel))?;
                o.pending.clear();
            }
        }
        Ok(())
    }

    fn open_file(&mut self, rel: &str) -> Result<Open> {
        let p = self.dir.join(rel);
        let parent = p.parent().expect("in a source directory");
        if !parent.exists() {
            std::fs::create_dir_all(parent).at("creating", parent)?;
            self.new_dirs.insert(self.dir.clone());
        }
        let existed = p.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .at("opening", &p)?;
        if !existed {
            self.new_dirs.insert(parent.to_path_buf());
        }
        let len = file.metadata().at("reading", &p)?.len();
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
                .at("writing", &p)?;
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
        let state = StateFile::V1(State {
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
        });
        let bytes = state_file::encode(&state);
        if bytes == self.last_saved {
            return Ok(());
        }
        state_file::store_bytes(&self.dir.join(STATE), "archive state", &bytes)?;
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
                .at("reading", &log)?;
            let frame = zstd::bulk::compress(&input, 9).at("compressing", &log)?;
            let mut z = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&zpath)
                .at("opening", &zpath)?;
            let before = *self.lengths.get(&zrel).unwrap_or(&0);
            // A frame appended before a crash that the state does not know.
            z.set_len(before)
                .and_then(|()| z.seek(std::io::SeekFrom::End(0)))
                .and_then(|_| z.write_all(&frame))
                .and_then(|()| z.sync_all())
                .at("writing", &zpath)?;
            self.lengths.insert(zrel, before + frame.len() as u64);
            self.lengths.remove(&rel);
            self.write_state()?;
            std::fs::remove_file(&log).at("removing", &log)?;
            tracing::info!(file = %zpath.display(), bytes = input.len(), compressed = frame.len(), "day closed and compressed");
        }
        fsync_dir(&self.dir)?;
        Ok(())
    }
}

/// Archives until `shutdown` is asked, then saves what it wrote and commits.
/// What an archive run has done so far, for `--metrics-addr` (updated
/// after every poll).
#[derive(Debug, Default)]
pub struct Progress {
    /// Lines written to the archive.
    pub archived: AtomicU64,
    /// Lines dropped as producer re-sends.
    pub duplicates: AtomicU64,
    /// Offsets the broker deleted before they were read.
    pub offsets_skipped: AtomicU64,
    /// Day files open now.
    pub open_files: AtomicU64,
    /// Partitions owned now.
    pub partitions: AtomicU64,
}

impl Progress {
    fn update(&self, ar: &Archive, owned: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.archived.store(ar.archived, Relaxed);
        self.duplicates.store(ar.duplicates, Relaxed);
        self.offsets_skipped.store(ar.offsets_skipped, Relaxed);
        self.open_files.store(ar.files.len() as u64, Relaxed);
        self.partitions.store(owned as u64, Relaxed);
    }
}

/// Archives until `shutdown`.
pub fn run(a: ArchiveConfig, shutdown: &Shutdown) -> Result<()> {
    run_with(a, shutdown, &Progress::default())
}

/// Archives until `shutdown`, reporting to `progress`.
pub fn run_with(a: ArchiveConfig, shutdown: &Shutdown, progress: &Progress) -> Result<()> {
    let (mut ar, _lock) = Archive::open(&a)?;
    let mut owned: std::collections::BTreeSet<i32> = Default::default();
    let starts = ar.starts.clone();
    let cfg = GroupConfig {
        brokers: a.brokers.clone(),
        topic: a.topic.clone(),
        group: a.group.clone(),
        extra: a.kafka.clone(),
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
    .map_err(ArchiveError::Join)?;
    tracing::info!(dir = %a.dir.display(), topic = %a.topic, group = %a.group, "archiving");
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
    while !shutdown.is_requested() {
        let stray = consumer.poll_batch(&mut batch, Duration::from_millis(100));
        while let Some(ev) = consumer.take_rebalance() {
            match ev {
                RebalanceEvent::Revoked(ps) => {
                    save(&mut ar)?;
                    for p in &ps {
                        owned.remove(p);
                    }
                    tracing::info!(partitions = ?ps, "partitions revoked");
                }
                RebalanceEvent::Lost => {
                    save(&mut ar)?;
                    owned.clear();
                }
                RebalanceEvent::Assigned(ps) => {
                    owned.extend(ps.iter().copied());
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
                RebalanceEvent::AssignFailed(e) => return Err(ArchiveError::Assign(e)),
            }
        }
        if let Some(m) = stray {
            match m {
                Ok(m) => ar.record(&m)?,
                Err(e) => logpipe_consumer::health::consumer_error(&e),
            }
        }
        for r in batch.iter() {
            if let Some(e) = r.error() {
                tracing::warn!(error = %e, partition = r.partition(), "Kafka consumer error");
                continue;
            }
            ar.record(&r)?;
        }
        batch.clear();
        ar.write_through()?;
        progress.update(&ar, owned.len());
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    /// 2026-12-03T10:00:00Z.
    const T: i64 = 1_796_292_000_000;

    fn config(dir: &Path) -> ArchiveConfig {
        ArchiveConfig {
            brokers: "127.0.0.1:1".into(),
            topic: "logs".into(),
            kafka: vec![],
            dir: dir.to_path_buf(),
            group: "logpipe-archive".into(),
            compress: false,
            close_after: Duration::from_secs(3600),
            commit_interval: Duration::from_secs(1),
            dedup_files: 16,
            stats_interval: Duration::from_secs(60),
        }
    }

    fn line(partition: i32, offset: i64, file: &str, at: u64, text: &str) -> OwnedMessage {
        let at = at.to_string();
        let h = [
            ("host", "web1"),
            ("source", "nginx"),
            ("file", file),
            ("offset", &at),
        ]
        .iter()
        .fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(*v),
            })
        });
        OwnedMessage::new(
            Some(text.as_bytes().to_vec()),
            Some(b"web1:nginx".to_vec()),
            "logs".into(),
            Timestamp::CreateTime(T),
            partition,
            offset,
            Some(h),
        )
    }

    fn day_file(dir: &Path) -> PathBuf {
        dir.join("nginx").join("2026-12-03.log")
    }

    #[test]
    fn a_restart_cuts_back_to_the_last_save_and_resumes_with_its_dedup_state() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        {
            let (mut ar, _lock) = Archive::open(&config(dir)).unwrap();
            ar.starts_at(0, 0);
            for (o, text) in ["a", "b"].iter().enumerate() {
                ar.record(&line(0, o as i64, "1:1:0", o as u64 * 2, text))
                    .unwrap();
            }
            assert_eq!(ar.save().unwrap(), vec![(0, 2)]);
            // After the save, before a crash: one more line, and a new file.
            ar.record(&line(0, 2, "1:1:0", 4, "c")).unwrap();
            ar.write_through().unwrap();
            std::fs::create_dir_all(dir.join("other")).unwrap();
            std::fs::write(dir.join("other").join("2026-12-03.log"), "x\n").unwrap();
        }
        assert_eq!(std::fs::read_to_string(day_file(dir)).unwrap(), "a\nb\nc\n");
        let (mut ar, _lock) = Archive::open(&config(dir)).unwrap();
        assert_eq!(
            std::fs::read_to_string(day_file(dir)).unwrap(),
            "a\nb\n",
            "cut to the save"
        );
        assert!(
            !dir.join("other").join("2026-12-03.log").exists(),
            "unknown file removed"
        );
        assert_eq!(
            ar.starts.lock().unwrap().get(&0),
            Some(&2),
            "resumes at the saved offset"
        );
        // A producer re-send of `b` (a new record, the same file and offset) is dropped.
        ar.record(&line(0, 2, "1:1:0", 2, "b")).unwrap();
        ar.record(&line(0, 3, "1:1:0", 4, "c")).unwrap();
        ar.save().unwrap();
        assert_eq!((ar.archived, ar.duplicates), (1, 1));
        assert_eq!(std::fs::read_to_string(day_file(dir)).unwrap(), "a\nb\nc\n");
    }

    #[test]
    fn a_directory_it_cannot_vouch_for_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        {
            let (ar, _lock) = Archive::open(&config(dir)).unwrap();
            // A second archive of the same directory while the first holds it.
            let e = Archive::open(&config(dir)).err().unwrap();
            assert!(matches!(e, ArchiveError::InUse { .. }), "{e}");
            drop(ar);
        }
        let mut other = config(dir);
        other.topic = "other".into();
        let (mut ar, lock) = Archive::open(&config(dir)).unwrap();
        ar.record(&line(0, 0, "1:1:0", 0, "a")).unwrap();
        ar.save().unwrap();
        drop((ar, lock));
        let e = Archive::open(&other).err().unwrap();
        assert!(
            e.to_string()
                .contains("archives topic \"logs\", not \"other\""),
            "{e}"
        );
        // Archive files without the state: appending could write lines twice.
        std::fs::remove_file(dir.join(STATE)).unwrap();
        let e = Archive::open(&config(dir)).err().unwrap();
        assert!(matches!(e, ArchiveError::NoState { .. }), "{e}");
        // A state of an unknown version is named.
        std::fs::write(dir.join(STATE), r#"{"version":"7"}"#).unwrap();
        let e = Archive::open(&config(dir)).err().unwrap().to_string();
        assert!(
            e.contains("not a logpipe archive state of a known version"),
            "{e}"
        );
    }
}
