//! Jobs in the world: created by the admin API or `POST /v1/jobs`, changed by the Platform's job
//! endpoints, each reaching `complete` or `failed` announced by its event.

use serde_json::{Map, Value as Json, json};

use super::{World, base_context, check_environment, job_environment};
use crate::admin::{CreatedJob, JobRequest};
use crate::generate::{self, SheetRef};
use crate::jobs::{AckDetails, CompleteDetails, JOB_TYPES, JobRecord, JobUpdate, NewJob};
use crate::rejection::Rejection;
use crate::{JobState, SimConfig, clock};

/// `<type>:<operation>`, the type one of the Platform's `JobType`s.
pub(super) fn split_job_name(name: &str) -> Result<(&'static str, &str), Rejection> {
    let refused = || {
        Rejection::bad(
            "job",
            format!(
                "job {name:?} is not <type>:<operation> with a type of {}, e.g. \
                 workbook:submitActionFg",
                JOB_TYPES.join(", ")
            ),
        )
    };
    let (kind, operation) = name.split_once(':').ok_or_else(refused)?;
    let kind = JOB_TYPES
        .iter()
        .copied()
        .find(|known| *known == kind)
        .ok_or_else(refused)?;
    if operation.is_empty() {
        return Err(refused());
    }
    Ok((kind, operation))
}

/// The job an admin request names, or the submit job of a sheet or of a workbook.
pub(super) fn job_name(asked: Option<&String>, of_sheet: bool) -> String {
    match (asked, of_sheet) {
        (Some(job), _) => job.clone(),
        (None, true) => "sheet:submitActionFg".to_owned(),
        (None, false) => "workbook:submitActionFg".to_owned(),
    }
}

/// The workbook (and sheet) a job works on, in the context of its events.
pub(super) fn add_source_ids(
    context: &mut Map<String, Json>,
    workbook_id: &str,
    sheet: Option<&SheetRef>,
) {
    context.insert("workbookId".to_owned(), json!(workbook_id));
    if let Some(sheet) = sheet {
        context.insert("sheetId".to_owned(), json!(sheet.id));
        context.insert("sheetSlug".to_owned(), json!(sheet.kind.slug()));
    }
}

impl World {
    /// Creates a job in status `created`; `context` adds to the context of its events.
    pub(super) fn new_job(
        &mut self,
        environment_id: &str,
        name: (&str, &str),
        source: &str,
        context: impl FnOnce(&mut Map<String, Json>),
    ) -> String {
        self.next.job += 1;
        let job_id = format!("us_jb_{}_{}", self.tag, self.next.job);
        let mut job_context = base_context(environment_id);
        context(&mut job_context);
        job_context.insert("jobId".to_owned(), json!(job_id));
        job_context.insert("actorId".to_owned(), json!(generate::ACTOR_ID));
        let job = JobRecord::new(self.next.job, environment_id, name, source, job_context);
        self.jobs.insert(job_id.clone(), job);
        job_id
    }

    pub(super) fn set_status(&mut self, job_id: &str, status: &'static str) {
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.status = status;
        }
    }

    /// `POST /_sim/jobs`: a job for a workbook or sheet, in status `ready`, without events.
    pub(crate) fn create_job(
        &mut self,
        config: &SimConfig,
        request: &JobRequest,
    ) -> Result<CreatedJob, Rejection> {
        if let Some(environment_id) = &request.environment_id {
            check_environment(config, environment_id, "environmentId")?;
        }
        let (owner, workbook_id, sheet) = self.job_target(config, request)?;
        let environment_id = job_environment(
            &workbook_id,
            owner.as_deref(),
            request.environment_id.as_deref(),
        )?;
        let job_name = job_name(request.job.as_ref(), sheet.is_some());
        let name = split_job_name(&job_name)?;
        let source = sheet
            .as_ref()
            .map_or_else(|| workbook_id.clone(), |sheet| sheet.id.clone());
        let job_id = self.new_job(&environment_id, name, &source, |context| {
            add_source_ids(context, &workbook_id, sheet.as_ref());
        });
        self.set_status(&job_id, "ready");
        Ok(CreatedJob {
            job_id,
            job: job_name,
            source,
            environment_id,
        })
    }

    /// The owner, workbook and sheet of the workbook or the sheet a `POST /_sim/jobs` names.
    fn job_target(
        &self,
        config: &SimConfig,
        request: &JobRequest,
    ) -> Result<(Option<String>, String, Option<SheetRef>), Rejection> {
        match (&request.workbook_id, &request.sheet_id) {
            (Some(workbook_id), None) => {
                let workbook = self
                    .find_workbook(config, workbook_id)
                    .ok_or_else(|| Rejection::workbook_not_found(workbook_id))?;
                Ok((workbook.owner, workbook_id.clone(), None))
            }
            (None, Some(sheet_id)) => {
                let scope = self
                    .find_sheet(config, sheet_id)
                    .ok_or_else(|| Rejection::sheet_not_found(sheet_id))?;
                Ok((
                    scope.owner.clone(),
                    scope.sheet.workbook_id.clone(),
                    Some(scope.sheet),
                ))
            }
            _ => Err(Rejection::bad(
                "workbookId",
                "give either workbookId or sheetId",
            )),
        }
    }

    /// `POST /v1/jobs` with a key of `environment_id`: the job, and its `job:created` event.
    pub(crate) fn api_create_job(
        &mut self,
        config: &SimConfig,
        environment_id: &str,
        request: NewJob,
    ) -> Result<Json, Rejection> {
        if request
            .environment_id
            .as_deref()
            .is_some_and(|asked| asked != environment_id)
        {
            return Err(Rejection::bad(
                "environmentId",
                format!("this key belongs to environment {environment_id}"),
            ));
        }
        let ids = self.api_job_source(config, environment_id, &request)?;
        if let Some(parent) = &request.parent_id
            && self
                .jobs
                .get(parent)
                .is_none_or(|job| job.environment_id != environment_id)
        {
            return Err(Rejection::not_found(
                "parentId",
                format!("Job {parent} not found"),
            ));
        }
        let job_id = self.new_job(
            environment_id,
            (request.kind, &request.operation),
            &request.source,
            |context| {
                if let Some((workbook_id, sheet)) = &ids {
                    add_source_ids(context, workbook_id, sheet.as_ref());
                }
            },
        );
        let job = self.jobs.get_mut(&job_id).expect("just created");
        job.fields = request.fields;
        job.parent_id = request.parent_id;
        if let Some(status) = request.status {
            job.status = status;
        }
        let (body, context, payload) = (job.to_json(&job_id), job.context.clone(), job.payload());
        self.emit(environment_id, "job:created", None, context, payload, None);
        Ok(body)
    }

    /// The workbook (and sheet) a `workbook` or `sheet` job of `POST /v1/jobs` works on, which
    /// the key must be able to read; `None` for the other job types.
    fn api_job_source(
        &self,
        config: &SimConfig,
        environment_id: &str,
        request: &NewJob,
    ) -> Result<Option<(String, Option<SheetRef>)>, Rejection> {
        match request.kind {
            "workbook" => {
                if self
                    .find_workbook(config, &request.source)
                    .is_none_or(|workbook| !workbook.readable_by(environment_id))
                {
                    return Err(Rejection::not_found(
                        "source",
                        format!("Workbook {} not found", request.source),
                    ));
                }
                Ok(Some((request.source.clone(), None)))
            }
            "sheet" => {
                let scope = self
                    .find_sheet(config, &request.source)
                    .filter(|scope| scope.readable_by(environment_id))
                    .ok_or_else(|| {
                        Rejection::not_found(
                            "source",
                            format!("Sheet {} not found", request.source),
                        )
                    })?;
                Ok(Some((scope.sheet.workbook_id.clone(), Some(scope.sheet))))
            }
            _ => Ok(None),
        }
    }

    /// A job a key of `environment_id` may see.
    fn job_of(&self, environment_id: &str, job_id: &str) -> Result<&JobRecord, Rejection> {
        self.jobs
            .get(job_id)
            .filter(|job| job.environment_id == environment_id)
            .ok_or_else(|| Rejection::job_not_found(job_id))
    }

    /// `GET /v1/jobs/{id}`: the `Job` object.
    pub(crate) fn job_json(&self, environment_id: &str, job_id: &str) -> Result<Json, Rejection> {
        Ok(self.job_of(environment_id, job_id)?.to_json(job_id))
    }

    /// `POST /v1/jobs/{id}/ack`: the job is executing (a finished job stays finished: a late ack,
    /// say a retry whose first answer was lost, must not reopen it).
    pub(crate) fn ack_job(
        &mut self,
        environment_id: &str,
        job_id: &str,
        details: AckDetails,
    ) -> Result<Json, Rejection> {
        self.change_job(environment_id, job_id, |job, now| {
            if job.is_finished() {
                return;
            }
            job.status = "executing";
            job.started_ms.get_or_insert(now);
            job.updated_ms = now;
            if let Some(progress) = details.progress {
                job.progress.push(progress);
            }
            if details.info.is_some() {
                job.info = details.info;
            }
        })
    }

    /// `POST /v1/jobs/{id}/complete` (`status` `complete`) or `/fail` (`failed`).
    pub(crate) fn finish_job(
        &mut self,
        environment_id: &str,
        job_id: &str,
        status: &'static str,
        details: CompleteDetails,
    ) -> Result<Json, Rejection> {
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.finishes += 1;
        }
        self.change_job(environment_id, job_id, |job, now| {
            job.status = status;
            job.updated_ms = now;
            job.finished_ms = Some(now);
            if details.info.is_some() {
                job.info = details.info;
            }
            job.outcome = details.outcome;
        })
    }

    /// `PATCH /v1/jobs/{id}`.
    pub(crate) fn update_job(
        &mut self,
        environment_id: &str,
        job_id: &str,
        update: JobUpdate,
    ) -> Result<Json, Rejection> {
        self.change_job(environment_id, job_id, |job, now| {
            job.updated_ms = now;
            if let Some(config) = update.config {
                job.fields.insert("config".to_owned(), config);
            }
            if let Some(metadata) = update.metadata {
                job.fields.insert("metadata".to_owned(), metadata);
            }
            if let Some(progress) = update.progress {
                job.progress.push(progress);
            }
            if update.info.is_some() {
                job.info = update.info;
            }
            if update.outcome_acknowledged_at.is_some() {
                job.outcome_acknowledged_at = update.outcome_acknowledged_at;
            }
            if let Some(status) = update.status {
                job.status = status;
                if status == "executing" {
                    job.started_ms.get_or_insert(now);
                }
                if job.is_finished() {
                    job.finished_ms.get_or_insert(now);
                }
            }
        })
    }

    /// Applies `change` to a job, then emits `job:completed` or `job:failed` when it just reached
    /// that status, and the parent's `job:parts-completed` when the last part completed.
    fn change_job(
        &mut self,
        environment_id: &str,
        job_id: &str,
        change: impl FnOnce(&mut JobRecord, u64),
    ) -> Result<Json, Rejection> {
        self.job_of(environment_id, job_id)?;
        let job = self.jobs.get_mut(job_id).expect("checked above");
        let before = job.status;
        change(job, clock::now_ms());
        let body = job.to_json(job_id);
        let topic = match job.status {
            "complete" => "job:completed",
            "failed" => "job:failed",
            _ => return Ok(body),
        };
        if before == job.status {
            return Ok(body);
        }
        let (context, payload, parent) =
            (job.context.clone(), job.payload(), job.parent_id.clone());
        let environment = job.environment_id.clone();
        self.emit(&environment, topic, None, context, payload, None);
        if let (Some(parent), "job:completed") = (parent, topic) {
            let all_done = self
                .jobs
                .values()
                .filter(|job| job.parent_id.as_deref() == Some(parent.as_str()))
                .all(|job| job.status == "complete");
            if all_done && let Some(parent_job) = self.jobs.get(&parent) {
                let (context, payload) = (parent_job.context.clone(), parent_job.payload());
                self.emit(
                    &environment,
                    "job:parts-completed",
                    None,
                    context,
                    payload,
                    None,
                );
            }
        }
        Ok(body)
    }

    /// Every job, oldest first.
    pub(crate) fn jobs(&self) -> Vec<JobState> {
        let mut jobs: Vec<(&String, &JobRecord)> = self.jobs.iter().collect();
        jobs.sort_by_key(|(_, job)| job.seq);
        jobs.into_iter().map(|(id, job)| job.state(id)).collect()
    }

    /// A job's state, whatever its environment.
    pub(crate) fn job_state(&self, job_id: &str) -> Option<JobState> {
        self.jobs.get(job_id).map(|job| job.state(job_id))
    }

    /// `GET /v1/jobs` for a key of `environment_id`: its jobs, oldest first, those of one parent
    /// when `parent_id` is given.
    pub(crate) fn list_jobs(&self, environment_id: &str, parent_id: Option<&str>) -> Vec<Json> {
        let mut jobs: Vec<(&String, &JobRecord)> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.environment_id == environment_id)
            .filter(|(_, job)| {
                parent_id.is_none_or(|parent| job.parent_id.as_deref() == Some(parent))
            })
            .collect();
        jobs.sort_by_key(|(_, job)| job.seq);
        jobs.into_iter().map(|(id, job)| job.to_json(id)).collect()
    }
}
