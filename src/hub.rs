//! The facade: node identity, routing, publish, connect and shutdown.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::broker::memory::MemoryBus;
use crate::broker::{Broker, BrokerError, BrokerStatus, BusSink, Channel};
use crate::event::{retry_frame, Event};
use crate::history::{
    channel_key, epoch_tag, is_resumable, parse_last_id, reset_body, Cursor, History, LastId,
    Position, Stamped,
};
use crate::presence::{Presence, PresenceConfig, PresenceState};
use crate::publisher::{check_event_size, message_id, random_tag};
use crate::registry::{resumable_channels, ConnectionId, ConnectionRegistry, FanOut};
use crate::stream::{self, FrameSender, SseStream, StreamConfig};
use crate::telemetry::HubMetrics;
use crate::wire::Envelope;

/// Longest accepted topic or user name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// Most topics one connection may follow (each one may be a bus
/// subscription on this node).
pub const MAX_TOPICS_PER_CONNECTION: usize = 256;

/// Who receives a published event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// One connection, wherever it is held.
    Connection(ConnectionId),
    /// Every connection of a user, on every node.
    User(String),
    /// Every connection following a topic, on every node.
    Topic(String),
    /// Every connection on every node.
    All,
}

impl Target {
    /// [`Target::User`].
    pub fn user(user: impl Into<String>) -> Self {
        Target::User(user.into())
    }

    /// [`Target::Topic`].
    pub fn topic(topic: impl Into<String>) -> Self {
        Target::Topic(topic.into())
    }
}

/// Why a hub could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// Node ids are 1 to 64 ASCII letters, digits, `-` or `_`.
    #[error("invalid node id {0:?}: use 1 to 64 ASCII letters, digits, '-' or '_'")]
    InvalidNodeId(String),
    /// The broker refused to start or to subscribe the node's own channels.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The hub is shutting down; the client should reconnect elsewhere.
    #[error("the hub is shutting down")]
    ShuttingDown,
    /// A topic or user name is empty or longer than [`MAX_NAME_LEN`], or
    /// there are more than [`MAX_TOPICS_PER_CONNECTION`] topics.
    #[error("invalid subscription: {0}")]
    InvalidSubscription(String),
    /// This node holds [`HubBuilder::max_connections`] already; the client
    /// should retry after `retry_after` (probably reaching another node).
    #[error("this node is full; retry in {retry_after:?}")]
    NodeFull {
        /// A suggested delay before retrying.
        retry_after: Duration,
    },
    /// The user holds [`HubBuilder::max_connections_per_user`] already on
    /// this node.
    #[error("too many connections for this user")]
    UserLimit,
    /// The [`Authorizer`](crate::auth::Authorizer) refused the subscription.
    #[error(transparent)]
    Denied(#[from] crate::auth::Denied),
    /// The history store could not be asked where the connection's channels
    /// stand; the client should retry (HTTP 503).
    #[error("history store unavailable: {0}")]
    HistoryUnavailable(BrokerError),
}

/// Why a publish did not fully go out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The hub has shut down; nothing was delivered.
    #[error("the hub is shut down")]
    ShutDown,
    /// A topic or user name is empty or longer than [`MAX_NAME_LEN`]; nothing was delivered.
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    /// The event data is larger than [`HubBuilder::max_event_size`]; nothing
    /// was delivered.
    #[error("event data of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The data size, in bytes.
        size: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// Local connections got the event, but the bus refused it, so other
    /// nodes did not. [`BrokerError::is_transient`] tells whether a retry may
    /// succeed.
    #[error("delivered locally, but the bus publish failed: {0}")]
    Broker(#[from] BrokerError),
}

impl PublishError {
    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, PublishError::Broker(e) if e.is_transient())
    }
}

/// What a successful publish returns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishReceipt {
    /// The message id (`{node}.{instance}.m{n}`), carried on the bus as `msg`.
    pub id: String,
    /// Connections on this node the event was queued for.
    pub delivered_locally: u64,
}

/// A snapshot of a hub's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HubStats {
    /// Connections held now.
    pub connections: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Successful calls to [`Hub::publish`].
    pub published: u64,
    /// Messages this hub published on the bus.
    pub bus_out: u64,
    /// Messages received from the bus, including echoes and malformed ones.
    pub bus_in: u64,
    /// Received messages that were this hub's own echo (already delivered locally).
    pub bus_echo: u64,
    /// Received messages refused as malformed or of an unknown version.
    pub bus_malformed: u64,
    /// Bus publishes that failed; the event reached no other node.
    pub bus_errors: u64,
    /// Frames queued to local connections.
    pub delivered: u64,
    /// Frames dropped by a full queue under `OverflowPolicy::DropEvents`.
    pub dropped: u64,
    /// Connections closed because their queue overflowed.
    pub overflow_closed: u64,
    /// Bus channels this hub listens to now.
    pub subscriptions: u64,
    /// Times the broker went down.
    pub bus_outages: u64,
    /// Gap events sent to streams after the broker came back.
    pub gap_events: u64,
    /// Replays run (a reconnect with `Last-Event-ID`, or a bus outage ending
    /// with history on).
    pub replays: u64,
    /// Events sent by replays.
    pub replayed: u64,
    /// Reset events sent (see [`RESET_EVENT`](crate::history::RESET_EVENT)).
    pub resets: u64,
}

#[derive(Default)]
struct Counters {
    connections_total: AtomicU64,
    published: AtomicU64,
    bus_out: AtomicU64,
    bus_in: AtomicU64,
    bus_echo: AtomicU64,
    bus_malformed: AtomicU64,
    bus_errors: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    overflow_closed: AtomicU64,
    bus_outages: AtomicU64,
    gap_events: AtomicU64,
    /// The same events, for the `metrics` recorder (see `telemetry`).
    metrics: Arc<HubMetrics>,
    replays: AtomicU64,
    replayed: AtomicU64,
    resets: AtomicU64,
}

impl Counters {
    fn record(&self, out: FanOut) {
        self.metrics.fan_out(out);
        if out.delivered > 0 {
            self.delivered.fetch_add(out.delivered, Ordering::Relaxed);
        }
        if out.dropped > 0 {
            self.dropped.fetch_add(out.dropped, Ordering::Relaxed);
        }
        if out.overflow_closed > 0 {
            self.overflow_closed
                .fetch_add(out.overflow_closed, Ordering::Relaxed);
        }
    }
}

/// Builds a connection's first event from its id.
type Greeting = Box<dyn FnOnce(&ConnectionId) -> Event + Send>;

/// What a connection follows.
///
/// ```
/// use sse_cluster::Subscription;
///
/// let sub = Subscription::new().user("42").topic("prices").topic("news");
/// ```
#[must_use]
#[derive(Default)]
pub struct Subscription {
    user: Option<String>,
    topics: Vec<String>,
    greeting: Option<Greeting>,
    last_event_id: Option<String>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("user", &self.user)
            .field("topics", &self.topics)
            .field("greeting", &self.greeting.is_some())
            .field("last_event_id", &self.last_event_id)
            .finish()
    }
}

impl Subscription {
    /// Follows nothing yet (only broadcasts and events sent to the connection itself).
    pub fn new() -> Self {
        Self::default()
    }

    /// The user this connection belongs to: it receives [`Target::User`] events.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Adds a topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Adds topics.
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }

    /// An event sent first on the stream (after the initial `retry:`), built
    /// from the new connection's id; e.g. to tell the client its id.
    pub fn greeting(mut self, make: impl FnOnce(&ConnectionId) -> Event + Send + 'static) -> Self {
        self.greeting = Some(Box::new(make));
        self
    }

    /// The `Last-Event-ID` the client sent when reconnecting (see
    /// [`adapters::last_event_id`](crate::adapters::last_event_id)). With a
    /// history configured, the connection resumes after it; see
    /// [`history`](crate::history). Without one it is ignored.
    pub fn last_event_id(mut self, id: impl Into<String>) -> Self {
        self.last_event_id = Some(id.into());
        self
    }

    /// Like [`Subscription::last_event_id`], for an optional id.
    pub fn resume_from(mut self, id: Option<String>) -> Self {
        self.last_event_id = id;
        self
    }

    /// The user, if set.
    pub fn user_id(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The topics, as given.
    pub fn topic_names(&self) -> &[String] {
        &self.topics
    }

    /// Keeps only the topics for which `keep` returns true.
    pub fn retain_topics(mut self, mut keep: impl FnMut(&str) -> bool) -> Self {
        self.topics.retain(|t| keep(t));
        self
    }
}

/// A new connection: its id and its SSE body.
#[derive(Debug)]
pub struct Connection {
    id: ConnectionId,
    stream: SseStream,
}

impl Connection {
    /// The connection id, usable in [`Target::Connection`] from any node.
    pub fn id(&self) -> &ConnectionId {
        &self.id
    }

    /// The SSE body.
    pub fn into_stream(self) -> SseStream {
        self.stream
    }

    /// The SSE body in an `http::Response` with the SSE headers.
    pub fn into_http_response(self) -> http::Response<SseStream> {
        self.stream.into_http_response()
    }
}

/// Configures and starts a [`Hub`].
#[must_use]
pub struct HubBuilder {
    node_id: Option<String>,
    broker: Option<Arc<dyn Broker>>,
    stream: StreamConfig,
    shutdown_retry: (Duration, Duration),
    drain_timeout: Duration,
    gap_events: bool,
    limits: Limits,
    authorizer: Option<Arc<dyn crate::auth::Authorizer>>,
    presence: Option<PresenceConfig>,
    history: Option<Arc<dyn History>>,
}

/// Admission and size limits of a hub.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    max_per_user: usize,
    max_event_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 50_000,
            max_per_user: 64,
            max_event_size: crate::publisher::DEFAULT_MAX_EVENT_SIZE,
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
    /// [`ConnectError::NodeFull`] (HTTP 503 with `Retry-After`). Default:
    /// 50 000.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limits.max_connections = max;
        self
    }

    /// Most connections of one user on this node; further connects fail with
    /// [`ConnectError::UserLimit`] (HTTP 429). Concurrent connects of the
    /// same user may pass the check together, so the bound can be exceeded
    /// by the number of such races. Default: 64.
    pub fn max_connections_per_user(mut self, max: usize) -> Self {
        self.limits.max_per_user = max;
        self
    }

    /// Largest event data [`Hub::publish`] accepts, in bytes; larger events
    /// fail with [`PublishError::TooLarge`] (HTTP 413). Default: 1 MiB.
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
    /// [`history`](crate::history)). Every hub of the cluster must use the
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

    /// Starts the hub: connects the broker and subscribes to the node and
    /// broadcast channels. Must run inside a Tokio runtime.
    pub async fn build(self) -> Result<Hub, HubError> {
        let node_id = match self.node_id {
            Some(id) => id,
            None => format!("node-{}", random_tag(8)),
        };
        if node_id.is_empty()
            || node_id.len() > 64
            || !node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(HubError::InvalidNodeId(node_id));
        }
        let broker = match self.broker {
            Some(b) => b,
            None => MemoryBus::new().broker(),
        };
        let instance: Arc<str> = format!("{node_id}.{}", random_tag(6)).into();
        let node_channel = Channel::Node(node_id.as_str().into());
        let (subs_tx, subs_rx) = mpsc::unbounded_channel();
        let echo_prefix = format!("{{\"v\":{},\"origin\":\"{instance}\"", crate::wire::VERSION);
        let metrics = Arc::new(HubMetrics::new(&node_id));
        let registry = Arc::new(ConnectionRegistry::default());
        let presence = PresenceState::new(
            self.presence,
            node_id.as_str().into(),
            instance.clone(),
            broker.clone(),
            registry.clone(),
            metrics.clone(),
        );
        metrics.broker_status(*broker.status().borrow());
        let inner = Arc::new(Inner {
            echo_prefix: echo_prefix.into_bytes().into(),
            node_len: node_id.len(),
            node_id: node_id.into(),
            instance,
            status: broker.status(),
            broker: broker.clone(),
            registry,
            presence,
            active: Arc::new(DashMap::new()),
            counters: Counters {
                metrics,
                ..Counters::default()
            },
            stream: self.stream,
            shutdown_retry: self.shutdown_retry,
            drain_timeout: self.drain_timeout,
            subs_tx,
            next_conn: AtomicU64::new(1),
            next_msg: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            drained: Notify::new(),
            shutdown_done: watch::channel(false).0,
            bus_down: AtomicBool::new(*broker.status().borrow() != BrokerStatus::Up),
            gap_events: self.gap_events,
            limits: self.limits,
            authorizer: self.authorizer,
            admitted: AtomicUsize::new(0),
            history: self.history,
            resyncs: Arc::new(tokio::sync::Semaphore::new(RESYNC_CONCURRENCY)),
        });
        broker
            .start(Arc::new(Inbox(Arc::downgrade(&inner))))
            .await?;
        for channel in [node_channel, Channel::Broadcast] {
            match broker.subscribe(&channel).await {
                Ok(()) => {}
                // The broker keeps the interest and subscribes once it can
                // reach its server: the node starts, degraded, meanwhile.
                Err(err) if err.is_transient() => {
                    tracing::warn!(%channel, error = %err, "broker unreachable at start; will subscribe on reconnect");
                }
                Err(err) => return Err(err.into()),
            }
            inner.active.insert(channel, true);
        }
        tokio::spawn(
            SubscriptionManager {
                broker,
                registry: inner.registry.clone(),
                active: inner.active.clone(),
            }
            .run(subs_rx),
        );
        inner.presence.start();
        Ok(Hub { inner })
    }
}

/// One node of the cluster: holds this node's connections and routes events
/// to them from any node.
///
/// Cheap to clone; clones are the same hub.
///
/// ```no_run
/// use sse_cluster::{Event, Hub, Subscription, Target};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = Hub::builder().node_id("a").build().await?;
/// let conn = hub.connect(Subscription::new().topic("news")).await?;
/// // hand `conn.into_http_response()` to hyper, or `conn` itself to axum...
/// hub.publish(Target::topic("news"), Event::new().data("hello")).await?;
/// hub.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("node_id", &self.inner.node_id)
            .field("instance", &self.inner.instance)
            .field("connections", &self.inner.registry.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    node_id: Arc<str>,
    node_len: usize,
    /// `{node}.{random}`: tells this run of the node from an earlier one.
    instance: Arc<str>,
    /// How this hub's own envelopes start (see `wire`): its echo is
    /// recognised without parsing.
    echo_prefix: Box<[u8]>,
    broker: Arc<dyn Broker>,
    status: watch::Receiver<BrokerStatus>,
    registry: Arc<ConnectionRegistry>,
    /// Channels the broker is subscribed to; `false` while an unsubscribe
    /// is in flight.
    active: Arc<DashMap<Channel, bool>>,
    counters: Counters,
    stream: StreamConfig,
    shutdown_retry: (Duration, Duration),
    drain_timeout: Duration,
    subs_tx: mpsc::UnboundedSender<SubCommand>,
    next_conn: AtomicU64,
    next_msg: AtomicU64,
    shutting_down: AtomicBool,
    closed: AtomicBool,
    drained: Notify,
    shutdown_done: watch::Sender<bool>,
    /// The broker is (or started) down: its next Up ends an outage.
    bus_down: AtomicBool,
    gap_events: bool,
    limits: Limits,
    authorizer: Option<Arc<dyn crate::auth::Authorizer>>,
    /// This hub's side of the presence protocol.
    presence: Arc<PresenceState>,
    /// Connections admitted and not yet unregistered (the node limit is
    /// checked against this, not the registry, so concurrent connects
    /// cannot overshoot it).
    admitted: AtomicUsize,
    history: Option<Arc<dyn History>>,
    /// Bounds the replays run at once after a bus outage.
    resyncs: Arc<tokio::sync::Semaphore>,
}

impl Hub {
    /// Starts configuring a hub.
    pub fn builder() -> HubBuilder {
        HubBuilder {
            node_id: None,
            broker: None,
            stream: StreamConfig::default(),
            shutdown_retry: (Duration::from_secs(1), Duration::from_secs(5)),
            drain_timeout: Duration::from_secs(1),
            gap_events: true,
            limits: Limits::default(),
            authorizer: None,
            presence: None,
            history: None,
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The connections held on this node.
    pub fn registry(&self) -> &ConnectionRegistry {
        &self.inner.registry
    }

    /// Whether the broker can reach its server now.
    pub fn broker_status(&self) -> BrokerStatus {
        *self.inner.status.borrow()
    }

    /// Cluster-wide presence: connections and users of a topic, and whether
    /// a user is connected anywhere (see [`presence`](crate::presence)).
    /// Needs [`HubBuilder::presence`] on every node.
    ///
    /// ```no_run
    /// # async fn demo(hub: sse_cluster::Hub) -> Result<(), sse_cluster::presence::PresenceError> {
    /// let news = hub.presence().topic("news").await?;
    /// let online = hub.presence().user_online("42").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn presence(&self) -> Presence {
        Presence::new(self.inner.presence.clone())
    }

    /// True once [`Hub::shutdown`] has been called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> HubStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HubStats {
            connections: self.inner.registry.len() as u64,
            connections_total: get(&c.connections_total),
            published: get(&c.published),
            bus_out: get(&c.bus_out),
            bus_in: get(&c.bus_in),
            bus_echo: get(&c.bus_echo),
            bus_malformed: get(&c.bus_malformed),
            bus_errors: get(&c.bus_errors),
            delivered: get(&c.delivered),
            dropped: get(&c.dropped),
            overflow_closed: get(&c.overflow_closed),
            subscriptions: self.inner.active.len() as u64,
            bus_outages: get(&c.bus_outages),
            gap_events: get(&c.gap_events),
            replays: get(&c.replays),
            replayed: get(&c.replayed),
            resets: get(&c.resets),
        }
    }

    /// Like [`Hub::connect`], after asking the configured
    /// [`Authorizer`](crate::auth::Authorizer) (if any) about `request`; it
    /// may refuse ([`ConnectError::Denied`]) or rewrite the subscription.
    /// The request's `Last-Event-ID` (header or `last_event_id` query
    /// parameter) is used unless the subscription already has one.
    pub async fn connect_request(
        &self,
        request: &http::request::Parts,
        sub: Subscription,
    ) -> Result<Connection, ConnectError> {
        let mut sub = match &self.inner.authorizer {
            Some(authorizer) => authorizer.authorize(request, sub).await?,
            None => sub,
        };
        if sub.last_event_id.is_none() {
            sub.last_event_id =
                crate::adapters::last_event_id(&request.headers, request.uri.query());
        }
        self.connect(sub).await
    }

    /// Opens a connection: registers it, makes sure the bus delivers its
    /// user's and topics' events to this node, and returns its SSE body.
    ///
    /// When this returns, every event published afterwards on any node for
    /// this connection's targets reaches it. Dropping the body (the client
    /// went away) unregisters the connection at once.
    #[tracing::instrument(name = "sse.connect", skip_all, fields(node = %self.inner.node_id, user = ?sub.user, topics = sub.topics.len(), conn))]
    pub async fn connect(&self, sub: Subscription) -> Result<Connection, ConnectError> {
        let inner = &self.inner;
        if self.is_shutting_down() {
            return Err(ConnectError::ShuttingDown);
        }
        let user: Option<Arc<str>> = match sub.user {
            Some(u) => Some(check_name("user", u)?.into()),
            None => None,
        };
        let mut topics = sub
            .topics
            .into_iter()
            .map(|t| check_name("topic", t).map(Arc::<str>::from))
            .collect::<Result<Vec<_>, _>>()?;
        topics.sort_unstable();
        topics.dedup();
        if topics.len() > MAX_TOPICS_PER_CONNECTION {
            return Err(ConnectError::InvalidSubscription(format!(
                "at most {MAX_TOPICS_PER_CONNECTION} topics per connection"
            )));
        }

        if let Some(user) = &user {
            if inner.registry.user_connections(user) >= inner.limits.max_per_user {
                return Err(ConnectError::UserLimit);
            }
        }
        if inner.admitted.fetch_add(1, Ordering::AcqRel) >= inner.limits.max_connections {
            inner.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(ConnectError::NodeFull {
                retry_after: Duration::from_secs(fastrand::u64(1..=5)),
            });
        }
        // From here every path ends in `Registration`, whose drop gives the
        // admission back.
        let seq = inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let id = ConnectionId::new(&inner.instance, inner.node_len, seq);
        tracing::Span::current().record("conn", id.as_str());
        let (sender, mut stream) = stream::channel(&inner.stream);
        if let Some(greeting) = sub.greeting {
            stream = stream.prepend(&greeting(&id));
        }
        let mut channels: Vec<Channel> = topics.iter().cloned().map(Channel::Topic).collect();
        channels.extend(user.clone().map(Channel::User));
        let resumable = inner.history.as_ref().map(|_| {
            let resumable = resumable_channels(user.as_ref(), &topics);
            let keys: Vec<u32> = resumable.iter().map(channel_key).collect();
            // Holds live events back until the resume below decides.
            sender.install_cursor(Cursor::new(&keys));
            (resumable, sender.clone())
        });
        let fresh = inner
            .registry
            .register(id.clone(), user, topics.into(), sender);
        let stream = stream.with_drop_guard(Registration {
            inner: inner.clone(),
            id: id.clone(),
        });
        inner
            .counters
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        inner.counters.metrics.connected();

        // Wait until the bus delivers every channel of this connection here.
        let mut pending = Vec::new();
        for channel in channels {
            let settled = inner
                .active
                .get(&channel)
                .is_some_and(|subscribed| *subscribed);
            if fresh.contains(&channel) || !settled {
                let (done, wait) = oneshot::channel();
                let cmd = SubCommand::Sync {
                    channel,
                    done: Some(done),
                };
                if inner.subs_tx.send(cmd).is_err() {
                    return Err(ConnectError::ShuttingDown);
                }
                pending.push(wait);
            }
        }
        for wait in pending {
            if wait.await.is_err() {
                return Err(ConnectError::ShuttingDown);
            }
        }
        // A shutdown that began meanwhile may have missed this connection.
        if self.is_shutting_down() {
            return Err(ConnectError::ShuttingDown);
        }
        if let (Some(history), Some((channels, sender))) = (&inner.history, resumable) {
            let from = sub.last_event_id.as_deref().map(parse_last_id);
            resume(inner, history, sender, channels, from, id.as_str())
                .await
                .map_err(ConnectError::HistoryUnavailable)?;
        }
        Ok(Connection { id, stream })
    }

    /// Publishes `event` to `target` on every node.
    ///
    /// The event is encoded once. Local receivers get it directly (this
    /// node's echo from the bus is ignored); other nodes get it through the
    /// bus, only those with interest in the target. An event for a connection
    /// held here never touches the bus.
    #[tracing::instrument(name = "sse.publish", level = "debug", skip_all, fields(node = %self.inner.node_id, target = ?target, msg))]
    pub async fn publish(
        &self,
        target: Target,
        event: Event,
    ) -> Result<PublishReceipt, PublishError> {
        let started = std::time::Instant::now();
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::ShutDown);
        }
        check_event_size(&event, inner.limits.max_event_size)?;
        let registry = &inner.registry;
        let msg = message_id(&inner.instance, &inner.next_msg);
        tracing::Span::current().record("msg", msg.as_str());
        // With history, events to a topic, a user or everyone are stored and
        // published in one step, and local connections get them from the bus
        // like every node, so each channel reaches them in position order.
        let via_history = inner.history.is_some() && !matches!(target, Target::Connection(_));
        let local = match &target {
            _ if via_history => FanOut::default(),
            Target::Topic(t) if registry.topic_connections(t) > 0 => {
                registry.send_to_topic(t, &event.encode())
            }
            Target::User(u) if registry.user_connections(u) > 0 => {
                registry.send_to_user(u, &event.encode())
            }
            Target::All if !registry.is_empty() => registry.send_to_all(&event.encode()),
            Target::Connection(id) if id.node() == &*inner.node_id => {
                // Held here: delivered directly, the bus is not involved.
                let local = registry.send_to_connection(id, &event.encode());
                inner.counters.record(local);
                inner.counters.metrics.frame_from_local(started, local);
                inner.counters.published.fetch_add(1, Ordering::Relaxed);
                inner.counters.metrics.published();
                return Ok(PublishReceipt {
                    id: msg,
                    delivered_locally: local.delivered,
                });
            }
            _ => FanOut::default(),
        };
        inner.counters.record(local);
        inner.counters.metrics.frame_from_local(started, local);
        let (channel, payload) =
            crate::publisher::bus_message(&target, &event, &inner.instance, &msg)?;
        let history = inner.history.as_deref();
        let sent = crate::publisher::send_to_bus(&*inner.broker, history, &channel, payload).await;
        if let Err(err) = sent {
            inner.counters.bus_errors.fetch_add(1, Ordering::Relaxed);
            inner.counters.metrics.bus_error();
            tracing::warn!(%channel, error = %err, "bus publish failed");
            return Err(err.into());
        }
        inner.counters.bus_out.fetch_add(1, Ordering::Relaxed);
        inner.counters.published.fetch_add(1, Ordering::Relaxed);
        inner.counters.metrics.bus_out();
        inner.counters.metrics.published();
        Ok(PublishReceipt {
            id: msg,
            delivered_locally: local.delivered,
        })
    }

    /// Drains the node: refuses new connections, sends every client a
    /// randomized `retry:` and ends its stream (so that HTTP graceful shutdown
    /// can finish and clients reconnect elsewhere, spread out), waits for the
    /// streams to finish (at most the drain timeout), then unsubscribes and
    /// shuts the broker down. Idempotent; concurrent calls all wait for the
    /// same drain.
    #[tracing::instrument(name = "sse.shutdown", skip_all, fields(node = %self.inner.node_id))]
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if inner.shutting_down.swap(true, Ordering::AcqRel) {
            let mut done = inner.shutdown_done.subscribe();
            let _ = done.wait_for(|d| *d).await;
            return;
        }
        let (min, max) = inner.shutdown_retry;
        let (min, max) = (min.as_millis() as u64, max.as_millis() as u64);
        inner
            .registry
            .close_all(|| Some(retry_frame(Duration::from_millis(fastrand::u64(min..=max)))));

        let deadline = tokio::time::Instant::now() + inner.drain_timeout;
        loop {
            let drained = inner.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if inner.registry.is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                // Clients too slow to read what was queued: end them now so
                // the HTTP server's graceful shutdown is not held up.
                tracing::warn!(
                    remaining = inner.registry.len(),
                    "drain timeout: ending the streams still being written"
                );
                inner.registry.abort_all();
                break;
            }
        }

        inner.presence.leave().await;
        let (done, wait) = oneshot::channel();
        if inner.subs_tx.send(SubCommand::Stop(done)).is_ok() {
            // A broker that cannot answer (server down) must not hold the
            // shutdown hostage.
            let _ = tokio::time::timeout(BROKER_CALL_LIMIT, wait).await;
        }
        inner.closed.store(true, Ordering::Release);
        if let Err(err) = inner.broker.shutdown().await {
            tracing::warn!(error = %err, "broker shutdown failed");
        }
        inner.shutdown_done.send_replace(true);
    }
}

fn check_name(kind: &str, name: String) -> Result<String, ConnectError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ConnectError::InvalidSubscription(format!(
            "{kind} name must be 1 to {MAX_NAME_LEN} bytes"
        )));
    }
    Ok(name)
}

pub(crate) fn check_target_name(name: &str) -> Result<(), PublishError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(PublishError::InvalidTarget(format!(
            "topic and user names must be 1 to {MAX_NAME_LEN} bytes"
        )));
    }
    Ok(())
}

impl Inner {
    fn on_bus_message(&self, channel: &Channel, payload: &[u8], position: Option<Position>) {
        if crate::presence::is_control(payload) {
            return self.presence.on_control(channel, payload);
        }
        let c = &self.counters;
        c.bus_in.fetch_add(1, Ordering::Relaxed);
        c.metrics.bus_in();
        // With history, this hub's own events reach its connections through
        // the bus (in position order), so the echo is not skipped.
        let history = self.history.as_ref().filter(|_| is_resumable(channel));
        if history.is_none() && payload.starts_with(&self.echo_prefix) {
            c.bus_echo.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut envelope = match Envelope::decode(payload) {
            Ok(env) => env,
            Err(err) => return self.malformed(channel, &err),
        };
        if let Some(history) = history {
            // The hub owns event ids on resumable channels.
            envelope.id = None;
            let position = position.or_else(|| envelope.pos.as_deref().and_then(Position::parse));
            let epoch = match &envelope.epoch {
                Some(e) => Some(epoch_tag(e)),
                None => history.live_epoch(channel).map(|e| epoch_tag(&e)),
            };
            if let (Some(position), Some(epoch)) = (position, epoch) {
                let body = match envelope.encode_frame() {
                    Ok(frame) => frame,
                    Err(err) => return self.malformed(channel, &err),
                };
                let event = Stamped {
                    key: channel_key(channel),
                    epoch,
                    position,
                    body,
                };
                let out = self.registry.send_stamped(channel, &event);
                c.record(out);
                c.metrics.frame_from_bus(envelope.ts_us, out);
                return;
            }
        }
        if envelope.origin.as_deref() == Some(&*self.instance) {
            c.bus_echo.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let frame = match envelope.encode_frame() {
            Ok(frame) => frame,
            Err(err) => return self.malformed(channel, &err),
        };
        let out = match channel {
            Channel::Topic(t) => self.registry.send_to_topic(t, &frame),
            Channel::User(u) => self.registry.send_to_user(u, &frame),
            Channel::Broadcast => self.registry.send_to_all(&frame),
            Channel::Node(_) => match envelope.conn.as_deref().and_then(ConnectionId::parse) {
                Some(id) => self.registry.send_to_connection(&id, &frame),
                None => {
                    let err = "node-channel message without a valid \"conn\"";
                    return self.malformed(channel, &err);
                }
            },
        };
        c.record(out);
        c.metrics.frame_from_bus(envelope.ts_us, out);
    }

    /// Tells the streams of `channel` (all streams for `None`, a node or the
    /// broadcast channel) that they may have missed events.
    fn signal_gap(&self, channel: Option<&Channel>) {
        let frame = Bytes::from_static(crate::stream::GAP_BUS_FRAME);
        let out = match channel {
            Some(Channel::Topic(t)) => self.registry.send_to_topic(t, &frame),
            Some(Channel::User(u)) => self.registry.send_to_user(u, &frame),
            _ => self.registry.send_to_all(&frame),
        };
        self.counters
            .gap_events
            .fetch_add(out.delivered, Ordering::Relaxed);
        self.counters.metrics.gap_events(out.delivered);
        self.counters.record(out);
    }

    fn malformed(&self, channel: &Channel, err: &dyn fmt::Display) {
        let n = self.counters.bus_malformed.fetch_add(1, Ordering::Relaxed) + 1;
        self.counters.metrics.bus_malformed();
        // Log the 1st, 2nd, 4th, 8th... so a flood cannot flood the logs.
        if n.is_power_of_two() {
            tracing::warn!(%channel, error = %err, refused_so_far = n, "refused a bus message");
        } else {
            tracing::debug!(%channel, error = %err, "refused a bus message");
        }
    }
}

/// The hub's end of the broker: received messages go to the registry.
struct Inbox(Weak<Inner>);

impl BusSink for Inbox {
    fn deliver(&self, channel: &Channel, payload: Bytes) {
        if let Some(inner) = self.0.upgrade() {
            inner.on_bus_message(channel, &payload, None);
        }
    }

    fn deliver_at(&self, channel: &Channel, payload: Bytes, position: Position) {
        if let Some(inner) = self.0.upgrade() {
            inner.on_bus_message(channel, &payload, Some(position));
        }
    }

    fn status_changed(&self, status: BrokerStatus) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        inner.counters.metrics.broker_status(status);
        match status {
            BrokerStatus::Up => {
                if inner.bus_down.swap(false, Ordering::AcqRel) {
                    tracing::info!("broker is back");
                    if inner.history.is_some() {
                        resync(&inner, None);
                    } else if inner.gap_events {
                        inner.signal_gap(None);
                    }
                }
            }
            _ => {
                if !inner.bus_down.swap(true, Ordering::AcqRel) {
                    inner.counters.bus_outages.fetch_add(1, Ordering::Relaxed);
                    inner.counters.metrics.bus_outage();
                    tracing::warn!(
                        "broker is down: events published on other nodes are not received"
                    );
                }
            }
        }
    }

    fn messages_lost(&self, channel: Option<&Channel>) {
        if let Some(inner) = self.0.upgrade() {
            tracing::warn!(channel = ?channel, "the broker dropped messages");
            if inner.history.is_some() {
                resync(&inner, channel);
            } else if inner.gap_events {
                inner.signal_gap(channel);
            }
        }
    }
}

/// Unregisters its connection when the stream ends or is dropped.
struct Registration {
    inner: Arc<Inner>,
    id: ConnectionId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let inner = &self.inner;
        for channel in inner.registry.unregister(&self.id) {
            let _ = inner.subs_tx.send(SubCommand::Sync {
                channel,
                done: None,
            });
        }
        inner.admitted.fetch_sub(1, Ordering::AcqRel);
        inner.counters.metrics.disconnected();
        if inner.registry.is_empty() && inner.shutting_down.load(Ordering::Acquire) {
            inner.drained.notify_waiters();
        }
    }
}

/// Longest a broker subscribe or unsubscribe may hold up the subscription
/// manager (and so every connect waiting behind it).
const BROKER_CALL_LIMIT: Duration = Duration::from_secs(5);

enum SubCommand {
    /// Make the broker's subscription to `channel` match the registry's
    /// interest in it; then signal `done`.
    Sync {
        channel: Channel,
        done: Option<oneshot::Sender<()>>,
    },
    /// Unsubscribe everything and stop.
    Stop(oneshot::Sender<()>),
}

/// Applies interest changes to the broker one at a time, in order, so that a
/// subscribe and an unsubscribe of the same channel can never overtake each
/// other. Each change re-reads the registry, so the broker converges on the
/// registry's current interest whatever the order of connects and
/// disconnects.
struct SubscriptionManager {
    broker: Arc<dyn Broker>,
    registry: Arc<ConnectionRegistry>,
    active: Arc<DashMap<Channel, bool>>,
}

impl SubscriptionManager {
    async fn run(self, mut commands: mpsc::UnboundedReceiver<SubCommand>) {
        while let Some(cmd) = commands.recv().await {
            match cmd {
                SubCommand::Sync { channel, done } => {
                    self.sync(channel).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
                SubCommand::Stop(done) => {
                    let channels: Vec<Channel> =
                        self.active.iter().map(|e| e.key().clone()).collect();
                    for channel in channels {
                        if let Err(err) = self.broker.unsubscribe(&channel).await {
                            tracing::debug!(%channel, error = %err, "unsubscribe at shutdown failed");
                        }
                        self.active.remove(&channel);
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    async fn sync(&self, channel: Channel) {
        let active = self.active.contains_key(&channel);
        if active {
            // Mark it unsettled *before* reading the interest: a connect that
            // registers meanwhile then waits for this change instead of
            // trusting a subscription that may be about to go.
            self.active.insert(channel.clone(), false);
        }
        let wanted = self.registry.has_interest(&channel);
        if wanted && active {
            self.active.insert(channel, true);
        } else if wanted {
            // Marked active even on error: the broker keeps the interest and
            // restores it when it reconnects (see the `Broker` contract).
            match tokio::time::timeout(BROKER_CALL_LIMIT, self.broker.subscribe(&channel)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(%channel, error = %err, "subscribe failed; the broker will retry")
                }
                Err(_) => {
                    tracing::warn!(%channel, "subscribe is taking long; the broker will retry")
                }
            }
            self.active.insert(channel, true);
        } else if active {
            match tokio::time::timeout(BROKER_CALL_LIMIT, self.broker.unsubscribe(&channel)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(%channel, error = %err, "unsubscribe failed"),
                Err(_) => tracing::warn!(%channel, "unsubscribe timed out"),
            }
            self.active.remove(&channel);
        }
    }
}

/// Most replays run at once after a bus outage.
const RESYNC_CONCURRENCY: usize = 32;

/// Events read from the history per request during a replay.
const REPLAY_BATCH: usize = 256;

/// Read-and-release rounds a replay tries before giving up on catching up
/// with live traffic (the stream is then closed; the client resumes again).
const REPLAY_PASSES: usize = 8;

/// Places a connection's cursor and starts its replay: `from` is what the
/// client's `Last-Event-ID` said (`None`: a new client, nothing to replay).
/// Returns once the positions are known; the replay runs on its own task.
async fn resume(
    inner: &Arc<Inner>,
    history: &Arc<dyn History>,
    sender: FrameSender,
    channels: Vec<Channel>,
    from: Option<LastId>,
    conn: &str,
) -> Result<(), BrokerError> {
    let span = crate::telemetry::replay_span(&inner.node_id, conn, channels.len());
    let keys: Vec<u32> = channels.iter().map(channel_key).collect();
    let marks: Vec<Option<crate::history::Mark>> = match &from {
        Some(LastId::Marks(marks)) => keys
            .iter()
            .map(|k| marks.iter().find(|m| m.key == *k).copied())
            .collect(),
        _ => vec![None; keys.len()],
    };
    let asks: Vec<(Channel, Option<Position>)> = channels
        .iter()
        .zip(&marks)
        .map(|(c, m)| (c.clone(), m.map(|m| m.position)))
        .collect();
    let heads = history.heads(&asks).await?;
    let mut reset = match &from {
        None | Some(LastId::Marks(_)) => None,
        Some(LastId::Invalid) => Some("invalid-id"),
        Some(LastId::NotResumable) => Some("not-resumable"),
    };
    for (mark, head) in marks.iter().zip(&heads) {
        if let (Some(mark), None) = (mark, reset) {
            if mark.epoch != epoch_tag(&head.epoch) {
                reset = Some("epoch");
            } else if !head.retained || mark.position > head.last {
                reset = Some("expired");
            }
        }
    }
    let mut plan = Vec::with_capacity(channels.len());
    sender.with_cursor(|cursor| {
        for (((channel, key), mark), head) in channels.into_iter().zip(keys).zip(marks).zip(heads) {
            let epoch = epoch_tag(&head.epoch);
            match mark {
                Some(mark) if reset.is_none() => cursor.set(key, mark.epoch, mark.position),
                _ => cursor.set(key, epoch, head.last),
            }
            plan.push((channel, key, epoch));
        }
    });
    let counters = &inner.counters;
    if let Some(reason) = reset {
        counters.resets.fetch_add(1, Ordering::Relaxed);
        counters.metrics.resume_reset();
        tracing::debug!(parent: &span, reason, "resume: reset");
    }
    if matches!(from, Some(LastId::Marks(_))) && reset.is_none() {
        counters.replays.fetch_add(1, Ordering::Relaxed);
        counters.metrics.replay_started();
    }
    tokio::spawn(tracing::Instrument::instrument(
        replay(inner.clone(), history.clone(), sender, plan, reset),
        span,
    ));
    Ok(())
}

/// Sends a connection what its channels' histories hold after its cursor,
/// then the live events held back meanwhile (skipping what was replayed),
/// then goes live. With `reset`, sends the reset event first and replays
/// nothing older than the cursor (which then stands at the heads).
async fn replay(
    inner: Arc<Inner>,
    history: Arc<dyn History>,
    sender: FrameSender,
    plan: Vec<(Channel, u32, u32)>,
    reset: Option<&'static str>,
) {
    if let Some(reason) = reset {
        let body = reset_body(reason);
        let frame = Stamped {
            key: 0,
            epoch: 0,
            position: Position::ZERO,
            body: body.clone(),
        };
        // Key 0 is no channel's: the cursor sends it with its current id.
        if sender.send_replayed(&frame).await.is_err() {
            return;
        }
    }
    for _ in 0..REPLAY_PASSES {
        for (channel, key, epoch) in &plan {
            let Some(mut after) = sender.with_cursor(|c| c.position(*key)).flatten() else {
                continue;
            };
            loop {
                let entries = match history.read(channel, after, REPLAY_BATCH).await {
                    Ok(entries) => entries,
                    Err(err) => {
                        // Better a reconnect (which resumes) than a silent gap.
                        tracing::warn!(%channel, error = %err, "history read failed; closing the stream");
                        sender.close();
                        return;
                    }
                };
                let full = entries.len() == REPLAY_BATCH;
                for entry in entries {
                    after = entry.position;
                    let mut envelope = match Envelope::decode(&entry.payload) {
                        Ok(env) => env,
                        Err(err) => {
                            inner.malformed(channel, &err);
                            continue;
                        }
                    };
                    envelope.id = None;
                    let body = match envelope.encode_frame() {
                        Ok(frame) => frame,
                        Err(err) => {
                            inner.malformed(channel, &err);
                            continue;
                        }
                    };
                    let event = Stamped {
                        key: *key,
                        epoch: *epoch,
                        position: entry.position,
                        body,
                    };
                    if sender.send_replayed(&event).await.is_err() {
                        return;
                    }
                    inner.counters.replayed.fetch_add(1, Ordering::Relaxed);
                    inner.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    inner.counters.metrics.events_replayed(1);
                }
                if !full {
                    break;
                }
            }
        }
        match sender.release(Some(b"")) {
            Ok(true) | Err(_) => return,
            // Live events overflowed the hold (or would overflow the queue):
            // they are in the history, read on.
            Ok(false) => {}
        }
    }
    tracing::warn!("replay could not catch up with live traffic; closing the stream");
    sender.close();
}

/// After a bus outage (or lost messages) with history on: every affected
/// connection holds live events back and replays what it missed from its
/// cursor, or gets the reset event if that left the window.
fn resync(inner: &Arc<Inner>, channel: Option<&Channel>) {
    let Some(history) = inner.history.clone() else {
        return;
    };
    for (sender, channels) in inner.registry.resumable_connections() {
        if channel.is_some_and(|c| !channels.contains(c)) {
            continue;
        }
        sender.hold();
        let Some(marks) = sender.with_cursor(|c| c.marks().to_vec()) else {
            continue;
        };
        let inner = inner.clone();
        let history = history.clone();
        let permits = inner.resyncs.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            if let Err(err) = resume(
                &inner,
                &history,
                sender.clone(),
                channels,
                Some(LastId::Marks(marks)),
                "resync",
            )
            .await
            {
                tracing::warn!(error = %err, "history unavailable after the outage; closing the stream");
                sender.close();
            }
        });
    }
}
