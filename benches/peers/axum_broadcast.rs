//! The hand-rolled baseline of the load harness (`benches/load.rs`): SSE the
//! way a typical axum 0.8 user writes it, on one node, with no crate of ours.
//!
//! One `tokio::sync::broadcast` channel of `String`s; `GET /events` turns a
//! receiver into `axum::response::Sse` with the default `KeepAlive` (15 s),
//! building an `Event` per connection per message; `POST /publish` sends the
//! body to everyone and answers `202`. A lagging receiver skips what it
//! missed (the usual `RecvError::Lagged` handling).
//!
//! ```text
//! cargo build --release --example peer_axum_broadcast
//! target/release/examples/peer_axum_broadcast --listen 127.0.0.1:3100
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::Router;
use futures_util::Stream;
use tokio::sync::broadcast;

async fn events(
    State(tx): State<broadcast::Sender<String>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = tx.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(msg) => return Some((Ok(Event::default().data(msg)), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn publish(State(tx): State<broadcast::Sender<String>>, body: String) -> StatusCode {
    // No receiver is not an error for a publisher.
    let _ = tx.send(body);
    StatusCode::ACCEPTED
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 3100));
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v.parse()?,
            _ => {
                return Err(format!("usage: peer_axum_broadcast [--listen ADDR] ({flag}?)").into())
            }
        }
    }
    let (tx, _) = broadcast::channel::<String>(1024);
    let app = Router::new()
        .route("/events", get(events))
        .route("/publish", post(publish))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
