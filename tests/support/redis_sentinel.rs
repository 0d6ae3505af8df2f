//! A Redis Sentinel setup spawned by a test: a primary, two replicas and
//! three sentinels (`redis-server --sentinel`), all on free loopback
//! ports, with a one-second down-after so that a killed primary is
//! replaced within a few seconds.

use std::process::Command;
use std::time::{Duration, Instant};

use super::redis_server::{ping, resp_command, RedisServer};
use super::server::{skip, ServerProcess};

/// The primary's name in the sentinels' configuration.
pub const MASTER: &str = "ssemaster";

/// How long a sentinel waits for a silent primary before calling it down.
pub const DOWN_AFTER_MS: u64 = 1000;

/// The processes of one Sentinel setup; all killed on drop.
pub struct SentinelSet {
    pub primary: RedisServer,
    pub replicas: Vec<RedisServer>,
    pub sentinels: Vec<ServerProcess>,
}

impl SentinelSet {
    /// Starts the primary, the replicas (waiting until they are in sync) and
    /// the sentinels (waiting until each knows both replicas and the two other
    /// sentinels, so that a failover can be agreed on). `None` (skipped)
    /// or a panic (in CI) without `redis-server`.
    pub fn start(test: &str) -> Option<SentinelSet> {
        let primary = RedisServer::start(test)?;
        let primary_port = primary.port().to_string();
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let replica =
                RedisServer::start_with(test, &["--replicaof", "127.0.0.1", &primary_port])?;
            wait("the replica to sync", Duration::from_secs(10), || {
                resp_command(&replica.addr(), &[b"INFO", b"replication"])
                    .contains("master_link_status:up")
            });
            replicas.push(replica);
        }
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let mut sentinel =
                ServerProcess::new("redis-sentinel", "sentinel.log", Duration::from_secs(5));
            let dir = sentinel.dir().to_owned();
            let log = sentinel.log_path().to_owned();
            let primary_port = primary_port.clone();
            let command = move |port: u16| {
                // Sentinel rewrites its configuration file: one per start.
                let conf = dir.join("sentinel.conf");
                let text = format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n\
                     sentinel failover-timeout {MASTER} 5000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir = dir.display(),
                    log = log.display(),
                );
                std::fs::write(&conf, text).expect("write sentinel.conf");
                let mut command = Command::new("redis-server");
                command.arg(&conf).arg("--sentinel");
                command
            };
            let ready = |addr: &str| -> Result<(), String> { ping(addr) };
            if let Err(err) = sentinel.start(command, ready) {
                return skip(
                    test,
                    &format!("redis-server --sentinel did not start: {err}"),
                );
            }
            sentinels.push(sentinel);
        }
        for sentinel in &sentinels {
            wait(
                "each sentinel to know the replicas and the other sentinels",
                Duration::from_secs(20),
                || {
                    let addr = sentinel.addr();
                    let master = resp_command(&addr, &[b"SENTINEL", b"master", MASTER.as_bytes()]);
                    // `num-other-sentinels` then its value, `num-slaves`…
                    let field = |name: &str| -> Option<u64> {
                        let lines: Vec<&str> = master.lines().collect();
                        let at = lines.iter().position(|l| *l == name)?;
                        lines.get(at + 2)?.trim().parse().ok()
                    };
                    field("num-slaves") >= Some(2) && field("num-other-sentinels") >= Some(2)
                },
            );
        }
        Some(SentinelSet {
            primary,
            replicas,
            sentinels,
        })
    }

    /// `redis://127.0.0.1:PORT` of each sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://{}", s.addr()))
            .collect()
    }

    /// The port the sentinels name as the primary now.
    pub fn primary_port(&self) -> Option<u16> {
        let reply = resp_command(
            &self.sentinels[0].addr(),
            &[b"SENTINEL", b"get-master-addr-by-name", MASTER.as_bytes()],
        );
        // *2 $9 127.0.0.1 $5 PORT
        reply.lines().nth(4).and_then(|p| p.trim().parse().ok())
    }
}

/// Waits until `cond` holds; panics after `limit`.
fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
