//! `rediss://`: the Redis broker over TLS to a real TLS-enabled redis-server.

#![cfg(all(feature = "redis", feature = "axum"))]

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
use sse_cluster::{BrokerStatus, Event, Hub, Subscription, Target};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool_missing(test: &str, tool: &str) -> bool {
    if Command::new(tool).arg("version").output().is_ok()
        || Command::new(tool).arg("--version").output().is_ok()
    {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: `{tool}` is required under CI"
    );
    eprintln!("SKIPPED: {test}: `{tool}` is not installed");
    true
}

fn self_signed_cert(dir: &Path) {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl req failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_url_with_password_over_tls() {
    let test = "rediss_url_with_password_over_tls";
    if tool_missing(test, "openssl") || tool_missing(test, "redis-server") {
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "sse-cluster-tls-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    self_signed_cert(&dir);
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let _server = Killed(
        Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(dir.join("cert.pem"))
            .arg("--tls-key-file")
            .arg(dir.join("key.pem"))
            .arg("--tls-ca-cert-file")
            .arg(dir.join("cert.pem"))
            .args([
                "--tls-auth-clients",
                "no",
                "--requirepass",
                "s3cret",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "TLS redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Self-signed certificate: `#insecure` skips verification (test only).
    let url = format!("rediss://:s3cret@127.0.0.1:{port}/#insecure");
    let prefix = format!("tls{}:", fastrand::u32(..));
    let make = |node: &'static str| {
        let config = RedisConfig::new(url.clone()).prefix(prefix.clone());
        async move {
            let broker = RedisBroker::new(config).expect("config");
            Hub::builder()
                .node_id(node)
                .broker(broker)
                .build()
                .await
                .expect("hub")
        }
    };
    let a = make("a").await;
    let b = make("b").await;
    assert_eq!(a.broker_status(), BrokerStatus::Up);
    assert_eq!(b.broker_status(), BrokerStatus::Up);
    let mut stream = a
        .connect(Subscription::new().topic("t"))
        .await
        .expect("connect")
        .into_stream();
    b.publish(Target::topic("t"), Event::new().data("over tls"))
        .await
        .expect("publish");
    use futures_util::StreamExt;
    let frame = tokio::time::timeout(support::WAIT, async {
        loop {
            let frame = stream.next().await.expect("stream open");
            if frame.starts_with(b"data:") {
                return frame;
            }
        }
    })
    .await
    .expect("event over TLS");
    assert_eq!(&frame[..], b"data: over tls\n\n");

    // A wrong password never comes up, and says so without panicking.
    let wrong = RedisConfig::new(format!("rediss://:wrong@127.0.0.1:{port}/#insecure"))
        .prefix(prefix.clone());
    let hub = Hub::builder()
        .node_id("c")
        .broker(RedisBroker::new(wrong).expect("config"))
        .build()
        .await
        .expect("hub");
    assert_eq!(hub.broker_status(), BrokerStatus::Down);
    let err = hub
        .publish(Target::topic("t"), Event::new().data("x"))
        .await
        .expect_err("down");
    assert!(err.is_transient(), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
