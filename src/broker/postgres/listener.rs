//! The listening connection: connect, `LISTEN` every interest, serve
//! interest changes and probe liveness; on any failure report Down, back
//! off and start over. Its reader hands notifications to the hub, reading
//! referenced envelopes from the payload table without reordering them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{AsyncMessage, Client};

use super::{query_failed, unavailable, Control, PgConnection, Shared};
use crate::broker::backoff::{pause, stopped, Backoff};
use crate::broker::{BrokerStatus, Channel};

/// Most channels one `LISTEN`/`UNLISTEN` batch names.
const MAX_LISTEN_BATCH: usize = 512;

/// `name` as a quoted identifier (names are `a-z`, `0-9` and `_` only, so
/// nothing needs escaping; quoting keeps them exact).
fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// One `LISTEN` (or `UNLISTEN`) per name, sent as one simple query.
async fn batch(client: &Client, command: &str, names: &[String]) -> Result<(), String> {
    if names.is_empty() {
        return Ok(());
    }
    let sql: String = names
        .iter()
        .map(|n| format!("{command} {};", quoted(n)))
        .collect();
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| format!("{command} failed: {e}"))
}

/// Keeps the listening connection alive (see the module docs).
pub(super) async fn run(shared: Arc<Shared>, mut control: mpsc::UnboundedReceiver<Control>) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    let mut stop = shared.stop.subscribe();
    while !shared.stopped() {
        let connected = async {
            let (client, connection) = shared.connect().await.map_err(|e| e.to_string())?;
            let (lost_tx, lost) = oneshot::channel();
            let reader = tokio::spawn(read(shared.clone(), connection, lost_tx));
            let names: Vec<String> = shared
                .interests
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect();
            let listened = tokio::time::timeout(
                config.response_timeout * 4,
                batch(&client, "LISTEN", &names),
            )
            .await;
            match listened {
                Ok(Ok(())) => Ok((client, reader, lost)),
                Ok(Err(err)) => {
                    reader.abort();
                    Err(err)
                }
                Err(_) => {
                    reader.abort();
                    Err("LISTEN timed out".to_string())
                }
            }
        };
        let result = tokio::select! {
            result = connected => result,
            _ = stopped(&mut stop) => return,
        };
        let (client, reader, mut lost) = match result {
            Ok(parts) => parts,
            Err(err) => {
                tracing::debug!(error = %err, "postgres listening connect failed");
                shared.set_status(BrokerStatus::Down);
                // Interest changes meanwhile are already in `interests`.
                while let Ok(cmd) = control.try_recv() {
                    if let Control::Listen(_, done) = cmd {
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
        shared.set_status(BrokerStatus::Up);
        backoff.reset();
        tracing::info!("postgres listening connection up");

        let mut probe = tokio::time::interval(config.ping_interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        probe.tick().await;
        let reason = loop {
            tokio::select! {
                why = &mut lost => break why.unwrap_or_else(|_| "reader ended".into()),
                _ = probe.tick() => {
                    match tokio::time::timeout(config.response_timeout, client.simple_query("")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(err)) => break format!("liveness probe failed: {err}"),
                        Err(_) => break "liveness probe timed out".to_string(),
                    }
                }
                cmd = control.recv() => {
                    let Some(cmd) = cmd else {
                        reader.abort();
                        return;
                    };
                    if let Err(reason) = apply(&shared, &client, &mut control, cmd).await {
                        break reason;
                    }
                }
                _ = stopped(&mut stop) => {
                    reader.abort();
                    return;
                }
            }
        };
        reader.abort();
        drop(client);
        shared.counters.disconnects.fetch_add(1, Ordering::Relaxed);
        shared.set_status(BrokerStatus::Down);
        tracing::warn!(%reason, "postgres listening connection down; reconnecting");
        if !pause(&shared.stop, backoff.delay()).await {
            return;
        }
    }
}

/// Applies `first` and every interest change waiting behind it (up to
/// [`MAX_LISTEN_BATCH`]) as one `LISTEN` batch and one `UNLISTEN` batch.
/// An `UNLISTEN` is skipped if the interest is back. `Err` is why the
/// connection must be replaced.
async fn apply(
    shared: &Shared,
    client: &Client,
    control: &mut mpsc::UnboundedReceiver<Control>,
    first: Control,
) -> Result<(), String> {
    let (mut names, mut dones, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    let mut next = Some(first);
    while let Some(cmd) = next.take() {
        match cmd {
            Control::Listen(name, done) => {
                names.push(name);
                dones.push(done);
            }
            Control::Unlisten(name) => gone.push(name),
        }
        if names.len() + gone.len() < MAX_LISTEN_BATCH {
            next = control.try_recv().ok();
        }
    }
    let limit = shared.config.response_timeout;
    let result = match tokio::time::timeout(limit, batch(client, "LISTEN", &names)).await {
        Ok(result) => result,
        Err(_) => Err("LISTEN timed out".into()),
    };
    for done in dones {
        let _ = done.send(result.clone().map_err(unavailable));
    }
    result?;
    let gone: Vec<String> = {
        let interests = shared.interests.read().unwrap_or_else(|p| p.into_inner());
        gone.into_iter()
            .filter(|n| !interests.contains_key(n))
            .collect()
    };
    match tokio::time::timeout(limit, batch(client, "UNLISTEN", &gone)).await {
        Ok(result) => result,
        Err(_) => Err("UNLISTEN timed out".into()),
    }
}

/// A notification waiting behind a referenced one.
enum Pending {
    Ready(Channel, Bytes),
    Reference(Channel, String),
}

/// Drives the listening connection and hands its notifications to the
/// hub; tells `lost` why it ended.
async fn read(shared: Arc<Shared>, mut connection: PgConnection, lost: oneshot::Sender<String>) {
    let (queue, pending) = mpsc::unbounded_channel();
    let backlog = Arc::new(AtomicUsize::new(0));
    let worker = tokio::spawn(resolve(Arc::downgrade(&shared), pending, backlog.clone()));
    let why = loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(note))) => {
                on_notification(&shared, note.channel(), note.payload(), &queue, &backlog);
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => break format!("connection failed: {err}"),
            None => break "connection closed".to_string(),
        }
    };
    // Notifications already queued behind a reference are still delivered.
    drop(queue);
    let _ = lost.send(why);
    let _ = worker.await;
}

/// One notification: delivered at once, unless it is a reference or
/// references are being read (then it waits its turn in the queue).
fn on_notification(
    shared: &Shared,
    name: &str,
    payload: &str,
    queue: &mpsc::UnboundedSender<Pending>,
    backlog: &AtomicUsize,
) {
    let c = &shared.counters;
    c.received.fetch_add(1, Ordering::Relaxed);
    let channel = shared
        .interests
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned();
    let (Some(channel), Some(sink)) = (channel, shared.sink.get()) else {
        c.foreign.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let item = if let Some(reference) = payload.strip_prefix('#') {
        Pending::Reference(channel, reference.to_owned())
    } else if backlog.load(Ordering::Acquire) == 0 {
        // Only this task adds to the backlog: at zero, every earlier
        // notification has been delivered.
        sink.deliver(&channel, Bytes::copy_from_slice(payload.as_bytes()));
        return;
    } else {
        Pending::Ready(channel, Bytes::copy_from_slice(payload.as_bytes()))
    };
    backlog.fetch_add(1, Ordering::AcqRel);
    if queue.send(item).is_err() {
        backlog.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Delivers the queued notifications in order, reading each referenced
/// envelope from the payload table.
async fn resolve(
    shared: Weak<Shared>,
    mut pending: mpsc::UnboundedReceiver<Pending>,
    backlog: Arc<AtomicUsize>,
) {
    while let Some(item) = pending.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Some(sink) = shared.sink.get() {
            match item {
                Pending::Ready(channel, payload) => sink.deliver(&channel, payload),
                Pending::Reference(channel, reference) => match fetch(&shared, &reference).await {
                    Ok(payload) => {
                        shared
                            .counters
                            .received_by_reference
                            .fetch_add(1, Ordering::Relaxed);
                        sink.deliver(&channel, payload);
                    }
                    Err(err) => {
                        shared
                            .counters
                            .bad_references
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%channel, reference, error = %err, "unreadable large-event reference");
                        sink.messages_lost(Some(&channel));
                    }
                },
            }
        }
        backlog.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The envelope a reference (`#` already stripped) names.
async fn fetch(shared: &Shared, reference: &str) -> Result<Bytes, String> {
    let id: i64 = match reference.parse() {
        Ok(id) if reference.bytes().all(|b| b.is_ascii_digit()) => id,
        _ => return Err("not `#` and a decimal row id".into()),
    };
    let read = async {
        let conn = shared.pool.get(shared, 0).await?;
        let statement = conn.prepared(&shared.large_read_sql).await?;
        conn.client()
            .query_opt(&statement, &[&id])
            .await
            .map_err(query_failed)
    };
    let limit = shared.config.response_timeout;
    let row = match tokio::time::timeout(limit, read).await {
        Ok(Ok(row)) => row,
        Ok(Err(err)) => return Err(err.to_string()),
        Err(_) => return Err("reading the payload table timed out".into()),
    };
    let row = row.ok_or_else(|| format!("no row {id} (expired or never written)"))?;
    let payload: Vec<u8> = row.try_get(0).map_err(|e| e.to_string())?;
    Ok(Bytes::from(payload))
}

/// Deletes large-event rows older than the TTL, every quarter TTL, once
/// this process has published one (the publishers keep the table short).
pub(super) async fn trim_payloads(shared: Weak<Shared>) {
    let (every, sql) = {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let ttl = shared.config.large_payload_ttl;
        (
            ttl / 4,
            format!(
                "DELETE FROM \"{}\" WHERE created_at < now() - make_interval(secs => {})",
                shared.payload_table_name(),
                ttl.as_secs_f64()
            ),
        )
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.stopped() {
            return;
        }
        if shared.payload_table.get().is_none() {
            continue;
        }
        let result = async {
            let conn = shared.pool.get(&shared, 0).await?;
            conn.client().execute(&sql, &[]).await.map_err(query_failed)
        }
        .await;
        if let Err(err) = result {
            tracing::debug!(error = %err, "postgres payload trim failed");
        }
    }
}
