//! Resume after reconnect with the memory and Redis Streams histories: the
//! shared scenarios of `support::resume` over real TCP, plus what is specific
//! to each store (wiping it, a bus outage healed by replay).

#![cfg(feature = "axum")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::broker::{Broker, BrokerError, BusSink, Channel};
use sse_cluster::history::memory::MemoryHistory;
use sse_cluster::history::{History, Position, Retention};
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
async fn memory_first_events_after_connect_are_replayed() {
    let (_bus, _h, nodes) = memory_nodes(3, Retention::default()).await;
    let id = resume::first_events_after_connect_are_replayed(&nodes).await;
    // The memory store has one epoch for all channels: a real tag.
    assert!(!id.contains("AAAA0"), "{id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_render_time_token_replays_what_was_published_since() {
    let (_bus, _h, nodes) = memory_nodes(3, Retention::default()).await;
    resume::render_time_token(&nodes, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_token_race_loses_and_repeats_nothing() {
    let (_bus, _h, nodes) = memory_nodes(3, Retention::default()).await;
    resume::token_race(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_idempotency_key_stores_and_delivers_once() {
    let (_bus, history, nodes) = memory_nodes(3, Retention::default()).await;
    resume::idempotent_publish(&nodes).await;
    // One stored entry per key.
    let orders = sse_cluster::broker::Channel::Topic("orders".into());
    let stored = history
        .read(&orders, sse_cluster::history::Position::ZERO, 100)
        .await
        .expect("read");
    assert_eq!(stored.len(), 2, "{stored:?}");
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

/// A bus that reconnects and resubscribes before it reports Up (as
/// async-nats does: Up only once a round trip proves the subscriptions are
/// back): an event that arrives in between must not move the connection's
/// cursor past what was published while the bus was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_before_the_bus_reports_up_does_not_skip_the_outage() {
    let bus = MemoryBus::new();
    let history = Arc::new(MemoryHistory::new(&bus, Retention::default()));
    let broker_a = bus.broker();
    let late_up = Arc::new(LateUp::new(broker_a.clone()));
    let a = history_node(
        "late-a".into(),
        late_up.clone(),
        history.clone(),
        StreamConfig::default(),
    )
    .await;
    let b = history_node(
        "late-b".into(),
        bus.broker(),
        history,
        StreamConfig::default(),
    )
    .await;
    let mut client = open(&a, "topic=a", None).await;
    publish(&b, "topic=a", "a:0").await;
    assert_eq!(read_n(&mut client, 1).await[0].data, "a:0");

    late_up.hold_up(true);
    broker_a.set_connected(false);
    support::bus::wait_until("node a down", WAIT, || {
        a.hub.broker_status() == BrokerStatus::Down
    })
    .await;
    publish(&b, "topic=a", "a:1").await;
    // Back on the bus, not yet reported Up: a:2 reaches node A live.
    broker_a.set_connected(true);
    let before = a.hub.stats().bus_in;
    publish(&b, "topic=a", "a:2").await;
    support::bus::wait_until("a:2 reached node a", WAIT, || a.hub.stats().bus_in > before).await;
    client.expect_quiet().await;
    late_up.hold_up(false);

    let data: Vec<String> = read_n(&mut client, 2)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(data, ["a:1", "a:2"]);
    client.expect_quiet().await;
}

/// Passes everything through to a memory broker, but can keep an Up status
/// from the hub until told (see the test above).
#[derive(Debug)]
struct LateUp {
    inner: Arc<sse_cluster::broker::memory::MemoryBroker>,
    sink: std::sync::OnceLock<Arc<LateUpSink>>,
}

struct LateUpSink {
    hub: Arc<dyn BusSink>,
    hold: std::sync::atomic::AtomicBool,
    held: std::sync::Mutex<Option<BrokerStatus>>,
}

impl LateUp {
    fn new(inner: Arc<sse_cluster::broker::memory::MemoryBroker>) -> Self {
        Self {
            inner,
            sink: std::sync::OnceLock::new(),
        }
    }

    /// While `true`, an Up status waits; `false` hands over a held one.
    fn hold_up(&self, hold: bool) {
        let Some(sink) = self.sink.get() else { return };
        sink.hold.store(hold, std::sync::atomic::Ordering::SeqCst);
        if !hold {
            if let Some(status) = sink.held.lock().expect("lock").take() {
                sink.hub.status_changed(status);
            }
        }
    }
}

impl std::fmt::Debug for LateUpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LateUpSink")
    }
}

impl BusSink for LateUpSink {
    fn deliver(&self, channel: &Channel, payload: Bytes) {
        self.hub.deliver(channel, payload);
    }
    fn deliver_at(&self, channel: &Channel, payload: Bytes, position: Position) {
        self.hub.deliver_at(channel, payload, position);
    }
    fn status_changed(&self, status: BrokerStatus) {
        if status == BrokerStatus::Up && self.hold.load(std::sync::atomic::Ordering::SeqCst) {
            *self.held.lock().expect("lock") = Some(status);
        } else {
            self.hub.status_changed(status);
        }
    }
    fn messages_lost(&self, channel: Option<&Channel>) {
        self.hub.messages_lost(channel);
    }
}

#[async_trait::async_trait]
impl Broker for LateUp {
    async fn start(&self, sink: Arc<dyn BusSink>) -> Result<(), BrokerError> {
        let sink = self.sink.get_or_init(|| {
            Arc::new(LateUpSink {
                hub: sink,
                hold: false.into(),
                held: std::sync::Mutex::new(None),
            })
        });
        self.inner.start(sink.clone()).await
    }
    async fn publish(&self, channel: &Channel, payload: Bytes) -> Result<(), BrokerError> {
        self.inner.publish(channel, payload).await
    }
    async fn subscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        self.inner.subscribe(channel).await
    }
    async fn unsubscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        self.inner.unsubscribe(channel).await
    }
    fn status(&self) -> tokio::sync::watch::Receiver<BrokerStatus> {
        self.inner.status()
    }
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
    use sse_cluster::history::{History, Position};
    use support::redis_server::{
        machine_redis, resp_command, resp_integer, unique_prefix, RedisServer, MACHINE_REDIS,
    };
    use support::SseClient;

    /// Every key of the Redis at `addr` (a server the test started).
    fn all_keys(addr: &str) -> Vec<String> {
        let reply = resp_command(addr, &[b"KEYS", b"*"]);
        // `*N`, then `$len` and the key per key; keys have no line breaks.
        reply
            .split("\r\n")
            .skip(1)
            .filter(|line| !line.starts_with('$') && !line.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn dbsize(addr: &str) -> i64 {
        resp_integer(&resp_command(addr, &[b"DBSIZE"])).expect("DBSIZE")
    }

    fn pttl(addr: &str, key: &str) -> i64 {
        resp_integer(&resp_command(addr, &[b"PTTL", key.as_bytes()])).expect("PTTL")
    }

    /// A node with Redis history (`retention`) on a `redis-server` of its
    /// own, so that the server's whole key count is the store's.
    async fn private_node(test: &str, retention: Retention) -> Option<(RedisServer, Node)> {
        let server = RedisServer::start(test)?;
        let broker = RedisBroker::new(RedisConfig::new(server.url())).expect("broker");
        let history = Arc::new(RedisHistory::new(broker.clone(), retention));
        let node = history_node("p0".into(), broker, history, StreamConfig::default()).await;
        Some((server, node))
    }

    /// Acceptance of "subscribing writes to Redis" (hostile peers): clients
    /// naming never-published topics leave the number of Redis keys
    /// unchanged, with no max age (`--history-age 0`), past the resumable
    /// cap or not. A connection may name at most
    /// `MAX_TOPICS_PER_CONNECTION` (256) topics, so "5 connects naming 1,000
    /// topics" is 5 rounds of 4 connections of 250 new topic names each (and
    /// a user), 5,000 names in all, plus one resumable connection (30 topics)
    /// per round; each connection waits for the id-only frame that ends its
    /// connect. One publish then adds exactly the channel's two keys, so the
    /// count does see the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_connects_to_unpublished_topics_write_no_keys() {
        let test = "redis_connects_to_unpublished_topics_write_no_keys";
        let Some((server, node)) = private_node(test, Retention::default().max_age(None)).await
        else {
            return;
        };
        let addr = format!("127.0.0.1:{}", server.port());
        let before = dbsize(&addr);
        for round in 0..5 {
            let mut clients: Vec<SseClient> = Vec::new();
            for conn in 0..5 {
                let n = if conn < 4 { 250 } else { 30 };
                let mut query = format!("user=u{round}-{conn}");
                for i in 0..n {
                    query.push_str(&format!("&topic=t{round}-{conn}-{i}"));
                }
                let mut client = open(&node, &query, None).await;
                let id = resume::last_id_sent(&mut client).await;
                assert_eq!(
                    id == "r1",
                    conn < 4,
                    "resumable only under the cap: {id:.40}"
                );
                clients.push(client);
            }
            drop(clients);
            assert_eq!(dbsize(&addr), before, "after round {round}");
        }
        publish(&node, "topic=t0-0-0", "x").await;
        assert_eq!(dbsize(&addr), before + 2, "{:?}", all_keys(&addr));
    }

    /// Every key the store creates has a TTL after one append, with no max
    /// age: the idle TTL (7 days by default, or as configured), refreshed by
    /// every append, also on keys that had none (made by an older version).
    /// With a max age, the keys live that long.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_every_key_expires_even_without_max_age() {
        let test = "redis_every_key_expires_even_without_max_age";
        let Some(server) = RedisServer::start(test) else {
            return;
        };
        let addr = format!("127.0.0.1:{}", server.port());
        let broker = RedisBroker::new(RedisConfig::new(server.url())).expect("broker");
        let _hub = sse_cluster::Hub::builder()
            .broker(broker.clone())
            .build()
            .await
            .expect("hub");
        let envelope = || bytes::Bytes::from_static(br#"{"v":1,"data":"x"}"#);
        let week = 7 * 24 * 3600 * 1000;
        let forever = Retention::default().max_age(None);

        let history = RedisHistory::new(broker.clone(), forever);
        let old = Channel::Topic("old".into());
        let (_, old_epoch) = history.keys(&old);
        resp_command(&addr, &[b"SET", old_epoch.as_bytes(), b"e0"]);
        assert_eq!(pttl(&addr, &old_epoch), -1, "made without a TTL");
        for channel in [Channel::Broadcast, Channel::User("u".into()), old.clone()] {
            history.append(&channel, envelope()).await.expect("append");
        }
        let keys = all_keys(&addr);
        assert_eq!(keys.len(), 6, "{keys:?}");
        for key in &keys {
            let ttl = pttl(&addr, key);
            assert!(ttl > week - 60_000 && ttl <= week, "{key}: PTTL {ttl}");
        }
        let heads = history.heads(&[(old, None)]).await.expect("heads");
        assert_eq!(
            &*heads[0].epoch, "e0",
            "the epoch is kept, only given a TTL"
        );

        let short = RedisHistory::new(broker.clone(), forever).idle_ttl(Duration::from_secs(60));
        let hour = RedisHistory::new(
            broker.clone(),
            Retention::default().max_age(Some(Duration::from_secs(3600))),
        );
        for (store, name, max) in [(&short, "short", 60_000), (&hour, "hour", 3_600_000)] {
            let channel = Channel::Topic(name.into());
            store.append(&channel, envelope()).await.expect("append");
            let (stream, epoch) = store.keys(&channel);
            for key in [stream, epoch] {
                let ttl = pttl(&addr, &key);
                assert!(ttl > max - 60_000 && ttl <= max, "{key}: PTTL {ttl}");
            }
        }
    }

    /// `heads` on channels without history reads only: the empty epoch,
    /// position 0, and no key made; after the first append, the epoch the
    /// event was stamped with.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_heads_report_no_epoch_before_the_first_append() {
        let test = "redis_heads_report_no_epoch_before_the_first_append";
        let Some(server) = RedisServer::start(test) else {
            return;
        };
        let addr = format!("127.0.0.1:{}", server.port());
        let broker = RedisBroker::new(RedisConfig::new(server.url())).expect("broker");
        let _hub = sse_cluster::Hub::builder()
            .broker(broker.clone())
            .build()
            .await
            .expect("hub");
        let history = RedisHistory::new(broker, Retention::default());
        let (a, b) = (Channel::Topic("a".into()), Channel::Topic("b".into()));
        let heads = history
            .heads(&[
                (a.clone(), None),
                (b.clone(), Some(sse_cluster::history::Position::ZERO)),
            ])
            .await
            .expect("heads");
        for head in &heads {
            assert_eq!(&*head.epoch, "");
            assert_eq!(head.last, sse_cluster::history::Position::ZERO);
            assert!(head.retained);
        }
        assert_eq!(dbsize(&addr), 0);
        let p = history
            .append(&a, bytes::Bytes::from_static(br#"{"v":1}"#))
            .await
            .expect("append");
        let heads = history
            .heads(&[(a.clone(), Some(sse_cluster::history::Position::ZERO))])
            .await
            .expect("heads");
        assert!(!heads[0].epoch.is_empty());
        assert_eq!(heads[0].last, p);
        assert!(heads[0].retained);
        let (_, epoch) = history.keys(&a);
        let stored = resp_command(&addr, &[b"GET", epoch.as_bytes()]);
        assert!(stored.contains(&*heads[0].epoch), "{stored:?}");
    }

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
            Channel::Topic("late".into()),
            Channel::Topic("old".into()),
            Channel::Topic("fresh".into()),
            Channel::User("tu".into()),
            Channel::Topic("orders".into()),
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

    /// With Redis the channel has no epoch before its first event: the id
    /// the client holds says tag 0 (`AAAA`) at position 0 for it, and the
    /// reconnect replays the 3 events anyway.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_first_events_after_connect_are_replayed() {
        let test = "redis_first_events_after_connect_are_replayed";
        on_redis(test, 3, Retention::default(), async |nodes, _| {
            let id = resume::first_events_after_connect_are_replayed(nodes).await;
            let entries: Vec<&str> = id.split('.').skip(1).collect();
            assert_eq!(entries.len(), 2, "everyone and the topic: {id}");
            assert!(
                entries.iter().all(|e| &e[4..] == "AAAA0"),
                "no epoch yet: {id}"
            );
        })
        .await;
    }

    /// With Redis, `fresh` has no epoch when the token is made (tag 0 in
    /// the token) and gets one with its first event: replayed all the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_render_time_token_replays_what_was_published_since() {
        let test = "redis_render_time_token_replays_what_was_published_since";
        on_redis(test, 3, Retention::default(), async |nodes, _| {
            resume::render_time_token(nodes, 20).await
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_token_race_loses_and_repeats_nothing() {
        let test = "redis_token_race_loses_and_repeats_nothing";
        on_redis(test, 3, Retention::default(), async |nodes, history| {
            resume::token_race(nodes).await;
            let (stream, epoch) = history.keys(&Channel::Topic("race".into()));
            resp_command(
                MACHINE_REDIS,
                &[b"DEL", stream.as_bytes(), epoch.as_bytes()],
            );
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_idempotency_key_stores_and_delivers_once() {
        let test = "redis_idempotency_key_stores_and_delivers_once";
        on_redis(test, 3, Retention::default(), async |nodes, history| {
            resume::idempotent_publish(nodes).await;
            // One stream entry per key.
            let (stream, _) = history.keys(&Channel::Topic("orders".into()));
            let stored = history
                .read(&Channel::Topic("orders".into()), Position::ZERO, 100)
                .await
                .expect("read");
            assert_eq!(stored.len(), 2, "{stream}: {stored:?}");
            // The key lives beside the channel, with the window's TTL.
            let key = history.idempotency_key(&Channel::Topic("orders".into()), "order-7");
            let ttl = pttl(MACHINE_REDIS, &key);
            assert!(ttl > 0 && ttl <= 120_000, "{key}: pttl {ttl}");
            resp_command(MACHINE_REDIS, &[b"DEL", key.as_bytes()]);
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
