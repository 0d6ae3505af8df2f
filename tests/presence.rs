//! Cluster-wide presence, over real TCP: three hubs on the in-memory bus,
//! on the machine's Redis (one of them a demo-node process killed with
//! SIGKILL, which the others must forget in the documented time) and on the
//! machine's NATS; malformed control messages; a hub without presence.
//!
//! Without Redis or NATS, those tests are skipped (`SKIPPED:` on stderr),
//! unless `CI` is set: then they fail.

#![cfg(feature = "axum")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::Value;
use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::broker::{BusSink, Channel};
use sse_cluster::presence::{PresenceConfig, PresenceError};
use sse_cluster::{Broker, BrokerStatus, Hub};
use support::bus::{all_quiet, wait_until};
use support::{cluster_with, get, Node, SseClient, WAIT};

/// `GET path` on `node`, expecting `200` with a JSON body.
async fn get_json(addr: std::net::SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    serde_json::from_str(&body).expect("json")
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Waits until every hub believes exactly `expected` alive.
async fn wait_members(hubs: &[&Hub], expected: &[&str]) {
    let expected = names(expected);
    for hub in hubs {
        let presence = hub.presence();
        wait_until("membership", WAIT, || presence.nodes() == expected).await;
    }
}

/// Three hubs on one in-memory bus: topic counts with users on several
/// nodes, users online or not, invalid requests, no control message ever
/// reaching a client, and a hub that shuts down saying `bye` (forgotten at
/// once, long before `forget_after`).
#[tokio::test]
async fn three_hubs_on_the_memory_bus() {
    let config = PresenceConfig::default()
        .heartbeat(Duration::from_millis(100))
        .forget_after(Duration::from_secs(60))
        .timeout(Duration::from_secs(2));
    let (_bus, nodes) = cluster_with(3, |b| b.presence(config)).await;
    let [n0, n1, n2] = [&nodes[0], &nodes[1], &nodes[2]];
    wait_members(&[&n0.hub, &n1.hub, &n2.hub], &["n0", "n1", "n2"]).await;

    let alice0 = SseClient::connect(n0.addr, "/events?topic=news&user=alice").await;
    let mut anon0 = SseClient::connect(n0.addr, "/events?topic=news").await;
    let mut alice1 = SseClient::connect(n1.addr, "/events?topic=news&user=alice").await;
    let mut bob1 = SseClient::connect(n1.addr, "/events?user=bob").await;
    let mut bob2 = SseClient::connect(n2.addr, "/events?topic=news&user=bob").await;
    let mut plain2 = SseClient::connect(n2.addr, "/events").await;

    for node in [n0, n1, n2] {
        let news = get_json(node.addr, "/presence?topic=news").await;
        assert_eq!(news["topic"], "news");
        assert_eq!(news["connections"], 4, "{news}");
        assert_eq!(news["users"], 2, "alice twice, bob, one anonymous: {news}");
        assert_eq!(news["users_exact"], true);
        assert_eq!(news["nodes_answered"], 3);
        assert_eq!(news["complete"], true);
    }
    let alice = n2.hub.presence().user("alice").await.expect("presence");
    assert_eq!(alice.connections, 2);
    assert_eq!(alice.nodes, names(&["n0", "n1"]));
    assert!(alice.complete);
    let bob = get_json(n0.addr, "/presence?user=bob").await;
    assert_eq!(
        (&bob["online"], &bob["connections"], &bob["nodes"]),
        (
            &Value::from(true),
            &Value::from(2),
            &serde_json::json!(["n1", "n2"])
        )
    );
    let carol = get_json(n0.addr, "/presence?user=carol").await;
    assert_eq!(
        (&carol["online"], &carol["complete"]),
        (&Value::from(false), &Value::from(true))
    );
    assert!(!n1
        .hub
        .presence()
        .user_online("carol")
        .await
        .expect("presence"));
    assert!(n1
        .hub
        .presence()
        .user_online("bob")
        .await
        .expect("local: no bus"));
    let nobody = get_json(n1.addr, "/presence?topic=nobody").await;
    assert_eq!(
        (&nobody["connections"], &nobody["users"]),
        (&Value::from(0), &Value::from(0))
    );
    let members = get_json(n1.addr, "/presence").await;
    assert_eq!(members["nodes"], serde_json::json!(["n0", "n1", "n2"]));
    for bad in [
        "/presence?topic=a&user=b",
        "/presence?topic=",
        "/presence?user=",
    ] {
        assert_eq!(get(n0.addr, bad).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }
    let long = "x".repeat(sse_cluster::hub::MAX_NAME_LEN + 1);
    assert!(matches!(
        n0.hub.presence().topic(&long).await,
        Err(PresenceError::InvalidName(_))
    ));

    // Heartbeats, queries and answers went over the bus all along; none of
    // them reached a client, and none counted as an event message.
    all_quiet(vec![
        &mut anon0,
        &mut alice1,
        &mut bob1,
        &mut bob2,
        &mut plain2,
    ])
    .await;
    for node in [n0, n1, n2] {
        let stats = node.hub.stats();
        assert_eq!((stats.bus_in, stats.bus_malformed), (0, 0), "{stats:?}");
        let p = node.hub.presence().stats();
        assert!(p.control_in > 0 && p.control_out > 0, "{p:?}");
        assert_eq!(p.control_malformed, 0);
    }

    // Alice leaves n0: she is still counted once, through n1.
    drop(alice0);
    wait_until("alice0 gone", WAIT, || {
        n0.hub.registry().user_connections("alice") == 0
    })
    .await;
    let news = n2.hub.presence().topic("news").await.expect("presence");
    assert_eq!((news.connections, news.users), (3, 2));

    // A graceful shutdown says bye: forgotten at once (forget_after is 60 s).
    n2.hub.shutdown().await;
    wait_members(&[&n0.hub, &n1.hub], &["n0", "n1"]).await;
    let news = n0.hub.presence().topic("news").await.expect("presence");
    assert_eq!(
        (news.connections, news.users, news.nodes_answered),
        (2, 1, 2)
    );
    assert!(news.complete);
    assert!(matches!(
        n2.hub.presence().topic("news").await,
        Err(PresenceError::ShutDown)
    ));
}

/// Collects what a raw bus participant receives.
#[derive(Default)]
struct Collect(Mutex<Vec<(Channel, Bytes)>>);

impl BusSink for Collect {
    fn deliver(&self, channel: &Channel, payload: Bytes) {
        self.0
            .lock()
            .expect("collect")
            .push((channel.clone(), payload));
    }
    fn status_changed(&self, _: BrokerStatus) {}
}

/// Garbage that looks like control messages is counted and dropped, never
/// delivered and never a panic; an operation from a later version is
/// ignored; a well-formed query from a foreign participant is answered on
/// its node channel.
#[tokio::test]
async fn malformed_control_messages_are_refused() {
    let (bus, nodes) = cluster_with(1, |b| b.presence(PresenceConfig::default())).await;
    let node = &nodes[0];
    let mut client = SseClient::connect(node.addr, "/events?topic=news&user=u").await;
    let raw = bus.broker();
    let inbox = Arc::new(Collect::default());
    raw.start(inbox.clone()).await.expect("start");
    raw.subscribe(&Channel::Node("raw".into()))
        .await
        .expect("subscribe");

    let deep = format!(
        r#"{{"ctl":1,"op":"hello","from":"x.y1","users":{}1{}}}"#,
        "[".repeat(500),
        "]".repeat(500)
    );
    let bad: Vec<Vec<u8>> = [
        r#"{"ctl":"#,
        r#"{"ctl":2,"op":"hello","from":"x.y1"}"#,
        r#"{"ctl":"1","op":"hello","from":"x.y1"}"#,
        r#"{"ctl":1}"#,
        r#"{"ctl":1,"op":"hello","from":"not an instance"}"#,
        r#"{"ctl":1,"op":"hello","from":"a.b.c"}"#,
        r#"{"ctl":1,"op":"query","from":"x.y1"}"#,
        r#"{"ctl":1,"op":"query","from":"x.y1","req":1,"topic":""}"#,
        r#"{"ctl":1,"op":"query","from":"x.y1","req":1,"topic":"a","user":"b"}"#,
        r#"{"ctl":1,"op":"query","from":"x.y1","req":1}"#,
        r#"{"ctl":1,"op":"answer","from":"x.y1","req":1}"#,
        r#"{"ctl":1,"op":"answer","from":"x.y1","req":1,"conns":"many"}"#,
        r#"{"ctl":1,"op":"answer","from":"x.y1","req":-1,"conns":1}"#,
        "{\"ctl\":1,\"op\":\"hello\",\"from\":\"x.y1\"\u{0}}",
        &deep,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for payload in &bad {
        for channel in [Channel::Broadcast, Channel::Node("n0".into())] {
            raw.publish(&channel, Bytes::from(payload.clone()))
                .await
                .expect("publish");
        }
    }
    let future = br#"{"ctl":1,"op":"gossip","from":"x.y1","extra":[1]}"#;
    raw.publish(&Channel::Broadcast, Bytes::from_static(future))
        .await
        .expect("publish");
    let stats = node.hub.presence().stats();
    assert_eq!(stats.control_malformed, 2 * bad.len() as u64, "{stats:?}");
    assert_eq!(node.hub.stats().bus_malformed, 0, "not event messages");
    client.expect_quiet().await;

    // A foreign participant asks; the answer comes on its node channel.
    let query = br#"{"ctl":1,"op":"query","from":"raw.q1","req":9,"topic":"news"}"#;
    raw.publish(&Channel::Broadcast, Bytes::from_static(query))
        .await
        .expect("publish");
    let answer = || {
        inbox
            .0
            .lock()
            .expect("collect")
            .iter()
            .filter(|(c, _)| *c == Channel::Node("raw".into()))
            .filter_map(|(_, p)| serde_json::from_slice::<Value>(p).ok())
            .find(|v| v["op"] == "answer")
    };
    wait_until("the answer", WAIT, || answer().is_some()).await;
    let answer = answer().expect("answer");
    assert_eq!(answer["to"], "raw.q1");
    assert_eq!(answer["req"], 9);
    assert_eq!(answer["conns"], 1);
    assert_eq!(answer["users"], serde_json::json!(["u"]));
    assert!(answer["from"]
        .as_str()
        .is_some_and(|f| f.starts_with("n0.")));
    // The foreign asker now counts as a live node.
    assert_eq!(node.hub.presence().nodes(), names(&["n0", "raw"]));
    client.expect_quiet().await;
}

/// A hub without presence answers `501` on `/presence`, ignores the control
/// traffic of its neighbours (nothing reaches its clients), and is not
/// counted by them.
#[tokio::test]
async fn presence_is_opt_in() {
    let bus = MemoryBus::new();
    let enabled = Hub::builder()
        .node_id("on")
        .broker(bus.broker())
        .presence(PresenceConfig::default().heartbeat(Duration::from_millis(50)))
        .build()
        .await
        .expect("hub");
    let disabled = Node::serve(
        Hub::builder()
            .node_id("off")
            .broker(bus.broker())
            .build()
            .await
            .expect("hub"),
    )
    .await;
    let mut client = SseClient::connect(disabled.addr, "/events?topic=news").await;
    let (status, _) = get(disabled.addr, "/presence?topic=news").await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert!(matches!(
        disabled.hub.presence().user_online("x").await,
        Err(PresenceError::Disabled)
    ));
    let news = enabled.presence().topic("news").await.expect("presence");
    assert_eq!((news.connections, news.nodes_answered), (0, 1));
    assert_eq!(enabled.presence().nodes(), names(&["on"]));
    client.expect_quiet().await;
    assert_eq!(disabled.hub.stats().bus_malformed, 0);
}

/// Three hubs on the machine's Redis, one of them a demo-node process. It
/// is killed with SIGKILL (no `bye`): queries right after are incomplete
/// (it is still believed alive and does not answer), and it is forgotten
/// within `forget_after` of its death, after which queries are complete
/// again and count only the survivors.
#[cfg(all(unix, feature = "redis"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hubs_on_redis_forget_a_killed_node() {
    use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
    use support::process::{node_binary, NodeProcess};
    use support::redis_server::{machine_redis, unique_prefix};

    let test = "three_hubs_on_redis_forget_a_killed_node";
    let Some(url) = machine_redis(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let forget_after = Duration::from_secs(4);
    let config = PresenceConfig::default()
        .heartbeat(Duration::from_millis(200))
        .forget_after(forget_after)
        .timeout(Duration::from_millis(500));
    let hub = |id: &'static str| {
        let broker = RedisBroker::new(RedisConfig::new(url.clone()).prefix(prefix.clone()))
            .expect("redis broker");
        async move {
            let hub = Hub::builder()
                .node_id(id)
                .broker(broker)
                .presence(config)
                .build()
                .await
                .expect("hub");
            Node::serve(hub).await
        }
    };
    let a = hub("a").await;
    let b = hub("b").await;
    let binary = tokio::task::spawn_blocking(|| node_binary(Some("redis")))
        .await
        .expect("node binary");
    let mut c = NodeProcess::start(
        &binary,
        &[
            "--broker",
            &url,
            "--redis-prefix",
            &prefix,
            "--node-id",
            "c",
            "--presence-heartbeat-ms",
            "200",
        ],
    );
    wait_members(&[&a.hub, &b.hub], &["a", "b", "c"]).await;
    let c_nodes = || async { get_json(c.addr, "/presence").await["nodes"].clone() };
    let deadline = tokio::time::Instant::now() + WAIT;
    while c_nodes().await != serde_json::json!(["a", "b", "c"]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "c never saw a and b"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let _a1 = SseClient::connect(a.addr, "/events?topic=news&user=alice").await;
    let _b1 = SseClient::connect(b.addr, "/events?topic=news&user=bob").await;
    let _c1 = SseClient::connect(c.addr, "/events?topic=news&user=alice").await;
    let _c2 = SseClient::connect(c.addr, "/events?topic=news&user=carol").await;
    for addr in [a.addr, b.addr, c.addr] {
        let news = get_json(addr, "/presence?topic=news").await;
        assert_eq!(news["connections"], 4, "{news}");
        assert_eq!(news["users"], 3, "{news}");
        assert_eq!(
            (&news["nodes_answered"], &news["complete"]),
            (&Value::from(3), &Value::from(true))
        );
    }
    let carol = b.hub.presence().user("carol").await.expect("presence");
    assert_eq!((carol.connections, carol.nodes.clone()), (1, names(&["c"])));

    // SIGKILL: no bye. Right after, c is still believed alive and silent.
    c.signal("KILL");
    let killed = tokio::time::Instant::now();
    let _ = c.wait_exit(Duration::from_secs(5));
    let news = a.hub.presence().topic("news").await.expect("presence");
    assert!(!news.complete, "{news:?}");
    assert_eq!(
        (news.connections, news.users, news.nodes_answered),
        (2, 2, 2)
    );

    // Forgotten within forget_after of its death (plus scheduling slack).
    let presence = a.hub.presence();
    wait_until(
        "c to be forgotten",
        forget_after + Duration::from_secs(2),
        || presence.nodes() == names(&["a", "b"]),
    )
    .await;
    let forgotten_after = killed.elapsed();
    wait_members(&[&b.hub], &["a", "b"]).await;
    let news = a.hub.presence().topic("news").await.expect("presence");
    assert!(news.complete, "{news:?}");
    assert_eq!(
        (news.connections, news.users, news.nodes_answered),
        (2, 2, 2)
    );
    assert!(!b
        .hub
        .presence()
        .user_online("carol")
        .await
        .expect("presence"));
    eprintln!("presence: the killed node was forgotten {forgotten_after:?} after SIGKILL (forget_after {forget_after:?})");
}

/// The same protocol on NATS: three hubs, complete answers.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hubs_on_nats() {
    use sse_cluster::broker::nats::{NatsBroker, NatsConfig};
    use support::nats_server::{machine_nats, unique_prefix};

    let Some(url) = machine_nats() else {
        return;
    };
    let prefix = unique_prefix();
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        let broker =
            NatsBroker::new(NatsConfig::new(url.clone()).prefix(prefix.clone())).expect("broker");
        let hub = Hub::builder()
            .node_id(id)
            .broker(broker)
            .presence(PresenceConfig::default().heartbeat(Duration::from_millis(100)))
            .build()
            .await
            .expect("hub");
        nodes.push(Node::serve(hub).await);
    }
    let hubs: Vec<&Hub> = nodes.iter().map(|n| &n.hub).collect();
    wait_members(&hubs, &["a", "b", "c"]).await;
    let _clients = [
        SseClient::connect(nodes[0].addr, "/events?topic=t&user=u1").await,
        SseClient::connect(nodes[1].addr, "/events?topic=t&user=u1").await,
        SseClient::connect(nodes[2].addr, "/events?topic=t&user=u2").await,
    ];
    let t = nodes[1].hub.presence().topic("t").await.expect("presence");
    assert_eq!(
        (t.connections, t.users, t.nodes_answered, t.complete),
        (3, 2, 3, true)
    );
    let u1 = nodes[2].hub.presence().user("u1").await.expect("presence");
    assert_eq!(u1.nodes, names(&["a", "b"]));
}
