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

use std::sync::Arc;

use super::sql::{self, Backend, Db, OptionalExtension, Row, params};
use super::{DeliveryStatus, EventStatus, StateDb, StateError, StoredEvent, inbox, now_ms};

/// How long the closing of a stream waits after its sink failed.
const CLOSE_RETRY_MS: i64 = 30_000;

/// An event whose row goes to group streams: the sinks it is routed to and its group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupPlan {
    /// The event.
    pub(crate) event_id: String,
    /// The sinks it is routed to. Shared, like `group`, by the plans of a turn that agree: a
    /// backlog's turn plans thousands of events into a few groups.
    pub(crate) sinks: Arc<[String]>,
    /// The group: the name of its first stream.
    pub(crate) group: Arc<str>,
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

/// One event's row in a batch: what its line and its commit need. The body is read when the
/// batch is written ([`StateDb::group_batch_bodies`]), so a turn of several batches holds one
/// batch's bodies at a time.
#[derive(Clone, Debug)]
pub(crate) struct GroupRow {
    pub(crate) event_id: String,
    pub(crate) topic: String,
    pub(crate) received_at_ms: i64,
    /// The body's length in bytes.
    pub(crate) body_len: usize,
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

impl GroupBatch {
    /// The bytes of the bodies it holds.
    pub(crate) fn body_bytes(&self) -> usize {
        self.rows.iter().map(|r| r.body_len).sum()
    }
}

/// A pending event read by [`StateDb::pending_events_walk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WalkedEvent {
    pub(crate) event_id: String,
    pub(crate) received_at_ms: i64,
    /// The per-event engine's, not the group writer's.
    pub(crate) per_event: bool,
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

fn stream_row(r: &Row<'_>) -> sql::Result<StreamRow> {
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

/// A subquery of the texts in the JSON array of strings bound to `?2`: SQLite's `json_each`,
/// PostgreSQL's `jsonb_array_elements_text` (the parameter stays text for both).
fn json_texts_of_param_2(db: &Db) -> &'static str {
    match db.backend() {
        Backend::Sqlite => "SELECT value FROM json_each(?2)",
        Backend::Postgres => "SELECT jsonb_array_elements_text(CAST(CAST(?2 AS TEXT) AS jsonb))",
    }
}

/// The query of [`StateDb::unplanned_event_rows_after`]: status `?1`, row topics `?2`, limit
/// `?3`, and with `after`, the receipt time `?4` and event id `?5` of the last row read.
fn unplanned_page_sql(db: &Db, after: bool) -> String {
    // A keyed walk of `inbox_by_status_time` (status, receipt time, id) on both engines: the
    // page starts in the index right after the last row read and stops after `limit` rows, so
    // it costs its own rows, not a sort of every pending event.
    let after_clause = if after {
        "AND (received_at_ms, event_id) > (?4, ?5)"
    } else {
        ""
    };
    format!(
        "SELECT event_id, kind, topic, body, received_at_ms, status, detail FROM inbox
         WHERE status = ?1 AND kind = 'platform'
           AND topic NOT IN ({}) {after_clause}
           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = inbox.event_id)
         ORDER BY received_at_ms, event_id LIMIT ?3",
        json_texts_of_param_2(db)
    )
}

/// A subquery whose column `value` is the texts of the JSON array of strings bound to
/// `?{param}` (see [`json_texts_of_param_2`]).
fn json_texts(db: &Db, param: u8) -> String {
    match db.backend() {
        Backend::Sqlite => format!("SELECT value FROM json_each(?{param})"),
        Backend::Postgres => format!(
            "SELECT value FROM jsonb_array_elements_text(CAST(CAST(?{param} AS TEXT) AS jsonb))
               AS j(value)"
        ),
    }
}

impl StateDb {
    /// The oldest pending events without data that nothing planned yet: Platform events whose
    /// topic is not one of `row_topics` (the topics whose rows come from elsewhere).
    #[cfg(test)]
    pub(crate) async fn unplanned_event_rows(
        &self,
        row_topics: &[&str],
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StateError> {
        self.unplanned_event_rows_after(row_topics, None, limit)
            .await
    }

    /// [`StateDb::unplanned_event_rows`] that come after `after` (receipt time, event id) in
    /// their order: a planner reads the oldest a page at a time, holding one page's bodies.
    pub(crate) async fn unplanned_event_rows_after(
        &self,
        row_topics: &[&str],
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StateError> {
        let topics = serde_json::Value::from(row_topics.to_vec()).to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |db| {
            let sql = unplanned_page_sql(db, after.is_some());
            match &after {
                Some((ms, id)) => db.query_map_in_index_order(
                    &sql,
                    params![EventStatus::Pending, topics, limit, *ms, id],
                    inbox::stored_event,
                ),
                None => db.query_map_in_index_order(
                    &sql,
                    params![EventStatus::Pending, topics, limit],
                    inbox::stored_event,
                ),
            }
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |db| {
            let sql = format!(
                "SELECT event_id FROM inbox WHERE status = ?1
                   AND NOT EXISTS (SELECT 1 FROM group_members m WHERE m.event_id = inbox.event_id)
                   AND NOT (CAST(?2 AS TEXT) IS NOT NULL AND kind = 'platform'
                        AND topic NOT IN ({})
                        AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = inbox.event_id))
                 ORDER BY received_at_ms, event_id LIMIT ?3",
                json_texts_of_param_2(db)
            );
            db.query_map_in_index_order(&sql, params![EventStatus::Pending, topics, limit], |r| {
                r.get(0)
            })
        })
        .await
    }

    /// Up to `scan` pending events in the order the inbox is worked through, after `after`
    /// (receipt time, event id), each marked whether it is the per-event engine's (see
    /// [`StateDb::pending_events_per_event`] with `row_topics`): the dispatcher walks a large
    /// backlog of event rows a page at a time instead of reading past all of it at each refill.
    pub(crate) async fn pending_events_walk(
        &self,
        row_topics: &[&str],
        after: Option<(i64, String)>,
        scan: usize,
    ) -> Result<Vec<WalkedEvent>, StateError> {
        let topics = serde_json::Value::from(row_topics.to_vec()).to_string();
        let scan = i64::try_from(scan).unwrap_or(i64::MAX);
        self.call(move |db| {
            let after_clause = if after.is_some() {
                "AND (received_at_ms, event_id) > (?4, ?5)"
            } else {
                ""
            };
            let sql = format!(
                "SELECT event_id, received_at_ms,
                    CASE WHEN NOT EXISTS (SELECT 1 FROM group_members m
                                          WHERE m.event_id = inbox.event_id)
                          AND NOT (kind = 'platform' AND topic NOT IN ({})
                               AND NOT EXISTS (SELECT 1 FROM deliveries d
                                               WHERE d.event_id = inbox.event_id))
                         THEN 1 ELSE 0 END
                 FROM inbox WHERE status = ?1 {after_clause}
                 ORDER BY received_at_ms, event_id LIMIT ?3",
                json_texts_of_param_2(db)
            );
            let walked = |r: &Row<'_>| {
                Ok(WalkedEvent {
                    event_id: r.get(0)?,
                    received_at_ms: r.get(1)?,
                    per_event: r.get::<_, i64>(2)? == 1,
                })
            };
            match &after {
                Some((ms, id)) => db.query_map_in_index_order(
                    &sql,
                    params![EventStatus::Pending, topics, scan, *ms, id],
                    walked,
                ),
                None => db.query_map_in_index_order(
                    &sql,
                    params![EventStatus::Pending, topics, scan],
                    walked,
                ),
            }
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
        self.call(move |db| {
            db.transaction(|tx| {
                let now = now_ms();
                for s in &settled {
                    inbox::set_status(tx, &s.event_id, s.status, s.detail.as_deref(), now)?;
                }
                insert_group_plans(tx, &plans, now)
            })
        })
        .await
    }

    /// Whether the event's row goes to group streams (the group writer's, not the engine's).
    pub(crate) async fn is_grouped(&self, event_id: &str) -> Result<bool, StateError> {
        let id = event_id.to_owned();
        self.call(move |db| {
            db.query_row(
                "SELECT EXISTS(SELECT 1 FROM group_members WHERE event_id = ?1)",
                params![id],
                |r| r.get(0),
            )
        })
        .await
    }

    /// The groups with work for a sink: members whose delivery is pending (a replayed or retried
    /// delivery first gets a member of its generation, in its event's group), and streams whose
    /// window ended before `now` that are not closed yet.
    pub(crate) async fn group_work(&self, now: i64) -> Result<Vec<GroupWork>, StateError> {
        self.call(move |db| {
            db.transaction(|tx| {
                // Every member of an event is in the event's one group: MIN picks it.
                tx.execute(
                    "INSERT INTO group_members (event_id, sink, generation, grp, window_end_ms)
                     SELECT d.event_id, d.sink, d.generation, MIN(g.grp), MIN(g.window_end_ms)
                     FROM deliveries d JOIN group_members g ON g.event_id = d.event_id
                     WHERE d.status = ?1 AND NOT EXISTS (SELECT 1 FROM group_members m
                         WHERE m.event_id = d.event_id AND m.sink = d.sink
                           AND m.generation = d.generation)
                     GROUP BY d.event_id, d.sink, d.generation
                     ON CONFLICT DO NOTHING",
                    params![DeliveryStatus::Pending],
                )?;
                let mut work = tx.query_map(
                    "SELECT m.grp, m.sink, MIN(m.window_end_ms) FROM deliveries d
                     JOIN group_members m ON m.event_id = d.event_id AND m.sink = d.sink
                         AND m.generation = d.generation
                     WHERE d.status = ?1 GROUP BY m.grp, m.sink
                     UNION
                     SELECT grp, sink, window_end_ms FROM group_streams
                     WHERE window_end_ms <= ?2 AND retry_at_ms <= ?2
                       AND (last_seq IS NULL OR next_seq <= last_seq)
                     ORDER BY 3, 1, 2",
                    params![DeliveryStatus::Pending, now],
                    |r| {
                        Ok(GroupWork {
                            group: r.get(0)?,
                            sink: r.get(1)?,
                            window_end_ms: r.get(2)?,
                        })
                    },
                )?;
                work.dedup_by(|a, b| a.group == b.group && a.sink == b.sink);
                Ok(work)
            })
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
        Ok(self
            .next_group_batches(group, sink, limits, 1, usize::MAX)
            .await?
            .pop())
    }

    /// Up to `count` next batches of `group` for `sink`, in the order they go to the sink: the
    /// recorded batches not yet durable first, unchanged, then new ones, each recorded (in this
    /// one transaction) before any is returned. No batch is added once the bodies of those
    /// taken reach `body_bytes` (the first batch is always taken). The rows carry no body:
    /// [`StateDb::group_batch_bodies`] reads a batch's as it is written.
    pub(crate) async fn next_group_batches(
        &self,
        group: &str,
        sink: &str,
        limits: BatchLimits,
        count: usize,
        body_bytes: usize,
    ) -> Result<Vec<GroupBatch>, StateError> {
        let (group, sink) = (group.to_owned(), sink.to_owned());
        self.call(move |db| {
            db.transaction(|tx| {
                let open: Vec<StreamRow> = tx.query_map(
                    &format!(
                        "SELECT {STREAM_COLUMNS} WHERE grp = ?1 AND sink = ?2
                         AND formed_seq > next_seq ORDER BY part"
                    ),
                    params![group, sink],
                    stream_row,
                )?;
                let mut batches = Vec::new();
                let mut held = 0;
                let room = |batches: &Vec<GroupBatch>, held: usize| {
                    batches.len() < count && held < body_bytes
                };
                for stream in &open {
                    for seq in stream.next_seq..stream.formed_seq {
                        if room(&batches, held) {
                            let batch = recorded_batch(tx, &sink, stream, seq)?;
                            held += batch.body_bytes();
                            batches.push(batch);
                        }
                    }
                }
                while room(&batches, held) {
                    match form_batch(tx, &group, &sink, limits)? {
                        Some(batch) => {
                            held += batch.body_bytes();
                            batches.push(batch);
                        }
                        None => break,
                    }
                }
                Ok(batches)
            })
        })
        .await
    }

    /// The bodies of `batch`'s members, in its order, read just before it is written. A
    /// recorded batch's members never change, and neither do the bodies: the same bytes as
    /// when it was recorded. A member whose event is gone from the inbox fails the read
    /// instead of leaving a batch that is not the recorded one.
    pub(crate) async fn group_batch_bodies(
        &self,
        batch: &GroupBatch,
    ) -> Result<Vec<Vec<u8>>, StateError> {
        let (stream, sink, seq) = (batch.stream.clone(), batch.sink.clone(), batch.seq as i64);
        let members: Vec<String> = batch.rows.iter().map(|r| r.event_id.clone()).collect();
        self.call(move |db| {
            let rows: Vec<(String, Vec<u8>)> = db.query_map(
                "SELECT i.event_id, i.body
                 FROM group_members m JOIN inbox i ON i.event_id = m.event_id
                 WHERE m.stream = ?1 AND m.sink = ?2 AND m.seq = ?3 ORDER BY m.position",
                params![stream, sink, seq],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if rows.len() != members.len() || rows.iter().zip(&members).any(|(r, m)| r.0 != *m) {
                return Err(sql::DbError::Column {
                    column: 0,
                    detail: format!(
                        "batch {seq} of group stream {stream} for sink {sink} was recorded \
                         with {} members and now reads {}: its events changed under it",
                        members.len(),
                        rows.len()
                    ),
                });
            }
            Ok(rows.into_iter().map(|(_, body)| body).collect())
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
                    .map(|r| (r.event_id.clone(), r.generation))
                    .collect(),
            })
            .collect();
        self.call(move |db| {
            db.transaction(|tx| {
                let now = now_ms();
                for batch in &batches {
                    commit_batch(tx, batch, now)?;
                }
                Ok(())
            })
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
        self.call(move |db| {
            db.transaction(|tx| {
                let now = now_ms();
                let failed: Vec<String> = tx.query_map(
                    "SELECT m.event_id FROM group_members m JOIN deliveries d
                       ON d.event_id = m.event_id AND d.sink = m.sink
                      AND d.generation = m.generation
                     WHERE m.grp = ?1 AND m.sink = ?2 AND d.status = ?3",
                    params![group, sink, DeliveryStatus::Pending],
                    |r| r.get(0),
                )?;
                for event_id in &failed {
                    tx.execute(
                        "UPDATE deliveries SET status = ?3, error = ?4, updated_at_ms = ?5
                         WHERE event_id = ?1 AND sink = ?2",
                        params![event_id, sink, DeliveryStatus::Failed, error, now],
                    )?;
                    settle_event(tx, event_id, now)?;
                }
                tx.execute(
                    "UPDATE group_streams SET retry_at_ms = ?3 WHERE grp = ?1 AND sink = ?2",
                    params![group, sink, now + CLOSE_RETRY_MS],
                )?;
                Ok(failed.len())
            })
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

/// Commits one flushed batch (see [`StateDb::commit_group_batches`]): a handful of statements
/// over the list of its members, not three per member.
fn commit_batch(tx: &mut Db, batch: &Flushed, now: i64) -> sql::Result<()> {
    let Flushed {
        stream,
        sink,
        seq,
        members,
    } = batch;
    let seq = *seq;
    tx.execute(
        "UPDATE group_streams SET next_seq = GREATEST(next_seq, CAST(?3 AS BIGINT)),
             retry_at_ms = 0
         WHERE stream = ?1 AND sink = ?2",
        params![stream, sink, seq + 1],
    )?;
    if members.is_empty() {
        return Ok(());
    }
    // A delivery whose generation moved on (replayed meanwhile) is not this member's; a
    // dropped one stays dropped (CASE rather than a condition on the status: see
    // `json_members`).
    tx.execute(
        &format!(
            "UPDATE deliveries SET
                 status = CASE WHEN deliveries.status IN (?3, ?4) THEN ?5
                     ELSE deliveries.status END,
                 rows = CASE WHEN deliveries.status IN (?3, ?4) THEN 1 ELSE deliveries.rows END,
                 error = CASE WHEN deliveries.status IN (?3, ?4) THEN NULL
                     ELSE deliveries.error END,
                 updated_at_ms = CASE WHEN deliveries.status IN (?3, ?4) THEN ?6
                     ELSE deliveries.updated_at_ms END
             FROM {} t
             WHERE deliveries.event_id = t.event_id AND deliveries.sink = t.sink
               AND deliveries.generation = t.generation",
            json_members(tx, 1, 2)
        ),
        params![
            members_json(members.iter().map(|(id, g)| (id.as_str(), *g))),
            sink,
            DeliveryStatus::Pending,
            DeliveryStatus::Failed,
            DeliveryStatus::Done,
            now
        ],
    )?;
    let mut ids: Vec<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let ids_json = ids_json(ids.iter().copied());
    // Each event's own checkpoint in the group stream, so that status counts and
    // `events show` read grouped rows as they read every other row.
    tx.execute(
        &format!(
            "INSERT INTO checkpoints (event_id, sink, stream, next_seq, complete, rows)
             SELECT j.value, CAST(?1 AS TEXT), CAST(?3 AS TEXT), CAST(?4 AS BIGINT), 1, 1
             FROM ({}) j WHERE TRUE
             ON CONFLICT (event_id, sink, stream) DO UPDATE SET
               next_seq = GREATEST(checkpoints.next_seq, excluded.next_seq),
               complete = 1, rows = 1",
            json_texts(tx, 2)
        ),
        params![sink, ids_json, stream, seq + 1],
    )?;
    // Most events go to one sink: done in one statement; the others are settled event by
    // event.
    let done = tx.execute(
        &format!(
            "UPDATE inbox SET status = ?2, detail = NULL, updated_at_ms = ?3
             WHERE event_id IN ({}) AND NOT EXISTS (SELECT 1 FROM deliveries d
                 WHERE d.event_id = inbox.event_id AND d.status IN (?4, ?5))",
            json_texts(tx, 1)
        ),
        params![
            ids_json,
            EventStatus::Done,
            now,
            DeliveryStatus::Pending,
            DeliveryStatus::Failed
        ],
    )?;
    if done < ids.len() {
        for event_id in ids {
            settle_event(tx, event_id, now)?;
        }
    }
    Ok(())
}

/// Inserts the deliveries and group members of `plans` with one statement each over the list
/// of (event, sink) pairs, in plan order, so that both tables number them (`rowid`) as one
/// insert per pair did: members are batched in that order, deliveries listed in it.
fn insert_group_plans(tx: &mut Db, plans: &[GroupPlan], now: i64) -> sql::Result<()> {
    // In slices, so the JSON bound for a turn of a large backlog stays small; one transaction
    // holds them all either way.
    for slice in plans.chunks(PLANS_PER_STATEMENT) {
        insert_group_plan_slice(tx, slice, now)?;
    }
    Ok(())
}

/// The events of the JSON array of ids bound to `?1` that have deliveries: planned already.
///
/// The list is walked and each id looked up in the deliveries' key, rather than the
/// deliveries filtered by the list (`event_id IN (…)`): the id is only the first column of
/// that key, and on a table without statistics (a fresh PostgreSQL state filling fast) that
/// form was planned as a scan of every delivery per slice of plans, 62 ms with 300,000.
fn already_planned_sql(db: &Db) -> String {
    format!(
        "SELECT j.value FROM ({}) j
         WHERE EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = j.value)",
        json_texts(db, 1)
    )
}

/// Plans bound to one statement of [`insert_group_plans`] as JSON.
const PLANS_PER_STATEMENT: usize = 1024;

fn insert_group_plan_slice(tx: &mut Db, plans: &[GroupPlan], now: i64) -> sql::Result<()> {
    if plans.is_empty() {
        return Ok(());
    }
    // Planned by the engine meanwhile (told of the event before this daemon grouped event
    // rows): that plan stands.
    let planned: std::collections::HashSet<String> = tx
        .query_map(
            &already_planned_sql(tx),
            params![ids_json(plans.iter().map(|p| p.event_id.as_str()))],
            |r| r.get(0),
        )?
        .into_iter()
        .collect();
    let rows: Vec<(&str, &str, &str, i64)> = plans
        .iter()
        .filter(|p| !planned.contains(&p.event_id))
        .flat_map(|p| {
            p.sinks.iter().map(|sink| {
                (
                    p.event_id.as_str(),
                    sink.as_str(),
                    &*p.group,
                    p.window_end_ms,
                )
            })
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    // Tuples serialise as the `[event id, sink, group, window end]` arrays the statements read.
    let rows = serde_json::to_string(&rows).expect("plan rows serialise");
    tx.execute(
        &format!(
            "INSERT INTO deliveries (event_id, sink, status, updated_at_ms)
             SELECT t.event_id, t.sink, CAST(?2 AS TEXT), CAST(?3 AS BIGINT) FROM {} t
             WHERE TRUE ORDER BY t.n ON CONFLICT DO NOTHING",
            json_plan_rows(tx, 1)
        ),
        params![rows, DeliveryStatus::Pending, now],
    )?;
    tx.execute(
        &format!(
            "INSERT INTO group_members (event_id, sink, generation, grp, window_end_ms)
             SELECT t.event_id, t.sink, 0, t.grp, t.window_end_ms FROM {} t
             WHERE TRUE ORDER BY t.n ON CONFLICT DO NOTHING",
            json_plan_rows(tx, 1)
        ),
        params![rows],
    )?;
    Ok(())
}

/// A subquery of the JSON array of `[event id, sink, group, window end]` rows bound to
/// `?{param}`: columns `event_id`, `sink`, `grp`, `window_end_ms` and `n`, the row's index.
fn json_plan_rows(db: &Db, param: u8) -> String {
    match db.backend() {
        Backend::Sqlite => format!(
            "(SELECT json_extract(value, '$[0]') AS event_id, json_extract(value, '$[1]') AS sink,
                     json_extract(value, '$[2]') AS grp,
                     json_extract(value, '$[3]') AS window_end_ms, key AS n
              FROM json_each(?{param}))"
        ),
        Backend::Postgres => format!(
            "(SELECT value->>0 AS event_id, value->>1 AS sink, value->>2 AS grp,
                     CAST(value->>3 AS BIGINT) AS window_end_ms, n
              FROM jsonb_array_elements(CAST(CAST(?{param} AS TEXT) AS jsonb))
                WITH ORDINALITY AS j(value, n))"
        ),
    }
}

/// A subquery of the members in the JSON array of `[event id, generation]` pairs bound to
/// `?{members}`, for the sink bound to `?{sink}`: columns `event_id`, `sink`, `generation` and
/// `position`, the pair's index in the array.
///
/// A statement joins it to its table on the table's whole key and on nothing else, so that
/// the only plan is a key lookup per member (or one pass over a small table): a condition of
/// the table's own (`seq IS NULL`, a status) lets PostgreSQL, without statistics on a table
/// filling fast, guess that one row matches and scan the list once per row of the table
/// (seconds a batch). On PostgreSQL `OFFSET 0` keeps the list a subquery of its own, so the
/// sink does not turn into such a condition either.
fn json_members(db: &Db, members: u8, sink: u8) -> String {
    match db.backend() {
        Backend::Sqlite => format!(
            "(SELECT json_extract(value, '$[0]') AS event_id, CAST(?{sink} AS TEXT) AS sink,
                     json_extract(value, '$[1]') AS generation, key AS position
              FROM json_each(?{members}))"
        ),
        Backend::Postgres => format!(
            "(SELECT value->>0 AS event_id, CAST(?{sink} AS TEXT) AS sink,
                     CAST(value->>1 AS BIGINT) AS generation, n - 1 AS position
              FROM jsonb_array_elements(CAST(CAST(?{members} AS TEXT) AS jsonb))
                WITH ORDINALITY AS j(value, n) OFFSET 0)"
        ),
    }
}

/// `members` as the JSON array of `[event id, generation]` pairs [`json_members`] reads.
fn members_json<'a>(members: impl Iterator<Item = (&'a str, u32)>) -> String {
    serde_json::Value::from(
        members
            .map(|(event_id, generation)| serde_json::json!([event_id, generation]))
            .collect::<Vec<_>>(),
    )
    .to_string()
}

/// `ids` as the JSON array of strings [`json_texts`] reads.
fn ids_json<'a>(ids: impl Iterator<Item = &'a str>) -> String {
    // Serialised from the borrowed ids: a `serde_json::Value` would copy each one first.
    serde_json::to_string(&ids.collect::<Vec<&str>>()).expect("a list of strings serialises")
}

/// Batch `seq` of `stream` for `sink` as recorded.
fn recorded_batch(
    tx: &mut Db,
    sink: &str,
    stream: &StreamRow,
    seq: i64,
) -> sql::Result<GroupBatch> {
    let rows = tx.query_map(
        "SELECT i.event_id, i.topic, i.received_at_ms, CAST(length(i.body) AS BIGINT),
                m.generation
         FROM group_members m JOIN inbox i ON i.event_id = m.event_id
         WHERE m.stream = ?1 AND m.sink = ?2 AND m.seq = ?3 ORDER BY m.position",
        params![stream.stream, sink, seq],
        |r| {
            let body_len: i64 = r.get(3)?;
            Ok(GroupRow {
                event_id: r.get(0)?,
                topic: r.get(1)?,
                received_at_ms: r.get(2)?,
                body_len: usize::try_from(body_len).unwrap_or(0),
                generation: r.get(4)?,
            })
        },
    )?;
    Ok(GroupBatch {
        stream: stream.stream.clone(),
        sink: sink.to_owned(),
        seq: seq as u64,
        last: stream.last_seq == Some(seq),
        window_end_ms: stream.window_end_ms,
        rows,
    })
}

/// Records a new batch of `group` for `sink` from the waiting members, in the stream still
/// open (or a new part of the group when the last one is closed), and returns it.
fn form_batch(
    tx: &mut Db,
    group: &str,
    sink: &str,
    limits: BatchLimits,
) -> sql::Result<Option<GroupBatch>> {
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
    if !taken.is_empty() {
        // One statement for the batch: each member's place is its index in the list. A member
        // already in a batch keeps its place (COALESCE rather than a `seq IS NULL` condition:
        // see `json_members`).
        let members = members_json(taken.iter().map(|(id, g, _)| (id.as_str(), *g)));
        tx.execute(
            &format!(
                "UPDATE group_members SET stream = COALESCE(group_members.stream, ?3),
                     seq = COALESCE(group_members.seq, ?4),
                     position = COALESCE(group_members.position, t.position)
                 FROM {} t
                 WHERE group_members.event_id = t.event_id AND group_members.sink = t.sink
                   AND group_members.generation = t.generation",
                json_members(tx, 1, 2)
            ),
            params![members, sink, stream.stream, seq],
        )?;
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
    tx: &mut Db,
    group: &str,
    sink: &str,
    limit: i64,
) -> sql::Result<Vec<(String, u32, i64)>> {
    // Oldest is the order the members were made in: the rowid (an identity column on
    // PostgreSQL, with an index of the waiting members in that order). The delivery is looked
    // up by its key for each member, not joined: without statistics (a fresh PostgreSQL state
    // filling fast) a join was planned over every pending delivery per member.
    tx.query_map_in_index_order(
        WAITING_MEMBERS,
        params![group, sink, DeliveryStatus::Pending, limit],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// [`waiting_members`]' query: group, sink, the pending status and the limit.
const WAITING_MEMBERS: &str = "
    SELECT m.event_id, m.generation, m.window_end_ms FROM group_members m
    WHERE m.grp = ?1 AND m.sink = ?2 AND m.seq IS NULL
      AND (SELECT d.status FROM deliveries d
           WHERE d.event_id = m.event_id AND d.sink = m.sink
             AND d.generation = m.generation) = ?3
    ORDER BY m.rowid LIMIT ?4";

/// Opens part `part` of `group` for `sink`: the group's name for the first, `<group>-<part>`
/// after.
fn new_part(
    tx: &mut Db,
    group: &str,
    sink: &str,
    part: i64,
    window_end_ms: i64,
) -> sql::Result<StreamRow> {
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
fn settle_event(tx: &mut Db, event_id: &str, now: i64) -> sql::Result<()> {
    let deliveries: Vec<(String, DeliveryStatus, Option<String>)> = tx.query_map(
        "SELECT sink, status, error FROM deliveries WHERE event_id = ?1 ORDER BY sink",
        params![event_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
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
        inbox::set_status(tx, event_id, EventStatus::Done, None, now)
    } else {
        inbox::set_status(
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
    use crate::state::testing::TestBackend;

    const ROW_TOPICS: [&str; 1] = ["records:created"];

    /// The backend a failed assertion ran on.
    fn which(backend: &TestBackend) -> &'static str {
        match backend {
            TestBackend::Sqlite(_) => "SQLite",
            TestBackend::Postgres(_) => "PostgreSQL",
        }
    }

    /// `n` pending events `e00`, `e01`, ..., each planned into the group of `plan`.
    async fn db_with_planned_events(backend: &TestBackend, n: usize) -> StateDb {
        let db = db_with_events(backend, n).await;
        db.plan_grouped(
            (0..n).map(|i| plan(&format!("e{i:02}"))).collect(),
            Vec::new(),
        )
        .await
        .unwrap();
        db
    }

    async fn db_with_events(backend: &TestBackend, n: usize) -> StateDb {
        let db = backend.state();
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
            sinks: Arc::from(["s".to_owned()]),
            group: Arc::from("events-space-w"),
            window_end_ms: 1000,
        }
    }

    fn ids(batch: &GroupBatch) -> Vec<&str> {
        batch.rows.iter().map(|r| r.event_id.as_str()).collect()
    }

    const LIMITS: BatchLimits = BatchLimits {
        batch_events: 2,
        max_events: 100,
        close: false,
    };

    /// How a query explained by [`explain`] runs on PostgreSQL.
    enum Walk {
        AsIs,
        /// Through [`Db::query_map_in_index_order`], as the inbox and member walks run.
        InIndexOrder,
    }

    /// The plan of `sql` as the engine words it, a line per step: `EXPLAIN QUERY PLAN`'s
    /// details on SQLite, `EXPLAIN`'s lines on PostgreSQL.
    fn explain(db: &mut Db, sql: &str, args: &[sql::Value<'_>], walk: Walk) -> sql::Result<String> {
        let lines: Vec<String> = match (db.backend(), walk) {
            (Backend::Sqlite, _) => {
                db.query_map(&format!("EXPLAIN QUERY PLAN {sql}"), args, |r| r.get(3))?
            }
            (Backend::Postgres, Walk::AsIs) => {
                db.query_map(&format!("EXPLAIN {sql}"), args, |r| r.get(0))?
            }
            (Backend::Postgres, Walk::InIndexOrder) => {
                db.query_map_in_index_order(&format!("EXPLAIN {sql}"), args, |r| r.get(0))?
            }
        };
        Ok(lines.join("\n"))
    }

    #[tokio::test]
    async fn a_batch_reads_its_members_bodies_in_its_order_when_it_is_written() {
        for backend in TestBackend::both("groups_bodies") {
            let on = which(&backend);
            let db = backend.state();
            let bodies: [&[u8]; 3] = [
                br#"{"n":0}"#,
                "{\"n\":1,\"name\":\"Zoë\"}".as_bytes(),
                b"{}",
            ];
            // Received in another order than their ids, so the batch's order is the members'.
            for (id, body, at) in [
                ("e02", bodies[2], 3),
                ("e00", bodies[0], 1),
                ("e01", bodies[1], 2),
            ] {
                db.insert_event(
                    id.into(),
                    "platform",
                    "space:created".into(),
                    body.to_vec(),
                    at,
                )
                .await
                .unwrap();
            }
            db.plan_grouped(vec![plan("e00"), plan("e01"), plan("e02")], Vec::new())
                .await
                .unwrap();
            db.group_work(0).await.unwrap();
            let wide = BatchLimits {
                batch_events: 10,
                ..LIMITS
            };
            let batch = db
                .next_group_batch("events-space-w", "s", wide)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(ids(&batch), ["e00", "e01", "e02"], "{on}");
            assert_eq!(
                batch.body_bytes(),
                bodies.iter().map(|b| b.len()).sum::<usize>(),
                "{on}: the lengths are the bodies' bytes"
            );
            assert_eq!(db.group_batch_bodies(&batch).await.unwrap(), bodies, "{on}");
            db.call(|db| db.execute("DELETE FROM inbox WHERE event_id = 'e01'", params![]))
                .await
                .unwrap();
            let error = db.group_batch_bodies(&batch).await.unwrap_err().to_string();
            assert!(
                error.contains(
                    "batch 0 of group stream events-space-w for sink s was recorded with 3 \
                     members and now reads 2"
                ),
                "{on}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn event_rows_are_left_to_the_group_writer_and_planned_once() {
        for backend in TestBackend::both("groups_plan") {
            let on = which(&backend);
            let db = db_with_events(&backend, 3).await;
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
            assert_eq!(per_event, ["r"], "{on}: event rows are the writer's");
            assert_eq!(
                db.pending_events_per_event(None, 10).await.unwrap().len(),
                4,
                "{on}: not grouping: every event is the engine's"
            );
            let unplanned = db.unplanned_event_rows(&ROW_TOPICS, 10).await.unwrap();
            assert_eq!(unplanned.len(), 3, "{on}");
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
                    .is_empty(),
                "{on}"
            );
            assert_eq!(
                db.pending_events_per_event(None, 10).await.unwrap(),
                ["r"],
                "{on}: a group member stays the writer's whatever the mode"
            );
            assert_eq!(
                db.event("e02").await.unwrap().unwrap().status,
                EventStatus::Unrouted,
                "{on}"
            );
        }
    }

    #[tokio::test]
    async fn a_batch_is_recorded_before_it_is_sent_and_sent_again_unchanged() {
        for backend in TestBackend::both("groups_batch") {
            let on = which(&backend);
            let db = db_with_planned_events(&backend, 5).await;
            let work = db.group_work(0).await.unwrap();
            assert_eq!(work.len(), 1, "{on}");
            let first = db
                .next_group_batch("events-space-w", "s", LIMITS)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (first.stream.as_str(), first.seq, first.last),
                ("events-space-w", 0, false),
                "{on}"
            );
            assert_eq!(ids(&first), ["e00", "e01"], "{on}");
            // Not committed (a crash, say): the same batch again, not new members.
            let again = db
                .next_group_batch("events-space-w", "s", LIMITS)
                .await
                .unwrap()
                .unwrap();
            assert_eq!((again.seq, ids(&again)), (0, vec!["e00", "e01"]), "{on}");
            assert_eq!(
                db.event("e00").await.unwrap().unwrap().status,
                EventStatus::Pending,
                "{on}"
            );
            db.commit_group_batch(&again).await.unwrap();
            assert_eq!(
                db.event("e00").await.unwrap().unwrap().status,
                EventStatus::Done,
                "{on}"
            );
            assert_eq!(
                db.deliveries("e01").await.unwrap()[0].status,
                DeliveryStatus::Done,
                "{on}"
            );
            let second = db
                .next_group_batch("events-space-w", "s", LIMITS)
                .await
                .unwrap()
                .unwrap();
            assert_eq!((second.seq, ids(&second)), (1, vec!["e02", "e03"]), "{on}");

            // The sink fails: every waiting member is a dead letter, the batch stays recorded.
            assert_eq!(
                db.fail_group("events-space-w", "s", "disk full".into())
                    .await
                    .unwrap(),
                3,
                "{on}"
            );
            let failed = db.event("e04").await.unwrap().unwrap();
            assert_eq!(failed.status, EventStatus::Failed, "{on}");
            assert_eq!(
                failed.detail.as_deref(),
                Some("sink `s`: disk full"),
                "{on}"
            );
            assert!(
                db.group_work(0).await.unwrap().is_empty(),
                "{on}: nothing waits"
            );
            assert!(
                db.next_group_batch("events-space-w", "s", LIMITS)
                    .await
                    .unwrap()
                    .is_some_and(|b| b.seq == 1),
                "{on}"
            );

            // A retried dead letter: batch 1 first, as recorded, then the retried member of e04.
            db.call(|db| {
                db.execute(
                    "UPDATE deliveries SET status = 'pending' WHERE event_id = 'e04'",
                    params![],
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
            assert_eq!((resent.seq, ids(&resent)), (1, vec!["e02", "e03"]), "{on}");
            db.commit_group_batch(&resent).await.unwrap();
            assert_eq!(
                db.event("e02").await.unwrap().unwrap().status,
                EventStatus::Done,
                "{on}: its row is durable in the sink now"
            );
            let last = db
                .next_group_batch("events-space-w", "s", closing)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (last.seq, ids(&last), last.last),
                (2, vec!["e04"], true),
                "{on}"
            );
            db.commit_group_batch(&last).await.unwrap();
            assert!(
                db.next_group_batch("events-space-w", "s", closing)
                    .await
                    .unwrap()
                    .is_none(),
                "{on}"
            );
            assert!(
                db.group_work(2000).await.unwrap().is_empty(),
                "{on}: closed and durable"
            );
        }
    }

    #[tokio::test]
    async fn a_replay_goes_into_a_new_part_once_the_stream_is_closed() {
        for backend in TestBackend::both("groups_replay") {
            let on = which(&backend);
            let db = db_with_events(&backend, 1).await;
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
            assert!(only.last, "{on}");
            db.commit_group_batch(&only).await.unwrap();
            db.call(|db| {
                db.execute(
                "UPDATE deliveries SET generation = 1, status = 'pending' WHERE event_id = 'e00'",
                params![],
            )
            })
            .await
            .unwrap();
            let work = db.group_work(0).await.unwrap();
            assert_eq!(
                work.len(),
                1,
                "{on}: the replay has a member of its generation"
            );
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
                ("events-space-w-2", 0, 1),
                "{on}"
            );
            db.commit_group_batch(&replayed).await.unwrap();
            assert_eq!(
                db.event("e00").await.unwrap().unwrap().status,
                EventStatus::Done,
                "{on}"
            );
        }
    }

    #[tokio::test]
    async fn an_ended_window_closes_with_an_empty_batch_and_a_full_stream_continues() {
        for backend in TestBackend::both("groups_close") {
            let on = which(&backend);
            let db = db_with_planned_events(&backend, 3).await;
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
                "{on}: full: closed"
            );
            db.commit_group_batch(&full).await.unwrap();
            let next = db
                .next_group_batch("events-space-w", "s", small)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (next.stream.as_str(), ids(&next), next.last),
                ("events-space-w-2", vec!["e02"], false),
                "{on}"
            );
            db.commit_group_batch(&next).await.unwrap();
            assert!(
                db.next_group_batch("events-space-w", "s", small)
                    .await
                    .unwrap()
                    .is_none(),
                "{on}"
            );
            assert_eq!(
                db.group_work(999).await.unwrap().len(),
                0,
                "{on}: window not over"
            );
            assert_eq!(
                db.group_work(1000).await.unwrap().len(),
                1,
                "{on}: window over: close it"
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
                ("events-space-w-2", 1, 0, true),
                "{on}"
            );
            db.commit_group_batch(&empty).await.unwrap();
            assert!(db.group_work(5000).await.unwrap().is_empty(), "{on}");
        }
    }

    #[tokio::test]
    async fn an_event_of_two_sinks_settles_once_both_batches_are_in_and_names_the_failed_one() {
        for backend in TestBackend::both("groups_two_sinks") {
            let on = which(&backend);
            let db = db_with_events(&backend, 1).await;
            let both = GroupPlan {
                sinks: Arc::from(["a".to_owned(), "b".to_owned()]),
                ..plan("e00")
            };
            db.plan_grouped(vec![both.clone()], Vec::new())
                .await
                .unwrap();
            // Planned again (the engine planned it meanwhile, say): nothing doubles.
            db.plan_grouped(vec![both], Vec::new()).await.unwrap();
            assert!(db.is_grouped("e00").await.unwrap(), "{on}");
            assert!(!db.is_grouped("nope").await.unwrap(), "{on}");
            let work = db.group_work(0).await.unwrap();
            let sinks: Vec<&str> = work.iter().map(|w| w.sink.as_str()).collect();
            assert_eq!(sinks, ["a", "b"], "{on}: {work:?}");

            let to_a = db
                .next_group_batch("events-space-w", "a", LIMITS)
                .await
                .unwrap()
                .expect("a batch for a");
            db.commit_group_batch(&to_a).await.unwrap();
            assert_eq!(
                db.event("e00").await.unwrap().unwrap().status,
                EventStatus::Pending,
                "{on}: b has not taken it yet"
            );
            assert_eq!(
                db.fail_group("events-space-w", "b", "refused".into())
                    .await
                    .unwrap(),
                1,
                "{on}"
            );
            let failed = db.event("e00").await.unwrap().unwrap();
            assert_eq!(
                (failed.status, failed.detail.as_deref()),
                (EventStatus::Failed, Some("sink `b`: refused")),
                "{on}"
            );
            let checkpoints = db.checkpoints("e00").await.unwrap();
            assert_eq!(
                checkpoints
                    .iter()
                    .map(|c| (c.sink.as_str(), c.stream.as_str(), c.next_seq, c.complete))
                    .collect::<Vec<_>>(),
                [("a", "events-space-w", 1, true)],
                "{on}: the event's own checkpoint in the group stream"
            );

            // The dead letter retried: b's batch goes out and the event is done.
            db.call(|db| {
                db.execute(
                    "UPDATE deliveries SET status = 'pending' WHERE sink = 'b'",
                    params![],
                )
            })
            .await
            .unwrap();
            let to_b = db
                .next_group_batch("events-space-w", "b", LIMITS)
                .await
                .unwrap()
                .expect("a batch for b");
            assert_eq!((to_b.seq, ids(&to_b)), (0, vec!["e00"]), "{on}");
            db.commit_group_batch(&to_b).await.unwrap();
            let done = db.event("e00").await.unwrap().unwrap();
            assert_eq!(
                (done.status, done.detail),
                (EventStatus::Done, None),
                "{on}"
            );
            assert!(
                db.deliveries("e00")
                    .await
                    .unwrap()
                    .iter()
                    .all(|d| d.status == DeliveryStatus::Done && d.rows == 1),
                "{on}"
            );
        }
    }

    #[tokio::test]
    async fn a_turn_takes_no_batch_past_its_bytes_and_the_rest_come_next_unchanged() {
        for backend in TestBackend::both("groups_bytes") {
            let on = which(&backend);
            let db = db_with_planned_events(&backend, 5).await;
            // Each body is `{}`: a batch of two holds four bytes.
            let first = db
                .next_group_batches("events-space-w", "s", LIMITS, 10, 5)
                .await
                .unwrap();
            let seqs = |batches: &[GroupBatch]| -> Vec<(u64, Vec<String>)> {
                batches
                    .iter()
                    .map(|b| (b.seq, ids(b).into_iter().map(str::to_owned).collect()))
                    .collect()
            };
            assert_eq!(
                seqs(&first),
                [
                    (0, vec!["e00".into(), "e01".into()]),
                    (1, vec!["e02".into(), "e03".into()])
                ],
                "{on}: the second batch reached the bytes"
            );
            let one = db
                .next_group_batches("events-space-w", "s", LIMITS, 10, 1)
                .await
                .unwrap();
            assert_eq!(
                seqs(&one),
                [(0, vec!["e00".into(), "e01".into()])],
                "{on}: one batch always goes, the recorded one first"
            );
            let all = db
                .next_group_batches("events-space-w", "s", LIMITS, 10, usize::MAX)
                .await
                .unwrap();
            assert_eq!(
                seqs(&all),
                [
                    (0, vec!["e00".into(), "e01".into()]),
                    (1, vec!["e02".into(), "e03".into()]),
                    (2, vec!["e04".into()])
                ],
                "{on}: recorded batches unchanged, then the new one"
            );
        }
    }

    #[tokio::test]
    async fn unplanned_event_rows_are_read_a_page_at_a_time_in_order() {
        for backend in TestBackend::both("groups_pages") {
            let on = which(&backend);
            let db = db_with_events(&backend, 5).await;
            // Two events received in the same millisecond as e02: ids order them.
            for id in ["e02b", "e02a"] {
                db.insert_event(
                    id.into(),
                    "platform",
                    "space:created".into(),
                    b"{}".to_vec(),
                    2,
                )
                .await
                .unwrap();
            }
            let mut read = Vec::new();
            let mut after = None;
            loop {
                let page = db
                    .unplanned_event_rows_after(&ROW_TOPICS, after.take(), 2)
                    .await
                    .unwrap();
                read.extend(page.iter().map(|e| e.event_id.clone()));
                match page.last() {
                    Some(last) if page.len() == 2 => {
                        after = Some((last.received_at_ms, last.event_id.clone()));
                    }
                    _ => break,
                }
            }
            let whole: Vec<String> = db
                .unplanned_event_rows(&ROW_TOPICS, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.event_id)
                .collect();
            assert_eq!(read, whole, "{on}");
            assert_eq!(
                read,
                ["e00", "e01", "e02", "e02a", "e02b", "e03", "e04"],
                "{on}"
            );
        }
    }

    #[tokio::test]
    async fn several_batches_are_recorded_and_committed_in_one_call() {
        for backend in TestBackend::both("groups_several") {
            let on = which(&backend);
            let db = db_with_planned_events(&backend, 5).await;
            assert_eq!(
                db.pending_events_per_event(None, usize::MAX).await.unwrap(),
                Vec::<String>::new(),
                "{on}: no limit given, every member still the writer's"
            );
            let batches = db
                .next_group_batches("events-space-w", "s", LIMITS, 10, usize::MAX)
                .await
                .unwrap();
            let formed: Vec<(u64, Vec<&str>)> = batches.iter().map(|b| (b.seq, ids(b))).collect();
            assert_eq!(
                formed,
                [
                    (0, vec!["e00", "e01"]),
                    (1, vec!["e02", "e03"]),
                    (2, vec!["e04"])
                ],
                "{on}"
            );
            db.commit_group_batches(&batches[..2]).await.unwrap();
            let again = db
                .next_group_batches("events-space-w", "s", LIMITS, 10, usize::MAX)
                .await
                .unwrap();
            assert_eq!(
                again.iter().map(|b| (b.seq, ids(b))).collect::<Vec<_>>(),
                [(2, vec!["e04"])],
                "{on}: only the batch not yet durable, unchanged"
            );
            db.commit_group_batches(&again).await.unwrap();
            let mut statuses = db.event_counts().await.unwrap();
            statuses.retain(|(_, n)| *n > 0);
            assert_eq!(statuses, [(EventStatus::Done, 5)], "{on}");
        }
    }

    #[tokio::test]
    async fn the_page_query_walks_the_inbox_index_in_order_without_a_sort() {
        for backend in TestBackend::both("groups_walk") {
            let on = which(&backend);
            let db = db_with_events(&backend, 50).await;
            if let TestBackend::Postgres(_) = &backend {
                // A history of done events, never analyzed: PostgreSQL then guesses that the
                // page matches a row or two, and sorts every match (it did, without the walk's
                // setting) rather than walk the index.
                db.call(|db| {
                    db.execute_batch(
                        "INSERT INTO inbox (event_id, kind, topic, body, received_at_ms, status,
                             updated_at_ms)
                         SELECT 'done' || i, 'platform', 'space:created', '\\x7b7d', i, 'done', 0
                         FROM generate_series(1, 5000) AS i",
                    )
                })
                .await
                .unwrap();
            }
            // As the walk runs: whatever the table's statistics say (here, a table never
            // analyzed), the index serves the order by itself.
            let plan = db
                .call(|db| {
                    let sql = unplanned_page_sql(db, true);
                    let args =
                        params![EventStatus::Pending, r#"["records:created"]"#, 10, 3, "e03"];
                    explain(db, &sql, args, Walk::InIndexOrder)
                })
                .await
                .unwrap();
            assert!(plan.contains("inbox_by_status_time"), "{on}: {plan}");
            assert!(
                !plan.contains("TEMP B-TREE") && !plan.contains("Sort"),
                "{on}: {plan}"
            );
            // Pages of any size read the same rows in the same order, across equal receipt times.
            for id in ["e03b", "e03a", "e03c"] {
                db.insert_event(
                    id.into(),
                    "platform",
                    "space:created".into(),
                    b"{}".to_vec(),
                    3,
                )
                .await
                .unwrap();
            }
            let whole: Vec<String> = db
                .unplanned_event_rows(&ROW_TOPICS, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.event_id)
                .collect();
            assert_eq!(whole.len(), 53, "{on}");
            assert_eq!(&whole[3..7], ["e03", "e03a", "e03b", "e03c"], "{on}");
            for page in [1, 3, 4] {
                let mut read = Vec::new();
                let mut after = None;
                loop {
                    let rows = db
                        .unplanned_event_rows_after(&ROW_TOPICS, after.take(), page)
                        .await
                        .unwrap();
                    read.extend(rows.iter().map(|e| e.event_id.clone()));
                    match rows.last() {
                        Some(last) => after = Some((last.received_at_ms, last.event_id.clone())),
                        None => break,
                    }
                }
                assert_eq!(read, whole, "{on}: pages of {page}");
            }
        }
    }

    #[tokio::test]
    async fn the_waiting_members_are_read_in_the_order_they_came_without_a_sort() {
        for backend in TestBackend::both("groups_waiting_order") {
            let on = which(&backend);
            let db = db_with_events(&backend, 6).await;
            // Made members in another order than their ids: the order is the members'.
            db.plan_grouped(
                ["e05", "e00", "e01", "e02", "e03", "e04"]
                    .into_iter()
                    .map(plan)
                    .collect(),
                Vec::new(),
            )
            .await
            .unwrap();
            if let TestBackend::Postgres(_) = &backend {
                // Members already in batches, never analyzed: with an index that does not hold
                // the waiting members in order, PostgreSQL read and sorted them all.
                db.call(|db| {
                    db.execute_batch(
                        "INSERT INTO group_members (event_id, sink, generation, grp,
                             window_end_ms, stream, seq, position)
                         SELECT 'old' || i, 's', 0, 'events-space-w', 0, 'events-space-w',
                             i / 100, i % 100
                         FROM generate_series(1, 5000) AS i",
                    )
                })
                .await
                .unwrap();
            }
            let plan = db
                .call(|db| {
                    let args = params!["events-space-w", "s", DeliveryStatus::Pending, 2];
                    explain(db, WAITING_MEMBERS, args, Walk::InIndexOrder)
                })
                .await
                .unwrap();
            let index = match backend {
                TestBackend::Sqlite(_) => "group_members_waiting",
                TestBackend::Postgres(_) => crate::state::schema::POSTGRES_WAITING_ORDER,
            };
            assert!(plan.contains(index), "{on}: {plan}");
            assert!(
                !plan.contains("TEMP B-TREE") && !plan.contains("Sort"),
                "{on}: {plan}"
            );
            let batches = db
                .next_group_batches("events-space-w", "s", LIMITS, 10, usize::MAX)
                .await
                .unwrap();
            assert_eq!(
                batches.iter().map(ids).collect::<Vec<_>>(),
                [vec!["e05", "e00"], vec!["e01", "e02"], vec!["e03", "e04"]],
                "{on}"
            );
        }
    }

    #[tokio::test]
    async fn the_plans_already_made_are_looked_up_by_key_on_a_table_never_analyzed() {
        for backend in TestBackend::both("groups_already_planned") {
            let on = which(&backend);
            let db = db_with_events(&backend, 3).await;
            // e01 was planned by the engine: the group writer's plan leaves it alone.
            db.call(|db| {
                db.execute(
                    "INSERT INTO deliveries (event_id, sink, status) VALUES ('e01', 's', 'pending')",
                    params![],
                )?;
                if db.backend() == Backend::Postgres {
                    // Deliveries of done events, never analyzed: PostgreSQL read them all for
                    // each slice of plans when the deliveries were filtered by the list.
                    db.execute_batch(
                        "INSERT INTO deliveries (event_id, sink, status)
                         SELECT 'done' || i, 's', 'done' FROM generate_series(1, 5000) AS i",
                    )?;
                }
                Ok(())
            })
            .await
            .unwrap();
            let explained = db
                .call(|db| {
                    let sql = already_planned_sql(db);
                    explain(db, &sql, params![r#"["e00","e01"]"#], Walk::AsIs)
                })
                .await
                .unwrap();
            assert!(
                !explained.contains("Seq Scan on deliveries") && !explained.contains("SCAN d"),
                "{on}: {explained}"
            );
            db.plan_grouped(["e00", "e01", "e02"].map(plan).to_vec(), Vec::new())
                .await
                .unwrap();
            let grouped: Vec<bool> = [
                db.is_grouped("e00").await.unwrap(),
                db.is_grouped("e01").await.unwrap(),
                db.is_grouped("e02").await.unwrap(),
            ]
            .to_vec();
            assert_eq!(grouped, [true, false, true], "{on}");
        }
    }

    #[tokio::test]
    async fn the_walk_marks_the_engines_events_page_by_page_in_inbox_order() {
        for backend in TestBackend::both("groups_walk_pages") {
            let on = which(&backend);
            let db = db_with_events(&backend, 4).await;
            for (id, kind, topic, at) in [
                ("r", "platform", "records:created", 1),
                ("l", "legacy", "batch", 2),
                ("e02a", "platform", "space:created", 2),
            ] {
                db.insert_event(id.into(), kind, topic.into(), b"{}".to_vec(), at)
                    .await
                    .unwrap();
            }
            // e00 is the group writer's once planned; e03 was planned by the engine.
            db.plan_grouped(vec![plan("e00")], Vec::new())
                .await
                .unwrap();
            db.call(|db| {
                db.execute(
                    "INSERT INTO deliveries (event_id, sink, status) VALUES ('e03', 's', 'pending')",
                    params![],
                )
            })
            .await
            .unwrap();
            let mut walked = Vec::new();
            let mut after = None;
            loop {
                let page = db
                    .pending_events_walk(&ROW_TOPICS, after.take(), 2)
                    .await
                    .unwrap();
                walked.extend(page.iter().map(|e| (e.event_id.clone(), e.per_event)));
                match page.last() {
                    Some(last) if page.len() == 2 => {
                        after = Some((last.received_at_ms, last.event_id.clone()));
                    }
                    _ => break,
                }
            }
            let expected = [
                ("e00", false),
                ("e01", false),
                ("r", true),
                ("e02", false),
                ("e02a", false),
                ("l", true),
                ("e03", true),
            ];
            let expected: Vec<(String, bool)> = expected
                .iter()
                .map(|(id, mine)| ((*id).to_owned(), *mine))
                .collect();
            assert_eq!(walked, expected, "{on}");
            let engines: Vec<String> = walked
                .into_iter()
                .filter(|(_, mine)| *mine)
                .map(|(id, _)| id)
                .collect();
            assert_eq!(
                db.pending_events_per_event(Some(&ROW_TOPICS), 10)
                    .await
                    .unwrap(),
                engines,
                "{on}: the walk agrees with the whole read"
            );
        }
    }

    #[tokio::test]
    async fn a_commit_marks_each_member_of_its_own_generation_and_settles_them_together() {
        for backend in TestBackend::both("groups_generations") {
            let on = which(&backend);
            let db = db_with_planned_events(&backend, 4).await;
            let wide = BatchLimits {
                batch_events: 10,
                ..LIMITS
            };
            // e01 replayed before any batch: its member of generation 1 joins after e03.
            db.call(|db| {
                db.execute(
                    "UPDATE deliveries SET generation = 1 WHERE event_id = 'e01'",
                    params![],
                )
            })
            .await
            .unwrap();
            db.group_work(0).await.unwrap();
            let first = db
                .next_group_batch("events-space-w", "s", wide)
                .await
                .unwrap()
                .unwrap();
            let members: Vec<(&str, u32)> = first
                .rows
                .iter()
                .map(|r| (r.event_id.as_str(), r.generation))
                .collect();
            assert_eq!(
                members,
                [("e00", 0), ("e02", 0), ("e03", 0), ("e01", 1)],
                "{on}: in the order the members were made"
            );
            // e02 replayed after its batch was recorded: this batch no longer delivers it.
            db.call(|db| {
                db.execute(
                    "UPDATE deliveries SET generation = 1 WHERE event_id = 'e02'",
                    params![],
                )
            })
            .await
            .unwrap();
            db.commit_group_batch(&first).await.unwrap();
            let status = |id: &'static str| {
                let db = db.clone();
                async move { db.event(id).await.unwrap().unwrap().status }
            };
            for id in ["e00", "e01", "e03"] {
                assert_eq!(status(id).await, EventStatus::Done, "{on}: {id}");
            }
            assert_eq!(status("e02").await, EventStatus::Pending, "{on}");
            assert_eq!(
                db.deliveries("e02").await.unwrap()[0].status,
                DeliveryStatus::Pending,
                "{on}"
            );
            db.group_work(0).await.unwrap();
            let again = db
                .next_group_batch("events-space-w", "s", wide)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (again.seq, ids(&again), again.rows[0].generation),
                (1, vec!["e02"], 1),
                "{on}"
            );
            db.commit_group_batch(&again).await.unwrap();
            let mut statuses = db.event_counts().await.unwrap();
            statuses.retain(|(_, n)| *n > 0);
            assert_eq!(statuses, [(EventStatus::Done, 4)], "{on}");
            let checkpoint = db.checkpoints("e02").await.unwrap();
            assert_eq!(
                checkpoint
                    .iter()
                    .map(|c| (c.stream.as_str(), c.next_seq, c.complete))
                    .collect::<Vec<_>>(),
                [("events-space-w", 2, true)],
                "{on}: the checkpoint moved on with the later batch"
            );
        }
    }

    /// Forms and commits batches of the group for `s` until none is left; every batch handed
    /// out, in order.
    async fn drain(db: &StateDb) -> Vec<(String, u64, Vec<String>)> {
        let mut seen = Vec::new();
        while let Some(batch) = db
            .next_group_batch("events-space-w", "s", LIMITS)
            .await
            .unwrap()
        {
            db.commit_group_batch(&batch).await.unwrap();
            seen.push((
                batch.stream.clone(),
                batch.seq,
                ids(&batch).into_iter().map(str::to_owned).collect(),
            ));
        }
        seen
    }

    #[tokio::test]
    async fn two_daemons_on_one_state_put_each_event_in_one_batch() {
        for backend in TestBackend::both("groups_two_daemons") {
            let on = which(&backend);
            let first = db_with_planned_events(&backend, 30).await;
            let second = backend.state();
            let (a, b) = tokio::join!(drain(&first), drain(&second));
            // A batch either handed out may be handed out again (not durable yet when the
            // other asked), but always with the same events.
            let mut batches = std::collections::BTreeMap::new();
            for (stream, seq, events) in a.into_iter().chain(b) {
                let recorded = batches
                    .entry((stream, seq))
                    .or_insert_with(|| events.clone());
                assert_eq!(*recorded, events, "{on}: a batch changed");
            }
            let mut events: Vec<String> = batches.into_values().flatten().collect();
            events.sort();
            let expected: Vec<String> = (0..30).map(|i| format!("e{i:02}")).collect();
            assert_eq!(events, expected, "{on}: every event in exactly one batch");
            assert_eq!(
                first.event_counts().await.unwrap(),
                [(EventStatus::Done, 30)],
                "{on}"
            );
        }
    }
}
