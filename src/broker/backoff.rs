//! Reconnecting: the exponential backoff with full jitter and the
//! stop-aware pause that the network brokers' connection tasks share.

use std::time::Duration;

use tokio::sync::watch;

/// Exponential backoff with full jitter: each delay is drawn from the upper
/// half of a ceiling that doubles from `min` up to `max`.
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// Back to the shortest delay (after a successful connect).
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }

    pub(crate) fn delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let ms = u64::try_from(ceiling.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_millis(fastrand::u64(ms / 2..=ms))
    }
}

/// Resolves once `stop` says the broker is stopping.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleeps for `delay` unless the broker stops meanwhile; false if it
/// stopped.
pub(crate) async fn pause(stop: &watch::Sender<bool>, delay: Duration) -> bool {
    let mut watching = stop.subscribe();
    tokio::select! {
        _ = tokio::time::sleep(delay) => !*stop.borrow(),
        _ = stopped(&mut watching) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<_> = (0..5).map(|_| b.delay().as_millis()).collect();
        assert!((50..=100).contains(&d[0]), "{d:?}");
        assert!((100..=200).contains(&d[1]), "{d:?}");
        assert!((200..=400).contains(&d[4]), "{d:?}");
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }
}
