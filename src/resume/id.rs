//! Event ids: the codec of the ids a hub writes on resumable events, and
//! reading a client's `Last-Event-ID` from a request.

use crate::broker::Channel;
use crate::limits::MAX_LAST_EVENT_ID_LEN;
use crate::wire::Position;

/// Most resumable channels (everyone, the user, topics) one connection may
/// follow and still be resumed.
pub const MAX_RESUMABLE_CHANNELS: usize = 32;

/// Longest event id the hub writes, in bytes: `r1` and
/// [`MAX_RESUMABLE_CHANNELS`] entries of at most 36 bytes.
pub const MAX_EVENT_ID_LEN: usize = 2 + MAX_RESUMABLE_CHANNELS * 36;

/// The `Last-Event-ID` a reconnecting client sent: the header, or else the
/// `last_event_id` query parameter (for clients that cannot set headers).
///
/// Returns `None` when the client sent neither (a new client). A value that
/// is present but unusable (empty, not UTF-8, longer than
/// [`MAX_LAST_EVENT_ID_LEN`]) comes back as an empty string: a hub with
/// history answers it with the reset event, and it never fails the request.
/// [`Hub::connect_request`](crate::Hub::connect_request) calls it; the
/// adapters re-export it.
///
/// ```
/// use sse_cluster::resume::last_event_id;
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

/// 24-bit FNV-1a hash, never 0.
fn hash24(parts: &[&[u8]]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separates parts, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let folded = ((h >> 24) ^ h) as u32 & 0x00ff_ffff;
    folded.max(1)
}

/// The key of a resumable channel in event ids.
pub(crate) fn channel_key(channel: &Channel) -> u32 {
    match channel {
        Channel::Broadcast => hash24(&[b"a"]),
        Channel::Topic(t) => hash24(&[b"t", t.as_bytes()]),
        Channel::User(u) => hash24(&[b"u", u.as_bytes()]),
        Channel::Node(n) => hash24(&[b"n", n.as_bytes()]),
    }
}

/// The tag of no epoch in event ids: the channel had no history yet (the
/// store reported the empty epoch). No real epoch's tag, as [`hash24`] is
/// never 0.
pub(crate) const NO_EPOCH: u32 = 0;

/// The tag of an epoch in event ids: [`NO_EPOCH`] for the empty epoch.
pub(crate) fn epoch_tag(epoch: &str) -> u32 {
    if epoch.is_empty() {
        NO_EPOCH
    } else {
        hash24(&[epoch.as_bytes()])
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn put_b64_24(out: &mut Vec<u8>, v: u32) {
    for shift in [18, 12, 6, 0] {
        out.push(B64[((v >> shift) & 63) as usize]);
    }
}

fn get_b64_24(s: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in s.get(..4)? {
        let d = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        v = (v << 6) | u32::from(d);
    }
    Some(v)
}

fn put_base36(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 13];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn get_base36(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 13 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'z' => c - b'a' + 10,
            _ => return None,
        };
        n = n.checked_mul(36)?.checked_add(u64::from(d))?;
    }
    Some(n)
}

/// One channel's entry in an event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) key: u32,
    pub(crate) epoch: u32,
    pub(crate) position: Position,
}

/// What a `Last-Event-ID` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LastId {
    /// The client's positions, one per channel.
    Marks(Vec<Mark>),
    /// The connection could not be resumed (too many channels).
    NotResumable,
    /// Not an id this crate wrote.
    Invalid,
}

/// Parses a `Last-Event-ID`. Never fails: garbage is [`LastId::Invalid`].
pub(crate) fn parse_last_id(text: &str) -> LastId {
    let bytes = text.as_bytes();
    if bytes.len() > MAX_EVENT_ID_LEN {
        return LastId::Invalid;
    }
    let Some(rest) = bytes.strip_prefix(b"r1") else {
        return LastId::Invalid;
    };
    if rest.is_empty() {
        return LastId::NotResumable;
    }
    let Some(rest) = rest.strip_prefix(b".") else {
        return LastId::Invalid;
    };
    let mut marks = Vec::new();
    for entry in rest.split(|&b| b == b'.') {
        if marks.len() == MAX_RESUMABLE_CHANNELS || entry.len() < 9 {
            return LastId::Invalid;
        }
        let (Some(key), Some(epoch)) = (get_b64_24(&entry[..4]), get_b64_24(&entry[4..8])) else {
            return LastId::Invalid;
        };
        let pos = &entry[8..];
        let position = match pos.iter().position(|&b| b == b'-') {
            Some(i) => match (get_base36(&pos[..i]), get_base36(&pos[i + 1..])) {
                (Some(a), Some(b)) => Position::new(a, b),
                _ => return LastId::Invalid,
            },
            None => match get_base36(pos) {
                Some(a) => Position::new(a, 0),
                None => return LastId::Invalid,
            },
        };
        if marks.iter().any(|m: &Mark| m.key == key) {
            return LastId::Invalid;
        }
        marks.push(Mark {
            key,
            epoch,
            position,
        });
    }
    LastId::Marks(marks)
}

/// For the fuzz targets only: parses `text` as a `Last-Event-ID` and, when
/// it parses into positions, writes them back and checks the round trip.
/// Returns how many channel entries it held.
#[cfg(fuzzing)]
pub fn fuzz_last_id(text: &str) -> usize {
    match parse_last_id(text) {
        LastId::Marks(marks) => {
            let mut out = Vec::new();
            write_id(&mut out, marks.iter().copied(), true);
            assert!(out.len() <= MAX_EVENT_ID_LEN);
            let again = std::str::from_utf8(&out).map(parse_last_id);
            assert_eq!(again, Ok(LastId::Marks(marks.clone())));
            marks.len()
        }
        LastId::NotResumable | LastId::Invalid => 0,
    }
}

/// Writes an event id for `marks`.
pub(crate) fn write_id(out: &mut Vec<u8>, marks: impl Iterator<Item = Mark>, resumable: bool) {
    out.extend_from_slice(b"r1");
    if !resumable {
        return;
    }
    for m in marks {
        out.push(b'.');
        put_b64_24(out, m.key);
        put_b64_24(out, m.epoch);
        put_base36(out, m.position.major());
        if m.position.minor() != 0 {
            out.push(b'-');
            put_base36(out, m.position.minor());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let marks = vec![
            Mark {
                key: channel_key(&Channel::Broadcast),
                epoch: epoch_tag("e1"),
                position: Position::new(1_795_828_621_070, 1),
            },
            Mark {
                key: channel_key(&Channel::Topic("news".into())),
                epoch: 0xff_ffff,
                position: Position::new(u64::MAX, u64::MAX),
            },
            Mark {
                key: 1,
                epoch: 1,
                position: Position::ZERO,
            },
        ];
        let mut out = Vec::new();
        write_id(&mut out, marks.iter().copied(), true);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(parse_last_id(&text), LastId::Marks(marks));
        assert_eq!(parse_last_id("r1"), LastId::NotResumable);
    }

    #[test]
    fn the_empty_epoch_has_tag_zero_and_no_real_epoch_does() {
        assert_eq!(epoch_tag(""), NO_EPOCH);
        // hash24 folds to 24 bits and never returns 0: a real epoch's tag is
        // never taken for "no history yet".
        for i in 0..100_000u32 {
            assert_ne!(epoch_tag(&format!("e{i}")), NO_EPOCH);
        }
        assert_ne!(hash24(&[b""]), 0);
        // Written as `AAAA`, read back as 0.
        let mark = Mark {
            key: channel_key(&Channel::Topic("never".into())),
            epoch: NO_EPOCH,
            position: Position::ZERO,
        };
        let mut out = Vec::new();
        write_id(&mut out, std::iter::once(mark), true);
        assert_eq!(&out[7..], b"AAAA0");
        assert_eq!(
            parse_last_id(std::str::from_utf8(&out).unwrap()),
            LastId::Marks(vec![mark])
        );
    }

    #[test]
    fn the_longest_id_fits_the_bound() {
        let marks = (1..=MAX_RESUMABLE_CHANNELS as u32).map(|k| Mark {
            key: k,
            epoch: k,
            position: Position::new(u64::MAX, u64::MAX),
        });
        let mut out = Vec::new();
        write_id(&mut out, marks, true);
        assert_eq!(out.len(), MAX_EVENT_ID_LEN);
        assert!(matches!(
            parse_last_id(std::str::from_utf8(&out).unwrap()),
            LastId::Marks(m) if m.len() == MAX_RESUMABLE_CHANNELS
        ));
    }

    #[test]
    fn garbage_is_invalid() {
        let long = "r1.AAAAAAAA0".repeat(400);
        for bad in [
            "",
            "r",
            "r2",
            "r1.",
            "r1..",
            "r1.AAAAAAAA",
            "r1.AAAAAAAA-",
            "r1.AAAAAAAA0-",
            "r1.AAAAAAAAZ",
            "r1.AAA*AAAA0",
            "r1.AAAAAAAAzzzzzzzzzzzzzz",
            "r1.AAAAAAAA0.AAAAAAAA1",
            "42",
            long.as_str(),
        ] {
            assert_eq!(parse_last_id(bad), LastId::Invalid, "{bad:?}");
        }
    }

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
