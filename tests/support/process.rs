//! The demo node (`examples/node.rs`) as a real process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `node` example built with `feature` (or with default features for
/// `None`); see [`example_binary`].
pub fn node_binary(feature: Option<&str>) -> PathBuf {
    example_binary("node", feature)
}

/// The example `name` (`node` or `publisher`, which take the same broker
/// flags) built with `feature`: the one `cargo test --all-features` built
/// next to this test binary if it has the feature, else one built now in its
/// own target dir (so as not to wait for the lock of the running `cargo
/// test`).
pub fn example_binary(name: &str, feature: Option<&str>) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = profile_dir.join("examples").join(name);
    if path.exists() && feature.is_none_or(|f| supports(&path, f)) {
        return path;
    }
    let flavour = feature.unwrap_or("default");
    let target_dir = profile_dir
        .parent()
        .expect("target dir")
        .join(format!("{flavour}-examples"));
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--example", name]);
    if let Some(feature) = feature {
        build.args(["--features", feature]);
    }
    let status = build
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build --example");
    assert!(status.success(), "cargo build --example {name} ({flavour})");
    let path = target_dir.join("debug").join("examples").join(name);
    if let Some(feature) = feature {
        assert!(
            supports(&path, feature),
            "{} lacks {feature}",
            path.display()
        );
    }
    path
}

/// Whether `binary` was built with the broker `feature`: given an invalid
/// setting for that broker, such a build fails on the setting (no network
/// I/O); a build without the feature fails saying it lacks support.
fn supports(binary: &Path, feature: &str) -> bool {
    let args: &[&str] = match feature {
        "redis" => &["--broker", "redis://[::1"],
        "nats" => &[
            "--broker",
            "nats://127.0.0.1:1",
            "--nats-prefix",
            "not valid",
        ],
        "postgres" => &[
            "--broker",
            "postgres://127.0.0.1:1/x",
            "--postgres-prefix",
            "Not Valid",
        ],
        "kafka" => &[
            "--broker",
            "kafka://127.0.0.1:1",
            "--kafka-topic",
            "not valid",
        ],
        other => panic!("unknown broker feature {other}"),
    };
    let out = Command::new(binary)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run example");
    let stderr = String::from_utf8_lossy(&out.stderr);
    !out.status.success() && !stderr.contains("support: rebuild")
}

/// A running demo node; killed on drop.
pub struct NodeProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl NodeProcess {
    /// Starts `binary --listen 127.0.0.1:0 ARGS…` and waits for its
    /// `listening on ADDR` line.
    pub fn start(binary: &Path, args: &[&str]) -> NodeProcess {
        let mut child = Command::new(binary)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
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

    /// Sends `signal` (`TERM`, `INT`…) to the node.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the node to exit; panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
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

/// Two demo-node processes sharing a bus and a history: an event published
/// on `one` reaches a client of `two`, and a client that went away resumes
/// on `one` from its `Last-Event-ID`, then gets live events from `two`.
pub async fn resume_across_demo_nodes(one: &NodeProcess, two: &NodeProcess) {
    use super::bus::post_ok;
    use super::{get, SseClient};
    use hyper::StatusCode;

    for node in [one, two] {
        let (status, body) = get(node.addr, "/healthz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let mut client = SseClient::connect(two.addr, "/events?topic=t").await;
    post_ok(one.addr, "/publish?topic=t&event=k", "first").await;
    let event = client.next().await.expect("first");
    assert_eq!((event.event.as_str(), event.data.as_str()), ("k", "first"));
    let last_id = event.id.clone();
    drop(client);
    post_ok(one.addr, "/publish?topic=t", "missed 1").await;
    post_ok(one.addr, "/publish?topic=t", "missed 2").await;
    let path = "/events?topic=t";
    let mut back = SseClient::open(one.addr, path, &[("last-event-id", last_id.as_str())]).await;
    assert_eq!(back.status, StatusCode::OK);
    assert_eq!(back.next().await.expect("greeting").event, "connected");
    for want in ["missed 1", "missed 2"] {
        assert_eq!(back.next().await.expect(want).data, want);
    }
    post_ok(two.addr, "/publish?topic=t", "live").await;
    assert_eq!(back.next().await.expect("live").data, "live");
    back.expect_quiet().await;
}
