//! Commands: bus messages that act on the connections a channel reaches
//! instead of carrying an event to them.
//!
//! # Format, version 1
//!
//! One UTF-8 JSON object, published on the channel of the connections it
//! acts on (a topic's, a user's, the broadcast channel, or a node's with
//! `conn`), like an event envelope:
//!
//! ```json
//! {"cmd":1,"op":"disconnect","reason":"revoked","reconnect":false}
//! ```
//!
//! | field | type | required | meaning |
//! |---|---|---|---|
//! | `cmd` | integer | yes, first | command version; `1`. A message that starts with `{"cmd":` is a command, never an event |
//! | `op` | string | yes | `"disconnect"`: end the matching streams |
//! | `reason` | string | no (default `""`) | why, at most 256 bytes; passed to the client in the final event |
//! | `reconnect` | boolean | no (default `false`) | whether the client should come back (a rebalance) or not (a revoked user) |
//! | `conn` | string | on node channels | the connection to end |
//! | `origin` | string | no | the hub instance that sent it; that hub ignores its own echo |
//!
//! So any service allowed to publish on the bus can cut a user off, e.g.
//! on Redis: `PUBLISH sse:user:42 '{"cmd":1,"op":"disconnect","reason":"revoked"}'`.
//! A malformed command is counted and dropped, as a malformed envelope is.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::WireError;

/// The command version this crate writes and reads.
pub const COMMAND_VERSION: u64 = 1;

/// The longest `reason` a command may carry, in bytes.
pub const MAX_REASON_LEN: usize = 256;

/// Whether a bus message is a command (it starts with `{"cmd":`).
pub fn is_command(payload: &[u8]) -> bool {
    payload.starts_with(b"{\"cmd\":")
}

/// What a command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CommandOp {
    /// End the streams the channel reaches, each after a final event.
    Disconnect,
}

/// One command, borrowing from the received bytes where it can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Command<'a> {
    /// The command version.
    pub cmd: u64,
    /// What to do.
    pub op: CommandOp,
    /// Why, for the client.
    #[serde(borrow, default)]
    pub reason: Cow<'a, str>,
    /// Whether the client should reconnect.
    #[serde(default)]
    pub reconnect: bool,
    /// The connection, on node channels.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<Cow<'a, str>>,
    /// The hub instance that sent it.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Cow<'a, str>>,
}

impl<'a> Command<'a> {
    /// A version-1 `disconnect` command.
    pub fn disconnect(reason: &'a str, reconnect: bool) -> Self {
        Command {
            cmd: COMMAND_VERSION,
            op: CommandOp::Disconnect,
            reason: Cow::Borrowed(reason),
            reconnect,
            conn: None,
            origin: None,
        }
    }

    /// Parses a received command.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, WireError> {
        let command: Command<'a> =
            serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
        if command.cmd != COMMAND_VERSION {
            return Err(WireError::UnsupportedVersion(command.cmd));
        }
        check_reason(&command.reason)?;
        Ok(command)
    }

    /// The JSON bytes to publish.
    pub fn encode(&self) -> Result<Bytes, WireError> {
        check_reason(&self.reason)?;
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(|e| WireError::Malformed(e.to_string()))
    }
}

/// A reason is short and has no control characters (it ends up in the
/// client's final event and in logs).
fn check_reason(reason: &str) -> Result<(), WireError> {
    if reason.len() > MAX_REASON_LEN {
        return Err(WireError::Malformed(format!(
            "a command reason of {} bytes (at most {MAX_REASON_LEN})",
            reason.len()
        )));
    }
    if reason.chars().any(char::is_control) {
        return Err(WireError::Malformed(
            "a command reason with a control character".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_defaults() {
        let mut c = Command::disconnect("revoked", false);
        c.origin = Some("a.x".into());
        let bytes = c.encode().unwrap();
        assert!(is_command(&bytes));
        assert_eq!(Command::decode(&bytes).unwrap(), c);
        let minimal = Command::decode(br#"{"cmd":1,"op":"disconnect"}"#).unwrap();
        assert_eq!((minimal.reason.as_ref(), minimal.reconnect), ("", false));
    }

    #[test]
    fn hostile_commands_are_refused() {
        for bad in [
            &br#"{"cmd":2,"op":"disconnect"}"#[..],
            br#"{"cmd":1,"op":"explode"}"#,
            br#"{"cmd":1}"#,
            br#"{"cmd":1,"op":"disconnect","reason":"a\nb"}"#,
            br#"{"cmd":1,"op":"disconnect","reconnect":"yes"}"#,
            b"{\"cmd\":",
        ] {
            assert!(
                Command::decode(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(
            r#"{{"cmd":1,"op":"disconnect","reason":"{}"}}"#,
            "x".repeat(257)
        );
        assert!(Command::decode(long.as_bytes()).is_err());
        assert!(Command::disconnect(&"x".repeat(257), true)
            .encode()
            .is_err());
    }
}
