//! Disconnect across the cluster (`Hub::disconnect`, the demo node's
//! `POST /disconnect`): issued on node C, it ends user 42's streams on
//! nodes A and B, each after the final `sse-cluster.closed` event, and
//! leaves everyone else streaming; a topic's and a single connection's the
//! same. Over the in-memory bus, Redis and NATS, three hubs served over real
//! TCP and read with a real SSE parser.

#![cfg(feature = "axum")]

mod support;

use std::time::{Duration, Instant};

use sse_cluster::{Hub, HubBuilder, CLOSED_EVENT};
use support::{get, post, Node, SseClient, WAIT};

/// Three nodes on one bus: A, B (holding the streams) and C (issuing).
async fn three(make: impl Fn(usize) -> HubBuilder) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..3 {
        let hub: Hub = make(i).build().await.expect("hub");
        nodes.push(Node::serve(hub).await);
    }
    nodes
}

/// Reads `client` until its stream ends; returns the events after the
/// greeting and how long the end took from `since`.
async fn until_end(client: &mut SseClient, since: Instant) -> (Vec<(String, String)>, Duration) {
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, client.next()).await {
            Ok(Some(event)) => events.push((event.event, event.data)),
            Ok(None) => return (events, since.elapsed()),
            Err(_) => panic!("the stream did not end within {WAIT:?}: {events:?}"),
        }
    }
}

fn closed_event(events: &[(String, String)]) -> serde_json::Value {
    let (name, data) = events.last().expect("a final event");
    assert_eq!(name, CLOSED_EVENT, "{events:?}");
    serde_json::from_str(data).expect("JSON data")
}

async fn stat(node: &Node, name: &str) -> u64 {
    let (_, body) = get(node.addr, "/stats").await;
    let stats: serde_json::Value = serde_json::from_str(&body).expect("stats");
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {stats}"))
}

async fn disconnect_a_user_everywhere(nodes: &[Node]) {
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut a42 = SseClient::connect(a.addr, "/events?user=42&topic=t").await;
    let mut b42 = SseClient::connect(b.addr, "/events?user=42").await;
    let mut b42_again = SseClient::connect(b.addr, "/events?user=42&topic=u").await;
    let mut a7 = SseClient::connect(a.addr, "/events?user=7&topic=t").await;
    let mut b7 = SseClient::connect(b.addr, "/events?user=7").await;

    let since = Instant::now();
    let (status, body) = post(c.addr, "/disconnect?user=42&reason=revoked", "").await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["closed_locally"], 0, "C holds none of 42's streams");

    for (who, client) in [
        ("A", &mut a42),
        ("B", &mut b42),
        ("B again", &mut b42_again),
    ] {
        let (events, took) = until_end(client, since).await;
        assert!(took < Duration::from_secs(1), "{who}: ended after {took:?}");
        let closed = closed_event(&events);
        assert_eq!(closed["reason"], "revoked", "{who}");
        assert_eq!(closed["reconnect"], false, "{who}");
        assert!(
            client.raw().contains("retry: 3600000\n"),
            "{who}: a long retry before the end: {}",
            client.raw()
        );
    }
    // Everyone else goes on streaming.
    let (status, _) = post(c.addr, "/publish?topic=t", "still here").await;
    assert_eq!(status, 202);
    let (status, _) = post(c.addr, "/publish?user=7", "you too").await;
    assert_eq!(status, 202);
    // Two channels: NATS does not keep their order against each other.
    let mut got = [
        a7.next().await.expect("an event").data,
        a7.next().await.expect("an event").data,
    ];
    got.sort();
    assert_eq!(got, ["still here", "you too"]);
    assert_eq!(b7.next().await.expect("user event").data, "you too");
    assert_eq!(stat(a, "closed_by_command").await, 1);
    assert_eq!(stat(b, "closed_by_command").await, 2);
    assert_eq!(stat(c, "closed_by_command").await, 0);
    support::bus::wait_until("42's streams unregistered", WAIT, || {
        a.hub.registry().user_connections("42") + b.hub.registry().user_connections("42") == 0
    })
    .await;
    assert_eq!(a.hub.registry().user_connections("7"), 1);
}

async fn disconnect_a_topic_and_a_connection(nodes: &[Node]) {
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut on_topic = SseClient::connect(b.addr, "/events?topic=news").await;
    let mut here = SseClient::connect(c.addr, "/events?topic=news").await;
    let mut one = SseClient::connect(a.addr, "/events?topic=other").await;
    let mut other = SseClient::connect(a.addr, "/events?topic=other").await;

    // A topic, with reconnect: a short retry; C closes its own at once.
    let since = Instant::now();
    let (status, body) = post(
        c.addr,
        "/disconnect?topic=news&reason=rebalance&reconnect=1",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"closed_locally\":1"), "{body}");
    for client in [&mut on_topic, &mut here] {
        let (events, took) = until_end(client, since).await;
        assert!(took < Duration::from_secs(1), "ended after {took:?}");
        assert_eq!(closed_event(&events)["reconnect"], true);
        assert!(!client.raw().contains("retry: 3600000"), "{}", client.raw());
    }

    // One connection, from another node: only that one ends.
    let path = format!("/disconnect?connection={}", one.connection_id);
    let since = Instant::now();
    let (status, body) = post(c.addr, &path, "").await;
    assert_eq!(status, 200, "{body}");
    let (events, took) = until_end(&mut one, since).await;
    assert!(took < Duration::from_secs(1), "ended after {took:?}");
    assert_eq!(closed_event(&events)["reason"], "disconnected");
    let (status, _) = post(c.addr, "/publish?topic=other", "on").await;
    assert_eq!(status, 202);
    assert_eq!(other.next().await.expect("event").data, "on");

    // Bad requests close nothing.
    for bad in [
        "/disconnect",
        "/disconnect?user=a&topic=b",
        "/disconnect?connection=nope",
        "/disconnect?topic=",
    ] {
        let (status, body) = post(c.addr, bad, "").await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let long = format!("/disconnect?topic=other&reason={}", "x".repeat(300));
    let (status, body) = post(c.addr, &long, "").await;
    assert_eq!(status, 400, "{body}");
    other.expect_quiet().await;
}

mod memory {
    use super::*;
    use sse_cluster::broker::memory::MemoryBus;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_is_disconnected_on_every_node() {
        let bus = MemoryBus::new();
        let nodes = three(|i| Hub::builder().node_id(format!("n{i}")).broker(bus.broker())).await;
        disconnect_a_user_everywhere(&nodes).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_topic_and_a_connection_are_disconnected() {
        let bus = MemoryBus::new();
        let nodes = three(|i| Hub::builder().node_id(format!("n{i}")).broker(bus.broker())).await;
        disconnect_a_topic_and_a_connection(&nodes).await;
    }

    /// The publish-only tier disconnects too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publisher_disconnects_a_user() {
        let bus = MemoryBus::new();
        let nodes = three(|i| Hub::builder().node_id(format!("n{i}")).broker(bus.broker())).await;
        let mut a = SseClient::connect(nodes[0].addr, "/events?user=42").await;
        let mut other = SseClient::connect(nodes[1].addr, "/events?user=7").await;
        let publisher = sse_cluster::Publisher::new(bus.broker())
            .await
            .expect("publisher");
        let since = Instant::now();
        publisher
            .disconnect(
                sse_cluster::Target::user("42"),
                sse_cluster::Disconnect::revoke("logout"),
            )
            .await
            .expect("sent");
        let (events, took) = until_end(&mut a, since).await;
        assert!(took < Duration::from_secs(1), "ended after {took:?}");
        assert_eq!(closed_event(&events)["reason"], "logout");
        other.expect_quiet().await;
        assert_eq!(stat(&nodes[0], "closed_by_command").await, 1);
    }

    /// A command from a foreign publisher, in the documented format.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_foreign_command_and_hostile_ones() {
        use sse_cluster::broker::{Broker, BusSink, Channel};
        #[derive(Debug)]
        struct Ignore;
        impl BusSink for Ignore {
            fn deliver(&self, _: &Channel, _: bytes::Bytes) {}
            fn status_changed(&self, _: sse_cluster::BrokerStatus) {}
        }
        let bus = MemoryBus::new();
        let nodes = three(|i| Hub::builder().node_id(format!("n{i}")).broker(bus.broker())).await;
        let mut client = SseClient::connect(nodes[0].addr, "/events?user=42").await;
        let foreign = bus.broker();
        foreign
            .start(std::sync::Arc::new(Ignore))
            .await
            .expect("start");
        let user = Channel::User("42".into());
        for hostile in [
            &br#"{"cmd":1,"op":"explode"}"#[..],
            br#"{"cmd":9,"op":"disconnect"}"#,
            br#"{"cmd":1,"op":"disconnect","reason":"a\nb"}"#,
            br#"{"cmd":"#,
        ] {
            foreign
                .publish(&user, bytes::Bytes::from_static(hostile))
                .await
                .expect("publish");
        }
        let node = Channel::Node("n0".into());
        foreign
            .publish(
                &node,
                bytes::Bytes::from_static(br#"{"cmd":1,"op":"disconnect"}"#),
            )
            .await
            .expect("publish");
        client.expect_quiet().await;
        assert_eq!(stat(&nodes[0], "bus_malformed").await, 5);
        let since = Instant::now();
        foreign
            .publish(
                &user,
                bytes::Bytes::from_static(br#"{"cmd":1,"op":"disconnect","reason":"logout"}"#),
            )
            .await
            .expect("publish");
        let (events, _) = until_end(&mut client, since).await;
        assert_eq!(closed_event(&events)["reason"], "logout");
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
    use support::redis_server::{machine_redis, unique_prefix};

    async fn nodes(test: &str) -> Option<Vec<Node>> {
        let url = machine_redis(test)?;
        let prefix = unique_prefix(test);
        Some(
            three(|i| {
                let config = RedisConfig::new(&url).prefix(&prefix);
                Hub::builder()
                    .node_id(format!("n{i}"))
                    .broker(RedisBroker::new(config).expect("config"))
            })
            .await,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_is_disconnected_on_every_node() {
        if let Some(nodes) = nodes("redis_a_user_is_disconnected_on_every_node").await {
            disconnect_a_user_everywhere(&nodes).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_topic_and_a_connection_are_disconnected() {
        if let Some(nodes) = nodes("redis_a_topic_and_a_connection_are_disconnected").await {
            disconnect_a_topic_and_a_connection(&nodes).await;
        }
    }
}

#[cfg(feature = "nats")]
mod nats {
    use super::*;
    use sse_cluster::broker::nats::{NatsBroker, NatsConfig};
    use support::server::{skip, unique_name};

    async fn nodes(test: &str) -> Option<Vec<Node>> {
        if std::net::TcpStream::connect("127.0.0.1:4222").is_err() {
            return skip(test, "no nats-server on 127.0.0.1:4222");
        }
        let prefix = unique_name(test);
        Some(
            three(|i| {
                let config = NatsConfig::new("nats://127.0.0.1:4222").prefix(&prefix);
                Hub::builder()
                    .node_id(format!("n{i}"))
                    .broker(NatsBroker::new(config).expect("config"))
                    .require_broker(WAIT)
            })
            .await,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_is_disconnected_on_every_node() {
        if let Some(nodes) = nodes("nats_a_user_is_disconnected_on_every_node").await {
            disconnect_a_user_everywhere(&nodes).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_topic_and_a_connection_are_disconnected() {
        if let Some(nodes) = nodes("nats_a_topic_and_a_connection_are_disconnected").await {
            disconnect_a_topic_and_a_connection(&nodes).await;
        }
    }
}
