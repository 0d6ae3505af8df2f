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

use super::{Entry, Head, History, Position, Retention};
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
                ..State::default()
            })),
            retention,
        }
    }

    /// Forgets every event and starts a new epoch, as a restarted process
    /// would (for tests of the reset path).
    pub fn wipe(&self) {
        let mut state = self.lock();
        let State {
            next_seq, sweeper, ..
        } = std::mem::take(&mut *state);
        *state = State {
            next_seq,
            sweeper,
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

#[async_trait]
impl History for MemoryHistory {
    async fn append(&self, channel: &Channel, payload: Bytes) -> Result<Position, BrokerError> {
        let mut state = self.lock();
        self.ensure_sweeper(&mut state);
        // Taken under the lock: append order is time order, which the age
        // expiry relies on.
        let now = Instant::now();
        state.expire(&self.retention, now);
        let position = Position::new(
            state.append(channel, payload.clone(), now, &self.retention),
            0,
        );
        // Delivered under the lock: the next append of this channel waits,
        // so every hub sees the channel in position order.
        self.bus
            .deliver(channel, &stamp(&payload, position, &state.epoch));
        Ok(position)
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
mod tests {
    use super::*;

    fn topic(name: &str) -> Channel {
        Channel::Topic(name.into())
    }

    fn payload(len: usize) -> Bytes {
        Bytes::from(vec![b'x'; len])
    }

    /// A store's entries, per channel, as positions.
    fn kept(history: &MemoryHistory, channel: &Channel) -> Vec<u64> {
        history
            .lock()
            .rings
            .get(channel)
            .map_or_else(Vec::new, |ring| {
                ring.entries.iter().map(|e| e.position).collect()
            })
    }

    async fn head(history: &MemoryHistory, channel: &Channel, after: Option<u64>) -> Head {
        let ask = [(channel.clone(), after.map(|p| Position::new(p, 0)))];
        let mut heads = history.heads(&ask).await.expect("heads");
        heads.remove(0)
    }

    #[tokio::test]
    async fn the_budget_evicts_the_oldest_entries_of_the_whole_store() {
        let bus = MemoryBus::new();
        // Names are one byte each: three 100-byte entries and their names fit.
        let budget = 3 * 100 + 3;
        let retention = Retention::default().max_bytes(Some(budget));
        let history = MemoryHistory::new(&bus, retention);
        let (a, b, c) = (topic("a"), topic("b"), topic("c"));
        history.append(&a, payload(100)).await.expect("a1");
        history.append(&b, payload(100)).await.expect("b1");
        history.append(&a, payload(100)).await.expect("a2");
        assert_eq!(history.retained_bytes(), Some(300 + 2));
        // Over the budget: the oldest entry of the store (a's first) goes,
        // not the oldest of the channel appended to.
        history.append(&c, payload(100)).await.expect("c1");
        assert_eq!((kept(&history, &a), kept(&history, &b)), (vec![2], vec![1]));
        assert_eq!(kept(&history, &c), vec![1]);
        assert_eq!(history.retained_bytes(), Some(300 + 3));
        // Next goes b's only entry, and b with it.
        history.append(&c, payload(100)).await.expect("c2");
        assert!(!history.lock().rings.contains_key(&b));
        assert_eq!(history.retained_bytes(), Some(300 + 2));
        for i in 0..50 {
            history
                .append(&topic(&format!("t{}", i % 7)), payload(10 + i))
                .await
                .expect("append");
            let bytes = history.retained_bytes().expect("known");
            assert!(
                bytes <= budget as u64,
                "{bytes} over the budget of {budget}"
            );
            let state = history.lock();
            let stored: usize = state
                .rings
                .iter()
                .map(|(c, r)| {
                    name_len(c) + r.entries.iter().map(|e| e.payload.len()).sum::<usize>()
                })
                .sum();
            assert_eq!(stored, state.bytes, "the figure is what the rings hold");
            assert_eq!(
                state.oldest.len(),
                state.rings.len(),
                "one index entry per ring"
            );
        }
    }

    #[tokio::test]
    async fn evicted_positions_get_a_reset_never_a_gap() {
        let bus = MemoryBus::new();
        let history = MemoryHistory::new(&bus, Retention::default().max_bytes(Some(250)));
        let (a, b) = (topic("a"), topic("b"));
        for _ in 0..5 {
            history.append(&a, payload(50)).await.expect("a");
        }
        // Four 50-byte entries of a and one name byte fit; b's 100 bytes
        // push out a's two oldest.
        history.append(&b, payload(100)).await.expect("b");
        assert_eq!(kept(&history, &a), vec![4, 5]);
        assert!(!head(&history, &a, Some(2)).await.retained, "3 was evicted");
        let at_edge = head(&history, &a, Some(3)).await;
        assert!(at_edge.retained, "everything after 3 is kept");
        assert_eq!(at_edge.last, Position::new(5, 0));
        let replayed = history
            .read(&a, Position::new(3, 0), 10)
            .await
            .expect("read");
        let positions: Vec<u64> = replayed.iter().map(|e| e.position.major()).collect();
        assert_eq!(positions, vec![4, 5]);
        // A replay that read up to 1 before the eviction must not skip 2..3.
        let err = history.read(&a, Position::new(1, 0), 10).await;
        assert!(err.is_err(), "a read across evicted entries fails: {err:?}");
    }

    #[tokio::test]
    async fn an_event_larger_than_the_budget_is_delivered_but_not_kept() {
        let bus = MemoryBus::new();
        let history = MemoryHistory::new(&bus, Retention::default().max_bytes(Some(100)));
        let a = topic("a");
        history.append(&a, payload(10)).await.expect("small");
        let big = history.append(&a, payload(1000)).await.expect("big");
        assert_eq!(big, Position::new(2, 0));
        assert_eq!(history.retained_bytes(), Some(0));
        let h = head(&history, &a, Some(2)).await;
        assert!(
            h.retained && h.last == big,
            "a client that saw it is current"
        );
        assert!(
            !head(&history, &a, Some(1)).await.retained,
            "one that did not is reset"
        );
        let next = history.append(&a, payload(10)).await.expect("next");
        assert_eq!(next, Position::new(3, 0), "positions go on");
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_expires_idle_channels_and_removes_them() {
        let bus = MemoryBus::new();
        let age = Duration::from_secs(2);
        let history = MemoryHistory::new(&bus, Retention::default().max_age(Some(age)));
        let (a, b) = (topic("a"), topic("b"));
        for _ in 0..3 {
            history.append(&a, payload(100)).await.expect("a");
        }
        history.append(&b, payload(100)).await.expect("b");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let young = history.append(&b, payload(100)).await.expect("b2");
        assert_eq!(history.retained_bytes(), Some(500 + 2));
        // Nobody touches the store: only the sweeper (every second from
        // t=0, for a 2 s age) can trim it. At t=3.5 the t=0 entries are
        // past the age, the t=1 one is not.
        assert_eq!(sweep_period(age), Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(history.lock().rings.len(), 1, "a is removed");
        assert_eq!(kept(&history, &b), vec![young.major()]);
        assert_eq!(history.retained_bytes(), Some(100 + 1));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(history.lock().rings.is_empty(), "b is removed too");
        assert_eq!(history.retained_bytes(), Some(0));

        // A removed channel still answers as it did.
        let h = head(&history, &a, Some(3)).await;
        assert!(
            h.retained,
            "a client that saw a's last event has nothing to replay"
        );
        assert_eq!(h.last, Position::new(3, 0), "and a's head did not go back");
        assert!(
            !head(&history, &a, Some(2)).await.retained,
            "one behind gets a reset"
        );
        assert!(!head(&history, &a, Some(0)).await.retained);
        assert!(history
            .read(&a, Position::new(3, 0), 10)
            .await
            .expect("read")
            .is_empty());
        assert!(history.read(&a, Position::new(1, 0), 10).await.is_err());
        let next = history.append(&a, payload(1)).await.expect("a4");
        assert_eq!(
            next,
            Position::new(4, 0),
            "a continues after its last position"
        );
    }

    #[tokio::test]
    async fn forgotten_channels_start_after_the_floor() {
        let bus = MemoryBus::new();
        // Room for one entry: every append to another channel removes the
        // previous one.
        let history = MemoryHistory::new(&bus, Retention::default().max_bytes(Some(200)));
        let first = topic("first");
        for _ in 0..5 {
            history.append(&first, payload(100)).await.expect("first");
        }
        for i in 0..=REMEMBERED_CHANNELS {
            history
                .append(&topic(&format!("t{i}")), payload(100))
                .await
                .expect("append");
        }
        {
            let state = history.lock();
            assert_eq!(state.removed.last.len(), REMEMBERED_CHANNELS, "bounded");
            assert_eq!(state.removed.order.len(), REMEMBERED_CHANNELS);
            assert!(
                !state.removed.last.contains_key(&first),
                "the oldest is forgotten"
            );
            assert_eq!(state.removed.floor, 5);
        }
        assert!(head(&history, &first, Some(5)).await.retained);
        assert!(!head(&history, &first, Some(4)).await.retained);
        assert_eq!(head(&history, &first, None).await.last, Position::new(5, 0));
        let next = history.append(&first, payload(100)).await.expect("again");
        assert_eq!(next, Position::new(6, 0), "never behind what a client saw");
        let fresh = topic("never-seen");
        assert!(
            !head(&history, &fresh, Some(0)).await.retained,
            "a reset, not a gap"
        );
        assert_eq!(
            history.append(&fresh, payload(1)).await.expect("fresh"),
            Position::new(6, 0)
        );
    }

    #[test]
    fn a_store_built_outside_a_runtime_sweeps_once_used_in_one_and_stops_when_dropped() {
        let bus = MemoryBus::new();
        let age = Duration::from_secs(1);
        let history = MemoryHistory::new(&bus, Retention::default().max_age(Some(age)));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            assert!(
                history.lock().sweeper.is_none(),
                "no runtime, no sweeper yet"
            );
            history
                .append(&topic("a"), payload(10))
                .await
                .expect("append");
            let sweeper = history
                .lock()
                .sweeper
                .clone()
                .expect("started by the append");
            tokio::time::sleep(age * 3).await;
            assert!(history.lock().rings.is_empty(), "swept");
            drop(history);
            tokio::task::yield_now().await;
            assert!(sweeper.is_finished(), "the sweeper ends with the store");
        });
    }

    #[tokio::test]
    async fn without_an_age_no_sweeper_runs_and_wipe_empties_the_store() {
        let bus = MemoryBus::new();
        let history = MemoryHistory::new(&bus, Retention::default().max_age(None));
        let a = topic("a");
        history.append(&a, payload(10)).await.expect("append");
        assert!(history.lock().sweeper.is_none());
        history.wipe();
        assert_eq!(history.retained_bytes(), Some(0));
        assert!(history.lock().oldest.is_empty());
        assert_eq!(
            history.append(&a, payload(10)).await.expect("a"),
            Position::new(1, 0)
        );
    }
}
