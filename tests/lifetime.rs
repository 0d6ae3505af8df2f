//! Connection lifetime (`HubBuilder::max_lifetime`): every stream ends
//! within its drawn lifetime with a short `retry:` and
//! `sse-cluster.closed` `{"reason":"lifetime","reconnect":true}`; a client
//! that comes back with its `Last-Event-ID`, to another node, misses
//! nothing; the demo node's `--max-lifetime`. Real TCP, a real SSE parser.

#![cfg(feature = "axum")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::history::{memory::MemoryHistory, Retention};
use sse_cluster::{Hub, CLOSED_EVENT};
use support::{post, Node, SseClient, WAIT};

async fn nodes(lifetime: Duration, jitter: f64) -> Vec<Node> {
    let bus = MemoryBus::new();
    let history = Arc::new(MemoryHistory::new(&bus, Retention::default()));
    let mut nodes = Vec::new();
    for i in 0..2 {
        let hub = Hub::builder()
            .node_id(format!("n{i}"))
            .broker(bus.broker())
            .history(history.clone())
            .shutdown_retry(Duration::from_millis(100), Duration::from_millis(200))
            .max_lifetime(lifetime, jitter)
            .build()
            .await
            .expect("hub");
        nodes.push(Node::serve(hub).await);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_within_their_lifetime_and_resume_elsewhere() {
    let nodes = nodes(Duration::from_millis(800), 0.5).await;
    let mut ended = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(SseClient::connect(nodes[0].addr, "/events?topic=t").await);
    }
    let opened = Instant::now();
    let (status, _) = post(nodes[1].addr, "/publish?topic=t", "before").await;
    assert_eq!(status, 202);
    let mut last_ids = Vec::new();
    for client in &mut clients {
        let mut last_id = String::new();
        let mut events = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, client.next()).await {
                Ok(Some(event)) => {
                    if !event.id.is_empty() {
                        last_id = event.id.clone();
                    }
                    events.push((event.event, event.data));
                }
                Ok(None) => break,
                Err(_) => panic!("a stream outlived its lifetime: {events:?}"),
            }
        }
        ended.push(opened.elapsed());
        let (name, data) = events.last().expect("a final event");
        assert_eq!(name, CLOSED_EVENT);
        let data: serde_json::Value = serde_json::from_str(data).expect("JSON");
        assert_eq!(data["reason"], "lifetime");
        assert_eq!(data["reconnect"], true);
        assert!(events.iter().any(|(_, d)| d == "before"), "{events:?}");
        let raw = client.raw();
        let retry = raw
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("retry: "))
            .and_then(|ms| ms.parse::<u64>().ok())
            .expect("a retry before the end");
        assert!((100..=200).contains(&retry), "retry {retry} ms");
        last_ids.push(last_id);
    }
    // Drawn from [400 ms, 800 ms], read after the stream ended.
    let (first, last) = (ended[0], *ended.last().expect("ended"));
    assert!(first >= Duration::from_millis(390), "ended after {first:?}");
    assert!(
        last < Duration::from_millis(800) + WAIT,
        "ended after {last:?}"
    );

    // Published while they were away; each comes back to the other node.
    let (status, _) = post(nodes[0].addr, "/publish?topic=t", "while away").await;
    assert_eq!(status, 202);
    for last_id in last_ids {
        let mut again = SseClient::open(
            nodes[1].addr,
            "/events?topic=t",
            &[("last-event-id", &last_id)],
        )
        .await;
        assert_eq!(again.status, 200);
        let hello = again.next().await.expect("the greeting");
        assert_eq!(hello.event, "connected");
        let event = again.next().await.expect("the missed event");
        assert_eq!(event.data, "while away");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_expiry_wins_over_the_lifetime() {
    let nodes = nodes(Duration::from_secs(30), 0.0).await;
    let conn = nodes[0]
        .hub
        .connect(
            sse_cluster::Subscription::new()
                .topic("t")
                .expires_at(std::time::SystemTime::now() + Duration::from_millis(300)),
        )
        .await
        .expect("connect");
    let mut stream = conn.into_stream();
    let started = Instant::now();
    let mut frames = Vec::new();
    while let Ok(Some(frame)) =
        tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut stream)).await
    {
        frames.push(String::from_utf8_lossy(&frame).into_owned());
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let last = frames.last().expect("frames");
    assert!(last.contains("sse-cluster.expired"), "{frames:?}");
}

/// The demo node's `--max-lifetime SECS` (20% jitter) and `POST /disconnect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_node_ends_streams_by_lifetime_and_on_request() {
    use support::process::{node_binary, NodeProcess};
    let node = NodeProcess::start(&node_binary(None), &["--max-lifetime", "0.5"]);
    let mut client = SseClient::connect(node.addr, "/events?topic=t&user=u").await;
    let started = Instant::now();
    let mut last = None;
    while let Some(event) = tokio::time::timeout(WAIT, client.next())
        .await
        .expect("the stream ends")
    {
        last = Some(event);
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(390) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let last = last.expect("a final event");
    assert_eq!(last.event, CLOSED_EVENT);
    assert!(last.data.contains("\"lifetime\""), "{}", last.data);

    let node = NodeProcess::start(&node_binary(None), &[]);
    let mut client = SseClient::connect(node.addr, "/events?user=u").await;
    let (status, body) = post(node.addr, "/disconnect?user=u&reason=bye", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"closed_locally\":1"), "{body}");
    let event = client.next().await.expect("the final event");
    assert_eq!(event.event, CLOSED_EVENT);
    assert!(client.next().await.is_none(), "the stream ended");
}
