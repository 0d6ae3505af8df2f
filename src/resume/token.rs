//! Resume tokens: an event id made at render time, for a connection that
//! does not exist yet (see [`Hub::resume_token`](crate::Hub::resume_token)).

use std::sync::Arc;

use http::StatusCode;

use super::id::{channel_key, epoch_tag, write_id, Mark, MAX_RESUMABLE_CHANNELS};
use super::resumable_channels;
use crate::broker::{BrokerError, Channel};
use crate::history::History;
use crate::wire::Position;

/// Why no resume token could be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeTokenError {
    /// The hub (or publisher) has no history store: a connect could replay
    /// nothing, so there is nothing to resume from (HTTP 501).
    #[error("no history store is configured: there is nothing to resume from")]
    NoHistory,
    /// A topic or user name is invalid, or there are too many topics
    /// (HTTP 400); a connect would refuse the subscription alike.
    #[error("invalid subscription: {0}")]
    InvalidSubscription(String),
    /// The subscription follows more than
    /// [`MAX_RESUMABLE_CHANNELS`](crate::resume::MAX_RESUMABLE_CHANNELS)
    /// resumable channels (everyone, its user, its topics): its connections
    /// carry no positions and cannot be resumed (HTTP 400).
    #[error("more than {MAX_RESUMABLE_CHANNELS} resumable channels: such a connection cannot be resumed")]
    NotResumable,
    /// The history store could not be read; [`BrokerError::is_transient`]
    /// tells whether a retry may succeed (HTTP 503 if so, else 500).
    #[error("the history store is unavailable: {0}")]
    HistoryUnavailable(#[source] BrokerError),
}

impl ResumeTokenError {
    /// The HTTP status that answers a token request failing this way.
    ///
    /// ```
    /// use sse_cluster::ResumeTokenError;
    ///
    /// assert_eq!(ResumeTokenError::NoHistory.status(), http::StatusCode::NOT_IMPLEMENTED);
    /// ```
    pub fn status(&self) -> StatusCode {
        match self {
            ResumeTokenError::NoHistory => StatusCode::NOT_IMPLEMENTED,
            ResumeTokenError::InvalidSubscription(_) | ResumeTokenError::NotResumable => {
                StatusCode::BAD_REQUEST
            }
            ResumeTokenError::HistoryUnavailable(err) if err.is_transient() => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ResumeTokenError::HistoryUnavailable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The token of a connection to `user` and `topics` (checked, sorted,
/// without repeats): the id its connect's replay would end with if it
/// connected now. Each channel stands at its head; a channel without
/// history yet at the empty epoch (tag 0) and its head (position 0 for the
/// stores that keep epochs per channel), which a connect resumes from the
/// channel's beginning in whatever epoch it has by then.
pub(crate) async fn token(
    history: &dyn History,
    user: Option<&Arc<str>>,
    topics: &[Arc<str>],
) -> Result<String, ResumeTokenError> {
    let channels = resumable_channels(user, topics);
    if channels.len() > MAX_RESUMABLE_CHANNELS {
        return Err(ResumeTokenError::NotResumable);
    }
    let asks: Vec<(Channel, Option<Position>)> =
        channels.iter().map(|c| (c.clone(), None)).collect();
    let heads = history
        .heads(&asks)
        .await
        .map_err(ResumeTokenError::HistoryUnavailable)?;
    if heads.len() != channels.len() {
        return Err(ResumeTokenError::HistoryUnavailable(BrokerError::Backend {
            source: "the store answered heads for other channels than asked".into(),
            transient: false,
        }));
    }
    let marks = channels.iter().zip(&heads).map(|(channel, head)| Mark {
        key: channel_key(channel),
        epoch: epoch_tag(&head.epoch),
        position: head.last,
    });
    let mut out = Vec::with_capacity(2 + 18 * channels.len());
    write_id(&mut out, marks, true);
    // The codec writes ASCII only.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryBus;
    use crate::history::memory::MemoryHistory;
    use crate::history::Retention;
    use crate::resume::id::{parse_last_id, LastId, NO_EPOCH};

    #[tokio::test]
    async fn a_token_names_every_channel_at_its_head() {
        let bus = MemoryBus::new();
        let store = MemoryHistory::new(&bus, Retention::default());
        let news = Channel::Topic("news".into());
        for _ in 0..3 {
            store.append(&news, "{\"v\":1}".into()).await.unwrap();
        }
        let user: Arc<str> = "u".into();
        let token = token(&store, Some(&user), &["news".into(), "quiet".into()])
            .await
            .unwrap();
        let LastId::Marks(marks) = parse_last_id(&token) else {
            panic!("{token}")
        };
        let heads = store.heads(&[(news.clone(), None)]).await.unwrap();
        let epoch = epoch_tag(&heads[0].epoch);
        let keys: Vec<u32> = [
            Channel::Broadcast,
            Channel::User(user),
            news,
            Channel::Topic("quiet".into()),
        ]
        .iter()
        .map(channel_key)
        .collect();
        assert_eq!(marks.iter().map(|m| m.key).collect::<Vec<_>>(), keys);
        assert!(marks
            .iter()
            .all(|m| m.epoch == epoch && m.epoch != NO_EPOCH));
        let positions: Vec<u64> = marks.iter().map(|m| m.position.major()).collect();
        assert_eq!(positions, [0, 0, 3, 0]);
    }

    #[tokio::test]
    async fn too_many_channels_is_refused() {
        let bus = MemoryBus::new();
        let store = MemoryHistory::new(&bus, Retention::default());
        let topics: Vec<Arc<str>> = (0..MAX_RESUMABLE_CHANNELS)
            .map(|i| Arc::from(format!("t{i}")))
            .collect();
        assert!(matches!(
            token(&store, None, &topics).await,
            Err(ResumeTokenError::NotResumable)
        ));
        assert!(token(&store, None, &topics[1..]).await.is_ok());
    }
}
