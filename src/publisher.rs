//! The publish-only tier: a [`Publisher`] sends events to any target in the
//! cluster from a process that holds no connections.
//!
//! An API process that only publishes needs no registry, no subscriptions
//! and no HTTP streams: it creates a `Publisher` from a broker and publishes
//! exactly as [`Hub::publish`](crate::Hub::publish) does (same envelope, same
//! channels, through the same outbound path), and the gateway nodes that
//! hold the connections deliver.
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
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::broker::{Broker, BrokerError, BrokerStatus, BusSink, Channel};
use crate::event::Event;
use crate::history::History;
use crate::limits::DEFAULT_MAX_EVENT_SIZE;
use crate::outbound::{Disconnect, Outbound, PublishError, PublishReceipt, Target};
use crate::resume::ResumeTokenError;
use crate::subscription::{resume_token, Subscription};
use crate::wire::random_tag;

/// Publishes to a cluster without holding connections. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    outbound: Arc<Outbound>,
    status: watch::Receiver<BrokerStatus>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("origin", self.outbound.origin())
            .field("broker", self.outbound.broker())
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
    pub async fn new(broker: Arc<dyn Broker>) -> Result<Self, BrokerError> {
        broker.start(Arc::new(Ignore)).await?;
        let origin = format!("publisher.{}", random_tag(6)).into();
        Ok(Self {
            status: broker.status(),
            outbound: Arc::new(Outbound::new(broker, None, origin, DEFAULT_MAX_EVENT_SIZE)),
        })
    }

    /// Appends events to `store` as it publishes them, like a hub with
    /// [`HubBuilder::history`](crate::HubBuilder::history): the gateways'
    /// clients can then resume them. Use the store the gateways use.
    pub fn with_history(self, store: Arc<dyn History>) -> Self {
        Self {
            outbound: Arc::new(self.outbound.with_history(store)),
            status: self.status,
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
        self.outbound.publish(&target, &event, None).await
    }

    /// Like [`Publisher::publish`], at most once per idempotency `key` and
    /// target within a window, exactly as
    /// [`Hub::publish_idempotent`](crate::Hub::publish_idempotent): once
    /// across nodes and publishers through a store that deduplicates (see
    /// [`Publisher::with_history`]), else once per publisher.
    pub async fn publish_idempotent(
        &self,
        target: Target,
        event: Event,
        key: &str,
    ) -> Result<PublishReceipt, PublishError> {
        self.outbound.publish(&target, &event, Some(key)).await
    }

    /// A resume token for `sub`'s channels as they stand now, exactly as
    /// [`Hub::resume_token`](crate::Hub::resume_token); needs
    /// [`Publisher::with_history`] (else [`ResumeTokenError::NoHistory`]).
    pub fn resume_token(
        &self,
        sub: &Subscription,
    ) -> impl std::future::Future<Output = Result<String, ResumeTokenError>> + Send + 'static {
        resume_token(self.outbound.history().cloned(), sub)
    }

    /// Whether the broker can reach its server now.
    pub fn broker_status(&self) -> BrokerStatus {
        *self.status.borrow()
    }

    /// Flushes and disconnects the broker.
    pub async fn shutdown(&self) {
        if let Err(err) = self.outbound.broker().shutdown().await {
            tracing::warn!(error = %err, "broker shutdown failed");
        }
    }

    /// Ends every stream `target` reaches, on every gateway node, each
    /// after a final `sse-cluster.closed` event: the command of
    /// [`Hub::disconnect`](crate::Hub::disconnect), sent from the
    /// publish-only tier (a login service revoking a user, say). The
    /// gateways count what they closed in `closed_by_command`.
    pub async fn disconnect(&self, target: Target, how: Disconnect) -> Result<(), PublishError> {
        let command = self.outbound.disconnect_command(&target, &how)?;
        self.outbound
            .send_command(&target.channel(), &command)
            .await
    }
}
