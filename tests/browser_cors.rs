//! A real browser: headless Chromium's `EventSource`, cross-origin, with
//! `withCredentials: true` and the token in a cookie, against the demo node
//! with `--jwt-secret` and `--cors-origin` (driven by
//! `tests/js/browser_cors.mjs` through playwright-core).

#![cfg(all(unix, feature = "axum", feature = "http1", feature = "jwt"))]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::js::{chromium, spawn_script};
use support::process::{node_binary, NodeProcess};
use support::stat;

const SECRET: &str = "browser test secret, 32 bytes or more";

fn token(subscribe: &[&str], publish: &[&str]) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let claims = json!({
        "sub": "page-user",
        "exp": exp,
        "sse": { "subscribe": subscribe, "publish": publish },
    });
    let key = EncodingKey::from_secret(SECRET.as_bytes()).expect("key");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign")
}

/// A page's origin: a tiny HTTP server on its own loopback port (another
/// port is another origin, and the same site, so a `SameSite=Lax` cookie of
/// the node still goes with the page's requests to it).
async fn page_server() -> SocketAddr {
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            axum::response::Html("<!doctype html><title>app</title><p>app page</p>")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// `POST path` with `body` and `Authorization: Bearer token`; the status
/// and the body text.
async fn post_with_token(addr: SocketAddr, path: &str, body: &str, token: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    let request = hyper::Request::post(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .expect("request");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let response = sender.send_request(request).await.expect("send");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn chromium_streams_cross_origin_with_a_cookie_token_only_where_allowed() {
    let Some((js, browser)) = chromium("browser_cors") else {
        return;
    };
    let app = format!("http://{}", page_server().await);
    let elsewhere = format!("http://{}", page_server().await);
    let node = NodeProcess::start(
        &node_binary(None),
        &["--jwt-secret", SECRET, "--cors-origin", &app],
    );
    let node_url = format!("http://{}", node.addr);
    let publisher = token(&[], &["news"]);
    let config = json!({
        "node": node_url,
        "scenarios": [
            { "name": "allowed", "page": format!("{app}/"), "token": token(&["news"], &[]), "topic": "news" },
            { "name": "lacks-topic", "page": format!("{app}/"), "token": token(&["sports"], &[]), "topic": "news" },
            { "name": "origin-not-allowed", "page": format!("{elsewhere}/"), "token": token(&["news"], &[]), "topic": "news" },
        ],
    });
    let (mut child, mut lines) = spawn_script(
        &js,
        "browser_cors.mjs",
        &[browser.to_str().expect("path"), &config.to_string()],
        &[],
    );

    let mut seen: HashMap<String, Vec<Value>> = HashMap::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.recv())
            .await
            .expect("the browser script answers")
            .unwrap_or_else(|| panic!("the browser script ended early: {seen:?}"));
        let scenario = line["scenario"].as_str().expect("scenario").to_owned();
        let kind = line["type"].as_str().expect("type").to_owned();
        seen.entry(scenario.clone()).or_default().push(line);
        match (scenario.as_str(), kind.as_str()) {
            // The page's stream is open: publish to its topic.
            ("allowed", "connected") => {
                for data in ["hello", "end"] {
                    let (status, body) =
                        post_with_token(node.addr, "/publish?topic=news", data, &publisher).await;
                    assert_eq!(status, 202, "{body}");
                }
            }
            ("origin-not-allowed", "done") => break,
            _ => {}
        }
    }
    let _ = child.kill();
    let _ = child.wait();

    let kinds = |name: &str| -> Vec<(String, String)> {
        seen[name]
            .iter()
            .map(|l| {
                let kind = l["type"].as_str().unwrap_or("").to_owned();
                let data = l["data"].as_str().unwrap_or("").to_owned();
                (kind, data)
            })
            .collect()
    };
    // Allowed origin, granted topic: the stream opens and delivers.
    let allowed = kinds("allowed");
    let messages: Vec<&str> = allowed
        .iter()
        .filter(|(k, _)| k == "message")
        .map(|(_, d)| d.as_str())
        .collect();
    assert_eq!(messages, ["hello", "end"], "{allowed:?}");
    assert!(allowed.iter().any(|(k, _)| k == "open"), "{allowed:?}");
    assert_eq!(seen["allowed"].last().expect("done")["timeout"], false);

    // A token without the topic: the browser gets the 403 and gives up
    // (readyState CLOSED at once, no open), and the node opened nothing.
    let lacks = &seen["lacks-topic"];
    assert!(
        lacks
            .iter()
            .all(|l| l["type"] != "open" && l["type"] != "connected"),
        "{lacks:?}"
    );
    assert!(
        lacks
            .iter()
            .any(|l| l["type"] == "error" && l["readyState"] == 2),
        "{lacks:?}"
    );
    assert_eq!(lacks.last().expect("done")["timeout"], false);
    // The node is this test's alone: one connection for "allowed", one for
    // "origin-not-allowed" (the node serves it; the browser refuses to
    // read it), none for the 403.
    assert_eq!(
        stat(node.addr, "connections_total").await,
        2,
        "the 403 opened no connection on the node"
    );

    // An origin not allowed: the node answers without a grant, so the
    // browser refuses the stream: never open, nothing read, CLOSED.
    let refused = &seen["origin-not-allowed"];
    assert!(
        refused
            .iter()
            .all(|l| l["type"] != "open" && l["type"] != "connected" && l["type"] != "message"),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|l| l["type"] == "error" && l["readyState"] == 2),
        "{refused:?}"
    );
    assert_eq!(refused.last().expect("done")["timeout"], false);
}
