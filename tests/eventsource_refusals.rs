//! A real WHATWG `EventSource` (npm `eventsource` on Node.js) is refused by
//! a draining node, by a node whose history store is unreachable, and by a
//! node at its connection limit, one after the other, behind a small TCP
//! balancer that keeps routing its reconnects there: each refusal reaches it
//! as a `200` stream with a `retry:` and an `sse-cluster.refused` event, so
//! it never gives up (`readyState` CLOSED), and once a node takes it, it
//! resumes with every event published meanwhile, once, in order.

#![cfg(all(unix, feature = "axum"))]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::broker::{BrokerError, Channel};
use sse_cluster::history::memory::MemoryHistory;
use sse_cluster::history::{Entry, Head, History, Position, Retention};
use sse_cluster::{Event, Hub, HubBuilder, StreamConfig, Subscription, Target};
use support::balancer::Balancer;
use support::js::{js_client, spawn_eventsource};
use support::Node;

/// The shared store, unreachable from one node while `down` is set.
#[derive(Debug)]
struct Flaky {
    store: Arc<MemoryHistory>,
    down: Arc<AtomicBool>,
}

#[async_trait]
impl History for Flaky {
    async fn append(&self, channel: &Channel, payload: Bytes) -> Result<Position, BrokerError> {
        self.store.append(channel, payload).await
    }
    async fn heads(
        &self,
        channels: &[(Channel, Option<Position>)],
    ) -> Result<Vec<Head>, BrokerError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BrokerError::Unavailable("the store is down".into()));
        }
        self.store.heads(channels).await
    }
    async fn read(
        &self,
        channel: &Channel,
        after: Position,
        limit: usize,
    ) -> Result<Vec<Entry>, BrokerError> {
        self.store.read(channel, after, limit).await
    }
}

fn builder(id: &str, bus: &MemoryBus, history: Arc<dyn History>) -> HubBuilder {
    Hub::builder()
        .node_id(id)
        .broker(bus.broker())
        .history(history)
        // Refused and drained clients come back within 100 to 300 ms.
        .shutdown_retry(Duration::from_millis(100), Duration::from_millis(300))
        .stream_config(StreamConfig::default().keep_alive(None))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eventsource_survives_draining_store_down_and_full_nodes() {
    let test = "an_eventsource_survives_draining_store_down_and_full_nodes";
    let Some(js) = js_client(test) else { return };
    let bus = MemoryBus::new();
    let store = Arc::new(MemoryHistory::new(&bus, Retention::default()));
    let store_down = Arc::new(AtomicBool::new(true));
    let flaky = Arc::new(Flaky {
        store: store.clone(),
        down: store_down.clone(),
    });
    let draining = Node::serve(
        builder("draining", &bus, store.clone())
            .build()
            .await
            .expect("hub"),
    )
    .await;
    let no_store = Node::serve(builder("no-store", &bus, flaky).build().await.expect("hub")).await;
    let full_hub = builder("full", &bus, store.clone())
        .max_connections(1)
        .build()
        .await
        .expect("hub");
    let holder = full_hub
        .connect(Subscription::new())
        .await
        .expect("the one slot");
    let full = Node::serve(full_hub).await;
    let publisher = builder("publisher", &bus, store.clone())
        .build()
        .await
        .expect("hub");

    let balancer = Balancer::start(&[draining.addr]).await;
    let lb = balancer.addr;
    let (mut client, mut lines) =
        spawn_eventsource(&js, &format!("http://{lb}/events?topic=t"), 60);
    let log = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let mut next_line = {
        let log = log.clone();
        async move || {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.recv())
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| {
                    panic!(
                        "a line from the JS client; log: {:?}",
                        log.lock().expect("log")
                    )
                });
            log.lock().expect("log").push(line.clone());
            assert_ne!(line["readyState"], 2, "the EventSource gave up: {line}");
            line
        }
    };
    let publish = async |data: &str| {
        publisher
            .publish(Target::topic("t"), Event::new().data(data))
            .await
            .expect("publish");
    };
    let mut received = Vec::new();

    // Live on the node that will drain.
    while next_line().await["type"] != "connected" {}
    publish("e1").await;
    loop {
        let line = next_line().await;
        if line["type"] == "message" {
            received.push(line["data"].as_str().unwrap_or("").to_owned());
            break;
        }
    }

    // The node drains; the balancer still sends the reconnect there.
    draining.hub.shutdown().await;
    publish("e2").await;
    let mut refusals: Vec<&str> = Vec::new();
    for (reason, next) in [
        ("draining", Some(no_store.addr)),
        ("history-unavailable", Some(full.addr)),
        ("node-full", None),
    ] {
        loop {
            let line = next_line().await;
            match line["type"].as_str() {
                Some("sse-cluster.refused") => {
                    let data: serde_json::Value =
                        serde_json::from_str(line["data"].as_str().unwrap_or("")).expect("json");
                    // A reconnect may reach the previous node again before
                    // the balancer switched.
                    if refusals.last().is_some_and(|r| data["reason"] == *r) {
                        continue;
                    }
                    assert_eq!(data["reason"], reason, "{line}");
                    refusals.push(reason);
                    break;
                }
                Some("message") => panic!("no event while refused: {line}"),
                _ => {}
            }
        }
        if let Some(addr) = next {
            balancer.route_to(&[addr]);
        }
        publish(&format!("during-{reason}")).await;
    }
    // The full node has room again: the client gets in and resumes.
    drop(holder);
    publish("e3").await;
    while received.len() < 6 {
        let line = next_line().await;
        match line["type"].as_str() {
            Some("message") => received.push(line["data"].as_str().unwrap_or("").to_owned()),
            Some("sse-cluster.reset") | Some("sse-cluster.gap") => panic!("{line}"),
            _ => {}
        }
    }
    assert_eq!(
        received,
        [
            "e1",
            "e2",
            "during-draining",
            "during-history-unavailable",
            "during-node-full",
            "e3"
        ],
        "every event once, in order; log: {:?}",
        log.lock().expect("log")
    );
    publish("end").await;
    let line = loop {
        let line = next_line().await;
        if line["type"] == "message" {
            break line;
        }
    };
    assert_eq!(line["data"], "end", "still live afterwards");
    assert!(client.wait().expect("node exit").success());
    store_down.store(false, Ordering::SeqCst);
    assert_eq!(refusals, ["draining", "history-unavailable", "node-full"]);
}
