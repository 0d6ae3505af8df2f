//! The demo node as a black box: a real process, real HTTP, real signals.

#![cfg(all(unix, feature = "axum"))]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use support::process::{node_binary, NodeProcess};
use support::{get, post, SseClient};

#[tokio::test]
async fn demo_node_contract_and_graceful_drain() {
    for signal in ["TERM", "INT"] {
        let mut node = NodeProcess::start(
            &node_binary(None),
            &["--broker", "memory", "--node-id", "demo-1"],
        );
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
        // Through the http1 driver: a topic that is not UTF-8 is refused
        // with the demo's JSON 400, written whole.
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(5), get(node.addr, "/events?topic=%FF"))
                .await
                .expect("a whole answer, not a stream");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
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

/// `GET /metrics` serves the Prometheus text format with every metric of
/// `sse_cluster::telemetry::METRICS`, and the counters follow the traffic.
#[tokio::test]
async fn demo_node_serves_prometheus_metrics() {
    let mut node = NodeProcess::start(
        &node_binary(None),
        &["--broker", "memory", "--node-id", "prom-1"],
    );
    let mut client = SseClient::connect(node.addr, "/events?topic=a").await;
    let (status, _) = post(node.addr, "/publish?topic=a", "x").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(client.next().await.expect("event").data, "x");

    let (status, text) = get(node.addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for m in sse_cluster::telemetry::METRICS {
        assert!(
            text.contains(&format!("# TYPE {} ", m.name)),
            "no {} in\n{text}",
            m.name
        );
    }
    let line = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .to_owned()
    };
    assert_eq!(line("sse_connections{node=\"prom-1\"}"), "1");
    assert_eq!(line("sse_connects_total{node=\"prom-1\"}"), "1");
    assert_eq!(line("sse_events_published_total{node=\"prom-1\"}"), "1");
    assert_eq!(line("sse_events_delivered_total{node=\"prom-1\"}"), "1");
    assert_eq!(line("sse_broker_up{node=\"prom-1\"}"), "1");
    // A real histogram (buckets), not a summary.
    assert_eq!(
        line("sse_publish_to_frame_seconds_count{node=\"prom-1\",path=\"local\"}"),
        "1"
    );
    assert!(text.contains(
        "sse_publish_to_frame_seconds_bucket{node=\"prom-1\",path=\"local\",le=\"+Inf\"} 1"
    ));

    node.signal("TERM");
    assert!(node.wait_exit(Duration::from_secs(3)).success());
}

/// The "hostile peers" acceptance on the real demo node: with `--history
/// memory --history-age 2`, 100 one-MiB publishes to distinct topics leave
/// under 1 MiB retained (`/stats` and `/metrics`) 4 s after the age has
/// passed; with no age, `--history-max-bytes` holds after every publish.
#[tokio::test]
async fn demo_node_memory_history_is_bounded() {
    const MIB: usize = 1 << 20;
    let data = "x".repeat(MIB);
    let stats = |addr| async move {
        let (status, body) = get(addr, "/stats").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let stats: serde_json::Value = serde_json::from_str(&body).expect("json");
        stats["history_retained_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no history_retained_bytes in {body}"))
    };
    let gauge = |addr| async move {
        let (_, text) = get(addr, "/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix("sse_history_retained_bytes{node=\"bounded\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no gauge in\n{text}"))
    };

    let node = NodeProcess::start(
        &node_binary(None),
        &[
            "--node-id",
            "bounded",
            "--history",
            "memory",
            "--history-age",
            "2",
        ],
    );
    for i in 0..100 {
        let (status, body) = post(
            node.addr,
            &format!("/publish?topic=flood-{i}"),
            data.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let last = Instant::now();
    let peak = stats(node.addr).await;
    eprintln!("after the flood: {peak} B retained");
    assert!(
        peak > MIB as u64,
        "the store kept the recent events: {peak}"
    );
    let deadline = last + Duration::from_secs(2 + 4);
    let (mut held, mut reported) = (peak, f64::MAX);
    while Instant::now() < deadline {
        (held, reported) = (stats(node.addr).await, gauge(node.addr).await);
        if held < MIB as u64 && reported < MIB as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{:?} after the last publish: {held} B retained, gauge {reported}",
        last.elapsed()
    );
    assert!(
        held < MIB as u64 && reported < MIB as f64,
        "{held} B / gauge {reported}"
    );
    drop(node);

    let budget = 4 * MIB;
    let node = NodeProcess::start(
        &node_binary(None),
        &[
            "--history",
            "memory",
            "--history-age",
            "0",
            "--history-max-bytes",
            &budget.to_string(),
        ],
    );
    let mut most = 0;
    for i in 0..12 {
        let (status, _) = post(
            node.addr,
            &format!("/publish?topic=flood-{i}"),
            data.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let held = stats(node.addr).await;
        assert!(
            held <= budget as u64,
            "{held} over {budget} after publish {i}"
        );
        most = most.max(held);
    }
    eprintln!("without an age: at most {most} B of a {budget} B budget");
    assert!(
        most > (budget - 2 * MIB) as u64,
        "the budget is used: {most}"
    );
}

#[test]
fn bad_arguments_are_refused() {
    let out = Command::new(node_binary(None))
        .args(["--broker", "carrier-pigeon"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let out = Command::new(node_binary(None))
        .args(["--listen"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

/// `--history` on the demo node, for every store this build has: a client
/// that reconnects with its last id gets what it missed; a garbage id gets
/// the reset event.
#[tokio::test]
async fn demo_node_resumes_with_each_history_flag() {
    let mut setups: Vec<(Option<&str>, Vec<String>)> = vec![(
        None,
        [
            "--broker",
            "memory",
            "--history",
            "memory",
            "--history-max",
            "100",
            "--history-age",
            "60",
        ]
        .map(String::from)
        .to_vec(),
    )];
    #[cfg(feature = "redis")]
    if let Some(url) =
        support::redis_server::machine_redis("demo_node_resumes_with_each_history_flag")
    {
        let prefix = support::redis_server::unique_prefix("demo-history");
        setups.push((
            Some("redis"),
            [
                "--broker",
                &url,
                "--redis-prefix",
                &prefix,
                "--history",
                "redis",
            ]
            .map(String::from)
            .to_vec(),
        ));
    }
    #[cfg(feature = "nats")]
    let mut streams = Vec::new();
    #[cfg(feature = "nats")]
    if let Some(url) = support::nats_server::machine_nats() {
        let prefix = format!("demohist{}", fastrand::u32(..));
        streams.push((url.clone(), format!("{}_HISTORY", prefix.to_uppercase())));
        setups.push((
            Some("nats"),
            [
                "--broker",
                &url,
                "--nats-prefix",
                &prefix,
                "--history",
                "jetstream",
            ]
            .map(String::from)
            .to_vec(),
        ));
    }
    for (feature, args) in setups {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let node = NodeProcess::start(&node_binary(feature), &args);
        let mut client = SseClient::connect(node.addr, "/events?topic=t&user=u").await;
        assert_eq!(
            post(node.addr, "/publish?topic=t", "e1").await.0,
            StatusCode::ACCEPTED
        );
        let first = client.next().await.expect("e1");
        assert_eq!(first.data, "e1", "{args:?}");
        assert!(first.id.starts_with("r1."), "{args:?}: {first:?}");
        drop(client);
        for data in ["e2", "e3"] {
            assert_eq!(
                post(node.addr, "/publish?topic=t", data).await.0,
                StatusCode::ACCEPTED
            );
        }
        let mut again = SseClient::open(
            node.addr,
            "/events?topic=t&user=u",
            &[("last-event-id", first.id.as_str())],
        )
        .await;
        assert_eq!(again.next().await.expect("greeting").event, "connected");
        for want in ["e2", "e3"] {
            let event = again.next().await.expect("replayed");
            assert_eq!(
                (event.event.as_str(), event.data.as_str()),
                ("message", want),
                "{args:?}"
            );
        }
        let mut reset = SseClient::open(
            node.addr,
            "/events?topic=t",
            &[("last-event-id", "garbage")],
        )
        .await;
        assert_eq!(reset.next().await.expect("greeting").event, "connected");
        assert_eq!(
            reset.next().await.expect("reset").event,
            "sse-cluster.reset",
            "{args:?}"
        );
    }
    #[cfg(feature = "nats")]
    for (url, stream) in streams {
        if let Ok(client) = async_nats::connect(url.as_str()).await {
            let _ = async_nats::jetstream::new(client)
                .delete_stream(&stream)
                .await;
        }
    }
}

/// The demo node's contract of issue 16 (parts 3 and 4), as a black box:
/// `GET /resume-token` answers a `text/plain` token; events published
/// after it reach a first connect that passes it as `last_event_id` in the
/// URL, once; `POST /publish` with an `Idempotency-Key` stores and delivers
/// once and answers the same receipt; hostile keys get a `400`. Without
/// history, `/resume-token` is `501`.
#[tokio::test]
async fn demo_node_resume_token_and_idempotency_key() {
    let node = NodeProcess::start(
        &node_binary(None),
        &["--broker", "memory", "--history", "memory"],
    );
    let (status, headers, token) =
        support::get_with_headers(node.addr, "/resume-token?topic=news&user=u").await;
    assert_eq!(status, StatusCode::OK, "{token}");
    assert!(headers["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain"));
    assert!(token.starts_with("r1."), "{token}");

    let key: &[u8] = b"news-1";
    let mut receipts = Vec::new();
    for data in ["n1", "n1 retried", "n1 again"] {
        let (status, _, body) = support::post_with_headers(
            node.addr,
            "/publish?topic=news",
            data,
            &[("idempotency-key", key)],
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        receipts.push(serde_json::from_str::<serde_json::Value>(&body).expect("json"));
    }
    assert_eq!(receipts[0]["duplicate"], false);
    for repeat in &receipts[1..] {
        assert_eq!(repeat["duplicate"], true);
        assert_eq!(repeat["id"], receipts[0]["id"]);
        assert_eq!(repeat["position"], receipts[0]["position"]);
    }
    let (status, _, body) = support::post_with_headers(
        node.addr,
        "/publish?topic=news",
        "hostile",
        &[("idempotency-key", b"\xc3\x28".as_slice())],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        post(node.addr, "/publish?user=u", "u1").await.0,
        StatusCode::ACCEPTED
    );

    let mut client = SseClient::connect(
        node.addr,
        &format!("/events?topic=news&user=u&last_event_id={token}"),
    )
    .await;
    // Replayed channel by channel: in order per channel, not across them.
    let mut got = Vec::new();
    for _ in 0..2 {
        let event = client.next().await.expect("replayed");
        assert_eq!(event.event, "message", "{event:?}");
        got.push(event.data);
    }
    got.sort();
    assert_eq!(got, ["n1", "u1"]);
    client.expect_quiet().await;

    let plain = NodeProcess::start(&node_binary(None), &["--broker", "memory"]);
    let (status, body) = get(plain.addr, "/resume-token?topic=news").await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
}
