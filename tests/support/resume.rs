//! Resume scenarios shared by every history store's tests: each runs against
//! nodes served over real TCP, read by the real SSE parser, with
//! `Last-Event-ID` sent as the HTTP header a browser sends.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use eventsource_stream::Event as SseEvent;
use hyper::StatusCode;

use std::sync::Arc;

use sse_cluster::history::History;
use sse_cluster::{Broker, Hub, StreamConfig};

use super::{get_with_headers, post, post_with_headers, Node, SseClient, WAIT};

/// A hub `id` on `broker` keeping history in `history`, with `stream`
/// settings (keep-alive off), served over TCP.
pub async fn history_node(
    id: String,
    broker: Arc<dyn Broker>,
    history: Arc<dyn History>,
    stream: StreamConfig,
) -> Node {
    let hub = Hub::builder()
        .node_id(id)
        .broker(broker)
        .history(history)
        .stream_config(stream.keep_alive(None))
        .build()
        .await
        .expect("hub");
    Node::serve(hub).await
}

/// The reset event's name.
pub const RESET: &str = "sse-cluster.reset";

/// The last `id:` the stream sent `client` so far, as a browser's
/// `EventSource` would hold it, waiting (up to [`WAIT`]) for the first one:
/// the id-only frame that ends every connect's replay sets it even when no
/// event came (the SSE parser dispatches no event for it, so it is read from
/// the raw bytes).
pub async fn last_id_sent(client: &mut SseClient) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let raw = client.raw();
        let last = raw
            .split('\n')
            .filter_map(|line| line.strip_prefix("id: "))
            .next_back();
        if let Some(id) = last {
            return id.trim_end_matches('\r').to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no id sent within {WAIT:?}: {raw:?}"
        );
        // Nothing to dispatch is expected: this only drives the body.
        if let Some(event) = client.next_within(Duration::from_millis(20)).await {
            panic!("unexpected event before the first id: {event:?}");
        }
    }
}

/// Publishes `data` to `target` (`topic=a`, `user=u`) through `node`.
pub async fn publish(node: &Node, target: &str, data: &str) {
    let (status, body) = post(node.addr, &format!("/publish?{target}"), data.to_owned()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "publish {target}: {body}");
}

/// Opens `/events?{query}` on `node`, resuming after `last_id` if given,
/// and reads the `connected` greeting.
pub async fn open(node: &Node, query: &str, last_id: Option<&str>) -> SseClient {
    let path = format!("/events?{query}");
    let headers: Vec<(&str, &str)> = last_id
        .map(|id| ("last-event-id", id))
        .into_iter()
        .collect();
    let mut client = SseClient::open(node.addr, &path, &headers).await;
    assert_eq!(client.status, StatusCode::OK, "GET {path}");
    let hello = client.next().await.expect("connected event");
    assert_eq!(hello.event, "connected", "{hello:?}");
    client.connection_id = hello.data;
    client
}

/// Reads `n` events (panics on a stream that ends or stalls first).
pub async fn read_n(client: &mut SseClient, n: usize) -> Vec<SseEvent> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        match client.next().await {
            Some(event) => events.push(event),
            None => {
                let raw = client.raw();
                let tail = &raw[raw.len().saturating_sub(300)..];
                panic!(
                    "stream ended or stalled after {} of {n} events: {:?}; stream tail: {tail:?}",
                    events.len(),
                    events.last()
                )
            }
        }
    }
    events
}

fn data(events: &[SseEvent]) -> Vec<String> {
    events.iter().map(|e| e.data.clone()).collect()
}

/// The query of the scenario's client: two topics and a user.
pub const FOLLOW: &str = "user=u1&topic=a&topic=b";

/// Publishes `a:i`, `b:i`, `u1:i` for `i` in `range`, interleaved.
async fn publish_round(node: &Node, range: std::ops::Range<usize>) -> Vec<String> {
    let mut sent = Vec::new();
    for i in range {
        for (target, name) in [("topic=a", "a"), ("topic=b", "b"), ("user=u1", "u1")] {
            let data = format!("{name}:{i}");
            publish(node, target, &data).await;
            sent.push(data);
        }
    }
    sent
}

/// Per channel (the part before `:`), the sequence numbers in arrival order.
fn by_channel(received: &[String]) -> HashMap<String, Vec<usize>> {
    let mut out: HashMap<String, Vec<usize>> = HashMap::new();
    for d in received {
        if let Some((name, n)) = d.split_once(':') {
            out.entry(name.to_owned())
                .or_default()
                .push(n.parse().expect("sequence number"));
        }
    }
    out
}

/// A client follows two topics and its user on `nodes[0]`, disconnects,
/// `missed` events per channel are published through `nodes[1]`, and it
/// reconnects to `nodes[2]` (or the last node) with the last id it saw: it
/// gets exactly the missed events, each once, in order per channel, then
/// live ones.
pub async fn replays_missed_events_on_another_node(nodes: &[Node], missed: usize) {
    let (first, publisher, other) = (&nodes[0], &nodes[1 % nodes.len()], &nodes[nodes.len() - 1]);
    let mut client = open(first, FOLLOW, None).await;
    let sent = publish_round(publisher, 0..2).await;
    let seen = read_n(&mut client, sent.len()).await;
    let mut got = data(&seen);
    got.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(got, want, "live events before the disconnect");
    let last_id = seen.last().map(|e| e.id.clone()).expect("an id");
    assert!(last_id.starts_with("r1."), "hub-assigned id: {last_id:?}");
    drop(client);

    let missed_sent = publish_round(publisher, 2..2 + missed).await;
    let mut client = open(other, FOLLOW, Some(&last_id)).await;
    let replayed = read_n(&mut client, missed_sent.len()).await;
    assert!(
        replayed.iter().all(|e| e.event == "message"),
        "no reset or gap: {:?}",
        replayed.iter().find(|e| e.event != "message")
    );
    let got = by_channel(&data(&replayed));
    for name in ["a", "b", "u1"] {
        let want: Vec<usize> = (2..2 + missed).collect();
        assert_eq!(
            got.get(name),
            Some(&want),
            "channel {name}: each missed event once, in order"
        );
    }
    // Then live, with nothing replayed twice.
    publish(publisher, "topic=b", "b:live").await;
    let live = read_n(&mut client, 1).await;
    assert_eq!(data(&live), ["b:live"]);
    client.expect_quiet().await;
}

/// Events are published continuously while one client reconnects `rounds`
/// times, each time to the next node with its last id, reading a few events
/// in between: every event published after its first connect arrives
/// exactly once (checked by sets of data), and per channel in order.
pub async fn seam_race(nodes: &[Node], rounds: usize) {
    let mut client = open(&nodes[0], FOLLOW, None).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher_node = nodes[1 % nodes.len()].addr;
    let stop_flag = stop.clone();
    let publisher = tokio::spawn(async move {
        let mut sent = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut i = 0usize;
        while !stop_flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            let (target, name) = [("topic=a", "a"), ("topic=b", "b"), ("user=u1", "u1")][i % 3];
            let data = format!("{name}:{i}");
            let (status, body) =
                post(publisher_node, &format!("/publish?{target}"), data.clone()).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            sent.push(data);
            i += 1;
            // Slower than the reader reads, so that its backlog stays small
            // and the race is at the seam, not in catching up.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        sent
    });

    let mut received: Vec<String> = Vec::new();
    let mut last_id = String::new();
    for round in 0..rounds {
        let want = 1 + round % 4;
        for event in read_n(&mut client, want).await {
            assert_eq!(event.event, "message", "round {round}: {event:?}");
            received.push(event.data);
            last_id = event.id;
        }
        drop(client);
        let node = &nodes[(round + 1) % nodes.len()];
        client = open(node, FOLLOW, Some(&last_id)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = publisher.await.expect("publisher");
    // Catch up with what is still in flight.
    let deadline = Instant::now() + WAIT * 4;
    while received.len() < sent.len() && Instant::now() < deadline {
        match client.next().await {
            Some(event) => {
                assert_eq!(event.event, "message", "{event:?}");
                received.push(event.data);
            }
            None => break,
        }
    }
    let mut unique = received.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        received.len(),
        "duplicates among {} received",
        received.len()
    );
    let mut want = sent.clone();
    want.sort();
    assert_eq!(
        unique,
        want,
        "lost events: sent {}, received {}",
        sent.len(),
        received.len()
    );
    for (name, seqs) in by_channel(&received) {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "channel {name} out of order"
        );
    }
    assert!(
        sent.len() > rounds,
        "the publisher kept publishing ({} events)",
        sent.len()
    );
}

/// What the client of [`first_events_after_connect_are_replayed`] follows:
/// one topic nobody published to before (and everyone, which stays empty).
pub const LATE: &str = "topic=late";

/// A client follows a topic nobody has published to yet on `nodes[0]`, and
/// leaves before anything is published, holding only the id of the id-only
/// frame that ended its connect. 3 events are published through `nodes[1]`;
/// it reconnects to the last node with that id: exactly the 3 events are
/// replayed, in order, no reset, then the stream is live. Returns the id it
/// held (a store that creates epochs on the first append, Redis, wrote the
/// epoch tag 0 into it).
pub async fn first_events_after_connect_are_replayed(nodes: &[Node]) -> String {
    let (first, publisher, other) = (&nodes[0], &nodes[1 % nodes.len()], &nodes[nodes.len() - 1]);
    let mut client = open(first, LATE, None).await;
    let last_id = last_id_sent(&mut client).await;
    assert!(last_id.starts_with("r1."), "hub-assigned id: {last_id:?}");
    client.expect_quiet().await;
    drop(client);

    for i in 0..3 {
        publish(publisher, LATE, &format!("late:{i}")).await;
    }
    let mut client = open(other, LATE, Some(&last_id)).await;
    let replayed = read_n(&mut client, 3).await;
    assert_eq!(
        replayed
            .iter()
            .map(|e| e.event.as_str())
            .collect::<Vec<_>>(),
        ["message"; 3],
        "no reset: {replayed:?}"
    );
    assert_eq!(data(&replayed), ["late:0", "late:1", "late:2"]);
    client.expect_quiet().await;
    publish(publisher, LATE, "late:live").await;
    assert_eq!(data(&read_n(&mut client, 1).await), ["late:live"]);
    last_id
}

/// The client's position leaves the retained window (`retained` events per
/// channel are kept; more are published while it is away): it gets the reset
/// event first, then only live events.
pub async fn reset_beyond_window(nodes: &[Node], retained: usize) {
    let mut client = open(&nodes[0], FOLLOW, None).await;
    publish(&nodes[0], "topic=a", "a:0").await;
    let last_id = read_n(&mut client, 1).await[0].id.clone();
    drop(client);
    for i in 1..=retained * 3 {
        publish(&nodes[1 % nodes.len()], "topic=a", &format!("a:{i}")).await;
    }
    expect_reset(&nodes[nodes.len() - 1], &last_id, "expired").await;
}

/// The history was wiped (or rebuilt) by `wipe` while the client was away:
/// reset, then live.
pub async fn reset_after_wipe<F: Future<Output = ()>>(nodes: &[Node], wipe: impl FnOnce() -> F) {
    let mut client = open(&nodes[0], FOLLOW, None).await;
    publish(&nodes[0], "user=u1", "u1:0").await;
    let last_id = read_n(&mut client, 1).await[0].id.clone();
    drop(client);
    wipe().await;
    publish(&nodes[1 % nodes.len()], "user=u1", "u1:1").await;
    expect_reset(&nodes[nodes.len() - 1], &last_id, "epoch").await;
}

/// Unusable `Last-Event-ID` values: each gets the reset event, then live
/// events; nothing fails.
pub async fn reset_on_garbage_ids(nodes: &[Node]) {
    let long = "r1.".repeat(3400);
    let other_epoch = {
        // A well-formed id whose epochs are no store's.
        let mut client = open(&nodes[0], FOLLOW, None).await;
        publish(&nodes[0], "topic=a", "a:0").await;
        let id = read_n(&mut client, 1).await[0].id.clone();
        flip_epochs(&id)
    };
    for (value, reason) in [
        ("", "invalid-id"),
        ("42", "invalid-id"),
        ("r1.????????", "invalid-id"),
        (long.as_str(), "invalid-id"),
        ("r1", "not-resumable"),
        (other_epoch.as_str(), "epoch"),
    ] {
        expect_reset(&nodes[0], value, reason).await;
    }
    // Bytes that are not UTF-8.
    let mut client = SseClient::open_bytes(
        nodes[0].addr,
        &format!("/events?{FOLLOW}"),
        &[("last-event-id", b"r1.\xff\xfe\x80")],
    )
    .await;
    assert_eq!(client.status, StatusCode::OK);
    let events = read_n(&mut client, 2).await;
    assert_eq!(events[1].event, RESET, "{events:?}");
}

/// Changes every epoch tag of a hub id (the 4 characters after each key).
fn flip_epochs(id: &str) -> String {
    let mut parts = id.split('.');
    let mut out = String::from(parts.next().unwrap_or_default());
    for entry in parts {
        out.push('.');
        let (key, rest) = entry.split_at(4);
        let (epoch, pos) = rest.split_at(4);
        let flipped: String = epoch
            .chars()
            .map(|c| if c == 'A' { 'B' } else { 'A' })
            .collect();
        out.push_str(key);
        out.push_str(&flipped);
        out.push_str(pos);
    }
    out
}

/// Connects to `node` with `last_id`: the first event after the greeting is
/// the reset event with `reason`, and the stream is live after it.
pub async fn expect_reset(node: &Node, last_id: &str, reason: &str) {
    let mut client = open(node, FOLLOW, Some(last_id)).await;
    let first = read_n(&mut client, 1).await.remove(0);
    assert_eq!(first.event, RESET, "after {:.40}: {first:?}", last_id);
    assert_eq!(first.data, format!("{{\"reason\":\"{reason}\"}}"));
    assert!(
        first.id.starts_with("r1"),
        "the reset event carries an id: {first:?}"
    );
    client.expect_quiet().await;
    publish(node, "topic=b", "b:after-reset").await;
    assert_eq!(data(&read_n(&mut client, 1).await), ["b:after-reset"]);
}

/// What the page of [`render_time_token`] follows: a topic with events
/// before the page, one nobody has published to yet, and a user.
pub const PAGE: &str = "topic=old&topic=fresh&user=tu";

/// Asks `node` for a resume token of `query`: `200 text/plain`, an id in
/// the event-id codec.
pub async fn resume_token(node: &Node, query: &str) -> String {
    let (status, headers, token) =
        get_with_headers(node.addr, &format!("/resume-token?{query}")).await;
    assert_eq!(status, StatusCode::OK, "/resume-token?{query}: {token}");
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "{content_type:?}");
    assert!(
        token.starts_with("r1."),
        "a token in the event-id codec: {token:?}"
    );
    token
}

/// A page is rendered by `nodes[0]` with a token (`GET /resume-token`);
/// `after` events per channel are published through `nodes[1]`; the
/// browser's first connect goes to the last node with the token as the
/// `last_event_id` query parameter (all an `EventSource` can send): it gets
/// exactly the events published after the token, each once, in order per
/// channel, none from before, then live ones.
pub async fn render_time_token(nodes: &[Node], after: usize) {
    let (first, publisher, other) = (&nodes[0], &nodes[1 % nodes.len()], &nodes[nodes.len() - 1]);
    for i in 0..3 {
        publish(publisher, "topic=old", &format!("old:{i}")).await;
    }
    let token = resume_token(first, PAGE).await;
    for i in 3..3 + after {
        for (target, name) in [
            ("topic=old", "old"),
            ("topic=fresh", "fresh"),
            ("user=tu", "tu"),
        ] {
            publish(publisher, target, &format!("{name}:{i}")).await;
        }
    }
    let mut client = SseClient::open(
        other.addr,
        &format!("/events?{PAGE}&last_event_id={token}"),
        &[],
    )
    .await;
    assert_eq!(client.status, StatusCode::OK);
    assert_eq!(client.next().await.expect("greeting").event, "connected");
    let replayed = read_n(&mut client, 3 * after).await;
    assert!(
        replayed.iter().all(|e| e.event == "message"),
        "no reset: {:?}",
        replayed.iter().find(|e| e.event != "message")
    );
    let got = by_channel(&data(&replayed));
    let want: Vec<usize> = (3..3 + after).collect();
    for name in ["old", "fresh", "tu"] {
        assert_eq!(
            got.get(name),
            Some(&want),
            "channel {name}: each event after the token once, in order"
        );
    }
    client.expect_quiet().await;
    publish(publisher, "topic=fresh", "fresh:live").await;
    assert_eq!(data(&read_n(&mut client, 1).await), ["fresh:live"]);
    client.expect_quiet().await;
}

/// `POST /publish?{target}` of `data` through `node` with `Idempotency-Key:
/// key` (raw bytes): the status and the JSON body.
pub async fn publish_with_key(
    node: &Node,
    target: &str,
    data: &str,
    key: &[u8],
) -> (StatusCode, serde_json::Value) {
    let (status, _, body) = post_with_headers(
        node.addr,
        &format!("/publish?{target}"),
        data.to_owned(),
        &[("idempotency-key", key)],
    )
    .await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (status, json)
}

/// One `Idempotency-Key` is published 3 times, through `nodes[0]`,
/// `nodes[1]` and `nodes[0]` again: every answer is `202` with the first
/// publish's id and position (the repeats marked duplicate); a client on
/// each node gets one frame; a client resuming from before the publishes
/// (a token, on the last node) gets one replayed event per key: one
/// history entry. Hostile keys (huge, not UTF-8, with a space, empty) and
/// a refused publish get a `400` with a JSON error and lose nothing: they
/// publish nothing, the refused publish does not use up its key, and the
/// next publishes go out.
pub async fn idempotent_publish(nodes: &[Node]) {
    let (a, b, other) = (&nodes[0], &nodes[1 % nodes.len()], &nodes[nodes.len() - 1]);
    let token = resume_token(other, "topic=orders").await;
    let mut on_a = open(a, "topic=orders", None).await;
    let mut on_b = open(b, "topic=orders", None).await;

    let mut receipts = Vec::new();
    for (node, data) in [
        (a, "orders:7"),
        (b, "orders:7 retried"),
        (a, "orders:7 again"),
    ] {
        let (status, receipt) = publish_with_key(node, "topic=orders", data, b"order-7").await;
        assert_eq!(status, StatusCode::ACCEPTED, "{receipt}");
        receipts.push(receipt);
    }
    assert_eq!(receipts[0]["duplicate"], false, "{receipts:?}");
    assert!(receipts[0]["position"].is_string(), "stored: {receipts:?}");
    for repeat in &receipts[1..] {
        assert_eq!(repeat["duplicate"], true, "{receipts:?}");
        assert_eq!(
            (&repeat["id"], &repeat["position"]),
            (&receipts[0]["id"], &receipts[0]["position"]),
            "the same receipt"
        );
    }
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(data(&read_n(client, 1).await), ["orders:7"]);
        client.expect_quiet().await;
    }

    let huge = vec![b'k'; 16 * 1024];
    let hostile: [&[u8]; 4] = [&huge, b"\xff\xfe\x80", b"order 8", b""];
    for key in hostile {
        let (status, body) = publish_with_key(a, "topic=orders", "orders:hostile", key).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"].is_string(), "{body}");
    }
    // A publish refused for another reason (a bad event name) with a good
    // key: the key is not used up by it.
    let (status, _, _) = post_with_headers(
        b.addr,
        "/publish?topic=orders&event=bad%0Aname",
        "orders:refused",
        &[("idempotency-key", b"order-8")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for client in [&mut on_a, &mut on_b] {
        client.expect_quiet().await;
    }
    let (status, receipt) = publish_with_key(b, "topic=orders", "orders:8", b"order-8").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{receipt}");
    assert_eq!(receipt["duplicate"], false, "{receipt}");
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(data(&read_n(client, 1).await), ["orders:8"]);
        client.expect_quiet().await;
    }

    // One history entry per key.
    let mut resumed = SseClient::open(
        other.addr,
        &format!("/events?topic=orders&last_event_id={token}"),
        &[],
    )
    .await;
    assert_eq!(resumed.next().await.expect("greeting").event, "connected");
    let replayed = read_n(&mut resumed, 2).await;
    assert_eq!(data(&replayed), ["orders:7", "orders:8"], "{replayed:?}");
    resumed.expect_quiet().await;
}

/// Events are published to one topic continuously (through `nodes[1]`)
/// while a page gets its token from `nodes[0]` and the browser connects to
/// the last node with it: every event published after the token was
/// answered arrives, none published before the request for it was sent,
/// none twice, in order. (Events published while the token was being made
/// may go either way.)
pub async fn token_race(nodes: &[Node]) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (first, other) = (&nodes[0], &nodes[nodes.len() - 1]);
    let publisher_node = nodes[1 % nodes.len()].addr;
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (sent, stop) = (sent.clone(), stop.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let (status, body) =
                    post(publisher_node, "/publish?topic=race", format!("race:{i}")).await;
                assert_eq!(status, StatusCode::ACCEPTED, "{body}");
                i += 1;
                sent.store(i, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            i
        }
    });
    // Let some events go out before the page.
    while sent.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = sent.load(Ordering::Relaxed);
    let token = resume_token(first, "topic=race").await;
    let after = sent.load(Ordering::Relaxed);
    // The browser connects a little later, while events keep coming.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut client = SseClient::open(
        other.addr,
        &format!("/events?topic=race&last_event_id={token}"),
        &[],
    )
    .await;
    assert_eq!(client.next().await.expect("greeting").event, "connected");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let total = publisher.await.expect("publisher");
    let mut got = Vec::new();
    while got.last().is_none_or(|&n| n + 1 < total) {
        let Some(event) = client.next().await else {
            panic!("stalled after {got:?} of {total}");
        };
        assert_eq!(event.event, "message", "{event:?}");
        let n: usize = event
            .data
            .strip_prefix("race:")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{event:?}"));
        got.push(n);
    }
    client.expect_quiet().await;
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, none twice: {got:?}"
    );
    let first_got = got.first().copied().unwrap_or(total);
    assert!(
        first_got >= before,
        "race:{first_got} was published before the token was asked for ({before})"
    );
    // `after` publishes had returned when the token came back; the next one,
    // race:{after}, may already have been stored (its POST still on its
    // way back) and so be in the token: the first event sent is at most
    // race:{after + 1}.
    assert!(
        first_got <= after + 1,
        "events after the token ({}..) lost: first received race:{first_got}",
        after + 1
    );
    let want: Vec<usize> = (first_got..total).collect();
    assert_eq!(got, want, "a gap after race:{first_got}");
    assert!(
        total > after + 10,
        "events kept coming while connecting ({total})"
    );
}
