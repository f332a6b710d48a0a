//! A legacy Portal import, end to end.

use flatfile_sim::{legacy_row_ids, legacy_webhook_body};
use flatsync_tests::check::{
    assert_csv_matches, assert_sqlite_matches, csv_files, csv_rows, sqlite_rows, sqlite_tables,
};
use flatsync_tests::{Daemon, Sim, TestDir};

use crate::common::{EVENT_DEADLINE, assert_has_csv_edge_cases};

#[test]
fn legacy_import_reaches_csv_and_sqlite_once() {
    let rows = 1_500;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("legacy");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["portalImportSubmitted"], &["archive", "warehouse"])
        .page_size(200);
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let mut daemon = settings.start();

    let (batch, event) = ("b-legacy-1", "evt-legacy-1");
    let reply = daemon.post(&legacy_webhook_body(batch, event, rows));
    assert_eq!(reply.status, 200, "webhook answer: {}", reply.text());
    assert_eq!(reply.json()["status"], "accepted", "{}", reply.text());
    daemon.wait_done(&[event], EVENT_DEADLINE);

    let expected = legacy_row_ids(sim.config(), batch);
    assert_eq!(expected.len() as u64, rows);
    csv_rows(&csv_dir).assert_exactly(&expected, "csv-folder sink");
    sqlite_rows(&db).assert_exactly(&expected, "sqlite sink");

    let files = csv_files(&csv_dir);
    let names: Vec<&String> = files.keys().collect();
    assert_eq!(names, ["legacy-b-legacy-1.csv"], "one CSV file per stream");
    assert_eq!(
        sqlite_tables(&db),
        ["legacy_batch"],
        "one table per stream kind"
    );

    // The values, not only the ids: read back through the csv crate, every cell must equal
    // what the simulator served, commas, quotes, newlines and non-ASCII included.
    let source = sim.legacy_rows(batch);
    assert_eq!(
        source.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        expected,
        "the simulator binary serves the ids its library computes"
    );
    assert_has_csv_edge_cases(&source);
    assert_csv_matches(&files["legacy-b-legacy-1.csv"], &source);
    assert_sqlite_matches(&db, "legacy_batch", event, &source);

    let status = daemon.stop();
    assert!(
        status.success(),
        "SIGTERM should stop flatsync cleanly, got {status}"
    );
}
