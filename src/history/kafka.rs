//! History from the Kafka log itself: the bus topic of
//! [`KafkaBroker`] is already a retained, ordered log, so this store keeps
//! nothing of its own.
//!
//! | what | on Kafka |
//! |---|---|
//! | a channel's history | the records with its key in its key's partition of the bus topic |
//! | a position | the record's offset in that partition, plus one: `(offset + 1, 0)` |
//! | a channel's head | the partition's high watermark (the offset its next record gets) |
//! | the epoch | the topic's id and partition count ([`KafkaBroker::epoch`]) |
//! | an append | one produce to the key's partition; the offset Kafka answers is the position |
//! | live events | every node reads every partition: the broker hands each record to the hub with its position ([`BusSink::deliver_at`](crate::broker::BusSink::deliver_at)), the store names the epoch ([`History::live_epoch`]) |
//!
//! So records that any other Kafka client produces with the default
//! partitioner are part of the history too: a client that reconnects gets
//! them replayed like the crate's own.
//!
//! # Epoch
//!
//! A topic deleted and created again gets a new topic id, so clients that
//! hold positions in the old one get the reset event. Adding partitions to
//! the topic moves channels to other partitions: the epoch holds the
//! partition count, so that resets too. A broker that gives no topic ids
//! (Kafka before 2.8) leaves only the partition count: a recreated topic
//! then goes unnoticed, except that a position past a partition's end is
//! a reset.
//!
//! # Replays and their cost
//!
//! A replay reads the channel's partition from the client's offset to the
//! partition's end and keeps the channel's records, skipping the others:
//! its cost grows with the partition's traffic since that offset (all the
//! channels that share the partition), bounded by Kafka's retention. A
//! connect that needs no replay (a new client, or one at the head of each
//! channel) reads only the partitions' offsets. A client whose position
//! is further behind than [`KafkaHistory::max_scan`] records of its
//! partition gets the reset event instead of a long scan.
//!
//! # Retention
//!
//! Retention is Kafka's (the topic's `retention.ms` and `retention.bytes`):
//! a position older than the log's start is a reset. On top of it the
//! store applies [`Retention::max_len`] and [`Retention::max_age`] as the
//! replay window: a client that missed more than `max_len` events of a
//! channel, or one older than `max_age`, gets the reset event, as with the
//! other stores. [`Retention::max_bytes`] does not apply (the data is on
//! the brokers). The store does not deduplicate idempotency keys
//! ([`History::idempotency_window`] is `None`): the hub keeps its own
//! node-local window.
//!
//! ```no_run
//! use std::sync::Arc;
//! use sse_cluster::broker::kafka::{KafkaBroker, KafkaConfig};
//! use sse_cluster::history::kafka::KafkaHistory;
//! use sse_cluster::history::Retention;
//! use sse_cluster::Hub;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = KafkaBroker::new(KafkaConfig::new("kafka://127.0.0.1:9092"))?;
//! let history = Arc::new(KafkaHistory::new(broker.clone(), Retention::default()));
//! let hub = Hub::builder().broker(broker).history(history).build().await?;
//! # let _ = hub;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Entry, Head, History, Position, Retention};
use crate::broker::kafka::{KafkaBroker, LogRecord};
use crate::broker::{BrokerError, Channel};

/// The default [`KafkaHistory::max_scan`].
pub const DEFAULT_MAX_SCAN: u64 = 100_000;

/// History read from the Kafka bus topic. See the [module docs](self).
#[derive(Debug)]
pub struct KafkaHistory {
    broker: Arc<KafkaBroker>,
    retention: Retention,
    max_scan: u64,
}

impl KafkaHistory {
    /// History in `broker`'s topic (the hubs must use that broker too),
    /// with `retention` as the replay window.
    pub fn new(broker: Arc<KafkaBroker>, retention: Retention) -> Self {
        Self {
            broker,
            retention,
            max_scan: DEFAULT_MAX_SCAN,
        }
    }

    /// Sets the most records of a partition a resume may read to check and
    /// replay a channel (default [`DEFAULT_MAX_SCAN`]); a client further
    /// behind gets the reset event.
    pub fn max_scan(mut self, records: u64) -> Self {
        self.max_scan = records.max(1);
        self
    }

    fn epoch(&self) -> Result<Arc<str>, BrokerError> {
        self.broker
            .epoch()
            .ok_or_else(|| BrokerError::Unavailable("kafka is not connected yet".into()))
    }

    fn partition(&self, channel: &Channel) -> Result<i32, BrokerError> {
        self.broker
            .partition_of(channel)
            .ok_or_else(|| BrokerError::Unavailable("kafka is not connected yet".into()))
    }

    /// Reads `partition` from offset `from` up to `end`, handing each
    /// record to `visit` until it breaks; false if more than `max` records
    /// were due first.
    async fn scan(
        &self,
        partition: i32,
        mut from: i64,
        end: i64,
        max: Option<u64>,
        mut visit: impl FnMut(&LogRecord) -> ControlFlow<()>,
    ) -> Result<bool, BrokerError> {
        let start = from;
        while from < end {
            if max.is_some_and(|max| u64::try_from(from - start).unwrap_or(u64::MAX) > max) {
                return Ok(false);
            }
            let fetched = self.broker.fetch(partition, from, Duration::ZERO).await?;
            for record in fetched.records.iter().filter(|r| r.offset < end) {
                if visit(record).is_break() {
                    return Ok(true);
                }
            }
            // A fetch moves on by at least one offset while records follow.
            from = fetched.next.max(from + 1);
        }
        Ok(true)
    }

    /// Whether every event of `channel` after `after` is still there and
    /// within the replay window.
    async fn retained(
        &self,
        channel: &Channel,
        partition: i32,
        after: Position,
        (earliest, end): (i64, i64),
    ) -> Result<bool, BrokerError> {
        let from = i64::try_from(after.major()).unwrap_or(i64::MAX);
        if from >= end {
            // At the head; past it, a position of another log.
            return Ok(from == end);
        }
        if from < earliest {
            return Ok(false);
        }
        let key = self.broker.record_key(channel);
        let oldest = self
            .retention
            .max_age
            .map(|age| now_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)));
        let (mut count, mut within) = (0usize, true);
        let scanned = self
            .scan(partition, from, end, Some(self.max_scan), |record| {
                if record.key.as_deref() != Some(key.as_slice()) {
                    return ControlFlow::Continue(());
                }
                count += 1;
                within = count <= self.retention.max_len
                    && oldest.is_none_or(|oldest| record.timestamp_ms >= oldest);
                if within {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            })
            .await?;
        Ok(scanned && within)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The position of the record at `offset`.
fn position(offset: i64) -> Position {
    Position::new(u64::try_from(offset).unwrap_or(0).saturating_add(1), 0)
}

#[async_trait]
impl History for KafkaHistory {
    async fn append(&self, channel: &Channel, payload: Bytes) -> Result<Position, BrokerError> {
        let produced = self.broker.produce(channel, payload).await?;
        Ok(position(produced.offset))
    }

    async fn heads(
        &self,
        channels: &[(Channel, Option<Position>)],
    ) -> Result<Vec<Head>, BrokerError> {
        let epoch = self.epoch()?;
        let mut bounds: HashMap<i32, (i64, i64)> = HashMap::new();
        let mut heads = Vec::with_capacity(channels.len());
        for (channel, asked) in channels {
            let partition = self.partition(channel)?;
            let partition_bounds = match bounds.get(&partition) {
                Some(b) => *b,
                None => {
                    let b = self.broker.bounds(partition).await?;
                    bounds.insert(partition, b);
                    b
                }
            };
            let retained = match asked {
                None => true,
                Some(after) => {
                    self.retained(channel, partition, *after, partition_bounds)
                        .await?
                }
            };
            // Any record the channel gets next has a higher position.
            let last = Position::new(u64::try_from(partition_bounds.1).unwrap_or(0), 0);
            heads.push(Head::new(epoch.clone(), last, retained));
        }
        Ok(heads)
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
        let partition = self.partition(channel)?;
        let (earliest, end) = self.broker.bounds(partition).await?;
        let from = i64::try_from(after.major())
            .unwrap_or(i64::MAX)
            .max(earliest);
        let key = self.broker.record_key(channel);
        let mut entries = Vec::new();
        // Not bounded: `heads` has checked the distance to the head.
        self.scan(partition, from, end, None, |record| {
            if record.key.as_deref() == Some(key.as_slice()) {
                entries.push(Entry::new(position(record.offset), record.value.clone()));
            }
            if entries.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await?;
        Ok(entries)
    }

    fn live_epoch(&self, _channel: &Channel) -> Option<Arc<str>> {
        self.broker.epoch()
    }
}
