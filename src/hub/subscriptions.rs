//! The subscription manager: makes the broker's subscriptions follow the
//! registry's interest (interest-based routing), one change at a time.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use crate::broker::{Broker, BrokerError, Channel};
use crate::registry::ConnectionRegistry;

/// Longest a broker subscribe or unsubscribe may hold up the subscription
/// manager (and so every connect waiting behind it).
pub(super) const BROKER_CALL_LIMIT: Duration = Duration::from_secs(5);

enum Command {
    /// Make the broker's subscription to `channel` match the registry's
    /// interest in it; then signal `done`.
    Sync {
        channel: Channel,
        done: Option<oneshot::Sender<()>>,
    },
    /// Unsubscribe everything and stop.
    Stop(oneshot::Sender<()>),
}

/// The hub's handle on its subscriptions.
///
/// Changes are applied to the broker one at a time, in order, so that a
/// subscribe and an unsubscribe of the same channel can never overtake each
/// other. Each change re-reads the registry, so the broker converges on the
/// registry's current interest whatever the order of connects and
/// disconnects.
#[derive(Debug)]
pub(super) struct Subscriptions {
    commands: mpsc::UnboundedSender<Command>,
    /// Channels the broker is subscribed to; `false` while an unsubscribe
    /// is in flight.
    active: Arc<DashMap<Channel, bool>>,
    broker: Arc<dyn Broker>,
}

impl Subscriptions {
    /// Starts the manager task. Must run inside a Tokio runtime.
    pub(super) fn start(broker: Arc<dyn Broker>, registry: Arc<ConnectionRegistry>) -> Self {
        let active = Arc::new(DashMap::new());
        let (commands, rx) = mpsc::unbounded_channel();
        let manager = Manager {
            broker: broker.clone(),
            registry,
            active: active.clone(),
        };
        tokio::spawn(manager.run(rx));
        Self {
            commands,
            active,
            broker,
        }
    }

    /// Subscribes the channels a node always listens to (its own and the
    /// broadcast channel). An unreachable server is no error: the broker
    /// keeps the interest and subscribes once it can reach its server, and
    /// the node starts, degraded, meanwhile.
    pub(super) async fn listen(&self, fixed: [Channel; 2]) -> Result<(), BrokerError> {
        for channel in fixed {
            match self.broker.subscribe(&channel).await {
                Ok(()) => {}
                Err(err) if err.is_transient() => {
                    tracing::warn!(%channel, error = %err, "broker unreachable at start; will subscribe on reconnect");
                }
                Err(err) => return Err(err),
            }
            self.active.insert(channel, true);
        }
        Ok(())
    }

    /// Bus channels listened to now.
    pub(super) fn len(&self) -> usize {
        self.active.len()
    }

    /// Waits until the bus delivers each of `channels` here. `fresh` are
    /// the channels that had no local interest before (they need a
    /// subscribe); the others may still be settling. `Err` when the manager
    /// has stopped (the hub is shutting down).
    pub(super) async fn ensure(&self, channels: Vec<Channel>, fresh: &[Channel]) -> Result<(), ()> {
        let mut pending = Vec::new();
        for channel in channels {
            let settled = self.active.get(&channel).is_some_and(|s| *s);
            if fresh.contains(&channel) || !settled {
                let (done, wait) = oneshot::channel();
                let cmd = Command::Sync {
                    channel,
                    done: Some(done),
                };
                self.commands.send(cmd).map_err(drop)?;
                pending.push(wait);
            }
        }
        for wait in pending {
            wait.await.map_err(drop)?;
        }
        Ok(())
    }

    /// Re-reads the interest in `channel` (after a connection left).
    pub(super) fn sync(&self, channel: Channel) {
        let _ = self.commands.send(Command::Sync {
            channel,
            done: None,
        });
    }

    /// Unsubscribes everything and stops the manager; waits at most
    /// [`BROKER_CALL_LIMIT`] (a broker that cannot answer must not hold the
    /// shutdown hostage).
    pub(super) async fn stop(&self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Stop(done)).is_ok() {
            let _ = tokio::time::timeout(BROKER_CALL_LIMIT, wait).await;
        }
    }
}

struct Manager {
    broker: Arc<dyn Broker>,
    registry: Arc<ConnectionRegistry>,
    active: Arc<DashMap<Channel, bool>>,
}

impl Manager {
    async fn run(self, mut commands: mpsc::UnboundedReceiver<Command>) {
        while let Some(cmd) = commands.recv().await {
            match cmd {
                Command::Sync { channel, done } => {
                    self.sync(channel).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
                Command::Stop(done) => {
                    let channels: Vec<Channel> =
                        self.active.iter().map(|e| e.key().clone()).collect();
                    for channel in channels {
                        if let Err(err) = self.broker.unsubscribe(&channel).await {
                            tracing::debug!(%channel, error = %err, "unsubscribe at shutdown failed");
                        }
                        self.active.remove(&channel);
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    async fn sync(&self, channel: Channel) {
        let active = self.active.contains_key(&channel);
        if active {
            // Mark it unsettled *before* reading the interest: a connect that
            // registers meanwhile then waits for this change instead of
            // trusting a subscription that may be about to go.
            self.active.insert(channel.clone(), false);
        }
        let wanted = self.registry.has_interest(&channel);
        if wanted && active {
            self.active.insert(channel, true);
        } else if wanted {
            // Marked active even on error: the broker keeps the interest and
            // restores it when it reconnects (see the `Broker` contract).
            match tokio::time::timeout(BROKER_CALL_LIMIT, self.broker.subscribe(&channel)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(%channel, error = %err, "subscribe failed; the broker will retry")
                }
                Err(_) => {
                    tracing::warn!(%channel, "subscribe is taking long; the broker will retry")
                }
            }
            self.active.insert(channel, true);
        } else if active {
            match tokio::time::timeout(BROKER_CALL_LIMIT, self.broker.unsubscribe(&channel)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(%channel, error = %err, "unsubscribe failed"),
                Err(_) => tracing::warn!(%channel, "unsubscribe timed out"),
            }
            self.active.remove(&channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryBus;
    use crate::broker::{BrokerStatus, BusSink};
    use crate::registry::ConnectionId;
    use crate::stream::{channel, StreamConfig};
    use bytes::Bytes;

    struct Ignore;
    impl BusSink for Ignore {
        fn deliver(&self, _: &Channel, _: Bytes) {}
        fn status_changed(&self, _: BrokerStatus) {}
    }

    #[tokio::test]
    async fn the_broker_follows_the_registry() {
        let bus = MemoryBus::new();
        let broker = bus.broker();
        broker.start(Arc::new(Ignore)).await.unwrap();
        let registry = Arc::new(ConnectionRegistry::default());
        let subs = Subscriptions::start(broker, registry.clone());
        let fixed = [Channel::Node("n".into()), Channel::Broadcast];
        subs.listen(fixed).await.unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(bus.subscribers(&Channel::Broadcast), 1);

        let topic = Channel::Topic("t".into());
        let id = ConnectionId::new("n.x", 1, 1);
        let (tx, _rx) = channel(&StreamConfig::default());
        let fresh = registry.register(id.clone(), None, vec!["t".into()].into(), tx);
        subs.ensure(vec![topic.clone()], &fresh).await.unwrap();
        assert_eq!(bus.subscribers(&topic), 1);
        assert_eq!(subs.len(), 3);

        for channel in registry.unregister(&id) {
            subs.sync(channel);
        }
        // A settled no-op change waits behind the unsubscribe.
        subs.ensure(vec![Channel::Broadcast], &[Channel::Broadcast])
            .await
            .unwrap();
        assert_eq!(bus.subscribers(&topic), 0);
        assert_eq!(subs.len(), 2);

        subs.stop().await;
        assert_eq!(bus.subscribers(&Channel::Broadcast), 0);
        assert!(subs.ensure(vec![topic], &[]).await.is_err());
    }
}
