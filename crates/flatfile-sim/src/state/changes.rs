//! Record changes through the admin API: adding, editing and deleting records of a sheet. An
//! add or an edit is one commit, announced by a `records:*` event and the commit's
//! `commit:created` and `commit:completed`; a deletion makes no commit and one event. Every
//! change checks all of its input before it changes the sheet.

use serde_json::{Map, Value as Json, json};

use super::overlay::{AddedRecord, RecordRef};
use super::{SheetScope, World, base_context};
use crate::admin::{EventRef, EventShape, NewRecords, RecordEdit, RecordsChange};
use crate::generate::{self, SheetKey, SheetRef};
use crate::rejection::Rejection;
use crate::{SimConfig, clock};

/// Most records one `{count}` request may add: enough for any test, small enough to answer fast.
const MAX_ADDED_AT_ONCE: u64 = 1_000_000;

/// An edit of one record, checked: the record and its new cells by field position.
struct PlannedEdit {
    record: RecordRef,
    id: String,
    cells: Vec<(usize, Json)>,
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

/// `dataUrl` of a commit's records, relative to the API root as Flatfile's listener resolves it.
fn commit_data_url(sheet_id: &str, commit_id: &str) -> String {
    format!("v1/sheets/{sheet_id}/records?commitId={commit_id}")
}

/// The cells (and error) of each record to add, checked; `already_added` numbers generated ones.
fn new_cells(
    config: &SimConfig,
    sheet: &SheetRef,
    records: &NewRecords,
    already_added: u64,
) -> Result<Vec<generate::CellValues>, Rejection> {
    match records {
        NewRecords::Values(list) => {
            if list.is_empty() {
                return Err(Rejection::bad("records", "records must not be empty"));
            }
            list.iter()
                .enumerate()
                .map(|(at, values)| Ok((cells_of(sheet, values, &format!("records[{at}]"))?, None)))
                .collect()
        }
        NewRecords::Count(count) => {
            if !(1..=MAX_ADDED_AT_ONCE).contains(count) {
                return Err(Rejection::bad(
                    "count",
                    format!("count must be between 1 and {MAX_ADDED_AT_ONCE}"),
                ));
            }
            Ok((already_added..already_added + count)
                .map(|ordinal| generate::added_row(config.seed, sheet, ordinal))
                .collect())
        }
    }
}

impl World {
    /// The sheet a change names, or a 404.
    fn changed_sheet(&self, config: &SimConfig, sheet_id: &str) -> Result<SheetScope, Rejection> {
        self.find_sheet(config, sheet_id)
            .ok_or_else(|| Rejection::sheet_not_found(sheet_id))
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

    /// Makes a commit of `record_ids` and announces it: the `topic` event (`full` is its payload
    /// in the `recordIds` shape), then `commit:created` and `commit:completed`.
    fn commit_change(
        &mut self,
        scope: &SheetScope,
        topic: &str,
        shape: EventShape,
        record_ids: Vec<String>,
        full: Json,
    ) -> RecordsChange {
        let commit_id = self.new_commit(&scope.sheet.id, &record_ids);
        let change = self.emit_records_event(
            scope,
            topic,
            shape,
            Some(&commit_id),
            full,
            record_ids.len(),
        );
        let mut events = vec![change];
        events.extend(self.emit_commit_events(scope, &commit_id, shape));
        RecordsChange {
            record_ids,
            commit_id: Some(commit_id),
            events,
        }
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
        let scope = self.changed_sheet(config, sheet_id)?;
        let sheet = &scope.sheet;
        let already_added = self.overlay(&sheet.id).added.len() as u64;
        let new = new_cells(config, sheet, records, already_added)?;
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
        let full = json!({ "sheetId": sheet.id, "recordIds": ids, "recordCount": ids.len() });
        Ok(self.commit_change(&scope, "records:created", shape, ids, full))
    }

    pub(crate) fn edit_records(
        &mut self,
        config: &SimConfig,
        sheet_id: &str,
        edits: &[RecordEdit],
        shape: EventShape,
    ) -> Result<RecordsChange, Rejection> {
        let scope = self.changed_sheet(config, sheet_id)?;
        let sheet = &scope.sheet;
        if edits.is_empty() {
            return Err(Rejection::bad("records", "records must not be empty"));
        }
        let key = SheetKey::new(config.seed, sheet);
        let planned = self.plan_edits(key, sheet, edits)?;
        let now = clock::now_ms();
        let fields = sheet.kind.fields();
        let overlay = self.overlays.entry(sheet.id.clone()).or_default();
        let mut changes = Vec::new();
        let mut touched: Vec<String> = Vec::new();
        for PlannedEdit { record, id, cells } in planned {
            for (position, value) in cells {
                let previous = overlay.cell(key, sheet, record, position);
                changes.push(json!({
                    "recordId": id,
                    "fieldKey": fields[position].key,
                    "previousValue": previous,
                    "newValue": value,
                }));
                overlay.set_cell(record, position, value, now);
            }
            if !touched.contains(&id) {
                touched.push(id);
            }
        }
        let full = json!({ "sheetId": sheet.id, "recordIds": touched, "changes": changes });
        Ok(self.commit_change(&scope, "records:updated", shape, touched, full))
    }

    /// Checks every edit: a live record, at least one value, every key a field of the sheet.
    fn plan_edits(
        &self,
        key: SheetKey,
        sheet: &SheetRef,
        edits: &[RecordEdit],
    ) -> Result<Vec<PlannedEdit>, Rejection> {
        let fields = sheet.kind.fields();
        let overlay = self.overlay(&sheet.id);
        let mut planned = Vec::with_capacity(edits.len());
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
            let cells = edit
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
            planned.push(PlannedEdit {
                record,
                id: edit.id.clone(),
                cells,
            });
        }
        Ok(planned)
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
        let scope = self.changed_sheet(config, sheet_id)?;
        let sheet = &scope.sheet;
        if ids.is_empty() {
            return Err(Rejection::bad("ids", "ids must not be empty"));
        }
        let planned = self.plan_deletions(SheetKey::new(config.seed, sheet), sheet, ids)?;
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

    /// Checks every id to delete: a live record, named once.
    fn plan_deletions(
        &self,
        key: SheetKey,
        sheet: &SheetRef,
        ids: &[String],
    ) -> Result<Vec<RecordRef>, Rejection> {
        let overlay = self.overlay(&sheet.id);
        let mut planned = Vec::with_capacity(ids.len());
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
        Ok(planned)
    }
}
