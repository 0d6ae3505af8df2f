//! Configuring and starting a hub.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::routing::Inbox;
use super::subscriptions::Subscriptions;
use super::{Hub, HubError, Inner};
use crate::broker::memory::MemoryBus;
use crate::broker::{Broker, BrokerStatus, Channel};
use crate::history::History;
use crate::limits::{valid_node_id, DEFAULT_MAX_EVENT_SIZE};
use crate::outbound::Outbound;
use crate::presence::{PresenceConfig, PresenceState};
use crate::registry::ConnectionRegistry;
use crate::resume::Resumer;
use crate::stream::StreamConfig;
use crate::telemetry::Counters;
use crate::wire::random_tag;

/// Configures and starts a [`Hub`].
#[must_use]
pub struct HubBuilder {
    pub(super) node_id: Option<String>,
    pub(super) broker: Option<Arc<dyn Broker>>,
    pub(super) stream: StreamConfig,
    pub(super) shutdown_retry: (Duration, Duration),
    pub(super) drain_timeout: Duration,
    pub(super) gap_events: bool,
    pub(super) limits: Limits,
    pub(super) authorizer: Option<Arc<dyn crate::auth::Authorizer>>,
    pub(super) cors: Option<crate::cors::Cors>,
    pub(super) presence: Option<PresenceConfig>,
    pub(super) history: Option<Arc<dyn History>>,
    pub(super) require_broker: Option<Duration>,
    pub(super) max_lifetime: Option<Lifetime>,
}

/// The longest a connection lives, and the share of it drawn at random.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lifetime {
    pub(super) max: Duration,
    pub(super) jitter: f64,
}

impl Lifetime {
    /// A lifetime drawn uniformly from `[max × (1 − jitter), max]`.
    pub(super) fn draw(&self) -> Duration {
        let shortest = self.max.mul_f64(1.0 - self.jitter);
        shortest + (self.max - shortest).mul_f64(fastrand::f64())
    }
}

/// Admission and size limits of a hub.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_connections: usize,
    pub(super) max_per_user: usize,
    pub(super) max_event_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 50_000,
            max_per_user: 64,
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
        }
    }
}

impl Default for HubBuilder {
    fn default() -> Self {
        Self {
            node_id: None,
            broker: None,
            stream: StreamConfig::default(),
            shutdown_retry: (Duration::from_secs(1), Duration::from_secs(5)),
            drain_timeout: Duration::from_secs(1),
            gap_events: true,
            limits: Limits::default(),
            authorizer: None,
            cors: None,
            presence: None,
            history: None,
            require_broker: None,
            max_lifetime: None,
        }
    }
}

impl fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubBuilder")
            .field("node_id", &self.node_id)
            .field("broker", &self.broker)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl HubBuilder {
    /// This node's id, unique in the cluster: 1 to 64 ASCII letters, digits,
    /// `-` or `_`. Default: `node-` and 8 random characters.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// The bus to the other nodes. Default: a private in-memory bus (a
    /// single-node hub).
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Settings of every connection's stream (keep-alive, queue bounds,
    /// overflow policy).
    pub fn stream_config(mut self, config: StreamConfig) -> Self {
        self.stream = config;
        self
    }

    /// On shutdown each client gets a `retry:` drawn uniformly from
    /// `min..=max`, so that reconnects spread out. Default: 1 s to 5 s.
    pub fn shutdown_retry(mut self, min: Duration, max: Duration) -> Self {
        self.shutdown_retry = (min.min(max), max.max(min));
        self
    }

    /// Whether streams get a [`GAP_EVENT`](crate::stream::GAP_EVENT) with
    /// `{"reason":"bus"}` when the broker comes back after an outage (events
    /// published elsewhere meanwhile did not reach this node) or reports
    /// that it dropped messages. Default: on.
    pub fn gap_events(mut self, on: bool) -> Self {
        self.gap_events = on;
        self
    }

    /// Most connections this node holds; further connects fail with
    /// [`ConnectError::NodeFull`](crate::ConnectError::NodeFull) (HTTP 503 with `Retry-After`). Default:
    /// 50 000.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limits.max_connections = max;
        self
    }

    /// Most connections of one user on this node; further connects fail with
    /// [`ConnectError::UserLimit`](crate::ConnectError::UserLimit) (HTTP 429). Concurrent connects of the
    /// same user may pass the check together, so the bound can be exceeded
    /// by the number of such races. Default: 64.
    pub fn max_connections_per_user(mut self, max: usize) -> Self {
        self.limits.max_per_user = max;
        self
    }

    /// Largest event data [`Hub::publish`] accepts, in bytes; larger events
    /// fail with [`PublishError::TooLarge`](crate::PublishError::TooLarge) (HTTP 413). Default: 1 MiB.
    pub fn max_event_size(mut self, max: usize) -> Self {
        self.limits.max_event_size = max;
        self
    }

    /// The hook [`Hub::connect_request`] asks before opening a connection.
    /// Default: none (every subscription is allowed).
    pub fn authorizer(mut self, authorizer: Arc<dyn crate::auth::Authorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// The CORS policy of [`Hub::respond`]: grants for allowed origins on
    /// every answer (streams and refusals) and the answer to a preflight;
    /// see [`cors`](crate::cors). Default: none (no grant, as before).
    ///
    /// ```no_run
    /// use sse_cluster::{cors::Cors, Hub};
    ///
    /// # async fn demo() -> Result<(), sse_cluster::HubError> {
    /// let hub = Hub::builder()
    ///     .cors(Cors::origins(["https://app.example"]).allow_credentials(true))
    ///     .build()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn cors(mut self, cors: crate::cors::Cors) -> Self {
        self.cors = Some(cors);
        self
    }

    /// Takes part in cluster-wide presence ([`Hub::presence`]): says
    /// `hello` on the bus every `config.heartbeat` and answers other nodes'
    /// queries. Enable it on every node. Default: off (no presence traffic;
    /// queries fail with `PresenceError::Disabled`).
    pub fn presence(mut self, config: PresenceConfig) -> Self {
        self.presence = Some(config);
        self
    }

    /// Keeps event history in `store`, so that clients reconnecting with
    /// `Last-Event-ID` to any node get what they missed (see
    /// [`resume`](crate::resume)). Every hub of the cluster must use the
    /// same store, over the same bus. Default: none (at-most-once delivery).
    pub fn history(mut self, store: Arc<dyn History>) -> Self {
        self.history = Some(store);
        self
    }

    /// How long [`Hub::shutdown`] waits for streams to finish. Default: 1 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Ends every connection after at most `max`, each after a lifetime
    /// drawn at random from `[max × (1 − jitter), max]` (`jitter` is
    /// clamped to 0..=1; 0.2 is a good start), with a short `retry:` and a
    /// final `sse-cluster.closed` event (`{"reason":"lifetime",
    /// "reconnect":true}`), so that the client reconnects through the
    /// balancer and, with a history store, resumes without a gap.
    ///
    /// Use it to rebalance: long-lived streams otherwise stay on the nodes
    /// they first reached, so nodes added by a scale-out get only new
    /// clients, for hours. A lifetime of a few minutes moves every client
    /// within that time at the price of one reconnect (and, with history,
    /// one store read) per client per lifetime; the jitter spreads those
    /// reconnects. Without a history store each reconnect may lose what
    /// was published while it was away. Default: none.
    pub fn max_lifetime(mut self, max: Duration, jitter: f64) -> Self {
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.max_lifetime = Some(Lifetime { max, jitter });
        self
    }

    /// Starts the hub: connects the broker and subscribes to the node and
    /// broadcast channels. Must run inside a Tokio runtime.
    /// Makes [`build`](Self::build) wait up to `timeout` for the broker to
    /// reach its server, and fail with [`HubError::BrokerUnreachable`] (the
    /// hub shut down again) if it does not.
    ///
    /// Without it a hub starts degraded when its server is unreachable:
    /// [`Hub::broker_status`] is [`BrokerStatus::Down`], connections are
    /// accepted, local publishes work and bus publishes fail with a
    /// transient error, and the broker keeps retrying in the background
    /// (what a node restarted during a broker outage needs). Use this
    /// where a server that cannot be reached at start-up is a mistake to
    /// report, such as a wrong URL:
    ///
    /// ```
    /// # async fn demo(broker: std::sync::Arc<dyn sse_cluster::Broker>) {
    /// use std::time::Duration;
    /// use sse_cluster::{Hub, HubError};
    ///
    /// match Hub::builder().broker(broker).require_broker(Duration::from_secs(5)).build().await {
    ///     Ok(hub) => { /* serve */ }
    ///     Err(HubError::BrokerUnreachable { waited, .. }) => eprintln!("no broker after {waited:?}"),
    ///     Err(other) => eprintln!("{other}"),
    /// }
    /// # }
    /// ```
    pub fn require_broker(mut self, timeout: Duration) -> Self {
        self.require_broker = Some(timeout);
        self
    }

    /// Starts the hub: the broker, its node and broadcast subscriptions,
    /// presence; see [`require_broker`](Self::require_broker) for a broker
    /// that cannot reach its server.
    pub async fn build(self) -> Result<Hub, HubError> {
        let node_id = match self.node_id {
            Some(id) => id,
            None => format!("node-{}", random_tag(8)),
        };
        if !valid_node_id(&node_id) {
            return Err(HubError::InvalidNodeId(node_id));
        }
        let broker = match self.broker {
            Some(b) => b,
            None => MemoryBus::new().broker(),
        };
        let instance: Arc<str> = format!("{node_id}.{}", random_tag(6)).into();
        let node_channel = Channel::Node(node_id.as_str().into());
        let echo_prefix = format!("{{\"v\":{},\"origin\":\"{instance}\"", crate::wire::VERSION);
        let node_id: Arc<str> = node_id.into();
        let counters = Arc::new(Counters::new(&node_id));
        let registry = Arc::new(ConnectionRegistry::default());
        let presence = PresenceState::new(
            self.presence,
            node_id.clone(),
            instance.clone(),
            broker.clone(),
            registry.clone(),
            counters.clone(),
        );
        let status = broker.status();
        let up = *status.borrow() == BrokerStatus::Up;
        counters.broker_up(up);
        let resumer = self.history.clone().map(|history| {
            Arc::new(Resumer::new(
                history,
                registry.clone(),
                counters.clone(),
                node_id.clone(),
            ))
        });
        let outbound = Outbound::new(
            broker.clone(),
            self.history,
            instance.clone(),
            self.limits.max_event_size,
        );
        let inner = Arc::new(Inner {
            echo_prefix: echo_prefix.into_bytes().into(),
            node_len: node_id.len(),
            node_id,
            instance,
            status,
            registry: registry.clone(),
            presence,
            counters,
            stream: self.stream,
            shutdown_retry: self.shutdown_retry,
            drain_timeout: self.drain_timeout,
            subscriptions: Subscriptions::start(broker.clone(), registry),
            next_conn: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            drained: Notify::new(),
            shutdown_done: watch::channel(false).0,
            bus_down: AtomicBool::new(!up),
            gap_events: self.gap_events,
            limits: self.limits,
            max_lifetime: self.max_lifetime,
            authorizer: self.authorizer,
            cors: self.cors,
            admitted: AtomicUsize::new(0),
            resumer,
            outbound,
        });
        broker
            .start(Arc::new(Inbox(Arc::downgrade(&inner))))
            .await?;
        inner
            .subscriptions
            .listen([node_channel, Channel::Broadcast])
            .await?;
        inner.presence.start();
        super::report_history_bytes(&inner);
        let hub = Hub { inner };
        if let Some(timeout) = self.require_broker {
            let mut status = hub.inner.status.clone();
            let up = tokio::time::timeout(timeout, status.wait_for(|s| *s == BrokerStatus::Up));
            if !matches!(up.await, Ok(Ok(_))) {
                let status = hub.broker_status();
                hub.shutdown().await;
                return Err(HubError::BrokerUnreachable {
                    waited: timeout,
                    status,
                });
            }
        }
        Ok(hub)
    }
}
