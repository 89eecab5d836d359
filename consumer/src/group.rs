//! A consumer-group member: a `BaseConsumer` polled on the caller's thread,
//! with rebalances surfaced as values the caller applies in order.
//!
//! Rebalance callbacks run inside `poll`, on the same thread as the caller's
//! state, so a revoke is seen before any record of the new assignment.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;

use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::batch::Batch;

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

pub struct GroupContext {
    events: Mutex<VecDeque<RebalanceEvent>>,
    /// Where fetched records of assigned partitions are forwarded (set once
    /// the client exists, before the first poll).
    records: OnceLock<Arc<RecordQueue>>,
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

impl ClientContext for GroupContext {
    /// librdkafka's log and errors, through [`crate::health`]: a broker
    /// outage is logged once and its end once.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::health::log(level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        crate::health::error(&error, reason);
    }
}

impl GroupContext {
    fn push(&self, ev: RebalanceEvent) {
        self.events.lock().unwrap().push_back(ev);
    }
}

impl ConsumerContext for GroupContext {
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
                if let Some(q) = self.records.get() {
                    q.take(consumer, &tpl_topic(tpl), &ps);
                }
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
                // librdkafka keeps a pause on the partition across
                // revoke and assign: a member paused while it owned it (its
                // sink failing) would never fetch it again. A new assignment
                // starts unpaused; the caller pauses it again if it must.
                let r = r.and_then(|()| consumer.resume(tpl));
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

/// The queue the fetched records of every assigned partition are forwarded
/// to, apart from the consumer queue that keeps the group's events
/// (rebalances, commits, errors): records are taken from it in batches, and
/// events still go through rdkafka's handlers, which apply them through
/// [`GroupContext`]'s callback. Forwarding is set by the application
/// (`rd_kafka_queue_forward`), so librdkafka's own fetch start does not undo it.
struct RecordQueue {
    /// `None` once the queue was destroyed (the consumer is going away).
    queue: Mutex<Option<QueuePtr>>,
}

struct QueuePtr(*mut rdsys::rd_kafka_queue_t);
// SAFETY: librdkafka queue handles may be used from any thread.
unsafe impl Send for QueuePtr {}

impl RecordQueue {
    fn ptr(&self) -> Option<*mut rdsys::rd_kafka_queue_t> {
        self.queue.lock().unwrap().as_ref().map(|q| q.0)
    }

    /// Forwards the fetch queues of `partitions` here; called before they
    /// are assigned, so no record of theirs reaches the consumer queue.
    fn take<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        partitions: &[i32],
    ) {
        let Some(dst) = self.ptr() else { return };
        let Ok(topic) = CString::new(topic) else {
            return;
        };
        for &p in partitions {
            // SAFETY: a live client; the partition queue handle is released
            // right after forwarding (the forward stays with the partition).
            unsafe {
                let pq = rdsys::rd_kafka_queue_get_partition(
                    consumer.client().native_ptr(),
                    topic.as_ptr(),
                    p,
                );
                if pq.is_null() {
                    continue;
                }
                rdsys::rd_kafka_queue_forward(pq, dst);
                rdsys::rd_kafka_queue_destroy(pq);
            }
        }
    }

    /// Wakes a [`GroupConsumer::poll_batch`] waiting for records, because
    /// the consumer queue has an event to serve.
    fn wake(&self) {
        if let Some(q) = self.queue.lock().unwrap().as_ref() {
            // SAFETY: the queue is live while it is in the mutex.
            unsafe { rdsys::rd_kafka_queue_yield(q.0) };
        }
    }

    fn destroy(&self) {
        if let Some(q) = self.queue.lock().unwrap().take() {
            // SAFETY: our own queue, destroyed once; nothing uses it after.
            unsafe { rdsys::rd_kafka_queue_destroy(q.0) };
        }
    }
}

/// One member of a consumer group on one topic.
pub struct GroupConsumer {
    consumer: BaseConsumer<GroupContext>,
    records: Arc<RecordQueue>,
    topic: String,
    topic_c: CString,
    brokers: String,
    group: String,
    /// Whether a record has come since the start.
    got_records: AtomicBool,
    /// When the member started, and whether its silence was explained.
    quiet: Mutex<(Instant, bool)>,
}

/// A partition, where a member reads it, and its log's start and end.
type PartitionLog = (i32, Option<i64>, Option<(i64, i64)>);

/// How long a member that has received no record since its start waits
/// before it says why (see [`GroupConsumer::quiet_note`]).
pub const QUIET_AFTER: Duration = Duration::from_secs(30);

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        // Before the consumer closes (which serves its last events and so may
        // call the wake-up): the wake-up then finds no queue.
        self.records.destroy();
    }
}

impl GroupConsumer {
    /// Joins the group and subscribes. Offsets are committed only by
    /// [`GroupConsumer::commit`]; a partition without a commit (and without a
    /// start offset from `start`) starts at the earliest record, so nothing on
    /// the topic is skipped.
    pub fn new(cfg: &GroupConfig, start: Option<StartOffsets>) -> Result<Self, ConsumerError> {
        crate::health::set_client_config(&cfg.extra);
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
        crate::props::set_for(&mut cc, crate::props::ClientKind::Consumer, &cfg.extra);
        // KIP-848's `consumer` protocol assigns incrementally, whatever the
        // (then unused) assignment strategy says.
        let cooperative = cc
            .get("partition.assignment.strategy")
            .is_some_and(|s| s.contains("cooperative"))
            || cc.get("group.protocol") == Some("consumer");
        let mut consumer: BaseConsumer<GroupContext> = cc
            .create_with_context(GroupContext {
                events: Mutex::default(),
                records: OnceLock::new(),
                start,
                cooperative,
            })
            .map_err(ConsumerError::Config)?;
        // SAFETY: a live client; the queue is ours and destroyed in `drop`.
        let queue = unsafe { rdsys::rd_kafka_queue_new(consumer.client().native_ptr()) };
        let records = Arc::new(RecordQueue {
            queue: Mutex::new((!queue.is_null()).then_some(QueuePtr(queue))),
        });
        let _ = consumer.context().records.set(records.clone());
        {
            let r = records.clone();
            consumer.set_nonempty_callback(move || r.wake());
        }
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
                records.take(&consumer, &cfg.topic, ps);
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
            records,
            topic: cfg.topic.clone(),
            topic_c: CString::new(cfg.topic.clone()).unwrap_or_default(),
            brokers: cfg.brokers.clone(),
            group: cfg.group.clone(),
            got_records: AtomicBool::new(false),
            quiet: Mutex::new((Instant::now(), false)),
        })
    }

    /// Waits up to `timeout` for a record; rebalances that happened meanwhile
    /// are queued for [`GroupConsumer::take_rebalance`].
    pub fn poll(&self, timeout: Duration) -> Option<Result<BorrowedMessage<'_>, KafkaError>> {
        self.consumer.poll(timeout)
    }

    /// Serves the group's events (rebalances land in
    /// [`GroupConsumer::take_rebalance`]), then fills `batch` with the
    /// records fetched so far, waiting up to `timeout` for the first when
    /// there are none; an event arriving meanwhile ends the wait. A record
    /// that reached the consumer queue instead (none should) is returned.
    /// `batch` must be empty.
    pub fn poll_batch(
        &self,
        batch: &mut Batch,
        timeout: Duration,
    ) -> Option<Result<BorrowedMessage<'_>, KafkaError>> {
        // Every event waiting, not just one: the wake-up below only comes
        // when the consumer queue goes from empty to non-empty.
        loop {
            if let Some(m) = self.consumer.poll(Duration::ZERO) {
                return Some(m);
            }
            if self.events_waiting() == 0 {
                break;
            }
        }
        let Some(q) = self.records.ptr() else {
            return self.consumer.poll(timeout);
        };
        if self.take_rebalance_pending() {
            return None;
        }
        // SAFETY: our live queue; it is destroyed only in `drop`.
        unsafe { batch.fill(q, timeout.as_millis().min(i32::MAX as u128) as i32) };
        if !batch.is_empty() {
            self.got_records.store(true, Ordering::Relaxed);
        } else if !self.got_records.load(Ordering::Relaxed) {
            self.explain_quiet(QUIET_AFTER);
        }
        None
    }

    /// Logs [`GroupConsumer::quiet_note`] once, when no record has come
    /// `after` the start.
    fn explain_quiet(&self, after: Duration) {
        {
            let mut q = self.quiet.lock().unwrap();
            if q.1 || q.0.elapsed() < after {
                return;
            }
            q.1 = true;
        }
        tracing::info!(topic = %self.topic, "{}", self.quiet_note(after));
    }

    /// Why a member has read nothing: it owns no partition (the group has
    /// more members than the topic partitions), the topic is empty, or every
    /// record was read by this group before (its committed offsets are at
    /// the end: only new records come).
    pub fn quiet_note(&self, after: Duration) -> String {
        let t = &self.topic;
        let secs = after.as_secs();
        let owned: Vec<i32> = self
            .consumer
            .assignment()
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .filter(|e| e.topic() == t)
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default();
        if owned.is_empty() {
            let partitions = self
                .consumer
                .fetch_metadata(Some(t), Duration::from_secs(2))
                .ok()
                .and_then(|md| {
                    md.topics()
                        .iter()
                        .find(|x| x.name() == t && x.error().is_none())
                        .map(|x| x.partitions().len())
                })
                .unwrap_or(0);
            if partitions == 0 {
                return format!(
                    "no record of {t} in {secs} s: there is no topic {t} on {} (create it, or check --topic)",
                    self.brokers
                );
            }
            let (state, members) = self
                .consumer
                .fetch_group_list(Some(&self.group), Duration::from_secs(2))
                .ok()
                .and_then(|l| {
                    l.groups()
                        .iter()
                        .find(|g| g.name() == self.group)
                        .map(|g| (g.state().to_string(), g.members().len()))
                })
                .unwrap_or_default();
            let g = &self.group;
            return if state == "Stable" && members > partitions {
                format!(
                    "no record of {t} in {secs} s: this member owns none of its {partitions} partitions: \
                     group {g} has {members} members, more than {t} has partitions, and the others read them all"
                )
            } else {
                format!(
                    "no record of {t} in {secs} s: this member owns none of its {partitions} partitions yet: \
                     group {g} is {} (a rebalance waits for every member it knew, up to their session timeout)",
                    if state.is_empty() { "not known to the coordinator".to_string() } else { format!("in state {state} with {members} members") }
                )
            };
        }
        // Where this member reads from: its position once it fetched,
        // else the group's committed offset.
        let offsets = |tpl: TopicPartitionList| -> HashMap<i32, i64> {
            tpl.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect()
        };
        let committed = self
            .tpl(&owned.iter().map(|&p| (p, 0)).collect::<Vec<_>>())
            .and_then(|tpl| self.consumer.committed_offsets(tpl, Duration::from_secs(2)))
            .map(offsets)
            .unwrap_or_default();
        let positions = self.consumer.position().map(offsets).unwrap_or_default();
        let parts = owned.len();
        // Per partition: where this member reads, and the log's start and
        // end (asked for 5 s at most: this runs on the polling thread).
        let deadline = Instant::now() + Duration::from_secs(5);
        let logs: Vec<PartitionLog> = owned
            .iter()
            .map(|&p| {
                let at = positions.get(&p).or(committed.get(&p)).copied();
                let left = deadline.saturating_duration_since(Instant::now());
                let log = (!left.is_zero())
                    .then(|| {
                        self.consumer
                            .fetch_watermarks(t, p, left.min(Duration::from_secs(2)))
                            .ok()
                    })
                    .flatten();
                (p, at, log)
            })
            .collect();
        if logs.iter().all(|(_, _, l)| *l == Some((0, 0))) {
            return format!(
                "no record of {t} in {secs} s: the {parts} partitions this member owns are empty; \
                 nothing was produced to {t} on {} (is a producer running with that --brokers and --topic?)",
                self.brokers
            );
        }
        let shown: Vec<String> = logs
            .iter()
            .map(|(p, at, l)| {
                let o = |x: Option<i64>| x.map_or("?".into(), |x| x.to_string());
                format!(
                    "{p}: {} of {}..{}",
                    o(*at),
                    o(l.map(|l| l.0)),
                    o(l.map(|l| l.1))
                )
            })
            .collect();
        let shown = shown.join(", ");
        // Nothing to read: the log is empty now (never written, or deleted
        // by retention), or this group has read to its end.
        let nothing_left = |(_, at, l): &PartitionLog| match l {
            Some((lo, hi)) => lo == hi || at.is_some_and(|a| a >= *hi),
            None => false,
        };
        if logs.iter().all(nothing_left) {
            format!(
                "no new record of {t} in {secs} s: this group read every record on its {parts} partitions \
                 before, or retention deleted them (offset of start..end: {shown}); only records \
                 produced from now on come, and `logpipe replay` reads what is left again"
            )
        } else {
            format!(
                "no record of {t} in {secs} s, though records wait on its {parts} partitions \
                 (offset of start..end: {shown}): reading is held (a failing sink pauses it) \
                 or the brokers at {} do not answer fetches",
                self.brokers
            )
        }
    }

    /// Records fetched and not yet taken by [`GroupConsumer::poll_batch`]
    /// (librdkafka fetches ahead up to `queued.min.messages`).
    pub fn queued(&self) -> usize {
        // SAFETY: our live queue, while it is in the mutex.
        self.records
            .ptr()
            .map_or(0, |q| unsafe { rdsys::rd_kafka_queue_length(q) })
    }

    /// Events (and stray records) on the consumer queue.
    fn events_waiting(&self) -> usize {
        // SAFETY: a handle of the live client's consumer queue, released at once.
        unsafe {
            let q = rdsys::rd_kafka_queue_get_consumer(self.consumer.client().native_ptr());
            if q.is_null() {
                return 0;
            }
            let n = rdsys::rd_kafka_queue_length(q);
            rdsys::rd_kafka_queue_destroy(q);
            n
        }
    }

    fn take_rebalance_pending(&self) -> bool {
        !self.consumer.context().events.lock().unwrap().is_empty()
    }

    /// The next queued assignment change, oldest first.
    pub fn take_rebalance(&self) -> Option<RebalanceEvent> {
        self.consumer.context().events.lock().unwrap().pop_front()
    }

    /// Commits `offset` (the next record to read) per partition,
    /// asynchronously unless `sync` (then waiting for the coordinator's
    /// answer). A failed commit is harmless for correctness (the next one
    /// supersedes it), so failures are only logged by the caller.
    pub fn commit(&self, offsets: &[(i32, i64)], sync: bool) -> Result<(), KafkaError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mode = if sync {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        self.consumer.commit(&self.tpl(offsets)?, mode)
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

    /// Where `partitions` start when no start offset was given: the group's
    /// committed offset, else (a partition the group never committed) the
    /// partition's log start offset now — what `auto.offset.reset=earliest`
    /// picks. Asked of the coordinator and the leaders; a partition whose
    /// answer fails is left out.
    pub fn start_positions(
        &self,
        partitions: &[i32],
        timeout: Duration,
    ) -> Result<HashMap<i32, i64>, KafkaError> {
        let mut out = HashMap::new();
        if partitions.is_empty() {
            return Ok(out);
        }
        let tpl = self.tpl(&partitions.iter().map(|&p| (p, 0)).collect::<Vec<_>>())?;
        let committed = self.consumer.committed_offsets(tpl, timeout)?;
        for e in committed.elements() {
            match e.offset() {
                Offset::Offset(o) if o >= 0 => {
                    out.insert(e.partition(), o);
                }
                _ => {
                    if let Ok((lo, _)) =
                        self.consumer
                            .fetch_watermarks(&self.topic, e.partition(), timeout)
                    {
                        out.insert(e.partition(), lo);
                    }
                }
            }
        }
        Ok(out)
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

    fn fixed_config(broker: &MockBroker, partitions: Vec<i32>) -> GroupConfig {
        GroupConfig {
            brokers: broker.bootstrap().to_string(),
            topic: "t".into(),
            group: "g".into(),
            extra: vec![("fetch.wait.max.ms".into(), "10".into())],
            partitions: Some(partitions),
        }
    }

    fn fixed(broker: &MockBroker, partitions: Vec<i32>) -> GroupConsumer {
        GroupConsumer::new(&fixed_config(broker, partitions), None).unwrap()
    }

    /// Polls in batches for `d`; the records read.
    fn read_for(m: &GroupConsumer, d: Duration) -> usize {
        let mut n = 0;
        let until = Instant::now() + d;
        let mut batch = Batch::with_capacity(256);
        while Instant::now() < until {
            assert!(m
                .poll_batch(&mut batch, Duration::from_millis(50))
                .is_none());
            while m.take_rebalance().is_some() {}
            n += batch.len();
            batch.clear();
        }
        n
    }

    #[test]
    fn a_member_that_reads_nothing_says_why() {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let broker = MockBroker::start(1).unwrap();
        broker.create_topic("t", 2).unwrap();
        let quiet = Duration::from_secs(1);
        // An empty topic.
        let m = fixed(&broker, vec![0, 1]);
        assert_eq!(read_for(&m, Duration::from_secs(1)), 0);
        let note = m.quiet_note(quiet);
        assert!(
            note.contains("the 2 partitions this member owns are empty"),
            "{note}"
        );
        assert!(note.contains(broker.bootstrap()), "{note}");
        drop(m);
        // Records the group read and committed before.
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .create()
            .unwrap();
        for i in 0..10 {
            p.send(BaseRecord::<(), _>::to("t").payload("x").partition(i % 2))
                .unwrap();
        }
        p.flush(Duration::from_secs(10)).unwrap();
        let m = fixed(&broker, vec![0, 1]);
        assert_eq!(read_for(&m, Duration::from_secs(2)), 10);
        m.commit(&[(0, 5), (1, 5)], true).unwrap();
        drop(m);
        let m = fixed(&broker, vec![0, 1]);
        assert_eq!(read_for(&m, Duration::from_secs(1)), 0);
        let note = m.quiet_note(quiet);
        assert!(
            note.contains(
                "read every record on its 2 partitions before, or retention deleted them \
                 (offset of start..end: 0: 5 of 0..5, 1: 5 of 0..5)"
            ) && note.contains("logpipe replay"),
            "{note}"
        );
        // No partition at all.
        let m = fixed(&broker, vec![]);
        let note = m.quiet_note(quiet);
        assert!(note.contains("owns none of its 2 partitions yet"), "{note}");
        // No topic.
        let m = GroupConsumer::new(
            &GroupConfig {
                topic: "nosuch".into(),
                ..fixed_config(&broker, vec![])
            },
            None,
        )
        .unwrap();
        let note = m.quiet_note(quiet);
        assert!(
            note.contains("there is no topic nosuch on 127.0.0.1:"),
            "{note}"
        );
    }

    /// Applies an assignment change to the set of partitions a member owns.
    fn apply(own: &mut Vec<i32>, ev: RebalanceEvent) {
        match ev {
            RebalanceEvent::Assigned(ps) => own.extend(ps),
            RebalanceEvent::Revoked(ps) => own.retain(|p| !ps.contains(p)),
            RebalanceEvent::Lost => own.clear(),
            RebalanceEvent::AssignFailed(e) => panic!("{e}"),
        }
    }

    /// Polls both members until `done` holds on their owned partition sets.
    fn settle(ms: &[&GroupConsumer], owned: &mut [Vec<i32>], done: impl Fn(&[Vec<i32>]) -> bool) {
        settle_with(ms, owned, done, |m| {
            let _ = m.poll(Duration::from_millis(50));
        });
    }

    /// [`settle`], polling each member with `poll`.
    fn settle_with(
        ms: &[&GroupConsumer],
        owned: &mut [Vec<i32>],
        done: impl Fn(&[Vec<i32>]) -> bool,
        mut poll: impl FnMut(&GroupConsumer),
    ) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(owned) {
            assert!(Instant::now() < deadline, "group did not settle: {owned:?}");
            for (m, own) in ms.iter().zip(owned.iter_mut()) {
                poll(m);
                while let Some(ev) = m.take_rebalance() {
                    apply(own, ev);
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
        assert!(a.commit(&[(owned[0][0], 0)], false).is_ok());
    }

    /// A partition paused (the analyzer waiting for its sink), then revoked
    /// and assigned again, is fetched again: a new assignment never inherits
    /// an old pause (librdkafka keeps it on the partition otherwise — seen as
    /// a group that stopped consuming after a broker fault).
    #[test]
    fn a_paused_partition_assigned_again_is_fetched() {
        use rdkafka::message::Message;
        use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
        let broker = MockBroker::start(1).unwrap();
        broker.create_topic("t", 2).unwrap();
        let a = member(&broker, "g");
        let mut owned = vec![vec![], vec![]];
        settle(&[&a], &mut owned[..1], |o| o[0].len() == 2);
        a.pause(&[0, 1]).unwrap();
        {
            let b = member(&broker, "g");
            settle(&[&a, &b], &mut owned, |o| {
                o[0].len() == 1 && o[1].len() == 1
            });
        }
        // `b` left: `a` owns both again.
        settle(&[&a], &mut owned[..1], |o| o[0].len() == 2);
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .create()
            .unwrap();
        for i in 0..100 {
            let v = i.to_string();
            producer
                .send(BaseRecord::<(), _>::to("t").payload(&v).partition(i % 2))
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let mut batch = Batch::with_capacity(256);
        let mut seen = [0usize; 2];
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.iter().sum::<usize>() < 100 {
            assert!(
                Instant::now() < deadline,
                "records per partition {seen:?}: a partition stayed paused"
            );
            let _ = a.poll_batch(&mut batch, Duration::from_millis(50));
            while let Some(ev) = a.take_rebalance() {
                apply(&mut owned[0], ev);
            }
            for r in batch.iter() {
                seen[r.partition() as usize] += 1;
            }
            batch.clear();
        }
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

    /// Records come out of `poll_batch` whole and in order (key, payload,
    /// headers, timestamp), a batch never holds more than its capacity, and
    /// a second member's join is applied through the same calls.
    #[test]
    fn batches_carry_every_record_in_order_and_rebalances_still_apply() {
        use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
        use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

        let broker = MockBroker::start(1).unwrap();
        broker.create_topic("t", 2).unwrap();
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .create()
            .unwrap();
        const N: usize = 5000;
        for i in 0..N {
            let key = format!("k{}", i % 2);
            let value = format!("line {i}");
            let offset = i.to_string();
            producer
                .send(
                    BaseRecord::to("t")
                        .key(&key)
                        .payload(&value)
                        .partition((i % 2) as i32)
                        .timestamp(1_000 + i as i64)
                        .headers(OwnedHeaders::new().insert(Header {
                            key: "offset",
                            value: Some(&offset),
                        })),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        let a = member(&broker, "g");
        let mut batch = Batch::with_capacity(256);
        let mut seen: Vec<Vec<usize>> = vec![vec![], vec![]];
        let mut owned = vec![];
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.iter().map(Vec::len).sum::<usize>() < N {
            assert!(
                Instant::now() < deadline,
                "only {:?} records",
                seen.iter().map(Vec::len).collect::<Vec<_>>()
            );
            assert!(a
                .poll_batch(&mut batch, Duration::from_millis(50))
                .is_none());
            while let Some(ev) = a.take_rebalance() {
                apply(&mut owned, ev);
            }
            assert!(batch.len() <= 256);
            for r in batch.iter() {
                assert_eq!(r.error(), None);
                let i: usize = std::str::from_utf8(r.payload().unwrap()).unwrap()[5..]
                    .parse()
                    .unwrap();
                assert_eq!(r.key(), Some(format!("k{}", i % 2).as_bytes()));
                assert_eq!(r.partition(), (i % 2) as i32);
                assert_eq!(r.offset(), (i / 2) as i64);
                assert_eq!(r.timestamp().to_millis(), Some(1_000 + i as i64));
                let h = r.headers().unwrap();
                assert_eq!(h.count(), 1);
                assert_eq!(h.get(0).key, "offset");
                assert_eq!(h.get(0).value, Some(i.to_string().as_bytes()));
                seen[r.partition() as usize].push(i);
            }
            batch.clear();
        }
        owned.sort();
        assert_eq!(owned, vec![0, 1]);
        for (p, s) in seen.iter().enumerate() {
            let want: Vec<usize> = (0..N).filter(|i| i % 2 == p).collect();
            assert_eq!(s, &want, "partition {p} in order, each once");
        }

        // A second member: `a` is told of the revoke through poll_batch.
        let b = member(&broker, "g");
        let mut owned = vec![owned, vec![]];
        settle_with(
            &[&a, &b],
            &mut owned,
            |o| o[0].len() == 1 && o[1].len() == 1,
            |m| {
                let _ = m.poll_batch(&mut batch, Duration::from_millis(50));
                batch.clear();
            },
        );
    }
}
