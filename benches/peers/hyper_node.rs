//! Our crate served by plain hyper 1 through `sse_cluster::adapters::hyper`,
//! for the load harness (`benches/load.rs`): the demo node's routes
//! (`GET /events?topic=T&user=U`, `POST /publish?topic=T|user=U`,
//! `GET /stats`, `GET /healthz`) without axum.
//!
//! ```text
//! cargo build --release --features hyper,redis,nats --example bench_hyper_node
//! target/release/examples/bench_hyper_node --listen 127.0.0.1:3200 [--broker memory|redis://…|nats://…] [--node-id ID]
//! ```

#[path = "../../examples/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sse_cluster::adapters::hyper as sse;
use sse_cluster::{Event, Hub, SseStream, Subscription};

type Body = Either<SseStream, Full<Bytes>>;

fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(body.into())));
    *response.status_mut() = status;
    response
}

async fn handle(hub: Hub, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let query = req.uri().query().map(str::to_owned);
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/events") => {
            let mut sub = Subscription::new();
            for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
                match &*key {
                    "topic" => sub = sub.topic(value),
                    "user" => sub = sub.user(value),
                    _ => {}
                }
            }
            let sub = sub.greeting(|id| {
                Event::new()
                    .data(id.as_str())
                    .event("connected")
                    .unwrap_or_default()
            });
            match hub.connect(sub).await {
                Ok(conn) => sse::response(conn).map(Either::Left),
                Err(err) => plain(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
            }
        }
        (&Method::POST, "/publish") => {
            let body = match req.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(err) => return Ok(plain(StatusCode::BAD_REQUEST, err.to_string())),
            };
            match common::publish_request(&query, &body) {
                Ok((target, event)) => match hub.publish(target, event).await {
                    Ok(receipt) => plain(StatusCode::ACCEPTED, receipt.id),
                    Err(err) => plain(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
                },
                Err(reason) => plain(StatusCode::BAD_REQUEST, reason),
            }
        }
        (&Method::GET, "/stats") => {
            let body = serde_json::to_vec(&hub.stats()).unwrap_or_default();
            plain(StatusCode::OK, body)
        }
        (&Method::GET, "/healthz") => plain(StatusCode::OK, "ok"),
        _ => plain(StatusCode::NOT_FOUND, "not found"),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 3200));
    let mut broker = "memory".to_owned();
    let mut node_id = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v.parse()?,
            ("--broker", Some(v)) => broker = v,
            ("--node-id", Some(v)) => node_id = Some(v),
            _ => {
                return Err(format!(
                "usage: bench_hyper_node [--listen ADDR] [--broker URL] [--node-id ID] ({flag}?)"
            )
                .into())
            }
        }
    }
    let mut builder = Hub::builder().broker(common::broker(&broker, &Default::default()).await?);
    if let Some(id) = node_id {
        builder = builder.node_id(id);
    }
    let hub = builder.build().await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stop = common::termination();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let hub = hub.clone();
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service_fn(move |req| handle(hub.clone(), req)));
                tokio::spawn(graceful.watch(conn));
            }
            _ = &mut stop => break,
        }
    }
    hub.shutdown().await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), graceful.shutdown()).await;
    Ok(())
}
