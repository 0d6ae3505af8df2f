//! The duplicate of the rolling-deploy report, made deterministic: a store
//! that names its epoch out of band (as JetStream does: republished
//! messages carry a sequence but no epoch) has not learnt the epoch on a
//! node that just started; a client resumes there, and a live event
//! arrives while the node is still reading the heads. That event is in the
//! store, so the replay sends it; it must not also go out live (which sent
//! it twice, the first time ahead of older ones).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::broker::{BrokerError, Channel};
use sse_cluster::history::memory::MemoryHistory;
use sse_cluster::history::{Entry, Head, History, Position, Retention};
use sse_cluster::{Event, Hub, SseStream, StreamConfig, Subscription, Target};
use tokio::sync::Notify;

/// A store that publishes `pos` without `epoch`, learns its epoch on its
/// first `heads`, and can hold `heads` until told to go on.
#[derive(Debug)]
struct LateEpoch {
    /// The storage (on a bus of its own, which nobody listens to).
    store: Arc<MemoryHistory>,
    /// The cluster's bus.
    bus: MemoryBus,
    known: AtomicBool,
    entered: Arc<Notify>,
    proceed: Arc<Notify>,
    gate: bool,
    /// The epoch it reports once known.
    epoch: Arc<str>,
}

#[async_trait]
impl History for LateEpoch {
    async fn append(&self, channel: &Channel, payload: Bytes) -> Result<Position, BrokerError> {
        let position = self.store.append(channel, payload.clone()).await?;
        let body = payload.strip_suffix(b"}").unwrap_or(&payload);
        let mut stamped = body.to_vec();
        stamped.extend_from_slice(format!(r#","pos":"{}"}}"#, position.major()).as_bytes());
        self.bus.deliver(channel, &Bytes::from(stamped));
        Ok(position)
    }

    async fn heads(
        &self,
        channels: &[(Channel, Option<Position>)],
    ) -> Result<Vec<Head>, BrokerError> {
        if self.gate {
            self.entered.notify_one();
            self.proceed.notified().await;
        }
        let heads = self.store.heads(channels).await;
        self.known.store(true, Ordering::SeqCst);
        heads
    }

    async fn read(
        &self,
        channel: &Channel,
        after: Position,
        limit: usize,
    ) -> Result<Vec<Entry>, BrokerError> {
        self.store.read(channel, after, limit).await
    }

    fn live_epoch(&self, _channel: &Channel) -> Option<Arc<str>> {
        self.known
            .load(Ordering::SeqCst)
            .then(|| self.epoch.clone())
    }
}

impl LateEpoch {
    fn epoch_of(store: &MemoryHistory) -> Arc<str> {
        let heads =
            futures_util::FutureExt::now_or_never(store.heads(&[(Channel::Broadcast, None)]))
                .expect("memory heads are ready at once")
                .expect("heads");
        heads[0].epoch.clone()
    }
}

/// The data of the next event (not the id-only frames) on `stream`.
async fn next_data(stream: &mut SseStream) -> String {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a frame within 5 s")
            .expect("the stream goes on");
        let text = String::from_utf8(frame.to_vec()).expect("utf-8");
        if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
            return data.to_owned();
        }
    }
}

/// The id of the frame carrying `data`.
async fn id_of(stream: &mut SseStream, data: &str) -> String {
    let frame = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a frame")
        .expect("the stream goes on");
    let text = String::from_utf8(frame.to_vec()).expect("utf-8");
    assert!(text.contains(&format!("data: {data}")), "{text:?}");
    text.lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an id")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_event_during_a_new_nodes_first_resume_is_sent_once_in_order() {
    let bus = MemoryBus::new();
    let store = Arc::new(MemoryHistory::new(&MemoryBus::new(), Retention::default()));
    let epoch = LateEpoch::epoch_of(&store);
    let config = StreamConfig::default().keep_alive(None).initial_retry(None);
    let history = |gate: bool| {
        Arc::new(LateEpoch {
            store: store.clone(),
            bus: bus.clone(),
            known: AtomicBool::new(false),
            entered: Arc::new(Notify::new()),
            proceed: Arc::new(Notify::new()),
            gate,
            epoch: epoch.clone(),
        })
    };

    // Node A: the client reads e1 and keeps its id.
    let a_history = history(false);
    let a = Hub::builder()
        .node_id("a")
        .broker(bus.broker())
        .history(a_history)
        .stream_config(config.clone())
        .build()
        .await
        .expect("hub a");
    let mut on_a = a
        .connect(Subscription::new().topic("t"))
        .await
        .expect("connect a")
        .into_stream();
    let _id_only = on_a.next().await;
    a.publish(Target::topic("t"), Event::new().data("e1"))
        .await
        .expect("publish");
    let last_id = id_of(&mut on_a, "e1").await;
    drop(on_a);
    a.publish(Target::topic("t"), Event::new().data("e2"))
        .await
        .expect("publish");

    // Node B has just started: its store has not learnt the epoch. The
    // client resumes there; e3 is published while B reads the heads.
    let b_history = history(true);
    let (entered, proceed) = (b_history.entered.clone(), b_history.proceed.clone());
    let b = Hub::builder()
        .node_id("b")
        .broker(bus.broker())
        .history(b_history)
        .stream_config(config)
        .build()
        .await
        .expect("hub b");
    let connect = tokio::spawn({
        let b = b.clone();
        async move {
            b.connect(Subscription::new().topic("t").last_event_id(last_id))
                .await
                .expect("connect b")
                .into_stream()
        }
    });
    entered.notified().await;
    a.publish(Target::topic("t"), Event::new().data("e3"))
        .await
        .expect("publish");
    proceed.notify_one();
    let mut on_b = connect.await.expect("join");
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(next_data(&mut on_b).await);
    }
    a.publish(Target::topic("t"), Event::new().data("e4"))
        .await
        .expect("publish");
    got.push(next_data(&mut on_b).await);
    assert_eq!(got, ["e2", "e3", "e4"], "each once, in order");
}
