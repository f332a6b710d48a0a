//! Polling's own state: each environment's cursor (`poll_cursors`) and the events polled but
//! not yet acknowledged to Flatfile (`event_acks`). Polled events enter the inbox in the same
//! transaction that moves the cursor, so the cursor never passes an event not stored.

use super::inbox::insert_pending;
use super::sql::{OptionalExtension, params};
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
        self.call(move |db| {
            db.transaction(|tx| {
                let now = now_ms();
                let mut fresh = Vec::new();
                for e in &events {
                    let fresh_event =
                        insert_pending(tx, &e.event_id, "platform", &e.topic, &e.body, now)?;
                    tx.execute(
                        "INSERT INTO event_acks (event_id, environment_id) VALUES (?1, ?2)
                         ON CONFLICT DO NOTHING",
                        params![e.event_id, environment_id],
                    )?;
                    if fresh_event {
                        fresh.push((e.event_id.clone(), e.topic.clone()));
                    }
                }
                if let Some(cursor) = cursor_ms {
                    tx.execute(
                        "INSERT INTO poll_cursors (environment_id, since_ms, updated_at_ms)
                         VALUES (?1, ?2, ?3)
                         ON CONFLICT (environment_id) DO UPDATE SET
                             since_ms = GREATEST(poll_cursors.since_ms, excluded.since_ms),
                             updated_at_ms = excluded.updated_at_ms",
                        params![environment_id, cursor, now],
                    )?;
                }
                Ok(fresh)
            })
        })
        .await
    }

    /// The polling cursor of an environment: the newest `createdAt` seen, in ms.
    pub async fn poll_cursor(&self, environment_id: &str) -> Result<Option<i64>, StateError> {
        let id = environment_id.to_owned();
        self.call(move |db| {
            db.query_row(
                "SELECT since_ms FROM poll_cursors WHERE environment_id = ?1",
                params![id],
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |db| {
            // Oldest first: the order the acks were stored in (an identity column on
            // PostgreSQL).
            let sql = "SELECT event_id FROM event_acks
                       WHERE acked_at_ms IS NULL AND environment_id = ?1
                       ORDER BY rowid LIMIT ?2";
            db.query_map(sql, params![id, limit], |r| r.get(0))
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
        self.call(move |db| {
            match outcome {
                Ok(()) => db.execute(
                    "UPDATE event_acks SET acked_at_ms = ?2, attempts = attempts + 1,
                     last_error = NULL WHERE event_id = ?1",
                    params![id, now_ms()],
                )?,
                Err(error) => db.execute(
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

#[cfg(test)]
mod tests {
    use super::PolledEvent;
    use crate::state::testing::TestBackend;
    use crate::state::{EventStatus, StateDb};

    fn polled(event_id: &str) -> PolledEvent {
        PolledEvent {
            event_id: event_id.to_owned(),
            topic: "job:ready".to_owned(),
            body: format!("{{\"id\":\"{event_id}\"}}").into_bytes(),
        }
    }

    fn ids(fresh: Vec<(String, String)>) -> Vec<String> {
        fresh.into_iter().map(|(id, _)| id).collect()
    }

    #[tokio::test]
    async fn polled_events_are_stored_once_and_the_cursor_never_moves_back() {
        for backend in TestBackend::both("poll_cursor") {
            let db = backend.state();
            db.insert_event("hooked".into(), "platform", "t".into(), b"{}".to_vec(), 1)
                .await
                .unwrap();
            let fresh = db
                .insert_polled("env", vec![polled("p1"), polled("hooked")], Some(500))
                .await
                .unwrap();
            assert_eq!(
                fresh,
                [("p1".to_owned(), "job:ready".to_owned())],
                "{backend:?}: an event the webhook stored is not new"
            );
            assert_eq!(
                db.event("hooked").await.unwrap().expect("kept").body,
                b"{}",
                "{backend:?}"
            );
            let again = db
                .insert_polled("env", vec![polled("p1"), polled("p2")], Some(300))
                .await
                .unwrap();
            assert_eq!(ids(again), ["p2"], "{backend:?}");
            assert_eq!(
                db.poll_cursor("env").await.unwrap(),
                Some(500),
                "{backend:?}: the cursor never moves back"
            );
            db.insert_polled("env", Vec::new(), Some(900))
                .await
                .unwrap();
            assert_eq!(db.poll_cursor("env").await.unwrap(), Some(900));
            db.insert_polled("env", vec![polled("p3")], None)
                .await
                .unwrap();
            assert_eq!(db.poll_cursor("env").await.unwrap(), Some(900));
            assert_eq!(db.poll_cursor("other").await.unwrap(), None);
            assert_eq!(
                db.event("p3").await.unwrap().expect("stored").status,
                EventStatus::Pending
            );
        }
    }

    #[tokio::test]
    async fn acknowledgements_wait_until_one_succeeds_oldest_first() {
        for backend in TestBackend::both("poll_acks") {
            let db = backend.state();
            db.insert_polled("env", vec![polled("a"), polled("b")], None)
                .await
                .unwrap();
            // A later poll, so a later receipt time on every backend.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            db.insert_polled("env", vec![polled("0-later")], None)
                .await
                .unwrap();
            db.insert_polled("env-2", vec![polled("elsewhere")], None)
                .await
                .unwrap();
            let unacked = |db: &StateDb, limit| {
                let db = db.clone();
                async move { db.unacked_events("env", limit).await.unwrap() }
            };
            assert_eq!(
                unacked(&db, 2).await,
                ["a", "b"],
                "{backend:?}: the event polled last waits"
            );
            db.set_acked("a", Err("503 from Flatfile".into()))
                .await
                .unwrap();
            db.set_acked("b", Ok(())).await.unwrap();
            assert_eq!(
                unacked(&db, usize::MAX).await,
                ["a", "0-later"],
                "{backend:?}: a failed acknowledgement is tried again"
            );
            db.set_acked("a", Ok(())).await.unwrap();
            assert_eq!(unacked(&db, usize::MAX).await, ["0-later"], "{backend:?}");
            assert_eq!(db.unacked_events("env-2", 10).await.unwrap(), ["elsewhere"]);
        }
    }

    #[tokio::test]
    async fn a_poll_that_cannot_store_an_event_moves_nothing() {
        for backend in TestBackend::both("poll_atomic") {
            let db = backend.state();
            db.insert_polled("env", vec![polled("p0")], Some(100))
                .await
                .unwrap();
            db.refuse_event_on_any_backend_for_tests("bad").await;
            let failed = db
                .insert_polled("env", vec![polled("p1"), polled("bad")], Some(200))
                .await
                .expect_err("refused");
            assert!(
                failed.to_string().contains("refused by the test"),
                "{backend:?}: {failed}"
            );
            assert_eq!(
                db.poll_cursor("env").await.unwrap(),
                Some(100),
                "{backend:?}"
            );
            assert!(db.event("p1").await.unwrap().is_none(), "{backend:?}");
            assert_eq!(
                db.unacked_events("env", 10).await.unwrap(),
                ["p0"],
                "{backend:?}: no acknowledgement of an event not stored"
            );
        }
    }
}
