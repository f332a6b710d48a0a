//! The legacy Portal API: a batch's rows and a Workspaces sheet's records, both paged by
//! `skip` and `take` behind the `X-Api-Key`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::auth::legacy_auth;
use super::pages::PageKey;
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
    let (seed, rows) = (sim.config.seed, sim.config.rows);
    let path = format!("/rest/batch/{batch_id}/rows");
    serve_page(&sim, &headers, &query, (path, 500), |out, skip, take| {
        generate::write_legacy_page(out, seed, &batch_id, rows, skip, take);
    })
    .await
}

/// `GET /workspace/{workspaceId}/sheet/{sheetId}/records?skip=&take=`: a legacy Workspaces
/// sheet, [`crate::SimConfig::rows`] records for every (workspace, sheet).
pub(super) async fn workspace_records(
    State(sim): State<Arc<Shared>>,
    Path((workspace_id, sheet_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (seed, rows) = (sim.config.seed, sim.config.rows);
    let path = format!("/workspace/{workspace_id}/sheet/{sheet_id}/records");
    serve_page(&sim, &headers, &query, (path, 300), |out, skip, take| {
        let sheet = (workspace_id.as_str(), sheet_id.as_str());
        crate::legacy::write_workspace_page(out, seed, sheet, rows, skip, take);
    })
    .await
}

/// Checks the key and the paging, waits the page latency, and answers the page `write` writes
/// for `skip` and `take` (or the one it wrote before, when pages are pre-rendered); `page` is
/// the request path and the bytes per row that size the buffer.
async fn serve_page(
    sim: &Shared,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    page: (String, u64),
    write: impl FnOnce(&mut Vec<u8>, u64, u64),
) -> Result<Response, ApiError> {
    legacy_auth(sim, headers)?;
    let (skip, take) = legacy_page(sim, query)?;
    sim.page_pause().await;
    let (path, bytes_per_row) = page;
    let render = || {
        let mut body = Vec::with_capacity(page_capacity(take, sim.config.rows, bytes_per_row));
        write(&mut body, skip, take);
        body
    };
    Ok(match &sim.pages {
        Some(pages) => {
            let key = PageKey {
                path,
                at: skip,
                size: take,
            };
            json_bytes(StatusCode::OK, pages.body(key, render))
        }
        None => json_bytes(StatusCode::OK, render()),
    })
}
