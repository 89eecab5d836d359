//! The consumer-group runtime every downstream stage of logpipe uses, and the
//! development broker.
//!
//! - [`group`]: [`GroupConsumer`], one member of a consumer group, polled on the
//!   caller's thread, with assignment changes surfaced as [`RebalanceEvent`]s
//!   and explicit offset commits.
//! - [`batch`]: [`Batch`] and [`Record`], records taken from librdkafka many
//!   at a time and read in place.
//! - [`offsets`]: [`Probe`], partitions, watermarks and offsets by record
//!   timestamp (checked against the records, binary search as fallback).
//! - [`health`]: broker outages logged once each, and their end once, for
//!   every client of the process.
//! - [`mock`]: [`MockBroker`], librdkafka's mock cluster held open as a
//!   Kafka-protocol broker for `logpipe broker`, `logpipe demo` and tests.

pub mod batch;
pub mod group;
pub mod health;
pub mod mock;
pub mod offsets;
pub mod props;

pub use batch::{Batch, Record};
pub use group::{ConsumerError, GroupConfig, GroupConsumer, RebalanceEvent, StartOffsets};
pub use mock::MockBroker;
pub use offsets::{Found, Probe};
