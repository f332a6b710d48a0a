//! One stream's CSV: its columns and header, written into the partial file that the SDK's
//! `StreamFolder` keeps, and the rewrite that pads the rows when columns were added.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use flatsync_plugin_sdk::files::{
    FolderStream, Found, PartialWriter, SavedPosition, StreamFile, io_fatal, io_retry,
    remove_if_present,
};
use flatsync_plugin_sdk::serde_json::value::RawValue;
use flatsync_plugin_sdk::{Batch, CellValue, FieldColumns, Row, SinkError};
use serde::{Deserialize, Serialize};

use crate::Config;
use crate::record::RecordWriter;

/// The temporary a partial is rewritten to when columns were added after its header.
pub(crate) const REWRITE: &str = "rewrite";

const META_COLUMNS: [&str; 2] = ["_id", "_valid"];
/// The whole header of a deletions file, whatever the config.
const DELETION_COLUMNS: [&str; 2] = ["_id", "_deleted_at"];
const WRITE_BUFFER: usize = 64 * 1024;
/// Marks a column the current row has no value for.
const NO_VALUE: usize = usize::MAX;

/// What `<dir>/.<stream>.csv.state` holds: the position `flush()` made durable.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SavedState {
    applied_seq: u64,
    /// Length of the partial file once batch `applied_seq` was appended.
    offset: u64,
    /// Field columns (after the meta columns), in file order.
    columns: Vec<String>,
    /// How many of `columns` the partial's header line names.
    header_columns: usize,
    /// Whether the stream is a deletions file. Absent (false) in record streams' state files.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deletions: bool,
}

impl SavedPosition for SavedState {
    fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    fn durable_len(&self) -> u64 {
        self.offset
    }

    fn check(&self) -> Result<(), String> {
        let mut distinct: Vec<&String> = self.columns.iter().collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != self.columns.len()
            || self.header_columns > self.columns.len()
            || (self.deletions && !self.columns.is_empty())
        {
            return Err("has inconsistent columns".to_owned());
        }
        Ok(())
    }
}

/// Field columns in file order: the SDK's [`FieldColumns`], growing as keys appear.
#[derive(Debug, Default)]
struct Columns(FieldColumns);

impl Columns {
    fn from_names(names: Vec<String>) -> Self {
        Self(FieldColumns::from_names(names))
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn names(&self) -> &[String] {
        self.0.names()
    }

    /// The column of `key`, added at the end if new.
    fn add(&mut self, key: &str) -> usize {
        self.0
            .get(key)
            .unwrap_or_else(|| self.0.push(key.to_owned()))
    }

    /// The column of `key` at `position` of the row, added at the end if new.
    fn column_at(&mut self, position: usize, key: &str) -> usize {
        if let Some(column) = self.0.at(position, key) {
            return column;
        }
        let column = self.add(key);
        self.0.remember_at(position, column);
        column
    }

    fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }
}

/// A stream in progress: its partial file and what is written into it.
#[derive(Debug)]
pub(crate) struct CsvStream {
    file: StreamFile,
    table: Table,
}

/// The CSV side of a stream: the columns, the header, and how rows become lines.
#[derive(Debug)]
struct Table {
    delimiter: u8,
    meta_columns: bool,
    neutralize_formulas: bool,
    /// A deletions file (`_id,_deleted_at`) rather than records.
    deletions: bool,
    columns: Columns,
    /// How many field columns the partial's header names; `None` until the header is written.
    header_columns: Option<usize>,
    /// Per column, the position of the current row's value for it (or `NO_VALUE`).
    slots: Vec<usize>,
}

impl FolderStream for CsvStream {
    type Saved = SavedState;

    fn file(&self) -> &StreamFile {
        &self.file
    }

    fn file_mut(&mut self) -> &mut StreamFile {
        &mut self.file
    }

    fn saved(&self, applied_seq: u64, len: u64) -> SavedState {
        SavedState {
            applied_seq,
            offset: len,
            columns: self.table.columns.names().to_vec(),
            header_columns: self.table.header_columns.unwrap_or(0),
            deletions: self.table.deletions,
        }
    }

    /// The header is settled here: if columns were added after it was written, the partial is
    /// copied under the full header, short rows padded, and the copy is published instead.
    fn prepare_publish(&mut self) -> Result<Option<PathBuf>, SinkError> {
        if self.table.header_columns == Some(self.table.columns.len()) {
            return Ok(None);
        }
        let rewrite = self.file.temporary_path(REWRITE);
        let result = self.table.rewrite(&self.file, &rewrite);
        if result.is_err() {
            remove_if_present(&rewrite).ok();
        }
        result.map(|()| Some(rewrite))
    }
}

impl CsvStream {
    /// The stream as its files were found. `deletions` says what a fresh stream holds; a
    /// resumed one knows from its state file.
    pub(crate) fn new(found: Found<SavedState>, config: &Config, deletions: bool) -> Self {
        let (file, deletions, columns, header_columns) = match found {
            Found::Fresh(file) => (file, deletions, Columns::default(), None),
            Found::Resumed(file, saved) => (
                file,
                saved.deletions,
                Columns::from_names(saved.columns),
                Some(saved.header_columns),
            ),
        };
        Self {
            file,
            table: Table {
                delimiter: config.delimiter,
                meta_columns: config.meta_columns,
                neutralize_formulas: config.neutralize_formulas,
                deletions,
                columns,
                header_columns,
                slots: Vec::new(),
            },
        }
    }

    /// Refuses a batch of the other sort than the stream's: a stream never mixes records and
    /// deletions.
    pub(crate) fn check_sort(&self, batch: &Batch<'_>) -> Result<(), SinkError> {
        if self.table.deletions == batch.is_deletions() {
            return Ok(());
        }
        let (batch_sort, stream_sort) = if batch.is_deletions() {
            ("deletion", "records")
        } else {
            ("record", "deletions")
        };
        Err(SinkError::fatal(format!(
            "stream {}: a {batch_sort} batch in a stream of {stream_sort}; a stream never mixes \
             the two",
            batch.stream()
        )))
    }

    /// Appends the next batch. On failure the partial, the columns and the header are exactly
    /// as before the call, so the host can send the same batch again.
    pub(crate) fn append(
        &mut self,
        batch: &Batch<'_>,
        lines: &mut Vec<u8>,
    ) -> Result<(), SinkError> {
        let columns_before = self.table.columns.len();
        let header_before = self.table.header_columns;
        let table = &mut self.table;
        let result = self
            .file
            .append(batch, |partial| table.write_batch(partial, batch, lines));
        if result.is_err() {
            self.table.columns.truncate(columns_before);
            self.table.header_columns = header_before;
        }
        result
    }
}

impl Table {
    /// The columns before the field columns: the whole header of a deletions file.
    fn meta(&self) -> &'static [&'static str] {
        if self.deletions {
            &DELETION_COLUMNS
        } else if self.meta_columns {
            &META_COLUMNS
        } else {
            &[]
        }
    }

    /// Rows of any width: a row written before a column was added is short until the rewrite.
    fn writer_builder(&self) -> csv::WriterBuilder {
        let mut builder = csv::WriterBuilder::new();
        builder
            .flexible(true)
            .delimiter(self.delimiter)
            .buffer_capacity(WRITE_BUFFER);
        builder
    }

    /// Writes the rows of `batch` (and the header, on the first batch). The lines are rendered
    /// into `lines` first, so a malformed batch fails before a byte reaches the partial, and
    /// the partial gets one write per batch.
    fn write_batch(
        &mut self,
        partial: &mut PartialWriter<'_>,
        batch: &Batch<'_>,
        lines: &mut Vec<u8>,
    ) -> Result<(), SinkError> {
        lines.clear();
        if self.deletions {
            self.write_deletions(lines, batch)?;
        } else {
            self.write_records(lines, batch)?;
        }
        partial.write_bytes(lines)
    }

    fn write_records(&mut self, lines: &mut Vec<u8>, batch: &Batch<'_>) -> Result<(), SinkError> {
        for field in batch.fields()? {
            self.columns.add(&field);
        }
        let mut row = Row::default();
        if self.header_columns.is_none() {
            // The header goes first in the file, so the first batch is read twice: once for
            // its keys, once to write it. Later batches are streamed in one pass.
            let mut rows = batch.rows();
            while rows.read_into(&mut row)? {
                for (position, (key, _)) in row.values.iter().enumerate() {
                    self.columns.column_at(position, key);
                }
            }
            self.write_header(lines);
        }
        let mut writer = RecordWriter::new(lines, self.delimiter);
        let mut rows = batch.rows();
        while rows.read_into(&mut row)? {
            self.slots.clear();
            for (position, (key, _)) in row.values.iter().enumerate() {
                let column = self.columns.column_at(position, key);
                if self.slots.len() <= column {
                    self.slots.resize(column + 1, NO_VALUE);
                }
                self.slots[column] = position;
            }
            self.slots.resize(self.columns.len(), NO_VALUE);
            if self.meta_columns {
                writer.field(row.id.as_bytes());
                writer.field(if row.valid { b"true" } else { b"false" });
            }
            for &position in &self.slots {
                let value = row.values.get(position).map(|(_, value)| *value);
                write_cell(&mut writer, value, self.neutralize_formulas)
                    .map_err(|error| error.context(format!("stream {}", batch.stream())))?;
            }
            writer.end();
        }
        Ok(())
    }

    /// One `_id,_deleted_at` line per deleted record; a deletion row's values are ignored.
    fn write_deletions(&mut self, lines: &mut Vec<u8>, batch: &Batch<'_>) -> Result<(), SinkError> {
        if self.header_columns.is_none() {
            self.write_header(lines);
        }
        let deleted_at = batch.received_at_rfc3339();
        let mut writer = RecordWriter::new(lines, self.delimiter);
        let mut row = Row::default();
        let mut rows = batch.rows();
        while rows.read_into(&mut row)? {
            writer.field(row.id.as_bytes());
            writer.field(deleted_at.as_bytes());
            writer.end();
        }
        Ok(())
    }

    fn write_header(&mut self, lines: &mut Vec<u8>) {
        // A record with no fields would come out as `""`; with no columns at all the file
        // simply has no header line.
        if self.meta().len() + self.columns.len() > 0 {
            let mut writer = RecordWriter::new(lines, self.delimiter);
            for name in self.header() {
                writer.field(name.as_bytes());
            }
            writer.end();
        }
        self.header_columns = Some(self.columns.len());
    }

    /// Every column name: the meta columns, then the field columns.
    fn header(&self) -> impl Iterator<Item = &str> {
        self.meta()
            .iter()
            .copied()
            .chain(self.columns.names().iter().map(String::as_str))
    }

    /// Copies the partial of `file` into `target` under the full header, padding short rows,
    /// and syncs the copy.
    fn rewrite(&self, file: &StreamFile, target: &Path) -> Result<(), SinkError> {
        let meta = self.meta();
        let width = meta.len() + self.columns.len();
        let old_header_width = meta.len() + self.header_columns.unwrap_or(0);
        let partial = file.partial_path();
        let input =
            File::open(partial).map_err(|error| io_retry("cannot open", partial, &error))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(self.delimiter)
            .buffer_capacity(WRITE_BUFFER)
            .from_reader(input.take(file.written_len()));
        let output =
            File::create(target).map_err(|error| io_retry("cannot create", target, &error))?;
        let mut writer = self.writer_builder().from_writer(output);
        let read_error = |error: csv::Error| csv_error(file.name(), partial, error);
        let write_error = |error: csv::Error| csv_error(file.name(), target, error);
        if width > 0 {
            writer.write_record(self.header()).map_err(write_error)?;
        }
        let mut record = csv::ByteRecord::new();
        let mut skip_header = old_header_width > 0;
        while reader.read_byte_record(&mut record).map_err(read_error)? {
            if skip_header {
                skip_header = false;
                continue;
            }
            for field in &record {
                writer.write_field(field).map_err(write_error)?;
            }
            for _ in record.len()..width {
                writer.write_field(b"").map_err(write_error)?;
            }
            writer.write_record(None::<&[u8]>).map_err(write_error)?;
        }
        let output = writer
            .into_inner()
            .map_err(|error| io_retry("cannot write", target, error.error()))?;
        output
            .sync_data()
            .map_err(|error| io_fatal("cannot sync", target, &error))
    }
}

/// Characters that make a spreadsheet treat a cell as a formula.
fn is_formula_start(text: &str) -> bool {
    matches!(
        text.as_bytes().first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
    )
}

fn write_cell(
    writer: &mut RecordWriter<'_>,
    value: Option<&RawValue>,
    neutralize_formulas: bool,
) -> Result<(), SinkError> {
    let Some(value) = value else {
        writer.field(b"");
        return Ok(());
    };
    match CellValue::parse(value)? {
        CellValue::Null => writer.field(b""),
        CellValue::Bool(true) => writer.field(b"true"),
        CellValue::Bool(false) => writer.field(b"false"),
        CellValue::Number(text) => writer.field(text.as_bytes()),
        CellValue::String(text) if neutralize_formulas && is_formula_start(&text) => {
            writer.field_with_prefix(b"'", text.as_bytes());
        }
        CellValue::String(text) => writer.field(text.as_bytes()),
        CellValue::Json(text) => writer.field(text.as_bytes()),
    }
    Ok(())
}

fn csv_error(stream: &str, path: &Path, error: csv::Error) -> SinkError {
    let message = format!("stream {stream}: {}: {error}", path.display());
    if error.is_io_error() {
        SinkError::retry(message)
    } else {
        SinkError::fatal(message)
    }
}
