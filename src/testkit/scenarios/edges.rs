//! The scenarios of the application's edges: a resume token made when a
//! page is rendered, and a publish retried with its idempotency key.

use super::{by_channel, publish, Client, Cx};
use crate::history::Retention;
use crate::resume::RESET_EVENT;
use crate::{Event, Hub, PublishReceipt, ResumeTokenError, Subscription, Target};

/// A page is rendered on `a` with a token for two topics (one with events
/// before the token, one nobody has published to yet) and a user; events
/// are published through `b` before the browser connects, to `c`, with the
/// token: it gets exactly the events published after the token, each once,
/// in order per channel, then live ones. A hub without history says so.
pub(super) async fn resume_token(cx: &mut Cx<'_>) {
    const AFTER: usize = 10;
    let history = Some(Retention::default());
    let a = cx.hub("a", history).await;
    let b = cx.hub("b", history).await;
    let c = cx.hub("c", history).await;
    let follow = || Subscription::new().topic("old").topic("new").user("tu");

    // Before the page: not to be replayed.
    for i in 0..3 {
        publish(&b, Target::topic("old"), &format!("old:{i}")).await;
    }
    let token = a
        .resume_token(&follow())
        .await
        .unwrap_or_else(|e| panic!("resume_token on a: {e}"));
    assert!(
        token.starts_with("r1."),
        "a token in the event id codec: {token:?}"
    );
    for i in 3..3 + AFTER {
        publish(&b, Target::topic("old"), &format!("old:{i}")).await;
        publish(&b, Target::topic("new"), &format!("new:{i}")).await;
        publish(&b, Target::user("tu"), &format!("tu:{i}")).await;
    }
    let mut client = Client::open(
        &c,
        follow().last_event_id(token),
        "old, new, tu connected to c with the token",
    )
    .await;
    let got = client
        .messages(3 * AFTER, "the events after the token")
        .await;
    let got = by_channel(&got);
    let want: Vec<usize> = (3..3 + AFTER).collect();
    for name in ["old", "new", "tu"] {
        assert_eq!(
            got.get(name),
            Some(&want),
            "channel {name}: each event after the token once, in order, none before"
        );
    }
    client.expect_quiet().await;
    publish(&a, Target::topic("new"), "new:live").await;
    client.expect_set(&["new:live"]).await;
    client.expect_quiet().await;

    let plain = cx.hub("plain", None).await;
    assert!(
        matches!(
            plain.resume_token(&follow()).await,
            Err(ResumeTokenError::NoHistory)
        ),
        "a hub without history has no token to give"
    );
    let long = "x".repeat(crate::limits::MAX_NAME_LEN + 1);
    assert!(matches!(
        a.resume_token(&Subscription::new().topic(long)).await,
        Err(ResumeTokenError::InvalidSubscription(_))
    ));
}

/// Publishes `data` to `target` through `hub` with `key`; panics on failure.
async fn publish_keyed(hub: &Hub, target: Target, data: &str, key: &str) -> PublishReceipt {
    hub.publish_idempotent(target.clone(), Event::new().data(data), key)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "hub {}: publish {data:?} to {target:?} with key {key:?} failed: {e}",
                hub.node_id()
            )
        })
}

/// One key is published 3 times to a topic, from 2 nodes (a retry through
/// another API node): the first is stored and delivered, the repeats get
/// the first one's receipt (same id and position, marked duplicate); each
/// connection, on either node, gets one frame, and a client resuming from
/// before gets one replayed event. The same key on another target, and
/// another key on the same target, are publishes of their own.
pub(super) async fn idempotency(cx: &mut Cx<'_>) {
    let history = Some(Retention::default());
    let a = cx.hub("a", history).await;
    let b = cx.hub("b", history).await;
    let c = cx.hub("c", history).await;
    let follow = || Subscription::new().topic("orders").topic("audit");
    let token = c
        .resume_token(&follow())
        .await
        .unwrap_or_else(|e| panic!("resume_token on c: {e}"));
    let mut on_a = Client::open(&a, follow(), "orders on a").await;
    let mut on_b = Client::open(&b, follow(), "orders on b").await;

    let first = publish_keyed(&a, Target::topic("orders"), "orders:1", "k1").await;
    assert!(!first.duplicate, "the first publish of a key: {first:?}");
    assert!(first.position.is_some(), "stored: {first:?}");
    for (hub, data) in [(&b, "orders:1 retried"), (&a, "orders:1 again")] {
        let again = publish_keyed(hub, Target::topic("orders"), data, "k1").await;
        assert!(
            again.duplicate,
            "a repeat through {}: {again:?}",
            hub.node_id()
        );
        assert_eq!(
            (&again.id, again.position),
            (&first.id, first.position),
            "a repeat through {} has the first publish's receipt",
            hub.node_id()
        );
        assert_eq!(again.delivered_locally, 0);
    }
    let duplicates = a.stats().publish_duplicates + b.stats().publish_duplicates;
    assert_eq!(duplicates, 2, "counted as duplicates, once each");
    let other_key = publish_keyed(&b, Target::topic("orders"), "orders:2", "k2").await;
    assert!(!other_key.duplicate, "another key: {other_key:?}");
    let other_target = publish_keyed(&b, Target::topic("audit"), "audit:1", "k1").await;
    assert!(
        !other_target.duplicate,
        "the same key to another target: {other_target:?}"
    );

    for client in [&mut on_a, &mut on_b] {
        client
            .expect_set(&["orders:1", "orders:2", "audit:1"])
            .await;
        client.expect_quiet().await;
    }
    // One history entry per key and target.
    let mut resumed = Client::open(
        &c,
        follow().last_event_id(token),
        "orders resumed on c from before the publishes",
    )
    .await;
    let first_event = resumed.next("the replayed events").await;
    assert_ne!(first_event.event, RESET_EVENT, "{first_event:?}");
    let mut got = vec![first_event.data];
    got.extend(resumed.messages(2, "the replayed events").await);
    got.sort();
    assert_eq!(got, ["audit:1", "orders:1", "orders:2"]);
    resumed.expect_quiet().await;
}
