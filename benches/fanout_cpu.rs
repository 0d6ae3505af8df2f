//! CPU per delivery of a local fan-out across cores, without sockets: one
//! hub, N connections on topic `t`, each stream read through its HTTP body
//! (`http_body::Body::poll_frame`, which joins queued frames as a server's
//! body does) by its own task, on a two-worker runtime like the demo
//! node's. The publisher and the readers run on different cores, so the
//! per-connection queue's cache lines move between them as in a server;
//! what the load harness adds on top (HTTP, `writev`, the loopback, the
//! client) is left out, so the crate's own part is not drowned by the
//! kernel's and the neighbours'.
//!
//! ```sh
//! cargo bench --bench fanout_cpu -- [CONNS] [EVENTS] [ROUNDS]   # default 10000 100 7
//! ```
//!
//! Each round: `sequential`, EVENTS publishes one after another (each
//! awaited), then `burst`, EVENTS publishes spawned at once (at most 256:
//! beyond the queue's default bound the streams are closed); a round ends
//! when every reader has every event. Printed per round and as medians:
//! deliveries/s and the process's CPU (user + system, `/proc/self/stat`)
//! per delivery. Every loop is bounded; a round that does not finish within
//! 60 s fails.

#![allow(missing_docs)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use sse_cluster::stream::StreamConfig;
use sse_cluster::{Event, Hub, Subscription, Target};
use tokio::sync::Notify;

/// Readers that still wait for events of the current round, and the
/// signal that the last one is done.
struct Round {
    left: AtomicUsize,
    done: Notify,
}

fn event(i: usize) -> Event {
    // 100 bytes of data, as the load harness publishes.
    Event::new().data(format!(
        "{{\"i\":{i:>8},\"sym\":\"ABC\",\"px\":101.25,\"qty\":300,\"ts\":1700000000123,\"pad\":\"{}\"}}",
        "x".repeat(18)
    ))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let conns = args.first().copied().unwrap_or(10_000);
    let events = args.get(1).copied().unwrap_or(100).min(256);
    let rounds = args.get(2).copied().unwrap_or(7);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(conns, events, rounds));
}

async fn run(conns: usize, events: usize, rounds: usize) {
    let hub = Hub::builder()
        .stream_config(StreamConfig::default().initial_retry(None))
        .build()
        .await
        .expect("hub");
    let round = Arc::new(Round {
        left: AtomicUsize::new(0),
        done: Notify::new(),
    });
    // Every reader reads `events` events per phase, two phases per round.
    let per_reader = 2 * events * rounds;
    let mut readers = Vec::with_capacity(conns);
    for _ in 0..conns {
        let conn = hub
            .connect(Subscription::new().topic("t"))
            .await
            .expect("connect");
        let mut body = conn.into_stream();
        let round = round.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < per_reader {
                let Some(Ok(frame)) = body.frame().await else {
                    return seen;
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let frames = data.windows(2).filter(|w| w == b"\n\n").count();
                for _ in 0..frames {
                    seen += 1;
                    if seen % events == 0 && round.left.fetch_sub(1, Ordering::AcqRel) == 1 {
                        round.done.notify_one();
                    }
                }
            }
            seen
        }));
    }
    assert_eq!(hub.registry().topic_connections("t"), conns);
    println!("fanout_cpu: {conns} connections, {events} events per phase, {rounds} rounds");
    let mut results: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        for (phase, burst) in [false, true].into_iter().enumerate() {
            round.left.store(conns, Ordering::Release);
            let done = round.done.notified();
            let cpu = common::cpu_secs();
            let start = Instant::now();
            if burst {
                let publishes: Vec<_> = (0..events)
                    .map(|i| {
                        let hub = hub.clone();
                        tokio::spawn(async move { hub.publish(Target::topic("t"), event(i)).await })
                    })
                    .collect();
                for p in publishes {
                    p.await.expect("task").expect("publish");
                }
            } else {
                for i in 0..events {
                    hub.publish(Target::topic("t"), event(i))
                        .await
                        .expect("publish");
                }
            }
            tokio::time::timeout(Duration::from_secs(60), done)
                .await
                .expect("every reader got every event within 60 s");
            let secs = start.elapsed().as_secs_f64();
            let cpu = common::cpu_secs() - cpu;
            let deliveries = (conns * events) as f64;
            let name = if burst { "burst" } else { "sequential" };
            println!(
                "round {r} {name:>10}: {:>9.0} deliveries/s, {:.3} µs CPU per delivery",
                deliveries / secs,
                cpu / deliveries * 1e6
            );
            results[phase].push((deliveries / secs, cpu / deliveries * 1e6));
        }
    }
    for (phase, name) in ["sequential", "burst"].into_iter().enumerate() {
        let rate = median(results[phase].iter().map(|r| r.0).collect());
        let cpu = median(results[phase].iter().map(|r| r.1).collect());
        println!("median {name:>10}: {rate:>9.0} deliveries/s, {cpu:.3} µs CPU per delivery");
    }
    drop(hub);
    for reader in readers {
        let _ = reader.await;
    }
}
