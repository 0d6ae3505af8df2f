//! Redis Sentinel failover under load: a primary, a replica and three
//! sentinels spawned by the test; two hubs reach the primary through the
//! sentinels, with Redis history. The primary is killed (SIGKILL) while a
//! node publishes 100 events/s: the hubs report Down, then Up within the
//! failover time plus 2 s, and a client that reads through it all and
//! then reconnects to the other node with its `Last-Event-ID` has every
//! acknowledged event exactly once.

#![cfg(all(feature = "axum", feature = "redis"))]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
use sse_cluster::history::{redis::RedisHistory, Retention};
use sse_cluster::Hub;
use support::failover::{expect_follow, Load};
use support::redis_sentinel::{SentinelSet, MASTER};
use support::redis_server::unique_prefix;
use support::{Node, SseClient};

async fn node(set: &SentinelSet, prefix: &str, id: &str) -> Node {
    let config = RedisConfig::sentinel(set.sentinel_urls(), MASTER)
        .prefix(prefix)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .liveness(Duration::from_millis(200), Duration::from_millis(500));
    let mut config = config;
    config.connect_timeout = Duration::from_millis(500);
    let broker = RedisBroker::new(config).expect("config");
    let history = Arc::new(RedisHistory::new(broker.clone(), Retention::default()));
    let hub = Hub::builder()
        .node_id(id)
        .broker(broker)
        .history(history)
        .require_broker(Duration::from_secs(5))
        .build()
        .await
        .expect("a hub through the sentinels");
    Node::serve(hub).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_is_followed_without_loss() {
    let test = "a_primary_killed_under_load_is_followed_without_loss";
    let Some(mut set) = tokio::task::block_in_place(|| SentinelSet::start(test)) else {
        return;
    };
    let prefix = unique_prefix(test);
    let a = node(&set, &prefix, "a").await;
    let b = node(&set, &prefix, "b").await;
    let client = SseClient::open(a.addr, "/events?topic=t", &[]).await;
    assert_eq!(client.status, 200);

    let load = Load::start(b.hub.clone(), "t", client);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = set.primary.port();
    let killed = Instant::now();
    tokio::task::block_in_place(|| set.primary.kill());
    // The sentinels promote the replica, and both hubs follow.
    expect_follow(&a.hub, &b.hub, killed, || {
        set.primary_port().is_some_and(|p| p != old)
    })
    .await;
    assert_eq!(set.primary_port(), Some(set.replica.port()));
    load.wait_for_acks(50).await;
    // The client reconnects, to the other node, with its last id.
    load.finish_and_resume(b.addr, "t").await;
}
