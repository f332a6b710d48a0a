//! A Platform workbook submit, end to end, and a multi-part one.

use flatfile_sim::{
    DEFAULT_ENVIRONMENT_ID, SimConfig, SubmitRequest, record_ids, submit_event_body,
    workbook_sheets,
};
use flatsync_tests::check::{
    Tally, assert_csv_matches, assert_no_csv_leftovers, assert_sqlite_matches, csv_files,
    sqlite_rows, sqlite_tables,
};
use flatsync_tests::{Daemon, Sim, TestDir};

use crate::common::{
    EVENT_DEADLINE, admin_ok, assert_has_csv_edge_cases, csv_file, csv_ids, polling_environment,
};

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
    assert_no_csv_leftovers(&csv_dir);
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

#[test]
fn a_multi_part_submit_is_exported_once_and_every_part_is_completed() {
    let sim = Sim::start(SimConfig {
        rows: 400,
        sheets_per_workbook: 2,
        ..SimConfig::default()
    });
    let admin = sim.admin();
    // Three parts, and job events that name neither workbook nor sheet: flatsync must read
    // each job to know what it is about and whether it is a part.
    let submitted = admin_ok(
        admin.submit(&SubmitRequest {
            parts: Some(3),
            context_ids: Some(false),
            ..SubmitRequest::default()
        }),
        "submit in parts",
    );
    assert_eq!(submitted.parts.len(), 3, "{submitted:?}");
    let dir = TestDir::new("platform-parts");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["job:ready"], &["archive", "warehouse"])
        .page_size(150)
        .raw(&polling_environment("demo", DEFAULT_ENVIRONMENT_ID, None));
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let daemon = settings.start();

    daemon.wait_done(&[&submitted.event_id], EVENT_DEADLINE);
    for part in &submitted.parts {
        let row = daemon.wait_final(&part.event_id, EVENT_DEADLINE);
        assert_eq!(row.status, "skipped", "part {}: {row:?}", part.part);
        assert!(
            row.detail
                .as_deref()
                .is_some_and(|d| d.contains(&submitted.job_id) && d.contains("nothing exported")),
            "the reason names the parent job: {row:?}"
        );
        let job = sim
            .job(&part.job_id)
            .unwrap_or_else(|| panic!("no part job {}", part.job_id));
        assert_eq!(job.status, "complete", "part job {}: {job:?}", part.job_id);
    }
    let parent = sim.job(&submitted.job_id).expect("the parent job");
    assert_eq!(parent.status, "complete", "{parent:?}");

    // The workbook, exactly once: one file per sheet, all from the parent's event (whose
    // workbook only the job named).
    let files = csv_files(&csv_dir);
    assert_eq!(files.len(), submitted.sheets.len(), "{:?}", files.keys());
    let sqlite = sqlite_rows(&db);
    for sheet in &submitted.sheets {
        let expected = record_ids(sim.config(), &sheet.id);
        let name = format!("{}-{}.csv", sheet.slug, submitted.event_id);
        csv_ids(csv_file(&files, &name)).assert_exactly(&expected, &name);
        let in_table = Tally {
            seen: expected
                .iter()
                .filter_map(|id| sqlite.seen.get_key_value(id))
                .map(|(id, n)| (id.clone(), *n))
                .collect(),
        };
        in_table.assert_exactly(&expected, &format!("table {}", sheet.slug));
    }
    assert_eq!(
        sqlite.total(),
        400,
        "the parts exported nothing more: {}",
        sqlite.total()
    );
}

#[test]
fn a_webhook_egress_body_exports_every_record_of_its_workbook() {
    let sim = Sim::start(SimConfig {
        rows: 700,
        sheets_per_workbook: 2,
        ..SimConfig::default()
    });
    let dir = TestDir::new("platform-egress");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .route(&["webhook-egress"], &["archive"])
        .page_size(100);
    let csv_dir = settings.csv_dir("archive");
    let daemon = settings.start();

    // What @flatfile/plugin-webhook-egress posts: the workbook, each sheet with the first page
    // of its records only (here, two of them).
    let workbook = "us_wb_egress1";
    let sheets = workbook_sheets(sim.config(), workbook);
    let body = serde_json::json!({
        "workbook": {
            "id": workbook,
            "environmentId": DEFAULT_ENVIRONMENT_ID,
            "sheets": sheets.iter().map(|(id, slug, _)| serde_json::json!({
                "id": id,
                "slug": slug,
                "records": record_ids(sim.config(), id).iter().take(2)
                    .map(|rid| serde_json::json!({ "id": rid, "values": {}, "valid": true }))
                    .collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }
    });
    let reply = daemon.post(&body);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let event = reply.json()["eventId"]
        .as_str()
        .expect("the answer names the event")
        .to_owned();
    assert!(event.starts_with("egress-"), "{event}");
    daemon.wait_done(&[&event], EVENT_DEADLINE);
    assert_eq!(daemon.post(&body).json()["status"], "duplicate");

    let files = csv_files(&csv_dir);
    for (sheet_id, slug, rows) in &sheets {
        let expected = record_ids(sim.config(), sheet_id);
        assert_eq!(expected.len() as u64, *rows);
        let name = format!("{slug}-{event}.csv");
        csv_ids(csv_file(&files, &name)).assert_exactly(&expected, &name);
    }
}
