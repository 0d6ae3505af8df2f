//! The scenarios of the suite and the harness they share: a cluster of hubs
//! on one namespace of the backend, clients that parse their streams as SSE.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event as SseEvent, EventStreamError, Eventsource};
use futures_core::Stream;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::{Backend, Capabilities, NodeParts, Scenario};
use crate::broker::{BrokerStatus, BusSink, Channel};
use crate::history::Retention;
use crate::resume::RESET_EVENT;
use crate::stream::GAP_EVENT;
use crate::{ConnectionId, Event, Hub, PublishError, StreamConfig, Subscription, Target};

mod edges;

/// How long the suite waits for an event that should arrive.
const EVENT_WAIT: Duration = Duration::from_secs(5);
/// How long the suite waits for a status change (a reconnect with backoff).
const STATUS_WAIT: Duration = Duration::from_secs(15);
/// How long the suite watches to be confident that nothing more arrives.
const QUIET: Duration = Duration::from_millis(300);
/// Poll interval of status and counter waits.
const TICK: Duration = Duration::from_millis(10);

/// Runs `scenario` on a fresh cluster named `namespace`, then shuts its hubs
/// down.
pub(super) async fn run(
    backend: &dyn Backend,
    capabilities: Capabilities,
    namespace: String,
    scenario: Scenario,
) {
    let mut cx = Cx {
        backend,
        capabilities,
        namespace,
        hubs: Vec::new(),
    };
    match scenario {
        Scenario::Delivery => delivery(&mut cx).await,
        Scenario::Order => order(&mut cx).await,
        Scenario::InterestRouting => interest_routing(&mut cx).await,
        Scenario::Outage => outage(&mut cx).await,
        Scenario::Restart => restart(&mut cx).await,
        Scenario::Resume => resume(&mut cx).await,
        Scenario::ResumeToken => edges::resume_token(&mut cx).await,
        Scenario::ResetBeyondRetention => reset_beyond_retention(&mut cx).await,
        Scenario::Idempotency => edges::idempotency(&mut cx).await,
        Scenario::HostileEnvelopes => hostile_envelopes(&mut cx).await,
    }
    cx.shutdown().await;
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// One scenario's cluster: its namespace and the hubs built so far.
struct Cx<'a> {
    backend: &'a dyn Backend,
    capabilities: Capabilities,
    namespace: String,
    hubs: Vec<Hub>,
}

impl Cx<'_> {
    /// The retention to build hubs with in scenarios that run with history
    /// when the backend has it.
    fn default_history(&self) -> Option<Retention> {
        self.capabilities.history.then(Retention::default)
    }

    /// The parts of one more node of this namespace.
    async fn parts(&self, history: Option<Retention>) -> NodeParts {
        let parts = self
            .backend
            .node(&self.namespace, history)
            .await
            .unwrap_or_else(|e| panic!("Backend::node({:?}) failed: {e}", self.namespace));
        if history.is_some() {
            assert!(
                parts.history.is_some(),
                "Backend::node was asked for history (capabilities say it has some) and returned none"
            );
        }
        parts
    }

    /// A hub `id` of this namespace, with history when `history` is given.
    async fn hub(&mut self, id: &str, history: Option<Retention>) -> Hub {
        let parts = self.parts(history).await;
        let mut builder = Hub::builder()
            .node_id(id)
            .broker(parts.broker)
            .gap_events(true)
            .stream_config(
                StreamConfig::default()
                    .keep_alive(None)
                    .queue_limits(10_000, 1 << 24),
            );
        if let Some(store) = parts.history.filter(|_| history.is_some()) {
            builder = builder.history(store);
        }
        let hub = builder
            .build()
            .await
            .unwrap_or_else(|e| panic!("hub {id}: build failed: {e}"));
        self.hubs.push(hub.clone());
        hub
    }

    async fn shutdown(&mut self) {
        for hub in self.hubs.drain(..) {
            hub.shutdown().await;
        }
    }
}

type Frames = Pin<Box<dyn Stream<Item = Result<SseEvent, EventStreamError<Infallible>>> + Send>>;

/// One connection's stream, parsed as SSE.
struct Client {
    who: String,
    id: ConnectionId,
    frames: Frames,
}

impl Client {
    /// Connects `sub` on `hub`; `who` names the client in messages.
    async fn open(hub: &Hub, sub: Subscription, who: &str) -> Client {
        let connection = hub
            .connect(sub)
            .await
            .unwrap_or_else(|e| panic!("{who}: connect refused: {e}"));
        let id = connection.id().clone();
        let frames = connection
            .into_stream()
            .map(Ok::<Bytes, Infallible>)
            .eventsource()
            .boxed();
        Client {
            who: who.to_owned(),
            id,
            frames,
        }
    }

    /// The next event within `limit`; `None` on timeout or end of stream.
    async fn next_within(&mut self, limit: Duration) -> Option<SseEvent> {
        match tokio::time::timeout(limit, self.frames.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(e))) => panic!("{}: SSE parse error: {e}", self.who),
            Ok(None) | Err(_) => None,
        }
    }

    /// The next event; panics if none comes within [`EVENT_WAIT`], saying
    /// what was `expected`.
    async fn next(&mut self, expected: &str) -> SseEvent {
        match self.next_within(EVENT_WAIT).await {
            Some(event) => event,
            None => panic!(
                "{}: no event within {EVENT_WAIT:?}; expected {expected}",
                self.who
            ),
        }
    }

    /// The data of the next `n` events, which must be plain messages.
    async fn messages(&mut self, n: usize, what: &str) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let event = self.next(&format!("{what} ({i} of {n} received)")).await;
            assert_eq!(
                event.event, "message",
                "{}: expected {what}, got {event:?}",
                self.who
            );
            out.push(event.data);
        }
        out
    }

    /// The next events are exactly `want`, in any order (events of
    /// different channels may overtake each other on some buses).
    async fn expect_set(&mut self, want: &[&str]) {
        let mut got = self.messages(want.len(), &format!("{want:?}")).await;
        got.sort();
        let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        assert_eq!(got, want, "{}: wrong events", self.who);
    }

    /// Panics if an event arrives within [`QUIET`].
    async fn expect_quiet(&mut self) {
        if let Some(event) = self.next_within(QUIET).await {
            panic!("{}: unexpected event {event:?}", self.who);
        }
    }
}

/// Publishes an event with `data` to `target`; panics on failure.
async fn publish(hub: &Hub, target: Target, data: &str) {
    if let Err(e) = hub.publish(target.clone(), Event::new().data(data)).await {
        panic!(
            "hub {}: publish {data:?} to {target:?} failed: {e}",
            hub.node_id()
        );
    }
}

/// Waits until `cond` holds; panics after `limit`.
async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(TICK).await;
    }
}

fn all_status(hubs: &[&Hub], status: BrokerStatus) -> bool {
    hubs.iter().all(|h| h.broker_status() == status)
}

/// `data` of the form `name:n`, grouped by name, `n` in arrival order.
fn by_channel(data: &[String]) -> BTreeMap<String, Vec<usize>> {
    let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for d in data {
        let (name, n) = d
            .split_once(':')
            .unwrap_or_else(|| panic!("unexpected event data {d:?}"));
        let n = n
            .parse()
            .unwrap_or_else(|_| panic!("unexpected event data {d:?}"));
        out.entry(name.to_owned()).or_default().push(n);
    }
    out
}

/// A sink that drops everything: the hostile publisher only publishes.
struct DiscardSink;

impl BusSink for DiscardSink {
    fn deliver(&self, _channel: &Channel, _payload: Bytes) {}

    fn status_changed(&self, _status: BrokerStatus) {}
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

async fn delivery(cx: &mut Cx<'_>) {
    let history = cx.default_history();
    let a = cx.hub("a", history).await;
    let b = cx.hub("b", history).await;
    let mut on_topic = Client::open(&b, Subscription::new().topic("t"), "topic t on b").await;
    let mut on_user = Client::open(&b, Subscription::new().user("u"), "user u on b").await;
    let mut plain = Client::open(&b, Subscription::new(), "plain connection on b").await;
    let mut bystander = Client::open(
        &b,
        Subscription::new().user("v").topic("other"),
        "user v / topic other on b",
    )
    .await;
    let mut local = Client::open(
        &a,
        Subscription::new().user("u").topic("t"),
        "user u / topic t on a",
    )
    .await;

    publish(&a, Target::topic("t"), "to-topic").await;
    publish(&a, Target::user("u"), "to-user").await;
    publish(&a, Target::Connection(plain.id.clone()), "to-connection").await;
    publish(&a, Target::All, "to-all").await;

    on_topic.expect_set(&["to-topic", "to-all"]).await;
    on_user.expect_set(&["to-user", "to-all"]).await;
    plain.expect_set(&["to-connection", "to-all"]).await;
    bystander.expect_set(&["to-all"]).await;
    // Local receivers get each event once: the hub's own echo is ignored.
    local.expect_set(&["to-topic", "to-user", "to-all"]).await;
    for client in [
        &mut on_topic,
        &mut on_user,
        &mut plain,
        &mut bystander,
        &mut local,
    ] {
        client.expect_quiet().await;
    }
    for hub in [&a, &b] {
        let stats = hub.stats();
        assert_eq!(stats.bus_malformed, 0, "hub {}: {stats:?}", hub.node_id());
    }
}

async fn order(cx: &mut Cx<'_>) {
    const EACH: usize = 100;
    let history = cx.default_history();
    let a = cx.hub("a", history).await;
    let b = cx.hub("b", history).await;
    let mut client = Client::open(
        &b,
        Subscription::new().topic("o").user("ou"),
        "topic o / user ou on b",
    )
    .await;
    for i in 0..EACH {
        publish(&a, Target::topic("o"), &format!("o:{i}")).await;
        publish(&a, Target::user("ou"), &format!("ou:{i}")).await;
    }
    let got = client.messages(2 * EACH, "the 200 events").await;
    let got = by_channel(&got);
    let want: Vec<usize> = (0..EACH).collect();
    for name in ["o", "ou"] {
        assert_eq!(
            got.get(name),
            Some(&want),
            "channel {name}: every event once, in publish order"
        );
    }
    client.expect_quiet().await;
}

async fn interest_routing(cx: &mut Cx<'_>) {
    let history = cx.default_history();
    let a = cx.hub("a", history).await;
    let b = cx.hub("b", history).await;
    let mut held = Client::open(&b, Subscription::new().topic("held"), "topic held on b").await;
    publish(&a, Target::topic("held"), "warm-up").await;
    held.expect_set(&["warm-up"]).await;
    // With history, the client may get the warm-up from its replay while
    // the live copy is still on its way (then skipped as a duplicate, but
    // counted as received): let it land before counting.
    tokio::time::sleep(QUIET).await;

    let before = b.stats().bus_in;
    for i in 0..20 {
        publish(&a, Target::topic("unheld"), &format!("unheld:{i}")).await;
        publish(&a, Target::user("nobody"), &format!("nobody:{i}")).await;
    }
    publish(&a, Target::topic("held"), "marker").await;
    held.expect_set(&["marker"]).await;
    // Messages of other channels may trail the marker on some buses.
    tokio::time::sleep(QUIET).await;
    let heard = b.stats().bus_in - before;
    assert_eq!(
        heard, 1,
        "b received {heard} bus messages for 1 event on a channel it holds \
         (and 40 on channels it holds no connection for)"
    );

    // The last follower leaves: b stops listening to the topic.
    let subscriptions = b.stats().subscriptions;
    drop(held);
    wait_for(
        "b to unsubscribe the topic its last follower left",
        EVENT_WAIT,
        || b.stats().subscriptions < subscriptions,
    )
    .await;
    tokio::time::sleep(QUIET).await;
    let before = b.stats().bus_in;
    for i in 0..5 {
        publish(&a, Target::topic("held"), &format!("held:{i}")).await;
    }
    tokio::time::sleep(QUIET).await;
    let heard = b.stats().bus_in - before;
    assert_eq!(
        heard, 0,
        "b still received {heard} messages of a topic nobody on it follows any more"
    );
}

async fn outage(cx: &mut Cx<'_>) {
    // Without history: the promise is the gap event.
    let a = cx.hub("a", None).await;
    let b = cx.hub("b", None).await;
    let mut on_a = Client::open(&a, Subscription::new().topic("t"), "topic t on a").await;
    let mut on_b = Client::open(&b, Subscription::new().topic("t"), "topic t on b").await;
    publish(&a, Target::topic("t"), "before").await;
    on_a.expect_set(&["before"]).await;
    on_b.expect_set(&["before"]).await;

    cx.backend.outage(true).await;
    wait_for("every hub to report Down", STATUS_WAIT, || {
        all_status(&[&a, &b], BrokerStatus::Down)
    })
    .await;

    // Publishing during the outage: local receivers get the events, and
    // every attempt is accounted for, as a success or a bus error.
    let stats = a.stats();
    let (mut ok, mut failed) = (0u64, 0u64);
    for i in 0..5 {
        match a
            .publish(Target::topic("t"), Event::new().data(format!("during:{i}")))
            .await
        {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(
                    matches!(e, PublishError::Broker(_)) && e.is_transient(),
                    "a publish during an outage must fail as a transient bus error, not {e:?}"
                );
                failed += 1;
            }
        }
    }
    let after = a.stats();
    assert_eq!(
        (
            after.published - stats.published,
            after.bus_errors - stats.bus_errors
        ),
        (ok, failed),
        "a's counters (published, bus_errors) account for the publishes during the outage"
    );
    let local = on_a
        .messages(5, "the events published on a during the outage")
        .await;
    let want: Vec<String> = (0..5).map(|i| format!("during:{i}")).collect();
    assert_eq!(local, want, "local receivers get events during an outage");

    // A connection made during the outage: its interest is recorded.
    let mut late = Client::open(&b, Subscription::new().topic("late"), "topic late on b").await;

    cx.backend.outage(false).await;
    wait_for("every hub to report Up again", STATUS_WAIT, || {
        all_status(&[&a, &b], BrokerStatus::Up)
    })
    .await;
    let gap = on_a.next("the gap event after the outage").await;
    assert_eq!(
        (gap.event.as_str(), gap.data.as_str()),
        (GAP_EVENT, r#"{"reason":"bus"}"#),
        "topic t on a: the first event after the outage"
    );
    publish(&a, Target::topic("t"), "after").await;
    publish(&a, Target::topic("late"), "late").await;
    on_a.expect_set(&["after"]).await;
    expect_after_gap(&mut on_b, "after").await;
    expect_after_gap(&mut late, "late").await;
    for client in [&mut on_a, &mut on_b, &mut late] {
        client.expect_quiet().await;
    }
    for hub in [&a, &b] {
        let stats = hub.stats();
        assert!(
            stats.bus_outages >= 1 && stats.gap_events >= 1,
            "hub {}: {stats:?}",
            hub.node_id()
        );
    }
}

/// Reads `client` until an event with `data`: a gap event (reason `bus`)
/// must come before it, and nothing else but events published during the
/// outage (a bus may deliver those late, or not at all).
async fn expect_after_gap(client: &mut Client, data: &str) {
    let mut gap = false;
    for _ in 0..100 {
        let event = client.next(&format!("a gap event, then {data:?}")).await;
        if event.event == GAP_EVENT {
            assert_eq!(event.data, r#"{"reason":"bus"}"#, "{}", client.who);
            gap = true;
        } else if event.data == data {
            assert!(
                gap,
                "{}: {data:?} arrived without a gap event before it",
                client.who
            );
            return;
        } else {
            assert!(
                event.data.starts_with("during:"),
                "{}: unexpected {event:?}",
                client.who
            );
        }
    }
    panic!("{}: {data:?} not among 100 events", client.who);
}

async fn restart(cx: &mut Cx<'_>) {
    let a = cx.hub("a", None).await;
    let b = cx.hub("b", None).await;
    let mut on_b = Client::open(&b, Subscription::new().topic("r"), "topic r on b").await;
    let mut plain = Client::open(&b, Subscription::new(), "plain connection on b").await;
    publish(&a, Target::topic("r"), "before").await;
    on_b.expect_set(&["before"]).await;

    let outages = (a.stats().bus_outages, b.stats().bus_outages);
    cx.backend.restart().await;
    wait_for(
        "every hub to notice the restart and report Up again",
        STATUS_WAIT,
        || {
            a.stats().bus_outages > outages.0
                && b.stats().bus_outages > outages.1
                && all_status(&[&a, &b], BrokerStatus::Up)
        },
    )
    .await;
    publish(&a, Target::topic("r"), "after").await;
    publish(&a, Target::Connection(plain.id.clone()), "to-connection").await;
    publish(&a, Target::All, "to-all").await;
    for (client, want) in [
        (&mut on_b, ["after", "to-all"]),
        (&mut plain, ["to-connection", "to-all"]),
    ] {
        let gap = client.next("the gap event after the restart").await;
        assert_eq!(gap.event, GAP_EVENT, "{}: {gap:?}", client.who);
        client.expect_set(&want).await;
        client.expect_quiet().await;
    }
}

async fn resume(cx: &mut Cx<'_>) {
    const SEEN: usize = 5;
    const MISSED: usize = 20;
    let history = Some(Retention::default());
    let a = cx.hub("a", history).await;
    let b = cx.hub("b", history).await;
    let c = cx.hub("c", history).await;
    let follow = || Subscription::new().topic("r").user("ru");

    let mut client = Client::open(&a, follow(), "topic r / user ru on a").await;
    for i in 0..SEEN {
        publish(&b, Target::topic("r"), &format!("r:{i}")).await;
    }
    let mut last_id = String::new();
    for i in 0..SEEN {
        let event = client.next("the events before the disconnect").await;
        assert_eq!(
            (event.event.as_str(), event.data.clone()),
            ("message", format!("r:{i}")),
            "before the disconnect"
        );
        assert!(
            !event.id.is_empty(),
            "a resumable event without an id: {event:?}"
        );
        last_id = event.id;
    }
    drop(client);

    for i in SEEN..SEEN + MISSED {
        publish(&b, Target::topic("r"), &format!("r:{i}")).await;
        publish(&b, Target::user("ru"), &format!("ru:{i}")).await;
    }
    let replays = c.stats().replays;
    let mut client = Client::open(
        &c,
        follow().last_event_id(last_id),
        "topic r / user ru resumed on c",
    )
    .await;
    let got = client.messages(2 * MISSED, "the missed events").await;
    let got = by_channel(&got);
    let want: Vec<usize> = (SEEN..SEEN + MISSED).collect();
    for name in ["r", "ru"] {
        assert_eq!(
            got.get(name),
            Some(&want),
            "channel {name}: each missed event once, in order"
        );
    }
    // A missed event still in flight on the bus when the client subscribed
    // may come live instead (the seam drops the duplicate), so the count
    // of replayed events is not exact; a replay must have run.
    assert!(
        c.stats().replays > replays,
        "c resumed without a replay: {:?}",
        c.stats()
    );
    publish(&b, Target::topic("r"), "r:live").await;
    client.expect_set(&["r:live"]).await;
    client.expect_quiet().await;
}

async fn reset_beyond_retention(cx: &mut Cx<'_>) {
    const RETAINED: usize = 5;
    let history = Some(Retention::default().max_len(RETAINED));
    let a = cx.hub("a", history).await;
    let b = cx.hub("b", history).await;
    let mut client = Client::open(&a, Subscription::new().topic("x"), "topic x on a").await;
    publish(&b, Target::topic("x"), "x:0").await;
    let last_id = client.next("x:0").await.id;
    drop(client);
    for i in 1..=RETAINED * 3 {
        publish(&b, Target::topic("x"), &format!("x:{i}")).await;
    }
    let resets = b.stats().resets;
    let mut client = Client::open(
        &b,
        Subscription::new().topic("x").last_event_id(last_id),
        "topic x resumed on b",
    )
    .await;
    let first = client.next("the reset event").await;
    assert_eq!(
        (first.event.as_str(), first.data.as_str()),
        (RESET_EVENT, r#"{"reason":"expired"}"#),
        "the first event after missing {} events with {RETAINED} retained",
        RETAINED * 3
    );
    client.expect_quiet().await;
    publish(&a, Target::topic("x"), "x:live").await;
    client.expect_set(&["x:live"]).await;
    assert_eq!(b.stats().resets, resets + 1, "{:?}", b.stats());
}

async fn hostile_envelopes(cx: &mut Cx<'_>) {
    // A hub without history, and one with it when the backend has some
    // (their receive paths differ: the second one stamps event ids).
    let mut hubs = vec![cx.hub("a", None).await];
    if cx.capabilities.history {
        hubs.push(cx.hub("b", cx.default_history()).await);
    }
    let mut clients = Vec::new();
    for hub in &hubs {
        let who = format!("topic h on {}", hub.node_id());
        clients.push(Client::open(hub, Subscription::new().topic("h"), &who).await);
    }
    let raw = cx.parts(None).await.broker;
    raw.start(Arc::new(DiscardSink))
        .await
        .unwrap_or_else(|e| panic!("the hand-written publisher's broker did not start: {e}"));
    let mut status = raw.status();
    // The watch guard must not live across an await: the suite's futures are Send.
    let up = matches!(
        tokio::time::timeout(STATUS_WAIT, status.wait_for(|s| *s == BrokerStatus::Up)).await,
        Ok(Ok(_))
    );
    assert!(up, "the hand-written publisher's broker never came Up");

    let channel = Channel::Topic("h".into());
    let hostile: [&[u8]; 8] = [
        b"\xff\x00 not even text",
        b"not json",
        br#"{"v":1,"data":"cut"#,
        br#"{"v":99,"event":"e","data":"from the future"}"#,
        br#"{"v":1,"event":"x\ninjected: 1","data":"d"}"#,
        br#"{"v":1,"event":"x\ry","data":"d"}"#,
        br#"{"v":1,"id":"a\u0000b","data":"nul in the id"}"#,
        br#"{"v":1,"id":"a\nretry: 1","data":"newline in the id"}"#,
    ];
    let before: Vec<_> = hubs.iter().map(Hub::stats).collect();
    for payload in hostile {
        raw.publish(&channel, Bytes::from_static(payload))
            .await
            .unwrap_or_else(|e| panic!("publishing {payload:?} failed: {e}"));
    }
    raw.publish(
        &channel,
        Bytes::from_static(br#"{"v":1,"event":"ok","data":"still delivered"}"#),
    )
    .await
    .unwrap_or_else(|e| panic!("publishing a valid envelope failed: {e}"));

    for client in &mut clients {
        let event = client.next("the valid event after the hostile ones").await;
        assert_eq!(
            (event.event.as_str(), event.data.as_str()),
            ("ok", "still delivered"),
            "{}: the first event after {} hostile messages",
            client.who,
            hostile.len()
        );
        client.expect_quiet().await;
    }
    for (hub, before) in hubs.iter().zip(before) {
        let after = hub.stats();
        assert_eq!(
            (
                after.bus_in - before.bus_in,
                after.bus_malformed - before.bus_malformed
            ),
            (hostile.len() as u64 + 1, hostile.len() as u64),
            "hub {}: (bus_in, bus_malformed) growth: every hostile message counted, the valid one not",
            hub.node_id()
        );
        assert_eq!(
            hub.broker_status(),
            BrokerStatus::Up,
            "hub {}",
            hub.node_id()
        );
    }
    let _ = raw.shutdown().await;
}
