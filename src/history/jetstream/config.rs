//! The settings of a [`JetStreamHistory`](super::JetStreamHistory).

use std::time::Duration;

use crate::history::Retention;

/// The stream's message age limit when [`Retention::max_age`] is `None`
/// (see [`JetStreamConfig::idle_ttl`]): 7 days.
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where the stream keeps its messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Storage {
    /// On disk: survives server restarts. The default.
    #[default]
    File,
    /// In memory: faster, lost when the server restarts (clients then get
    /// the reset event).
    Memory,
}

/// Settings of a [`JetStreamHistory`](super::JetStreamHistory).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JetStreamConfig {
    /// The stream's name; `None`: `{PREFIX}_HISTORY` from the broker's
    /// prefix, upper-cased, with `.` as `_`.
    pub stream: Option<String>,
    /// How much history to keep per channel.
    pub retention: Retention,
    /// Where the stream keeps its messages. Default: file.
    pub storage: Storage,
    /// Replicas of the stream (in a JetStream cluster). Default: 1.
    pub replicas: usize,
    /// How long a JetStream request (publish ack, get, consumer) may take.
    /// Default: 5 s.
    pub timeout: Duration,
    /// The stream's message age limit when [`Retention::max_age`] is `None`,
    /// so that nothing the store writes stays forever. Default:
    /// [`DEFAULT_IDLE_TTL`] (7 days). JetStream (before 2.11) can expire
    /// messages only by age, not by a channel's idleness: unlike Redis,
    /// where an active channel keeps [`Retention::max_len`] events however
    /// old, an active channel here keeps only this much time of events.
    pub idle_ttl: Duration,
}

impl JetStreamConfig {
    /// Defaults, keeping `retention`.
    pub fn new(retention: Retention) -> Self {
        Self {
            stream: None,
            retention,
            storage: Storage::File,
            replicas: 1,
            timeout: Duration::from_secs(5),
            idle_ttl: DEFAULT_IDLE_TTL,
        }
    }

    /// Sets [`JetStreamConfig::idle_ttl`] (at least 1 s).
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Sets [`JetStreamConfig::stream`].
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = Some(name.into());
        self
    }

    /// Sets [`JetStreamConfig::storage`].
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// Sets [`JetStreamConfig::replicas`] (at least 1).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// Sets [`JetStreamConfig::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(10));
        self
    }
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self::new(Retention::default())
    }
}
