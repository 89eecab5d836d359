//! Backfill of compressed rotations (`access.log.2.gz`): with
//! `--from-beginning --exit-on-eof`, gzip files matching the inputs are read
//! once, decompressed, before the plain files — per source oldest first
//! (modification time, then the higher rotation number), so a source's
//! history goes out in time order.
//!
//! Identity: a compressed file is known by its first decompressed line (xxh3
//! of at most 1 KiB, as for plain files), not by its inode or name — logrotate
//! renames `.2.gz` to `.3.gz` every day, and a file compressed from one the
//! producer followed keeps that file's first line. When the checkpoint still
//! knows that plain file, the compressed copy continues it under the same
//! `file` header from its acknowledged offset (offsets are in decompressed
//! bytes, which equal the original file's), so lines it sent before are not
//! sent again and re-sends are dropped by the analyzers.
//!
//! Progress is kept in `compressed.json` beside the checkpoint (decompressed
//! offset acknowledged, and whether the file is done), written atomically
//! every checkpoint interval and after each file, so an interrupted backfill
//! resumes where Kafka's acknowledgements got to: a finished file is skipped,
//! an unfinished one is decompressed again and its acknowledged bytes skipped.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointError, FileState};
use crate::discover::Found;
use crate::error::read_err;
use crate::identity::{file_id, Fingerprint, FINGERPRINT_MAX};
use crate::publish::{Origin, PublishError, Publisher, Run};
use crate::stats::Stats;
use crate::tail::{LineOut, ReadError, Tail};
use crate::{now_ms, Control, ProduceError, ProduceSummary, ProducerConfig};
use logpipe_wire::state_file;

/// `compressed.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    files: Vec<Entry>,
}

/// [`Progress`] as stored, by format version (written from a borrow).
#[derive(Serialize)]
enum Stored<'a> {
    #[serde(rename = "1")]
    V1(&'a Progress),
}

/// [`Progress`] as read back.
#[derive(Deserialize)]
enum Loaded {
    #[serde(rename = "1")]
    V1(Progress),
}

const WHAT: &str = "compressed-file progress";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// The `file` header its lines carry.
    file: String,
    fingerprint: u64,
    fingerprint_len: u32,
    /// Decompressed bytes acknowledged by Kafka.
    offset: u64,
    /// Every line acknowledged.
    done: bool,
    /// Where it was last seen, and its source (for people reading the file).
    path: PathBuf,
    source: String,
}

fn load(path: &Path) -> Result<Progress, CheckpointError> {
    Ok(match state_file::load(path, WHAT)? {
        Some(Loaded::V1(p)) => p,
        None => Progress::default(),
    })
}

fn store(path: &Path, progress: &Progress) -> Result<(), CheckpointError> {
    state_file::store(path, WHAT, &Stored::V1(progress))
}

fn decoder(path: &Path) -> std::io::Result<MultiGzDecoder<BufReader<File>>> {
    Ok(MultiGzDecoder::new(BufReader::with_capacity(
        256 << 10,
        File::open(path)?,
    )))
}

/// The fingerprint of the decompressed content (`None`: empty).
fn fingerprint(path: &Path) -> std::io::Result<Option<Fingerprint>> {
    let mut head = Vec::with_capacity(FINGERPRINT_MAX);
    decoder(path)?
        .take(FINGERPRINT_MAX as u64)
        .read_to_end(&mut head)?;
    let len = memchr::memchr(b'\n', &head).map_or(head.len(), |nl| nl + 1);
    Ok((len > 0).then(|| Fingerprint {
        len: len as u32,
        hash: xxhash_rust::xxh3::xxh3_64(&head[..len]),
    }))
}

/// The rotation number in `access.log.3.gz` / `access.log-20240501.gz` (0 if none).
pub(crate) fn rotation_number(path: &Path) -> u64 {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let stem = name.trim_end_matches(".gz");
    stem.rsplit(['.', '-'])
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// The backfill of the compressed rotations found at start-up, before any
/// file is followed: what it sends with and where it counts.
pub(crate) struct Backfill<'a> {
    pub(crate) cfg: &'a ProducerConfig,
    pub(crate) publisher: &'a Publisher,
    pub(crate) stats: &'a Stats,
    /// The checkpoint's entries as loaded: a compressed copy of a file the
    /// producer followed continues it.
    pub(crate) checkpointed: &'a [FileState],
    pub(crate) buf: &'a mut [u8],
    pub(crate) run: &'a mut Run,
    pub(crate) summary: &'a mut ProduceSummary,
}

impl Backfill<'_> {
    /// Reads every compressed file of `found` (each with its source; see the
    /// module docs); returns early, progress saved, on shutdown.
    pub(crate) fn run(
        &mut self,
        ctl: &Control,
        found: Vec<(Found, String)>,
    ) -> Result<(), ProduceError> {
        let progress_path = self
            .cfg
            .checkpoint_dir
            .as_ref()
            .map(|d| d.join("compressed.json"));
        let mut progress = match &progress_path {
            Some(p) => load(p)?,
            None => Progress::default(),
        };
        let mut files: Vec<(String, SystemTime, u64, PathBuf)> = Vec::new();
        for (f, source) in found {
            let path = f.path;
            if !path.to_string_lossy().ends_with(".gz") {
                tracing::warn!(path = %path.display(), "not read: only gzip-compressed rotations (.gz) are backfilled; decompress it first");
                continue;
            }
            let mtime = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .map_err(read_err(&path))?;
            let n = rotation_number(&path);
            files.push((source, mtime, n, path));
        }
        // Per source oldest first: modification time, then the higher number.
        files.sort_by(|a, b| (&a.0, a.1, b.2).cmp(&(&b.0, b.1, a.2)));
        tracing::info!(
            files = files.len(),
            "backfilling compressed rotations first"
        );
        for (source, _, _, path) in files {
            if ctl.shutdown.is_requested() {
                break;
            }
            let Some(fp) = fingerprint(&path).map_err(read_err(&path))? else {
                tracing::info!(path = %path.display(), "empty compressed file");
                continue;
            };
            let i = match progress
                .files
                .iter()
                .position(|e| e.fingerprint == fp.hash && e.fingerprint_len == fp.len)
            {
                Some(i) if progress.files[i].done => {
                    tracing::info!(path = %path.display(), first_sent_as = %progress.files[i].path.display(), "already backfilled; skipped");
                    continue;
                }
                Some(i) => i,
                None => {
                    // Compressed from a file the checkpoint knows: continue it.
                    let plain = self
                        .checkpointed
                        .iter()
                        .find(|k| k.fingerprint == fp.hash && k.fingerprint_len == fp.len);
                    let (file, offset) = match plain {
                        Some(k) => (k.file.clone(), k.offset),
                        None => {
                            let md = std::fs::metadata(&path).map_err(read_err(&path))?;
                            (file_id(md.dev(), md.ino(), fp, 0), 0)
                        }
                    };
                    progress.files.push(Entry {
                        file,
                        fingerprint: fp.hash,
                        fingerprint_len: fp.len,
                        offset,
                        done: false,
                        path: path.clone(),
                        source: source.clone(),
                    });
                    progress.files.len() - 1
                }
            };
            progress.files[i].path = path.clone();
            let done = self.backfill_one(ctl, &path, &source, &mut progress, i, &progress_path)?;
            if let Some(p) = &progress_path {
                store(p, &progress)?;
            }
            if !done {
                break;
            }
        }
        Ok(())
    }

    /// Sends one compressed file from its acknowledged offset; true when
    /// every line is acknowledged (false: stopped by a shutdown).
    fn backfill_one(
        &mut self,
        ctl: &Control,
        path: &Path,
        source: &str,
        progress: &mut Progress,
        i: usize,
        progress_path: &Option<PathBuf>,
    ) -> Result<bool, ProduceError> {
        let start = progress.files[i].offset;
        let id = progress.files[i].file.clone();
        tracing::info!(path = %path.display(), %source, offset = start, file = %id, "backfilling compressed file");
        let mut dec = decoder(path).map_err(read_err(path))?;
        let skipped = std::io::copy(&mut (&mut dec).take(start), &mut std::io::sink())
            .map_err(read_err(path))?;
        if skipped < start {
            tracing::warn!(path = %path.display(), acknowledged = start, size = skipped, "compressed file is shorter than its acknowledged offset; nothing left to send");
            progress.files[i].done = true;
            return Ok(true);
        }
        let mut tail = Tail::at(dec, start, self.cfg.max_line_bytes);
        let slot = self.publisher.add_slot(start)?;
        let key = logpipe_wire::record_key(&self.cfg.host, source).into_bytes();
        let ts = now_ms();
        let mut last_cp = Instant::now();
        let mut stopped = false;
        // A file that cannot be read to its end (corrupt, truncated): what
        // was sent is acknowledged and recorded first, then the error.
        let mut failed = None;
        loop {
            if ctl.shutdown.is_aborted() {
                return Ok(false);
            }
            if ctl.shutdown.is_requested() {
                stopped = true;
                break;
            }
            let Backfill {
                publisher,
                cfg,
                buf,
                run,
                summary,
                stats,
                ..
            } = self;
            let origin = Origin {
                slot,
                key: &key,
                host: &cfg.host,
                source,
                file_id: &id,
            };
            let (mut lines, mut bytes) = (0u64, 0u64);
            let mut send = |l: LineOut<'_>| {
                lines += 1;
                bytes += l.value.len() as u64;
                if l.marks.cut.is_some() {
                    Stats::add(&stats.lines_cut, 1);
                }
                publisher.add(run, &origin.line(l.value, l.offset, l.end, l.marks, ts))
            };
            let read = tail.read_lines(buf, &mut send);
            let n = match read {
                Ok(0) => {
                    // Complete input: an unterminated last line is whole.
                    match tail
                        .take_partial("eof", &mut send)
                        .and_then(|_| publisher.close(run))
                    {
                        Ok(()) => {}
                        Err(PublishError::Stopping) => run.discard(),
                        Err(e) => return Err(e.into()),
                    }
                    0
                }
                // The read's lines go out now: none waits for more.
                Ok(n) => match publisher.close(run) {
                    Ok(()) => n,
                    Err(PublishError::Stopping) => {
                        run.discard();
                        1
                    }
                    Err(e) => return Err(e.into()),
                },
                Err(ReadError::Sink(PublishError::Stopping)) => {
                    run.discard();
                    1
                }
                Err(ReadError::Sink(e)) => return Err(e.into()),
                Err(ReadError::Io(e)) => {
                    // What was read before the damage goes out first.
                    if let Err(e) = publisher.close(run) {
                        run.discard();
                        if !matches!(e, PublishError::Stopping) {
                            return Err(e.into());
                        }
                    }
                    failed = Some(ProduceError::Damaged {
                        path: path.to_path_buf(),
                        offset: tail.read_pos(),
                        reason: e.to_string(),
                    });
                    0
                }
            };
            summary.lines += lines;
            summary.bytes += bytes;
            Stats::add(&stats.lines_read, lines);
            Stats::add(&stats.bytes_read, bytes);
            stats.sample_in_flight();
            if n == 0 {
                break;
            }
            if last_cp.elapsed() >= self.cfg.checkpoint_interval {
                last_cp = Instant::now();
                self.publisher.check()?;
                if let (Some(p), Some(d)) = (progress_path, self.publisher.delivered(slot)) {
                    progress.files[i].offset = d;
                    store(p, progress)?;
                }
            }
        }
        // Wait for this file's acknowledgements (a shutdown waits as long as
        // --shutdown-timeout; what is not acknowledged is read again next time).
        let deadline = Instant::now()
            + if stopped || failed.is_some() {
                self.cfg.shutdown_timeout
            } else {
                Duration::from_secs(3600)
            };
        while self.publisher.in_flight() > 0 && Instant::now() < deadline {
            let _ = self.publisher.flush(Duration::from_millis(200));
            self.publisher.check()?;
            if ctl.shutdown.is_aborted() {
                return Ok(false);
            }
        }
        let delivered = self.publisher.delivered(slot).unwrap_or(start);
        let acked_all = self.publisher.in_flight() == 0;
        self.publisher.remove_slot_if_done(slot);
        progress.files[i].offset = delivered;
        progress.files[i].done = !stopped && acked_all && failed.is_none();
        if let Some(e) = failed {
            if let Some(p) = progress_path {
                store(p, progress)?;
            }
            return Err(e);
        }
        if progress.files[i].done {
            tracing::info!(path = %path.display(), bytes = delivered, "compressed file backfilled");
        } else if !acked_all && !stopped {
            return Err(ProduceError::Unacknowledged(self.publisher.in_flight()));
        }
        Ok(progress.files[i].done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_numbers_order_older_first() {
        assert_eq!(rotation_number(Path::new("/l/access.log.3.gz")), 3);
        assert_eq!(
            rotation_number(Path::new("/l/access.log-20240501.gz")),
            20240501
        );
        assert_eq!(rotation_number(Path::new("/l/access.log.gz")), 0);
    }

    #[test]
    fn a_compressed_file_has_the_fingerprint_of_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.log");
        let gz = dir.path().join("a.log.1.gz");
        std::fs::write(&plain, b"first line\nsecond\n").unwrap();
        let mut enc = flate2::write::GzEncoder::new(
            File::create(&gz).unwrap(),
            flate2::Compression::default(),
        );
        std::io::Write::write_all(&mut enc, b"first line\nsecond\n").unwrap();
        enc.finish().unwrap();
        let want = Fingerprint::of(&File::open(&plain).unwrap(), true).unwrap();
        assert_eq!(fingerprint(&gz).unwrap(), want);
        let empty = dir.path().join("e.gz");
        flate2::write::GzEncoder::new(
            File::create(&empty).unwrap(),
            flate2::Compression::default(),
        )
        .finish()
        .unwrap();
        assert_eq!(fingerprint(&empty).unwrap(), None);
    }
}
