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
/// Changes are applied to the broker in rounds, one round after the other,
/// so that a subscribe and an unsubscribe of the same channel can never
/// overtake each other. Each change re-reads the registry, so the broker
/// converges on the registry's current interest whatever the order of
/// connects and disconnects. Connects naming few channels go in a queue of
/// their own that every round empties first, so they never wait behind
/// other connects' hundreds of topics.
#[derive(Debug)]
pub(super) struct Subscriptions {
    commands: mpsc::UnboundedSender<Command>,
    /// Changes a connect of at most [`SMALL_CONNECT`] channels waits for.
    urgent: mpsc::UnboundedSender<Command>,
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
        let (urgent, urgent_rx) = mpsc::unbounded_channel();
        let manager = Manager {
            broker: broker.clone(),
            registry,
            active: active.clone(),
        };
        tokio::spawn(manager.run(urgent_rx, rx));
        Self {
            commands,
            urgent,
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
        let queue = if channels.len() <= SMALL_CONNECT {
            &self.urgent
        } else {
            &self.commands
        };
        let mut pending = Vec::new();
        for channel in channels {
            let settled = self.active.get(&channel).is_some_and(|s| *s);
            if fresh.contains(&channel) || !settled {
                let (done, wait) = oneshot::channel();
                let cmd = Command::Sync {
                    channel,
                    done: Some(done),
                };
                queue.send(cmd).map_err(drop)?;
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

/// Most commands the manager takes in one round (from each queue).
const MAX_BATCH: usize = 1024;

/// A connect of at most this many channels (a user and a few topics) is
/// served by the urgent queue.
const SMALL_CONNECT: usize = 8;

impl Manager {
    /// Takes every command waiting (up to [`MAX_BATCH`]) as one round: each
    /// channel once, its change computed from the registry now, and the
    /// broker calls of the round issued together. A connect naming 256 new
    /// topics then costs one round, not 256 turns in a queue that every
    /// other connect waits behind. Rounds run one after the other, so two
    /// changes of one channel never overtake each other.
    async fn run(
        self,
        mut urgent: mpsc::UnboundedReceiver<Command>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut batch = Vec::new();
        loop {
            let first = tokio::select! {
                biased;
                Some(cmd) = urgent.recv() => cmd,
                Some(cmd) = commands.recv() => cmd,
                else => return,
            };
            batch.push(first);
            for queue in [&mut urgent, &mut commands] {
                let mut taken = 0;
                while taken < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(cmd) => batch.push(cmd),
                        Err(_) => break,
                    }
                    taken += 1;
                }
            }
            let mut channels = Vec::with_capacity(batch.len());
            let mut seen = std::collections::HashSet::with_capacity(batch.len());
            let mut dones = Vec::new();
            let mut stop = None;
            for cmd in batch.drain(..) {
                match cmd {
                    Command::Sync { channel, done } => {
                        if seen.insert(channel.clone()) {
                            channels.push(channel);
                        }
                        dones.extend(done);
                    }
                    Command::Stop(done) => stop = Some(done),
                }
            }
            self.sync(channels).await;
            for done in dones {
                let _ = done.send(());
            }
            if let Some(done) = stop {
                self.unsubscribe_all().await;
                let _ = done.send(());
                return;
            }
        }
    }

    /// Makes the broker's subscriptions to `channels` match the registry.
    async fn sync(&self, channels: Vec<Channel>) {
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        for channel in channels {
            let active = self.active.contains_key(&channel);
            if active {
                // Mark it unsettled *before* reading the interest: a connect
                // that registers meanwhile then waits for this change
                // instead of trusting a subscription that may be about to go.
                self.active.insert(channel.clone(), false);
            }
            let wanted = self.registry.has_interest(&channel);
            if wanted && active {
                self.active.insert(channel, true);
            } else if wanted {
                subscribe.push(channel);
            } else if active {
                unsubscribe.push(channel);
            }
        }
        let broker = &*self.broker;
        let subscribed = subscribe.iter().map(|channel| async move {
            match tokio::time::timeout(BROKER_CALL_LIMIT, broker.subscribe(channel)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(%channel, error = %err, "subscribe failed; the broker will retry")
                }
                Err(_) => {
                    tracing::warn!(%channel, "subscribe is taking long; the broker will retry")
                }
            }
        });
        futures_util::future::join_all(subscribed).await;
        // Marked active even on error: the broker keeps the interest and
        // restores it when it reconnects (see the `Broker` contract).
        for channel in subscribe {
            self.active.insert(channel, true);
        }
        let unsubscribed = unsubscribe.iter().map(|channel| async move {
            match tokio::time::timeout(BROKER_CALL_LIMIT, broker.unsubscribe(channel)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(%channel, error = %err, "unsubscribe failed"),
                Err(_) => tracing::warn!(%channel, "unsubscribe timed out"),
            }
        });
        futures_util::future::join_all(unsubscribed).await;
        for channel in unsubscribe {
            self.active.remove(&channel);
        }
    }

    async fn unsubscribe_all(&self) {
        let channels: Vec<Channel> = self.active.iter().map(|e| e.key().clone()).collect();
        for channel in channels {
            if let Err(err) = self.broker.unsubscribe(&channel).await {
                tracing::debug!(%channel, error = %err, "unsubscribe at shutdown failed");
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

    /// A broker whose subscribes each take 20 ms (of paused, virtual time).
    #[derive(Debug)]
    struct Slow(Arc<crate::broker::memory::MemoryBroker>);

    #[async_trait::async_trait]
    impl Broker for Slow {
        async fn start(&self, sink: Arc<dyn BusSink>) -> Result<(), BrokerError> {
            self.0.start(sink).await
        }
        async fn publish(&self, channel: &Channel, payload: Bytes) -> Result<(), BrokerError> {
            self.0.publish(channel, payload).await
        }
        async fn subscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            self.0.subscribe(channel).await
        }
        async fn unsubscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
            self.0.unsubscribe(channel).await
        }
        fn status(&self) -> tokio::sync::watch::Receiver<BrokerStatus> {
            self.0.status()
        }
    }

    /// 16 connects of 256 fresh topics each are waiting when an ordinary
    /// connect comes: it waits for one round of broker calls, not for 4096
    /// of them one after the other (82 s at 20 ms each).
    #[tokio::test(start_paused = true)]
    async fn a_connect_does_not_wait_behind_other_connects_topics() {
        let bus = MemoryBus::new();
        let broker = Arc::new(Slow(bus.broker()));
        broker.start(Arc::new(Ignore)).await.unwrap();
        let registry = Arc::new(ConnectionRegistry::default());
        let subs = Arc::new(Subscriptions::start(broker, registry.clone()));
        let mut keep = Vec::new();
        let mut waits = Vec::new();
        for c in 0..16u64 {
            let topics: Vec<Arc<str>> = (0..256).map(|t| format!("c{c}-t{t}").into()).collect();
            let channels: Vec<Channel> = topics.iter().cloned().map(Channel::Topic).collect();
            let (tx, rx) = channel(&StreamConfig::default());
            let id = ConnectionId::new("n.x", 1, c + 1);
            let fresh = registry.register(id, None, topics.into(), tx);
            keep.push(rx);
            let subs = subs.clone();
            waits.push(tokio::spawn(
                async move { subs.ensure(channels, &fresh).await },
            ));
        }
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        let (tx, _rx) = channel(&StreamConfig::default());
        let fresh = registry.register(
            ConnectionId::new("n.x", 1, 99),
            None,
            vec!["mine".into()].into(),
            tx,
        );
        subs.ensure(vec![Channel::Topic("mine".into())], &fresh)
            .await
            .unwrap();
        let waited = started.elapsed();
        assert!(
            waited <= std::time::Duration::from_millis(60),
            "an ordinary connect waited {waited:?} of virtual time"
        );
        for wait in waits {
            wait.await.unwrap().unwrap();
        }
        assert_eq!(bus.subscribers(&Channel::Topic("c15-t255".into())), 1);
    }
}
