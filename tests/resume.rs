//! Resume after reconnect with the memory and Redis Streams histories: the
//! shared scenarios of `support::resume` over real TCP, plus what is specific
//! to each store (wiping it, a bus outage healed by replay).

#![cfg(feature = "axum")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::history::memory::MemoryHistory;
use sse_cluster::history::Retention;
use sse_cluster::{BrokerStatus, StreamConfig};
use support::resume::{self, history_node, open, publish, read_n};
use support::{Node, WAIT};

/// `n` hubs on one memory bus sharing one memory history.
async fn memory_nodes(
    n: usize,
    retention: Retention,
) -> (MemoryBus, Arc<MemoryHistory>, Vec<Node>) {
    let bus = MemoryBus::new();
    let history = Arc::new(MemoryHistory::new(&bus, retention));
    let mut nodes = Vec::new();
    for i in 0..n {
        let (broker, store) = (bus.broker(), history.clone());
        nodes.push(history_node(format!("m{i}"), broker, store, StreamConfig::default()).await);
    }
    (bus, history, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_replays_missed_events_on_another_node() {
    let (_bus, _h, nodes) = memory_nodes(3, Retention::default()).await;
    resume::replays_missed_events_on_another_node(&nodes, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_seam_race_loses_and_repeats_nothing() {
    let (_bus, _h, nodes) = memory_nodes(3, Retention::default().max_len(100_000)).await;
    resume::seam_race(&nodes, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_reset_beyond_the_window() {
    let (_bus, _h, nodes) = memory_nodes(2, Retention::default().max_len(5)).await;
    resume::reset_beyond_window(&nodes, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_reset_after_a_wipe() {
    let (_bus, history, nodes) = memory_nodes(2, Retention::default()).await;
    resume::reset_after_wipe(&nodes, || async move { history.wipe() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_reset_on_garbage_ids() {
    let (_bus, _h, nodes) = memory_nodes(1, Retention::default()).await;
    resume::reset_on_garbage_ids(&nodes).await;
}

/// A replay longer than the client's queue waits for the client instead of
/// overflowing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_larger_than_the_queue_waits_for_the_client() {
    let bus = MemoryBus::new();
    let history = Arc::new(MemoryHistory::new(&bus, Retention::default()));
    let mut nodes = Vec::new();
    for i in 0..2 {
        let small = StreamConfig::default().queue_limits(16, 1 << 20);
        nodes.push(history_node(format!("q{i}"), bus.broker(), history.clone(), small).await);
    }
    resume::replays_missed_events_on_another_node(&nodes, 200).await;
}

/// With history on, a bus outage ends in a replay of what the node missed,
/// not in a gap event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bus_outage_is_healed_by_replay() {
    let bus = MemoryBus::new();
    let history = Arc::new(MemoryHistory::new(&bus, Retention::default()));
    let broker_a = bus.broker();
    let mut nodes = Vec::new();
    for (i, broker) in [
        broker_a.clone() as Arc<dyn sse_cluster::Broker>,
        bus.broker(),
    ]
    .into_iter()
    .enumerate()
    {
        let config = StreamConfig::default();
        nodes.push(history_node(format!("o{i}"), broker, history.clone(), config).await);
    }
    let mut client = open(&nodes[0], resume::FOLLOW, None).await;
    publish(&nodes[1], "topic=a", "a:0").await;
    assert_eq!(read_n(&mut client, 1).await[0].data, "a:0");

    broker_a.set_connected(false);
    support::bus::wait_until("node a down", WAIT, || {
        nodes[0].hub.broker_status() == BrokerStatus::Down
    })
    .await;
    for i in 1..=20 {
        publish(&nodes[1], "topic=a", &format!("a:{i}")).await;
        publish(&nodes[1], "user=u1", &format!("u1:{i}")).await;
    }
    client.expect_quiet().await;
    broker_a.set_connected(true);
    let events = read_n(&mut client, 40).await;
    assert!(events.iter().all(|e| e.event == "message"), "{events:?}");
    let a: Vec<String> = events
        .iter()
        .filter(|e| e.data.starts_with("a:"))
        .map(|e| e.data.clone())
        .collect();
    assert_eq!(a, (1..=20).map(|i| format!("a:{i}")).collect::<Vec<_>>());
    publish(&nodes[1], "topic=b", "b:live").await;
    assert_eq!(read_n(&mut client, 1).await[0].data, "b:live");
    client.expect_quiet().await;
    assert!(nodes[0].hub.stats().replays >= 1);
    assert_eq!(nodes[0].hub.stats().gap_events, 0);
}

/// Age-based retention: an event missed while away that aged out of the
/// window means a reset, not a partial replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_reset_when_missed_events_aged_out() {
    let retention = Retention::default().max_age(Some(Duration::from_millis(200)));
    let (_bus, _h, nodes) = memory_nodes(2, retention).await;
    let mut client = open(&nodes[0], resume::FOLLOW, None).await;
    publish(&nodes[0], "topic=a", "a:0").await;
    let last_id = read_n(&mut client, 1).await[0].id.clone();
    drop(client);
    publish(&nodes[1], "topic=a", "a:1").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    publish(&nodes[1], "topic=a", "a:2").await;
    resume::expect_reset(&nodes[1], &last_id, "expired").await;
}

#[cfg(feature = "redis")]
mod redis_store {
    use super::*;
    use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
    use sse_cluster::broker::Channel;
    use sse_cluster::history::redis::RedisHistory;
    use support::redis_server::{machine_redis, resp_command, unique_prefix, MACHINE_REDIS};

    /// Runs `scenario` on `n` hubs, each with its own Redis broker and
    /// history (own connections) on one fresh prefix, then deletes the
    /// scenario's keys.
    async fn on_redis(
        test: &str,
        n: usize,
        retention: Retention,
        scenario: impl AsyncFnOnce(&[Node], Arc<RedisHistory>),
    ) {
        let Some(url) = machine_redis(test) else {
            return;
        };
        let prefix = unique_prefix(test);
        let mut nodes = Vec::new();
        let mut histories = Vec::new();
        for i in 0..n {
            let broker = RedisBroker::new(RedisConfig::new(&url).prefix(&prefix)).expect("broker");
            let history = Arc::new(RedisHistory::new(broker.clone(), retention));
            let config = StreamConfig::default();
            nodes.push(history_node(format!("r{i}"), broker, history.clone(), config).await);
            histories.push(history);
        }
        let history = histories.pop().expect("a node");
        scenario(&nodes, history.clone()).await;
        delete_keys(&history);
    }

    /// Deletes the keys of the scenario's channels.
    fn delete_keys(history: &RedisHistory) {
        for channel in [
            Channel::Broadcast,
            Channel::User("u1".into()),
            Channel::Topic("a".into()),
            Channel::Topic("b".into()),
        ] {
            let (stream, epoch) = history.keys(&channel);
            resp_command(
                MACHINE_REDIS,
                &[b"DEL", stream.as_bytes(), epoch.as_bytes()],
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_replays_missed_events_on_another_node() {
        let test = "redis_replays_missed_events_on_another_node";
        on_redis(test, 3, Retention::default(), async |nodes, _| {
            resume::replays_missed_events_on_another_node(nodes, 50).await
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_seam_race_loses_and_repeats_nothing() {
        let test = "redis_seam_race_loses_and_repeats_nothing";
        let retention = Retention::default().max_len(100_000);
        on_redis(test, 3, retention, async |nodes, _| {
            resume::seam_race(nodes, 1000).await
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_reset_beyond_the_window() {
        let test = "redis_reset_beyond_the_window";
        let retention = Retention::default().max_len(5);
        on_redis(test, 2, retention, async |nodes, _| {
            resume::reset_beyond_window(nodes, 5).await
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_reset_after_the_keys_are_flushed() {
        let test = "redis_reset_after_the_keys_are_flushed";
        on_redis(test, 2, Retention::default(), async |nodes, history| {
            resume::reset_after_wipe(nodes, || async move { delete_keys(&history) }).await
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_reset_on_garbage_ids() {
        let test = "redis_reset_on_garbage_ids";
        on_redis(test, 1, Retention::default(), async |nodes, _| {
            resume::reset_on_garbage_ids(nodes).await
        })
        .await;
    }
}
