//! A real three-shard Redis Cluster on loopback ports, for sharded pub/sub
//! tests. Started with `redis-server --cluster-enabled yes` and joined with
//! `redis-cli --cluster create`; every process is killed on drop. A missing
//! binary skips the test, or fails it under `CI` (see `server::skip`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Three primaries (and, from [`start_with_replicas`], a replica each), all
/// 16384 slots covered.
pub struct RedisCluster {
    children: Vec<Child>,
    ports: Vec<u16>,
    dir: PathBuf,
}

fn free_port() -> u16 {
    // Cluster nodes also listen on port + 10000 (the bus port).
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port());
        if let Ok(port) = port {
            if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
                return port;
            }
        }
    }
}

/// `None` (with a SKIPPED line) when the binaries are missing outside CI;
/// under `CI` a missing binary fails the test.
pub fn start(test: &str) -> Option<RedisCluster> {
    start_with_replicas(test, 0)
}

/// A cluster of three primaries with `replicas` replicas each, and a node
/// timeout of one second, so that a killed primary's replica takes over
/// within a few seconds.
pub fn start_with_replicas(test: &str, replicas: usize) -> Option<RedisCluster> {
    for bin in ["redis-server", "redis-cli"] {
        if let Err(err) = super::server::runs(std::path::Path::new(bin)) {
            return super::server::skip(test, &err);
        }
    }
    let dir = std::env::temp_dir().join(format!(
        "sse-cluster-rc-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let mut cluster = RedisCluster {
        children: Vec::new(),
        ports: Vec::new(),
        dir,
    };
    for _ in 0..3 * (1 + replicas) {
        let port = free_port();
        let node_dir = cluster.dir.join(port.to_string());
        std::fs::create_dir_all(&node_dir).expect("node dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--save", "", "--appendonly", "no"])
            // A replica promotes itself a second after its primary dies,
            // however long ago it last heard from it.
            .args(["--cluster-node-timeout", "1000"])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&node_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        cluster.children.push(child);
        cluster.ports.push(port);
    }
    for &port in &cluster.ports {
        wait_until(Duration::from_secs(5), || {
            cli(port, &["PING"]).trim() == "PONG"
        });
    }
    let nodes: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let status = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&nodes)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-cli --cluster create");
    assert!(status.success(), "cluster create failed");
    for &port in &cluster.ports {
        wait_until(Duration::from_secs(10), || {
            cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
        });
    }
    // A replica that has not synced yet would take over empty.
    for &port in &cluster.ports {
        wait_until(Duration::from_secs(20), || {
            let info = cli(port, &["INFO", "replication"]);
            info.contains("role:master") || info.contains("master_link_status:up")
        });
    }
    Some(cluster)
}

impl RedisCluster {
    /// `redis://127.0.0.1:PORT` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Runs `redis-cli -c` (cluster mode: follows redirects) on the first node.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut full = vec!["-c"];
        full.extend_from_slice(args);
        cli(self.ports[0], &full)
    }

    /// The port of the node that owns `key`'s slot.
    pub fn owner_port(&self, key: &str) -> u16 {
        // Asked of the first node that answers (one may have been killed).
        let ask = |args: &[&str]| {
            self.ports
                .iter()
                .map(|&p| cli(p, args))
                .find(|reply| !reply.trim().is_empty())
                .unwrap_or_default()
        };
        let slot: u16 = ask(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("slot");
        let nodes = ask(&["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let owns = fields
                .iter()
                .skip(8)
                .any(|range| match range.split_once('-') {
                    Some((a, b)) => {
                        a.parse::<u16>().is_ok_and(|a| a <= slot)
                            && b.parse::<u16>().is_ok_and(|b| slot <= b)
                    }
                    None => range.parse::<u16>().is_ok_and(|s| s == slot),
                });
            if owns {
                let addr = fields[1].split('@').next().unwrap_or_default();
                return addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("port");
            }
        }
        panic!("no owner for slot {slot}: {nodes}");
    }

    /// SIGKILLs the node on `port` (and reaps it).
    pub fn kill(&mut self, port: u16) {
        if let Some(at) = self.ports.iter().position(|&p| p == port) {
            let _ = self.children[at].kill();
            let _ = self.children[at].wait();
        }
    }

    /// Whether every live node says `cluster_state:ok` and lists the node
    /// on `port` without slots (a replica took them over).
    pub fn healed_without(&self, port: u16) -> bool {
        let tag = format!(":{port}@");
        self.ports.iter().filter(|&&p| p != port).all(|&p| {
            cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                && cli(p, &["CLUSTER", "NODES"])
                    .lines()
                    .filter(|l| l.contains(&tag))
                    .all(|l| l.split_whitespace().count() <= 8)
        })
    }

    /// Runs `redis-cli` against the node on `port`.
    pub fn cli_at(&self, port: u16, args: &[&str]) -> String {
        cli(port, args)
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "redis cluster not ready within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
