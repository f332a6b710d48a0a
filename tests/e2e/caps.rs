//! An API that serves fewer items per page than asked for: polling neither stalls nor skips
//! events, every kind of stream still delivers every row once, and a stream whose end cannot
//! be proven fails naming the counts instead of ending early.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flatfile_sim::{
    AdminClient, DEFAULT_ENVIRONMENT_ID, EmitEvent, EventsOrder, NewRecords, SimConfig, SimEvent,
    SubmitRequest, legacy_row_ids, legacy_webhook_body,
};
use flatsync_tests::check::{assert_csv_matches, assert_no_csv_leftovers, csv_files, sqlite_rows};
use flatsync_tests::{Daemon, DaemonProcess, Sim, TestDir, wait};
use serde_json::{Map, json};

use crate::common::{EVENT_DEADLINE, admin_ok, event_of, sheet_of};

/// How long the events of a burst may take to be polled, stored and acknowledged.
const POLL_DEADLINE: Duration = Duration::from_secs(180);

/// The polling cursor of the default environment, in ms.
fn poll_cursor(daemon: &DaemonProcess) -> Option<i64> {
    daemon
        .polling()
        .into_iter()
        .find(|p| p.environment_id == DEFAULT_ENVIRONMENT_ID)
        .map(|p| p.cursor_ms)
}

/// `(sink, stream) -> (complete, rows)` of an event's checkpoints.
fn checkpoints(daemon: &DaemonProcess, event_id: &str) -> BTreeMap<(String, String), (bool, u64)> {
    daemon
        .event_detail(event_id)
        .expect("the event is in the state database")
        .checkpoints
        .into_iter()
        .map(|c| ((c.sink, c.stream), (c.complete, c.rows)))
        .collect()
}

/// Waits until every event the simulator logged is in the inbox and acknowledged at least
/// once; returns the simulator's events.
fn wait_all_stored_and_acknowledged(admin: &AdminClient, daemon: &DaemonProcess) -> Vec<SimEvent> {
    wait::until(
        "every event of the simulator to be stored and acknowledged",
        POLL_DEADLINE,
        || {
            daemon.assert_alive("while events were polled");
            let events = admin_ok(admin.events(None), "GET /_sim/events");
            let inbox = daemon.inbox();
            events
                .iter()
                .all(|e| e.ack_count >= 1 && inbox.contains_key(&e.id))
                .then_some(events)
        },
        || {
            let events = admin.events(None).unwrap_or_default();
            let inbox = daemon.inbox();
            let stored = events.iter().filter(|e| inbox.contains_key(&e.id)).count();
            let acked = events.iter().filter(|e| e.ack_count >= 1).count();
            format!(
                "{} events logged, {stored} stored, {acked} acknowledged\n{}",
                events.len(),
                daemon.log_tail()
            )
        },
    )
}

/// A burst of 500 events at one timestamp, polled through pages capped at 50 while flatsync
/// asks for 100: every event is stored once and acknowledged, and a later event still arrives.
fn polls_a_capped_burst(order: EventsOrder, label: &str) {
    let sim = Sim::start(SimConfig {
        rows: 10,
        max_page_size: 50,
        events_order: order,
        ..SimConfig::default()
    });
    let admin = sim.admin();
    let dir = TestDir::new(&format!("caps-poll-{label}"));
    let daemon = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        // Nothing the test emits is routed: the inbox and the acknowledgements are the subject.
        .route(&["job:ready"], &["archive"])
        .raw(
            "[environments.demo]\nid = \"us_env_demo\"\npoll = true\npoll_interval_ms = 200\n\
             poll_page_size = 100\npoll_start = \"beginning\"\n",
        )
        .start();

    let first = admin_ok(
        admin.emit_event(&EmitEvent::new("space:updated")),
        "emit the burst's first event",
    );
    for n in 1..500 {
        admin_ok(
            admin.emit_event(&EmitEvent {
                payload: Some(json!({ "n": n })),
                created_at: Some(first.created_at.clone()),
                ..EmitEvent::new("space:updated")
            }),
            "emit a burst event",
        );
    }
    let burst = admin_ok(admin.events(None), "GET /_sim/events");
    assert_eq!(burst.len(), 500, "the simulator logged the burst");
    assert!(
        burst.iter().all(|e| e.created_at == first.created_at),
        "the burst shares one createdAt"
    );

    let events = wait_all_stored_and_acknowledged(&admin, &daemon);
    let stored = daemon.inbox();
    let logged: BTreeSet<&String> = events.iter().map(|e| &e.id).collect();
    assert_eq!(
        stored.keys().collect::<BTreeSet<_>>(),
        logged,
        "the inbox holds exactly the simulator's events"
    );
    let burst_ms = poll_cursor(&daemon).expect("a cursor once the burst is stored");

    // A later event must still be seen: the poller did not stall on the burst.
    let later = admin_ok(
        admin.emit_event(&EmitEvent::new("space:updated")),
        "emit a later event",
    );
    assert!(later.created_at > first.created_at);
    let events = wait_all_stored_and_acknowledged(&admin, &daemon);
    assert_eq!(events.len(), 501);
    let stored = daemon.inbox();
    assert_eq!(stored.len(), 501, "each event stored once");
    assert!(
        stored.values().all(|status| status == "unrouted"),
        "every event was handled: {:?}",
        stored.values().collect::<BTreeSet<_>>()
    );
    let cursor = poll_cursor(&daemon).expect("a cursor");
    assert!(
        cursor >= burst_ms,
        "the cursor never moves backwards: {cursor} < {burst_ms}"
    );
    // Two polls in a row must show the cap before it is believed; polls go on every 200 ms.
    let log = wait::until(
        "the events API's cap to be logged",
        POLL_DEADLINE,
        || {
            let log = daemon.log();
            log.lines()
                .any(|line| line.contains("Events API caps pages") && line.contains("page_size=50"))
                .then_some(log)
        },
        || daemon.log_tail(),
    );
    assert_eq!(
        log.matches("Events API caps pages").count(),
        1,
        "the cap is logged once"
    );
    let acks: u64 = events.iter().map(|e| e.ack_count).sum();
    let stats = sim.stats();
    eprintln!(
        "caps-poll-{label}: {} events stored, {acks} acknowledgements, {} GET /v1/events requests",
        stored.len(),
        stats.events
    );
}

#[test]
fn polling_capped_pages_stores_a_burst_listed_oldest_first() {
    polls_a_capped_burst(EventsOrder::Oldest, "oldest");
}

#[test]
fn polling_capped_pages_stores_a_burst_listed_newest_first() {
    polls_a_capped_burst(EventsOrder::Newest, "newest");
}

/// Posts the simulator's event `id` to the daemon's webhook, as Flatfile would send it.
fn post_sim_event(admin: &AdminClient, daemon: &DaemonProcess, id: &str) {
    let event = admin_ok(admin.events(None), "GET /_sim/events")
        .into_iter()
        .find(|e| e.id == id)
        .unwrap_or_else(|| panic!("the simulator has no event {id}"));
    let reply = daemon.post(&event.to_platform_json());
    assert_eq!(
        reply.status,
        200,
        "webhook answer to {id}: {}",
        reply.text()
    );
}

/// Asserts both sinks hold the stream complete with exactly `rows` rows (the checkpoints), and
/// the CSV file holds exactly `ids`.
fn assert_stream(
    daemon: &DaemonProcess,
    event_id: &str,
    stream: &str,
    ids: &[String],
    files: &BTreeMap<String, flatsync_tests::check::CsvFile>,
) {
    let checkpoints = checkpoints(daemon, event_id);
    for sink in ["archive", "warehouse"] {
        let key = (sink.to_owned(), stream.to_owned());
        assert_eq!(
            checkpoints.get(&key),
            Some(&(true, ids.len() as u64)),
            "sink {sink}, stream {stream}: (complete, rows); all checkpoints: {checkpoints:?}"
        );
    }
    let file = files
        .get(&format!("{stream}.csv"))
        .unwrap_or_else(|| panic!("no {stream}.csv among {:?}", files.keys()));
    let id = file.column("_id").expect("an _id column");
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    for record in &file.records {
        *seen.entry(record[id].as_str()).or_default() += 1;
    }
    let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert!(
        seen.values().all(|n| *n == 1) && seen.keys().copied().collect::<BTreeSet<_>>() == want,
        "{stream}.csv: {} rows, want {} ids once each",
        file.records.len(),
        ids.len()
    );
}

#[test]
fn capped_record_pages_deliver_every_row_of_every_stream_once() {
    let sim = Sim::start(SimConfig {
        rows: 500,
        sheets_per_workbook: 2,
        max_page_size: 100,
        ..SimConfig::default()
    });
    let admin = sim.admin();
    let dir = TestDir::new("caps-rows");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(
            &[
                "portalImportSubmitted",
                "job:ready",
                "records:created",
                "commit:created",
                "commit:completed",
            ],
            &["archive", "warehouse"],
        )
        .page_size(1000);
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let daemon = settings.start();
    let mut expected_sqlite: Vec<String> = Vec::new();
    // (event, stream, ids) of every stream, checked at the end.
    let mut streams: Vec<(String, String, Vec<String>)> = Vec::new();

    // A legacy batch of 500 rows through takes capped at 100.
    let (batch, legacy_event) = ("b-caps", "evt-caps-legacy");
    let reply = daemon.post(&legacy_webhook_body(batch, legacy_event, 500));
    assert_eq!(reply.status, 200, "{}", reply.text());
    daemon.wait_done(&[legacy_event], EVENT_DEADLINE);
    let legacy_ids = legacy_row_ids(sim.config(), batch);
    assert_eq!(legacy_ids.len(), 500);
    expected_sqlite.extend(legacy_ids.iter().cloned());
    streams.push((
        legacy_event.to_owned(),
        format!("legacy-{batch}"),
        legacy_ids,
    ));

    // A workbook submit: two sheets of 250 records, pages capped at 100.
    let workbook = admin_ok(admin.submit(&SubmitRequest::default()), "submit");
    assert_eq!(
        workbook.sheets.iter().map(|s| s.rows).collect::<Vec<_>>(),
        [250, 250]
    );
    post_sim_event(&admin, &daemon, &workbook.event_id);
    daemon.wait_done(&[&workbook.event_id], EVENT_DEADLINE);
    for sheet in &workbook.sheets {
        let ids: Vec<String> = sim
            .sheet_records(&sheet.id)
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids.len(), 250, "sheet {}", sheet.slug);
        streams.push((
            workbook.event_id.clone(),
            format!("{}-{}", sheet.slug, workbook.event_id),
            ids,
        ));
    }
    let job = sim.job(&workbook.job_id).expect("the workbook job");
    assert_eq!(job.status, "complete", "{job:?}");
    assert!(
        job.outcome_message
            .as_deref()
            .is_some_and(|m| m.contains("Delivered 500 records")),
        "the workbook job reports every record: {job:?}"
    );

    // A sheet submit of the second sheet.
    let companies = sheet_of(&workbook, "companies");
    let sheet_submit = admin_ok(
        admin.submit(&SubmitRequest {
            workbook_id: Some(workbook.workbook_id.clone()),
            sheet_slug: Some("companies".to_owned()),
            ..SubmitRequest::default()
        }),
        "sheet submit",
    );
    post_sim_event(&admin, &daemon, &sheet_submit.event_id);
    daemon.wait_done(&[&sheet_submit.event_id], EVENT_DEADLINE);
    let company_ids: Vec<String> = sim
        .sheet_records(&companies)
        .into_iter()
        .map(|r| r.id)
        .collect();
    streams.push((
        sheet_submit.event_id.clone(),
        format!("companies-{}", sheet_submit.event_id),
        company_ids.clone(),
    ));
    let job = sim.job(&sheet_submit.job_id).expect("the sheet job");
    assert_eq!(job.status, "complete", "{job:?}");
    assert!(
        job.outcome_message
            .as_deref()
            .is_some_and(|m| m.contains("Delivered 250 records")),
        "the sheet job reports every record: {job:?}"
    );

    // records:created naming 150 ids (two id batches), and its commit.
    let contacts = sheet_of(&workbook, "contacts");
    let added = admin_ok(
        admin.add_records(&contacts, &NewRecords::Count(150)),
        "add 150 records",
    );
    assert_eq!(added.record_ids.len(), 150);
    let created = event_of(&added, "records:created");
    let commit = event_of(&added, "commit:created");
    for event in [&created, &commit] {
        post_sim_event(&admin, &daemon, event);
        daemon.wait_done(&[event], EVENT_DEADLINE);
        streams.push((
            event.clone(),
            format!("contacts-{event}"),
            added.record_ids.clone(),
        ));
    }

    // Records changed since that commit: a second commit of 130.
    let first_commit = added.commit_id.clone().expect("an add makes a commit");
    let more = admin_ok(
        admin.add_records(&contacts, &NewRecords::Count(130)),
        "add 130 records",
    );
    let mut context = Map::new();
    context.insert("sheetId".to_owned(), json!(contacts));
    context.insert("workbookId".to_owned(), json!(workbook.workbook_id));
    context.insert("sheetSlug".to_owned(), json!("contacts"));
    let since = admin_ok(
        admin.emit_event(&EmitEvent {
            context: Some(context),
            payload: Some(json!({ "sinceCommitId": first_commit })),
            ..EmitEvent::new("commit:completed")
        }),
        "emit a since-commit event",
    );
    post_sim_event(&admin, &daemon, &since.id);
    daemon.wait_done(&[&since.id], EVENT_DEADLINE);
    streams.push((
        since.id.clone(),
        format!("contacts-{}", since.id),
        more.record_ids.clone(),
    ));

    assert_no_csv_leftovers(&csv_dir);
    let files = csv_files(&csv_dir);
    assert_eq!(
        files.len(),
        streams.len(),
        "one CSV file per stream: {:?}",
        files.keys()
    );
    for (event, stream, ids) in &streams {
        assert_stream(&daemon, event, stream, ids, &files);
    }
    // Values too, not only ids, for the capped sheet and legacy pages.
    assert_csv_matches(
        &files[&format!("companies-{}.csv", sheet_submit.event_id)],
        &sim.sheet_records(&companies),
    );
    assert_csv_matches(
        &files[&format!("legacy-{batch}.csv")],
        &sim.legacy_rows(batch),
    );

    // SQLite upserts by record id: each record of the batch and of both sheets once.
    expected_sqlite.extend(sim.sheet_records(&contacts).into_iter().map(|r| r.id));
    expected_sqlite.extend(company_ids);
    sqlite_rows(&db).assert_exactly(&expected_sqlite, "sqlite sink");

    let delivered: usize = streams.iter().map(|(_, _, ids)| ids.len()).sum();
    let stats = sim.stats();
    eprintln!(
        "caps-rows: {} streams, {delivered} rows delivered to each sink; {} legacy rows \
         requests, {} records requests, {} counts requests",
        streams.len(),
        stats.legacy_rows,
        stats.records,
        stats.counts
    );
}

#[test]
fn a_stream_whose_end_cannot_be_proven_fails_naming_the_counts() {
    // Slow pages, so records can be deleted while the sheet is being exported.
    let sim = Sim::start(SimConfig {
        rows: 250,
        sheets_per_workbook: 1,
        page_latency: Duration::from_millis(2000),
        ..SimConfig::default()
    });
    let admin = sim.admin();
    let dir = TestDir::new("caps-shrink");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["job:ready"], &["archive", "warehouse"])
        .page_size(100);
    let csv_dir = settings.csv_dir("archive");
    let daemon = settings.start();

    let submitted = admin_ok(
        admin.submit(&SubmitRequest {
            sheet_slug: Some("contacts".to_owned()),
            ..SubmitRequest::default()
        }),
        "sheet submit",
    );
    let sheet = sheet_of(&submitted, "contacts");
    let rows = admin_ok(admin.sheet_rows(&sheet), "sheet rows");
    assert_eq!(rows.len(), 250);
    post_sim_event(&admin, &daemon, &submitted.event_id);

    // The first records page is requested only after /counts answered 250; it waits 2 s.
    wait::until(
        "the export to ask for its first records page",
        EVENT_DEADLINE,
        || (sim.stats().records >= 1).then_some(()),
        || daemon.log_tail(),
    );
    let doomed: Vec<String> = rows[..30].iter().map(|r| r.id.clone()).collect();
    admin_ok(admin.delete_records(&sheet, &doomed), "delete 30 records");

    let row = daemon.wait_final(&submitted.event_id, EVENT_DEADLINE);
    assert_eq!(
        row.status, "failed",
        "a stream short of its count must fail, not end: {:?}",
        row.detail
    );
    let detail = row.detail.unwrap_or_default();
    let stream = format!("contacts-{}", submitted.event_id);
    let want = format!(
        "stream {stream}: received 220 of 250 records (GET /v1/sheets/{sheet}/counts said 250); \
         the API returned fewer records than asked for"
    );
    assert!(
        detail.contains(&want),
        "the failure names the counts:\n{detail}\nwant: {want}"
    );
    let job = sim.job(&submitted.job_id).expect("the job");
    assert_eq!(job.status, "failed", "{job:?}");
    assert!(
        job.outcome_message
            .as_deref()
            .is_some_and(|m| m.contains("received 220 of 250 records")),
        "the job says why: {job:?}"
    );
    let checkpoints = checkpoints(&daemon, &submitted.event_id);
    assert!(
        checkpoints.values().all(|(complete, _)| !complete),
        "no sink holds the stream as complete: {checkpoints:?}"
    );
    assert!(
        !csv_files(&csv_dir).contains_key(&format!("{stream}.csv")),
        "no finished CSV file for a failed stream"
    );
}
