//! History in Redis Streams, beside the Redis bus.
//!
//! Each resumable channel that was published to has a stream (`XADD`,
//! trimmed with `MAXLEN ~` and `MINID ~`) and an epoch key. One Lua script
//! appends the event, trims, sets the TTLs and publishes it stamped with its
//! stream id, so Redis runs them as one step: no subscriber sees an event
//! the stream lacks, and every subscriber sees a channel's events in stream
//! order, whoever published them.
//!
//! | key | holds | created by | expires |
//! |---|---|---|---|
//! | `{<channel name>}:h` | the stream (field `m`: the bus envelope) | the channel's first append | after the TTL without appends |
//! | `{<channel name>}:e` | the epoch: random | the channel's first append (and the first after the key was lost) | with the stream |
//! | `{<channel name>}:i:<key>` | an idempotency key: the position and message id of its first publish | an append with that key ([`History::append_once`]) | after [`Retention::idempotency_window`] |
//!
//! `<channel name>` is the Redis channel of the bus (e.g. `sse:topic:news`),
//! wrapped in a hash tag so that in a Redis Cluster both keys live in the
//! channel's slot (needed for `SPUBLISH` from the script). A name that
//! already contains a hash tag keeps its own (`name:h`, `name:e`).
//!
//! # Nothing before the first publish, nothing forever
//!
//! Only appends write. Connects ([`History::heads`]) read: a channel without
//! an epoch key reports the empty epoch (no history yet, see
//! [`Head::epoch`]), so clients naming topics nobody publishes to leave no
//! keys behind. Every append sets the TTL of both keys again: the TTL is
//! [`Retention::max_age`] when set (by then every event has aged out), else
//! the idle TTL ([`RedisHistory::idle_ttl`], default [`DEFAULT_IDLE_TTL`], 7
//! days). A channel nobody publishes to for that long loses both keys.
//!
//! A Redis that restarts without persistence loses streams and epochs, and
//! so does a channel whose keys expired: the next append creates a new
//! epoch, and clients holding ids of the old one get the reset event
//! (reason `epoch`). A client that connected while the channel had no
//! history resumes from its first event instead (see
//! [`resume`](crate::resume)).
//!
//! ```no_run
//! use std::sync::Arc;
//! use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
//! use sse_cluster::history::{redis::RedisHistory, Retention};
//! use sse_cluster::Hub;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = RedisBroker::new(RedisConfig::new("redis://127.0.0.1:6379"))?;
//! let history = Arc::new(RedisHistory::new(broker.clone(), Retention::default()));
//! let hub = Hub::builder().broker(broker).history(history).build().await?;
//! # let _ = hub;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::{Script, Value};

use super::{Appended, Entry, Head, History, Position, Retention};
use crate::broker::redis::RedisBroker;
use crate::broker::{BrokerError, Channel};
use crate::wire::random_tag;

/// Appends, trims, sets both keys' TTL and publishes the stamped envelope.
/// The entry id's time (the server's clock, as `XADD *` assigns it) dates
/// the age trim.
///
/// With a third key (an idempotency key, [`History::append_once`]): when
/// that key exists, appends nothing and returns `{'dup', <its value>}`;
/// else appends and sets it to `<id> <msg>` for the window. Without it,
/// only one `#KEYS` test more than a plain append.
///
/// KEYS: stream, epoch[, idempotency key]. ARGV: bus channel, envelope,
/// max_len, trim mode (`~` or `=`), max age ms (0: none), ttl ms (never 0),
/// a new epoch, publish command[, window ms, message id].
const APPEND: &str = r#"
local keyed = #KEYS == 3
if keyed then
  local seen = redis.call('GET', KEYS[3])
  if seen then return {'dup', seen} end
end
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[7]
  redis.call('SET', KEYS[2], epoch)
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], ARGV[3], '*', 'm', ARGV[2])
-- Every append: no key of the store lives without a TTL, whatever created
-- it or cleared its TTL before.
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
-- Age trim once per millisecond of appends (the first entry of a
-- millisecond has sequence 0), not on every append of a burst.
if ARGV[5] ~= '0' then
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if seq == '0' then
    local oldest = tonumber(ms) - tonumber(ARGV[5])
    if oldest > 0 then
      redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', oldest))
    end
  end
end
local body = string.sub(ARGV[2], 1, -2)
redis.call(ARGV[8], ARGV[1], body .. ',"pos":"' .. id .. '","epoch":"' .. epoch .. '"}')
if keyed then
  redis.call('SET', KEYS[3], id .. ' ' .. ARGV[10], 'PX', ARGV[9])
end
return id
"#;

/// The epoch (empty when there is none: the channel has no history yet),
/// the last id, and whether everything after ARGV[1] (empty: not asked) is
/// still in the stream. Reads only: connects write nothing.
///
/// KEYS: stream, epoch. ARGV: position.
const HEAD: &str = r#"
local epoch = redis.call('GET', KEYS[2]) or ''
local last = '0-0'
local retained = 1
local asked = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  local added, length = 0, 0
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1]
    elseif info[i] == 'entries-added' then added = info[i + 1]
    elseif info[i] == 'length' then length = info[i + 1] end
  end
  if asked == '0-0' then
    if added ~= length then retained = 0 end
  elseif asked ~= '' then
    if #redis.call('XRANGE', KEYS[1], asked, asked) == 0 then retained = 0 end
  end
elseif asked ~= '' and asked ~= '0-0' then
  retained = 0
end
return {epoch, last, retained}
"#;

/// The longest TTL sent to Redis (100 years): `PEXPIRE` refuses one that
/// overflows the server's clock.
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// How long a channel's keys live without appends when
/// [`Retention::max_age`] is `None` (see [`RedisHistory::idle_ttl`]): 7 days.
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// History in Redis Streams, sharing the [`RedisBroker`]'s connection.
pub struct RedisHistory {
    broker: Arc<RedisBroker>,
    retention: Retention,
    idle_ttl: Duration,
    /// Replicas that must have each append, and how long to wait for them.
    replicas: Option<(usize, Duration)>,
    append: Script,
    head: Script,
}

impl fmt::Debug for RedisHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisHistory")
            .field("broker", &self.broker)
            .field("retention", &self.retention)
            .field("idle_ttl", &self.idle_ttl)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl RedisHistory {
    /// History next to `broker`'s bus (the hubs must use that broker too).
    pub fn new(broker: Arc<RedisBroker>, retention: Retention) -> Self {
        Self {
            broker,
            retention,
            idle_ttl: DEFAULT_IDLE_TTL,
            replicas: None,
            append: Script::new(APPEND),
            head: Script::new(HEAD),
        }
    }

    /// How long a channel's keys live after its last append when
    /// [`Retention::max_age`] is `None` (with an age, they live that long:
    /// by then every event has aged out). Default: [`DEFAULT_IDLE_TTL`];
    /// at least 1 ms. Every append sets the TTL again, so only channels
    /// nobody publishes to lose their keys; a client that resumes one after
    /// that gets the reset event (reason `epoch`).
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// Acknowledges an append only once `replicas` replicas have it
    /// (Redis `WAIT`, at most `timeout`): then a failover to one of them
    /// (Sentinel, Redis Cluster) keeps every acknowledged event. Without
    /// it (the default) replication is asynchronous, and an event the old
    /// primary acknowledged in the last moments before it died may be
    /// missing on the new one; a client that had not received it does not
    /// get it on resume either.
    ///
    /// An append that fewer replicas confirm in time fails with the
    /// transient [`BrokerError::Unavailable`]. The event is stored on the
    /// primary and was published live all the same, so a publisher that
    /// retries should use [`Hub::publish_idempotent`](crate::Hub::publish_idempotent)
    /// to store it once. Each append waits for the replicas' answer (a
    /// round trip to them; on Redis Cluster `WAIT` goes to every primary);
    /// `replicas` 0 turns it off.
    pub fn wait_for_replicas(mut self, replicas: usize, timeout: Duration) -> Self {
        self.replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Runs an append script, followed on the same connection by `WAIT`
    /// for the configured replicas (see [`RedisHistory::wait_for_replicas`]);
    /// the script's reply once enough replicas have the append.
    async fn run_append(&self, call: &redis::ScriptInvocation<'_>) -> Result<Value, BrokerError> {
        let wait = self.replicas.map(|(replicas, timeout)| {
            let ms = u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            let mut wait = redis::cmd("WAIT");
            wait.arg(replicas).arg(ms);
            (wait, replicas, ms)
        });
        let (reply, acked) = self
            .broker
            .invoke_then(call, wait.as_ref().map(|(cmd, _, _)| cmd))
            .await?;
        if let Some((_, replicas, ms)) = wait {
            let acked = match acked {
                Some(Value::Int(n)) => usize::try_from(n).unwrap_or(0),
                _ => return Err(bad_reply("WAIT")),
            };
            if acked < replicas {
                return Err(BrokerError::Unavailable(format!(
                    "the event is stored on the primary but only {acked} of {replicas} replicas had it within {ms} ms"
                )));
            }
        }
        Ok(reply)
    }

    /// The stream and epoch keys of `channel`.
    pub fn keys(&self, channel: &Channel) -> (String, String) {
        let name = self.broker.channel_name(channel);
        if has_hash_tag(&name) {
            (format!("{name}:h"), format!("{name}:e"))
        } else {
            (format!("{{{name}}}:h"), format!("{{{name}}}:e"))
        }
    }

    /// The idempotency key `key` of `channel`: in the channel's slot.
    pub fn idempotency_key(&self, channel: &Channel, key: &str) -> String {
        let name = self.broker.channel_name(channel);
        if has_hash_tag(&name) {
            format!("{name}:i:{key}")
        } else {
            format!("{{{name}}}:i:{key}")
        }
    }

    /// The append script's invocation for `payload` on `channel`, without
    /// an idempotency key.
    fn append_call(&self, channel: &Channel, payload: &[u8]) -> redis::ScriptInvocation<'_> {
        let (stream, epoch) = self.keys(channel);
        let max_len = self.retention.max_len;
        // `~` trims whole internal nodes (cheap) and so keeps up to ~100
        // more; small windows are kept exactly.
        let mode = if max_len >= 100 { "~" } else { "=" };
        let command = if self.broker.is_sharded() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let max_age = self
            .retention
            .max_age
            .map_or(0, |a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX));
        let mut call = self.append.key(stream);
        call.key(epoch)
            .arg(self.broker.channel_name(channel))
            .arg(payload)
            .arg(max_len)
            .arg(mode)
            .arg(max_age)
            .arg(self.ttl_ms())
            .arg(random_tag(12))
            .arg(command);
        call
    }

    /// The TTL every append gives both keys of its channel, in ms (never 0).
    fn ttl_ms(&self) -> u64 {
        let ttl = self.retention.max_age.unwrap_or(self.idle_ttl);
        u64::try_from(ttl.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_TTL_MS)
    }
}

/// True when Redis Cluster would hash `key` by a `{...}` part of it.
fn has_hash_tag(key: &str) -> bool {
    key.find('{')
        .and_then(|open| key[open + 1..].find('}'))
        .is_some_and(|len| len > 0)
}

fn parse_id(value: &Value) -> Option<Position> {
    let text = match value {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?,
        Value::SimpleString(s) => s.as_str(),
        _ => return None,
    };
    Position::parse(text)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn bad_reply(what: &str) -> BrokerError {
    BrokerError::Backend {
        source: format!("unexpected redis reply to {what}").into(),
        transient: false,
    }
}

#[async_trait]
impl History for RedisHistory {
    async fn append(&self, channel: &Channel, payload: Bytes) -> Result<Position, BrokerError> {
        let reply = self
            .run_append(&self.append_call(channel, &payload))
            .await?;
        parse_id(&reply).ok_or_else(|| bad_reply("the append script"))
    }

    fn idempotency_window(&self) -> Option<Duration> {
        Some(self.retention.idempotency_window)
    }

    async fn append_once(
        &self,
        channel: &Channel,
        payload: Bytes,
        key: &str,
        msg: &str,
    ) -> Result<Appended, BrokerError> {
        let window = self.retention.idempotency_window.as_millis().max(1);
        let mut call = self.append_call(channel, &payload);
        call.key(self.idempotency_key(channel, key))
            .arg(u64::try_from(window).unwrap_or(MAX_TTL_MS).min(MAX_TTL_MS))
            .arg(msg);
        // A duplicate waits too: the first append may have failed the wait.
        let reply = self.run_append(&call).await?;
        if let Some(position) = parse_id(&reply) {
            return Ok(Appended::Stored(position));
        }
        let seen = match &reply {
            Value::Array(parts) => match parts.as_slice() {
                [flag, seen] if text(flag).as_deref() == Some("dup") => text(seen),
                _ => None,
            },
            _ => None,
        };
        let seen = seen.ok_or_else(|| bad_reply("the append script"))?;
        let (id, msg) = seen.split_once(' ').unwrap_or((seen.as_str(), ""));
        let position = Position::parse(id).ok_or_else(|| bad_reply("the append script"))?;
        Ok(Appended::Duplicate {
            position,
            msg: (!msg.is_empty()).then(|| msg.to_owned()),
        })
    }

    async fn heads(
        &self,
        channels: &[(Channel, Option<Position>)],
    ) -> Result<Vec<Head>, BrokerError> {
        // One script per channel (a cluster keeps channels on different
        // slots), sent together: the connection pipelines them.
        let calls = channels.iter().map(|(channel, after)| async move {
            let (stream, epoch) = self.keys(channel);
            let reply: Vec<Value> = self
                .broker
                .invoke(
                    self.head
                        .key(stream)
                        .key(epoch)
                        .arg(after.map_or(String::new(), |p| p.to_string())),
                )
                .await?;
            match reply.as_slice() {
                [epoch, last, retained] => {
                    let epoch = text(epoch).ok_or_else(|| bad_reply("the head script"))?;
                    let last = parse_id(last).ok_or_else(|| bad_reply("the head script"))?;
                    let retained = matches!(retained, Value::Int(1));
                    Ok(Head::new(epoch.into(), last, retained))
                }
                _ => Err(bad_reply("the head script")),
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
        let (stream, _) = self.keys(channel);
        let reply: Value = self
            .broker
            .query(
                redis::cmd("XRANGE")
                    .arg(stream)
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit),
            )
            .await?;
        let Value::Array(items) = reply else {
            return Err(bad_reply("XRANGE"));
        };
        let mut entries = Vec::with_capacity(items.len());
        for item in items {
            let Value::Array(parts) = item else {
                return Err(bad_reply("XRANGE"));
            };
            let [id, fields] = parts.as_slice() else {
                return Err(bad_reply("XRANGE"));
            };
            let position = parse_id(id).ok_or_else(|| bad_reply("XRANGE"))?;
            let payload = match fields {
                Value::Array(kv) => kv
                    .chunks(2)
                    .find(|pair| matches!(&pair[0], Value::BulkString(k) if k == b"m"))
                    .and_then(|pair| match pair.get(1) {
                        Some(Value::BulkString(v)) => Some(Bytes::from(v.clone())),
                        _ => None,
                    }),
                Value::Map(kv) => kv.iter().find_map(|(k, v)| match (k, v) {
                    (Value::BulkString(k), Value::BulkString(v)) if k == b"m" => {
                        Some(Bytes::from(v.clone()))
                    }
                    _ => None,
                }),
                _ => None,
            };
            // An entry written by something else than this store: skipped,
            // but its position still counts as read.
            entries.push(Entry::new(position, payload.unwrap_or_default()));
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags() {
        assert!(has_hash_tag("a{b}c"));
        assert!(!has_hash_tag("a{}c"));
        assert!(!has_hash_tag("abc"));
        assert!(!has_hash_tag("a}b{c"));
    }
}
