//! Rolling-deploy harness (issue 19): three demo nodes behind HAProxy
//! sharing a broker with history, 300 real WHATWG `EventSource` clients (npm
//! `eventsource` v4 on Node.js) streaming one topic, 600 numbered events
//! published through the balancer while each node in turn is restarted
//! (SIGTERM, wait for exit, start again on its port with the same node id),
//! with two CPU hogs beside it. Every client must end with every event once,
//! in order, and never give up (`readyState` CLOSED).
//!
//! Run by hand (never in CI), from the repository root:
//!
//! ```sh
//! cargo build --release --features redis,nats --example node && \
//! cargo bench --features redis,nats --bench rolling_deploy -- --runs 10
//! ```
//!
//! Options (after `--`): `--runs N` (per backend, default 10), `--backends
//! redis,jetstream` (default both), `--clients N` (300), `--events N`
//! (600), `--interval-ms MS` between publishes (30), `--hogs N` (2),
//! `--restart-after N` (restarts begin once N events are published, 60),
//! `--settle-ms MS` (wait after a restarted node is UP in HAProxy before
//! the next restart, 1000), `--history-max N` (the nodes' events kept per
//! channel; their default, 1000, if not given), `--node-binary PATH`, `--redis URL`
//! (`redis://127.0.0.1:6379`), `--nats URL` (`nats://127.0.0.1:4222`, with
//! JetStream), `--logs DIR`, `--json FILE`, `--stop-on-failure`.
//!
//! It installs nothing. It needs, on this machine: `haproxy` (Debian:
//! `apt-get install -y haproxy`), `node` and `tests/js/node_modules`
//! (`npm ci` in `tests/js`), a Redis on `--redis` and a NATS server with
//! JetStream on `--nats`, and the release demo node built with
//! `--features redis,nats` (the first command above; the harness refuses a
//! binary older than `src/` or `examples/`).
//!
//! Each run: free loopback ports; nodes `n0`..`n2` with `--history redis`
//! (unique `--redis-prefix`) or `--history jetstream` (unique
//! `--nats-prefix`); HAProxy (round robin, `option httpchk GET /healthz`,
//! `inter 500ms fall 1 rise 2`, `retries 3`, `option redispatch 1`, SSE
//! timeouts of 10 minutes) with a stats listener the harness reads to know
//! when a node is UP again; the hogs (`sh -c 'while :; do :; done'`); the
//! Node.js clients (`tests/js/rolling_clients.mjs`), all connected before
//! the first publish; the numbered events `"0"`..`"N-1"` published one at a
//! time at a steady pace through HAProxy (`POST /publish?topic=rolling`; a
//! publish refused with a status or a failed connection is retried, and
//! counted), the restarts meanwhile; then `"end"`. The clients' summary
//! gives per run: lost, duplicated, out of order, clients CLOSED,
//! reconnects. Each run's logs (nodes, HAProxy, clients, publishes) stay in
//! `--logs` (default `$CARGO_TARGET_DIR/rolling-deploy/`). Exits 1 if any
//! run missed the goal.
//!
//! Every wait has a timeout; a run takes about 40 s and at most a few
//! minutes; only processes this harness started are stopped, by their id.
//! Everything listens on 127.0.0.1.
//!
//! `--scenario scale-out` (issue 15) measures rebalancing after a scale-out
//! instead: two nodes with `--max-lifetime`, a third added under load; see
//! `benches/rolling/scale_out.rs` for what it does and its options. The
//! parts both scenarios share are in `benches/rolling/common.rs`.

#![allow(missing_docs)]

#[path = "rolling/common.rs"]
mod common;
#[path = "rolling/scale_out.rs"]
mod scale_out;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    /// Each node in turn restarted under load (issue 19).
    Rolling,
    /// Two nodes, then a third: how connections spread (issue 15).
    ScaleOut,
}

#[derive(Clone, Debug)]
struct Options {
    scenario: Scenario,
    runs: usize,
    backends: Vec<Backend>,
    clients: usize,
    /// Rolling: the events published. Scale-out: the most it may publish.
    events: usize,
    interval: Duration,
    hogs: usize,
    restart_after: usize,
    settle: Duration,
    /// Scale-out: the nodes' `--max-lifetime`, in seconds.
    max_lifetime_s: u64,
    /// The nodes' `--history-max` (events kept per channel), if set.
    history_max: Option<u64>,
    /// Scale-out: publishing before the third node starts.
    warmup: Duration,
    /// Scale-out: how long the connections are sampled once the third node
    /// is UP, and the time within which they must be balanced.
    window: Duration,
    node_binary: PathBuf,
    redis: String,
    nats: String,
    logs: PathBuf,
    json: Option<PathBuf>,
    stop_on_failure: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: rolling_deploy [--scenario rolling|scale-out] [--runs N] [--backends redis,jetstream] \
[--clients N] [--events N] [--interval-ms MS] [--hogs N] [--restart-after N] [--settle-ms MS] \
[--max-lifetime SECS] [--warmup-ms MS] [--window-s SECS] [--history-max N] [--node-binary PATH] \
[--redis URL] [--nats URL] [--logs DIR] [--json FILE] [--stop-on-failure]"
    );
    std::process::exit(2)
}

fn target_dir() -> PathBuf {
    // This bench runs as $TARGET/release/deps/rolling_deploy-HASH.
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"))
}

impl Options {
    fn parse() -> Options {
        let target = target_dir();
        // `cargo bench` passes `--bench` to harness-less benches.
        let args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect();
        let scenario = match args.iter().position(|a| a == "--scenario") {
            None => Scenario::Rolling,
            Some(i) => match args.get(i + 1).map(String::as_str) {
                Some("rolling") => Scenario::Rolling,
                Some("scale-out") => Scenario::ScaleOut,
                _ => usage(),
            },
        };
        let scale_out = scenario == Scenario::ScaleOut;
        let mut o = Options {
            scenario,
            runs: if scale_out { 3 } else { 10 },
            backends: vec![Backend::Redis, Backend::JetStream],
            clients: if scale_out { 600 } else { 300 },
            events: if scale_out { 3000 } else { 600 },
            interval: Duration::from_millis(if scale_out { 50 } else { 30 }),
            hogs: if scale_out { 0 } else { 2 },
            restart_after: 60,
            settle: Duration::from_millis(1000),
            max_lifetime_s: 30,
            history_max: None,
            warmup: Duration::from_secs(5),
            window: Duration::from_secs(45),
            node_binary: target.join("release/examples/node"),
            redis: "redis://127.0.0.1:6379".into(),
            nats: "nats://127.0.0.1:4222".into(),
            logs: target.join(if scale_out {
                "scale-out"
            } else {
                "rolling-deploy"
            }),
            json: None,
            stop_on_failure: false,
        };
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().unwrap_or_else(|| usage());
            let mut number = || value().parse::<u64>().unwrap_or_else(|_| usage());
            match flag.as_str() {
                "--scenario" => {
                    let _ = value();
                }
                "--runs" => o.runs = number() as usize,
                "--clients" => o.clients = number() as usize,
                "--events" => o.events = number() as usize,
                "--interval-ms" => o.interval = Duration::from_millis(number()),
                "--hogs" => o.hogs = number() as usize,
                "--restart-after" => o.restart_after = number() as usize,
                "--settle-ms" => o.settle = Duration::from_millis(number()),
                "--max-lifetime" => o.max_lifetime_s = number(),
                "--history-max" => o.history_max = Some(number()),
                "--warmup-ms" => o.warmup = Duration::from_millis(number()),
                "--window-s" => o.window = Duration::from_secs(number()),
                "--backends" => {
                    o.backends = value()
                        .split(',')
                        .map(|b| match b {
                            "redis" => Backend::Redis,
                            "jetstream" | "nats" => Backend::JetStream,
                            _ => usage(),
                        })
                        .collect()
                }
                "--node-binary" => o.node_binary = value().into(),
                "--redis" => o.redis = value(),
                "--nats" => o.nats = value(),
                "--logs" => o.logs = value().into(),
                "--json" => o.json = Some(value().into()),
                "--stop-on-failure" => o.stop_on_failure = true,
                _ => usage(),
            }
        }
        if o.runs == 0
            || o.runs > 100
            || o.clients == 0
            || o.clients > 5000
            || o.events > 100_000
            || o.max_lifetime_s == 0
            || o.window.is_zero()
            || o.window > Duration::from_secs(600)
            || o.interval.is_zero() && scale_out
        {
            usage()
        }
        o
    }
}

/// What one restart took.
#[derive(Debug, Default, Clone)]
struct Restart {
    exit_ms: u64,
    exit_status: String,
    start_ms: u64,
    up_ms: u64,
    published_at_sigterm: usize,
}

#[derive(Debug, Default)]
struct RunResult {
    backend: &'static str,
    run: usize,
    tally: Tally,
    publishing: PublishCounts,
    lb: LbLog,
    unpublished: usize,
    restarts: Vec<Restart>,
    publishing_s: f64,
    total_s: f64,
    error: Option<String>,
    summary: Value,
    logs: PathBuf,
}

impl RunResult {
    fn ok(&self) -> bool {
        self.error.is_none() && self.tally.exactly_once() && self.unpublished == 0
    }
}

fn main() -> ExitCode {
    let o = Options::parse();
    if let Err(msg) = preflight(&o) {
        eprintln!("[rolling] cannot run: {msg}");
        return ExitCode::from(2);
    }
    let session = o.logs.join(format!("{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&session) {
        eprintln!("[rolling] {}: {e}", session.display());
        return ExitCode::from(2);
    }
    let ok = match o.scenario {
        Scenario::Rolling => rolling(&o, &session),
        Scenario::ScaleOut => scale_out::run(&o, &session),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The rolling deploy, `--runs` times per backend; whether every run met
/// the goal.
fn rolling(o: &Options, session: &Path) -> bool {
    eprintln!(
        "[rolling] {} run(s) per backend {:?}: {} clients, {} events every {:?}, {} CPU hog(s); logs in {}",
        o.runs,
        o.backends.iter().map(|b| b.name()).collect::<Vec<_>>(),
        o.clients,
        o.events,
        o.interval,
        o.hogs,
        session.display()
    );
    let mut results = Vec::new();
    'all: for &backend in &o.backends {
        for run in 1..=o.runs {
            let dir = session.join(format!("{}-{run:02}", backend.name()));
            let _ = std::fs::create_dir_all(&dir);
            let started = Instant::now();
            let mut result = run_once(o, backend, run, &dir);
            result.total_s = started.elapsed().as_secs_f64();
            result.logs = dir;
            print_run(&result);
            let failed = !result.ok();
            results.push(result);
            if failed && o.stop_on_failure {
                break 'all;
            }
        }
    }
    print_table(o, &results);
    if let Some(path) = &o.json {
        let runs: Vec<Value> = results.iter().map(run_json).collect();
        let doc = json!({
            "clients": o.clients, "events": o.events, "interval_ms": o.interval.as_millis() as u64,
            "hogs": o.hogs, "runs": runs,
        });
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
        {
            eprintln!("[rolling] {}: {e}", path.display());
        }
    }
    results.iter().all(RunResult::ok)
}

fn run_once(o: &Options, backend: Backend, run: usize, dir: &Path) -> RunResult {
    let mut result = RunResult {
        backend: backend.name(),
        run,
        ..RunResult::default()
    };
    let spec = NodeSpec::for_run(o, backend, run, Vec::new());
    let mut procs = Procs::default();
    if let Err(e) = run_inner(o, &spec, dir, &mut procs, &mut result) {
        result.error = Some(e);
    }
    drop(procs);
    result.lb = read_haproxy_log(&dir.join("haproxy.log"));
    cleanup(&spec);
    result
}

fn run_inner(
    o: &Options,
    spec: &NodeSpec,
    dir: &Path,
    procs: &mut Procs,
    result: &mut RunResult,
) -> Result<(), String> {
    // The machine busy: CPU hogs from the start to the end of the run.
    start_hogs(o.hogs, procs)?;

    let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let node_logs: Vec<PathBuf> = (0..NODES).map(|i| dir.join(format!("n{i}.log"))).collect();
    for i in 0..NODES {
        let child = spec.start(&format!("n{i}"), ports[i], &node_logs[i])?;
        procs.nodes.push(Some(child));
    }
    let (lb, stats) = start_haproxy(dir, &ports, procs)?;
    wait_status(stats, None, "UP")?;

    // The clients, all connected (greeted) before the first publish.
    let url = format!("http://{lb}/events?topic={TOPIC}");
    let client_limit = (o.interval * o.events as u32).as_secs() + 180;
    let clients = Clients::start(&url, o.clients, o.events, client_limit, dir, procs)?;

    // The rolling deploy, beside the publisher.
    let published = Arc::new(AtomicUsize::new(0));
    let publishing = Arc::new(AtomicBool::new(true));
    let nodes = Arc::new(Mutex::new(std::mem::take(&mut procs.nodes)));
    let deploy = {
        let nodes = nodes.clone();
        let published = published.clone();
        let publishing = publishing.clone();
        let spec = spec.clone();
        let (ports, node_logs, settle, after) =
            (ports.clone(), node_logs.clone(), o.settle, o.restart_after);
        std::thread::spawn(move || -> Result<Vec<Restart>, String> {
            let waited = Instant::now();
            while published.load(Ordering::Acquire) < after && publishing.load(Ordering::Acquire) {
                if waited.elapsed() > Duration::from_secs(120) {
                    return Err("the publisher never reached the first restart".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let mut restarts = Vec::new();
            for i in 0..NODES {
                let id = format!("n{i}");
                let mut r = Restart {
                    published_at_sigterm: published.load(Ordering::Acquire),
                    ..Restart::default()
                };
                let t0 = Instant::now();
                let mut child = nodes.lock().expect("nodes")[i]
                    .take()
                    .ok_or_else(|| format!("{id} is not running"))?;
                log_line(
                    &node_logs[i],
                    &format!("=== harness: SIGTERM at {}", stamp()),
                );
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let status = loop {
                    match child.try_wait() {
                        Ok(Some(status)) => break status,
                        Ok(None) if t0.elapsed() < EXIT_TIMEOUT => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        _ => {
                            let _ = child.kill();
                            let _ = child.wait();
                            return Err(format!("{id} did not exit within {EXIT_TIMEOUT:?}"));
                        }
                    }
                };
                r.exit_ms = elapsed_ms(t0);
                r.exit_status = status.to_string();
                log_line(
                    &node_logs[i],
                    &format!("=== harness: exited ({status}) at {}", stamp()),
                );
                let t1 = Instant::now();
                let child = spec.start(&id, ports[i], &node_logs[i])?;
                r.start_ms = elapsed_ms(t1);
                nodes.lock().expect("nodes")[i] = Some(child);
                r.up_ms = wait_status(stats, Some(&id), "UP")? + r.start_ms;
                log_line(
                    &node_logs[i],
                    &format!("=== harness: UP in HAProxy at {}", stamp()),
                );
                restarts.push(r);
                std::thread::sleep(settle);
            }
            Ok(restarts)
        })
    };

    let publish_log = dir.join("publish.log");
    let started = Instant::now();
    let mut publish_error = None;
    for n in 0..o.events {
        let due = started + o.interval * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if let Err(e) = publish(lb, &n.to_string(), &publish_log, &mut result.publishing) {
            result.unpublished += 1;
            publish_error.get_or_insert(e);
        }
        published.store(n + 1, Ordering::Release);
    }
    publishing.store(false, Ordering::Release);
    result.publishing_s = started.elapsed().as_secs_f64();
    let joined = deploy.join();
    // The nodes are the run's again, whatever the deploy did.
    procs.nodes = std::mem::take(&mut *nodes.lock().unwrap_or_else(|e| e.into_inner()));
    result.restarts = joined.map_err(|_| "the deploy thread panicked")??;
    if let Some(e) = publish_error {
        log_line(&publish_log, &format!("unpublished: {e}"));
    }
    publish(lb, "end", &publish_log, &mut result.publishing)?;

    // The clients report once every one has seen "end" (or gave up).
    let summary = clients.summary()?;
    result.tally = Tally::of(&summary);
    result.summary = summary;
    Ok(())
}

fn print_run(r: &RunResult) {
    let restarts: Vec<String> = r
        .restarts
        .iter()
        .map(|x| format!("exit {} ms/up {} ms", x.exit_ms, x.up_ms))
        .collect();
    println!(
        "[rolling] {} run {:>2}: {} lost {} dup {} ooo {} closed {} not-ended {} reconnects {} refused {} resets {} gaps {} publish-retries {} (ambiguous {}) unpublished {} | HAProxy: DOWN {} /events 5xx {:?} /publish 5xx {:?} | publishing {:.1} s, run {:.1} s, load {} | restarts [{}]{}",
        r.backend,
        r.run,
        if r.ok() { "ok  " } else { "FAIL" },
        r.tally.lost,
        r.tally.duplicated,
        r.tally.out_of_order,
        r.tally.closed,
        r.tally.not_ended,
        r.tally.reconnects,
        r.tally.refused,
        r.tally.resets,
        r.tally.gaps,
        r.publishing.retries,
        r.publishing.ambiguous,
        r.unpublished,
        r.lb.down,
        r.lb.events_5xx,
        r.lb.publish_5xx,
        r.publishing_s,
        r.total_s,
        loadavg(),
        restarts.join(", "),
        r.error.as_ref().map(|e| format!(" | error: {e}")).unwrap_or_default(),
    );
    if !r.ok() {
        print_failures("rolling", &r.logs, &r.summary);
    }
}

fn print_table(o: &Options, results: &[RunResult]) {
    println!();
    println!(
        "{} clients, {} events every {} ms, {} CPU hog(s), 3 nodes restarted in turn:",
        o.clients,
        o.events,
        o.interval.as_millis(),
        o.hogs
    );
    println!();
    println!("| backend | run | lost | duplicated | out of order | CLOSED | not ended | reconnects | refused | publish retries | LB DOWN seen | LB 5xx events / publish | restarts: exit / UP (ms) | time (s) | goal |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let restarts: Vec<String> = r
            .restarts
            .iter()
            .map(|x| format!("{}/{}", x.exit_ms, x.up_ms))
            .collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {:.1} | {} |",
            r.backend,
            r.run,
            r.tally.lost,
            r.tally.duplicated,
            r.tally.out_of_order,
            r.tally.closed,
            r.tally.not_ended,
            r.tally.reconnects,
            r.tally.refused,
            r.publishing.retries,
            r.lb.down,
            r.lb.events_5xx.values().sum::<usize>(),
            r.lb.publish_5xx.values().sum::<usize>(),
            restarts.join(", "),
            r.total_s,
            if r.ok() { "met" } else { "missed" }
        );
    }
    let failed = results.iter().filter(|r| !r.ok()).count();
    println!();
    println!("{} run(s), {failed} missed the goal", results.len());
}

fn run_json(r: &RunResult) -> Value {
    json!({
        "backend": r.backend, "run": r.run, "ok": r.ok(), "lost": r.tally.lost,
        "duplicated": r.tally.duplicated, "out_of_order": r.tally.out_of_order, "closed": r.tally.closed,
        "not_ended": r.tally.not_ended, "reconnects": r.tally.reconnects, "refused": r.tally.refused,
        "resets": r.tally.resets, "gaps": r.tally.gaps, "publish_retries": r.publishing.retries,
        "publish_ambiguous": r.publishing.ambiguous, "unpublished": r.unpublished,
        "lb_down": r.lb.down, "lb_events_5xx": r.lb.events_5xx, "lb_publish_5xx": r.lb.publish_5xx,
        "publishing_s": r.publishing_s, "total_s": r.total_s, "error": r.error,
        "restarts": r.restarts.iter().map(|x| json!({
            "exit_ms": x.exit_ms, "exit_status": x.exit_status, "start_ms": x.start_ms,
            "up_ms": x.up_ms, "published_at_sigterm": x.published_at_sigterm,
        })).collect::<Vec<_>>(),
        "logs": r.logs.display().to_string(),
        "summary": r.summary,
    })
}
