//! The dead-letter topic (`logs.dlq`): a line that does not parse is produced
//! there with its original key, value and headers, plus
//! - `error`: what failed and at which byte (`expected '"' after $request at byte 57`),
//! - `analyzer`: which analyzer gave up on it,
//! - `origin`: where it was read, `<topic>/<partition>/<offset>`.
//!
//! Delivery is part of the restore protocol: before a flush writes a restore
//! point past a dead-lettered record, the dead letter must be acknowledged
//! (acks=all, idempotent). A partition re-read from a restore point does not
//! send dead letters again for records below the point's `next_offset`: the
//! previous owner had them acknowledged before it wrote that point. So a
//! dead letter is lost never, and sent twice only when an analyzer died
//! between the acknowledgement and its next write (then `origin` tells the
//! copies apart).
//!
//! The same producer carries the fleet topic's window sketches
//! ([`DeadLetters::send_window`]), under the same rule: acknowledged before
//! the restore point that passes their window is written.
//!
//! [`read_recent`] and [`render`] are what `logpipe dlq` shows an operator.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use logpipe_consumer::health;
use logpipe_consumer::props::{self, ClientKind};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::store::SinkError;

/// Header: what failed and where.
pub const ERROR: &str = "error";
/// Header: the analyzer that dead-lettered the line.
pub const ANALYZER: &str = "analyzer";
/// Header: `<topic>/<partition>/<offset>` of the original record.
pub const ORIGIN: &str = "origin";

#[derive(Default)]
struct DeadLetterContext {
    /// The first delivery that failed for good, if any.
    failed: Mutex<Option<String>>,
}

impl ClientContext for DeadLetterContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        health::log(level, fac, msg);
    }
    fn error(&self, e: KafkaError, reason: &str) {
        health::error(&e, reason);
    }
}

impl ProducerContext for DeadLetterContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            let mut f = self.failed.lock().unwrap();
            if f.is_none() {
                let origin = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == ORIGIN))
                    .and_then(|h| h.value)
                    .map(String::from_utf8_lossy);
                *f = Some(match origin {
                    Some(o) => format!("a dead letter (origin {o}) was not accepted: {e}"),
                    None => format!(
                        "a window sketch (key {}) was not accepted by {}: {e}",
                        String::from_utf8_lossy(m.key().unwrap_or_default()).replace('\0', " "),
                        m.topic()
                    ),
                });
            }
        }
    }
}

/// The analyzer's producer to the dead-letter topic.
pub struct DeadLetters {
    producer: BaseProducer<DeadLetterContext>,
    topic: String,
    analyzer: String,
    /// Sent since the last [`DeadLetters::flush`].
    pending: u64,
}

impl DeadLetters {
    pub fn new(
        brokers: &str,
        topic: &str,
        analyzer: &str,
        extra: &[(String, String)],
    ) -> Result<DeadLetters, KafkaError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // lz4: Tansu's fetch breaks on snappy batches.
            .set("compression.type", "lz4")
            .set("linger.ms", "20")
            // Kafka down: keep retrying; the analyzer pauses meanwhile.
            .set("message.timeout.ms", "0");
        health::set_client_config(extra);
        // The analyzer's `--kafka` list also holds its consumer's settings.
        props::set_for(&mut cc, ClientKind::Producer, extra);
        Ok(DeadLetters {
            producer: cc.create_with_context(DeadLetterContext::default())?,
            topic: topic.to_string(),
            analyzer: analyzer.to_string(),
            pending: 0,
        })
    }

    /// Queues `msg` as a dead letter; blocks while the local queue is full.
    pub fn send<M: Message>(&mut self, msg: &M, error: &dyn std::fmt::Display) {
        let headers: Vec<(&str, Option<&[u8]>)> = msg
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let origin = format!("{}/{}/{}", msg.topic(), msg.partition(), msg.offset());
        self.send_parts(
            msg.key(),
            msg.payload().unwrap_or(b""),
            &headers,
            msg.timestamp().to_millis(),
            &origin,
            error,
        );
    }

    /// Queues a line that is not one record (a line joined from pieces, or
    /// a first piece given up): `headers` and `origin` are its first piece's.
    pub fn send_parts(
        &mut self,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, Option<&[u8]>)],
        timestamp: Option<i64>,
        origin: &str,
        error: &dyn std::fmt::Display,
    ) {
        let mut hs = OwnedHeaders::new();
        for &(key, value) in headers {
            hs = hs.insert(Header { key, value });
        }
        let error = error.to_string();
        hs = hs
            .insert(Header {
                key: ERROR,
                value: Some(&error),
            })
            .insert(Header {
                key: ANALYZER,
                value: Some(&self.analyzer),
            })
            .insert(Header {
                key: ORIGIN,
                value: Some(origin),
            });
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&self.topic).payload(payload).headers(hs);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        enqueue(&self.producer, record, "a dead letter");
        self.pending += 1;
    }

    /// Queues a final window's sketch record for the fleet topic
    /// ([`crate::fleet`]); acknowledged by the same [`DeadLetters::flush`]
    /// as the dead letters, before the restore point that passes the window.
    pub fn send_window(&mut self, topic: &str, partition: i32, key: &[u8], value: &[u8]) {
        let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(partition)
            .key(key)
            .payload(value);
        enqueue(&self.producer, record, "a window sketch");
        self.pending += 1;
    }

    /// The number of partitions of `topic`, from the brokers' metadata; an
    /// error that says what to do when it does not exist.
    pub fn partitions(&self, topic: &str, timeout: Duration) -> Result<i32, String> {
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| format!("metadata of topic {topic}: {e}"))?;
        match md.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().len() as i32)
            }
            _ => Err(format!(
                "topic {topic} does not exist: create it (compacted: cleanup.policy=compact) before analyzers publish window sketches to it"
            )),
        }
    }

    /// Serves delivery reports; cheap, called from the poll loop.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Waits until every dead letter sent so far is acknowledged. Kafka out
    /// of reach is retryable; a refused dead letter (no such topic, too
    /// large, not authorized) is permanent: the analyzer stops, its restore
    /// point still before the line.
    pub fn flush(&mut self, timeout: Duration) -> Result<(), SinkError> {
        self.refused()?;
        if self.pending == 0 {
            return Ok(());
        }
        self.producer.flush(timeout).map_err(|e| {
            SinkError::Retryable(format!(
                "dead-letter topic {}: {} dead letters not acknowledged yet ({e})",
                self.topic,
                self.producer.in_flight_count()
            ))
        })?;
        self.refused()?;
        self.pending = 0;
        Ok(())
    }

    /// The first dead letter Kafka refused for good, as the analyzer's error.
    fn refused(&self) -> Result<(), SinkError> {
        match self.producer.context().failed.lock().unwrap().as_ref() {
            Some(e) => Err(SinkError::Permanent(format!(
                "dead-letter topic {}: {e}",
                self.topic
            ))),
            None => Ok(()),
        }
    }
}

/// Hands `record` to the producer, waiting while its local queue is full.
fn enqueue(
    producer: &BaseProducer<DeadLetterContext>,
    mut record: BaseRecord<'_, [u8], [u8]>,
    what: &str,
) {
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(50));
            }
            Err((e, _)) => {
                // Only a configuration error gets here; flush reports it.
                let mut f = producer.context().failed.lock().unwrap();
                f.get_or_insert_with(|| format!("{what} could not be queued: {e}"));
                break;
            }
        }
    }
}

/// A dead letter as read back from the topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl DeadLetter {
    fn from_message(m: &BorrowedMessage<'_>) -> DeadLetter {
        DeadLetter {
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().unwrap_or(b"").to_vec(),
            value: m.payload().unwrap_or(b"").to_vec(),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or(b"").to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The last header called `name` (the wire contract's reading).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        logpipe_wire::HeaderLookup::last(&self.headers[..], name, c"")
    }
}

/// A reader of the dead-letter topic (no group: it commits nothing).
pub struct DlqReader {
    consumer: BaseConsumer<health::Logged>,
    topic: String,
    count: usize,
    /// Per partition with something to show, its high watermark at opening.
    ends: HashMap<i32, i64>,
}

impl DlqReader {
    /// Positions at the last `count` dead letters of every partition.
    pub fn open(
        brokers: &str,
        topic: &str,
        count: usize,
        extra: &[(String, String)],
    ) -> Result<DlqReader, String> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", brokers)
            .set("group.id", "logpipe-dlq-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        props::set_for(&mut cc, ClientKind::Consumer, extra);
        let consumer: BaseConsumer<health::Logged> = cc
            .create_with_context(health::Logged)
            .map_err(|e| e.to_string())?;
        let timeout = Duration::from_secs(10);
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| format!("cannot reach Kafka at {brokers}: {e}"))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .ok_or_else(|| format!("topic {topic} does not exist on {brokers}"))?;
        let mut tpl = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for p in t.partitions() {
            let (lo, hi) = consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .map_err(|e| format!("{topic} partition {}: {e}", p.id()))?;
            let from = (hi - count as i64).max(lo);
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(from))
                .map_err(|e| e.to_string())?;
            if from < hi {
                ends.insert(p.id(), hi);
            }
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        Ok(DlqReader {
            consumer,
            topic: topic.to_string(),
            count,
            ends,
        })
    }

    /// The last `count` dead letters on the topic when it was opened, oldest
    /// first.
    pub fn recent(&self) -> Result<Vec<DeadLetter>, String> {
        let mut pending = self.ends.clone();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !pending.is_empty() {
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "reading {} timed out; partitions {:?} not read to their end",
                    self.topic,
                    pending.keys()
                ));
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    out.push(DeadLetter::from_message(&m));
                    if m.offset() + 1 >= pending.get(&m.partition()).copied().unwrap_or(0) {
                        pending.remove(&m.partition());
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => {}
            }
        }
        out.sort_by_key(|d| (d.timestamp_ms, d.partition, d.offset));
        let skip = out.len().saturating_sub(self.count);
        Ok(out.split_off(skip))
    }

    /// The next dead letter, waiting up to `timeout`.
    pub fn next(&self, timeout: Duration) -> Result<Option<DeadLetter>, String> {
        match self.consumer.poll(timeout) {
            Some(Ok(m)) => Ok(Some(DeadLetter::from_message(&m))),
            Some(Err(e)) => Err(e.to_string()),
            None => Ok(None),
        }
    }
}

/// A dead letter for a terminal: when and where it came from, the error, and
/// the line with a caret under the byte the error names.
pub fn render(d: &DeadLetter) -> String {
    use std::fmt::Write as _;
    let text =
        |b: Option<&[u8]>| b.map_or("-".to_string(), |b| String::from_utf8_lossy(b).into_owned());
    let when = d
        .timestamp_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or("-".into(), |t| {
            t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
        });
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{when}  {} {}  origin {}  analyzer {}  file offset {}",
        text(d.header(logpipe_wire::HOST)),
        text(d.header(logpipe_wire::SOURCE)),
        text(d.header(ORIGIN)),
        text(d.header(ANALYZER)),
        text(d.header(logpipe_wire::OFFSET)),
    );
    let error = text(d.header(ERROR));
    let _ = writeln!(s, "  error: {error}");
    // "... at byte N" → caret.
    let at = error
        .rsplit_once("at byte ")
        .and_then(|(_, n)| n.trim().parse::<usize>().ok());
    const BEFORE: usize = 70;
    const AFTER: usize = 50;
    let v = &d.value;
    let (from, to) = match at {
        Some(a) => (a.saturating_sub(BEFORE), (a + AFTER).min(v.len())),
        None => (0, v.len().min(BEFORE + AFTER)),
    };
    let from = from.min(v.len());
    let head = if from > 0 { "…" } else { "" };
    let tail = if to < v.len() { "…" } else { "" };
    let shown = show(&v[from..to]);
    let _ = writeln!(s, "  line:  {head}{shown}{tail}");
    if let Some(a) = at {
        let col = show(&v[from..a.clamp(from, v.len())]).chars().count() + head.chars().count();
        let _ = writeln!(s, "         {}^", " ".repeat(col));
    }
    s
}

/// Bytes as text for a terminal: UTF-8 kept, control characters escaped.
fn show(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for c in String::from_utf8_lossy(b).chars() {
        if c.is_control() {
            s.extend(c.escape_default());
        } else {
            s.push(c);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_points_at_the_failing_byte() {
        let d = DeadLetter {
            partition: 0,
            offset: 7,
            timestamp_ms: Some(1_704_067_200_000),
            key: b"web-1:/var/log/a.log".to_vec(),
            value: b"1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] \"GET / HTTP/1.1\" abc 5".to_vec(),
            headers: vec![
                ("host".into(), b"web-1".to_vec()),
                ("source".into(), b"/var/log/a.log".to_vec()),
                (
                    "error".into(),
                    b"expected a 3-digit status at byte 58".to_vec(),
                ),
                ("origin".into(), b"logs/0/7".to_vec()),
                ("analyzer".into(), b"a0".to_vec()),
            ],
        };
        let r = render(&d);
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(
            lines[0],
            "2024-01-01 00:00:00.000 UTC  web-1 /var/log/a.log  origin logs/0/7  analyzer a0  file offset -"
        );
        assert_eq!(lines[1], "  error: expected a 3-digit status at byte 58");
        assert_eq!(
            lines[2],
            r#"  line:  1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" abc 5"#
        );
        let caret = lines[3].find('^').unwrap();
        assert_eq!(&lines[2][caret..caret + 3], "abc");
    }
}
