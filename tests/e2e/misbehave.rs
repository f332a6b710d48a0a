//! Misbehaving plugins (fixture `fx-misbehave`) beside a csv-folder sink on the same route: a
//! plugin that never returns from `write_batch` or `flush`, one that answers RETRY forever, one
//! that panics on every call. The bad sink fails alone, with its name and the reason, in the
//! event, the dead letters, `flatsync status` and `/metrics`; the csv sink gets every row of
//! every event; and SIGTERM stops the daemon even with a thread stuck inside the plugin.
//!
//! Also: a plugin file others could write is refused, with a development override.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use flatfile_sim::{legacy_row_ids, legacy_webhook_body};
use flatsync_tests::check::{Tally, csv_rows};
use flatsync_tests::daemon::{free_port, toml_string};
use flatsync_tests::{Artifacts, Daemon, DaemonProcess, Sim, TestDir, http, wait};
use serde_json::Value;

use crate::common::EVENT_DEADLINE;

/// Only bounds a hang: a stop that works takes about `drain_timeout_secs` plus 1 s.
const STOP_GUARD: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a `--json` operator command on the daemon's config and parses what it printed.
fn cli_json(settings: &Daemon, args: &[&str]) -> Value {
    let output = cli(settings, args);
    assert!(
        output.status.success(),
        "flatsync {args:?} failed: {}",
        text(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "flatsync {args:?} printed no JSON ({e}): {}",
            text(&output.stdout)
        )
    })
}

fn cli(settings: &Daemon, args: &[&str]) -> Output {
    let config = settings.config_path();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", config.to_str().expect("UTF-8 test paths")]);
    settings.cli(&all)
}

/// The value of `name{sink="<sink>"}` in a `/metrics` scrape.
fn sink_gauge(daemon: &DaemonProcess, admin_port: u16, name: &str, sink: &str) -> f64 {
    let reply = http::get(&format!("http://127.0.0.1:{admin_port}/metrics"), &[])
        .unwrap_or_else(|e| panic!("GET /metrics: {e}\n{}", daemon.log_tail()));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.text();
    let prefix = format!("{name}{{sink=\"{sink}\"}} ");
    let values: Vec<f64> = body
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().expect("a number"))
        .collect();
    assert_eq!(values.len(), 1, "one series {prefix}in the scrape:\n{body}");
    values[0]
}

/// The row ids a `fx-misbehave` ledger holds, with their counts.
fn ledger_rows(path: &Path) -> Tally {
    let mut tally = Tally::default();
    if let Ok(content) = std::fs::read_to_string(path) {
        for id in content.lines() {
            *tally.seen.entry(id.to_owned()).or_default() += 1;
        }
    }
    tally
}

/// Two events delivered together, then a third once they failed, to `archive` (csv-folder)
/// and `flaky` (fx-misbehave in `mode`). Asserts what every misbehaviour must give, and that
/// each dead letter's error contains one of `reasons` (the first event's must contain the
/// first).
fn bad_sink_fails_alone(mode: &str, reasons: &[&str], stalls: bool) {
    let rows = 250;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new(&format!("misbehave-{mode}"));
    let plugin = Artifacts::locate().fx_misbehave_plugin();
    let admin_port = free_port();
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink(
            "flaky",
            &plugin.display().to_string(),
            &format!("{{ mode = {} }}", toml_string(mode)),
        )
        .route(&["portalImportSubmitted"], &["archive", "flaky"])
        .page_size(100)
        .set("daemon", "sink_call_timeout_secs", "2")
        .set("daemon", "sink_retry_attempts", "3")
        .set("daemon", "sink_retry_backoff_max_ms", "50")
        .set(
            "admin",
            "listen",
            &toml_string(format!("127.0.0.1:{admin_port}")),
        );
    let csv_dir = settings.csv_dir("archive");
    let daemon = settings.start();
    assert_eq!(
        sink_gauge(&daemon, admin_port, "flatsync_sink_up", "flaky"),
        1.0
    );

    let batches: Vec<String> = (1..=3).map(|i| format!("b-{mode}-{i}")).collect();
    let events: Vec<String> = (1..=3).map(|i| format!("evt-{mode}-{i}")).collect();
    for i in 0..2 {
        let reply = daemon.post(&legacy_webhook_body(&batches[i], &events[i], rows));
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let mut finished = vec![
        daemon.wait_final(&events[0], EVENT_DEADLINE),
        daemon.wait_final(&events[1], EVENT_DEADLINE),
    ];
    // A later event, after the sink went bad, is still delivered to the good sink.
    let reply = daemon.post(&legacy_webhook_body(&batches[2], &events[2], rows));
    assert_eq!(reply.status, 200, "{}", reply.text());
    finished.push(daemon.wait_final(&events[2], EVENT_DEADLINE));
    daemon.assert_alive("after a sink misbehaved");

    for event in &finished {
        assert_eq!(event.status, "failed", "{event:?}");
        let detail = event.detail.clone().unwrap_or_default();
        assert!(detail.contains("sink `flaky`"), "names the sink: {detail}");
        assert!(
            !detail.contains("sink `archive`"),
            "only the bad sink failed: {detail}"
        );
        assert!(
            reasons.iter().any(|r| detail.contains(r)),
            "the detail says why ({reasons:?}): {detail}"
        );
    }

    let mut expected = Vec::new();
    for batch in &batches {
        expected.extend(legacy_row_ids(sim.config(), batch));
    }
    csv_rows(&csv_dir).assert_exactly(&expected, "the csv sink beside the misbehaving one");
    // 0 rows counted that are not on disk: the bad sink made nothing durable.
    assert_eq!(daemon.checkpointed_rows_of("archive"), 3 * rows);
    assert_eq!(daemon.checkpointed_rows_of("flaky"), 0);

    let letters = cli_json(daemon.settings(), &["dead-letter", "list", "--json"]);
    let letters = letters.as_array().expect("an array");
    assert_eq!(letters.len(), 3, "{letters:#?}");
    for letter in letters {
        assert_eq!(letter["sink"], "flaky", "{letter:#}");
        let error = letter["error"].as_str().unwrap_or_default();
        assert!(error.contains("flaky"), "{error}");
        assert!(reasons.iter().any(|r| error.contains(r)), "{error}");
    }
    let first = letters
        .iter()
        .find(|l| l["event_id"] == events[0].as_str())
        .expect("the first event's letter");
    let first_error = first["error"].as_str().unwrap_or_default();
    // Either of the two concurrent events may have met the misbehaviour first.
    let second_error = letters
        .iter()
        .find(|l| l["event_id"] == events[1].as_str())
        .and_then(|l| l["error"].as_str())
        .unwrap_or_default();
    assert!(
        first_error.contains(reasons[0]) || second_error.contains(reasons[0]),
        "one of the first two letters says `{}`: {first_error} / {second_error}",
        reasons[0]
    );

    let status = cli_json(daemon.settings(), &["status", "--json"]);
    let flaky = status["sinks"]
        .as_array()
        .and_then(|sinks| sinks.iter().find(|s| s["name"] == "flaky"))
        .unwrap_or_else(|| panic!("no sink flaky in {status:#}"));
    assert_eq!(flaky["failed"], 3, "{flaky:#}");
    let last_error = flaky["last_error"]["error"].as_str().unwrap_or_default();
    assert!(
        reasons.iter().any(|r| last_error.contains(r)),
        "status shows why: {last_error}"
    );
    let human = text(&cli(daemon.settings(), &["status"]).stdout);
    assert!(human.contains("flaky"), "{human}");

    assert_eq!(
        sink_gauge(&daemon, admin_port, "flatsync_sink_up", "flaky"),
        0.0
    );
    assert_eq!(
        sink_gauge(&daemon, admin_port, "flatsync_sink_up", "archive"),
        1.0
    );
    assert_eq!(
        sink_gauge(&daemon, admin_port, "flatsync_sink_stalled", "flaky"),
        if stalls { 1.0 } else { 0.0 }
    );
    assert_eq!(
        sink_gauge(&daemon, admin_port, "flatsync_sink_stalled", "archive"),
        0.0
    );
}

#[test]
fn a_sink_hung_in_write_batch_is_stalled_alone_and_the_csv_sink_gets_every_row() {
    bad_sink_fails_alone("hang_write", &["stalled"], true);
}

#[test]
fn a_sink_hung_in_flush_is_stalled_alone_and_the_csv_sink_gets_every_row() {
    bad_sink_fails_alone("hang_flush", &["stalled"], true);
}

#[test]
fn a_sink_retrying_forever_fails_with_retries_exhausted_and_the_csv_sink_gets_every_row() {
    bad_sink_fails_alone("retry", &["retries exhausted"], false);
}

#[test]
fn a_sink_panicking_on_every_call_fails_alone_and_the_csv_sink_gets_every_row() {
    // The first call panics; the SDK poisons the instance, so later calls say so.
    bad_sink_fails_alone(
        "panic",
        &["panicked", "poisoned by an earlier panic"],
        false,
    );
}

/// SIGTERM while one thread is inside a plugin call that never returns: the daemon exits 0
/// after the drain deadline, not after the (much longer) call timeout, and the next start,
/// with the plugin fixed, resumes both events from their checkpoints and completes them.
#[test]
fn sigterm_with_a_thread_stuck_in_a_plugin_exits_0_and_the_restart_completes_from_checkpoints() {
    let rows = 500;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("misbehave-sigterm");
    let plugin = Artifacts::locate().fx_misbehave_plugin();
    let plugin = plugin.display().to_string();
    let ledger = dir.path().join("flaky-ledger.txt");
    let flaky_config = |mode: &str| {
        format!(
            "{{ mode = {}, after = 2, ledger = {} }}",
            toml_string(mode),
            toml_string(&ledger)
        )
    };
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink("flaky", &plugin, &flaky_config("hang_write"))
        .route(&["portalImportSubmitted"], &["archive", "flaky"])
        .page_size(100)
        .set("daemon", "checkpoint_batches", "1")
        // Far beyond the stop guard: only leaving the thread behind lets the stop finish.
        .set("daemon", "sink_call_timeout_secs", "3600")
        .set("daemon", "drain_timeout_secs", "2");
    let csv_dir = settings.csv_dir("archive");
    let mut daemon = settings.start();

    let reply = daemon.post(&legacy_webhook_body("b-stuck-1", "evt-stuck-1", rows));
    assert_eq!(reply.status, 200, "{}", reply.text());
    wait::until(
        "the plugin to hang in write_batch",
        EVENT_DEADLINE,
        || {
            daemon
                .log()
                .contains("fx-misbehave hangs in write_batch")
                .then_some(())
        },
        || daemon.log_tail(),
    );
    // A second event queues behind the stuck sink.
    let reply = daemon.post(&legacy_webhook_body("b-stuck-2", "evt-stuck-2", rows));
    assert_eq!(reply.status, 200, "{}", reply.text());
    wait::until(
        "the second event to be planned",
        EVENT_DEADLINE,
        || {
            daemon
                .event_detail("evt-stuck-2")
                .map(|event| event.streams.len())
                .filter(|n| *n > 0)
        },
        || daemon.log_tail(),
    );
    let flaky_before = daemon.checkpointed_rows_of("flaky");
    assert!(
        flaky_before > 0,
        "the two good calls were checkpointed before the hang"
    );

    let signalled = Instant::now();
    daemon.signal("TERM");
    let exit = daemon.wait_exit(STOP_GUARD).unwrap_or_else(|| {
        panic!(
            "flatsync did not exit within {STOP_GUARD:?} of SIGTERM with a thread stuck in a \
             plugin\n{}",
            daemon.log_tail()
        )
    });
    let took = signalled.elapsed();
    eprintln!("stop with a thread stuck in a plugin took {took:?} (drain_timeout_secs = 2)");
    assert!(
        exit.success(),
        "SIGTERM ended with {exit}\n{}",
        daemon.log_tail()
    );
    assert!(
        daemon.log().contains("leaving its thread behind"),
        "{}",
        daemon.log_tail()
    );
    assert_eq!(
        daemon.pending_events().len(),
        2,
        "both events wait for the next start: {:?}",
        daemon.inbox()
    );
    // What the checkpoints count for the plugin is what it made durable, nothing more.
    assert_eq!(
        ledger_rows(&ledger).total(),
        daemon.checkpointed_rows_of("flaky")
    );

    daemon.update_config(|s| s.replace_sink("flaky", &plugin, &flaky_config("ok")));
    daemon.restart();
    daemon.wait_done(&["evt-stuck-1", "evt-stuck-2"], EVENT_DEADLINE);

    let mut expected = legacy_row_ids(sim.config(), "b-stuck-1");
    expected.extend(legacy_row_ids(sim.config(), "b-stuck-2"));
    csv_rows(&csv_dir).assert_exactly(&expected, "the csv sink after the restart");
    ledger_rows(&ledger).assert_exactly(&expected, "the fixed plugin's ledger after the restart");
    assert_eq!(daemon.checkpointed_rows_of("archive"), 2 * rows);
    assert_eq!(daemon.checkpointed_rows_of("flaky"), 2 * rows);
    assert!(
        daemon.checkpointed_rows_of("flaky") > flaky_before,
        "the restart resumed the plugin's delivery"
    );
    let stop = daemon.stop();
    assert!(stop.success(), "{stop}");
}

/// `flatsync check` refuses a plugin file anyone may write, and one in a directory anyone may
/// write, naming the path, the octal mode and the fix; `flatsync plugins` reports the same;
/// FLATSYNC_ALLOW_INSECURE_PLUGINS=1 loads it with a warning.
#[test]
fn check_refuses_a_world_writable_plugin_unless_insecure_plugins_are_allowed() {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = TestDir::new("insecure-plugin");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).expect("plugins dir");
    std::fs::set_permissions(&plugins, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let copy = plugins.join("libflatsync_sink_csv_folder.so");
    std::fs::copy(Artifacts::locate().csv_folder_plugin(), &copy).expect("copy the plugin");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o666)).expect("chmod 666");
    let copy = std::fs::canonicalize(&copy).expect("canonical path");
    let plugins = std::fs::canonicalize(&plugins).expect("canonical path");
    let out_dir = dir.path().join("out");
    let settings = Daemon::new(dir.path())
        .sink(
            "archive",
            &copy.display().to_string(),
            &format!("{{ dir = {} }}", toml_string(&out_dir)),
        )
        .route(&["*"], &["archive"]);

    let refused = settings.check();
    assert_ne!(refused.code, Some(0), "{refused:?}");
    for needle in [
        format!("{}: the file has mode 0666", copy.display()),
        format!("chmod go-w {}", copy.display()),
        "archive".to_owned(),
    ] {
        assert!(
            refused.stderr.contains(&needle),
            "`{needle}` in: {}",
            refused.stderr
        );
    }
    let scan = cli_json(&settings, &["plugins", "--json"]);
    let listed = scan["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["path"] == copy.display().to_string()))
        .unwrap_or_else(|| panic!("the copy is listed: {scan:#}"));
    assert!(
        listed["error"]
            .as_str()
            .is_some_and(|e| e.contains("mode 0666")),
        "{listed:#}"
    );

    let allowed = settings
        .clone()
        .env("FLATSYNC_ALLOW_INSECURE_PLUGINS", "1")
        .check();
    assert_eq!(allowed.code, Some(0), "{allowed:?}");
    assert!(
        allowed.stdout.contains("sink `archive`: plugin csv-folder"),
        "{}",
        allowed.stdout
    );
    assert!(
        allowed.stderr.contains("WARN")
            && allowed.stderr.contains("FLATSYNC_ALLOW_INSECURE_PLUGINS"),
        "a warning says the override was used: {}",
        allowed.stderr
    );

    // The file fixed, the directory loose: refused, naming the directory.
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).expect("chmod 644");
    std::fs::set_permissions(&plugins, std::fs::Permissions::from_mode(0o777)).expect("chmod 777");
    let refused = settings.check();
    assert_ne!(refused.code, Some(0), "{refused:?}");
    let needle = format!("its directory {} has mode 0777", plugins.display());
    assert!(
        refused.stderr.contains(&needle),
        "`{needle}` in: {}",
        refused.stderr
    );

    std::fs::set_permissions(&plugins, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
    let fixed = settings.check();
    assert_eq!(fixed.code, Some(0), "{fixed:?}");
}
