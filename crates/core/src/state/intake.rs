//! Group commit of what webhooks bring: events and parts of carried uploads, many writes in
//! one transaction so that one sync makes them all durable ([`StateDb::write_group`]).

use std::collections::HashSet;
use std::fmt::Write as _;

use flatsync_flatfile::CarriedPart;

use super::carried::{CompletionRule, PartOutcome, store_part};
use super::inbox::insert_pending;
use super::sql::{self, Db, DbError, Value};
use super::{EventStatus, StateDb, StateError};

/// Rows of one multi-row insert at most. Inserts take a power of two of rows each, so a
/// connection prepares at most nine statement texts (1 to 256 rows) whatever the groups' sizes.
const MOST_ROWS_PER_INSERT: usize = 256;

/// One write of a group commit ([`StateDb::write_group`]).
pub(crate) enum InboxWrite {
    /// A newly received event, stored as `pending` unless its id is in the inbox already.
    Event {
        /// Event id.
        event_id: String,
        /// `legacy` or `platform`.
        kind: &'static str,
        /// Topic used for routing.
        topic: String,
        /// The body to store.
        body: Vec<u8>,
        /// Receipt time, ms since the Unix epoch.
        received_at_ms: i64,
    },
    /// One part of the carried upload `key` (see `carried::store_part`).
    Part {
        /// The upload's key, and the id of its inbox event once complete.
        key: String,
        /// The part.
        part: CarriedPart,
        /// Which parts complete the upload.
        complete: CompletionRule,
    },
}

/// What one write of a group did, once the group committed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InboxOutcome {
    /// An event write: whether the event was new (`false`: its id was in the inbox already).
    Event(bool),
    /// A part write.
    Part(PartOutcome),
}

/// One write inside the group's transaction, in a savepoint of its own: when it fails, what it
/// wrote is undone and the other writes of the group stay. PostgreSQL needs the savepoint even
/// for a single statement, since it abandons the whole transaction on any failed one. SQLite
/// undoes a failed statement by itself, so an event (one statement) needs none there: two
/// statements fewer per webhook.
fn write_one(db: &mut Db, write: &InboxWrite) -> sql::Result<InboxOutcome> {
    if matches!(write, InboxWrite::Event { .. }) && db.as_sqlite().is_some() {
        return write_unguarded(db, write);
    }
    db.savepoint(|db| write_unguarded(db, write))
}

/// `write` as its statements, without a savepoint of its own.
fn write_unguarded(db: &mut Db, write: &InboxWrite) -> sql::Result<InboxOutcome> {
    match write {
        InboxWrite::Event {
            event_id,
            kind,
            topic,
            body,
            received_at_ms,
        } => insert_pending(db, event_id, kind, topic, body, *received_at_ms)
            .map(InboxOutcome::Event),
        InboxWrite::Part {
            key,
            part,
            complete,
        } => store_part(db, key, part, *complete).map(InboxOutcome::Part),
    }
}

/// The run of event writes `writes` starts with, on PostgreSQL: how many to insert together
/// ([`insert_events_together`]). Zero on SQLite, whose one cached statement per event costs no
/// round trip, and for a part.
fn events_ahead(db: &Db, writes: &[InboxWrite]) -> usize {
    if db.backend() == sql::Backend::Sqlite {
        return 0;
    }
    writes
        .iter()
        .take_while(|write| matches!(write, InboxWrite::Event { .. }))
        .count()
}

/// Inserts a run of event writes with a few multi-row statements in one savepoint: on
/// PostgreSQL each statement is a round trip, and one savepoint and statement per event were
/// three. Whether each event was new, in order; a repeated id within the run is new only the
/// first time, as written one by one. When any row fails, the savepoint undoes them all and
/// the caller writes them one by one, so that the failing one fails alone.
fn insert_events_together(db: &mut Db, events: &[InboxWrite]) -> sql::Result<Vec<bool>> {
    let inserted = db.savepoint(|db| {
        let mut inserted = HashSet::with_capacity(events.len());
        let mut rest = events;
        while !rest.is_empty() {
            let take = rows_per_insert(rest.len());
            let (chunk, after) = rest.split_at(take);
            let mut params = Vec::with_capacity(1 + 5 * take);
            params.push(Value::Text(EventStatus::Pending.as_str()));
            for write in chunk {
                if let InboxWrite::Event {
                    event_id,
                    kind,
                    topic,
                    body,
                    received_at_ms,
                } = write
                {
                    params.extend([
                        Value::Text(event_id),
                        Value::Text(kind),
                        Value::Text(topic),
                        Value::Bytes(body),
                        Value::Int(*received_at_ms),
                    ]);
                }
            }
            let new = db.query_map(&insert_sql(take), &params, |row| row.get::<_, String>(0))?;
            inserted.extend(new);
            rest = after;
        }
        Ok(inserted)
    })?;
    let mut first_time = inserted;
    Ok(events
        .iter()
        .map(|write| match write {
            InboxWrite::Event { event_id, .. } => first_time.remove(event_id.as_str()),
            InboxWrite::Part { .. } => false,
        })
        .collect())
}

/// The largest power of two of rows, at most [`MOST_ROWS_PER_INSERT`], that `left` rows hold.
fn rows_per_insert(left: usize) -> usize {
    let power = 1 << left.max(1).ilog2();
    power.min(MOST_ROWS_PER_INSERT)
}

/// `INSERT` of `rows` pending events (`?1` their status, then five parameters per row, in
/// `insert_pending`'s order) returning the ids that were not in the inbox yet.
fn insert_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(160 + 32 * rows);
    sql.push_str(
        "INSERT INTO inbox (event_id, kind, topic, body, received_at_ms, status, updated_at_ms) \
         VALUES ",
    );
    for row in 0..rows {
        let at = 2 + 5 * row;
        let separator = if row == 0 { "" } else { ", " };
        let _ = write!(
            sql,
            "{separator}(?{at}, ?{}, ?{}, ?{}, ?{}, ?1, ?{})",
            at + 1,
            at + 2,
            at + 3,
            at + 4,
            at + 4
        );
    }
    sql.push_str(" ON CONFLICT DO NOTHING RETURNING event_id");
    sql
}

/// Whether a write's failure broke the whole group's transaction, so that the group must fail
/// rather than commit without the write: SQLite rolled the transaction back by itself (a full
/// disk, an I/O error); on PostgreSQL the connection broke, or the write lost a serialization
/// conflict with another daemon, which runs the whole group again ([`Db::transaction`]).
fn breaks_the_group(db: &mut Db, error: &DbError) -> bool {
    match db.as_sqlite() {
        Some(conn) => conn.is_autocommit(),
        None => error.is_unavailable(),
    }
}

impl StateDb {
    /// Commits a group of writes in one transaction, so one sync makes them all durable.
    ///
    /// `Ok` holds each write's own result, in order, and means the transaction committed: a
    /// write whose result is `Ok` is durable, one whose result is an error left nothing behind
    /// (the others were kept). `Err` means the group did not commit and none of it is stored:
    /// the write lock was not had within the busy timeout, the commit failed, or a write's
    /// failure broke the whole transaction (SQLite: a full disk, an I/O error; PostgreSQL: a
    /// lost connection, or a serialization conflict still lost after the retries).
    pub(crate) async fn write_group(
        &self,
        writes: Vec<InboxWrite>,
    ) -> Result<Vec<Result<InboxOutcome, StateError>>, StateError> {
        let at = self.path.display().to_string();
        // One transaction, on SQLite begun IMMEDIATE: a database another process holds locked
        // fails the group at once, after one busy timeout, not each write after its own. On
        // PostgreSQL intake has its own connection: a standby daemon stores what it is sent.
        self.call_intake(move |db| {
            db.transaction(|db| {
                let mut outcomes = Vec::with_capacity(writes.len());
                let mut next = 0;
                while next < writes.len() {
                    let run = events_ahead(db, &writes[next..]);
                    if run > 1 {
                        match insert_events_together(db, &writes[next..next + run]) {
                            Ok(new) => {
                                outcomes.extend(
                                    new.into_iter().map(|new| Ok(InboxOutcome::Event(new))),
                                );
                                next += run;
                                continue;
                            }
                            Err(error) if breaks_the_group(db, &error) => return Err(error),
                            // Some row failed: one by one below, so that it fails alone.
                            Err(_) => {}
                        }
                    }
                    for write in &writes[next..next + run.max(1)] {
                        match write_one(db, write) {
                            Ok(outcome) => outcomes.push(Ok(outcome)),
                            Err(error) if breaks_the_group(db, &error) => return Err(error),
                            Err(error) => outcomes.push(Err(StateError::Database {
                                at: at.clone(),
                                error,
                            })),
                        }
                    }
                    next += run.max(1);
                }
                Ok(outcomes)
            })
        })
        .await
    }
}

/// The inbox's faults ([`StateDb::refuse_event_for_tests`], [`StateDb::fail_commits_for_tests`],
/// SQLite triggers) on either backend, for the tests of what a transaction does with them:
/// PostgreSQL gets triggers of its own that fail alike.
#[cfg(test)]
impl StateDb {
    /// Inserting the event `event_id` into the inbox fails, alone, with "refused by the test".
    pub(crate) async fn refuse_event_on_any_backend_for_tests(&self, event_id: &str) {
        if self.is_sqlite_for_tests().await {
            return self.refuse_event_for_tests(event_id).await;
        }
        let sql = format!(
            "CREATE FUNCTION refuse_event() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.event_id = '{event_id}' THEN
                     RAISE EXCEPTION 'refused by the test';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_event BEFORE INSERT ON inbox
             FOR EACH ROW EXECUTE FUNCTION refuse_event();"
        );
        self.call(move |db| db.execute_batch(&sql))
            .await
            .expect("install the refusing trigger");
    }

    /// Every later commit that added an event to the inbox fails, as a commit on a full disk
    /// would: each insert leaves a deferred foreign key violation, which only the commit checks
    /// (the error says "foreign key", in either case).
    pub(crate) async fn fail_commits_on_any_backend_for_tests(&self) {
        if self.is_sqlite_for_tests().await {
            return self.fail_commits_for_tests().await;
        }
        self.call(|db| {
            db.execute_batch(
                "CREATE TABLE commit_guard (id BIGINT PRIMARY KEY);
                 CREATE TABLE commit_breaker (
                     guard BIGINT REFERENCES commit_guard (id) DEFERRABLE INITIALLY DEFERRED);
                 CREATE FUNCTION break_commit() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO commit_breaker (guard) VALUES (1); RETURN NULL; END $$;
                 CREATE TRIGGER break_commit AFTER INSERT ON inbox
                 FOR EACH ROW EXECUTE FUNCTION break_commit();",
            )
        })
        .await
        .expect("install the failing commit");
    }

    async fn is_sqlite_for_tests(&self) -> bool {
        self.call(|db| Ok(db.backend() == sql::Backend::Sqlite))
            .await
            .expect("the backend")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::TestBackend;

    fn event(event_id: &str) -> InboxWrite {
        InboxWrite::Event {
            event_id: event_id.to_owned(),
            kind: "platform",
            topic: "job:ready".to_owned(),
            body: format!("{{\"id\":\"{event_id}\"}}").into_bytes(),
            received_at_ms: 1,
        }
    }

    fn outcomes(group: Vec<Result<InboxOutcome, StateError>>) -> Vec<Option<InboxOutcome>> {
        group.into_iter().map(Result::ok).collect()
    }

    #[tokio::test]
    async fn a_group_stores_each_event_once_and_answers_repeats_as_known() {
        for backend in TestBackend::both("group_repeats") {
            let db = backend.state();
            db.insert_event("e0".into(), "platform", "t".into(), b"{}".to_vec(), 0)
                .await
                .expect("stored before");
            let group = db
                .write_group(vec![event("e0"), event("e1"), event("e1"), event("e2")])
                .await
                .expect("committed");
            assert_eq!(
                outcomes(group),
                [false, true, false, true].map(|new| Some(InboxOutcome::Event(new))),
                "{backend:?}"
            );
            assert_eq!(db.pending_events().await.unwrap(), ["e0", "e1", "e2"]);
            assert_eq!(db.event("e0").await.unwrap().expect("kept").body, b"{}");
        }
    }

    #[test]
    fn inserts_take_powers_of_two_of_rows_up_to_the_most() {
        let taken = |mut left: usize| {
            let mut sizes = Vec::new();
            while left > 0 {
                sizes.push(rows_per_insert(left));
                left -= sizes.last().copied().expect("one taken");
            }
            sizes
        };
        assert_eq!(taken(1), [1]);
        assert_eq!(taken(31), [16, 8, 4, 2, 1]);
        assert_eq!(taken(256), [256]);
        assert_eq!(taken(600), [256, 256, 64, 16, 8]);
        assert_eq!(
            insert_sql(2).matches("?1,").count(),
            2,
            "each row takes the shared status"
        );
        assert!(insert_sql(2).contains("(?7, ?8, ?9, ?10, ?11, ?1, ?11)"));
    }

    #[tokio::test]
    async fn a_large_group_answers_each_write_as_written_one_by_one() {
        for backend in TestBackend::both("group_large") {
            let db = backend.state();
            db.insert_event("e3".into(), "platform", "t".into(), b"{}".to_vec(), 0)
                .await
                .expect("stored before");
            // 44 events, inserted 32, 8 and 4 at a time on PostgreSQL: a repeat within an
            // insert (e7), repeats across inserts (e1, e38) and an event stored before (e3).
            let mut writes: Vec<InboxWrite> = (0..31).map(|n| event(&format!("e{n}"))).collect();
            writes.push(event("e7"));
            writes.extend((31..39).map(|n| event(&format!("e{n}"))));
            writes.extend(["e1", "e38", "e3", "e39"].map(event));
            let mut expected: Vec<bool> = (0..31).map(|n| n != 3).collect();
            expected.push(false);
            expected.extend([true; 8]);
            expected.extend([false, false, false, true]);
            let group = db.write_group(writes).await.expect("committed");
            assert_eq!(
                outcomes(group),
                expected
                    .into_iter()
                    .map(|new| Some(InboxOutcome::Event(new)))
                    .collect::<Vec<_>>(),
                "{backend:?}"
            );
            let pending = db.pending_events().await.unwrap();
            assert_eq!(pending.len(), 40, "{backend:?}");
            assert_eq!(db.event("e3").await.unwrap().expect("kept").body, b"{}");
            assert_eq!(
                db.event("e39").await.unwrap().expect("stored").body,
                b"{\"id\":\"e39\"}"
            );
        }
    }

    #[tokio::test]
    async fn one_refused_write_leaves_the_rest_of_its_group_committed() {
        for backend in TestBackend::both("group_refused") {
            let db = backend.state();
            db.refuse_event_on_any_backend_for_tests("bad").await;
            let group = db
                .write_group(vec![event("e1"), event("bad"), event("e2")])
                .await
                .expect("committed");
            let refused = group[1].as_ref().expect_err("refused");
            assert!(
                refused.to_string().contains("refused by the test"),
                "{backend:?}: {refused}"
            );
            assert_eq!(
                outcomes(group),
                [
                    Some(InboxOutcome::Event(true)),
                    None,
                    Some(InboxOutcome::Event(true))
                ],
                "{backend:?}"
            );
            assert_eq!(
                db.pending_events().await.unwrap(),
                ["e1", "e2"],
                "{backend:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_failed_commit_stores_nothing_of_its_group() {
        for backend in TestBackend::both("group_failed_commit") {
            let db = backend.state();
            db.fail_commits_on_any_backend_for_tests().await;
            let failed = db
                .write_group(vec![event("e1"), event("e2")])
                .await
                .expect_err("the commit fails");
            assert!(
                failed.to_string().to_lowercase().contains("foreign key"),
                "{backend:?}: {failed}"
            );
            assert!(db.pending_events().await.unwrap().is_empty(), "{backend:?}");
            assert!(db.event("e1").await.unwrap().is_none(), "{backend:?}");
        }
    }
}
