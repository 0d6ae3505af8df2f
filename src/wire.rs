//! The bus envelope: what travels between nodes, in a format any language can
//! write.
//!
//! # Format, version 1
//!
//! One UTF-8 JSON object per bus message:
//!
//! ```json
//! {"v":1,"event":"price","id":"42","data":"line one\nline two","retry":3000}
//! ```
//!
//! | field | type | required | meaning |
//! |---|---|---|---|
//! | `v` | integer | yes | envelope version; `1` |
//! | `data` | string | no (default `""`) | the event payload; line breaks become `data:` lines |
//! | `event` | string | no | SSE event name; no CR or LF |
//! | `id` | string | no | SSE event id; no CR, LF or NUL |
//! | `retry` | integer | no | SSE `retry:` in milliseconds |
//! | `conn` | string | on node channels | target connection id |
//! | `origin` | string | no | publishing hub instance; a hub ignores its own echo |
//! | `msg` | string | no | message id, for logs and tracing |
//! | `ts_us` | integer | no | publish time, in microseconds since the Unix epoch; feeds the `sse_publish_to_frame_seconds{path="bus"}` histogram |
//! | `pos` | string | no | position in the channel's history (set by the history store) |
//! | `epoch` | string | no | epoch of that history (set by the history store) |
//!
//! Unknown fields are ignored, so later minor additions stay readable by
//! older nodes (`ts_us` is such an addition: a publisher that omits it, or
//! an older node that ignores it, loses nothing but the latency figure).
//! `ts_us` is read against the receiving node's clock: exact between
//! processes of one machine, as good as the clock synchronisation across
//! machines; implausible values (negative or over an hour) are ignored. A different `v`, a message that is not such an object, or an
//! event name or id that would break the SSE framing is refused: the hub
//! counts it ([`HubStats::bus_malformed`](crate::HubStats::bus_malformed)),
//! logs it, and keeps its subscription.
//!
//! Presence control messages share the bus but are not envelopes: they
//! start with `{"ctl":` and have no `v` (so [`Envelope::decode`] refuses
//! them); see [`presence`](crate::presence). Commands (`{"cmd":1,"op":
//! "disconnect",…}`), which end streams rather than feed them, are neither;
//! see [`command`].
//!
//! The channel a message is published on says who receives it; see the crate
//! docs ("How it works") for the channel names of each broker.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventError};

pub mod command;
mod json;
mod position;
pub use command::{is_command, Command, CommandOp};
pub(crate) use position::random_tag;
pub use position::{stamp, Position};

/// The envelope version this crate writes and reads.
pub const VERSION: u64 = 1;

/// Why a bus message was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Not a JSON object of the expected shape.
    #[error("malformed bus message: {0}")]
    Malformed(String),
    /// A version this crate does not read.
    #[error("unsupported bus message version {0}")]
    UnsupportedVersion(u64),
    /// The event name or id would break the SSE framing.
    #[error("invalid event in bus message: {0}")]
    InvalidEvent(#[from] EventError),
}

/// One bus message, borrowing from the received bytes where it can.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Envelope<'a> {
    /// The envelope version.
    pub v: u64,
    /// The publishing hub instance.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Cow<'a, str>>,
    /// The message id.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<Cow<'a, str>>,
    /// When the message was published: microseconds since the Unix epoch,
    /// on the publisher's clock. Read leniently: a value that is not a
    /// non-negative number reads as absent rather than refusing the message.
    #[serde(
        default,
        deserialize_with = "lenient_micros",
        skip_serializing_if = "Option::is_none"
    )]
    pub ts_us: Option<u64>,
    /// The target connection, on node channels.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<Cow<'a, str>>,
    /// The SSE event name.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Cow<'a, str>>,
    /// The SSE event id.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    /// The SSE retry, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u64>,
    /// The event payload.
    #[serde(borrow, default, skip_serializing_if = "str::is_empty")]
    pub data: Cow<'a, str>,
    /// The event's position in its channel's history (`major` or
    /// `major-minor`), set by the history store that published it.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub pos: Option<Cow<'a, str>>,
    /// The epoch of that history.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Cow<'a, str>>,
}

/// `ts_us` only feeds a histogram: a publisher that writes a float, a
/// negative number or a string there should still have its event delivered.
fn lenient_micros<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(match value {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        }),
        _ => None,
    })
}

impl<'a> Envelope<'a> {
    /// A version-1 envelope carrying `event`.
    pub fn from_event(event: &'a Event) -> Self {
        Envelope {
            v: VERSION,
            data: Cow::Borrowed(event.data_str().unwrap_or("")),
            event: event.name().map(Cow::Borrowed),
            id: event.id_str().map(Cow::Borrowed),
            retry: event
                .retry_delay()
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ..Envelope::default()
        }
    }

    /// Parses and checks one bus message.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, WireError> {
        // The shape hubs write, read by hand; anything else, by serde_json.
        if let Some(env) = json::decode(bytes).filter(|env| env.v == VERSION) {
            return Ok(env);
        }
        match serde_json::from_slice::<Envelope<'a>>(bytes) {
            Ok(env) if env.v == VERSION => Ok(env),
            Ok(env) => Err(WireError::UnsupportedVersion(env.v)),
            Err(err) => {
                // A later version may change field types; report its version
                // rather than a confusing shape error.
                #[derive(Deserialize)]
                struct VersionOnly {
                    v: u64,
                }
                match serde_json::from_slice::<VersionOnly>(bytes) {
                    Ok(VersionOnly { v }) if v != VERSION => Err(WireError::UnsupportedVersion(v)),
                    _ => Err(WireError::Malformed(err.to_string())),
                }
            }
        }
    }

    /// Encodes the envelope as JSON: the bytes `serde_json` would write
    /// (fields in declaration order, `None` and empty `data` left out).
    /// Does not fail; the `Result` is kept for callers written against
    /// the serializer it used to call.
    pub fn encode(&self) -> Result<Bytes, WireError> {
        // Sized for the data plus the other fields, so the common case
        // never reallocates.
        let mut buf = Vec::with_capacity(self.data.len() + self.data.len() / 8 + 160);
        // The bytes serde_json writes, without its per-byte escape loop
        // (see `json`); writing into a `Vec` cannot fail.
        json::encode(self, &mut buf);
        Ok(Bytes::from(buf))
    }

    /// The SSE frame carried, checked like any [`Event`] and encoded
    /// straight from the envelope (no intermediate `Event`).
    pub(crate) fn encode_frame(&self) -> Result<Bytes, WireError> {
        self.frame(true)
    }

    /// The SSE frame without its `id:` line, for a hub that writes its own
    /// ids (resumable channels). The id is still checked: a message is
    /// accepted or refused alike whatever the hub's history setting.
    pub(crate) fn encode_frame_without_id(&self) -> Result<Bytes, WireError> {
        self.frame(false)
    }

    fn frame(&self, with_id: bool) -> Result<Bytes, WireError> {
        if self
            .event
            .as_deref()
            .is_some_and(|n| !crate::event::valid_name(n))
        {
            return Err(EventError::InvalidName.into());
        }
        if self
            .id
            .as_deref()
            .is_some_and(|i| !crate::event::valid_id(i))
        {
            return Err(EventError::InvalidId.into());
        }
        Ok(crate::event::Fields {
            name: self.event.as_deref(),
            id: self.id.as_deref().filter(|_| with_id),
            data: Some(&self.data),
            retry: self.retry.map(std::time::Duration::from_millis),
            comments: &[],
        }
        .encode())
    }

    /// The SSE event carried, checked like any [`Event`].
    pub fn to_event(&self) -> Result<Event, WireError> {
        let mut event = Event::new().data(self.data.as_ref());
        if let Some(name) = &self.event {
            event = event.event(name.as_ref())?;
        }
        if let Some(id) = &self.id {
            event = event.id(id.as_ref())?;
        }
        if let Some(ms) = self.retry {
            event = event.retry(std::time::Duration::from_millis(ms));
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let event = Event::new()
            .event("e")
            .unwrap()
            .id("7")
            .unwrap()
            .data("a\nb");
        let mut env = Envelope::from_event(&event);
        env.origin = Some("n.x".into());
        let bytes = env.encode().unwrap();
        // Hubs recognise their echo by this prefix.
        assert!(bytes.starts_with(br#"{"v":1,"origin":"n.x","#), "{bytes:?}");
        let back = Envelope::decode(&bytes).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.to_event().unwrap(), event);
    }

    #[test]
    fn direct_frame_equals_the_event_encoding() {
        for json in [
            &br#"{"v":1}"#[..],
            br#"{"v":1,"data":"a\r\nb\rc\n","event":" e","id":"7","retry":5}"#,
            br#"{"v":1,"data":"","id":""}"#,
        ] {
            let env = Envelope::decode(json).unwrap();
            assert_eq!(
                env.encode_frame().unwrap(),
                env.to_event().unwrap().encode()
            );
        }
        let bad = Envelope::decode(br#"{"v":1,"id":"a\u0000"}"#).unwrap();
        assert!(matches!(
            bad.encode_frame(),
            Err(WireError::InvalidEvent(EventError::InvalidId))
        ));
    }

    #[test]
    fn publish_time_is_optional() {
        let env = Envelope::decode(br#"{"v":1,"ts_us":1700000000000000,"data":"x"}"#).unwrap();
        assert_eq!(env.ts_us, Some(1_700_000_000_000_000));
        assert_eq!(Envelope::decode(&env.encode().unwrap()).unwrap(), env);
        let old = Envelope::decode(br#"{"v":1,"data":"x"}"#).unwrap();
        assert_eq!(old.ts_us, None);
        assert!(!old.encode().unwrap().windows(5).any(|w| w == b"ts_us"));
        for lenient in [
            &br#"{"v":1,"ts_us":-1}"#[..],
            br#"{"v":1,"ts_us":"soon"}"#,
            br#"{"v":1,"ts_us":null}"#,
            br#"{"v":1,"ts_us":{"a":[1]}}"#,
        ] {
            let env = Envelope::decode(lenient).unwrap();
            assert_eq!(env.ts_us, None, "{lenient:?}");
            assert_eq!(Envelope::decode(&env.encode().unwrap()).unwrap(), env);
        }
        let float = Envelope::decode(br#"{"v":1,"ts_us":1.5e15}"#).unwrap();
        assert_eq!(float.ts_us, Some(1_500_000_000_000_000));
    }

    #[test]
    fn minimal_foreign_message() {
        let env = Envelope::decode(br#"{"v":1,"data":"hi","extra":[1,2]}"#).unwrap();
        assert_eq!(env.to_event().unwrap(), Event::new().data("hi"));
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            &b""[..],
            b"null",
            b"[]",
            b"{}",
            b"{\"v\":\"1\"}",
            b"\xff\xfe",
            b"{\"v\":1,\"data\":5}",
        ] {
            assert!(
                matches!(Envelope::decode(bad), Err(WireError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Envelope::decode(br#"{"v":2,"data":"x"}"#),
            Err(WireError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            Envelope::decode(br#"{"v":9,"data":{"new":1}}"#),
            Err(WireError::UnsupportedVersion(9))
        ));
        let env = Envelope::decode(br#"{"v":1,"event":"a\nid: 1"}"#).unwrap();
        assert!(matches!(
            env.to_event(),
            Err(WireError::InvalidEvent(EventError::InvalidName))
        ));
    }
}
