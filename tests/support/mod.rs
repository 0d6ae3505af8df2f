//! Shared test support: in-process clusters served over real TCP, an SSE
//! client that parses with a real SSE parser, and a small HTTP client.

#![allow(dead_code, unreachable_pub)]

#[path = "../../examples/common/mod.rs"]
pub mod app;
pub mod balancer;
pub mod bus;
pub mod failover;
pub mod js;
#[cfg(feature = "kafka")]
pub mod kafka_server;
#[cfg(feature = "nats")]
pub mod nats_server;
#[cfg(feature = "postgres")]
pub mod postgres_server;
pub mod process;
#[cfg(feature = "redis")]
pub mod redis_cluster;
#[cfg(feature = "redis")]
pub mod redis_sentinel;
#[cfg(feature = "redis")]
pub mod redis_server;
pub mod resume;
pub mod server;

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event as SseEvent, Eventsource};
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::{Hub, HubBuilder, StreamConfig};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to be confident that something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// One node: a hub and the demo HTTP interface serving it on a loopback port.
pub struct Node {
    pub hub: Hub,
    pub addr: SocketAddr,
    pub server: JoinHandle<()>,
}

impl Node {
    /// Serves `hub` with the demo router on a free loopback port; axum's
    /// graceful shutdown runs `hub.shutdown()` when `stop` resolves.
    pub async fn serve(hub: Hub) -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let drain = hub.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app::router(drain)).await;
        });
        Node { hub, addr, server }
    }
}

/// `n` hubs joined by one in-memory bus, each served over real TCP.
pub async fn cluster(n: usize) -> (MemoryBus, Vec<Node>) {
    cluster_with(n, |b| b).await
}

/// Like [`cluster`], with each hub's builder adjusted by `configure`.
pub async fn cluster_with(
    n: usize,
    configure: impl Fn(HubBuilder) -> HubBuilder,
) -> (MemoryBus, Vec<Node>) {
    let bus = MemoryBus::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        let builder = Hub::builder()
            .node_id(format!("n{i}"))
            .broker(bus.broker())
            .stream_config(StreamConfig::default().keep_alive(None));
        let hub = configure(builder).build().await.expect("hub");
        nodes.push(Node::serve(hub).await);
    }
    (bus, nodes)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<SseEvent, String>> + Send>>;
type RawLog = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// An SSE client over a real TCP connection, parsing with `eventsource-stream`.
pub struct SseClient {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    events: EventStream,
    /// The connection id from the `connected` greeting, if requested.
    pub connection_id: String,
    raw: RawLog,
}

impl SseClient {
    /// `GET path_and_query` on `addr`; waits for the `connected` event.
    pub async fn connect(addr: SocketAddr, path_and_query: &str) -> SseClient {
        let mut client = Self::open(addr, path_and_query, &[]).await;
        assert_eq!(client.status, StatusCode::OK, "GET {path_and_query}");
        let hello = client.next().await.expect("connected event");
        assert_eq!(hello.event, "connected");
        client.connection_id = hello.data;
        client
    }

    /// `GET path_and_query` with extra headers; does not read any event.
    pub async fn open(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> SseClient {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        Self::open_bytes(addr, path_and_query, &headers).await
    }

    /// Like [`SseClient::open`], with header values as raw bytes (which
    /// need not be UTF-8).
    pub async fn open_bytes(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &[u8])],
    ) -> SseClient {
        let mut request = Request::builder()
            .uri(path_and_query)
            .header("host", addr.to_string());
        for (k, v) in headers {
            let value = hyper::header::HeaderValue::from_bytes(v).expect("header value");
            request = request.header(*k, value);
        }
        let request = request.body(Full::new(Bytes::new())).expect("request");
        let response = send(addr, request).await;
        let status = response.status();
        let headers = response.headers().clone();
        let raw = RawLog::default();
        let log = raw.clone();
        let body = response
            .into_body()
            .into_data_stream()
            .inspect(move |chunk| {
                if let Ok(bytes) = chunk {
                    log.lock().expect("raw log").extend_from_slice(bytes);
                }
            });
        let events = body
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()))
            .boxed();
        SseClient {
            status,
            headers,
            events,
            connection_id: String::new(),
            raw,
        }
    }

    /// Every byte received so far, including comments and `retry:` frames
    /// that dispatch no event.
    pub fn raw(&self) -> String {
        String::from_utf8_lossy(&self.raw.lock().expect("raw log")).into_owned()
    }

    /// The next event, or `None` if the stream ended or nothing came within [`WAIT`].
    pub async fn next(&mut self) -> Option<SseEvent> {
        self.next_within(WAIT).await
    }

    /// The next event within `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Option<SseEvent> {
        match tokio::time::timeout(limit, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(err))) => panic!("SSE stream error: {err}"),
            Ok(None) | Err(_) => None,
        }
    }

    /// Asserts that no event arrives within [`QUIET`].
    pub async fn expect_quiet(&mut self) {
        if let Some(event) = self.next_within(QUIET).await {
            panic!("unexpected event: {event:?}");
        }
    }

    /// Waits until the server ends the stream; `Err` if it is still open
    /// after `limit`. Events still in flight are skipped.
    pub async fn wait_end(&mut self, limit: Duration) -> Result<(), &'static str> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(None) => return Ok(()),
                Ok(Some(_)) => continue,
                Err(_) => return Err("stream still open"),
            }
        }
    }
}

async fn send(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> hyper::Response<hyper::body::Incoming> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(request).await.expect("send request")
}

/// `POST path_and_query` with `body`; returns the status and the body text.
pub async fn post(
    addr: SocketAddr,
    path_and_query: &str,
    body: impl Into<Bytes>,
) -> (StatusCode, String) {
    request(addr, Method::POST, path_and_query, body.into()).await
}

/// `POST path_and_query` with `body` and extra `headers` (values as raw
/// bytes, which need not be UTF-8); returns the status, the response
/// headers and the body text.
pub async fn post_with_headers(
    addr: SocketAddr,
    path_and_query: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &[u8])],
) -> (StatusCode, hyper::HeaderMap, String) {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path_and_query)
        .header("host", addr.to_string());
    for (k, v) in headers {
        let value = hyper::header::HeaderValue::from_bytes(v).expect("header value");
        request = request.header(*k, value);
    }
    let request = request.body(Full::new(body.into())).expect("request");
    let response = send(addr, request).await;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// `GET path_and_query`; returns the status, the response headers and the
/// body text.
pub async fn get_with_headers(
    addr: SocketAddr,
    path_and_query: &str,
) -> (StatusCode, hyper::HeaderMap, String) {
    let request = Request::builder()
        .uri(path_and_query)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = send(addr, request).await;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// `GET path_and_query`; returns the status and the body text.
pub async fn get(addr: SocketAddr, path_and_query: &str) -> (StatusCode, String) {
    request(addr, Method::GET, path_and_query, Bytes::new()).await
}

async fn request(
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
    body: Bytes,
) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", addr.to_string())
        .body(Full::new(body))
        .expect("request");
    let response = send(addr, request).await;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Reads one counter from `GET /stats`.
pub async fn stat(addr: SocketAddr, name: &str) -> u64 {
    let (status, body) = get(addr, "/stats").await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).expect("stats json");
    json[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {body}"))
}
