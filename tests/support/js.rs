//! A real WHATWG `EventSource` (npm `eventsource`) on Node.js, driven by
//! `tests/js/resume_client.mjs`: one JSON line per event and per state
//! change on its stdout; and the headless Chromium of the browser tests
//! (Debian's `chromium`, driven by npm `playwright-core`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::server::skip;

/// The JS client's folder, once `node` runs and its npm dependencies are
/// installed (the first test that needs them runs `npm ci` there, so that
/// `cargo test --all-features` sets them up by itself); else skipped (or,
/// in CI, a failure).
pub fn js_client(test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => return skip(test, "no `node` on PATH"),
    }
    match npm_ci(&dir) {
        Ok(()) => Some(dir),
        Err(err) => skip(test, &format!("tests/js has no npm modules: {err}")),
    }
}

/// The modules every JS helper of the tests needs.
const MODULES: [&str; 2] = ["eventsource", "playwright-core"];

/// Runs `npm ci` in `dir` unless its modules are there, one test process
/// at a time (a lock directory; a lock older than two minutes is a dead
/// installer's, and taken over).
fn npm_ci(dir: &Path) -> Result<(), String> {
    let installed = || {
        MODULES
            .iter()
            .all(|m| dir.join("node_modules").join(m).exists())
    };
    super::server::install_once(
        &dir.join(".npm-ci.lock"),
        installed,
        || match Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
        {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("`npm ci` in {}: {status}", dir.display())),
            Err(err) => Err(format!("cannot run npm: {err}")),
        },
    )
}

/// An `EventSource` on `url` for at most `seconds`, and its output lines.
pub fn spawn_eventsource(
    js: &Path,
    url: &str,
    seconds: u32,
) -> (
    Child,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    spawn_script(js, "resume_client.mjs", &[url, &seconds.to_string()], &[])
}

/// The browser tests' needs: `tests/js` with `playwright-core` installed
/// and a Chromium binary (`$CHROMIUM`, else `/usr/bin/chromium`); else
/// skipped (or, in CI, a failure). Returns the folder and the binary.
pub fn chromium(test: &str) -> Option<(PathBuf, PathBuf)> {
    let js = js_client(test)?;
    let binary = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !binary.exists() {
        return skip(
            test,
            &format!(
                "no Chromium at {} (apt-get install chromium, or set CHROMIUM)",
                binary.display()
            ),
        );
    }
    Some((js, binary))
}

/// `node tests/js/<script> <args…>` with `env` added, and the JSON lines it
/// prints on stdout (other lines are ignored; stderr is the test's).
pub fn spawn_script(
    js: &Path,
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (
    Child,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let mut command = Command::new("node");
    command
        .arg(js.join(script))
        .args(args)
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("node");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str(&line) {
                let _ = lines_tx.send(value);
            }
        }
    });
    (child, lines)
}
