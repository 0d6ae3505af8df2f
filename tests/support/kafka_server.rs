//! A real Kafka-API broker for the Kafka backend's tests: `tansu` (a
//! Kafka-compatible broker from crates.io, `cargo install tansu --features
//! dynostore`), one process per test on a free loopback port, its log in
//! memory (`memory://`: a killed broker comes back empty); and kafka-python
//! (from PyPI) as a publisher from outside the crate.
//!
//! The binary is `$SSE_CLUSTER_TANSU`, else `tansu` on the PATH, else
//! `~/.cargo/bin/tansu`. Without it a test is skipped, unless `CI` is set:
//! then it fails.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::server::{runs, skip, ServerProcess};

/// How long a started broker may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The tansu binary, if one runs.
pub fn tansu_binary() -> Result<PathBuf, String> {
    let candidates = std::env::var_os("SSE_CLUSTER_TANSU")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("PATH").into_iter().flat_map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("tansu"))
                .collect::<Vec<_>>()
        }))
        .chain(std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin/tansu")));
    let mut last = "no tansu binary (cargo install tansu --features dynostore)".to_owned();
    for candidate in candidates.filter(|p| p.is_file()) {
        match runs(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// One tansu broker started by a test; killed on drop. The
/// [`ServerProcess`] it derefs to kills (SIGKILL), freezes (`signal`) and
/// restarts it on the same port.
pub struct KafkaServer {
    process: ServerProcess,
}

impl Deref for KafkaServer {
    type Target = ServerProcess;

    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl DerefMut for KafkaServer {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

impl KafkaServer {
    /// Starts a broker of its own; `None` (skipped) or a panic (in CI)
    /// when tansu is missing.
    pub fn start(test: &str) -> Option<KafkaServer> {
        let binary = match tansu_binary() {
            Ok(binary) => binary,
            Err(err) => return skip(test, &err),
        };
        let mut process = ServerProcess::new("tansu", "tansu.log", START_TIMEOUT);
        let dir = process.dir().to_owned();
        let log = process.log_path().to_owned();
        let command = move |port: u16| {
            let url = format!("tcp://127.0.0.1:{port}");
            // `exec` keeps the pid; the temp dir as the working dir keeps
            // tansu from reading a stray `.env`.
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg(r#"exec "$0" "$@" >>"$LOG" 2>&1"#)
                .arg(&binary)
                .arg("broker")
                .args(["--storage-engine", "memory://tansu/"])
                .args(["--listener-url", &url])
                .args(["--advertised-listener-url", &url])
                .current_dir(&dir)
                .env("LOG", &log);
            command
        };
        let ready = |addr: &str| -> Result<(), String> {
            std::net::TcpStream::connect(addr)
                .map(drop)
                .map_err(|e| e.to_string())
        };
        match process.start(command, ready) {
            Ok(()) => Some(KafkaServer { process }),
            Err(err) => panic!("tansu did not start: {err}"),
        }
    }

    /// `kafka://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("kafka://{}", self.addr())
    }
}

impl Drop for KafkaServer {
    fn drop(&mut self) {
        // A test that failed while the broker was frozen: thaw it so that
        // the kill on drop is not held up.
        if self.pid().is_some() {
            let _ = Command::new("kill")
                .args(["-CONT".to_owned(), self.pid().unwrap_or(0).to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A unique topic name for this run of `test`.
pub fn unique_topic(test: &str) -> String {
    super::server::unique_name(test)
}

/// The folder of kafka-python, installed there from PyPI by the first test
/// that needs it (`pip install --target tests/py/.deps`, one test process
/// at a time); `None` (skipped) or a panic (in CI) when that fails.
pub fn kafka_python(test: &str) -> Option<PathBuf> {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py");
    match pip_install(&py) {
        Ok(()) => Some(py),
        Err(err) => skip(test, &format!("no kafka-python: {err}")),
    }
}

fn pip_install(py: &Path) -> Result<(), String> {
    let deps = py.join(".deps");
    let installed = || deps.join("kafka").join("__init__.py").is_file();
    super::server::install_once(&py.join(".pip.lock"), installed, || {
        match Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("--target")
            .arg(&deps)
            .arg("-r")
            .arg(py.join("requirements.txt"))
            .stdin(Stdio::null())
            .status()
        {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("pip install kafka-python: {status}")),
            Err(err) => Err(format!("cannot run python3 -m pip: {err}")),
        }
    })
}

/// Produces one record with kafka-python (its default partitioner) and
/// returns the partition and offset Kafka gave it.
pub fn python_produce(py: &Path, addr: &str, topic: &str, key: &str, value: &str) -> (i32, i64) {
    let out = Command::new("python3")
        .arg(py.join("produce.py"))
        .args([addr, topic, key, value])
        .env("PYTHONPATH", py.join(".deps"))
        .stdin(Stdio::null())
        .output()
        .expect("run python3 produce.py");
    assert!(
        out.status.success(),
        "produce.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let partition = parts
        .next()
        .and_then(|p| p.parse().ok())
        .expect("partition");
    let offset = parts.next().and_then(|o| o.parse().ok()).expect("offset");
    (partition, offset)
}
