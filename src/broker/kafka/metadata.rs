//! The topic's epoch: its topic id (a UUID Kafka gives a topic when it
//! creates it, new when it is deleted and created again) and its partition
//! count, as `{topic id in hex}.{partitions}`.
//!
//! rskafka speaks Metadata up to version 4, which has no topic ids (they
//! came with version 10, Kafka 2.8), so this asks one broker itself: an
//! `ApiVersions` v0 request, then a `Metadata` v10 request for the topic,
//! on a short-lived connection of its own. A broker that does not answer
//! Metadata v10, or answers a null topic id, gives the epoch
//! `none.{partitions}`: then a recreated topic is not told from the old
//! one (only a position past a partition's end is), which the history's
//! docs say.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::KafkaConfig;
use crate::broker::BrokerError;

const API_VERSIONS: i16 = 18;
const METADATA: i16 = 3;
const METADATA_VERSION: i16 = 10;
/// Largest answer read (a one-topic metadata answer is small).
const MAX_ANSWER: usize = 1 << 20;

/// The epoch of `config.topic`, which has `partitions` partitions.
pub(super) async fn epoch(
    config: &KafkaConfig,
    partitions: i32,
) -> Result<std::sync::Arc<str>, BrokerError> {
    let limit = config.request_timeout;
    let mut last = BrokerError::Unavailable("no Kafka broker answered".into());
    for address in &config.brokers {
        match tokio::time::timeout(limit * 2, topic_id(address, &config.topic, limit)).await {
            Ok(Ok(id)) => {
                let id = id.map_or_else(|| "none".to_owned(), |id| hex(&id));
                return Ok(format!("{id}.{partitions}").into());
            }
            Ok(Err(err)) => last = err,
            Err(_) => {
                last = BrokerError::Unavailable(format!("kafka metadata from {address} timed out"))
            }
        }
    }
    Err(last)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn malformed(what: &str) -> BrokerError {
    BrokerError::Backend {
        source: format!("kafka metadata answer: {what}").into(),
        transient: true,
    }
}

/// The topic id of `topic` as `address` knows it; `None` when the broker
/// has none to give.
async fn topic_id(
    address: &str,
    topic: &str,
    limit: Duration,
) -> Result<Option<[u8; 16]>, BrokerError> {
    let unavailable = |e: std::io::Error| BrokerError::Unavailable(format!("kafka {address}: {e}"));
    let mut stream = tokio::time::timeout(limit, TcpStream::connect(address))
        .await
        .map_err(|_| BrokerError::Unavailable(format!("kafka {address}: connect timed out")))?
        .map_err(unavailable)?;

    // ApiVersions v0: does the broker answer Metadata v10?
    let mut request = header(API_VERSIONS, 0, 1);
    let answer = exchange(&mut stream, &mut request, 1)
        .await
        .map_err(unavailable)?;
    let mut r = Reader(&answer);
    if r.i16()? != 0 {
        return Ok(None);
    }
    let count = r.i32()?;
    let mut supported = false;
    for _ in 0..count.max(0) {
        let (key, min, max) = (r.i16()?, r.i16()?, r.i16()?);
        if key == METADATA && (min..=max).contains(&METADATA_VERSION) {
            supported = true;
        }
    }
    if !supported {
        return Ok(None);
    }

    // Metadata v10 for the topic (flexible: compact arrays and strings,
    // tagged fields).
    let mut request = header(METADATA, METADATA_VERSION, 2);
    request.push(0); // header tagged fields
    request.push(2); // one topic
    request.extend_from_slice(&[0; 16]); // topic id: unknown
    uvarint(&mut request, topic.len() + 1);
    request.extend_from_slice(topic.as_bytes());
    request.push(0); // topic tagged fields
    request.extend_from_slice(&[0, 0, 0]); // no auto-creation, no authorized operations
    request.push(0); // tagged fields
    let answer = exchange(&mut stream, &mut request, 2)
        .await
        .map_err(unavailable)?;
    let mut r = Reader(&answer);
    r.tagged()?; // response header
    r.i32()?; // throttle
    for _ in 0..r.compact_len()? {
        r.i32()?; // node id
        r.compact_string()?; // host
        r.i32()?; // port
        r.compact_string()?; // rack
        r.tagged()?;
    }
    r.compact_string()?; // cluster id
    r.i32()?; // controller id
    for _ in 0..r.compact_len()? {
        let error = r.i16()?;
        let name = r.compact_string()?;
        let id = r.uuid()?;
        if name.as_deref() == Some(topic.as_bytes()) {
            return Ok((error == 0 && id != [0; 16]).then_some(id));
        }
        r.u8()?; // is internal
        for _ in 0..r.compact_len()? {
            r.skip(2 + 4 + 4 + 4)?; // error, index, leader, leader epoch
            for _ in 0..3 {
                let n = r.compact_len()?;
                r.skip(4 * n)?;
            }
            r.tagged()?;
        }
        r.i32()?; // authorized operations
        r.tagged()?;
    }
    Ok(None)
}

/// A request header (v1 fields: key, version, correlation id, client id).
fn header(key: i16, version: i16, correlation: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0; 4]); // size, set by `exchange`
    out.extend_from_slice(&key.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&correlation.to_be_bytes());
    let client = b"sse-cluster";
    out.extend_from_slice(&(client.len() as i16).to_be_bytes());
    out.extend_from_slice(client);
    out
}

fn uvarint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Sends `request` (its size filled in) and reads the answer to
/// `correlation`, returning what follows the correlation id.
async fn exchange(
    stream: &mut TcpStream,
    request: &mut [u8],
    correlation: i32,
) -> std::io::Result<Vec<u8>> {
    let size = u32::try_from(request.len() - 4).unwrap_or(u32::MAX);
    request[..4].copy_from_slice(&size.to_be_bytes());
    stream.write_all(request).await?;
    let size = usize::try_from(stream.read_u32().await?).unwrap_or(usize::MAX);
    if !(4..=MAX_ANSWER).contains(&size) {
        return Err(std::io::Error::other(format!("answer of {size} bytes")));
    }
    let mut answer = vec![0; size];
    stream.read_exact(&mut answer).await?;
    if answer[..4] != correlation.to_be_bytes() {
        return Err(std::io::Error::other("answer to another request"));
    }
    answer.drain(..4);
    Ok(answer)
}

/// Reads the big-endian and compact types of the Kafka protocol; every read
/// checks the length (the answer comes from outside).
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], BrokerError> {
        if self.0.len() < n {
            return Err(malformed("cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn skip(&mut self, n: usize) -> Result<(), BrokerError> {
        self.take(n).map(drop)
    }

    fn u8(&mut self) -> Result<u8, BrokerError> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, BrokerError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, BrokerError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn uuid(&mut self) -> Result<[u8; 16], BrokerError> {
        let mut id = [0; 16];
        id.copy_from_slice(self.take(16)?);
        Ok(id)
    }

    fn uvarint(&mut self) -> Result<usize, BrokerError> {
        let mut n: usize = 0;
        for shift in (0..35).step_by(7) {
            let b = self.u8()?;
            n |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(malformed("varint too long"))
    }

    /// A compact array's length (null reads as empty).
    fn compact_len(&mut self) -> Result<usize, BrokerError> {
        let n = self.uvarint()?.saturating_sub(1);
        if n > self.0.len() {
            return Err(malformed("array longer than the answer"));
        }
        Ok(n)
    }

    fn compact_string(&mut self) -> Result<Option<Vec<u8>>, BrokerError> {
        match self.uvarint()? {
            0 => Ok(None),
            n => Ok(Some(self.take(n - 1)?.to_vec())),
        }
    }

    fn tagged(&mut self) -> Result<(), BrokerError> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.skip(size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_refuse_short_and_hostile_answers() {
        assert!(Reader(&[0, 1]).i32().is_err());
        assert!(Reader(&[0xff; 8]).uvarint().is_err());
        assert!(Reader(&[0x7f]).compact_len().is_err());
        assert_eq!(Reader(&[0]).compact_string().unwrap(), None);
        assert_eq!(
            Reader(&[3, b'a', b'b']).compact_string().unwrap(),
            Some(b"ab".to_vec())
        );
        let mut out = Vec::new();
        uvarint(&mut out, 300);
        assert_eq!(Reader(&out).uvarint().unwrap(), 300);
    }
}
