//! A blocking client of the admin API, for tests that run the simulator as a separate process.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::de::DeserializeOwned;

use crate::admin::{
    CreatedJob, EmitEvent, EventShape, JobRequest, NewRecords, RecordEdit, RecordsChange, SheetRow,
    SimEvent, SubmitRequest, Submitted,
};
use crate::{JobState, SimError, SimStats};

/// Calls a simulator's admin API (`/_sim/...`) and waits for the answer.
///
/// It runs its own single-threaded tokio runtime, so it is meant for plain `#[test]` functions
/// and other synchronous code; inside an async runtime use [`RunningSim`]'s methods (same
/// process) or call the endpoints directly.
///
/// [`RunningSim`]: crate::RunningSim
pub struct AdminClient {
    base: reqwest::Url,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// A client of the simulator at `base_url` (`http://127.0.0.1:PORT`, as printed at start).
    pub fn new(base_url: &str) -> Result<AdminClient, SimError> {
        let base = reqwest::Url::parse(base_url).map_err(|_| SimError::InvalidUrl)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("flatfile-sim-admin/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(SimError::Client)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| SimError::Admin {
                what: "start".to_owned(),
                detail: format!("cannot start a tokio runtime: {err}"),
            })?;
        Ok(AdminClient {
            base,
            http,
            runtime,
        })
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> reqwest::Url {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .expect("an http URL has path segments");
            path.pop_if_empty();
            // Pushed one by one so ids are percent-encoded, never read as paths.
            path.extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Sends a request and decodes a 2xx answer; `None` for a 404 when `missing_ok`.
    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<Vec<u8>>,
        missing_ok: bool,
    ) -> Result<Option<T>, SimError> {
        let what = format!("{method} {}", url.path());
        let failed = |detail: String| SimError::Admin {
            what: what.clone(),
            detail,
        };
        let mut request = self.http.request(method.clone(), url);
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body);
        }
        let (status, bytes) = self
            .runtime
            .block_on(async {
                let response = request.send().await?;
                let status = response.status().as_u16();
                Ok::<_, reqwest::Error>((status, response.bytes().await?))
            })
            .map_err(|err| failed(err.without_url().to_string()))?;
        if status == 404 && missing_ok {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            // The admin API answers errors as {errors: [{key?, message}]}.
            let error: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
            let first = error.as_ref().and_then(|error| error["errors"].get(0));
            return Err(SimError::Rejected {
                status,
                field: first
                    .and_then(|first| first["key"].as_str())
                    .map(str::to_owned),
                message: first
                    .and_then(|first| first["message"].as_str())
                    .map_or_else(
                        || String::from_utf8_lossy(&bytes).into_owned(),
                        str::to_owned,
                    ),
            });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| failed(format!("unexpected answer ({err})")))
    }

    fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: &impl serde::Serialize,
    ) -> Result<T, SimError> {
        let body = serde_json::to_vec(body).expect("admin requests serialize");
        let url = self.url(segments, &[]);
        self.call(method, url, Some(body), false)
            .map(|answer| answer.expect("only 404s with missing_ok are None"))
    }

    fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, SimError> {
        let url = self.url(segments, query);
        self.call(Method::GET, url, None, false)
            .map(|answer| answer.expect("only 404s with missing_ok are None"))
    }

    /// `POST /_sim/submit`.
    pub fn submit(&self, request: &SubmitRequest) -> Result<Submitted, SimError> {
        self.send(Method::POST, &["_sim", "submit"], request)
    }

    /// `POST /_sim/jobs`: a job for a workbook or a sheet, without any event.
    pub fn create_job(&self, request: &JobRequest) -> Result<CreatedJob, SimError> {
        self.send(Method::POST, &["_sim", "jobs"], request)
    }

    /// The id of a new `workbook:submitActionFg` job for `workbook_id`
    /// ([`AdminClient::create_job`]).
    pub fn workbook_job(&self, workbook_id: &str) -> Result<String, SimError> {
        self.create_job(&JobRequest::workbook(workbook_id))
            .map(|created| created.job_id)
    }

    /// `POST /_sim/sheets/{sheet_id}/records`.
    pub fn add_records(
        &self,
        sheet_id: &str,
        records: &NewRecords,
    ) -> Result<RecordsChange, SimError> {
        self.add_records_as(sheet_id, records, EventShape::RecordIds)
    }

    /// `POST /_sim/sheets/{sheet_id}/records` with events of another [`EventShape`].
    pub fn add_records_as(
        &self,
        sheet_id: &str,
        records: &NewRecords,
        shape: EventShape,
    ) -> Result<RecordsChange, SimError> {
        let mut body = serde_json::to_value(records).expect("records serialize");
        body["eventShape"] = serde_json::json!(shape);
        self.send(
            Method::POST,
            &["_sim", "sheets", sheet_id, "records"],
            &body,
        )
    }

    /// `PATCH /_sim/sheets/{sheet_id}/records`.
    pub fn edit_records(
        &self,
        sheet_id: &str,
        edits: &[RecordEdit],
    ) -> Result<RecordsChange, SimError> {
        self.edit_records_as(sheet_id, edits, EventShape::RecordIds)
    }

    /// `PATCH /_sim/sheets/{sheet_id}/records` with events of another [`EventShape`].
    pub fn edit_records_as(
        &self,
        sheet_id: &str,
        edits: &[RecordEdit],
        shape: EventShape,
    ) -> Result<RecordsChange, SimError> {
        self.send(
            Method::PATCH,
            &["_sim", "sheets", sheet_id, "records"],
            &serde_json::json!({ "records": edits, "eventShape": shape }),
        )
    }

    /// `DELETE /_sim/sheets/{sheet_id}/records`.
    pub fn delete_records(
        &self,
        sheet_id: &str,
        ids: &[String],
    ) -> Result<RecordsChange, SimError> {
        self.delete_records_as(sheet_id, ids, EventShape::RecordIds)
    }

    /// `DELETE /_sim/sheets/{sheet_id}/records` with an event of another [`EventShape`].
    pub fn delete_records_as(
        &self,
        sheet_id: &str,
        ids: &[String],
        shape: EventShape,
    ) -> Result<RecordsChange, SimError> {
        self.send(
            Method::DELETE,
            &["_sim", "sheets", sheet_id, "records"],
            &serde_json::json!({ "ids": ids, "eventShape": shape }),
        )
    }

    /// `GET /_sim/sheets/{sheet_id}/records`: the sheet as it is now.
    pub fn sheet_rows(&self, sheet_id: &str) -> Result<Vec<SheetRow>, SimError> {
        self.get(&["_sim", "sheets", sheet_id, "records"], &[])
    }

    /// `POST /_sim/events`.
    pub fn emit_event(&self, event: &EmitEvent) -> Result<SimEvent, SimError> {
        self.send(Method::POST, &["_sim", "events"], event)
    }

    /// `GET /_sim/events[?environmentId=]`.
    pub fn events(&self, environment_id: Option<&str>) -> Result<Vec<SimEvent>, SimError> {
        match environment_id {
            Some(id) => self.get(&["_sim", "events"], &[("environmentId", id)]),
            None => self.get(&["_sim", "events"], &[]),
        }
    }

    /// `GET /_sim/jobs`.
    pub fn jobs(&self) -> Result<Vec<JobState>, SimError> {
        self.get(&["_sim", "jobs"], &[])
    }

    /// `GET /_sim/jobs/{job_id}`; `None` when the simulator has no such job.
    pub fn job(&self, job_id: &str) -> Result<Option<JobState>, SimError> {
        let url = self.url(&["_sim", "jobs", job_id], &[]);
        self.call(Method::GET, url, None, true)
    }

    /// `GET /_sim/stats`.
    pub fn stats(&self) -> Result<SimStats, SimError> {
        self.get(&["_sim", "stats"], &[])
    }
}
