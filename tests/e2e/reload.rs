//! Live config reload: an edit of the watched file, or SIGHUP, applies without a restart; a
//! broken edit changes nothing; a reload in the middle of a delivery loses and duplicates
//! nothing.

use std::time::Duration;

use flatfile_sim::{SimConfig, legacy_row_ids, legacy_webhook_body};
use flatsync_tests::check::{csv_rows, integrity_check, sqlite_rows};
use flatsync_tests::daemon::toml_string;
use flatsync_tests::{Daemon, DaemonProcess, Sim, TestDir, wait};

use crate::common::EVENT_DEADLINE;

/// How many times the daemon logged `message` so far.
fn log_count(daemon: &DaemonProcess, message: &str) -> usize {
    daemon.log().matches(message).count()
}

/// Waits until the daemon has logged `message` more than `before` times; returns the line.
fn wait_logged(daemon: &DaemonProcess, message: &str, before: usize) -> String {
    wait::until(
        &format!("the daemon to log `{message}`"),
        Duration::from_secs(20),
        || {
            daemon.assert_alive(&format!("while waiting for `{message}`"));
            let log = daemon.log();
            (log.matches(message).count() > before)
                .then(|| {
                    log.lines()
                        .filter(|l| l.contains(message))
                        .nth(before)
                        .map(str::to_owned)
                })
                .flatten()
        },
        || daemon.log_tail(),
    )
}

#[test]
fn a_sink_added_by_editing_the_config_receives_the_next_events() {
    let rows = 700;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("reload-add");
    let mut daemon = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .route(&["portalImportSubmitted"], &["archive"])
        .page_size(100)
        .start();
    let (csv_dir, db) = (
        daemon.settings().csv_dir("archive"),
        daemon.settings().sqlite_path("warehouse"),
    );

    let reply = daemon.post(&legacy_webhook_body("b-before", "evt-before", rows));
    assert_eq!(reply.status, 200, "{}", reply.text());
    daemon.wait_done(&["evt-before"], EVENT_DEADLINE);

    let reloads = log_count(&daemon, "Config reloaded");
    daemon.update_config(|settings| {
        settings
            .sink_sqlite("warehouse")
            .route(&["portalImportSubmitted"], &["warehouse"])
    });
    let line = wait_logged(&daemon, "Config reloaded", reloads);
    assert!(line.contains("warehouse"), "reload summary: {line}");

    let reply = daemon.post(&legacy_webhook_body("b-after", "evt-after", rows));
    assert_eq!(reply.status, 200, "{}", reply.text());
    daemon.wait_done(&["evt-after"], EVENT_DEADLINE);

    let before = legacy_row_ids(sim.config(), "b-before");
    let after = legacy_row_ids(sim.config(), "b-after");
    let both: Vec<String> = before.iter().chain(&after).cloned().collect();
    csv_rows(&csv_dir).assert_exactly(&both, "csv sink, configured from the start");
    sqlite_rows(&db).assert_exactly(&after, "sqlite sink, added by the reload");
    assert!(daemon.stop().success());
}

#[test]
fn a_broken_edit_keeps_the_running_config_and_says_where_it_is() {
    let rows = 300;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("reload-broken");
    let mut daemon = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .route(&["portalImportSubmitted"], &["archive"])
        .start();
    let csv_dir = daemon.settings().csv_dir("archive");
    let config_path = daemon.settings().config_path();

    // A wrong type in the fetch section, on a line the test knows.
    let good = daemon.settings().config_text(daemon.port());
    let broken = good.replacen("[fetch]\n", "[fetch]\npages_in_flight = \"four\"\n", 1);
    assert_ne!(good, broken, "the config has a [fetch] section to break");
    let line = broken
        .lines()
        .position(|l| l.starts_with("pages_in_flight = \"four\""))
        .expect("the broken line")
        + 1;
    daemon.replace_config_text(&broken);
    let rejected = wait_logged(&daemon, "Config reload rejected", 0);
    for (what, needle) in [
        ("the file", config_path.display().to_string()),
        ("the line", format!("line={line}")),
        ("the key", "key=fetch.pages_in_flight".to_owned()),
    ] {
        assert!(
            rejected.contains(&needle),
            "the rejection does not name {what} ({needle}): {rejected}"
        );
    }

    // SIGHUP re-reads the same broken file and rejects it again, explicitly.
    daemon.signal("HUP");
    wait_logged(&daemon, "Config reload rejected", 1);

    let reply = daemon.post(&legacy_webhook_body("b-1", "evt-1", rows));
    assert_eq!(reply.status, 200, "{}", reply.text());
    daemon.wait_done(&["evt-1"], EVENT_DEADLINE);
    csv_rows(&csv_dir).assert_exactly(
        &legacy_row_ids(sim.config(), "b-1"),
        "csv sink under the config that kept running",
    );

    // Fixing the file applies again, here written in place rather than renamed over.
    let reloads = log_count(&daemon, "Config reloaded");
    std::fs::write(&config_path, &good).expect("cannot write the config in place");
    wait_logged(&daemon, "Config reloaded", reloads);
    assert!(daemon.stop().success());
}

#[test]
fn reloads_during_a_100k_row_delivery_lose_and_duplicate_nothing() {
    let rows = 100_000;
    let sim = Sim::start(SimConfig {
        rows,
        page_latency: Duration::from_millis(40),
        ..SimConfig::default()
    });
    let dir = TestDir::new("reload-busy");
    let mut daemon = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["portalImportSubmitted"], &["archive", "warehouse"])
        .page_size(500)
        .set("daemon", "checkpoint_interval_ms", "250")
        .start();
    let (csv_dir, db, extra_dir) = (
        daemon.settings().csv_dir("archive"),
        daemon.settings().sqlite_path("warehouse"),
        daemon.settings().csv_dir("extra"),
    );

    let reply = daemon.post(&legacy_webhook_body("b-big", "evt-big", rows));
    assert_eq!(reply.status, 200, "{}", reply.text());

    // Three edits while the rows flow: a sink added, the sqlite sink's config changed (a new
    // instance for new events while the old one finishes this one), and a route removed.
    let warehouse_changed = format!("{{ path = {}, busy_timeout_ms = 6000 }}", toml_string(&db));
    type Edit = Box<dyn FnOnce(Daemon) -> Daemon>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "add a sink",
            Box::new(|s| {
                s.sink_csv("extra")
                    .route(&["portalImportSubmitted"], &["extra"])
            }),
        ),
        (
            "change the sqlite sink's config",
            Box::new(move |s| s.replace_sink("warehouse", "sqlite", &warehouse_changed)),
        ),
        (
            "change fetch settings",
            Box::new(|s| s.set("fetch", "pages_in_flight", "2")),
        ),
    ];
    for (round, (what, edit)) in edits.into_iter().enumerate() {
        let target = (round as u64 + 1) * rows / 5;
        wait::until(
            &format!("{target} rows checkpointed before edit `{what}`"),
            EVENT_DEADLINE,
            || (daemon.checkpointed_rows() >= target).then_some(()),
            || daemon.log_tail(),
        );
        assert!(
            daemon
                .event("evt-big")
                .is_some_and(|e| e.status == "pending"),
            "the delivery ended before edit `{what}`: the test would prove nothing"
        );
        daemon.update_config(edit);
        wait_logged(&daemon, "Config reloaded", round);
    }
    daemon.wait_done(&["evt-big"], EVENT_DEADLINE);

    let expected = legacy_row_ids(sim.config(), "b-big");
    csv_rows(&csv_dir).assert_exactly(&expected, "csv sink across three reloads");
    sqlite_rows(&db).assert_exactly(&expected, "sqlite sink across three reloads");
    assert_eq!(integrity_check(&db), "ok");
    assert!(
        !extra_dir.exists() || csv_rows(&extra_dir).total() == 0,
        "a sink added during the delivery must not get part of an event it was not routed for"
    );

    // The new config serves the next event, the added sink included.
    let reply = daemon.post(&legacy_webhook_body("b-next", "evt-next", rows));
    assert_eq!(reply.status, 200, "{}", reply.text());
    daemon.wait_done(&["evt-next"], EVENT_DEADLINE);
    csv_rows(&extra_dir).assert_exactly(
        &legacy_row_ids(sim.config(), "b-next"),
        "csv sink added by a reload",
    );
    assert!(daemon.stop().success());
}
