//! The main demo: three nodes in one process behind a small load balancer,
//! joined by the in-memory broker, with a shared in-memory history.
//!
//! ```text
//! cargo run --example cluster            # balancer on 127.0.0.1:3000, nodes on :3001 to :3003
//! cargo run --example cluster -- 4000    # balancer on :4000, nodes on :4001 to :4003
//! ```
//!
//! Open http://127.0.0.1:3000/ : the page draws the cluster (each node, its
//! connections and bus traffic), opens an `EventSource` through the
//! balancer and shows which node holds it, and publishes numbered events
//! through any node. "Stop" drains a node as SIGTERM would: if it held the
//! page's stream, the browser reconnects through the balancer to another
//! node with its `Last-Event-ID`, the history replays what it missed, and
//! the page's counter shows that no number is missing or doubled.
//!
//! Every node serves the demo node's API (`/events`, `/publish`,
//! `/healthz`, `/stats`, `/metrics`, `/presence`; see
//! `examples/common/mod.rs`) plus the page's own routes:
//!
//! - `GET /` the page; `?publish=N` preselects node-N in the "via" list.
//! - `GET /cluster`: every node's state, connections and bus counters (JSON).
//! - `POST /cluster/publish?via=N|auto&target=topic|user|all|connection[&connection=C]`,
//!   body = text: publishes the next numbered event (`event: demo`, data
//!   `{"n","text","target","via"}`) through node N (`auto`: the next node
//!   that is up); events to one connection carry no number (they are never
//!   replayed).
//! - `POST /cluster/stop?node=N` drains node N; `POST /cluster/start?node=N`
//!   starts it again on its port.
//!
//! Ctrl-C drains all three.

#[path = "../common/mod.rs"]
mod common;

mod balancer;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::history::{memory::MemoryHistory, Retention};
use sse_cluster::presence::PresenceConfig;
use sse_cluster::{ConnectionId, Event, Hub, Target};
use tokio::sync::oneshot;

const NODES: usize = 3;

/// The page, one self-contained file (no build step, no CDN).
const PAGE: &str = include_str!("page.html");

/// The three nodes, the balancer's view of them, and the event counter.
struct Cluster {
    base_port: u16,
    bus: MemoryBus,
    history: Arc<MemoryHistory>,
    prometheus: PrometheusHandle,
    /// Whether the balancer may send new connections to node i.
    routable: Arc<[AtomicBool]>,
    nodes: Vec<Mutex<Slot>>,
    /// The last number given to a demo event.
    seq: AtomicU64,
    /// Round robin for `via=auto`.
    next_via: AtomicUsize,
}

/// One node's life: up (with its hub and a way to stop it), draining, or
/// stopped.
#[derive(Default)]
struct Slot {
    hub: Option<Hub>,
    stop: Option<oneshot::Sender<()>>,
    draining: bool,
}

type Shared = Arc<Cluster>;

impl Cluster {
    fn slot(&self, node: usize) -> MutexGuard<'_, Slot> {
        // A panic while holding the lock cannot leave a slot half-written.
        self.nodes[node]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn port(&self, node: usize) -> u16 {
        self.base_port + 1 + node as u16
    }

    /// Builds node `node`'s hub and serves it on its port until it is
    /// stopped (or the process is).
    async fn start(self: &Arc<Self>, node: usize) -> Result<(), Box<dyn std::error::Error>> {
        if self.slot(node).hub.is_some() {
            return Err(format!("node-{node} is already running").into());
        }
        let hub = Hub::builder()
            .node_id(format!("node-{node}"))
            .broker(self.bus.broker())
            .history(self.history.clone())
            .presence(PresenceConfig::default())
            // A drained client comes back within a second: enough to spread
            // three nodes' clients, short enough to watch.
            .shutdown_retry(Duration::from_millis(300), Duration::from_millis(900))
            .drain_timeout(Duration::from_millis(800))
            .build()
            .await?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port(node))).await?;
        let app = common::router(hub.clone())
            .merge(common::metrics_route(self.prometheus.clone()))
            .merge(page_routes(self.clone()))
            .layer(axum::middleware::map_response(allow_any_origin));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        {
            let mut slot = self.slot(node);
            slot.hub = Some(hub.clone());
            slot.stop = Some(stop_tx);
            slot.draining = false;
        }
        self.routable[node].store(true, Ordering::SeqCst);
        println!("node-{node} listening on http://{}", listener.local_addr()?);
        let cluster = self.clone();
        tokio::spawn(async move {
            let drained = {
                let hub = hub.clone();
                async move {
                    tokio::select! {
                        _ = common::termination() => {}
                        _ = stop_rx => {}
                    }
                    hub.shutdown().await;
                }
            };
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(drained)
                .await
            {
                eprintln!("node-{node}: {err}");
            }
            let mut slot = cluster.slot(node);
            slot.hub = None;
            slot.stop = None;
            slot.draining = false;
            println!("node-{node} stopped");
        });
        Ok(())
    }

    /// Drains node `node` as SIGTERM would: the balancer sends it nothing
    /// new, its streams end with a `retry:`, and its server exits.
    fn stop(&self, node: usize) -> Result<(), String> {
        let mut slot = self.slot(node);
        let Some(stop) = slot.stop.take() else {
            return Err(format!("node-{node} is not running"));
        };
        self.routable[node].store(false, Ordering::SeqCst);
        slot.draining = true;
        let _ = stop.send(());
        Ok(())
    }

    fn state(&self) -> serde_json::Value {
        let nodes: Vec<_> = (0..NODES)
            .map(|node| {
                let slot = self.slot(node);
                let state = match (&slot.hub, slot.draining) {
                    (None, _) => "stopped",
                    (Some(_), true) => "draining",
                    (Some(_), false) => "up",
                };
                let stats = slot.hub.as_ref().map(Hub::stats).unwrap_or_default();
                json!({
                    "id": format!("node-{node}"),
                    "port": self.port(node),
                    "state": state,
                    "connections": stats.connections,
                    "published": stats.published,
                    "bus_in": stats.bus_in,
                    "bus_out": stats.bus_out,
                    "delivered": stats.delivered,
                    "replayed": stats.replayed,
                })
            })
            .collect();
        json!({
            "balancer": self.base_port,
            "nodes": nodes,
            "seq": self.seq.load(Ordering::SeqCst),
        })
    }

    /// The hub of node `via`, or (for `auto` or a node that is not up) the
    /// next node that is up.
    fn publisher(&self, via: Option<usize>) -> Option<(usize, Hub)> {
        if let Some(node) = via.filter(|&n| n < NODES) {
            let slot = self.slot(node);
            if let (Some(hub), false) = (&slot.hub, slot.draining) {
                return Some((node, hub.clone()));
            }
        }
        let start = self.next_via.fetch_add(1, Ordering::Relaxed);
        (0..NODES).map(|k| (start + k) % NODES).find_map(|node| {
            let slot = self.slot(node);
            match (&slot.hub, slot.draining) {
                (Some(hub), false) => Some((node, hub.clone())),
                _ => None,
            }
        })
    }
}

fn page_routes(cluster: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/cluster", get(cluster_state))
        .route("/cluster/publish", post(cluster_publish))
        .route("/cluster/stop", post(cluster_stop))
        .route("/cluster/start", post(cluster_start))
        .with_state(cluster)
}

#[derive(serde::Deserialize)]
struct PageQuery {
    publish: Option<usize>,
}

async fn index(Query(q): Query<PageQuery>) -> Html<String> {
    let via = q
        .publish
        .filter(|&n| n < NODES)
        .map_or_else(|| "auto".to_owned(), |n| n.to_string());
    Html(PAGE.replace("{VIA}", &via))
}

async fn cluster_state(State(cluster): State<Shared>) -> Json<serde_json::Value> {
    Json(cluster.state())
}

#[derive(serde::Deserialize)]
struct PublishQuery {
    via: Option<String>,
    target: Option<String>,
    connection: Option<String>,
}

async fn cluster_publish(
    State(cluster): State<Shared>,
    Query(q): Query<PublishQuery>,
    text: String,
) -> Response {
    let via = q.via.as_deref().and_then(|v| v.parse::<usize>().ok());
    let (target, label, numbered) = match q.target.as_deref().unwrap_or("topic") {
        "topic" => (Target::topic("demo"), "topic demo".to_owned(), true),
        "user" => (Target::user("me"), "user me".to_owned(), true),
        "all" => (Target::All, "everyone".to_owned(), true),
        "connection" => {
            let Some(id) = q.connection.as_deref().and_then(ConnectionId::parse) else {
                return (StatusCode::BAD_REQUEST, "connection=C: a connection id").into_response();
            };
            (Target::Connection(id), "this connection".to_owned(), false)
        }
        other => {
            return (StatusCode::BAD_REQUEST, format!("unknown target {other:?}")).into_response()
        }
    };
    let n = numbered.then(|| cluster.seq.fetch_add(1, Ordering::SeqCst) + 1);
    // A node stopped between being picked and publishing refuses: the same
    // number goes through the next one, so no number is handed out unsent.
    let mut refusal = None;
    let mut wanted = via;
    for _ in 0..NODES {
        let Some((node, hub)) = cluster.publisher(wanted.take()) else {
            break;
        };
        let via = format!("node-{node}");
        let data = json!({ "n": n, "text": text, "target": label, "via": via }).to_string();
        let event = match Event::new().event("demo") {
            Ok(event) => event.data(data),
            Err(err) => {
                return (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response()
            }
        };
        match hub.publish(target.clone(), event).await {
            Ok(receipt) => {
                return Json(json!({ "n": n, "via": via, "id": receipt.id })).into_response()
            }
            Err(err) => refusal = Some(err),
        }
    }
    match refusal {
        Some(err) => err
            .to_http_response()
            .map(axum::body::Body::from)
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no node is up").into_response(),
    }
}

#[derive(serde::Deserialize)]
struct NodeQuery {
    node: usize,
}

async fn cluster_stop(State(cluster): State<Shared>, Query(q): Query<NodeQuery>) -> Response {
    if q.node >= NODES {
        return (StatusCode::BAD_REQUEST, "no such node").into_response();
    }
    match cluster.stop(q.node) {
        Ok(()) => Json(json!({ "stopping": format!("node-{}", q.node) })).into_response(),
        Err(err) => (StatusCode::CONFLICT, err).into_response(),
    }
}

async fn cluster_start(State(cluster): State<Shared>, Query(q): Query<NodeQuery>) -> Response {
    if q.node >= NODES {
        return (StatusCode::BAD_REQUEST, "no such node").into_response();
    }
    match cluster.start(q.node).await {
        Ok(()) => Json(json!({ "started": format!("node-{}", q.node) })).into_response(),
        Err(err) => (StatusCode::CONFLICT, err.to_string()).into_response(),
    }
}

/// The page fetches from whichever node the balancer picks (demo only).
async fn allow_any_origin(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base_port: u16 = match std::env::args().nth(1) {
        Some(p) => p.parse().map_err(|e| format!("port {p:?}: {e}"))?,
        None => 3000,
    };
    let prometheus = common::install_metrics()?;
    let bus = MemoryBus::new();
    let history = Arc::new(MemoryHistory::new(&bus, Retention::default().max_len(1000)));
    let cluster = Arc::new(Cluster {
        base_port,
        bus,
        history,
        prometheus,
        routable: (0..NODES).map(|_| AtomicBool::new(false)).collect(),
        nodes: (0..NODES).map(|_| Mutex::new(Slot::default())).collect(),
        seq: AtomicU64::new(0),
        next_via: AtomicUsize::new(0),
    });
    for node in 0..NODES {
        cluster.start(node).await?;
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", base_port)).await?;
    println!("balancer listening on http://{}", listener.local_addr()?);
    println!("open http://127.0.0.1:{base_port}/ in a browser; Ctrl-C to stop");
    let ports: Vec<u16> = (0..NODES).map(|n| cluster.port(n)).collect();
    let balance = balancer::run(listener, ports, cluster.routable.clone());
    tokio::select! {
        _ = balance => {}
        _ = common::termination() => {}
    }
    // Every node saw the signal too: wait for their drains.
    for _ in 0..50 {
        if (0..NODES).all(|n| cluster.slot(n).hub.is_none()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
