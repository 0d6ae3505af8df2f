//! The bus between nodes: the [`Broker`] trait and its backends.
//!
//! A broker carries opaque payloads (the [`wire`](crate::wire) envelope) on
//! named [`Channel`]s. The hub decides which channels a node listens to; the
//! broker only publishes, subscribes and reports whether it can reach its
//! server. Backends: [`memory`] (always built), and the network ones behind
//! their cargo features.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

#[cfg(any(feature = "redis", feature = "postgres", feature = "kafka"))]
pub(crate) mod backoff;
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub mod kafka;
pub mod memory;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

/// A bus channel. Backends map it to their own naming (see the crate docs,
/// "How it works", for the names on Redis and NATS).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Channel {
    /// Every node listens here: events for everyone.
    Broadcast,
    /// One node's own channel: events for single connections it holds.
    Node(Arc<str>),
    /// Events for a topic's subscribers; nodes listen only while they hold one.
    Topic(Arc<str>),
    /// Events for a user's connections; nodes listen only while they hold one.
    User(Arc<str>),
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::Broadcast => f.write_str("broadcast"),
            Channel::Node(n) => write!(f, "node:{n}"),
            Channel::Topic(t) => write!(f, "topic:{t}"),
            Channel::User(u) => write!(f, "user:{u}"),
        }
    }
}

/// Whether the broker can currently reach its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerStatus {
    /// Connected: publishes go out and subscriptions are live.
    Up,
    /// Disconnected: publishes fail or are buffered, and messages published
    /// elsewhere meanwhile are not received.
    Down,
}

/// A broker failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The server cannot be reached right now; retrying later may succeed.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker has been shut down.
    #[error("broker is shut down")]
    Closed,
    /// The configuration (URL, options) is invalid.
    #[error("invalid broker configuration: {0}")]
    Config(String),
    /// Any other failure reported by the backend.
    #[error("broker error: {source}")]
    Backend {
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        /// Whether retrying may succeed.
        transient: bool,
    },
}

impl BrokerError {
    /// True when the failure may pass (connection loss, timeout), so that a
    /// retry makes sense.
    pub fn is_transient(&self) -> bool {
        match self {
            BrokerError::Unavailable(_) => true,
            BrokerError::Backend { transient, .. } => *transient,
            BrokerError::Closed | BrokerError::Config(_) => false,
        }
    }
}

/// Where a broker hands the messages it receives. The hub implements it.
pub trait BusSink: Send + Sync + 'static {
    /// Called for each message received on a subscribed channel, in the
    /// order the server delivered them. Must not block.
    fn deliver(&self, channel: &Channel, payload: Bytes);

    /// Hands over a message whose history position came out of band (e.g.
    /// a JetStream sequence header) rather than in the envelope. Default:
    /// [`BusSink::deliver`], dropping the position.
    fn deliver_at(&self, channel: &Channel, payload: Bytes, position: crate::wire::Position) {
        let _ = position;
        self.deliver(channel, payload);
    }

    /// Called when the backend knows it dropped messages of `channel` (or of
    /// unknown channels, `None`), e.g. a slow-consumer notice from the
    /// server or client library. The hub sends the affected streams a gap
    /// event. Status outages need no call: the hub follows
    /// [`Broker::status`] itself.
    fn messages_lost(&self, channel: Option<&Channel>) {
        let _ = channel;
    }

    /// Called on every change of the broker's status, in order and never
    /// coalesced (a `watch` keeps only the latest value, so a quick Down/Up
    /// could go unseen there). The hub counts outages and sends gap events
    /// from here. Use [`report_status`] to keep the watch and this call in
    /// step.
    fn status_changed(&self, status: BrokerStatus);
}

/// Sets a broker's status to what `compute` returns and, if it changed,
/// tells `sink` within the same critical section, so the sink sees every
/// change in the order the watch took them. Backends call this for every
/// status change.
pub fn report_status(
    status: &watch::Sender<BrokerStatus>,
    sink: Option<&Arc<dyn BusSink>>,
    compute: impl FnOnce() -> BrokerStatus,
) {
    status.send_if_modified(|current| {
        let new = compute();
        if *current == new {
            return false;
        }
        *current = new;
        if let Some(sink) = sink {
            sink.status_changed(new);
        }
        true
    });
}

/// A message bus between hubs.
///
/// Object safe: the hub holds an `Arc<dyn Broker>`. A broker instance serves
/// exactly one hub, which calls [`Broker::start`] once before anything else.
///
/// # Contract
///
/// * Messages published to a channel reach every *other* broker instance
///   subscribed to it (delivery to the publisher itself is allowed; the hub
///   ignores its own echo).
/// * Messages from one publisher on one channel are delivered in order.
/// * [`Broker::subscribe`] records the interest even when the server is out
///   of reach (and then returns an error); the backend re-establishes every
///   recorded interest when it reconnects.
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Starts receiving: from now on, messages on subscribed channels go to
    /// `sink`.
    async fn start(&self, sink: Arc<dyn BusSink>) -> Result<(), BrokerError>;

    /// Publishes `payload` on `channel`.
    async fn publish(&self, channel: &Channel, payload: Bytes) -> Result<(), BrokerError>;

    /// Starts listening on `channel`. Idempotent.
    async fn subscribe(&self, channel: &Channel) -> Result<(), BrokerError>;

    /// Stops listening on `channel`. Idempotent.
    async fn unsubscribe(&self, channel: &Channel) -> Result<(), BrokerError>;

    /// The current status, and its changes.
    fn status(&self) -> watch::Receiver<BrokerStatus>;

    /// Flushes pending publishes and disconnects. The default does nothing.
    async fn shutdown(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}
