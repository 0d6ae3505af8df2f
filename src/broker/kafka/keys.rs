//! Record keys and partitions: a channel's key is its name, and its
//! partition is the one Kafka's default partitioner picks for that key
//! (murmur2, as the Java client and kafka-python compute it), so that a
//! record another client produces with the default partitioner lands where
//! this crate produces and replays that channel.

use crate::broker::Channel;

/// The record key of `channel`: `broadcast`, `node:{n}`, `topic:{t}` or
/// `user:{u}` (the channel's `Display`).
pub(crate) fn record_key(channel: &Channel) -> Vec<u8> {
    channel.to_string().into_bytes()
}

/// Kafka's murmur2 (seed `0x9747b28c`), as `org.apache.kafka.common.utils.Utils.murmur2`.
pub(crate) fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // The Java code works on an `int` length; keys are far below 2^31.
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if let Some(first) = rest.first() {
        h ^= u32::from(*first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition Kafka's default partitioner gives `key` among
/// `partitions` (at least 1).
pub(crate) fn partition_of(key: &[u8], partitions: i32) -> i32 {
    let positive = murmur2(key) & 0x7fff_ffff;
    let n = u32::try_from(partitions.max(1)).unwrap_or(1);
    i32::try_from(positive % n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values Kafka's Java partitioner gives these keys among 1000
    /// partitions (the compatibility table kafka-python tests against).
    #[test]
    fn murmur2_matches_the_java_partitioner() {
        for (key, partition) in [
            (&b""[..], 681),
            (b"a", 524),
            (b"ab", 434),
            (b"abc", 107),
            (b"123456789", 566),
            (b"\x00 ", 742),
        ] {
            assert_eq!(partition_of(key, 1000), partition, "{key:?}");
        }
    }

    #[test]
    fn keys_are_the_channel_names() {
        assert_eq!(record_key(&Channel::Topic("news".into())), b"topic:news");
        assert_eq!(record_key(&Channel::Broadcast), b"broadcast");
        // As kafka-python's default partitioner places them among 3.
        assert_eq!(partition_of(b"user:42", 3), 1);
        assert_eq!(partition_of(b"topic:news", 3), 0);
    }
}
