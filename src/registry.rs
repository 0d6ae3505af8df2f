//! Who is connected on this node: connections indexed by id, user and topic.
//!
//! Every operation is synchronous and short: no lock is ever held across an
//! `.await`. Registration and unregistration are O(1) amortised per index
//! (hash map inserts and removes); a fan-out walks only the connections of the
//! target.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;

use crate::broker::Channel;
use crate::stream::{FrameSender, SendError};
use crate::telemetry::FanOut;

/// A connection id, unique across the cluster.
///
/// Its text is `{node}.{instance}.{n}`: the node id, a random tag chosen when
/// the hub starts (so a restarted node never reuses an id), and a counter.
/// The node part tells any hub where to route an event for this connection.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    text: Arc<str>,
    node_len: usize,
    seq: u64,
}

impl ConnectionId {
    pub(crate) fn new(instance: &str, node_len: usize, seq: u64) -> Self {
        Self {
            text: format!("{instance}.{seq}").into(),
            node_len,
            seq,
        }
    }

    /// Parses a connection id received from outside (a URL, the bus).
    /// Returns `None` unless it has the `{node}.{instance}.{n}` shape.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() > 256 {
            return None;
        }
        let (node, rest) = text.split_once('.')?;
        let (instance, seq) = rest.rsplit_once('.')?;
        if node.is_empty() || instance.is_empty() || instance.contains('.') {
            return None;
        }
        let seq: u64 = seq.parse().ok()?;
        Some(Self {
            text: text.into(),
            node_len: node.len(),
            seq,
        })
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The id of the node holding the connection.
    pub fn node(&self) -> &str {
        &self.text[..self.node_len]
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({})", self.text)
    }
}

/// Connection counters are already unique; hashing them again is waste.
#[derive(Default)]
struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        // Spread sequential ids over DashMap shards and hash buckets.
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type SeqMap<V> = HashMap<u64, V, BuildHasherDefault<SeqHasher>>;

/// The connections of one user or topic on this node. Most have one: that
/// one is held in place, without a hash table of its own (which cost about
/// 110 bytes per subscription, more than the rest of the index).
#[derive(Default)]
enum Members {
    #[default]
    Empty,
    One(u64, FrameSender),
    Many(SeqMap<FrameSender>),
}

impl Members {
    fn len(&self) -> usize {
        match self {
            Members::Empty => 0,
            Members::One(..) => 1,
            Members::Many(map) => map.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&mut self, seq: u64, sender: FrameSender) {
        match self {
            Members::Empty => *self = Members::One(seq, sender),
            Members::One(one, held) if *one == seq => *held = sender,
            Members::One(..) => {
                let Members::One(one, held) = std::mem::take(self) else {
                    return;
                };
                let mut map = SeqMap::default();
                map.insert(one, held);
                map.insert(seq, sender);
                *self = Members::Many(map);
            }
            Members::Many(map) => {
                map.insert(seq, sender);
            }
        }
    }

    fn remove(&mut self, seq: u64) {
        match self {
            Members::One(one, _) if *one == seq => *self = Members::Empty,
            Members::Many(map) => {
                map.remove(&seq);
            }
            _ => {}
        }
    }

    /// Runs `f` on every member.
    fn each(&self, mut f: impl FnMut(u64, &FrameSender)) {
        match self {
            Members::Empty => {}
            Members::One(seq, sender) => f(*seq, sender),
            Members::Many(map) => map.iter().for_each(|(seq, sender)| f(*seq, sender)),
        }
    }
}

struct Entry {
    id: ConnectionId,
    user: Option<Arc<str>>,
    topics: Box<[Arc<str>]>,
    sender: FrameSender,
}

/// A connection as [`ConnectionRegistry::connections`] lists it.
pub(crate) struct Held {
    pub(crate) sender: FrameSender,
    pub(crate) user: Option<Arc<str>>,
    /// Sorted.
    pub(crate) topics: Box<[Arc<str>]>,
}

/// Counts one send's outcome.
/// `Ok(false)` is a frame the connection skipped (a gate found it already
/// sent, or holds it back for later): not delivered now.
fn record(out: &mut FanOut, result: Result<bool, SendError>) {
    match result {
        Ok(true) => out.delivered += 1,
        Ok(false) => {}
        Err(SendError::Dropped) => out.dropped += 1,
        Err(SendError::OverflowClosed) => out.overflow_closed += 1,
        Err(_) => {}
    }
}

/// The connections held by this node.
///
/// The hub owns one; read it through [`Hub::registry`](crate::Hub::registry).
#[derive(Default)]
pub struct ConnectionRegistry {
    by_id: DashMap<u64, Entry, BuildHasherDefault<SeqHasher>>,
    by_user: DashMap<Arc<str>, Members>,
    by_topic: DashMap<Arc<str>, Members>,
    len: AtomicUsize,
}

impl fmt::Debug for ConnectionRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionRegistry")
            .field("connections", &self.len())
            .field("users", &self.by_user.len())
            .field("topics", &self.by_topic.len())
            .finish()
    }
}

impl ConnectionRegistry {
    /// Connections held on this node.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when no connection is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections of `user` on this node.
    pub fn user_connections(&self, user: &str) -> usize {
        self.by_user.get(user).map_or(0, |m| m.len())
    }

    /// Connections following `topic` on this node.
    pub fn topic_connections(&self, topic: &str) -> usize {
        self.by_topic.get(topic).map_or(0, |m| m.len())
    }

    /// True when the connection is held here.
    pub fn contains(&self, id: &ConnectionId) -> bool {
        self.by_id.get(&id.seq()).is_some_and(|e| e.id == *id)
    }

    /// True when some local connection needs messages from `channel`.
    pub(crate) fn has_interest(&self, channel: &Channel) -> bool {
        match channel {
            Channel::Topic(t) => self.by_topic.contains_key(t),
            Channel::User(u) => self.by_user.contains_key(u),
            Channel::Node(_) | Channel::Broadcast => true,
        }
    }

    /// Adds a connection; returns the channels that had no local interest
    /// before it.
    ///
    /// A name already in the index replaces the connection's copy in its
    /// entry, so that a name followed by many connections is held once, not
    /// once per connection.
    pub(crate) fn register(
        &self,
        id: ConnectionId,
        mut user: Option<Arc<str>>,
        mut topics: Box<[Arc<str>]>,
        sender: FrameSender,
    ) -> Vec<Channel> {
        let seq = id.seq();
        let mut fresh = Vec::new();
        if let Some(user) = &mut user {
            let mut conns = self.by_user.entry(user.clone()).or_default();
            *user = conns.key().clone();
            if conns.is_empty() {
                fresh.push(Channel::User(user.clone()));
            }
            conns.insert(seq, sender.clone());
        }
        for topic in topics.iter_mut() {
            let mut conns = self.by_topic.entry(topic.clone()).or_default();
            *topic = conns.key().clone();
            if conns.is_empty() {
                fresh.push(Channel::Topic(topic.clone()));
            }
            conns.insert(seq, sender.clone());
        }
        self.by_id.insert(
            seq,
            Entry {
                id,
                user,
                topics,
                sender,
            },
        );
        self.len.fetch_add(1, Ordering::Relaxed);
        fresh
    }

    /// Removes a connection; returns the channels no local connection needs
    /// any more.
    pub(crate) fn unregister(&self, id: &ConnectionId) -> Vec<Channel> {
        let Some((_, entry)) = self.by_id.remove_if(&id.seq(), |_, e| e.id == *id) else {
            return Vec::new();
        };
        self.len.fetch_sub(1, Ordering::Relaxed);
        let seq = id.seq();
        let mut emptied = Vec::new();
        if let Some(user) = entry.user {
            if remove_from(&self.by_user, &user, seq) {
                emptied.push(Channel::User(user));
            }
        }
        for topic in entry.topics.iter() {
            if remove_from(&self.by_topic, topic, seq) {
                emptied.push(Channel::Topic(topic.clone()));
            }
        }
        emptied
    }

    pub(crate) fn send_to_topic(&self, topic: &str, frame: &Bytes) -> FanOut {
        fan_out(self.by_topic.get(topic).as_deref(), frame)
    }

    pub(crate) fn send_to_user(&self, user: &str, frame: &Bytes) -> FanOut {
        fan_out(self.by_user.get(user).as_deref(), frame)
    }

    pub(crate) fn send_to_connection(&self, id: &ConnectionId, frame: &Bytes) -> FanOut {
        let mut out = FanOut::default();
        if let Some(entry) = self.by_id.get(&id.seq()) {
            if entry.id == *id {
                record(&mut out, entry.sender.send(frame.clone()).map(|()| true));
            }
        }
        out
    }

    pub(crate) fn send_to_all(&self, frame: &Bytes) -> FanOut {
        self.fan_out_all(|sender| sender.send(frame.clone()).map(|()| true))
    }

    fn fan_out_all(&self, send: impl Fn(&FrameSender) -> Result<bool, SendError>) -> FanOut {
        let mut out = FanOut::default();
        for entry in self.by_id.iter() {
            record(&mut out, send(&entry.sender));
        }
        out
    }

    /// Runs `send` for every connection that follows `channel` (a topic,
    /// a user, or everyone); node channels reach no one this way.
    pub(crate) fn fan_out_on(
        &self,
        channel: &Channel,
        send: impl Fn(&FrameSender) -> Result<bool, SendError>,
    ) -> FanOut {
        match channel {
            Channel::Topic(t) => fan_out_with(self.by_topic.get(t).as_deref(), send),
            Channel::User(u) => fan_out_with(self.by_user.get(u).as_deref(), send),
            Channel::Broadcast => self.fan_out_all(send),
            Channel::Node(_) => FanOut::default(),
        }
    }

    /// Queues `frame` to every connection that follows `channel`.
    pub(crate) fn send_on(&self, channel: &Channel, frame: &Bytes) -> FanOut {
        self.fan_out_on(channel, |sender| sender.send(frame.clone()).map(|()| true))
    }

    /// Every connection's sender, user and topics (sorted), e.g. for a
    /// replay after a bus outage.
    pub(crate) fn connections(&self) -> Vec<Held> {
        self.by_id
            .iter()
            .map(|e| Held {
                sender: e.sender.clone(),
                user: e.user.clone(),
                topics: e.topics.clone(),
            })
            .collect()
    }

    /// Closes every stream after its queued frames, each with its own final
    /// frame from `last`.
    pub(crate) fn close_all(&self, mut last: impl FnMut() -> Option<Bytes>) {
        for entry in self.by_id.iter() {
            entry.sender.close_with(last());
        }
    }

    /// Closes every stream that `channel` reaches (a topic, a user, or
    /// everyone; node channels reach none this way), each after its queued
    /// frames and its own final frame from `last`; returns how many were
    /// still open.
    pub(crate) fn close_on(&self, channel: &Channel, last: impl Fn() -> Bytes) -> u64 {
        let out = self.fan_out_on(channel, |sender| {
            if sender.is_closed() {
                return Ok(false);
            }
            sender.close_with(Some(last()));
            Ok(true)
        });
        out.delivered
    }

    /// Closes connection `id`'s stream after its queued frames and `last`;
    /// false if it is not held here or already closing.
    pub(crate) fn close_connection(&self, id: &ConnectionId, last: Bytes) -> bool {
        match self.by_id.get(&id.seq()) {
            Some(entry) if entry.id == *id && !entry.sender.is_closed() => {
                entry.sender.close_with(Some(last));
                true
            }
            _ => false,
        }
    }

    /// Connections following `topic` here, and their distinct users (in no
    /// particular order). O(connections of the topic); for presence answers.
    pub(crate) fn topic_presence(&self, topic: &str) -> (u64, Vec<Arc<str>>) {
        // Copy the ids first: no lock of one map is held while reading the other.
        let seqs: Vec<u64> = match self.by_topic.get(topic) {
            Some(conns) => {
                let mut seqs = Vec::with_capacity(conns.len());
                conns.each(|seq, _| seqs.push(seq));
                seqs
            }
            None => return (0, Vec::new()),
        };
        let mut users = std::collections::HashSet::new();
        for seq in &seqs {
            if let Some(user) = self.by_id.get(seq).and_then(|e| e.user.clone()) {
                users.insert(user);
            }
        }
        (seqs.len() as u64, users.into_iter().collect())
    }

    /// Ends every stream now, dropping what is still queued.
    pub(crate) fn abort_all(&self) {
        for entry in self.by_id.iter() {
            entry.sender.abort();
        }
    }
}

fn fan_out(conns: Option<&Members>, frame: &Bytes) -> FanOut {
    fan_out_with(conns, |sender| sender.send(frame.clone()).map(|()| true))
}

fn fan_out_with(
    conns: Option<&Members>,
    send: impl Fn(&FrameSender) -> Result<bool, SendError>,
) -> FanOut {
    let mut out = FanOut::default();
    if let Some(conns) = conns {
        conns.each(|_, sender| record(&mut out, send(sender)));
    }
    out
}

/// Removes `seq` from `key`'s set; drops the set and returns true when it
/// becomes empty.
fn remove_from(index: &DashMap<Arc<str>, Members>, key: &Arc<str>, seq: u64) -> bool {
    index
        .remove_if_mut(key, |_, conns| {
            conns.remove(seq);
            conns.is_empty()
        })
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{channel, StreamConfig};

    fn conn(
        registry: &ConnectionRegistry,
        seq: u64,
        user: Option<&str>,
        topics: &[&str],
    ) -> (ConnectionId, Vec<Channel>, crate::SseStream) {
        let id = ConnectionId::new("n1.abc", 2, seq);
        let (tx, rx) = channel(&StreamConfig::default());
        let fresh = registry.register(
            id.clone(),
            user.map(Into::into),
            topics.iter().map(|t| Arc::from(*t)).collect(),
            tx,
        );
        (id, fresh, rx)
    }

    #[test]
    fn interest_starts_and_ends_with_the_first_and_last_connection() {
        let r = ConnectionRegistry::default();
        let (a, fresh_a, _sa) = conn(&r, 1, Some("u"), &["t1", "t2"]);
        assert_eq!(fresh_a.len(), 3);
        let (b, fresh_b, _sb) = conn(&r, 2, Some("u"), &["t2", "t3"]);
        assert_eq!(fresh_b, vec![Channel::Topic("t3".into())]);
        assert_eq!(r.len(), 2);
        assert_eq!(r.topic_connections("t2"), 2);
        let mut gone = r.unregister(&a);
        gone.sort();
        assert_eq!(gone, vec![Channel::Topic("t1".into())]);
        let gone = r.unregister(&b);
        assert_eq!(gone.len(), 3);
        assert!(r.is_empty());
        assert!(!r.has_interest(&Channel::Topic("t2".into())));
        assert!(r.unregister(&b).is_empty(), "double unregister is a no-op");
    }

    #[test]
    fn a_name_followed_by_many_connections_is_held_once() {
        let r = ConnectionRegistry::default();
        let (_a, _, _sa) = conn(&r, 1, Some("u"), &["t"]);
        let (_b, _, _sb) = conn(&r, 2, Some("u"), &["t"]);
        let held = r.connections();
        assert_eq!(held.len(), 2);
        let (first, second) = (&held[0], &held[1]);
        assert!(Arc::ptr_eq(&first.topics[0], &second.topics[0]));
        let (Some(u1), Some(u2)) = (&first.user, &second.user) else {
            panic!("both have the user");
        };
        assert!(Arc::ptr_eq(u1, u2));
    }

    #[test]
    fn connection_ids_parse_and_reject() {
        let id = ConnectionId::new("node-a.x7k2", 6, 17);
        assert_eq!(id.as_str(), "node-a.x7k2.17");
        assert_eq!(id.node(), "node-a");
        assert_eq!(ConnectionId::parse("node-a.x7k2.17"), Some(id));
        for bad in ["", "a", "a.b", "a..1", ".b.1", "a.b.c.1", "a.b.x", "a.b.-1"] {
            assert_eq!(ConnectionId::parse(bad), None, "{bad:?}");
        }
        assert_eq!(ConnectionId::parse(&"a".repeat(300)), None);
    }

    #[test]
    fn stale_id_with_other_instance_is_not_delivered() {
        let r = ConnectionRegistry::default();
        let (_id, _, _s) = conn(&r, 1, None, &[]);
        let stale = ConnectionId::parse("n1.old.1").unwrap();
        assert!(!r.contains(&stale));
        assert_eq!(r.send_to_connection(&stale, &Bytes::new()).delivered, 0);
    }
}
