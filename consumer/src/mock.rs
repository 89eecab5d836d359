//! A Kafka-protocol broker for development and tests: librdkafka's mock
//! cluster, held open by a handle in this process and reachable by other
//! processes on a loopback bootstrap address.
//!
//! Not a production broker: no persistence, no CreateTopics (topics are made
//! here), no offsets-for-times. It does groups, commits, the idempotent
//! producer and fault injection.

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};

/// A running mock cluster. Dropping it stops the brokers.
pub struct MockBroker {
    // The cluster belongs to this client handle (`test.mock.num.brokers`),
    // which is how we can reach its raw pointer for settings rdkafka's safe
    // wrapper does not expose.
    handle: BaseProducer,
    bootstrap: String,
}

impl MockBroker {
    /// Starts `brokers` mock brokers on loopback ports. The group initial
    /// rebalance delay is set to 0 so group members join without the 3 s wait.
    pub fn start(brokers: i32) -> Result<Self, KafkaError> {
        let handle: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .create()?;
        let bootstrap = handle
            .client()
            .mock_cluster()
            .ok_or(KafkaError::MockCluster(
                rdkafka::types::RDKafkaErrorCode::Fail,
            ))?
            .bootstrap_servers();
        // SAFETY: the pointer belongs to `handle`, which lives as long as self.
        unsafe {
            let raw = rdkafka::bindings::rd_kafka_handle_mock_cluster(handle.client().native_ptr());
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(raw, 0);
        }
        Ok(MockBroker { handle, bootstrap })
    }

    /// The `bootstrap.servers` string, e.g. `127.0.0.1:40123`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (the mock does not implement CreateTopics).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), KafkaError> {
        let cluster = self
            .handle
            .client()
            .mock_cluster()
            .ok_or(KafkaError::MockCluster(
                rdkafka::types::RDKafkaErrorCode::Fail,
            ))?;
        cluster.create_topic(name, partitions, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_loopback_and_creates_topics() {
        let b = MockBroker::start(1).unwrap();
        assert!(
            b.bootstrap().starts_with("127.0.0.1:") || b.bootstrap().starts_with("localhost:"),
            "{}",
            b.bootstrap()
        );
        b.create_topic("t", 3).unwrap();
    }
}
