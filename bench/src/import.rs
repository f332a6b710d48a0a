//! Import cases: one simulator per (API, rows, latency), its pages warmed once, then per run
//! the wire floor and one fresh daemon per sink.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::daemon::{Daemon, Setup, State};
use crate::error::BenchError;
use crate::sim::{BATCH_ID, SHEET_ID, Sim, WORKBOOK_ID};
use crate::sink::Sink;
use crate::table::{Line, median};
use crate::{Api, Plan, size_label, wire};

/// How often `/metrics` is read while an import runs. Each scrape opens the state database,
/// so reading more often would take CPU from the import; the wall time comes from the
/// daemon's own record of when it settled the event ([`settled_at_ms`]), not from this.
const POLL: Duration = Duration::from_millis(10);
/// The longest any one import may take.
const IMPORT_LIMIT: Duration = Duration::from_secs(1800);

impl Api {
    /// The URLs of every data page of `rows` rows, as the daemon asks for them.
    pub(crate) fn page_urls(self, sim_url: &str, rows: u64) -> Vec<String> {
        match self {
            Api::Legacy => (0..rows.div_ceil(1000))
                .map(|page| {
                    format!(
                        "{sim_url}/rest/batch/{BATCH_ID}/rows?skip={}&take=1000",
                        page * 1000
                    )
                })
                .collect(),
            Api::Platform => (1..=rows.div_ceil(10_000))
                .map(|page| {
                    format!(
                        "{sim_url}/v1/sheets/{SHEET_ID}/records?pageSize=10000&pageNumber={page}"
                    )
                })
                .collect(),
        }
    }

    pub(crate) fn auth_header(self) -> (&'static str, String) {
        match self {
            Api::Legacy => ("X-Api-Key", flatfile_sim::DEFAULT_LEGACY_API_KEY.to_owned()),
            Api::Platform => (
                "Authorization",
                format!("Bearer {}", flatfile_sim::DEFAULT_SECRET_KEY),
            ),
        }
    }

    /// The topic of the webhook that starts the import.
    pub(crate) fn topic(self) -> &'static str {
        match self {
            Api::Legacy => "portalImportSubmitted",
            Api::Platform => "job:ready",
        }
    }

    /// The sqlite and postgres sinks' table of the stream kind.
    pub(crate) fn table(self) -> &'static str {
        match self {
            Api::Legacy => "legacy_batch",
            Api::Platform => "contacts",
        }
    }

    /// The id of the event that starts import number `run`.
    pub(crate) fn event_id(self, run: u64) -> String {
        match self {
            Api::Legacy => format!("00000000-0000-4000-8000-{run:012x}"),
            Api::Platform => format!("us_evt_bench{run:08x}"),
        }
    }

    /// The webhook body of event `event_id`, which starts an import (a Platform job is created
    /// first).
    pub(crate) fn trigger(
        self,
        sim: &Sim,
        rows: u64,
        event_id: &str,
    ) -> Result<String, BenchError> {
        Ok(match self {
            Api::Legacy => flatfile_sim::legacy_webhook_body(BATCH_ID, event_id, rows),
            Api::Platform => {
                let job_id = sim.create_job()?;
                flatfile_sim::submit_event_body(event_id, WORKBOOK_ID, &job_id)
            }
        }
        .to_string())
    }
}

fn case_name(api: Api, sink: Sink, rows: u64, latency_ms: u64) -> String {
    format!(
        "{} {} {} {latency_ms}ms",
        api.label(),
        sink.label(),
        size_label(rows)
    )
}

/// Every selected sink for `api` at `rows` rows and `latency_ms` per page.
pub(crate) fn group(
    plan: &Plan,
    api: Api,
    rows: u64,
    latency_ms: u64,
    keep: &mut impl FnMut(Line),
) -> Result<(), BenchError> {
    let sinks: Vec<Sink> = Sink::ALL
        .into_iter()
        .filter(|&sink| plan.selected(&case_name(api, sink, rows, latency_ms)))
        .collect();
    if sinks.is_empty() {
        return Ok(());
    }
    let dir = plan.run_dir("sim")?;
    let sim = Sim::start(&plan.bin_dir, dir.path(), rows, latency_ms)?;
    let urls = api.page_urls(&sim.url, rows);
    let (name, value) = api.auth_header();
    // The first read renders every page; from then on the simulator serves stored bytes.
    wire::read(&urls, (name, &value), plan.wire_connections)?;
    let mut runs: Vec<Vec<Line>> = vec![Vec::new(); sinks.len()];
    for run in 0..plan.runs {
        let floor = wire::read(&urls, (name, &value), plan.wire_connections)?;
        for (at, &sink) in sinks.iter().enumerate() {
            let number = (run * sinks.len() + at) as u64;
            let mut line = import_once(plan, &sim, api, sink, rows, number)?;
            line.case = case_name(api, sink, rows, latency_ms);
            line.wire = Some(line.wall_s / floor);
            runs[at].push(line);
        }
    }
    sim.stop()?;
    dir.done();
    for lines in runs {
        keep(median(&lines).expect("at least one run"));
    }
    Ok(())
}

/// One import into a fresh daemon: from posting the webhook until the event is settled with
/// every row delivered; then the sink is counted.
fn import_once(
    plan: &Plan,
    sim: &Sim,
    api: Api,
    sink: Sink,
    rows: u64,
    number: u64,
) -> Result<Line, BenchError> {
    let dir = plan.run_dir("import")?;
    sink.prepare(dir.path())?;
    let setup = Setup {
        dir: dir.path().to_owned(),
        bin_dir: plan.bin_dir.clone(),
        sim_url: Some(sim.url.clone()),
        sink,
        topics: vec![api.topic()],
        pages_in_flight: plan.pages_in_flight,
        stall_file: None,
        state: State::Sqlite,
    };
    let mut daemon = Daemon::start(&setup)?;
    let event_id = api.event_id(number);
    let body = api.trigger(sim, rows, &event_id)?;
    let before = daemon.usage()?;
    let started = Instant::now();
    let posted_ms = unix_ms(SystemTime::now());
    daemon.post(&body)?;
    daemon.wait_until("the import", POLL, IMPORT_LIMIT, |progress| {
        if progress.events_pending > 0 {
            return Ok(false);
        }
        if progress.rows_delivered < rows {
            return Err(BenchError::Failed(format!(
                "the import settled with {} of {rows} rows delivered; see {}",
                progress.rows_delivered,
                dir.path().join("flatsync.log").display()
            )));
        }
        Ok(true)
    })?;
    let polled_s = started.elapsed().as_secs_f64();
    let after = daemon.usage()?;
    daemon.stop()?;
    let settled_ms = settled_at_ms(&setup, &event_id)?;
    let wall_s = (settled_ms as f64 - posted_ms) / 1000.0;
    // The settled time lies between the post and the scrape that saw it (each side truncated
    // to its millisecond): anything else means the two clocks disagree, and no figure is given.
    if !(-0.001..=polled_s + 0.001).contains(&wall_s) {
        return Err(BenchError::Failed(format!(
            "the daemon says event {event_id} settled {wall_s:.3} s after the post, but it \
             was seen done after {polled_s:.3} s"
        )));
    }
    let wall_s = wall_s.max(0.001);
    let held = sink.rows(dir.path(), api.table())?;
    sink.clean_up(dir.path())?;
    if held != rows {
        return Err(BenchError::Failed(format!(
            "{} holds {held} rows after an import of {rows}",
            sink.label()
        )));
    }
    dir.done();
    Ok(Line {
        case: String::new(),
        count: rows,
        wall_s,
        rate: rows as f64 / wall_s,
        cpu_s: after.cpu_s - before.cpu_s,
        peak_rss_mib: after.peak_rss_mib,
        wire: None,
        extras: Vec::new(),
    })
}

/// Milliseconds since the Unix epoch, with the fraction.
fn unix_ms(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64() * 1000.0)
}

/// When the daemon marked event `event_id` done, as `flatsync events show --json` reads it
/// from the run's state: the moment the last row was durable in the sink and checkpointed.
/// Measured this way, the wall time is exact to a millisecond instead of to the [`POLL`]
/// interval, which added 5 ms on average: a few percent of an import that takes 0.2 s.
fn settled_at_ms(setup: &Setup, event_id: &str) -> Result<i64, BenchError> {
    let state_dir = setup.dir.join("state");
    let output = Command::new(setup.bin_dir.join("flatsync"))
        .args(["events", "show", event_id, "--json", "--state-dir"])
        .arg(&state_dir)
        .env("NO_COLOR", "1")
        .output()
        .map_err(BenchError::io("cannot run flatsync events show"))?;
    let what = || {
        format!(
            "flatsync events show {event_id} --state-dir {}",
            state_dir.display()
        )
    };
    if !output.status.success() {
        return Err(BenchError::Failed(format!(
            "{} failed: {}",
            what(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let event: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| BenchError::Failed(format!("{} printed no JSON document: {e}", what())))?;
    match (event["status"].as_str(), event["updated_at_ms"].as_i64()) {
        (Some("done"), Some(at)) => Ok(at),
        (status, _) => Err(BenchError::Failed(format!(
            "{} says status {status:?}, not done with a time",
            what()
        ))),
    }
}
