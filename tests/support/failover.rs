//! The shared shape of the broker failover tests (Sentinel, Redis Cluster,
//! NATS cluster): a node publishes 100 numbered events/s while a client
//! reads another node's stream; the test kills a server; both hubs must go
//! Down, then Up within the failover time plus 2 s; and the client, after
//! reconnecting through a balancer (which sends it to the other node) with
//! its `Last-Event-ID`, must have every acknowledged event exactly once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sse_cluster::{BrokerStatus, Event, Hub, Target};
use tokio::task::JoinHandle;

use super::balancer::Balancer;
use super::bus::{both, wait_until};
use super::SseClient;

/// Publishing and reading in the background.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Publishes acknowledged so far.
    acks: Arc<std::sync::atomic::AtomicUsize>,
    publisher: JoinHandle<Vec<u64>>,
    reader: JoinHandle<(Vec<u64>, String, bool)>,
}

/// A client of `/events?topic=TOPIC` through a balancer in front of
/// `first` and `then`, in turn: the client's stream is on `first`, and its
/// reconnect (the resume in [`Load::finish_and_resume`]) goes to `then`.
pub async fn client_behind_balancer(
    first: SocketAddr,
    then: SocketAddr,
    topic: &str,
) -> (Balancer, SseClient) {
    let balancer = Balancer::start(&[first, then]).await;
    let path = format!("/events?topic={topic}");
    let client = SseClient::open(balancer.addr, &path, &[]).await;
    assert_eq!(client.status, 200);
    (balancer, client)
}

/// Reads `client` until nothing arrives for `quiet`: appends the numbered
/// events to `got`, keeps the last event id; true if a reset came.
pub async fn read_until_quiet(
    client: &mut SseClient,
    quiet: Duration,
    got: &mut Vec<u64>,
    last_id: &mut String,
) -> bool {
    let mut reset = false;
    while let Some(event) = client.next_within(quiet).await {
        if event.event == "sse-cluster.reset" {
            eprintln!("reset: {} (after {} events)", event.data, got.len());
            reset = true;
        }
        if !event.id.is_empty() {
            last_id.clone_from(&event.id);
        }
        if let Ok(n) = event.data.parse::<u64>() {
            got.push(n);
        }
    }
    reset
}

impl Load {
    /// Publishes `0, 1, 2…` to `topic` through `publisher` every 10 ms
    /// (at most 3000), recording what succeeded, and reads `client` until it
    /// has been quiet for 8 s.
    pub fn start(publisher: Hub, topic: &'static str, mut client: SseClient) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let publisher = {
            let (stop, acks) = (stop.clone(), acks.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                for n in 0..3000u64 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    tick.tick().await;
                    let event = Event::new().data(n.to_string());
                    if publisher.publish(Target::topic(topic), event).await.is_ok() {
                        acked.push(n);
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                }
                acked
            })
        };
        let reader = tokio::spawn(async move {
            let (mut got, mut last_id) = (Vec::new(), String::new());
            let quiet = Duration::from_secs(8);
            let reset = read_until_quiet(&mut client, quiet, &mut got, &mut last_id).await;
            (got, last_id, reset)
        });
        Load {
            stop,
            acks,
            publisher,
            reader,
        }
    }

    /// Waits until `more` further publishes have been acknowledged (the
    /// servers may need a while after the broker is back, e.g. to elect a
    /// replicated stream's new leader); panics after 30 s.
    pub async fn wait_for_acks(&self, more: usize) {
        let target = self.acks.load(Ordering::SeqCst) + more;
        wait_until(
            "publishes acknowledged again",
            Duration::from_secs(30),
            || self.acks.load(Ordering::SeqCst) >= target,
        )
        .await;
    }

    /// Stops publishing, waits for the reader, reconnects through
    /// `balancer` to `/events?topic=TOPIC` with the last id, and checks: no
    /// reset, no duplicate, every acknowledged event received.
    pub async fn finish_and_resume(self, balancer: &Balancer, topic: &str) {
        self.stop.store(true, Ordering::SeqCst);
        let acked = self.publisher.await.expect("publisher");
        assert!(acked.len() > 100, "{} acknowledged", acked.len());
        let (mut got, last_id, reset) = self.reader.await.expect("reader");
        assert!(!reset, "no reset while the history survives the failover");
        let path = format!("/events?topic={topic}");
        let headers = [("last-event-id", last_id.as_str())];
        let mut again = SseClient::open(balancer.addr, &path, &headers).await;
        assert_eq!(again.status, 200);
        let mut last = last_id;
        let reset = read_until_quiet(&mut again, Duration::from_secs(2), &mut got, &mut last).await;
        assert!(!reset, "resumed without a reset");
        let mut seen = BTreeMap::new();
        for n in &got {
            *seen.entry(*n).or_insert(0u32) += 1;
        }
        let duplicated: Vec<_> = seen
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(duplicated, Vec::<u64>::new(), "duplicated");
        let lost: Vec<_> = acked
            .iter()
            .filter(|n| !seen.contains_key(n))
            .copied()
            .collect();
        assert_eq!(lost, Vec::<u64>::new(), "acknowledged but never received");
        eprintln!(
            "{} acknowledged, {} received once each",
            acked.len(),
            seen.len()
        );
    }
}

/// After a server was killed at `killed`: `watched` goes Down, `failed_over`
/// says when the servers have recovered on their own, and both hubs are Up
/// again within that time plus 2 s. Returns (down, failover, up) times.
pub async fn expect_follow(
    watched: &Hub,
    other: &Hub,
    killed: Instant,
    mut failed_over: impl FnMut() -> bool,
) -> (Duration, Duration, Duration) {
    wait_until("down", Duration::from_secs(10), || {
        watched.broker_status() == BrokerStatus::Down
    })
    .await;
    let down = killed.elapsed();
    while !tokio::task::block_in_place(&mut failed_over) {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no failover within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failover = killed.elapsed();
    wait_until("both hubs up again", Duration::from_secs(30), || {
        both(watched, other, BrokerStatus::Up)
    })
    .await;
    let up = killed.elapsed();
    assert!(
        up <= failover + Duration::from_secs(2),
        "up after {up:?}, the failover took {failover:?}"
    );
    eprintln!("down after {down:?}, failover after {failover:?}, up after {up:?}");
    (down, failover, up)
}
