//! A NATS cluster: three `nats-server`s joined by routes on loopback, with
//! JetStream history replicated over all three. The server node A is
//! connected to is killed (SIGKILL) while node B publishes 100 events/s:
//! A's client moves to another server (it learned them from the cluster's
//! gossip), its subscriptions are restored, it reports Down then Up within
//! 2 s, and a client that reconnects to B with its `Last-Event-ID` has
//! every acknowledged event once.

#![cfg(all(feature = "axum", feature = "nats"))]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sse_cluster::broker::nats::{NatsBroker, NatsConfig};
use sse_cluster::history::jetstream::{JetStreamConfig, JetStreamHistory, Storage};
use sse_cluster::history::Retention;
use sse_cluster::Hub;
use support::failover::{expect_follow, Load};
use support::nats_server::{unique_prefix, NatsCluster};
use support::{Node, SseClient};

async fn node(url: &str, prefix: &str, stream: &str, id: &str) -> Node {
    let mut config = NatsConfig::new(url)
        .prefix(prefix)
        .ping_interval(Duration::from_millis(200));
    config.connect_timeout = Duration::from_millis(500);
    let broker = NatsBroker::new(config).expect("broker");
    let history = Arc::new(
        JetStreamHistory::new(
            broker.clone(),
            JetStreamConfig::new(Retention::default())
                .stream(stream)
                .storage(Storage::File)
                .replicas(3),
        )
        .expect("history"),
    );
    let hub = Hub::builder()
        .node_id(id)
        .broker(broker)
        .history(history.clone())
        .require_broker(Duration::from_secs(10))
        .build()
        .await
        .expect("hub");
    // The replicated stream needs the cluster's JetStream to have a leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(err) = history.ensure_stream().await {
        assert!(Instant::now() < deadline, "no replicated stream: {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Node::serve(hub).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_a_node_uses_is_killed_under_load() {
    let Some(mut cluster) = tokio::task::block_in_place(NatsCluster::start) else {
        return;
    };
    let prefix = unique_prefix();
    let stream = format!("S{}", fastrand::u32(..));
    let a = node(&cluster.servers[0].url(), &prefix, &stream, "a").await;
    let b = node(&cluster.servers[1].url(), &prefix, &stream, "b").await;
    let client = SseClient::open(a.addr, "/events?topic=t", &[]).await;
    assert_eq!(client.status, 200);
    let load = Load::start(b.hub.clone(), "t", client);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.servers[0].kill());
    // Nothing to wait for on the servers' side: two of three stay up.
    expect_follow(&a.hub, &b.hub, killed, || true).await;
    // The replicated stream may need a new leader before appends succeed.
    load.wait_for_acks(50).await;
    load.finish_and_resume(b.addr, "t").await;
}
