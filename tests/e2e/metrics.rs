//! The admin listener: `/healthz`, `/readyz` and a `/metrics` scrape parsed line by line.

use std::time::Duration;

use flatfile_sim::{Faults, SimConfig, legacy_webhook_body};
use flatsync_test_kit::prometheus::Scrape;
use flatsync_tests::daemon::free_port;
use flatsync_tests::{Daemon, DaemonProcess, HttpReply, Sim, TestDir, http};

use crate::common::EVENT_DEADLINE;

/// Adds `[admin] listen` on a free port to a daemon's settings.
fn with_admin(settings: Daemon) -> (Daemon, u16) {
    let port = free_port();
    let settings = settings.set("admin", "listen", &format!("\"127.0.0.1:{port}\""));
    let text = settings.config_text(0);
    assert!(
        text.contains("[admin]") && text.contains(&format!("127.0.0.1:{port}")),
        "the harness did not write the [admin] section:\n{text}"
    );
    (settings, port)
}

fn admin_get(daemon: &DaemonProcess, port: u16, path: &str) -> HttpReply {
    http::get(&format!("http://127.0.0.1:{port}{path}"), &[]).unwrap_or_else(|e| {
        panic!(
            "GET {path} on the admin port {port}: {e}\n{}",
            daemon.log_tail()
        )
    })
}

fn scrape(daemon: &DaemonProcess, port: u16) -> Scrape {
    let reply = admin_get(daemon, port, "/metrics");
    assert_eq!(reply.status, 200, "GET /metrics: {}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "the Prometheus text format's content type"
    );
    Scrape::parse(reply.text()).unwrap_or_else(|e| panic!("{e}\nin:\n{}", reply.text()))
}

#[test]
fn metrics_count_a_legacy_import_and_health_endpoints_answer() {
    let rows = 600;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("metrics");
    let (settings, admin) = with_admin(
        Daemon::new(dir.path())
            .sim(&sim)
            .sink_csv("archive")
            .sink_sqlite("warehouse")
            .route(&["portalImportSubmitted"], &["archive", "warehouse"])
            .page_size(100),
    );
    let mut daemon = settings.start();

    let health = admin_get(&daemon, admin, "/healthz");
    assert_eq!(health.status, 200, "/healthz: {}", health.text());
    assert_eq!(health.text().trim(), "ok");
    let ready = admin_get(&daemon, admin, "/readyz");
    assert_eq!(ready.status, 200, "/readyz: {}", ready.text());
    assert_eq!(admin_get(&daemon, admin, "/no-such-page").status, 404);

    let event = "evt-metrics-1";
    let reply = daemon.post(&legacy_webhook_body("b-metrics-1", event, rows));
    assert_eq!(reply.status, 200, "webhook answer: {}", reply.text());
    daemon.wait_done(&[event], EVENT_DEADLINE);

    let metrics = scrape(&daemon, admin);
    let rows = rows as f64;
    for sink in ["archive", "warehouse"] {
        assert_eq!(
            metrics.expect("flatsync_rows_delivered_total", &[("sink", sink)]),
            rows,
            "rows delivered to {sink}"
        );
        assert_eq!(
            metrics.expect("flatsync_dead_letters", &[("sink", sink)]),
            0.0,
            "dead letters of {sink}"
        );
        assert_eq!(
            metrics.expect("flatsync_checkpoint_lag_seconds", &[("sink", sink)]),
            0.0,
            "nothing is pending for {sink}"
        );
        assert_eq!(
            metrics.sum("flatsync_rows_failed_total", &[("sink", sink)]),
            0.0,
            "no row was refused by {sink}"
        );
    }
    assert_eq!(
        metrics.expect(
            "flatsync_events_received_total",
            &[("source", "webhook"), ("topic", "portalImportSubmitted")]
        ),
        1.0
    );
    assert_eq!(metrics.expect("flatsync_events_pending", &[]), 0.0);

    // One histogram sample per HTTP request the simulator answered, and nothing to retry.
    let requests = sim.stats().legacy_rows;
    assert!(
        requests >= 6,
        "600 rows in pages of 100: {requests} requests"
    );
    let fetches = metrics.expect(
        "flatsync_fetch_seconds_count",
        &[("endpoint", "legacy_rows")],
    );
    assert_eq!(fetches, requests as f64, "fetch histogram count");
    assert_eq!(
        metrics.expect(
            "flatsync_fetch_seconds_bucket",
            &[("endpoint", "legacy_rows"), ("le", "+Inf")]
        ),
        fetches
    );
    assert!(metrics.expect("flatsync_fetch_seconds_sum", &[("endpoint", "legacy_rows")]) > 0.0);
    assert_eq!(metrics.sum("flatsync_fetch_retries_total", &[]), 0.0);
    assert!(
        metrics
            .samples()
            .iter()
            .all(|s| s.name.starts_with("flatsync_")),
        "only flatsync's own series:\n{}",
        metrics.text()
    );

    let status = daemon.stop();
    assert!(
        status.success(),
        "flatsync should stop cleanly, got {status}"
    );
    assert!(
        http::get(&format!("http://127.0.0.1:{admin}/healthz"), &[]).is_err(),
        "the admin listener still answers after the daemon exited"
    );
}

#[test]
fn retried_fetches_are_counted_by_endpoint_and_reason() {
    let rows = 800;
    let sim = Sim::start(SimConfig {
        rows,
        seed: 11,
        faults: Faults {
            error_rate: 0.25,
            ..Faults::default()
        },
        ..SimConfig::default()
    });
    let dir = TestDir::new("metrics-retries");
    let (settings, admin) = with_admin(
        Daemon::new(dir.path())
            .legacy_sim(&sim)
            .sink_csv("archive")
            .route(&["portalImportSubmitted"], &["archive"])
            .page_size(40),
    );
    let mut daemon = settings.start();
    let event = "evt-metrics-retries";
    let reply = daemon.post(&legacy_webhook_body("b-metrics-2", event, rows));
    assert_eq!(reply.status, 200, "webhook answer: {}", reply.text());
    daemon.wait_done(&[event], Duration::from_secs(300));

    let stats = sim.stats();
    assert!(stats.injected_errors > 0, "no fault was drawn: {stats:?}");
    let metrics = scrape(&daemon, admin);
    let retries = metrics.sum(
        "flatsync_fetch_retries_total",
        &[("endpoint", "legacy_rows")],
    );
    assert_eq!(
        retries,
        stats.injected_errors as f64,
        "every injected 500/503 was retried once: {stats:?}\n{}",
        metrics.text()
    );
    let by_reason = metrics.sum(
        "flatsync_fetch_retries_total",
        &[("endpoint", "legacy_rows"), ("reason", "http_500")],
    ) + metrics.sum(
        "flatsync_fetch_retries_total",
        &[("endpoint", "legacy_rows"), ("reason", "http_503")],
    );
    assert_eq!(
        by_reason,
        retries,
        "reasons name the status:\n{}",
        metrics.text()
    );
    assert_eq!(
        metrics.expect(
            "flatsync_fetch_seconds_count",
            &[("endpoint", "legacy_rows")]
        ),
        stats.legacy_rows as f64,
        "one histogram sample per attempt, failed ones included"
    );
    assert_eq!(
        metrics.expect("flatsync_rows_delivered_total", &[("sink", "archive")]),
        rows as f64
    );
    assert!(daemon.stop().success());
}
