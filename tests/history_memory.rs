//! The memory history under a flood of large events to distinct topics
//! (the "hostile peers" issue): with an age, the sweeper hands the memory
//! back while the node is idle; without one, the byte budget holds at every
//! point, and a client whose events were evicted gets the reset event, not
//! a gap. In process, on Tokio's paused clock (the store and its sweeper
//! use Tokio time), so the waits take no real time.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sse_cluster::broker::memory::MemoryBus;
use sse_cluster::history::memory::MemoryHistory;
use sse_cluster::history::Retention;
use sse_cluster::resume::RESET_EVENT;
use sse_cluster::{Event, Hub, StreamConfig, Subscription, Target};

const MIB: usize = 1 << 20;

async fn hub(retention: Retention) -> Hub {
    let bus = MemoryBus::new();
    let history = Arc::new(MemoryHistory::new(&bus, retention));
    Hub::builder()
        .broker(bus.broker())
        .history(history)
        .max_event_size(2 * MIB)
        .stream_config(StreamConfig::default().keep_alive(None).initial_retry(None))
        .build()
        .await
        .expect("hub")
}

fn one_mib(i: usize) -> Event {
    Event::new().data(format!("{i:08}").repeat(MIB / 8))
}

/// The acceptance of the issue: with `--history-age 2`, 100 one-MiB
/// publishes to distinct topics leave under 1 MiB retained 4 s after the
/// age has passed, with nobody using the store meanwhile.
#[tokio::test(start_paused = true)]
async fn expired_topics_are_swept_while_the_node_is_idle() {
    let age = Duration::from_secs(2);
    let hub = hub(Retention::default().max_age(Some(age))).await;
    let mut peak = 0;
    for i in 0..100 {
        hub.publish(Target::topic(format!("flood-{i}")), one_mib(i))
            .await
            .expect("publish");
        peak = peak.max(hub.stats().history_retained_bytes);
    }
    let after_flood = hub.stats().history_retained_bytes;
    eprintln!("retained: peak {peak} B, after the flood {after_flood} B");
    assert!(
        peak <= (Retention::DEFAULT_MAX_BYTES + 100 * 16) as u64,
        "the default budget holds: {peak}"
    );
    assert!(
        after_flood > 32 * MIB as u64,
        "the store did keep the events: {after_flood}"
    );

    tokio::time::sleep(age + Duration::from_secs(4)).await;
    let swept = hub.stats().history_retained_bytes;
    eprintln!("retained 4 s after the age passed: {swept} B");
    assert!(swept < MIB as u64, "{swept} bytes still retained");
    hub.shutdown().await;
}

/// Without an age, the byte budget holds after every publish, the store
/// keeps the newest events, and a client whose position was evicted is
/// reset on reconnect while one whose events are kept is replayed to.
#[tokio::test(start_paused = true)]
async fn without_an_age_the_byte_budget_holds() {
    let budget = 8 * MIB;
    let retention = Retention::default().max_age(None).max_bytes(Some(budget));
    let hub = hub(retention).await;

    // A client of the first topic, which the flood will push out; and one of
    // a topic published to last.
    let mut ids = Vec::new();
    for topic in ["flood-0", "flood-99"] {
        let conn = hub
            .connect(Subscription::new().topic(topic))
            .await
            .expect("connect");
        let mut stream = conn.into_stream();
        hub.publish(Target::topic(topic), Event::new().data("hello"))
            .await
            .expect("publish");
        let frame = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the event in time")
            .expect("a frame");
        let text = String::from_utf8_lossy(&frame).into_owned();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("id: "))
            .unwrap_or_else(|| panic!("an id in {text:?}"))
            .to_owned();
        ids.push((topic, id));
    }

    let mut most = 0;
    for i in 0..100 {
        hub.publish(Target::topic(format!("flood-{i}")), one_mib(i))
            .await
            .expect("publish");
        let retained = hub.stats().history_retained_bytes;
        assert!(
            retained <= budget as u64,
            "{retained} over {budget} after publish {i}"
        );
        most = most.max(retained);
    }
    eprintln!("retained: at most {most} B of a {budget} B budget");
    assert!(
        most > (budget - 2 * MIB) as u64,
        "the budget is used: {most}"
    );

    for (topic, id) in ids {
        let conn = hub
            .connect(Subscription::new().topic(topic).resume_from(Some(id)))
            .await
            .expect("reconnect");
        let mut stream = conn.into_stream();
        let frame = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a frame in time")
            .expect("a frame");
        let text = String::from_utf8_lossy(&frame);
        let reset = text.contains(&format!("event: {RESET_EVENT}"));
        match topic {
            "flood-0" => assert!(reset, "evicted: reset, got {:.80}", text),
            _ => {
                assert!(!reset, "kept: replayed, got {:.80}", text);
                assert!(
                    text.contains("data: 00000099"),
                    "the missed event: {:.80}",
                    text
                );
            }
        }
    }
    hub.shutdown().await;
}
