//! Reading a channel's history out of the stream, always from the
//! stream's leader (see the parent module's docs on why not by direct
//! gets): the barrier that makes a new leader's reads see every
//! acknowledged append, a channel's last message, a replay message by
//! message or through an ephemeral consumer, and whether a client's
//! position is still retained.

use std::time::Duration;

use futures_util::StreamExt;

use async_nats::jetstream::{consumer, stream};

use super::{backend, lock, unavailable, Inner, Ready};
use crate::broker::BrokerError;
use crate::history::{Entry, Position};

/// Stream sequences between a client's position and its channel's last
/// message up to which a replay reads message by message (one request
/// each) instead of creating a consumer.
pub const SHORT_REPLAY: u64 = 64;

/// The subject (under the history subjects, after `{prefix}_h.`) of the
/// empty messages [`Inner::sync_with_leader`] appends. No channel maps to
/// it; its republished copy (`{prefix}._sync`) has no subscriber.
pub(super) const BARRIER_SUBJECT: &str = "_sync";

impl Inner {
    /// Makes the reads that follow see every append the stream ever
    /// acknowledged; `true` when it appended a barrier.
    ///
    /// A replicated stream's leader acknowledges an append once a quorum
    /// stored it, but a server elected leader after that may not have
    /// applied such entries yet: Raft commits them with the first entry of
    /// the new leader's term. Until then it may answer reads without them
    /// (not seen on nats-server 2.9.10 in this crate's tests, and nothing
    /// in JetStream's documentation rules it out), and a replay
    /// right after a failover would end before them while the live events
    /// after them move the connection's cursor past: a silent hole. So,
    /// for a stream with more than one replica, the first read through a
    /// leader this node has not synced with (and the first after each
    /// reconnect of the broker) appends an empty message to
    /// [`BARRIER_SUBJECT`] and waits for its acknowledgement: the leader
    /// sends it only after applying every entry before it. One append per
    /// leader change and node, not per read.
    pub(super) async fn sync_with_leader(
        &self,
        ready: &Ready,
        info: &stream::Info,
    ) -> Result<bool, BrokerError> {
        if info.config.num_replicas <= 1 {
            return Ok(false);
        }
        let synced = |leader: &str, connects: u64| {
            lock(&self.synced)
                .as_ref()
                .is_some_and(|(l, c)| l == leader && *c == connects)
        };
        // No leader known: sync every time (the append fails until there is
        // one, and the caller's read would too).
        let leader = info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .unwrap_or_default();
        let connects = self.broker.stats().connects;
        if !leader.is_empty() && synced(&leader, connects) {
            return Ok(false);
        }
        let _one = self.syncing.lock().await;
        if !leader.is_empty() && synced(&leader, connects) {
            return Ok(false);
        }
        let subject = format!("{}_h.{BARRIER_SUBJECT}", self.prefix);
        let ack = ready
            .context
            .publish(subject, bytes::Bytes::new())
            .await
            .map_err(|e| unavailable("read barrier", e))?;
        ack.await.map_err(|e| unavailable("read barrier", e))?;
        if !leader.is_empty() {
            *lock(&self.synced) = Some((leader, connects));
        }
        Ok(true)
    }
}

/// `Some(message)`, `None` when the leader has no such message, or the
/// error (`what` names the request).
pub(super) fn found(
    result: Result<async_nats::jetstream::message::StreamMessage, stream::RawMessageError>,
    what: &str,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, BrokerError> {
    match result {
        Ok(message) => Ok(Some(message)),
        Err(err) if err.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(err) => Err(unavailable(what, err)),
    }
}

/// The sequence of `subject`'s last message (0: none), from the leader.
pub(super) async fn last_sequence(
    stream: &stream::Stream<()>,
    subject: &str,
) -> Result<u64, BrokerError> {
    let get = stream.raw_message_builder().last_by_subject(subject);
    Ok(found(get.send().await, "get last")?.map_or(0, |m| m.sequence))
}

/// Up to `limit` messages of `subject` after `after`, one leader request
/// each.
pub(super) async fn read_by_gets(
    stream: &stream::Stream<()>,
    subject: &str,
    after: Position,
    limit: usize,
) -> Result<Vec<Entry>, BrokerError> {
    let mut entries = Vec::new();
    let mut next = after.major().saturating_add(1);
    while entries.len() < limit {
        let get = stream
            .raw_message_builder()
            .sequence(next)
            .next_by_subject(subject);
        let Some(message) = found(get.send().await, "get next")? else {
            break;
        };
        next = message.sequence.saturating_add(1);
        entries.push(Entry::new(
            Position::new(message.sequence, 0),
            message.payload,
        ));
    }
    Ok(entries)
}

/// Up to `limit` messages of `subject` after `after`, through one
/// ephemeral consumer read in one batch (deleted after).
pub(super) async fn read_by_consumer(
    inner: &Inner,
    stream: &stream::Stream<()>,
    subject: &str,
    after: Position,
    limit: usize,
) -> Result<Vec<Entry>, BrokerError> {
    let start = after.major().saturating_add(1);
    // One ephemeral consumer on the channel's subject, read in one batch.
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.to_owned(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable("create consumer", e))?;
    let name = consumer.cached_info().name.clone();
    let pending = consumer.cached_info().num_pending;
    let mut entries = Vec::new();
    let wanted = usize::try_from(pending).unwrap_or(usize::MAX).min(limit);
    let result = async {
        if wanted == 0 {
            return Ok(());
        }
        let mut batch = consumer
            .fetch()
            .max_messages(wanted)
            .expires(inner.config.timeout)
            .messages()
            .await
            .map_err(|e| unavailable("fetch", e))?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| unavailable("fetch", e))?;
            let seq = message
                .info()
                .map_err(|e| backend("message info", e))?
                .stream_sequence;
            entries.push(Entry::new(Position::new(seq, 0), message.payload.clone()));
            if entries.len() == wanted {
                break;
            }
        }
        Ok(())
    }
    .await;
    // The server would drop it after its inactivity threshold anyway.
    let stream = stream.clone();
    tokio::spawn(async move {
        let _ = stream.delete_consumer(&name).await;
    });
    result.map(|()| entries)
}

/// Whether no message of `subject` after `p` can have been removed; see the
/// module docs. `last`: the subject's last sequence (0: none); `first`: the
/// stream's first sequence; `limit`: the per-subject limit; `no_holes`:
/// the stream has no interior deletes.
pub(super) async fn retained(
    stream: &stream::Stream<()>,
    subject: &str,
    p: u64,
    last: u64,
    first: u64,
    limit: Option<u64>,
    no_holes: bool,
) -> Result<bool, BrokerError> {
    if last != 0 && p >= last {
        return Ok(true);
    }
    if last != 0 {
        let get = stream
            .raw_message_builder()
            .sequence(1)
            .next_by_subject(subject);
        let oldest = found(get.send().await, "get first")?.map_or(u64::MAX, |m| m.sequence);
        // A stored message at or before `p`, or the next one right after
        // it: nothing of the channel after `p` is missing.
        if oldest <= p.saturating_add(1) {
            return Ok(true);
        }
    }
    if first > p.saturating_add(1) {
        return Ok(false);
    }
    // Nothing after `p` left from the front of the stream; per-subject
    // trimming (or purges) left holes only if the stream has any.
    let Some(limit) = limit.filter(|l| *l > 0) else {
        return Ok(true);
    };
    if last == 0 || no_holes {
        return Ok(true);
    }
    let mut subjects = stream
        .info_builder()
        .subjects(subject)
        .fetch()
        .await
        .map_err(|e| unavailable("stream info", e))?;
    let mut count = 0u64;
    while let Some(item) = subjects.next().await {
        let (name, n) = item.map_err(|e| unavailable("stream info", e))?;
        if name == subject {
            count = u64::try_from(n).unwrap_or(u64::MAX);
        }
    }
    Ok(count < limit)
}
