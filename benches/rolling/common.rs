//! What the rolling-deploy and scale-out scenarios of
//! `benches/rolling_deploy.rs` share: the demo nodes, HAProxy and its stats,
//! the Node.js EventSource clients, the publisher, and the clean-up.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::Options;

pub(crate) const TOPIC: &str = "rolling";
pub(crate) const NODES: usize = 3;
/// Longest a node may take to print `listening on`.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a node may take to exit after SIGTERM (it drains within ~2 s).
pub(crate) const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest HAProxy may take to see a node UP (`rise 2` × 500 ms, loaded).
pub(crate) const UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the clients may take to connect, all of them.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest one HTTP exchange of the harness may take.
pub(crate) const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per publish, 100 ms apart, before the event counts as unpublished.
pub(crate) const PUBLISH_ATTEMPTS: usize = 50;
/// Longest the clients may take, after "end" is published, to report.
pub(crate) const SUMMARY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Backend {
    Redis,
    JetStream,
}

impl Backend {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Redis => "redis",
            Backend::JetStream => "jetstream",
        }
    }
}

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What the harness needs and does not install.
pub(crate) fn preflight(o: &Options) -> Result<(), String> {
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

pub(crate) fn host_port(url: &str) -> Result<SocketAddr, String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .map_err(|e| format!("{url}: not HOST:PORT ({e})"))
}

pub(crate) fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).ok()?.modified().ok()
}

pub(crate) fn newest_mtime(dir: &Path) -> Option<SystemTime> {
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
pub(crate) fn supports(binary: &Path, feature: &str) -> bool {
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
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub(crate) fn elapsed_ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// One HTTP/1.1 exchange (`Connection: close`): the status and the body.
/// `Err((sent, reason))`: `sent` tells whether the whole request was
/// written (a publish may then have happened).
pub(crate) fn http(
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

pub(crate) fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A log file every process of a run appends to.
pub(crate) fn log_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
}

pub(crate) fn log_line(path: &Path, line: &str) {
    let _ = writeln!(log_file(path), "{line}");
}

/// The processes of one run, stopped (SIGKILL) and reaped on drop.
#[derive(Default)]
pub(crate) struct Procs {
    pub(crate) nodes: Vec<Option<Child>>,
    pub(crate) others: Vec<Child>,
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

#[derive(Clone)]
pub(crate) struct NodeSpec {
    pub(crate) binary: PathBuf,
    pub(crate) backend: Backend,
    pub(crate) broker: String,
    pub(crate) prefix: String,
    /// More flags for every node (`--max-lifetime 30`).
    pub(crate) extra: Vec<String>,
}

impl NodeSpec {
    /// The nodes of run `run` on `backend`, with a broker prefix of their
    /// own and `extra` flags.
    pub(crate) fn for_run(
        o: &Options,
        backend: Backend,
        run: usize,
        mut extra: Vec<String>,
    ) -> NodeSpec {
        if let Some(n) = o.history_max {
            extra.extend(["--history-max".to_owned(), n.to_string()]);
        }
        let tag = format!("{}_{run}_{}", std::process::id(), stamp().replace('.', ""));
        NodeSpec {
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
            extra,
        }
    }

    /// Starts node `id` on `port` and waits for its `listening on` line;
    /// stdout and stderr go to `log`.
    pub(crate) fn start(&self, id: &str, port: u16, log: &Path) -> Result<Child, String> {
        log_line(
            log,
            &format!("=== harness: starting {id} on port {port} at {}", stamp()),
        );
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--node-id", id])
            .args(["--broker", &self.broker])
            // Long enough for the run, short enough to clean up after itself.
            .args(["--history-age", "900"])
            .args(&self.extra);
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

pub(crate) fn stamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

pub(crate) fn haproxy_config(lb: u16, stats: u16, ports: &[u16]) -> String {
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
pub(crate) fn haproxy_status(stats: SocketAddr) -> BTreeMap<String, String> {
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
pub(crate) fn wait_status(
    stats: SocketAddr,
    node: Option<&str>,
    want: &str,
) -> Result<u64, String> {
    let what = format!("{} {want}", node.unwrap_or("every node"));
    wait_haproxy(stats, &what, |status| match node {
        Some(n) => status.get(n).is_some_and(|s| s == want),
        None => status.len() == NODES && status.values().all(|s| s == want),
    })
}

/// Waits (at most [`UP_TIMEOUT`]) until HAProxy's view of the nodes
/// satisfies `ok`; the milliseconds it took.
pub(crate) fn wait_haproxy(
    stats: SocketAddr,
    what: &str,
    ok: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Result<u64, String> {
    let started = Instant::now();
    loop {
        let status = haproxy_status(stats);
        if ok(&status) {
            return Ok(elapsed_ms(started));
        }
        if started.elapsed() > UP_TIMEOUT {
            return Err(format!(
                "HAProxy did not see {what} within {UP_TIMEOUT:?}: {status:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `n` CPU hogs (`sh -c 'while :; do :; done'`) until the run ends.
pub(crate) fn start_hogs(n: usize, procs: &mut Procs) -> Result<(), String> {
    for _ in 0..n {
        let hog = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("hog: {e}"))?;
        procs.others.push(hog);
    }
    Ok(())
}

/// HAProxy in front of `ports` (servers `n0`, `n1`, …), logging to
/// `dir/haproxy.log`: its frontend and its stats listener.
pub(crate) fn start_haproxy(
    dir: &Path,
    ports: &[u16],
    procs: &mut Procs,
) -> Result<(SocketAddr, SocketAddr), String> {
    let (lb_port, stats_port) = (free_port(), free_port());
    let lb = SocketAddr::from(([127, 0, 0, 1], lb_port));
    let stats = SocketAddr::from(([127, 0, 0, 1], stats_port));
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(lb_port, stats_port, ports))
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
    Ok((lb, stats))
}

/// The Node.js EventSource clients (`tests/js/rolling_clients.mjs`).
pub(crate) struct Clients {
    /// Closing it asks the clients for their summary.
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
}

impl Clients {
    /// Starts `n` clients on `url` expecting the events `"0"`..`"events-1"`
    /// (or fewer, when `"end N"` says so) for at most `limit_s` seconds,
    /// and waits until every one has had its greeting.
    pub(crate) fn start(
        url: &str,
        n: usize,
        events: usize,
        limit_s: u64,
        dir: &Path,
        procs: &mut Procs,
    ) -> Result<Clients, String> {
        let mut child = Command::new("node")
            .arg(repo().join("tests/js/rolling_clients.mjs"))
            .arg(url)
            .arg(n.to_string())
            .arg(events.to_string())
            .arg(limit_s.to_string())
            .current_dir(repo().join("tests/js"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file(&dir.join("clients.stderr"))))
            .spawn()
            .map_err(|e| format!("node: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        procs.others.push(child);
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
            return Err(format!("clients: {ready}"));
        }
        Ok(Clients { stdin, lines })
    }

    /// Their summary, once every client has seen "end" (or gave up); after
    /// [`SUMMARY_TIMEOUT`] they are asked for what they have.
    pub(crate) fn summary(mut self) -> Result<Value, String> {
        let deadline = Instant::now() + SUMMARY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["type"] == "summary" => return Ok(v),
                Ok(_) => continue,
                Err(_) => {
                    // Ask for what they have.
                    drop(self.stdin.take());
                    return match self.lines.recv_timeout(Duration::from_secs(10)) {
                        Ok(v) if v["type"] == "summary" => Ok(v),
                        _ => Err("the clients gave no summary".into()),
                    };
                }
            }
        }
    }
}

/// The clients' summary, in numbers.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) out_of_order: u64,
    /// Clients whose EventSource gave up (`readyState` CLOSED).
    pub(crate) closed: u64,
    /// Clients that never saw "end".
    pub(crate) not_ended: u64,
    pub(crate) reconnects: u64,
    pub(crate) refused: u64,
    pub(crate) resets: u64,
    pub(crate) gaps: u64,
}

impl Tally {
    pub(crate) fn of(summary: &Value) -> Tally {
        let n = |k: &str| summary[k].as_u64().unwrap_or(0);
        Tally {
            lost: n("lost"),
            duplicated: n("duplicated"),
            out_of_order: n("out_of_order"),
            closed: n("closed"),
            not_ended: n("clients").saturating_sub(n("ended")),
            reconnects: n("reconnects"),
            refused: n("refused"),
            resets: n("resets"),
            gaps: n("gaps"),
        }
    }

    /// Every client got every event once, in order, and never gave up.
    pub(crate) fn exactly_once(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.closed == 0
            && self.not_ended == 0
            && self.resets == 0
    }
}

/// What HAProxy's log tells of a run.
#[derive(Debug, Default)]
pub(crate) struct LbLog {
    /// Times HAProxy marked a node DOWN.
    pub(crate) down: usize,
    /// Its answers of 500 and above to `/events` and to `/publish`
    /// (status and termination flags → count).
    pub(crate) events_5xx: BTreeMap<String, usize>,
    pub(crate) publish_5xx: BTreeMap<String, usize>,
}

pub(crate) fn read_haproxy_log(path: &Path) -> LbLog {
    let mut result = LbLog::default();
    let Ok(text) = std::fs::read_to_string(path) else {
        return result;
    };
    for line in text.lines() {
        if line.contains(" is DOWN") {
            result.down += 1;
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
            &mut result.events_5xx
        } else {
            &mut result.publish_5xx
        };
        *map.entry(key).or_default() += 1;
    }
    result
}

/// Publishes `data` through the balancer, retrying a refused or failed
/// attempt (100 ms apart) as a publisher would.
/// Retries and broken exchanges of the publisher.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PublishCounts {
    /// Attempts after the first, all events together.
    pub(crate) retries: usize,
    /// Attempts whose request was sent but whose answer never came.
    pub(crate) ambiguous: usize,
}

pub(crate) fn publish(
    lb: SocketAddr,
    data: &str,
    log: &Path,
    result: &mut PublishCounts,
) -> Result<(), String> {
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
                    result.ambiguous += 1;
                }
                last = format!("{reason} (request sent: {sent})");
            }
        }
        result.retries += 1;
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
pub(crate) fn cleanup(spec: &NodeSpec) {
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
                        redis::Client::open(spec.broker.as_str()).map_err(|e| e.to_string())?;
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
                    let client = async_nats::connect(spec.broker.as_str())
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

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

/// After a failed run: where its logs are, and the first clients' failures
/// from the clients' summary.
pub(crate) fn print_failures(tag: &str, logs: &Path, summary: &serde_json::Value) {
    println!("[{tag}]   logs: {}", logs.display());
    if let Some(failed) = summary["failed"].as_array() {
        for f in failed.iter().take(3) {
            println!("[{tag}]   client: {f}");
        }
    }
}
