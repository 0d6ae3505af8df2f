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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::{Entry, Head, History, Position, Retention};
use crate::broker::memory::MemoryBus;
use crate::broker::{BrokerError, Channel};
use crate::wire::{random_tag, stamp};

#[derive(Default)]
struct Ring {
    entries: VecDeque<(u64, Instant, Bytes)>,
    /// The last position handed out.
    last: u64,
}

impl Ring {
    /// Every position up to this one has been trimmed.
    fn trimmed_through(&self) -> u64 {
        match self.entries.front() {
            Some((first, _, _)) => first - 1,
            None => self.last,
        }
    }

    fn trim(&mut self, retention: &Retention, now: Instant) {
        while self.entries.len() > retention.max_len {
            self.entries.pop_front();
        }
        if let Some(age) = retention.max_age {
            while self
                .entries
                .front()
                .is_some_and(|(_, at, _)| now.duration_since(*at) > age)
            {
                self.entries.pop_front();
            }
        }
    }
}

struct State {
    rings: HashMap<Channel, Ring>,
    epoch: Arc<str>,
}

/// History in process memory, tied to a [`MemoryBus`].
pub struct MemoryHistory {
    bus: MemoryBus,
    state: Mutex<State>,
    retention: Retention,
}

impl fmt::Debug for MemoryHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryHistory")
            .field("epoch", &self.lock().epoch)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl MemoryHistory {
    /// A new, empty history publishing on `bus`.
    pub fn new(bus: &MemoryBus, retention: Retention) -> Self {
        Self {
            bus: bus.clone(),
            state: Mutex::new(State {
                rings: HashMap::new(),
                epoch: new_epoch(),
            }),
            retention,
        }
    }

    /// Forgets every event and starts a new epoch, as a restarted process
    /// would (for tests of the reset path).
    pub fn wipe(&self) {
        let mut state = self.lock();
        state.rings.clear();
        state.epoch = new_epoch();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn new_epoch() -> Arc<str> {
    random_tag(12).into()
}

#[async_trait]
impl History for MemoryHistory {
    async fn append(&self, channel: &Channel, payload: Bytes) -> Result<Position, BrokerError> {
        let now = Instant::now();
        let mut state = self.lock();
        let epoch = state.epoch.clone();
        let ring = state.rings.entry(channel.clone()).or_default();
        ring.last += 1;
        let position = Position::new(ring.last, 0);
        ring.entries.push_back((ring.last, now, payload.clone()));
        ring.trim(&self.retention, now);
        // Delivered under the lock: the next append of this channel waits,
        // so every hub sees the channel in position order.
        self.bus
            .deliver(channel, &stamp(&payload, position, &epoch));
        Ok(position)
    }

    async fn heads(
        &self,
        channels: &[(Channel, Option<Position>)],
    ) -> Result<Vec<Head>, BrokerError> {
        let now = Instant::now();
        let mut state = self.lock();
        let epoch = state.epoch.clone();
        Ok(channels
            .iter()
            .map(|(channel, after)| {
                let (last, retained) = match state.rings.get_mut(channel) {
                    Some(ring) => {
                        ring.trim(&self.retention, now);
                        let retained = after.is_none_or(|p| {
                            p.major() >= ring.trimmed_through() && p.major() <= ring.last
                        });
                        (ring.last, retained)
                    }
                    None => (0, after.is_none_or(|p| p == Position::ZERO)),
                };
                Head::new(epoch.clone(), Position::new(last, 0), retained)
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
        let Some(ring) = state.rings.get(channel) else {
            return Ok(Vec::new());
        };
        let first = ring.entries.front().map_or(0, |(p, _, _)| *p);
        let skip = (after.major() + 1).saturating_sub(first);
        Ok(ring
            .entries
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(limit)
            .map(|(p, _, payload)| Entry::new(Position::new(*p, 0), payload.clone()))
            .collect())
    }
}
