//! Encoding one [`Event`] into its SSE frame.
//!
//! Cases (all in the `encode` group, throughput = bytes of the encoded frame):
//!
//! * `small`: event name, id and a short data line.
//! * `single_line_4k`: a 4 KiB payload without line breaks.
//! * `naive_format_4k`: baseline for the previous case, the hand-rolled
//!   `format!("data: {}\n\n", s)` a user might write. It produces the same
//!   bytes for this payload (and is wrong as soon as the payload contains a
//!   line break, which is why the crate scans for them).
//! * `multi_line_4k`: about 4 KiB over 64 lines, mixing `\n` and `\r\n`.
//!
//! The `Event` is built once outside the timed loop; only `encode` (or the
//! `format!`) is measured.

// `criterion_group!` generates an undocumented `pub fn`; the crate denies
// `missing_docs` for every target.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sse_cluster::Event;

/// 4096 bytes of printable ASCII, no line breaks.
fn single_line_payload() -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 {}\":,.";
    (0..4096)
        .map(|i| char::from(alphabet[i % alphabet.len()]))
        .collect()
}

/// 64 lines of 62 characters, each ended by a line break alternating `\n`
/// and `\r\n`: 64 * 62 + 32 * 1 + 32 * 2 = 4064 bytes.
fn multi_line_payload() -> String {
    const FILLER: &str = "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do";
    let mut s = String::with_capacity(4096);
    for line in 0..64 {
        let text = format!("{line:02} {FILLER}");
        s.push_str(&text[..62]);
        s.push_str(if line % 2 == 0 { "\n" } else { "\r\n" });
    }
    s
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));

    let small = Event::new()
        .event("price")
        .expect("valid name")
        .id("42")
        .expect("valid id")
        .data(r#"{"sym":"ABC","px":101.25}"#);
    group.throughput(Throughput::Bytes(small.encode().len() as u64));
    group.bench_function("small", |b| b.iter(|| black_box(&small).encode()));

    let line = single_line_payload();
    let single = Event::new().data(line.clone());
    let frame = single.encode();
    // Same bytes, so the two timings compare like for like.
    assert_eq!(&frame[..], format!("data: {line}\n\n").as_bytes());
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("single_line_4k", |b| b.iter(|| black_box(&single).encode()));
    group.bench_function("naive_format_4k", |b| {
        b.iter(|| format!("data: {}\n\n", black_box(&line)))
    });

    let payload = multi_line_payload();
    assert_eq!(payload.len(), 4064);
    let multi = Event::new().data(payload);
    let frame = multi.encode();
    assert_eq!(frame.iter().filter(|&&b| b == b'\n').count(), 64 + 1 + 1);
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("multi_line_4k", |b| b.iter(|| black_box(&multi).encode()));

    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
