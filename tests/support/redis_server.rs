//! Real Redis for the Redis backend's tests: `redis-server` processes this
//! test starts (and may kill and restart), the machine's Redis on 6379 for
//! tests that inject no fault, and a raw RESP client that talks to Redis
//! without going through the crate (a "non-Rust publisher").
//!
//! When Redis is not available, a test is skipped with a `SKIPPED:` line on
//! stderr, unless `CI` is set: then it fails, so that a CI run cannot pass
//! without having run the Redis tests.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The machine's Redis, for tests that inject no fault.
pub const MACHINE_REDIS: &str = "127.0.0.1:6379";

/// How long a started `redis-server` may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of every raw RESP exchange.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// True when running in CI (`CI` set to anything but empty, `0` or `false`):
/// a missing Redis then fails the test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Reports that `test` cannot run: panics in CI, else prints a `SKIPPED:`
/// line on stderr and returns `None`, so that the test can return early.
pub fn skip<T>(test: &str, reason: &str) -> Option<T> {
    if in_ci() {
        panic!("{test}: {reason} (CI is set, so this fails instead of being skipped)");
    }
    // Straight to the process's stderr: libtest captures `eprintln!` of
    // passing tests, and a skip must be visible.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {reason}");
    None
}

/// A unique channel prefix for `test` on a shared Redis.
pub fn unique_prefix(test: &str) -> String {
    format!("t-{test}-{}-{}:", std::process::id(), fastrand::u32(..))
}

/// The machine's Redis URL (`redis://127.0.0.1:6379`) once it answered
/// `PING`; `None` (skipped) or a panic (in CI) when it is unreachable.
pub fn machine_redis(test: &str) -> Option<String> {
    match ping(MACHINE_REDIS) {
        Ok(()) => Some(format!("redis://{MACHINE_REDIS}")),
        Err(err) => skip(test, &format!("no Redis at {MACHINE_REDIS}: {err}")),
    }
}

/// One `redis-server` process started by a test, on a loopback port, with no
/// persistence. Killed on drop.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    tls: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port; see [`Self::start_with`].
    pub fn start(test: &str) -> Option<RedisServer> {
        Self::start_with(test, &[])
    }

    /// Starts `redis-server` with `extra` arguments (e.g. `--requirepass x`)
    /// and waits until it answers `PING` (with `AUTH` first if `extra` sets
    /// `--requirepass`). `None` (skipped) or a panic (in CI) when there is no
    /// `redis-server` on the PATH.
    pub fn start_with(test: &str, extra: &[&str]) -> Option<RedisServer> {
        Self::launch(test, extra, false)
    }

    /// Starts `redis-server` speaking TLS only (`--port 0 --tls-port P`),
    /// with a self-signed certificate made by `openssl` in its temp dir and
    /// no client certificates required; see [`Self::tls_url`].
    pub fn start_tls(test: &str) -> Option<RedisServer> {
        Self::launch(test, &[], true)
    }

    fn launch(test: &str, extra: &[&str], tls: bool) -> Option<RedisServer> {
        if let Err(err) = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            return skip(test, &format!("cannot run redis-server: {err}"));
        }
        let dir = std::env::temp_dir().join(format!(
            "sse-cluster-redis-{test}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("create redis temp dir");
        let mut server = RedisServer {
            port: 0,
            dir,
            args: extra.iter().map(|s| s.to_string()).collect(),
            tls,
            child: None,
        };
        if tls {
            let made = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .arg("-keyout")
                .arg(server.dir.join("key.pem"))
                .arg("-out")
                .arg(server.dir.join("cert.pem"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match made {
                Ok(status) if status.success() => {}
                Ok(status) => return skip(test, &format!("openssl req failed: {status}")),
                Err(err) => return skip(test, &format!("cannot run openssl: {err}")),
            }
        }
        // Another process may grab the free port between our probe and
        // redis-server's bind: try a few ports.
        let mut last_error = String::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(err) => {
                    server.kill();
                    last_error = err;
                }
            }
        }
        if tls && last_error.to_ascii_lowercase().contains("tls") {
            return skip(test, &format!("redis-server without TLS? {last_error}"));
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// `redis://127.0.0.1:PORT` (no password, even with `--requirepass`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `rediss://127.0.0.1:PORT/#insecure` (the certificate is self-signed).
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/#insecure", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, for [`resp_command`].
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The temp dir given as `--dir` (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the server process: `STOP`
    /// freezes it with every connection open, a silent death.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("server running").id();
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGKILLs the server (no shutdown, no goodbye to clients) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port
    /// and waits until it answers `PING`.
    pub fn restart(&mut self) {
        self.kill();
        // The port may take a moment to be free again.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(err) if Instant::now() >= deadline => {
                    panic!("redis-server did not restart on port {}: {err}", self.port)
                }
                Err(_) => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn password(&self) -> Option<&str> {
        let at = self.args.iter().position(|a| a == "--requirepass")?;
        self.args.get(at + 1).map(String::as_str)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let log = self.dir.join("redis.log");
        // A fresh log per run: readiness and errors are read from it.
        let _ = std::fs::remove_file(&log);
        let mut command = Command::new("redis-server");
        command.args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]);
        if self.tls {
            let cert = self.dir.join("cert.pem");
            command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(&cert)
                .arg("--tls-key-file")
                .arg(self.dir.join("key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(&cert);
        } else {
            command.args(["--port", &port]);
        }
        let child = command
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = self.addr();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "redis-server exited with {status}; log:\n{}",
                        self.log_tail()
                    ));
                }
            }
            if self.tls {
                // No TLS client here: the log saying ready and the port
                // accepting connections are enough.
                let ready = std::fs::read_to_string(self.dir.join("redis.log"))
                    .is_ok_and(|log| log.contains("Ready to accept connections"));
                match TcpStream::connect(&addr) {
                    Ok(_) if ready => return Ok(()),
                    Err(err) if Instant::now() >= deadline => {
                        return Err(format!("TLS port not open: {err}"))
                    }
                    _ if Instant::now() >= deadline => {
                        return Err(format!("not ready; log:\n{}", self.log_tail()))
                    }
                    _ => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                }
            }
            let answer = match self.password() {
                Some(pw) => {
                    resp_exchange(&addr, &[&[b"AUTH".as_slice(), pw.as_bytes()], &[b"PING"]])
                        .map(|replies| replies.last().cloned().unwrap_or_default())
                }
                None => resp_exchange(&addr, &[&[b"PING"]])
                    .map(|replies| replies.last().cloned().unwrap_or_default()),
            };
            match answer {
                Ok(reply) if reply.starts_with("+PONG") => return Ok(()),
                Ok(reply) if Instant::now() >= deadline => {
                    return Err(format!("PING answered {reply:?}"))
                }
                Err(err) if Instant::now() >= deadline => {
                    return Err(format!(
                        "no PONG within {START_TIMEOUT:?}: {err}; log:\n{}",
                        self.log_tail()
                    ))
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Sends `PING` and expects `+PONG`.
pub fn ping(addr: &str) -> Result<(), String> {
    let reply = resp_exchange(addr, &[&[b"PING"]])?;
    match reply.first() {
        Some(r) if r.starts_with("+PONG") => Ok(()),
        other => Err(format!("PING answered {other:?}")),
    }
}

/// Sends one command (`args[0]` is its name) over a fresh TCP connection as
/// a raw RESP array, and returns the raw reply (e.g. `":1\r\n"`), without
/// going through the crate or any Redis client library. Panics on I/O errors.
pub fn resp_command(addr: &str, args: &[&[u8]]) -> String {
    let mut replies =
        resp_exchange(addr, &[args]).unwrap_or_else(|e| panic!("RESP to {addr}: {e}"));
    replies.pop().unwrap_or_default()
}

/// The integer of a RESP integer reply (`":3\r\n"` → 3).
pub fn resp_integer(reply: &str) -> Option<i64> {
    reply.strip_prefix(':')?.trim_end().parse().ok()
}

/// Sends `commands` in order over one fresh TCP connection; returns their
/// raw replies.
pub fn resp_exchange(addr: &str, commands: &[&[&[u8]]]) -> Result<Vec<String>, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("address {addr}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let mut request = Vec::new();
    for args in commands {
        request.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in *args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
    }
    stream.write_all(&request).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut replies = Vec::new();
    for _ in commands {
        let mut raw = Vec::new();
        read_reply(&mut reader, &mut raw, 0)?;
        replies.push(String::from_utf8_lossy(&raw).into_owned());
    }
    Ok(replies)
}

/// Reads one RESP2/RESP3 reply into `raw`, as received.
fn read_reply(reader: &mut impl BufRead, raw: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    if depth > 32 {
        return Err("RESP reply nested too deeply".into());
    }
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("read: {e}"))?;
    if !line.ends_with(b"\r\n") {
        return Err(format!(
            "connection closed mid-reply: {:?}",
            String::from_utf8_lossy(&line)
        ));
    }
    raw.extend_from_slice(&line);
    let head = line[0];
    let len = || -> Result<i64, String> {
        std::str::from_utf8(&line[1..line.len() - 2])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad length in {:?}", String::from_utf8_lossy(&line)))
    };
    match head {
        b'$' | b'=' | b'!' => {
            let n = len()?;
            if n >= 0 {
                let mut body = vec![0; n as usize + 2];
                reader
                    .read_exact(&mut body)
                    .map_err(|e| format!("read: {e}"))?;
                raw.extend_from_slice(&body);
            }
        }
        b'*' | b'~' | b'>' => {
            for _ in 0..len()?.max(0) {
                read_reply(reader, raw, depth + 1)?;
            }
        }
        b'%' => {
            for _ in 0..len()?.max(0) * 2 {
                read_reply(reader, raw, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Runs `redis-cli -p PORT args…` and returns its stdout; `None` (skipped)
/// or a panic (in CI) when `redis-cli` cannot be run.
pub fn redis_cli(test: &str, port: u16, args: &[&str]) -> Option<String> {
    match Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "redis-cli {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Err(err) => skip(test, &format!("cannot run redis-cli: {err}")),
    }
}
