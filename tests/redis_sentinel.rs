//! Redis Sentinel failover under load: a primary, two replicas and three
//! sentinels spawned by the test; two hubs reach the primary through the
//! sentinels, with Redis history that acknowledges an append once a
//! replica has it (`RedisHistory::wait_for_replicas`). The primary is
//! killed (SIGKILL) while a node publishes 100 events/s: the hubs report
//! Down, then Up within the failover time plus 2 s, and a client that
//! reads through it all and then reconnects to the other node with its
//! `Last-Event-ID` has every acknowledged event exactly once. (Without the
//! wait, an event acknowledged in the last moments before the kill may not
//! have reached the replica: a run on a loaded machine lost five.)

#![cfg(all(feature = "axum", feature = "redis"))]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
use sse_cluster::history::{redis::RedisHistory, Retention};
use sse_cluster::{Event, Hub, Target};
use support::failover::{client_behind_balancer, expect_follow, Load};
use support::redis_sentinel::{SentinelSet, MASTER};
use support::redis_server::{resp_command, unique_prefix, RedisServer};
use support::Node;

async fn node(set: &SentinelSet, prefix: &str, id: &str) -> Node {
    let config = RedisConfig::sentinel(set.sentinel_urls(), MASTER)
        .prefix(prefix)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .liveness(Duration::from_millis(200), Duration::from_millis(500));
    let mut config = config;
    config.connect_timeout = Duration::from_millis(500);
    let broker = RedisBroker::new(config).expect("config");
    let history = Arc::new(
        RedisHistory::new(broker.clone(), Retention::default())
            .wait_for_replicas(1, Duration::from_millis(500)),
    );
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
    let (lb, client) = client_behind_balancer(a.addr, b.addr, "t").await;

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
    let promoted = set.primary_port();
    assert!(
        set.replicas.iter().any(|r| Some(r.port()) == promoted),
        "a replica was promoted: {promoted:?}"
    );
    load.wait_for_acks(50).await;
    // The client reconnects through the balancer (to the other node) with
    // its last id.
    load.finish_and_resume(&lb, "t").await;
}

/// With `wait_for_replicas`, an append no replica confirms in time is
/// refused (transient), so it is never acknowledged; once the replica
/// answers again, publishes are acknowledged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_no_replica_confirms_is_not_acknowledged() {
    let test = "an_append_no_replica_confirms_is_not_acknowledged";
    let Some(primary) = RedisServer::start(test) else {
        return;
    };
    let port = primary.port().to_string();
    let Some(replica) = RedisServer::start_with(test, &["--replicaof", "127.0.0.1", &port]) else {
        return;
    };
    let synced = Instant::now() + Duration::from_secs(10);
    while !resp_command(&replica.addr(), &[b"INFO", b"replication"])
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < synced, "the replica did not sync");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let broker = RedisBroker::new(RedisConfig::new(primary.url()).prefix(unique_prefix(test)))
        .expect("config");
    let history = RedisHistory::new(broker.clone(), Retention::default())
        .wait_for_replicas(1, Duration::from_millis(200));
    let hub = Hub::builder()
        .broker(broker)
        .history(Arc::new(history))
        .require_broker(Duration::from_secs(5))
        .build()
        .await
        .expect("hub");
    let publish = |data: &'static str| hub.publish(Target::topic("t"), Event::new().data(data));
    publish("replicated").await.expect("a replica has it");

    replica.signal("STOP");
    let refused = publish("unconfirmed")
        .await
        .expect_err("no replica confirms it");
    assert!(refused.is_transient(), "{refused}");
    assert!(refused.to_string().contains("0 of 1 replicas"), "{refused}");

    replica.signal("CONT");
    let again = Instant::now() + Duration::from_secs(10);
    while publish("replicated again").await.is_err() {
        assert!(Instant::now() < again, "never acknowledged again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
