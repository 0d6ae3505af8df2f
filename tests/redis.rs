//! The Redis backend against real `redis-server` processes (never a mock):
//! what is specific to Redis. Cross-node delivery with exact per-node
//! accounting, demo-node processes, publishers that are not this crate,
//! malformed bus traffic on node channels, an idle publish connection closed
//! by the server, killed subscriptions, a hub started while Redis is down,
//! interest changed during an outage, a frozen server, sharded pub/sub,
//! passwords and TLS. The generic promises (outage, restart, order,
//! resume...) are the conformance suite's, run on Redis in
//! `tests/conformance.rs`.
//!
//! Tests that inject no fault share the machine's Redis (127.0.0.1:6379),
//! each under its own channel prefix; tests that kill things start their own
//! `redis-server`. Without Redis the tests are skipped (`SKIPPED:` on
//! stderr), unless `CI` is set: then they fail.

#![cfg(all(feature = "redis", feature = "axum"))]

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
use sse_cluster::stream::GAP_EVENT;
use sse_cluster::{BrokerStatus, Event, Hub, PublishError, StreamConfig, Target};
use support::bus::*;
use support::process::{node_binary, NodeProcess};
use support::redis_server::{
    machine_redis, redis_cli, resp_command, resp_integer, unique_prefix, RedisServer, MACHINE_REDIS,
};
use support::{get, post, stat, Node, SseClient, WAIT};
use tokio::time::Instant;

/// A node on Redis: the hub served over TCP, and its broker (for its counters).
async fn redis_node(config: RedisConfig, node_id: &str) -> (Node, Arc<RedisBroker>) {
    let broker = RedisBroker::new(config).expect("redis broker");
    let hub = Hub::builder()
        .node_id(node_id)
        .broker(broker.clone())
        .stream_config(StreamConfig::default().keep_alive(None))
        .build()
        .await
        .expect("hub");
    (Node::serve(hub).await, broker)
}

/// Quick failure detection and reconnects, for the fault tests.
fn fast_config(url: &str, prefix: &str) -> RedisConfig {
    let mut config = RedisConfig::new(url)
        .prefix(prefix)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .liveness(Duration::from_millis(200), Duration::from_millis(500));
    config.connect_timeout = Duration::from_millis(500);
    config
}

// ---------------------------------------------------------------------------
// Delivery between hubs
// ---------------------------------------------------------------------------

/// Three hubs, each with its own `RedisBroker` (own Redis connections): every
/// target kind crosses nodes, reaches each matching connection exactly once
/// and nobody else, and a hub hears only the channels its clients need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_delivery_for_every_target_kind() {
    let test = "cross_node_delivery_for_every_target_kind";
    let Some(url) = machine_redis(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let config = || RedisConfig::new(url.clone()).prefix(prefix.clone());
    let (a, _) = redis_node(config(), "a").await;
    let (b, _) = redis_node(config(), "b").await;
    let (c, _) = redis_node(config(), "c").await;
    for node in [&a, &b, &c] {
        assert_eq!(node.hub.broker_status(), BrokerStatus::Up);
    }

    let mut a_news = SseClient::connect(a.addr, "/events?topic=news").await;
    let mut a_alice = SseClient::connect(a.addr, "/events?user=alice").await;
    let mut a_all3 = SseClient::connect(a.addr, "/events?topic=news&topic=only-a&user=alice").await;
    let mut a_plain = SseClient::connect(a.addr, "/events").await;
    let mut b_news = SseClient::connect(b.addr, "/events?topic=news").await;
    let mut b_bob = SseClient::connect(b.addr, "/events?user=bob&topic=sports").await;
    let mut c_plain = SseClient::connect(c.addr, "/events").await;
    let bus_in = |node: &Node| node.hub.stats().bus_in;
    assert_eq!((bus_in(&a), bus_in(&b), bus_in(&c)), (0, 0, 0));

    // Traffic only A has clients for: B and C (the publisher) hear nothing.
    post_ok(c.addr, "/publish?topic=only-a", "only-a-1").await;
    post_ok(c.addr, "/publish?user=alice", "alice-1").await;
    expect_data(&mut a_all3, "a_all3", &["only-a-1", "alice-1"]).await;
    expect_data(&mut a_alice, "a_alice", &["alice-1"]).await;
    assert_eq!(bus_in(&a), 2, "A got each message once for its 2 clients");
    assert_eq!(stat(b.addr, "bus_in").await, 0, "B has no interest");
    assert_eq!(stat(c.addr, "bus_in").await, 0, "C has no interest");

    // Traffic only B has clients for: A hears nothing.
    post_ok(c.addr, "/publish?user=bob", "bob-1").await;
    post_ok(c.addr, "/publish?topic=sports", "sports-1").await;
    expect_data(&mut b_bob, "b_bob", &["bob-1", "sports-1"]).await;
    assert_eq!(bus_in(&b), 2);
    assert_eq!(stat(a.addr, "bus_in").await, 2, "A has no interest");
    assert_eq!(bus_in(&c), 0);

    // A topic both hold.
    post_ok(c.addr, "/publish?topic=news&event=headline", "news-1").await;
    for (client, who) in [
        (&mut a_news, "a_news"),
        (&mut a_all3, "a_all3"),
        (&mut b_news, "b_news"),
    ] {
        let event = client.next().await.unwrap_or_else(|| panic!("{who}"));
        assert_eq!(
            (event.event.as_str(), event.data.as_str()),
            ("headline", "news-1")
        );
    }
    assert_eq!((bus_in(&a), bus_in(&b), bus_in(&c)), (3, 3, 0));

    // Single connections, across nodes: only the owner node hears its channel.
    let path = format!("/publish?connection={}", a_alice.connection_id);
    post_ok(c.addr, &path, "direct-a").await;
    expect_data(&mut a_alice, "a_alice", &["direct-a"]).await;
    let path = format!("/publish?connection={}", b_bob.connection_id);
    post_ok(a.addr, &path, "direct-b").await;
    expect_data(&mut b_bob, "b_bob", &["direct-b"]).await;
    assert_eq!((bus_in(&a), bus_in(&b), bus_in(&c)), (4, 4, 0));

    // Everyone, once; the publisher's own client through the local path.
    post_ok(c.addr, "/publish?event=all", "all-1").await;
    for (client, who) in [
        (&mut a_news, "a_news"),
        (&mut a_alice, "a_alice"),
        (&mut a_all3, "a_all3"),
        (&mut a_plain, "a_plain"),
        (&mut b_news, "b_news"),
        (&mut b_bob, "b_bob"),
        (&mut c_plain, "c_plain"),
    ] {
        let event = client.next().await.unwrap_or_else(|| panic!("{who}"));
        assert_eq!(
            (event.event.as_str(), event.data.as_str()),
            ("all", "all-1"),
            "{who}"
        );
    }
    all_quiet(vec![
        &mut a_news,
        &mut a_alice,
        &mut a_all3,
        &mut a_plain,
        &mut b_news,
        &mut b_bob,
        &mut c_plain,
    ])
    .await;
    assert_eq!((bus_in(&a), bus_in(&b), bus_in(&c)), (5, 5, 1));
    assert_eq!(
        c.hub.stats().bus_echo,
        1,
        "C's own broadcast came back once"
    );
    assert_eq!(c.hub.stats().bus_malformed, 0);
    assert_eq!(c.hub.stats().bus_out, 7);
    assert_eq!(a.hub.stats().bus_out, 1);
}

// ---------------------------------------------------------------------------
// Demo node processes
// ---------------------------------------------------------------------------

/// Two demo-node processes on the same Redis: every target kind published on
/// one reaches an SSE client of the other; the publisher hears only its own
/// broadcast's echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_node_processes_over_redis() {
    let test = "demo_node_processes_over_redis";
    let Some(url) = machine_redis(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let binary = tokio::task::spawn_blocking(|| node_binary(Some("redis")))
        .await
        .expect("node binary");
    let start = |id: &str| {
        NodeProcess::start(
            &binary,
            &["--broker", &url, "--redis-prefix", &prefix, "--node-id", id],
        )
    };
    let publisher = start("proc-1");
    let receiver = start("proc-2");
    for node in [&publisher, &receiver] {
        let (status, body) = get(node.addr, "/healthz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let mut client = SseClient::connect(receiver.addr, "/events?topic=t&user=u").await;
    assert!(client.connection_id.starts_with("proc-2."));
    let mut bystander = SseClient::connect(publisher.addr, "/events?topic=other").await;

    post_ok(publisher.addr, "/publish?topic=t&event=k-topic", "to topic").await;
    post_ok(
        publisher.addr,
        "/publish?user=u&event=k-user",
        "to user\nline 2",
    )
    .await;
    let path = format!("/publish?connection={}&event=k-conn", client.connection_id);
    post_ok(publisher.addr, &path, "to connection").await;
    post_ok(publisher.addr, "/publish?event=k-all", "to all").await;
    for (name, data) in [
        ("k-topic", "to topic"),
        ("k-user", "to user\nline 2"),
        ("k-conn", "to connection"),
        ("k-all", "to all"),
    ] {
        let event = client.next().await.unwrap_or_else(|| panic!("no {name}"));
        assert_eq!((event.event.as_str(), event.data.as_str()), (name, data));
    }
    let event = bystander.next().await.expect("broadcast on the publisher");
    assert_eq!(event.data, "to all");
    all_quiet(vec![&mut client, &mut bystander]).await;

    assert_eq!(stat(receiver.addr, "bus_in").await, 4);
    assert_eq!(stat(receiver.addr, "delivered").await, 4);
    assert_eq!(stat(publisher.addr, "bus_out").await, 4);
    assert_eq!(
        stat(publisher.addr, "bus_in").await,
        1,
        "only its broadcast echo"
    );
    assert_eq!(stat(publisher.addr, "bus_echo").await, 1);
}

// ---------------------------------------------------------------------------
// Publishers that are not this crate, and malformed traffic
// ---------------------------------------------------------------------------

/// A raw RESP `PUBLISH` over TCP and `redis-cli PUBLISH` reach an SSE client:
/// any language can publish, on every channel kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_rust_publishers_reach_sse_clients() {
    let test = "non_rust_publishers_reach_sse_clients";
    let Some(url) = machine_redis(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let (a, broker) = redis_node(RedisConfig::new(url).prefix(prefix.clone()), "a").await;
    let mut client = SseClient::connect(a.addr, "/events?topic=t&user=u").await;

    let publish = |channel: String, payload: String| {
        let reply = resp_command(
            MACHINE_REDIS,
            &[b"PUBLISH", channel.as_bytes(), payload.as_bytes()],
        );
        assert_eq!(resp_integer(&reply), Some(1), "{channel}: {reply:?}");
    };
    publish(
        format!("{prefix}topic:t"),
        r#"{"v":1,"event":"e","data":"from resp"}"#.into(),
    );
    let event = client.next().await.expect("raw RESP publish");
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("e", "from resp")
    );

    let Some(out) = redis_cli(
        test,
        6379,
        &[
            "PUBLISH",
            &format!("{prefix}topic:t"),
            r#"{"v":1,"event":"cli","id":"7","data":"from redis-cli\nline 2"}"#,
        ],
    ) else {
        return;
    };
    assert_eq!(out.trim(), "1", "redis-cli PUBLISH reached one subscriber");
    let event = client.next().await.expect("redis-cli publish");
    assert_eq!(event.event, "cli");
    assert_eq!(event.id, "7");
    assert_eq!(event.data, "from redis-cli\nline 2");

    publish(
        format!("{prefix}user:u"),
        r#"{"v":1,"data":"to user"}"#.into(),
    );
    publish(format!("{prefix}all"), r#"{"v":1,"data":"to all"}"#.into());
    publish(
        format!("{prefix}node:a"),
        format!(
            r#"{{"v":1,"data":"to conn","conn":"{}"}}"#,
            client.connection_id
        ),
    );
    expect_data(&mut client, "client", &["to user", "to all", "to conn"]).await;
    client.expect_quiet().await;
    let stats = a.hub.stats();
    assert_eq!((stats.bus_in, stats.bus_malformed), (5, 0));
    assert_eq!(broker.stats().foreign, 0);
}

/// Hand-written garbage on subscribed channels is counted in `bus_malformed`
/// and ignored; the subscription survives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bus_messages_are_counted_and_ignored() {
    let test = "malformed_bus_messages_are_counted_and_ignored";
    let Some(url) = machine_redis(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let (a, _) = redis_node(RedisConfig::new(url.clone()).prefix(prefix.clone()), "a").await;
    let mut client = SseClient::connect(a.addr, "/events?topic=t").await;
    let topic = format!("{prefix}topic:t");
    let node = format!("{prefix}node:a");
    let garbage: [(&str, &[u8]); 10] = [
        (&topic, b"not json"),
        (&topic, br#"{"v":2,"event":"e","data":"future"}"#),
        (&topic, br#"{"data":"no version"}"#),
        (&topic, br#"{"v":1,"event":"x\ninjected: 1","data":"d"}"#),
        (&topic, br#"{"v":1,"id":"a\u0000b"}"#),
        (&topic, b"\xff\x00\xfe"),
        (&topic, b"{\"v\":1,\"data\":\"\xff\xfe\"}"),
        (&topic, b""),
        (&node, br#"{"v":1,"data":"no conn"}"#),
        (&node, br#"{"v":1,"data":"bad conn","conn":"nope"}"#),
    ];
    for (channel, payload) in garbage {
        let reply = resp_command(MACHINE_REDIS, &[b"PUBLISH", channel.as_bytes(), payload]);
        assert_eq!(resp_integer(&reply), Some(1), "{payload:?}: {reply:?}");
    }
    let reply = resp_command(
        MACHINE_REDIS,
        &[
            b"PUBLISH",
            topic.as_bytes(),
            br#"{"v":1,"event":"e","data":"ok"}"#,
        ],
    );
    assert_eq!(resp_integer(&reply), Some(1));
    let event = client
        .next()
        .await
        .expect("valid message after the garbage");
    assert_eq!((event.event.as_str(), event.data.as_str()), ("e", "ok"));
    client.expect_quiet().await;
    assert_eq!(stat(a.addr, "bus_malformed").await, 10);
    assert_eq!(stat(a.addr, "bus_in").await, 11);
    assert_eq!(a.hub.broker_status(), BrokerStatus::Up);

    // And the hub's own traffic still flows on the same subscription.
    let (b, _) = redis_node(RedisConfig::new(url).prefix(prefix), "b").await;
    post_ok(b.addr, "/publish?topic=t", "still here").await;
    expect_data(&mut client, "client", &["still here"]).await;
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

/// Redis closing an idle publish connection (server `timeout`, as managed
/// Redis services and proxies do) must not fail the next publish of a node
/// that reports Up. Subscriptions are exempt from `timeout` (and pinged).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_after_server_closed_the_idle_publish_connection() {
    let test = "publish_after_server_closed_the_idle_publish_connection";
    let Some(server) = RedisServer::start_with(test, &["--timeout", "1"]) else {
        return;
    };
    let prefix = unique_prefix(test);
    let (a, a_broker) = redis_node(fast_config(&server.url(), &prefix), "a").await;
    let (b, b_broker) = redis_node(fast_config(&server.url(), &prefix), "b").await;
    let mut client = SseClient::connect(b.addr, "/events?topic=t").await;
    post_ok(a.addr, "/publish?topic=t", "before").await;
    expect_data(&mut client, "client", &["before"]).await;

    // Redis drops both idle (non-subscriber) publish connections after ~1 s;
    // each broker must notice without publishing, and reconnect.
    wait_until(
        "both brokers noticed their publish connection closed",
        Duration::from_secs(5),
        || a_broker.stats().disconnects >= 1 && b_broker.stats().disconnects >= 1,
    )
    .await;
    wait_until("both hubs up again", WAIT, || {
        both(&a.hub, &b.hub, BrokerStatus::Up)
    })
    .await;

    let result = a
        .hub
        .publish(Target::topic("t"), Event::new().data("after"))
        .await;
    assert!(
        result.is_ok(),
        "A reports Up, yet its publish fails: {result:?} \
         (Redis closed A's idle publish connection and nothing noticed)"
    );
    expect_data(&mut client, "client", &["after"]).await;
}

/// `CLIENT KILL TYPE pubsub` cuts every subscription connection (the
/// publish connections live on): both hubs notice, resubscribe and report Up
/// again; no publish fails meanwhile, and events published after recovery
/// arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriptions_are_restored_without_failing_publishes() {
    let test = "killed_subscriptions_are_restored_without_failing_publishes";
    let Some(server) = RedisServer::start(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let (a, a_broker) = redis_node(fast_config(&server.url(), &prefix), "a").await;
    let (b, b_broker) = redis_node(fast_config(&server.url(), &prefix), "b").await;
    let client = SseClient::connect(a.addr, "/events?topic=t").await;
    let reader = spawn_reader(client, "done");
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = spawn_publisher(b.hub.clone(), "t", stop.clone());
    wait_until("traffic before the kill", WAIT, || {
        b.hub.stats().published >= 20
    })
    .await;

    let reply = resp_command(&server.addr(), &[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]);
    assert_eq!(
        resp_integer(&reply),
        Some(2),
        "one subscription per hub: {reply:?}"
    );
    wait_until("both hubs saw the subscription die", WAIT, || {
        a.hub.stats().bus_outages >= 1 && b.hub.stats().bus_outages >= 1
    })
    .await;
    wait_until("both hubs up again", WAIT, || {
        both(&a.hub, &b.hub, BrokerStatus::Up)
    })
    .await;
    let up = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    let attempts = publisher.await.expect("publisher task");
    b.hub
        .publish(
            Target::topic("t"),
            Event::new().event("done").expect("name"),
        )
        .await
        .expect("publish after recovery");
    let events = reader.await.expect("reader task");

    let failed: Vec<_> = attempts.iter().filter(|a| !a.ok).collect();
    assert!(failed.is_empty(), "publishes failed: {failed:?}");
    assert_eq!(b.hub.stats().bus_errors, 0);
    assert_eq!(b.hub.stats().published, attempts.len() as u64 + 1);
    for broker in [&a_broker, &b_broker] {
        let stats = broker.stats();
        assert!(stats.connects >= 2 && stats.disconnects >= 1, "{stats:?}");
        assert_eq!(stats.publish_failed, 0, "{stats:?}");
    }
    let received: BTreeSet<u64> = events
        .iter()
        .filter(|e| e.event != GAP_EVENT)
        .map(|e| e.data.parse().expect("a sequence number"))
        .collect();
    assert_eq!(
        received.len(),
        events.iter().filter(|e| e.event != GAP_EVENT).count(),
        "duplicates"
    );
    let lost: Vec<_> = attempts
        .iter()
        .filter(|a| a.started >= up && !received.contains(&a.seq))
        .collect();
    assert!(
        lost.is_empty(),
        "published after recovery, never delivered: {lost:?}"
    );
    assert!(
        events.iter().any(|e| e.event == GAP_EVENT),
        "no gap event after the subscription came back"
    );
    eprintln!(
        "subscriptions killed: {} attempts, none failed, {} delivered",
        attempts.len(),
        received.len()
    );
}

// ---------------------------------------------------------------------------
// Sharded pub/sub, passwords
// ---------------------------------------------------------------------------

/// `RedisConfig::sharded(true)` on a single Redis 7 node: SSUBSCRIBE /
/// SPUBLISH carry topic, user and broadcast traffic between hubs, and a raw
/// `SPUBLISH` reaches a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_delivers_between_hubs() {
    let test = "sharded_pubsub_delivers_between_hubs";
    let Some(url) = machine_redis(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let config = || {
        RedisConfig::new(url.clone())
            .prefix(prefix.clone())
            .sharded(true)
    };
    let (a, _) = redis_node(config(), "a").await;
    let (b, _) = redis_node(config(), "b").await;
    let mut a_client = SseClient::connect(a.addr, "/events?topic=t&user=u").await;
    let mut b_client = SseClient::connect(b.addr, "/events?topic=t").await;

    // Really sharded: the topic channel has shard subscribers, no classic ones.
    let channel = format!("{prefix}topic:t");
    let shard = resp_command(
        MACHINE_REDIS,
        &[b"PUBSUB", b"SHARDNUMSUB", channel.as_bytes()],
    );
    assert!(shard.ends_with(":2\r\n"), "SHARDNUMSUB: {shard:?}");
    let classic = resp_command(MACHINE_REDIS, &[b"PUBSUB", b"NUMSUB", channel.as_bytes()]);
    assert!(classic.ends_with(":0\r\n"), "NUMSUB: {classic:?}");

    post_ok(b.addr, "/publish?topic=t", "topic from b").await;
    expect_data(&mut a_client, "a", &["topic from b"]).await;
    expect_data(&mut b_client, "b", &["topic from b"]).await;
    post_ok(b.addr, "/publish?user=u", "user from b").await;
    expect_data(&mut a_client, "a", &["user from b"]).await;
    post_ok(a.addr, "/publish", "all from a").await;
    expect_data(&mut a_client, "a", &["all from a"]).await;
    expect_data(&mut b_client, "b", &["all from a"]).await;

    let reply = resp_command(
        MACHINE_REDIS,
        &[
            b"SPUBLISH",
            channel.as_bytes(),
            br#"{"v":1,"event":"raw","data":"from SPUBLISH"}"#,
        ],
    );
    assert_eq!(resp_integer(&reply), Some(2), "{reply:?}");
    for client in [&mut a_client, &mut b_client] {
        let event = client.next().await.expect("raw SPUBLISH");
        assert_eq!(
            (event.event.as_str(), event.data.as_str()),
            ("raw", "from SPUBLISH")
        );
    }
    all_quiet(vec![&mut a_client, &mut b_client]).await;
    assert_eq!(
        a.hub.stats().bus_in,
        4,
        "topic, user, own broadcast echo, raw"
    );
    assert_eq!(b.hub.stats().bus_in, 3, "own topic echo, broadcast, raw");
}

/// A password in the URL authenticates; a wrong one leaves the broker Down
/// (never Up), publishes fail with a transient error, and nothing panics or
/// leaks the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_in_url() {
    let test = "password_in_url";
    let Some(server) = RedisServer::start_with(test, &["--requirepass", "s3cret-pw"]) else {
        return;
    };
    let prefix = unique_prefix(test);
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}", server.port());
    let (a, _) = redis_node(fast_config(&url, &prefix), "a").await;
    let (b, _) = redis_node(fast_config(&url, &prefix), "b").await;
    assert!(both(&a.hub, &b.hub, BrokerStatus::Up));
    let mut client = SseClient::connect(a.addr, "/events?topic=t").await;
    post_ok(b.addr, "/publish?topic=t", "authenticated").await;
    expect_data(&mut client, "client", &["authenticated"]).await;

    for (what, url) in [
        (
            "wrong password",
            format!("redis://:hunter2-wrong@127.0.0.1:{}", server.port()),
        ),
        ("no password", server.url()),
    ] {
        let (bad, broker) = redis_node(fast_config(&url, &prefix), "bad").await;
        // Stays Down through several reconnect attempts.
        let watch_until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < watch_until {
            assert_eq!(bad.hub.broker_status(), BrokerStatus::Down, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (status, _) = get(bad.addr, "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
        let err = bad
            .hub
            .publish(Target::topic("t"), Event::new().data("refused"))
            .await
            .expect_err(what);
        assert!(
            matches!(err, PublishError::Broker(_)) && err.is_transient(),
            "{what}: {err:?}"
        );
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
        assert!(!format!("{broker:?}").contains("hunter2"), "{broker:?}");
        let (status, body) = post(bad.addr, "/publish?topic=t", "refused").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
        assert_eq!(bad.hub.stats().bus_errors, 2, "{what}");
        assert_eq!(bad.hub.stats().published, 0, "{what}");
        assert!(broker.stats().connects == 0, "{what}: {:?}", broker.stats());
        bad.hub.shutdown().await;
    }
    client.expect_quiet().await;
}

/// A hub started while Redis is unreachable builds anyway (Down), accepts
/// connections, and once Redis is up subscribes every recorded interest:
/// topic, user, its node channel and the broadcast channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_started_while_redis_is_down_catches_up() {
    let test = "hub_started_while_redis_is_down_catches_up";
    let Some(mut server) = RedisServer::start(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    tokio::task::block_in_place(|| server.kill());
    let (a, _) = redis_node(fast_config(&server.url(), &prefix), "a").await;
    assert_eq!(a.hub.broker_status(), BrokerStatus::Down);
    let (status, _) = get(a.addr, "/healthz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let mut client =
        tokio::time::timeout(WAIT, SseClient::connect(a.addr, "/events?topic=t&user=u"))
            .await
            .expect("connect while Redis is down");

    tokio::task::block_in_place(|| server.restart());
    wait_until("A up", WAIT, || a.hub.broker_status() == BrokerStatus::Up).await;
    let (b, _) = redis_node(fast_config(&server.url(), &prefix), "b").await;
    post_ok(b.addr, "/publish?topic=t", "topic").await;
    post_ok(b.addr, "/publish?user=u", "user").await;
    let path = format!("/publish?connection={}", client.connection_id);
    post_ok(b.addr, &path, "connection").await;
    post_ok(b.addr, "/publish", "all").await;
    let mut data = Vec::new();
    while data.len() < 4 {
        let event = client.next().await.expect("event after Redis came up");
        if event.event != GAP_EVENT {
            data.push(event.data);
        }
    }
    assert_eq!(data, ["topic", "user", "connection", "all"]);
    client.expect_quiet().await;
}

/// Interest that changes while Redis is down is applied on reconnect: a
/// topic whose last client left is not resubscribed, a topic a new client
/// follows is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_changes_during_an_outage_apply_on_reconnect() {
    let test = "interest_changes_during_an_outage_apply_on_reconnect";
    let Some(mut server) = RedisServer::start(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let (a, _) = redis_node(fast_config(&server.url(), &prefix), "a").await;
    let old = SseClient::connect(a.addr, "/events?topic=old").await;
    // Published by hand: how many subscribers Redis delivered to.
    let publish = |server: &RedisServer, topic: &str, data: &str| {
        let channel = format!("{prefix}topic:{topic}");
        let payload = format!(r#"{{"v":1,"data":"{data}"}}"#);
        let reply = resp_command(
            &server.addr(),
            &[b"PUBLISH", channel.as_bytes(), payload.as_bytes()],
        );
        resp_integer(&reply).unwrap_or_else(|| panic!("PUBLISH: {reply:?}"))
    };
    assert_eq!(publish(&server, "old", "before"), 1);

    tokio::task::block_in_place(|| server.kill());
    wait_until("A down", WAIT, || {
        a.hub.broker_status() == BrokerStatus::Down
    })
    .await;
    drop(old);
    wait_until("old client gone", WAIT, || a.hub.registry().is_empty()).await;
    let mut new = tokio::time::timeout(WAIT, SseClient::connect(a.addr, "/events?topic=new"))
        .await
        .expect("connect while Redis is down");
    tokio::task::block_in_place(|| server.restart());
    wait_until("A up", WAIT, || a.hub.broker_status() == BrokerStatus::Up).await;

    let bus_in = a.hub.stats().bus_in;
    assert_eq!(
        publish(&server, "old", "nobody"),
        0,
        "old interest restored"
    );
    assert_eq!(publish(&server, "new", "fresh"), 1, "new interest missing");
    let event = new.next().await.expect("gap");
    assert_eq!(event.event, GAP_EVENT);
    expect_data(&mut new, "new", &["fresh"]).await;
    new.expect_quiet().await;
    assert_eq!(a.hub.stats().bus_in, bus_in + 1, "A heard only topic:new");
}

/// `rediss://` with a self-signed certificate (`#insecure`): the hubs talk
/// TLS to a TLS-only Redis and deliver across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_delivers_between_hubs() {
    let test = "tls_delivers_between_hubs";
    let Some(server) = RedisServer::start_tls(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let (a, _) = redis_node(fast_config(&server.tls_url(), &prefix), "a").await;
    let (b, _) = redis_node(fast_config(&server.tls_url(), &prefix), "b").await;
    assert!(
        both(&a.hub, &b.hub, BrokerStatus::Up),
        "TLS connection failed"
    );
    let mut client = SseClient::connect(a.addr, "/events?topic=t&user=u").await;
    post_ok(b.addr, "/publish?topic=t", "over tls").await;
    post_ok(b.addr, "/publish?user=u", "user over tls").await;
    expect_data(&mut client, "client", &["over tls", "user over tls"]).await;
    client.expect_quiet().await;

    // Plain TCP to the TLS port is refused: the broker stays Down.
    let plain = format!("redis://127.0.0.1:{}", server.port());
    let (c, _) = redis_node(fast_config(&plain, &prefix), "c").await;
    assert_eq!(c.hub.broker_status(), BrokerStatus::Down);
}

/// A server that stops answering while every socket stays open (SIGSTOP: a
/// silent death, no disconnect notice) is caught by the liveness `PING`: the
/// hubs report Down, reconnect once it answers again, and deliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_is_caught_by_the_liveness_probe() {
    let test = "frozen_server_is_caught_by_the_liveness_probe";
    let Some(server) = RedisServer::start(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let (a, a_broker) = redis_node(fast_config(&server.url(), &prefix), "a").await;
    let (b, _) = redis_node(fast_config(&server.url(), &prefix), "b").await;
    let mut client = SseClient::connect(a.addr, "/events?topic=t").await;
    post_ok(b.addr, "/publish?topic=t", "before").await;
    expect_data(&mut client, "client", &["before"]).await;

    server.signal("STOP");
    // Probe every 200 ms, 500 ms to answer: Down well within 5 s.
    let frozen = Instant::now();
    wait_until(
        "the probe noticed the frozen server",
        Duration::from_secs(5),
        || both(&a.hub, &b.hub, BrokerStatus::Down),
    )
    .await;
    assert!(
        frozen.elapsed() < Duration::from_secs(3),
        "{:?}",
        frozen.elapsed()
    );
    assert!(a_broker.stats().disconnects >= 1);
    server.signal("CONT");
    wait_until("both hubs up again", Duration::from_secs(10), || {
        both(&a.hub, &b.hub, BrokerStatus::Up)
    })
    .await;
    let gap = client.next().await.expect("gap event");
    assert_eq!(
        (gap.event.as_str(), gap.data.as_str()),
        (GAP_EVENT, r#"{"reason":"bus"}"#)
    );
    post_ok(b.addr, "/publish?topic=t", "after").await;
    expect_data(&mut client, "client", &["after"]).await;
}

/// A publish-only process (a `Publisher` on its own Redis connections, no
/// hub) reaches clients held by a gateway hub, for every target kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_tier_over_redis() {
    let test = "publisher_tier_over_redis";
    let Some(url) = machine_redis(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let (gateway, _) = redis_node(RedisConfig::new(url.clone()).prefix(prefix.clone()), "gw").await;
    let broker = RedisBroker::new(RedisConfig::new(url).prefix(prefix)).expect("config");
    let publisher = sse_cluster::Publisher::new(broker)
        .await
        .expect("publisher");
    assert_eq!(publisher.broker_status(), BrokerStatus::Up);
    let mut client = SseClient::connect(gateway.addr, "/events?topic=t&user=u").await;
    let id = sse_cluster::ConnectionId::parse(&client.connection_id).expect("id");
    for (target, data) in [
        (Target::topic("t"), "topic"),
        (Target::user("u"), "user"),
        (Target::Connection(id), "connection"),
        (Target::All, "all"),
    ] {
        publisher
            .publish(target, Event::new().data(data))
            .await
            .expect("publish");
    }
    expect_data(
        &mut client,
        "client",
        &["topic", "user", "connection", "all"],
    )
    .await;
    client.expect_quiet().await;
    publisher.shutdown().await;
}

/// Two tiers over Redis, as separate processes: two gateway demo nodes hold
/// the streams, a publisher process (no hub) publishes through its HTTP API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tier_processes_over_redis() {
    let test = "two_tier_processes_over_redis";
    let Some(url) = machine_redis(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let (node, publisher_bin) = tokio::task::spawn_blocking(|| {
        (
            node_binary(Some("redis")),
            support::process::example_binary("publisher", Some("redis")),
        )
    })
    .await
    .expect("binaries");
    let args = ["--broker", url.as_str(), "--redis-prefix", prefix.as_str()];
    let gw1 = NodeProcess::start(&node, &args);
    let gw2 = NodeProcess::start(&node, &args);
    let api = NodeProcess::start(&publisher_bin, &args);
    let mut on1 = SseClient::connect(gw1.addr, "/events?user=alice&topic=t").await;
    let mut on2 = SseClient::connect(gw2.addr, "/events?user=bob&topic=t").await;
    assert_eq!(get(api.addr, "/healthz").await.0, StatusCode::OK);
    for (path, data) in [
        ("/publish?user=alice", "for alice"),
        ("/publish?user=bob", "for bob"),
        ("/publish?topic=t", "for t"),
        ("/publish", "for all"),
    ] {
        post_ok(api.addr, path, data).await;
    }
    let to_bob = format!("/publish?connection={}", on2.connection_id);
    post_ok(api.addr, &to_bob, "direct").await;
    expect_data(&mut on1, "alice", &["for alice", "for t", "for all"]).await;
    expect_data(&mut on2, "bob", &["for bob", "for t", "for all", "direct"]).await;
    all_quiet(vec![&mut on1, &mut on2]).await;
    let (status, _) = post(api.addr, "/publish?event=bad%0A", "x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// A refusal that a retry cannot fix (an ACL that forbids `PUBLISH`) is a
/// permanent error, not a transient one: the app must not retry it, and the
/// demo answers it with 500, not 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noperm_is_not_transient() {
    let test = "noperm_is_not_transient";
    let Some(server) = RedisServer::start(test) else {
        return;
    };
    let reply = resp_command(
        &server.addr(),
        &[
            b"ACL",
            b"SETUSER",
            b"publess",
            b"on",
            b">pw",
            b"~*",
            b"&*",
            b"+@all",
            b"-publish",
        ],
    );
    assert_eq!(reply, "+OK\r\n");
    let url = format!("redis://publess:pw@127.0.0.1:{}", server.port());
    let (node, _) = redis_node(fast_config(&url, &unique_prefix(test)), "a").await;
    let err = node
        .hub
        .publish(Target::topic("t"), Event::new().data("refused"))
        .await
        .expect_err("PUBLISH is not allowed");
    assert!(matches!(&err, PublishError::Broker(_)), "{err:?}");
    assert!(!err.is_transient(), "{err:?}");
    assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let (status, body) = post(node.addr, "/publish?topic=t", "refused").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(node.hub.stats().bus_errors, 2);
    assert_eq!(
        node.hub.broker_status(),
        BrokerStatus::Up,
        "the connection itself is fine"
    );
}
