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
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

mod body;
#[cfg(test)]
mod tests;

pub use body::{set_sse_headers, SseStream};

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

/// A connection's queue and its end, under one lock.
///
/// The fields a send and a read touch come first, in this order
/// (`repr(C)`): with the lock's word before them they span 74 bytes, two
/// cache lines, where the compiler's order spread them over 131 bytes and
/// three lines. Each of those lines was last written by the other side's
/// core, so each is a miss, on every send and on every read, in a fan-out.
#[repr(C)]
struct State {
    /// The first queued frame, held in place: a connection that keeps up
    /// (one frame queued at a time, what a fan-out mostly sees) never
    /// touches `rest`'s buffer, which was one more line to fetch per send
    /// and per read. Set only when `rest` is empty or comes after it.
    front: Option<Bytes>,
    frames: usize,
    bytes: usize,
    waker: Option<Waker>,
    phase: Phase,
    /// A sender waits for the client to read (see [`FrameSender::wait_for_space`]).
    want_space: bool,
    /// The items after `front`, in order.
    rest: VecDeque<Item>,
    dropped: u64,
    /// State a layer above keeps per connection under this lock (the
    /// resume cursor, with history on); see [`FrameSender::with_gate`].
    gate: Option<Box<dyn Any + Send>>,
}

impl State {
    /// Queues `frame` (the caller checked the bounds, or bypasses them).
    fn enqueue(&mut self, frame: Bytes) {
        self.frames += 1;
        self.bytes += frame.len();
        if self.front.is_none() && self.rest.is_empty() {
            self.front = Some(frame);
        } else {
            self.rest.push_back(Item::Frame(frame));
        }
    }

    /// Counts one dropped frame at the back (joined to a gap already there).
    fn push_gap(&mut self) {
        self.dropped += 1;
        match self.rest.back_mut() {
            Some(Item::Gap(n)) => *n += 1,
            _ => self.rest.push_back(Item::Gap(1)),
        }
    }

    /// Takes the first item (the caller counts a frame out of `frames`
    /// and `bytes`).
    fn pop_front(&mut self) -> Option<Item> {
        match self.front.take() {
            Some(frame) => Some(Item::Frame(frame)),
            None => self.rest.pop_front(),
        }
    }

    /// The length of the first item if it is a frame.
    fn front_frame_len(&self) -> Option<usize> {
        match (&self.front, self.rest.front()) {
            (Some(frame), _) | (None, Some(Item::Frame(frame))) => Some(frame.len()),
            _ => None,
        }
    }

    /// Ends the stream at once and frees the queue.
    fn end_now(&mut self) {
        self.phase = Phase::Ended;
        self.front = None;
        self.rest = VecDeque::new();
        self.frames = 0;
        self.bytes = 0;
    }
}

/// `repr(C)`: the lock and the hot start of [`State`] first, the bounds
/// (read on every send, written never) after the state's cold end, so
/// that no write to the queue's lines evicts them.
#[repr(C)]
struct Shared {
    state: Mutex<State>,
    max_frames: usize,
    max_bytes: usize,
    overflow: OverflowPolicy,
    /// Signalled when a replay waiting for queue space may go on.
    space: Notify,
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
            front: None,
            frames: 0,
            bytes: 0,
            waker: None,
            phase: Phase::Open,
            want_space: false,
            rest: VecDeque::new(),
            dropped: 0,
            gate: None,
        }),
        space: Notify::new(),
        max_frames: config.max_queued_frames.max(1),
        max_bytes: config.max_queued_bytes.max(1),
        overflow: config.overflow,
    });
    let stream = SseStream::new(shared.clone(), config);
    (FrameSender { shared }, stream)
}

/// A body that is already complete: `frames`, then the end. For answers
/// that are not live streams (a refusal, an error body).
pub(crate) fn finished(frames: impl IntoIterator<Item = Bytes>) -> SseStream {
    let config = StreamConfig::default().keep_alive(None).initial_retry(None);
    let (sender, stream) = channel(&config);
    for frame in frames {
        // Bypasses the bounds: these are the whole body, written once.
        sender.shared.lock().enqueue(frame);
    }
    sender.close();
    stream
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
    /// Queues one frame (normally from [`Event::encode`](crate::Event::encode)). On a full queue the
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

    /// Whether nothing is queued now.
    pub(crate) fn is_empty(&self) -> bool {
        self.state.frames == 0
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
            state.push_gap();
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
