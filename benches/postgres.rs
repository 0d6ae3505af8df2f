//! The Postgres backend across two nodes, against the same traffic sent
//! through tokio-postgres directly (a raw `LISTEN`/`NOTIFY` loop), on the
//! same server; and the cost of a history append.
//!
//! Needs a Postgres at `SSE_CLUSTER_POSTGRES_URL` (default: the machine's,
//! `postgres://root@127.0.0.1:5432/test`); every run uses channel and table
//! names of its own (prefix `pgb{pid}_`) and drops its tables at the end.
//! The figures in BENCHMARKS.md were taken on a throwaway cluster started
//! like `.ci/run` does (`fsync=off`): with fsync on, every `NOTIFY` commit
//! waits for a WAL flush and both sides measure the disk. Run with
//!
//! ```sh
//! cargo bench --features postgres --bench postgres
//! ```
//!
//! (`SSE_PG_BENCH_QUICK=1` shortens every phase.)
//!
//! Two hubs, `A` and `B`, each with its own `PostgresBroker` (its own
//! listening connection and publish pool), run in this process on one
//! multi-thread Tokio runtime with 2 workers. `A` holds one connection on a
//! topic; `B` publishes to it with `Hub::publish` and holds none (no echo).
//!
//! * **ours**: `B.publish` → envelope → `SELECT pg_notify($1, $2)` prepared
//!   on B's pooled connection → Postgres → A's listening connection →
//!   JSON envelope decode → SSE encode → A's per-connection queue → the
//!   task reading A's stream, which parses the frame.
//! * **raw**: one tokio-postgres connection running the same prepared
//!   `SELECT pg_notify($1, $2)` with the data itself; another connection
//!   that `LISTEN`s, driven by `poll_message` in a task that parses each
//!   notification.
//!
//! Data: a JSON-ish object of 100 B starting with `{"s":<seq>,"t":<ns>`.
//!
//! 1. **Latency at 1 000 events/s**: an open-loop schedule (a pacing thread
//!    spawning one publish task per event on computed deadlines); after 1 s
//!    of warm-up, 3 slices of 2 s per variant, ours and raw alternating.
//!    Latency = just before the publish call → the reader has the message.
//! 2. **Throughput**: 40 000 events published by 64 tasks (each sequential),
//!    bounded to 10 s; events received / time from the first publish to the
//!    last receipt. 3 runs per variant, alternating; the ratio uses medians.
//! 3. **History append**: 2 000 sequential `Hub::publish` calls on a hub
//!    with `PostgresHistory` (append + trim + notify in one statement)
//!    against the same on a hub without history (a notify), then each with
//!    64 concurrent publishers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use sse_cluster::broker::postgres::{PostgresBroker, PostgresConfig};
use sse_cluster::history::postgres::PostgresHistory;
use sse_cluster::history::Retention;
use sse_cluster::{Event, Hub, StreamConfig, Subscription, Target};
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

mod paced;

use paced::{payload, percentile, Kind, Probe, Publish};

const DEFAULT_URL: &str = "postgres://root@127.0.0.1:5432/test";
const RATE: u64 = 1_000;

#[derive(Clone, Copy)]
struct Plan {
    paced: paced::Plan,
    appends: usize,
}

impl Plan {
    fn from_env() -> Self {
        if std::env::var("SSE_PG_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0") {
            return Plan {
                paced: paced::Plan::quick(RATE, 5_000, 64),
                appends: 200,
            };
        }
        Plan {
            paced: paced::Plan::full(RATE, 40_000),
            appends: 2_000,
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(Plan::from_env()));
}

/// One side's publisher.
#[derive(Clone)]
enum Publisher {
    Ours(Hub),
    Raw(Arc<Client>, Statement, String),
}

impl Publish for Publisher {
    async fn send(&self, seq: u64, epoch: Instant) -> bool {
        let data = payload(seq, epoch.elapsed().as_nanos() as u64);
        match self {
            Publisher::Ours(hub) => hub
                .publish(Target::topic("bench"), Event::new().data(data))
                .await
                .is_ok(),
            Publisher::Raw(client, statement, channel) => {
                client.execute(statement, &[channel, &data]).await.is_ok()
            }
        }
    }
}

/// A side keeps the raw listener's client in `keep`: its connection
/// closes when it drops.
type Side = paced::Side<Publisher>;

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach Postgres at {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn build_hub(url: &str, node: &str, prefix: &str, history: bool) -> Hub {
    let broker = PostgresBroker::new(PostgresConfig::new(url).prefix(prefix)).expect("config");
    let mut builder = Hub::builder()
        .node_id(node)
        .broker(broker.clone())
        .gap_events(false)
        .stream_config(
            StreamConfig::default()
                .keep_alive(None)
                .initial_retry(None)
                .queue_limits(1_000_000, 1 << 30),
        );
    if history {
        builder = builder.history(Arc::new(PostgresHistory::new(
            broker,
            Retention::default().max_len(1000),
        )));
    }
    let hub = builder.build().await.expect("hub");
    assert_eq!(
        hub.broker_status(),
        sse_cluster::BrokerStatus::Up,
        "the hub's PostgresBroker did not come up"
    );
    hub
}

async fn ours(url: &str, prefix: &str) -> Side {
    let a = build_hub(url, "a", prefix, false).await;
    let b = build_hub(url, "b", prefix, false).await;
    let probe = Arc::new(Probe::default());
    let mut stream = a
        .connect(Subscription::new().topic("bench"))
        .await
        .expect("connect")
        .into_stream();
    let p = probe.clone();
    let reader = tokio::spawn(async move {
        let _a = a;
        while let Some(frame) = stream.next().await {
            p.on_message(&frame);
        }
    });
    Side {
        publisher: Publisher::Ours(b),
        probe,
        reader,
        keep: None,
    }
}

async fn raw(url: &str, prefix: &str) -> Side {
    let channel = format!("{prefix}raw");
    let (listener, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("raw listener");
    let probe = Arc::new(Probe::default());
    let p = probe.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = message {
                p.on_message(n.payload().as_bytes());
            }
        }
    });
    listener
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await
        .expect("LISTEN");
    let client = Arc::new(connect(url).await);
    let statement = client
        .prepare("SELECT pg_notify($1, $2)")
        .await
        .expect("prepare");
    Side {
        publisher: Publisher::Raw(client, statement, channel),
        probe,
        reader,
        keep: Some(Box::new(listener)),
    }
}

/// Publish latency (µs, sorted) of `n` sequential publishes through `hub`.
async fn sequential(hub: &Hub, n: usize) -> Vec<u64> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        hub.publish(
            Target::topic("append"),
            Event::new().data(payload(i as u64, 0)),
        )
        .await
        .expect("publish");
        lat.push(started.elapsed().as_micros() as u64);
    }
    lat.sort_unstable();
    lat
}

/// Publishes per second through `hub` with 64 concurrent publishers.
async fn concurrent(hub: &Hub, n: usize) -> f64 {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (hub, next) = (hub.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= n as u64 {
                        return;
                    }
                    let topic = format!("append{}", seq % 16);
                    hub.publish(Target::topic(topic), Event::new().data(payload(seq, 0)))
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("publisher");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn history_cost(url: &str, prefix: &str, plan: Plan) {
    let bus = build_hub(url, "bus", &format!("{prefix}b_"), false).await;
    let store = build_hub(url, "store", &format!("{prefix}h_"), true).await;
    // Warm up: the store creates its tables on first use.
    sequential(&store, 50).await;
    sequential(&bus, 50).await;
    println!(
        "\nHistory append: {} sequential publishes, then {} by 64 tasks over 16 topics",
        plan.appends,
        plan.appends * 4
    );
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>14}",
        "", "p50 µs", "p99 µs", "max µs", "concurrent /s"
    );
    for (name, hub) in [("notify (no history)", &bus), ("append + notify", &store)] {
        let lat = sequential(hub, plan.appends).await;
        let rate = concurrent(hub, plan.appends * 4).await;
        println!(
            "{name:<22} {:>8} {:>8} {:>8} {:>14.0}",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(0),
            rate
        );
    }
    bus.shutdown().await;
    store.shutdown().await;
}

async fn run(plan: Plan) {
    let url = std::env::var("SSE_CLUSTER_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let prefix = format!("pgb{}_", std::process::id());
    let admin = connect(&url).await;
    let settings = admin
        .query_one(
            "SELECT version(), current_setting('fsync'), current_setting('synchronous_commit')",
            &[],
        )
        .await
        .expect("settings");
    let (version, fsync, sync): (String, String, String) =
        (settings.get(0), settings.get(1), settings.get(2));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("Postgres: {version}");
    println!("fsync={fsync}, synchronous_commit={sync}; load average before: {load}");

    let ours_side = ours(&url, &prefix).await;
    let raw_side = raw(&url, &prefix).await;
    let sides = [(Kind::Ours, &ours_side), (Kind::Raw, &raw_side)];
    paced::latency(&sides, plan.paced).await;
    paced::throughput(&sides, plan.paced).await;
    ours_side.reader.abort();
    raw_side.reader.abort();
    history_cost(&url, &prefix, plan).await;

    for table in [
        "payloads",
        "b_payloads",
        "h_payloads",
        "h_channels",
        "h_events",
    ] {
        let _ = admin
            .batch_execute(&format!("DROP TABLE IF EXISTS \"{prefix}{table}\""))
            .await;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("\nload average after: {load}");
}
