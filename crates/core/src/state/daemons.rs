//! The daemons that use this state (`daemons`, schema version 6): one row per start, with
//! where it listens and when it was last seen, so that `flatsync status` (which reads only the
//! state) can say which daemon runs and where, and so that several daemons sharing one state
//! can see each other.
//!
//! A daemon registers when it starts ([`StateDb::register_daemon`]), touches its row while its
//! main loop turns ([`StateDb::touch_daemon`], every [`DAEMON_TOUCH_INTERVAL`]) and marks it
//! stopped after a clean shutdown ([`StateDb::mark_daemon_stopped`]). A row that is neither
//! stopped nor touched lately belongs to a daemon that was killed or lost its host.

use std::time::Duration;

use serde::Serialize;

use super::report::Snapshot;
use super::sql::params;
use super::{StateDb, StateError};

/// How often a running daemon touches its row's `last_seen_ms`.
pub const DAEMON_TOUCH_INTERVAL: Duration = Duration::from_secs(5);

/// How long rows of daemons that ended (stopped, or last seen) are kept.
pub const DAEMON_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// A daemon's row: who started on this state, where it listens, when it was last seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DaemonRecord {
    /// Random id of this start: a restarted daemon gets a new one.
    pub daemon_id: String,
    /// Process id on `hostname`.
    pub pid: u32,
    /// The host it runs on.
    pub hostname: String,
    /// flatsync's version.
    pub version: String,
    /// When it started, ms since the Unix epoch.
    pub started_at_ms: i64,
    /// When it last proved alive, ms since the Unix epoch.
    pub last_seen_ms: i64,
    /// When it stopped cleanly, ms since the Unix epoch; `None` while it runs, or when it was
    /// killed.
    pub stopped_at_ms: Option<i64>,
    /// Where its webhook listener is bound (`127.0.0.1:8787`), when it has one.
    pub webhook_addr: Option<String>,
    /// Where its admin listener is bound, when it has one.
    pub admin_addr: Option<String>,
}

impl StateDb {
    /// Records a daemon that just started. Its `daemon_id` is new: a row with the same id
    /// already there is an error.
    pub async fn register_daemon(&self, daemon: DaemonRecord) -> Result<(), StateError> {
        self.call(move |db| {
            db.execute(
                "INSERT INTO daemons (daemon_id, pid, hostname, version, started_at_ms,
                     last_seen_ms, stopped_at_ms, webhook_addr, admin_addr)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    daemon.daemon_id,
                    daemon.pid,
                    daemon.hostname,
                    daemon.version,
                    daemon.started_at_ms,
                    daemon.last_seen_ms,
                    daemon.stopped_at_ms,
                    daemon.webhook_addr,
                    daemon.admin_addr,
                ],
            )
            .map(drop)
        })
        .await
    }

    /// Moves a running daemon's `last_seen_ms` to `now_ms` (never backwards, never after it
    /// was marked stopped).
    pub async fn touch_daemon(&self, daemon_id: &str, now_ms: i64) -> Result<(), StateError> {
        let id = daemon_id.to_owned();
        self.call(move |db| {
            db.execute(
                "UPDATE daemons SET last_seen_ms = GREATEST(last_seen_ms, ?2)
                 WHERE daemon_id = ?1 AND stopped_at_ms IS NULL",
                params![id, now_ms],
            )
            .map(drop)
        })
        .await
    }

    /// Records that a daemon stopped cleanly at `now_ms`.
    pub async fn mark_daemon_stopped(
        &self,
        daemon_id: &str,
        now_ms: i64,
    ) -> Result<(), StateError> {
        let id = daemon_id.to_owned();
        self.call(move |db| {
            db.execute(
                "UPDATE daemons SET stopped_at_ms = ?2, last_seen_ms = GREATEST(last_seen_ms, ?2)
                 WHERE daemon_id = ?1 AND stopped_at_ms IS NULL",
                params![id, now_ms],
            )
            .map(drop)
        })
        .await
    }

    /// Deletes the rows of daemons that ended before `before_ms`: stopped then, or (killed)
    /// last seen then. Returns how many.
    pub async fn prune_daemons(&self, before_ms: i64) -> Result<u64, StateError> {
        self.call(move |db| {
            db.execute(
                "DELETE FROM daemons WHERE COALESCE(stopped_at_ms, last_seen_ms) < ?1",
                params![before_ms],
            )
            .map(|n| n as u64)
        })
        .await
    }
}

/// The daemons seen last, most recent first, `?1` of them (see [`Snapshot::daemons`]).
const DAEMONS_SEEN_LAST: &str = "SELECT daemon_id, pid, hostname, version, started_at_ms,
        last_seen_ms, stopped_at_ms, webhook_addr, admin_addr
    FROM daemons ORDER BY last_seen_ms DESC, started_at_ms DESC LIMIT ?1";

/// A `daemons` row read as [`DAEMONS_SEEN_LAST`] lists its columns.
fn record(r: &super::sql::Row<'_>) -> super::sql::Result<DaemonRecord> {
    Ok(DaemonRecord {
        daemon_id: r.get(0)?,
        pid: r.get(1)?,
        hostname: r.get(2)?,
        version: r.get(3)?,
        started_at_ms: r.get(4)?,
        last_seen_ms: r.get(5)?,
        stopped_at_ms: r.get(6)?,
        webhook_addr: r.get(7)?,
        admin_addr: r.get(8)?,
    })
}

impl Snapshot<'_> {
    /// The `limit` daemons seen last, most recent first: running daemons (seen every few
    /// seconds) come before the ones that ended.
    pub fn daemons(&self, limit: usize) -> Result<Vec<DaemonRecord>, StateError> {
        self.tx.rows(
            DAEMONS_SEEN_LAST,
            super::sql::params![i64::try_from(limit).unwrap_or(i64::MAX)],
            record,
        )
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::super::schema::{SCHEMA_VERSION, VERSION_4_SCHEMA, has_table};
    use super::super::sql::params;
    use super::super::testing::TestBackend;
    use super::super::{OperatorDb, StateDb};
    use super::{DAEMONS_SEEN_LAST, DaemonRecord, record};

    fn daemon(id: &str, started_at_ms: i64) -> DaemonRecord {
        DaemonRecord {
            daemon_id: id.to_owned(),
            pid: 4242,
            hostname: "sync-1".to_owned(),
            version: "0.1.0".to_owned(),
            started_at_ms,
            last_seen_ms: started_at_ms,
            stopped_at_ms: None,
            webhook_addr: Some("127.0.0.1:41234".to_owned()),
            admin_addr: None,
        }
    }

    fn listed(dir: &std::path::Path) -> Vec<DaemonRecord> {
        let operator = OperatorDb::open_read_only(dir).expect("operator handle");
        operator.read(|s| s.daemons(10)).expect("read daemons")
    }

    /// The `limit` daemons seen last, as `flatsync status` lists them: through the operator's
    /// snapshot on SQLite, through the same query on the daemon's handle on PostgreSQL (the
    /// operator handle opens only a state directory yet).
    async fn seen_last(backend: &TestBackend, db: &StateDb, limit: usize) -> Vec<DaemonRecord> {
        match backend {
            TestBackend::Sqlite(dir) => {
                let operator = OperatorDb::open_read_only(dir.path()).expect("operator handle");
                operator.read(|s| s.daemons(limit)).expect("read daemons")
            }
            TestBackend::Postgres(_) => {
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                db.call(move |d| d.query_map(DAEMONS_SEEN_LAST, params![limit], record))
                    .await
                    .expect("read daemons")
            }
        }
    }

    #[tokio::test]
    async fn a_daemon_is_registered_touched_and_marked_stopped() {
        for backend in TestBackend::both("daemons_touch") {
            let db = backend.state();
            db.register_daemon(daemon("a", 1_000))
                .await
                .expect("register");
            db.touch_daemon("a", 6_000).await.expect("touch");
            db.touch_daemon("a", 5_000).await.expect("late touch");
            let mut expected = daemon("a", 1_000);
            expected.last_seen_ms = 6_000;
            assert_eq!(
                seen_last(&backend, &db, 10).await,
                [expected.clone()],
                "{backend:?}: last seen never moves back"
            );

            db.mark_daemon_stopped("a", 9_000).await.expect("stop");
            db.touch_daemon("a", 12_000)
                .await
                .expect("touch after the stop");
            expected.stopped_at_ms = Some(9_000);
            expected.last_seen_ms = 9_000;
            assert_eq!(
                seen_last(&backend, &db, 10).await,
                [expected],
                "{backend:?}: a stopped daemon is seen last at its stop, whatever touches \
                 arrive late"
            );
            assert!(
                db.register_daemon(daemon("a", 20_000)).await.is_err(),
                "{backend:?}: a daemon id names one start"
            );
        }
    }

    #[tokio::test]
    async fn daemons_are_listed_seen_last_first_and_pruned_once_ended_long_ago() {
        for backend in TestBackend::both("daemons_prune") {
            let db = backend.state();
            for (id, at) in [
                ("old-stopped", 1_000),
                ("old-killed", 2_000),
                ("recent", 3_000),
            ] {
                db.register_daemon(daemon(id, at)).await.expect("register");
            }
            db.mark_daemon_stopped("old-stopped", 1_500)
                .await
                .expect("stop");
            db.touch_daemon("recent", 50_000).await.expect("touch");
            let ids = |list: Vec<DaemonRecord>| -> Vec<String> {
                list.into_iter().map(|d| d.daemon_id).collect()
            };
            assert_eq!(
                ids(seen_last(&backend, &db, 10).await),
                ["recent", "old-killed", "old-stopped"],
                "{backend:?}"
            );
            assert_eq!(
                ids(seen_last(&backend, &db, 1).await),
                ["recent"],
                "{backend:?}: the limit keeps the ones seen last"
            );

            let pruned = db.prune_daemons(10_000).await.expect("prune");
            assert_eq!(
                pruned, 2,
                "{backend:?}: the stopped and the killed daemon both ended before 10 s"
            );
            assert_eq!(
                ids(seen_last(&backend, &db, 10).await),
                ["recent"],
                "{backend:?}: a daemon seen since is kept"
            );
        }
    }

    #[tokio::test]
    async fn a_version_4_database_gains_the_daemons_table_and_keeps_its_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let conn = Connection::open(dir.path().join(StateDb::FILE_NAME)).expect("create");
            conn.execute_batch(VERSION_4_SCHEMA)
                .expect("version 4 schema");
            conn.execute_batch(
                "INSERT INTO inbox (event_id, kind, topic, body, received_at_ms, status,
                     updated_at_ms) VALUES ('e4', 'legacy', 't', x'7b7d', 1, 'pending', 1);
                 PRAGMA user_version = 4;",
            )
            .expect("a version 4 event");
            assert!(
                !has_table(&conn, "daemons").expect("schema"),
                "no daemons in version 4"
            );
        }
        let db = StateDb::open(dir.path()).expect("migrates");
        let version: i64 = db
            .call_rusqlite(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
            .await
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(
            db.pending_events().await.expect("read"),
            vec!["e4".to_owned()],
            "the version 4 inbox is kept"
        );
        db.register_daemon(daemon("after-upgrade", 1_000))
            .await
            .expect("a daemon registers on the migrated database");
        drop(db);
        StateDb::open(dir.path()).expect("a version 6 database opens again");
        assert_eq!(listed(dir.path()), [daemon("after-upgrade", 1_000)]);
    }
}
