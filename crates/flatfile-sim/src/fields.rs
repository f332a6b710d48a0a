//! Reading the JSON object bodies of the admin API and of the Platform job requests: each reader
//! takes an optional field (absent and `null` alike) or a required one, and refuses a value of the
//! wrong type naming its key.

use serde_json::{Map, Value as Json};

use crate::rejection::Rejection;

/// Parses an optional JSON object body (`{}` when empty).
pub(crate) fn object_body(body: &[u8]) -> Result<Map<String, Json>, Rejection> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(object)) => Ok(object),
        Ok(_) => Err(Rejection::bad_body("The body must be a JSON object")),
        Err(err) => Err(Rejection::bad_body(format!(
            "The body is not valid JSON: {err}"
        ))),
    }
}

pub(crate) fn string(body: &Map<String, Json>, key: &str) -> Result<Option<String>, Rejection> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(Rejection::bad(key, format!("{key} must be a string"))),
    }
}

pub(crate) fn boolean(body: &Map<String, Json>, key: &str) -> Result<Option<bool>, Rejection> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Bool(flag)) => Ok(Some(*flag)),
        Some(_) => Err(Rejection::bad(key, format!("{key} must be true or false"))),
    }
}

pub(crate) fn unsigned(body: &Map<String, Json>, key: &str) -> Result<Option<u64>, Rejection> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| Rejection::bad(key, format!("{key} must be a non-negative integer"))),
    }
}

/// An optional object field, kept whole.
pub(crate) fn object(body: &Map<String, Json>, key: &str) -> Result<Option<Json>, Rejection> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(value @ Json::Object(_)) => Ok(Some(value.clone())),
        Some(_) => Err(Rejection::bad(key, format!("{key} must be an object"))),
    }
}

/// `value`, which must be an object; `at` names it in the refusal (`records[2]`).
pub(crate) fn object_at<'a>(value: &'a Json, at: &str) -> Result<&'a Map<String, Json>, Rejection> {
    value
        .as_object()
        .ok_or_else(|| Rejection::bad(at, format!("{at} must be an object")))
}

/// A required array field.
pub(crate) fn array<'a>(
    body: &'a Map<String, Json>,
    key: &str,
) -> Result<&'a Vec<Json>, Rejection> {
    body.get(key)
        .ok_or_else(|| Rejection::bad(key, format!("{key} is required")))?
        .as_array()
        .ok_or_else(|| Rejection::bad(key, format!("{key} must be an array")))
}
