//! What the pipeline records per event once it is planned: the sinks it is routed to and each
//! one's [`DeliveryStatus`] (`deliveries`), the stream plan (`streams`), and every sink's
//! durable position in each stream (`checkpoints`), which only ever moves forward.

use super::sql::{self, DbError, params};
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
        serde_json::from_str(text)
            .map_err(|e| DbError::column(column, format!("streams.source: {e}")))
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
            // The routes' order: the order the rows were planned in.
            let sql = "SELECT sink, status, rows, error, generation FROM deliveries
                       WHERE event_id = ?1 ORDER BY rowid";
            db.query_map(sql, params![id], |r| {
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
                                    .map_err(|e| DbError::column(6, format!("streams.sinks: {e}")))?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::sql::params;
    use crate::state::testing::TestBackend;

    /// The backend a failed assertion ran on.
    fn which(backend: &TestBackend) -> &'static str {
        match backend {
            TestBackend::Sqlite(_) => "SQLite",
            TestBackend::Postgres(_) => "PostgreSQL",
        }
    }

    /// Event `e`, stored and planned into the one stream `contacts-e` for sink `s`.
    async fn planned_in_one_stream(db: &StateDb) {
        stored(db, "e", "platform").await;
        db.plan_event(
            "e",
            vec!["s".to_owned()],
            vec![sheet_ids("contacts-e", None)],
        )
        .await
        .unwrap();
    }

    async fn stored(db: &StateDb, id: &str, kind: &'static str) {
        db.insert_event(id.into(), kind, "job:ready".into(), b"{}".to_vec(), 1)
            .await
            .unwrap();
    }

    fn sheet_ids(stream: &str, sinks: Option<Vec<String>>) -> StreamPlan {
        StreamPlan {
            stream: stream.to_owned(),
            kind: "contacts".to_owned(),
            source_ref: "us_sh_1".to_owned(),
            fields_json: "[\"email\",\"name\"]".to_owned(),
            page_size: 500,
            source: StreamSource::SheetIds {
                ids: vec!["r1".to_owned(), "r2".to_owned()],
            },
            sinks,
        }
    }

    fn cp(sink: &str, next_seq: u64, complete: bool, rows: u64) -> Checkpoint {
        Checkpoint {
            sink: sink.to_owned(),
            stream: "contacts-e".to_owned(),
            next_seq,
            complete,
            rows,
        }
    }

    #[tokio::test]
    async fn a_plan_is_recorded_once_with_its_sinks_and_streams_on_both_backends() {
        for backend in TestBackend::both("streams_plan") {
            let on = which(&backend);
            let db = backend.state();
            stored(&db, "e", "platform").await;
            assert!(!db.is_planned("e").await.unwrap(), "{on}");
            assert!(db.deliveries("e").await.unwrap().is_empty(), "{on}");
            let snapshot = StreamPlan {
                source: StreamSource::Carried {
                    parts: 3,
                    deletions: true,
                },
                ..sheet_ids("contacts-e-all", Some(vec!["warehouse".to_owned()]))
            };
            let plans = vec![sheet_ids("contacts-e", None), snapshot];
            let sinks = vec!["warehouse".to_owned(), "archive".to_owned()];
            db.plan_event("e", sinks.clone(), plans.clone())
                .await
                .unwrap();
            // Planned again (the same plan after a crash before its caller saw it): nothing doubles.
            db.plan_event("e", sinks, plans.clone()).await.unwrap();
            assert!(db.is_planned("e").await.unwrap(), "{on}");
            assert_eq!(db.streams("e").await.unwrap(), plans, "{on}");
            assert!(plans[1].is_for("warehouse") && !plans[1].is_for("archive"));

            let deliveries = db.deliveries("e").await.unwrap();
            let mut planned: Vec<&str> = deliveries.iter().map(|d| d.sink.as_str()).collect();
            assert_eq!(planned, ["warehouse", "archive"], "{on}: the routes' order");
            planned.sort_unstable();
            assert_eq!(planned, ["archive", "warehouse"], "{on}");
            assert!(
                deliveries
                    .iter()
                    .all(|d| d.status == DeliveryStatus::Pending
                        && d.rows == 0
                        && d.error.is_none()
                        && d.generation == 0),
                "{on}: {deliveries:?}"
            );

            db.set_delivery(
                "e",
                "archive",
                DeliveryStatus::Failed,
                40,
                Some("disk full".into()),
            )
            .await
            .unwrap();
            let archive = db
                .deliveries("e")
                .await
                .unwrap()
                .into_iter()
                .find(|d| d.sink == "archive")
                .expect("archive");
            assert_eq!(
                (archive.status, archive.rows, archive.error.as_deref()),
                (DeliveryStatus::Failed, 40, Some("disk full")),
                "{on}"
            );
            drop(db);
            assert_eq!(
                backend.state().streams("e").await.unwrap(),
                plans,
                "{on}: the plan is durable"
            );
        }
    }

    #[tokio::test]
    async fn checkpoints_never_move_backwards_on_both_backends() {
        for backend in TestBackend::both("streams_checkpoints") {
            let on = which(&backend);
            let db = backend.state();
            assert!(db.checkpoints("e").await.unwrap().is_empty(), "{on}");
            db.advance("e", vec![cp("s", 5, false, 50), cp("t", 1, false, 10)])
                .await
                .unwrap();
            db.advance("e", vec![cp("s", 3, false, 30)]).await.unwrap();
            assert_eq!(
                db.checkpoints("e").await.unwrap(),
                [cp("s", 5, false, 50), cp("t", 1, false, 10)],
                "{on}: an older flush does not move a checkpoint back"
            );
            db.advance("e", vec![cp("s", 7, true, 70)]).await.unwrap();
            db.advance("e", vec![cp("s", 6, false, 60)]).await.unwrap();
            assert_eq!(
                db.checkpoints("e").await.unwrap()[0],
                cp("s", 7, true, 70),
                "{on}: a complete stream stays complete"
            );
            assert!(db.checkpoints("other").await.unwrap().is_empty(), "{on}");
        }
    }

    async fn total_rows(db: &StateDb) -> Option<i64> {
        db.call(|db| {
            db.query_row(
                "SELECT total_rows FROM streams WHERE event_id = 'e' AND stream = 'contacts-e'",
                params![],
                |r| r.get(0),
            )
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_stream_total_is_written_for_its_stream_only_on_both_backends() {
        for backend in TestBackend::both("streams_total") {
            let on = which(&backend);
            let db = backend.state();
            planned_in_one_stream(&db).await;
            assert_eq!(total_rows(&db).await, None, "{on}: not learned yet");
            db.set_stream_total("e", "contacts-e", 20_000)
                .await
                .unwrap();
            db.set_stream_total("e", "contacts-e", 20_000)
                .await
                .unwrap();
            db.set_stream_total("e", "no-such-stream", 5).await.unwrap();
            assert_eq!(total_rows(&db).await, Some(20_000), "{on}");
            db.set_stream_total("e", "contacts-e", 0).await.unwrap();
            assert_eq!(
                total_rows(&db).await,
                Some(0),
                "{on}: a new count replaces it"
            );
        }
    }

    #[tokio::test]
    async fn a_stream_planned_before_sources_were_stored_reads_as_its_event_kind_says() {
        for backend in TestBackend::both("streams_legacy") {
            let on = which(&backend);
            let db = backend.state();
            stored(&db, "legacy-e", "legacy").await;
            stored(&db, "platform-e", "platform").await;
            db.call(|db| {
                for id in ["legacy-e", "platform-e"] {
                    db.execute(
                        "INSERT INTO streams (event_id, ordinal, stream, kind, source_ref,
                             fields_json, page_size)
                         VALUES (?1, 0, 'x', 'contacts', 'b', '[]', 100)",
                        params![id],
                    )?;
                }
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(
                db.streams("legacy-e").await.unwrap()[0].source,
                StreamSource::LegacyBatch,
                "{on}"
            );
            let platform = db.streams("platform-e").await.unwrap().remove(0);
            assert_eq!(
                (platform.source, platform.sinks, platform.page_size),
                (StreamSource::Sheet, None, 100),
                "{on}"
            );
        }
    }

    #[tokio::test]
    async fn a_damaged_stream_source_is_an_error_naming_its_column_on_both_backends() {
        for backend in TestBackend::both("streams_damaged") {
            let on = which(&backend);
            let db = backend.state();
            planned_in_one_stream(&db).await;
            db.call(|db| {
                db.execute(
                    "UPDATE streams SET source = '{\"type\":\"no_such_source\"}'",
                    params![],
                )
            })
            .await
            .unwrap();
            let err = db
                .streams("e")
                .await
                .expect_err("a source this build cannot read");
            assert!(
                err.to_string().contains("column 5: streams.source"),
                "{on}: {err}"
            );
        }
    }
}
