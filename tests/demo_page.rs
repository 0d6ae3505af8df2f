//! The main demo (`cargo run --example cluster`) in a real browser: a
//! headless Chromium opens the page through the demo's balancer, publishes
//! through the form, stops (drains) the node holding its stream, and the
//! page, resumed on another node from history, has every numbered event
//! once. The screenshot it takes is the README's (`docs/demo.png`, written
//! when `SSE_CLUSTER_DEMO_SCREENSHOT` names a path).

#![cfg(feature = "axum")]

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::js::{chromium, spawn_script};
use support::process::example_binary;
use support::server::free_port;

/// The cluster example on a base port whose next three ports are free too;
/// killed on drop.
struct Demo {
    child: Child,
    port: u16,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo() -> Demo {
    let binary = example_binary("cluster", None);
    for _ in 0..10 {
        let port = free_port();
        if port > u16::MAX - 4 {
            continue;
        }
        let mut child = Command::new(&binary)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the cluster example");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.starts_with("balancer listening on"));
        if ready {
            // Keep reading so the demo never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Demo { child, port };
        }
        // A port of the four was taken: try others.
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("the cluster example did not start on any of 10 base ports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_survives_stopping_the_node_that_holds_its_stream() {
    let Some((js, browser)) = chromium("page_survives_stopping_the_node_that_holds_its_stream")
    else {
        return;
    };
    let demo = start_demo();
    let screenshot = std::env::var("SSE_CLUSTER_DEMO_SCREENSHOT").unwrap_or_else(|_| {
        std::env::temp_dir()
            .join(format!("sse-cluster-demo-{}.png", std::process::id()))
            .display()
            .to_string()
    });
    let url = format!("http://127.0.0.1:{}/", demo.port);
    let (mut script, mut lines) = spawn_script(
        &js,
        "demo_page.mjs",
        &[&url, &browser.display().to_string(), &screenshot],
        &[],
    );
    let result = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = lines.recv().await {
            if let Some(result) = line.get("result") {
                return result.clone();
            }
            eprintln!("page: {line}");
        }
        panic!("the browser script ended without a result");
    })
    .await
    .expect("the browser script took over 90 s");
    let status = script.wait().expect("wait for node");
    assert!(status.success(), "browser script: {status}");

    let numbers = |key: &str| -> Vec<u64> {
        result[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} in {result}"))
            .iter()
            .map(|n| n.as_u64().expect("a number"))
            .collect()
    };
    let received: BTreeSet<u64> = numbers("received").into_iter().collect();
    let before = result["holder_before"].as_str().expect("holder before");
    let after = result["holder_after"].as_str().expect("holder after");
    assert_ne!(before, after, "the stream moved: {result}");
    assert!(result["moves"].as_u64() >= Some(1), "{result}");
    assert_eq!(
        result["stopped"],
        serde_json::json!([before]),
        "the stopped node is the one that held the stream"
    );
    assert!(received.len() >= 10, "{result}");
    assert_eq!(numbers("missing"), Vec::<u64>::new(), "{result}");
    assert_eq!(result["dups"], 0, "{result}");
    assert_eq!(result["resets"], 0, "history replayed, no reset: {result}");
    assert!(
        result["replayed"].as_u64() >= Some(1),
        "the events published while the stream was down came from the history: {result}"
    );
    // Nothing lost at the end either: every number the cluster handed out
    // from the page's first one on arrived.
    let first = *received.first().expect("some events");
    let seq = result["seq"].as_u64().expect("seq");
    let expected: BTreeSet<u64> = (first..=seq).collect();
    assert_eq!(received, expected, "{result}");
    // And the page says so.
    assert_eq!(result["shown"]["missing"], "0", "{result}");
    assert_eq!(result["shown"]["dups"], "0", "{result}");
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000),
        "screenshot at {screenshot}"
    );
    drop(demo);
}
