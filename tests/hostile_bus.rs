//! What one publisher on the bus can do, and what it cannot: a forged
//! far-future position does not silence a channel, a message over the event
//! size limit is counted and never delivered, and forged `hello`s cannot
//! grow presence without bound. On the in-memory bus and on a real Redis.

#![cfg(feature = "axum")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use sse_cluster::broker::{Broker, BusSink, Channel};
use sse_cluster::history::History;
use sse_cluster::presence::{PresenceConfig, MAX_PEERS};
use sse_cluster::{BrokerStatus, Event, Hub, SseStream, StreamConfig, Subscription, Target};

/// A bus end that ignores what it receives: the forger's.
struct Deaf;

impl BusSink for Deaf {
    fn deliver(&self, _: &Channel, _: Bytes) {}
    fn status_changed(&self, _: BrokerStatus) {}
}

/// The data of the next event on `stream` (frames are parsed the simple
/// way: the test only publishes one-line data).
async fn next_data(stream: &mut SseStream) -> String {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an event within 5 s")
            .expect("the stream goes on");
        let text = String::from_utf8(frame.to_vec()).expect("utf-8");
        if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
            return data.to_owned();
        }
    }
}

/// A hub with `history` on `broker`, a client of topic `t`, and a forger's
/// broker on the same bus.
async fn scenario(broker: Arc<dyn Broker>, forger: Arc<dyn Broker>, history: Arc<dyn History>) {
    let hub = Hub::builder()
        .broker(broker)
        .history(history.clone())
        .stream_config(StreamConfig::default().keep_alive(None).initial_retry(None))
        .build()
        .await
        .expect("hub");
    let mut stream = hub
        .connect(Subscription::new().topic("t"))
        .await
        .expect("connect")
        .into_stream();
    forger.start(Arc::new(Deaf)).await.expect("forger");
    let topic = Channel::Topic("t".into());

    hub.publish(Target::topic("t"), Event::new().data("first"))
        .await
        .expect("publish");
    assert_eq!(next_data(&mut stream).await, "first");

    // The real epoch, as anyone watching the bus could copy it.
    let head = &history
        .heads(&[(topic.clone(), None)])
        .await
        .expect("heads")[0];
    let forged = format!(
        r#"{{"v":1,"data":"forged","pos":"99999999999999","epoch":"{}"}}"#,
        head.epoch
    );
    forger
        .publish(&topic, Bytes::from(forged))
        .await
        .expect("forged publish");
    assert_eq!(
        next_data(&mut stream).await,
        "forged",
        "the bus is trusted to deliver"
    );

    for data in ["second", "third"] {
        hub.publish(Target::topic("t"), Event::new().data(data))
            .await
            .expect("publish");
        assert_eq!(
            next_data(&mut stream).await,
            data,
            "after a forged position"
        );
    }

    // 4 MiB of data on the bus (the limit is 1 MiB): counted, not delivered.
    let before = hub.stats().bus_malformed;
    let huge = format!(r#"{{"v":1,"data":"{}"}}"#, "x".repeat(4 << 20));
    forger
        .publish(&topic, Bytes::from(huge))
        .await
        .expect("huge publish");
    hub.publish(Target::topic("t"), Event::new().data("after the huge one"))
        .await
        .expect("publish");
    assert_eq!(next_data(&mut stream).await, "after the huge one");
    assert_eq!(hub.stats().bus_malformed, before + 1);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bus_forgeries() {
    use sse_cluster::broker::memory::MemoryBus;
    use sse_cluster::history::{memory::MemoryHistory, Retention};
    let bus = MemoryBus::new();
    let history = Arc::new(MemoryHistory::new(&bus, Retention::default()));
    scenario(bus.broker(), bus.broker(), history).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bus_forgeries() {
    use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
    use sse_cluster::history::{redis::RedisHistory, Retention};
    let test = "redis_bus_forgeries";
    let Some(url) = support::redis_server::machine_redis(test) else {
        return;
    };
    let prefix = support::redis_server::unique_prefix(test);
    let config = RedisConfig::new(url).prefix(prefix);
    let broker = RedisBroker::new(config.clone()).expect("broker");
    let history = Arc::new(RedisHistory::new(broker.clone(), Retention::default()));
    let forger = RedisBroker::new(config).expect("forger");
    scenario(broker, forger, history).await;
}

/// 5 000 forged `hello`s: the node records at most `MAX_PEERS` and counts
/// the rest; it stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_hellos_cannot_grow_presence_without_bound() {
    use sse_cluster::broker::memory::MemoryBus;
    let bus = MemoryBus::new();
    let hub = Hub::builder()
        .node_id("real")
        .broker(bus.broker())
        .presence(PresenceConfig::default())
        .build()
        .await
        .expect("hub");
    let forger = bus.broker();
    forger.start(Arc::new(Deaf)).await.expect("forger");
    for i in 0..5_000 {
        let hello = format!(r#"{{"ctl":1,"op":"hello","from":"forged{i}.abc"}}"#);
        forger
            .publish(&Channel::Broadcast, Bytes::from(hello))
            .await
            .expect("hello");
    }
    let presence = hub.presence();
    assert!(
        presence.nodes().len() <= MAX_PEERS + 1,
        "{} nodes believed alive",
        presence.nodes().len()
    );
    assert!(presence.stats().peers_refused >= 5_000 - MAX_PEERS as u64);
    hub.shutdown().await;
}
