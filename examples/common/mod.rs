//! The demo node's HTTP interface, shared by `examples/node.rs`,
//! `examples/cluster.rs` and the integration tests.
//!
//! - `GET /events?topic=T[&topic=T2…][&user=U]`: the SSE stream; the first
//!   event is `event: connected` whose data is the connection id. A full
//!   node answers `503` with `Retry-After`, a user over its limit `429`;
//!   with `--auth-token`, a missing token `401`, a wrong one `403`. With a
//!   JWT key (`--jwt-secret`, `--jwt-public-key`; see [`Access`]) a token is
//!   required: none or an invalid one `401`, a topic outside its claims
//!   `403`; the token's `sub` is the user (`user=` is ignored), and the
//!   stream ends at its `exp` with `event: sse-cluster.expired`.
//! - `POST /publish?topic=T | ?user=U | ?connection=C | (none: everyone)`,
//!   optional `&event=NAME`; the body is the event data (UTF-8) → `202` with
//!   `{"id": …}`; a bad event name, target or body → `400` with
//!   `{"error": …}`, and nothing is published; data over the hub's
//!   `max_event_size` → `413`. With an `Idempotency-Key: K` header (1 to
//!   256 visible ASCII characters, else `400` and nothing is published), a
//!   repeat of K to the same target within the window (2 minutes) is
//!   answered `202` with the first publish's `id` and `position` and
//!   `"duplicate": true`, and is stored and delivered once (see
//!   `Hub::publish_idempotent`). The `202` body is `{"id", "position"
//!   (the history position, or null), "duplicate"}`.
//! - `GET /resume-token?topic=T[&topic=…][&user=U]` → `200 text/plain`:
//!   a resume token for those channels as they stand now
//!   (`Hub::resume_token`); `GET /events?…&last_event_id=TOKEN` with the
//!   same topics and user replays everything published since. No history
//!   on the node → `501`; an invalid name → `400`; the store unreachable →
//!   `503`.
//! - `POST /disconnect?user=U | topic=T | connection=C [&reason=R]
//!   [&reconnect=1]`: ends the matching streams on every node (each gets a
//!   final `event: sse-cluster.closed`, `data: {"reason","reconnect"}`, and
//!   a `retry:` of an hour, or of about a second with `reconnect=1`) →
//!   `200 {"closed_locally": n, "reconnect", "node_id"}`; the other nodes'
//!   counts are their `closed_by_command` in `/stats` (and
//!   `sse_connections_closed_by_command_total`). No target, several, or an
//!   invalid one → `400`; the bus down → `503` (the local streams are
//!   closed all the same).
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
//! With a JWT key, `/publish` and `/presence` need a token too; `/healthz`,
//! `/stats` and `/metrics` stay open, meant for the operator's network.
//! With `--cors-origin` (see [`Access`]), every answer to a listed `Origin`
//! carries `Access-Control-Allow-Origin: ORIGIN` and
//! `Access-Control-Allow-Credentials: true`, and preflights are answered.
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

/// The demo node's routes, serving `hub`, open to anyone.
pub fn router(hub: Hub) -> Router {
    router_with(hub, Access::default())
}

/// The demo node's routes, serving `hub`, with `access`: the token check of
/// `/events` (through the hub's authorizer), `/publish` and `/presence`,
/// and the CORS policy of every answer (preflights included).
pub fn router_with(hub: Hub, access: Access) -> Router {
    Router::new()
        .route("/events", get(events))
        .route("/publish", post(publish))
        .route("/resume-token", get(resume_token))
        .route("/healthz", get(healthz))
        .route("/stats", get(stats))
        .route("/presence", get(presence))
        .route("/disconnect", post(disconnect))
        .layer(axum::middleware::from_fn_with_state(
            access.clone(),
            cors_layer,
        ))
        .layer(axum::Extension(access))
        .with_state(hub)
}

/// Who may use the demo node's routes, and which origins may read them.
///
/// With a JWT key (`--jwt-secret`, `--jwt-public-key`), `/events`,
/// `/publish` and `/presence` need a token (`Authorization: Bearer T`,
/// else the cookie `sse_token=T`, else `?access_token=T`): none or an
/// invalid one is `401` (with `WWW-Authenticate: Bearer`), a target outside
/// its claims `403`. `/events` checks it through the hub's authorizer (the
/// same `JwtAuth`), the others through [`Access::check_subscribe`],
/// [`Access::check_publish`] and [`Access::check_presence`], which any
/// further route (`/resume-token`) can call alike: a route registered in
/// [`router_with`], before its layers, reads this with
/// `axum::Extension<Access>` and its request with
/// `axum::http::request::Parts`. `/healthz`, `/stats`
/// and `/metrics` stay open: they are meant for the operator's network
/// (a balancer's health check, a Prometheus scraper), not for the public.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The token check.
    #[cfg(feature = "jwt")]
    pub jwt: Option<std::sync::Arc<sse_cluster::auth::jwt::JwtAuth>>,
    /// The CORS policy (`--cors-origin`).
    pub cors: Option<sse_cluster::cors::Cors>,
}

impl Access {
    /// `Ok` if the request may read `topics` (all of them): without a JWT
    /// key always; with one, if its token is valid (else `401`) and grants
    /// every topic (else `403`). The `Err` is the answer to send (boxed:
    /// the `Ok` path should not carry its size).
    pub fn check_subscribe(
        &self,
        request: &axum::http::request::Parts,
        topics: &[String],
    ) -> Result<(), Box<Response>> {
        #[cfg(feature = "jwt")]
        if let Some(claims) = self.claims(request)? {
            if let Some(topic) = topics.iter().find(|t| !claims.can_subscribe(t)) {
                return Err(forbidden(format!(
                    "the token does not grant topic {topic:?}"
                )));
            }
        }
        let _ = (request, topics);
        Ok(())
    }

    /// `Ok` if the request may publish to `target` (see
    /// `Claims::can_publish`): `401` without a valid token, `403` outside
    /// its claims.
    pub fn check_publish(
        &self,
        request: &axum::http::request::Parts,
        target: &Target,
    ) -> Result<(), Box<Response>> {
        #[cfg(feature = "jwt")]
        if let Some(claims) = self.claims(request)? {
            if !claims.can_publish(target) {
                return Err(forbidden("the token does not grant publishing there"));
            }
        }
        let _ = (request, target);
        Ok(())
    }

    /// `Ok` if the request may ask `/presence` about `topic` (a topic it may
    /// subscribe to), `user` (its own `sub`, or any with the `"*"`
    /// subscribe grant), or neither (the node list: any valid token).
    pub fn check_presence(
        &self,
        request: &axum::http::request::Parts,
        topic: Option<&str>,
        user: Option<&str>,
    ) -> Result<(), Box<Response>> {
        #[cfg(feature = "jwt")]
        if let Some(claims) = self.claims(request)? {
            let allowed = match (topic, user) {
                (Some(topic), _) if !claims.can_subscribe(topic) => false,
                (_, Some(user)) => {
                    claims.user() == Some(user) || claims.sse.subscribe.iter().any(|p| p == "*")
                }
                _ => true,
            };
            if !allowed {
                return Err(forbidden("the token does not grant this presence query"));
            }
        }
        let _ = (request, topic, user);
        Ok(())
    }

    /// The request's verified claims (`None` without a JWT key), or the
    /// `401` for a missing or invalid token.
    #[cfg(feature = "jwt")]
    pub fn claims(
        &self,
        request: &axum::http::request::Parts,
    ) -> Result<Option<sse_cluster::auth::jwt::Claims>, Box<Response>> {
        let Some(jwt) = &self.jwt else {
            return Ok(None);
        };
        match jwt.verify(request) {
            Ok(claims) => Ok(Some(claims)),
            Err(err) => {
                let mut response = error(StatusCode::UNAUTHORIZED, err);
                response.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
                Err(response.into())
            }
        }
    }
}

fn forbidden(reason: impl std::fmt::Display) -> Box<Response> {
    Box::new(error(StatusCode::FORBIDDEN, reason))
}

/// The CORS policy on every route: a preflight is answered here; any other
/// answer gets the grant for an allowed origin. (`/events` answers from
/// `Hub::respond` carry it already when the hub has the same policy; the
/// grant is set, not added, so twice is the same.)
async fn cors_layer(
    State(access): State<Access>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(cors) = &access.cors else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    if let Some(answer) = cors.preflight(&parts) {
        return answer.map(|()| axum::body::Body::empty());
    }
    let mut origin = axum::http::HeaderMap::new();
    if let Some(value) = parts.headers.get(axum::http::header::ORIGIN) {
        origin.insert(axum::http::header::ORIGIN, value.clone());
    }
    let mut response = next
        .run(axum::extract::Request::from_parts(parts, body))
        .await;
    cors.apply(&origin, response.headers_mut());
    response
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

/// The `Idempotency-Key` header of a publish: `Ok(None)` without one,
/// `Err` (a bad request) for a value that is not text; the crate checks
/// the rest (`PublishError::InvalidKey`).
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, String> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(value) => match value.to_str() {
            Ok(key) => Ok(Some(key.to_owned())),
            Err(_) => Err("the Idempotency-Key header is not visible ASCII".into()),
        },
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
        Ok(receipt) => {
            let body = json!({
                "id": receipt.id,
                "position": receipt.position.map(|p| p.to_string()),
                "duplicate": receipt.duplicate,
            });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(err) => err.into_response(),
    }
}

async fn publish(
    State(hub): State<Hub>,
    axum::Extension(access): axum::Extension<Access>,
    RawQuery(query): RawQuery,
    parts: axum::http::request::Parts,
    body: Bytes,
) -> Response {
    let key = match idempotency_key(&parts.headers) {
        Ok(key) => key,
        Err(reason) => return bad_request(reason),
    };
    match publish_request(&query, &body) {
        Ok((target, event)) => {
            if let Err(refused) = access.check_publish(&parts, &target) {
                return *refused;
            }
            match key {
                None => publish_response(hub.publish(target, event).await),
                Some(key) => publish_response(hub.publish_idempotent(target, event, &key).await),
            }
        }
        Err(reason) => bad_request(reason),
    }
}

/// `GET /resume-token?topic=T[&topic=…][&user=U]`: the token as
/// `text/plain`. A plain handler, so that an app can put its own auth in
/// front of it.
pub async fn resume_token(
    State(hub): State<Hub>,
    axum::Extension(access): axum::Extension<Access>,
    RawQuery(query): RawQuery,
    parts: axum::http::request::Parts,
) -> Response {
    let pairs = match query_pairs(&query, &["topic", "user"]) {
        Ok(pairs) => pairs,
        Err(reason) => return bad_request(reason),
    };
    let mut sub = Subscription::new();
    for (key, value) in pairs {
        match key.as_str() {
            "topic" => sub = sub.topic(value),
            "user" => sub = sub.user(value),
            _ => {}
        }
    }
    if let Err(refused) = access.check_subscribe(&parts, sub.topic_names()) {
        return *refused;
    }
    match hub.resume_token(&sub).await {
        Ok(token) => (
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; charset=utf-8",
                ),
                (axum::http::header::CACHE_CONTROL, "no-store"),
            ],
            token,
        )
            .into_response(),
        Err(err) => error(err.status(), err),
    }
}

/// `POST /disconnect?user=U | topic=T | connection=C [&reason=R] [&reconnect=1]`:
/// ends the matching streams on every node, each after a final
/// `sse-cluster.closed` event; `200 {"closed_locally": n, …}`. With a JWT
/// key, the token must grant publishing to the target.
async fn disconnect(
    State(hub): State<Hub>,
    axum::Extension(access): axum::Extension<Access>,
    RawQuery(query): RawQuery,
    parts: axum::http::request::Parts,
) -> Response {
    let pairs = match query_pairs(
        &query,
        &["topic", "user", "connection", "reason", "reconnect"],
    ) {
        Ok(pairs) => pairs,
        Err(reason) => return bad_request(reason),
    };
    let mut targets = Vec::new();
    let (mut reason, mut reconnect) = ("disconnected".to_owned(), false);
    for (key, value) in pairs {
        match key.as_str() {
            "topic" => targets.push(Target::Topic(value)),
            "user" => targets.push(Target::User(value)),
            "connection" => match ConnectionId::parse(&value) {
                Some(id) => targets.push(Target::Connection(id)),
                None => return bad_request("invalid connection id".into()),
            },
            "reason" => reason = value,
            "reconnect" => reconnect = matches!(value.as_str(), "1" | "true"),
            _ => {}
        }
    }
    let target = match (targets.pop(), targets.is_empty()) {
        (Some(target), true) => target,
        _ => return bad_request("give exactly one of topic, user, connection".into()),
    };
    if let Err(refused) = access.check_publish(&parts, &target) {
        return *refused;
    }
    let how = if reconnect {
        sse_cluster::Disconnect::reconnect(reason)
    } else {
        sse_cluster::Disconnect::revoke(reason)
    };
    let reconnect = how.reconnect;
    match hub.disconnect(target, how).await {
        Ok(closed) => Json(json!({
            "closed_locally": closed,
            "reconnect": reconnect,
            "node_id": hub.node_id(),
        }))
        .into_response(),
        Err(err) => err.into_response(),
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

async fn presence(
    State(hub): State<Hub>,
    axum::Extension(access): axum::Extension<Access>,
    RawQuery(query): RawQuery,
    parts: axum::http::request::Parts,
) -> Response {
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
    if let Err(refused) = access.check_presence(&parts, topic.as_deref(), user.as_deref()) {
        return *refused;
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
    /// `--kafka-topic` (the cluster's topic).
    pub kafka_topic: Option<String>,
    /// `--history memory|redis|jetstream|postgres|kafka`.
    pub history: Option<String>,
    /// `--history-max N`, `--history-age SECS` and `--history-max-bytes N`.
    pub retention: sse_cluster::history::Retention,
}

type Backend = (
    std::sync::Arc<dyn sse_cluster::Broker>,
    Option<std::sync::Arc<dyn sse_cluster::history::History>>,
);

/// The broker for `--broker memory|redis://…|rediss://…|redis+sentinel://…|nats://…|tls://…|postgres://…|kafka://…`.
pub async fn broker(
    url: &str,
    options: &BrokerOptions,
) -> Result<std::sync::Arc<dyn sse_cluster::Broker>, Box<dyn std::error::Error>> {
    Ok(backend(url, options).await?.0)
}

/// The broker for `--broker …` and the history store for `--history …`
/// (which must match the broker: memory, redis, jetstream over NATS,
/// postgres, or kafka).
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
        url if url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("redis+sentinel://")
            || url.starts_with("rediss+sentinel://") =>
        {
            redis_backend(url, options)
        }
        url if url.starts_with("nats://") || url.starts_with("tls://") => {
            nats_backend(url, options).await
        }
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            postgres_backend(url, options)
        }
        url if url.starts_with("kafka://") => kafka_backend(url, options),
        other => Err(format!("unsupported --broker {other:?}").into()),
    }
}

#[cfg(feature = "redis")]
fn redis_backend(
    url: &str,
    options: &BrokerOptions,
) -> Result<Backend, Box<dyn std::error::Error>> {
    use sse_cluster::broker::redis::{RedisBroker, RedisConfig};
    let config = if url.contains("+sentinel://") {
        RedisConfig::from_sentinel_url(url)?
    } else {
        RedisConfig::new(url)
    };
    let mut config = config.sharded(options.redis_sharded);
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

#[cfg(feature = "kafka")]
fn kafka_backend(
    url: &str,
    options: &BrokerOptions,
) -> Result<Backend, Box<dyn std::error::Error>> {
    use sse_cluster::broker::kafka::{KafkaBroker, KafkaConfig};
    let mut config = KafkaConfig::new(url);
    if let Some(topic) = &options.kafka_topic {
        config = config.topic(topic.clone());
    }
    let broker = KafkaBroker::new(config)?;
    let store: Option<std::sync::Arc<dyn sse_cluster::history::History>> = match options
        .history
        .as_deref()
    {
        None => None,
        // The log is the history: nothing to create.
        Some("kafka") => Some(std::sync::Arc::new(
            sse_cluster::history::kafka::KafkaHistory::new(broker.clone(), options.retention),
        )),
        Some(other) => return Err(format!("--history {other} needs a matching --broker").into()),
    };
    Ok((broker, store))
}

#[cfg(not(feature = "kafka"))]
fn kafka_backend(
    _url: &str,
    _options: &BrokerOptions,
) -> Result<Backend, Box<dyn std::error::Error>> {
    Err("this build has no Kafka support: rebuild with `--features kafka`".into())
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

/// Installs the Prometheus recorder (`GET /metrics` renders it); must run
/// before the hubs are built (a hub registers its metric handles then), and
/// once per process.
pub fn install_metrics(
) -> Result<metrics_exporter_prometheus::PrometheusHandle, Box<dyn std::error::Error>> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    // Buckets from 50 µs to 5 s: local fan-outs take microseconds, bus hops
    // hundreds of microseconds to milliseconds.
    let buckets = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("sse_publish_to_frame_seconds".into()),
            &buckets,
        )?
        .install_recorder()?;
    // Summaries and histograms need their upkeep now and then.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// `GET /metrics`: what `prometheus` holds, in the Prometheus text format.
pub fn metrics_route(prometheus: metrics_exporter_prometheus::PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let text = prometheus.render();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    text,
                )
            }
        }),
    )
}
