//! The inbox: every accepted event with its body as received and its [`EventStatus`]. An
//! event is stored before its sender is answered 2xx; the pipeline works on `pending` ones.

use super::sql::{self, Db, OptionalExtension, Row, params};
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
    db: &mut Db,
    event_id: &str,
    kind: &str,
    topic: &str,
    body: &[u8],
    received_at_ms: i64,
) -> sql::Result<bool> {
    let n = db.execute(
        "INSERT INTO inbox
         (event_id, kind, topic, body, received_at_ms, status, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5) ON CONFLICT DO NOTHING",
        params![
            event_id,
            kind,
            topic,
            body,
            received_at_ms,
            EventStatus::Pending
        ],
    )?;
    Ok(n == 1)
}

/// Sets an event's status and detail.
pub(super) fn set_status(
    db: &mut Db,
    event_id: &str,
    status: EventStatus,
    detail: Option<&str>,
    now: i64,
) -> sql::Result<()> {
    db.execute(
        "UPDATE inbox SET status = ?2, detail = ?3, updated_at_ms = ?4 WHERE event_id = ?1",
        params![event_id, status, detail, now],
    )?;
    Ok(())
}

impl StateDb {
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
        self.call_intake(move |db| {
            insert_pending(db, &event_id, kind, &topic, &body, received_at_ms)
        })
        .await
    }

    /// Ids of events that still need work, oldest first.
    pub async fn pending_events(&self) -> Result<Vec<String>, StateError> {
        self.pending_events_first(usize::MAX).await
    }

    /// The `limit` oldest of [`StateDb::pending_events`], so a caller's memory does not grow
    /// with the backlog.
    pub async fn pending_events_first(&self, limit: usize) -> Result<Vec<String>, StateError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |db| {
            db.query_map_in_index_order(
                "SELECT event_id FROM inbox WHERE status = ?1
                 ORDER BY received_at_ms, event_id LIMIT ?2",
                params![EventStatus::Pending, limit],
                |r| r.get(0),
            )
        })
        .await
    }

    /// One event, if known.
    pub async fn event(&self, event_id: &str) -> Result<Option<StoredEvent>, StateError> {
        let id = event_id.to_owned();
        self.call(move |db| {
            db.query_row(
                "SELECT event_id, kind, topic, body, received_at_ms, status, detail
                 FROM inbox WHERE event_id = ?1",
                params![id],
                stored_event,
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
        self.call(move |db| set_status(db, &id, status, detail.as_deref(), now_ms()))
            .await
    }

    /// Proves the connection answers: the main loop's liveness includes the database.
    pub async fn probe(&self) -> Result<(), StateError> {
        self.call(|db| db.query_row("SELECT 1", params![], |_| Ok(())))
            .await
    }

    /// How many events have `status`: a range of the status index, where
    /// [`Self::event_counts`] reads every event the inbox ever kept (done events are kept).
    pub async fn count_with_status(&self, status: EventStatus) -> Result<u64, StateError> {
        self.call(move |db| count_status(db, status)).await
    }

    /// Counts of events by status.
    pub async fn event_counts(&self) -> Result<Vec<(EventStatus, u64)>, StateError> {
        self.call(|db| {
            db.query_map(
                "SELECT status, COUNT(*) FROM inbox GROUP BY status ORDER BY status",
                params![],
                |r| Ok((r.get(0)?, r.get::<_, u64>(1)?)),
            )
        })
        .await
    }
}

/// Events with `status`, counted on the status index's range of it: the start's log, the
/// `/metrics` gauge and the service manager's status line.
pub(crate) fn count_status(db: &mut Db, status: EventStatus) -> sql::Result<u64> {
    db.query_row(
        "SELECT COUNT(*) FROM inbox WHERE status = ?1",
        params![status],
        |r| r.get::<_, u64>(0),
    )
}

/// Faults a test puts into the state database to see what a group commit does with them.
#[cfg(test)]
impl StateDb {
    /// Every later commit that added an event to the inbox fails, as a commit on a full disk
    /// would: each insert leaves a deferred foreign key violation, which only the commit checks.
    pub(crate) async fn fail_commits_for_tests(&self) {
        self.call_rusqlite(|c| {
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
        self.call_rusqlite(move |c| c.execute_batch(&sql))
            .await
            .expect("install the refusing trigger");
    }
}

/// An inbox row read as `event_id, kind, topic, body, received_at_ms, status, detail`.
pub(super) fn stored_event(r: &Row<'_>) -> sql::Result<StoredEvent> {
    Ok(StoredEvent {
        event_id: r.get(0)?,
        kind: r.get(1)?,
        topic: r.get(2)?,
        body: r.get(3)?,
        received_at_ms: r.get(4)?,
        status: r.get(5)?,
        detail: r.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::TestBackend;

    #[tokio::test]
    async fn the_inbox_keeps_one_event_per_id_and_its_status_on_both_backends() {
        for backend in TestBackend::both("inbox") {
            let db = backend.state();
            let insert = |id: &str, at: i64, body: &[u8]| {
                db.insert_event(id.into(), "platform", "job:ready".into(), body.to_vec(), at)
            };
            assert!(insert("e2", 20, b"{\"n\":2}").await.unwrap());
            assert!(insert("e1", 10, b"\x00\xff").await.unwrap());
            assert!(!insert("e1", 30, b"other").await.unwrap(), "a duplicate id");
            assert_eq!(
                db.pending_events_first(1).await.unwrap(),
                vec!["e1".to_owned()]
            );
            db.set_event_status("e1", EventStatus::Failed, Some("sink x: broken".into()))
                .await
                .unwrap();
            let e1 = db.event("e1").await.unwrap().expect("stored");
            assert_eq!(e1.body, b"\x00\xff", "the first body, byte for byte");
            assert_eq!(
                (e1.status, e1.detail.as_deref()),
                (EventStatus::Failed, Some("sink x: broken"))
            );
            assert!(db.event("nope").await.unwrap().is_none());
            assert_eq!(db.pending_events().await.unwrap(), vec!["e2".to_owned()]);
            assert_eq!(
                db.event_counts().await.unwrap(),
                vec![(EventStatus::Failed, 1), (EventStatus::Pending, 1)]
            );
            for (status, count) in [(EventStatus::Pending, 1), (EventStatus::Failed, 1)] {
                assert_eq!(
                    db.count_with_status(status).await.unwrap(),
                    count,
                    "{status}: e2 pending, e1 failed"
                );
            }
            assert_eq!(db.count_with_status(EventStatus::Done).await.unwrap(), 0);
            db.probe().await.unwrap();
            drop(db);
            let reopened = backend.state();
            assert_eq!(
                reopened.event("e2").await.unwrap().expect("durable").body,
                b"{\"n\":2}"
            );
        }
    }
}
