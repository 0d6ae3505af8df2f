//! Resume after reconnect: per-channel event history and the event ids that
//! point into it.
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
//! # Stores
//!
//! | store | feature | positions | epoch (changes when the history is rebuilt) |
//! |---|---|---|---|
//! | [`memory::MemoryHistory`] | always | a counter per channel | random, per store |
//! | `redis::RedisHistory` | `redis` | Redis Stream entry ids | random, stored beside each stream (`SET NX`) |
//! | `jetstream::JetStreamHistory` | `nats` | JetStream stream sequences | the stream's creation time (changes when it is deleted and recreated) |
//!
//! Retention ([`Retention`]) is by count and by age, per hub.
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
//! one entry per channel the connection follows, in a canonical order:
//! `KKKK` is a 24-bit hash of the channel, `EEEE` a 24-bit tag of the
//! channel's epoch (both 4 base64url characters), and `POS` the position, in
//! base 36 (`major` or `major-minor`). A typical entry is 17 characters; the
//! longest possible id is [`MAX_EVENT_ID_LEN`] bytes. A connection follows at
//! most [`MAX_RESUMABLE_CHANNELS`] resumable channels (everyone, its user and
//! its topics); past that its events carry the bare id `r1`, and a reconnect
//! with that id gets the reset event: such a connection is never resumed
//! halfway.
//!
//! # Resume
//!
//! [`Hub::connect`](crate::Hub::connect) with a `Last-Event-ID`
//! ([`Subscription::last_event_id`](crate::Subscription::last_event_id)):
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

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};

use crate::broker::{BrokerError, Channel};

#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod jetstream;
pub mod memory;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

/// Name of the event that starts a stream whose `Last-Event-ID` could not be
/// resumed: the id did not parse, its history was wiped or rebuilt (another
/// epoch), or the events after it have left the retained window. Its data is
/// a JSON object with a `reason`: `"invalid-id"`, `"epoch"`, `"expired"` or
/// `"not-resumable"`. The app should refetch its state; the stream is live
/// after it.
pub const RESET_EVENT: &str = "sse-cluster.reset";

/// Most resumable channels (everyone, the user, topics) one connection may
/// follow and still be resumed.
pub const MAX_RESUMABLE_CHANNELS: usize = 32;

/// Longest event id the hub writes, in bytes: `r1` and
/// [`MAX_RESUMABLE_CHANNELS`] entries of at most 36 bytes.
pub const MAX_EVENT_ID_LEN: usize = 2 + MAX_RESUMABLE_CHANNELS * 36;

/// A place in one channel's history. Positions grow with every append.
///
/// Stores map their own positions onto two numbers: a Redis Stream id
/// `ms-seq` is `(ms, seq)`, a JetStream sequence or a memory counter is
/// `(n, 0)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    major: u64,
    minor: u64,
}

impl Position {
    /// Before the first event of any history.
    pub const ZERO: Position = Position { major: 0, minor: 0 };

    /// A position from its two parts.
    pub const fn new(major: u64, minor: u64) -> Self {
        Self { major, minor }
    }

    /// The first part.
    pub const fn major(self) -> u64 {
        self.major
    }

    /// The second part.
    pub const fn minor(self) -> u64 {
        self.minor
    }

    /// Parses `major` or `major-minor` (decimal), the form stores and the bus
    /// envelope's `pos` field use.
    pub fn parse(text: &str) -> Option<Self> {
        let (major, minor) = match text.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (text, None),
        };
        let number = |s: &str| -> Option<u64> {
            if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        Some(Self {
            major: number(major)?,
            minor: match minor {
                Some(m) => number(m)?,
                None => 0,
            },
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.major, self.minor)
    }
}

/// How much history a store keeps per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// Most events kept per channel (Redis trims approximately, in whole
    /// internal nodes, so it may keep somewhat more). Default: 1000.
    pub max_len: usize,
    /// Events older than this are dropped; `None` keeps them until `max_len`
    /// pushes them out. Default: 1 hour.
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_len: 1000,
            max_age: Some(Duration::from_secs(3600)),
        }
    }
}

impl Retention {
    /// Sets [`Retention::max_len`] (at least 1).
    pub fn max_len(mut self, n: usize) -> Self {
        self.max_len = n.max(1);
        self
    }

    /// Sets [`Retention::max_age`].
    pub fn max_age(mut self, age: Option<Duration>) -> Self {
        self.max_age = age.filter(|a| !a.is_zero());
        self
    }
}

/// What a store knows about one channel, for a connect.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Head {
    /// The channel history's epoch; a store creates it if the channel has
    /// none yet.
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
    /// everything after the given position is still retained.
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

    /// The epoch of live messages that arrive with a position but without an
    /// epoch (stores that stamp the position out of band). Default: none.
    fn live_epoch(&self, _channel: &Channel) -> Option<Arc<str>> {
        None
    }
}

/// Appends `,"pos":"P","epoch":"E"}` in place of the envelope's closing
/// brace: the stamped form every store publishes.
pub(crate) fn stamp_envelope(payload: &[u8], position: Position, epoch: &str) -> Bytes {
    let body = payload.strip_suffix(b"}").unwrap_or(payload);
    let mut out = BytesMut::with_capacity(body.len() + epoch.len() + 64);
    out.put_slice(body);
    out.put_slice(b",\"pos\":\"");
    out.put_slice(position.to_string().as_bytes());
    out.put_slice(b"\",\"epoch\":\"");
    out.put_slice(epoch.as_bytes());
    out.put_slice(b"\"}");
    out.freeze()
}

/// 24-bit FNV-1a hash, never 0.
fn hash24(parts: &[&[u8]]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separates parts, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let folded = ((h >> 24) ^ h) as u32 & 0x00ff_ffff;
    folded.max(1)
}

/// The key of a resumable channel in event ids.
pub(crate) fn channel_key(channel: &Channel) -> u32 {
    match channel {
        Channel::Broadcast => hash24(&[b"a"]),
        Channel::Topic(t) => hash24(&[b"t", t.as_bytes()]),
        Channel::User(u) => hash24(&[b"u", u.as_bytes()]),
        Channel::Node(n) => hash24(&[b"n", n.as_bytes()]),
    }
}

/// The tag of an epoch in event ids.
pub(crate) fn epoch_tag(epoch: &str) -> u32 {
    hash24(&[epoch.as_bytes()])
}

/// True for channels with history: everything but node channels.
pub(crate) fn is_resumable(channel: &Channel) -> bool {
    !matches!(channel, Channel::Node(_))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn put_b64_24(out: &mut Vec<u8>, v: u32) {
    for shift in [18, 12, 6, 0] {
        out.push(B64[((v >> shift) & 63) as usize]);
    }
}

fn get_b64_24(s: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in s.get(..4)? {
        let d = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        v = (v << 6) | u32::from(d);
    }
    Some(v)
}

fn put_base36(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 13];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn get_base36(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 13 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'z' => c - b'a' + 10,
            _ => return None,
        };
        n = n.checked_mul(36)?.checked_add(u64::from(d))?;
    }
    Some(n)
}

/// One channel's entry in an event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) key: u32,
    pub(crate) epoch: u32,
    pub(crate) position: Position,
}

/// What a `Last-Event-ID` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LastId {
    /// The client's positions, one per channel.
    Marks(Vec<Mark>),
    /// The connection could not be resumed (too many channels).
    NotResumable,
    /// Not an id this crate wrote.
    Invalid,
}

/// Parses a `Last-Event-ID`. Never fails: garbage is [`LastId::Invalid`].
pub(crate) fn parse_last_id(text: &str) -> LastId {
    let bytes = text.as_bytes();
    if bytes.len() > MAX_EVENT_ID_LEN {
        return LastId::Invalid;
    }
    let Some(rest) = bytes.strip_prefix(b"r1") else {
        return LastId::Invalid;
    };
    if rest.is_empty() {
        return LastId::NotResumable;
    }
    let Some(rest) = rest.strip_prefix(b".") else {
        return LastId::Invalid;
    };
    let mut marks = Vec::new();
    for entry in rest.split(|&b| b == b'.') {
        if marks.len() == MAX_RESUMABLE_CHANNELS || entry.len() < 9 {
            return LastId::Invalid;
        }
        let (Some(key), Some(epoch)) = (get_b64_24(&entry[..4]), get_b64_24(&entry[4..8])) else {
            return LastId::Invalid;
        };
        let pos = &entry[8..];
        let position = match pos.iter().position(|&b| b == b'-') {
            Some(i) => match (get_base36(&pos[..i]), get_base36(&pos[i + 1..])) {
                (Some(a), Some(b)) => Position::new(a, b),
                _ => return LastId::Invalid,
            },
            None => match get_base36(pos) {
                Some(a) => Position::new(a, 0),
                None => return LastId::Invalid,
            },
        };
        if marks.iter().any(|m: &Mark| m.key == key) {
            return LastId::Invalid;
        }
        marks.push(Mark {
            key,
            epoch,
            position,
        });
    }
    LastId::Marks(marks)
}

/// For the fuzz targets only: parses `text` as a `Last-Event-ID` and, when
/// it parses into positions, writes them back and checks the round trip.
/// Returns how many channel entries it held.
#[doc(hidden)]
pub fn fuzz_last_id(text: &str) -> usize {
    match parse_last_id(text) {
        LastId::Marks(marks) => {
            let mut out = Vec::new();
            write_id(&mut out, marks.iter().copied(), true);
            assert!(out.len() <= MAX_EVENT_ID_LEN);
            let again = std::str::from_utf8(&out).map(parse_last_id);
            assert_eq!(again, Ok(LastId::Marks(marks.clone())));
            marks.len()
        }
        LastId::NotResumable | LastId::Invalid => 0,
    }
}

/// Writes an event id for `marks`.
pub(crate) fn write_id(out: &mut Vec<u8>, marks: impl Iterator<Item = Mark>, resumable: bool) {
    out.extend_from_slice(b"r1");
    if !resumable {
        return;
    }
    for m in marks {
        out.push(b'.');
        put_b64_24(out, m.key);
        put_b64_24(out, m.epoch);
        put_base36(out, m.position.major);
        if m.position.minor != 0 {
            out.push(b'-');
            put_base36(out, m.position.minor);
        }
    }
}

/// A live or replayed event for one connection: which channel, where in it,
/// and the encoded frame without an `id:` line.
#[derive(Debug, Clone)]
pub(crate) struct Stamped {
    pub(crate) key: u32,
    pub(crate) epoch: u32,
    pub(crate) position: Position,
    pub(crate) body: Bytes,
}

/// Per-connection resume state, kept under the connection's queue lock.
#[derive(Debug)]
pub(crate) struct Cursor {
    marks: Vec<Mark>,
    resumable: bool,
    /// While replaying, live events wait here.
    pub(crate) held: Option<Held>,
}

/// Live events held back during a replay, bounded like the queue.
#[derive(Debug, Default)]
pub(crate) struct Held {
    pub(crate) events: Vec<Stamped>,
    pub(crate) bytes: usize,
    /// Some were not kept: the replay must read the history again.
    pub(crate) overflowed: bool,
}

/// What the cursor made of one event.
pub(crate) enum Admit {
    /// Send this frame.
    Frame(Bytes),
    /// Already sent (or older than what was sent): skip.
    Duplicate,
    /// Held back until the replay finishes.
    Held,
}

impl Cursor {
    /// A cursor over `keys` (canonical order), holding live events back.
    pub(crate) fn new(keys: &[u32]) -> Self {
        let mut distinct = keys.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let resumable = keys.len() <= MAX_RESUMABLE_CHANNELS && distinct.len() == keys.len();
        Self {
            marks: keys
                .iter()
                .map(|&key| Mark {
                    key,
                    epoch: 0,
                    position: Position::ZERO,
                })
                .collect(),
            resumable,
            held: Some(Held::default()),
        }
    }

    pub(crate) fn marks(&self) -> &[Mark] {
        &self.marks
    }

    /// Where the channel with `key` stands.
    pub(crate) fn position(&self, key: u32) -> Option<Position> {
        self.marks.iter().find(|m| m.key == key).map(|m| m.position)
    }

    /// Sets where a channel stands (at connect, after reading heads).
    pub(crate) fn set(&mut self, key: u32, epoch: u32, position: Position) {
        if let Some(m) = self.marks.iter_mut().find(|m| m.key == key) {
            m.epoch = epoch;
            m.position = position;
        }
    }

    /// Decides about one event; `hold` is false for replayed events, which
    /// go out even while live ones are held back.
    pub(crate) fn admit(&mut self, event: &Stamped, hold: bool, max_held: (usize, usize)) -> Admit {
        if event.key == 0 {
            // Not a channel (a reset event): sent with the current id.
            return Admit::Frame(self.frame(&event.body));
        }
        let Some(i) = self.marks.iter().position(|m| m.key == event.key) else {
            // Not a channel of this connection's cursor: deliver as is.
            return Admit::Frame(event.body.clone());
        };
        let mark = self.marks[i];
        if mark.epoch == event.epoch && event.position <= mark.position {
            return Admit::Duplicate;
        }
        if hold {
            if let Some(held) = &mut self.held {
                if !held.overflowed
                    && held.events.len() < max_held.0 / 2
                    && held.bytes + event.body.len() <= max_held.1 / 2
                {
                    held.bytes += event.body.len();
                    held.events.push(event.clone());
                } else {
                    held.overflowed = true;
                    held.events = Vec::new();
                    held.bytes = 0;
                }
                return Admit::Held;
            }
        }
        self.marks[i].epoch = event.epoch;
        self.marks[i].position = event.position;
        Admit::Frame(self.frame(&event.body))
    }

    /// `body` with this cursor's id line in front.
    pub(crate) fn frame(&self, body: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(body.len() + 8 + self.marks.len() * 20);
        out.extend_from_slice(b"id: ");
        write_id(&mut out, self.marks.iter().copied(), self.resumable);
        out.push(b'\n');
        out.extend_from_slice(body);
        if body.is_empty() {
            // An id-only frame: the client's last event id moves, no event fires.
            out.push(b'\n');
        }
        Bytes::from(out)
    }
}

/// The frame of a [`RESET_EVENT`] with `reason`.
pub(crate) fn reset_body(reason: &str) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(RESET_EVENT.as_bytes());
    out.extend_from_slice(b"\ndata: {\"reason\":\"");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\"}\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let marks = vec![
            Mark {
                key: channel_key(&Channel::Broadcast),
                epoch: epoch_tag("e1"),
                position: Position::new(1_795_828_621_070, 1),
            },
            Mark {
                key: channel_key(&Channel::Topic("news".into())),
                epoch: 0xff_ffff,
                position: Position::new(u64::MAX, u64::MAX),
            },
            Mark {
                key: 1,
                epoch: 1,
                position: Position::ZERO,
            },
        ];
        let mut out = Vec::new();
        write_id(&mut out, marks.iter().copied(), true);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(parse_last_id(&text), LastId::Marks(marks));
        assert_eq!(parse_last_id("r1"), LastId::NotResumable);
    }

    #[test]
    fn the_longest_id_fits_the_bound() {
        let marks = (1..=MAX_RESUMABLE_CHANNELS as u32).map(|k| Mark {
            key: k,
            epoch: k,
            position: Position::new(u64::MAX, u64::MAX),
        });
        let mut out = Vec::new();
        write_id(&mut out, marks, true);
        assert_eq!(out.len(), MAX_EVENT_ID_LEN);
        assert!(matches!(
            parse_last_id(std::str::from_utf8(&out).unwrap()),
            LastId::Marks(m) if m.len() == MAX_RESUMABLE_CHANNELS
        ));
    }

    #[test]
    fn garbage_is_invalid() {
        let long = "r1.AAAAAAAA0".repeat(400);
        for bad in [
            "",
            "r",
            "r2",
            "r1.",
            "r1..",
            "r1.AAAAAAAA",
            "r1.AAAAAAAA-",
            "r1.AAAAAAAA0-",
            "r1.AAAAAAAAZ",
            "r1.AAA*AAAA0",
            "r1.AAAAAAAAzzzzzzzzzzzzzz",
            "r1.AAAAAAAA0.AAAAAAAA1",
            "42",
            long.as_str(),
        ] {
            assert_eq!(parse_last_id(bad), LastId::Invalid, "{bad:?}");
        }
    }

    #[test]
    fn positions_parse() {
        assert_eq!(Position::parse("17"), Some(Position::new(17, 0)));
        assert_eq!(Position::parse("1-2"), Some(Position::new(1, 2)));
        for bad in ["", "-", "1-", "-1", "a", "1-2-3", "99999999999999999999999"] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cursor_deduplicates_and_holds() {
        let k = channel_key(&Channel::Topic("t".into()));
        let mut c = Cursor::new(&[k]);
        c.set(k, 7, Position::new(5, 0));
        let ev = |p| Stamped {
            key: k,
            epoch: 7,
            position: Position::new(p, 0),
            body: Bytes::from_static(b"data: x\n\n"),
        };
        assert!(matches!(
            c.admit(&ev(5), false, (8, 1024)),
            Admit::Duplicate
        ));
        assert!(matches!(c.admit(&ev(7), true, (8, 1024)), Admit::Held));
        let Admit::Frame(f) = c.admit(&ev(6), false, (8, 1024)) else {
            panic!("replayed events go out while live ones are held")
        };
        assert!(f.starts_with(b"id: r1."), "{f:?}");
        assert!(f.ends_with(b"\ndata: x\n\n"), "{f:?}");
        assert!(matches!(
            c.admit(&ev(6), false, (8, 1024)),
            Admit::Duplicate
        ));
        // Another epoch: the history was rebuilt while connected.
        let mut other = ev(1);
        other.epoch = 9;
        assert!(matches!(c.admit(&other, false, (8, 1024)), Admit::Frame(_)));
    }

    #[test]
    fn stamping_keeps_the_envelope_valid() {
        let stamped = stamp_envelope(br#"{"v":1,"data":"x"}"#, Position::new(3, 4), "ep");
        assert_eq!(
            &stamped[..],
            br#"{"v":1,"data":"x","pos":"3-4","epoch":"ep"}"#
        );
    }
}
