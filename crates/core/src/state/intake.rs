//! Group commit of what webhooks bring: events and parts of carried uploads, many writes in
//! one transaction so that one sync makes them all durable ([`StateDb::write_group`]).

use flatsync_flatfile::CarriedPart;

use super::carried::{CompletionRule, PartOutcome, store_part};
use super::inbox::insert_pending;
use super::sql::{self, Db, DbError};
use super::{StateDb, StateError};

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
    if let InboxWrite::Event {
        event_id,
        kind,
        topic,
        body,
        received_at_ms,
    } = write
        && db.as_sqlite().is_some()
    {
        return insert_pending(db, event_id, kind, topic, body, *received_at_ms)
            .map(InboxOutcome::Event);
    }
    db.savepoint(|db| match write {
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
    })
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
                for write in &writes {
                    match write_one(db, write) {
                        Ok(outcome) => outcomes.push(Ok(outcome)),
                        Err(error) if breaks_the_group(db, &error) => return Err(error),
                        Err(error) => outcomes.push(Err(StateError::Database {
                            at: at.clone(),
                            error,
                        })),
                    }
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
