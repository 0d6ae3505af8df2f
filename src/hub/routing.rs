//! Routing what arrives from the bus: the hub's [`BusSink`]. A message goes
//! to presence (control messages), through the resume layer (positioned
//! events of resumable channels, with history on), or straight to the
//! registry's fan-out (everything else, at most once).

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Weak;

use bytes::Bytes;

use super::Inner;
use crate::broker::{BrokerStatus, BusSink, Channel};
use crate::history::is_resumable;
use crate::registry::ConnectionId;
use crate::wire::{Envelope, Position};

/// The hub's end of the broker. Holds the hub weakly: a broker that
/// outlives its hub delivers to no one.
pub(super) struct Inbox(pub(super) Weak<Inner>);

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Inbox")
    }
}

impl BusSink for Inbox {
    fn deliver(&self, channel: &Channel, payload: Bytes) {
        if let Some(inner) = self.0.upgrade() {
            inner.on_bus_message(channel, &payload, None);
        }
    }

    fn deliver_at(&self, channel: &Channel, payload: Bytes, position: Position) {
        if let Some(inner) = self.0.upgrade() {
            inner.on_bus_message(channel, &payload, Some(position));
        }
    }

    fn status_changed(&self, status: BrokerStatus) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        inner.counters.broker_up(status == BrokerStatus::Up);
        if status == BrokerStatus::Up {
            // Status changes come one at a time (`report_status`). The
            // resync holds every connection before the flag clears: a live
            // event of a resumable channel is held either way until the
            // connection's replay (see `Resumer::deliver`).
            if inner.bus_down.load(Ordering::Acquire) {
                tracing::info!("broker is back");
                inner.recover(None);
                inner.bus_down.store(false, Ordering::Release);
            }
        } else if !inner.bus_down.swap(true, Ordering::AcqRel) {
            inner.counters.bus_outage();
            tracing::warn!("broker is down: events published on other nodes are not received");
        }
    }

    fn messages_lost(&self, channel: Option<&Channel>) {
        if let Some(inner) = self.0.upgrade() {
            tracing::warn!(channel = ?channel, "the broker dropped messages");
            inner.recover(channel);
        }
    }
}

impl Inner {
    /// One message from the bus.
    pub(super) fn on_bus_message(
        &self,
        channel: &Channel,
        payload: &[u8],
        position: Option<Position>,
    ) {
        let c = &self.counters;
        let max_data = self.limits.max_event_size;
        // Refused before parsing: no envelope of an event within the limit
        // is this long (JSON escaping at most sextuples the data).
        if payload.len() > max_data.saturating_mul(6).saturating_add(64 * 1024) {
            c.bus_in();
            return c.bus_malformed(
                channel,
                &format_args!("a bus message of {} bytes", payload.len()),
            );
        }
        if crate::presence::is_control(payload) {
            return self.presence.on_control(channel, payload);
        }
        if crate::wire::is_command(payload) {
            c.bus_in();
            return self.on_command(channel, payload);
        }
        c.bus_in();

        // With history, this hub's own events reach its connections through
        // the bus (in position order), so the echo is not skipped.
        let resumer = self.resumer.as_ref().filter(|_| is_resumable(channel));
        if resumer.is_none() && payload.starts_with(&self.echo_prefix) {
            return c.bus_echo();
        }
        let envelope = match Envelope::decode(payload) {
            Ok(env) => env,
            Err(err) => return c.bus_malformed(channel, &err),
        };
        if envelope.data.len() > max_data {
            let err = format_args!(
                "event data of {} bytes over the limit of {max_data}",
                envelope.data.len()
            );
            return c.bus_malformed(channel, &err);
        }
        if let Some(resumer) = resumer {
            let bus_down = self.bus_down.load(Ordering::Acquire);
            if let Some(out) = resumer.deliver(channel, &envelope, position, bus_down) {
                return c.frame_from_bus(envelope.ts_us, out);
            }
        }
        if envelope.origin.as_deref() == Some(&*self.instance) {
            return c.bus_echo();
        }
        let frame = match envelope.encode_frame() {
            Ok(frame) => frame,
            Err(err) => return c.bus_malformed(channel, &err),
        };
        let out = match channel {
            Channel::Node(_) => match envelope.conn.as_deref().and_then(ConnectionId::parse) {
                Some(id) => self.registry.send_to_connection(&id, &frame),
                None => {
                    let err = "node-channel message without a valid \"conn\"";
                    return c.bus_malformed(channel, &err);
                }
            },
            _ => self.registry.send_on(channel, &frame),
        };
        c.frame_from_bus(envelope.ts_us, out);
    }

    /// After an outage or lost messages of `channel` (all channels for
    /// `None`): with history, the affected connections replay what they
    /// missed; without, they get a gap event (if enabled).
    fn recover(&self, channel: Option<&Channel>) {
        if let Some(resumer) = &self.resumer {
            resumer.resync(channel);
        } else if self.gap_events {
            let frame = Bytes::from_static(crate::stream::GAP_BUS_FRAME);
            let out = match channel {
                Some(channel @ (Channel::Topic(_) | Channel::User(_))) => {
                    self.registry.send_on(channel, &frame)
                }
                _ => self.registry.send_to_all(&frame),
            };
            self.counters.gap_events(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::broker::memory::MemoryBus;
    use crate::broker::{Broker, BusSink, Channel};
    use crate::{Hub, Subscription};
    use bytes::Bytes;
    use futures_util::StreamExt;
    use std::sync::Arc;

    struct Ignore;
    impl BusSink for Ignore {
        fn deliver(&self, _: &Channel, _: Bytes) {}
        fn status_changed(&self, _: crate::BrokerStatus) {}
    }

    #[tokio::test]
    async fn foreign_malformed_and_echo_messages() {
        let bus = MemoryBus::new();
        let hub = Hub::builder().broker(bus.broker()).build().await.unwrap();
        let conn = hub.connect(Subscription::new().topic("t")).await.unwrap();
        let mut stream = conn.into_stream();
        let _retry = stream.next().await;
        let other = bus.broker();
        other.start(Arc::new(Ignore)).await.unwrap();
        let topic = Channel::Topic("t".into());
        for bad in [&b"{"[..], br#"{"v":7}"#, br#"{"v":1,"event":"a\nb"}"#] {
            other
                .publish(&topic, Bytes::from_static(bad))
                .await
                .unwrap();
        }
        let node = Channel::Node(hub.node_id().into());
        other
            .publish(&node, Bytes::from_static(br#"{"v":1,"data":"x"}"#))
            .await
            .unwrap();
        other
            .publish(&topic, Bytes::from_static(br#"{"v":1,"data":"ok"}"#))
            .await
            .unwrap();
        assert_eq!(&stream.next().await.unwrap()[..], b"data: ok\n\n");
        let stats = hub.stats();
        assert_eq!((stats.bus_in, stats.bus_malformed), (5, 4));
    }

    #[tokio::test]
    async fn a_hostile_id_is_refused_with_history_on_too() {
        use crate::history::{memory::MemoryHistory, Retention};
        let bus = MemoryBus::new();
        let history = Arc::new(MemoryHistory::new(&bus, Retention::default()));
        let hub = Hub::builder()
            .broker(bus.broker())
            .history(history)
            .build()
            .await
            .unwrap();
        let mut stream = hub
            .connect(Subscription::new().topic("t"))
            .await
            .unwrap()
            .into_stream();
        let other = bus.broker();
        other.start(Arc::new(Ignore)).await.unwrap();
        let topic = Channel::Topic("t".into());
        let stamped = br#"{"v":1,"id":"a\u0000b","data":"bad","pos":"1","epoch":"e"}"#;
        other
            .publish(&topic, Bytes::from_static(stamped))
            .await
            .unwrap();
        let good = br#"{"v":1,"data":"good","pos":"2","epoch":"e"}"#;
        other
            .publish(&topic, Bytes::from_static(good))
            .await
            .unwrap();
        loop {
            let frame = stream.next().await.unwrap();
            assert!(!frame.windows(3).any(|w| w == b"bad"), "{frame:?}");
            if frame.windows(4).any(|w| w == b"good") {
                break;
            }
        }
        assert_eq!(hub.stats().bus_malformed, 1);
    }
}
