//! The `flatsync` binary: a config written for one test, and the daemon process run on it.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flatsync_core::ops::{EventDetail, PollStatus};
use flatsync_core::state::report::Snapshot;
use flatsync_core::state::{EventStatus, OperatorDb, StateError};
use rusqlite::{Connection, OpenFlags};

use crate::artifacts::Artifacts;
use crate::http::{self, HttpReply};
use crate::sim::{Sim, read_file, tail};
use crate::wait;

/// Environment variable the test configs name for the legacy API key.
pub const LEGACY_KEY_ENV: &str = "FLATFILE_LEGACY_API_KEY";
/// Environment variable the test configs name for the Platform secret key.
pub const SECRET_KEY_ENV: &str = "FLATFILE_SECRET_KEY";
/// Environment variable the test configs name for the webhook bearer token.
pub const TOKEN_ENV: &str = "FLATSYNC_WEBHOOK_TOKEN";
/// Webhook path of the test configs.
pub const WEBHOOK_PATH: &str = "/flatfile/webhook";

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A flatsync configuration for one test, built fluently, then started with [`Daemon::start`]
/// or checked with [`Daemon::check`]. Every path lives in the test's directory.
#[derive(Clone, Debug)]
pub struct Daemon {
    dir: PathBuf,
    legacy_api_url: String,
    api_url: String,
    legacy_api_key: String,
    secret_key: String,
    token: Option<String>,
    sinks: Vec<(String, String, String)>,
    routes: Vec<(Vec<String>, Vec<String>)>,
    settings: Vec<(String, String, String)>,
    env: Vec<(String, String)>,
    raw: Vec<String>,
    nofile: Option<u64>,
    state_url: Option<String>,
}

impl Daemon {
    /// A config with state in `<dir>/state`, a webhook listener, no sinks and no routes. Until
    /// [`Daemon::sim`] is called the Flatfile URLs point at a closed local port, so nothing can
    /// ever leave the machine.
    pub fn new(dir: &Path) -> Daemon {
        Daemon {
            dir: dir.to_path_buf(),
            legacy_api_url: "http://127.0.0.1:9".to_owned(),
            api_url: "http://127.0.0.1:9".to_owned(),
            legacy_api_key: flatfile_sim::DEFAULT_LEGACY_API_KEY.to_owned(),
            secret_key: flatfile_sim::DEFAULT_SECRET_KEY.to_owned(),
            token: None,
            sinks: Vec::new(),
            routes: Vec::new(),
            settings: Vec::new(),
            env: Vec::new(),
            raw: Vec::new(),
            nofile: None,
            state_url: None,
        }
    }

    /// Keeps the state in the PostgreSQL database at `url` instead of `<dir>/state` (a URL
    /// without a password: the test server trusts 127.0.0.1).
    pub fn state_postgres(mut self, url: &str) -> Daemon {
        self.state_url = Some(url.to_owned());
        self
    }

    /// Sets an environment variable for the daemon (and for [`Daemon::cli`] commands).
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Daemon {
        let value = value.as_ref().to_str().expect("test values are UTF-8");
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Reads both the legacy and the Platform API from `sim`, with its keys.
    pub fn sim(self, sim: &Sim) -> Daemon {
        self.legacy_sim(sim).platform_sim(sim)
    }

    /// Reads the legacy API from `sim`.
    pub fn legacy_sim(mut self, sim: &Sim) -> Daemon {
        self.legacy_api_url = sim.url().to_owned();
        self.legacy_api_key = sim.config().legacy_api_key.clone();
        self
    }

    /// Reads the legacy API from `url` (e.g. a [`crate::RequestGate`] in front of a simulator)
    /// with the key already set.
    pub fn legacy_api_url(mut self, url: &str) -> Daemon {
        url.clone_into(&mut self.legacy_api_url);
        self
    }

    /// Reads the Platform API from `sim`.
    pub fn platform_sim(mut self, sim: &Sim) -> Daemon {
        self.api_url = sim.url().to_owned();
        self.secret_key = sim.config().secret_key.clone();
        self
    }

    /// A csv-folder sink writing into `<dir>/<name>`.
    pub fn sink_csv(self, name: &str) -> Daemon {
        let config = format!("{{ dir = {} }}", toml_string(self.csv_dir(name)));
        self.sink(name, "csv-folder", &config)
    }

    /// An sqlite sink writing `<dir>/<name>.db`.
    pub fn sink_sqlite(self, name: &str) -> Daemon {
        let config = format!("{{ path = {} }}", toml_string(self.sqlite_path(name)));
        self.sink(name, "sqlite", &config)
    }

    /// Any sink: `plugin` is a name or a path, `config` an inline TOML table such as
    /// `{ panic_in = "create" }`.
    pub fn sink(mut self, name: &str, plugin: &str, config: &str) -> Daemon {
        self.sinks
            .push((name.to_owned(), plugin.to_owned(), config.to_owned()));
        self
    }

    /// Replaces the plugin and config of sink `name`, keeping its place.
    pub fn replace_sink(mut self, name: &str, plugin: &str, config: &str) -> Daemon {
        let sink = self
            .sinks
            .iter_mut()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no sink named {name} to replace"));
        *sink = (name.to_owned(), plugin.to_owned(), config.to_owned());
        self
    }

    /// A route from topics (patterns allowed) to sinks.
    pub fn route(mut self, topics: &[&str], sinks: &[&str]) -> Daemon {
        self.routes.push((
            topics.iter().map(|t| (*t).to_owned()).collect(),
            sinks.iter().map(|s| (*s).to_owned()).collect(),
        ));
        self
    }

    /// Requires this bearer token from webhook senders (`token_env`, value in the environment).
    pub fn token(mut self, token: &str) -> Daemon {
        self.token = Some(token.to_owned());
        self
    }

    /// Runs the binary (daemon and CLI) with at most `files` open file descriptors, soft and
    /// hard limit, through util-linux `prlimit`, which sets the limit and then execs the
    /// binary, so the process id stays the daemon's.
    pub fn nofile_limit(mut self, files: u64) -> Daemon {
        self.nofile = Some(files);
        self
    }

    /// Sets `[fetch] legacy_page_size` and `records_page_size`.
    pub fn page_size(self, rows: u64) -> Daemon {
        self.set("fetch", "legacy_page_size", &rows.to_string())
            .set("fetch", "records_page_size", &rows.to_string())
    }

    /// Appends TOML text at the end of the config: `[environments.NAME]` tables, `[[routes]]`
    /// with filters, anything the builder has no method for.
    pub fn raw(mut self, toml: &str) -> Daemon {
        self.raw.push(toml.to_owned());
        self
    }

    /// An http-forward sink named `name` posting to `url`, signing with the `whsec_` secret
    /// read from the environment variable `secret_env` (set it with [`Daemon::env`]).
    /// `extra` is more of the config table, e.g. `batch_size = 100`.
    pub fn sink_http(self, name: &str, url: &str, secret_env: &str, extra: &str) -> Daemon {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        let config = format!(
            "{{ url = {}, secret_env = {}, retry_initial_ms = 100, retry_max_ms = 2000{extra} }}",
            toml_string(url),
            toml_string(secret_env)
        );
        self.sink(name, "http-forward", &config)
    }

    /// A jsonl-folder sink writing into `<dir>/<name>`.
    pub fn sink_jsonl(self, name: &str) -> Daemon {
        let config = format!("{{ dir = {} }}", toml_string(self.csv_dir(name)));
        self.sink(name, "jsonl-folder", &config)
    }

    /// Sets `key = value` in `[section]`; `value` is TOML (quote strings yourself).
    pub fn set(mut self, section: &str, key: &str, value: &str) -> Daemon {
        self.settings
            .push((section.to_owned(), key.to_owned(), value.to_owned()));
        self
    }

    /// The csv-folder output directory of sink `name`.
    pub fn csv_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The database of sqlite sink `name`.
    pub fn sqlite_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.db"))
    }

    /// The state database.
    pub fn state_db(&self) -> PathBuf {
        self.state_dir().join("state.db")
    }

    /// The daemon's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Where the config file is written.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("flatsync.toml")
    }

    /// The config text, listening on `port`.
    pub fn config_text(&self, port: u16) -> String {
        let mut text = String::new();
        let section = |text: &mut String, name: &str, fixed: &[(&str, String)]| {
            let _ = writeln!(text, "[{name}]");
            for (key, value) in fixed {
                let _ = writeln!(text, "{key} = {value}");
            }
            for (_, key, value) in self.settings.iter().filter(|(s, _, _)| s == name) {
                let _ = writeln!(text, "{key} = {value}");
            }
            text.push('\n');
        };
        let state = match &self.state_url {
            Some(url) => ("state_url", toml_string(url)),
            None => ("state_dir", toml_string(self.dir.join("state"))),
        };
        section(&mut text, "daemon", &[state]);
        section(
            &mut text,
            "flatfile",
            &[
                ("legacy_api_url", toml_string(&self.legacy_api_url)),
                ("legacy_api_key_env", toml_string(LEGACY_KEY_ENV)),
                ("api_url", toml_string(&self.api_url)),
                ("secret_key_env", toml_string(SECRET_KEY_ENV)),
            ],
        );
        let mut webhook = vec![
            ("listen", toml_string(format!("127.0.0.1:{port}"))),
            ("path", toml_string(WEBHOOK_PATH)),
        ];
        if self.token.is_some() {
            webhook.push(("token_env", toml_string(TOKEN_ENV)));
        }
        section(&mut text, "webhook", &webhook);
        section(&mut text, "fetch", &[]);
        // Optional sections appear only when a test sets something in them.
        for optional in ["admin"] {
            if self.settings.iter().any(|(s, _, _)| s == optional) {
                section(&mut text, optional, &[]);
            }
        }
        for (name, plugin, config) in &self.sinks {
            let _ = writeln!(
                text,
                "[sinks.{name}]\nplugin = {}\nconfig = {config}\n",
                toml_string(plugin)
            );
        }
        for (topics, sinks) in &self.routes {
            let list =
                |items: &[String]| items.iter().map(toml_string).collect::<Vec<_>>().join(", ");
            let _ = writeln!(
                text,
                "[[routes]]\ntopics = [{}]\nsinks = [{}]\n",
                list(topics),
                list(sinks)
            );
        }
        for raw in &self.raw {
            text.push_str(raw);
            text.push('\n');
        }
        text
    }

    fn write_config(&self, port: u16) -> PathBuf {
        std::fs::create_dir_all(&self.dir).expect("cannot create the test directory");
        let path = self.config_path();
        std::fs::write(&path, self.config_text(port)).expect("cannot write the config file");
        path
    }

    fn command(&self, args: &[&str]) -> Command {
        let binary = Artifacts::locate().flatsync();
        let mut command = match self.nofile {
            None => Command::new(binary),
            Some(files) => {
                let mut prlimit = Command::new("prlimit");
                prlimit
                    .arg(format!("--nofile={files}:{files}"))
                    .arg("--")
                    .arg(binary);
                prlimit
            }
        };
        command
            .args(args)
            .env("FLATSYNC_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("FLATSYNC_PLUGIN_PATH")
            .env_remove("RUST_LOG")
            .env(LEGACY_KEY_ENV, &self.legacy_api_key)
            .env(SECRET_KEY_ENV, &self.secret_key)
            .stdin(Stdio::null());
        match &self.token {
            Some(token) => command.env(TOKEN_ENV, token),
            None => command.env_remove(TOKEN_ENV),
        };
        for var in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "JOURNAL_STREAM",
            "CLICOLOR",
            "CLICOLOR_FORCE",
        ] {
            command.env_remove(var);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// Runs the `flatsync` binary with `args` (say `["status", "--json", "--config", ...]`) in
    /// the environment the daemon gets, and waits for it. Use [`Daemon::config_path`] for the
    /// config a started daemon runs on.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap_or_else(|e| panic!("cannot run flatsync {args:?}: {e}"))
    }

    /// Runs `flatsync run` on this config (written with `port`) and waits up to `limit` for it
    /// to exit by itself, as it must when it refuses to start; panics if it still runs then.
    pub fn run_expecting_exit(&self, port: u16, limit: Duration) -> Output {
        let path = self.write_config(port);
        let path = path.to_str().expect("test paths are UTF-8").to_owned();
        let mut child = self
            .command(&["run", "--config", &path])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start flatsync run");
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(_)) = child.try_wait() {
                return child.wait_with_output().expect("flatsync run's output");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let output = child.wait_with_output().expect("flatsync run's output");
        panic!(
            "flatsync run was expected to refuse to start but still ran after {limit:?}; stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs `flatsync check --config <file>` on this config.
    pub fn check(&self) -> CheckOutput {
        let path = self.write_config(free_port());
        check_config_file(self, &path)
    }

    fn process(self, listen_port: u16) -> DaemonProcess {
        Artifacts::locate().require_daemon_and_sinks();
        let log_path = self.dir.join("flatsync.log");
        let stdout_path = self.dir.join("flatsync.stdout");
        DaemonProcess {
            settings: self,
            child: Mutex::new(None),
            port: 0,
            listen_port,
            log_path,
            stdout_path,
            starts: 0,
        }
    }

    /// Writes the config with the webhook listener on `127.0.0.1:0` and starts `flatsync
    /// run`, returning once it printed its ready line on stdout; [`DaemonProcess::port`] is
    /// then the port the system chose, read from that line.
    pub fn start_on_any_port(self) -> DaemonProcess {
        let mut process = self.process(0);
        process.settings.write_config(0);
        if let Err(why) = process.spawn_and_wait() {
            panic!("{why}");
        }
        process
    }

    /// Writes the config and starts `flatsync run`, returning once it printed its ready line:
    /// the webhook port accepts connections and the start is complete.
    pub fn start(self) -> DaemonProcess {
        let mut process = self.process(0);
        // Another process can take the probed port before the daemon binds it; try another.
        for attempt in 1..=3 {
            process.port = free_port();
            process.listen_port = process.port;
            process.settings.write_config(process.port);
            match process.spawn_and_wait() {
                Ok(()) => return process,
                Err(why) if attempt < 3 && why.contains("cannot listen") => continue,
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!("the loop returns or panics on its last attempt")
    }
}

/// Runs `flatsync check` on a config file written by hand, with the environment `settings`
/// would give the daemon.
pub fn check_config_file(settings: &Daemon, path: &Path) -> CheckOutput {
    let path_text = path.to_str().expect("test paths are UTF-8");
    let output: Output = settings
        .command(&["check", "--config", path_text])
        .output()
        .expect("cannot run flatsync check");
    CheckOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// What `flatsync check` printed and its exit code.
#[derive(Clone, Debug)]
pub struct CheckOutput {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// An event as the state database's inbox has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRow {
    /// Event id.
    pub event_id: String,
    /// `pending`, `done`, `failed`, `skipped` or `unrouted`.
    pub status: String,
    /// Error or reason.
    pub detail: Option<String>,
}

/// A running (or killed) `flatsync run`. Killed when dropped; its log is printed when the test
/// fails.
#[derive(Debug)]
pub struct DaemonProcess {
    settings: Daemon,
    /// Behind a mutex so that waiting helpers taking `&self` can notice a daemon that died.
    child: Mutex<Option<Child>>,
    /// Where the webhook listener is bound.
    port: u16,
    /// The port the config names: `port`, or 0 for [`Daemon::start_on_any_port`].
    listen_port: u16,
    log_path: PathBuf,
    /// The daemon's stdout (its ready line) of the latest start.
    stdout_path: PathBuf,
    starts: u32,
}

impl DaemonProcess {
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("cannot open the daemon's log file");
        let _ = writeln!(log, "=== flatsync run, start {} ===", self.starts);
        let config = self.settings.config_path();
        let config = config.to_str().expect("test paths are UTF-8").to_owned();
        let stdout = std::fs::File::create(&self.stdout_path)
            .expect("cannot create the daemon's stdout file");
        let child = self
            .settings
            .command(&["run", "--config", &config])
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start flatsync: {e}"))?;
        *self.child_slot() = Some(child);
        // The ready line comes once the start is complete, the listeners accepting; it also
        // says where the listener is bound, which on port 0 nothing else does.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.listen_port));
        let started = Instant::now();
        loop {
            if let Some(port) = self.ready_line_port() {
                self.port = port;
                return Ok(());
            }
            let exited = self.exit_status();
            if let Some(status) = exited {
                *self.child_slot() = None;
                return Err(format!(
                    "flatsync run exited ({status}) before it was ready on {addr}; log:\n{}",
                    tail(&self.log(), 60)
                ));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "flatsync run was not ready on {addr} within {START_TIMEOUT:?}; log:\n{}",
                    tail(&self.log(), 60)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The settings the daemon runs with.
    pub fn settings(&self) -> &Daemon {
        &self.settings
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child_slot().as_ref().map(Child::id)
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...) without waiting for anything.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("the daemon is running");
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Waits up to `limit` for the process to exit by itself; `None` if it still runs (it is
    /// then left running).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                *self.child_slot() = None;
                return Some(status);
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The webhook port of the ready line the latest start printed, once it is complete.
    fn ready_line_port(&self) -> Option<u16> {
        let stdout = read_file(&self.stdout_path);
        let line = stdout.lines().next().filter(|_| stdout.contains('\n'))?;
        let ready: serde_json::Value = serde_json::from_str(line).ok()?;
        let webhook: SocketAddr = ready["webhook"].as_str()?.parse().ok()?;
        Some(webhook.port())
    }

    /// What the daemon printed on stdout since its latest start: its ready line.
    pub fn stdout(&self) -> String {
        read_file(&self.stdout_path)
    }

    /// Changes the settings and rewrites the config file the running daemon watches, the way
    /// config management does: a new file renamed over the old one.
    pub fn update_config(&mut self, change: impl FnOnce(Daemon) -> Daemon) {
        self.settings = change(self.settings.clone());
        self.replace_config_text(&self.settings.config_text(self.listen_port));
    }

    /// Replaces the config file with `text` (renamed over it), valid or not; the settings the
    /// harness keeps are unchanged.
    pub fn replace_config_text(&self, text: &str) {
        let path = self.settings.config_path();
        let staged = path.with_extension("toml.new");
        std::fs::write(&staged, text).expect("cannot write the new config");
        std::fs::rename(&staged, &path).expect("cannot replace the config");
    }

    /// The webhook listener's port on 127.0.0.1; the same across restarts (but for
    /// [`Daemon::start_on_any_port`], where each start may get another).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The webhook URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{WEBHOOK_PATH}", self.port)
    }

    /// Everything the daemon logged (stderr), across restarts.
    pub fn log(&self) -> String {
        read_file(&self.log_path)
    }

    /// The end of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        format!(
            "--- flatsync log (last lines) ---\n{}",
            tail(&self.log(), 80)
        )
    }

    /// POSTs a webhook body with the configured token (if any).
    pub fn post(&self, body: &serde_json::Value) -> HttpReply {
        let bytes = serde_json::to_vec(body).expect("a JSON value serialises");
        self.post_raw(&bytes, self.settings.token.as_deref())
            .unwrap_or_else(|e| panic!("webhook POST failed: {e}\n{}", self.log_tail()))
    }

    /// POSTs raw bytes with the given token.
    pub fn post_raw(&self, body: &[u8], bearer: Option<&str>) -> std::io::Result<HttpReply> {
        http::post_json(&self.url(), bearer, body)
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        match self.child_slot().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn child_slot(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How the process ended, if it was started and has ended.
    fn exit_status(&self) -> Option<ExitStatus> {
        self.child_slot()
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Panics when the daemon exited on its own: nothing in these tests should make it die.
    pub fn assert_alive(&self, during: &str) {
        if let Some(status) = self.exit_status() {
            panic!("flatsync exited ({status}) {during}\n{}", self.log_tail());
        }
    }

    /// SIGKILL: no chance to clean up, like a power cut for the process.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child_slot().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again on the same config and port.
    pub fn restart(&mut self) {
        assert!(
            self.child_slot().is_none(),
            "restart() needs the daemon stopped first"
        );
        // The port is ours; a bind can still fail briefly while the kernel lets go of it.
        let mut last = String::new();
        for _ in 0..5 {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(why) if why.contains("cannot listen") => {
                    last = why;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(why) => panic!("{why}"),
            }
        }
        panic!("{last}")
    }

    /// SIGTERM, then waits for a clean exit; panics if the daemon does not stop in time.
    pub fn stop(&mut self) -> ExitStatus {
        self.assert_alive("before it was told to stop");
        let mut child = self.child_slot().take().expect("the daemon is running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if started.elapsed() > STOP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "flatsync did not stop within {STOP_TIMEOUT:?} of SIGTERM\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `read` on one snapshot of the daemon's state database, opened read-only through
    /// flatsync-core's operator handle (the one `flatsync status` uses); `None` while the
    /// database does not exist or cannot be read yet.
    pub fn read_state<T>(
        &self,
        read: impl FnOnce(&Snapshot<'_>) -> Result<T, StateError>,
    ) -> Option<T> {
        let db = OperatorDb::open_read_only(&self.settings.state_dir()).ok()?;
        db.read(read).ok()
    }

    /// An event from the state database, if it is there yet.
    pub fn event(&self, event_id: &str) -> Option<EventRow> {
        self.event_detail(event_id).map(|e| EventRow {
            event_id: e.event_id,
            status: e.status.as_str().to_owned(),
            detail: e.detail,
        })
    }

    /// Everything the state database holds about an event (deliveries, stream plan,
    /// checkpoints), if it is there yet.
    pub fn event_detail(&self, event_id: &str) -> Option<EventDetail> {
        self.read_state(|s| s.event_detail(event_id)).flatten()
    }

    /// Every event of the inbox and its status; empty before the state database exists.
    pub fn inbox(&self) -> std::collections::BTreeMap<String, String> {
        self.read_state(|s| s.event_statuses())
            .unwrap_or_default()
            .into_iter()
            .map(|(id, status)| (id, status.as_str().to_owned()))
            .collect()
    }

    /// How many events the inbox holds, whatever their status.
    pub fn inbox_len(&self) -> usize {
        self.read_state(|s| s.event_statuses())
            .map_or(0, |events| events.len())
    }

    /// Rows the sinks made durable so far, summed over every checkpoint in the state database.
    pub fn checkpointed_rows(&self) -> u64 {
        self.read_state(|s| s.checkpointed_rows(None)).unwrap_or(0)
    }

    /// Rows the state database counts as made durable by `sink`.
    pub fn checkpointed_rows_of(&self, sink: &str) -> u64 {
        self.read_state(|s| s.checkpointed_rows(Some(sink)))
            .unwrap_or(0)
    }

    /// Ids of the events still pending in the state database.
    pub fn pending_events(&self) -> Vec<String> {
        self.read_state(|s| s.event_statuses())
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, status)| *status == EventStatus::Pending)
            .map(|(id, _)| id)
            .collect()
    }

    /// Each polled environment's cursor and unacknowledged events, by environment id; empty
    /// before the state database exists.
    pub fn polling(&self) -> Vec<PollStatus> {
        self.read_state(|s| s.polling()).unwrap_or_default()
    }

    /// Waits until the event has a final status and returns it.
    pub fn wait_final(&self, event_id: &str, limit: Duration) -> EventRow {
        wait::until(
            &format!("event {event_id} to reach a final status"),
            limit,
            || {
                self.assert_alive(&format!("while event {event_id} was processed"));
                self.event(event_id).filter(|e| e.status != "pending")
            },
            || format!("event now: {:?}\n{}", self.event(event_id), self.log_tail()),
        )
    }

    /// Waits until every event is final and asserts each ended `done`.
    pub fn wait_done(&self, event_ids: &[&str], limit: Duration) {
        let started = Instant::now();
        for id in event_ids {
            let left = limit.saturating_sub(started.elapsed());
            let event = self.wait_final(id, left.max(Duration::from_millis(1)));
            assert_eq!(
                event.status,
                "done",
                "event {id} ended {} ({:?})\n{}",
                event.status,
                event.detail,
                self.log_tail()
            );
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

/// Opens an SQLite database (a sink's) read-only; `None` while it does not exist or cannot be
/// read yet. The state database is read through [`DaemonProcess::read_state`].
pub fn open_read_only(path: &Path) -> Option<Connection> {
    if !path.is_file() {
        return None;
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    conn.busy_timeout(Duration::from_secs(2)).ok()?;
    Some(conn)
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind 127.0.0.1:0")
}

/// A TOML basic string.
pub fn toml_string(value: impl AsRef<std::ffi::OsStr>) -> String {
    let text = value
        .as_ref()
        .to_str()
        .expect("config values in tests are UTF-8");
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::toml_string;

    #[test]
    fn toml_strings_escape_quotes_and_backslashes() {
        assert_eq!(toml_string("a \"b\"\\c"), "\"a \\\"b\\\"\\\\c\"");
        assert_eq!(toml_string("/tmp/x y"), "\"/tmp/x y\"");
    }
}
