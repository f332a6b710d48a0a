//! Records and commit events in every shape Flatfile has published (issue 10, item 5): record
//! ids, a count only, a `dataUrl`, the deprecated `versionId`. Each reaches the sinks with its
//! records, or fails by name; none ends `done` with its records left out.

use std::collections::BTreeSet;

use flatfile_sim::{
    DEFAULT_ENVIRONMENT_ID, EventShape, NewRecords, RecordEdit, RecordsChange, SimConfig,
    SubmitRequest,
};
use flatsync_tests::check::{SqlValue, csv_files, sqlite_table};
use flatsync_tests::{Daemon, DaemonProcess, Sim, TestDir};
use serde_json::json;

use crate::common::{
    EVENT_DEADLINE, admin_ok, csv_file, csv_ids, event_of, polling_environment, sheet_of,
};

/// Waits until each event of `topics` in the change is final, and returns those events' ids.
fn wait_topics(daemon: &DaemonProcess, change: &RecordsChange, topics: &[&str]) -> Vec<String> {
    let ids: Vec<String> = topics.iter().map(|t| event_of(change, t)).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    daemon.wait_done(&refs, EVENT_DEADLINE);
    ids
}

#[test]
fn records_and_commit_events_in_every_shape_deliver_their_records() {
    let sim = Sim::start(SimConfig {
        rows: 120,
        ..SimConfig::default()
    });
    let admin = sim.admin();
    let submitted = admin_ok(admin.submit(&SubmitRequest::default()), "submit");
    let contacts = sheet_of(&submitted, "contacts");
    let dir = TestDir::new("shapes-every");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(
            &["job:ready", "records:*", "commit:created"],
            &["archive", "warehouse"],
        )
        .raw(&polling_environment("demo", DEFAULT_ENVIRONMENT_ID, None));
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let daemon = settings.start();
    daemon.wait_done(&[&submitted.event_id], EVENT_DEADLINE);

    // Each phase is finished before the next, so every file's content is known.
    let mut exact: Vec<(String, Vec<String>)> = Vec::new();
    let mut snapshots: Vec<String> = Vec::new();

    // dataUrl: records:created names its commit only through the dataUrl.
    let by_url = admin_ok(
        admin.add_records_as(&contacts, &NewRecords::Count(3), EventShape::DataUrl),
        "add records (dataUrl)",
    );
    for id in wait_topics(&daemon, &by_url, &["records:created", "commit:created"]) {
        exact.push((format!("contacts-{id}.csv"), by_url.record_ids.clone()));
    }

    // versionId: the commit is named only by its deprecated name, in the context.
    let by_version = admin_ok(
        admin.add_records_as(&contacts, &NewRecords::Count(2), EventShape::VersionId),
        "add records (versionId)",
    );
    for id in wait_topics(&daemon, &by_version, &["records:created", "commit:created"]) {
        exact.push((format!("contacts-{id}.csv"), by_version.record_ids.clone()));
    }

    // A count only: nothing names the records, so the whole sheet is delivered (the default
    // `unnamed_records = "snapshot"`); the commit event still names exactly the new ones.
    let counted = admin_ok(
        admin.add_records_as(&contacts, &NewRecords::Count(4), EventShape::Count),
        "add records (count)",
    );
    wait_topics(&daemon, &counted, &["records:created", "commit:created"]);
    snapshots.push(event_of(&counted, "records:created"));
    exact.push((
        format!("contacts-{}.csv", event_of(&counted, "commit:created")),
        counted.record_ids.clone(),
    ));
    let sheet_after_adds: Vec<String> = admin_ok(admin.sheet_rows(&contacts), "sheet rows")
        .into_iter()
        .map(|r| r.id)
        .collect();

    // An edit with a count only: a snapshot too, carrying the edited values.
    let edits = [RecordEdit {
        id: counted.record_ids[0].clone(),
        values: json!({"age": 77}).as_object().expect("an object").clone(),
    }];
    let edited = admin_ok(
        admin.edit_records_as(&contacts, &edits, EventShape::Count),
        "edit records (count)",
    );
    wait_topics(&daemon, &edited, &["records:updated", "commit:created"]);
    snapshots.push(event_of(&edited, "records:updated"));

    let files = csv_files(&csv_dir);
    for (name, ids) in &exact {
        csv_ids(csv_file(&files, name)).assert_exactly(ids, name);
    }
    for event in &snapshots {
        let name = format!("contacts-snapshot-{event}.csv");
        csv_ids(csv_file(&files, &name)).assert_exactly(&sheet_after_adds, &name);
    }
    let no_event_rows: Vec<&String> = files.keys().filter(|n| n.starts_with("events-")).collect();
    assert!(
        no_event_rows.is_empty(),
        "a records event became an `events` row instead of its records: {no_event_rows:?}"
    );

    // SQLite holds the sheet as it is now, the edit included.
    let table = sqlite_table(&db, "contacts");
    let have: BTreeSet<&String> = table.keys().collect();
    let want: BTreeSet<&String> = sheet_after_adds.iter().collect();
    assert_eq!(have, want, "contacts table against the sheet");
    assert_eq!(
        table[&counted.record_ids[0]].get("age"),
        Some(&SqlValue::Integer(77)),
        "the edited value"
    );
}

#[test]
fn unnamed_records_fail_where_the_route_says_so_and_deletions_without_ids_fail() {
    let sim = Sim::start(SimConfig {
        rows: 40,
        ..SimConfig::default()
    });
    let admin = sim.admin();
    let submitted = admin_ok(admin.submit(&SubmitRequest::default()), "submit");
    let contacts = sheet_of(&submitted, "contacts");
    let dir = TestDir::new("shapes-unnamed");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("lenient")
        .sink_sqlite("strict")
        .route(&["job:ready"], &["lenient", "strict"])
        .route(&["records:*"], &["lenient"])
        .raw(
            "[[routes]]\ntopics = [\"records:*\"]\nsinks = [\"strict\"]\nunnamed_records = \"fail\"\n",
        )
        .raw(&polling_environment("demo", DEFAULT_ENVIRONMENT_ID, None));
    let (csv_dir, db) = (settings.csv_dir("lenient"), settings.sqlite_path("strict"));
    let daemon = settings.start();
    daemon.wait_done(&[&submitted.event_id], EVENT_DEADLINE);

    let counted = admin_ok(
        admin.add_records_as(&contacts, &NewRecords::Count(2), EventShape::Count),
        "add records (count)",
    );
    let created = event_of(&counted, "records:created");
    let row = daemon.wait_final(&created, EVENT_DEADLINE);
    assert_eq!(row.status, "failed", "{row:?}\n{}", daemon.log_tail());
    let detail = row.detail.unwrap_or_default();
    assert!(
        detail.contains("sink `strict`") && detail.contains("names no records"),
        "the failure names the sink and what the event lacked: {detail}"
    );
    assert!(
        !detail.contains("sink `lenient`"),
        "the lenient sink took the snapshot: {detail}"
    );
    let files = csv_files(&csv_dir);
    let sheet_now: Vec<String> = admin_ok(admin.sheet_rows(&contacts), "sheet rows")
        .into_iter()
        .map(|r| r.id)
        .collect();
    let name = format!("contacts-snapshot-{created}.csv");
    csv_ids(csv_file(&files, &name)).assert_exactly(&sheet_now, &name);
    let config = daemon.settings().config_path();
    let config = config.to_str().expect("a UTF-8 path");
    let dead = daemon
        .settings()
        .cli(&["dead-letter", "list", "--config", config]);
    let listing = String::from_utf8_lossy(&dead.stdout);
    assert!(
        listing.contains(&created) && listing.contains("strict"),
        "the refused delivery is a dead letter:\n{listing}"
    );

    // A deletion that names no ids cannot be applied: it fails, and the rows stay.
    let before = sqlite_table(&db, "contacts").len();
    let doomed = vec![sheet_now[0].clone(), sheet_now[1].clone()];
    let deleted = admin_ok(
        admin.delete_records_as(&contacts, &doomed, EventShape::Count),
        "delete records (count)",
    );
    let deletion = event_of(&deleted, "records:deleted");
    let row = daemon.wait_final(&deletion, EVENT_DEADLINE);
    assert_eq!(row.status, "failed", "{row:?}");
    assert!(
        row.detail
            .as_deref()
            .is_some_and(|d| d.contains("payload.recordIds")),
        "{row:?}"
    );
    let table = sqlite_table(&db, "contacts");
    assert_eq!(table.len(), before, "nothing was deleted");
    assert!(doomed.iter().all(|id| table.contains_key(id)));
}

#[test]
fn a_data_url_flatsync_cannot_map_is_read_as_given_past_a_page_cap() {
    // `filter=all` is not a selection flatsync knows, so the dataUrl is read as it is, page by
    // page, under a cap of 100 records a page while flatsync asks for 1,000.
    let sim = Sim::start(SimConfig {
        rows: 500,
        max_page_size: 100,
        ..SimConfig::default()
    });
    let admin = sim.admin();
    let submitted = admin_ok(admin.submit(&SubmitRequest::default()), "submit");
    let contacts = sheet_of(&submitted, "contacts");
    let dir = TestDir::new("shapes-data-url");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .route(&["records:created"], &["archive"])
        .page_size(1000);
    let csv_dir = settings.csv_dir("archive");
    let daemon = settings.start();
    let event = "us_evt_dataUrlAll";
    let reply = daemon.post(&json!({
        "id": event,
        "topic": "records:created",
        "domain": "workbook",
        "context": { "environmentId": DEFAULT_ENVIRONMENT_ID, "sheetId": contacts },
        "payload": { "count": 250 },
        "dataUrl": format!("v1/sheets/{contacts}/records?filter=all"),
    }));
    assert_eq!(reply.status, 200, "{}", reply.text());
    daemon.wait_done(&[event], EVENT_DEADLINE);
    let expected: Vec<String> = admin_ok(admin.sheet_rows(&contacts), "sheet rows")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(expected.len(), 250);
    let files = csv_files(&csv_dir);
    let name = format!("contacts-{event}.csv");
    csv_ids(csv_file(&files, &name)).assert_exactly(&expected, &name);
}
