//! A write deadline for any connection: [`WriteDeadline`] fails a write that
//! the peer has not let make progress for a while, so the HTTP server drops
//! the connection, and with it the SSE body, which unregisters the
//! connection (registry, per-user slot, presence) at once.
//!
//! Why the body alone cannot do it: hyper (and the crate's HTTP/1.1 driver)
//! polls a response body only when it can write, so a client that stops
//! reading leaves its connection blocked on a write forever. The queue's
//! overflow policy ends the *stream* ([`OverflowPolicy`](crate::OverflowPolicy)),
//! and [`Hub::shutdown`](crate::Hub::shutdown) ends every stream, but only a
//! failing write lets the server let go of the socket.
//!
//! Wrap each accepted connection:
//!
//! ```no_run
//! use sse_cluster::adapters::WriteDeadline;
//!
//! # async fn demo(listener: tokio::net::TcpListener) -> std::io::Result<()> {
//! let (tcp, _) = listener.accept().await?;
//! let io = WriteDeadline::new(tcp); // DEFAULT_WRITE_DEADLINE: 5 s without progress
//! // hand `io` to hyper (through `hyper_util::rt::TokioIo`) or to
//! // `adapters::http1::serve_sse`
//! # let _ = io;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How long a write may wait for the peer to take bytes before it fails:
/// long enough for a slow mobile link to drain a frame, short enough that a
/// client that stopped reading is gone within seconds.
pub const DEFAULT_WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// An IO whose writes (and flushes and shutdown) fail with
/// [`io::ErrorKind::TimedOut`] when the peer has taken no byte for the
/// deadline. Reads pass through untouched. See the [module docs](self).
pub struct WriteDeadline<T> {
    io: T,
    deadline: Duration,
    /// Armed when a write first waits; disarmed by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> fmt::Debug for WriteDeadline<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteDeadline")
            .field("deadline", &self.deadline)
            .field("stalled", &self.stalled.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> WriteDeadline<T> {
    /// `io` with [`DEFAULT_WRITE_DEADLINE`].
    pub fn new(io: T) -> Self {
        Self::with_deadline(io, DEFAULT_WRITE_DEADLINE)
    }

    /// `io` whose writes fail after `deadline` without progress.
    pub fn with_deadline(io: T, deadline: Duration) -> Self {
        Self {
            io,
            deadline,
            stalled: None,
        }
    }

    /// The wrapped IO.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The wrapped IO.
    pub fn into_inner(self) -> T {
        self.io
    }

    /// Passes a ready result on (disarming the timer on progress); on
    /// `Pending`, arms the timer, and fails once it has run out. Polling the
    /// timer registers the task's waker, so a peer that never reads still
    /// gets its connection closed.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let deadline = self.deadline;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer took no bytes within the write deadline",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_fails_the_write_after_the_deadline() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = WriteDeadline::with_deadline(near, Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        let err = io.write_all(&[b'x'; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        // What was taken before the stall is still there to read.
        let mut got = [0u8; 64];
        assert_eq!(far.read(&mut got).await.unwrap(), 64);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_rearms_the_deadline() {
        let (near, mut far) = tokio::io::duplex(16);
        let mut io = WriteDeadline::with_deadline(near, Duration::from_secs(3));
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut buf = [0u8; 16];
            // Reads 16 bytes every 2 s: slower than the writer, but never
            // stalled for the whole deadline.
            while total < 128 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                total += far.read(&mut buf).await.unwrap();
            }
            total
        });
        io.write_all(&[b'x'; 128]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 128);
    }
}
