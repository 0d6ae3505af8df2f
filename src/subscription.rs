//! What a connection asks for: its user, its topics, a greeting and the
//! `Last-Event-ID` it resumes from. [`Hub::connect`](crate::Hub::connect)
//! takes one; an [`Authorizer`](crate::auth::Authorizer) may rewrite it.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::event::Event;
use crate::history::History;
use crate::limits::{check_name, MAX_TOPICS_PER_CONNECTION};
use crate::registry::ConnectionId;
use crate::resume::ResumeTokenError;

/// Name of the event that ends a stream at its subscription's expiry (see
/// [`Subscription::expires_at`]; the JWT authorizer sets it from the token's
/// `exp`). Its data is `{"reason":"expired"}`. The stream ends right after
/// it; the page should close its `EventSource`, get a fresh token and open a
/// new one (reconnecting with the old token would be refused with 401).
pub const EXPIRED_EVENT: &str = "sse-cluster.expired";

/// The [`EXPIRED_EVENT`] frame.
pub(crate) const EXPIRED_FRAME: &[u8] =
    b"event: sse-cluster.expired\ndata: {\"reason\":\"expired\"}\n\n";

/// Builds a connection's first event from its id.
pub(crate) type Greeting = Box<dyn FnOnce(&ConnectionId) -> Event + Send>;

/// What a connection follows.
///
/// ```
/// use sse_cluster::Subscription;
///
/// let sub = Subscription::new().user("42").topic("prices").topic("news");
/// ```
#[must_use]
#[derive(Default)]
pub struct Subscription {
    pub(crate) user: Option<String>,
    pub(crate) topics: Vec<String>,
    pub(crate) greeting: Option<Greeting>,
    pub(crate) last_event_id: Option<String>,
    pub(crate) expires: Option<SystemTime>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("user", &self.user)
            .field("topics", &self.topics)
            .field("greeting", &self.greeting.is_some())
            .field("last_event_id", &self.last_event_id)
            .field("expires", &self.expires)
            .finish()
    }
}

impl Subscription {
    /// Follows nothing yet (only broadcasts and events sent to the connection itself).
    pub fn new() -> Self {
        Self::default()
    }

    /// The user this connection belongs to: it receives [`Target::User`](crate::Target::User) events.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Adds a topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Adds topics.
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }

    /// An event sent first on the stream (after the initial `retry:`), built
    /// from the new connection's id; e.g. to tell the client its id.
    pub fn greeting(mut self, make: impl FnOnce(&ConnectionId) -> Event + Send + 'static) -> Self {
        self.greeting = Some(Box::new(make));
        self
    }

    /// The `Last-Event-ID` the client sent when reconnecting (see
    /// [`resume::last_event_id`](crate::resume::last_event_id)). With a
    /// history configured, the connection resumes after it; see
    /// [`resume`](crate::resume). Without one it is ignored.
    pub fn last_event_id(mut self, id: impl Into<String>) -> Self {
        self.last_event_id = Some(id.into());
        self
    }

    /// Like [`Subscription::last_event_id`], for an optional id.
    pub fn resume_from(mut self, id: Option<String>) -> Self {
        self.last_event_id = id;
        self
    }

    /// Ends the stream at `at` (to within the runtime's timer resolution, a
    /// millisecond) with an [`EXPIRED_EVENT`], after the events already
    /// queued; nothing published later reaches it. Given twice, the earlier
    /// time holds, so a layer can shorten a subscription but never extend
    /// it. A time already past ends the stream at once.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use sse_cluster::Subscription;
    ///
    /// let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
    /// let sub = Subscription::new().topic("news").expires_at(in_an_hour);
    /// assert_eq!(sub.expiry(), Some(in_an_hour));
    /// ```
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires = Some(self.expires.map_or(at, |old| old.min(at)));
        self
    }

    /// When the stream ends, if it does (see [`Subscription::expires_at`]).
    pub fn expiry(&self) -> Option<SystemTime> {
        self.expires
    }

    /// The user, if set.
    pub fn user_id(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The topics, as given.
    pub fn topic_names(&self) -> &[String] {
        &self.topics
    }

    /// Keeps only the topics for which `keep` returns true.
    pub fn retain_topics(mut self, mut keep: impl FnMut(&str) -> bool) -> Self {
        self.topics.retain(|t| keep(t));
        self
    }
}

/// A subscription's user and its topics, checked.
pub(crate) type Names = (Option<Arc<str>>, Vec<Arc<str>>);

/// A subscription's user and topics, checked (every name valid, at most
/// [`MAX_TOPICS_PER_CONNECTION`] topics), the topics sorted and without
/// repeats. `Err` is why the subscription is invalid.
pub(crate) fn checked_names(user: Option<String>, topics: Vec<String>) -> Result<Names, String> {
    let user: Option<Arc<str>> = match user {
        Some(u) => {
            check_name(&u)?;
            Some(u.into())
        }
        None => None,
    };
    let mut checked = Vec::with_capacity(topics.len());
    for topic in topics {
        check_name(&topic)?;
        checked.push(Arc::<str>::from(topic));
    }
    checked.sort_unstable();
    checked.dedup();
    if checked.len() > MAX_TOPICS_PER_CONNECTION {
        return Err(format!(
            "at most {MAX_TOPICS_PER_CONNECTION} topics per connection"
        ));
    }
    Ok((user, checked))
}

/// [`Hub::resume_token`](crate::Hub::resume_token) and
/// [`Publisher::resume_token`](crate::Publisher::resume_token): the token of
/// `sub` in `history`. The names are taken before the future: a
/// subscription (its greeting) need not be `Sync`, the future is `Send`.
pub(crate) fn resume_token(
    history: Option<Arc<dyn History>>,
    sub: &Subscription,
) -> impl std::future::Future<Output = Result<String, ResumeTokenError>> + Send + 'static {
    let names = checked_names(sub.user.clone(), sub.topics.clone());
    async move {
        let history = history.ok_or(ResumeTokenError::NoHistory)?;
        let (user, topics) = names.map_err(ResumeTokenError::InvalidSubscription)?;
        crate::resume::token(history.as_ref(), user.as_ref(), &topics).await
    }
}
