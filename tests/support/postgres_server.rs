//! Real Postgres for the Postgres backend's tests: throwaway clusters this
//! test starts (and may kill and restart), the shared server named by
//! `SSE_CLUSTER_POSTGRES_URL` (default: the machine's, on 127.0.0.1:5432)
//! for tests that inject no fault, and `psql` as a publisher from outside
//! the crate.
//!
//! `initdb` refuses to run as root, so when the tests run as root the
//! cluster belongs to the `postgres` user: `initdb` runs through `runuser`,
//! and the server is started with that user's ids set on the process
//! itself (no wrapper process), so that killing the child kills Postgres.
//! One `initdb` per test process makes a template; each server copies it.

use std::ops::{Deref, DerefMut};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::server::{skip, ServerProcess};

/// The shared server for tests that inject no fault, unless
/// `SSE_CLUSTER_POSTGRES_URL` names another.
pub const MACHINE_POSTGRES: &str = "postgres://root@127.0.0.1:5432/test";

/// How long a started server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where Debian keeps the server binaries, when they are not on the PATH.
const DEBIAN_BIN: &str = "/usr/lib/postgresql";

/// The shared server's URL.
pub fn shared_url() -> String {
    std::env::var("SSE_CLUSTER_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| MACHINE_POSTGRES.to_owned())
}

/// The shared server's URL once a connection to it succeeded; `None`
/// (skipped) or a panic (in CI) when it is unreachable.
pub async fn shared_postgres(test: &str) -> Option<String> {
    let url = shared_url();
    let connect = tokio_postgres::connect(&url, tokio_postgres::NoTls);
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok((client, connection))) => {
            drop(client);
            let _ = connection.await;
            Some(url)
        }
        Ok(Err(err)) => skip(test, &format!("no Postgres at {url}: {err}")),
        Err(_) => skip(test, &format!("no Postgres at {url}: connect timed out")),
    }
}

/// Drops the tables a test made under `prefix` on a shared server (the
/// history's and the broker's large-message table), so that runs leave
/// nothing behind.
pub async fn drop_tables(url: &str, prefix: &str) {
    let Ok((client, connection)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else {
        return;
    };
    let driver = tokio::spawn(connection);
    let sql: String = ["events", "channels", "payloads"]
        .iter()
        .map(|t| format!("DROP TABLE IF EXISTS \"{prefix}{t}\";"))
        .collect();
    client
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("dropping the tables of {prefix}: {e}"));
    drop(client);
    let _ = driver.await;
}

/// A channel and table prefix unique to this run of `test`: the broker's
/// rules (a-z, 0-9, `_`, at most 24 bytes, a letter first).
pub fn unique_prefix(test: &str) -> String {
    let _ = test;
    format!(
        "t{:08x}{:05}_",
        fastrand::u32(..),
        std::process::id() % 100_000
    )
}

/// A server binary (`initdb`, `postgres`, `pg_ctl`): on the PATH, in
/// `/usr/local/bin`, or in Debian's `/usr/lib/postgresql/N/bin`.
pub fn binary(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .collect::<Vec<_>>()
    });
    let debian = std::fs::read_dir(DEBIAN_BIN)
        .into_iter()
        .flatten()
        .flatten()
        .map(|version| version.path().join("bin").join(name));
    let mut found: Vec<PathBuf> = on_path.chain(debian).filter(|p| p.is_file()).collect();
    // Prefer the real binary next to its siblings (Debian's dir) over a
    // wrapper script on the PATH.
    found.sort_by_key(|p| !p.starts_with(DEBIAN_BIN));
    found.into_iter().next()
}

/// The ids to run the server as: the `postgres` user's when running as
/// root (Postgres refuses root), else none.
fn server_ids() -> Result<Option<(u32, u32)>, String> {
    if rustix::process::geteuid().is_root() {
        let id = |flag: &str| -> Result<u32, String> {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .map_err(|e| format!("id {flag} postgres: {e}"))?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| "running as root and there is no `postgres` user".to_string())
        };
        Ok(Some((id("-u")?, id("-g")?)))
    } else {
        Ok(None)
    }
}

/// Makes `path` belong to the server's user.
fn chown(path: &Path, ids: Option<(u32, u32)>) -> Result<(), String> {
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    Ok(())
}

/// An initialised cluster to copy: made once, kept in the temp dir (one per
/// server version and user) and shared by later runs, so that no run
/// leaves a cluster behind.
fn template() -> Result<PathBuf, String> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let initdb = binary("initdb").ok_or("no initdb (install Debian's postgresql)")?;
            let ids = server_ids()?;
            let version = Command::new(&initdb)
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .map_err(|e| format!("cannot run {}: {e}", initdb.display()))?;
            let tag: String = version
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
                .collect();
            let owner = ids.map_or(0, |(uid, _)| uid);
            let data = std::env::temp_dir().join(format!("sse-cluster-pg-template-{tag}-{owner}"));
            if data.join("PG_VERSION").is_file() {
                return Ok(data);
            }
            let dir = std::env::temp_dir().join(format!(
                "sse-cluster-pg-initdb-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            chown(&dir, ids)?;
            let fresh = dir.join("data");
            let mut command = Command::new(&initdb);
            command
                .arg("-D")
                .arg(&fresh)
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
                .stdin(Stdio::null())
                // The checkout may be in a directory the postgres user
                // cannot enter (`mktemp -d`): initdb must not start there.
                .current_dir("/");
            if let Some((uid, gid)) = ids {
                command.uid(uid).gid(gid);
            }
            let out = command
                .output()
                .map_err(|e| format!("cannot run {}: {e}", initdb.display()))?;
            if !out.status.success() {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!(
                    "initdb failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            // Another test process may have won the race: keep its copy.
            if std::fs::rename(&fresh, &data).is_err() && !data.join("PG_VERSION").is_file() {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("cannot move the template to {}", data.display()));
            }
            let _ = std::fs::remove_dir_all(&dir);
            Ok(data)
        })
        .clone()
}

/// One Postgres cluster started by a test on a loopback port, `fsync=off`,
/// trust authentication (user `postgres`, database `postgres`). Killed on
/// drop; the [`ServerProcess`] it derefs to kills (SIGKILL) and restarts it.
pub struct PostgresServer {
    process: ServerProcess,
}

impl Deref for PostgresServer {
    type Target = ServerProcess;

    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl DerefMut for PostgresServer {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

impl PostgresServer {
    /// Starts a cluster of its own; `None` (skipped) or a panic (in CI)
    /// when the server binaries are missing.
    pub fn start(test: &str) -> Option<PostgresServer> {
        let (Some(postgres), Some(isready)) = (binary("postgres"), binary("pg_isready")) else {
            return skip(
                test,
                "no postgres or pg_isready binary (install Debian's postgresql)",
            );
        };
        let template = match template() {
            Ok(template) => template,
            Err(err) => return skip(test, &err),
        };
        let ids = match server_ids() {
            Ok(ids) => ids,
            Err(err) => return skip(test, &err),
        };
        let mut process = ServerProcess::new("postgres", "pg/postgres.log", START_TIMEOUT);
        let home = process.dir().join("pg");
        let data = home.join("data");
        std::fs::create_dir_all(&home).expect("create the server dir");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status();
        assert!(
            copied.is_ok_and(|s| s.success()),
            "copy the cluster template"
        );
        for path in [process.dir(), home.as_path()] {
            chown(path, ids).expect("chown the server dir");
        }
        let log = process.log_path().to_owned();
        let command = move |port: u16| {
            // `exec` keeps the pid: the child is the postmaster itself.
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg(r#"exec "$0" "$@" 2>>"$LOG""#)
                .arg(&postgres)
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
                .args(["-c", "synchronous_commit=off"])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", home.display()))
                .env("LOG", &log)
                .current_dir("/");
            if let Some((uid, gid)) = ids {
                command.uid(uid).gid(gid);
            }
            command
        };
        let ready = move |addr: &str| -> Result<(), String> {
            let (host, port) = addr.split_once(':').unwrap_or((addr, "5432"));
            let status = Command::new(&isready)
                .args(["-q", "-h", host, "-p", port, "-t", "1"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("pg_isready: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("pg_isready: {status}"))
            }
        };
        match process.start(command, ready) {
            Ok(()) => Some(PostgresServer { process }),
            Err(err) => panic!("postgres did not start: {err}"),
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the postmaster this helper
    /// started and to each of its children (the backends, which serve
    /// connections on their own): `STOP` freezes the whole server with
    /// every connection open, a silent death.
    pub fn signal_all(&self, signal: &str) {
        let pid = self.pid().expect("server running");
        let mut pids = children(pid);
        pids.push(pid);
        for pid in pids {
            // A backend may have exited meanwhile: its failure is no error.
            let _ = Command::new("kill")
                .args([format!("-{signal}"), pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port())
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // A test that failed while the server was frozen must not leave
        // stopped backends behind: thawed, they see their postmaster die
        // (killed next, by the process helper) and exit.
        if self.pid().is_some() {
            self.signal_all("CONT");
        }
    }
}

/// The pids whose parent is `parent` (from `/proc/*/stat`).
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`; comm may hold spaces and parens.
            let after = &stat[stat.rfind(')')? + 1..];
            let ppid: u32 = after.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// Runs `psql URL -c SQL` (a client outside the crate) and returns its
/// stdout; `None` (skipped) or a panic (in CI) when `psql` cannot be run.
pub fn psql(test: &str, url: &str, sql: &str) -> Option<String> {
    match Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-c", sql])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "psql -c {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Err(err) => skip(test, &format!("cannot run psql: {err}")),
    }
}
