//! Group commit of what webhooks bring: events and parts of carried uploads, many writes in
//! one transaction so that one sync makes them all durable ([`StateDb::write_group`]).

use flatsync_flatfile::CarriedPart;
use rusqlite::TransactionBehavior;

use super::carried::{CompletionRule, PartOutcome, store_part};
use super::inbox::rusqlite_era::insert_pending;
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
        self.call_rusqlite(move |c| {
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
