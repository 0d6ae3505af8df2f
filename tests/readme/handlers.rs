use axum::extract::{Query, Request, State};
use axum::response::IntoResponse;
use axum::{routing::{get, post}, Router};
use sse_cluster::{broker::memory::MemoryBus, Event, Hub, Subscription, Target};

#[derive(serde::Deserialize)]
struct Params { topic: String }

async fn events(State(hub): State<Hub>, Query(p): Query<Params>, request: Request) -> impl IntoResponse {
    // `respond` reads `Last-Event-ID` (header or `?last_event_id=`) itself, so a
    // reconnecting client resumes when the hub has a history; and it answers a
    // passing refusal (a draining or full node) so that an EventSource retries.
    let (parts, _body) = request.into_parts();
    hub.respond(&parts, Subscription::new().topic(p.topic)).await
}

async fn publish(State(hub): State<Hub>, Query(p): Query<Params>, body: String) -> impl IntoResponse {
    match hub.publish(Target::topic(p.topic), Event::new().data(body)).await {
        Ok(receipt) => receipt.id.into_response(),
        Err(err) => err.to_http_response().into_response(), // 400, 413 or 503, with a JSON body
    }
}
