//! The demo node: one cluster node serving SSE over HTTP.
//!
//! ```text
//! cargo run --release --example node -- [--listen 127.0.0.1:3000] [--broker memory] [--node-id ID]
//! cargo run --release --features redis --example node -- --broker redis://127.0.0.1:6379 [--redis-prefix sse:] [--redis-sharded]
//! cargo run --release --features nats --example node -- --broker nats://127.0.0.1:4222 [--nats-prefix sse]
//! ```
//!
//! Routes: see `examples/common/mod.rs`. SIGTERM or SIGINT drains the node:
//! every stream ends within a second and the process exits 0.

mod common;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use sse_cluster::Hub;

struct Args {
    listen: SocketAddr,
    broker: String,
    node_id: Option<String>,
    redis_prefix: Option<String>,
    redis_sharded: bool,
    nats_prefix: Option<String>,
    auth_token: Option<String>,
}

const USAGE: &str =
    "usage: node [--listen 127.0.0.1:3000] [--broker memory|redis://HOST:PORT|nats://HOST:PORT] \
[--node-id ID] [--redis-prefix PREFIX] [--redis-sharded] [--nats-prefix PREFIX] [--auth-token TOKEN]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
        broker: "memory".into(),
        node_id: None,
        redis_prefix: None,
        redis_sharded: false,
        nats_prefix: None,
        auth_token: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                args.listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--broker" => args.broker = value()?,
            "--node-id" => args.node_id = Some(value()?),
            "--redis-prefix" => args.redis_prefix = Some(value()?),
            "--redis-sharded" => args.redis_sharded = true,
            "--nats-prefix" => args.nats_prefix = Some(value()?),
            "--auth-token" => args.auth_token = Some(value()?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = Hub::builder().drain_timeout(Duration::from_millis(800));
    if let Some(token) = args.auth_token.clone() {
        builder = builder.authorizer(std::sync::Arc::new(common::TokenAuthorizer(token)));
    }
    if let Some(id) = args.node_id.clone() {
        builder = builder.node_id(id);
    }
    let options = common::BrokerOptions {
        redis_prefix: args.redis_prefix.clone(),
        redis_sharded: args.redis_sharded,
        nats_prefix: args.nats_prefix.clone(),
    };
    builder = builder.broker(common::broker(&args.broker, &options)?);
    let hub = builder.build().await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    serve(listener, hub).await
}

/// Serves the routes over HTTP/1.1 until SIGTERM/SIGINT, then drains.
///
/// Not `axum::serve`: per connection it rebuilds the router's route tables
/// (`Router::with_state` in its `Service<IncomingStream>` impl, about 3.5 KiB
/// per connection with these four routes) and, serving HTTP/1 and HTTP/2 on
/// one port, hands hyper the protocol preface as a separate short read,
/// which makes hyper grow its read buffer to 16 KiB. An SSE node holds tens
/// of thousands of idle connections, so both show in its memory (see
/// BENCHMARKS.md, idle memory). Here the router is built once and each
/// connection is plain hyper HTTP/1.1.
async fn serve(
    listener: tokio::net::TcpListener,
    hub: Hub,
) -> Result<(), Box<dyn std::error::Error>> {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let app = common::router(hub.clone()).with_state(());
    let http = hyper::server::conn::http1::Builder::new();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stop = common::termination();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(err) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning.
                        eprintln!("accept: {err}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Events are small writes that must leave at once; Nagle
                // would hold one back until the client acknowledges the
                // previous one (a delayed ACK: up to 40 ms).
                let _ = tcp.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let conn = http.serve_connection(TokioIo::new(tcp), service);
                tokio::spawn(graceful.watch(conn));
            }
            _ = &mut stop => break,
        }
    }
    hub.shutdown().await;
    // Every stream has ended; what is left are requests in flight.
    let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
    Ok(())
}
