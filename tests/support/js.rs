//! A real WHATWG `EventSource` (npm `eventsource`) on Node.js, driven by
//! `tests/js/resume_client.mjs`: one JSON line per event and per state
//! change on its stdout.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
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
    js: &std::path::Path,
    url: &str,
    seconds: u32,
) -> (
    Child,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let mut client = Command::new("node")
        .arg(js.join("resume_client.mjs"))
        .arg(url)
        .arg(seconds.to_string())
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("node");
    let stdout = client.stdout.take().expect("stdout");
    let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str(&line) {
                let _ = lines_tx.send(value);
            }
        }
    });
    (client, lines)
}
