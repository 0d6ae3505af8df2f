//! `--parts topics`: the memory of connections that follow many topics.
//!
//! `--topic-conns` connections (200; 20 with `--quick`), each following
//! [`TOPICS`] topics of [`NAME_LEN`] bytes, every name its own (so nothing
//! is shared between connections), opened on a hub in this process. RSS of
//! this process before and after, per connection, and per subscription
//! beyond the names' own bytes; goal (issue 18): at most twice the names'
//! bytes plus 128 B per subscription. Runs on the memory bus, then on Redis
//! and NATS on 127.0.0.1 when they answer (a broker keeps its own state per
//! subscribed channel).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sse_cluster::stream::StreamConfig;
use sse_cluster::{Hub, Subscription};

use super::{f, progress, rss_kib, say, settled_rss, Options};

/// Topics per connection: the per-connection cap.
const TOPICS: usize = sse_cluster::limits::MAX_TOPICS_PER_CONNECTION;
/// Bytes of each topic name.
const NAME_LEN: usize = 230;
/// Longest one broker's part may take to open its connections.
const OPEN_LIMIT: Duration = Duration::from_secs(120);

fn name(conn: usize, topic: usize) -> String {
    let mut name = format!("c{conn:05}-t{topic:03}-");
    while name.len() < NAME_LEN {
        name.push('x');
    }
    name
}

async fn hub(broker: &str, prefix: &str) -> Option<Hub> {
    let builder = Hub::builder()
        .node_id("topics")
        .stream_config(StreamConfig::default().keep_alive(None));
    let builder = match broker {
        "memory" => builder,
        "redis" => {
            use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
            let config = RedisConfig::new("redis://127.0.0.1:6379").prefix(format!("{prefix}:"));
            builder.broker(RedisBroker::new(config).ok()?)
        }
        _ => {
            use sse_cluster::broker::nats::{NatsBroker, NatsConfig};
            let config = NatsConfig::new("nats://127.0.0.1:4222").prefix(prefix);
            builder.broker(NatsBroker::new(config).ok()?)
        }
    };
    let hub = tokio::time::timeout(Duration::from_secs(10), builder.build())
        .await
        .ok()?
        .ok()?;
    (hub.broker_status() == sse_cluster::BrokerStatus::Up).then_some(hub)
}

async fn one(broker: &str, conns: usize) -> Value {
    let prefix = format!("loadtopics{}", std::process::id());
    let Some(hub) = hub(broker, &prefix).await else {
        say(&format!("topics on {broker}: skipped (not reachable)"));
        return json!({ "absent": "not reachable" });
    };
    let me = || vec![std::process::id()];
    let base = settled_rss(&me).await;
    let started = Instant::now();
    let mut held = Vec::with_capacity(conns);
    for c in 0..conns {
        if started.elapsed() > OPEN_LIMIT {
            break;
        }
        let sub = Subscription::new().topics((0..TOPICS).map(|t| name(c, t)));
        match hub.connect(sub).await {
            Ok(conn) => held.push(conn),
            Err(err) => {
                say(&format!("topics on {broker}: connect failed: {err}"));
                break;
            }
        }
        if c % 20 == 19 {
            progress(&format!(
                "topics on {broker}: {}/{conns} connections",
                c + 1
            ));
        }
    }
    let took = started.elapsed();
    let rss = settled_rss(&me).await;
    let open = held.len().max(1);
    let per_conn = (rss.saturating_sub(base) * 1024) as f64 / open as f64;
    let names = (TOPICS * NAME_LEN) as f64;
    let per_sub_beyond = (per_conn - names) / TOPICS as f64;
    let goal = 2.0 * names + 128.0 * TOPICS as f64;
    say(&format!(
        "topics on {broker}: {} connections × {TOPICS} topics of {NAME_LEN} B in {:.1} s: RSS {base} → {rss} KiB, {per_conn:.0} B/connection ({:.0} B per subscription beyond the name; goal ≤ {goal:.0} B/connection)",
        held.len(),
        took.as_secs_f64(),
        per_sub_beyond,
    ));
    drop(held);
    hub.shutdown().await;
    json!({
        "connections": open, "topics": TOPICS, "name_len": NAME_LEN,
        "rss_before_kib": base, "rss_kib": rss, "open_secs": took.as_secs_f64(),
        "bytes_per_conn": per_conn, "bytes_per_sub_beyond_name": per_sub_beyond,
        "goal_bytes_per_conn": goal,
        "rss_after_close_kib": rss_kib(&me()),
    })
}

/// The first argument of the child process that measures one broker.
pub(super) const CHILD: &str = "topics-child";

/// The child: measures `broker` with `conns` connections, prints one JSON
/// line.
pub(super) async fn child(args: &[String]) {
    let broker = args.first().map_or("memory", String::as_str);
    let conns = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(20);
    println!("{}", one(broker, conns).await);
}

/// The part: one row per broker, each measured in a fresh child process
/// (in one process, the heap that one broker's run freed would hide part of
/// the next one's growth).
pub(super) async fn run(opts: &Options, report: &mut std::collections::BTreeMap<String, Value>) {
    let mut out = json!({});
    let exe = std::env::current_exe().expect("current exe");
    for broker in ["memory", "redis", "nats"] {
        let child = tokio::process::Command::new(&exe)
            .arg(CHILD)
            .arg(broker)
            .arg(opts.topic_conns.to_string())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .output();
        out[broker] = match tokio::time::timeout(OPEN_LIMIT * 2, child).await {
            Ok(Ok(output)) => String::from_utf8_lossy(&output.stdout)
                .lines()
                .last()
                .and_then(|line| serde_json::from_str(line).ok())
                .unwrap_or_else(|| json!({ "absent": "no result" })),
            _ => json!({ "absent": "did not finish" }),
        };
    }
    report.insert("topics".into(), out);
}

/// Its table, if it ran.
pub(super) fn print(doc: &Value) {
    let Some(v) = doc.get("topics") else {
        return;
    };
    println!(
        "\n## Connections with {TOPICS} topics of {NAME_LEN} bytes (RSS of the harness process)\n"
    );
    println!("| broker | connections | RSS before KiB | RSS after KiB | bytes/conn | bytes per subscription beyond the name | goal bytes/conn | met |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for broker in ["memory", "redis", "nats"] {
        let row = &v[broker];
        if row.get("absent").is_some() || row.is_null() {
            println!("| {broker} | absent | | | | | | |");
            continue;
        }
        let per = f(&row["bytes_per_conn"]);
        let goal = f(&row["goal_bytes_per_conn"]);
        println!(
            "| {broker} | {} | {} | {} | {per:.0} | {:.0} | {goal:.0} | {} |",
            row["connections"],
            row["rss_before_kib"],
            row["rss_kib"],
            f(&row["bytes_per_sub_beyond_name"]),
            if per <= goal { "yes" } else { "no" }
        );
    }
}
