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
//! only the [`Broker`] trait):
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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use crate::broker::{Broker, BrokerError, Channel};
use crate::registry::ConnectionRegistry;
use crate::telemetry::Counters as HubCounters;

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
}

/// One control message; which fields are set depends on `op`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Control {
    ctl: u64,
    op: String,
    from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    req: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    users: Vec<String>,
}

impl Control {
    fn new(op: &str, from: &str) -> Self {
        Control {
            ctl: CONTROL_VERSION,
            op: op.into(),
            from: from.into(),
            ..Control::default()
        }
    }

    fn encode(&self) -> Bytes {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .unwrap_or_default()
    }
}

/// True when `payload` is a control message rather than an event envelope.
pub(crate) fn is_control(payload: &[u8]) -> bool {
    payload.starts_with(CONTROL_PREFIX)
}

/// The node id of a hub instance id (`{node}.{tag}`), if it is one.
fn node_of(instance: &str) -> Option<&str> {
    let (node, tag) = instance.split_once('.')?;
    let valid = crate::limits::valid_node_id(node)
        && (1..=64).contains(&tag.len())
        && tag.bytes().all(|b| b.is_ascii_alphanumeric());
    valid.then_some(node)
}

fn valid_name(name: &str) -> bool {
    crate::limits::check_name(name).is_ok()
}

/// What a presence query asks.
#[derive(Debug, Clone)]
enum Question {
    Topic(String),
    User(String),
}

/// One node's answer.
#[derive(Debug)]
struct Answer {
    node: String,
    conns: u64,
    user_count: u64,
    users: Vec<String>,
}

#[derive(Debug)]
struct Peer {
    instance: String,
    seen: Instant,
}

#[derive(Default)]
struct Counters {
    control_in: AtomicU64,
    control_out: AtomicU64,
    control_malformed: AtomicU64,
    queries: AtomicU64,
    incomplete: AtomicU64,
    answers_dropped: AtomicU64,
}

/// A hub's side of the presence protocol.
pub(crate) struct PresenceState {
    config: Option<PresenceConfig>,
    node_id: Arc<str>,
    instance: Arc<str>,
    broker: Arc<dyn Broker>,
    registry: Arc<ConnectionRegistry>,
    metrics: Arc<HubCounters>,
    runtime: tokio::runtime::Handle,
    started: Instant,
    peers: Mutex<HashMap<String, Peer>>,
    pending: Mutex<HashMap<u64, mpsc::Sender<Answer>>>,
    next_req: AtomicU64,
    answering: Arc<Semaphore>,
    closed: AtomicBool,
    counters: Counters,
}

impl fmt::Debug for PresenceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceState")
            .field("config", &self.config)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl PresenceState {
    /// Must run inside a Tokio runtime.
    pub(crate) fn new(
        config: Option<PresenceConfig>,
        node_id: Arc<str>,
        instance: Arc<str>,
        broker: Arc<dyn Broker>,
        registry: Arc<ConnectionRegistry>,
        metrics: Arc<HubCounters>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config: config.map(PresenceConfig::clamped),
            node_id,
            instance,
            broker,
            registry,
            metrics,
            runtime: tokio::runtime::Handle::current(),
            started: Instant::now(),
            peers: Mutex::default(),
            pending: Mutex::default(),
            next_req: AtomicU64::new(1),
            answering: Arc::new(Semaphore::new(MAX_ANSWERS_IN_FLIGHT)),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
        })
    }

    /// Starts the heartbeat (the first `hello` goes out at once), if
    /// presence is enabled.
    pub(crate) fn start(self: &Arc<Self>) {
        let Some(config) = self.config else {
            return;
        };
        let weak = Arc::downgrade(self);
        self.runtime.spawn(heartbeat(weak, config.heartbeat));
    }

    /// Says `bye` (if enabled) and stops answering; the hub calls it on
    /// shutdown, before the broker goes.
    pub(crate) async fn leave(&self) {
        if self.closed.swap(true, Ordering::AcqRel) || self.config.is_none() {
            return;
        }
        let bye = Control::new("bye", &self.instance);
        self.send(&Channel::Broadcast, &bye).await;
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Publishes a control message; failures are logged, not counted as
    /// bus errors (no event was lost).
    async fn send(&self, channel: &Channel, msg: &Control) -> bool {
        let limit = self.config.map_or(Duration::from_secs(1), |c| c.timeout);
        let result = tokio::time::timeout(limit, self.broker.publish(channel, msg.encode())).await;
        match result {
            Ok(Ok(())) => {
                self.counters.control_out.fetch_add(1, Ordering::Relaxed);
                self.metrics.control_out();
                true
            }
            Ok(Err(err)) => {
                tracing::debug!(%channel, op = %msg.op, error = %err, "presence message not sent");
                false
            }
            Err(_) => {
                tracing::debug!(%channel, op = %msg.op, "presence message timed out");
                false
            }
        }
    }

    /// Marks `node` (as `instance`) alive now; true if it was not known as
    /// that instance.
    fn saw(&self, node: &str, instance: &str) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match peers.get_mut(node) {
            Some(peer) if peer.instance == instance => {
                peer.seen = now;
                false
            }
            _ => {
                peers.insert(
                    node.to_owned(),
                    Peer {
                        instance: instance.to_owned(),
                        seen: now,
                    },
                );
                true
            }
        }
    }

    /// The peers believed alive (node → instance), forgetting the others.
    fn live_peers(&self) -> HashMap<String, String> {
        let forget = self.config.unwrap_or_default().forget();
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        peers.retain(|_, p| now.saturating_duration_since(p.seen) < forget);
        peers
            .iter()
            .map(|(n, p)| (n.clone(), p.instance.clone()))
            .collect()
    }

    /// Handles one control message from `channel`.
    pub(crate) fn on_control(self: &Arc<Self>, channel: &Channel, payload: &[u8]) {
        self.counters.control_in.fetch_add(1, Ordering::Relaxed);
        self.metrics.control_in();
        let msg = match serde_json::from_slice::<Control>(payload) {
            Ok(msg) if msg.ctl == CONTROL_VERSION => msg,
            Ok(msg) => return self.malformed(channel, &format!("control version {}", msg.ctl)),
            Err(err) => return self.malformed(channel, &err),
        };
        let Some(node) = node_of(&msg.from) else {
            return self.malformed(channel, &"\"from\" is not a hub instance id");
        };
        // Our own echo, a duplicate of our node id (misconfiguration), or
        // nothing to do.
        if self.config.is_none() || node == &*self.node_id || self.is_closed() {
            return;
        }
        match msg.op.as_str() {
            // A node we did not know: tell it we exist, so that it need not
            // wait for our next heartbeat.
            "hello" if self.saw(node, &msg.from) => {
                let me = self.clone();
                let to = Channel::Node(node.into());
                self.runtime.spawn(async move {
                    let hello = Control::new("hello", &me.instance);
                    me.send(&to, &hello).await;
                });
            }
            "hello" => {}
            "bye" => {
                let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
                if peers.get(node).is_some_and(|p| p.instance == msg.from) {
                    peers.remove(node);
                }
            }
            "query" => {
                let (Some(req), question) = (msg.req, question_of(&msg)) else {
                    return self.malformed(channel, &"query without \"req\"");
                };
                let Some(question) = question else {
                    return self.malformed(channel, &"query needs one valid topic or user");
                };
                self.saw(node, &msg.from);
                let Ok(permit) = self.answering.clone().try_acquire_owned() else {
                    self.counters
                        .answers_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let me = self.clone();
                let to = Channel::Node(node.into());
                self.runtime.spawn(async move {
                    let _permit = permit;
                    let mut answer = me.local_answer(&question);
                    answer.to = Some(msg.from);
                    answer.req = Some(req);
                    me.send(&to, &answer).await;
                });
            }
            "answer" => {
                let (Some(req), Some(conns)) = (msg.req, msg.conns) else {
                    return self.malformed(channel, &"answer without \"req\" or \"conns\"");
                };
                if msg.to.as_deref() != Some(&*self.instance) {
                    return; // for an earlier run of this node
                }
                self.saw(node, &msg.from);
                let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(tx) = pending.get(&req) {
                    let _ = tx.try_send(Answer {
                        node: node.to_owned(),
                        conns,
                        user_count: msg.user_count.unwrap_or(0),
                        users: msg.users,
                    });
                }
            }
            // A later version's operation: ignored, so that old and new
            // nodes can run side by side.
            _ => {}
        }
    }

    fn malformed(&self, channel: &Channel, err: &dyn fmt::Display) {
        let n = self
            .counters
            .control_malformed
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        self.metrics.control_malformed();
        if n.is_power_of_two() {
            tracing::warn!(%channel, error = %err, refused_so_far = n, "refused a control message");
        } else {
            tracing::debug!(%channel, error = %err, "refused a control message");
        }
    }

    /// This node's answer to `question`, from its registry.
    fn local_answer(&self, question: &Question) -> Control {
        let mut answer = Control::new("answer", &self.instance);
        match question {
            Question::Topic(topic) => {
                let (conns, users) = self.registry.topic_presence(topic);
                answer.conns = Some(conns);
                answer.user_count = Some(users.len() as u64);
                let mut budget = MAX_ANSWER_USER_BYTES;
                for user in users {
                    if user.len() > budget {
                        break;
                    }
                    budget -= user.len();
                    answer.users.push(user.to_string());
                }
            }
            Question::User(user) => {
                answer.conns = Some(self.registry.user_connections(user) as u64);
            }
        }
        answer
    }

    /// Asks every node; returns the answers (this node's first) and whether
    /// every node believed alive answered.
    async fn ask(&self, question: Question) -> Result<(Vec<Answer>, bool), PresenceError> {
        let span = tracing::debug_span!("sse.presence", node = %self.node_id, query = ?question);
        self.ask_in_span(question).instrument(span).await
    }

    async fn ask_in_span(&self, question: Question) -> Result<(Vec<Answer>, bool), PresenceError> {
        let Some(config) = self.config else {
            return Err(PresenceError::Disabled);
        };
        if self.is_closed() {
            return Err(PresenceError::ShutDown);
        }
        let (Question::Topic(name) | Question::User(name)) = &question;
        crate::limits::check_name(name).map_err(PresenceError::InvalidName)?;
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(64);
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.len() >= MAX_QUERIES_IN_FLIGHT {
                return Err(PresenceError::Busy);
            }
            pending.insert(req, tx);
        }
        let _pending = Pending { state: self, req };
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        self.metrics.presence_query();

        let mine = self.local_answer(&question);
        let mut answers = HashMap::new();
        answers.insert(
            self.node_id.to_string(),
            Answer {
                node: self.node_id.to_string(),
                conns: mine.conns.unwrap_or(0),
                user_count: mine.user_count.unwrap_or(0),
                users: mine.users,
            },
        );
        let mut query = Control::new("query", &self.instance);
        query.req = Some(req);
        match &question {
            Question::Topic(t) => query.topic = Some(t.clone()),
            Question::User(u) => query.user = Some(u.clone()),
        }
        let published = tokio::time::timeout(
            config.timeout,
            self.broker.publish(&Channel::Broadcast, query.encode()),
        )
        .await;
        match published {
            Ok(Ok(())) => {
                self.counters.control_out.fetch_add(1, Ordering::Relaxed);
                self.metrics.control_out();
            }
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => {
                return Err(
                    BrokerError::Unavailable("presence query publish timed out".into()).into(),
                )
            }
        }

        let deadline = Instant::now() + config.timeout;
        let settled_at = (self.started + WARM_UP).min(deadline);
        let complete = loop {
            let expected = self.live_peers();
            let all = expected.keys().all(|node| answers.contains_key(node));
            let now = Instant::now();
            if all && now >= settled_at {
                break true;
            }
            if now >= deadline {
                break false;
            }
            let wait_until = if all { settled_at } else { deadline };
            match tokio::time::timeout_at(wait_until, rx.recv()).await {
                Ok(Some(answer)) => {
                    answers.insert(answer.node.clone(), answer);
                }
                Ok(None) => break false,
                Err(_) => {}
            }
        };
        if !complete {
            self.counters.incomplete.fetch_add(1, Ordering::Relaxed);
            self.metrics.presence_incomplete();
        }
        let own = answers.remove(&*self.node_id);
        let answers = own.into_iter().chain(answers.into_values()).collect();
        Ok((answers, complete))
    }
}

fn question_of(msg: &Control) -> Option<Question> {
    match (&msg.topic, &msg.user) {
        (Some(t), None) if valid_name(t) => Some(Question::Topic(t.clone())),
        (None, Some(u)) if valid_name(u) => Some(Question::User(u.clone())),
        _ => None,
    }
}

/// Removes a query from the pending ones when it ends (or is cancelled).
struct Pending<'a> {
    state: &'a PresenceState,
    req: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut pending = self.state.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.remove(&self.req);
    }
}

/// Says `hello` every `interval` and forgets silent peers, until the hub is
/// gone or shutting down.
async fn heartbeat(state: Weak<PresenceState>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        if state.is_closed() {
            return;
        }
        let live = state.live_peers().len() + 1;
        state.metrics.presence_nodes(live);
        let hello = Control::new("hello", &state.instance);
        state.send(&Channel::Broadcast, &hello).await;
    }
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Envelope;

    #[test]
    fn control_messages_are_recognised_and_are_not_envelopes() {
        let mut q = Control::new("query", "a.x1");
        q.req = Some(3);
        q.topic = Some("news".into());
        let bytes = q.encode();
        assert!(is_control(&bytes), "{bytes:?}");
        assert!(Envelope::decode(&bytes).is_err());
        for event in [&br#"{"v":1,"data":"x"}"#[..], b"{}", b"", b"ctl"] {
            assert!(!is_control(event));
        }
    }

    #[test]
    fn instance_ids_are_checked() {
        assert_eq!(node_of("node-a.x7k2pq"), Some("node-a"));
        for bad in ["", "a", ".x", "a.", "a.b.c", "a b.x", "a.x y", "publisher"] {
            assert_eq!(node_of(bad), None, "{bad:?}");
        }
        assert_eq!(node_of(&format!("{}.x", "a".repeat(65))), None);
    }

    #[test]
    fn forget_is_at_least_one_and_a_half_heartbeats() {
        let c = PresenceConfig::default()
            .heartbeat(Duration::from_secs(2))
            .forget_after(Duration::from_secs(1));
        assert_eq!(c.forget(), Duration::from_secs(3));
        assert_eq!(PresenceConfig::default().forget(), Duration::from_secs(6));
    }

    #[tokio::test]
    async fn a_zero_heartbeat_set_on_the_field_is_clamped_not_a_panic() {
        let config = PresenceConfig {
            heartbeat: Duration::ZERO,
            ..PresenceConfig::default()
        };
        let bus = crate::broker::memory::MemoryBus::new();
        let state = PresenceState::new(
            Some(config),
            "n".into(),
            "n.x".into(),
            bus.broker(),
            Arc::default(),
            Arc::new(HubCounters::new("n")),
        );
        assert_eq!(state.config.map(|c| c.heartbeat), Some(MIN_HEARTBEAT));
        // The heartbeat task would panic in `tokio::time::interval` on zero.
        state.start();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}
