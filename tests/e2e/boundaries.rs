//! Row counts around the page size: the off-by-one cases of paging and of the LAST flag.

use flatfile_sim::{
    SimConfig, legacy_row_ids, legacy_webhook_body, record_ids, submit_event_body, workbook_sheets,
};
use flatsync_tests::check::{csv_files, csv_rows, sqlite_rows};
use flatsync_tests::{Daemon, Sim, TestDir};

use crate::common::EVENT_DEADLINE;

/// Page size of these tests, for both APIs.
const PAGE: u64 = 50;

/// Delivers a legacy batch and a one-sheet workbook of `rows` rows each with pages of
/// [`PAGE`] rows, and checks both sinks hold exactly those rows.
fn delivers_exactly(rows: u64) {
    let sim = Sim::start(SimConfig {
        rows,
        sheets_per_workbook: 1,
        ..SimConfig::default()
    });
    let dir = TestDir::new(&format!("boundary-{rows}"));
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(
            &["portalImportSubmitted", "job:ready"],
            &["archive", "warehouse"],
        )
        .page_size(PAGE);
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let daemon = settings.start();

    let batch = format!("b-boundary-{rows}");
    let legacy_event = format!("evt-boundary-{rows}");
    let (event, workbook) = (
        format!("us_evt_boundary{rows}"),
        format!("us_wb_boundary{rows}"),
    );
    let job = sim.job_for(&workbook);
    for body in [
        legacy_webhook_body(&batch, &legacy_event, rows),
        submit_event_body(&event, &workbook, &job),
    ] {
        let reply = daemon.post(&body);
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    daemon.wait_done(&[&legacy_event, &event], EVENT_DEADLINE);

    let sheets = workbook_sheets(sim.config(), &workbook);
    assert_eq!(sheets.len(), 1);
    let (sheet_id, slug, sheet_rows) = &sheets[0];
    assert_eq!(*sheet_rows, rows, "--sheets 1 puts every row on one sheet");
    let mut expected = legacy_row_ids(sim.config(), &batch);
    assert_eq!(expected.len() as u64, rows);
    expected.extend(record_ids(sim.config(), sheet_id));

    let csv = csv_rows(&csv_dir);
    csv.assert_exactly(&expected, &format!("csv-folder sink, {rows} rows"));
    assert_eq!(csv.total(), 2 * rows);
    let sqlite = sqlite_rows(&db);
    sqlite.assert_exactly(&expected, &format!("sqlite sink, {rows} rows"));

    let files = csv_files(&csv_dir);
    let legacy_name = format!("legacy-{batch}.csv");
    let sheet_name = format!("{slug}-{event}.csv");
    let mut names: Vec<&str> = files.keys().map(String::as_str).collect();
    names.sort();
    let mut want = vec![legacy_name.as_str(), sheet_name.as_str()];
    want.sort();
    assert_eq!(
        names, want,
        "one finished file per stream, even an empty one"
    );
    for file in files.values() {
        assert_eq!(file.records.len() as u64, rows, "{}", file.path.display());
        assert_eq!(
            file.headers.get(..2),
            Some(&["_id".to_owned(), "_valid".to_owned()][..]),
            "{}",
            file.path.display()
        );
    }
    if rows == 0 {
        // A stream without rows still produces its file: just the header. Without a schema
        // (legacy) that is the meta columns; with one, the meta columns and the schema.
        assert_eq!(files[&legacy_name].headers, ["_id", "_valid"]);
        let mut header = vec!["_id".to_owned(), "_valid".to_owned()];
        header.extend(sim.sheet_field_keys(sheet_id));
        assert_eq!(files[&sheet_name].headers, header);
    }
    let job_state = sim.job(&job).expect("the simulator saw the job");
    assert_eq!(job_state.status, "complete", "{job_state:?}");
}

#[test]
fn streams_of_zero_rows_end_as_header_only_files() {
    delivers_exactly(0);
}

#[test]
fn a_single_row_is_delivered_once() {
    delivers_exactly(1);
}

#[test]
fn one_row_short_of_a_page_is_delivered_once() {
    delivers_exactly(PAGE - 1);
}

#[test]
fn exactly_one_page_is_delivered_once() {
    delivers_exactly(PAGE);
}

#[test]
fn one_row_past_a_page_is_delivered_once() {
    delivers_exactly(PAGE + 1);
}
