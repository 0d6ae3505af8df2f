//! `Last-Event-ID` extraction: any header bytes and query string give a
//! bounded, non-empty id or `None`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_cluster::adapters::{last_event_id, MAX_LAST_EVENT_ID_LEN};

fuzz_target!(|input: (&[u8], &str)| {
    let (header, query) = input;
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_bytes(header) {
        headers.insert("last-event-id", value);
    }
    for candidate in [
        last_event_id(&headers, Some(query)),
        last_event_id(&http::HeaderMap::new(), Some(query)),
    ] {
        if let Some(id) = candidate {
            assert!(!id.is_empty() && id.len() <= MAX_LAST_EVENT_ID_LEN);
        }
    }
});
