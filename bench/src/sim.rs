//! The page server: the `flatfile-sim` binary in its pre-rendering mode.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flatfile_sim::SimStats;

use crate::child::Running;
use crate::error::BenchError;
use crate::http;

/// The workbook every Platform case submits: the simulator's on-the-fly `us_wb_<x>`, one
/// sheet (contacts) holding all rows.
pub(crate) const WORKBOOK_ID: &str = "us_wb_bench";
/// Its only sheet.
pub(crate) const SHEET_ID: &str = "us_sh_bench-contacts";
/// The legacy batch every legacy case imports.
pub(crate) const BATCH_ID: &str = "0be4c000-0000-4000-8000-00000000be4c";

/// A running simulator.
#[derive(Debug)]
pub(crate) struct Sim {
    process: Running,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    agent: ureq::Agent,
}

impl Sim {
    /// Starts `flatfile-sim` from `bin_dir` on a free port, serving `rows` rows per legacy
    /// batch and per workbook (one sheet), each data page `latency_ms` late, pre-rendered.
    pub(crate) fn start(
        bin_dir: &Path,
        dir: &Path,
        rows: u64,
        latency_ms: u64,
    ) -> Result<Sim, BenchError> {
        let mut command = Command::new(bin_dir.join("flatfile-sim"));
        command
            .args(["--listen", "127.0.0.1:0", "--sheets", "1", "--prerender"])
            .args(["--rows", &rows.to_string()])
            .args(["--page-latency-ms", &latency_ms.to_string()])
            .args(["--max-page-size", "10000"])
            .env("RUST_LOG", "warn")
            // The demo keys, which the daemon is given too.
            .env_remove("FLATFILE_SIM_LEGACY_API_KEY")
            .env_remove("FLATFILE_SIM_SECRET_KEY")
            .env_remove("FLATFILE_SIM_ENVIRONMENTS");
        let log = dir.join("flatfile-sim.log");
        let ready = |line: &str| line.starts_with("flatfile-sim listening on ");
        let (process, line) = Running::spawn(command, &log, ready, Duration::from_secs(30))?;
        let url = line
            .trim_start_matches("flatfile-sim listening on ")
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        Ok(Sim {
            process,
            url,
            agent: http::agent(),
        })
    }

    /// The request counters.
    pub(crate) fn stats(&self) -> Result<SimStats, BenchError> {
        let url = format!("{}/_sim/stats", self.url);
        let body = http::get_ok(&self.agent, &url)?;
        serde_json::from_str(&body).map_err(|e| BenchError::Http {
            what: format!("GET {url}"),
            message: format!("not the simulator's stats: {e}"),
        })
    }

    /// A new `workbook:submitActionFg` job for [`WORKBOOK_ID`]; its id.
    pub(crate) fn create_job(&self) -> Result<String, BenchError> {
        let url = format!("{}/_sim/jobs", self.url);
        let request = serde_json::json!({ "workbookId": WORKBOOK_ID }).to_string();
        let body = http::post_ok(&self.agent, &url, &request)?;
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|created| created["jobId"].as_str().map(str::to_owned))
            .ok_or_else(|| BenchError::Http {
                what: format!("POST {url}"),
                message: format!("no jobId in {body}"),
            })
    }

    /// Stops the simulator.
    pub(crate) fn stop(self) -> Result<(), BenchError> {
        self.process.stop(Duration::from_secs(10))
    }
}
