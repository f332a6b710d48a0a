//! The inbox: every accepted event with its body as received and its [`EventStatus`]. An
//! event is stored before its sender is answered 2xx; the pipeline works on `pending` ones.

use flatsync_flatfile::CarriedPart;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::carried::{CompletionRule, PartOutcome, store_part};
use super::{EventStatus, StateDb, StateError, now_ms};

/// Inbox `kind` of an upload whose rows came in webhook bodies (`carried_parts`), stored
/// when its last part arrived.
pub(crate) const CARRIED_KIND: &str = "carried";

/// An event as the inbox keeps it.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    /// Event id (Flatfile's, or derived for legacy notifications without one).
    pub event_id: String,
    /// `legacy` or `platform`.
    pub kind: String,
    /// Topic used for routing.
    pub topic: String,
    /// The body exactly as received.
    pub body: Vec<u8>,
    /// Receipt time, ms since the Unix epoch.
    pub received_at_ms: i64,
    /// Current status.
    pub status: EventStatus,
    /// Error or reason, for failed and skipped events.
    pub detail: Option<String>,
}

/// Stores an event as `pending` unless one with its id is there; whether it was new.
pub(super) fn insert_pending(
    c: &rusqlite::Connection,
    event_id: &str,
    kind: &str,
    topic: &str,
    body: &[u8],
    received_at_ms: i64,
) -> rusqlite::Result<bool> {
    // Cached: a group commit runs this once per webhook, thousands of times a second.
    let mut insert = c.prepare_cached(
        "INSERT OR IGNORE INTO inbox
         (event_id, kind, topic, body, received_at_ms, status, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5)",
    )?;
    let n = insert.execute(params![
        event_id,
        kind,
        topic,
        body,
        received_at_ms,
        EventStatus::Pending
    ])?;
    Ok(n == 1)
}

/// Sets an event's status and detail.
pub(super) fn set_status(
    c: &rusqlite::Connection,
    event_id: &str,
    status: EventStatus,
    detail: Option<&str>,
    now: i64,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE inbox SET status = ?2, detail = ?3, updated_at_ms = ?4 WHERE event_id = ?1",
        params![event_id, status, detail, now],
    )?;
    Ok(())
}

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

/// One write inside the group's transaction. A failed event insert is one statement, which
/// SQLite undoes by itself; a part takes several, so it runs in a savepoint that is rolled
/// back when it fails. Either way the other writes of the group stay.
fn write_one(
    tx: &mut rusqlite::Transaction<'_>,
    write: &InboxWrite,
) -> rusqlite::Result<InboxOutcome> {
    match write {
        InboxWrite::Event {
            event_id,
            kind,
            topic,
            body,
            received_at_ms,
        } => insert_pending(tx, event_id, kind, topic, body, *received_at_ms)
            .map(InboxOutcome::Event),
        InboxWrite::Part {
            key,
            part,
            complete,
        } => {
            let savepoint = tx.savepoint()?;
            // Dropped on an error: rolled back to where the part began.
            let outcome = store_part(&savepoint, key, part, *complete)?;
            savepoint.commit()?;
            Ok(InboxOutcome::Part(outcome))
        }
    }
}

impl StateDb {
    /// Commits a group of writes in one transaction, so one sync makes them all durable.
    ///
    /// `Ok` holds each write's own result, in order, and means the transaction committed: a
    /// write whose result is `Ok` is durable, one whose result is an error left nothing behind
    /// (the others were kept). `Err` means the group did not commit and none of it is stored:
    /// the write lock was not had within the busy timeout, the commit failed, or a write's
    /// failure made SQLite abandon the whole transaction (a full disk, an I/O error).
    pub(crate) async fn write_group(
        &self,
        writes: Vec<InboxWrite>,
    ) -> Result<Vec<Result<InboxOutcome, StateError>>, StateError> {
        let path = self.path.clone();
        self.call(move |c| {
            // IMMEDIATE: a database another process holds locked fails the group at once,
            // after one busy timeout, not each write after its own.
            let mut tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut outcomes = Vec::with_capacity(writes.len());
            for write in &writes {
                match write_one(&mut tx, write) {
                    Ok(outcome) => outcomes.push(Ok(outcome)),
                    // SQLite rolled the whole transaction back: nothing of the group stays.
                    Err(error) if tx.is_autocommit() => return Err(error),
                    Err(error) => outcomes.push(Err(StateError::Sqlite {
                        path: path.clone(),
                        error,
                    })),
                }
            }
            tx.commit()?;
            Ok(outcomes)
        })
        .await
    }

    /// Stores a newly received event. Returns `false` when an event with this id is already
    /// in the inbox (the body is then left as it was).
    pub async fn insert_event(
        &self,
        event_id: String,
        kind: &'static str,
        topic: String,
        body: Vec<u8>,
        received_at_ms: i64,
    ) -> Result<bool, StateError> {
        self.call(move |c| insert_pending(c, &event_id, kind, &topic, &body, received_at_ms))
            .await
    }

    /// Ids of events that still need work, oldest first.
    pub async fn pending_events(&self) -> Result<Vec<String>, StateError> {
        self.pending_events_first(usize::MAX).await
    }

    /// The `limit` oldest of [`StateDb::pending_events`], so a caller's memory does not grow
    /// with the backlog.
    pub async fn pending_events_first(&self, limit: usize) -> Result<Vec<String>, StateError> {
        // SQLite reads a negative LIMIT as "no limit".
        let limit = i64::try_from(limit).unwrap_or(-1);
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT event_id FROM inbox WHERE status = ?1
                 ORDER BY received_at_ms, event_id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![EventStatus::Pending, limit], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    /// One event, if known.
    pub async fn event(&self, event_id: &str) -> Result<Option<StoredEvent>, StateError> {
        let id = event_id.to_owned();
        self.call(move |c| {
            c.query_row(
                "SELECT event_id, kind, topic, body, received_at_ms, status, detail
                 FROM inbox WHERE event_id = ?1",
                [id],
                |r| {
                    Ok(StoredEvent {
                        event_id: r.get(0)?,
                        kind: r.get(1)?,
                        topic: r.get(2)?,
                        body: r.get(3)?,
                        received_at_ms: r.get(4)?,
                        status: r.get(5)?,
                        detail: r.get(6)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    /// Sets an event's status and detail.
    pub async fn set_event_status(
        &self,
        event_id: &str,
        status: EventStatus,
        detail: Option<String>,
    ) -> Result<(), StateError> {
        let id = event_id.to_owned();
        self.call(move |c| set_status(c, &id, status, detail.as_deref(), now_ms()))
            .await
    }

    /// Proves the connection answers: the main loop's liveness includes the database.
    pub async fn probe(&self) -> Result<(), StateError> {
        self.call(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    /// Counts of events by status.
    pub async fn event_counts(&self) -> Result<Vec<(EventStatus, u64)>, StateError> {
        self.call(|c| {
            let mut stmt =
                c.prepare("SELECT status, COUNT(*) FROM inbox GROUP BY status ORDER BY status")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
        .await
    }
}

/// Faults a test puts into the state database to see what a group commit does with them.
#[cfg(test)]
impl StateDb {
    /// Every later commit that added an event to the inbox fails, as a commit on a full disk
    /// would: each insert leaves a deferred foreign key violation, which only the commit checks.
    pub(crate) async fn fail_commits_for_tests(&self) {
        self.call(|c| {
            c.execute_batch(
                "PRAGMA foreign_keys = ON;
                 CREATE TEMP TABLE commit_guard (id INTEGER PRIMARY KEY);
                 CREATE TEMP TABLE commit_breaker (
                     guard INTEGER REFERENCES commit_guard (id) DEFERRABLE INITIALLY DEFERRED);
                 CREATE TEMP TRIGGER break_commit AFTER INSERT ON main.inbox
                 BEGIN INSERT INTO commit_breaker (guard) VALUES (1); END;",
            )
        })
        .await
        .expect("install the failing commit");
    }

    /// Inserting the event `event_id` fails, alone: the statement is aborted, not the
    /// transaction it is in.
    pub(crate) async fn refuse_event_for_tests(&self, event_id: &str) {
        let sql = format!(
            "CREATE TEMP TRIGGER refuse_event BEFORE INSERT ON main.inbox
             WHEN NEW.event_id = '{event_id}'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
        );
        self.call(move |c| c.execute_batch(&sql))
            .await
            .expect("install the refusing trigger");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(dir.path()).expect("open");
        db.insert_event("e0".into(), "platform", "t".into(), b"{}".to_vec(), 0)
            .await
            .expect("stored before");
        let group = db
            .write_group(vec![event("e0"), event("e1"), event("e1"), event("e2")])
            .await
            .expect("committed");
        assert_eq!(
            outcomes(group),
            [false, true, false, true].map(|new| Some(InboxOutcome::Event(new)))
        );
        assert_eq!(db.pending_events().await.unwrap(), ["e0", "e1", "e2"]);
        assert_eq!(db.event("e0").await.unwrap().expect("kept").body, b"{}");
    }

    #[tokio::test]
    async fn one_refused_write_leaves_the_rest_of_its_group_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(dir.path()).expect("open");
        db.refuse_event_for_tests("bad").await;
        let group = db
            .write_group(vec![event("e1"), event("bad"), event("e2")])
            .await
            .expect("committed");
        let refused = group[1].as_ref().expect_err("refused");
        assert!(
            refused.to_string().contains("refused by the test"),
            "{refused}"
        );
        assert_eq!(
            outcomes(group),
            [
                Some(InboxOutcome::Event(true)),
                None,
                Some(InboxOutcome::Event(true))
            ]
        );
        assert_eq!(db.pending_events().await.unwrap(), ["e1", "e2"]);
    }

    #[tokio::test]
    async fn a_failed_commit_stores_nothing_of_its_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(dir.path()).expect("open");
        db.fail_commits_for_tests().await;
        let failed = db
            .write_group(vec![event("e1"), event("e2")])
            .await
            .expect_err("the commit fails");
        assert!(failed.to_string().contains("FOREIGN KEY"), "{failed}");
        assert!(db.pending_events().await.unwrap().is_empty());
        assert!(db.event("e1").await.unwrap().is_none());
    }
}
