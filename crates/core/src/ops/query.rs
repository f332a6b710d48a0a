//! Read-only views: `flatsync status`, `events list` and `events show`.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{OpsDb, OpsError};
use crate::config::Config;
use crate::pipeline::route::TopicPattern;
use crate::state::{EventStatus, now_ms, stream_for_generation};

/// What `flatsync status --json` prints.
///
/// ```json
/// {
///   "generated_at_ms": 1714564800000,
///   "state_db": "/var/lib/flatsync/state.db",
///   "events": {"pending": 0, "done": 12, "failed": 1, "skipped": 2, "unrouted": 0},
///   "sinks": [{
///     "name": "archive", "configured": true,
///     "pending": 0, "done": 13, "failed": 0, "dropped": 0,
///     "rows_delivered": 15000, "lag_secs": null, "last_error": null,
///     "last_update_ms": 1714564790000
///   }],
///   "routes": [{"index": 0, "topics": ["portalImportSubmitted"], "sinks": ["archive"],
///               "events_pending": 0}],
///   "last_delivery_update_ms": 1714564790000
/// }
/// ```
///
/// `events` always has the five statuses. `sinks` lists every sink that has deliveries, plus
/// the configured ones, by name. `routes` is `null` when no config was read (`--state-dir`).
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    /// When the report was made, ms since the Unix epoch.
    pub generated_at_ms: i64,
    /// The state database read.
    pub state_db: String,
    /// Inbox events by status.
    pub events: BTreeMap<String, u64>,
    /// Per sink.
    pub sinks: Vec<SinkStatus>,
    /// Per configured route, in config order; `None` without a config.
    pub routes: Option<Vec<RouteStatus>>,
    /// The newest change to any delivery (planned, checkpointed into a final state, retried),
    /// ms since the Unix epoch; `None` before the first delivery.
    pub last_delivery_update_ms: Option<i64>,
    /// Per polled environment: its cursor and the events not yet acknowledged to Flatfile.
    pub polling: Vec<PollStatus>,
    /// Uploads whose rows travel in webhook bodies (Portal 2.0 `batch.upload`, a forwarded
    /// flatsync stream) with parts still missing: nothing of them is delivered until the last
    /// part arrives.
    pub incomplete_uploads: Vec<UploadStatus>,
}

/// An upload still waiting for parts, in a [`StatusReport`].
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

/// One sink's share of the work, in a [`StatusReport`].
#[derive(Clone, Debug, Serialize)]
pub struct SinkStatus {
    /// Sink name.
    pub name: String,
    /// Whether the config names it; `None` without a config. Deliveries to sinks no longer
    /// configured stay in the database.
    pub configured: Option<bool>,
    /// Deliveries still to do.
    pub pending: u64,
    /// Deliveries finished.
    pub done: u64,
    /// Dead letters: deliveries that failed for good until retried or dropped.
    pub failed: u64,
    /// Dead letters an operator dropped.
    pub dropped: u64,
    /// Rows the sink made durable: the rows of done deliveries plus the rows already
    /// checkpointed for pending ones.
    pub rows_delivered: u64,
    /// Age in seconds of the oldest event with a pending delivery to this sink; `None` when
    /// nothing is pending.
    pub lag_secs: Option<u64>,
    /// The newest failed delivery.
    pub last_error: Option<LastError>,
    /// The newest change to one of its deliveries, ms since the Unix epoch.
    pub last_update_ms: Option<i64>,
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

/// One configured route, in a [`StatusReport`].
#[derive(Clone, Debug, Serialize)]
pub struct RouteStatus {
    /// Position in the config's `[[routes]]`, from 0.
    pub index: usize,
    /// Topic patterns.
    pub topics: Vec<String>,
    /// Sinks.
    pub sinks: Vec<String>,
    /// Pending inbox events whose topic the route matches.
    pub events_pending: u64,
}

/// Which events `events list` shows.
#[derive(Clone, Debug)]
pub struct EventFilter {
    /// Only events with this status.
    pub status: Option<EventStatus>,
    /// Only events whose topic matches this glob.
    pub topic: Option<TopicPattern>,
    /// At most this many, newest first.
    pub limit: usize,
}

impl Default for EventFilter {
    fn default() -> EventFilter {
        EventFilter {
            status: None,
            topic: None,
            limit: 50,
        }
    }
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
    /// `pending`, `done`, `failed`, `skipped` or `unrouted`.
    pub status: String,
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
    /// `pending`, `done`, `failed` or `dropped`.
    pub status: String,
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
///               "source_ref": "b1", "fields": [], "page_size": 1000}],
///  "checkpoints": [{"sink": "archive", "stream": "legacy-b1", "next_seq": 1,
///                   "complete": true, "rows": 250}]}
/// ```
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
    /// `pending`, `done`, `failed`, `skipped` or `unrouted`.
    pub status: String,
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
}

/// A delivery in an [`EventDetail`].
#[derive(Clone, Debug, Serialize)]
pub struct DeliveryInfo {
    /// Sink name.
    pub sink: String,
    /// `pending`, `done`, `failed` or `dropped`.
    pub status: String,
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

/// The five event statuses, for reports that list every one.
const EVENT_STATUSES: [&str; 5] = ["pending", "done", "failed", "skipped", "unrouted"];

impl OpsDb {
    /// The overview `flatsync status` prints. Routes and the `configured` flags come from
    /// `config` when given.
    pub fn status(&self, config: Option<&Config>) -> Result<StatusReport, OpsError> {
        let err = self.sql_error();
        // One read transaction: every number comes from the same snapshot.
        let tx = self.conn.unchecked_transaction().map_err(&err)?;
        let now = now_ms();

        let mut events: BTreeMap<String, u64> = EVENT_STATUSES
            .iter()
            .map(|s| ((*s).to_owned(), 0))
            .collect();
        {
            let mut stmt = tx
                .prepare("SELECT status, COUNT(*) FROM inbox GROUP BY status")
                .map_err(&err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(&err)?;
            for row in rows {
                let (status, count) = row.map_err(&err)?;
                *events.entry(status).or_default() += count as u64;
            }
        }

        let mut sinks: BTreeMap<String, SinkStatus> = BTreeMap::new();
        let blank = |name: &str| SinkStatus {
            name: name.to_owned(),
            configured: config.map(|c| c.sinks.contains_key(name)),
            pending: 0,
            done: 0,
            failed: 0,
            dropped: 0,
            rows_delivered: 0,
            lag_secs: None,
            last_error: None,
            last_update_ms: None,
        };
        if let Some(config) = config {
            for name in config.sinks.keys() {
                sinks.insert(name.clone(), blank(name));
            }
        }
        {
            let mut stmt = tx
                .prepare(
                    "SELECT sink, status, COUNT(*),
                            SUM(CASE WHEN status = 'done' THEN rows ELSE 0 END),
                            MAX(updated_at_ms)
                     FROM deliveries GROUP BY sink, status",
                )
                .map_err(&err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                })
                .map_err(&err)?;
            for row in rows {
                let (sink, status, count, done_rows, updated) = row.map_err(&err)?;
                let entry = sinks.entry(sink.clone()).or_insert_with(|| blank(&sink));
                let count = count as u64;
                match status.as_str() {
                    "pending" => entry.pending += count,
                    "done" => entry.done += count,
                    "failed" => entry.failed += count,
                    "dropped" => entry.dropped += count,
                    _ => {}
                }
                entry.rows_delivered += done_rows.unwrap_or(0).max(0) as u64;
                entry.last_update_ms = entry.last_update_ms.max(updated);
            }
        }
        // Pending deliveries count the rows already checkpointed in the streams of their
        // current generation; older generations' checkpoints belong to earlier deliveries.
        {
            let mut plan = tx
                .prepare(
                    "SELECT d.event_id, d.sink, d.generation, s.stream
                     FROM deliveries d JOIN streams s ON s.event_id = d.event_id
                     WHERE d.status = 'pending'",
                )
                .map_err(&err)?;
            let mut checkpoint = tx
                .prepare(
                    "SELECT rows FROM checkpoints
                     WHERE event_id = ?1 AND sink = ?2 AND stream = ?3",
                )
                .map_err(&err)?;
            let streams: Vec<(String, String, u32, String)> = plan
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(&err)?
                .collect::<Result<_, _>>()
                .map_err(&err)?;
            for (event_id, sink, generation, stream) in streams {
                let stream = stream_for_generation(&stream, generation);
                let rows: Option<i64> = checkpoint
                    .query_row(params![event_id, sink, stream], |r| r.get(0))
                    .optional()
                    .map_err(&err)?;
                if let Some(entry) = sinks.get_mut(&sink) {
                    entry.rows_delivered += rows.unwrap_or(0).max(0) as u64;
                }
            }
        }
        {
            let mut stmt = tx
                .prepare(
                    "SELECT d.sink, MIN(i.received_at_ms) FROM deliveries d
                     JOIN inbox i ON i.event_id = d.event_id
                     WHERE d.status = 'pending' GROUP BY d.sink",
                )
                .map_err(&err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(&err)?;
            for row in rows {
                let (sink, oldest) = row.map_err(&err)?;
                if let Some(entry) = sinks.get_mut(&sink) {
                    entry.lag_secs = Some((now.saturating_sub(oldest).max(0) / 1_000) as u64);
                }
            }
        }
        {
            let mut stmt = tx
                .prepare(
                    "SELECT event_id, updated_at_ms, COALESCE(error, '') FROM deliveries
                     WHERE sink = ?1 AND status = 'failed'
                     ORDER BY updated_at_ms DESC, rowid DESC LIMIT 1",
                )
                .map_err(&err)?;
            for entry in sinks.values_mut().filter(|s| s.failed > 0) {
                entry.last_error = stmt
                    .query_row([&entry.name], |r| {
                        Ok(LastError {
                            event_id: r.get(0)?,
                            at_ms: r.get(1)?,
                            error: r.get(2)?,
                        })
                    })
                    .optional()
                    .map_err(&err)?;
            }
        }

        let routes = match config {
            None => None,
            Some(config) => {
                let mut stmt = tx
                    .prepare(
                        "SELECT topic, COUNT(*) FROM inbox WHERE status = 'pending' GROUP BY topic",
                    )
                    .map_err(&err)?;
                let pending: Vec<(String, u64)> = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
                    .map_err(&err)?
                    .collect::<Result<_, _>>()
                    .map_err(&err)?;
                Some(
                    config
                        .routes
                        .iter()
                        .enumerate()
                        .map(|(index, route)| RouteStatus {
                            index,
                            topics: route.topics.iter().map(|t| t.as_str().to_owned()).collect(),
                            sinks: route.sinks.clone(),
                            events_pending: pending
                                .iter()
                                .filter(|(topic, _)| route.topics.iter().any(|p| p.matches(topic)))
                                .map(|(_, n)| n)
                                .sum(),
                        })
                        .collect(),
                )
            }
        };
        let last_delivery_update_ms = tx
            .query_row(
                "SELECT MAX(updated_at_ms) FROM deliveries WHERE updated_at_ms > 0",
                [],
                |r| r.get(0),
            )
            .map_err(&err)?;
        // A database from before polling existed has no such tables: nothing polled yet.
        let polling: Vec<PollStatus> = match tx.prepare(
            "SELECT p.environment_id, p.since_ms,
                 (SELECT COUNT(*) FROM event_acks a
                  WHERE a.environment_id = p.environment_id AND a.acked_at_ms IS NULL)
             FROM poll_cursors p ORDER BY p.environment_id",
        ) {
            Ok(mut stmt) => stmt
                .query_map([], |r| {
                    Ok(PollStatus {
                        environment_id: r.get(0)?,
                        cursor_ms: r.get(1)?,
                        unacknowledged: r.get::<_, i64>(2)? as u64,
                    })
                })
                .map_err(&err)?
                .collect::<Result<_, _>>()
                .map_err(&err)?,
            Err(_) => Vec::new(),
        };
        // A database from before uploads existed has no such tables: none waiting.
        let incomplete_uploads: Vec<UploadStatus> = match tx.prepare(
            "SELECT u.upload, u.origin, u.first_received_at_ms,
                 (SELECT COUNT(*) FROM carried_parts p WHERE p.upload = u.upload),
                 (SELECT MAX(p.part_count) FROM carried_parts p WHERE p.upload = u.upload)
             FROM carried_uploads u WHERE u.completed_at_ms IS NULL ORDER BY u.first_received_at_ms",
        ) {
            Ok(mut stmt) => stmt
                .query_map([], |r| {
                    Ok(UploadStatus {
                        upload: r.get(0)?,
                        origin: r.get(1)?,
                        first_received_at_ms: r.get(2)?,
                        parts_received: r.get::<_, i64>(3)? as u64,
                        parts_expected: r.get::<_, Option<i64>>(4)?.map(|n| n as u64),
                    })
                })
                .map_err(&err)?
                .collect::<Result<_, _>>()
                .map_err(&err)?,
            Err(_) => Vec::new(),
        };
        tx.finish().map_err(&err)?;
        Ok(StatusReport {
            generated_at_ms: now,
            state_db: self.path.display().to_string(),
            events,
            sinks: sinks.into_values().collect(),
            routes,
            last_delivery_update_ms,
            polling,
            incomplete_uploads,
        })
    }

    /// Events for `events list`, newest first.
    pub fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, OpsError> {
        let err = self.sql_error();
        let tx = self.conn.unchecked_transaction().map_err(&err)?;
        let mut stmt = tx
            .prepare(
                "SELECT event_id, kind, topic, status, detail, received_at_ms, updated_at_ms
                 FROM inbox WHERE ?1 IS NULL OR status = ?1
                 ORDER BY received_at_ms DESC, event_id DESC",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map([filter.status.map(EventStatus::as_str)], |r| {
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
            })
            .map_err(&err)?;
        let mut events = Vec::new();
        for row in rows {
            let event = row.map_err(&err)?;
            if filter
                .topic
                .as_ref()
                .is_some_and(|p| !p.matches(&event.topic))
            {
                continue;
            }
            events.push(event);
            if events.len() >= filter.limit {
                break;
            }
        }
        drop(stmt);
        let mut deliveries = tx
            .prepare(
                "SELECT sink, status, rows, generation FROM deliveries
                 WHERE event_id = ?1 ORDER BY rowid",
            )
            .map_err(&err)?;
        for event in &mut events {
            event.deliveries = deliveries
                .query_map([&event.event_id], |r| {
                    Ok(DeliverySummary {
                        sink: r.get(0)?,
                        status: r.get(1)?,
                        rows: r.get::<_, i64>(2)?.max(0) as u64,
                        generation: r.get(3)?,
                    })
                })
                .map_err(&err)?
                .collect::<Result<_, _>>()
                .map_err(&err)?;
        }
        drop(deliveries);
        tx.finish().map_err(&err)?;
        Ok(events)
    }

    /// Everything about one event, for `events show`; `None` when it is not in the inbox.
    pub fn show_event(&self, event_id: &str) -> Result<Option<EventDetail>, OpsError> {
        let err = self.sql_error();
        let tx = self.conn.unchecked_transaction().map_err(&err)?;
        let found = tx
            .query_row(
                "SELECT event_id, kind, topic, status, detail, received_at_ms, updated_at_ms, body
                 FROM inbox WHERE event_id = ?1",
                [event_id],
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
                    })
                },
            )
            .optional()
            .map_err(&err)?;
        let Some(mut event) = found else {
            return Ok(None);
        };
        event.streams = tx
            .prepare(
                "SELECT ordinal, stream, kind, source_ref, fields_json, page_size FROM streams
                 WHERE event_id = ?1 ORDER BY ordinal",
            )
            .map_err(&err)?
            .query_map([event_id], |r| {
                let fields: String = r.get(4)?;
                Ok(StreamInfo {
                    ordinal: r.get::<_, i64>(0)?.max(0) as u64,
                    stream: r.get(1)?,
                    kind: r.get(2)?,
                    source_ref: r.get(3)?,
                    fields: serde_json::from_str(&fields)
                        .unwrap_or(serde_json::Value::String(fields)),
                    page_size: r.get::<_, i64>(5)?.max(0) as u64,
                })
            })
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        let plan: Vec<String> = event.streams.iter().map(|s| s.stream.clone()).collect();
        event.deliveries = tx
            .prepare(
                "SELECT sink, status, rows, error, generation, updated_at_ms FROM deliveries
                 WHERE event_id = ?1 ORDER BY rowid",
            )
            .map_err(&err)?
            .query_map([event_id], |r| {
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
            })
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        event.checkpoints = tx
            .prepare(
                "SELECT sink, stream, next_seq, complete, rows FROM checkpoints
                 WHERE event_id = ?1 ORDER BY sink, stream",
            )
            .map_err(&err)?
            .query_map([event_id], |r| {
                Ok(CheckpointInfo {
                    sink: r.get(0)?,
                    stream: r.get(1)?,
                    next_seq: r.get::<_, i64>(2)?.max(0) as u64,
                    complete: r.get(3)?,
                    rows: r.get::<_, i64>(4)?.max(0) as u64,
                })
            })
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        tx.finish().map_err(&err)?;
        Ok(Some(event))
    }
}
