//! The `jsonl-folder` sink: one JSON Lines file per stream, `<dir>/<stream>.jsonl`.
//!
//! This sink is the worked example of `docs/writing-a-sink-plugin.md`. It is kept small on
//! purpose: the SDK's `StreamFolder` does the file work, and this file renders the lines.
//!
//! # Config
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `dir` | required | output folder, created if missing |
//! | `envelope` | `true` | write each row as `{"id":..,"valid":..,"values":{..}}`; with `false`, only the values object (deletion lines are the same either way) |
//!
//! # Lines
//!
//! One line per row, in batch order. With `envelope = true` the line is the row as flatsync
//! delivers it: `{"id":"<record id>","valid":true,"values":{...}}`. With `envelope = false` it is
//! the `values` object alone. Keys keep the source's order and values are copied byte for byte.
//!
//! # Deletions
//!
//! A deletion stream (`<sheetSlug>-deleted-<eventId>`, whose rows name records deleted in
//! Flatfile) gets its own file, `<dir>/<stream>.jsonl`, like any stream. Each line names one
//! deleted record, the same with or without `envelope`:
//!
//! ```json
//! {"_id":"<record id>","_deleted":true,"_deleted_at":"2024-05-02T14:03:11.517Z"}
//! ```
//!
//! `_deleted_at` is when flatsync received the deletion (RFC 3339, UTC, milliseconds). The
//! underscored keys cannot be mistaken for a record line's envelope or for field keys.
//!
//! # Files and exactly-once
//!
//! While a stream is in progress its lines go to `<dir>/.<stream>.jsonl.partial`. `flush()` makes
//! the partial durable and records in `<dir>/.<stream>.jsonl.state` the last batch seq it holds
//! and its length after that batch. On the stream's last batch the partial is renamed to
//! `<dir>/<stream>.jsonl`: a file under its final name is always complete. Readers should ignore
//! dot-files.
//!
//! When a stream shows up for the first time in a process, its files say where it stands: a
//! final file means every batch is written, so every batch is skipped; a state file means the
//! partial is cut back to the recorded length (bytes after it were never flushed, and the host
//! sends those batches again) and writing resumes after the recorded seq; nothing means a fresh
//! start. Then every batch at or below the applied seq is skipped, the next one is appended, and
//! a gap is fatal.

use std::path::PathBuf;

use flatsync_plugin_sdk::files::{StreamFile, StreamFolder};
use flatsync_plugin_sdk::serde_json;
use flatsync_plugin_sdk::{
    Batch, ConfigReader, CreateContext, Held, Row, RowJson, Sink, SinkError, export_sink,
    write_json_string,
};

/// A jsonl-folder sink instance: one per `[sinks.NAME]` entry of the daemon's config.
#[derive(Debug)]
pub struct JsonlFolder {
    envelope: bool,
    /// The streams' files: partial, state file, and final name once complete.
    streams: StreamFolder<StreamFile>,
    /// The lines of the batch being written, reused from batch to batch.
    lines: Vec<u8>,
}

impl Sink for JsonlFolder {
    // Deletion streams get their own files, one line per deleted record.
    const HANDLES_DELETIONS: bool = true;

    fn create(ctx: &CreateContext<'_>, config: serde_json::Value) -> Result<Self, SinkError> {
        // ConfigReader names the key at fault and rejects unknown keys, so a typo in the
        // daemon's config stops start-up with a clear message.
        let mut config = ConfigReader::new(config)?;
        let dir: PathBuf = config.required("dir")?;
        let envelope = config.optional("envelope")?.unwrap_or(true);
        config.finish()?;
        if dir.as_os_str().is_empty() {
            return Err(SinkError::fatal("config key `dir` must not be empty"));
        }
        std::fs::create_dir_all(&dir).map_err(|error| {
            SinkError::fatal(format!(
                "config key `dir`: cannot create {}: {error}",
                dir.display()
            ))
        })?;
        Ok(Self {
            streams: StreamFolder::new(&dir, "jsonl", ctx.logger().clone()),
            envelope,
            lines: Vec::new(),
        })
    }

    fn write_batch(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        let (envelope, lines) = (self.envelope, &mut self.lines);
        // The first batch of a stream in this process opens it: its files say where it stands.
        // Then the seq rule skips what the file holds, and the next batch comes here.
        self.streams.write_batch(
            batch,
            |found| Ok(found.into_file()),
            |stream| {
                // Every row is parsed before a byte is written, so a malformed batch leaves
                // the file as it was.
                render_lines(batch, envelope, lines)?;
                stream.append(batch, |partial| partial.write_bytes(lines))
            },
        )
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        // Syncs the partials, then records each stream's applied seq and length in its state
        // file: a state file never points at bytes that are not on disk.
        self.streams.flush()
    }

    fn check(&mut self) -> Result<(), SinkError> {
        self.streams.check_writable()
    }

    fn held(&mut self, stream: &str) -> Result<Option<Held>, SinkError> {
        // After a crash of the daemon, the batches appended since the last flush are still in
        // the partial (the progress record vouches for them): the daemon need not fetch them
        // again.
        self.streams.held(stream, |found| Ok(found.into_file()))
    }
}

/// Renders the rows of `batch` into `out`, one JSON line each.
fn render_lines(batch: &Batch<'_>, envelope: bool, out: &mut Vec<u8>) -> Result<(), SinkError> {
    out.clear();
    let mut rows = batch.rows();
    let mut row = Row::default();
    if batch.is_deletions() {
        // The same line with or without the envelope: it is no record, and without its id it
        // would say nothing.
        let deleted_at = batch.received_at_rfc3339();
        while rows.read_into(&mut row)? {
            out.extend_from_slice(b"{\"_id\":");
            write_json_string(out, &row.id);
            out.extend_from_slice(b",\"_deleted\":true,\"_deleted_at\":\"");
            out.extend_from_slice(deleted_at.as_bytes());
            out.extend_from_slice(b"\"}\n");
        }
        return Ok(());
    }
    let shape = if envelope {
        RowJson::Full
    } else {
        RowJson::Values
    };
    if copy_compact_lines(batch, shape, out)? {
        return Ok(());
    }
    while rows.read_into(&mut row)? {
        row.write_json(shape, out);
        out.push(b'\n');
    }
    Ok(())
}

/// Appends the rows of `batch` as their lines are, when every line is already what
/// `Row::write_json` would write (flatsync's own compact layout, which is what the host sends):
/// copying skips rendering each row again. Returns `false`, with `out` as it was, at the first
/// line that is not; the caller then renders the rows one by one.
fn copy_compact_lines(
    batch: &Batch<'_>,
    shape: RowJson,
    out: &mut Vec<u8>,
) -> Result<bool, SinkError> {
    let start = out.len();
    let mut rows = batch.rows();
    let mut row = Row::default();
    while rows.read_into(&mut row)? {
        let Some(json) = rows.written_json(shape) else {
            out.truncate(start);
            return Ok(false);
        };
        out.extend_from_slice(json);
        out.push(b'\n');
    }
    Ok(true)
}

export_sink!(JsonlFolder, name = "jsonl-folder");

#[cfg(test)]
mod tests;
