//! The write-ahead log copied into the database on a thread of its own, so the sink's thread
//! goes on writing batches meanwhile.
//!
//! SQLite's automatic checkpoint runs inside the commit that passes 1000 pages of log: the
//! writer copies the log into the database and waits for two fsyncs (the log's, then the
//! database's) before it can start the next batch. A million rows spent about a quarter of
//! the sink thread's time there. Here the writer's commits only note the log's length (the
//! WAL hook replaces the automatic checkpoint) and wake [`Checkpointer`]'s thread, which runs
//! PASSIVE checkpoints on a second connection: they copy what is committed without taking any
//! lock a writer or reader needs, and never wait.
//!
//! A PASSIVE checkpoint cannot end the log while batches keep arriving: SQLite starts the log
//! again from its beginning only when a write begins with every frame already copied, and a
//! writer committing batch after batch never leaves the checkpointer that gap. So the commit
//! that takes the log past its limit ([`LogLimits`], the `wal_limit_mib` config key) wakes the
//! thread for the rest, and the writer, before its next batch, waits for that pass and
//! checkpoints once more itself ([`Checkpointer::bound_log`]), which finds nothing left unless
//! another connection held the thread back: its next commit restarts the log. The log stays
//! within about the limit plus one batch. A reader holding an old snapshot can keep it from
//! restarting, as it could SQLite's own checkpoint.
//!
//! The thread starts a pass per quarter of the limit of new log, not per 1000 pages as SQLite
//! does. A pass copies each page once, from its latest frame, and with Flatfile's random
//! record ids every batch rewrites pages all over a large table's index: a million legacy
//! rows wrote 7.9 GiB with passes per 1000 pages and 16 MiB of log, 5.0 GiB with passes per
//! 64 MiB and 256 MiB of log (the default).
//!
//! Durability is unchanged: every checkpoint syncs the log before copying it and the database
//! after, whichever connection runs it, and `durable` syncs the log at each flush.

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use flatsync_plugin_sdk::{Logger, SinkError};
use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, ErrorCode, MAIN_DB};

/// How long the write-ahead log may grow, in pages: from the `wal_limit_mib` config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogLimits {
    /// New log, in pages, after which a commit wakes the checkpointer: a quarter of `limit`.
    /// Each pass copies a page once however many of its frames the log holds, and with
    /// Flatfile's random record ids a batch rewrites pages all over a table's index, so
    /// passes over a longer log copy fewer pages per row.
    start: i32,
    /// Log length, in pages, past which the writer waits for the thread's pass and
    /// checkpoints once more before its next batch, so that the batch restarts the log.
    limit: i32,
}

impl LogLimits {
    /// At most `mib` MiB of log on disk (plus the batch that passed it), in pages of
    /// `page_size` bytes.
    pub(crate) fn new(mib: u32, page_size: u32) -> LogLimits {
        let limit = (u64::from(mib) << 20) / u64::from(page_size.max(512));
        let limit = i32::try_from(limit).unwrap_or(i32::MAX).max(4);
        LogLimits {
            start: limit / 4,
            limit,
        }
    }

    /// The limit, in pages.
    #[cfg(test)]
    pub(crate) fn limit(self) -> i32 {
        self.limit
    }
}

/// What the writer's commits and the checkpointer's thread share.
#[derive(Debug)]
struct Shared {
    limits: LogLimits,
    /// Pages in the log after the writer's last commit (SQLite's WAL hook reports them).
    log_pages: AtomicI32,
    wake: Mutex<Wake>,
    /// Signalled when `copy` or `stop` is set.
    woken: Condvar,
    /// Signalled when a pass ends.
    idle: Condvar,
}

#[derive(Debug, Default)]
struct Wake {
    /// A commit left log to copy since the thread last looked.
    copy: bool,
    /// The thread is in a pass.
    copying: bool,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Wake> {
        // The flags stay meaningful whatever a panicking holder left behind.
        self.wake.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The second connection's thread, stopped and joined on drop.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Takes the checkpoints of `writer`'s database (opened from `path`) off its thread.
    pub(crate) fn start(
        writer: &mut Connection,
        path: &Path,
        limits: LogLimits,
        logger: &Logger,
    ) -> Result<Self, SinkError> {
        let fail = |what: &str, error: rusqlite::Error| {
            SinkError::fatal(format!("{what} {}: {error}", path.display()))
        };
        let conn = Connection::open(path)
            .map_err(|error| fail("cannot open a checkpoint connection to", error))?;
        // A connection opens the log only once it has read the database: until then its
        // checkpoints find no log and copy nothing.
        crate::require_wal(
            &conn,
            "PRAGMA journal_mode",
            path,
            "cannot read the journal mode of",
            |mode| {
                format!(
                    "{} is in journal mode {mode:?} on a second connection, WAL is required",
                    path.display()
                )
            },
        )?;
        // And a first checkpoint proves it found the log (SQLite counts -1 frames otherwise).
        match conn.wal_checkpoint_v2(Some(MAIN_DB), CheckpointMode::PASSIVE) {
            Ok((log, _)) if log < 0 => {
                return Err(SinkError::fatal(format!(
                    "a second connection to {} finds no write-ahead log to checkpoint",
                    path.display()
                )));
            }
            Err(error) if error.sqlite_error_code() != Some(ErrorCode::DatabaseBusy) => {
                return Err(fail("cannot checkpoint", error));
            }
            _ => {}
        }
        let shared = Arc::new(Shared {
            limits,
            log_pages: AtomicI32::new(0),
            wake: Mutex::default(),
            woken: Condvar::new(),
            idle: Condvar::new(),
        });
        let hook = Arc::clone(&shared);
        // The log's length at the last wake: a pass per `limits.start` pages of new log, not
        // one per commit, since each pass costs two fsyncs and copies fewer pages per row.
        let mut woken_at = 0;
        // Replaces SQLite's automatic checkpoint, which is itself a WAL hook.
        writer
            .wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
                hook.log_pages.store(pages, Ordering::Relaxed);
                if pages < woken_at {
                    // The log restarted.
                    woken_at = 0;
                }
                // Past the limit, the writer waits for this pass before its next batch.
                if pages - woken_at >= limits.start || pages >= limits.limit {
                    woken_at = pages;
                    hook.lock().copy = true;
                    hook.woken.notify_one();
                }
                Ok(())
            }))
            .map_err(|error| fail("cannot hook the write-ahead log of", error))?;
        let thread = {
            let shared = Arc::clone(&shared);
            let logger = logger.clone();
            let database = path.to_owned();
            thread::Builder::new()
                .name("sqlite-checkpoint".to_owned())
                .spawn(move || run(&conn, &shared, &logger, &database))
                .map_err(|error| {
                    SinkError::fatal(format!(
                        "cannot start the checkpoint thread of {}: {error}",
                        path.display()
                    ))
                })?
        };
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Before a batch: once the log holds the limit, waits for the thread's pass to
    /// end and checkpoints whatever it left, so the batch's commit starts the log again from
    /// its beginning. A checkpoint another process is running leaves that for the next batch.
    pub(crate) fn bound_log(&self, writer: &Connection) -> Result<(), rusqlite::Error> {
        if self.shared.log_pages.load(Ordering::Relaxed) < self.shared.limits.limit {
            return Ok(());
        }
        self.wait_idle();
        match writer.wal_checkpoint_v2(Some(MAIN_DB), CheckpointMode::PASSIVE) {
            Err(error) if error.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => Ok(()),
            Err(error) => Err(error),
            Ok(_) => Ok(()),
        }
    }

    /// Waits until the thread has made the passes it was woken for.
    pub(crate) fn wait_idle(&self) {
        let mut wake = self.shared.lock();
        while wake.copy || wake.copying {
            wake = self
                .shared
                .idle
                .wait(wake)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.woken.notify_one();
        if let Some(thread) = self.thread.take() {
            // A panic there was already reported by the panic hook; the writer's own close
            // still checkpoints the log.
            let _ = thread.join();
        }
    }
}

/// The checkpointer's loop: one PASSIVE checkpoint per wake until stopped.
fn run(conn: &Connection, shared: &Shared, logger: &Logger, path: &Path) {
    let mut failing = false;
    loop {
        {
            let mut wake = shared.lock();
            while !wake.copy && !wake.stop {
                wake = shared
                    .woken
                    .wait(wake)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if wake.stop {
                return;
            }
            wake.copy = false;
            wake.copying = true;
        }
        let copied = {
            let _pass = PassEnds(shared);
            conn.wal_checkpoint_v2(Some(MAIN_DB), CheckpointMode::PASSIVE)
        };
        match copied {
            Ok((log, _)) if log >= 0 => failing = false,
            Ok(_) => {
                if !failing {
                    logger.warn(&format!(
                        "Cannot copy the write-ahead log into {}: the checkpoint connection \
                         finds no log",
                        path.display()
                    ));
                }
                failing = true;
            }
            // Another process is checkpointing.
            Err(error) if error.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => {}
            Err(error) => {
                // Said once per run of failures: each commit past the start retries, and the
                // writer's own copy at the limit fails its batch with the same error.
                if !failing {
                    logger.warn(&format!(
                        "Cannot copy the write-ahead log into {}: {error}",
                        path.display()
                    ));
                }
                failing = true;
            }
        }
    }
}

/// Ends a pass even if the thread unwinds, so a writer waiting in `bound_log` never hangs.
struct PassEnds<'s>(&'s Shared);

impl Drop for PassEnds<'_> {
    fn drop(&mut self) {
        self.0.lock().copying = false;
        self.0.idle.notify_all();
    }
}
