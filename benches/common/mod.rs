//! Measurement helpers shared by the benches (`redis`, `nats`, the CPU ones):
//! the timestamped payload, the per-sequence latency probe, percentiles.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The start of a gap frame on the stream.
pub const GAP_PREFIX: &[u8] = b"event: sse-cluster.gap";

/// `{"s":<seq>,"t":<t>,"sym":"ABC",...,"pad":"xxx"}`, exactly `size` bytes
/// (or longer if `size` is too small for the fixed part).
pub fn payload(seq: u64, t: u64, size: usize) -> String {
    let mut s =
        format!(r#"{{"s":{seq},"t":{t},"sym":"ABC","px":101.25,"qty":300,"side":"buy","pad":""#);
    const PAD: &str = match std::str::from_utf8(&[b'x'; 2048]) {
        Ok(pad) => pad,
        Err(_) => "",
    };
    let pad = size.saturating_sub(s.len() + 2).min(PAD.len());
    s.reserve_exact(pad + 2);
    s.push_str(&PAD[..pad]);
    s.push_str("\"}");
    s
}

/// The unsigned integer after the JSON key `"{name}":`, found plainly or
/// escaped inside a JSON string (`\"{name}\":`, as in ours' bus envelope),
/// in the first bytes of `buf`.
pub fn field(buf: &[u8], name: u8) -> Option<u64> {
    let head = &buf[..buf.len().min(192)];
    let plain = [b'"', name, b'"', b':'];
    let escaped = [b'\\', b'"', name, b'\\', b'"', b':'];
    let find = |key: &[u8]| {
        head.windows(key.len())
            .position(|w| w == key)
            .map(|at| at + key.len())
    };
    let at = find(&plain).or_else(|| find(&escaped))?;
    let digits = head[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut n: u64 = 0;
    let mut any = false;
    for d in digits {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(n)
}

/// Per-phase record: one latency slot and one publish-call slot per sequence
/// number.
pub struct Probe {
    pub base: Instant,
    /// ns + 1 from publish start to receipt; 0 = not received.
    pub lat: Vec<AtomicU64>,
    /// ns + 1 the publish call took; 0 = not published (yet).
    pub ack: Vec<AtomicU64>,
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    pub stray: AtomicU64,
    /// Gap frames the hub put on the stream (the broker reported losses).
    pub gaps: AtomicU64,
    pub acked: AtomicU64,
    pub failed: AtomicU64,
    /// ns (since base) of the latest receipt.
    pub last_receipt: AtomicU64,
}

impl Probe {
    pub fn new(events: u64) -> Arc<Self> {
        Self::with_base(events, Instant::now())
    }

    pub fn with_base(events: u64, base: Instant) -> Arc<Self> {
        let slots = || (0..events).map(|_| AtomicU64::new(0)).collect();
        Arc::new(Probe {
            base,
            lat: slots(),
            ack: slots(),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            stray: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_receipt: AtomicU64::new(0),
        })
    }

    pub fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Called by a reader with a received frame or message.
    pub fn on_message(&self, bytes: &[u8]) {
        let now = self.now();
        match (field(bytes, b's'), field(bytes, b't')) {
            (Some(seq), Some(t)) if (seq as usize) < self.lat.len() => {
                let prev =
                    self.lat[seq as usize].swap(now.saturating_sub(t) + 1, Ordering::Relaxed);
                if prev == 0 {
                    self.received.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ if bytes.starts_with(GAP_PREFIX) => {
                self.gaps.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.stray.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.last_receipt.fetch_max(now, Ordering::Relaxed);
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits until every published event was received, `settled` publishes
    /// have settled, or nothing arrived for `idle`; at most `cap`.
    pub async fn drain(&self, settled: u64, idle: Duration, cap: Duration) {
        let start = Instant::now();
        let mut last = (self.received(), Instant::now());
        while start.elapsed() < cap {
            let done = self.acked() + self.failed() >= settled;
            if done && self.received() >= self.acked() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            let got = self.received();
            if got != last.0 {
                last = (got, Instant::now());
            } else if done && last.1.elapsed() >= idle {
                return;
            }
        }
    }

    /// Latencies (ns) of the received events in `range`, sorted; and how many
    /// in the range were published but not received.
    pub fn latencies(&self, range: std::ops::Range<u64>) -> (Vec<u64>, u64) {
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        let mut lost = 0;
        for seq in range {
            let lat = self.lat[seq as usize].load(Ordering::Relaxed);
            if lat > 0 {
                out.push(lat - 1);
            } else if self.ack[seq as usize].load(Ordering::Relaxed) > 0 {
                lost += 1;
            }
        }
        out.sort_unstable();
        (out, lost)
    }

    pub fn acks(&self, range: std::ops::Range<u64>) -> Vec<u64> {
        let mut out: Vec<u64> = range
            .filter_map(|seq| {
                self.ack[seq as usize]
                    .load(Ordering::Relaxed)
                    .checked_sub(1)
            })
            .collect();
        out.sort_unstable();
        out
    }
}

/// Nearest-rank percentile of sorted values.
pub fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// CPU seconds (user + system) of this process, from `/proc/self/stat`
/// (clock ticks, assumed 100 per second).
pub fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |at| &stat[at + 2..]);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}
