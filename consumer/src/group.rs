//! A consumer-group member: a `BaseConsumer` polled on the caller's thread,
//! with rebalances surfaced as values the caller applies in order.
//!
//! Rebalance callbacks run inside `poll`, on the same thread as the caller's
//! state, so a revoke is seen before any record of the new assignment.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// Settings of a group member.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    pub group: String,
    /// Extra librdkafka properties (`--kafka key=value`), applied last.
    pub extra: Vec<(String, String)>,
    /// Fixed partitions instead of group membership: the member assigns these
    /// itself at start and never rebalances (the group id still names the
    /// commits). For brokers whose group coordinator cannot be trusted, or
    /// deployments that place partitions themselves.
    pub partitions: Option<Vec<i32>>,
}

/// An assignment change, in the order the group coordinator made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
    /// The assignment was lost (e.g. session timeout); state must be dropped.
    Lost,
    /// Partitions were offered but their start offsets could not be found
    /// (see [`StartOffsets`]); they were not taken.
    AssignFailed(String),
}

/// Why the group member failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("bad Kafka consumer configuration: {0}")]
    Config(KafkaError),
    #[error("cannot subscribe to topic {topic}: {source}")]
    Subscribe { topic: String, source: KafkaError },
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Start(String),
}

/// Where each newly assigned partition starts, asked inside the rebalance
/// callback before the partitions are assigned (so no record is fetched from
/// anywhere else first). Partitions it leaves out start at the group's
/// committed offset. An `Err` leaves the partitions unassigned and surfaces
/// as [`RebalanceEvent::AssignFailed`]: the member must leave the group.
pub type StartOffsets = Box<dyn Fn(&[i32]) -> Result<HashMap<i32, i64>, String> + Send + Sync>;

pub struct Ctx {
    events: Mutex<VecDeque<RebalanceEvent>>,
    start: Option<StartOffsets>,
    /// The configured assignment strategy is cooperative. Known from the
    /// configuration rather than asked with `rebalance_protocol()` inside the
    /// callback: that call waits on librdkafka's main thread, and during the
    /// consumer's close (a revoke from `drop`) it can wait forever — seen as a
    /// hung `logpipe demo` under load.
    cooperative: bool,
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl ClientContext for Ctx {}

impl Ctx {
    fn push(&self, ev: RebalanceEvent) {
        self.events.lock().unwrap().push_back(ev);
    }
}

impl ConsumerContext for Ctx {
    /// The default callback, plus: start offsets for assigned partitions, and
    /// every change queued as an event for the caller's thread.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = self.cooperative;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let ps = partitions(tpl);
                if let Some(start) = &self.start {
                    match start(&ps) {
                        Ok(offsets) => {
                            for (p, o) in offsets {
                                if let Some(mut e) = tpl.find_partition(&tpl_topic(tpl), p) {
                                    let _ = e.set_offset(Offset::Offset(o));
                                }
                            }
                        }
                        Err(msg) => {
                            self.push(RebalanceEvent::AssignFailed(msg));
                            return;
                        }
                    }
                }
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match r {
                    Ok(()) => self.push(RebalanceEvent::Assigned(ps)),
                    Err(e) => self.push(RebalanceEvent::AssignFailed(format!(
                        "assigning partitions {ps:?} failed: {e}"
                    ))),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Queued before unassigning: the caller drops the partitions'
                // state at its next step, and writes nothing for them after.
                let lost = consumer.assignment_lost();
                self.push(if lost {
                    RebalanceEvent::Lost
                } else {
                    RebalanceEvent::Revoked(partitions(tpl))
                });
                let _ = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
                self.push(RebalanceEvent::Lost);
            }
        }
    }
}

fn tpl_topic(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .first()
        .map(|e| e.topic().to_string())
        .unwrap_or_default()
}

/// One member of a consumer group on one topic.
pub struct GroupConsumer {
    consumer: BaseConsumer<Ctx>,
    topic: String,
    topic_c: CString,
}

impl GroupConsumer {
    /// Joins the group and subscribes. Offsets are committed only by
    /// [`GroupConsumer::commit`]; a partition without a commit (and without a
    /// start offset from `start`) starts at the earliest record, so nothing on
    /// the topic is skipped.
    pub fn new(cfg: &GroupConfig, start: Option<StartOffsets>) -> Result<Self, ConsumerError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // When the fetched-but-unread queue is over `queued.min.messages`,
            // librdkafka waits this long before fetching again (default 1 s).
            // A consumer catching up or replaying empties 100 000 records in
            // well under that, then sat idle: replay ran at 150 k records/s
            // with a third of one core busy. 10 ms keeps the queue fed.
            .set("fetch.queue.backoff.ms", "10");
        for (k, v) in &cfg.extra {
            cc.set(k, v);
        }
        let cooperative = cc
            .get("partition.assignment.strategy")
            .is_some_and(|s| s.contains("cooperative"));
        let consumer: BaseConsumer<Ctx> = cc
            .create_with_context(Ctx {
                events: Mutex::default(),
                start,
                cooperative,
            })
            .map_err(ConsumerError::Config)?;
        match &cfg.partitions {
            None => {
                consumer
                    .subscribe(&[&cfg.topic])
                    .map_err(|source| ConsumerError::Subscribe {
                        topic: cfg.topic.clone(),
                        source,
                    })?
            }
            Some(ps) => {
                let ctx = consumer.context();
                let offsets = match &ctx.start {
                    Some(start) => start(ps).map_err(ConsumerError::Start)?,
                    None => HashMap::new(),
                };
                let mut tpl = TopicPartitionList::new();
                for &p in ps {
                    // Without a start offset: the group's committed offset,
                    // else `auto.offset.reset` (earliest).
                    let o = offsets
                        .get(&p)
                        .map_or(Offset::Stored, |&o| Offset::Offset(o));
                    tpl.add_partition_offset(&cfg.topic, p, o)?;
                }
                consumer.assign(&tpl)?;
                ctx.push(RebalanceEvent::Assigned(ps.clone()));
            }
        }
        Ok(GroupConsumer {
            consumer,
            topic: cfg.topic.clone(),
            topic_c: CString::new(cfg.topic.clone()).unwrap_or_default(),
        })
    }

    /// Waits up to `timeout` for a record; rebalances that happened meanwhile
    /// are queued for [`GroupConsumer::take_rebalance`].
    pub fn poll(&self, timeout: Duration) -> Option<Result<BorrowedMessage<'_>, KafkaError>> {
        self.consumer.poll(timeout)
    }

    /// The next queued assignment change, oldest first.
    pub fn take_rebalance(&self) -> Option<RebalanceEvent> {
        self.consumer.context().events.lock().unwrap().pop_front()
    }

    /// Commits `offset` (the next record to read) per partition, asynchronously.
    /// A failed commit is harmless for correctness (the next one supersedes
    /// it), so failures are only logged by the caller.
    pub fn commit(&self, offsets: &[(i32, i64)]) -> Result<(), KafkaError> {
        if offsets.is_empty() {
            return Ok(());
        }
        self.consumer.commit(&self.tpl(offsets)?, CommitMode::Async)
    }

    fn tpl(&self, offsets: &[(i32, i64)]) -> Result<TopicPartitionList, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for &(p, o) in offsets {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))?;
        }
        Ok(tpl)
    }

    /// Stops fetching `partitions` (records already fetched are discarded and
    /// fetched again after [`GroupConsumer::resume`]); the member keeps its
    /// group membership while paused.
    pub fn pause(&self, partitions: &[i32]) -> Result<(), KafkaError> {
        let tpl = self.tpl(&partitions.iter().map(|&p| (p, 0)).collect::<Vec<_>>())?;
        self.consumer.pause(&tpl)
    }

    pub fn resume(&self, partitions: &[i32]) -> Result<(), KafkaError> {
        let tpl = self.tpl(&partitions.iter().map(|&p| (p, 0)).collect::<Vec<_>>())?;
        self.consumer.resume(&tpl)
    }

    /// The high watermark librdkafka last saw for `partition` in a fetch
    /// response (no request is made); `None` before the first fetch.
    pub fn cached_high_watermark(&self, partition: i32) -> Option<i64> {
        let (mut lo, mut hi) = (-1i64, -1i64);
        // SAFETY: the client pointer is valid for the consumer's lifetime and
        // the topic name is a NUL-terminated string that outlives the call.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                self.topic_c.as_ptr(),
                partition,
                &mut lo,
                &mut hi,
            )
        };
        (err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && hi >= 0).then_some(hi)
    }

    /// High watermarks (the next offset to be written) of `partition`.
    pub fn high_watermark(&self, partition: i32, timeout: Duration) -> Result<i64, KafkaError> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, timeout)
            .map(|(_, hi)| hi)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MockBroker;
    use std::time::Instant;

    fn member(broker: &MockBroker, group: &str) -> GroupConsumer {
        GroupConsumer::new(
            &GroupConfig {
                brokers: broker.bootstrap().to_string(),
                topic: "t".into(),
                group: group.into(),
                extra: vec![
                    ("session.timeout.ms".into(), "2000".into()),
                    ("heartbeat.interval.ms".into(), "500".into()),
                ],
                partitions: None,
            },
            None,
        )
        .unwrap()
    }

    /// Polls both members until `done` holds on their owned partition sets.
    fn settle(ms: &[&GroupConsumer], owned: &mut [Vec<i32>], done: impl Fn(&[Vec<i32>]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(owned) {
            assert!(Instant::now() < deadline, "group did not settle: {owned:?}");
            for (m, own) in ms.iter().zip(owned.iter_mut()) {
                let _ = m.poll(Duration::from_millis(50));
                while let Some(ev) = m.take_rebalance() {
                    match ev {
                        RebalanceEvent::Assigned(ps) => own.extend(ps),
                        RebalanceEvent::Revoked(ps) => own.retain(|p| !ps.contains(p)),
                        RebalanceEvent::Lost => own.clear(),
                        RebalanceEvent::AssignFailed(e) => panic!("{e}"),
                    }
                }
            }
        }
    }

    #[test]
    fn second_member_takes_half_the_partitions_through_revoke_and_assign() {
        let broker = MockBroker::start(1).unwrap();
        broker.create_topic("t", 4).unwrap();
        let a = member(&broker, "g");
        let mut owned = vec![vec![], vec![]];
        settle(&[&a], &mut owned[..1], |o| o[0].len() == 4);
        let b = member(&broker, "g");
        settle(&[&a, &b], &mut owned, |o| {
            o[0].len() == 2 && o[1].len() == 2
        });
        let mut all: Vec<i32> = owned.concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3]);
        assert!(a.commit(&[(owned[0][0], 0)]).is_ok());
    }

    #[test]
    fn fixed_partitions_are_assigned_at_start_with_their_start_offsets() {
        let broker = MockBroker::start(1).unwrap();
        broker.create_topic("t", 4).unwrap();
        let cfg = |ps: Vec<i32>| GroupConfig {
            brokers: broker.bootstrap().to_string(),
            topic: "t".into(),
            group: "g".into(),
            extra: vec![],
            partitions: Some(ps),
        };
        let asked = std::sync::Arc::new(Mutex::new(Vec::new()));
        let a2 = asked.clone();
        let m = GroupConsumer::new(
            &cfg(vec![1, 3]),
            Some(Box::new(move |ps: &[i32]| {
                a2.lock().unwrap().extend_from_slice(ps);
                Ok(HashMap::from([(1, 0)]))
            })),
        )
        .unwrap();
        assert_eq!(
            m.take_rebalance(),
            Some(RebalanceEvent::Assigned(vec![1, 3]))
        );
        assert_eq!(*asked.lock().unwrap(), vec![1, 3]);
        let _ = m.poll(Duration::from_millis(200));
        assert_eq!(m.take_rebalance(), None, "no group, no rebalance");

        let err = GroupConsumer::new(
            &cfg(vec![0]),
            Some(Box::new(|_: &[i32]| Err("state store down".to_string()))),
        )
        .err()
        .expect("a start-offset failure is an error");
        assert_eq!(err.to_string(), "state store down");
    }
}
