//! Publishing lines to Kafka with delivery tracking per file.
//!
//! Lines go out as wire v2 records by default: a [`Run`] gathers the
//! consecutive lines of one stream (what one read returned) and is sent
//! when the next line does not continue it, when it reaches
//! `--record-max-bytes` or `--lines-per-record`, or when the reader closes
//! it at the end of the read — so no line waits for more lines to come.
//! `--lines-per-record 1` sends v1, one record per line.
//!
//! Every file generation has a slot. Records of one file go to one partition in
//! order (same key, idempotent producer), so their acknowledgements arrive in
//! order too: each ack carries (in its opaque) the slot and the end offset of
//! its last line, and that end is the delivered position a checkpoint may record.

use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use logpipe_consumer::health;
use logpipe_consumer::props::{self, ClientKind};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};

use crate::stats::Stats;
use crate::tail::Marks;
use logpipe_wire::{RunEncoder, Shutdown};

/// One file generation's delivery state, shared by the reader (sends) and
/// librdkafka's thread (acks) without a lock.
#[derive(Debug, Default)]
struct Slot {
    /// Lines sent and not yet acknowledged.
    in_flight: AtomicU64,
    /// Byte offset after the last line Kafka acknowledged.
    delivered: AtomicU64,
}

/// Most file generations tracked at once (followed files plus closed ones
/// whose lines are still in flight).
pub const MAX_SLOTS: usize = 1 << 16;

/// The delivery opaque: slot id in the high bits, the line's end offset below.
const END_BITS: u32 = 44;
const END_MASK: usize = (1 << END_BITS) - 1;

#[derive(Default)]
struct Tracker {
    slots: Box<[Slot]>,
    /// Which slots are taken (only touched when files come and go).
    used: Mutex<Vec<bool>>,
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
    stats: Arc<Stats>,
}

struct AckContext(Arc<Tracker>);

impl ClientContext for AckContext {
    /// A broker outage is logged once, and its end once, by [`health`],
    /// which counts them for the stats.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        health::log(level, fac, msg);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        health::error(&error, reason);
    }
}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let t = &self.0;
        let (slot, end) = (opaque >> END_BITS, (opaque & END_MASK) as u64);
        let (bytes, lines) = match result {
            Ok(m) => {
                use logpipe_wire::HeaderLookup;
                // A v2 record says how many lines it holds; a v1 record is one.
                let lines = m
                    .headers()
                    .and_then(|h| h.last(logpipe_wire::LINES, logpipe_wire::LINES_C))
                    .and_then(logpipe_wire::parse_decimal);
                (m.payload_len() as u64, lines.unwrap_or(1))
            }
            Err(_) => (0, 0),
        };
        match result {
            Ok(_) => {
                let s = &t.slots[slot];
                // After a refused line nothing advances: the checkpoint stays before it.
                if !t.failed.load(Relaxed) {
                    s.delivered.fetch_max(end, Relaxed);
                }
                s.in_flight.fetch_sub(1, Release);
                Stats::add(&t.stats.acked.lines, lines);
                t.stats
                    .acked
                    .contact_ms
                    .store(crate::stats::now_ms(), Relaxed);
                // The newlines joining a run's lines are not the lines' bytes.
                Stats::add(&t.stats.acked.bytes, bytes + 1 - lines.max(1));
            }
            Err((e, _)) => {
                t.failed.store(true, Relaxed);
                t.slots[slot].in_flight.fetch_sub(1, Release);
                t.failure
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| format!("Kafka did not accept a record: {e}"));
            }
        }
    }
}

/// A line to publish.
pub struct Line<'a> {
    pub slot: usize,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub host: &'a str,
    pub source: &'a str,
    pub file_id: &'a str,
    /// Byte offset of the line's first byte.
    pub offset: u64,
    /// Byte offset after the line and its newline.
    pub end: u64,
    pub marks: Marks,
    pub timestamp_ms: i64,
}

/// What every line of one stream (a file's generation, a network input's
/// source) carries: its delivery slot, record key and headers.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub slot: usize,
    pub key: &'a [u8],
    pub host: &'a str,
    pub source: &'a str,
    pub file_id: &'a str,
}

impl<'a> Origin<'a> {
    /// A line of this stream: `value`, at `offset..end` of it.
    pub fn line(
        self,
        value: &'a [u8],
        offset: u64,
        end: u64,
        marks: Marks,
        timestamp_ms: i64,
    ) -> Line<'a> {
        Line {
            slot: self.slot,
            key: self.key,
            value,
            host: self.host,
            source: self.source,
            file_id: self.file_id,
            offset,
            end,
            marks,
            timestamp_ms,
        }
    }
}

/// Consecutive lines of one stream gathered into one v2 record (see
/// `logpipe_wire::lines`); the reader keeps one and reuses its buffers.
#[derive(Debug, Default)]
pub struct Run {
    enc: RunEncoder,
    slot: usize,
    key: Vec<u8>,
    host: String,
    source: String,
    file_id: String,
    timestamp_ms: i64,
}

impl Run {
    pub fn new() -> Self {
        Run::default()
    }

    pub fn is_empty(&self) -> bool {
        self.enc.is_empty()
    }

    /// Drops what was gathered, unsent (a read that failed: its lines are
    /// after the delivered position, so they are read again).
    pub fn discard(&mut self) {
        self.enc.clear();
    }

    /// Adds `line` when it continues the run (same stream, next byte, same
    /// line ending); false and nothing added otherwise.
    fn push(&mut self, line: &Line<'_>) -> bool {
        let empty = self.enc.is_empty();
        // The key is `host:source`: another source is another record; the
        // `file` header is the run's, so another identity is another too.
        if !empty
            && (line.slot != self.slot || line.key != self.key || line.file_id != self.file_id)
        {
            return false;
        }
        let m = line.marks;
        if !self
            .enc
            .push(line.value, line.offset, line.end, m.cut, m.partial)
        {
            return false;
        }
        if empty {
            self.slot = line.slot;
            self.timestamp_ms = line.timestamp_ms;
            for (to, from) in [
                (&mut self.host, line.host),
                (&mut self.source, line.source),
                (&mut self.file_id, line.file_id),
            ] {
                to.clear();
                to.push_str(from);
            }
            self.key.clear();
            self.key.extend_from_slice(line.key);
        }
        true
    }

    /// The run as the record to send.
    fn record(&self) -> Rec<'_> {
        Rec {
            slot: self.slot,
            key: &self.key,
            value: self.enc.value(),
            host: &self.host,
            source: &self.source,
            file_id: &self.file_id,
            offset: self.enc.first_offset(),
            end: self.enc.end(),
            timestamp_ms: self.timestamp_ms,
            lines: self.enc.lines(),
            marks: RecMarks::V2 {
                eol: self.enc.eol(),
                marks: self.enc.marks(),
            },
        }
    }
}

/// One record to send: a v1 line or a v2 run.
struct Rec<'a> {
    slot: usize,
    key: &'a [u8],
    value: &'a [u8],
    host: &'a str,
    source: &'a str,
    file_id: &'a str,
    /// Byte offset of the first line.
    offset: u64,
    /// Byte offset after the last line.
    end: u64,
    timestamp_ms: i64,
    lines: u64,
    marks: RecMarks<'a>,
}

enum RecMarks<'a> {
    V1(Marks),
    V2 {
        eol: Option<&'static str>,
        marks: Option<&'a str>,
    },
}

impl<'a> Rec<'a> {
    fn line(l: &Line<'a>) -> Self {
        Rec {
            slot: l.slot,
            key: l.key,
            value: l.value,
            host: l.host,
            source: l.source,
            file_id: l.file_id,
            offset: l.offset,
            end: l.end,
            timestamp_ms: l.timestamp_ms,
            lines: 1,
            marks: RecMarks::V1(l.marks),
        }
    }
}

/// How lines are packed into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packing {
    /// Most lines in one record; 1: wire v1, one record per line.
    pub lines_per_record: usize,
    /// A run is closed before its value would pass this many bytes (a
    /// longer line goes alone).
    pub record_max_bytes: usize,
}

/// A failure of the Kafka side of the producer.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("bad Kafka producer configuration: {0}")]
    Config(KafkaError),
    #[error("{0}")]
    Delivery(String),
    #[error("Kafka: {0}")]
    Kafka(KafkaError),
    /// A send gave up waiting for room because the producer is stopping.
    #[error("stopping")]
    Stopping,
}

/// The Kafka producer and its acknowledgement tracker.
pub struct Publisher {
    producer: ThreadedProducer<AckContext>,
    tracker: Arc<Tracker>,
    topic: String,
    /// Once asked, the producer stops waiting for room in the queue.
    stop: Shutdown,
    /// Records wait before they are queued while it does not allow them
    /// (see `Control::send_limit`).
    hold: Option<Arc<crate::SendLimit>>,
    /// The topic's partition count at start, when librdkafka's default
    /// partitioner is in use: lines then carry their partition, computed as
    /// that partitioner does (CRC-32 of the key modulo the count) but with a
    /// faster CRC — zlib's, per line, was 2.5 % of the demo's CPU. A topic
    /// that grows while running keeps its sources where they were until the
    /// producer restarts (librdkafka would move them at once).
    partitions: Option<u32>,
    packing: Packing,
}

impl Publisher {
    /// Idempotent, `acks=all`, lz4, no delivery timeout (a Kafka outage blocks,
    /// it does not drop), and a queue bounded to `max_in_flight_bytes` so
    /// memory stays bounded while Kafka is away.
    /// With the brokers, topic, limits, packing and librdkafka properties
    /// of `cfg`.
    pub fn new(
        cfg: &crate::ProducerConfig,
        stats: Arc<Stats>,
        stop: Shutdown,
    ) -> Result<Self, PublishError> {
        let (brokers, topic, extra) = (&cfg.brokers, cfg.topic.as_str(), &cfg.extra);
        let (max_in_flight_bytes, max_line_bytes, packing) =
            (cfg.max_in_flight_bytes, cfg.max_line_bytes, cfg.packing);
        let kbytes = (max_in_flight_bytes / 1024).max(1);
        // A queued line costs its bytes plus ~200 bytes of librdkafka's own.
        let messages = (max_in_flight_bytes / 256).clamp(1000, 2_000_000);
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "10")
            .set("batch.size", "1000000")
            .set("message.timeout.ms", "0")
            .set(
                "message.max.bytes",
                (max_line_bytes.max(packing.record_max_bytes) + 65536)
                    .max(1_000_000)
                    .to_string(),
            )
            .set("queue.buffering.max.messages", messages.to_string())
            .set("queue.buffering.max.kbytes", kbytes.to_string());
        health::set_client_config(extra);
        health::set_note(
            "holding lines and retrying; nothing is dropped, reading pauses when the in-flight limit is reached",
        );
        props::set_for(&mut cc, ClientKind::Producer, extra);
        let tracker = Arc::new(Tracker {
            stats,
            slots: (0..MAX_SLOTS).map(|_| Slot::default()).collect(),
            used: Mutex::new(vec![false; MAX_SLOTS]),
            ..Tracker::default()
        });
        let producer: ThreadedProducer<AckContext> = cc
            .create_with_context(AckContext(tracker.clone()))
            .map_err(PublishError::Config)?;
        // Ask for the topic's metadata once the connection is up: it tells an
        // unknown topic at start-up, and each metadata response makes
        // librdkafka request its producer id at once — otherwise, when no
        // broker was up at its first try, it waits a fixed 500 ms.
        let default_partitioner = !extra.iter().any(|(k, _)| k == "partitioner");
        let mut partitions = None;
        for _ in 0..2 {
            match producer
                .client()
                .fetch_metadata(Some(topic), Duration::from_secs(2))
            {
                Ok(md) => {
                    tracker
                        .stats
                        .acked
                        .contact_ms
                        .store(crate::stats::now_ms(), Relaxed);
                    if let Some(t) = md.topics().first() {
                        if let Some(e) = t.error() {
                            tracing::warn!(topic, error = ?e, "topic not available yet; lines wait until it is");
                        } else if default_partitioner && !t.partitions().is_empty() {
                            partitions = Some(t.partitions().len() as u32);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Kafka not reachable at start-up; lines wait until it is");
                    break;
                }
            }
        }
        Ok(Publisher {
            producer,
            tracker,
            topic: topic.to_string(),
            stop,
            hold: None,
            partitions,
            packing,
        })
    }

    /// Records wait before they are queued while `hold` does not allow them.
    pub fn hold_with(&mut self, hold: Arc<crate::SendLimit>) {
        self.hold = Some(hold);
    }

    /// Adds a slot for a file (generation) whose lines before `offset` are
    /// already delivered.
    pub fn add_slot(&self, offset: u64) -> Result<usize, PublishError> {
        let mut used = self.tracker.used.lock().unwrap();
        // The lowest free id, so ids stay small over months of rotations.
        let id = used.iter().position(|u| !u).ok_or_else(|| {
            PublishError::Delivery(format!(
                "more than {MAX_SLOTS} files followed or still in flight at once"
            ))
        })?;
        used[id] = true;
        let s = &self.tracker.slots[id];
        s.in_flight.store(0, Relaxed);
        s.delivered.store(offset, Relaxed);
        Ok(id)
    }

    /// Forgets a slot once nothing of it is in flight; true when it is gone.
    pub fn remove_slot_if_done(&self, slot: usize) -> bool {
        let mut used = self.tracker.used.lock().unwrap();
        if !used[slot] {
            return true;
        }
        if self.tracker.slots[slot].in_flight.load(Acquire) == 0 {
            used[slot] = false;
            return true;
        }
        false
    }

    /// Position after the last acknowledged line of a slot (every older line
    /// of it acknowledged too: one partition, in order).
    pub fn delivered(&self, slot: usize) -> Option<u64> {
        if !self.tracker.used.lock().unwrap()[slot] {
            return None;
        }
        Some(self.tracker.slots[slot].delivered.load(Relaxed))
    }

    /// Lines of a slot handed to Kafka and not acknowledged (or refused) yet.
    pub fn slot_in_flight(&self, slot: usize) -> u64 {
        self.tracker.slots[slot].in_flight.load(Acquire)
    }

    /// Adds a line to `run`, sending the run first when the line does not
    /// continue it or it is full; waits while librdkafka's queue is full.
    /// Call [`Publisher::close`] when the read that gave the lines is done.
    pub fn add(&self, run: &mut Run, line: &Line<'_>) -> Result<(), PublishError> {
        self.add_or_wait(run, line, true).map(|_| ())
    }

    /// [`Publisher::add`] unless librdkafka's queue is full (`Ok(false)`:
    /// the line was not added; call [`Publisher::add`] from where waiting
    /// is allowed).
    pub fn try_add(&self, run: &mut Run, line: &Line<'_>) -> Result<bool, PublishError> {
        self.add_or_wait(run, line, false)
    }

    /// Sends what `run` gathered (nothing when it is empty).
    pub fn close(&self, run: &mut Run) -> Result<(), PublishError> {
        self.close_or_wait(run, true).map(|_| ())
    }

    /// [`Publisher::close`] unless librdkafka's queue is full (`Ok(false)`).
    pub fn try_close(&self, run: &mut Run) -> Result<bool, PublishError> {
        self.close_or_wait(run, false)
    }

    fn add_or_wait(
        &self,
        run: &mut Run,
        line: &Line<'_>,
        wait: bool,
    ) -> Result<bool, PublishError> {
        let Packing {
            lines_per_record,
            record_max_bytes,
        } = self.packing;
        if lines_per_record <= 1 {
            return self.send_or_wait(&Rec::line(line), wait);
        }
        if !run.is_empty() {
            let full = run.enc.lines() as usize >= lines_per_record
                || run.enc.value().len() + 1 + line.value.len() > record_max_bytes;
            if !full && run.push(line) {
                return Ok(true);
            }
            if !self.close_or_wait(run, wait)? {
                return Ok(false);
            }
        }
        if run.push(line) {
            return Ok(true);
        }
        // A line no run can hold (its span follows no rule of the contract).
        self.send_or_wait(&Rec::line(line), wait)
    }

    fn close_or_wait(&self, run: &mut Run, wait: bool) -> Result<bool, PublishError> {
        if run.is_empty() {
            return Ok(true);
        }
        let sent = self.send_or_wait(&run.record(), wait)?;
        if sent {
            run.enc.clear();
        }
        Ok(sent)
    }

    fn send_or_wait(&self, line: &Rec<'_>, wait: bool) -> Result<bool, PublishError> {
        if self.tracker.failed.load(Relaxed) {
            self.check()?;
        }
        if let Some(hold) = &self.hold {
            // Checked per record, not per read: a read is up to 1 MiB of
            // lines, which overshot the embedded broker's room by megabytes.
            while !hold.allows(self.tracker.stats.records_sent.load(Relaxed)) {
                if self.stop.is_requested() {
                    return Err(PublishError::Stopping);
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        let mut offset = itoa::Buffer::new();
        let offset = offset.format(line.offset);
        let mut headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header {
                key: logpipe_wire::HOST,
                value: Some(line.host),
            })
            .insert(Header {
                key: logpipe_wire::SOURCE,
                value: Some(line.source),
            })
            .insert(Header {
                key: logpipe_wire::FILE,
                value: Some(line.file_id),
            })
            .insert(Header {
                key: logpipe_wire::OFFSET,
                value: Some(offset),
            });
        match line.marks {
            RecMarks::V1(marks) => {
                if let Some(len) = marks.cut {
                    headers = headers.insert(Header {
                        key: logpipe_wire::CUT,
                        value: Some(itoa::Buffer::new().format(len)),
                    });
                }
                if let Some(why) = marks.partial {
                    headers = headers.insert(Header {
                        key: logpipe_wire::PARTIAL,
                        value: Some(why),
                    });
                }
            }
            RecMarks::V2 { eol, marks } => {
                headers = headers.insert(Header {
                    key: logpipe_wire::LINES,
                    value: Some(itoa::Buffer::new().format(line.lines)),
                });
                if let Some(eol) = eol {
                    headers = headers.insert(Header {
                        key: logpipe_wire::EOL,
                        value: Some(eol),
                    });
                }
                if let Some(marks) = marks {
                    headers = headers.insert(Header {
                        key: logpipe_wire::MARKS,
                        value: Some(marks),
                    });
                }
            }
        }
        if line.end > END_MASK as u64 || line.slot >= 1 << (usize::BITS - END_BITS) {
            return Err(PublishError::Delivery(format!(
                "file offset {} or slot {} beyond what the producer can track",
                line.end, line.slot
            )));
        }
        let opaque = (line.slot << END_BITS) | line.end as usize;
        let mut record = BaseRecord::with_opaque_to(&self.topic, opaque)
            .key(line.key)
            .payload(line.value)
            .headers(headers)
            .timestamp(line.timestamp_ms);
        if let Some(n) = self.partitions {
            if !line.key.is_empty() {
                record = record.partition((crc32fast::hash(line.key) % n) as i32);
            }
        }
        // Counted before sending: the ack may arrive before `send` returns.
        self.tracker.slots[line.slot]
            .in_flight
            .fetch_add(1, Relaxed);
        let unsent = |this: &Self| this.pop_unsent(line.slot);
        let mut waiting_since: Option<Instant> = None;
        let mut warned = false;
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    let stats = &self.tracker.stats;
                    Stats::add(&stats.lines_sent, line.lines);
                    Stats::add(&stats.records_sent, 1);
                    Stats::add(&stats.record_bytes_sent, line.value.len() as u64);
                    stats
                        .record_bytes_max
                        .fetch_max(line.value.len() as u64, Relaxed);
                    if let Some(since) = waiting_since {
                        Stats::add(
                            &self.tracker.stats.paused_ms,
                            since.elapsed().as_millis() as u64,
                        );
                    }
                    if warned {
                        tracing::info!("in-flight limit: room again, reading resumed");
                    }
                    return Ok(true);
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if !wait {
                        unsent(self);
                        return Ok(false);
                    }
                    // Back-pressure: Kafka is slow or down; the file is the buffer.
                    record = r;
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    if !warned && since.elapsed() >= Duration::from_secs(1) {
                        warned = true;
                        tracing::warn!(
                            "in-flight limit reached: reading paused until Kafka acknowledges"
                        );
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    if let Err(e) = self.check() {
                        unsent(self);
                        return Err(e);
                    }
                    if self.stop.is_requested() {
                        unsent(self);
                        return Err(PublishError::Stopping);
                    }
                }
                Err((e, _)) => {
                    unsent(self);
                    return Err(PublishError::Kafka(e));
                }
            }
        }
    }

    fn pop_unsent(&self, slot: usize) {
        self.tracker.slots[slot].in_flight.fetch_sub(1, Release);
    }

    /// Fails if Kafka refused any line so far.
    pub fn check(&self) -> Result<(), PublishError> {
        match self.tracker.failure.lock().unwrap().as_ref() {
            Some(f) => Err(PublishError::Delivery(f.clone())),
            None => Ok(()),
        }
    }

    /// Waits until every queued line is acknowledged (or `timeout` passes).
    pub fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.producer.flush(timeout).map_err(PublishError::Kafka)?;
        self.check()
    }

    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

#[cfg(test)]
mod tests {
    /// The partition a line carries is the one librdkafka's default
    /// partitioner would choose, so sources stay where other producers (and
    /// earlier runs) put them.
    #[test]
    fn explicit_partitions_equal_librdkafkas_default_partitioner() {
        let mut keys: Vec<String> = vec!["a".into(), "web-1:/var/log/nginx/access.log".into()];
        keys.extend((0..500).map(|i| format!("host{}:/srv/site{}/access.log", i % 7, i * 31)));
        for n in [1u32, 2, 6, 32, 100] {
            for k in &keys {
                // SAFETY: the partitioner reads only the key and the count.
                let theirs = unsafe {
                    rdkafka::bindings::rd_kafka_msg_partitioner_consistent(
                        std::ptr::null(),
                        k.as_ptr().cast(),
                        k.len(),
                        n as i32,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    )
                };
                let ours = (crc32fast::hash(k.as_bytes()) % n) as i32;
                assert_eq!(ours, theirs, "key {k}, {n} partitions");
            }
        }
    }
}
