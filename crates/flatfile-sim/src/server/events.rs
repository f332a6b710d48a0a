//! The Platform's events feed: a key's environment's events, one event, and acks.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value as Json, json};

use super::auth::platform_auth;
use super::params::platform_page;
use super::reply::{ApiError, data};
use super::shared::Shared;
use crate::clock;
use crate::rejection::Rejection;
use crate::state::EventsQuery;

/// `GET /v1/events`: the caller's environment's events, in the configured `events_order`.
pub(super) async fn list_events(
    State(sim): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    if let Some(asked) = query.get("environmentId")
        && *asked != environment
    {
        return Err(ApiError::platform(
            StatusCode::FORBIDDEN,
            Some("environmentId"),
            format!("This key does not belong to environment {asked}"),
        ));
    }
    let since_ms = match query.get("since") {
        None => None,
        Some(text) => Some(clock::parse_iso_millis(text.trim()).ok_or_else(|| {
            ApiError::bad(
                "since",
                "since must be an ISO 8601 date-time, e.g. 2024-05-02T13:58:40.012Z",
            )
        })?),
    };
    let include_acknowledged = match query.get("includeAcknowledged").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::bad(
                "includeAcknowledged",
                "includeAcknowledged must be true or false",
            ));
        }
    };
    let (page_size, page_number) = platform_page(&sim, &query, 10)?;
    let events_query = EventsQuery {
        environment_id: environment,
        since_ms,
        topic: query.get("topic").cloned(),
        domain: query.get("domain").cloned(),
        space_id: query.get("spaceId").cloned(),
        include_acknowledged,
        page_number,
        page_size,
        order: sim.config.events_order,
    };
    Ok(data(Json::Array(sim.world().list_events(&events_query))))
}

/// `GET /v1/events/{eventId}`.
pub(super) async fn get_event(
    State(sim): State<Arc<Shared>>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let event = sim
        .world()
        .event(&event_id, &environment)
        .ok_or_else(|| Rejection::event_not_found(&event_id))?;
    Ok(data(event))
}

/// `POST /v1/events/{eventId}/ack`.
pub(super) async fn ack_event(
    State(sim): State<Arc<Shared>>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    if !sim.world().ack_event(&event_id, &environment) {
        return Err(Rejection::event_not_found(&event_id).into());
    }
    Ok(data(json!({ "success": true })))
}
