//! Legacy Portal and Workspaces events, end to end: an import, a status change of an import
//! (delivered again, into a stream of its own), and Workspaces sheets read from the legacy
//! Workspaces records endpoint.

use flatfile_sim::{
    SimConfig, WorkspaceNotification, legacy_row_ids, legacy_webhook_body, workspace_rows,
    workspace_webhook_body,
};
use flatsync_tests::check::{
    SqlValue, assert_csv_matches, assert_sqlite_matches, csv_files, csv_rows, sqlite_rows,
    sqlite_table, sqlite_tables,
};
use flatsync_tests::{Daemon, Sim, TestDir};

use crate::common::{EVENT_DEADLINE, assert_has_csv_edge_cases, csv_file, csv_ids};

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

#[test]
fn a_status_change_of_an_import_is_delivered_again_into_a_stream_of_its_own() {
    let rows = 300;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("legacy-status");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .route(
            &["portalImportSubmitted", "recordStatusModified"],
            &["archive"],
        )
        .page_size(128);
    let csv_dir = settings.csv_dir("archive");
    let daemon = settings.start();

    let batch = "b-status-1";
    let reply = daemon.post(&legacy_webhook_body(batch, "evt-import", rows));
    assert_eq!(reply.status, 200, "{}", reply.text());
    daemon.wait_done(&["evt-import"], EVENT_DEADLINE);
    // Two status changes of the batch, as the dashboard's "Record status modified" sends them.
    for event in ["evt-status-1", "evt-status-2"] {
        let mut body = legacy_webhook_body(batch, event, rows);
        body["type"] = "Record status modified".into();
        let reply = daemon.post(&body);
        assert_eq!(reply.status, 200, "{}", reply.text());
        daemon.wait_done(&[event], EVENT_DEADLINE);
    }

    let expected = legacy_row_ids(sim.config(), batch);
    let files = csv_files(&csv_dir);
    let names: Vec<&String> = files.keys().collect();
    assert_eq!(
        names,
        [
            "legacy-b-status-1-evt-status-1.csv",
            "legacy-b-status-1-evt-status-2.csv",
            "legacy-b-status-1.csv"
        ],
        "each status change is a stream of its own, which a folder sink cannot skip as held"
    );
    for name in names {
        csv_ids(&files[name]).assert_exactly(&expected, name);
    }
}

#[test]
fn workspaces_sheets_are_read_from_the_legacy_workspaces_endpoint() {
    let sim = Sim::start(SimConfig {
        rows: 230,
        max_page_size: 100,
        ..SimConfig::default()
    });
    let dir = TestDir::new("legacy-workspaces");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(
            &["newRecordsAdded", "recordStatusModified"],
            &["archive", "warehouse"],
        )
        .page_size(1000);
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let daemon = settings.start();

    let (workspace, sheet) = ("ws-e2e-1", "sheet-e2e-1");
    let sent = [
        ("evt-ws-added", WorkspaceNotification::NewRecordsAdded),
        ("evt-ws-status", WorkspaceNotification::RecordStatusModified),
    ];
    for (event, notification) in sent {
        let reply = daemon.post(&workspace_webhook_body(
            event,
            workspace,
            sheet,
            notification,
        ));
        assert_eq!(reply.status, 200, "{}", reply.text());
        daemon.wait_done(&[event], EVENT_DEADLINE);
    }

    let served = workspace_rows(sim.config(), workspace, sheet);
    assert_eq!(served.len(), 230);
    let ids: Vec<String> = served.iter().map(|r| r.id.clone()).collect();
    let files = csv_files(&csv_dir);
    for (event, _) in sent {
        let name = format!("workspace-{sheet}-{event}.csv");
        csv_ids(csv_file(&files, &name)).assert_exactly(&ids, &name);
    }
    let table = sqlite_table(&db, &format!("workspace_{sheet}"));
    assert_eq!(table.len(), served.len(), "one row per record");
    for row in &served {
        let stored = &table[&row.id];
        assert_eq!(
            stored.get("_status"),
            Some(&SqlValue::Text(row.status.clone()))
        );
        for (key, value) in &row.values {
            let want = match value {
                serde_json::Value::String(s) => SqlValue::Text(s.clone()),
                serde_json::Value::Null => SqlValue::Null,
                serde_json::Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
                serde_json::Value::Number(n) if n.is_i64() => {
                    SqlValue::Integer(n.as_i64().expect("an integer"))
                }
                serde_json::Value::Number(n) => SqlValue::Real(n.as_f64().expect("a number")),
                other => SqlValue::Text(other.to_string()),
            };
            assert_eq!(
                stored.get(key),
                Some(&want),
                "record {} field {key}",
                row.id
            );
        }
    }
    let stats = sim.stats();
    assert!(
        stats.workspace_records >= 6,
        "3 pages of at most 100 records per event: {stats:?}"
    );
    assert_eq!(
        (stats.sheets, stats.records),
        (0, 0),
        "nothing was read from the Platform API: {stats:?}"
    );

    // Naming a sheet without its workspace cannot be read: it fails by name.
    let mut body = workspace_webhook_body(
        "evt-ws-nows",
        workspace,
        sheet,
        WorkspaceNotification::NewRecordsAdded,
    );
    body["scope"]
        .as_object_mut()
        .expect("a scope object")
        .remove("workspaceId");
    let reply = daemon.post(&body);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let row = daemon.wait_final("evt-ws-nows", EVENT_DEADLINE);
    assert_eq!(row.status, "failed", "{row:?}");
    assert!(
        row.detail
            .as_deref()
            .is_some_and(|d| d.contains("workspaceId")),
        "{row:?}"
    );
}
