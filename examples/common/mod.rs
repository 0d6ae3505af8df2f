//! The demo node's HTTP interface, shared by `examples/node.rs`,
//! `examples/cluster.rs` and the integration tests.
//!
//! - `GET /events?topic=T[&topic=T2…][&user=U]`: the SSE stream; the first
//!   event is `event: connected` whose data is the connection id. A full
//!   node answers `503` with `Retry-After`, a user over its limit `429`;
//!   with `--auth-token`, a missing token `401`, a wrong one `403`.
//! - `POST /publish?topic=T | ?user=U | ?connection=C | (none: everyone)`,
//!   optional `&event=NAME`; the body is the event data (UTF-8) → `202` with
//!   `{"id": …}`; a bad event name, target or body → `400` with
//!   `{"error": …}`, and nothing is published; data over the hub's
//!   `max_event_size` → `413`.
//! - `GET /healthz` → `200` when the broker is up, `503` otherwise.
//! - `GET /stats` → JSON counters (`HubStats`, with `history_retained_bytes`:
//!   what the memory history store holds), plus `node_id` and `broker_up`.
//! - `GET /presence?topic=T` → `200 {"topic","connections","users",
//!   "users_exact","nodes_answered","complete"}` across the cluster;
//!   `GET /presence?user=U` → `200 {"user","online","connections","nodes",
//!   "nodes_answered","complete"}`; `GET /presence` → `200 {"nodes": [...]}`
//!   (the nodes this one believes alive). Both `topic` and `user`, or an
//!   invalid name → `400`; presence not enabled on the hub → `501`; the bus
//!   refused the query or the hub is shutting down → `503`.
//!
//! Query values are percent-decoded (`+` is a space) to bytes: a `topic`,
//! `user`, `event` or `connection` that is not UTF-8 then (`topic=%FF`) is
//! refused with `400 {"error": …}` on every route, never replaced with
//! U+FFFD (which made `%FF` and `%FE` the same topic). Other keys are
//! ignored, as before.

#![allow(dead_code, unreachable_pub)]

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sse_cluster::adapters::axum::LastEventId;
use sse_cluster::auth::{Authorizer, Denied};
use sse_cluster::{BrokerStatus, ConnectionId, Event, Hub, Subscription, Target};

/// The demo node's routes, serving `hub`.
pub fn router(hub: Hub) -> Router {
    Router::new()
        .route("/events", get(events))
        .route("/publish", post(publish))
        .route("/healthz", get(healthz))
        .route("/stats", get(stats))
        .route("/presence", get(presence))
        .with_state(hub)
}

/// The `keys` pairs of a query string (`application/x-www-form-urlencoded`,
/// as `form_urlencoded::parse` splits and decodes it), in order; other keys
/// are left out. `Err` (a bad request) if one of their values is not UTF-8
/// once decoded: `form_urlencoded::parse` would replace it with U+FFFD.
fn query_pairs(query: &Option<String>, keys: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let query = query.as_deref().unwrap_or("").as_bytes();
    for pair in query.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        let Ok(key) = String::from_utf8(percent_decode(key)) else {
            continue;
        };
        if !keys.contains(&key.as_str()) {
            continue;
        }
        match String::from_utf8(percent_decode(value)) {
            Ok(value) => pairs.push((key, value)),
            Err(_) => return Err(format!("{key} is not UTF-8 once percent-decoded")),
        }
    }
    Ok(pairs)
}

/// Form decoding to bytes: `+` is a space, `%XX` the byte `XX`; a `%` not
/// followed by two hex digits stays as it is (as in `form_urlencoded`).
fn percent_decode(input: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let byte = match input[i] {
            b'+' => b' ',
            b'%' => match (
                input.get(i + 1).and_then(|&b| hex(b)),
                input.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(hi), Some(lo)) => {
                    i += 2;
                    hi << 4 | lo
                }
                _ => b'%',
            },
            other => other,
        };
        out.push(byte);
        i += 1;
    }
    out
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

async fn events(
    State(hub): State<Hub>,
    RawQuery(query): RawQuery,
    LastEventId(last_event_id): LastEventId,
    parts: axum::http::request::Parts,
) -> Response {
    let pairs = match query_pairs(&query, &["topic", "user"]) {
        Ok(pairs) => pairs,
        Err(reason) => return bad_request(reason),
    };
    let mut sub = Subscription::new().resume_from(last_event_id);
    for (key, value) in pairs {
        match key.as_str() {
            "topic" => sub = sub.topic(value),
            "user" => sub = sub.user(value),
            _ => {}
        }
    }
    let sub = sub.greeting(|id| {
        Event::new()
            .data(id.as_str())
            .event("connected")
            .unwrap_or_default()
    });
    // A refusal that will pass reaches an EventSource as a retry, not an
    // error status it would give up on (see `Hub::respond`).
    hub.respond(&parts, sub).await.into_response()
}

/// Reads a `/publish` request: the target and event from the query, the
/// data from the body. `Err` is why it is a bad request (400).
pub fn publish_request(query: &Option<String>, body: &Bytes) -> Result<(Target, Event), String> {
    let mut targets = Vec::new();
    let mut event = Event::new();
    for (key, value) in query_pairs(query, &["topic", "user", "connection", "event"])? {
        match key.as_str() {
            "topic" => targets.push(Target::Topic(value)),
            "user" => targets.push(Target::User(value)),
            "connection" => match ConnectionId::parse(&value) {
                Some(id) => targets.push(Target::Connection(id)),
                None => return Err("invalid connection id".into()),
            },
            "event" => match event.event(value) {
                Ok(e) => event = e,
                Err(err) => return Err(err.to_string()),
            },
            _ => {}
        }
    }
    if targets.len() > 1 {
        return Err("give at most one of topic, user, connection".into());
    }
    let target = targets.pop().unwrap_or(Target::All);
    match String::from_utf8(body.to_vec()) {
        Ok(data) => Ok((target, event.data(data))),
        Err(_) => Err("the body is not UTF-8".into()),
    }
}

/// `400` with `{"error": reason}`.
pub fn bad_request(reason: String) -> Response {
    error(StatusCode::BAD_REQUEST, reason)
}

/// The response to a publish: `202 {"id": …}`, or the error's status.
pub fn publish_response(
    result: Result<sse_cluster::PublishReceipt, sse_cluster::PublishError>,
) -> Response {
    match result {
        Ok(receipt) => (StatusCode::ACCEPTED, Json(json!({ "id": receipt.id }))).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn publish(State(hub): State<Hub>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    match publish_request(&query, &body) {
        Ok((target, event)) => publish_response(hub.publish(target, event).await),
        Err(reason) => bad_request(reason),
    }
}

async fn healthz(State(hub): State<Hub>) -> Response {
    // Unhealthy from the moment a drain begins, so that a balancer stops
    // sending new connections; reconnects that still arrive get a retry.
    if hub.is_healthy() {
        (StatusCode::OK, "ok").into_response()
    } else if hub.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "broker down").into_response()
    }
}

async fn stats(State(hub): State<Hub>) -> Response {
    let up = hub.broker_status() == BrokerStatus::Up;
    let mut body = serde_json::to_value(hub.stats()).unwrap_or_default();
    if let Some(map) = body.as_object_mut() {
        map.insert("node_id".into(), hub.node_id().into());
        map.insert("broker_up".into(), up.into());
    }
    Json(body).into_response()
}

async fn presence(State(hub): State<Hub>, RawQuery(query): RawQuery) -> Response {
    use sse_cluster::presence::PresenceError;
    let pairs = match query_pairs(&query, &["topic", "user"]) {
        Ok(pairs) => pairs,
        Err(reason) => return bad_request(reason),
    };
    let (mut topic, mut user) = (None, None);
    for (key, value) in pairs {
        match key.as_str() {
            "topic" => topic = Some(value),
            "user" => user = Some(value),
            _ => {}
        }
    }
    let answer = match (topic, user) {
        (Some(topic), None) => hub.presence().topic(&topic).await.map(|p| {
            let mut body = serde_json::to_value(p).unwrap_or_default();
            body["topic"] = topic.into();
            body
        }),
        (None, Some(user)) => hub.presence().user(&user).await.map(|p| {
            let online = p.online();
            let mut body = serde_json::to_value(p).unwrap_or_default();
            body["user"] = user.into();
            body["online"] = online.into();
            body
        }),
        (None, None) => Ok(json!({ "nodes": hub.presence().nodes() })),
        (Some(_), Some(_)) => {
            return error(StatusCode::BAD_REQUEST, "give topic or user, not both")
        }
    };
    match answer {
        Ok(body) => Json(body).into_response(),
        Err(err @ PresenceError::InvalidName(_)) => error(StatusCode::BAD_REQUEST, err),
        Err(err @ PresenceError::Disabled) => error(StatusCode::NOT_IMPLEMENTED, err),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, err),
    }
}

/// The demo node's `--auth-token`: `/events` needs `Authorization: Bearer
/// TOKEN`; topics under `private.` are stripped unless a user is given.
#[derive(Debug)]
pub struct TokenAuthorizer(pub String);

#[async_trait::async_trait]
impl Authorizer for TokenAuthorizer {
    async fn authorize(
        &self,
        request: &axum::http::request::Parts,
        sub: Subscription,
    ) -> Result<Subscription, Denied> {
        let given = request
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => Err(Denied::Unauthenticated("a bearer token is required".into())),
            Some(token) if token != self.0 => Err(Denied::Forbidden("wrong token".into())),
            Some(_) if sub.user_id().is_some() => Ok(sub),
            Some(_) => Ok(sub.retain_topics(|t| !t.starts_with("private."))),
        }
    }
}

/// Broker settings from the command line.
#[derive(Debug, Default, Clone)]
pub struct BrokerOptions {
    pub redis_prefix: Option<String>,
    pub redis_sharded: bool,
    pub nats_prefix: Option<String>,
    /// `--postgres-prefix` (channel and table prefix).
    pub postgres_prefix: Option<String>,
    /// `--history memory|redis|jetstream|postgres`.
    pub history: Option<String>,
    /// `--history-max N`, `--history-age SECS` and `--history-max-bytes N`.
    pub retention: sse_cluster::history::Retention,
}

type Backend = (
    std::sync::Arc<dyn sse_cluster::Broker>,
    Option<std::sync::Arc<dyn sse_cluster::history::History>>,
);

/// The broker for `--broker memory|redis://…|rediss://…|nats://…|tls://…|postgres://…`.
pub async fn broker(
    url: &str,
    options: &BrokerOptions,
) -> Result<std::sync::Arc<dyn sse_cluster::Broker>, Box<dyn std::error::Error>> {
    Ok(backend(url, options).await?.0)
}

/// The broker for `--broker …` and the history store for `--history …`
/// (which must match the broker: memory, redis, jetstream over NATS, or
/// postgres).
pub async fn backend(
    url: &str,
    options: &BrokerOptions,
) -> Result<Backend, Box<dyn std::error::Error>> {
    let history = options.history.as_deref();
    match url {
        "memory" => {
            let bus = sse_cluster::broker::memory::MemoryBus::new();
            let store: Option<std::sync::Arc<dyn sse_cluster::history::History>> = match history {
                None => None,
                Some("memory") => Some(std::sync::Arc::new(
                    sse_cluster::history::memory::MemoryHistory::new(&bus, options.retention),
                )),
                Some(other) => {
                    return Err(format!("--history {other} needs a matching --broker").into())
                }
            };
            Ok((bus.broker(), store))
        }
        url if url.starts_with("redis://") || url.starts_with("rediss://") => {
            redis_backend(url, options)
        }
        url if url.starts_with("nats://") || url.starts_with("tls://") => {
            nats_backend(url, options).await
        }
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            postgres_backend(url, options)
        }
        other => Err(format!("unsupported --broker {other:?}").into()),
    }
}

#[cfg(feature = "redis")]
fn redis_backend(
    url: &str,
    options: &BrokerOptions,
) -> Result<Backend, Box<dyn std::error::Error>> {
    use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
    let mut config = RedisConfig::new(url).sharded(options.redis_sharded);
    if let Some(prefix) = &options.redis_prefix {
        config = config.prefix(prefix.clone());
    }
    let broker = RedisBroker::new(config)?;
    let store: Option<std::sync::Arc<dyn sse_cluster::history::History>> = match options
        .history
        .as_deref()
    {
        None => None,
        Some("redis") => Some(std::sync::Arc::new(
            sse_cluster::history::redis::RedisHistory::new(broker.clone(), options.retention),
        )),
        Some(other) => return Err(format!("--history {other} needs a matching --broker").into()),
    };
    Ok((broker, store))
}

#[cfg(not(feature = "redis"))]
fn redis_backend(
    _url: &str,
    _options: &BrokerOptions,
) -> Result<Backend, Box<dyn std::error::Error>> {
    Err("this build has no Redis support: rebuild with `--features redis`".into())
}

#[cfg(feature = "nats")]
async fn nats_backend(
    url: &str,
    options: &BrokerOptions,
) -> Result<Backend, Box<dyn std::error::Error>> {
    use sse_cluster::broker::nats::{NatsBroker, NatsConfig};
    let mut config = NatsConfig::new(url);
    if let Some(prefix) = &options.nats_prefix {
        config = config.prefix(prefix.clone());
    }
    let broker = NatsBroker::new(config)?;
    let store: Option<std::sync::Arc<dyn sse_cluster::history::History>> = match options
        .history
        .as_deref()
    {
        None => None,
        // The stream is created (or updated) on first use, once the hub has
        // started the broker.
        Some("jetstream") => {
            use sse_cluster::history::jetstream::{JetStreamConfig, JetStreamHistory};
            Some(std::sync::Arc::new(JetStreamHistory::new(
                broker.clone(),
                JetStreamConfig::new(options.retention),
            )?))
        }
        Some(other) => return Err(format!("--history {other} needs a matching --broker").into()),
    };
    Ok((broker, store))
}

#[cfg(not(feature = "nats"))]
async fn nats_backend(
    _url: &str,
    _options: &BrokerOptions,
) -> Result<Backend, Box<dyn std::error::Error>> {
    Err("this build has no NATS support: rebuild with `--features nats`".into())
}

#[cfg(feature = "postgres")]
fn postgres_backend(
    url: &str,
    options: &BrokerOptions,
) -> Result<Backend, Box<dyn std::error::Error>> {
    use sse_cluster::broker::postgres::{PostgresBroker, PostgresConfig};
    let mut config = PostgresConfig::new(url);
    if let Some(prefix) = &options.postgres_prefix {
        config = config.prefix(prefix.clone());
    }
    let broker = PostgresBroker::new(config)?;
    let store: Option<std::sync::Arc<dyn sse_cluster::history::History>> = match options
        .history
        .as_deref()
    {
        None => None,
        // The tables are created on first use, once the hub has started.
        Some("postgres") => Some(std::sync::Arc::new(
            sse_cluster::history::postgres::PostgresHistory::new(broker.clone(), options.retention),
        )),
        Some(other) => return Err(format!("--history {other} needs a matching --broker").into()),
    };
    Ok((broker, store))
}

#[cfg(not(feature = "postgres"))]
fn postgres_backend(
    _url: &str,
    _options: &BrokerOptions,
) -> Result<Backend, Box<dyn std::error::Error>> {
    Err("this build has no Postgres support: rebuild with `--features postgres`".into())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
