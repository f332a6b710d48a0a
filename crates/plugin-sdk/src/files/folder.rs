//! A folder sink's streams: one partial file per stream in progress, a state file recording how
//! much of it is durable, and a final file that appears only when the stream is complete.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    check_stream_name, exists, io_fatal, io_retry, remove_if_present, reopen_partial, sync_dir,
};
use crate::{Batch, BatchStep, Logger, SinkError, StreamPosition};

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
    /// No state file: the stream starts afresh, with an empty partial.
    Fresh(StreamFile),
    /// A state file: the partial is cut back to the length it records, and the state is
    /// handed over for what the sink keeps beside the position.
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
                    return self.publish(name);
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
            stream.file().write_state(&saved)?;
        }
        sync_dir(&self.dir)?;
        for stream in &mut dirty {
            let file = stream.file_mut();
            file.dirty = false;
            file.entry_synced = true;
        }
        Ok(())
    }
}

/// The paths of one stream's files.
#[derive(Debug)]
struct Layout {
    name: String,
    dir: PathBuf,
    partial: PathBuf,
    state: PathBuf,
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

/// A stream's partial file, open for appending at the end of its last batch.
#[derive(Debug)]
pub struct StreamFile {
    layout: Layout,
    file: File,
    /// The last batch seq appended, in this process or before a restart.
    applied_seq: Option<u64>,
    /// The partial's length after `applied_seq`: where the next batch starts.
    len: u64,
    /// Whether batches were appended since the state file was last written.
    dirty: bool,
    /// Whether the partial's name is known to be durable in the folder.
    entry_synced: bool,
    /// A failed batch left bytes past `len` that could not be cut off yet.
    cut_pending: bool,
    rows_written: u64,
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
            let leftovers = [&layout.partial, &layout.state]
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
        let found = match read_state::<S>(&layout.state)? {
            Some(saved) => {
                let file = Self::resume(layout, &saved, logger)?;
                Found::Resumed(file, saved)
            }
            None => Found::Fresh(Self::start(layout)?),
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
        Ok(Self::new(layout, file, None, 0))
    }

    fn resume<S: SavedPosition>(
        layout: Layout,
        saved: &S,
        logger: &Logger,
    ) -> Result<Self, SinkError> {
        saved.check().map_err(|what| {
            SinkError::fatal(format!("state file {} {what}", layout.state.display()))
        })?;
        let (applied_seq, len) = (saved.applied_seq(), saved.durable_len());
        let (file, found) =
            reopen_partial(&layout.partial, &layout.state, applied_seq, len, false)?;
        logger.info(&format!(
            "Stream resumed: {} after seq {applied_seq} ({len} bytes kept, {} dropped)",
            layout.name,
            found - len
        ));
        let mut file = Self::new(layout, file, Some(applied_seq), len);
        // The state file that named the partial was made durable after the partial's name.
        file.entry_synced = true;
        Ok(file)
    }

    fn new(layout: Layout, file: File, applied_seq: Option<u64>, len: u64) -> Self {
        Self {
            layout,
            file,
            applied_seq,
            len,
            dirty: false,
            entry_synced: false,
            cut_pending: false,
            rows_written: 0,
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
        let mut partial = PartialWriter {
            file: &mut self.file,
            path: &self.layout.partial,
            written: 0,
        };
        let result = write(&mut partial);
        let written = partial.written;
        if let Err(error) = result {
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
        self.applied_seq = Some(batch.seq());
        self.dirty = true;
        self.rows_written += batch.row_count();
        Ok(())
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

    /// Replaces the state file atomically with `saved`. The caller syncs the partial before and
    /// the folder after.
    fn write_state<S: Serialize>(&self, saved: &S) -> Result<(), SinkError> {
        let text = serde_json::to_vec(saved).map_err(|error| {
            SinkError::fatal(format!(
                "stream {}: cannot serialise the state: {error}",
                self.layout.name
            ))
        })?;
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

fn read_state<S: DeserializeOwned>(path: &Path) -> Result<Option<S>, SinkError> {
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

#[cfg(test)]
mod tests;
