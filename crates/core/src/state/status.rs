//! The status columns as types: [`EventStatus`] (`inbox.status`) and [`DeliveryStatus`]
//! (`deliveries.status`). Their text exists only here, where they are stored and read, and in
//! the JSON of the operator commands, which serializes them as the same text.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// Where an event stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
    /// Every status, in the order reports list them.
    pub const ALL: [EventStatus; 5] = [
        EventStatus::Pending,
        EventStatus::Done,
        EventStatus::Failed,
        EventStatus::Skipped,
        EventStatus::Unrouted,
    ];

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

    /// The status named `text` (as stored, and as `--status` takes it).
    pub fn parse(text: &str) -> Option<EventStatus> {
        EventStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the event needs no more work.
    pub fn is_final(self) -> bool {
        self != EventStatus::Pending
    }
}

/// Where a sink's share of an event stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeliveryStatus {
    /// Still to do (planned, retried or replayed).
    Pending,
    /// The sink has every row.
    Done,
    /// Failed for good: a dead letter until retried or dropped.
    Failed,
    /// A dead letter an operator dropped: kept for the record, never delivered.
    Dropped,
}

impl DeliveryStatus {
    /// Every status.
    pub const ALL: [DeliveryStatus; 4] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Done,
        DeliveryStatus::Failed,
        DeliveryStatus::Dropped,
    ];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Done => "done",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Dropped => "dropped",
        }
    }

    /// The status named `text`.
    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

macro_rules! stored_as_text {
    ($status:ty, $unknown:expr) => {
        impl serde::Serialize for $status {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl std::fmt::Display for $status {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ToSql for $status {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $status {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let text = value.as_str()?;
                <$status>::parse(text).map_or_else(|| $unknown(text), Ok)
            }
        }
    };
}

// An inbox status this build does not know is work not finished: the event is looked at
// again rather than forgotten.
stored_as_text!(EventStatus, |_| Ok(EventStatus::Pending));
stored_as_text!(DeliveryStatus, |text: &str| Err(FromSqlError::Other(
    format!("unknown delivery status `{text}`").into()
)));
