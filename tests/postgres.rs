//! The Postgres backend end to end: hubs served over real TCP, clients read
//! with a real SSE parser, Postgres as a real server.
//!
//! Tests that inject no fault share the server named by
//! `SSE_CLUSTER_POSTGRES_URL` (default: the machine's, on 127.0.0.1:5432),
//! each under a channel and table prefix of its own; the outage test
//! starts a throwaway cluster of its own and kills it. Without a server a
//! test is skipped (`SKIPPED:` on stderr), unless `CI` is set: then it
//! fails. What the conformance suite checks for every backend
//! (`tests/conformance.rs`) is not repeated here.

#![cfg(all(feature = "postgres", feature = "axum"))]

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sse_cluster::broker::postgres::{PostgresBroker, PostgresConfig};
use sse_cluster::history::postgres::PostgresHistory;
use sse_cluster::history::Retention;
use sse_cluster::stream::GAP_EVENT;
use sse_cluster::{BrokerStatus, Hub, StreamConfig};
use support::bus::{post_ok, publish_steadily, read_resumed, spawn_reader, wait_until};
use support::postgres_server::{drop_tables, psql, shared_postgres, unique_prefix, PostgresServer};
use support::process::{node_binary, resume_across_demo_nodes, NodeProcess};
use support::resume::{self, last_id_sent, open, RESET};
use support::{Node, SseClient, QUIET};
use tokio::time::Instant;

/// Quick failure detection and reconnects, for the fault test.
fn fast_config(url: &str, prefix: &str) -> PostgresConfig {
    let mut config = PostgresConfig::new(url)
        .prefix(prefix)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .liveness(Duration::from_millis(200), Duration::from_millis(500));
    config.connect_timeout = Duration::from_millis(500);
    config
}

/// A hub `id` on its own broker, with history when `history`, gap events
/// on, served over TCP.
async fn pg_node(config: PostgresConfig, id: &str, history: bool) -> (Node, Arc<PostgresBroker>) {
    let broker = PostgresBroker::new(config).expect("postgres broker");
    let mut builder = Hub::builder()
        .node_id(id)
        .broker(broker.clone())
        .gap_events(true)
        .stream_config(StreamConfig::default().keep_alive(None));
    if history {
        let store = PostgresHistory::new(broker.clone(), Retention::default().max_len(10_000));
        builder = builder.history(Arc::new(store));
    }
    let hub = builder.build().await.expect("hub");
    (Node::serve(hub).await, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kib_event_crosses_nodes_intact() {
    let test = "a_100_kib_event_crosses_nodes_intact";
    let Some(url) = shared_postgres(test).await else {
        return;
    };
    let prefix = unique_prefix(test);
    let (a, broker_a) = pg_node(PostgresConfig::new(&url).prefix(&prefix), "a", false).await;
    let (b, broker_b) = pg_node(PostgresConfig::new(&url).prefix(&prefix), "b", false).await;
    let mut client = SseClient::connect(a.addr, "/events?topic=big").await;
    // Every byte value a UTF-8 body can hold, and more than 12 notifications' worth.
    let data: String = (0..100 * 1024)
        .map(|i| match i % 97 {
            0 => '\n',
            1 => '"',
            2 => '\\',
            3 => 'é',
            n => char::from(b' ' + (n as u8 % 94)),
        })
        .collect();
    assert!(data.len() >= 100 * 1024, "{}", data.len());
    post_ok(b.addr, "/publish?topic=big&event=large", &data).await;
    post_ok(b.addr, "/publish?topic=big", "small after large").await;
    let event = client.next().await.expect("the large event");
    assert_eq!(event.event, "large");
    // The SSE parser joins `data:` lines with `\n`: the same text back.
    assert_eq!(event.data.len(), data.len());
    assert!(event.data == data, "the 100 KiB event changed on its way");
    let event = client.next().await.expect("the small event");
    assert_eq!(
        event.data, "small after large",
        "order kept behind a reference"
    );
    assert_eq!(broker_b.stats().published_by_reference, 1);
    assert_eq!(broker_a.stats().received_by_reference, 1);
    assert_eq!(broker_a.stats().bad_references, 0);
    drop_tables(&url, &prefix).await;
}

/// With history, a stamped envelope too large for a notification goes by
/// reference in the append's own statement: live on another node, and
/// replayed to a client that resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_event_with_history_is_delivered_live_and_replayed() {
    let test = "a_large_event_with_history_is_delivered_live_and_replayed";
    let Some(url) = shared_postgres(test).await else {
        return;
    };
    let prefix = unique_prefix(test);
    let (a, broker_a) = pg_node(PostgresConfig::new(&url).prefix(&prefix), "a", true).await;
    let (b, _) = pg_node(PostgresConfig::new(&url).prefix(&prefix), "b", true).await;
    let mut live = open(&a, "topic=big", None).await;
    let large = "L".repeat(30_000);
    post_ok(b.addr, "/publish?topic=big", "before").await;
    post_ok(b.addr, "/publish?topic=big", &large).await;
    post_ok(b.addr, "/publish?topic=big", "after").await;
    let first = live.next().await.expect("before");
    assert_eq!(first.data, "before");
    let resume_from = first.id.clone();
    assert_eq!(live.next().await.expect("large").data, large);
    assert_eq!(live.next().await.expect("after").data, "after");
    assert!(broker_a.stats().received_by_reference >= 1);
    let mut back = open(&b, "topic=big", Some(&resume_from)).await;
    assert_eq!(back.next().await.expect("replayed large").data, large);
    assert_eq!(back.next().await.expect("replayed after").data, "after");
    back.expect_quiet().await;
    drop_tables(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_notify_in_the_documented_format_reaches_clients() {
    let test = "psql_notify_in_the_documented_format_reaches_clients";
    let Some(url) = shared_postgres(test).await else {
        return;
    };
    let prefix = unique_prefix(test);
    let (a, broker) = pg_node(PostgresConfig::new(&url).prefix(&prefix), "a", false).await;
    let mut plain = SseClient::connect(a.addr, "/events?topic=news").await;
    let mut hashed = SseClient::connect(a.addr, "/events?topic=Breaking%20News").await;
    let mut everyone = SseClient::connect(a.addr, "/events").await;

    // A plain name, unquoted: NOTIFY's own syntax.
    let sql =
        format!(r#"NOTIFY {prefix}t_news, '{{"v":1,"event":"headline","data":"from psql"}}'"#);
    if psql(test, &url, &sql).is_none() {
        return;
    }
    let event = plain.next().await.expect("the NOTIFY");
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("headline", "from psql")
    );

    // Any other name: the documented hash, computed by Postgres itself.
    let sql = format!(
        r#"SELECT pg_notify('{prefix}th_' || left(encode(sha256(convert_to('Breaking News', 'UTF8')), 'hex'), 32), '{{"v":1,"data":"hashed"}}')"#
    );
    psql(test, &url, &sql);
    assert_eq!(hashed.next().await.expect("hashed").data, "hashed");

    // A large message by reference, as documented, to everyone.
    broker.ensure_payload_table().await.expect("payload table");
    let big = "x".repeat(20_000);
    let sql = format!(
        r#"WITH p AS (INSERT INTO {prefix}payloads (payload) VALUES (convert_to('{{"v":1,"data":"{big}"}}', 'UTF8')) RETURNING id) SELECT pg_notify('{prefix}all', '#' || id) FROM p"#
    );
    psql(test, &url, &sql);
    assert_eq!(everyone.next().await.expect("by reference").data, big);

    // A reference to nothing is counted and reported as lost (a gap event
    // on every stream of the channel: here everyone's), never fatal.
    psql(test, &url, &format!("NOTIFY {prefix}all, '#999999999'"));
    let gap = everyone.next().await.expect("the gap event");
    assert_eq!(gap.event, GAP_EVENT);
    wait_until("the bad reference counted", Duration::from_secs(5), || {
        broker.stats().bad_references == 1
    })
    .await;
    psql(
        test,
        &url,
        &format!(r#"NOTIFY {prefix}all, '{{"v":1,"data":"still up"}}'"#),
    );
    assert_eq!(everyone.next().await.expect("after").data, "still up");
    assert_eq!(a.hub.broker_status(), BrokerStatus::Up);
    drop_tables(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_resumes_exactly_once_on_another_node() {
    let test = "history_resumes_exactly_once_on_another_node";
    let Some(url) = shared_postgres(test).await else {
        return;
    };
    let prefix = unique_prefix(test);
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(
            pg_node(PostgresConfig::new(&url).prefix(&prefix), id, true)
                .await
                .0,
        );
    }
    resume::replays_missed_events_on_another_node(&nodes, 30).await;
    resume::seam_race(&nodes, 3).await;
    resume::reset_on_garbage_ids(&nodes).await;
    drop_tables(&url, &prefix).await;
}

/// The server closes the listening connection (as an idle timeout, a
/// failover or an administrator would): the broker reports Down, connects
/// again, issues its LISTENs again and reports Up; the stream gets the gap
/// event and delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_connection_the_server_closes_is_replaced() {
    let test = "a_listening_connection_the_server_closes_is_replaced";
    let Some(url) = shared_postgres(test).await else {
        return;
    };
    let prefix = unique_prefix(test);
    // No probe during the test: the listener's last query stays its LISTEN,
    // which is how the test finds it in pg_stat_activity.
    let config = || {
        PostgresConfig::new(&url)
            .prefix(&prefix)
            .liveness(Duration::from_secs(600), Duration::from_secs(2))
            .backoff(Duration::from_millis(20), Duration::from_millis(200))
    };
    let (a, broker_a) = pg_node(config(), "a", false).await;
    let (b, _) = pg_node(config(), "b", false).await;
    let mut client = SseClient::connect(a.addr, "/events?topic=t").await;
    post_ok(b.addr, "/publish?topic=t", "one").await;
    assert_eq!(client.next().await.expect("one").data, "one");
    let sql = format!(
        "SELECT 'terminated:' || count(*) FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN \"{prefix}t\\_t\";%' AND pg_terminate_backend(pid)"
    );
    let Some(out) = psql(test, &url, &sql) else {
        return;
    };
    assert!(out.contains("terminated:1"), "{out:?}");
    let gap = client.next().await.expect("the gap event");
    assert_eq!(gap.event, GAP_EVENT);
    assert_eq!(a.hub.broker_status(), BrokerStatus::Up);
    assert_eq!(a.hub.stats().bus_outages, 1, "Down was reported");
    let stats = broker_a.stats();
    assert_eq!((stats.disconnects, stats.connects), (1, 2), "{stats:?}");
    post_ok(b.addr, "/publish?topic=t", "two").await;
    assert_eq!(client.next().await.expect("two").data, "two");
    drop_tables(&url, &prefix).await;
}

/// A frozen server (every process stopped, connections open: what a hung
/// host or a network partition looks like) is caught by the liveness
/// probe; once it thaws, the hubs are Up again and the stream gets the gap
/// event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_caught_by_the_liveness_probe() {
    let test = "a_frozen_server_is_caught_by_the_liveness_probe";
    let Some(server) = PostgresServer::start(test) else {
        return;
    };
    let url = server.url();
    let prefix = unique_prefix(test);
    let (a, broker_a) = pg_node(fast_config(&url, &prefix), "a", false).await;
    let (b, _) = pg_node(fast_config(&url, &prefix), "b", false).await;
    let mut client = SseClient::connect(a.addr, "/events?topic=t").await;
    post_ok(b.addr, "/publish?topic=t", "before").await;
    assert_eq!(client.next().await.expect("before").data, "before");

    server.signal_all("STOP");
    // Probe every 200 ms, 500 ms to answer.
    let both = |status| a.hub.broker_status() == status && b.hub.broker_status() == status;
    let frozen = Instant::now();
    wait_until("the probe noticed", Duration::from_secs(5), || {
        both(BrokerStatus::Down)
    })
    .await;
    let noticed = frozen.elapsed();
    assert!(broker_a.stats().disconnects >= 1);
    server.signal_all("CONT");
    wait_until("both hubs up again", Duration::from_secs(10), || {
        both(BrokerStatus::Up)
    })
    .await;
    let gap = client.next().await.expect("the gap event");
    assert_eq!(
        (gap.event.as_str(), gap.data.as_str()),
        (GAP_EVENT, r#"{"reason":"bus"}"#)
    );
    post_ok(b.addr, "/publish?topic=t", "after").await;
    assert_eq!(client.next().await.expect("after").data, "after");
    eprintln!("frozen server noticed after {noticed:?}");
}

/// Two demo-node processes (`--broker postgres://… --history postgres`):
/// an event published on one reaches a client of the other, and a client
/// that went away resumes on the other from its `Last-Event-ID`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_node_processes_over_postgres_with_history() {
    let test = "demo_node_processes_over_postgres_with_history";
    let Some(url) = shared_postgres(test).await else {
        return;
    };
    let prefix = unique_prefix(test);
    let binary = tokio::task::spawn_blocking(|| node_binary(Some("postgres")))
        .await
        .expect("node binary");
    let start = |id: &str| {
        let args = [
            "--broker",
            &url,
            "--postgres-prefix",
            &prefix,
            "--history",
            "postgres",
            "--node-id",
            id,
        ];
        NodeProcess::start(&binary, &args)
    };
    let one = start("proc-1");
    let two = start("proc-2");
    resume_across_demo_nodes(&one, &two).await;
    drop_tables(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_under_load_gaps_every_stream_and_history_misses_nothing() {
    let test = "kill_and_restart_under_load_gaps_every_stream_and_history_misses_nothing";
    let Some(server) = PostgresServer::start(test) else {
        return;
    };
    let url = server.url();
    let server = Mutex::new(server);
    let prefix = unique_prefix(test);
    let config = || fast_config(&url, &prefix);
    // Two nodes without history (gap events), two with.
    let (a, _) = pg_node(config(), "a", false).await;
    let (b, _) = pg_node(config(), "b", false).await;
    let (h1, _) = pg_node(config(), "h1", true).await;
    let (h2, _) = pg_node(config(), "h2", true).await;
    let hubs = [&a.hub, &b.hub, &h1.hub, &h2.hub];
    let all = |status| hubs.iter().all(|h| h.broker_status() == status);
    wait_until("every hub up", Duration::from_secs(10), || {
        all(BrokerStatus::Up)
    })
    .await;

    let streams = vec![
        (
            "a topic=t",
            SseClient::connect(a.addr, "/events?topic=t").await,
        ),
        (
            "a user=u",
            SseClient::connect(a.addr, "/events?user=u").await,
        ),
        (
            "b topic=t",
            SseClient::connect(b.addr, "/events?topic=t").await,
        ),
        ("b everyone", SseClient::connect(b.addr, "/events").await),
    ];
    let gapped: Vec<_> = streams
        .into_iter()
        .map(|(who, client)| (who, spawn_reader(client, GAP_EVENT)))
        .collect();
    let mut resumable = open(&h1, "topic=h", None).await;

    let stop = Arc::new(AtomicBool::new(false));
    let bus_load = publish_steadily(b.hub.clone(), "t", stop.clone());
    let history_load = publish_steadily(h2.hub.clone(), "h", stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let outages_before: Vec<u64> = hubs.iter().map(|h| h.stats().bus_outages).collect();
    tokio::task::block_in_place(|| server.lock().expect("lock").kill());
    wait_until("every hub down", Duration::from_secs(10), || {
        all(BrokerStatus::Down)
    })
    .await;

    // The resumable client reads what reached it, notes the id it would
    // resume from, and goes away while the server is down.
    let mut seen = Vec::new();
    while let Some(event) = resumable.next_within(Duration::from_millis(100)).await {
        seen.push(event.data.parse::<u64>().expect("a sequence number"));
    }
    let last_id = last_id_sent(&mut resumable).await;
    drop(resumable);
    tokio::time::sleep(Duration::from_millis(300)).await;

    tokio::task::block_in_place(|| server.lock().expect("lock").restart());
    wait_until("every hub up again", Duration::from_secs(15), || {
        all(BrokerStatus::Up)
    })
    .await;
    let restarted = Instant::now();
    for (hub, before) in hubs.iter().zip(&outages_before) {
        assert_eq!(hub.stats().bus_outages, before + 1, "hub {}", hub.node_id());
    }
    for (who, reader) in gapped {
        // Ends at the gap event; panics if none came within 15 s.
        reader.await.unwrap_or_else(|e| panic!("{who}: {e}"));
    }

    // Back on another node, resuming: everything since, once, in order.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut back = open(&h2, "topic=h", Some(&last_id)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let published = history_load.await.expect("history publisher");
    let bus_published = bus_load.await.expect("bus publisher");
    let acked: Vec<_> = published.iter().copied().filter(|a| a.ok).collect();
    let newest = acked.last().expect("acknowledged publishes").seq;
    assert!(
        acked.iter().any(|a| a.started > restarted),
        "nothing was acknowledged after the restart: {published:?}"
    );
    assert!(
        published.iter().any(|a| !a.ok) && bus_published.iter().any(|a| !a.ok),
        "the outage refused no publish: was the server really down?"
    );

    let (reset, got) = read_resumed(&mut back, newest, RESET).await;
    let got: BTreeSet<u64> = got.into_iter().collect();
    // Without a reset: every acknowledged event after the last one seen.
    // With one: at least every event acknowledged after the restart.
    let resumed_after = seen.last().copied();
    let missing: Vec<u64> = acked
        .iter()
        .filter(|a| {
            if reset {
                a.started > restarted
            } else {
                resumed_after.is_none_or(|s| a.seq > s)
            }
        })
        .map(|a| a.seq)
        .filter(|seq| !got.contains(seq))
        .collect();
    assert!(missing.is_empty(), "reset {reset}: missing {missing:?}");
    eprintln!(
        "restart under load: {} acknowledged, {} refused during the outage, resumed after {resumed_after:?} with reset {reset}; {QUIET:?} quiet at the end",
        acked.len(),
        published.len() - acked.len()
    );
}
