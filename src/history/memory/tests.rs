//! The memory store's unit tests.

use super::*;

fn topic(name: &str) -> Channel {
    Channel::Topic(name.into())
}

fn payload(len: usize) -> Bytes {
    Bytes::from(vec![b'x'; len])
}

/// A store's entries, per channel, as positions.
fn kept(history: &MemoryHistory, channel: &Channel) -> Vec<u64> {
    history
        .lock()
        .rings
        .get(channel)
        .map_or_else(Vec::new, |ring| {
            ring.entries.iter().map(|e| e.position).collect()
        })
}

async fn head(history: &MemoryHistory, channel: &Channel, after: Option<u64>) -> Head {
    let ask = [(channel.clone(), after.map(|p| Position::new(p, 0)))];
    let mut heads = history.heads(&ask).await.expect("heads");
    heads.remove(0)
}

#[tokio::test]
async fn the_budget_evicts_the_oldest_entries_of_the_whole_store() {
    let bus = MemoryBus::new();
    // Names are one byte each: three 100-byte entries and their names fit.
    let budget = 3 * 100 + 3;
    let retention = Retention::default().max_bytes(Some(budget));
    let history = MemoryHistory::new(&bus, retention);
    let (a, b, c) = (topic("a"), topic("b"), topic("c"));
    history.append(&a, payload(100)).await.expect("a1");
    history.append(&b, payload(100)).await.expect("b1");
    history.append(&a, payload(100)).await.expect("a2");
    assert_eq!(history.retained_bytes(), Some(300 + 2));
    // Over the budget: the oldest entry of the store (a's first) goes,
    // not the oldest of the channel appended to.
    history.append(&c, payload(100)).await.expect("c1");
    assert_eq!((kept(&history, &a), kept(&history, &b)), (vec![2], vec![1]));
    assert_eq!(kept(&history, &c), vec![1]);
    assert_eq!(history.retained_bytes(), Some(300 + 3));
    // Next goes b's only entry, and b with it.
    history.append(&c, payload(100)).await.expect("c2");
    assert!(!history.lock().rings.contains_key(&b));
    assert_eq!(history.retained_bytes(), Some(300 + 2));
    for i in 0..50 {
        history
            .append(&topic(&format!("t{}", i % 7)), payload(10 + i))
            .await
            .expect("append");
        let bytes = history.retained_bytes().expect("known");
        assert!(
            bytes <= budget as u64,
            "{bytes} over the budget of {budget}"
        );
        let state = history.lock();
        let stored: usize = state
            .rings
            .iter()
            .map(|(c, r)| name_len(c) + r.entries.iter().map(|e| e.payload.len()).sum::<usize>())
            .sum();
        assert_eq!(stored, state.bytes, "the figure is what the rings hold");
        assert_eq!(
            state.oldest.len(),
            state.rings.len(),
            "one index entry per ring"
        );
    }
}

#[tokio::test]
async fn evicted_positions_get_a_reset_never_a_gap() {
    let bus = MemoryBus::new();
    let history = MemoryHistory::new(&bus, Retention::default().max_bytes(Some(250)));
    let (a, b) = (topic("a"), topic("b"));
    for _ in 0..5 {
        history.append(&a, payload(50)).await.expect("a");
    }
    // Four 50-byte entries of a and one name byte fit; b's 100 bytes
    // push out a's two oldest.
    history.append(&b, payload(100)).await.expect("b");
    assert_eq!(kept(&history, &a), vec![4, 5]);
    assert!(!head(&history, &a, Some(2)).await.retained, "3 was evicted");
    let at_edge = head(&history, &a, Some(3)).await;
    assert!(at_edge.retained, "everything after 3 is kept");
    assert_eq!(at_edge.last, Position::new(5, 0));
    let replayed = history
        .read(&a, Position::new(3, 0), 10)
        .await
        .expect("read");
    let positions: Vec<u64> = replayed.iter().map(|e| e.position.major()).collect();
    assert_eq!(positions, vec![4, 5]);
    // A replay that read up to 1 before the eviction must not skip 2..3.
    let err = history.read(&a, Position::new(1, 0), 10).await;
    assert!(err.is_err(), "a read across evicted entries fails: {err:?}");
}

#[tokio::test]
async fn an_event_larger_than_the_budget_is_delivered_but_not_kept() {
    let bus = MemoryBus::new();
    let history = MemoryHistory::new(&bus, Retention::default().max_bytes(Some(100)));
    let a = topic("a");
    history.append(&a, payload(10)).await.expect("small");
    let big = history.append(&a, payload(1000)).await.expect("big");
    assert_eq!(big, Position::new(2, 0));
    assert_eq!(history.retained_bytes(), Some(0));
    let h = head(&history, &a, Some(2)).await;
    assert!(
        h.retained && h.last == big,
        "a client that saw it is current"
    );
    assert!(
        !head(&history, &a, Some(1)).await.retained,
        "one that did not is reset"
    );
    let next = history.append(&a, payload(10)).await.expect("next");
    assert_eq!(next, Position::new(3, 0), "positions go on");
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_expires_idle_channels_and_removes_them() {
    let bus = MemoryBus::new();
    let age = Duration::from_secs(2);
    let history = MemoryHistory::new(&bus, Retention::default().max_age(Some(age)));
    let (a, b) = (topic("a"), topic("b"));
    for _ in 0..3 {
        history.append(&a, payload(100)).await.expect("a");
    }
    history.append(&b, payload(100)).await.expect("b");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let young = history.append(&b, payload(100)).await.expect("b2");
    assert_eq!(history.retained_bytes(), Some(500 + 2));
    // Nobody touches the store: only the sweeper (every second from
    // t=0, for a 2 s age) can trim it. At t=3.5 the t=0 entries are
    // past the age, the t=1 one is not.
    assert_eq!(sweep_period(age), Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(history.lock().rings.len(), 1, "a is removed");
    assert_eq!(kept(&history, &b), vec![young.major()]);
    assert_eq!(history.retained_bytes(), Some(100 + 1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(history.lock().rings.is_empty(), "b is removed too");
    assert_eq!(history.retained_bytes(), Some(0));

    // A removed channel still answers as it did.
    let h = head(&history, &a, Some(3)).await;
    assert!(
        h.retained,
        "a client that saw a's last event has nothing to replay"
    );
    assert_eq!(h.last, Position::new(3, 0), "and a's head did not go back");
    assert!(
        !head(&history, &a, Some(2)).await.retained,
        "one behind gets a reset"
    );
    assert!(!head(&history, &a, Some(0)).await.retained);
    assert!(history
        .read(&a, Position::new(3, 0), 10)
        .await
        .expect("read")
        .is_empty());
    assert!(history.read(&a, Position::new(1, 0), 10).await.is_err());
    let next = history.append(&a, payload(1)).await.expect("a4");
    assert_eq!(
        next,
        Position::new(4, 0),
        "a continues after its last position"
    );
}

#[tokio::test]
async fn forgotten_channels_start_after_the_floor() {
    let bus = MemoryBus::new();
    // Room for one entry: every append to another channel removes the
    // previous one.
    let history = MemoryHistory::new(&bus, Retention::default().max_bytes(Some(200)));
    let first = topic("first");
    for _ in 0..5 {
        history.append(&first, payload(100)).await.expect("first");
    }
    for i in 0..=REMEMBERED_CHANNELS {
        history
            .append(&topic(&format!("t{i}")), payload(100))
            .await
            .expect("append");
    }
    {
        let state = history.lock();
        assert_eq!(state.removed.last.len(), REMEMBERED_CHANNELS, "bounded");
        assert_eq!(state.removed.order.len(), REMEMBERED_CHANNELS);
        assert!(
            !state.removed.last.contains_key(&first),
            "the oldest is forgotten"
        );
        assert_eq!(state.removed.floor, 5);
    }
    assert!(head(&history, &first, Some(5)).await.retained);
    assert!(!head(&history, &first, Some(4)).await.retained);
    assert_eq!(head(&history, &first, None).await.last, Position::new(5, 0));
    let next = history.append(&first, payload(100)).await.expect("again");
    assert_eq!(next, Position::new(6, 0), "never behind what a client saw");
    let fresh = topic("never-seen");
    assert!(
        !head(&history, &fresh, Some(0)).await.retained,
        "a reset, not a gap"
    );
    assert_eq!(
        history.append(&fresh, payload(1)).await.expect("fresh"),
        Position::new(6, 0)
    );
}

#[test]
fn a_store_built_outside_a_runtime_sweeps_once_used_in_one_and_stops_when_dropped() {
    let bus = MemoryBus::new();
    let age = Duration::from_secs(1);
    let history = MemoryHistory::new(&bus, Retention::default().max_age(Some(age)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        assert!(
            history.lock().sweeper.is_none(),
            "no runtime, no sweeper yet"
        );
        history
            .append(&topic("a"), payload(10))
            .await
            .expect("append");
        let sweeper = history
            .lock()
            .sweeper
            .clone()
            .expect("started by the append");
        tokio::time::sleep(age * 3).await;
        assert!(history.lock().rings.is_empty(), "swept");
        drop(history);
        tokio::task::yield_now().await;
        assert!(sweeper.is_finished(), "the sweeper ends with the store");
    });
}

#[tokio::test]
async fn without_an_age_no_sweeper_runs_and_wipe_empties_the_store() {
    let bus = MemoryBus::new();
    let history = MemoryHistory::new(&bus, Retention::default().max_age(None));
    let a = topic("a");
    history.append(&a, payload(10)).await.expect("append");
    assert!(history.lock().sweeper.is_none());
    history.wipe();
    assert_eq!(history.retained_bytes(), Some(0));
    assert!(history.lock().oldest.is_empty());
    assert_eq!(
        history.append(&a, payload(10)).await.expect("a"),
        Position::new(1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_appends_once_per_channel_within_the_window() {
    let bus = MemoryBus::new();
    let window = Duration::from_secs(10);
    let history = MemoryHistory::new(&bus, Retention::default().idempotency_window(window));
    assert_eq!(history.idempotency_window(), Some(window));
    let a = topic("a");
    let first = history
        .append_once(&a, payload(10), "k", "m1")
        .await
        .expect("first");
    assert_eq!(first, Appended::Stored(Position::new(1, 0)));
    let again = history
        .append_once(&a, payload(10), "k", "m2")
        .await
        .expect("again");
    assert_eq!(
        again,
        Appended::Duplicate {
            position: Position::new(1, 0),
            msg: Some("m1".into())
        }
    );
    assert_eq!(kept(&history, &a), vec![1], "stored once");
    assert_eq!(bus.published(), 1, "delivered once");
    let b = topic("b");
    let other = history
        .append_once(&b, payload(10), "k", "m3")
        .await
        .expect("b");
    assert_eq!(
        other,
        Appended::Stored(Position::new(1, 0)),
        "scoped per channel"
    );
    tokio::time::sleep(window).await;
    let later = history
        .append_once(&a, payload(10), "k", "m4")
        .await
        .expect("later");
    assert_eq!(
        later,
        Appended::Stored(Position::new(2, 0)),
        "the window passed"
    );
    history.wipe();
    let wiped = history
        .append_once(&b, payload(10), "k", "m5")
        .await
        .expect("wiped");
    assert_eq!(
        wiped,
        Appended::Stored(Position::new(1, 0)),
        "a wipe forgets keys"
    );
}
