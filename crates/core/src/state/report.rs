//! What the operator commands and `/metrics` read: typed rows of one snapshot
//! ([`Snapshot`]), shaped as the commands print them (`flatsync status`, `events list`,
//! `events show`, `dead-letter list`), and the gauges of a scrape (`read_gauges`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::groups::{self, GroupBatchInfo};
use super::sql::{self, Backend, Db, OptionalExtension, params};
use super::tx::Tx;
use super::{DeliveryStatus, EventStatus, StateError, stream_for_generation};

/// An upload still waiting for parts, in `flatsync status`.
#[derive(Clone, Debug, Serialize)]
pub struct UploadStatus {
    /// `upload-<batch>` or `forwarded-<stream>`: the inbox event it becomes once complete.
    pub upload: String,
    /// `portal2` or `flatsync`.
    pub origin: String,
    /// Parts stored so far.
    pub parts_received: u64,
    /// Parts announced (Portal 2.0 `sequence.count`); `None` while unknown (a forwarded stream
    /// before its last batch).
    pub parts_expected: Option<u64>,
    /// When the first part arrived, ms since the Unix epoch.
    pub first_received_at_ms: i64,
}

/// The polling state of one environment.
#[derive(Clone, Debug, Serialize)]
pub struct PollStatus {
    /// Flatfile environment id.
    pub environment_id: String,
    /// The newest `createdAt` polled, ms since the Unix epoch.
    pub cursor_ms: i64,
    /// Events stored but not yet acknowledged to Flatfile.
    pub unacknowledged: u64,
}

/// The newest dead letter of a sink.
#[derive(Clone, Debug, Serialize)]
pub struct LastError {
    /// The event.
    pub event_id: String,
    /// When the delivery failed, ms since the Unix epoch.
    pub at_ms: i64,
    /// The sink's error.
    pub error: String,
}

/// An event in `events list --json` (a JSON array of these, newest first).
///
/// ```json
/// {"event_id": "evt-1", "kind": "legacy", "topic": "portalImportSubmitted",
///  "status": "failed", "detail": "sink `bomb`: ...", "received_at_ms": 1714564800000,
///  "updated_at_ms": 1714564801000,
///  "deliveries": [{"sink": "archive", "status": "done", "rows": 250, "generation": 0}]}
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct EventSummary {
    /// Event id.
    pub event_id: String,
    /// `legacy` or `platform`.
    pub kind: String,
    /// Topic used for routing.
    pub topic: String,
    /// Where it stands.
    pub status: EventStatus,
    /// Error or reason.
    pub detail: Option<String>,
    /// Receipt time, ms since the Unix epoch.
    pub received_at_ms: i64,
    /// Last status change, ms since the Unix epoch.
    pub updated_at_ms: i64,
    /// The sinks it was routed to; empty until planned.
    pub deliveries: Vec<DeliverySummary>,
}

/// A delivery in an [`EventSummary`].
#[derive(Clone, Debug, Serialize)]
pub struct DeliverySummary {
    /// Sink name.
    pub sink: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Rows made durable (for pending deliveries: as of the last finished attempt).
    pub rows: u64,
    /// Replays so far.
    pub generation: u32,
}

/// What `events show ID --json` prints.
///
/// ```json
/// {"event_id": "evt-1", "kind": "legacy", "topic": "portalImportSubmitted",
///  "status": "done", "detail": null, "received_at_ms": 1714564800000,
///  "updated_at_ms": 1714564801000,
///  "body": {"...": "the webhook body as received, parsed"},
///  "deliveries": [{"sink": "archive", "status": "done", "rows": 250, "error": null,
///                  "generation": 1, "updated_at_ms": 1714564801000,
///                  "streams": ["legacy-b1-r1"]}],
///  "streams": [{"ordinal": 0, "stream": "legacy-b1", "kind": "legacy_batch",
///               "source_ref": "b1", "fields": [], "page_size": 1000, "total_rows": 250}],
///  "checkpoints": [{"sink": "archive", "stream": "legacy-b1", "next_seq": 1,
///                   "complete": true, "rows": 250}],
///  "group_batches": []}
/// ```
///
/// An event without data grouped with others has no streams or checkpoints of its own; its
/// `group_batches` say where its row went:
/// `[{"sink": "archive", "generation": 0, "group": "events-space-20240501T120000Z",
///    "stream": "events-space-20240501T120000Z", "seq": 3, "position": 17, "durable": true}]`.
///
/// `body` is the parsed JSON body, or a string holding the body's text when it is not JSON.
#[derive(Clone, Debug, Serialize)]
pub struct EventDetail {
    /// Event id.
    pub event_id: String,
    /// `legacy` or `platform`.
    pub kind: String,
    /// Topic used for routing.
    pub topic: String,
    /// Where it stands.
    pub status: EventStatus,
    /// Error or reason.
    pub detail: Option<String>,
    /// Receipt time, ms since the Unix epoch.
    pub received_at_ms: i64,
    /// Last status change, ms since the Unix epoch.
    pub updated_at_ms: i64,
    /// The body as received.
    pub body: serde_json::Value,
    /// Per routed sink.
    pub deliveries: Vec<DeliveryInfo>,
    /// The stream plan, in order; empty until planned.
    pub streams: Vec<StreamInfo>,
    /// Every checkpoint of the event, of every generation.
    pub checkpoints: Vec<CheckpointInfo>,
    /// For an event without data grouped with others (`[events] streams = "grouped"`): which
    /// batch of which group stream carries its row to each sink, per generation.
    pub group_batches: Vec<GroupBatchInfo>,
}

/// A delivery in an [`EventDetail`].
#[derive(Clone, Debug, Serialize)]
pub struct DeliveryInfo {
    /// Sink name.
    pub sink: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Rows made durable.
    pub rows: u64,
    /// Error of a failed delivery.
    pub error: Option<String>,
    /// Replays so far.
    pub generation: u32,
    /// Last change, ms since the Unix epoch.
    pub updated_at_ms: i64,
    /// The streams this generation delivers into.
    pub streams: Vec<String>,
}

/// A planned stream in an [`EventDetail`].
#[derive(Clone, Debug, Serialize)]
pub struct StreamInfo {
    /// Position in the plan, from 0.
    pub ordinal: u64,
    /// Stream id of the first delivery; replays add `-r<generation>`.
    pub stream: String,
    /// Stream kind (table name).
    pub kind: String,
    /// Legacy batch id or Platform sheet id.
    pub source_ref: String,
    /// Field keys in schema order.
    pub fields: serde_json::Value,
    /// Rows per page.
    pub page_size: u64,
    /// Rows the stream holds, once its fetch learned them; `None` before, or when the source
    /// does not say until its last page.
    pub total_rows: Option<u64>,
}

/// A checkpoint in an [`EventDetail`].
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointInfo {
    /// Sink name.
    pub sink: String,
    /// Stream id (with the generation suffix of a replay).
    pub stream: String,
    /// First batch the sink has not made durable.
    pub next_seq: u64,
    /// The last batch is durable.
    pub complete: bool,
    /// Rows made durable.
    pub rows: u64,
}

/// A failed delivery, as `dead-letter list --json` prints them (a JSON array, newest first).
///
/// ```json
/// {"event_id": "evt-1", "topic": "portalImportSubmitted", "sink": "bomb", "rows": 0,
///  "error": "sink `bomb`: plugin fx-panic: panicked: ...", "failed_at_ms": 1714564800000,
///  "generation": 0}
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    /// The event.
    pub event_id: String,
    /// Its topic.
    pub topic: String,
    /// The sink that failed.
    pub sink: String,
    /// Rows the sink made durable before it failed; a retry resumes after them.
    pub rows: u64,
    /// The sink's error.
    pub error: Option<String>,
    /// When it failed, ms since the Unix epoch.
    pub failed_at_ms: i64,
    /// Replays so far.
    pub generation: u32,
}

/// A pending delivery with its progress, for `flatsync top`: one progress bar.
#[derive(Clone, Debug, Serialize)]
pub struct InFlight {
    /// The event.
    pub event_id: String,
    /// Its topic.
    pub topic: String,
    /// Receipt time of the event, ms since the Unix epoch.
    pub received_at_ms: i64,
    /// The sink.
    pub sink: String,
    /// Replays so far; the streams below are this generation's.
    pub generation: u32,
    /// The streams of the event this sink takes, in plan order.
    pub streams: Vec<StreamProgress>,
}

impl InFlight {
    /// Rows checkpointed in every stream.
    pub fn rows_done(&self) -> u64 {
        self.streams.iter().map(|s| s.rows).sum()
    }

    /// Rows in every stream, when every stream's total is known.
    pub fn rows_expected(&self) -> Option<u64> {
        if self.streams.is_empty() {
            return None;
        }
        self.streams.iter().map(|s| s.total_rows).sum()
    }
}

/// One stream of an [`InFlight`] delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamProgress {
    /// The stream delivered into (with the generation suffix of a replay).
    pub stream: String,
    /// Rows checkpointed.
    pub rows: u64,
    /// Rows the stream holds, once its fetch learned them.
    pub total_rows: Option<u64>,
    /// The last batch is checkpointed.
    pub complete: bool,
}

/// One sink's deliveries of one status, for `flatsync status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryCount {
    /// Sink name.
    pub sink: String,
    /// The status counted.
    pub status: DeliveryStatus,
    /// Deliveries with it.
    pub count: u64,
    /// Rows of those deliveries, when they are done; 0 otherwise.
    pub done_rows: u64,
    /// The newest change to one of them, ms since the Unix epoch.
    pub last_update_ms: Option<i64>,
}

/// Inbox rows [`Snapshot::events`] reads at a time.
const EVENTS_PAGE: i64 = 500;

/// One read snapshot of the state database, from [`super::OperatorDb::read`].
#[derive(Debug)]
pub struct Snapshot<'a> {
    pub(super) tx: Tx<'a>,
}

impl<'a> Snapshot<'a> {
    pub(super) fn new(tx: Tx<'a>) -> Snapshot<'a> {
        Snapshot { tx }
    }

    /// Whether the database has every table of `tables`: an SQLite file of an older version
    /// may lack some. PostgreSQL's schema began with all of them.
    fn has_tables(&self, tables: &[&str]) -> Result<bool, StateError> {
        if self.tx.backend() == Backend::Postgres {
            return Ok(true);
        }
        for table in tables {
            let found = self.tx.row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                params![table],
                |_| Ok(()),
            )?;
            if found.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Inbox events by status.
    pub fn event_counts(&self) -> Result<Vec<(EventStatus, u64)>, StateError> {
        self.tx.rows(
            "SELECT status, COUNT(*) FROM inbox GROUP BY status",
            params![],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
        )
    }

    /// Every inbox event's id and status, by id.
    pub fn event_statuses(&self) -> Result<Vec<(String, EventStatus)>, StateError> {
        self.tx.rows(
            "SELECT event_id, status FROM inbox ORDER BY event_id",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Rows the checkpoints count as made durable, of every sink or of `sink`, over every
    /// event and generation.
    pub fn checkpointed_rows(&self, sink: Option<&str>) -> Result<u64, StateError> {
        self.tx
            .row(
                "SELECT CAST(COALESCE(SUM(rows), 0) AS BIGINT) FROM checkpoints
                 WHERE CAST(?1 AS TEXT) IS NULL OR sink = ?1",
                params![sink],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.unwrap_or(0).max(0) as u64)
    }

    /// Deliveries by sink and status.
    pub fn delivery_counts(&self) -> Result<Vec<DeliveryCount>, StateError> {
        self.tx.rows(
            "SELECT sink, status, COUNT(*),
                    CAST(SUM(CASE WHEN status = ?1 THEN rows ELSE 0 END) AS BIGINT),
                    MAX(updated_at_ms)
             FROM deliveries GROUP BY sink, status",
            params![DeliveryStatus::Done],
            |r| {
                Ok(DeliveryCount {
                    sink: r.get(0)?,
                    status: r.get(1)?,
                    count: r.get::<_, i64>(2)? as u64,
                    done_rows: r.get::<_, Option<i64>>(3)?.unwrap_or(0).max(0) as u64,
                    last_update_ms: r.get(4)?,
                })
            },
        )
    }

    /// Per sink, the rows already checkpointed for its pending deliveries, in the streams of
    /// their current generation (older generations' checkpoints belong to earlier deliveries).
    pub fn pending_checkpointed_rows(&self) -> Result<Vec<(String, u64)>, StateError> {
        let streams: Vec<(String, String, u32, String)> = self.tx.rows(
            "SELECT d.event_id, d.sink, d.generation, s.stream
             FROM deliveries d JOIN streams s ON s.event_id = d.event_id
             WHERE d.status = ?1",
            params![DeliveryStatus::Pending],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let mut rows = Vec::with_capacity(streams.len());
        for (event_id, sink, generation, stream) in streams {
            let stream = stream_for_generation(&stream, generation);
            let found: Vec<i64> = self.tx.rows(
                "SELECT rows FROM checkpoints WHERE event_id = ?1 AND sink = ?2 AND stream = ?3",
                params![event_id, sink, stream],
                |r| r.get(0),
            )?;
            let n = found.first().copied().unwrap_or(0).max(0) as u64;
            rows.push((sink, n));
        }
        Ok(rows)
    }

    /// Pending deliveries, newest event first, at most `limit`, each with the checkpointed rows
    /// and the known total of every stream it takes.
    pub fn in_flight(&self, limit: usize) -> Result<Vec<InFlight>, StateError> {
        // SQLite puts a missing inbox row (NULL) last when descending; PostgreSQL first.
        let sql = format!(
            "SELECT d.event_id, COALESCE(i.topic, ''), COALESCE(i.received_at_ms, 0), d.sink,
                    d.generation
             FROM deliveries d LEFT JOIN inbox i ON i.event_id = d.event_id
             WHERE d.status = ?1
             ORDER BY i.received_at_ms DESC NULLS LAST, d.event_id DESC, {} LIMIT ?2",
            self.tx.delivery_order("d", false)
        );
        let mut deliveries: Vec<InFlight> = self.tx.rows(
            &sql,
            params![
                DeliveryStatus::Pending,
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| {
                Ok(InFlight {
                    event_id: r.get(0)?,
                    topic: r.get(1)?,
                    received_at_ms: r.get(2)?,
                    sink: r.get(3)?,
                    generation: r.get(4)?,
                    streams: Vec::new(),
                })
            },
        )?;
        for delivery in &mut deliveries {
            delivery.streams =
                self.stream_progress(&delivery.event_id, &delivery.sink, delivery.generation)?;
        }
        Ok(deliveries)
    }

    /// The streams of an event that `sink` takes, with its checkpoint in each, in plan order.
    fn stream_progress(
        &self,
        event_id: &str,
        sink: &str,
        generation: u32,
    ) -> Result<Vec<StreamProgress>, StateError> {
        let plan: Vec<(String, Option<i64>, Option<String>)> = self.tx.rows(
            "SELECT stream, total_rows, sinks FROM streams WHERE event_id = ?1 ORDER BY ordinal",
            params![event_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let checkpoints: BTreeMap<String, (u64, bool)> = self
            .tx
            .rows(
                "SELECT stream, rows, complete FROM checkpoints WHERE event_id = ?1 AND sink = ?2",
                params![event_id, sink],
                |r| Ok((r.get(0)?, (r.get::<_, i64>(1)?.max(0) as u64, r.get(2)?))),
            )?
            .into_iter()
            .collect();
        let takes = |sinks: &Option<String>| {
            sinks.as_deref().is_none_or(|text| {
                serde_json::from_str::<Vec<String>>(text)
                    .map_or(true, |sinks| sinks.iter().any(|s| s == sink))
            })
        };
        Ok(plan
            .into_iter()
            .filter(|(_, _, sinks)| takes(sinks))
            .map(|(stream, total, _)| {
                let stream = stream_for_generation(&stream, generation);
                let (rows, complete) = checkpoints.get(&stream).copied().unwrap_or((0, false));
                StreamProgress {
                    stream,
                    rows,
                    total_rows: total.map(|n| n.max(0) as u64),
                    complete,
                }
            })
            .collect())
    }

    /// Per sink, the receipt time of the oldest event with a pending delivery to it.
    pub fn oldest_pending(&self) -> Result<Vec<(String, i64)>, StateError> {
        self.tx.with(oldest_pending)
    }

    /// The newest dead letter of `sink`.
    pub fn last_error(&self, sink: &str) -> Result<Option<LastError>, StateError> {
        let sql = format!(
            "SELECT event_id, updated_at_ms, COALESCE(error, '') FROM deliveries
             WHERE sink = ?1 AND status = ?2
             ORDER BY updated_at_ms DESC, {} LIMIT 1",
            self.tx.delivery_order("", true)
        );
        self.tx
            .row(&sql, params![sink, DeliveryStatus::Failed], |r| {
                Ok(LastError {
                    event_id: r.get(0)?,
                    at_ms: r.get(1)?,
                    error: r.get(2)?,
                })
            })
    }

    /// Pending inbox events by topic.
    pub fn pending_topics(&self) -> Result<Vec<(String, u64)>, StateError> {
        self.tx.rows(
            "SELECT topic, COUNT(*) FROM inbox WHERE status = ?1 GROUP BY topic",
            params![EventStatus::Pending],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
        )
    }

    /// The newest change to any delivery, ms since the Unix epoch.
    pub fn last_delivery_update_ms(&self) -> Result<Option<i64>, StateError> {
        self.tx
            .row(
                "SELECT MAX(updated_at_ms) FROM deliveries WHERE updated_at_ms > 0",
                params![],
                |r| r.get(0),
            )
            .map(Option::flatten)
    }

    /// Per polled environment, its cursor and the events not yet acknowledged.
    pub fn polling(&self) -> Result<Vec<PollStatus>, StateError> {
        // A database from before polling existed has no such tables: nothing polled yet.
        if !self.has_tables(&["poll_cursors", "event_acks"])? {
            return Ok(Vec::new());
        }
        self.tx.rows(
            "SELECT p.environment_id, p.since_ms,
                 (SELECT COUNT(*) FROM event_acks a
                  WHERE a.environment_id = p.environment_id AND a.acked_at_ms IS NULL)
             FROM poll_cursors p ORDER BY p.environment_id",
            params![],
            |r| {
                Ok(PollStatus {
                    environment_id: r.get(0)?,
                    cursor_ms: r.get(1)?,
                    unacknowledged: r.get::<_, i64>(2)? as u64,
                })
            },
        )
    }

    /// Uploads with parts still missing, oldest first.
    pub fn incomplete_uploads(&self) -> Result<Vec<UploadStatus>, StateError> {
        // A database from before uploads existed has no such tables: none waiting.
        if !self.has_tables(&["carried_uploads", "carried_parts"])? {
            return Ok(Vec::new());
        }
        self.tx.rows(
            "SELECT u.upload, u.origin, u.first_received_at_ms,
                 (SELECT COUNT(*) FROM carried_parts p WHERE p.upload = u.upload),
                 (SELECT MAX(p.part_count) FROM carried_parts p WHERE p.upload = u.upload)
             FROM carried_uploads u WHERE u.completed_at_ms IS NULL ORDER BY u.first_received_at_ms",
            params![],
            |r| {
                Ok(UploadStatus {
                    upload: r.get(0)?,
                    origin: r.get(1)?,
                    first_received_at_ms: r.get(2)?,
                    parts_received: r.get::<_, i64>(3)? as u64,
                    parts_expected: r.get::<_, Option<i64>>(4)?.map(|n| n as u64),
                })
            },
        )
    }

    /// Events newest first, only those of `status` when given and those `keep` accepts, at
    /// most `limit`; each with its deliveries.
    pub fn events(
        &self,
        status: Option<EventStatus>,
        mut keep: impl FnMut(&EventSummary) -> bool,
        limit: usize,
    ) -> Result<Vec<EventSummary>, StateError> {
        let mut events = Vec::new();
        // Read in pages, so that a filter that keeps few events does not hold the whole
        // inbox in memory; the next page starts below the last event read.
        let mut after: Option<(i64, String)> = None;
        'pages: loop {
            let (before_ms, before_id) = after
                .clone()
                .map_or((None, None), |(ms, id)| (Some(ms), Some(id)));
            let page = self.tx.rows(
                "SELECT event_id, kind, topic, status, detail, received_at_ms, updated_at_ms
                 FROM inbox
                 WHERE (CAST(?1 AS TEXT) IS NULL OR status = ?1)
                   AND (CAST(?2 AS BIGINT) IS NULL OR received_at_ms < ?2
                        OR (received_at_ms = ?2 AND event_id < ?3))
                 ORDER BY received_at_ms DESC, event_id DESC LIMIT ?4",
                params![status, before_ms, before_id, EVENTS_PAGE],
                |r| {
                    Ok(EventSummary {
                        event_id: r.get(0)?,
                        kind: r.get(1)?,
                        topic: r.get(2)?,
                        status: r.get(3)?,
                        detail: r.get(4)?,
                        received_at_ms: r.get(5)?,
                        updated_at_ms: r.get(6)?,
                        deliveries: Vec::new(),
                    })
                },
            )?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some((last.received_at_ms, last.event_id.clone()));
            let full = page.len() as i64 == EVENTS_PAGE;
            for event in page {
                if !keep(&event) {
                    continue;
                }
                events.push(event);
                if events.len() >= limit {
                    break 'pages;
                }
            }
            if !full {
                break;
            }
        }
        let order = self.tx.delivery_order("", false);
        for event in &mut events {
            event.deliveries = self.tx.rows(
                &format!(
                    "SELECT sink, status, rows, generation FROM deliveries
                     WHERE event_id = ?1 ORDER BY {order}"
                ),
                params![event.event_id],
                |r| {
                    Ok(DeliverySummary {
                        sink: r.get(0)?,
                        status: r.get(1)?,
                        rows: r.get::<_, i64>(2)?.max(0) as u64,
                        generation: r.get(3)?,
                    })
                },
            )?;
        }
        Ok(events)
    }

    /// Everything about one event; `None` when it is not in the inbox.
    pub fn event_detail(&self, event_id: &str) -> Result<Option<EventDetail>, StateError> {
        let Some(mut event) = self.event_head(event_id)? else {
            return Ok(None);
        };
        event.streams = self.tx.rows(
            "SELECT ordinal, stream, kind, source_ref, fields_json, page_size, total_rows
             FROM streams WHERE event_id = ?1 ORDER BY ordinal",
            params![event_id],
            |r| {
                let fields: String = r.get(4)?;
                Ok(StreamInfo {
                    ordinal: r.get::<_, i64>(0)?.max(0) as u64,
                    stream: r.get(1)?,
                    kind: r.get(2)?,
                    source_ref: r.get(3)?,
                    fields: serde_json::from_str(&fields)
                        .unwrap_or(serde_json::Value::String(fields)),
                    page_size: r.get::<_, i64>(5)?.max(0) as u64,
                    total_rows: r.get::<_, Option<i64>>(6)?.map(|n| n.max(0) as u64),
                })
            },
        )?;
        let plan: Vec<String> = event.streams.iter().map(|s| s.stream.clone()).collect();
        let order = self.tx.delivery_order("", false);
        event.deliveries = self.tx.rows(
            &format!(
                "SELECT sink, status, rows, error, generation, updated_at_ms FROM deliveries
                 WHERE event_id = ?1 ORDER BY {order}"
            ),
            params![event_id],
            |r| {
                let generation: u32 = r.get(4)?;
                Ok(DeliveryInfo {
                    sink: r.get(0)?,
                    status: r.get(1)?,
                    rows: r.get::<_, i64>(2)?.max(0) as u64,
                    error: r.get(3)?,
                    generation,
                    updated_at_ms: r.get(5)?,
                    streams: plan
                        .iter()
                        .map(|s| stream_for_generation(s, generation))
                        .collect(),
                })
            },
        )?;
        event.group_batches = self.tx.with(|db| groups::group_batches(db, event_id))?;
        for delivery in &mut event.deliveries {
            // A grouped event has no plan of its own: its delivery goes into a group stream.
            delivery.streams.extend(
                event
                    .group_batches
                    .iter()
                    .filter(|b| b.sink == delivery.sink && b.generation == delivery.generation)
                    .filter_map(|b| b.stream.clone()),
            );
        }
        event.checkpoints = self.tx.rows(
            "SELECT sink, stream, next_seq, complete, rows FROM checkpoints
             WHERE event_id = ?1 ORDER BY sink, stream",
            params![event_id],
            |r| {
                Ok(CheckpointInfo {
                    sink: r.get(0)?,
                    stream: r.get(1)?,
                    next_seq: r.get::<_, i64>(2)?.max(0) as u64,
                    complete: r.get(3)?,
                    rows: r.get::<_, i64>(4)?.max(0) as u64,
                })
            },
        )?;
        Ok(Some(event))
    }

    /// The inbox row of an event, its body parsed, without deliveries, streams or checkpoints.
    fn event_head(&self, event_id: &str) -> Result<Option<EventDetail>, StateError> {
        self.tx.row(
            "SELECT event_id, kind, topic, status, detail, received_at_ms, updated_at_ms, body
                 FROM inbox WHERE event_id = ?1",
            params![event_id],
            |r| {
                let body: Vec<u8> = r.get(7)?;
                Ok(EventDetail {
                    event_id: r.get(0)?,
                    kind: r.get(1)?,
                    topic: r.get(2)?,
                    status: r.get(3)?,
                    detail: r.get(4)?,
                    received_at_ms: r.get(5)?,
                    updated_at_ms: r.get(6)?,
                    body: serde_json::from_slice(&body).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
                    }),
                    deliveries: Vec::new(),
                    streams: Vec::new(),
                    checkpoints: Vec::new(),
                    group_batches: Vec::new(),
                })
            },
        )
    }

    /// Failed deliveries, newest first, optionally of one sink.
    pub fn dead_letters(&self, sink: Option<&str>) -> Result<Vec<DeadLetter>, StateError> {
        let sql = format!(
            "SELECT d.event_id, COALESCE(i.topic, ''), d.sink, d.rows, d.error,
                    d.updated_at_ms, d.generation
             FROM deliveries d LEFT JOIN inbox i ON i.event_id = d.event_id
             WHERE d.status = ?2 AND (CAST(?1 AS TEXT) IS NULL OR d.sink = ?1)
             ORDER BY d.updated_at_ms DESC, {}",
            self.tx.delivery_order("d", true)
        );
        self.tx
            .rows(&sql, params![sink, DeliveryStatus::Failed], |r| {
                Ok(DeadLetter {
                    event_id: r.get(0)?,
                    topic: r.get(1)?,
                    sink: r.get(2)?,
                    rows: r.get::<_, i64>(3)?.max(0) as u64,
                    error: r.get(4)?,
                    failed_at_ms: r.get(5)?,
                    generation: r.get(6)?,
                })
            })
    }
}

fn oldest_pending(db: &mut Db) -> sql::Result<Vec<(String, i64)>> {
    db.query_map(
        "SELECT d.sink, MIN(i.received_at_ms) FROM deliveries d
         JOIN inbox i ON i.event_id = d.event_id
         WHERE d.status = ?1 GROUP BY d.sink",
        params![DeliveryStatus::Pending],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// What the state database says at one moment, for the gauges of `/metrics`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct StateGauges {
    /// Events with status `pending`.
    pub(crate) events_pending: u64,
    /// Every sink that has ever had a delivery.
    pub(crate) sinks: BTreeMap<String, SinkGauges>,
}

/// One sink's share of [`StateGauges`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SinkGauges {
    /// Deliveries with status `failed`.
    pub(crate) dead_letters: u64,
    /// Receipt time (ms since the epoch) of the oldest event with a pending delivery here.
    pub(crate) oldest_pending_ms: Option<i64>,
}

/// How long a scrape waits for a database lock before it gives up.
const SCRAPE_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// The page cache of a scrape's connection, in KiB as `PRAGMA cache_size` takes it (negative).
/// Counting the pending events reads the inbox's status index once; SQLite's default of 2 MiB
/// would be filled by that one pass over a large backlog and then freed, raising the daemon's
/// peak memory with the backlog for nothing, since no page is read twice. The file's pages
/// stay in the kernel's cache either way.
const SCRAPE_CACHE_KIB: i64 = -64;

/// Reads the gauges from the state database at `path`, on a connection of its own (read-only,
/// so a scrape can never change or lock out the daemon's writes), in one read transaction.
/// Blocking: call it from a blocking thread.
pub(crate) fn read_gauges(path: &Path) -> Result<StateGauges, StateError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|conn| conn.busy_timeout(SCRAPE_BUSY_TIMEOUT).map(|()| conn))
    .and_then(|conn| {
        conn.pragma_update(None, "cache_size", SCRAPE_CACHE_KIB)
            .map(|()| conn)
    })
    .map_err(|error| StateError::Sqlite {
        path: path.to_owned(),
        error,
    })?;
    Db::sqlite(conn)
        .read_snapshot(gauges)
        .map_err(|error| StateError::Database {
            at: path.display().to_string(),
            error,
        })
}

/// The gauges, read on `db` (in one snapshot: the caller's).
pub(crate) fn gauges(db: &mut Db) -> sql::Result<StateGauges> {
    let mut gauges = StateGauges {
        events_pending: super::inbox::count_status(db, super::EventStatus::Pending)?,
        sinks: BTreeMap::new(),
    };
    for sink in delivery_sinks(db)? {
        gauges.sinks.insert(sink, SinkGauges::default());
    }
    let dead: Vec<(String, u64)> = db.query_map(
        "SELECT sink, COUNT(*) FROM deliveries WHERE status = ?1 GROUP BY sink",
        params![DeliveryStatus::Failed],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    for (sink, count) in dead {
        gauges.sinks.entry(sink).or_default().dead_letters = count;
    }
    for (sink, received_at_ms) in oldest_pending(db)? {
        gauges.sinks.entry(sink).or_default().oldest_pending_ms = Some(received_at_ms);
    }
    Ok(gauges)
}

/// The distinct sinks of the deliveries table. `SELECT DISTINCT` would read every delivery
/// ever made on each scrape; this hops through the `(status, sink)` index instead, one seek
/// per status and sink, so a scrape costs the same after a million events as after ten.
fn delivery_sinks(db: &mut Db) -> sql::Result<BTreeSet<String>> {
    let mut sinks = BTreeSet::new();
    let mut status = String::new();
    while let Some(found) = db
        .query_row(
            "SELECT status FROM deliveries WHERE status > ?1 ORDER BY status LIMIT 1",
            params![status],
            |r| r.get::<_, String>(0),
        )
        .optional()?
    {
        status = found;
        let mut sink = String::new();
        while let Some(found) = db
            .query_row(
                "SELECT sink FROM deliveries WHERE status = ?1 AND sink > ?2
                 ORDER BY sink LIMIT 1",
                params![status, sink],
                |r| r.get::<_, String>(0),
            )
            .optional()?
        {
            sink = found;
            sinks.insert(sink.clone());
        }
    }
    Ok(sinks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::inbox::insert_pending;
    use crate::state::testing::TestBackend;
    use crate::state::{OperatorDb, StateDb};

    /// Runs `statements` in one transaction; of their arguments, numbers are passed as
    /// integers and `NULL` as a null.
    async fn write(state: &StateDb, statements: Vec<(&'static str, Vec<String>)>) {
        state
            .call(move |db| {
                db.transaction(|db| {
                    for (sql, args) in &statements {
                        let values: Vec<sql::Value<'_>> = args
                            .iter()
                            .map(|a| match a.parse::<i64>() {
                                Ok(n) => sql::Value::Int(n),
                                Err(_) if a == "NULL" => sql::Value::Null,
                                Err(_) => sql::Value::Text(a),
                            })
                            .collect();
                        db.execute(sql, &values)?;
                    }
                    Ok(())
                })
            })
            .await
            .expect("write the test rows");
    }

    fn args(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    const DELIVERY: &str = "INSERT INTO deliveries
        (event_id, sink, status, rows, error, generation, updated_at_ms)
        VALUES (?1, ?2, ?3, 0, NULL, 0, 1)";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_are_listed_newest_first_across_pages_with_a_filter() {
        // Three events per millisecond, so that pages end inside a run of equal times.
        let total = 2 * EVENTS_PAGE + 7;
        for backend in TestBackend::both("report_events") {
            let state = backend.state();
            state
                .call(move |db| {
                    db.transaction(|db| {
                        for i in 0..total {
                            insert_pending(db, &format!("e{i:04}"), "legacy", "t", b"{}", i / 3)?;
                        }
                        Ok(())
                    })
                })
                .await
                .expect("insert events");
            let mut expected: Vec<(i64, String)> =
                (0..total).map(|i| (i / 3, format!("e{i:04}"))).collect();
            expected.sort_by(|a, b| b.cmp(a));
            let expected: Vec<String> = expected
                .into_iter()
                .map(|(_, id)| id)
                .filter(|id| !id.ends_with('0'))
                .collect();
            let operator = OperatorDb::open_location(&backend.location(), true).expect("open");
            let read = |limit: usize| -> Vec<String> {
                operator
                    .read(|s| s.events(None, |e| !e.event_id.ends_with('0'), limit))
                    .expect("list events")
                    .into_iter()
                    .map(|e| e.event_id)
                    .collect()
            };
            assert_eq!(read(usize::MAX), expected, "{backend:?}");
            assert_eq!(read(600), expected[..600], "{backend:?}");
            assert_eq!(read(1), expected[..1], "{backend:?}");
            let failed = operator
                .read(|s| s.events(Some(EventStatus::Failed), |_| true, 10))
                .expect("list failed events");
            assert!(failed.is_empty(), "{backend:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gauges_count_pending_events_dead_letters_and_the_oldest_pending_per_sink() {
        for backend in TestBackend::both("report_gauges") {
            let state = backend.state();
            state
                .call(|db| {
                    insert_pending(db, "e1", "legacy", "t", b"{}", 100)?;
                    insert_pending(db, "e2", "legacy", "t", b"{}", 200)?;
                    insert_pending(db, "e3", "legacy", "t", b"{}", 300)?;
                    crate::state::inbox::set_status(db, "e2", EventStatus::Failed, None, 400)
                })
                .await
                .expect("insert events");
            write(
                &state,
                vec![
                    (DELIVERY, args(&["e1", "a", "pending"])),
                    (DELIVERY, args(&["e3", "a", "pending"])),
                    (DELIVERY, args(&["e2", "b", "failed"])),
                    (DELIVERY, args(&["e3", "b", "done"])),
                    (DELIVERY, args(&["e2", "c", "dropped"])),
                ],
            )
            .await;
            let found = state
                .call(|db| db.read_snapshot(gauges))
                .await
                .expect("read the gauges");
            let sink = |dead_letters, oldest_pending_ms| SinkGauges {
                dead_letters,
                oldest_pending_ms,
            };
            let expected = StateGauges {
                events_pending: 2,
                sinks: BTreeMap::from([
                    ("a".to_owned(), sink(0, Some(100))),
                    ("b".to_owned(), sink(1, None)),
                    ("c".to_owned(), sink(0, None)),
                ]),
            };
            assert_eq!(found, expected, "{backend:?}");
            if let TestBackend::Sqlite(dir) = &backend {
                let scraped = read_gauges(&dir.path().join(StateDb::FILE_NAME)).expect("scrape");
                assert_eq!(scraped, expected, "a scrape reads the same");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_grouped_event_shows_its_batch_and_whether_the_sink_made_it_durable() {
        const MEMBER: &str = "INSERT INTO group_members
            (event_id, sink, generation, grp, window_end_ms, stream, seq, position)
            VALUES ('e1', ?1, 0, 'g', 0, ?2, ?3, ?4)";
        const STREAM: &str = "INSERT INTO group_streams
            (stream, sink, grp, part, window_end_ms, next_seq, formed_seq, events)
            VALUES ('g-s', 'a', 'g', 0, 0, ?1, 3, 10)";
        for backend in TestBackend::both("report_groups") {
            let state = backend.state();
            state
                .call(|db| insert_pending(db, "e1", "platform", "records:created", b"{}", 1))
                .await
                .expect("insert the event");
            write(
                &state,
                vec![
                    (DELIVERY, args(&["e1", "a", "pending"])),
                    (DELIVERY, args(&["e1", "b", "pending"])),
                    (MEMBER, args(&["a", "g-s", "2", "5"])),
                    (MEMBER, args(&["b", "NULL", "NULL", "NULL"])),
                    (STREAM, args(&["3"])),
                ],
            )
            .await;
            let operator = OperatorDb::open_location(&backend.location(), true).expect("open");
            let show = || {
                operator
                    .read(|s| s.event_detail("e1"))
                    .expect("show the event")
                    .expect("a known event")
            };
            let shown = show();
            let batches: Vec<_> = shown
                .group_batches
                .iter()
                .map(|b| {
                    (
                        b.sink.as_str(),
                        b.stream.as_deref(),
                        b.seq,
                        b.position,
                        b.durable,
                    )
                })
                .collect();
            assert_eq!(
                batches,
                [
                    ("a", Some("g-s"), Some(2), Some(5), true),
                    ("b", None, None, None, false)
                ],
                "{backend:?}"
            );
            assert_eq!(shown.deliveries[0].streams, ["g-s"], "{backend:?}");
            assert!(shown.deliveries[1].streams.is_empty(), "{backend:?}");
            state
                .call(|db| db.execute("UPDATE group_streams SET next_seq = 2", &[]))
                .await
                .expect("move the checkpoint back");
            assert!(
                !show().group_batches[0].durable,
                "{backend:?}: batch 2 is durable only once the checkpoint is past it"
            );
        }
    }
}

/// What `flatsync doctor` reports of a PostgreSQL state database.
#[derive(Clone, Debug, Serialize)]
pub struct PostgresHealth {
    /// The role flatsync connects as.
    pub user: String,
    /// The database.
    pub database: String,
    /// `server_version_num`, e.g. 150004.
    pub server_version: i64,
    /// Events in the inbox.
    pub events: u64,
    /// State tables the role cannot read and write (`SELECT, INSERT, UPDATE, DELETE`).
    pub missing_privileges: Vec<String>,
    /// `application_name` (`flatsync/<pid>`) of the session holding the active role, if any.
    pub active_daemon: Option<String>,
}

impl PostgresHealth {
    /// Whether the server ends idle sessions (`idle_session_timeout`, PostgreSQL 14): without
    /// it a paused daemon keeps the active role until its connection dies.
    pub fn ends_idle_sessions(&self) -> bool {
        self.server_version >= 140_000
    }
}

impl Snapshot<'_> {
    /// Whether the state is a PostgreSQL database.
    pub fn is_postgres(&self) -> bool {
        self.tx.backend() == Backend::Postgres
    }

    /// The `application_name` (`flatsync/<pid>@<host>`) of the daemon holding the active role
    /// of a PostgreSQL state; `None` when none does, and always on SQLite (one daemon).
    pub fn active_daemon(&self) -> Result<Option<String>, StateError> {
        if self.tx.backend() != Backend::Postgres {
            return Ok(None);
        }
        self.tx.row(
            "SELECT CAST(a.application_name AS TEXT) FROM pg_locks l
             JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.objid = 7310152 AND l.granted
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            params![],
            |r| r.get::<_, String>(0),
        )
    }

    /// How many events each daemon of a PostgreSQL state has claimed now, by the
    /// `application_name` of its session (`flatsync/<pid>@<host>`); empty on SQLite.
    pub fn claims(&self) -> Result<BTreeMap<String, u64>, StateError> {
        if self.tx.backend() != Backend::Postgres {
            return Ok(BTreeMap::new());
        }
        let rows = self.tx.rows(
            "SELECT CAST(a.application_name AS TEXT), COUNT(*) FROM pg_locks l
             JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.classid = 7310153 AND l.granted
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             GROUP BY a.application_name",
            params![],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)),
        )?;
        Ok(rows.into_iter().collect())
    }

    /// The PostgreSQL state's server, role, privileges and active daemon.
    pub fn postgres_health(&self) -> Result<PostgresHealth, StateError> {
        let (user, database, server_version) = self
            .tx
            .row(
                "SELECT CAST(current_user AS TEXT), CAST(current_database() AS TEXT),
                        CAST(current_setting('server_version_num') AS BIGINT)",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .unwrap_or_default();
        let events = self
            .tx
            .row("SELECT COUNT(*) FROM inbox", params![], |r| {
                r.get::<_, u64>(0)
            })?
            .unwrap_or(0);
        let mut missing_privileges = Vec::new();
        for table in super::schema::TABLES
            .iter()
            .map(|(name, _)| *name)
            .chain(["flatsync_schema"])
        {
            let granted = self
                .tx
                .row(
                    // Each privilege alone: a list is true when any one of them is held.
                    "SELECT CASE WHEN has_table_privilege(?1, 'SELECT')
                                  AND has_table_privilege(?1, 'INSERT')
                                  AND has_table_privilege(?1, 'UPDATE')
                                  AND has_table_privilege(?1, 'DELETE')
                             THEN 1 ELSE 0 END",
                    params![table],
                    |r| r.get::<_, bool>(0),
                )?
                .unwrap_or(false);
            if !granted {
                missing_privileges.push(table.to_owned());
            }
        }
        let active_daemon = self.active_daemon()?;
        Ok(PostgresHealth {
            user,
            database,
            server_version,
            events,
            missing_privileges,
            active_daemon,
        })
    }
}
