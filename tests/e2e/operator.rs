//! The operator CLI against a real daemon and state database: `status --json`, `replay`,
//! `dead-letter retry`, `doctor` on a damaged state file, and `plugins`.
//!
//! Replays and retries only set rows back to `pending`; the daemon's rescan of the inbox
//! (every 2 s) delivers them without a restart.

use std::path::{Path, PathBuf};
use std::process::Output;

use flatfile_sim::{legacy_row_ids, legacy_webhook_body, submit_event_body};
use flatsync_core::{EventStatus, StateDb};
use flatsync_test_kit::sqlite::damage_pages_holding;
use flatsync_tests::check::{csv_files, csv_rows, sqlite_rows};
use flatsync_tests::daemon::open_read_only;
use flatsync_tests::{Artifacts, Daemon, DaemonProcess, Sim, TestDir, wait};
use serde_json::Value;

use crate::common::EVENT_DEADLINE;

/// Topic of the legacy imports the doctor test stores by hand.
const TOPIC: &str = "portalImportSubmitted";

/// Runs `flatsync ARGS --config <the daemon's config>` and returns its output.
fn cli(settings: &Daemon, args: &[&str]) -> Output {
    let config = settings.config_path();
    let config = config.to_str().expect("test paths are UTF-8");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", config]);
    settings.cli(&all)
}

/// Stores, through core's state API as the daemon would, three imports accepted but not
/// delivered yet and sixty finished events whose 3 kB bodies take a page each (marked
/// `BODYMARK-<i>-`). The daemon must be stopped; closing the database folds its WAL in, so
/// the rows are in the main file.
fn store_events_while_stopped(settings: &Daemon, rows: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let db = StateDb::open(&settings.state_dir()).expect("open the state database");
        for i in 0..3 {
            let body =
                legacy_webhook_body(&format!("b-op-keep-{i}"), &format!("evt-keep-{i}"), rows);
            let body = serde_json::to_vec(&body).expect("JSON");
            let id = format!("evt-keep-{i}");
            assert!(
                db.insert_event(id, "legacy", TOPIC.to_owned(), body, 1_000 + i)
                    .await
                    .expect("insert a pending event")
            );
        }
        for i in 0..60 {
            let body = format!("BODYMARK-{i:02}-").repeat(250).into_bytes();
            let id = format!("evt-filler-{i:02}");
            db.insert_event(id.clone(), "legacy", TOPIC.to_owned(), body, 2_000 + i)
                .await
                .expect("insert a finished event");
            db.set_event_status(&id, EventStatus::Done, None)
                .await
                .expect("finish it");
        }
    });
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must succeed, and returns its standard output.
fn cli_ok(settings: &Daemon, args: &[&str]) -> String {
    let output = cli(settings, args);
    assert!(
        output.status.success(),
        "flatsync {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Runs a `--json` command that must succeed, and parses what it printed.
fn cli_json(settings: &Daemon, args: &[&str]) -> Value {
    let stdout = cli_ok(settings, args);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("flatsync {args:?} printed no JSON document ({e}):\n{stdout}"))
}

fn sink<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["sinks"]
        .as_array()
        .expect("sinks is an array")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no sink {name} in {status:#}"))
}

/// Streams of an sqlite sink's bookkeeping table, with their `complete` flag.
fn sqlite_streams(db: &Path) -> Vec<(String, bool)> {
    let conn = open_read_only(db).expect("the sink database exists");
    let mut stmt = conn
        .prepare("SELECT stream, complete FROM _flatsync_streams ORDER BY stream")
        .expect("the bookkeeping table exists");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query runs")
        .map(|row| row.expect("readable row"))
        .collect()
}

/// Waits until the event is `done` again and `check` holds (say, a replay's file exists).
fn wait_redelivered(daemon: &DaemonProcess, event_id: &str, what: &str, check: impl Fn() -> bool) {
    wait::until(
        what,
        EVENT_DEADLINE,
        || {
            daemon.assert_alive(what);
            let done = daemon.event(event_id).is_some_and(|e| e.status == "done");
            (done && check()).then_some(())
        },
        || {
            format!(
                "event now: {:?}\n(the daemon rescans pending events every 2 s; without that \
                 rescan a replay waits for a restart)\n{}",
                daemon.event(event_id),
                daemon.log_tail()
            )
        },
    );
}

#[test]
fn status_json_shows_rows_delivered_a_failed_delivery_with_its_error_and_nothing_pending() {
    let rows = 250;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("op-status");
    let plugin = Artifacts::locate().fx_panic_plugin();
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .sink(
            "bomb",
            &plugin.display().to_string(),
            "{ panic_in = \"write_batch\" }",
        )
        .route(&["portalImportSubmitted"], &["archive", "warehouse"])
        .route(&["job:ready"], &["bomb"])
        .page_size(100);
    let daemon = settings.start();

    let legacy = "evt-op-legacy";
    let reply = daemon.post(&legacy_webhook_body("b-op-status", legacy, rows));
    assert_eq!(reply.status, 200, "{}", reply.text());
    daemon.wait_done(&[legacy], EVENT_DEADLINE);
    let failing = "evt-op-submit";
    let job = sim.job_for("us_wb_op");
    let reply = daemon.post(&submit_event_body(failing, "us_wb_op", &job));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let event = daemon.wait_final(failing, EVENT_DEADLINE);
    assert_eq!(event.status, "failed", "{event:?}");

    let status = cli_json(daemon.settings(), &["status", "--json"]);
    assert_eq!(status["events"]["done"], 1, "{status:#}");
    assert_eq!(status["events"]["failed"], 1, "{status:#}");
    assert_eq!(status["events"]["pending"], 0, "{status:#}");
    for name in ["archive", "warehouse"] {
        let s = sink(&status, name);
        assert_eq!(s["done"], 1, "{s:#}");
        assert_eq!(s["failed"], 0, "{s:#}");
        assert_eq!(s["pending"], 0, "{s:#}");
        assert_eq!(s["rows_delivered"], rows, "{s:#}");
        assert_eq!(s["lag_secs"], Value::Null, "{s:#}");
        assert_eq!(s["configured"], true, "{s:#}");
    }
    let bomb = sink(&status, "bomb");
    assert_eq!(bomb["failed"], 1, "{bomb:#}");
    assert_eq!(bomb["pending"], 0, "{bomb:#}");
    assert_eq!(bomb["rows_delivered"], 0, "{bomb:#}");
    assert_eq!(bomb["last_error"]["event_id"], failing, "{bomb:#}");
    let error = bomb["last_error"]["error"].as_str().unwrap_or("");
    assert!(error.contains("panicked"), "the sink's error: {error}");
    let routes = status["routes"].as_array().expect("routes from the config");
    assert_eq!(routes.len(), 2, "{status:#}");
    assert_eq!(
        routes[0]["sinks"],
        serde_json::json!(["archive", "warehouse"])
    );
    assert!(
        routes.iter().all(|r| r["events_pending"] == 0),
        "{status:#}"
    );

    let letters = cli_json(daemon.settings(), &["dead-letter", "list", "--json"]);
    let letters = letters.as_array().expect("an array");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["event_id"], failing);
    assert_eq!(letters[0]["sink"], "bomb");
    assert_eq!(letters[0]["topic"], "job:ready");

    let shown = cli_json(daemon.settings(), &["events", "show", legacy, "--json"]);
    assert_eq!(shown["status"], "done");
    assert_eq!(shown["body"]["scope"]["batchId"], "b-op-status");
    assert_eq!(shown["streams"][0]["stream"], "legacy-b-op-status");
    assert_eq!(shown["deliveries"].as_array().map(Vec::len), Some(2));

    let listed = cli_json(
        daemon.settings(),
        &["events", "list", "--status", "failed", "--json"],
    );
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed:#}");
    assert_eq!(listed[0]["event_id"], failing);

    let human = cli_ok(daemon.settings(), &["status"]);
    assert!(
        human.contains("bomb") && human.contains("panicked"),
        "{human}"
    );
}

#[test]
fn replay_delivers_an_event_again_into_fresh_streams_and_a_sink_replay_leaves_the_others() {
    let rows = 300;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("op-replay");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["portalImportSubmitted"], &["archive", "warehouse"])
        .page_size(100);
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let mut daemon = settings.start();
    let (batch, event) = ("b-op-replay", "evt-op-replay");
    let reply = daemon.post(&legacy_webhook_body(batch, event, rows));
    assert_eq!(reply.status, 200, "{}", reply.text());
    daemon.wait_done(&[event], EVENT_DEADLINE);
    let expected = legacy_row_ids(sim.config(), batch);

    let out = cli_ok(daemon.settings(), &["replay", "--event", event]);
    assert!(
        out.contains("archive") && out.contains("warehouse"),
        "{out}"
    );
    let first_replay = "legacy-b-op-replay-r1.csv";
    wait_redelivered(&daemon, event, "the replay to reach both sinks", || {
        csv_dir.join(first_replay).is_file()
            && sqlite_streams(&db).contains(&("legacy-b-op-replay-r1".to_owned(), true))
    });
    let files = csv_files(&csv_dir);
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["legacy-b-op-replay-r1.csv", "legacy-b-op-replay.csv"]
    );
    for (name, file) in &files {
        assert_eq!(
            file.records.len() as u64,
            rows,
            "{name} holds every row once"
        );
    }
    // Upserts by record id: the sqlite sink took every row again without a duplicate.
    sqlite_rows(&db).assert_exactly(&expected, "sqlite sink after a replay");

    let out = cli_ok(
        daemon.settings(),
        &["replay", "--event", event, "--sink", "archive"],
    );
    assert!(
        out.contains("archive") && !out.contains("warehouse"),
        "{out}"
    );
    wait_redelivered(&daemon, event, "the archive-only replay", || {
        csv_dir.join("legacy-b-op-replay-r2.csv").is_file()
    });
    assert_eq!(csv_files(&csv_dir).len(), 3);
    let streams = sqlite_streams(&db);
    assert!(
        streams.iter().all(|(s, _)| !s.ends_with("-r2")),
        "warehouse untouched: {streams:?}"
    );
    let shown = cli_json(daemon.settings(), &["events", "show", event, "--json"]);
    let generations: Vec<(&str, u64)> = shown["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| {
            (
                d["sink"].as_str().unwrap_or(""),
                d["generation"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    assert_eq!(generations, [("archive", 2), ("warehouse", 1)]);
    let status = cli_json(daemon.settings(), &["status", "--json"]);
    assert_eq!(sink(&status, "archive")["rows_delivered"], rows);
    assert_eq!(status["events"]["pending"], 0);
    assert!(daemon.stop().success());
}

#[test]
fn a_dead_letter_retried_after_the_fault_is_fixed_delivers_every_row_exactly_once() {
    let rows = 300;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("op-retry");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["portalImportSubmitted"], &["archive", "warehouse"])
        .page_size(100);
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    // An operator's mistake the csv-folder sink refuses for good: a state file it cannot read.
    let (batch, event) = ("b-op-retry", "evt-op-retry");
    let bad_state = csv_dir.join(format!(".legacy-{batch}.csv.state"));
    std::fs::create_dir_all(&csv_dir).expect("create the csv folder");
    std::fs::write(&bad_state, b"this is not a state file").expect("write the bad state file");
    let daemon = settings.start();

    let reply = daemon.post(&legacy_webhook_body(batch, event, rows));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let final_event = daemon.wait_final(event, EVENT_DEADLINE);
    assert_eq!(final_event.status, "failed", "{final_event:?}");
    let expected = legacy_row_ids(sim.config(), batch);
    sqlite_rows(&db).assert_exactly(&expected, "the healthy sink delivered");

    let letters = cli_json(daemon.settings(), &["dead-letter", "list", "--json"]);
    assert_eq!(letters.as_array().map(Vec::len), Some(1), "{letters:#}");
    assert_eq!(letters[0]["sink"], "archive");
    let error = letters[0]["error"].as_str().unwrap_or("");
    assert!(error.contains("state file"), "{error}");

    // The fix, then the retry.
    std::fs::remove_file(&bad_state).expect("remove the bad state file");
    let out = cli_ok(daemon.settings(), &["dead-letter", "retry", "--all"]);
    assert!(out.contains(event) && out.contains("archive"), "{out}");
    wait_redelivered(&daemon, event, "the retried delivery", || {
        csv_dir.join(format!("legacy-{batch}.csv")).is_file()
    });
    csv_rows(&csv_dir).assert_exactly(&expected, "csv-folder after the retry");
    sqlite_rows(&db).assert_exactly(&expected, "sqlite, not sent again");
    let letters = cli_json(daemon.settings(), &["dead-letter", "list", "--json"]);
    assert_eq!(letters, serde_json::json!([]));
    let status = cli_json(daemon.settings(), &["status", "--json"]);
    let archive = sink(&status, "archive");
    assert_eq!(
        (
            &archive["done"],
            &archive["failed"],
            &archive["rows_delivered"]
        ),
        (&Value::from(1), &Value::from(0), &Value::from(rows)),
        "{archive:#}"
    );
}

fn quarantined(state_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("quarantine")) else {
        return Vec::new();
    };
    entries.flatten().map(|e| e.path()).collect()
}

#[test]
fn doctor_names_a_damaged_state_file_and_repair_salvages_the_pending_events() {
    let rows = 120;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("op-doctor");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .route(&["portalImportSubmitted"], &["archive"])
        .page_size(50);
    let csv_dir = settings.csv_dir("archive");
    let mut daemon = settings.start();
    let reply = daemon.post(&legacy_webhook_body("b-op-first", "evt-op-first", rows));
    assert_eq!(reply.status, 200, "{}", reply.text());
    daemon.wait_done(&["evt-op-first"], EVENT_DEADLINE);
    assert!(daemon.stop().success());

    // While it is stopped: three imports accepted but not delivered yet, then sixty finished
    // events whose 3 kB bodies take a page each; then two of those pages are destroyed.
    let state_db = daemon.settings().state_db();
    store_events_while_stopped(daemon.settings(), rows);
    assert_eq!(damage_pages_holding(&state_db, b"BODYMARK-30-"), 1);
    assert_eq!(damage_pages_holding(&state_db, b"BODYMARK-31-"), 1);
    let damaged_bytes = std::fs::read(&state_db).expect("read");

    let output = cli(daemon.settings(), &["doctor"]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("PROBLEM"), "{stdout}");
    assert!(stdout.contains("damaged"), "{stdout}");
    assert!(
        stdout.contains("malformed") || stdout.contains("Tree"),
        "names SQLite's finding: {stdout}"
    );
    assert!(stdout.contains("--repair"), "{stdout}");
    assert!(!stdout.to_lowercase().contains("delete"), "{stdout}");
    assert!(
        stdout.contains("ok       sink `archive`"),
        "the other checks still run: {stdout}"
    );
    assert_eq!(
        std::fs::read(&state_db).expect("read"),
        damaged_bytes,
        "without --repair nothing changes"
    );
    let state_dir = state_db.parent().expect("state dir").to_path_buf();
    assert!(quarantined(&state_dir).is_empty());

    let output = cli(daemon.settings(), &["doctor", "--repair"]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(
        stdout.contains("evt-filler-30") && stdout.contains("evt-filler-31"),
        "lists the lost events: {stdout}"
    );
    assert!(stdout.contains("quarantine"), "{stdout}");
    let quarantine = quarantined(&state_dir);
    assert_eq!(quarantine.len(), 1, "{quarantine:?}");
    assert_eq!(
        std::fs::read(quarantine[0].join("state.db")).expect("the damaged file is kept"),
        damaged_bytes
    );
    assert!(quarantine[0].join("README.txt").is_file());

    let again = cli(daemon.settings(), &["doctor"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stdout));

    daemon.restart();
    daemon.wait_done(&["evt-keep-0", "evt-keep-1", "evt-keep-2"], EVENT_DEADLINE);
    for i in 0..3 {
        let batch = format!("b-op-keep-{i}");
        let file = csv_dir.join(format!("legacy-{batch}.csv"));
        assert!(file.is_file(), "{} delivered", file.display());
    }
    let status = cli_json(daemon.settings(), &["status", "--json"]);
    assert_eq!(status["events"]["done"], 1 + 3 + 58, "{status:#}");
    assert_eq!(status["events"]["pending"], 0, "{status:#}");
    assert!(daemon.stop().success());
}

#[test]
fn plugins_lists_the_shipped_plugins_with_their_abi_and_the_sinks_using_them() {
    let dir = TestDir::new("op-plugins");
    let settings = Daemon::new(dir.path())
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["*"], &["archive", "warehouse"]);
    // `check` writes the config file the command reads.
    let checked = settings.check();
    assert_eq!(checked.code, Some(0), "{checked:?}");

    let scan = cli_json(&settings, &["plugins", "--json"]);
    let plugins = scan["plugins"].as_array().expect("plugins is an array");
    for (name, used_by) in [
        ("csv-folder", serde_json::json!(["archive"])),
        ("sqlite", serde_json::json!(["warehouse"])),
        ("jsonl-folder", serde_json::json!([])),
        ("http-forward", serde_json::json!([])),
    ] {
        let plugin = plugins
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {scan:#}"));
        assert_eq!(
            (&plugin["abi_major"], &plugin["abi_minor"]),
            (
                &Value::from(flatsync_plugin_api::ABI_MAJOR),
                &Value::from(flatsync_plugin_api::ABI_MINOR)
            ),
            "{plugin:#}"
        );
        assert_eq!(plugin["used_by"], used_by, "{plugin:#}");
        assert_eq!(plugin["error"], Value::Null, "{plugin:#}");
    }
    // A library that does not load is listed with its reason, not fatal.
    let wrong = plugins
        .iter()
        .find(|p| {
            p["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("libflatsync_fx_wrong_abi.so"))
        })
        .unwrap_or_else(|| panic!("the wrong-ABI fixture is listed: {scan:#}"));
    assert!(
        wrong["error"].as_str().unwrap_or("").contains("999"),
        "{wrong:#}"
    );

    let human = cli_ok(&settings, &["plugins"]);
    let abi = format!(
        " {}.{} ",
        flatsync_plugin_api::ABI_MAJOR,
        flatsync_plugin_api::ABI_MINOR
    );
    for name in ["csv-folder", "sqlite", "jsonl-folder", "http-forward"] {
        let line = human
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{human}"));
        assert!(line.contains(&abi), "{line}");
    }
}
