//! The Platform's data endpoints: workbooks, sheets, record counts and record pages, each
//! readable only with the key of the environment it belongs to (on-the-fly ones with any key).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value as Json, json};

use super::auth::platform_auth;
use super::pages::PageKey;
use super::params::platform_page;
use super::reply::{ApiError, data, json_bytes, page_capacity};
use super::shared::Shared;
use crate::generate::{self, SheetRef};
use crate::rejection::Rejection;
use crate::state::RecordsQuery;

/// Most record ids one records request may name, as on the Platform.
const MAX_IDS: usize = 100;

/// The sheet, if the key of `environment_id` may read it: another environment's sheet is
/// answered like one that does not exist.
fn find_sheet(sim: &Shared, sheet_id: &str, environment_id: &str) -> Result<SheetRef, ApiError> {
    sim.world()
        .find_sheet(&sim.config, sheet_id)
        .filter(|scope| scope.readable_by(environment_id))
        .map(|scope| scope.sheet)
        .ok_or_else(|| Rejection::sheet_not_found(sheet_id).into())
}

/// The workbook's sheets and environment, if the key of `environment_id` may read it.
fn find_workbook(
    sim: &Shared,
    workbook_id: &str,
    environment_id: &str,
) -> Result<(Vec<SheetRef>, String), ApiError> {
    sim.world()
        .find_workbook(&sim.config, workbook_id)
        .filter(|scope| scope.readable_by(environment_id))
        .map(|scope| {
            let owner = scope.environment_id().to_owned();
            (scope.sheets, owner)
        })
        .ok_or_else(|| Rejection::workbook_not_found(workbook_id).into())
}

/// `GET /v1/workbooks/{workbookId}`.
pub(super) async fn get_workbook(
    State(sim): State<Arc<Shared>>,
    Path(workbook_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let (sheets, owner) = find_workbook(&sim, &workbook_id, &environment)?;
    let workbook = generate::workbook_json(sim.config.seed, &workbook_id, &owner, &sheets);
    Ok(data(workbook))
}

/// `GET /v1/sheets?workbookId=`.
pub(super) async fn list_sheets(
    State(sim): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let Some(workbook_id) = query.get("workbookId") else {
        return Err(ApiError::bad("workbookId", "workbookId is required"));
    };
    let sheets: Vec<Json> = find_workbook(&sim, workbook_id, &environment)?
        .0
        .iter()
        .map(|sheet| generate::sheet_json(sim.config.seed, sheet))
        .collect();
    Ok(data(Json::Array(sheets)))
}

/// `GET /v1/sheets/{sheetId}`.
pub(super) async fn get_sheet(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let sheet = find_sheet(&sim, &sheet_id, &environment)?;
    Ok(data(generate::sheet_json(sim.config.seed, &sheet)))
}

/// `GET /v1/sheets/{sheetId}/counts`.
pub(super) async fn sheet_counts(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let sheet = find_sheet(&sim, &sheet_id, &environment)?;
    let counts = sim.world().counts(&sheet);
    Ok(data(
        json!({ "counts": generate::counts_json(&sheet, counts), "success": true }),
    ))
}

/// `GET /v1/sheets/{sheetId}/records?pageSize=&pageNumber=&ids=&commitId=&sinceCommitId=`.
pub(super) async fn sheet_records(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    // `ids` repeats; every other parameter is single (the last one wins).
    let ids: Vec<String> = pairs
        .iter()
        .filter(|(name, _)| name == "ids")
        .map(|(_, id)| id.clone())
        .collect();
    let query: HashMap<String, String> = pairs
        .into_iter()
        .filter(|(name, _)| name != "ids")
        .collect();
    let (page_size, page_number) = platform_page(&sim, &query, 10_000)?;
    if ids.len() > MAX_IDS {
        return Err(ApiError::bad(
            "ids",
            format!("ids names at most {MAX_IDS} records, not {}", ids.len()),
        ));
    }
    let nonempty = |name: &str| query.get(name).filter(|value| !value.is_empty()).cloned();
    let records_query = RecordsQuery {
        page_number,
        page_size,
        ids,
        // versionId and sinceVersionId are the deprecated names of the same parameters.
        commit_id: nonempty("commitId").or_else(|| nonempty("versionId")),
        since_commit_id: nonempty("sinceCommitId").or_else(|| nonempty("sinceVersionId")),
    };
    let sheet = find_sheet(&sim, &sheet_id, &environment)?;
    let plain = records_query.is_plain() && !sim.world().has_overlay(&sheet.id);
    sim.page_pause().await;
    let capacity = page_capacity(page_size, sheet.rows, 750);
    if !plain {
        let mut body = Vec::with_capacity(capacity);
        sim.world()
            .write_records(sim.config.seed, &sheet, &records_query, &mut body)?;
        return Ok(json_bytes(StatusCode::OK, body));
    }
    // No lock while generating: the common case of an unchanged sheet serves pages in parallel.
    let render = || {
        let mut body = Vec::with_capacity(capacity);
        generate::write_records_page(&mut body, sim.config.seed, &sheet, page_number, page_size);
        body
    };
    Ok(match &sim.pages {
        Some(pages) => {
            let key = PageKey {
                path: format!("/v1/sheets/{sheet_id}/records"),
                at: page_number,
                size: page_size,
            };
            json_bytes(StatusCode::OK, pages.body(key, render))
        }
        None => json_bytes(StatusCode::OK, render()),
    })
}
