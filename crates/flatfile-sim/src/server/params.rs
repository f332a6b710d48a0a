//! Query parameters: unsigned integers, and the paging of each API.

use std::collections::HashMap;

use axum::http::StatusCode;

use super::reply::ApiError;
use super::shared::Shared;

/// Reads an optional unsigned integer query parameter.
pub(super) fn query_u64(
    query: &HashMap<String, String>,
    name: &'static str,
    default: u64,
    legacy: bool,
) -> Result<u64, ApiError> {
    match query.get(name) {
        None => Ok(default),
        Some(text) => text.trim().parse().map_err(|_| {
            ApiError::bad_parameter(
                legacy,
                name,
                format!("{name} must be a non-negative integer"),
            )
        }),
    }
}

/// `pageSize` and `pageNumber` of a Platform list: both from 1, the size capped.
pub(super) fn platform_page(
    sim: &Shared,
    query: &HashMap<String, String>,
    default_size: u64,
) -> Result<(u64, u64), ApiError> {
    let page_size = query_u64(query, "pageSize", default_size, false)?;
    let page_number = query_u64(query, "pageNumber", 1, false)?;
    if page_size == 0 {
        return Err(ApiError::bad("pageSize", "pageSize starts at 1"));
    }
    if page_number == 0 {
        return Err(ApiError::bad("pageNumber", "pageNumber starts at 1"));
    }
    Ok((page_size.min(sim.config.max_page_size), page_number))
}

/// `skip` and `take` of a legacy list: `take` 50 by default, capped at `--max-page-size`.
pub(super) fn legacy_page(
    sim: &Shared,
    query: &HashMap<String, String>,
) -> Result<(u64, u64), ApiError> {
    let skip = query_u64(query, "skip", 0, true)?;
    let take = query_u64(query, "take", 50, true)?;
    if take == 0 {
        return Err(ApiError::legacy(
            StatusCode::BAD_REQUEST,
            "take must be at least 1",
        ));
    }
    Ok((skip, take.min(sim.config.max_page_size)))
}
