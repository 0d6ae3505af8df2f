//! The publish pool: a few connections shared by every caller. A
//! tokio-postgres `Client` pipelines the queries of concurrent callers on
//! its connection, so callers share connections rather than take turns
//! owning one; each channel always uses the same connection, which keeps
//! one channel's publishes in order even when a caller does not await them
//! one by one.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::{Client, Statement};

use super::{query_failed, unavailable, Shared};
use crate::broker::BrokerError;

/// One pooled connection: its client and the statements prepared on it.
///
/// A store built on [`PostgresBroker`](super::PostgresBroker) runs its
/// queries here (see [`PostgresBroker::client_for`](super::PostgresBroker::client_for)).
pub struct PgClient {
    client: Client,
    statements: Mutex<HashMap<String, Statement>>,
}

impl fmt::Debug for PgClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgClient")
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

impl PgClient {
    fn new(client: Client) -> Self {
        Self {
            client,
            statements: Mutex::new(HashMap::new()),
        }
    }

    /// The tokio-postgres client. Queries of concurrent callers are
    /// pipelined on its one connection; do not leave a transaction open on
    /// it (use single statements: they run in a transaction of their own).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `sql` prepared on this connection, once: later calls get the cached
    /// statement.
    pub async fn prepared(&self, sql: &str) -> Result<Statement, BrokerError> {
        if let Some(statement) = self.cached(sql) {
            return Ok(statement);
        }
        let statement = self.client.prepare(sql).await.map_err(query_failed)?;
        self.statements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn cached(&self, sql: &str) -> Option<Statement> {
        self.statements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sql)
            .cloned()
    }
}

/// After a failed connect, callers of that slot fail at once for this long
/// instead of each waiting for a connect of its own.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(250);

#[derive(Default)]
struct Slot {
    conn: Option<Arc<PgClient>>,
    failed_at: Option<Instant>,
}

/// A fixed number of lazily (re)connected slots.
pub(super) struct Pool {
    slots: Vec<tokio::sync::Mutex<Slot>>,
}

impl Pool {
    pub(super) fn new(size: usize) -> Self {
        Self {
            slots: (0..size.max(1)).map(|_| Default::default()).collect(),
        }
    }

    /// The slot serving the bus channel `name`.
    pub(super) fn slot_of(&self, name: &str) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        (hasher.finish() % self.slots.len() as u64) as usize
    }

    /// The connection of slot `index`, connecting it if it is closed.
    pub(super) async fn get(
        &self,
        shared: &Shared,
        index: usize,
    ) -> Result<Arc<PgClient>, BrokerError> {
        let mut slot = self.slots[index % self.slots.len()].lock().await;
        if let Some(conn) = slot.conn.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(conn.clone());
        }
        slot.conn = None;
        if shared.stopped() {
            return Err(BrokerError::Closed);
        }
        // While the listening connection is up, the server is reachable:
        // connect at once whenever a slot needs it.
        let listener_up = *shared.status.borrow() == crate::broker::BrokerStatus::Up;
        if !listener_up
            && slot
                .failed_at
                .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE)
        {
            return Err(unavailable("postgres publish connection is down"));
        }
        match shared.connect().await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    // Ends when the client is dropped or the server goes.
                    let _ = connection.await;
                });
                let conn = Arc::new(PgClient::new(client));
                slot.conn = Some(conn.clone());
                slot.failed_at = None;
                Ok(conn)
            }
            Err(err) => {
                slot.failed_at = Some(Instant::now());
                Err(err)
            }
        }
    }

    /// Drops every connection (they close once their last user is done).
    pub(super) async fn close(&self) {
        for slot in &self.slots {
            slot.lock().await.conn = None;
        }
    }
}
