//! axum: return a [`Connection`] or [`SseStream`] from a handler, a
//! [`ConnectError`] or [`PublishError`] as the response it means (its
//! status, `Retry-After` where it has one, `{"error": reason}`), and read
//! `Last-Event-ID` with the [`LastEventId`] extractor.
//!
//! ```no_run
//! use axum::{extract::{Query, State}, routing::get, Router};
//! use sse_cluster::{adapters::axum::LastEventId, ConnectError, Connection, Hub, Subscription};
//!
//! #[derive(serde::Deserialize)]
//! struct Params { topic: String }
//!
//! async fn events(
//!     State(hub): State<Hub>,
//!     Query(p): Query<Params>,
//!     LastEventId(last): LastEventId,
//! ) -> Result<Connection, ConnectError> {
//!     hub.connect(Subscription::new().topic(p.topic).resume_from(last)).await
//! }
//!
//! # async fn app(hub: Hub) -> Router {
//! Router::new().route("/events", get(events)).with_state(hub)
//! # }
//! ```
//!
//! Tokens and CORS: the `IntoResponse` impls do not see the request, so they
//! can grant no origin. A handler that returns
//! [`Hub::respond`](crate::Hub::respond)`(&parts, sub)` (an
//! `http::Response<SseStream>`, which axum serves as it is) gets the hub's
//! authorizer (e.g. `auth::jwt::JwtAuth`, feature `jwt`) and its CORS policy
//! ([`HubBuilder::cors`](crate::HubBuilder::cors)) on every answer,
//! refusals and preflights included; route `OPTIONS` to the same handler.

use std::convert::Infallible;

use axum_core::body::Body;
use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use crate::{ConnectError, Connection, PublishError, SseStream};

impl IntoResponse for SseStream {
    fn into_response(self) -> Response {
        self.into_http_response().map(Body::new)
    }
}

impl IntoResponse for Connection {
    fn into_response(self) -> Response {
        self.into_stream().into_response()
    }
}

impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        self.to_http_response().map(Body::from)
    }
}

impl IntoResponse for PublishError {
    fn into_response(self) -> Response {
        self.to_http_response().map(Body::from)
    }
}

/// The client's `Last-Event-ID` (header, or `last_event_id` query parameter);
/// `None` for a new client, an empty string for an unusable value (see
/// [`last_event_id`](crate::resume::last_event_id)). Never rejects a request. Pass
/// it on with [`Subscription::resume_from`](crate::Subscription::resume_from).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LastEventId(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(LastEventId(crate::resume::last_event_id(
            &parts.headers,
            parts.uri.query(),
        )))
    }
}
