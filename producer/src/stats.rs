//! Health counters: updated lock-free by the reader and the delivery callback,
//! logged every `--stats-interval` and at exit, readable by tests.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What the producer did so far.
#[derive(Debug, Default)]
pub struct Stats {
    pub lines_read: AtomicU64,
    pub bytes_read: AtomicU64,
    /// Lines handed to librdkafka, counted per record sent (`lines_read` is
    /// added per read of up to 1 MiB).
    pub lines_sent: AtomicU64,
    /// Records handed to librdkafka and their values' bytes: what `logpipe
    /// demo`'s hold watches.
    pub records_sent: AtomicU64,
    pub record_bytes_sent: AtomicU64,
    /// The largest record value sent so far.
    pub record_bytes_max: AtomicU64,
    /// Counted by the delivery callback on librdkafka's thread: kept on a
    /// cache line of their own, away from the reader's counters.
    pub acked: Acked,
    /// The most bytes that were in flight at once (sampled after each read).
    pub in_flight_bytes_peak: AtomicU64,
    pub files_followed: AtomicU64,
    /// A followed file found under another path (rename, symlink swap) or
    /// replaced at its path by a new file.
    pub rotations: AtomicU64,
    pub truncations: AtomicU64,
    pub deletions: AtomicU64,
    /// Lines longer than `--max-line-bytes`, sent cut.
    pub lines_cut: AtomicU64,
    /// Incomplete lines sent after the idle timeout or at the end of input.
    pub partial_lines: AtomicU64,
    /// Milliseconds reading waited for room under the in-flight limit.
    pub paused_ms: AtomicU64,
    /// Records of the Python logging input that were not published: a
    /// pickle refused by the safe decoder, over the size limit, or not a
    /// record (each logged).
    pub records_refused: AtomicU64,
}

/// Lines and bytes Kafka acknowledged.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Acked {
    pub lines: AtomicU64,
    pub bytes: AtomicU64,
    /// When Kafka last answered (an acknowledgement, or the topic's
    /// metadata at start), in ms since the Unix epoch; 0 before it did.
    pub contact_ms: AtomicU64,
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub lines_read: u64,
    pub bytes_read: u64,
    pub lines_acked: u64,
    /// Lines handed to Kafka and not yet acknowledged, and their bytes.
    pub in_flight: u64,
    pub in_flight_bytes: u64,
    pub in_flight_bytes_peak: u64,
    pub files_followed: u64,
    pub rotations: u64,
    pub truncations: u64,
    pub deletions: u64,
    pub lines_cut: u64,
    pub partial_lines: u64,
    /// Times Kafka became unreachable (the outages this process logged).
    pub outages: u64,
    pub paused_ms: u64,
    pub records_refused: u64,
}

impl Stats {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Notes the bytes in flight now for the peak (reader thread).
    pub fn sample_in_flight(&self) {
        let now = self
            .bytes_read
            .load(Relaxed)
            .saturating_sub(self.acked.bytes.load(Relaxed));
        self.in_flight_bytes_peak.fetch_max(now, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let g = |c: &AtomicU64| c.load(Relaxed);
        let (lines_acked, bytes_acked) = (g(&self.acked.lines), g(&self.acked.bytes));
        let (lines_read, bytes_read) = (g(&self.lines_read), g(&self.bytes_read));
        Snapshot {
            lines_read,
            bytes_read,
            lines_acked,
            in_flight: lines_read.saturating_sub(lines_acked),
            in_flight_bytes: bytes_read.saturating_sub(bytes_acked),
            in_flight_bytes_peak: g(&self.in_flight_bytes_peak),
            files_followed: g(&self.files_followed),
            rotations: g(&self.rotations),
            truncations: g(&self.truncations),
            deletions: g(&self.deletions),
            lines_cut: g(&self.lines_cut),
            partial_lines: g(&self.partial_lines),
            outages: logpipe_consumer::health::outages(),
            paused_ms: g(&self.paused_ms),
            records_refused: g(&self.records_refused),
        }
    }

    /// Whether the producer can deliver: Kafka answered since start, and
    /// since every outage this process has logged began.
    pub fn ready(&self) -> Result<(), String> {
        let contact = self.acked.contact_ms.load(Relaxed);
        if contact == 0 {
            return Err("Kafka has not answered yet (topic metadata or an acknowledgement)".into());
        }
        let since_contact = now_ms().saturating_sub(contact);
        let down: Vec<String> = logpipe_consumer::health::unreachable()
            .into_iter()
            .filter(|(_, since, _)| (since.as_millis() as u64) < since_contact)
            .map(|(addr, since, why)| {
                format!("broker {addr} unreachable for {}s ({why})", since.as_secs())
            })
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!("{}; no acknowledgement since", down.join(", ")))
        }
    }

    /// One `tracing` line with every counter.
    pub fn log(&self, what: &str) {
        let s = self.snapshot();
        tracing::info!(
            lines_read = s.lines_read,
            bytes_read = s.bytes_read,
            lines_acked = s.lines_acked,
            in_flight = s.in_flight,
            in_flight_bytes = s.in_flight_bytes,
            in_flight_bytes_peak = s.in_flight_bytes_peak,
            files_followed = s.files_followed,
            rotations = s.rotations,
            truncations = s.truncations,
            deletions = s.deletions,
            lines_cut = s.lines_cut,
            partial_lines = s.partial_lines,
            outages = s.outages,
            paused_ms = s.paused_ms,
            records_refused = s.records_refused,
            "{what}"
        );
    }
}
