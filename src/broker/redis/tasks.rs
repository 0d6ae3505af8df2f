//! The broker's two connection tasks: the subscriber (a dedicated RESP3
//! connection with a liveness probe, resubscribing after every reconnect)
//! and the publisher (the multiplexed connection publishes share), with
//! their backoff.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, RedisResult};
use tokio::sync::mpsc;

use super::sentinel::is_primary;
use super::{unavailable, Control, Shared};
use crate::broker::backoff::{pause, stopped, Backoff};

/// Most channels one `SUBSCRIBE` (or `SSUBSCRIBE`) names.
const MAX_SUBSCRIBE_BATCH: usize = 512;

/// A connection to one server, or to a Redis Cluster (sharded mode).
#[derive(Clone)]
pub(super) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Runs `command` for every name at once, each on its own clone of `conn`
/// (pipelined on a multiplexed or cluster connection).
async fn for_each_name<C, F, Fut>(conn: &C, names: &[String], command: F) -> RedisResult<()>
where
    C: Clone,
    F: Fn(C, String) -> Fut,
    Fut: std::future::Future<Output = RedisResult<()>>,
{
    let each = names.iter().map(|name| command(conn.clone(), name.clone()));
    futures_util::future::try_join_all(each).await.map(drop)
}

impl Conn {
    /// Sharded channels need one command each (each confirmation is the
    /// reply; on a cluster, each channel lives on its slot's shard): they
    /// are issued together.
    async fn subscribe(&mut self, sharded: bool, names: &[String]) -> RedisResult<()> {
        match self {
            _ if names.is_empty() => Ok(()),
            Conn::Single(conn) if !sharded => conn.subscribe(names).await,
            Conn::Single(conn) => {
                for_each_name(conn, names, |mut c, name| async move {
                    redis::cmd("SSUBSCRIBE").arg(name).exec_async(&mut c).await
                })
                .await
            }
            Conn::Cluster(conn) => {
                for_each_name(conn, names, |mut c, name| async move {
                    c.ssubscribe(name).await
                })
                .await
            }
        }
    }

    async fn unsubscribe(&mut self, sharded: bool, names: &[String]) -> RedisResult<()> {
        match self {
            _ if names.is_empty() => Ok(()),
            Conn::Single(conn) if !sharded => conn.unsubscribe(names).await,
            Conn::Single(conn) => {
                for_each_name(conn, names, |mut c, name| async move {
                    redis::cmd("SUNSUBSCRIBE")
                        .arg(name)
                        .exec_async(&mut c)
                        .await
                })
                .await
            }
            Conn::Cluster(conn) => {
                for_each_name(conn, names, |mut c, name| async move {
                    c.sunsubscribe(name).await
                })
                .await
            }
        }
    }

    /// The liveness probe: `PING`, or with Sentinel `ROLE`, which fails
    /// if the server is no longer the primary.
    async fn probe(&mut self, sentinel: bool) -> RedisResult<()> {
        match self {
            Conn::Single(conn) if sentinel => match is_primary(conn).await? {
                true => Ok(()),
                false => Err(not_primary()),
            },
            Conn::Single(conn) => redis::cmd("PING").exec_async(conn).await,
            Conn::Cluster(conn) => redis::cmd("PING").exec_async(conn).await,
        }
    }

    /// Publishes one message. Concurrent publishes on clones of one
    /// multiplexed connection are written back to back without waiting for
    /// replies: under load they are pipelined by the connection itself.
    pub(super) async fn publish(
        &mut self,
        sharded: bool,
        channel: &str,
        payload: &[u8],
    ) -> RedisResult<()> {
        let command = if sharded { "SPUBLISH" } else { "PUBLISH" };
        let cmd = redis::cmd(command).arg(channel).arg(payload).take();
        match self {
            Conn::Single(conn) => cmd.exec_async(conn).await,
            Conn::Cluster(conn) => cmd.exec_async(conn).await,
        }
    }
}

impl Shared {
    async fn connect(&self, push: Option<PushHandler>) -> RedisResult<Conn> {
        let config = &self.config;
        if self.cluster_nodes.is_empty() {
            let mut settings = self.connection_config();
            if let Some(push) = push {
                settings = settings.set_push_sender(push);
            }
            let Some(sentinel) = &config.sentinel else {
                let conn = self
                    .client
                    .get_multiplexed_async_connection_with_config(&settings)
                    .await?;
                return Ok(Conn::Single(conn));
            };
            let primary = redis::Client::open(self.resolve_primary(sentinel).await?)?;
            let mut conn = primary
                .get_multiplexed_async_connection_with_config(&settings)
                .await?;
            if !is_primary(&mut conn).await? {
                return Err(not_primary());
            }
            return Ok(Conn::Single(conn));
        }
        let mut builder = ClusterClientBuilder::new(self.cluster_nodes.clone())
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.response_timeout)
            .retries(1);
        if let Some(push) = push {
            builder = builder.push_sender(push);
        }
        let conn = builder.build()?.get_async_connection().await?;
        Ok(Conn::Cluster(conn))
    }
}

/// The server reached is not (or no longer) the primary.
fn not_primary() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "the server is not the primary (a failover happened)",
    ))
}

type PushHandler = Box<dyn Fn(PushInfo) -> Result<(), Infallible> + Send + Sync>;

/// Keeps the subscription connection alive: connect, subscribe every
/// interest, serve interest changes and probe liveness; on any failure,
/// report Down, back off and start over.
pub(super) async fn run_subscriber(
    shared: Arc<Shared>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let sharded = shared.config.sharded;
    let sentinel = shared.config.sentinel.is_some();
    let mut backoff = Backoff::new(shared.config.backoff_min, shared.config.backoff_max);
    let mut stop = shared.stop.subscribe();
    while !shared.stopped() {
        let (lost_tx, mut lost) = mpsc::unbounded_channel();
        let handler = {
            let shared = Arc::downgrade(&shared);
            move |info: PushInfo| -> Result<(), Infallible> {
                if let Some(shared) = shared.upgrade() {
                    shared.on_push(info, &lost_tx);
                }
                Ok(())
            }
        };
        let connected = async {
            let mut conn = shared.connect(Some(Box::new(handler))).await?;
            let names: Vec<String> = shared.interests().iter().map(|c| shared.name(c)).collect();
            conn.subscribe(sharded, &names).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        let result = tokio::select! {
            result = connected => result,
            _ = stopped(&mut stop) => return,
        };
        let mut conn = match result {
            Ok(conn) => conn,
            Err(err) => {
                tracing::debug!(error = %err, "redis subscription connect failed");
                shared.set_up(&shared.sub_up, false);
                // Interest changes meanwhile are already in `interests`.
                while let Ok(cmd) = control.try_recv() {
                    if let Control::Subscribe(_, done) = cmd {
                        let _ = done.send(Err(unavailable(&err)));
                    }
                }
                if !pause(&shared.stop, backoff.delay()).await {
                    return;
                }
                continue;
            }
        };
        shared.counters.connects.fetch_add(1, Ordering::Relaxed);
        shared.set_up(&shared.sub_up, true);
        backoff.reset();
        tracing::info!("redis subscription connected");

        let mut probe = tokio::time::interval(shared.config.ping_interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        probe.tick().await;
        let reason = loop {
            tokio::select! {
                _ = lost.recv() => break "connection lost".to_string(),
                _ = probe.tick() => {
                    if let Err(err) = conn.probe(sentinel).await {
                        if sentinel {
                            // The publish connection talks to the same
                            // server: replace it too.
                            let current = shared.pub_conn.borrow().as_ref().map(|(g, _)| *g);
                            if let Some(generation) = current {
                                shared.report_broken(generation);
                            }
                        }
                        break format!("liveness probe failed: {err}");
                    }
                }
                cmd = control.recv() => {
                    let Some(cmd) = cmd else {
                        return;
                    };
                    if let Err(reason) = apply(&shared, &mut conn, &mut control, cmd).await {
                        break reason;
                    }
                }
                _ = stopped(&mut stop) => return,
            }
        };
        shared.counters.disconnects.fetch_add(1, Ordering::Relaxed);
        shared.set_up(&shared.sub_up, false);
        tracing::warn!(%reason, "redis subscription down; reconnecting");
        drop(conn);
        if !pause(&shared.stop, backoff.delay()).await {
            return;
        }
    }
}

/// Applies `first` and every interest change waiting behind it (up to
/// [`MAX_SUBSCRIBE_BATCH`]) as one `SUBSCRIBE` and one `UNSUBSCRIBE`: a
/// connect naming 256 topics, or 16 of them at once, costs a round trip or
/// two, not one per channel in a queue every other connect waits behind.
/// Subscribes go first; an unsubscribe is skipped if the interest is back,
/// so the order between the two for one channel is kept. `Err` is why the
/// connection must be replaced.
async fn apply(
    shared: &Shared,
    conn: &mut Conn,
    control: &mut mpsc::UnboundedReceiver<Control>,
    first: Control,
) -> Result<(), String> {
    let sharded = shared.config.sharded;
    let (mut names, mut dones, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    let mut next = Some(first);
    while let Some(cmd) = next.take() {
        match cmd {
            Control::Subscribe(name, done) => {
                names.push(name);
                dones.push(done);
            }
            Control::Unsubscribe(name) => gone.push(name),
        }
        if names.len() + gone.len() < MAX_SUBSCRIBE_BATCH {
            next = control.try_recv().ok();
        }
    }
    let result = conn.subscribe(sharded, &names).await;
    let failed = result
        .as_ref()
        .err()
        .map(|err| format!("subscribe failed: {err}"));
    for done in dones {
        let _ = done.send(result.as_ref().map(drop).map_err(unavailable));
    }
    if let Some(reason) = failed {
        return Err(reason);
    }
    let gone: Vec<String> = {
        let interests = shared.interests();
        gone.into_iter()
            .filter(|c| !interests.contains(c))
            .map(|c| shared.name(&c))
            .collect()
    };
    conn.unsubscribe(sharded, &gone)
        .await
        .map_err(|err| format!("unsubscribe failed: {err}"))
}

/// Keeps the publish connection ready for callers: connects, hands it out,
/// and replaces it as soon as it closes or a publish finds it broken.
pub(super) async fn run_publisher(shared: Arc<Shared>) {
    let mut backoff = Backoff::new(shared.config.backoff_min, shared.config.backoff_max);
    let mut generation = 0u64;
    let mut stop = shared.stop.subscribe();
    while !shared.stopped() {
        // The connection tells us when it closes (server restart, idle
        // timeout), so an idle publisher reconnects before it is needed and
        // never reports Up over a dead connection.
        let (lost_tx, mut lost) = mpsc::unbounded_channel();
        let handler: PushHandler = Box::new(move |info: PushInfo| {
            if info.kind == PushKind::Disconnection {
                let _ = lost_tx.send(());
            }
            Ok(())
        });
        let conn = match shared.connect(Some(handler)).await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::debug!(error = %err, "redis publish connect failed");
                shared.set_up(&shared.pub_up, false);
                if !pause(&shared.stop, backoff.delay()).await {
                    return;
                }
                continue;
            }
        };
        generation += 1;
        shared.pub_conn.send_replace(Some((generation, conn)));
        shared.set_up(&shared.pub_up, true);
        backoff.reset();
        loop {
            let broken = shared.pub_broken_notify.notified();
            tokio::pin!(broken);
            broken.as_mut().enable();
            if shared.pub_broken.load(Ordering::SeqCst) == generation {
                tracing::warn!("redis publish connection broken; reconnecting");
                break;
            }
            tokio::select! {
                _ = lost.recv() => {
                    tracing::info!("redis publish connection closed; reconnecting");
                    break;
                }
                _ = &mut broken => continue,
                _ = stopped(&mut stop) => return,
            }
        }
        // Reconnect at once; the status drops to Down only if that fails, so
        // an idle timeout is not an outage.
        shared.pub_conn.send_replace(None);
        shared.counters.disconnects.fetch_add(1, Ordering::Relaxed);
    }
}
