//! The backend conformance suite: the scenarios every bus (and history
//! store) must pass, written once, run against any [`Backend`].
//!
//! A backend is a [`Broker`] and, optionally, a [`History`] store. The crate's
//! own backends (memory, Redis, Redis Cluster, NATS, JetStream, Postgres) run this
//! suite in their tests; a backend written outside the crate runs the very
//! same suite, through the crate's public API only. The suite builds hubs
//! from the parts your [`Backend::node`] returns, connects clients with
//! [`Hub::connect`](crate::Hub::connect), publishes with [`Hub::publish`](crate::Hub::publish), and reads each stream
//! with a real SSE parser.
//!
//! # Scenarios
//!
//! Each [`Scenario`] runs on a fresh namespace (a cluster of its own: hubs of
//! one namespace share a bus, hubs of different namespaces never hear each
//! other), and every wait in it is bounded (a few seconds; a whole scenario
//! at most [`SCENARIO_LIMIT`]). Two or three hubs play the nodes of a cluster.
//!
//! | scenario | what must hold | needs |
//! |---|---|---|
//! | [`Delivery`](Scenario::Delivery) | an event published on one node to a topic, a user, one connection or everyone reaches exactly the matching connections on the other node, and a local receiver once (its own echo is ignored) | |
//! | [`Order`](Scenario::Order) | 200 events to a topic and a user, from one node, arrive on the other in publish order per target | |
//! | [`InterestRouting`](Scenario::InterestRouting) | a node hears only the channels its connections need ([`HubStats::bus_in`](crate::HubStats::bus_in) does not move for others), and stops hearing a channel when its last follower leaves | [`Capabilities::interest_routing`] |
//! | [`Outage`](Scenario::Outage) | the server goes away: every hub reports [`BrokerStatus::Down`](crate::BrokerStatus::Down), publishes reach local receivers and are accounted for (`published` or `bus_errors`), a connection can still be made; the server is back: every hub reports Up, streams get the [`GAP_EVENT`](crate::stream::GAP_EVENT) with reason `bus`, and delivery works again, also for the connection made during the outage | [`Capabilities::outage`] |
//! | [`Restart`](Scenario::Restart) | the server is killed and started again: every hub counts the outage, comes back Up and delivers to topic, connection and broadcast followers again | [`Capabilities::restart`] |
//! | [`Resume`](Scenario::Resume) | a client reads some events on node A, leaves, misses events on a topic and its user, and reconnects to node C with its `Last-Event-ID`: it gets exactly the missed events, once, in order per channel, then live ones | [`Capabilities::history`] |
//! | [`ResumeToken`](Scenario::ResumeToken) | a token made on node A ([`Hub::resume_token`](crate::Hub::resume_token)) for two topics (one never published to before) and a user, events published through B, a first connect to C with the token: exactly the events published after the token, once, in order per channel, then live ones; a hub without history refuses to make a token | [`Capabilities::history`] |
//! | [`Idempotency`](Scenario::Idempotency) | one idempotency key published 3 times from 2 nodes ([`Hub::publish_idempotent`](crate::Hub::publish_idempotent)): one receipt (the repeats marked duplicate, same id and position), one frame per connection on either node, one replayed event for a client resuming from before; another key, or the same key to another target, is a publish of its own | [`Capabilities::idempotency`] |
//! | [`ResetBeyondRetention`](Scenario::ResetBeyondRetention) | a client that missed more than the store retains ([`Retention::max_len`]) gets the [`RESET_EVENT`](crate::resume::RESET_EVENT) (reason `expired`) first, then live events | [`Capabilities::history`] |
//! | [`HostileEnvelopes`](Scenario::HostileEnvelopes) | garbage, invalid JSON, an unknown version and envelopes with framing-breaking fields, published on a topic channel by a separate broker, are counted in [`HubStats::bus_malformed`](crate::HubStats::bus_malformed), reach no client, and the next valid message is still delivered | |
//!
//! When the backend has history, every scenario but the outage and restart
//! ones runs its hubs with it (the outage scenarios test the history-less
//! promise: a gap event). A scenario the backend's [`Capabilities`] rule out
//! is reported [`Outcome::Skipped`], never silently passed.
//!
//! # Running it for your backend
//!
//! Implement [`Backend`] in your crate's tests, with the `testkit` feature
//! of `sse-cluster` enabled for them:
//!
//! ```toml
//! [dev-dependencies]
//! sse-cluster = { version = "0.1", features = ["testkit"] }
//! ```
//!
//! Here with the in-memory bus standing in for your broker (use your own
//! `Broker` and `History` types in its place):
//!
//! ```no_run
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex};
//!
//! use async_trait::async_trait;
//! use sse_cluster::broker::memory::{MemoryBroker, MemoryBus};
//! use sse_cluster::broker::BrokerError;
//! use sse_cluster::history::memory::MemoryHistory;
//! use sse_cluster::history::Retention;
//! use sse_cluster::testkit::{self, Backend, Capabilities, NodeParts};
//!
//! /// One bus (and one history store) per namespace; every broker handed
//! /// out, so that an outage can take them all down.
//! #[derive(Default)]
//! struct MyBackend {
//!     namespaces: Mutex<HashMap<String, (MemoryBus, Option<Arc<MemoryHistory>>)>>,
//!     brokers: Mutex<Vec<Arc<MemoryBroker>>>,
//! }
//!
//! #[async_trait]
//! impl Backend for MyBackend {
//!     fn name(&self) -> &str {
//!         "my-bus"
//!     }
//!
//!     fn capabilities(&self) -> Capabilities {
//!         Capabilities::new()
//!             .history(true)
//!             .idempotency(true)
//!             .outage(true)
//!             .restart(true)
//!     }
//!
//!     async fn node(
//!         &self,
//!         namespace: &str,
//!         history: Option<Retention>,
//!     ) -> Result<NodeParts, BrokerError> {
//!         let mut namespaces = self.namespaces.lock().expect("lock");
//!         let (bus, store) = namespaces.entry(namespace.to_owned()).or_default();
//!         let broker = bus.broker();
//!         self.brokers.lock().expect("lock").push(broker.clone());
//!         let mut parts = NodeParts::new(broker);
//!         if let Some(retention) = history {
//!             // All nodes of a namespace share one store, as they would
//!             // share one server.
//!             let store = store.get_or_insert_with(|| Arc::new(MemoryHistory::new(bus, retention)));
//!             parts = parts.with_history(store.clone());
//!         }
//!         Ok(parts)
//!     }
//!
//!     async fn outage(&self, down: bool) {
//!         for broker in self.brokers.lock().expect("lock").iter() {
//!             broker.set_connected(!down);
//!         }
//!     }
//!
//!     async fn restart(&self) {
//!         self.outage(true).await;
//!         self.outage(false).await;
//!     }
//! }
//!
//! #[tokio::test(flavor = "multi_thread")]
//! async fn my_bus_passes_the_conformance_suite() {
//!     // Panics, naming the backend and the scenario, on the first failure.
//!     let report = testkit::run_all(&MyBackend::default()).await;
//!     println!("{report}");
//!     assert_eq!(report.skipped().count(), 0);
//! }
//! # fn main() {}
//! ```

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;

use crate::broker::{Broker, BrokerError};
use crate::history::{History, Retention};

mod scenarios;

/// Longest one scenario may take, all its waits included.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(60);

/// What a backend can do, so that the suite skips what does not apply.
///
/// [`Capabilities::new`] is the strictest set a backend without history
/// can declare: interest routing on, no history, and no outage or restart
/// (those need the backend's help: [`Backend::outage`], [`Backend::restart`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// [`Backend::node`] returns a [`History`] store when asked: the resume
    /// scenarios run.
    pub history: bool,
    /// A node receives only the channels it subscribed to. A bus that hands
    /// every node every message (a Kafka-like log read whole by every
    /// consumer) cannot, and skips [`Scenario::InterestRouting`].
    pub interest_routing: bool,
    /// [`Backend::outage`] can take the server away and bring it back:
    /// [`Scenario::Outage`] runs.
    pub outage: bool,
    /// [`Backend::restart`] can kill the server and start it again:
    /// [`Scenario::Restart`] runs.
    pub restart: bool,
    /// The history store deduplicates idempotency keys
    /// ([`History::idempotency_window`] is `Some`, and
    /// [`History::append_once`] keeps its promise): [`Scenario::Idempotency`]
    /// runs. Needs [`Capabilities::history`].
    pub idempotency: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::new()
    }
}

impl Capabilities {
    /// Interest routing, no history, no outage, no restart, no
    /// idempotency keys.
    pub const fn new() -> Self {
        Self {
            history: false,
            interest_routing: true,
            outage: false,
            restart: false,
            idempotency: false,
        }
    }

    /// Sets [`Capabilities::idempotency`].
    pub const fn idempotency(mut self, yes: bool) -> Self {
        self.idempotency = yes;
        self
    }

    /// Sets [`Capabilities::history`].
    pub const fn history(mut self, yes: bool) -> Self {
        self.history = yes;
        self
    }

    /// Sets [`Capabilities::interest_routing`].
    pub const fn interest_routing(mut self, yes: bool) -> Self {
        self.interest_routing = yes;
        self
    }

    /// Sets [`Capabilities::outage`].
    pub const fn outage(mut self, yes: bool) -> Self {
        self.outage = yes;
        self
    }

    /// Sets [`Capabilities::restart`].
    pub const fn restart(mut self, yes: bool) -> Self {
        self.restart = yes;
        self
    }
}

/// What one hub of a cluster is built from: its own broker instance and,
/// when history was asked for, a store on the same bus.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeParts {
    /// A fresh broker for one hub (brokers serve exactly one hub).
    pub broker: Arc<dyn Broker>,
    /// The history store, when [`Backend::node`] was asked for one.
    pub history: Option<Arc<dyn History>>,
}

impl NodeParts {
    /// Parts with `broker` and no history.
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Self {
            broker,
            history: None,
        }
    }

    /// Adds a history store.
    pub fn with_history(mut self, history: Arc<dyn History>) -> Self {
        self.history = Some(history);
        self
    }
}

/// A backend under test: how to build the parts of one node, and how to
/// make its server fail.
///
/// The suite calls [`Backend::node`] several times per namespace, once per
/// hub (and once more for a broker that publishes hand-written messages).
/// [`Backend::outage`] and [`Backend::restart`] act on the whole server,
/// every namespace at once; the suite runs one scenario at a time.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A short name for messages and reports (`"redis"`, `"my-bus"`).
    fn name(&self) -> &str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// A fresh broker (not started: the hub starts it) for one hub of the
    /// cluster `namespace`, and a history store keeping `history` when it
    /// is `Some`. All nodes of one namespace share one bus (and one
    /// history); different namespaces must not see each other's messages.
    /// Namespaces are at most 40 ASCII lowercase letters, digits and `-`,
    /// so they fit in a channel prefix, a subject token or a stream name.
    async fn node(
        &self,
        namespace: &str,
        history: Option<Retention>,
    ) -> Result<NodeParts, BrokerError>;

    /// Takes the server away (`down`: stop it, or simulate it, e.g. with
    /// [`MemoryBroker::set_connected`](crate::broker::memory::MemoryBroker::set_connected))
    /// or brings it back, returning once the server accepts connections
    /// again. Called only when [`Capabilities::outage`] is declared; the
    /// default panics.
    async fn outage(&self, down: bool) {
        panic!(
            "backend {:?} declares outage support but does not implement Backend::outage({down})",
            self.name()
        );
    }

    /// Kills the server and starts it again (no pause between), returning
    /// once it accepts connections. Called only when
    /// [`Capabilities::restart`] is declared; the default panics.
    async fn restart(&self) {
        panic!(
            "backend {:?} declares restart support but does not implement Backend::restart",
            self.name()
        );
    }
}

/// One scenario of the suite; see the [module docs](self) for what each
/// checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Scenario {
    /// Every target kind from one node to another.
    Delivery,
    /// Publish order per target across nodes.
    Order,
    /// A node hears only the channels its connections need.
    InterestRouting,
    /// The server goes away and comes back.
    Outage,
    /// The server is killed and started again.
    Restart,
    /// Resume exactly once and in order, on another node.
    Resume,
    /// A render-time resume token replays what was published since.
    ResumeToken,
    /// An idempotency key stores and delivers once.
    Idempotency,
    /// The reset event past the retention window.
    ResetBeyondRetention,
    /// Hostile bus messages are counted, never fatal.
    HostileEnvelopes,
}

impl Scenario {
    /// Every scenario, in the order [`run_all`] runs them.
    pub const ALL: [Scenario; 10] = [
        Scenario::Delivery,
        Scenario::Order,
        Scenario::InterestRouting,
        Scenario::HostileEnvelopes,
        Scenario::Resume,
        Scenario::ResumeToken,
        Scenario::ResetBeyondRetention,
        Scenario::Idempotency,
        Scenario::Outage,
        Scenario::Restart,
    ];

    /// The scenario's name, as used in namespaces and messages.
    pub const fn name(self) -> &'static str {
        match self {
            Scenario::Delivery => "delivery",
            Scenario::Order => "order",
            Scenario::InterestRouting => "interest-routing",
            Scenario::Outage => "outage",
            Scenario::Restart => "restart",
            Scenario::Resume => "resume",
            Scenario::ResumeToken => "resume-token",
            Scenario::Idempotency => "idempotency",
            Scenario::ResetBeyondRetention => "reset-beyond-retention",
            Scenario::HostileEnvelopes => "hostile-envelopes",
        }
    }

    /// Why `capabilities` rule this scenario out, if they do.
    fn unsupported(self, capabilities: Capabilities) -> Option<&'static str> {
        match self {
            Scenario::InterestRouting if !capabilities.interest_routing => {
                Some("the backend does not route by interest")
            }
            Scenario::Outage if !capabilities.outage => {
                Some("the backend cannot take its server away")
            }
            Scenario::Restart if !capabilities.restart => {
                Some("the backend cannot restart its server")
            }
            Scenario::Resume | Scenario::ResumeToken | Scenario::ResetBeyondRetention
                if !capabilities.history =>
            {
                Some("the backend has no history store")
            }
            Scenario::Idempotency if !(capabilities.history && capabilities.idempotency) => {
                Some("the backend's history store does not deduplicate idempotency keys")
            }
            _ => None,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How one scenario ended (a failure panics instead).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// Not run: the backend's [`Capabilities`] rule it out, for this reason.
    Skipped(&'static str),
}

/// What [`run_all`] did, per scenario.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Report {
    /// The backend's [`Backend::name`].
    pub backend: String,
    /// Each scenario and how it ended, in the order they ran.
    pub outcomes: Vec<(Scenario, Outcome)>,
}

impl Report {
    /// The scenarios that passed.
    pub fn passed(&self) -> impl Iterator<Item = Scenario> + '_ {
        self.outcomes
            .iter()
            .filter(|(_, o)| *o == Outcome::Passed)
            .map(|(s, _)| *s)
    }

    /// The scenarios that were skipped, with the reason.
    pub fn skipped(&self) -> impl Iterator<Item = (Scenario, &'static str)> + '_ {
        self.outcomes.iter().filter_map(|(s, o)| match o {
            Outcome::Skipped(why) => Some((*s, *why)),
            Outcome::Passed => None,
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sse-cluster conformance, backend {:?}:", self.backend)?;
        for (scenario, outcome) in &self.outcomes {
            match outcome {
                Outcome::Passed => write!(f, "\n  {scenario}: passed")?,
                Outcome::Skipped(why) => write!(f, "\n  {scenario}: skipped ({why})")?,
            }
        }
        Ok(())
    }
}

/// Runs every [`Scenario`] against `backend`, one after the other; panics
/// on the first failure with a message naming the backend and the scenario.
pub async fn run_all(backend: &dyn Backend) -> Report {
    let mut outcomes = Vec::with_capacity(Scenario::ALL.len());
    for scenario in Scenario::ALL {
        outcomes.push((scenario, run(backend, scenario).await));
    }
    Report {
        backend: backend.name().to_owned(),
        outcomes,
    }
}

/// Runs one `scenario` against `backend` on a fresh namespace; panics on
/// failure (or after [`SCENARIO_LIMIT`]) with a message naming the backend
/// and the scenario.
pub async fn run(backend: &dyn Backend, scenario: Scenario) -> Outcome {
    let capabilities = backend.capabilities();
    if let Some(why) = scenario.unsupported(capabilities) {
        return Outcome::Skipped(why);
    }
    let namespace = format!("tk{:08x}-{}", fastrand::u32(..), scenario.name());
    let body = scenarios::run(backend, capabilities, namespace, scenario);
    let name = backend.name();
    match tokio::time::timeout(SCENARIO_LIMIT, AssertUnwindSafe(body).catch_unwind()).await {
        Ok(Ok(())) => Outcome::Passed,
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic)");
            panic!("conformance: backend {name:?}, scenario {scenario}: {message}")
        }
        Err(_) => panic!(
            "conformance: backend {name:?}, scenario {scenario}: not finished within {SCENARIO_LIMIT:?}"
        ),
    }
}
