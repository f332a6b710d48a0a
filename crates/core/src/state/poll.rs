//! Polling's own state: each environment's cursor (`poll_cursors`) and the events polled but
//! not yet acknowledged to Flatfile (`event_acks`). Polled events enter the inbox in the same
//! transaction that moves the cursor, so the cursor never passes an event not stored.

use rusqlite::{OptionalExtension, params};

use super::inbox::rusqlite_era::insert_pending;
use super::{StateDb, StateError, now_ms};

/// A polled event on its way into the inbox, with the environment whose cursor found it.
#[derive(Clone, Debug)]
pub struct PolledEvent {
    /// Event id.
    pub event_id: String,
    /// Topic.
    pub topic: String,
    /// The event as JSON.
    pub body: Vec<u8>,
}

impl StateDb {
    /// Stores polled events and their pending acknowledgements in one transaction, then moves
    /// the environment's cursor to `cursor_ms` (never backwards). Returns the ids and topics of
    /// the events that were new; the others were in the inbox already (from the webhook or an
    /// earlier poll).
    pub async fn insert_polled(
        &self,
        environment_id: &str,
        events: Vec<PolledEvent>,
        cursor_ms: Option<i64>,
    ) -> Result<Vec<(String, String)>, StateError> {
        let environment_id = environment_id.to_owned();
        self.call_rusqlite(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            let mut fresh = Vec::new();
            for e in events {
                let fresh_event =
                    insert_pending(&tx, &e.event_id, "platform", &e.topic, &e.body, now)?;
                tx.execute(
                    "INSERT OR IGNORE INTO event_acks (event_id, environment_id) VALUES (?1, ?2)",
                    params![e.event_id, environment_id],
                )?;
                if fresh_event {
                    fresh.push((e.event_id, e.topic));
                }
            }
            if let Some(cursor) = cursor_ms {
                tx.execute(
                    "INSERT INTO poll_cursors (environment_id, since_ms, updated_at_ms)
                     VALUES (?1, ?2, ?3)
                     ON CONFLICT (environment_id) DO UPDATE SET
                         since_ms = max(since_ms, excluded.since_ms),
                         updated_at_ms = excluded.updated_at_ms",
                    params![environment_id, cursor, now],
                )?;
            }
            tx.commit()?;
            Ok(fresh)
        })
        .await
    }

    /// The polling cursor of an environment: the newest `createdAt` seen, in ms.
    pub async fn poll_cursor(&self, environment_id: &str) -> Result<Option<i64>, StateError> {
        let id = environment_id.to_owned();
        self.call_rusqlite(move |c| {
            c.query_row(
                "SELECT since_ms FROM poll_cursors WHERE environment_id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// Events of an environment stored in the inbox but not yet acknowledged to Flatfile.
    pub async fn unacked_events(
        &self,
        environment_id: &str,
        limit: usize,
    ) -> Result<Vec<String>, StateError> {
        let id = environment_id.to_owned();
        self.call_rusqlite(move |c| {
            let mut stmt = c.prepare(
                "SELECT event_id FROM event_acks
                 WHERE acked_at_ms IS NULL AND environment_id = ?1
                 ORDER BY rowid LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![id, limit as i64], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    /// Records the outcome of an acknowledgement: `Ok` = acknowledged, `Err` = try again later.
    pub async fn set_acked(
        &self,
        event_id: &str,
        outcome: Result<(), String>,
    ) -> Result<(), StateError> {
        let id = event_id.to_owned();
        self.call_rusqlite(move |c| {
            match outcome {
                Ok(()) => c.execute(
                    "UPDATE event_acks SET acked_at_ms = ?2, attempts = attempts + 1,
                     last_error = NULL WHERE event_id = ?1",
                    params![id, now_ms()],
                )?,
                Err(error) => c.execute(
                    "UPDATE event_acks SET attempts = attempts + 1, last_error = ?2
                     WHERE event_id = ?1",
                    params![id, error],
                )?,
            };
            Ok(())
        })
        .await
    }
}
