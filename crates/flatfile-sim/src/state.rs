//! The simulator's mutable world: created workbooks, record overlays and commits, the event log
//! and jobs. One mutex guards all of it, so an operation that touches several parts (a submit
//! creates a workbook, a job and two events) is seen whole or not at all, and every operation
//! checks its whole input before it changes anything.

use std::collections::{BTreeSet, HashMap, HashSet};

use axum::http::StatusCode;
use serde_json::{Map, Value as Json, json};

use crate::admin::{
    CreatedJob, EmitEvent, EventRef, EventShape, JobRequest, NewRecords, RecordEdit, RecordsChange,
    SheetRow, SimEvent, SubmitRequest, Submitted, SubmittedPart, SubmittedSheet,
};
use crate::generate::{self, CellEdits, Counts, RecordsWriter, SheetKey, SheetRef};
use crate::jobs::{AckDetails, CompleteDetails, JOB_TYPES, JobRecord, JobUpdate, NewJob};
use crate::{
    DEFAULT_ENVIRONMENT_ID, DOMAINS, JobState, SimConfig, SimError, clock, domain_of_topic,
};

/// Who acknowledges events: the simulator does not tell API keys apart beyond environments.
const ACK_ACTOR: &str = "us_key_sim";
/// Most records one `{count}` request may add: enough for any test, small enough to answer fast.
const MAX_ADDED_AT_ONCE: u64 = 1_000_000;
/// Most part jobs one submit may be split into.
const MAX_PARTS: u64 = 1_000;

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

    pub(crate) fn job_not_found(job_id: &str) -> Rejection {
        Rejection::not_found("jobId", format!("Job {job_id} not found"))
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

/// `<type>:<operation>`, the type one of the Platform's `JobType`s.
fn split_job_name(name: &str) -> Result<(&'static str, &str), Rejection> {
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

/// The workbook (and sheet) a job works on, in the context of its events.
fn add_source_ids(context: &mut Map<String, Json>, workbook_id: &str, sheet: Option<&SheetRef>) {
    context.insert("workbookId".to_owned(), json!(workbook_id));
    if let Some(sheet) = sheet {
        context.insert("sheetId".to_owned(), json!(sheet.id));
        context.insert("sheetSlug".to_owned(), json!(sheet.kind.slug()));
    }
}

/// `dataUrl` of a commit's records, relative to the API root as Flatfile's listener resolves it.
fn commit_data_url(sheet_id: &str, commit_id: &str) -> String {
    format!("v1/sheets/{sheet_id}/records?commitId={commit_id}")
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
        let domain = domain.unwrap_or_else(|| domain_of_topic(topic)).to_owned();
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

    fn emit_commit_events(
        &mut self,
        scope: &SheetScope,
        commit_id: &str,
        shape: EventShape,
    ) -> Vec<EventRef> {
        let sheet = &scope.sheet;
        let mut context = sheet_context(scope);
        if shape != EventShape::VersionId {
            context.insert("commitId".to_owned(), json!(commit_id));
        }
        context.insert("versionId".to_owned(), json!(commit_id));
        let (created, completed, data_url) = if shape == EventShape::VersionId {
            // Only the context's deprecated versionId names the commit.
            (
                json!({
                    "sheetId": sheet.id,
                    "workbookId": sheet.workbook_id,
                    "sheetSlug": sheet.kind.slug(),
                }),
                json!({ "sheetId": sheet.id, "workbookId": sheet.workbook_id }),
                None,
            )
        } else {
            (
                json!({
                    "sheetId": sheet.id,
                    "workbookId": sheet.workbook_id,
                    "versionId": commit_id,
                    "sheetSlug": sheet.kind.slug(),
                }),
                json!({
                    "sheetId": sheet.id,
                    "workbookId": sheet.workbook_id,
                    "versionId": commit_id,
                    "commitId": commit_id,
                }),
                Some(commit_data_url(&sheet.id, commit_id)),
            )
        };
        let environment_id = scope.environment_id().to_owned();
        let created = self.emit(
            &environment_id,
            "commit:created",
            None,
            context.clone(),
            created,
            data_url,
        );
        let completed = self.emit(
            &environment_id,
            "commit:completed",
            None,
            context,
            completed,
            None,
        );
        vec![created, completed]
    }

    /// Emits a `records:*` event in `shape`; `full` is the payload of the `recordIds` shape.
    fn emit_records_event(
        &mut self,
        scope: &SheetScope,
        topic: &str,
        shape: EventShape,
        commit_id: Option<&str>,
        full: Json,
        count: usize,
    ) -> EventRef {
        let mut context = sheet_context(scope);
        let (payload, data_url) = match (shape, commit_id) {
            (EventShape::RecordIds, _) => (full, None),
            (EventShape::DataUrl, Some(commit_id)) => (
                json!({ "count": count }),
                Some(commit_data_url(&scope.sheet.id, commit_id)),
            ),
            (EventShape::VersionId, Some(commit_id)) => {
                context.insert("versionId".to_owned(), json!(commit_id));
                (json!({ "count": count }), None)
            }
            _ => (json!({ "count": count }), None),
        };
        let environment_id = scope.environment_id().to_owned();
        self.emit(&environment_id, topic, None, context, payload, data_url)
    }

    pub(crate) fn add_records(
        &mut self,
        config: &SimConfig,
        sheet_id: &str,
        records: &NewRecords,
        shape: EventShape,
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
        let created = self.emit_records_event(
            &scope,
            "records:created",
            shape,
            Some(&commit_id),
            json!({ "sheetId": sheet.id, "recordIds": ids, "recordCount": ids.len() }),
            ids.len(),
        );
        let mut events = vec![created];
        events.extend(self.emit_commit_events(&scope, &commit_id, shape));
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
        shape: EventShape,
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
        let updated = self.emit_records_event(
            &scope,
            "records:updated",
            shape,
            Some(&commit_id),
            json!({ "sheetId": sheet.id, "recordIds": touched, "changes": changes }),
            touched.len(),
        );
        let mut events = vec![updated];
        events.extend(self.emit_commit_events(&scope, &commit_id, shape));
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
        shape: EventShape,
    ) -> Result<RecordsChange, Rejection> {
        if matches!(shape, EventShape::DataUrl | EventShape::VersionId) {
            return Err(Rejection::bad(
                "eventShape",
                format!(
                    "a deletion makes no commit, so it has no {} shape; use recordIds or count",
                    shape.as_str()
                ),
            ));
        }
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
        let deleted = self.emit_records_event(
            &scope,
            "records:deleted",
            shape,
            None,
            json!({ "sheetId": sheet.id, "recordIds": ids, "recordCount": ids.len() }),
            ids.len(),
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
        let name = split_job_name(&job_name)?;
        let parts = match request.parts {
            None => 0,
            Some(parts) if (1..=MAX_PARTS).contains(&parts) => parts,
            Some(_) => {
                return Err(Rejection::bad(
                    "parts",
                    format!("parts must be between 1 and {MAX_PARTS}"),
                ));
            }
        };

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
        let sheet = match (&request.sheet_slug, sheets.as_slice()) {
            (Some(_), [sheet]) => Some(sheet),
            _ => None,
        };
        let source = sheet.map_or_else(|| workbook_id.clone(), |sheet| sheet.id.clone());
        let context_ids = request.context_ids.unwrap_or(true);
        let job_id = self.new_job(&environment_id, name, &source, |context| {
            if context_ids {
                add_source_ids(context, &workbook_id, sheet);
            }
        });
        self.set_status(&job_id, "ready");
        let job = &self.jobs[&job_id];
        let (context, created, ready) = (
            job.context.clone(),
            job.payload_with_status("created"),
            job.payload(),
        );
        self.emit(
            &environment_id,
            "job:created",
            None,
            context.clone(),
            created,
            None,
        );
        let ready = self.emit(&environment_id, "job:ready", None, context, ready, None);
        let mut submitted_parts = Vec::new();
        for part in 1..=parts {
            let part_id = self.new_job(&environment_id, name, &source, |context| {
                if context_ids {
                    add_source_ids(context, &workbook_id, sheet);
                }
            });
            let job = self.jobs.get_mut(&part_id).expect("just created");
            job.status = "ready";
            job.parent_id = Some(job_id.clone());
            job.fields.insert("part".to_owned(), json!(part));
            job.fields.insert(
                "partData".to_owned(),
                json!({ "part": part, "total": parts }),
            );
            let (context, payload) = (job.context.clone(), job.payload());
            let event = self.emit(&environment_id, "job:ready", None, context, payload, None);
            submitted_parts.push(SubmittedPart {
                job_id: part_id,
                event_id: event.id,
                part,
                total: parts,
            });
        }
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
            parts: submitted_parts,
        })
    }

    /// Creates a job in status `created`; `context` adds to the context of its events.
    fn new_job(
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

    fn set_status(&mut self, job_id: &str, status: &'static str) {
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
        let (owner, workbook_id, sheet) = match (&request.workbook_id, &request.sheet_id) {
            (Some(workbook_id), None) => {
                let workbook = self.find_workbook(config, workbook_id).ok_or_else(|| {
                    Rejection::not_found("workbookId", format!("Workbook {workbook_id} not found"))
                })?;
                (workbook.owner, workbook_id.clone(), None)
            }
            (None, Some(sheet_id)) => {
                let scope = self
                    .find_sheet(config, sheet_id)
                    .ok_or_else(|| Rejection::sheet_not_found(sheet_id))?;
                (
                    scope.owner.clone(),
                    scope.sheet.workbook_id.clone(),
                    Some(scope.sheet),
                )
            }
            _ => {
                return Err(Rejection::bad(
                    "workbookId",
                    "give either workbookId or sheetId",
                ));
            }
        };
        let environment_id = match (owner, &request.environment_id) {
            (Some(owner), Some(asked)) if owner != *asked => {
                return Err(Rejection::bad(
                    "environmentId",
                    format!("workbook {workbook_id} belongs to environment {owner}, not {asked}"),
                ));
            }
            (Some(owner), _) => owner,
            (None, Some(asked)) => asked.clone(),
            (None, None) => DEFAULT_ENVIRONMENT_ID.to_owned(),
        };
        let job_name = match (&request.job, &sheet) {
            (Some(job), _) => job.clone(),
            (None, Some(_)) => "sheet:submitActionFg".to_owned(),
            (None, None) => "workbook:submitActionFg".to_owned(),
        };
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
        let ids: Option<(String, Option<SheetRef>)> = match request.kind {
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
                Some((request.source.clone(), None))
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
                Some((scope.sheet.workbook_id.clone(), Some(scope.sheet)))
            }
            _ => None,
        };
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
        let domain = request
            .domain
            .as_deref()
            .unwrap_or_else(|| domain_of_topic(&request.topic));
        if !request.allow_unknown_domain && !DOMAINS.contains(&domain) {
            return Err(Rejection::bad(
                "domain",
                format!(
                    "domain {domain:?} is not one of the Platform's domains ({}); give one, or \
                     set allowUnknownDomain to test a client with it",
                    DOMAINS.join(", ")
                ),
            ));
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
        let domain = domain.to_owned();
        let emitted = self.emit(
            &environment_id,
            &request.topic,
            Some(&domain),
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
            .delete_records(&config, sheet_id, &deleted, EventShape::RecordIds)
            .expect("deleted");
        let added = world
            .add_records(
                &config,
                sheet_id,
                &NewRecords::Count(3),
                EventShape::RecordIds,
            )
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
                EventShape::RecordIds,
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
                EventShape::RecordIds,
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
            .add_records(
                &config,
                sheet_id,
                &NewRecords::Count(10),
                EventShape::RecordIds,
            )
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
