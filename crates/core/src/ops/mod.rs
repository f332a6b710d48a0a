//! Operator queries and repairs on the state database: status, events, replay, dead letters
//! and the doctor. They open the database file themselves, so they work while a daemon runs.
//!
//! Every command opens `<state_dir>/state.db` through [`crate::state::OperatorDb`]: read-only
//! for the commands that only read, read-write (never creating it) for the ones that change
//! it. It waits for the daemon's locks and never touches the journal mode. A change is one
//! short transaction, so the daemon sees all of it or none.
//!
//! Changes only ever set deliveries and events back to `pending`; the running daemon rescans
//! the inbox for pending events and delivers them, and a stopped daemon does on its next start.
//! Events that are `pending` already are being worked on and are left alone: an operator
//! change under the pipeline's feet could be overwritten when it records its result.

mod doctor;
mod live;
mod plugins;
mod query;
mod repair;

use std::path::{Path, PathBuf};

pub use crate::daemon::DaemonState;
pub use crate::state::DaemonRecord;
pub use crate::time::format_utc;
pub use doctor::{
    ApiCheck, ApiOutcome, RepairReport, SinkCheck, check_flatfile, check_sinks, daemon_using_state,
    repair_state,
};
pub use live::LiveReport;
pub use plugins::{InstalledPlugin, PluginScan, SinkPlugin, scan_plugins};
pub use query::{DaemonStatus, EventFilter, RouteStatus, SinkStatus, StatusReport};
pub use repair::{
    DeadLetterReport, DeadLetterSelector, DeliveryRef, EventOutcome, QueuedDelivery, ReplayReport,
    ReplaySelector, SkippedItem,
};

pub use crate::state::health::{StateHealth, StateInspection, TableSalvage, inspect_state};
pub use crate::state::report::{
    CheckpointInfo, DeadLetter, DeliveryInfo, DeliverySummary, EventDetail, EventSummary, InFlight,
    LastError, PollStatus, PostgresHealth, StreamInfo, StreamProgress, UploadStatus,
};
use crate::state::{EventStatus, OperatorDb, StateError, StateLocation};

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

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The state database cannot be opened or read as asked (no file, another schema
    /// version, an SQLite error).
    #[error(transparent)]
    State(#[from] StateError),
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
    db: OperatorDb,
}

impl OpsDb {
    /// Opens `<state_dir>/state.db` read-only, for the commands that only read.
    pub fn open_read_only(state_dir: &Path) -> Result<OpsDb, OpsError> {
        Ok(OpsDb {
            db: OperatorDb::open_read_only(state_dir)?,
        })
    }

    /// Opens `<state_dir>/state.db` read-write, for replay and dead-letter changes. The file
    /// must exist: a mistyped directory must not get a fresh empty database.
    pub fn open_for_update(state_dir: &Path) -> Result<OpsDb, OpsError> {
        Ok(OpsDb {
            db: OperatorDb::open_for_update(state_dir)?,
        })
    }

    /// Opens the state database `config` names (`[daemon] state_dir`, or `state_url` with its
    /// secrets read), read-only for the commands that only read. Nothing is created.
    pub fn open_configured(config: &crate::Config, read_only: bool) -> Result<OpsDb, OpsError> {
        let location = config.daemon.state_location().map_err(OpsError::Refused)?;
        OpsDb::open_location(&location, read_only)
    }

    /// Opens the state database at `location`, read-only for the commands that only read.
    /// The database must exist: nothing is created.
    pub(crate) fn open_location(
        location: &StateLocation,
        read_only: bool,
    ) -> Result<OpsDb, OpsError> {
        Ok(OpsDb {
            db: OperatorDb::open_location(location, read_only)?,
        })
    }

    /// The PostgreSQL state's server, role, privileges and active daemon; `None` for SQLite.
    pub fn postgres_health(&self) -> Result<Option<PostgresHealth>, OpsError> {
        if !self.db.is_postgres() {
            return Ok(None);
        }
        Ok(Some(self.db.read(|snapshot| snapshot.postgres_health())?))
    }

    /// The database file; for PostgreSQL, its URL without the password.
    pub fn path(&self) -> &Path {
        self.db.path()
    }
}

/// Parses an event status as stored and as `--status` takes it.
pub fn parse_event_status(text: &str) -> Option<EventStatus> {
    EventStatus::parse(text)
}

#[cfg(test)]
mod tests;
