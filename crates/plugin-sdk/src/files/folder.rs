//! A folder sink's streams: one partial file per stream in progress, a state file recording how
//! much of it is durable, a progress record saying how much more a crash of the process would
//! leave in place, and a final file that appears only when the stream is complete.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::progress::{self, Checksum, Progress};
use super::{
    check_stream_name, exists, io_fatal, io_retry, remove_if_present, reopen_partial,
    start_writeback, sync_dir,
};
use crate::{Batch, BatchStep, Held, Logger, SinkError, StreamPosition};

/// The key the state file gains beside what the sink saves: the rows of the batches it holds.
/// Absent in state files written before it existed, which still load (the rows are unknown).
const ROWS_KEY: &str = "stream_rows";

/// Bytes appended before their writeback is started ([`start_writeback`]): each start is a
/// system call that queues the pages for the disk, worth it for a megabyte, not for each of a
/// thousand small batches.
const WRITEBACK_BYTES: u64 = 1 << 20;

/// What a stream's state file holds: at least the last batch seq the partial file holds and
/// the partial's length after it. A sink keeping more (columns, say) uses its own type;
/// [`Position`] is the one with nothing more.
pub trait SavedPosition: Serialize + DeserializeOwned {
    /// The last batch seq the partial holds.
    fn applied_seq(&self) -> u64;

    /// The partial's length once that batch was appended.
    fn durable_len(&self) -> u64;

    /// Checks what else the state holds, before anything is done with it. The error says what
    /// is wrong (`has inconsistent columns`) and makes the state file FATAL.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A state file with nothing but the position: `{"applied_seq":3,"len":5120}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// The last batch seq the partial holds.
    pub applied_seq: u64,
    /// The partial's length once that batch was appended.
    pub len: u64,
}

impl SavedPosition for Position {
    fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    fn durable_len(&self) -> u64 {
        self.len
    }
}

/// One stream in progress as a sink keeps it: its [`StreamFile`] and whatever the sink keeps
/// beside it. A sink with nothing to keep beside it uses [`StreamFile`] itself.
pub trait FolderStream {
    /// What the stream's state file holds.
    type Saved: SavedPosition;

    /// The stream's partial file.
    fn file(&self) -> &StreamFile;

    /// The stream's partial file, to append to.
    fn file_mut(&mut self) -> &mut StreamFile;

    /// The state to record for the partial holding batches up to `applied_seq` in its first
    /// `len` bytes.
    fn saved(&self, applied_seq: u64, len: u64) -> Self::Saved;

    /// Called when the stream's last batch is in and its partial synced, before it gets its
    /// final name. A sink whose partial is not yet the file it wants to publish writes that file
    /// (complete and synced) and returns its path, which then takes the final name instead.
    fn prepare_publish(&mut self) -> Result<Option<PathBuf>, SinkError> {
        Ok(None)
    }
}

impl FolderStream for StreamFile {
    type Saved = Position;

    fn file(&self) -> &StreamFile {
        self
    }

    fn file_mut(&mut self) -> &mut StreamFile {
        self
    }

    fn saved(&self, applied_seq: u64, len: u64) -> Position {
        Position { applied_seq, len }
    }
}

/// What [`StreamFolder::open`] found of a stream that is not complete.
#[derive(Debug)]
pub enum Found<S> {
    /// Nothing held: the stream starts afresh, with an empty partial.
    Fresh(StreamFile),
    /// The partial holds batches: it is cut to the length the state says, and the state is
    /// handed over for what the sink keeps beside the position. The state is the state file's,
    /// or, after a crash of the process before a flush, the newer one of a trusted progress
    /// record (see [`StreamFolder`]).
    Resumed(StreamFile, S),
}

impl<S> Found<S> {
    /// The partial file, for a sink that keeps nothing beside it.
    pub fn into_file(self) -> StreamFile {
        match self {
            Found::Fresh(file) | Found::Resumed(file, _) => file,
        }
    }
}

/// The streams of a folder sink: one file per stream, `<dir>/<stream>.<extension>`, that
/// exists under that name only when complete.
///
/// While a stream is in progress its batches are appended to `<dir>/.<stream>.<extension>.partial`.
/// [`flush`](Self::flush) makes them durable and records in `<dir>/.<stream>.<extension>.state`
/// the last batch seq the partial holds and its length then. [`publish`](Self::publish) gives
/// the partial its final name. When a stream shows up for the first time in a process, its
/// files say where it stands: a final file means it is complete; a state file means the partial
/// is cut back to the recorded length (the host sends the later batches again); nothing means
/// a fresh start.
///
/// After each batch but the last, [`write_batch`](Self::write_batch) also overwrites
/// `<dir>/.<stream>.<extension>.progress`, without a sync: the state the next flush would
/// record, and a checksum of the partial's bytes since the state file's length. A process that
/// crashed before its flush leaves those bytes in place (only a power cut loses them), so when
/// the record is whole, builds on the state file found, and the bytes still match, the partial
/// is cut to the record's length instead, and [`held`](Self::held) tells the host, which then
/// does not send those batches again. Anything else falls back to the state file.
///
/// [`write_batch`](Self::write_batch) applies the seq rule ([`StreamPosition::step`]) to each
/// batch, so a file sink only says how a batch becomes bytes:
///
/// ```
/// use flatsync_plugin_sdk::files::{StreamFile, StreamFolder};
/// use flatsync_plugin_sdk::{Batch, BatchParts, Logger, RowJson, SinkError};
///
/// /// Writes each row as a JSON line to `<dir>/<stream>.rows`.
/// struct Rows {
///     streams: StreamFolder<StreamFile>,
/// }
///
/// impl Rows {
///     fn write_batch(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
///         self.streams.write_batch(batch, |found| Ok(found.into_file()), |stream| {
///             let mut lines = Vec::new();
///             for row in batch.rows() {
///                 row?.write_json(RowJson::Full, &mut lines);
///                 lines.push(b'\n');
///             }
///             stream.append(batch, |partial| partial.write_bytes(&lines))
///         })
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = std::env::temp_dir().join(format!("sdk-folder-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let mut sink = Rows { streams: StreamFolder::new(&dir, "rows", Logger::discard()) };
/// let line = b"{\"id\":\"r1\",\"valid\":true,\"values\":{\"n\":1}}\n";
/// let batch = Batch::from_parts(BatchParts {
///     stream: "s", seq: 0, row_count: 1, ndjson: line, last: true, ..BatchParts::default()
/// });
/// sink.write_batch(&batch)?;
/// sink.write_batch(&batch)?; // Sent again: the stream is complete, nothing is written.
/// assert_eq!(std::fs::read(dir.join("s.rows"))?, line);
/// std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct StreamFolder<F> {
    dir: PathBuf,
    extension: String,
    temporaries: &'static [&'static str],
    logger: Logger,
    /// Streams in progress in this process. A published stream leaves the map: from then on
    /// its final file is what marks it complete.
    open: HashMap<String, F>,
}

impl<F: FolderStream> StreamFolder<F> {
    /// The streams in `dir` (which must exist), each in a file named `<stream>.<extension>`.
    pub fn new(dir: &Path, extension: &str, logger: Logger) -> Self {
        Self {
            dir: dir.to_path_buf(),
            extension: extension.to_owned(),
            temporaries: &[],
            logger,
            open: HashMap::new(),
        }
    }

    /// Names the sink's own temporary files, `<dir>/.<stream>.<extension>.<kind>.tmp` for each
    /// kind (see [`StreamFile::temporary_path`]): they are removed when a stream is opened, since
    /// a temporary that outlived its process holds nothing anyone relies on.
    #[must_use]
    pub fn with_temporaries(mut self, kinds: &'static [&'static str]) -> Self {
        self.temporaries = kinds;
        self
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A start-up check for [`Sink::check`](crate::Sink::check): writes and removes a probe
    /// file, `<dir>/.<extension>-folder-check.tmp`. Failing is RETRY, naming the folder.
    pub fn check_writable(&self) -> Result<(), SinkError> {
        let probe = self
            .dir
            .join(format!(".{}-folder-check.tmp", self.extension));
        fs::write(&probe, b"ok")
            .and_then(|()| fs::remove_file(&probe))
            .map_err(|error| {
                SinkError::retry(format!("{} is not writable: {error}", self.dir.display()))
            })
    }

    /// Removes every temporary file of every stream in the folder (the state file's and the
    /// kinds named in [`with_temporaries`](Self::with_temporaries)): at start-up none is worth
    /// keeping, since the files they would have replaced are still in place. One that cannot be
    /// removed is logged and left for when its stream is next opened.
    pub fn remove_stale_temporaries(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let suffixes: Vec<String> = std::iter::once("state")
            .chain(self.temporaries.iter().copied())
            .map(|kind| format!(".{}.{kind}.tmp", self.extension))
            .collect();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if file_name.starts_with('.')
                && suffixes.iter().any(|suffix| file_name.ends_with(suffix))
                && let Err(error) = fs::remove_file(entry.path())
            {
                self.logger.warn(&format!(
                    "Cannot remove stale temporary file {}: {error}",
                    entry.path().display()
                ));
            }
        }
    }

    /// The stream `name` in progress, opened from its files on its first batch in this process
    /// (`start` turns what was found into the sink's stream); `None` when the stream is
    /// complete. Refuses a stream id that could not safely be a file name.
    pub fn open(
        &mut self,
        name: &str,
        start: impl FnOnce(Found<F::Saved>) -> Result<F, SinkError>,
    ) -> Result<Option<&mut F>, SinkError> {
        if !self.open.contains_key(name) {
            let layout = Layout::new(&self.dir, name, &self.extension, self.temporaries);
            let Some(found) = StreamFile::open(layout, &self.logger)? else {
                return Ok(None);
            };
            self.open.insert(name.to_owned(), start(found)?);
        }
        Ok(self.open.get_mut(name))
    }

    /// What the partial of stream `name` holds beyond its state file, for
    /// [`Sink::held`](crate::Sink::held): opens the stream as [`open`](Self::open) would
    /// when its files hold batches (`start` is called only then), or answers `None` for a
    /// fresh or complete stream. Also `None` when the rows are unknown (a state file of an
    /// older SDK) or once the stream's last batch was appended.
    pub fn held(
        &mut self,
        name: &str,
        start: impl FnOnce(Found<F::Saved>) -> Result<F, SinkError>,
    ) -> Result<Option<Held>, SinkError> {
        if !self.open.contains_key(name) {
            let layout = Layout::new(&self.dir, name, &self.extension, self.temporaries);
            if !exists(&layout.state)? && !exists(&layout.progress)? {
                // Fresh or complete: nothing held, and nothing to create or clean up yet.
                return Ok(None);
            }
            match StreamFile::open(layout, &self.logger)? {
                // Left for the first batch, which knows what a fresh stream is.
                None | Some(Found::Fresh(_)) => return Ok(None),
                Some(found) => {
                    let stream = start(found)?;
                    self.open.insert(name.to_owned(), stream);
                }
            }
        }
        Ok(self.open.get(name).and_then(|stream| stream.file().held()))
    }

    /// The seq rule for one batch of a file sink: opens the batch's stream as
    /// [`open`](Self::open) does, then asks [`StreamPosition::step`]. A batch the partial holds
    /// is skipped; the last batch coming again after a failed publish publishes again; the next
    /// batch goes to `apply`, which appends it with [`StreamFile::append`], and is published
    /// when it is the stream's last. A gap is the step's FATAL error.
    pub fn write_batch(
        &mut self,
        batch: &Batch<'_>,
        start: impl FnOnce(Found<F::Saved>) -> Result<F, SinkError>,
        apply: impl FnOnce(&mut F) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        let name = batch.stream();
        let Some(stream) = self.open(name, start)? else {
            return Ok(()); // Complete: its final file is in place.
        };
        match stream.file().position().step(batch)? {
            // Held already: the host re-sends from its own checkpoint, which may be behind the
            // partial.
            BatchStep::Skip => Ok(()),
            BatchStep::Finish => self.publish(name),
            BatchStep::Apply => {
                apply(stream)?;
                if batch.is_last() {
                    stream.file_mut().finishing = true;
                    return self.publish(name);
                }
                let saved = stream.saved(batch.seq(), stream.file().len);
                let logger = self.logger.clone();
                if let Some(stream) = self.open.get_mut(name) {
                    stream.file_mut().record_progress(&saved, &logger);
                }
                Ok(())
            }
        }
    }

    /// Gives the complete stream `name` its final name, durably, and forgets it. Safe to call
    /// again after a failure: a rename that went through before is recognised.
    pub fn publish(&mut self, name: &str) -> Result<(), SinkError> {
        let Some(stream) = self.open.get_mut(name) else {
            return Err(SinkError::fatal(format!(
                "stream {name} is not in progress in this process; nothing to publish"
            )));
        };
        stream.file_mut().finishing = true;
        stream.file_mut().sync_data()?;
        let replacement = stream.prepare_publish()?;
        let path = stream.file_mut().publish(replacement.as_deref())?;
        let rows = stream.file().rows_written;
        self.open.remove(name);
        self.logger.info(&format!(
            "Stream complete: {} ({rows} rows written in this process)",
            path.display()
        ));
        Ok(())
    }

    /// Makes every batch appended so far durable, and records each stream's position in its
    /// state file.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        let mut dirty: Vec<&mut F> = self
            .open
            .values_mut()
            .filter(|stream| stream.file().dirty)
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        // The order is what makes a crash safe: a state file may only ever point at bytes that
        // are already on disk, in a file whose name is already on disk.
        for stream in &mut dirty {
            stream.file_mut().sync_data()?;
        }
        if dirty.iter().any(|stream| !stream.file().entry_synced) {
            sync_dir(&self.dir)?;
        }
        for stream in &mut dirty {
            let file = stream.file();
            let applied_seq = file
                .applied_seq
                .expect("a dirty stream has appended a batch");
            let saved = stream.saved(applied_seq, file.len);
            stream.file().write_state(&saved, file.rows)?;
        }
        sync_dir(&self.dir)?;
        for stream in &mut dirty {
            let file = stream.file_mut();
            file.dirty = false;
            file.entry_synced = true;
            // From here the state file holds all of it: progress builds on it afresh.
            file.durable = Durable {
                seq: file.applied_seq,
                len: file.len,
            };
            file.unflushed = Checksum::new();
        }
        Ok(())
    }
}

/// The paths of one stream's files.
#[derive(Debug, Clone)]
struct Layout {
    name: String,
    dir: PathBuf,
    partial: PathBuf,
    state: PathBuf,
    progress: PathBuf,
    final_file: PathBuf,
    /// The state file's temporary, then the sink's own.
    temporaries: Vec<PathBuf>,
    extension: String,
}

impl Layout {
    fn new(dir: &Path, name: &str, extension: &str, kinds: &[&str]) -> Self {
        let temporaries = std::iter::once("state")
            .chain(kinds.iter().copied())
            .map(|kind| temporary(dir, name, extension, kind))
            .collect();
        Self {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            partial: dir.join(format!(".{name}.{extension}.partial")),
            state: dir.join(format!(".{name}.{extension}.state")),
            progress: dir.join(format!(".{name}.{extension}.progress")),
            final_file: dir.join(format!("{name}.{extension}")),
            temporaries,
            extension: extension.to_owned(),
        }
    }

    fn state_tmp(&self) -> &Path {
        &self.temporaries[0]
    }
}

fn temporary(dir: &Path, name: &str, extension: &str, kind: &str) -> PathBuf {
    dir.join(format!(".{name}.{extension}.{kind}.tmp"))
}

/// What the state file records: the position the partial's bytes are durable to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Durable {
    seq: Option<u64>,
    len: u64,
}

/// A stream's partial file, open for appending at the end of its last batch.
#[derive(Debug)]
pub struct StreamFile {
    layout: Layout,
    file: File,
    /// The last batch seq appended, in this process or before a restart.
    applied_seq: Option<u64>,
    /// The partial's length after `applied_seq`: where the next batch starts.
    len: u64,
    /// The rows of batches up to `applied_seq`; `None` when a state file of an older SDK did
    /// not say.
    rows: Option<u64>,
    /// What the state file records.
    durable: Durable,
    /// The checksum of the partial's bytes from `durable.len` to `len`.
    unflushed: Checksum,
    /// The progress record, once written in this process.
    progress: Option<File>,
    /// The record being written, reused from batch to batch.
    progress_buffer: Vec<u8>,
    /// The stream's last batch is appended: the stream is being published.
    finishing: bool,
    /// Whether batches were appended since the state file was last written.
    dirty: bool,
    /// Whether the partial's name is known to be durable in the folder.
    entry_synced: bool,
    /// A failed batch left bytes past `len` that could not be cut off yet.
    cut_pending: bool,
    rows_written: u64,
    /// Where the bytes start whose writeback has not been started ([`WRITEBACK_BYTES`]).
    writeback_from: u64,
}

impl StreamFile {
    /// Looks at a stream's files on its first batch in this process; `None` when complete.
    fn open<S: SavedPosition>(
        layout: Layout,
        logger: &Logger,
    ) -> Result<Option<Found<S>>, SinkError> {
        check_stream_name(&layout.name)?;
        if exists(&layout.final_file)? {
            // A crash after the rename can leave the bookkeeping behind; it is no longer needed.
            let leftovers = [&layout.partial, &layout.state, &layout.progress]
                .into_iter()
                .chain(&layout.temporaries);
            for leftover in leftovers {
                if let Err(error) = remove_if_present(leftover) {
                    logger.warn(&format!(
                        "Cannot remove leftover {}: {error}",
                        leftover.display()
                    ));
                }
            }
            return Ok(None);
        }
        // A state file is replaced by writing a temporary and renaming it; a temporary that is
        // still here was never renamed, so it holds nothing anyone relies on.
        for temporary in &layout.temporaries {
            remove_if_present(temporary)
                .map_err(|error| io_retry("cannot remove", temporary, &error))?;
        }
        let state = read_state::<S>(&layout.state)?;
        if let Some(state) = &state {
            state.0.check().map_err(|what| {
                SinkError::fatal(format!("state file {} {what}", layout.state.display()))
            })?;
        }
        let durable = state.as_ref().map(|(saved, rows)| {
            let durable = Durable {
                seq: Some(saved.applied_seq()),
                len: saved.durable_len(),
            };
            (durable, *rows)
        });
        let found = match trusted_progress::<S>(&layout, durable, logger)? {
            Some((file, saved)) => Found::Resumed(file, saved),
            None => match state {
                Some((saved, rows)) => {
                    let file = Self::resume(layout, &saved, rows, logger)?;
                    Found::Resumed(file, saved)
                }
                None => Found::Fresh(Self::start(layout)?),
            },
        };
        Ok(Some(found))
    }

    fn start(layout: Layout) -> Result<Self, SinkError> {
        // Truncating also drops a partial left by a run that crashed before its first flush:
        // the host sends those batches again.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&layout.partial)
            .map_err(|error| io_retry("cannot create", &layout.partial, &error))?;
        let mut file = Self::new(layout, file, None, 0);
        file.rows = Some(0);
        Ok(file)
    }

    fn resume<S: SavedPosition>(
        layout: Layout,
        saved: &S,
        rows: Option<u64>,
        logger: &Logger,
    ) -> Result<Self, SinkError> {
        let (applied_seq, len) = (saved.applied_seq(), saved.durable_len());
        let (file, found) =
            reopen_partial(&layout.partial, &layout.state, applied_seq, len, false)?;
        logger.info(&format!(
            "Stream resumed: {} after seq {applied_seq} ({len} bytes kept, {} dropped)",
            layout.name,
            found - len
        ));
        let mut file = Self::new(layout, file, Some(applied_seq), len);
        file.rows = rows;
        // The state file that named the partial was made durable after the partial's name.
        file.entry_synced = true;
        Ok(file)
    }

    /// The partial holding batches up to `applied_seq` in its first `len` bytes, all of them
    /// durable.
    fn new(layout: Layout, file: File, applied_seq: Option<u64>, len: u64) -> Self {
        Self {
            layout,
            file,
            applied_seq,
            len,
            rows: None,
            durable: Durable {
                seq: applied_seq,
                len,
            },
            unflushed: Checksum::new(),
            progress: None,
            progress_buffer: Vec::new(),
            finishing: false,
            dirty: false,
            entry_synced: false,
            cut_pending: false,
            rows_written: 0,
            writeback_from: len,
        }
    }

    /// The stream id.
    pub fn name(&self) -> &str {
        &self.layout.name
    }

    /// How far the partial goes: pass each batch to [`StreamPosition::step`].
    pub fn position(&self) -> StreamPosition {
        StreamPosition::after(self.applied_seq)
    }

    /// The partial's length after the last batch appended.
    pub fn written_len(&self) -> u64 {
        self.len
    }

    /// The batches the partial holds beyond the state file, with their rows in all; `None`
    /// when there are none, the rows are unknown, or the last batch is in.
    pub fn held(&self) -> Option<Held> {
        let seq = self.applied_seq?;
        if self.finishing || self.durable.seq.is_some_and(|durable| durable >= seq) {
            return None;
        }
        Some(Held {
            seq,
            rows: self.rows?,
        })
    }

    /// The partial file's path.
    pub fn partial_path(&self) -> &Path {
        &self.layout.partial
    }

    /// `<dir>/.<stream>.<extension>.<kind>.tmp`: a temporary file of the sink's own, removed
    /// when the stream is next opened if its kind is named in
    /// [`StreamFolder::with_temporaries`].
    pub fn temporary_path(&self, kind: &str) -> PathBuf {
        temporary(
            &self.layout.dir,
            &self.layout.name,
            &self.layout.extension,
            kind,
        )
    }

    /// Appends `batch`, which must be the next one ([`BatchStep::Apply`]), with what `write`
    /// writes. When `write` fails the partial is cut back to where the batch started, so the
    /// host's retry of the same batch appends cleanly. Render or check everything that can fail
    /// before writing where you can: a batch refused half-way costs a cut.
    pub fn append(
        &mut self,
        batch: &Batch<'_>,
        write: impl FnOnce(&mut PartialWriter<'_>) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        // A gap is the step's own error; a batch held already must not be appended twice.
        if self.position().step(batch)? != BatchStep::Apply {
            return Err(SinkError::fatal(format!(
                "stream {}: batch seq {} is already in the partial; only the next batch is \
                 appended",
                self.layout.name,
                batch.seq()
            )));
        }
        self.cut_back()?;
        let unflushed_before = self.unflushed;
        let mut partial = PartialWriter {
            file: &mut self.file,
            path: &self.layout.partial,
            written: 0,
            checksum: &mut self.unflushed,
        };
        let result = write(&mut partial);
        let written = partial.written;
        if let Err(error) = result {
            self.unflushed = unflushed_before;
            self.cut_pending = true;
            return match self.cut_back() {
                Ok(()) => Err(error),
                Err(cut_error) => Err(SinkError::retry(format!(
                    "{}; cutting the partial back failed too: {}",
                    error.message(),
                    cut_error.message()
                ))),
            };
        }
        self.len += written;
        if self.len - self.writeback_from >= WRITEBACK_BYTES {
            start_writeback(
                &self.file,
                self.writeback_from,
                self.len - self.writeback_from,
            );
            self.writeback_from = self.len;
        }
        self.applied_seq = Some(batch.seq());
        self.dirty = true;
        self.rows_written += batch.row_count();
        self.rows = self.rows.map(|rows| rows + batch.row_count());
        Ok(())
    }

    /// Overwrites the progress record with `saved`, the state of the partial as it is, without
    /// a sync. A failure costs only the batches the host then sends again after a crash, so it
    /// is logged, not returned: the batch itself is in.
    fn record_progress<S: Serialize>(&mut self, saved: &S, logger: &Logger) {
        let progress = Progress {
            base_seq: self.durable.seq,
            base_len: self.durable.len,
            rows: self.rows,
            data: self.unflushed.finish(),
            saved,
        };
        let path = &self.layout.progress;
        if let Err(error) = progress.encode(&mut self.progress_buffer) {
            logger.warn(&format!(
                "Cannot encode the progress record {}: {error}",
                path.display()
            ));
            return;
        }
        if self.progress.is_none() {
            match progress::open_record(path) {
                Ok(file) => self.progress = Some(file),
                Err(error) => {
                    logger.warn(&format!(
                        "Cannot open the progress record {}: {error}; after a crash its \
                         stream resumes from its last flush",
                        path.display()
                    ));
                    return;
                }
            }
        }
        let file = self.progress.as_ref().expect("opened above");
        if let Err(error) = progress::write_record(file, &self.progress_buffer) {
            logger.warn(&format!(
                "Cannot write the progress record {}: {error}; after a crash its stream \
                 resumes from its last flush",
                path.display()
            ));
        }
    }

    /// Cuts off the bytes of a failed batch that an earlier attempt could not cut off.
    fn cut_back(&mut self) -> Result<(), SinkError> {
        if self.cut_pending {
            self.file
                .set_len(self.len)
                .and_then(|()| self.file.seek(SeekFrom::Start(self.len)))
                .map_err(|error| io_retry("cannot cut back", &self.layout.partial, &error))?;
            self.cut_pending = false;
        }
        Ok(())
    }

    /// Makes the appended batches durable.
    fn sync_data(&mut self) -> Result<(), SinkError> {
        self.cut_back()?;
        self.file
            .sync_data()
            .map_err(|error| io_fatal("cannot sync", &self.layout.partial, &error))
    }

    /// Replaces the state file atomically with `saved` and the stream's `rows`. The caller
    /// syncs the partial before and the folder after.
    fn write_state<S: Serialize>(&self, saved: &S, rows: Option<u64>) -> Result<(), SinkError> {
        let mut text = serde_json::to_vec(saved).map_err(|error| {
            SinkError::fatal(format!(
                "stream {}: cannot serialise the state: {error}",
                self.layout.name
            ))
        })?;
        // The rows go beside the sink's own keys, in the same object, so the file stays the
        // flat object it always was; a sink state that is no object, or that has a key of that
        // name already, goes without them (its rows are then unknown after a restart).
        if let Some(rows) = rows
            && text.last() == Some(&b'}')
            && !contains_key(&text, ROWS_KEY)
        {
            text.pop();
            if text.len() > 1 {
                text.push(b',');
            }
            text.extend_from_slice(format!("\"{ROWS_KEY}\":{rows}}}").as_bytes());
        }
        let tmp = self.layout.state_tmp();
        let mut file = File::create(tmp).map_err(|error| io_retry("cannot create", tmp, &error))?;
        file.write_all(&text)
            .map_err(|error| io_retry("cannot write", tmp, &error))?;
        file.sync_all()
            .map_err(|error| io_fatal("cannot sync", tmp, &error))?;
        drop(file);
        rename(tmp, &self.layout.state)
    }

    /// Renames the synced partial, or its `replacement`, to the final name, durably, and removes
    /// the bookkeeping. Returns the final path.
    fn publish(&mut self, replacement: Option<&Path>) -> Result<PathBuf, SinkError> {
        let layout = &self.layout;
        let source = replacement.unwrap_or(&layout.partial);
        match fs::rename(source, &layout.final_file) {
            Ok(()) => {}
            // An earlier attempt renamed the file, then failed before it could return.
            Err(error)
                if error.kind() == io::ErrorKind::NotFound && exists(&layout.final_file)? => {}
            Err(error) => return Err(rename_error(source, &layout.final_file, &error)),
        }
        sync_dir(&layout.dir)?;
        // From here the final file marks the stream complete. Bookkeeping that cannot be
        // removed now is removed the next time the stream shows up.
        remove_if_present(&layout.state).ok();
        self.progress = None;
        remove_if_present(&layout.progress).ok();
        if replacement.is_some() {
            remove_if_present(&layout.partial).ok();
        }
        Ok(layout.final_file.clone())
    }
}

/// Where [`StreamFile::append`] writes a batch: the partial file at the end of the last batch.
/// It counts what it writes, so the partial's length at each batch boundary is known.
#[derive(Debug)]
pub struct PartialWriter<'f> {
    file: &'f mut File,
    path: &'f Path,
    written: u64,
    checksum: &'f mut Checksum,
}

impl PartialWriter<'_> {
    /// Writes all of `bytes`; an error is RETRY and names the partial.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.write_all(bytes)
            .map_err(|error| io_retry("cannot write", self.path, &error))
    }

    /// The partial file's path, for error messages.
    pub fn path(&self) -> &Path {
        self.path
    }
}

impl Write for PartialWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.written += written as u64;
        self.checksum.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), SinkError> {
    fs::rename(from, to).map_err(|error| rename_error(from, to, &error))
}

fn rename_error(from: &Path, to: &Path, error: &io::Error) -> SinkError {
    SinkError::retry(format!(
        "cannot rename {} to {}: {error}",
        from.display(),
        to.display()
    ))
}

/// The state file at `path` and the rows it records beside the sink's state, if any.
fn read_state<S: DeserializeOwned>(path: &Path) -> Result<Option<(S, Option<u64>)>, SinkError> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_retry("cannot read", path, &error)),
    };
    let unreadable = |error: serde_json::Error| {
        SinkError::fatal(format!(
            "state file {} is unreadable: {error}",
            path.display()
        ))
    };
    let mut value: serde_json::Value = serde_json::from_slice(&text).map_err(unreadable)?;
    let rows = match value
        .as_object_mut()
        .and_then(|state| state.remove(ROWS_KEY))
    {
        Some(rows) => Some(rows.as_u64().ok_or_else(|| {
            SinkError::fatal(format!(
                "state file {} is unreadable: `{ROWS_KEY}` is not a row count",
                path.display()
            ))
        })?),
        None => None,
    };
    let saved = S::deserialize(value).map_err(unreadable)?;
    Ok(Some((saved, rows)))
}

/// Whether the JSON object `text` has a top-level key `key` (a cheap look for the quoted name:
/// a false "yes" only costs the rows count).
fn contains_key(text: &[u8], key: &str) -> bool {
    let quoted = format!("\"{key}\"");
    text.windows(quoted.len())
        .any(|window| window == quoted.as_bytes())
}

/// The partial cut to the length of a trusted progress record, with the record's state, or
/// `None` when there is no such record. Trusted means: whole, written on top of the state file
/// found (`durable`, `None` before any flush), beyond it, consistent for the sink, and the
/// partial's bytes from the state file's length to the record's still have the recorded
/// checksum. Anything else is logged and left: the caller falls back to the state file.
fn trusted_progress<S: SavedPosition>(
    layout: &Layout,
    durable: Option<(Durable, Option<u64>)>,
    logger: &Logger,
) -> Result<Option<(StreamFile, S)>, SinkError> {
    let distrust = |why: &str| {
        logger.info(&format!(
            "Progress record {} not used: {why}; resuming from the last flush",
            layout.progress.display()
        ));
        Ok(None)
    };
    let progress = match Progress::<S>::read(&layout.progress) {
        Ok(Some(progress)) => progress,
        Ok(None) => return Ok(None),
        Err(error) => return distrust(&error.to_string()),
    };
    let (base, base_rows) = durable.unwrap_or((Durable { seq: None, len: 0 }, Some(0)));
    let (seq, len) = (progress.saved.applied_seq(), progress.saved.durable_len());
    if progress.base_seq != base.seq
        || progress.base_len != base.len
        || base.seq.is_some_and(|durable| durable >= seq)
        || len < base.len
    {
        // Most often a record older than the last flush: nothing beyond it.
        return Ok(None);
    }
    if let (Some(base_rows), Some(rows)) = (base_rows, progress.rows)
        && rows < base_rows
    {
        return distrust("it counts fewer rows than the state file");
    }
    if let Err(what) = progress.saved.check() {
        return distrust(&what);
    }
    let mut file = match OpenOptions::new()
        .read(true)
        .write(true)
        .open(&layout.partial)
    {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return distrust("the partial is missing");
        }
        Err(error) => return Err(io_retry("cannot open", &layout.partial, &error)),
    };
    let unflushed = match Checksum::of_file_range(&mut file, base.len, len) {
        Ok(checksum) if checksum.finish() == progress.data => checksum,
        Ok(_) => return distrust("the partial's bytes do not match it"),
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
            return distrust("the partial is shorter than it says");
        }
        Err(error) => return Err(io_retry("cannot read", &layout.partial, &error)),
    };
    let found = file
        .metadata()
        .map_err(|error| io_retry("cannot stat", &layout.partial, &error))?
        .len();
    file.set_len(len)
        .and_then(|()| file.seek(SeekFrom::Start(len)))
        .map_err(|error| io_retry("cannot cut back", &layout.partial, &error))?;
    logger.info(&format!(
        "Stream resumed: {} after seq {seq} ({len} bytes kept, {} of them not yet flushed; {} \
         dropped)",
        layout.name,
        len - base.len,
        found - len
    ));
    let name_durable = durable.is_some();
    let mut stream = StreamFile::new(layout.clone(), file, Some(seq), len);
    stream.rows = progress.rows.filter(|_| base_rows.is_some());
    stream.durable = base;
    stream.unflushed = unflushed;
    // Held but not durable: the next flush must sync and record it.
    stream.dirty = true;
    // A state file names the partial durably; before the first flush nothing did.
    stream.entry_synced = name_durable;
    Ok(Some((stream, progress.saved)))
}

#[cfg(test)]
mod tests;
