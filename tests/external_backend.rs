//! The backend contract is open: a bus and a history store written here,
//! outside the crate, with nothing but its public API (`Broker`, `BusSink`,
//! `History`, `Entry`, `Head`, `Position`, `report_status`), pass the same
//! conformance suite as the crate's own backends.
//!
//! The "server" is a tokio broadcast channel per namespace; each broker
//! reads it whole and keeps what its hub subscribed to. The history keeps a
//! log per channel, stamps each appended envelope with its position and the
//! log's epoch, and publishes it under the log's lock, so every subscriber
//! sees a channel in position order. Like the Redis store, it makes a
//! channel's log (and its epoch) with the channel's first append: `heads`
//! reads only and reports a channel without one with the empty epoch.

#![cfg(all(feature = "testkit", feature = "axum"))]

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use sse_cluster::broker::{report_status, Broker, BrokerError, BrokerStatus, BusSink, Channel};
use sse_cluster::history::{Entry, Head, History, Position, Retention};
use sse_cluster::testkit::{self, Backend, Capabilities, NodeParts};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// What the server sends every connected broker, in one ordered stream:
/// messages, and its own going down and coming back (so that a quick
/// restart is never coalesced away).
#[derive(Clone)]
enum Wire {
    Message(Channel, Bytes),
    Down,
    Up,
}

/// One namespace's server: the bus and the history logs.
struct Server {
    wire: broadcast::Sender<Wire>,
    up: AtomicBool,
    logs: Mutex<HashMap<Channel, Log>>,
}

impl Server {
    fn new() -> Arc<Server> {
        Arc::new(Server {
            wire: broadcast::channel(16_384).0,
            up: AtomicBool::new(true),
            logs: Mutex::default(),
        })
    }

    fn check_up(&self) -> Result<(), BrokerError> {
        if self.up.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(BrokerError::Unavailable("toy server is down".into()))
        }
    }

    fn send(&self, channel: &Channel, payload: Bytes) {
        // No receiver is not an error: nobody listens yet.
        let _ = self.wire.send(Wire::Message(channel.clone(), payload));
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::SeqCst) != up {
            let _ = self.wire.send(if up { Wire::Up } else { Wire::Down });
        }
    }
}

/// One hub's connection to a [`Server`].
struct ToyBroker {
    server: Arc<Server>,
    subscribed: Arc<Mutex<HashSet<Channel>>>,
    status: Arc<watch::Sender<BrokerStatus>>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for ToyBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToyBroker")
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl ToyBroker {
    fn new(server: Arc<Server>) -> Arc<ToyBroker> {
        let status = if server.up.load(Ordering::SeqCst) {
            BrokerStatus::Up
        } else {
            BrokerStatus::Down
        };
        Arc::new(ToyBroker {
            server,
            subscribed: Arc::default(),
            status: Arc::new(watch::channel(status).0),
            reader: Mutex::default(),
        })
    }
}

#[async_trait]
impl Broker for ToyBroker {
    async fn start(&self, sink: Arc<dyn BusSink>) -> Result<(), BrokerError> {
        let mut wire = self.server.wire.subscribe();
        let subscribed = self.subscribed.clone();
        let status = self.status.clone();
        let task = tokio::spawn(async move {
            loop {
                match wire.recv().await {
                    Ok(Wire::Message(channel, payload)) => {
                        let wanted = subscribed.lock().expect("lock").contains(&channel);
                        if wanted && *status.borrow() == BrokerStatus::Up {
                            sink.deliver(&channel, payload);
                        }
                    }
                    Ok(Wire::Down) => report_status(&status, Some(&sink), || BrokerStatus::Down),
                    Ok(Wire::Up) => report_status(&status, Some(&sink), || BrokerStatus::Up),
                    Err(broadcast::error::RecvError::Lagged(_)) => sink.messages_lost(None),
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        *self.reader.lock().expect("lock") = Some(task);
        Ok(())
    }

    async fn publish(&self, channel: &Channel, payload: Bytes) -> Result<(), BrokerError> {
        self.server.check_up()?;
        self.server.send(channel, payload);
        Ok(())
    }

    async fn subscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        // Recorded even while down, as the contract asks.
        self.subscribed
            .lock()
            .expect("lock")
            .insert(channel.clone());
        self.server.check_up()
    }

    async fn unsubscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        self.subscribed.lock().expect("lock").remove(channel);
        Ok(())
    }

    fn status(&self) -> watch::Receiver<BrokerStatus> {
        self.status.subscribe()
    }

    async fn shutdown(&self) -> Result<(), BrokerError> {
        if let Some(task) = self.reader.lock().expect("lock").take() {
            task.abort();
        }
        Ok(())
    }
}

/// One channel's history on the server.
struct Log {
    epoch: Arc<str>,
    /// The position of the newest event (0: none yet).
    last: u64,
    entries: VecDeque<Entry>,
    /// The position of the newest event trimmed away (0: none).
    trimmed: u64,
}

impl Log {
    fn new() -> Log {
        Log {
            epoch: format!("toy{:016x}", fastrand::u64(..)).into(),
            last: 0,
            entries: VecDeque::new(),
            trimmed: 0,
        }
    }
}

/// The store: per-channel logs on the server, trimmed to `max_len` (age is
/// not enforced by this toy).
struct ToyHistory {
    server: Arc<Server>,
    retention: Retention,
}

impl fmt::Debug for ToyHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToyHistory")
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// The envelope with `,"pos":"MAJOR-MINOR","epoch":"EPOCH"` before its
/// closing brace: the stamped form the hub reads positions from.
fn stamp(payload: &[u8], position: Position, epoch: &str) -> Bytes {
    let body = payload.strip_suffix(b"}").unwrap_or(payload);
    let mut out = body.to_vec();
    out.extend_from_slice(
        format!(
            r#","pos":"{}-{}","epoch":"{epoch}"}}"#,
            position.major(),
            position.minor()
        )
        .as_bytes(),
    );
    Bytes::from(out)
}

#[async_trait]
impl History for ToyHistory {
    async fn append(&self, channel: &Channel, payload: Bytes) -> Result<Position, BrokerError> {
        self.server.check_up()?;
        let mut logs = self.server.logs.lock().expect("lock");
        let log = logs.entry(channel.clone()).or_insert_with(Log::new);
        log.last += 1;
        let position = Position::new(log.last, 0);
        log.entries.push_back(Entry::new(position, payload.clone()));
        while log.entries.len() > self.retention.max_len {
            if let Some(gone) = log.entries.pop_front() {
                log.trimmed = gone.position.major();
            }
        }
        // Published under the lock: subscribers see the channel in
        // position order, and never an event the log lacks.
        self.server
            .send(channel, stamp(&payload, position, &log.epoch));
        Ok(position)
    }

    async fn heads(
        &self,
        channels: &[(Channel, Option<Position>)],
    ) -> Result<Vec<Head>, BrokerError> {
        self.server.check_up()?;
        let logs = self.server.logs.lock().expect("lock");
        Ok(channels
            .iter()
            .map(|(channel, after)| match logs.get(channel) {
                Some(log) => {
                    let retained = after.is_none_or(|p| p.major() >= log.trimmed);
                    Head::new(log.epoch.clone(), Position::new(log.last, 0), retained)
                }
                // No history yet: the empty epoch, and only position 0 is
                // still "retained".
                None => Head::new(
                    "".into(),
                    Position::ZERO,
                    after.is_none_or(|p| p == Position::ZERO),
                ),
            })
            .collect())
    }

    async fn read(
        &self,
        channel: &Channel,
        after: Position,
        limit: usize,
    ) -> Result<Vec<Entry>, BrokerError> {
        self.server.check_up()?;
        let logs = self.server.logs.lock().expect("lock");
        Ok(logs
            .get(channel)
            .map(|log| {
                log.entries
                    .iter()
                    .filter(|e| e.position > after)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// The backend: one server per namespace.
#[derive(Default)]
struct Toy {
    servers: Mutex<HashMap<String, Arc<Server>>>,
}

#[async_trait]
impl Backend for Toy {
    fn name(&self) -> &str {
        "toy (outside the crate)"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new().history(true).outage(true).restart(true)
    }

    async fn node(
        &self,
        namespace: &str,
        history: Option<Retention>,
    ) -> Result<NodeParts, BrokerError> {
        let server = self
            .servers
            .lock()
            .expect("lock")
            .entry(namespace.to_owned())
            .or_insert_with(Server::new)
            .clone();
        let mut parts = NodeParts::new(ToyBroker::new(server.clone()));
        if let Some(retention) = history {
            parts = parts.with_history(Arc::new(ToyHistory { server, retention }));
        }
        Ok(parts)
    }

    async fn outage(&self, down: bool) {
        for server in self.servers.lock().expect("lock").values() {
            server.set_up(!down);
        }
    }

    async fn restart(&self) {
        for server in self.servers.lock().expect("lock").values() {
            server.set_up(false);
            // A restarted in-memory server keeps nothing.
            server.logs.lock().expect("lock").clear();
            server.set_up(true);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_from_outside_the_crate_passes_the_conformance_suite() {
    let report = testkit::run_all(&Toy::default()).await;
    eprintln!("{report}");
    // The toy store was written against the trait before idempotency keys
    // (it keeps `History::append_once`'s default, no deduplication) and
    // declares no such capability: only that scenario is skipped, and the
    // resume token works on it unchanged.
    let skipped: Vec<_> = report.skipped().map(|(s, _)| s).collect();
    assert_eq!(skipped, [testkit::Scenario::Idempotency], "{report}");
    assert_eq!(
        report.passed().count(),
        testkit::Scenario::ALL.len() - 1,
        "{report}"
    );
}
