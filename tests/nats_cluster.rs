//! A NATS cluster: three `nats-server`s joined by routes on loopback. The
//! server node A is connected to is killed (SIGKILL) while node B, on
//! another server, publishes 100 events/s: A's client moves to another
//! server (it learned them from the cluster's gossip), A reports Down then
//! Up within 2 s, its subscriptions are restored: the stream gets the gap
//! event, then every event B publishes afterwards, once, in order.
//!
//! Not covered here: JetStream history replicated over the cluster. After
//! the store's reads moved to the stream leader it kept every acknowledged
//! event in 10 of 10 runs on this machine, but a CI run still lost the 10
//! events acknowledged around the kill; that case is open (see the
//! README's operations section).
//!
//! `SSE_CLUSTER_NATS_SERVER` names another `nats-server` binary to run.

#![cfg(all(feature = "axum", feature = "nats"))]

mod support;

use std::time::{Duration, Instant};

use sse_cluster::broker::nats::{NatsBroker, NatsConfig};
use sse_cluster::{Event, Hub, Target};
use support::failover::expect_follow;
use support::nats_server::{unique_prefix, NatsCluster};
use support::{Node, SseClient, WAIT};

async fn node(url: &str, prefix: &str, id: &str) -> Node {
    let mut config = NatsConfig::new(url)
        .prefix(prefix)
        .ping_interval(Duration::from_millis(200));
    config.connect_timeout = Duration::from_millis(500);
    let broker = NatsBroker::new(config).expect("broker");
    let hub = Hub::builder()
        .node_id(id)
        .broker(broker)
        .require_broker(Duration::from_secs(10))
        .build()
        .await
        .expect("hub");
    Node::serve(hub).await
}

async fn publish(hub: &Hub, data: String) -> bool {
    hub.publish(Target::topic("t"), Event::new().data(data))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_a_node_uses_is_killed_under_load() {
    let Some(mut cluster) = tokio::task::block_in_place(NatsCluster::start) else {
        return;
    };
    let prefix = unique_prefix();
    let a = node(&cluster.servers[1].url(), &prefix, "a").await;
    let b = node(&cluster.servers[0].url(), &prefix, "b").await;
    let mut client = SseClient::connect(a.addr, "/events?topic=t").await;

    // Load before and during the outage (what is published while A is away
    // is lost without history: it only has to come back).
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for n in 0..100 {
        tick.tick().await;
        assert!(publish(&b.hub, format!("before {n}")).await, "publish {n}");
    }
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.servers[1].kill());
    expect_follow(&a.hub, &b.hub, killed, || true).await;

    // Everything published from now on reaches A's stream, once, in order,
    // after the gap event that says the bus was away.
    let mut acked = Vec::new();
    for n in 0..100 {
        tick.tick().await;
        if publish(&b.hub, format!("after {n}")).await {
            acked.push(format!("after {n}"));
        }
    }
    assert_eq!(
        acked.len(),
        100,
        "B's server stayed up: every publish is acknowledged"
    );
    let mut gap = false;
    let mut after = Vec::new();
    while after.len() < acked.len() {
        let event = tokio::time::timeout(WAIT, client.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of the events after Up arrived", after.len()))
            .expect("the stream stays open");
        if event.event == "sse-cluster.gap" {
            gap = true;
        } else if event.data.starts_with("after ") {
            after.push(event.data);
        }
    }
    assert!(gap, "the stream was told about the outage");
    assert_eq!(after, acked);
    client.expect_quiet().await;
}
