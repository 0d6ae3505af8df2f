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
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

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
pub fn serve_sse<T, S, F, Fut, B>(
    io: T,
    is_sse: S,
    respond: F,
) -> impl Future<Output = io::Result<Served<T>>>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: FnOnce(&http::request::Parts) -> bool,
    F: FnOnce(http::Request<()>) -> Fut,
    Fut: Future<Output = http::Response<B>>,
    B: Body<Data = Bytes>,
{
    // Not an `async fn` of its own: that would keep a second copy of `io`
    // and the closures, and a default config, in every stream's task.
    serve_sse_with(io, &NO_CONFIG, is_sse, respond)
}

/// The settings of [`serve_sse`]: a static, so that no stream's task holds
/// a copy.
static NO_CONFIG: DriverConfig = DriverConfig { cors: None };

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
pub fn serve_sse_with<'a, T, S, F, Fut, B>(
    io: T,
    config: &'a DriverConfig,
    is_sse: S,
    respond: F,
) -> impl Future<Output = io::Result<Served<T>>> + use<'a, T, S, F, Fut, B>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: FnOnce(&http::request::Parts) -> bool,
    F: FnOnce(http::Request<()>) -> Fut,
    Fut: Future<Output = http::Response<B>>,
    B: Body<Data = Bytes>,
{
    // This future is what an idle stream's task holds for the stream's
    // whole life, so it keeps only what streaming needs (the IO, the body,
    // the chunk being written). An `async` block, not an `async fn`: the
    // latter keeps a second copy of each argument. See BENCHMARKS.md, "Idle
    // memory, third pass".
    let mut io = io;
    async move {
        // Boxed, and freed once the response head is written: in place, its
        // state (the head buffer, the parsed request, the app's future, the
        // response head, the head timeout) would size this future.
        let body = match Box::pin(open(&mut io, config.cors.as_ref(), is_sse, respond)).await? {
            Opened::Stream(body) => body,
            Opened::Done => return Ok(Served::Done),
            Opened::Other(prefix) => return Ok(Served::Other(Rewind::new(prefix, io))),
        };
        // Every write has the default write deadline: a client that stops
        // reading cannot pin the connection (and its stream's registry
        // entry) however the caller built `io`.
        let mut io = WriteDeadline::new(&mut io);
        let mut body = std::pin::pin!(body);
        if stream_body(&mut io, body.as_mut()).await? {
            // The body ended: the last chunk. Boxed: in place, the timer
            // would size every stream's task.
            let end = Box::pin(tokio::time::timeout(
                END_TIMEOUT,
                write_all(&mut io, b"0\r\n\r\n"),
            ));
            end.await.unwrap_or(Ok(()))?;
        }
        let _ = io.shutdown().await;
        Ok(Served::Done)
    }
}

/// What [`open`] leaves for the rest of [`serve_sse_with`].
enum Opened<B> {
    /// Answered whole (a preflight, a response that is not a stream) and
    /// shut down.
    Done,
    /// Not an SSE request: the bytes already read, to put back in front.
    Other(Bytes),
    /// An SSE response whose head is written: stream this body.
    Stream(B),
}

/// Reads the request head and answers it up to the stream's body: a
/// preflight, a whole response, or the head of an SSE response.
async fn open<T, S, F, Fut, B>(
    io: &mut T,
    cors: Option<&Cors>,
    is_sse: S,
    respond: F,
) -> io::Result<Opened<B>>
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
            Head::Invalid => return Ok(Opened::Other(head.into())),
            Head::Partial if head.len() >= MAX_HEAD => return Ok(Opened::Other(head.into())),
            Head::Partial => {}
        }
        let read = tokio::time::timeout_at(deadline, read_more(io, &mut head)).await;
        let Ok(read) = read else {
            return Err(io::ErrorKind::TimedOut.into());
        };
        if read? == 0 {
            return Ok(Opened::Other(head.into()));
        }
    };
    let parts = *parts;
    if let Some(cors) = cors.filter(|_| is_preflight(&parts)) {
        if !is_sse(&announced(&parts)) {
            return Ok(Opened::Other(head.into()));
        }
        drop(head);
        let mut io = WriteDeadline::new(io);
        if let Some(answer) = cors.preflight(&parts) {
            let (answer, ()) = answer.into_parts();
            write_all(&mut io, &response_head(&answer, Some(0))).await?;
        }
        let _ = io.shutdown().await;
        return Ok(Opened::Done);
    }
    if !is_sse(&parts) {
        return Ok(Opened::Other(head.into()));
    }
    drop(head);
    // Only what the CORS grant depends on outlives the request.
    let origin = cors.and_then(|_| parts.headers.get(http::header::ORIGIN).cloned());
    // Boxed: the app's future (a router, the connect) is freed as soon as
    // it has answered.
    let response = Box::pin(respond(http::Request::from_parts(parts, ()))).await;
    let mut io = WriteDeadline::new(io);
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
        return Ok(Opened::Stream(body));
    }
    match collect(body).await {
        Ok(body) => {
            write_all(&mut io, &response_head(&parts, Some(body.len()))).await?;
            write_all(&mut io, &body).await?;
            let _ = io.shutdown().await;
            Ok(Opened::Done)
        }
        Err(err) => {
            // The client learns that this is not the response; the
            // caller, why.
            let (mut failed, ()) = http::Response::new(()).into_parts();
            failed.status = http::StatusCode::INTERNAL_SERVER_ERROR;
            let _ = write_all(&mut io, &response_head(&failed, Some(0))).await;
            let _ = io.shutdown().await;
            Err(err)
        }
    }
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

/// A chunk being written: its data and how many bytes of the whole chunk
/// (size line, data, CRLF) are written.
struct Chunk {
    data: Bytes,
    written: usize,
}

/// Writes `body` as chunks until it ends (`true`) or the client closes its
/// side (`false`).
///
/// One `poll_fn` over a few words (the chunk being written and two
/// references): this is what an idle stream's task waits in.
fn stream_body<'a, T, B>(
    io: &'a mut T,
    mut body: Pin<&'a mut B>,
) -> impl Future<Output = io::Result<bool>> + use<'a, T, B>
where
    T: AsyncRead + AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
{
    let mut chunk: Option<Chunk> = None;
    poll_fn(move |cx| loop {
        if let Some(pending) = &mut chunk {
            match poll_write_chunk(&mut *io, cx, pending) {
                Poll::Ready(Ok(())) => chunk = None,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // The body first: while it has data, the client's side is not
        // looked at (a gone client then fails the write). Reading it on
        // every wake-up cost a second readiness check, under tokio's lock
        // of the socket's waiters, per event per connection.
        match body.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        chunk = Some(Chunk { data, written: 0 });
                    }
                }
                continue;
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => return Poll::Ready(Ok(true)),
            Poll::Pending => {}
        }
        // Nothing to send: a client that closed its side reads as end of
        // file; anything it sends after the request is ignored (bounded per
        // wake-up). Polling registers the task for reads.
        for _ in 0..16 {
            let mut scratch = [0u8; 64];
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok(false)),
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(false)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Still sending: looked at again when the body next wakes us.
        return Poll::Pending;
    })
}

/// Writes `chunk` (size line, data, CRLF) in vectored writes (no copy),
/// normally one, as a socket takes it whole; then flushes.
fn poll_write_chunk<T: AsyncWrite + Unpin>(
    io: &mut T,
    cx: &mut Context<'_>,
    chunk: &mut Chunk,
) -> Poll<io::Result<()>> {
    let mut size = [0u8; 18];
    let size_len = chunk_size_line(chunk.data.len(), &mut size);
    let total = size_len + chunk.data.len() + 2;
    while chunk.written < total {
        // What is left of the three parts after `written` bytes.
        let mut skip = chunk.written;
        let mut slices = [io::IoSlice::new(&[]); 3];
        let mut len = 0;
        for part in [&size[..size_len], &chunk.data[..], b"\r\n"] {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            slices[len] = io::IoSlice::new(&part[skip..]);
            skip = 0;
            len += 1;
        }
        match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..len]) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => chunk.written += n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    Pin::new(&mut *io).poll_flush(cx)
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

    /// A writer that takes a few bytes at a time (and only the first
    /// slice of a vectored write, as a duplex pipe does) still gets every
    /// chunk whole and in order.
    #[tokio::test]
    async fn chunks_survive_short_writes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server, mut client) = tokio::io::duplex(5);
        let frames = [
            Bytes::from_static(b"data: one\n\n"),
            Bytes::from(vec![b'x'; 300]),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(
            frames
                .clone()
                .map(|f| Ok::<_, std::convert::Infallible>(http_body::Frame::data(f))),
        ));
        let served = tokio::spawn(serve_sse(
            server,
            |_| true,
            |_| async move {
                let mut response = http::Response::new(body);
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/event-stream"),
                );
                response
            },
        ));
        client
            .write_all(b"GET /events HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(matches!(served.await.unwrap(), Ok(Served::Done)));
        let at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut want = Vec::new();
        for frame in &frames {
            want.extend_from_slice(format!("{:x}\r\n", frame.len()).as_bytes());
            want.extend_from_slice(frame);
            want.extend_from_slice(b"\r\n");
        }
        want.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(got[at..], want[..]);
    }

    /// The driver's future is what an idle stream's task holds for the
    /// stream's whole life: the request's and the response head's state
    /// must not size it (it was 1.4 KiB with the demo node's types; see
    /// BENCHMARKS.md, "Idle memory, third pass").
    #[test]
    fn the_streaming_future_stays_small() {
        let (io, _client) = tokio::io::duplex(64);
        let body = http_body_util::Empty::<Bytes>::new();
        let served = serve_sse(io, |_| true, |_| async { http::Response::new(body) });
        let size = std::mem::size_of_val(&served);
        assert!(size <= 160, "{size} bytes");
    }
}
