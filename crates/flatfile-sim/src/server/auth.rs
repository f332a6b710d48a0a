//! Who may call: the legacy API's `X-Api-Key`, and the Platform's bearer token, which is the key
//! of one environment. A refused request is counted as unauthorized.

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};

use super::reply::ApiError;
use super::shared::Shared;

pub(super) fn legacy_auth(sim: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    if given == Some(sim.config.legacy_api_key.as_str()) {
        return Ok(());
    }
    sim.count_unauthorized();
    Err(ApiError::legacy(StatusCode::UNAUTHORIZED, "Unauthorized"))
}

/// Checks the bearer token and returns the environment it is the key of.
pub(super) fn platform_auth(sim: &Shared, headers: &HeaderMap) -> Result<String, ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(environment_id) = token.and_then(|token| sim.config.environment_of_key(token)) {
        return Ok(environment_id.to_owned());
    }
    sim.count_unauthorized();
    let message = if token.is_some() {
        "Invalid bearer token"
    } else {
        "Missing bearer token"
    };
    Err(ApiError::platform(StatusCode::UNAUTHORIZED, None, message))
}
