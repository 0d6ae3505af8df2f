//! A real WHATWG `EventSource` (npm `eventsource` v4 on Node.js) resumes
//! across a node failure: two demo node processes with Redis history behind a
//! small TCP load balancer; the node holding the stream is killed (SIGKILL)
//! while events keep being published; the client reconnects on its own
//! through the balancer, reaches the other node with `Last-Event-ID`, and
//! receives every event exactly once.
//!
//! Needs `node` and `tests/js/node_modules` (`npm install` in `tests/js`,
//! which `.ci/run` does).

#![cfg(all(unix, feature = "axum", feature = "redis"))]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;
use support::js::{js_client, spawn_eventsource};
use support::process::{node_binary, NodeProcess};
use support::redis_server::{machine_redis, unique_prefix};

/// A TCP load balancer on loopback: each new connection goes to the first
/// backend that accepts it.
async fn balancer(backends: Arc<Mutex<Vec<SocketAddr>>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let candidates = backends.lock().expect("backends").clone();
            tokio::spawn(async move {
                for backend in candidates {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_eventsource_resumes_on_another_node_after_a_kill() {
    let test = "browser_eventsource_resumes_on_another_node_after_a_kill";
    let Some(js) = js_client(test) else { return };
    let Some(url) = machine_redis(test) else {
        return;
    };
    let prefix = unique_prefix(test);
    let binary = node_binary(Some("redis"));
    let args = |id: &'static str| {
        vec![
            "--broker".to_owned(),
            url.clone(),
            "--redis-prefix".to_owned(),
            prefix.clone(),
            "--history".to_owned(),
            "redis".to_owned(),
            "--node-id".to_owned(),
            id.to_owned(),
        ]
    };
    let a_args = args("a");
    let b_args = args("b");
    let mut a = NodeProcess::start(
        &binary,
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let b = NodeProcess::start(
        &binary,
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let lb = balancer(Arc::new(Mutex::new(vec![a.addr, b.addr]))).await;

    let (mut client, mut lines) =
        spawn_eventsource(&js, &format!("http://{lb}/events?topic=t&user=u"), 60);
    let mut log = Vec::new();
    let mut next_line = async || {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .ok()
            .flatten()
            .expect("a line from the JS client");
        line
    };
    // The stream is open and live once the greeting arrived.
    loop {
        let line = next_line().await;
        log.push(line.clone());
        if line["type"] == "connected" {
            break;
        }
    }

    let mut sent: Vec<String> = Vec::new();
    for i in 0..60 {
        if i == 20 {
            // The node holding the stream dies without a word.
            a.signal("KILL");
            a.wait_exit(Duration::from_secs(5));
        }
        let (target, name) = if i % 2 == 0 {
            ("topic=t", "t")
        } else {
            ("user=u", "u")
        };
        let data = format!("{name}:{i}");
        let (status, body) =
            support::post(b.addr, &format!("/publish?{target}"), data.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        sent.push(data);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = support::post(b.addr, "/publish?topic=t", "end").await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let mut received = Vec::new();
    loop {
        let line = next_line().await;
        log.push(line.clone());
        match line["type"].as_str() {
            Some("message") if line["data"] == "end" => break,
            Some("message") => received.push(line["data"].as_str().unwrap_or("").to_owned()),
            Some("sse-cluster.reset") | Some("sse-cluster.gap") | Some("timeout") => {
                panic!("unexpected {line}; log: {log:?}")
            }
            _ => {}
        }
    }
    assert!(client.wait().expect("node exit").success());

    let errors = log.iter().filter(|l| l["type"] == "error").count();
    let opens = log.iter().filter(|l| l["type"] == "open").count();
    assert!(
        errors >= 1 && opens >= 2,
        "the client lost its stream and reconnected: {log:?}"
    );
    let mut unique = received.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), received.len(), "no duplicates: {received:?}");
    let mut want = sent.clone();
    want.sort();
    assert_eq!(unique, want, "every event once");
    let mut order: HashMap<&str, Vec<usize>> = HashMap::new();
    for data in &received {
        let (name, i) = data.split_once(':').expect("name:i");
        order.entry(name).or_default().push(i.parse().expect("i"));
    }
    for (name, seq) in order {
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "{name} in order: {seq:?}"
        );
    }
    drop(b);
}
