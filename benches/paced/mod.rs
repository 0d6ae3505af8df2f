//! The paced cross-node harness the backend benches share (Postgres,
//! Kafka): a reader's probe, an open-loop latency schedule and a
//! fixed-count throughput run, each variant ("ours", "raw") alternating.
//! A bench supplies its publishers ([`Publish`]) and readers ([`Side`]).

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

/// Bytes of event data.
pub const SIZE: usize = 100;

/// How long and how much each phase runs.
#[derive(Clone, Copy)]
pub struct Plan {
    /// Open-loop publishes per second in the latency phase.
    pub rate: u64,
    pub warmup: Duration,
    pub slice: Duration,
    pub slices: usize,
    pub throughput_events: u64,
    pub throughput_tasks: usize,
    pub runs: usize,
}

impl Plan {
    /// The full run: 1 s of warm-up, 3 latency slices of 2 s, `events`
    /// by 64 tasks 3 times.
    pub fn full(rate: u64, events: u64) -> Self {
        Plan {
            rate,
            warmup: Duration::from_secs(1),
            slice: Duration::from_secs(2),
            slices: 3,
            throughput_events: events,
            throughput_tasks: 64,
            runs: 3,
        }
    }

    /// A short run: one latency slice of 0.5 s, `events` by `tasks` once.
    pub fn quick(rate: u64, events: u64, tasks: usize) -> Self {
        Plan {
            rate,
            warmup: Duration::from_millis(200),
            slice: Duration::from_millis(500),
            slices: 1,
            throughput_events: events,
            throughput_tasks: tasks,
            runs: 1,
        }
    }
}

/// Sends one event: `seq` and the time since `epoch` in its data.
pub trait Publish: Clone + Send + Sync + 'static {
    fn send(&self, seq: u64, epoch: Instant) -> impl Future<Output = bool> + Send;
}

/// One variant: its publisher, and the reader task feeding its probe.
pub struct Side<P> {
    pub publisher: P,
    pub probe: Arc<Probe>,
    pub reader: tokio::task::JoinHandle<()>,
    /// Whatever must live as long as the side (a listening connection).
    pub keep: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// Where each reader reports: latencies in µs and a receipt count.
#[derive(Default)]
pub struct Probe {
    epoch: Mutex<Option<Instant>>,
    pub lat_us: Mutex<Vec<u64>>,
    pub received: AtomicU64,
    pub last_receipt_ns: AtomicU64,
}

impl Probe {
    pub fn start(&self, at: Instant) {
        *self.epoch.lock().expect("probe") = Some(at);
        self.lat_us.lock().expect("probe").clear();
        self.received.store(0, Ordering::SeqCst);
    }

    pub fn on_message(&self, bytes: &[u8]) {
        let Some(epoch) = *self.epoch.lock().expect("probe") else {
            return;
        };
        let Some(sent_ns) = number_after(bytes, b"\"t\":") else {
            return;
        };
        let now = epoch.elapsed().as_nanos() as u64;
        self.lat_us
            .lock()
            .expect("probe")
            .push(now.saturating_sub(sent_ns) / 1_000);
        self.received.fetch_add(1, Ordering::SeqCst);
        self.last_receipt_ns.store(now, Ordering::SeqCst);
    }
}

/// The decimal number after the first `key` in `bytes`.
pub fn number_after(bytes: &[u8], key: &[u8]) -> Option<u64> {
    let at = bytes.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&bytes[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// `{"s":seq,"t":ns,"p":"xxx…"}` of `SIZE` bytes.
pub fn payload(seq: u64, ns: u64) -> String {
    let mut s = format!("{{\"s\":{seq},\"t\":{ns},\"p\":\"");
    while s.len() < SIZE - 2 {
        s.push('x');
    }
    s.push_str("\"}");
    s
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Ours,
    Raw,
}

/// Publishes at `rate`/s for `length` on a pacing thread, one task per
/// event; returns (sent, failed).
fn pace<P: Publish>(
    handle: Handle,
    publisher: P,
    epoch: Instant,
    length: Duration,
    rate: u64,
) -> (u64, u64) {
    let failed = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    let mut seq = 0u64;
    while start.elapsed() < length {
        let deadline = start + interval * seq as u32;
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let publisher = publisher.clone();
        let failed = failed.clone();
        handle.spawn(async move {
            if !publisher.send(seq, epoch).await {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        });
        seq += 1;
    }
    (seq, failed.load(Ordering::Relaxed))
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

pub async fn latency<P: Publish>(sides: &[(Kind, &Side<P>)], plan: Plan) {
    let mut results: Vec<(Kind, Vec<u64>, u64, u64, u64)> = sides
        .iter()
        .map(|(k, _)| (*k, Vec::new(), 0, 0, 0))
        .collect();
    for (_, side) in sides {
        let epoch = Instant::now();
        side.probe.start(epoch);
        let (handle, publisher) = (Handle::current(), side.publisher.clone());
        let warm = plan.warmup;
        tokio::task::spawn_blocking(move || pace(handle, publisher, epoch, warm, plan.rate))
            .await
            .expect("pace");
    }
    for slice in 0..plan.slices {
        for i in 0..sides.len() {
            // Alternate which variant goes first.
            let (kind, side) = sides[(i + slice) % sides.len()];
            tokio::time::sleep(Duration::from_millis(200)).await;
            let epoch = Instant::now();
            side.probe.start(epoch);
            let (handle, publisher) = (Handle::current(), side.publisher.clone());
            let length = plan.slice;
            let (sent, failed) = tokio::task::spawn_blocking(move || {
                pace(handle, publisher, epoch, length, plan.rate)
            })
            .await
            .expect("pace");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let lat = std::mem::take(&mut *side.probe.lat_us.lock().expect("probe"));
            let received = lat.len() as u64;
            let entry = results.iter_mut().find(|r| r.0 == kind).expect("kind");
            entry.1.extend(lat);
            entry.2 += sent;
            entry.3 += received;
            entry.4 += failed;
        }
    }
    println!(
        "\nCross-node latency, {} events/s, {SIZE} B data, {} x {:.1} s per variant",
        plan.rate,
        plan.slices,
        plan.slice.as_secs_f64()
    );
    println!(
        "{:<6} {:>8} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "", "sent", "recv", "failed", "p50 µs", "p90 µs", "p99 µs", "max µs"
    );
    let mut p99 = Vec::new();
    for (kind, mut lat, sent, received, failed) in results {
        lat.sort_unstable();
        println!(
            "{:<6} {:>8} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9}",
            format!("{kind:?}").to_lowercase(),
            sent,
            received,
            failed,
            percentile(&lat, 0.5),
            percentile(&lat, 0.9),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(0)
        );
        p99.push(percentile(&lat, 0.99));
    }
    if let [ours, raw] = p99[..] {
        println!(
            "p99 ours - raw: {:+.3} ms",
            (ours as f64 - raw as f64) / 1000.0
        );
    }
}

/// Events received per second, `events` published by `tasks` tasks.
async fn throughput_run<P: Publish>(side: &Side<P>, plan: Plan) -> (f64, u64) {
    let epoch = Instant::now();
    side.probe.start(epoch);
    let next = Arc::new(AtomicU64::new(0));
    let total = plan.throughput_events;
    let mut tasks = Vec::new();
    for _ in 0..plan.throughput_tasks {
        let (next, publisher) = (next.clone(), side.publisher.clone());
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total || epoch.elapsed() > Duration::from_secs(10) {
                    return failed;
                }
                if !publisher.send(seq, epoch).await {
                    failed += 1;
                }
            }
        }));
    }
    let mut failed = 0;
    for task in tasks {
        failed += task.await.expect("publisher task");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while side.probe.received.load(Ordering::SeqCst) + failed < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let received = side.probe.received.load(Ordering::SeqCst);
    let secs = side.probe.last_receipt_ns.load(Ordering::SeqCst) as f64 / 1e9;
    (received as f64 / secs.max(1e-9), total - received)
}

pub async fn throughput<P: Publish>(sides: &[(Kind, &Side<P>)], plan: Plan) {
    println!(
        "\nThroughput, {} events of {SIZE} B by {} tasks, {} runs per variant",
        plan.throughput_events, plan.throughput_tasks, plan.runs
    );
    let mut rates: Vec<(Kind, Vec<f64>)> = sides.iter().map(|(k, _)| (*k, Vec::new())).collect();
    for run in 0..plan.runs {
        for i in 0..sides.len() {
            let (kind, side) = sides[(i + run) % sides.len()];
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (rate, lost) = throughput_run(side, plan).await;
            println!(
                "  run {run} {:<5} {rate:>9.0} events/s, {lost} not received",
                format!("{kind:?}").to_lowercase()
            );
            rates
                .iter_mut()
                .find(|r| r.0 == kind)
                .expect("kind")
                .1
                .push(rate);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ours = median(&mut rates[0].1);
    let raw = median(&mut rates[1].1);
    println!(
        "median: ours {ours:.0}/s, raw {raw:.0}/s, ours/raw {:.0}%",
        ours / raw * 100.0
    );
}
