//! The README's quick starts, followed literally: its handlers (the text of
//! `tests/readme/handlers.rs`, which must appear in README.md verbatim) on
//! two hubs sharing one Redis for the bus and the history, built as the
//! Redis quick start builds them. A client that reads from node A,
//! disconnects, and reconnects to node B with its last id gets the event
//! published meanwhile, once, then live events.

#![cfg(all(feature = "axum", feature = "redis"))]

// The README's handlers, compiled here as they are printed there.
#[allow(unused_imports, dead_code)]
mod readme {
    include!("readme/handlers.rs");

    /// The router of both quick starts.
    pub(crate) fn app(hub: Hub) -> Router {
        Router::new()
            .route("/events", get(events))
            .route("/publish", post(publish))
            .with_state(hub)
    }
}

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
use sse_cluster::history::{redis::RedisHistory, Retention};
use sse_cluster::Hub;
use support::redis_server::{machine_redis, unique_prefix};
use support::{post, SseClient, WAIT};

#[test]
fn the_readme_prints_these_handlers_verbatim() {
    let readme = include_str!("../README.md");
    let handlers = include_str!("readme/handlers.rs");
    assert!(
        readme.contains(handlers),
        "README.md's quick start and tests/readme/handlers.rs differ: keep them the same"
    );
}

/// One node as the Redis quick start builds it, on a loopback port.
async fn node(url: &str, prefix: &str) -> (Hub, SocketAddr) {
    let broker = RedisBroker::new(RedisConfig::new(url).prefix(prefix)).expect("config");
    let history = Arc::new(RedisHistory::new(
        broker.clone(),
        Retention::default().max_len(1000),
    ));
    let hub = Hub::builder()
        .broker(broker)
        .history(history)
        .require_broker(Duration::from_secs(5))
        .build()
        .await
        .expect("a hub on Redis");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = readme::app(hub.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (hub, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_quick_start_resumes_on_another_node() {
    let test = "the_redis_quick_start_resumes_on_another_node";
    let Some(url) = machine_redis(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let (a_hub, a) = node(&url, &prefix).await;
    let (b_hub, b) = node(&url, &prefix).await;

    let mut client = SseClient::open(a, "/events?topic=news", &[]).await;
    assert_eq!(client.status, 200);
    let (status, _) = post(b, "/publish?topic=news", "first").await;
    assert_eq!(status, 200);
    let first = client.next().await.expect("first event");
    assert_eq!(first.data, "first");
    assert!(!first.id.is_empty(), "events carry ids with a history");
    drop(client);

    let (status, _) = post(a, "/publish?topic=news", "missed").await;
    assert_eq!(status, 200);
    let mut client =
        SseClient::open(b, "/events?topic=news", &[("last-event-id", &first.id)]).await;
    assert_eq!(client.status, 200);
    let (status, _) = post(a, "/publish?topic=news", "live").await;
    assert_eq!(status, 200);
    let mut got = Vec::new();
    while got.len() < 2 {
        let event = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("an event")
            .expect("the stream is open");
        assert!(
            !event.event.starts_with("sse-cluster."),
            "no reset or gap: {event:?}"
        );
        if !event.data.is_empty() {
            got.push(event.data);
        }
    }
    assert_eq!(got, ["missed", "live"]);
    client.expect_quiet().await;
    a_hub.shutdown().await;
    b_hub.shutdown().await;
}
