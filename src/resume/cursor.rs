//! The live/replay seam of one connection: its cursor (where each of its
//! channels stands), kept under the connection's queue lock as the stream's
//! gate, and the three ways an event reaches the queue through it.

use bytes::Bytes;

use super::id::{write_id, Mark, MAX_RESUMABLE_CHANNELS};
use super::RESET_EVENT;
use crate::stream::{FrameSender, SendError};
use crate::wire::Position;

/// A live or replayed event for one connection: which channel, where in it,
/// and the encoded frame without an `id:` line.
#[derive(Debug, Clone)]
pub(crate) struct Stamped {
    pub(crate) key: u32,
    pub(crate) epoch: u32,
    pub(crate) position: Position,
    pub(crate) body: Bytes,
}

/// Per-connection resume state, kept under the connection's queue lock.
///
/// Per channel it keeps two places: the mark (the newest position sent,
/// written into the connection's ids) and the floor (the newest position
/// known to be sent *from the store*: the head at connect, or a replayed
/// entry). Duplicates are judged against the floor, which only the store
/// moves, so a bus message with a forged far-future position cannot make
/// later legitimate events look like duplicates (it is delivered, as any
/// message on the bus is, and at worst its position makes the client's next
/// reconnect a reset).
#[derive(Debug)]
pub(crate) struct Cursor {
    marks: Vec<Mark>,
    /// `(epoch, position)` per channel, in the order of `marks`.
    floors: Vec<(u32, Position)>,
    resumable: bool,
    /// While replaying, live events wait here.
    pub(crate) held: Option<Held>,
}

/// Live events held back during a replay, bounded like the queue.
#[derive(Debug, Default)]
pub(crate) struct Held {
    pub(crate) events: Vec<Stamped>,
    pub(crate) bytes: usize,
    /// Some were not kept: the replay must read the history again.
    pub(crate) overflowed: bool,
}

/// Where an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// Live from the bus: held back while a replay runs.
    Live,
    /// Live, held back during a replay and released now.
    Released,
    /// Read from the store by a replay: moves the floor.
    Store,
}

/// What the cursor made of one event.
pub(crate) enum Admit {
    /// Send this frame.
    Frame(Bytes),
    /// Already sent (or older than what was sent): skip.
    Duplicate,
    /// Held back until the replay finishes.
    Held,
}

impl Cursor {
    /// A cursor over `keys` (canonical order), holding live events back.
    pub(crate) fn new(keys: &[u32]) -> Self {
        let mut distinct = keys.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let resumable = keys.len() <= MAX_RESUMABLE_CHANNELS && distinct.len() == keys.len();
        Self {
            marks: keys
                .iter()
                .map(|&key| Mark {
                    key,
                    epoch: 0,
                    position: Position::ZERO,
                })
                .collect(),
            floors: vec![(0, Position::ZERO); keys.len()],
            resumable,
            held: Some(Held::default()),
        }
    }

    pub(crate) fn marks(&self) -> &[Mark] {
        &self.marks
    }

    /// Where the channel with `key` stands.
    pub(crate) fn position(&self, key: u32) -> Option<Position> {
        self.marks.iter().find(|m| m.key == key).map(|m| m.position)
    }

    /// Sets where a channel stands, mark and floor (at connect, after
    /// reading heads; a position the store vouched for).
    pub(crate) fn set(&mut self, key: u32, epoch: u32, position: Position) {
        if let Some(i) = self.marks.iter().position(|m| m.key == key) {
            self.marks[i].epoch = epoch;
            self.marks[i].position = position;
            self.floors[i] = (epoch, position);
        }
    }

    /// Decides about one event: live ones are held back while a replay
    /// runs; replayed ones go out even then.
    pub(crate) fn admit(&mut self, event: &Stamped, via: Via, max_held: (usize, usize)) -> Admit {
        if event.key == 0 {
            // Not a channel (a reset event): sent with the current id.
            return Admit::Frame(self.frame(&event.body));
        }
        let Some(i) = self.marks.iter().position(|m| m.key == event.key) else {
            // Not a channel of this connection's cursor: deliver as is.
            return Admit::Frame(event.body.clone());
        };
        let mark = self.marks[i];
        let (floor_epoch, floor) = self.floors[i];
        let same_epoch = mark.epoch == event.epoch;
        if (floor_epoch == event.epoch && event.position <= floor)
            || (same_epoch && event.position == mark.position)
        {
            return Admit::Duplicate;
        }
        if via == Via::Live {
            if let Some(held) = &mut self.held {
                if !held.overflowed
                    && held.events.len() < max_held.0 / 2
                    && held.bytes + event.body.len() <= max_held.1 / 2
                {
                    held.bytes += event.body.len();
                    held.events.push(event.clone());
                } else {
                    held.overflowed = true;
                    held.events = Vec::new();
                    held.bytes = 0;
                }
                return Admit::Held;
            }
        }
        // The id never goes back within an epoch: a reconnect resumes after
        // the newest event sent.
        self.marks[i].position = if same_epoch {
            mark.position.max(event.position)
        } else {
            event.position
        };
        self.marks[i].epoch = event.epoch;
        if via == Via::Store {
            self.floors[i] = (event.epoch, event.position);
        }
        Admit::Frame(self.frame(&event.body))
    }

    /// `body` with this cursor's id line in front.
    pub(crate) fn frame(&self, body: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(body.len() + 8 + self.marks.len() * 20);
        out.extend_from_slice(b"id: ");
        write_id(&mut out, self.marks.iter().copied(), self.resumable);
        out.push(b'\n');
        out.extend_from_slice(body);
        if body.is_empty() {
            // An id-only frame: the client's last event id moves, no event fires.
            out.push(b'\n');
        }
        Bytes::from(out)
    }
}

/// The frame of a reset event with `reason`.
pub(crate) fn reset_body(reason: &str) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(RESET_EVENT.as_bytes());
    out.extend_from_slice(b"\ndata: {\"reason\":\"");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\"}\n\n");
    Bytes::from(out)
}

/// Queues a live event of a resumable channel: the connection's cursor
/// skips what it already sent, holds it back during a replay, or gives it
/// the connection's id line. A connection without a cursor gets the body.
/// `Ok(true)` when a frame was queued now (held frames count when
/// [`release`] queues them).
pub(crate) fn send_live(sender: &FrameSender, event: &Stamped) -> Result<bool, SendError> {
    let sent = sender.with_gate(|cursor: &mut Cursor, queue| {
        match cursor.admit(event, Via::Live, queue.limits()) {
            Admit::Frame(frame) => queue.push(frame).map(|()| true),
            Admit::Duplicate | Admit::Held => Ok(false),
        }
    })?;
    match sent {
        Some(result) => result,
        None => sender.send(event.body.clone()).map(|()| true),
    }
}

/// Queues a live event whose epoch is not known yet (see
/// `Resumer::deliver`): a connection whose replay is still to run skips it
/// (the replay reads it from the store); a live one gets it with its current
/// id; one without a cursor gets the body.
pub(crate) fn send_unplaced(sender: &FrameSender, body: &Bytes) -> Result<bool, SendError> {
    let sent = sender.with_gate(|cursor: &mut Cursor, queue| {
        if cursor.held.is_some() {
            return Ok(false);
        }
        queue.push(cursor.frame(body)).map(|()| true)
    })?;
    match sent {
        Some(result) => result,
        None => sender.send(body.clone()).map(|()| true),
    }
}

/// Queues a replayed event, waiting (never dropping) while the queue is
/// full. Fails only when the stream has ended.
pub(crate) async fn send_replayed(sender: &FrameSender, event: &Stamped) -> Result<(), SendError> {
    loop {
        let sent = sender.with_gate(|cursor: &mut Cursor, queue| {
            // Room for the body and a typical id line.
            if !queue.fits(event.body.len() + 64) {
                queue.want_space();
                return false;
            }
            if let Admit::Frame(frame) = cursor.admit(event, Via::Store, queue.limits()) {
                queue.enqueue(frame);
            }
            true
        })?;
        match sent {
            Some(true) => return Ok(()),
            Some(false) => sender.wait_for_space().await,
            // No cursor: replays only run on connections that have one.
            None => return Err(SendError::Closed),
        }
    }
}

/// What [`release`] made of the held-back live events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// Queued (this many held events) and live now.
    Live(u64),
    /// Live events overflowed the hold: they are in the history, so the
    /// replay must read on (live events stay held).
    Reread,
    /// The held events do not fit the queue yet (the replay filled it and
    /// the client has not read it): still held, and the stream asked to be
    /// told when the client reads; try again then.
    NoRoom,
}

/// Ends a replay: queues the held-back live events the replay did not
/// already send, then `last` with the cursor's id (e.g. an empty body for
/// an id-only frame), and goes live. See [`Release`] for when it cannot.
pub(crate) fn release(sender: &FrameSender, last: Option<&[u8]>) -> Result<Release, SendError> {
    let released = sender.with_gate(|cursor: &mut Cursor, queue| {
        let Some(held) = cursor.held.take() else {
            return Release::Live(0);
        };
        if held.overflowed {
            cursor.held = Some(Held::default());
            return Release::Reread;
        }
        // Each frame gets an id line as long as an id-only frame's.
        let frames = held.events.len() + 1;
        let bytes = held.bytes + frames * cursor.frame(b"").len();
        let (room_frames, room_bytes) = queue.room();
        // An empty queue takes them even past its byte bound: the hold is
        // bounded to half the queue, so this always ends, and a client
        // that reads everything cannot be kept waiting.
        if frames > room_frames || (bytes > room_bytes && !queue.is_empty()) {
            cursor.held = Some(held);
            queue.want_space();
            return Release::NoRoom;
        }
        let limits = queue.limits();
        let mut queued = 0;
        for event in &held.events {
            if let Admit::Frame(frame) = cursor.admit(event, Via::Released, limits) {
                queue.enqueue(frame);
                queued += 1;
            }
        }
        if let Some(body) = last {
            queue.enqueue(cursor.frame(body));
        }
        Release::Live(queued)
    })?;
    Ok(released.unwrap_or(Release::Live(0)))
}

/// Gives `sender` a cursor over `keys`, holding live events back until the
/// resume decides where each channel stands.
pub(crate) fn install(sender: &FrameSender, keys: &[u32]) {
    sender.attach_gate(Box::new(Cursor::new(keys)));
}

/// Starts holding live events back (a replay is about to run).
pub(crate) fn hold(sender: &FrameSender) {
    let _ = sender.with_gate(|cursor: &mut Cursor, _| {
        cursor.held.get_or_insert_with(Held::default);
    });
}

/// Runs `f` on the connection's cursor, if it has one and is open.
pub(crate) fn with_cursor<R>(sender: &FrameSender, f: impl FnOnce(&mut Cursor) -> R) -> Option<R> {
    sender
        .with_gate(|cursor: &mut Cursor, _| f(cursor))
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{channel, StreamConfig};
    use futures_util::StreamExt;

    fn ev(key: u32, p: u64) -> Stamped {
        Stamped {
            key,
            epoch: 7,
            position: Position::new(p, 0),
            body: Bytes::from_static(b"data: x\n\n"),
        }
    }

    #[test]
    fn cursor_deduplicates_and_holds() {
        let k = 42;
        let mut c = Cursor::new(&[k]);
        c.set(k, 7, Position::new(5, 0));
        assert!(matches!(
            c.admit(&ev(k, 5), Via::Store, (8, 1024)),
            Admit::Duplicate
        ));
        assert!(matches!(
            c.admit(&ev(k, 7), Via::Live, (8, 1024)),
            Admit::Held
        ));
        let Admit::Frame(f) = c.admit(&ev(k, 6), Via::Store, (8, 1024)) else {
            panic!("replayed events go out while live ones are held")
        };
        assert!(f.starts_with(b"id: r1."), "{f:?}");
        assert!(f.ends_with(b"\ndata: x\n\n"), "{f:?}");
        assert!(matches!(
            c.admit(&ev(k, 6), Via::Released, (8, 1024)),
            Admit::Duplicate
        ));
        // Another epoch: the history was rebuilt while connected.
        let mut other = ev(k, 1);
        other.epoch = 9;
        assert!(matches!(
            c.admit(&other, Via::Store, (8, 1024)),
            Admit::Frame(_)
        ));
    }

    #[test]
    fn a_forged_far_future_position_cannot_silence_a_channel() {
        let k = 42;
        let mut c = Cursor::new(&[k]);
        c.held = None;
        c.set(k, 7, Position::new(5, 0));
        let live = |c: &mut Cursor, p| c.admit(&ev(k, p), Via::Live, (8, 1024));
        assert!(matches!(live(&mut c, 6), Admit::Frame(_)));
        assert!(
            matches!(live(&mut c, 6), Admit::Duplicate),
            "an exact repeat"
        );
        // A forged message far ahead is delivered (the bus is trusted to
        // that extent) and moves the id...
        assert!(matches!(live(&mut c, u64::MAX / 2), Admit::Frame(_)));
        assert_eq!(c.position(k), Some(Position::new(u64::MAX / 2, 0)));
        // ...but the next legitimate events still go out, once each.
        assert!(matches!(live(&mut c, 7), Admit::Frame(_)));
        assert!(matches!(live(&mut c, 8), Admit::Frame(_)));
        // What the store vouched for stays a duplicate.
        assert!(matches!(live(&mut c, 5), Admit::Duplicate));
    }

    /// A cursor placed at a channel without history (tag 0, position 0)
    /// lets the channel's first events through whatever their epoch and
    /// position, then deduplicates in their epoch.
    #[test]
    fn a_cursor_without_an_epoch_admits_the_first_events() {
        let k = 42;
        let mut c = Cursor::new(&[k]);
        c.set(k, 0, Position::ZERO);
        let Admit::Frame(f) = c.admit(&ev(k, 1), Via::Store, (8, 1024)) else {
            panic!("the channel's first event goes out")
        };
        // The id now names the event's epoch (7 is `AAAH`) and position.
        assert!(f.starts_with(b"id: r1.AAAqAAAH1\n"), "{f:?}");
        assert!(matches!(
            c.admit(&ev(k, 1), Via::Store, (8, 1024)),
            Admit::Duplicate
        ));
        // Same with a Redis-like position whose major part is large.
        let mut c = Cursor::new(&[k]);
        c.set(k, 0, Position::ZERO);
        let mut first = ev(k, 1_700_000_000_000);
        first.position = Position::new(1_700_000_000_000, 3);
        assert!(matches!(c.admit(&first, Via::Live, (8, 1024)), Admit::Held));
        assert!(matches!(
            c.admit(&first, Via::Released, (8, 1024)),
            Admit::Frame(_)
        ));
        assert!(matches!(
            c.admit(&first, Via::Released, (8, 1024)),
            Admit::Duplicate
        ));
    }

    #[tokio::test]
    async fn the_seam_holds_live_events_and_releases_them_once() {
        let cfg = StreamConfig::default().keep_alive(None).initial_retry(None);
        let (tx, mut rx) = channel(&cfg);
        let k = 42;
        install(&tx, &[k]);
        with_cursor(&tx, |c| c.set(k, 7, Position::new(1, 0)));
        // Live 3 arrives during the replay: held.
        assert_eq!(send_live(&tx, &ev(k, 3)), Ok(false));
        assert_eq!(tx.queued(), 0);
        // The replay sends 2 and 3.
        send_replayed(&tx, &ev(k, 2)).await.unwrap();
        send_replayed(&tx, &ev(k, 3)).await.unwrap();
        assert_eq!(
            release(&tx, Some(b"")),
            Ok(Release::Live(0)),
            "3 was replayed, not released"
        );
        // Live 4 goes straight out; a late duplicate of 3 does not.
        assert_eq!(send_live(&tx, &ev(k, 3)), Ok(false));
        assert_eq!(send_live(&tx, &ev(k, 4)), Ok(true));
        let mut ids = Vec::new();
        for _ in 0..4 {
            let frame = rx.next().await.unwrap();
            ids.push(String::from_utf8(frame.to_vec()).unwrap());
        }
        assert_eq!(ids.iter().filter(|f| f.contains("data: x")).count(), 3);
        assert!(
            ids[2].ends_with("\n\n") && !ids[2].contains("data"),
            "id-only frame: {ids:?}"
        );
        assert_eq!(tx.queued(), 0);
    }

    #[tokio::test]
    async fn without_a_cursor_live_events_pass_as_they_are() {
        let cfg = StreamConfig::default().keep_alive(None).initial_retry(None);
        let (tx, mut rx) = channel(&cfg);
        assert_eq!(send_live(&tx, &ev(1, 1)), Ok(true));
        assert_eq!(&rx.next().await.unwrap()[..], b"data: x\n\n");
    }
}
