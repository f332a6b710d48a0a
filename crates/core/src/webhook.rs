//! The webhook source: an HTTP endpoint that accepts Flatfile notifications and commits them to
//! the inbox before answering 2xx.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use flatsync_flatfile::{CarriedPart, IncomingEvent, Secret, WebhookBodyError, parse_webhook_body};
use serde_json::json;
use tokio::sync::mpsc;

use crate::carried::PartOutcome;
use crate::health::Health;
use crate::state::{StateDb, now_ms};

pub(crate) struct WebhookState {
    pub(crate) db: StateDb,
    pub(crate) token: Option<Secret>,
    pub(crate) max_body_bytes: usize,
    pub(crate) accepted: mpsc::UnboundedSender<String>,
    pub(crate) health: Arc<Health>,
}

/// Seconds a sender is asked to wait before retrying while the daemon stops or cannot store.
const RETRY_AFTER_SECS: &str = "10";

fn unavailable(error: &str) -> Response {
    let mut response = reject(StatusCode::SERVICE_UNAVAILABLE, error, json!({}));
    response.headers_mut().insert(
        header::RETRY_AFTER,
        RETRY_AFTER_SECS.parse().expect("static header"),
    );
    response
}

pub(crate) fn router(path: &str, state: Arc<WebhookState>) -> Router {
    Router::new().route(path, post(receive)).with_state(state)
}

fn reject(status: StatusCode, error: &str, extra: serde_json::Value) -> Response {
    let mut body = json!({ "error": error });
    if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    tracing::warn!(status = status.as_u16(), error, "Webhook rejected");
    (status, axum::Json(body)).into_response()
}

/// Compares without an early exit, so the time taken does not reveal how much of a guessed
/// token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn receive(
    State(state): State<Arc<WebhookState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if state.health.is_draining() {
        // Refused before reading the body: nothing is accepted that a stopping daemon might not
        // commit, and the sender's retry reaches the next instance.
        return unavailable("flatsync is stopping; retry later");
    }
    if let Some(token) = &state.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok =
            presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.expose().as_bytes()));
        if !ok {
            let mut response = reject(
                StatusCode::UNAUTHORIZED,
                if presented.is_some() {
                    "wrong bearer token"
                } else {
                    "missing bearer token"
                },
                json!({}),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
            return response;
        }
    }

    let too_large = || {
        reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body too large",
            json!({ "limit_bytes": state.max_body_bytes }),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body_bytes as u64) {
        return too_large();
    }
    let bytes = match axum::body::to_bytes(body, state.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(e) => {
            // to_bytes reports the limit through a boxed error whose source is LengthLimitError.
            let over_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.to_string().contains("length limit"));
            if over_limit || e.to_string().contains("length limit") {
                return too_large();
            }
            return reject(
                StatusCode::BAD_REQUEST,
                "could not read the body",
                json!({ "message": e.to_string() }),
            );
        }
    };

    let event = match parse_webhook_body(&bytes) {
        Ok(event) => event,
        Err(WebhookBodyError::Malformed {
            line,
            column,
            message,
        }) => {
            return reject(
                StatusCode::BAD_REQUEST,
                "malformed JSON",
                json!({ "line": line, "column": column, "message": message }),
            );
        }
        Err(e @ WebhookBodyError::UnknownShape { .. }) => {
            return reject(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unrecognised event shape",
                json!({ "message": e.to_string() }),
            );
        }
        Err(e @ WebhookBodyError::BadRows { .. }) => {
            return reject(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unusable rows",
                json!({ "message": e.to_string() }),
            );
        }
    };
    let (event_id, kind, topic) = match event {
        IncomingEvent::Legacy(n) => (n.event_id, "legacy", n.topic),
        IncomingEvent::Platform(e) => (e.id, "platform", e.topic),
        IncomingEvent::Carried(part) => return accept_part(&state, part).await,
    };

    match state
        .db
        .insert_event(
            event_id.clone(),
            kind,
            topic.clone(),
            bytes.to_vec(),
            now_ms(),
        )
        .await
    {
        Ok(true) => {
            tracing::info!(event_id = %event_id, topic = %topic, kind, "Webhook accepted");
            crate::metrics::event_received("webhook", &topic);
            // The dispatcher also rescans the inbox on start, so a send error (daemon stopping)
            // loses nothing: the event is already committed.
            let _ = state.accepted.send(event_id.clone());
            (
                StatusCode::OK,
                axum::Json(json!({ "status": "accepted", "eventId": event_id })),
            )
                .into_response()
        }
        Ok(false) => {
            tracing::info!(event_id = %event_id, topic = %topic, "Webhook repeated, already accepted");
            (
                StatusCode::OK,
                axum::Json(json!({ "status": "duplicate", "eventId": event_id })),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, event_id = %event_id, "Could not store webhook");
            unavailable("could not store the event; retry later")
        }
    }
}

/// Stores one part of an upload whose rows travel in the bodies, before answering 2xx; the
/// part that completes the upload also puts its event into the inbox.
async fn accept_part(state: &WebhookState, part: CarriedPart) -> Response {
    let upload = part.upload.clone();
    let position = part.position;
    let rows = part.rows;
    match state.db.store_carried_part(part).await {
        Ok(PartOutcome::Stored {
            received,
            expected,
            completed,
        }) => {
            tracing::info!(
                upload = %upload,
                part = ?position,
                rows,
                received,
                expected,
                "Upload part accepted"
            );
            if let Some(event_id) = &completed {
                crate::metrics::event_received("webhook", "upload");
                tracing::info!(event_id = %event_id, parts = received, "Upload complete");
                let _ = state.accepted.send(event_id.clone());
            }
            (
                StatusCode::OK,
                axum::Json(json!({
                    "status": "accepted",
                    "upload": upload,
                    "partsReceived": received,
                    "partsExpected": expected,
                    "eventId": completed,
                })),
            )
                .into_response()
        }
        Ok(PartOutcome::Duplicate) => {
            tracing::info!(upload = %upload, part = ?position, "Upload part repeated, already accepted");
            (
                StatusCode::OK,
                axum::Json(json!({ "status": "duplicate", "upload": upload })),
            )
                .into_response()
        }
        Ok(PartOutcome::Refused(reason)) => reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "inconsistent upload part",
            json!({ "message": reason }),
        ),
        Err(e) => {
            tracing::error!(error = %e, upload = %upload, "Could not store upload part");
            unavailable("could not store the upload part; retry later")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison_needs_equal_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
