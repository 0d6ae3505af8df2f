//! Sharded pub/sub through a real three-shard Redis Cluster.

#![cfg(all(feature = "redis", feature = "axum"))]

mod support;

use hyper::StatusCode;
use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
use sse_cluster::Hub;
use support::{post, SseClient};

async fn hub(node: &str, urls: &[String], prefix: &str) -> support::Node {
    let config = RedisConfig::cluster(urls.iter().cloned()).prefix(prefix);
    let broker = RedisBroker::new(config).expect("config");
    let hub = Hub::builder()
        .node_id(node)
        .broker(broker)
        .build()
        .await
        .expect("hub");
    assert_eq!(hub.broker_status(), sse_cluster::BrokerStatus::Up);
    support::Node::serve(hub).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_across_a_three_node_cluster() {
    let Some(cluster) = support::redis_cluster::start("sharded_pubsub_across_a_three_node_cluster")
    else {
        return;
    };
    let urls = cluster.urls();
    let prefix = format!("rc{}:", fastrand::u32(..));
    let a = hub("a", &urls, &prefix).await;
    let b = hub("b", &urls, &prefix).await;

    // Topics whose channels live on every shard.
    let mut topics = Vec::new();
    let mut owners = std::collections::HashSet::new();
    for i in 0..200 {
        let topic = format!("t{i}");
        if owners.insert(cluster.owner_port(&format!("{prefix}topic:{topic}"))) {
            topics.push(topic);
        }
        if owners.len() == 3 {
            break;
        }
    }
    assert_eq!(owners.len(), 3, "channels on all three shards");

    let query: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
    let mut client =
        SseClient::connect(a.addr, &format!("/events?{}&user=u1", query.join("&"))).await;
    for topic in &topics {
        let (status, _) = post(
            b.addr,
            &format!("/publish?topic={topic}"),
            format!("to {topic}"),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(
            client.next().await.expect("event").data,
            format!("to {topic}")
        );
    }
    for (path, data) in [("/publish?user=u1", "to user"), ("/publish", "to all")] {
        assert_eq!(post(b.addr, path, data).await.0, StatusCode::ACCEPTED);
        assert_eq!(client.next().await.expect("event").data, data);
    }
    let conn_path = format!("/publish?connection={}", client.connection_id);
    assert_eq!(
        post(b.addr, &conn_path, "direct").await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(client.next().await.expect("event").data, "direct");

    // A non-Rust publisher: redis-cli in cluster mode, SPUBLISH.
    let channel = format!("{prefix}topic:{}", topics[0]);
    let reply = cluster.cli(&[
        "SPUBLISH",
        &channel,
        r#"{"v":1,"event":"cli","data":"from redis-cli"}"#,
    ]);
    assert_eq!(
        reply.trim(),
        "1",
        "one subscriber (node a) on the owning shard"
    );
    let event = client.next().await.expect("event");
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("cli", "from redis-cli")
    );
    client.expect_quiet().await;

    // Interest routing on the shards: only node a listens to the topic.
    let owner = cluster.owner_port(&channel);
    let numsub = cluster.cli_at(owner, &["PUBSUB", "SHARDNUMSUB", &channel]);
    assert_eq!(numsub.lines().nth(1).map(str::trim), Some("1"), "{numsub}");
    let stats = b.hub.stats();
    assert_eq!(
        stats.bus_in, stats.bus_echo,
        "node b holds no client: it hears only its own broadcast"
    );
}

/// Resume with Redis Streams history on the cluster: each channel's stream
/// and epoch share the slot of its sharded channel (hash tag), so the append
/// script may `SPUBLISH` from the shard that owns them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_stream_history_across_shards() {
    use sse_cluster::history::{redis::RedisHistory, Retention};
    use std::sync::Arc;

    let Some(cluster) = support::redis_cluster::start("resume_with_stream_history_across_shards")
    else {
        return;
    };
    let urls = cluster.urls();
    // A prefix that puts the scenario's channels on more than one shard.
    let spread = |prefix: &str| -> usize {
        ["topic:a", "topic:b", "user:u1", "all"]
            .iter()
            .map(|c| cluster.owner_port(&format!("{prefix}{c}")))
            .collect::<std::collections::HashSet<u16>>()
            .len()
    };
    let prefix = (0..100)
        .map(|_| format!("rh{}:", fastrand::u32(..)))
        .find(|p| spread(p) >= 2)
        .expect("a prefix spreading over shards");
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        let broker = RedisBroker::new(RedisConfig::cluster(urls.iter().cloned()).prefix(&prefix))
            .expect("config");
        let history = Arc::new(RedisHistory::new(broker.clone(), Retention::default()));
        let hub = Hub::builder()
            .node_id(id)
            .broker(broker)
            .history(history)
            .build()
            .await
            .expect("hub");
        nodes.push(support::Node::serve(hub).await);
    }
    support::resume::replays_missed_events_on_another_node(&nodes, 20).await;
}

/// A primary of a cluster with two replicas per primary, killed (SIGKILL)
/// under 100 events/s: the hubs report Down, follow the new topology (the
/// sharded subscription moves with its slot to the promoted replica) and
/// report Up within the failover time plus 2 s; the Redis Streams history
/// on the cluster stays consistent: a client that reconnects to the other
/// node has every acknowledged event once. The history acknowledges an
/// append only once a replica has it (`wait_for_replicas`; replication is
/// asynchronous, see `tests/redis_sentinel.rs`), hence two replicas: the
/// promoted one keeps the other to confirm its appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_followed_to_its_replica() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use sse_cluster::history::{redis::RedisHistory, Retention};
    use support::failover::{client_behind_balancer, expect_follow, Load};

    let test = "a_killed_primary_is_followed_to_its_replica";
    let Some(mut cluster) =
        tokio::task::block_in_place(|| support::redis_cluster::start_with_replicas(test, 2))
    else {
        return;
    };
    let prefix = format!("{{fo{}}}:", fastrand::u32(..));
    let node = |id: &'static str| {
        let mut config = RedisConfig::cluster(cluster.urls())
            .prefix(prefix.clone())
            .backoff(Duration::from_millis(20), Duration::from_millis(200))
            .liveness(Duration::from_millis(200), Duration::from_millis(500));
        config.connect_timeout = Duration::from_millis(500);
        async move {
            let broker = RedisBroker::new(config).expect("config");
            let history = Arc::new(
                RedisHistory::new(broker.clone(), Retention::default())
                    .wait_for_replicas(1, Duration::from_millis(500)),
            );
            let hub = Hub::builder()
                .node_id(id)
                .broker(broker)
                .history(history)
                .require_broker(Duration::from_secs(5))
                .build()
                .await
                .expect("hub");
            support::Node::serve(hub).await
        }
    };
    let a = node("a").await;
    let b = node("b").await;
    let (lb, client) = client_behind_balancer(a.addr, b.addr, "t").await;
    let load = Load::start(b.hub.clone(), "t", client);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The prefix's hash tag puts the channel and the history's keys in one
    // slot: kill the primary that owns it.
    let owner = cluster.owner_port(&format!("{prefix}topic:t"));
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.kill(owner));
    expect_follow(&a.hub, &b.hub, killed, || cluster.healed_without(owner)).await;
    assert_ne!(cluster.owner_port(&format!("{prefix}topic:t")), owner);
    load.wait_for_acks(50).await;
    // The client reconnects through the balancer (to the other node) with
    // its last id.
    load.finish_and_resume(&lb, "t").await;
}
