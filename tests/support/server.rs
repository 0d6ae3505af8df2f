//! What every real-server test helper shares: CI detection and visible
//! skips, free loopback ports, unique names on a shared server, and one
//! server process on a free port that is waited for until it accepts,
//! killed (SIGKILL) and restarted on the same port, and killed on drop.
//! `redis_server` and `nats_server` keep only what is specific to their
//! server (command line, readiness probe, raw protocol clients).
//!
//! When a server is not available, a test is skipped with a `SKIPPED:` line
//! on stderr, unless `CI` is set: then it fails, so that a CI run cannot
//! pass without having run the tests that need it.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when running in CI (`CI` set to anything but empty, `0` or `false`):
/// a missing server then fails the test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The running test's name: the test harness names each test's thread after
/// it, and `#[tokio::test]` polls the test body on that thread.
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unknown test")
        .to_owned()
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

/// A name unique to this run of `test`, usable as a Redis key prefix, a
/// NATS subject token and a JetStream stream name (ASCII letters, digits,
/// `-` and `_` only).
pub fn unique_name(test: &str) -> String {
    let test: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("t{}-{test}-{}", fastrand::u32(..), std::process::id())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Whether `binary --version` runs and succeeds.
pub fn runs(binary: &Path) -> Result<(), String> {
    match Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{} --version: {status}", binary.display())),
        Err(err) => Err(format!("cannot run {}: {err}", binary.display())),
    }
}

/// Runs `install` unless `installed()` holds, one test process at a time
/// (a lock directory `lock`; a lock older than two minutes is a dead
/// installer's, and taken over); then `installed()` must hold.
pub fn install_once(
    lock: &Path,
    installed: impl Fn() -> bool,
    install: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        if installed() {
            return Ok(());
        }
        match std::fs::create_dir(lock) {
            Ok(()) => break,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                if started.elapsed() > Duration::from_secs(120) {
                    let _ = std::fs::remove_dir(lock);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(err) => return Err(format!("lock {}: {err}", lock.display())),
        }
    }
    let result = install();
    let _ = std::fs::remove_dir(lock);
    result?;
    if installed() {
        Ok(())
    } else {
        Err("installed, yet not found".into())
    }
}

/// Builds the server's command line for a port.
type CommandFor = Box<dyn Fn(u16) -> Command + Send + Sync>;
/// Probes `127.0.0.1:PORT`: `Ok` once the server serves.
type Probe = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// One server process on a loopback port, with a temp dir of its own
/// (removed on drop) where it writes its log.
pub struct ServerProcess {
    name: String,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    start_timeout: Duration,
    command: CommandFor,
    ready: Probe,
    child: Option<Child>,
}

impl ServerProcess {
    /// A server `name` (for messages) in a fresh temp dir, not started:
    /// set it up in [`Self::dir`], then [`Self::start`]. `log` is the log
    /// file's name in that dir.
    pub fn new(name: &str, log: &str, start_timeout: Duration) -> ServerProcess {
        let dir = std::env::temp_dir().join(format!(
            "sse-cluster-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("create server temp dir");
        ServerProcess {
            name: name.to_owned(),
            port: 0,
            log: dir.join(log),
            dir,
            start_timeout,
            command: Box::new(|_| unreachable!("start() before command()")),
            ready: Box::new(|_| Ok(())),
            child: None,
        }
    }

    /// Starts `command(port)` on a free port and waits until `ready(addr)`
    /// holds (or the process exits, or the start timeout passes). Tries a
    /// few ports: another process may grab the free port between the probe
    /// and the server's bind.
    pub fn start(
        &mut self,
        command: impl Fn(u16) -> Command + Send + Sync + 'static,
        ready: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
    ) -> Result<(), String> {
        self.command = Box::new(command);
        self.ready = Box::new(ready);
        let mut last_error = String::new();
        for _ in 0..5 {
            self.port = free_port();
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(err) => {
                    self.kill();
                    last_error = err;
                }
            }
        }
        Err(last_error)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's temp dir (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether the process this helper started is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The server process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the server process: `STOP`
    /// freezes it with every connection open, a silent death.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("server running").id();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGKILLs the server (no shutdown, no goodbye to clients) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` is SIGKILL on Unix, sent to this child's pid only.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port
    /// (and dir) and waits until it is ready.
    pub fn restart(&mut self) {
        self.kill();
        // The port may take a moment to be free again.
        let deadline = Instant::now() + self.start_timeout;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(err) if Instant::now() >= deadline => {
                    panic!("{} did not restart on port {}: {err}", self.name, self.port)
                }
                Err(_) => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn spawn(&mut self) -> Result<(), String> {
        // A fresh log per run: readiness and errors are read from it.
        let _ = std::fs::remove_file(&self.log);
        let child = (self.command)(self.port)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.name))?;
        self.child = Some(child);
        let deadline = Instant::now() + self.start_timeout;
        let addr = self.addr();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "{} exited with {status}; log:\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            match (self.ready)(&addr) {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() >= deadline => {
                    return Err(format!(
                        "{} not ready within {:?}: {err}; log:\n{}",
                        self.name,
                        self.start_timeout,
                        self.log_tail()
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
