//! The facade: node identity, connect, publish, shutdown and limits.
//!
//! The hub is split into what a reader looks for: this file (the [`Hub`],
//! its connect, publish and shutdown), `builder.rs` ([`HubBuilder`]),
//! `error.rs` ([`HubError`], [`ConnectError`] and the HTTP status of each
//! refusal), `subscriptions.rs` (the subscription manager behind
//! interest-based routing), `routing.rs` (what arrives from the bus) and
//! `disconnect.rs` (ending streams across the cluster).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::broker::{BrokerStatus, Channel};
use crate::event::{retry_frame, Event};
use crate::outbound::{KeyCheck, Outbound};
use crate::presence::{Presence, PresenceState};
use crate::registry::{ConnectionId, ConnectionRegistry};
use crate::resume::Resumer;
use crate::stream::{self, SseStream, StreamConfig};
use crate::telemetry::{Counters, FanOut};

mod builder;
mod disconnect;
mod error;
mod routing;
mod subscriptions;

pub use crate::limits::{MAX_NAME_LEN, MAX_TOPICS_PER_CONNECTION};
pub use crate::outbound::Disconnect;
pub use crate::outbound::{PublishError, PublishReceipt, Target};
pub use crate::resume::ResumeTokenError;
use crate::subscription::checked_names;
pub use crate::subscription::Subscription;
pub use crate::telemetry::HubStats;
pub use builder::HubBuilder;
pub use disconnect::{CLOSED_EVENT, NO_RECONNECT_RETRY};
pub use error::{wants_event_stream, ConnectError, HubError, REFUSED_EVENT};

use subscriptions::Subscriptions;

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
    status: watch::Receiver<BrokerStatus>,
    registry: Arc<ConnectionRegistry>,
    subscriptions: Subscriptions,
    counters: Arc<Counters>,
    stream: StreamConfig,
    shutdown_retry: (Duration, Duration),
    drain_timeout: Duration,
    next_conn: AtomicU64,
    shutting_down: AtomicBool,
    closed: AtomicBool,
    drained: Notify,
    shutdown_done: watch::Sender<bool>,
    /// The broker is (or started) down: its next Up ends an outage.
    bus_down: AtomicBool,
    gap_events: bool,
    limits: builder::Limits,
    /// The longest a connection lives ([`HubBuilder::max_lifetime`]).
    max_lifetime: Option<builder::Lifetime>,
    authorizer: Option<Arc<dyn crate::auth::Authorizer>>,
    /// The CORS policy of [`Hub::respond`]'s answers.
    cors: Option<crate::cors::Cors>,
    /// This hub's side of the presence protocol.
    presence: Arc<PresenceState>,
    /// Connections admitted and not yet unregistered (the node limit is
    /// checked against this, not the registry, so concurrent connects
    /// cannot overshoot it).
    admitted: AtomicUsize,
    /// The resume layer, with history on.
    resumer: Option<Arc<Resumer>>,
    /// Envelopes, message ids and the send to the bus or the store.
    outbound: Outbound,
}

impl Hub {
    /// Starts configuring a hub.
    pub fn builder() -> HubBuilder {
        HubBuilder::default()
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

    /// What a load balancer's health check should see: false from the
    /// moment [`Hub::shutdown`] begins (so the balancer stops sending new
    /// connections while the node drains), and while the broker cannot
    /// reach its server.
    pub fn is_healthy(&self) -> bool {
        !self.is_shutting_down() && self.broker_status() == BrokerStatus::Up
    }

    /// Serves an SSE request: [`Hub::connect_request`], then the stream's
    /// response; a refusal becomes [`ConnectError::response_for`]: a client
    /// that asks for an event stream (every `EventSource`) gets, for a
    /// refusal that will pass (draining, node full, store unreachable, user
    /// limit), a `200` stream with a randomized `retry:` (from
    /// [`HubBuilder::shutdown_retry`]) and a [`REFUSED_EVENT`], so it
    /// reconnects instead of giving up; others get the plain status. The
    /// body type is the same either way, so a handler returns this as it is.
    ///
    /// With a CORS policy ([`HubBuilder::cors`]), a preflight (`OPTIONS`
    /// with `Access-Control-Request-Method`) gets its answer and opens
    /// nothing, and every answer, a refusal too (401, 403, 429, 503),
    /// carries the grant for an allowed `Origin` (see [`cors`](crate::cors)).
    pub async fn respond(
        &self,
        request: &http::request::Parts,
        sub: Subscription,
    ) -> http::Response<SseStream> {
        let cors = self.inner.cors.as_ref();
        if let Some(preflight) = cors.and_then(|c| c.preflight(request)) {
            return preflight.map(|()| stream::finished([]));
        }
        let mut response = match self.connect_request(request, sub).await {
            Ok(conn) => conn.into_http_response(),
            Err(err) => {
                tracing::debug!(error = %err, "connect refused");
                err.response_for(&request.headers, self.reconnect_delay())
            }
        };
        if let Some(cors) = cors {
            cors.apply(&request.headers, response.headers_mut());
        }
        response
    }

    /// The CORS policy set with [`HubBuilder::cors`], for the app's other
    /// routes (a publish endpoint, say) to answer alike.
    pub fn cors(&self) -> Option<&crate::cors::Cors> {
        self.inner.cors.as_ref()
    }

    /// A delay drawn from the reconnect range ([`HubBuilder::shutdown_retry`]),
    /// so that clients told to come back do not all come back at once.
    fn reconnect_delay(&self) -> Duration {
        self.inner.reconnect_delay()
    }

    /// A snapshot of the counters (the same figures the `metrics` facade
    /// gets; see [`telemetry`](crate::telemetry)).
    pub fn stats(&self) -> HubStats {
        let inner = &self.inner;
        inner.counters.snapshot(
            inner.registry.len() as u64,
            inner.subscriptions.len() as u64,
            inner.history_retained_bytes().unwrap_or(0),
        )
    }

    /// A resume token for `sub`'s channels as they stand now: an event id
    /// (the codec of [`resume`](crate::resume)) naming the current head of
    /// each resumable channel `sub` follows (everyone, its user, its
    /// topics), read from the history store.
    ///
    /// A page rendered now passes it to the browser, which opens its
    /// stream with it as `Last-Event-ID` (for an `EventSource`: the
    /// `last_event_id` query parameter, which [`Hub::connect_request`]
    /// reads): that first connect, on any node, replays every event
    /// published to those channels since the token was made, once, then
    /// goes live. A channel without history yet is named as such (epoch
    /// tag 0), so its first events, published after the token, are
    /// replayed too. The token is as good as a reconnect's id: past the
    /// retention window, the connect gets the
    /// [`RESET_EVENT`](crate::resume::RESET_EVENT) instead.
    ///
    /// The connect must follow the same channels (same user, same topics;
    /// a channel the token does not name starts live). Authorize `sub` as
    /// the connect would be.
    ///
    /// Errors: [`ResumeTokenError::NoHistory`] without a history store
    /// (nothing could be replayed), [`ResumeTokenError::InvalidSubscription`]
    /// and [`ResumeTokenError::NotResumable`] for a subscription a connect
    /// could not resume, [`ResumeTokenError::HistoryUnavailable`] when the
    /// store cannot be read. [`ResumeTokenError::status`] gives the HTTP
    /// status of each.
    ///
    /// ```no_run
    /// # async fn demo(hub: sse_cluster::Hub) -> Result<(), sse_cluster::ResumeTokenError> {
    /// use sse_cluster::Subscription;
    ///
    /// let token = hub.resume_token(&Subscription::new().topic("news")).await?;
    /// // In the page: new EventSource(`/events?topic=news&last_event_id=${token}`)
    /// # let _ = token;
    /// # Ok(())
    /// # }
    /// ```
    pub fn resume_token(
        &self,
        sub: &Subscription,
    ) -> impl std::future::Future<Output = Result<String, ResumeTokenError>> + Send + 'static {
        crate::subscription::resume_token(self.inner.outbound.history().cloned(), sub)
    }

    /// Like [`Hub::connect`], after asking the configured
    /// [`Authorizer`](crate::auth::Authorizer) (if any) about `request`; it
    /// may refuse ([`ConnectError::Denied`]) or rewrite the subscription.
    /// The request's `Last-Event-ID` (header or `last_event_id` query
    /// parameter, see [`resume::last_event_id`](crate::resume::last_event_id))
    /// is used unless the subscription already has one.
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
            sub.last_event_id = crate::resume::last_event_id(&request.headers, request.uri.query());
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
        let (user, topics) =
            checked_names(sub.user, sub.topics).map_err(ConnectError::InvalidSubscription)?;
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
        if let Some((at, last)) = inner.deadline(sub.expires) {
            stream = stream.end_at(at, last);
        }
        let mut channels: Vec<Channel> = topics.iter().cloned().map(Channel::Topic).collect();
        channels.extend(user.clone().map(Channel::User));
        // Holds live events back until the resume below decides.
        let resumable = inner.resumer.as_ref().map(|r| {
            (
                r,
                r.prepare(&sender, user.as_ref(), &topics),
                sender.clone(),
            )
        });
        let fresh = inner
            .registry
            .register(id.clone(), user, topics.into(), sender);
        let stream = stream.with_drop_guard(Registration {
            inner: inner.clone(),
            id: id.clone(),
        });
        inner.counters.connected();

        // Wait until the bus delivers every channel of this connection here.
        if inner.subscriptions.ensure(channels, &fresh).await.is_err() {
            return Err(ConnectError::ShuttingDown);
        }
        // A shutdown that began meanwhile may have missed this connection.
        if self.is_shutting_down() {
            return Err(ConnectError::ShuttingDown);
        }
        if let Some((resumer, channels, sender)) = resumable {
            let last = sub.last_event_id.as_deref();
            resumer
                .connect(sender, channels, last, id.as_str())
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
    /// held here never touches the bus. With history on, events to a topic,
    /// a user or everyone go through the store, and reach every node, this
    /// one included, from the bus, in position order.
    #[tracing::instrument(name = "sse.publish", level = "debug", skip_all, fields(node = %self.inner.node_id, target = ?target, msg))]
    pub async fn publish(
        &self,
        target: Target,
        event: Event,
    ) -> Result<PublishReceipt, PublishError> {
        self.publish_keyed(target, event, None).await
    }

    /// Like [`Hub::publish`], at most once per idempotency `key` and
    /// target within a window: a repeat (a client's retry after a timeout,
    /// through this node or another) is accepted and answered with the first
    /// publish's receipt ([`PublishReceipt::duplicate`] set, same `id` and
    /// `position`), but stored and delivered nothing.
    ///
    /// | where | what holds |
    /// |---|---|
    /// | history on (memory, Redis, JetStream), a topic, a user or everyone | once across every node and publisher sharing the store, for [`Retention::idempotency_window`](crate::history::Retention::idempotency_window) (default 2 minutes); checked atomically with the append |
    /// | no history, a store that does not deduplicate, or [`Target::Connection`] | once per node (this hub's own window, 2 minutes, at most [`MAX_KEY_BYTES`](crate::history::memory::MAX_KEY_BYTES) of keys): a retry through another node goes out again |
    ///
    /// The key is 1 to [`MAX_IDEMPOTENCY_KEY_LEN`](crate::limits::MAX_IDEMPOTENCY_KEY_LEN)
    /// visible ASCII characters ([`PublishError::InvalidKey`], HTTP 400,
    /// otherwise). The key alone decides: a repeat's content is not
    /// compared. A publish that fails forgets its key in the node-local
    /// window, so that a retry goes out (in a store, a failed append stores
    /// no key).
    ///
    /// ```no_run
    /// # async fn demo(hub: sse_cluster::Hub) -> Result<(), sse_cluster::PublishError> {
    /// use sse_cluster::{Event, Target};
    ///
    /// let event = Event::new().data("order 42 shipped");
    /// let first = hub.publish_idempotent(Target::topic("orders"), event.clone(), "order-42-shipped").await?;
    /// // A retry: same receipt, nothing sent again.
    /// let again = hub.publish_idempotent(Target::topic("orders"), event, "order-42-shipped").await?;
    /// assert!(again.duplicate && again.id == first.id && again.position == first.position);
    /// # Ok(())
    /// # }
    /// ```
    #[tracing::instrument(name = "sse.publish", level = "debug", skip_all, fields(node = %self.inner.node_id, target = ?target, msg))]
    pub async fn publish_idempotent(
        &self,
        target: Target,
        event: Event,
        key: &str,
    ) -> Result<PublishReceipt, PublishError> {
        self.publish_keyed(target, event, Some(key)).await
    }

    async fn publish_keyed(
        &self,
        target: Target,
        event: Event,
        key: Option<&str>,
    ) -> Result<PublishReceipt, PublishError> {
        let started = std::time::Instant::now();
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::ShutDown);
        }
        let outbound = &inner.outbound;
        let msg = outbound.check(&target, &event, key)?;
        tracing::Span::current().record("msg", msg.as_str());
        // Before anything is delivered: a repeat in the node-local window
        // stops here.
        let check = outbound.check_key(&target, key, &msg);
        if let KeyCheck::Repeat(receipt) = check {
            inner.counters.publish_duplicate();
            return Ok(receipt);
        }
        let result = self
            .deliver(&target, &event, msg, key, &check, started)
            .await;
        if let (Err(_), Some(key), KeyCheck::Local) = (&result, key, &check) {
            outbound.forget_key(&target, key);
        }
        result
    }

    /// A checked publish's delivery: the local fast path, then the bus or
    /// the store.
    async fn deliver(
        &self,
        target: &Target,
        event: &Event,
        msg: String,
        key: Option<&str>,
        check: &KeyCheck,
        started: std::time::Instant,
    ) -> Result<PublishReceipt, PublishError> {
        let inner = &self.inner;
        let outbound = &inner.outbound;
        if let Target::Connection(id) = target {
            if id.node() == &*inner.node_id {
                // Held here: delivered directly, the bus is not involved.
                let local = self.deliver_locally(target, event);
                inner.counters.frame_from_local(started, local);
                inner.counters.published();
                let mut receipt = PublishReceipt::sent(msg, None);
                receipt.delivered_locally = local.delivered;
                return Ok(receipt);
            }
        }
        let (channel, payload) = outbound.envelope(target, event, &msg)?;
        let on = &channel;
        let send = async move {
            match key {
                None => outbound
                    .send(on, payload)
                    .await
                    .map(|position| PublishReceipt::sent(msg, position)),
                Some(key) => outbound.send_keyed(on, payload, key, &msg, check).await,
            }
        };
        // The bus publish is started (put on the client's connection)
        // before the local fan-out, so that other nodes' copy does not
        // wait for this node's queue pushes; the local fan-out still runs
        // whatever the bus says, as before.
        let mut send = std::pin::pin!(send);
        let early = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
        let local = self.deliver_locally(target, event);
        inner.counters.frame_from_local(started, local);
        let sent = match early {
            Poll::Ready(sent) => sent,
            Poll::Pending => send.await,
        };
        let mut receipt = match sent {
            Ok(receipt) => receipt,
            Err(err) => {
                inner.counters.bus_error();
                tracing::warn!(%channel, error = %err, "bus publish failed");
                return Err(err.into());
            }
        };
        if receipt.duplicate {
            inner.counters.publish_duplicate();
        } else {
            inner.counters.bus_out();
            inner.counters.published();
            receipt.delivered_locally = local.delivered;
        }
        Ok(receipt)
    }

    /// The local fast path of a publish: this node's receivers get the
    /// frame at once, unless history is on for the target's channel (then
    /// they get it from the bus, with its position).
    fn deliver_locally(&self, target: &Target, event: &Event) -> FanOut {
        let inner = &self.inner;
        let registry = &inner.registry;
        match target {
            Target::Connection(id) if id.node() == &*inner.node_id => {
                registry.send_to_connection(id, &event.encode())
            }
            Target::Connection(_) => FanOut::default(),
            _ if inner.resumer.is_some() => FanOut::default(),
            Target::Topic(t) if registry.topic_connections(t) > 0 => {
                registry.send_to_topic(t, &event.encode())
            }
            Target::User(u) if registry.user_connections(u) > 0 => {
                registry.send_to_user(u, &event.encode())
            }
            Target::All if !registry.is_empty() => registry.send_to_all(&event.encode()),
            _ => FanOut::default(),
        }
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
        inner
            .registry
            .close_all(|| Some(retry_frame(self.reconnect_delay())));

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
        inner.subscriptions.stop().await;
        inner.closed.store(true, Ordering::Release);
        if let Err(err) = inner.outbound.broker().shutdown().await {
            tracing::warn!(error = %err, "broker shutdown failed");
        }
        inner.shutdown_done.send_replace(true);
    }
}

impl Inner {
    /// When a new connection's stream ends by itself, and its last frame:
    /// the subscription's expiry or the connection's lifetime, whichever
    /// comes first.
    fn deadline(
        &self,
        expires: Option<std::time::SystemTime>,
    ) -> Option<(tokio::time::Instant, bytes::Bytes)> {
        if expires.is_none() && self.max_lifetime.is_none() {
            return None;
        }
        let now = tokio::time::Instant::now();
        // Past the timer's range: it never comes.
        let expiry = expires.and_then(|at| {
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            now.checked_add(left)
        });
        let lifetime = self.max_lifetime.and_then(|l| now.checked_add(l.draw()));
        match (expiry, lifetime) {
            (Some(e), Some(l)) if l < e => Some((l, self.closed_frame("lifetime", true))),
            (Some(e), _) => Some((
                e,
                bytes::Bytes::from_static(crate::subscription::EXPIRED_FRAME),
            )),
            (None, Some(l)) => Some((l, self.closed_frame("lifetime", true))),
            (None, None) => None,
        }
    }

    /// A delay drawn from the reconnect range ([`HubBuilder::shutdown_retry`]),
    /// so that clients told to come back do not all come back at once.
    fn reconnect_delay(&self) -> Duration {
        let (min, max) = self.shutdown_retry;
        let (min, max) = (min.as_millis() as u64, max.as_millis() as u64);
        Duration::from_millis(fastrand::u64(min..=max))
    }

    /// What the history store holds in this process, if it knows.
    fn history_retained_bytes(&self) -> Option<u64> {
        self.outbound.history()?.retained_bytes()
    }
}

/// How often the `sse_history_retained_bytes` gauge is refreshed.
const HISTORY_GAUGE_PERIOD: Duration = Duration::from_secs(1);

/// Keeps the `sse_history_retained_bytes` gauge current without anyone
/// calling [`Hub::stats`], for a store that knows its size: a task that
/// reads it every second until the hub is dropped or shut down.
fn report_history_bytes(inner: &Arc<Inner>) {
    let Some(bytes) = inner.history_retained_bytes() else {
        return;
    };
    inner.counters.history_retained_bytes(bytes);
    let hub = Arc::downgrade(inner);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(HISTORY_GAUGE_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(inner) = hub.upgrade() else { return };
            if inner.closed.load(Ordering::Acquire) {
                return;
            }
            if let Some(bytes) = inner.history_retained_bytes() {
                inner.counters.history_retained_bytes(bytes);
            }
        }
    });
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
            inner.subscriptions.sync(channel);
        }
        inner.admitted.fetch_sub(1, Ordering::AcqRel);
        inner.counters.disconnected();
        if inner.registry.is_empty() && inner.shutting_down.load(Ordering::Acquire) {
            inner.drained.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests;
