//! The demo node as a black box: a real process, real HTTP, real signals.

#![cfg(all(unix, feature = "axum"))]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use support::{get, post, SseClient};

/// The `node` example built next to this test binary (`cargo test` builds
/// examples); built on demand if it is missing.
fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = profile_dir.join("examples").join("node");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "node"])
            .status()
            .expect("cargo build --example node");
        assert!(status.success());
    }
    path
}

struct NodeProcess {
    child: Child,
    addr: SocketAddr,
}

impl NodeProcess {
    fn start(args: &[&str]) -> NodeProcess {
        let mut child = Command::new(node_binary())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read stdout");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        NodeProcess { child, addr }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn demo_node_contract_and_graceful_drain() {
    for signal in ["TERM", "INT"] {
        let mut node = NodeProcess::start(&["--broker", "memory", "--node-id", "demo-1"]);
        let (status, body) = get(node.addr, "/healthz").await;
        assert_eq!(status, StatusCode::OK, "{body}");

        let mut client = SseClient::connect(node.addr, "/events?topic=a&topic=b&user=u").await;
        assert!(client.connection_id.starts_with("demo-1."));
        assert_eq!(client.headers["content-type"], "text/event-stream");
        assert_eq!(client.headers["cache-control"], "no-cache");
        assert_eq!(client.headers["x-accel-buffering"], "no");

        let (status, body) =
            post(node.addr, "/publish?topic=b&event=greeting", "hi\r\nthere").await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let receipt: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert!(receipt["id"].is_string(), "{body}");
        let event = client.next().await.expect("event");
        assert_eq!(
            (event.event.as_str(), event.data.as_str()),
            ("greeting", "hi\nthere")
        );

        let path = format!("/publish?connection={}", client.connection_id);
        assert_eq!(
            post(node.addr, &path, "direct").await.0,
            StatusCode::ACCEPTED
        );
        assert_eq!(client.next().await.expect("event").data, "direct");
        assert_eq!(
            post(node.addr, "/publish", "").await.0,
            StatusCode::ACCEPTED
        );
        assert_eq!(client.next().await.expect("empty event").data, "");

        let (status, body) = post(node.addr, "/publish?event=bad%0Aname", "x").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            serde_json::from_str::<serde_json::Value>(&body).expect("json")["error"].is_string()
        );

        let (status, body) = get(node.addr, "/stats").await;
        assert_eq!(status, StatusCode::OK);
        let stats: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(stats["connections"], 1);
        assert_eq!(stats["published"], 3);

        let started = Instant::now();
        node.signal(signal);
        client
            .wait_end(Duration::from_secs(1))
            .await
            .expect("stream ended within 1 s");
        assert!(client.raw().ends_with("\n\n"));
        let status = node.wait_exit(Duration::from_secs(3));
        assert!(status.success(), "SIG{signal}: exit {status:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}

#[test]
fn bad_arguments_are_refused() {
    let out = Command::new(node_binary())
        .args(["--broker", "carrier-pigeon"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let out = Command::new(node_binary())
        .args(["--listen"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}
