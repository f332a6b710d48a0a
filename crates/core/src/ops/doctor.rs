//! `flatsync doctor`: the state database's integrity (with quarantine and salvage), every
//! sink's plugin, and the Flatfile API keys.
//!
//! # Repairing a damaged state database
//!
//! A damaged `state.db` is never deleted and never patched in place. [`repair_state`] builds a
//! fresh database from every row it can still read, table by table (the inbox first), then
//! moves the damaged file and its `-wal` and `-shm` into `<state_dir>/quarantine/<UTC time>/`
//! and puts the fresh one in its place. Rows are read in rowid order; when SQLite reports a
//! damaged page, the scan looks for the next readable rowid and counts the rowids skipped as
//! lost, so a bad page costs the rows on it and no more.
//!
//! Why this is safe: every sink keeps its own applied position per stream, so a lost
//! checkpoint only makes the daemon re-send batches the sink skips, never duplicates. Lost
//! inbox rows are the only real loss (those events are neither delivered nor retried); their
//! ids are listed when the inbox's key index or another table still names them. Deliveries,
//! streams and checkpoints of lost events are dropped, so a webhook sent again for one of them
//! is delivered afresh; a pending event whose stream plan lost rows is planned again.
//!
//! The repair refuses to run while a daemon uses the state directory. It can tell when another
//! process has `state.db` (or its `-wal`/`-shm`) open, read from `/proc/<pid>/fd` (Linux;
//! processes of other users are only visible to root), or when the config's webhook or admin
//! address accepts connections.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flatsync_flatfile::{ApiError, ClientConfig, FlatfileClient, RetryPolicy, error_chain};
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags, params_from_iter};

use crate::time::compact_utc;

use super::{BUSY_TIMEOUT, OpsError, SCHEMA_VERSION};
use crate::config::{Config, SecretSource};
use crate::state::{StateDb, now_ms};

/// What the integrity check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateHealth {
    /// No `state.db` yet: the daemon creates it on its first start.
    Missing,
    /// The integrity check passed and the schema is one this flatsync knows.
    Healthy,
    /// SQLite reports damage (integrity errors, "file is not a database", "malformed"): the
    /// file should be quarantined and salvaged with [`repair_state`].
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

/// Says why a repair of `state_dir` must wait, when a daemon seems to use it: another process
/// has the database open, or an address of `config` (webhook, admin) accepts connections.
pub fn daemon_using_state(state_dir: &Path, config: Option<&Config>) -> Option<String> {
    if let Some(holder) = process_holding(state_dir) {
        return Some(holder);
    }
    let config = config?;
    let mut addresses: Vec<(SocketAddr, &str)> = Vec::new();
    if let Some(webhook) = &config.webhook {
        addresses.push((webhook.listen, "[webhook] listen"));
    }
    if let Some(admin) = &config.admin {
        addresses.push((admin.listen, "[admin] listen"));
    }
    for (mut addr, key) in addresses {
        if addr.port() == 0 {
            continue;
        }
        match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            _ => {}
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return Some(format!(
                "something accepts connections on {addr} ({key} of {}): is the daemon running?",
                config.path.display()
            ));
        }
    }
    None
}

/// Another process with the state database or its WAL files open, from `/proc/*/fd`.
fn process_holding(state_dir: &Path) -> Option<String> {
    let db = state_dir.join(StateDb::FILE_NAME);
    let db = std::fs::canonicalize(&db).unwrap_or(db);
    let watched: Vec<PathBuf> = ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let mut name = db.clone().into_os_string();
            name.push(suffix);
            PathBuf::from(name)
        })
        .collect();
    let own = std::process::id().to_string();
    for process in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = process.file_name();
        let Some(pid) = pid.to_str() else { continue };
        if pid == own || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && watched.contains(&target)
            {
                let name = std::fs::read_to_string(process.path().join("comm"))
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_else(|_| "?".to_owned());
                return Some(format!(
                    "process {pid} ({name}) has {} open: stop the daemon first",
                    target.display()
                ));
            }
        }
    }
    None
}

/// How one table fared in a [`repair_state`].
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

/// What [`repair_state`] did.
#[derive(Clone, Debug)]
pub struct RepairReport {
    /// Where the damaged files went.
    pub quarantine_dir: PathBuf,
    /// The files moved there.
    pub moved: Vec<PathBuf>,
    /// Per table, the inbox first.
    pub tables: Vec<TableSalvage>,
    /// Ids of inbox events known to be lost: named by the inbox's key index or by another
    /// table, but not salvaged. Lost events may exist beyond this list (see the inbox's `lost`).
    pub lost_event_ids: Vec<String>,
    /// Deliveries, streams and checkpoints dropped because their event was lost.
    pub orphans_dropped: u64,
    /// Pending events whose stream plan lost rows; the daemon plans them again.
    pub replanned: Vec<String>,
    /// Why nothing at all could be read, when that is the case (say, a destroyed header).
    pub unreadable: Option<String>,
}

impl RepairReport {
    /// Inbox rows lost: the larger of the inbox's count and the ids known.
    pub fn events_lost(&self) -> u64 {
        let counted = self
            .tables
            .iter()
            .find(|t| t.table == "inbox")
            .map_or(0, |t| t.lost);
        counted.max(self.lost_event_ids.len() as u64)
    }

    /// The explanation written next to the quarantined files and printed by the doctor.
    pub fn explanation(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "The state database was damaged. flatsync moved it, unchanged, to\n  {}\nand built a \
             fresh state.db from every row it could read.",
            self.quarantine_dir.display()
        );
        if let Some(why) = &self.unreadable {
            let _ = writeln!(text, "Nothing could be read from it: {why}");
        }
        for table in &self.tables {
            let _ = write!(
                text,
                "  {:<12} {} salvaged, {} lost",
                table.table, table.salvaged, table.lost
            );
            if let Some(error) = &table.first_error {
                let _ = write!(text, " (first error: {error})");
            }
            text.push('\n');
        }
        let lost = self.events_lost();
        if lost == 0 && self.unreadable.is_none() {
            let _ = writeln!(text, "No event was lost.");
        } else if self.lost_event_ids.is_empty() {
            let _ = writeln!(
                text,
                "{lost} event(s) were lost; their ids could not be read. Ask Flatfile to send \
                 their webhooks again, or replay the imports from Flatfile."
            );
        } else {
            let _ = writeln!(
                text,
                "{lost} event(s) were lost; these ids are known: {}. Send their webhooks again \
                 to deliver them.",
                self.lost_event_ids.join(", ")
            );
        }
        if self.orphans_dropped > 0 {
            let _ = writeln!(
                text,
                "{} delivery, stream and checkpoint row(s) of lost events were dropped.",
                self.orphans_dropped
            );
        }
        if !self.replanned.is_empty() {
            let _ = writeln!(
                text,
                "Pending event(s) {} lost part of their stream plan and will be planned again.",
                self.replanned.join(", ")
            );
        }
        let _ = writeln!(
            text,
            "Why this is safe: every sink keeps its own position in each stream, so a lost \
             checkpoint only makes flatsync re-send batches the sink skips; nothing is \
             duplicated. Lost inbox rows are the only real loss."
        );
        text
    }
}

/// Column lists of the state tables, each with the value used when an older schema lacks it.
const TABLES: [(&str, &[(&str, &str)]); 8] = [
    (
        "inbox",
        &[
            ("event_id", "NULL"),
            ("kind", "NULL"),
            ("topic", "NULL"),
            ("body", "NULL"),
            ("received_at_ms", "NULL"),
            ("status", "NULL"),
            ("detail", "NULL"),
            ("updated_at_ms", "0"),
        ],
    ),
    (
        "deliveries",
        &[
            ("event_id", "NULL"),
            ("sink", "NULL"),
            ("status", "NULL"),
            ("rows", "0"),
            ("error", "NULL"),
            ("generation", "0"),
            ("updated_at_ms", "0"),
        ],
    ),
    (
        "streams",
        &[
            ("event_id", "NULL"),
            ("ordinal", "NULL"),
            ("stream", "NULL"),
            ("kind", "NULL"),
            ("source_ref", "NULL"),
            ("fields_json", "NULL"),
            ("page_size", "NULL"),
            ("source", "''"),
            ("sinks", "NULL"),
        ],
    ),
    (
        "checkpoints",
        &[
            ("event_id", "NULL"),
            ("sink", "NULL"),
            ("stream", "NULL"),
            ("next_seq", "NULL"),
            ("complete", "NULL"),
            ("rows", "NULL"),
        ],
    ),
    // Polling cursors: losing one would make polling start again from "now" and skip events.
    (
        "poll_cursors",
        &[
            ("environment_id", "NULL"),
            ("since_ms", "NULL"),
            ("updated_at_ms", "0"),
        ],
    ),
    (
        "event_acks",
        &[
            ("event_id", "NULL"),
            ("environment_id", "NULL"),
            ("acked_at_ms", "NULL"),
            ("attempts", "0"),
            ("last_error", "NULL"),
        ],
    ),
    // Parts of uploads whose rows came in webhook bodies: answered 2xx, so as precious as the
    // inbox.
    (
        "carried_uploads",
        &[
            ("upload", "NULL"),
            ("origin", "NULL"),
            ("upload_id", "NULL"),
            ("sender_event_id", "NULL"),
            ("kind", "NULL"),
            ("fields_json", "'[]'"),
            ("deletions", "0"),
            ("first_received_at_ms", "0"),
            ("completed_at_ms", "NULL"),
        ],
    ),
    (
        "carried_parts",
        &[
            ("upload", "NULL"),
            ("position_major", "NULL"),
            ("position_minor", "NULL"),
            ("parts_of_batch", "0"),
            ("last", "0"),
            ("part_count", "NULL"),
            ("rows", "0"),
            ("ndjson", "NULL"),
            ("received_at_ms", "0"),
            ("ordinal", "NULL"),
        ],
    ),
];

/// Tables a state database from before schema version 3 (polling) or 4 (uploads) does not
/// have: nothing to salvage.
const TABLES_ADDED_LATER: [&str; 4] = [
    "poll_cursors",
    "event_acks",
    "carried_uploads",
    "carried_parts",
];

/// Quarantines a damaged `<state_dir>/state.db` and puts a salvaged copy in its place; see
/// the module documentation. Call it only when no daemon uses the directory
/// ([`daemon_using_state`]).
pub fn repair_state(state_dir: &Path) -> Result<RepairReport, OpsError> {
    let db_path = state_dir.join(StateDb::FILE_NAME);
    if !db_path.exists() {
        return Err(OpsError::NoDatabase { path: db_path });
    }
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |error| OpsError::Io { what, path, error }
    };
    let quarantine_root = state_dir.join("quarantine");
    let stamp = compact_utc(now_ms());
    let mut quarantine_dir = quarantine_root.join(&stamp);
    let mut attempt = 1;
    while quarantine_dir.exists() {
        attempt += 1;
        quarantine_dir = quarantine_root.join(format!("{stamp}-{attempt}"));
    }
    let rebuild_dir = quarantine_dir.join("rebuilt");
    std::fs::create_dir_all(&rebuild_dir).map_err(io("create", &rebuild_dir))?;

    // Build the fresh database first, reading the damaged one where it lies: until the files
    // are swapped at the end, an interrupted repair leaves the state directory as it was.
    let fresh = StateDb::open(&rebuild_dir).map_err(|e| OpsError::Refused(e.to_string()))?;
    let fresh_path = fresh.path().to_owned();
    drop(fresh);
    let mut report = RepairReport {
        quarantine_dir: quarantine_dir.clone(),
        moved: Vec::new(),
        tables: Vec::new(),
        lost_event_ids: Vec::new(),
        orphans_dropped: 0,
        replanned: Vec::new(),
        unreadable: None,
    };
    salvage(&db_path, &fresh_path, &mut report).map_err(|error| OpsError::Sqlite {
        path: fresh_path.clone(),
        error,
    })?;

    // The daemon must be able to open what replaces its database, also when an operator ran
    // the repair as root: same owner and mode as the damaged file.
    if let Ok(original) = std::fs::metadata(&db_path) {
        use std::os::unix::fs::MetadataExt as _;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = fresh_path.clone().into_os_string();
            name.push(suffix);
            let file = PathBuf::from(name);
            let Ok(meta) = std::fs::metadata(&file) else {
                continue;
            };
            std::fs::set_permissions(&file, original.permissions())
                .map_err(io("set the mode of", &file))?;
            if (meta.uid(), meta.gid()) != (original.uid(), original.gid()) {
                std::os::unix::fs::chown(&file, Some(original.uid()), Some(original.gid()))
                    .map_err(io("give the damaged file's owner to", &file))?;
            }
        }
    }

    // WAL and shared-memory files go first: a stale WAL next to the fresh database would be
    // replayed into it.
    for suffix in ["-wal", "-shm", ""] {
        let mut name = db_path.clone().into_os_string();
        name.push(suffix);
        let from = PathBuf::from(name);
        if !from.exists() {
            continue;
        }
        let to = quarantine_dir.join(from.file_name().unwrap_or_default());
        std::fs::rename(&from, &to).map_err(io("move", &from))?;
        report.moved.push(to);
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = fresh_path.clone().into_os_string();
        name.push(suffix);
        let from = PathBuf::from(name);
        if !from.exists() {
            continue;
        }
        let mut to = db_path.clone().into_os_string();
        to.push(suffix);
        std::fs::rename(&from, &to).map_err(io("move", &from))?;
    }
    let _ = std::fs::remove_dir(&rebuild_dir);
    for dir in [state_dir, quarantine_dir.as_path()] {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync", dir))?;
    }
    let readme = quarantine_dir.join("README.txt");
    std::fs::write(&readme, report.explanation()).map_err(io("write", &readme))?;
    tracing::warn!(
        quarantine = %quarantine_dir.display(),
        events_lost = report.events_lost(),
        "State database quarantined and salvaged"
    );
    Ok(report)
}

/// Copies every readable row of `source` into the fresh database at `target`, in one
/// transaction, then drops rows of lost events and damaged plans of pending events.
fn salvage(source: &Path, target: &Path, report: &mut RepairReport) -> rusqlite::Result<()> {
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
    let mut salvaged_ids: BTreeSet<String> = BTreeSet::new();
    for (table, columns) in TABLES {
        let mut result = TableSalvage {
            table,
            ..TableSalvage::default()
        };
        if let Some(src) = &src {
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

    // Ids the inbox's key index still holds, and ids the other tables name.
    let mut known: BTreeSet<String> = BTreeSet::new();
    if let Some(src) = &src {
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

    let plans_damaged = report
        .tables
        .iter()
        .filter(|t| t.table == "deliveries" || t.table == "streams")
        .any(|t| t.lost > 0 || t.first_error.is_some());
    if plans_damaged {
        let broken: Vec<String> = tx
            .prepare(
                "SELECT i.event_id FROM inbox i WHERE i.status = 'pending' AND (
                   (EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = i.event_id)
                    AND NOT EXISTS (SELECT 1 FROM streams s WHERE s.event_id = i.event_id))
                   OR (SELECT COUNT(*) FROM streams s WHERE s.event_id = i.event_id)
                      <> (SELECT COALESCE(MAX(ordinal), -1) + 1 FROM streams s
                          WHERE s.event_id = i.event_id))
                 ORDER BY i.event_id",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for id in &broken {
            tx.execute("DELETE FROM deliveries WHERE event_id = ?1", [id])?;
            tx.execute("DELETE FROM streams WHERE event_id = ?1", [id])?;
        }
        report.replanned = broken;
    }
    tx.commit()?;
    // Fold the WAL into the file so that the single file moved into place is complete.
    dest.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// The SELECT list for `table` in the damaged database: its own column where it has one, the
/// default where an older schema lacks it.
fn has_table(src: &Connection, table: &str) -> bool {
    src.query_row(
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [table],
        |r| r.get(0),
    )
    .unwrap_or(true)
}

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

/// One sink checked by the doctor.
#[derive(Clone, Debug)]
pub struct SinkCheck {
    /// Sink name.
    pub sink: String,
    /// The config's `plugin`.
    pub plugin: String,
    /// Whether the plugin was found, loaded, and an instance created and checked.
    pub ok: bool,
    /// What was loaded (plugin, version, ABI, path), or what went wrong.
    pub message: String,
}

/// Loads every configured sink's plugin and, when `create` is true, creates and checks an
/// instance of each on its own (as `flatsync check` does for all at once), then shuts it down.
/// Pass `create = false` while a daemon runs on the same config: creating a second instance
/// of a sink whose outputs the daemon is writing could disturb them (csv-folder clears its
/// stale temporary files on create).
pub async fn check_sinks(config: &Config, create: bool) -> Vec<SinkCheck> {
    let mut checks = Vec::new();
    for (name, sink) in &config.sinks {
        let (ok, message) = if create {
            let mut alone = config.clone();
            alone.sinks = BTreeMap::from([(name.clone(), sink.clone())]);
            match crate::daemon::start_sinks(&alone, &Default::default()).await {
                Ok(workers) => {
                    let mut message = String::new();
                    for worker in workers.values() {
                        message = format!("{}: created and checked", describe(worker.plugin()));
                        worker.shutdown().await;
                    }
                    (true, message)
                }
                Err(error) => (false, error_chain(&error)),
            }
        } else {
            match crate::daemon::load_sink_plugin(config, name, sink, &Default::default()) {
                Ok(plugin) => (
                    true,
                    format!(
                        "{}: loaded; not created, because a running daemon owns this sink's outputs",
                        describe(&plugin)
                    ),
                ),
                Err(error) => (false, error_chain(&error)),
            }
        };
        checks.push(SinkCheck {
            sink: name.clone(),
            plugin: sink.plugin.clone(),
            ok,
            message,
        });
    }
    checks
}

fn describe(plugin: &crate::LoadedPlugin) -> String {
    let (major, minor) = plugin.abi();
    format!(
        "plugin {} {} (ABI {major}.{minor}) from {}",
        plugin.name(),
        plugin.version(),
        plugin.path().display()
    )
}

/// How a Flatfile API answered the doctor's probe with a configured key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiOutcome {
    /// The key was accepted.
    Ok {
        /// The HTTP status.
        status: u16,
    },
    /// 401 or 403: the API refused the key.
    KeyRejected {
        /// The HTTP status.
        status: u16,
    },
    /// No answer: DNS, connection, TLS or timeout.
    Unreachable {
        /// What failed.
        message: String,
    },
    /// An answer that says nothing about the key (a 5xx, a redirect, ...).
    UnexpectedStatus {
        /// The HTTP status.
        status: u16,
    },
    /// The key's source is configured but holds nothing (the variable or file is missing).
    NotSet {
        /// Where the key should be.
        source: String,
    },
    /// The key or URL cannot be used at all.
    Invalid {
        /// Why.
        message: String,
    },
    /// Neither a legacy key nor a Platform secret key is configured.
    NotConfigured,
}

impl ApiOutcome {
    /// Whether this is a pass.
    pub fn is_ok(&self) -> bool {
        matches!(self, ApiOutcome::Ok { .. })
    }

    /// One line for the operator; never contains the key.
    pub fn explain(&self) -> String {
        match self {
            ApiOutcome::Ok { status } => format!("key accepted (HTTP {status})"),
            ApiOutcome::KeyRejected { status } => format!(
                "key rejected (HTTP {status}): the key is wrong, revoked, or for another \
                 environment or region"
            ),
            ApiOutcome::Unreachable { message } => format!("unreachable: {message}"),
            ApiOutcome::UnexpectedStatus { status } => format!(
                "unexpected answer HTTP {status}: check the configured API URL, or try again \
                 later"
            ),
            ApiOutcome::NotSet { source } => {
                format!("the key is configured to come from {source}, which is not set")
            }
            ApiOutcome::Invalid { message } => message.clone(),
            ApiOutcome::NotConfigured => "no API key is configured in [flatfile] \
                 (legacy_api_key_* or secret_key_*): no import can be fetched"
                .to_owned(),
        }
    }
}

/// One API probe of the doctor.
#[derive(Clone, Debug)]
pub struct ApiCheck {
    /// `legacy API` or `Platform API`.
    pub api: &'static str,
    /// The base URL probed.
    pub url: String,
    /// Where the key comes from (never the key).
    pub key_source: String,
    /// The verdict.
    pub outcome: ApiOutcome,
}

/// Probes each Flatfile API a key is configured for with one cheap authenticated GET
/// (`FlatfileClient::probe_legacy_key`, `probe_secret_key`), without retries and with a
/// request timeout of at most 15 s.
pub async fn check_flatfile(config: &Config) -> Vec<ApiCheck> {
    let flatfile = &config.flatfile;
    if flatfile.legacy_api_key.is_none() && flatfile.secret_key.is_none() {
        return vec![ApiCheck {
            api: "Flatfile API",
            url: flatfile.api_url.clone(),
            key_source: "none".to_owned(),
            outcome: ApiOutcome::NotConfigured,
        }];
    }
    let mut checks = Vec::new();
    for (api, url, source, legacy) in [
        (
            "legacy API",
            &flatfile.legacy_api_url,
            &flatfile.legacy_api_key,
            true,
        ),
        (
            "Platform API",
            &flatfile.api_url,
            &flatfile.secret_key,
            false,
        ),
    ] {
        let Some(source) = source else { continue };
        let outcome = probe_api(config, source, legacy).await;
        checks.push(ApiCheck {
            api,
            url: url.clone(),
            key_source: source.describe(),
            outcome,
        });
    }
    checks
}

async fn probe_api(config: &Config, source: &SecretSource, legacy: bool) -> ApiOutcome {
    let key = match source.read() {
        Ok(Some(key)) => key,
        Ok(None) => {
            return ApiOutcome::NotSet {
                source: source.describe(),
            };
        }
        Err(message) => return ApiOutcome::Invalid { message },
    };
    let (legacy_api_key, secret_key) = if legacy {
        (Some(key), None)
    } else {
        (None, Some(key))
    };
    let client = FlatfileClient::new(ClientConfig {
        legacy_api_url: config.flatfile.legacy_api_url.clone(),
        legacy_api_key,
        api_url: config.flatfile.api_url.clone(),
        secret_key,
        request_timeout: config.flatfile.request_timeout.min(Duration::from_secs(15)),
        connect_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
    });
    let client = match client {
        Ok(client) => client,
        Err(error) => {
            return ApiOutcome::Invalid {
                message: error.to_string(),
            };
        }
    };
    let answer = if legacy {
        client.probe_legacy_key().await
    } else {
        client.probe_secret_key().await
    };
    match answer {
        Ok(status @ (401 | 403)) => ApiOutcome::KeyRejected { status },
        Ok(status @ 200..=299) => ApiOutcome::Ok { status },
        // The legacy probe asks for a batch that does not exist: a 404 comes after the key
        // was accepted.
        Ok(404) if legacy => ApiOutcome::Ok { status: 404 },
        Ok(status) => ApiOutcome::UnexpectedStatus { status },
        Err(ApiError::Transport { message, .. }) => ApiOutcome::Unreachable { message },
        Err(error) => ApiOutcome::Invalid {
            message: error.to_string(),
        },
    }
}
