//! The consumer-group runtime every downstream stage of logpipe uses, and the
//! development broker.
//!
//! - [`group`]: [`GroupConsumer`], one member of a consumer group, polled on the
//!   caller's thread, with assignment changes surfaced as [`RebalanceEvent`]s
//!   and explicit offset commits.
//! - [`offsets`]: [`Probe`], partitions, watermarks and offsets by record
//!   timestamp (checked against the records, binary search as fallback).
//! - [`mock`]: [`MockBroker`], librdkafka's mock cluster held open as a
//!   Kafka-protocol broker for `logpipe broker`, `logpipe demo` and tests.

pub mod group;
pub mod mock;
pub mod offsets;

pub use group::{ConsumerError, GroupConfig, GroupConsumer, RebalanceEvent, StartOffsets};
pub use mock::MockBroker;
pub use offsets::{Found, Probe};
