//! The legacy Portal API: a batch's rows and a Workspaces sheet's records, both paged by
//! `skip` and `take` behind the `X-Api-Key`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::auth::legacy_auth;
use super::params::legacy_page;
use super::reply::{ApiError, json_bytes, page_capacity};
use super::shared::Shared;
use crate::generate;

/// `GET /rest/batch/{batchId}/rows?skip=&take=`: [`crate::SimConfig::rows`] rows for every
/// batch id.
pub(super) async fn batch_rows(
    State(sim): State<Arc<Shared>>,
    Path(batch_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    legacy_auth(&sim, &headers)?;
    let (skip, take) = legacy_page(&sim, &query)?;
    sim.page_pause().await;
    let mut body = Vec::with_capacity(page_capacity(take, sim.config.rows, 500));
    generate::write_legacy_page(
        &mut body,
        sim.config.seed,
        &batch_id,
        sim.config.rows,
        skip,
        take,
    );
    Ok(json_bytes(StatusCode::OK, body))
}

/// `GET /workspace/{workspaceId}/sheet/{sheetId}/records?skip=&take=`: a legacy Workspaces
/// sheet, [`crate::SimConfig::rows`] records for every (workspace, sheet).
pub(super) async fn workspace_records(
    State(sim): State<Arc<Shared>>,
    Path((workspace_id, sheet_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    legacy_auth(&sim, &headers)?;
    let (skip, take) = legacy_page(&sim, &query)?;
    sim.page_pause().await;
    let mut body = Vec::with_capacity(page_capacity(take, sim.config.rows, 300));
    crate::legacy::write_workspace_page(
        &mut body,
        sim.config.seed,
        (&workspace_id, &sheet_id),
        sim.config.rows,
        skip,
        take,
    );
    Ok(json_bytes(StatusCode::OK, body))
}
