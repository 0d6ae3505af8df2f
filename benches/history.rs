//! What history costs, and how fast a reconnecting client is caught up.
//!
//! ```text
//! cargo bench --features redis --bench history
//! ```
//!
//! 1. **Publish latency, history on vs off**, per store: `Hub::publish` of a
//!    ~100 B event to a topic one connection follows, awaited one at a time.
//!    The variants run in alternating blocks in one process, so drift of a
//!    noisy machine hits both alike. Redis: `PUBLISH` vs the append script
//!    (`XADD` + trim + `PUBLISH`). Memory: fan-out vs ring append + fan-out.
//! 2. **Replay throughput**: events per second replayed to one client that
//!    reconnects with a `Last-Event-ID` from before `N` events (read straight
//!    from the SSE body, so only the hub and the store are measured).
//!
//! Environment: `SSE_HISTORY_BENCH_N` (publishes per variant, default
//! 20 000), `SSE_HISTORY_BENCH_REPLAY` (events replayed, default 10 000),
//! `SSE_HISTORY_BENCH_REDIS` (default `redis://127.0.0.1:6379`),
//! `SSE_HISTORY_BENCH_NATS` (default `nats://127.0.0.1:4222`).

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::history::memory::MemoryHistory;
use sse_cluster::history::{History, Retention};
use sse_cluster::{Broker, Event, Hub, SseStream, StreamConfig, Subscription, Target};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn stream_config() -> StreamConfig {
    StreamConfig::default()
        .keep_alive(None)
        .initial_retry(None)
        .queue_limits(1 << 16, 64 << 20)
}

async fn hub(id: &str, broker: Arc<dyn Broker>, history: Option<Arc<dyn History>>) -> Hub {
    let mut builder = Hub::builder()
        .node_id(id)
        .broker(broker)
        .stream_config(stream_config());
    if let Some(history) = history {
        builder = builder.history(history);
    }
    builder.build().await.expect("hub")
}

/// Reads frames until `n` carried `data:`; returns the last frame's id.
async fn read_events(stream: &mut SseStream, n: u64, limit: Duration) -> (u64, Option<String>) {
    let mut got = 0;
    let mut last_id = None;
    let deadline = tokio::time::Instant::now() + limit;
    while got < n {
        let Ok(Some(frame)) = tokio::time::timeout_at(deadline, stream.next()).await else {
            break;
        };
        if let Some(id) = frame_id(&frame) {
            last_id = Some(id);
        }
        if frame.windows(6).any(|w| w == b"data: ") {
            got += 1;
        }
    }
    (got, last_id)
}

fn frame_id(frame: &Bytes) -> Option<String> {
    let text = std::str::from_utf8(frame).ok()?;
    let rest = text.strip_prefix("id: ")?;
    Some(rest.split('\n').next()?.to_owned())
}

struct Variant {
    name: &'static str,
    hub: Hub,
    stream: SseStream,
    samples: Vec<u64>,
}

impl Variant {
    /// `hub` with one connection following the bench topic.
    async fn new(name: &'static str, hub: Hub) -> Self {
        let stream = hub
            .connect(Subscription::new().topic("bench"))
            .await
            .expect("connect")
            .into_stream();
        Variant {
            name,
            hub,
            stream,
            samples: Vec::new(),
        }
    }
}

/// Alternating blocks of `block` awaited publishes on each variant.
async fn publish_latency(variants: &mut [Variant], total: u64, block: u64) {
    let data = common::payload(0, 0, 100);
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while done < total && Instant::now() < deadline {
        for v in variants.iter_mut() {
            for _ in 0..block {
                let start = Instant::now();
                v.hub
                    .publish(Target::topic("bench"), Event::new().data(data.as_str()))
                    .await
                    .expect("publish");
                v.samples.push(start.elapsed().as_nanos() as u64);
            }
            // Keep the subscriber's queue short (and its delivery real).
            let _ = read_events(&mut v.stream, block, Duration::from_secs(10)).await;
        }
        done += block;
    }
}

fn report(title: &str, variants: &mut [Variant]) {
    println!("\n{title}");
    println!(
        "{:<30} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "variant", "n", "mean ms", "p50 ms", "p90 ms", "p99 ms", "x mean", "x p99"
    );
    let mut base = None;
    for v in variants.iter_mut() {
        v.samples.sort_unstable();
        let n = v.samples.len().max(1) as u64;
        let mean = v.samples.iter().sum::<u64>() / n;
        let p50 = common::pct(&v.samples, 0.50);
        let p90 = common::pct(&v.samples, 0.90);
        let p99 = common::pct(&v.samples, 0.99);
        let (base_mean, base_p99) = *base.get_or_insert((mean.max(1), p99.max(1)));
        println!(
            "{:<30} {:>7} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>7.2}x {:>7.2}x",
            v.name,
            v.samples.len(),
            common::ms(mean),
            common::ms(p50),
            common::ms(p90),
            common::ms(p99),
            mean as f64 / base_mean as f64,
            p99 as f64 / base_p99 as f64,
        );
    }
}

/// Publishes `n` events while nobody listens, then reconnects with an id from
/// before them and times the replay.
async fn replay_throughput(name: &str, hub: &Hub, n: u64) {
    let mut first = hub
        .connect(Subscription::new().topic("replay").user("bench-user"))
        .await
        .expect("connect")
        .into_stream();
    // The id-only frame right after connect says where the client stands.
    let (_, id) = read_events(&mut first, 0, Duration::from_millis(200)).await;
    let id = match id {
        Some(id) => id,
        None => {
            let frame = tokio::time::timeout(Duration::from_secs(5), first.next())
                .await
                .ok()
                .flatten()
                .expect("id frame");
            frame_id(&frame).expect("an id-only frame")
        }
    };
    drop(first);
    let data = common::payload(0, 0, 100);
    for _ in 0..n {
        hub.publish(Target::topic("replay"), Event::new().data(data.as_str()))
            .await
            .expect("publish");
    }
    let start = Instant::now();
    let mut again = hub
        .connect(
            Subscription::new()
                .topic("replay")
                .user("bench-user")
                .last_event_id(id),
        )
        .await
        .expect("reconnect")
        .into_stream();
    let (got, _) = read_events(&mut again, n, Duration::from_secs(120)).await;
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got, n, "{name}: every event replayed");
    println!(
        "{:<28} {:>8} events in {:>7.3} s = {:>10.0} events/s",
        name,
        got,
        secs,
        got as f64 / secs
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total = env_u64("SSE_HISTORY_BENCH_N", 20_000);
    let replay_n = env_u64("SSE_HISTORY_BENCH_REPLAY", 10_000);
    println!("history bench: {total} publishes per variant, replay of {replay_n} events");

    // Memory.
    let mut variants = Vec::new();
    for (name, with_history) in [("memory, history off", false), ("memory, history on", true)] {
        let bus = MemoryBus::new();
        let history: Option<Arc<dyn History>> = with_history.then(|| {
            Arc::new(MemoryHistory::new(
                &bus,
                Retention::default().max_len(10_000),
            )) as _
        });
        let hub = hub(name.split(',').next().unwrap_or("m"), bus.broker(), history).await;
        variants.push(Variant::new(name, hub).await);
    }
    publish_latency(&mut variants, total, 500).await;
    report(
        "publish latency, memory (awaited one at a time)",
        &mut variants,
    );

    #[cfg(feature = "redis")]
    redis_benches(total).await;
    #[cfg(feature = "nats")]
    nats_benches(total, replay_n).await;

    println!("\nreplay throughput (one client, read from the SSE body)");
    let bus = MemoryBus::new();
    let memory = Arc::new(MemoryHistory::new(
        &bus,
        Retention::default().max_len(replay_n as usize * 2),
    ));
    let hub_m = hub("replay-m", bus.broker(), Some(memory)).await;
    replay_throughput("memory", &hub_m, replay_n).await;
    #[cfg(feature = "redis")]
    {
        use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
        use sse_cluster::history::redis::RedisHistory;
        let url = std::env::var("SSE_HISTORY_BENCH_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("bench-replay-{}:", fastrand::u32(..));
        let broker = RedisBroker::new(RedisConfig::new(&url).prefix(&prefix)).expect("redis");
        let store = Arc::new(RedisHistory::new(
            broker.clone(),
            Retention::default().max_len(replay_n as usize * 2),
        ));
        let hub_r = hub("replay-r", broker, Some(store.clone())).await;
        replay_throughput("redis streams", &hub_r, replay_n).await;
        cleanup(&store, &url);
        hub_r.shutdown().await;
    }
}

#[cfg(feature = "redis")]
async fn redis_benches(total: u64) {
    use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
    use sse_cluster::history::redis::RedisHistory;
    let url = std::env::var("SSE_HISTORY_BENCH_REDIS")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("bench-history-{}:", fastrand::u32(..));
    let mut variants = Vec::new();
    let mut stores = Vec::new();
    for (name, with_history) in [("redis, history off", false), ("redis, history on", true)] {
        let broker = RedisBroker::new(RedisConfig::new(&url).prefix(&prefix)).expect("redis");
        let history: Option<Arc<dyn History>> = if with_history {
            let store = Arc::new(RedisHistory::new(
                broker.clone(),
                Retention::default().max_len(10_000),
            ));
            stores.push(store.clone());
            Some(store)
        } else {
            None
        };
        let id = if with_history { "r-on" } else { "r-off" };
        let hub = hub(id, broker, history).await;
        variants.push(Variant::new(name, hub).await);
    }
    publish_latency(&mut variants, total, 500).await;
    report(
        "publish latency, Redis (awaited one at a time; same prefix, one subscriber each)",
        &mut variants,
    );
    for store in &stores {
        cleanup(store, &url);
    }
    for v in variants {
        v.hub.shutdown().await;
    }
}

/// Deletes the bench's streams.
#[cfg(feature = "redis")]
fn cleanup(store: &sse_cluster::history::redis::RedisHistory, url: &str) {
    use sse_cluster::broker::Channel;
    let Ok(client) = redis_client(url) else {
        return;
    };
    let Ok(mut conn) = client.get_connection() else {
        return;
    };
    for channel in [
        Channel::Topic("bench".into()),
        Channel::Topic("replay".into()),
        Channel::User("bench-user".into()),
        Channel::Broadcast,
    ] {
        let (stream, epoch) = store.keys(&channel);
        let _: Result<(), _> = redis::cmd("DEL").arg(stream).arg(epoch).query(&mut conn);
    }
}

#[cfg(feature = "redis")]
fn redis_client(url: &str) -> redis::RedisResult<redis::Client> {
    redis::Client::open(url)
}

/// Core NATS publish vs JetStream append (stored, then republished to the bus
/// subject by the server), and JetStream replay throughput.
#[cfg(feature = "nats")]
async fn nats_benches(total: u64, replay_n: u64) {
    use sse_cluster::broker::nats::{NatsBroker, NatsConfig};
    use sse_cluster::history::jetstream::{JetStreamConfig, JetStreamHistory, Storage};
    let url =
        std::env::var("SSE_HISTORY_BENCH_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let prefix = format!("benchh{}", fastrand::u32(..));
    let mut variants = Vec::new();
    let mut streams = Vec::new();
    for (name, with_history) in [
        ("nats, history off", false),
        ("jetstream (file), history on", true),
    ] {
        let broker = NatsBroker::new(NatsConfig::new(&url).prefix(&prefix)).expect("nats");
        let store = with_history.then(|| {
            Arc::new(
                JetStreamHistory::new(
                    broker.clone(),
                    JetStreamConfig::new(Retention::default().max_len(replay_n as usize * 2))
                        .storage(Storage::File),
                )
                .expect("jetstream"),
            )
        });
        let id = if with_history { "n-on" } else { "n-off" };
        let hub = hub(id, broker, store.clone().map(|s| s as Arc<dyn History>)).await;
        if let Some(store) = &store {
            store.ensure_stream().await.expect("stream");
            streams.push(store.stream_name().to_owned());
        }
        variants.push((Variant::new(name, hub).await, store));
    }
    let (mut list, stores): (Vec<Variant>, Vec<_>) = variants.into_iter().unzip();
    publish_latency(&mut list, total, 500).await;
    report(
        "publish latency, NATS (awaited one at a time; one subscriber each)",
        &mut list,
    );
    println!("\nreplay throughput, JetStream");
    if let Some(on) = list
        .iter()
        .zip(&stores)
        .find_map(|(v, s)| s.as_ref().map(|_| v.hub.clone()))
    {
        replay_throughput("jetstream (file)", &on, replay_n).await;
    }
    for v in list {
        v.hub.shutdown().await;
    }
    if let Ok(client) = async_nats::connect(url.as_str()).await {
        let js = async_nats::jetstream::new(client);
        for name in streams {
            let _ = js.delete_stream(&name).await;
        }
    }
}
