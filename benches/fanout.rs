//! One publish fanned out to N local connections, against a hand-rolled
//! `tokio::sync::broadcast` channel doing the same delivery.
//!
//! Every variant, per iteration, turns one `Event` into one encoded frame
//! (encoded once) and hands that same `Bytes` to each of N in-process
//! receivers, then reads it back from every receiver. Throughput is N
//! deliveries per iteration.
//!
//! * `hub_publish`: `Hub::publish(Target::topic("t"), event.clone())` on a
//!   hub with the default (private, in-memory) broker and N connections on
//!   topic `t`, then one `poll_next` of every `SseStream` (noop waker), which
//!   must yield the frame. Included: the event clone and encode, the message
//!   id `format!`, the topic lookup in the registry, N locked queue pushes
//!   (`FrameSender::send`, `Bytes` refcount bump each), the stats counters,
//!   the JSON envelope encode, the in-memory bus publish and the hub's
//!   handling of its own echo from the bus (the hub is itself subscribed to
//!   `t`, so the echo is JSON-decoded and discarded by origin), and N locked
//!   queue pops.
//! * `tokio_broadcast`: baseline; one `broadcast::Sender<Bytes>` and N
//!   receivers: `event.clone().encode()`, `tx.send(frame)`, then `try_recv()`
//!   on every receiver.
//! * `frame_sender_direct`: the crate's per-connection queue without the hub,
//!   through the public `stream::channel`: `event.clone().encode()`, then
//!   `FrameSender::send(frame.clone())` to N senders held in a `Vec` and one
//!   `poll_next` of every stream. The gap between this and `hub_publish` is
//!   what the hub adds (registry lookup, hash-map walk, envelope, bus).
//!
//! Not included anywhere: waking the tasks that serve the streams (receivers
//! are polled in place, never parked, so no waker is registered when a frame
//! arrives), HTTP framing, socket writes, and any other node.
//!
//! Everything runs on one current-thread Tokio runtime; the receivers are
//! drained every iteration, so queues never fill.

// `criterion_group!` generates an undocumented `pub fn`; the crate denies
// `missing_docs` for every target.
#![allow(missing_docs)]

use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use futures_util::task::noop_waker_ref;
use futures_util::StreamExt;
use sse_cluster::stream::{self, StreamConfig};
use sse_cluster::{Event, Hub, SseStream, Subscription, Target};
use tokio::runtime::Runtime;
use tokio::sync::broadcast;

const SIZES: [usize; 2] = [1_000, 10_000];

fn stream_config() -> StreamConfig {
    StreamConfig::default()
        .keep_alive(None)
        .initial_retry(None)
        .queue_limits(64, 1 << 20)
}

fn event() -> Event {
    Event::new()
        .event("price")
        .expect("valid name")
        .id("42")
        .expect("valid id")
        .data(r#"{"sym":"ABC","px":101.25,"qty":300,"ts":1700000000123}"#)
}

/// Polls every stream once; returns how many yielded a frame.
fn drain_once(streams: &mut [SseStream], cx: &mut Context<'_>) -> u64 {
    let mut got = 0;
    for s in streams.iter_mut() {
        if let Poll::Ready(Some(frame)) = s.poll_next_unpin(cx) {
            black_box(frame);
            got += 1;
        }
    }
    got
}

type Group<'a> = BenchmarkGroup<'a, WallTime>;

fn bench_hub(group: &mut Group<'_>, rt: &Runtime, n: usize) {
    let (hub, mut streams) = rt.block_on(async {
        let hub = Hub::builder()
            .stream_config(stream_config())
            .build()
            .await
            .expect("hub");
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            let conn = hub
                .connect(Subscription::new().topic("t"))
                .await
                .expect("connect");
            streams.push(conn.into_stream());
        }
        (hub, streams)
    });
    assert_eq!(hub.registry().topic_connections("t"), n);
    let event = event();
    group.bench_function(BenchmarkId::new("hub_publish", n), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut cx = Context::from_waker(noop_waker_ref());
                let mut queued = 0;
                let mut got = 0;
                let start = Instant::now();
                for _ in 0..iters {
                    let receipt = hub
                        .publish(Target::topic("t"), event.clone())
                        .await
                        .expect("publish");
                    queued += receipt.delivered_locally;
                    got += drain_once(&mut streams, &mut cx);
                }
                let elapsed = start.elapsed();
                assert_eq!((queued, got), (iters * n as u64, iters * n as u64));
                elapsed
            })
        })
    });
    rt.block_on(async {
        drop(streams);
        hub.shutdown().await;
    });
}

fn bench_broadcast(group: &mut Group<'_>, n: usize) {
    let (tx, _) = broadcast::channel::<Bytes>(64);
    let mut receivers: Vec<_> = (0..n).map(|_| tx.subscribe()).collect();
    let event = event();
    group.bench_function(BenchmarkId::new("tokio_broadcast", n), |b| {
        b.iter_custom(|iters| {
            let mut sent = 0;
            let mut got = 0;
            let start = Instant::now();
            for _ in 0..iters {
                let frame = event.clone().encode();
                sent += tx.send(frame).expect("receivers") as u64;
                for rx in receivers.iter_mut() {
                    if let Ok(frame) = rx.try_recv() {
                        black_box(frame);
                        got += 1;
                    }
                }
            }
            let elapsed = start.elapsed();
            assert_eq!((sent, got), (iters * n as u64, iters * n as u64));
            elapsed
        })
    });
}

fn bench_direct(group: &mut Group<'_>, n: usize) {
    let config = stream_config();
    let (senders, mut streams): (Vec<_>, Vec<_>) = (0..n).map(|_| stream::channel(&config)).unzip();
    let event = event();
    group.bench_function(BenchmarkId::new("frame_sender_direct", n), |b| {
        b.iter_custom(|iters| {
            let mut cx = Context::from_waker(noop_waker_ref());
            let mut queued = 0;
            let mut got = 0;
            let start = Instant::now();
            for _ in 0..iters {
                let frame = event.clone().encode();
                for tx in &senders {
                    queued += u64::from(tx.send(frame.clone()).is_ok());
                }
                got += drain_once(&mut streams, &mut cx);
            }
            let elapsed = start.elapsed();
            assert_eq!((queued, got), (iters * n as u64, iters * n as u64));
            elapsed
        })
    });
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("fanout");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        // Each variant builds its N receivers and drops them when done.
        bench_hub(&mut group, &rt, n);
        bench_broadcast(&mut group, n);
        bench_direct(&mut group, n);
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
