//! History in a NATS JetStream stream, beside the NATS bus.
//!
//! One stream per cluster holds every resumable channel's history, one
//! subject per channel. The stream *republishes* each message it stores onto
//! the channel's ordinary bus subject, with the headers `Nats-Stream` and
//! `Nats-Sequence`: the server stores and republishes as one step, in
//! sequence order, so no live subscriber sees an event the stream lacks and
//! every subscriber sees a channel's events in position order, whoever
//! published them. The [`NatsBroker`] hands such messages to the hub with
//! their sequence as the position ([`BusSink::deliver_at`](crate::broker::BusSink::deliver_at));
//! the store supplies the epoch ([`History::live_epoch`]).
//!
//! | what | name |
//! |---|---|
//! | the stream | [`JetStreamConfig::stream`], default `{PREFIX}_HISTORY` (the prefix upper-cased, `.` as `_`) |
//! | its subjects | `{prefix}_h.>` |
//! | a channel's history subject | `{prefix}_h.` + the channel's subject after `{prefix}.`, e.g. `sse_h.topic.news` |
//! | republished to | `{prefix}.>` (the stream's `republish`: `{prefix}_h.>` → `{prefix}.>`), e.g. `sse.topic.news` |
//! | a position | the message's stream sequence, `(seq, 0)` |
//! | the epoch | the stream's creation time (nanoseconds since 1970, decimal) |
//!
//! The history subjects are not under `{prefix}.` because JetStream refuses
//! a republish destination that overlaps the stream's own subjects (a
//! cycle). The NATS user needs, besides what the bus needs, publish
//! permission on `{prefix}_h.>` and access to the JetStream API
//! (`$JS.API.>`), and subscribe permission on `$JS.EVENT.ADVISORY.>` to hear
//! about the stream being recreated at once.
//!
//! Needs nats-server 2.9 or later (republish, direct get). Caveat, seen
//! with nats-server 2.9.10: messages that *concurrent* publishers append to
//! one channel are now and then republished with two adjacent sequences
//! swapped. A live connection then skips the older one (its cursor has
//! passed it), and a resume does not bring it back. Appends from one node
//! one after the other are not affected; newer servers are not known to do
//! this (the test suite checks order strictly on them).
//!
//! # The stream
//!
//! It is created or updated the first time the store is used (the broker
//! must be started, which building a hub does): subjects `{prefix}_h.>`,
//! limits retention with `max_msgs_per_subject` = [`Retention::max_len`](super::Retention::max_len) and
//! `max_age` = [`Retention::max_age`](super::Retention::max_age) (or [`JetStreamConfig::idle_ttl`]
//! when that is `None`: no message stays forever), discard old, direct gets allowed,
//! [`JetStreamConfig::storage`] (file by default) and
//! [`JetStreamConfig::replicas`], and `duplicate_window` =
//! [`Retention::idempotency_window`](super::Retention::idempotency_window) (at most the age limit). Every node updates it with its own
//! settings: give all nodes the same. The storage type of an existing stream
//! cannot change (the update fails with a configuration error).
//!
//! # What a connect writes: nothing per channel
//!
//! Only appends store anything per channel. On a replicated stream the
//! first connect through a leader this node has not read from yet (and the
//! first after each reconnect) appends one empty message to
//! `{prefix}_h._sync` and waits for its acknowledgement, a read barrier: a
//! newly elected leader may answer reads before it has applied the appends
//! its predecessor acknowledged, and its acknowledgement of the barrier
//! comes only after it has applied everything before it. The per-subject
//! limit keeps that subject small; its republished copy, `{prefix}._sync`,
//! has no subscriber. A connect reads: the stream's
//! info and, per channel, its last message ([`History::heads`]), then the
//! replay reads each channel after the client's position. A gap of at most
//! [`SHORT_REPLAY`] stream sequences (the usual reconnect) is read message
//! by message; a longer one through an ephemeral, memory-stored consumer
//! on the channel's subject, deleted after (and message by message if the
//! consumer cannot be created).
//!
//! Every one of these reads is answered by the stream's leader (the
//! `STREAM.MSG.GET` API), not by a direct get, although the stream allows
//! direct gets for other tools: a direct get may be answered by a replica
//! that has not applied the newest messages yet, and a replay that stopped
//! at such a replica's end would skip events for good. Likewise a consumer:
//! right after a server of a replicated stream died, the cluster may place
//! a new consumer on the dead server, and its creation times out for
//! seconds; the message-by-message read needs only the stream's leader.
//! The one write is the stream itself, created by the first use if it does
//! not exist (once per cluster, not per channel). The epoch is the stream's,
//! shared by all channels, so [`History::heads`] never reports the empty
//! epoch ([`Head::epoch`](super::Head::epoch)). Every stored message
//! expires: after [`Retention::max_age`](super::Retention::max_age), or [`JetStreamConfig::idle_ttl`]
//! (7 days by default) without one.
//!
//! # Epoch
//!
//! The stream's `created` time, which JetStream keeps with the stream (also
//! across restarts, for file storage). A stream deleted and created again (by
//! this store, on the next append or connect, or by an operator) has another
//! creation time, so clients holding ids of the old one get the reset event.
//! The store caches the epoch for [`History::live_epoch`] and refreshes it on
//! every connect's [`History::heads`], when it (re)creates the stream, when a
//! JetStream advisory says the stream was created or deleted, and when the
//! broker reconnects. Between a recreation and the refresh (the time it takes
//! the advisory to arrive) a node may stamp live events of the new stream with
//! the old epoch: a client connected meanwhile skips those whose position is
//! not above the last one it saw, and gets the reset event when it next
//! resumes.
//!
//! # Retained
//!
//! [`History::heads`] says a client's position `p` is still resumable only
//! when no message of its channel after `p` can have been removed. JetStream
//! removes a subject's messages oldest first (per-subject limit, age, purges),
//! so that holds when
//!
//! - `p` is at or after the channel's last message; or
//! - the channel's oldest stored message is at or before `p + 1`; or
//! - nothing after `p` was removed from the front of the stream (its first
//!   sequence is at most `p + 1`), and either the stream has no holes (no
//!   message removed from the middle) or the channel holds fewer messages
//!   than the per-subject limit (so that limit has not removed any); or
//! - the channel has no stored message, and the stream is younger than its
//!   age limit (and has no stream-wide count or size limit): the
//!   per-subject limit always keeps a subject's newest message, so only
//!   the age limit (or a purge) can empty a subject, and such a channel
//!   never had a message. This covers clients that connected before the
//!   stream's first event, whose ids hold position 0 for channels that
//!   have had no event since (a user, the broadcast channel).
//!
//! Otherwise it answers false, which sends the client the reset event also in
//! some cases where nothing was lost: a client standing at an empty channel's
//! head (see below) in a stream older than its age limit after the front of
//! the stream moved past it, or a channel holding exactly the limit in a
//! stream with holes.
//! Messages deleted one by one by an operator are not noticed: a replay skips
//! them.
//!
//! A channel without messages reports as its newest position the stream's
//! last sequence (not zero): a client connecting to it then stands at a
//! position that the rules above can vouch for later.
//!
//! # Idempotency keys
//!
//! [`History::append_once`] publishes with the header `Nats-Msg-Id:
//! <history subject> <key>`: the server itself drops a repeat within the
//! stream's duplicate window (nothing stored, nothing republished) and acks
//! it as a duplicate with the first message's sequence; the store then
//! reads that message (a direct get) for its message id. The window is the
//! stream's, so the same for every node: the last node to update the
//! stream sets it.
//!
//! ```no_run
//! use std::sync::Arc;
//! use sse_cluster::broker::nats::{NatsBroker, NatsConfig};
//! use sse_cluster::history::jetstream::{JetStreamConfig, JetStreamHistory};
//! use sse_cluster::history::Retention;
//! use sse_cluster::Hub;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = NatsBroker::new(NatsConfig::new("nats://127.0.0.1:4222"))?;
//! let history = Arc::new(JetStreamHistory::new(
//!     broker.clone(),
//!     JetStreamConfig::new(Retention::default()),
//! )?);
//! let hub = Hub::builder().broker(broker).history(history.clone()).build().await?;
//! // Optional: create the stream now rather than on first use.
//! history.ensure_stream().await?;
//! # let _ = hub;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, context, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::{Appended, Entry, Head, History, Position};
use crate::broker::nats::NatsBroker;
use crate::broker::{Broker, BrokerError, BrokerStatus, Channel};
use crate::wire::Envelope;
pub use read::SHORT_REPLAY;
use read::{found, last_sequence, read_by_consumer, read_by_gets, retained};

mod config;
pub use config::{JetStreamConfig, Storage, DEFAULT_IDLE_TTL};

/// A JetStream context and the stream, once set up.
#[derive(Clone)]
struct Ready {
    context: jetstream::Context,
    stream: stream::Stream<()>,
}

struct Inner {
    broker: Arc<NatsBroker>,
    config: JetStreamConfig,
    name: String,
    prefix: String,
    ready: Mutex<Option<Ready>>,
    /// One setup at a time.
    setup: tokio::sync::Mutex<()>,
    epoch: Mutex<Option<Arc<str>>>,
    /// Follows advisories and reconnects (refreshes the epoch).
    watcher: Mutex<Option<JoinHandle<()>>>,
    /// The (leader, broker connect count) the last read barrier went
    /// through (see `read::Inner::sync_with_leader`).
    synced: Mutex<Option<(String, u64)>>,
    /// One barrier at a time.
    syncing: tokio::sync::Mutex<()>,
}

/// History in a JetStream stream, publishing through its republish. See the
/// [module docs](self).
pub struct JetStreamHistory {
    inner: Arc<Inner>,
}

impl fmt::Debug for JetStreamHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamHistory")
            .field("stream", &self.inner.name)
            .field("epoch", &*lock(&self.inner.epoch))
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Drop for JetStreamHistory {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.inner.watcher).take() {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(what: &str, err: impl fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("jetstream {what}: {err}"))
}

fn backend(what: &str, err: impl fmt::Display) -> BrokerError {
    BrokerError::Backend {
        source: format!("jetstream {what}: {err}").into(),
        transient: false,
    }
}

/// The default stream name for `prefix`.
fn default_stream_name(prefix: &str) -> String {
    let mut name: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    name.push_str("_HISTORY");
    name
}

fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c))
}

/// The epoch of a stream created at `created`.
fn epoch_of(info: &stream::Info) -> Arc<str> {
    info.created.unix_timestamp_nanos().to_string().into()
}

impl JetStreamHistory {
    /// History in a stream next to `broker`'s bus (the hubs must use that
    /// broker too). Checks the configuration only: the stream is created or
    /// updated on first use, once the broker is started (building the hub
    /// starts it), or by [`JetStreamHistory::ensure_stream`].
    pub fn new(broker: Arc<NatsBroker>, config: JetStreamConfig) -> Result<Self, BrokerError> {
        let prefix = broker.prefix().to_owned();
        let name = config
            .stream
            .clone()
            .unwrap_or_else(|| default_stream_name(&prefix));
        if !valid_stream_name(&name) {
            return Err(BrokerError::Config(format!(
                "invalid JetStream stream name {name:?}"
            )));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                broker,
                config,
                name,
                prefix,
                ready: Mutex::new(None),
                setup: tokio::sync::Mutex::new(()),
                epoch: Mutex::new(None),
                watcher: Mutex::new(None),
                synced: Mutex::new(None),
                syncing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.inner.name
    }

    /// The subject `channel`'s history is stored under.
    pub fn history_subject(&self, channel: &Channel) -> String {
        self.inner.history_subject(channel)
    }

    /// Creates the stream or updates its settings now (otherwise done on
    /// first use); the broker must be started. Returns the epoch.
    pub async fn ensure_stream(&self) -> Result<Arc<str>, BrokerError> {
        let (_, info) = self.inner.setup().await?;
        Ok(epoch_of(&info))
    }
}

impl Inner {
    fn history_subject(&self, channel: &Channel) -> String {
        let subject = self.broker.subject(channel);
        let rest = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .unwrap_or(&subject);
        format!("{}_h.{rest}", self.prefix)
    }

    fn stream_config(&self) -> stream::Config {
        let retention = &self.config.retention;
        let max_age = retention.max_age.unwrap_or(self.config.idle_ttl);
        stream::Config {
            name: self.name.clone(),
            description: Some(format!("sse-cluster event history of {}.>", self.prefix)),
            subjects: vec![format!("{}_h.>", self.prefix)],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_messages_per_subject: i64::try_from(retention.max_len.max(1)).unwrap_or(i64::MAX),
            max_age,
            // JetStream refuses a duplicate window longer than the age.
            duplicate_window: retention.idempotency_window.min(max_age),
            storage: match self.config.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            num_replicas: self.config.replicas.max(1),
            allow_direct: true,
            republish: Some(stream::Republish {
                source: format!("{}_h.>", self.prefix),
                destination: format!("{}.>", self.prefix),
                headers_only: false,
            }),
            ..Default::default()
        }
    }

    fn set_epoch(&self, info: &stream::Info) {
        let epoch = epoch_of(info);
        let mut current = lock(&self.epoch);
        if current.as_deref() != Some(&*epoch) {
            if current.is_some() {
                tracing::info!(stream = %self.name, %epoch, "jetstream history stream was recreated: new epoch");
            }
            *current = Some(epoch);
        }
    }

    fn context(&self) -> Result<jetstream::Context, BrokerError> {
        let client = self.broker.client().ok_or_else(|| {
            BrokerError::Unavailable(
                "the NATS broker is not started yet (build the hub first)".into(),
            )
        })?;
        Ok(jetstream::ContextBuilder::new()
            .timeout(self.config.timeout)
            .build(client))
    }

    /// The set-up stream (setting it up if needed).
    async fn ready(self: &Arc<Self>) -> Result<Ready, BrokerError> {
        if let Some(ready) = lock(&self.ready).clone() {
            return Ok(ready);
        }
        Ok(self.setup().await?.0)
    }

    /// Creates or updates the stream, refreshes the epoch, starts the
    /// watcher.
    async fn setup(self: &Arc<Self>) -> Result<(Ready, stream::Info), BrokerError> {
        let _one = self.setup.lock().await;
        let context = self.context()?;
        let info = context
            .create_or_update_stream(self.stream_config())
            .await
            .map_err(|err| match err.kind() {
                context::CreateStreamErrorKind::JetStream(_)
                | context::CreateStreamErrorKind::InvalidStreamName
                | context::CreateStreamErrorKind::EmptyStreamName
                | context::CreateStreamErrorKind::DomainAndExternalSet => {
                    BrokerError::Config(format!("jetstream stream {}: {err}", self.name))
                }
                _ => unavailable("stream setup", err),
            })?;
        let stream = context
            .get_stream_no_info(&self.name)
            .await
            .map_err(|e| unavailable("stream", e))?;
        self.set_epoch(&info);
        let ready = Ready { context, stream };
        *lock(&self.ready) = Some(ready.clone());
        self.watch(&ready);
        Ok((ready, info))
    }

    /// The stream's current info; recreates a stream that is gone.
    async fn info(self: &Arc<Self>) -> Result<(Ready, stream::Info), BrokerError> {
        let ready = self.ready().await?;
        match ready.stream.get_info().await {
            Ok(info) => {
                self.set_epoch(&info);
                Ok((ready, info))
            }
            Err(err) if is_stream_not_found(&err) => self.setup().await,
            Err(err) => Err(unavailable("stream info", err)),
        }
    }

    /// Follows the stream's create/delete advisories and the broker's
    /// reconnects, refreshing the epoch (started once).
    fn watch(self: &Arc<Self>, ready: &Ready) {
        let mut watcher = lock(&self.watcher);
        if watcher.is_some() {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(self);
        let client = ready.context.client();
        let mut status = self.broker.status();
        let name = self.name.clone();
        *watcher = Some(tokio::spawn(async move {
            let subject = format!("$JS.EVENT.ADVISORY.STREAM.*.{name}");
            let mut advisories = match client.subscribe(subject).await {
                Ok(sub) => Some(sub),
                Err(err) => {
                    tracing::debug!(error = %err, "jetstream advisories unavailable; the epoch refreshes on connects");
                    None
                }
            };
            loop {
                let refresh = tokio::select! {
                    message = async {
                        match advisories.as_mut() {
                            Some(sub) => sub.next().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        if message.is_none() {
                            advisories = None;
                        }
                        message.is_some()
                    }
                    changed = status.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let up = *status.borrow_and_update() == BrokerStatus::Up;
                        up
                    }
                };
                if !refresh {
                    continue;
                }
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                match inner.info().await {
                    Ok(_) => {}
                    Err(err) => {
                        tracing::debug!(error = %err, "jetstream epoch refresh failed")
                    }
                }
            }
        }));
    }
}

impl Inner {
    /// Publishes `payload` into `channel`'s history (recreating a deleted
    /// stream once), with `Nats-Msg-Id: <subject> <key>` when a key is
    /// given; returns the server's ack.
    async fn publish(
        self: &Arc<Self>,
        channel: &Channel,
        payload: Bytes,
        key: Option<&str>,
    ) -> Result<jetstream::publish::PublishAck, BrokerError> {
        if !self.broker.is_up() {
            return Err(BrokerError::Unavailable("nats is disconnected".into()));
        }
        let subject = self.history_subject(channel);
        let headers = key.map(|key| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{subject} {key}").as_str(),
            );
            headers
        });
        let mut ready = self.ready().await?;
        let mut recreated = false;
        loop {
            let sent = match &headers {
                None => {
                    ready
                        .context
                        .publish(subject.clone(), payload.clone())
                        .await
                }
                Some(headers) => {
                    ready
                        .context
                        .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                        .await
                }
            };
            let result = match sent {
                Ok(ack) => ack.await,
                Err(err) => Err(err),
            };
            match result {
                Ok(ack) => return Ok(ack),
                Err(err)
                    if !recreated && err.kind() == context::PublishErrorKind::StreamNotFound =>
                {
                    // No stream captures the subject (deleted): create it
                    // again (a new epoch) and retry once.
                    recreated = true;
                    ready = self.setup().await?.0;
                }
                Err(err) => return Err(unavailable("publish", err)),
            }
        }
    }
}

/// True when the server answered that the stream does not exist (its
/// JetStream error code, carried as the request error's source).
fn is_stream_not_found(err: &stream::InfoError) -> bool {
    use std::error::Error as _;
    err.source()
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|err| err.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND)
}

#[async_trait]
impl History for JetStreamHistory {
    async fn append(&self, channel: &Channel, payload: Bytes) -> Result<Position, BrokerError> {
        let ack = self.inner.publish(channel, payload, None).await?;
        Ok(Position::new(ack.sequence, 0))
    }

    fn idempotency_window(&self) -> Option<Duration> {
        let retention = &self.inner.config.retention;
        let max_age = retention.max_age.unwrap_or(self.inner.config.idle_ttl);
        Some(retention.idempotency_window.min(max_age))
    }

    async fn append_once(
        &self,
        channel: &Channel,
        payload: Bytes,
        key: &str,
        _msg: &str,
    ) -> Result<Appended, BrokerError> {
        let inner = &self.inner;
        let ack = inner.publish(channel, payload, Some(key)).await?;
        let position = Position::new(ack.sequence, 0);
        if !ack.duplicate {
            return Ok(Appended::Stored(position));
        }
        // The first message's id, from the message itself (it may have
        // left the stream since: then unknown).
        let ready = inner.ready().await?;
        let get = ready.stream.raw_message_builder().sequence(ack.sequence);
        let msg = found(get.send().await, "get")?.and_then(|message| {
            Envelope::decode(&message.payload)
                .ok()
                .and_then(|envelope| envelope.msg.map(|m| m.into_owned()))
        });
        Ok(Appended::Duplicate { position, msg })
    }

    async fn heads(
        &self,
        channels: &[(Channel, Option<Position>)],
    ) -> Result<Vec<Head>, BrokerError> {
        let inner = &self.inner;
        let (mut ready, mut info) = inner.info().await?;
        if inner.sync_with_leader(&ready, &info).await? {
            // The info was read before the barrier: read it again.
            (ready, info) = inner.info().await?;
        }
        let epoch = epoch_of(&info);
        let first = info.state.first_sequence;
        let newest = info.state.last_sequence;
        let limit = u64::try_from(info.config.max_messages_per_subject).ok();
        // Every sequence from the first to the last is stored: no message
        // was removed from the middle.
        let no_holes = info.state.messages
            == newest
                .saturating_add(1)
                .saturating_sub(first.min(newest.saturating_add(1)));
        // Nothing has aged out of a stream younger than its age limit, and
        // only the age limit (or a purge) can remove every message of a
        // subject: the per-subject limit keeps the newest. In such a stream
        // a subject with no message never had one, whatever the client's
        // position in it (typically 0: it connected before the stream's
        // first event and that channel never got one since).
        let nothing_aged = info.config.max_messages < 0
            && info.config.max_bytes < 0
            && (info.config.max_age.is_zero()
                || async_nats::datetime::add_std_duration(info.created, info.config.max_age)
                    .is_ok_and(|aged_from| aged_from > async_nats::datetime::now()));
        let calls = channels.iter().map(|(channel, asked)| {
            let stream = &ready.stream;
            let epoch = epoch.clone();
            async move {
                let subject = inner.history_subject(channel);
                let last = last_sequence(stream, &subject).await?;
                let retained = match asked {
                    None => true,
                    Some(_) if last == 0 && nothing_aged => true,
                    Some(p) => {
                        retained(stream, &subject, p.major(), last, first, limit, no_holes).await?
                    }
                };
                // An empty channel stands at the stream's last sequence.
                let head = if last == 0 { newest } else { last };
                Ok(Head::new(epoch, Position::new(head, 0), retained))
            }
        });
        futures_util::future::try_join_all(calls).await
    }

    async fn read(
        &self,
        channel: &Channel,
        after: Position,
        limit: usize,
    ) -> Result<Vec<Entry>, BrokerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let ready = inner.ready().await?;
        let subject = inner.history_subject(channel);
        // Nothing after `after`, the common case on a connect (every connect
        // reads each channel from its head): answered without a consumer.
        let last = last_sequence(&ready.stream, &subject).await?;
        if last <= after.major() {
            return Ok(Vec::new());
        }
        if last - after.major() <= SHORT_REPLAY {
            return read_by_gets(&ready.stream, &subject, after, limit).await;
        }
        match read_by_consumer(inner, &ready.stream, &subject, after, limit).await {
            Ok(entries) => Ok(entries),
            Err(err) => {
                tracing::debug!(error = %err, "jetstream replay consumer failed; reading message by message");
                read_by_gets(&ready.stream, &subject, after, limit).await
            }
        }
    }

    fn live_epoch(&self, _channel: &Channel) -> Option<Arc<str>> {
        lock(&self.inner.epoch).clone()
    }
}

mod read;
#[cfg(test)]
mod tests;
