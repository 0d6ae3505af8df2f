//! The demo node: one cluster node serving SSE over HTTP.
//!
//! ```text
//! cargo run --release --example node -- [--listen 127.0.0.1:3000] [--broker memory] [--node-id ID]
//! cargo run --release --features redis --example node -- --broker redis://127.0.0.1:6379 [--redis-prefix sse:] [--redis-sharded]
//! cargo run --release --features nats --example node -- --broker nats://127.0.0.1:4222 [--nats-prefix sse]
//! cargo run --release --features postgres --example node -- --broker postgres://app@127.0.0.1:5432/app [--postgres-prefix sse_]
//! cargo run --release --features kafka --example node -- --broker kafka://127.0.0.1:9092 [--kafka-topic sse-cluster]
//! ```
//!
//! Tokens and CORS: `--jwt-secret SECRET` (HS256) or `--jwt-public-key
//! FILE` (a PEM public key: ES256 for an EC key, RS256 for an RSA one)
//! protects `/events`, `/publish` and `/presence` with signed tokens
//! (`Authorization: Bearer T`, else the cookie `sse_token=T`, else
//! `?access_token=T`; needs the `jwt` feature); `--cors-origin ORIGIN`,
//! repeatable, lets pages of those origins read the answers, with
//! credentials. See `examples/common/mod.rs` (`Access`). `/metrics`,
//! `/healthz` and `/stats` stay open: they are for the operator's network.
//!
//! Presence is on (`GET /presence`); `--presence-heartbeat-ms MS` sets its
//! heartbeat (default 2000) and forgets silent peers after three of them.
//!
//! Routes: see `examples/common/mod.rs`, plus `GET /metrics`: every
//! `sse_*` metric (see `sse_cluster::telemetry`) in the Prometheus text
//! format, through `metrics-exporter-prometheus`. SIGTERM or SIGINT drains
//! the node: every stream ends within a second and the process exits 0.
//!
//! Resume after reconnect: `--history memory|redis|jetstream|postgres|kafka` (matching the
//! broker; Kafka's history is the bus topic itself, retained by Kafka) keeps each channel's recent events, `--history-max N` of them
//! (default 1000) for at most `--history-age SECS` (default 3600; 0 keeps
//! them until `N` pushes them out, but a Redis channel's keys still expire
//! after 7 days without events, and JetStream keeps 7 days of events). The
//! memory store also keeps at most `--history-max-bytes N` bytes in all
//! (default 67108864, 64 MiB; 0: no budget), evicting the oldest events of
//! any channel first; Redis and JetStream ignore it. `/stats` reports
//! `history_retained_bytes`.
//!
//! Timeouts: `--write-deadline-ms` (default 5000) disconnects a client that
//! takes no bytes for that long; `--header-timeout-ms` (default 15000) is
//! hyper's request-head timeout, which also closes idle keep-alive
//! connections. On SIGTERM the node turns `/healthz` to 503 at once, ends
//! every stream with a randomized `retry:`, and answers `/events` requests
//! that still arrive with a retry (not a 503) until the drain is over and
//! `--drain-grace-ms` (default 1000) has passed, then exits.
//!
//! Rebalancing: `--max-lifetime SECS` ends every connection after 80% to
//! 100% of SECS with a short `retry:` and `sse-cluster.closed`
//! (`{"reason":"lifetime","reconnect":true}`), so clients come back through
//! the balancer and spread over nodes added since; with `--history` they
//! resume without a gap.

mod common;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use sse_cluster::presence::PresenceConfig;
use sse_cluster::Hub;

struct Args {
    listen: SocketAddr,
    broker: String,
    node_id: Option<String>,
    redis_prefix: Option<String>,
    postgres_prefix: Option<String>,
    kafka_topic: Option<String>,
    redis_sharded: bool,
    nats_prefix: Option<String>,
    auth_token: Option<String>,
    /// `--jwt-secret`: HS256 tokens.
    jwt_secret: Option<String>,
    /// `--jwt-public-key FILE`: ES256 or RS256 tokens, by the key's kind.
    jwt_public_key: Option<std::path::PathBuf>,
    /// `--cors-origin`, repeatable.
    cors_origins: Vec<String>,
    presence_heartbeat: Option<Duration>,
    history: Option<String>,
    retention: sse_cluster::history::Retention,
    /// Hyper's request-head timeout, which also bounds an idle keep-alive
    /// connection's wait for its next request.
    header_timeout: Duration,
    /// How long a write may wait for a client that takes no bytes.
    write_deadline: Duration,
    /// How long a draining node keeps answering (503 on `/healthz`, a retry
    /// on `/events`) before it closes its listener.
    drain_grace: Duration,
    /// `--max-lifetime SECS`: every connection ends within this (20%
    /// jitter) so that clients spread over new nodes.
    max_lifetime: Option<Duration>,
}

const USAGE: &str =
    "usage: node [--listen 127.0.0.1:3000] [--broker memory|redis://HOST:PORT|redis+sentinel://HOST:PORT[,…]/NAME|nats://HOST:PORT|postgres://USER@HOST:PORT/DB|kafka://HOST:PORT[,HOST:PORT…]] \
[--node-id ID] [--redis-prefix PREFIX] [--redis-sharded] [--nats-prefix PREFIX] \
[--postgres-prefix PREFIX] [--kafka-topic NAME] [--auth-token TOKEN] \
[--jwt-secret SECRET | --jwt-public-key PEM_FILE (ES256 or RS256)] [--cors-origin ORIGIN]... \
[--presence-heartbeat-ms MS] \
[--history memory|redis|jetstream|postgres|kafka] [--history-max N] [--history-age SECS] \
[--history-max-bytes N (memory store, default 67108864; 0: no budget)] \
[--header-timeout-ms MS] [--write-deadline-ms MS] [--drain-grace-ms MS] [--max-lifetime SECS]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
        broker: "memory".into(),
        node_id: None,
        redis_prefix: None,
        postgres_prefix: None,
        kafka_topic: None,
        redis_sharded: false,
        nats_prefix: None,
        auth_token: None,
        jwt_secret: None,
        jwt_public_key: None,
        cors_origins: Vec::new(),
        presence_heartbeat: None,
        history: None,
        retention: sse_cluster::history::Retention::default(),
        header_timeout: HEADER_TIMEOUT,
        write_deadline: sse_cluster::adapters::DEFAULT_WRITE_DEADLINE,
        drain_grace: DRAIN_GRACE,
        max_lifetime: None,
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
            "--postgres-prefix" => args.postgres_prefix = Some(value()?),
            "--kafka-topic" => args.kafka_topic = Some(value()?),
            "--redis-sharded" => args.redis_sharded = true,
            "--nats-prefix" => args.nats_prefix = Some(value()?),
            "--auth-token" => args.auth_token = Some(value()?),
            "--jwt-secret" => args.jwt_secret = Some(value()?),
            "--jwt-public-key" => args.jwt_public_key = Some(value()?.into()),
            "--cors-origin" => args.cors_origins.push(value()?),
            "--presence-heartbeat-ms" => {
                let v = value()?;
                let ms: u64 = v
                    .parse()
                    .map_err(|e| format!("--presence-heartbeat-ms {v}: {e}"))?;
                args.presence_heartbeat = Some(Duration::from_millis(ms));
            }
            "--history" => {
                let v = value()?;
                if !["memory", "redis", "jetstream", "postgres", "kafka"].contains(&v.as_str()) {
                    return Err(format!(
                        "--history {v}: use memory, redis, jetstream, postgres or kafka\n{USAGE}"
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
            "--header-timeout-ms" => args.header_timeout = millis(&flag, &value()?)?,
            "--write-deadline-ms" => args.write_deadline = millis(&flag, &value()?)?,
            "--max-lifetime" => {
                let v = value()?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s < 1e9)
                    .ok_or_else(|| format!("--max-lifetime {v}: seconds, more than 0"))?;
                args.max_lifetime = Some(Duration::from_secs_f64(secs));
            }
            "--drain-grace-ms" => {
                let v = value()?;
                let ms: u64 = v
                    .parse()
                    .map_err(|e| format!("--drain-grace-ms {v}: {e}"))?;
                args.drain_grace = Duration::from_millis(ms);
            }
            "--history-max-bytes" => {
                let v = value()?;
                let n: usize = v
                    .parse()
                    .map_err(|e| format!("--history-max-bytes {v}: {e}"))?;
                args.retention = args.retention.max_bytes(Some(n));
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let keys = [
        args.auth_token.is_some(),
        args.jwt_secret.is_some(),
        args.jwt_public_key.is_some(),
    ];
    if keys.iter().filter(|k| **k).count() > 1 {
        return Err(format!(
            "give at most one of --auth-token, --jwt-secret, --jwt-public-key\n{USAGE}"
        ));
    }
    Ok(args)
}

/// The token check of `--jwt-secret` or `--jwt-public-key`, if given.
#[cfg(feature = "jwt")]
fn jwt_auth(
    args: &Args,
) -> Result<Option<std::sync::Arc<sse_cluster::auth::jwt::JwtAuth>>, Box<dyn std::error::Error>> {
    use sse_cluster::auth::jwt::JwtAuth;
    let auth = match (&args.jwt_secret, &args.jwt_public_key) {
        (Some(secret), _) => JwtAuth::hs256(secret.as_bytes())?,
        (None, Some(file)) => {
            let pem = std::fs::read(file)
                .map_err(|e| format!("--jwt-public-key {}: {e}", file.display()))?;
            JwtAuth::public_key_pem(&pem)
                .map_err(|e| format!("--jwt-public-key {}: {e}", file.display()))?
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(std::sync::Arc::new(auth)))
}

/// A positive number of milliseconds.
fn millis(flag: &str, value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        Ok(_) => Err(format!("{flag} {value}: must be positive")),
        Err(e) => Err(format!("{flag} {value}: {e}")),
    }
}

/// Default of `--header-timeout-ms`: hyper's request-head timeout, which
/// also closes a keep-alive connection idle for that long. With the SSE
/// driver's own 30 s for the first head, a trickled head is closed within
/// 45 s whichever of the two reads it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// Default of `--drain-grace-ms`: long enough for a balancer's health check
/// (every 500 ms or so) to see the draining node's 503 and for requests
/// already on their way to get an answer instead of a reset.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

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
    let prometheus = common::install_metrics()?;
    // Presence on, with the default timings unless --presence-heartbeat-ms
    // (then peers are forgotten after three silent heartbeats).
    let mut presence = PresenceConfig::default();
    if let Some(beat) = args.presence_heartbeat {
        presence = presence.heartbeat(beat).forget_after(beat * 3);
    }
    let mut builder = Hub::builder()
        .drain_timeout(Duration::from_millis(800))
        .presence(presence);
    if let Some(lifetime) = args.max_lifetime {
        builder = builder.max_lifetime(lifetime, 0.2);
    }
    if let Some(token) = args.auth_token.clone() {
        builder = builder.authorizer(std::sync::Arc::new(common::TokenAuthorizer(token)));
    }
    let mut access = common::Access::default();
    #[cfg(feature = "jwt")]
    {
        access.jwt = jwt_auth(&args)?;
        if let Some(jwt) = access.jwt.clone() {
            builder = builder.authorizer(jwt);
        }
    }
    #[cfg(not(feature = "jwt"))]
    if args.jwt_secret.is_some() || args.jwt_public_key.is_some() {
        return Err("this build has no JWT support: rebuild with `--features jwt`".into());
    }
    if !args.cors_origins.is_empty() {
        let cors = sse_cluster::cors::Cors::origins(args.cors_origins.iter().cloned())
            .allow_credentials(true)
            .expose_headers(["retry-after"]);
        access.cors = Some(cors.clone());
        builder = builder.cors(cors);
    }
    if let Some(id) = args.node_id.clone() {
        builder = builder.node_id(id);
    }
    let options = common::BrokerOptions {
        redis_prefix: args.redis_prefix.clone(),
        redis_sharded: args.redis_sharded,
        postgres_prefix: args.postgres_prefix.clone(),
        kafka_topic: args.kafka_topic.clone(),
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
    if hub.broker_status() != sse_cluster::BrokerStatus::Up {
        // Started degraded (see HubBuilder::require_broker): say so even
        // without a tracing subscriber.
        eprintln!(
            "warning: the broker ({}) is not reachable yet; serving degraded: /healthz answers 503 \
             and publishes to other nodes fail until it is",
            args.broker
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let app = common::router_with(hub.clone(), access).merge(common::metrics_route(prometheus));
    serve(listener, hub, app, &args).await
}

/// Serves the routes over HTTP/1.1 until SIGTERM/SIGINT, then drains.
///
/// `GET /events` is answered by the crate's small SSE driver
/// (`adapters::http1`): it streams without hyper's two 8 KiB connection
/// buffers, which were most of an idle SSE connection's memory (see
/// BENCHMARKS.md, idle memory). Every other request goes to hyper with the
/// router built once (not `axum::serve`, which rebuilds the route tables per
/// connection and, detecting HTTP/2, grows hyper's read buffer to 16 KiB).
///
/// Timeouts: every connection has a write deadline (a client that takes no
/// bytes for `--write-deadline-ms` is disconnected, which frees its stream,
/// its registry entry and its presence), the driver closes a request head
/// not complete within 30 s, and hyper one not complete within
/// `--header-timeout-ms` (also the longest a keep-alive connection waits
/// idle for its next request).
async fn serve(
    listener: tokio::net::TcpListener,
    hub: Hub,
    app: axum::Router,
    args: &Args,
) -> Result<(), Box<dyn std::error::Error>> {
    use hyper_util::rt::TokioTimer;

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(args.header_timeout);
    // Shared by every connection task: an SSE stream's task keeps only this
    // pointer (and the stream and socket) for its whole life.
    let shared: Shared = std::sync::Arc::new((app.with_state(()), http));
    let write_deadline = args.write_deadline;
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
                tokio::spawn(serve_one(shared.clone(), graceful.watcher(), tcp, write_deadline));
            }
            _ = &mut stop => break,
        }
    }
    // Drain: the hub ends every stream with a spread-out `retry:` and
    // `/healthz` turns 503 at once; connections that still arrive meanwhile
    // (a balancer that has not noticed yet) are served: `/events` answers
    // them with a retry, not an error an EventSource would give up on.
    // It keeps answering for at least `--drain-grace-ms`, so that requests
    // already on their way get an answer, not a reset.
    let drain = async {
        tokio::join!(hub.shutdown(), tokio::time::sleep(args.drain_grace));
    };
    tokio::pin!(drain);
    loop {
        tokio::select! {
            () = &mut drain => break,
            accepted = listener.accept() => {
                if let Ok((tcp, _)) = accepted {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(serve_one(shared.clone(), graceful.watcher(), tcp, write_deadline));
                }
            }
        }
    }
    // Every stream has ended; what is left are requests in flight.
    let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
    Ok(())
}

type Shared = std::sync::Arc<(axum::Router, hyper::server::conn::http1::Builder)>;

/// One connection: `GET /events` through the SSE driver, anything else
/// through hyper with the router built once.
///
/// Not an `async fn`: the task holds this future for an SSE stream's whole
/// life, and an `async fn` would keep its arguments, and the driver's
/// result, beside the driver's own future (see BENCHMARKS.md, idle memory).
fn serve_one(
    shared: Shared,
    watcher: hyper_util::server::graceful::Watcher,
    tcp: tokio::net::TcpStream,
    write_deadline: Duration,
) -> impl std::future::Future<Output = ()> {
    use futures_util::FutureExt;
    use sse_cluster::adapters::http1::{serve_sse, Served};
    use sse_cluster::adapters::WriteDeadline;
    use tower::ServiceExt;

    let router = shared.0.clone();
    let sse = serve_sse(
        WriteDeadline::with_deadline(tcp, write_deadline),
        |head| head.method == http::Method::GET && head.uri.path() == "/events",
        |req| async move {
            let req = req.map(|()| axum::body::Body::empty());
            match router.oneshot(req).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        },
    );
    sse.then(|served| async move {
        if let Ok(Served::Other(io)) = served {
            // Boxed: in place, hyper's connection future would size every
            // connection's task, the SSE streams' too.
            Box::pin(serve_other(shared, watcher, io)).await;
        }
    })
}

/// A connection whose first request is not an SSE request: hyper serves
/// it, with the router built once.
async fn serve_other(
    shared: Shared,
    watcher: hyper_util::server::graceful::Watcher,
    io: sse_cluster::adapters::http1::Rewind<
        sse_cluster::adapters::WriteDeadline<tokio::net::TcpStream>,
    >,
) {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let (app, http) = &*shared;
    let service = TowerToHyperService::new(app.clone());
    let _ = watcher
        .watch(http.serve_connection(TokioIo::new(io), service))
        .await;
}
