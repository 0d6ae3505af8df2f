//! `Last-Event-ID`: extraction from any header bytes and query string gives a
//! bounded id (empty when present but unusable) or `None`, and the hub's id
//! parser either refuses the text or reads positions that write back to an id
//! it reads the same; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_cluster::adapters::{last_event_id, MAX_LAST_EVENT_ID_LEN};
use sse_cluster::resume::{fuzz_last_id, MAX_RESUMABLE_CHANNELS};

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
            assert!(id.len() <= MAX_LAST_EVENT_ID_LEN);
            assert!(fuzz_last_id(&id) <= MAX_RESUMABLE_CHANNELS);
        }
    }
    assert!(fuzz_last_id(query) <= MAX_RESUMABLE_CHANNELS);
});
