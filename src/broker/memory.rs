//! The in-memory broker: joins any number of hubs in one process.
//!
//! A [`MemoryBus`] is the shared "server"; each hub gets its own
//! [`MemoryBroker`] from [`MemoryBus::broker`]. Delivery is synchronous and
//! ordered. It is the broker for single-process apps and the fixture for
//! multi-node tests: three hubs on one bus behave like three nodes on Redis,
//! down to the encoded envelopes on the wire.
//!
//! ```
//! use sse_cluster::{broker::memory::MemoryBus, Hub};
//!
//! # async fn demo() -> Result<(), sse_cluster::HubError> {
//! let bus = MemoryBus::new();
//! let a = Hub::builder().node_id("a").broker(bus.broker()).build().await?;
//! let b = Hub::builder().node_id("b").broker(bus.broker()).build().await?;
//! # let _ = (a, b);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use super::{Broker, BrokerError, BrokerStatus, BusSink, Channel};

#[derive(Default)]
struct BusState {
    members: HashMap<u64, Member>,
    /// The members subscribed to each channel: a few at most (one per hub
    /// on the bus), so a list; a hash set cost ~80 B more per channel.
    channels: HashMap<Channel, Vec<u64>>,
}

struct Member {
    sink: Option<Arc<dyn BusSink>>,
    connected: bool,
}

#[derive(Default)]
struct BusInner {
    state: Mutex<BusState>,
    next_member: AtomicU64,
    published: AtomicU64,
}

impl BusInner {
    fn lock(&self) -> MutexGuard<'_, BusState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sinks of the connected members subscribed to `channel`.
    fn sinks(&self, channel: &Channel) -> Vec<Arc<dyn BusSink>> {
        let state = self.lock();
        let Some(ids) = state.channels.get(channel) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| state.members.get(id))
            .filter(|m| m.connected)
            .filter_map(|m| m.sink.clone())
            .collect()
    }
}

/// The shared in-process bus. Cheap to clone; clones are the same bus.
#[derive(Clone, Default)]
pub struct MemoryBus {
    inner: Arc<BusInner>,
}

impl fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("MemoryBus")
            .field("members", &state.members.len())
            .field("channels", &state.channels.len())
            .finish()
    }
}

impl MemoryBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// A broker on this bus, for one hub.
    pub fn broker(&self) -> Arc<MemoryBroker> {
        let id = self.inner.next_member.fetch_add(1, Ordering::Relaxed);
        self.inner.lock().members.insert(
            id,
            Member {
                sink: None,
                connected: true,
            },
        );
        Arc::new(MemoryBroker {
            bus: self.inner.clone(),
            id,
            status: watch::channel(BrokerStatus::Up).0,
        })
    }

    /// Messages published on this bus so far, by all members.
    pub fn published(&self) -> u64 {
        self.inner.published.load(Ordering::Relaxed)
    }

    /// Hands `payload` to every connected member subscribed to `channel`,
    /// in the caller's thread, before returning: a synchronous publish. A
    /// history store built on this bus publishes this way while holding its
    /// own lock, which keeps each channel in position order (see
    /// [`MemoryHistory`](crate::history::memory::MemoryHistory)).
    pub fn deliver(&self, channel: &Channel, payload: &Bytes) {
        for sink in self.inner.sinks(channel) {
            sink.deliver(channel, payload.clone());
        }
        self.inner.published.fetch_add(1, Ordering::Relaxed);
    }

    /// Brokers subscribed to `channel` right now.
    pub fn subscribers(&self, channel: &Channel) -> usize {
        self.inner.lock().channels.get(channel).map_or(0, Vec::len)
    }
}

/// One hub's connection to a [`MemoryBus`].
pub struct MemoryBroker {
    bus: Arc<BusInner>,
    id: u64,
    status: watch::Sender<BrokerStatus>,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("member", &self.id)
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl MemoryBroker {
    /// Simulates losing (`false`) or regaining (`true`) the connection to the
    /// bus: while disconnected, publishes fail with
    /// [`BrokerError::Unavailable`], nothing is received, and the status is
    /// [`BrokerStatus::Down`]. Subscriptions are kept, as a real backend
    /// restores them when it reconnects.
    pub fn set_connected(&self, connected: bool) {
        let sink = match self.bus.lock().members.get_mut(&self.id) {
            Some(m) => {
                m.connected = connected;
                m.sink.clone()
            }
            None => None,
        };
        let status = if connected {
            BrokerStatus::Up
        } else {
            BrokerStatus::Down
        };
        super::report_status(&self.status, sink.as_ref(), || status);
    }

    /// Removes this member and all its subscriptions from the bus.
    fn leave(&self) {
        let mut state = self.bus.lock();
        state.members.remove(&self.id);
        for ids in state.channels.values_mut() {
            ids.retain(|id| *id != self.id);
        }
        state.channels.retain(|_, ids| !ids.is_empty());
    }

    fn check_connected(&self, state: &BusState) -> Result<(), BrokerError> {
        match state.members.get(&self.id) {
            None => Err(BrokerError::Closed),
            Some(m) if !m.connected => Err(BrokerError::Unavailable(
                "memory broker disconnected".into(),
            )),
            Some(_) => Ok(()),
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn start(&self, sink: Arc<dyn BusSink>) -> Result<(), BrokerError> {
        match self.bus.lock().members.get_mut(&self.id) {
            Some(m) => {
                m.sink = Some(sink);
                Ok(())
            }
            None => Err(BrokerError::Closed),
        }
    }

    async fn publish(&self, channel: &Channel, payload: Bytes) -> Result<(), BrokerError> {
        self.check_connected(&self.bus.lock())?;
        let sinks = self.bus.sinks(channel);
        self.bus.published.fetch_add(1, Ordering::Relaxed);
        // Delivered outside the bus lock: a sink may publish in turn.
        for sink in sinks {
            sink.deliver(channel, payload.clone());
        }
        Ok(())
    }

    async fn subscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        let mut state = self.bus.lock();
        if !state.members.contains_key(&self.id) {
            return Err(BrokerError::Closed);
        }
        let ids = state
            .channels
            .entry(channel.clone())
            .or_insert_with(|| Vec::with_capacity(1));
        if !ids.contains(&self.id) {
            ids.push(self.id);
        }
        Ok(())
    }

    async fn unsubscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        let mut state = self.bus.lock();
        if let Some(ids) = state.channels.get_mut(channel) {
            ids.retain(|id| *id != self.id);
            if ids.is_empty() {
                state.channels.remove(channel);
            }
        }
        Ok(())
    }

    fn status(&self) -> watch::Receiver<BrokerStatus> {
        self.status.subscribe()
    }

    async fn shutdown(&self) -> Result<(), BrokerError> {
        self.leave();
        Ok(())
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        self.leave();
    }
}
