//! Clients that stop reading, idle and trickle cannot pin a connection:
//! the write deadline frees a never-reading client's socket, registry entry,
//! per-user slot and presence within 10 s with default settings, on the
//! demo node (the HTTP/1.1 driver) and on a plain hyper server; the demo
//! node's hyper path closes idle keep-alive connections and trickled heads.
//! Real processes, real TCP sockets with a 4 KiB receive buffer.

#![cfg(all(unix, feature = "axum", feature = "hyper"))]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sse_cluster::adapters::{hyper as sse, WriteDeadline};
use sse_cluster::presence::PresenceConfig;
use sse_cluster::{Event, Hub, SseStream, Subscription, Target};
use support::process::{node_binary, NodeProcess};
use support::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// The bound of the issue: gone within 10 s.
const GONE_WITHIN: Duration = Duration::from_secs(10);

/// A client that opens `path` with a 4 KiB receive buffer, reads the
/// response head, and then never reads again.
async fn never_reading_client(addr: SocketAddr, path: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut tcp = socket.connect(addr).await.expect("connect");
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut byte).await.expect("head"), 1, "head cut");
        head.push(byte[0]);
        assert!(head.len() < 4096, "head too long");
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// True once the server has closed `tcp`: reading what is left ends in EOF
/// or a reset within `limit`.
async fn closed_by_server(tcp: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// 40 events of 512 KiB: far more than one connection's queue (1 MiB).
fn big_event() -> String {
    "x".repeat(512 * 1024)
}

async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_reading_client_is_gone_within_10s_on_the_driver() {
    let node = NodeProcess::start(&node_binary(None), &["--broker", "memory"]);
    let mut slow = never_reading_client(node.addr, "/events?topic=t&user=slow").await;
    let (_, body) = get(node.addr, "/presence?user=slow").await;
    assert!(body.contains("\"online\":true"), "{body}");

    let data = big_event();
    for _ in 0..40 {
        let (status, body) = post(node.addr, "/publish?topic=t", data.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let published = Instant::now();
    wait_until("the connection gone from /stats", GONE_WITHIN, async || {
        let (_, body) = get(node.addr, "/stats").await;
        body.contains("\"connections\":0,")
    })
    .await;
    let (_, body) = get(node.addr, "/presence?user=slow").await;
    assert!(body.contains("\"online\":false"), "{body}");
    let (_, stats) = get(node.addr, "/stats").await;
    assert!(stats.contains("\"overflow_closed\":1"), "{stats}");
    let left = GONE_WITHIN.saturating_sub(published.elapsed());
    assert!(
        closed_by_server(&mut slow, left).await,
        "the socket is still open"
    );
}

async fn handle(hub: Hub, req: Request<Incoming>) -> Result<Response<SseStream>, Infallible> {
    let _ = req;
    Ok(
        match hub
            .connect(Subscription::new().topic("t").user("slow"))
            .await
        {
            Ok(conn) => sse::response(conn),
            Err(_) => sse::unavailable(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_reading_client_is_gone_within_10s_on_hyper() {
    let hub = Hub::builder()
        .presence(PresenceConfig::default())
        .build()
        .await
        .expect("hub");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server_hub = hub.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let hub = server_hub.clone();
            // The default deadline: what a user gets by wrapping the socket.
            let io = TokioIo::new(WriteDeadline::new(tcp));
            let service = service_fn(move |req| handle(hub.clone(), req));
            tokio::spawn(http1::Builder::new().serve_connection(io, service));
        }
    });
    let mut slow = never_reading_client(addr, "/events").await;
    assert!(hub.presence().user_online("slow").await.expect("presence"));

    let data = big_event();
    for _ in 0..40 {
        hub.publish(Target::topic("t"), Event::new().data(data.clone()))
            .await
            .expect("publish");
    }
    let published = Instant::now();
    wait_until(
        "the connection gone from stats()",
        GONE_WITHIN,
        async || hub.stats().connections == 0,
    )
    .await;
    assert_eq!(hub.stats().overflow_closed, 1);
    assert!(!hub.presence().user_online("slow").await.expect("presence"));
    let left = GONE_WITHIN.saturating_sub(published.elapsed());
    assert!(
        closed_by_server(&mut slow, left).await,
        "the socket is still open"
    );
}

/// Sends `bytes` one at a time, `gap` apart, until the server closes the
/// connection; returns how long that took (or `None` if it never did within
/// `limit`).
async fn trickle_until_closed(
    tcp: &mut TcpStream,
    bytes: &[u8],
    gap: Duration,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = [0u8; 1024];
    for byte in bytes.iter().cycle() {
        if started.elapsed() > limit {
            return None;
        }
        if tcp.write_all(&[*byte]).await.is_err() {
            return Some(started.elapsed());
        }
        // A closed connection shows as EOF (or a reset) on read.
        match tokio::time::timeout(gap, tcp.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_connections_are_closed_on_the_hyper_path() {
    let node = NodeProcess::start(
        &node_binary(None),
        &["--broker", "memory", "--header-timeout-ms", "1000"],
    );
    let limit = Duration::from_secs(5);

    // A second request head, trickled after a first request on the same
    // keep-alive connection (the driver hands non-SSE requests to hyper).
    let mut tcp = TcpStream::connect(node.addr).await.expect("connect");
    let first = format!("GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", node.addr);
    tcp.write_all(first.as_bytes()).await.expect("first");
    let mut response = [0u8; 256];
    let n = tcp.read(&mut response).await.expect("response");
    assert!(response[..n].starts_with(b"HTTP/1.1 200"));
    let trickled = trickle_until_closed(
        &mut tcp,
        b"GET /stats HTTP/1.1\r\nx-a: ",
        Duration::from_millis(200),
        limit,
    )
    .await;
    assert!(
        trickled.is_some(),
        "a trickled second head is still open after {limit:?}"
    );

    // A head over 16 KiB (the driver's limit, so hyper reads it), then
    // trickled.
    let mut tcp = TcpStream::connect(node.addr).await.expect("connect");
    let mut big = b"GET /healthz HTTP/1.1\r\nx-big: ".to_vec();
    big.resize(17 * 1024, b'a');
    tcp.write_all(&big).await.expect("big head");
    let trickled = trickle_until_closed(&mut tcp, b"a", Duration::from_millis(200), limit).await;
    assert!(
        trickled.is_some(),
        "a trickled 17 KiB head is still open after {limit:?}"
    );
}

/// With the demo node's defaults, an idle keep-alive connection is closed
/// within the 45 s (the default is 15 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_with_default_settings() {
    let node = NodeProcess::start(&node_binary(None), &["--broker", "memory"]);
    let mut tcp = TcpStream::connect(node.addr).await.expect("connect");
    let first = format!("GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", node.addr);
    tcp.write_all(first.as_bytes()).await.expect("first");
    let started = Instant::now();
    let mut response = [0u8; 256];
    let n = tcp.read(&mut response).await.expect("response");
    assert!(response[..n].starts_with(b"HTTP/1.1 200"));
    assert!(
        closed_by_server(&mut tcp, Duration::from_secs(45)).await,
        "an idle keep-alive connection is still open after 45 s"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "closed too early: {:?}",
        started.elapsed()
    );
}
