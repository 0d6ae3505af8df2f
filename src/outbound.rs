//! The outbound path, shared by hubs and publishers: target → channel,
//! envelope, message id, size check, and the send to the bus or, for a
//! resumable channel with history on, to the history store (which stores and
//! publishes in one step).
//!
//! A [`Hub`](crate::Hub) adds its local fast path in front of this; a
//! [`Publisher`](crate::Publisher) is only this. Both tiers therefore put
//! exactly the same bytes on the same channels.
//!
//! A publish with an idempotency key goes through the store's
//! [`History::append_once`] when a store that deduplicates covers its
//! channel; otherwise through this path's node-local window (of
//! [`Retention::DEFAULT_IDEMPOTENCY_WINDOW`](crate::history::Retention::DEFAULT_IDEMPOTENCY_WINDOW),
//! checked before anything is delivered). A publish without a key pays a
//! branch or two for all this.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::StatusCode;

use crate::broker::{Broker, BrokerError, Channel};
use crate::event::Event;
use crate::history::keys::{FirstPublish, KeyWindow};
use crate::history::{is_resumable, Appended, History, Retention};
use crate::limits::{check_idempotency_key, check_name};
use crate::registry::ConnectionId;
use crate::wire::command::MAX_REASON_LEN;
use crate::wire::{Command, Envelope, Position, WireError};

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

    /// The bus channel of this target: a topic's or user's own channel, the
    /// broadcast channel, or the node channel of the node holding the
    /// connection.
    pub fn channel(&self) -> Channel {
        match self {
            Target::Topic(t) => Channel::Topic(t.as_str().into()),
            Target::User(u) => Channel::User(u.as_str().into()),
            Target::All => Channel::Broadcast,
            Target::Connection(id) => Channel::Node(id.node().into()),
        }
    }
}

/// Why a publish did not fully go out.
///
/// [`PublishError::status`] gives the HTTP status an API answering a
/// publish request should use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The hub has shut down; nothing was delivered (HTTP 503).
    #[error("the hub is shut down")]
    ShutDown,
    /// A topic or user name is empty or longer than
    /// [`MAX_NAME_LEN`](crate::limits::MAX_NAME_LEN); nothing was delivered
    /// (HTTP 400).
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    /// An idempotency key is empty, longer than
    /// [`MAX_IDEMPOTENCY_KEY_LEN`](crate::limits::MAX_IDEMPOTENCY_KEY_LEN)
    /// or not visible ASCII; nothing was delivered (HTTP 400).
    #[error("invalid idempotency key: {0}")]
    InvalidKey(String),
    /// The event data is larger than the limit
    /// ([`HubBuilder::max_event_size`](crate::HubBuilder::max_event_size));
    /// nothing was delivered (HTTP 413).
    #[error("event data of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The data size, in bytes.
        size: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// The bus (or the history store) refused the event, so other nodes did
    /// not get it. Without history, connections on this node may already
    /// have it (the local fast path runs first); with history on, nobody
    /// got it (events reach every node, this one included, through the
    /// store). [`BrokerError::is_transient`] tells whether a retry may
    /// succeed (HTTP 503 if so, else 500).
    #[error("the bus publish failed; other nodes did not get the event: {0}")]
    Broker(#[from] BrokerError),
    /// The event could not be put into a bus envelope (HTTP 500).
    #[error(transparent)]
    Encode(#[from] WireError),
}

impl PublishError {
    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, PublishError::Broker(e) if e.is_transient())
    }

    /// The HTTP status that answers a publish request failing this way:
    /// 400 for an invalid target or idempotency key, 413 for a too large event, 503 for a
    /// refusal that may pass (shutdown, broker unavailable), 500 otherwise.
    ///
    /// ```
    /// use sse_cluster::{PublishError, limits::DEFAULT_MAX_EVENT_SIZE};
    ///
    /// let err = PublishError::TooLarge { size: DEFAULT_MAX_EVENT_SIZE + 1, max: DEFAULT_MAX_EVENT_SIZE };
    /// assert_eq!(err.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
    /// ```
    pub fn status(&self) -> StatusCode {
        match self {
            PublishError::InvalidTarget(_) | PublishError::InvalidKey(_) => StatusCode::BAD_REQUEST,
            PublishError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            PublishError::ShutDown => StatusCode::SERVICE_UNAVAILABLE,
            err if err.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// This failure as a plain HTTP response: [`PublishError::status`],
    /// `Retry-After: 1` when a retry may succeed, and `{"error": reason}` as
    /// a JSON body.
    pub fn to_http_response(&self) -> http::Response<String> {
        let retry = (self.status() == StatusCode::SERVICE_UNAVAILABLE)
            .then_some(std::time::Duration::from_secs(1));
        error_response(self.status(), self, retry)
    }
}

/// An error response: `status`, `Retry-After` (whole seconds, at least 1)
/// when `retry_after` is given, and `{"error": message}` as a JSON body.
pub(crate) fn error_response(
    status: StatusCode,
    message: &dyn std::fmt::Display,
    retry_after: Option<std::time::Duration>,
) -> http::Response<String> {
    let body = serde_json::json!({ "error": message.to_string() }).to_string();
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(after) = retry_after {
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(after.as_secs().max(1)),
        );
    }
    response
}

/// How [`Hub::disconnect`](crate::Hub::disconnect) ends the streams: the reason the client is told,
/// and whether it should come back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Disconnect {
    /// Why, in the final event's `reason` (at most 256 bytes, no control
    /// characters).
    pub reason: String,
    /// Whether the client should reconnect (soon) or stay away.
    pub reconnect: bool,
}

impl Disconnect {
    /// Ends the streams for good: `reconnect: false` (a revoked user, an
    /// expired session).
    pub fn revoke(reason: impl Into<String>) -> Self {
        Disconnect {
            reason: reason.into(),
            reconnect: false,
        }
    }

    /// Ends the streams and asks the clients to come back soon (moving
    /// connections to other nodes).
    pub fn reconnect(reason: impl Into<String>) -> Self {
        Disconnect {
            reason: reason.into(),
            reconnect: true,
        }
    }
}

/// What a successful publish returns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishReceipt {
    /// The message id (`{node}.{instance}.m{n}`), carried on the bus as `msg`.
    /// For a [`duplicate`](PublishReceipt::duplicate): the first publish's,
    /// when the store still knows it.
    pub id: String,
    /// Connections on this node the publish call itself queued the event
    /// for (the local fast path; 0 for a duplicate). With a history store
    /// this is 0: the event goes through the store first and reaches this
    /// node's connections from the store's publish, like every other
    /// node's, so that each channel arrives in position order.
    pub delivered_locally: u64,
    /// Where the event is in its channel's history: set when a history
    /// store took it (a topic, a user or everyone, with history on); for a
    /// duplicate, the first publish's position.
    pub position: Option<Position>,
    /// True when the publish repeated an idempotency key within its window
    /// ([`Hub::publish_idempotent`](crate::Hub::publish_idempotent)):
    /// accepted, but nothing was stored or delivered this time.
    pub duplicate: bool,
}

impl PublishReceipt {
    /// The receipt of a publish that went out as message `id`.
    pub(crate) fn sent(id: String, position: Option<Position>) -> Self {
        Self {
            id,
            delivered_locally: 0,
            position,
            duplicate: false,
        }
    }

    /// The receipt of a repeat: the first publish's id (`fallback` if
    /// unknown) and position.
    fn repeat(first: Option<String>, fallback: &str, position: Option<Position>) -> Self {
        Self {
            id: first.unwrap_or_else(|| fallback.to_owned()),
            delivered_locally: 0,
            position,
            duplicate: true,
        }
    }
}

/// Where a keyed publish's key is checked.
#[derive(Debug)]
pub(crate) enum KeyCheck {
    /// No key.
    None,
    /// By the history store, atomically with its append.
    Store,
    /// In the node-local window, where this publish is now the first: on
    /// failure, [`Outbound::forget_key`] lets a retry go out.
    Local,
    /// In the node-local window: a repeat, answered with this receipt.
    Repeat(PublishReceipt),
}

/// The outbound path of one hub or publisher.
#[derive(Debug)]
pub(crate) struct Outbound {
    broker: Arc<dyn Broker>,
    history: Option<Arc<dyn History>>,
    /// The hub instance or publisher: the envelope's `origin`.
    origin: Arc<str>,
    next_msg: AtomicU64,
    max_event_size: usize,
    /// Idempotency keys of publishes no deduplicating store covers.
    local_keys: Mutex<KeyWindow>,
}

fn local_keys() -> Mutex<KeyWindow> {
    Mutex::new(KeyWindow::new(Retention::DEFAULT_IDEMPOTENCY_WINDOW))
}

impl Outbound {
    /// The `disconnect` command for `target`, from this hub or publisher.
    pub(crate) fn disconnect_command<'a>(
        &'a self,
        target: &'a Target,
        how: &'a Disconnect,
    ) -> Result<Command<'a>, PublishError> {
        let mut command = Command::disconnect(&how.reason, how.reconnect);
        command.origin = Some(self.origin.as_ref().into());
        match target {
            Target::Connection(id) => command.conn = Some(id.as_str().into()),
            Target::Topic(name) | Target::User(name) => {
                crate::limits::check_name(name).map_err(PublishError::InvalidTarget)?;
            }
            Target::All => {}
        }
        if let Err(err) = command.encode() {
            return Err(PublishError::InvalidTarget(format!(
                "disconnect reason: {err} (at most {MAX_REASON_LEN} bytes, no control characters)"
            )));
        }
        Ok(command)
    }

    /// Publishes `command` on `channel`.
    pub(crate) async fn send_command(
        &self,
        channel: &Channel,
        command: &Command<'_>,
    ) -> Result<(), PublishError> {
        let payload = command
            .encode()
            .map_err(|e| PublishError::InvalidTarget(e.to_string()))?;
        self.broker
            .publish(channel, payload)
            .await
            .map_err(PublishError::Broker)
    }

    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        history: Option<Arc<dyn History>>,
        origin: Arc<str>,
        max_event_size: usize,
    ) -> Self {
        Self {
            broker,
            history,
            origin,
            next_msg: AtomicU64::new(1),
            max_event_size,
            local_keys: local_keys(),
        }
    }

    pub(crate) fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    pub(crate) fn origin(&self) -> &Arc<str> {
        &self.origin
    }

    /// The history store events go through, if any.
    pub(crate) fn history(&self) -> Option<&Arc<dyn History>> {
        self.history.as_ref()
    }

    /// This path with `history` in place of its store.
    pub(crate) fn with_history(&self, history: Arc<dyn History>) -> Self {
        Self {
            broker: self.broker.clone(),
            history: Some(history),
            origin: self.origin.clone(),
            next_msg: AtomicU64::new(self.next_msg.load(Ordering::Relaxed)),
            max_event_size: self.max_event_size,
            local_keys: local_keys(),
        }
    }

    /// Refuses an invalid target name, idempotency key or event data over
    /// the size limit, before anything is delivered; else gives the message
    /// its id, `{origin}.m{n}`.
    pub(crate) fn check(
        &self,
        target: &Target,
        event: &Event,
        key: Option<&str>,
    ) -> Result<String, PublishError> {
        if let Target::Topic(name) | Target::User(name) = target {
            check_name(name).map_err(PublishError::InvalidTarget)?;
        }
        if let Some(key) = key {
            check_idempotency_key(key).map_err(PublishError::InvalidKey)?;
        }
        let size = event.data_str().map_or(0, str::len);
        if size > self.max_event_size {
            return Err(PublishError::TooLarge {
                size,
                max: self.max_event_size,
            });
        }
        let n = self.next_msg.fetch_add(1, Ordering::Relaxed);
        // Built by hand: `format!` was 4% of a bus message's instructions.
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n);
        let mut id = String::with_capacity(self.origin.len() + 2 + digits.len());
        id.push_str(&self.origin);
        id.push_str(".m");
        id.push_str(digits);
        Ok(id)
    }

    /// The bus channel and envelope of `event` to `target`, as message
    /// `msg` (from [`Outbound::check`]).
    pub(crate) fn envelope(
        &self,
        target: &Target,
        event: &Event,
        msg: &str,
    ) -> Result<(Channel, Bytes), WireError> {
        let mut envelope = Envelope::from_event(event);
        envelope.origin = Some(self.origin.as_ref().into());
        envelope.msg = Some(msg.into());
        envelope.ts_us = Some(crate::telemetry::now_us());
        if let Target::Connection(id) = target {
            envelope.conn = Some(id.as_str().into());
        }
        Ok((target.channel(), envelope.encode()?))
    }

    /// Where `key` (if any) of message `msg` to `target` is checked; in the
    /// node-local window, this checks it (and remembers it when new).
    pub(crate) fn check_key(&self, target: &Target, key: Option<&str>, msg: &str) -> KeyCheck {
        let Some(key) = key else {
            return KeyCheck::None;
        };
        let channel = target.channel();
        if self.deduplicating_store(&channel).is_some() {
            return KeyCheck::Store;
        }
        let now = tokio::time::Instant::now();
        let mut keys = self.local_keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(first) = keys.get(now, &channel, key) {
            let first_msg = Some(first.msg.to_string());
            return KeyCheck::Repeat(PublishReceipt::repeat(first_msg, msg, first.position));
        }
        let first = FirstPublish {
            position: None,
            msg: msg.into(),
        };
        keys.insert(now, &channel, key, first);
        KeyCheck::Local
    }

    /// Forgets `key` of `target` in the node-local window: its publish
    /// failed, a retry must go out.
    pub(crate) fn forget_key(&self, target: &Target, key: &str) {
        let mut keys = self.local_keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.remove(&target.channel(), key);
    }

    /// The store that takes `channel`'s events and deduplicates keys, if
    /// any.
    fn deduplicating_store(&self, channel: &Channel) -> Option<&Arc<dyn History>> {
        self.history
            .as_ref()
            .filter(|h| is_resumable(channel) && h.idempotency_window().is_some())
    }

    /// Puts a bus message on its channel: through the history store when
    /// there is one and the channel is resumable (stored and published in
    /// one step; returns the position), else straight on the bus.
    pub(crate) async fn send(
        &self,
        channel: &Channel,
        payload: Bytes,
    ) -> Result<Option<Position>, BrokerError> {
        match &self.history {
            Some(history) if is_resumable(channel) => {
                history.append(channel, payload).await.map(Some)
            }
            _ => self.broker.publish(channel, payload).await.map(|()| None),
        }
    }

    /// [`Outbound::send`] for message `msg` whose `key` is checked as
    /// `check` says ([`Outbound::check_key`]): the receipt.
    pub(crate) async fn send_keyed(
        &self,
        channel: &Channel,
        payload: Bytes,
        key: &str,
        msg: &str,
        check: &KeyCheck,
    ) -> Result<PublishReceipt, BrokerError> {
        match (check, self.deduplicating_store(channel)) {
            (KeyCheck::Store, Some(store)) => {
                Ok(match store.append_once(channel, payload, key, msg).await? {
                    Appended::Stored(position) => PublishReceipt::sent(msg.into(), Some(position)),
                    Appended::Duplicate {
                        position,
                        msg: first,
                    } => PublishReceipt::repeat(first, msg, Some(position)),
                })
            }
            _ => {
                let position = self.send(channel, payload).await?;
                if let (KeyCheck::Local, Some(position)) = (check, position) {
                    // A store that does not deduplicate: repeats answered
                    // here get the position too.
                    let mut keys = self.local_keys.lock().unwrap_or_else(|p| p.into_inner());
                    keys.set_position(channel, key, position);
                }
                Ok(PublishReceipt::sent(msg.into(), position))
            }
        }
    }

    /// [`Outbound::check`], [`Outbound::envelope`] and [`Outbound::send`]
    /// (with `key`: [`Outbound::check_key`] and [`Outbound::send_keyed`]):
    /// the whole path for a sender with no local connections.
    pub(crate) async fn publish(
        &self,
        target: &Target,
        event: &Event,
        key: Option<&str>,
    ) -> Result<PublishReceipt, PublishError> {
        let msg = self.check(target, event, key)?;
        let Some(key) = key else {
            let (channel, payload) = self.envelope(target, event, &msg)?;
            let position = self.send(&channel, payload).await?;
            return Ok(PublishReceipt::sent(msg, position));
        };
        let check = self.check_key(target, Some(key), &msg);
        if let KeyCheck::Repeat(receipt) = check {
            return Ok(receipt);
        }
        let sent = match self.envelope(target, event, &msg) {
            Ok((channel, payload)) => self
                .send_keyed(&channel, payload, key, &msg, &check)
                .await
                .map_err(PublishError::from),
            Err(err) => Err(err.into()),
        };
        if sent.is_err() && matches!(check, KeyCheck::Local) {
            self.forget_key(target, key);
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryBus;
    use crate::history::memory::MemoryHistory;
    use crate::history::Retention;

    fn outbound(history: bool) -> (MemoryBus, Outbound, Option<Arc<dyn History>>) {
        let bus = MemoryBus::new();
        let store = history
            .then(|| Arc::new(MemoryHistory::new(&bus, Retention::default())) as Arc<dyn History>);
        let out = Outbound::new(bus.broker(), store.clone(), "n.abc".into(), 8);
        (bus, out, store)
    }

    #[test]
    fn checks_names_and_sizes_before_anything() {
        let (_bus, out, _) = outbound(false);
        let event = Event::new().data("123456789");
        assert!(matches!(
            out.check(&Target::topic("t"), &event, None),
            Err(PublishError::TooLarge { size: 9, max: 8 })
        ));
        let err = out
            .check(&Target::user(""), &Event::new(), None)
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            out.check(&Target::All, &Event::new(), None).unwrap(),
            "n.abc.m1"
        );
        assert_eq!(
            out.check(&Target::All, &Event::new(), None).unwrap(),
            "n.abc.m2"
        );
    }

    #[test]
    fn envelopes_carry_origin_message_and_connection() {
        let (_bus, out, _) = outbound(false);
        let id = ConnectionId::parse("n2.xyz.7").unwrap();
        let target = Target::Connection(id);
        let (channel, payload) = out
            .envelope(&target, &Event::new().data("hi"), "n.abc.m1")
            .unwrap();
        assert_eq!(channel, Channel::Node("n2".into()));
        let envelope = Envelope::decode(&payload).unwrap();
        assert_eq!(envelope.origin.as_deref(), Some("n.abc"));
        assert_eq!(envelope.msg.as_deref(), Some("n.abc.m1"));
        assert_eq!(envelope.conn.as_deref(), Some("n2.xyz.7"));
        assert_eq!(envelope.data, "hi");
    }

    #[tokio::test]
    async fn resumable_channels_go_through_history_node_channels_do_not() {
        let (bus, out, store) = outbound(true);
        out.publish(&Target::topic("t"), &Event::new(), None)
            .await
            .unwrap();
        let id = ConnectionId::parse("n2.xyz.7").unwrap();
        out.publish(&Target::Connection(id), &Event::new(), None)
            .await
            .unwrap();
        // Both reached the bus: one stamped by the store, one published as is.
        assert_eq!(bus.published(), 2);
        let heads = store
            .unwrap()
            .heads(&[(Channel::Topic("t".into()), None)])
            .await
            .unwrap();
        assert_eq!(heads[0].last.major(), 1);
    }

    #[tokio::test]
    async fn without_a_deduplicating_store_keys_are_checked_here_and_a_failure_forgets_them() {
        let bus = MemoryBus::new();
        let broker = bus.broker();
        struct Ignore;
        impl crate::broker::BusSink for Ignore {
            fn deliver(&self, _: &Channel, _: Bytes) {}
            fn status_changed(&self, _: crate::broker::BrokerStatus) {}
        }
        broker.start(Arc::new(Ignore)).await.unwrap();
        let out = Outbound::new(broker.clone(), None, "n.abc".into(), 1024);
        let t = Target::topic("t");
        let first = out.publish(&t, &Event::new(), Some("k")).await.unwrap();
        assert!(!first.duplicate && first.position.is_none());
        let again = out.publish(&t, &Event::new(), Some("k")).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.id, first.id);
        assert_eq!(bus.published(), 1, "the repeat stayed off the bus");
        // Another target: a publish of its own.
        let other = out.publish(&Target::All, &Event::new(), Some("k")).await;
        assert!(!other.unwrap().duplicate);
        // A failed publish does not use its key up.
        broker.set_connected(false);
        assert!(out.publish(&t, &Event::new(), Some("k2")).await.is_err());
        broker.set_connected(true);
        let retried = out.publish(&t, &Event::new(), Some("k2")).await.unwrap();
        assert!(!retried.duplicate, "{retried:?}");
        let err = out.publish(&t, &Event::new(), Some("a b")).await;
        assert!(matches!(err, Err(PublishError::InvalidKey(_))), "{err:?}");
    }
}
