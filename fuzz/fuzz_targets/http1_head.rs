//! `adapters::http1::serve_sse` fed any bytes as a client's request, over
//! an in-memory connection on a paused clock (the 30 s head timeout and the
//! 5 s end timeout pass at once): never a panic, never stuck, and
//! - a connection handed back replays exactly the bytes the client sent;
//! - a response is a well-formed HTTP/1.1 head (`httparse` reads it) with
//!   exactly one `connection: close`, then either a body of exactly its
//!   `content-length` or whole chunks of the stream, ended by the last chunk
//!   unless the client left first;
//! - an error is a head timeout (the client kept its side open) or the
//!   failing body's `InvalidData`, which is answered `500` with no body.
//!
//! The first input byte picks the case: bit 0, `is_sse` accepts any head
//! (else only `/events`); bits 1-2, the response (SSE stream, SSE content
//! type with status 404, plain body, plain body that fails); bit 3, the
//! client keeps its side open after the request; bit 4, the request is
//! repeated past `MAX_HEAD`.
#![no_main]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use libfuzzer_sys::fuzz_target;
use sse_cluster::adapters::http1::{serve_sse, Served, MAX_HEAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response body: these frames, then an error if `fail`.
struct Scripted {
    frames: VecDeque<Bytes>,
    fail: bool,
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(data) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if std::mem::take(&mut self.fail) {
            return Poll::Ready(Some(Err(io::Error::other("the body broke"))));
        }
        Poll::Ready(None)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Stream,
    NotFound,
    Plain,
    Failing,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, request)) = data.split_first() else {
        return;
    };
    let accept_all = mode & 1 != 0;
    let kind =
        [Kind::Stream, Kind::NotFound, Kind::Plain, Kind::Failing][usize::from((mode >> 1) & 3)];
    let keep_open = mode & 8 != 0;
    let long;
    let request = if mode & 16 != 0 && !request.is_empty() {
        long = request.repeat(MAX_HEAD / request.len() + 1);
        &long[..]
    } else {
        request
    };
    runtime().block_on(async {
        // Far beyond every timeout of the driver: only a stuck connection
        // reaches it (instantly, on the paused clock).
        let run = tokio::time::timeout(
            Duration::from_secs(3600),
            exchange(request, accept_all, kind, keep_open),
        );
        run.await.expect("the connection got stuck");
    });
});

/// What the client sent, the driver did and the client received.
async fn exchange(request: &[u8], accept_all: bool, kind: Kind, keep_open: bool) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    // The body the handler answered with, if it was called.
    let sent_body: RefCell<Option<Vec<u8>>> = RefCell::new(None);
    let serving = async {
        let is_sse = |head: &http::request::Parts| accept_all || head.uri.path() == "/events";
        let respond = |req: http::Request<()>| {
            let (head, ()) = req.into_parts();
            let uri = Bytes::from(head.uri.to_string());
            let frames: VecDeque<Bytes> = match kind {
                Kind::Stream => [Bytes::from_static(b"retry: 1\n\n"), uri].into(),
                _ => [uri, Bytes::from_static(b"\n")].into(),
            };
            *sent_body.borrow_mut() = Some(frames.iter().flat_map(|b| b.to_vec()).collect());
            let mut response = http::Response::new(Scripted {
                frames,
                fail: kind == Kind::Failing,
            });
            let content_type = match kind {
                Kind::Stream | Kind::NotFound => "text/event-stream",
                Kind::Plain | Kind::Failing => "text/plain",
            };
            let headers = response.headers_mut();
            headers.insert("content-type", http::HeaderValue::from_static(content_type));
            // Both replaced by the driver's own.
            headers.insert("connection", http::HeaderValue::from_static("keep-alive"));
            headers.insert("content-length", http::HeaderValue::from_static("3"));
            // Request bytes in the response head.
            if let Some((_, value)) = head.headers.iter().next() {
                headers.insert("x-echo", value.clone());
            }
            if kind == Kind::NotFound {
                *response.status_mut() = http::StatusCode::NOT_FOUND;
            }
            async move { response }
        };
        match serve_sse(server, is_sse, respond).await {
            Ok(Served::Done) => Ok(true),
            Ok(Served::Other(mut io)) => {
                // The bytes read come back first, then the rest: exactly
                // what the client sent.
                let mut replayed = vec![0u8; request.len()];
                io.read_exact(&mut replayed).await.expect("replay");
                assert_eq!(
                    replayed, request,
                    "the connection handed back replays the request"
                );
                Ok(false)
            }
            Ok(_) => unreachable!("Served has two variants"),
            Err(err) => Err(err),
        }
    };
    let client = async {
        // Fails only if the driver closed first: it answers from the head.
        let _ = to_server.write_all(request).await;
        if !keep_open {
            let _ = to_server.shutdown().await;
        }
        let mut received = Vec::new();
        from_server.read_to_end(&mut received).await.expect("read");
        (received, to_server)
    };
    let (served, (received, _to_server)) = tokio::join!(serving, client);
    let sent_body = sent_body.into_inner();
    match served {
        Ok(true) => check_response(
            &received,
            kind,
            sent_body.as_deref().expect("respond was called"),
        ),
        Ok(false) => assert!(received.is_empty(), "handed back, yet answered"),
        Err(err) if err.kind() == io::ErrorKind::TimedOut => {
            assert!(
                keep_open,
                "a head timeout, yet the client had closed its side"
            );
            assert!(sent_body.is_none() && received.is_empty());
        }
        Err(err) => {
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert_eq!(kind, Kind::Failing, "{err}");
            let (status, length, body) = head_of(&received);
            assert_eq!((status, length), (500, Some(0)));
            assert!(body.is_empty());
        }
    }
}

/// The status, `content-length` (if any) and what follows the head; checks
/// the head is well-formed HTTP/1.1 with one `connection: close`.
fn head_of(received: &[u8]) -> (u16, Option<usize>, &[u8]) {
    assert!(
        received.starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(received)
    );
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(end)) = response.parse(received) else {
        panic!("not a whole head: {:?}", String::from_utf8_lossy(received));
    };
    assert_eq!(response.version, Some(1));
    let connection: Vec<&[u8]> = response
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value)
        .collect();
    assert_eq!(connection, [b"close"]);
    let lengths: Vec<&[u8]> = response
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value)
        .collect();
    let chunked = response
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding") && h.value == b"chunked");
    assert!(
        lengths.len() <= 1 && (lengths.is_empty() || !chunked),
        "framing"
    );
    assert!(!lengths.is_empty() || chunked, "no framing");
    let length = lengths.first().map(|v| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("a decimal content-length")
    });
    (response.code.expect("status"), length, &received[end..])
}

fn check_response(received: &[u8], kind: Kind, sent: &[u8]) {
    let (status, length, body) = head_of(received);
    match kind {
        Kind::Stream => {
            assert_eq!((status, length), (200, None));
            // Whole chunks of what the handler sent, then the last chunk
            // (or nothing more if the client left first).
            let mut rest = body;
            let mut data = Vec::new();
            loop {
                if rest.is_empty() {
                    break;
                }
                let line = rest
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .expect("size line");
                let size = std::str::from_utf8(&rest[..line])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s, 16).ok())
                    .expect("hex size");
                rest = &rest[line + 2..];
                if size == 0 {
                    assert_eq!(rest, b"\r\n", "the last chunk ends the response");
                    assert_eq!(data, sent, "the whole stream before the last chunk");
                    break;
                }
                assert!(
                    rest.len() >= size + 2 && &rest[size..size + 2] == b"\r\n",
                    "whole chunk"
                );
                data.extend_from_slice(&rest[..size]);
                rest = &rest[size + 2..];
            }
            assert!(sent.starts_with(&data), "chunks carry the stream in order");
        }
        Kind::NotFound | Kind::Plain => {
            let expected = if kind == Kind::Plain { 200 } else { 404 };
            assert_eq!(status, expected);
            assert_eq!(length, Some(body.len()), "content-length is the body's");
            assert_eq!(body, sent);
        }
        Kind::Failing => panic!("a failing body was answered as whole"),
    }
}
