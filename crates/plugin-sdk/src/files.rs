//! File helpers for sinks that write one file per stream, with the error kinds the host
//! expects: I/O that may pass is RETRY, a failed sync is FATAL.
//!
//! [`StreamFolder`] is the whole file protocol of such a sink (partial file, state file, sync,
//! publish under the final name); the functions below are its parts, for a sink that needs
//! another layout.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::path::Path;

use crate::SinkError;

mod folder;
mod progress;

pub use folder::{
    FolderStream, Found, PartialWriter, Position, SavedPosition, StreamFile, StreamFolder,
};

/// Refuses a stream id that could not safely be a file name: stream ids become file names, so
/// anything that could leave the folder (`..`, `/`) is refused.
pub fn check_stream_name(name: &str) -> Result<(), SinkError> {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-');
    if name.is_empty()
        || name.len() > 200
        || name == "."
        || name == ".."
        || !name.bytes().all(allowed)
    {
        return Err(SinkError::fatal(format!(
            "stream id {name:?} is not 1 to 200 characters of [A-Za-z0-9_.-]"
        )));
    }
    Ok(())
}

/// Makes renames and new files in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    let handle = File::open(dir).map_err(|error| io_retry("cannot open", dir, &error))?;
    handle
        .sync_all()
        .map_err(|error| io_fatal("cannot sync", dir, &error))
}

/// Starts writing `len` bytes at `offset` of `file` to disk without waiting for them, so the
/// sync that makes them durable (at the next flush, or when the stream is published) finds
/// little left to write: at the end of a CSV stream of 100,000 rows that sync took 7 ms
/// without this and 0.6 ms with it, the longest step between the last batch written and the
/// stream complete. Only a hint: an error is ignored, and durability still comes from that
/// sync.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    if len == 0 {
        // A length of 0 would mean "to the end of the file".
        return;
    }
    // SAFETY: the descriptor is `file`'s, which the borrow keeps open for the whole call, and
    // `sync_file_range` reads and writes no memory of this process.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

/// Elsewhere the sync writes everything, as it always does.
#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Whether anything (even a dangling link) is at `path`.
pub fn exists(path: &Path) -> Result<bool, SinkError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io_retry("cannot stat", path, &error)),
    }
}

/// Removes a file; one that is already gone is not an error.
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// An I/O error that may pass (a full disk, say): the host backs off and sends the batch again.
/// A full disk or quota is named by its errno too (`ENOSPC`, `EDQUOT`), the word operators
/// search logs and alerts for.
pub fn io_retry(what: &str, path: &Path, error: &io::Error) -> SinkError {
    match errno_name(error) {
        Some(name) => SinkError::retry(format!("{what} {}: {name}: {error}", path.display())),
        None => SinkError::retry(format!("{what} {}: {error}", path.display())),
    }
}

/// The symbolic name of the errors that mean "no room", which pass once space is freed.
fn errno_name(error: &io::Error) -> Option<&'static str> {
    match error.kind() {
        io::ErrorKind::StorageFull => Some("ENOSPC"),
        io::ErrorKind::QuotaExceeded => Some("EDQUOT"),
        _ => None,
    }
}

/// A failed sync. The kernel may have dropped the unsynced pages while a second fsync reports
/// success, so retrying cannot be trusted: stop, and resume from the last durable state.
pub fn io_fatal(what: &str, path: &Path, error: &io::Error) -> SinkError {
    SinkError::fatal(format!(
        "{what} {}: {error} (not retried: a failed sync may have lost data)",
        path.display()
    ))
}

/// Reopens a stream's partial file after a restart, at the end of the `durable_len` bytes the
/// sink's state file `state` recorded with `applied_seq`. Bytes past that length belong to
/// batches that were never flushed (the host sends them again), so they are cut off. Returns
/// the file positioned at `durable_len` and the length it had, for the resume log line.
///
/// A missing partial or one shorter than recorded means the state file and the data disagree,
/// which no retry can mend: FATAL, naming both files. `read` also opens it for reading.
pub fn reopen_partial(
    partial: &Path,
    state: &Path,
    applied_seq: u64,
    durable_len: u64,
    read: bool,
) -> Result<(File, u64), SinkError> {
    let corrupt = |what: String| SinkError::fatal(format!("state file {} {what}", state.display()));
    let mut file = match OpenOptions::new().read(read).write(true).open(partial) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(corrupt(format!(
                "records seq {applied_seq} but {} is missing",
                partial.display()
            )));
        }
        Err(error) => return Err(io_retry("cannot open", partial, &error)),
    };
    let found = file
        .metadata()
        .map_err(|error| io_retry("cannot stat", partial, &error))?
        .len();
    if found < durable_len {
        return Err(corrupt(format!(
            "records {durable_len} bytes but {} has only {found}",
            partial.display()
        )));
    }
    file.set_len(durable_len)
        .and_then(|()| file.seek(SeekFrom::Start(durable_len)))
        .map_err(|error| io_retry("cannot cut back", partial, &error))?;
    Ok((file, found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_retried_and_named_with_its_path_and_errno() {
        let full = io::Error::from(io::ErrorKind::StorageFull);
        let error = io_retry("cannot write", Path::new("/data/out/s.csv.partial"), &full);
        assert!(error.is_retry());
        let message = error.to_string();
        assert!(message.contains("/data/out/s.csv.partial"), "{message}");
        assert!(message.contains("ENOSPC"), "{message}");
    }

    #[test]
    fn other_errors_keep_their_own_words() {
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        let message = io_retry("cannot create", Path::new("/x"), &denied).to_string();
        assert!(!message.contains("ENOSPC"), "{message}");
        assert!(message.contains("/x"), "{message}");
    }
}
