//! Why a hub could not be built, and why a connection was refused, with the
//! HTTP status each refusal means and the answer an `EventSource` survives.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

use crate::auth::Denied;
use crate::broker::BrokerError;
use crate::event::retry_frame;
use crate::outbound::error_response;
use crate::stream::{finished, SseStream};

/// Name of the event that tells an `EventSource` its connect was refused
/// for now; the stream then ends and the client reconnects after the
/// `retry:` sent before it. Its data is `{"reason": …, "retry_ms": …}` with
/// a reason of the table in [`ConnectError`]'s docs.
pub const REFUSED_EVENT: &str = "sse-cluster.refused";

/// True when the request asks for an event stream (`Accept:
/// text/event-stream`): an `EventSource` does.
pub fn wants_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

/// Why a hub could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// Node ids are 1 to 64 ASCII letters, digits, `-` or `_`.
    #[error("invalid node id {0:?}: use 1 to 64 ASCII letters, digits, '-' or '_'")]
    InvalidNodeId(String),
    /// The broker refused to start or to subscribe the node's own channels.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The broker did not reach its server within the time given to
    /// [`HubBuilder::require_broker`](crate::HubBuilder::require_broker).
    #[error("the broker did not reach its server within {waited:?} (status {status:?}): check its URL and that the server runs")]
    BrokerUnreachable {
        /// How long the build waited.
        waited: std::time::Duration,
        /// The broker's status when the build gave up.
        status: crate::BrokerStatus,
    },
}

/// Why a connection was refused.
///
/// [`ConnectError::status`] gives the HTTP status each refusal means and
/// [`ConnectError::retry_after`] the delay for a `Retry-After` header; the
/// axum adapter turns a `ConnectError` into that response.
///
/// # Refusals and browsers
///
/// A browser's `EventSource` gives up for good on any answer but `200
/// text/event-stream` (WHATWG: "fail the connection"), so a refusal that
/// will pass must not reach it as an error status. For a request that asks
/// for an event stream (`Accept: text/event-stream`, which every
/// `EventSource` sends), [`ConnectError::response_for`] (and
/// [`Hub::respond`](crate::Hub::respond), which uses it) answers such a
/// refusal with `200 text/event-stream`, a randomized `retry:` and a
/// [`REFUSED_EVENT`], then ends the stream: the client reconnects after the
/// delay, through the balancer, probably to another node. Other clients get
/// the plain status (`503` + `Retry-After`, `429`).
///
/// | refusal | reason in the event | plain status | for a browser |
/// |---|---|---|---|
/// | `ShuttingDown` (draining) | `draining` | 503 | retries |
/// | `NodeFull` | `node-full` | 503 | retries |
/// | `HistoryUnavailable` (store unreachable) | `history-unavailable` | 503 | retries |
/// | `UserLimit` | `user-limit` | 429 | retries (old connections of the user may still be closing) |
/// | `InvalidSubscription` | — | 400 | permanent: the same request fails again |
/// | `Denied` | — | 401 / 403 | permanent: the page must sign in or ask for less |
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The hub is shutting down; the client should reconnect elsewhere
    /// (HTTP 503).
    #[error("the hub is shutting down")]
    ShuttingDown,
    /// A topic or user name is empty or longer than
    /// [`MAX_NAME_LEN`](crate::limits::MAX_NAME_LEN), or there are more than
    /// [`MAX_TOPICS_PER_CONNECTION`](crate::limits::MAX_TOPICS_PER_CONNECTION)
    /// topics (HTTP 400).
    #[error("invalid subscription: {0}")]
    InvalidSubscription(String),
    /// This node holds [`HubBuilder::max_connections`](crate::HubBuilder::max_connections)
    /// already; the client should retry after `retry_after`, probably
    /// reaching another node (HTTP 503 with `Retry-After`).
    #[error("this node is full; retry in {retry_after:?}")]
    NodeFull {
        /// A suggested delay before retrying.
        retry_after: Duration,
    },
    /// The user holds [`HubBuilder::max_connections_per_user`](crate::HubBuilder::max_connections_per_user)
    /// already on this node (HTTP 429).
    #[error("too many connections for this user")]
    UserLimit,
    /// The [`Authorizer`](crate::auth::Authorizer) refused the subscription
    /// (HTTP 401 or 403).
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The history store could not be asked where the connection's channels
    /// stand; the client should retry (HTTP 503 with `Retry-After`).
    #[error("history store unavailable: {0}")]
    HistoryUnavailable(BrokerError),
}

/// The `Retry-After` of a refusal that is likely to pass soon.
const RETRY_SOON: Duration = Duration::from_secs(1);

impl ConnectError {
    /// The HTTP status this refusal means: 400 for an invalid subscription,
    /// 401/403 for a denial, 429 for a user over its limit, 503 for a
    /// refusal that will pass (shutting down, node full, history store
    /// unavailable).
    ///
    /// ```
    /// use sse_cluster::ConnectError;
    ///
    /// assert_eq!(ConnectError::UserLimit.status(), http::StatusCode::TOO_MANY_REQUESTS);
    /// assert_eq!(ConnectError::ShuttingDown.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    /// ```
    pub fn status(&self) -> StatusCode {
        match self {
            ConnectError::InvalidSubscription(_) => StatusCode::BAD_REQUEST,
            ConnectError::Denied(Denied::Unauthenticated(_)) => StatusCode::UNAUTHORIZED,
            ConnectError::Denied(_) => StatusCode::FORBIDDEN,
            ConnectError::UserLimit => StatusCode::TOO_MANY_REQUESTS,
            ConnectError::ShuttingDown
            | ConnectError::NodeFull { .. }
            | ConnectError::HistoryUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// How long the client should wait before retrying, for refusals that
    /// pass (`Retry-After`); `None` for the others.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ConnectError::NodeFull { retry_after } => Some(*retry_after),
            ConnectError::HistoryUnavailable(_) | ConnectError::ShuttingDown => Some(RETRY_SOON),
            _ => None,
        }
    }

    /// True when the same request may succeed later (the node is draining
    /// or full, the history store is unreachable); false when it will not
    /// (an invalid or denied subscription, a user over its limit until one
    /// of its connections ends).
    pub fn is_transient(&self) -> bool {
        self.status() == StatusCode::SERVICE_UNAVAILABLE
    }

    /// This refusal as a plain HTTP response: [`ConnectError::status`],
    /// `Retry-After` when there is one, `WWW-Authenticate: Bearer` on a 401
    /// (RFC 9110 asks a 401 to name a scheme), and `{"error": reason}` as a
    /// JSON body.
    pub fn to_http_response(&self) -> http::Response<String> {
        let mut response = error_response(self.status(), self, self.retry_after());
        if response.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }

    /// The word of [`REFUSED_EVENT`] for a refusal an `EventSource` should
    /// retry; `None` for a permanent one (see the table in [`ConnectError`]'s docs).
    pub fn retry_reason(&self) -> Option<&'static str> {
        match self {
            ConnectError::ShuttingDown => Some("draining"),
            ConnectError::NodeFull { .. } => Some("node-full"),
            ConnectError::HistoryUnavailable(_) => Some("history-unavailable"),
            ConnectError::UserLimit => Some("user-limit"),
            _ => None,
        }
    }

    /// This refusal as an answer an `EventSource` survives: `200
    /// text/event-stream`, `retry:` `retry`, a [`REFUSED_EVENT`], and the
    /// end. `None` for a permanent refusal.
    pub fn to_event_stream(&self, retry: Duration) -> Option<http::Response<SseStream>> {
        let reason = self.retry_reason()?;
        let ms = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX);
        let event = format!(
            "event: {REFUSED_EVENT}\ndata: {{\"reason\":\"{reason}\",\"retry_ms\":{ms}}}\n\n"
        );
        let mut response = finished([retry_frame(retry), Bytes::from(event)]).into_http_response();
        // The reconnect must go through the balancer again, not down this
        // kept-alive connection to the node that refused.
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        Some(response)
    }

    /// The answer to a request with `headers`: for a client that asks for
    /// an event stream, a refusal that will pass is
    /// [`ConnectError::to_event_stream`] (`retry`: the delay it suggests);
    /// anything else is [`ConnectError::to_http_response`].
    pub fn response_for(
        &self,
        headers: &http::HeaderMap,
        retry: Duration,
    ) -> http::Response<SseStream> {
        if wants_event_stream(headers) {
            if let Some(response) = self.to_event_stream(retry) {
                return response;
            }
        }
        self.to_http_response()
            .map(|body| finished([Bytes::from(body)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn an_event_stream_client_is_told_to_retry_not_refused() {
        let mut sse = http::HeaderMap::new();
        sse.insert(http::header::ACCEPT, "text/event-stream".parse().unwrap());
        let retry = Duration::from_millis(1500);
        for (err, reason) in [
            (ConnectError::ShuttingDown, "draining"),
            (ConnectError::NodeFull { retry_after: retry }, "node-full"),
            (ConnectError::UserLimit, "user-limit"),
        ] {
            let response = err.response_for(&sse, retry);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            assert_eq!(response.headers()["connection"], "close");
            let frames: Vec<Bytes> = response.into_body().collect().await;
            assert_eq!(&frames[0][..], b"retry: 1500\n\n");
            let event = String::from_utf8(frames[1].to_vec()).unwrap();
            assert_eq!(
                event,
                format!("event: sse-cluster.refused\ndata: {{\"reason\":\"{reason}\",\"retry_ms\":1500}}\n\n")
            );
            // Other clients keep the plain status.
            let plain = err.response_for(&http::HeaderMap::new(), retry);
            assert_eq!(plain.status(), err.status());
        }
        let denied = ConnectError::Denied(Denied::Forbidden("no".into()));
        assert_eq!(
            denied.response_for(&sse, retry).status(),
            StatusCode::FORBIDDEN
        );
        let invalid = ConnectError::InvalidSubscription("x".into());
        assert_eq!(
            invalid.response_for(&sse, retry).status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn statuses_and_retry_after() {
        let cases = [
            (ConnectError::ShuttingDown, 503, Some(1)),
            (
                ConnectError::NodeFull {
                    retry_after: Duration::from_secs(4),
                },
                503,
                Some(4),
            ),
            (ConnectError::UserLimit, 429, None),
            (ConnectError::InvalidSubscription("x".into()), 400, None),
            (
                ConnectError::Denied(Denied::Unauthenticated("t".into())),
                401,
                None,
            ),
            (
                ConnectError::Denied(Denied::Forbidden("t".into())),
                403,
                None,
            ),
            (
                ConnectError::HistoryUnavailable(BrokerError::Unavailable("down".into())),
                503,
                Some(1),
            ),
        ];
        for (err, status, retry) in cases {
            let response = err.to_http_response();
            assert_eq!(response.status().as_u16(), status, "{err}");
            let header = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            assert_eq!(header, retry, "{err}");
            assert_eq!(err.is_transient(), status == 503, "{err}");
            let body: serde_json::Value = serde_json::from_str(response.body()).unwrap();
            assert_eq!(body["error"], err.to_string());
        }
    }
}
