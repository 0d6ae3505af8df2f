//! Helpers shared by the broker test suites (Redis, NATS): waiting,
//! checking events, and a steady publisher and reader for fault tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Event as SseEvent;
use hyper::StatusCode;
use sse_cluster::{BrokerStatus, Event, Hub, PublishError, Target};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{post, SseClient};

/// Poll interval of [`wait_until`].
pub const TICK: Duration = Duration::from_millis(2);

/// Waits until `cond` holds; panics after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(TICK).await;
    }
}

pub fn both(a: &Hub, b: &Hub, status: BrokerStatus) -> bool {
    a.broker_status() == status && b.broker_status() == status
}

/// Reads the next events of `client` and checks their data, in order.
pub async fn expect_data(client: &mut SseClient, who: &str, expected: &[&str]) {
    for want in expected {
        let event = client
            .next()
            .await
            .unwrap_or_else(|| panic!("{who}: no event, expected {want:?}"));
        assert_eq!(event.data, *want, "{who}: {event:?}");
    }
}

/// Asserts that none of `clients` gets an event within `support::QUIET`
/// (all watched at once).
pub async fn all_quiet(clients: Vec<&mut SseClient>) {
    futures_util::future::join_all(clients.into_iter().map(|c| c.expect_quiet())).await;
}

pub async fn post_ok(addr: SocketAddr, path: &str, body: &str) {
    let (status, text) = post(addr, path, body.to_owned()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "POST {path}: {text}");
}

/// Reads `client` in the background until an event named `until` (not
/// included) or until 15 s have passed.
pub fn spawn_reader(mut client: SseClient, until: &'static str) -> JoinHandle<Vec<SseEvent>> {
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut events = Vec::new();
        while let Some(event) = client
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            if event.event == until {
                return events;
            }
            events.push(event);
        }
        panic!(
            "no {until:?} event within 15 s; got {} events",
            events.len()
        );
    })
}

/// One publish attempt by [`spawn_publisher`].
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub seq: u64,
    pub started: Instant,
    pub ok: bool,
}

/// Publishes `0`, `1`, `2`… to `topic` on `hub` every ~3 ms until `stop`
/// (at most 4000 attempts), recording each attempt.
pub fn spawn_publisher(
    hub: Hub,
    topic: &'static str,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<Attempt>> {
    publish_loop(
        hub,
        topic,
        stop,
        4000,
        Pace::After(Duration::from_millis(3)),
    )
}

/// How [`publish_loop`] spaces its publishes.
enum Pace {
    /// A pause after each publish.
    After(Duration),
    /// One publish per tick of this period (100 per second for 10 ms).
    Every(Duration),
}

/// Publishes `0`, `1`, `2`… to `topic` through `hub` until `stop` (at
/// most `max`), recording each attempt; every failure must be a transient
/// bus error.
fn publish_loop(
    hub: Hub,
    topic: &'static str,
    stop: Arc<AtomicBool>,
    max: u64,
    pace: Pace,
) -> JoinHandle<Vec<Attempt>> {
    tokio::spawn(async move {
        let mut log = Vec::new();
        let mut tick = match pace {
            Pace::Every(period) => Some(tokio::time::interval(period)),
            Pace::After(_) => None,
        };
        for seq in 0..max {
            if let Some(tick) = &mut tick {
                tick.tick().await;
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let started = Instant::now();
            let result = hub
                .publish(Target::topic(topic), Event::new().data(seq.to_string()))
                .await;
            if let Err(err) = &result {
                assert!(
                    matches!(err, PublishError::Broker(_)) && err.is_transient(),
                    "unexpected publish error: {err:?}"
                );
            }
            log.push(Attempt {
                seq,
                started,
                ok: result.is_ok(),
            });
            if let Pace::After(pause) = pace {
                tokio::time::sleep(pause).await;
            }
        }
        log
    })
}

/// Publishes `0`, `1`, `2`… to `topic` through `hub`, one every 10 ms
/// (100 events/s) until `stop` (at most 3000), recording each attempt;
/// every failure must be a transient bus error.
pub fn publish_steadily(
    hub: Hub,
    topic: &'static str,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<Attempt>> {
    publish_loop(
        hub,
        topic,
        stop,
        3000,
        Pace::Every(Duration::from_millis(10)),
    )
}

/// Reads a client that resumed after an outage until the event `newest`
/// (each event's data is a sequence number): whether the reset event came
/// first, and the numbers received, checked to arrive once and in order.
pub async fn read_resumed(
    back: &mut SseClient,
    newest: u64,
    reset_event: &str,
) -> (bool, Vec<u64>) {
    let mut reset = false;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.last() != Some(&newest) {
        assert!(
            Instant::now() < deadline,
            "stalled at {:?}, newest {newest}",
            got.last()
        );
        let Some(event) = back.next_within(Duration::from_secs(2)).await else {
            panic!(
                "stream stalled after {:?}, newest acknowledged {newest}",
                got.last()
            );
        };
        if event.event == reset_event {
            assert!(got.is_empty(), "a reset after events: {event:?}");
            reset = true;
            continue;
        }
        got.push(event.data.parse::<u64>().expect("a sequence number"));
    }
    back.expect_quiet().await;
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "duplicates or disorder: {got:?}"
    );
    (reset, got)
}
