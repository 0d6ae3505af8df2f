//! A NATS cluster: three `nats-server`s joined by routes on loopback. The
//! server node A is connected to is killed (SIGKILL) while node B, on
//! another server, publishes 100 events/s: A's client moves to another
//! server (it learned them from the cluster's gossip), A reports Down then
//! Up within 2 s, its subscriptions are restored. Without history the
//! stream gets the gap event, then every event B publishes afterwards,
//! once, in order. With JetStream history replicated over the three
//! servers, the client has every acknowledged event once, after a resume
//! on B with its `Last-Event-ID`, whether A's server led the stream (its
//! death elects a new leader) or followed (A's replay reads from a leader
//! that stayed up while live events already flow again); and a new leader
//! reads every append the old one acknowledged.
//!
//! `SSE_CLUSTER_NATS_SERVER` names another `nats-server` binary to run
//! (these tests pass on 2.9.10, Debian's, and on 2.15.1).

#![cfg(all(feature = "axum", feature = "nats"))]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sse_cluster::broker::nats::{NatsBroker, NatsConfig};
use sse_cluster::broker::Channel;
use sse_cluster::history::jetstream::{JetStreamConfig, JetStreamHistory, Storage};
use sse_cluster::history::{History, Position, Retention};
use sse_cluster::{Event, Hub, Target};
use support::failover::{client_behind_balancer, expect_follow, Load};
use support::nats_server::{unique_prefix, NatsCluster};
use support::{Node, SseClient, WAIT};

async fn node(url: &str, prefix: &str, id: &str) -> Node {
    let mut config = NatsConfig::new(url)
        .prefix(prefix)
        .ping_interval(Duration::from_millis(200));
    config.connect_timeout = Duration::from_millis(500);
    let broker = NatsBroker::new(config).expect("broker");
    let hub = Hub::builder()
        .node_id(id)
        .broker(broker)
        .require_broker(Duration::from_secs(10))
        .build()
        .await
        .expect("hub");
    Node::serve(hub).await
}

async fn publish(hub: &Hub, data: String) -> bool {
    hub.publish(Target::topic("t"), Event::new().data(data))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_a_node_uses_is_killed_under_load() {
    let Some(mut cluster) = tokio::task::block_in_place(NatsCluster::start) else {
        return;
    };
    let prefix = unique_prefix();
    let a = node(&cluster.servers[1].url(), &prefix, "a").await;
    let b = node(&cluster.servers[0].url(), &prefix, "b").await;
    let mut client = SseClient::connect(a.addr, "/events?topic=t").await;

    // Load before and during the outage (what is published while A is away
    // is lost without history: it only has to come back).
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for n in 0..100 {
        tick.tick().await;
        assert!(publish(&b.hub, format!("before {n}")).await, "publish {n}");
    }
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.servers[1].kill());
    expect_follow(&a.hub, &b.hub, killed, || true).await;

    // Everything published from now on reaches A's stream, once, in order,
    // after the gap event that says the bus was away.
    let mut acked = Vec::new();
    for n in 0..100 {
        tick.tick().await;
        if publish(&b.hub, format!("after {n}")).await {
            acked.push(format!("after {n}"));
        }
    }
    assert_eq!(
        acked.len(),
        100,
        "B's server stayed up: every publish is acknowledged"
    );
    let mut gap = false;
    let mut after = Vec::new();
    while after.len() < acked.len() {
        let event = tokio::time::timeout(WAIT, client.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of the events after Up arrived", after.len()))
            .expect("the stream stays open");
        if event.event == "sse-cluster.gap" {
            gap = true;
        } else if event.data.starts_with("after ") {
            after.push(event.data);
        }
    }
    assert!(gap, "the stream was told about the outage");
    assert_eq!(after, acked);
    client.expect_quiet().await;
}

async fn history_node(
    url: &str,
    prefix: &str,
    stream: &str,
    id: &str,
) -> (Node, Arc<JetStreamHistory>) {
    let mut config = NatsConfig::new(url)
        .prefix(prefix)
        .ping_interval(Duration::from_millis(200));
    config.connect_timeout = Duration::from_millis(500);
    let broker = NatsBroker::new(config).expect("broker");
    let history = Arc::new(
        JetStreamHistory::new(
            broker.clone(),
            JetStreamConfig::new(Retention::default())
                .stream(stream)
                .storage(Storage::File)
                .replicas(3),
        )
        .expect("history"),
    );
    let hub = Hub::builder()
        .node_id(id)
        .broker(broker)
        .history(history.clone())
        .require_broker(Duration::from_secs(10))
        .build()
        .await
        .expect("hub");
    // The replicated stream needs the cluster's JetStream to have a leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(err) = history.ensure_stream().await {
        assert!(Instant::now() < deadline, "no replicated stream: {err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (Node::serve(hub).await, history)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_history_keeps_every_event_when_the_leader_dies() {
    replicated_history_keeps_every_acknowledged_event(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_history_keeps_every_event_when_a_follower_dies() {
    replicated_history_keeps_every_acknowledged_event(false).await;
}

/// Node A's server is killed under load; `leader`: it leads the stream (its
/// death elects another server, one that may not have applied the last
/// acknowledged appends yet), else B's server does (A's replay after the
/// outage reads from a leader that stayed up, while live events already
/// flow again).
async fn replicated_history_keeps_every_acknowledged_event(leader: bool) {
    let Some((mut cluster, stream, (a, _), (b, _))) = replicated(0, 1).await else {
        return;
    };
    lead_from(&cluster, if leader { 0 } else { 1 }, &stream).await;
    let (lb, client) = client_behind_balancer(a.addr, b.addr, "t").await;
    let load = Load::start(b.hub.clone(), "t", client);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.servers[0].kill());
    expect_follow(&a.hub, &b.hub, killed, || true).await;
    // The replicated stream may need a new leader before appends succeed.
    load.wait_for_acks(50).await;
    // The client reconnects through the balancer (to the other node) with
    // its last id.
    load.finish_and_resume(&lb, "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_reads_every_append_the_old_one_acknowledged() {
    let Some((mut cluster, stream, (_a, reader), (_b, writer))) = replicated(2, 1).await else {
        return;
    };
    lead_from(&cluster, 0, &stream).await;
    let channel = Channel::Topic("t".into());

    // Appends as fast as they are acknowledged, until the leader dies (the
    // first refused one ends them: nothing is appended in the new term).
    let appending = {
        let (writer, channel) = (writer.clone(), channel.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..5000u32 {
                match writer.append(&channel, n.to_string().into()).await {
                    Ok(position) => acked.push(position),
                    Err(_) => break,
                }
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| cluster.servers[0].kill());
    let acked = appending.await.expect("appends");
    assert!(acked.len() > 10, "{} appends acknowledged", acked.len());
    let new_leader = leader_of(&cluster, 1, &stream, Duration::from_secs(30)).await;
    assert_ne!(new_leader, cluster.names[0]);

    // What a resume does: the heads, then the replay from the start.
    let heads = reader
        .heads(&[(channel.clone(), Some(Position::ZERO))])
        .await
        .expect("heads");
    let mut read = Vec::new();
    let mut after = Position::ZERO;
    loop {
        let entries = reader.read(&channel, after, 1000).await.expect("read");
        let Some(last) = entries.last() else { break };
        after = last.position;
        read.extend(entries.iter().map(|e| e.position));
    }
    eprintln!(
        "{} acknowledged (last {:?}), {} read, head {:?}, new leader {new_leader}",
        acked.len(),
        acked.last(),
        read.len(),
        heads[0].last
    );
    let missing: Vec<_> = acked.iter().filter(|p| !read.contains(p)).collect();
    assert_eq!(missing, Vec::<&Position>::new(), "acknowledged, not read");
    assert!(heads[0].last >= *acked.last().expect("acked"));
}

/// The name of `stream`'s leader, asked through server `via`, once there
/// is one; panics after `limit`.
async fn leader_of(cluster: &NatsCluster, via: usize, stream: &str, limit: Duration) -> String {
    let js = jetstream_via(cluster, via).await;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(leader) = current_leader(&js, stream).await {
            return leader;
        }
        assert!(Instant::now() < deadline, "{stream} has no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn jetstream_via(cluster: &NatsCluster, via: usize) -> async_nats::jetstream::Context {
    let client = async_nats::connect(cluster.servers[via].url())
        .await
        .expect("nats client");
    async_nats::jetstream::new(client)
}

/// The name of `stream`'s leader, if it has one now.
async fn current_leader(js: &async_nats::jetstream::Context, stream: &str) -> Option<String> {
    let mut stream = js.get_stream(stream).await.ok()?;
    let info = stream.info().await.ok()?;
    info.cluster.as_ref()?.leader.clone()
}

/// A three-server cluster, a stream replicated over it, and a history node
/// on server `a` and one on server `b`.
async fn replicated(
    a: usize,
    b: usize,
) -> Option<(
    NatsCluster,
    String,
    (Node, Arc<JetStreamHistory>),
    (Node, Arc<JetStreamHistory>),
)> {
    let cluster = tokio::task::block_in_place(NatsCluster::start)?;
    let prefix = unique_prefix();
    let stream = format!("S{}", fastrand::u32(..));
    let a = history_node(&cluster.servers[a].url(), &prefix, &stream, "a").await;
    let b = history_node(&cluster.servers[b].url(), &prefix, &stream, "b").await;
    Some((cluster, stream, a, b))
}

/// Moves `stream`'s leadership to server `index` (asking the leader to step
/// down until the election picks that server).
async fn lead_from(cluster: &NatsCluster, index: usize, stream: &str) {
    let js = jetstream_via(cluster, (index + 1) % 3).await;
    let wanted = cluster.names[index].as_str();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match current_leader(&js, stream).await.as_deref() {
            Some(leader) if leader == wanted => return,
            Some(_) => {
                let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
                let _ = js.client().request(subject, "".into()).await;
            }
            None => {}
        }
        assert!(Instant::now() < deadline, "{wanted} never led {stream}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
