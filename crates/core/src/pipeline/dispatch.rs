//! The dispatcher: starts pending events on the engine, at most `max_concurrent_events` at a
//! time, in memory that stays flat however large the backlog.
//!
//! The inbox in the state database is the queue. The dispatcher holds only a window of the
//! oldest pending ids (at most [`WINDOW_PER_EVENT_SLOT`] per concurrent event), refilled from
//! the database when it runs low, and one task per event running now. Ids sent through
//! [`AcceptedTx`] are hints that save a rescan: a hint that finds the window full is dropped and
//! marks the window stale, and the next refill finds the event in the inbox.
//!
//! Events without data are not started one by one: with `[events] streams = "grouped"` (read
//! at start) the window leaves them to the group writer (`pipeline::group`), which runs beside
//! the event tasks, plans them in bulk and writes many per batch. A hint wakes it as well; the
//! hint of an event with rows (a legacy notification, a Platform topic of `plan::ROW_TOPICS`)
//! is queued at once, the others send the window to the inbox, whose refills are spaced.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::config::EventStreams;

use crate::health::{HEARTBEAT_INTERVAL, Health};
use crate::pipeline::engine::{EngineSlot, current};
use crate::pipeline::group;
use crate::pipeline::plan::{self, ROW_TOPICS};
use crate::state::StateDb;

/// How often the dispatcher looks for pending events it was not told about: events an operator
/// set back to pending (`flatsync replay`, `dead-letter retry`), events whose processing was
/// interrupted by a state database error, and events whose hint was dropped.
const RESCAN_INTERVAL: Duration = Duration::from_secs(2);

/// Pause before reading the inbox again after a read failed, so a broken database is not
/// hammered from the loop.
const REFILL_BACKOFF: Duration = Duration::from_secs(1);

/// Pending ids held in memory per concurrent event slot: enough that a finished event is
/// replaced without waiting for the database, few enough that a million-event backlog costs
/// nothing.
const WINDOW_PER_EVENT_SLOT: usize = 4;

/// Least time between two refills while event rows are grouped (see `Window::refill_gap`).
const GROUPED_REFILL_GAP: Duration = Duration::from_millis(5);

/// While event rows are grouped, a refill is followed by a pause this many times as long as it
/// took (at least [`GROUPED_REFILL_GAP`]): with a large backlog of event rows to read past,
/// refills take at most a tenth of the time; without one, an event starts within milliseconds.
const GROUPED_REFILL_PAUSE_FACTOR: u32 = 10;

/// Pending events a refill reads at most while event rows are grouped: it walks the inbox a
/// page at a time from where the last refill stopped (see `Window::walk`), so a backlog of a
/// million event rows costs each refill a page, not a pass over the backlog (1.3 s).
const REFILL_WALK_PAGE: usize = 4096;

/// Ids the [`AcceptedTx`] channel holds at most.
const ACCEPTED_HINTS: usize = 1024;

/// Test hook: while the file this variable names exists, the dispatcher loop and the group
/// writer stop turning, as a wedged main loop would, so a test can see the systemd watchdog
/// pings stop (or pile up a backlog of event rows).
pub const STALL_FILE_ENV: &str = "FLATSYNC_TEST_STALL_FILE";

/// Events just committed to the inbox, for the dispatcher to start them at once.
///
/// Bounded, and only a hint: when the dispatcher is behind and the channel is full, the hint is
/// dropped. Nothing is lost, since the event is already committed and the dispatcher rescans
/// the inbox every [`RESCAN_INTERVAL`]; memory stays flat however fast events arrive.
#[derive(Clone, Debug)]
pub(crate) struct AcceptedTx(mpsc::Sender<Accepted>);

/// An event just committed to the inbox.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub(crate) event_id: String,
    /// Whether it is certainly the per-event engine's ([`plan::is_event_row`] says no): with
    /// event rows grouped, such a hint starts the event at once instead of sending the window
    /// to the inbox, whose refills are spaced ([`GROUPED_REFILL_GAP`]).
    pub(crate) per_event: bool,
}

impl Accepted {
    /// The hint of a committed event of `kind` and `topic`.
    pub(crate) fn of(event_id: String, kind: &str, topic: &str) -> Accepted {
        Accepted {
            event_id,
            per_event: !plan::is_event_row(kind, topic),
        }
    }
}

impl AcceptedTx {
    /// A new channel; the receiver goes to [`dispatch`].
    pub(crate) fn channel() -> (AcceptedTx, mpsc::Receiver<Accepted>) {
        let (tx, rx) = mpsc::channel(ACCEPTED_HINTS);
        (AcceptedTx(tx), rx)
    }

    /// Tells the dispatcher about a committed event of `kind` and `topic`, if it has room to
    /// hear it (see above); a closed channel (the daemon stopping) loses nothing either.
    pub(crate) fn notify(&self, event_id: String, kind: &str, topic: &str) {
        self.send(Accepted::of(event_id, kind, topic));
    }

    /// Tells the dispatcher about a committed event whose kind and topic are not at hand (an
    /// upload its last part completed).
    pub(crate) fn notify_unknown(&self, event_id: String) {
        self.send(Accepted {
            event_id,
            per_event: false,
        });
    }

    /// Sends a hint made by the caller.
    pub(crate) fn send(&self, accepted: Accepted) {
        if let Err(mpsc::error::TrySendError::Full(hint)) = self.0.try_send(accepted) {
            tracing::debug!(event_id = %hint.event_id, "Dispatcher busy; the event starts at the next rescan");
        }
    }
}

/// How a stop ended for the events being processed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Events still being processed when the drain began.
    pub in_flight: usize,
    /// Events cut by the deadline instead of pausing at a checkpoint on their own. They resume
    /// from their last checkpoint like the others; sinks skip the batches they already hold.
    pub cut_at_deadline: usize,
}

/// The pending ids the dispatcher knows of: the window waiting for a slot, and the running.
#[derive(Debug)]
struct Window {
    capacity: usize,
    waiting: VecDeque<String>,
    /// Every id in `waiting`, running or in `elsewhere`, so an id is never queued or started
    /// twice.
    known: HashSet<String>,
    /// Ids another daemon on a shared state is working on: left alone until the next rescan.
    elsewhere: Vec<String>,
    running: HashMap<tokio::task::Id, String>,
    /// The inbox may hold pending events that are not in `waiting`.
    stale: bool,
    refill_not_before: Instant,
    /// The event rows left to the group writer are those of these topics' complement; `None`:
    /// event rows are not grouped (only events with group members are left to the writer).
    row_topics: Option<&'static [&'static str]>,
    /// Least time between two refills: with event rows grouped, a refill reads past the event
    /// rows waiting for the group writer, so it is not repeated after every hint (see
    /// [`GROUPED_REFILL_PAUSE_FACTOR`]).
    refill_gap: Duration,
    /// With event rows grouped: the receipt time and id of the last pending event a refill
    /// read, where the next one goes on; `None`: from the oldest.
    walk: Option<(i64, String)>,
    /// Events a page of the walk reads ([`REFILL_WALK_PAGE`]).
    walk_page: usize,
}

impl Window {
    fn new(event_slots: usize, grouped: bool) -> Window {
        Window {
            row_topics: grouped.then_some(&ROW_TOPICS[..]),
            refill_gap: if grouped {
                GROUPED_REFILL_GAP
            } else {
                Duration::ZERO
            },
            capacity: event_slots.max(1) * WINDOW_PER_EVENT_SLOT,
            waiting: VecDeque::new(),
            known: HashSet::new(),
            elsewhere: Vec::new(),
            running: HashMap::new(),
            stale: true,
            refill_not_before: Instant::now(),
            walk: None,
            walk_page: REFILL_WALK_PAGE,
        }
    }

    /// Takes a hint: queued if there is room, else left for the next refill. While event rows
    /// are grouped a hint that may name one (the group writer's) only sends the window to the
    /// inbox, whose refill leaves them out.
    fn hint(&mut self, hint: Accepted) {
        let Accepted {
            event_id: id,
            per_event,
        } = hint;
        if self.row_topics.is_some() && !per_event {
            self.stale = true;
            return;
        }
        if self.known.contains(&id) {
            return;
        }
        if self.waiting.len() < self.capacity {
            self.known.insert(id.clone());
            self.waiting.push_back(id);
        } else {
            self.stale = true;
        }
    }

    fn wants_refill(&self) -> bool {
        self.could_refill() && Instant::now() >= self.refill_not_before
    }

    /// A refill is due, now or once `refill_not_before` has passed.
    fn could_refill(&self) -> bool {
        self.stale && self.waiting.len() <= self.capacity / 2
    }

    /// Tops the window up with the oldest pending events it does not hold yet; with event rows
    /// grouped, with those of the next page of the walk.
    async fn refill(&mut self, state: &StateDb) {
        let started = Instant::now();
        let read = match self.row_topics {
            Some(row_topics) => self.refill_walking(state, row_topics).await,
            None => self.refill_oldest(state).await,
        };
        match read {
            Ok(()) => {
                let pause = if self.refill_gap.is_zero() {
                    Duration::ZERO
                } else {
                    (started.elapsed() * GROUPED_REFILL_PAUSE_FACTOR).max(self.refill_gap)
                };
                self.refill_not_before = Instant::now() + pause;
            }
            Err(e) => {
                tracing::error!(error = %e, "Could not read pending events");
                self.refill_not_before = Instant::now() + REFILL_BACKOFF;
            }
        }
    }

    async fn refill_oldest(&mut self, state: &StateDb) -> Result<(), crate::state::StateError> {
        let room = self.capacity - self.waiting.len();
        // Asking for `room` more than is known guarantees `room` new ids when that many exist.
        let limit = room + self.known.len();
        let ids = state.pending_events_per_event(None, limit).await?;
        let complete = ids.len() < limit;
        for id in ids {
            if !self.take(id) {
                break;
            }
        }
        self.stale = !complete;
        Ok(())
    }

    /// One page of the walk: the window stays stale until the walk has reached the newest
    /// pending event with room to spare, and the next page starts after the last event taken
    /// or read.
    async fn refill_walking(
        &mut self,
        state: &StateDb,
        row_topics: &'static [&'static str],
    ) -> Result<(), crate::state::StateError> {
        let page = state
            .pending_events_walk(row_topics, self.walk.clone(), self.walk_page)
            .await?;
        let reached_end = page.len() < self.walk_page;
        let mut full = false;
        for event in page {
            if event.per_event && !self.take(event.event_id.clone()) {
                full = true;
                break;
            }
            self.walk = Some((event.received_at_ms, event.event_id));
        }
        if reached_end && !full {
            // A whole pass: the next one starts from the oldest again.
            self.walk = None;
        }
        self.stale = full || !reached_end;
        Ok(())
    }

    /// Queues `id` unless it is known; `false` when the window is full.
    fn take(&mut self, id: String) -> bool {
        if self.waiting.len() >= self.capacity {
            return false;
        }
        if self.known.insert(id.clone()) {
            self.waiting.push_back(id);
        }
        true
    }

    /// The id of a finished task's event, no longer known.
    fn finished(&mut self, task: tokio::task::Id) -> Option<String> {
        let id = self.running.remove(&task)?;
        self.known.remove(&id);
        Some(id)
    }

    /// Another daemon claimed `id`: skipped, and left out of refills until the next rescan.
    fn claimed_elsewhere(&mut self, id: String) {
        self.elsewhere.push(id);
    }

    /// Whether so many ids are claimed elsewhere that starting more waits for the rescan:
    /// the window's memory stays bounded however many daemons share the backlog.
    fn crowded(&self) -> bool {
        self.elsewhere.len() >= self.capacity * WINDOW_PER_EVENT_SLOT
    }

    /// The rescan: the inbox may hold events nobody told the window of, and the events other
    /// daemons held may be free again.
    fn rescan(&mut self) {
        self.stale = true;
        for id in self.elsewhere.drain(..) {
            self.known.remove(&id);
        }
    }
}

/// `true` once `active` is, `false` when `drain` turns true first (or the role task ended
/// without the role: the daemon is stopping).
pub(crate) async fn until_active(
    active: &mut watch::Receiver<bool>,
    drain: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        if *drain.borrow() {
            return false;
        }
        if *active.borrow() {
            return true;
        }
        tokio::select! {
            changed = active.changed() => {
                if changed.is_err() && !*active.borrow() {
                    return false;
                }
            }
            _ = drain.changed() => {}
        }
    }
}

/// Feeds pending events to `Engine::process`, at most `max_concurrent_events` at a time, each
/// event id by one task at a time, oldest first. The loop beats the heartbeat of [`Health`] at
/// least every [`HEARTBEAT_INTERVAL`] after proving the state database answers.
///
/// On a state several daemons share, each event is claimed (`StateDb::claim_event`) before it
/// starts and let go when its task ends, so each runs on one daemon at a time; the group
/// writer runs only while `active` (this daemon holds the active role).
///
/// When `drain` turns true: no new event starts, running events pause at their next batch
/// boundary with a checkpoint, and those still running at `drain_deadline` are dropped.
pub(crate) async fn dispatch(
    slot: EngineSlot,
    mut accepted: mpsc::Receiver<Accepted>,
    mut drain: watch::Receiver<bool>,
    health: Arc<Health>,
    active: watch::Receiver<bool>,
) -> DrainReport {
    // Read once: a reload cannot resize the pool (documented as needing a restart), and the
    // dispatcher must not keep an old engine and its sink instances alive.
    // `[events] streams` too: which events the window leaves to the group writer must not
    // change under events already started.
    let (event_slots, grouped, state) = {
        let engine = current(&slot);
        (
            engine.config.daemon.max_concurrent_events,
            engine.config.events.streams == EventStreams::Grouped,
            engine.state.clone(),
        )
    };
    log_backlog(&state).await;
    let stall_file = std::env::var_os(STALL_FILE_ENV).map(std::path::PathBuf::from);
    let wake_writer = Arc::new(Notify::new());
    let writer = {
        let wakes = group::Wakes::new(&wake_writer, &drain, stall_file.as_ref());
        spawn_group_writer(&slot, wakes, active, &drain, grouped)
    };
    let mut window = Window::new(event_slots, grouped);
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rescan = Instant::now();
    let mut intake_open = true;
    loop {
        if window.wants_refill() {
            window.refill(&state).await;
        }
        start_waiting(&mut window, &mut tasks, &slot, &state, event_slots, grouped).await;
        tokio::select! {
            id = accepted.recv(), if intake_open => match id {
                Some(id) => {
                    window.hint(id);
                    wake_writer.notify_one();
                }
                // No webhook source (or it stopped): keep working on what is running.
                None => intake_open = false,
            },
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                finished(&mut window, &state, joined).await;
            }
            // A refill held back by its pause happens when the pause ends, not at the next tick.
            () = tokio::time::sleep_until(window.refill_not_before.into()), if window.could_refill() => {}
            _ = tick.tick() => {
                while stall_file.as_ref().is_some_and(|f| f.exists()) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                match state.probe().await {
                    Ok(()) => health.beat(),
                    Err(e) => tracing::error!(error = %e, "State database does not answer"),
                }
                if last_rescan.elapsed() >= RESCAN_INTERVAL {
                    last_rescan = Instant::now();
                    window.rescan();
                }
            }
            changed = drain.changed() => {
                if changed.is_err() || *drain.borrow() {
                    break;
                }
            }
        }
    }
    drain_running(&slot, tasks, writer, &state, &health, tick).await
}

/// Starts waiting events while slots are free, each claimed first: an event another daemon
/// on a shared state works on is skipped until the next rescan.
async fn start_waiting(
    window: &mut Window,
    tasks: &mut JoinSet<()>,
    slot: &EngineSlot,
    state: &StateDb,
    event_slots: usize,
    grouped: bool,
) {
    while tasks.len() < event_slots && !window.crowded() {
        let Some(id) = window.waiting.pop_front() else {
            break;
        };
        match state.claim_event(&id).await {
            Ok(true) => {}
            Ok(false) => {
                window.claimed_elsewhere(id);
                continue;
            }
            Err(e) => {
                tracing::error!(event_id = %id, error = %e, "Could not claim the event");
                window.waiting.push_front(id);
                break;
            }
        }
        let engine = Arc::clone(slot);
        let task_id = id.clone();
        let started = tasks.spawn(async move {
            current(&engine).process(&task_id, grouped).await;
        });
        window.running.insert(started.id(), id);
    }
}

/// Forgets a finished event task and lets go of its event's claim.
async fn finished(
    window: &mut Window,
    state: &StateDb,
    joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    let task = match joined {
        Ok((task, ())) => task,
        Err(e) => {
            let id = window.running.get(&e.id()).cloned().unwrap_or_default();
            tracing::error!(event_id = %id, error = %e, "Event task ended abnormally; the event stays pending");
            // Found again by the next rescan, not retried in a hot loop.
            e.id()
        }
    };
    if let Some(id) = window.finished(task)
        && let Err(e) = state.release_event(&id).await
    {
        tracing::warn!(event_id = %id, error = %e, "Could not let go of the event");
    }
}

/// The group writer, once this daemon holds the active role.
fn spawn_group_writer(
    slot: &EngineSlot,
    wakes: group::Wakes,
    mut active: watch::Receiver<bool>,
    drain: &watch::Receiver<bool>,
    grouped: bool,
) -> JoinHandle<()> {
    let (slot, mut drain) = (Arc::clone(slot), drain.clone());
    tokio::spawn(async move {
        if until_active(&mut active, &mut drain).await {
            group::run(slot, wakes, grouped).await;
        }
    })
}

/// Says at start how many events wait, so an operator sees a backlog being resumed.
async fn log_backlog(state: &StateDb) {
    match state
        .count_with_status(crate::state::EventStatus::Pending)
        .await
    {
        Ok(0) => {}
        Ok(pending) => tracing::info!(events = pending, "Resuming pending events"),
        Err(e) => tracing::error!(error = %e, "Could not read pending events"),
    }
}

/// Waits for running events to pause at a checkpoint, up to the drain deadline, then drops
/// what is left.
async fn drain_running(
    slot: &EngineSlot,
    mut tasks: JoinSet<()>,
    mut writer: JoinHandle<()>,
    state: &StateDb,
    health: &Health,
    mut tick: tokio::time::Interval,
) -> DrainReport {
    let in_flight = tasks.len();
    let drain_timeout = current(slot).config.daemon.drain_timeout;
    tracing::info!(
        events = in_flight,
        deadline_secs = drain_timeout.as_secs_f64(),
        "Draining: intake stopped, in-flight events pause at their next checkpoint"
    );
    let deadline = tokio::time::Instant::now() + drain_timeout;
    let mut writer_done = false;
    while !(tasks.is_empty() && writer_done) {
        tokio::select! {
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = &mut writer, if !writer_done => writer_done = true,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tick.tick() => {
                if state.probe().await.is_ok() {
                    health.beat();
                }
            }
        }
    }
    if !writer_done {
        tracing::warn!("Drain deadline reached; cutting the group writer at its last commit");
        // Safe as for the events: a recorded batch is sent again, unchanged, on the next start.
        writer.abort();
    }
    let cut_at_deadline = tasks.len();
    if cut_at_deadline > 0 {
        tracing::warn!(
            events = cut_at_deadline,
            "Drain deadline reached; cutting the remaining events at their last checkpoint"
        );
    }
    // Dropping in-flight work is safe: checkpoints lag what sinks made durable, and sinks skip
    // batches they already hold when the work is resumed.
    tasks.shutdown().await;
    DrainReport {
        in_flight,
        cut_at_deadline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hint of an event certainly the per-event engine's.
    fn per_event(event_id: String) -> Accepted {
        Accepted {
            event_id,
            per_event: true,
        }
    }

    /// A hint of an event that may be an event row.
    fn row_or_not(event_id: &str) -> Accepted {
        Accepted {
            event_id: event_id.to_owned(),
            per_event: false,
        }
    }

    #[test]
    fn with_event_rows_grouped_an_event_with_rows_starts_without_waiting_for_a_refill() {
        // A refill just ran, so the next one waits for its gap; the hint of a job:ready
        // (the engine's) is queued at once, that of a space:created (maybe an event row) is
        // left to the refill.
        let mut window = Window::new(2, true);
        window.stale = false;
        window.refill_not_before = Instant::now() + Duration::from_secs(60);
        let (accepted, mut hints) = AcceptedTx::channel();
        accepted.notify("us_evt_job".to_owned(), "platform", "job:ready");
        accepted.notify("us_evt_space".to_owned(), "platform", "space:created");
        accepted.notify_unknown("us_evt_upload".to_owned());
        while let Ok(hint) = hints.try_recv() {
            window.hint(hint);
        }
        assert_eq!(window.waiting, ["us_evt_job"]);
        assert!(window.stale, "the others are looked for in the inbox");
        assert!(!window.wants_refill(), "once the gap has passed");
    }

    #[test]
    fn a_full_window_drops_hints_and_marks_itself_stale() {
        let mut window = Window::new(1, false);
        window.stale = false;
        for n in 0..WINDOW_PER_EVENT_SLOT {
            window.hint(per_event(format!("e{n}")));
        }
        assert!(!window.stale, "room was left for every hint");
        window.hint(per_event("late".to_owned()));
        assert!(
            window.stale,
            "a dropped hint must send the dispatcher to the inbox"
        );
        assert_eq!(window.waiting.len(), WINDOW_PER_EVENT_SLOT);
        assert!(!window.known.contains("late"));
    }

    #[tokio::test]
    async fn with_event_rows_grouped_the_window_holds_only_the_engines_events() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        for (n, topic) in [
            "space:created",
            "records:created",
            "file:created",
            "job:ready",
        ]
        .into_iter()
        .enumerate()
        {
            db.insert_event(
                format!("e{n}"),
                "platform",
                topic.into(),
                b"{}".to_vec(),
                n as i64,
            )
            .await
            .unwrap();
        }
        let mut window = Window::new(2, true);
        window.stale = false;
        window.hint(row_or_not("e0"));
        assert!(window.waiting.is_empty(), "a hint may name an event row");
        assert!(window.stale, "but sends the window to the inbox");
        window.refill(&db).await;
        assert_eq!(
            window.waiting,
            ["e1", "e3"],
            "rows of their own, and job:ready"
        );
        assert!(!window.wants_refill(), "not again at once");
        let mut ungrouped = Window::new(2, false);
        ungrouped.refill(&db).await;
        assert_eq!(ungrouped.waiting.len(), 4);
    }

    #[tokio::test]
    async fn with_event_rows_grouped_refills_walk_the_backlog_a_page_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        // Ten event rows, the engine's events among them (and one after them all).
        let mut engines = Vec::new();
        for n in 0..13_i64 {
            let topic = if n % 4 == 1 || n == 12 {
                engines.push(format!("e{n:02}"));
                "records:created"
            } else {
                "space:created"
            };
            db.insert_event(
                format!("e{n:02}"),
                "platform",
                topic.into(),
                b"{}".to_vec(),
                n,
            )
            .await
            .unwrap();
        }
        let mut window = Window::new(1, true);
        window.walk_page = 3;
        let mut refills = 0;
        let mut started = Vec::new();
        while window.stale || !window.waiting.is_empty() {
            window.refill(&db).await;
            refills += 1;
            assert!(refills < 20, "the walk ends");
            // Each refill read one page: the window holds what that page had for the engine.
            while let Some(id) = window.waiting.pop_front() {
                db.set_event_status(&id, crate::state::EventStatus::Done, None)
                    .await
                    .unwrap();
                window.known.remove(&id);
                started.push(id);
            }
        }
        assert_eq!(started, engines, "every engine's event once, oldest first");
        assert_eq!(refills, 5, "13 events, 3 a page, the last page short");
        assert_eq!(window.walk, None, "the next pass starts from the oldest");
    }

    #[test]
    fn a_hint_for_a_known_event_is_not_queued_twice() {
        let mut window = Window::new(2, false);
        window.hint(per_event("e1".to_owned()));
        window.hint(per_event("e1".to_owned()));
        assert_eq!(window.waiting, ["e1"]);
    }

    #[tokio::test]
    async fn refills_hold_a_bounded_window_and_reach_every_pending_event() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let total = 100;
        for n in 0..total {
            // Received in order, so "oldest first" is the id order.
            db.insert_event(
                format!("e{n:03}"),
                "platform",
                "t".into(),
                b"{}".to_vec(),
                n,
            )
            .await
            .unwrap();
        }
        let mut window = Window::new(2, false);
        let mut started = Vec::new();
        while window.stale || !window.waiting.is_empty() {
            window.refill(&db).await;
            assert!(window.waiting.len() <= window.capacity);
            // Start one event and finish it, as the loop would with one free slot.
            let Some(id) = window.waiting.pop_front() else {
                break;
            };
            db.set_event_status(&id, crate::state::EventStatus::Done, None)
                .await
                .unwrap();
            window.known.remove(&id);
            started.push(id);
        }
        let expected: Vec<String> = (0..total).map(|n| format!("e{n:03}")).collect();
        assert_eq!(started, expected, "every pending event once, oldest first");
    }
}
