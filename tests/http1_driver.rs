//! `adapters::http1::serve_sse` over real TCP: SSE requests are streamed
//! with chunked encoding and end when the client leaves; refusals are
//! written whole; anything else (other paths, malformed or oversized heads)
//! is handed back with the bytes already read put back in front. Every
//! response says `connection: close`; a non-SSE response the driver cannot
//! write whole is an error, never a cut body.

#![cfg(all(feature = "http1", feature = "axum"))]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use sse_cluster::adapters::http1::{serve_sse, BodyTooLarge, Served, MAX_HEAD, MAX_PLAIN_BODY};
use sse_cluster::{Event, Hub, StreamConfig, Subscription, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves one connection with `serve_sse` (SSE path `/events`, topic from
/// nowhere: always `news`); returns what the driver did and, for a handed
/// back connection, the bytes it replays.
async fn one_connection(hub: Hub) -> (TcpStream, tokio::task::JoinHandle<Option<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let served = serve_sse(
            tcp,
            |head| head.uri.path() == "/events",
            |req| async move {
                let (head, ()) = req.into_parts();
                let sub = Subscription::new().topic("news");
                match hub.connect_request(&head, sub).await {
                    Ok(conn) => conn.into_http_response().map(Either::Left),
                    Err(err) => {
                        let body = Full::new(Bytes::from(err.to_string()));
                        let mut refused = http::Response::new(Either::Right(body));
                        *refused.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        refused
                    }
                }
            },
        )
        .await
        .expect("serve");
        match served {
            Served::Done => None,
            Served::Other(mut io) => {
                let mut replayed = vec![0u8; 64 * 1024];
                let n = tokio::time::timeout(Duration::from_secs(2), io.read(&mut replayed))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0);
                replayed.truncate(n);
                Some(replayed)
            }
            _ => None,
        }
    });
    let client = TcpStream::connect(addr).await.expect("connect");
    (client, task)
}

async fn hub() -> Hub {
    Hub::builder()
        .stream_config(StreamConfig::default().keep_alive(None))
        .build()
        .await
        .expect("hub")
}

async fn read_until(client: &mut TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + support::WAIT;
    while !String::from_utf8_lossy(&got).contains(needle) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, client.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends `GET /events` and reads up to the stream's first frame.
async fn open_events(client: &mut TcpStream) -> String {
    client
        .write_all(b"GET /events HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    read_until(client, "retry: 3000").await
}

#[tokio::test]
async fn streams_sse_chunked_and_unregisters_when_the_client_leaves() {
    let hub = hub().await;
    let (mut client, task) = one_connection(hub.clone()).await;
    let head = open_events(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    support::bus::wait_until("registered", support::WAIT, || hub.registry().len() == 1).await;
    hub.publish(Target::topic("news"), Event::new().data("hi"))
        .await
        .expect("publish");
    let body = read_until(&mut client, "data: hi\n\n").await;
    assert!(
        body.contains("\r\ndata: hi\n\n\r\n"),
        "one chunk per frame: {body:?}"
    );
    drop(client);
    assert_eq!(task.await.expect("task"), None, "served");
    support::bus::wait_until("unregistered", support::WAIT, || hub.registry().is_empty()).await;
}

#[tokio::test]
async fn refusals_are_written_whole_and_the_end_of_a_stream_ends_the_chunks() {
    let hub = hub().await;
    let (mut client, task) = one_connection(hub.clone()).await;
    open_events(&mut client).await;
    hub.shutdown().await;
    let tail = read_until(&mut client, "0\r\n\r\n").await;
    assert!(tail.ends_with("0\r\n\r\n"), "{tail:?}");
    assert_eq!(task.await.expect("task"), None);

    // The hub is shut down: the connect is refused, with a whole response.
    let (mut client, task) = one_connection(hub).await;
    client
        .write_all(b"GET /events HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut all = String::new();
    client.read_to_string(&mut all).await.expect("read");
    assert!(
        all.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{all}"
    );
    assert!(all.contains("connection: close\r\n"), "{all}");
    assert!(all.ends_with("the hub is shutting down"), "{all}");
    assert_eq!(task.await.expect("task"), None);
}

#[tokio::test]
async fn other_requests_and_bad_heads_are_handed_back_intact() {
    let cases: Vec<Vec<u8>> = vec![
        b"POST /publish?topic=a HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi".to_vec(),
        b"GET /stats HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
        b"NOT HTTP AT ALL\r\n\r\n".to_vec(),
        b"GET /events HTTP/1.1\r\nbad header\r\n\r\n".to_vec(),
        [
            b"GET /events HTTP/1.1\r\nx: ".to_vec(),
            vec![b'a'; MAX_HEAD + 10],
        ]
        .concat(),
    ];
    for request in cases {
        let (mut client, task) = one_connection(hub().await).await;
        client.write_all(&request).await.expect("write");
        let replayed = task.await.expect("task").expect("handed back");
        let n = replayed.len().min(request.len());
        assert!(n > 0);
        assert_eq!(
            replayed[..n],
            request[..n],
            "the bytes read come back first ({:?})",
            String::from_utf8_lossy(&request[..request.len().min(40)])
        );
    }
}

/// A client that trickles its request head is cut off after
/// `HEAD_TIMEOUT` (paused time: no real wait).
#[tokio::test(start_paused = true)]
async fn a_trickled_head_times_out() {
    let (client, mut server) = tokio::io::duplex(1024);
    let serving = tokio::spawn(async move {
        serve_sse(
            client,
            |_| true,
            |_req| async { http::Response::new(Full::new(Bytes::new())) },
        )
        .await
        .map(|_| ())
    });
    server
        .write_all(b"GET /events HTTP/1.1\r\n")
        .await
        .expect("write");
    tokio::time::sleep(sse_cluster::adapters::http1::HEAD_TIMEOUT + Duration::from_secs(1)).await;
    let result = serving.await.expect("task");
    assert_eq!(
        result.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::TimedOut)
    );
}

/// The SSE response head says `connection: close` once (RFC 9112 section
/// 9.6), and the driver does close: after the last chunk the client reads
/// end of file.
#[tokio::test]
async fn the_sse_head_says_connection_close_and_the_driver_closes() {
    let hub = hub().await;
    let (mut client, task) = one_connection(hub.clone()).await;
    let head = open_events(&mut client).await;
    let head = &head[..head.find("\r\n\r\n").expect("end of head")];
    let connection: Vec<&str> = head
        .split("\r\n")
        .filter(|line| line.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    assert_eq!(connection, ["connection: close"], "{head}");
    hub.shutdown().await;
    let mut rest = Vec::new();
    tokio::time::timeout(support::WAIT, client.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("read");
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.ends_with("0\r\n\r\n"), "{rest:?}");
    assert_eq!(task.await.expect("task"), None);
}

/// Serves one connection whose (non-SSE) response body is `frames`, then an
/// error if `fail`; returns the client's socket and `serve_sse`'s result.
async fn plain_connection(
    frames: Vec<Bytes>,
    fail: bool,
) -> (TcpStream, tokio::task::JoinHandle<std::io::Result<()>>) {
    use futures_util::stream;
    use http_body_util::StreamBody;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let respond = |_req| async move {
            let mut items: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = frames
                .into_iter()
                .map(|b| Ok(http_body::Frame::data(b)))
                .collect();
            if fail {
                items.push(Err(std::io::Error::other("the body broke")));
            }
            http::Response::builder()
                .header("content-type", "text/plain")
                // Wrong on purpose: the driver writes its own.
                .header("content-length", "3")
                .body(StreamBody::new(stream::iter(items)))
                .expect("response")
        };
        let served = serve_sse(tcp, |_| true, respond).await?;
        assert!(matches!(served, Served::Done), "{served:?}");
        Ok(())
    });
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    (client, task)
}

/// Everything the server sends until it closes: head and body.
async fn response_of(client: &mut TcpStream) -> (String, Vec<u8>) {
    let mut all = Vec::new();
    tokio::time::timeout(support::WAIT, client.read_to_end(&mut all))
        .await
        .expect("closed in time")
        .expect("read");
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head");
    let body = all.split_off(end + 4);
    (String::from_utf8_lossy(&all).into_owned(), body)
}

#[tokio::test]
async fn a_plain_response_up_to_the_limit_is_written_whole() {
    // In several frames, the last one reaching the limit exactly.
    let frame = Bytes::from(vec![b'x'; 64 * 1024]);
    let mut frames = vec![frame; MAX_PLAIN_BODY / (64 * 1024) - 1];
    frames.push(Bytes::from(vec![b'y'; 64 * 1024]));
    let (mut client, task) = plain_connection(frames, false).await;
    let (head, body) = response_of(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\ncontent-length: {MAX_PLAIN_BODY}\r\n")),
        "{head}"
    );
    assert!(!head.contains("content-length: 3"), "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert_eq!(body.len(), MAX_PLAIN_BODY);
    assert!(body.ends_with(&[b'y'; 64 * 1024]));
    task.await.expect("task").expect("served");
}

#[tokio::test]
async fn a_plain_response_over_the_limit_is_an_error_not_a_cut_body() {
    let over_by_one = vec![Bytes::from(vec![b'x'; MAX_PLAIN_BODY + 1])];
    let mut in_frames = vec![Bytes::from(vec![b'x'; 64 * 1024]); MAX_PLAIN_BODY / (64 * 1024)];
    in_frames.push(Bytes::from_static(b"x"));
    for frames in [over_by_one, in_frames] {
        let (mut client, task) = plain_connection(frames, false).await;
        let (head, body) = response_of(&mut client).await;
        let err = task.await.expect("task").expect_err("too large");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<BodyTooLarge>());
        assert_eq!(inner.map(|e| e.limit), Some(MAX_PLAIN_BODY), "{err}");
        assert!(
            head.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\ncontent-length: 0\r\n"), "{head}");
        assert!(body.is_empty(), "{} body bytes", body.len());
    }
}

#[tokio::test]
async fn a_plain_body_that_fails_is_an_error_not_a_cut_body() {
    let (mut client, task) = plain_connection(vec![Bytes::from_static(b"half")], true).await;
    let (head, body) = response_of(&mut client).await;
    let err = task.await.expect("task").expect_err("failed body");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(head.starts_with("HTTP/1.1 500 "), "{head}");
    assert!(body.is_empty(), "{body:?}");
}
