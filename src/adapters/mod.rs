//! Glue for HTTP frameworks.
//!
//! The core already produces an `http::Response` whose body implements
//! `http_body::Body` ([`Connection::into_http_response`](crate::Connection::into_http_response)),
//! so any framework built on the `http` crate can serve it. The adapters add
//! only what needs a framework's own traits. [`last_event_id`] is the shared,
//! framework-free part.

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
pub mod hyper;

/// Longest `Last-Event-ID` accepted, in bytes; a longer one is ignored (the
/// client is treated as new), never an error.
pub const MAX_LAST_EVENT_ID_LEN: usize = 1024;

/// The `Last-Event-ID` a reconnecting client sent: the header, or else the
/// `last_event_id` query parameter (for clients that cannot set headers).
///
/// Returns `None` when absent, empty, not UTF-8, or longer than
/// [`MAX_LAST_EVENT_ID_LEN`]: a bad value never fails the request.
///
/// ```
/// use sse_cluster::adapters::last_event_id;
///
/// let mut headers = http::HeaderMap::new();
/// assert_eq!(last_event_id(&headers, Some("topic=a&last_event_id=n.1")), Some("n.1".into()));
/// headers.insert("last-event-id", "42".parse().unwrap());
/// assert_eq!(last_event_id(&headers, None), Some("42".into()));
/// ```
pub fn last_event_id(headers: &http::HeaderMap, query: Option<&str>) -> Option<String> {
    let valid = |s: &str| !s.is_empty() && s.len() <= MAX_LAST_EVENT_ID_LEN;
    if let Some(value) = headers.get("last-event-id") {
        return value.to_str().ok().filter(|s| valid(s)).map(str::to_owned);
    }
    let query = query?;
    if query.len() > 16 * MAX_LAST_EVENT_ID_LEN {
        return None;
    }
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "last_event_id")
        .map(|(_, v)| v.into_owned())
        .filter(|s| valid(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_wins_and_garbage_is_none() {
        let mut h = http::HeaderMap::new();
        assert_eq!(last_event_id(&h, None), None);
        assert_eq!(
            last_event_id(&h, Some("last_event_id=a%20b")),
            Some("a b".into())
        );
        assert_eq!(last_event_id(&h, Some("last_event_id=")), None);
        h.insert(
            "last-event-id",
            http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(last_event_id(&h, Some("last_event_id=q")), None);
        h.insert(
            "last-event-id",
            "x".repeat(MAX_LAST_EVENT_ID_LEN + 1).parse().unwrap(),
        );
        assert_eq!(last_event_id(&h, None), None);
        h.insert("last-event-id", "7".parse().unwrap());
        assert_eq!(last_event_id(&h, Some("last_event_id=q")), Some("7".into()));
    }
}
