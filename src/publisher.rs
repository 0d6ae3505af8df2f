//! The publish-only tier: a [`Publisher`] sends events to any target in the
//! cluster from a process that holds no connections.
//!
//! An API process that only publishes needs no registry, no subscriptions
//! and no HTTP streams: it creates a `Publisher` from a broker and publishes
//! exactly as [`Hub::publish`](crate::Hub::publish) does (same envelope, same
//! channels), and the gateway nodes that hold the connections deliver.
//!
//! ```no_run
//! use sse_cluster::{broker::memory::MemoryBus, Event, Publisher, Target};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let publisher = Publisher::new(MemoryBus::new().broker()).await?;
//! publisher.publish(Target::user("42"), Event::new().data("hello")).await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::broker::{Broker, BrokerStatus, BusSink, Channel};
use crate::event::Event;
use crate::hub::{check_target_name, HubError, PublishError, PublishReceipt, Target};
use crate::wire::Envelope;

/// Largest event data a [`Publisher`] sends, in bytes: the hub's default
/// (see `HubBuilder::max_event_size`).
pub const DEFAULT_MAX_EVENT_SIZE: usize = 1 << 20;

/// A random alphanumeric tag telling one run of a hub or publisher from
/// another.
pub(crate) fn random_tag(len: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(len)
        .collect()
}

/// The next message id of `origin`: `{origin}.m{n}`.
pub(crate) fn message_id(origin: &str, counter: &AtomicU64) -> String {
    format!("{origin}.m{}", counter.fetch_add(1, Ordering::Relaxed))
}

/// Refuses event data over `max` bytes, before anything is delivered.
pub(crate) fn check_event_size(event: &Event, max: usize) -> Result<(), PublishError> {
    let size = event.data_str().map_or(0, str::len);
    if size > max {
        return Err(PublishError::TooLarge { size, max });
    }
    Ok(())
}

/// Puts a bus message on its channel: through the history store when there
/// is one and the channel is resumable (stored and published in one step),
/// else straight on the bus. Shared by hubs and publishers.
pub(crate) async fn send_to_bus(
    broker: &dyn Broker,
    history: Option<&dyn crate::history::History>,
    channel: &Channel,
    payload: Bytes,
) -> Result<(), crate::broker::BrokerError> {
    match history {
        Some(history) if crate::history::is_resumable(channel) => {
            history.append(channel, payload).await.map(drop)
        }
        _ => broker.publish(channel, payload).await,
    }
}

/// The bus channel and envelope for `event` to `target`, published by
/// `origin` as message `msg`. Shared by hubs and publishers, so both tiers
/// put exactly the same bytes on the same channels.
pub(crate) fn bus_message(
    target: &Target,
    event: &Event,
    origin: &str,
    msg: &str,
) -> Result<(Channel, Bytes), PublishError> {
    let mut conn = None;
    let channel = match target {
        Target::Topic(t) => {
            check_target_name(t)?;
            Channel::Topic(t.as_str().into())
        }
        Target::User(u) => {
            check_target_name(u)?;
            Channel::User(u.as_str().into())
        }
        Target::All => Channel::Broadcast,
        Target::Connection(id) => {
            conn = Some(id.as_str());
            Channel::Node(id.node().into())
        }
    };
    let mut envelope = Envelope::from_event(event);
    envelope.origin = Some(origin.into());
    envelope.msg = Some(msg.into());
    envelope.ts_us = Some(crate::telemetry::now_us());
    envelope.conn = conn.map(Into::into);
    Ok((channel, envelope.encode()))
}

/// Publishes to a cluster without holding connections. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Arc<dyn Broker>,
    status: watch::Receiver<BrokerStatus>,
    origin: Arc<str>,
    next_msg: AtomicU64,
    history: Option<Arc<dyn crate::history::History>>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("origin", &self.inner.origin)
            .field("broker", &self.inner.broker)
            .finish_non_exhaustive()
    }
}

/// A publisher subscribes to nothing: whatever arrives is ignored.
struct Ignore;

impl BusSink for Ignore {
    fn deliver(&self, _channel: &Channel, _payload: Bytes) {}
    fn status_changed(&self, _status: BrokerStatus) {}
}

impl Publisher {
    /// Starts `broker` for publishing only. A broker that cannot reach its
    /// server yet is fine: publishes fail with a transient error until it can.
    pub async fn new(broker: Arc<dyn Broker>) -> Result<Self, HubError> {
        broker.start(Arc::new(Ignore)).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                status: broker.status(),
                broker,
                origin: format!("publisher.{}", random_tag(6)).into(),
                next_msg: AtomicU64::new(1),
                history: None,
            }),
        })
    }

    /// Appends events to `store` as it publishes them, like a hub with
    /// [`HubBuilder::history`](crate::HubBuilder::history): the gateways'
    /// clients can then resume them. Use the store the gateways use.
    pub fn with_history(self, store: Arc<dyn crate::history::History>) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                broker: inner.broker.clone(),
                status: inner.status.clone(),
                origin: inner.origin.clone(),
                next_msg: AtomicU64::new(inner.next_msg.load(Ordering::Relaxed)),
                history: Some(store),
            }),
        }
    }

    /// Publishes `event` to `target` on every node that holds receivers.
    /// Data over [`DEFAULT_MAX_EVENT_SIZE`] is refused
    /// ([`PublishError::TooLarge`]), as a hub does by default.
    pub async fn publish(
        &self,
        target: Target,
        event: Event,
    ) -> Result<PublishReceipt, PublishError> {
        let inner = &self.inner;
        check_event_size(&event, DEFAULT_MAX_EVENT_SIZE)?;
        let msg = message_id(&inner.origin, &inner.next_msg);
        let (channel, payload) = bus_message(&target, &event, &inner.origin, &msg)?;
        send_to_bus(&*inner.broker, inner.history.as_deref(), &channel, payload).await?;
        Ok(PublishReceipt {
            id: msg,
            delivered_locally: 0,
        })
    }

    /// Whether the broker can reach its server now.
    pub fn broker_status(&self) -> BrokerStatus {
        *self.inner.status.borrow()
    }

    /// Flushes and disconnects the broker.
    pub async fn shutdown(&self) {
        if let Err(err) = self.inner.broker.shutdown().await {
            tracing::warn!(error = %err, "broker shutdown failed");
        }
    }
}
