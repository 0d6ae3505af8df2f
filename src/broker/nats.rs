//! The NATS backend: core NATS subjects as the bus.
//!
//! ```no_run
//! use sse_cluster::broker::nats::{NatsBroker, NatsConfig};
//! use sse_cluster::Hub;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = NatsBroker::new(NatsConfig::new("nats://127.0.0.1:4222").prefix("myapp"))?;
//! let hub = Hub::builder().broker(broker).build().await?;
//! # let _ = hub;
//! # Ok(())
//! # }
//! ```
//!
//! # Subjects
//!
//! | hub channel | NATS subject |
//! |---|---|
//! | broadcast | `{prefix}.all` |
//! | node `n` | `{prefix}.node.{n}` |
//! | topic `t` | `{prefix}.topic.{token(t)}` |
//! | user `u` | `{prefix}.user.{token(u)}` |
//!
//! The prefix defaults to `sse`. Topic and user names are arbitrary strings,
//! but a NATS subject token may not contain `.`, `*`, `>` or whitespace and
//! may not be empty; names are therefore encoded with [`encode_token`]: ASCII
//! letters, digits, `-` and `_` stand for themselves, every other byte of the
//! UTF-8 name becomes `%` and two uppercase hex digits, and the empty name is
//! the token `%`. The encoding is reversible ([`decode_token`]), and no name
//! can produce a wildcard, so a user named `>` cannot subscribe to everything.
//! Each message is one [`wire`](crate::wire) envelope, so any NATS client can
//! publish:
//!
//! ```text
//! nats pub sse.topic.news '{"v":1,"event":"headline","data":"hello"}'
//! ```
//!
//! # Permissions
//!
//! The user needs publish and subscribe permission on `{prefix}.>`, and
//! permission to subscribe to `_INBOX.>`: the broker confirms that the server
//! has its subscriptions with a request round trip (answered "no
//! responders"), both when it (re)connects and when it subscribes.
//!
//! # Ordering
//!
//! Messages of one subject arrive in order. Messages of different subjects
//! (a topic and a user, say) may not: async-nats hands each subscription its
//! own queue, and one task forwards each subscription.
//!
//! # Failure handling
//!
//! async-nats reconnects and re-subscribes by itself; the broker turns its
//! connection events into [`BrokerStatus`], reporting Up only after a round
//! trip to the server proves the re-subscriptions are in place (so the hub can report the outage
//! and send gap events when it is back). While disconnected,
//! [`Broker::publish`] fails at once with the transient
//! [`BrokerError::Unavailable`], as the Redis backend does (no buffering).
//! A slow-consumer notice (the client dropped messages because this process
//! could not keep up) is counted and makes the hub send a gap event to every
//! stream (or, with history, resync them), since the notice does not say
//! which subscription lost what. async-nats sends one notice per dropped
//! message; the hub hears at most one a second, and a burst's later drops
//! always get a notice at the end of that second.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Broker, BrokerError, BrokerStatus, BusSink, Channel};

/// Settings of a [`NatsBroker`].
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsConfig {
    /// Server URLs (`nats://[user:pass@]host:port`, `tls://…`); several may
    /// be given, comma-separated.
    pub url: String,
    /// First token of every subject. Default: `sse`.
    pub prefix: String,
    /// A `.creds` file (JWT and nkey seed).
    pub credentials_file: Option<PathBuf>,
    /// A token.
    pub token: Option<String>,
    /// A user name and password.
    pub user_password: Option<(String, String)>,
    /// Require TLS. Default: off (a `tls://` URL also turns it on).
    pub tls_required: bool,
    /// Extra root certificates (PEM) for TLS.
    pub root_certificates: Option<PathBuf>,
    /// How long a connection attempt may take. Default: 2 s.
    pub connect_timeout: Duration,
    /// How often the client pings the server; two missed answers mean the
    /// connection is dead. Default: 5 s.
    pub ping_interval: Duration,
    /// Messages buffered per subscription before the client drops them (a
    /// slow consumer). Default: 65536.
    pub subscription_capacity: usize,
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("prefix", &self.prefix)
            .field("credentials_file", &self.credentials_file)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("user", &self.user_password.as_ref().map(|(u, _)| u))
            .field("tls_required", &self.tls_required)
            .finish_non_exhaustive()
    }
}

impl NatsConfig {
    /// Defaults for the server(s) at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "sse".into(),
            credentials_file: None,
            token: None,
            user_password: None,
            tls_required: false,
            root_certificates: None,
            connect_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(5),
            subscription_capacity: 65536,
        }
    }

    /// Sets [`NatsConfig::prefix`]; it must be a valid subject (no spaces,
    /// `*` or `>`, no empty tokens).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Authenticates with a `.creds` file.
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials_file = Some(path.into());
        self
    }

    /// Authenticates with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Authenticates with a user name and password.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user_password = Some((user.into(), password.into()));
        self
    }

    /// Requires TLS, optionally trusting extra root certificates.
    pub fn tls(mut self, root_certificates: Option<PathBuf>) -> Self {
        self.tls_required = true;
        self.root_certificates = root_certificates;
        self
    }

    /// Sets the client's ping interval (dead-connection detection).
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval.max(Duration::from_millis(10));
        self
    }
}

/// Encodes a topic or user name as one NATS subject token; see the
/// [module docs](self).
///
/// ```
/// use sse_cluster::broker::nats::{decode_token, encode_token};
///
/// assert_eq!(encode_token("news"), "news");
/// assert_eq!(encode_token("a.b >"), "a%2Eb%20%3E");
/// assert_eq!(encode_token(""), "%");
/// assert_eq!(decode_token(&encode_token("héllo.*")).as_deref(), Some("héllo.*"));
/// ```
pub fn encode_token(name: &str) -> String {
    let mut token = String::with_capacity(name.len().max(1));
    push_token(&mut token, name);
    token
}

/// [`encode_token`] of `name`, appended to `out` (a subject is built in
/// one buffer, once per publish).
fn push_token(out: &mut String, name: &str) {
    if name.is_empty() {
        out.push('%');
        return;
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = name.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            continue;
        }
        // A run of kept bytes is ASCII, so both ends are char boundaries;
        // an empty run may sit inside a multi-byte character: skipped.
        if plain < i {
            out.push_str(&name[plain..i]);
        }
        out.push('%');
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
        plain = i + 1;
    }
    out.push_str(&name[plain..]);
}

/// Reverses [`encode_token`]; `None` for a token it cannot have produced.
pub fn decode_token(token: &str) -> Option<String> {
    if token == "%" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = token.get(i + 1..i + 3)?;
                if !hex
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
                {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

/// Counters of a [`NatsBroker`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsStats {
    /// Publishes handed to the client.
    pub published: u64,
    /// Publishes refused or failed (disconnected, client error).
    pub publish_failed: u64,
    /// Messages received on subscribed subjects.
    pub received: u64,
    /// Slow-consumer notices (the client dropped messages).
    pub slow_consumers: u64,
    /// Times the client (re)connected.
    pub connects: u64,
    /// Times the client lost its connection.
    pub disconnects: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    publish_failed: AtomicU64,
    received: AtomicU64,
    slow_consumers: AtomicU64,
    connects: AtomicU64,
    disconnects: AtomicU64,
}

/// A wanted subject: its channel, and the task forwarding its messages once
/// subscribed (aborting the task drops the `Subscriber`, which
/// unsubscribes). `None` while waiting for the connection.
struct Wanted {
    channel: Channel,
    task: Option<JoinHandle<()>>,
}

struct Shared {
    subscriptions: Mutex<HashMap<String, Wanted>>,
    /// When the last slow-consumer gap was signalled (ms since start).
    last_gap_ms: AtomicU64,
    /// A trailing slow-consumer notice is scheduled (see `signal_lost`).
    gap_pending: AtomicBool,
    started: std::time::Instant,
    client: OnceLock<Client>,
    prefix: String,
    connect_timeout: Duration,
    status: watch::Sender<BrokerStatus>,
    sink: OnceLock<Arc<dyn BusSink>>,
    counters: Counters,
}

/// A [`Broker`] on core NATS. See the [module docs](self).
pub struct NatsBroker {
    config: NatsConfig,
    shared: Arc<Shared>,
}

impl fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBroker")
            .field("prefix", &self.config.prefix)
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

fn unavailable(err: impl fmt::Display) -> BrokerError {
    BrokerError::Unavailable(err.to_string())
}

fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|t| {
            !t.is_empty() && !t.contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
        })
}

impl NatsBroker {
    /// Checks the configuration; connects when the hub starts it. Fails only
    /// on an invalid configuration, never because NATS is unreachable.
    pub fn new(config: NatsConfig) -> Result<Arc<Self>, BrokerError> {
        if !valid_prefix(&config.prefix) {
            return Err(BrokerError::Config(format!(
                "invalid NATS subject prefix {:?}",
                config.prefix
            )));
        }
        if config.url.trim().is_empty() {
            return Err(BrokerError::Config("no NATS server URL".into()));
        }
        Ok(Arc::new(Self {
            shared: Arc::new(Shared {
                subscriptions: Mutex::new(HashMap::new()),
                last_gap_ms: AtomicU64::new(0),
                gap_pending: AtomicBool::new(false),
                started: std::time::Instant::now(),
                client: OnceLock::new(),
                prefix: config.prefix.clone(),
                connect_timeout: config.connect_timeout,
                status: watch::channel(BrokerStatus::Down).0,
                sink: OnceLock::new(),
                counters: Counters::default(),
            }),
            config,
        }))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NatsStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NatsStats {
            published: get(&c.published),
            publish_failed: get(&c.publish_failed),
            received: get(&c.received),
            slow_consumers: get(&c.slow_consumers),
            connects: get(&c.connects),
            disconnects: get(&c.disconnects),
        }
    }

    /// The NATS subject for `channel`.
    pub fn subject(&self, channel: &Channel) -> String {
        let (kind, name) = match channel {
            Channel::Broadcast => (".all", None),
            Channel::Node(n) => (".node.", Some(n)),
            Channel::Topic(t) => (".topic.", Some(t)),
            Channel::User(u) => (".user.", Some(u)),
        };
        // One buffer, sized for a name that needs no escaping: no
        // `format!` on the publish path.
        let p = &self.config.prefix;
        let mut subject = String::with_capacity(p.len() + kind.len() + name.map_or(0, |n| n.len()));
        subject.push_str(p);
        subject.push_str(kind);
        if let Some(name) = name {
            push_token(&mut subject, name);
        }
        subject
    }

    /// The subject prefix (a history store names its own subjects after it).
    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// The client, once [`Broker::start`] has connected it (it reconnects by
    /// itself; the same client serves throughout). A history store or any
    /// other part of the app may share it, e.g. for JetStream.
    pub fn client(&self) -> Option<Client> {
        self.shared.client.get().cloned()
    }

    /// Whether the broker is connected and its subscriptions confirmed
    /// (the [`Broker::status`] now).
    pub fn is_up(&self) -> bool {
        *self.shared.status.borrow() == BrokerStatus::Up
    }

    fn subscriptions(&self) -> MutexGuard<'_, HashMap<String, Wanted>> {
        self.shared.subscriptions()
    }

    /// Stops forwarding every subject (dropping a `Subscriber` unsubscribes).
    fn drop_subscriptions(&self) {
        for (_, wanted) in self.subscriptions().drain() {
            if let Some(task) = wanted.task {
                task.abort();
            }
        }
    }

    async fn options(&self) -> Result<ConnectOptions, BrokerError> {
        let c = &self.config;
        let shared = Arc::downgrade(&self.shared);
        let mut options = ConnectOptions::new()
            .name("sse-cluster")
            .retry_on_initial_connect()
            .connection_timeout(c.connect_timeout)
            .ping_interval(c.ping_interval)
            .subscription_capacity(c.subscription_capacity.max(1))
            .reconnect_delay_callback(|attempts| {
                // Exponential with full jitter, 50 ms up to 5 s.
                let exp = 50u64.saturating_mul(1 << attempts.min(7));
                let ceiling = exp.min(5000);
                Duration::from_millis(fastrand::u64(ceiling / 2..=ceiling))
            })
            .event_callback(move |event| {
                let shared = shared.clone();
                async move {
                    if let Some(shared) = shared.upgrade() {
                        shared.on_event(event);
                    }
                }
            });
        if let Some(path) = &c.credentials_file {
            options = options.credentials_file(path).await.map_err(|e| {
                BrokerError::Config(format!("credentials file {}: {e}", path.display()))
            })?;
        }
        if let Some(token) = &c.token {
            options = options.token(token.clone());
        }
        if let Some((user, password)) = &c.user_password {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if c.tls_required {
            options = options.require_tls(true);
        }
        if let Some(path) = &c.root_certificates {
            options = options.add_root_certificates(path.clone());
        }
        Ok(options)
    }
}

/// Proves the server has processed everything this client sent before: a
/// request to a subject nobody serves comes back as "no responders" only
/// after the server has read every earlier command (a `flush` only writes
/// them to the socket).
async fn round_trip(client: &Client, prefix: &str, limit: Duration) -> Result<(), BrokerError> {
    let subject = format!("{prefix}._sync.{}", fastrand::u64(..));
    match tokio::time::timeout(limit, client.request(subject, Bytes::new())).await {
        Err(_) => Err(unavailable("nats round trip timed out")),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) if err.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        Ok(Err(err)) => Err(unavailable(err)),
    }
}

/// The `Nats-Sequence` header JetStream puts on the messages a stream
/// republishes (see [`history::jetstream`](crate::history::jetstream)).
fn jetstream_sequence(message: &async_nats::Message) -> Option<u64> {
    let value = message.headers.as_ref()?.get("Nats-Sequence")?;
    let text = value.as_str();
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl Shared {
    /// Reports Up once a round trip succeeds on the (re)connected client,
    /// retrying while it stays connected.
    async fn confirm_up(self: &Arc<Self>, client: &Client) {
        let mut delay = Duration::from_millis(50);
        loop {
            if client.connection_state() != async_nats::connection::State::Connected {
                return;
            }
            // Subjects wanted while disconnected are subscribed now, before
            // the round trip that proves the server has them all.
            let pending: Vec<(String, Channel)> = self
                .subscriptions()
                .iter()
                .filter(|(_, w)| w.task.is_none())
                .map(|(subject, w)| (subject.clone(), w.channel.clone()))
                .collect();
            for (subject, channel) in pending {
                if let Err(err) = self.start_subscription(client, subject, channel).await {
                    tracing::debug!(error = %err, "nats subscribe after reconnect failed");
                }
            }
            if round_trip(client, &self.prefix, self.connect_timeout)
                .await
                .is_ok()
            {
                super::report_status(&self.status, self.sink.get(), || BrokerStatus::Up);
                return;
            }
            tracing::warn!(
                "nats connected but a request round trip failed (may this user subscribe to _INBOX.>?); retrying"
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    fn subscriptions(&self) -> MutexGuard<'_, HashMap<String, Wanted>> {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes `subject` on the client and forwards its messages, unless
    /// it is no longer wanted or already subscribed.
    async fn start_subscription(
        self: &Arc<Self>,
        client: &Client,
        subject: String,
        channel: Channel,
    ) -> Result<(), BrokerError> {
        let mut subscriber = client
            .subscribe(subject.clone())
            .await
            .map_err(unavailable)?;
        let shared = Arc::downgrade(self);
        let forward_channel = channel.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                shared.counters.received.fetch_add(1, Ordering::Relaxed);
                if let Some(sink) = shared.sink.get() {
                    // Republished by a JetStream history stream: the stream
                    // sequence is the message's position.
                    match jetstream_sequence(&message) {
                        Some(seq) => sink.deliver_at(
                            &forward_channel,
                            message.payload,
                            crate::wire::Position::new(seq, 0),
                        ),
                        None => sink.deliver(&forward_channel, message.payload),
                    }
                }
            }
        });
        let mut subscriptions = self.subscriptions();
        match subscriptions.get_mut(&subject) {
            Some(wanted) if wanted.task.is_none() => wanted.task = Some(task),
            // Unwanted meanwhile, or subscribed by someone else: drop ours.
            _ => task.abort(),
        }
        Ok(())
    }

    /// Tells the hub that messages were dropped (a slow-consumer notice).
    /// async-nats sends one notice per dropped message, in bursts: the hub
    /// hears at most one per second, at once when the last was longer ago,
    /// otherwise once at the end of that second, so that the last drops of
    /// a burst are never left untold.
    fn signal_lost(self: Arc<Self>) {
        const EVERY_MS: u64 = 1000;
        let now = self.now_ms();
        let last = self.last_gap_ms.load(Ordering::Acquire);
        if last == 0 || now.saturating_sub(last) >= EVERY_MS {
            let won = self
                .last_gap_ms
                .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if won {
                self.tell_lost();
                return;
            }
        }
        // Within the second: one trailing notice, unless one is due already.
        if self.gap_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let wait = EVERY_MS.saturating_sub(now.saturating_sub(last));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            // Cleared first: a drop from here on schedules its own notice.
            self.gap_pending.store(false, Ordering::Release);
            self.last_gap_ms
                .store(self.now_ms().max(1), Ordering::Release);
            self.tell_lost();
        });
    }

    fn tell_lost(&self) {
        tracing::warn!("nats slow consumer: messages were dropped; streams resync");
        if let Some(sink) = self.sink.get() {
            sink.messages_lost(None);
        }
    }

    /// Milliseconds since the broker was made.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn on_event(self: Arc<Self>, event: Event) {
        let c = &self.counters;
        match event {
            Event::Connected => {
                c.connects.fetch_add(1, Ordering::Relaxed);
                tracing::info!("nats connected");
                // async-nats reports Connected before it has re-sent the
                // subscriptions: Up only once a round trip proves they are
                // back (see `confirm_up`).
                if let Some(client) = self.client.get().cloned() {
                    let shared = self.clone();
                    tokio::spawn(async move { shared.confirm_up(&client).await });
                }
            }
            Event::Disconnected | Event::Closed => {
                c.disconnects.fetch_add(1, Ordering::Relaxed);
                super::report_status(&self.status, self.sink.get(), || BrokerStatus::Down);
                tracing::warn!("nats disconnected; async-nats is reconnecting");
            }
            Event::SlowConsumer(sid) => {
                c.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(sid, "nats slow consumer: a message was dropped");
                self.signal_lost();
            }
            other => tracing::debug!(event = %other, "nats event"),
        }
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn start(&self, sink: Arc<dyn BusSink>) -> Result<(), BrokerError> {
        if self.shared.client.get().is_some() {
            return Err(BrokerError::Config("NatsBroker started twice".into()));
        }
        let _ = self.shared.sink.set(sink);
        let options = self.options().await?;
        // With retry_on_initial_connect, connect returns at once and the
        // client keeps trying in the background; only bad addresses fail.
        let client = options
            .connect(self.config.url.as_str())
            .await
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        let _ = self.shared.client.set(client.clone());
        // The first Connected event may fire before the client is stored:
        // confirm from here as well (Up is idempotent).
        let shared = self.shared.clone();
        tokio::spawn(async move { shared.confirm_up(&client).await });
        let mut status = self.shared.status.subscribe();
        let _ = tokio::time::timeout(
            self.config.connect_timeout,
            status.wait_for(|s| *s == BrokerStatus::Up),
        )
        .await;
        Ok(())
    }

    async fn publish(&self, channel: &Channel, payload: Bytes) -> Result<(), BrokerError> {
        let result = match self.shared.client.get() {
            None => Err(BrokerError::Closed),
            Some(_) if *self.shared.status.borrow() != BrokerStatus::Up => {
                Err(unavailable("nats is disconnected"))
            }
            Some(client) => client
                .publish(self.subject(channel), payload)
                .await
                .map_err(unavailable),
        };
        let counter = match &result {
            Ok(()) => &self.shared.counters.published,
            Err(_) => &self.shared.counters.publish_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn subscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        let client = self.shared.client.get().ok_or(BrokerError::Closed)?;
        let subject = self.subject(channel);
        match self.subscriptions().entry(subject.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => return Ok(()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Wanted {
                    channel: channel.clone(),
                    task: None,
                });
            }
        }
        if *self.shared.status.borrow() != BrokerStatus::Up {
            // The client does not read its command queue while it
            // reconnects: recorded here, subscribed once it is back.
            return Err(unavailable(
                "nats is disconnected; will subscribe on reconnect",
            ));
        }
        self.shared
            .start_subscription(client, subject, channel.clone())
            .await?;
        // The round trip makes sure the server has processed the SUB before
        // `connect` returns, so an event published right after is not missed.
        round_trip(client, &self.config.prefix, self.config.connect_timeout).await
    }

    async fn unsubscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        if let Some(Wanted {
            task: Some(task), ..
        }) = self.subscriptions().remove(&self.subject(channel))
        {
            task.abort();
        }
        Ok(())
    }

    fn status(&self) -> watch::Receiver<BrokerStatus> {
        self.shared.status.subscribe()
    }

    async fn shutdown(&self) -> Result<(), BrokerError> {
        self.drop_subscriptions();
        if let Some(client) = self.shared.client.get() {
            if *self.shared.status.borrow() == BrokerStatus::Up {
                let _ = tokio::time::timeout(self.config.connect_timeout, client.flush()).await;
            }
        }
        Ok(())
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        self.drop_subscriptions();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_valid_and_reversible() {
        for name in [
            "news", "a.b", "*", ">", "a b", "", "héllo", "%", "%41", "x\ty", "-_", "a>b.*",
        ] {
            let token = encode_token(name);
            assert!(!token.is_empty());
            assert!(
                !token.contains(|c: char| c == '.'
                    || c == '*'
                    || c == '>'
                    || c.is_whitespace()
                    || !c.is_ascii()),
                "{name:?} -> {token:?}"
            );
            assert_eq!(
                decode_token(&token).as_deref(),
                Some(name),
                "{name:?} -> {token:?}"
            );
        }
        assert_ne!(encode_token("%41"), encode_token("A"));
        for bad in ["a.b", "%4", "%zz", "%ff", "a b", "", "%00%"] {
            assert_eq!(decode_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn subjects_and_config_checks() {
        let broker =
            NatsBroker::new(NatsConfig::new("nats://127.0.0.1:1").prefix("app.sse")).unwrap();
        assert_eq!(
            broker.subject(&Channel::Topic(">".into())),
            "app.sse.topic.%3E"
        );
        assert_eq!(broker.subject(&Channel::User("".into())), "app.sse.user.%");
        assert_eq!(broker.subject(&Channel::Broadcast), "app.sse.all");
        for bad in ["", "a..b", "a.>", "a b", "*"] {
            assert!(
                NatsBroker::new(NatsConfig::new("nats://x").prefix(bad)).is_err(),
                "{bad:?}"
            );
        }
        let debug = format!(
            "{:?}",
            NatsConfig::new("nats://x")
                .token("secret")
                .user_password("u", "pw")
        );
        assert!(
            !debug.contains("secret") && !debug.contains("pw"),
            "{debug}"
        );
    }
}
