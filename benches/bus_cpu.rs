//! The hubs' own CPU per bus message, without a broker server: hub B
//! publishes to a topic, the in-memory bus hands the envelope to hub A in the
//! same call, A decodes it, encodes the SSE frame and queues it for its one
//! connection, and a reader drains the stream. Everything runs on one
//! current-thread runtime, so the work is the same from run to run:
//! under `valgrind --tool=callgrind` the instruction count per event is
//! repeatable on a shared machine, which wall-clock figures are not.
//!
//! ```sh
//! cargo bench --bench bus_cpu -- [EVENTS] [SIZE]      # default 200000 events of 100 B
//! valgrind --tool=callgrind --callgrind-out-file=target/bus_cpu.cg \
//!     target/release/deps/bus_cpu-* 50000 100         # instructions per event
//! ```
//!
//! Printed: events, CPU seconds of the process (getrusage: user + system)
//! and µs per event (`/proc/self/stat`). The baseline beside it is what any bus path must do at
//! least: one `Event` encoded to an SSE frame and one `Bytes` through a
//! `tokio::sync::mpsc` channel per event (`--baseline`).

#![allow(missing_docs)]

mod common;

use std::time::Instant;

use futures_util::StreamExt;
use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::stream::StreamConfig;
use sse_cluster::{Event, Hub, Subscription, Target};

async fn hub(bus: &MemoryBus, node: &str) -> Hub {
    Hub::builder()
        .node_id(node)
        .broker(bus.broker())
        .stream_config(
            StreamConfig::default()
                .keep_alive(None)
                .initial_retry(None)
                .queue_limits(1 << 20, 1 << 30),
        )
        .build()
        .await
        .expect("hub")
}

/// Publishes `events` on B, drains them from A's stream in batches; returns
/// the frames read.
async fn ours(events: u64, size: usize) -> u64 {
    let bus = MemoryBus::new();
    let a = hub(&bus, "a").await;
    let b = hub(&bus, "b").await;
    let mut stream = a
        .connect(Subscription::new().topic("t"))
        .await
        .expect("connect")
        .into_stream();
    let mut read = 0;
    for seq in 0..events {
        let data = common::payload(seq, seq, size);
        b.publish(Target::topic("t"), Event::new().data(data))
            .await
            .expect("publish");
        if seq % 64 == 63 || seq + 1 == events {
            while read <= seq {
                if stream.next().await.is_none() {
                    return read;
                }
                read += 1;
            }
        }
    }
    read
}

/// The floor: encode the event once and pass the frame through a channel.
async fn baseline(events: u64, size: usize) -> u64 {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut read = 0;
    for seq in 0..events {
        let data = common::payload(seq, seq, size);
        let _ = tx.send(Event::new().data(data).encode());
        if seq % 64 == 63 || seq + 1 == events {
            while let Ok(frame) = rx.try_recv() {
                std::hint::black_box(frame);
                read += 1;
            }
        }
    }
    read
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let base = args.iter().any(|a| a == "--baseline");
    let nums: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let events = nums.first().copied().unwrap_or(200_000);
    let size = nums.get(1).copied().unwrap_or(100) as usize;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cpu0 = common::cpu_secs();
    let t0 = Instant::now();
    let read = rt.block_on(async {
        if base {
            baseline(events, size).await
        } else {
            ours(events, size).await
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    let cpu = common::cpu_secs() - cpu0;
    println!(
        "{}: {read}/{events} events of {size} B, {:.3} s CPU, {:.3} µs CPU/event, {:.0} events/s wall",
        if base { "baseline" } else { "ours" },
        cpu,
        cpu * 1e6 / read.max(1) as f64,
        read as f64 / wall
    );
}
