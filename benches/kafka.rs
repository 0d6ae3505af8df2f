//! The Kafka backend across two nodes, against the same traffic sent
//! through rskafka directly (a raw produce → fetch loop) on the same
//! broker; and the bus bytes each node receives for user-targeted traffic,
//! on Kafka beside Redis and NATS.
//!
//! Needs a Kafka-API broker at `SSE_CLUSTER_KAFKA` (default
//! `127.0.0.1:9092`; the figures in BENCHMARKS.md: tansu 0.6 with
//! `memory://` storage started by hand), Redis at 127.0.0.1:6379 and NATS
//! at 127.0.0.1:4222 (the machine's). Every run uses topics, prefixes and
//! users of its own. Run with
//!
//! ```sh
//! cargo bench --features kafka,redis,nats --bench kafka
//! ```
//!
//! (`SSE_KAFKA_BENCH_QUICK=1` shortens every phase.) Every loop is bounded
//! in count and in time.
//!
//! Two hubs, `A` and `B`, each with its own `KafkaBroker` (topic of 3
//! partitions), run in this process on one multi-thread Tokio runtime with
//! 2 workers. `A` holds one connection on a topic; `B` publishes to it
//! with `Hub::publish` and holds none.
//!
//! * **ours**: `B.publish` → envelope → one produce request of one record
//!   → the broker → A's fetch task for the key's partition (a long poll) →
//!   key filter → envelope decode → SSE encode → A's per-connection queue
//!   → the task reading A's stream, which parses the frame.
//! * **raw**: an rskafka partition client producing the data itself, one
//!   record per request, to a topic of one partition; another partition
//!   client fetching that partition in a loop (the same long poll) in a
//!   task that parses each record.
//!
//! Data: a JSON-ish object of 100 B starting with `{"s":<seq>,"t":<ns>`.
//!
//! 1. **Latency at 200 events/s**: an open-loop schedule; after a warm-up,
//!    3 slices of 2 s per variant, alternating. Latency = just before the
//!    publish call → the reader has the message.
//! 2. **Throughput**: 10 000 events published by 64 tasks (each
//!    sequential), bounded to 10 s; 3 runs per variant, alternating; the
//!    ratio uses medians.
//! 3. **Bus bytes per node**: 6 hubs per bus, each holding one connection
//!    of its own user, and a 7th that publishes 100 events to each user.
//!    Per node: the bus messages it received (`HubStats::bus_in` on Redis
//!    and NATS; on Kafka the records its broker read,
//!    `KafkaStats::received`, of which `bus_in` are its own) and their
//!    bytes (on Kafka `KafkaStats::received_bytes`, keys and values; on
//!    Redis and NATS the messages times the mean record size on Kafka).
//!
//! `SSE_KAFKA_BENCH_WAIT_MS` sets the fetch long poll of both variants
//! (default 500 ms, the broker's default).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use rskafka::record::Record;
use sse_cluster::broker::kafka::{KafkaBroker, KafkaConfig};
use sse_cluster::broker::nats::{NatsBroker, NatsConfig};
use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
use sse_cluster::{Broker, Event, Hub, StreamConfig, Subscription, Target};

mod paced;

use paced::{payload, Kind, Probe, Publish};

type Side = paced::Side<Publisher>;

const DEFAULT_KAFKA: &str = "127.0.0.1:9092";
const RATE: u64 = 200;

#[derive(Clone, Copy)]
struct Plan {
    paced: paced::Plan,
    per_user: usize,
}

impl Plan {
    fn from_env() -> Self {
        if std::env::var("SSE_KAFKA_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0") {
            return Plan {
                paced: paced::Plan::quick(RATE, 2_000, 16),
                per_user: 20,
            };
        }
        Plan {
            paced: paced::Plan::full(RATE, 10_000),
            per_user: 100,
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(Plan::from_env()));
}

/// One side's publisher.
#[derive(Clone)]
enum Publisher {
    Ours(Hub),
    Raw(Arc<PartitionClient>),
}

impl Publish for Publisher {
    async fn send(&self, seq: u64, epoch: Instant) -> bool {
        let data = payload(seq, epoch.elapsed().as_nanos() as u64);
        match self {
            Publisher::Ours(hub) => hub
                .publish(Target::topic("bench"), Event::new().data(data))
                .await
                .is_ok(),
            Publisher::Raw(client) => {
                let record = Record {
                    key: Some(b"topic:bench".to_vec()),
                    value: Some(data.into_bytes()),
                    headers: Default::default(),
                    timestamp: rskafka::chrono::DateTime::from_timestamp_millis(0)
                        .unwrap_or_default(),
                };
                client
                    .produce(vec![record], Compression::NoCompression)
                    .await
                    .is_ok()
            }
        }
    }
}

/// The fetch long poll of both variants: `SSE_KAFKA_BENCH_WAIT_MS`, else
/// the broker's default (500 ms).
fn fetch_wait() -> Duration {
    std::env::var("SSE_KAFKA_BENCH_WAIT_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_millis(500), Duration::from_millis)
}

fn kafka_config(addr: &str, topic: &str) -> KafkaConfig {
    KafkaConfig::new(addr)
        .topic(topic)
        .partitions(3)
        .liveness(Duration::from_secs(2), fetch_wait())
}

async fn build_hub(addr: &str, node: &str, topic: &str) -> Hub {
    let broker = KafkaBroker::new(kafka_config(addr, topic)).expect("config");
    let hub = Hub::builder()
        .node_id(node)
        .broker(broker.clone())
        .gap_events(false)
        .stream_config(
            StreamConfig::default()
                .keep_alive(None)
                .initial_retry(None)
                .queue_limits(1_000_000, 1 << 30),
        )
        .build()
        .await
        .expect("hub");
    assert_eq!(
        hub.broker_status(),
        sse_cluster::BrokerStatus::Up,
        "the hub's KafkaBroker did not come up"
    );
    BROKERS
        .lock()
        .expect("brokers")
        .push((node.to_owned(), broker));
    hub
}

/// The brokers of the latency and throughput hubs, for their counters.
static BROKERS: std::sync::Mutex<Vec<(String, Arc<KafkaBroker>)>> =
    std::sync::Mutex::new(Vec::new());

async fn ours(addr: &str, topic: &str) -> Side {
    let a = build_hub(addr, "a", topic).await;
    let b = build_hub(addr, "b", topic).await;
    let probe = Arc::new(Probe::default());
    let mut stream = a
        .connect(Subscription::new().topic("bench"))
        .await
        .expect("connect")
        .into_stream();
    let p = probe.clone();
    let reader = tokio::spawn(async move {
        let _a = a;
        while let Some(frame) = stream.next().await {
            p.on_message(&frame);
        }
    });
    Side {
        publisher: Publisher::Ours(b),
        probe,
        reader,
        keep: None,
    }
}

async fn raw(addr: &str, topic: &str) -> Side {
    let client = ClientBuilder::new(vec![addr.to_owned()])
        .build()
        .await
        .expect("rskafka client");
    client
        .controller_client()
        .expect("controller")
        .create_topic(topic, 1, 1, 5_000)
        .await
        .expect("create the raw topic");
    let partition = || client.partition_client(topic, 0, UnknownTopicHandling::Retry);
    let producer = Arc::new(partition().await.expect("producer"));
    let consumer = partition().await.expect("consumer");
    let probe = Arc::new(Probe::default());
    let p = probe.clone();
    let wait = i32::try_from(fetch_wait().as_millis()).unwrap_or(500);
    let reader = tokio::spawn(async move {
        let mut offset = 0;
        loop {
            match consumer.fetch_records(offset, 1..1 << 20, wait).await {
                Ok((records, _)) => {
                    for record in records {
                        offset = record.offset + 1;
                        if let Some(value) = record.record.value {
                            p.on_message(&value);
                        }
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    Side {
        publisher: Publisher::Raw(producer),
        probe,
        reader,
        keep: None,
    }
}

/// A bus to measure bytes per node on: six hubs with a user each and a
/// seventh that publishes.
enum Bus {
    Kafka(String),
    Redis,
    Nats,
}

/// Per node: (bus messages received, bus messages for the node's own
/// clients, envelope bytes received).
/// `envelope`: the bytes of one bus message where the bus does not count
/// them (Redis, NATS): the mean record size read on Kafka, the same
/// publishes' envelopes.
async fn bytes_per_node(
    bus: &Bus,
    tag: &str,
    per_user: usize,
    envelope: u64,
) -> Vec<(u64, u64, u64)> {
    let mut hubs = Vec::new();
    let mut kafka = Vec::new();
    for i in 0..7 {
        let broker: Arc<dyn Broker> = match bus {
            Bus::Kafka(addr) => {
                let broker =
                    KafkaBroker::new(kafka_config(addr, &format!("{tag}-bytes"))).expect("kafka");
                kafka.push(broker.clone());
                broker
            }
            Bus::Redis => RedisBroker::new(
                RedisConfig::new("redis://127.0.0.1:6379").prefix(format!("{tag}:")),
            )
            .expect("redis"),
            Bus::Nats => NatsBroker::new(
                NatsConfig::new("nats://127.0.0.1:4222").prefix(tag.replace('-', "_")),
            )
            .expect("nats"),
        };
        let hub = Hub::builder()
            .node_id(format!("n{i}"))
            .broker(broker)
            .stream_config(StreamConfig::default().keep_alive(None))
            .build()
            .await
            .expect("hub");
        hubs.push(hub);
    }
    let mut streams = Vec::new();
    for (i, hub) in hubs.iter().take(6).enumerate() {
        let stream = hub
            .connect(Subscription::new().user(format!("u{i}")))
            .await
            .expect("connect")
            .into_stream();
        streams.push(stream);
    }
    let before: Vec<_> = kafka.iter().map(|b| b.stats()).collect();
    let hub_before: Vec<_> = hubs.iter().map(Hub::stats).collect();
    let data = payload(0, 0);
    for round in 0..per_user {
        for user in 0..6 {
            let _ = hubs[6]
                .publish(
                    Target::user(format!("u{user}")),
                    Event::new().data(data.clone()),
                )
                .await;
        }
        if round % 20 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Until every stream has its events (at most 10 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    for stream in &mut streams {
        let mut got = 0;
        while got < per_user {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.next()).await {
                Ok(Some(_)) => got += 1,
                _ => break,
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut out = Vec::new();
    for (i, hub) in hubs.iter().take(6).enumerate() {
        let own = hub.stats().bus_in - hub_before[i].bus_in;
        let (received, bytes) = match kafka.get(i) {
            Some(broker) => {
                let now = broker.stats();
                let n = now.received - before[i].received;
                // The record value is the envelope; the key is extra.
                (n, now.received_bytes - before[i].received_bytes)
            }
            None => (own, own * envelope),
        };
        out.push((received, own, bytes));
    }
    for hub in hubs {
        hub.shutdown().await;
    }
    out
}

async fn bus_bytes(addr: &str, plan: Plan) {
    let tag = format!("kbb{}", std::process::id());
    println!(
        "\nBus traffic per node: 6 nodes with one user each, {} user-targeted events (100 B data) from a 7th",
        plan.per_user * 6
    );
    println!(
        "{:<7} {:>22} {:>22} {:>16}",
        "bus", "messages in, per node", "for its own user", "bytes per node"
    );
    println!("(Redis, NATS: messages × the mean record size read on Kafka, key included)");
    let mut envelope = 0;
    for (name, bus) in [
        ("kafka", Bus::Kafka(addr.to_owned())),
        ("redis", Bus::Redis),
        ("nats", Bus::Nats),
    ] {
        let rows = bytes_per_node(&bus, &format!("{tag}-{name}"), plan.per_user, envelope).await;
        if envelope == 0 {
            let (n, bytes) = rows.iter().fold((0, 0), |(n, b), r| (n + r.0, b + r.2));
            envelope = bytes / n.max(1);
        }
        let mean =
            |f: fn(&(u64, u64, u64)) -> u64| rows.iter().map(f).sum::<u64>() / rows.len() as u64;
        println!(
            "{name:<7} {:>22} {:>22} {:>16}",
            mean(|r| r.0),
            mean(|r| r.1),
            mean(|r| r.2)
        );
    }
}

async fn run(plan: Plan) {
    let addr = std::env::var("SSE_CLUSTER_KAFKA")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_KAFKA.to_owned());
    let addr = addr.strip_prefix("kafka://").unwrap_or(&addr).to_owned();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("Kafka-API broker at {addr}; load average before: {load}");
    let topic = format!("kbench-{}", std::process::id());
    let ours_side = ours(&addr, &topic).await;
    let raw_side = raw(&addr, &format!("{topic}-raw")).await;
    let sides = [(Kind::Ours, &ours_side), (Kind::Raw, &raw_side)];
    paced::latency(&sides, plan.paced).await;
    paced::throughput(&sides, plan.paced).await;
    for (node, broker) in BROKERS.lock().expect("brokers").iter() {
        println!("broker of hub {node}: {:?}", broker.stats());
    }
    ours_side.reader.abort();
    raw_side.reader.abort();
    bus_bytes(&addr, plan).await;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("\nload average after: {load}");
}
