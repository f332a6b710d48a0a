//! One stream's files: the partial being appended to, its state file, and the final file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use flatsync_plugin_sdk::serde_json;
use flatsync_plugin_sdk::{Logger, SinkError};
use serde::{Deserialize, Serialize};

// `lib.rs` (and the guide quoting it) calls these as `stream::...`.
pub(crate) use flatsync_plugin_sdk::files::{check_stream_name, sync_dir};
use flatsync_plugin_sdk::files::{exists, io_fatal, io_retry, remove_if_present, reopen_partial};

/// What a stream's first batch in this process found on disk.
#[derive(Debug)]
pub(crate) enum Opened {
    /// The final file exists: every batch of the stream is already written.
    Complete,
    /// The stream is in progress, fresh or resumed.
    InProgress(StreamFile),
}

/// The content of `.<stream>.jsonl.state`: how far the partial is durable.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedState {
    /// The last batch seq the partial holds.
    applied_seq: u64,
    /// The partial's length once that batch was appended.
    len: u64,
}

#[derive(Debug)]
struct Paths {
    dir: PathBuf,
    partial: PathBuf,
    state: PathBuf,
    state_tmp: PathBuf,
    final_file: PathBuf,
}

impl Paths {
    fn new(dir: &Path, stream: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            partial: dir.join(format!(".{stream}.jsonl.partial")),
            state: dir.join(format!(".{stream}.jsonl.state")),
            state_tmp: dir.join(format!(".{stream}.jsonl.state.tmp")),
            final_file: dir.join(format!("{stream}.jsonl")),
        }
    }
}

/// A stream in progress: its partial file, open for writing at `len`.
#[derive(Debug)]
pub(crate) struct StreamFile {
    paths: Paths,
    partial: File,
    /// The last batch seq appended, in this process or before a restart.
    applied_seq: Option<u64>,
    /// The partial's length after `applied_seq`: where the next batch starts.
    len: u64,
    /// Whether batches were appended since the state file was last written.
    dirty: bool,
    rows_written: u64,
}

impl StreamFile {
    /// Looks at the stream's files on its first batch in this process.
    pub(crate) fn open(dir: &Path, stream: &str, logger: &Logger) -> Result<Opened, SinkError> {
        check_stream_name(stream)?;
        let paths = Paths::new(dir, stream);
        if exists(&paths.final_file)? {
            // A crash after the rename can leave the bookkeeping behind; it is no longer needed.
            for leftover in [&paths.partial, &paths.state, &paths.state_tmp] {
                if let Err(error) = remove_if_present(leftover) {
                    logger.warn(&format!(
                        "Cannot remove leftover {}: {error}",
                        leftover.display()
                    ));
                }
            }
            return Ok(Opened::Complete);
        }
        // A state file is replaced by writing a temporary and renaming it; a temporary that
        // is still here was never renamed, so it holds nothing anyone relies on.
        remove_if_present(&paths.state_tmp)
            .map_err(|error| io_retry("cannot remove", &paths.state_tmp, &error))?;
        let stream = match read_state(&paths.state)? {
            Some(saved) => Self::resume(stream, paths, saved, logger)?,
            None => Self::start(paths)?,
        };
        Ok(Opened::InProgress(stream))
    }

    fn start(paths: Paths) -> Result<Self, SinkError> {
        // Truncating also drops a partial left by a run that crashed before its first flush:
        // the host sends those batches again.
        let partial = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&paths.partial)
            .map_err(|error| io_retry("cannot create", &paths.partial, &error))?;
        Ok(Self::new(paths, partial, None, 0))
    }

    fn resume(
        stream: &str,
        paths: Paths,
        saved: SavedState,
        logger: &Logger,
    ) -> Result<Self, SinkError> {
        let (partial, found) = reopen_partial(
            &paths.partial,
            &paths.state,
            saved.applied_seq,
            saved.len,
            false,
        )?;
        logger.info(&format!(
            "Stream resumed: {stream} after seq {} ({} bytes kept, {} dropped)",
            saved.applied_seq,
            saved.len,
            found - saved.len
        ));
        Ok(Self::new(
            paths,
            partial,
            Some(saved.applied_seq),
            saved.len,
        ))
    }

    fn new(paths: Paths, partial: File, applied_seq: Option<u64>, len: u64) -> Self {
        Self {
            paths,
            partial,
            applied_seq,
            len,
            dirty: false,
            rows_written: 0,
        }
    }

    /// The seq this stream expects next.
    pub(crate) fn next_seq(&self) -> u64 {
        self.applied_seq.map_or(0, |seq| seq + 1)
    }

    /// Rows appended by this process.
    pub(crate) fn rows_written(&self) -> u64 {
        self.rows_written
    }

    /// Whether batches were appended since the last [`write_state`](Self::write_state).
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Appends the lines of batch `seq`. On failure the partial is cut back to where the batch
    /// started, so the host's retry of the same batch appends cleanly.
    pub(crate) fn append(&mut self, seq: u64, lines: &[u8], rows: u64) -> Result<(), SinkError> {
        if let Err(error) = self.partial.write_all(lines) {
            let write_error = io_retry("cannot write", &self.paths.partial, &error);
            return match cut_back(&mut self.partial, self.len) {
                Ok(()) => Err(write_error),
                Err(cut_error) => Err(write_error
                    .context(format!("cutting the partial back failed too ({cut_error})"))),
            };
        }
        self.len += lines.len() as u64;
        self.applied_seq = Some(seq);
        self.dirty = true;
        self.rows_written += rows;
        Ok(())
    }

    /// Makes the appended lines durable (the first step of a flush).
    pub(crate) fn sync_data(&self) -> Result<(), SinkError> {
        self.partial
            .sync_data()
            .map_err(|error| io_fatal("cannot sync", &self.paths.partial, &error))
    }

    /// Records the applied seq and length in the state file, replacing it atomically. The
    /// caller syncs the partial before and the folder after.
    pub(crate) fn write_state(&self) -> Result<(), SinkError> {
        let saved = SavedState {
            applied_seq: self
                .applied_seq
                .expect("a dirty stream has appended a batch"),
            len: self.len,
        };
        let text = serde_json::to_vec(&saved).expect("the state serialises to JSON");
        let tmp = &self.paths.state_tmp;
        let mut file = File::create(tmp).map_err(|error| io_retry("cannot create", tmp, &error))?;
        file.write_all(&text)
            .map_err(|error| io_retry("cannot write", tmp, &error))?;
        file.sync_all()
            .map_err(|error| io_fatal("cannot sync", tmp, &error))?;
        fs::rename(tmp, &self.paths.state).map_err(|error| {
            SinkError::retry(format!(
                "cannot rename {} to {}: {error}",
                tmp.display(),
                self.paths.state.display()
            ))
        })
    }

    /// The state file is written and its folder synced: the stream is durable up to here.
    pub(crate) fn mark_clean(&mut self) {
        self.dirty = false;
    }

    /// Renames the complete partial to the final name, durably, and removes the state file.
    pub(crate) fn publish(&mut self) -> Result<PathBuf, SinkError> {
        self.sync_data()?;
        match fs::rename(&self.paths.partial, &self.paths.final_file) {
            Ok(()) => {}
            // An earlier attempt renamed the partial, then failed before it could return.
            Err(error)
                if error.kind() == io::ErrorKind::NotFound && exists(&self.paths.final_file)? => {}
            Err(error) => {
                return Err(SinkError::retry(format!(
                    "cannot rename {} to {}: {error}",
                    self.paths.partial.display(),
                    self.paths.final_file.display()
                )));
            }
        }
        sync_dir(&self.paths.dir)?;
        // From here the final file marks the stream complete. A state file that cannot be
        // removed now is removed the next time the stream shows up.
        remove_if_present(&self.paths.state).ok();
        Ok(self.paths.final_file.clone())
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

fn cut_back(file: &mut File, len: u64) -> io::Result<()> {
    file.set_len(len)?;
    file.seek(SeekFrom::Start(len))?;
    Ok(())
}
