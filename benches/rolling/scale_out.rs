//! `--scenario scale-out` of `benches/rolling_deploy.rs` (issue 15): do
//! long-lived SSE connections spread onto a node added under load, when
//! every connection has a maximum lifetime?
//!
//! ```sh
//! cargo build --release --features redis,nats --example node && \
//! cargo bench --features redis,nats --bench rolling_deploy -- --scenario scale-out --runs 3
//! ```
//!
//! Each run: nodes `n0` and `n1` with `--max-lifetime SECS` (30; the node
//! draws each connection's lifetime from 80% to 100% of it) and
//! `--history redis|jetstream`; HAProxy (round robin, as in the rolling
//! scenario) configured with three servers, `n2` not started yet (the
//! harness waits until HAProxy sees it DOWN); `--clients` (600) real
//! EventSource clients, all connected, so all on `n0` and `n1`; numbered
//! events published through HAProxy every `--interval-ms` (50, i.e. 20/s).
//! After `--warmup-ms` (5000) of publishing, `n2` starts; once HAProxy sees
//! it UP, every node's `GET /stats` `connections` is read once a second for
//! `--window-s` (45) seconds. Then publishing stops (`--events` is only a
//! cap), `"end N"` is published and the clients report.
//!
//! A sample is balanced when max(connections) ≤ 1.2 × mean(connections)
//! over the three nodes. Reported per run: the time after `n2` is UP from
//! which every sample is balanced (none if the last is not), the
//! connections and max/mean at the end of the window, the clients' lost,
//! duplicated, out of order, CLOSED and reconnects. The goal: balanced
//! within the window, and every client got every event exactly once, in
//! order, without giving up. `connections.csv` in each run's logs has the
//! samples.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::Options;

/// A sample is balanced when no node holds more than this × the mean.
const BALANCE: f64 = 1.2;

/// One reading of every node's `connections`, `t_ms` after `n2` was UP
/// (`None` for a node whose `/stats` did not answer).
#[derive(Debug, Clone)]
struct Sample {
    t_ms: u64,
    connections: Vec<Option<u64>>,
}

impl Sample {
    fn sum(&self) -> u64 {
        self.connections.iter().flatten().sum()
    }

    fn max(&self) -> u64 {
        self.connections
            .iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// max / mean (over every node), `None` if a node did not answer or
    /// none holds a connection.
    fn ratio(&self) -> Option<f64> {
        if self.connections.iter().any(Option::is_none) || self.sum() == 0 {
            return None;
        }
        let mean = self.sum() as f64 / self.connections.len() as f64;
        Some(self.max() as f64 / mean)
    }

    fn balanced(&self) -> bool {
        self.ratio().is_some_and(|r| r <= BALANCE)
    }

    fn show(&self) -> String {
        self.connections
            .iter()
            .map(|c| c.map_or("?".to_owned(), |c| c.to_string()))
            .collect::<Vec<_>>()
            .join("/")
    }
}

#[derive(Debug, Default)]
struct ScaleOutResult {
    backend: &'static str,
    run: usize,
    /// Connections per node just before `n2` started.
    before: Option<Sample>,
    /// From starting `n2` to HAProxy seeing it UP.
    up_ms: u64,
    samples: Vec<Sample>,
    /// Seconds after `n2` was UP from which every sample is balanced.
    balanced_at_s: Option<f64>,
    tally: Tally,
    publishing: PublishCounts,
    published: usize,
    unpublished: usize,
    lb: LbLog,
    total_s: f64,
    error: Option<String>,
    summary: Value,
    logs: PathBuf,
}

impl ScaleOutResult {
    fn last(&self) -> Option<&Sample> {
        self.samples.last()
    }

    fn ok(&self) -> bool {
        self.error.is_none()
            && self.balanced_at_s.is_some()
            && self.tally.exactly_once()
            && self.unpublished == 0
    }
}

/// Every run, `--runs` per backend; whether every one met the goal.
pub(crate) fn run(o: &Options, session: &Path) -> bool {
    eprintln!(
        "[scale-out] {} run(s) per backend {:?}: {} clients, 2 → 3 nodes, max lifetime {} s, an event every {:?}, window {:?}, {} CPU hog(s); logs in {}",
        o.runs,
        o.backends.iter().map(|b| b.name()).collect::<Vec<_>>(),
        o.clients,
        o.max_lifetime_s,
        o.interval,
        o.window,
        o.hogs,
        session.display()
    );
    let mut results = Vec::new();
    'all: for &backend in &o.backends {
        for run in 1..=o.runs {
            let dir = session.join(format!("{}-{run:02}", backend.name()));
            let _ = std::fs::create_dir_all(&dir);
            let started = Instant::now();
            let mut result = ScaleOutResult {
                backend: backend.name(),
                run,
                ..ScaleOutResult::default()
            };
            let extra = vec!["--max-lifetime".to_owned(), o.max_lifetime_s.to_string()];
            let spec = NodeSpec::for_run(o, backend, run, extra);
            let mut procs = Procs::default();
            if let Err(e) = run_inner(o, &spec, &dir, &mut procs, &mut result) {
                result.error = Some(e);
            }
            drop(procs);
            result.lb = read_haproxy_log(&dir.join("haproxy.log"));
            cleanup(&spec);
            result.total_s = started.elapsed().as_secs_f64();
            result.logs = dir;
            print_run(o, &result);
            let failed = !result.ok();
            results.push(result);
            if failed && o.stop_on_failure {
                break 'all;
            }
        }
    }
    print_table(o, &results);
    if let Some(path) = &o.json {
        let doc = json!({
            "scenario": "scale-out", "clients": o.clients,
            "interval_ms": o.interval.as_millis() as u64, "max_lifetime_s": o.max_lifetime_s,
            "window_s": o.window.as_secs(), "warmup_ms": o.warmup.as_millis() as u64,
            "hogs": o.hogs, "runs": results.iter().map(run_json).collect::<Vec<_>>(),
        });
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
        {
            eprintln!("[scale-out] {}: {e}", path.display());
        }
    }
    results.iter().all(ScaleOutResult::ok)
}

/// Every node's `connections` from its `GET /stats`.
fn sample(ports: &[u16], t_ms: u64) -> Sample {
    let connections = ports
        .iter()
        .map(|&port| {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match http(addr, "GET", "/stats", "") {
                Ok((200, body)) => {
                    serde_json::from_str::<Value>(&body).ok()?["connections"].as_u64()
                }
                _ => None,
            }
        })
        .collect();
    Sample { t_ms, connections }
}

fn run_inner(
    o: &Options,
    spec: &NodeSpec,
    dir: &Path,
    procs: &mut Procs,
    result: &mut ScaleOutResult,
) -> Result<(), String> {
    start_hogs(o.hogs, procs)?;

    // Two nodes running, three in HAProxy's configuration.
    let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let node_logs: Vec<PathBuf> = (0..NODES).map(|i| dir.join(format!("n{i}.log"))).collect();
    for i in 0..NODES - 1 {
        let child = spec.start(&format!("n{i}"), ports[i], &node_logs[i])?;
        procs.nodes.push(Some(child));
    }
    let new = format!("n{}", NODES - 1);
    let (lb, stats) = start_haproxy(dir, &ports, procs)?;
    wait_haproxy(
        stats,
        &format!("the old nodes UP and {new} DOWN"),
        |status| {
            status.len() == NODES
                && status
                    .iter()
                    .all(|(node, s)| s == if *node == new { "DOWN" } else { "UP" })
        },
    )?;

    // The clients, all on the old nodes.
    let url = format!("http://{lb}/events?topic={TOPIC}");
    let limit = (o.warmup + UP_TIMEOUT + o.window).as_secs() + 180;
    let clients = Clients::start(&url, o.clients, o.events, limit, dir, procs)?;

    // The publisher, until the window is over (or `--events` reached).
    let publishing = Arc::new(AtomicBool::new(true));
    let publish_log = dir.join("publish.log");
    let publisher = {
        let (publishing, log, interval, cap) = (
            publishing.clone(),
            publish_log.clone(),
            o.interval,
            o.events,
        );
        std::thread::spawn(move || {
            let mut counts = PublishCounts::default();
            let (mut n, mut unpublished, mut error) = (0, 0, None);
            let started = Instant::now();
            while n < cap && publishing.load(Ordering::Acquire) {
                let due = started + interval * n as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if let Err(e) = publish(lb, &n.to_string(), &log, &mut counts) {
                    unpublished += 1;
                    error.get_or_insert(e);
                }
                n += 1;
            }
            (n, unpublished, counts, error)
        })
    };
    let outcome = scale_out(o, spec, &ports, &node_logs, stats, procs, result);
    publishing.store(false, Ordering::Release);
    let (published, unpublished, counts, error) = publisher
        .join()
        .map_err(|_| "the publisher panicked".to_owned())?;
    result.published = published;
    result.unpublished = unpublished;
    result.publishing = counts;
    if let Some(e) = error {
        log_line(&publish_log, &format!("unpublished: {e}"));
    }
    outcome?;
    publish(
        lb,
        &format!("end {published}"),
        &publish_log,
        &mut result.publishing,
    )?;

    let summary = clients.summary()?;
    result.tally = Tally::of(&summary);
    result.summary = summary;
    Ok(())
}

/// The third node started under load, and the connections sampled once a
/// second for the window.
fn scale_out(
    o: &Options,
    spec: &NodeSpec,
    ports: &[u16],
    node_logs: &[PathBuf],
    stats: SocketAddr,
    procs: &mut Procs,
    result: &mut ScaleOutResult,
) -> Result<(), String> {
    std::thread::sleep(o.warmup);
    result.before = Some(sample(ports, 0));
    let i = NODES - 1;
    let new = format!("n{i}");
    let started = Instant::now();
    let child = spec.start(&new, ports[i], &node_logs[i])?;
    procs.nodes.push(Some(child));
    wait_status(stats, Some(&new), "UP")?;
    let up = Instant::now();
    result.up_ms = elapsed_ms(started);
    log_line(
        &node_logs[i],
        &format!("=== harness: UP in HAProxy at {}", stamp()),
    );

    let csv = dir_of(node_logs).join("connections.csv");
    let header: Vec<String> = (0..NODES).map(|n| format!("n{n}")).collect();
    log_line(&csv, &format!("t_ms,{}", header.join(",")));
    let seconds = o.window.as_secs();
    for k in 0..=seconds {
        let due = up + Duration::from_secs(k);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let s = sample(ports, elapsed_ms(up));
        log_line(&csv, &format!("{},{}", s.t_ms, s.show().replace('/', ",")));
        result.samples.push(s);
    }
    // The time from which every sample is balanced.
    let unbalanced = result.samples.iter().rposition(|s| !s.balanced());
    result.balanced_at_s = match unbalanced {
        None => Some(0.0),
        Some(i) if i + 1 < result.samples.len() => Some(result.samples[i + 1].t_ms as f64 / 1000.0),
        Some(_) => None,
    };
    Ok(())
}

fn dir_of(logs: &[PathBuf]) -> PathBuf {
    logs.first()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn ratio(s: Option<&Sample>) -> String {
    s.and_then(Sample::ratio)
        .map_or("?".to_owned(), |r| format!("{r:.2}"))
}

fn balanced_at(r: &ScaleOutResult) -> String {
    r.balanced_at_s
        .map_or("not".to_owned(), |t| format!("{t:.1} s"))
}

/// The new node's connections every 5 s of the window.
fn series(r: &ScaleOutResult) -> String {
    r.samples
        .iter()
        .enumerate()
        .filter(|(k, _)| k % 5 == 0)
        .map(|(_, s)| s.show())
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_run(o: &Options, r: &ScaleOutResult) {
    println!(
        "[scale-out] {} run {:>2}: {} | before {} | n2 UP in {} ms | balanced (max ≤ {BALANCE} × mean) from {} | at {} s {} (max/mean {}) | lost {} dup {} ooo {} closed {} not-ended {} reconnects {} resets {} gaps {} | published {} unpublished {} publish-retries {} (ambiguous {}) | HAProxy: DOWN {} /events 5xx {:?} /publish 5xx {:?} | run {:.1} s, load {}{}",
        r.backend,
        r.run,
        if r.ok() { "ok  " } else { "FAIL" },
        r.before.as_ref().map_or("?".to_owned(), Sample::show),
        r.up_ms,
        balanced_at(r),
        o.window.as_secs(),
        r.last().map_or("?".to_owned(), Sample::show),
        ratio(r.last()),
        r.tally.lost,
        r.tally.duplicated,
        r.tally.out_of_order,
        r.tally.closed,
        r.tally.not_ended,
        r.tally.reconnects,
        r.tally.resets,
        r.tally.gaps,
        r.published,
        r.unpublished,
        r.publishing.retries,
        r.publishing.ambiguous,
        r.lb.down,
        r.lb.events_5xx,
        r.lb.publish_5xx,
        r.total_s,
        loadavg(),
        r.error.as_ref().map(|e| format!(" | error: {e}")).unwrap_or_default(),
    );
    println!(
        "[scale-out]   connections n0/n1/n2 every 5 s: {}",
        series(r)
    );
    if !r.ok() {
        print_failures("scale-out", &r.logs, &r.summary);
    }
}

fn print_table(o: &Options, results: &[ScaleOutResult]) {
    println!();
    println!(
        "{} clients, 2 → 3 nodes, max lifetime {} s (jitter 20%), an event every {} ms, {} CPU hog(s), window {} s:",
        o.clients,
        o.max_lifetime_s,
        o.interval.as_millis(),
        o.hogs,
        o.window.as_secs()
    );
    println!();
    println!("| backend | run | before n0/n1 | n2 UP (ms) | balanced from (s after UP) | n0/n1/n2 at {} s | max/mean at {} s | events | lost | duplicated | out of order | CLOSED | reconnects | time (s) | goal |", o.window.as_secs(), o.window.as_secs());
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} |",
            r.backend,
            r.run,
            r.before.as_ref().map_or("?".to_owned(), |s| {
                let mut s = s.clone();
                s.connections.pop();
                s.show()
            }),
            r.up_ms,
            balanced_at(r),
            r.last().map_or("?".to_owned(), Sample::show),
            ratio(r.last()),
            r.published,
            r.tally.lost,
            r.tally.duplicated,
            r.tally.out_of_order,
            r.tally.closed,
            r.tally.reconnects,
            r.total_s,
            if r.ok() { "met" } else { "missed" }
        );
    }
    let failed = results.iter().filter(|r| !r.ok()).count();
    println!();
    println!("{} run(s), {failed} missed the goal", results.len());
}

fn run_json(r: &ScaleOutResult) -> Value {
    let sample = |s: &Sample| json!({ "t_ms": s.t_ms, "connections": s.connections });
    json!({
        "backend": r.backend, "run": r.run, "ok": r.ok(), "up_ms": r.up_ms,
        "before": r.before.as_ref().map(sample), "balanced_at_s": r.balanced_at_s,
        "max_mean_at_end": r.last().and_then(Sample::ratio),
        "samples": r.samples.iter().map(sample).collect::<Vec<_>>(),
        "published": r.published, "unpublished": r.unpublished,
        "publish_retries": r.publishing.retries, "publish_ambiguous": r.publishing.ambiguous,
        "lost": r.tally.lost, "duplicated": r.tally.duplicated,
        "out_of_order": r.tally.out_of_order, "closed": r.tally.closed,
        "not_ended": r.tally.not_ended, "reconnects": r.tally.reconnects,
        "refused": r.tally.refused, "resets": r.tally.resets, "gaps": r.tally.gaps,
        "lb_down": r.lb.down, "lb_events_5xx": r.lb.events_5xx, "lb_publish_5xx": r.lb.publish_5xx,
        "total_s": r.total_s, "error": r.error, "logs": r.logs.display().to_string(),
        "summary": r.summary,
    })
}
