//! The settings of a [`KafkaBroker`](super::KafkaBroker).

use std::time::Duration;

use crate::broker::BrokerError;

/// Settings of a [`KafkaBroker`](super::KafkaBroker).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: Vec<String>,
    /// The topic every node of the cluster shares. Default: `sse-cluster`.
    pub topic: String,
    /// Partitions of the topic when this crate creates it. Default: 6.
    /// Changing the count of an existing topic moves channels to other
    /// partitions: it changes the history's epoch (clients resuming get
    /// the reset event).
    pub partitions: i32,
    /// Replication factor of the topic when this crate creates it.
    /// Default: 1.
    pub replication_factor: i16,
    /// How long a request (produce, list offsets, metadata) may take before
    /// the connection is considered dead. Default: 2 s.
    pub request_timeout: Duration,
    /// How long a connection attempt may take. Default: 2 s.
    pub connect_timeout: Duration,
    /// How long a fetch waits on the broker for new records (the long
    /// poll). A fetch without an answer within this plus `request_timeout`
    /// means a dead connection. Kafka answers a fetch as soon as a record
    /// is there; a broker that answers only when the wait ends (tansu 0.6)
    /// delays live events by up to this. Default: 500 ms.
    pub fetch_wait: Duration,
    /// Most bytes one fetch asks for. Default: 1 MiB (a record larger
    /// than this is still returned whole by Kafka).
    pub fetch_max_bytes: i32,
    /// First reconnect delay; doubles up to `backoff_max`. Default: 50 ms.
    pub backoff_min: Duration,
    /// Longest reconnect delay. Default: 5 s.
    pub backoff_max: Duration,
}

/// The default [`KafkaConfig::topic`].
pub const DEFAULT_TOPIC: &str = "sse-cluster";

impl KafkaConfig {
    /// Defaults for the cluster at `brokers`: `kafka://host:port[,host:port…]`
    /// or `host:port[,host:port…]`.
    pub fn new(brokers: impl AsRef<str>) -> Self {
        let list = brokers.as_ref();
        let list = list.strip_prefix("kafka://").unwrap_or(list);
        Self {
            brokers: list
                .trim_end_matches('/')
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(str::to_owned)
                .collect(),
            topic: DEFAULT_TOPIC.into(),
            partitions: 6,
            replication_factor: 1,
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            fetch_wait: Duration::from_millis(500),
            fetch_max_bytes: 1 << 20,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
        }
    }

    /// Sets [`KafkaConfig::topic`].
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Sets [`KafkaConfig::partitions`] (at least 1).
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Sets [`KafkaConfig::replication_factor`] (at least 1).
    pub fn replication_factor(mut self, factor: i16) -> Self {
        self.replication_factor = factor.max(1);
        self
    }

    /// Sets the request timeout and the fetch wait (see their fields).
    pub fn liveness(mut self, request_timeout: Duration, fetch_wait: Duration) -> Self {
        self.request_timeout = request_timeout;
        self.fetch_wait = fetch_wait;
        self
    }

    /// Sets the reconnect backoff bounds.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// The configuration with what would break the tasks clamped, or why
    /// it is invalid.
    pub(super) fn checked(mut self) -> Result<Self, BrokerError> {
        if self.brokers.is_empty() {
            return Err(BrokerError::Config("no Kafka broker given".into()));
        }
        if let Some(bad) = self.brokers.iter().find(|b| !valid_address(b)) {
            return Err(BrokerError::Config(format!(
                "Kafka broker {bad:?}: expected host:port"
            )));
        }
        if !valid_topic(&self.topic) {
            return Err(BrokerError::Config(format!(
                "invalid Kafka topic name {:?} (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')",
                self.topic
            )));
        }
        self.partitions = self.partitions.max(1);
        self.replication_factor = self.replication_factor.max(1);
        self.request_timeout = self.request_timeout.max(Duration::from_millis(10));
        self.connect_timeout = self.connect_timeout.max(Duration::from_millis(10));
        self.fetch_wait = self
            .fetch_wait
            .clamp(Duration::from_millis(1), Duration::from_secs(60));
        self.fetch_max_bytes = self.fetch_max_bytes.max(1024);
        self.backoff_min = self.backoff_min.max(Duration::from_millis(1));
        self.backoff_max = self.backoff_max.max(self.backoff_min);
        Ok(self)
    }
}

fn valid_address(address: &str) -> bool {
    match address.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// Kafka's rule for topic names.
fn valid_topic(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_lists_are_read() {
        let config = KafkaConfig::new("kafka://k1:9092,k2:9093")
            .checked()
            .unwrap();
        assert_eq!(config.brokers, ["k1:9092", "k2:9093"]);
        assert_eq!(config.topic, DEFAULT_TOPIC);
        let config = KafkaConfig::new("127.0.0.1:9092").checked().unwrap();
        assert_eq!(config.brokers, ["127.0.0.1:9092"]);
    }

    #[test]
    fn bad_configurations_are_refused() {
        for bad in [
            KafkaConfig::new("kafka://"),
            KafkaConfig::new("k1"),
            KafkaConfig::new("k1:0"),
            KafkaConfig::new("k1:9092").topic("a b"),
            KafkaConfig::new("k1:9092").topic(".."),
            KafkaConfig::new("k1:9092").topic("x".repeat(250)),
        ] {
            let err = bad.checked().unwrap_err();
            assert!(matches!(err, BrokerError::Config(_)), "{err}");
            assert!(!err.is_transient());
        }
    }
}
