//! Durability at checkpoints: the write-ahead log synced once per flush instead of once per
//! commit.
//!
//! The connection runs with `synchronous = NORMAL`: each batch's commit writes its frames to
//! the write-ahead log without waiting for the disk, so a killed process loses nothing
//! committed (the frames are in the kernel's cache) and a power cut loses at most a suffix of
//! the commits (SQLite's recovery keeps the log up to its first frame that did not reach the
//! disk, so the database is never torn). `flush` then syncs the log file, which makes every
//! commit before it survive a power cut, as `synchronous = FULL` did at every commit. The host
//! advances its checkpoints only after a flush, so a batch lost to a power cut is one it
//! sends again. SQLite itself syncs the log before each checkpoint copies it into the
//! database, and the database after, so the database file needs nothing from us.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use flatsync_plugin_sdk::SinkError;
use rusqlite::Connection;

/// Syncs one database's write-ahead log file.
#[derive(Debug)]
pub(crate) struct WalSync {
    wal: PathBuf,
    /// Whether the log's directory entry is known to be on disk. SQLite syncs the folder
    /// when it first syncs a log it created, which under NORMAL may not have happened yet.
    folder_synced: bool,
}

impl WalSync {
    /// The log of `conn`'s main database, opened from `path`.
    pub(crate) fn new(conn: &Connection, path: &Path) -> Self {
        // SQLite's own name for the file (absolute), which `path` may not be (a URI).
        let database = conn
            .path()
            .filter(|name| !name.is_empty())
            .map_or_else(|| path.to_owned(), PathBuf::from);
        let mut wal = database.into_os_string();
        wal.push("-wal");
        Self {
            wal: PathBuf::from(wal),
            folder_synced: false,
        }
    }

    /// Makes every commit so far survive a power cut.
    ///
    /// Opening and closing the log here is safe with SQLite's POSIX locks: SQLite locks the
    /// database and its `-shm` file, never the log, and closing another descriptor of a file
    /// only drops locks on that file.
    pub(crate) fn sync(&mut self) -> Result<(), SinkError> {
        let fail = |what: &str, path: &Path, error: io::Error| {
            // After a failed sync the kernel may have dropped the unwritten pages, so a retry
            // that succeeds would prove nothing: stop instead.
            SinkError::fatal(format!("cannot {what} {}: {error}", path.display()))
        };
        let log = match File::open(&self.wal) {
            Ok(log) => log,
            // No log: nothing was ever written through one since the database was last
            // closed, and SQLite synced the database when it removed the log.
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(fail("open", &self.wal, error)),
        };
        log.sync_data()
            .map_err(|error| fail("sync", &self.wal, error))?;
        if !self.folder_synced {
            let folder = self
                .wal
                .parent()
                .filter(|folder| !folder.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            File::open(folder)
                .and_then(|folder| folder.sync_all())
                .map_err(|error| fail("sync the folder", folder, error))?;
            self.folder_synced = true;
        }
        Ok(())
    }
}
