//! Changes an operator makes: `flatsync replay` and `flatsync dead-letter list|retry|drop`.

use serde::Serialize;

use super::{DeadLetter, OpsDb, OpsError};
use crate::config::Config;
use crate::state::repair::{Change as StateChange, DeliveryState, FailedDelivery};
use crate::state::{DeliveryStatus, EventStatus, StateError, now_ms};

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
    pub status: EventStatus,
    /// Its detail now.
    pub detail: Option<String>,
}

const BEING_PROCESSED: &str =
    "the event is pending: the daemon is working on it; try again once it has finished";

impl OpsDb {
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
        self.db.change(|tx| {
            let now = now_ms();
            let single = matches!(selector, ReplaySelector::Event(_));
            let events = match selector {
                ReplaySelector::Event(id) => match tx.event_status(id)? {
                    Some(status) => vec![(id.clone(), status)],
                    None => return Err(OpsError::UnknownEvent(id.clone())),
                },
                ReplaySelector::Since(since_ms) => tx.events_since(*since_ms)?,
            };
            let mut report = ReplayReport::default();
            for (event_id, status) in events {
                match replay_event(tx, &event_id, status, sink, now, &mut report)? {
                    Ok(()) => {}
                    Err(skipped) if single => {
                        return Err(OpsError::Refused(format!(
                            "event `{event_id}`{}",
                            skipped.refusal
                        )));
                    }
                    Err(skipped) => report.skipped.push(skipped.item),
                }
            }
            Ok(report)
        })
    }

    /// Failed deliveries, newest first, optionally of one sink.
    pub fn dead_letters(&self, sink: Option<&str>) -> Result<Vec<DeadLetter>, OpsError> {
        Ok(self.db.read(|snapshot| snapshot.dead_letters(sink))?)
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
        self.db.change(|tx| {
            let now = now_ms();
            let selected = select_dead_letters(tx, selector)?;
            let mut report = DeadLetterReport::default();
            let mut touched: Vec<String> = Vec::new();
            for letter in selected {
                if letter.event_status == Some(EventStatus::Pending) {
                    report.skipped.push(SkippedItem {
                        event_id: letter.event_id,
                        sink: Some(letter.sink),
                        reason: BEING_PROCESSED.to_owned(),
                    });
                    continue;
                }
                let new_status = match change {
                    Change::Retry => DeliveryStatus::Pending,
                    Change::Drop => DeliveryStatus::Dropped,
                };
                tx.set_dead_letter(&letter.event_id, &letter.sink, new_status, now)?;
                if !touched.contains(&letter.event_id) {
                    touched.push(letter.event_id.clone());
                }
                report.changed.push(DeliveryRef {
                    event_id: letter.event_id,
                    sink: letter.sink,
                });
            }
            for event_id in touched {
                let outcome = match change {
                    Change::Retry => {
                        tx.set_event_status(&event_id, EventStatus::Pending, None, now)?;
                        EventOutcome {
                            event_id,
                            status: EventStatus::Pending,
                            detail: None,
                        }
                    }
                    Change::Drop => settle_event(tx, &event_id, now)?,
                };
                report.events.push(outcome);
            }
            Ok(report)
        })
    }
}

#[derive(Clone, Copy)]
enum Change {
    Retry,
    Drop,
}

/// Why a replay left an event alone: the item for a `--since` report, and the rest of the
/// sentence refusing a replay of that one event.
struct NotReplayed {
    item: SkippedItem,
    refusal: String,
}

/// Queues one event of a replay; `Err` when it is left alone.
fn replay_event(
    tx: &StateChange<'_>,
    event_id: &str,
    status: EventStatus,
    sink: Option<&str>,
    now: i64,
    report: &mut ReplayReport,
) -> Result<Result<(), NotReplayed>, StateError> {
    if status == EventStatus::Pending {
        return Ok(Err(NotReplayed {
            item: SkippedItem {
                event_id: event_id.to_owned(),
                sink: None,
                reason: BEING_PROCESSED.to_owned(),
            },
            refusal: format!(": {BEING_PROCESSED}"),
        }));
    }
    let deliveries = tx.deliveries(event_id)?;
    if deliveries.is_empty() {
        if let Some(sink) = sink {
            let reason = format!(
                "never planned (it is {status}); replay it without --sink and the daemon \
                 routes it with the current config"
            );
            return Ok(Err(NotReplayed {
                item: SkippedItem {
                    event_id: event_id.to_owned(),
                    sink: Some(sink.to_owned()),
                    reason: reason.clone(),
                },
                refusal: format!(" was {reason}"),
            }));
        }
        tx.set_event_status(event_id, EventStatus::Pending, None, now)?;
        report.replanned.push(event_id.to_owned());
        return Ok(Ok(()));
    }
    let chosen: Vec<&DeliveryState> = deliveries
        .iter()
        .filter(|d| sink.is_none_or(|s| s == d.sink))
        .collect();
    match (chosen.is_empty(), sink) {
        (true, Some(sink)) => {
            tx.add_delivery(event_id, sink, now)?;
            report.queued.push(QueuedDelivery {
                event_id: event_id.to_owned(),
                sink: sink.to_owned(),
                generation: 0,
                added: true,
            });
        }
        _ => {
            for delivery in chosen {
                tx.next_generation(event_id, &delivery.sink, now)?;
                report.queued.push(QueuedDelivery {
                    event_id: event_id.to_owned(),
                    sink: delivery.sink.clone(),
                    generation: delivery.generation + 1,
                    added: false,
                });
            }
        }
    }
    tx.set_event_status(event_id, EventStatus::Pending, None, now)?;
    Ok(Ok(()))
}

/// The dead letters a selector names, oldest failure first; a selector naming one event is
/// refused when the event is unknown, has no such dead letter, or is being worked on.
fn select_dead_letters(
    tx: &StateChange<'_>,
    selector: &DeadLetterSelector,
) -> Result<Vec<FailedDelivery>, OpsError> {
    let (event_id, sink) = match selector {
        DeadLetterSelector::Event { event_id, sink } => (Some(event_id), sink.as_deref()),
        DeadLetterSelector::All { sink } => (None, sink.as_deref()),
    };
    if let Some(event_id) = event_id
        && !tx.event_exists(event_id)?
    {
        return Err(OpsError::UnknownEvent(event_id.clone()));
    }
    let selected = tx.failed_deliveries(event_id.map(String::as_str), sink)?;
    if let Some(event_id) = event_id {
        if selected.is_empty() {
            return Err(OpsError::Refused(match sink {
                Some(sink) => format!("event `{event_id}` has no dead letter for sink `{sink}`"),
                None => format!("event `{event_id}` has no dead letter"),
            }));
        }
        if selected
            .iter()
            .any(|d| d.event_status == Some(EventStatus::Pending))
        {
            return Err(OpsError::Refused(format!(
                "event `{event_id}`: {BEING_PROCESSED}"
            )));
        }
    }
    Ok(selected)
}

/// Works out an event's status from its deliveries after dead letters were dropped, with a
/// detail in the pipeline's words.
fn settle_event(
    tx: &StateChange<'_>,
    event_id: &str,
    now: i64,
) -> Result<EventOutcome, StateError> {
    let deliveries = tx.deliveries_by_sink(event_id)?;
    let named = |wanted: DeliveryStatus| -> Vec<&DeliveryState> {
        deliveries.iter().filter(|d| d.status == wanted).collect()
    };
    let (status, detail) = if !named(DeliveryStatus::Failed).is_empty() {
        let detail = named(DeliveryStatus::Failed)
            .iter()
            .map(|d| format!("sink `{}`: {}", d.sink, d.error.as_deref().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("; ");
        (EventStatus::Failed, Some(detail))
    } else if !named(DeliveryStatus::Pending).is_empty() {
        (EventStatus::Pending, None)
    } else {
        let dropped = named(DeliveryStatus::Dropped)
            .iter()
            .map(|d| format!("`{}`", d.sink))
            .collect::<Vec<_>>()
            .join(", ");
        let detail =
            (!dropped.is_empty()).then(|| format!("dead letters dropped for sink(s) {dropped}"));
        (EventStatus::Done, detail)
    };
    tx.set_event_status(event_id, status, detail.as_deref(), now)?;
    Ok(EventOutcome {
        event_id: event_id.to_owned(),
        status,
        detail,
    })
}
