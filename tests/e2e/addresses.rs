//! Where a daemon listening on port 0 is bound, as scripts learn it: the JSON ready line on
//! stdout, `[daemon] ready_file`, and the daemons `flatsync status` lists, through a clean stop
//! and a SIGKILL.

use std::net::SocketAddr;
use std::path::Path;

use flatfile_sim::{legacy_row_ids, legacy_webhook_body};
use flatsync_tests::check::csv_rows;
use flatsync_tests::daemon::toml_string;
use flatsync_tests::{Daemon, DaemonProcess, Sim, TestDir, http};
use serde_json::Value;

use crate::common::EVENT_DEADLINE;

/// `flatsync status --json` on the daemon's state directory.
fn status(daemon: &DaemonProcess) -> Value {
    let state_dir = daemon.settings().state_dir();
    let state_dir = state_dir.to_str().expect("test paths are UTF-8");
    let output = daemon
        .settings()
        .cli(&["status", "--json", "--state-dir", state_dir]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "flatsync status failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("flatsync status printed no JSON document ({e}):\n{stdout}"))
}

/// The entry of `daemon_id` in a status report's `daemons`.
fn daemon_entry<'a>(status: &'a Value, daemon_id: &str) -> &'a Value {
    status["daemons"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no daemons array: {status:#}"))
        .iter()
        .find(|d| d["daemon_id"] == daemon_id)
        .unwrap_or_else(|| panic!("daemon {daemon_id} is not in status: {status:#}"))
}

/// The one line of JSON the daemon printed on stdout since its latest start.
fn ready_line(daemon: &DaemonProcess) -> (String, Value) {
    let stdout = daemon.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout should hold exactly the ready line, and it holds:\n{stdout}"
    );
    let value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("the ready line is not JSON ({e}): {}", lines[0]));
    (lines[0].to_owned(), value)
}

fn address(ready: &Value, key: &str) -> SocketAddr {
    ready[key]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("ready line `{key}` is not an address: {ready}"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the ready file {}: {e}", path.display()))
}

#[test]
fn a_daemon_on_port_zero_announces_its_addresses_and_status_follows_its_life() {
    let rows = 150;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("addresses");
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(&run_dir).expect("cannot create the ready file's folder");
    let ready_file = run_dir.join("ready.json");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .route(&["*"], &["archive"])
        .set("admin", "listen", &toml_string("127.0.0.1:0"))
        .set("daemon", "ready_file", &toml_string(&ready_file));
    let csv_dir = settings.csv_dir("archive");
    let mut daemon = settings.start_on_any_port();

    // The ready line: the first and only thing on stdout.
    let (line, ready) = ready_line(&daemon);
    assert_eq!(ready["flatsync"], "ready", "{line}");
    assert_eq!(ready["version"], env!("CARGO_PKG_VERSION"), "{line}");
    assert_eq!(ready["pid"].as_u64(), daemon.pid().map(u64::from), "{line}");
    assert_eq!(
        ready["state_dir"].as_str().map(Path::new),
        Some(daemon.settings().state_dir().as_path()),
        "{line}"
    );
    let (webhook, admin) = (address(&ready, "webhook"), address(&ready, "admin"));
    assert!(
        webhook.ip().is_loopback() && webhook.port() != 0,
        "the webhook address is the bound one, not port 0: {line}"
    );
    assert!(
        admin.ip().is_loopback() && admin.port() != 0 && admin != webhook,
        "the admin address is its own bound one: {line}"
    );
    let daemon_id = ready["daemon_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no daemon_id: {line}"))
        .to_owned();

    // Both addresses are the daemon's: a webhook posted there is delivered, and the admin
    // listener answers its health check.
    assert_eq!(daemon.port(), webhook.port());
    let reply = daemon.post(&legacy_webhook_body("b-addr", "evt-addr", rows));
    assert_eq!(reply.status, 200, "{}", reply.text());
    daemon.wait_done(&["evt-addr"], EVENT_DEADLINE);
    csv_rows(&csv_dir).assert_exactly(&legacy_row_ids(sim.config(), "b-addr"), "csv sink");
    let health = http::get(&format!("http://{admin}/healthz"), &[])
        .unwrap_or_else(|e| panic!("GET /healthz on {admin}: {e}\n{}", daemon.log_tail()));
    assert_eq!(health.status, 200, "/healthz on {admin}: {}", health.text());

    // The ready file holds the same line, and the log says where it listens.
    assert_eq!(read(&ready_file), format!("{line}\n"));
    let log = daemon.log();
    assert!(
        log.lines().any(|l| l.contains("Flatsync running")
            && l.contains(&format!("webhook={webhook}"))
            && l.contains(&format!("admin={admin}"))),
        "the `Flatsync running` log line names both addresses:\n{}",
        daemon.log_tail()
    );

    // Status, which reads only the state database, shows it running where it listens.
    let report = status(&daemon);
    let entry = daemon_entry(&report, &daemon_id);
    assert_eq!(entry["state"], "running", "{entry:#}");
    assert_eq!(entry["pid"], ready["pid"], "{entry:#}");
    assert_eq!(entry["webhook_addr"], webhook.to_string(), "{entry:#}");
    assert_eq!(entry["admin_addr"], admin.to_string(), "{entry:#}");
    assert!(entry["stopped_at_ms"].is_null(), "{entry:#}");
    let text = String::from_utf8_lossy(
        &daemon
            .settings()
            .cli(&[
                "status",
                "--state-dir",
                daemon.settings().state_dir().to_str().expect("UTF-8"),
            ])
            .stdout,
    )
    .into_owned();
    assert!(
        text.lines().any(|l| l.starts_with(&daemon_id)
            && l.contains("running")
            && l.contains(&webhook.to_string())
            && l.contains(&admin.to_string())),
        "the text status lists the daemon with its addresses:\n{text}"
    );

    // A clean stop removes the ready file and leaves the daemon `stopped`.
    let exit = daemon.stop();
    assert!(
        exit.success(),
        "flatsync exited {exit}\n{}",
        daemon.log_tail()
    );
    assert!(
        !ready_file.exists(),
        "the ready file is removed on a clean stop: {}",
        read(&ready_file)
    );
    let report = status(&daemon);
    let entry = daemon_entry(&report, &daemon_id);
    assert_eq!(entry["state"], "stopped", "{entry:#}");
    assert!(entry["stopped_at_ms"].is_i64(), "{entry:#}");

    // Another run, killed: it never said it stopped, and its process is gone from this host,
    // so status calls it `gone` at once; the stopped run stays `stopped`.
    daemon.restart();
    let (second_line, second) = ready_line(&daemon);
    let second_id = second["daemon_id"].as_str().expect("daemon_id").to_owned();
    assert_ne!(second_id, daemon_id, "each start has its own id");
    assert_eq!(read(&ready_file), format!("{second_line}\n"));
    let report = status(&daemon);
    assert_eq!(
        daemon_entry(&report, &second_id)["state"],
        "running",
        "{report:#}"
    );
    daemon.kill9();
    let report = status(&daemon);
    let killed = daemon_entry(&report, &second_id);
    assert_eq!(killed["state"], "gone", "{killed:#}");
    assert_eq!(killed["pid"], second["pid"], "{killed:#}");
    assert!(killed["stopped_at_ms"].is_null(), "{killed:#}");
    assert_eq!(daemon_entry(&report, &daemon_id)["state"], "stopped");
    assert_eq!(
        read(&ready_file),
        format!("{second_line}\n"),
        "a killed daemon cannot remove its ready file: the pid in it tells it is stale"
    );
}
