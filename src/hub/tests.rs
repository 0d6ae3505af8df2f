//! Unit tests of the facade.
use super::*;
use crate::broker::memory::MemoryBus;
use futures_util::StreamExt;

async fn hub(bus: &MemoryBus, configure: impl FnOnce(HubBuilder) -> HubBuilder) -> Hub {
    let builder = Hub::builder()
        .broker(bus.broker())
        .stream_config(StreamConfig::default().keep_alive(None).initial_retry(None));
    configure(builder).build().await.unwrap()
}

#[tokio::test]
async fn local_connections_get_events_without_the_bus() {
    let bus = MemoryBus::new();
    let hub = hub(&bus, |b| b.node_id("a")).await;
    let conn = hub.connect(Subscription::new().topic("t")).await.unwrap();
    let id = conn.id().clone();
    let mut stream = conn.into_stream();
    let receipt = hub
        .publish(Target::Connection(id), Event::new().data("direct"))
        .await
        .unwrap();
    assert_eq!(receipt.delivered_locally, 1);
    assert_eq!(&stream.next().await.unwrap()[..], b"data: direct\n\n");
    assert_eq!(
        hub.stats().bus_out,
        0,
        "a local connection's event stays off the bus"
    );
    hub.publish(Target::topic("t"), Event::new().data("t1"))
        .await
        .unwrap();
    assert_eq!(&stream.next().await.unwrap()[..], b"data: t1\n\n");
    let stats = hub.stats();
    assert_eq!((stats.published, stats.bus_out, stats.delivered), (2, 1, 2));
}

#[tokio::test]
async fn limits_refuse_with_their_status() {
    let bus = MemoryBus::new();
    let hub = hub(&bus, |b| b.max_connections(1).max_connections_per_user(1)).await;
    let long = "x".repeat(MAX_NAME_LEN + 1);
    let err = hub
        .connect(Subscription::new().topic(long))
        .await
        .unwrap_err();
    assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
    let many = (0..=MAX_TOPICS_PER_CONNECTION).map(|i| i.to_string());
    let err = hub
        .connect(Subscription::new().topics(many))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::InvalidSubscription(_)));
    let _held = hub.connect(Subscription::new().user("u")).await.unwrap();
    let err = hub
        .connect(Subscription::new().user("u"))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::UserLimit));
    let err = hub.connect(Subscription::new()).await.unwrap_err();
    assert!(matches!(err, ConnectError::NodeFull { .. }));
    assert_eq!(err.status(), http::StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn respond_grants_allowed_origins_on_streams_refusals_and_preflights() {
    use crate::cors::Cors;
    let bus = MemoryBus::new();
    let cors = Cors::origins(["https://app.example"]).allow_credentials(true);
    let hub = hub(&bus, |b| b.cors(cors).max_connections_per_user(1)).await;
    let request = |origin: &str, accept: Option<&str>| {
        let mut builder = http::Request::get("/events").header("origin", origin);
        if let Some(accept) = accept {
            builder = builder.header("accept", accept);
        }
        builder.body(()).unwrap().into_parts().0
    };
    let grant = |r: &http::Response<SseStream>| {
        r.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let app = "https://app.example";
    let held = hub
        .respond(&request(app, None), Subscription::new().user("u"))
        .await;
    assert_eq!(held.status(), http::StatusCode::OK);
    assert_eq!(grant(&held).as_deref(), Some(app));
    // A user over its limit: 429 for a plain client, a retry for an
    // EventSource; both readable by the page.
    for accept in [None, Some("text/event-stream")] {
        let refused = hub
            .respond(&request(app, accept), Subscription::new().user("u"))
            .await;
        let status = if accept.is_some() { 200 } else { 429 };
        assert_eq!(refused.status().as_u16(), status);
        assert_eq!(grant(&refused).as_deref(), Some(app));
        assert_eq!(
            refused.headers()["access-control-allow-credentials"],
            "true"
        );
    }
    let other = hub
        .respond(
            &request("https://evil.example", None),
            Subscription::new().user("u"),
        )
        .await;
    assert_eq!(other.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(grant(&other), None);
    // A preflight opens nothing.
    let preflight = http::Request::options("/events")
        .header("origin", app)
        .header("access-control-request-method", "GET")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let answer = hub
        .respond(&preflight, Subscription::new().topic("t"))
        .await;
    assert_eq!(answer.status(), http::StatusCode::NO_CONTENT);
    assert_eq!(grant(&answer).as_deref(), Some(app));
    assert_eq!(hub.registry().topic_connections("t"), 0);
    // Draining: 503, with the grant.
    drop(held);
    hub.shutdown().await;
    let draining = hub.respond(&request(app, None), Subscription::new()).await;
    assert_eq!(draining.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(grant(&draining).as_deref(), Some(app));
}

#[tokio::test]
async fn shutdown_ends_streams_with_a_retry_and_refuses_new_ones() {
    let bus = MemoryBus::new();
    let hub = hub(&bus, |b| {
        b.shutdown_retry(Duration::from_millis(700), Duration::from_millis(700))
    })
    .await;
    let mut stream = hub
        .connect(Subscription::new())
        .await
        .unwrap()
        .into_stream();
    let draining = tokio::spawn({
        let hub = hub.clone();
        async move { hub.shutdown().await }
    });
    assert_eq!(&stream.next().await.unwrap()[..], b"retry: 700\n\n");
    assert!(stream.next().await.is_none());
    drop(stream);
    draining.await.unwrap();
    assert!(matches!(
        hub.connect(Subscription::new()).await,
        Err(ConnectError::ShuttingDown)
    ));
    assert!(matches!(
        hub.publish(Target::All, Event::new()).await,
        Err(PublishError::ShutDown)
    ));
}
