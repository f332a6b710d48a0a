//! Graceful stop: SIGTERM refuses new webhooks with 503 and `Retry-After`, pauses in-flight
//! deliveries at a checkpoint (or cuts them at the drain deadline), exits 0, and the next
//! start finishes the work with nothing lost or duplicated.

use std::time::{Duration, Instant};

use flatfile_sim::{SimConfig, legacy_row_ids, legacy_webhook_body};
use flatsync_tests::check::{csv_leftovers, csv_rows, integrity_check, sqlite_rows};
use flatsync_tests::{Daemon, Sim, TestDir, wait};

use crate::common::EVENT_DEADLINE;

fn big_import(page_latency: Duration, drain_timeout_secs: u64, name: &str) -> (Sim, Daemon) {
    let sim = Sim::start(SimConfig {
        rows: 100_000,
        page_latency,
        ..SimConfig::default()
    });
    let dir = TestDir::new(name);
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["portalImportSubmitted"], &["archive", "warehouse"])
        .page_size(500)
        .set("daemon", "checkpoint_interval_ms", "250")
        .set(
            "daemon",
            "drain_timeout_secs",
            &drain_timeout_secs.to_string(),
        )
        .set("daemon", "progress_interval_secs", "1");
    (sim, settings)
}

#[test]
fn sigterm_during_a_100k_row_delivery_exits_0_and_the_restart_loses_nothing() {
    let drain_timeout = Duration::from_secs(20);
    let (sim, settings) = big_import(Duration::from_millis(40), 20, "drain-pause");
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let mut daemon = settings.start();
    let reply = daemon.post(&legacy_webhook_body("b-big", "evt-big", 100_000));
    assert_eq!(reply.status, 200, "{}", reply.text());
    wait::until(
        "20,000 rows checkpointed and a progress line logged",
        EVENT_DEADLINE,
        || {
            (daemon.checkpointed_rows() >= 20_000 && daemon.log().contains("Stream progress"))
                .then_some(())
        },
        || daemon.log_tail(),
    );
    assert_eq!(
        daemon.event("evt-big").map(|e| e.status).as_deref(),
        Some("pending"),
        "the delivery ended before SIGTERM: the test would prove nothing"
    );

    let signalled = Instant::now();
    daemon.signal("TERM");
    let exit = daemon
        .wait_exit(drain_timeout + Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit within the drain deadline\n{}", daemon.log_tail()));
    let took = signalled.elapsed();
    assert!(
        exit.success(),
        "SIGTERM ended with {exit}\n{}",
        daemon.log_tail()
    );
    assert!(
        took <= drain_timeout,
        "the stop took {took:?}, longer than the {drain_timeout:?} drain deadline"
    );
    let log = daemon.log();
    let progress = log
        .lines()
        .find(|l| l.contains("Stream progress"))
        .unwrap_or_else(|| panic!("no progress line in a multi-second delivery\n{log}"));
    for field in ["rows=", "total=100000", "rows_per_sec=", "eta_secs="] {
        assert!(
            progress.contains(field),
            "progress line without {field}: {progress}"
        );
    }
    assert!(
        log.contains("Event paused for shutdown"),
        "the delivery was not paused at a checkpoint:\n{}",
        daemon.log_tail()
    );
    assert_eq!(
        daemon.event("evt-big").map(|e| e.status).as_deref(),
        Some("pending"),
        "a paused event stays pending for the next start"
    );

    daemon.restart();
    daemon.wait_done(&["evt-big"], EVENT_DEADLINE);
    let expected = legacy_row_ids(sim.config(), "b-big");
    csv_rows(&csv_dir).assert_exactly(&expected, "csv sink across a graceful stop");
    sqlite_rows(&db).assert_exactly(&expected, "sqlite sink across a graceful stop");
    assert_eq!(
        csv_leftovers(&csv_dir),
        Vec::<String>::new(),
        "partial CSV files"
    );
    assert_eq!(integrity_check(&db), "ok");
    assert!(daemon.stop().success());
}

#[test]
fn webhooks_during_a_drain_get_503_and_the_deadline_cuts_slow_work() {
    // Each page takes 3 s to arrive, and the drain may last 1 s: the event is cut at its
    // last checkpoint instead of waiting for the page.
    let (sim, settings) = big_import(Duration::from_secs(3), 1, "drain-cut");
    let settings = settings.set("fetch", "pages_in_flight", "1");
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let mut daemon = settings.start();
    let reply = daemon.post(&legacy_webhook_body("b-slow", "evt-slow", 100_000));
    assert_eq!(reply.status, 200, "{}", reply.text());
    wait::until(
        "the first page delivered",
        EVENT_DEADLINE,
        || (daemon.checkpointed_rows() >= 500).then_some(()),
        || daemon.log_tail(),
    );

    let signalled = Instant::now();
    daemon.signal("TERM");
    // A webhook already in flight when the signal lands is accepted (and must then be
    // delivered); keep sending fresh ones until the drain refuses one.
    let mut accepted_late: Vec<(String, String)> = Vec::new();
    let mut attempt = 0;
    let (refused, refused_id) = wait::until(
        "a webhook refused while draining",
        Duration::from_secs(5),
        || {
            attempt += 1;
            let (batch, event) = (format!("b-late-{attempt}"), format!("evt-late-{attempt}"));
            let reply = daemon
                .post_raw(
                    &serde_json::to_vec(&legacy_webhook_body(&batch, &event, 10))
                        .expect("serialisable"),
                    None,
                )
                .ok()?;
            if reply.status == 200 {
                accepted_late.push((batch, event));
                return None;
            }
            Some((reply, event))
        },
        || daemon.log_tail(),
    );
    assert_eq!(
        refused.status,
        503,
        "a webhook during the drain: {}",
        refused.text()
    );
    assert!(
        refused
            .headers
            .iter()
            .any(|(name, value)| name == "retry-after" && value.parse::<u64>().is_ok()),
        "503 without a Retry-After in seconds: {:?}",
        refused.headers
    );

    let exit = daemon
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no exit after the drain deadline\n{}", daemon.log_tail()));
    assert!(exit.success(), "the stop ended with {exit}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "the stop took {:?}: it waited for the slow page instead of cutting at the deadline",
        signalled.elapsed()
    );
    assert!(
        daemon.log().contains("Drain deadline reached"),
        "{}",
        daemon.log_tail()
    );
    assert!(
        daemon.event(&refused_id).is_none(),
        "a refused webhook must not be in the inbox"
    );

    // The next start resumes the cut event from its checkpoint: every row once. The sim's
    // latency would make 200 pages take 10 minutes, so this daemon reads a fast simulator
    // serving the same data.
    let fast = Sim::start(SimConfig {
        page_latency: Duration::ZERO,
        ..sim.config().clone()
    });
    daemon.update_config(|s| s.sim(&fast));
    daemon.restart();
    let mut done: Vec<&str> = vec!["evt-slow"];
    done.extend(accepted_late.iter().map(|(_, event)| event.as_str()));
    daemon.wait_done(&done, EVENT_DEADLINE);
    let mut expected = legacy_row_ids(sim.config(), "b-slow");
    for (batch, _) in &accepted_late {
        expected.extend(legacy_row_ids(sim.config(), batch));
    }
    csv_rows(&csv_dir).assert_exactly(&expected, "csv sink across a cut drain");
    sqlite_rows(&db).assert_exactly(&expected, "sqlite sink across a cut drain");
    assert!(daemon.stop().success());
}
