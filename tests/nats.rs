//! The NATS backend against real `nats-server` processes (never a mock):
//! cross-node delivery, demo-node processes, publishers that are not this
//! crate, hostile topic and user names, malformed bus traffic, token
//! authentication, the subscriptions the server holds, subscriptions being
//! live when the hub says so, connects piling up during an outage, order
//! across subjects, and slow-consumer notices. The generic promises
//! (outage, restart, resume...) are the conformance suite's, run on NATS in
//! `tests/conformance.rs`.
//!
//! Tests that inject no fault share the machine's NATS (127.0.0.1:4222),
//! each under its own subject prefix; tests that kill things or need server
//! options start their own `nats-server`; two put a relay adding 20 ms of
//! latency (`SlowLink`) between a hub and a real server. Without NATS the
//! tests are skipped (`SKIPPED:` on stderr), unless `CI` is set: then they
//! fail.

#![cfg(all(feature = "nats", feature = "axum"))]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use sse_cluster::broker::nats::{encode_token, NatsBroker, NatsConfig};
use sse_cluster::stream::GAP_EVENT;
use sse_cluster::Broker;
use sse_cluster::{
    BrokerStatus, ConnectError, Event, Hub, PublishError, StreamConfig, Subscription, Target,
};
use support::bus::*;
use support::nats_server::{
    machine_nats, nats_cli, nats_cli_pub, raw_pub, unique_prefix, NatsServer, RawConnection,
    SlowLink, MACHINE_NATS,
};
use support::process::{node_binary, NodeProcess};
use support::{get, post, stat, Node, SseClient, WAIT};
use tokio::time::Instant;

/// A node on NATS: the hub served over TCP, and its broker (for its counters).
async fn nats_node(config: NatsConfig, node_id: &str) -> (Node, Arc<NatsBroker>) {
    nats_node_with(config, node_id, StreamConfig::default()).await
}

/// [`nats_node`] with `stream` settings (keep-alives always off).
async fn nats_node_with(
    config: NatsConfig,
    node_id: &str,
    stream: StreamConfig,
) -> (Node, Arc<NatsBroker>) {
    let broker = NatsBroker::new(config).expect("nats broker");
    let hub = Hub::builder()
        .node_id(node_id)
        .broker(broker.clone())
        .stream_config(stream.keep_alive(None))
        .build()
        .await
        .expect("hub");
    (Node::serve(hub).await, broker)
}

/// Stream queues deep enough for a burst of a few hundred events: without
/// it, a burst the HTTP server has not yet written out closes the
/// connection (`OverflowPolicy::Close`), which is not what these tests test.
fn deep_queues() -> StreamConfig {
    StreamConfig::default().queue_limits(10_000, 1 << 24)
}

/// Quick dead-connection detection, for the fault tests.
fn fast_config(url: &str, prefix: &str) -> NatsConfig {
    let mut config = NatsConfig::new(url)
        .prefix(prefix)
        .ping_interval(Duration::from_millis(200));
    config.connect_timeout = Duration::from_millis(500);
    config
}

/// `name` percent-encoded for a query string, so that `%41` stays `%41`.
fn q(name: &str) -> String {
    form_urlencoded::byte_serialize(name.as_bytes()).collect()
}

/// Reads the next `expected.len()` events of `client` and checks their data
/// in any order: the NATS broker forwards each subject's messages from its
/// own task, so messages on different subjects may overtake each other (the
/// `Broker` contract promises order per channel only).
async fn expect_data_unordered(client: &mut SseClient, who: &str, expected: &[&str]) {
    let mut got = Vec::new();
    for _ in expected {
        let event = client
            .next()
            .await
            .unwrap_or_else(|| panic!("{who}: got {got:?}, expected {expected:?}"));
        got.push(event.data);
    }
    got.sort();
    let mut expected: Vec<&str> = expected.to_vec();
    expected.sort_unstable();
    assert_eq!(got, expected, "{who}");
}

/// A raw protocol publish from a blocking-pool thread (it does blocking I/O).
async fn raw_pub_async(addr: &str, subject: String, payload: Vec<u8>) {
    let addr = addr.to_owned();
    tokio::task::spawn_blocking(move || raw_pub(&addr, &subject, &payload))
        .await
        .expect("raw publisher");
}

/// A bus message every hub refuses as malformed (an event name with a line
/// break): it reaches no client and is counted in `bus_malformed`.
const PROBE: &[u8] = br#"{"v":1,"event":"probe\n"}"#;

/// Waits until the NATS server at `server` routes `subject` to `hub`, by
/// raw-publishing [`PROBE`]s until the hub counts one (at most 50 tries,
/// 200 ms each). Needed before asserting exact delivery right after a
/// connect: `Hub::connect` can return before the server has the
/// subscription (the bug pinned by
/// `events_published_right_after_connect_are_delivered`), and under load
/// that window grows. Counters must then be compared with a baseline taken
/// after settling.
async fn settle(server: &str, hub: &Hub, subject: &str) {
    for _ in 0..50 {
        let before = hub.stats().bus_malformed;
        raw_pub_async(server, subject.to_owned(), PROBE.to_vec()).await;
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline {
            if hub.stats().bus_malformed > before {
                return;
            }
            tokio::time::sleep(TICK).await;
        }
    }
    panic!("{subject}: the server never routed it to the hub");
}

/// [`settle`] for a demo-node process, watching `GET /stats`.
async fn settle_http(server: &str, node: SocketAddr, subject: &str) {
    for _ in 0..50 {
        let before = stat(node, "bus_malformed").await;
        raw_pub_async(server, subject.to_owned(), PROBE.to_vec()).await;
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline {
            if stat(node, "bus_malformed").await > before {
                return;
            }
            tokio::time::sleep(TICK).await;
        }
    }
    panic!("{subject}: the server never routed it to {node}");
}

/// Publishes `probe` events to `target` on `hub` until `client` receives
/// one (at most 50 tries, 200 ms each). Needed before asserting exact
/// delivery right after a connect: `Hub::connect` can return before the
/// NATS server has the subscription (the bug pinned by
/// `events_published_right_after_connect_are_delivered`).
async fn wait_live(client: &mut SseClient, hub: &Hub, target: Target) {
    for _ in 0..50 {
        hub.publish(target.clone(), Event::new().data("probe"))
            .await
            .expect("probe");
        if let Some(event) = client.next_within(Duration::from_millis(200)).await {
            assert_eq!(event.data, "probe", "{event:?}");
            return;
        }
    }
    panic!("{target:?}: no probe got through within 50 tries");
}

// ---------------------------------------------------------------------------
// Delivery between hubs
// ---------------------------------------------------------------------------

/// Three hubs, each with its own `NatsBroker` (own NATS connection): every
/// target kind crosses nodes, reaches each matching connection exactly once
/// and nobody else; a hub hears only the subjects its clients need (an
/// uninterested hub receives nothing but its own echoes); the subjects on the
/// wire are the documented ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_delivery_for_every_target_kind() {
    let Some(url) = machine_nats() else {
        return;
    };
    let prefix = unique_prefix();
    let config = || NatsConfig::new(url.clone()).prefix(prefix.clone());
    let (a, _) = nats_node(config(), "a").await;
    let (b, _) = nats_node(config(), "b").await;
    let (c, c_broker) = nats_node(config(), "c").await;
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
    for (node, subjects) in [
        (&a, ["topic.news", "topic.only-a", "user.alice"]),
        (&b, ["topic.news", "topic.sports", "user.bob"]),
    ] {
        for subject in subjects {
            settle(MACHINE_NATS, &node.hub, &format!("{prefix}.{subject}")).await;
        }
    }
    // Counters from here on, without the probes (counted as malformed).
    let base: Vec<_> = [&a, &b, &c].iter().map(|n| n.hub.stats()).collect();
    let at = |node: &Node| match node.hub.node_id() {
        "a" => 0,
        "b" => 1,
        _ => 2,
    };
    let bus = |node: &Node| {
        let (now, then) = (node.hub.stats(), base[at(node)]);
        (
            now.bus_in - now.bus_malformed - (then.bus_in - then.bus_malformed),
            now.bus_echo - then.bus_echo,
        )
    };
    assert_eq!(c.hub.stats().bus_in, 0);
    // A raw subscriber on everything under the prefix sees the subjects used.
    let mut wire = RawConnection::open(MACHINE_NATS, None).expect("raw connection");
    wire.subscribe(&format!("{prefix}.>"), 1).expect("raw SUB");

    // Traffic only A has clients for: B hears nothing, C (the publisher) has
    // no subscription either, so not even its echo.
    post_ok(c.addr, "/publish?topic=only-a", "only-a-1").await;
    post_ok(c.addr, "/publish?user=alice", "alice-1").await;
    expect_data_unordered(&mut a_all3, "a_all3", &["only-a-1", "alice-1"]).await;
    expect_data(&mut a_alice, "a_alice", &["alice-1"]).await;
    assert_eq!(bus(&a), (2, 0), "A got each message once for its 2 clients");
    assert_eq!(bus(&b), (0, 0), "B has no interest");
    assert_eq!(bus(&c), (0, 0), "C has no interest");

    // Traffic only B has clients for: A hears nothing.
    post_ok(c.addr, "/publish?user=bob", "bob-1").await;
    post_ok(c.addr, "/publish?topic=sports", "sports-1").await;
    expect_data_unordered(&mut b_bob, "b_bob", &["bob-1", "sports-1"]).await;
    assert_eq!(bus(&b), (2, 0));
    assert_eq!(bus(&a), (2, 0), "A has no interest");
    assert_eq!(bus(&c), (0, 0));

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
    assert_eq!((bus(&a), bus(&b), bus(&c)), ((3, 0), (3, 0), (0, 0)));

    // Single connections, across nodes: only the owner node hears its subject.
    let path = format!("/publish?connection={}", a_alice.connection_id);
    post_ok(c.addr, &path, "direct-a").await;
    expect_data(&mut a_alice, "a_alice", &["direct-a"]).await;
    let path = format!("/publish?connection={}", b_bob.connection_id);
    post_ok(a.addr, &path, "direct-b").await;
    expect_data(&mut b_bob, "b_bob", &["direct-b"]).await;
    assert_eq!((bus(&a), bus(&b), bus(&c)), ((4, 0), (4, 0), (0, 0)));

    // Everyone, once; the publisher's own client through the local path,
    // and the publisher's echo recognised as such.
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
    // The echo arrives asynchronously; QUIET (300 ms) has passed since.
    assert_eq!((bus(&a), bus(&b), bus(&c)), ((5, 0), (5, 0), (1, 1)));
    let stats = c.hub.stats();
    assert_eq!(
        (stats.bus_malformed, stats.bus_out, stats.bus_errors),
        (0, 7, 0)
    );
    assert_eq!(a.hub.stats().bus_out, 1);
    assert_eq!(c_broker.stats().published, 7);
    for node in [&a, &b, &c] {
        let (now, then) = (node.hub.stats(), base[at(node)]);
        assert_eq!(
            now.bus_malformed, then.bus_malformed,
            "no malformed traffic"
        );
    }

    // The subjects on the wire, in publish order.
    let expected = [
        "topic.only-a".to_owned(),
        "user.alice".to_owned(),
        "user.bob".to_owned(),
        "topic.sports".to_owned(),
        "topic.news".to_owned(),
        "node.a".to_owned(),
        "node.b".to_owned(),
        "all".to_owned(),
    ];
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        while let Some((subject, _)) = wire
            .next_msg(Duration::from_millis(500))
            .expect("raw subscriber")
        {
            seen.push(subject);
            if seen.len() > 20 {
                break;
            }
        }
        seen
    })
    .await
    .expect("raw subscriber");
    let expected: Vec<String> = expected.iter().map(|s| format!("{prefix}.{s}")).collect();
    assert_eq!(seen, expected);
}

// ---------------------------------------------------------------------------
// Demo node processes
// ---------------------------------------------------------------------------

/// Two demo-node processes (`--broker nats://… --nats-prefix … --node-id …`)
/// on the same NATS: every target kind published over HTTP on one reaches an
/// SSE client of the other; the publisher hears only its own broadcast's
/// echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_node_processes_over_nats() {
    let Some(url) = machine_nats() else {
        return;
    };
    let prefix = unique_prefix();
    let binary = tokio::task::spawn_blocking(|| node_binary(Some("nats")))
        .await
        .expect("node binary");
    let start = |id: &str| {
        NodeProcess::start(
            &binary,
            &["--broker", &url, "--nats-prefix", &prefix, "--node-id", id],
        )
    };
    let publisher = start("proc-1");
    let receiver = start("proc-2");
    for node in [&publisher, &receiver] {
        let (status, body) = get(node.addr, "/healthz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let mut client = SseClient::connect(receiver.addr, "/events?topic=t.1&user=u%20v").await;
    assert!(client.connection_id.starts_with("proc-2."));
    let mut bystander = SseClient::connect(publisher.addr, "/events?topic=other").await;
    for (node, subject) in [
        (receiver.addr, "topic.t%2E1"),
        (receiver.addr, "user.u%20v"),
        (publisher.addr, "topic.other"),
    ] {
        settle_http(MACHINE_NATS, node, &format!("{prefix}.{subject}")).await;
    }
    let receiver_in = stat(receiver.addr, "bus_in").await;
    let probes = stat(receiver.addr, "bus_malformed").await;
    let publisher_in = stat(publisher.addr, "bus_in").await;

    post_ok(
        publisher.addr,
        "/publish?topic=t.1&event=k-topic",
        "to topic",
    )
    .await;
    post_ok(
        publisher.addr,
        "/publish?user=u%20v&event=k-user",
        "to user\nline 2",
    )
    .await;
    let path = format!("/publish?connection={}&event=k-conn", client.connection_id);
    post_ok(publisher.addr, &path, "to connection").await;
    post_ok(publisher.addr, "/publish?event=k-all", "to all").await;
    // Four subjects: their messages may overtake each other.
    let mut got = Vec::new();
    for _ in 0..4 {
        let event = client.next().await.unwrap_or_else(|| panic!("got {got:?}"));
        got.push((event.event, event.data));
    }
    got.sort();
    let expected = [
        ("k-all", "to all"),
        ("k-conn", "to connection"),
        ("k-topic", "to topic"),
        ("k-user", "to user\nline 2"),
    ]
    .map(|(e, d)| (e.to_owned(), d.to_owned()));
    assert_eq!(got, expected);
    let event = bystander.next().await.expect("broadcast on the publisher");
    assert_eq!(event.data, "to all");
    all_quiet(vec![&mut client, &mut bystander]).await;

    assert_eq!(stat(receiver.addr, "bus_in").await, receiver_in + 4);
    assert_eq!(stat(receiver.addr, "delivered").await, 4);
    assert_eq!(stat(receiver.addr, "bus_malformed").await, probes);
    assert_eq!(stat(publisher.addr, "bus_out").await, 4);
    assert_eq!(
        stat(publisher.addr, "bus_in").await,
        publisher_in + 1,
        "only its broadcast echo"
    );
    assert_eq!(stat(publisher.addr, "bus_echo").await, 1);
}

// ---------------------------------------------------------------------------
// Publishers that are not this crate, names, malformed traffic
// ---------------------------------------------------------------------------

/// A raw protocol `PUB` over a plain TCP socket (and the `nats` CLI when it
/// is installed) reaches SSE clients, on every subject kind: any language
/// can publish a v1 envelope. The subject of topic `a.b` is pinned by hand
/// (`a%2Eb`, as documented), the others computed with `encode_token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_rust_publishers_reach_sse_clients() {
    let Some(url) = machine_nats() else {
        return;
    };
    let prefix = unique_prefix();
    let (a, broker) = nats_node(NatsConfig::new(url.clone()).prefix(prefix.clone()), "a").await;
    let mut client = SseClient::connect(a.addr, "/events?topic=a.b&user=j%C3%BCrgen%20x").await;
    let mut other = SseClient::connect(a.addr, "/events?topic=a").await;
    for subject in ["topic.a%2Eb", "user.j%C3%BCrgen%20x", "topic.a"] {
        settle(MACHINE_NATS, &a.hub, &format!("{prefix}.{subject}")).await;
    }
    let base = a.hub.stats();
    let base_received = broker.stats().received;

    // The documented encoding, written out by hand.
    assert_eq!(encode_token("a.b"), "a%2Eb");
    raw_pub_async(
        MACHINE_NATS,
        format!("{prefix}.topic.a%2Eb"),
        br#"{"v":1,"event":"e","data":"from raw"}"#.to_vec(),
    )
    .await;
    let event = client.next().await.expect("raw PUB");
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("e", "from raw")
    );

    let user_subject = format!("{prefix}.user.{}", encode_token("jürgen x"));
    assert_eq!(user_subject, format!("{prefix}.user.j%C3%BCrgen%20x"));
    raw_pub_async(
        MACHINE_NATS,
        user_subject,
        br#"{"v":1,"id":"7","data":"to user\nline 2","retry":1500}"#.to_vec(),
    )
    .await;
    let event = client.next().await.expect("raw PUB to the user");
    assert_eq!(event.id, "7");
    assert_eq!(event.data, "to user\nline 2");
    assert_eq!(event.retry, Some(Duration::from_millis(1500)));

    raw_pub_async(
        MACHINE_NATS,
        format!("{prefix}.node.a"),
        format!(
            r#"{{"v":1,"data":"to conn","conn":"{}","unknown":"ignored"}}"#,
            client.connection_id
        )
        .into_bytes(),
    )
    .await;
    expect_data(&mut client, "client", &["to conn"]).await;
    raw_pub_async(
        MACHINE_NATS,
        format!("{prefix}.all"),
        br#"{"v":1,"data":"to all"}"#.to_vec(),
    )
    .await;
    expect_data(&mut client, "client", &["to all"]).await;
    expect_data(&mut other, "other", &["to all"]).await;
    let mut published = 4;

    if let Some(cli) = nats_cli() {
        let subject = format!("{prefix}.topic.{}", encode_token("a.b"));
        nats_cli_pub(
            &cli,
            &url,
            &subject,
            r#"{"v":1,"event":"cli","data":"from the nats CLI"}"#,
        );
        let event = client.next().await.expect("nats pub");
        assert_eq!(
            (event.event.as_str(), event.data.as_str()),
            ("cli", "from the nats CLI")
        );
        published += 1;
    } else {
        eprintln!("note: no `nats` CLI installed; only the raw protocol publisher ran");
    }
    all_quiet(vec![&mut client, &mut other]).await;
    let stats = a.hub.stats();
    assert_eq!(
        (stats.bus_in, stats.bus_malformed),
        (base.bus_in + published, base.bus_malformed)
    );
    assert_eq!(broker.stats().received, base_received + published);
}

/// Topic and user names that are not valid NATS subject tokens (dots,
/// wildcards, spaces, non-ASCII, `%`, a name spelling another's token, the
/// longest allowed name), each followed by exactly one client on hub A (plus
/// `a`): every name published from hub B reaches exactly its client and no
/// one else, so `>` does not reach `a`, `%41` is not `A`, and so on. Empty
/// names are refused, and the empty name's token `%` reaches no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_reach_exactly_their_followers() {
    let Some(url) = machine_nats() else {
        return;
    };
    let prefix = unique_prefix();
    let config = || NatsConfig::new(url.clone()).prefix(prefix.clone());
    let (a, _) = nats_node(config(), "a").await;
    let (b, _) = nats_node(config(), "b").await;

    let longest = "é".repeat(sse_cluster::hub::MAX_NAME_LEN / 2);
    let names: Vec<String> = [
        "a",
        "a.b",
        "*",
        ">",
        "a.*",
        "a.>",
        "a b",
        "ünï.cødé",
        "%41",
        "A",
        "%",
        " ",
        "a%2Eb",
        "\t",
        "x\r\ny",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([longest])
    .collect();
    let tokens: BTreeSet<String> = names.iter().map(|n| encode_token(n)).collect();
    assert_eq!(tokens.len(), names.len(), "tokens collide");

    let mut clients = Vec::new();
    for kind in ["topic", "user"] {
        for (i, name) in names.iter().enumerate() {
            let client = SseClient::connect(a.addr, &format!("/events?{kind}={}", q(name))).await;
            clients.push((format!("{kind}:{i}"), client));
        }
    }
    for kind in ["topic", "user"] {
        for name in &names {
            settle(
                MACHINE_NATS,
                &a.hub,
                &format!("{prefix}.{kind}.{}", encode_token(name)),
            )
            .await;
        }
    }
    let base = a.hub.stats();
    let mut wire = RawConnection::open(MACHINE_NATS, None).expect("raw connection");
    wire.subscribe(&format!("{prefix}.>"), 1).expect("raw SUB");
    for kind in ["topic", "user"] {
        for (i, name) in names.iter().enumerate() {
            post_ok(
                b.addr,
                &format!("/publish?{kind}={}", q(name)),
                &format!("{kind}:{i}"),
            )
            .await;
        }
    }
    for (who, client) in &mut clients {
        let event = client
            .next()
            .await
            .unwrap_or_else(|| panic!("{who}: nothing received"));
        assert_eq!(&event.data, who, "{who} got another name's event");
    }
    all_quiet(clients.iter_mut().map(|(_, c)| c).collect()).await;
    // One message per publish: no subscription of A matched a second time
    // (as a wildcard subscription would), and B heard nothing.
    let n = names.len() as u64;
    assert_eq!(a.hub.stats().bus_in, base.bus_in + 2 * n);
    assert_eq!(a.hub.stats().delivered, base.delivered + 2 * n);
    assert_eq!(a.hub.stats().bus_malformed, base.bus_malformed);
    assert_eq!(b.hub.stats().bus_in, 0);

    // Empty names are refused on both sides, and nothing can listen on the
    // empty name's token.
    for path in ["/events?topic=", "/events?user=", "/events?topic=x&topic="] {
        let client = SseClient::open(a.addr, path, &[]).await;
        assert_eq!(client.status, StatusCode::BAD_REQUEST, "{path}");
    }
    for path in ["/publish?topic=", "/publish?user="] {
        let (status, body) = post(b.addr, path, "x").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
    let err = b
        .hub
        .publish(Target::topic(""), Event::new().data("x"))
        .await
        .expect_err("empty topic");
    assert!(matches!(err, PublishError::InvalidTarget(_)), "{err:?}");
    let too_long = "x".repeat(sse_cluster::hub::MAX_NAME_LEN + 1);
    let err = a
        .hub
        .connect(Subscription::new().topic(too_long))
        .await
        .expect_err("name too long");
    assert!(
        matches!(err, ConnectError::InvalidSubscription(_)),
        "{err:?}"
    );
    assert_eq!(encode_token(""), "%");
    for kind in ["topic", "user"] {
        raw_pub_async(
            MACHINE_NATS,
            format!("{prefix}.{kind}.%"),
            br#"{"v":1,"data":"empty name"}"#.to_vec(),
        )
        .await;
    }
    all_quiet(clients.iter_mut().map(|(_, c)| c).collect()).await;
    assert_eq!(a.hub.stats().bus_in, base.bus_in + 2 * n);

    // On the wire: one subject per publish, `{prefix}.{kind}.{token}`, each
    // exactly three tokens below the prefix' own.
    let expected: Vec<String> = ["topic", "user"]
        .iter()
        .flat_map(|kind| {
            let prefix = &prefix;
            names
                .iter()
                .map(move |name| format!("{prefix}.{kind}.{}", encode_token(name)))
        })
        .chain([format!("{prefix}.topic.%"), format!("{prefix}.user.%")])
        .collect();
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        while let Some((subject, _)) = wire
            .next_msg(Duration::from_millis(500))
            .expect("raw subscriber")
        {
            seen.push(subject);
            if seen.len() > 100 {
                break;
            }
        }
        seen
    })
    .await
    .expect("raw subscriber");
    assert_eq!(seen, expected);
    for subject in &seen {
        assert_eq!(subject.split('.').count(), 3, "{subject}");
        assert!(!subject.contains(['*', '>', ' ']), "{subject}");
    }
}

/// Hand-written garbage on subscribed subjects (not JSON, another version,
/// no version, an event name with a newline, an id with NUL, invalid UTF-8,
/// an empty payload, node-subject messages without or with a bad `conn`) is
/// counted in `bus_malformed` and ignored; a valid message after it still
/// arrives, and so does the hub's own traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bus_messages_are_counted_and_ignored() {
    let Some(url) = machine_nats() else {
        return;
    };
    let prefix = unique_prefix();
    let (a, _) = nats_node(NatsConfig::new(url.clone()).prefix(prefix.clone()), "a").await;
    let (b, _) = nats_node(NatsConfig::new(url).prefix(prefix.clone()), "b").await;
    let mut client = SseClient::connect(a.addr, "/events?topic=t").await;
    wait_live(&mut client, &b.hub, Target::topic("t")).await;
    let base = a.hub.stats();
    let topic = format!("{prefix}.topic.t");
    let node = format!("{prefix}.node.a");
    let garbage: [(&str, &[u8]); 11] = [
        (&topic, b"not json"),
        (&topic, br#"{"v":2,"event":"e","data":"future"}"#),
        (&topic, br#"{"data":"no version"}"#),
        (&topic, br#"{"v":1,"event":"x\ninjected: 1","data":"d"}"#),
        (&topic, br#"{"v":1,"event":"x\r","data":"d"}"#),
        (&topic, br#"{"v":1,"id":"a\u0000b"}"#),
        (&topic, b"\xff\x00\xfe"),
        (&topic, b"{\"v\":1,\"data\":\"\xff\xfe\"}"),
        (&topic, b""),
        (&node, br#"{"v":1,"data":"no conn"}"#),
        (&node, br#"{"v":1,"data":"bad conn","conn":"nope"}"#),
    ];
    let count = garbage.len() as u64;
    let batch: Vec<(String, Vec<u8>)> = garbage
        .iter()
        .map(|(s, p)| (s.to_string(), p.to_vec()))
        .chain([(
            topic.clone(),
            br#"{"v":1,"event":"e","data":"ok"}"#.to_vec(),
        )])
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut conn = RawConnection::open(MACHINE_NATS, None).expect("raw connection");
        for (subject, payload) in batch {
            conn.publish(&subject, &payload).expect("raw PUB");
        }
        conn.ping().expect("PONG");
    })
    .await
    .expect("raw publisher");
    let event = client
        .next()
        .await
        .expect("valid message after the garbage");
    assert_eq!((event.event.as_str(), event.data.as_str()), ("e", "ok"));
    client.expect_quiet().await;
    assert_eq!(stat(a.addr, "bus_malformed").await, count);
    assert_eq!(stat(a.addr, "bus_in").await, base.bus_in + count + 1);
    assert_eq!(stat(a.addr, "delivered").await, base.delivered + 1);
    assert_eq!(a.hub.broker_status(), BrokerStatus::Up);

    // And the hub's own traffic still flows on the same subscription.
    post_ok(b.addr, "/publish?topic=t", "still here").await;
    expect_data(&mut client, "client", &["still here"]).await;
    assert_eq!(stat(a.addr, "bus_malformed").await, count);
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

/// A token (`nats-server --auth`) authenticates with `NatsConfig::token`; a
/// wrong or missing token leaves the broker Down (never Up), publishes fail
/// with a transient error, `/healthz` says 503, nothing panics, and the token
/// does not leak into errors or `Debug`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth() {
    let Some(server) = NatsServer::start_with(false, &["--auth", "s3cret-token"]) else {
        return;
    };
    let prefix = unique_prefix();
    let good = || fast_config(&server.url(), &prefix).token("s3cret-token");
    let (a, _) = nats_node(good(), "a").await;
    let (b, _) = nats_node(good(), "b").await;
    assert!(both(&a.hub, &b.hub, BrokerStatus::Up));
    let mut client = SseClient::connect(a.addr, "/events?topic=t").await;
    wait_live(&mut client, &b.hub, Target::topic("t")).await;
    post_ok(b.addr, "/publish?topic=t", "authenticated").await;
    expect_data(&mut client, "client", &["authenticated"]).await;
    // Unauthenticated raw clients are refused by this server.
    let refused = RawConnection::open(&server.addr(), None).err();
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("Authorization")),
        "{refused:?}"
    );

    for (what, config) in [
        (
            "wrong token",
            fast_config(&server.url(), &prefix).token("hunter2-wrong"),
        ),
        ("no token", fast_config(&server.url(), &prefix)),
    ] {
        let (bad, broker) = nats_node(config, "bad").await;
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
        let stats = broker.stats();
        assert_eq!((stats.connects, stats.publish_failed), (0, 2), "{what}");
        // Connecting a client still works (degraded): its interest is kept.
        let local = bad
            .hub
            .connect(Subscription::new().topic("t"))
            .await
            .expect("connect while down");
        drop(local);
        bad.hub.shutdown().await;
    }
    client.expect_quiet().await;
}

// ---------------------------------------------------------------------------
// Interest at the server
// ---------------------------------------------------------------------------

/// The subjects the server holds for the hub's connection, from the
/// monitoring endpoint (`/connz?subs=1`) of a server started with `-m`.
async fn server_subjects(monitor: SocketAddr) -> BTreeSet<String> {
    let (status, body) = get(monitor, "/connz?subs=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("connz json");
    let mut subjects = BTreeSet::new();
    for conn in json["connections"].as_array().into_iter().flatten() {
        if conn["name"] == "sse-cluster" {
            for sub in conn["subscriptions_list"].as_array().into_iter().flatten() {
                let subject = sub.as_str().expect("subject");
                // async-nats' own reply inbox (used by the broker's round
                // trips), not a bus subject.
                if !subject.starts_with("_INBOX.") {
                    subjects.insert(subject.to_owned());
                }
            }
        }
    }
    subjects
}

/// The server itself (its monitoring endpoint) shows the hub subscribed to
/// exactly the subjects its clients need: a topic or user subject appears
/// with the first follower and disappears with the last, and shutdown
/// leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_interest_follows_clients() {
    let monitor_port = support::server::free_port();
    let Some(server) = NatsServer::start_with(true, &["-m", &monitor_port.to_string()]) else {
        return;
    };
    let monitor = SocketAddr::from(([127, 0, 0, 1], monitor_port));
    let prefix = unique_prefix();
    let (a, _) = nats_node(NatsConfig::new(server.url()).prefix(prefix.clone()), "a").await;
    let subjects = |list: &[&str]| -> BTreeSet<String> {
        list.iter().map(|s| format!("{prefix}.{s}")).collect()
    };
    // Waits until the server shows `want`, polling the monitoring endpoint.
    let expect = |want: BTreeSet<String>| async move {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = server_subjects(monitor).await;
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server has {now:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    expect(subjects(&["node.a", "all"])).await;

    let both = SseClient::connect(a.addr, "/events?topic=t&user=u%3E").await;
    let topic_only = SseClient::connect(a.addr, "/events?topic=t").await;
    expect(subjects(&["node.a", "all", "topic.t", "user.u%3E"])).await;
    drop(both);
    expect(subjects(&["node.a", "all", "topic.t"])).await;
    drop(topic_only);
    expect(subjects(&["node.a", "all"])).await;
    assert_eq!(a.hub.stats().subscriptions, 2);

    a.hub.shutdown().await;
    expect(BTreeSet::new()).await;
}

// ---------------------------------------------------------------------------
// Subscriptions in place when the hub says so
// ---------------------------------------------------------------------------

/// `Hub::connect` "returns only once the node's subscription is in place,
/// so an event published after `connect` returns is never missed for lack
/// of a subscription" (crate docs). 1500 times: a connection to a fresh topic
/// on hub A, then at once a publish to that topic on hub B, both on the
/// machine's NATS over loopback; every event must reach its connection.
///
/// FAILS (bug in `NatsBroker::subscribe`): it "flushes" after the SUB, but
/// async-nats' `Client::flush` only writes the client's buffer to the socket
/// (no PING/PONG round trip), so `connect` returns before the server has
/// processed the SUB, and B's PUB, on another connection, can be routed
/// first. Run alone, about 1 % of these events are lost (4 to 24 of 500
/// per run); under the load of the whole suite fewer, so it may pass now
/// and then: `…_over_a_slow_link` below fails deterministically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_right_after_connect_are_delivered() {
    let Some(url) = machine_nats() else {
        return;
    };
    let prefix = unique_prefix();
    let config = || NatsConfig::new(url.clone()).prefix(prefix.clone());
    let (a, _) = nats_node(config(), "a").await;
    let (b, _) = nats_node(config(), "b").await;
    const ROUNDS: u64 = 1500;
    let mut connections = Vec::new();
    for i in 0..ROUNDS {
        let topic = format!("fresh-{i}");
        let conn = a
            .hub
            .connect(Subscription::new().topic(topic.clone()))
            .await
            .expect("connect");
        b.hub
            .publish(Target::topic(topic), Event::new().data(i.to_string()))
            .await
            .expect("publish");
        connections.push(conn);
    }
    // A lost event is lost for good; those in flight arrive within ms.
    let deadline = Instant::now() + Duration::from_secs(2);
    while a.hub.stats().delivered < ROUNDS && Instant::now() < deadline {
        tokio::time::sleep(TICK).await;
    }
    let stats = a.hub.stats();
    assert_eq!(
        stats.delivered,
        ROUNDS,
        "{} of {ROUNDS} events published right after Hub::connect returned never \
         reached their connection (A received {} bus messages): {stats:?}",
        ROUNDS - stats.delivered,
        stats.bus_in
    );
}

/// The same promise when the node is a little farther from its NATS server
/// (a relay adds 20 ms to every byte the node sends): an SSE client gets its
/// `connected` event, then an event is published to its topic on hub B
/// (directly connected); the client must get it.
///
/// FAILS deterministically, for the reason given at
/// `events_published_right_after_connect_are_delivered`: the SUB is still
/// on its way to the server when `connect` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_right_after_connect_are_delivered_over_a_slow_link() {
    let Some(url) = machine_nats() else {
        return;
    };
    let prefix = unique_prefix();
    let link = SlowLink::start(MACHINE_NATS, Duration::from_millis(20)).await;
    let (a, _) = nats_node(NatsConfig::new(link.url()).prefix(prefix.clone()), "a").await;
    let (b, _) = nats_node(NatsConfig::new(url).prefix(prefix), "b").await;
    assert!(both(&a.hub, &b.hub, BrokerStatus::Up));
    let mut client = SseClient::connect(a.addr, "/events?topic=t").await;
    post_ok(b.addr, "/publish?topic=t", "right after connect").await;
    // Through the relay, an event takes about 20 ms; 1 s is plenty.
    let event = client.next_within(Duration::from_secs(1)).await;
    assert_eq!(
        event.as_ref().map(|e| e.data.as_str()),
        Some("right after connect"),
        "the event published after the client was connected never arrived \
         (A's bus_in: {})",
        a.hub.stats().bus_in
    );
}

/// `BrokerStatus::Up` means "publishes go out and subscriptions are live",
/// and the gap event tells a client what it may have missed *before* it.
/// Hub A reaches NATS through a relay adding 20 ms to what A sends; the
/// relay cuts A's connection; A reconnects by itself. As soon as A reports
/// Up again, hub B publishes to the topic A's client follows: the client
/// must get the gap event and then that event.
///
/// FAILS deterministically (bug in `NatsBroker`): the broker turns
/// async-nats' `Event::Connected` into Up, but async-nats emits it when the
/// handshake completes, before it re-sends the subscriptions
/// (`ConnectionHandler::handle_reconnect`), so events published in the
/// window between Up (and the gap event) and the SUBs reaching the server
/// are lost with no gap event after them. On plain loopback the window is
/// tiny but real (measured: ~1 in 60 reconnects lost an event published the
/// moment Up was reported).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_after_a_reconnect_means_subscriptions_are_back() {
    let Some(url) = machine_nats() else {
        return;
    };
    let prefix = unique_prefix();
    let link = SlowLink::start(MACHINE_NATS, Duration::from_millis(20)).await;
    let (a, a_broker) = nats_node(fast_config(&link.url(), &prefix), "a").await;
    let (b, _) = nats_node(NatsConfig::new(url).prefix(prefix), "b").await;
    let mut client = SseClient::connect(a.addr, "/events?topic=t").await;
    // The subscription reaches the server ~20 ms after `connect` returned
    // (see the test above): probe until an event gets through.
    let mut probes = 0;
    loop {
        probes += 1;
        assert!(probes <= 50, "the subscription never became live");
        post_ok(b.addr, "/publish?topic=t", "probe").await;
        if let Some(event) = client.next_within(Duration::from_millis(100)).await {
            assert_eq!(event.data, "probe");
            break;
        }
    }

    let mut status = a_broker.status();
    link.cut();
    let down = tokio::time::timeout(WAIT, async {
        status
            .wait_for(|s| *s == BrokerStatus::Down)
            .await
            .map(|_| ())
    })
    .await;
    assert!(matches!(down, Ok(Ok(()))), "A never noticed the cut");
    let up = tokio::time::timeout(WAIT, async {
        status
            .wait_for(|s| *s == BrokerStatus::Up)
            .await
            .map(|_| ())
    })
    .await;
    assert!(matches!(up, Ok(Ok(()))), "A did not reconnect");
    assert_eq!(b.hub.broker_status(), BrokerStatus::Up);
    b.hub
        .publish(Target::topic("t"), Event::new().data("after up"))
        .await
        .expect("publish after A is up");

    // The gap event (queued when A's hub saw Up) and B's event, in either
    // order: both were sent after Up.
    let mut got = Vec::new();
    for _ in 0..2 {
        match client.next_within(Duration::from_secs(1)).await {
            Some(event) => got.push((event.event, event.data)),
            None => break,
        }
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("message".to_owned(), "after up".to_owned()),
            (GAP_EVENT.to_owned(), r#"{"reason":"bus"}"#.to_owned()),
        ],
        "B published after A reported Up (and A's client got its gap event), \
         yet the event never reached A's client"
    );
}

// ---------------------------------------------------------------------------
// Order
// ---------------------------------------------------------------------------

/// Successive publishes to one connection (`Target::Connection`, one node
/// subject) from another hub arrive in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_events_keep_publish_order() {
    let Some(url) = machine_nats() else {
        return;
    };
    let prefix = unique_prefix();
    let config = || NatsConfig::new(url.clone()).prefix(prefix.clone());
    let (a, _) = nats_node_with(config(), "a", deep_queues()).await;
    let (b, _) = nats_node(config(), "b").await;
    let mut client = SseClient::connect(a.addr, "/events").await;
    let id = sse_cluster::ConnectionId::parse(&client.connection_id).expect("connection id");
    const N: u64 = 300;
    for i in 0..N {
        b.hub
            .publish(
                Target::Connection(id.clone()),
                Event::new().data(i.to_string()),
            )
            .await
            .expect("publish");
    }
    for i in 0..N {
        let event = client
            .next()
            .await
            .unwrap_or_else(|| panic!("no event {i}"));
        assert_eq!(event.data, i.to_string());
    }
    client.expect_quiet().await;
}

/// Order over NATS is per target (crate docs, "Delivery guarantees"): one
/// task on hub B publishes 300 events, cycling through a topic, a user and
/// everyone; a client on hub A that follows the topic and is the user gets
/// all 300 exactly once, and each target's events in publish order. (Across
/// targets NATS gives no order: async-nats hands each subject's messages to
/// its own subscription channel, so different subjects may overtake each
/// other; the crate documents this.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_target_events_keep_per_target_order_on_one_connection() {
    let Some(url) = machine_nats() else {
        return;
    };
    let prefix = unique_prefix();
    let config = || NatsConfig::new(url.clone()).prefix(prefix.clone());
    let (a, _) = nats_node_with(config(), "a", deep_queues()).await;
    let (b, _) = nats_node(config(), "b").await;
    let mut client = SseClient::connect(a.addr, "/events?topic=t&user=u").await;
    wait_live(&mut client, &b.hub, Target::topic("t")).await;
    wait_live(&mut client, &b.hub, Target::user("u")).await;
    const N: u64 = 300;
    for i in 0..N {
        let target = match i % 3 {
            0 => Target::topic("t"),
            1 => Target::user("u"),
            _ => Target::All,
        };
        b.hub
            .publish(target, Event::new().data(i.to_string()))
            .await
            .expect("publish");
    }
    let mut got = Vec::new();
    for _ in 0..N {
        let event = client.next().await.unwrap_or_else(|| {
            panic!(
                "only {} events: {got:?}; A: {:?}; raw tail: {:?}",
                got.len(),
                a.hub.stats(),
                client.raw().chars().rev().take(200).collect::<String>()
            )
        });
        got.push(event.data.parse::<u64>().expect("a sequence number"));
    }
    client.expect_quiet().await;
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..N).collect::<Vec<_>>(),
        "each event exactly once"
    );
    for target in 0..3 {
        let per_target: Vec<u64> = got.iter().copied().filter(|i| i % 3 == target).collect();
        let inversions: Vec<(u64, u64)> = per_target
            .windows(2)
            .filter(|w| w[0] > w[1])
            .map(|w| (w[0], w[1]))
            .collect();
        assert!(
            inversions.is_empty(),
            "target {target}: out of publish order (earlier, later): {inversions:?}"
        );
    }
}

/// Connections made while NATS is down, each on a new user channel, neither
/// block nor pile up in the client's command queue: they return at once, and
/// once NATS is back their subjects are subscribed and deliver. Shutdown does
/// not wait for the server either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_during_an_outage_are_subscribed_when_nats_is_back() {
    let Some(mut server) = NatsServer::start(false) else {
        return;
    };
    let prefix = unique_prefix();
    let (a, _) = nats_node(fast_config(&server.url(), &prefix), "a").await;
    let (b, _) = nats_node(fast_config(&server.url(), &prefix), "b").await;
    tokio::task::block_in_place(|| server.kill());
    wait_until("both hubs down", WAIT, || {
        both(&a.hub, &b.hub, BrokerStatus::Down)
    })
    .await;

    // Far more new channels than async-nats' command queue (2048) holds.
    let started = Instant::now();
    for i in 0..3000 {
        let conn = a
            .hub
            .connect(Subscription::new().user(format!("churn-{i}")))
            .await
            .expect("connect while down");
        drop(conn);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let mut client = SseClient::connect(a.addr, "/events?user=late").await;

    tokio::task::block_in_place(|| server.restart());
    wait_until("both hubs up", Duration::from_secs(15), || {
        both(&a.hub, &b.hub, BrokerStatus::Up)
    })
    .await;
    let gap = client.next().await.expect("gap event");
    assert_eq!(gap.event, GAP_EVENT);
    post_ok(b.addr, "/publish?user=late", "after").await;
    expect_data(&mut client, "client", &["after"]).await;

    tokio::task::block_in_place(|| server.kill());
    wait_until("a down", WAIT, || {
        a.hub.broker_status() == BrokerStatus::Down
    })
    .await;
    let started = Instant::now();
    a.hub.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Slow consumers
// ---------------------------------------------------------------------------

/// A sink that is slow on purpose (each message blocks the broker's
/// forwarding task), recording when each loss notice came.
struct StallingSink {
    stall: Duration,
    lost: std::sync::Mutex<Vec<Instant>>,
}

impl sse_cluster::broker::BusSink for StallingSink {
    fn deliver(&self, _: &sse_cluster::broker::Channel, _: bytes::Bytes) {
        std::thread::sleep(self.stall);
    }

    fn messages_lost(&self, _: Option<&sse_cluster::broker::Channel>) {
        self.lost.lock().expect("lock").push(Instant::now());
    }

    fn status_changed(&self, _: BrokerStatus) {}
}

/// Two bursts of drops half a second apart (the client library sends one
/// notice per dropped message): the hub hears of the first at once and of
/// the second too, at the end of the first's second, not never (one notice
/// a second, dropping the rest, left the second burst's losses untold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_burst_of_slow_consumer_drops_is_told() {
    let Some(url) = machine_nats() else {
        return;
    };
    let mut config = NatsConfig::new(url).prefix(unique_prefix());
    config.subscription_capacity = 1;
    let broker = NatsBroker::new(config).expect("nats broker");
    let sink = Arc::new(StallingSink {
        stall: Duration::from_millis(150),
        lost: std::sync::Mutex::new(Vec::new()),
    });
    broker.start(sink.clone()).await.expect("start");
    let topic = sse_cluster::broker::Channel::Topic("t".into());
    broker.subscribe(&topic).await.expect("subscribe");
    let burst = |n: usize| {
        let broker = broker.clone();
        let topic = topic.clone();
        async move {
            for i in 0..n {
                let payload = bytes::Bytes::from(format!(r#"{{"v":1,"data":"{i}"}}"#));
                broker.publish(&topic, payload).await.expect("publish");
            }
        }
    };
    let started = Instant::now();
    burst(20).await;
    wait_until("a first notice", WAIT, || broker.stats().slow_consumers > 0).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = broker.stats().slow_consumers;
    let second = Instant::now();
    burst(20).await;
    wait_until("drops of the second burst", WAIT, || {
        broker.stats().slow_consumers > before
    })
    .await;
    assert!(
        second.duration_since(started) < Duration::from_millis(900),
        "the second burst must fall inside the first notice's second"
    );
    wait_until("a notice after the second burst", WAIT, || {
        sink.lost.lock().expect("lock").iter().any(|&t| t > second)
    })
    .await;
    let lost = sink.lost.lock().expect("lock").clone();
    assert!(
        lost[0] < second,
        "the first burst is told at once: {lost:?}"
    );
    for pair in lost.windows(2) {
        assert!(
            pair[1].duration_since(pair[0]) >= Duration::from_millis(900),
            "at most one notice a second: {lost:?}"
        );
    }
    broker.shutdown().await.expect("shutdown");
}
