//! Idempotency keys remembered in process memory for a window: the memory
//! store's, and the node-local window of a hub or publisher (see
//! [`Hub::publish_idempotent`](crate::Hub::publish_idempotent)).
//!
//! Keys are scoped by channel (the same key on two targets is two
//! publishes) and forgotten once the window has passed, oldest first (by
//! the next keyed publish: an idle window keeps its keys, within its
//! bound, until then). The
//! window is bounded in bytes ([`MAX_KEY_BYTES`]): past it the oldest keys
//! are forgotten early (a repeat of such a key would then go out again), so
//! a flood of distinct keys cannot grow the process without limit.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::Channel;
use crate::wire::Position;

/// Most bytes one window spends on keys (the keys, the channel names and a
/// fixed cost per entry): 16 MiB, some 100 000 keys of typical sizes.
pub const MAX_KEY_BYTES: usize = 16 << 20;

/// What a window remembers of the first publish of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FirstPublish {
    /// Where it was stored (`None`: not stored, node-local window).
    pub(crate) position: Option<Position>,
    /// Its message id.
    pub(crate) msg: Box<str>,
}

/// A key of one channel.
type Scoped = (Channel, Box<str>);

/// Bytes an entry counts for, besides its key and channel name: the map
/// slot, the queue slot and the allocations' headers, roughly.
const ENTRY_OVERHEAD: usize = 96;

/// Idempotency keys and their first publish, for a window of time.
#[derive(Debug)]
pub(crate) struct KeyWindow {
    window: Duration,
    budget: usize,
    seen: HashMap<Scoped, (u64, FirstPublish)>,
    /// Insertion order (which is time order: one window for all), with the
    /// sequence number telling a key's current entry from an earlier one.
    order: VecDeque<(Instant, u64, Scoped)>,
    next: u64,
    bytes: usize,
}

fn cost(channel: &Channel, key: &str) -> usize {
    let name = match channel {
        Channel::Broadcast => 0,
        Channel::Node(n) | Channel::Topic(n) | Channel::User(n) => n.len(),
    };
    name + 2 * key.len() + ENTRY_OVERHEAD
}

impl KeyWindow {
    /// An empty window of `window` (allocates nothing until used).
    pub(crate) fn new(window: Duration) -> Self {
        Self::with_budget(window, MAX_KEY_BYTES)
    }

    fn with_budget(window: Duration, budget: usize) -> Self {
        Self {
            window,
            budget,
            seen: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            bytes: 0,
        }
    }

    /// The first publish of `key` on `channel`, if it is still in the
    /// window at `now`.
    pub(crate) fn get(
        &mut self,
        now: Instant,
        channel: &Channel,
        key: &str,
    ) -> Option<&FirstPublish> {
        self.expire(now);
        // Allocates a lookup key only on keyed publishes, which are rare
        // next to the rest of the work they do.
        self.seen
            .get(&(channel.clone(), Box::from(key)))
            .map(|(_, first)| first)
    }

    /// Remembers `first` as the first publish of `key` on `channel` at
    /// `now`, replacing what was remembered.
    pub(crate) fn insert(
        &mut self,
        now: Instant,
        channel: &Channel,
        key: &str,
        first: FirstPublish,
    ) {
        self.expire(now);
        let seq = self.next;
        self.next += 1;
        let scoped: Scoped = (channel.clone(), Box::from(key));
        if self.seen.insert(scoped.clone(), (seq, first)).is_none() {
            self.bytes += cost(channel, key);
        }
        self.order.push_back((now, seq, scoped));
        while self.bytes > self.budget {
            if !self.pop_oldest() {
                break;
            }
        }
    }

    /// Sets the position of the remembered first publish of `key` on
    /// `channel` (known once it is stored), if it is still remembered.
    pub(crate) fn set_position(&mut self, channel: &Channel, key: &str, position: Position) {
        if let Some((_, first)) = self.seen.get_mut(&(channel.clone(), Box::from(key))) {
            first.position = Some(position);
        }
    }

    /// Forgets `key` on `channel` (its publish failed: a retry must go out).
    pub(crate) fn remove(&mut self, channel: &Channel, key: &str) {
        if self
            .seen
            .remove(&(channel.clone(), Box::from(key)))
            .is_some()
        {
            self.bytes -= cost(channel, key);
        }
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        *self = Self::with_budget(self.window, self.budget);
    }

    /// Forgets the keys older than the window.
    fn expire(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Forgets the oldest entry; false when there is none.
    fn pop_oldest(&mut self) -> bool {
        let Some((_, seq, scoped)) = self.order.pop_front() else {
            return false;
        };
        // Only the key's current entry: one removed and inserted again
        // since has a newer sequence number.
        if self.seen.get(&scoped).is_some_and(|(s, _)| *s == seq) {
            self.seen.remove(&scoped);
            self.bytes -= cost(&scoped.0, &scoped.1);
        }
        true
    }

    /// Bytes counted now.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(msg: &str) -> FirstPublish {
        FirstPublish {
            position: Some(Position::new(1, 0)),
            msg: msg.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_scoped_by_channel_and_expire_with_the_window() {
        let mut keys = KeyWindow::new(Duration::from_secs(2));
        let (a, b) = (Channel::Topic("a".into()), Channel::Topic("b".into()));
        let t0 = Instant::now();
        assert!(keys.get(t0, &a, "k").is_none());
        keys.insert(t0, &a, "k", first("m1"));
        assert_eq!(keys.get(t0, &a, "k"), Some(&first("m1")));
        assert!(keys.get(t0, &b, "k").is_none(), "another target");
        let later = t0 + Duration::from_millis(1999);
        assert_eq!(keys.get(later, &a, "k").map(|f| &*f.msg), Some("m1"));
        assert!(keys.get(t0 + Duration::from_secs(2), &a, "k").is_none());
        assert_eq!(keys.bytes(), 0, "all forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_key_can_be_inserted_again_and_outlives_its_old_entry() {
        let mut keys = KeyWindow::new(Duration::from_secs(2));
        let a = Channel::Topic("a".into());
        let t0 = Instant::now();
        keys.insert(t0, &a, "k", first("m1"));
        keys.remove(&a, "k");
        assert!(keys.get(t0, &a, "k").is_none());
        let t1 = t0 + Duration::from_secs(1);
        keys.insert(t1, &a, "k", first("m2"));
        // The old entry's expiry does not take the new one.
        let t2 = t0 + Duration::from_millis(2500);
        assert_eq!(keys.get(t2, &a, "k").map(|f| &*f.msg), Some("m2"));
        assert_eq!(keys.bytes(), cost(&a, "k"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_forgets_the_oldest_keys_first() {
        let a = Channel::Topic("a".into());
        let budget = 3 * cost(&a, "k0");
        let mut keys = KeyWindow::with_budget(Duration::from_secs(60), budget);
        let now = Instant::now();
        for i in 0..5 {
            keys.insert(now, &a, &format!("k{i}"), first("m"));
            assert!(keys.bytes() <= budget);
        }
        assert!(keys.get(now, &a, "k1").is_none());
        assert!(keys.get(now, &a, "k2").is_some());
        assert!(keys.get(now, &a, "k4").is_some());
        keys.clear();
        assert!(keys.get(now, &a, "k4").is_none());
        assert_eq!(keys.bytes(), 0);
    }
}
