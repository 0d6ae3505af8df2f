//! Resume after reconnect: the event ids that point into each channel's
//! history, the per-connection cursor, and the live/replay seam.
//!
//! With a [`History`] store configured ([`HubBuilder::history`](crate::HubBuilder::history)),
//! every event published to a topic, a user or everyone is appended to that
//! channel's history *and* published on the bus in one step, and carries the
//! position it got there. Each connection remembers, per channel it follows,
//! the position of the last event it was sent; the SSE `id` of every event
//! sent to it encodes all of those positions. A browser's `EventSource`
//! echoes the newest id back as `Last-Event-ID` when it reconnects, to any
//! node, and that node replays exactly what the connection missed.
//!
//! The module reads top to bottom as the path of a resumable event: the id
//! codec (`resume/id.rs`), the cursor that stamps and deduplicates frames
//! under the connection's queue lock (`resume/cursor.rs`), then the hub's
//! three entry points here: connect (place the cursor, replay), deliver (a
//! live event from the bus) and resync (after a bus outage).
//!
//! # Event ids
//!
//! The hub sets the `id` of every event it sends on a resumable channel (an
//! id set by the app is replaced). The id is
//!
//! ```text
//! r1 ( "." KKKK EEEE POS )*
//! ```
//!
//! one entry per channel the connection follows, in a canonical order
//! (everyone, its user, its topics sorted): `KKKK` is a 24-bit hash of the
//! channel, `EEEE` a 24-bit tag of the channel's epoch (both 4 base64url
//! characters), and `POS` the position, in base 36 (`major` or
//! `major-minor`). A typical entry is 17 characters; the longest possible id
//! is [`MAX_EVENT_ID_LEN`] bytes. A connection follows at most
//! [`MAX_RESUMABLE_CHANNELS`] resumable channels; past that its events carry
//! the bare id `r1`, and a reconnect with that id gets the reset event: such
//! a connection is never resumed halfway.
//!
//! # Resume
//!
//! [`Hub::connect`](crate::Hub::connect) with a `Last-Event-ID`
//! ([`Subscription::last_event_id`](crate::Subscription::last_event_id), or
//! read from the request by [`Hub::connect_request`](crate::Hub::connect_request)
//! with [`last_event_id`]):
//!
//! 1. subscribes live first, holding live events of this connection back;
//! 2. asks the store for each channel's epoch, head and whether everything
//!    after the client's position is still retained;
//! 3. replays, per channel, every event after the client's position (waiting
//!    for the client to read, within the queue bounds);
//! 4. releases the held-back live events, skipping those the replay already
//!    sent (by position: no gap, no duplicate), and goes live.
//!
//! When the id does not parse, names another epoch, or points before the
//! retained window, nothing is replayed: the stream starts with a
//! [`RESET_EVENT`] so the app can refetch its state, then goes live. A
//! channel the connection did not follow before simply starts live.
//!
//! Not resumable: events sent to one connection ([`Target::Connection`](crate::Target::Connection):
//! a reconnect gets a new connection id), and anything published while no
//! history is configured. Events published straight onto the bus by a
//! foreign publisher without going through the store have no position: they
//! are delivered live only.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::broker::{BrokerError, Channel};
use crate::history::History;
use crate::registry::ConnectionRegistry;
use crate::stream::FrameSender;
use crate::telemetry::{Counters, FanOut};
use crate::wire::{Envelope, Position};

mod cursor;
mod id;

use cursor::{
    hold, install, release, reset_body, send_live, send_replayed, send_unplaced, with_cursor,
    Stamped,
};
#[cfg(fuzzing)]
pub use id::fuzz_last_id;
use id::{channel_key, epoch_tag, parse_last_id, LastId, Mark};
pub use id::{last_event_id, MAX_EVENT_ID_LEN, MAX_RESUMABLE_CHANNELS};

/// Name of the event that starts a stream whose `Last-Event-ID` could not be
/// resumed: the id did not parse, its history was wiped or rebuilt (another
/// epoch), or the events after it have left the retained window. Its data is
/// a JSON object with a `reason`: `"invalid-id"`, `"epoch"`, `"expired"` or
/// `"not-resumable"`. The app should refetch its state; the stream is live
/// after it.
pub const RESET_EVENT: &str = "sse-cluster.reset";

/// Most replays run at once after a bus outage.
const RESYNC_CONCURRENCY: usize = 32;

/// Events read from the history per request during a replay.
const REPLAY_BATCH: usize = 256;

/// Read-and-release rounds a replay tries before giving up on catching up
/// with live traffic (the stream is then closed; the client resumes again).
const REPLAY_PASSES: usize = 8;

/// A connection's resumable channels in their canonical order (the order of
/// the entries in its event ids): everyone, its user, its topics (sorted).
fn resumable_channels(user: Option<&Arc<str>>, topics: &[Arc<str>]) -> Vec<Channel> {
    let mut channels = Vec::with_capacity(topics.len() + 2);
    channels.push(Channel::Broadcast);
    channels.extend(user.cloned().map(Channel::User));
    channels.extend(topics.iter().cloned().map(Channel::Topic));
    channels
}

/// A hub's resume layer: built when the hub has a history store.
#[derive(Debug)]
pub(crate) struct Resumer {
    history: Arc<dyn History>,
    registry: Arc<ConnectionRegistry>,
    counters: Arc<Counters>,
    node_id: Arc<str>,
    /// Bounds the replays run at once after a bus outage.
    resyncs: Arc<Semaphore>,
}

impl Resumer {
    pub(crate) fn new(
        history: Arc<dyn History>,
        registry: Arc<ConnectionRegistry>,
        counters: Arc<Counters>,
        node_id: Arc<str>,
    ) -> Self {
        Self {
            history,
            registry,
            counters,
            node_id,
            resyncs: Arc::new(Semaphore::new(RESYNC_CONCURRENCY)),
        }
    }

    /// Before a connection is registered: gives it a cursor over its
    /// resumable channels, holding live events back until
    /// [`Resumer::connect`] decides where each channel stands. Returns the
    /// channels.
    pub(crate) fn prepare(
        &self,
        sender: &FrameSender,
        user: Option<&Arc<str>>,
        topics: &[Arc<str>],
    ) -> Vec<Channel> {
        let channels = resumable_channels(user, topics);
        let keys: Vec<u32> = channels.iter().map(channel_key).collect();
        install(sender, &keys);
        channels
    }

    /// Once the connection's channels are subscribed: places its cursor
    /// after `last_event_id` (or at the heads for a new client) and starts
    /// the replay on its own task. Returns once the positions are known.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        sender: FrameSender,
        channels: Vec<Channel>,
        last_event_id: Option<&str>,
        conn: &str,
    ) -> Result<(), BrokerError> {
        let from = last_event_id.map(parse_last_id);
        self.place(sender, channels, from, conn).await
    }

    /// A live message of a resumable `channel` from the bus: delivered
    /// through each connection's cursor when it carries a position (in the
    /// envelope, or out of band) and an epoch. `None` when it does not: a
    /// foreign publisher's message, which the caller delivers live only.
    pub(crate) fn deliver(
        &self,
        channel: &Channel,
        envelope: &Envelope<'_>,
        position: Option<Position>,
    ) -> Option<FanOut> {
        let position = position.or_else(|| envelope.pos.as_deref().and_then(Position::parse))?;
        let epoch = match &envelope.epoch {
            Some(e) => Some(epoch_tag(e)),
            None => self.history.live_epoch(channel).map(|e| epoch_tag(&e)),
        };
        // The hub owns event ids on resumable channels.
        let body = match envelope.encode_frame_without_id() {
            Ok(frame) => frame,
            Err(err) => {
                self.counters.bus_malformed(channel, &err);
                return Some(FanOut::default());
            }
        };
        let Some(epoch) = epoch else {
            // A store that names its epoch out of band (JetStream) has not
            // learnt it yet: this node's first connects are still reading
            // their heads. The event is in the store already, so their
            // replays send it; delivering it live too would send it twice,
            // and out of order.
            return Some(
                self.registry
                    .fan_out_on(channel, |sender| send_unplaced(sender, &body)),
            );
        };
        let event = Stamped {
            key: channel_key(channel),
            epoch,
            position,
            body,
        };
        Some(
            self.registry
                .fan_out_on(channel, |sender| send_live(sender, &event)),
        )
    }

    /// After a bus outage (or lost messages of `channel`): every affected
    /// connection holds live events back and replays what it missed from
    /// its cursor, or gets the reset event if that left the window.
    pub(crate) fn resync(self: &Arc<Self>, channel: Option<&Channel>) {
        for held in self.registry.connections() {
            let sender = held.sender;
            let channels = resumable_channels(held.user.as_ref(), &held.topics);
            if channel.is_some_and(|c| !channels.contains(c)) {
                continue;
            }
            hold(&sender);
            let Some(marks) = with_cursor(&sender, |c| c.marks().to_vec()) else {
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let Ok(_permit) = this.resyncs.clone().acquire_owned().await else {
                    return;
                };
                let from = Some(LastId::Marks(marks));
                if let Err(err) = this.place(sender.clone(), channels, from, "resync").await {
                    tracing::warn!(error = %err, "history unavailable after the outage; closing the stream");
                    sender.close();
                }
            });
        }
    }

    /// Places a connection's cursor and starts its replay: `from` is what
    /// the client's `Last-Event-ID` said (`None`: a new client, nothing to
    /// replay).
    async fn place(
        self: &Arc<Self>,
        sender: FrameSender,
        channels: Vec<Channel>,
        from: Option<LastId>,
        conn: &str,
    ) -> Result<(), BrokerError> {
        let span = crate::telemetry::replay_span(&self.node_id, conn, channels.len());
        let keys: Vec<u32> = channels.iter().map(channel_key).collect();
        let marks: Vec<Option<Mark>> = match &from {
            Some(LastId::Marks(marks)) => keys
                .iter()
                .map(|k| marks.iter().find(|m| m.key == *k).copied())
                .collect(),
            _ => vec![None; keys.len()],
        };
        let asks: Vec<(Channel, Option<Position>)> = channels
            .iter()
            .zip(&marks)
            .map(|(c, m)| (c.clone(), m.map(|m| m.position)))
            .collect();
        let heads = self.history.heads(&asks).await?;
        let mut reset = match &from {
            None | Some(LastId::Marks(_)) => None,
            Some(LastId::Invalid) => Some("invalid-id"),
            Some(LastId::NotResumable) => Some("not-resumable"),
        };
        for (mark, head) in marks.iter().zip(&heads) {
            if let (Some(mark), None) = (mark, reset) {
                if mark.epoch != epoch_tag(&head.epoch) {
                    reset = Some("epoch");
                } else if !head.retained || mark.position > head.last {
                    reset = Some("expired");
                }
            }
        }
        let mut plan = Vec::with_capacity(channels.len());
        with_cursor(&sender, |cursor| {
            for (((channel, key), mark), head) in
                channels.into_iter().zip(keys).zip(marks).zip(heads)
            {
                let epoch = epoch_tag(&head.epoch);
                match mark {
                    Some(mark) if reset.is_none() => cursor.set(key, mark.epoch, mark.position),
                    _ => cursor.set(key, epoch, head.last),
                }
                plan.push((channel, key, epoch));
            }
        });
        if let Some(reason) = reset {
            self.counters.resume_reset();
            tracing::debug!(parent: &span, reason, "resume: reset");
        }
        if matches!(from, Some(LastId::Marks(_))) && reset.is_none() {
            self.counters.replay_started();
        }
        tokio::spawn(tracing::Instrument::instrument(
            self.clone().replay(sender, plan, reset),
            span,
        ));
        Ok(())
    }

    /// Sends a connection what its channels' histories hold after its
    /// cursor, then the live events held back meanwhile (skipping what was
    /// replayed), then goes live. With `reset`, sends the reset event first
    /// and replays nothing older than the cursor (which then stands at the
    /// heads).
    async fn replay(
        self: Arc<Self>,
        sender: FrameSender,
        plan: Vec<(Channel, u32, u32)>,
        reset: Option<&'static str>,
    ) {
        if let Some(reason) = reset {
            // Key 0 is no channel's: the cursor sends it with its current id.
            let frame = Stamped {
                key: 0,
                epoch: 0,
                position: Position::ZERO,
                body: reset_body(reason),
            };
            if send_replayed(&sender, &frame).await.is_err() {
                return;
            }
        }
        for _ in 0..REPLAY_PASSES {
            for (channel, key, epoch) in &plan {
                if self
                    .replay_channel(&sender, channel, *key, *epoch)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            match release(&sender, Some(b"")) {
                Ok(Some(released)) => {
                    self.counters.fan_out(FanOut {
                        delivered: released,
                        ..FanOut::default()
                    });
                    return;
                }
                Err(_) => return,
                // Live events overflowed the hold (or would overflow the
                // queue): they are in the history, read on.
                Ok(None) => {}
            }
        }
        tracing::warn!("replay could not catch up with live traffic; closing the stream");
        sender.close();
    }

    /// Replays one channel from the connection's cursor to the store's
    /// head. `Err` when the stream ended (or was closed for a failed read).
    async fn replay_channel(
        &self,
        sender: &FrameSender,
        channel: &Channel,
        key: u32,
        epoch: u32,
    ) -> Result<(), ()> {
        let Some(mut after) = with_cursor(sender, |c| c.position(key)).flatten() else {
            return Ok(());
        };
        loop {
            let entries = match self.history.read(channel, after, REPLAY_BATCH).await {
                Ok(entries) => entries,
                Err(err) => {
                    // Better a reconnect (which resumes) than a silent gap.
                    tracing::warn!(%channel, error = %err, "history read failed; closing the stream");
                    sender.close();
                    return Err(());
                }
            };
            let full = entries.len() == REPLAY_BATCH;
            let mut sent = 0;
            for entry in entries {
                after = entry.position;
                let Some(body) = self.replayed_frame(channel, &entry.payload) else {
                    continue;
                };
                let event = Stamped {
                    key,
                    epoch,
                    position: entry.position,
                    body,
                };
                if send_replayed(sender, &event).await.is_err() {
                    self.counters.events_replayed(sent);
                    return Err(());
                }
                sent += 1;
            }
            self.counters.events_replayed(sent);
            if !full {
                return Ok(());
            }
        }
    }

    /// The frame (without its id line) of a stored envelope; `None`, and
    /// counted, when the store holds something malformed.
    fn replayed_frame(&self, channel: &Channel, payload: &Bytes) -> Option<Bytes> {
        let result =
            Envelope::decode(payload).and_then(|envelope| envelope.encode_frame_without_id());
        match result {
            Ok(frame) => Some(frame),
            Err(err) => {
                self.counters.bus_malformed(channel, &err);
                None
            }
        }
    }
}
