//! The state database: the inbox of accepted events, routing decisions, stream plans and
//! per-sink checkpoints, in one SQLite file (WAL, `synchronous=FULL`).
//!
//! Every write that precedes an externally visible promise (a 2xx to a webhook sender, a
//! checkpoint advance) is committed with a full sync before the promise is made.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

/// State database errors.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite refused an operation.
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
    /// A blocking task panicked or was cancelled.
    #[error("state database task failed: {0}")]
    Task(String),
}

/// Where an event stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStatus {
    /// Accepted, not finished.
    Pending,
    /// Every routed sink has every row.
    Done,
    /// At least one sink failed for good; the error is kept.
    Failed,
    /// Nothing to deliver (a test ping, a topic without rows); the reason is kept.
    Skipped,
    /// No route matches the topic.
    Unrouted,
}

impl EventStatus {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Done => "done",
            EventStatus::Failed => "failed",
            EventStatus::Skipped => "skipped",
            EventStatus::Unrouted => "unrouted",
        }
    }

    fn parse(s: &str) -> EventStatus {
        match s {
            "done" => EventStatus::Done,
            "failed" => EventStatus::Failed,
            "skipped" => EventStatus::Skipped,
            "unrouted" => EventStatus::Unrouted,
            _ => EventStatus::Pending,
        }
    }

    /// Whether the event needs no more work.
    pub fn is_final(self) -> bool {
        self != EventStatus::Pending
    }
}

/// An event as the inbox keeps it.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    /// Event id (Flatfile's, or derived for legacy notifications without one).
    pub event_id: String,
    /// `legacy` or `platform`.
    pub kind: String,
    /// Topic used for routing.
    pub topic: String,
    /// The body exactly as received.
    pub body: Vec<u8>,
    /// Receipt time, ms since the Unix epoch.
    pub received_at_ms: i64,
    /// Current status.
    pub status: EventStatus,
    /// Error or reason, for failed and skipped events.
    pub detail: Option<String>,
}

/// A sink's share of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Sink name.
    pub sink: String,
    /// `pending`, `done`, `failed` (a dead letter until retried or dropped) or `dropped`.
    pub status: String,
    /// Rows made durable in the sink for this event.
    pub rows: u64,
    /// Last error, for failed deliveries.
    pub error: Option<String>,
    /// How many times the delivery was replayed; each replay delivers into fresh streams (see
    /// [`stream_for_generation`]) so sinks that skip batches they hold take the rows again.
    pub generation: u32,
}

/// The stream a sink's `generation` of an event's stream delivers into: the planned name for
/// the first delivery, `<stream>-r<generation>` for replays.
pub fn stream_for_generation(stream: &str, generation: u32) -> String {
    if generation == 0 {
        stream.to_owned()
    } else {
        format!("{stream}-r{generation}")
    }
}

/// One stream of an event, fixed when the event is first planned so that a restart pages the
/// same way even if the config's page size changed since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPlan {
    /// Stream id.
    pub stream: String,
    /// Stream kind (table name).
    pub kind: String,
    /// Legacy batch id or Platform sheet id; empty for streams made from the event itself.
    pub source_ref: String,
    /// JSON array of field keys.
    pub fields_json: String,
    /// Rows per page.
    pub page_size: u64,
    /// Where the rows come from.
    pub source: StreamSource,
    /// The sinks this stream is for; `None` = every sink of the event. Set when routes ask
    /// some sinks for a snapshot and others for the delta of the same event.
    pub sinks: Option<Vec<String>>,
}

impl StreamPlan {
    /// Whether `sink` takes this stream.
    pub fn is_for(&self, sink: &str) -> bool {
        self.sinks
            .as_ref()
            .is_none_or(|sinks| sinks.iter().any(|s| s == sink))
    }
}

/// Where a stream's rows come from. Stored as JSON in `streams.source`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamSource {
    /// Every row of the legacy batch `source_ref`.
    LegacyBatch,
    /// Every record of the sheet `source_ref`.
    Sheet,
    /// The named records of the sheet, fetched in chunks of at most 100 ids.
    SheetIds {
        /// Record ids, in the event's order.
        ids: Vec<String>,
    },
    /// The records a commit changed.
    SheetCommit {
        /// `commitId`.
        commit_id: String,
    },
    /// The records changed by every commit after this one.
    SheetSinceCommit {
        /// `sinceCommitId`.
        commit_id: String,
    },
    /// Deleted records of the sheet: rows made from the ids, nothing to fetch.
    Deletions {
        /// Record ids.
        ids: Vec<String>,
    },
    /// One row describing the event itself (the `events` stream of row-less topics).
    Event,
    /// Rows that arrived in webhook bodies (Portal 2.0 `batch.upload`, a forwarded flatsync
    /// batch), one stored part per batch, read from the state database in part order. The
    /// upload is `source_ref`.
    Carried {
        /// Parts of the upload, the number of batches.
        parts: u64,
        /// The rows name deleted records.
        deletions: bool,
    },
    /// The records of a legacy Workspaces sheet (`source_ref`), paged by skip/take with the
    /// legacy key.
    WorkspaceSheet {
        /// `workspaceId`.
        workspace_id: String,
    },
    /// The records behind an event's `dataUrl` that is not a plain records selection, paged by
    /// `pageNumber`.
    DataUrl {
        /// The URL relative to the API root, as the event gave it.
        relative: String,
    },
}

impl StreamSource {
    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a StreamSource always serializes")
    }

    fn from_json(text: &str) -> rusqlite::Result<StreamSource> {
        serde_json::from_str(text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
    }
}

/// A polled event on its way into the inbox, with the environment whose cursor found it.
#[derive(Clone, Debug)]
pub struct PolledEvent {
    /// Event id.
    pub event_id: String,
    /// Topic.
    pub topic: String,
    /// The event as JSON.
    pub body: Vec<u8>,
}

/// A sink's durable position in a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Sink name.
    pub sink: String,
    /// Stream id.
    pub stream: String,
    /// First batch the sink has not made durable.
    pub next_seq: u64,
    /// The last batch is durable.
    pub complete: bool,
    /// Rows made durable.
    pub rows: u64,
}

/// Inbox `kind` of an upload whose rows came in webhook bodies (`carried_parts`), stored
/// when its last part arrived.
pub(crate) const CARRIED_KIND: &str = "carried";

/// The schema version this build writes (`PRAGMA user_version`). Version 2 added
/// `deliveries.generation` (replays) and `deliveries.updated_at_ms`; version 3 added
/// `streams.source` and `streams.sinks` (event families, snapshots), `poll_cursors` and
/// `event_acks` (polling); version 4 added `carried_uploads` and `carried_parts` (rows that
/// arrive in webhook bodies).
pub const SCHEMA_VERSION: i64 = 4;

const SCHEMA: &str = "
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

/// Handle on the state database; cheap to clone.
#[derive(Clone, Debug)]
pub struct StateDb {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
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
        if version == 1 {
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE deliveries ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE deliveries ADD COLUMN updated_at_ms INTEGER NOT NULL DEFAULT 0;
                 COMMIT;",
            )
            .map_err(err)?;
        }
        let has_streams: bool = conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'streams')",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        if (1..3).contains(&version) && has_streams {
            // Streams planned before version 3 are whole legacy batches or whole sheets; an
            // empty `source` says so (see `streams`).
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE streams ADD COLUMN source TEXT NOT NULL DEFAULT '';
                 ALTER TABLE streams ADD COLUMN sinks TEXT;
                 COMMIT;",
            )
            .map_err(err)?;
        }
        conn.execute_batch(SCHEMA).map_err(err)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err)?;
        Ok(StateDb {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection on a blocking thread.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut guard).map_err(|error| StateError::Sqlite { path, error })
        })
        .await
        .map_err(|e| StateError::Task(e.to_string()))?
    }

    /// Stores a newly received event. Returns `false` when an event with this id is already
    /// in the inbox (the body is then left as it was).
    pub async fn insert_event(
        &self,
        event_id: String,
        kind: &'static str,
        topic: String,
        body: Vec<u8>,
        received_at_ms: i64,
    ) -> Result<bool, StateError> {
        self.call(move |c| {
            let n = c.execute(
                "INSERT OR IGNORE INTO inbox
                 (event_id, kind, topic, body, received_at_ms, status, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?5)",
                params![event_id, kind, topic, body, received_at_ms],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Stores polled events and their pending acknowledgements in one transaction, then moves
    /// the environment's cursor to `cursor_ms` (never backwards). Returns the ids and topics of
    /// the events that were new; the others were in the inbox already (from the webhook or an
    /// earlier poll).
    pub async fn insert_polled(
        &self,
        environment_id: &str,
        events: Vec<PolledEvent>,
        cursor_ms: Option<i64>,
    ) -> Result<Vec<(String, String)>, StateError> {
        let environment_id = environment_id.to_owned();
        self.call(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            let mut fresh = Vec::new();
            for e in events {
                let n = tx.execute(
                    "INSERT OR IGNORE INTO inbox
                     (event_id, kind, topic, body, received_at_ms, status, updated_at_ms)
                     VALUES (?1, 'platform', ?2, ?3, ?4, 'pending', ?4)",
                    params![e.event_id, e.topic, e.body, now],
                )?;
                tx.execute(
                    "INSERT OR IGNORE INTO event_acks (event_id, environment_id) VALUES (?1, ?2)",
                    params![e.event_id, environment_id],
                )?;
                if n == 1 {
                    fresh.push((e.event_id, e.topic));
                }
            }
            if let Some(cursor) = cursor_ms {
                tx.execute(
                    "INSERT INTO poll_cursors (environment_id, since_ms, updated_at_ms)
                     VALUES (?1, ?2, ?3)
                     ON CONFLICT (environment_id) DO UPDATE SET
                         since_ms = max(since_ms, excluded.since_ms),
                         updated_at_ms = excluded.updated_at_ms",
                    params![environment_id, cursor, now],
                )?;
            }
            tx.commit()?;
            Ok(fresh)
        })
        .await
    }

    /// The polling cursor of an environment: the newest `createdAt` seen, in ms.
    pub async fn poll_cursor(&self, environment_id: &str) -> Result<Option<i64>, StateError> {
        let id = environment_id.to_owned();
        self.call(move |c| {
            c.query_row(
                "SELECT since_ms FROM poll_cursors WHERE environment_id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// Events of an environment stored in the inbox but not yet acknowledged to Flatfile.
    pub async fn unacked_events(
        &self,
        environment_id: &str,
        limit: usize,
    ) -> Result<Vec<String>, StateError> {
        let id = environment_id.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT event_id FROM event_acks
                 WHERE acked_at_ms IS NULL AND environment_id = ?1
                 ORDER BY rowid LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![id, limit as i64], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    /// Records the outcome of an acknowledgement: `Ok` = acknowledged, `Err` = try again later.
    pub async fn set_acked(
        &self,
        event_id: &str,
        outcome: Result<(), String>,
    ) -> Result<(), StateError> {
        let id = event_id.to_owned();
        self.call(move |c| {
            match outcome {
                Ok(()) => c.execute(
                    "UPDATE event_acks SET acked_at_ms = ?2, attempts = attempts + 1,
                     last_error = NULL WHERE event_id = ?1",
                    params![id, now_ms()],
                )?,
                Err(error) => c.execute(
                    "UPDATE event_acks SET attempts = attempts + 1, last_error = ?2
                     WHERE event_id = ?1",
                    params![id, error],
                )?,
            };
            Ok(())
        })
        .await
    }

    /// Ids of events that still need work, oldest first.
    pub async fn pending_events(&self) -> Result<Vec<String>, StateError> {
        self.pending_events_first(usize::MAX).await
    }

    /// The `limit` oldest of [`StateDb::pending_events`], so a caller's memory does not grow
    /// with the backlog.
    pub async fn pending_events_first(&self, limit: usize) -> Result<Vec<String>, StateError> {
        // SQLite reads a negative LIMIT as "no limit".
        let limit = i64::try_from(limit).unwrap_or(-1);
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT event_id FROM inbox WHERE status = 'pending'
                 ORDER BY received_at_ms, event_id LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    /// One event, if known.
    pub async fn event(&self, event_id: &str) -> Result<Option<StoredEvent>, StateError> {
        let id = event_id.to_owned();
        self.call(move |c| {
            c.query_row(
                "SELECT event_id, kind, topic, body, received_at_ms, status, detail
                 FROM inbox WHERE event_id = ?1",
                [id],
                |r| {
                    Ok(StoredEvent {
                        event_id: r.get(0)?,
                        kind: r.get(1)?,
                        topic: r.get(2)?,
                        body: r.get(3)?,
                        received_at_ms: r.get(4)?,
                        status: EventStatus::parse(&r.get::<_, String>(5)?),
                        detail: r.get(6)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    /// Sets an event's status and detail.
    pub async fn set_event_status(
        &self,
        event_id: &str,
        status: EventStatus,
        detail: Option<String>,
    ) -> Result<(), StateError> {
        let id = event_id.to_owned();
        self.call(move |c| {
            c.execute(
                "UPDATE inbox SET status = ?2, detail = ?3, updated_at_ms = ?4 WHERE event_id = ?1",
                params![id, status.as_str(), detail, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    /// Proves the connection answers: the main loop's liveness includes the database.
    pub async fn probe(&self) -> Result<(), StateError> {
        self.call(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    /// Counts of events by status.
    pub async fn event_counts(&self) -> Result<Vec<(String, u64)>, StateError> {
        self.call(|c| {
            let mut stmt =
                c.prepare("SELECT status, COUNT(*) FROM inbox GROUP BY status ORDER BY status")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
        .await
    }

    /// The sinks an event was routed to, once routed.
    pub async fn deliveries(&self, event_id: &str) -> Result<Vec<Delivery>, StateError> {
        let id = event_id.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT sink, status, rows, error, generation FROM deliveries
                 WHERE event_id = ?1 ORDER BY rowid",
            )?;
            let rows = stmt.query_map([id], |r| {
                Ok(Delivery {
                    sink: r.get(0)?,
                    status: r.get(1)?,
                    rows: r.get::<_, i64>(2)? as u64,
                    error: r.get(3)?,
                    generation: r.get(4)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Records the routing decision and the stream plan of an event in one transaction, so a
    /// restart resumes with the same sinks and the same paging.
    pub async fn plan_event(
        &self,
        event_id: &str,
        sinks: Vec<String>,
        streams: Vec<StreamPlan>,
    ) -> Result<(), StateError> {
        let id = event_id.to_owned();
        self.call(move |c| {
            let tx = c.transaction()?;
            for sink in &sinks {
                tx.execute(
                    "INSERT OR IGNORE INTO deliveries (event_id, sink, status, updated_at_ms)
                     VALUES (?1, ?2, 'pending', ?3)",
                    params![id, sink, now_ms()],
                )?;
            }
            for (ordinal, s) in streams.iter().enumerate() {
                tx.execute(
                    "INSERT OR IGNORE INTO streams
                     (event_id, ordinal, stream, kind, source_ref, fields_json, page_size, source, sinks)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        id,
                        ordinal as i64,
                        s.stream,
                        s.kind,
                        s.source_ref,
                        s.fields_json,
                        s.page_size as i64,
                        s.source.to_json(),
                        s.sinks
                            .as_ref()
                            .map(|sinks| serde_json::Value::from(sinks.clone()).to_string()),
                    ],
                )?;
            }
            tx.commit()
        })
        .await
    }

    /// The stream plan of an event, in order; empty until planned.
    pub async fn streams(&self, event_id: &str) -> Result<Vec<StreamPlan>, StateError> {
        let id = event_id.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT stream, kind, source_ref, fields_json, page_size,
                     CASE WHEN source != '' THEN source
                          WHEN (SELECT kind FROM inbox i WHERE i.event_id = streams.event_id) = 'legacy'
                          THEN '{\"type\":\"legacy_batch\"}'
                          ELSE '{\"type\":\"sheet\"}' END,
                     sinks
                 FROM streams WHERE event_id = ?1 ORDER BY ordinal",
            )?;
            let rows = stmt.query_map([id], |r| {
                let sinks: Option<String> = r.get(6)?;
                Ok(StreamPlan {
                    stream: r.get(0)?,
                    kind: r.get(1)?,
                    source_ref: r.get(2)?,
                    fields_json: r.get(3)?,
                    page_size: r.get::<_, i64>(4)? as u64,
                    source: StreamSource::from_json(&r.get::<_, String>(5)?)?,
                    sinks: match sinks {
                        None => None,
                        Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(
                                6,
                                rusqlite::types::Type::Text,
                                Box::new(e),
                            )
                        })?),
                    },
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Whether the event has been planned already (routing and streams recorded).
    pub async fn is_planned(&self, event_id: &str) -> Result<bool, StateError> {
        let id = event_id.to_owned();
        self.call(move |c| {
            c.query_row(
                "SELECT EXISTS(SELECT 1 FROM deliveries WHERE event_id = ?1)",
                [id],
                |r| r.get(0),
            )
        })
        .await
    }

    /// All checkpoints of an event.
    pub async fn checkpoints(&self, event_id: &str) -> Result<Vec<Checkpoint>, StateError> {
        let id = event_id.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT sink, stream, next_seq, complete, rows FROM checkpoints WHERE event_id = ?1",
            )?;
            let rows = stmt.query_map([id], |r| {
                Ok(Checkpoint {
                    sink: r.get(0)?,
                    stream: r.get(1)?,
                    next_seq: r.get::<_, i64>(2)? as u64,
                    complete: r.get(3)?,
                    rows: r.get::<_, i64>(4)? as u64,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Advances checkpoints after the sinks named in them reported a successful flush.
    pub async fn advance(
        &self,
        event_id: &str,
        checkpoints: Vec<Checkpoint>,
    ) -> Result<(), StateError> {
        let id = event_id.to_owned();
        self.call(move |c| {
            let tx = c.transaction()?;
            for cp in &checkpoints {
                tx.execute(
                    "INSERT INTO checkpoints (event_id, sink, stream, next_seq, complete, rows)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (event_id, sink, stream) DO UPDATE SET
                       next_seq = MAX(next_seq, excluded.next_seq),
                       complete = MAX(complete, excluded.complete),
                       rows = MAX(rows, excluded.rows)",
                    params![
                        id,
                        cp.sink,
                        cp.stream,
                        cp.next_seq as i64,
                        cp.complete,
                        cp.rows as i64
                    ],
                )?;
            }
            tx.commit()
        })
        .await
    }

    /// Marks a sink's share of an event done or failed, with the rows it holds.
    pub async fn set_delivery(
        &self,
        event_id: &str,
        sink: &str,
        status: &'static str,
        rows: u64,
        error: Option<String>,
    ) -> Result<(), StateError> {
        let (id, sink) = (event_id.to_owned(), sink.to_owned());
        self.call(move |c| {
            c.execute(
                "UPDATE deliveries SET status = ?3, rows = ?4, error = ?5, updated_at_ms = ?6
                 WHERE event_id = ?1 AND sink = ?2",
                params![id, sink, status, rows as i64, error, now_ms()],
            )?;
            Ok(())
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
            .call(|c| c.pragma_query_value(None, "journal_mode", |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = db
            .call(|c| c.pragma_query_value(None, "synchronous", |r| r.get(0)))
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
