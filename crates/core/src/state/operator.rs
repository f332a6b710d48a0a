//! The operator commands' handle on the state database ([`OperatorDb`]): opened by a separate
//! process while a daemon may run, read-only for the commands that only read and read-write
//! (never creating the file) for the ones that change it. It waits up to 5 s for the daemon's
//! locks and never touches the journal mode. Reads go through [`OperatorDb::read`], one
//! snapshot each; a change is one short `BEGIN IMMEDIATE` transaction
//! ([`OperatorDb::change`]), so the daemon sees all of it or none.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::repair::Change;
use super::report::Snapshot;
use super::tx::Tx;
use super::{SCHEMA_VERSION, StateDb, StateError};

/// How long an operator command waits for the daemon's locks.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the state database of one state directory, for operator commands.
#[derive(Debug)]
pub struct OperatorDb {
    path: PathBuf,
    conn: Connection,
}

impl OperatorDb {
    /// Opens `<state_dir>/state.db` read-only, for the commands that only read.
    pub fn open_read_only(state_dir: &Path) -> Result<OperatorDb, StateError> {
        OperatorDb::open(state_dir, OpenFlags::SQLITE_OPEN_READ_ONLY)
    }

    /// Opens `<state_dir>/state.db` read-write, for replay and dead-letter changes. The file
    /// must exist: a mistyped directory must not get a fresh empty database.
    pub fn open_for_update(state_dir: &Path) -> Result<OperatorDb, StateError> {
        OperatorDb::open(state_dir, OpenFlags::SQLITE_OPEN_READ_WRITE)
    }

    fn open(state_dir: &Path, mode: OpenFlags) -> Result<OperatorDb, StateError> {
        let path = state_dir.join(StateDb::FILE_NAME);
        if !path.is_file() {
            return Err(StateError::NoDatabase { path });
        }
        let err = |error| StateError::Sqlite {
            path: path.clone(),
            error,
        };
        let conn = Connection::open_with_flags(&path, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        if found != SCHEMA_VERSION {
            let hint = if found > SCHEMA_VERSION {
                "it was written by a newer flatsync; use that version's commands"
            } else if found == 0 {
                "it is not a flatsync state database, or an empty one"
            } else {
                "start the daemon of this flatsync version once to upgrade it"
            };
            return Err(StateError::Schema { path, found, hint });
        }
        Ok(OperatorDb { path, conn })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on one read snapshot: every number it reads comes from the same moment.
    pub fn read<T, E: From<StateError>>(
        &self,
        f: impl FnOnce(&Snapshot<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| self.error(e))?;
        let value = f(&Snapshot::new(Tx {
            conn: &tx,
            path: &self.path,
        }))?;
        tx.finish().map_err(|e| self.error(e))?;
        Ok(value)
    }

    /// Runs `f` in one write transaction (`BEGIN IMMEDIATE`), committed when `f` returns
    /// `Ok` and rolled back when it returns `Err`.
    pub fn change<T, E: From<StateError>>(
        &mut self,
        f: impl FnOnce(&Change<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let path = self.path.clone();
        let error = |error| StateError::Sqlite {
            path: path.clone(),
            error,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(error)?;
        let value = f(&Change::new(Tx {
            conn: &tx,
            path: &path,
        }))?;
        tx.commit().map_err(error)?;
        Ok(value)
    }

    fn error(&self, error: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.clone(),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_only_handle_cannot_write_and_leaves_the_journal_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(dir.path()).expect("open");
        db.insert_event("e".into(), "legacy", "t".into(), b"{}".to_vec(), 1)
            .await
            .expect("insert");
        let read_only = OperatorDb::open_read_only(dir.path()).expect("open read-only");
        let err = read_only
            .conn
            .execute("DELETE FROM inbox", [])
            .expect_err("read-only");
        assert!(err.to_string().contains("readonly"), "{err}");
        let mode: String = read_only
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal mode");
        assert_eq!(mode, "wal", "the daemon's journal mode is left as it is");
    }
}
