//! The Kafka backend: one topic per cluster as the bus (and, with
//! [`KafkaHistory`](crate::history::kafka::KafkaHistory), as the history).
//!
//! ```no_run
//! use sse_cluster::broker::kafka::{KafkaBroker, KafkaConfig};
//! use sse_cluster::Hub;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = KafkaBroker::new(KafkaConfig::new("kafka://127.0.0.1:9092").topic("myapp-sse"))?;
//! let hub = Hub::builder().broker(broker).build().await?;
//! # let _ = hub;
//! # Ok(())
//! # }
//! ```
//!
//! # The topic and its records
//!
//! Kafka is a log, not a pub/sub router: a topic per user or per SSE topic
//! would be the wrong shape. The whole cluster shares **one topic**
//! ([`KafkaConfig::topic`], default `sse-cluster`), created with
//! [`KafkaConfig::partitions`] partitions (default 6) and
//! [`KafkaConfig::replication_factor`] (default 1) by the first node that
//! finds it missing. Each bus message is one record:
//!
//! | part | content |
//! |---|---|
//! | key | the channel: `broadcast`, `topic:{t}`, `user:{u}` or `node:{n}` (UTF-8, names as given) |
//! | value | the [`wire`](crate::wire) envelope |
//! | partition | Kafka's default partitioner on the key (murmur2, as the Java client and kafka-python) |
//!
//! So each channel keeps its order in one partition, and any Kafka client
//! can publish with its default partitioner:
//!
//! ```text
//! python -c 'from kafka import KafkaProducer as P; p = P(bootstrap_servers="127.0.0.1:9092"); \
//!   p.send("sse-cluster", key=b"topic:news", value=b"{\"v\":1,\"data\":\"hello\"}"); p.flush()'
//! ```
//!
//! A record without a key, or whose key names no channel a node holds, is
//! skipped by that node (counted in [`KafkaStats::foreign`]). A record that
//! another partitioner put in another partition than its key's is still
//! delivered live, but without a history position ([`KafkaStats::misplaced`]).
//!
//! # Every node reads everything
//!
//! Every node reads **every partition from its end** at start-up (no
//! consumer group, no committed offsets: each node must see every record)
//! and keeps the records of the channels it holds. Interest routing cannot
//! cut bus traffic here: every node receives every record of the cluster
//! ([`KafkaStats::received_bytes`]), where Redis, NATS and Postgres send a
//! node only the channels it listens to. See BENCHMARKS.md for the bytes
//! per node of user-targeted traffic on each bus.
//!
//! # Failures
//!
//! One task per partition long-polls its partition
//! ([`KafkaConfig::fetch_wait`]). A fetch that fails, or that gets no answer
//! within the wait plus [`KafkaConfig::request_timeout`] (a frozen broker),
//! makes the broker report [`BrokerStatus::Down`], drop its connection, and
//! reconnect with exponential backoff and full jitter. On reconnecting it
//! checks the topic (creating it again if it is gone) and goes on from the
//! offsets it had reached if the topic is the same one (the same
//! [`KafkaBroker::epoch`]); if the topic was recreated, from its end. Then
//! it reports Up and the hub sends every stream the gap event (or, with
//! history, replays). A read past a partition's end, or a topic id that
//! changed (checked every 5 s, on a short connection of its own: rskafka
//! reconnects by itself, so a topic recreated meanwhile could otherwise go
//! unseen), counts as a loss of the connection too. Each partition is read
//! on a connection of its own: Kafka serves one connection's requests one
//! at a time, so a long poll would hold up publishes and other partitions. While it is Down, [`Broker::publish`] fails at once
//! with the transient [`BrokerError::Unavailable`] (no buffering).
//!
//! # Client
//!
//! [rskafka](https://docs.rs/rskafka) (pure Rust, async, no librdkafka, no
//! C toolchain). One record per produce request: a batch of several records
//! would be fewer round trips, but a broker that mishandles offsets inside
//! a batch (tansu 0.6 answers reads from inside a batch with nothing) would
//! then lose history positions; and a publish must learn its record's
//! offset anyway. Concurrent publishes are pipelined on one connection.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient};
use tokio::sync::watch;

use super::{Broker, BrokerError, BrokerStatus, BusSink, Channel};

mod config;
pub(crate) mod keys;
mod metadata;
mod session;

pub use config::{KafkaConfig, DEFAULT_TOPIC};

/// Counters of a [`KafkaBroker`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaStats {
    /// Records produced.
    pub published: u64,
    /// Produce requests refused or failed.
    pub publish_failed: u64,
    /// Records read from the topic, every channel's.
    pub received: u64,
    /// Their keys and values, in bytes: what every node reads of the bus.
    pub received_bytes: u64,
    /// Of those, records of channels this node holds, handed to the hub.
    pub delivered: u64,
    /// Records skipped: no key, or the key of a channel this node does not
    /// hold.
    pub foreign: u64,
    /// Delivered records found in another partition than their key's
    /// (another partitioner): delivered live, without a history position.
    pub misplaced: u64,
    /// Offsets a fetch returned nothing for although the partition had
    /// records after them (a broker that cannot read from inside a batch,
    /// or transaction markers): stepped over one at a time.
    pub skipped_offsets: u64,
    /// Times the offset a partition was read from had left the log
    /// (retention) while the node was disconnected.
    pub out_of_range: u64,
    /// Times the connection was (re)established.
    pub connects: u64,
    /// Times it was lost or found dead.
    pub disconnects: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    publish_failed: AtomicU64,
    received: AtomicU64,
    received_bytes: AtomicU64,
    delivered: AtomicU64,
    foreign: AtomicU64,
    misplaced: AtomicU64,
    skipped_offsets: AtomicU64,
    out_of_range: AtomicU64,
    connects: AtomicU64,
    disconnects: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Where a produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Produced {
    /// The partition (the key's).
    pub partition: i32,
    /// The record's offset in it.
    pub offset: i64,
}

/// One record read from the topic by [`KafkaBroker::fetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogRecord {
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key, if it has one.
    pub key: Option<Bytes>,
    /// Its value (empty for a record without one).
    pub value: Bytes,
    /// Its timestamp, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// What one [`KafkaBroker::fetch`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fetched {
    /// The records, in offset order.
    pub records: Vec<LogRecord>,
    /// The offset to read next.
    pub next: i64,
    /// The partition's high watermark: the offset its next record gets.
    pub high_watermark: i64,
}

/// One connection to the cluster: the partitions' clients (on one
/// connection, for publishes and queries), each partition's reader (on a
/// connection of its own, for its long poll) and the topic's epoch.
pub(crate) struct Session {
    partitions: Vec<Arc<PartitionClient>>,
    readers: Vec<Arc<PartitionClient>>,
    epoch: Arc<str>,
}

impl Session {
    fn partition(&self, partition: i32) -> Result<&Arc<PartitionClient>, BrokerError> {
        Self::pick(&self.partitions, partition)
    }

    fn pick(
        clients: &[Arc<PartitionClient>],
        partition: i32,
    ) -> Result<&Arc<PartitionClient>, BrokerError> {
        usize::try_from(partition)
            .ok()
            .and_then(|p| clients.get(p))
            .ok_or_else(|| BrokerError::Config(format!("no partition {partition}")))
    }

    fn count(&self) -> i32 {
        i32::try_from(self.partitions.len()).unwrap_or(i32::MAX)
    }
}

struct Shared {
    config: KafkaConfig,
    status: watch::Sender<BrokerStatus>,
    sink: OnceLock<Arc<dyn BusSink>>,
    stop: watch::Sender<bool>,
    /// Record keys of the channels the hub holds, and each one's channel.
    interests: RwLock<HashMap<Vec<u8>, Channel>>,
    session: RwLock<Option<Arc<Session>>>,
    counters: Counters,
}

impl Shared {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn set_status(&self, status: BrokerStatus) {
        super::report_status(&self.status, self.sink.get(), || status);
    }

    fn session(&self) -> Option<Arc<Session>> {
        self.session
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_session(&self, session: Option<Arc<Session>>) {
        *self.session.write().unwrap_or_else(|p| p.into_inner()) = session;
    }

    /// The current session, or why there is none.
    fn connected(&self) -> Result<Arc<Session>, BrokerError> {
        if self.stopped() {
            return Err(BrokerError::Closed);
        }
        match self.session() {
            Some(session) if *self.status.borrow() == BrokerStatus::Up => Ok(session),
            _ => Err(BrokerError::Unavailable("kafka is disconnected".into())),
        }
    }

    /// Reads `partition` from `offset`, waiting up to `wait` for records
    /// (see [`KafkaBroker::fetch`]), on the partition's reader connection
    /// (`reader`, the live long poll) or the shared one.
    async fn fetch(
        &self,
        session: &Session,
        partition: i32,
        offset: i64,
        wait: Duration,
        reader: bool,
    ) -> Result<Fetched, FetchError> {
        let clients = if reader {
            &session.readers
        } else {
            &session.partitions
        };
        let client = Session::pick(clients, partition).map_err(FetchError::Other)?;
        let wait_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        let limit = wait + self.config.request_timeout;
        let max_bytes = self.config.fetch_max_bytes;
        let (records, high_watermark) =
            match tokio::time::timeout(limit, client.fetch_records(offset, 1..max_bytes, wait_ms))
                .await
            {
                Ok(Ok(answer)) => answer,
                Ok(Err(KafkaError::ServerError {
                    protocol_error: ProtocolError::OffsetOutOfRange,
                    ..
                })) => return Err(FetchError::OutOfRange),
                Ok(Err(err)) => return Err(FetchError::Other(failed("fetch", err))),
                Err(_) => return Err(FetchError::Other(timed_out("fetch"))),
            };
        if high_watermark < offset {
            // Past the end: some brokers answer so rather than with
            // OffsetOutOfRange (the log was truncated or recreated).
            return Err(FetchError::OutOfRange);
        }
        let records: Vec<LogRecord> = records
            .into_iter()
            .filter(|r| r.offset >= offset)
            .map(|r| LogRecord {
                offset: r.offset,
                key: r.record.key.map(Bytes::from),
                value: r.record.value.map(Bytes::from).unwrap_or_default(),
                timestamp_ms: r.record.timestamp.timestamp_millis(),
            })
            .collect();
        let next = match records.last() {
            Some(last) => last.offset + 1,
            // Nothing although records follow: step over this offset (see
            // `KafkaStats::skipped_offsets`).
            None if high_watermark > offset => {
                bump(&self.counters.skipped_offsets);
                offset + 1
            }
            None => offset,
        };
        Ok(Fetched {
            records,
            next,
            high_watermark,
        })
    }

    /// The earliest offset still in `partition` and its high watermark.
    async fn bounds(&self, session: &Session, partition: i32) -> Result<(i64, i64), BrokerError> {
        let client = session.partition(partition)?;
        let limit = self.config.request_timeout;
        let ask = |at| async move {
            match tokio::time::timeout(limit, client.get_offset(at)).await {
                Ok(Ok(offset)) => Ok(offset),
                Ok(Err(err)) => Err(failed("list offsets", err)),
                Err(_) => Err(timed_out("list offsets")),
            }
        };
        let (earliest, latest) = tokio::try_join!(ask(OffsetAt::Earliest), ask(OffsetAt::Latest))?;
        Ok((earliest, latest))
    }
}

/// Why a fetch failed.
pub(crate) enum FetchError {
    /// The offset is outside the partition's log.
    OutOfRange,
    Other(BrokerError),
}

/// A failed client call as a [`BrokerError`]: connection and retry
/// failures are `Unavailable`; a server error is transient unless the
/// request itself was wrong (too large, invalid, not authorized).
pub(crate) fn failed(what: &str, err: KafkaError) -> BrokerError {
    match err {
        KafkaError::ServerError {
            protocol_error:
                ProtocolError::MessageTooLarge
                | ProtocolError::RecordListTooLarge
                | ProtocolError::InvalidRecord
                | ProtocolError::InvalidTopicException
                | ProtocolError::TopicAuthorizationFailed,
            ..
        } => BrokerError::Backend {
            source: format!("kafka {what}: {err}").into(),
            transient: false,
        },
        KafkaError::ServerError { .. } => BrokerError::Backend {
            source: format!("kafka {what}: {err}").into(),
            transient: true,
        },
        other => BrokerError::Unavailable(format!("kafka {what}: {other}")),
    }
}

/// The time now, as a record timestamp (milliseconds).
fn now() -> rskafka::chrono::DateTime<rskafka::chrono::Utc> {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    rskafka::chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn timed_out(what: &str) -> BrokerError {
    BrokerError::Unavailable(format!("kafka {what} timed out"))
}

/// A [`Broker`] on one Kafka topic. See the [module docs](self).
pub struct KafkaBroker {
    shared: Arc<Shared>,
    started: Mutex<bool>,
}

impl fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("brokers", &self.shared.config.brokers)
            .field("topic", &self.shared.config.topic)
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

impl KafkaBroker {
    /// Checks the configuration; connects when the hub starts it. Fails
    /// only on an invalid configuration, never because Kafka is
    /// unreachable.
    pub fn new(config: KafkaConfig) -> Result<Arc<Self>, BrokerError> {
        let config = config.checked()?;
        Ok(Arc::new(Self {
            shared: Arc::new(Shared {
                config,
                status: watch::channel(BrokerStatus::Down).0,
                sink: OnceLock::new(),
                stop: watch::channel(false).0,
                interests: RwLock::new(HashMap::new()),
                session: RwLock::new(None),
                counters: Counters::default(),
            }),
            started: Mutex::new(false),
        }))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> KafkaStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        KafkaStats {
            published: get(&c.published),
            publish_failed: get(&c.publish_failed),
            received: get(&c.received),
            received_bytes: get(&c.received_bytes),
            delivered: get(&c.delivered),
            foreign: get(&c.foreign),
            misplaced: get(&c.misplaced),
            skipped_offsets: get(&c.skipped_offsets),
            out_of_range: get(&c.out_of_range),
            connects: get(&c.connects),
            disconnects: get(&c.disconnects),
        }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.shared.config.topic
    }

    /// The record key of `channel` (see the module docs).
    pub fn record_key(&self, channel: &Channel) -> Vec<u8> {
        keys::record_key(channel)
    }

    /// The topic's epoch while connected: its topic id and partition count
    /// (see [`history::kafka`](crate::history::kafka)); `None` before the
    /// first connect.
    pub fn epoch(&self) -> Option<Arc<str>> {
        self.shared.session().map(|s| s.epoch.clone())
    }

    /// The partition `channel`'s records go to, while connected.
    pub fn partition_of(&self, channel: &Channel) -> Option<i32> {
        let session = self.shared.session()?;
        Some(keys::partition_of(
            &keys::record_key(channel),
            session.count(),
        ))
    }

    /// Produces `payload` as one record keyed by `channel` to the key's
    /// partition, and returns where it landed. Fails at once with a
    /// transient error while Kafka is unreachable.
    pub async fn produce(
        &self,
        channel: &Channel,
        payload: Bytes,
    ) -> Result<Produced, BrokerError> {
        let result = self.produce_once(channel, payload).await;
        let c = &self.shared.counters;
        bump(if result.is_ok() {
            &c.published
        } else {
            &c.publish_failed
        });
        result
    }

    async fn produce_once(
        &self,
        channel: &Channel,
        payload: Bytes,
    ) -> Result<Produced, BrokerError> {
        let session = self.shared.connected()?;
        let key = keys::record_key(channel);
        let partition = keys::partition_of(&key, session.count());
        let record = rskafka::record::Record {
            key: Some(key),
            value: Some(payload.to_vec()),
            headers: Default::default(),
            timestamp: now(),
        };
        let client = session.partition(partition)?;
        let limit = self.shared.config.request_timeout;
        match tokio::time::timeout(
            limit,
            client.produce(vec![record], Compression::NoCompression),
        )
        .await
        {
            Ok(Ok(offsets)) => match offsets.first() {
                Some(offset) => Ok(Produced {
                    partition,
                    offset: *offset,
                }),
                None => Err(BrokerError::Unavailable(
                    "kafka produce answered no offset".into(),
                )),
            },
            Ok(Err(err)) => Err(failed("produce", err)),
            Err(_) => Err(timed_out("produce")),
        }
    }

    /// Reads `partition` from `offset` (at most
    /// [`KafkaConfig::fetch_max_bytes`] of records, waiting up to `wait`
    /// for the first): the records at or after `offset`, and where to read
    /// next. An offset no longer in the log is a `Backend` error; a history
    /// store asks [`KafkaBroker::bounds`] first.
    pub async fn fetch(
        &self,
        partition: i32,
        offset: i64,
        wait: Duration,
    ) -> Result<Fetched, BrokerError> {
        let session = self.shared.connected()?;
        match self
            .shared
            .fetch(&session, partition, offset, wait, false)
            .await
        {
            Ok(fetched) => Ok(fetched),
            Err(FetchError::OutOfRange) => Err(BrokerError::Backend {
                source: format!("kafka offset {offset} is not in partition {partition}").into(),
                transient: false,
            }),
            Err(FetchError::Other(err)) => Err(err),
        }
    }

    /// The earliest offset still in `partition` (the log start, moved by
    /// retention) and its high watermark (the offset its next record gets).
    pub async fn bounds(&self, partition: i32) -> Result<(i64, i64), BrokerError> {
        let session = self.shared.connected()?;
        self.shared.bounds(&session, partition).await
    }
}

#[async_trait]
impl Broker for KafkaBroker {
    async fn start(&self, sink: Arc<dyn BusSink>) -> Result<(), BrokerError> {
        {
            let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
            if *started {
                return Err(BrokerError::Config("KafkaBroker started twice".into()));
            }
            *started = true;
        }
        let _ = self.shared.sink.set(sink);
        tokio::spawn(session::run(self.shared.clone()));
        // Give a reachable cluster the chance to be up before the hub's
        // first connects; an unreachable one is retried in the background.
        let mut status = self.shared.status.subscribe();
        let _ = tokio::time::timeout(
            self.shared.config.connect_timeout * 2,
            status.wait_for(|s| *s == BrokerStatus::Up),
        )
        .await;
        Ok(())
    }

    async fn publish(&self, channel: &Channel, payload: Bytes) -> Result<(), BrokerError> {
        self.produce(channel, payload).await.map(drop)
    }

    async fn subscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        // Every partition is read anyway: an interest is a filter, in
        // place at once, whether Kafka is reachable or not.
        self.shared
            .interests
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(keys::record_key(channel), channel.clone());
        Ok(())
    }

    async fn unsubscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        self.shared
            .interests
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&keys::record_key(channel));
        Ok(())
    }

    fn status(&self) -> watch::Receiver<BrokerStatus> {
        self.shared.status.subscribe()
    }

    async fn shutdown(&self) -> Result<(), BrokerError> {
        // Every publish is awaited by its caller: nothing is queued here.
        self.shared.stop.send_replace(true);
        self.shared.set_session(None);
        Ok(())
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
    }
}
