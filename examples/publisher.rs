//! The publish-only tier: an HTTP API that publishes to the cluster without
//! holding any SSE connection (no hub, no registry, no subscriptions).
//!
//! ```text
//! # two gateways holding the streams, one publisher, all on one Redis:
//! cargo run --features redis --example node -- --listen 127.0.0.1:3000 --broker redis://127.0.0.1:6379
//! cargo run --features redis --example node -- --listen 127.0.0.1:3001 --broker redis://127.0.0.1:6379
//! cargo run --features redis --example publisher -- --listen 127.0.0.1:4000 --broker redis://127.0.0.1:6379
//! curl -N 'http://127.0.0.1:3000/events?user=42' &
//! curl -X POST 'http://127.0.0.1:4000/publish?user=42' -d 'hello from the API tier'
//! ```
//!
//! Routes: `POST /publish` exactly as on the demo node (`?topic=`, `?user=`,
//! `?connection=`, none for everyone, `&event=NAME`; `202 {"id": …}`), and
//! `GET /healthz`. It prints `listening on ADDR` once it accepts.

mod common;

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sse_cluster::{BrokerStatus, Publisher};

const USAGE: &str =
    "usage: publisher [--listen 127.0.0.1:4000] [--broker memory|redis://…|nats://…] \\
[--redis-prefix P] [--redis-sharded] [--nats-prefix P] [--history redis|jetstream]";

async fn publish(
    State(publisher): State<Publisher>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let key = match common::idempotency_key(&headers) {
        Ok(key) => key,
        Err(reason) => return common::bad_request(reason),
    };
    match (common::publish_request(&query, &body), key) {
        (Ok((target, event)), None) => {
            common::publish_response(publisher.publish(target, event).await)
        }
        (Ok((target, event)), Some(key)) => {
            common::publish_response(publisher.publish_idempotent(target, event, &key).await)
        }
        (Err(reason), _) => common::bad_request(reason),
    }
}

async fn healthz(State(publisher): State<Publisher>) -> Response {
    match publisher.broker_status() {
        BrokerStatus::Up => (StatusCode::OK, "ok").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "broker down").into_response(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 4000));
    let mut url = "memory".to_owned();
    let mut options = common::BrokerOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value()?.parse()?,
            "--broker" => url = value()?,
            "--redis-prefix" => options.redis_prefix = Some(value()?),
            "--redis-sharded" => options.redis_sharded = true,
            "--nats-prefix" => options.nats_prefix = Some(value()?),
            "--history" => options.history = Some(value()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let (broker, history) = common::backend(&url, &options).await?;
    let mut publisher = Publisher::new(broker).await?;
    if let Some(history) = history {
        publisher = publisher.with_history(history);
    }
    let app = Router::new()
        .route("/publish", post(publish))
        .route("/healthz", get(healthz))
        .with_state(publisher.clone());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(common::termination())
        .await?;
    publisher.shutdown().await;
    Ok(())
}
