//! Rows that arrive in the webhook bodies themselves (issue 10, item 8): a Portal 2.0
//! `batch.upload` split over several requests, and the batches another flatsync's http-forward
//! sink posts, so instances can be chained, edge to central. Each request is stored before it is
//! answered; the upload becomes one stream, in order, once every part is in.

use flatfile_sim::{
    SimConfig, portal2_upload_bodies, portal2_upload_rows, record_ids, submit_event_body,
    workbook_sheets,
};
use flatsync_tests::check::{SqlValue, csv_files, csv_leftovers, sqlite_table};
use flatsync_tests::daemon::toml_string;
use flatsync_tests::{Daemon, DaemonProcess, Sim, TestDir};
use serde_json::Value as Json;

use crate::common::{EVENT_DEADLINE, csv_file, csv_ids};

/// A `whsec_` secret: the padded base64 of 30 bytes.
const CHAIN_SECRET: &str = "whsec_ZmxhdHN5bmMtZTJlLWNoYWluLXNlY3JldC0wMQ==";

fn post_ok(daemon: &DaemonProcess, body: &Json) -> Json {
    let reply = daemon.post(body);
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), daemon.log_tail());
    reply.json()
}

/// The ids flatsync gives Portal 2.0 rows, which carry none: `<batch>:<index>:v<n>` for the
/// n-th valid row of request `index`, `i<n>` for invalid ones, valid rows first.
fn portal2_ids(config: &SimConfig, batch: &str, rows: u64, per_request: u64) -> Vec<String> {
    let all = portal2_upload_rows(config, batch, rows, per_request);
    let requests = all.last().map_or(0, |r| r.request);
    let mut ids = Vec::new();
    for request in 1..=requests {
        for (valid, tag) in [(true, 'v'), (false, 'i')] {
            let count = all
                .iter()
                .filter(|r| r.request == request && r.valid == valid)
                .count();
            ids.extend((0..count).map(|n| format!("{batch}:{request}:{tag}{n}")));
        }
    }
    ids
}

#[test]
fn a_portal2_upload_is_stored_part_by_part_and_delivered_once_complete() {
    let sim = Sim::with_rows(10);
    let config = sim.config().clone();
    let dir = TestDir::new("uploads-portal2");
    let settings = Daemon::new(dir.path())
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["batch.upload"], &["archive", "warehouse"])
        // Requests of 1,000 rows are larger than the default 1 MiB.
        .set("webhook", "max_body_bytes", "4194304");
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let mut daemon = settings.start();

    let (batch, rows, per_request) = ("b-portal2-1", 2_500, 1_000);
    let bodies = portal2_upload_bodies(&config, batch, rows, per_request);
    assert_eq!(bodies.len(), 3);
    let upload_event = format!("upload-{batch}");

    // Out of order, one request twice.
    let answer = post_ok(&daemon, &bodies[2]);
    assert_eq!(
        (answer["status"].as_str(), answer["partsReceived"].as_u64()),
        (Some("accepted"), Some(1)),
        "{answer}"
    );
    assert_eq!(post_ok(&daemon, &bodies[2])["status"], "duplicate");
    assert_eq!(post_ok(&daemon, &bodies[0])["partsReceived"], 2);
    // A request that contradicts the others is refused and stores nothing.
    let mut wrong = bodies[1].clone();
    wrong["event"]["sequence"]["count"] = 4.into();
    let reply = daemon.post(&wrong);
    assert_eq!(reply.status, 422, "{}", reply.text());

    // Accepted parts survive a crash; nothing is delivered while one is missing.
    daemon.kill9();
    daemon.restart();
    assert!(
        daemon.event(&upload_event).is_none(),
        "not before every part arrived"
    );
    let config_path = daemon.settings().config_path();
    let status = daemon.settings().cli(&[
        "status",
        "--config",
        config_path.to_str().expect("a UTF-8 path"),
    ]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(&upload_event) && status.contains("2 of 3"),
        "status shows the waiting upload:\n{status}"
    );

    let answer = post_ok(&daemon, &bodies[1]);
    assert_eq!(answer["eventId"], upload_event.as_str(), "{answer}");
    daemon.wait_done(&[&upload_event], EVENT_DEADLINE);
    assert_eq!(post_ok(&daemon, &bodies[1])["status"], "duplicate");

    let expected = portal2_ids(&config, batch, rows, per_request);
    assert_eq!(expected.len(), 2_500);
    assert!(csv_leftovers(&csv_dir).is_empty());
    let files = csv_files(&csv_dir);
    let name = format!("{upload_event}.csv");
    let file = csv_file(&files, &name);
    csv_ids(file).assert_exactly(&expected, &name);
    let id = file.column("_id").expect("an _id column");
    let order: Vec<&str> = file.records.iter().map(|r| r[id].as_str()).collect();
    assert_eq!(order, expected, "rows in sequence.index order");

    // Columns in the order the sender wrote the fields (Portal 2.0 rows have no schema).
    let first = portal2_upload_rows(&config, batch, 1, per_request);
    let source_keys: Vec<&str> = first[0]
        .values
        .iter()
        .map(|(key, _)| key.as_str())
        .collect();
    assert_eq!(file.headers[2..], source_keys, "{:?}", file.headers);

    // Every value as sent, validity from the list a row came in.
    let table = sqlite_table(&db, "legacy_batch");
    assert_eq!(table.len(), 2_500);
    let source = portal2_upload_rows(&config, batch, rows, per_request);
    let mut checked = 0;
    for (request, valid) in [(1, true), (2, false), (3, true)] {
        let row = source
            .iter()
            .find(|r| r.request == request && r.valid == valid)
            .expect("a row of that kind");
        let n = source
            .iter()
            .take_while(|r| !std::ptr::eq(*r, row))
            .filter(|r| r.request == request && r.valid == valid)
            .count();
        let tag = if valid { 'v' } else { 'i' };
        let stored = &table[&format!("{batch}:{request}:{tag}{n}")];
        assert_eq!(stored["_valid"], SqlValue::Integer(i64::from(valid)));
        for (key, value) in &row.values {
            if let Json::String(text) = value {
                assert_eq!(stored[key], SqlValue::Text(text.clone()), "{key}");
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no string value was compared");
}

#[test]
fn an_edge_flatsync_forwards_streams_to_a_central_one_over_signed_requests() {
    let central_dir = TestDir::new("uploads-central");
    let central_settings = Daemon::new(central_dir.path())
        .set(
            "webhook",
            "signing_secret_env",
            &toml_string("FLATSYNC_E2E_CHAIN"),
        )
        .env("FLATSYNC_E2E_CHAIN", CHAIN_SECRET)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["flatsync:forwarded"], &["archive", "warehouse"]);
    let (csv_dir, db) = (
        central_settings.csv_dir("archive"),
        central_settings.sqlite_path("warehouse"),
    );
    let central = central_settings.start();

    let sim = Sim::start(SimConfig {
        rows: 900,
        sheets_per_workbook: 2,
        ..SimConfig::default()
    });
    let edge_dir = TestDir::new("uploads-edge");
    let edge = Daemon::new(edge_dir.path())
        .sim(&sim)
        .sink_http(
            "central",
            &central.url(),
            "FLATSYNC_E2E_CHAIN",
            "batch_size = 100",
        )
        .env("FLATSYNC_E2E_CHAIN", CHAIN_SECRET)
        .route(&["job:ready"], &["central"])
        .page_size(250)
        .start();
    let (event, workbook) = ("us_evt_chain1", "us_wb_chain1");
    let job = sim.job_for(workbook);
    let reply = edge.post(&submit_event_body(event, workbook, &job));
    assert_eq!(reply.status, 200, "{}", reply.text());
    edge.wait_done(&[event], EVENT_DEADLINE);

    // Each sheet's stream arrives at the central instance as one event, under the edge's
    // stream name and kind, every record once.
    let sheets = workbook_sheets(sim.config(), workbook);
    assert_eq!(sheets.len(), 2);
    let forwarded: Vec<String> = sheets
        .iter()
        .map(|(_, slug, _)| format!("forwarded-{slug}-{event}"))
        .collect();
    let refs: Vec<&str> = forwarded.iter().map(String::as_str).collect();
    central.wait_done(&refs, EVENT_DEADLINE);
    let files = csv_files(&csv_dir);
    assert_eq!(files.len(), 2, "{:?}", files.keys());
    for (sheet_id, slug, _) in &sheets {
        let expected = record_ids(sim.config(), sheet_id);
        let name = format!("{slug}-{event}.csv");
        csv_ids(csv_file(&files, &name)).assert_exactly(&expected, &name);
        let table = sqlite_table(&db, slug);
        assert_eq!(table.len(), expected.len(), "table {slug}");
        assert!(
            expected.iter().all(|id| table.contains_key(id)),
            "table {slug}"
        );
    }
    assert!(
        !central.log().contains(CHAIN_SECRET) && !edge.log().contains(CHAIN_SECRET),
        "the signing secret is in a log"
    );
}
