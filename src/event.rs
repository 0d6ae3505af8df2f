//! The SSE frame: an [`Event`] builder and its WHATWG-exact encoding.
//!
//! An [`Event`] is plain data (event name, id, data, retry, comments) until
//! [`Event::encode`] turns it into one [`Bytes`] frame. The hub encodes each
//! published event exactly once and hands the same `Bytes` to every receiving
//! connection.
//!
//! # Encoding rules
//!
//! * `data` is split on CRLF, LF and lone CR (CRLF counts as one break); each
//!   line becomes its own `data:` field, so a client reassembles the payload
//!   with line endings normalised to LF. A trailing newline survives, and an
//!   empty payload is still a dispatchable event.
//! * Every field is written as `name: value` with exactly one space, so a
//!   value that starts with a space keeps it.
//! * An event name or id containing CR or LF (or NUL, for ids) is rejected
//!   with an [`EventError`]: it could otherwise inject fields into the stream.
//! * Comments may contain line breaks: each line becomes its own comment line.

use std::fmt;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

/// Why an [`Event`] field was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The event name contains a CR or LF, which would end the field early.
    #[error("event name contains a line break (CR or LF)")]
    InvalidName,
    /// The id contains a CR, LF or NUL; browsers ignore or split such ids.
    #[error("event id contains a line break (CR or LF) or NUL")]
    InvalidId,
    /// The value given to [`Event::json_data`] could not be serialized.
    #[error("event data could not be serialized as JSON: {0}")]
    Json(String),
}

/// One Server-Sent Event, built field by field and encoded once.
///
/// ```
/// use sse_cluster::Event;
///
/// # fn main() -> Result<(), sse_cluster::EventError> {
/// let event = Event::new()
///     .event("price")?
///     .id("42")?
///     .data("line one\nline two");
/// assert_eq!(
///     &event.encode()[..],
///     b"event: price\nid: 42\ndata: line one\ndata: line two\n\n"
/// );
/// # Ok(())
/// # }
/// ```
#[must_use]
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Event {
    name: Option<String>,
    id: Option<String>,
    data: Option<String>,
    retry: Option<Duration>,
    comments: Vec<String>,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("event", &self.name)
            .field("id", &self.id)
            .field("data_len", &self.data.as_ref().map(String::len))
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Event {
    /// An empty event. It dispatches nothing until it gets data, a name or an
    /// id; `Event::new().data("")` is a dispatchable event with empty data.
    pub fn new() -> Self {
        Self::default()
    }

    /// The payload. Any string is valid: line breaks become separate `data:`
    /// lines. Calling it again replaces the previous payload.
    pub fn data(mut self, data: impl Into<String>) -> Self {
        self.data = Some(data.into());
        self
    }

    /// The payload as the JSON serialization of `value`.
    pub fn json_data<T: serde::Serialize + ?Sized>(
        mut self,
        value: &T,
    ) -> Result<Self, EventError> {
        let json = serde_json::to_string(value).map_err(|e| EventError::Json(e.to_string()))?;
        self.data = Some(json);
        Ok(self)
    }

    /// The event name (`event:` field); the browser dispatches it to
    /// `addEventListener(name, ...)` instead of `onmessage`.
    ///
    /// Fails with [`EventError::InvalidName`] if `name` contains CR or LF.
    pub fn event(mut self, name: impl Into<String>) -> Result<Self, EventError> {
        let name = name.into();
        if !valid_name(&name) {
            return Err(EventError::InvalidName);
        }
        self.name = Some(name);
        Ok(self)
    }

    /// The event id (`id:` field) that the browser echoes back as
    /// `Last-Event-ID` when it reconnects.
    ///
    /// Fails with [`EventError::InvalidId`] if `id` contains CR, LF or NUL.
    pub fn id(mut self, id: impl Into<String>) -> Result<Self, EventError> {
        let id = id.into();
        if !valid_id(&id) {
            return Err(EventError::InvalidId);
        }
        self.id = Some(id);
        Ok(self)
    }

    /// The reconnection delay the client should use from now on (`retry:`).
    pub fn retry(mut self, delay: Duration) -> Self {
        self.retry = Some(delay);
        self
    }

    /// Adds a comment line (ignored by clients; useful for debugging or
    /// padding). Line breaks start new comment lines.
    pub fn comment(mut self, text: impl Into<String>) -> Self {
        self.comments.push(text.into());
        self
    }

    /// The event name, if set.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The id, if set.
    pub fn id_str(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The payload, if set.
    pub fn data_str(&self) -> Option<&str> {
        self.data.as_deref()
    }

    /// The retry delay, if set.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry
    }

    /// True when the event dispatches something to the client (it has a
    /// name, an id or data); an event holding only comments or `retry` is a
    /// control frame.
    pub fn is_dispatchable(&self) -> bool {
        self.name.is_some() || self.id.is_some() || self.data.is_some()
    }

    /// Encodes the event into one SSE frame, ending with the blank line that
    /// dispatches it.
    ///
    /// An event with no data but with a name or id gets one empty `data:`
    /// line, so it is still dispatched. An event holding only comments or a
    /// `retry` has no `data:` line and dispatches nothing.
    pub fn encode(&self) -> Bytes {
        Fields {
            name: self.name.as_deref(),
            id: self.id.as_deref(),
            data: self.data.as_deref(),
            retry: self.retry,
            comments: &self.comments,
        }
        .encode()
    }
}

/// Borrowed event fields, already checked; encoded without building an
/// [`Event`] (the hub encodes bus messages this way).
pub(crate) struct Fields<'a> {
    pub(crate) name: Option<&'a str>,
    pub(crate) id: Option<&'a str>,
    pub(crate) data: Option<&'a str>,
    pub(crate) retry: Option<Duration>,
    pub(crate) comments: &'a [String],
}

impl Fields<'_> {
    pub(crate) fn encode(&self) -> Bytes {
        let data_len = self.data.map_or(0, str::len);
        // Room for the field names of a few lines; long multi-line payloads
        // may still grow the buffer once.
        let mut buf = BytesMut::with_capacity(data_len + data_len / 16 + 64);
        for comment in self.comments {
            for line in split_lines(comment) {
                put_field(&mut buf, b"", line);
            }
        }
        if let Some(retry) = self.retry {
            let millis = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX);
            put_field(&mut buf, b"retry", &millis.to_string());
        }
        if let Some(name) = self.name {
            put_field(&mut buf, b"event", name);
        }
        if let Some(id) = self.id {
            put_field(&mut buf, b"id", id);
        }
        if self.name.is_some() || self.id.is_some() || self.data.is_some() {
            for line in split_lines(self.data.unwrap_or("")) {
                put_field(&mut buf, b"data", line);
            }
        }
        buf.put_u8(b'\n');
        buf.freeze()
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.contains(['\r', '\n'])
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.contains(['\r', '\n', '\0'])
}

/// `name: value\n`; a comment has an empty name and becomes `: value\n`.
fn put_field(buf: &mut BytesMut, name: &[u8], value: &str) {
    buf.reserve(name.len() + value.len() + 3);
    buf.put_slice(name);
    buf.put_slice(b": ");
    buf.put_slice(value.as_bytes());
    buf.put_u8(b'\n');
}

/// Splits on CRLF, LF and lone CR, the three line endings of the SSE grammar.
/// Always yields at least one (possibly empty) line; a trailing break yields a
/// trailing empty line, which is what makes a trailing newline round-trip.
pub(crate) fn split_lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let current = rest?;
        // CR and LF are ASCII, so a byte search finds exactly the char
        // boundaries `str::find` would, many times faster.
        match memchr::memchr2(b'\r', b'\n', current.as_bytes()) {
            None => {
                rest = None;
                Some(current)
            }
            Some(pos) => {
                let line = &current[..pos];
                let skip = if current[pos..].starts_with("\r\n") {
                    2
                } else {
                    1
                };
                rest = Some(&current[pos + skip..]);
                Some(line)
            }
        }
    })
}

/// A frame holding a single `retry:` field, sent first on every stream and
/// before a shutdown closes it.
pub(crate) fn retry_frame(delay: Duration) -> Bytes {
    Event::new().retry(delay).encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(e: Event) -> String {
        String::from_utf8(e.encode().to_vec()).expect("utf8")
    }

    #[test]
    fn splits_every_line_ending_once() {
        let lines: Vec<_> = split_lines("a\r\nb\nc\rd\r\r\ne").collect();
        assert_eq!(lines, ["a", "b", "c", "d", "", "e"]);
        assert_eq!(split_lines("").collect::<Vec<_>>(), [""]);
        assert_eq!(split_lines("x\n").collect::<Vec<_>>(), ["x", ""]);
    }

    #[test]
    fn empty_event_is_dispatchable() {
        assert_eq!(enc(Event::new().data("")), "data: \n\n");
        assert_eq!(
            enc(Event::new().event("ping").unwrap()),
            "event: ping\ndata: \n\n"
        );
    }

    #[test]
    fn leading_space_survives() {
        assert_eq!(enc(Event::new().data("  x")), "data:   x\n\n");
    }

    #[test]
    fn trailing_newline_round_trips_as_an_extra_line() {
        assert_eq!(enc(Event::new().data("x\n")), "data: x\ndata: \n\n");
    }

    #[test]
    fn comments_and_retry() {
        let e = Event::new()
            .comment("a\nb")
            .retry(Duration::from_millis(1500));
        assert_eq!(enc(e), ": a\n: b\nretry: 1500\n\n");
    }

    #[test]
    fn rejects_injection_in_name_and_id() {
        assert_eq!(
            Event::new().event("a\nid: x").unwrap_err(),
            EventError::InvalidName
        );
        assert_eq!(
            Event::new().event("a\r").unwrap_err(),
            EventError::InvalidName
        );
        assert_eq!(Event::new().id("1\r\n").unwrap_err(), EventError::InvalidId);
        assert_eq!(Event::new().id("1\0").unwrap_err(), EventError::InvalidId);
        assert!(Event::new().event("a:b c\0").is_ok());
    }

    #[test]
    fn json_data_serializes() {
        let e = Event::new()
            .json_data(&serde_json::json!({"a": 1}))
            .unwrap();
        assert_eq!(enc(e), "data: {\"a\":1}\n\n");
    }
}
