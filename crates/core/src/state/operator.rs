//! The operator commands' handle on the state database ([`OperatorDb`]): opened by a separate
//! process while a daemon may run, read-only for the commands that only read and read-write
//! (never creating the database) for the ones that change it. On SQLite it waits up to 5 s for
//! the daemon's locks and never touches the journal mode. Reads go through
//! [`OperatorDb::read`], one snapshot each; a change is one short write transaction
//! ([`OperatorDb::change`]: SQLite's `BEGIN IMMEDIATE`, PostgreSQL's `SERIALIZABLE`), so the
//! daemon sees all of it or none.
//!
//! On PostgreSQL the handle's calls block on the synchronous client, which cannot run on a
//! thread of the async runtime: on a worker of a multi-threaded runtime (the CLI's) they hand
//! the worker's other tasks away first (`block_in_place`); on a single-threaded runtime they
//! must be made from a blocking thread.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::repair::Change;
use super::report::Snapshot;
use super::sql::{self, Backend, Db, DbError, PgTarget};
use super::tx::Tx;
use super::{SCHEMA_VERSION, StateDb, StateError, StateLocation};

/// How long an operator command waits for the daemon's locks.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a change PostgreSQL refused as a serialization failure (a daemon wrote the same
/// rows meanwhile) is run again before the failure is returned.
const CHANGE_RETRIES: u32 = 20;

/// A connection to the state database, for operator commands.
#[derive(Debug)]
pub struct OperatorDb {
    /// The file; for PostgreSQL, the URL without its password.
    path: PathBuf,
    /// `path` as errors show it.
    at: String,
    /// Behind a mutex only because [`OperatorDb::read`] takes `&self`: one command uses it
    /// from one thread at a time.
    db: Mutex<Db>,
    read_only: bool,
}

impl OperatorDb {
    /// Opens `<state_dir>/state.db` read-only, for the commands that only read.
    pub fn open_read_only(state_dir: &Path) -> Result<OperatorDb, StateError> {
        OperatorDb::open_file(state_dir, true)
    }

    /// Opens `<state_dir>/state.db` read-write, for replay and dead-letter changes. The file
    /// must exist: a mistyped directory must not get a fresh empty database.
    pub fn open_for_update(state_dir: &Path) -> Result<OperatorDb, StateError> {
        OperatorDb::open_file(state_dir, false)
    }

    /// Opens the state database at `location`, read-only for the commands that only read.
    /// The database must exist and have this build's schema version; nothing is created.
    pub(crate) fn open_location(
        location: &StateLocation,
        read_only: bool,
    ) -> Result<OperatorDb, StateError> {
        match location {
            StateLocation::Dir(dir) => OperatorDb::open_file(dir, read_only),
            StateLocation::Postgres(target) => {
                let target = target.clone();
                sql::off_runtime(move || OperatorDb::open_postgres(*target, read_only))
            }
        }
    }

    fn open_file(state_dir: &Path, read_only: bool) -> Result<OperatorDb, StateError> {
        let path = state_dir.join(StateDb::FILE_NAME);
        if !path.is_file() {
            return Err(StateError::NoDatabase { path });
        }
        let err = |error| StateError::Sqlite {
            path: path.clone(),
            error,
        };
        let mode = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        let conn = Connection::open_with_flags(&path, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        check_version(&path, found)?;
        Ok(OperatorDb {
            at: path.display().to_string(),
            path,
            db: Mutex::new(Db::sqlite(conn)),
            read_only,
        })
    }

    fn open_postgres(target: PgTarget, read_only: bool) -> Result<OperatorDb, StateError> {
        let at = target.redacted().to_owned();
        let err = |error| StateError::Database {
            at: at.clone(),
            error,
        };
        let mut db = Db::postgres(target).map_err(err)?;
        let found = db
            .read_snapshot(super::schema::postgres_version)
            .map_err(err)?;
        let path = PathBuf::from(&at);
        check_version(&path, found.unwrap_or(0))?;
        Ok(OperatorDb {
            path,
            at,
            db: Mutex::new(db),
            read_only,
        })
    }

    /// Whether this is a PostgreSQL state.
    pub fn is_postgres(&self) -> bool {
        let db = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        db.backend() == sql::Backend::Postgres
    }

    /// The database file; for PostgreSQL, its URL without the password.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on one read snapshot: every number it reads comes from the same moment.
    pub fn read<T, E: From<StateError>>(
        &self,
        f: impl FnOnce(&Snapshot<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut db = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        let backend = db.backend();
        let mut f = Some(f);
        let mut outcome = None;
        blocking_here(backend, || {
            db.read_snapshot(|db| {
                if let Some(f) = f.take() {
                    outcome = Some(f(&Snapshot::new(Tx::new(db, &self.at))));
                }
                // A read changes nothing, so ending the snapshot the same way after a failed
                // read loses nothing.
                Ok(())
            })
        })
        .map_err(|e| self.error(e))?;
        outcome.unwrap_or_else(|| Err(StateError::Task("the read did not run".to_owned()).into()))
    }

    /// Runs `f` in one write transaction, committed when `f` returns `Ok` and rolled back
    /// when it returns `Err`. On PostgreSQL, a transaction that collided with a daemon's
    /// writes (a serialization failure) is rolled back and `f` runs again, so `f` must not
    /// change anything outside the database. A read-only handle's change fails at its first
    /// write.
    pub fn change<T, E: From<StateError>>(
        &mut self,
        mut f: impl FnMut(&Change<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let at = self.at.as_str();
        let read_only = self.read_only;
        let db = self.db.get_mut().unwrap_or_else(PoisonError::into_inner);
        let backend = db.backend();
        blocking_here(backend, || change_in(db, at, read_only, &mut f))
    }

    fn error(&self, error: DbError) -> StateError {
        StateError::Database {
            at: self.at.clone(),
            error,
        }
    }
}

/// [`OperatorDb::change`] on `db`.
fn change_in<T, E: From<StateError>>(
    db: &mut Db,
    at: &str,
    read_only: bool,
    f: &mut impl FnMut(&Change<'_>) -> Result<T, E>,
) -> Result<T, E> {
    let mut attempt = 0;
    loop {
        let mut refused = None;
        let mut retryable = false;
        let result = db.transaction(|db| {
            refused = None;
            if read_only && db.backend() == Backend::Postgres {
                // SQLite's read-only file refuses writes by itself.
                db.execute_batch("SET TRANSACTION READ ONLY")?;
            }
            let change = Change::new(Tx::new(db, at));
            match f(&change) {
                Ok(value) => Ok(value),
                Err(e) => {
                    retryable = change.tx.retryable();
                    refused = Some(e);
                    // Only makes the transaction roll back; `refused` is what is returned.
                    Err(DbError::column(0, "the operator change failed"))
                }
            }
        });
        match (result, refused) {
            (Ok(value), _) => return Ok(value),
            (Err(_), Some(_)) if retryable && attempt < CHANGE_RETRIES => {
                attempt += 1;
                // A little jitter, so that the change does not collide again at once.
                std::thread::sleep(Duration::from_millis(fastrand::u64(
                    1..=5 * u64::from(attempt),
                )));
            }
            (Err(_), Some(e)) => return Err(e),
            (Err(error), None) => {
                return Err(StateError::Database {
                    at: at.to_owned(),
                    error,
                }
                .into());
            }
        }
    }
}

/// Runs `f`, which blocks on the database, on this thread; on PostgreSQL from a worker of a
/// multi-threaded runtime, after handing the worker's other tasks away, since the synchronous
/// client cannot run inside the runtime (see the module documentation).
fn blocking_here<T>(backend: Backend, f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle)
            if backend == Backend::Postgres
                && handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
        {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Refuses a database whose schema version (`found`; 0 when it has none) is not this
/// build's, with what to do about it.
fn check_version(path: &Path, found: i64) -> Result<(), StateError> {
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let hint = if found > SCHEMA_VERSION {
        "it was written by a newer flatsync; use that version's commands"
    } else if found == 0 {
        "it is not a flatsync state database, or an empty one"
    } else {
        "start the daemon of this flatsync version once to upgrade it"
    };
    Err(StateError::Schema {
        path: path.to_owned(),
        found,
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::sql::params;
    use crate::state::testing::TestBackend;
    use crate::state::{DeliveryStatus, EventStatus};

    #[tokio::test]
    async fn a_read_only_handle_cannot_write_and_leaves_the_journal_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(dir.path()).expect("open");
        db.insert_event("e".into(), "legacy", "t".into(), b"{}".to_vec(), 1)
            .await
            .expect("insert");
        let read_only = OperatorDb::open_read_only(dir.path()).expect("open read-only");
        let mut conn = read_only.db.lock().expect("lock");
        let err = conn
            .execute("DELETE FROM inbox", params![])
            .expect_err("read-only");
        assert!(err.to_string().contains("readonly"), "{err}");
        let mode: String = conn
            .as_sqlite()
            .expect("an SQLite handle")
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal mode");
        assert_eq!(mode, "wal", "the daemon's journal mode is left as it is");
    }

    /// Runs `f` where the synchronous PostgreSQL client may block, as the commands do.
    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(f).await.expect("blocking task")
    }

    #[tokio::test]
    async fn a_read_only_handle_refuses_changes_on_both_backends() {
        for backend in TestBackend::both("operator_read_only") {
            let state = backend.state();
            state
                .insert_event("e".into(), "legacy", "t".into(), b"{}".to_vec(), 1)
                .await
                .expect("insert");
            let location = backend.location();
            let (refused, status) = blocking(move || {
                let mut read_only =
                    OperatorDb::open_location(&location, true).expect("open read-only");
                let refused = read_only
                    .change(|tx| tx.set_event_status("e", EventStatus::Failed, Some("x"), 2))
                    .expect_err("a read-only handle changes nothing");
                let status = read_only
                    .read(|s| s.event_statuses())
                    .expect("read statuses");
                (refused.to_string(), status)
            })
            .await;
            let refused = refused.to_lowercase();
            assert!(
                refused.contains("readonly") || refused.contains("read-only"),
                "{backend:?}: {refused}"
            );
            assert_eq!(
                status,
                vec![("e".to_owned(), EventStatus::Pending)],
                "{backend:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_database_of_another_version_or_none_is_refused_with_a_hint() {
        for backend in TestBackend::both("operator_version") {
            let location = backend.location();
            let mut bare = backend.db();
            let empty = {
                let location = location.clone();
                blocking(move || OperatorDb::open_location(&location, true).map(drop)).await
            };
            match (&backend, empty) {
                (TestBackend::Sqlite(_), Err(StateError::NoDatabase { .. })) => {}
                (TestBackend::Postgres(_), Err(StateError::Schema { found: 0, hint, .. })) => {
                    assert!(hint.contains("not a flatsync state database"), "{hint}");
                }
                (_, other) => panic!("{backend:?}: an empty database was opened: {other:?}"),
            }
            drop(backend.state());
            let newer = SCHEMA_VERSION + 1;
            blocking(move || match bare.backend() {
                Backend::Sqlite => drop(bare),
                Backend::Postgres => {
                    bare.execute("UPDATE flatsync_schema SET version = ?1", params![newer])
                        .expect("set a newer version");
                }
            })
            .await;
            if let TestBackend::Sqlite(dir) = &backend {
                let conn = Connection::open(dir.path().join(StateDb::FILE_NAME)).expect("open");
                conn.pragma_update(None, "user_version", newer)
                    .expect("set a newer version");
            }
            let err = blocking(move || OperatorDb::open_location(&location, false).map(drop))
                .await
                .expect_err("a newer schema is refused");
            assert!(
                matches!(&err, StateError::Schema { found, .. } if *found == newer),
                "{backend:?}: {err}"
            );
            assert!(
                err.to_string().contains("newer flatsync"),
                "{backend:?}: {err}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_that_collides_with_a_daemon_write_on_postgresql_runs_again() {
        let backend = TestBackend::postgres("operator_retry");
        let state = backend.state();
        state
            .insert_event("e".into(), "legacy", "t".into(), b"{}".to_vec(), 1)
            .await
            .expect("insert");
        state
            .call(|db| {
                db.execute(
                    "INSERT INTO deliveries
                     (event_id, sink, status, rows, error, generation, updated_at_ms)
                     VALUES ('e', 'a', 'failed', 0, 'boom', 0, 1)",
                    params![],
                )
            })
            .await
            .expect("a dead letter");
        let mut daemon = backend.db();
        let mut operator = OperatorDb::open_location(&backend.location(), false).expect("open");
        let mut attempts = 0;
        operator
            .change(|tx| {
                attempts += 1;
                let letters = tx.failed_deliveries(Some("e"), None)?;
                if attempts == 1 {
                    // The daemon writes the same delivery after this change read it.
                    daemon
                        .execute(
                            "UPDATE deliveries SET rows = 7 WHERE event_id = 'e'",
                            params![],
                        )
                        .map_err(|error| StateError::Database {
                            at: "daemon".to_owned(),
                            error,
                        })?;
                }
                for letter in letters {
                    tx.set_dead_letter(&letter.event_id, &letter.sink, DeliveryStatus::Pending, 2)?;
                }
                Ok::<_, StateError>(())
            })
            .expect("the change succeeds when run again");
        assert_eq!(attempts, 2, "the collision ran the change once more");
        let rows: Vec<(String, i64, Option<String>)> = state
            .call(|db| {
                db.query_map(
                    "SELECT status, rows, error FROM deliveries WHERE event_id = 'e'",
                    params![],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
            })
            .await
            .expect("read the delivery");
        assert_eq!(
            rows,
            [("pending".to_owned(), 7, None)],
            "the retried change applied on top of the daemon's write"
        );
    }
}
