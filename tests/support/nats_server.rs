//! Real NATS for the NATS backend's tests: `nats-server` processes a test
//! starts (and may kill and restart on the same port), the machine's NATS on
//! 4222 for tests that inject no fault, and raw NATS protocol clients over a
//! std `TcpStream` that talk to the server without going through the crate
//! or any NATS client library (the "non-Rust" publisher and subscriber).
//!
//! Starting, skipping and killing are shared with Redis: see `server`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::server::current_test;
use super::server::{self, unique_name, ServerProcess};

/// The machine's NATS, for tests that inject no fault.
pub const MACHINE_NATS: &str = "127.0.0.1:4222";

/// Where the distribution package installs the server.
const SERVER_PATH: &str = "/usr/sbin/nats-server";
/// How long a started `nats-server` may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of every raw protocol exchange.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Reports that the running test cannot run: panics in CI, else prints a
/// `SKIPPED:` line on stderr and returns `None`, so that the test can return
/// early.
pub fn skip<T>(reason: &str) -> Option<T> {
    server::skip(&current_test(), reason)
}

/// A unique subject prefix on a shared NATS: one valid subject token (ASCII
/// letters, digits, `-`, `_`; no dots, spaces or wildcards).
pub fn unique_prefix() -> String {
    unique_name(&current_test())
}

/// The machine's NATS URL (`nats://127.0.0.1:4222`) once it answered
/// `PING`; `None` (skipped) or a panic (in CI) when it is unreachable.
pub fn machine_nats() -> Option<String> {
    match ping(MACHINE_NATS, None) {
        Ok(()) => Some(format!("nats://{MACHINE_NATS}")),
        Err(err) => skip(&format!("no NATS at {MACHINE_NATS}: {err}")),
    }
}

/// `$SSE_CLUSTER_NATS_SERVER` when set, else `/usr/sbin/nats-server`, or
/// `nats-server` on the PATH.
fn server_binary() -> Result<PathBuf, String> {
    let mut errors = Vec::new();
    let candidates = match std::env::var_os("SSE_CLUSTER_NATS_SERVER") {
        Some(path) => vec![PathBuf::from(path)],
        None => vec![PathBuf::from(SERVER_PATH), PathBuf::from("nats-server")],
    };
    for candidate in candidates {
        match server::runs(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(err) => errors.push(err),
        }
    }
    Err(format!("cannot run nats-server ({})", errors.join("; ")))
}

/// One `nats-server` process started by a test, on a loopback port. Killed
/// on drop; its temp dir (log, JetStream store) is removed. The
/// [`ServerProcess`] it derefs to restarts (same port and store) and kills it.
pub struct NatsServer {
    process: ServerProcess,
}

impl Deref for NatsServer {
    type Target = ServerProcess;

    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl DerefMut for NatsServer {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

impl NatsServer {
    /// Starts `nats-server` on a free loopback port (with JetStream, stored
    /// in a temp dir, when `jetstream`) and waits until it answers `PING`.
    /// `None` (skipped) or a panic (in CI) when there is no `nats-server`.
    pub fn start(jetstream: bool) -> Option<NatsServer> {
        Self::start_with(jetstream, &[])
    }

    /// Like [`Self::start`], with `extra` arguments (e.g. `["--auth",
    /// "secret"]`; the readiness check then authenticates with that token).
    pub fn start_with(jetstream: bool, extra: &[&str]) -> Option<NatsServer> {
        let binary = match server_binary() {
            Ok(binary) => binary,
            Err(err) => return skip(&err),
        };
        let mut process = ServerProcess::new("nats-server", "nats.log", START_TIMEOUT);
        let token = extra
            .iter()
            .position(|a| *a == "--auth")
            .and_then(|at| extra.get(at + 1))
            .map(|t| t.to_string());
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (dir, log) = (process.dir().to_owned(), process.log_path().to_owned());
        let command = move |port: u16| {
            let mut command = Command::new(&binary);
            command
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .arg("-l")
                .arg(&log);
            if jetstream {
                command.arg("-js").arg("-sd").arg(dir.join("jetstream"));
            }
            command.args(&extra);
            command
        };
        let ready = move |addr: &str| ping(addr, token.as_deref());
        match process.start(command, ready) {
            Ok(()) => Some(NatsServer { process }),
            Err(err) => panic!("nats-server did not start: {err}"),
        }
    }

    /// `nats://127.0.0.1:PORT` (without the token, even with `--auth`).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }
}

/// The `CONNECT` line of the raw clients (with `auth_token` if given).
fn connect_line(token: Option<&str>) -> String {
    let mut options = serde_json::json!({"verbose": false, "pedantic": false});
    if let Some(token) = token {
        options["auth_token"] = token.into();
    }
    format!("CONNECT {options}\r\n")
}

/// A raw NATS protocol connection over a std `TcpStream`: no client library.
pub struct RawConnection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The start of a line a read timeout interrupted.
    partial: Vec<u8>,
}

impl RawConnection {
    /// Connects, reads the server's `INFO` line, sends `CONNECT` (with
    /// `auth_token` if given) and `PING`, and waits for `PONG`.
    pub fn open(addr: &str, token: Option<&str>) -> Result<RawConnection, String> {
        let sock: SocketAddr = addr.parse().map_err(|e| format!("address {addr}: {e}"))?;
        let stream = TcpStream::connect_timeout(&sock, IO_TIMEOUT).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut conn = RawConnection {
            reader: BufReader::new(stream),
            writer,
            partial: Vec::new(),
        };
        let info = conn.read_line()?;
        if !info.starts_with("INFO ") {
            return Err(format!("expected INFO, got {info:?}"));
        }
        conn.write(connect_line(token).as_bytes())?;
        conn.ping()?;
        Ok(conn)
    }

    /// Sends `bytes` as they are.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.writer
            .write_all(bytes)
            .and_then(|()| self.writer.flush())
            .map_err(|e| format!("write: {e}"))
    }

    /// Sends `PING` and waits for `PONG`: the server has processed
    /// everything sent before (it handles one connection's operations in
    /// order). Messages received meanwhile are discarded.
    pub fn ping(&mut self) -> Result<(), String> {
        self.write(b"PING\r\n")?;
        for _ in 0..10_000 {
            let line = self.read_line()?;
            match line.as_str() {
                "PONG" => return Ok(()),
                "PING" => self.write(b"PONG\r\n")?,
                "+OK" => {}
                l if l.starts_with("-ERR") => return Err(format!("server error: {l}")),
                l if l.starts_with("INFO ") => {}
                l if l.starts_with("MSG ") => {
                    self.read_payload(l)?;
                }
                other => return Err(format!("unexpected {other:?} while waiting for PONG")),
            }
        }
        Err("no PONG among 10000 lines".into())
    }

    /// `PUB subject len\r\npayload\r\n` (no round trip; see [`Self::ping`]).
    pub fn publish(&mut self, subject: &str, payload: &[u8]) -> Result<(), String> {
        let mut op = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        op.extend_from_slice(payload);
        op.extend_from_slice(b"\r\n");
        self.write(&op)
    }

    /// `SUB subject sid` followed by a `PING`/`PONG` round trip: once this
    /// returns, the server routes matching messages here.
    pub fn subscribe(&mut self, subject: &str, sid: u32) -> Result<(), String> {
        self.write(format!("SUB {subject} {sid}\r\n").as_bytes())?;
        self.ping()
    }

    /// The next `MSG` (subject and payload) within `limit`; `Ok(None)` on
    /// timeout. Answers the server's `PING`s.
    pub fn next_msg(&mut self, limit: Duration) -> Result<Option<(String, Vec<u8>)>, String> {
        let deadline = Instant::now() + limit;
        for _ in 0..10_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            let Some(line) = self.read_line_within()? else {
                return Ok(None);
            };
            match line.as_str() {
                "PING" => self.write(b"PONG\r\n")?,
                "PONG" | "+OK" => {}
                l if l.starts_with("INFO ") => {}
                l if l.starts_with("-ERR") => return Err(format!("server error: {l}")),
                l if l.starts_with("MSG ") => {
                    let subject = l.split(' ').nth(1).unwrap_or_default().to_owned();
                    let payload = self.read_payload(l)?;
                    return Ok(Some((subject, payload)));
                }
                other => return Err(format!("unexpected {other:?}")),
            }
        }
        Err("no MSG among 10000 lines".into())
    }

    fn read_payload(&mut self, msg_line: &str) -> Result<Vec<u8>, String> {
        let len: usize = msg_line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("bad MSG line {msg_line:?}"))?;
        self.reader
            .get_ref()
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut payload = vec![0; len + 2];
        self.reader
            .read_exact(&mut payload)
            .map_err(|e| format!("read payload: {e}"))?;
        if !payload.ends_with(b"\r\n") {
            return Err(format!("payload of {msg_line:?} not followed by CRLF"));
        }
        payload.truncate(len);
        Ok(payload)
    }

    /// One line (without its CRLF); a read timeout is an error.
    fn read_line(&mut self) -> Result<String, String> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        self.read_line_within()?
            .ok_or_else(|| format!("no line within {IO_TIMEOUT:?}"))
    }

    /// One line (without its CRLF), or `None` when the socket's read
    /// timeout expired first (a partial line is kept for the next call).
    fn read_line_within(&mut self) -> Result<Option<String>, String> {
        match self.reader.read_until(b'\n', &mut self.partial) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(format!("read: {e}")),
        }
        let mut line = std::mem::take(&mut self.partial);
        if !line.ends_with(b"\r\n") {
            return Err(format!(
                "connection closed: {:?}",
                String::from_utf8_lossy(&line)
            ));
        }
        line.truncate(line.len() - 2);
        Ok(Some(String::from_utf8_lossy(&line).into_owned()))
    }
}

/// Connects, authenticates if `token` is given, and checks that the server
/// answers `PING` with `PONG`.
pub fn ping(addr: &str, token: Option<&str>) -> Result<(), String> {
    RawConnection::open(addr, token).map(drop)
}

/// The "non-Rust client" publisher: over a fresh std `TcpStream`, reads
/// `INFO`, writes `CONNECT {"verbose":false,"pedantic":false}`, `PUB subject
/// len`, the payload and `PING`, and waits for `PONG` (so the server has
/// routed the message when this returns). Panics on any error.
pub fn raw_pub(addr: &str, subject: &str, payload: &[u8]) {
    try_raw_pub(addr, subject, payload).unwrap_or_else(|e| panic!("raw PUB {subject}: {e}"));
}

/// [`raw_pub`], returning the error instead of panicking.
pub fn try_raw_pub(addr: &str, subject: &str, payload: &[u8]) -> Result<(), String> {
    let mut conn = RawConnection::open(addr, None)?;
    conn.publish(subject, payload)?;
    conn.ping()
}

/// The `nats` CLI, if installed (it is optional: tests use it in addition
/// to [`raw_pub`] when present).
pub fn nats_cli() -> Option<PathBuf> {
    let ok = Command::new("nats")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| PathBuf::from("nats"))
}

/// `nats --server URL pub SUBJECT PAYLOAD`; panics if it fails.
pub fn nats_cli_pub(cli: &Path, server_url: &str, subject: &str, payload: &str) {
    let out = Command::new(cli)
        .args(["--server", server_url, "pub", subject, payload])
        .stdin(Stdio::null())
        .output()
        .expect("run nats pub");
    assert!(
        out.status.success(),
        "nats pub {subject}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP relay in front of a real server that delays every byte a client
/// sends by a fixed latency (the server's bytes pass at once), like a
/// client far from its NATS server; and that can cut every connection (a
/// network fault), after which clients reconnect through it. Runs on the
/// test's Tokio runtime; stops when dropped.
pub struct SlowLink {
    port: u16,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    /// Listens on a free loopback port and relays to `upstream`
    /// (`HOST:PORT`), delaying client-to-server bytes by `delay`.
    pub async fn start(upstream: &str, delay: Duration) -> SlowLink {
        let upstream: SocketAddr = upstream.parse().expect("upstream address");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let port = listener.local_addr().expect("relay addr").port();
        let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    cut_rx.borrow_and_update();
                    // Dropping the pump closes both sockets.
                    tokio::select! {
                        () = pump(client, server, delay) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        SlowLink { port, cut, task }
    }

    /// `nats://127.0.0.1:PORT` of the relay.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Closes every relayed connection now (new ones are still accepted).
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn pump(client: tokio::net::TcpStream, server: tokio::net::TcpStream, delay: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let (queue_tx, mut queue_rx) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let upstream_read = async move {
        let mut buf = vec![0; 64 * 1024];
        loop {
            match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = tokio::time::Instant::now() + delay;
                    if queue_tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let upstream_write = async move {
        while let Some((due, bytes)) = queue_rx.recv().await {
            tokio::time::sleep_until(due).await;
            if server_tx.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = server_tx.shutdown().await;
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
    };
    tokio::join!(upstream_read, upstream_write, downstream);
}

/// Three `nats-server`s in one cluster (routes between them on loopback),
/// each with JetStream, so that streams can be replicated over all three.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    /// Each server's name (`-n`), as stream infos name their leader.
    pub names: Vec<String>,
}

impl NatsCluster {
    /// Starts the three servers and waits until each sees the two others.
    pub fn start() -> Option<NatsCluster> {
        let routes: Vec<u16> = (0..3).map(|_| server::free_port()).collect();
        let name = unique_prefix();
        let mut servers = Vec::new();
        let mut names = Vec::new();
        for (i, port) in routes.iter().enumerate() {
            let others: Vec<String> = routes
                .iter()
                .filter(|p| *p != port)
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            let listen = format!("nats://127.0.0.1:{port}");
            let server_name = format!("{name}-{i}");
            let args = [
                "--cluster_name",
                name.as_str(),
                "-n",
                server_name.as_str(),
                "--cluster",
                listen.as_str(),
                "--routes",
                &others.join(","),
            ];
            servers.push(NatsServer::start_with(true, &args)?);
            names.push(server_name);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for server in &servers {
            loop {
                let routes = route_count(server.port());
                if routes >= Some(2) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the NATS cluster did not form: {routes:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Some(NatsCluster { servers, names })
    }
}

/// How many routes the server on `port` has, from its `INFO` line's
/// `connect_urls` (the other servers' client URLs it gossips).
fn route_count(port: u16) -> Option<usize> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    let mut line = String::new();
    BufReader::new(&mut stream).read_line(&mut line).ok()?;
    let info: serde_json::Value = serde_json::from_str(line.strip_prefix("INFO ")?).ok()?;
    Some(
        info["connect_urls"]
            .as_array()
            .map_or(0, |urls| urls.len().saturating_sub(1)),
    )
}
