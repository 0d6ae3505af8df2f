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
