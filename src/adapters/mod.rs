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
#[cfg(feature = "http1")]
#[cfg_attr(docsrs, doc(cfg(feature = "http1")))]
pub mod http1;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
pub mod hyper;

/// Longest `Last-Event-ID` passed on as it is, in bytes (the longest id a
/// hub writes is [`MAX_EVENT_ID_LEN`](crate::history::MAX_EVENT_ID_LEN)).
pub const MAX_LAST_EVENT_ID_LEN: usize = 4096;

/// The `Last-Event-ID` a reconnecting client sent: the header, or else the
/// `last_event_id` query parameter (for clients that cannot set headers).
///
/// Returns `None` when the client sent neither (a new client). A value that
/// is present but unusable (empty, not UTF-8, longer than
/// [`MAX_LAST_EVENT_ID_LEN`]) comes back as an empty string: a hub with
/// history answers it with the reset event, and it never fails the request.
///
/// ```
/// use sse_cluster::adapters::last_event_id;
///
/// let mut headers = http::HeaderMap::new();
/// assert_eq!(last_event_id(&headers, None), None);
/// assert_eq!(last_event_id(&headers, Some("topic=a&last_event_id=r1")), Some("r1".into()));
/// headers.insert("last-event-id", "42".parse().unwrap());
/// assert_eq!(last_event_id(&headers, None), Some("42".into()));
/// ```
pub fn last_event_id(headers: &http::HeaderMap, query: Option<&str>) -> Option<String> {
    let usable = |s: &str| {
        if s.len() <= MAX_LAST_EVENT_ID_LEN {
            s.to_owned()
        } else {
            String::new()
        }
    };
    if let Some(value) = headers.get("last-event-id") {
        return Some(value.to_str().map(usable).unwrap_or_default());
    }
    let query = query?;
    if query.len() > 4 * MAX_LAST_EVENT_ID_LEN {
        return query.contains("last_event_id=").then(String::new);
    }
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "last_event_id")
        .map(|(_, v)| usable(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_wins_and_garbage_is_empty() {
        let mut h = http::HeaderMap::new();
        assert_eq!(last_event_id(&h, None), None);
        assert_eq!(last_event_id(&h, Some("topic=x")), None);
        assert_eq!(
            last_event_id(&h, Some("last_event_id=a%20b")),
            Some("a b".into())
        );
        assert_eq!(last_event_id(&h, Some("last_event_id=")), Some("".into()));
        h.insert(
            "last-event-id",
            http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(last_event_id(&h, Some("last_event_id=q")), Some("".into()));
        h.insert(
            "last-event-id",
            "x".repeat(MAX_LAST_EVENT_ID_LEN + 1).parse().unwrap(),
        );
        assert_eq!(last_event_id(&h, None), Some("".into()));
        h.insert("last-event-id", "7".parse().unwrap());
        assert_eq!(last_event_id(&h, Some("last_event_id=q")), Some("7".into()));
    }
}
