//! Name rules and size limits, in one place: every module that checks a
//! name, an event size or a `Last-Event-ID` refers to these.
//!
//! | limit | value | checked by |
//! |---|---|---|
//! | [`MAX_NAME_LEN`] | 1024 bytes | connect, publish, presence queries |
//! | [`MAX_TOPICS_PER_CONNECTION`] | 256 | connect |
//! | [`DEFAULT_MAX_EVENT_SIZE`] | 1 MiB of data | publish (hubs: `HubBuilder::max_event_size`; publishers) |
//! | [`MAX_LAST_EVENT_ID_LEN`] | 4096 bytes | reading `Last-Event-ID` from a request |
//! | [`MAX_NODE_ID_LEN`] | 64 ASCII letters, digits, `-`, `_` | building a hub |
//! | [`MAX_IDEMPOTENCY_KEY_LEN`] | 256 visible ASCII characters | an idempotent publish |

/// Longest accepted topic or user name, in bytes. Names are otherwise free:
/// any UTF-8, including dots, spaces and wildcards, which every broker maps
/// to its own safe naming.
pub const MAX_NAME_LEN: usize = 1024;

/// Most topics one connection may follow (each one may be a bus
/// subscription on this node).
pub const MAX_TOPICS_PER_CONNECTION: usize = 256;

/// Largest event data a publish accepts by default, in bytes.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 1 << 20;

/// Longest `Last-Event-ID` passed on as it is, in bytes (the longest id a
/// hub writes is [`MAX_EVENT_ID_LEN`](crate::resume::MAX_EVENT_ID_LEN)).
pub const MAX_LAST_EVENT_ID_LEN: usize = 4096;

/// Longest node id, in bytes.
pub const MAX_NODE_ID_LEN: usize = 64;

/// Longest idempotency key, in bytes (see
/// [`Hub::publish_idempotent`](crate::Hub::publish_idempotent)). Keys are 1
/// to this many visible ASCII characters (`!` to `~`: no space, no control
/// character), so a key fits an HTTP header, a Redis key and a NATS header
/// as it is.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// Checks an idempotency key: `Err` carries the message every refusal uses.
pub(crate) fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(format!(
            "idempotency keys must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes"
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("idempotency keys are visible ASCII characters only ('!' to '~')".into());
    }
    Ok(())
}

/// Checks a topic or user name: `Err` carries the message every refusal
/// uses.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "topic and user names must be 1 to {MAX_NAME_LEN} bytes"
        ));
    }
    Ok(())
}

/// True for a valid node id: 1 to [`MAX_NODE_ID_LEN`] ASCII letters,
/// digits, `-` or `_`.
pub(crate) fn valid_node_id(id: &str) -> bool {
    (1..=MAX_NODE_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("a").is_ok());
        assert!(check_name(&"é".repeat(MAX_NAME_LEN / 2)).is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn idempotency_keys() {
        assert!(check_idempotency_key("order-42/shipped").is_ok());
        assert!(check_idempotency_key(&"k".repeat(MAX_IDEMPOTENCY_KEY_LEN)).is_ok());
        for bad in ["", "a b", "é", "a\nb", "\u{7f}"] {
            assert!(check_idempotency_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_idempotency_key(&"k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1)).is_err());
    }

    #[test]
    fn node_ids() {
        assert!(valid_node_id("node-1_a"));
        assert!(valid_node_id(&"n".repeat(MAX_NODE_ID_LEN)));
        for bad in ["", "a.b", "a b", "é"] {
            assert!(!valid_node_id(bad), "{bad:?}");
        }
        assert!(!valid_node_id(&"n".repeat(MAX_NODE_ID_LEN + 1)));
    }
}
