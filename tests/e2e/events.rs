//! Every Flatfile event, by webhook or by polling the events API: record mutations end up in
//! the sinks as they are in Flatfile, events seen both ways are delivered once, each topic
//! family reaches its sinks, deletions reach every kind of sink, environments stay apart, and
//! route filters and snapshots pick what each sink gets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use flatfile_sim::receiver::{ReceiverConfig, RunningReceiver};
use flatfile_sim::{
    AdminClient, DEFAULT_ENVIRONMENT_ID, EmitEvent, NewRecords, RecordEdit, RecordsChange,
    SheetRow, SimConfig, SimEnvironment, SimEvent, SubmitRequest, Submitted, WorkspaceNotification,
    workspace_rows, workspace_webhook_body,
};
use flatsync_tests::check::{
    SqlValue, Tally, assert_csv_matches, assert_no_csv_leftovers, csv_files, sqlite_rows,
    sqlite_table, sqlite_tables,
};
use flatsync_tests::daemon::toml_string;
use flatsync_tests::sim::SourceRow;
use flatsync_tests::{Daemon, DaemonProcess, Sim, TestDir, wait};
use serde_json::{Map, Value as Json, json};

use crate::common::{
    EVENT_DEADLINE, admin_ok, csv_file, csv_ids, event_of, polling_environment, sheet_of,
};

/// How long every event the simulator logged may take to be polled, stored and acknowledged.
const ACK_DEADLINE: Duration = Duration::from_secs(120);

/// Second environment of the simulator in the environment test.
const OTHER_ENVIRONMENT_ID: &str = "us_env_other";

/// A `whsec_` secret: the padded base64 of 36 bytes.
const FORWARD_SECRET: &str = "whsec_ZmxhdHN5bmMtZTJlLWV2ZW50cy1kZWxldGlvbi1zZWNyZXQh";

/// The environment ids the state database keeps a polling cursor for, sorted.
fn poll_cursor_environments(daemon: &DaemonProcess) -> Vec<String> {
    daemon
        .polling()
        .into_iter()
        .map(|p| p.environment_id)
        .collect()
}

/// Waits until every event the simulator logged (in every environment) is in the daemon's
/// inbox with a final status and acknowledged at least once; returns the events.
fn wait_every_event_polled_and_acknowledged(
    admin: &AdminClient,
    daemon: &DaemonProcess,
) -> Vec<SimEvent> {
    wait::until(
        "every event of the simulator to be stored, final and acknowledged",
        ACK_DEADLINE,
        || {
            daemon.assert_alive("while events were polled");
            let events = admin_ok(admin.events(None), "GET /_sim/events");
            let inbox = daemon.inbox();
            let all = events.iter().all(|e| {
                e.ack_count >= 1 && inbox.get(&e.id).is_some_and(|status| status != "pending")
            });
            all.then_some(events)
        },
        || {
            let events = admin.events(None).unwrap_or_default();
            let inbox = daemon.inbox();
            let behind: Vec<String> = events
                .iter()
                .filter(|e| {
                    e.ack_count == 0 || inbox.get(&e.id).is_none_or(|status| status == "pending")
                })
                .map(|e| {
                    format!(
                        "{} {} acks={} inbox={:?}",
                        e.id,
                        e.topic,
                        e.ack_count,
                        inbox.get(&e.id)
                    )
                })
                .collect();
            format!("events behind: {behind:#?}\n{}", daemon.log_tail())
        },
    )
}

/// Waits until each event of a record change is final; those whose topic is in `routed` must
/// end `done`, the others `unrouted`.
fn wait_change(daemon: &DaemonProcess, change: &RecordsChange, routed: &[&str]) {
    for event in &change.events {
        let row = daemon.wait_final(&event.id, EVENT_DEADLINE);
        let want = if routed.contains(&event.topic.as_str()) {
            "done"
        } else {
            "unrouted"
        };
        assert_eq!(
            row.status,
            want,
            "{} ({}) ended {:?}\n{}",
            event.id,
            event.topic,
            row.detail,
            daemon.log_tail()
        );
    }
}

/// Whether the sqlite sink stored `value` the way it promises: NULL, 0/1, INTEGER, REAL, TEXT,
/// and arrays and objects as JSON text.
fn json_matches_sql(value: &Json, stored: &SqlValue) -> bool {
    match (value, stored) {
        (Json::Null, SqlValue::Null) => true,
        (Json::Bool(b), SqlValue::Integer(n)) => *n == i64::from(*b),
        (Json::Number(n), SqlValue::Integer(stored)) => n.as_i64() == Some(*stored),
        (Json::Number(n), SqlValue::Real(stored)) => {
            n.as_i64().is_none() && n.as_f64() == Some(*stored)
        }
        (Json::String(s), SqlValue::Text(t)) => s == t,
        (json @ (Json::Array(_) | Json::Object(_)), SqlValue::Text(t)) => {
            serde_json::from_str::<Json>(t).is_ok_and(|v| v == *json)
        }
        _ => false,
    }
}

/// Asserts table `table` of an sqlite sink holds exactly the records of `rows` (no more, no
/// fewer), each with the record's validity and every value.
fn assert_table_equals_sheet(db: &Path, table: &str, rows: &[SheetRow]) {
    let stored = sqlite_table(db, table);
    let want: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let have: BTreeSet<&str> = stored.keys().map(String::as_str).collect();
    let missing: Vec<&&str> = want.difference(&have).collect();
    let extra: Vec<&&str> = have.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} table {table}: {} rows, the sheet has {}; missing {missing:?}, not in the sheet {extra:?}",
        db.display(),
        have.len(),
        want.len()
    );
    let mut problems = Vec::new();
    for row in rows {
        let values = &stored[&row.id];
        let valid = values.get("_valid");
        if valid != Some(&SqlValue::Integer(i64::from(row.valid))) {
            problems.push(format!("{}: _valid {valid:?}, want {}", row.id, row.valid));
        }
        for (key, value) in &row.values {
            let got = values.get(key);
            if !got.is_some_and(|got| json_matches_sql(value, got)) {
                problems.push(format!(
                    "{} {key}: stored {got:?}, sheet has {value}",
                    row.id
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} table {table} differs from the sheet in {} values:\n{}",
        db.display(),
        problems.len(),
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The records of `sheet` as the records API serves them now, limited to `ids`.
fn source_rows(sim: &Sim, sheet: &str, ids: &[String]) -> Vec<SourceRow> {
    let rows: Vec<SourceRow> = sim
        .sheet_records(sheet)
        .into_iter()
        .filter(|r| ids.contains(&r.id))
        .collect();
    assert_eq!(
        rows.len(),
        ids.len(),
        "sheet {sheet} serves {} of the records {ids:?}",
        rows.len()
    );
    rows
}

/// The record ids of sheet rows, in order.
fn ids_of(rows: &[SheetRow]) -> Vec<String> {
    rows.iter().map(|r| r.id.clone()).collect()
}

/// POSTs an event to the daemon's webhook the way Flatfile would, and returns the answer's
/// `status` (`accepted` or `duplicate`).
fn post_event(daemon: &DaemonProcess, event: &SimEvent) -> String {
    let reply = daemon.post(&event.to_platform_json());
    assert_eq!(
        reply.status,
        200,
        "webhook answer to {} ({}): {}",
        event.id,
        event.topic,
        reply.text()
    );
    let json = reply.json();
    assert_eq!(json["eventId"], event.id.as_str(), "{}", reply.text());
    json["status"]
        .as_str()
        .unwrap_or_else(|| panic!("no status in {}", reply.text()))
        .to_owned()
}

/// The simulator's event with this id.
fn sim_event(admin: &AdminClient, id: &str) -> SimEvent {
    admin_ok(admin.events(None), "GET /_sim/events")
        .into_iter()
        .find(|e| e.id == id)
        .unwrap_or_else(|| panic!("the simulator has no event {id}"))
}

fn object(value: Json) -> Map<String, Json> {
    match value {
        Json::Object(map) => map,
        other => panic!("not a JSON object: {other}"),
    }
}

#[test]
fn polling_delivers_a_submit_and_record_mutations_without_any_webhook() {
    let sim = Sim::start(SimConfig {
        rows: 200,
        ..SimConfig::default()
    });
    let admin = sim.admin();
    // Submitted before the daemon starts: `poll_start = "beginning"` must still find it.
    let submitted = admin_ok(admin.submit(&SubmitRequest::default()), "submit");

    let dir = TestDir::new("events-polling");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["job:ready", "records:*"], &["archive", "warehouse"])
        .page_size(50)
        .raw(&polling_environment("demo", DEFAULT_ENVIRONMENT_ID, None));
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let daemon = settings.start();

    daemon.wait_done(&[&submitted.event_id], EVENT_DEADLINE);
    let files = csv_files(&csv_dir);
    for sheet in &submitted.sheets {
        let source = sim.sheet_records(&sheet.id);
        assert_eq!(source.len() as u64, sheet.rows, "sheet {}", sheet.slug);
        let file = csv_file(
            &files,
            &format!("{}-{}.csv", sheet.slug, submitted.event_id),
        );
        assert_csv_matches(file, &source);
        let rows = admin_ok(admin.sheet_rows(&sheet.id), "sheet rows");
        assert_table_equals_sheet(&db, &sheet.slug, &rows);
    }
    let job = sim
        .job(&submitted.job_id)
        .unwrap_or_else(|| panic!("the simulator never saw job {}", submitted.job_id));
    assert_eq!(job.status, "complete", "the submit's job: {job:?}");

    // One phase at a time, each finished before the next, so the end state does not depend
    // on which of two events touching the same record a sink applied last.
    let contacts = sheet_of(&submitted, "contacts");
    let added_values = vec![
        object(json!({
            "firstName": "Ada, \"the\" Countess", "lastName": "Lovelace\nByron",
            "email": "ada@example.com", "age": 36, "subscribed": true, "tier": "pro"
        })),
        object(json!({"firstName": "Zoë", "email": "zoe@example.com", "age": 41.5})),
        object(json!({"firstName": "=SUM(A1:A9)", "email": "formula@example.com"})),
    ];
    let added = admin_ok(
        admin.add_records(&contacts, &NewRecords::Values(added_values)),
        "add records",
    );
    wait_change(&daemon, &added, &["records:created"]);

    let generated = admin_ok(admin.sheet_rows(&contacts), "sheet rows");
    let edit = |id: &str, values: Json| RecordEdit {
        id: id.to_owned(),
        values: object(values),
    };
    let edits = vec![
        edit(&generated[0].id, json!({"age": 99, "tier": "free"})),
        edit(&generated[4].id, json!({"lastName": "Renamed, \"again\""})),
        edit(
            &added.record_ids[1],
            json!({"subscribed": false, "age": null}),
        ),
    ];
    let edited = admin_ok(admin.edit_records(&contacts, &edits), "edit records");
    wait_change(&daemon, &edited, &["records:updated"]);

    let doomed = vec![
        generated[2].id.clone(),
        generated[3].id.clone(),
        added.record_ids[2].clone(),
    ];
    let deleted = admin_ok(admin.delete_records(&contacts, &doomed), "delete records");
    wait_change(&daemon, &deleted, &["records:deleted"]);

    for sheet in &submitted.sheets {
        let rows = admin_ok(admin.sheet_rows(&sheet.id), "sheet rows");
        assert_table_equals_sheet(&db, &sheet.slug, &rows);
    }
    let now = admin_ok(admin.sheet_rows(&contacts), "sheet rows");
    for id in &doomed {
        assert!(
            !now.iter().any(|r| &r.id == id),
            "the simulator still serves deleted {id}"
        );
    }

    let files = csv_files(&csv_dir);
    assert_no_csv_leftovers(&csv_dir);
    let created_file = csv_file(
        &files,
        &format!("contacts-{}.csv", event_of(&added, "records:created")),
    );
    csv_ids(created_file).assert_exactly(&added.record_ids, "the records:created file");
    // Neither edited record was deleted afterwards, so the file shows them as they are now.
    let updated_file = csv_file(
        &files,
        &format!("contacts-{}.csv", event_of(&edited, "records:updated")),
    );
    assert_csv_matches(
        updated_file,
        &source_rows(&sim, &contacts, &edited.record_ids),
    );
    let deletions_file = csv_file(
        &files,
        &format!(
            "contacts-deleted-{}.csv",
            event_of(&deleted, "records:deleted")
        ),
    );
    assert_eq!(deletions_file.headers, ["_id", "_deleted_at"]);
    csv_ids(deletions_file).assert_exactly(&doomed, "the deletions file");

    let events = wait_every_event_polled_and_acknowledged(&admin, &daemon);
    assert!(
        events.iter().any(|e| e.topic == "job:completed"),
        "the simulator logged no job:completed: {:?}",
        events.iter().map(|e| &e.topic).collect::<Vec<_>>()
    );
    let stored = daemon.inbox();
    let logged: BTreeSet<&String> = events.iter().map(|e| &e.id).collect();
    assert_eq!(
        stored.keys().collect::<BTreeSet<_>>(),
        logged,
        "the inbox holds exactly the simulator's events"
    );
    assert_eq!(
        poll_cursor_environments(&daemon),
        [DEFAULT_ENVIRONMENT_ID],
        "poll_cursors"
    );
}

#[test]
fn an_event_both_posted_and_polled_is_delivered_once() {
    let sim = Sim::start(SimConfig {
        rows: 120,
        ..SimConfig::default()
    });
    let admin = sim.admin();
    let dir = TestDir::new("events-both-ways");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["job:ready", "records:*"], &["archive", "warehouse"])
        .raw(&polling_environment("demo", DEFAULT_ENVIRONMENT_ID, None));
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let daemon = settings.start();

    // Each event is posted as soon as the simulator logged it, racing the poller for it.
    let mut posted: BTreeSet<String> = BTreeSet::new();
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    let mut post_new_events = |posted: &mut BTreeSet<String>| {
        for event in admin_ok(admin.events(None), "GET /_sim/events") {
            if posted.insert(event.id.clone()) {
                *answers.entry(post_event(&daemon, &event)).or_default() += 1;
            }
        }
    };
    let submitted = admin_ok(admin.submit(&SubmitRequest::default()), "submit");
    post_new_events(&mut posted);
    // Finished before the records change, so the submit's files hold the sheets as submitted.
    daemon.wait_done(&[&submitted.event_id], EVENT_DEADLINE);
    let submitted_rows: Vec<Vec<String>> = submitted
        .sheets
        .iter()
        .map(|sheet| ids_of(&admin_ok(admin.sheet_rows(&sheet.id), "sheet rows")))
        .collect();
    let contacts = sheet_of(&submitted, "contacts");
    let added = admin_ok(
        admin.add_records(&contacts, &NewRecords::Count(4)),
        "add records",
    );
    post_new_events(&mut posted);
    let first_two = admin_ok(admin.sheet_rows(&contacts), "sheet rows");
    let edits: Vec<RecordEdit> = first_two[..2]
        .iter()
        .map(|r| RecordEdit {
            id: r.id.clone(),
            values: object(json!({"tier": "pro"})),
        })
        .collect();
    let edited = admin_ok(admin.edit_records(&contacts, &edits), "edit records");
    post_new_events(&mut posted);

    let events = wait_every_event_polled_and_acknowledged(&admin, &daemon);
    // The job's completion is logged only once the daemon finished the submit.
    post_new_events(&mut posted);
    let events_after = wait_every_event_polled_and_acknowledged(&admin, &daemon);
    assert!(events_after.len() >= events.len());
    let answered: usize = answers.values().sum();
    assert_eq!(answered, posted.len(), "answers: {answers:?}");
    assert!(
        answers
            .keys()
            .all(|status| status == "accepted" || status == "duplicate"),
        "webhook answers: {answers:?}"
    );

    // Every event once more, now that the poller has stored them all: all duplicates.
    for event in &events_after {
        assert_eq!(
            post_event(&daemon, event),
            "duplicate",
            "{} posted again",
            event.id
        );
    }

    let stored = daemon.inbox();
    let logged: BTreeSet<&String> = events_after.iter().map(|e| &e.id).collect();
    assert_eq!(
        stored.keys().collect::<BTreeSet<_>>(),
        logged,
        "the inbox holds each event once"
    );
    let routed = [
        submitted.event_id.clone(),
        event_of(&added, "records:created"),
        event_of(&edited, "records:updated"),
    ];
    for event in &events_after {
        let want = if routed.contains(&event.id) {
            "done"
        } else {
            "unrouted"
        };
        assert_eq!(stored[&event.id], want, "{} ({})", event.id, event.topic);
    }

    // One file per stream, each with its records once.
    let mut expected_files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (sheet, ids) in submitted.sheets.iter().zip(&submitted_rows) {
        expected_files.insert(
            format!("{}-{}.csv", sheet.slug, submitted.event_id),
            ids.clone(),
        );
    }
    expected_files.insert(
        format!("contacts-{}.csv", event_of(&added, "records:created")),
        added.record_ids.clone(),
    );
    expected_files.insert(
        format!("contacts-{}.csv", event_of(&edited, "records:updated")),
        edited.record_ids.clone(),
    );
    assert_no_csv_leftovers(&csv_dir);
    let files = csv_files(&csv_dir);
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        expected_files.keys().collect::<Vec<_>>(),
        "one CSV file per stream"
    );
    for (name, ids) in &expected_files {
        csv_ids(&files[name]).assert_exactly(ids, name);
    }

    let mut every_record = Vec::new();
    for sheet in &submitted.sheets {
        every_record.extend(ids_of(&admin_ok(admin.sheet_rows(&sheet.id), "sheet rows")));
    }
    sqlite_rows(&db).assert_exactly(&every_record, "sqlite sink");
}

#[test]
fn each_topic_family_reaches_its_sinks() {
    let sim = Sim::start(SimConfig {
        rows: 80,
        ..SimConfig::default()
    });
    let admin = sim.admin();
    let dir = TestDir::new("events-families");
    // Webhooks only: the test posts exactly the events it means to check. One stream per
    // event row (`streams = "per_event"`), so each row-less topic is checked in a file of its
    // own; grouped event rows are `grouped.rs`'s.
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["*"], &["archive", "warehouse"])
        .raw("[events]\nstreams = \"per_event\"\n");
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let daemon = settings.start();
    let deliver = |event_id: &str| {
        let event = sim_event(&admin, event_id);
        assert_eq!(post_event(&daemon, &event), "accepted", "{event_id}");
        daemon.wait_done(&[event_id], EVENT_DEADLINE);
        event
    };
    // CSV file name -> the record ids it must hold.
    let mut expected_files: BTreeMap<String, Vec<String>> = BTreeMap::new();

    // job:ready of a workbook submit: every sheet.
    let workbook = admin_ok(admin.submit(&SubmitRequest::default()), "submit");
    let job_created = admin_ok(admin.events(None), "GET /_sim/events")
        .into_iter()
        .find(|e| {
            e.topic == "job:created"
                && e.context.get("jobId") == Some(&Json::from(workbook.job_id.as_str()))
        })
        .expect("a submit logs job:created");
    deliver(&workbook.event_id);
    for sheet in &workbook.sheets {
        let ids = ids_of(&admin_ok(admin.sheet_rows(&sheet.id), "sheet rows"));
        assert_eq!(ids.len() as u64, sheet.rows);
        expected_files.insert(format!("{}-{}.csv", sheet.slug, workbook.event_id), ids);
    }
    let contacts = sheet_of(&workbook, "contacts");
    let companies = sheet_of(&workbook, "companies");

    // job:ready of a sheet submit: that sheet only.
    let sheet_submit = admin_ok(
        admin.submit(&SubmitRequest {
            workbook_id: Some(workbook.workbook_id.clone()),
            sheet_slug: Some("companies".to_owned()),
            ..SubmitRequest::default()
        }),
        "sheet submit",
    );
    assert_eq!(sheet_submit.sheets.len(), 1, "{sheet_submit:?}");
    deliver(&sheet_submit.event_id);
    expected_files.insert(
        format!("companies-{}.csv", sheet_submit.event_id),
        ids_of(&admin_ok(admin.sheet_rows(&companies), "sheet rows")),
    );
    for job in [&workbook.job_id, &sheet_submit.job_id] {
        let state = sim
            .job(job)
            .unwrap_or_else(|| panic!("the simulator never saw job {job}"));
        assert_eq!(state.status, "complete", "{state:?}");
    }

    // records:created names its records; commit:created reads its commit's records.
    let added = admin_ok(
        admin.add_records(&contacts, &NewRecords::Count(3)),
        "add records",
    );
    let created = event_of(&added, "records:created");
    let commit = event_of(&added, "commit:created");
    deliver(&created);
    deliver(&commit);
    expected_files.insert(format!("contacts-{created}.csv"), added.record_ids.clone());
    expected_files.insert(format!("contacts-{commit}.csv"), added.record_ids.clone());

    // records:updated: the edited records with their new values.
    let generated_first = admin_ok(admin.sheet_rows(&contacts), "sheet rows")[0]
        .id
        .clone();
    let edits = vec![
        RecordEdit {
            id: generated_first.clone(),
            values: object(json!({"firstName": "Grace", "age": 85})),
        },
        RecordEdit {
            id: added.record_ids[0].clone(),
            values: object(json!({"tier": "pro", "subscribed": true})),
        },
    ];
    let edited = admin_ok(admin.edit_records(&contacts, &edits), "edit records");
    let updated = event_of(&edited, "records:updated");
    deliver(&updated);
    expected_files.insert(format!("contacts-{updated}.csv"), edited.record_ids.clone());
    let updated_rows = source_rows(&sim, &contacts, &edited.record_ids);

    // records:deleted: a deletions file, rows gone from SQLite.
    let rows_now = admin_ok(admin.sheet_rows(&contacts), "sheet rows");
    let doomed = vec![rows_now[5].id.clone(), added.record_ids[2].clone()];
    let deleted = admin_ok(admin.delete_records(&contacts, &doomed), "delete records");
    let deletion = event_of(&deleted, "records:deleted");
    deliver(&deletion);

    // Row-less topics, known and unknown: each one row of the `events` stream.
    let custom: [(&str, Json, Json); 7] = [
        ("space:created", json!({}), json!({})),
        (
            "file:created",
            json!({"fileId": "us_fl_e2e1"}),
            json!({"status": "complete", "name": "people, \"final\".csv"}),
        ),
        (
            "workbook:updated",
            json!({"workbookId": workbook.workbook_id}),
            json!({"name": "Renamed"}),
        ),
        ("agent:created", json!({"agentId": "us_ag_e2e1"}), json!({})),
        (
            "secret:created",
            json!({"secretId": "us_sec_e2e1"}),
            json!({"name": "API_TOKEN"}),
        ),
        ("cron:hourly", json!({}), json!({})),
        (
            "acme:custom",
            json!({"acmeId": "a-1"}),
            json!({"answer": 42, "nested": {"list": [1, "two", null]}}),
        ),
    ];
    let mut row_less = vec![deliver(&job_created.id)];
    for (topic, context, payload) in custom {
        let emitted = admin_ok(
            admin.emit_event(&EmitEvent {
                topic: topic.to_owned(),
                context: Some(object(context)),
                payload: Some(payload),
                // acme:custom tests leniency with a domain outside the Platform's.
                allow_unknown_domain: topic == "acme:custom",
                ..EmitEvent::default()
            }),
            "emit event",
        );
        row_less.push(deliver(&emitted.id));
    }
    for event in &row_less {
        expected_files.insert(format!("events-{}.csv", event.id), vec![event.id.clone()]);
    }

    // A legacy Workspaces "New records added" naming a sheet: the whole sheet, read from the
    // legacy Workspaces records endpoint with the legacy key, not from the Platform.
    let legacy_event = "nra-e2e-1";
    let (workspace, workspace_sheet) = ("ws-e2e", "wsheet-e2e");
    let reply = daemon.post(&workspace_webhook_body(
        legacy_event,
        workspace,
        workspace_sheet,
        WorkspaceNotification::NewRecordsAdded,
    ));
    assert_eq!(reply.status, 200, "{}", reply.text());
    daemon.wait_done(&[legacy_event], EVENT_DEADLINE);
    expected_files.insert(
        format!("workspace-{workspace_sheet}-{legacy_event}.csv"),
        workspace_rows(sim.config(), workspace, workspace_sheet)
            .into_iter()
            .map(|r| r.id)
            .collect(),
    );

    // CSV: exactly one file per stream, each with its records once.
    assert_no_csv_leftovers(&csv_dir);
    let files = csv_files(&csv_dir);
    let deletions_name = format!("contacts-deleted-{deletion}.csv");
    let mut want_names: Vec<&String> = expected_files.keys().collect();
    want_names.push(&deletions_name);
    want_names.sort();
    assert_eq!(files.keys().collect::<Vec<_>>(), want_names, "CSV files");
    for (name, ids) in &expected_files {
        csv_ids(&files[name]).assert_exactly(ids, name);
    }
    assert_csv_matches(&files[&format!("contacts-{updated}.csv")], &updated_rows);
    let workspace_file = &files[&format!("workspace-{workspace_sheet}-{legacy_event}.csv")];
    let status = workspace_file
        .column("_status")
        .expect("Workspaces records carry their status as `_status`");
    let statuses: BTreeSet<&str> = workspace_file
        .records
        .iter()
        .map(|r| r[status].as_str())
        .collect();
    assert!(
        statuses
            .iter()
            .all(|s| ["accepted", "review", "dismissed"].contains(s)),
        "{statuses:?}"
    );
    let deletions_file = &files[&deletions_name];
    assert_eq!(deletions_file.headers, ["_id", "_deleted_at"]);
    csv_ids(deletions_file).assert_exactly(&doomed, &deletions_name);
    for event in &row_less {
        let file = &files[&format!("events-{}.csv", event.id)];
        let topic = file.column("topic").expect("a topic column");
        assert_eq!(
            file.records[0][topic],
            event.topic,
            "{}",
            file.path.display()
        );
    }

    // SQLite: the sheets as they are now, the Workspaces sheet with each record's status, and
    // one `events` row per row-less event.
    let workspace_table = format!("workspace_{workspace_sheet}");
    let mut tables = sqlite_tables(&db);
    tables.sort();
    assert_eq!(
        tables,
        ["companies", "contacts", "events", workspace_table.as_str()]
    );
    assert_table_equals_sheet(
        &db,
        "contacts",
        &admin_ok(admin.sheet_rows(&contacts), "sheet rows"),
    );
    let workspace_stored = sqlite_table(&db, &workspace_table);
    let served = workspace_rows(sim.config(), workspace, workspace_sheet);
    assert_eq!(
        workspace_stored.len(),
        served.len(),
        "{workspace_table} rows"
    );
    for row in &served {
        let stored = workspace_stored
            .get(&row.id)
            .unwrap_or_else(|| panic!("{workspace_table} lacks record {}", row.id));
        assert_eq!(
            stored.get("_status"),
            Some(&SqlValue::Text(row.status.clone())),
            "record {}",
            row.id
        );
        assert_eq!(
            stored.get("_valid"),
            Some(&SqlValue::Integer(i64::from(row.valid))),
            "record {}",
            row.id
        );
    }
    assert_table_equals_sheet(
        &db,
        "companies",
        &admin_ok(admin.sheet_rows(&companies), "sheet rows"),
    );
    let stored = sqlite_table(&db, "events");
    let want: BTreeSet<&String> = row_less.iter().map(|e| &e.id).collect();
    assert_eq!(stored.keys().collect::<BTreeSet<_>>(), want, "events table");
    for event in &row_less {
        let row = &stored[&event.id];
        let text = |column: &str| match row.get(column) {
            Some(SqlValue::Text(text)) => text.clone(),
            other => panic!("{} {column}: {other:?}", event.id),
        };
        assert_eq!(text("topic"), event.topic);
        assert_eq!(text("domain"), event.domain);
        assert_eq!(text("environmentId"), DEFAULT_ENVIRONMENT_ID);
        assert_eq!(text("createdAt"), event.created_at);
        let context: Json = serde_json::from_str(&text("context")).expect("context is JSON");
        assert_eq!(context, Json::Object(event.context.clone()), "{}", event.id);
        let payload: Json = serde_json::from_str(&text("payload")).expect("payload is JSON");
        assert_eq!(payload, event.payload, "{}", event.id);
    }
}

#[test]
fn deletions_reach_sqlite_marked_sqlite_csv_and_http_forward() {
    let sim = Sim::start(SimConfig {
        rows: 60,
        ..SimConfig::default()
    });
    let admin = sim.admin();
    let receiver = RunningReceiver::start(
        ReceiverConfig::new(vec![FORWARD_SECRET.to_owned()]),
        "127.0.0.1:0".parse().expect("a socket address"),
    )
    .expect("the receiver starts");
    let dir = TestDir::new("events-deletions");
    let base = Daemon::new(dir.path());
    let marked_config = format!(
        "{{ path = {}, deletions = \"mark\" }}",
        toml_string(base.sqlite_path("marked"))
    );
    let settings = base
        .sim(&sim)
        .sink_sqlite("warehouse")
        .sink("marked", "sqlite", &marked_config)
        .sink_csv("archive")
        .sink_http(
            "forward",
            &receiver.url(),
            "FLATSYNC_E2E_FORWARD_SECRET",
            "",
        )
        .env("FLATSYNC_E2E_FORWARD_SECRET", FORWARD_SECRET)
        .route(
            &["job:ready", "records:deleted"],
            &["warehouse", "marked", "archive", "forward"],
        )
        .raw(&polling_environment("demo", DEFAULT_ENVIRONMENT_ID, None));
    let (warehouse, marked, csv_dir) = (
        settings.sqlite_path("warehouse"),
        settings.sqlite_path("marked"),
        settings.csv_dir("archive"),
    );
    let daemon = settings.start();

    let submitted = admin_ok(admin.submit(&SubmitRequest::default()), "submit");
    daemon.wait_done(&[&submitted.event_id], EVENT_DEADLINE);
    let contacts = sheet_of(&submitted, "contacts");
    let before = admin_ok(admin.sheet_rows(&contacts), "sheet rows");
    let doomed: Vec<String> = [1, 7, 20].iter().map(|&i| before[i].id.clone()).collect();
    let deleted = admin_ok(admin.delete_records(&contacts, &doomed), "delete records");
    let deletion = event_of(&deleted, "records:deleted");
    daemon.wait_done(&[&deletion], EVENT_DEADLINE);
    let after = admin_ok(admin.sheet_rows(&contacts), "sheet rows");
    assert_eq!(after.len() + doomed.len(), before.len());

    // sqlite: the rows are gone, the rest untouched.
    assert_table_equals_sheet(&warehouse, "contacts", &after);

    // sqlite with deletions = "mark": every row kept, the deleted ones stamped.
    assert_table_equals_sheet(&marked, "contacts", &before);
    let rows = sqlite_table(&marked, "contacts");
    for (id, row) in &rows {
        let deleted_at = row.get("_deleted_at");
        if doomed.contains(id) {
            assert!(
                matches!(deleted_at, Some(SqlValue::Text(t)) if !t.is_empty()),
                "{id} was deleted but _deleted_at is {deleted_at:?}"
            );
        } else {
            assert_eq!(deleted_at, Some(&SqlValue::Null), "{id} was not deleted");
        }
    }

    // csv-folder: a deletions file listing the ids.
    assert_no_csv_leftovers(&csv_dir);
    let files = csv_files(&csv_dir);
    let name = format!("contacts-deleted-{deletion}.csv");
    let file = csv_file(&files, &name);
    assert_eq!(file.headers, ["_id", "_deleted_at"]);
    csv_ids(file).assert_exactly(&doomed, &name);
    let deleted_at = file.column("_deleted_at").expect("a _deleted_at column");
    assert!(
        file.records.iter().all(|r| !r[deleted_at].is_empty()),
        "{name}: {:?}",
        file.records
    );

    // http-forward: a signed "deletions" body naming exactly the ids.
    let mut bodies = BTreeMap::new();
    for request in receiver.accepted() {
        assert!(request.verified, "an unverified request was accepted");
        let id = request.webhook_id.clone().expect("a webhook-id");
        let body = request
            .flatsync()
            .unwrap_or_else(|e| panic!("not a flatsync body ({e})"));
        bodies.insert(id, body);
    }
    let deletions: Vec<_> = bodies.values().filter(|b| b.is_deletions()).collect();
    assert!(!deletions.is_empty(), "no deletions body among {bodies:#?}");
    let mut ids = Tally::default();
    for body in &deletions {
        assert_eq!(body.stream, format!("contacts-deleted-{deletion}"));
        assert_eq!(body.kind, "contacts");
        assert_eq!(body.event_id, deletion);
        for id in body.row_ids() {
            *ids.seen.entry(id).or_default() += 1;
        }
    }
    ids.assert_exactly(&doomed, "the ids of the deletions bodies");
    assert!(
        deletions.iter().any(|b| b.last),
        "no deletions body ends the stream"
    );
    let mut rows_bodies = Tally::default();
    for body in bodies.values().filter(|b| b.body_type == "rows") {
        assert_eq!(body.event_id, submitted.event_id, "rows of {}", body.stream);
        for id in body.row_ids() {
            *rows_bodies.seen.entry(id).or_default() += 1;
        }
    }
    let mut submitted_ids = ids_of(&before);
    submitted_ids.extend(ids_of(&admin_ok(
        admin.sheet_rows(&sheet_of(&submitted, "companies")),
        "sheet rows",
    )));
    rows_bodies.assert_exactly(&submitted_ids, "the rows bodies of the submit");
    receiver.shutdown();
}

#[test]
fn two_environments_poll_with_their_own_keys_and_stay_apart() {
    let other_key = "sk_other_environment";
    let sim = Sim::start(SimConfig {
        rows: 60,
        environments: vec![SimEnvironment::new(OTHER_ENVIRONMENT_ID, other_key)],
        ..SimConfig::default()
    });
    let admin = sim.admin();
    let dir = TestDir::new("events-environments");
    let routes = "[[routes]]\ntopics = [\"job:ready\"]\nsinks = [\"sink_a\"]\nenvironments = [\"a\"]\n\n\
                  [[routes]]\ntopics = [\"job:ready\"]\nsinks = [\"sink_b\"]\nenvironments = [\"b\"]\n";
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_sqlite("sink_a")
        .sink_sqlite("sink_b")
        .env("FLATSYNC_E2E_KEY_A", &sim.config().secret_key)
        .env("FLATSYNC_E2E_KEY_B", other_key)
        .raw(&polling_environment(
            "a",
            DEFAULT_ENVIRONMENT_ID,
            Some("FLATSYNC_E2E_KEY_A"),
        ))
        .raw(&polling_environment(
            "b",
            OTHER_ENVIRONMENT_ID,
            Some("FLATSYNC_E2E_KEY_B"),
        ))
        .raw(routes);
    let (db_a, db_b) = (
        settings.sqlite_path("sink_a"),
        settings.sqlite_path("sink_b"),
    );
    let daemon = settings.start();

    let in_a = admin_ok(admin.submit(&SubmitRequest::default()), "submit in a");
    let in_b = admin_ok(
        admin.submit(&SubmitRequest {
            environment_id: Some(OTHER_ENVIRONMENT_ID.to_owned()),
            ..SubmitRequest::default()
        }),
        "submit in b",
    );
    assert_eq!(in_b.environment_id, OTHER_ENVIRONMENT_ID);
    daemon.wait_done(&[&in_a.event_id, &in_b.event_id], EVENT_DEADLINE);

    let rows_of = |submitted: &Submitted| -> Vec<String> {
        submitted
            .sheets
            .iter()
            .flat_map(|s| ids_of(&admin_ok(admin.sheet_rows(&s.id), "sheet rows")))
            .collect()
    };
    let (ids_a, ids_b) = (rows_of(&in_a), rows_of(&in_b));
    assert_eq!(ids_a.len(), 60);
    assert_eq!(ids_b.len(), 60);
    sqlite_rows(&db_a).assert_exactly(&ids_a, "sink A (environment a's routes)");
    sqlite_rows(&db_b).assert_exactly(&ids_b, "sink B (environment b's routes)");
    for (job, what) in [(&in_a.job_id, "a"), (&in_b.job_id, "b")] {
        let state = sim
            .job(job)
            .unwrap_or_else(|| panic!("the simulator never saw the job of {what}"));
        assert_eq!(state.status, "complete", "job of {what}: {state:?}");
    }

    let events = wait_every_event_polled_and_acknowledged(&admin, &daemon);
    for environment in [DEFAULT_ENVIRONMENT_ID, OTHER_ENVIRONMENT_ID] {
        assert!(
            events
                .iter()
                .any(|e| e.environment_id() == Some(environment)),
            "no event of {environment} was logged"
        );
    }
    assert_eq!(
        poll_cursor_environments(&daemon),
        [DEFAULT_ENVIRONMENT_ID, OTHER_ENVIRONMENT_ID],
        "one polling cursor per environment"
    );
}

#[test]
fn route_filters_and_snapshots_choose_what_each_sink_gets() {
    let sim = Sim::start(SimConfig {
        rows: 40,
        ..SimConfig::default()
    });
    let admin = sim.admin();
    let dir = TestDir::new("events-filters");
    let routes = "[[routes]]\ntopics = [\"records:created\"]\nsinks = [\"contacts_only\"]\nfilter = { sheetSlug = \"contacts\" }\n\n\
                  [[routes]]\ntopics = [\"records:created\"]\nsinks = [\"delta\"]\n\n\
                  [[routes]]\ntopics = [\"records:created\"]\nsinks = [\"snapshot\"]\nsnapshot = true\n";
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_sqlite("contacts_only")
        .sink_csv("delta")
        .sink_csv("snapshot")
        .raw(&polling_environment("demo", DEFAULT_ENVIRONMENT_ID, None))
        .raw(routes);
    let (filtered_db, delta_dir, snapshot_dir) = (
        settings.sqlite_path("contacts_only"),
        settings.csv_dir("delta"),
        settings.csv_dir("snapshot"),
    );
    let daemon = settings.start();

    let submitted = admin_ok(admin.submit(&SubmitRequest::default()), "submit");
    let mut added = BTreeMap::new();
    for slug in ["contacts", "companies"] {
        let sheet = sheet_of(&submitted, slug);
        let change = admin_ok(
            admin.add_records(&sheet, &NewRecords::Count(1)),
            "add one record",
        );
        wait_change(&daemon, &change, &["records:created"]);
        added.insert(slug, (sheet, change));
    }

    // The filtered route: only the contacts record.
    let contacts_record = &added["contacts"].1.record_ids;
    assert_eq!(sqlite_tables(&filtered_db), ["contacts"]);
    sqlite_rows(&filtered_db).assert_exactly(contacts_record, "the sheetSlug = contacts sink");

    // The unfiltered delta route: one file per event, with the one new record.
    assert_no_csv_leftovers(&delta_dir);
    assert_no_csv_leftovers(&snapshot_dir);
    let delta = csv_files(&delta_dir);
    let snapshot = csv_files(&snapshot_dir);
    let mut delta_names = Vec::new();
    for (slug, (sheet, change)) in &added {
        let event = event_of(change, "records:created");
        let name = format!("{slug}-{event}.csv");
        csv_ids(csv_file(&delta, &name)).assert_exactly(&change.record_ids, &name);
        delta_names.push(name);

        // The snapshot route: the whole sheet for the same one-record event.
        let suffix = format!("-{event}.csv");
        let names: Vec<&String> = snapshot.keys().filter(|n| n.ends_with(&suffix)).collect();
        assert_eq!(
            names.len(),
            1,
            "snapshot files of {event}: {:?}",
            snapshot.keys()
        );
        assert!(names[0].starts_with(&format!("{slug}-")), "{}", names[0]);
        let whole = sim.sheet_records(sheet);
        let submitted_rows = submitted
            .sheets
            .iter()
            .find(|s| &s.id == sheet)
            .map_or(0, |s| s.rows);
        assert_eq!(
            whole.len() as u64,
            submitted_rows + 1,
            "{slug}: the submitted records and the added one"
        );
        assert_csv_matches(&snapshot[names[0]], &whole);
    }
    delta_names.sort();
    assert_eq!(delta.keys().cloned().collect::<Vec<_>>(), delta_names);
    assert_eq!(snapshot.len(), 2, "{:?}", snapshot.keys());
}
