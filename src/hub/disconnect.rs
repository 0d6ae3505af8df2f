//! Ending streams across the cluster: [`Hub::disconnect`] closes the
//! matching streams here and sends a command on the target's bus channel
//! so that every node holding one closes it too; each stream gets a final
//! [`CLOSED_EVENT`] first.

use std::time::Duration;

use bytes::Bytes;

use super::{Hub, Inner};
use crate::broker::Channel;
use crate::event::Event;
use crate::outbound::{Disconnect, PublishError, Target};
use crate::registry::ConnectionId;
use crate::wire::{Command, CommandOp};

/// The final event of a stream ended by [`Hub::disconnect`]:
/// `event: sse-cluster.closed`, `data: {"reason": R, "reconnect": B}`,
/// preceded by a `retry:`.
///
/// With `"reconnect": true` (a rebalance) the `retry:` is short and drawn
/// from [`HubBuilder::shutdown_retry`](crate::HubBuilder::shutdown_retry),
/// so the browser comes back soon, through the balancer, and resumes. With
/// `false` (a revoked user) it is [`NO_RECONNECT_RETRY`] (an hour): the page
/// should call `eventSource.close()` when it sees the event, and a client
/// that comes back anyway meets the app's authorization again.
pub const CLOSED_EVENT: &str = "sse-cluster.closed";

/// The `retry:` of a [`CLOSED_EVENT`] that says not to reconnect: one hour.
pub const NO_RECONNECT_RETRY: Duration = Duration::from_secs(3600);

impl Hub {
    /// Ends every stream that `target` reaches on every node (one
    /// connection, a user's connections, a topic's subscribers, or all),
    /// each after a final [`CLOSED_EVENT`] carrying `how`.
    ///
    /// Streams held here are closed before this returns; their number is
    /// the result. Other nodes close theirs when the command reaches them
    /// over the bus (only the nodes that hold the target receive it); each
    /// node counts what it closed in
    /// [`HubStats::closed_by_command`](crate::HubStats::closed_by_command)
    /// and the `sse_connections_closed_by_command_total` metric, so the
    /// cluster-wide count is the sum over nodes. An error means the local
    /// streams were closed but the command did not reach the bus (a
    /// transient [`PublishError::Broker`] while the broker is down: retry
    /// it), or that `how.reason` is invalid (then nothing was closed).
    ///
    /// ```
    /// # async fn demo(hub: sse_cluster::Hub) -> Result<(), sse_cluster::PublishError> {
    /// use sse_cluster::{hub::Disconnect, Target};
    /// let closed_here = hub.disconnect(Target::user("42"), Disconnect::revoke("revoked")).await?;
    /// # let _ = closed_here;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn disconnect(&self, target: Target, how: Disconnect) -> Result<u64, PublishError> {
        let inner = &self.inner;
        let channel = target.channel();
        let command = inner.outbound.disconnect_command(&target, &how)?;
        let local_only = matches!(&target, Target::Connection(id) if id.node() == &*inner.node_id);
        let closed = inner.close_matching(&channel, command.conn.as_deref(), &command);
        if !local_only {
            inner
                .outbound
                .send_command(&channel, &command)
                .await
                .inspect_err(|_| {
                    inner.counters.bus_error();
                })?;
        }
        Ok(closed)
    }
}

impl Inner {
    /// A command from the bus on `channel`.
    pub(super) fn on_command(&self, channel: &Channel, payload: &[u8]) {
        let command = match Command::decode(payload) {
            Ok(command) => command,
            Err(err) => return self.counters.bus_malformed(channel, &err),
        };
        if command.origin.as_deref() == Some(&*self.instance) {
            return; // closed before it was sent
        }
        match command.op {
            CommandOp::Disconnect => {
                if matches!(channel, Channel::Node(_)) && command.conn.is_none() {
                    let err = "node-channel command without a valid \"conn\"";
                    return self.counters.bus_malformed(channel, &err);
                }
                self.close_matching(channel, command.conn.as_deref(), &command);
            }
        }
    }

    /// Closes the streams `channel` reaches here (the connection `conn` on
    /// a node channel), each after its own final frame; returns how many.
    fn close_matching(&self, channel: &Channel, conn: Option<&str>, command: &Command<'_>) -> u64 {
        let last = || self.closed_frame(&command.reason, command.reconnect);
        let closed = match channel {
            Channel::Node(_) => match conn.and_then(ConnectionId::parse) {
                Some(id) => u64::from(self.registry.close_connection(&id, last())),
                None => 0,
            },
            _ => self.registry.close_on(channel, last),
        };
        self.counters.closed_by_command(closed);
        closed
    }

    /// `retry:` and the [`CLOSED_EVENT`]; a fresh delay per stream when it
    /// should reconnect, so that the clients do not all come back at once.
    pub(super) fn closed_frame(&self, reason: &str, reconnect: bool) -> Bytes {
        let retry = if reconnect {
            self.reconnect_delay()
        } else {
            NO_RECONNECT_RETRY
        };
        let data = serde_json::json!({ "reason": reason, "reconnect": reconnect }).to_string();
        match Event::new().event(CLOSED_EVENT) {
            Ok(event) => event.data(data).retry(retry).encode(),
            // The name is a constant that passes the check.
            Err(_) => crate::event::retry_frame(retry),
        }
    }
}
