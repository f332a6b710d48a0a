//! Answers: JSON bodies, and errors in the envelope of the API a request belongs to.

use axum::extract::Request;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};

use crate::rejection::Rejection;

/// Whether a path belongs to the legacy API, whose errors have their own envelope.
pub(super) fn is_legacy_path(path: &str) -> bool {
    path.starts_with("/rest/") || path.starts_with("/workspace/")
}

pub(super) fn json_bytes(status: StatusCode, body: impl IntoResponse) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(super) fn json_value(status: StatusCode, body: &Json) -> Response {
    json_bytes(
        status,
        serde_json::to_vec(body).expect("a serde_json::Value always serializes"),
    )
}

/// `{"data": value}`, the Platform's envelope of one answer.
pub(super) fn data(value: Json) -> Response {
    json_value(StatusCode::OK, &json!({ "data": value }))
}

/// An admin answer, serialized as it is.
pub(super) fn json_answer<T: serde::Serialize>(value: &T) -> Response {
    // Straight to bytes: a detour through `serde_json::Value` would sort the keys of
    // `SheetRow::values`, which are in schema order.
    json_bytes(
        StatusCode::OK,
        serde_json::to_vec(value).expect("admin answers serialize"),
    )
}

/// Buffer to reserve for a page, from the measured size of generated rows; bounded so a huge
/// page size does not reserve gigabytes up front.
pub(super) fn page_capacity(page_size: u64, rows: u64, bytes_per_row: u64) -> usize {
    usize::try_from(page_size.min(rows).min(20_000) * bytes_per_row + 256).unwrap_or(1 << 20)
}

/// An error in the envelope of the API the request belongs to: legacy
/// `{statusCode, message, error}`, Platform (and admin) `{errors: [{key?, message}]}`.
pub(super) fn api_error(
    legacy: bool,
    status: StatusCode,
    key: Option<&str>,
    message: &str,
) -> Response {
    let body = if legacy {
        json!({
            "statusCode": status.as_u16(),
            "message": message,
            "error": status.canonical_reason().unwrap_or("Error"),
        })
    } else {
        let mut error = json!({ "message": message });
        if let Some(key) = key {
            error["key"] = json!(key);
        }
        json!({ "errors": [error] })
    };
    json_value(status, &body)
}

/// A refused request; answered in the envelope of its API (see [`api_error`]).
#[derive(Debug)]
pub(super) struct ApiError {
    legacy: bool,
    status: StatusCode,
    key: Option<String>,
    message: String,
}

impl ApiError {
    pub(super) fn legacy(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            legacy: true,
            status,
            key: None,
            message: message.into(),
        }
    }

    pub(super) fn platform(
        status: StatusCode,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            legacy: false,
            status,
            key: key.map(str::to_owned),
            message: message.into(),
        }
    }

    /// A 400 of the Platform or admin API naming the bad field.
    pub(super) fn bad(key: &str, message: impl Into<String>) -> ApiError {
        ApiError::platform(StatusCode::BAD_REQUEST, Some(key), message)
    }

    /// A 400 naming a bad query parameter, in the envelope of the API asked.
    pub(super) fn bad_parameter(legacy: bool, key: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            legacy,
            ..ApiError::bad(key, message)
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> ApiError {
        ApiError {
            legacy: false,
            status: rejection.status,
            key: rejection.key,
            message: rejection.message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        api_error(self.legacy, self.status, self.key.as_deref(), &self.message)
    }
}

/// The fallback: a 404 naming the method and path.
pub(super) async fn not_found(method: Method, request: Request) -> Response {
    let path = request.uri().path();
    api_error(
        is_legacy_path(path),
        StatusCode::NOT_FOUND,
        None,
        &format!("No route for {method} {path}"),
    )
}
