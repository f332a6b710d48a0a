//! What the Debian package ships for running flatsync as a service: the unit
//! (`systemd/flatsync.service`), the default config (`systemd/config.toml`) and the README's
//! install steps must agree with one another, and the packaged config must run the way the unit
//! runs it, with its secrets in `$CREDENTIALS_DIRECTORY` under the names systemd gives the files
//! of a `LoadCredential=ID:/directory`.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use flatfile_sim::{SimConfig, record_ids, submit_event_body, workbook_sheets};
use flatsync_tests::check::{csv_rows, sqlite_rows};
use flatsync_tests::daemon::free_port;
use flatsync_tests::{Artifacts, Sim, TestDir, http, wait};

use crate::common::EVENT_DEADLINE;

/// Where the package puts the config, and so where the unit's ExecStart= reads it.
const PACKAGED_CONFIG: &str = "/etc/flatsync/config.toml";
/// Where the package puts the sink plugins.
const PACKAGED_PLUGIN_DIR: &str = "/usr/lib/flatsync/plugins";

fn repo_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every value of `key` in the unit file, in order (comments and section headers skipped).
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with(';'))
        .filter_map(|line| line.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .collect()
}

fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    match unit_values(unit, key).as_slice() {
        [value] => value,
        other => panic!("systemd/flatsync.service should set {key}= once, sets it {other:?}"),
    }
}

/// A systemd time span such as `45s`, `2min` or `30`, in seconds.
fn unit_seconds(span: &str) -> u64 {
    let (number, unit) = span.split_at(
        span.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(span.len()),
    );
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("`{span}` is not a time span this test reads"));
    match unit {
        "" | "s" | "sec" => number,
        "min" | "m" => number * 60,
        other => panic!("`{span}`: unit `{other}` is not one this test reads"),
    }
}

/// `(key, value)` of every `key = "value"` or `key = number` line of a TOML text, top level of
/// each table; inline tables are kept whole as the value.
pub(crate) fn toml_assignments(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with('['))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

/// The systemd credential names the packaged config asks for, by key.
fn config_credentials(config: &str) -> Vec<(String, String)> {
    toml_assignments(config)
        .into_iter()
        .filter(|(key, _)| key.ends_with("_credential"))
        .collect()
}

/// The absolute paths inside the sinks' inline `config = { ... }` tables: what they write.
fn sink_paths(config: &str) -> Vec<&str> {
    config
        .lines()
        .filter(|line| line.trim_start().starts_with("config = {"))
        .flat_map(|line| line.split('"').skip(1).step_by(2))
        .filter(|value| value.starts_with('/'))
        .collect()
}

/// `LoadCredential=ID:/directory` split into the ID and the directory.
fn credential_directory(unit: &str) -> (String, String) {
    let value = unit_value(unit, "LoadCredential");
    let (id, dir) = value
        .split_once(':')
        .unwrap_or_else(|| panic!("LoadCredential={value} names no path"));
    (id.to_owned(), dir.to_owned())
}

#[test]
fn the_unit_the_packaged_config_and_the_readme_agree() {
    let unit = repo_file("systemd/flatsync.service");
    let config = repo_file("systemd/config.toml");
    let readme = repo_file("README.md");
    let settings = toml_assignments(&config);
    let setting = |key: &str| {
        settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("systemd/config.toml sets no `{key}`"))
    };

    assert_eq!(
        unit_value(&unit, "ExecStart"),
        format!("/usr/bin/flatsync run --config {PACKAGED_CONFIG}"),
        "the unit runs the packaged config"
    );
    assert_eq!(
        format!(
            "/etc/{}/config.toml",
            unit_value(&unit, "ConfigurationDirectory")
        ),
        PACKAGED_CONFIG
    );

    // The service can write only in its StateDirectory: the state and every sink output of the
    // packaged config must be inside it.
    let state_dir = format!("/var/lib/{}", unit_value(&unit, "StateDirectory"));
    assert_eq!(setting("state_dir"), state_dir);
    let outputs = sink_paths(&config);
    assert!(
        outputs.len() >= 2,
        "the packaged sinks write files: {outputs:?}"
    );
    for output in outputs {
        assert!(
            output.starts_with(&format!("{state_dir}/")),
            "sink output {output} is outside the unit's writable {state_dir}"
        );
    }

    // Every plugin the config uses is shipped where plugin_dir points.
    assert_eq!(setting("plugin_dir"), PACKAGED_PLUGIN_DIR);
    for (_, plugin) in settings.iter().filter(|(k, _)| k == "plugin") {
        let shipped = format!(
            "`{PACKAGED_PLUGIN_DIR}/libflatsync_sink_{}.so`",
            plugin.replace('-', "_")
        );
        assert!(
            readme.contains(&shipped),
            "the README's package file table lists no {shipped} for plugin `{plugin}`"
        );
    }

    // Secrets: systemd names the files of a LoadCredential= directory `<ID>_<file>`; the config
    // must ask for exactly those names, and the README must tell the operator to create the files.
    let (id, dir) = credential_directory(&unit);
    assert!(
        dir.starts_with("/etc/flatsync/"),
        "the credentials live with the config: {dir}"
    );
    let credentials = config_credentials(&config);
    let keys: BTreeSet<&str> = credentials.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "legacy_api_key_credential",
            "secret_key_credential",
            "token_credential"
        ]),
        "the packaged config takes every secret from a credential"
    );
    for (key, name) in &credentials {
        let file = name.strip_prefix(&format!("{id}_")).unwrap_or_else(|| {
            panic!("`{key} = \"{name}\"` does not start with `{id}_`, the LoadCredential= ID")
        });
        let step = format!("cat > {dir}/{file}'");
        assert!(
            readme.contains(&step),
            "the README does not show how to create {dir}/{file} (`{step}`) for `{key}`"
        );
    }
    assert!(
        unit_values(&unit, "Environment").is_empty()
            && unit_values(&unit, "EnvironmentFile").is_empty(),
        "secrets travel as credentials, never in the environment"
    );

    // systemd must not SIGKILL the daemon while it drains.
    let drain: u64 = setting("drain_timeout_secs")
        .parse()
        .expect("drain_timeout_secs is a number");
    let stop = unit_seconds(unit_value(&unit, "TimeoutStopSec"));
    assert!(
        stop > drain,
        "TimeoutStopSec={stop}s must exceed the daemon's drain deadline ({drain} s)"
    );
    assert_eq!(unit_value(&unit, "Type"), "notify");
    assert_eq!(unit_value(&unit, "KillMode"), "mixed");
}

/// `flatsync run` on a config, killed when dropped.
pub(crate) struct Service {
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    /// Starts `command` (a `flatsync run`) with stdout and stderr in the file `log`.
    pub(crate) fn spawn(mut command: Command, log: PathBuf) -> Service {
        let log_file = File::create(&log).expect("cannot create the log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                log_file.try_clone().expect("the log file can be shared"),
            ))
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("flatsync run starts");
        Service {
            child: Some(child),
            log,
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `limit` for the exit, as systemd would before SIGKILL.
    pub(crate) fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the service runs");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM failed");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("the child can be waited for") {
                return status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "flatsync did not exit within {limit:?} of SIGTERM, when systemd would \
                     SIGKILL it\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- flatsync log ---\n{}", self.log());
        }
    }
}

/// Replaces `from` with `to` in `text`, failing when `from` is not there (so a changed
/// packaged config cannot make this test quietly run something else).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "systemd/config.toml no longer contains `{from}`; update this test"
    );
    text.replace(from, to)
}

#[test]
fn the_packaged_config_runs_with_its_secrets_as_systemd_credentials() {
    let artifacts = Artifacts::locate();
    artifacts.require_daemon_and_sinks();
    let sim = Sim::start(SimConfig {
        rows: 640,
        sheets_per_workbook: 2,
        ..SimConfig::default()
    });
    let dir = TestDir::new("packaging");
    let unit = repo_file("systemd/flatsync.service");
    let packaged = repo_file("systemd/config.toml");

    // The files an operator puts in /etc/flatsync/credentials, as systemd hands them over. The
    // legacy API key stays absent: a Platform-only operator does not create it.
    let (id, _) = credential_directory(&unit);
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).expect("cannot create the credentials directory");
    let token = "packaged-webhook-token";
    let mut absent = None;
    for (key, name) in config_credentials(&packaged) {
        let value = match key.as_str() {
            "secret_key_credential" => sim.config().secret_key.clone(),
            "token_credential" => token.to_owned(),
            _ => {
                absent = Some(name);
                continue;
            }
        };
        assert!(name.starts_with(&format!("{id}_")), "{name}");
        // systemd keeps a trailing newline of the file; the daemon must not send it.
        std::fs::write(credentials.join(&name), format!("{value}\n"))
            .expect("cannot write a credential");
    }
    let absent = absent.expect("the packaged config names a legacy API key credential");
    assert!(!credentials.join(&absent).exists());

    // The packaged config with only what a test must change: where state and outputs go, where
    // the plugins are, free ports, and the simulator as the Flatfile API.
    let state = dir.path().join("state");
    let state_text = state.to_str().expect("test paths are UTF-8");
    let plugins = artifacts.dir.to_str().expect("test paths are UTF-8");
    let (webhook_port, admin_port) = (free_port(), free_port());
    let mut config = replace_once(&packaged, "/var/lib/flatsync", state_text);
    config = replace_once(&config, PACKAGED_PLUGIN_DIR, plugins);
    config = replace_once(
        &config,
        "listen = \"127.0.0.1:8787\"",
        &format!("listen = \"127.0.0.1:{webhook_port}\""),
    );
    config = replace_once(
        &config,
        "listen = \"127.0.0.1:9187\"",
        &format!("listen = \"127.0.0.1:{admin_port}\""),
    );
    config = replace_once(
        &config,
        "[flatfile]\n",
        &format!("[flatfile]\napi_url = \"{}\"\n", sim.url()),
    );
    // Never let a test write outside its directory.
    let written = toml_assignments(&config)
        .into_iter()
        .filter(|(key, _)| key == "state_dir")
        .map(|(_, value)| value)
        .chain(sink_paths(&config).into_iter().map(str::to_owned));
    for path in written {
        assert!(
            path.starts_with(state_text),
            "the rewritten packaged config still writes to {path}; update this test"
        );
    }
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, &config).expect("cannot write the config");
    let config_arg = config_path.to_str().expect("test paths are UTF-8");

    let flatsync = |args: &[&str]| {
        let mut command = Command::new(artifacts.flatsync());
        command
            .args(args)
            .env("CREDENTIALS_DIRECTORY", &credentials)
            .env("FLATSYNC_LOG", "info")
            .env("NO_COLOR", "1");
        for var in [
            "FLATSYNC_PLUGIN_PATH",
            "FLATFILE_SECRET_KEY",
            "FLATFILE_LEGACY_API_KEY",
            "FLATSYNC_WEBHOOK_TOKEN",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "RUST_LOG",
        ] {
            command.env_remove(var);
        }
        command
    };

    let check = flatsync(&["check", "--config", config_arg])
        .output()
        .expect("flatsync check runs");
    assert!(
        check.status.success(),
        "flatsync check on the packaged config failed:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let mut service = Service::spawn(
        flatsync(&["run", "--config", config_arg]),
        dir.path().join("flatsync.log"),
    );
    wait::until(
        "the packaged config's webhook listener",
        Duration::from_secs(60),
        || TcpStream::connect(("127.0.0.1", webhook_port)).ok(),
        || service.log(),
    );

    let url = format!("http://127.0.0.1:{webhook_port}/flatfile/webhook");
    let (event, workbook) = ("us_evt_pkgSubmit1", "us_wb_pkgSubmit1");
    let job = sim.job_for(workbook);
    let body = serde_json::to_vec(&submit_event_body(event, workbook, &job)).expect("JSON");
    let refused = http::post_json(&url, None, &body).expect("the listener answers");
    assert_eq!(
        refused.status,
        401,
        "the token credential is enforced: {}",
        refused.text()
    );
    let accepted = http::post_json(&url, Some(token), &body).expect("the listener answers");
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert_eq!(accepted.json()["status"], "accepted", "{}", accepted.text());

    let finished = wait::until(
        "the Flatfile job to complete",
        EVENT_DEADLINE,
        || {
            sim.job(&job)
                .filter(|j| j.status == "complete" || j.status == "failed")
        },
        || service.log(),
    );
    assert_eq!(
        finished.status,
        "complete",
        "{finished:?}\n{}",
        service.log()
    );

    let expected: Vec<String> = workbook_sheets(sim.config(), workbook)
        .iter()
        .flat_map(|sheet| record_ids(sim.config(), &sheet.0))
        .collect();
    assert_eq!(expected.len(), 640);
    csv_rows(&state.join("csv")).assert_exactly(&expected, "the packaged csv-folder sink");
    sqlite_rows(&state.join("imports.db")).assert_exactly(&expected, "the packaged sqlite sink");

    let stop_limit = Duration::from_secs(unit_seconds(unit_value(&unit, "TimeoutStopSec")));
    let status = service.terminate(stop_limit);
    assert!(
        status.success(),
        "SIGTERM ends the service with {status}\n{}",
        service.log()
    );
}

/// `flatsync --help`'s (or a command group's) subcommands, from its `Commands:` list.
fn listed_subcommands(args: &[&str]) -> Vec<String> {
    let help = Command::new(Artifacts::locate().flatsync())
        .args(args)
        .arg("--help")
        .output()
        .expect("flatsync --help runs");
    assert!(help.status.success(), "flatsync {args:?} --help failed");
    String::from_utf8_lossy(&help.stdout)
        .lines()
        .skip_while(|line| line.trim() != "Commands:")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn completions_name_every_subcommand_and_bash_parses_its_script() {
    let commands = listed_subcommands(&[]);
    for expected in [
        "run",
        "check",
        "init",
        "status",
        "events",
        "dead-letter",
        "completions",
        "man",
    ] {
        assert!(
            commands.iter().any(|c| c == expected),
            "`flatsync --help` lists no `{expected}`: {commands:?}"
        );
    }
    let dir = TestDir::new("completions");
    for shell in ["bash", "zsh", "fish"] {
        let generated = Command::new(Artifacts::locate().flatsync())
            .args(["completions", shell])
            .output()
            .expect("flatsync completions runs");
        assert!(
            generated.status.success(),
            "flatsync completions {shell}: {}",
            String::from_utf8_lossy(&generated.stderr)
        );
        let script = String::from_utf8(generated.stdout).expect("a script is text");
        for command in &commands {
            assert!(
                script.contains(command.as_str()),
                "the {shell} completions never name `{command}`"
            );
        }
        let path = dir.path().join(format!("flatsync.{shell}"));
        std::fs::write(&path, &script).expect("cannot write the script");
        if shell == "bash" {
            let parsed = Command::new("bash")
                .arg("-n")
                .arg(&path)
                .output()
                .expect("bash runs");
            assert!(
                parsed.status.success(),
                "bash -n refuses the completion script: {}",
                String::from_utf8_lossy(&parsed.stderr)
            );
        }
    }
}

#[test]
fn man_writes_a_page_for_flatsync_and_every_subcommand() {
    let dir = TestDir::new("man");
    let out = dir.path().join("man1");
    let generated = Command::new(Artifacts::locate().flatsync())
        .args(["man", "--out"])
        .arg(&out)
        .output()
        .expect("flatsync man runs");
    assert!(
        generated.status.success(),
        "flatsync man: {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let mut expected = vec!["flatsync".to_owned()];
    for command in listed_subcommands(&[]) {
        expected.push(format!("flatsync-{command}"));
        for nested in listed_subcommands(&[command.as_str()]) {
            expected.push(format!("flatsync-{command}-{nested}"));
        }
    }
    for nested in [
        "flatsync-events-list",
        "flatsync-dead-letter-retry",
        "flatsync-plugin-new",
    ] {
        assert!(
            expected.iter().any(|e| e == nested),
            "{nested} is a command: {expected:?}"
        );
    }
    let mut written: Vec<String> = std::fs::read_dir(&out)
        .expect("the man folder exists")
        .map(|entry| {
            entry
                .expect("a folder entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    written.sort();
    let mut pages: Vec<String> = expected.iter().map(|name| format!("{name}.1")).collect();
    pages.sort();
    assert_eq!(written, pages, "one page per command, nested ones included");
    for name in &expected {
        let page = std::fs::read_to_string(out.join(format!("{name}.1"))).expect("a page");
        let title = page
            .lines()
            .find(|l| l.starts_with(".TH "))
            .unwrap_or_default();
        assert!(
            title.starts_with(&format!(".TH {name} 1")),
            "{name}.1 is titled `{title}`"
        );
        assert!(
            page.contains(".SH NAME") && page.contains(".SH SYNOPSIS"),
            "{name}.1 lacks its NAME or SYNOPSIS section"
        );
    }
}
