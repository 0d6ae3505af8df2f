//! Signed tokens and CORS over real TCP: the JWT authorizer (HS256, ES256,
//! RS256; header, cookie and query in that order; 401, 403 and nothing
//! subscribed; `sub` over `user=`; expiry ending the stream), CORS on the
//! http1 driver and on the axum path (`Hub::respond`), and the demo node's
//! `--jwt-secret`, `--jwt-public-key` and `--cors-origin`.

#![cfg(all(unix, feature = "axum", feature = "http1", feature = "jwt"))]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sse_cluster::adapters::http1::{serve_sse_with, DriverConfig};
use sse_cluster::auth::jwt::JwtAuth;
use sse_cluster::cors::Cors;
use sse_cluster::{Event, Hub, StreamConfig, Subscription, Target};
use support::bus::wait_until;
use support::process::{node_binary, NodeProcess};
use support::{Node, SseClient, WAIT};

const SECRET: &[u8] = b"test secret, thirty-two bytes at least";
const ES_PRIVATE: &[u8] = include_bytes!("fixtures/jwt/es256-private.pem");
const ES_PUBLIC: &[u8] = include_bytes!("fixtures/jwt/es256-public.pem");
const RS_PRIVATE: &[u8] = include_bytes!("fixtures/jwt/rs256-private.pem");
const RS_PUBLIC: &[u8] = include_bytes!("fixtures/jwt/rs256-public.pem");
const APP: &str = "http://app.example";
const OTHER: &str = "http://other.example";

#[derive(Clone, Copy, Debug)]
enum Key {
    Hs256,
    Es256,
    Rs256,
}

impl Key {
    fn auth(self) -> JwtAuth {
        match self {
            Key::Hs256 => JwtAuth::hs256(SECRET),
            Key::Es256 => JwtAuth::es256_pem(ES_PUBLIC),
            Key::Rs256 => JwtAuth::rs256_pem(RS_PUBLIC),
        }
        .expect("key")
    }

    fn sign(self, claims: &Value) -> String {
        let (alg, key) = match self {
            Key::Hs256 => (Algorithm::HS256, EncodingKey::from_secret(SECRET)),
            Key::Es256 => (Algorithm::ES256, EncodingKey::from_ec_pem(ES_PRIVATE)),
            Key::Rs256 => (Algorithm::RS256, EncodingKey::from_rsa_pem(RS_PRIVATE)),
        };
        jsonwebtoken::encode(&Header::new(alg), claims, &key.expect("key")).expect("sign")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Claims for `sub` (if any) granting `subscribe` and `publish`, expiring
/// in an hour.
fn claims(sub: Option<&str>, subscribe: &[&str], publish: &[&str]) -> Value {
    let mut claims = json!({
        "exp": unix_now() + 3600,
        "sse": { "subscribe": subscribe, "publish": publish },
    });
    if let Some(sub) = sub {
        claims["sub"] = sub.into();
    }
    claims
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn cookie(token: &str) -> String {
    format!("theme=dark; sse_token={token}")
}

/// A hub on a private bus with `auth` as its authorizer and `cors` (if any),
/// served by the demo router (axum) on a loopback port.
async fn node(auth: Option<JwtAuth>, cors: Option<Cors>) -> Node {
    Node::serve(hub(auth, cors).await).await
}

async fn hub(auth: Option<JwtAuth>, cors: Option<Cors>) -> Hub {
    let mut builder = Hub::builder().stream_config(StreamConfig::default().keep_alive(None));
    if let Some(auth) = auth {
        builder = builder.authorizer(Arc::new(auth));
    }
    if let Some(cors) = cors {
        builder = builder.cors(cors);
    }
    builder.build().await.expect("hub")
}

/// Opens `/events?…` with `headers`; returns the client (whose status says
/// whether it was accepted).
async fn open(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> SseClient {
    SseClient::open(addr, &format!("/events?{query}"), headers).await
}

/// Opens a stream that must be accepted, and reads its `connected` greeting.
async fn open_ok(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> SseClient {
    let mut client = open(addr, query, headers).await;
    assert_eq!(client.status, StatusCode::OK, "{query} {headers:?}");
    let hello = client.next().await.expect("connected event");
    assert_eq!(hello.event, "connected");
    client
}

/// One HTTP request; the status, headers and body text.
async fn http(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, String) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let response = sender.send_request(request).await.expect("send");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("a whole body")
        .expect("body")
        .to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A query, request headers, and the status they get.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, StatusCode);

#[tokio::test]
async fn every_algorithm_reads_the_token_from_header_cookie_and_query_in_that_order() {
    for key in [Key::Hs256, Key::Es256, Key::Rs256] {
        let node = node(Some(key.auth()), None).await;
        let good = key.sign(&claims(Some("u"), &["news"], &[]));
        // Well formed, generous, and signed with a key the node does not trust.
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(Some("u"), &["*"], &["*"]),
            &EncodingKey::from_secret(b"not the node's secret").expect("key"),
        )
        .expect("sign");
        let (auth_good, cookie_good, cookie_bad) = (bearer(&good), cookie(&good), cookie(&forged));
        let query_good = format!("topic=news&access_token={good}");
        let query_bad = format!("topic=news&access_token={forged}");

        // Each source alone.
        let mut header = open_ok(node.addr, "topic=news", &[("authorization", &auth_good)]).await;
        let mut cookie = open_ok(node.addr, "topic=news", &[("cookie", &cookie_good)]).await;
        let mut query = open_ok(node.addr, &query_good, &[]).await;
        node.hub
            .publish(Target::topic("news"), Event::new().data("hi"))
            .await
            .expect("publish");
        for (client, how) in [
            (&mut header, "header"),
            (&mut cookie, "cookie"),
            (&mut query, "query"),
        ] {
            assert_eq!(client.next().await.expect(how).data, "hi", "{key:?} {how}");
        }

        // The first source present decides: a bad token there is refused,
        // a bad one further down is never read.
        let auth_bad = bearer(&forged);
        let cases: [Case; 5] = [
            (
                &query_bad,
                vec![("authorization", &auth_good), ("cookie", &cookie_bad)],
                StatusCode::OK,
            ),
            (
                &query_good,
                vec![("authorization", &auth_bad), ("cookie", &cookie_good)],
                StatusCode::UNAUTHORIZED,
            ),
            (&query_bad, vec![("cookie", &cookie_good)], StatusCode::OK),
            (
                &query_good,
                vec![("cookie", &cookie_bad)],
                StatusCode::UNAUTHORIZED,
            ),
            ("topic=news", vec![], StatusCode::UNAUTHORIZED),
        ];
        for (query, headers, status) in cases {
            let client = open(node.addr, query, &headers).await;
            assert_eq!(client.status, status, "{key:?} {query} {headers:?}");
        }
        // The accepted streams of the cases above were dropped: the three
        // first ones are left, and nothing of the refused ones.
        let hub = node.hub.clone();
        wait_until("only the three streams still open", WAIT, || {
            hub.registry().len() == 3
        })
        .await;
    }
}

#[tokio::test]
async fn tokens_that_must_not_pass_are_401() {
    let node = node(Some(Key::Es256.auth()), None).await;
    let now = unix_now();
    let grants = json!({"subscribe": ["*"]});
    let cases = [
        (
            "expired",
            Key::Es256.sign(&json!({"sub": "u", "exp": now - 10, "sse": grants})),
        ),
        (
            "no exp",
            Key::Es256.sign(&json!({"sub": "u", "sse": grants})),
        ),
        (
            "not yet valid",
            Key::Es256.sign(&json!({"sub": "u", "exp": now + 60, "nbf": now + 30, "sse": grants})),
        ),
        // HS256 with the public key's bytes as the secret: the classic
        // algorithm confusion.
        ("another algorithm", {
            let key = EncodingKey::from_secret(ES_PUBLIC).expect("key");
            let claims = json!({"sub": "u", "exp": now + 60, "sse": grants});
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign")
        }),
        (
            "another key",
            Key::Rs256.sign(&json!({"sub": "u", "exp": now + 60, "sse": grants})),
        ),
        ("garbage", "not.a.token".to_owned()),
        (
            "a number as sub",
            Key::Es256.sign(&json!({"sub": 7, "exp": now + 60, "sse": grants})),
        ),
    ];
    for (why, token) in cases {
        let client = open(node.addr, "topic=a", &[("authorization", &bearer(&token))]).await;
        assert_eq!(client.status, StatusCode::UNAUTHORIZED, "{why}");
    }
    assert_eq!(node.hub.registry().len(), 0);
}

#[tokio::test]
async fn outside_the_claims_is_403_and_subscribes_nothing() {
    let node = node(Some(Key::Hs256.auth()), None).await;
    let token = bearer(&Key::Hs256.sign(&claims(Some("alice"), &["orders.*", "news"], &[])));
    let headers = [("authorization", token.as_str())];
    for query in [
        "topic=orders.1&topic=admin",
        "topic=orders",
        "topic=newsletter",
        "topic=news&topic=orders.eu.7&topic=x",
    ] {
        let client = open(node.addr, query, &headers).await;
        assert_eq!(client.status, StatusCode::FORBIDDEN, "{query}");
    }
    let hub = &node.hub;
    assert_eq!(hub.registry().len(), 0);
    assert_eq!(hub.stats().connections, 0);
    assert_eq!(hub.registry().topic_connections("orders.1"), 0);
    assert_eq!(hub.registry().topic_connections("news"), 0);
    assert_eq!(hub.registry().user_connections("alice"), 0);

    // Inside the claims; `user=bob` is ignored, the token says alice.
    let mut client = open_ok(node.addr, "topic=news&topic=orders.eu.7&user=bob", &headers).await;
    assert_eq!(hub.registry().user_connections("alice"), 1);
    assert_eq!(hub.registry().user_connections("bob"), 0);
    hub.publish(Target::user("bob"), Event::new().data("for bob"))
        .await
        .expect("publish");
    hub.publish(Target::user("alice"), Event::new().data("for alice"))
        .await
        .expect("publish");
    hub.publish(Target::topic("orders.eu.7"), Event::new().data("order"))
        .await
        .expect("publish");
    assert_eq!(client.next().await.expect("event").data, "for alice");
    assert_eq!(client.next().await.expect("event").data, "order");

    // A token without `sub` may not ask for a user.
    let anonymous = bearer(&Key::Hs256.sign(&claims(None, &["news"], &[])));
    let client = open(
        node.addr,
        "topic=news&user=bob",
        &[("authorization", &anonymous)],
    )
    .await;
    assert_eq!(client.status, StatusCode::FORBIDDEN);
    assert_eq!(hub.registry().len(), 1);
}

#[tokio::test]
async fn an_expiring_token_ends_the_stream_within_a_second_of_exp() {
    let node = node(Some(Key::Hs256.auth()), None).await;
    let exp = unix_now() + 3; // 2 to 3 s from now: room for a slow connect
    let token = Key::Hs256.sign(&json!({"sub": "u", "exp": exp, "sse": {"subscribe": ["t"]}}));
    let mut client = open_ok(node.addr, "topic=t", &[("cookie", &cookie(&token))]).await;
    node.hub
        .publish(Target::topic("t"), Event::new().data("before"))
        .await
        .expect("publish");
    assert_eq!(client.next().await.expect("event").data, "before");

    let last = client
        .next_within(Duration::from_secs(5))
        .await
        .expect("the expired event");
    let at = SystemTime::now();
    assert_eq!(last.event, sse_cluster::EXPIRED_EVENT);
    assert_eq!(last.data, r#"{"reason":"expired"}"#);
    let exp = UNIX_EPOCH + Duration::from_secs(exp);
    // Not before `exp` (a little slack for the two clocks' readings), and
    // within a second after it.
    assert!(
        at + Duration::from_millis(50) >= exp,
        "ended {:?} early",
        exp.duration_since(at)
    );
    assert!(
        at <= exp + Duration::from_secs(1),
        "ended {:?} late",
        at.duration_since(exp)
    );
    client
        .wait_end(Duration::from_secs(1))
        .await
        .expect("the stream ends after the event");
    let hub = node.hub.clone();
    wait_until("the expired connection is gone", WAIT, || {
        hub.registry().is_empty()
    })
    .await;
}

/// Serves `/events?topic=…` through the http1 driver with `config`; the
/// hub (which has no CORS policy of its own) answers.
async fn driver(hub: Hub, config: DriverConfig) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (hub, config) = (hub.clone(), config.clone());
            tokio::spawn(async move {
                let is_sse = |head: &http::request::Parts| {
                    head.method == Method::GET && head.uri.path() == "/events"
                };
                let respond = |req: http::Request<()>| async move {
                    let (head, ()) = req.into_parts();
                    let topics: Vec<String> =
                        form_urlencoded::parse(head.uri.query().unwrap_or("").as_bytes())
                            .filter(|(k, _)| k == "topic")
                            .map(|(_, v)| v.into_owned())
                            .collect();
                    let sub = Subscription::new().topics(topics).greeting(|id| {
                        Event::new()
                            .event("connected")
                            .unwrap_or_default()
                            .data(id.as_str())
                    });
                    hub.respond(&head, sub).await
                };
                let _ = serve_sse_with(tcp, &config, is_sse, respond).await;
            });
        }
    });
    addr
}

fn grant(headers: &HeaderMap) -> Option<(&str, Option<&str>)> {
    let origin = headers.get("access-control-allow-origin")?.to_str().ok()?;
    let credentials = headers
        .get("access-control-allow-credentials")
        .and_then(|v| v.to_str().ok());
    Some((origin, credentials))
}

/// The CORS checks shared by the driver and the axum path: streams and
/// refusals grant `APP` only, with credentials, and preflights are answered.
async fn check_cors(addr: SocketAddr, hub: &Hub, token: &str) {
    let auth = bearer(token);
    let allowed = open_ok(
        addr,
        "topic=news",
        &[("origin", APP), ("authorization", &auth)],
    )
    .await;
    assert_eq!(grant(&allowed.headers), Some((APP, Some("true"))));
    assert_eq!(allowed.headers["vary"], "origin");
    assert_eq!(
        allowed.headers["access-control-expose-headers"],
        "retry-after"
    );
    let other = open_ok(
        addr,
        "topic=news",
        &[("origin", OTHER), ("authorization", &auth)],
    )
    .await;
    assert_eq!(grant(&other.headers), None, "no grant for another origin");
    let same_origin = open_ok(addr, "topic=news", &[("authorization", &auth)]).await;
    assert_eq!(grant(&same_origin.headers), None);

    // Refusals carry the grant, so the page can read them.
    let unauthenticated = open(addr, "topic=news", &[("origin", APP)]).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    assert_eq!(grant(&unauthenticated.headers), Some((APP, Some("true"))));
    let forbidden = open(
        addr,
        "topic=admin",
        &[("origin", APP), ("authorization", &auth)],
    )
    .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(grant(&forbidden.headers), Some((APP, Some("true"))));
    let forbidden_other = open(
        addr,
        "topic=admin",
        &[("origin", OTHER), ("authorization", &auth)],
    )
    .await;
    assert_eq!(grant(&forbidden_other.headers), None);
    assert_eq!(hub.registry().len(), 3, "refusals subscribed nothing");

    // Preflights: answered, nothing opened.
    let preflight = |origin| {
        vec![
            ("origin", origin),
            ("access-control-request-method", "GET"),
            (
                "access-control-request-headers",
                "authorization, last-event-id",
            ),
        ]
    };
    let (status, headers, body) = http(
        addr,
        Method::OPTIONS,
        "/events?topic=news",
        &preflight(APP),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(grant(&headers), Some((APP, Some("true"))));
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .expect("text")
        .contains("GET"));
    assert_eq!(
        headers["access-control-allow-headers"],
        "authorization, last-event-id"
    );
    let (status, headers, _) = http(
        addr,
        Method::OPTIONS,
        "/events?topic=news",
        &preflight(OTHER),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(grant(&headers), None);
    assert!(headers.get("access-control-allow-methods").is_none());
    assert_eq!(hub.registry().len(), 3, "preflights subscribed nothing");
}

fn app_cors() -> Cors {
    Cors::origins([APP])
        .allow_credentials(true)
        .expose_headers(["retry-after"])
}

#[tokio::test]
async fn cors_on_the_http1_driver() {
    // The hub has no policy: the driver's applies to what the app built.
    let hub = hub(Some(Key::Hs256.auth()), None).await;
    let addr = driver(hub.clone(), DriverConfig::default().cors(app_cors())).await;
    let token = Key::Hs256.sign(&claims(Some("u"), &["news"], &[]));
    check_cors(addr, &hub, &token).await;

    // Without a policy, no grant and no preflight answer from the driver.
    let plain = driver(hub.clone(), DriverConfig::default()).await;
    let client = open_ok(
        plain,
        "topic=news",
        &[("origin", APP), ("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(grant(&client.headers), None);
}

#[tokio::test]
async fn cors_on_the_axum_path() {
    use axum::routing::get;
    let hub = hub(Some(Key::Hs256.auth()), Some(app_cors())).await;
    // The handler a user writes: `Hub::respond`, for GET and OPTIONS.
    async fn events(
        axum::extract::State(hub): axum::extract::State<Hub>,
        axum::extract::Query(q): axum::extract::Query<Vec<(String, String)>>,
        parts: http::request::Parts,
    ) -> http::Response<sse_cluster::SseStream> {
        let topics = q.into_iter().filter(|(k, _)| k == "topic").map(|(_, v)| v);
        let sub = Subscription::new().topics(topics).greeting(|id| {
            Event::new()
                .event("connected")
                .unwrap_or_default()
                .data(id.as_str())
        });
        hub.respond(&parts, sub).await
    }
    let app = axum::Router::new()
        .route("/events", get(events).options(events))
        .with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let token = Key::Hs256.sign(&claims(Some("u"), &["news"], &[]));
    check_cors(addr, &hub, &token).await;
}

/// The demo node's `--jwt-secret` / `--jwt-public-key` and `--cors-origin`.
#[tokio::test]
async fn demo_node_flags() {
    let dir = std::env::temp_dir().join(format!("sse-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key_file = |name: &str, pem: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("key file");
        path.to_str().expect("path").to_owned()
    };
    let (es_file, rs_file) = (key_file("es.pem", ES_PUBLIC), key_file("rs.pem", RS_PUBLIC));
    let secret = std::str::from_utf8(SECRET).expect("utf-8");
    for (key, flags) in [
        (Key::Hs256, ["--jwt-secret", secret]),
        // The key's kind picks the algorithm.
        (Key::Es256, ["--jwt-public-key", es_file.as_str()]),
        (Key::Rs256, ["--jwt-public-key", rs_file.as_str()]),
    ] {
        let node = NodeProcess::start(
            &node_binary(None),
            &[
                flags[0],
                flags[1],
                "--cors-origin",
                APP,
                "--cors-origin",
                "http://b.example",
            ],
        );
        demo_node_contract(node.addr, key).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

async fn demo_node_contract(addr: SocketAddr, key: Key) {
    let reader = key.sign(&claims(Some("alice"), &["news", "orders.*"], &[]));
    let writer = bearer(&key.sign(&claims(Some("svc"), &[], &["news"])));
    let admin = bearer(&key.sign(&claims(Some("root"), &["*"], &["*"])));

    // /events: 401 without a token, 403 outside the claims.
    let unauthenticated = open(addr, "topic=news", &[]).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unauthenticated.headers["www-authenticate"], "Bearer");
    let forbidden = open(addr, "topic=admin", &[("cookie", &cookie(&reader))]).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    // Each source; `user=bob` is ignored: the token says alice.
    let origin = [("origin", APP)];
    let mut by_cookie = open_ok(
        addr,
        "topic=news&user=bob",
        &[("cookie", &cookie(&reader)), origin[0]],
    )
    .await;
    assert_eq!(grant(&by_cookie.headers), Some((APP, Some("true"))));
    let mut by_query = open_ok(
        addr,
        &format!("topic=orders.1&access_token={reader}"),
        &[("origin", OTHER)],
    )
    .await;
    assert_eq!(
        grant(&by_query.headers),
        None,
        "an origin not listed gets no grant"
    );
    let mut by_header = open_ok(addr, "user=bob", &[("authorization", &bearer(&reader))]).await;

    // /publish: 401, 403, 202.
    let post = |headers: Vec<(&'static str, String)>, path: &'static str, body: &'static str| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http(addr, Method::POST, path, &headers, body).await
    };
    let (status, headers, _) = post(vec![("origin", APP.into())], "/publish?topic=news", "x").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(
        grant(&headers),
        Some((APP, Some("true"))),
        "a refusal a page can read"
    );
    let writer_h = ("authorization", writer.clone());
    assert_eq!(
        post(vec![writer_h.clone()], "/publish?topic=orders.1", "x")
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(vec![writer_h.clone()], "/publish?user=alice", "x")
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(
            vec![("authorization", bearer(&reader))],
            "/publish?topic=news",
            "x"
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(vec![writer_h.clone()], "/publish?topic=news", "n1")
            .await
            .0,
        StatusCode::ACCEPTED
    );
    assert_eq!(by_cookie.next().await.expect("news").data, "n1");
    let admin_h = ("authorization", admin.clone());
    assert_eq!(
        post(vec![admin_h.clone()], "/publish?user=alice", "to alice")
            .await
            .0,
        StatusCode::ACCEPTED
    );
    assert_eq!(by_cookie.next().await.expect("user event").data, "to alice");
    assert_eq!(by_header.next().await.expect("user event").data, "to alice");
    assert_eq!(
        post(vec![admin_h.clone()], "/publish?topic=orders.1", "o1")
            .await
            .0,
        StatusCode::ACCEPTED
    );
    assert_eq!(by_query.next().await.expect("user event").data, "to alice");
    assert_eq!(by_query.next().await.expect("order").data, "o1");
    assert_eq!(
        post(vec![admin_h.clone()], "/publish?user=bob", "to bob")
            .await
            .0,
        StatusCode::ACCEPTED
    );
    by_cookie.expect_quiet().await;

    // /presence: 401, 403, 200.
    let get = |path: &'static str, auth: Option<String>| async move {
        let headers: Vec<(&str, String)> = auth.into_iter().map(|a| ("authorization", a)).collect();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http(addr, Method::GET, path, &headers, "").await.0
    };
    let reader_b = Some(bearer(&reader));
    assert_eq!(
        get("/presence?topic=news", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get("/presence?topic=admin", reader_b.clone()).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get("/presence?user=bob", reader_b.clone()).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get("/presence?topic=news", reader_b.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        get("/presence?user=alice", reader_b.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        get("/presence?user=bob", Some(admin.clone())).await,
        StatusCode::OK
    );
    // The operator's routes stay open.
    assert_eq!(get("/healthz", None).await, StatusCode::OK);
    assert_eq!(get("/metrics", None).await, StatusCode::OK);

    // A preflight for /events from a listed origin.
    let (status, headers, _) = http(
        addr,
        Method::OPTIONS,
        "/events?topic=news",
        &[
            ("origin", "http://b.example"),
            ("access-control-request-method", "GET"),
        ],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(grant(&headers), Some(("http://b.example", Some("true"))));
}
