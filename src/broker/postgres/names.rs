//! Hub channels as Postgres channel names: valid identifiers of at most 63
//! bytes, made only of `a-z`, `0-9` and `_` (so that they read the same
//! quoted or not), and collision-free. See the module docs of
//! [`postgres`](super) for the rules other languages follow.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::broker::Channel;

/// Longest Postgres identifier, in bytes (`NAMEDATALEN - 1`).
pub const MAX_IDENTIFIER_LEN: usize = 63;

/// Longest channel prefix, in bytes: the prefix, a kind, `h_` and 32 hex
/// digits still fit in [`MAX_IDENTIFIER_LEN`].
pub const MAX_PREFIX_LEN: usize = 24;

/// Hex digits of the SHA-256 kept in a hashed name (128 bits).
const HASH_HEX_LEN: usize = 32;

/// Why a prefix is refused, if it is.
pub(super) fn check_prefix(prefix: &str) -> Result<(), String> {
    let starts_well = prefix
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    if prefix.len() > MAX_PREFIX_LEN || !starts_well || !prefix.bytes().all(plain_byte) {
        return Err(format!(
            "postgres channel prefix {prefix:?}: 1 to {MAX_PREFIX_LEN} bytes of a-z, 0-9 and _, \
             starting with a letter or _"
        ));
    }
    Ok(())
}

fn plain_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
}

/// The Postgres channel of `channel` under `prefix` (a valid prefix, see
/// [`check_prefix`]).
pub(super) fn channel_name(prefix: &str, channel: &Channel) -> String {
    let (kind, name) = match channel {
        Channel::Broadcast => return format!("{prefix}all"),
        Channel::Node(n) => ('n', n.as_ref()),
        Channel::Topic(t) => ('t', t.as_ref()),
        Channel::User(u) => ('u', u.as_ref()),
    };
    let plain = prefix.len() + 2 + name.len();
    if !name.is_empty() && plain <= MAX_IDENTIFIER_LEN && name.bytes().all(plain_byte) {
        return format!("{prefix}{kind}_{name}");
    }
    hashed(prefix, kind, name)
}

/// `{prefix}{kind}h_` and the first 32 hex digits of the SHA-256 of `name`.
fn hashed(prefix: &str, kind: char, name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let mut out = String::with_capacity(prefix.len() + 3 + HASH_HEX_LEN);
    out.push_str(prefix);
    out.push(kind);
    out.push_str("h_");
    for byte in &digest[..HASH_HEX_LEN / 2] {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(channel_name("sse_", &Channel::Broadcast), "sse_all");
        assert_eq!(
            channel_name("sse_", &Channel::Topic("news".into())),
            "sse_t_news"
        );
        assert_eq!(
            channel_name("sse_", &Channel::User("u_42".into())),
            "sse_u_u_42"
        );
    }

    #[test]
    fn other_names_are_hashed() {
        // The FIPS 180-2 test vector: SHA-256("abc") = ba7816bf8f01cfea…
        assert_eq!(
            hashed("sse_", 't', "abc"),
            "sse_th_ba7816bf8f01cfea414140de5dae2223"
        );
        let name = channel_name("sse_", &Channel::Topic("News".into()));
        assert_eq!(name, hashed("sse_", 't', "News"));
        let long = "a".repeat(MAX_IDENTIFIER_LEN);
        assert_eq!(
            channel_name("sse_", &Channel::User(long.as_str().into())),
            hashed("sse_", 'u', &long)
        );
    }

    #[test]
    fn every_name_is_a_short_plain_identifier_and_kinds_never_collide() {
        let long = "a".repeat(crate::limits::MAX_NAME_LEN);
        let prefix = "p".repeat(MAX_PREFIX_LEN);
        let mut seen = std::collections::HashSet::new();
        for name in ["a", "h_x", "News", "a.b c", "é", "", long.as_str(), "x-y"] {
            for channel in [
                Channel::Topic(name.into()),
                Channel::User(name.into()),
                Channel::Node(name.into()),
            ] {
                for prefix in ["sse_", prefix.as_str()] {
                    let pg = channel_name(prefix, &channel);
                    assert!(pg.len() <= MAX_IDENTIFIER_LEN, "{pg}");
                    assert!(pg.bytes().all(plain_byte), "{pg}");
                    assert!(seen.insert(pg.clone()), "collision: {pg}");
                }
            }
        }
        // A plain topic named like a hash cannot meet a hashed name: the
        // kind letter is followed by `_` in one and by `h` in the other.
        assert_ne!(
            channel_name("s_", &Channel::Topic("h_00".into())),
            channel_name("s_", &Channel::Topic("x y".into()))
        );
    }

    #[test]
    fn prefixes() {
        assert!(check_prefix("sse_").is_ok());
        assert!(check_prefix("_a1").is_ok());
        for bad in ["", "1a", "A", "a-b", "a\"", &"a".repeat(MAX_PREFIX_LEN + 1)] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
