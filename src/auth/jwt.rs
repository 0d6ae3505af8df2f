//! Signed tokens (JWT): who the bearer is, which topics it may subscribe
//! and publish to, and until when (feature `jwt`).
//!
//! [`JwtAuth`] checks a token signed with HS256 (a shared secret), RS256 or
//! ES256 (a public key in PEM), with the [`jsonwebtoken`] crate. It is an
//! [`Authorizer`]: set it with
//! [`HubBuilder::authorizer`](crate::HubBuilder::authorizer) and every
//! connect through [`Hub::respond`](crate::Hub::respond) or
//! [`Hub::connect_request`](crate::Hub::connect_request) (so the axum,
//! hyper and `http1` paths) needs a token. For a publish endpoint, call
//! [`JwtAuth::verify`] and [`Claims::can_publish`].
//!
//! # Where the token is read
//!
//! In this order; the first source present is the one used (a bad token
//! there is refused, not passed over for the next):
//!
//! 1. `Authorization: Bearer <token>` (what a `fetch` or a server sends);
//! 2. the cookie [`JwtAuth::cookie_name`] (default `sse_token`): what a
//!    browser's `EventSource`, which cannot set headers, sends with
//!    `withCredentials: true` (cross-origin) or on its own (same origin);
//! 3. the query parameter [`JwtAuth::query_param`] (default
//!    `access_token`), for an `EventSource` across origins without cookies.
//!    URLs end up in access logs and browser history: prefer short-lived
//!    tokens there.
//!
//! # Claims
//!
//! ```json
//! {
//!   "sub": "42",
//!   "exp": 1767225600,
//!   "sse": { "subscribe": ["news", "orders.*"], "publish": ["chat.42"] }
//! }
//! ```
//!
//! - `sub` is the user: it replaces any user the request asked for (a
//!   `user=` in the query string is ignored). A token without `sub` may not
//!   ask for a user (403).
//! - `sse.subscribe` and `sse.publish` list topic names; a name ending in
//!   `*` is a prefix (`"orders.*"` covers `orders.1`, `orders.eu.7`), and
//!   `"*"` covers every topic. Publishing to a user, a connection or
//!   everyone needs `"*"` in `sse.publish`.
//! - `exp` is required (unless [`JwtAuth::require_exp`]`(false)`), and ends
//!   the stream at that time: the client gets an
//!   [`EXPIRED_EVENT`](crate::EXPIRED_EVENT) (`event: sse-cluster.expired`,
//!   `data: {"reason":"expired"}`) and the stream ends. `nbf`, when
//!   present, is checked too; `aud` and `iss` with [`JwtAuth::audience`] and
//!   [`JwtAuth::issuer`].
//!
//! # Refusals
//!
//! No token, or one that is malformed, badly signed, expired or not yet
//! valid: [`Denied::Unauthenticated`] (401). A topic or user outside the
//! claims: [`Denied::Forbidden`] (403), and nothing is subscribed (the
//! authorizer runs before the connection is registered).
//!
//! ```
//! use std::sync::Arc;
//! use sse_cluster::auth::jwt::JwtAuth;
//! use sse_cluster::Hub;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = Arc::new(JwtAuth::hs256(b"a secret of at least 32 bytes....")?);
//! let hub = Hub::builder().authorizer(auth.clone()).build().await?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use super::{Authorizer, Denied};
use crate::outbound::Target;
use crate::subscription::Subscription;

/// Default name of the cookie a token is read from.
pub const DEFAULT_COOKIE: &str = "sse_token";
/// Default name of the query parameter a token is read from.
pub const DEFAULT_QUERY_PARAM: &str = "access_token";

/// Why a [`JwtAuth`] could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// The secret is empty, or the PEM is not a public key of the
    /// algorithm's kind.
    #[error("invalid JWT key: {0}")]
    InvalidKey(String),
    /// The build enables both or neither of `jsonwebtoken`'s crypto
    /// backends (`rust_crypto`, `aws_lc_rs`), so it cannot verify anything.
    #[error("jsonwebtoken has no crypto provider: enable exactly one of its backends")]
    NoCryptoProvider,
}

/// Why a request's token was not accepted; each is a
/// [`Denied::Unauthenticated`] (401) to an [`Authorizer`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No `Authorization: Bearer`, token cookie or token query parameter.
    #[error("a token is required (Authorization: Bearer, cookie or query parameter)")]
    Missing,
    /// Its `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// Malformed, badly signed, of another algorithm, not valid yet, for
    /// another audience or issuer, or with claims of the wrong shape.
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl From<TokenError> for Denied {
    fn from(err: TokenError) -> Self {
        Denied::Unauthenticated(err.to_string())
    }
}

/// What the `sse` claim grants: topic names, or prefixes ending in `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Grants {
    /// Topics the bearer may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Topics the bearer may publish to (`"*"`: any target).
    #[serde(default)]
    pub publish: Vec<String>,
}

/// A verified token's claims; see the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Claims {
    /// The user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// What the bearer may subscribe and publish to.
    #[serde(default)]
    pub sse: Grants,
}

/// Whether `name` is one of `patterns`, or starts with one that ends in `*`.
fn covered(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

impl Claims {
    /// The user (`sub`).
    pub fn user(&self) -> Option<&str> {
        self.sub.as_deref()
    }

    /// Whether the bearer may subscribe to `topic`.
    ///
    /// ```
    /// use sse_cluster::auth::jwt::Claims;
    ///
    /// let claims: Claims = serde_json::from_str(
    ///     r#"{"sub":"42","sse":{"subscribe":["news","orders.*"]}}"#,
    /// ).unwrap();
    /// assert!(claims.can_subscribe("news"));
    /// assert!(claims.can_subscribe("orders.eu.7"));
    /// assert!(!claims.can_subscribe("orders"));
    /// assert!(!claims.can_subscribe("admin"));
    /// ```
    pub fn can_subscribe(&self, topic: &str) -> bool {
        covered(&self.sse.subscribe, topic)
    }

    /// Whether the bearer may publish to `target`: a topic its
    /// `sse.publish` covers; a user, a connection or everyone only with
    /// `"*"` there.
    ///
    /// ```
    /// use sse_cluster::auth::jwt::Claims;
    /// use sse_cluster::Target;
    ///
    /// let claims: Claims =
    ///     serde_json::from_str(r#"{"sse":{"publish":["chat.*"]}}"#).unwrap();
    /// assert!(claims.can_publish(&Target::topic("chat.1")));
    /// assert!(!claims.can_publish(&Target::topic("news")));
    /// assert!(!claims.can_publish(&Target::All));
    /// ```
    pub fn can_publish(&self, target: &Target) -> bool {
        match target {
            Target::Topic(topic) => covered(&self.sse.publish, topic),
            _ => self.sse.publish.iter().any(|p| p == "*"),
        }
    }

    /// When the token expires, if it says.
    pub fn expires_at(&self) -> Option<SystemTime> {
        UNIX_EPOCH.checked_add(Duration::from_secs(self.exp?))
    }

    /// `sub` limited to these claims: the user becomes `sub` (whatever it
    /// asked for), the stream ends at `exp`, and a topic outside
    /// `sse.subscribe`, or a user asked for by a token without `sub`, is
    /// [`Denied::Forbidden`].
    pub fn restrict(&self, sub: Subscription) -> Result<Subscription, Denied> {
        if let Some(topic) = sub.topic_names().iter().find(|t| !self.can_subscribe(t)) {
            return Err(Denied::Forbidden(format!(
                "the token does not grant topic {topic:?}"
            )));
        }
        let mut sub = match (&self.sub, sub.user_id()) {
            (Some(user), _) => sub.user(user.clone()),
            (None, Some(_)) => {
                return Err(Denied::Forbidden("the token names no user".into()));
            }
            (None, None) => sub,
        };
        if let Some(at) = self.expires_at() {
            sub = sub.expires_at(at);
        }
        Ok(sub)
    }
}

/// Checks signed tokens and authorizes subscriptions by their claims; see
/// the [module docs](self).
#[derive(Clone)]
pub struct JwtAuth {
    key: DecodingKey,
    validation: Validation,
    cookie: Option<String>,
    query: Option<String>,
}

impl fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs.
        f.debug_struct("JwtAuth")
            .field("algorithms", &self.validation.algorithms)
            .field("cookie", &self.cookie)
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

impl JwtAuth {
    /// Tokens signed with HS256 and `secret` (not empty; 32 random bytes or
    /// more, as RFC 7518 asks).
    pub fn hs256(secret: impl AsRef<[u8]>) -> Result<Self, JwtError> {
        let secret = secret.as_ref();
        if secret.is_empty() {
            return Err(JwtError::InvalidKey("the HS256 secret is empty".into()));
        }
        let key = DecodingKey::from_secret(secret).map_err(key_error)?;
        Self::new(key, Algorithm::HS256)
    }

    /// Tokens signed with RS256, checked with this RSA public key (PEM:
    /// `-----BEGIN PUBLIC KEY-----` or `-----BEGIN RSA PUBLIC KEY-----`).
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, JwtError> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(key_error)?;
        Self::new(key, Algorithm::RS256)
    }

    /// Tokens signed with ES256, checked with this P-256 public key (PEM:
    /// `-----BEGIN PUBLIC KEY-----`).
    pub fn es256_pem(pem: &[u8]) -> Result<Self, JwtError> {
        let key = DecodingKey::from_ec_pem(pem).map_err(key_error)?;
        Self::new(key, Algorithm::ES256)
    }

    /// [`JwtAuth::es256_pem`] for an EC public key, [`JwtAuth::rs256_pem`]
    /// for an RSA one: what a key file holds decides.
    pub fn public_key_pem(pem: &[u8]) -> Result<Self, JwtError> {
        Self::es256_pem(pem).or_else(|_| Self::rs256_pem(pem))
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> Result<Self, JwtError> {
        // `decode` panics without a provider; refuse to build instead.
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            return Err(JwtError::NoCryptoProvider);
        }
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_nbf = true;
        Ok(JwtAuth {
            key,
            validation,
            cookie: Some(DEFAULT_COOKIE.into()),
            query: Some(DEFAULT_QUERY_PARAM.into()),
        })
    }

    /// The cookie a token is read from when there is no `Authorization`
    /// header. Default: [`DEFAULT_COOKIE`].
    #[must_use]
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie = Some(name.into());
        self
    }

    /// Reads no token from cookies.
    #[must_use]
    pub fn without_cookie(mut self) -> Self {
        self.cookie = None;
        self
    }

    /// The query parameter a token is read from when there is neither an
    /// `Authorization` header nor the cookie. Default: [`DEFAULT_QUERY_PARAM`].
    #[must_use]
    pub fn query_param(mut self, name: impl Into<String>) -> Self {
        self.query = Some(name.into());
        self
    }

    /// Reads no token from the query string.
    #[must_use]
    pub fn without_query(mut self) -> Self {
        self.query = None;
        self
    }

    /// Clock skew allowed on `exp` and `nbf`; the stream then ends at
    /// `exp` + `leeway`. Default: none.
    #[must_use]
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.validation.leeway = leeway.as_secs();
        self
    }

    /// Whether a token must have an `exp`. Default: true; without it a
    /// token never expires, and neither do its streams.
    #[must_use]
    pub fn require_exp(mut self, required: bool) -> Self {
        self.validation.required_spec_claims = if required {
            HashSet::from(["exp".to_owned()])
        } else {
            HashSet::new()
        };
        self
    }

    /// Accepts only tokens whose `aud` is one of these (and requires one).
    #[must_use]
    pub fn audience<S: ToString>(mut self, audiences: &[S]) -> Self {
        self.validation.set_audience(audiences);
        self.validation.required_spec_claims.insert("aud".into());
        self
    }

    /// Accepts only tokens whose `iss` is one of these (and requires one).
    #[must_use]
    pub fn issuer<S: ToString>(mut self, issuers: &[S]) -> Self {
        self.validation.set_issuer(issuers);
        self.validation.required_spec_claims.insert("iss".into());
        self
    }

    /// The request's token, from the first source present (see the
    /// [module docs](self)), if any.
    pub fn token<'a>(
        &self,
        request: &'a http::request::Parts,
    ) -> Option<std::borrow::Cow<'a, str>> {
        if let Some(token) = bearer(&request.headers) {
            return Some(token.into());
        }
        if let Some(token) = self
            .cookie
            .as_deref()
            .and_then(|name| cookie(&request.headers, name))
        {
            return Some(token.into());
        }
        let name = self.query.as_deref()?;
        form_urlencoded::parse(request.uri.query()?.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// Checks `token` and returns its claims.
    pub fn verify_token(&self, token: &str) -> Result<Claims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(err) => match err.kind() {
                ErrorKind::ExpiredSignature => Err(TokenError::Expired),
                _ => Err(TokenError::Invalid(err.to_string())),
            },
        }
    }

    /// Finds the request's token ([`JwtAuth::token`]) and checks it.
    ///
    /// For a publish endpoint:
    ///
    /// ```
    /// use sse_cluster::auth::jwt::JwtAuth;
    /// use sse_cluster::{auth::Denied, Target};
    ///
    /// fn may_publish(auth: &JwtAuth, request: &http::request::Parts, target: &Target)
    ///     -> Result<(), Denied>
    /// {
    ///     let claims = auth.verify(request)?;
    ///     if !claims.can_publish(target) {
    ///         return Err(Denied::Forbidden("the token does not grant this target".into()));
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn verify(&self, request: &http::request::Parts) -> Result<Claims, TokenError> {
        let token = self.token(request).ok_or(TokenError::Missing)?;
        self.verify_token(&token)
    }
}

#[async_trait]
impl Authorizer for JwtAuth {
    async fn authorize(
        &self,
        request: &http::request::Parts,
        subscription: Subscription,
    ) -> Result<Subscription, Denied> {
        self.verify(request)?.restrict(subscription)
    }
}

fn key_error(err: jsonwebtoken::errors::Error) -> JwtError {
    JwtError::InvalidKey(err.to_string())
}

/// The token of an `Authorization: Bearer` header (the scheme is
/// case-insensitive). Another scheme is no token.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265:
/// `a=1; b=2`, a value may be in double quotes).
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| {
            let value = value.trim();
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::get(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn token_sources_in_order() {
        let auth = JwtAuth::hs256(b"secret").unwrap();
        let all = request(
            "/e?access_token=q",
            &[
                ("authorization", "Bearer h"),
                ("cookie", "a=1; sse_token=c"),
            ],
        );
        assert_eq!(auth.token(&all).as_deref(), Some("h"));
        let no_header = request("/e?x=1&access_token=q", &[("cookie", "sse_token=\"c\"")]);
        assert_eq!(auth.token(&no_header).as_deref(), Some("c"));
        let basic = request("/e?access_token=q%2B", &[("authorization", "Basic dTpw")]);
        assert_eq!(auth.token(&basic).as_deref(), Some("q+"));
        assert_eq!(auth.token(&request("/e", &[])), None);
        let renamed = auth.clone().cookie_name("tok").query_param("t");
        let req = request("/e?t=q", &[("cookie", "sse_token=c; tok=d")]);
        assert_eq!(renamed.token(&req).as_deref(), Some("d"));
        let none = renamed.without_cookie().without_query();
        assert_eq!(none.token(&req), None);
    }

    #[test]
    fn hostile_tokens_are_refused_not_panicked_on() {
        let auth = JwtAuth::hs256(b"secret").unwrap();
        for token in [
            "",
            ".",
            "..",
            "a.b.c",
            "\u{0}.\u{0}.\u{0}",
            "eyJhbGciOiJub25lIn0.e30.",
        ] {
            assert!(
                matches!(auth.verify_token(token), Err(TokenError::Invalid(_))),
                "{token:?}"
            );
        }
        assert!(JwtAuth::hs256(b"").is_err());
        assert!(JwtAuth::es256_pem(b"not a key").is_err());
        assert!(JwtAuth::public_key_pem(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        )
        .is_err());
    }

    #[test]
    fn grants_match_names_and_prefixes() {
        let claims = Claims {
            sub: Some("u".into()),
            exp: None,
            sse: Grants {
                subscribe: vec!["a".into(), "b.*".into()],
                publish: vec!["*".into()],
            },
        };
        assert!(claims.can_subscribe("a") && claims.can_subscribe("b.c"));
        assert!(!claims.can_subscribe("ab") && !claims.can_subscribe("b"));
        assert!(claims.can_publish(&Target::All) && claims.can_publish(&Target::user("x")));
        let sub = claims
            .restrict(Subscription::new().topic("a").user("someone-else"))
            .unwrap();
        assert_eq!(sub.user_id(), Some("u"));
        assert!(matches!(
            claims.restrict(Subscription::new().topic("a").topic("c")),
            Err(Denied::Forbidden(_))
        ));
        let anonymous = Claims {
            sub: None,
            ..claims
        };
        assert!(matches!(
            anonymous.restrict(Subscription::new().user("x")),
            Err(Denied::Forbidden(_))
        ));
    }
}
