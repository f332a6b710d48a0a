//! The connection of one operator transaction, shared by its reads (`report`) and its
//! changes (`repair`).

use std::cell::{Cell, RefCell};

use super::StateError;
use super::sql::{self, Backend, Db, DbError, Row, Value};

/// The transaction of one operator read or change, with the helpers its reads
/// ([`super::report::Snapshot`]) and changes ([`super::repair::Change`]) share.
///
/// The connection sits in a `RefCell` because the snapshot's and the change's methods take
/// `&self` (the commands hand `&Snapshot` / `&Change` to their closures and call several
/// methods on them); each method borrows it for one statement and never across a call back.
#[derive(Debug)]
pub(super) struct Tx<'a> {
    db: RefCell<&'a mut Db>,
    /// How errors name the database: the file, or the URL without its password.
    at: &'a str,
    /// A statement failed as a PostgreSQL serialization failure or deadlock: the whole
    /// change is worth running again (see [`super::OperatorDb::change`]).
    retryable: Cell<bool>,
}

impl<'a> Tx<'a> {
    pub(super) fn new(db: &'a mut Db, at: &'a str) -> Tx<'a> {
        Tx {
            db: RefCell::new(db),
            at,
            retryable: Cell::new(false),
        }
    }

    pub(super) fn error(&self, error: DbError) -> StateError {
        if let DbError::Postgres(e) = &error
            && e.code().is_some_and(|code| {
                *code == postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == postgres::error::SqlState::T_R_DEADLOCK_DETECTED
            })
        {
            self.retryable.set(true);
        }
        StateError::Database {
            at: self.at.to_owned(),
            error,
        }
    }

    /// Whether a statement of this transaction failed in a way that running it again may
    /// not repeat.
    pub(super) fn retryable(&self) -> bool {
        self.retryable.get()
    }

    /// Which engine the transaction runs on.
    pub(super) fn backend(&self) -> Backend {
        self.db.borrow().backend()
    }

    /// Runs `f` on the connection, naming the database in its error.
    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&mut Db) -> sql::Result<T>,
    ) -> Result<T, StateError> {
        let mut db = self.db.borrow_mut();
        f(&mut db).map_err(|e| self.error(e))
    }

    /// Runs `sql` and collects its rows.
    pub(super) fn rows<T>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        row: impl FnMut(&Row<'_>) -> sql::Result<T>,
    ) -> Result<Vec<T>, StateError> {
        self.with(|db| db.query_map(sql, params, row))
    }

    /// Runs `sql` and maps its first row; [`DbError::NoRows`] when there is none.
    pub(super) fn row<T>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        row: impl FnMut(&Row<'_>) -> sql::Result<T>,
    ) -> Result<Option<T>, StateError> {
        use sql::OptionalExtension;
        self.with(|db| db.query_row(sql, params, row).optional())
    }

    pub(super) fn execute(&self, sql: &str, params: &[Value<'_>]) -> Result<(), StateError> {
        self.with(|db| db.execute(sql, params)).map(drop)
    }

    /// `ORDER BY` terms that list deliveries (table alias `alias`) in the order they were
    /// inserted, newest last (or first, with `newest_first`): the rowid (an identity column on
    /// PostgreSQL).
    pub(super) fn delivery_order(&self, alias: &str, newest_first: bool) -> String {
        let dir = if newest_first { " DESC" } else { "" };
        let prefix = if alias.is_empty() {
            String::new()
        } else {
            format!("{alias}.")
        };
        format!("{prefix}rowid{dir}")
    }
}
