//! A TCP balancer on loopback, as a client's reconnects meet one in
//! production: each new connection goes to the next of the backends the
//! test has set (round robin), its bytes copied both ways untouched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The balancer's address and the backends it routes to.
pub struct Balancer {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Balancer {
    /// Listens on a free loopback port, routing to `backends` in turn.
    pub async fn start(backends: &[SocketAddr]) -> Balancer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let routes = Arc::new(Mutex::new(backends.to_vec()));
        let turn = AtomicUsize::new(0);
        let shared = routes.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = {
                    let routes = shared.lock().expect("backends");
                    let i = turn.fetch_add(1, Ordering::Relaxed);
                    routes.get(i % routes.len().max(1)).copied()
                };
                let Some(target) = target else { continue };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Balancer {
            addr,
            backends: routes,
        }
    }

    /// Routes new connections to `backends` from now on (as a balancer
    /// does once its health check has noticed a change).
    pub fn route_to(&self, backends: &[SocketAddr]) {
        *self.backends.lock().expect("backends") = backends.to_vec();
    }
}
