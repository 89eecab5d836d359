//! The consumer-group runtime every downstream stage of logpipe uses, and the
//! development broker.
//!
//! - [`group`]: [`GroupConsumer`], one member of a consumer group, polled on the
//!   caller's thread, with assignment changes surfaced as [`RebalanceEvent`]s
//!   and explicit offset commits.
//! - [`mock`]: [`MockBroker`], librdkafka's mock cluster held open as a
//!   Kafka-protocol broker for `logpipe broker`, `logpipe demo` and tests.

pub mod group;
pub mod mock;

pub use group::{ConsumerError, GroupConfig, GroupConsumer, RebalanceEvent, StartOffsets};
pub use mock::MockBroker;
