//! The `sqlite` sink: one table per stream kind, rows upserted by record id.
//!
//! # Config
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `path` | required | database file; its parent folder is created if missing |
//! | `synchronous` | `"full"` | `"full"` makes every flushed batch (every checkpoint) survive a power cut; `"normal"` only an application crash |
//! | `busy_timeout_ms` | `5000` | how long to wait for another connection's lock before asking the host to retry |
//! | `deletions` | `"delete"` | what a deleted Flatfile record does to its row: `"delete"` removes it, `"mark"` keeps it and sets `_deleted_at` (see [Deletions](#deletions)) |
//! | `wal_limit_mib` | `256` | how long the write-ahead log may grow on disk, in MiB (1 to 65536): see below |
//!
//! The database runs in WAL mode. Each batch is committed without waiting for the disk
//! (SQLite's `synchronous = NORMAL`), which a killed process cannot undo; with
//! `synchronous = "full"` each flush (the host's checkpoint) then syncs the write-ahead log
//! once, which makes every batch before it survive a power cut as well. A power cut can lose
//! batches committed since the last flush, never part of one, and the host sends those again
//! from its checkpoint.
//!
//! The write-ahead log is copied into the database on a thread of the sink's own, over a
//! second connection, so batches go on being written while the copy waits for the disk. The
//! log stays below about `wal_limit_mib` plus one batch, unless another connection keeps
//! reading an old snapshot, which holds SQLite's own checkpoints back the same way. The copy
//! starts at a quarter of the limit, so the database file trails the log by up to that much.
//! A longer log is copied with fewer writes: Flatfile's record ids are random, so each batch
//! rewrites pages all over a large table's index, and a copy writes each page once however
//! often the log rewrote it. A million rows into one table wrote a third less to disk with the
//! default than with 16 MiB, and went 1.5-1.7 times as fast. After a crash, the next open
//! reads the whole log once.
//!
//! # Tables
//!
//! The table of a stream is named after its kind (the sheet slug, or `legacy_batch`), quoted,
//! so any text works except names starting with `_flatsync` or `sqlite_`. Its columns:
//! `_record_id TEXT PRIMARY KEY`, `_event_id TEXT NOT NULL`, `_valid INTEGER NOT NULL`,
//! `_received_at TEXT NOT NULL` (RFC 3339, UTC, milliseconds), then one column per field key
//! in schema order, then first-seen order, added with `ALTER TABLE ADD COLUMN` as keys appear.
//! With `deletions = "mark"` the table also has `_deleted_at TEXT` (nullable). A field key equal
//! to a reserved column (those five), or two keys that differ only in letter case (SQLite
//! column names ignore ASCII case), is a fatal error.
//!
//! Values keep their JSON type: strings as TEXT, integers that fit 64 bits as INTEGER, other
//! numbers as REAL, booleans as INTEGER 0/1, null as NULL, arrays and objects as JSON TEXT.
//! A row updates only the columns it has values for.
//!
//! A record that arrives again in a later event's stream (a `records:updated`, a new commit)
//! is an upsert: its row takes the new values, `_event_id` and `_received_at`.
//!
//! # Deletions
//!
//! The sink handles deletion streams (`<sheetSlug>-deleted-<eventId>`, kind = the sheet slug):
//! each row names a record deleted in Flatfile, and the sink acts on the kind's table.
//!
//! - `deletions = "delete"`: the rows with those `_record_id`s are removed.
//! - `deletions = "mark"`: the rows stay, and `_deleted_at` is set to the time flatsync
//!   received the deletion (RFC 3339, UTC, milliseconds). The column is added to a table that
//!   lacks it (one written before mark mode was configured) the first time the table is used.
//!   A later upsert of the same record id (the record re-created or restored) sets it back to
//!   NULL, in either mode, whenever the table has the column.
//!
//! A record id the table does not hold changes nothing, and a kind without a table is left
//! without one. A deletion batch is one transaction with the stream bookkeeping, like any
//! batch, so it is applied exactly once and never by halves.
//!
//! # Exactly once
//!
//! `_flatsync_streams(stream, kind, applied_seq, complete, updated_at, stream_rows)` records
//! each stream's progress (`stream_rows` is added to a table that lacks it, NULL for the
//! streams it had). After a crash of the daemon, `held` reports the applied seq and rows of a
//! stream in progress, so the daemon does not fetch those batches again. Every batch is one transaction that checks the stream's applied seq (skipping a
//! batch already applied, failing on a gap), upserts (or deletes, or marks) the rows keyed by
//! `_record_id`, and advances `applied_seq` (setting `complete` on the last batch) before
//! committing. Data and position therefore commit together, and a re-delivered record updates
//! its row instead of duplicating it. `SQLITE_BUSY`, `SQLITE_LOCKED` and a full disk are RETRY; other errors are
//! FATAL and name the table and column.

mod checkpointer;
mod durable;
mod held;
mod table;
mod upsert;
mod value;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flatsync_plugin_sdk::{
    Batch, BatchStep, ConfigReader, CreateContext, Held, Logger, Row, Sink, SinkError,
    StreamPosition, export_sink, serde_json,
};
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use checkpointer::{Checkpointer, LogLimits};
use durable::WalSync;
use table::Table;

const BOOKKEEPING_TABLE: &str = "_flatsync_streams";
const STATEMENT_CACHE: usize = 64;
/// SQLite's page cache of the connection, in KiB (`PRAGMA cache_size`): an eighth of SQLite's
/// default. A million Platform records into SQLite peaked at 32.0-32.1 MiB with 1000 KiB and
/// 31.1-31.5 MiB with this, for 3-4 % more CPU (pages missed here are read from the OS cache).
const PAGE_CACHE_KIB: u32 = 256;

/// What a deletion batch does to the rows of its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deletions {
    /// Remove the rows.
    Delete,
    /// Keep the rows and set their `_deleted_at`.
    Mark,
}

/// How hard SQLite syncs each commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Synchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone)]
struct Config {
    path: PathBuf,
    synchronous: Synchronous,
    busy_timeout: Duration,
    deletions: Deletions,
    wal_limit_mib: u32,
}

impl Config {
    fn parse(value: serde_json::Value) -> Result<Self, SinkError> {
        let mut config = ConfigReader::new(value)?;
        let path: PathBuf = config.required("path")?;
        let synchronous: Option<String> = config.optional("synchronous")?;
        let busy_timeout_ms: Option<u32> = config.optional("busy_timeout_ms")?;
        let deletions: Option<String> = config.optional("deletions")?;
        let wal_limit_mib: Option<u32> = config.optional("wal_limit_mib")?;
        config.finish()?;
        if path.as_os_str().is_empty() {
            return Err(SinkError::fatal("config key `path` must not be empty"));
        }
        let synchronous = match synchronous
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("full") => Synchronous::Full,
            Some("normal") => Synchronous::Normal,
            Some(other) => {
                return Err(SinkError::fatal(format!(
                    "config key `synchronous` must be \"full\" or \"normal\", got {other:?}"
                )));
            }
        };
        let deletions = match deletions.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("delete") => Deletions::Delete,
            Some("mark") => Deletions::Mark,
            Some(other) => {
                return Err(SinkError::fatal(format!(
                    "config key `deletions` must be \"delete\" or \"mark\", got {other:?}"
                )));
            }
        };
        let busy_timeout_ms = busy_timeout_ms.unwrap_or(5000);
        if busy_timeout_ms > i32::MAX as u32 {
            return Err(SinkError::fatal(format!(
                "config key `busy_timeout_ms` must be at most {}, got {busy_timeout_ms}",
                i32::MAX
            )));
        }
        let wal_limit_mib = wal_limit_mib.unwrap_or(256);
        if !(1..=65536).contains(&wal_limit_mib) {
            return Err(SinkError::fatal(format!(
                "config key `wal_limit_mib` must be between 1 and 65536, got {wal_limit_mib}"
            )));
        }
        Ok(Self {
            path,
            synchronous,
            busy_timeout: Duration::from_millis(busy_timeout_ms.into()),
            deletions,
            wal_limit_mib,
        })
    }
}

/// The sqlite sink instance: its writing connection, used from the instance's thread only, and
/// the checkpointer's.
#[derive(Debug)]
pub struct SqliteSink {
    /// Declared before `conn`, so its connection closes first and the writer's close, the
    /// last, copies the rest of the log and removes it.
    checkpointer: Checkpointer,
    conn: Connection,
    /// The log `flush` syncs; `None` with `synchronous = "normal"`.
    wal: Option<WalSync>,
    path: PathBuf,
    logger: Logger,
    deletions: Deletions,
    /// Columns of each table this process has written to, as committed.
    tables: HashMap<String, Table>,
}

impl Sink for SqliteSink {
    const HANDLES_DELETIONS: bool = true;

    fn create(ctx: &CreateContext<'_>, config: serde_json::Value) -> Result<Self, SinkError> {
        let config = Config::parse(config)?;
        let path = config.path.clone();
        let fail = |what: &str, error: rusqlite::Error| {
            SinkError::fatal(format!("{what} {}: {error}", path.display()))
        };
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|error| {
                SinkError::fatal(format!(
                    "config key `path`: cannot create {}: {error}",
                    parent.display()
                ))
            })?;
        }
        let mut conn = Connection::open(&path).map_err(|error| fail("cannot open", error))?;
        conn.busy_timeout(config.busy_timeout)
            .map_err(|error| fail("cannot set the busy timeout of", error))?;
        require_wal(
            &conn,
            "PRAGMA journal_mode = WAL",
            &path,
            "cannot switch to WAL mode:",
            |mode| {
                format!(
                    "{} stays in journal mode {mode:?}, WAL is required",
                    path.display()
                )
            },
        )?;
        // Commits are synced by `flush` (with "full") instead: see `durable`.
        conn.execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(|error| fail("cannot set synchronous on", error))?;
        // SQLite's default page cache (2 MB) was most of what this sink added to the daemon's
        // peak memory; the file's pages stay in the OS cache, so a smaller one costs little.
        conn.execute_batch(&format!("PRAGMA cache_size = -{PAGE_CACHE_KIB}"))
            .map_err(|error| fail("cannot set the page cache size of", error))?;
        // A multi-row upsert inside a batch's transaction keeps the old content of the pages
        // it changes in a statement journal, so that a failing statement is undone alone. Past
        // 64 KiB SQLite moves that journal to a temporary file, and every later statement of
        // the transaction writes there too: with Flatfile's random record ids, half of what
        // the daemon wrote (a million legacy rows: 17.5 GiB with the journal in a file, 8.4
        // GiB with it in memory). In memory it holds one statement's pages at a time (at most
        // `upsert::MAX_ROWS` rows, or one deleted record).
        conn.execute_batch("PRAGMA temp_store = MEMORY")
            .map_err(|error| fail("cannot set temp_store on", error))?;
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {BOOKKEEPING_TABLE} (
                 stream TEXT PRIMARY KEY,
                 kind TEXT NOT NULL,
                 applied_seq INTEGER NOT NULL,
                 complete INTEGER NOT NULL,
                 updated_at TEXT NOT NULL,
                 stream_rows INTEGER
             )"
        ))
        .map_err(|error| fail("cannot create the bookkeeping table in", error))?;
        held::add_rows_column(&conn)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let page_size: u32 = conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .map_err(|error| fail("cannot read the page size of", error))?;
        let limits = LogLimits::new(config.wal_limit_mib, page_size);
        let checkpointer = Checkpointer::start(&mut conn, &path, limits, ctx.logger())?;
        let wal = (config.synchronous == Synchronous::Full).then(|| WalSync::new(&conn, &path));
        Ok(Self {
            checkpointer,
            conn,
            wal,
            path,
            logger: ctx.logger().clone(),
            deletions: config.deletions,
            tables: HashMap::new(),
        })
    }

    fn write_batch(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        let kind = batch.kind();
        table::check_table_name(kind)?;
        let result = self.apply(batch).map_err(|error| {
            // A retry waits on the file (room on its disk, a lock held elsewhere): name it.
            if error.is_retry() {
                error.context(self.path.display())
            } else {
                error
            }
        });
        if result.is_err() {
            // The transaction rolled back, and with it any column added on its way; the
            // next batch reloads the columns from the database.
            self.tables.remove(&table_key(kind));
        }
        result
    }

    /// Every batch is committed by `write_batch` in its own transaction; with
    /// `synchronous = "full"` this syncs the write-ahead log, so those commits survive a power
    /// cut too.
    fn flush(&mut self) -> Result<(), SinkError> {
        match &mut self.wal {
            Some(wal) => wal.sync(),
            None => Ok(()),
        }
    }

    /// Each batch committed with its position, which a crash of the daemon leaves in place:
    /// the daemon need not fetch again what the table records.
    fn held(&mut self, stream: &str) -> Result<Option<Held>, SinkError> {
        held::held(&self.conn, stream)
    }

    fn check(&mut self) -> Result<(), SinkError> {
        // Taking the write lock proves the file is writable and not held by someone else.
        self.conn
            .execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            .map_err(|error| sql_error(format!("{} is not writable", self.path.display()), error))
    }
}

impl SqliteSink {
    fn apply(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        let stream = batch.stream();
        let kind = batch.kind();
        let seq = i64::try_from(batch.seq()).map_err(|_| {
            SinkError::fatal(format!(
                "stream {stream}: batch seq {} is too large",
                batch.seq()
            ))
        })?;
        self.checkpointer
            .bound_log(&self.conn)
            .map_err(|error| sql_error("copying the write-ahead log into the database", error))?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|error| sql_error("cannot start a transaction", error))?;

        match stream_position(&tx, stream)?.step(batch)? {
            // The last batch commits the stream's completion with its rows, so a batch held
            // here never leaves anything to finish.
            BatchStep::Skip | BatchStep::Finish => return Ok(()),
            BatchStep::Apply => {}
        }

        // The rows and the stream's position commit together, so a crash applies all of the
        // batch or none of it.
        let count = if batch.is_deletions() {
            apply_deletions(&tx, &mut self.tables, batch, self.deletions)?
        } else {
            let mark = self.deletions == Deletions::Mark;
            let table = cached_table(&tx, &mut self.tables, kind, mark)?;
            for field in batch.fields()? {
                table.column(&tx, &field)?;
            }
            upsert::upsert_rows(&tx, table, batch)?
        };

        tx.prepare_cached(&format!(
            "INSERT INTO {BOOKKEEPING_TABLE}
                 (stream, kind, applied_seq, complete, updated_at, stream_rows)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (stream) DO UPDATE SET
                 kind = excluded.kind,
                 applied_seq = excluded.applied_seq,
                 complete = excluded.complete,
                 updated_at = excluded.updated_at,
                 {}",
            held::ROWS_UPSERT
        ))
        .and_then(|mut statement| {
            statement.execute(rusqlite::params![
                stream,
                kind,
                seq,
                batch.is_last(),
                flatsync_plugin_sdk::time::now_rfc3339_millis(),
                i64::try_from(batch.row_count()).unwrap_or(i64::MAX)
            ])
        })
        .map_err(|error| sql_error(format!("recording the position of stream {stream}"), error))?;
        tx.commit().map_err(|error| {
            sql_error(format!("committing batch {seq} of stream {stream}"), error)
        })?;
        if batch.is_last() {
            let what = match (batch.is_deletions(), self.deletions) {
                (false, _) => "rows",
                (true, Deletions::Delete) => "records deleted",
                (true, Deletions::Mark) => "records marked deleted",
            };
            self.logger.info(&format!(
                "Stream complete: {stream} into table {kind} ({count} {what} in its last batch)"
            ));
        }
        Ok(())
    }
}

/// How far the database holds `stream`, from its bookkeeping row.
fn stream_position(conn: &Connection, stream: &str) -> Result<StreamPosition, SinkError> {
    let position: Option<(i64, bool)> = conn
        .prepare_cached(&format!(
            "SELECT applied_seq, complete FROM {BOOKKEEPING_TABLE} WHERE stream = ?1"
        ))
        .and_then(|mut statement| {
            statement
                .query_row([stream], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .map_err(|error| sql_error(format!("reading the position of stream {stream}"), error))?;
    Ok(match position {
        None => StreamPosition::Start,
        Some((_, true)) => StreamPosition::Complete,
        Some((applied, false)) => {
            StreamPosition::Applied(u64::try_from(applied).map_err(|_| {
                SinkError::fatal(format!(
                    "stream {stream}: {BOOKKEEPING_TABLE} records applied seq {applied}, which \
                     no batch has"
                ))
            })?)
        }
    })
}

/// The table of `kind` from the cache, loaded (and created) on first use.
fn cached_table<'t>(
    conn: &Connection,
    tables: &'t mut HashMap<String, Table>,
    kind: &str,
    mark_deletions: bool,
) -> Result<&'t mut Table, SinkError> {
    let key = table_key(kind);
    if !tables.contains_key(&key) {
        let table = Table::load(conn, kind, mark_deletions)?;
        tables.insert(key.clone(), table);
    }
    Ok(tables.get_mut(&key).expect("inserted just above"))
}

/// Deletes or marks the rows of the records a deletion batch names. Returns how many rows it
/// changed: records never written here, or already deleted, change nothing.
fn apply_deletions(
    conn: &Connection,
    tables: &mut HashMap<String, Table>,
    batch: &Batch<'_>,
    mode: Deletions,
) -> Result<u64, SinkError> {
    let kind = batch.kind();
    let mark = mode == Deletions::Mark;
    let key = table_key(kind);
    if !tables.contains_key(&key) {
        // Without a table no record of this kind was ever written: nothing to delete or mark,
        // and no reason to create an empty table.
        let Some(table) = Table::load_existing(conn, kind, mark)? else {
            let mut rows = batch.rows();
            // The rows are still read, so a malformed batch fails here as it would elsewhere.
            while rows.next().transpose()?.is_some() {}
            return Ok(0);
        };
        tables.insert(key.clone(), table);
    }
    let table = tables.get(&key).expect("inserted just above");
    let deleted_at = batch.received_at_rfc3339();
    let (sql, what) = match mode {
        Deletions::Delete => (table.delete_sql(), "delete"),
        Deletions::Mark => (table.mark_deleted_sql(), "mark deleted"),
    };
    let mut statement = conn
        .prepare_cached(&sql)
        .map_err(|error| table.error(&format!("cannot prepare the statement to {what}"), error))?;
    let mut row = Row::default();
    let mut rows = batch.rows();
    let mut changed = 0_u64;
    while rows.read_into(&mut row)? {
        let id = row.id.as_ref();
        let result = match mode {
            Deletions::Delete => statement.execute([id]),
            Deletions::Mark => statement.execute([deleted_at.as_str(), id]),
        };
        changed += result
            .map_err(|error| table.error(&format!("cannot {what} record `{id}`"), error))?
            as u64;
    }
    Ok(changed)
}

/// SQLite matches table names without regard to ASCII case, so the cache does too.
fn table_key(kind: &str) -> String {
    kind.to_ascii_lowercase()
}

/// Busy and locked databases and a full disk can pass; anything else will not.
fn sql_error(context: impl std::fmt::Display, error: rusqlite::Error) -> SinkError {
    match error.sqlite_error_code() {
        // Named by its errno as the folder sinks name it, the word alerts search for.
        Some(ErrorCode::DiskFull) => SinkError::retry(format!("{context}: ENOSPC: {error}")),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            SinkError::retry(format!("{context}: {error}"))
        }
        _ => SinkError::fatal(format!("{context}: {error}")),
    }
}

export_sink!(SqliteSink, name = "sqlite");

/// Runs `pragma` (a `journal_mode` query or switch) on `conn` and refuses any mode but WAL,
/// `refused` wording the refusal for the mode found; `failed` words a pragma that fails.
pub(crate) fn require_wal(
    conn: &Connection,
    pragma: &str,
    path: &Path,
    failed: &str,
    refused: impl FnOnce(&str) -> String,
) -> Result<(), SinkError> {
    let mode: String = conn
        .query_row(pragma, [], |row| row.get(0))
        .map_err(|error| SinkError::fatal(format!("{failed} {}: {error}", path.display())))?;
    if mode.eq_ignore_ascii_case("wal") {
        Ok(())
    } else {
        Err(SinkError::fatal(refused(&mode)))
    }
}

#[cfg(test)]
mod tests;
