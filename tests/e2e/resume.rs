//! After a SIGKILL in the middle of a stream, the daemon fetches again only the pages that were
//! in flight: the csv-folder sink tells it (ABI 1.2 `held`) which batches it still holds beyond
//! its checkpoint, and those are neither fetched nor written again. A Flatfile job the stopped
//! run already finished is not finished again.

use std::time::{Duration, Instant};

use flatfile_sim::{
    SimConfig, legacy_row_ids, legacy_webhook_body, record_ids, submit_event_body, workbook_sheets,
};
use flatsync_tests::check::csv_rows;
use flatsync_tests::{Daemon, DaemonProcess, Sim, TestDir, http};

/// Rows per page and per batch: a batch of 500 legacy rows is well over 32 KiB of NDJSON, so
/// the 64 KiB read-ahead budget below holds at most two batches between the wire and the sink.
const PAGE: u64 = 500;
/// Pages of the stream: enough that it is far from done when the sink holds [`HELD`] batches.
const PAGES: u64 = 120;
/// Pages requested at once.
const IN_FLIGHT: u64 = 2;
/// Batches the sink must hold (written, never flushed) before the kill.
const HELD: u64 = 10;
/// A guard against a hang, not a speed claim.
const HANG_GUARD: Duration = Duration::from_secs(300);

/// Lines in `path`, 0 while it does not exist.
fn lines_in(path: &std::path::Path) -> u64 {
    std::fs::read(path).map_or(0, |bytes| {
        bytes.iter().filter(|&&byte| byte == b'\n').count() as u64
    })
}

/// Waits until the csv-folder file `partial` holds its header and `batches` batches of rows
/// (a row is one line: the simulator's values have no line breaks), with `event` still pending.
fn wait_for_batches(daemon: &DaemonProcess, event: &str, partial: &std::path::Path, batches: u64) {
    let deadline = Instant::now() + HANG_GUARD;
    while lines_in(partial) < 1 + batches * PAGE {
        assert!(
            Instant::now() < deadline && daemon.pending_events() == [event],
            "the stream never reached {batches} batches in the sink (it may have ended: give \
             it more pages)\n{}",
            daemon.log_tail()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn after_kill_9_only_the_pages_in_flight_are_fetched_again() {
    let sim = Sim::start(SimConfig {
        rows: PAGE * PAGES,
        page_latency: Duration::from_millis(40),
        ..SimConfig::default()
    });
    let dir = TestDir::new("resume-held");
    // No checkpoint before the stream ends: every batch the sink holds at the kill is one the
    // daemon's checkpoint does not cover, and only the sink can tell it that it holds them.
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .route(&["portalImportSubmitted"], &["archive"])
        .page_size(PAGE)
        .set("daemon", "checkpoint_batches", "1000000")
        .set("daemon", "checkpoint_interval_ms", "3600000")
        .set("fetch", "pages_in_flight", &IN_FLIGHT.to_string());
    let csv_dir = settings.csv_dir("archive");
    let mut daemon = settings.start();
    let (batch, event) = ("b-resume", "evt-resume");
    let reply = daemon.post(&legacy_webhook_body(batch, event, PAGE * PAGES));
    assert!(reply.is_success(), "webhook: {}", reply.text());

    let partial = csv_dir.join(format!(".legacy-{batch}.csv.partial"));
    wait_for_batches(&daemon, event, &partial, HELD);
    daemon.kill9();
    let served_before_restart = sim.stats().legacy_rows;
    assert_eq!(
        daemon.checkpointed_rows(),
        0,
        "a checkpoint before the kill would cover the held batches"
    );
    assert!(
        served_before_restart < PAGES,
        "the whole stream was fetched before the kill"
    );

    daemon.restart();
    daemon.wait_done(&[event], HANG_GUARD);
    let status = daemon.stop();
    assert!(status.success(), "clean stop: {status}");

    csv_rows(&csv_dir).assert_exactly(
        &legacy_row_ids(sim.config(), batch),
        "csv-folder sink after the kill",
    );
    // Fetched twice: the pages in flight at the kill, on the wire or fetched and not yet handed
    // to the sink (the window keeps them within IN_FLIGHT, whatever the byte budget would
    // allow), and the batch being handed over (its write not yet acknowledged: not held).
    // Without `held`, every one of the HELD batches or more would be fetched again.
    let fetched_again = sim.stats().legacy_rows - PAGES;
    println!("{served_before_restart} pages served before the kill, {fetched_again} fetched again");
    assert!(
        fetched_again <= IN_FLIGHT + 1,
        "{fetched_again} pages fetched again after the restart (at most {} in flight at the \
         kill, {served_before_restart} served before it)\n{}",
        IN_FLIGHT + 1,
        daemon.log_tail()
    );
    assert!(
        daemon
            .log()
            .contains("Sink holds batches beyond its checkpoint"),
        "the restarted daemon should say the sink held batches\n{}",
        daemon.log_tail()
    );
}

/// A run that finished its Flatfile job and was killed before it recorded the event settled
/// leaves the job finished in Flatfile (here: finished through the API while the daemon is
/// down). The restarted daemon delivers the rest and leaves the job's outcome alone.
#[test]
fn a_job_finished_before_the_restart_is_not_finished_again() {
    let sim = Sim::start(SimConfig {
        rows: PAGE * 60,
        sheets_per_workbook: 1,
        page_latency: Duration::from_millis(40),
        ..SimConfig::default()
    });
    let dir = TestDir::new("resume-job");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .route(&["job:ready"], &["archive"])
        .page_size(PAGE);
    let csv_dir = settings.csv_dir("archive");
    let mut daemon = settings.start();
    let (event, workbook) = ("us_evt_resumejob", "us_wb_resumejob");
    let job = sim.job_for(workbook);
    let reply = daemon.post(&submit_event_body(event, workbook, &job));
    assert!(reply.is_success(), "webhook: {}", reply.text());
    let sheets = workbook_sheets(sim.config(), workbook);
    let [(sheet_id, slug, _)] = &sheets[..] else {
        panic!("one sheet: {sheets:?}")
    };
    let partial = csv_dir.join(format!(".{slug}-{event}.csv.partial"));
    wait_for_batches(&daemon, event, &partial, 5);
    daemon.kill9();

    let finished = http::post_json(
        &format!("{}/v1/jobs/{job}/complete", sim.url()),
        Some(&sim.config().secret_key),
        br#"{"outcome":{"message":"Finished by the run before the kill"}}"#,
    )
    .expect("the simulator answers");
    assert!(finished.is_success(), "complete: {}", finished.text());
    daemon.restart();
    daemon.wait_done(&[event], HANG_GUARD);

    csv_rows(&csv_dir).assert_exactly(
        &record_ids(sim.config(), sheet_id),
        "csv-folder sink after the kill",
    );
    let state = sim.job(&job).expect("the simulator knows the job");
    assert_eq!(
        (state.status.as_str(), state.finishes),
        ("complete", 1),
        "the job is finished once, before the restart\n{}",
        daemon.log_tail()
    );
    assert!(
        daemon.log().contains("Flatfile job already finished"),
        "the restarted daemon should say it left the job alone\n{}",
        daemon.log_tail()
    );
}
