//! The NATS backend across two nodes, against the same traffic sent through
//! the `async-nats` client crate directly.
//!
//! Needs a NATS server on `127.0.0.1:4222` (core NATS; no JetStream, no
//! monitoring port needed); every run uses its own subject prefix
//! (`ssebench.{pid}-{nanos}`), so it leaves nothing behind and does not see
//! other traffic. Run with
//!
//! ```sh
//! cargo bench --features nats --bench nats
//! ```
//!
//! (`SSE_NATS_BENCH_QUICK=1` shortens every phase, for trying the harness;
//! `SSE_NATS_BENCH_ONLY=latency` or `=throughput` runs one part, and
//! `SSE_NATS_BENCH_VARIANT=ours` or `=raw` one side of the throughput part,
//! for profiling; `SSE_NATS_BENCH_MEASURE_SECS=30` measures each latency
//! variant for longer; `SSE_NATS_BENCH_TASKS=256` changes the publishing
//! concurrency and `SSE_NATS_BENCH_WINDOW=N` the window of the throughput
//! part.)
//!
//! Two hubs, `A` and `B`, each with its own `NatsBroker` (so their own
//! `async_nats::Client`, one TCP connection each), run in this process on one
//! multi-thread Tokio runtime with 2 workers. `A` holds one connection; `B`
//! publishes with `Hub::publish(Target::topic(..), ..)` and holds no
//! connection on that topic (so `B` gets no echo of its own publishes).
//!
//! * **ours**: `B.publish` → envelope encode → `NatsBroker::publish` →
//!   `Client::publish` (B's client queues it for its connection task) → NATS
//!   → A's connection task → A's subscription channel → A's per-subject
//!   forwarding task → JSON envelope decode → SSE encode → A's per-connection
//!   queue → wake of the task polling A's `SseStream`, which parses the frame.
//! * **raw**: one `async_nats::Client` doing `client.publish(subject, data)`
//!   of the same data bytes; a second client with `client.subscribe(subject)`,
//!   the `Subscriber` read by a task that parses the messages. That is the
//!   plain async-nats pattern; it has one task hop fewer on the receiving
//!   side than ours (ours' forwarding task hands the frame to the stream
//!   reader).
//!
//! Both sides send the same data: a JSON-ish object of a fixed size (100 B or
//! 1 KiB) that starts with `{"s":<seq>,"t":<ns since phase start>`. `ours`
//! wraps it in the bus envelope (origin, message id, escaped quotes), so its
//! NATS message is larger; the header line shows both sizes.
//!
//! Core NATS has no publish acknowledgement: `Client::publish` returns once
//! the message is in the client's command queue. "ack" below is therefore
//! only how long the publish call took, not a server round trip.
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
//!    frame/message. Also reported: how long the publish call took, and how
//!    late the pacing thread ever was.
//! 2. **Throughput**: N events (200 000) published as fast as possible by 64
//!    tasks, each publishing sequentially, bounded to 10 s. Since a NATS
//!    publish returns once queued in the client, "64 tasks" does not bound
//!    the messages in flight: the client's command queue and the server do.
//!    Throughput = events received by the reader / time from the first
//!    publish call to the last receipt. Lost = published events that never
//!    arrived (async-nats drops messages for a subscription whose channel,
//!    65 536 messages by default for both variants, is full: a "slow
//!    consumer"). A's stream queue is raised to 1 M frames / 1 GiB so that it
//!    cannot overflow. Each size runs twice: **unbounded** as described,
//!    which overloads the receiving side of both variants on a small
//!    machine, and **windowed**: a task waits (1 ms steps) while 8 192 events
//!    are in flight (published − received; `SSE_NATS_BENCH_WINDOW`
//!    overrides), which keeps the pipe full without overflowing the
//!    subscription, i.e. the lossless sustained rate. 3 runs per variant and
//!    mode, alternating; the ratio uses the medians. Also reported per run:
//!    CPU time per received event of this process (both hubs, or both raw
//!    clients; `/proc/self/stat`, 10 ms ticks) and of `nats-server`
//!    (`/proc/<pid>/stat` of the process listening on port 4222), and the
//!    slow-consumer notices and disconnects of the receiving client.
//! 3. **Breakdown**: the 1 000/s, 100 B latency phase again, with a third
//!    subscriber per variant (a "tap": its own async-nats client, a task
//!    timestamping each message of the variant's subject as its
//!    `Subscriber` yields it). It splits the latency into publish start →
//!    a plain subscriber has the message, and that → the reader has it.
//!
//! Not measured: HTTP, socket writes to SSE clients, more than one receiving
//! connection, networks other than loopback, NATS on another machine, NATS
//! clusters, JetStream.

#![allow(missing_docs)]

mod common;

use common::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use sse_cluster::broker::nats::{NatsBroker, NatsConfig};
use sse_cluster::broker::Channel;
use sse_cluster::wire::Envelope;
use sse_cluster::{Event, Hub, StreamConfig, Subscription, Target};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

const URL: &str = "nats://127.0.0.1:4222";
const PORT: u16 = 4222;
const WORKERS: usize = 2;
/// Publishing tasks in the throughput part (`SSE_NATS_BENCH_TASKS` overrides).
const TP_TASKS: usize = 64;
/// Measured slices per variant in a latency phase.
const LAT_ROUNDS: u64 = 5;
/// Throughput runs per variant (alternating).
const TP_ROUNDS: usize = 3;
/// Events in flight (published − received) in the windowed throughput runs
/// (`SSE_NATS_BENCH_WINDOW` overrides): far below the 65 536 messages a
/// subscription buffers, so that no variant overflows it.
const TP_WINDOW: u64 = 8192;
/// Phase lengths; shortened by `SSE_NATS_BENCH_QUICK=1`.
#[derive(Clone, Copy)]
struct Plan {
    warm_up: Duration,
    measure: Duration,
    tp_events: u64,
    tp_limit: Duration,
    tp_tasks: usize,
    /// Most events published but not yet received in the windowed
    /// throughput runs.
    tp_window: u64,
}

impl Plan {
    fn from_env() -> Self {
        let mut plan = Self::defaults();
        if let Some(secs) = std::env::var("SSE_NATS_BENCH_MEASURE_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            plan.measure = Duration::from_secs(secs.clamp(1, 600));
        }
        if let Some(tasks) = std::env::var("SSE_NATS_BENCH_TASKS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            plan.tp_tasks = tasks.clamp(1, 4096);
        }
        if let Some(window) = std::env::var("SSE_NATS_BENCH_WINDOW")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            plan.tp_window = window.clamp(1, 1 << 20);
        }
        plan
    }

    fn defaults() -> Self {
        if std::env::var_os("SSE_NATS_BENCH_QUICK").is_some() {
            Plan {
                warm_up: Duration::from_millis(300),
                measure: Duration::from_secs(1),
                tp_events: 20_000,
                tp_limit: Duration::from_secs(5),
                tp_tasks: TP_TASKS,
                tp_window: TP_WINDOW,
            }
        } else {
            Plan {
                warm_up: Duration::from_secs(1),
                measure: Duration::from_secs(5),
                tp_events: 200_000,
                tp_limit: Duration::from_secs(10),
                tp_tasks: TP_TASKS,
                tp_window: TP_WINDOW,
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
            Kind::Ours => "ours (Hub B → NATS → Hub A)",
            Kind::Raw => "raw async-nats publish → subscribe",
        }
    }
}

/// Connection events of a raw client, counted by its event callback.
#[derive(Default)]
struct ClientEvents {
    slow_consumers: AtomicU64,
    disconnects: AtomicU64,
}

impl ClientEvents {
    fn snapshot(&self) -> (u64, u64) {
        (
            self.slow_consumers.load(Ordering::Relaxed),
            self.disconnects.load(Ordering::Relaxed),
        )
    }
}

struct Setup {
    prefix: String,
    hub_a: Hub,
    hub_b: Hub,
    broker_a: Arc<NatsBroker>,
    broker_b: Arc<NatsBroker>,
    /// Raw publisher client.
    raw_pub: Client,
    /// Raw subscriber client (a second connection).
    raw_sub: Client,
    raw_sub_events: Arc<ClientEvents>,
    /// A third connection, for the taps of the breakdown phase.
    tap_client: Client,
    /// The nats-server process, for its CPU time.
    server_pid: Option<u32>,
}

/// One publisher for a phase.
#[derive(Clone)]
enum Publisher {
    Ours { hub: Hub, topic: Arc<str> },
    Raw { client: Client, subject: Subject },
}

impl Publisher {
    /// Publishes event `seq`; records how long the call took; true if the
    /// call succeeded.
    async fn send(&self, probe: &Probe, seq: u64, size: usize) -> bool {
        let t = probe.now();
        let data = payload(seq, t, size);
        let ok = match self {
            Publisher::Ours { hub, topic } => hub
                .publish(Target::topic(&**topic), Event::new().data(data))
                .await
                .is_ok(),
            Publisher::Raw { client, subject } => client
                .publish(subject.clone(), Bytes::from(data))
                .await
                .is_ok(),
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

/// A running reader; dropping it stops the reader (and, for raw, drops the
/// `Subscriber`, which unsubscribes).
struct Reader {
    task: JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Proves the server has processed everything `client` sent before (in
/// particular a SUB): a request to a subject nobody serves comes back as "no
/// responders" only after the server has read the earlier commands.
async fn round_trip(client: &Client, prefix: &str) {
    let subject = format!("{prefix}.sync.{}", fastrand::u64(..));
    match tokio::time::timeout(
        Duration::from_secs(3),
        client.request(subject, Bytes::new()),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(err)) if err.kind() == async_nats::RequestErrorKind::NoResponders => {}
        Ok(Err(err)) => panic!("NATS round trip failed: {err}"),
        Err(_) => panic!("NATS round trip timed out"),
    }
}

/// Subscribes `client` to `subject` and spawns a task that hands every
/// message to `probe`.
async fn subscribe_task(client: &Client, prefix: &str, subject: &str, probe: Arc<Probe>) -> Reader {
    let mut sub = client
        .subscribe(subject.to_string())
        .await
        .expect("raw subscribe");
    round_trip(client, prefix).await;
    let task = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            probe.on_message(&msg.payload);
        }
    });
    Reader { task }
}

/// The NATS subject a variant's messages for `name` travel on.
fn nats_subject(setup: &Setup, kind: Kind, name: &str) -> String {
    match kind {
        Kind::Ours => setup.broker_b.subject(&Channel::Topic(name.into())),
        Kind::Raw => format!("{}.raw.{name}", setup.prefix),
    }
}

/// Subscribes a reader (hub A connection, or raw subscriber) to a new
/// topic/subject, and returns the matching publisher.
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
            (publisher, Reader { task })
        }
        Kind::Raw => {
            let subject = nats_subject(setup, kind, name);
            let reader = subscribe_task(&setup.raw_sub, &setup.prefix, &subject, probe).await;
            let publisher = Publisher::Raw {
                client: setup.raw_pub.clone(),
                subject: Subject::from(subject),
            };
            (publisher, reader)
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
    /// With a tap: publish start → tap's subscriber task, sorted.
    to_tap: Vec<u64>,
    /// With a tap: tap → reader, per event, sorted.
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
            let subject = nats_subject(setup, kind, &name);
            let tap_reader = subscribe_task(
                &setup.tap_client,
                &setup.prefix,
                &subject,
                tap_probe.clone(),
            )
            .await;
            Some((tap_probe, tap_reader))
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
            if let Some((tap_probe, tap_reader)) = tap {
                drop(tap_reader);
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
    /// `Some(w)`: publishers waited while `w` events were in flight.
    window: Option<u64>,
    attempted: u64,
    acked: u64,
    received: u64,
    failed: u64,
    duplicates: u64,
    stray: u64,
    gaps: u64,
    /// First publish call → last receipt.
    elapsed: Duration,
    /// First publish call → last publish call returned.
    publish_elapsed: Duration,
    lat: Vec<u64>,
    /// CPU ns used by this process (both hubs, or both raw clients).
    cpu: Option<u64>,
    /// CPU ns used by nats-server.
    server_cpu: Option<u64>,
    /// Slow-consumer notices of the receiving client during the run.
    slow_consumers: u64,
    /// Disconnects of the receiving client during the run.
    disconnects: u64,
}

impl ThroughputResult {
    fn rate(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// (slow-consumer notices, disconnects) of the client receiving for `kind`.
fn receiver_events(setup: &Setup, kind: Kind) -> (u64, u64) {
    match kind {
        Kind::Ours => {
            let s = setup.broker_a.stats();
            (s.slow_consumers, s.disconnects)
        }
        Kind::Raw => setup.raw_sub_events.snapshot(),
    }
}

async fn throughput_phase(
    setup: &Setup,
    kind: Kind,
    plan: Plan,
    size: usize,
    round: usize,
    window: Option<u64>,
) -> ThroughputResult {
    let n = plan.tp_events;
    let probe = Probe::new(n);
    let name = format!("tp-{size}-{round}-{}", window.unwrap_or(0));
    let (publisher, reader) = open(setup, kind, &name, probe.clone()).await;
    let events_before = receiver_events(setup, kind);
    let cpu_before = (process_cpu_ns(), setup.server_pid.and_then(pid_cpu_ns));
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
                    if let Some(window) = window {
                        // Flow control: wait (1 ms steps, the timer's
                        // granularity) while the window is full; bounded by
                        // the time cap.
                        while seq >= probe.received() + window && probe.now() <= limit_ns {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
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
    let cpu_after = (process_cpu_ns(), setup.server_pid.and_then(pid_cpu_ns));
    let events_after = receiver_events(setup, kind);
    drop(reader);
    let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
    let last = probe.last_receipt.load(Ordering::Relaxed).max(start);
    let (lat, _) = probe.latencies(0..attempted);
    ThroughputResult {
        kind,
        round,
        window,
        attempted,
        acked: probe.acked(),
        received: probe.received(),
        failed: probe.failed(),
        duplicates: probe.duplicates.load(Ordering::Relaxed),
        stray: probe.stray.load(Ordering::Relaxed),
        gaps: probe.gaps.load(Ordering::Relaxed),
        elapsed: Duration::from_nanos(last - start),
        publish_elapsed: Duration::from_nanos(last_ack - start),
        lat,
        cpu: delta(cpu_before.0, cpu_after.0),
        server_cpu: delta(cpu_before.1, cpu_after.1),
        slow_consumers: events_after.0.saturating_sub(events_before.0),
        disconnects: events_after.1.saturating_sub(events_before.1),
    }
}

// ---------------------------------------------------------------------------
// Setup and report

/// CPU time (user + system, ns) of a process, from `/proc/{pid}/stat`
/// (clock ticks, assumed 100 per second: 10 ms resolution).
fn stat_cpu_ns(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 10_000_000)
}

fn process_cpu_ns() -> Option<u64> {
    stat_cpu_ns("/proc/self/stat")
}

fn pid_cpu_ns(pid: u32) -> Option<u64> {
    stat_cpu_ns(&format!("/proc/{pid}/stat"))
}

/// The process listening on TCP port `PORT`: the socket's inode from
/// `/proc/net/tcp{,6}`, then the process holding it (`/proc/*/fd`). Needs
/// permission to read other processes' fds; `None` otherwise.
fn server_pid() -> Option<u32> {
    let port = format!(":{PORT:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A = LISTEN, inode
            if cols.len() > 9 && cols[1].ends_with(&port) && cols[3] == "0A" {
                inodes.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| link.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Connects a raw client, counting its slow-consumer notices and
/// disconnects, and proves the server answers.
async fn connect_checked(prefix: &str, events: Arc<ClientEvents>) -> Client {
    let options = ConnectOptions::new()
        .name("sse-cluster-bench-raw")
        .connection_timeout(Duration::from_secs(2))
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                match event {
                    async_nats::Event::SlowConsumer(_) => {
                        events.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    }
                    async_nats::Event::Disconnected => {
                        events.disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        });
    let attempt = async {
        let client = options.connect(URL).await.map_err(|e| e.to_string())?;
        let subject = format!("{prefix}.ping.{}", fastrand::u64(..));
        match client.request(subject, Bytes::new()).await {
            Ok(_) => {}
            Err(err) if err.kind() == async_nats::RequestErrorKind::NoResponders => {}
            Err(err) => return Err(err.to_string()),
        }
        Ok::<_, String>(client)
    };
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(client)) => client,
        Ok(Err(err)) => unreachable_nats(&err),
        Err(_) => unreachable_nats("no answer within 3 s"),
    }
}

fn unreachable_nats(why: &str) -> ! {
    eprintln!(
        "error: NATS is not reachable at {URL} ({why}).\n\
         This benchmark needs a local nats-server: start one, e.g. \
         `nats-server -a 127.0.0.1 -p {PORT} &`, and check with \
         `nats server check connection` or `nc -z 127.0.0.1 {PORT}`."
    );
    std::process::exit(2);
}

async fn build_hub(node: &str, prefix: &str) -> (Hub, Arc<NatsBroker>) {
    let broker = NatsBroker::new(NatsConfig::new(URL).prefix(prefix)).expect("nats config");
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
        .unwrap_or_else(|err| unreachable_nats(&format!("hub did not start: {err}")));
    if hub.broker_status() != sse_cluster::BrokerStatus::Up {
        unreachable_nats("the hub's NatsBroker did not come up");
    }
    (hub, broker)
}

/// The size of the envelope `ours` puts on NATS for `size` bytes of data.
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
         warm-up, in {LAT_ROUNDS} alternating slices (publish start → reader has it; ms; \
         \"call\" = how long the publish call took, until the client queued the message)",
        plan.measure.as_secs_f64(),
        plan.warm_up.as_secs_f64()
    );
    println!(
        "| variant | sent | recv | lost | p50 | p90 | p99 | p99.9 | max | call p50 | call p90 | call p99 | pacer max lag |"
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
         async-nats client subscribed to the variant's subject, timestamping as its \
         Subscriber yields each message (ms)"
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
    let window = results.first().and_then(|r| r.window);
    println!();
    println!(
        "Throughput, {size} B data, {} events, {tasks} publishing tasks, cap {:.0} s, {}",
        plan.tp_events,
        plan.tp_limit.as_secs_f64(),
        match window {
            None => "unbounded: every task publishes as fast as the client takes it".to_string(),
            Some(w) => format!(
                "windowed: tasks wait while {w} events are in flight (published − received)"
            ),
        },
        tasks = plan.tp_tasks,
    );
    println!(
        "| variant | published | received | lost | first publish → last receipt | events/s received | \
         publish-side events/s | latency p50 | p99 | max | bench CPU µs/event | nats-server CPU µs/event | \
         slow-consumer notices | disconnects |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let per_event = |ns: Option<u64>| match ns {
            Some(ns) if r.received > 0 => format!("{:.2}", ns as f64 / 1e3 / r.received as f64),
            _ => "?".into(),
        };
        let extra = match (
            r.failed,
            r.duplicates,
            r.stray,
            r.gaps,
            r.attempted < plan.tp_events,
        ) {
            (0, 0, 0, 0, false) => String::new(),
            (f, d, s, g, cut) => format!(
                " (failed {f}, dup {d}, stray {s}, gap frames {g}{})",
                if cut { ", time cap hit" } else { "" }
            ),
        };
        println!(
            "| {} #{} | {} | {} | {}{} | {:.3} s | {:.0} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} | {} | {} |",
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
            per_event(r.server_cpu),
            r.slow_consumers,
            r.disconnects,
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
    let prefix = format!("ssebench.{}-{nanos}", std::process::id());

    for size in [100, 1024] {
        assert_eq!(payload(999_999, 999_999_999_999, size).len(), size);
        assert_eq!(payload(0, 0, size).len(), size);
    }
    // Reachability first, so that an absent server gives the clear message.
    let raw_pub = connect_checked(&prefix, Arc::default()).await;
    let raw_sub_events = Arc::new(ClientEvents::default());
    let raw_sub = connect_checked(&prefix, raw_sub_events.clone()).await;
    let tap_client = connect_checked(&prefix, Arc::default()).await;
    let version = raw_pub.server_info().version;

    let (hub_a, broker_a) = build_hub("bench-a", &prefix).await;
    let (hub_b, broker_b) = build_hub("bench-b", &prefix).await;
    let setup = Setup {
        prefix,
        hub_a,
        hub_b,
        broker_a,
        broker_b,
        raw_pub,
        raw_sub,
        raw_sub_events,
        tap_client,
        server_pid: server_pid(),
    };

    println!(
        "nats-server {version} at {URL} (pid {}), prefix {:?}; tokio multi-thread runtime, \
         {WORKERS} workers; {} CPUs",
        setup
            .server_pid
            .map_or("? (no server CPU figures)".into(), |p| p.to_string()),
        setup.prefix,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for size in [100, 1024] {
        println!(
            "  {size} B data: raw message {size} B, ours' envelope ≈ {} B (subject {:?})",
            envelope_size(&setup.hub_b, size),
            setup.broker_b.subject(&Channel::Topic("lat".into())),
        );
    }

    // `SSE_NATS_BENCH_ONLY=latency|throughput` runs one part (for profiling).
    let only = std::env::var("SSE_NATS_BENCH_ONLY").unwrap_or_default();
    // `SSE_NATS_BENCH_VARIANT=ours|raw` runs one side of the throughput part.
    let variant = std::env::var("SSE_NATS_BENCH_VARIANT").unwrap_or_default();
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

    for (size, window) in [
        (100, None),
        (100, Some(plan.tp_window)),
        (1024, None),
        (1024, Some(plan.tp_window)),
    ] {
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
                    results.push(throughput_phase(&setup, kind, plan, size, round, window).await);
                }
            }
        }
        print_throughput(size, &results, plan);
    }

    let (a, b) = (setup.broker_a.stats(), setup.broker_b.stats());
    let (ha, hb) = (setup.hub_a.stats(), setup.hub_b.stats());
    let (raw_slow, raw_disc) = setup.raw_sub_events.snapshot();
    println!();
    println!(
        "hub A: bus_in {} bus_echo {} malformed {} delivered {} dropped {} overflow_closed {} \
         gap_events {}; broker A: received {} slow_consumers {} disconnects {}",
        ha.bus_in,
        ha.bus_echo,
        ha.bus_malformed,
        ha.delivered,
        ha.dropped,
        ha.overflow_closed,
        ha.gap_events,
        a.received,
        a.slow_consumers,
        a.disconnects
    );
    println!(
        "hub B: published {} bus_out {} bus_errors {}; broker B: published {} failed {} disconnects {}",
        hb.published, hb.bus_out, hb.bus_errors, b.published, b.publish_failed, b.disconnects
    );
    println!("raw subscriber client: slow-consumer notices {raw_slow}, disconnects {raw_disc}");
    setup.hub_a.shutdown().await;
    setup.hub_b.shutdown().await;
}
