//! The benchmark of issue 12: the `flatsync` daemon (release binaries, driven only through its
//! config, webhook listener and admin `/metrics`) against `flatfile-sim --prerender`, a page
//! server that only copies pre-rendered pages to the socket. Each case prints one [`Line`]:
//! rows or events per second, the daemon's CPU seconds and peak RSS, and for imports the
//! ratio of wall time to the wire floor measured in the same run. `BENCHMARKS.md` says what
//! each line measures and holds the last table.
//!
//! By job: `import` (legacy and Platform pages into CSV, SQLite, JSON Lines and PostgreSQL),
//! `events` (webhook intake and backlog drain, each on a SQLite and a PostgreSQL state,
//! memory with a backlog), `restart` (SIGKILL in a stream), over `sim`, `daemon` and `child` (the
//! processes), `proc` (their CPU and memory), `wire` (the floor), `sink` (rows held), `pg`
//! (the postgres sink's and state's databases) and `table` (medians and printing).

mod child;
mod daemon;
mod error;
mod events;
mod http;
mod import;
mod pg;
mod proc;
mod restart;
mod sim;
mod sink;
mod table;
mod wire;

use std::path::PathBuf;

pub use error::BenchError;
pub use sink::Sink;
pub use table::{Line, markdown, median, plain};

/// What to run, and where the binaries are.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Directory of `flatsync`, `flatfile-sim` and the sink plugins (`target/release`).
    pub bin_dir: PathBuf,
    /// Directory the runs' temporary directories are made in.
    pub work_dir: PathBuf,
    /// Runs per case; each line is the median.
    pub runs: usize,
    /// Rows per import.
    pub rows: Vec<u64>,
    /// Page latencies of the imports, in milliseconds.
    pub latencies_ms: Vec<u64>,
    /// Only cases whose name contains one of these comma-separated patterns.
    pub only: Option<String>,
    /// Connections of the wire floor: the daemon's pages in flight.
    pub wire_connections: usize,
    /// `[fetch] pages_in_flight` written into the daemon's config; `None` keeps the daemon's
    /// default (which `wire_connections` should then equal).
    pub pages_in_flight: Option<usize>,
    /// Events posted over 32 connections; then the backlog that is drained.
    pub intake_events: u64,
    /// Events posted over 4 connections.
    pub intake_events_4: u64,
    /// Events pending while the daemon's memory is watched.
    pub pending_events: u64,
    /// Seconds the daemon is watched, idle and with the pending events.
    pub watch_s: f64,
    /// Rows of the stream killed with SIGKILL.
    pub restart_rows: u64,
    /// Page latency of that stream, in milliseconds.
    pub restart_latency_ms: u64,
}

/// The daemon's default `[fetch] pages_in_flight`, and so the wire floor's connections.
pub const DEFAULT_PAGES_IN_FLIGHT: usize = 4;

impl Plan {
    /// The whole benchmark: 3 runs, 100,000 and 1,000,000 rows, 0 and 50 ms per page, a
    /// million pending events.
    pub fn full(bin_dir: PathBuf) -> Plan {
        Plan {
            bin_dir,
            work_dir: std::env::temp_dir(),
            runs: 3,
            rows: vec![100_000, 1_000_000],
            latencies_ms: vec![0, 50],
            only: None,
            wire_connections: DEFAULT_PAGES_IN_FLIGHT,
            pages_in_flight: None,
            intake_events: 100_000,
            intake_events_4: 20_000,
            pending_events: 1_000_000,
            watch_s: 5.0,
            restart_rows: 1_000_000,
            restart_latency_ms: 0,
        }
    }

    /// `--quick`: one run, the 100,000 sizes only.
    pub fn quick(bin_dir: PathBuf) -> Plan {
        Plan {
            runs: 1,
            rows: vec![100_000],
            pending_events: 100_000,
            restart_rows: 100_000,
            ..Plan::full(bin_dir)
        }
    }

    fn selected(&self, case: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|patterns| patterns.split(',').any(|p| case.contains(p.trim())))
    }

    fn run_dir(&self, what: &str) -> Result<RunDir, BenchError> {
        tempfile::Builder::new()
            .prefix(&format!("flatsync-bench-{what}-"))
            .tempdir_in(&self.work_dir)
            .map(|dir| RunDir(Some(dir)))
            .map_err(BenchError::io(format!(
                "cannot make a directory in {}",
                self.work_dir.display()
            )))
    }
}

/// A run's temporary directory: removed by [`RunDir::done`]; dropped without it (the run
/// failed) it stays, so the logs an error names can be read.
#[derive(Debug)]
struct RunDir(Option<tempfile::TempDir>);

impl RunDir {
    fn path(&self) -> &std::path::Path {
        self.0
            .as_ref()
            .expect("a RunDir holds its directory until dropped")
            .path()
    }

    fn done(mut self) {
        drop(self.0.take());
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = dir.keep();
        }
    }
}

/// The API an import reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// Legacy Portal batch rows, pages of 1,000, started by a `portalImportSubmitted` webhook.
    Legacy,
    /// Platform sheet records, pages of 10,000, started by a submit's `job:ready` webhook.
    Platform,
}

impl Api {
    /// Both, in table order.
    pub const ALL: [Api; 2] = [Api::Legacy, Api::Platform];

    /// Its name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Api::Legacy => "legacy",
            Api::Platform => "platform",
        }
    }
}

/// `100000` as `100k`, `1000000` as `1M`.
fn size_label(count: u64) -> String {
    match count {
        c if c >= 1_000_000 && c.is_multiple_of(1_000_000) => format!("{}M", c / 1_000_000),
        c if c >= 1_000 && c.is_multiple_of(1_000) => format!("{}k", c / 1_000),
        c => c.to_string(),
    }
}

/// Runs the plan's cases in order, handing each finished line (a median) to `report` as it
/// comes, and returns them all.
pub fn run(plan: &Plan, mut report: impl FnMut(&Line)) -> Result<Vec<Line>, BenchError> {
    let mut lines = Vec::new();
    let mut keep = |line: Line| {
        report(&line);
        lines.push(line);
    };
    for api in Api::ALL {
        for &rows in &plan.rows {
            for &latency_ms in &plan.latencies_ms {
                import::group(plan, api, rows, latency_ms, &mut keep)?;
            }
        }
    }
    for backend in events::Backend::ALL {
        events::intake_and_backlog(plan, backend, &mut keep)?;
    }
    for backend in events::Backend::ALL {
        events::intake_4(plan, backend, &mut keep)?;
    }
    events::memory(plan, &mut keep)?;
    restart::after_sigkill(plan, &mut keep)?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_in_the_issue() {
        assert_eq!(size_label(100_000), "100k");
        assert_eq!(size_label(1_000_000), "1M");
        assert_eq!(size_label(2_000), "2k");
        assert_eq!(size_label(1_500), "1500");
    }

    #[test]
    fn only_selects_by_substring() {
        let mut plan = Plan::quick(PathBuf::from("/nowhere"));
        assert!(plan.selected("legacy csv 100k 0ms"));
        plan.only = Some("sqlite".to_owned());
        assert!(plan.selected("platform sqlite 1M 50ms"));
        assert!(!plan.selected("legacy csv 100k 0ms"));
        plan.only = Some("intake, restart".to_owned());
        assert!(plan.selected("intake 4 conns"));
        assert!(plan.selected("restart after SIGKILL 1M"));
        assert!(!plan.selected("backlog drain"));
        plan.only = Some("postgres".to_owned());
        assert!(plan.selected("backlog drain (postgres state)"));
        assert!(plan.selected("intake 4 conns (postgres state)"));
        assert!(plan.selected("legacy postgres 1M 0ms"));
        assert!(!plan.selected("backlog drain"));
    }
}
