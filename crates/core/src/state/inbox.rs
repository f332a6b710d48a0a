//! The inbox: every accepted event with its body as received and its [`EventStatus`]. An
//! event is stored before its sender is answered 2xx; the pipeline works on `pending` ones.

use rusqlite::{OptionalExtension, params};

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

/// An inbox row read as `event_id, kind, topic, body, received_at_ms, status, detail`.
pub(super) fn stored_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
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
