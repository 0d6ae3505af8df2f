//! Presence: how many connections and distinct users follow a topic across
//! the cluster, and whether a user is connected anywhere.
//!
//! ```no_run
//! use sse_cluster::{presence::PresenceConfig, Hub};
//!
//! # async fn demo(broker: std::sync::Arc<dyn sse_cluster::Broker>) -> Result<(), Box<dyn std::error::Error>> {
//! // Enable it on every node of the cluster.
//! let hub = Hub::builder().broker(broker).presence(PresenceConfig::default()).build().await?;
//! let news = hub.presence().topic("news").await?;
//! println!("{} connections, {} users, {} nodes answered", news.connections, news.users, news.nodes_answered);
//! let online = hub.presence().user_online("42").await?;
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! Request and response over the bus, so it works on every broker (it uses
//! only the [`Broker`](crate::Broker) trait):
//!
//! 1. **Membership.** Every hub with presence enabled publishes a `hello` on
//!    the broadcast channel every [`PresenceConfig::heartbeat`] (default 2 s)
//!    and a `bye` when it shuts down. A hub that hears a `hello` from a node
//!    it did not know answers with its own `hello` on that node's channel, so
//!    a new node learns its peers within one bus round trip. A peer not heard
//!    from for [`PresenceConfig::forget_after`] (default 6 s) is forgotten:
//!    **a node that dies without a `bye` (crash, `SIGKILL`, network cut) is
//!    forgotten at most `forget_after` after its death**, and at least
//!    `forget_after - heartbeat` after it. Queries, answers and `hello`s all
//!    count as signs of life.
//! 2. **Query.** The asking hub publishes a `query` on the broadcast channel
//!    and counts its own connections directly. Every other hub with presence
//!    enabled answers on the asker's node channel with its counts.
//! 3. **Completion.** The asker collects answers until every node it
//!    believes alive has answered (then [`TopicPresence::complete`] is true)
//!    or [`PresenceConfig::timeout`] (default 1 s) passes (then it is false:
//!    some node is slow, partitioned, or dead and not yet forgotten). During
//!    its first 250 ms a hub may not know all its peers yet, so it keeps
//!    collecting at least until then.
//!
//! # Consistency
//!
//! A snapshot, not a transaction: each node counts when the query reaches
//! it, so a client moving between nodes meanwhile may be counted twice or
//! not at all. Connections of a node that died are gone at once (its
//! clients' TCP connections dropped with it), even before it is forgotten:
//! until then only `complete` says that an answer is missing.
//!
//! # Cost and bounds
//!
//! A query costs one broadcast message and one answer per node. A topic
//! answer lists the node's distinct users of the topic so that the asker can
//! count users once across nodes, up to [`MAX_ANSWER_USER_BYTES`] of names
//! per node; beyond that the node sends only its count, and the asker adds
//! the counts of unlisted users: then [`TopicPresence::users`] is an upper
//! bound (a user on two nodes may be counted twice) and
//! [`TopicPresence::users_exact`] is false. At most [`MAX_QUERIES_IN_FLIGHT`]
//! queries of one hub wait at once ([`PresenceError::Busy`] beyond), and a
//! hub computes at most [`MAX_ANSWERS_IN_FLIGHT`] answers at once (further
//! queries are dropped, so the asker sees an incomplete result rather than
//! an overloaded node). Heartbeats cost each node `nodes / heartbeat`
//! received messages per second.
//!
//! # Control messages on the bus
//!
//! Presence messages are JSON objects that start with `{"ctl":1,` (the
//! control protocol version), for example
//! `{"ctl":1,"op":"query","from":"a.x7k2pq","req":7,"topic":"news"}`. They
//! are not event envelopes (they have no `v`, so
//! [`Envelope::decode`](crate::wire::Envelope::decode) refuses them and a
//! node without presence support counts them as malformed), they are never
//! delivered to SSE clients, and they are not counted in
//! [`HubStats`](crate::HubStats) `bus_*` counters but in
//! [`PresenceStats`]. A malformed one is counted and dropped, never a panic.
//! A hub with presence disabled ignores them.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::broker::BrokerError;

mod state;

use state::Question;
pub(crate) use state::{is_control, PresenceState};

/// Most bytes of user names one node lists in a topic answer; beyond it the
/// node sends only its count (see "Cost and bounds").
pub const MAX_ANSWER_USER_BYTES: usize = 256 * 1024;

/// Most presence queries one hub waits on at once.
pub const MAX_QUERIES_IN_FLIGHT: usize = 256;

/// Most answers one hub computes and sends at once.
pub const MAX_ANSWERS_IN_FLIGHT: usize = 32;

/// The control protocol version.
const CONTROL_VERSION: u64 = 1;

/// How control messages start (see the module docs).
const CONTROL_PREFIX: &[u8] = b"{\"ctl\":";

/// A new hub keeps collecting answers at least this long after it started:
/// its peers' welcome `hello`s may still be on their way.
const WARM_UP: Duration = Duration::from_millis(250);

/// Most peers a hub believes alive at once. Presence trusts the bus (see the
/// README's bus trust model); this bounds what forged `hello`s can make a
/// node hold and send: a `hello` from an unknown node while the table is
/// full (after forgetting silent peers) is ignored and counted
/// ([`PresenceStats::peers_refused`]).
pub const MAX_PEERS: usize = 1024;

/// Shortest heartbeat interval; shorter settings are raised to it.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// Settings of presence; see the module docs for what each one bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceConfig {
    /// How often the hub says `hello`. Default: 2 s.
    pub heartbeat: Duration,
    /// How long a silent peer is still believed alive. Default: 6 s (three
    /// heartbeats); at least 1.5 heartbeats.
    pub forget_after: Duration,
    /// How long a query waits for answers. Default: 1 s.
    pub timeout: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(2),
            forget_after: Duration::from_secs(6),
            timeout: Duration::from_secs(1),
        }
    }
}

impl PresenceConfig {
    /// Sets [`PresenceConfig::heartbeat`] (at least [`MIN_HEARTBEAT`]).
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval.max(MIN_HEARTBEAT);
        self
    }

    /// The settings as the hub uses them: the fields are public, so a value
    /// set directly (a zero heartbeat, say) is clamped here, where it is
    /// used, rather than trusted.
    fn clamped(self) -> Self {
        Self {
            heartbeat: self.heartbeat.max(MIN_HEARTBEAT),
            ..self
        }
    }

    /// Sets [`PresenceConfig::forget_after`].
    pub fn forget_after(mut self, after: Duration) -> Self {
        self.forget_after = after;
        self
    }

    /// Sets [`PresenceConfig::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `forget_after`, raised to 1.5 heartbeats so that one late heartbeat
    /// does not make a live peer look dead.
    fn forget(&self) -> Duration {
        self.forget_after.max(self.heartbeat * 3 / 2)
    }
}

/// Why a presence query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// Presence is not enabled on this hub ([`HubBuilder::presence`](crate::HubBuilder::presence)).
    #[error("presence is not enabled on this hub")]
    Disabled,
    /// The hub is shutting down.
    #[error("the hub is shutting down")]
    ShutDown,
    /// The topic or user name is empty or longer than
    /// [`MAX_NAME_LEN`](crate::limits::MAX_NAME_LEN).
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// [`MAX_QUERIES_IN_FLIGHT`] queries are already waiting.
    #[error("too many presence queries in flight")]
    Busy,
    /// The query could not be published; only this node could answer.
    #[error("the presence query could not be published: {0}")]
    Broker(#[from] BrokerError),
}

impl PresenceError {
    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            PresenceError::Busy => true,
            PresenceError::Broker(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Who follows a topic, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TopicPresence {
    /// Connections following the topic on the nodes that answered.
    pub connections: u64,
    /// Distinct users among them (connections without a user are not
    /// counted); an upper bound when `users_exact` is false.
    pub users: u64,
    /// False when a node had too many users to list them all (see
    /// [`MAX_ANSWER_USER_BYTES`]).
    pub users_exact: bool,
    /// Nodes that answered, this one included.
    pub nodes_answered: usize,
    /// Every node believed alive answered before the timeout.
    pub complete: bool,
}

/// Where a user is connected, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UserPresence {
    /// Connections of the user on the nodes that answered.
    pub connections: u64,
    /// Node ids holding at least one of them, sorted.
    pub nodes: Vec<String>,
    /// Nodes that answered, this one included.
    pub nodes_answered: usize,
    /// Every node believed alive answered before the timeout.
    pub complete: bool,
}

impl UserPresence {
    /// True when the user has a connection somewhere.
    pub fn online(&self) -> bool {
        self.connections > 0
    }
}

/// Counters of the presence protocol on one hub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PresenceStats {
    /// Control messages received (including this hub's own echoes).
    pub control_in: u64,
    /// Control messages published.
    pub control_out: u64,
    /// Control messages refused as malformed.
    pub control_malformed: u64,
    /// Queries this hub asked.
    pub queries: u64,
    /// Queries that ended before every known node answered.
    pub incomplete: u64,
    /// Queries from other hubs dropped because [`MAX_ANSWERS_IN_FLIGHT`]
    /// answers were being computed.
    pub answers_dropped: u64,
    /// Unknown nodes not recorded because [`MAX_PEERS`] were known.
    pub peers_refused: u64,
}

/// Presence queries of one hub ([`Hub::presence`](crate::Hub::presence)).
/// Cheap to clone.
#[derive(Clone)]
pub struct Presence {
    state: Arc<PresenceState>,
}

impl fmt::Debug for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presence")
            .field("node_id", &self.state.node_id)
            .field("enabled", &self.state.config.is_some())
            .finish()
    }
}

impl Presence {
    pub(crate) fn new(state: Arc<PresenceState>) -> Self {
        Self { state }
    }

    /// Connections and distinct users following `topic` on every node.
    ///
    /// ```no_run
    /// # async fn demo(hub: sse_cluster::Hub) -> Result<(), sse_cluster::presence::PresenceError> {
    /// let news = hub.presence().topic("news").await?;
    /// if !news.complete {
    ///     // some node did not answer in time: the counts miss its share
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn topic(&self, topic: &str) -> Result<TopicPresence, PresenceError> {
        let (answers, complete) = self.state.ask(Question::Topic(topic.into())).await?;
        let mut users: HashSet<&str> = HashSet::new();
        let mut unlisted = 0u64;
        let mut connections = 0u64;
        for answer in &answers {
            connections = connections.saturating_add(answer.conns);
            users.extend(answer.users.iter().map(String::as_str));
            let listed = answer.users.len() as u64;
            unlisted = unlisted.saturating_add(answer.user_count.saturating_sub(listed));
        }
        Ok(TopicPresence {
            connections,
            users: (users.len() as u64).saturating_add(unlisted),
            users_exact: unlisted == 0,
            nodes_answered: answers.len(),
            complete,
        })
    }

    /// Connections of `user` on every node, and which nodes hold them.
    ///
    /// ```no_run
    /// # async fn demo(hub: sse_cluster::Hub) -> Result<(), sse_cluster::presence::PresenceError> {
    /// let alice = hub.presence().user("alice").await?;
    /// println!("{} connections on {:?}", alice.connections, alice.nodes);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn user(&self, user: &str) -> Result<UserPresence, PresenceError> {
        let (answers, complete) = self.state.ask(Question::User(user.into())).await?;
        let nodes: BTreeSet<&str> = answers
            .iter()
            .filter(|a| a.conns > 0)
            .map(|a| a.node.as_str())
            .collect();
        Ok(UserPresence {
            connections: answers.iter().fold(0u64, |n, a| n.saturating_add(a.conns)),
            nodes: nodes.into_iter().map(str::to_owned).collect(),
            nodes_answered: answers.len(),
            complete,
        })
    }

    /// Whether `user` has a connection on any node. Answered at once,
    /// without the bus, when the user is connected here.
    ///
    /// ```no_run
    /// # async fn demo(hub: sse_cluster::Hub) -> Result<(), sse_cluster::presence::PresenceError> {
    /// if !hub.presence().user_online("42").await? {
    ///     // send an e-mail instead
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn user_online(&self, user: &str) -> Result<bool, PresenceError> {
        if self.state.config.is_some()
            && !self.state.is_closed()
            && self.state.registry.user_connections(user) > 0
        {
            return Ok(true);
        }
        Ok(self.user(user).await?.online())
    }

    /// The node ids this hub believes alive, itself included, sorted.
    pub fn nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self.state.live_peers().into_keys().collect();
        nodes.push(self.state.node_id.to_string());
        nodes.sort_unstable();
        nodes
    }

    /// Whether presence is enabled on this hub.
    pub fn is_enabled(&self) -> bool {
        self.state.config.is_some()
    }

    /// The protocol's counters.
    pub fn stats(&self) -> PresenceStats {
        let c = &self.state.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PresenceStats {
            control_in: get(&c.control_in),
            control_out: get(&c.control_out),
            control_malformed: get(&c.control_malformed),
            queries: get(&c.queries),
            incomplete: get(&c.incomplete),
            answers_dropped: get(&c.answers_dropped),
            peers_refused: get(&c.peers_refused),
        }
    }
}
