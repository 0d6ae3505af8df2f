//! Server-Sent Events across many nodes.
//!
//! An SSE stream lives in one process. Behind a load balancer, an event
//! published on node B for a client whose stream is held by node A is lost,
//! unless the nodes share a bus. `sse-cluster` is that bus plus everything
//! around it: a [`ConnectionRegistry`] of who is connected here, a pluggable
//! [`Broker`] between nodes, an SSE body ([`SseStream`]) with keep-alive and a
//! bounded queue, and thin adapters for axum and hyper.
//!
//! # Quick start (axum)
//!
//! With `axum = "0.8"`, `tokio` (features `rt-multi-thread`, `macros`,
//! `net`, `signal`) and `serde` (feature `derive`) beside this crate:
//!
//! ```no_run
//! use axum::extract::{Query, Request, State};
//! use axum::response::IntoResponse;
//! use axum::{routing::{get, post}, Router};
//! use sse_cluster::{broker::memory::MemoryBus, Event, Hub, Subscription, Target};
//!
//! #[derive(serde::Deserialize)]
//! struct Params { topic: String }
//!
//! // `respond` reads the client's `Last-Event-ID` itself (so a reconnect
//! // resumes when the hub has a history) and answers refusals the way an
//! // `EventSource` needs.
//! async fn events(State(hub): State<Hub>, Query(p): Query<Params>, request: Request) -> impl IntoResponse {
//!     let (parts, _body) = request.into_parts();
//!     hub.respond(&parts, Subscription::new().topic(p.topic)).await
//! }
//!
//! async fn publish(State(hub): State<Hub>, Query(p): Query<Params>, body: String) -> impl IntoResponse {
//!     match hub.publish(Target::topic(p.topic), Event::new().data(body)).await {
//!         Ok(receipt) => receipt.id.into_response(),
//!         Err(err) => err.to_http_response().into_response(),
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let hub = Hub::builder().broker(MemoryBus::new().broker()).build().await?;
//!     let app = Router::new()
//!         .route("/events", get(events))
//!         .route("/publish", post(publish))
//!         .with_state(hub.clone());
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app)
//!         .with_graceful_shutdown(async move {
//!             let _ = tokio::signal::ctrl_c().await;
//!             hub.shutdown().await; // ends every stream, so serve() can return
//!         })
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! For many nodes, give every hub the same network broker (`broker::redis`,
//! `broker::nats`) and, for resume, the same history store
//! ([`history`]); the README has a Redis and a NATS quick start.
//!
//! # How it works
//!
//! **Targets.** [`Hub::publish`] sends an [`Event`] to a [`Target`]: one
//! connection, one user (all their connections, on all nodes), one topic (all
//! its subscribers), or everyone. The event is encoded once; the same
//! [`bytes::Bytes`] frame is queued to every receiving connection.
//!
//! **Channels.** Each target maps to a bus [`Channel`](broker::Channel):
//!
//! | target | channel | who listens |
//! |---|---|---|
//! | `Target::Topic(t)` | `Topic(t)` | nodes holding a subscriber of `t` |
//! | `Target::User(u)` | `User(u)` | nodes holding a connection of `u` |
//! | `Target::Connection(c)` | `Node(n)`, `n` = node part of `c` | node `n` only |
//! | `Target::All` | `Broadcast` | every node |
//!
//! **Interest-based routing.** A node subscribes to a topic or user channel
//! when its first local connection needs it and unsubscribes when the last one
//! leaves, so a message for user 42 reaches only the nodes holding user 42.
//! [`Hub::connect`] returns only once the node's subscription is in place, so
//! an event published after `connect` returns is never missed for lack of a
//! subscription. Subscription changes are applied one at a time, in order, so
//! a quick disconnect/reconnect cannot leave the node unsubscribed.
//!
//! **Local fast path.** A publish delivers to this node's own receivers
//! directly, then publishes on the bus for the others; this node ignores its
//! own echo (the envelope carries its `origin`), so nothing is delivered
//! twice. An event for a connection held here does not touch the bus at all.
//!
//! **Wire format.** Bus messages are a small, versioned JSON envelope that any
//! language can write; see [`wire`]. On Redis, the channel names are
//! `{prefix}topic:{t}`, `{prefix}user:{u}`, `{prefix}node:{n}` and
//! `{prefix}all` (prefix `sse:` by default), so from a shell:
//!
//! ```text
//! redis-cli PUBLISH sse:topic:news '{"v":1,"event":"headline","data":"hello"}'
//! ```
//!
//! On NATS the subjects are `{prefix}.topic.{t}`, `{prefix}.user.{u}`,
//! `{prefix}.node.{n}` and `{prefix}.all` (prefix `sse`), with topic and user
//! names encoded into valid subject tokens (`a.b` becomes `a%2Eb`, so a user
//! named `>` cannot subscribe to everything); see `broker::nats`. On Kafka
//! the channel is the record key (`topic:{t}`, `user:{u}`, `node:{n}`,
//! `broadcast`) in one topic that every node reads whole; see
//! `broker::kafka`.
//!
//! **Broker outages.** When the broker loses its server, the hub reports
//! [`BrokerStatus::Down`] ([`Hub::broker_status`]), publishes still reach
//! local receivers but return a transient [`PublishError::Broker`], and
//! every failure is counted ([`HubStats`]). When the broker is back (it
//! reconnects with backoff and re-subscribes), every stream gets a
//! `sse-cluster.gap` event with `{"reason":"bus"}` so the app can refetch
//! what it may have missed ([`HubBuilder::gap_events`]).
//!
//! **Slow clients.** Every connection has a bounded queue
//! ([`StreamConfig`]); a full queue closes the connection (default, the client
//! reconnects) or drops events with a gap event ([`OverflowPolicy`]). Sending
//! never waits, so one slow client never slows the others.
//!
//! **Presence.** [`Hub::presence`] counts a topic's connections and distinct
//! users across the cluster and tells whether a user is connected anywhere,
//! by a query on the bus that every node answers; a node that dies uncleanly
//! is forgotten within `forget_after` (6 s by default). See [`presence`].
//!
//! **Tokens and CORS.** An [`Authorizer`](auth::Authorizer) decides every
//! connect made through [`Hub::respond`]; with the `jwt` feature,
//! `auth::jwt::JwtAuth` is one for signed tokens (read from a bearer
//! header, a cookie or the query; per-topic grants; the stream ends at the
//! token's `exp` with an [`EXPIRED_EVENT`]). [`HubBuilder::cors`] grants
//! allowed origins on every answer, refusals included, and answers
//! preflights; the `http1` driver takes the same [`cors::Cors`].
//!
//! **Metrics and tracing.** Every hub records counters, gauges and a
//! publish-to-frame latency histogram through the `metrics` facade and opens
//! `tracing` spans for connect, publish, replay and shutdown; names in
//! [`telemetry`].
//!
//! **Shutdown.** [`Hub::shutdown`] refuses new connections, sends every client
//! a randomized `retry:` (so reconnects spread out), ends every stream so the
//! HTTP server's graceful shutdown can complete, waits for the streams to
//! finish, then unsubscribes and shuts down the broker.
//!
//! **Layers.** Each module imports only from the layers below it: the
//! adapters, then [`hub`] and [`publisher`], then [`presence`], [`auth`],
//! [`cors`] and [`subscription`], then the two paths of an event
//! ([`outbound`]: target → channel, envelope, size check, send to bus or
//! store; [`resume`]: event ids, the cursor, replay), then [`registry`] and [`stream`], then
//! [`history`] and [`broker`] (the backend contracts), and at the bottom
//! [`wire`], [`event`], [`limits`] and [`telemetry`]. `ARCHITECTURE.md` in
//! the repository follows one event through them.
//!
//! # Delivery guarantees
//!
//! - **Without a history store: at most once.** An event reaches the
//!   connections registered when it is delivered on their node, once.
//!   Events from one task's successive publishes to one target arrive at
//!   each of its connections in publish order; across targets the order
//!   also holds on the in-memory and Redis brokers, but not on NATS
//!   (async-nats queues each subject separately). If the broker is down, a
//!   publish still reaches local receivers and returns
//!   [`PublishError::Broker`]; other nodes miss it, and their streams get a
//!   gap event when the bus is back.
//! - **With a history store ([`HubBuilder::history`]): exactly once, in
//!   order per channel, inside the retention window.** A client that
//!   reconnects to any node with its `Last-Event-ID` receives every event
//!   of its topics, its user and broadcasts that it missed, once, then live
//!   events; beyond the window it gets the documented reset event
//!   ([`resume`]), never a silent hole. A broker outage is healed by a
//!   replay instead of a gap event.
//!
//! The README's table gives both per backend, with the exceptions.
//!
//! # Resume
//!
//! Event ids encode the connection's position in each of its channels;
//! [`Hub::respond`] and [`Hub::connect_request`] read `Last-Event-ID`
//! (header or `last_event_id` query parameter) from the request, and
//! [`Hub::connect`] takes it from [`Subscription::resume_from`]. The stores:
//! [`history::memory`] (one process), `history::redis` (Redis Streams,
//! feature `redis`), `history::jetstream` (feature `nats`),
//! `history::postgres` (feature `postgres`) and `history::kafka` (the bus
//! topic itself, feature `kafka`); the codec,
//! the live/replay seam and the reset reasons are in [`resume`].
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `axum` | yes | [`adapters::axum`]: `IntoResponse` for [`Connection`] and [`SseStream`], a `LastEventId` extractor |
//! | `http1` | yes | [`adapters::http1`]: a small HTTP/1.1 driver that streams SSE without hyper's per-connection buffers |
//! | `hyper` | no | [`adapters::hyper`]: response and `Last-Event-ID` helpers for plain hyper 1 |
//! | `redis` | no | `broker::redis`: Redis pub/sub, sharded pub/sub and Redis Cluster, with TLS |
//! | `nats` | no | `broker::nats`: core NATS subjects, with credentials, token, user/password and TLS |
//! | `jwt` | no | `auth::jwt`: signed tokens (HS256, ES256, RS256) from a bearer header, a cookie or the query, per-topic grants, streams that end at `exp` |
//! | `postgres` | no | `broker::postgres` and `history::postgres`: Postgres `LISTEN`/`NOTIFY` as the bus and tables as the history, through tokio-postgres |
//! | `kafka` | no | `broker::kafka` and `history::kafka`: one Kafka topic as the bus, read whole by every node, and the same log as the history, through rskafka |
//! | `testkit` | no | `testkit`: the conformance suite every backend passes, for authors of a `Broker` or `History` outside this crate |
//!
//! The in-memory broker ([`broker::memory`]) is always available.

#![cfg_attr(docsrs, feature(doc_cfg))]

// Layers, top to bottom (see ARCHITECTURE.md): a module imports only from
// the groups below its own.
pub mod adapters;

pub mod hub;
pub mod publisher;

pub mod auth;
pub mod cors;
pub mod presence;
pub mod subscription;

pub mod outbound;
pub mod resume;

pub mod registry;
pub mod stream;

pub mod history;

pub mod broker;

pub mod event;
pub mod limits;
pub mod telemetry;
#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod testkit;
pub mod wire;

pub use broker::{Broker, BrokerError, BrokerStatus};
pub use event::{Event, EventError};
pub use hub::{
    ConnectError, Connection, Disconnect, Hub, HubBuilder, HubError, ResumeTokenError,
    CLOSED_EVENT, REFUSED_EVENT,
};
pub use outbound::{PublishError, PublishReceipt, Target};
pub use publisher::Publisher;
pub use registry::{ConnectionId, ConnectionRegistry};
pub use stream::{FrameSender, OverflowPolicy, SseStream, StreamConfig};
pub use subscription::{Subscription, EXPIRED_EVENT};
pub use telemetry::HubStats;

/// The README's examples, compiled as doctests (they use every backend and
/// the `jwt` feature; CI runs them with `--all-features`).
#[cfg(all(
    doctest,
    feature = "axum",
    feature = "redis",
    feature = "nats",
    feature = "postgres",
    feature = "kafka",
    feature = "jwt"
))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
