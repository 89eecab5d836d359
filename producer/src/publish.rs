//! Publishing lines to Kafka with delivery tracking per file.
//!
//! Every file has a slot. Lines of one file go to one partition in order
//! (same key, idempotent producer), so their acknowledgements arrive in order
//! too: each ack pops the oldest in-flight end offset of the slot, and that is
//! the `Delivered` position a checkpoint may record.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

#[derive(Debug, Default)]
struct Slot {
    in_flight: VecDeque<u64>,
    /// Byte offset after the last line Kafka acknowledged.
    delivered: Option<u64>,
}

#[derive(Default)]
struct Tracker {
    slots: Mutex<Vec<Slot>>,
    failure: Mutex<Option<String>>,
}

struct Ctx(Arc<Tracker>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        let mut slots = self.0.slots.lock().unwrap();
        let s = &mut slots[slot];
        let end = s.in_flight.pop_front();
        match result {
            Ok(_) => s.delivered = end.or(s.delivered),
            Err((e, _)) => {
                // Never advance past a failed line: the checkpoint stays before it.
                s.in_flight.clear();
                self.0
                    .failure
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| format!("Kafka did not accept a line: {e}"));
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
    pub timestamp_ms: i64,
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
}

/// The Kafka producer and its acknowledgement tracker.
pub struct Publisher {
    producer: ThreadedProducer<Ctx>,
    tracker: Arc<Tracker>,
    topic: String,
}

impl Publisher {
    /// Idempotent, `acks=all`, lz4, no delivery timeout (a Kafka outage blocks,
    /// it does not drop), and a bounded queue so memory stays bounded.
    pub fn new(
        brokers: &str,
        topic: &str,
        extra: &[(String, String)],
    ) -> Result<Self, PublishError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "10")
            .set("batch.size", "1000000")
            .set("message.timeout.ms", "0")
            .set("queue.buffering.max.messages", "200000")
            .set("queue.buffering.max.kbytes", "65536");
        for (k, v) in extra {
            cc.set(k, v);
        }
        let tracker = Arc::new(Tracker::default());
        let producer = cc
            .create_with_context(Ctx(tracker.clone()))
            .map_err(PublishError::Config)?;
        Ok(Publisher {
            producer,
            tracker,
            topic: topic.to_string(),
        })
    }

    /// Adds a slot for a file whose lines before `offset` are already delivered.
    pub fn add_slot(&self, offset: u64) -> usize {
        let mut slots = self.tracker.slots.lock().unwrap();
        slots.push(Slot {
            in_flight: VecDeque::new(),
            delivered: Some(offset),
        });
        slots.len() - 1
    }

    /// Resets a slot after truncation: lines in flight still ack, but the
    /// delivered position restarts at 0 of the new generation.
    pub fn reset_slot(&self, slot: usize) {
        let mut slots = self.tracker.slots.lock().unwrap();
        slots[slot] = Slot {
            in_flight: VecDeque::new(),
            delivered: Some(0),
        };
    }

    /// Position after the last acknowledged line of a slot, once nothing
    /// older is in flight.
    pub fn delivered(&self, slot: usize) -> Option<u64> {
        self.tracker.slots.lock().unwrap()[slot].delivered
    }

    /// Queues a line, waiting (without dropping) while the queue is full.
    pub fn send(&self, line: &Line<'_>) -> Result<(), PublishError> {
        self.check()?;
        let offset = itoa::Buffer::new().format(line.offset).to_owned();
        let headers = OwnedHeaders::new_with_capacity(4)
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
                value: Some(&offset),
            });
        let mut record = BaseRecord::with_opaque_to(&self.topic, line.slot)
            .key(line.key)
            .payload(line.value)
            .headers(headers)
            .timestamp(line.timestamp_ms);
        // Recorded before sending: the ack may arrive before `send` returns.
        self.tracker.slots.lock().unwrap()[line.slot]
            .in_flight
            .push_back(line.end);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Back-pressure: Kafka is slow or down; the file is the buffer.
                    record = r;
                    std::thread::sleep(Duration::from_millis(20));
                    self.check()?;
                }
                Err((e, _)) => {
                    self.tracker.slots.lock().unwrap()[line.slot]
                        .in_flight
                        .pop_back();
                    return Err(PublishError::Kafka(e));
                }
            }
        }
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
