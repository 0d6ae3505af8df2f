//! Why a hub could not be built, and why a connection was refused, with the
//! HTTP status each refusal means.

use std::time::Duration;

use http::StatusCode;

use crate::auth::Denied;
use crate::broker::BrokerError;
use crate::outbound::error_response;

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
}

/// Why a connection was refused.
///
/// [`ConnectError::status`] gives the HTTP status each refusal means and
/// [`ConnectError::retry_after`] the delay for a `Retry-After` header; the
/// axum adapter turns a `ConnectError` into that response.
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
    /// `Retry-After` when there is one, and `{"error": reason}` as a JSON
    /// body.
    pub fn to_http_response(&self) -> http::Response<String> {
        error_response(self.status(), self, self.retry_after())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
