//! Subscribe churn on Redis: while 16 clients churn connections of 256 fresh
//! topics each, how long does an ordinary connect (one topic) take? Reports
//! the worst, p99 and median connect latency over 10 s, with and without the
//! churn, side by side in one run. Goal (issue 12): worst < 500 ms.
//!
//! ```text
//! cargo bench --features redis --bench subscribe_churn [-- redis://127.0.0.1:6379]
//! ```
//!
//! Bounded: 10 s per phase, every connect within 5 s.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
use sse_cluster::{Hub, Subscription};

const PHASE: Duration = Duration::from_secs(10);
const CHURNERS: usize = 16;
const TOPICS: usize = 256;

async fn ordinary_connects(hub: &Hub, stop: &AtomicBool) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let started = Instant::now();
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            hub.connect(Subscription::new().topic(format!("ordinary-{n}"))),
        )
        .await
        .expect("connect within 5 s")
        .expect("connect");
        latencies.push(started.elapsed());
        drop(conn);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies
}

fn report(name: &str, mut latencies: Vec<Duration>, churned: u64) {
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<14} connects {:>5}  median {:>8.2?}  p99 {:>8.2?}  worst {:>8.2?}  churn connects {churned}",
        latencies.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = std::env::args()
        .skip(1)
        .find(|a| a.starts_with("redis"))
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let prefix = format!("churn-{}:", fastrand::u32(..));
    let broker = RedisBroker::new(RedisConfig::new(url).prefix(prefix)).expect("broker");
    let hub = Hub::builder()
        .broker(broker)
        .max_connections(100_000)
        .build()
        .await
        .expect("hub");

    // Quiet: ordinary connects alone.
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(PHASE).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let quiet = ordinary_connects(&hub, &stop).await;
    timer.await.expect("timer");
    report("quiet", quiet, 0);

    // Churn: 16 clients each connect with 256 fresh topics, drop, repeat.
    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let mut churners = Vec::new();
    for c in 0..CHURNERS {
        let (hub, stop, churned) = (hub.clone(), stop.clone(), churned.clone());
        churners.push(tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let topics = (0..TOPICS).map(|t| format!("churn-{c}-{round}-{t}"));
                let conn = tokio::time::timeout(
                    Duration::from_secs(5),
                    hub.connect(Subscription::new().topics(topics)),
                )
                .await
                .expect("churn connect within 5 s")
                .expect("churn connect");
                churned.fetch_add(1, Ordering::Relaxed);
                drop(conn);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(PHASE).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let busy = ordinary_connects(&hub, &stop).await;
    timer.await.expect("timer");
    for churner in churners {
        churner.await.expect("churner");
    }
    let worst = busy.iter().max().copied().unwrap_or_default();
    report("under churn", busy, churned.load(Ordering::Relaxed));
    println!(
        "goal: worst connect under churn < 500 ms: {}",
        if worst < Duration::from_millis(500) {
            "met"
        } else {
            "MISSED"
        }
    );
    hub.shutdown().await;
}
