//! The in-memory history: a bounded ring per channel, shared by every hub on
//! one [`MemoryBus`].
//!
//! For single-process apps and in-process clusters (tests, demos). An append
//! stores the event and delivers it to the bus's subscribers under one lock,
//! so each channel's events reach every hub in position order. Positions are
//! a counter per channel; the epoch is random per store, so a restarted
//! process (a new, empty store) is told from the old one.
//!
//! ```
//! use std::sync::Arc;
//! use sse_cluster::{broker::memory::MemoryBus, history::{memory::MemoryHistory, Retention}, Hub};
//!
//! # async fn demo() -> Result<(), sse_cluster::HubError> {
//! let bus = MemoryBus::new();
//! let history = Arc::new(MemoryHistory::new(&bus, Retention::default().max_len(500)));
//! let hub = Hub::builder().broker(bus.broker()).history(history).build().await?;
//! # let _ = hub;
//! # Ok(())
//! # }
//! ```
//!
//! # What it keeps, and for how long
//!
//! Memory is bounded three ways, so that publishers (or hostile peers on the
//! bus's publish path) cannot grow the process without limit:
//!
//! - **per channel**, [`Retention::max_len`] events;
//! - **store-wide**, [`Retention::max_bytes`] (default 64 MiB): the stored
//!   envelopes plus the name of each channel holding any. An append that
//!   would go over it evicts the store's oldest entries first, across all
//!   channels (exactly oldest first: the store keeps an index of each
//!   channel's oldest entry), until the budget holds again; an event larger
//!   than the whole budget is delivered live but not kept;
//! - **by age**, [`Retention::max_age`]: entries older than that are dropped
//!   by every append and connect, and by a sweeper task that runs every
//!   `max_age / 4` (at least every 5 s, at most every second) so that memory
//!   is returned while the store is idle. The sweeper starts with the first
//!   append made inside a Tokio runtime (the store itself can be built
//!   outside one) and ends when the store is dropped.
//!
//! A channel whose last entry goes is removed. Its clients keep the store's
//! guarantees: positions never go backwards and a client never gets a
//! silent gap. The store remembers the last position of the most recently
//! removed channels (up to 4096 of them; a few dozen bytes plus the name
//! each), so a client that saw a removed channel's last event resumes with
//! nothing to replay, a client behind it gets the reset event, and a new
//! event on the channel continues after that position. When more channels
//! are removed than that, the oldest are forgotten into one store-wide
//! floor: a forgotten or never-seen channel starts after the highest
//! position ever forgotten, and a client holding a position of it before
//! that floor gets the reset event (a reset it may not strictly need, never
//! a gap or a duplicate).
//!
//! Idempotency keys ([`History::append_once`]) are kept in the store, per
//! channel, for [`Retention::idempotency_window`], and checked under the
//! same lock as the append: every hub and publisher sharing the store sees
//! one key once. They take at most [`MAX_KEY_BYTES`] (not counted in
//! [`Retention::max_bytes`]); past that the oldest keys are forgotten
//! early. [`MemoryHistory::wipe`] forgets them too.
//!
//! Evicted entries are treated like trimmed ones: [`History::heads`] reports
//! `retained: false` for a client whose position is before the oldest kept
//! entry (the resume sends the reset event), and a [`History::read`] whose
//! next entry was evicted meanwhile fails (the replay closes the stream, and
//! the client's reconnect gets the reset event) rather than skip it.

use std::collections::{hash_map, BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::task::AbortHandle;
use tokio::time::{Instant, MissedTickBehavior};

pub use super::keys::MAX_KEY_BYTES;
use super::keys::{FirstPublish, KeyWindow};
use super::{Appended, Entry, Head, History, Position, Retention};
use crate::broker::memory::MemoryBus;
use crate::broker::{BrokerError, Channel};
use crate::wire::{random_tag, stamp};

/// Removed channels whose last position is remembered one by one; older
/// ones are folded into a store-wide floor.
const REMEMBERED_CHANNELS: usize = 4096;

/// Bounds of the sweeper's period (`max_age / 4`, clamped).
const SWEEP_MIN: Duration = Duration::from_secs(1);
const SWEEP_MAX: Duration = Duration::from_secs(5);

/// How often the sweeper runs for entries kept at most `age`.
fn sweep_period(age: Duration) -> Duration {
    (age / 4).clamp(SWEEP_MIN, SWEEP_MAX)
}

/// The bytes a channel's name costs while the channel has a ring.
fn name_len(channel: &Channel) -> usize {
    match channel {
        Channel::Broadcast => 0,
        Channel::Node(name) | Channel::Topic(name) | Channel::User(name) => name.len(),
    }
}

/// One stored event.
struct Stored {
    position: u64,
    /// Store-wide append order: the eviction order.
    seq: u64,
    at: Instant,
    payload: Bytes,
}

struct Ring {
    entries: VecDeque<Stored>,
    /// The last position handed out.
    last: u64,
}

impl Ring {
    /// Every position up to this one has been trimmed.
    fn trimmed_through(&self) -> u64 {
        match self.entries.front() {
            Some(first) => first.position - 1,
            None => self.last,
        }
    }
}

/// The last positions of removed channels: the most recent ones exactly,
/// the others as one floor (the highest of them).
#[derive(Default)]
struct Removed {
    /// Channel → (its last position, when it was removed).
    last: HashMap<Channel, (u64, u64)>,
    /// When → channel, oldest first: which to forget first.
    order: BTreeMap<u64, Channel>,
    next: u64,
    /// At or after the last position of every forgotten channel.
    floor: u64,
}

impl Removed {
    /// The last position a channel without a ring had.
    fn last(&self, channel: &Channel) -> u64 {
        self.last.get(channel).map_or(self.floor, |(last, _)| *last)
    }

    fn remember(&mut self, channel: Channel, last: u64) {
        let when = self.next;
        self.next += 1;
        if let Some((_, earlier)) = self.last.insert(channel.clone(), (last, when)) {
            self.order.remove(&earlier);
        }
        self.order.insert(when, channel);
        while self.last.len() > REMEMBERED_CHANNELS {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((last, _)) = self.last.remove(&oldest) {
                self.floor = self.floor.max(last);
            }
        }
    }

    /// The last position of a channel that gets a ring again.
    fn take(&mut self, channel: &Channel) -> u64 {
        match self.last.remove(channel) {
            Some((last, when)) => {
                self.order.remove(&when);
                last
            }
            None => self.floor,
        }
    }
}

#[derive(Default)]
struct State {
    /// Only channels holding at least one entry.
    rings: HashMap<Channel, Ring>,
    /// Each ring's oldest entry, by `seq`: the store's oldest entries first.
    oldest: BTreeMap<u64, Channel>,
    next_seq: u64,
    /// Stored payloads plus the names of the channels in `rings`.
    bytes: usize,
    removed: Removed,
    epoch: Arc<str>,
    sweeper: Option<AbortHandle>,
    /// Idempotency keys and the first publish of each.
    keys: KeyWindow,
}

impl Default for KeyWindow {
    fn default() -> Self {
        KeyWindow::new(Retention::DEFAULT_IDEMPOTENCY_WINDOW)
    }
}

impl State {
    /// Stores `payload` as `channel`'s next event and applies the count and
    /// byte limits; returns its position.
    fn append(
        &mut self,
        channel: &Channel,
        payload: Bytes,
        now: Instant,
        retention: &Retention,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let ring = match self.rings.entry(channel.clone()) {
            hash_map::Entry::Occupied(ring) => ring.into_mut(),
            hash_map::Entry::Vacant(slot) => {
                self.bytes += name_len(channel);
                slot.insert(Ring {
                    entries: VecDeque::new(),
                    last: self.removed.take(channel),
                })
            }
        };
        if ring.entries.is_empty() {
            self.oldest.insert(seq, channel.clone());
        }
        ring.last += 1;
        let position = ring.last;
        self.bytes += payload.len();
        ring.entries.push_back(Stored {
            position,
            seq,
            at: now,
            payload,
        });
        let excess = ring.entries.len().saturating_sub(retention.max_len);
        for _ in 0..excess {
            self.pop_front(channel);
        }
        if let Some(max) = retention.max_bytes {
            while self.bytes > max && self.evict_oldest() {}
        }
        position
    }

    /// Drops `channel`'s oldest entry, and the ring once it is empty.
    /// False when the channel has no entry.
    fn pop_front(&mut self, channel: &Channel) -> bool {
        let Some(ring) = self.rings.get_mut(channel) else {
            return false;
        };
        let Some(gone) = ring.entries.pop_front() else {
            return false;
        };
        self.oldest.remove(&gone.seq);
        self.bytes -= gone.payload.len();
        match ring.entries.front() {
            Some(next) => {
                self.oldest.insert(next.seq, channel.clone());
            }
            None => {
                let last = ring.last;
                self.rings.remove(channel);
                self.bytes -= name_len(channel);
                self.removed.remember(channel.clone(), last);
            }
        }
        true
    }

    /// Drops the store's oldest entry; false when the store is empty.
    fn evict_oldest(&mut self) -> bool {
        let Some((&seq, channel)) = self.oldest.first_key_value() else {
            return false;
        };
        let channel = channel.clone();
        if !self.pop_front(&channel) {
            // Not reachable: every indexed channel has a front entry.
            self.oldest.remove(&seq);
        }
        true
    }

    /// Drops every entry older than the retention's age.
    fn expire(&mut self, retention: &Retention, now: Instant) {
        let Some(age) = retention.max_age else {
            return;
        };
        while let Some(channel) = self.oldest.first_key_value().map(|(_, c)| c.clone()) {
            let at = self
                .rings
                .get(&channel)
                .and_then(|ring| ring.entries.front())
                .map(|first| first.at);
            match at {
                Some(at) if now.duration_since(at) <= age => break,
                // Entries are indexed in append order, which is time order:
                // the first young one ends the sweep.
                _ => {
                    self.evict_oldest();
                }
            }
        }
    }

    /// `channel`'s last position and the position through which it is
    /// trimmed (both the remembered last position for a removed channel).
    fn bounds(&self, channel: &Channel) -> (u64, u64) {
        match self.rings.get(channel) {
            Some(ring) => (ring.last, ring.trimmed_through()),
            None => {
                let last = self.removed.last(channel);
                (last, last)
            }
        }
    }
}

/// History in process memory, tied to a [`MemoryBus`].
pub struct MemoryHistory {
    bus: MemoryBus,
    state: Arc<Mutex<State>>,
    retention: Retention,
}

impl fmt::Debug for MemoryHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryHistory")
            .field("epoch", &state.epoch)
            .field("retention", &self.retention)
            .field("channels", &state.rings.len())
            .field("bytes", &state.bytes)
            .finish_non_exhaustive()
    }
}

impl Drop for MemoryHistory {
    fn drop(&mut self) {
        if let Some(sweeper) = self.lock().sweeper.take() {
            sweeper.abort();
        }
    }
}

impl MemoryHistory {
    /// A new, empty history publishing on `bus`. Need not run inside a
    /// Tokio runtime: the age sweeper starts with the first append.
    pub fn new(bus: &MemoryBus, retention: Retention) -> Self {
        Self {
            bus: bus.clone(),
            state: Arc::new(Mutex::new(State {
                epoch: new_epoch(),
                keys: KeyWindow::new(retention.idempotency_window),
                ..State::default()
            })),
            retention,
        }
    }

    /// Forgets every event (and idempotency key) and starts a new epoch, as a restarted process
    /// would (for tests of the reset path).
    pub fn wipe(&self) {
        let mut state = self.lock();
        let State {
            next_seq,
            sweeper,
            mut keys,
            ..
        } = std::mem::take(&mut *state);
        keys.clear();
        *state = State {
            next_seq,
            sweeper,
            keys,
            epoch: new_epoch(),
            ..State::default()
        };
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Starts the age sweeper if there is an age, a runtime, and no sweeper
    /// running (a runtime that ended took the previous one with it).
    fn ensure_sweeper(&self, state: &mut State) {
        let Some(age) = self.retention.max_age else {
            return;
        };
        if state.sweeper.as_ref().is_some_and(|s| !s.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let task = sweep(
            Arc::downgrade(&self.state),
            self.retention,
            sweep_period(age),
        );
        state.sweeper = Some(runtime.spawn(task).abort_handle());
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Trims `state` by age every `every`, until the store is dropped.
async fn sweep(state: Weak<Mutex<State>>, retention: Retention, every: Duration) {
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        lock(&state).expire(&retention, Instant::now());
    }
}

fn new_epoch() -> Arc<str> {
    random_tag(12).into()
}

impl MemoryHistory {
    /// Stores and delivers `payload` under the lock `state` is.
    fn append_locked(
        &self,
        state: &mut State,
        channel: &Channel,
        payload: Bytes,
        now: Instant,
    ) -> Position {
        self.ensure_sweeper(state);
        state.expire(&self.retention, now);
        let position = Position::new(
            state.append(channel, payload.clone(), now, &self.retention),
            0,
        );
        // Delivered under the lock: the next append of this channel waits,
        // so every hub sees the channel in position order.
        self.bus
            .deliver(channel, &stamp(&payload, position, &state.epoch));
        position
    }
}

#[async_trait]
impl History for MemoryHistory {
    async fn append(&self, channel: &Channel, payload: Bytes) -> Result<Position, BrokerError> {
        let mut state = self.lock();
        // Taken under the lock: append order is time order, which the age
        // expiry relies on.
        let now = Instant::now();
        Ok(self.append_locked(&mut state, channel, payload, now))
    }

    fn idempotency_window(&self) -> Option<Duration> {
        Some(self.retention.idempotency_window)
    }

    async fn append_once(
        &self,
        channel: &Channel,
        payload: Bytes,
        key: &str,
        msg: &str,
    ) -> Result<Appended, BrokerError> {
        let mut state = self.lock();
        let now = Instant::now();
        if let Some(first) = state.keys.get(now, channel, key) {
            return Ok(Appended::Duplicate {
                position: first.position.unwrap_or(Position::ZERO),
                msg: Some(first.msg.to_string()),
            });
        }
        let position = self.append_locked(&mut state, channel, payload, now);
        let first = FirstPublish {
            position: Some(position),
            msg: msg.into(),
        };
        state.keys.insert(now, channel, key, first);
        Ok(Appended::Stored(position))
    }

    async fn heads(
        &self,
        channels: &[(Channel, Option<Position>)],
    ) -> Result<Vec<Head>, BrokerError> {
        let mut state = self.lock();
        state.expire(&self.retention, Instant::now());
        Ok(channels
            .iter()
            .map(|(channel, after)| {
                let (last, trimmed) = state.bounds(channel);
                let retained = after.is_none_or(|p| p.major() >= trimmed && p.major() <= last);
                Head::new(state.epoch.clone(), Position::new(last, 0), retained)
            })
            .collect())
    }

    async fn read(
        &self,
        channel: &Channel,
        after: Position,
        limit: usize,
    ) -> Result<Vec<Entry>, BrokerError> {
        let state = self.lock();
        let (_, trimmed) = state.bounds(channel);
        if after.major() < trimmed {
            // The next event was trimmed or evicted since the heads were
            // read: fail rather than skip it (the replay closes the stream;
            // the reconnect gets the reset event).
            return Err(BrokerError::Backend {
                source: format!("{channel}: the events after {after} are no longer retained")
                    .into(),
                transient: true,
            });
        }
        let Some(ring) = state.rings.get(channel) else {
            return Ok(Vec::new());
        };
        let skip = after.major() - trimmed;
        Ok(ring
            .entries
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(limit)
            .map(|e| Entry::new(Position::new(e.position, 0), e.payload.clone()))
            .collect())
    }

    fn retained_bytes(&self) -> Option<u64> {
        Some(u64::try_from(self.lock().bytes).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests;
