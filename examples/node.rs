//! The demo node: one cluster node serving SSE over HTTP.
//!
//! ```text
//! cargo run --release --example node -- [--listen 127.0.0.1:3000] [--broker memory] [--node-id ID]
//! cargo run --release --features redis --example node -- --broker redis://127.0.0.1:6379 [--redis-prefix sse:] [--redis-sharded]
//! cargo run --release --features nats --example node -- --broker nats://127.0.0.1:4222 [--nats-prefix sse]
//! ```
//!
//! Resume after reconnect: `--history memory|redis|jetstream` (matching the
//! broker) keeps each channel's recent events, `--history-max N` of them
//! (default 1000) for at most `--history-age SECS` (default 3600; 0 keeps
//! them until `N` pushes them out).
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
    history: Option<String>,
    retention: sse_cluster::history::Retention,
}

const USAGE: &str =
    "usage: node [--listen 127.0.0.1:3000] [--broker memory|redis://HOST:PORT|nats://HOST:PORT] \
[--node-id ID] [--redis-prefix PREFIX] [--redis-sharded] [--nats-prefix PREFIX] [--auth-token TOKEN] \
[--history memory|redis|jetstream] [--history-max N] [--history-age SECS]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
        broker: "memory".into(),
        node_id: None,
        redis_prefix: None,
        redis_sharded: false,
        nats_prefix: None,
        auth_token: None,
        history: None,
        retention: sse_cluster::history::Retention::default(),
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
            "--history" => {
                let v = value()?;
                if !["memory", "redis", "jetstream"].contains(&v.as_str()) {
                    return Err(format!(
                        "--history {v}: use memory, redis or jetstream\n{USAGE}"
                    ));
                }
                args.history = Some(v);
            }
            "--history-max" => {
                let v = value()?;
                let n: usize = v.parse().map_err(|e| format!("--history-max {v}: {e}"))?;
                args.retention = args.retention.max_len(n);
            }
            "--history-age" => {
                let v = value()?;
                let secs: u64 = v.parse().map_err(|e| format!("--history-age {v}: {e}"))?;
                args.retention = args
                    .retention
                    .max_age(Some(Duration::from_secs(secs)).filter(|d| !d.is_zero()));
            }
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
        history: args.history.clone(),
        retention: args.retention,
    };
    let (broker, history) = common::backend(&args.broker, &options).await?;
    builder = builder.broker(broker);
    if let Some(history) = history {
        builder = builder.history(history);
    }
    let hub = builder.build().await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let drain = hub.clone();
    axum::serve(listener, common::router(hub))
        .with_graceful_shutdown(async move {
            common::termination().await;
            drain.shutdown().await;
        })
        .await?;
    Ok(())
}
