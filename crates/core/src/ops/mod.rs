//! Operator queries and repairs on the state database: status, events, replay, dead letters
//! and the doctor. They open the database file themselves, so they work while a daemon runs.
//!
//! Every command opens `<state_dir>/state.db` with its own SQLite connection: read-only for
//! the commands that only read, read-write (never creating it) for the ones that change it.
//! The connection waits up to 5 s for the daemon's locks and never touches the journal mode.
//! A change is one short `BEGIN IMMEDIATE` transaction, so the daemon sees all of it or none.
//!
//! Changes only ever set deliveries and events back to `pending`; the running daemon rescans
//! the inbox for pending events and delivers them, and a stopped daemon does on its next start.
//! Events that are `pending` already are being worked on and are left alone: an operator
//! change under the pipeline's feet could be overwritten when it records its result.

mod doctor;
mod plugins;
mod query;
mod repair;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

pub use crate::time::format_utc;
pub use doctor::{
    ApiCheck, ApiOutcome, RepairReport, SinkCheck, StateHealth, StateInspection, TableSalvage,
    check_flatfile, check_sinks, daemon_using_state, inspect_state, repair_state,
};
pub use plugins::{InstalledPlugin, PluginScan, SinkPlugin, scan_plugins};
pub use query::{
    CheckpointInfo, DeliveryInfo, DeliverySummary, EventDetail, EventFilter, EventSummary,
    LastError, PollStatus, RouteStatus, SinkStatus, StatusReport, UploadStatus,
};
pub use repair::{
    DeadLetter, DeadLetterReport, DeadLetterSelector, DeliveryRef, EventOutcome, QueuedDelivery,
    ReplayReport, ReplaySelector, SkippedItem,
};

use crate::state::{EventStatus, SCHEMA_VERSION, StateDb};

/// Turns `--since` text into milliseconds since the Unix epoch: an RFC 3339 time
/// (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.5+02:00`) or a duration back from `now_ms`
/// made of numbers with units `s`, `m`, `h`, `d`, `w` (`30m`, `2h`, `7d`, `1h30m`).
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, OpsError> {
    crate::time::parse_since(text, now_ms).ok_or_else(|| {
        OpsError::Refused(format!(
            "`{}` is neither an RFC 3339 time like 2024-05-01T12:00:00Z nor a duration like \
             30m, 2h or 7d",
            text.trim()
        ))
    })
}

/// How long a command waits for the daemon's locks.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// There is no state database in the state directory.
    #[error(
        "no state database at {path}: flatsync has not run with this state directory yet, or \
         `[daemon] state_dir` / --state-dir points elsewhere"
    )]
    NoDatabase {
        /// The expected file.
        path: PathBuf,
    },
    /// SQLite refused an operation.
    #[error("state database {path}: {error}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        error: rusqlite::Error,
    },
    /// The database has a schema these commands do not read.
    #[error("state database {path} has schema version {found}; {hint}")]
    Schema {
        /// The database file.
        path: PathBuf,
        /// Version found in `PRAGMA user_version`.
        found: i64,
        /// What to do about it.
        hint: &'static str,
    },
    /// The event is not in the inbox.
    #[error("no event `{0}` in the state database")]
    UnknownEvent(String),
    /// The request cannot be carried out as asked; the message says why.
    #[error("{0}")]
    Refused(String),
    /// A file operation of the doctor failed.
    #[error("cannot {what} {path}: {error}")]
    Io {
        /// What was being done, e.g. `move`.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// A connection to the state database of one state directory, for operator commands.
#[derive(Debug)]
pub struct OpsDb {
    path: PathBuf,
    conn: Connection,
}

impl OpsDb {
    /// Opens `<state_dir>/state.db` read-only, for the commands that only read.
    pub fn open_read_only(state_dir: &Path) -> Result<OpsDb, OpsError> {
        OpsDb::open(state_dir, OpenFlags::SQLITE_OPEN_READ_ONLY)
    }

    /// Opens `<state_dir>/state.db` read-write, for replay and dead-letter changes. The file
    /// must exist: a mistyped directory must not get a fresh empty database.
    pub fn open_for_update(state_dir: &Path) -> Result<OpsDb, OpsError> {
        OpsDb::open(state_dir, OpenFlags::SQLITE_OPEN_READ_WRITE)
    }

    fn open(state_dir: &Path, mode: OpenFlags) -> Result<OpsDb, OpsError> {
        let path = state_dir.join(StateDb::FILE_NAME);
        if !path.is_file() {
            return Err(OpsError::NoDatabase { path });
        }
        let err = |error| OpsError::Sqlite {
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
            return Err(OpsError::Schema { path, found, hint });
        }
        Ok(OpsDb { path, conn })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql_error(&self) -> impl Fn(rusqlite::Error) -> OpsError + '_ {
        |error| OpsError::Sqlite {
            path: self.path.clone(),
            error,
        }
    }
}

/// Parses an event status as stored and as `--status` takes it.
pub fn parse_event_status(text: &str) -> Option<EventStatus> {
    [
        EventStatus::Pending,
        EventStatus::Done,
        EventStatus::Failed,
        EventStatus::Skipped,
        EventStatus::Unrouted,
    ]
    .into_iter()
    .find(|s| s.as_str() == text)
}

#[cfg(test)]
mod tests;
