//! The demo's load balancer: a TCP proxy that hands each new connection to
//! the next node that is routable, and tries the one after it if a node
//! refuses the connection (as HAProxy's `retries` with `redispatch` do).
//! A node being drained is taken out of the rotation at once (what a health
//! check on `/healthz` does in production, a little later).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

/// Accepts on `listener` until the process ends.
pub(crate) async fn run(listener: TcpListener, ports: Vec<u16>, routable: Arc<[AtomicBool]>) {
    let ports: Arc<[u16]> = ports.into();
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let (ports, routable) = (ports.clone(), routable.clone());
        let start = next.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            if let Some(mut upstream) = connect(&ports, &routable, start).await {
                let mut client = client;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
            // No node is up: closing the connection is a network error,
            // which an EventSource retries (an error status it would not).
        });
    }
}

/// A connection to the first routable node from `start` on that accepts.
async fn connect(ports: &[u16], routable: &[AtomicBool], start: usize) -> Option<TcpStream> {
    for k in 0..ports.len() {
        let node = (start + k) % ports.len();
        if !routable[node].load(Ordering::SeqCst) {
            continue;
        }
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", ports[node])).await {
            let _ = stream.set_nodelay(true);
            return Some(stream);
        }
    }
    None
}
