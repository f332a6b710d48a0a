//! The Platform's jobs: list, create, read, update, ack, complete and fail, for the jobs of the
//! caller's environment. The request bodies are checked by `crate::jobs`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value as Json, json};

use super::auth::platform_auth;
use super::params::query_u64;
use super::reply::{ApiError, data, json_value};
use super::shared::Shared;
use crate::fields::object_body;
use crate::jobs;
use crate::rejection::Rejection;

/// A job in the Platform's envelope, or why there is none.
fn job_answer(job: Result<Json, Rejection>) -> Result<Response, ApiError> {
    Ok(data(job?))
}

/// `GET /v1/jobs?pageSize=&pageNumber=&parentId=`: the key's environment's jobs, oldest first,
/// in the Platform's list envelope `{pagination: {currentPage, pageCount, totalCount}, data}`.
pub(super) async fn list_jobs(
    State(sim): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let page_size = query_u64(&query, "pageSize", 20, false)?.max(1);
    let page_number = query_u64(&query, "pageNumber", 1, false)?.max(1);
    let jobs = sim
        .world()
        .list_jobs(&environment, query.get("parentId").map(String::as_str));
    let total = jobs.len() as u64;
    let skip = usize::try_from((page_number - 1).saturating_mul(page_size)).unwrap_or(usize::MAX);
    let take = usize::try_from(page_size).unwrap_or(usize::MAX);
    let page: Vec<Json> = jobs.into_iter().skip(skip).take(take).collect();
    Ok(json_value(
        StatusCode::OK,
        &json!({
            "pagination": {
                "currentPage": page_number,
                "pageCount": total.div_ceil(page_size),
                "totalCount": total,
            },
            "data": page,
        }),
    ))
}

/// `POST /v1/jobs` with a `JobConfig`: a job of the key's environment, and its `job:created`.
pub(super) async fn create_job(
    State(sim): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let request = jobs::parse_config(&object_body(&body)?)?;
    job_answer(
        sim.world()
            .api_create_job(&sim.config, &environment, request),
    )
}

/// `GET /v1/jobs/{jobId}`.
pub(super) async fn get_job(
    State(sim): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    job_answer(sim.world().job_json(&environment, &job_id))
}

/// `PATCH /v1/jobs/{jobId}` with a `JobUpdate`.
pub(super) async fn patch_job(
    State(sim): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let update = jobs::parse_update(&object_body(&body)?)?;
    job_answer(sim.world().update_job(&environment, &job_id, update))
}

/// `POST /v1/jobs/{jobId}/ack` with `JobAckDetails`.
pub(super) async fn ack_job(
    State(sim): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let details = jobs::parse_ack(&object_body(&body)?)?;
    job_answer(sim.world().ack_job(&environment, &job_id, details))
}

/// `complete` or `fail` with `JobCompleteDetails`.
async fn finish_job(
    sim: &Shared,
    job_id: &str,
    headers: &HeaderMap,
    body: &Bytes,
    status: &'static str,
) -> Result<Response, ApiError> {
    let environment = platform_auth(sim, headers)?;
    let details = jobs::parse_complete(&object_body(body)?)?;
    job_answer(
        sim.world()
            .finish_job(&environment, job_id, status, details),
    )
}

/// `POST /v1/jobs/{jobId}/complete`.
pub(super) async fn complete_job(
    State(sim): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    finish_job(&sim, &job_id, &headers, &body, "complete").await
}

/// `POST /v1/jobs/{jobId}/fail`.
pub(super) async fn fail_job(
    State(sim): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    finish_job(&sim, &job_id, &headers, &body, "failed").await
}
