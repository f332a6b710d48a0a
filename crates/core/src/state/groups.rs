//! Rows of events without data, grouped into streams of many events (`pipeline::group`).
//!
//! Sinks are exactly-once by (stream, batch seq), so a group batch must hold the same events
//! whenever it is written again. The order of things, each step one transaction:
//! 1. [`StateDb::plan_grouped`]: an event's deliveries and one `group_members` row per sink, in
//!    the group (topic family and window) it belongs to, without a batch yet;
//! 2. [`StateDb::next_group_batch`]: the members of batch `seq` of a group stream are recorded
//!    (`stream`, `seq`, `position`, never changed after) before the batch goes to the sink; a
//!    recorded batch not yet durable is handed out again, unchanged, before any later one;
//! 3. after the sink's flush, [`StateDb::commit_group_batch`] advances the stream's checkpoint
//!    (`group_streams.next_seq`), marks the members' deliveries done and settles their events.
//!
//! A sink failure ([`StateDb::fail_group`]) leaves the recorded batch as it is and makes the
//! waiting members dead letters; retrying them sends that same batch first.

use rusqlite::{OptionalExtension, Transaction, params};

use super::{DeliveryStatus, EventStatus, StateDb, StateError, StoredEvent, inbox, now_ms};

/// How long the closing of a stream waits after its sink failed.
const CLOSE_RETRY_MS: i64 = 30_000;

/// An event whose row goes to group streams: the sinks it is routed to and its group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupPlan {
    /// The event.
    pub(crate) event_id: String,
    /// The sinks it is routed to.
    pub(crate) sinks: Vec<String>,
    /// The group: the name of its first stream.
    pub(crate) group: String,
    /// When the group's window ends, ms since the Unix epoch.
    pub(crate) window_end_ms: i64,
}

/// An event settled while planning, without delivery (unrouted, a body that no longer parses).
#[derive(Clone, Debug)]
pub(crate) struct Settled {
    pub(crate) event_id: String,
    pub(crate) status: EventStatus,
    pub(crate) detail: Option<String>,
}

/// A group a sink has work in: members waiting, or a stream whose window ended to close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupWork {
    pub(crate) group: String,
    pub(crate) sink: String,
    pub(crate) window_end_ms: i64,
}

/// What a new batch may take.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchLimits {
    /// Most events in the batch.
    pub(crate) batch_events: u64,
    /// Most events in one stream.
    pub(crate) max_events: u64,
    /// The window has ended and every event received in it is planned: the stream may close.
    pub(crate) close: bool,
}

/// One event's row in a batch.
#[derive(Clone, Debug)]
pub(crate) struct GroupRow {
    pub(crate) event: StoredEvent,
    pub(crate) generation: u32,
}

/// A recorded batch of a group stream for one sink.
#[derive(Clone, Debug)]
pub(crate) struct GroupBatch {
    pub(crate) stream: String,
    pub(crate) sink: String,
    pub(crate) seq: u64,
    /// The stream's closing batch.
    pub(crate) last: bool,
    pub(crate) window_end_ms: i64,
    /// In batch order.
    pub(crate) rows: Vec<GroupRow>,
}

/// A sink's position in a group stream.
struct StreamRow {
    stream: String,
    part: i64,
    next_seq: i64,
    formed_seq: i64,
    events: i64,
    last_seq: Option<i64>,
    window_end_ms: i64,
}

const STREAM_COLUMNS: &str =
    "stream, part, next_seq, formed_seq, events, last_seq, window_end_ms FROM group_streams";

fn stream_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StreamRow> {
    Ok(StreamRow {
        stream: r.get(0)?,
        part: r.get(1)?,
        next_seq: r.get(2)?,
        formed_seq: r.get(3)?,
        events: r.get(4)?,
        last_seq: r.get(5)?,
        window_end_ms: r.get(6)?,
    })
}

impl StateDb {
    /// The oldest pending events without data that nothing planned yet: Platform events whose
    /// topic is not one of `row_topics` (the topics whose rows come from elsewhere).
    pub(crate) async fn unplanned_event_rows(
        &self,
        row_topics: &[&str],
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StateError> {
        let topics = serde_json::Value::from(row_topics.to_vec()).to_string();
        let limit = i64::try_from(limit).unwrap_or(-1);
        self.call_rusqlite(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT event_id, kind, topic, body, received_at_ms, status, detail FROM inbox
                 WHERE status = ?1 AND kind = 'platform'
                   AND topic NOT IN (SELECT value FROM json_each(?2))
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = inbox.event_id)
                 ORDER BY received_at_ms, event_id LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![EventStatus::Pending, topics, limit],
                super::inbox::rusqlite_era::stored_event,
            )?;
            rows.collect()
        })
        .await
    }

    /// The `limit` oldest pending events the per-event engine works on: every pending event but
    /// those a group writer owns (members of a group, and, when `row_topics` is given, the
    /// unplanned events [`StateDb::unplanned_event_rows`] finds).
    pub(crate) async fn pending_events_per_event(
        &self,
        row_topics: Option<&[&str]>,
        limit: usize,
    ) -> Result<Vec<String>, StateError> {
        let topics = row_topics.map(|t| serde_json::Value::from(t.to_vec()).to_string());
        let limit = i64::try_from(limit).unwrap_or(-1);
        self.call_rusqlite(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT event_id FROM inbox WHERE status = ?1
                   AND NOT EXISTS (SELECT 1 FROM group_members m WHERE m.event_id = inbox.event_id)
                   AND NOT (?2 IS NOT NULL AND kind = 'platform'
                        AND topic NOT IN (SELECT value FROM json_each(?2))
                        AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = inbox.event_id))
                 ORDER BY received_at_ms, event_id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![EventStatus::Pending, topics, limit], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    /// Records, in one transaction, the deliveries and group membership of `plans` and the
    /// final status of `settled`.
    pub(crate) async fn plan_grouped(
        &self,
        plans: Vec<GroupPlan>,
        settled: Vec<Settled>,
    ) -> Result<(), StateError> {
        self.call_rusqlite(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            for s in &settled {
                inbox::rusqlite_era::set_status(&tx, &s.event_id, s.status, s.detail.as_deref(), now)?;
            }
            for plan in &plans {
                let planned: bool = tx
                    .prepare_cached("SELECT EXISTS(SELECT 1 FROM deliveries WHERE event_id = ?1)")?
                    .query_row([&plan.event_id], |r| r.get(0))?;
                if planned {
                    // Planned by the engine meanwhile (told of the event before this daemon
                    // grouped event rows): that plan stands.
                    continue;
                }
                for sink in &plan.sinks {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO deliveries (event_id, sink, status, updated_at_ms)
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![plan.event_id, sink, DeliveryStatus::Pending, now])?;
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO group_members
                         (event_id, sink, generation, grp, window_end_ms) VALUES (?1, ?2, 0, ?3, ?4)",
                    )?
                    .execute(params![plan.event_id, sink, plan.group, plan.window_end_ms])?;
                }
            }
            tx.commit()
        })
        .await
    }

    /// Whether the event's row goes to group streams (the group writer's, not the engine's).
    pub(crate) async fn is_grouped(&self, event_id: &str) -> Result<bool, StateError> {
        let id = event_id.to_owned();
        self.call_rusqlite(move |c| {
            c.prepare_cached("SELECT EXISTS(SELECT 1 FROM group_members WHERE event_id = ?1)")?
                .query_row([id], |r| r.get(0))
        })
        .await
    }

    /// The groups with work for a sink: members whose delivery is pending (a replayed or retried
    /// delivery first gets a member of its generation, in its event's group), and streams whose
    /// window ended before `now` that are not closed yet.
    pub(crate) async fn group_work(&self, now: i64) -> Result<Vec<GroupWork>, StateError> {
        self.call_rusqlite(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT OR IGNORE INTO group_members (event_id, sink, generation, grp, window_end_ms)
                 SELECT d.event_id, d.sink, d.generation, g.grp, g.window_end_ms
                 FROM deliveries d JOIN group_members g ON g.event_id = d.event_id
                 WHERE d.status = ?1 AND NOT EXISTS (SELECT 1 FROM group_members m
                     WHERE m.event_id = d.event_id AND m.sink = d.sink
                       AND m.generation = d.generation)
                 GROUP BY d.event_id, d.sink",
                [DeliveryStatus::Pending],
            )?;
            let work = {
                let mut stmt = tx.prepare_cached(
                    "SELECT m.grp, m.sink, MIN(m.window_end_ms) FROM deliveries d
                     JOIN group_members m ON m.event_id = d.event_id AND m.sink = d.sink
                         AND m.generation = d.generation
                     WHERE d.status = ?1 GROUP BY m.grp, m.sink
                     UNION
                     SELECT grp, sink, window_end_ms FROM group_streams
                     WHERE window_end_ms <= ?2 AND retry_at_ms <= ?2
                       AND (last_seq IS NULL OR next_seq <= last_seq)
                     ORDER BY 3, 1, 2",
                )?;
                let rows = stmt.query_map(params![DeliveryStatus::Pending, now], |r| {
                    Ok(GroupWork {
                        group: r.get(0)?,
                        sink: r.get(1)?,
                        window_end_ms: r.get(2)?,
                    })
                })?;
                let mut work: Vec<GroupWork> = rows.collect::<rusqlite::Result<_>>()?;
                work.dedup_by(|a, b| a.group == b.group && a.sink == b.sink);
                work
            };
            tx.commit()?;
            Ok(work)
        })
        .await
    }

    /// The next batch of `group` for `sink`: the oldest recorded batch not yet durable, sent
    /// again unchanged; else a new batch of waiting members, recorded before it is returned;
    /// else, when `limits.close` says so, an empty closing batch. `None` when there is nothing
    /// to send.
    #[cfg(test)]
    pub(crate) async fn next_group_batch(
        &self,
        group: &str,
        sink: &str,
        limits: BatchLimits,
    ) -> Result<Option<GroupBatch>, StateError> {
        Ok(self.next_group_batches(group, sink, limits, 1).await?.pop())
    }

    /// Up to `count` next batches of `group` for `sink`, in the order they go to the sink: the
    /// recorded batches not yet durable first, unchanged, then new ones, each recorded (in this
    /// one transaction) before any is returned.
    pub(crate) async fn next_group_batches(
        &self,
        group: &str,
        sink: &str,
        limits: BatchLimits,
        count: usize,
    ) -> Result<Vec<GroupBatch>, StateError> {
        let (group, sink) = (group.to_owned(), sink.to_owned());
        self.call_rusqlite(move |c| {
            let tx = c.transaction()?;
            let open: Vec<StreamRow> = {
                let mut stmt = tx.prepare_cached(&format!(
                    "SELECT {STREAM_COLUMNS} WHERE grp = ?1 AND sink = ?2
                     AND formed_seq > next_seq ORDER BY part"
                ))?;
                let rows = stmt.query_map(params![group, sink], stream_row)?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut batches = Vec::new();
            for stream in &open {
                for seq in stream.next_seq..stream.formed_seq {
                    if batches.len() < count {
                        batches.push(recorded_batch(&tx, &sink, stream, seq)?);
                    }
                }
            }
            while batches.len() < count {
                match form_batch(&tx, &group, &sink, limits)? {
                    Some(batch) => batches.push(batch),
                    None => break,
                }
            }
            tx.commit()?;
            Ok(batches)
        })
        .await
    }

    /// After the sink flushed `batch`: see [`StateDb::commit_group_batches`].
    #[cfg(test)]
    pub(crate) async fn commit_group_batch(&self, batch: &GroupBatch) -> Result<(), StateError> {
        self.commit_group_batches(std::slice::from_ref(batch)).await
    }

    /// After the sink flushed `batches`: each one's checkpoint moves past it, its members'
    /// deliveries are done (a dead letter among them too: its row is durable in the sink now;
    /// a dropped one stays dropped) and their events settled, in one transaction.
    pub(crate) async fn commit_group_batches(
        &self,
        batches: &[GroupBatch],
    ) -> Result<(), StateError> {
        let batches: Vec<Flushed> = batches
            .iter()
            .map(|b| Flushed {
                stream: b.stream.clone(),
                sink: b.sink.clone(),
                seq: b.seq as i64,
                members: b
                    .rows
                    .iter()
                    .map(|r| (r.event.event_id.clone(), r.generation))
                    .collect(),
            })
            .collect();
        self.call_rusqlite(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            for batch in &batches {
                commit_batch(&tx, batch, now)?;
            }
            tx.commit()
        })
        .await
    }

    /// After `sink` failed in `group`: every member of the group waiting for it becomes a dead
    /// letter with `error`, its event settled, and the group's streams are not closed for a
    /// while. Recorded batches stay as they are, to be sent again first.
    pub(crate) async fn fail_group(
        &self,
        group: &str,
        sink: &str,
        error: String,
    ) -> Result<usize, StateError> {
        let (group, sink) = (group.to_owned(), sink.to_owned());
        self.call_rusqlite(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            let failed: Vec<String> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT m.event_id FROM group_members m JOIN deliveries d
                       ON d.event_id = m.event_id AND d.sink = m.sink
                      AND d.generation = m.generation
                     WHERE m.grp = ?1 AND m.sink = ?2 AND d.status = ?3",
                )?;
                let rows =
                    stmt.query_map(params![group, sink, DeliveryStatus::Pending], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for event_id in &failed {
                tx.prepare_cached(
                    "UPDATE deliveries SET status = ?3, error = ?4, updated_at_ms = ?5
                     WHERE event_id = ?1 AND sink = ?2",
                )?
                .execute(params![
                    event_id,
                    sink,
                    DeliveryStatus::Failed,
                    error,
                    now
                ])?;
                settle_event(&tx, event_id, now)?;
            }
            tx.execute(
                "UPDATE group_streams SET retry_at_ms = ?3 WHERE grp = ?1 AND sink = ?2",
                params![group, sink, now + CLOSE_RETRY_MS],
            )?;
            tx.commit()?;
            Ok(failed.len())
        })
        .await
    }
}

/// What committing a flushed batch needs: its place and its members (event, generation).
struct Flushed {
    stream: String,
    sink: String,
    seq: i64,
    members: Vec<(String, u32)>,
}

/// Commits one flushed batch (see [`StateDb::commit_group_batches`]).
fn commit_batch(tx: &Transaction<'_>, batch: &Flushed, now: i64) -> rusqlite::Result<()> {
    let Flushed {
        stream,
        sink,
        seq,
        members,
    } = batch;
    let seq = *seq;
    tx.prepare_cached(
        "UPDATE group_streams SET next_seq = MAX(next_seq, ?3), retry_at_ms = 0
         WHERE stream = ?1 AND sink = ?2",
    )?
    .execute(params![stream, sink, seq + 1])?;
    for (event_id, generation) in members {
        tx.prepare_cached(
            "UPDATE deliveries SET status = ?4, rows = 1, error = NULL, updated_at_ms = ?5
             WHERE event_id = ?1 AND sink = ?2 AND generation = ?3 AND status IN (?6, ?7)",
        )?
        .execute(params![
            event_id,
            sink,
            generation,
            DeliveryStatus::Done,
            now,
            DeliveryStatus::Pending,
            DeliveryStatus::Failed
        ])?;
        // The event's own checkpoint in the group stream, so that status counts and
        // `events show` read grouped rows as they read every other row.
        tx.prepare_cached(
            "INSERT INTO checkpoints (event_id, sink, stream, next_seq, complete, rows)
             VALUES (?1, ?2, ?3, ?4, 1, 1)
             ON CONFLICT (event_id, sink, stream) DO UPDATE SET
               next_seq = MAX(next_seq, excluded.next_seq), complete = 1, rows = 1",
        )?
        .execute(params![event_id, sink, stream, seq + 1])?;
        // Most events go to one sink: done in one statement; the others are settled delivery
        // by delivery.
        let done = tx
            .prepare_cached(
                "UPDATE inbox SET status = ?2, detail = NULL, updated_at_ms = ?3
                 WHERE event_id = ?1 AND NOT EXISTS (SELECT 1 FROM deliveries
                     WHERE event_id = ?1 AND status IN (?4, ?5))",
            )?
            .execute(params![
                event_id,
                EventStatus::Done,
                now,
                DeliveryStatus::Pending,
                DeliveryStatus::Failed
            ])?;
        if done == 0 {
            settle_event(tx, event_id, now)?;
        }
    }
    Ok(())
}

/// Batch `seq` of `stream` for `sink` as recorded.
fn recorded_batch(
    tx: &Transaction<'_>,
    sink: &str,
    stream: &StreamRow,
    seq: i64,
) -> rusqlite::Result<GroupBatch> {
    let mut stmt = tx.prepare_cached(
        "SELECT i.event_id, i.kind, i.topic, i.body, i.received_at_ms, i.status, i.detail,
                m.generation
         FROM group_members m JOIN inbox i ON i.event_id = m.event_id
         WHERE m.stream = ?1 AND m.sink = ?2 AND m.seq = ?3 ORDER BY m.position",
    )?;
    let rows = stmt.query_map(params![stream.stream, sink, seq], |r| {
        Ok(GroupRow {
            event: StoredEvent {
                event_id: r.get(0)?,
                kind: r.get(1)?,
                topic: r.get(2)?,
                body: r.get(3)?,
                received_at_ms: r.get(4)?,
                status: r.get(5)?,
                detail: r.get(6)?,
            },
            generation: r.get(7)?,
        })
    })?;
    Ok(GroupBatch {
        stream: stream.stream.clone(),
        sink: sink.to_owned(),
        seq: seq as u64,
        last: stream.last_seq == Some(seq),
        window_end_ms: stream.window_end_ms,
        rows: rows.collect::<rusqlite::Result<_>>()?,
    })
}

/// Records a new batch of `group` for `sink` from the waiting members, in the stream still
/// open (or a new part of the group when the last one is closed), and returns it.
fn form_batch(
    tx: &Transaction<'_>,
    group: &str,
    sink: &str,
    limits: BatchLimits,
) -> rusqlite::Result<Option<GroupBatch>> {
    let current = tx
        .query_row(
            &format!(
                "SELECT {STREAM_COLUMNS} WHERE grp = ?1 AND sink = ?2 ORDER BY part DESC LIMIT 1"
            ),
            params![group, sink],
            stream_row,
        )
        .optional()?;
    let open = current.as_ref().filter(|s| s.last_seq.is_none());
    let room = match open {
        Some(s) => (limits.max_events as i64 - s.events).max(1),
        None => limits.max_events as i64,
    }
    .min(limits.batch_events as i64);
    let waiting = waiting_members(tx, group, sink, room + 1)?;
    if waiting.is_empty() && !(limits.close && open.is_some()) {
        return Ok(None);
    }
    let more = waiting.len() as i64 > room;
    let taken = &waiting[..waiting.len().min(room as usize)];
    let stream = match open {
        Some(s) => StreamRow {
            stream: s.stream.clone(),
            last_seq: None,
            ..*s
        },
        None => {
            let part = current.as_ref().map_or(1, |s| s.part + 1);
            let window_end_ms = taken.first().map_or(0, |t| t.2);
            new_part(tx, group, sink, part, window_end_ms)?
        }
    };
    let seq = stream.formed_seq;
    let events = stream.events + taken.len() as i64;
    let last = events >= limits.max_events as i64 || (limits.close && !more);
    for (position, (event_id, generation, _)) in taken.iter().enumerate() {
        tx.prepare_cached(
            "UPDATE group_members SET stream = ?4, seq = ?5, position = ?6
             WHERE event_id = ?1 AND sink = ?2 AND generation = ?3 AND seq IS NULL",
        )?
        .execute(params![
            event_id,
            sink,
            generation,
            stream.stream,
            seq,
            position as i64
        ])?;
    }
    tx.execute(
        "UPDATE group_streams SET formed_seq = ?3, events = ?4, last_seq = ?5
         WHERE stream = ?1 AND sink = ?2",
        params![stream.stream, sink, seq + 1, events, last.then_some(seq)],
    )?;
    let recorded = StreamRow {
        last_seq: last.then_some(seq),
        ..stream
    };
    recorded_batch(tx, sink, &recorded, seq).map(Some)
}

/// Up to `limit` members of `group` waiting for `sink` (pending, in no batch yet), oldest
/// first: event, generation, window end.
fn waiting_members(
    tx: &Transaction<'_>,
    group: &str,
    sink: &str,
    limit: i64,
) -> rusqlite::Result<Vec<(String, u32, i64)>> {
    let mut stmt = tx.prepare_cached(
        "SELECT m.event_id, m.generation, m.window_end_ms FROM group_members m
         JOIN deliveries d ON d.event_id = m.event_id AND d.sink = m.sink
            AND d.generation = m.generation
         WHERE m.grp = ?1 AND m.sink = ?2 AND m.seq IS NULL AND d.status = ?3
         ORDER BY m.rowid LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![group, sink, DeliveryStatus::Pending, limit], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    rows.collect()
}

/// Opens part `part` of `group` for `sink`: the group's name for the first, `<group>-<part>`
/// after.
fn new_part(
    tx: &Transaction<'_>,
    group: &str,
    sink: &str,
    part: i64,
    window_end_ms: i64,
) -> rusqlite::Result<StreamRow> {
    let stream = if part == 1 {
        group.to_owned()
    } else {
        format!("{group}-{part}")
    };
    tx.execute(
        "INSERT INTO group_streams (stream, sink, grp, part, window_end_ms, next_seq,
             formed_seq, events) VALUES (?1, ?2, ?3, ?4, ?5, 0, 0, 0)",
        params![stream, sink, group, part, window_end_ms],
    )?;
    Ok(StreamRow {
        stream,
        part,
        next_seq: 0,
        formed_seq: 0,
        events: 0,
        last_seq: None,
        window_end_ms,
    })
}

/// Settles a grouped event once none of its deliveries is pending: `failed` naming each failed
/// sink, else `done`.
fn settle_event(tx: &Transaction<'_>, event_id: &str, now: i64) -> rusqlite::Result<()> {
    let deliveries: Vec<(String, DeliveryStatus, Option<String>)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT sink, status, error FROM deliveries WHERE event_id = ?1 ORDER BY sink",
        )?;
        let rows = stmt.query_map([event_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    if deliveries
        .iter()
        .any(|(_, status, _)| *status == DeliveryStatus::Pending)
    {
        return Ok(());
    }
    let failed: Vec<String> = deliveries
        .iter()
        .filter(|(_, status, _)| *status == DeliveryStatus::Failed)
        .map(|(sink, _, error)| format!("sink `{sink}`: {}", error.as_deref().unwrap_or("")))
        .collect();
    if failed.is_empty() {
        inbox::rusqlite_era::set_status(tx, event_id, EventStatus::Done, None, now)
    } else {
        inbox::rusqlite_era::set_status(
            tx,
            event_id,
            EventStatus::Failed,
            Some(&failed.join("; ")),
            now,
        )
    }
}

/// Which batch of which group stream carries an event to a sink, for `events show`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GroupBatchInfo {
    /// Sink name.
    pub sink: String,
    /// The delivery's replay generation.
    pub generation: u32,
    /// The group (topic family and window).
    pub group: String,
    /// The group stream; `None` until the event is put in a batch.
    pub stream: Option<String>,
    /// The batch; `None` until the event is put in one.
    pub seq: Option<u64>,
    /// The event's row within the batch.
    pub position: Option<u64>,
    /// The sink made the batch durable (its checkpoint is past it).
    pub durable: bool,
}

/// The group batches of an event, by sink and generation.
pub(super) fn group_batches(
    db: &mut super::sql::Db,
    event_id: &str,
) -> super::sql::Result<Vec<GroupBatchInfo>> {
    // A member not yet in a batch, or of a stream without a checkpoint, is not durable.
    db.query_map(
        "SELECT m.sink, m.generation, m.grp, m.stream, m.seq, m.position,
                CASE WHEN m.seq < s.next_seq THEN 1 ELSE 0 END
         FROM group_members m LEFT JOIN group_streams s ON s.stream = m.stream AND s.sink = m.sink
         WHERE m.event_id = ?1 ORDER BY m.sink, m.generation",
        super::sql::params![event_id],
        |r| {
            Ok(GroupBatchInfo {
                sink: r.get(0)?,
                generation: r.get(1)?,
                group: r.get(2)?,
                stream: r.get(3)?,
                seq: r.get::<_, Option<i64>>(4)?.map(|n| n.max(0) as u64),
                position: r.get::<_, Option<i64>>(5)?.map(|n| n.max(0) as u64),
                durable: r.get(6)?,
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROW_TOPICS: [&str; 1] = ["records:created"];

    /// `n` pending events `e00`, `e01`, ..., each planned into the group of `plan`.
    async fn db_with_planned_events(dir: &std::path::Path, n: usize) -> StateDb {
        let db = db_with_events(dir, n).await;
        db.plan_grouped(
            (0..n).map(|i| plan(&format!("e{i:02}"))).collect(),
            Vec::new(),
        )
        .await
        .unwrap();
        db
    }

    async fn db_with_events(dir: &std::path::Path, n: usize) -> StateDb {
        let db = StateDb::open(dir).expect("open");
        for i in 0..n {
            db.insert_event(
                format!("e{i:02}"),
                "platform",
                "space:created".into(),
                b"{}".to_vec(),
                i as i64,
            )
            .await
            .unwrap();
        }
        db
    }

    fn plan(event_id: &str) -> GroupPlan {
        GroupPlan {
            event_id: event_id.to_owned(),
            sinks: vec!["s".to_owned()],
            group: "events-space-w".to_owned(),
            window_end_ms: 1000,
        }
    }

    fn ids(batch: &GroupBatch) -> Vec<&str> {
        batch
            .rows
            .iter()
            .map(|r| r.event.event_id.as_str())
            .collect()
    }

    const LIMITS: BatchLimits = BatchLimits {
        batch_events: 2,
        max_events: 100,
        close: false,
    };

    #[tokio::test]
    async fn event_rows_are_left_to_the_group_writer_and_planned_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_events(dir.path(), 3).await;
        db.insert_event(
            "r".into(),
            "platform",
            "records:created".into(),
            b"{}".to_vec(),
            9,
        )
        .await
        .unwrap();
        let per_event = db
            .pending_events_per_event(Some(&ROW_TOPICS), 10)
            .await
            .unwrap();
        assert_eq!(per_event, ["r"], "event rows are the writer's");
        assert_eq!(
            db.pending_events_per_event(None, 10).await.unwrap().len(),
            4,
            "not grouping: every event is the engine's"
        );
        let unplanned = db.unplanned_event_rows(&ROW_TOPICS, 10).await.unwrap();
        assert_eq!(unplanned.len(), 3);
        db.plan_grouped(
            vec![plan("e00"), plan("e01")],
            vec![Settled {
                event_id: "e02".into(),
                status: EventStatus::Unrouted,
                detail: Some("no route".into()),
            }],
        )
        .await
        .unwrap();
        assert!(
            db.unplanned_event_rows(&ROW_TOPICS, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            db.pending_events_per_event(None, 10).await.unwrap(),
            ["r"],
            "a group member stays the writer's whatever the mode"
        );
        assert_eq!(
            db.event("e02").await.unwrap().unwrap().status,
            EventStatus::Unrouted
        );
    }

    #[tokio::test]
    async fn a_batch_is_recorded_before_it_is_sent_and_sent_again_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_planned_events(dir.path(), 5).await;
        let work = db.group_work(0).await.unwrap();
        assert_eq!(work.len(), 1);
        let first = db
            .next_group_batch("events-space-w", "s", LIMITS)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (first.stream.as_str(), first.seq, first.last),
            ("events-space-w", 0, false)
        );
        assert_eq!(ids(&first), ["e00", "e01"]);
        // Not committed (a crash, say): the same batch again, not new members.
        let again = db
            .next_group_batch("events-space-w", "s", LIMITS)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((again.seq, ids(&again)), (0, vec!["e00", "e01"]));
        assert_eq!(
            db.event("e00").await.unwrap().unwrap().status,
            EventStatus::Pending
        );
        db.commit_group_batch(&again).await.unwrap();
        assert_eq!(
            db.event("e00").await.unwrap().unwrap().status,
            EventStatus::Done
        );
        assert_eq!(
            db.deliveries("e01").await.unwrap()[0].status,
            DeliveryStatus::Done
        );
        let second = db
            .next_group_batch("events-space-w", "s", LIMITS)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((second.seq, ids(&second)), (1, vec!["e02", "e03"]));

        // The sink fails: every waiting member is a dead letter, the batch stays recorded.
        assert_eq!(
            db.fail_group("events-space-w", "s", "disk full".into())
                .await
                .unwrap(),
            3
        );
        let failed = db.event("e04").await.unwrap().unwrap();
        assert_eq!(failed.status, EventStatus::Failed);
        assert_eq!(failed.detail.as_deref(), Some("sink `s`: disk full"));
        assert!(db.group_work(0).await.unwrap().is_empty(), "nothing waits");
        assert!(
            db.next_group_batch("events-space-w", "s", LIMITS)
                .await
                .unwrap()
                .is_some_and(|b| b.seq == 1)
        );

        // A retried dead letter: batch 1 first, as recorded, then the retried member of e04.
        db.call_rusqlite(|c| {
            c.execute(
                "UPDATE deliveries SET status = 'pending' WHERE event_id = 'e04'",
                [],
            )
        })
        .await
        .unwrap();
        let closing = BatchLimits {
            close: true,
            ..LIMITS
        };
        let resent = db
            .next_group_batch("events-space-w", "s", closing)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((resent.seq, ids(&resent)), (1, vec!["e02", "e03"]));
        db.commit_group_batch(&resent).await.unwrap();
        assert_eq!(
            db.event("e02").await.unwrap().unwrap().status,
            EventStatus::Done,
            "its row is durable in the sink now"
        );
        let last = db
            .next_group_batch("events-space-w", "s", closing)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((last.seq, ids(&last), last.last), (2, vec!["e04"], true));
        db.commit_group_batch(&last).await.unwrap();
        assert!(
            db.next_group_batch("events-space-w", "s", closing)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            db.group_work(2000).await.unwrap().is_empty(),
            "closed and durable"
        );
    }

    #[tokio::test]
    async fn a_replay_goes_into_a_new_part_once_the_stream_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_events(dir.path(), 1).await;
        db.plan_grouped(vec![plan("e00")], Vec::new())
            .await
            .unwrap();
        // The window is over and nothing waits but e00: it is also the closing batch.
        let closing = BatchLimits {
            close: true,
            ..LIMITS
        };
        let only = db
            .next_group_batch("events-space-w", "s", closing)
            .await
            .unwrap()
            .unwrap();
        assert!(only.last);
        db.commit_group_batch(&only).await.unwrap();
        db.call_rusqlite(|c| {
            c.execute(
                "UPDATE deliveries SET generation = 1, status = 'pending' WHERE event_id = 'e00'",
                [],
            )
        })
        .await
        .unwrap();
        let work = db.group_work(0).await.unwrap();
        assert_eq!(work.len(), 1, "the replay has a member of its generation");
        let replayed = db
            .next_group_batch("events-space-w", "s", closing)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                replayed.stream.as_str(),
                replayed.seq,
                replayed.rows[0].generation
            ),
            ("events-space-w-2", 0, 1)
        );
        db.commit_group_batch(&replayed).await.unwrap();
        assert_eq!(
            db.event("e00").await.unwrap().unwrap().status,
            EventStatus::Done
        );
    }

    #[tokio::test]
    async fn an_ended_window_closes_with_an_empty_batch_and_a_full_stream_continues() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_planned_events(dir.path(), 3).await;
        let small = BatchLimits {
            batch_events: 10,
            max_events: 2,
            close: false,
        };
        let full = db
            .next_group_batch("events-space-w", "s", small)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (ids(&full), full.last),
            (vec!["e00", "e01"], true),
            "full: closed"
        );
        db.commit_group_batch(&full).await.unwrap();
        let next = db
            .next_group_batch("events-space-w", "s", small)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (next.stream.as_str(), ids(&next), next.last),
            ("events-space-w-2", vec!["e02"], false)
        );
        db.commit_group_batch(&next).await.unwrap();
        assert!(
            db.next_group_batch("events-space-w", "s", small)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            db.group_work(999).await.unwrap().len(),
            0,
            "window not over"
        );
        assert_eq!(
            db.group_work(1000).await.unwrap().len(),
            1,
            "window over: close it"
        );
        let close = BatchLimits {
            close: true,
            ..small
        };
        let empty = db
            .next_group_batch("events-space-w", "s", close)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                empty.stream.as_str(),
                empty.seq,
                empty.rows.len(),
                empty.last
            ),
            ("events-space-w-2", 1, 0, true)
        );
        db.commit_group_batch(&empty).await.unwrap();
        assert!(db.group_work(5000).await.unwrap().is_empty());
    }
}
