//! Idempotency keys and resume tokens where no store deduplicates or
//! replays (the node-local window, a hub without history), and across the
//! two tiers (a publisher and the gateways sharing one store). The stores'
//! own behaviour is in the conformance suite and `tests/resume.rs`,
//! `tests/jetstream.rs`.

#![cfg(feature = "axum")]

mod support;

use std::sync::Arc;

use hyper::StatusCode;
use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::history::memory::MemoryHistory;
use sse_cluster::history::Retention;
use sse_cluster::{
    Event, Hub, PublishError, Publisher, ResumeTokenError, StreamConfig, Subscription, Target,
};
use support::resume::{open, publish_with_key, read_n};
use support::{cluster, get, stat, Node, SseClient};

/// Without history the window is each node's own: a repeat through the
/// same node is answered with the first receipt and delivers nothing, on
/// any node; a repeat through another node goes out again (what the docs
/// promise: once per node, not across nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_history_a_key_is_deduplicated_per_node() {
    let (_bus, nodes) = cluster(2).await;
    let mut on_0 = open(&nodes[0], "topic=t", None).await;
    let mut on_1 = open(&nodes[1], "topic=t", None).await;
    let (status, first) = publish_with_key(&nodes[0], "topic=t", "t:1", b"k").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(first["duplicate"], false);
    assert!(first["position"].is_null(), "no history: {first}");
    let (status, again) = publish_with_key(&nodes[0], "topic=t", "t:1 again", b"k").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(stat(nodes[0].addr, "publish_duplicates").await, 1);
    assert_eq!(stat(nodes[0].addr, "published").await, 1);
    for client in [&mut on_0, &mut on_1] {
        let got: Vec<String> = read_n(client, 1)
            .await
            .into_iter()
            .map(|e| e.data)
            .collect();
        assert_eq!(got, ["t:1"]);
        client.expect_quiet().await;
    }
    // Another node does not know the key.
    let (_, other) = publish_with_key(&nodes[1], "topic=t", "t:1 via n1", b"k").await;
    assert_eq!(other["duplicate"], false, "{other}");
    for client in [&mut on_0, &mut on_1] {
        assert_eq!(read_n(client, 1).await[0].data, "t:1 via n1");
    }
}

/// An event to one connection held on this node, with a key: once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_event_to_a_connection_is_delivered_once() {
    let (_bus, nodes) = cluster(1).await;
    let mut client = SseClient::connect(nodes[0].addr, "/events").await;
    let target = format!("connection={}", client.connection_id);
    for _ in 0..3 {
        let (status, receipt) = publish_with_key(&nodes[0], &target, "direct", b"once").await;
        assert_eq!(status, StatusCode::ACCEPTED, "{receipt}");
    }
    assert_eq!(client.next().await.expect("event").data, "direct");
    client.expect_quiet().await;
}

/// An API-tier publisher and a gateway hub share one store: a key
/// published through the publisher and retried through the hub is stored
/// and delivered once; the publisher makes resume tokens the gateways
/// honour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_and_a_hub_share_the_store_window_and_tokens() {
    let bus = MemoryBus::new();
    let store = Arc::new(MemoryHistory::new(&bus, Retention::default()));
    let hub = Hub::builder()
        .node_id("gw")
        .broker(bus.broker())
        .history(store.clone())
        .stream_config(StreamConfig::default().keep_alive(None))
        .build()
        .await
        .expect("hub");
    let node = Node::serve(hub.clone()).await;
    let publisher = Publisher::new(bus.broker())
        .await
        .expect("publisher")
        .with_history(store);
    let sub = || Subscription::new().topic("p").user("pu");
    let token = publisher.resume_token(&sub()).await.expect("token");
    let mut live = open(&node, "topic=p&user=pu", None).await;

    let first = publisher
        .publish_idempotent(Target::topic("p"), Event::new().data("p:1"), "pk")
        .await
        .expect("publish");
    let again = hub
        .publish_idempotent(Target::topic("p"), Event::new().data("p:1 retried"), "pk")
        .await
        .expect("retry through the hub");
    assert!(!first.duplicate && again.duplicate, "{first:?} {again:?}");
    assert_eq!((&again.id, again.position), (&first.id, first.position));
    assert_eq!(read_n(&mut live, 1).await[0].data, "p:1");
    live.expect_quiet().await;

    let mut resumed = SseClient::open(
        node.addr,
        &format!("/events?topic=p&user=pu&last_event_id={token}"),
        &[],
    )
    .await;
    assert_eq!(resumed.next().await.expect("greeting").event, "connected");
    assert_eq!(read_n(&mut resumed, 1).await[0].data, "p:1");
    resumed.expect_quiet().await;

    let err = publisher
        .publish_idempotent(Target::topic("p"), Event::new(), "bad key")
        .await
        .expect_err("a key with a space");
    assert!(matches!(err, PublishError::InvalidKey(_)), "{err}");
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
}

/// Without history there is no token: the hub and the publisher say so,
/// and the demo node answers `501`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_history_there_is_no_token() {
    let (bus, nodes) = cluster(1).await;
    let err = nodes[0]
        .hub
        .resume_token(&Subscription::new().topic("t"))
        .await
        .expect_err("no history");
    assert!(matches!(err, ResumeTokenError::NoHistory), "{err}");
    let publisher = Publisher::new(bus.broker()).await.expect("publisher");
    assert!(matches!(
        publisher.resume_token(&Subscription::new()).await,
        Err(ResumeTokenError::NoHistory)
    ));
    let (status, body) = get(nodes[0].addr, "/resume-token?topic=t").await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert!(body.contains("no history"), "{body}");
    let (status, body) = get(nodes[0].addr, "/resume-token?topic=%FF").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// A store written before idempotency keys (the trait's defaults: no
/// window): the hub falls back to its node-local window, and a repeat
/// still gets the first publish's id and position.
#[derive(Debug)]
struct Older(MemoryHistory);

#[async_trait::async_trait]
impl sse_cluster::history::History for Older {
    async fn append(
        &self,
        channel: &sse_cluster::broker::Channel,
        payload: bytes::Bytes,
    ) -> Result<sse_cluster::history::Position, sse_cluster::BrokerError> {
        self.0.append(channel, payload).await
    }

    async fn heads(
        &self,
        channels: &[(
            sse_cluster::broker::Channel,
            Option<sse_cluster::history::Position>,
        )],
    ) -> Result<Vec<sse_cluster::history::Head>, sse_cluster::BrokerError> {
        self.0.heads(channels).await
    }

    async fn read(
        &self,
        channel: &sse_cluster::broker::Channel,
        after: sse_cluster::history::Position,
        limit: usize,
    ) -> Result<Vec<sse_cluster::history::Entry>, sse_cluster::BrokerError> {
        self.0.read(channel, after, limit).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_a_window_falls_back_to_the_node_local_one() {
    use sse_cluster::history::History;
    let bus = MemoryBus::new();
    let store = Arc::new(Older(MemoryHistory::new(&bus, Retention::default())));
    assert_eq!(store.idempotency_window(), None, "the trait's default");
    let hub = Hub::builder()
        .node_id("old")
        .broker(bus.broker())
        .history(store.clone())
        .build()
        .await
        .expect("hub");
    let publish = || hub.publish_idempotent(Target::topic("o"), Event::new().data("o:1"), "ok");
    let first = publish().await.expect("first");
    let again = publish().await.expect("again");
    assert!(!first.duplicate && again.duplicate, "{first:?} {again:?}");
    assert!(first.position.is_some());
    assert_eq!((&again.id, again.position), (&first.id, first.position));
    let stored = store
        .read(
            &sse_cluster::broker::Channel::Topic("o".into()),
            sse_cluster::history::Position::ZERO,
            10,
        )
        .await
        .expect("read");
    assert_eq!(stored.len(), 1, "stored once");
    hub.shutdown().await;
}
