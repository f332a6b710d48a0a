//! What the admin API changed in one sheet, and how a record of a changed sheet reads.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value as Json;

use crate::admin::SheetRow;
use crate::generate::{self, CellEdits, Counts, RecordsWriter, SheetKey, SheetRef};

#[derive(Debug)]
pub(super) struct AddedRecord {
    pub(super) id: String,
    /// One value per field, in schema order.
    pub(super) cells: Vec<Json>,
    pub(super) error: Option<(usize, &'static str)>,
    pub(super) updated_ms: u64,
    pub(super) deleted: bool,
}

/// A record of a sheet: a generated row (by index) or an added record (by position).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum RecordRef {
    Generated(u64),
    Added(usize),
}

/// What the admin API changed in one sheet. A sheet without one is served straight from the
/// generator, which is what keeps 100,000-row sheets fast.
#[derive(Debug, Default)]
pub(super) struct SheetOverlay {
    /// Indices of deleted generated rows.
    pub(super) deleted: BTreeSet<u64>,
    /// Edited cells of generated rows.
    pub(super) edits: HashMap<u64, CellEdits>,
    /// Added records in order, deleted ones included (flagged) so positions stay valid.
    pub(super) added: Vec<AddedRecord>,
    pub(super) added_positions: HashMap<String, usize>,
    pub(super) added_alive: u64,
    /// This sheet's commits, oldest first.
    pub(super) commits: Vec<String>,
}

impl SheetOverlay {
    /// The live record with this id.
    pub(super) fn resolve(&self, key: SheetKey, sheet: &SheetRef, id: &str) -> Option<RecordRef> {
        if let Some(index) = key.record_index(id, sheet.rows) {
            return (!self.deleted.contains(&index)).then_some(RecordRef::Generated(index));
        }
        let position = *self.added_positions.get(id)?;
        (!self.added[position].deleted).then_some(RecordRef::Added(position))
    }

    /// The current value of one cell.
    pub(super) fn cell(
        &self,
        key: SheetKey,
        sheet: &SheetRef,
        record: RecordRef,
        position: usize,
    ) -> Json {
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

    /// Sets one cell of a live record, at `now`.
    pub(super) fn set_cell(&mut self, record: RecordRef, position: usize, value: Json, now: u64) {
        match record {
            RecordRef::Generated(index) => {
                let edits = self.edits.entry(index).or_default();
                edits.set(position, value);
                edits.updated_ms = now;
            }
            RecordRef::Added(at) => {
                let added = &mut self.added[at];
                added.cells[position] = value;
                // An edited cell is valid, as for generated rows.
                if added.error.is_some_and(|(field, _)| field == position) {
                    added.error = None;
                }
                added.updated_ms = now;
            }
        }
    }

    pub(super) fn visible_generated(&self, sheet: &SheetRef) -> u64 {
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

    /// The live records in served order: generated rows, then added records.
    pub(super) fn live_records(&self, sheet: &SheetRef) -> impl Iterator<Item = RecordRef> + '_ {
        let generated = (0..sheet.rows)
            .filter(|index| !self.deleted.contains(index))
            .map(RecordRef::Generated);
        generated.chain(self.live_added().map(RecordRef::Added))
    }

    /// Positions of the added records not deleted, in order.
    fn live_added(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.added.len()).filter(|position| !self.added[*position].deleted)
    }

    pub(super) fn counts(&self, sheet: &SheetRef) -> Counts {
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

    pub(super) fn write(&self, writer: &mut RecordsWriter, out: &mut Vec<u8>, record: RecordRef) {
        match record {
            RecordRef::Generated(index) => writer.generated(out, index, self.edits.get(&index)),
            RecordRef::Added(position) => {
                let added = &self.added[position];
                writer.custom(out, &added.id, &added.cells, added.error, added.updated_ms);
            }
        }
    }

    /// Writes up to `size` live records from served position `start`: generated rows, then the
    /// added records when `with_added`. Finds the first row by position, without walking the
    /// rows before it.
    pub(super) fn write_in_order(
        &self,
        writer: &mut RecordsWriter,
        out: &mut Vec<u8>,
        sheet: &SheetRef,
        (start, size): (u64, u64),
        with_added: bool,
    ) {
        let generated = self.visible_generated(sheet);
        let mut remaining = size;
        let mut position = start;
        if position < generated {
            let mut index = self.nth_visible(position);
            while remaining > 0 && position < generated {
                if self.deleted.contains(&index) {
                    index += 1;
                    continue;
                }
                self.write(writer, out, RecordRef::Generated(index));
                index += 1;
                position += 1;
                remaining -= 1;
            }
        }
        if with_added && remaining > 0 {
            let skip = usize::try_from(position.saturating_sub(generated)).unwrap_or(usize::MAX);
            let take = usize::try_from(remaining).unwrap_or(usize::MAX);
            for position in self.live_added().skip(skip).take(take) {
                self.write(writer, out, RecordRef::Added(position));
            }
        }
    }

    /// The record reduced to what a sink receives.
    pub(super) fn sheet_row(&self, key: SheetKey, sheet: &SheetRef, record: RecordRef) -> SheetRow {
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
