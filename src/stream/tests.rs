//! The stream's queue and body, together.

use super::*;
use futures_util::StreamExt;
use tokio::time::Instant;

fn cfg() -> StreamConfig {
    StreamConfig::default().keep_alive(None).initial_retry(None)
}

#[tokio::test]
async fn delivers_in_order_then_ends_on_close() {
    let (tx, mut rx) = channel(&cfg());
    tx.send(Bytes::from_static(b"data: 1\n\n")).unwrap();
    tx.send(Bytes::from_static(b"data: 2\n\n")).unwrap();
    tx.close_with(Some(Bytes::from_static(b"retry: 10\n\n")));
    assert_eq!(tx.send(Bytes::new()), Err(SendError::Closed));
    assert_eq!(&rx.next().await.unwrap()[..], b"data: 1\n\n");
    assert_eq!(&rx.next().await.unwrap()[..], b"data: 2\n\n");
    assert_eq!(&rx.next().await.unwrap()[..], b"retry: 10\n\n");
    assert!(rx.next().await.is_none());
}

#[tokio::test]
async fn initial_retry_comes_first() {
    let (_tx, mut rx) = channel(&StreamConfig::default().keep_alive(None));
    assert_eq!(&rx.next().await.unwrap()[..], b"retry: 3000\n\n");
}

#[tokio::test]
async fn overflow_close_ends_the_stream() {
    let (tx, mut rx) = channel(&cfg().queue_limits(2, 1 << 20));
    tx.send(Bytes::from_static(b"a")).unwrap();
    tx.send(Bytes::from_static(b"b")).unwrap();
    assert_eq!(
        tx.send(Bytes::from_static(b"c")),
        Err(SendError::OverflowClosed)
    );
    assert!(tx.is_closed());
    assert!(rx.next().await.is_none());
}

#[tokio::test]
async fn overflow_drop_marks_the_gap_in_place() {
    let (tx, mut rx) = channel(
        &cfg()
            .queue_limits(1, 1 << 20)
            .overflow(OverflowPolicy::DropEvents),
    );
    tx.send(Bytes::from_static(b"a")).unwrap();
    assert_eq!(tx.send(Bytes::from_static(b"b")), Err(SendError::Dropped));
    assert_eq!(tx.send(Bytes::from_static(b"c")), Err(SendError::Dropped));
    assert_eq!(tx.dropped(), 2);
    assert_eq!(&rx.next().await.unwrap()[..], b"a");
    assert_eq!(
        &rx.next().await.unwrap()[..],
        b"event: sse-cluster.gap\ndata: {\"reason\":\"overflow\",\"dropped\":2}\n\n"
    );
    tx.send(Bytes::from_static(b"d")).unwrap();
    assert_eq!(&rx.next().await.unwrap()[..], b"d");
}

#[tokio::test]
async fn byte_bound_applies() {
    let (tx, _rx) = channel(&cfg().queue_limits(100, 4));
    tx.send(Bytes::from_static(b"abc")).unwrap();
    assert_eq!(
        tx.send(Bytes::from_static(b"de")),
        Err(SendError::OverflowClosed)
    );
}

#[tokio::test]
async fn dropping_the_stream_closes_the_sender_and_runs_the_guard() {
    struct Flag(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = channel(&cfg());
    let rx = rx.with_drop_guard(Flag(flag.clone()));
    drop(rx);
    assert!(flag.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(tx.send(Bytes::new()), Err(SendError::Closed));
}

#[tokio::test]
async fn body_joins_queued_frames_the_stream_does_not() {
    use http_body_util::BodyExt;
    let (tx, mut rx) = channel(&cfg());
    for frame in [&b"data: 1\n\n"[..], b"data: 2\n\n"] {
        tx.send(Bytes::from_static(frame)).unwrap();
    }
    assert_eq!(&rx.next().await.unwrap()[..], b"data: 1\n\n");
    tx.send(Bytes::from_static(b"data: 3\n\n")).unwrap();
    let chunk = rx.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&chunk[..], b"data: 2\n\ndata: 3\n\n");

    // Bounded in bytes: two 10 KiB frames stay two chunks.
    let big = Bytes::from(vec![b'x'; 10 * 1024]);
    tx.send(big.clone()).unwrap();
    tx.send(big.clone()).unwrap();
    for _ in 0..2 {
        let chunk = rx.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(chunk, big);
    }
}

#[tokio::test(start_paused = true)]
async fn keep_alive_only_when_idle() {
    let cfg = cfg().keep_alive(Some(Duration::from_secs(15)));
    let (tx, mut rx) = channel(&cfg);
    let start = Instant::now();
    assert_eq!(&rx.next().await.unwrap()[..], KEEP_ALIVE_FRAME);
    assert_eq!(start.elapsed(), Duration::from_secs(15));
    tokio::time::sleep(Duration::from_secs(10)).await;
    tx.send(Bytes::from_static(b"x")).unwrap();
    assert_eq!(&rx.next().await.unwrap()[..], b"x");
    // Activity at t=25 pushes the next keep-alive to t=40.
    assert_eq!(&rx.next().await.unwrap()[..], KEEP_ALIVE_FRAME);
    assert_eq!(start.elapsed(), Duration::from_secs(40));
}

/// The timer is left where it was on activity and moved when it fires
/// early: the keep-alive still comes one interval after the last event.
#[tokio::test(start_paused = true)]
async fn keep_alive_counts_from_the_last_of_several_events() {
    let cfg = cfg().keep_alive(Some(Duration::from_secs(15)));
    let (tx, mut rx) = channel(&cfg);
    let start = Instant::now();
    for at in [5, 10, 12] {
        let read = tokio::spawn(async move {
            let frame = rx.next().await.unwrap();
            (rx, frame)
        });
        tokio::time::sleep_until(start + Duration::from_secs(at)).await;
        tx.send(Bytes::from_static(b"x")).unwrap();
        let (back, frame) = read.await.unwrap();
        rx = back;
        assert_eq!(&frame[..], b"x");
    }
    assert_eq!(&rx.next().await.unwrap()[..], KEEP_ALIVE_FRAME);
    assert_eq!(start.elapsed(), Duration::from_secs(27));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_ends_the_stream_with_its_frame_at_that_time() {
    let started = Instant::now();
    let (tx, rx) = channel(&cfg());
    let mut rx = rx.end_at(
        started + Duration::from_secs(10),
        Bytes::from_static(b"event: end\n\n"),
    );
    tx.send(Bytes::from_static(b"data: 1\n\n")).unwrap();
    assert_eq!(&rx.next().await.unwrap()[..], b"data: 1\n\n");
    // Nothing until the deadline, then the frame and the end, at once.
    assert_eq!(&rx.next().await.unwrap()[..], b"event: end\n\n");
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert!(rx.next().await.is_none());
    assert_eq!(tx.send(Bytes::new()), Err(SendError::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_does_not_reopen_a_closing_stream() {
    let (tx, rx) = channel(&cfg());
    let mut rx = rx.end_at(Instant::now(), Bytes::from_static(b"event: end\n\n"));
    tx.close_with(Some(Bytes::from_static(b"retry: 1\n\n")));
    assert_eq!(&rx.next().await.unwrap()[..], b"retry: 1\n\n");
    assert!(rx.next().await.is_none());
}

/// What a send and a read touch lies in the first 80 bytes of the shared
/// state (two cache lines), lock included; see `State`.
#[test]
fn the_hot_fields_share_two_cache_lines() {
    let (tx, _rx) = channel(&StreamConfig::default());
    let shared = &*tx.shared;
    let base = shared as *const Shared as usize;
    let state = shared.lock();
    let end_of = |addr: usize, size: usize| addr + size - base;
    let hot = [
        end_of(&shared.state as *const _ as usize, 8),
        end_of(&state.front as *const _ as usize, size_of_val(&state.front)),
        end_of(&state.frames as *const _ as usize, 8),
        end_of(&state.bytes as *const _ as usize, 8),
        end_of(&state.waker as *const _ as usize, size_of_val(&state.waker)),
        end_of(&state.phase as *const _ as usize, 1),
        end_of(&state.want_space as *const _ as usize, 1),
    ];
    assert!(hot.iter().all(|&end| end <= 80), "{hot:?}");
}
