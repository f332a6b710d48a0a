//! A Flatfile API that errors, rate-limits and cuts connections.

use std::time::Duration;

use flatfile_sim::{
    Faults, SimConfig, legacy_row_ids, legacy_webhook_body, record_ids, submit_event_body,
    workbook_sheets,
};
use flatsync_tests::check::{csv_rows, sqlite_rows};
use flatsync_tests::{Daemon, Sim, TestDir};

#[test]
fn injected_api_faults_lose_and_duplicate_nothing_and_retries_wait_for_retry_after() {
    let rows = 3_000;
    let sim = Sim::start(SimConfig {
        rows,
        seed: 7,
        sheets_per_workbook: 2,
        faults: Faults {
            error_rate: 0.1,
            rate_limit_rate: 0.05,
            retry_after_secs: 1,
            drop_rate: 0.02,
        },
        ..SimConfig::default()
    });
    let dir = TestDir::new("faults");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(
            &["portalImportSubmitted", "job:ready"],
            &["archive", "warehouse"],
        )
        // Small pages make a few hundred requests, so every kind of fault is drawn.
        .page_size(20);
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let daemon = settings.start();

    let (batch, legacy_event) = ("b-faults-1", "evt-faults-1");
    let (event, workbook) = ("us_evt_faults1", "us_wb_faults1");
    let job = sim.job_for(workbook);
    for body in [
        legacy_webhook_body(batch, legacy_event, rows),
        submit_event_body(event, workbook, &job),
    ] {
        let reply = daemon.post(&body);
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    daemon.wait_done(&[legacy_event, event], Duration::from_secs(400));

    let mut expected = legacy_row_ids(sim.config(), batch);
    for (sheet_id, _, _) in workbook_sheets(sim.config(), workbook) {
        expected.extend(record_ids(sim.config(), &sheet_id));
    }
    assert_eq!(expected.len() as u64, 2 * rows);
    csv_rows(&csv_dir).assert_exactly(&expected, "csv-folder sink under API faults");
    sqlite_rows(&db).assert_exactly(&expected, "sqlite sink under API faults");

    let job_state = sim.job(&job).expect("the simulator saw the job");
    assert_eq!(job_state.status, "complete", "{job_state:?}");

    let stats = sim.stats();
    assert!(
        stats.injected_errors > 0,
        "no 500/503 was injected: {stats:?}"
    );
    assert!(
        stats.injected_rate_limits > 0,
        "no 429 was injected: {stats:?}"
    );
    assert!(stats.injected_drops > 0, "no connection was cut: {stats:?}");
    assert_eq!(
        stats.early_retries, 0,
        "flatsync retried before Retry-After had elapsed: {stats:?}"
    );
    assert_eq!(
        stats.unauthorized, 0,
        "every request carried its key: {stats:?}"
    );
}
