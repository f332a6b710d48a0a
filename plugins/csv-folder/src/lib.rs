//! The `csv-folder` sink: one CSV file per stream, `<dir>/<stream>.csv`.
//!
//! # Config
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `dir` | required | output folder, created if missing |
//! | `neutralize_formulas` | `false` | prefix string cells starting with `=`, `+`, `-`, `@`, tab or CR with `'`, so spreadsheet programs do not run them as formulas (numbers are never touched) |
//! | `meta_columns` | `true` | start every row of a records file with `_id` (record id) and `_valid` (`true`/`false`) |
//! | `delimiter` | `","` | one ASCII character |
//!
//! # Files
//!
//! While a stream is in progress its rows go to `<dir>/.<stream>.csv.partial`. On the stream's
//! last batch the partial is synced, renamed to `<dir>/<stream>.csv` and the folder is synced,
//! so a file under its final name is always complete. Readers should ignore dot-files.
//!
//! # Columns
//!
//! After the meta columns come the field keys: the schema's order (`fields_json`) when there is
//! one, then any other key in first-seen order. The header is written when the first batch
//! arrives, with every key that batch holds. A key first seen in a later batch becomes a new
//! last column; rows written before have no cell for it. To keep the file rectangular, the
//! header is settled at finalisation: if the columns are still those the partial file started
//! with, the partial is renamed as it is; otherwise it is streamed through a CSV reader into a
//! new file with the full header and every short row padded with empty cells, then renamed.
//!
//! # Cells
//!
//! A string is written as its text, a number as its exact JSON text, a boolean as
//! `true`/`false`, null as an empty cell, and an array or object as compact JSON. Quoting is
//! the `csv` crate's: only where needed.
//!
//! # Deletions
//!
//! A deletion stream (`<sheetSlug>-deleted-<eventId>`, whose rows name records deleted in
//! Flatfile) becomes a deletions file, `<dir>/<stream>.csv`, with the fixed header
//! `_id,_deleted_at` whatever `meta_columns` says, and one line per deleted record: its id and
//! the time flatsync received the deletion (RFC 3339, UTC, milliseconds, e.g.
//! `2024-05-02T14:03:11.517Z`). The stream name already tells it apart from the records files.
//! It goes through the same partial file, state file and rename as any stream, so it too is
//! complete or absent, and written exactly once. A stream is records or deletions from its
//! first batch on (the state file remembers which); a batch of the other sort is FATAL.
//!
//! # Exactly once
//!
//! Each stream has a state file `<dir>/.<stream>.csv.state` recording the last applied batch
//! seq, the partial's length at that point and the columns. `flush()` makes it durable (sync the
//! partial, write the state to a temporary file, sync it, rename it, sync the folder). When a
//! stream shows up for the first time in a process: if its final file exists the stream is
//! complete and every batch is skipped; if a state file exists the partial is cut back to the
//! recorded length and writing resumes after the recorded seq; otherwise the stream starts
//! afresh. Batches at or below the applied seq are skipped, the next one is appended, and a gap
//! is fatal. A failed write cuts the partial back to where the batch started and asks the host
//! to retry, so the retry appends cleanly.
//!
//! After each batch a progress record `<dir>/.<stream>.csv.progress` (not synced) says how far
//! the partial goes beyond the state file, columns included, with a checksum of those bytes.
//! After a crash of the daemon (not of the machine) a record that is whole and matches the
//! partial keeps those batches, and the sink tells the daemon (`held`), which then does not
//! fetch them again; anything else falls back to the state file.
//!
//! Write errors (a full disk, say) are RETRY. A failed `fsync` is FATAL: after one, the kernel
//! may have dropped the unsynced pages while a second `fsync` reports success, so the only safe
//! course is to stop and resume from the last state file after a restart.

mod record;
mod stream;

use std::path::PathBuf;

use flatsync_plugin_sdk::files::StreamFolder;
use flatsync_plugin_sdk::{
    Batch, ConfigReader, CreateContext, Held, Sink, SinkError, export_sink, serde_json,
};

use stream::CsvStream;

/// Validated `[sink.config]` of a csv-folder instance.
#[derive(Debug, Clone)]
struct Config {
    dir: PathBuf,
    neutralize_formulas: bool,
    meta_columns: bool,
    delimiter: u8,
}

impl Config {
    fn parse(value: serde_json::Value) -> Result<Self, SinkError> {
        let mut config = ConfigReader::new(value)?;
        let dir: PathBuf = config.required("dir")?;
        let neutralize_formulas = config.optional("neutralize_formulas")?.unwrap_or(false);
        let meta_columns = config.optional("meta_columns")?.unwrap_or(true);
        let delimiter: Option<String> = config.optional("delimiter")?;
        config.finish()?;
        if dir.as_os_str().is_empty() {
            return Err(SinkError::fatal("config key `dir` must not be empty"));
        }
        let delimiter = match delimiter.as_deref() {
            None => b',',
            Some(text) => match text.as_bytes() {
                [byte] if byte.is_ascii() && !matches!(byte, b'"' | b'\n' | b'\r') => *byte,
                _ => {
                    return Err(SinkError::fatal(format!(
                        "config key `delimiter` must be one ASCII character other than a quote or \
                         a line break, got {text:?}"
                    )));
                }
            },
        };
        Ok(Self {
            dir,
            neutralize_formulas,
            meta_columns,
            delimiter,
        })
    }
}

/// The csv-folder sink instance.
#[derive(Debug)]
pub struct CsvFolder {
    config: Config,
    /// The streams' files: partial, state file, and final name once complete.
    streams: StreamFolder<CsvStream>,
    /// The lines of the batch being written, reused from batch to batch.
    lines: Vec<u8>,
}

impl Sink for CsvFolder {
    const HANDLES_DELETIONS: bool = true;

    fn create(ctx: &CreateContext<'_>, config: serde_json::Value) -> Result<Self, SinkError> {
        let config = Config::parse(config)?;
        std::fs::create_dir_all(&config.dir).map_err(|error| {
            SinkError::fatal(format!(
                "config key `dir`: cannot create {}: {error}",
                config.dir.display()
            ))
        })?;
        let streams = StreamFolder::new(&config.dir, "csv", ctx.logger().clone())
            .with_temporaries(&[stream::REWRITE]);
        // Temporary files are never worth keeping after a restart: the state and partial files
        // they would have replaced are still in place.
        streams.remove_stale_temporaries();
        Ok(Self {
            config,
            streams,
            lines: Vec::new(),
        })
    }

    fn write_batch(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        let config = &self.config;
        let start = |found| Ok(CsvStream::new(found, config, batch.is_deletions()));
        let Some(stream) = self.streams.open(batch.stream(), start)? else {
            return Ok(()); // Its final file is in place: every batch is written.
        };
        // Checked on every batch, held or not: the header and the state file already say
        // which sort the stream is.
        stream.check_sort(batch)?;
        let lines = &mut self.lines;
        self.streams
            .write_batch(batch, start, |stream| stream.append(batch, lines))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.streams.flush()
    }

    fn check(&mut self) -> Result<(), SinkError> {
        self.streams.check_writable()
    }

    fn held(&mut self, stream: &str) -> Result<Option<Held>, SinkError> {
        let config = &self.config;
        // Only a stream whose files hold batches is opened here, and its state says whether
        // it is a deletions file: the `false` is never used.
        self.streams
            .held(stream, |found| Ok(CsvStream::new(found, config, false)))
    }
}

export_sink!(CsvFolder, name = "csv-folder");

#[cfg(test)]
mod tests;
