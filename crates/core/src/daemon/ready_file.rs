//! `[daemon] ready_file`: the ready line ([`ReadyInfo`]) in a file, for scripts that cannot
//! read the daemon's stdout. It is replaced whole (a temporary file in the same folder,
//! fsynced, renamed over it, the folder fsynced), so a reader never sees half of it, and
//! removed when the daemon stops cleanly.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use super::presence::ReadyInfo;

/// Writes `ready` as one line of JSON to `path`, atomically and durably.
pub(crate) fn write(path: &Path, ready: &ReadyInfo) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut staged = tempfile::Builder::new()
        .prefix(".ready-")
        .tempfile_in(dir)?;
    // Not a secret: scripts of other users (a health check, a load balancer's agent) read it.
    staged
        .as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    writeln!(staged, "{}", ready.to_json())?;
    staged.as_file().sync_all()?;
    staged.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Removes the ready file if it still holds `ready`: a file another daemon wrote over it is
/// that daemon's to remove.
pub(crate) fn remove(path: &Path, ready: &ReadyInfo) {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim_end() == ready.to_json() => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "Cannot remove the ready file");
            }
        }
        Ok(_) => tracing::warn!(
            path = %path.display(),
            "The ready file was written by another daemon; left in place"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "Cannot read the ready file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(port: u16) -> ReadyInfo {
        ReadyInfo::new(
            Path::new("/var/lib/flatsync"),
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
            None,
        )
    }

    #[test]
    fn the_file_holds_the_ready_line_readable_by_others_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ready.json");
        std::fs::write(&path, "stale").expect("an old file");
        let info = ready(41234);
        write(&path, &info).expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, format!("{}\n", info.to_json()));
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "readable by scripts of other users");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["ready.json"],
            "the temporary file was renamed, not left"
        );
    }

    #[test]
    fn only_the_daemon_that_wrote_the_file_removes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ready.json");
        let (mine, theirs) = (ready(1), ready(2));
        write(&path, &theirs).expect("written");
        remove(&path, &mine);
        assert!(path.exists(), "another daemon's file is left in place");
        remove(&path, &theirs);
        assert!(!path.exists(), "the daemon's own file is removed");
        remove(&path, &theirs);
    }

    #[test]
    fn a_missing_folder_is_reported_not_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent").join("ready.json");
        let err = write(&path, &ready(1)).expect_err("no folder");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
        assert!(!path.exists());
    }
}
