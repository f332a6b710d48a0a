//! The simulator's mutable world: created workbooks, record overlays and commits, the event log
//! and jobs. One mutex guards all of it, so an operation that touches several parts (a submit
//! creates a workbook, a job and two events) is seen whole or not at all, and every operation
//! checks its whole input before it changes anything.

use std::collections::{BTreeSet, HashMap, HashSet};

use axum::http::StatusCode;
use serde_json::{Map, Value as Json, json};

use crate::admin::{
    EmitEvent, EventRef, NewRecords, RecordEdit, RecordsChange, SheetRow, SimEvent, SubmitRequest,
    Submitted, SubmittedSheet,
};
use crate::generate::{self, CellEdits, Counts, RecordsWriter, SheetKey, SheetRef};
use crate::{DEFAULT_ENVIRONMENT_ID, JobState, SimConfig, SimError, clock};

/// Who acknowledges events: the simulator does not tell API keys apart beyond environments.
const ACK_ACTOR: &str = "us_key_sim";
/// Most records one `{count}` request may add: enough for any test, small enough to answer fast.
const MAX_ADDED_AT_ONCE: u64 = 1_000_000;

/// A refused operation: HTTP status, the field at fault, and why.
#[derive(Debug)]
pub(crate) struct Rejection {
    pub(crate) status: StatusCode,
    pub(crate) key: Option<String>,
    pub(crate) message: String,
}

impl Rejection {
    pub(crate) fn bad(key: impl Into<String>, message: impl Into<String>) -> Rejection {
        Rejection {
            status: StatusCode::BAD_REQUEST,
            key: Some(key.into()),
            message: message.into(),
        }
    }

    pub(crate) fn not_found(key: impl Into<String>, message: impl Into<String>) -> Rejection {
        Rejection {
            status: StatusCode::NOT_FOUND,
            key: Some(key.into()),
            message: message.into(),
        }
    }

    pub(crate) fn sheet_not_found(sheet_id: &str) -> Rejection {
        Rejection::not_found("sheetId", format!("Sheet {sheet_id} not found"))
    }
}

impl From<Rejection> for SimError {
    fn from(rejection: Rejection) -> SimError {
        SimError::Rejected {
            status: rejection.status.as_u16(),
            field: rejection.key,
            message: rejection.message,
        }
    }
}

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

/// `GET /v1/sheets/{id}/records` parameters beyond the sheet.
#[derive(Clone, Debug, Default)]
pub(crate) struct RecordsQuery {
    pub(crate) page_number: u64,
    pub(crate) page_size: u64,
    pub(crate) ids: Vec<String>,
    pub(crate) commit_id: Option<String>,
    pub(crate) since_commit_id: Option<String>,
}

impl RecordsQuery {
    /// Whether this asks for a plain page of the whole sheet.
    pub(crate) fn is_plain(&self) -> bool {
        self.ids.is_empty() && self.commit_id.is_none() && self.since_commit_id.is_none()
    }
}

/// `GET /v1/events` parameters, checked.
#[derive(Clone, Debug)]
pub(crate) struct EventsQuery {
    pub(crate) environment_id: String,
    pub(crate) since_ms: Option<u64>,
    pub(crate) topic: Option<String>,
    pub(crate) domain: Option<String>,
    pub(crate) space_id: Option<String>,
    pub(crate) include_acknowledged: bool,
    pub(crate) page_number: u64,
    pub(crate) page_size: u64,
    pub(crate) order: crate::EventsOrder,
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

#[derive(Debug)]
struct AddedRecord {
    id: String,
    /// One value per field, in schema order.
    cells: Vec<Json>,
    error: Option<(usize, &'static str)>,
    updated_ms: u64,
    deleted: bool,
}

/// A record of a sheet: a generated row (by index) or an added record (by position).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum RecordRef {
    Generated(u64),
    Added(usize),
}

/// What the admin API changed in one sheet. A sheet without one is served straight from the
/// generator, which is what keeps 100,000-row sheets fast.
#[derive(Debug, Default)]
struct SheetOverlay {
    /// Indices of deleted generated rows.
    deleted: BTreeSet<u64>,
    /// Edited cells of generated rows.
    edits: HashMap<u64, CellEdits>,
    /// Added records in order, deleted ones included (flagged) so positions stay valid.
    added: Vec<AddedRecord>,
    added_positions: HashMap<String, usize>,
    added_alive: u64,
    /// This sheet's commits, oldest first.
    commits: Vec<String>,
}

impl SheetOverlay {
    /// The live record with this id.
    fn resolve(&self, key: SheetKey, sheet: &SheetRef, id: &str) -> Option<RecordRef> {
        if let Some(index) = key.record_index(id, sheet.rows) {
            return (!self.deleted.contains(&index)).then_some(RecordRef::Generated(index));
        }
        let position = *self.added_positions.get(id)?;
        (!self.added[position].deleted).then_some(RecordRef::Added(position))
    }

    /// The current value of one cell.
    fn cell(&self, key: SheetKey, sheet: &SheetRef, record: RecordRef, position: usize) -> Json {
        match record {
            RecordRef::Generated(index) => self
                .edits
                .get(&index)
                .and_then(|edits| edits.get(position))
                .cloned()
                .unwrap_or_else(|| key.row(sheet.kind, index).cells[position].to_json()),
            RecordRef::Added(position_in_sheet) => {
                self.added[position_in_sheet].cells[position].clone()
            }
        }
    }

    fn visible_generated(&self, sheet: &SheetRef) -> u64 {
        sheet.rows - self.deleted.len() as u64
    }

    /// Index of the `position`-th generated row that is not deleted.
    fn nth_visible(&self, position: u64) -> u64 {
        let mut index = position;
        // Each deleted index at or before the candidate pushes it one further.
        for deleted in &self.deleted {
            if *deleted <= index {
                index += 1;
            } else {
                break;
            }
        }
        index
    }

    fn counts(&self, sheet: &SheetRef) -> Counts {
        let invalid_field = sheet.kind.invalid_field();
        let deleted_invalid = self
            .deleted
            .iter()
            .filter(|index| generate::is_invalid_row(**index))
            .count() as u64;
        let fixed = self
            .edits
            .iter()
            .filter(|(index, edits)| {
                generate::is_invalid_row(**index)
                    && !self.deleted.contains(index)
                    && edits.get(invalid_field).is_some()
            })
            .count() as u64;
        let added_errors = self
            .added
            .iter()
            .filter(|record| !record.deleted && record.error.is_some())
            .count() as u64;
        Counts {
            total: self.visible_generated(sheet) + self.added_alive,
            error: generate::invalid_rows(sheet.rows) - deleted_invalid - fixed + added_errors,
        }
    }

    fn write(&self, writer: &mut RecordsWriter, out: &mut Vec<u8>, record: RecordRef) {
        match record {
            RecordRef::Generated(index) => writer.generated(out, index, self.edits.get(&index)),
            RecordRef::Added(position) => {
                let added = &self.added[position];
                writer.custom(out, &added.id, &added.cells, added.error, added.updated_ms);
            }
        }
    }

    /// The record reduced to what a sink receives.
    fn sheet_row(&self, key: SheetKey, sheet: &SheetRef, record: RecordRef) -> SheetRow {
        let fields = sheet.kind.fields();
        match record {
            RecordRef::Generated(index) => {
                let row = key.row(sheet.kind, index);
                let edits = self.edits.get(&index);
                let edited = |position: usize| edits.and_then(|edits| edits.get(position));
                SheetRow {
                    id: key.record_id(index),
                    valid: row
                        .error
                        .is_none_or(|(position, _)| edited(position).is_some()),
                    values: fields
                        .iter()
                        .zip(&row.cells)
                        .enumerate()
                        .map(|(position, (field, value))| {
                            let value =
                                edited(position).cloned().unwrap_or_else(|| value.to_json());
                            (field.key.to_owned(), value)
                        })
                        .collect(),
                }
            }
            RecordRef::Added(position) => {
                let added = &self.added[position];
                SheetRow {
                    id: added.id.clone(),
                    valid: added.error.is_none(),
                    values: fields
                        .iter()
                        .zip(&added.cells)
                        .map(|(field, value)| (field.key.to_owned(), value.clone()))
                        .collect(),
                }
            }
        }
    }
}

#[derive(Debug)]
struct EventRecord {
    event: SimEvent,
    environment_id: String,
    created_ms: u64,
}

/// Where a job created by a submit came from, to describe it and to emit its lifecycle events.
#[derive(Clone, Debug)]
struct JobOrigin {
    environment_id: String,
    /// `<domain>:<operation>`.
    job: String,
    /// The workbook or sheet submitted.
    subject_id: String,
    context: Map<String, Json>,
}

impl JobOrigin {
    fn split(&self) -> (&str, &str) {
        self.job.split_once(':').unwrap_or((&self.job, ""))
    }

    fn payload(&self, status: &str, info: Option<&str>) -> Json {
        let (domain, operation) = self.split();
        json!({
            "job": self.job,
            "operation": operation,
            "domain": domain,
            "status": status,
            "isPart": false,
            "info": info,
            "input": {},
        })
    }
}

#[derive(Clone, Debug)]
pub(crate) struct JobRecord {
    pub(crate) status: &'static str,
    pub(crate) progress: Vec<u8>,
    pub(crate) info: Option<String>,
    pub(crate) outcome: Option<Json>,
    created_ms: u64,
    pub(crate) updated_ms: u64,
    pub(crate) started_ms: Option<u64>,
    pub(crate) finished_ms: Option<u64>,
    origin: Option<JobOrigin>,
}

impl JobRecord {
    /// A job first seen through the jobs API (its submit event came from elsewhere).
    pub(crate) fn new() -> JobRecord {
        let now = clock::now_ms();
        JobRecord {
            status: "created",
            progress: Vec::new(),
            info: None,
            outcome: None,
            created_ms: now,
            updated_ms: now,
            started_ms: None,
            finished_ms: None,
            origin: None,
        }
    }

    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.status, "complete" | "failed")
    }

    pub(crate) fn state(&self, id: &str) -> JobState {
        JobState {
            id: id.to_owned(),
            status: self.status.to_owned(),
            progress: self.progress.clone(),
            info: self.info.clone(),
            outcome_message: self
                .outcome
                .as_ref()
                .and_then(|outcome| outcome.get("message"))
                .and_then(Json::as_str)
                .map(str::to_owned),
        }
    }

    pub(crate) fn to_json(&self, id: &str) -> Json {
        // A job the simulator did not create is not linked to a workbook: its job:ready event
        // carried the workbook id, and nothing in flatsync reads it from the job.
        let (environment_id, kind, operation, source) = match &self.origin {
            Some(origin) => {
                let (kind, operation) = origin.split();
                (
                    origin.environment_id.as_str(),
                    kind,
                    operation,
                    origin.subject_id.as_str(),
                )
            }
            None => (
                DEFAULT_ENVIRONMENT_ID,
                "workbook",
                "submitActionFg",
                "us_wb_sim",
            ),
        };
        json!({ "data": {
            "id": id,
            "createdBy": generate::ACTOR_ID,
            "createdAt": clock::iso_millis(self.created_ms),
            "updatedAt": clock::iso_millis(self.updated_ms),
            "startedAt": self.started_ms.map(clock::iso_millis),
            "finishedAt": self.finished_ms.map(clock::iso_millis),
            "environmentId": environment_id,
            "spaceId": generate::SPACE_ID,
            "type": kind,
            "operation": operation,
            "source": source,
            "config": {},
            "trigger": "immediate",
            "status": self.status,
            "progress": self.progress.last().copied().unwrap_or(0),
            "mode": "foreground",
            "input": {},
            "subject": { "type": "resource", "id": source },
            "info": self.info,
            "outcome": self.outcome,
            "managed": true,
        }})
    }
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
    pub(crate) jobs: HashMap<String, JobRecord>,
}

fn base_context(environment_id: &str) -> Map<String, Json> {
    let mut context = Map::new();
    context.insert("accountId".to_owned(), json!(generate::ACCOUNT_ID));
    context.insert("environmentId".to_owned(), json!(environment_id));
    context.insert("spaceId".to_owned(), json!(generate::SPACE_ID));
    context
}

fn sheet_context(scope: &SheetScope) -> Map<String, Json> {
    let mut context = base_context(scope.environment_id());
    context.insert("workbookId".to_owned(), json!(scope.sheet.workbook_id));
    context.insert("sheetId".to_owned(), json!(scope.sheet.id));
    context.insert("sheetSlug".to_owned(), json!(scope.sheet.kind.slug()));
    context.insert("actorId".to_owned(), json!(generate::ACTOR_ID));
    context
}

/// A record's values in schema order, refusing keys that are not fields of the sheet.
fn cells_of(
    sheet: &SheetRef,
    values: &Map<String, Json>,
    at: &str,
) -> Result<Vec<Json>, Rejection> {
    let fields = sheet.kind.fields();
    if let Some(unknown) = values
        .keys()
        .find(|key| !fields.iter().any(|field| field.key == key.as_str()))
    {
        return Err(Rejection::bad(
            format!("{at}.{unknown}"),
            format!(
                "{unknown} is not a field of sheet {}; its fields are {}",
                sheet.kind.slug(),
                field_list(sheet)
            ),
        ));
    }
    Ok(fields
        .iter()
        .map(|field| values.get(field.key).cloned().unwrap_or(Json::Null))
        .collect())
}

fn field_list(sheet: &SheetRef) -> String {
    sheet
        .kind
        .fields()
        .iter()
        .map(|field| field.key)
        .collect::<Vec<_>>()
        .join(", ")
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

    pub(crate) fn has_overlay(&self, sheet_id: &str) -> bool {
        self.overlays.contains_key(sheet_id)
    }

    pub(crate) fn counts(&self, sheet: &SheetRef) -> Counts {
        self.overlays
            .get(&sheet.id)
            .map_or_else(|| Counts::generated(sheet), |overlay| overlay.counts(sheet))
    }

    /// Records `commit_ids` touched, live ones only, each once, in the order first touched.
    fn touched(
        &self,
        overlay: &SheetOverlay,
        key: SheetKey,
        sheet: &SheetRef,
        commit_ids: &[String],
    ) -> Vec<RecordRef> {
        let mut seen = HashSet::new();
        commit_ids
            .iter()
            .filter_map(|commit_id| self.commits.get(commit_id))
            .flatten()
            .filter_map(|id| overlay.resolve(key, sheet, id))
            .filter(|record| seen.insert(*record))
            .collect()
    }

    /// Writes a page of `GET /v1/sheets/{id}/records` with the overlay, `ids`, `commitId` and
    /// `sinceCommitId` applied.
    pub(crate) fn write_records(
        &self,
        seed: u64,
        sheet: &SheetRef,
        query: &RecordsQuery,
        out: &mut Vec<u8>,
    ) -> Result<(), Rejection> {
        enum Selection {
            All,
            Generated,
            Listed(Vec<RecordRef>),
        }
        let empty = SheetOverlay::default();
        let overlay = self.overlays.get(&sheet.id).unwrap_or(&empty);
        let key = SheetKey::new(seed, sheet);
        let import_commit = key.commit_id();
        let mut selection = Selection::All;
        if let Some(commit_id) = &query.commit_id {
            selection = if *commit_id == import_commit {
                Selection::Generated
            } else if overlay.commits.contains(commit_id) {
                Selection::Listed(self.touched(
                    overlay,
                    key,
                    sheet,
                    std::slice::from_ref(commit_id),
                ))
            } else {
                return Err(Rejection::not_found(
                    "commitId",
                    format!("Commit {commit_id} not found in sheet {}", sheet.id),
                ));
            };
        }
        if let Some(since) = &query.since_commit_id {
            if query.commit_id.is_some() {
                return Err(Rejection::bad(
                    "sinceCommitId",
                    "use either commitId or sinceCommitId, not both",
                ));
            }
            let later = if *since == import_commit {
                &overlay.commits[..]
            } else {
                let position = overlay
                    .commits
                    .iter()
                    .position(|commit_id| commit_id == since)
                    .ok_or_else(|| {
                        Rejection::not_found(
                            "sinceCommitId",
                            format!("Commit {since} not found in sheet {}", sheet.id),
                        )
                    })?;
                &overlay.commits[position + 1..]
            };
            selection = Selection::Listed(self.touched(overlay, key, sheet, later));
        }
        if !query.ids.is_empty() {
            let allowed: Option<HashSet<RecordRef>> = match &selection {
                Selection::Listed(listed) => Some(listed.iter().copied().collect()),
                Selection::All | Selection::Generated => None,
            };
            let generated_only = matches!(selection, Selection::Generated);
            let mut seen = HashSet::new();
            let listed = query
                .ids
                .iter()
                .filter_map(|id| overlay.resolve(key, sheet, id))
                .filter(|record| !generated_only || matches!(record, RecordRef::Generated(_)))
                .filter(|record| {
                    allowed
                        .as_ref()
                        .is_none_or(|allowed| allowed.contains(record))
                })
                .filter(|record| seen.insert(*record))
                .collect();
            selection = Selection::Listed(listed);
        }

        let start = (query.page_number - 1).saturating_mul(query.page_size);
        let mut writer = RecordsWriter::start(out, seed, sheet);
        match &selection {
            Selection::Listed(listed) => {
                let skip = usize::try_from(start).unwrap_or(usize::MAX);
                let take = usize::try_from(query.page_size).unwrap_or(usize::MAX);
                for record in listed.iter().skip(skip).take(take) {
                    overlay.write(&mut writer, out, *record);
                }
            }
            Selection::All | Selection::Generated => {
                let generated = overlay.visible_generated(sheet);
                let mut remaining = query.page_size;
                let mut position = start;
                if position < generated {
                    let mut index = overlay.nth_visible(position);
                    while remaining > 0 && position < generated {
                        if overlay.deleted.contains(&index) {
                            index += 1;
                            continue;
                        }
                        overlay.write(&mut writer, out, RecordRef::Generated(index));
                        index += 1;
                        position += 1;
                        remaining -= 1;
                    }
                }
                if matches!(selection, Selection::All) && remaining > 0 {
                    let skip =
                        usize::try_from(position.saturating_sub(generated)).unwrap_or(usize::MAX);
                    let take = usize::try_from(remaining).unwrap_or(usize::MAX);
                    let added = (0..overlay.added.len())
                        .filter(|position| !overlay.added[*position].deleted)
                        .skip(skip)
                        .take(take);
                    for position in added {
                        overlay.write(&mut writer, out, RecordRef::Added(position));
                    }
                }
            }
        }
        let latest_commit = overlay.commits.last().unwrap_or(&import_commit);
        writer.finish(out, overlay.counts(sheet), latest_commit);
        Ok(())
    }

    /// The sheet as it is now, in served order; `None` when there is no such sheet.
    pub(crate) fn sheet_rows(&self, config: &SimConfig, sheet_id: &str) -> Option<Vec<SheetRow>> {
        let scope = self.find_sheet(config, sheet_id)?;
        let sheet = &scope.sheet;
        let empty = SheetOverlay::default();
        let overlay = self.overlays.get(&sheet.id).unwrap_or(&empty);
        let key = SheetKey::new(config.seed, sheet);
        let generated = (0..sheet.rows)
            .filter(|index| !overlay.deleted.contains(index))
            .map(RecordRef::Generated);
        let added = (0..overlay.added.len())
            .filter(|position| !overlay.added[*position].deleted)
            .map(RecordRef::Added);
        Some(
            generated
                .chain(added)
                .map(|record| overlay.sheet_row(key, sheet, record))
                .collect(),
        )
    }

    fn emit(
        &mut self,
        environment_id: &str,
        topic: &str,
        domain: Option<&str>,
        context: Map<String, Json>,
        payload: Json,
        data_url: Option<String>,
    ) -> EventRef {
        // Strictly increasing timestamps, so `since = last createdAt` never skips a later event
        // and ordering by createdAt is the emission order.
        let created_ms = clock::now_ms().max(self.last_event_ms + 1);
        self.last_event_ms = created_ms;
        self.next.event += 1;
        let id = format!("us_evt_{}_{}", self.tag, self.next.event);
        let domain = domain
            .unwrap_or_else(|| topic.split_once(':').map_or(topic, |(domain, _)| domain))
            .to_owned();
        let event = SimEvent {
            id: id.clone(),
            topic: topic.to_owned(),
            domain,
            context,
            payload,
            created_at: clock::iso_millis(created_ms),
            data_url,
            acknowledged_at: None,
            acknowledged_by: None,
            ack_count: 0,
        };
        tracing::debug!(event = %id, topic, environment = environment_id, "Event emitted");
        self.event_positions.insert(id.clone(), self.events.len());
        self.events.push(EventRecord {
            event,
            environment_id: environment_id.to_owned(),
            created_ms,
        });
        EventRef {
            id,
            topic: topic.to_owned(),
        }
    }

    fn new_commit(&mut self, sheet_id: &str, record_ids: &[String]) -> String {
        self.next.commit += 1;
        let id = format!("us_vr_{}_{}", self.tag, self.next.commit);
        self.commits.insert(id.clone(), record_ids.to_vec());
        self.overlays
            .entry(sheet_id.to_owned())
            .or_default()
            .commits
            .push(id.clone());
        id
    }

    fn emit_commit_events(&mut self, scope: &SheetScope, commit_id: &str) -> Vec<EventRef> {
        let sheet = &scope.sheet;
        let mut context = sheet_context(scope);
        context.insert("commitId".to_owned(), json!(commit_id));
        context.insert("versionId".to_owned(), json!(commit_id));
        let created = self.emit(
            scope.environment_id(),
            "commit:created",
            None,
            context.clone(),
            json!({
                "sheetId": sheet.id,
                "workbookId": sheet.workbook_id,
                "versionId": commit_id,
                "sheetSlug": sheet.kind.slug(),
            }),
            Some(format!(
                "v1/sheets/{}/records?commitId={commit_id}",
                sheet.id
            )),
        );
        let completed = self.emit(
            scope.environment_id(),
            "commit:completed",
            None,
            context,
            json!({
                "sheetId": sheet.id,
                "workbookId": sheet.workbook_id,
                "versionId": commit_id,
                "commitId": commit_id,
            }),
            None,
        );
        vec![created, completed]
    }

    pub(crate) fn add_records(
        &mut self,
        config: &SimConfig,
        sheet_id: &str,
        records: &NewRecords,
    ) -> Result<RecordsChange, Rejection> {
        let scope = self
            .find_sheet(config, sheet_id)
            .ok_or_else(|| Rejection::sheet_not_found(sheet_id))?;
        let sheet = &scope.sheet;
        let already_added = self
            .overlays
            .get(&sheet.id)
            .map_or(0, |overlay| overlay.added.len() as u64);
        let new: Vec<generate::CellValues> = match records {
            NewRecords::Values(list) => {
                if list.is_empty() {
                    return Err(Rejection::bad("records", "records must not be empty"));
                }
                list.iter()
                    .enumerate()
                    .map(|(at, values)| {
                        Ok((cells_of(sheet, values, &format!("records[{at}]"))?, None))
                    })
                    .collect::<Result<_, Rejection>>()?
            }
            NewRecords::Count(count) => {
                if !(1..=MAX_ADDED_AT_ONCE).contains(count) {
                    return Err(Rejection::bad(
                        "count",
                        format!("count must be between 1 and {MAX_ADDED_AT_ONCE}"),
                    ));
                }
                (already_added..already_added + count)
                    .map(|ordinal| generate::added_row(config.seed, sheet, ordinal))
                    .collect()
            }
        };
        let now = clock::now_ms();
        let mut ids = Vec::with_capacity(new.len());
        let overlay = self.overlays.entry(sheet.id.clone()).or_default();
        for (cells, error) in new {
            self.next.record += 1;
            let id = format!("us_rc_{}_a{}", self.tag, self.next.record);
            overlay
                .added_positions
                .insert(id.clone(), overlay.added.len());
            overlay.added.push(AddedRecord {
                id: id.clone(),
                cells,
                error,
                updated_ms: now,
                deleted: false,
            });
            overlay.added_alive += 1;
            ids.push(id);
        }
        let commit_id = self.new_commit(&sheet.id, &ids);
        let created = self.emit(
            scope.environment_id(),
            "records:created",
            None,
            sheet_context(&scope),
            json!({ "sheetId": sheet.id, "recordIds": ids, "recordCount": ids.len() }),
            None,
        );
        let mut events = vec![created];
        events.extend(self.emit_commit_events(&scope, &commit_id));
        Ok(RecordsChange {
            record_ids: ids,
            commit_id: Some(commit_id),
            events,
        })
    }

    pub(crate) fn edit_records(
        &mut self,
        config: &SimConfig,
        sheet_id: &str,
        edits: &[RecordEdit],
    ) -> Result<RecordsChange, Rejection> {
        let scope = self
            .find_sheet(config, sheet_id)
            .ok_or_else(|| Rejection::sheet_not_found(sheet_id))?;
        let sheet = &scope.sheet;
        if edits.is_empty() {
            return Err(Rejection::bad("records", "records must not be empty"));
        }
        let key = SheetKey::new(config.seed, sheet);
        let fields = sheet.kind.fields();
        let mut planned = Vec::with_capacity(edits.len());
        {
            let empty = SheetOverlay::default();
            let overlay = self.overlays.get(&sheet.id).unwrap_or(&empty);
            for (at, edit) in edits.iter().enumerate() {
                let record = overlay.resolve(key, sheet, &edit.id).ok_or_else(|| {
                    Rejection::bad(
                        format!("records[{at}].id"),
                        format!(
                            "record {} is not a live record of sheet {}",
                            edit.id, sheet.id
                        ),
                    )
                })?;
                if edit.values.is_empty() {
                    return Err(Rejection::bad(
                        format!("records[{at}].values"),
                        "values must name at least one field",
                    ));
                }
                // Validated as a whole record so the error names the bad key.
                cells_of(sheet, &edit.values, &format!("records[{at}].values"))?;
                let cells: Vec<(usize, Json)> = edit
                    .values
                    .iter()
                    .map(|(field_key, value)| {
                        let position = fields
                            .iter()
                            .position(|field| field.key == field_key.as_str())
                            .expect("cells_of accepted only field keys");
                        (position, value.clone())
                    })
                    .collect();
                planned.push((record, edit.id.clone(), cells));
            }
        }
        let now = clock::now_ms();
        let overlay = self.overlays.entry(sheet.id.clone()).or_default();
        let mut changes = Vec::new();
        let mut touched: Vec<String> = Vec::new();
        for (record, id, cells) in planned {
            for (position, value) in cells {
                let previous = overlay.cell(key, sheet, record, position);
                changes.push(json!({
                    "recordId": id,
                    "fieldKey": fields[position].key,
                    "previousValue": previous,
                    "newValue": value,
                }));
                match record {
                    RecordRef::Generated(index) => {
                        let edits = overlay.edits.entry(index).or_default();
                        edits.set(position, value);
                        edits.updated_ms = now;
                    }
                    RecordRef::Added(at) => {
                        let added = &mut overlay.added[at];
                        added.cells[position] = value;
                        // An edited cell is valid, as for generated rows.
                        if added.error.is_some_and(|(field, _)| field == position) {
                            added.error = None;
                        }
                        added.updated_ms = now;
                    }
                }
            }
            if !touched.contains(&id) {
                touched.push(id);
            }
        }
        let commit_id = self.new_commit(&sheet.id, &touched);
        let updated = self.emit(
            scope.environment_id(),
            "records:updated",
            None,
            sheet_context(&scope),
            json!({ "sheetId": sheet.id, "recordIds": touched, "changes": changes }),
            None,
        );
        let mut events = vec![updated];
        events.extend(self.emit_commit_events(&scope, &commit_id));
        Ok(RecordsChange {
            record_ids: touched,
            commit_id: Some(commit_id),
            events,
        })
    }

    pub(crate) fn delete_records(
        &mut self,
        config: &SimConfig,
        sheet_id: &str,
        ids: &[String],
    ) -> Result<RecordsChange, Rejection> {
        let scope = self
            .find_sheet(config, sheet_id)
            .ok_or_else(|| Rejection::sheet_not_found(sheet_id))?;
        let sheet = &scope.sheet;
        if ids.is_empty() {
            return Err(Rejection::bad("ids", "ids must not be empty"));
        }
        let key = SheetKey::new(config.seed, sheet);
        let mut planned = Vec::with_capacity(ids.len());
        {
            let empty = SheetOverlay::default();
            let overlay = self.overlays.get(&sheet.id).unwrap_or(&empty);
            for (at, id) in ids.iter().enumerate() {
                let record = overlay.resolve(key, sheet, id).ok_or_else(|| {
                    Rejection::bad(
                        "ids",
                        format!("ids[{at}]: {id} is not a live record of sheet {}", sheet.id),
                    )
                })?;
                if planned.contains(&record) {
                    return Err(Rejection::bad(
                        "ids",
                        format!("ids[{at}]: {id} is listed twice"),
                    ));
                }
                planned.push(record);
            }
        }
        let overlay = self.overlays.entry(sheet.id.clone()).or_default();
        for record in planned {
            match record {
                RecordRef::Generated(index) => {
                    overlay.deleted.insert(index);
                    overlay.edits.remove(&index);
                }
                RecordRef::Added(position) => {
                    overlay.added[position].deleted = true;
                    overlay.added_alive -= 1;
                }
            }
        }
        let deleted = self.emit(
            scope.environment_id(),
            "records:deleted",
            None,
            sheet_context(&scope),
            json!({ "sheetId": sheet.id, "recordIds": ids, "recordCount": ids.len() }),
            None,
        );
        Ok(RecordsChange {
            record_ids: ids.to_vec(),
            commit_id: None,
            events: vec![deleted],
        })
    }

    pub(crate) fn submit(
        &mut self,
        config: &SimConfig,
        request: &SubmitRequest,
    ) -> Result<Submitted, Rejection> {
        if let Some(environment_id) = &request.environment_id {
            check_environment(config, environment_id, "environmentId")?;
        }
        let new_workbook = request.workbook_id.is_none();
        let (workbook_id, workbook) = match &request.workbook_id {
            Some(workbook_id) => {
                if request.rows.is_some() {
                    return Err(Rejection::bad(
                        "rows",
                        "rows sizes a new workbook; leave it out when submitting workbookId",
                    ));
                }
                let workbook = self.find_workbook(config, workbook_id).ok_or_else(|| {
                    Rejection::not_found("workbookId", format!("Workbook {workbook_id} not found"))
                })?;
                (workbook_id.clone(), workbook)
            }
            None => {
                let workbook_id = format!("us_wb_{}_{}", self.tag, self.next.workbook + 1);
                let rows = request.rows.unwrap_or(config.rows);
                let sheets =
                    generate::split_workbook(&workbook_id, config.sheets_per_workbook, rows)
                        .expect("a us_wb_ id with a suffix always splits");
                let owner = request
                    .environment_id
                    .clone()
                    .unwrap_or_else(|| DEFAULT_ENVIRONMENT_ID.to_owned());
                (
                    workbook_id,
                    WorkbookScope {
                        sheets,
                        owner: Some(owner),
                    },
                )
            }
        };
        let environment_id = match (&workbook.owner, &request.environment_id) {
            (Some(owner), Some(asked)) if owner != asked => {
                return Err(Rejection::bad(
                    "environmentId",
                    format!("workbook {workbook_id} belongs to environment {owner}, not {asked}"),
                ));
            }
            (Some(owner), _) => owner.clone(),
            (None, Some(asked)) => asked.clone(),
            (None, None) => DEFAULT_ENVIRONMENT_ID.to_owned(),
        };
        let sheets: Vec<SheetRef> = match &request.sheet_slug {
            None => workbook.sheets.clone(),
            Some(slug) => {
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
                vec![sheet.clone()]
            }
        };
        let job_name = match (&request.job, &request.sheet_slug) {
            (Some(job), _) => job.clone(),
            (None, Some(_)) => "sheet:submitActionFg".to_owned(),
            (None, None) => "workbook:submitActionFg".to_owned(),
        };
        if !job_name
            .split_once(':')
            .is_some_and(|(domain, operation)| !domain.is_empty() && !operation.is_empty())
        {
            return Err(Rejection::bad(
                "job",
                format!(
                    "job {job_name:?} is not <domain>:<operation>, e.g. workbook:submitActionFg"
                ),
            ));
        }

        // Everything is checked: change the world.
        if new_workbook {
            self.next.workbook += 1;
            self.workbooks.insert(
                workbook_id.clone(),
                CreatedWorkbook {
                    environment_id: environment_id.clone(),
                    sheets: workbook.sheets.clone(),
                },
            );
        }
        self.next.job += 1;
        let job_id = format!("us_jb_{}_{}", self.tag, self.next.job);
        let mut context = base_context(&environment_id);
        context.insert("workbookId".to_owned(), json!(workbook_id));
        if let (Some(_), [sheet]) = (&request.sheet_slug, sheets.as_slice()) {
            context.insert("sheetId".to_owned(), json!(sheet.id));
            context.insert("sheetSlug".to_owned(), json!(sheet.kind.slug()));
        }
        context.insert("jobId".to_owned(), json!(job_id));
        context.insert("actorId".to_owned(), json!(generate::ACTOR_ID));
        let subject_id = match (&request.sheet_slug, sheets.as_slice()) {
            (Some(_), [sheet]) => sheet.id.clone(),
            _ => workbook_id.clone(),
        };
        let origin = JobOrigin {
            environment_id: environment_id.clone(),
            job: job_name,
            subject_id,
            context: context.clone(),
        };
        let mut job = JobRecord::new();
        job.status = "ready";
        job.origin = Some(origin.clone());
        self.jobs.insert(job_id.clone(), job);
        self.emit(
            &environment_id,
            "job:created",
            None,
            context.clone(),
            origin.payload("created", None),
            None,
        );
        let ready = self.emit(
            &environment_id,
            "job:ready",
            None,
            context,
            origin.payload("ready", None),
            None,
        );
        let sheets = sheets
            .iter()
            .map(|sheet| SubmittedSheet {
                id: sheet.id.clone(),
                slug: sheet.kind.slug().to_owned(),
                rows: self.counts(sheet).total,
            })
            .collect();
        Ok(Submitted {
            event_id: ready.id,
            job_id,
            workbook_id,
            environment_id,
            sheets,
        })
    }

    /// Applies `change` to a job (creating it on first sight), then emits `job:completed` or
    /// `job:failed` when a submit's job just reached that status.
    pub(crate) fn change_job(
        &mut self,
        job_id: &str,
        change: impl FnOnce(&mut JobRecord, u64),
    ) -> Json {
        let job = self
            .jobs
            .entry(job_id.to_owned())
            .or_insert_with(JobRecord::new);
        let before = job.status;
        change(job, clock::now_ms());
        let body = job.to_json(job_id);
        let topic = match job.status {
            "complete" => "job:completed",
            "failed" => "job:failed",
            _ => return body,
        };
        if before == job.status {
            return body;
        }
        if let Some(origin) = job.origin.clone() {
            let payload = origin.payload(job.status, job.info.as_deref());
            self.emit(
                &origin.environment_id,
                topic,
                None,
                origin.context.clone(),
                payload,
                None,
            );
        }
        body
    }

    pub(crate) fn jobs(&self) -> Vec<JobState> {
        let mut jobs: Vec<(&String, &JobRecord)> = self.jobs.iter().collect();
        jobs.sort_by_key(|(id, job)| (job.created_ms, (*id).clone()));
        jobs.into_iter().map(|(id, job)| job.state(id)).collect()
    }

    pub(crate) fn emit_custom(
        &mut self,
        config: &SimConfig,
        request: &EmitEvent,
    ) -> Result<SimEvent, Rejection> {
        if request.topic.trim().is_empty() {
            return Err(Rejection::bad("topic", "topic must be a non-empty string"));
        }
        if request.domain.as_deref().is_some_and(str::is_empty) {
            return Err(Rejection::bad("domain", "domain must not be empty"));
        }
        let from_context = match request
            .context
            .as_ref()
            .and_then(|c| c.get("environmentId"))
        {
            None => None,
            Some(Json::String(id)) => Some(id.as_str()),
            Some(_) => {
                return Err(Rejection::bad(
                    "context.environmentId",
                    "context.environmentId must be a string",
                ));
            }
        };
        let (environment_id, key) = match (request.environment_id.as_deref(), from_context) {
            (Some(given), Some(in_context)) if given != in_context => {
                return Err(Rejection::bad(
                    "context.environmentId",
                    format!(
                        "context.environmentId {in_context} differs from environmentId {given}"
                    ),
                ));
            }
            (Some(given), _) => (given, "environmentId"),
            (None, Some(in_context)) => (in_context, "context.environmentId"),
            (None, None) => (DEFAULT_ENVIRONMENT_ID, "environmentId"),
        };
        check_environment(config, environment_id, key)?;
        let pinned_ms = match request.created_at.as_deref() {
            None => None,
            Some(text) => {
                let ms = clock::parse_iso_millis(text.trim()).ok_or_else(|| {
                    Rejection::bad(
                        "createdAt",
                        "createdAt must be an ISO 8601 date-time, e.g. 2024-05-02T13:58:40.012Z",
                    )
                })?;
                if ms < self.last_event_ms {
                    return Err(Rejection::bad(
                        "createdAt",
                        format!(
                            "createdAt must not be earlier than the last event's, {}",
                            clock::iso_millis(self.last_event_ms)
                        ),
                    ));
                }
                Some(ms)
            }
        };
        let environment_id = environment_id.to_owned();
        let mut context = base_context(&environment_id);
        if let Some(extra) = &request.context {
            context.extend(extra.clone());
        }
        let payload = request.payload.clone().unwrap_or_else(|| json!({}));
        let emitted = self.emit(
            &environment_id,
            &request.topic,
            request.domain.as_deref(),
            context,
            payload,
            None,
        );
        let position = self.event_positions[&emitted.id];
        if let Some(ms) = pinned_ms {
            // Checked above not to be earlier than any event, so the log stays in order.
            let record = &mut self.events[position];
            record.created_ms = ms;
            record.event.created_at = clock::iso_millis(ms);
            self.last_event_ms = ms;
        }
        Ok(self.events[position].event.clone())
    }

    /// Every event, or those of one environment, oldest first.
    pub(crate) fn events(&self, environment_id: Option<&str>) -> Vec<SimEvent> {
        self.events
            .iter()
            .filter(|record| environment_id.is_none_or(|id| record.environment_id == id))
            .map(|record| record.event.clone())
            .collect()
    }

    fn event_record(&self, event_id: &str, environment_id: &str) -> Option<&EventRecord> {
        self.event_positions
            .get(event_id)
            .map(|position| &self.events[*position])
            .filter(|record| record.environment_id == environment_id)
    }

    /// `GET /v1/events/{id}` for a key of `environment_id`.
    pub(crate) fn event(&self, event_id: &str, environment_id: &str) -> Option<Json> {
        self.event_record(event_id, environment_id)
            .map(|record| record.event.to_platform_json())
    }

    /// `POST /v1/events/{id}/ack` for a key of `environment_id`; false for an unknown event.
    pub(crate) fn ack_event(&mut self, event_id: &str, environment_id: &str) -> bool {
        if self.event_record(event_id, environment_id).is_none() {
            return false;
        }
        let position = self.event_positions[event_id];
        let event = &mut self.events[position].event;
        event.ack_count += 1;
        if event.acknowledged_at.is_none() {
            event.acknowledged_at = Some(clock::iso_millis(clock::now_ms()));
            event.acknowledged_by = Some(ACK_ACTOR.to_owned());
        }
        true
    }

    /// One page of `GET /v1/events`.
    pub(crate) fn list_events(&self, query: &EventsQuery) -> Vec<Json> {
        let skip = usize::try_from((query.page_number - 1).saturating_mul(query.page_size))
            .unwrap_or(usize::MAX);
        let take = usize::try_from(query.page_size).unwrap_or(usize::MAX);
        let context_is = |record: &EventRecord, key: &str, wanted: &Option<String>| {
            wanted.as_deref().is_none_or(|wanted| {
                record.event.context.get(key).and_then(Json::as_str) == Some(wanted)
            })
        };
        // Emission order is createdAt order: timestamps never decrease.
        let ordered: Box<dyn Iterator<Item = &EventRecord>> = match query.order {
            crate::EventsOrder::Oldest => Box::new(self.events.iter()),
            crate::EventsOrder::Newest => Box::new(self.events.iter().rev()),
        };
        ordered
            .filter(|record| record.environment_id == query.environment_id)
            .filter(|record| {
                query
                    .since_ms
                    .is_none_or(|since| record.created_ms >= since)
            })
            .filter(|record| query.include_acknowledged || record.event.acknowledged_at.is_none())
            .filter(|record| {
                query
                    .topic
                    .as_deref()
                    .is_none_or(|topic| record.event.topic == topic)
            })
            .filter(|record| {
                query
                    .domain
                    .as_deref()
                    .is_none_or(|domain| record.event.domain == domain)
            })
            .filter(|record| context_is(record, "spaceId", &query.space_id))
            .skip(skip)
            .take(take)
            .map(|record| record.event.to_platform_json())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rows: u64) -> SimConfig {
        SimConfig {
            rows,
            ..SimConfig::default()
        }
    }

    fn page(world: &World, config: &SimConfig, sheet_id: &str, query: RecordsQuery) -> Json {
        let scope = world.find_sheet(config, sheet_id).expect("sheet exists");
        let mut out = Vec::new();
        world
            .write_records(config.seed, &scope.sheet, &query, &mut out)
            .expect("page is served");
        serde_json::from_slice(&out).expect("page is JSON")
    }

    fn ids(page: &Json) -> Vec<String> {
        page["data"]["records"]
            .as_array()
            .expect("records")
            .iter()
            .map(|record| record["id"].as_str().expect("id").to_owned())
            .collect()
    }

    fn all(page_number: u64, page_size: u64) -> RecordsQuery {
        RecordsQuery {
            page_number,
            page_size,
            ..RecordsQuery::default()
        }
    }

    #[test]
    fn paging_skips_deleted_rows_and_ends_with_the_added_ones() {
        let config = config(20);
        let mut world = World::new("t".to_owned());
        let sheet_id = "us_sh_w-contacts";
        let generated = crate::record_ids(&config, sheet_id);
        assert_eq!(generated.len(), 10);
        let deleted = vec![
            generated[0].clone(),
            generated[3].clone(),
            generated[4].clone(),
            generated[9].clone(),
        ];
        world
            .delete_records(&config, sheet_id, &deleted)
            .expect("deleted");
        let added = world
            .add_records(&config, sheet_id, &NewRecords::Count(3))
            .expect("added");
        let mut expected: Vec<String> = generated
            .iter()
            .filter(|id| !deleted.contains(id))
            .cloned()
            .collect();
        expected.extend(added.record_ids.clone());
        assert_eq!(expected.len(), 9);
        for size in 1..=10 {
            let mut served = Vec::new();
            for number in 1..=10 {
                served.extend(ids(&page(&world, &config, sheet_id, all(number, size))));
            }
            assert_eq!(served, expected, "page size {size}");
        }
        let rows: Vec<String> = world
            .sheet_rows(&config, sheet_id)
            .expect("sheet")
            .into_iter()
            .map(|row| row.id)
            .collect();
        assert_eq!(rows, expected);
        assert_eq!(
            world
                .counts(&world.find_sheet(&config, sheet_id).expect("sheet").sheet)
                .total,
            9
        );
    }

    #[test]
    fn counts_follow_deletions_fixes_and_invalid_added_records() {
        let config = config(40);
        let mut world = World::new("t".to_owned());
        let sheet_id = "us_sh_w-contacts";
        let scope = world.find_sheet(&config, sheet_id).expect("sheet");
        assert_eq!(
            world.counts(&scope.sheet),
            Counts {
                total: 20,
                error: 2
            }
        );
        let generated = crate::record_ids(&config, sheet_id);
        // Row 9 is invalid (its email); fixing the email makes it valid.
        let mut values = Map::new();
        values.insert("email".to_owned(), json!("fixed@example.com"));
        world
            .edit_records(
                &config,
                sheet_id,
                &[RecordEdit {
                    id: generated[9].clone(),
                    values,
                }],
            )
            .expect("edited");
        assert_eq!(
            world.counts(&scope.sheet),
            Counts {
                total: 20,
                error: 1
            }
        );
        // Deleting the other invalid row (19) and a valid one.
        world
            .delete_records(
                &config,
                sheet_id,
                &[generated[19].clone(), generated[0].clone()],
            )
            .expect("deleted");
        assert_eq!(
            world.counts(&scope.sheet),
            Counts {
                total: 18,
                error: 0
            }
        );
        // Ten generated added records: the tenth is invalid.
        world
            .add_records(&config, sheet_id, &NewRecords::Count(10))
            .expect("added");
        assert_eq!(
            world.counts(&scope.sheet),
            Counts {
                total: 28,
                error: 1
            }
        );
        let rows = world.sheet_rows(&config, sheet_id).expect("sheet");
        assert_eq!(rows.iter().filter(|row| !row.valid).count(), 1);
    }
}
