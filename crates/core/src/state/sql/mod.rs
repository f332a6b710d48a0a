//! One connection to the state database, SQLite or PostgreSQL, behind one small interface, so
//! that the state code holds each query once and both backends keep the same invariants.
//!
//! # The SQL both backends run
//!
//! Queries are written once, in the subset of SQL that SQLite and PostgreSQL read alike, with
//! `?1`, `?2`… placeholders. [`Db`] rewrites the few spellings that differ before preparing:
//! - placeholders become `$1`, `$2`… for PostgreSQL;
//! - `GREATEST(`/`LEAST(` (two or more arguments) become SQLite's scalar `MAX(`/`MIN(`;
//! - ` FOR UPDATE SKIP LOCKED` is dropped for SQLite, whose writers are serialized anyway;
//! - `NOW_MS()` is the database's clock in milliseconds for PostgreSQL (so that daemons on
//!   several machines compare lease times on one clock) and the local clock for SQLite.
//!
//! What the subset leaves out, and how the state code writes it instead:
//! - integers are `BIGINT` in PostgreSQL: `SUM` is written `CAST(SUM(x) AS BIGINT)` (PostgreSQL
//!   sums `BIGINT`s into `NUMERIC`), flags are 0/1 integers compared with `= 1`, never bare;
//! - `INSERT OR IGNORE` is `INSERT ... ON CONFLICT DO NOTHING`, and an upsert's `SET` names the
//!   table's columns with the table (`GREATEST(checkpoints.rows, excluded.rows)`), which
//!   PostgreSQL requires;
//! - a parameter whose type PostgreSQL cannot infer (`?1 IS NULL`) is cast (`CAST(?1 AS TEXT)`);
//! - no `LIMIT -1`: pass `i64::MAX`;
//! - anything else that differs asks [`Db::backend`] and spells both.
//!
//! # Transactions
//!
//! [`Db::transaction`] is SQLite's `BEGIN IMMEDIATE` (one writer at a time, as before) and
//! PostgreSQL's `SERIALIZABLE` isolation: several daemons on one database then see the same
//! serial order a single SQLite file gives, and every invariant written for SQLite holds. A
//! transaction PostgreSQL aborts as a serialization failure or deadlock is run again, so its
//! closure is `FnMut`, with no effect outside the database. [`Db::savepoint`] undoes one
//! failed piece without the rest: PostgreSQL abandons a whole transaction on any failed
//! statement, SQLite only the statement.

mod pg;
mod value;

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

pub(crate) use pg::{DEFAULT_LEASE, PgTarget, Session, off_runtime};
pub(crate) use value::{FromColumn, ToValue, Value};

/// Which engine a [`Db`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// An error of either backend, or a column that does not hold what the code reads from it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused an operation.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused an operation, or the connection failed.
    #[error("{}", pg::describe(.0))]
    Postgres(#[from] postgres::Error),
    /// Another daemon holds the active role or an event claim this daemon's session held: its
    /// session ended (the daemon was paused or cut off past the lease) and everything it would
    /// still write is refused.
    #[error(
        "another daemon took over this state: this daemon's session ended (paused or cut off \
         past the lease) and it may no longer write"
    )]
    RoleLost,
    /// The connection to PostgreSQL broke inside a transaction: nothing of it was committed,
    /// and what was left of it did not run.
    #[error("the connection to PostgreSQL broke inside a transaction, which was not committed")]
    BrokenTransaction,
    /// A query that must return a row returned none.
    #[error("query returned no rows")]
    NoRows,
    /// A column's value is not what the code reads (a damaged or hand-edited row).
    #[error("column {column}: {detail}")]
    Column {
        /// The column's position in the query.
        column: usize,
        /// What was wrong.
        detail: String,
    },
}

impl DbError {
    /// Whether the database could not be reached or the connection broke: the operation may
    /// succeed later, unchanged.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Postgres(e) => pg::is_unavailable(e),
            DbError::BrokenTransaction => true,
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }

    /// A column value that cannot be read as the code expects.
    pub(crate) fn column(column: usize, detail: impl fmt::Display) -> DbError {
        DbError::Column {
            column,
            detail: detail.to_string(),
        }
    }
}

/// What a query returns: `Ok` or a [`DbError`].
pub(crate) type Result<T, E = DbError> = std::result::Result<T, E>;

/// `query_row(...).optional()`, as rusqlite spells it.
pub(crate) trait OptionalExtension<T> {
    /// `Ok(None)` for [`DbError::NoRows`].
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(DbError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Parameters of a query, each through [`ToValue`]: `params![id, status, now]`.
macro_rules! params {
    () => { &[] as &[$crate::state::sql::Value<'_>] };
    ($($param:expr),+ $(,)?) => {
        &[$($crate::state::sql::ToValue::to_value(&$param)),+] as &[$crate::state::sql::Value<'_>]
    };
}
pub(crate) use params;

/// One row of a result, read column by column with [`Row::get`].
#[derive(Debug)]
pub(crate) enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a postgres::Row),
}

/// A column's position; a trait (of `usize` alone) only so that rusqlite's spelling
/// `r.get::<_, i64>(0)` reads the same here.
pub(crate) trait ColumnIndex {
    /// The position, from 0.
    fn position(self) -> usize;
}

impl ColumnIndex for usize {
    fn position(self) -> usize {
        self
    }
}

impl Row<'_> {
    /// Column `idx` (from 0) as `T`.
    pub(crate) fn get<I: ColumnIndex, T: FromColumn>(&self, idx: I) -> Result<T> {
        let idx = idx.position();
        match self {
            Row::Sqlite(row) => T::from_sqlite(row.get_ref(idx)?, idx),
            Row::Postgres(row) => T::from_postgres(row, idx),
        }
    }
}

enum Conn {
    Sqlite(rusqlite::Connection),
    /// Boxed: a PostgreSQL client is several times an SQLite handle's size.
    Postgres(Box<pg::PgConn>),
}

/// One connection to the state database. Not shared between threads: the state handles keep
/// it behind a mutex and use it on blocking threads.
pub(crate) struct Db {
    conn: Conn,
    /// Open transactions and savepoints, so that a nested [`Db::transaction`] joins the
    /// outer one instead of failing on a second `BEGIN`.
    depth: u32,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend())
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

/// How often a transaction PostgreSQL aborted as a serialization failure is run again before
/// the failure is returned.
const SERIALIZATION_RETRIES: u32 = 20;

impl Db {
    /// Wraps an open SQLite connection.
    pub(crate) fn sqlite(conn: rusqlite::Connection) -> Db {
        conn.set_prepared_statement_cache_capacity(64);
        Db {
            conn: Conn::Sqlite(conn),
            depth: 0,
        }
    }

    /// Connects to PostgreSQL; a broken connection is replaced on the next query.
    pub(crate) fn postgres(target: PgTarget) -> Result<Db> {
        Db::postgres_session(target, Session::Intake)
    }

    /// Connects to PostgreSQL for `session`.
    pub(crate) fn postgres_session(target: PgTarget, session: Session) -> Result<Db> {
        Ok(Db {
            conn: Conn::Postgres(Box::new(pg::PgConn::connect(target, session)?)),
            depth: 0,
        })
    }

    /// Claims `event_id` for this connection when no other daemon's holds it. An SQLite file
    /// has one daemon: always `true`.
    pub(crate) fn claim_event(&mut self, event_id: &str) -> Result<bool> {
        match &mut self.conn {
            Conn::Sqlite(_) => Ok(true),
            Conn::Postgres(c) => c.claim_event(event_id),
        }
    }

    /// Lets go of a claimed event.
    pub(crate) fn release_event(&mut self, event_id: &str) -> Result<()> {
        match &mut self.conn {
            Conn::Sqlite(_) => Ok(()),
            Conn::Postgres(c) => c.release_event(event_id),
        }
    }

    /// Takes the active role (polling, grouped event rows) when no other daemon holds it; `true`
    /// while this connection holds it. An SQLite file has one daemon: always `true`.
    pub(crate) fn take_role(&mut self) -> Result<bool> {
        match &mut self.conn {
            Conn::Sqlite(_) => Ok(true),
            Conn::Postgres(c) => c.take_role(),
        }
    }

    /// Which engine this is.
    pub(crate) fn backend(&self) -> Backend {
        match self.conn {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Postgres(_) => Backend::Postgres,
        }
    }

    /// The SQLite connection, for what only SQLite has (pragmas, the integrity check and
    /// salvage); `None` on PostgreSQL.
    pub(crate) fn as_sqlite(&mut self) -> Option<&mut rusqlite::Connection> {
        match &mut self.conn {
            Conn::Sqlite(c) => Some(c),
            Conn::Postgres(_) => None,
        }
    }

    /// Runs one statement; the number of rows it changed.
    pub(crate) fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<usize> {
        match &mut self.conn {
            Conn::Sqlite(c) => Ok(c
                .prepare_cached(&sqlite_dialect(sql))?
                .execute(value::sqlite_params(params))?),
            Conn::Postgres(c) => c.execute(sql, params),
        }
    }

    /// Runs several statements without parameters (DDL).
    pub(crate) fn execute_batch(&mut self, sql: &str) -> Result<()> {
        match &mut self.conn {
            Conn::Sqlite(c) => Ok(c.execute_batch(&sqlite_dialect(sql))?),
            Conn::Postgres(c) => c.batch_execute(sql),
        }
    }

    /// [`Db::query_map`] for a keyed walk of an index (`ORDER BY` the index's columns after an
    /// equality on its first, with a `LIMIT`), with PostgreSQL's planner kept from sorting.
    ///
    /// Its estimates of a backlog come from statistics taken before the backlog was there
    /// (autovacuum analyzes a table up to a minute after it changed, and a table that is
    /// mostly done events says few are pending). It then read every pending event and sorted
    /// them for each page: 140-230 ms a page of 1,000 with 70,000 pending, and a backlog of
    /// 100,000 event rows drained at 3,800-4,400 events/s. SQLite walks the index anyway.
    pub(crate) fn query_map_in_index_order<T>(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        if self.backend() == Backend::Sqlite {
            return self.query_map(sql, params, f);
        }
        // The session's setting, not a transaction's (`SET LOCAL`): the walks also run outside
        // transactions. Reset even after a failed query; inside a transaction that failed, the
        // reset fails too, and the rollback undoes the `SET`.
        self.execute_batch("SET enable_sort = off")?;
        let rows = self.query_map(sql, params, f);
        let reset = self.execute_batch("RESET enable_sort");
        let rows = rows?;
        reset?;
        Ok(rows)
    }

    /// Runs a query and maps every row with `f`.
    pub(crate) fn query_map<T>(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        match &mut self.conn {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(&sqlite_dialect(sql))?;
                let mut rows = stmt.query(value::sqlite_params(params))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(f(&Row::Sqlite(row))?);
                }
                Ok(out)
            }
            Conn::Postgres(c) => c
                .query(sql, params)?
                .iter()
                .map(|row| f(&Row::Postgres(row)))
                .collect(),
        }
    }

    /// Runs a query and maps its first row with `f`; [`DbError::NoRows`] when there is none
    /// (`.optional()` turns that into `None`).
    pub(crate) fn query_row<T>(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        match &mut self.conn {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(&sqlite_dialect(sql))?;
                let mut rows = stmt.query(value::sqlite_params(params))?;
                match rows.next()? {
                    Some(row) => f(&Row::Sqlite(row)),
                    None => Err(DbError::NoRows),
                }
            }
            Conn::Postgres(c) => match c.query(sql, params)?.first() {
                Some(row) => f(&Row::Postgres(row)),
                None => Err(DbError::NoRows),
            },
        }
    }

    /// Runs `f` in a write transaction, committed when it returns `Ok` and rolled back when
    /// it returns `Err`. Inside another transaction, `f` simply joins it. On PostgreSQL a
    /// serialization failure or deadlock runs `f` again, up to [`SERIALIZATION_RETRIES`]
    /// times.
    pub(crate) fn transaction<T>(&mut self, mut f: impl FnMut(&mut Db) -> Result<T>) -> Result<T> {
        if self.depth > 0 {
            return f(self);
        }
        let begin = match self.backend() {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        };
        let mut attempt = 0;
        loop {
            match self.run_in(begin, &mut f) {
                Err(DbError::Postgres(e))
                    if pg::is_serialization_failure(&e) && attempt < SERIALIZATION_RETRIES =>
                {
                    attempt += 1;
                    // A little jitter, so that two daemons that collided do not collide again.
                    std::thread::sleep(Duration::from_millis(fastrand::u64(
                        1..=5 * u64::from(attempt),
                    )));
                }
                other => return other,
            }
        }
    }

    /// Runs `f` in a read transaction: every row it reads comes from one snapshot.
    pub(crate) fn read_snapshot<T>(
        &mut self,
        mut f: impl FnMut(&mut Db) -> Result<T>,
    ) -> Result<T> {
        if self.depth > 0 {
            return f(self);
        }
        let begin = match self.backend() {
            Backend::Sqlite => "BEGIN DEFERRED",
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        };
        self.run_in(begin, &mut f)
    }

    /// Runs `f` in a savepoint of the current transaction: when `f` fails, what it wrote is
    /// undone and the transaction goes on without it.
    pub(crate) fn savepoint<T>(&mut self, f: impl FnOnce(&mut Db) -> Result<T>) -> Result<T> {
        self.execute_batch("SAVEPOINT flatsync_piece")?;
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        match result {
            Ok(value) => {
                self.execute_batch("RELEASE SAVEPOINT flatsync_piece")?;
                Ok(value)
            }
            Err(e) => {
                // The rollback can fail only with the connection; the caller learns of `e`
                // either way, and a broken transaction fails at its commit.
                let _ = self.execute_batch(
                    "ROLLBACK TO SAVEPOINT flatsync_piece; RELEASE SAVEPOINT flatsync_piece",
                );
                Err(e)
            }
        }
    }

    fn run_in<T>(&mut self, begin: &str, f: &mut impl FnMut(&mut Db) -> Result<T>) -> Result<T> {
        self.execute_batch(begin)?;
        self.set_in_transaction(true);
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        match result {
            Ok(value) => match self.execute_batch("COMMIT") {
                Ok(()) => {
                    self.set_in_transaction(false);
                    Ok(value)
                }
                Err(e) => {
                    self.rollback();
                    Err(e)
                }
            },
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    fn set_in_transaction(&mut self, open: bool) {
        if let Conn::Postgres(c) = &mut self.conn {
            c.set_in_transaction(open);
        }
    }

    fn rollback(&mut self) {
        match &mut self.conn {
            // SQLite may have rolled back by itself (a full disk); there is then nothing to do.
            Conn::Sqlite(c) => {
                if !c.is_autocommit() {
                    let _ = c.execute_batch("ROLLBACK");
                }
            }
            Conn::Postgres(c) => c.rollback(),
        }
    }
}

/// `sql` as SQLite spells it (see the module documentation); PostgreSQL's spelling is made
/// once per statement by its connection's cache (`pg`).
fn sqlite_dialect(sql: &str) -> Cow<'_, str> {
    if !(sql.contains("GREATEST(")
        || sql.contains("LEAST(")
        || sql.contains("FOR UPDATE SKIP LOCKED")
        || sql.contains("NOW_MS()"))
    {
        return Cow::Borrowed(sql);
    }
    Cow::Owned(
        sql.replace("GREATEST(", "MAX(")
            .replace("LEAST(", "MIN(")
            .replace(" FOR UPDATE SKIP LOCKED", "")
            .replace(
                "NOW_MS()",
                "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
            ),
    )
}

#[cfg(test)]
mod tests;
