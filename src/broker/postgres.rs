//! The Postgres backend: `LISTEN`/`NOTIFY` as the bus.
//!
//! ```no_run
//! use sse_cluster::broker::postgres::{PostgresBroker, PostgresConfig};
//! use sse_cluster::Hub;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = PostgresBroker::new(
//!     PostgresConfig::new("postgres://app@127.0.0.1:5432/app").prefix("myapp_"),
//! )?;
//! let hub = Hub::builder().broker(broker).build().await?;
//! # let _ = hub;
//! # Ok(())
//! # }
//! ```
//!
//! # Channels
//!
//! Postgres channel names are identifiers of at most 63 bytes; topic and
//! user names are any UTF-8 of up to 1 KiB. Each hub channel maps to a name
//! made only of `a-z`, `0-9` and `_` (so `NOTIFY sse_t_news` and
//! `NOTIFY "sse_t_news"` name the same channel):
//!
//! | hub channel | Postgres channel |
//! |---|---|
//! | broadcast | `{prefix}all` |
//! | topic `t` | `{prefix}t_{t}` when `t` is only `a-z`, `0-9` and `_` and the whole fits in 63 bytes; else `{prefix}th_{h}` |
//! | user `u` | `{prefix}u_{u}`, else `{prefix}uh_{h}` |
//! | node `n` | `{prefix}n_{n}`, else `{prefix}nh_{h}` |
//!
//! `{h}` is the first 32 lowercase hex digits (128 bits) of the SHA-256 of
//! the name's UTF-8 bytes. In SQL:
//!
//! ```sql
//! SELECT 'sse_th_' || left(encode(sha256(convert_to('Breaking News', 'UTF8')), 'hex'), 32);
//! ```
//!
//! The prefix defaults to `sse_` (1 to 24 bytes of `a-z`, `0-9` and `_`,
//! starting with a letter or `_`). Plain and hashed names never meet: after
//! the kind letter a plain name has `_`, a hashed one `h`.
//!
//! # Notifications
//!
//! A notification's payload is one [`wire`](crate::wire) envelope, so any
//! Postgres client can publish:
//!
//! ```text
//! psql -c "NOTIFY sse_t_news, '{\"v\":1,\"event\":\"headline\",\"data\":\"hello\"}'"
//! psql -c "SELECT pg_notify('sse_t_news', '{\"v\":1,\"data\":\"hello\"}')"
//! ```
//!
//! Postgres refuses payloads of 8000 bytes or more (and payloads that are
//! not text, or hold a NUL byte). Such a message is stored in the table
//! `{prefix}payloads` (column `payload`, `bytea`) and the notification
//! carries a reference instead: `#` and the row's `id` in decimal (`#42`).
//! Receivers read the row and deliver its bytes, in order with the
//! channel's other messages. Other publishers can do the same in one
//! statement:
//!
//! ```sql
//! WITH p AS (INSERT INTO sse_payloads (payload)
//!            VALUES (convert_to('{"v":1,"data":"…"}', 'UTF8')) RETURNING id)
//! SELECT pg_notify('sse_t_news', '#' || id) FROM p;
//! ```
//!
//! The table is created by the first large publish ([`payload_table_sql`]
//! is its SQL) and rows older than [`PostgresConfig::large_payload_ttl`]
//! (default 60 s) are deleted by every node that publishes. A reference
//! that is malformed or names a missing row is counted
//! ([`PostgresStats::bad_references`]) and reported to the hub as lost
//! messages (its clients get the gap event).
//!
//! # Connections and failure handling
//!
//! One dedicated connection listens: it issues `LISTEN` only for the
//! channels the hub holds (plus its node and the broadcast channel) and
//! `UNLISTEN` when the last follower leaves. Notifications are handed to
//! the hub straight from the task that reads the connection. It is probed
//! with an empty query every [`PostgresConfig::ping_interval`]; on loss (or
//! a probe that gets no answer within [`PostgresConfig::response_timeout`])
//! the broker reports [`BrokerStatus::Down`], reconnects with exponential
//! backoff and full jitter, issues every `LISTEN` again and reports `Up`;
//! the hub then sends its streams the gap event.
//!
//! Publishes go through a small pool of other connections
//! ([`PostgresConfig::pool_size`], default 2), never the listening one:
//! `SELECT pg_notify($1, $2)` prepared once per connection, pipelined with
//! the other publishes in flight on that connection. Each channel always
//! uses the same pooled connection, so one channel's publishes commit in
//! order. While the server is unreachable, [`Broker::publish`] fails with
//! the transient [`BrokerError::Unavailable`] (no buffering).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Connection, NoTls, Socket};

use super::{Broker, BrokerError, BrokerStatus, BusSink, Channel};

mod listener;
mod names;
mod pool;

pub use names::{MAX_IDENTIFIER_LEN, MAX_PREFIX_LEN};
pub use pool::PgClient;

/// Largest notification payload Postgres accepts, in bytes (it refuses
/// 8000 and more). Larger envelopes travel by reference (see the module
/// docs).
pub const NOTIFY_PAYLOAD_LIMIT: usize = 7999;

/// Settings of a [`PostgresBroker`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// `postgres://[user[:password]@]host[:port]/dbname[?options]` or a
    /// `key=value` connection string (as tokio-postgres reads them). Several
    /// hosts with `target_session_attrs=read-write`
    /// (`postgres://app@db1,db2/app?target_session_attrs=read-write`) make
    /// every reconnect find the primary after a failover. TLS is not
    /// supported by this backend yet.
    pub url: String,
    /// Prefix of every channel and table name. Default: `sse_`.
    pub prefix: String,
    /// Publish connections. Default: 2.
    pub pool_size: usize,
    /// How often the listening connection is probed. Default: 5 s.
    pub ping_interval: Duration,
    /// How long a probe, a `LISTEN` or a query may take before the
    /// connection is considered dead. Default: 2 s.
    pub response_timeout: Duration,
    /// How long a connection attempt may take. Default: 2 s.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles up to `backoff_max`. Default: 50 ms.
    pub backoff_min: Duration,
    /// Longest reconnect delay. Default: 5 s.
    pub backoff_max: Duration,
    /// How long a large event's row is kept in `{prefix}payloads` for the
    /// receivers to read. Default: 60 s.
    pub large_payload_ttl: Duration,
}

impl PostgresConfig {
    /// Defaults for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "sse_".into(),
            pool_size: 2,
            ping_interval: Duration::from_secs(5),
            response_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            large_payload_ttl: Duration::from_secs(60),
        }
    }

    /// Sets [`PostgresConfig::prefix`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`PostgresConfig::pool_size`] (at least 1).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
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

/// Counters of a [`PostgresBroker`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresStats {
    /// Publishes Postgres committed.
    pub published: u64,
    /// Of those, messages sent by reference (too large for a notification,
    /// or not text).
    pub published_by_reference: u64,
    /// Publishes refused or failed.
    pub publish_failed: u64,
    /// Notifications received on listened channels.
    pub received: u64,
    /// Of those, references whose row was read and delivered.
    pub received_by_reference: u64,
    /// References that were malformed or named a missing row (reported to
    /// the hub as lost messages).
    pub bad_references: u64,
    /// Notifications on channels this broker does not listen to (ignored).
    pub foreign: u64,
    /// Times the listening connection was (re)established.
    pub connects: u64,
    /// Times it was lost or found dead.
    pub disconnects: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    published_by_reference: AtomicU64,
    publish_failed: AtomicU64,
    received: AtomicU64,
    received_by_reference: AtomicU64,
    bad_references: AtomicU64,
    foreign: AtomicU64,
    connects: AtomicU64,
    disconnects: AtomicU64,
}

enum Control {
    Listen(String, oneshot::Sender<Result<(), BrokerError>>),
    Unlisten(String),
}

type PgConnection = Connection<Socket, NoTlsStream>;

struct Shared {
    config: PostgresConfig,
    pg: tokio_postgres::Config,
    /// Listened Postgres channel names and the hub channel of each.
    interests: RwLock<HashMap<String, Channel>>,
    status: watch::Sender<BrokerStatus>,
    sink: OnceLock<Arc<dyn BusSink>>,
    stop: watch::Sender<bool>,
    counters: Counters,
    pool: pool::Pool,
    /// Set once `{prefix}payloads` is known to exist.
    payload_table: tokio::sync::OnceCell<()>,
    /// SQL of a large publish, and of a reference read.
    large_publish_sql: String,
    large_read_sql: String,
}

impl Shared {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn set_status(&self, status: BrokerStatus) {
        super::report_status(&self.status, self.sink.get(), || status);
    }

    async fn connect(&self) -> Result<(Client, PgConnection), BrokerError> {
        match tokio::time::timeout(self.config.connect_timeout, self.pg.connect(NoTls)).await {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(err)) => Err(query_failed(err)),
            Err(_) => Err(unavailable("postgres connect timed out")),
        }
    }

    fn name(&self, channel: &Channel) -> String {
        names::channel_name(&self.config.prefix, channel)
    }

    fn payload_table_name(&self) -> String {
        format!("{}payloads", self.config.prefix)
    }

    async fn ensure_payload_table(&self) -> Result<(), BrokerError> {
        self.payload_table
            .get_or_try_init(|| async {
                let conn = self.pool.get(self, 0).await?;
                conn.client()
                    .batch_execute(&payload_table_sql(&self.config.prefix))
                    .await
                    .map_err(query_failed)
            })
            .await
            .map(drop)
    }
}

/// The SQL that creates `{prefix}payloads` (large events by reference) if
/// it does not exist, in one transaction serialised by an advisory lock (so
/// that nodes starting together do not race): a migration may run it once
/// instead.
pub fn payload_table_sql(prefix: &str) -> String {
    format!(
        "SELECT pg_advisory_xact_lock(hashtext('sse-cluster schema {prefix}'));\n\
         CREATE TABLE IF NOT EXISTS \"{prefix}payloads\" (\n\
         \x20 id bigserial PRIMARY KEY,\n\
         \x20 created_at timestamptz NOT NULL DEFAULT now(),\n\
         \x20 payload bytea NOT NULL\n\
         );\n\
         CREATE INDEX IF NOT EXISTS \"{prefix}payloads_created_at\" ON \"{prefix}payloads\" (created_at);\n"
    )
}

/// A failed query or connect as a [`BrokerError`]: a lost connection is
/// `Unavailable`; a server error is transient for the SQLSTATE classes that
/// may pass (connection exceptions, serialization failures and deadlocks,
/// insufficient resources, operator intervention such as a shutdown).
pub fn query_failed(err: tokio_postgres::Error) -> BrokerError {
    if err.is_closed() {
        return unavailable(err);
    }
    match err.code() {
        Some(code) => {
            let class = code.code().get(..2).unwrap_or("");
            let transient = matches!(class, "08" | "40" | "53" | "57" | "58");
            BrokerError::Backend {
                source: Box::new(err),
                transient,
            }
        }
        // No SQLSTATE: an I/O, connect or protocol failure.
        None => unavailable(err),
    }
}

fn unavailable(err: impl fmt::Display) -> BrokerError {
    BrokerError::Unavailable(err.to_string())
}

/// The connection string without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ if url.contains("password") => "(connection string with a password)".into(),
        _ => url.to_owned(),
    }
}

/// Why one publish attempt failed.
enum SendError {
    /// The connection was closed before the request went out.
    Closed,
    Broker(BrokerError),
}

impl From<BrokerError> for SendError {
    fn from(err: BrokerError) -> Self {
        SendError::Broker(err)
    }
}

/// A [`Broker`] on Postgres `LISTEN`/`NOTIFY`. See the [module docs](self).
pub struct PostgresBroker {
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
    tasks: Mutex<Option<mpsc::UnboundedReceiver<Control>>>,
}

impl fmt::Debug for PostgresBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBroker")
            .field("prefix", &self.shared.config.prefix)
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

impl PostgresBroker {
    /// Checks the configuration; connects when the hub starts it. Fails only
    /// on an invalid connection string or prefix, never because Postgres is
    /// unreachable.
    pub fn new(mut config: PostgresConfig) -> Result<Arc<Self>, BrokerError> {
        names::check_prefix(&config.prefix).map_err(BrokerError::Config)?;
        // The fields are public: clamp what would break the tasks.
        config.ping_interval = config.ping_interval.max(Duration::from_millis(10));
        config.response_timeout = config.response_timeout.max(Duration::from_millis(10));
        config.backoff_min = config.backoff_min.max(Duration::from_millis(1));
        config.backoff_max = config.backoff_max.max(config.backoff_min);
        config.pool_size = config.pool_size.max(1);
        config.large_payload_ttl = config.large_payload_ttl.max(Duration::from_secs(1));
        let mut pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| BrokerError::Config(format!("{}: {e}", redact(&config.url))))?;
        pg.connect_timeout(config.connect_timeout)
            .keepalives(true)
            .keepalives_idle(config.ping_interval.max(Duration::from_secs(1)));
        if pg.get_application_name().is_none() {
            pg.application_name("sse-cluster");
        }
        let table = format!("\"{}payloads\"", config.prefix);
        let (control, control_rx) = mpsc::unbounded_channel();
        Ok(Arc::new(Self {
            shared: Arc::new(Shared {
                pool: pool::Pool::new(config.pool_size),
                large_publish_sql: format!(
                    "WITH p AS (INSERT INTO {table} (payload) VALUES ($2::bytea) RETURNING id) \
                     SELECT pg_notify($1::text, '#' || id) FROM p"
                ),
                large_read_sql: format!("SELECT payload FROM {table} WHERE id = $1::bigint"),
                config,
                pg,
                interests: RwLock::new(HashMap::new()),
                status: watch::channel(BrokerStatus::Down).0,
                sink: OnceLock::new(),
                stop: watch::channel(false).0,
                counters: Counters::default(),
                payload_table: tokio::sync::OnceCell::new(),
            }),
            control,
            tasks: Mutex::new(Some(control_rx)),
        }))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PostgresStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PostgresStats {
            published: get(&c.published),
            published_by_reference: get(&c.published_by_reference),
            publish_failed: get(&c.publish_failed),
            received: get(&c.received),
            received_by_reference: get(&c.received_by_reference),
            bad_references: get(&c.bad_references),
            foreign: get(&c.foreign),
            connects: get(&c.connects),
            disconnects: get(&c.disconnects),
        }
    }

    /// The Postgres channel name for `channel` (see the module docs).
    pub fn channel_name(&self, channel: &Channel) -> String {
        self.shared.name(channel)
    }

    /// The prefix of every channel and table name.
    pub fn prefix(&self) -> &str {
        &self.shared.config.prefix
    }

    /// The table that holds envelopes too large for a notification:
    /// `{prefix}payloads` (unquoted; every character is `a-z`, `0-9` or
    /// `_`).
    pub fn payload_table(&self) -> String {
        self.shared.payload_table_name()
    }

    /// Creates the [`payload_table`](Self::payload_table) if it does not
    /// exist (once per broker; later calls return at once).
    pub async fn ensure_payload_table(&self) -> Result<(), BrokerError> {
        self.shared.ensure_payload_table().await
    }

    /// The pooled publish connection that serves `channel` (the one the
    /// broker's own publishes to it use, so a store's statements for a
    /// channel are ordered with its publishes), connecting it if needed.
    /// Fails at once with a transient error while Postgres is unreachable.
    pub async fn client_for(&self, channel: &Channel) -> Result<Arc<PgClient>, BrokerError> {
        if self.shared.stopped() {
            return Err(BrokerError::Closed);
        }
        let slot = self.shared.pool.slot_of(&self.shared.name(channel));
        self.shared.pool.get(&self.shared, slot).await
    }

    /// Publishes `payload`; true if it went by reference.
    async fn send(&self, channel: &Channel, payload: &[u8]) -> Result<bool, BrokerError> {
        match self.send_once(channel, payload).await {
            // The pooled connection had closed (a server restart) before
            // the request went out: once more, on a fresh connection.
            Err(SendError::Closed) => match self.send_once(channel, payload).await {
                Err(SendError::Closed) => Err(unavailable("postgres connection closed")),
                Err(SendError::Broker(err)) => Err(err),
                Ok(large) => Ok(large),
            },
            Err(SendError::Broker(err)) => Err(err),
            Ok(large) => Ok(large),
        }
    }

    async fn send_once(&self, channel: &Channel, payload: &[u8]) -> Result<bool, SendError> {
        let shared = &self.shared;
        let name = shared.name(channel);
        let conn = self.client_for(channel).await?;
        // A notification carries text without NUL: anything else (too
        // large, not UTF-8, a NUL byte) travels by reference.
        let text = std::str::from_utf8(payload)
            .ok()
            .filter(|t| t.len() <= NOTIFY_PAYLOAD_LIMIT && !t.contains('\0'));
        let result = match text {
            Some(text) => {
                let statement = conn
                    .prepared("SELECT pg_notify($1::text, $2::text)")
                    .await?;
                conn.client().execute(&statement, &[&name, &text]).await
            }
            None => {
                shared.ensure_payload_table().await?;
                let statement = conn.prepared(&shared.large_publish_sql).await?;
                conn.client().execute(&statement, &[&name, &payload]).await
            }
        };
        match result {
            Ok(_) => Ok(text.is_none()),
            Err(err) if err.is_closed() => Err(SendError::Closed),
            Err(err) => Err(SendError::Broker(query_failed(err))),
        }
    }
}

#[async_trait]
impl Broker for PostgresBroker {
    async fn start(&self, sink: Arc<dyn BusSink>) -> Result<(), BrokerError> {
        let Some(control_rx) = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Err(BrokerError::Config("PostgresBroker started twice".into()));
        };
        let _ = self.shared.sink.set(sink);
        tokio::spawn(listener::run(self.shared.clone(), control_rx));
        tokio::spawn(listener::trim_payloads(Arc::downgrade(&self.shared)));
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
        let result = if self.shared.stopped() {
            Err(BrokerError::Closed)
        } else {
            self.send(channel, &payload).await
        };
        let c = &self.shared.counters;
        match &result {
            Ok(large) => {
                c.published.fetch_add(1, Ordering::Relaxed);
                if *large {
                    c.published_by_reference.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                c.publish_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result.map(drop)
    }

    async fn subscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        let name = self.shared.name(channel);
        self.shared
            .interests
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), channel.clone());
        // Always queued, even while reconnecting: a reconnect that copied
        // the interests just before this insert still listens when it
        // serves its queue.
        let (done, wait) = oneshot::channel();
        self.control
            .send(Control::Listen(name, done))
            .map_err(|_| BrokerError::Closed)?;
        if *self.shared.status.borrow() != BrokerStatus::Up {
            return Err(unavailable(
                "postgres listening connection is down; will LISTEN on reconnect",
            ));
        }
        let limit = self.shared.config.response_timeout * 2;
        match tokio::time::timeout(limit, wait).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BrokerError::Closed),
            Err(_) => Err(unavailable("LISTEN timed out; will LISTEN on reconnect")),
        }
    }

    async fn unsubscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        let name = self.shared.name(channel);
        let removed = self
            .shared
            .interests
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name)
            .is_some();
        if removed {
            let _ = self.control.send(Control::Unlisten(name));
        }
        Ok(())
    }

    fn status(&self) -> watch::Receiver<BrokerStatus> {
        self.shared.status.subscribe()
    }

    async fn shutdown(&self) -> Result<(), BrokerError> {
        // Every publish is awaited by its caller: nothing is queued here.
        self.shared.stop.send_replace(true);
        self.shared.pool.close().await;
        Ok(())
    }
}

impl Drop for PostgresBroker {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configurations_are_refused_without_the_password() {
        let err = PostgresBroker::new(PostgresConfig::new("postgres://u:secret@h:notaport/db"))
            .unwrap_err();
        assert!(matches!(err, BrokerError::Config(_)));
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(!err.is_transient());
        let err =
            PostgresBroker::new(PostgresConfig::new("postgres://h/db").prefix("Bad-")).unwrap_err();
        assert!(matches!(err, BrokerError::Config(_)), "{err}");
    }

    #[test]
    fn failover_urls_are_accepted() {
        let url = "postgres://app@db1:5432,db2:5433/app?target_session_attrs=read-write";
        assert!(PostgresBroker::new(PostgresConfig::new(url)).is_ok());
        let kv = "host=db1,db2 user=app dbname=app target_session_attrs=read-write";
        assert!(PostgresBroker::new(PostgresConfig::new(kv)).is_ok());
    }

    #[test]
    fn names_and_tables_follow_the_prefix() {
        let broker = PostgresBroker::new(PostgresConfig::new("postgres://h/db").prefix("app_"))
            .expect("valid config");
        assert_eq!(broker.channel_name(&Channel::Broadcast), "app_all");
        assert_eq!(
            broker.channel_name(&Channel::Topic("news".into())),
            "app_t_news"
        );
        assert_eq!(broker.payload_table(), "app_payloads");
        assert!(payload_table_sql("app_").contains("\"app_payloads\""));
    }
}
