//! Redis Sentinel failover under load: a primary, a replica and three
//! sentinels spawned by the test; two hubs reach the primary through the
//! sentinels, with Redis history. The primary is killed (SIGKILL) while a
//! node publishes 100 events/s: the hubs report Down, then Up within the
//! failover time plus 2 s, and a client that reads through it all and
//! then reconnects to the other node with its `Last-Event-ID` has every
//! acknowledged event exactly once.

#![cfg(all(feature = "axum", feature = "redis"))]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
use sse_cluster::history::{redis::RedisHistory, Retention};
use sse_cluster::{BrokerStatus, Event, Hub, Target};
use support::bus::wait_until;
use support::redis_sentinel::{SentinelSet, MASTER};
use support::redis_server::unique_prefix;
use support::{Node, SseClient};

async fn node(set: &SentinelSet, prefix: &str, id: &str) -> Node {
    let config = RedisConfig::sentinel(set.sentinel_urls(), MASTER)
        .prefix(prefix)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .liveness(Duration::from_millis(200), Duration::from_millis(500));
    let mut config = config;
    config.connect_timeout = Duration::from_millis(500);
    let broker = RedisBroker::new(config).expect("config");
    let history = Arc::new(RedisHistory::new(broker.clone(), Retention::default()));
    let hub = Hub::builder()
        .node_id(id)
        .broker(broker)
        .history(history)
        .require_broker(Duration::from_secs(5))
        .build()
        .await
        .expect("a hub through the sentinels");
    Node::serve(hub).await
}

/// Reads `client` until nothing arrives for `quiet`; the numbered events,
/// the last event id, and whether a reset came.
async fn read_until_quiet(
    client: &mut SseClient,
    quiet: Duration,
    got: &mut Vec<u64>,
    last_id: &mut String,
) -> bool {
    let mut reset = false;
    while let Some(event) = client.next_within(quiet).await {
        if event.event == "sse-cluster.reset" {
            reset = true;
        }
        if !event.id.is_empty() {
            last_id.clone_from(&event.id);
        }
        if let Ok(n) = event.data.parse::<u64>() {
            got.push(n);
        }
    }
    reset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_is_followed_without_loss() {
    let test = "a_primary_killed_under_load_is_followed_without_loss";
    let Some(mut set) = tokio::task::block_in_place(|| SentinelSet::start(test)) else {
        return;
    };
    let prefix = unique_prefix(test);
    let a = node(&set, &prefix, "a").await;
    let b = node(&set, &prefix, "b").await;
    let mut client = SseClient::open(a.addr, "/events?topic=t", &[]).await;
    assert_eq!(client.status, 200);

    // 100 events/s from node B; what Redis acknowledged is recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (hub, stop) = (b.hub.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for n in 0..3000u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                tick.tick().await;
                let event = Event::new().data(n.to_string());
                if hub.publish(Target::topic("t"), event).await.is_ok() {
                    acked.push(n);
                }
            }
            acked
        })
    };
    // The live reader, until the end of the run.
    let reader = tokio::spawn(async move {
        let (mut got, mut last_id) = (Vec::new(), String::new());
        let reset =
            read_until_quiet(&mut client, Duration::from_secs(8), &mut got, &mut last_id).await;
        (got, last_id, reset)
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = set.primary.port();
    let killed = Instant::now();
    tokio::task::block_in_place(|| set.primary.kill());
    wait_until("A down", Duration::from_secs(5), || {
        a.hub.broker_status() == BrokerStatus::Down
    })
    .await;
    let down_after = killed.elapsed();
    // The sentinels promote the replica...
    let mut promoted = None;
    while promoted.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no failover within 30 s"
        );
        if tokio::task::block_in_place(|| set.primary_port()).is_some_and(|p| p != old) {
            promoted = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failover = promoted.unwrap_or_default();
    // ...and both hubs follow within the failover time plus 2 s.
    wait_until(
        "A and B up on the new primary",
        Duration::from_secs(30),
        || support::bus::both(&a.hub, &b.hub, BrokerStatus::Up),
    )
    .await;
    let up = killed.elapsed();
    assert!(
        up <= failover + Duration::from_secs(2),
        "up after {up:?}, the failover took {failover:?}"
    );
    assert_eq!(set.primary_port(), Some(set.replica.port()));
    eprintln!("down after {down_after:?}, new primary after {failover:?}, up after {up:?}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let acked = publisher.await.expect("publisher");
    assert!(acked.len() > 150, "{} acknowledged", acked.len());
    let (mut got, last_id, reset) = reader.await.expect("reader");
    assert!(!reset, "no reset while the history survives the failover");

    // The client reconnects, to the other node, with its last id.
    let mut again =
        SseClient::open(b.addr, "/events?topic=t", &[("last-event-id", &last_id)]).await;
    assert_eq!(again.status, 200);
    let mut last = last_id.clone();
    let reset = read_until_quiet(&mut again, Duration::from_secs(2), &mut got, &mut last).await;
    assert!(!reset, "resumed without a reset");

    let mut seen = BTreeMap::new();
    for n in &got {
        *seen.entry(*n).or_insert(0u32) += 1;
    }
    let duplicated: Vec<_> = seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(duplicated, Vec::<u64>::new(), "duplicated");
    let lost: Vec<_> = acked
        .iter()
        .filter(|n| !seen.contains_key(n))
        .copied()
        .collect();
    assert_eq!(lost, Vec::<u64>::new(), "acknowledged but never received");
}
