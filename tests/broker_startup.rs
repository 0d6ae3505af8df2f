//! A broker that cannot reach its server at start-up: by default the hub
//! starts degraded (status `Down`, tested in tests/redis.rs and
//! tests/nats.rs); with `HubBuilder::require_broker` the build fails with
//! `HubError::BrokerUnreachable`, which the app sees without any tracing
//! subscriber. A reachable server passes the same check.

use std::sync::Arc;
use std::time::Duration;

use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::{BrokerStatus, Hub, HubError};

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

fn expect_unreachable(result: Result<Hub, HubError>, waited: Duration) {
    match result {
        Err(HubError::BrokerUnreachable {
            waited: w,
            status: BrokerStatus::Down,
        }) => {
            assert_eq!(w, waited);
            let text = result_text(w);
            assert!(text.contains("did not reach its server"), "{text}");
        }
        Err(other) => panic!("expected BrokerUnreachable, got {other}"),
        Ok(_) => panic!("a hub with an unreachable broker was built"),
    }
}

fn result_text(waited: Duration) -> String {
    HubError::BrokerUnreachable {
        waited,
        status: BrokerStatus::Down,
    }
    .to_string()
}

#[tokio::test]
async fn the_memory_bus_is_up_at_once() {
    let hub = Hub::builder()
        .broker(MemoryBus::new().broker())
        .require_broker(Duration::from_millis(100))
        .build()
        .await
        .expect("memory bus");
    assert_eq!(hub.broker_status(), BrokerStatus::Up);
    hub.shutdown().await;
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use sse_cluster::broker::redis::{RedisBroker, RedisConfig};

    fn broker(url: &str) -> Arc<dyn sse_cluster::Broker> {
        let mut config = RedisConfig::new(url).prefix(format!("startup{}:", fastrand::u32(..)));
        config.connect_timeout = Duration::from_millis(200);
        RedisBroker::new(config).expect("config")
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_the_build_when_required() {
        let waited = Duration::from_millis(600);
        let url = format!("redis://127.0.0.1:{}", closed_port());
        let result = Hub::builder()
            .broker(broker(&url))
            .require_broker(waited)
            .build()
            .await;
        expect_unreachable(result, waited);
    }

    #[tokio::test]
    async fn an_unreachable_redis_starts_degraded_by_default() {
        let url = format!("redis://127.0.0.1:{}", closed_port());
        let hub = Hub::builder()
            .broker(broker(&url))
            .build()
            .await
            .expect("degraded start");
        assert_eq!(hub.broker_status(), BrokerStatus::Down);
        assert!(!hub.is_healthy());
        hub.shutdown().await;
    }

    /// The machine's Redis (CI starts it): the check passes.
    #[tokio::test]
    async fn a_reachable_redis_passes_the_check() {
        let hub = Hub::builder()
            .broker(broker("redis://127.0.0.1:6379"))
            .require_broker(Duration::from_secs(5))
            .build()
            .await
            .expect("Redis on 127.0.0.1:6379 (CI starts it)");
        assert_eq!(hub.broker_status(), BrokerStatus::Up);
        hub.shutdown().await;
    }
}

#[cfg(feature = "nats")]
mod nats {
    use super::*;
    use sse_cluster::broker::nats::{NatsBroker, NatsConfig};

    fn broker(url: &str) -> Arc<dyn sse_cluster::Broker> {
        let config = NatsConfig::new(url).prefix(format!("startup{}", fastrand::u32(..)));
        NatsBroker::new(config).expect("config")
    }

    #[tokio::test]
    async fn an_unreachable_nats_fails_the_build_when_required() {
        let waited = Duration::from_millis(600);
        let url = format!("nats://127.0.0.1:{}", closed_port());
        let result = Hub::builder()
            .broker(broker(&url))
            .require_broker(waited)
            .build()
            .await;
        expect_unreachable(result, waited);
    }

    /// The machine's nats-server (CI starts it): the check passes.
    #[tokio::test]
    async fn a_reachable_nats_passes_the_check() {
        let hub = Hub::builder()
            .broker(broker("nats://127.0.0.1:4222"))
            .require_broker(Duration::from_secs(5))
            .build()
            .await
            .expect("nats-server on 127.0.0.1:4222 (CI starts it)");
        assert_eq!(hub.broker_status(), BrokerStatus::Up);
        hub.shutdown().await;
    }
}
