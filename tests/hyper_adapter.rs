//! The hyper adapter: a plain hyper 1 server holding SSE streams.

#![cfg(feature = "hyper")]

mod support;

use std::convert::Infallible;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sse_cluster::adapters::hyper as sse;
use sse_cluster::{Event, Hub, SseStream, Subscription, Target};
use support::SseClient;

async fn handle(hub: Hub, req: Request<Incoming>) -> Result<Response<SseStream>, Infallible> {
    let greeting = sse::last_event_id(&req).unwrap_or_else(|| "none".into());
    let sub = Subscription::new().topic("t").greeting(move |_| {
        Event::new()
            .event("connected")
            .unwrap_or_default()
            .data(greeting)
    });
    Ok(match hub.connect(sub).await {
        Ok(conn) => sse::response(conn),
        Err(_) => sse::unavailable(),
    })
}

#[tokio::test]
async fn hyper_serves_streams_and_drains_gracefully() {
    let hub = Hub::builder().build().await.expect("hub");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_hub = hub.clone();
    let server = tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (tcp, _) = accepted.expect("accept");
                    let hub = server_hub.clone();
                    let conn = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service_fn(move |req| handle(hub.clone(), req)));
                    let conn = graceful.watch(conn);
                    tokio::spawn(conn);
                }
                _ = &mut stop_rx => break,
            }
        }
        server_hub.shutdown().await;
        graceful.shutdown().await;
    });

    let mut fresh = SseClient::connect(addr, "/events").await;
    assert_eq!(fresh.connection_id, "none");
    assert_eq!(fresh.headers["content-type"], "text/event-stream");
    let mut resumed = SseClient::open(addr, "/events?last_event_id=abc", &[]).await;
    assert_eq!(resumed.next().await.expect("greeting").data, "abc");
    let mut by_header = SseClient::open(addr, "/events", &[("last-event-id", "h1")]).await;
    assert_eq!(by_header.next().await.expect("greeting").data, "h1");

    hub.publish(Target::topic("t"), Event::new().data("x"))
        .await
        .expect("publish");
    for client in [&mut fresh, &mut resumed, &mut by_header] {
        assert_eq!(client.next().await.expect("event").data, "x");
    }

    stop_tx.send(()).expect("stop");
    tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("graceful shutdown finished")
        .expect("join");
    for client in [&mut fresh, &mut resumed, &mut by_header] {
        client
            .wait_end(Duration::from_secs(1))
            .await
            .expect("ended");
    }
    assert_eq!(sse::unavailable().status(), StatusCode::SERVICE_UNAVAILABLE);
}
