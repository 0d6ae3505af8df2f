//! Load harness: real SSE connections over loopback TCP against our crate
//! and the peers a user would pick instead, in one run.
//!
//! Run by hand (never in CI), after building the servers it drives:
//!
//! ```sh
//! cargo build --release --features hyper,redis,nats \
//!     --example node --example bench_hyper_node --example peer_axum_broadcast
//! cargo bench --features hyper,redis,nats --bench load -- [--install-pushpin] \
//!     [--parts idle,fanout,latency,interest,scale] [--quick] [--json target/load.json]
//! ```
//!
//! Targets of the single-node parts (idle memory, fan-out):
//!
//! * `ours-axum`: the demo node (`examples/node.rs`, axum adapter, memory bus);
//! * `ours-hyper`: `benches/peers/hyper_node.rs` (hyper adapter, memory bus);
//! * `axum-broadcast`: `benches/peers/axum_broadcast.rs`, axum 0.8 `Sse` +
//!   `KeepAlive` + `tokio::sync::broadcast`, written the way users write it;
//! * `pushpin`: the Debian package (1.36), with its own zurl and a GRIP
//!   origin served by this harness; installed with `apt-get` only when
//!   `--install-pushpin` is given, otherwise reported as absent.
//!
//! Every target is driven by the same client: a child process of this
//! binary (`load client`) that opens the connections with hyper's HTTP/1.1
//! client and parses each stream with `eventsource-stream`. The harness
//! reports the client's own CPU beside the server's.
//!
//! Parts:
//!
//! * **idle**: server RSS (`VmRSS` of the whole process tree) with no
//!   client, then after 1k, 10k and 19k idle connections (this machine's
//!   hard limit is 20 000 open files per process); bytes per connection.
//! * **fanout** (at 10k connections): every target up at once, then 3
//!   rounds in which each target in turn (the order rotating) gets one
//!   publish to every connection, 100 publishes one at a time (each waiting
//!   for its response) and a burst of 100 concurrent publishes. Time from
//!   the first publish call until every client has every event,
//!   deliveries/s, CPU of server and client per delivery; medians.
//! * **latency**: demo nodes A and B on Redis and on NATS; publish on B over
//!   HTTP at a fixed rate (open loop), receipt by an SSE client on A;
//!   p50/p90/p99/max against the raw broker round trip (publish → subscriber
//!   in this process) measured at the same rates in the same run, and a
//!   no-op HTTP call to B (`GET /healthz`) at the same rate: the HTTP hop's
//!   own cost, which ours pays and raw does not.
//! * **interest**: 6 demo nodes on one Redis, user-targeted traffic
//!   published on node 0; bus messages received per node (`/stats`
//!   `bus_in`), against the same number of messages on the broadcast channel
//!   (what a node that listens to everything receives).
//! * **scale**: the same 6 nodes, one client process each, up to 100k
//!   connections in total; total server RSS and a broadcast reaching all.
//! * **topics** (not in the default parts): connections with many topics
//!   (`--topic-conns` connections × 256 topics of 230 bytes, every name its
//!   own), opened in this process on a hub over the memory bus, Redis and
//!   NATS (those two when reachable); RSS of this process before and after,
//!   bytes per connection and per subscription beyond the names' bytes.
//!   In process because such a request line (60 KB) is longer than the
//!   HTTP/1 driver's head limit.
//!
//! Every loop is bounded in count and in time; everything is on 127.0.0.1.

#![allow(missing_docs)]

mod common;
#[path = "load/topics.rs"]
mod topics;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{field, payload, pct};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Bytes of event data in every measured event.
const DATA_SIZE: usize = 100;
/// `--client-parser`: `lean` (default) or `eventsource-stream`.
static CLIENT_PARSER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Longest an HTTP call of the harness (publish, `/stats`) may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client may take to answer a command (`open 1000` included:
/// each connection gives up after 30 s).
const CLIENT_REPLY_TIMEOUT: Duration = Duration::from_secs(180);

/// Alternating slices per variant in a latency measurement.
const LAT_SLICES: u64 = 5;

/// Connections a client opens at once.
const OPEN_IN_FLIGHT: usize = 256;

fn main() {
    // `cargo bench` passes `--bench` to harness-less benches.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let nofile = raise_nofile();
    let client_mode = args.first().map(String::as_str) == Some("client");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if client_mode {
        rt.block_on(client::run(&args[1..]));
    } else if args.first().map(String::as_str) == Some(topics::CHILD) {
        rt.block_on(topics::child(&args[1..]));
    } else {
        let opts = Options::parse(&args);
        rt.block_on(run(opts, nofile));
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; children inherit it.
fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(1 << 20);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: limit.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(hard)
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn progress(msg: &str) {
    eprint!("\r\x1b[2K[load] {msg}");
}

fn say(msg: &str) {
    eprintln!("\r\x1b[2K[load] {msg}");
}

// ---------------------------------------------------------------------------
// Options

#[derive(Clone)]
struct Options {
    parts: Vec<String>,
    targets: Vec<String>,
    install_pushpin: bool,
    json: PathBuf,
    sizes: Vec<usize>,
    fanout_conns: usize,
    fanout_events: usize,
    burst: usize,
    bursts: usize,
    lat_secs: f64,
    rates: Vec<u64>,
    scale_total: usize,
    scale_nodes: usize,
    interest_users: usize,
    interest_events: usize,
    topic_conns: usize,
}

impl Options {
    fn parse(args: &[String]) -> Self {
        let quick = args.iter().any(|a| a == "--quick");
        let mut o = Options {
            parts: ["idle", "fanout", "latency", "interest", "scale"]
                .map(String::from)
                .to_vec(),
            targets: ["ours-axum", "ours-hyper", "axum-broadcast", "pushpin"]
                .map(String::from)
                .to_vec(),
            install_pushpin: false,
            json: PathBuf::from("target/load.json"),
            sizes: if quick {
                vec![200, 1000]
            } else {
                vec![1000, 10_000, 19_000]
            },
            fanout_conns: if quick { 1000 } else { 10_000 },
            fanout_events: if quick { 20 } else { 100 },
            burst: if quick { 20 } else { 100 },
            bursts: 3,
            lat_secs: if quick { 1.0 } else { 5.0 },
            rates: vec![1000, 10_000],
            scale_total: if quick { 3000 } else { 100_000 },
            scale_nodes: 6,
            interest_users: if quick { 20 } else { 100 },
            interest_events: if quick { 120 } else { 600 },
            topic_conns: if quick { 20 } else { 200 },
        };
        let mut it = args.iter();
        let list = |v: Option<&String>| -> Vec<String> {
            v.map(|v| v.split(',').map(String::from).collect())
                .unwrap_or_default()
        };
        let nums = |v: Option<&String>| -> Vec<usize> {
            v.map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
                .unwrap_or_default()
        };
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => {}
                "--install-pushpin" => o.install_pushpin = true,
                "--client-parser" => {
                    let _ = CLIENT_PARSER.set(it.next().cloned().unwrap_or_default());
                }
                "--parts" => o.parts = list(it.next()),
                "--targets" => o.targets = list(it.next()),
                "--json" => o.json = it.next().map(PathBuf::from).unwrap_or(o.json),
                "--sizes" => o.sizes = nums(it.next()),
                "--fanout-conns" => {
                    o.fanout_conns = nums(it.next()).first().copied().unwrap_or(o.fanout_conns)
                }
                "--scale-total" => {
                    o.scale_total = nums(it.next()).first().copied().unwrap_or(o.scale_total)
                }
                "--topic-conns" => {
                    o.topic_conns = nums(it.next()).first().copied().unwrap_or(o.topic_conns)
                }
                "--lat-secs" => {
                    o.lat_secs = it.next().and_then(|v| v.parse().ok()).unwrap_or(o.lat_secs)
                }
                other => {
                    eprintln!(
                        "unknown argument {other}; see the docs at the top of benches/load.rs"
                    );
                    std::process::exit(2);
                }
            }
        }
        o
    }
}

// ---------------------------------------------------------------------------
// /proc: RSS and CPU of process trees

fn children_of(root: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse().ok()))
            {
                all.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// Fields of `/proc/PID/stat` after the command name: [state, ppid, ...].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    Some(after.split_whitespace().map(String::from).collect())
}

fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// User + system CPU seconds of `pids`.
fn cpu_secs(pids: &[u32]) -> f64 {
    let hz = rustix::param::clock_ticks_per_second() as f64;
    pids.iter()
        .filter_map(|pid| {
            let f = stat_fields(*pid)?;
            // utime and stime are fields 14 and 15 of stat; 12 and 13 here.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum::<u64>() as f64
        / hz
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn examples_dir() -> PathBuf {
    // target/release/deps/load-HASH → target/release/examples
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|p| p.join("examples"))
        .expect("target dir")
}

// ---------------------------------------------------------------------------
// Servers

struct Server {
    name: String,
    children: Vec<Child>,
    /// Where clients connect.
    addr: SocketAddr,
    /// Where events are published (`POST publish_path`).
    publish: Arc<Http>,
    publish_style: PublishStyle,
    _origin: Option<tokio::task::JoinHandle<()>>,
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PublishStyle {
    /// `POST /publish?topic=T`, the body is the data (ours, axum baseline).
    Body,
    /// Pushpin's `POST /publish/` with a JSON item list.
    Pushpin,
}

impl Server {
    fn pids(&self) -> Vec<u32> {
        self.children
            .iter()
            .filter_map(Child::id)
            .flat_map(children_of)
            .collect()
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(&self.pids())
    }

    fn cpu_secs(&self) -> f64 {
        cpu_secs(&self.pids())
    }

    /// Publishes `data` to topic `topic`; true on success.
    async fn publish(&self, topic: &str, data: String) -> bool {
        match self.publish_style {
            PublishStyle::Body => self
                .publish
                .post(&format!("/publish?topic={topic}"), Bytes::from(data))
                .await
                .is_some_and(|s| s.is_success()),
            PublishStyle::Pushpin => {
                let body = json!({"items": [{"channel": topic,
                    "formats": {"http-stream": {"content": format!("data: {data}\n\n")}}}]});
                self.publish
                    .post("/publish/", Bytes::from(body.to_string()))
                    .await
                    .is_some_and(|s| s.is_success())
            }
        }
    }

    async fn stop(mut self) {
        let pids = self.pids();
        for pid in pids.iter().rev() {
            if let Some(pid) = rustix::process::Pid::from_raw(*pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(3), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        for pid in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        if let Some(origin) = self._origin.take() {
            origin.abort();
        }
        if let Some(dir) = &self.dir {
            if std::env::var_os("SSE_LOAD_KEEP").is_none() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// Starts one of our binaries (or the axum baseline) and waits for its
/// `listening on` line.
async fn start_binary(name: &str, bin: &str, extra: &[String]) -> Result<Server, String> {
    let path = examples_dir().join(bin);
    if !path.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release --features hyper,redis,nats --example {bin}`",
            path.display()
        ));
    }
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = Command::new(&path)
        .arg("--listen")
        .arg(addr.to_string())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| format!("{bin} did not start in 10 s"))?
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    if !line.starts_with("listening on") {
        return Err(format!("{bin}: unexpected first line {line:?}"));
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server {
        name: name.to_owned(),
        children: vec![child],
        addr,
        publish: Http::new(addr),
        publish_style: PublishStyle::Body,
        _origin: None,
        dir: None,
    })
}

async fn start_target(name: &str, opts: &Options) -> Result<Server, String> {
    match name {
        "ours-axum" => start_binary(name, "node", &[]).await,
        "ours-hyper" => start_binary(name, "bench_hyper_node", &[]).await,
        "axum-broadcast" => start_binary(name, "peer_axum_broadcast", &[]).await,
        "pushpin" => pushpin::start(opts.install_pushpin).await,
        other => Err(format!("unknown target {other}")),
    }
}

mod pushpin {
    use super::*;

    fn on_path(bin: &str) -> bool {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).exists()))
    }

    /// The GRIP origin: every request is answered with a held stream on
    /// channel `t`.
    async fn origin(listener: TcpListener) {
        const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
Grip-Hold: stream\r\nGrip-Channel: t\r\nCache-Control: no-cache\r\nContent-Length: 0\r\n\r\n";
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(2048);
                let mut chunk = [0u8; 2048];
                loop {
                    let Ok(n) = tcp.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if tcp.write_all(RESPONSE).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }

    /// True if a GET on `addr` is answered with `200` headers within 2 s.
    async fn probe_stream(addr: SocketAddr) -> bool {
        let attempt = async {
            let mut tcp = TcpStream::connect(addr).await.ok()?;
            tcp.write_all(b"GET /events HTTP/1.1\r\nHost: probe\r\n\r\n")
                .await
                .ok()?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tcp.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Some(buf.starts_with(b"HTTP/1.1 200"))
        };
        tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    pub(super) async fn start(install: bool) -> Result<Server, String> {
        if !on_path("pushpin") || !on_path("zurl") {
            if !install {
                return Err("pushpin is ABSENT (not installed); pass --install-pushpin to install the Debian package with apt-get".into());
            }
            say("installing pushpin with apt-get");
            let status = Command::new("apt-get")
                .args(["install", "-y", "-qq", "pushpin"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .await
                .map_err(|e| format!("apt-get: {e}"))?;
            if !status.success() || !on_path("pushpin") {
                return Err("pushpin is ABSENT: `apt-get install pushpin` failed (try `apt-get update` first)".into());
            }
        }
        let dir = std::env::temp_dir().join(format!("sse-load-pushpin-{}", std::process::id()));
        for sub in ["run", "log", "zurl"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
        }
        let d = dir.display();
        let zurl = format!(
            "[General]\nin_spec=ipc://{d}/zurl/zurl-in\nin_stream_spec=ipc://{d}/zurl/zurl-in-stream\n\
out_spec=ipc://{d}/zurl/zurl-out\nin_req_spec=ipc://{d}/zurl/zurl-req\nipc_file_mode=660\n\
defpolicy=allow\nallow=\ndeny=\nmax_open_requests=20000\nbuffer_size=200000\ntimeout=600\n\
in_hwm=20000\nout_hwm=20000\n"
        );
        let internal = std::fs::read_to_string("/usr/lib/pushpin/internal.conf")
            .map_err(|e| format!("/usr/lib/pushpin/internal.conf: {e}"))?
            .replace("ipc:///var/run/zurl/", &format!("ipc://{d}/zurl/"));
        let origin_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let origin_port = origin_listener
            .local_addr()
            .map_err(|e| e.to_string())?
            .port();
        let (http, push_http, push_in, push_sub, command) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        // message_rate and message_hwm are raised far above Pushpin's
        // defaults (2500/s, 25000), which otherwise throttle and then drop
        // deliveries already at 1 000 connections.
        let conf = format!(
            "[global]\ninclude={d}/internal.conf\nrundir={d}/run\nipc_prefix=pushpin-\nport_offset=0\n\
stats_connection_ttl=120\n\n[runner]\nservices=condure,pushpin-proxy,pushpin-handler\nhttp_port={http}\n\
logdir={d}/log\nlog_level=1\nclient_buffer_size=8192\nclient_maxconn=20000\ncondure_bin=condure\n\n\
[proxy]\nroutesfile={d}/routes\ndebug=false\nauto_cross_origin=false\nsig_iss=pushpin\nsig_key=changeme\n\
updates_check=off\n\n[handler]\npush_in_spec=tcp://127.0.0.1:{push_in}\n\
push_in_sub_specs=tcp://127.0.0.1:{push_sub}\npush_in_sub_connect=false\npush_in_http_addr=127.0.0.1\n\
push_in_http_port={push_http}\npush_in_http_max_headers_size=10000\npush_in_http_max_body_size=10000000\n\
stats_spec=ipc://{d}/run/pushpin-stats\ncommand_spec=tcp://127.0.0.1:{command}\n\
message_rate=100000000\nmessage_hwm=100000000\nmessage_wait=5000\nid_cache_ttl=60\n\
connection_subscription_max=20\nsubscription_linger=60\nstats_subscription_ttl=60\n\
stats_report_interval=10\nstats_format=tnetstring\n"
        );
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
        };
        write("zurl.conf", &zurl)?;
        write("internal.conf", &internal)?;
        write("pushpin.conf", &conf)?;
        write("routes", &format!("* 127.0.0.1:{origin_port}\n"))?;
        let log = |name: &str| {
            std::fs::File::create(dir.join("log").join(name))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null())
        };
        let zurl = Command::new("zurl")
            .arg(format!("--config={d}/zurl.conf"))
            .stdout(log("zurl.out"))
            .stderr(log("zurl.err"))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("zurl: {e}"))?;
        let runner = Command::new("pushpin")
            .arg(format!("--config={d}/pushpin.conf"))
            .stdout(log("pushpin.out"))
            .stderr(log("pushpin.err"))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("pushpin: {e}"))?;
        let origin = tokio::spawn(origin(origin_listener));
        let addr = SocketAddr::from(([127, 0, 0, 1], http));
        let control = SocketAddr::from(([127, 0, 0, 1], push_http));
        let server = Server {
            name: "pushpin".into(),
            children: vec![runner, zurl],
            addr,
            publish: Http::new(control),
            publish_style: PublishStyle::Pushpin,
            _origin: Some(origin),
            dir: Some(dir.clone()),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(addr).await.is_ok() && TcpStream::connect(control).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                server.stop().await;
                return Err(format!(
                    "pushpin did not open ports {http}/{push_http} in 20 s (logs in {d}/log)"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The proxy, handler and zurl connect their sockets after the ports
        // open: wait until a stream is actually held.
        while !probe_stream(addr).await {
            if Instant::now() > deadline {
                server.stop().await;
                return Err(format!(
                    "pushpin did not hold a stream in 20 s (logs in {d}/log)"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(server)
    }
}

// ---------------------------------------------------------------------------
// HTTP publishing: a pool of keep-alive HTTP/1.1 connections

struct Http {
    addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Http {
    fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(Http {
            addr,
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn connect(&self) -> Option<SendRequest<Full<Bytes>>> {
        let tcp = TcpStream::connect(self.addr).await.ok()?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .ok()?;
        tokio::spawn(conn);
        Some(sender)
    }

    async fn request(&self, method: &str, path: &str, body: Bytes) -> Option<(StatusCode, Bytes)> {
        let pooled = self.idle.lock().ok().and_then(|mut v| v.pop());
        let mut sender = match pooled {
            Some(mut s) => match s.ready().await {
                Ok(()) => s,
                Err(_) => self.connect().await?,
            },
            None => self.connect().await?,
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .body(Full::new(body))
            .ok()?;
        // Bounded: a server that stops answering fails the call, it does
        // not hang the run.
        let exchange = async {
            let resp = sender.send_request(req).await.ok()?;
            let status = resp.status();
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            Some((status, body))
        };
        let (status, body) = tokio::time::timeout(HTTP_TIMEOUT, exchange).await.ok()??;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(sender);
        }
        Some((status, body))
    }

    async fn post(&self, path: &str, body: Bytes) -> Option<StatusCode> {
        self.request("POST", path, body).await.map(|(s, _)| s)
    }

    async fn get_json(&self, path: &str) -> Value {
        match self.request("GET", path, Bytes::new()).await {
            Some((_, body)) => serde_json::from_slice(&body).unwrap_or(Value::Null),
            None => Value::Null,
        }
    }
}

// ---------------------------------------------------------------------------
// The client process, seen from the harness

struct ClientProc {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct ClientStats {
    open: u64,
    events: u64,
    last_ns: u64,
}

impl ClientProc {
    async fn spawn(addrs: &[SocketAddr], latency: bool) -> ClientProc {
        let exe = std::env::current_exe().expect("current exe");
        let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let mut cmd = Command::new(exe);
        cmd.arg("client").arg("--addrs").arg(list.join(","));
        if latency {
            cmd.arg("--latency");
        }
        if let Some(parser) = CLIENT_PARSER.get() {
            cmd.arg("--parser").arg(parser);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn client");
        let stdin = child.stdin.take().expect("client stdin");
        let stdout = BufReader::new(child.stdout.take().expect("client stdout")).lines();
        ClientProc {
            child,
            stdin,
            stdout,
        }
    }

    fn pid(&self) -> Vec<u32> {
        self.child.id().into_iter().collect()
    }

    async fn cmd(&mut self, line: &str) -> Value {
        if self
            .stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_err()
        {
            return Value::Null;
        }
        match tokio::time::timeout(CLIENT_REPLY_TIMEOUT, self.stdout.next_line()).await {
            Ok(Ok(Some(reply))) => serde_json::from_str(&reply).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// Opens `n` more connections to `path` (`{i}` is replaced by the
    /// connection's index); returns how many opened.
    async fn open(&mut self, n: usize, path: &str) -> u64 {
        self.cmd(&format!("open {n} {path}")).await["opened"]
            .as_u64()
            .unwrap_or(0)
    }

    async fn stats(&mut self) -> (ClientStats, Value) {
        let v = self.cmd("stats").await;
        let s = ClientStats {
            open: v["open"].as_u64().unwrap_or(0),
            events: v["events"].as_u64().unwrap_or(0),
            last_ns: v["last_ns"].as_u64().unwrap_or(0),
        };
        (s, v)
    }

    async fn quit(mut self) {
        let _ = self.stdin.write_all(b"quit\n").await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Opens `n` connections through `client` in chunks, with a progress line.
async fn open_many(client: &mut ClientProc, n: usize, path: &str, label: &str) -> (u64, Duration) {
    let start = Instant::now();
    let mut opened = 0;
    let mut left = n;
    while left > 0 {
        let chunk = left.min(1000);
        opened += client.open(chunk, path).await;
        left -= chunk;
        progress(&format!("{label}: {opened}/{n} connections open"));
    }
    if (opened as usize) < n {
        let (_, v) = client.stats().await;
        say(&format!(
            "{label}: {} of {n} connections failed: connect {}, status {} (last {}), closed before the head {}",
            n - opened as usize,
            v["failed_connect"], v["failed_status"], v["last_bad_status"], v["failed_closed_early"]
        ));
    }
    (opened, start.elapsed())
}

/// Waits until the clients together have `expected` more events than
/// `before`, or nothing arrived for `stall`, at most `cap`. Returns the
/// events counted and the latest receipt time (wall ns).
async fn wait_events(
    clients: &mut [&mut ClientProc],
    before: u64,
    expected: u64,
    stall: Duration,
    cap: Duration,
    label: &str,
) -> (u64, u64) {
    let start = Instant::now();
    let mut last = (0, Instant::now());
    loop {
        let mut total = 0;
        let mut last_ns = 0;
        for c in clients.iter_mut() {
            let (s, _) = c.stats().await;
            total += s.events;
            last_ns = last_ns.max(s.last_ns);
        }
        let got = total.saturating_sub(before);
        progress(&format!("{label}: {got}/{expected} deliveries"));
        if got >= expected || start.elapsed() > cap {
            return (got, last_ns);
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > stall {
            return (got, last_ns);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn total_events(clients: &mut [&mut ClientProc]) -> u64 {
    let mut total = 0;
    for c in clients.iter_mut() {
        total += c.stats().await.0.events;
    }
    total
}

/// RSS after it has settled (two samples 0.5 s apart within 0.5%), at most 6 s.
async fn settled_rss(pids: &dyn Fn() -> Vec<u32>) -> u64 {
    let mut prev = rss_kib(&pids());
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kib(&pids());
        if now.abs_diff(prev) * 200 <= prev.max(1) {
            return now;
        }
        prev = now;
    }
    prev
}

// ---------------------------------------------------------------------------
// Single-node parts: idle memory and fan-out

fn events_path(target: &str) -> &'static str {
    match target {
        "ours-axum" | "ours-hyper" => "/events?topic=t",
        _ => "/events",
    }
}

async fn single_node(target: &str, opts: &Options, report: &mut BTreeMap<String, Value>) {
    let server = match start_target(target, opts).await {
        Ok(s) => s,
        Err(err) => {
            say(&format!("{target}: skipped: {err}"));
            report.insert(target.into(), json!({ "absent": err }));
            return;
        }
    };
    let mut out = json!({});
    let pids = || server.pids();
    let base = settled_rss(&pids).await;
    let mut client = ClientProc::spawn(&[server.addr], false).await;
    let client_base = rss_kib(&client.pid());
    let path = events_path(target);
    if opts.parts.iter().any(|p| p == "idle") {
        let mut rows = Vec::new();
        let mut open = 0usize;
        for &n in &opts.sizes {
            let (opened, took) = open_many(
                &mut client,
                n.saturating_sub(open),
                path,
                &format!("{target} idle"),
            )
            .await;
            let (stats, cv) = client.stats().await;
            open = stats.open as usize;
            let retries = cv["retries"].as_u64().unwrap_or(0);
            let rss = settled_rss(&pids).await;
            let client_rss = rss_kib(&client.pid());
            let per = (rss.saturating_sub(base) * 1024) as f64 / open.max(1) as f64;
            say(&format!(
                "{target}: {open} idle connections (opened {opened} in {:.1} s): server RSS {} → {} KiB, {:.0} B/connection; client RSS {} KiB",
                took.as_secs_f64(),
                base,
                rss,
                per,
                client_rss
            ));
            rows.push(json!({"n": n, "open": open, "rss_before_kib": base, "rss_kib": rss,
                "bytes_per_conn": per, "client_rss_kib": client_rss,
                "client_bytes_per_conn": (client_rss.saturating_sub(client_base) * 1024) as f64 / open.max(1) as f64,
                "open_secs": took.as_secs_f64(), "client_retries": retries}));
        }
        out["idle"] = Value::Array(rows);
    }
    client.quit().await;
    server.stop().await;
    report.insert(target.into(), out);
}

/// One fan-out measurement: `publishes` publish calls (all at once if
/// `concurrent`, else one after the other), until every client has every
/// event.
async fn fanout_run(
    server: &Server,
    client: &mut ClientProc,
    publishes: usize,
    concurrent: bool,
    seq0: u64,
    label: &str,
) -> Value {
    let (stats, _) = client.stats().await;
    let n = stats.open;
    let before = stats.events;
    let (cpu_s0, cpu_c0) = (server.cpu_secs(), cpu_secs(&client.pid()));
    let t0 = wall_ns();
    let mut failed = 0u64;
    if concurrent {
        let calls = (0..publishes as u64).map(|i| {
            let data = payload(seq0 + i, wall_ns(), DATA_SIZE);
            server.publish("t", data)
        });
        failed += futures_util::future::join_all(calls)
            .await
            .into_iter()
            .filter(|ok| !ok)
            .count() as u64;
    } else {
        for i in 0..publishes as u64 {
            if !server
                .publish("t", payload(seq0 + i, wall_ns(), DATA_SIZE))
                .await
            {
                failed += 1;
            }
        }
    }
    let publish_done = wall_ns();
    let expected = n * (publishes as u64 - failed);
    let (got, last_ns) = wait_events(
        &mut [client],
        before,
        expected,
        Duration::from_secs(5),
        Duration::from_secs(120),
        label,
    )
    .await;
    let secs = last_ns.saturating_sub(t0) as f64 / 1e9;
    let (cpu_s, cpu_c) = (server.cpu_secs() - cpu_s0, cpu_secs(&client.pid()) - cpu_c0);
    json!({"connections": n, "publishes": publishes, "failed_publishes": failed,
        "expected": expected, "delivered": got, "lost": expected.saturating_sub(got),
        "secs": secs, "publish_secs": publish_done.saturating_sub(t0) as f64 / 1e9,
        "deliveries_per_sec": got as f64 / secs.max(1e-9),
        "server_cpu_secs": cpu_s, "client_cpu_secs": cpu_c})
}

/// The fan-out part: every target up at once with `fanout_conns`
/// connections from its own client, then rounds in which each target in
/// turn gets one single publish, one sequential run and one burst (the
/// order rotating every round), so that the neighbours' load hits every
/// target alike. Medians over the rounds.
async fn fanout_all(opts: &Options, report: &mut BTreeMap<String, Value>) {
    let mut live: Vec<(Server, ClientProc)> = Vec::new();
    for target in &opts.targets {
        match start_target(target, opts).await {
            Ok(server) => {
                let mut client = ClientProc::spawn(&[server.addr], false).await;
                let label = format!("{target} fan-out");
                open_many(&mut client, opts.fanout_conns, events_path(target), &label).await;
                live.push((server, client));
            }
            Err(err) => {
                say(&format!("{target}: fan-out skipped: {err}"));
                report.entry(target.clone()).or_insert_with(|| json!({}))["absent"] = json!(err);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rounds = opts.bursts.max(1);
    let mut runs: Vec<[Vec<Value>; 3]> = (0..live.len()).map(|_| Default::default()).collect();
    let mut seq = 0u64;
    for round in 0..rounds {
        for k in 0..live.len() {
            let i = (k + round) % live.len();
            let (server, client) = &mut live[i];
            let name = format!("{} round {}/{rounds}", server.name, round + 1);
            for (kind, publishes, concurrent) in [
                (0, 1, false),
                (1, opts.fanout_events, false),
                (2, opts.burst, true),
            ] {
                let label = format!("{name} {}", ["single", "sequential", "burst"][kind]);
                runs[i][kind]
                    .push(fanout_run(server, client, publishes, concurrent, seq, &label).await);
                seq += publishes as u64;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    for ((server, client), [singles, sequentials, bursts]) in live.into_iter().zip(runs) {
        let rate = |v: &Value| v["deliveries_per_sec"].as_f64().unwrap_or(0.0);
        let mut single_ms: Vec<f64> = singles
            .iter()
            .map(|v| v["secs"].as_f64().unwrap_or(0.0) * 1e3)
            .collect();
        single_ms.sort_by(f64::total_cmp);
        let mut by_rate = sequentials.clone();
        by_rate.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
        let sequential = by_rate
            .get(by_rate.len() / 2)
            .cloned()
            .unwrap_or(Value::Null);
        let mut burst_rates: Vec<f64> = bursts.iter().map(rate).collect();
        burst_rates.sort_by(f64::total_cmp);
        let median_burst = burst_rates
            .get(burst_rates.len() / 2)
            .copied()
            .unwrap_or(0.0);
        let single_median = single_ms.get(single_ms.len() / 2).copied().unwrap_or(0.0);
        say(&format!(
            "{}: fan-out to {} connections, medians of {rounds} rounds: single publish {single_median:.1} ms; {} sequential publishes {:.0} deliveries/s; bursts of {} {median_burst:.0} deliveries/s",
            server.name, sequential["connections"], opts.fanout_events, rate(&sequential), opts.burst
        ));
        report
            .entry(server.name.clone())
            .or_insert_with(|| json!({}))["fanout"] = json!({
            "rounds": rounds, "single_ms_median": single_median, "single": singles,
            "sequential": sequential, "sequential_runs": sequentials,
            "bursts": bursts, "burst_deliveries_per_sec_median": median_burst});
        client.quit().await;
        server.stop().await;
    }
}

// ---------------------------------------------------------------------------
// Cross-node latency

/// Calls `fire(seq)` for `count` sequence numbers at `rate` per second from
/// a pacing thread (open loop: a slow call never delays the next); returns
/// the worst lateness of the pacer.
async fn pace(rate: u64, seq0: u64, count: u64, fire: Arc<dyn Fn(u64) + Send + Sync>) -> Duration {
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut lag = Duration::ZERO;
        for i in 0..count {
            let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            } else {
                lag = lag.max(now - due);
            }
            fire(seq0 + i);
        }
        lag
    })
    .await
    .unwrap_or_default()
}

fn lat_summary(sorted: &[u64]) -> Value {
    let ms = |ns: u64| ns as f64 / 1e6;
    json!({"n": sorted.len(), "p50_ms": ms(pct(sorted, 0.50)), "p90_ms": ms(pct(sorted, 0.90)),
        "p99_ms": ms(pct(sorted, 0.99)), "max_ms": ms(sorted.last().copied().unwrap_or(0))})
}

#[derive(Clone)]
enum Raw {
    Redis {
        conn: redis::aio::MultiplexedConnection,
        channel: String,
    },
    Nats {
        client: async_nats::Client,
        subject: String,
    },
}

impl Raw {
    async fn publish(&self, data: String) {
        match self {
            Raw::Redis { conn, channel } => {
                let mut conn = conn.clone();
                let _: Result<i64, _> = redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(data)
                    .query_async(&mut conn)
                    .await;
            }
            Raw::Nats { client, subject } => {
                let _ = client.publish(subject.clone(), Bytes::from(data)).await;
            }
        }
    }
}

type Samples = Arc<Mutex<Vec<u64>>>;

fn record(samples: &Samples, data: &[u8]) {
    if let Some(t) = field(data, b't') {
        let lat = wall_ns().saturating_sub(t);
        if let Ok(mut s) = samples.lock() {
            s.push(lat);
        }
    }
}

/// A raw subscriber recording into `samples`, and the raw publisher.
async fn raw_pair(
    broker: &str,
    tag: &str,
    samples: Samples,
) -> Result<(Raw, tokio::task::JoinHandle<()>), String> {
    if broker == "redis" {
        use redis::{
            AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushKind, Value as RV,
        };
        let channel = format!("sseloadraw{tag}");
        let info = "redis://127.0.0.1:6379"
            .into_connection_info()
            .map_err(|e| e.to_string())?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        let client3 = redis::Client::open(info).map_err(|e| e.to_string())?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new().set_push_sender(tx);
        let mut sub = client3
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        sub.subscribe(&channel).await.map_err(|e| e.to_string())?;
        let reader = tokio::spawn(async move {
            let _keep = sub;
            while let Some(push) = rx.recv().await {
                if push.kind == PushKind::Message {
                    if let Some(RV::BulkString(bytes)) = push.data.get(1) {
                        record(&samples, bytes);
                    }
                }
            }
        });
        let conn = redis::Client::open("redis://127.0.0.1:6379")
            .map_err(|e| e.to_string())?
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        Ok((Raw::Redis { conn, channel }, reader))
    } else {
        let subject = format!("sseloadraw.{tag}");
        let subscriber_client = async_nats::connect("127.0.0.1:4222")
            .await
            .map_err(|e| e.to_string())?;
        let mut sub = subscriber_client
            .subscribe(subject.clone())
            .await
            .map_err(|e| e.to_string())?;
        subscriber_client.flush().await.map_err(|e| e.to_string())?;
        let reader = tokio::spawn(async move {
            let _keep = subscriber_client;
            while let Some(msg) = sub.next().await {
                record(&samples, &msg.payload);
            }
        });
        let client = async_nats::connect("127.0.0.1:4222")
            .await
            .map_err(|e| e.to_string())?;
        Ok((Raw::Nats { client, subject }, reader))
    }
}

/// A pacing callback: call `s` runs `call(http, s, t)` as its own task (`t`:
/// the wall clock when it starts) and records in `took` how long it took.
fn timed_calls<F, Fut>(http: &Arc<Http>, took: &Samples, call: F) -> Arc<dyn Fn(u64) + Send + Sync>
where
    F: Fn(Arc<Http>, u64, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    let (http, took, call) = (http.clone(), took.clone(), Arc::new(call));
    Arc::new(move |s| {
        let (http, took, call) = (http.clone(), took.clone(), call.clone());
        handle.spawn(async move {
            // Taken in the task, as the raw side does.
            let t = wall_ns();
            call(http, s, t).await;
            if let Ok(mut took) = took.lock() {
                took.push(wall_ns().saturating_sub(t));
            }
        });
    })
}

async fn latency(opts: &Options, report: &mut BTreeMap<String, Value>) {
    let tag = format!("{}x{}", std::process::id(), wall_ns() % 1_000_000);
    let mut out = json!({});
    for broker in ["redis", "nats"] {
        let (url, prefix_flag, prefix) = if broker == "redis" {
            (
                "redis://127.0.0.1:6379",
                "--redis-prefix",
                format!("sseload{tag}:"),
            )
        } else {
            (
                "nats://127.0.0.1:4222",
                "--nats-prefix",
                format!("sseload{tag}"),
            )
        };
        let args = |id: &str| -> Vec<String> {
            ["--broker", url, prefix_flag, &prefix, "--node-id", id]
                .map(String::from)
                .to_vec()
        };
        let (a, b) = match (
            start_binary("node-a", "node", &args("lat-a")).await,
            start_binary("node-b", "node", &args("lat-b")).await,
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                let err = [a.err(), b.err()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join("; ");
                say(&format!("latency over {broker}: skipped: {err}"));
                out[broker] = json!({"absent": err});
                continue;
            }
        };
        let mut client = ClientProc::spawn(&[a.addr], true).await;
        client.open(1, "/events?topic=lat").await;
        let samples: Samples = Arc::default();
        let raw = match raw_pair(broker, &tag, samples.clone()).await {
            Ok(r) => Some(r),
            Err(err) => {
                say(&format!("raw {broker} client: {err}"));
                None
            }
        };
        let mut rows = Vec::new();
        let mut seq = 0u64;
        let mut reopened = 0u64;
        for &rate in &opts.rates {
            let slice = (rate as f64 * opts.lat_secs / LAT_SLICES as f64) as u64;
            let count = slice * LAT_SLICES;
            let warm = rate / 2;
            let acks: Samples = Arc::default();
            // ours: POST /publish on B → bus → A → SSE client.
            let ours_fire = timed_calls(&b.publish, &acks, |http, s, t| async move {
                let data = payload(s, t, DATA_SIZE);
                http.post("/publish?topic=lat", Bytes::from(data)).await;
            });
            // The HTTP hop alone: a no-op call (`GET /healthz`) to B over
            // the same pool, paced like the publishes: the floor under
            // ours − raw, which the raw side does not pay.
            let noop: Samples = Arc::default();
            let noop_fire = timed_calls(&b.publish, &noop, |http, _, _| async move {
                let _ = http.get_json("/healthz").await;
            });
            // raw: the broker's own client, publish → subscriber here.
            let raw_fire: Option<Arc<dyn Fn(u64) + Send + Sync>> = raw.as_ref().map(|(raw, _)| {
                let handle = tokio::runtime::Handle::current();
                let raw = raw.clone();
                Arc::new(move |s| {
                    let raw = raw.clone();
                    handle.spawn(async move {
                        raw.publish(payload(s, wall_ns(), DATA_SIZE)).await;
                    });
                }) as Arc<dyn Fn(u64) + Send + Sync>
            });
            progress(&format!("latency {broker} at {rate}/s: warm-up"));
            pace(rate, seq, warm, ours_fire.clone()).await;
            seq += warm;
            if let Some(fire) = &raw_fire {
                pace(rate, seq, warm, fire.clone()).await;
                seq += warm;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            // A stream the node closed (a full queue under the default
            // `OverflowPolicy::Close`) is reopened, and counted.
            if client.stats().await.0.open == 0 {
                reopened += 1;
                client.open(1, "/events?topic=lat").await;
            }
            let closed0 = a.publish.get_json("/stats").await["overflow_closed"]
                .as_u64()
                .unwrap_or(0);
            client.cmd("reset").await;
            for list in [&samples, &acks, &noop] {
                if let Ok(mut s) = list.lock() {
                    s.clear();
                }
            }
            let before = client.stats().await.0.events;
            let cpu0 = (a.cpu_secs() + b.cpu_secs(), cpu_secs(&client.pid()));
            // Slices of ours and raw alternate (and which goes first too), so
            // the machine's noise hits both alike.
            let (mut ours_lag, mut raw_lag) = (Duration::ZERO, Duration::ZERO);
            for round in 0..LAT_SLICES {
                progress(&format!(
                    "latency {broker} at {rate}/s: slice {}/{LAT_SLICES}",
                    round + 1
                ));
                for side in if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] } {
                    match (side, &raw_fire) {
                        (0, _) => {
                            ours_lag = ours_lag.max(pace(rate, seq, slice, ours_fire.clone()).await)
                        }
                        (2, _) => {
                            pace(rate, seq, slice, noop_fire.clone()).await;
                        }
                        (_, Some(fire)) => {
                            raw_lag = raw_lag.max(pace(rate, seq, slice, fire.clone()).await)
                        }
                        _ => continue,
                    }
                    seq += slice;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            wait_events(
                &mut [&mut client],
                before,
                count,
                Duration::from_secs(1),
                Duration::from_secs(10),
                &format!("latency {broker} ours {rate}/s"),
            )
            .await;
            let (_, v) = client.stats().await;
            let mut ours = v["lat"].clone();
            ours["lost"] = json!(count.saturating_sub(v["lat"]["n"].as_u64().unwrap_or(0)));
            ours["pacer_max_lag_ms"] = json!(ours_lag.as_secs_f64() * 1e3);
            ours["server_cpu_secs"] = json!(a.cpu_secs() + b.cpu_secs() - cpu0.0);
            ours["client_cpu_secs"] = json!(cpu_secs(&client.pid()) - cpu0.1);
            let mut ack_sorted = acks.lock().map(|s| s.clone()).unwrap_or_default();
            ack_sorted.sort_unstable();
            ours["publish_call"] = lat_summary(&ack_sorted);
            let mut noop_sorted = noop.lock().map(|s| s.clone()).unwrap_or_default();
            noop_sorted.sort_unstable();
            ours["noop_http_call"] = lat_summary(&noop_sorted);
            ours["overflow_closed"] = json!(a.publish.get_json("/stats").await["overflow_closed"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(closed0));
            ours["stream_open_at_end"] = json!(client.stats().await.0.open);
            ours["streams_reopened_so_far"] = json!(reopened);
            let mut raw_row = Value::Null;
            if raw_fire.is_some() {
                let deadline = Instant::now() + Duration::from_secs(5);
                while samples
                    .lock()
                    .map(|s| (s.len() as u64) < count)
                    .unwrap_or(false)
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let mut sorted = samples.lock().map(|s| s.clone()).unwrap_or_default();
                sorted.sort_unstable();
                raw_row = lat_summary(&sorted);
                raw_row["lost"] = json!(count.saturating_sub(sorted.len() as u64));
                raw_row["pacer_max_lag_ms"] = json!(raw_lag.as_secs_f64() * 1e3);
            }
            say(&format!(
                "latency {broker} at {rate}/s: ours p50/p90/p99/max {:.3}/{:.3}/{:.3}/{:.3} ms (lost {}); raw {:.3}/{:.3}/{:.3}/{:.3} ms (lost {})",
                ours["p50_ms"].as_f64().unwrap_or(0.0), ours["p90_ms"].as_f64().unwrap_or(0.0),
                ours["p99_ms"].as_f64().unwrap_or(0.0), ours["max_ms"].as_f64().unwrap_or(0.0), ours["lost"],
                raw_row["p50_ms"].as_f64().unwrap_or(0.0), raw_row["p90_ms"].as_f64().unwrap_or(0.0),
                raw_row["p99_ms"].as_f64().unwrap_or(0.0), raw_row["max_ms"].as_f64().unwrap_or(0.0), raw_row["lost"],
            ));
            rows.push(json!({"rate": rate, "events": count, "ours": ours, "raw": raw_row}));
        }
        if let Some((_, reader)) = raw {
            reader.abort();
        }
        client.quit().await;
        a.stop().await;
        b.stop().await;
        out[broker] = Value::Array(rows);
    }
    report.insert("latency".into(), out);
}

// ---------------------------------------------------------------------------
// Interest routing and scale: N demo nodes on one Redis

async fn bus_counts(nodes: &[Server]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for n in nodes {
        let v = n.publish.get_json("/stats").await;
        out.push((
            v["bus_in"].as_u64().unwrap_or(0),
            v["bus_echo"].as_u64().unwrap_or(0),
        ));
    }
    out
}

async fn cluster(opts: &Options, report: &mut BTreeMap<String, Value>) {
    let tag = format!("{}x{}", std::process::id(), wall_ns() % 1_000_000);
    let prefix = format!("sseload{tag}:");
    let k = opts.scale_nodes;
    let mut nodes = Vec::new();
    for i in 0..k {
        let args: Vec<String> = [
            "--broker",
            "redis://127.0.0.1:6379",
            "--redis-prefix",
            &prefix,
            "--node-id",
            &format!("load-{i}"),
        ]
        .map(String::from)
        .to_vec();
        match start_binary(&format!("node-{i}"), "node", &args).await {
            Ok(s) => nodes.push(s),
            Err(err) => {
                say(&format!("cluster: skipped: {err}"));
                report.insert("interest".into(), json!({"absent": err}));
                for n in nodes {
                    n.stop().await;
                }
                return;
            }
        }
    }
    let server_base: u64 = nodes.iter().map(Server::rss_kib).sum();
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(ClientProc::spawn(&[n.addr], false).await);
    }
    let users = opts.interest_users;
    for (i, c) in clients.iter_mut().enumerate() {
        c.open(users, &format!("/events?topic=all&user=u{i}-{{i}}"))
            .await;
    }
    let open: u64 = {
        let mut t = 0;
        for c in clients.iter_mut() {
            t += c.stats().await.0.open;
        }
        t
    };
    say(&format!(
        "cluster: {k} nodes on Redis, {open} user connections"
    ));

    if opts.parts.iter().any(|p| p == "interest") {
        let publisher = nodes[0].publish.clone();
        let m = opts.interest_events;
        let mut rows = json!({});
        for mode in ["user", "broadcast"] {
            let before_bus = bus_counts(&nodes).await;
            let before = total_events(&mut clients.iter_mut().collect::<Vec<_>>()).await;
            for chunk in (0..m).collect::<Vec<_>>().chunks(16) {
                let calls = chunk.iter().map(|&j| {
                    let path = if mode == "user" {
                        format!("/publish?user=u{}-{}", j % k, (j / k) % users)
                    } else {
                        "/publish".to_string()
                    };
                    let publisher = publisher.clone();
                    async move {
                        publisher
                            .post(&path, Bytes::from(payload(j as u64, wall_ns(), DATA_SIZE)))
                            .await
                    }
                });
                futures_util::future::join_all(calls).await;
            }
            let expected = if mode == "user" {
                m as u64
            } else {
                m as u64 * open
            };
            let (got, _) = wait_events(
                &mut clients.iter_mut().collect::<Vec<_>>(),
                before,
                expected,
                Duration::from_secs(3),
                Duration::from_secs(60),
                &format!("interest {mode}"),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let after_bus = bus_counts(&nodes).await;
            let per_node: Vec<Value> = before_bus
                .iter()
                .zip(&after_bus)
                .map(|(b, a)| json!({"bus_in": a.0 - b.0, "bus_echo": a.1 - b.1}))
                .collect();
            let mean = per_node
                .iter()
                .map(|v| v["bus_in"].as_u64().unwrap_or(0))
                .sum::<u64>() as f64
                / k as f64;
            say(&format!(
                "interest {mode}: {m} publishes on node 0, {got}/{expected} delivered; bus_in per node {:?} (mean {:.0})",
                per_node.iter().map(|v| v["bus_in"].as_u64().unwrap_or(0)).collect::<Vec<_>>(),
                mean
            ));
            rows[mode] = json!({"publishes": m, "delivered": got, "expected": expected,
                "per_node": per_node, "mean_bus_in": mean});
        }
        let ratio = rows["user"]["mean_bus_in"].as_f64().unwrap_or(0.0)
            / rows["broadcast"]["mean_bus_in"]
                .as_f64()
                .unwrap_or(1.0)
                .max(1.0);
        rows["nodes"] = json!(k);
        rows["ratio_user_over_broadcast"] = json!(ratio);
        rows["ideal"] = json!(1.0 / k as f64);
        report.insert("interest".into(), rows);
    }

    if opts.parts.iter().any(|p| p == "scale") {
        let per_node = opts.scale_total.div_ceil(k);
        let start = Instant::now();
        let mut opened_total = 0;
        for (i, c) in clients.iter_mut().enumerate() {
            let have = c.stats().await.0.open as usize;
            let (opened, _) = open_many(
                c,
                per_node.saturating_sub(have),
                "/events?topic=all",
                &format!("scale node {i}"),
            )
            .await;
            opened_total += opened;
        }
        let connect_secs = start.elapsed().as_secs_f64();
        let mut open = 0;
        for c in clients.iter_mut() {
            open += c.stats().await.0.open;
        }
        let all_pids: Vec<u32> = nodes.iter().flat_map(Server::pids).collect();
        let rss = settled_rss(&|| all_pids.clone()).await;
        let client_rss: u64 = clients.iter().map(|c| rss_kib(&c.pid())).sum();
        say(&format!(
            "scale: {open} connections over {k} nodes (opened {opened_total} in {connect_secs:.1} s); server RSS {server_base} → {rss} KiB ({:.0} B/connection); clients {client_rss} KiB",
            (rss.saturating_sub(server_base) * 1024) as f64 / open.max(1) as f64
        ));
        let mut broadcasts = Vec::new();
        for r in 0..3u64 {
            let before = total_events(&mut clients.iter_mut().collect::<Vec<_>>()).await;
            let cpu0 = cpu_secs(&all_pids);
            let t0 = wall_ns();
            let ok = nodes[0]
                .publish
                .post("/publish", Bytes::from(payload(r, t0, DATA_SIZE)))
                .await
                .is_some_and(|s| s.is_success());
            let (got, last_ns) = wait_events(
                &mut clients.iter_mut().collect::<Vec<_>>(),
                before,
                open,
                Duration::from_secs(5),
                Duration::from_secs(60),
                "scale broadcast",
            )
            .await;
            let ms = last_ns.saturating_sub(t0) as f64 / 1e6;
            say(&format!(
                "scale broadcast {}: published {ok}, reached {got}/{open} in {ms:.1} ms",
                r + 1
            ));
            broadcasts.push(json!({"reached": got, "of": open, "ms": ms, "server_cpu_secs": cpu_secs(&all_pids) - cpu0}));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        report.insert(
            "scale".into(),
            json!({"nodes": k, "connections": open, "connect_secs": connect_secs,
                "server_rss_before_kib": server_base, "server_rss_kib": rss,
                "per_node_rss_kib": nodes.iter().map(Server::rss_kib).collect::<Vec<_>>(),
                "bytes_per_conn": (rss.saturating_sub(server_base) * 1024) as f64 / open.max(1) as f64,
                "client_rss_kib": client_rss, "broadcasts": broadcasts}),
        );
    }
    for c in clients {
        c.quit().await;
    }
    for n in nodes {
        n.stop().await;
    }
}

// ---------------------------------------------------------------------------
// The run and its report

async fn run(opts: Options, nofile: u64) {
    let started = wall_ns();
    say(&format!(
        "RLIMIT_NOFILE {nofile}; parts {:?}; targets {:?}",
        opts.parts, opts.targets
    ));
    let mut report: BTreeMap<String, Value> = BTreeMap::new();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    report.insert("loadavg_start".into(), json!(load_before.trim()));
    if opts.parts.iter().any(|p| p == "idle") {
        for target in &opts.targets {
            say(&format!("── {target}: idle memory"));
            single_node(target, &opts, &mut report).await;
        }
    }
    if opts.parts.iter().any(|p| p == "fanout") {
        say("── fan-out, all targets up, interleaved rounds");
        fanout_all(&opts, &mut report).await;
    }
    if opts.parts.iter().any(|p| p == "latency") {
        say("── cross-node latency");
        latency(&opts, &mut report).await;
    }
    if opts.parts.iter().any(|p| p == "interest" || p == "scale") {
        say("── cluster: interest routing and scale");
        cluster(&opts, &mut report).await;
    }
    if opts.parts.iter().any(|p| p == "topics") {
        say("── connections with many topics (in process)");
        topics::run(&opts, &mut report).await;
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    report.insert("loadavg_end".into(), json!(load_after.trim()));
    report.insert("started_unix_ns".into(), json!(started));
    report.insert("secs".into(), json!((wall_ns() - started) as f64 / 1e9));
    let doc = Value::Object(report.into_iter().collect());
    if let Some(dir) = opts.json.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        &opts.json,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    ) {
        Ok(()) => say(&format!("JSON written to {}", opts.json.display())),
        Err(e) => say(&format!("JSON not written to {}: {e}", opts.json.display())),
    }
    print_tables(&doc, &opts);
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The idle-memory, fan-out and ratio tables.
fn print_single_node(doc: &Value, targets: &[&String]) {
    println!("\n## Idle memory (server RSS, whole process tree)\n");
    println!("| target | N | RSS before KiB | RSS after KiB | bytes/conn | client bytes/conn |");
    println!("|---|---:|---:|---:|---:|---:|");
    for t in targets {
        let v = &doc[t.as_str()];
        if let Some(err) = v.get("absent") {
            println!("| {t} | absent: {} | | | | |", err.as_str().unwrap_or(""));
            continue;
        }
        for row in v["idle"].as_array().into_iter().flatten() {
            println!(
                "| {t} | {} | {} | {} | {:.0} | {:.0} |",
                row["open"],
                row["rss_before_kib"],
                row["rss_kib"],
                f(&row["bytes_per_conn"]),
                f(&row["client_bytes_per_conn"])
            );
        }
    }
    println!("\n## Fan-out\n");
    println!("| target | conns | single publish ms | sequential deliveries/s | server CPU µs/delivery | client CPU µs/delivery | lost | burst deliveries/s (median) | burst server CPU µs/delivery | lost |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // CPU seconds per delivery of one run.
    let per = |r: &Value, key: &str| f(&r[key]) / r["delivered"].as_f64().unwrap_or(0.0).max(1.0);
    let burst_per = |v: &Value, key: &str| {
        let b = v["bursts"].as_array().cloned().unwrap_or_default();
        b.iter().map(|r| per(r, key)).sum::<f64>() / b.len().max(1) as f64
    };
    for t in targets {
        let v = &doc[t.as_str()]["fanout"];
        if v.is_null() {
            continue;
        }
        let s = &v["sequential"];
        let b = v["bursts"].as_array().cloned().unwrap_or_default();
        let burst_lost: u64 = b.iter().map(|r| r["lost"].as_u64().unwrap_or(0)).sum();
        println!(
            "| {t} | {} | {:.1} | {:.0} | {:.3} | {:.3} | {} | {:.0} | {:.3} | {} |",
            s["connections"],
            f(&v["single_ms_median"]),
            f(&s["deliveries_per_sec"]),
            per(s, "server_cpu_secs") * 1e6,
            per(s, "client_cpu_secs") * 1e6,
            s["lost"],
            f(&v["burst_deliveries_per_sec_median"]),
            burst_per(v, "server_cpu_secs") * 1e6,
            burst_lost
        );
    }
    let get = |t: &str, p: &str| -> f64 {
        let v = &doc[t]["fanout"];
        match p {
            "mem" => doc[t]["idle"]
                .as_array()
                .and_then(|a| a.last())
                .map(|r| f(&r["bytes_per_conn"]))
                .unwrap_or(f64::NAN),
            "seq" => f(&v["sequential"]["deliveries_per_sec"]),
            "seq_cpu" => per(&v["sequential"], "server_cpu_secs"),
            "burst_cpu" => burst_per(v, "server_cpu_secs"),
            _ => f(&v["burst_deliveries_per_sec_median"]),
        }
    };
    println!("\n## Ratios, ours / peer (memory: lower is better; deliveries/s and CPU efficiency: higher is better)\n");
    println!("| ours | peer | idle bytes/conn (largest N) | sequential deliveries/s | burst deliveries/s | sequential CPU efficiency (peer µs / ours µs) | burst CPU efficiency |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for ours in ["ours-axum", "ours-hyper"] {
        for peer in ["axum-broadcast", "pushpin"] {
            if doc.get(ours).is_none() || doc.get(peer).is_none() {
                continue;
            }
            println!(
                "| {ours} | {peer} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                get(ours, "mem") / get(peer, "mem"),
                get(ours, "seq") / get(peer, "seq"),
                get(ours, "burst") / get(peer, "burst"),
                get(peer, "seq_cpu") / get(ours, "seq_cpu"),
                get(peer, "burst_cpu") / get(ours, "burst_cpu")
            );
        }
    }
}

fn print_tables(doc: &Value, opts: &Options) {
    topics::print(doc);
    let targets: Vec<&String> = opts
        .targets
        .iter()
        .filter(|t| doc.get(t.as_str()).is_some())
        .collect();
    if !targets.is_empty() {
        print_single_node(doc, &targets);
    }
    if let Some(lat) = doc.get("latency") {
        println!("\n## Cross-node latency (publish on B over HTTP → SSE client on A), ms\n");
        println!("| broker | rate/s | ours p50 | p90 | p99 | max | lost | raw p50 | p90 | p99 | max | lost | p99 ours − raw | B's publish call p50 / p99 | B's no-op call (`GET /healthz`) p50 / p99 |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for broker in ["redis", "nats"] {
            for row in lat[broker].as_array().into_iter().flatten() {
                let (o, r) = (&row["ours"], &row["raw"]);
                println!(
                    "| {broker} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {:+.3} | {:.3} / {:.3} | {:.3} / {:.3} |",
                    row["rate"], f(&o["p50_ms"]), f(&o["p90_ms"]), f(&o["p99_ms"]), f(&o["max_ms"]), o["lost"],
                    f(&r["p50_ms"]), f(&r["p90_ms"]), f(&r["p99_ms"]), f(&r["max_ms"]), r["lost"],
                    f(&o["p99_ms"]) - f(&r["p99_ms"]),
                    f(&o["publish_call"]["p50_ms"]),
                    f(&o["publish_call"]["p99_ms"]),
                    f(&o["noop_http_call"]["p50_ms"]),
                    f(&o["noop_http_call"]["p99_ms"])
                );
            }
        }
    }
    if let Some(i) = doc.get("interest").filter(|i| i.get("user").is_some()) {
        println!(
            "\n## Interest routing ({} nodes, Redis): bus messages received per node\n",
            i["nodes"]
        );
        println!("| traffic | publishes | per node bus_in | mean |");
        println!("|---|---:|---|---:|");
        for mode in ["user", "broadcast"] {
            let r = &i[mode];
            let per: Vec<String> = r["per_node"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v["bus_in"].to_string())
                .collect();
            println!(
                "| {mode} | {} | {} | {:.0} |",
                r["publishes"],
                per.join(", "),
                f(&r["mean_bus_in"])
            );
        }
        println!(
            "\nuser / broadcast = {:.3} (ideal 1/nodes = {:.3})",
            f(&i["ratio_user_over_broadcast"]),
            f(&i["ideal"])
        );
    }
    if let Some(s) = doc.get("scale") {
        println!("\n## Scale\n");
        println!(
            "{} connections over {} nodes; server RSS {} KiB total ({:.0} B/connection); clients {} KiB; connected in {:.1} s",
            s["connections"], s["nodes"], s["server_rss_kib"], f(&s["bytes_per_conn"]), s["client_rss_kib"], f(&s["connect_secs"])
        );
        for b in s["broadcasts"].as_array().into_iter().flatten() {
            println!(
                "broadcast reached {}/{} in {:.1} ms (server CPU {:.2} s)",
                b["reached"],
                b["of"],
                f(&b["ms"]),
                f(&b["server_cpu_secs"])
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The client process

mod client {
    use super::*;

    #[derive(Default)]
    struct Shared {
        open: AtomicU64,
        failed: AtomicU64,
        events: AtomicU64,
        stray: AtomicU64,
        last_ns: AtomicU64,
        latency: Option<Mutex<Vec<u64>>>,
        failures: Failures,
    }

    impl Shared {
        fn on_event(&self, event: &[u8], data: &[u8]) {
            if event != b"message" {
                return;
            }
            let now = wall_ns();
            match (field(data, b's'), field(data, b't')) {
                (Some(_), Some(t)) => {
                    self.events.fetch_add(1, Ordering::Relaxed);
                    self.last_ns.fetch_max(now, Ordering::Relaxed);
                    if let Some(lat) = &self.latency {
                        if let Ok(mut lat) = lat.lock() {
                            lat.push(now.saturating_sub(t));
                        }
                    }
                }
                _ => {
                    self.stray.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Why connections failed, for the `stats` reply.
    #[derive(Default)]
    struct Failures {
        connect: AtomicU64,
        status: AtomicU64,
        last_status: AtomicU64,
        closed_early: AtomicU64,
        retries: AtomicU64,
    }

    /// Counts an open stream until dropped, also when its task is aborted
    /// (`close N`).
    struct OpenGuard<'a>(&'a AtomicU64);

    impl<'a> OpenGuard<'a> {
        fn new(open: &'a AtomicU64) -> Self {
            open.fetch_add(1, Ordering::Relaxed);
            OpenGuard(open)
        }
    }

    impl Drop for OpenGuard<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Attempts per connection (the first and the retries).
    const CONNECT_ATTEMPTS: usize = 5;

    /// The WHATWG `text/event-stream` interpretation, incremental and
    /// allocation-free per event: lines end at CRLF, LF or CR; `data` lines
    /// are joined with LF; an empty line dispatches; comments and unknown
    /// fields are ignored; one leading space of a value is dropped; a
    /// leading BOM is skipped.
    #[derive(Default)]
    pub(super) struct SseParser {
        line: Vec<u8>,
        after_cr: bool,
        started: bool,
        event: Vec<u8>,
        data: Vec<u8>,
        has_data: bool,
    }

    impl SseParser {
        pub(super) fn feed(&mut self, mut input: &[u8], on_event: &mut impl FnMut(&[u8], &[u8])) {
            if !self.started {
                if self.line.len() + input.len() < 3
                    && b"\xEF\xBB\xBF".starts_with(&[&self.line[..], input].concat())
                {
                    self.line.extend_from_slice(input);
                    return;
                }
                self.started = true;
                let pending = std::mem::take(&mut self.line);
                let mut joined = pending;
                joined.extend_from_slice(input);
                let body = joined
                    .strip_prefix(b"\xEF\xBB\xBF")
                    .unwrap_or(&joined)
                    .to_vec();
                return self.feed(&body, on_event);
            }
            while !input.is_empty() {
                if self.after_cr {
                    self.after_cr = false;
                    if input[0] == b'\n' {
                        input = &input[1..];
                        continue;
                    }
                }
                match memchr::memchr2(b'\n', b'\r', input) {
                    Some(end) => {
                        if self.line.is_empty() {
                            self.line_done(&input[..end], on_event);
                        } else {
                            let mut line = std::mem::take(&mut self.line);
                            line.extend_from_slice(&input[..end]);
                            self.line_done(&line, on_event);
                            line.clear();
                            self.line = line;
                        }
                        self.after_cr = input[end] == b'\r';
                        input = &input[end + 1..];
                    }
                    None => {
                        self.line.extend_from_slice(input);
                        return;
                    }
                }
            }
        }

        fn line_done(&mut self, line: &[u8], on_event: &mut impl FnMut(&[u8], &[u8])) {
            if line.is_empty() {
                if self.has_data {
                    let data = self.data.strip_suffix(b"\n").unwrap_or(&self.data);
                    let event: &[u8] = if self.event.is_empty() {
                        b"message"
                    } else {
                        &self.event
                    };
                    on_event(event, data);
                }
                self.data.clear();
                self.event.clear();
                self.has_data = false;
                return;
            }
            if line[0] == b':' {
                return;
            }
            let (name, value) = match memchr::memchr(b':', line) {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &b""[..]),
            };
            match name {
                b"data" => {
                    self.data.extend_from_slice(value);
                    self.data.push(b'\n');
                    self.has_data = true;
                }
                b"event" => {
                    self.event.clear();
                    self.event.extend_from_slice(value);
                }
                // `id` and `retry` do not matter to the counts.
                _ => {}
            }
        }
    }

    /// HTTP/1.1 chunked transfer decoding, incremental.
    enum Chunked {
        Size { n: u64, ext: bool },
        Data(u64),
        DataEnd,
        Done,
    }

    impl Chunked {
        fn feed(&mut self, mut input: &[u8], out: &mut impl FnMut(&[u8])) {
            while !input.is_empty() {
                match self {
                    Chunked::Size { n, ext } => {
                        let b = input[0];
                        input = &input[1..];
                        match b {
                            b'\n' if *n == 0 => *self = Chunked::Done,
                            b'\n' => *self = Chunked::Data(*n),
                            b';' => *ext = true,
                            _ if *ext => {}
                            b'0'..=b'9' => *n = *n * 16 + u64::from(b - b'0'),
                            b'a'..=b'f' => *n = *n * 16 + u64::from(b - b'a' + 10),
                            b'A'..=b'F' => *n = *n * 16 + u64::from(b - b'A' + 10),
                            _ => {}
                        }
                    }
                    Chunked::Data(left) => {
                        let take = (*left).min(input.len() as u64) as usize;
                        out(&input[..take]);
                        input = &input[take..];
                        *left -= take as u64;
                        if *left == 0 {
                            *self = Chunked::DataEnd;
                        }
                    }
                    Chunked::DataEnd => {
                        let b = input[0];
                        input = &input[1..];
                        if b == b'\n' {
                            *self = Chunked::Size { n: 0, ext: false };
                        }
                    }
                    Chunked::Done => return,
                }
            }
        }
    }

    /// One SSE connection read with a plain socket: the HTTP/1.1 request
    /// and response head by hand, chunked decoding, and [`SseParser`]. One
    /// task, one read buffer, no allocation per event: the client is the
    /// same for every target and must cost as little CPU as possible.
    async fn lean_connection(
        addr: SocketAddr,
        path: String,
        shared: Arc<Shared>,
        ready: tokio::sync::oneshot::Sender<bool>,
    ) {
        // A refused stream is retried, as an EventSource would: some peers
        // refuse a share of a burst of new connections.
        let mut ready = Some(ready);
        for attempt in 0..CONNECT_ATTEMPTS {
            if attempt > 0 {
                shared.failures.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
            }
            if lean_attempt(addr, &path, &shared, &mut ready).await {
                return;
            }
        }
        if let Some(ready) = ready {
            let _ = ready.send(false);
        }
    }

    /// One attempt; false if it failed before the stream started.
    async fn lean_attempt(
        addr: SocketAddr,
        path: &str,
        shared: &Shared,
        ready: &mut Option<tokio::sync::oneshot::Sender<bool>>,
    ) -> bool {
        let fail = |counter: &AtomicU64| {
            counter.fetch_add(1, Ordering::Relaxed);
            false
        };
        let Ok(mut tcp) = TcpStream::connect(addr).await else {
            return fail(&shared.failures.connect);
        };
        let _ = tcp.set_nodelay(true);
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        if tcp.write_all(request.as_bytes()).await.is_err() {
            return fail(&shared.failures.connect);
        }
        let mut buf = vec![0u8; 4096];
        let mut have = 0;
        let head_end = loop {
            if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if have == buf.len() {
                return fail(&shared.failures.status);
            }
            match tcp.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return fail(&shared.failures.closed_early),
                Ok(n) => have += n,
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status: u64 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        if status != 200 {
            shared.failures.last_status.store(status, Ordering::Relaxed);
            return fail(&shared.failures.status);
        }
        let chunked = head.contains("\r\ntransfer-encoding: chunked");
        let _open = OpenGuard::new(&shared.open);
        if let Some(ready) = ready.take() {
            let _ = ready.send(true);
        }
        let mut parser = SseParser::default();
        let mut decoder = chunked.then_some(Chunked::Size { n: 0, ext: false });
        let mut on_event = |event: &[u8], data: &[u8]| shared.on_event(event, data);
        let mut start = head_end;
        loop {
            let bytes = &buf[start..have];
            match &mut decoder {
                Some(d) => d.feed(bytes, &mut |body| parser.feed(body, &mut on_event)),
                None => parser.feed(bytes, &mut on_event),
            }
            if matches!(decoder, Some(Chunked::Done)) {
                break;
            }
            start = 0;
            have = match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
        }
        true
    }

    /// One SSE connection: HTTP/1.1 GET, then every event through the
    /// `eventsource-stream` parser. `ready` says whether it got a 200.
    async fn connection(
        addr: SocketAddr,
        path: String,
        shared: Arc<Shared>,
        ready: tokio::sync::oneshot::Sender<bool>,
    ) {
        let Ok(tcp) = TcpStream::connect(addr).await else {
            let _ = ready.send(false);
            return;
        };
        let _ = tcp.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp)).await
        else {
            let _ = ready.send(false);
            return;
        };
        let mut conn = std::pin::pin!(conn);
        let Ok(req) = Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::ACCEPT, "text/event-stream")
            .body(Empty::new())
        else {
            let _ = ready.send(false);
            return;
        };
        let resp = tokio::select! {
            r = sender.send_request(req) => r.ok(),
            _ = &mut conn => None,
        };
        let Some(resp) = resp.filter(|r| r.status() == StatusCode::OK) else {
            let _ = ready.send(false);
            return;
        };
        let _open = OpenGuard::new(&shared.open);
        let _ = ready.send(true);
        let mut events = resp.into_body().into_data_stream().eventsource();
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(ev)) => shared.on_event(ev.event.as_bytes(), ev.data.as_bytes()),
                    _ => break,
                },
                _ = &mut conn => break,
            }
        }
        drop(sender);
    }

    pub(super) async fn run(args: &[String]) {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut latency = false;
        let mut lean = true;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--addrs" => {
                    addrs = it
                        .next()
                        .map(|v| v.split(',').filter_map(|a| a.parse().ok()).collect())
                        .unwrap_or_default()
                }
                "--latency" => latency = true,
                "--parser" => lean = it.next().is_none_or(|p| p != "eventsource-stream"),
                _ => {}
            }
        }
        let shared = Arc::new(Shared {
            latency: latency.then(|| Mutex::new(Vec::new())),
            ..Shared::default()
        });
        let mut conns: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let limit = Arc::new(tokio::sync::Semaphore::new(OPEN_IN_FLIGHT));
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let mut stdout = tokio::io::stdout();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut words = line.splitn(3, ' ');
            let reply = match (words.next(), words.next(), words.next()) {
                (Some("open"), Some(n), Some(path)) => {
                    let n: usize = n.parse().unwrap_or(0);
                    let mut waits = Vec::with_capacity(n);
                    for _ in 0..n {
                        let index = conns.len();
                        let addr = addrs[index % addrs.len().max(1)];
                        let path = path.replace("{i}", &index.to_string());
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let Ok(permit) = limit.clone().acquire_owned().await else {
                            break;
                        };
                        let shared = shared.clone();
                        conns.push(if lean {
                            tokio::spawn(lean_connection(addr, path, shared, tx))
                        } else {
                            tokio::spawn(connection(addr, path, shared, tx))
                        });
                        waits.push(tokio::spawn(async move {
                            let ok = tokio::time::timeout(Duration::from_secs(30), rx)
                                .await
                                .is_ok_and(|r| r.unwrap_or(false));
                            drop(permit);
                            ok
                        }));
                    }
                    let mut opened = 0;
                    for w in waits {
                        if w.await.unwrap_or(false) {
                            opened += 1;
                        } else {
                            shared.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    json!({"opened": opened})
                }
                (Some("close"), Some(n), _) => {
                    let n: usize = n.parse().unwrap_or(0);
                    for c in conns.drain(conns.len().saturating_sub(n)..) {
                        c.abort();
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    json!({"closed": n})
                }
                (Some("stats"), _, _) => {
                    let mut out = json!({
                        "open": shared.open.load(Ordering::Relaxed),
                        "failed": shared.failed.load(Ordering::Relaxed),
                        "events": shared.events.load(Ordering::Relaxed),
                        "stray": shared.stray.load(Ordering::Relaxed),
                        "last_ns": shared.last_ns.load(Ordering::Relaxed),
                        "failed_connect": shared.failures.connect.load(Ordering::Relaxed),
                        "failed_status": shared.failures.status.load(Ordering::Relaxed),
                        "last_bad_status": shared.failures.last_status.load(Ordering::Relaxed),
                        "failed_closed_early": shared.failures.closed_early.load(Ordering::Relaxed),
                        "retries": shared.failures.retries.load(Ordering::Relaxed),
                    });
                    if let Some(lat) = &shared.latency {
                        let mut sorted = lat.lock().map(|l| l.clone()).unwrap_or_default();
                        sorted.sort_unstable();
                        out["lat"] = lat_summary(&sorted);
                    }
                    out
                }
                (Some("reset"), _, _) => {
                    if let Some(lat) = &shared.latency {
                        if let Ok(mut lat) = lat.lock() {
                            lat.clear();
                        }
                    }
                    json!({"reset": true})
                }
                (Some("quit"), _, _) => break,
                _ => json!({"error": line}),
            };
            if stdout
                .write_all(format!("{reply}\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
            let _ = stdout.flush().await;
        }
        for c in conns {
            c.abort();
        }
    }
}
