//! CORS for SSE responses: which origins may read a stream, with or
//! without credentials, and the answer to a preflight.
//!
//! A page on `https://app.example` that opens
//! `new EventSource("https://events.example/events", {withCredentials: true})`
//! can read the stream only if the response grants its origin. tower's CORS
//! layer cannot do it for every path of this crate: the
//! [`http1`](crate::adapters) driver writes SSE responses itself. So the
//! crate applies one [`Cors`] policy wherever it answers:
//!
//! - [`HubBuilder::cors`](crate::HubBuilder::cors): [`Hub::respond`](crate::Hub::respond)
//!   (and so the axum and hyper paths built on it) grants allowed origins on
//!   streams *and* on refusals (401, 403, 429, 503), so a cross-origin page
//!   can read why it was refused, and answers a preflight;
//! - the `http1` driver's `DriverConfig::cors` does the same for whatever
//!   response your code builds.
//!
//! For an allowed origin a response carries `Access-Control-Allow-Origin:
//! <origin>` (`*` for [`Cors::any`] without credentials), `Vary: Origin`,
//! `Access-Control-Allow-Credentials: true` when credentials are on, and
//! `Access-Control-Expose-Headers` when set. Another origin gets no grant
//! (the browser then refuses the response); a request without `Origin`
//! (same-origin, or not a browser) gets none either, as it needs none.
//!
//! ```
//! use sse_cluster::cors::Cors;
//!
//! let cors = Cors::origins(["https://app.example"]).allow_credentials(true);
//!
//! let mut request = http::HeaderMap::new();
//! request.insert("origin", "https://app.example".parse().unwrap());
//! let mut response = http::HeaderMap::new();
//! cors.apply(&request, &mut response);
//! assert_eq!(response["access-control-allow-origin"], "https://app.example");
//! assert_eq!(response["access-control-allow-credentials"], "true");
//! assert_eq!(response["vary"], "origin");
//!
//! request.insert("origin", "https://evil.example".parse().unwrap());
//! let mut response = http::HeaderMap::new();
//! cors.apply(&request, &mut response);
//! assert!(response.get("access-control-allow-origin").is_none());
//! ```

use std::time::Duration;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS,
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{Method, StatusCode};

/// Which origins may read responses, and how; see the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct Cors {
    origins: Origins,
    credentials: bool,
    expose: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    methods: HeaderValue,
    max_age: Option<Duration>,
}

#[derive(Debug, Clone)]
enum Origins {
    Any,
    /// Exact, ASCII-case-insensitive matches (origins are lowercase in
    /// practice; the scheme and host are case-insensitive).
    List(Vec<String>),
}

impl Cors {
    /// Any origin may read responses. Without credentials the grant is `*`;
    /// with [`Cors::allow_credentials`] it is the request's own origin (a
    /// browser refuses `*` for a credentialed request).
    pub fn any() -> Self {
        Self::with(Origins::Any)
    }

    /// Only these origins (`scheme://host[:port]`, as a browser sends them
    /// in `Origin`) may read responses. An empty list grants nothing.
    pub fn origins<I, S>(origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let list = origins
            .into_iter()
            .map(|o| o.into().trim_end_matches('/').to_ascii_lowercase())
            .collect();
        Self::with(Origins::List(list))
    }

    fn with(origins: Origins) -> Self {
        Cors {
            origins,
            credentials: false,
            expose: None,
            allow_headers: None,
            methods: HeaderValue::from_static("GET, POST, OPTIONS"),
            max_age: None,
        }
    }

    /// Whether cross-origin requests may carry credentials (cookies, HTTP
    /// auth): `Access-Control-Allow-Credentials: true`. Needed for
    /// `EventSource(url, {withCredentials: true})`. Default: off.
    pub fn allow_credentials(mut self, on: bool) -> Self {
        self.credentials = on;
        self
    }

    /// Response headers a cross-origin page may read besides the safelisted
    /// ones (`Access-Control-Expose-Headers`). Names that are not valid
    /// header names are left out.
    pub fn expose_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.expose = header_list(names);
        self
    }

    /// Request headers a preflight allows (`Access-Control-Allow-Headers`).
    /// Default: those the preflight asks for (`Access-Control-Request-Headers`),
    /// echoed to an allowed origin.
    pub fn allow_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.allow_headers = header_list(names);
        self
    }

    /// How long a browser may cache a preflight's answer
    /// (`Access-Control-Max-Age`). Default: not sent (the browser's own
    /// default, 5 s in Chromium).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Whether a request from `origin` is granted.
    pub fn allows(&self, origin: &str) -> bool {
        match &self.origins {
            Origins::Any => true,
            Origins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }

    /// The request's `Origin`, if it is one this policy allows.
    fn allowed_origin<'a>(&self, request: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let origin = request.get(ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.allows(text).then_some(origin)
    }

    /// Adds the grant for the request's origin to `response`, if it is
    /// allowed; adds `Vary: Origin` whenever the answer depends on the
    /// origin. Replaces a grant already there (so applying twice is
    /// harmless).
    pub fn apply(&self, request: &HeaderMap, response: &mut HeaderMap) {
        let wildcard = matches!(self.origins, Origins::Any) && !self.credentials;
        if !wildcard {
            add_vary_origin(response);
        }
        let Some(origin) = self.allowed_origin(request) else {
            response.remove(ACCESS_CONTROL_ALLOW_ORIGIN);
            response.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
            return;
        };
        let grant = if wildcard {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        };
        response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, grant);
        if self.credentials {
            response.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose {
            response.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }

    /// The answer to a CORS preflight (`OPTIONS` with
    /// `Access-Control-Request-Method`), or `None` if `request` is not one.
    ///
    /// `204 No Content`; for an allowed origin with the grant,
    /// `Access-Control-Allow-Methods`, `Access-Control-Allow-Headers` and
    /// `Access-Control-Max-Age` (when set). A disallowed origin gets the
    /// `204` without a grant, which the browser reads as a refusal.
    ///
    /// ```
    /// use sse_cluster::cors::Cors;
    ///
    /// let cors = Cors::origins(["https://app.example"]).allow_credentials(true);
    /// let request = http::Request::options("/events")
    ///     .header("origin", "https://app.example")
    ///     .header("access-control-request-method", "GET")
    ///     .header("access-control-request-headers", "last-event-id")
    ///     .body(())
    ///     .unwrap();
    /// let answer = cors.preflight(&request.into_parts().0).expect("a preflight");
    /// assert_eq!(answer.status(), http::StatusCode::NO_CONTENT);
    /// assert_eq!(answer.headers()["access-control-allow-headers"], "last-event-id");
    /// ```
    pub fn preflight(&self, request: &http::request::Parts) -> Option<http::Response<()>> {
        if !is_preflight(request) {
            return None;
        }
        let mut response = http::Response::new(());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        self.apply(&request.headers, headers);
        if headers.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
            headers.remove(ACCESS_CONTROL_EXPOSE_HEADERS);
            headers.insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            let asked = request.headers.get(ACCESS_CONTROL_REQUEST_HEADERS);
            if let Some(allowed) = self.allow_headers.as_ref().or(asked) {
                headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, allowed.clone());
            }
            if let Some(age) = self.max_age {
                headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age.as_secs()));
            }
        }
        Some(response)
    }
}

/// True for a CORS preflight: `OPTIONS` with `Access-Control-Request-Method`.
pub fn is_preflight(request: &http::request::Parts) -> bool {
    request.method == Method::OPTIONS && request.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// Adds `origin` to the response's `Vary`, unless it is there already.
fn add_vary_origin(response: &mut HeaderMap) {
    let present = response.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("origin") || t.trim() == "*")
        })
    });
    if !present {
        response.append(VARY, HeaderValue::from_static("origin"));
    }
}

/// `names` joined with `, `, the invalid ones left out; `None` if none is left.
fn header_list<I, S>(names: I) -> Option<HeaderValue>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let names: Vec<String> = names
        .into_iter()
        .filter_map(|n| HeaderName::from_bytes(n.as_ref().trim().as_bytes()).ok())
        .map(|n| n.as_str().to_owned())
        .collect();
    if names.is_empty() {
        return None;
    }
    HeaderValue::from_str(&names.join(", ")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(origin: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ORIGIN, origin.parse().unwrap());
        headers
    }

    #[test]
    fn any_origin_without_credentials_is_a_wildcard() {
        let mut response = HeaderMap::new();
        Cors::any().apply(&from("https://a.example"), &mut response);
        assert_eq!(response[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(response.get(VARY).is_none());
        assert!(response.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
    }

    #[test]
    fn any_origin_with_credentials_echoes_the_origin() {
        let mut response = HeaderMap::new();
        let cors = Cors::any()
            .allow_credentials(true)
            .expose_headers(["x-node", "bad name"]);
        cors.apply(&from("https://a.example"), &mut response);
        assert_eq!(response[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
        assert_eq!(response[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(response[ACCESS_CONTROL_EXPOSE_HEADERS], "x-node");
        assert_eq!(response[VARY], "origin");
        // Twice: one grant, one Vary.
        cors.apply(&from("https://a.example"), &mut response);
        assert_eq!(response.get_all(VARY).iter().count(), 1);
        assert_eq!(
            response.get_all(ACCESS_CONTROL_ALLOW_ORIGIN).iter().count(),
            1
        );
    }

    #[test]
    fn a_listed_origin_only() {
        let cors = Cors::origins(["https://A.example/"]).allow_credentials(true);
        let mut response = HeaderMap::new();
        cors.apply(&from("https://a.example"), &mut response);
        assert_eq!(response[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
        for other in ["https://b.example", "null", "https://a.example.evil"] {
            let mut response = HeaderMap::new();
            cors.apply(&from(other), &mut response);
            assert!(
                response.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
                "{other}"
            );
            assert!(response.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
            assert_eq!(response[VARY], "origin");
        }
        let mut response = HeaderMap::new();
        cors.apply(&HeaderMap::new(), &mut response);
        assert!(response.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        // A hostile Origin that is not text is no grant, and no panic.
        let mut hostile = HeaderMap::new();
        hostile.insert(ORIGIN, HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        cors.apply(&hostile, &mut response);
        assert!(response.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }

    #[test]
    fn preflights() {
        let cors = Cors::origins(["https://a.example"])
            .allow_credentials(true)
            .max_age(Duration::from_secs(600));
        let request = |origin: &str, method: Method, asks: bool| {
            let mut builder = http::Request::builder()
                .method(method)
                .uri("/events")
                .header(ORIGIN, origin);
            if asks {
                builder = builder
                    .header(ACCESS_CONTROL_REQUEST_METHOD, "GET")
                    .header(ACCESS_CONTROL_REQUEST_HEADERS, "authorization");
            }
            builder.body(()).unwrap().into_parts().0
        };
        let answer = cors
            .preflight(&request("https://a.example", Method::OPTIONS, true))
            .unwrap();
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        let h = answer.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "authorization");
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
        assert!(h[ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()
            .unwrap()
            .contains("GET"));
        let refused = cors
            .preflight(&request("https://b.example", Method::OPTIONS, true))
            .unwrap();
        assert!(refused.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert!(refused
            .headers()
            .get(ACCESS_CONTROL_ALLOW_METHODS)
            .is_none());
        assert!(cors
            .preflight(&request("https://a.example", Method::OPTIONS, false))
            .is_none());
        assert!(cors
            .preflight(&request("https://a.example", Method::GET, true))
            .is_none());
    }
}
