//! Reading the JSON object bodies of the admin API and of the Platform job requests: each reader
//! takes an optional field (absent and `null` alike) or a required one, and refuses a value of the
//! wrong type naming its key.

use serde_json::{Map, Value as Json};

use crate::rejection::Rejection;

pub(crate) fn string(body: &Map<String, Json>, key: &str) -> Result<Option<String>, Rejection> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(Rejection::bad(key, format!("{key} must be a string"))),
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
