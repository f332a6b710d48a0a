//! Deadlines and test directories.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often pollers look again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Calls `probe` every [`POLL_INTERVAL`] until it returns `Some`, for at most `limit`.
/// On timeout, panics naming `what` and appending `explain()` (e.g. the daemon's stderr).
pub fn until<T>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if started.elapsed() >= limit {
            panic!(
                "timed out after {:.1} s waiting for {what}\n{}",
                started.elapsed().as_secs_f64(),
                explain()
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A temporary directory for one test. When the test fails, the directory is kept and its path
/// printed, so the config, the daemon's log, the state database and the sink outputs can be
/// looked at.
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Creates a directory whose name starts with `flatsync-e2e-<label>`.
    pub fn new(label: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("flatsync-e2e-{label}-"))
            .tempdir()
            .expect("cannot create a temporary directory");
        let path = dir.path().to_path_buf();
        TestDir {
            dir: Some(dir),
            path,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("test files kept in {}", kept.display());
        }
    }
}
