//! Unit tests of the resume seam against a scripted store.

use std::sync::Mutex;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::*;
use crate::history::Entry;
use crate::stream::{channel, SseStream, StreamConfig};

fn mark(epoch: u32, position: u64) -> Mark {
    Mark {
        key: channel_key(&Channel::Topic("t".into())),
        epoch,
        position: Position::new(position, 0),
    }
}

fn head(epoch: &str, last: u64, retained: bool) -> Head {
    Head::new(epoch.into(), Position::new(last, 0), retained)
}

#[test]
fn where_a_channel_resumes_from() {
    let e = epoch_tag("E");
    // Connected before the channel had history, still none: nothing to
    // replay, no reset.
    assert_eq!(resume_from(mark(0, 0), &head("", 0, true)), Ok(mark(0, 0)));
    // ... and it got history since: from its beginning, in its epoch.
    assert_eq!(resume_from(mark(0, 0), &head("E", 5, true)), Ok(mark(e, 0)));
    // ... unless part of it is gone.
    assert_eq!(
        resume_from(mark(0, 0), &head("E", 5, false)),
        Err("expired")
    );
    // A real epoch, and the channel has none now (expired, wiped).
    assert_eq!(resume_from(mark(e, 3), &head("", 0, true)), Err("epoch"));
    assert_eq!(resume_from(mark(e, 3), &head("F", 5, true)), Err("epoch"));
    assert_eq!(resume_from(mark(e, 3), &head("E", 5, true)), Ok(mark(e, 3)));
    assert_eq!(
        resume_from(mark(e, 3), &head("E", 5, false)),
        Err("expired")
    );
    assert_eq!(resume_from(mark(e, 6), &head("E", 5, true)), Err("expired"));
    // No epoch past position 0: the epoch key was lost beside a stream
    // that lives on; resumable while it stays so, a reset once another
    // epoch is made.
    assert_eq!(resume_from(mark(0, 4), &head("", 4, true)), Ok(mark(0, 4)));
    assert_eq!(resume_from(mark(0, 4), &head("E", 5, true)), Err("epoch"));
}

/// A store with one channel's history that the test scripts: its epoch
/// (empty: none), its entries, and what happens after each `heads`.
#[derive(Debug, Default)]
struct Scripted {
    state: Mutex<(String, Vec<Entry>)>,
    /// Set as the state after the first `heads` call (an append racing
    /// the connect).
    after_heads: Mutex<Option<(String, Vec<Entry>)>>,
}

fn entry(p: u64) -> Entry {
    Entry::new(
        Position::new(p, 0),
        Bytes::from(format!(r#"{{"v":1,"data":"x{p}"}}"#)),
    )
}

#[async_trait]
impl History for Scripted {
    async fn append(&self, _: &Channel, _: Bytes) -> Result<Position, BrokerError> {
        unreachable!("the test appends by script")
    }

    async fn heads(
        &self,
        channels: &[(Channel, Option<Position>)],
    ) -> Result<Vec<Head>, BrokerError> {
        let mut state = self.state.lock().unwrap();
        let heads = channels
            .iter()
            .map(|(channel, _)| match channel {
                Channel::Topic(_) => {
                    let last = state.1.last().map_or(0, |e| e.position.major());
                    head(&state.0, last, true)
                }
                _ => head("", 0, true),
            })
            .collect();
        if let Some(next) = self.after_heads.lock().unwrap().take() {
            *state = next;
        }
        Ok(heads)
    }

    async fn read(
        &self,
        channel: &Channel,
        after: Position,
        limit: usize,
    ) -> Result<Vec<Entry>, BrokerError> {
        if !matches!(channel, Channel::Topic(_)) {
            return Ok(Vec::new());
        }
        let state = self.state.lock().unwrap();
        Ok(state
            .1
            .iter()
            .filter(|e| e.position > after)
            .take(limit)
            .cloned()
            .collect())
    }
}

/// A connection to topic `t` through a resumer over `store`.
fn connection(store: Arc<Scripted>) -> (Arc<Resumer>, FrameSender, SseStream, Vec<Channel>) {
    connection_with(store, StreamConfig::default())
}

/// [`connection`] with the queue bounds of `config`.
fn connection_with(
    store: Arc<Scripted>,
    config: StreamConfig,
) -> (Arc<Resumer>, FrameSender, SseStream, Vec<Channel>) {
    let resumer = Arc::new(Resumer::new(
        store,
        Arc::new(ConnectionRegistry::default()),
        Arc::new(Counters::new("test")),
        "test".into(),
    ));
    let cfg = config.keep_alive(None).initial_retry(None);
    let (tx, rx) = channel(&cfg);
    let channels = resumer.prepare(&tx, None, &["t".into()]);
    (resumer, tx, rx, channels)
}

/// The frames up to and including the id-only frame that ends a replay.
async fn until_live(rx: &mut SseStream) -> Vec<String> {
    let mut frames = Vec::new();
    loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(5), rx.next())
            .await
            .expect("a frame")
            .expect("stream open");
        let frame = String::from_utf8(frame.to_vec()).unwrap();
        let done = frame.starts_with("id: ") && !frame.contains("\ndata");
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// The entry of topic `t` in the id line of `frame`.
fn t_entry(frame: &str) -> Mark {
    let id = frame
        .strip_prefix("id: ")
        .and_then(|f| f.split('\n').next())
        .unwrap();
    let LastId::Marks(marks) = parse_last_id(id) else {
        panic!("{id}")
    };
    let key = channel_key(&Channel::Topic("t".into()));
    marks.into_iter().find(|m| m.key == key).unwrap()
}

/// The client connected while `t` had no history (its id says tag 0 at
/// position 0); 3 events were published since: all 3 are replayed, no
/// reset, and the id moves into the channel's epoch.
#[tokio::test]
async fn a_channel_without_history_resumes_from_its_beginning() {
    let store = Arc::new(Scripted::default());
    *store.state.lock().unwrap() = ("E".into(), (1..=3).map(entry).collect());
    let (resumer, tx, mut rx, channels) = connection(store);
    let broadcast = Mark {
        key: channel_key(&Channel::Broadcast),
        ..mark(0, 0)
    };
    let from = LastId::Marks(vec![broadcast, mark(0, 0)]);
    resumer.place(tx, channels, Some(from), "c").await.unwrap();
    let frames = until_live(&mut rx).await;
    assert!(
        !frames.iter().any(|f| f.contains(RESET_EVENT)),
        "{frames:?}"
    );
    let data: Vec<&str> = frames
        .iter()
        .filter_map(|f| f.split("data: ").nth(1))
        .collect();
    assert_eq!(data, ["x1\n\n", "x2\n\n", "x3\n\n"]);
    assert_eq!(t_entry(frames.last().unwrap()), mark(epoch_tag("E"), 3));
}

/// A real epoch in the id, and the channel has none now: reset.
#[tokio::test]
async fn a_channel_that_lost_its_history_resets() {
    let store = Arc::new(Scripted::default());
    let (resumer, tx, mut rx, channels) = connection(store);
    let from = LastId::Marks(vec![mark(epoch_tag("E"), 2)]);
    resumer.place(tx, channels, Some(from), "c").await.unwrap();
    let frames = until_live(&mut rx).await;
    assert!(frames[0].contains(r#"{"reason":"epoch"}"#), "{frames:?}");
    assert_eq!(t_entry(frames.last().unwrap()), mark(0, 0));
}

/// The first event of a channel is appended between the connect's heads
/// (no history yet) and its replay: the replay reads it and its live
/// copy arrives held. The client gets it once, and its id names the
/// epoch the event got, not the tag 0.
#[tokio::test]
async fn a_first_event_racing_the_connect_is_sent_once() {
    let store = Arc::new(Scripted::default());
    *store.after_heads.lock().unwrap() = Some(("E".into(), vec![entry(1)]));
    let (resumer, tx, mut rx, channels) = connection(store);
    let key = channel_key(&Channel::Topic("t".into()));
    resumer
        .place(tx.clone(), channels, None, "c")
        .await
        .unwrap();
    // Current-thread runtime: the replay has not run yet.
    let live = Stamped {
        key,
        epoch: epoch_tag("E"),
        position: Position::new(1, 0),
        body: Bytes::from_static(b"data: x1\n\n"),
    };
    assert_eq!(send_live(&tx, &live), Ok(false), "held during the replay");
    let frames = until_live(&mut rx).await;
    let data = frames.iter().filter(|f| f.contains("data: x1")).count();
    assert_eq!(data, 1, "{frames:?}");
    assert_eq!(t_entry(frames.last().unwrap()), mark(epoch_tag("E"), 1));
    // Later live events go out.
    let mut next = live.clone();
    next.position = Position::new(2, 0);
    assert_eq!(send_live(&tx, &next), Ok(true));
}

/// A connection whose cursor stands at tag 0 for a channel gets that
/// channel's first live events, which carry a real epoch.
#[tokio::test]
async fn live_events_with_an_epoch_pass_a_cursor_without_one() {
    let store = Arc::new(Scripted::default());
    let (resumer, tx, mut rx, channels) = connection(store);
    resumer
        .place(tx.clone(), channels, None, "c")
        .await
        .unwrap();
    let frames = until_live(&mut rx).await;
    assert_eq!(t_entry(frames.last().unwrap()), mark(0, 0));
    let key = channel_key(&Channel::Topic("t".into()));
    for p in 1..=2 {
        let live = Stamped {
            key,
            epoch: epoch_tag("E"),
            position: Position::new(p, 0),
            body: Bytes::from_static(b"data: y\n\n"),
        };
        assert_eq!(send_live(&tx, &live), Ok(true), "event {p}");
        let frame = rx.next().await.unwrap();
        let frame = String::from_utf8(frame.to_vec()).unwrap();
        assert_eq!(t_entry(&frame), mark(epoch_tag("E"), p));
    }
}

/// A replay that ends with the queue full (the client reads more slowly
/// than the store answers) waits for the client to read before going
/// live; it does not take the full queue for overflowing live traffic,
/// re-read the store until its passes run out and close the stream.
#[tokio::test]
async fn a_replay_that_fills_the_queue_waits_to_go_live() {
    let store = Arc::new(Scripted::default());
    *store.state.lock().unwrap() = ("E".into(), (1..=20).map(entry).collect());
    let small = StreamConfig::default().queue_limits(4, 1 << 20);
    let (resumer, tx, mut rx, channels) = connection_with(store, small);
    let from = LastId::Marks(vec![mark(epoch_tag("E"), 0)]);
    resumer
        .place(tx.clone(), channels, Some(from), "c")
        .await
        .unwrap();
    // Current-thread runtime: the replay refills the queue whenever this
    // task yields, so it is full each time the replay looks at it.
    let mut frames = Vec::new();
    loop {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        let frame = tokio::time::timeout(std::time::Duration::from_secs(5), rx.next())
            .await
            .expect("a frame")
            .expect("stream open");
        let frame = String::from_utf8(frame.to_vec()).unwrap();
        let done = !frame.contains("\ndata");
        frames.push(frame);
        if done {
            break;
        }
    }
    assert_eq!(frames.len(), 21, "20 replayed, then the id-only frame");
    let live = Stamped {
        key: channel_key(&Channel::Topic("t".into())),
        epoch: epoch_tag("E"),
        position: Position::new(21, 0),
        body: Bytes::from_static(b"data: x21\n\n"),
    };
    assert_eq!(send_live(&tx, &live), Ok(true), "live after the replay");
    let frame = rx.next().await.expect("stream open");
    assert!(frame.ends_with(b"data: x21\n\n"), "{frame:?}");
}
