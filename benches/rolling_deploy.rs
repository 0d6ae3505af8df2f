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
//! the next restart, 1000), `--node-binary PATH`, `--redis URL`
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

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

const TOPIC: &str = "rolling";
const NODES: usize = 3;
/// Longest a node may take to print `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a node may take to exit after SIGTERM (it drains within ~2 s).
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest HAProxy may take to see a node UP (`rise 2` × 500 ms, loaded).
const UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the clients may take to connect, all of them.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest one HTTP exchange of the harness may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per publish, 100 ms apart, before the event counts as unpublished.
const PUBLISH_ATTEMPTS: usize = 50;
/// Longest the clients may take, after "end" is published, to report.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Redis,
    JetStream,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Redis => "redis",
            Backend::JetStream => "jetstream",
        }
    }
}

#[derive(Clone, Debug)]
struct Options {
    runs: usize,
    backends: Vec<Backend>,
    clients: usize,
    events: usize,
    interval: Duration,
    hogs: usize,
    restart_after: usize,
    settle: Duration,
    node_binary: PathBuf,
    redis: String,
    nats: String,
    logs: PathBuf,
    json: Option<PathBuf>,
    stop_on_failure: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: rolling_deploy [--runs N] [--backends redis,jetstream] [--clients N] [--events N] \
[--interval-ms MS] [--hogs N] [--restart-after N] [--settle-ms MS] [--node-binary PATH] \
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
        let mut o = Options {
            runs: 10,
            backends: vec![Backend::Redis, Backend::JetStream],
            clients: 300,
            events: 600,
            interval: Duration::from_millis(30),
            hogs: 2,
            restart_after: 60,
            settle: Duration::from_millis(1000),
            node_binary: target.join("release/examples/node"),
            redis: "redis://127.0.0.1:6379".into(),
            nats: "nats://127.0.0.1:4222".into(),
            logs: target.join("rolling-deploy"),
            json: None,
            stop_on_failure: false,
        };
        // `cargo bench` passes `--bench` to harness-less benches.
        let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
        while let Some(flag) = it.next() {
            let mut value = || it.next().unwrap_or_else(|| usage());
            let mut number = || value().parse::<u64>().unwrap_or_else(|_| usage());
            match flag.as_str() {
                "--runs" => o.runs = number() as usize,
                "--clients" => o.clients = number() as usize,
                "--events" => o.events = number() as usize,
                "--interval-ms" => o.interval = Duration::from_millis(number()),
                "--hogs" => o.hogs = number() as usize,
                "--restart-after" => o.restart_after = number() as usize,
                "--settle-ms" => o.settle = Duration::from_millis(number()),
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
        if o.runs == 0 || o.runs > 100 || o.clients == 0 || o.clients > 5000 || o.events > 100_000 {
            usage()
        }
        o
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What the harness needs and does not install.
fn preflight(o: &Options) -> Result<(), String> {
    let runs = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !runs("haproxy", "-v") {
        return Err("no `haproxy` on PATH (Debian: `apt-get install -y haproxy`)".into());
    }
    if !runs("node", "--version") {
        return Err("no `node` on PATH".into());
    }
    if !repo().join("tests/js/node_modules/eventsource").exists() {
        return Err("tests/js/node_modules is missing: run `npm ci` in tests/js".into());
    }
    if !o.node_binary.exists() {
        return Err(format!(
            "{} is missing: run `cargo build --release --features redis,nats --example node`",
            o.node_binary.display()
        ));
    }
    for feature in ["redis", "nats"] {
        if !supports(&o.node_binary, feature) {
            return Err(format!(
                "{} lacks `{feature}`: run `cargo build --release --features redis,nats --example node`",
                o.node_binary.display()
            ));
        }
    }
    let built = mtime(&o.node_binary);
    let newest = ["src", "examples"]
        .iter()
        .filter_map(|d| newest_mtime(&repo().join(d)))
        .max();
    if let (Some(built), Some(newest)) = (built, newest) {
        if newest > built {
            return Err(format!(
                "{} is older than the sources: run `cargo build --release --features redis,nats --example node`",
                o.node_binary.display()
            ));
        }
    }
    for (backend, url) in [(Backend::Redis, &o.redis), (Backend::JetStream, &o.nats)] {
        if o.backends.contains(&backend) {
            let addr = host_port(url)?;
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .map_err(|e| format!("{} at {url}: {e}", backend.name()))?;
        }
    }
    Ok(())
}

fn host_port(url: &str) -> Result<SocketAddr, String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .map_err(|e| format!("{url}: not HOST:PORT ({e})"))
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).ok()?.modified().ok()
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            mtime(&path)
        };
        newest = newest.max(t);
    }
    newest
}

/// Whether `binary` was built with the broker `feature` (as
/// `tests/support/process.rs` tells): given an invalid setting for that
/// broker, such a build fails on the setting, without network I/O.
fn supports(binary: &Path, feature: &str) -> bool {
    let args: &[&str] = match feature {
        "redis" => &["--broker", "redis://[::1"],
        _ => &[
            "--broker",
            "nats://127.0.0.1:1",
            "--nats-prefix",
            "not valid",
        ],
    };
    match Command::new(binary)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("support")
        }
        Err(_) => false,
    }
}

/// A loopback port free right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn elapsed_ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// One HTTP/1.1 exchange (`Connection: close`): the status and the body.
/// `Err((sent, reason))`: `sent` tells whether the whole request was
/// written (a publish may then have happened).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), (bool, String)> {
    let mut tcp = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .map_err(|e| (false, format!("connect: {e}")))?;
    let _ = tcp.set_read_timeout(Some(HTTP_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(HTTP_TIMEOUT));
    let _ = tcp.set_nodelay(true);
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes())
        .map_err(|e| (false, format!("write: {e}")))?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response)
        .map_err(|e| (true, format!("read: {e}")))?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            (
                true,
                format!("no status line in {:?}", truncate(&text, 200)),
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A log file every process of a run appends to.
fn log_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
}

fn log_line(path: &Path, line: &str) {
    let _ = writeln!(log_file(path), "{line}");
}

/// The processes of one run, stopped (SIGKILL) and reaped on drop.
#[derive(Default)]
struct Procs {
    nodes: Vec<Option<Child>>,
    others: Vec<Child>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for child in self
            .nodes
            .iter_mut()
            .flatten()
            .chain(self.others.iter_mut())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct NodeSpec {
    binary: PathBuf,
    backend: Backend,
    broker: String,
    prefix: String,
}

impl NodeSpec {
    /// Starts node `id` on `port` and waits for its `listening on` line;
    /// stdout and stderr go to `log`.
    fn start(&self, id: &str, port: u16, log: &Path) -> Result<Child, String> {
        log_line(
            log,
            &format!("=== harness: starting {id} on port {port} at {}", stamp()),
        );
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--node-id", id])
            .args(["--broker", &self.broker])
            // Long enough for the run, short enough to clean up after itself.
            .args(["--history-age", "900"]);
        match self.backend {
            Backend::Redis => cmd.args(["--redis-prefix", &self.prefix, "--history", "redis"]),
            Backend::JetStream => {
                cmd.args(["--nats-prefix", &self.prefix, "--history", "jetstream"])
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file(log)))
            .spawn()
            .map_err(|e| format!("spawn {id}: {e}"))?;
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let log_path = log.to_path_buf();
        std::thread::spawn(move || {
            let mut file = log_file(&log_path);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("listening on ") {
                    let _ = tx.send(());
                }
                let _ = writeln!(file, "{line}");
            }
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(()) => Ok(child),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                Err(format!(
                    "{id} did not print `listening on` within {START_TIMEOUT:?} (exit {status:?}); see {}",
                    log.display()
                ))
            }
        }
    }
}

fn stamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

fn haproxy_config(lb: u16, stats: u16, ports: &[u16]) -> String {
    let mut servers = String::new();
    for (i, port) in ports.iter().enumerate() {
        servers.push_str(&format!("    server n{i} 127.0.0.1:{port} check\n"));
    }
    format!(
        "global
    maxconn 8192
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 10m
    timeout server 10m
    timeout tunnel 10m
    timeout http-request 10s
    timeout queue 5s
    retries 3
    option redispatch 1

frontend fe
    bind 127.0.0.1:{lb}
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 500ms fall 1 rise 2
{servers}
listen stats
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /stats
"
    )
}

/// Each node's status as HAProxy sees it (`UP`, `DOWN`, …).
fn haproxy_status(stats: SocketAddr) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Ok((200, csv)) = http(stats, "GET", "/stats;csv", "") {
        for line in csv.lines() {
            let cols: Vec<&str> = line.split(',').collect();
            if cols.len() > 17 && cols[0] == "nodes" && cols[1].starts_with('n') {
                out.insert(cols[1].to_owned(), cols[17].to_owned());
            }
        }
    }
    out
}

/// Waits until HAProxy sees `node` (all nodes for `None`) in `want`.
fn wait_status(stats: SocketAddr, node: Option<&str>, want: &str) -> Result<u64, String> {
    let started = Instant::now();
    loop {
        let status = haproxy_status(stats);
        let ok = match node {
            Some(n) => status.get(n).is_some_and(|s| s == want),
            None => status.len() == NODES && status.values().all(|s| s == want),
        };
        if ok {
            return Ok(elapsed_ms(started));
        }
        if started.elapsed() > UP_TIMEOUT {
            return Err(format!(
                "HAProxy did not see {} {want} within {UP_TIMEOUT:?}: {status:?}",
                node.unwrap_or("every node")
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
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
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    closed: u64,
    not_ended: u64,
    reconnects: u64,
    refused: u64,
    resets: u64,
    gaps: u64,
    publish_retries: usize,
    publish_ambiguous: usize,
    /// HAProxy: times it marked a node DOWN, and its answers of 500 and
    /// above to `/events` and to `/publish` (status and termination flags).
    lb_down: usize,
    lb_events_5xx: BTreeMap<String, usize>,
    lb_publish_5xx: BTreeMap<String, usize>,
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
        self.error.is_none()
            && self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.closed == 0
            && self.not_ended == 0
            && self.resets == 0
            && self.unpublished == 0
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
            let mut result = run_once(&o, backend, run, &dir);
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
    print_table(&o, &results);
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
    if results.iter().all(RunResult::ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_once(o: &Options, backend: Backend, run: usize, dir: &Path) -> RunResult {
    let mut result = RunResult {
        backend: backend.name(),
        run,
        ..RunResult::default()
    };
    let tag = format!("{}_{run}_{}", std::process::id(), stamp().replace('.', ""));
    let spec = NodeSpec {
        binary: o.node_binary.clone(),
        backend,
        broker: match backend {
            Backend::Redis => o.redis.clone(),
            Backend::JetStream => o.nats.clone(),
        },
        prefix: match backend {
            Backend::Redis => format!("rolling:{tag}:"),
            Backend::JetStream => format!("rolling_{tag}"),
        },
    };
    let mut procs = Procs::default();
    if let Err(e) = run_inner(o, &spec, dir, &mut procs, &mut result) {
        result.error = Some(e);
    }
    drop(procs);
    read_haproxy_log(&dir.join("haproxy.log"), &mut result);
    cleanup(o, &spec);
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
    for _ in 0..o.hogs {
        let hog = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("hog: {e}"))?;
        procs.others.push(hog);
    }

    let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let node_logs: Vec<PathBuf> = (0..NODES).map(|i| dir.join(format!("n{i}.log"))).collect();
    for i in 0..NODES {
        let child = spec.start(&format!("n{i}"), ports[i], &node_logs[i])?;
        procs.nodes.push(Some(child));
    }

    let (lb_port, stats_port) = (free_port(), free_port());
    let lb = SocketAddr::from(([127, 0, 0, 1], lb_port));
    let stats = SocketAddr::from(([127, 0, 0, 1], stats_port));
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(lb_port, stats_port, &ports))
        .map_err(|e| format!("haproxy.cfg: {e}"))?;
    let haproxy_log = dir.join("haproxy.log");
    let haproxy = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file(&haproxy_log)))
        .stderr(Stdio::from(log_file(&haproxy_log)))
        .spawn()
        .map_err(|e| format!("haproxy: {e}"))?;
    procs.others.push(haproxy);
    wait_status(stats, None, "UP")?;

    // The clients, all connected (greeted) before the first publish.
    let url = format!("http://{lb}/events?topic={TOPIC}");
    let client_limit = (o.interval * o.events as u32).as_secs() + 180;
    let mut clients = Command::new("node")
        .arg(repo().join("tests/js/rolling_clients.mjs"))
        .arg(&url)
        .arg(o.clients.to_string())
        .arg(o.events.to_string())
        .arg(client_limit.to_string())
        .current_dir(repo().join("tests/js"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file(&dir.join("clients.stderr"))))
        .spawn()
        .map_err(|e| format!("node: {e}"))?;
    // Closing stdin asks the clients for their summary.
    let client_stdin: Option<ChildStdin> = clients.stdin.take();
    let stdout = clients.stdout.take().expect("stdout");
    procs.others.push(clients);
    let (lines_tx, lines) = mpsc::channel::<Value>();
    let clients_log = dir.join("clients.jsonl");
    std::thread::spawn(move || {
        let mut file = log_file(&clients_log);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = lines_tx.send(v);
            }
        }
    });
    let ready = lines
        .recv_timeout(READY_TIMEOUT)
        .map_err(|_| format!("the clients did not all connect within {READY_TIMEOUT:?}"))?;
    if ready["type"] != "ready" {
        result.summary = ready.clone();
        return Err(format!("clients: {ready}"));
    }

    // The rolling deploy, beside the publisher.
    let published = Arc::new(AtomicUsize::new(0));
    let publishing = Arc::new(AtomicBool::new(true));
    let nodes = Arc::new(Mutex::new(std::mem::take(&mut procs.nodes)));
    let deploy = {
        let nodes = nodes.clone();
        let published = published.clone();
        let publishing = publishing.clone();
        let spec = NodeSpec {
            binary: spec.binary.clone(),
            backend: spec.backend,
            broker: spec.broker.clone(),
            prefix: spec.prefix.clone(),
        };
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
        if let Err(e) = publish(lb, &n.to_string(), &publish_log, result) {
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
    publish(lb, "end", &publish_log, result)?;

    // The clients report once every one has seen "end" (or gave up).
    let deadline = Instant::now() + SUMMARY_TIMEOUT;
    let summary = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(v) if v["type"] == "summary" => break v,
            Ok(_) => continue,
            Err(_) => {
                // Ask for what they have.
                drop(client_stdin);
                match lines.recv_timeout(Duration::from_secs(10)) {
                    Ok(v) if v["type"] == "summary" => break v,
                    _ => return Err("the clients gave no summary".into()),
                }
            }
        }
    };
    let n = |k: &str| summary[k].as_u64().unwrap_or(0);
    result.lost = n("lost");
    result.duplicated = n("duplicated");
    result.out_of_order = n("out_of_order");
    result.closed = n("closed");
    result.not_ended = n("clients").saturating_sub(n("ended"));
    result.reconnects = n("reconnects");
    result.refused = n("refused");
    result.resets = n("resets");
    result.gaps = n("gaps");
    result.summary = summary;
    Ok(())
}

/// What HAProxy's log tells of the run: DOWN transitions and 5xx answers.
fn read_haproxy_log(path: &Path, result: &mut RunResult) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        if line.contains(" is DOWN") {
            result.lb_down += 1;
            continue;
        }
        // `client [date] fe backend/server timers status bytes - - flags ...`
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 || fields[2] != "fe" {
            continue;
        }
        let Ok(status) = fields[5].parse::<u16>() else {
            continue;
        };
        if status < 500 {
            continue;
        }
        let key = format!("{status} {}", fields[9]);
        let map = if line.contains("GET /events") {
            &mut result.lb_events_5xx
        } else {
            &mut result.lb_publish_5xx
        };
        *map.entry(key).or_default() += 1;
    }
}

/// Publishes `data` through the balancer, retrying a refused or failed
/// attempt (100 ms apart) as a publisher would.
fn publish(lb: SocketAddr, data: &str, log: &Path, result: &mut RunResult) -> Result<(), String> {
    let path = format!("/publish?topic={TOPIC}");
    let mut last = String::new();
    for attempt in 1..=PUBLISH_ATTEMPTS {
        match http(lb, "POST", &path, data) {
            Ok((202, _)) => {
                if attempt > 1 {
                    log_line(
                        log,
                        &format!("{} {data}: accepted at attempt {attempt}", stamp()),
                    );
                }
                return Ok(());
            }
            Ok((status, body)) => {
                last = format!("HTTP {status} {}", truncate(body.trim(), 200));
            }
            Err((sent, reason)) => {
                if sent {
                    // The node may have taken it before the connection broke.
                    result.publish_ambiguous += 1;
                }
                last = format!("{reason} (request sent: {sent})");
            }
        }
        result.publish_retries += 1;
        log_line(
            log,
            &format!("{} {data}: attempt {attempt}: {last}", stamp()),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "event {data} not published after {PUBLISH_ATTEMPTS} attempts: {last}"
    ))
}

/// Removes what the run left in the broker (the keys expire anyway).
fn cleanup(o: &Options, spec: &NodeSpec) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return,
    };
    let done = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            match spec.backend {
                Backend::Redis => {
                    let client =
                        redis::Client::open(o.redis.as_str()).map_err(|e| e.to_string())?;
                    let mut conn = client
                        .get_multiplexed_async_connection()
                        .await
                        .map_err(|e| e.to_string())?;
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{}*", spec.prefix))
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| e.to_string())?;
                    if !keys.is_empty() {
                        let _: redis::Value = redis::cmd("DEL")
                            .arg(keys)
                            .query_async(&mut conn)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    Ok::<(), String>(())
                }
                Backend::JetStream => {
                    let client = async_nats::connect(o.nats.as_str())
                        .await
                        .map_err(|e| e.to_string())?;
                    let js = async_nats::jetstream::new(client);
                    let name = format!("{}_HISTORY", spec.prefix.to_uppercase());
                    js.delete_stream(&name).await.map_err(|e| e.to_string())?;
                    Ok(())
                }
            }
        })
        .await
    });
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("[rolling] cleanup of {}: {e}", spec.prefix),
        Err(_) => eprintln!("[rolling] cleanup of {}: timed out", spec.prefix),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
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
        r.lost,
        r.duplicated,
        r.out_of_order,
        r.closed,
        r.not_ended,
        r.reconnects,
        r.refused,
        r.resets,
        r.gaps,
        r.publish_retries,
        r.publish_ambiguous,
        r.unpublished,
        r.lb_down,
        r.lb_events_5xx,
        r.lb_publish_5xx,
        r.publishing_s,
        r.total_s,
        loadavg(),
        restarts.join(", "),
        r.error.as_ref().map(|e| format!(" | error: {e}")).unwrap_or_default(),
    );
    if !r.ok() {
        println!("[rolling]   logs: {}", r.logs.display());
        if let Some(failed) = r.summary["failed"].as_array() {
            for f in failed.iter().take(3) {
                println!("[rolling]   client: {f}");
            }
        }
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
            r.lost,
            r.duplicated,
            r.out_of_order,
            r.closed,
            r.not_ended,
            r.reconnects,
            r.refused,
            r.publish_retries,
            r.lb_down,
            r.lb_events_5xx.values().sum::<usize>(),
            r.lb_publish_5xx.values().sum::<usize>(),
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
        "backend": r.backend, "run": r.run, "ok": r.ok(), "lost": r.lost,
        "duplicated": r.duplicated, "out_of_order": r.out_of_order, "closed": r.closed,
        "not_ended": r.not_ended, "reconnects": r.reconnects, "refused": r.refused,
        "resets": r.resets, "gaps": r.gaps, "publish_retries": r.publish_retries,
        "publish_ambiguous": r.publish_ambiguous, "unpublished": r.unpublished,
        "lb_down": r.lb_down, "lb_events_5xx": r.lb_events_5xx, "lb_publish_5xx": r.lb_publish_5xx,
        "publishing_s": r.publishing_s, "total_s": r.total_s, "error": r.error,
        "restarts": r.restarts.iter().map(|x| json!({
            "exit_ms": x.exit_ms, "exit_status": x.exit_status, "start_ms": x.start_ms,
            "up_ms": x.up_ms, "published_at_sigterm": x.published_at_sigterm,
        })).collect::<Vec<_>>(),
        "logs": r.logs.display().to_string(),
        "summary": r.summary,
    })
}
