//! Finding offsets on a topic without joining a group: partitions, their
//! earliest and end offsets, and the first offset at or after a record
//! timestamp — for `logpipe replay`.
//!
//! Kafka answers "first offset whose timestamp is at or after T"
//! (offsets-for-times) from its time index. Not every Kafka-protocol broker
//! does: librdkafka's mock cluster always answers "end of partition", others
//! answer 0. So every answer is checked against the records themselves (the
//! record at the answer is at or after T, the one before it is not; an "end"
//! answer needs the last record to be before T), and when the check fails
//! the offset is found by a binary search over record timestamps, reading one
//! record per step (about 20 steps for a million records).
//!
//! The binary search assumes record timestamps grow with offsets. They are
//! the producers' clocks when they read the lines, so within a partition they
//! grow up to the skew between the producers that share it; `logpipe replay`
//! starts `--max-delay` before the range, which covers that.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// How a start offset was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The broker's offsets-for-times answer, checked against the records.
    Broker,
    /// A binary search over record timestamps (the broker's answer was wrong
    /// or missing).
    Search,
    /// The partition is empty.
    Empty,
}

/// Reads partitions, offsets and single records of one topic.
pub struct Probe {
    consumer: BaseConsumer<crate::health::Logged>,
    topic: String,
    timeout: Duration,
}

impl Probe {
    /// A consumer outside any group (it never commits); `extra` are
    /// librdkafka properties (`--kafka`).
    pub fn new(brokers: &str, topic: &str, extra: &[(String, String)]) -> Result<Self, KafkaError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", brokers)
            .set("group.id", "logpipe-probe")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "10");
        crate::props::set_for(&mut cc, crate::props::ClientKind::Consumer, extra);
        Ok(Probe {
            consumer: cc.create_with_context(crate::health::Logged)?,
            topic: topic.to_string(),
            timeout: Duration::from_secs(10),
        })
    }

    /// The topic's partitions, sorted. An error names a missing topic.
    pub fn partitions(&self) -> Result<Vec<i32>, KafkaError> {
        let md = self
            .consumer
            .fetch_metadata(Some(&self.topic), self.timeout)?;
        let mut ps: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        ps.sort_unstable();
        Ok(ps)
    }

    /// (earliest offset kept, end offset = next offset to be written).
    pub fn watermarks(&self, partition: i32) -> Result<(i64, i64), KafkaError> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, self.timeout)
    }

    /// The first record at or after `offset` (records can be missing after
    /// compaction): its offset and timestamp in ms. `None` when there is no
    /// record there before the end.
    pub fn record_at(&self, partition: i32, offset: i64) -> Result<Option<(i64, i64)>, KafkaError> {
        let (_, hi) = self.watermarks(partition)?;
        if offset >= hi {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        self.consumer.assign(&tpl)?;
        let deadline = Instant::now() + self.timeout;
        while Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.partition() == partition && m.offset() >= offset => {
                    let ts = m.timestamp().to_millis().unwrap_or(i64::MIN);
                    return Ok(Some((m.offset(), ts)));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        Err(KafkaError::MessageConsumption(
            rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
        ))
    }

    /// The broker's answer to offsets-for-times: `Some(offset)`, or `None`
    /// for "no record at or after `ts_ms`" (end of partition).
    fn broker_offset_for_time(
        &self,
        partition: i32,
        ts_ms: i64,
    ) -> Result<Option<i64>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(ts_ms))?;
        let got = self.consumer.offsets_for_times(tpl, self.timeout)?;
        let e = got
            .find_partition(&self.topic, partition)
            .ok_or(KafkaError::OffsetFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownPartition,
            ))?;
        e.error()?;
        Ok(match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
    }

    /// Does `answer` (an offset, or the end) hold for `ts_ms` on the records?
    fn answer_holds(
        &self,
        partition: i32,
        lo: i64,
        hi: i64,
        ts_ms: i64,
        answer: i64,
    ) -> Result<bool, KafkaError> {
        if answer < lo || answer > hi {
            return Ok(false);
        }
        if answer < hi {
            match self.record_at(partition, answer)? {
                Some((_, t)) if t >= ts_ms => {}
                _ => return Ok(false),
            }
        }
        if answer > lo {
            // The record before must be before ts_ms. After compaction the
            // first record at or after answer-1 can be the answer itself.
            if let Some((o, t)) = self.record_at(partition, answer - 1)? {
                if o < answer && t >= ts_ms {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The first offset of `partition` whose record timestamp is at or after
    /// `ts_ms` (the end offset when none is), and how it was found.
    pub fn offset_for_time(&self, partition: i32, ts_ms: i64) -> Result<(i64, Found), KafkaError> {
        let (lo, hi) = self.watermarks(partition)?;
        if lo >= hi {
            return Ok((hi, Found::Empty));
        }
        let answer = self.broker_offset_for_time(partition, ts_ms)?.unwrap_or(hi);
        if self.answer_holds(partition, lo, hi, ts_ms, answer)? {
            return Ok((answer, Found::Broker));
        }
        // First offset in [lo, hi) with timestamp >= ts_ms.
        let (mut a, mut b) = (lo, hi);
        while a < b {
            let mid = a + (b - a) / 2;
            match self.record_at(partition, mid)? {
                Some((o, t)) if t < ts_ms => a = o + 1,
                Some(_) | None => b = mid,
            }
        }
        Ok((a, Found::Search))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MockBroker;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    const T0: i64 = 1_704_067_200_000;

    /// 200 records with timestamps T0, T0+1s, … on partition 0 of "t".
    fn topic_with_timestamps() -> MockBroker {
        let broker = MockBroker::start(1).unwrap();
        broker.create_topic("t", 2).unwrap();
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("linger.ms", "5")
            .create()
            .unwrap();
        for i in 0..200i64 {
            let v = format!("line {i}");
            p.send(
                BaseRecord::<(), _>::to("t")
                    .partition(0)
                    .payload(&v)
                    .timestamp(T0 + i * 1000),
            )
            .unwrap();
        }
        p.flush(Duration::from_secs(10)).unwrap();
        broker
    }

    #[test]
    fn finds_offsets_by_timestamp_where_the_broker_cannot() {
        let broker = topic_with_timestamps();
        let probe = Probe::new(broker.bootstrap(), "t", &[]).unwrap();
        assert_eq!(probe.partitions().unwrap(), vec![0, 1]);
        assert_eq!(probe.watermarks(0).unwrap(), (0, 200));
        // The mock answers "end" for every time: wrong here, so searched.
        assert_eq!(
            probe.offset_for_time(0, T0 + 50_500).unwrap(),
            (51, Found::Search)
        );
        assert_eq!(
            probe.offset_for_time(0, T0 + 50_000).unwrap(),
            (50, Found::Search)
        );
        assert_eq!(
            probe.offset_for_time(0, T0 - 1).unwrap(),
            (0, Found::Search)
        );
        assert_eq!(
            probe.offset_for_time(0, T0 + 199_000).unwrap(),
            (199, Found::Search)
        );
        // After the last record "end" is right, and taken.
        assert_eq!(
            probe.offset_for_time(0, T0 + 500_000).unwrap(),
            (200, Found::Broker)
        );
        assert_eq!(probe.offset_for_time(1, T0).unwrap(), (0, Found::Empty));
        assert_eq!(probe.record_at(0, 7).unwrap(), Some((7, T0 + 7000)));
        assert_eq!(probe.record_at(0, 200).unwrap(), None);
    }
}
