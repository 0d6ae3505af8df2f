//! The Redis backend: Redis pub/sub (or sharded pub/sub) as the bus.
//!
//! ```no_run
//! use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
//! use sse_cluster::Hub;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = RedisBroker::new(RedisConfig::new("redis://127.0.0.1:6379").prefix("myapp:"))?;
//! let hub = Hub::builder().broker(broker).build().await?;
//! # let _ = hub;
//! # Ok(())
//! # }
//! ```
//!
//! # Channels
//!
//! | hub channel | Redis channel |
//! |---|---|
//! | broadcast | `{prefix}all` |
//! | node `n` | `{prefix}node:{n}` |
//! | topic `t` | `{prefix}topic:{t}` |
//! | user `u` | `{prefix}user:{u}` |
//!
//! The prefix defaults to `sse:`. Names are used as they are (Redis channel
//! names are binary safe). Each message is one [`wire`](crate::wire)
//! envelope, so any Redis client can publish:
//!
//! ```text
//! redis-cli PUBLISH sse:topic:news '{"v":1,"event":"headline","data":"hello"}'
//! ```
//!
//! With [`RedisConfig::sharded`], the broker uses `SPUBLISH`/`SSUBSCRIBE`
//! (Redis 7+) on the same names.
//!
//! # Connections and failure handling
//!
//! The broker keeps two connections. Publishes go through one multiplexed
//! connection, straight from the caller's task: concurrent publishes are
//! written back to back without waiting for each other's replies, so under
//! load they are pipelined and throughput approaches raw Redis.
//!
//! Subscriptions live on a second, dedicated RESP3 connection (Redis 6+), for
//! three reasons: a burst of publishes never delays the delivery of received
//! messages or the liveness probe; received messages are handed to the hub
//! straight from the connection's push handler, with no extra task hop; and
//! RESP3 lets the same connection answer `PING` while subscribed. Resubscribing
//! after a reconnect is done here, not by redis-rs, because the broker must
//! know when every interest is back before it reports [`BrokerStatus::Up`].
//!
//! On any connection loss (or a liveness `PING` that gets no answer within
//! [`RedisConfig::response_timeout`], which catches a subscription that died
//! silently), the broker reports [`BrokerStatus::Down`], reconnects with
//! exponential backoff and full jitter, re-subscribes every current interest,
//! and reports `Up` again.
//!
//! # Sentinel
//!
//! With [`RedisConfig::sentinel`] (or [`RedisConfig::from_sentinel_url`],
//! `redis+sentinel://h1:26379,h2:26379/NAME`), every connect first asks the
//! sentinels, in order, where the primary is, and checks with `ROLE` that
//! the server reached is the primary; the liveness probe asks `ROLE` too.
//! When the primary dies, both connections drop, the broker reports Down,
//! and it reconnects (with backoff) to whatever the sentinels name once
//! they have promoted a replica, re-subscribes everything and reports Up:
//! the hub sends its gap event, or replays from the history. When the old
//! primary is only demoted (a failover while it stayed reachable), the
//! probe sees `ROLE` say `slave` within [`RedisConfig::ping_interval`] and
//! does the same, so publishes never go on to a replica (where they would
//! reach only that replica's subscribers) while the broker says Up.
//!
//! While the publish connection is down, [`Broker::publish`] fails at once
//! with the transient [`BrokerError::Unavailable`] (no buffering: a late
//! event can be worse than a lost one, and the caller knows which events
//! failed). Messages published by other nodes while the subscription is down
//! are lost; the hub sends its clients a gap event when the bus comes back.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::{Broker, BrokerError, BrokerStatus, BusSink, Channel};

mod sentinel;
mod tasks;

pub use sentinel::SentinelConfig;
use tasks::{run_publisher, run_subscriber, Conn};

/// Settings of a [`RedisBroker`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS
    /// (append `#insecure` to skip certificate verification).
    pub url: String,
    /// Prefix of every channel name. Default: `sse:`.
    pub prefix: String,
    /// Use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7+). Default: off.
    pub sharded: bool,
    /// Redis Cluster seed nodes; when set, `url` is ignored and the broker
    /// talks to the cluster with sharded pub/sub. Default: empty.
    pub cluster: Vec<String>,
    /// How often the subscription connection is probed with `PING`. Default: 5 s.
    pub ping_interval: Duration,
    /// How long a command (and the probe) may take before the connection is
    /// considered dead. Default: 2 s.
    pub response_timeout: Duration,
    /// How long a connection attempt may take. Default: 2 s.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles up to `backoff_max`. Default: 50 ms.
    pub backoff_min: Duration,
    /// Longest reconnect delay. Default: 5 s.
    pub backoff_max: Duration,
    /// Reach the primary through Redis Sentinel; `url` then gives only the
    /// primary's credentials, database and TLS. Default: none.
    pub sentinel: Option<SentinelConfig>,
}

impl RedisConfig {
    /// Defaults for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "sse:".into(),
            sharded: false,
            cluster: Vec::new(),
            ping_interval: Duration::from_secs(5),
            response_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            sentinel: None,
        }
    }

    /// A primary watched by Redis Sentinel: before every (re)connect the
    /// broker asks `sentinel_urls` (`redis://host:26379`…, in order) where
    /// primary `master` is, and it follows failovers (see the module docs,
    /// "Sentinel"). Set the primary's credentials, database or TLS with
    /// [`RedisConfig::url`] (its host and port are ignored), or use
    /// [`RedisConfig::from_sentinel_url`].
    pub fn sentinel<I, S>(sentinel_urls: I, master: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut config = Self::new("redis://127.0.0.1");
        config.sentinel = Some(SentinelConfig {
            sentinels: sentinel_urls.into_iter().map(Into::into).collect(),
            master: master.into(),
        });
        config
    }

    /// `redis+sentinel://[user:password@]host:port[,host:port…]/NAME[/DB]`
    /// (`rediss+sentinel://` for TLS): the sentinels, the primary's name,
    /// and the primary's credentials and database (sentinels are asked
    /// without credentials).
    ///
    /// ```
    /// use sse_cluster::broker::redis::RedisConfig;
    /// let config = RedisConfig::from_sentinel_url("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/sse")?;
    /// assert_eq!(config.sentinel.map(|s| s.master).as_deref(), Some("sse"));
    /// # Ok::<(), sse_cluster::BrokerError>(())
    /// ```
    pub fn from_sentinel_url(url: &str) -> Result<Self, BrokerError> {
        let (sentinel, primary) = sentinel::parse_url(url)?;
        let mut config = Self::new(primary);
        config.sentinel = Some(sentinel);
        Ok(config)
    }

    /// Sets [`RedisConfig::prefix`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`RedisConfig::sharded`].
    pub fn sharded(mut self, sharded: bool) -> Self {
        self.sharded = sharded;
        self
    }

    /// A Redis Cluster, reached through any of `seed_urls`: sharded pub/sub
    /// (`SPUBLISH`/`SSUBSCRIBE`, so each message is handled by the shard that
    /// owns its channel's slot instead of being broadcast to every node of
    /// the cluster).
    pub fn cluster<I, S>(seed_urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let cluster: Vec<String> = seed_urls.into_iter().map(Into::into).collect();
        let mut config = Self::new(cluster.first().cloned().unwrap_or_default());
        config.cluster = cluster;
        config.sharded = true;
        config
    }

    /// Sets the liveness probe interval and the response timeout.
    pub fn liveness(mut self, ping_interval: Duration, response_timeout: Duration) -> Self {
        self.ping_interval = ping_interval;
        self.response_timeout = response_timeout;
        self
    }

    /// Sets the reconnect backoff bounds.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }
}

/// Counters of a [`RedisBroker`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Publishes Redis acknowledged.
    pub published: u64,
    /// Publishes refused or failed (Redis down, timeout).
    pub publish_failed: u64,
    /// Messages received on subscribed channels.
    pub received: u64,
    /// Received messages on channels outside this broker's prefix (ignored).
    pub foreign: u64,
    /// Times the subscription connection was (re)established.
    pub connects: u64,
    /// Times a connection was lost or found dead.
    pub disconnects: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    publish_failed: AtomicU64,
    received: AtomicU64,
    foreign: AtomicU64,
    connects: AtomicU64,
    disconnects: AtomicU64,
}

enum Control {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(Channel),
}

struct Shared {
    config: RedisConfig,
    client: redis::Client,
    /// Cluster seed nodes (RESP3), empty for a single server.
    cluster_nodes: Vec<redis::ConnectionInfo>,
    /// The channels wanted, as the hub's own `Channel`s (sharing its
    /// names): the Redis names are built when they are (re)subscribed.
    interests: Mutex<HashSet<Channel>>,
    status: watch::Sender<BrokerStatus>,
    sub_up: AtomicBool,
    pub_up: AtomicBool,
    /// The publish connection and its generation, `None` while it is being
    /// replaced.
    pub_conn: watch::Sender<Option<(u64, Conn)>>,
    /// Generation of the publish connection a publish found broken.
    pub_broken: AtomicU64,
    pub_broken_notify: tokio::sync::Notify,
    sink: OnceLock<Arc<dyn BusSink>>,
    stop: watch::Sender<bool>,
    counters: Counters,
}

impl Shared {
    /// A failed command as a [`BrokerError`]: a broken connection is
    /// reported (the publisher task replaces it) and is `Unavailable`; a
    /// server refusal is transient only when redis-rs says a retry may
    /// succeed (`TRYAGAIN`, `LOADING`, `CLUSTERDOWN`, a timeout...), so
    /// `NOPERM`, a wrong type or a script error is not.
    fn command_failed(&self, generation: u64, err: redis::RedisError) -> BrokerError {
        if err.is_io_error() || err.is_connection_dropped() {
            self.report_broken(generation);
            return unavailable(err);
        }
        BrokerError::Backend {
            transient: err.is_timeout() || is_retryable(&err),
            source: Box::new(err),
        }
    }

    fn interests(&self) -> MutexGuard<'_, HashSet<Channel>> {
        self.interests.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_up(&self, flag: &AtomicBool, up: bool) {
        flag.store(up, Ordering::SeqCst);
        // Both flags are read under the watch's lock, so two tasks changing
        // their flag at once cannot leave a stale status behind.
        super::report_status(&self.status, self.sink.get(), || {
            let both = self.sub_up.load(Ordering::SeqCst) && self.pub_up.load(Ordering::SeqCst);
            if both {
                BrokerStatus::Up
            } else {
                BrokerStatus::Down
            }
        });
    }

    /// A clone of the publish connection; waits (briefly) while it is being
    /// replaced.
    async fn publish_connection(&self) -> Option<(u64, Conn)> {
        let mut conn = self.pub_conn.subscribe();
        let current = conn.borrow().clone();
        if current.is_some() {
            return current;
        }
        let limit = self.config.connect_timeout;
        let ready = tokio::time::timeout(limit, async {
            conn.wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|c| c.clone())
        })
        .await;
        ready.ok().flatten()
    }

    /// A publish found connection `generation` broken; only the current
    /// connection's failures make the publisher reconnect, not late failures
    /// of one it already replaced.
    fn report_broken(&self, generation: u64) {
        self.pub_broken.store(generation, Ordering::SeqCst);
        self.pub_broken_notify.notify_waiters();
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn name(&self, channel: &Channel) -> String {
        let (kind, name): (&str, &str) = match channel {
            Channel::Broadcast => ("all", ""),
            Channel::Node(n) => ("node:", n),
            Channel::Topic(t) => ("topic:", t),
            Channel::User(u) => ("user:", u),
        };
        // One exact allocation per publish, no `format!`.
        let p = &self.config.prefix;
        let mut out = String::with_capacity(p.len() + kind.len() + name.len());
        out.push_str(p);
        out.push_str(kind);
        out.push_str(name);
        out
    }

    fn channel(&self, name: &[u8]) -> Option<Channel> {
        let rest = name.strip_prefix(self.config.prefix.as_bytes())?;
        let rest = std::str::from_utf8(rest).ok()?;
        if rest == "all" {
            return Some(Channel::Broadcast);
        }
        let (kind, value) = rest.split_once(':')?;
        match kind {
            "node" => Some(Channel::Node(value.into())),
            "topic" => Some(Channel::Topic(value.into())),
            "user" => Some(Channel::User(value.into())),
            _ => None,
        }
    }

    /// Called by the subscription connection for every push it receives.
    fn on_push(&self, info: PushInfo, lost: &mpsc::UnboundedSender<()>) {
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = info.data.into_iter();
                let (Some(Value::BulkString(name)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    return;
                };
                self.counters.received.fetch_add(1, Ordering::Relaxed);
                match (self.channel(&name), self.sink.get()) {
                    (Some(channel), Some(sink)) => sink.deliver(&channel, Bytes::from(payload)),
                    _ => {
                        self.counters.foreign.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            PushKind::Disconnection => {
                let _ = lost.send(());
            }
            _ => {}
        }
    }

    fn connection_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.response_timeout))
    }
}

/// A [`Broker`] on Redis pub/sub. See the [module docs](self).
pub struct RedisBroker {
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
    tasks: Mutex<Option<mpsc::UnboundedReceiver<Control>>>,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.shared.config.prefix)
            .field("sharded", &self.shared.config.sharded)
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

fn unavailable(err: impl fmt::Display) -> BrokerError {
    BrokerError::Unavailable(err.to_string())
}

impl RedisBroker {
    /// Checks the configuration; connects when the hub starts it. Fails only
    /// on an invalid URL, never because Redis is unreachable.
    pub fn new(mut config: RedisConfig) -> Result<Arc<Self>, BrokerError> {
        // The fields are public: clamp what would break the tasks.
        config.ping_interval = config.ping_interval.max(Duration::from_millis(10));
        config.response_timeout = config.response_timeout.max(Duration::from_millis(10));
        config.backoff_min = config.backoff_min.max(Duration::from_millis(1));
        config.backoff_max = config.backoff_max.max(config.backoff_min);
        let client = redis::Client::open(resp3_info(&config.url)?)
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        let cluster_nodes = config
            .cluster
            .iter()
            .map(|url| resp3_info(url))
            .collect::<Result<Vec<_>, _>>()?;
        let (control, control_rx) = mpsc::unbounded_channel();
        Ok(Arc::new(Self {
            shared: Arc::new(Shared {
                config,
                client,
                cluster_nodes,
                interests: Mutex::new(HashSet::new()),
                status: watch::channel(BrokerStatus::Down).0,
                sub_up: AtomicBool::new(false),
                pub_up: AtomicBool::new(false),
                pub_conn: watch::channel(None).0,
                pub_broken: AtomicU64::new(0),
                pub_broken_notify: tokio::sync::Notify::new(),
                sink: OnceLock::new(),
                stop: watch::channel(false).0,
                counters: Counters::default(),
            }),
            control,
            tasks: Mutex::new(Some(control_rx)),
        }))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RedisStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RedisStats {
            published: get(&c.published),
            publish_failed: get(&c.publish_failed),
            received: get(&c.received),
            foreign: get(&c.foreign),
            connects: get(&c.connects),
            disconnects: get(&c.disconnects),
        }
    }

    /// The Redis channel name for `channel`.
    pub fn channel_name(&self, channel: &Channel) -> String {
        self.shared.name(channel)
    }

    /// Whether the broker uses sharded pub/sub (`SPUBLISH`): a store that
    /// publishes from a script must use the same command.
    pub fn is_sharded(&self) -> bool {
        self.shared.config.sharded
    }

    /// Runs a script on the broker's publish connection, pipelined with
    /// its publishes (the history store's appends and reads share it this
    /// way). Fails at once with a transient error while the connection is
    /// down.
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, BrokerError> {
        self.invoke_then(invocation, None)
            .await
            .map(|(reply, _)| reply)
    }

    /// Like [`RedisBroker::invoke`], then `then` (if any) on the same
    /// connection: a `WAIT` counts only the writes of the connection it is
    /// sent on, so it must follow the script there, not on a connection
    /// made after a reconnect.
    pub async fn invoke_then<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        then: Option<&redis::Cmd>,
    ) -> Result<(T, Option<redis::Value>), BrokerError> {
        let (generation, mut conn) = self.ready_connection().await?;
        let result: redis::RedisResult<_> = async {
            let reply = match &mut conn {
                Conn::Single(c) => invocation.invoke_async(c).await?,
                Conn::Cluster(c) => invocation.invoke_async(c).await?,
            };
            let after = match (then, &mut conn) {
                (None, _) => None,
                (Some(cmd), Conn::Single(c)) => Some(cmd.query_async(c).await?),
                (Some(cmd), Conn::Cluster(c)) => Some(cmd.query_async(c).await?),
            };
            Ok((reply, after))
        }
        .await;
        result.map_err(|err| self.shared.command_failed(generation, err))
    }

    /// Runs a command on the broker's publish connection (see
    /// [`RedisBroker::invoke`]).
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, BrokerError> {
        let (generation, mut conn) = self.ready_connection().await?;
        let result = match &mut conn {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        };
        result.map_err(|err| self.shared.command_failed(generation, err))
    }

    async fn ready_connection(&self) -> Result<(u64, Conn), BrokerError> {
        let shared = &self.shared;
        if shared.stopped() {
            return Err(BrokerError::Closed);
        }
        if !shared.pub_up.load(Ordering::SeqCst) {
            return Err(unavailable("redis publish connection is down"));
        }
        shared
            .publish_connection()
            .await
            .ok_or_else(|| unavailable("redis publish connection is reconnecting"))
    }
}

/// True when redis-rs says retrying the command may succeed.
fn is_retryable(err: &redis::RedisError) -> bool {
    !matches!(err.retry_method(), redis::RetryMethod::NoRetry)
}

/// Parses `url` into connection settings that speak RESP3 (needed for push
/// messages on a multiplexed connection).
fn resp3_info(url: &str) -> Result<redis::ConnectionInfo, BrokerError> {
    let info = url
        .into_connection_info()
        .map_err(|e| BrokerError::Config(format!("{}: {e}", redact(url))))?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Ok(info.set_redis_settings(settings))
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn start(&self, sink: Arc<dyn BusSink>) -> Result<(), BrokerError> {
        let Some(control_rx) = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Err(BrokerError::Config("RedisBroker started twice".into()));
        };
        let _ = self.shared.sink.set(sink);
        tokio::spawn(run_subscriber(self.shared.clone(), control_rx));
        tokio::spawn(run_publisher(self.shared.clone()));
        // Give a reachable server the chance to be up before the hub's first
        // subscriptions; an unreachable one is retried in the background.
        let mut status = self.shared.status.subscribe();
        let _ = tokio::time::timeout(
            self.shared.config.connect_timeout,
            status.wait_for(|s| *s == BrokerStatus::Up),
        )
        .await;
        Ok(())
    }

    async fn publish(&self, channel: &Channel, payload: Bytes) -> Result<(), BrokerError> {
        let shared = &self.shared;
        let result = if shared.stopped() {
            Err(BrokerError::Closed)
        } else if !shared.pub_up.load(Ordering::SeqCst) {
            Err(unavailable("redis publish connection is down"))
        } else {
            match shared.publish_connection().await {
                None => Err(unavailable("redis publish connection is reconnecting")),
                Some((generation, mut conn)) => {
                    let name = shared.name(channel);
                    conn.publish(shared.config.sharded, &name, &payload)
                        .await
                        .map_err(|err| shared.command_failed(generation, err))
                }
            }
        };
        let counter = match &result {
            Ok(()) => &shared.counters.published,
            Err(_) => &shared.counters.publish_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn subscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        let name = self.shared.name(channel);
        self.shared.interests().insert(channel.clone());
        // Always queued, even while reconnecting: a reconnect that copied
        // the interests just before this insert still subscribes it when it
        // serves its queue.
        let (done, wait) = oneshot::channel();
        self.control
            .send(Control::Subscribe(name, done))
            .map_err(|_| BrokerError::Closed)?;
        if !self.shared.sub_up.load(Ordering::SeqCst) {
            return Err(unavailable(
                "redis subscription connection is down; will subscribe on reconnect",
            ));
        }
        let limit = self.shared.config.response_timeout * 2;
        match tokio::time::timeout(limit, wait).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BrokerError::Closed),
            Err(_) => Err(unavailable(
                "subscribe timed out; will subscribe on reconnect",
            )),
        }
    }

    async fn unsubscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        if self.shared.interests().remove(channel) {
            let _ = self.control.send(Control::Unsubscribe(channel.clone()));
        }
        Ok(())
    }

    fn status(&self) -> watch::Receiver<BrokerStatus> {
        self.shared.status.subscribe()
    }

    async fn shutdown(&self) -> Result<(), BrokerError> {
        // Every publish is awaited by its caller on the connection itself:
        // nothing is queued here that could still need flushing.
        self.shared.stop.send_replace(true);
        Ok(())
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        let broker =
            RedisBroker::new(RedisConfig::new("redis://127.0.0.1:1").prefix("p:")).unwrap();
        let shared = &broker.shared;
        for channel in [
            Channel::Broadcast,
            Channel::Node("n1".into()),
            Channel::Topic("a:b c".into()),
            Channel::User("".into()),
        ] {
            let name = shared.name(&channel);
            assert!(name.starts_with("p:"));
            assert_eq!(shared.channel(name.as_bytes()), Some(channel));
        }
        assert_eq!(shared.channel(b"other:topic:x"), None);
        assert_eq!(shared.channel(b"p:weird"), None);
    }

    #[test]
    fn bad_urls_are_config_errors_without_the_password() {
        let err = RedisBroker::new(RedisConfig::new("redis://user:secret@[::1")).unwrap_err();
        assert!(matches!(err, BrokerError::Config(_)));
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(!err.is_transient());
    }
}
