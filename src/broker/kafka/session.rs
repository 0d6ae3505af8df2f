//! The connection task: connect, make sure the topic exists, learn its
//! epoch, read every partition from where this node stands, and on any
//! failure report Down, back off and start over.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::BackoffConfig;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{bump, failed, keys, metadata, timed_out, FetchError, Fetched, Session, Shared};
use crate::broker::backoff::{pause, stopped, Backoff};
use crate::broker::{BrokerError, BrokerStatus};
use crate::wire::Position;

/// How often a connected broker checks that its topic is the same one.
const EPOCH_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the last session stood: the topic's epoch and, per partition,
/// the next offset to read.
struct Resume {
    epoch: Arc<str>,
    next: Vec<i64>,
}

/// Keeps the node connected and reading (see the module docs).
pub(super) async fn run(shared: Arc<Shared>) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    let mut stop = shared.stop.subscribe();
    let mut resume: Option<Resume> = None;
    while !shared.stopped() {
        let connected = tokio::select! {
            result = connect(&shared, resume.as_ref()) => result,
            _ = stopped(&mut stop) => return,
        };
        let (session, starts) = match connected {
            Ok(parts) => parts,
            Err(err) => {
                tracing::debug!(error = %err, "kafka connect failed");
                shared.set_status(BrokerStatus::Down);
                if !pause(&shared.stop, backoff.delay()).await {
                    return;
                }
                continue;
            }
        };
        bump(&shared.counters.connects);
        let next: Arc<Vec<AtomicI64>> = Arc::new(starts.into_iter().map(AtomicI64::new).collect());
        let (lost_tx, mut lost) = mpsc::channel::<String>(1);
        let mut readers = JoinSet::new();
        for partition in 0..session.count() {
            readers.spawn(read(
                shared.clone(),
                session.clone(),
                partition,
                next.clone(),
                lost_tx.clone(),
            ));
        }
        drop(lost_tx);
        shared.set_session(Some(session.clone()));
        shared.set_status(BrokerStatus::Up);
        backoff.reset();
        tracing::info!(topic = %config.topic, epoch = %session.epoch, "kafka connected");

        // A topic deleted and created again between two fetches can go
        // unseen by the readers (rskafka reconnects by itself): its id is
        // checked every `EPOCH_CHECK`.
        let mut check = tokio::time::interval(EPOCH_CHECK);
        check.tick().await;
        let reason = loop {
            tokio::select! {
                why = lost.recv() => break why.unwrap_or_else(|| "readers ended".into()),
                _ = check.tick() => {
                    match metadata::epoch(config, session.count()).await {
                        Ok(epoch) if epoch != session.epoch => {
                            break format!("the topic was recreated (epoch {epoch})");
                        }
                        Ok(_) => {}
                        Err(err) => tracing::debug!(error = %err, "kafka epoch check failed"),
                    }
                }
                _ = stopped(&mut stop) => {
                    readers.abort_all();
                    return;
                }
            }
        };
        readers.abort_all();
        resume = Some(Resume {
            epoch: session.epoch.clone(),
            next: next.iter().map(|n| n.load(Ordering::Acquire)).collect(),
        });
        shared.set_session(None);
        bump(&shared.counters.disconnects);
        shared.set_status(BrokerStatus::Down);
        tracing::warn!(%reason, "kafka connection down; reconnecting");
        if !pause(&shared.stop, backoff.delay()).await {
            return;
        }
    }
}

/// A client for the bootstrap brokers, the topic (created if missing), its
/// epoch and the offset each partition is read from: where the last
/// session stopped if the topic is the same, else its end.
async fn connect(
    shared: &Shared,
    resume: Option<&Resume>,
) -> Result<(Arc<Session>, Vec<i64>), BrokerError> {
    let config = &shared.config;
    let client = build_client(shared).await?;
    let count = ensure_topic(shared, &client).await?;
    let epoch = metadata::epoch(config, count).await?;
    // Kafka serves one connection's requests one at a time: each
    // partition's long poll gets a connection of its own, so that it
    // holds up neither the others nor the publishes.
    let mut partitions = Vec::new();
    let mut readers = Vec::new();
    for partition in 0..count {
        partitions.push(partition_client(shared, &client, partition).await?);
        let own = build_client(shared).await?;
        readers.push(partition_client(shared, &own, partition).await?);
    }
    let session = Arc::new(Session {
        partitions,
        readers,
        epoch,
    });
    let same_topic =
        resume.filter(|r| r.epoch == session.epoch && r.next.len() == session.partitions.len());
    let mut starts = Vec::new();
    for partition in 0..count {
        let (earliest, latest) = shared.bounds(&session, partition).await?;
        let start =
            match same_topic.and_then(|r| r.next.get(usize::try_from(partition).unwrap_or(0))) {
                // Records published while this node was away are read now.
                Some(&next) if next < earliest => {
                    bump(&shared.counters.out_of_range);
                    earliest
                }
                Some(&next) => next.min(latest),
                None => latest,
            };
        starts.push(start);
    }
    Ok((session, starts))
}

/// A client for the bootstrap brokers (one connection per broker).
async fn build_client(shared: &Shared) -> Result<Client, BrokerError> {
    let config = &shared.config;
    let build = ClientBuilder::new(config.brokers.clone())
        .client_id("sse-cluster")
        .backoff_config(BackoffConfig {
            init_backoff: config.backoff_min.min(config.request_timeout),
            max_backoff: config.request_timeout,
            base: 2.0,
            // rskafka retries a broken connection until this deadline: the
            // broker's own reconnect loop takes over after it.
            deadline: Some(config.request_timeout),
        })
        .build();
    match tokio::time::timeout(config.connect_timeout, build).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(err)) => Err(failed("connect", err)),
        Err(_) => Err(timed_out("connect")),
    }
}

async fn partition_client(
    shared: &Shared,
    client: &Client,
    partition: i32,
) -> Result<Arc<PartitionClient>, BrokerError> {
    let config = &shared.config;
    let made =
        client.partition_client(config.topic.clone(), partition, UnknownTopicHandling::Retry);
    match tokio::time::timeout(config.request_timeout * 2, made).await {
        Ok(Ok(client)) => Ok(Arc::new(client)),
        Ok(Err(err)) => Err(failed("partition client", err)),
        Err(_) => Err(timed_out("partition client")),
    }
}

/// The topic's partition count, creating it first if it is missing.
async fn ensure_topic(shared: &Shared, client: &Client) -> Result<i32, BrokerError> {
    let config = &shared.config;
    let limit = config.request_timeout;
    let count = || async {
        match tokio::time::timeout(limit, client.list_topics()).await {
            Ok(Ok(topics)) => Ok(topics
                .into_iter()
                .find(|t| t.name == config.topic)
                .map(|t| i32::try_from(t.partitions.len()).unwrap_or(i32::MAX))
                .filter(|n| *n > 0)),
            Ok(Err(err)) => Err(failed("list topics", err)),
            Err(_) => Err(timed_out("list topics")),
        }
    };
    if let Some(n) = count().await? {
        return Ok(n);
    }
    let controller = client
        .controller_client()
        .map_err(|e| failed("controller", e))?;
    let timeout_ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    let create = controller.create_topic(
        config.topic.clone(),
        config.partitions,
        config.replication_factor,
        timeout_ms,
    );
    match tokio::time::timeout(limit * 2, create).await {
        Ok(Ok(())) => {
            tracing::info!(topic = %config.topic, partitions = config.partitions, "kafka topic created");
        }
        // Another node created it first.
        Ok(Err(KafkaError::ServerError {
            protocol_error: ProtocolError::TopicAlreadyExists,
            ..
        })) => {}
        Ok(Err(err)) => return Err(failed("create topic", err)),
        Err(_) => return Err(timed_out("create topic")),
    }
    // The metadata may lag the creation for a moment.
    for _ in 0..20 {
        if let Some(n) = count().await? {
            return Ok(n);
        }
        tokio::time::sleep(limit / 20).await;
    }
    Err(BrokerError::Unavailable(format!(
        "kafka topic {} does not show after its creation",
        config.topic
    )))
}

/// Reads one partition for as long as the session lives, handing the
/// records of the channels the hub holds to it; tells `lost` why it
/// stopped.
async fn read(
    shared: Arc<Shared>,
    session: Arc<Session>,
    partition: i32,
    next: Arc<Vec<AtomicI64>>,
    lost: mpsc::Sender<String>,
) {
    let Some(slot) = usize::try_from(partition).ok().and_then(|p| next.get(p)) else {
        return;
    };
    let wait = shared.config.fetch_wait;
    let why = loop {
        if shared.stopped() {
            return;
        }
        let from = slot.load(Ordering::Acquire);
        match shared.fetch(&session, partition, from, wait, true).await {
            Ok(fetched) => {
                deliver(&shared, &session, partition, &fetched);
                slot.store(fetched.next, Ordering::Release);
            }
            Err(FetchError::OutOfRange) => match shared.bounds(&session, partition).await {
                // Retention passed this node's offset: what it had not read
                // is gone; the hub is told.
                Ok((earliest, _)) if from < earliest => {
                    bump(&shared.counters.out_of_range);
                    slot.store(earliest, Ordering::Release);
                    if let Some(sink) = shared.sink.get() {
                        sink.messages_lost(None);
                    }
                }
                // Past the end: the topic was truncated or recreated.
                Ok(_) => break format!("offset {from} of partition {partition} is past the log's end (topic recreated?)"),
                Err(err) => break err.to_string(),
            },
            Err(FetchError::Other(err)) => break err.to_string(),
        }
    };
    let _ = lost.try_send(why);
}

/// Hands the records of held channels to the hub, each with its position
/// (its offset + 1) when it sits in its key's partition.
fn deliver(shared: &Shared, session: &Session, partition: i32, fetched: &Fetched) {
    let c = &shared.counters;
    let Some(sink) = shared.sink.get() else {
        return;
    };
    for record in &fetched.records {
        bump(&c.received);
        let size = record.value.len() + record.key.as_ref().map_or(0, Bytes::len);
        c.received_bytes
            .fetch_add(u64::try_from(size).unwrap_or(u64::MAX), Ordering::Relaxed);
        let channel = record.key.as_ref().and_then(|key| {
            shared
                .interests
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(key.as_ref())
                .cloned()
        });
        let (Some(channel), Some(key)) = (channel, record.key.as_ref()) else {
            bump(&c.foreign);
            continue;
        };
        bump(&c.delivered);
        if keys::partition_of(key, session.count()) == partition {
            let position = Position::new(u64::try_from(record.offset).unwrap_or(0) + 1, 0);
            sink.deliver_at(&channel, record.value.clone(), position);
        } else {
            bump(&c.misplaced);
            sink.deliver(&channel, record.value.clone());
        }
    }
}
