//! The admin listener: `/healthz`, `/readyz` and a `/metrics` scrape parsed line by line.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use flatfile_sim::{Faults, SimConfig, SimStats, legacy_webhook_body, submit_event_body};
use flatsync_core::metrics::{self, FAMILIES};
use flatsync_test_kit::prometheus::Scrape;
use flatsync_tests::daemon::free_port;
use flatsync_tests::{Daemon, DaemonProcess, HttpReply, Sim, TestDir, http, wait};

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
    let ok = [("endpoint", "legacy_rows"), ("status", "200")];
    let fetches = metrics.expect("flatsync_fetch_seconds_count", &ok);
    assert_eq!(fetches, requests as f64, "fetch histogram count");
    assert_eq!(
        metrics.expect(
            "flatsync_fetch_seconds_bucket",
            &[
                ("endpoint", "legacy_rows"),
                ("status", "200"),
                ("le", "+Inf")
            ]
        ),
        fetches
    );
    assert!(metrics.expect("flatsync_fetch_seconds_sum", &ok) > 0.0);
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

/// Page size of the fault test; its legacy batch is not a multiple of it, so the last page is
/// short and the batch count is plain.
const FAULT_PAGE: u64 = 40;

/// Expected sink figures from the state database: per sink, the batches it made durable (the
/// sum of its checkpoints' `next_seq`) and its rows by stream kind.
#[derive(Debug, Default)]
struct Delivered {
    batches: BTreeMap<String, u64>,
    rows_by_kind: BTreeMap<(String, String), u64>,
}

fn delivered(daemon: &DaemonProcess, events: &[&str]) -> Delivered {
    let mut out = Delivered::default();
    for event in events {
        let detail = daemon
            .event_detail(event)
            .unwrap_or_else(|| panic!("event {event} is not in the state database"));
        let kinds: BTreeMap<&str, &str> = detail
            .streams
            .iter()
            .map(|s| (s.stream.as_str(), s.kind.as_str()))
            .collect();
        for c in &detail.checkpoints {
            *out.batches.entry(c.sink.clone()).or_default() += c.next_seq;
            let kind = kinds
                .get(c.stream.as_str())
                .unwrap_or_else(|| panic!("checkpoint of an unplanned stream: {c:?}"));
            *out.rows_by_kind
                .entry((c.sink.clone(), (*kind).to_owned()))
                .or_default() += c.rows;
        }
    }
    out
}

/// Opens a connection to the webhook listener, sends nothing and waits for the daemon to
/// close it (`[webhook] idle_timeout_secs`).
fn idle_connection_is_closed(daemon: &DaemonProcess) {
    let mut stream = TcpStream::connect(("127.0.0.1", daemon.port())).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "an idle connection got {n} bytes instead of being closed: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the idle connection was not closed within 60 s: {e}"),
    }
}

/// Every `flatsync_*` name a PromQL expression uses (metric names, never label values, which
/// here never start with `flatsync_`).
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut current = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
            continue;
        }
        if current.starts_with("flatsync_") {
            names.insert(std::mem::take(&mut current));
        }
        current.clear();
    }
    names
}

fn contrib_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The shipped Grafana dashboard, parsed.
fn dashboard() -> serde_json::Value {
    let text = contrib_file("grafana/flatsync-dashboard.json");
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("contrib/grafana/flatsync-dashboard.json is not valid JSON: {e}")
    })
}

/// Every PromQL expression of the dashboard: panel targets' `expr` and the template
/// variables' queries, with where each was found.
fn dashboard_exprs(value: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                let here = format!("{at}.{key}");
                match (key.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push((here, s.clone()));
                    }
                    _ => dashboard_exprs(v, &here, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                dashboard_exprs(v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// One alerting rule of contrib/prometheus/flatsync-alerts.yml, every field a rule must have.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertRule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<AlertRule>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

fn alert_rules() -> Vec<AlertRule> {
    let text = contrib_file("prometheus/flatsync-alerts.yml");
    let file: RuleFile = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| {
        panic!("contrib/prometheus/flatsync-alerts.yml: not a rule file of alerts: {e}")
    });
    file.groups
        .into_iter()
        .inspect(|g| assert!(!g.name.is_empty(), "a rule group without a name"))
        .flat_map(|g| g.rules)
        .collect()
}

/// Every metric name the dashboard and the rules use, with where it is used.
fn contrib_metric_names() -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard(), "dashboard", &mut exprs);
    for rule in alert_rules() {
        exprs.push((format!("alert {}", rule.alert), rule.expr));
    }
    for (at, expr) in exprs {
        for name in promql_metric_names(&expr) {
            names.entry(name).or_insert_with(|| at.clone());
        }
    }
    names
}

/// A metric name as a family of [`FAMILIES`]: itself, or a histogram's series.
fn family_of(name: &str) -> Option<&'static str> {
    FAMILIES.iter().copied().find(|family| {
        *family == name
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix) == Some(family))
    })
}

#[test]
fn contrib_dashboard_is_valid_json_and_charts_every_family() {
    let dashboard = dashboard();
    assert!(
        dashboard["title"].is_string() && dashboard["uid"].is_string(),
        "a dashboard needs a title and a uid to be imported"
    );
    let panels = dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels");
    let mut titles = BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(titles.insert(title), "two panels are called {title:?}");
        let targets = panel["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel {title:?} queries nothing");
    }
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, "dashboard", &mut exprs);
    let mut charted = BTreeSet::new();
    for (at, expr) in &exprs {
        for name in promql_metric_names(expr) {
            let family = family_of(&name).unwrap_or_else(|| {
                panic!("{at} uses {name}, which flatsync does not export: {expr}")
            });
            charted.insert(family);
        }
    }
    let missing: Vec<&str> = FAMILIES
        .iter()
        .copied()
        .filter(|f| !charted.contains(f))
        .collect();
    assert!(
        missing.is_empty(),
        "families no dashboard panel shows: {missing:?}"
    );
}

#[test]
fn contrib_alert_rules_are_complete_and_name_only_exported_metrics() {
    let rules = alert_rules();
    let mut used = BTreeSet::new();
    for rule in &rules {
        let name = &rule.alert;
        assert!(!rule.expr.trim().is_empty(), "alert {name}: empty expr");
        assert!(
            rule.for_.ends_with('m') || rule.for_.ends_with('s') || rule.for_.ends_with('h'),
            "alert {name}: `for: {}` is not a duration",
            rule.for_
        );
        let severity = rule.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "alert {name}: labels.severity is {severity:?}, not critical, warning or info"
        );
        for key in ["summary", "description"] {
            assert!(
                rule.annotations
                    .get(key)
                    .is_some_and(|t| !t.trim().is_empty()),
                "alert {name}: no annotations.{key}"
            );
        }
        for metric in promql_metric_names(&rule.expr) {
            let family = family_of(&metric).unwrap_or_else(|| {
                panic!("alert {name} uses {metric}, which flatsync does not export")
            });
            used.insert(family);
        }
    }
    // What issue 15 asks the rules to watch: stuck deliveries, dead letters, lag, API errors
    // and retries, sinks down.
    for family in [
        metrics::EVENTS_PENDING,
        metrics::ROWS_DELIVERED,
        metrics::DEAD_LETTERS,
        metrics::CHECKPOINT_LAG,
        metrics::API_REQUESTS,
        metrics::FETCH_RETRIES,
        metrics::SINK_UP,
    ] {
        assert!(used.contains(family), "no alert rule watches {family}");
    }
}

#[test]
fn metrics_under_429s_and_5xx_show_every_family_with_sensible_values() {
    let rows = 790;
    let sim = Sim::start(SimConfig {
        rows,
        seed: 15,
        sheets_per_workbook: 2,
        faults: Faults {
            error_rate: 0.1,
            rate_limit_rate: 0.1,
            retry_after_secs: 1,
            drop_rate: 0.0,
        },
        ..SimConfig::default()
    });
    let dir = TestDir::new("metrics-faults");
    let (settings, admin) = with_admin(
        Daemon::new(dir.path())
            .sim(&sim)
            .sink_csv("archive")
            .sink_sqlite("warehouse")
            .route(
                &["portalImportSubmitted", "job:ready"],
                &["archive", "warehouse"],
            )
            .page_size(FAULT_PAGE)
            // A flush after every batch: as many flush calls as batches.
            .set("daemon", "checkpoint_batches", "1")
            .set("webhook", "idle_timeout_secs", "1"),
    );
    let mut daemon = settings.start();

    let (legacy_event, event, workbook) = ("evt-metrics-faults", "us_evt_mfaults", "us_wb_mf");
    let job = sim.job_for(workbook);
    for body in [
        legacy_webhook_body("b-metrics-faults", legacy_event, rows),
        submit_event_body(event, workbook, &job),
    ] {
        let reply = daemon.post(&body);
        assert_eq!(reply.status, 200, "webhook answer: {}", reply.text());
    }
    let bad = daemon
        .post_raw(b"{not json", None)
        .expect("the malformed webhook is answered");
    assert_eq!(bad.status, 400, "malformed body: {}", bad.text());
    idle_connection_is_closed(&daemon);
    daemon.wait_done(&[legacy_event, event], Duration::from_secs(400));

    // The job is completed after the event settles: wait until every request the simulator
    // saw is counted, and no more.
    let metrics = wait::until(
        "the API request counter to match the simulator's count",
        EVENT_DEADLINE,
        || {
            let scrape = scrape(&daemon, admin);
            let stats = sim.stats();
            (scrape.sum(metrics::API_REQUESTS, &[]) == stats.requests as f64
                && sim.job(&job).is_some_and(|j| j.status == "complete"))
            .then_some(scrape)
        },
        || {
            format!(
                "simulator: {:?}\n{}",
                sim.stats(),
                scrape(&daemon, admin).text()
            )
        },
    );
    let stats = sim.stats();
    assert!(
        stats.injected_rate_limits > 0 && stats.injected_errors > 0,
        "the simulator drew no 429 or no 5xx, the test proves nothing: {stats:?}"
    );
    check_api_families(&metrics, &stats);
    check_sink_families(&metrics, &delivered(&daemon, &[legacy_event, event]));
    check_intake_families(&metrics);
    check_scrape_covers_families_and_contrib(&metrics);
    assert!(daemon.stop().success());
}

/// Requests, statuses, retries, durations and bytes against what the simulator counted.
fn check_api_families(metrics: &Scrape, stats: &SimStats) {
    let requests = |labels: &[(&str, &str)]| metrics.sum(metrics::API_REQUESTS, labels);
    assert_eq!(
        requests(&[("status", "429")]),
        stats.injected_rate_limits as f64,
        "every injected 429 is a request with status 429: {stats:?}"
    );
    assert_eq!(
        requests(&[("status", "500")]) + requests(&[("status", "503")]),
        stats.injected_errors as f64,
        "every injected 500/503 is counted by its status: {stats:?}"
    );
    let retries = |reason| metrics.sum(metrics::FETCH_RETRIES, &[("reason", reason)]);
    assert_eq!(
        retries("http_429"),
        stats.injected_rate_limits as f64,
        "every 429 was retried once, after its Retry-After"
    );
    assert_eq!(
        retries("http_500") + retries("http_503"),
        stats.injected_errors as f64
    );
    let histogram_count = metrics.sum(&format!("{}_count", metrics::FETCH_SECONDS), &[]);
    assert_eq!(
        histogram_count, stats.requests as f64,
        "one duration sample per request"
    );
    assert!(
        metrics.sum(&format!("{}_sum", metrics::FETCH_SECONDS), &[]) > 0.0,
        "requests take time"
    );
    for (endpoint, served) in [
        ("legacy_rows", stats.legacy_rows),
        ("records", stats.records),
    ] {
        let ok = requests(&[("endpoint", endpoint), ("status", "200")]);
        assert!(
            ok > 0.0 && ok <= served as f64,
            "{endpoint}: {ok} of {served}"
        );
        // Every row is a JSON object of at least a few fields: well over 20 bytes.
        let bytes = metrics.expect(metrics::FETCH_BYTES, &[("endpoint", endpoint)]);
        assert!(
            bytes > 20.0 * 790.0,
            "{endpoint}: {bytes} bytes fetched for 790 rows"
        );
    }
}

/// Sink calls, rows by kind, up and stalled, against the checkpoints in the state database.
fn check_sink_families(metrics: &Scrape, delivered: &Delivered) {
    let calls = format!("{}_count", metrics::SINK_CALL_SECONDS);
    for sink in ["archive", "warehouse"] {
        let batches = delivered.batches.get(sink).copied().unwrap_or(0) as f64;
        assert!(batches > 2.0, "{sink}: {batches} batches: {delivered:?}");
        let count = |call| metrics.expect(&calls, &[("sink", sink), ("call", call)]);
        assert_eq!(count("create"), 1.0, "{sink} was created once");
        assert_eq!(
            count("write_batch"),
            batches,
            "{sink}: one write_batch call per batch"
        );
        assert_eq!(
            count("flush"),
            batches,
            "{sink}: one flush per batch with checkpoint_batches = 1"
        );
        assert!(
            metrics.expect(
                &format!("{}_sum", metrics::SINK_CALL_SECONDS),
                &[("sink", sink), ("call", "write_batch")]
            ) > 0.0
        );
        assert_eq!(metrics.expect(metrics::SINK_UP, &[("sink", sink)]), 1.0);
        assert_eq!(
            metrics.expect(metrics::SINK_STALLED, &[("sink", sink)]),
            0.0
        );
    }
    assert!(
        delivered.rows_by_kind.len() >= 4,
        "two sinks with a legacy batch and two sheets each: {delivered:?}"
    );
    for ((sink, kind), rows) in &delivered.rows_by_kind {
        assert_eq!(
            metrics.expect(
                metrics::ROWS_DELIVERED_BY_KIND,
                &[("sink", sink), ("kind", kind)]
            ),
            *rows as f64,
            "rows of kind {kind} in {sink}"
        );
    }
}

/// Webhook answers, closed connections and the build.
fn check_intake_families(metrics: &Scrape) {
    let answers = |status| metrics.expect(metrics::WEBHOOK_RESPONSES, &[("status", status)]);
    assert_eq!(
        answers("200"),
        2.0,
        "the two events posted were answered 200"
    );
    assert_eq!(answers("400"), 1.0, "the malformed body was answered 400");
    assert_eq!(
        metrics.sum(metrics::WEBHOOK_RESPONSES, &[]),
        3.0,
        "no other answer"
    );
    assert_eq!(
        metrics.expect(
            metrics::CONNECTIONS_CLOSED,
            &[("listener", "webhook"), ("reason", "idle_timeout")]
        ),
        1.0,
        "the idle connection"
    );
    let abi = format!(
        "{}.{}",
        flatsync_plugin_api::ABI_MAJOR,
        flatsync_plugin_api::ABI_MINOR
    );
    assert_eq!(
        metrics.expect(
            metrics::BUILD_INFO,
            &[("version", env!("CARGO_PKG_VERSION")), ("plugin_abi", &abi)]
        ),
        1.0
    );
}

/// Every family core lists is in this scrape, and every name the dashboard and the alert
/// rules use is a series this scrape holds.
fn check_scrape_covers_families_and_contrib(metrics: &Scrape) {
    let served: BTreeSet<&str> = metrics.samples().iter().map(|s| s.name.as_str()).collect();
    for family in FAMILIES {
        assert!(
            served.contains(family) || served.contains(format!("{family}_count").as_str()),
            "{family} is not in the scrape:\n{}",
            metrics.text()
        );
    }
    for (name, at) in contrib_metric_names() {
        assert!(
            served.contains(name.as_str()),
            "{at} uses {name}, which a running daemon does not serve:\n{}",
            metrics.text()
        );
    }
}
