//! A workbook submit (`POST /_sim/submit`): a workbook unless it names one, a job in status
//! `ready` with its `job:created` and `job:ready`, and any part jobs with their `job:ready`.

use serde_json::json;

use super::jobs::{add_source_ids, job_name, split_job_name};
use super::{CreatedWorkbook, WorkbookScope, World, check_environment, job_environment};
use crate::admin::{SubmitRequest, Submitted, SubmittedPart, SubmittedSheet};
use crate::generate::{self, SheetRef};
use crate::rejection::Rejection;
use crate::{DEFAULT_ENVIRONMENT_ID, SimConfig};

/// Most part jobs one submit may be split into.
const MAX_PARTS: u64 = 1_000;

/// A submit, checked: everything it will create.
struct SubmitPlan {
    workbook_id: String,
    /// The workbook's sheets when the submit creates it; `None` for an existing workbook.
    new_workbook: Option<Vec<SheetRef>>,
    environment_id: String,
    /// The sheets submitted: the workbook's, or the one `sheetSlug` names.
    sheets: Vec<SheetRef>,
    /// The sheet the job works on, when `sheetSlug` named one.
    sheet: Option<SheetRef>,
    job_name: String,
    parts: u64,
    context_ids: bool,
}

/// The sheets a submit covers: all of the workbook's, or the one of `slug`.
fn submitted_sheets(
    workbook_id: &str,
    workbook: &WorkbookScope,
    slug: Option<&String>,
) -> Result<Vec<SheetRef>, Rejection> {
    let Some(slug) = slug else {
        return Ok(workbook.sheets.clone());
    };
    let sheet = workbook
        .sheets
        .iter()
        .find(|sheet| sheet.kind.slug() == slug.as_str())
        .ok_or_else(|| {
            let known: Vec<&str> = workbook
                .sheets
                .iter()
                .map(|sheet| sheet.kind.slug())
                .collect();
            Rejection::bad(
                "sheetSlug",
                format!(
                    "workbook {workbook_id} has no sheet {slug}; it has {}",
                    known.join(", ")
                ),
            )
        })?;
    Ok(vec![sheet.clone()])
}

fn part_count(parts: Option<u64>) -> Result<u64, Rejection> {
    match parts {
        None => Ok(0),
        Some(parts) if (1..=MAX_PARTS).contains(&parts) => Ok(parts),
        Some(_) => Err(Rejection::bad(
            "parts",
            format!("parts must be between 1 and {MAX_PARTS}"),
        )),
    }
}

impl World {
    pub(crate) fn submit(
        &mut self,
        config: &SimConfig,
        request: &SubmitRequest,
    ) -> Result<Submitted, Rejection> {
        let plan = self.plan_submit(config, request)?;
        Ok(self.carry_out(plan))
    }

    /// Checks a submit whole, changing nothing.
    fn plan_submit(
        &self,
        config: &SimConfig,
        request: &SubmitRequest,
    ) -> Result<SubmitPlan, Rejection> {
        if let Some(environment_id) = &request.environment_id {
            check_environment(config, environment_id, "environmentId")?;
        }
        let (workbook_id, workbook) = self.submitted_workbook(config, request)?;
        let environment_id = job_environment(
            &workbook_id,
            workbook.owner.as_deref(),
            request.environment_id.as_deref(),
        )?;
        let sheets = submitted_sheets(&workbook_id, &workbook, request.sheet_slug.as_ref())?;
        let job_name = job_name(request.job.as_ref(), request.sheet_slug.is_some());
        split_job_name(&job_name)?;
        let parts = part_count(request.parts)?;
        let sheet = match (&request.sheet_slug, sheets.as_slice()) {
            (Some(_), [sheet]) => Some(sheet.clone()),
            _ => None,
        };
        Ok(SubmitPlan {
            new_workbook: request.workbook_id.is_none().then_some(workbook.sheets),
            workbook_id,
            environment_id,
            sheets,
            sheet,
            job_name,
            parts,
            context_ids: request.context_ids.unwrap_or(true),
        })
    }

    /// The workbook a submit names, or the one it will create (owned by the environment it
    /// names, the default one otherwise).
    fn submitted_workbook(
        &self,
        config: &SimConfig,
        request: &SubmitRequest,
    ) -> Result<(String, WorkbookScope), Rejection> {
        if let Some(workbook_id) = &request.workbook_id {
            if request.rows.is_some() {
                return Err(Rejection::bad(
                    "rows",
                    "rows sizes a new workbook; leave it out when submitting workbookId",
                ));
            }
            let workbook = self
                .find_workbook(config, workbook_id)
                .ok_or_else(|| Rejection::workbook_not_found(workbook_id))?;
            return Ok((workbook_id.clone(), workbook));
        }
        let workbook_id = format!("us_wb_{}_{}", self.tag, self.next.workbook + 1);
        let rows = request.rows.unwrap_or(config.rows);
        let sheets = generate::split_workbook(&workbook_id, config.sheets_per_workbook, rows)
            .expect("a us_wb_ id with a suffix always splits");
        let owner = request
            .environment_id
            .clone()
            .unwrap_or_else(|| DEFAULT_ENVIRONMENT_ID.to_owned());
        Ok((
            workbook_id,
            WorkbookScope {
                sheets,
                owner: Some(owner),
            },
        ))
    }

    /// Creates what a checked submit plans, in the order its ids and events are numbered.
    fn carry_out(&mut self, plan: SubmitPlan) -> Submitted {
        if let Some(sheets) = &plan.new_workbook {
            self.next.workbook += 1;
            self.workbooks.insert(
                plan.workbook_id.clone(),
                CreatedWorkbook {
                    environment_id: plan.environment_id.clone(),
                    sheets: sheets.clone(),
                },
            );
        }
        let job_id = self.new_submit_job(&plan, None);
        self.set_status(&job_id, "ready");
        let job = &self.jobs[&job_id];
        let (context, created, ready) = (
            job.context.clone(),
            job.payload_with_status("created"),
            job.payload(),
        );
        let environment_id = &plan.environment_id;
        self.emit(
            environment_id,
            "job:created",
            None,
            context.clone(),
            created,
            None,
        );
        let ready = self.emit(environment_id, "job:ready", None, context, ready, None);
        let parts = (1..=plan.parts)
            .map(|part| self.submit_part(&plan, &job_id, part))
            .collect();
        let sheets = plan
            .sheets
            .iter()
            .map(|sheet| SubmittedSheet {
                id: sheet.id.clone(),
                slug: sheet.kind.slug().to_owned(),
                rows: self.counts(sheet).total,
            })
            .collect();
        Submitted {
            event_id: ready.id,
            job_id,
            workbook_id: plan.workbook_id,
            environment_id: plan.environment_id,
            sheets,
            parts,
        }
    }

    /// The submit's job, or one of its parts; in status `created`.
    fn new_submit_job(&mut self, plan: &SubmitPlan, parent: Option<&str>) -> String {
        let name = split_job_name(&plan.job_name).expect("checked by plan_submit");
        let sheet = plan.sheet.as_ref();
        let source = sheet.map_or_else(|| plan.workbook_id.clone(), |sheet| sheet.id.clone());
        let job_id = self.new_job(&plan.environment_id, name, &source, |context| {
            if plan.context_ids {
                add_source_ids(context, &plan.workbook_id, sheet);
            }
        });
        if let Some(parent) = parent {
            self.jobs.get_mut(&job_id).expect("just created").parent_id = Some(parent.to_owned());
        }
        job_id
    }

    /// Part `part` of the submit's job: a ready job with its `job:ready` (`isPart: true`).
    fn submit_part(&mut self, plan: &SubmitPlan, parent: &str, part: u64) -> SubmittedPart {
        let part_id = self.new_submit_job(plan, Some(parent));
        let job = self.jobs.get_mut(&part_id).expect("just created");
        job.status = "ready";
        job.fields.insert("part".to_owned(), json!(part));
        job.fields.insert(
            "partData".to_owned(),
            json!({ "part": part, "total": plan.parts }),
        );
        let (context, payload) = (job.context.clone(), job.payload());
        let event = self.emit(
            &plan.environment_id,
            "job:ready",
            None,
            context,
            payload,
            None,
        );
        SubmittedPart {
            job_id: part_id,
            event_id: event.id,
            part,
            total: plan.parts,
        }
    }
}
