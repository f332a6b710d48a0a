//! `restart after SIGKILL`: a legacy stream into CSV is killed with SIGKILL a third of the way
//! through its pages; a new daemon starts on the same state. The line's wall time is the new
//! daemon's, from its start until the event is settled; its notes are the time from that start
//! until its first row is durable in the sink (`flatsync_rows_delivered_total` moves: counted
//! once the sink flushed and the checkpoint advanced), and how many pages the simulator
//! served beyond the stream's own.

use std::time::{Duration, Instant};

use crate::daemon::{Daemon, Setup, State};
use crate::error::BenchError;
use crate::sim::Sim;
use crate::sink::Sink;
use crate::table::{Line, median};
use crate::{Api, Plan, size_label, wire};

/// The longest the resumed stream may take.
const RESUME_LIMIT: Duration = Duration::from_secs(1800);

pub(crate) fn after_sigkill(plan: &Plan, keep: &mut impl FnMut(Line)) -> Result<(), BenchError> {
    let case = format!("restart after SIGKILL {}", size_label(plan.restart_rows));
    if !plan.selected(&case) {
        return Ok(());
    }
    let mut runs = Vec::new();
    for run in 0..plan.runs {
        let mut line = once(plan, run as u64)?;
        line.case.clone_from(&case);
        runs.push(line);
    }
    keep(median(&runs).expect("at least one run"));
    Ok(())
}

fn once(plan: &Plan, run: u64) -> Result<Line, BenchError> {
    let rows = plan.restart_rows;
    let sim_dir = plan.run_dir("sim")?;
    let sim = Sim::start(&plan.bin_dir, sim_dir.path(), rows, plan.restart_latency_ms)?;
    let urls = Api::Legacy.page_urls(&sim.url, rows);
    let (name, value) = Api::Legacy.auth_header();
    wire::read(&urls, (name, &value), plan.wire_connections)?;
    let pages = urls.len() as u64;
    let served_before = sim.stats()?.legacy_rows;
    let dir = plan.run_dir("restart")?;
    let setup = Setup {
        dir: dir.path().to_owned(),
        bin_dir: plan.bin_dir.clone(),
        sim_url: Some(sim.url.clone()),
        sink: Sink::Csv,
        topics: vec![Api::Legacy.topic()],
        pages_in_flight: plan.pages_in_flight,
        stall_file: None,
        state: State::Sqlite,
    };
    let first = Daemon::start(&setup)?;
    first.post(&Api::Legacy.trigger(&sim, rows, &Api::Legacy.event_id(run))?)?;
    while sim.stats()?.legacy_rows - served_before < pages.div_ceil(3) {
        std::thread::sleep(Duration::from_millis(2));
    }
    first.kill()?;

    let started = Instant::now();
    let mut second = Daemon::start(&setup)?;
    second.wait_until(
        "the first new row",
        Duration::from_millis(5),
        RESUME_LIMIT,
        |p| {
            if p.rows_delivered > 0 {
                return Ok(true);
            }
            if p.events_pending == 0 {
                return Err(BenchError::Failed(
                    "the stream had ended before the kill; give it more rows or page latency"
                        .to_owned(),
                ));
            }
            Ok(false)
        },
    )?;
    let first_row_s = started.elapsed().as_secs_f64();
    let last = second.wait_until(
        "the resumed stream",
        Duration::from_millis(10),
        RESUME_LIMIT,
        |p| Ok(p.events_pending == 0),
    )?;
    let wall_s = started.elapsed().as_secs_f64();
    let usage = second.usage()?;
    second.stop()?;
    let fetched = sim.stats()?.legacy_rows - served_before;
    sim.stop()?;
    let held = Sink::Csv.rows(dir.path(), Api::Legacy.table())?;
    if held != rows {
        return Err(BenchError::Failed(format!(
            "csv holds {held} rows after a restarted import of {rows}"
        )));
    }
    dir.done();
    sim_dir.done();
    Ok(Line {
        case: String::new(),
        count: last.rows_delivered,
        wall_s,
        rate: last.rows_delivered as f64 / wall_s,
        cpu_s: usage.cpu_s,
        peak_rss_mib: usage.peak_rss_mib,
        wire: None,
        extras: vec![
            ("first row s", first_row_s),
            ("pages again", fetched.saturating_sub(pages) as f64),
        ],
    })
}
