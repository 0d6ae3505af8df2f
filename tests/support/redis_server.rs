//! Real Redis for the Redis backend's tests: `redis-server` processes this
//! test starts (and may kill and restart), the machine's Redis on 6379 for
//! tests that inject no fault, and a raw RESP client that talks to Redis
//! without going through the crate (a "non-Rust publisher").
//!
//! Starting, skipping and killing are shared with NATS: see `server`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::server::skip;
use super::server::{self, unique_name, ServerProcess};

/// The machine's Redis, for tests that inject no fault.
pub const MACHINE_REDIS: &str = "127.0.0.1:6379";

/// How long a started `redis-server` may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of every raw RESP exchange.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A unique channel prefix for `test` on a shared Redis.
pub fn unique_prefix(test: &str) -> String {
    format!("{}:", unique_name(test))
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
/// persistence. Killed on drop; the [`ServerProcess`] it derefs to restarts,
/// signals and kills it.
pub struct RedisServer {
    process: ServerProcess,
}

impl Deref for RedisServer {
    type Target = ServerProcess;

    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl DerefMut for RedisServer {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
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
        if let Err(err) = server::runs(Path::new("redis-server")) {
            return skip(test, &err);
        }
        let mut process = ServerProcess::new("redis-server", "redis.log", START_TIMEOUT);
        let dir = process.dir().to_owned();
        let log = process.log_path().to_owned();
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
                .arg(dir.join("key.pem"))
                .arg("-out")
                .arg(dir.join("cert.pem"))
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
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let password = args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|at| args.get(at + 1))
            .cloned();
        let command = move |port: u16| {
            let port = port.to_string();
            let mut command = Command::new("redis-server");
            command.args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]);
            if tls {
                let cert = dir.join("cert.pem");
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
                    .arg(dir.join("key.pem"))
                    .arg("--tls-ca-cert-file")
                    .arg(&cert);
            } else {
                command.args(["--port", &port]);
            }
            command
                .arg("--dir")
                .arg(&dir)
                .arg("--logfile")
                .arg(&log)
                .args(&args);
            command
        };
        let log = process.log_path().to_owned();
        let ready = move |addr: &str| -> Result<(), String> {
            if tls {
                // No TLS client here: the log saying ready and the port
                // accepting connections are enough.
                TcpStream::connect(addr).map_err(|e| format!("TLS port not open: {e}"))?;
                let ready = std::fs::read_to_string(&log)
                    .is_ok_and(|log| log.contains("Ready to accept connections"));
                return if ready {
                    Ok(())
                } else {
                    Err("not ready".into())
                };
            }
            let ping: &[&[u8]] = &[b"PING"];
            let replies = match &password {
                Some(pw) => resp_exchange(addr, &[&[b"AUTH".as_slice(), pw.as_bytes()], ping])?,
                None => resp_exchange(addr, &[ping])?,
            };
            match replies.last() {
                Some(reply) if reply.starts_with("+PONG") => Ok(()),
                other => Err(format!("PING answered {other:?}")),
            }
        };
        match process.start(command, ready) {
            Ok(()) => Some(RedisServer { process }),
            Err(err) if tls && err.to_ascii_lowercase().contains("tls") => {
                skip(test, &format!("redis-server without TLS? {err}"))
            }
            Err(err) => panic!("redis-server did not start: {err}"),
        }
    }

    /// `redis://127.0.0.1:PORT` (no password, even with `--requirepass`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// `rediss://127.0.0.1:PORT/#insecure` (the certificate is self-signed).
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/#insecure", self.port())
    }
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
