//! What the operator commands change (`flatsync replay`, `dead-letter retry|drop`): typed
//! reads and writes on one write transaction ([`Change`], from
//! [`super::OperatorDb::change`]). The decisions (what to replay, which status an event ends
//! with) are the commands' own, in `crate::ops`; this holds only how they are stored.

use super::sql::{DbError, params};
use super::tx::Tx;
use super::{DeliveryStatus, EventStatus, StateError, inbox};

/// A delivery as a replay or a dead-letter change reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryState {
    /// Sink name.
    pub sink: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Replays so far.
    pub generation: u32,
    /// Last error, for failed deliveries.
    pub error: Option<String>,
}

/// A dead letter selected for a change, with its event's status (`None` when the event is
/// not in the inbox).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedDelivery {
    /// The event.
    pub event_id: String,
    /// The sink.
    pub sink: String,
    /// The event's status.
    pub event_status: Option<EventStatus>,
}

/// One write transaction of an operator command.
#[derive(Debug)]
pub struct Change<'a> {
    pub(super) tx: Tx<'a>,
}

impl<'a> Change<'a> {
    pub(super) fn new(tx: Tx<'a>) -> Change<'a> {
        Change { tx }
    }

    /// An event's status; `None` when it is not in the inbox.
    pub fn event_status(&self, event_id: &str) -> Result<Option<EventStatus>, StateError> {
        self.tx.row(
            "SELECT status FROM inbox WHERE event_id = ?1",
            params![event_id],
            |r| r.get(0),
        )
    }

    /// Events received at or after `since_ms`, oldest first, with their status.
    pub fn events_since(&self, since_ms: i64) -> Result<Vec<(String, EventStatus)>, StateError> {
        self.tx.rows(
            "SELECT event_id, status FROM inbox WHERE received_at_ms >= ?1
             ORDER BY received_at_ms, event_id",
            params![since_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// An event's deliveries in the order they were planned.
    pub fn deliveries(&self, event_id: &str) -> Result<Vec<DeliveryState>, StateError> {
        self.delivery_rows(event_id, &self.tx.delivery_order("", false))
    }

    /// An event's deliveries by sink name.
    pub fn deliveries_by_sink(&self, event_id: &str) -> Result<Vec<DeliveryState>, StateError> {
        self.delivery_rows(event_id, "sink")
    }

    fn delivery_rows(&self, event_id: &str, order: &str) -> Result<Vec<DeliveryState>, StateError> {
        self.tx.rows(
            &format!(
                "SELECT sink, status, generation, error FROM deliveries WHERE event_id = ?1
                 ORDER BY {order}"
            ),
            params![event_id],
            |r| {
                Ok(DeliveryState {
                    sink: r.get(0)?,
                    status: r.get(1)?,
                    generation: r.get(2)?,
                    error: r.get(3)?,
                })
            },
        )
    }

    /// Routes an event to one more sink: a pending delivery of generation 0.
    pub fn add_delivery(&self, event_id: &str, sink: &str, now: i64) -> Result<(), StateError> {
        self.tx.execute(
            "INSERT INTO deliveries
             (event_id, sink, status, rows, error, generation, updated_at_ms)
             VALUES (?1, ?2, ?3, 0, NULL, 0, ?4)",
            params![event_id, sink, DeliveryStatus::Pending, now],
        )
    }

    /// Sets a delivery back to pending in its next generation, with no error and 0 rows.
    pub fn next_generation(&self, event_id: &str, sink: &str, now: i64) -> Result<(), StateError> {
        self.tx.execute(
            "UPDATE deliveries SET generation = generation + 1, status = ?3,
                    error = NULL, rows = 0, updated_at_ms = ?4
             WHERE event_id = ?1 AND sink = ?2",
            params![event_id, sink, DeliveryStatus::Pending, now],
        )
    }

    /// Sets an event's status and detail.
    pub fn set_event_status(
        &self,
        event_id: &str,
        status: EventStatus,
        detail: Option<&str>,
        now: i64,
    ) -> Result<(), StateError> {
        self.tx
            .with(|db| inbox::set_status(db, event_id, status, detail, now))
    }

    /// Whether the inbox holds the event.
    pub fn event_exists(&self, event_id: &str) -> Result<bool, StateError> {
        self.tx
            .row(
                "SELECT 1 FROM inbox WHERE event_id = ?1",
                params![event_id],
                |_| Ok(()),
            )
            .map(|found| found.is_some())
    }

    /// Failed deliveries, of one event and one sink when given, oldest failure first.
    pub fn failed_deliveries(
        &self,
        event_id: Option<&str>,
        sink: Option<&str>,
    ) -> Result<Vec<FailedDelivery>, StateError> {
        let sql = format!(
            "SELECT d.event_id, d.sink, i.status
             FROM deliveries d LEFT JOIN inbox i ON i.event_id = d.event_id
             WHERE d.status = ?3 AND (CAST(?1 AS TEXT) IS NULL OR d.event_id = ?1)
               AND (CAST(?2 AS TEXT) IS NULL OR d.sink = ?2)
             ORDER BY d.updated_at_ms, {}",
            self.tx.delivery_order("d", false)
        );
        self.tx
            .rows(&sql, params![event_id, sink, DeliveryStatus::Failed], |r| {
                Ok(FailedDelivery {
                    event_id: r.get(0)?,
                    sink: r.get(1)?,
                    event_status: match r.get::<_, Option<String>>(2)? {
                        // The event is not in the inbox (a LEFT JOIN found no row).
                        None => None,
                        Some(text) => Some(EventStatus::parse(&text).ok_or_else(|| {
                            DbError::column(2, format!("unknown event status `{text}`"))
                        })?),
                    },
                })
            })
    }

    /// Moves a failed delivery to `status`; its error is cleared when it becomes pending.
    pub fn set_dead_letter(
        &self,
        event_id: &str,
        sink: &str,
        status: DeliveryStatus,
        now: i64,
    ) -> Result<(), StateError> {
        self.tx.execute(
            "UPDATE deliveries SET status = ?3, updated_at_ms = ?4,
                    error = CASE WHEN CAST(?3 AS TEXT) = CAST(?5 AS TEXT) THEN NULL ELSE error END
             WHERE event_id = ?1 AND sink = ?2 AND status = ?6",
            params![
                event_id,
                sink,
                status,
                now,
                DeliveryStatus::Pending,
                DeliveryStatus::Failed
            ],
        )
    }
}
