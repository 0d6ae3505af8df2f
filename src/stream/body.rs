//! The response body: [`SseStream`] reads its connection's queue, joins
//! queued frames into chunks, and sends keep-alives while idle.

use std::any::Any;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use tokio::time::{Instant, Sleep};

use super::StreamConfig;
use super::{
    gap_frame, Item, Phase, Shared, KEEP_ALIVE_FRAME, MAX_JOINED_BYTES, MAX_JOINED_FRAMES,
};
use crate::event::{retry_frame, Event};

struct KeepAlive {
    interval: Duration,
    last_activity: Instant,
    /// Created on the first poll, which runs inside the runtime; `channel`
    /// may be called outside one.
    sleep: Option<Pin<Box<Sleep>>>,
}

/// The end of a stream at a set time (a subscription's expiry).
struct Deadline {
    at: Instant,
    /// The frame that says why the stream ends.
    last: Bytes,
    /// Created on the first poll, which runs inside the runtime.
    sleep: Option<Pin<Box<Sleep>>>,
}

/// An SSE response body.
///
/// Yields encoded frames as a [`Stream`] of [`Bytes`] and implements
/// [`http_body::Body`]. Dropping it (the client went away) marks the
/// connection closed at once and runs its drop guard, which is how the hub
/// unregisters the connection.
pub struct SseStream {
    shared: Arc<Shared>,
    prologue: VecDeque<Bytes>,
    keep_alive: Option<KeepAlive>,
    /// Boxed: most streams have none, and every stream would pay its size.
    deadline: Option<Box<Deadline>>,
    ended: bool,
    guard: Option<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for SseStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseStream")
            .field("ended", &self.ended)
            .field("keep_alive", &self.keep_alive.as_ref().map(|k| k.interval))
            .finish_non_exhaustive()
    }
}

impl SseStream {
    pub(super) fn new(shared: Arc<Shared>, config: &StreamConfig) -> Self {
        let keep_alive = config
            .keep_alive
            .filter(|d| !d.is_zero())
            .map(|interval| KeepAlive {
                interval,
                last_activity: Instant::now(),
                sleep: None,
            });
        SseStream {
            shared,
            prologue: VecDeque::from_iter(config.initial_retry.map(retry_frame)),
            keep_alive,
            deadline: None,
            ended: false,
            guard: None,
        }
    }

    /// Attaches a value that is dropped as soon as the stream ends or is
    /// dropped, whichever comes first (e.g. an unregistration guard).
    pub fn with_drop_guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// Queues `event` to be sent before anything else the sender queues
    /// (after the initial `retry:`).
    pub fn prepend(mut self, event: &Event) -> Self {
        self.prologue.push_back(event.encode());
        self
    }

    /// Ends the stream at `at`: the frames queued by then are delivered,
    /// then `last`, then the end; nothing sent after `at` is queued.
    pub(crate) fn end_at(mut self, at: Instant, last: Bytes) -> Self {
        self.deadline = Some(Box::new(Deadline {
            at,
            last,
            sleep: None,
        }));
        self
    }

    /// Closes the queue with the deadline's frame once the deadline has
    /// passed; otherwise registers `cx` to be woken then.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) {
        let Some(deadline) = &mut self.deadline else {
            return;
        };
        let at = deadline.at;
        let sleep = deadline
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.as_mut().poll(cx).is_pending() {
            return;
        }
        let last = deadline.last.clone();
        self.deadline = None;
        let mut state = self.shared.lock();
        if state.phase == Phase::Open {
            state.enqueue(last);
            state.phase = Phase::Draining;
        }
    }

    /// Wraps the stream in an `http::Response` with the SSE headers:
    /// `content-type: text/event-stream`, `cache-control: no-cache` and
    /// `x-accel-buffering: no` (so nginx does not buffer the stream).
    pub fn into_http_response(self) -> http::Response<SseStream> {
        let mut response = http::Response::new(self);
        set_sse_headers(response.headers_mut());
        response
    }

    fn finish(&mut self) -> Poll<Option<Bytes>> {
        self.ended = true;
        self.keep_alive = None;
        self.deadline = None;
        self.guard = None;
        Poll::Ready(None)
    }

    fn activity(&mut self) {
        if let Some(k) = &mut self.keep_alive {
            k.last_activity = Instant::now();
        }
    }
}

/// Sets the three SSE response headers on `headers`.
pub fn set_sse_headers(headers: &mut http::HeaderMap) {
    use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

impl Stream for SseStream {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.get_mut().poll_chunk(cx, false)
    }
}

impl SseStream {
    /// The next frame; with `join`, also every frame queued right behind it
    /// (up to [`MAX_JOINED_BYTES`] / [`MAX_JOINED_FRAMES`]) copied into one
    /// chunk. The HTTP body joins: a client that fell behind by several
    /// events then costs one chunk, one write and one socket send instead of
    /// one per event, which is what a fan-out to many connections is made
    /// of. The `Stream` keeps one frame per item, as documented.
    fn poll_chunk(&mut self, cx: &mut Context<'_>, join: bool) -> Poll<Option<Bytes>> {
        let this = self;
        if this.ended {
            return Poll::Ready(None);
        }
        this.poll_deadline(cx);
        if let Some(frame) = this.prologue.pop_front() {
            if this.prologue.is_empty() {
                // Its buffer (room for four frames) would otherwise stay
                // for the stream's whole life.
                this.prologue = VecDeque::new();
            }
            return Poll::Ready(Some(frame));
        }
        let next = {
            let mut state = this.shared.lock();
            match state.pop_front() {
                Some(Item::Frame(frame)) => {
                    state.frames -= 1;
                    state.bytes -= frame.len();
                    if state.want_space {
                        state.want_space = false;
                        this.shared.space.notify_one();
                    }
                    if join && state.front_frame_len().is_some() {
                        // Sized once: grown from empty it took up to five
                        // allocations per chunk in a burst.
                        let mut more = Vec::with_capacity(state.frames.min(MAX_JOINED_FRAMES - 1));
                        let mut len = frame.len();
                        while let Some(next_len) = state.front_frame_len() {
                            if len + next_len > MAX_JOINED_BYTES
                                || more.len() + 1 >= MAX_JOINED_FRAMES
                            {
                                break;
                            }
                            len += next_len;
                            if let Some(Item::Frame(next)) = state.pop_front() {
                                state.frames -= 1;
                                state.bytes -= next.len();
                                more.push(next);
                            }
                        }
                        drop(state);
                        // Copied outside the lock, so senders never wait on it.
                        Some(join_frames(frame, more, len))
                    } else {
                        Some(frame)
                    }
                }
                Some(Item::Gap(n)) => Some(gap_frame(n)),
                None if state.phase != Phase::Open => None,
                None => {
                    if !state
                        .waker
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                    {
                        state.waker = Some(cx.waker().clone());
                    }
                    drop(state);
                    return this.poll_keep_alive(cx);
                }
            }
        };
        match next {
            Some(frame) => {
                this.activity();
                Poll::Ready(Some(frame))
            }
            None => this.finish(),
        }
    }
}

/// `first` followed by `more`, in one buffer of `len` bytes.
fn join_frames(first: Bytes, more: Vec<Bytes>, len: usize) -> Bytes {
    if more.is_empty() {
        return first;
    }
    let mut buf = BytesMut::with_capacity(len);
    buf.extend_from_slice(&first);
    for frame in &more {
        buf.extend_from_slice(frame);
    }
    buf.freeze()
}

impl SseStream {
    fn poll_keep_alive(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let Some(k) = &mut self.keep_alive else {
            return Poll::Pending;
        };
        loop {
            let due = k.last_activity + k.interval;
            let sleep = k
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            // The timer is moved only when it fires before `due` (there was
            // activity since it was set), not on every event: that was a
            // timer update, and its clock arithmetic, per event per
            // connection, 4% of a fan-out's CPU without the kernel.
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if now >= due {
                k.last_activity = now;
                return Poll::Ready(Some(Bytes::from_static(KEEP_ALIVE_FRAME)));
            }
            sleep.as_mut().reset(due);
        }
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.end_now();
        state.waker = None;
    }
}

impl http_body::Body for SseStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .poll_chunk(cx, true)
            .map(|f| f.map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}
