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
//! `major-minor`). The tag of a real epoch is a hash that is never 0; the
//! tag 0 (`AAAA`) stands for the empty epoch: the channel had no history
//! yet when the connection started following it (a store that keeps epochs
//! per channel creates one with the channel's first event, see
//! [`Head::epoch`](crate::history::Head::epoch)). A typical entry is 17
//! characters; the longest possible id is [`MAX_EVENT_ID_LEN`] bytes. A
//! connection follows at most
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
//! A channel that had no history when the client was last sent an id (its
//! entry has the epoch tag 0 and position 0; every connect ends its replay
//! with an id-only frame, so even a client that received no event holds
//! one) resumes from the channel's first event in whatever epoch the
//! channel has by now, if every event since its beginning is still
//! retained; otherwise the client gets the reset event (`expired`). A client
//! whose entry names a real epoch while the channel now has none (its
//! history expired or was wiped) gets the reset event (`epoch`). Caveat: a
//! channel that got events, was wiped and got events again while such a
//! client was away is replayed from its new beginning only.
//!
//! # Bus outages
//!
//! After the bus was down, every connection resyncs: it holds live events
//! back, replays from its cursor what it missed, and goes live as after a
//! connect. From the moment the hub hears the bus is down until it hears it
//! is back, live events of resumable channels are held, never sent: a
//! backend may reconnect and resubscribe before it reports Up, and an event
//! sent in between would move the cursor past what was published while the
//! bus was away, which the replay then would never send.
//!
//! # Resume tokens
//!
//! [`Hub::resume_token`](crate::Hub::resume_token) writes, for a
//! subscription, the id a connection to it would hold if it connected now:
//! each channel at its head, a channel without history yet at the empty
//! epoch. A page rendered at that moment hands it to the browser, whose
//! first connect sends it as its `Last-Event-ID` (the `last_event_id` query
//! parameter, for an `EventSource`) and gets, by the resume above, every
//! event published since the page was made.
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
use crate::history::{Head, History};
use crate::registry::ConnectionRegistry;
use crate::stream::FrameSender;
use crate::telemetry::{Counters, FanOut};
use crate::wire::{Envelope, Position};

mod cursor;
mod id;
mod token;

use cursor::{
    hold, install, release, reset_body, send_live, send_replayed, send_unplaced, with_cursor,
    Release, Stamped,
};
#[cfg(fuzzing)]
pub use id::fuzz_last_id;
use id::{channel_key, epoch_tag, parse_last_id, LastId, Mark, NO_EPOCH};
pub use id::{last_event_id, MAX_EVENT_ID_LEN, MAX_RESUMABLE_CHANNELS};
pub(crate) use token::token;
pub use token::ResumeTokenError;

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

/// Where a client resumes one channel from its entry `mark` of the
/// `Last-Event-ID`, given the channel's `head` (asked about `mark`'s
/// position): the mark to replay after, or the reason for a reset.
///
/// An entry with no epoch (tag 0) at position 0 was written while the
/// channel had no history: it resumes from the channel's beginning in
/// whatever epoch the channel has now, if all of it is still retained.
fn resume_from(mark: Mark, head: &Head) -> Result<Mark, &'static str> {
    let epoch = epoch_tag(&head.epoch);
    if mark.epoch == NO_EPOCH && mark.position == Position::ZERO {
        return if head.retained {
            Ok(Mark { epoch, ..mark })
        } else {
            Err("expired")
        };
    }
    if mark.epoch != epoch {
        // Includes a real epoch against none: the history expired or was
        // wiped.
        return Err("epoch");
    }
    if !head.retained || mark.position > head.last {
        return Err("expired");
    }
    Ok(mark)
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
    ///
    /// `bus_down`: the hub has not yet heard that the bus is back (and then
    /// resyncs every connection, see [`Resumer::resync`]). Such an event
    /// comes from a bus that reconnected and resubscribed before reporting
    /// Up; sent now, it would move the cursor past what was published while
    /// the bus was away, and the resync would replay from there: a silent
    /// hole. So each connection holds it, like any live event during a
    /// replay.
    pub(crate) fn deliver(
        &self,
        channel: &Channel,
        envelope: &Envelope<'_>,
        position: Option<Position>,
        bus_down: bool,
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
            return Some(self.registry.fan_out_on(channel, |sender| {
                if bus_down {
                    hold(sender);
                }
                send_unplaced(sender, &body)
            }));
        };
        let event = Stamped {
            key: channel_key(channel),
            epoch,
            position,
            body,
        };
        Some(self.registry.fan_out_on(channel, |sender| {
            if bus_down {
                hold(sender);
            }
            send_live(sender, &event)
        }))
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
        let mut starts: Vec<Option<Mark>> = Vec::with_capacity(marks.len());
        for (mark, head) in marks.iter().zip(&heads) {
            starts.push(match (mark, reset) {
                (Some(mark), None) => match resume_from(*mark, head) {
                    Ok(start) => Some(start),
                    Err(reason) => {
                        reset = Some(reason);
                        None
                    }
                },
                _ => None,
            });
        }
        let mut plan = Vec::with_capacity(channels.len());
        with_cursor(&sender, |cursor| {
            for (((channel, key), start), head) in
                channels.into_iter().zip(keys).zip(starts).zip(heads)
            {
                let epoch = epoch_tag(&head.epoch);
                match start {
                    Some(start) if reset.is_none() => cursor.set(key, start.epoch, start.position),
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
            loop {
                match release(&sender, Some(b"")) {
                    Ok(Release::Live(released)) => {
                        self.counters.fan_out(FanOut {
                            delivered: released,
                            ..FanOut::default()
                        });
                        return;
                    }
                    Err(_) => return,
                    // The replay filled the queue: once the client reads,
                    // the held events fit (unless more overflow the hold
                    // meanwhile, and then the next pass reads them).
                    Ok(Release::NoRoom) => sender.wait_for_space().await,
                    // Live events overflowed the hold: they are in the
                    // history, read on.
                    Ok(Release::Reread) => break,
                }
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
        mut epoch: u32,
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
            if epoch == NO_EPOCH && !entries.is_empty() {
                // The channel had no history when the heads were read, and
                // got its first events since: stamp them with the epoch
                // those events got (the one their live copies carry), or
                // the cursor would not know them for the same events.
                epoch = match self.history.heads(&[(channel.clone(), None)]).await {
                    Ok(heads) => heads.first().map_or(NO_EPOCH, |h| epoch_tag(&h.epoch)),
                    Err(err) => {
                        tracing::warn!(%channel, error = %err, "history unavailable; closing the stream");
                        sender.close();
                        return Err(());
                    }
                };
            }
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

#[cfg(test)]
mod tests;
