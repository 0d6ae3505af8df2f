//! Where a message sits in its channel's history, and the stamped envelope
//! form that carries it on the bus.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// A place in one channel's history. Positions grow with every append.
///
/// Stores map their own positions onto two numbers: a Redis Stream id
/// `ms-seq` is `(ms, seq)`, a JetStream sequence or a memory counter is
/// `(n, 0)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    major: u64,
    minor: u64,
}

impl Position {
    /// Before the first event of any history.
    pub const ZERO: Position = Position { major: 0, minor: 0 };

    /// A position from its two parts.
    pub const fn new(major: u64, minor: u64) -> Self {
        Self { major, minor }
    }

    /// The first part.
    pub const fn major(self) -> u64 {
        self.major
    }

    /// The second part.
    pub const fn minor(self) -> u64 {
        self.minor
    }

    /// Parses `major` or `major-minor` (decimal), the form stores and the bus
    /// envelope's `pos` field use.
    pub fn parse(text: &str) -> Option<Self> {
        let (major, minor) = match text.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (text, None),
        };
        let number = |s: &str| -> Option<u64> {
            if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        Some(Self {
            major: number(major)?,
            minor: match minor {
                Some(m) => number(m)?,
                None => 0,
            },
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.major, self.minor)
    }
}

/// The stamped form of an envelope that a history store publishes:
/// `,"pos":"P","epoch":"E"}` in place of the envelope's closing brace.
///
/// A store built outside this crate calls this on the payload it was asked
/// to append, so that every hub learns the event's place in its channel.
///
/// ```
/// use sse_cluster::wire::{stamp, Position};
///
/// let stamped = stamp(br#"{"v":1,"data":"x"}"#, Position::new(3, 4), "ep");
/// assert_eq!(&stamped[..], br#"{"v":1,"data":"x","pos":"3-4","epoch":"ep"}"#);
/// ```
pub fn stamp(payload: &[u8], position: Position, epoch: &str) -> Bytes {
    let body = payload.strip_suffix(b"}").unwrap_or(payload);
    let mut out = BytesMut::with_capacity(body.len() + epoch.len() + 64);
    out.put_slice(body);
    out.put_slice(b",\"pos\":\"");
    out.put_slice(position.to_string().as_bytes());
    out.put_slice(b"\",\"epoch\":\"");
    out.put_slice(epoch.as_bytes());
    out.put_slice(b"\"}");
    out.freeze()
}

/// A random alphanumeric tag telling one run of a hub, publisher or store
/// from another.
pub(crate) fn random_tag(len: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(len)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse() {
        assert_eq!(Position::parse("17"), Some(Position::new(17, 0)));
        assert_eq!(Position::parse("1-2"), Some(Position::new(1, 2)));
        for bad in ["", "-", "1-", "-1", "a", "1-2-3", "99999999999999999999999"] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stamping_keeps_the_envelope_valid() {
        let stamped = stamp(br#"{"v":1,"data":"x"}"#, Position::new(3, 4), "ep");
        assert_eq!(
            &stamped[..],
            br#"{"v":1,"data":"x","pos":"3-4","epoch":"ep"}"#
        );
        assert!(crate::wire::Envelope::decode(&stamped).is_ok());
    }
}
