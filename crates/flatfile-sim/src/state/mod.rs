//! The simulator's mutable world: created workbooks, record overlays and commits, the event log
//! and jobs. One mutex guards all of it, so an operation that touches several parts (a submit
//! creates a workbook, a job and two events) is seen whole or not at all, and every operation
//! checks its whole input before it changes anything.
//!
//! [`World`] is one struct; its operations live by job, each module adding its own `impl World`:
//! - this module: ids, and finding workbooks and sheets with the environment they belong to;
//! - `overlay`: what the admin API changed in one sheet, and how a changed record reads;
//! - `records`: serving a sheet's records and counts, with the overlay applied;
//! - `changes`: adding, editing and deleting records, each change a commit with its events;
//! - `events`: the event log, `GET /v1/events` and acks;
//! - `jobs`: creating, changing and listing jobs, each status change with its events;
//! - `submit`: a workbook submit, which creates a workbook, a job (and its parts) and events.
//!
//! Reading top-down, `submit` uses `jobs`, `changes` uses `records` and `overlay`, and all of
//! them emit through `events`; none of these depends back on a module before it.

mod changes;
mod events;
mod jobs;
mod overlay;
mod records;
mod submit;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use serde_json::{Map, Value as Json, json};

use self::events::EventRecord;
pub(crate) use self::events::EventsQuery;
use self::overlay::SheetOverlay;
pub(crate) use self::records::RecordsQuery;
use crate::generate::{self, SheetRef};
use crate::jobs::JobRecord;
use crate::rejection::Rejection;
use crate::{DEFAULT_ENVIRONMENT_ID, SimConfig};

/// A sheet and the environment it belongs to; `owner` is `None` for on-the-fly sheets, which
/// every key may read.
#[derive(Clone, Debug)]
pub(crate) struct SheetScope {
    pub(crate) sheet: SheetRef,
    owner: Option<String>,
}

impl SheetScope {
    pub(crate) fn readable_by(&self, environment_id: &str) -> bool {
        self.owner
            .as_deref()
            .is_none_or(|owner| owner == environment_id)
    }

    fn environment_id(&self) -> &str {
        self.owner.as_deref().unwrap_or(DEFAULT_ENVIRONMENT_ID)
    }
}

/// A workbook and the environment it belongs to (`None`: on the fly, readable by every key).
#[derive(Clone, Debug)]
pub(crate) struct WorkbookScope {
    pub(crate) sheets: Vec<SheetRef>,
    pub(crate) owner: Option<String>,
}

impl WorkbookScope {
    pub(crate) fn readable_by(&self, environment_id: &str) -> bool {
        self.owner
            .as_deref()
            .is_none_or(|owner| owner == environment_id)
    }

    pub(crate) fn environment_id(&self) -> &str {
        self.owner.as_deref().unwrap_or(DEFAULT_ENVIRONMENT_ID)
    }
}

#[derive(Debug, Default)]
struct Counters {
    workbook: u64,
    job: u64,
    commit: u64,
    event: u64,
    record: u64,
}

#[derive(Debug)]
struct CreatedWorkbook {
    environment_id: String,
    sheets: Vec<SheetRef>,
}

/// Everything the simulator remembers.
#[derive(Debug)]
pub(crate) struct World {
    /// Part of every id the world makes up, drawn at start so a restarted simulator does not
    /// hand out an event id a client already processed.
    tag: String,
    next: Counters,
    workbooks: HashMap<String, CreatedWorkbook>,
    overlays: HashMap<String, SheetOverlay>,
    /// Commit id to the ids of the records it touched.
    commits: HashMap<String, Vec<String>>,
    events: Vec<EventRecord>,
    event_positions: HashMap<String, usize>,
    last_event_ms: u64,
    jobs: HashMap<String, JobRecord>,
}

fn base_context(environment_id: &str) -> Map<String, Json> {
    let mut context = Map::new();
    context.insert("accountId".to_owned(), json!(generate::ACCOUNT_ID));
    context.insert("environmentId".to_owned(), json!(environment_id));
    context.insert("spaceId".to_owned(), json!(generate::SPACE_ID));
    context
}

fn check_environment(config: &SimConfig, environment_id: &str, key: &str) -> Result<(), Rejection> {
    if config.environment_ids().contains(&environment_id) {
        Ok(())
    } else {
        Err(Rejection::bad(
            key,
            format!(
                "environment {environment_id} is not configured; the environments are {}",
                config.environment_ids().join(", ")
            ),
        ))
    }
}

/// The environment a new job of `workbook_id` belongs to: the workbook's owner, which the
/// request may name but not contradict; an on-the-fly workbook takes the one asked for.
fn job_environment(
    workbook_id: &str,
    owner: Option<&str>,
    asked: Option<&str>,
) -> Result<String, Rejection> {
    match (owner, asked) {
        (Some(owner), Some(asked)) if owner != asked => Err(Rejection::bad(
            "environmentId",
            format!("workbook {workbook_id} belongs to environment {owner}, not {asked}"),
        )),
        (Some(owner), _) => Ok(owner.to_owned()),
        (None, Some(asked)) => Ok(asked.to_owned()),
        (None, None) => Ok(DEFAULT_ENVIRONMENT_ID.to_owned()),
    }
}

impl World {
    pub(crate) fn new(tag: String) -> World {
        World {
            tag,
            next: Counters::default(),
            workbooks: HashMap::new(),
            overlays: HashMap::new(),
            commits: HashMap::new(),
            events: Vec::new(),
            event_positions: HashMap::new(),
            last_event_ms: 0,
            jobs: HashMap::new(),
        }
    }

    pub(crate) fn find_workbook(
        &self,
        config: &SimConfig,
        workbook_id: &str,
    ) -> Option<WorkbookScope> {
        if let Some(created) = self.workbooks.get(workbook_id) {
            return Some(WorkbookScope {
                sheets: created.sheets.clone(),
                owner: Some(created.environment_id.clone()),
            });
        }
        generate::workbook_sheet_refs(config, workbook_id).map(|sheets| WorkbookScope {
            sheets,
            owner: None,
        })
    }

    pub(crate) fn find_sheet(&self, config: &SimConfig, sheet_id: &str) -> Option<SheetScope> {
        let (workbook_id, _) = generate::split_sheet_id(sheet_id)?;
        if let Some(created) = self.workbooks.get(&workbook_id) {
            // A created workbook hides the on-the-fly one of the same id entirely.
            return created
                .sheets
                .iter()
                .find(|sheet| sheet.id == sheet_id)
                .map(|sheet| SheetScope {
                    sheet: sheet.clone(),
                    owner: Some(created.environment_id.clone()),
                });
        }
        generate::decode_sheet(config, sheet_id).map(|sheet| SheetScope { sheet, owner: None })
    }
}
