//! The JetStream store's settings and what it asks of the server.

use super::*;
use crate::broker::nats::NatsConfig;
use crate::history::Retention;

#[test]
fn every_message_expires() {
    let broker = NatsBroker::new(NatsConfig::new("nats://127.0.0.1:1")).expect("broker");
    let config = |retention: Retention| {
        let history = JetStreamHistory::new(broker.clone(), JetStreamConfig::new(retention))
            .expect("history");
        history.inner.stream_config()
    };
    let forever = Retention::default().max_age(None);
    assert_eq!(config(forever).max_age, DEFAULT_IDLE_TTL);
    let hour = Duration::from_secs(3600);
    assert_eq!(
        config(Retention::default().max_age(Some(hour))).max_age,
        hour
    );
    let history = JetStreamHistory::new(
        broker.clone(),
        JetStreamConfig::new(forever).idle_ttl(Duration::from_secs(60)),
    )
    .expect("history");
    assert_eq!(
        history.inner.stream_config().max_age,
        Duration::from_secs(60)
    );
}

#[test]
fn names_and_subjects() {
    assert_eq!(default_stream_name("sse"), "SSE_HISTORY");
    assert_eq!(default_stream_name("app.sse-1"), "APP_SSE-1_HISTORY");
    let broker =
        NatsBroker::new(NatsConfig::new("nats://127.0.0.1:1").prefix("app.sse")).expect("broker");
    let history =
        JetStreamHistory::new(broker.clone(), JetStreamConfig::default()).expect("history");
    assert_eq!(history.stream_name(), "APP_SSE_HISTORY");
    assert_eq!(
        history.history_subject(&Channel::Topic("a.b".into())),
        "app.sse_h.topic.a%2Eb"
    );
    assert_eq!(
        history.history_subject(&Channel::Broadcast),
        "app.sse_h.all"
    );
    assert_eq!(
        history.history_subject(&Channel::User("u".into())),
        "app.sse_h.user.u"
    );
    for bad in ["", "a.b", "a b", "x*", "y>"] {
        assert!(
            JetStreamHistory::new(broker.clone(), JetStreamConfig::default().stream(bad)).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn the_duplicate_window_is_the_idempotency_window_within_the_age() {
    let broker = NatsBroker::new(NatsConfig::new("nats://127.0.0.1:1")).expect("broker");
    let history = |retention: Retention| {
        JetStreamHistory::new(broker.clone(), JetStreamConfig::new(retention)).expect("history")
    };
    let default = history(Retention::default());
    assert_eq!(
        default.inner.stream_config().duplicate_window,
        Retention::DEFAULT_IDEMPOTENCY_WINDOW
    );
    assert_eq!(
        default.idempotency_window(),
        Some(Retention::DEFAULT_IDEMPOTENCY_WINDOW)
    );
    let short = Retention::default()
        .max_age(Some(Duration::from_secs(30)))
        .idempotency_window(Duration::from_secs(600));
    let short = history(short);
    assert_eq!(
        short.inner.stream_config().duplicate_window,
        Duration::from_secs(30)
    );
    assert_eq!(short.idempotency_window(), Some(Duration::from_secs(30)));
}
