//! A consumer-group member: a `BaseConsumer` polled on the caller's thread,
//! with rebalances surfaced as values the caller applies in order.
//!
//! Rebalance callbacks run inside `poll`, on the same thread as the caller's
//! state, so a revoke is seen before any record of the new assignment.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
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
}

/// An assignment change, in the order the group coordinator made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
    /// The assignment was lost (e.g. session timeout); state must be dropped.
    Lost,
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
}

#[derive(Default)]
pub struct Ctx {
    events: Mutex<VecDeque<RebalanceEvent>>,
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        let ev = match r {
            Rebalance::Revoke(tpl) => RebalanceEvent::Revoked(partitions(tpl)),
            Rebalance::Assign(_) => return,
            Rebalance::Error(_) => RebalanceEvent::Lost,
        };
        self.events.lock().unwrap().push_back(ev);
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            self.events
                .lock()
                .unwrap()
                .push_back(RebalanceEvent::Assigned(partitions(tpl)));
        }
    }
}

/// One member of a consumer group on one topic.
pub struct GroupConsumer {
    consumer: BaseConsumer<Ctx>,
    topic: String,
}

impl GroupConsumer {
    /// Joins the group and subscribes. Offsets are committed only by
    /// [`GroupConsumer::commit`]; a partition without a commit starts at the
    /// earliest record, so nothing on the topic is skipped.
    pub fn new(cfg: &GroupConfig) -> Result<Self, ConsumerError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        for (k, v) in &cfg.extra {
            cc.set(k, v);
        }
        let consumer: BaseConsumer<Ctx> = cc
            .create_with_context(Ctx::default())
            .map_err(ConsumerError::Config)?;
        consumer
            .subscribe(&[&cfg.topic])
            .map_err(|source| ConsumerError::Subscribe {
                topic: cfg.topic.clone(),
                source,
            })?;
        Ok(GroupConsumer {
            consumer,
            topic: cfg.topic.clone(),
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
        let mut tpl = TopicPartitionList::new();
        for &(p, o) in offsets {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))?;
        }
        self.consumer.commit(&tpl, CommitMode::Async)
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
        GroupConsumer::new(&GroupConfig {
            brokers: broker.bootstrap().to_string(),
            topic: "t".into(),
            group: group.into(),
            extra: vec![
                ("session.timeout.ms".into(), "2000".into()),
                ("heartbeat.interval.ms".into(), "500".into()),
            ],
        })
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
}
