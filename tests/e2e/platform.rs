//! A Platform workbook submit, end to end.

use flatfile_sim::{SimConfig, record_ids, submit_event_body, workbook_sheets};
use flatsync_tests::check::{
    Tally, assert_csv_matches, assert_sqlite_matches, csv_files, csv_leftovers, sqlite_rows,
    sqlite_tables,
};
use flatsync_tests::{Daemon, Sim, TestDir};

use crate::common::{EVENT_DEADLINE, assert_has_csv_edge_cases};

#[test]
fn workbook_submit_reaches_csv_and_sqlite_once_and_completes_the_job() {
    let sim = Sim::start(SimConfig {
        rows: 1_201,
        sheets_per_workbook: 2,
        ..SimConfig::default()
    });
    let dir = TestDir::new("platform");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["job:ready"], &["archive", "warehouse"])
        .page_size(100);
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let daemon = settings.start();

    let (event, workbook) = ("us_evt_e2eSubmit1", "us_wb_e2eSubmit1");
    let job = sim.job_for(workbook);
    let reply = daemon.post(&submit_event_body(event, workbook, &job));
    assert_eq!(reply.status, 200, "webhook answer: {}", reply.text());
    assert_eq!(reply.json()["status"], "accepted", "{}", reply.text());
    daemon.wait_done(&[event], EVENT_DEADLINE);

    let sheets = workbook_sheets(sim.config(), workbook);
    assert_eq!(
        sheets.len(),
        2,
        "the simulator's workbook has the sheets asked for"
    );
    assert_eq!(sheets.iter().map(|s| s.2).sum::<u64>(), 1_201);

    let files = csv_files(&csv_dir);
    assert_eq!(
        files.len(),
        sheets.len(),
        "one CSV file per sheet: {:?}",
        files.keys()
    );
    assert!(
        csv_leftovers(&csv_dir).is_empty(),
        "{:?}",
        csv_leftovers(&csv_dir)
    );
    let mut tables = sqlite_tables(&db);
    tables.sort();
    let mut slugs: Vec<String> = sheets.iter().map(|s| s.1.clone()).collect();
    slugs.sort();
    assert_eq!(tables, slugs, "one SQLite table per sheet slug");

    let sqlite = sqlite_rows(&db);
    for (sheet_id, slug, rows) in &sheets {
        let expected = record_ids(sim.config(), sheet_id);
        assert_eq!(expected.len() as u64, *rows);
        let name = format!("{slug}-{event}.csv");
        let file = files
            .get(&name)
            .unwrap_or_else(|| panic!("no {name} among {:?}", files.keys()));
        let id_column = file.column("_id").expect("an _id column");
        let mut tally = Tally::default();
        for record in &file.records {
            *tally.seen.entry(record[id_column].clone()).or_default() += 1;
        }
        tally.assert_exactly(&expected, &format!("CSV file {name}"));

        let sheet_tally = Tally {
            seen: sqlite
                .seen
                .iter()
                .filter(|(id, _)| expected.contains(id))
                .map(|(id, n)| (id.clone(), *n))
                .collect(),
        };
        sheet_tally.assert_exactly(&expected, &format!("SQLite table {slug}"));

        // Schema order: the columns after _id,_valid follow the sheet's field keys.
        let keys = sim.sheet_field_keys(sheet_id);
        assert_eq!(
            file.headers.get(2..2 + keys.len()),
            Some(keys.as_slice()),
            "{name} columns should follow the sheet's schema order"
        );
        let source = sim.sheet_records(sheet_id);
        assert_has_csv_edge_cases(&source);
        assert_csv_matches(file, &source);
        assert_sqlite_matches(&db, slug, event, &source);
    }
    let every_id: Vec<String> = sheets
        .iter()
        .flat_map(|(id, _, _)| record_ids(sim.config(), id))
        .collect();
    sqlite.assert_exactly(&every_id, "sqlite sink");

    let job_state = sim
        .job(&job)
        .unwrap_or_else(|| panic!("the simulator never saw job {job}\n{}", daemon.log_tail()));
    assert_eq!(
        job_state.status, "complete",
        "Flatfile job after delivery: {job_state:?}"
    );
}
