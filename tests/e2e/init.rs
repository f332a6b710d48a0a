//! `flatsync init`: the config it writes from flags passes `flatsync check` and, run with the
//! secrets in the environment variables it names, delivers what Flatfile sends; it refuses to
//! replace a file, and without a terminal names the flag a missing choice needs.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use flatfile_sim::{
    DEFAULT_ENVIRONMENT_ID, SimConfig, SubmitRequest, legacy_row_ids, legacy_webhook_body,
};
use flatsync_tests::check::{csv_leftovers, csv_rows, sqlite_rows};
use flatsync_tests::daemon::free_port;
use flatsync_tests::{Artifacts, Sim, TestDir, http, wait};

use crate::common::{EVENT_DEADLINE, admin_ok};
use crate::packaging::{Service, toml_assignments};

/// Variables a developer's shell may hold that would change what these runs see.
const CLEARED: [&str; 12] = [
    "FLATSYNC_PLUGIN_PATH",
    "FLATSYNC_CONFIG",
    "FLATFILE_SECRET_KEY",
    "FLATFILE_LEGACY_API_KEY",
    "FLATSYNC_WEBHOOK_TOKEN",
    "FLATSYNC_WEBHOOK_PATH_SECRET",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
    "RUST_LOG",
    "CREDENTIALS_DIRECTORY",
];

/// `flatsync ARGS` with stdin not a terminal, in a clean environment.
fn flatsync(args: &[&str]) -> Command {
    let mut command = Command::new(Artifacts::locate().flatsync());
    command.args(args).env("NO_COLOR", "1").stdin(Stdio::null());
    for var in CLEARED {
        command.env_remove(var);
    }
    command
}

fn output(mut command: Command) -> Output {
    command.output().expect("flatsync runs")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// The value of `key` in a config file, which must set it exactly once.
fn config_value(config: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(config).expect("the config was written");
    let values: Vec<String> = toml_assignments(&text)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect();
    match values.as_slice() {
        [value] => value.clone(),
        other => panic!("the written config sets `{key}` {other:?}, not once:\n{text}"),
    }
}

#[test]
fn init_with_flags_writes_a_config_that_checks_and_delivers_a_legacy_import() {
    Artifacts::locate().require_daemon_and_sinks();
    let rows = 750;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("init-webhook");
    let config = dir.path().join("flatsync.toml");
    let csv = dir.path().join("csv");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let init = output(flatsync(&[
        "init",
        "--source",
        "webhook",
        "--sink",
        "csv",
        "--out",
        path_arg(&csv),
        "--state-dir",
        path_arg(&dir.path().join("state")),
        "--listen",
        &listen,
        "--api-url",
        sim.url(),
        "--legacy-api-url",
        sim.url(),
        "--config",
        path_arg(&config),
    ]));
    assert!(init.status.success(), "init failed: {}", text(&init));
    let stdout = String::from_utf8_lossy(&init.stdout);
    assert!(
        stdout.contains("config is valid") && stdout.contains("sink `archive`"),
        "init runs the check, which loads the csv-folder plugin: {}",
        text(&init)
    );

    // The secrets go where the config says: into the variables it names, never into the file.
    let secret_key_env = config_value(&config, "secret_key_env");
    let legacy_key_env = config_value(&config, "legacy_api_key_env");
    let path_secret_env = config_value(&config, "path_secret_env");
    for name in [&secret_key_env, &legacy_key_env, &path_secret_env] {
        assert!(
            stdout.contains(name.as_str()),
            "the next steps say to set {name}: {}",
            text(&init)
        );
    }
    let written = std::fs::read_to_string(&config).expect("the config was written");
    for secret in [&sim.config().secret_key, &sim.config().legacy_api_key] {
        assert!(
            !written.contains(secret.as_str()),
            "a secret in the file:\n{written}"
        );
    }

    let path_secret = "init-e2e-path-secret-0123456789";
    let with_secrets = |args: &[&str]| {
        let mut command = flatsync(args);
        command
            .env(&secret_key_env, &sim.config().secret_key)
            .env(&legacy_key_env, &sim.config().legacy_api_key)
            .env(&path_secret_env, path_secret)
            .env("FLATSYNC_LOG", "info");
        command
    };
    let check = output(with_secrets(&["check", "--config", path_arg(&config)]));
    assert!(check.status.success(), "check failed: {}", text(&check));

    let mut service = Service::spawn(
        with_secrets(&["run", "--config", path_arg(&config)]),
        dir.path().join("flatsync.log"),
    );
    wait::until(
        "the webhook listener init configured",
        Duration::from_secs(60),
        || TcpStream::connect(("127.0.0.1", port)).ok(),
        || service.log(),
    );
    let (batch, event) = ("b-init-1", "evt-init-1");
    let body = serde_json::to_vec(&legacy_webhook_body(batch, event, rows)).expect("JSON");
    let base = format!("http://{listen}/flatfile/webhook");
    let refused = http::post_json(&base, None, &body).expect("the listener answers");
    assert_eq!(
        refused.status,
        404,
        "without the secret path segment the listener knows no such path: {}",
        refused.text()
    );
    let accepted = http::post_json(&format!("{base}/{path_secret}"), None, &body)
        .expect("the listener answers");
    assert_eq!(accepted.status, 200, "{}", accepted.text());

    let expected = legacy_row_ids(sim.config(), batch);
    assert_eq!(expected.len() as u64, rows);
    wait::until(
        "the import's rows in the CSV folder",
        EVENT_DEADLINE,
        // A stream still in progress is not a failure yet (csv_rows asserts there is none).
        || {
            (csv.is_dir() && csv_leftovers(&csv).is_empty() && csv_rows(&csv).total() == rows)
                .then_some(())
        },
        || service.log(),
    );
    csv_rows(&csv).assert_exactly(&expected, "the csv-folder sink init configured");
    let status = service.terminate(Duration::from_secs(60));
    assert!(
        status.success(),
        "SIGTERM ends flatsync with {status}\n{}",
        service.log()
    );
}

#[test]
fn the_polling_variant_passes_check_and_delivers_a_submit_it_polls() {
    Artifacts::locate().require_daemon_and_sinks();
    let sim = Sim::start(SimConfig {
        rows: 240,
        ..SimConfig::default()
    });
    let dir = TestDir::new("init-poll");
    let config = dir.path().join("flatsync.toml");
    let db = dir.path().join("imports.db");
    let init = output(flatsync(&[
        "init",
        "--source",
        "poll",
        "--environment",
        DEFAULT_ENVIRONMENT_ID,
        "--sink",
        "sqlite",
        "--out",
        path_arg(&db),
        "--state-dir",
        path_arg(&dir.path().join("state")),
        "--api-url",
        sim.url(),
        "--config",
        path_arg(&config),
    ]));
    assert!(init.status.success(), "init failed: {}", text(&init));
    let stdout = String::from_utf8_lossy(&init.stdout);
    assert!(
        stdout.contains("polling: environment(s) main") && !stdout.contains("warning"),
        "a polling config receives events without a webhook listener: {}",
        text(&init)
    );
    assert_eq!(config_value(&config, "id"), DEFAULT_ENVIRONMENT_ID);

    let secret_key_env = config_value(&config, "secret_key_env");
    let with_key = |args: &[&str]| {
        let mut command = flatsync(args);
        command
            .env(&secret_key_env, &sim.config().secret_key)
            .env("FLATSYNC_LOG", "info");
        command
    };
    let mut service = Service::spawn(
        with_key(&["run", "--config", path_arg(&config)]),
        dir.path().join("flatsync.log"),
    );
    // `poll_start = "now"`: the first poll sets the cursor, and a submit after it is found.
    wait::until(
        "the first poll's cursor in `flatsync status`",
        Duration::from_secs(60),
        || {
            let status = output(with_key(&[
                "status",
                "--json",
                "--config",
                path_arg(&config),
            ]));
            let report: serde_json::Value = serde_json::from_slice(&status.stdout).ok()?;
            let polling = report["polling"].as_array()?;
            polling
                .iter()
                .any(|p| p["environment_id"] == DEFAULT_ENVIRONMENT_ID)
                .then_some(())
        },
        || service.log(),
    );
    let submitted = admin_ok(sim.admin().submit(&SubmitRequest::default()), "submit");
    let job = wait::until(
        "the polled submit's job to finish",
        EVENT_DEADLINE,
        || {
            sim.job(&submitted.job_id)
                .filter(|j| j.status == "complete" || j.status == "failed")
        },
        || service.log(),
    );
    assert_eq!(job.status, "complete", "{job:?}\n{}", service.log());
    let expected: Vec<String> = submitted
        .sheets
        .iter()
        .flat_map(|sheet| sim.sheet_records(&sheet.id))
        .map(|row| row.id)
        .collect();
    assert_eq!(expected.len(), 240, "the workbook's records in all");
    sqlite_rows(&db).assert_exactly(&expected, "the sqlite sink init configured");
    let status = service.terminate(Duration::from_secs(60));
    assert!(
        status.success(),
        "SIGTERM ends flatsync with {status}\n{}",
        service.log()
    );
}

/// Flags that answer every choice, writing into `dir`, with no Flatfile URL leaving 127.0.0.1.
fn full_flags(dir: &Path, config: &Path) -> Vec<String> {
    let closed = "http://127.0.0.1:9";
    [
        "init",
        "--source",
        "webhook",
        "--sink",
        "jsonl",
        "--out",
        path_arg(&dir.join("jsonl")),
        "--state-dir",
        path_arg(&dir.join("state")),
        "--api-url",
        closed,
        "--legacy-api-url",
        closed,
        "--config",
        path_arg(config),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn init_with(flags: &[String], extra: &[&str]) -> Output {
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    output(flatsync(&args))
}

#[test]
fn init_refuses_to_replace_a_file_unless_forced() {
    Artifacts::locate().require_daemon_and_sinks();
    let dir = TestDir::new("init-overwrite");
    let config = dir.path().join("flatsync.toml");
    let mine = "# my own config, hand written\n";
    std::fs::write(&config, mine).expect("cannot write the config");
    let flags = full_flags(dir.path(), &config);

    let refused = init_with(&flags, &[]);
    assert!(
        !refused.status.success(),
        "init replaced a file: {}",
        text(&refused)
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("exists") && stderr.contains("--force"),
        "the refusal says why and how: {}",
        text(&refused)
    );
    assert_eq!(
        std::fs::read_to_string(&config).expect("the config is there"),
        mine,
        "the refused init left the file as it was"
    );

    let forced = init_with(&flags, &["--force"]);
    assert!(
        forced.status.success(),
        "init --force failed: {}",
        text(&forced)
    );
    let written = std::fs::read_to_string(&config).expect("the config is there");
    assert!(
        written.starts_with("# flatsync config written by `flatsync init`"),
        "--force replaced the file:\n{written}"
    );
}

#[test]
fn without_a_terminal_a_missing_choice_names_its_flag() {
    let dir = TestDir::new("init-missing");
    let config = dir.path().join("flatsync.toml");
    let cases: [(&[&str], &str); 3] = [
        (&["--sink", "csv"], "--source"),
        (&["--source", "webhook"], "--sink"),
        (&["--source", "poll", "--sink", "csv"], "--environment"),
    ];
    for (flags, flag) in cases {
        let mut args = vec!["init", "--config", path_arg(&config)];
        args.extend_from_slice(flags);
        let missing = output(flatsync(&args));
        assert_eq!(
            missing.status.code(),
            Some(2),
            "a missing choice is a usage error: {}",
            text(&missing)
        );
        let stderr = String::from_utf8_lossy(&missing.stderr);
        assert!(
            stderr.contains(&format!("{flag} is required")) && stderr.contains("not a terminal"),
            "flags {flags:?} should name {flag}: {}",
            text(&missing)
        );
        assert!(!config.exists(), "nothing is written for {flags:?}");
    }
}

/// The folder `flatsync init` defaults its paths to: the config's own.
#[test]
fn default_paths_sit_next_to_the_config_file() {
    Artifacts::locate().require_daemon_and_sinks();
    let dir = TestDir::new("init-defaults");
    let config = dir.path().join("sub").join("flatsync.toml");
    std::fs::create_dir(dir.path().join("sub")).expect("cannot create the folder");
    let closed = "http://127.0.0.1:9";
    let init = output(flatsync(&[
        "init",
        "--source",
        "webhook",
        "--sink",
        "sqlite",
        "--webhook-auth",
        "none",
        "--api-url",
        closed,
        "--legacy-api-url",
        closed,
        "--config",
        path_arg(&config),
    ]));
    assert!(init.status.success(), "init failed: {}", text(&init));
    let folder: PathBuf = std::path::absolute(dir.path().join("sub")).expect("the folder");
    assert_eq!(
        PathBuf::from(config_value(&config, "state_dir")),
        folder.join("state")
    );
    assert!(
        std::fs::read_to_string(&config)
            .expect("the config")
            .contains(&format!(
                "path = \"{}\"",
                folder.join("imports.db").display()
            )),
        "the sqlite database defaults to imports.db next to the config"
    );
}
