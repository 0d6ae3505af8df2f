//! A hub's side of the presence protocol: the control messages on the bus,
//! the peers it believes alive, the queries it asks and the answers it gives.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use super::{
    PresenceConfig, PresenceError, CONTROL_PREFIX, CONTROL_VERSION, MAX_ANSWERS_IN_FLIGHT,
    MAX_ANSWER_USER_BYTES, MAX_PEERS, MAX_QUERIES_IN_FLIGHT, WARM_UP,
};
use crate::broker::{Broker, BrokerError, Channel};
use crate::registry::ConnectionRegistry;
use crate::telemetry::Counters as HubCounters;

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
pub(super) enum Question {
    Topic(String),
    User(String),
}

/// One node's answer.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) node: String,
    pub(super) conns: u64,
    pub(super) user_count: u64,
    pub(super) users: Vec<String>,
}

#[derive(Debug)]
struct Peer {
    instance: String,
    seen: Instant,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) control_in: AtomicU64,
    pub(super) control_out: AtomicU64,
    pub(super) control_malformed: AtomicU64,
    pub(super) queries: AtomicU64,
    pub(super) incomplete: AtomicU64,
    pub(super) answers_dropped: AtomicU64,
    pub(super) peers_refused: AtomicU64,
}

/// A hub's side of the presence protocol.
pub(crate) struct PresenceState {
    pub(super) config: Option<PresenceConfig>,
    pub(super) node_id: Arc<str>,
    instance: Arc<str>,
    broker: Arc<dyn Broker>,
    pub(super) registry: Arc<ConnectionRegistry>,
    metrics: Arc<HubCounters>,
    runtime: tokio::runtime::Handle,
    started: Instant,
    peers: Mutex<HashMap<String, Peer>>,
    pending: Mutex<HashMap<u64, mpsc::Sender<Answer>>>,
    next_req: AtomicU64,
    answering: Arc<Semaphore>,
    closed: AtomicBool,
    pub(super) counters: Counters,
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

    pub(super) fn is_closed(&self) -> bool {
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
    /// that instance. A new node is not recorded while [`MAX_PEERS`] are
    /// (after forgetting the silent ones).
    fn saw(&self, node: &str, instance: &str) -> bool {
        let forget = self.config.unwrap_or_default().forget();
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if !peers.contains_key(node) && peers.len() >= MAX_PEERS {
            peers.retain(|_, p| now.saturating_duration_since(p.seen) < forget);
            if peers.len() >= MAX_PEERS {
                self.counters.peers_refused.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
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
    pub(super) fn live_peers(&self) -> HashMap<String, String> {
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
    pub(super) async fn ask(
        &self,
        question: Question,
    ) -> Result<(Vec<Answer>, bool), PresenceError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::MIN_HEARTBEAT;
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
