//! History in Postgres tables, beside the Postgres bus.
//!
//! One pair of tables per cluster (per [`PostgresBroker::prefix`]): a row
//! per channel with its newest position and its epoch, and a row per event.
//! Positions are `(n, 0)` with `n` counting the channel's appends from 1,
//! without holes: the counter is a column of the channel's row rather than
//! a Postgres `SEQUENCE`, whose values are not transactional (a failed
//! append would leave a hole) and whose order need not be the commit order. One statement appends the event, trims the channel to
//! [`Retention::max_len`] and notifies the bus with the stamped envelope;
//! Postgres runs a statement as one transaction and delivers notifications
//! at commit, so no listener sees an event the table lacks, and the
//! channel's row lock orders concurrent appends: listeners see a channel's
//! events in position order, whoever published them.
//!
//! # Schema
//!
//! Created on first use (in one transaction, under an advisory lock so that
//! nodes starting together do not race); [`PostgresHistory::migration_sql`]
//! is the same SQL, for a migration tool. With the prefix `sse_`:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS "sse_channels" (
//!   channel text PRIMARY KEY,      -- the bus channel (see broker::postgres)
//!   last bigint NOT NULL,          -- the newest position
//!   epoch text NOT NULL            -- random, set when the row is created
//! );
//! CREATE TABLE IF NOT EXISTS "sse_events" (
//!   channel text NOT NULL,
//!   pos bigint NOT NULL,
//!   created_at timestamptz NOT NULL DEFAULT now(),
//!   payload text NOT NULL,         -- the bus envelope, without pos and epoch
//!   PRIMARY KEY (channel, pos)
//! );
//! CREATE INDEX IF NOT EXISTS "sse_events_created_at" ON "sse_events" (created_at);
//! CREATE TABLE IF NOT EXISTS "sse_keys" (  -- idempotency keys
//!   channel text NOT NULL,
//!   key text NOT NULL,
//!   pos bigint NOT NULL,           -- the first publish's position
//!   msg text NOT NULL,             -- and its message id
//!   expires_at timestamptz NOT NULL,
//!   PRIMARY KEY (channel, key)
//! );
//! CREATE INDEX IF NOT EXISTS "sse_keys_expires_at" ON "sse_keys" (expires_at);
//! ```
//!
//! # Idempotency keys
//!
//! [`History::append_once`] appends and records the key in the same
//! statement; a key that is already recorded makes the statement fail as a
//! whole (a unique violation: nothing counted, stored or notified), and the
//! store answers the first publish's position and message id. An expired
//! key is deleted just before, and the background trim deletes the others
//! once they expire ([`Retention::idempotency_window`], 2 minutes by
//! default).
//!
//! plus the broker's `sse_payloads` table
//! ([`payload_table_sql`](crate::broker::postgres::payload_table_sql)): a
//! stamped envelope too large for a notification is published by
//! reference, in the same statement.
//!
//! # Durability
//!
//! A notification goes out at commit, before an asynchronous commit
//! (`synchronous_commit = off`) reaches the WAL on disk: a crash could then
//! lose events whose notifications clients already have, and hand their
//! positions to new events. The append statement therefore raises its own
//! transaction's `synchronous_commit` from `off` to `local` (any other
//! setting is kept), whatever the server or role default.
//!
//! # Retention and epochs
//!
//! Every append deletes the channel's events older than the newest
//! [`Retention::max_len`] (exact). A background task deletes events older
//! than [`Retention::max_age`] every [`PostgresHistory::trim_interval`]
//! (default: a tenth of the age, between 1 s and 60 s), so an event may
//! outlive its age by that much. A channel's row stays when its events are
//! gone: positions keep growing, and a client that missed trimmed events
//! gets the reset event (reason `expired`). Dropping the tables (or the
//! channel's row) starts a new epoch: clients holding ids of the old one
//! get the reset event (reason `epoch`). Connects
//! ([`History::heads`]) only read; a channel without a row reports the
//! empty epoch.
//!
//! ```no_run
//! use std::sync::Arc;
//! use sse_cluster::broker::postgres::{PostgresBroker, PostgresConfig};
//! use sse_cluster::history::{postgres::PostgresHistory, Retention};
//! use sse_cluster::Hub;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = PostgresBroker::new(PostgresConfig::new("postgres://app@127.0.0.1/app"))?;
//! let history = Arc::new(PostgresHistory::new(broker.clone(), Retention::default()));
//! let hub = Hub::builder().broker(broker).history(history).build().await?;
//! # let _ = hub;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::task::JoinHandle;

use super::{Appended, Entry, Head, History, Position, Retention};
use crate::broker::postgres::{query_failed, PostgresBroker, NOTIFY_PAYLOAD_LIMIT};
use crate::broker::{BrokerError, Channel};
use crate::wire::random_tag;

/// History in Postgres tables, publishing through a [`PostgresBroker`]'s
/// connections.
pub struct PostgresHistory {
    inner: Arc<Inner>,
    trim: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    broker: Arc<PostgresBroker>,
    retention: Retention,
    trim_interval: Duration,
    prefix: String,
    schema: tokio::sync::OnceCell<()>,
    sql: Sql,
}

/// The store's statements, for its prefix.
struct Sql {
    append: String,
    append_once: String,
    forget_key: String,
    first_publish: String,
    trim_keys: String,
    heads: String,
    read: String,
    trim_age: String,
}

impl Sql {
    /// The append statement, with `extra` CTEs after the channel's count.
    fn append_sql(channels: &str, events: &str, payloads: &str, extra: &str) -> String {
        format!(
                "WITH c AS (\
                   INSERT INTO {channels} AS ch (channel, last, epoch) VALUES ($1::text, 1, $3::text) \
                   ON CONFLICT (channel) DO UPDATE SET last = ch.last + 1 \
                   RETURNING ch.last, ch.epoch\
                 ){extra}, e AS (\
                   INSERT INTO {events} (channel, pos, payload) SELECT $1::text, c.last, $2::text FROM c\
                 ), t AS (\
                   DELETE FROM {events} d USING c WHERE d.channel = $1::text AND d.pos <= c.last - $4::bigint\
                 ), s AS (\
                   SELECT c.last, CASE WHEN right($2::text, 1) = '}}' THEN left($2::text, -1) ELSE $2::text END \
                     || ',\"pos\":\"' || c.last || '-0\",\"epoch\":\"' || c.epoch || '\"}}' AS body FROM c\
                 ), big AS (\
                   INSERT INTO \"{payloads}\" (payload) SELECT convert_to(body, 'UTF8') FROM s \
                   WHERE octet_length(body) > {NOTIFY_PAYLOAD_LIMIT} RETURNING id\
                 ), durable AS (\
                   SELECT set_config('synchronous_commit', \
                     CASE current_setting('synchronous_commit') WHEN 'off' THEN 'local' \
                     ELSE current_setting('synchronous_commit') END, true)\
                 ) \
                 SELECT s.last, pg_notify($1::text, COALESCE((SELECT '#' || big.id FROM big), s.body)) \
                 FROM s CROSS JOIN durable"
        )
    }

    fn new(prefix: &str, payloads: &str) -> Self {
        let channels = format!("\"{prefix}channels\"");
        let events = format!("\"{prefix}events\"");
        let keys = format!("\"{prefix}keys\"");
        // The append, recording the key ($5, with $6 the message id, for $7
        // seconds) in the same statement: a key already there makes the
        // whole statement fail (a unique violation), so nothing is counted,
        // stored or notified twice.
        let record_key = format!(
            ", k AS (INSERT INTO {keys} (channel, key, pos, msg, expires_at) \
               SELECT $1::text, $5::text, c.last, $6::text, now() + make_interval(secs => $7::float8) FROM c)"
        );
        Self {
            // $1 channel, $2 envelope, $3 a new epoch, $4 max_len.
            append: Self::append_sql(&channels, &events, payloads, ""),
            append_once: Self::append_sql(&channels, &events, payloads, &record_key),
            forget_key: format!(
                "DELETE FROM {keys} WHERE channel = $1::text AND key = $2::text AND expires_at < now()"
            ),
            first_publish: format!(
                "SELECT pos, msg FROM {keys} WHERE channel = $1::text AND key = $2::text"
            ),
            trim_keys: format!("DELETE FROM {keys} WHERE expires_at < now()"),
            heads: format!(
                "SELECT c.channel, c.last, c.epoch, \
                   (SELECT min(e.pos) FROM {events} e WHERE e.channel = c.channel) \
                 FROM {channels} c WHERE c.channel = ANY($1::text[])"
            ),
            read: format!(
                "SELECT pos, payload FROM {events} \
                 WHERE channel = $1::text AND pos > $2::bigint ORDER BY pos LIMIT $3::bigint"
            ),
            trim_age: format!(
                "DELETE FROM {events} WHERE created_at < now() - make_interval(secs => $1::float8)"
            ),
        }
    }
}

impl fmt::Debug for PostgresHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresHistory")
            .field("broker", &self.inner.broker)
            .field("retention", &self.inner.retention)
            .field("trim_interval", &self.inner.trim_interval)
            .finish_non_exhaustive()
    }
}

impl PostgresHistory {
    /// History next to `broker`'s bus (the hubs must use that broker's
    /// server and prefix too), in the tables `{prefix}channels` and
    /// `{prefix}events`.
    pub fn new(broker: Arc<PostgresBroker>, retention: Retention) -> Self {
        let prefix = broker.prefix().to_owned();
        let sql = Sql::new(&prefix, &broker.payload_table());
        let trim_interval = retention
            .max_age
            .map_or(Duration::from_secs(60), |age| age / 10)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        Self {
            inner: Arc::new(Inner {
                broker,
                retention,
                trim_interval,
                prefix,
                schema: tokio::sync::OnceCell::new(),
                sql,
            }),
            trim: Mutex::new(None),
        }
    }

    /// How often events older than [`Retention::max_age`] are deleted
    /// (at least 10 ms).
    pub fn trim_interval(mut self, every: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.trim_interval = every.max(Duration::from_millis(10));
        }
        self
    }

    /// The SQL that creates this store's tables (and the broker's payload
    /// table) if they do not exist: what the store runs on first use, for
    /// a migration tool to run instead.
    pub fn migration_sql(&self) -> String {
        migration_sql(&self.inner.prefix)
    }

    /// Creates the tables once, and starts the age trim.
    async fn ready(&self) -> Result<&Inner, BrokerError> {
        let inner = &*self.inner;
        inner
            .schema
            .get_or_try_init(|| async {
                inner.broker.ensure_payload_table().await?;
                let conn = inner.broker.client_for(&Channel::Broadcast).await?;
                conn.client()
                    .batch_execute(&migration_sql(&inner.prefix))
                    .await
                    .map_err(query_failed)
            })
            .await?;
        let mut trim = self.trim.lock().unwrap_or_else(|p| p.into_inner());
        if trim.is_none() {
            *trim = Some(tokio::spawn(trim_by_age(Arc::downgrade(&self.inner))));
        }
        Ok(inner)
    }
}

impl Drop for PostgresHistory {
    fn drop(&mut self) {
        if let Some(task) = self.trim.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// The store's schema for `prefix`, in one implicit transaction (a simple
/// query of several statements) under an advisory lock.
fn migration_sql(prefix: &str) -> String {
    let payloads = crate::broker::postgres::payload_table_sql(prefix);
    format!(
        "{payloads}\
         CREATE TABLE IF NOT EXISTS \"{prefix}channels\" (\n\
         \x20 channel text PRIMARY KEY,\n\
         \x20 last bigint NOT NULL,\n\
         \x20 epoch text NOT NULL\n\
         );\n\
         CREATE TABLE IF NOT EXISTS \"{prefix}events\" (\n\
         \x20 channel text NOT NULL,\n\
         \x20 pos bigint NOT NULL,\n\
         \x20 created_at timestamptz NOT NULL DEFAULT now(),\n\
         \x20 payload text NOT NULL,\n\
         \x20 PRIMARY KEY (channel, pos)\n\
         );\n\
         CREATE INDEX IF NOT EXISTS \"{prefix}events_created_at\" ON \"{prefix}events\" (created_at);\n\
         CREATE TABLE IF NOT EXISTS \"{prefix}keys\" (\n\
         \x20 channel text NOT NULL,\n\
         \x20 key text NOT NULL,\n\
         \x20 pos bigint NOT NULL,\n\
         \x20 msg text NOT NULL,\n\
         \x20 expires_at timestamptz NOT NULL,\n\
         \x20 PRIMARY KEY (channel, key)\n\
         );\n\
         CREATE INDEX IF NOT EXISTS \"{prefix}keys_expires_at\" ON \"{prefix}keys\" (expires_at);\n"
    )
}

/// Deletes events older than the retention's age, every trim interval.
async fn trim_by_age(inner: Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(inner) => inner.trim_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let result = async {
            let conn = inner.broker.client_for(&Channel::Broadcast).await?;
            let mut deleted = 0;
            if let Some(age) = inner.retention.max_age {
                let statement = conn.prepared(&inner.sql.trim_age).await?;
                deleted += conn
                    .client()
                    .execute(&statement, &[&age.as_secs_f64()])
                    .await
                    .map_err(query_failed)?;
            }
            let statement = conn.prepared(&inner.sql.trim_keys).await?;
            deleted += conn
                .client()
                .execute(&statement, &[])
                .await
                .map_err(query_failed)?;
            Ok::<u64, BrokerError>(deleted)
        }
        .await;
        match result {
            Ok(deleted) if deleted > 0 => tracing::debug!(deleted, "postgres history trim"),
            Ok(_) => {}
            Err(BrokerError::Closed) => return,
            Err(err) => tracing::debug!(error = %err, "postgres history trim failed"),
        }
    }
}

fn bad_row(what: &str, err: impl fmt::Display) -> BrokerError {
    BrokerError::Backend {
        source: format!("unexpected postgres row from {what}: {err}").into(),
        transient: false,
    }
}

/// A position's number as Postgres stores it (`bigint`).
fn to_db(position: Position) -> i64 {
    i64::try_from(position.major()).unwrap_or(i64::MAX)
}

fn from_db(pos: i64) -> Position {
    Position::new(u64::try_from(pos).unwrap_or(0), 0)
}

#[async_trait]
impl History for PostgresHistory {
    async fn append(&self, channel: &Channel, payload: Bytes) -> Result<Position, BrokerError> {
        let inner = self.ready().await?;
        let text = std::str::from_utf8(&payload).map_err(|e| BrokerError::Backend {
            source: format!("a history envelope must be UTF-8: {e}").into(),
            transient: false,
        })?;
        let name = inner.broker.channel_name(channel);
        let max_len = i64::try_from(inner.retention.max_len.max(1)).unwrap_or(i64::MAX);
        let conn = inner.broker.client_for(channel).await?;
        let statement = conn.prepared(&inner.sql.append).await?;
        let row = conn
            .client()
            .query_one(&statement, &[&name, &text, &random_tag(12), &max_len])
            .await
            .map_err(query_failed)?;
        let last: i64 = row.try_get(0).map_err(|e| bad_row("the append", e))?;
        Ok(from_db(last))
    }

    fn idempotency_window(&self) -> Option<Duration> {
        Some(self.inner.retention.idempotency_window)
    }

    async fn append_once(
        &self,
        channel: &Channel,
        payload: Bytes,
        key: &str,
        msg: &str,
    ) -> Result<Appended, BrokerError> {
        let inner = self.ready().await?;
        let text = std::str::from_utf8(&payload).map_err(|e| BrokerError::Backend {
            source: format!("a history envelope must be UTF-8: {e}").into(),
            transient: false,
        })?;
        let name = inner.broker.channel_name(channel);
        let max_len = i64::try_from(inner.retention.max_len.max(1)).unwrap_or(i64::MAX);
        let window = inner.retention.idempotency_window.as_secs_f64();
        let conn = inner.broker.client_for(channel).await?;
        let forget = conn.prepared(&inner.sql.forget_key).await?;
        let append = conn.prepared(&inner.sql.append_once).await?;
        let first = conn.prepared(&inner.sql.first_publish).await?;
        // Twice at most: a key found taken may expire before it is read.
        for _ in 0..2 {
            conn.client()
                .execute(&forget, &[&name, &key])
                .await
                .map_err(query_failed)?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
                [&name, &text, &random_tag(12), &max_len, &key, &msg, &window];
            match conn.client().query_one(&append, &params).await {
                Ok(row) => {
                    let last: i64 = row.try_get(0).map_err(|e| bad_row("the append", e))?;
                    return Ok(Appended::Stored(from_db(last)));
                }
                Err(err)
                    if err.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
                {
                    let row = conn
                        .client()
                        .query_opt(&first, &[&name, &key])
                        .await
                        .map_err(query_failed)?;
                    if let Some(row) = row {
                        let pos: i64 = row.try_get(0).map_err(|e| bad_row("a key", e))?;
                        let msg: String = row.try_get(1).map_err(|e| bad_row("a key", e))?;
                        return Ok(Appended::Duplicate {
                            position: from_db(pos),
                            msg: Some(msg),
                        });
                    }
                }
                Err(err) => return Err(query_failed(err)),
            }
        }
        Err(BrokerError::Backend {
            source: "an idempotency key was taken and gone twice in a row".into(),
            transient: true,
        })
    }

    async fn heads(
        &self,
        channels: &[(Channel, Option<Position>)],
    ) -> Result<Vec<Head>, BrokerError> {
        let inner = self.ready().await?;
        let names: Vec<String> = channels
            .iter()
            .map(|(c, _)| inner.broker.channel_name(c))
            .collect();
        let conn = inner.broker.client_for(&Channel::Broadcast).await?;
        let statement = conn.prepared(&inner.sql.heads).await?;
        let rows = conn
            .client()
            .query(&statement, &[&names])
            .await
            .map_err(query_failed)?;
        let mut found: HashMap<String, (i64, String, Option<i64>)> = HashMap::new();
        for row in rows {
            let read = || -> Result<_, tokio_postgres::Error> {
                Ok((
                    row.try_get::<_, String>(0)?,
                    row.try_get::<_, i64>(1)?,
                    row.try_get::<_, String>(2)?,
                    row.try_get::<_, Option<i64>>(3)?,
                ))
            };
            let (name, last, epoch, first) = read().map_err(|e| bad_row("the heads", e))?;
            found.insert(name, (last, epoch, first));
        }
        Ok(channels
            .iter()
            .zip(&names)
            .map(|((_, asked), name)| match found.get(name) {
                None => Head::new(
                    Arc::from(""),
                    Position::ZERO,
                    asked.is_none_or(|p| p == Position::ZERO),
                ),
                Some((last, epoch, first)) => {
                    // Everything after `p` is kept when nothing came after
                    // it, or when the oldest kept event directly follows it.
                    let retained = asked.is_none_or(|p| {
                        let p = to_db(p);
                        p >= *last || first.is_some_and(|f| f <= p.saturating_add(1))
                    });
                    Head::new(Arc::from(epoch.as_str()), from_db(*last), retained)
                }
            })
            .collect())
    }

    async fn read(
        &self,
        channel: &Channel,
        after: Position,
        limit: usize,
    ) -> Result<Vec<Entry>, BrokerError> {
        let inner = self.ready().await?;
        let name = inner.broker.channel_name(channel);
        let conn = inner.broker.client_for(channel).await?;
        let statement = conn.prepared(&inner.sql.read).await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = conn
            .client()
            .query(&statement, &[&name, &to_db(after), &limit])
            .await
            .map_err(query_failed)?;
        rows.iter()
            .map(|row| {
                let pos: i64 = row.try_get(0).map_err(|e| bad_row("a read", e))?;
                let payload: String = row.try_get(1).map_err(|e| bad_row("a read", e))?;
                Ok(Entry::new(from_db(pos), Bytes::from(payload)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_follow_the_prefix() {
        let sql = migration_sql("app_");
        for table in ["\"app_channels\"", "\"app_events\"", "\"app_payloads\""] {
            assert!(sql.contains(table), "{table} in {sql}");
        }
        let statements = Sql::new("app_", "app_payloads");
        assert!(statements.append.contains("pg_notify($1::text"));
        assert!(statements.append.contains("> 7999"));
        assert!(statements.append.contains("'}'"), "{}", statements.append);
    }

    #[test]
    fn positions_map_to_bigint() {
        assert_eq!(to_db(Position::new(7, 0)), 7);
        assert_eq!(to_db(Position::new(u64::MAX, 0)), i64::MAX);
        assert_eq!(from_db(-1), Position::ZERO);
        assert_eq!(from_db(9), Position::new(9, 0));
    }
}
