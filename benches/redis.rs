//! The Redis backend across two nodes, against the same traffic sent through
//! the `redis` client crate directly.
//!
//! Needs a Redis (6+, RESP3) on `127.0.0.1:6379`; every run uses its own
//! channel prefix (`ssebench:{pid}-{nanos}:`), so it leaves nothing behind
//! and does not see other traffic. Run with
//!
//! ```sh
//! cargo bench --features redis --bench redis
//! ```
//!
//! (`SSE_REDIS_BENCH_QUICK=1` shortens every phase, for trying the harness;
//! `SSE_REDIS_BENCH_ONLY=latency` or `=throughput` runs one part, and
//! `SSE_REDIS_BENCH_VARIANT=ours` or `=raw` one side of the throughput part,
//! for profiling; `SSE_REDIS_BENCH_MEASURE_SECS=30` measures each latency
//! variant for longer; `SSE_REDIS_BENCH_TASKS=256` changes the publishing
//! concurrency of the throughput part.)
//!
//! Two hubs, `A` and `B`, each with its own `RedisBroker` (so their own
//! publish and subscription connections), run in this process on one
//! multi-thread Tokio runtime with 2 workers. `A` holds one connection; `B`
//! publishes with `Hub::publish(Target::topic(..), ..)` and holds no
//! connection on that topic (so `B` gets no echo of its own publishes).
//!
//! * **ours**: `B.publish` → B's multiplexed publish connection (pipelined
//!   with the other publishes in flight) → Redis → A's RESP3 subscription
//!   connection → push handler → JSON envelope decode → SSE encode → A's
//!   per-connection queue → wake of the task polling A's `SseStream`, which
//!   parses the frame.
//! * **raw**: one `MultiplexedConnection` doing `PUBLISH` of the same data
//!   bytes; one RESP3 `MultiplexedConnection` subscribed to the channel, its
//!   push messages sent to a `tokio::sync::mpsc::UnboundedSender<PushInfo>`
//!   (the redis-rs 1.x pub/sub pattern), read by a task that parses them.
//!
//! Both sides send the same data: a JSON-ish object of a fixed size (100 B or
//! 1 KiB) that starts with `{"s":<seq>,"t":<ns since phase start>`. `ours`
//! wraps it in the bus envelope (origin, message id, escaped quotes), so its
//! Redis message is larger; the table shows both sizes.
//!
//! Phases, each run for ours and for raw, interleaved so that noise from the
//! (shared, 2-core) machine hits both alike:
//!
//! 1. **Latency at a fixed rate**: an open-loop schedule (a pacing thread
//!    sleeping until computed deadlines, spawning one publish task per event,
//!    so a slow publish never delays the next one) at 1 000 and 5 000 events/s
//!    with 100 B data, and 1 000/s with 1 KiB data. Each variant warms up for
//!    1 s; then 5 s per variant are measured in 5 slices of 1 s, ours and raw
//!    alternating (and which goes first alternating too), with a short drain
//!    after each slice. Latency = start of the publish call (timestamp taken
//!    just before the payload is built) → the reader task has the
//!    frame/message. Also reported: how long the publish call took (until
//!    Redis acknowledged), and how late the pacing thread ever was.
//! 2. **Throughput**: N events (200 000) published as fast as possible by 64
//!    tasks, each publishing sequentially (at most 64 in flight), bounded to
//!    10 s. Throughput = events received by the reader / time from the first
//!    publish call to the last receipt. Lost = acknowledged publishes that
//!    never arrived. A's stream queue is raised to 1 M frames / 1 GiB so that
//!    it cannot overflow. 3 runs per variant, alternating; the ratio uses the
//!    medians. Also reported per run: CPU time per received event of this
//!    process (both hubs, or both raw clients; `/proc/self/stat`, 10 ms
//!    ticks) and of `redis-server` (`INFO cpu`), and the largest output
//!    buffer Redis held for a pub/sub client (`CLIENT LIST`, sampled every
//!    20 ms; a subscriber that cannot keep up shows here once the socket
//!    buffers are full, and Redis disconnects it past
//!    `client-output-buffer-limit pubsub`).
//! 3. **Breakdown**: the 1 000/s, 100 B latency phase again, with a third
//!    subscriber per variant (a "tap", raw RESP3, timestamping in its push
//!    handler, i.e. when the message came off its socket) on the variant's
//!    Redis channel. It splits the latency into publish start → Redis
//!    delivered the message, and delivered → the reader has it.
//!
//! Not measured: HTTP, socket writes to SSE clients, more than one receiving
//! connection, networks other than loopback, Redis on another machine.

#![allow(missing_docs)]

mod common;

use common::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
use sse_cluster::broker::Channel;
use sse_cluster::wire::Envelope;
use sse_cluster::{Event, Hub, StreamConfig, Subscription, Target};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const URL: &str = "redis://127.0.0.1:6379";
const WORKERS: usize = 2;
/// Publishing tasks in the throughput part (`SSE_REDIS_BENCH_TASKS` overrides).
const TP_TASKS: usize = 64;
/// Measured slices per variant in a latency phase.
const LAT_ROUNDS: u64 = 5;
/// Throughput runs per variant (alternating).
const TP_ROUNDS: usize = 3;

/// Phase lengths; shortened by `SSE_REDIS_BENCH_QUICK=1`.
#[derive(Clone, Copy)]
struct Plan {
    warm_up: Duration,
    measure: Duration,
    tp_events: u64,
    tp_limit: Duration,
    tp_tasks: usize,
}

impl Plan {
    fn from_env() -> Self {
        let mut plan = Self::defaults();
        if let Some(secs) = std::env::var("SSE_REDIS_BENCH_MEASURE_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            plan.measure = Duration::from_secs(secs.max(1));
        }
        if let Some(tasks) = std::env::var("SSE_REDIS_BENCH_TASKS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            plan.tp_tasks = tasks.clamp(1, 4096);
        }
        plan
    }

    fn defaults() -> Self {
        if std::env::var_os("SSE_REDIS_BENCH_QUICK").is_some() {
            Plan {
                warm_up: Duration::from_millis(300),
                measure: Duration::from_secs(1),
                tp_events: 20_000,
                tp_limit: Duration::from_secs(5),
                tp_tasks: TP_TASKS,
            }
        } else {
            Plan {
                warm_up: Duration::from_secs(1),
                measure: Duration::from_secs(5),
                tp_events: 200_000,
                tp_limit: Duration::from_secs(10),
                tp_tasks: TP_TASKS,
            }
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(Plan::from_env()));
}

// ---------------------------------------------------------------------------
// Payload and measurement

// ---------------------------------------------------------------------------
// The two systems under test

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ours,
    Raw,
}

impl Kind {
    fn id(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Raw => "raw",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Ours => "ours (Hub B → Redis → Hub A)",
            Kind::Raw => "raw redis-rs PUBLISH → SUBSCRIBE",
        }
    }
}

struct Setup {
    prefix: String,
    hub_a: Hub,
    hub_b: Hub,
    broker_a: Arc<RedisBroker>,
    broker_b: Arc<RedisBroker>,
    /// RESP3 client for raw subscribers.
    client3: redis::Client,
    /// Raw publisher connection (RESP2 default, as a plain app would use).
    raw_pub: MultiplexedConnection,
    /// For `INFO` and `CLIENT LIST`, apart from the measured traffic.
    admin: MultiplexedConnection,
}

/// One publisher for a phase.
#[derive(Clone)]
enum Publisher {
    Ours {
        hub: Hub,
        topic: Arc<str>,
    },
    Raw {
        conn: MultiplexedConnection,
        channel: Arc<str>,
    },
}

impl Publisher {
    /// Publishes event `seq`; records the ack time; true if acknowledged.
    async fn send(&self, probe: &Probe, seq: u64, size: usize) -> bool {
        let t = probe.now();
        let data = payload(seq, t, size);
        let ok = match self {
            Publisher::Ours { hub, topic } => hub
                .publish(Target::topic(&**topic), Event::new().data(data))
                .await
                .is_ok(),
            Publisher::Raw { conn, channel } => {
                let mut conn = conn.clone();
                redis::cmd("PUBLISH")
                    .arg(&**channel)
                    .arg(data)
                    .query_async::<i64>(&mut conn)
                    .await
                    .is_ok()
            }
        };
        if ok {
            let took = probe.now().saturating_sub(t);
            probe.ack[seq as usize].store(took + 1, Ordering::Relaxed);
            probe.acked.fetch_add(1, Ordering::Relaxed);
        } else {
            probe.failed.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

/// A running reader; dropping it stops the reader and unsubscribes.
struct Reader {
    task: JoinHandle<()>,
    _raw_conn: Option<MultiplexedConnection>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw RESP3 subscriber on the Redis channel `channel` that timestamps each
/// message in its push handler (no task hop): when the message came off the
/// socket. Used to split a variant's latency into "publish start → Redis
/// delivered" and "delivered → reader has it".
async fn tap(setup: &Setup, channel: &str, probe: Arc<Probe>) -> MultiplexedConnection {
    let handler = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
        if push.kind == PushKind::Message {
            if let Some(Value::BulkString(payload)) = push.data.get(1) {
                probe.on_message(payload);
            }
        }
        Ok(())
    };
    let config = AsyncConnectionConfig::new().set_push_sender(handler);
    let mut conn = setup
        .client3
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("tap connection");
    conn.subscribe(channel).await.expect("tap SUBSCRIBE");
    conn
}

/// The Redis channel a variant's messages for `name` travel on.
fn redis_channel(setup: &Setup, kind: Kind, name: &str) -> String {
    match kind {
        Kind::Ours => setup.broker_b.channel_name(&Channel::Topic(name.into())),
        Kind::Raw => format!("{}raw:{name}", setup.prefix),
    }
}

/// Subscribes a reader (hub A connection, or raw RESP3 subscriber) to a new
/// topic/channel, and returns the matching publisher.
async fn open(setup: &Setup, kind: Kind, name: &str, probe: Arc<Probe>) -> (Publisher, Reader) {
    match kind {
        Kind::Ours => {
            let conn = setup
                .hub_a
                .connect(Subscription::new().topic(name))
                .await
                .expect("hub A connect");
            let mut stream = conn.into_stream();
            let task = tokio::spawn(async move {
                while let Some(frame) = stream.next().await {
                    probe.on_message(&frame);
                }
            });
            let publisher = Publisher::Ours {
                hub: setup.hub_b.clone(),
                topic: name.into(),
            };
            (
                publisher,
                Reader {
                    task,
                    _raw_conn: None,
                },
            )
        }
        Kind::Raw => {
            let channel = redis_channel(setup, kind, name);
            let (tx, mut rx) = mpsc::unbounded_channel::<PushInfo>();
            let config = AsyncConnectionConfig::new().set_push_sender(tx);
            let mut conn = setup
                .client3
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .expect("raw subscriber connection");
            conn.subscribe(&channel).await.expect("raw SUBSCRIBE");
            let task = tokio::spawn(async move {
                while let Some(push) = rx.recv().await {
                    if push.kind == PushKind::Message {
                        if let Some(Value::BulkString(payload)) = push.data.get(1) {
                            probe.on_message(payload);
                        }
                    }
                }
            });
            let publisher = Publisher::Raw {
                conn: setup.raw_pub.clone(),
                channel: channel.into(),
            };
            (
                publisher,
                Reader {
                    task,
                    _raw_conn: Some(conn),
                },
            )
        }
    }
}

// ---------------------------------------------------------------------------
// Phase 1: latency at a fixed rate

struct LatencyResult {
    kind: Kind,
    sent: u64,
    received: u64,
    lost: u64,
    failed: u64,
    lat: Vec<u64>,
    ack: Vec<u64>,
    /// Worst lateness of the pacing thread against its schedule.
    max_lag: Duration,
    /// With a tap: publish start → tap's push handler, sorted.
    to_tap: Vec<u64>,
    /// With a tap: tap's push handler → reader, per event, sorted.
    after_tap: Vec<i64>,
}

/// Sends events `seqs` at `rate`/s on computed deadlines, one spawned
/// publish task per event. Runs on a blocking thread: the Tokio timer's 1 ms
/// granularity would turn 5 000/s into bursts of 5 every millisecond.
/// Returns the worst lateness against the schedule.
fn pace(
    handle: Handle,
    publisher: Publisher,
    probe: Arc<Probe>,
    rate: u64,
    seqs: std::ops::Range<u64>,
    size: usize,
) -> Duration {
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let start = Instant::now() + Duration::from_millis(1);
    let mut max_lag = Duration::ZERO;
    for (i, seq) in seqs.enumerate() {
        let due = start + period * u32::try_from(i).expect("slice fits u32");
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            max_lag = max_lag.max(now - due);
        }
        let publisher = publisher.clone();
        let probe = probe.clone();
        handle.spawn(async move {
            publisher.send(&probe, seq, size).await;
        });
    }
    max_lag
}

/// One slice of the schedule for one variant, then a short drain so that the
/// next slice (the other variant) starts on a quiet bus.
async fn slice(
    publisher: &Publisher,
    probe: &Arc<Probe>,
    rate: u64,
    seqs: std::ops::Range<u64>,
    size: usize,
) -> Duration {
    let (handle, publisher, pacer_probe) = (Handle::current(), publisher.clone(), probe.clone());
    let end = seqs.end;
    let lag =
        tokio::task::spawn_blocking(move || pace(handle, publisher, pacer_probe, rate, seqs, size))
            .await
            .expect("pacing thread");
    probe
        .drain(end, Duration::from_millis(500), Duration::from_secs(3))
        .await;
    lag
}

/// Latency of ours and raw at `rate`, interleaved: both warm up, then the
/// measured time is cut into `LAT_ROUNDS` slices per variant, alternating
/// which goes first, so that noise from the (shared) machine hits both alike.
async fn latency_pair(
    setup: &Setup,
    plan: Plan,
    rate: u64,
    size: usize,
    tapped: bool,
) -> Vec<LatencyResult> {
    let warm = rate * plan.warm_up.as_millis() as u64 / 1000;
    let per_round = rate * plan.measure.as_millis() as u64 / 1000 / LAT_ROUNDS;
    let total = warm + per_round * LAT_ROUNDS;
    let name = format!("lat-{rate}-{size}{}", if tapped { "-tap" } else { "" });
    let mut sides = Vec::new();
    for kind in [Kind::Ours, Kind::Raw] {
        let probe = Probe::new(total);
        let (publisher, reader) = open(setup, kind, &name, probe.clone()).await;
        let tap = if tapped {
            let tap_probe = Probe::with_base(total, probe.base);
            let channel = redis_channel(setup, kind, &name);
            let conn = tap(setup, &channel, tap_probe.clone()).await;
            Some((tap_probe, conn))
        } else {
            None
        };
        sides.push((kind, probe, publisher, (reader, tap), Duration::ZERO));
    }
    for (_, probe, publisher, _, _) in &sides {
        slice(publisher, probe, rate, 0..warm, size).await;
    }
    for round in 0..LAT_ROUNDS {
        let seqs = warm + round * per_round..warm + (round + 1) * per_round;
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (_, probe, publisher, _, lag) = &mut sides[i];
            let l = slice(publisher, probe, rate, seqs.clone(), size).await;
            *lag = (*lag).max(l);
        }
    }
    sides
        .into_iter()
        .map(|(kind, probe, _publisher, (reader, tap), max_lag)| {
            drop(reader);
            let (lat, lost) = probe.latencies(warm..total);
            let (mut to_tap, mut after_tap) = (Vec::new(), Vec::new());
            if let Some((tap_probe, _conn)) = tap {
                for seq in warm..total {
                    let at_tap = tap_probe.lat[seq as usize].load(Ordering::Relaxed);
                    let at_reader = probe.lat[seq as usize].load(Ordering::Relaxed);
                    if at_tap > 0 && at_reader > 0 {
                        to_tap.push(at_tap - 1);
                        after_tap.push(at_reader as i64 - at_tap as i64);
                    }
                }
                to_tap.sort_unstable();
                after_tap.sort_unstable();
            }
            LatencyResult {
                kind,
                sent: total - warm,
                received: lat.len() as u64,
                lost,
                failed: probe.failed(),
                ack: probe.acks(warm..total),
                lat,
                max_lag,
                to_tap,
                after_tap,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Phase 2: throughput

struct ThroughputResult {
    kind: Kind,
    round: usize,
    attempted: u64,
    acked: u64,
    received: u64,
    failed: u64,
    duplicates: u64,
    stray: u64,
    /// First publish call → last receipt.
    elapsed: Duration,
    /// First publish call → last acknowledgement.
    publish_elapsed: Duration,
    lat: Vec<u64>,
    /// CPU ns used by this process (both hubs, or both raw clients).
    cpu: Option<u64>,
    /// CPU ns used by redis-server.
    redis_cpu: Option<u64>,
    /// Largest output buffer (bytes) Redis held for a pub/sub client while
    /// the phase ran: the backlog of a subscriber that reads too slowly.
    sub_omem: Option<u64>,
}

impl ThroughputResult {
    fn rate(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

async fn throughput_phase(
    setup: &Setup,
    kind: Kind,
    plan: Plan,
    size: usize,
    round: usize,
) -> ThroughputResult {
    let n = plan.tp_events;
    let probe = Probe::new(n);
    let name = format!("tp-{size}-{round}");
    let (publisher, reader) = open(setup, kind, &name, probe.clone()).await;
    let mut admin = setup.admin.clone();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn(max_pubsub_omem(setup.admin.clone(), sampling.clone()));
    let cpu_before = (process_cpu_ns(), redis_cpu_ns(&mut admin).await);
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = probe.now();
    let limit_ns = start + u64::try_from(plan.tp_limit.as_nanos()).expect("limit");
    let tasks: Vec<_> = (0..plan.tp_tasks)
        .map(|_| {
            let (publisher, probe, next, stop) =
                (publisher.clone(), probe.clone(), next.clone(), stop.clone());
            tokio::spawn(async move {
                let mut last_ack = 0;
                loop {
                    if stop.load(Ordering::Relaxed) || probe.now() > limit_ns {
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= n {
                        break;
                    }
                    publisher.send(&probe, seq, size).await;
                    last_ack = probe.now();
                }
                last_ack
            })
        })
        .collect();
    let mut last_ack = start;
    for task in tasks {
        last_ack = last_ack.max(task.await.expect("publisher task"));
    }
    let attempted = next.load(Ordering::Relaxed).min(n);
    probe
        .drain(attempted, Duration::from_secs(2), Duration::from_secs(30))
        .await;
    let cpu_after = (process_cpu_ns(), redis_cpu_ns(&mut admin).await);
    sampling.store(false, Ordering::Relaxed);
    let sub_omem = sampler.await.unwrap_or(None);
    drop(reader);
    let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
    let last = probe.last_receipt.load(Ordering::Relaxed).max(start);
    let (lat, _) = probe.latencies(0..attempted);
    ThroughputResult {
        kind,
        round,
        attempted,
        acked: probe.acked(),
        received: probe.received(),
        failed: probe.failed(),
        duplicates: probe.duplicates.load(Ordering::Relaxed),
        stray: probe.stray.load(Ordering::Relaxed),
        elapsed: Duration::from_nanos(last - start),
        publish_elapsed: Duration::from_nanos(last_ack - start),
        lat,
        cpu: delta(cpu_before.0, cpu_after.0),
        redis_cpu: delta(cpu_before.1, cpu_after.1),
        sub_omem,
    }
}

// ---------------------------------------------------------------------------
// Setup and report

/// Samples `CLIENT LIST TYPE pubsub` every 20 ms while `running`; returns
/// the largest `omem` (output buffer bytes) seen for any pub/sub client.
async fn max_pubsub_omem(mut conn: MultiplexedConnection, running: Arc<AtomicBool>) -> Option<u64> {
    let mut max = None;
    while running.load(Ordering::Relaxed) {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await
            .ok()?;
        for line in list.lines() {
            let omem = line
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("omem="))
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(omem) = omem {
                max = Some(max.map_or(omem, |m: u64| m.max(omem)));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    max
}

/// CPU time (user + system, ns) this process has used, from `/proc/self/stat`
/// (clock ticks, assumed 100 per second: 10 ms resolution).
fn process_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 10_000_000)
}

/// CPU time (user + system, ns) the Redis server has used (`INFO cpu`).
async fn redis_cpu_ns(conn: &mut MultiplexedConnection) -> Option<u64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await.ok()?;
    let get = |key: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    let secs = get("used_cpu_user:")? + get("used_cpu_sys:")?;
    Some((secs * 1e9) as u64)
}

async fn connect_checked(client: &redis::Client) -> MultiplexedConnection {
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, redis::RedisError>(conn)
    };
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => unreachable_redis(&err.to_string()),
        Err(_) => unreachable_redis("no answer within 3 s"),
    }
}

fn unreachable_redis(why: &str) -> ! {
    eprintln!(
        "error: Redis is not reachable at {URL} ({why}).\n\
         This benchmark needs a local Redis 6+ (RESP3): start one, e.g. \
         `redis-server --daemonize yes`, and check with `redis-cli ping`."
    );
    std::process::exit(2);
}

async fn server_version(conn: &mut MultiplexedConnection) -> String {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string()
}

async fn build_hub(node: &str, prefix: &str) -> (Hub, Arc<RedisBroker>) {
    let broker = RedisBroker::new(RedisConfig::new(URL).prefix(prefix)).expect("redis config");
    let hub = Hub::builder()
        .node_id(node)
        .broker(broker.clone())
        .stream_config(
            StreamConfig::default()
                .keep_alive(None)
                .initial_retry(None)
                .queue_limits(1_000_000, 1 << 30),
        )
        .gap_events(false)
        .build()
        .await
        .expect("hub");
    if hub.broker_status() != sse_cluster::BrokerStatus::Up {
        unreachable_redis("the hub's RedisBroker did not come up");
    }
    (hub, broker)
}

/// The size of the envelope `ours` puts on Redis for `size` bytes of data.
fn envelope_size(hub: &Hub, size: usize) -> usize {
    let event = Event::new().data(payload(123_456, 1_234_567_890, size));
    let mut env = Envelope::from_event(&event);
    let instance = format!("{}.abcdef", hub.node_id());
    let msg = format!("{instance}.m123456");
    env.origin = Some(instance.as_str().into());
    env.msg = Some(msg.as_str().into());
    env.encode().expect("envelope").len()
}

fn print_latency(rate: u64, size: usize, results: &[LatencyResult], plan: Plan) -> Option<f64> {
    println!();
    println!(
        "Latency, {rate} events/s, {size} B data, {:.1} s measured per variant after {:.1} s \
         warm-up, in {LAT_ROUNDS} alternating slices (publish start → reader has it; ms)",
        plan.measure.as_secs_f64(),
        plan.warm_up.as_secs_f64()
    );
    println!(
        "| variant | sent | recv | lost | p50 | p90 | p99 | p99.9 | max | ack p50 | ack p90 | ack p99 | pacer max lag |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        println!(
            "| {} | {} | {} | {}{} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            r.kind.label(),
            r.sent,
            r.received,
            r.lost,
            if r.failed > 0 {
                format!(" (+{} failed)", r.failed)
            } else {
                String::new()
            },
            ms(pct(&r.lat, 0.50)),
            ms(pct(&r.lat, 0.90)),
            ms(pct(&r.lat, 0.99)),
            ms(pct(&r.lat, 0.999)),
            ms(r.lat.last().copied().unwrap_or(0)),
            ms(pct(&r.ack, 0.50)),
            ms(pct(&r.ack, 0.90)),
            ms(pct(&r.ack, 0.99)),
            r.max_lag.as_secs_f64() * 1e3,
        );
    }
    let ours = results.iter().find(|r| r.kind == Kind::Ours)?;
    let raw = results.iter().find(|r| r.kind == Kind::Raw)?;
    let d = |p: f64| ms(pct(&ours.lat, p)) - ms(pct(&raw.lat, p));
    println!(
        "| ours − raw | | | | {:+.3} | {:+.3} | {:+.3} | {:+.3} | {:+.3} | {:+.3} | {:+.3} | {:+.3} | |",
        d(0.50),
        d(0.90),
        d(0.99),
        d(0.999),
        ms(ours.lat.last().copied().unwrap_or(0)) - ms(raw.lat.last().copied().unwrap_or(0)),
        ms(pct(&ours.ack, 0.50)) - ms(pct(&raw.ack, 0.50)),
        ms(pct(&ours.ack, 0.90)) - ms(pct(&raw.ack, 0.90)),
        ms(pct(&ours.ack, 0.99)) - ms(pct(&raw.ack, 0.99)),
    );
    let diff = d(0.99);
    println!(
        "goal p99(ours) ≤ p99(raw) + 0.200 ms: {:.3} vs {:.3} + 0.200 → {}",
        ms(pct(&ours.lat, 0.99)),
        ms(pct(&raw.lat, 0.99)),
        if diff <= 0.2 { "MET" } else { "MISSED" }
    );
    Some(diff)
}

fn print_breakdown(rate: u64, size: usize, results: &[LatencyResult]) {
    println!();
    println!(
        "Breakdown, {rate} events/s, {size} B data, same schedule, with a tap: a third \
         subscriber on the variant's Redis channel that timestamps in its push handler (ms)"
    );
    println!(
        "| variant | publish start → tap p50 | p90 | p99 | tap → reader p50 | p90 | p99 | \
         end to end p50 | p90 | p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let signed = |v: &[i64], p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let rank = (p * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1] as f64 / 1e6
    };
    for r in results {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            r.kind.label(),
            ms(pct(&r.to_tap, 0.5)),
            ms(pct(&r.to_tap, 0.9)),
            ms(pct(&r.to_tap, 0.99)),
            signed(&r.after_tap, 0.5),
            signed(&r.after_tap, 0.9),
            signed(&r.after_tap, 0.99),
            ms(pct(&r.lat, 0.5)),
            ms(pct(&r.lat, 0.9)),
            ms(pct(&r.lat, 0.99)),
        );
    }
}

fn print_throughput(size: usize, results: &[ThroughputResult], plan: Plan) {
    println!();
    println!(
        "Throughput, {size} B data, {} events, {tasks} publishing tasks (≤ {tasks} in flight), \
         cap {:.0} s",
        plan.tp_events,
        plan.tp_limit.as_secs_f64(),
        tasks = plan.tp_tasks,
    );
    println!(
        "| variant | published (acked) | received | lost | first publish → last receipt | events/s received | \
         publish-side events/s | latency p50 | p99 | max | bench CPU µs/event | redis CPU µs/event | max subscriber backlog in Redis |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let per_event = |ns: Option<u64>| match ns {
            Some(ns) if r.received > 0 => format!("{:.2}", ns as f64 / 1e3 / r.received as f64),
            _ => "?".into(),
        };
        let extra = match (
            r.failed,
            r.duplicates,
            r.stray,
            r.attempted < plan.tp_events,
        ) {
            (0, 0, 0, false) => String::new(),
            (f, d, s, cut) => format!(
                " (failed {f}, dup {d}, stray {s}{})",
                if cut { ", time cap hit" } else { "" }
            ),
        };
        println!(
            "| {} #{} | {} | {} | {}{} | {:.3} s | {:.0} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} | {} |",
            r.kind.label(),
            r.round + 1,
            r.acked,
            r.received,
            r.acked.saturating_sub(r.received),
            extra,
            r.elapsed.as_secs_f64(),
            r.rate(),
            r.acked as f64 / r.publish_elapsed.as_secs_f64().max(1e-9),
            ms(pct(&r.lat, 0.50)),
            ms(pct(&r.lat, 0.99)),
            ms(r.lat.last().copied().unwrap_or(0)),
            per_event(r.cpu),
            per_event(r.redis_cpu),
            r.sub_omem
                .map_or("?".into(), |b| format!("{:.1} MB", b as f64 / 1e6)),
        );
    }
    let median = |kind: Kind| {
        let mut rates: Vec<f64> = results
            .iter()
            .filter(|r| r.kind == kind)
            .map(ThroughputResult::rate)
            .collect();
        rates.sort_by(f64::total_cmp);
        rates.get(rates.len() / 2).copied().unwrap_or(0.0)
    };
    let (ours, raw) = (median(Kind::Ours), median(Kind::Raw));
    if ours == 0.0 || raw == 0.0 {
        return;
    }
    let ratio = ours / raw.max(1e-9);
    println!(
        "median of {TP_ROUNDS} runs: ours / raw = {ours:.0} / {raw:.0} = {:.1}% (goal ≥ 80%) → {}",
        ratio * 100.0,
        if ratio >= 0.8 { "MET" } else { "MISSED" }
    );
}

async fn run(plan: Plan) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let prefix = format!("ssebench:{}-{nanos}:", std::process::id());

    for size in [100, 1024] {
        assert_eq!(payload(999_999, 999_999_999_999, size).len(), size);
        assert_eq!(payload(0, 0, size).len(), size);
    }
    let plain = redis::Client::open(URL).expect("redis url");
    let mut raw_pub = connect_checked(&plain).await;
    let version = server_version(&mut raw_pub).await;
    let admin = connect_checked(&plain).await;
    let info = URL.into_connection_info().expect("redis url");
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client3 = redis::Client::open(info.set_redis_settings(settings)).expect("resp3 client");

    let (hub_a, broker_a) = build_hub("bench-a", &prefix).await;
    let (hub_b, broker_b) = build_hub("bench-b", &prefix).await;
    let setup = Setup {
        prefix,
        hub_a,
        hub_b,
        broker_a,
        broker_b,
        client3,
        raw_pub,
        admin,
    };

    println!(
        "Redis {version} at {URL}, prefix {:?}; tokio multi-thread runtime, {WORKERS} workers; {} CPUs",
        setup.prefix,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for size in [100, 1024] {
        println!(
            "  {size} B data: raw message {size} B, ours' envelope ≈ {} B (channel {:?})",
            envelope_size(&setup.hub_b, size),
            setup.broker_b.channel_name(&Channel::Topic("lat".into())),
        );
    }

    // `SSE_REDIS_BENCH_ONLY=latency|throughput` runs one part (for profiling).
    let only = std::env::var("SSE_REDIS_BENCH_ONLY").unwrap_or_default();
    // `SSE_REDIS_BENCH_VARIANT=ours|raw` runs one side of the throughput part.
    let variant = std::env::var("SSE_REDIS_BENCH_VARIANT").unwrap_or_default();
    for (rate, size) in [(1_000, 100), (5_000, 100), (1_000, 1024)] {
        if only == "throughput" {
            break;
        }
        let results = latency_pair(&setup, plan, rate, size, false).await;
        print_latency(rate, size, &results, plan);
    }
    if only != "throughput" {
        let results = latency_pair(&setup, plan, 1_000, 100, true).await;
        print_breakdown(1_000, 100, &results);
    }

    for size in [100, 1024] {
        if only == "latency" {
            break;
        }
        let mut results = Vec::new();
        for round in 0..TP_ROUNDS {
            let order = if round % 2 == 0 {
                [Kind::Ours, Kind::Raw]
            } else {
                [Kind::Raw, Kind::Ours]
            };
            for kind in order {
                if variant.is_empty() || variant == kind.id() {
                    results.push(throughput_phase(&setup, kind, plan, size, round).await);
                }
            }
        }
        print_throughput(size, &results, plan);
    }

    let (a, b) = (setup.broker_a.stats(), setup.broker_b.stats());
    let (ha, hb) = (setup.hub_a.stats(), setup.hub_b.stats());
    println!();
    println!(
        "hub A: bus_in {} bus_echo {} malformed {} delivered {} dropped {} overflow_closed {}; \
         broker A: received {} disconnects {}",
        ha.bus_in,
        ha.bus_echo,
        ha.bus_malformed,
        ha.delivered,
        ha.dropped,
        ha.overflow_closed,
        a.received,
        a.disconnects
    );
    println!(
        "hub B: published {} bus_out {} bus_errors {}; broker B: published {} failed {} disconnects {}",
        hb.published, hb.bus_out, hb.bus_errors, b.published, b.publish_failed, b.disconnects
    );
    setup.hub_a.shutdown().await;
    setup.hub_b.shutdown().await;
}
