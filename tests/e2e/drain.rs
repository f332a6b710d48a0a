//! Graceful stop: SIGTERM refuses new webhooks with 503 and `Retry-After`, pauses in-flight
//! deliveries at a checkpoint (or cuts them at the drain deadline), exits 0, and the next
//! start finishes the work with nothing lost or duplicated.

use std::time::{Duration, Instant};

use flatfile_sim::{SimConfig, legacy_row_ids, legacy_webhook_body};
use flatsync_tests::check::{csv_leftovers, csv_rows, integrity_check, sqlite_rows};
use flatsync_tests::{Daemon, RequestGate, Sim, TestDir, wait};

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
    let (sim, settings) = big_import(
        Duration::from_millis(40),
        drain_timeout.as_secs(),
        "drain-pause",
    );
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

    daemon.signal("TERM");
    let exit = daemon
        .wait_exit(EVENT_DEADLINE)
        .unwrap_or_else(|| panic!("no exit after SIGTERM\n{}", daemon.log_tail()));
    assert!(
        exit.success(),
        "SIGTERM ended with {exit}\n{}",
        daemon.log_tail()
    );
    let log = daemon.log();
    assert!(
        !log.contains("Drain deadline reached"),
        "the delivery had to be cut at the {drain_timeout:?} drain deadline instead of \
         pausing at a checkpoint:\n{}",
        daemon.log_tail()
    );
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
    // The daemon reads the legacy API through a gate that lets the first page through and
    // holds every later request: the event has a checkpoint and waits for a page that cannot
    // arrive, so only the 1 s drain deadline can end it.
    let drain_timeout = Duration::from_secs(1);
    let (sim, settings) = big_import(Duration::ZERO, drain_timeout.as_secs(), "drain-cut");
    let gate = RequestGate::start(sim.url(), 1);
    let settings = settings
        .legacy_api_url(&gate.url())
        .set("fetch", "pages_in_flight", "1")
        .set("daemon", "checkpoint_batches", "1");
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let mut daemon = settings.start();
    let reply = daemon.post(&legacy_webhook_body("b-slow", "evt-slow", 100_000));
    assert_eq!(reply.status, 200, "{}", reply.text());
    wait::until(
        "the first page checkpointed in both sinks and the next request held at the gate",
        EVENT_DEADLINE,
        || {
            (daemon.checkpointed_rows_of("archive") >= 500
                && daemon.checkpointed_rows_of("warehouse") >= 500
                && gate.held() >= 1)
                .then_some(())
        },
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
        .wait_exit(EVENT_DEADLINE)
        .unwrap_or_else(|| panic!("no exit after the drain deadline\n{}", daemon.log_tail()));
    let took = signalled.elapsed();
    assert!(exit.success(), "the stop ended with {exit}");
    // Order, not speed: the daemon is gone while the request for its next page still waits at
    // the gate, so it cut the event instead of waiting for the page.
    assert!(
        gate.held() >= 1,
        "the held page request was answered: {} passed, {} held",
        gate.passed(),
        gate.held()
    );
    assert!(
        took >= drain_timeout,
        "the stop took {took:?}: it did not wait the {drain_timeout:?} drain deadline"
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

    // The next start, reading the simulator directly, resumes the cut event from its
    // checkpoint: every row once.
    drop(gate);
    daemon.update_config(|s| s.sim(&sim));
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
