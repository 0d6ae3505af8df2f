//! Event history: the [`History`] store trait and its backends.
//!
//! A store keeps, per resumable channel (a topic, a user, everyone), the
//! events published there with their positions, so that a reconnecting
//! client can be sent what it missed; see [`resume`](crate::resume) for the
//! event ids, the seam and the guarantees. Stores are built on public
//! handles only: a broker hands out what its store needs
//! ([`MemoryBus`](crate::broker::memory::MemoryBus) delivery,
//! `RedisBroker::query`/`invoke`, `NatsBroker::client`,
//! `PostgresBroker::client_for`, `KafkaBroker::produce`/`fetch`), so a backend
//! written outside the crate can have a store of its own.
//!
//! # Stores
//!
//! | store | feature | positions | epoch (changes when the history is rebuilt) |
//! |---|---|---|---|
//! | [`memory::MemoryHistory`] | always | a counter per channel | random, per store |
//! | `redis::RedisHistory` | `redis` | Redis Stream entry ids | random, stored beside each stream by its first append (none before: the empty epoch) |
//! | `jetstream::JetStreamHistory` | `nats` | JetStream stream sequences | the stream's creation time (changes when it is deleted and recreated) |
//! | `postgres::PostgresHistory` | `postgres` | a counter per channel, in a table row | random, stored in the channel's row by its first append (none before: the empty epoch) |
//! | `kafka::KafkaHistory` | `kafka` | the record's offset in its partition of the bus topic, plus one | the topic's id and partition count (changes when it is recreated or grows) |
//!
//! Retention ([`Retention`]) is by count and by age, per store; the memory
//! store also holds a store-wide byte budget ([`Retention::max_bytes`]) and
//! reports what it holds ([`History::retained_bytes`]).
//!
//! # Writing a store
//!
//! [`History::append`] stores the envelope and publishes it on the bus in
//! one atomic step, stamped with its position and epoch
//! ([`wire::stamp`](crate::wire::stamp)); [`History::heads`] and
//! [`History::read`] serve connects and replays. A store that publishes the
//! position out of band (a header) hands it to the hub with
//! [`BusSink::deliver_at`](crate::broker::BusSink::deliver_at) and names the
//! epoch with [`History::live_epoch`].
//!
//! # Idempotency keys
//!
//! A store that deduplicates ([`History::idempotency_window`] is `Some`)
//! implements [`History::append_once`]: the first append of a key to a
//! channel is stored and published; another append of the same key to the
//! same channel within the window ([`Retention::idempotency_window`]) stores
//! and publishes nothing and answers the first one's position and message
//! id ([`Appended::Duplicate`]). Whatever publishes it, from whatever node:
//! the check and the append are one atomic step in the store. The key alone
//! decides: the second event's content is not compared.
//!
//! | store | where the keys live |
//! |---|---|
//! | memory | a map in the store, expiring with the window, at most [`memory::MAX_KEY_BYTES`] |
//! | Redis | a key `{<channel name>}:i:<key>` per key (`SET NX PX` in the append script) holding the position and message id |
//! | JetStream | the stream's own duplicate window (`duplicate_window`, the `Nats-Msg-Id` header `<history subject> <key>`) |
//!
//! A store written before keys existed keeps the defaults: no window, and
//! [`History::append_once`] appends every time; the hub then falls back to
//! its node-local window (see [`Hub::publish_idempotent`](crate::Hub::publish_idempotent)).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::broker::{BrokerError, Channel};
pub use crate::wire::Position;

#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod jetstream;
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub mod kafka;
pub(crate) mod keys;
pub mod memory;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

/// True for channels with history: every channel but node channels (events
/// for one connection cannot be resumed: a reconnect gets a new id).
pub fn is_resumable(channel: &Channel) -> bool {
    !matches!(channel, Channel::Node(_))
}

/// How much history a store keeps: per channel, and for the memory store in
/// all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// Most events kept per channel (Redis trims approximately, in whole
    /// internal nodes, so it may keep somewhat more). Default: 1000.
    pub max_len: usize,
    /// Events older than this are dropped; `None` keeps them until `max_len`
    /// pushes them out. Default: 1 hour.
    pub max_age: Option<Duration>,
    /// Most bytes the memory store keeps across all channels (the stored
    /// envelopes plus the channel names); past it the oldest entries of the
    /// whole store go first (see [`memory`]). `None`: no budget, only
    /// `max_len` and `max_age` bound the store. Default:
    /// [`Retention::DEFAULT_MAX_BYTES`] (64 MiB).
    ///
    /// Redis and JetStream ignore it: their memory is the server's, bounded
    /// by the server's own settings (Redis `maxmemory`, the JetStream
    /// account's or stream's limits).
    pub max_bytes: Option<usize>,
    /// How long a store remembers an idempotency key
    /// ([`History::append_once`]): a publish repeating a key within this
    /// time after the first is answered as a duplicate, stored and
    /// delivered nothing. Default: [`Retention::DEFAULT_IDEMPOTENCY_WINDOW`]
    /// (2 minutes). JetStream takes it as the stream's `duplicate_window`,
    /// at most the stream's age limit.
    pub idempotency_window: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_len: 1000,
            max_age: Some(Duration::from_secs(3600)),
            max_bytes: Some(Self::DEFAULT_MAX_BYTES),
            idempotency_window: Self::DEFAULT_IDEMPOTENCY_WINDOW,
        }
    }
}

impl Retention {
    /// Sets [`Retention::max_len`] (at least 1).
    pub fn max_len(mut self, n: usize) -> Self {
        self.max_len = n.max(1);
        self
    }

    /// The default [`Retention::max_bytes`]: 64 MiB. Enough for 64 events
    /// of the default largest size (1 MiB,
    /// [`DEFAULT_MAX_EVENT_SIZE`](crate::limits::DEFAULT_MAX_EVENT_SIZE)) or
    /// tens of thousands of typical small ones, so ordinary traffic is bound
    /// by `max_len` and `max_age` first; small enough that a flood of large
    /// events to many channels cannot take a node's memory.
    pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

    /// The default [`Retention::idempotency_window`]: 2 minutes, as
    /// JetStream's own default duplicate window. Long enough for a client's
    /// retries after timeouts; keys cost memory (or server memory) for that
    /// long.
    pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(120);

    /// Sets [`Retention::idempotency_window`] (at least 1 ms).
    pub fn idempotency_window(mut self, window: Duration) -> Self {
        self.idempotency_window = window.max(Duration::from_millis(1));
        self
    }

    /// Sets [`Retention::max_age`].
    pub fn max_age(mut self, age: Option<Duration>) -> Self {
        self.max_age = age.filter(|a| !a.is_zero());
        self
    }

    /// Sets [`Retention::max_bytes`] (`Some(0)` means `None`: no budget).
    pub fn max_bytes(mut self, bytes: Option<usize>) -> Self {
        self.max_bytes = bytes.filter(|b| *b > 0);
        self
    }
}

/// What a store knows about one channel, for a connect.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Head {
    /// The channel history's epoch, or the empty string when the channel
    /// has no history yet (nothing was ever appended, or its history expired
    /// or was wiped) and the store keeps epochs per channel.
    ///
    /// [`History::heads`] serves connects and must not write: a store that
    /// creates a channel's epoch with its first append (Redis) reports the
    /// empty epoch until then, and a store with one epoch for all its
    /// channels (memory, JetStream) reports that one. The epoch a store
    /// stamps on appended events is never empty. The resume layer gives the
    /// empty epoch the tag 0 in event ids: a client that connected while the
    /// channel had no history resumes from its beginning in whatever epoch
    /// it has by then (see [`resume`](crate::resume)).
    pub epoch: Arc<str>,
    /// The position of the newest event of the channel, or any position at
    /// or before the next one it will get ([`Position::ZERO`] for an empty
    /// memory or Redis channel; the stream's last sequence on JetStream).
    pub last: Position,
    /// Whether every event after the position asked about is still
    /// retained (true when no position was asked about).
    pub retained: bool,
}

impl Head {
    /// A head from its parts.
    pub fn new(epoch: Arc<str>, last: Position, retained: bool) -> Self {
        Self {
            epoch,
            last,
            retained,
        }
    }
}

/// One stored event: its position and the bus envelope as published (without
/// the `pos` and `epoch` fields).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// Where the event is in its channel.
    pub position: Position,
    /// The bus envelope (JSON, see [`wire`](crate::wire)).
    pub payload: Bytes,
}

impl Entry {
    /// An entry from its parts.
    pub fn new(position: Position, payload: Bytes) -> Self {
        Self { position, payload }
    }
}

/// What [`History::append_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Appended {
    /// The key was new: the event was stored and published at this
    /// position.
    Stored(Position),
    /// The key was seen within the window: nothing was stored or published
    /// this time.
    Duplicate {
        /// The position of the first event with the key.
        position: Position,
        /// The message id of the first event with the key (the envelope's
        /// `msg`), if the store knows it.
        msg: Option<String>,
    },
}

impl Appended {
    /// The position of the event: the new one's, or the first one's.
    pub fn position(&self) -> Position {
        match self {
            Appended::Stored(position) | Appended::Duplicate { position, .. } => *position,
        }
    }
}

/// A store of per-channel event history that publishes too.
///
/// A store is tied to the bus the hubs use: [`History::append`] stores the
/// event and publishes it, stamped with its position and epoch (the
/// envelope's `pos` and `epoch` fields), as one atomic step, so that no live
/// subscriber sees an event the history lacks and every subscriber sees one
/// channel's events in position order.
#[async_trait]
pub trait History: Send + Sync + fmt::Debug + 'static {
    /// Appends `payload` (a bus envelope) to `channel`'s history and
    /// publishes it on the bus with its position; returns the position.
    async fn append(&self, channel: &Channel, payload: Bytes) -> Result<Position, BrokerError>;

    /// For each channel, its epoch, its newest position and whether
    /// everything after the given position is still retained. Runs on every
    /// connect: it writes no channel's history, and reports a channel
    /// without history with the empty epoch (see [`Head::epoch`]) rather
    /// than creating one.
    ///
    /// This call and the [`History::read`]s after it must see every append
    /// the store acknowledged before it was made, also right after a
    /// failover of a replicated store: a replay that ends short lets the
    /// live events after it move the connection past the missing ones (see
    /// the JetStream store's read barrier).
    async fn heads(
        &self,
        channels: &[(Channel, Option<Position>)],
    ) -> Result<Vec<Head>, BrokerError>;

    /// Up to `limit` events of `channel` after position `after`, oldest
    /// first.
    async fn read(
        &self,
        channel: &Channel,
        after: Position,
        limit: usize,
    ) -> Result<Vec<Entry>, BrokerError>;

    /// How long this store remembers idempotency keys: `Some` when it
    /// implements [`History::append_once`] (the crate's stores: their
    /// [`Retention::idempotency_window`]). Default: `None`, the store does
    /// not deduplicate.
    fn idempotency_window(&self) -> Option<Duration> {
        None
    }

    /// Like [`History::append`], at most once per `key` and `channel`
    /// within [`History::idempotency_window`]: the first call stores and
    /// publishes, a repeat (from any node) stores and publishes nothing and
    /// answers the first one's position, and its message id when the store
    /// knows it (`msg` is this publish's message id, the envelope's `msg`,
    /// for the store to remember). The check and the append must be one
    /// atomic step. `key` is 1 to
    /// [`MAX_IDEMPOTENCY_KEY_LEN`](crate::limits::MAX_IDEMPOTENCY_KEY_LEN)
    /// visible ASCII characters.
    ///
    /// Default (a store that does not deduplicate): appends every time.
    async fn append_once(
        &self,
        channel: &Channel,
        payload: Bytes,
        key: &str,
        msg: &str,
    ) -> Result<Appended, BrokerError> {
        let _ = (key, msg);
        self.append(channel, payload).await.map(Appended::Stored)
    }

    /// The epoch of live messages that arrive with a position but without an
    /// epoch (stores that stamp the position out of band). Default: none.
    fn live_epoch(&self, _channel: &Channel) -> Option<Arc<str>> {
        None
    }

    /// How many bytes the store holds in this process now, if it knows
    /// (the memory store: its stored envelopes and channel names; see
    /// [`Retention::max_bytes`]). Default: `None` (a store whose data lives
    /// on a server). A hub reports it as
    /// [`HubStats::history_retained_bytes`](crate::HubStats::history_retained_bytes)
    /// and the `sse_history_retained_bytes` gauge.
    fn retained_bytes(&self) -> Option<u64> {
        None
    }
}
