//! What the pipeline records per event once it is planned: the sinks it is routed to and each
//! one's [`DeliveryStatus`] (`deliveries`), the stream plan (`streams`), and every sink's
//! durable position in each stream (`checkpoints`), which only ever moves forward.

use super::sql::{self, Backend, Db, DbError, params};
use super::{DeliveryStatus, StateDb, StateError, now_ms};

/// A sink's share of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Sink name.
    pub sink: String,
    /// Where it stands.
    pub status: DeliveryStatus,
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

    /// The source stored in column `column`.
    fn from_json(text: &str, column: usize) -> sql::Result<StreamSource> {
        serde_json::from_str(text).map_err(|e| DbError::column(column, e))
    }
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

impl StateDb {
    /// The sinks an event was routed to, once routed.
    pub async fn deliveries(&self, event_id: &str) -> Result<Vec<Delivery>, StateError> {
        let id = event_id.to_owned();
        self.call(move |db| {
            let sql = format!(
                "SELECT sink, status, rows, error, generation FROM deliveries
                 WHERE event_id = ?1 ORDER BY {}",
                planned_order(db)
            );
            db.query_map(&sql, params![id], |r| {
                Ok(Delivery {
                    sink: r.get(0)?,
                    status: r.get(1)?,
                    rows: r.get::<_, i64>(2)? as u64,
                    error: r.get(3)?,
                    generation: r.get(4)?,
                })
            })
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
        self.call(move |db| {
            db.transaction(|tx| {
                let now = now_ms();
                for sink in &sinks {
                    tx.execute(
                        "INSERT INTO deliveries (event_id, sink, status, updated_at_ms)
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                        params![id, sink, DeliveryStatus::Pending, now],
                    )?;
                }
                for (ordinal, s) in streams.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO streams
                         (event_id, ordinal, stream, kind, source_ref, fields_json, page_size,
                          source, sinks)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
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
                Ok(())
            })
        })
        .await
    }

    /// The stream plan of an event, in order; empty until planned.
    pub async fn streams(&self, event_id: &str) -> Result<Vec<StreamPlan>, StateError> {
        let id = event_id.to_owned();
        self.call(move |db| {
            db.query_map(
                "SELECT stream, kind, source_ref, fields_json, page_size,
                     CASE WHEN source != '' THEN source
                          WHEN (SELECT kind FROM inbox i WHERE i.event_id = streams.event_id) = 'legacy'
                          THEN '{\"type\":\"legacy_batch\"}'
                          ELSE '{\"type\":\"sheet\"}' END,
                     sinks
                 FROM streams WHERE event_id = ?1 ORDER BY ordinal",
                params![id],
                |r| {
                    let sinks: Option<String> = r.get(6)?;
                    Ok(StreamPlan {
                        stream: r.get(0)?,
                        kind: r.get(1)?,
                        source_ref: r.get(2)?,
                        fields_json: r.get(3)?,
                        page_size: r.get::<_, i64>(4)? as u64,
                        source: StreamSource::from_json(&r.get::<_, String>(5)?, 5)?,
                        sinks: match sinks {
                            None => None,
                            Some(text) => Some(
                                serde_json::from_str(&text)
                                    .map_err(|e| DbError::column(6, e))?,
                            ),
                        },
                    })
                },
            )
        })
        .await
    }

    /// Records how many rows the stream `stream` of an event holds, once its fetch learned it
    /// (from `/counts`, a page's total or the ids), for the progress `flatsync top` shows.
    /// Written when it changes, so a delivery resumed or replayed writes it at most once more.
    pub async fn set_stream_total(
        &self,
        event_id: &str,
        stream: &str,
        total_rows: u64,
    ) -> Result<(), StateError> {
        let (id, stream) = (event_id.to_owned(), stream.to_owned());
        self.call(move |db| {
            db.execute(
                "UPDATE streams SET total_rows = ?3
                 WHERE event_id = ?1 AND stream = ?2
                   AND (total_rows IS NULL OR total_rows != ?3)",
                params![id, stream, total_rows as i64],
            )?;
            Ok(())
        })
        .await
    }

    /// Whether the event has been planned already (routing and streams recorded).
    pub async fn is_planned(&self, event_id: &str) -> Result<bool, StateError> {
        let id = event_id.to_owned();
        self.call(move |db| {
            db.query_row(
                "SELECT EXISTS(SELECT 1 FROM deliveries WHERE event_id = ?1)",
                params![id],
                |r| r.get(0),
            )
        })
        .await
    }

    /// All checkpoints of an event.
    pub async fn checkpoints(&self, event_id: &str) -> Result<Vec<Checkpoint>, StateError> {
        let id = event_id.to_owned();
        self.call(move |db| {
            db.query_map(
                "SELECT sink, stream, next_seq, complete, rows FROM checkpoints
                 WHERE event_id = ?1 ORDER BY sink, stream",
                params![id],
                |r| {
                    Ok(Checkpoint {
                        sink: r.get(0)?,
                        stream: r.get(1)?,
                        next_seq: r.get::<_, i64>(2)? as u64,
                        complete: r.get(3)?,
                        rows: r.get::<_, i64>(4)? as u64,
                    })
                },
            )
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
        self.call(move |db| {
            db.transaction(|tx| {
                for cp in &checkpoints {
                    tx.execute(
                        "INSERT INTO checkpoints (event_id, sink, stream, next_seq, complete, rows)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (event_id, sink, stream) DO UPDATE SET
                           next_seq = GREATEST(checkpoints.next_seq, excluded.next_seq),
                           complete = GREATEST(checkpoints.complete, excluded.complete),
                           rows = GREATEST(checkpoints.rows, excluded.rows)",
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
                Ok(())
            })
        })
        .await
    }

    /// Marks a sink's share of an event done or failed, with the rows it holds.
    pub async fn set_delivery(
        &self,
        event_id: &str,
        sink: &str,
        status: DeliveryStatus,
        rows: u64,
        error: Option<String>,
    ) -> Result<(), StateError> {
        let (id, sink) = (event_id.to_owned(), sink.to_owned());
        self.call(move |db| {
            db.execute(
                "UPDATE deliveries SET status = ?3, rows = ?4, error = ?5, updated_at_ms = ?6
                 WHERE event_id = ?1 AND sink = ?2",
                params![id, sink, status, rows as i64, error, now_ms()],
            )?;
            Ok(())
        })
        .await
    }
}

/// How to order an event's `deliveries` rows as its sinks were planned (the routes' order,
/// which the engine logs and works in). SQLite keeps the insertion order as the rowid; the
/// PostgreSQL schema has no such column, so there they come by sink name.
fn planned_order(db: &Db) -> &'static str {
    match db.backend() {
        Backend::Sqlite => "rowid",
        Backend::Postgres => "sink",
    }
}
