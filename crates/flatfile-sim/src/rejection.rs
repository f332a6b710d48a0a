//! [`Rejection`], why the simulator refuses a request: the admin API, the Platform job bodies and
//! the world's operations all refuse through it, and the server answers it in the Platform's
//! error envelope.

use axum::http::StatusCode;

use crate::SimError;

/// A refused operation: HTTP status, the field at fault, and why.
#[derive(Debug)]
pub(crate) struct Rejection {
    pub(crate) status: StatusCode,
    pub(crate) key: Option<String>,
    pub(crate) message: String,
}

impl Rejection {
    pub(crate) fn bad(key: impl Into<String>, message: impl Into<String>) -> Rejection {
        Rejection {
            status: StatusCode::BAD_REQUEST,
            key: Some(key.into()),
            message: message.into(),
        }
    }

    /// A body that is not a JSON object at all: no field to name.
    pub(crate) fn bad_body(message: impl Into<String>) -> Rejection {
        Rejection {
            status: StatusCode::BAD_REQUEST,
            key: None,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(key: impl Into<String>, message: impl Into<String>) -> Rejection {
        Rejection {
            status: StatusCode::NOT_FOUND,
            key: Some(key.into()),
            message: message.into(),
        }
    }

    pub(crate) fn sheet_not_found(sheet_id: &str) -> Rejection {
        Rejection::not_found("sheetId", format!("Sheet {sheet_id} not found"))
    }

    pub(crate) fn job_not_found(job_id: &str) -> Rejection {
        Rejection::not_found("jobId", format!("Job {job_id} not found"))
    }

    pub(crate) fn workbook_not_found(workbook_id: &str) -> Rejection {
        Rejection::not_found("workbookId", format!("Workbook {workbook_id} not found"))
    }

    pub(crate) fn event_not_found(event_id: &str) -> Rejection {
        Rejection::not_found("eventId", format!("Event {event_id} not found"))
    }
}

impl From<Rejection> for SimError {
    fn from(rejection: Rejection) -> SimError {
        SimError::Rejected {
            status: rejection.status.as_u16(),
            field: rejection.key,
            message: rejection.message,
        }
    }
}
