//! Metrics and tracing: what a hub reports to the `metrics` facade, and the
//! `tracing` spans it opens.
//!
//! # Metrics
//!
//! Every hub records through the [`metrics`] facade crate, so any exporter
//! (Prometheus, StatsD, OpenTelemetry...) sees them once the application
//! installs a recorder. Every metric carries the label `node` (the hub's node
//! id), so several hubs in one process stay apart.
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `sse_connections` | gauge | `node` | connections held now |
//! | `sse_connects_total` | counter | `node` | connections accepted |
//! | `sse_disconnects_total` | counter | `node` | connections ended (client gone, overflow, shutdown) |
//! | `sse_events_published_total` | counter | `node` | successful [`Hub::publish`](crate::Hub::publish) calls |
//! | `sse_publish_duplicates_total` | counter | `node` | publishes answered as repeats of an idempotency key ([`Hub::publish_idempotent`](crate::Hub::publish_idempotent)): accepted, nothing stored or delivered |
//! | `sse_events_delivered_total` | counter | `node` | frames queued to local connections (any origin) |
//! | `sse_events_dropped_total` | counter | `node` | frames dropped by a full queue under `OverflowPolicy::DropEvents` |
//! | `sse_queue_overflows_total` | counter | `node` | connections closed because their queue overflowed (`OverflowPolicy::Close`) |
//! | `sse_bus_messages_in_total` | counter | `node` | event messages received from the bus, including echoes and malformed ones |
//! | `sse_bus_messages_out_total` | counter | `node` | event messages published on the bus |
//! | `sse_bus_malformed_total` | counter | `node` | received messages refused as malformed or of an unknown version |
//! | `sse_bus_errors_total` | counter | `node` | bus publishes that failed (the event reached no other node) |
//! | `sse_broker_up` | gauge | `node` | 1 while the broker reaches its server, else 0 |
//! | `sse_bus_outages_total` | counter | `node` | times the broker went down |
//! | `sse_gap_events_total` | counter | `node` | gap events sent to streams after a bus outage or loss |
//! | `sse_resume_replays_total` | counter | `node` | resumes that replayed history to a reconnecting client |
//! | `sse_resume_events_replayed_total` | counter | `node` | events replayed from history |
//! | `sse_resume_resets_total` | counter | `node` | resumes that could not replay everything and sent the reset event |
//! | `sse_history_retained_bytes` | gauge | `node` | bytes the history store holds in this process (the memory store; updated every second), 0 for a store whose data lives on a server |
//! | `sse_publish_to_frame_seconds` | histogram | `node`, `path` | time from the publish to the frame queued to local connections; `path` is `local` (same node) or `bus` (another node, from the envelope's `ts_us`) |
//! | `sse_presence_queries_total` | counter | `node` | presence queries this hub asked |
//! | `sse_presence_incomplete_total` | counter | `node` | presence queries that timed out before every known node answered |
//! | `sse_presence_nodes` | gauge | `node` | nodes this hub believes alive, itself included |
//! | `sse_control_messages_in_total` | counter | `node` | presence control messages received (heartbeats, queries, answers) |
//! | `sse_control_messages_out_total` | counter | `node` | presence control messages published |
//! | `sse_control_malformed_total` | counter | `node` | control messages refused as malformed |
//! | `sse_connections_closed_by_command_total` | counter | `node` | streams this node ended because of a disconnect command ([`Hub::disconnect`](crate::Hub::disconnect), from any node); the sum over nodes is the cluster's count |
//!
//! The same list is in [`METRICS`]; [`describe`] hands the descriptions to
//! the installed recorder (a hub does it when it is built).
//!
//! **Install the recorder before building the hub.** A hub registers its
//! metric handles once, in [`HubBuilder::build`](crate::HubBuilder::build),
//! so that recording is a plain atomic add with no name lookup; a recorder
//! installed later sees nothing from a hub built before it. Without a
//! recorder the handles are no-ops: nothing in the hot path allocates or
//! takes a lock for metrics. Fan-outs are recorded once per fan-out (one add
//! of the number of frames), not once per connection.
//!
//! `sse_publish_to_frame_seconds{path="bus"}` compares the receiving node's
//! clock with the publishing node's `ts_us` (see [`wire`](crate::wire)):
//! exact between processes of one machine, only as good as the clock
//! synchronisation (NTP, PTP) across machines. Values that are negative or
//! over an hour (skewed clocks, or a foreign publisher writing another unit)
//! are not recorded.
//!
//! # Tracing spans
//!
//! | span | level | fields | around |
//! |---|---|---|---|
//! | `sse.connect` | INFO | `node`, `user`, `topics`, `conn` | [`Hub::connect`](crate::Hub::connect) |
//! | `sse.publish` | DEBUG | `node`, `target`, `msg` | [`Hub::publish`](crate::Hub::publish) |
//! | `sse.replay` | INFO | `node`, `conn`, `channels` | a resume replaying history |
//! | `sse.shutdown` | INFO | `node` | [`Hub::shutdown`](crate::Hub::shutdown) |
//! | `sse.presence` | DEBUG | `node`, `query` | a presence query |
//!
//! `sse.publish` is at DEBUG so that a production subscriber at INFO pays
//! nothing per publish.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{Counter, Gauge, Histogram, Unit};
use serde::Serialize;

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution of values.
    Histogram,
}

/// One metric a hub records.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct MetricInfo {
    /// The metric name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// What it counts or measures.
    pub help: &'static str,
}

const fn info(name: &'static str, kind: MetricKind, help: &'static str) -> MetricInfo {
    MetricInfo { name, kind, help }
}

use MetricKind::{Counter as C, Gauge as G, Histogram as H};

/// Every metric a hub records (the table in the module docs).
pub const METRICS: &[MetricInfo] = &[
    info(CONNECTIONS, G, "Connections held now."),
    info(CONNECTS, C, "Connections accepted."),
    info(DISCONNECTS, C, "Connections ended."),
    info(PUBLISHED, C, "Successful Hub::publish calls."),
    info(
        DUPLICATES,
        C,
        "Publishes answered as repeats of an idempotency key.",
    ),
    info(DELIVERED, C, "Frames queued to local connections."),
    info(
        DROPPED,
        C,
        "Frames dropped by a full queue (OverflowPolicy::DropEvents).",
    ),
    info(
        OVERFLOWS,
        C,
        "Connections closed because their queue overflowed.",
    ),
    info(BUS_IN, C, "Event messages received from the bus."),
    info(BUS_OUT, C, "Event messages published on the bus."),
    info(
        BUS_MALFORMED,
        C,
        "Bus messages refused as malformed or of an unknown version.",
    ),
    info(BUS_ERRORS, C, "Bus publishes that failed."),
    info(
        BROKER_UP,
        G,
        "1 while the broker reaches its server, else 0.",
    ),
    info(BUS_OUTAGES, C, "Times the broker went down."),
    info(GAP_EVENTS, C, "Gap events sent to streams."),
    info(REPLAYS, C, "Resumes that replayed history."),
    info(REPLAYED, C, "Events replayed from history."),
    info(RESETS, C, "Resumes that sent the reset event."),
    info(
        HISTORY_BYTES,
        G,
        "Bytes the history store holds in this process.",
    ),
    info(
        LATENCY,
        H,
        "Seconds from publish to the frame queued to local connections.",
    ),
    info(PRESENCE_QUERIES, C, "Presence queries asked."),
    info(
        PRESENCE_INCOMPLETE,
        C,
        "Presence queries that timed out before every known node answered.",
    ),
    info(
        PRESENCE_NODES,
        G,
        "Nodes believed alive, this one included.",
    ),
    info(CONTROL_IN, C, "Presence control messages received."),
    info(CONTROL_OUT, C, "Presence control messages published."),
    info(
        CONTROL_MALFORMED,
        C,
        "Control messages refused as malformed.",
    ),
    info(
        CLOSED_BY_COMMAND,
        C,
        "Streams this node ended because of a disconnect command.",
    ),
];

const CONNECTIONS: &str = "sse_connections";
const CONNECTS: &str = "sse_connects_total";
const DISCONNECTS: &str = "sse_disconnects_total";
const PUBLISHED: &str = "sse_events_published_total";
const DUPLICATES: &str = "sse_publish_duplicates_total";
const DELIVERED: &str = "sse_events_delivered_total";
const DROPPED: &str = "sse_events_dropped_total";
const OVERFLOWS: &str = "sse_queue_overflows_total";
const BUS_IN: &str = "sse_bus_messages_in_total";
const BUS_OUT: &str = "sse_bus_messages_out_total";
const BUS_MALFORMED: &str = "sse_bus_malformed_total";
const BUS_ERRORS: &str = "sse_bus_errors_total";
const BROKER_UP: &str = "sse_broker_up";
const BUS_OUTAGES: &str = "sse_bus_outages_total";
const GAP_EVENTS: &str = "sse_gap_events_total";
const REPLAYS: &str = "sse_resume_replays_total";
const REPLAYED: &str = "sse_resume_events_replayed_total";
const RESETS: &str = "sse_resume_resets_total";
const HISTORY_BYTES: &str = "sse_history_retained_bytes";
const LATENCY: &str = "sse_publish_to_frame_seconds";
const PRESENCE_QUERIES: &str = "sse_presence_queries_total";
const PRESENCE_INCOMPLETE: &str = "sse_presence_incomplete_total";
const PRESENCE_NODES: &str = "sse_presence_nodes";
const CONTROL_IN: &str = "sse_control_messages_in_total";
const CONTROL_OUT: &str = "sse_control_messages_out_total";
const CONTROL_MALFORMED: &str = "sse_control_malformed_total";
const CLOSED_BY_COMMAND: &str = "sse_connections_closed_by_command_total";

/// Hands the name, kind, unit and description of every metric in
/// [`METRICS`] to the installed recorder (Prometheus shows them as `# HELP`
/// lines). A hub calls it when it is built; calling it again is harmless.
pub fn describe() {
    for m in METRICS {
        let unit = (m.kind == MetricKind::Histogram).then_some(Unit::Seconds);
        metrics::with_recorder(|r| {
            let name = metrics::KeyName::from_const_str(m.name);
            let help = metrics::SharedString::const_str(m.help);
            match m.kind {
                MetricKind::Counter => r.describe_counter(name, unit, help),
                MetricKind::Gauge => r.describe_gauge(name, unit, help),
                MetricKind::Histogram => r.describe_histogram(name, unit, help),
            }
        });
    }
}

/// A snapshot of a hub's counters: the same events the metrics above
/// record, counted by the same calls, so `stats()` and an exporter agree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HubStats {
    /// Connections held now.
    pub connections: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Successful calls to [`Hub::publish`](crate::Hub::publish).
    pub published: u64,
    /// Publishes answered as repeats of an idempotency key (not counted in
    /// `published`).
    pub publish_duplicates: u64,
    /// Messages this hub published on the bus.
    pub bus_out: u64,
    /// Messages received from the bus, including echoes and malformed ones.
    pub bus_in: u64,
    /// Received messages that were this hub's own echo (already delivered locally).
    pub bus_echo: u64,
    /// Received messages refused as malformed or of an unknown version.
    pub bus_malformed: u64,
    /// Bus publishes that failed; the event reached no other node.
    pub bus_errors: u64,
    /// Frames queued to local connections (live and replayed).
    pub delivered: u64,
    /// Frames dropped by a full queue under `OverflowPolicy::DropEvents`.
    pub dropped: u64,
    /// Connections closed because their queue overflowed.
    pub overflow_closed: u64,
    /// Bus channels this hub listens to now.
    pub subscriptions: u64,
    /// Times the broker went down.
    pub bus_outages: u64,
    /// Gap events sent to streams after the broker came back.
    pub gap_events: u64,
    /// Replays run (a reconnect with `Last-Event-ID`, or a bus outage ending
    /// with history on).
    pub replays: u64,
    /// Events sent by replays.
    pub replayed: u64,
    /// Reset events sent (see [`RESET_EVENT`](crate::resume::RESET_EVENT)).
    pub resets: u64,
    /// Bytes the history store holds in this process now
    /// ([`History::retained_bytes`](crate::history::History::retained_bytes));
    /// 0 without history or for a store whose data lives on a server.
    pub history_retained_bytes: u64,
    /// Streams this node ended because of a disconnect command
    /// ([`Hub::disconnect`](crate::Hub::disconnect) here or on another node).
    pub closed_by_command: u64,
}

/// What one fan-out did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FanOut {
    /// Frames queued.
    pub(crate) delivered: u64,
    /// Frames dropped by `OverflowPolicy::DropEvents`.
    pub(crate) dropped: u64,
    /// Connections closed by `OverflowPolicy::Close`.
    pub(crate) overflow_closed: u64,
}

/// One counter: an atomic for [`HubStats`] and the metric handle, bumped
/// together.
#[derive(Debug)]
struct Both {
    count: AtomicU64,
    metric: Counter,
}

impl Both {
    fn new(metric: Counter) -> Self {
        Self {
            count: AtomicU64::new(0),
            metric,
        }
    }

    fn add(&self, n: u64) {
        if n > 0 {
            self.count.fetch_add(n, Ordering::Relaxed);
            self.metric.increment(n);
        }
    }

    fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// One hub's counters. Each method is what one place in the hub records,
/// once, for both [`HubStats`] and the `metrics` facade. The handles are
/// registered once with the recorder installed when the hub was built.
#[derive(Debug)]
pub(crate) struct Counters {
    connections: Gauge,
    connects: Both,
    disconnects: Counter,
    published: Both,
    duplicates: Both,
    delivered: Both,
    dropped: Both,
    overflows: Both,
    bus_in: Both,
    bus_echo: AtomicU64,
    bus_out: Both,
    bus_malformed: Both,
    bus_errors: Both,
    broker_up: Gauge,
    bus_outages: Both,
    gap_events: Both,
    replays: Both,
    replayed: Both,
    resets: Both,
    history_bytes: Gauge,
    latency_local: Histogram,
    latency_bus: Histogram,
    presence_queries: Counter,
    presence_incomplete: Counter,
    presence_nodes: Gauge,
    control_in: Counter,
    control_out: Counter,
    control_malformed: Counter,
    closed_by_command: Both,
}

impl Counters {
    /// Registers the handles of node `node` with the current recorder.
    pub(crate) fn new(node: &str) -> Self {
        describe();
        let node = node.to_owned();
        let c = |name: &'static str| metrics::counter!(name, "node" => node.clone());
        let b = |name: &'static str| Both::new(c(name));
        let g = |name: &'static str| metrics::gauge!(name, "node" => node.clone());
        let h = |path: &'static str| metrics::histogram!(LATENCY, "node" => node.clone(), "path" => path);
        Self {
            connections: g(CONNECTIONS),
            connects: b(CONNECTS),
            disconnects: c(DISCONNECTS),
            published: b(PUBLISHED),
            duplicates: b(DUPLICATES),
            delivered: b(DELIVERED),
            dropped: b(DROPPED),
            overflows: b(OVERFLOWS),
            bus_in: b(BUS_IN),
            bus_echo: AtomicU64::new(0),
            bus_out: b(BUS_OUT),
            bus_malformed: b(BUS_MALFORMED),
            bus_errors: b(BUS_ERRORS),
            broker_up: g(BROKER_UP),
            bus_outages: b(BUS_OUTAGES),
            gap_events: b(GAP_EVENTS),
            replays: b(REPLAYS),
            replayed: b(REPLAYED),
            resets: b(RESETS),
            history_bytes: g(HISTORY_BYTES),
            latency_local: h("local"),
            latency_bus: h("bus"),
            presence_queries: c(PRESENCE_QUERIES),
            presence_incomplete: c(PRESENCE_INCOMPLETE),
            presence_nodes: g(PRESENCE_NODES),
            control_in: c(CONTROL_IN),
            control_out: c(CONTROL_OUT),
            control_malformed: c(CONTROL_MALFORMED),
            closed_by_command: b(CLOSED_BY_COMMAND),
        }
    }

    /// The counters now; `connections`, `subscriptions` and
    /// `history_retained_bytes` are read from the registry, the subscription
    /// table and the store by the caller.
    pub(crate) fn snapshot(
        &self,
        connections: u64,
        subscriptions: u64,
        history_retained_bytes: u64,
    ) -> HubStats {
        HubStats {
            connections,
            connections_total: self.connects.get(),
            published: self.published.get(),
            publish_duplicates: self.duplicates.get(),
            bus_out: self.bus_out.get(),
            bus_in: self.bus_in.get(),
            bus_echo: self.bus_echo.load(Ordering::Relaxed),
            bus_malformed: self.bus_malformed.get(),
            bus_errors: self.bus_errors.get(),
            delivered: self.delivered.get(),
            dropped: self.dropped.get(),
            overflow_closed: self.overflows.get(),
            subscriptions,
            bus_outages: self.bus_outages.get(),
            gap_events: self.gap_events.get(),
            replays: self.replays.get(),
            replayed: self.replayed.get(),
            resets: self.resets.get(),
            history_retained_bytes,
            closed_by_command: self.closed_by_command.get(),
        }
    }

    /// A connection was accepted.
    pub(crate) fn connected(&self) {
        self.connects.add(1);
        self.connections.increment(1.0);
    }

    /// A disconnect command closed `n` streams here.
    pub(crate) fn closed_by_command(&self, n: u64) {
        self.closed_by_command.add(n);
    }

    /// A connection ended.
    pub(crate) fn disconnected(&self) {
        self.disconnects.increment(1);
        self.connections.decrement(1.0);
    }

    /// A publish succeeded.
    pub(crate) fn published(&self) {
        self.published.add(1);
    }

    /// A publish repeated an idempotency key: accepted, nothing sent.
    pub(crate) fn publish_duplicate(&self) {
        self.duplicates.add(1);
    }

    /// One fan-out's outcome, recorded once for all its connections.
    pub(crate) fn fan_out(&self, out: FanOut) {
        self.delivered.add(out.delivered);
        self.dropped.add(out.dropped);
        self.overflows.add(out.overflow_closed);
    }

    /// A message arrived from the bus.
    pub(crate) fn bus_in(&self) {
        self.bus_in.add(1);
    }

    /// A received message was this hub's own echo.
    pub(crate) fn bus_echo(&self) {
        self.bus_echo.fetch_add(1, Ordering::Relaxed);
    }

    /// A message went out on the bus.
    pub(crate) fn bus_out(&self) {
        self.bus_out.add(1);
    }

    /// A message received on `channel` was refused: counted, and logged at
    /// WARN for the 1st, 2nd, 4th, 8th... so a flood cannot flood the logs.
    pub(crate) fn bus_malformed(&self, channel: &dyn fmt::Display, err: &dyn fmt::Display) {
        self.bus_malformed.add(1);
        let n = self.bus_malformed.get();
        if n.is_power_of_two() {
            tracing::warn!(%channel, error = %err, refused_so_far = n, "refused a bus message");
        } else {
            tracing::debug!(%channel, error = %err, "refused a bus message");
        }
    }

    /// A bus publish failed.
    pub(crate) fn bus_error(&self) {
        self.bus_errors.add(1);
    }

    /// The broker now reaches its server (`up`) or not.
    pub(crate) fn broker_up(&self, up: bool) {
        self.broker_up.set(if up { 1.0 } else { 0.0 });
    }

    /// The broker went down.
    pub(crate) fn bus_outage(&self) {
        self.bus_outages.add(1);
    }

    /// Gap events were queued (`out.delivered` of them).
    pub(crate) fn gap_events(&self, out: FanOut) {
        self.gap_events.add(out.delivered);
        self.fan_out(out);
    }

    /// A resume started replaying history (inside [`replay_span`]).
    pub(crate) fn replay_started(&self) {
        self.replays.add(1);
    }

    /// `n` events were replayed from history to one connection: they are
    /// delivered frames too.
    pub(crate) fn events_replayed(&self, n: u64) {
        self.replayed.add(n);
        self.delivered.add(n);
    }

    /// A resume could not replay everything and sent the reset event.
    pub(crate) fn resume_reset(&self) {
        self.resets.add(1);
    }

    /// The history store holds `bytes` in this process now.
    pub(crate) fn history_retained_bytes(&self, bytes: u64) {
        self.history_bytes.set(bytes as f64);
    }

    /// A publish started at `started` reached local connections (`out`).
    pub(crate) fn frame_from_local(&self, started: Instant, out: FanOut) {
        self.fan_out(out);
        if out.delivered > 0 {
            self.latency_local.record(started.elapsed().as_secs_f64());
        }
    }

    /// A message published at `ts_us` (the origin's clock, see
    /// [`wire`](crate::wire)) reached local connections (`out`).
    pub(crate) fn frame_from_bus(&self, ts_us: Option<u64>, out: FanOut) {
        self.fan_out(out);
        if out.delivered == 0 {
            return;
        }
        if let Some(age) = ts_us.and_then(age_of) {
            self.latency_bus.record(age.as_secs_f64());
        }
    }

    /// This hub asked a presence query.
    pub(crate) fn presence_query(&self) {
        self.presence_queries.increment(1);
    }

    /// A presence query ended before every known node answered.
    pub(crate) fn presence_incomplete(&self) {
        self.presence_incomplete.increment(1);
    }

    /// This hub now believes `n` nodes are alive.
    pub(crate) fn presence_nodes(&self, n: usize) {
        self.presence_nodes.set(n as f64);
    }

    /// A control message arrived.
    pub(crate) fn control_in(&self) {
        self.control_in.increment(1);
    }

    /// A control message went out.
    pub(crate) fn control_out(&self) {
        self.control_out.increment(1);
    }

    /// A control message was refused.
    pub(crate) fn control_malformed(&self) {
        self.control_malformed.increment(1);
    }
}

/// Longest publish-to-frame time recorded; more means skewed clocks or a
/// foreign publisher writing another unit.
const MAX_PLAUSIBLE_AGE: Duration = Duration::from_secs(3600);

/// Now, in microseconds since the Unix epoch (the envelope's `ts_us`).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// How long ago `ts_us` was, if that is plausible.
fn age_of(ts_us: u64) -> Option<Duration> {
    let age = Duration::from_micros(now_us().checked_sub(ts_us)?);
    (age <= MAX_PLAUSIBLE_AGE).then_some(age)
}

/// The span around a resume that replays history to connection `conn`.
pub(crate) fn replay_span(node: &str, conn: &str, channels: usize) -> tracing::Span {
    tracing::info_span!("sse.replay", node, conn, channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_prometheus_friendly() {
        let mut names: Vec<_> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        for m in METRICS {
            assert!(m.name.starts_with("sse_"), "{}", m.name);
            assert!(
                m.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                m.name
            );
            assert_eq!(m.kind == C, m.name.ends_with("_total"), "{}", m.name);
        }
    }

    #[test]
    fn every_metric_is_in_the_module_docs_and_the_readme() {
        let docs = include_str!("telemetry.rs");
        let readme = include_str!("../README.md");
        for m in METRICS {
            let row = format!("| `{}` |", m.name);
            assert!(docs.contains(&row), "module docs lack {}", m.name);
            assert!(readme.contains(&row), "README lacks {}", m.name);
        }
    }

    #[test]
    fn implausible_ages_are_not_recorded() {
        let now = now_us();
        assert!(age_of(now + 10_000_000).is_none(), "from the future");
        assert!(
            age_of(now / 1000).is_none(),
            "milliseconds, not microseconds"
        );
        assert!(age_of(now - 1_500).is_some_and(|a| a >= Duration::from_micros(1_500)));
    }

    #[test]
    fn handles_without_a_recorder_are_no_ops() {
        let m = Counters::new("n");
        m.connected();
        m.fan_out(FanOut::default());
        m.frame_from_bus(Some(now_us()), FanOut::default());
        m.replay_started();
        m.events_replayed(3);
        m.resume_reset();
        let _span = replay_span("n", "n.x.1", 2);
    }

    #[test]
    fn one_call_feeds_the_snapshot() {
        let m = Counters::new("n");
        m.connected();
        m.events_replayed(3);
        m.fan_out(FanOut {
            delivered: 2,
            dropped: 1,
            overflow_closed: 1,
        });
        m.bus_malformed(&"topic:t", &"bad");
        let s = m.snapshot(1, 4, 7);
        assert_eq!(s.connections_total, 1);
        assert_eq!((s.delivered, s.replayed), (5, 3));
        assert_eq!((s.dropped, s.overflow_closed), (1, 1));
        assert_eq!((s.bus_malformed, s.connections, s.subscriptions), (1, 1, 4));
        assert_eq!(s.history_retained_bytes, 7);
    }
}
