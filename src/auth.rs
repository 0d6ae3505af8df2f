//! Authorization: an app-supplied hook that decides, per request, whether a
//! subscription is allowed, and may rewrite it. With the `jwt` feature,
//! [`jwt::JwtAuth`] is such a hook for signed tokens.
//!
//! ```
//! use async_trait::async_trait;
//! use sse_cluster::auth::{Authorizer, Denied};
//! use sse_cluster::Subscription;
//!
//! #[derive(Debug)]
//! struct BearerUsers;
//!
//! #[async_trait]
//! impl Authorizer for BearerUsers {
//!     async fn authorize(&self, request: &http::request::Parts, sub: Subscription)
//!         -> Result<Subscription, Denied>
//!     {
//!         let token = request.headers.get("authorization").and_then(|v| v.to_str().ok());
//!         let Some(user) = token.and_then(|t| t.strip_prefix("Bearer user-")) else {
//!             return Err(Denied::Unauthenticated("a bearer token is required".into()));
//!         };
//!         if sub.user_id().is_some_and(|u| u != user) {
//!             return Err(Denied::Forbidden("not your stream".into()));
//!         }
//!         // Pin the user to the token's, and drop topics it may not read.
//!         Ok(sub.user(user.to_owned()).retain_topics(|t| !t.starts_with("admin.")))
//!     }
//! }
//! ```

use std::fmt;

use async_trait::async_trait;

#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub mod jwt;

use crate::subscription::Subscription;

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// The request carries no valid credentials (HTTP 401).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The credentials do not allow this subscription (HTTP 403).
    #[error("forbidden: {0}")]
    Forbidden(String),
}

/// Decides whether a request may open a subscription; see the
/// [module docs](self). Set it with
/// [`HubBuilder::authorizer`](crate::HubBuilder::authorizer) and connect with
/// [`Hub::connect_request`](crate::Hub::connect_request).
#[async_trait]
pub trait Authorizer: Send + Sync + fmt::Debug + 'static {
    /// Allows `subscription` as it is, rewritten (e.g. topics stripped, the
    /// user pinned to the authenticated one), or refuses it.
    async fn authorize(
        &self,
        request: &http::request::Parts,
        subscription: Subscription,
    ) -> Result<Subscription, Denied>;
}
