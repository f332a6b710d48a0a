//! The state database: the inbox of accepted events, routing decisions, stream plans,
//! per-sink checkpoints, polling cursors, carried uploads and the daemons using it, in one
//! SQLite file (WAL, `synchronous=FULL`).
//!
//! Every write that precedes an externally visible promise (a 2xx to a webhook sender, a
//! checkpoint advance) is committed with a full sync before the promise is made.
//!
//! # One owner
//!
//! This module alone knows the tables: the DDL and migrations (`schema`), every query, and
//! the text of the status columns ([`EventStatus`], [`DeliveryStatus`]). Nothing outside it
//! holds SQL, a `rusqlite` type or a `Connection`; `.ci/state-sql` checks the SQL part. By
//! job:
//! - `inbox`: accepted events and their status;
//! - `intake`: the group commit of webhook events and carried parts;
//! - `streams`: routing (deliveries), stream plans and checkpoints;
//! - `poll`: polling cursors and pending acknowledgements;
//! - `carried`: uploads whose rows arrive in webhook bodies;
//! - `groups`: rows of events without data grouped into streams of many events, and which
//!   batch of which group stream carries each;
//! - `daemons`: the daemons that run or ran on this state, where they listen and when they
//!   were last seen ([`DaemonRecord`]);
//! - [`operator`]: the operator commands' own handle ([`OperatorDb`]), opened while a daemon
//!   runs, with [`report`] (reads) and [`repair`] (writes) on it;
//! - [`health`]: the integrity check and the salvage of a damaged file.
//! - `tx`: the transaction an operator read or change runs in, with the row helpers both use.
//!
//! # What a second backend provides
//!
//! The daemon uses [`StateDb`]'s async methods; the operator commands and `/metrics` use
//! [`OperatorDb`] and its snapshot ([`report::Snapshot`]) and change ([`repair::Change`])
//! handles. Another backend (PostgreSQL) implements the same methods with the same typed rows,
//! and keeps what the callers rely on:
//! - an event is stored at most once per id and is durable before the method returns;
//! - polled events, their pending acknowledgements and the cursor move in one transaction,
//!   and the cursor never moves backwards;
//! - routing and stream plan are recorded together ([`StateDb::plan_event`]);
//! - a checkpoint never moves backwards ([`StateDb::advance`] keeps the maximum);
//! - a group batch's members are recorded before the batch is handed out and never change;
//!   its checkpoint, its members' deliveries and their events' statuses move in one
//!   transaction (`groups`);
//! - a part of a carried upload is stored once, and completing the upload (numbering its
//!   parts, its inbox event) happens in the transaction of its last part;
//! - a daemon's row is registered at its start, its `last_seen_ms` only moves forwards and
//!   stops moving once it is marked stopped ([`StateDb::touch_daemon`]);
//! - every operator read sees one snapshot, every operator change is one transaction that
//!   waits for the daemon's writes rather than interleaving with them.
//!
//! [`health`] is SQLite's own (page-level salvage); another backend brings its own checks.

mod carried;
mod daemons;
mod groups;
pub mod health;
mod inbox;
mod intake;
pub mod operator;
mod poll;
pub mod repair;
pub mod report;
mod schema;
pub(crate) mod sql;
mod status;
mod streams;
#[cfg(test)]
pub(crate) mod testing;
mod tx;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use sql::{Db, DbError, PgTarget};

pub(crate) use carried::{PartHead, PartKey, PartOutcome};
pub use daemons::{DAEMON_RETENTION, DAEMON_TOUCH_INTERVAL, DaemonRecord};
pub use groups::GroupBatchInfo;
pub(crate) use groups::{BatchLimits, GroupBatch, GroupPlan, GroupWork, Settled};
pub(crate) use inbox::CARRIED_KIND;
pub use inbox::StoredEvent;
pub(crate) use intake::{InboxOutcome, InboxWrite};
pub use operator::OperatorDb;
pub use poll::PolledEvent;
pub use schema::SCHEMA_VERSION;
pub use status::{DeliveryStatus, EventStatus};
pub use streams::{Checkpoint, Delivery, StreamPlan, StreamSource, stream_for_generation};

/// State database errors.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database (SQLite or PostgreSQL) refused an operation or could not be reached.
    #[error("state database {at}: {error}")]
    Database {
        /// The file, or the PostgreSQL URL without its password.
        at: String,
        /// What went wrong.
        error: DbError,
    },
    /// SQLite refused an operation of what only SQLite has (the integrity check, salvage).
    #[error("state database {path}: {error}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        error: rusqlite::Error,
    },
    /// The state directory could not be created.
    #[error("cannot create state directory {path}: {error}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The database was written by a newer flatsync.
    #[error("state database {path} has schema version {found}; this flatsync knows up to {known}")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Version found.
        found: i64,
        /// Highest version this build knows.
        known: i64,
    },
    /// SQLite's quick check found damage. Nothing is changed: `flatsync doctor --repair`
    /// quarantines the file and salvages what it can read.
    #[error(
        "state database {path} is damaged ({detail}); run `flatsync doctor --repair` to quarantine it and salvage what can be read"
    )]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// SQLite's first complaint.
        detail: String,
    },
    /// An operator command found no database in the state directory.
    #[error(
        "no state database at {path}: flatsync has not run with this state directory yet, or \
         `[daemon] state_dir` / --state-dir points elsewhere"
    )]
    NoDatabase {
        /// The expected file.
        path: PathBuf,
    },
    /// The database has a schema the operator commands do not read.
    #[error("state database {path} has schema version {found}; {hint}")]
    Schema {
        /// The database file.
        path: PathBuf,
        /// Version found in `PRAGMA user_version`.
        found: i64,
        /// What to do about it.
        hint: &'static str,
    },
    /// A blocking task panicked or was cancelled.
    #[error("state database task failed: {0}")]
    Task(String),
}

/// Where the state database is: an SQLite file in a directory (the default, which needs
/// nothing installed) or a PostgreSQL database several daemons can share.
#[derive(Clone, Debug)]
pub(crate) enum StateLocation {
    /// `<dir>/state.db`.
    Dir(PathBuf),
    /// A PostgreSQL database (boxed: its settings are much larger than a path).
    Postgres(Box<PgTarget>),
}

/// Handle on the state database; cheap to clone.
#[derive(Clone, Debug)]
pub struct StateDb {
    /// The SQLite file; for PostgreSQL, the URL without its password, so that every message
    /// that names the state can keep taking a path.
    path: PathBuf,
    /// PostgreSQL: how long the server keeps a silent session of this daemon (and the active
    /// role it holds). `None` for SQLite, which has one daemon.
    lease: Option<std::time::Duration>,
    conn: Arc<Mutex<Db>>,
    /// Webhook intake's own connection on PostgreSQL, so that a daemon waiting for the
    /// active role (or one that lost it) still stores what it is sent; the same as `conn` on
    /// SQLite.
    intake: Arc<Mutex<Db>>,
    /// Turns true when another daemon took the active role from this one.
    role_lost: Arc<tokio::sync::watch::Sender<bool>>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl StateDb {
    /// File name of the database inside the state directory.
    pub const FILE_NAME: &'static str = "state.db";

    /// The connection's page cache, in KiB as `PRAGMA cache_size` takes it (negative): a quarter
    /// of SQLite's default. A drain's reads and writes stay near the end of the inbox and the
    /// group tables, and a page missed here is still in the kernel's cache; 100,000 events
    /// drained and ingested as fast with 1 MiB as with 2 MiB, and with this as with 1 MiB, in
    /// about 0.4 MiB less peak RSS with a million events pending.
    const CACHE_KIB: i64 = -512;

    /// Opens (creating if needed) the state database at `location`, migrating its schema.
    pub(crate) fn open_at(location: &StateLocation) -> Result<StateDb, StateError> {
        match location {
            StateLocation::Dir(dir) => StateDb::open(dir),
            StateLocation::Postgres(target) => {
                let at = target.redacted().to_owned();
                let err = |error| StateError::Database {
                    at: at.clone(),
                    error,
                };
                let mut db = Db::postgres_session(
                    (**target).clone(),
                    sql::Session::Work {
                        lease: target.lease(),
                    },
                )
                .map_err(err)?;
                let intake =
                    Db::postgres_session((**target).clone(), sql::Session::Intake).map_err(err)?;
                sql::off_runtime(|| schema::migrate_postgres(&mut db)).map_err(|e| match e {
                    schema::PgSchemaError::Db(error) => err(error),
                    schema::PgSchemaError::TooNew(found) => StateError::TooNew {
                        path: PathBuf::from(&at),
                        found,
                        known: SCHEMA_VERSION,
                    },
                })?;
                Ok(StateDb {
                    path: PathBuf::from(at),
                    lease: Some(target.lease()),
                    conn: Arc::new(Mutex::new(db)),
                    intake: Arc::new(Mutex::new(intake)),
                    role_lost: Arc::new(tokio::sync::watch::channel(false).0),
                })
            }
        }
    }

    /// Opens (creating if needed) `<state_dir>/state.db`.
    pub fn open(state_dir: &Path) -> Result<StateDb, StateError> {
        std::fs::create_dir_all(state_dir).map_err(|error| StateError::Dir {
            path: state_dir.to_owned(),
            error,
        })?;
        let path = state_dir.join(Self::FILE_NAME);
        let err = |error| StateError::Sqlite {
            path: path.clone(),
            error,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        let damaged = |detail: String| StateError::Damaged {
            path: path.clone(),
            detail,
        };
        // A damaged file is refused before anything is written to it: the doctor salvages
        // more from a file nobody has touched since the damage.
        let verdict: String = conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(|e| damaged(e.to_string()))?;
        if verdict != "ok" {
            return Err(damaged(verdict));
        }
        // The check read every page of the file through this connection's cache; on a large
        // backlog that cache would stay full for the daemon's life though work touches a
        // fraction of it, so it is emptied here and refills only with what work reads.
        conn.execute_batch("PRAGMA shrink_memory").map_err(err)?;
        conn.pragma_update(None, "cache_size", Self::CACHE_KIB)
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // FULL: a webhook answered 2xx must survive power loss, not only a process crash.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        if version > SCHEMA_VERSION {
            return Err(StateError::TooNew {
                path,
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        schema::migrate(&conn, version).map_err(err)?;
        let conn = Arc::new(Mutex::new(Db::sqlite(conn)));
        Ok(StateDb {
            path,
            lease: None,
            intake: Arc::clone(&conn),
            conn,
            role_lost: Arc::new(tokio::sync::watch::channel(false).0),
        })
    }

    /// The database file; for PostgreSQL, its URL without the password.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection on a blocking thread.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> sql::Result<T> + Send + 'static,
    {
        self.call_on(Arc::clone(&self.conn), f).await
    }

    /// Runs `f` on webhook intake's connection (see `intake`).
    pub(crate) async fn call_intake<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> sql::Result<T> + Send + 'static,
    {
        self.call_on(Arc::clone(&self.intake), f).await
    }

    async fn call_on<T, F>(&self, conn: Arc<Mutex<Db>>, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> sql::Result<T> + Send + 'static,
    {
        let path = self.path.clone();
        let role_lost = Arc::clone(&self.role_lost);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut guard).map_err(|error| {
                if matches!(error, DbError::RoleLost) {
                    role_lost.send_replace(true);
                }
                StateError::Database {
                    at: path.display().to_string(),
                    error,
                }
            })
        })
        .await
        .map_err(|e| StateError::Task(e.to_string()))?
    }

    /// Whether the state is in PostgreSQL (shared by several daemons) rather than an SQLite
    /// file.
    pub fn is_postgres(&self) -> bool {
        self.lease.is_some()
    }

    /// The state's gauges for `/metrics`, read in one snapshot.
    pub(crate) async fn gauges(&self) -> Result<report::StateGauges, StateError> {
        self.call(|db| db.read_snapshot(report::gauges)).await
    }

    /// Claims `event_id` for this daemon, unless another daemon on this state is working on
    /// it (`false`). While claimed, everything the daemon writes for it goes through the
    /// session holding the claim: a daemon that lost its session (paused or cut off past the
    /// lease) cannot claim it again once another did, and is refused every write
    /// ([`StateDb::role_lost`]). Always `true` for an SQLite state, which has one daemon.
    pub async fn claim_event(&self, event_id: &str) -> Result<bool, StateError> {
        // One daemon per SQLite file: nothing to ask, and no blocking-thread hop per event.
        if !self.is_postgres() {
            return Ok(true);
        }
        let id = event_id.to_owned();
        self.call(move |db| db.claim_event(&id)).await
    }

    /// Lets go of an event [`StateDb::claim_event`] claimed, once this daemon is done with it
    /// for now (settled, or interrupted and left pending for whoever claims it next).
    pub async fn release_event(&self, event_id: &str) -> Result<(), StateError> {
        if !self.is_postgres() {
            return Ok(());
        }
        let id = event_id.to_owned();
        self.call(move |db| db.release_event(&id)).await
    }

    /// Takes the active role (polling Flatfile, writing grouped event rows) when no other
    /// daemon on this state holds it. Always `true` for an SQLite state, which has one daemon.
    pub async fn take_role(&self) -> Result<bool, StateError> {
        self.call(Db::take_role).await
    }

    /// Waits until this daemon holds the active role (`true`), trying every second, or until
    /// `stop` turns true first (`false`). A daemon that waits is a standby: it stores the
    /// webhooks it is sent, and takes over when the active daemon stops, dies or is cut off.
    pub async fn wait_for_role(&self, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
        let mut waiting_logged = false;
        loop {
            if *stop.borrow() {
                return false;
            }
            match self.take_role().await {
                Ok(true) => {
                    if waiting_logged {
                        tracing::info!(state = %self.path.display(), "Took over the active role");
                    }
                    return true;
                }
                Ok(false) if !waiting_logged => {
                    tracing::info!(
                        state = %self.path.display(),
                        "Another daemon is active on this state; standing by"
                    );
                    waiting_logged = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "Cannot ask for the active role"),
            }
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Holds the active role once taken: asks the server every third of the lease, which
    /// keeps the session (and so the role) alive, and notices when it was lost (then
    /// [`StateDb::role_lost`] resolves). Returns when `stop` turns true or the role is lost.
    pub async fn keep_role(&self, stop: &mut tokio::sync::watch::Receiver<bool>) {
        let Some(lease) = self.lease else {
            return;
        };
        loop {
            tokio::select! {
                () = tokio::time::sleep(lease / 3) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() || *self.role_lost.borrow() {
                return;
            }
            match self.take_role().await {
                Ok(true) => {}
                Ok(false)
                | Err(StateError::Database {
                    error: DbError::RoleLost,
                    ..
                }) => {
                    self.role_lost.send_replace(true);
                    return;
                }
                // The database is away (a restart): the session is gone too, and the next
                // call takes the role again or finds it lost.
                Err(e) => tracing::warn!(error = %e, "Cannot renew the active role"),
            }
        }
    }

    /// Resolves when another daemon took the active role from this one: it must stop, since
    /// everything it would write is refused.
    pub async fn role_lost(&self) {
        let mut lost = self.role_lost.subscribe();
        // The sender lives as long as `self`.
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Runs `f` on the SQLite connection, for test steps only SQLite has (pragmas); an error
    /// on PostgreSQL.
    #[cfg(test)]
    pub(crate) async fn call_rusqlite<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.call(move |db| match db.as_sqlite() {
            Some(conn) => f(conn).map_err(DbError::from),
            None => Err(DbError::column(
                0,
                "an SQLite-only test step ran on PostgreSQL",
            )),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_event_is_stored_once_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(dir.path()).expect("open");
        assert!(
            db.insert_event(
                "e1".into(),
                "platform",
                "job:ready".into(),
                b"{}".to_vec(),
                5
            )
            .await
            .unwrap()
        );
        assert!(
            !db.insert_event(
                "e1".into(),
                "platform",
                "job:ready".into(),
                b"[]".to_vec(),
                6
            )
            .await
            .unwrap()
        );
        drop(db);
        let db = StateDb::open(dir.path()).expect("reopen");
        let event = db.event("e1").await.unwrap().expect("stored");
        assert_eq!(event.body, b"{}");
        assert_eq!(event.status, EventStatus::Pending);
        assert_eq!(db.pending_events().await.unwrap(), vec!["e1".to_owned()]);
        let mode: String = db
            .call_rusqlite(|c| c.pragma_query_value(None, "journal_mode", |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = db
            .call_rusqlite(|c| c.pragma_query_value(None, "synchronous", |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    #[tokio::test]
    async fn a_version_1_database_gains_replay_generations() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let conn = Connection::open(dir.path().join(StateDb::FILE_NAME)).expect("create");
            conn.execute_batch(
                "CREATE TABLE deliveries (event_id TEXT NOT NULL, sink TEXT NOT NULL,
                     status TEXT NOT NULL, rows INTEGER NOT NULL DEFAULT 0, error TEXT,
                     PRIMARY KEY (event_id, sink));
                 INSERT INTO deliveries (event_id, sink, status, rows) VALUES ('e', 's', 'done', 7);
                 PRAGMA user_version = 1;",
            )
            .expect("version 1 schema");
        }
        let db = StateDb::open(dir.path()).expect("migrates");
        let deliveries = db.deliveries("e").await.expect("read");
        assert_eq!(deliveries.len(), 1);
        assert_eq!((deliveries[0].rows, deliveries[0].generation), (7, 0));
        assert_eq!(stream_for_generation("contacts-e", 0), "contacts-e");
        assert_eq!(stream_for_generation("contacts-e", 2), "contacts-e-r2");
    }

    /// One planned stream in a version-4 database ([`schema::VERSION_4_SCHEMA`]).
    const VERSION_4_STREAM: &str = "
        INSERT INTO streams (event_id, ordinal, stream, kind, source_ref, fields_json, page_size,
            source) VALUES ('e', 0, 'legacy-b', 'legacy_batch', 'b', '[]', 100,
            '{\"type\":\"legacy_batch\"}');
        PRAGMA user_version = 4;";

    async fn stream_total(db: &StateDb) -> Option<i64> {
        db.call_rusqlite(|c| {
            c.query_row(
                "SELECT total_rows FROM streams WHERE event_id = 'e' AND stream = 'legacy-b'",
                [],
                |r| r.get(0),
            )
        })
        .await
        .expect("read total_rows")
    }

    #[tokio::test]
    async fn a_version_4_database_gains_stream_totals_written_by_the_fetch() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let conn = Connection::open(dir.path().join(StateDb::FILE_NAME)).expect("create");
            conn.execute_batch(schema::VERSION_4_SCHEMA)
                .and_then(|()| conn.execute_batch(VERSION_4_STREAM))
                .expect("version 4 schema");
        }
        let db = StateDb::open(dir.path()).expect("migrates");
        let version: i64 = db
            .call_rusqlite(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(
            stream_total(&db).await,
            None,
            "a stream planned before has no total"
        );
        assert_eq!(db.streams("e").await.unwrap().len(), 1, "the plan is kept");
        db.set_stream_total("e", "legacy-b", 20_000).await.unwrap();
        assert_eq!(stream_total(&db).await, Some(20_000));
        db.set_stream_total("e", "legacy-b", 20_000).await.unwrap();
        db.set_stream_total("e", "no-such-stream", 5).await.unwrap();
        assert_eq!(stream_total(&db).await, Some(20_000));
        drop(db);
        let db = StateDb::open(dir.path()).expect("reopens at the current version");
        assert_eq!(
            stream_total(&db).await,
            Some(20_000),
            "the total is durable"
        );
    }

    #[tokio::test]
    async fn a_version_4_migration_cut_short_after_the_alter_runs_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let conn = Connection::open(dir.path().join(StateDb::FILE_NAME)).expect("create");
            conn.execute_batch(schema::VERSION_4_SCHEMA)
                .and_then(|()| conn.execute_batch(VERSION_4_STREAM))
                .expect("version 4 schema");
            // A crash between the ALTER and the new user_version leaves this.
            conn.execute_batch("ALTER TABLE streams ADD COLUMN total_rows INTEGER;")
                .expect("alter");
        }
        let db = StateDb::open(dir.path()).expect("migrates without a duplicate column");
        assert_eq!(stream_total(&db).await, None);
    }

    #[tokio::test]
    async fn one_daemon_at_a_time_holds_the_active_role_of_a_postgres_state() {
        let backend = testing::TestBackend::postgres("role");
        let (first, second) = (backend.state(), backend.state());
        assert!(
            first.take_role().await.unwrap(),
            "the first daemon takes the role"
        );
        assert!(first.take_role().await.unwrap(), "and keeps it");
        assert!(!second.take_role().await.unwrap(), "the second stands by");
        // The server ends the first daemon's session, as it does when the daemon stays idle
        // past the lease (paused, cut off).
        let mut admin = backend.db();
        let ended: i64 = sql::off_runtime(|| {
            admin.query_row(
                // Advisory locks are per database: count (and end) only this test's holders,
                // never a session of another test or daemon on the same server.
                "SELECT COUNT(pg_terminate_backend(l.pid)) FROM pg_locks l
                 WHERE l.locktype = 'advisory' AND l.objid = 7310152 AND l.granted
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                sql::params![],
                |r| r.get(0),
            )
        })
        .unwrap();
        assert_eq!(ended, 1, "one session held the role");
        let mut taken = false;
        for _ in 0..100 {
            if second.take_role().await.unwrap() {
                taken = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(taken, "the standby takes the freed role");
        // The first daemon's next call finds its session gone; connecting again, it cannot
        // take the role back, and from then on nothing it writes is accepted.
        let mut refused = None;
        for _ in 0..2 {
            if let Err(e) = first.set_event_status("e", EventStatus::Done, None).await {
                refused = Some(e);
            }
        }
        let refused = refused.expect("the first daemon's writes are refused");
        assert!(
            refused.to_string().contains("another daemon took over"),
            "{refused}"
        );
        assert!(*first.role_lost.borrow(), "the daemon is told to stop");
        assert!(
            matches!(
                first.event_counts().await,
                Err(StateError::Database {
                    error: DbError::RoleLost,
                    ..
                })
            ),
            "and stays refused"
        );
        assert!(
            second.take_role().await.unwrap(),
            "the new active daemon keeps the role"
        );
        second
            .set_event_status("e", EventStatus::Done, None)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_event_is_claimed_by_one_daemon_at_a_time_and_a_lost_claim_fences_writes() {
        let backend = testing::TestBackend::postgres("claims");
        let (first, second) = (backend.state(), backend.state());
        assert!(first.claim_event("e1").await.unwrap());
        assert!(
            first.claim_event("e1").await.unwrap(),
            "a claim held is held"
        );
        assert!(
            !second.claim_event("e1").await.unwrap(),
            "one daemon at a time"
        );
        assert!(
            second.claim_event("e2").await.unwrap(),
            "other events are free"
        );
        first.release_event("e1").await.unwrap();
        assert!(
            second.claim_event("e1").await.unwrap(),
            "a released event is free"
        );
        second.release_event("e1").await.unwrap();
        assert!(first.claim_event("e1").await.unwrap());

        // The server ends the first daemon's session (idle past the lease): its claim is free,
        // the second takes it, and the first is refused from then on.
        let mut admin = backend.db();
        sql::off_runtime(|| {
            admin.query_row(
                // pg_locks shows the second key of a two-key lock as an oid.
                "SELECT COUNT(pg_terminate_backend(l.pid)) FROM pg_locks l
                 WHERE l.locktype = 'advisory' AND l.classid = 7310153 AND l.granted
                   AND l.objid = CAST(hashtext('e1') AS oid)",
                sql::params![],
                |r| r.get::<_, i64>(0),
            )
        })
        .unwrap();
        let mut taken = false;
        for _ in 0..100 {
            if second.claim_event("e1").await.unwrap() {
                taken = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(taken, "the claim of the ended session is free");
        let mut refused = None;
        for _ in 0..2 {
            if let Err(e) = first.set_event_status("e1", EventStatus::Done, None).await {
                refused = Some(e);
            }
        }
        assert!(
            refused.is_some_and(|e| e.to_string().contains("another daemon took over")),
            "the first daemon's writes are refused"
        );
        assert!(*first.role_lost.borrow(), "and it is told to stop");
        second
            .set_event_status("e1", EventStatus::Done, None)
            .await
            .unwrap();
    }

    #[test]
    fn a_damaged_file_is_refused_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(StateDb::FILE_NAME);
        let garbage = vec![0x5a_u8; 8192];
        std::fs::write(&path, &garbage).expect("write");
        let err = StateDb::open(dir.path()).expect_err("damaged");
        assert!(matches!(err, StateError::Damaged { .. }), "{err}");
        assert!(
            err.to_string().contains("flatsync doctor --repair"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&path).expect("read"),
            garbage,
            "file left as it was"
        );
    }

    #[tokio::test]
    async fn checkpoints_never_move_backwards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(dir.path()).expect("open");
        let cp = |next_seq, rows| Checkpoint {
            sink: "s".into(),
            stream: "x".into(),
            next_seq,
            complete: false,
            rows,
        };
        db.advance("e", vec![cp(5, 50)]).await.unwrap();
        db.advance("e", vec![cp(3, 30)]).await.unwrap();
        assert_eq!(db.checkpoints("e").await.unwrap(), vec![cp(5, 50)]);
    }
}
