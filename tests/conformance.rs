//! The backend conformance suite (`sse_cluster::testkit`) against every
//! backend of the crate: memory, Redis, Redis Cluster, NATS, JetStream,
//! Postgres and Kafka.
//! Each backend is one test; the scenarios are written once, in the
//! testkit, and a failure names the backend and the scenario.
//!
//! Redis, NATS, Postgres and Kafka (tansu) run on servers these tests start on free loopback ports,
//! so that the outage and restart scenarios can stop, kill and restart them.
//! Without a server binary a test is skipped (`SKIPPED:` on stderr), unless
//! `CI` is set: then it fails.

#![cfg(all(feature = "testkit", feature = "axum"))]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sse_cluster::broker::memory::{MemoryBroker, MemoryBus};
use sse_cluster::broker::BrokerError;
use sse_cluster::history::memory::MemoryHistory;
use sse_cluster::history::Retention;
use sse_cluster::testkit::{self, Backend, Capabilities, NodeParts, Outcome, Scenario};

/// Kills (`down`) or starts again (restarting it if it runs) a server a
/// backend of this file spawned, off the async worker.
#[cfg(any(
    feature = "redis",
    feature = "nats",
    feature = "postgres",
    feature = "kafka"
))]
fn stop_or_start<S>(server: &Mutex<S>, down: bool)
where
    S: std::ops::DerefMut<Target = support::server::ServerProcess>,
{
    let mut server = server.lock().expect("lock");
    tokio::task::block_in_place(|| {
        if down {
            server.kill()
        } else {
            server.restart()
        }
    });
}

/// Runs the whole suite and checks that exactly `skipped` were skipped.
async fn conformance(backend: &dyn Backend, skipped: &[Scenario]) {
    let report = testkit::run_all(backend).await;
    eprintln!("{report}");
    let was_skipped: Vec<Scenario> = report.skipped().map(|(s, _)| s).collect();
    assert_eq!(was_skipped, skipped, "{report}");
    assert_eq!(
        report.passed().count() + skipped.len(),
        Scenario::ALL.len(),
        "{report}"
    );
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

/// Each namespace's bus and its history store, once asked for.
type Namespaces = HashMap<String, (MemoryBus, Option<Arc<MemoryHistory>>)>;

/// One `MemoryBus` and `MemoryHistory` per namespace; outages simulated on
/// every broker handed out.
#[derive(Default)]
struct Memory {
    namespaces: Mutex<Namespaces>,
    brokers: Mutex<Vec<Arc<MemoryBroker>>>,
}

#[async_trait]
impl Backend for Memory {
    fn name(&self) -> &str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .history(true)
            .idempotency(true)
            .outage(true)
            .restart(true)
    }

    async fn node(
        &self,
        namespace: &str,
        history: Option<Retention>,
    ) -> Result<NodeParts, BrokerError> {
        let mut namespaces = self.namespaces.lock().expect("lock");
        let (bus, store) = namespaces.entry(namespace.to_owned()).or_default();
        let broker = bus.broker();
        self.brokers.lock().expect("lock").push(broker.clone());
        let mut parts = NodeParts::new(broker);
        if let Some(retention) = history {
            let store = store.get_or_insert_with(|| Arc::new(MemoryHistory::new(bus, retention)));
            parts = parts.with_history(store.clone());
        }
        Ok(parts)
    }

    async fn outage(&self, down: bool) {
        for broker in self.brokers.lock().expect("lock").iter() {
            broker.set_connected(!down);
        }
    }

    async fn restart(&self) {
        self.outage(true).await;
        self.outage(false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_passes_the_conformance_suite() {
    conformance(&Memory::default(), &[]).await;
}

/// The suite fails, naming backend and scenario, when a backend breaks a
/// promise: here every hub is handed the same broker instance's bus but a
/// namespace of its own, so nothing crosses nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_backend_fails_naming_backend_and_scenario() {
    struct Islands;
    #[async_trait]
    impl Backend for Islands {
        fn name(&self) -> &str {
            "islands"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::new()
        }
        async fn node(&self, _: &str, _: Option<Retention>) -> Result<NodeParts, BrokerError> {
            // A new bus per node: nodes never hear each other.
            Ok(NodeParts::new(MemoryBus::new().broker()))
        }
    }
    let failure = tokio::spawn(async { testkit::run(&Islands, Scenario::Delivery).await })
        .await
        .expect_err("the delivery scenario must fail");
    let message = failure.into_panic();
    let message = message
        .downcast_ref::<String>()
        .expect("a String panic message");
    assert!(
        message.contains("\"islands\"") && message.contains("scenario delivery"),
        "{message}"
    );
    assert_eq!(
        testkit::run(&Islands, Scenario::Outage).await,
        Outcome::Skipped("the backend cannot take its server away")
    );
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

#[cfg(feature = "redis")]
mod redis {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_trait::async_trait;
    use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
    use sse_cluster::broker::BrokerError;
    use sse_cluster::history::redis::RedisHistory;
    use sse_cluster::history::Retention;
    use sse_cluster::testkit::{Backend, Capabilities, NodeParts, Scenario};

    use super::conformance;
    use crate::support::redis_cluster::{self, RedisCluster};
    use crate::support::redis_server::RedisServer;

    /// Quick failure detection and reconnects, for the outage scenarios.
    fn fast_config(config: RedisConfig) -> RedisConfig {
        let mut config = config
            .backoff(Duration::from_millis(20), Duration::from_millis(200))
            .liveness(Duration::from_millis(200), Duration::from_millis(500));
        config.connect_timeout = Duration::from_millis(500);
        config
    }

    fn node(config: RedisConfig, history: Option<Retention>) -> Result<NodeParts, BrokerError> {
        let broker = RedisBroker::new(config)?;
        let mut parts = NodeParts::new(broker.clone());
        if let Some(retention) = history {
            parts = parts.with_history(Arc::new(RedisHistory::new(broker, retention)));
        }
        Ok(parts)
    }

    /// A `redis-server` of its own; namespaces are channel prefixes.
    struct Redis {
        server: Mutex<RedisServer>,
        url: String,
    }

    #[async_trait]
    impl Backend for Redis {
        fn name(&self) -> &str {
            "redis"
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities::new()
                .history(true)
                .idempotency(true)
                .outage(true)
                .restart(true)
        }

        async fn node(
            &self,
            namespace: &str,
            history: Option<Retention>,
        ) -> Result<NodeParts, BrokerError> {
            let config = RedisConfig::new(&self.url).prefix(format!("{namespace}:"));
            node(fast_config(config), history)
        }

        async fn outage(&self, down: bool) {
            super::stop_or_start(&self.server, down);
        }

        async fn restart(&self) {
            super::stop_or_start(&self.server, false);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_passes_the_conformance_suite() {
        let Some(server) = RedisServer::start("redis_passes_the_conformance_suite") else {
            return;
        };
        let url = server.url();
        let backend = Redis {
            server: Mutex::new(server),
            url,
        };
        conformance(&backend, &[]).await;
    }

    /// A three-shard cluster (sharded pub/sub, Streams history by hash
    /// tag). Stopping or killing a whole cluster and forming it again is
    /// more than a test fixture should do: no outage, no restart.
    struct Cluster {
        cluster: RedisCluster,
    }

    #[async_trait]
    impl Backend for Cluster {
        fn name(&self) -> &str {
            "redis-cluster"
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities::new().history(true).idempotency(true)
        }

        async fn node(
            &self,
            namespace: &str,
            history: Option<Retention>,
        ) -> Result<NodeParts, BrokerError> {
            let config = RedisConfig::cluster(self.cluster.urls()).prefix(format!("{namespace}:"));
            node(config, history)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_cluster_passes_the_conformance_suite() {
        let Some(cluster) = redis_cluster::start("redis_cluster_passes_the_conformance_suite")
        else {
            return;
        };
        conformance(&Cluster { cluster }, &[Scenario::Outage, Scenario::Restart]).await;
    }
}

// ---------------------------------------------------------------------------
// NATS and JetStream
// ---------------------------------------------------------------------------

#[cfg(feature = "nats")]
mod nats {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_trait::async_trait;
    use sse_cluster::broker::nats::{NatsBroker, NatsConfig};
    use sse_cluster::broker::BrokerError;
    use sse_cluster::history::jetstream::{JetStreamConfig, JetStreamHistory, Storage};
    use sse_cluster::history::Retention;
    use sse_cluster::testkit::{Backend, Capabilities, NodeParts, Scenario};

    use super::conformance;
    use crate::support::nats_server::NatsServer;

    /// A `nats-server` of its own (with JetStream when `jetstream`);
    /// namespaces are subject prefixes, and with JetStream the stream name.
    struct Nats {
        server: Mutex<NatsServer>,
        url: String,
        jetstream: bool,
    }

    impl Nats {
        fn start(jetstream: bool) -> Option<Nats> {
            let server = NatsServer::start(jetstream)?;
            Some(Nats {
                url: server.url(),
                server: Mutex::new(server),
                jetstream,
            })
        }
    }

    #[async_trait]
    impl Backend for Nats {
        fn name(&self) -> &str {
            if self.jetstream {
                "jetstream"
            } else {
                "nats"
            }
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities::new()
                .history(self.jetstream)
                .idempotency(self.jetstream)
                .outage(true)
                .restart(true)
        }

        async fn node(
            &self,
            namespace: &str,
            history: Option<Retention>,
        ) -> Result<NodeParts, BrokerError> {
            // Quick dead-connection detection, for the outage scenarios.
            let mut config = NatsConfig::new(&self.url)
                .prefix(namespace)
                .ping_interval(Duration::from_millis(200));
            config.connect_timeout = Duration::from_millis(500);
            let broker = NatsBroker::new(config)?;
            let mut parts = NodeParts::new(broker.clone());
            if let Some(retention) = history {
                assert!(self.jetstream, "history asked of core NATS");
                let config = JetStreamConfig::new(retention)
                    .stream(format!("{namespace}_history"))
                    .storage(Storage::Memory);
                parts = parts.with_history(Arc::new(JetStreamHistory::new(broker, config)?));
            }
            Ok(parts)
        }

        async fn outage(&self, down: bool) {
            super::stop_or_start(&self.server, down);
        }

        async fn restart(&self) {
            super::stop_or_start(&self.server, false);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nats_passes_the_conformance_suite() {
        let Some(backend) = Nats::start(false) else {
            return;
        };
        let no_history = [
            Scenario::Resume,
            Scenario::ResumeToken,
            Scenario::ResetBeyondRetention,
            Scenario::Idempotency,
        ];
        conformance(&backend, &no_history).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jetstream_passes_the_conformance_suite() {
        let Some(backend) = Nats::start(true) else {
            return;
        };
        conformance(&backend, &[]).await;
    }
}

// ---------------------------------------------------------------------------
// Postgres
// ---------------------------------------------------------------------------

#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_trait::async_trait;
    use sse_cluster::broker::postgres::{PostgresBroker, PostgresConfig};
    use sse_cluster::broker::BrokerError;
    use sse_cluster::history::postgres::PostgresHistory;
    use sse_cluster::history::Retention;
    use sse_cluster::testkit::{Backend, Capabilities, NodeParts, Scenario};

    use super::conformance;
    use crate::support::postgres_server::PostgresServer;

    /// A Postgres cluster of its own (so that the outage and restart
    /// scenarios can kill it); namespaces are channel and table prefixes.
    struct Postgres {
        server: Mutex<PostgresServer>,
        url: String,
        history: bool,
    }

    impl Postgres {
        fn start(test: &str, history: bool) -> Option<Postgres> {
            let server = PostgresServer::start(test)?;
            Some(Postgres {
                url: server.url(),
                server: Mutex::new(server),
                history,
            })
        }
    }

    /// A namespace (`tk1a2b3c4d-reset-beyond-retention`) as a prefix: its
    /// random head is what makes it unique, and prefixes are short.
    fn prefix(namespace: &str) -> String {
        let head: String = namespace
            .chars()
            .take(16)
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("{head}_")
    }

    #[async_trait]
    impl Backend for Postgres {
        fn name(&self) -> &str {
            if self.history {
                "postgres+history"
            } else {
                "postgres"
            }
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities::new()
                .history(self.history)
                .idempotency(self.history)
                .outage(true)
                .restart(true)
        }

        async fn node(
            &self,
            namespace: &str,
            history: Option<Retention>,
        ) -> Result<NodeParts, BrokerError> {
            // Quick failure detection and reconnects, for the outage scenarios.
            let mut config = PostgresConfig::new(&self.url)
                .prefix(prefix(namespace))
                .backoff(Duration::from_millis(20), Duration::from_millis(200))
                .liveness(Duration::from_millis(200), Duration::from_millis(500));
            config.connect_timeout = Duration::from_millis(500);
            let broker = PostgresBroker::new(config)?;
            let mut parts = NodeParts::new(broker.clone());
            if let Some(retention) = history {
                assert!(self.history, "history asked of the bus-only backend");
                parts = parts.with_history(Arc::new(PostgresHistory::new(broker, retention)));
            }
            Ok(parts)
        }

        async fn outage(&self, down: bool) {
            super::stop_or_start(&self.server, down);
        }

        async fn restart(&self) {
            super::stop_or_start(&self.server, false);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_passes_the_conformance_suite() {
        let Some(backend) = Postgres::start("postgres_passes_the_conformance_suite", false) else {
            return;
        };
        let no_history = [
            Scenario::Resume,
            Scenario::ResumeToken,
            Scenario::ResetBeyondRetention,
            Scenario::Idempotency,
        ];
        conformance(&backend, &no_history).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_with_history_passes_the_conformance_suite() {
        let Some(backend) =
            Postgres::start("postgres_with_history_passes_the_conformance_suite", true)
        else {
            return;
        };
        conformance(&backend, &[]).await;
    }
}

// ---------------------------------------------------------------------------
// Kafka
// ---------------------------------------------------------------------------

#[cfg(feature = "kafka")]
mod kafka {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_trait::async_trait;
    use sse_cluster::broker::kafka::{KafkaBroker, KafkaConfig};
    use sse_cluster::broker::BrokerError;
    use sse_cluster::history::kafka::KafkaHistory;
    use sse_cluster::history::Retention;
    use sse_cluster::testkit::{Backend, Capabilities, NodeParts, Scenario};

    use super::conformance;
    use crate::support::kafka_server::KafkaServer;

    /// A tansu broker of its own (so that the outage and restart scenarios
    /// can kill it); namespaces are topics. Every node reads the whole
    /// topic: no interest routing. The log is the history; it keeps no
    /// idempotency keys.
    struct Kafka {
        server: Mutex<KafkaServer>,
        url: String,
        history: bool,
    }

    impl Kafka {
        fn start(test: &str, history: bool) -> Option<Kafka> {
            let server = KafkaServer::start(test)?;
            Some(Kafka {
                url: server.url(),
                server: Mutex::new(server),
                history,
            })
        }
    }

    #[async_trait]
    impl Backend for Kafka {
        fn name(&self) -> &str {
            if self.history {
                "kafka+history"
            } else {
                "kafka"
            }
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities::new()
                .interest_routing(false)
                .history(self.history)
                .outage(true)
                .restart(true)
        }

        async fn node(
            &self,
            namespace: &str,
            history: Option<Retention>,
        ) -> Result<NodeParts, BrokerError> {
            // Quick failure detection and reconnects, for the outage scenarios.
            let mut config = KafkaConfig::new(&self.url)
                .topic(namespace)
                .partitions(3)
                .backoff(Duration::from_millis(20), Duration::from_millis(200))
                .liveness(Duration::from_millis(2000), Duration::from_millis(100));
            config.connect_timeout = Duration::from_millis(500);
            let broker = KafkaBroker::new(config)?;
            let mut parts = NodeParts::new(broker.clone());
            if let Some(retention) = history {
                assert!(self.history, "history asked of the bus-only backend");
                parts = parts.with_history(Arc::new(KafkaHistory::new(broker, retention)));
            }
            Ok(parts)
        }

        async fn outage(&self, down: bool) {
            super::stop_or_start(&self.server, down);
        }

        async fn restart(&self) {
            super::stop_or_start(&self.server, false);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_passes_the_conformance_suite() {
        let Some(backend) = Kafka::start("kafka_passes_the_conformance_suite", false) else {
            return;
        };
        let no_history = [
            Scenario::InterestRouting,
            Scenario::Resume,
            Scenario::ResumeToken,
            Scenario::ResetBeyondRetention,
            Scenario::Idempotency,
        ];
        conformance(&backend, &no_history).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_with_history_passes_the_conformance_suite() {
        let Some(backend) = Kafka::start("kafka_with_history_passes_the_conformance_suite", true)
        else {
            return;
        };
        conformance(
            &backend,
            &[Scenario::InterestRouting, Scenario::Idempotency],
        )
        .await;
    }
}
