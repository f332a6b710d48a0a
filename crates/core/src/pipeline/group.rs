//! The group writer: rows of events without data (`space:created`, `file:created`, ...) go
//! into streams of many events, one per topic family and time window
//! (`events-<family>-<UTC window start>`, see [`plan::event_group`]), written in batches of up
//! to `[events] batch_events` events: one sink call, one flush and one state transaction for
//! many events, instead of a stream, a file and four transactions per event.
//!
//! It works beside the per-event engine, on the events the dispatcher leaves to it: unplanned
//! pending Platform events whose topic is not one of [`plan::ROW_TOPICS`], planned here in
//! bulk ([`StateDb::plan_grouped`]), and every event with a group member (a `job:ready` the
//! engine found to be an event row, a replay, a dead letter retried). One writer runs, so each
//! group stream has one writer and its batches reach a sink in order. The exactly-once steps
//! (record a batch, write it, flush, commit) are `state::groups`'.
//!
//! A stream is closed, its last batch sent (empty if need be) so folder sinks publish the file,
//! once its window has ended and every event received in the window is planned; the rows a
//! sink holds are durable (flushed, checkpointed) long before that.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flatsync_plugin_host::OwnedBatch;
use tokio::sync::{Notify, watch};

use crate::pipeline::engine::{Engine, EngineSlot, current};
use crate::pipeline::plan::{self, EVENT_FIELDS, EVENTS_KIND, ROW_TOPICS};
use crate::pipeline::route::{RoutedEvent, route_event};
use crate::state::{
    BatchLimits, EventStatus, GroupBatch, GroupPlan, GroupWork, Settled, StateError, StoredEvent,
    now_ms,
};

/// How often an idle writer looks again without being woken: windows end, operators retry.
const IDLE_RESCAN: Duration = Duration::from_secs(1);

/// Pause after the state database failed, so a broken database is not hammered.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Events planned per turn, in batches: enough that every group gets full batches when a
/// backlog drains. They are read a batch at a time, so one batch's bodies are held at once.
const PLAN_BATCHES_PER_TURN: u64 = 8;

/// Bodies of one group's turn, in bytes: no batch is added past this (one always is), so one
/// flush covers less when the events are large. The bodies themselves are read a batch at a
/// time as the batches are written, so a turn holds at most two batches' (`write_group`).
const TURN_BODY_BYTES: usize = 2 << 20;

/// Batches written for one group and sink, then flushed once and committed in one
/// transaction, before the writer turns to the others.
const BATCHES_PER_GROUP_TURN: usize = 8;

/// How long after its window's end a group stream stays open: an event stamped just before
/// the end may be committed to the inbox a moment after it, and should not need a new file.
const CLOSE_GRACE_MS: i64 = 2_000;

/// What the writer waits on between turns.
pub(crate) struct Wakes {
    /// Notified when an event was accepted.
    pub(crate) hint: Arc<Notify>,
    /// Turns true when the daemon stops.
    pub(crate) drain: watch::Receiver<bool>,
    /// The dispatcher's test hook (`FLATSYNC_TEST_STALL_FILE`): no turn while it exists.
    pub(crate) stall_file: Option<PathBuf>,
}

impl Wakes {
    pub(crate) fn new(
        hint: &Arc<Notify>,
        drain: &watch::Receiver<bool>,
        stall_file: Option<&PathBuf>,
    ) -> Wakes {
        Wakes {
            hint: Arc::clone(hint),
            drain: drain.clone(),
            stall_file: stall_file.cloned(),
        }
    }
}

/// Runs the group writer until `drain` turns true; it stops at a batch boundary, after the
/// batch in hand is committed. `plan_unplanned`: this daemon groups event rows (`[events]
/// streams = "grouped"` at its start), so the writer plans the events the dispatcher leaves
/// to it; either way it finishes the events that have group members.
pub(crate) async fn run(slot: EngineSlot, mut wakes: Wakes, plan_unplanned: bool) {
    loop {
        if *wakes.drain.borrow() {
            return;
        }
        while wakes.stall_file.as_ref().is_some_and(|f| f.exists()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let engine = current(&slot);
        let pause = match turn(&engine, plan_unplanned).await {
            Ok(true) => continue,
            Ok(false) => IDLE_RESCAN,
            Err(e) => {
                tracing::error!(error = %e, "Group writer interrupted; it tries again");
                ERROR_BACKOFF
            }
        };
        drop(engine);
        tokio::select! {
            () = wakes.hint.notified() => {}
            () = tokio::time::sleep(pause) => {}
            _ = wakes.drain.changed() => {}
        }
    }
}

/// One turn: plan waiting events, then write every group with work. Whether anything moved.
async fn turn(engine: &Arc<Engine>, plan_unplanned: bool) -> Result<bool, StateError> {
    let ended_before = now_ms() - CLOSE_GRACE_MS;
    let (planned, planned_before) = if plan_unplanned {
        plan_waiting(engine).await?
    } else {
        (0, i64::MAX)
    };
    let work = engine.state.group_work(ended_before).await?;
    let mut written = 0;
    for group in &work {
        if engine.health.is_draining() {
            break;
        }
        // Every event received before the window's end is planned: nothing more will join it.
        let close = group.window_end_ms <= ended_before.min(planned_before);
        written += write_group(engine, group, close).await?;
    }
    Ok(planned > 0 || written > 0)
}

/// Plans the oldest unplanned event rows: routes each, and records the routed ones' deliveries
/// and groups and the others' final status in one transaction. Returns how many were planned
/// and the receipt time before which every event row is planned.
async fn plan_waiting(engine: &Engine) -> Result<(usize, i64), StateError> {
    let page = usize::try_from(engine.config.events.batch_events.max(1)).unwrap_or(usize::MAX);
    let mut plans = Vec::new();
    let mut settled = Vec::new();
    let mut count = 0;
    let mut after = None;
    let mut planned_before = i64::MAX;
    for _ in 0..PLAN_BATCHES_PER_TURN {
        let events = engine
            .state
            .unplanned_event_rows_after(&ROW_TOPICS, after.take(), page)
            .await?;
        count += events.len();
        if plans.capacity() == 0 && events.len() >= page {
            // A full page is likely the first of a backlog's turn: room for the whole turn at
            // once, rather than growing into it by copies.
            plans.reserve(events.len().saturating_mul(PLAN_BATCHES_PER_TURN as usize));
        }
        route_page(engine, &events, &mut plans, &mut settled);
        match events.last() {
            // More may wait: every event row received before the last one read is planned.
            Some(last) if events.len() >= page => {
                planned_before = last.received_at_ms;
                after = Some((last.received_at_ms, last.event_id.clone()));
            }
            _ => {
                planned_before = i64::MAX;
                break;
            }
        }
    }
    if count == 0 {
        return Ok((0, planned_before));
    }
    tracing::debug!(
        events = count,
        grouped = plans.len(),
        "Event rows planned into groups"
    );
    engine.state.plan_grouped(plans, settled).await?;
    Ok((count, planned_before))
}

/// Routes a page of event rows: a plan for each routed one, the final status of the others.
fn route_page(
    engine: &Engine,
    events: &[StoredEvent],
    plans: &mut Vec<GroupPlan>,
    settled: &mut Vec<Settled>,
) {
    let config = &engine.config;
    for event in events {
        match route(engine, event) {
            Ok(sinks) => {
                let group = plan::event_group(
                    &event.topic,
                    event.received_at_ms,
                    config.events.group_window,
                );
                // Events of a backlog come in runs of the same sinks and group: a plan shares
                // the one before's where they agree, so a turn holds one copy of each.
                let last = plans.last();
                let sinks = match last {
                    Some(last) if *last.sinks == *sinks => Arc::clone(&last.sinks),
                    _ => Arc::from(sinks),
                };
                let group_name = match last {
                    Some(last) if *last.group == *group.name => Arc::clone(&last.group),
                    _ => Arc::from(group.name),
                };
                plans.push(GroupPlan {
                    event_id: event.event_id.clone(),
                    sinks,
                    group: group_name,
                    window_end_ms: group.window_end_ms,
                });
            }
            Err((status, detail)) => {
                tracing::info!(event_id = %event.event_id, topic = %event.topic, status = %status, detail = %detail, "Event settled without delivery");
                settled.push(Settled {
                    event_id: event.event_id.clone(),
                    status,
                    detail: Some(detail),
                });
            }
        }
    }
}

/// The sinks an event row goes to, or the status it settles with and why. The body was parsed
/// as a Platform event when it was accepted; read once more here as plain JSON for the route.
fn route(engine: &Engine, event: &StoredEvent) -> Result<Vec<String>, (EventStatus, String)> {
    let body: serde_json::Value = serde_json::from_slice(&event.body).map_err(|e| {
        (
            EventStatus::Failed,
            format!("stored body no longer parses: {e}"),
        )
    })?;
    if !body.is_object() {
        return Err((
            EventStatus::Failed,
            "stored as a Platform event, but its body is not one".to_owned(),
        ));
    }
    let environment = body
        .pointer("/context/environmentId")
        .and_then(serde_json::Value::as_str)
        .and_then(|id| engine.config.environment_named_by_id(id));
    let routed = route_event(
        &engine.config.routes,
        RoutedEvent {
            topic: &event.topic,
            environment,
            body: &body,
        },
    );
    if routed.is_empty() {
        return Err((
            EventStatus::Unrouted,
            format!(
                "no route matches topic `{}`{}",
                event.topic,
                environment.map_or(String::new(), |e| format!(" in environment `{e}`"))
            ),
        ));
    }
    let mut sinks: Vec<String> = routed.into_iter().map(|r| r.sink).collect();
    sinks.sort_unstable();
    sinks.dedup();
    Ok(sinks)
}

/// Writes the batches `group` has for its sink, up to [`BATCHES_PER_GROUP_TURN`]. They are
/// recorded before any is written, flushed once, and committed together after the flush; a
/// failure makes the waiting members dead letters. Returns the rows made durable.
async fn write_group(engine: &Engine, group: &GroupWork, close: bool) -> Result<u64, StateError> {
    let Some(worker) = engine.sinks.get(&group.sink) else {
        let error = format!("sink `{}` is not configured any more", group.sink);
        engine
            .state
            .fail_group(&group.group, &group.sink, error)
            .await?;
        return Ok(0);
    };
    let limits = BatchLimits {
        batch_events: engine.config.events.batch_events,
        max_events: engine.config.events.group_max_events,
        close,
    };
    if engine.health.is_draining() {
        return Ok(0);
    }
    let batches = engine
        .state
        .next_group_batches(
            &group.group,
            &group.sink,
            limits,
            BATCHES_PER_GROUP_TURN,
            TURN_BODY_BYTES,
        )
        .await?;
    if batches.is_empty() {
        return Ok(0);
    }
    // One flush, and one commit, for all of them: the sink makes them durable together.
    let rows: u64 = batches.iter().map(|b| b.rows.len() as u64).sum();
    let mut result = Ok(());
    // The bodies are read a batch at a time, the next batch's while the sink writes this one,
    // so the turn holds at most two batches' bytes and the state reads overlap the writes.
    let mut bodies = engine.state.group_batch_bodies(&batches[0]).await?;
    for (index, batch) in batches.iter().enumerate() {
        let write = worker.write_batch(owned_batch(batch, &std::mem::take(&mut bodies)));
        (result, bodies) = match batches.get(index + 1) {
            Some(next) => {
                match tokio::join!(write, engine.state.group_batch_bodies(next)) {
                    (Ok(()), read) => (Ok(()), read?),
                    // The sink's failure is the one to act on; the next batch is not sent.
                    (Err(e), _) => (Err(e), Vec::new()),
                }
            }
            None => (write.await, Vec::new()),
        };
        crate::metrics::sink_call(&group.sink, result.as_ref().map(|_| ()));
        if let Err(e) = &result {
            tracing::error!(sink = %group.sink, stream = %batch.stream, seq = batch.seq, error = %e, "Sink failed");
            break;
        }
    }
    if result.is_ok() {
        result = worker.flush().await;
        crate::metrics::sink_call(&group.sink, result.as_ref().map(|_| ()));
    }
    if let Err(e) = result {
        crate::metrics::rows_failed(&group.sink, rows);
        let failed = engine
            .state
            .fail_group(&group.group, &group.sink, e.to_string())
            .await?;
        tracing::error!(sink = %group.sink, group = %group.group, events = failed, error = %e, "Grouped events failed");
        return Ok(0);
    }
    engine.state.commit_group_batches(&batches).await?;
    crate::metrics::rows_delivered(&group.sink, EVENTS_KIND, rows);
    tracing::debug!(sink = %group.sink, group = %group.group, batches = batches.len(), rows, "Group batches delivered");
    Ok(rows)
}

/// A recorded group batch, with its members' `bodies`, as handed to the sinks: the same bytes
/// every time it is sent.
fn owned_batch(batch: &GroupBatch, bodies: &[Vec<u8>]) -> Arc<OwnedBatch> {
    let mut ndjson = Vec::with_capacity(batch.rows.len() * 512);
    for (row, body) in batch.rows.iter().zip(bodies) {
        ndjson.extend_from_slice(&plan::event_row(&row.event_id, &row.topic, body));
    }
    Arc::new(OwnedBatch {
        stream: batch.stream.clone(),
        kind: EVENTS_KIND.to_owned(),
        // Each row is an event and carries its id; the batch is the stream's.
        event_id: batch.stream.clone(),
        fields_json: serde_json::to_string(&EVENT_FIELDS).unwrap_or_else(|_| "[]".to_owned()),
        seq: batch.seq,
        row_count: batch.rows.len() as u64,
        ndjson: Bytes::from(ndjson),
        received_at_ms: batch
            .rows
            .last()
            .map_or(batch.window_end_ms, |r| r.received_at_ms),
        last: batch.last,
        deletions: false,
    })
}
