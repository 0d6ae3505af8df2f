//! The SSE response body: a bounded per-connection queue of encoded frames.
//!
//! [`channel`] returns a [`FrameSender`] (kept by whoever delivers events, the
//! hub's registry) and an [`SseStream`] (handed to the HTTP server). The
//! stream is both a [`futures_core::Stream`] of frames and an
//! [`http_body::Body`], so hyper serves it as is and axum accepts it as a
//! handler's return value.
//!
//! The stream sends an initial `retry:` frame, a keep-alive comment whenever
//! the connection has been idle for the keep-alive interval, and ends when the
//! sender closes it. Sending never blocks and never waits for the client: the
//! queue is bounded and a full queue applies the [`OverflowPolicy`].

use std::any::Any;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use tokio::time::{Instant, Sleep};

use tokio::sync::Notify;

use crate::event::{retry_frame, Event};

/// Name of the event that tells a client it may have missed events, so the
/// app can refetch its state. Its data is a JSON object with a `reason`:
///
/// * `{"reason":"overflow","dropped":N}`: under [`OverflowPolicy::DropEvents`],
///   N events were dropped at this point of the stream because the client
///   read too slowly;
/// * `{"reason":"bus"}`: the node lost its broker connection for a while, so
///   events published on other nodes meanwhile did not reach this stream
///   (sent when the broker is back; see `HubBuilder::gap_events`).
pub const GAP_EVENT: &str = "sse-cluster.gap";

const KEEP_ALIVE_FRAME: &[u8] = b":\n\n";

/// Most bytes the HTTP body joins into one chunk when several frames are
/// queued (see `SseStream::poll_chunk`).
const MAX_JOINED_BYTES: usize = 16 * 1024;
/// Most frames joined into one chunk.
const MAX_JOINED_FRAMES: usize = 64;

/// What happens when a connection's queue is full because the client reads
/// more slowly than events arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// End the stream at once and free its queue. The client's EventSource
    /// reconnects (and, with history, resumes from its `Last-Event-ID`).
    #[default]
    Close,
    /// Keep the connection, drop the events that do not fit and count them;
    /// once the client catches up, the stream carries a [`GAP_EVENT`] at the
    /// place where events were lost.
    DropEvents,
}

/// Per-connection stream settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StreamConfig {
    /// Idle time after which a keep-alive comment is sent; `None` disables
    /// keep-alive. Default: 15 s.
    pub keep_alive: Option<Duration>,
    /// The `retry:` sent as the first frame of every stream; `None` sends
    /// none. Default: 3 s.
    pub initial_retry: Option<Duration>,
    /// Most frames queued for one connection. Default: 256.
    pub max_queued_frames: usize,
    /// Most bytes queued for one connection. Default: 1 MiB.
    pub max_queued_bytes: usize,
    /// What a full queue does. Default: [`OverflowPolicy::Close`].
    pub overflow: OverflowPolicy,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            keep_alive: Some(Duration::from_secs(15)),
            initial_retry: Some(Duration::from_secs(3)),
            max_queued_frames: 256,
            max_queued_bytes: 1 << 20,
            overflow: OverflowPolicy::Close,
        }
    }
}

impl StreamConfig {
    /// Sets [`StreamConfig::keep_alive`].
    pub fn keep_alive(mut self, interval: Option<Duration>) -> Self {
        self.keep_alive = interval;
        self
    }

    /// Sets [`StreamConfig::initial_retry`].
    pub fn initial_retry(mut self, retry: Option<Duration>) -> Self {
        self.initial_retry = retry;
        self
    }

    /// Sets the queue bounds, in frames and in bytes (each at least 1).
    pub fn queue_limits(mut self, frames: usize, bytes: usize) -> Self {
        self.max_queued_frames = frames.max(1);
        self.max_queued_bytes = bytes.max(1);
        self
    }

    /// Sets [`StreamConfig::overflow`].
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = policy;
        self
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The stream has ended or the client is gone.
    #[error("the stream is closed")]
    Closed,
    /// The queue was full and the connection was closed ([`OverflowPolicy::Close`]).
    #[error("the queue was full; the connection was closed")]
    OverflowClosed,
    /// The queue was full and this frame was dropped ([`OverflowPolicy::DropEvents`]).
    #[error("the queue was full; the frame was dropped")]
    Dropped,
}

enum Item {
    Frame(Bytes),
    Gap(u64),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Deliver what is queued, then end.
    Draining,
    /// End now; the queue has been emptied.
    Ended,
}

struct State {
    items: VecDeque<Item>,
    frames: usize,
    bytes: usize,
    phase: Phase,
    dropped: u64,
    waker: Option<Waker>,
    /// State a layer above keeps per connection under this lock (the
    /// resume cursor, with history on); see [`FrameSender::with_gate`].
    gate: Option<Box<dyn Any + Send>>,
    /// A sender waits for the client to read (see [`FrameSender::wait_for_space`]).
    want_space: bool,
}

impl State {
    /// Queues `frame` (the caller checked the bounds, or bypasses them).
    fn enqueue(&mut self, frame: Bytes) {
        self.frames += 1;
        self.bytes += frame.len();
        self.items.push_back(Item::Frame(frame));
    }

    /// Ends the stream at once and frees the queue.
    fn end_now(&mut self) {
        self.phase = Phase::Ended;
        self.items = VecDeque::new();
        self.frames = 0;
        self.bytes = 0;
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a replay waiting for queue space may go on.
    space: Notify,
    max_frames: usize,
    max_bytes: usize,
    overflow: OverflowPolicy,
}

impl Shared {
    /// Whether a frame of `len` bytes fits the queue bounds now (a frame
    /// always fits an empty queue).
    fn fits(&self, state: &State, len: usize) -> bool {
        state.frames < self.max_frames && (state.bytes + len <= self.max_bytes || state.frames == 0)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every critical section is a few plain field updates), so a
        // poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Creates a connected sender and SSE body.
pub fn channel(config: &StreamConfig) -> (FrameSender, SseStream) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            frames: 0,
            bytes: 0,
            phase: Phase::Open,
            dropped: 0,
            waker: None,
            gate: None,
            want_space: false,
        }),
        space: Notify::new(),
        max_frames: config.max_queued_frames.max(1),
        max_bytes: config.max_queued_bytes.max(1),
        overflow: config.overflow,
    });
    let keep_alive = config
        .keep_alive
        .filter(|d| !d.is_zero())
        .map(|interval| KeepAlive {
            interval,
            last_activity: Instant::now(),
            sleep: None,
        });
    let stream = SseStream {
        shared: shared.clone(),
        prologue: VecDeque::from_iter(config.initial_retry.map(retry_frame)),
        keep_alive,
        ended: false,
        guard: None,
    };
    (FrameSender { shared }, stream)
}

/// The sending half of an SSE connection: queues encoded frames without ever
/// waiting. Cheap to clone.
#[derive(Clone)]
pub struct FrameSender {
    shared: Arc<Shared>,
}

impl fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("FrameSender")
            .field("queued_frames", &state.frames)
            .field("queued_bytes", &state.bytes)
            .field("dropped", &state.dropped)
            .finish()
    }
}

impl FrameSender {
    /// Queues one frame (normally from [`Event::encode`]). On a full queue the
    /// stream's [`OverflowPolicy`] decides, and the error says what it did.
    pub fn send(&self, frame: Bytes) -> Result<(), SendError> {
        let shared = &*self.shared;
        let state = shared.lock();
        if state.phase != Phase::Open {
            return Err(SendError::Closed);
        }
        push_and_wake(shared, state, frame)
    }

    /// Attaches `gate`: per-connection state of a layer above the stream,
    /// which then decides about frames under the queue's lock through
    /// [`FrameSender::with_gate`]. The resume layer keeps its cursor here.
    pub(crate) fn attach_gate(&self, gate: Box<dyn Any + Send>) {
        self.shared.lock().gate = Some(gate);
    }

    /// Runs `f` on the attached gate of type `T` and the queue, under the
    /// queue's lock, and wakes the stream if `f` queued something. `Ok(None)`
    /// when no gate of that type is attached; `Err` when the stream has ended.
    pub(crate) fn with_gate<T: Any, R>(
        &self,
        f: impl FnOnce(&mut T, &mut Queue<'_>) -> R,
    ) -> Result<Option<R>, SendError> {
        let shared = &*self.shared;
        let mut state = shared.lock();
        if state.phase != Phase::Open {
            return Err(SendError::Closed);
        }
        // Taken out while `f` runs, so that `f` may borrow the queue too.
        let Some(mut gate) = state.gate.take() else {
            return Ok(None);
        };
        let outcome = gate.downcast_mut::<T>().map(|gate| {
            let mut queue = Queue {
                shared,
                state: &mut state,
                queued: false,
            };
            let result = f(gate, &mut queue);
            (result, queue.queued)
        });
        state.gate = Some(gate);
        Ok(outcome.map(|(result, queued)| {
            if queued {
                wake(state);
            }
            result
        }))
    }

    /// Waits until the client has read something (or a short while has
    /// passed), after [`Queue::want_space`] was called under the lock. A
    /// sender that must not drop (a replay) loops on this.
    pub(crate) async fn wait_for_space(&self) {
        // Re-checked at least this often: the stream may end without a read.
        let _ =
            tokio::time::timeout(Duration::from_millis(250), self.shared.space.notified()).await;
    }

    /// Ends the stream after the frames already queued, with `last` as the
    /// final frame (it bypasses the queue bounds). Does nothing if the stream
    /// is already closing.
    pub fn close_with(&self, last: Option<Bytes>) {
        let mut state = self.shared.lock();
        if state.phase != Phase::Open {
            return;
        }
        if let Some(frame) = last {
            state.enqueue(frame);
        }
        state.phase = Phase::Draining;
        wake(state);
    }

    /// Ends the stream now, dropping the frames still queued.
    pub fn abort(&self) {
        let mut state = self.shared.lock();
        state.end_now();
        wake(state);
    }

    /// Ends the stream after the frames already queued.
    pub fn close(&self) {
        self.close_with(None);
    }

    /// True once the stream is closing, has ended, or the client is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().phase != Phase::Open
    }

    /// Frames dropped so far under [`OverflowPolicy::DropEvents`].
    pub fn dropped(&self) -> u64 {
        self.shared.lock().dropped
    }

    /// Frames currently waiting to be read by the client.
    pub fn queued(&self) -> usize {
        self.shared.lock().frames
    }
}

/// A connection's queue as a gate sees it, under the queue's lock (see
/// [`FrameSender::with_gate`]).
pub(crate) struct Queue<'a> {
    shared: &'a Shared,
    state: &'a mut State,
    /// Something was queued: the stream is woken when the lock is released.
    queued: bool,
}

impl Queue<'_> {
    /// The queue's bounds: frames, bytes.
    pub(crate) fn limits(&self) -> (usize, usize) {
        (self.shared.max_frames, self.shared.max_bytes)
    }

    /// Room left now: frames, bytes.
    pub(crate) fn room(&self) -> (usize, usize) {
        (
            self.shared.max_frames.saturating_sub(self.state.frames),
            self.shared.max_bytes.saturating_sub(self.state.bytes),
        )
    }

    /// Whether a frame of `len` bytes fits the bounds now.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.shared.fits(self.state, len)
    }

    /// Queues `frame` within the bounds, or applies the overflow policy.
    pub(crate) fn push(&mut self, frame: Bytes) -> Result<(), SendError> {
        let result = push(self.shared, self.state, frame);
        if result != Err(SendError::Dropped) {
            self.queued = true;
        }
        result
    }

    /// Queues `frame` past the bounds (the caller checked [`Queue::fits`]).
    pub(crate) fn enqueue(&mut self, frame: Bytes) {
        self.state.enqueue(frame);
        self.queued = true;
    }

    /// Asks to be told (through [`FrameSender::wait_for_space`]) when the
    /// client reads.
    pub(crate) fn want_space(&mut self) {
        self.state.want_space = true;
    }
}

struct KeepAlive {
    interval: Duration,
    last_activity: Instant,
    /// Created on the first poll, which runs inside the runtime; `channel`
    /// may be called outside one.
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

/// Unlocks the queue, then wakes the stream if it is waiting (waking with
/// the lock held would let the woken task contend for it at once).
fn wake(mut state: MutexGuard<'_, State>) {
    let waker = state.waker.take();
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// [`push`], then wakes the stream unless nothing new can be read (a
/// dropped frame).
fn push_and_wake(
    shared: &Shared,
    mut state: MutexGuard<'_, State>,
    frame: Bytes,
) -> Result<(), SendError> {
    let result = push(shared, &mut state, frame);
    if result != Err(SendError::Dropped) {
        wake(state);
    }
    result
}

/// Queues `frame` within the bounds, or applies the overflow policy.
fn push(shared: &Shared, state: &mut State, frame: Bytes) -> Result<(), SendError> {
    if shared.fits(state, frame.len()) {
        state.enqueue(frame);
        return Ok(());
    }
    match shared.overflow {
        OverflowPolicy::Close => {
            state.end_now();
            Err(SendError::OverflowClosed)
        }
        OverflowPolicy::DropEvents => {
            state.dropped += 1;
            match state.items.back_mut() {
                Some(Item::Gap(n)) => *n += 1,
                _ => state.items.push_back(Item::Gap(1)),
            }
            Err(SendError::Dropped)
        }
    }
}

/// The [`GAP_EVENT`] sent when the broker lost messages for this node.
pub(crate) const GAP_BUS_FRAME: &[u8] = b"event: sse-cluster.gap\ndata: {\"reason\":\"bus\"}\n\n";

fn gap_frame(dropped: u64) -> Bytes {
    let mut frame = String::with_capacity(48);
    frame.push_str("event: ");
    frame.push_str(GAP_EVENT);
    frame.push_str("\ndata: {\"reason\":\"overflow\",\"dropped\":");
    frame.push_str(&dropped.to_string());
    frame.push_str("}\n\n");
    Bytes::from(frame)
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
        if let Some(frame) = this.prologue.pop_front() {
            return Poll::Ready(Some(frame));
        }
        let next = {
            let mut state = this.shared.lock();
            match state.items.pop_front() {
                Some(Item::Frame(frame)) => {
                    state.frames -= 1;
                    state.bytes -= frame.len();
                    if state.want_space {
                        state.want_space = false;
                        this.shared.space.notify_one();
                    }
                    if join && matches!(state.items.front(), Some(Item::Frame(_))) {
                        let mut more = Vec::new();
                        let mut len = frame.len();
                        while let Some(Item::Frame(next)) = state.items.front() {
                            if len + next.len() > MAX_JOINED_BYTES
                                || more.len() + 1 >= MAX_JOINED_FRAMES
                            {
                                break;
                            }
                            len += next.len();
                            if let Some(Item::Frame(next)) = state.items.pop_front() {
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
            if sleep.deadline() != due {
                sleep.as_mut().reset(due);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= due {
                k.last_activity = Instant::now();
                return Poll::Ready(Some(Bytes::from_static(KEEP_ALIVE_FRAME)));
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn cfg() -> StreamConfig {
        StreamConfig::default().keep_alive(None).initial_retry(None)
    }

    #[tokio::test]
    async fn delivers_in_order_then_ends_on_close() {
        let (tx, mut rx) = channel(&cfg());
        tx.send(Bytes::from_static(b"data: 1\n\n")).unwrap();
        tx.send(Bytes::from_static(b"data: 2\n\n")).unwrap();
        tx.close_with(Some(Bytes::from_static(b"retry: 10\n\n")));
        assert_eq!(tx.send(Bytes::new()), Err(SendError::Closed));
        assert_eq!(&rx.next().await.unwrap()[..], b"data: 1\n\n");
        assert_eq!(&rx.next().await.unwrap()[..], b"data: 2\n\n");
        assert_eq!(&rx.next().await.unwrap()[..], b"retry: 10\n\n");
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn initial_retry_comes_first() {
        let (_tx, mut rx) = channel(&StreamConfig::default().keep_alive(None));
        assert_eq!(&rx.next().await.unwrap()[..], b"retry: 3000\n\n");
    }

    #[tokio::test]
    async fn overflow_close_ends_the_stream() {
        let (tx, mut rx) = channel(&cfg().queue_limits(2, 1 << 20));
        tx.send(Bytes::from_static(b"a")).unwrap();
        tx.send(Bytes::from_static(b"b")).unwrap();
        assert_eq!(
            tx.send(Bytes::from_static(b"c")),
            Err(SendError::OverflowClosed)
        );
        assert!(tx.is_closed());
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn overflow_drop_marks_the_gap_in_place() {
        let (tx, mut rx) = channel(
            &cfg()
                .queue_limits(1, 1 << 20)
                .overflow(OverflowPolicy::DropEvents),
        );
        tx.send(Bytes::from_static(b"a")).unwrap();
        assert_eq!(tx.send(Bytes::from_static(b"b")), Err(SendError::Dropped));
        assert_eq!(tx.send(Bytes::from_static(b"c")), Err(SendError::Dropped));
        assert_eq!(tx.dropped(), 2);
        assert_eq!(&rx.next().await.unwrap()[..], b"a");
        assert_eq!(
            &rx.next().await.unwrap()[..],
            b"event: sse-cluster.gap\ndata: {\"reason\":\"overflow\",\"dropped\":2}\n\n"
        );
        tx.send(Bytes::from_static(b"d")).unwrap();
        assert_eq!(&rx.next().await.unwrap()[..], b"d");
    }

    #[tokio::test]
    async fn byte_bound_applies() {
        let (tx, _rx) = channel(&cfg().queue_limits(100, 4));
        tx.send(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(
            tx.send(Bytes::from_static(b"de")),
            Err(SendError::OverflowClosed)
        );
    }

    #[tokio::test]
    async fn dropping_the_stream_closes_the_sender_and_runs_the_guard() {
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = channel(&cfg());
        let rx = rx.with_drop_guard(Flag(flag.clone()));
        drop(rx);
        assert!(flag.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(tx.send(Bytes::new()), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn body_joins_queued_frames_the_stream_does_not() {
        use http_body_util::BodyExt;
        let (tx, mut rx) = channel(&cfg());
        for frame in [&b"data: 1\n\n"[..], b"data: 2\n\n"] {
            tx.send(Bytes::from_static(frame)).unwrap();
        }
        assert_eq!(&rx.next().await.unwrap()[..], b"data: 1\n\n");
        tx.send(Bytes::from_static(b"data: 3\n\n")).unwrap();
        let chunk = rx.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&chunk[..], b"data: 2\n\ndata: 3\n\n");

        // Bounded in bytes: two 10 KiB frames stay two chunks.
        let big = Bytes::from(vec![b'x'; 10 * 1024]);
        tx.send(big.clone()).unwrap();
        tx.send(big.clone()).unwrap();
        for _ in 0..2 {
            let chunk = rx.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(chunk, big);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_only_when_idle() {
        let cfg = cfg().keep_alive(Some(Duration::from_secs(15)));
        let (tx, mut rx) = channel(&cfg);
        let start = Instant::now();
        assert_eq!(&rx.next().await.unwrap()[..], KEEP_ALIVE_FRAME);
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        tokio::time::sleep(Duration::from_secs(10)).await;
        tx.send(Bytes::from_static(b"x")).unwrap();
        assert_eq!(&rx.next().await.unwrap()[..], b"x");
        // Activity at t=25 pushes the next keep-alive to t=40.
        assert_eq!(&rx.next().await.unwrap()[..], KEEP_ALIVE_FRAME);
        assert_eq!(start.elapsed(), Duration::from_secs(40));
    }
}
