//! The main demo: three nodes in one process, joined by the in-memory broker.
//!
//! ```text
//! cargo run --example cluster            # nodes on 127.0.0.1:3000, :3001, :3002
//! cargo run --example cluster -- 4000    # nodes on :4000, :4001, :4002
//! ```
//!
//! Open http://127.0.0.1:3000/ : the page listens with an EventSource on one
//! node and publishes through another, so every event you see crossed nodes
//! over the bus. Each node also serves the demo node's API (`/events`,
//! `/publish`, `/healthz`, `/stats`). Ctrl-C drains all three.

mod common;

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN};
use axum::response::{Html, Response};
use axum::routing::get;
use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::Hub;

const NODES: u16 = 3;

#[derive(Clone)]
struct Page {
    node: u16,
    base_port: u16,
}

#[derive(serde::Deserialize)]
struct PageQuery {
    listen: Option<u16>,
    publish: Option<u16>,
}

async fn index(State(page): State<Page>, Query(q): Query<PageQuery>) -> Html<String> {
    let listen = q.listen.unwrap_or(page.node) % NODES;
    let publish = q.publish.unwrap_or((listen + 1) % NODES) % NODES;
    Html(
        PAGE.replace("{LISTEN_PORT}", &(page.base_port + listen).to_string())
            .replace("{PUBLISH_PORT}", &(page.base_port + publish).to_string())
            .replace("{LISTEN}", &listen.to_string())
            .replace("{PUBLISH}", &publish.to_string()),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base_port: u16 = match std::env::args().nth(1) {
        Some(p) => p.parse().map_err(|e| format!("port {p:?}: {e}"))?,
        None => 3000,
    };
    let bus = MemoryBus::new();
    let mut servers = Vec::new();
    for node in 0..NODES {
        let hub = Hub::builder()
            .node_id(format!("node-{node}"))
            .broker(bus.broker())
            .drain_timeout(Duration::from_millis(800))
            .build()
            .await?;
        let page = axum::Router::new()
            .route("/", get(index))
            .with_state(Page { node, base_port });
        let app = common::router(hub.clone())
            .merge(page)
            .layer(axum::middleware::map_response(allow_any_origin));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", base_port + node)).await?;
        println!("node-{node} listening on http://{}", listener.local_addr()?);
        servers.push(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    common::termination().await;
                    hub.shutdown().await;
                })
                .await
        }));
    }
    println!("open http://127.0.0.1:{base_port}/ in a browser; Ctrl-C to stop");
    for server in servers {
        server.await??;
    }
    Ok(())
}

/// The page on one node talks to the others: allow any origin (demo only).
async fn allow_any_origin(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

const PAGE: &str = r#"<!doctype html>
<html>
<head><meta charset="utf-8"><title>sse-cluster demo</title>
<style>
 body { font: 15px system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; }
 #log { border: 1px solid #ccc; padding: .5rem; height: 18rem; overflow-y: auto; font-family: monospace; }
 .meta { color: #666; }
</style></head>
<body>
<h1>sse-cluster: three nodes, one bus</h1>
<p>This page's EventSource is connected to <b>node-{LISTEN}</b> (port {LISTEN_PORT}).
The form publishes through <b>node-{PUBLISH}</b> (port {PUBLISH_PORT}).
Each message crosses nodes over the in-memory broker.</p>
<form id="f">
 <select id="target">
  <option value="topic=demo">topic "demo"</option>
  <option value="user=me">user "me"</option>
  <option value="">everyone</option>
  <option value="connection">this connection only</option>
 </select>
 <input id="msg" value="hello from node-{PUBLISH}" size="30">
 <button>Publish</button>
</form>
<p class="meta" id="status">connecting…</p>
<div id="log"></div>
<script>
const listen = "http://127.0.0.1:{LISTEN_PORT}", publish = "http://127.0.0.1:{PUBLISH_PORT}";
const log = (text, cls) => { const d = document.createElement("div"); d.textContent = text;
  if (cls) d.className = cls; const l = document.getElementById("log"); l.prepend(d); };
let connection = null;
const es = new EventSource(listen + "/events?topic=demo&user=me");
es.addEventListener("connected", e => { connection = e.data;
  document.getElementById("status").textContent = "connected: " + e.data; });
es.onmessage = e => log(new Date().toLocaleTimeString() + "  " + e.data);
es.onerror = () => { document.getElementById("status").textContent = "reconnecting…"; };
document.getElementById("f").onsubmit = async ev => {
  ev.preventDefault();
  let target = document.getElementById("target").value;
  if (target === "connection") target = "connection=" + encodeURIComponent(connection);
  const r = await fetch(publish + "/publish?" + target, { method: "POST", body: document.getElementById("msg").value });
  log("published via node-{PUBLISH}: " + r.status + " " + await r.text(), "meta");
};
</script>
</body></html>
"#;
