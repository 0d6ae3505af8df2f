//! hyper 1: the SSE response and `Last-Event-ID` for a plain
//! `hyper::service::service_fn` service.
//!
//! A [`Connection`] becomes a `Response<SseStream>`, which hyper serves as
//! is. For graceful shutdown, call [`Hub::shutdown`](crate::Hub::shutdown)
//! before (or as part of) your server's own graceful shutdown: it ends every
//! stream, so in-flight SSE responses complete and the server can stop.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use hyper::{body::Incoming, Request, Response};
//! use sse_cluster::{adapters::hyper as sse, Hub, SseStream, Subscription};
//!
//! // Authorizes, resumes from `Last-Event-ID`, and answers a refusal that
//! // will pass with a retry an `EventSource` survives.
//! async fn events(hub: Hub, req: Request<Incoming>) -> Result<Response<SseStream>, Infallible> {
//!     Ok(sse::respond(&hub, req, Subscription::new().topic("news")).await)
//! }
//! ```
//!
//! Wrap each accepted socket in [`WriteDeadline`](crate::adapters::WriteDeadline)
//! and give hyper's builder a timer (see the README, "Limits and timeouts").

use hyper::{Request, Response, StatusCode};

use crate::stream::{channel, StreamConfig};
use crate::{Connection, Hub, SseStream, Subscription};

/// [`Hub::respond`] for a hyper request: the stream, or the refusal as the
/// client should see it, with the hub's CORS grant
/// ([`HubBuilder::cors`](crate::HubBuilder::cors)) and its answer to a
/// preflight.
pub async fn respond<B>(hub: &Hub, request: Request<B>, sub: Subscription) -> Response<SseStream> {
    let (parts, _body) = request.into_parts();
    hub.respond(&parts, sub).await
}

/// The SSE response for `conn`, with the SSE headers.
pub fn response(conn: Connection) -> Response<SseStream> {
    conn.into_http_response()
}

/// `503 Service Unavailable` with an empty SSE body, for a refused connect
/// (e.g. while the hub shuts down); the same body type as [`response`], so
/// one service returns both.
pub fn unavailable() -> Response<SseStream> {
    let (sender, stream) = channel(&StreamConfig::default().keep_alive(None).initial_retry(None));
    sender.close();
    let mut response = stream.into_http_response();
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
}

/// The client's `Last-Event-ID` (header, or `last_event_id` query parameter),
/// as [`last_event_id`](crate::resume::last_event_id) reads it.
pub fn last_event_id<B>(request: &Request<B>) -> Option<String> {
    crate::resume::last_event_id(request.headers(), request.uri().query())
}
