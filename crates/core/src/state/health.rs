//! The state database's health, SQLite's own: the integrity check ([`inspect_state`]) and the
//! salvage of a damaged file into a fresh one ([`salvage`]). A damaged file is never patched
//! in place: `flatsync doctor --repair` (in `crate::ops`) quarantines it and puts the salvaged
//! copy in its place.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, params_from_iter};

use super::operator::BUSY_TIMEOUT;
use super::schema::{self, TABLES, TABLES_ADDED_LATER};
use super::{EventStatus, SCHEMA_VERSION, StateDb, StateError};

/// What the integrity check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateHealth {
    /// No `state.db` yet: the daemon creates it on its first start.
    Missing,
    /// The integrity check passed and the schema is one this flatsync knows.
    Healthy,
    /// SQLite reports damage (integrity errors, "file is not a database", "malformed"): the
    /// file should be quarantined and salvaged (`flatsync doctor --repair`).
    Damaged,
    /// Readable but not usable as it is (unreadable file, a newer schema); repairing would
    /// not help, the message says what would.
    Unusable,
}

/// The result of [`inspect_state`].
#[derive(Clone, Debug)]
pub struct StateInspection {
    /// The database file.
    pub path: PathBuf,
    /// The verdict.
    pub health: StateHealth,
    /// `PRAGMA user_version`, when readable.
    pub schema_version: Option<i64>,
    /// Inbox events, when readable.
    pub events: Option<u64>,
    /// What is wrong: SQLite's error or the integrity check's first messages.
    pub problems: Vec<String>,
}

/// Opens `<state_dir>/state.db` read-only and runs `PRAGMA integrity_check`.
pub fn inspect_state(state_dir: &Path) -> StateInspection {
    let path = state_dir.join(StateDb::FILE_NAME);
    let mut inspection = StateInspection {
        path: path.clone(),
        health: StateHealth::Healthy,
        schema_version: None,
        events: None,
        problems: Vec::new(),
    };
    if !path.exists() {
        inspection.health = StateHealth::Missing;
        return inspection;
    }
    let fail = |mut inspection: StateInspection, error: rusqlite::Error| {
        inspection.health = if is_damage(&error) {
            StateHealth::Damaged
        } else {
            StateHealth::Unusable
        };
        inspection.problems.push(error.to_string());
        inspection
    };
    let conn = match open_source(&path) {
        Ok(conn) => conn,
        Err(error) => return fail(inspection, error),
    };
    match conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0)) {
        Ok(version) => inspection.schema_version = Some(version),
        Err(error) => return fail(inspection, error),
    }
    let messages: Result<Vec<String>, _> = conn
        .prepare("PRAGMA integrity_check(20)")
        .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect());
    match messages {
        Err(error) => return fail(inspection, error),
        Ok(messages) if messages != ["ok"] => {
            inspection.health = StateHealth::Damaged;
            inspection.problems = messages;
            return inspection;
        }
        Ok(_) => {}
    }
    if let Some(version) = inspection.schema_version
        && version > SCHEMA_VERSION
    {
        inspection.health = StateHealth::Unusable;
        inspection.problems.push(format!(
            "schema version {version} was written by a newer flatsync (this one knows up to \
             {SCHEMA_VERSION}); run that version"
        ));
        return inspection;
    }
    // An empty file is a database without tables yet; the daemon creates them.
    inspection.events = conn
        .query_row("SELECT COUNT(*) FROM inbox", [], |r| r.get::<_, i64>(0))
        .ok()
        .map(|n| n.max(0) as u64);
    inspection
}

fn is_damage(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

fn open_source(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// How one table fared in a [`salvage`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableSalvage {
    /// Table name.
    pub table: &'static str,
    /// Rows copied into the fresh database.
    pub salvaged: u64,
    /// Rows that could not be read or copied (rowids skipped over damaged pages, rows whose
    /// values did not read or insert). Counted from rowid gaps, so an estimate when rows had
    /// been deleted before the damage.
    pub lost: u64,
    /// The first error met while reading, if any.
    pub first_error: Option<String>,
}

/// What [`salvage`] copied and dropped.
#[derive(Clone, Debug, Default)]
pub struct Salvage {
    /// Per table, the inbox first.
    pub tables: Vec<TableSalvage>,
    /// Ids of inbox events known to be lost: named by the inbox's key index or by another
    /// table, but not salvaged.
    pub lost_event_ids: Vec<String>,
    /// Deliveries, streams and checkpoints dropped because their event was lost.
    pub orphans_dropped: u64,
    /// Pending events whose stream plan lost rows; the daemon plans them again.
    pub replanned: Vec<String>,
    /// Why nothing at all could be read, when that is the case (say, a destroyed header).
    pub unreadable: Option<String>,
}

/// Copies every readable row of the damaged database at `source` into the fresh database at
/// `target` (made by [`StateDb::open`](super::StateDb::open)), in one transaction, then drops
/// rows of lost events and damaged plans of pending events. Rows are read in rowid order;
/// when SQLite reports a damaged page, the scan looks for the next readable rowid and counts
/// the rowids skipped as lost, so a bad page costs the rows on it and no more.
pub fn salvage(source: &Path, target: &Path) -> Result<Salvage, StateError> {
    let mut report = Salvage::default();
    copy_readable(source, target, &mut report).map_err(|error| StateError::Sqlite {
        path: target.to_owned(),
        error,
    })?;
    Ok(report)
}

fn copy_readable(source: &Path, target: &Path, report: &mut Salvage) -> rusqlite::Result<()> {
    let mut dest = Connection::open(target)?;
    dest.busy_timeout(BUSY_TIMEOUT)?;
    let tx = dest.transaction()?;
    let src = match open_source(source) {
        Ok(src) => Some(src),
        Err(error) => {
            report.unreadable = Some(error.to_string());
            None
        }
    };
    let salvaged_ids = copy_tables(&tx, src.as_ref(), report)?;
    drop_lost_events(&tx, src.as_ref(), &salvaged_ids, report)?;
    let plans_damaged = report
        .tables
        .iter()
        .filter(|t| t.table == "deliveries" || t.table == "streams")
        .any(|t| t.lost > 0 || t.first_error.is_some());
    if plans_damaged {
        report.replanned = drop_broken_plans(&tx)?;
    }
    tx.commit()?;
    // Fold the WAL into the file so that the single file moved into place is complete.
    dest.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// Copies each table's readable rows; the ids of the inbox events copied.
fn copy_tables(
    tx: &Transaction<'_>,
    src: Option<&Connection>,
    report: &mut Salvage,
) -> rusqlite::Result<BTreeSet<String>> {
    let mut salvaged_ids: BTreeSet<String> = BTreeSet::new();
    for (table, columns) in TABLES {
        let mut result = TableSalvage {
            table,
            ..TableSalvage::default()
        };
        if let Some(src) = src {
            match source_columns(src, table, columns) {
                Ok(select) => {
                    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
                    let insert = format!(
                        "INSERT OR IGNORE INTO {table} ({}) VALUES ({})",
                        names.join(", "),
                        vec!["?"; names.len()].join(", ")
                    );
                    let mut insert = tx.prepare(&insert)?;
                    scan_table(src, table, &select, names.len(), &mut result, |values| {
                        let id = match (table, values.first()) {
                            ("inbox", Some(Value::Text(id))) => Some(id.clone()),
                            _ => None,
                        };
                        let stored = insert.execute(params_from_iter(values)).is_ok();
                        if let (true, Some(id)) = (stored, id) {
                            salvaged_ids.insert(id);
                        }
                        stored
                    });
                }
                Err(_) if TABLES_ADDED_LATER.contains(&table) && !has_table(src, table) => {}
                Err(error) => {
                    if report.unreadable.is_none() {
                        report.unreadable = Some(error.clone());
                    }
                    result.first_error = Some(error);
                }
            }
        }
        report.tables.push(result);
    }
    Ok(salvaged_ids)
}

/// Lists the events known to be lost and drops the rows that name them.
fn drop_lost_events(
    tx: &Transaction<'_>,
    src: Option<&Connection>,
    salvaged_ids: &BTreeSet<String>,
    report: &mut Salvage,
) -> rusqlite::Result<()> {
    // Ids the inbox's key index still holds, and ids the other tables name.
    let mut known: BTreeSet<String> = BTreeSet::new();
    if let Some(src) = src {
        read_index_ids(src, &mut known);
    }
    for table in ["deliveries", "streams", "checkpoints"] {
        let mut stmt = tx.prepare(&format!("SELECT DISTINCT event_id FROM {table}"))?;
        for id in stmt.query_map([], |r| r.get::<_, String>(0))? {
            known.insert(id?);
        }
    }
    // The inbox table may have lost rows the index names; ids already in the fresh inbox
    // (salvaged, or inserted before a later duplicate) are not lost.
    report.lost_event_ids = known
        .into_iter()
        .filter(|id| !salvaged_ids.contains(id))
        .collect();
    for table in ["deliveries", "streams", "checkpoints"] {
        report.orphans_dropped += tx.execute(
            &format!("DELETE FROM {table} WHERE event_id NOT IN (SELECT event_id FROM inbox)"),
            [],
        )? as u64;
    }
    Ok(())
}

/// Drops the routing and stream plan of pending events whose plan lost rows, so the daemon
/// plans them again; their ids.
fn drop_broken_plans(tx: &Transaction<'_>) -> rusqlite::Result<Vec<String>> {
    let broken: Vec<String> = tx
        .prepare(
            "SELECT i.event_id FROM inbox i WHERE i.status = ?1 AND (
               (EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = i.event_id)
                AND NOT EXISTS (SELECT 1 FROM streams s WHERE s.event_id = i.event_id))
               OR (SELECT COUNT(*) FROM streams s WHERE s.event_id = i.event_id)
                  <> (SELECT COALESCE(MAX(ordinal), -1) + 1 FROM streams s
                      WHERE s.event_id = i.event_id))
             ORDER BY i.event_id",
        )?
        .query_map([EventStatus::Pending], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &broken {
        tx.execute("DELETE FROM deliveries WHERE event_id = ?1", [id])?;
        tx.execute("DELETE FROM streams WHERE event_id = ?1", [id])?;
    }
    Ok(broken)
}

/// Whether the damaged database has `table`; `true` when that cannot be read, so that the
/// table's error is reported.
fn has_table(src: &Connection, table: &str) -> bool {
    schema::has_table(src, table).unwrap_or(true)
}

/// The SELECT list for `table` in the damaged database: its own column where it has one, the
/// default where an older schema lacks it.
fn source_columns(
    src: &Connection,
    table: &str,
    columns: &[(&str, &str)],
) -> Result<String, String> {
    let present: Vec<String> = src
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
        .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| format!("cannot read the schema: {e}"))?;
    if present.is_empty() {
        return Err(format!(
            "table {table} is missing from the damaged database's schema"
        ));
    }
    Ok(columns
        .iter()
        .map(|(name, default)| {
            if present.iter().any(|p| p == name) {
                (*name).to_owned()
            } else {
                format!("{default} AS {name}")
            }
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// Reads `table` in rowid order, handing each row's values to `keep` (which says whether it
/// was stored), stepping over damaged pages; fills in the counts of `result`.
fn scan_table(
    src: &Connection,
    table: &str,
    select: &str,
    width: usize,
    result: &mut TableSalvage,
    mut keep: impl FnMut(Vec<Value>) -> bool,
) {
    let max_rowid: Option<i64> = src
        .query_row(&format!("SELECT MAX(rowid) FROM {table}"), [], |r| r.get(0))
        .ok()
        .flatten();
    let sql = format!("SELECT rowid, {select} FROM {table} WHERE rowid >= ?1 ORDER BY rowid");
    // The next rowid to read; rowids below it are read or counted as lost.
    let mut from = i64::MIN;
    loop {
        let before = from;
        let broken = match read_rows(src, &sql, width, &mut from, result, &mut keep) {
            Ok(()) => return,
            Err(error) => error,
        };
        if result.first_error.is_none() {
            result.first_error = Some(broken.to_string());
        }
        // Rowids start at 1; a table never read from starts losing rows there.
        let first_missing = from.max(1);
        match next_readable(src, table, from, max_rowid) {
            // The row is reachable, yet reading it from there failed without any progress:
            // its own content is damaged. Count it and step past it.
            Some(rowid) if rowid == from && from == before => {
                result.lost += 1;
                from = rowid.saturating_add(1);
            }
            Some(rowid) => {
                result.lost += (rowid - first_missing).max(0) as u64;
                from = rowid;
            }
            None => {
                if let Some(max) = max_rowid {
                    result.lost += (max.saturating_add(1) - first_missing).max(0) as u64;
                }
                return;
            }
        }
    }
}

fn read_rows(
    src: &Connection,
    sql: &str,
    width: usize,
    from: &mut i64,
    result: &mut TableSalvage,
    keep: &mut impl FnMut(Vec<Value>) -> bool,
) -> rusqlite::Result<()> {
    let mut stmt = src.prepare(sql)?;
    let mut rows = stmt.query([*from])?;
    while let Some(row) = rows.next()? {
        let rowid: i64 = row.get(0)?;
        *from = rowid.saturating_add(1);
        let values: Result<Vec<Value>, _> = (1..=width).map(|i| row.get::<_, Value>(i)).collect();
        let stored = match values {
            Ok(values) => keep(values),
            Err(_) => false,
        };
        if stored {
            result.salvaged += 1;
        } else {
            result.lost += 1;
        }
    }
    Ok(())
}

/// The smallest rowid at or above `from` that a seek reaches, `None` when no readable row
/// follows. Widens the distance until a probe works, then narrows it down: a seek into a
/// damaged page fails, a seek past it lands on the next good one.
fn next_readable(src: &Connection, table: &str, from: i64, max_rowid: Option<i64>) -> Option<i64> {
    let sql = format!("SELECT rowid FROM {table} WHERE rowid >= ?1 ORDER BY rowid LIMIT 1");
    let probe = |at: i64| -> Result<Option<i64>, ()> {
        match src.query_row(&sql, [at], |r| r.get(0)) {
            Ok(rowid) => Ok(Some(rowid)),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
            Err(_) => Err(()),
        }
    };
    // flatsync's tables never hold rowids below 1.
    let start = from.max(1);
    let limit = max_rowid.unwrap_or(i64::MAX);
    let mut bad = None;
    let mut offset: i64 = 0;
    let mut good = loop {
        let at = start.saturating_add(offset);
        if at > limit {
            return None;
        }
        match probe(at) {
            Ok(Some(_)) => break at,
            Ok(None) => return None,
            Err(()) if at == i64::MAX => return None,
            Err(()) => {
                bad = Some(at);
                offset = offset.saturating_mul(2).saturating_add(1);
            }
        }
    };
    if let Some(mut bad) = bad {
        while good - bad > 1 {
            let middle = bad + (good - bad) / 2;
            match probe(middle) {
                Ok(_) => good = middle,
                Err(()) => bad = middle,
            }
        }
    }
    probe(good).ok().flatten()
}

/// Event ids from the inbox's primary key index, read without touching the table's pages.
fn read_index_ids(src: &Connection, into: &mut BTreeSet<String>) {
    let Ok(mut stmt) = src.prepare(
        "SELECT event_id FROM inbox INDEXED BY sqlite_autoindex_inbox_1 ORDER BY event_id",
    ) else {
        return;
    };
    let Ok(mut rows) = stmt.query([]) else {
        return;
    };
    while let Ok(Some(row)) = rows.next() {
        if let Ok(id) = row.get::<_, String>(0) {
            into.insert(id);
        }
    }
}
