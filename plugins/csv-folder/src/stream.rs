//! One stream's files: the partial CSV being appended to, its state file, and finalisation.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use flatsync_plugin_sdk::serde_json::{self, value::RawValue};
use flatsync_plugin_sdk::{Batch, CellValue, Logger, Row, SinkError};
use serde::{Deserialize, Serialize};

use crate::Config;

// `lib.rs` calls these as `stream::...`.
pub(crate) use flatsync_plugin_sdk::files::sync_dir;
use flatsync_plugin_sdk::files::{exists, io_fatal, io_retry, remove_if_present, reopen_partial};

/// Suffix of the temporary file a state file is written to before its rename.
pub(crate) const STATE_TMP_SUFFIX: &str = ".csv.state.tmp";
/// Suffix of the temporary file a partial is rewritten to when columns were added.
pub(crate) const REWRITE_TMP_SUFFIX: &str = ".csv.rewrite.tmp";

const META_COLUMNS: [&str; 2] = ["_id", "_valid"];
/// The whole header of a deletions file, whatever the config.
const DELETION_COLUMNS: [&str; 2] = ["_id", "_deleted_at"];
const WRITE_BUFFER: usize = 64 * 1024;
/// Marks a column the current row has no value for.
const NO_VALUE: usize = usize::MAX;

/// What a stream's first batch in this process found on disk.
pub(crate) enum Opened {
    /// The final file exists: every batch of the stream is already written.
    Complete,
    /// The stream is in progress (fresh or resumed).
    Open(Box<StreamFiles>),
}

/// What `<dir>/.<stream>.csv.state` holds: the position `flush()` made durable.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedState {
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

#[derive(Debug)]
struct Paths {
    dir: PathBuf,
    partial: PathBuf,
    state: PathBuf,
    state_tmp: PathBuf,
    rewrite_tmp: PathBuf,
    final_file: PathBuf,
}

impl Paths {
    fn new(dir: &Path, stream: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            partial: dir.join(format!(".{stream}.csv.partial")),
            state: dir.join(format!(".{stream}.csv.state")),
            state_tmp: dir.join(format!(".{stream}{STATE_TMP_SUFFIX}")),
            rewrite_tmp: dir.join(format!(".{stream}{REWRITE_TMP_SUFFIX}")),
            final_file: dir.join(format!("{stream}.csv")),
        }
    }
}

/// The partial file under the CSV writer. It counts what reaches the file so the sink knows the
/// length at each batch boundary, and can be told to swallow the writer's leftover buffer when
/// a failed batch is being undone (the CSV writer flushes its buffer when dropped).
#[derive(Debug)]
struct PartialFile {
    file: File,
    len: u64,
    discard: Cell<bool>,
}

impl Write for PartialFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.discard.get() {
            return Ok(buf.len());
        }
        let written = self.file.write(buf)?;
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Field columns in file order, with a lookup by key.
#[derive(Debug, Default)]
struct Columns {
    names: Vec<String>,
    index: HashMap<String, usize>,
    /// Column of the key at each position of the previous row: rows of one stream nearly always
    /// list their keys in the same order, so a string comparison usually replaces a hash lookup.
    by_position: Vec<usize>,
}

impl Columns {
    fn from_names(names: Vec<String>) -> Self {
        let index = names
            .iter()
            .enumerate()
            .map(|(column, name)| (name.clone(), column))
            .collect();
        Self {
            names,
            index,
            by_position: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.names.len()
    }

    fn add(&mut self, key: &str) -> usize {
        if let Some(&column) = self.index.get(key) {
            return column;
        }
        let column = self.names.len();
        self.names.push(key.to_owned());
        self.index.insert(key.to_owned(), column);
        column
    }

    fn column_at(&mut self, position: usize, key: &str) -> usize {
        if let Some(&column) = self.by_position.get(position)
            && self.names.get(column).is_some_and(|name| name == key)
        {
            return column;
        }
        let column = self.add(key);
        if self.by_position.len() <= position {
            self.by_position.resize(position + 1, NO_VALUE);
        }
        self.by_position[position] = column;
        column
    }

    fn truncate(&mut self, len: usize) {
        for name in self.names.drain(len..) {
            self.index.remove(&name);
        }
        self.by_position.clear();
    }
}

/// A stream in progress.
#[derive(Debug)]
pub(crate) struct StreamFiles {
    name: String,
    paths: Paths,
    delimiter: u8,
    /// A deletions file (`_id,_deleted_at`) rather than records.
    deletions: bool,
    /// `None` after a failed batch whose undo failed too; rebuilt before the next write.
    writer: Option<csv::Writer<PartialFile>>,
    columns: Columns,
    /// How many field columns the partial's header names; `None` until the header is written.
    header_columns: Option<usize>,
    /// Last seq appended, in this process or restored from the state file.
    written_seq: Option<u64>,
    /// Length of the partial after `written_seq`.
    offset: u64,
    /// Whether `written_seq`/`offset`/`columns` are ahead of the state file.
    dirty: bool,
    /// Whether the partial's directory entry is known to be durable.
    entry_synced: bool,
    /// Per column, the position of the current row's value for it (or `NO_VALUE`).
    slots: Vec<usize>,
    rows_written: u64,
}

impl StreamFiles {
    /// Looks at the stream's files on its first batch in this process. `deletions` says what a
    /// fresh stream holds; a resumed one knows from its state file.
    pub(crate) fn open(
        config: &Config,
        name: &str,
        deletions: bool,
        logger: &Logger,
    ) -> Result<Opened, SinkError> {
        let paths = Paths::new(&config.dir, name);
        if exists(&paths.final_file)? {
            for leftover in [
                &paths.partial,
                &paths.state,
                &paths.state_tmp,
                &paths.rewrite_tmp,
            ] {
                if let Err(error) = remove_if_present(leftover) {
                    logger.warn(&format!(
                        "Cannot remove leftover {}: {error}",
                        leftover.display()
                    ));
                }
            }
            return Ok(Opened::Complete);
        }
        for temporary in [&paths.state_tmp, &paths.rewrite_tmp] {
            remove_if_present(temporary).map_err(|error| {
                SinkError::retry(format!("cannot remove {}: {error}", temporary.display()))
            })?;
        }
        let files = match read_state(&paths.state)? {
            Some(saved) => Self::resume(config, name, paths, saved, logger)?,
            None => Self::start(config, name, paths, deletions)?,
        };
        Ok(Opened::Open(Box::new(files)))
    }

    fn start(
        config: &Config,
        name: &str,
        paths: Paths,
        deletions: bool,
    ) -> Result<Self, SinkError> {
        // Truncating also discards a partial left by a run that never flushed.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&paths.partial)
            .map_err(|error| io_retry("cannot create", &paths.partial, &error))?;
        Ok(Self::new(
            config,
            name,
            paths,
            file,
            deletions,
            Columns::default(),
            None,
            None,
            0,
        ))
    }

    fn resume(
        config: &Config,
        name: &str,
        paths: Paths,
        saved: SavedState,
        logger: &Logger,
    ) -> Result<Self, SinkError> {
        let corrupt =
            |what: String| SinkError::fatal(format!("state file {} {what}", paths.state.display()));
        let columns = Columns::from_names(saved.columns);
        if columns.index.len() != columns.len()
            || saved.header_columns > columns.len()
            || (saved.deletions && columns.len() > 0)
        {
            return Err(corrupt("has inconsistent columns".to_owned()));
        }
        let (file, len) = reopen_partial(
            &paths.partial,
            &paths.state,
            saved.applied_seq,
            saved.offset,
            true,
        )?;
        logger.info(&format!(
            "Stream resumed: {name} after seq {} ({} bytes kept, {} dropped)",
            saved.applied_seq,
            saved.offset,
            len - saved.offset
        ));
        let mut files = Self::new(
            config,
            name,
            paths,
            file,
            saved.deletions,
            columns,
            Some(saved.header_columns),
            Some(saved.applied_seq),
            saved.offset,
        );
        files.entry_synced = true;
        Ok(files)
    }

    #[allow(clippy::too_many_arguments)] // reason: private constructor shared by start and resume
    fn new(
        config: &Config,
        name: &str,
        paths: Paths,
        file: File,
        deletions: bool,
        columns: Columns,
        header_columns: Option<usize>,
        written_seq: Option<u64>,
        offset: u64,
    ) -> Self {
        Self {
            name: name.to_owned(),
            paths,
            delimiter: config.delimiter,
            deletions,
            writer: Some(csv_writer(file, offset, config.delimiter)),
            columns,
            header_columns,
            written_seq,
            offset,
            dirty: false,
            entry_synced: false,
            slots: Vec::new(),
            rows_written: 0,
        }
    }

    /// The seq the stream expects next.
    pub(crate) fn next_seq(&self) -> u64 {
        self.written_seq.map_or(0, |seq| seq + 1)
    }

    /// Rows appended by this process.
    pub(crate) fn rows_written(&self) -> u64 {
        self.rows_written
    }

    /// Whether the stream is a deletions file.
    pub(crate) fn is_deletions(&self) -> bool {
        self.deletions
    }

    /// The columns before the field columns: the whole header of a deletions file.
    fn meta(&self, meta_columns: bool) -> &'static [&'static str] {
        if self.deletions {
            &DELETION_COLUMNS
        } else if meta_columns {
            &META_COLUMNS
        } else {
            &[]
        }
    }

    /// Appends the next batch. On failure the partial, the columns and the header are exactly
    /// as before the call, so the host can send the same batch again.
    pub(crate) fn append(
        &mut self,
        batch: &Batch<'_>,
        config: &Config,
        scratch: &mut String,
    ) -> Result<(), SinkError> {
        let columns_before = self.columns.len();
        let header_before = self.header_columns;
        match self.append_rows(batch, config, scratch) {
            Ok(rows) => {
                self.offset = self.writer_mut().get_ref().len;
                self.written_seq = Some(batch.seq());
                self.dirty = true;
                self.rows_written += rows;
                Ok(())
            }
            Err(error) => {
                self.columns.truncate(columns_before);
                self.header_columns = header_before;
                match self.undo_partial_write() {
                    Ok(()) => Err(error),
                    Err(undo_error) => Err(SinkError::retry(format!(
                        "{}; cutting the partial back failed too: {}",
                        error.message(),
                        undo_error.message()
                    ))),
                }
            }
        }
    }

    fn append_rows(
        &mut self,
        batch: &Batch<'_>,
        config: &Config,
        scratch: &mut String,
    ) -> Result<u64, SinkError> {
        self.ensure_writer()?;
        if self.deletions {
            return self.append_deletions(batch);
        }
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
            self.write_header(config.meta_columns)?;
        }
        let Self {
            name,
            paths,
            writer,
            columns,
            slots,
            ..
        } = self;
        let writer = writer.as_mut().expect("ensure_writer made a writer");
        let write_error = |error: csv::Error| csv_error(name, &paths.partial, error);
        let mut rows = batch.rows();
        let mut count = 0;
        while rows.read_into(&mut row)? {
            slots.clear();
            for (position, (key, _)) in row.values.iter().enumerate() {
                let column = columns.column_at(position, key);
                if slots.len() <= column {
                    slots.resize(column + 1, NO_VALUE);
                }
                slots[column] = position;
            }
            slots.resize(columns.len(), NO_VALUE);
            if config.meta_columns {
                writer.write_field(row.id.as_bytes()).map_err(write_error)?;
                let valid: &[u8] = if row.valid { b"true" } else { b"false" };
                writer.write_field(valid).map_err(write_error)?;
            }
            for &position in slots.iter() {
                let value = row.values.get(position).map(|(_, value)| *value);
                write_cell(writer, value, config.neutralize_formulas, scratch)
                    .map_err(|error| error.context(format!("stream {name}")))?;
            }
            writer.write_record(None::<&[u8]>).map_err(write_error)?;
            count += 1;
        }
        writer
            .flush()
            .map_err(|error| io_retry("cannot write", &paths.partial, &error))?;
        Ok(count)
    }

    /// One `_id,_deleted_at` line per deleted record; a deletion row's values are ignored.
    fn append_deletions(&mut self, batch: &Batch<'_>) -> Result<u64, SinkError> {
        if self.header_columns.is_none() {
            self.write_header(false)?;
        }
        let deleted_at = batch.received_at_rfc3339();
        let writer = self.writer.as_mut().expect("ensure_writer made a writer");
        let write_error = |error: csv::Error| csv_error(&self.name, &self.paths.partial, error);
        let mut row = Row::default();
        let mut rows = batch.rows();
        let mut count = 0;
        while rows.read_into(&mut row)? {
            writer
                .write_record([row.id.as_bytes(), deleted_at.as_bytes()])
                .map_err(write_error)?;
            count += 1;
        }
        writer
            .flush()
            .map_err(|error| io_retry("cannot write", &self.paths.partial, &error))?;
        Ok(count)
    }

    fn write_header(&mut self, meta_columns: bool) -> Result<(), SinkError> {
        let meta = self.meta(meta_columns);
        let names = meta
            .iter()
            .copied()
            .chain(self.columns.names.iter().map(String::as_str));
        // A record with no fields would come out as `""`; with no columns at all the file
        // simply has no header line.
        if meta.len() + self.columns.len() > 0 {
            let writer = self.writer.as_mut().expect("ensure_writer made a writer");
            writer
                .write_record(names)
                .map_err(|error| csv_error(&self.name, &self.paths.partial, error))?;
        }
        self.header_columns = Some(self.columns.len());
        Ok(())
    }

    fn writer_mut(&mut self) -> &mut csv::Writer<PartialFile> {
        self.writer
            .as_mut()
            .expect("the writer exists after a successful write")
    }

    fn ensure_writer(&mut self) -> Result<(), SinkError> {
        if self.writer.is_none() {
            self.undo_partial_write()?;
        }
        Ok(())
    }

    /// Drops whatever the writer still buffers and cuts the partial back to `offset`, the end
    /// of the last accepted batch.
    fn undo_partial_write(&mut self) -> Result<(), SinkError> {
        if let Some(writer) = self.writer.take() {
            writer.get_ref().discard.set(true);
            drop(writer);
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.paths.partial)
            .map_err(|error| io_retry("cannot reopen", &self.paths.partial, &error))?;
        file.set_len(self.offset)
            .and_then(|()| file.seek(SeekFrom::Start(self.offset)))
            .map_err(|error| io_retry("cannot cut back", &self.paths.partial, &error))?;
        self.writer = Some(csv_writer(file, self.offset, self.delimiter));
        Ok(())
    }

    /// Makes the accepted batches durable and records them in the state file. Returns whether
    /// a state file was renamed, so the caller syncs the folder once for all streams.
    pub(crate) fn persist_state(&mut self) -> Result<bool, SinkError> {
        if !self.dirty {
            return Ok(false);
        }
        let written_seq = self
            .written_seq
            .expect("a dirty stream has appended a batch");
        self.ensure_writer()?;
        self.sync_partial()?;
        if !self.entry_synced {
            sync_dir(&self.paths.dir)?;
            self.entry_synced = true;
        }
        let saved = SavedState {
            applied_seq: written_seq,
            offset: self.offset,
            columns: self.columns.names.clone(),
            header_columns: self.header_columns.unwrap_or(0),
            deletions: self.deletions,
        };
        let text = serde_json::to_vec(&saved).expect("the state serialises to JSON");
        let tmp = &self.paths.state_tmp;
        let mut file = File::create(tmp).map_err(|error| io_retry("cannot create", tmp, &error))?;
        file.write_all(&text)
            .map_err(|error| io_retry("cannot write", tmp, &error))?;
        file.sync_all()
            .map_err(|error| io_fatal("cannot sync", tmp, &error))?;
        drop(file);
        fs::rename(tmp, &self.paths.state).map_err(|error| {
            SinkError::retry(format!(
                "cannot rename {} to {}: {error}",
                tmp.display(),
                self.paths.state.display()
            ))
        })?;
        self.dirty = false;
        Ok(true)
    }

    fn sync_partial(&mut self) -> Result<(), SinkError> {
        let writer = self.writer_mut();
        writer
            .flush()
            .map_err(|error| io_retry("cannot write", &self.paths.partial, &error))?;
        let writer = self.writer.as_ref().expect("flushed just above");
        writer
            .get_ref()
            .file
            .sync_data()
            .map_err(|error| io_fatal("cannot sync", &self.paths.partial, &error))
    }

    /// Publishes the complete stream under its final name and removes its bookkeeping.
    pub(crate) fn finalize(&mut self, config: &Config) -> Result<PathBuf, SinkError> {
        self.ensure_writer()?;
        self.sync_partial()?;
        let rewritten = self.header_columns != Some(self.columns.len());
        if rewritten {
            self.rewrite(config.meta_columns)?;
        }
        let source = if rewritten {
            &self.paths.rewrite_tmp
        } else {
            &self.paths.partial
        };
        match fs::rename(source, &self.paths.final_file) {
            Ok(()) => {}
            // An earlier attempt renamed the partial and then failed to sync the folder.
            Err(error)
                if error.kind() == io::ErrorKind::NotFound && exists(&self.paths.final_file)? => {}
            Err(error) => {
                return Err(SinkError::retry(format!(
                    "cannot rename {} to {}: {error}",
                    source.display(),
                    self.paths.final_file.display()
                )));
            }
        }
        sync_dir(&self.paths.dir)?;
        self.writer = None;
        // From here the final file marks the stream complete; a leftover is removed the next
        // time the stream shows up.
        let mut leftovers = vec![&self.paths.state];
        if rewritten {
            leftovers.push(&self.paths.partial);
        }
        for leftover in leftovers {
            remove_if_present(leftover).ok();
        }
        Ok(self.paths.final_file.clone())
    }

    /// Copies the partial into `rewrite_tmp` under the full header, padding short rows.
    fn rewrite(&self, meta_columns: bool) -> Result<(), SinkError> {
        let result = self.rewrite_inner(meta_columns);
        if result.is_err() {
            remove_if_present(&self.paths.rewrite_tmp).ok();
        }
        result
    }

    fn rewrite_inner(&self, meta_columns: bool) -> Result<(), SinkError> {
        let meta = self.meta(meta_columns);
        let width = meta.len() + self.columns.len();
        let old_header_width = meta.len() + self.header_columns.unwrap_or(0);
        let input = File::open(&self.paths.partial)
            .map_err(|error| io_retry("cannot open", &self.paths.partial, &error))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(self.delimiter)
            .buffer_capacity(WRITE_BUFFER)
            .from_reader(input.take(self.offset));
        let output = File::create(&self.paths.rewrite_tmp)
            .map_err(|error| io_retry("cannot create", &self.paths.rewrite_tmp, &error))?;
        let mut writer = csv::WriterBuilder::new()
            .flexible(true)
            .delimiter(self.delimiter)
            .buffer_capacity(WRITE_BUFFER)
            .from_writer(output);
        let read_error = |error: csv::Error| csv_error(&self.name, &self.paths.partial, error);
        let write_error = |error: csv::Error| csv_error(&self.name, &self.paths.rewrite_tmp, error);
        if width > 0 {
            let names = meta
                .iter()
                .copied()
                .chain(self.columns.names.iter().map(String::as_str));
            writer.write_record(names).map_err(write_error)?;
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
            .map_err(|error| io_retry("cannot write", &self.paths.rewrite_tmp, error.error()))?;
        output
            .sync_data()
            .map_err(|error| io_fatal("cannot sync", &self.paths.rewrite_tmp, &error))
    }
}

fn csv_writer(file: File, len: u64, delimiter: u8) -> csv::Writer<PartialFile> {
    csv::WriterBuilder::new()
        .flexible(true)
        .delimiter(delimiter)
        .buffer_capacity(WRITE_BUFFER)
        .from_writer(PartialFile {
            file,
            len,
            discard: Cell::new(false),
        })
}

/// Characters that make a spreadsheet treat a cell as a formula.
fn is_formula_start(text: &str) -> bool {
    matches!(
        text.as_bytes().first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
    )
}

fn write_cell(
    writer: &mut csv::Writer<PartialFile>,
    value: Option<&RawValue>,
    neutralize_formulas: bool,
    scratch: &mut String,
) -> Result<(), SinkError> {
    let Some(value) = value else {
        return writer.write_field(b"").map_err(csv_plain_error);
    };
    let result = match CellValue::parse(value)? {
        CellValue::Null => writer.write_field(b""),
        CellValue::Bool(true) => writer.write_field(b"true"),
        CellValue::Bool(false) => writer.write_field(b"false"),
        CellValue::Number(text) => writer.write_field(text),
        CellValue::String(text) if neutralize_formulas && is_formula_start(&text) => {
            scratch.clear();
            scratch.push('\'');
            scratch.push_str(&text);
            writer.write_field(scratch.as_bytes())
        }
        CellValue::String(text) => writer.write_field(text.as_bytes()),
        CellValue::Json(text) => writer.write_field(text.as_bytes()),
    };
    result.map_err(csv_plain_error)
}

fn csv_plain_error(error: csv::Error) -> SinkError {
    if error.is_io_error() {
        SinkError::retry(format!("cannot write: {error}"))
    } else {
        SinkError::fatal(format!("cannot write CSV: {error}"))
    }
}

fn csv_error(stream: &str, path: &Path, error: csv::Error) -> SinkError {
    let message = format!("stream {stream}: {}: {error}", path.display());
    if error.is_io_error() {
        SinkError::retry(message)
    } else {
        SinkError::fatal(message)
    }
}

fn read_state(path: &Path) -> Result<Option<SavedState>, SinkError> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_retry("cannot read", path, &error)),
    };
    serde_json::from_slice(&text).map(Some).map_err(|error| {
        SinkError::fatal(format!(
            "state file {} is unreadable: {error}",
            path.display()
        ))
    })
}
