//! The state database's tables: the DDL, [`SCHEMA_VERSION`] and the migrations from older
//! versions, and the column list the doctor's salvage copies table by table. A schema change
//! is made here and nowhere else (`.ci/state-sql` reads the table names from [`SCHEMA`]).

use rusqlite::Connection;

use super::sql::{self, Db, DbError, params};

/// The schema version this build writes (`PRAGMA user_version`). Version 2 added
/// `deliveries.generation` (replays) and `deliveries.updated_at_ms`; version 3 added
/// `streams.source` and `streams.sinks` (event families, snapshots), `poll_cursors` and
/// `event_acks` (polling); version 4 added `carried_uploads` and `carried_parts` (rows that
/// arrive in webhook bodies); version 5 added `streams.total_rows` (the rows a stream holds,
/// once its fetch learned them, for `flatsync top`); version 6 added `daemons` (who runs on
/// this state, and where); version 7 added `group_members` and `group_streams` (rows of events
/// without data, grouped into streams of many events: `state::groups`); version 8 replaced
/// `inbox_by_status` with `inbox_by_status_time`, the inbox in the order it is worked through.
pub const SCHEMA_VERSION: i64 = 8;

/// Every table and index of the current version but those a migration block creates
/// ([`DAEMONS`], [`GROUPS`], [`INBOX_ORDER`]); `IF NOT EXISTS` so that it also completes an older database after [`migrate`]
/// added the columns its tables lack.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inbox (
    event_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    status TEXT NOT NULL,
    rows INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    updated_at_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, sink)
);
CREATE INDEX IF NOT EXISTS deliveries_by_status ON deliveries(status, sink);
CREATE TABLE IF NOT EXISTS streams (
    event_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    stream TEXT NOT NULL,
    kind TEXT NOT NULL,
    source_ref TEXT NOT NULL,
    fields_json TEXT NOT NULL,
    page_size INTEGER NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    sinks TEXT,
    total_rows INTEGER,
    PRIMARY KEY (event_id, stream)
);
CREATE TABLE IF NOT EXISTS poll_cursors (
    environment_id TEXT PRIMARY KEY,
    since_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS event_acks (
    event_id TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL,
    acked_at_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS event_acks_pending ON event_acks(acked_at_ms, environment_id);
CREATE TABLE IF NOT EXISTS carried_uploads (
    upload TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    sender_event_id TEXT,
    kind TEXT NOT NULL,
    fields_json TEXT NOT NULL,
    deletions INTEGER NOT NULL,
    first_received_at_ms INTEGER NOT NULL,
    completed_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS carried_parts (
    upload TEXT NOT NULL,
    position_major INTEGER NOT NULL,
    position_minor INTEGER NOT NULL,
    parts_of_batch INTEGER NOT NULL DEFAULT 0,
    last INTEGER NOT NULL DEFAULT 0,
    part_count INTEGER,
    rows INTEGER NOT NULL,
    ndjson BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    ordinal INTEGER,
    PRIMARY KEY (upload, position_major, position_minor, parts_of_batch)
);
CREATE INDEX IF NOT EXISTS carried_parts_by_ordinal ON carried_parts(upload, ordinal);
CREATE TABLE IF NOT EXISTS checkpoints (
    event_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    stream TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    complete INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    PRIMARY KEY (event_id, sink, stream)
);
";

/// Brings a database of `version` (0 for a new file) up to [`SCHEMA_VERSION`]. The caller has
/// refused versions newer than this build.
pub(crate) fn migrate(conn: &Connection, version: i64) -> rusqlite::Result<()> {
    if version == 1 {
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE deliveries ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE deliveries ADD COLUMN updated_at_ms INTEGER NOT NULL DEFAULT 0;
             COMMIT;",
        )?;
    }
    if (1..3).contains(&version) && has_table(conn, "streams")? {
        // Streams planned before version 3 are whole legacy batches or whole sheets; an
        // empty `source` says so (see `streams`).
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE streams ADD COLUMN source TEXT NOT NULL DEFAULT '';
             ALTER TABLE streams ADD COLUMN sinks TEXT;
             COMMIT;",
        )?;
    }
    if (1..5).contains(&version)
        && has_table(conn, "streams")?
        && !has_column(conn, "streams", "total_rows")?
    {
        // Streams planned before version 5 have no known total: NULL, as for a stream whose
        // fetch has not learned it yet. The column check makes a migration cut short by a crash
        // (before `user_version` was written) safe to run again.
        conn.execute_batch("ALTER TABLE streams ADD COLUMN total_rows INTEGER;")?;
    }
    if version < 6 {
        conn.execute_batch(DAEMONS)?;
    }
    if version < 7 {
        conn.execute_batch(GROUPS)?;
    }
    conn.execute_batch(SCHEMA)?;
    // After SCHEMA, which creates the inbox of a new file.
    if version < 8 {
        conn.execute_batch(INBOX_ORDER)?;
    }
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
}

/// Version 6: one row per daemon start on this state (`state::daemons`), for `flatsync status`
/// and for several daemons sharing one state.
const DAEMONS: &str = "
CREATE TABLE IF NOT EXISTS daemons (
    daemon_id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    hostname TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    stopped_at_ms INTEGER,
    webhook_addr TEXT,
    admin_addr TEXT
);
";

/// Version 7: rows of events without data grouped into streams of many events
/// (`state::groups`). `group_members` says which batch of which group stream carries an
/// event's row to a sink (`stream`, `seq` and `position` are NULL until the batch is recorded,
/// and never change after); `group_streams` holds each sink's position in each group stream:
/// the batches recorded (`formed_seq`), the first one not yet durable in the sink (`next_seq`,
/// its checkpoint) and the closing one (`last_seq`); `retry_at_ms` holds back the closing of a
/// stream whose sink just failed.
const GROUPS: &str = "
CREATE TABLE IF NOT EXISTS group_members (
    event_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    generation INTEGER NOT NULL,
    grp TEXT NOT NULL,
    window_end_ms INTEGER NOT NULL,
    stream TEXT,
    seq INTEGER,
    position INTEGER,
    PRIMARY KEY (event_id, sink, generation)
);
CREATE INDEX IF NOT EXISTS group_members_waiting ON group_members(grp, sink, seq);
CREATE INDEX IF NOT EXISTS group_members_by_batch ON group_members(stream, sink, seq, position);
CREATE TABLE IF NOT EXISTS group_streams (
    stream TEXT NOT NULL,
    sink TEXT NOT NULL,
    grp TEXT NOT NULL,
    part INTEGER NOT NULL,
    window_end_ms INTEGER NOT NULL,
    next_seq INTEGER NOT NULL,
    formed_seq INTEGER NOT NULL,
    events INTEGER NOT NULL,
    last_seq INTEGER,
    retry_at_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (stream, sink)
);
CREATE INDEX IF NOT EXISTS group_streams_by_group ON group_streams(grp, sink, part);
";

/// Version 8: the inbox by status in the order events are worked through (receipt time,
/// then id), so that a page of pending events after a given one is a keyed walk of the index
/// on both engines (`(received_at_ms, event_id) > (?, ?)`), never a sort of every pending
/// event. It replaces `inbox_by_status` (`status, received_at_ms`), which it covers.
const INBOX_ORDER: &str = "
DROP INDEX IF EXISTS inbox_by_status;
CREATE INDEX IF NOT EXISTS inbox_by_status_time ON inbox(status, received_at_ms, event_id);
";

/// PostgreSQL only: the members of a group waiting for a sink (in no batch yet) in the order
/// they were made, for the group writer's page of them (`groups::waiting_members`). An SQLite
/// index ends with the rowid, so `group_members_waiting` serves that order there; PostgreSQL's
/// `rowid` is a column of its own, and its planner does not take `seq IS NULL` as fixing
/// `seq`, so with that index alone each page read and sorted every waiting member (39 ms a
/// page with 8,000 waiting). Partial: a member leaves it when it is put in a batch. Not a
/// schema version, as it changes no table: [`migrate_postgres`] creates it at every start if
/// it is missing, and a build that does not know it leaves it be.
pub(crate) const POSTGRES_WAITING_ORDER: &str = "group_members_unbatched";

/// Creates [`POSTGRES_WAITING_ORDER`] unless it exists.
fn create_postgres_waiting_order(db: &mut Db) -> sql::Result<()> {
    db.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS {POSTGRES_WAITING_ORDER} ON group_members(grp, sink, rowid)
             WHERE seq IS NULL"
    ))
}

/// Why a PostgreSQL state database could not be brought to [`SCHEMA_VERSION`].
#[derive(Debug)]
pub(crate) enum PgSchemaError {
    /// The database refused.
    Db(DbError),
    /// A newer flatsync wrote it (the version found).
    TooNew(i64),
}

/// The PostgreSQL spelling of the SQLite DDL `ddl`: the same tables, indexes and columns, so
/// that both backends hold one schema, with 64-bit integers and `BYTEA` for bytes.
pub(crate) fn postgres_ddl(ddl: &str) -> String {
    ddl.replace(" INTEGER", " BIGINT")
        .replace(" BLOB", " BYTEA")
}

/// Creates the schema of a new PostgreSQL state database, or checks an existing one's
/// version, in one transaction under an advisory lock, so that several daemons starting at
/// once on one database create it once. `flatsync_schema` holds the version (SQLite keeps it
/// in `PRAGMA user_version`).
///
/// A database already current is only read: DDL, even `CREATE ... IF NOT EXISTS` on what
/// exists, needs the tables' owner (or `CREATE` on the schema), and a daemon whose role may
/// only read and write the tables (what `flatsync doctor` checks) must start too.
pub(crate) fn migrate_postgres(db: &mut Db) -> Result<(), PgSchemaError> {
    let found = db
        .transaction(|tx| {
            tx.execute_batch("SELECT pg_advisory_xact_lock(7310151)")?;
            let found = postgres_version(tx)?;
            if found.is_some_and(|v| v > SCHEMA_VERSION) {
                return Ok(found);
            }
            if found == Some(SCHEMA_VERSION) && pg_relation_exists(tx, POSTGRES_WAITING_ORDER)? {
                return Ok(found);
            }
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS flatsync_schema (version BIGINT NOT NULL)",
            )?;
            // Version 7 is the first PostgreSQL schema; every later block is written to run
            // again harmlessly, so running them all brings any older version up.
            for ddl in [SCHEMA, DAEMONS, GROUPS, INBOX_ORDER] {
                tx.execute_batch(&postgres_ddl(ddl))?;
            }
            // SQLite numbers rows in insertion order (`rowid`) and the queries that list in
            // that order (deliveries in route order, group members as they came) say so; a
            // PostgreSQL table gets the same column.
            for (table, _) in TABLES {
                tx.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS rowid BIGINT \
                     GENERATED ALWAYS AS IDENTITY"
                ))?;
            }
            // After the rowid it is ordered by.
            create_postgres_waiting_order(tx)?;
            tx.execute("DELETE FROM flatsync_schema", params![])?;
            tx.execute(
                "INSERT INTO flatsync_schema (version) VALUES (?1)",
                params![SCHEMA_VERSION],
            )?;
            Ok(found)
        })
        .map_err(PgSchemaError::Db)?;
    match found {
        Some(v) if v > SCHEMA_VERSION => Err(PgSchemaError::TooNew(v)),
        _ => Ok(()),
    }
}

/// The schema version `flatsync_schema` holds, `None` when it holds none or flatsync never
/// ran on the database (asked first, so that such a database is told apart from one that
/// refuses the query).
pub(crate) fn postgres_version(db: &mut Db) -> sql::Result<Option<i64>> {
    if !pg_relation_exists(db, "flatsync_schema")? {
        return Ok(None);
    }
    db.query_row("SELECT MAX(version) FROM flatsync_schema", params![], |r| {
        r.get(0)
    })
}

/// Whether the PostgreSQL database has a table or index `name` on the session's search path.
fn pg_relation_exists(db: &mut Db, name: &str) -> sql::Result<bool> {
    db.query_row("SELECT to_regclass(?1) IS NOT NULL", params![name], |r| {
        r.get(0)
    })
}

/// Whether the database has `table`.
pub(crate) fn has_table(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [table],
        |r| r.get(0),
    )
}

/// Whether `table` has `column`.
fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
        [table, column],
        |r| r.get(0),
    )
}

/// Column lists of the state tables, in the order the salvage copies them (the inbox first),
/// each column with the value used when an older schema lacks it.
pub(crate) const TABLES: [(&str, &[(&str, &str)]); 11] = [
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
            ("total_rows", "NULL"),
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
    // Which daemons ran on this state: history for `flatsync status`, nothing delivery
    // depends on.
    (
        "daemons",
        &[
            ("daemon_id", "NULL"),
            ("pid", "0"),
            ("hostname", "''"),
            ("version", "''"),
            ("started_at_ms", "0"),
            ("last_seen_ms", "0"),
            ("stopped_at_ms", "NULL"),
            ("webhook_addr", "NULL"),
            ("admin_addr", "NULL"),
        ],
    ),
    // Which batch carries which grouped event: a batch sent again after a crash must hold the
    // same events, so these are as precious as the checkpoints.
    (
        "group_members",
        &[
            ("event_id", "NULL"),
            ("sink", "NULL"),
            ("generation", "0"),
            ("grp", "NULL"),
            ("window_end_ms", "0"),
            ("stream", "NULL"),
            ("seq", "NULL"),
            ("position", "NULL"),
        ],
    ),
    (
        "group_streams",
        &[
            ("stream", "NULL"),
            ("sink", "NULL"),
            ("grp", "NULL"),
            ("part", "0"),
            ("window_end_ms", "0"),
            ("next_seq", "0"),
            ("formed_seq", "0"),
            ("events", "0"),
            ("last_seq", "NULL"),
            ("retry_at_ms", "0"),
        ],
    ),
];

/// Tables a state database from before schema version 3 (polling), 4 (uploads), 6 (daemons)
/// or 7 (grouped events) does not have: nothing to salvage.
pub(crate) const TABLES_ADDED_LATER: [&str; 7] = [
    "poll_cursors",
    "event_acks",
    "carried_uploads",
    "carried_parts",
    "daemons",
    "group_members",
    "group_streams",
];

/// Every table of a version-4 database, as flatsync 0.1 with uploads created them: the
/// migration tests start from it. Frozen: it must keep describing version 4 when [`SCHEMA`]
/// changes.
#[cfg(test)]
pub(crate) const VERSION_4_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inbox (
    event_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_by_status ON inbox(status, received_at_ms);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    status TEXT NOT NULL,
    rows INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    updated_at_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, sink)
);
CREATE INDEX IF NOT EXISTS deliveries_by_status ON deliveries(status, sink);
CREATE TABLE IF NOT EXISTS streams (
    event_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    stream TEXT NOT NULL,
    kind TEXT NOT NULL,
    source_ref TEXT NOT NULL,
    fields_json TEXT NOT NULL,
    page_size INTEGER NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    sinks TEXT,
    PRIMARY KEY (event_id, stream)
);
CREATE TABLE IF NOT EXISTS poll_cursors (
    environment_id TEXT PRIMARY KEY,
    since_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS event_acks (
    event_id TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL,
    acked_at_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS event_acks_pending ON event_acks(acked_at_ms, environment_id);
CREATE TABLE IF NOT EXISTS carried_uploads (
    upload TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    sender_event_id TEXT,
    kind TEXT NOT NULL,
    fields_json TEXT NOT NULL,
    deletions INTEGER NOT NULL,
    first_received_at_ms INTEGER NOT NULL,
    completed_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS carried_parts (
    upload TEXT NOT NULL,
    position_major INTEGER NOT NULL,
    position_minor INTEGER NOT NULL,
    parts_of_batch INTEGER NOT NULL DEFAULT 0,
    last INTEGER NOT NULL DEFAULT 0,
    part_count INTEGER,
    rows INTEGER NOT NULL,
    ndjson BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    ordinal INTEGER,
    PRIMARY KEY (upload, position_major, position_minor, parts_of_batch)
);
CREATE INDEX IF NOT EXISTS carried_parts_by_ordinal ON carried_parts(upload, ordinal);
CREATE TABLE IF NOT EXISTS checkpoints (
    event_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    stream TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    complete INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    PRIMARY KEY (event_id, sink, stream)
);
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::TestBackend;
    use crate::state::{EventStatus, StateDb, StateLocation};

    /// The inbox's indexes but its key, and the schema version, as the database says.
    async fn inbox_indexes_and_version(db: &StateDb) -> (Vec<String>, i64) {
        db.call(|db| {
            let (indexes, version) = match db.backend() {
                super::super::sql::Backend::Sqlite => (
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'inbox'
                       AND name NOT LIKE 'sqlite_autoindex_%' ORDER BY name",
                    "SELECT user_version FROM pragma_user_version",
                ),
                super::super::sql::Backend::Postgres => (
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'inbox'
                       AND indexname <> 'inbox_pkey' ORDER BY indexname",
                    "SELECT MAX(version) FROM flatsync_schema",
                ),
            };
            let names = db.query_map(indexes, params![], |r| r.get(0))?;
            let version = db.query_row(version, params![], |r| r.get(0))?;
            Ok((names, version))
        })
        .await
        .expect("read the schema")
    }

    #[tokio::test]
    async fn a_role_that_may_only_read_and_write_the_tables_opens_a_current_state() {
        let backend = TestBackend::postgres("schema_dml_role");
        let TestBackend::Postgres(pg) = &backend else {
            unreachable!("a PostgreSQL backend")
        };
        // Created by the owner, as an administrator would before handing the daemon a role.
        drop(backend.state());
        let role = format!(
            "flatsync_dml_{}_{}",
            std::process::id(),
            super::super::now_ms()
        );
        let grant = format!(
            "CREATE ROLE {role} LOGIN;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};"
        );
        let owner = backend.state();
        owner
            .call(move |db| db.execute_batch(&grant))
            .await
            .unwrap();
        let as_role = StateLocation::Postgres(Box::new(pg.target().as_user(&role)));
        let opened = StateDb::open_at(&as_role).map(|db| async move {
            db.insert_event(
                "e".into(),
                "platform",
                "space:created".into(),
                b"{}".to_vec(),
                1,
            )
            .await?;
            db.event("e").await
        });
        let outcome = match opened {
            Ok(work) => work.await.map(|event| event.map(|e| e.status)),
            Err(error) => Err(error),
        };
        let revoke = format!("DROP OWNED BY {role}; DROP ROLE {role};");
        owner
            .call(move |db| db.execute_batch(&revoke))
            .await
            .unwrap();
        assert_eq!(outcome.unwrap(), Some(EventStatus::Pending));
    }

    #[tokio::test]
    async fn a_version_7_inbox_is_reindexed_in_the_order_it_is_worked_through() {
        for backend in TestBackend::both("schema_v8") {
            let db = backend.state();
            assert_eq!(
                inbox_indexes_and_version(&db).await,
                (vec!["inbox_by_status_time".to_owned()], SCHEMA_VERSION)
            );
            db.insert_event(
                "e".into(),
                "platform",
                "space:created".into(),
                b"{}".to_vec(),
                1,
            )
            .await
            .unwrap();
            // Back to what version 7 wrote.
            db.call(|db| {
                let version = match db.backend() {
                    super::super::sql::Backend::Sqlite => "PRAGMA user_version = 7",
                    super::super::sql::Backend::Postgres => {
                        "UPDATE flatsync_schema SET version = 7"
                    }
                };
                db.execute_batch(&format!(
                    "DROP INDEX inbox_by_status_time;
                     CREATE INDEX inbox_by_status ON inbox(status, received_at_ms);
                     {version};"
                ))
            })
            .await
            .unwrap();
            drop(db);
            let db = backend.state();
            assert_eq!(
                inbox_indexes_and_version(&db).await,
                (vec!["inbox_by_status_time".to_owned()], 8)
            );
            assert_eq!(
                db.event("e").await.unwrap().map(|e| e.status),
                Some(EventStatus::Pending),
                "the inbox is kept"
            );
        }
    }
}
