//! A small HTTP/1.1 driver for SSE requests, in front of your HTTP server.
//!
//! An idle SSE connection served by hyper keeps hyper's connection buffers
//! (a read buffer and a write buffer of 8 KiB each, the least hyper 1
//! allows) for as long as the stream is open: most of its memory. An SSE
//! node holds tens of thousands of such connections. [`serve_sse`] reads the
//! request head itself (a buffer that is freed before streaming starts),
//! lets your code build the response, and writes the stream with chunked
//! encoding straight to the socket; the connection then costs the stream and
//! the socket, about 2 KiB. Any other request is handed back, with the bytes
//! already read put back in front ([`Rewind`]), for hyper or axum to serve as
//! usual.
//!
//! ```no_run
//! use http_body_util::{Either, Full};
//! use sse_cluster::adapters::http1::{serve_sse, Served};
//! use sse_cluster::{Hub, Subscription};
//!
//! # async fn demo(listener: tokio::net::TcpListener, hub: Hub) -> std::io::Result<()> {
//! let (tcp, _) = listener.accept().await?;
//! let is_sse = |head: &http::request::Parts| head.uri.path() == "/events";
//! let respond = |req: http::Request<()>| async move {
//!     let (head, ()) = req.into_parts();
//!     match hub.connect_request(&head, Subscription::new().topic("news")).await {
//!         Ok(conn) => conn.into_http_response().map(Either::Left),
//!         Err(err) => {
//!             let mut refused = http::Response::new(Either::Right(Full::from(err.to_string())));
//!             *refused.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
//!             refused
//!         }
//!     }
//! };
//! match serve_sse(tcp, is_sse, respond).await? {
//!     Served::Done => {}
//!     // Any other request: serve `io` with hyper or axum as usual, e.g.
//!     // `Box::pin(http1::Builder::new().serve_connection(TokioIo::new(io), service)).await`
//!     // (boxed: in place, that future would size the task of every SSE
//!     // stream served by the same `async` block, for its whole life).
//!     Served::Other(io) => drop(io),
//!     _ => {}
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};

use super::WriteDeadline;
use crate::cors::{is_preflight, Cors};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest request head read, in bytes; a longer one is handed back to
/// your server (which answers it as it sees fit).
pub const MAX_HEAD: usize = 16 * 1024;

/// How long a client may take to send its request head (hyper's default
/// too): a connection that trickles bytes is closed with `TimedOut`.
pub const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long the end of a finished stream may wait for a client that does
/// not read.
const END_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Most headers parsed in a request head.
const MAX_HEADERS: usize = 64;

/// Largest non-SSE response body (an error, say) this driver writes, in
/// bytes. A larger one is not cut: [`serve_sse`] answers `500` with an
/// empty body and returns an error (see there).
pub const MAX_PLAIN_BODY: usize = 1 << 20;

/// What [`serve_sse`] did with a connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum Served<T> {
    /// The request was an SSE request: it was answered and the connection
    /// is finished (the stream ended, or the client left).
    Done,
    /// Not an SSE request (or not a head this driver reads): the
    /// connection, with the bytes already read put back in front, for your
    /// HTTP server.
    Other(Rewind<T>),
}

/// An IO whose first reads return bytes already read from it.
pub struct Rewind<T> {
    prefix: Bytes,
    io: T,
}

impl<T> fmt::Debug for Rewind<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rewind")
            .field("prefix", &self.prefix.len())
            .finish_non_exhaustive()
    }
}

impl<T> Rewind<T> {
    /// `io`, whose first reads return `prefix`.
    pub fn new(prefix: Bytes, io: T) -> Self {
        Self { prefix, io }
    }

    /// The IO (any bytes of the prefix not read yet are lost).
    pub fn into_inner(self) -> T {
        self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Reads one request head from `io`. If `is_sse` accepts it, answers it
/// with the response `respond` builds: an SSE response (status 200,
/// `content-type: text/event-stream`) is streamed with chunked encoding
/// until its body ends or the client leaves; any other response is written
/// whole. Both say `connection: close`: the connection is closed after the
/// response. Otherwise hands the connection back.
///
/// Never answers more than one request on a connection: a browser opens a
/// connection per `EventSource` anyway. The answer is written with
/// [`DEFAULT_WRITE_DEADLINE`](super::DEFAULT_WRITE_DEADLINE): a client that
/// takes no byte of it for that long is disconnected (wrap `io` in a
/// [`WriteDeadline`] of your own for another bound).
///
/// # Errors
///
/// - [`io::ErrorKind::TimedOut`]: the request head did not arrive within
///   [`HEAD_TIMEOUT`].
/// - [`io::ErrorKind::InvalidData`]: a non-SSE response body is longer than
///   [`MAX_PLAIN_BODY`], or yields an error, before it is complete. Its
///   head is not written yet (the body is read first), so nothing of it is
///   sent: the client gets `500 Internal Server Error` with an empty body,
///   never a cut body presented as whole. The error's inner error is a
///   [`BodyTooLarge`] in the first case.
/// - Any error of `io` while reading the head or writing the response.
pub async fn serve_sse<T, S, F, Fut, B>(io: T, is_sse: S, respond: F) -> io::Result<Served<T>>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: FnOnce(&http::request::Parts) -> bool,
    F: FnOnce(http::Request<()>) -> Fut,
    Fut: Future<Output = http::Response<B>>,
    B: Body<Data = Bytes>,
{
    serve_sse_with(io, &DriverConfig::default(), is_sse, respond).await
}

/// Settings of [`serve_sse_with`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DriverConfig {
    /// The CORS policy of the driver's answers; see [`DriverConfig::cors`].
    pub cors: Option<Cors>,
}

impl DriverConfig {
    /// Applies `cors` to every answer the driver writes, whatever your
    /// code built (a stream, or a refusal such as 401, 403, 429 or 503):
    /// the grant for an allowed `Origin` (see [`cors`](crate::cors)); and
    /// answers a preflight itself (`OPTIONS` with
    /// `Access-Control-Request-Method`) when `is_sse` accepts the request
    /// it announces (the same head with the announced method), without
    /// calling your code. Default: none.
    #[must_use]
    pub fn cors(mut self, cors: Cors) -> Self {
        self.cors = Some(cors);
        self
    }
}

/// [`serve_sse`] with `config` (a CORS policy, say).
///
/// ```no_run
/// use sse_cluster::adapters::http1::{serve_sse_with, DriverConfig};
/// use sse_cluster::{cors::Cors, Hub, Subscription};
///
/// # async fn demo(tcp: tokio::net::TcpStream, hub: Hub) -> std::io::Result<()> {
/// let config = DriverConfig::default().cors(Cors::origins(["https://app.example"]));
/// let is_sse = |head: &http::request::Parts| head.uri.path() == "/events";
/// let respond = |req: http::Request<()>| async move {
///     let (head, ()) = req.into_parts();
///     hub.respond(&head, Subscription::new().topic("news")).await
/// };
/// serve_sse_with(tcp, &config, is_sse, respond).await?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As [`serve_sse`].
pub async fn serve_sse_with<T, S, F, Fut, B>(
    mut io: T,
    config: &DriverConfig,
    is_sse: S,
    respond: F,
) -> io::Result<Served<T>>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: FnOnce(&http::request::Parts) -> bool,
    F: FnOnce(http::Request<()>) -> Fut,
    Fut: Future<Output = http::Response<B>>,
    B: Body<Data = Bytes>,
{
    let mut head = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    let parts = loop {
        match parse_head(&head) {
            Head::Complete(parts) => break parts,
            Head::Invalid => return Ok(Served::Other(Rewind::new(head.into(), io))),
            Head::Partial if head.len() >= MAX_HEAD => {
                return Ok(Served::Other(Rewind::new(head.into(), io)));
            }
            Head::Partial => {}
        }
        let read = tokio::time::timeout_at(deadline, read_more(&mut io, &mut head)).await;
        let Ok(read) = read else {
            return Err(io::ErrorKind::TimedOut.into());
        };
        if read? == 0 {
            return Ok(Served::Other(Rewind::new(head.into(), io)));
        }
    };
    let parts = *parts;
    let cors = config.cors.as_ref();
    if let Some(cors) = cors.filter(|_| is_preflight(&parts)) {
        if !is_sse(&announced(&parts)) {
            return Ok(Served::Other(Rewind::new(head.into(), io)));
        }
        drop(head);
        let mut io = WriteDeadline::new(&mut io);
        if let Some(answer) = cors.preflight(&parts) {
            let (answer, ()) = answer.into_parts();
            write_all(&mut io, &response_head(&answer, Some(0))).await?;
        }
        let _ = poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)).await;
        return Ok(Served::Done);
    }
    if !is_sse(&parts) {
        return Ok(Served::Other(Rewind::new(head.into(), io)));
    }
    drop(head);
    // Only what the CORS grant depends on outlives the request.
    let origin = cors.and_then(|_| parts.headers.get(http::header::ORIGIN).cloned());
    // Boxed, and freed once the response is there: in place, the app's
    // future (a router, the connect) would size this future, and so every
    // idle stream's task, for as long as the stream lives.
    let response = Box::pin(respond(http::Request::from_parts(parts, ()))).await;
    // Every write of the answer has the default write deadline: a client
    // that stops reading cannot pin the connection (and its stream's
    // registry entry) however the caller built `io`.
    let mut io = WriteDeadline::new(&mut io);
    // In a block, so that the response head does not live on in this
    // future while the stream runs.
    let stream = {
        let (mut parts, body) = response.into_parts();
        if let Some(cors) = cors {
            let mut request = http::HeaderMap::new();
            if let Some(origin) = origin {
                request.insert(http::header::ORIGIN, origin);
            }
            cors.apply(&request, &mut parts.headers);
        }
        let is_stream = parts.status == http::StatusCode::OK
            && parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if is_stream {
            write_all(&mut io, &response_head(&parts, None)).await?;
            Some(body)
        } else {
            match collect(body).await {
                Ok(body) => {
                    write_all(&mut io, &response_head(&parts, Some(body.len()))).await?;
                    write_all(&mut io, &body).await?;
                }
                Err(err) => {
                    // The client learns that this is not the response; the
                    // caller, why.
                    let (mut failed, ()) = http::Response::new(()).into_parts();
                    failed.status = http::StatusCode::INTERNAL_SERVER_ERROR;
                    let _ = write_all(&mut io, &response_head(&failed, Some(0))).await;
                    let _ = poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)).await;
                    return Err(err);
                }
            }
            None
        }
    };
    if let Some(body) = stream {
        stream_body(&mut io, body).await?;
    }
    let _ = poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)).await;
    Ok(Served::Done)
}

/// The request a preflight announces: its head with the method of
/// `Access-Control-Request-Method` (an invalid one: `OPTIONS` stays).
fn announced(preflight: &http::request::Parts) -> http::request::Parts {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = preflight
        .headers
        .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(http::Method::OPTIONS);
    parts.uri = preflight.uri.clone();
    parts.version = preflight.version;
    parts.headers = preflight.headers.clone();
    parts
}

enum Head {
    Complete(Box<http::request::Parts>),
    Partial,
    Invalid,
}

fn parse_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Invalid,
    }
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Head::Invalid;
    };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .version(http::Version::HTTP_11);
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    match builder.body(()) {
        Ok(request) => Head::Complete(Box::new(request.into_parts().0)),
        Err(_) => Head::Invalid,
    }
}

/// Reads what is available into `buf` (at most up to [`MAX_HEAD`]), in
/// place: no buffer of its own lives in the connection's future.
async fn read_more<T: AsyncRead + Unpin>(io: &mut T, buf: &mut Vec<u8>) -> io::Result<usize> {
    let old = buf.len();
    let want = 1024.min(MAX_HEAD.saturating_sub(old)).max(1);
    buf.resize(old + want, 0);
    let read = poll_fn(|cx| {
        let mut rb = ReadBuf::new(&mut buf[old..]);
        match Pin::new(&mut *io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let n = *read.as_ref().unwrap_or(&0);
    buf.truncate(old + n);
    read
}

async fn write_all<T: AsyncWrite + Unpin>(io: &mut T, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, data)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await
}

/// The status line and headers; `length` for a whole body, else chunked.
fn response_head(parts: &http::response::Parts, length: Option<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == http::header::CONTENT_LENGTH
            || name == http::header::TRANSFER_ENCODING
            || name == http::header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match length {
        // No length for a response that has no body by definition
        // (RFC 9110 section 8.6).
        Some(_) if parts.status == http::StatusCode::NO_CONTENT => {
            out.extend_from_slice(b"connection: close\r\n\r\n");
        }
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
        }
        // The connection is not reused after the stream either (RFC 9112
        // section 9.6: a server that closes says so in the response).
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"),
    }
    out
}

enum Next {
    Data(Bytes),
    End,
    ClientGone,
}

/// Writes `body` as chunks until it ends or the client closes its side.
async fn stream_body<T, B>(io: &mut T, body: B) -> io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    loop {
        let next = poll_fn(|cx| {
            // The body first: while it has data, the client's side is not
            // looked at (a gone client then fails the write). Reading it on
            // every wake-up cost a second readiness check, under tokio's
            // lock of the socket's waiters, per event per connection.
            loop {
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) if data.is_empty() => continue,
                        Ok(data) => return Poll::Ready(Next::Data(data)),
                        Err(_) => continue,
                    },
                    Poll::Ready(Some(Err(_))) | Poll::Ready(None) => return Poll::Ready(Next::End),
                    Poll::Pending => break,
                }
            }
            // Nothing to send: a client that closed its side reads as end
            // of file; anything it sends after the request is ignored
            // (bounded per wake-up). Polling registers the task for reads.
            for _ in 0..16 {
                let mut scratch = [0u8; 64];
                let mut rb = ReadBuf::new(&mut scratch);
                match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                        return Poll::Ready(Next::ClientGone)
                    }
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(_)) => return Poll::Ready(Next::ClientGone),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // Still sending: looked at again when the body next wakes us.
            Poll::Pending
        })
        .await;
        match next {
            Next::Data(data) => write_chunk(io, &data).await?,
            Next::End => {
                let end = tokio::time::timeout(END_TIMEOUT, write_all(io, b"0\r\n\r\n"));
                return end.await.unwrap_or(Ok(()));
            }
            Next::ClientGone => return Ok(()),
        }
    }
}

/// Writes `data` as one chunk: size line, data and CRLF in one vectored
/// write (no copy) when the IO takes it whole, as a socket normally does.
async fn write_chunk<T: AsyncWrite + Unpin>(io: &mut T, data: &[u8]) -> io::Result<()> {
    let mut size = [0u8; 18];
    let size_len = chunk_size_line(data.len(), &mut size);
    let parts: [&[u8]; 3] = [&size[..size_len], data, b"\r\n"];
    let total = size_len + data.len() + 2;
    let written = poll_fn(|cx| {
        let slices = parts.map(io::IoSlice::new);
        Pin::new(&mut *io).poll_write_vectored(cx, &slices)
    })
    .await?;
    if written == total {
        return poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await;
    }
    // A short write: the rest, copied once.
    let rest: Vec<u8> = parts.concat().split_off(written.min(total));
    write_all(io, &rest).await
}

/// Writes `len` in hex and CRLF into `out`; returns the length written.
fn chunk_size_line(len: usize, out: &mut [u8; 18]) -> usize {
    let digits = if len == 0 {
        1
    } else {
        (usize::BITS - len.leading_zeros()).div_ceil(4) as usize
    };
    for (i, slot) in out.iter_mut().take(digits).enumerate() {
        let nibble = (len >> (4 * (digits - 1 - i))) & 0xf;
        *slot = b"0123456789abcdef"[nibble];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// The error inside the [`io::Error`] that [`serve_sse`] returns when a
/// non-SSE response body is longer than [`MAX_PLAIN_BODY`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BodyTooLarge {
    /// The limit the body went over ([`MAX_PLAIN_BODY`]).
    pub limit: usize,
}

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the response body is longer than the {} bytes the http1 driver writes",
            self.limit
        )
    }
}

impl std::error::Error for BodyTooLarge {}

/// The whole body of a small (non-SSE) response: `Err` if it is longer than
/// [`MAX_PLAIN_BODY`] or fails, never a part of it.
async fn collect<B: Body<Data = Bytes>>(body: B) -> io::Result<Vec<u8>> {
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let Ok(frame) = frame else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the response body failed",
            ));
        };
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_PLAIN_BODY {
                let limit = MAX_PLAIN_BODY;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    BodyTooLarge { limit },
                ));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines() {
        for len in [
            0usize,
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            4096,
            65_535,
            1 << 20,
            usize::MAX,
        ] {
            let mut out = [0u8; 18];
            let n = chunk_size_line(len, &mut out);
            assert_eq!(&out[..n], format!("{len:x}\r\n").as_bytes(), "{len}");
        }
    }
}
