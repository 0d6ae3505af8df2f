//! Metrics through a real recorder: the Prometheus exporter installed as
//! the process's `metrics` recorder, hubs served over real TCP, and the
//! counters read back from the rendered Prometheus text.
//!
//! One recorder serves the whole test binary, so every test uses node ids of
//! its own and reads only its nodes' series.

#![cfg(feature = "axum")]

mod support;

use std::sync::OnceLock;

use hyper::StatusCode;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::telemetry::METRICS;
use sse_cluster::{Broker, Hub, StreamConfig};
use support::bus::wait_until;
use support::{post, Node, SseClient, WAIT};

fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder of this test binary")
    })
}

/// The value of the series `name` whose labels include all of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if metric != name {
            return None;
        }
        let has = |(k, v): &(&str, &str)| {
            label_text
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        };
        labels.iter().all(has).then(|| value.parse().ok()).flatten()
    })
}

fn metric(name: &str, node: &str) -> f64 {
    let text = prometheus().render();
    value(&text, name, &[("node", node)])
        .unwrap_or_else(|| panic!("no {name}{{node={node:?}}} in\n{text}"))
}

async fn hub(bus: &MemoryBus, node_id: &str) -> Node {
    let hub = Hub::builder()
        .node_id(node_id)
        .broker(bus.broker())
        .stream_config(StreamConfig::default().keep_alive(None))
        .build()
        .await
        .expect("hub");
    Node::serve(hub).await
}

/// Connect, publish (locally and across the bus), deliver and disconnect
/// each move their counters, on the right node, by the right amount.
#[tokio::test]
async fn counters_follow_connect_publish_deliver_disconnect() {
    prometheus();
    let bus = MemoryBus::new();
    let a = hub(&bus, "metrics-a").await;
    let b = hub(&bus, "metrics-b").await;
    assert_eq!(metric("sse_broker_up", "metrics-a"), 1.0);
    assert_eq!(metric("sse_connections", "metrics-a"), 0.0);

    let mut one = SseClient::connect(a.addr, "/events?topic=t&user=u").await;
    let mut two = SseClient::connect(a.addr, "/events?topic=t").await;
    assert_eq!(metric("sse_connects_total", "metrics-a"), 2.0);
    assert_eq!(metric("sse_connections", "metrics-a"), 2.0);
    assert_eq!(metric("sse_connects_total", "metrics-b"), 0.0);

    // Across the bus: B publishes, A delivers to both.
    let (status, _) = post(b.addr, "/publish?topic=t", "from-b").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(one.next().await.expect("event").data, "from-b");
    assert_eq!(two.next().await.expect("event").data, "from-b");
    assert_eq!(metric("sse_events_published_total", "metrics-b"), 1.0);
    assert_eq!(metric("sse_bus_messages_out_total", "metrics-b"), 1.0);
    assert_eq!(metric("sse_bus_messages_in_total", "metrics-a"), 1.0);
    assert_eq!(metric("sse_events_delivered_total", "metrics-a"), 2.0);
    assert_eq!(metric("sse_events_delivered_total", "metrics-b"), 0.0);
    let text = prometheus().render();
    let latency = "sse_publish_to_frame_seconds_count";
    let bus_path = [("node", "metrics-a"), ("path", "bus")];
    assert_eq!(value(&text, latency, &bus_path), Some(1.0), "{text}");

    // Locally: A publishes to its own user, no bus hop for the delivery.
    let (status, _) = post(a.addr, "/publish?user=u", "from-a").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(one.next().await.expect("event").data, "from-a");
    assert_eq!(metric("sse_events_published_total", "metrics-a"), 1.0);
    assert_eq!(metric("sse_events_delivered_total", "metrics-a"), 3.0);
    let text = prometheus().render();
    let local_path = [("node", "metrics-a"), ("path", "local")];
    assert_eq!(value(&text, latency, &local_path), Some(1.0), "{text}");
    assert_eq!(value(&text, latency, &bus_path), Some(1.0), "{text}");

    // A client that goes away is counted once, and the gauge comes down.
    drop(one);
    wait_until("the disconnect to be counted", WAIT, || {
        metric("sse_disconnects_total", "metrics-a") == 1.0
    })
    .await;
    assert_eq!(metric("sse_connections", "metrics-a"), 1.0);
    drop(two);
    wait_until("the gauge to reach 0", WAIT, || {
        metric("sse_connections", "metrics-a") == 0.0
    })
    .await;
    assert_eq!(metric("sse_disconnects_total", "metrics-a"), 2.0);
    assert_eq!(a.hub.stats().delivered, 3, "HubStats agrees");
}

/// Malformed bus traffic, overflowing queues and a shutdown each show up.
#[tokio::test]
async fn refusals_and_overflows_are_counted() {
    prometheus();
    let bus = MemoryBus::new();
    let hub = Hub::builder()
        .node_id("metrics-c")
        .broker(bus.broker())
        .stream_config(
            StreamConfig::default()
                .keep_alive(None)
                .queue_limits(2, 1 << 20),
        )
        .build()
        .await
        .expect("hub");
    // A connection nobody reads: its queue fills, then it is closed.
    let conn = hub
        .connect(sse_cluster::Subscription::new().topic("slow"))
        .await
        .expect("connect");
    for i in 0..10 {
        let event = sse_cluster::Event::new().data(i.to_string());
        let _ = hub.publish(sse_cluster::Target::topic("slow"), event).await;
    }
    assert_eq!(metric("sse_queue_overflows_total", "metrics-c"), 1.0);
    assert_eq!(
        metric("sse_events_delivered_total", "metrics-c"),
        hub.stats().delivered as f64
    );

    let raw = bus.broker();
    raw.start(std::sync::Arc::new(Deaf)).await.expect("start");
    raw.publish(
        &sse_cluster::broker::Channel::Broadcast,
        bytes::Bytes::from_static(b"not json"),
    )
    .await
    .expect("publish");
    assert_eq!(metric("sse_bus_malformed_total", "metrics-c"), 1.0);
    drop(conn);
    hub.shutdown().await;
    assert_eq!(metric("sse_connections", "metrics-c"), 0.0);
}

/// A bus end that ignores what it receives.
struct Deaf;

impl sse_cluster::broker::BusSink for Deaf {
    fn deliver(&self, _: &sse_cluster::broker::Channel, _: bytes::Bytes) {}
    fn status_changed(&self, _: sse_cluster::BrokerStatus) {}
}

/// Every documented name is exported, with its `# HELP` line.
#[tokio::test]
async fn every_documented_metric_is_exported_with_help() {
    prometheus();
    let node = hub(&MemoryBus::new(), "metrics-d").await;
    let text = prometheus().render();
    for m in METRICS {
        let series = text
            .lines()
            .any(|l| l.starts_with(m.name) && l.contains("node=\"metrics-d\""));
        assert!(series, "no series for {} in\n{text}", m.name);
        assert!(
            text.contains(&format!("# HELP {} ", m.name)),
            "no HELP for {}",
            m.name
        );
    }
    node.hub.shutdown().await;
}

/// `sse_history_retained_bytes` follows the memory store by itself (the
/// hub refreshes it every second; nobody calls `stats()`): up after a
/// publish, back to 0 once the sweeper has dropped the expired events.
#[tokio::test]
async fn history_bytes_gauge_follows_the_store() {
    use sse_cluster::history::{memory::MemoryHistory, Retention};
    use sse_cluster::{Event, Target};
    use std::time::Duration;

    prometheus();
    let bus = MemoryBus::new();
    let retention = Retention::default().max_age(Some(Duration::from_secs(3)));
    let hub = Hub::builder()
        .node_id("metrics-history")
        .broker(bus.broker())
        .history(std::sync::Arc::new(MemoryHistory::new(&bus, retention)))
        .build()
        .await
        .expect("hub");
    assert_eq!(metric("sse_history_retained_bytes", "metrics-history"), 0.0);
    for i in 0..3 {
        hub.publish(
            Target::topic(format!("h{i}")),
            Event::new().data("x".repeat(1000)),
        )
        .await
        .expect("publish");
    }
    let gauge = || metric("sse_history_retained_bytes", "metrics-history");
    wait_until("the gauge to count the events", WAIT, || gauge() > 3000.0).await;
    // 3 s of age, a sweep within 1 s, a refresh within 1 s.
    wait_until("the gauge to drop to 0", 3 * WAIT, || gauge() == 0.0).await;
    hub.shutdown().await;
}

/// `/stats` (the hub's `HubStats`) and `/metrics` (the recorder) agree on
/// every counter after a scenario with replays, an overflow, a bus outage
/// healed by a resync and a malformed message: each event is counted by one
/// call that feeds both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_metrics_agree() {
    use sse_cluster::history::{memory::MemoryHistory, Retention};
    use sse_cluster::{Event, Subscription, Target};

    prometheus();
    let bus = MemoryBus::new();
    let history = std::sync::Arc::new(MemoryHistory::new(&bus, Retention::default()));
    let broker_a = bus.broker();
    let a = Hub::builder()
        .node_id("agree-a")
        .broker(broker_a.clone())
        .history(history.clone())
        .stream_config(
            StreamConfig::default()
                .keep_alive(None)
                .queue_limits(8, 1 << 20),
        )
        .build()
        .await
        .expect("hub a");
    let a = Node::serve(a).await;
    let b = Hub::builder()
        .node_id("agree-b")
        .broker(bus.broker())
        .history(history)
        .build()
        .await
        .expect("hub b");

    // A client reads two events, leaves, misses three, and resumes.
    let mut client = SseClient::connect(a.addr, "/events?topic=t").await;
    for i in 0..2 {
        b.publish(Target::topic("t"), Event::new().data(format!("e{i}")))
            .await
            .expect("publish");
    }
    let mut last_id = String::new();
    for _ in 0..2 {
        last_id = client.next().await.expect("event").id;
    }
    drop(client);
    for i in 2..5 {
        b.publish(Target::topic("t"), Event::new().data(format!("e{i}")))
            .await
            .expect("publish");
    }
    let mut resumed =
        SseClient::open(a.addr, "/events?topic=t", &[("last-event-id", &last_id)]).await;
    assert_eq!(resumed.next().await.expect("greeting").event, "connected");
    for i in 2..5 {
        assert_eq!(
            resumed.next().await.expect("replayed").data,
            format!("e{i}")
        );
    }

    // A connection nobody reads overflows its queue and is closed. It is
    // read until it is live (its id-only frame: the resume seam has let go),
    // then never again.
    let mut slow = a
        .hub
        .connect(Subscription::new().topic("slow"))
        .await
        .expect("slow connect")
        .into_stream();
    loop {
        let frame = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut slow))
            .await
            .expect("the slow stream goes live")
            .expect("a frame");
        if frame.starts_with(b"id: ") {
            break;
        }
    }
    for i in 0..12 {
        let _ = a
            .hub
            .publish(Target::topic("slow"), Event::new().data(i.to_string()))
            .await;
    }

    // A bus outage on node A: healed by a resync that replays what it missed.
    broker_a.set_connected(false);
    wait_until("A to see the outage", WAIT, || {
        a.hub.stats().bus_outages == 1
    })
    .await;
    broker_a.set_connected(true);
    b.publish(Target::topic("t"), Event::new().data("after"))
        .await
        .expect("publish");
    assert_eq!(resumed.next().await.expect("live").data, "after");

    // A malformed message from the bus.
    let raw = bus.broker();
    raw.start(std::sync::Arc::new(Deaf)).await.expect("start");
    raw.publish(
        &sse_cluster::broker::Channel::Topic("t".into()),
        bytes::Bytes::from_static(b"{\"v\":1,"),
    )
    .await
    .expect("publish");
    wait_until("the malformed message to be counted", WAIT, || {
        a.hub.stats().bus_malformed == 1
    })
    .await;

    // Replays count on their own tasks, after the frames are queued: wait
    // until the hub is quiet, then both sides must agree on every counter.
    let disagreement = || {
        let stats = a.hub.stats();
        let pairs = [
            ("sse_connections", stats.connections),
            ("sse_connects_total", stats.connections_total),
            ("sse_events_published_total", stats.published),
            ("sse_bus_messages_out_total", stats.bus_out),
            ("sse_bus_messages_in_total", stats.bus_in),
            ("sse_bus_malformed_total", stats.bus_malformed),
            ("sse_bus_errors_total", stats.bus_errors),
            ("sse_events_delivered_total", stats.delivered),
            ("sse_events_dropped_total", stats.dropped),
            ("sse_queue_overflows_total", stats.overflow_closed),
            ("sse_bus_outages_total", stats.bus_outages),
            ("sse_gap_events_total", stats.gap_events),
            ("sse_resume_replays_total", stats.replays),
            ("sse_resume_events_replayed_total", stats.replayed),
            ("sse_resume_resets_total", stats.resets),
        ];
        let text = prometheus().render();
        let differ: Vec<String> = pairs
            .iter()
            .filter_map(|(name, from_stats)| {
                let from_metrics = value(&text, name, &[("node", "agree-a")]).unwrap_or(0.0);
                (from_metrics != *from_stats as f64)
                    .then(|| format!("{name}: /metrics {from_metrics} vs /stats {from_stats}"))
            })
            .collect();
        (stats, differ)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let stats = loop {
        let (stats, differ) = disagreement();
        let settled = stats.replays >= 1 && stats.replayed >= 3;
        if differ.is_empty() && settled {
            break stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never agreed: {differ:?} {stats:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(stats.overflow_closed, 1, "{stats:?}");
    let (status, body) = support::get(a.addr, "/stats").await;
    assert_eq!(status, StatusCode::OK);
    let served: serde_json::Value = serde_json::from_str(&body).expect("stats json");
    assert_eq!(served["delivered"], stats.delivered, "{body}");
    assert_eq!(served["replayed"], stats.replayed, "{body}");
    drop(slow);
}
