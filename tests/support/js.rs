//! A real WHATWG `EventSource` (npm `eventsource`) on Node.js, driven by
//! `tests/js/resume_client.mjs`: one JSON line per event and per state
//! change on its stdout; and the headless Chromium of the browser tests
//! (Debian's `chromium`, driven by npm `playwright-core`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::server::skip;

/// The JS client's folder, if its dependencies are installed and `node`
/// runs; else skipped (or, in CI, a failure).
pub fn js_client(test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if !dir.join("node_modules/eventsource").exists() {
        return skip(
            test,
            "tests/js/node_modules is missing: run `npm ci` in tests/js",
        );
    }
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => Some(dir),
        _ => skip(test, "no `node` on PATH"),
    }
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
    if !js.join("node_modules/playwright-core").exists() {
        return skip(
            test,
            "tests/js/node_modules/playwright-core is missing: run `npm ci` in tests/js",
        );
    }
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
