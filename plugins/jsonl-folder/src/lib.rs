//! The `jsonl-folder` sink: one JSON Lines file per stream, `<dir>/<stream>.jsonl`.
//!
//! This sink is the worked example of `docs/writing-a-sink-plugin.md`. It is kept small on
//! purpose: read it top to bottom, then `stream.rs`.
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

mod stream;

use std::collections::HashMap;
use std::path::PathBuf;

use flatsync_plugin_sdk::serde_json;
use flatsync_plugin_sdk::{
    Batch, ConfigReader, CreateContext, Logger, Row, Sink, SinkError, export_sink,
    write_json_string,
};

use stream::{Opened, StreamFile};

/// A jsonl-folder sink instance: one per `[sinks.NAME]` entry of the daemon's config.
#[derive(Debug)]
pub struct JsonlFolder {
    dir: PathBuf,
    envelope: bool,
    logger: Logger,
    /// Streams in progress in this process. A finished stream leaves the map: from then on its
    /// final file is what marks it complete.
    streams: HashMap<String, StreamFile>,
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
            dir,
            envelope,
            logger: ctx.logger().clone(),
            streams: HashMap::new(),
            lines: Vec::new(),
        })
    }

    fn write_batch(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        let name = batch.stream();
        if !self.streams.contains_key(name) {
            // First batch of this stream in this process: the files on disk say where it stands.
            match StreamFile::open(&self.dir, name, &self.logger)? {
                Opened::Complete => return Ok(()),
                Opened::InProgress(stream) => {
                    self.streams.insert(name.to_owned(), stream);
                }
            }
        }
        let stream = self
            .streams
            .get_mut(name)
            .expect("the stream was inserted just above");
        let next = stream.next_seq();
        if batch.seq() < next {
            // Already applied: the host re-sends from its own checkpoint, which may be behind
            // ours. One case still has work to do: the last batch was appended but publishing
            // the file failed, and the host is retrying that batch.
            if batch.is_last() && batch.seq() + 1 == next {
                return self.publish(name);
            }
            return Ok(());
        }
        if batch.seq() > next {
            return Err(SinkError::fatal(format!(
                "stream {name}: got batch seq {} but the next expected is {next}; batches are missing",
                batch.seq()
            )));
        }
        // Every row is parsed before a byte is written, so a malformed batch leaves the file
        // as it was.
        render_lines(batch, self.envelope, &mut self.lines)?;
        stream.append(batch.seq(), &self.lines, batch.row_count())?;
        if batch.is_last() {
            return self.publish(name);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        let mut dirty: Vec<&mut StreamFile> = self
            .streams
            .values_mut()
            .filter(|stream| stream.is_dirty())
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        // The order is what makes a crash safe: a state file may only ever point at bytes
        // that are already on disk, under a name that is already on disk.
        for stream in &dirty {
            stream.sync_data()?;
        }
        stream::sync_dir(&self.dir)?;
        for stream in &dirty {
            stream.write_state()?;
        }
        stream::sync_dir(&self.dir)?;
        for stream in &mut dirty {
            stream.mark_clean();
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), SinkError> {
        let probe = self.dir.join(".jsonl-folder-check.tmp");
        let result = std::fs::write(&probe, b"ok").and_then(|()| std::fs::remove_file(&probe));
        result.map_err(|error| {
            SinkError::retry(format!("{} is not writable: {error}", self.dir.display()))
        })
    }
}

impl JsonlFolder {
    /// Gives a complete stream its final name and forgets it.
    fn publish(&mut self, name: &str) -> Result<(), SinkError> {
        let stream = self
            .streams
            .get_mut(name)
            .expect("publish is called for streams in progress");
        let rows = stream.rows_written();
        let path = stream.publish()?;
        self.streams.remove(name);
        self.logger.info(&format!(
            "Stream complete: {} ({rows} rows written in this process)",
            path.display()
        ));
        Ok(())
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
    while rows.read_into(&mut row)? {
        if envelope {
            out.extend_from_slice(b"{\"id\":");
            write_json_string(out, &row.id);
            out.extend_from_slice(if row.valid {
                b",\"valid\":true,\"values\":"
            } else {
                b",\"valid\":false,\"values\":"
            });
            row.write_values_json(out);
            out.push(b'}');
        } else {
            row.write_values_json(out);
        }
        out.push(b'\n');
    }
    Ok(())
}

export_sink!(JsonlFolder, name = "jsonl-folder");

#[cfg(test)]
mod tests;
