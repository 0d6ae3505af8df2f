//! Multi-node behaviour on hubs joined by the in-memory broker, over real TCP,
//! with streams parsed by a real SSE parser.

#![cfg(feature = "axum")]

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::StatusCode;
use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::broker::{Broker, Channel};
use sse_cluster::{Event, EventError, Hub, OverflowPolicy, StreamConfig, Subscription, Target};
use support::{cluster, cluster_with, get, post, stat, SseClient, WAIT};

#[tokio::test]
async fn topic_events_cross_nodes() {
    let (_bus, nodes) = cluster(3).await;
    let mut a = SseClient::connect(nodes[0].addr, "/events?topic=news").await;
    let mut b = SseClient::connect(nodes[1].addr, "/events?topic=news&topic=sport").await;
    let mut other = SseClient::connect(nodes[0].addr, "/events?topic=weather").await;

    let (status, body) = post(
        nodes[2].addr,
        "/publish?topic=news&event=headline",
        "line 1\nline 2",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(body.contains("\"id\""));
    for client in [&mut a, &mut b] {
        let event = client.next().await.expect("event");
        assert_eq!(event.event, "headline");
        assert_eq!(event.data, "line 1\nline 2");
    }
    other.expect_quiet().await;
    a.expect_quiet().await;
    b.expect_quiet().await;
}

#[tokio::test]
async fn user_events_reach_every_connection_of_the_user_once() {
    let (_bus, nodes) = cluster(3).await;
    let mut on_a = SseClient::connect(nodes[0].addr, "/events?user=42").await;
    let mut on_b = SseClient::connect(nodes[1].addr, "/events?user=42").await;
    let mut also_b = SseClient::connect(nodes[1].addr, "/events?user=42&topic=x").await;
    let mut stranger = SseClient::connect(nodes[1].addr, "/events?user=7").await;

    for i in 0..5 {
        let (status, _) = post(nodes[2].addr, "/publish?user=42", format!("m{i}")).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    for client in [&mut on_a, &mut on_b, &mut also_b] {
        for i in 0..5 {
            assert_eq!(client.next().await.expect("event").data, format!("m{i}"));
        }
        client.expect_quiet().await;
    }
    stranger.expect_quiet().await;
}

#[tokio::test]
async fn connection_events_reach_only_that_connection() {
    let (bus, nodes) = cluster(3).await;
    let mut target = SseClient::connect(nodes[0].addr, "/events?user=u").await;
    let mut sibling = SseClient::connect(nodes[0].addr, "/events?user=u").await;
    let id = target.connection_id.clone();
    assert!(id.starts_with("n0."), "{id}");

    let path = format!("/publish?connection={id}");
    let (status, _) = post(nodes[1].addr, &path, "remote").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(target.next().await.expect("event").data, "remote");

    // Held locally: delivered without touching the bus.
    let before = bus.published();
    let (status, _) = post(nodes[0].addr, &path, "local").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(target.next().await.expect("event").data, "local");
    assert_eq!(bus.published(), before);
    sibling.expect_quiet().await;

    // Malformed and unknown ids are refused or go nowhere, never a panic.
    let (status, _) = post(nodes[1].addr, "/publish?connection=nope", "x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(nodes[1].addr, "/publish?connection=n0.stale.1", "x").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    target.expect_quiet().await;
}

#[tokio::test]
async fn broadcast_reaches_everyone() {
    let (_bus, nodes) = cluster(3).await;
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(SseClient::connect(node.addr, "/events").await);
        clients.push(SseClient::connect(node.addr, "/events?topic=t&user=u").await);
    }
    let (status, _) = post(nodes[1].addr, "/publish?event=all", "hello").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for client in &mut clients {
        let event = client.next().await.expect("event");
        assert_eq!(
            (event.event.as_str(), event.data.as_str()),
            ("all", "hello")
        );
        client.expect_quiet().await;
    }
}

#[tokio::test]
async fn nodes_hear_only_what_their_clients_need() {
    let (bus, nodes) = cluster(3).await;
    let mut client = SseClient::connect(nodes[0].addr, "/events?topic=only-a&user=ua").await;
    let topic = Channel::Topic("only-a".into());
    assert_eq!(bus.subscribers(&topic), 1);
    let bus_in_b = stat(nodes[1].addr, "bus_in").await;
    let bus_in_c = stat(nodes[2].addr, "bus_in").await;

    for path in ["/publish?topic=only-a", "/publish?user=ua"] {
        for _ in 0..10 {
            assert_eq!(post(nodes[1].addr, path, "x").await.0, StatusCode::ACCEPTED);
        }
    }
    for _ in 0..20 {
        client.next().await.expect("event");
    }
    assert_eq!(
        stat(nodes[1].addr, "bus_in").await,
        bus_in_b,
        "publisher got no echo"
    );
    assert_eq!(
        stat(nodes[2].addr, "bus_in").await,
        bus_in_c,
        "uninterested node got nothing"
    );
    assert_eq!(stat(nodes[0].addr, "bus_in").await, 20);

    // The last subscriber leaving ends the node's interest.
    drop(client);
    let deadline = tokio::time::Instant::now() + WAIT;
    while bus.subscribers(&topic) > 0 || bus.subscribers(&Channel::User("ua".into())) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "still subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(nodes[0].hub.registry().len(), 0);
}

#[tokio::test]
async fn local_fast_path_delivers_exactly_once() {
    let (_bus, nodes) = cluster(2).await;
    let mut local = SseClient::connect(nodes[0].addr, "/events?topic=t&user=u").await;
    let mut remote = SseClient::connect(nodes[1].addr, "/events?topic=t").await;
    for path in ["/publish?topic=t", "/publish?user=u", "/publish"] {
        assert_eq!(
            post(nodes[0].addr, path, "once").await.0,
            StatusCode::ACCEPTED
        );
    }
    for _ in 0..3 {
        assert_eq!(local.next().await.expect("event").data, "once");
    }
    local.expect_quiet().await;
    assert_eq!(remote.next().await.expect("event").data, "once");
    assert_eq!(remote.next().await.expect("event").data, "once");
    remote.expect_quiet().await;
    assert_eq!(stat(nodes[0].addr, "bus_echo").await, 3);
}

#[tokio::test]
async fn bad_event_fields_are_refused() {
    let (_bus, nodes) = cluster(2).await;
    let mut client = SseClient::connect(nodes[1].addr, "/events?topic=t").await;
    for path in [
        "/publish?topic=t&event=a%0Aid:%201",
        "/publish?topic=t&event=a%0D",
    ] {
        let (status, body) = post(nodes[0].addr, path, "x").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("error"), "{body}");
    }
    let (status, _) = post(
        nodes[0].addr,
        "/publish?topic=t",
        Bytes::from_static(b"\xff\xfe"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(nodes[0].addr, "/publish?topic=t&user=u", "x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    client.expect_quiet().await;
    assert_eq!(stat(nodes[0].addr, "published").await, 0);

    assert_eq!(
        Event::new().event("a\nb").unwrap_err(),
        EventError::InvalidName
    );
    assert_eq!(Event::new().id("a\0b").unwrap_err(), EventError::InvalidId);
}

#[tokio::test]
async fn malformed_bus_messages_are_counted_and_ignored() {
    let (bus, nodes) = cluster(1).await;
    let mut client = SseClient::connect(nodes[0].addr, "/events?topic=t").await;
    let outsider = bus.broker();
    let garbage: [&[u8]; 6] = [
        b"not json",
        b"{\"v\":2,\"data\":\"future\"}",
        b"{\"data\":\"no version\"}",
        b"{\"v\":1,\"event\":\"x\\ninjected: 1\"}",
        b"{\"v\":1,\"id\":\"a\\u0000b\"}",
        b"\xff\x00\xfe",
    ];
    for payload in garbage {
        outsider
            .publish(&Channel::Topic("t".into()), Bytes::from_static(payload))
            .await
            .expect("publish");
    }
    outsider
        .publish(
            &Channel::Node("n0".into()),
            Bytes::from_static(b"{\"v\":1,\"data\":\"no conn\"}"),
        )
        .await
        .expect("publish");
    // A foreign, well-formed message on the same subscription still arrives.
    outsider
        .publish(
            &Channel::Topic("t".into()),
            Bytes::from_static(b"{\"v\":1,\"data\":\"ok\",\"event\":\"e\"}"),
        )
        .await
        .expect("publish");
    let event = client.next().await.expect("event");
    assert_eq!((event.event.as_str(), event.data.as_str()), ("e", "ok"));
    client.expect_quiet().await;
    assert_eq!(stat(nodes[0].addr, "bus_malformed").await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_without_stalling_others() {
    let (_bus, nodes) = cluster_with(2, |b| {
        b.stream_config(
            StreamConfig::default()
                .keep_alive(None)
                .queue_limits(16, 256 * 1024),
        )
    })
    .await;
    // The slow client connects and never reads: its socket buffers fill up,
    // then its queue, and the overflow policy closes it.
    let slow = SseClient::open(nodes[0].addr, "/events?topic=t", &[]).await;
    let mut fast = SseClient::connect(nodes[0].addr, "/events?topic=t").await;
    let payload = "x".repeat(32 * 1024);
    // Publish until the slow one has overflowed (socket buffers first, so
    // how much that takes depends on the kernel), at most 4000 × 32 KiB.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut got = 0usize;
        loop {
            let event = fast
                .next()
                .await
                .unwrap_or_else(|| panic!("fast client stalled at {got}"));
            if event.id == "end" {
                return got;
            }
            assert_eq!(event.id, got.to_string());
            got += 1;
            progress_tx.send_replace(got);
        }
    });
    let mut sent = 0usize;
    while nodes[0].hub.stats().overflow_closed == 0 {
        assert!(sent < 4000, "the slow client never overflowed");
        // Keep the fast client within a few events of the publisher, as a
        // client that keeps up would be.
        progress
            .wait_for(|&got| got + 4 >= sent)
            .await
            .expect("reader alive");
        let event = Event::new()
            .id(sent.to_string())
            .unwrap()
            .data(payload.clone());
        nodes[1]
            .hub
            .publish(Target::topic("t"), event)
            .await
            .expect("publish");
        sent += 1;
    }
    let end = Event::new().id("end").unwrap().data("");
    nodes[1]
        .hub
        .publish(Target::topic("t"), end)
        .await
        .expect("publish");
    assert_eq!(reader.await.expect("fast client got every event"), sent);
    assert_eq!(stat(nodes[0].addr, "overflow_closed").await, 1);
    // The overflowed stream is unregistered when its body is dropped, the
    // next time the server polls it: soon, not at once.
    support::bus::wait_until("the slow one unregistered", WAIT, || {
        nodes[0].hub.registry().topic_connections("t") == 1
    })
    .await;
    drop(slow);
}

#[tokio::test]
async fn drop_policy_counts_and_signals_the_gap() {
    let hub = Hub::builder()
        .stream_config(
            StreamConfig::default()
                .keep_alive(None)
                .initial_retry(None)
                .queue_limits(2, 1 << 20)
                .overflow(OverflowPolicy::DropEvents),
        )
        .build()
        .await
        .expect("hub");
    let mut stream = hub
        .connect(Subscription::new().topic("t"))
        .await
        .expect("connect")
        .into_stream();
    for i in 0..5 {
        hub.publish(Target::topic("t"), Event::new().data(i.to_string()))
            .await
            .expect("publish");
    }
    assert_eq!(hub.stats().dropped, 3);
    assert_eq!(&stream.next().await.expect("frame")[..], b"data: 0\n\n");
    assert_eq!(&stream.next().await.expect("frame")[..], b"data: 1\n\n");
    assert_eq!(
        &stream.next().await.expect("frame")[..],
        b"event: sse-cluster.gap\ndata: {\"reason\":\"overflow\",\"dropped\":3}\n\n"
    );
    hub.publish(Target::topic("t"), Event::new().data("5"))
        .await
        .expect("publish");
    assert_eq!(&stream.next().await.expect("frame")[..], b"data: 5\n\n");
}

#[tokio::test(start_paused = true)]
async fn keep_alive_comment_when_idle() {
    let hub = Hub::builder()
        .stream_config(StreamConfig::default().keep_alive(Some(Duration::from_secs(15))))
        .build()
        .await
        .expect("hub");
    let mut stream = hub
        .connect(Subscription::new().topic("t"))
        .await
        .expect("connect")
        .into_stream();
    let start = tokio::time::Instant::now();
    assert_eq!(&stream.next().await.expect("retry")[..], b"retry: 3000\n\n");
    assert_eq!(&stream.next().await.expect("keep-alive")[..], b":\n\n");
    assert_eq!(start.elapsed(), Duration::from_secs(15));
    tokio::time::sleep(Duration::from_secs(5)).await;
    hub.publish(Target::topic("t"), Event::new().data("x"))
        .await
        .expect("publish");
    assert_eq!(&stream.next().await.expect("event")[..], b"data: x\n\n");
    assert_eq!(&stream.next().await.expect("keep-alive")[..], b":\n\n");
    assert_eq!(start.elapsed(), Duration::from_secs(35));
}

#[tokio::test]
async fn shutdown_ends_streams_and_axum_graceful_shutdown_returns() {
    let bus = MemoryBus::new();
    let hub = Hub::builder()
        .node_id("drain")
        .broker(bus.broker())
        .shutdown_retry(Duration::from_millis(500), Duration::from_millis(900))
        .build()
        .await
        .expect("hub");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain = hub.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, support::app::router(drain.clone()))
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
                drain.shutdown().await;
            })
            .await
    });
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(SseClient::connect(addr, &format!("/events?topic=t{}", i % 3)).await);
    }
    assert_eq!(bus.subscribers(&Channel::Node("drain".into())), 1);
    let started = tokio::time::Instant::now();
    stop_tx.send(()).expect("stop");
    tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("axum graceful shutdown returned")
        .expect("join")
        .expect("serve");
    assert!(started.elapsed() < Duration::from_secs(2));
    let mut retries = std::collections::HashSet::new();
    for client in &mut clients {
        client
            .wait_end(Duration::from_secs(1))
            .await
            .expect("stream ended");
        let raw = client.raw();
        let retry: u64 = raw
            .rsplit("retry: ")
            .next()
            .and_then(|rest| rest.strip_suffix("\n\n"))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("no final retry in {raw:?}"));
        assert!((500..=900).contains(&retry), "{retry}");
        retries.insert(retry);
    }
    assert!(retries.len() > 1, "retries are randomized: {retries:?}");
    assert!(hub.registry().is_empty());
    assert_eq!(
        bus.subscribers(&Channel::Node("drain".into())),
        0,
        "unsubscribed"
    );
    assert!(hub.connect(Subscription::new()).await.is_err());
    assert!(hub.publish(Target::All, Event::new()).await.is_err());
}

#[tokio::test]
async fn bus_outage_is_reported_counted_and_signalled() {
    let bus = MemoryBus::new();
    let broker_a = bus.broker();
    let a = Hub::builder()
        .node_id("a")
        .broker(broker_a.clone())
        .build()
        .await
        .expect("hub");
    let b = Hub::builder()
        .node_id("b")
        .broker(bus.broker())
        .build()
        .await
        .expect("hub");
    let node_a = support::Node::serve(a.clone()).await;
    let node_b = support::Node::serve(b.clone()).await;
    let mut on_a = SseClient::connect(node_a.addr, "/events?topic=t").await;
    let mut on_b = SseClient::connect(node_b.addr, "/events?topic=t").await;

    broker_a.set_connected(false);
    assert_eq!(
        support::get(node_a.addr, "/healthz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        support::get(node_b.addr, "/healthz").await.0,
        StatusCode::OK
    );
    // Publishing on the cut-off node: local receivers still get it, the
    // caller gets a transient error, and the failure is counted.
    let err = a
        .publish(Target::topic("t"), Event::new().data("local only"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(
        on_a.next().await.expect("local delivery").data,
        "local only"
    );
    let (status, _) = post(node_a.addr, "/publish?topic=t", "x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(on_a.next().await.expect("local delivery").data, "x");
    // Published elsewhere during the outage: lost for the cut-off node.
    b.publish(Target::topic("t"), Event::new().data("missed by a"))
        .await
        .expect("publish");
    assert_eq!(on_b.next().await.expect("event").data, "missed by a");
    on_a.expect_quiet().await;

    broker_a.set_connected(true);
    let gap = on_a.next().await.expect("gap event");
    assert_eq!(gap.event, "sse-cluster.gap");
    assert_eq!(gap.data, r#"{"reason":"bus"}"#);
    on_b.expect_quiet().await;
    b.publish(Target::topic("t"), Event::new().data("after"))
        .await
        .expect("publish");
    assert_eq!(on_a.next().await.expect("event").data, "after");
    assert_eq!(
        support::get(node_a.addr, "/healthz").await.0,
        StatusCode::OK
    );
    let stats = a.stats();
    assert_eq!(
        (stats.bus_outages, stats.gap_events, stats.bus_errors),
        (1, 1, 2)
    );
}

#[tokio::test]
async fn too_many_topics_are_refused() {
    let hub = Hub::builder().build().await.expect("hub");
    let max = sse_cluster::hub::MAX_TOPICS_PER_CONNECTION;
    let ok = hub
        .connect(Subscription::new().topics((0..max).map(|i| format!("t{i}"))))
        .await;
    assert!(ok.is_ok());
    let err = hub
        .connect(Subscription::new().topics((0..=max).map(|i| format!("t{i}"))))
        .await
        .expect_err("one topic too many");
    assert!(
        matches!(err, sse_cluster::ConnectError::InvalidSubscription(_)),
        "{err}"
    );
}

#[tokio::test]
async fn shutdown_ends_streams_whose_client_does_not_read() {
    let hub = Hub::builder()
        .stream_config(StreamConfig::default().keep_alive(None).initial_retry(None))
        .drain_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("hub");
    // Never polled until after shutdown: like a client that stopped reading.
    let mut stream = hub
        .connect(Subscription::new().topic("t"))
        .await
        .expect("connect")
        .into_stream();
    for i in 0..10 {
        hub.publish(Target::topic("t"), Event::new().data(i.to_string()))
            .await
            .expect("publish");
    }
    let started = tokio::time::Instant::now();
    hub.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stream.next().await.is_none(),
        "queued frames were dropped, the stream ended"
    );
    assert!(hub.registry().is_empty());
}

#[tokio::test]
async fn an_outage_too_short_for_the_status_watch_still_counts() {
    let bus = MemoryBus::new();
    let broker = bus.broker();
    let hub = Hub::builder()
        .broker(broker.clone())
        .stream_config(StreamConfig::default().keep_alive(None).initial_retry(None))
        .build()
        .await
        .expect("hub");
    let mut stream = hub
        .connect(Subscription::new().topic("t"))
        .await
        .expect("connect")
        .into_stream();
    // Down and Up before any task could look at the watch.
    broker.set_connected(false);
    broker.set_connected(true);
    assert_eq!(hub.stats().bus_outages, 1);
    assert_eq!(
        &stream.next().await.expect("gap")[..],
        b"event: sse-cluster.gap\ndata: {\"reason\":\"bus\"}\n\n"
    );
}

#[tokio::test]
async fn a_publish_only_tier_reaches_every_target_kind() {
    let (bus, nodes) = cluster(2).await;
    let publisher = sse_cluster::Publisher::new(bus.broker())
        .await
        .expect("publisher");
    assert_eq!(publisher.broker_status(), sse_cluster::BrokerStatus::Up);
    let mut a = SseClient::connect(nodes[0].addr, "/events?topic=t").await;
    let mut b = SseClient::connect(nodes[1].addr, "/events?user=u").await;
    let b_id = sse_cluster::ConnectionId::parse(&b.connection_id).expect("id");
    for (target, data) in [
        (Target::topic("t"), "topic"),
        (Target::user("u"), "user"),
        (Target::Connection(b_id), "connection"),
        (Target::All, "all"),
    ] {
        let receipt = publisher
            .publish(target, Event::new().data(data))
            .await
            .expect("publish");
        assert!(receipt.id.starts_with("publisher."));
    }
    assert_eq!(a.next().await.expect("event").data, "topic");
    assert_eq!(a.next().await.expect("event").data, "all");
    for want in ["user", "connection", "all"] {
        assert_eq!(b.next().await.expect("event").data, want);
    }
    a.expect_quiet().await;
    b.expect_quiet().await;
    let err = publisher
        .publish(Target::topic(""), Event::new())
        .await
        .expect_err("empty topic");
    assert!(matches!(err, sse_cluster::PublishError::InvalidTarget(_)));
    assert_eq!(stat(nodes[0].addr, "bus_malformed").await, 0);
    publisher.shutdown().await;
}

#[tokio::test]
async fn limits_are_enforced_over_http() {
    let (_bus, nodes) = cluster_with(1, |b| {
        b.max_connections(3)
            .max_connections_per_user(2)
            .max_event_size(8)
    })
    .await;
    let addr = nodes[0].addr;
    let _u1 = SseClient::connect(addr, "/events?user=u").await;
    let _u2 = SseClient::connect(addr, "/events?user=u").await;
    let third = SseClient::open(addr, "/events?user=u", &[]).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    drop(third);
    let _other = SseClient::connect(addr, "/events?user=v").await;
    let full = SseClient::open(addr, "/events?user=w", &[]).await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = full.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    drop(full);

    let (status, body) = post(addr, "/publish?user=v", "123456789").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(
        post(addr, "/publish?user=v", "12345678").await.0,
        StatusCode::ACCEPTED
    );

    // A slot freed by a client that left is available again.
    drop(_other);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let again = SseClient::open(addr, "/events?user=w", &[]).await;
        if again.status == StatusCode::OK {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot not freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_authorizer_refuses_and_rewrites_subscriptions() {
    let (_bus, nodes) = cluster_with(1, |b| {
        b.authorizer(std::sync::Arc::new(support::app::TokenAuthorizer(
            "s3cret".into(),
        )))
    })
    .await;
    let addr = nodes[0].addr;
    let path = "/events?topic=news&topic=private.x";
    assert_eq!(
        SseClient::open(addr, path, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let wrong = [("authorization", "Bearer nope")];
    assert_eq!(
        SseClient::open(addr, path, &wrong).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        nodes[0].hub.registry().len(),
        0,
        "refused before registering"
    );

    let good = [("authorization", "Bearer s3cret")];
    let mut anonymous = SseClient::open(addr, path, &good).await;
    assert_eq!(anonymous.status, StatusCode::OK);
    assert_eq!(
        anonymous.next().await.expect("connected").event,
        "connected"
    );
    let mut named = SseClient::open(addr, &format!("{path}&user=u"), &good).await;
    assert_eq!(named.next().await.expect("connected").event, "connected");
    assert_eq!(
        nodes[0].hub.registry().topic_connections("private.x"),
        1,
        "stripped for the anonymous one"
    );

    for (topic, data) in [("private.x", "secret"), ("news", "public")] {
        assert_eq!(
            post(addr, &format!("/publish?topic={topic}"), data).await.0,
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(anonymous.next().await.expect("event").data, "public");
    anonymous.expect_quiet().await;
    assert_eq!(named.next().await.expect("event").data, "secret");
    assert_eq!(named.next().await.expect("event").data, "public");
}

/// Tenant isolation: 100 000 user-targeted events, published from random
/// hubs to random users among 1 000 spread over 3 hubs: every connection
/// receives exactly the events of its own user, nothing else.
#[tokio::test]
async fn user_events_never_reach_another_user() {
    let bus = MemoryBus::new();
    let mut hubs = Vec::new();
    for i in 0..3 {
        let hub = Hub::builder()
            .node_id(format!("h{i}"))
            .broker(bus.broker())
            .stream_config(
                StreamConfig::default()
                    .keep_alive(None)
                    .initial_retry(None)
                    .queue_limits(4096, 1 << 24),
            )
            .build()
            .await
            .expect("hub");
        hubs.push(hub);
    }
    let users = 1000usize;
    let mut streams = Vec::new();
    for u in 0..users {
        let conn = hubs[u % 3]
            .connect(Subscription::new().user(format!("u{u}")))
            .await
            .expect("connect");
        streams.push(conn.into_stream());
    }
    let mut rng = fastrand::Rng::with_seed(7);
    let mut sent = vec![0u64; users];
    for _ in 0..100_000 {
        let (from, to) = (rng.usize(..3), rng.usize(..users));
        sent[to] += 1;
        hubs[from]
            .publish(
                Target::user(format!("u{to}")),
                Event::new().data(format!("u{to}")),
            )
            .await
            .expect("publish");
    }
    let mut wrong = 0u64;
    for (u, stream) in streams.iter_mut().enumerate() {
        let want = format!("data: u{u}\n\n");
        for _ in 0..sent[u] {
            let frame = tokio::time::timeout(WAIT, stream.next())
                .await
                .expect("every event sent to the user arrives")
                .expect("stream open");
            if frame != want.as_bytes() {
                wrong += 1;
            }
        }
        let extra = tokio::time::timeout(Duration::from_millis(1), stream.next()).await;
        assert!(extra.is_err(), "user u{u} got more than was sent to it");
    }
    assert_eq!(wrong, 0, "deliveries to the wrong user");
    assert_eq!(sent.iter().sum::<u64>(), 100_000);
}

/// A topic, user or event name that is not UTF-8 once percent-decoded is a
/// 400 with `{"error": …}` on `/events`, `/publish` and `/presence`, never
/// replaced with U+FFFD: `topic=%FF` and `topic=%FE` were the same topic,
/// the one named "\u{FFFD}". Valid percent-encoded UTF-8 still works.
#[tokio::test]
async fn names_that_are_not_utf8_are_refused_not_replaced() {
    let (_bus, nodes) = cluster_with(1, |b| {
        b.presence(sse_cluster::presence::PresenceConfig::default())
    })
    .await;
    let addr = nodes[0].addr;
    // Subscribed to the topic and user that `%FF` used to become.
    let mut replaced = SseClient::connect(addr, "/events?topic=%EF%BF%BD&user=%EF%BF%BD").await;
    let mut cafe = SseClient::connect(addr, "/events?topic=caf%C3%A9+au+lait").await;

    let bad = [
        ("GET", "/events?topic=%FF"),
        ("GET", "/events?topic=ok&topic=%FE"),
        ("GET", "/events?user=%C3"),
        ("GET", "/presence?topic=%FF"),
        ("GET", "/presence?user=a%FEb"),
        ("POST", "/publish?topic=%FF"),
        ("POST", "/publish?user=%FE"),
        ("POST", "/publish?topic=t&event=%FF"),
    ];
    for (method, path) in bad {
        // Bounded: an accepted `/events` would stream for ever.
        let answer = async {
            match method {
                "GET" => get(addr, path).await,
                _ => post(addr, path, "x").await,
            }
        };
        let (status, body) = tokio::time::timeout(WAIT, answer)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no whole answer in time"));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert!(
            json["error"].as_str().is_some_and(|e| e.contains("UTF-8")),
            "{method} {path}: {body}"
        );
    }
    replaced.expect_quiet().await;
    assert_eq!(stat(addr, "published").await, 0);
    assert_eq!(nodes[0].hub.registry().len(), 2, "no connection was added");

    // Valid percent-encoded UTF-8, `+` as a space, and keys the demo does
    // not read (whatever their bytes) are unchanged.
    let (status, body) = post(addr, "/publish?topic=caf%C3%A9%20au%20lait&x=%FF", "hot").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(cafe.next().await.expect("event").data, "hot");
    let (status, body) = get(addr, "/presence?topic=caf%C3%A9+au+lait").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["topic"], "café au lait", "{body}");
    replaced.expect_quiet().await;
}
