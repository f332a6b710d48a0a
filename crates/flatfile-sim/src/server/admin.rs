//! The admin API under `/_sim`: no auth, JSON in and out. It drives the world (submits, jobs,
//! record changes, events) and shows what happened (jobs, events, a sheet's rows, counters).
//! Its requests are neither counted nor faulted.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde_json::{Map, Value as Json};

use super::reply::{ApiError, json_answer};
use super::shared::Shared;
use crate::admin::{EmitEvent, EventShape, JobRequest, NewRecords, RecordEdit, SubmitRequest};
use crate::fields::{array, boolean, object_at, object_body, string, unsigned};
use crate::lock::lock;
use crate::rejection::Rejection;

/// `GET /_sim/jobs/{jobId}`: a job's state, whatever its environment.
pub(super) async fn job(
    State(sim): State<Arc<Shared>>,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    let state = sim
        .job_state(&job_id)
        .ok_or_else(|| Rejection::job_not_found(&job_id))?;
    Ok(json_answer(&state))
}

/// `GET /_sim/jobs`: every job, oldest first.
pub(super) async fn jobs(State(sim): State<Arc<Shared>>) -> Response {
    let jobs = sim.world().jobs();
    json_answer(&jobs)
}

/// `POST /_sim/jobs`: a job for a workbook or a sheet, without events.
pub(super) async fn create_job(
    State(sim): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = object_body(&body)?;
    known_keys(
        &body,
        "",
        &["job", "workbookId", "sheetId", "environmentId"],
    )?;
    let request = JobRequest {
        job: string(&body, "job")?,
        workbook_id: string(&body, "workbookId")?,
        sheet_id: string(&body, "sheetId")?,
        environment_id: string(&body, "environmentId")?,
    };
    let created = sim.world().create_job(&sim.config, &request)?;
    Ok(json_answer(&created))
}

/// `GET /_sim/stats`: the request counters.
pub(super) async fn stats(State(sim): State<Arc<Shared>>) -> Response {
    let stats = lock(&sim.stats).clone();
    json_answer(&stats)
}

/// Refuses keys an admin request does not know, naming the first one.
fn known_keys(body: &Map<String, Json>, at: &str, known: &[&str]) -> Result<(), ApiError> {
    match body.keys().find(|key| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some(unknown) => {
            let field = if at.is_empty() {
                unknown.clone()
            } else {
                format!("{at}.{unknown}")
            };
            Err(ApiError::bad(
                &field,
                format!("unknown field {field}; expected {}", known.join(", ")),
            ))
        }
    }
}

/// `POST /_sim/submit`: a workbook submit with its job and events.
pub(super) async fn submit(
    State(sim): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = object_body(&body)?;
    known_keys(
        &body,
        "",
        &[
            "environmentId",
            "workbookId",
            "sheetSlug",
            "job",
            "rows",
            "parts",
            "contextIds",
        ],
    )?;
    let request = SubmitRequest {
        environment_id: string(&body, "environmentId")?,
        workbook_id: string(&body, "workbookId")?,
        sheet_slug: string(&body, "sheetSlug")?,
        job: string(&body, "job")?,
        rows: unsigned(&body, "rows")?,
        parts: unsigned(&body, "parts")?,
        context_ids: boolean(&body, "contextIds")?,
    };
    let submitted = sim.world().submit(&sim.config, &request)?;
    Ok(json_answer(&submitted))
}

/// The body of a record change, with no key but `known`, and its `eventShape`.
fn change_body(body: &Bytes, known: &[&str]) -> Result<(Map<String, Json>, EventShape), ApiError> {
    let body = object_body(body)?;
    known_keys(&body, "", known)?;
    let shape = event_shape(&body)?;
    Ok((body, shape))
}

/// `eventShape` of a record change [default: `recordIds`].
fn event_shape(body: &Map<String, Json>) -> Result<EventShape, ApiError> {
    match string(body, "eventShape")? {
        None => Ok(EventShape::RecordIds),
        Some(name) => EventShape::parse(&name).ok_or_else(|| {
            ApiError::bad(
                "eventShape",
                format!("eventShape {name:?} is not one of recordIds, count, dataUrl, versionId"),
            )
        }),
    }
}

/// `POST /_sim/sheets/{sheetId}/records`: `{records}` or `{count}` added as one commit.
pub(super) async fn add_records(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (body, shape) = change_body(&body, &["records", "count", "eventShape"])?;
    let records = match (body.contains_key("records"), unsigned(&body, "count")?) {
        (true, Some(_)) => {
            return Err(ApiError::bad(
                "count",
                "give either records or count, not both",
            ));
        }
        (false, Some(count)) => NewRecords::Count(count),
        (true, None) => NewRecords::Values(
            array(&body, "records")?
                .iter()
                .enumerate()
                .map(|(at, record)| object_at(record, &format!("records[{at}]")).cloned())
                .collect::<Result<_, _>>()?,
        ),
        (false, None) => {
            return Err(ApiError::bad("records", "give records: [...] or count: n"));
        }
    };
    let change = sim
        .world()
        .add_records(&sim.config, &sheet_id, &records, shape)?;
    Ok(json_answer(&change))
}

/// `PATCH /_sim/sheets/{sheetId}/records`: records edited as one commit.
pub(super) async fn edit_records(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (body, shape) = change_body(&body, &["records", "eventShape"])?;
    let mut edits = Vec::new();
    for (at, record) in array(&body, "records")?.iter().enumerate() {
        let at = format!("records[{at}]");
        let record = object_at(record, &at)?;
        known_keys(record, &at, &["id", "values"])?;
        let id = match record.get("id") {
            Some(Json::String(id)) => id.clone(),
            _ => {
                return Err(ApiError::bad(
                    &format!("{at}.id"),
                    format!("{at}.id must be a string"),
                ));
            }
        };
        let values_at = format!("{at}.values");
        let values = object_at(
            record
                .get("values")
                .ok_or_else(|| ApiError::bad(&values_at, format!("{values_at} is required")))?,
            &values_at,
        )?
        .clone();
        edits.push(RecordEdit { id, values });
    }
    let change = sim
        .world()
        .edit_records(&sim.config, &sheet_id, &edits, shape)?;
    Ok(json_answer(&change))
}

/// `DELETE /_sim/sheets/{sheetId}/records`: records deleted.
pub(super) async fn delete_records(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (body, shape) = change_body(&body, &["ids", "eventShape"])?;
    let ids = array(&body, "ids")?
        .iter()
        .enumerate()
        .map(|(at, id)| {
            id.as_str()
                .map(str::to_owned)
                .ok_or_else(|| ApiError::bad("ids", format!("ids[{at}] must be a string")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let change = sim
        .world()
        .delete_records(&sim.config, &sheet_id, &ids, shape)?;
    Ok(json_answer(&change))
}

/// `GET /_sim/sheets/{sheetId}/records`: the sheet as it is now.
pub(super) async fn sheet_rows(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
) -> Result<Response, ApiError> {
    let rows = sim
        .world()
        .sheet_rows(&sim.config, &sheet_id)
        .ok_or_else(|| ApiError::from(Rejection::sheet_not_found(&sheet_id)))?;
    Ok(json_answer(&rows))
}

/// `POST /_sim/events`: an event of any topic.
pub(super) async fn emit_event(
    State(sim): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = object_body(&body)?;
    known_keys(
        &body,
        "",
        &[
            "environmentId",
            "topic",
            "domain",
            "context",
            "payload",
            "allowUnknownDomain",
            "createdAt",
        ],
    )?;
    let context = match body.get("context") {
        None | Some(Json::Null) => None,
        Some(context) => Some(object_at(context, "context")?.clone()),
    };
    let request = EmitEvent {
        environment_id: string(&body, "environmentId")?,
        topic: string(&body, "topic")?
            .ok_or_else(|| ApiError::bad("topic", "topic is required"))?,
        domain: string(&body, "domain")?,
        context,
        payload: body.get("payload").cloned(),
        allow_unknown_domain: boolean(&body, "allowUnknownDomain")?.unwrap_or(false),
        created_at: string(&body, "createdAt")?,
    };
    let event = sim.world().emit_custom(&sim.config, &request)?;
    Ok(json_answer(&event))
}

/// `GET /_sim/events?environmentId=`: every event, with its acks.
pub(super) async fn events(
    State(sim): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let environment = query.get("environmentId").map(String::as_str);
    if let Some(environment) = environment
        && !sim.config.environment_ids().contains(&environment)
    {
        return Err(ApiError::bad(
            "environmentId",
            format!("environment {environment} is not configured"),
        ));
    }
    let events = sim.world().events(environment);
    Ok(json_answer(&events))
}
