//! Changes an operator makes: `flatsync replay` and `flatsync dead-letter list|retry|drop`.

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;

use super::{OpsDb, OpsError};
use crate::config::Config;
use crate::state::now_ms;

/// Which events `flatsync replay` re-delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplaySelector {
    /// One event, by id.
    Event(String),
    /// Every event received at or after this time (ms since the Unix epoch). Pending events
    /// are being worked on and are skipped.
    Since(i64),
}

/// What a replay queued, as `flatsync replay --json` prints it.
///
/// ```json
/// {"queued": [{"event_id": "evt-1", "sink": "archive", "generation": 1, "added": false}],
///  "replanned": ["evt-2"],
///  "skipped": [{"event_id": "evt-3", "sink": null, "reason": "pending: ..."}]}
/// ```
///
/// `queued` are deliveries set back to pending into fresh streams (`generation` is the new
/// one; `added` marks a sink the event was not routed to before). `replanned` are events that
/// were never planned and go back to pending as a whole, to be routed with the current config.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplayReport {
    /// Deliveries queued.
    pub queued: Vec<QueuedDelivery>,
    /// Events queued to be planned again.
    pub replanned: Vec<String>,
    /// Events or deliveries left as they were, with the reason.
    pub skipped: Vec<SkippedItem>,
}

/// A delivery a replay queued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueuedDelivery {
    /// The event.
    pub event_id: String,
    /// The sink.
    pub sink: String,
    /// The generation it now delivers (streams `<stream>-r<generation>` from 1 on).
    pub generation: u32,
    /// Whether the sink was added to the event by this replay.
    pub added: bool,
}

/// Something a command left alone, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedItem {
    /// The event.
    pub event_id: String,
    /// The sink, when the reason concerns one delivery.
    pub sink: Option<String>,
    /// Why.
    pub reason: String,
}

/// Which dead letters `dead-letter retry` and `dead-letter drop` act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadLetterSelector {
    /// The failed deliveries of one event, or only the one to `sink`.
    Event {
        /// The event.
        event_id: String,
        /// Only this sink's delivery.
        sink: Option<String>,
    },
    /// Every failed delivery, or every one to `sink`.
    All {
        /// Only this sink's deliveries.
        sink: Option<String>,
    },
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

/// What `dead-letter retry` or `drop` changed, as `--json` prints it.
///
/// ```json
/// {"changed": [{"event_id": "evt-1", "sink": "bomb"}],
///  "events": [{"event_id": "evt-1", "status": "pending", "detail": null}],
///  "skipped": []}
/// ```
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeadLetterReport {
    /// Deliveries retried or dropped.
    pub changed: Vec<DeliveryRef>,
    /// The status each affected event has now.
    pub events: Vec<EventOutcome>,
    /// Dead letters left alone, with the reason.
    pub skipped: Vec<SkippedItem>,
}

/// One delivery, by event and sink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeliveryRef {
    /// The event.
    pub event_id: String,
    /// The sink.
    pub sink: String,
}

/// An event's status after a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventOutcome {
    /// The event.
    pub event_id: String,
    /// Its status now.
    pub status: String,
    /// Its detail now.
    pub detail: Option<String>,
}

const BEING_PROCESSED: &str =
    "the event is pending: the daemon is working on it; try again once it has finished";

impl OpsDb {
    fn write_transaction(&mut self) -> Result<Transaction<'_>, OpsError> {
        let path = self.path.clone();
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|error| OpsError::Sqlite { path, error })
    }

    /// Re-delivers events in full, in one transaction; see the module documentation of
    /// [`crate::ops`] for how the daemon picks them up.
    ///
    /// For each chosen delivery: `generation + 1`, `pending`, no error, 0 rows. The old
    /// generation's checkpoints stay: they name the old streams, and the new generation
    /// delivers into fresh streams (`<stream>-r<generation>`), which sinks take in full.
    /// `sink` restricts the replay to one sink; when the event was not routed to it, a delivery
    /// for it is added (generation 0). An event that was never planned (skipped, unrouted, or
    /// failed before planning) only goes back to pending, and the daemon routes it again with
    /// the config it runs then; `sink` cannot apply to it. Every replayed event's inbox row
    /// becomes `pending` with no detail.
    ///
    /// With a `config`, `sink` must be one of its sinks.
    pub fn replay(
        &mut self,
        selector: &ReplaySelector,
        sink: Option<&str>,
        config: Option<&Config>,
    ) -> Result<ReplayReport, OpsError> {
        if let (Some(sink), Some(config)) = (sink, config)
            && !config.sinks.contains_key(sink)
        {
            return Err(OpsError::Refused(format!(
                "no sink is named `{sink}` in {}",
                config.path.display()
            )));
        }
        let path = self.path.clone();
        let err = |error| OpsError::Sqlite {
            path: path.clone(),
            error,
        };
        let tx = self.write_transaction()?;
        let now = now_ms();
        let single = matches!(selector, ReplaySelector::Event(_));
        let events: Vec<(String, String)> = match selector {
            ReplaySelector::Event(id) => {
                let status: Option<String> = tx
                    .query_row("SELECT status FROM inbox WHERE event_id = ?1", [id], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(err)?;
                match status {
                    Some(status) => vec![(id.clone(), status)],
                    None => return Err(OpsError::UnknownEvent(id.clone())),
                }
            }
            ReplaySelector::Since(since_ms) => tx
                .prepare(
                    "SELECT event_id, status FROM inbox WHERE received_at_ms >= ?1
                     ORDER BY received_at_ms, event_id",
                )
                .map_err(err)?
                .query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(err)?
                .collect::<Result<_, _>>()
                .map_err(err)?,
        };

        let mut report = ReplayReport::default();
        for (event_id, status) in events {
            if status == "pending" {
                if single {
                    return Err(OpsError::Refused(format!(
                        "event `{event_id}`: {BEING_PROCESSED}"
                    )));
                }
                report.skipped.push(SkippedItem {
                    event_id,
                    sink: None,
                    reason: BEING_PROCESSED.to_owned(),
                });
                continue;
            }
            let deliveries: Vec<(String, u32)> = tx
                .prepare_cached(
                    "SELECT sink, generation FROM deliveries WHERE event_id = ?1 ORDER BY rowid",
                )
                .map_err(err)?
                .query_map([&event_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(err)?
                .collect::<Result<_, _>>()
                .map_err(err)?;
            if deliveries.is_empty() {
                if let Some(sink) = sink {
                    let reason = format!(
                        "never planned (it is {status}); replay it without --sink and the daemon \
                         routes it with the current config"
                    );
                    if single {
                        return Err(OpsError::Refused(format!(
                            "event `{event_id}` was {reason}"
                        )));
                    }
                    report.skipped.push(SkippedItem {
                        event_id,
                        sink: Some(sink.to_owned()),
                        reason,
                    });
                    continue;
                }
                set_event_pending(&tx, &event_id, now).map_err(err)?;
                report.replanned.push(event_id);
                continue;
            }
            let chosen: Vec<&(String, u32)> = deliveries
                .iter()
                .filter(|(name, _)| sink.is_none_or(|s| s == name))
                .collect();
            match (chosen.is_empty(), sink) {
                (true, Some(sink)) => {
                    tx.execute(
                        "INSERT INTO deliveries
                         (event_id, sink, status, rows, error, generation, updated_at_ms)
                         VALUES (?1, ?2, 'pending', 0, NULL, 0, ?3)",
                        params![event_id, sink, now],
                    )
                    .map_err(err)?;
                    report.queued.push(QueuedDelivery {
                        event_id: event_id.clone(),
                        sink: sink.to_owned(),
                        generation: 0,
                        added: true,
                    });
                }
                _ => {
                    for (name, generation) in chosen {
                        tx.execute(
                            "UPDATE deliveries SET generation = generation + 1, status = 'pending',
                                    error = NULL, rows = 0, updated_at_ms = ?3
                             WHERE event_id = ?1 AND sink = ?2",
                            params![event_id, name, now],
                        )
                        .map_err(err)?;
                        report.queued.push(QueuedDelivery {
                            event_id: event_id.clone(),
                            sink: name.clone(),
                            generation: generation + 1,
                            added: false,
                        });
                    }
                }
            }
            set_event_pending(&tx, &event_id, now).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(report)
    }

    /// Failed deliveries, newest first, optionally of one sink.
    pub fn dead_letters(&self, sink: Option<&str>) -> Result<Vec<DeadLetter>, OpsError> {
        let err = self.sql_error();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT d.event_id, COALESCE(i.topic, ''), d.sink, d.rows, d.error,
                        d.updated_at_ms, d.generation
                 FROM deliveries d LEFT JOIN inbox i ON i.event_id = d.event_id
                 WHERE d.status = 'failed' AND (?1 IS NULL OR d.sink = ?1)
                 ORDER BY d.updated_at_ms DESC, d.rowid DESC",
            )
            .map_err(&err)?;
        let letters = stmt
            .query_map([sink], |r| {
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
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        Ok(letters)
    }

    /// Sets the selected dead letters back to pending, in one transaction: the error is
    /// cleared and the generation kept, so the daemon resumes each from its checkpoint and
    /// sends nothing the sink already made durable. Each affected event becomes pending.
    pub fn retry_dead_letters(
        &mut self,
        selector: &DeadLetterSelector,
    ) -> Result<DeadLetterReport, OpsError> {
        self.change_dead_letters(selector, Change::Retry)
    }

    /// Marks the selected dead letters `dropped`, in one transaction: kept for the record and
    /// shown by `status`, but never delivered. Each affected event gets its final status
    /// again: `failed` while another delivery failed, `pending` while one is pending, else
    /// `done` with a detail naming the sinks whose dead letters were dropped.
    pub fn drop_dead_letters(
        &mut self,
        selector: &DeadLetterSelector,
    ) -> Result<DeadLetterReport, OpsError> {
        self.change_dead_letters(selector, Change::Drop)
    }

    fn change_dead_letters(
        &mut self,
        selector: &DeadLetterSelector,
        change: Change,
    ) -> Result<DeadLetterReport, OpsError> {
        let path = self.path.clone();
        let err = |error| OpsError::Sqlite {
            path: path.clone(),
            error,
        };
        let tx = self.write_transaction()?;
        let now = now_ms();
        // (event, sink, event status), oldest failure first.
        let selected: Vec<(String, String, String)> = {
            let (event_id, sink) = match selector {
                DeadLetterSelector::Event { event_id, sink } => (Some(event_id), sink.as_ref()),
                DeadLetterSelector::All { sink } => (None, sink.as_ref()),
            };
            if let Some(event_id) = event_id {
                let known: bool = tx
                    .query_row(
                        "SELECT EXISTS(SELECT 1 FROM inbox WHERE event_id = ?1)",
                        [event_id],
                        |r| r.get(0),
                    )
                    .map_err(err)?;
                if !known {
                    return Err(OpsError::UnknownEvent(event_id.clone()));
                }
            }
            tx.prepare(
                "SELECT d.event_id, d.sink, COALESCE(i.status, '')
                 FROM deliveries d LEFT JOIN inbox i ON i.event_id = d.event_id
                 WHERE d.status = 'failed' AND (?1 IS NULL OR d.event_id = ?1)
                   AND (?2 IS NULL OR d.sink = ?2)
                 ORDER BY d.updated_at_ms, d.rowid",
            )
            .map_err(err)?
            .query_map(params![event_id, sink], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(err)?
            .collect::<Result<_, _>>()
            .map_err(err)?
        };
        if let DeadLetterSelector::Event { event_id, sink } = selector {
            if selected.is_empty() {
                return Err(OpsError::Refused(match sink {
                    Some(sink) => {
                        format!("event `{event_id}` has no dead letter for sink `{sink}`")
                    }
                    None => format!("event `{event_id}` has no dead letter"),
                }));
            }
            if selected.iter().any(|(_, _, status)| status == "pending") {
                return Err(OpsError::Refused(format!(
                    "event `{event_id}`: {BEING_PROCESSED}"
                )));
            }
        }

        let mut report = DeadLetterReport::default();
        let mut touched: Vec<String> = Vec::new();
        for (event_id, sink, status) in selected {
            if status == "pending" {
                report.skipped.push(SkippedItem {
                    event_id,
                    sink: Some(sink),
                    reason: BEING_PROCESSED.to_owned(),
                });
                continue;
            }
            let new_status = match change {
                Change::Retry => "pending",
                Change::Drop => "dropped",
            };
            tx.execute(
                "UPDATE deliveries SET status = ?3, updated_at_ms = ?4,
                        error = CASE WHEN ?3 = 'pending' THEN NULL ELSE error END
                 WHERE event_id = ?1 AND sink = ?2 AND status = 'failed'",
                params![event_id, sink, new_status, now],
            )
            .map_err(err)?;
            if !touched.contains(&event_id) {
                touched.push(event_id.clone());
            }
            report.changed.push(DeliveryRef { event_id, sink });
        }
        for event_id in touched {
            let outcome = match change {
                Change::Retry => {
                    set_event_pending(&tx, &event_id, now).map_err(err)?;
                    EventOutcome {
                        event_id,
                        status: "pending".to_owned(),
                        detail: None,
                    }
                }
                Change::Drop => settle_event(&tx, &event_id, now).map_err(err)?,
            };
            report.events.push(outcome);
        }
        tx.commit().map_err(err)?;
        Ok(report)
    }
}

#[derive(Clone, Copy)]
enum Change {
    Retry,
    Drop,
}

fn set_event_pending(tx: &Transaction<'_>, event_id: &str, now: i64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE inbox SET status = 'pending', detail = NULL, updated_at_ms = ?2
         WHERE event_id = ?1",
        params![event_id, now],
    )?;
    Ok(())
}

/// Works out an event's status from its deliveries after dead letters were dropped, with a
/// detail in the pipeline's words.
fn settle_event(tx: &Transaction<'_>, event_id: &str, now: i64) -> rusqlite::Result<EventOutcome> {
    let deliveries: Vec<(String, String, Option<String>)> = tx
        .prepare_cached(
            "SELECT sink, status, error FROM deliveries WHERE event_id = ?1 ORDER BY sink",
        )?
        .query_map([event_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let named = |wanted: &str| -> Vec<&(String, String, Option<String>)> {
        deliveries.iter().filter(|d| d.1 == wanted).collect()
    };
    let (status, detail) = if !named("failed").is_empty() {
        let detail = named("failed")
            .iter()
            .map(|(sink, _, error)| format!("sink `{sink}`: {}", error.as_deref().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("; ");
        ("failed", Some(detail))
    } else if !named("pending").is_empty() {
        ("pending", None)
    } else {
        let dropped = named("dropped")
            .iter()
            .map(|(sink, _, _)| format!("`{sink}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let detail =
            (!dropped.is_empty()).then(|| format!("dead letters dropped for sink(s) {dropped}"));
        ("done", detail)
    };
    tx.execute(
        "UPDATE inbox SET status = ?2, detail = ?3, updated_at_ms = ?4 WHERE event_id = ?1",
        params![event_id, status, detail, now],
    )?;
    Ok(EventOutcome {
        event_id: event_id.to_owned(),
        status: status.to_owned(),
        detail,
    })
}
