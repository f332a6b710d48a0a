//! The daemon under test: the `flatsync` binary on a TOML config written for one run, with
//! its state in that run's directory (SQLite) or in a database of the run's own (PostgreSQL),
//! watched through its admin `/metrics`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::child::Running;
use crate::error::BenchError;
use crate::http;
use crate::proc::{self, Usage};
use crate::sink::Sink;

/// The webhook path of every config.
const WEBHOOK_PATH: &str = "/flatfile/webhook";
const LEGACY_KEY_ENV: &str = "FLATFILE_LEGACY_API_KEY";
const SECRET_KEY_ENV: &str = "FLATFILE_SECRET_KEY";
/// The daemon's test hook: its dispatcher stands still while this file exists, which holds
/// delivery back while a backlog is filled through the webhook.
const STALL_FILE_ENV: &str = "FLATSYNC_TEST_STALL_FILE";
/// The variable the config's `state_url_env` names: the URL reaches the daemon through its
/// environment, so a password in `FLATSYNC_TEST_POSTGRES_URL` stays out of the config file.
const STATE_URL_ENV: &str = "FLATSYNC_BENCH_STATE_URL";

/// Where the daemon keeps its state.
#[derive(Clone, Default)]
pub(crate) enum State {
    /// SQLite, in the run's directory (`state_dir`).
    #[default]
    Sqlite,
    /// PostgreSQL, the database at this URL (`state_url_env`).
    Postgres(String),
}

impl std::fmt::Debug for State {
    // The URL may hold the server's password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Sqlite => f.write_str("Sqlite"),
            State::Postgres(_) => f.write_str("Postgres"),
        }
    }
}

/// What one run's daemon is configured with.
#[derive(Clone, Debug)]
pub(crate) struct Setup {
    /// The run's directory: config, state, sink output and logs.
    pub(crate) dir: PathBuf,
    /// Where the binary and the plugins are.
    pub(crate) bin_dir: PathBuf,
    /// The simulator's URL, or none for runs that fetch nothing.
    pub(crate) sim_url: Option<String>,
    /// The one sink.
    pub(crate) sink: Sink,
    /// The topics routed to it.
    pub(crate) topics: Vec<&'static str>,
    /// `[fetch] pages_in_flight`, when set on the command line (else the daemon's default).
    pub(crate) pages_in_flight: Option<usize>,
    /// Start with delivery held back until this file is removed.
    pub(crate) stall_file: Option<PathBuf>,
    /// Where the state is.
    pub(crate) state: State,
}

impl Setup {
    /// The config text.
    fn config(&self) -> String {
        let quote = |text: &str| serde_json::Value::from(text).to_string();
        let path = |p: &Path| quote(&p.to_string_lossy());
        let api = self.sim_url.as_deref().unwrap_or("http://127.0.0.1:9");
        let mut text = String::new();
        match &self.state {
            State::Sqlite => {
                let _ = writeln!(
                    text,
                    "[daemon]\nstate_dir = {}",
                    path(&self.dir.join("state"))
                );
            }
            State::Postgres(_) => {
                let _ = writeln!(text, "[daemon]\nstate_url_env = {}", quote(STATE_URL_ENV));
            }
        }
        // The config's folder is not the working directory: a relative path would miss.
        let bin_dir = std::path::absolute(&self.bin_dir).unwrap_or_else(|_| self.bin_dir.clone());
        let _ = writeln!(text, "plugin_dir = {}\n", path(&bin_dir));
        let _ = writeln!(text, "[flatfile]\nlegacy_api_url = {}", quote(api));
        let _ = writeln!(text, "legacy_api_key_env = {}", quote(LEGACY_KEY_ENV));
        let _ = writeln!(text, "api_url = {}", quote(api));
        let _ = writeln!(text, "secret_key_env = {}\n", quote(SECRET_KEY_ENV));
        let _ = writeln!(text, "[webhook]\nlisten = \"127.0.0.1:0\"");
        let _ = writeln!(text, "path = {}\n", quote(WEBHOOK_PATH));
        let _ = writeln!(text, "[admin]\nlisten = \"127.0.0.1:0\"\n");
        // The page sizes of issue 12: legacy pages of 1,000 rows, Platform pages of 10,000.
        let _ = writeln!(
            text,
            "[fetch]\nlegacy_page_size = 1000\nrecords_page_size = 10000"
        );
        if let Some(pages) = self.pages_in_flight {
            let _ = writeln!(text, "pages_in_flight = {pages}");
        }
        let _ = writeln!(
            text,
            "\n[sinks.out]\nplugin = {}\nconfig = {}\n",
            quote(self.sink.plugin()),
            self.sink.config(&self.dir)
        );
        let topics: Vec<String> = self.topics.iter().map(|t| quote(t)).collect();
        let _ = writeln!(
            text,
            "[[routes]]\ntopics = [{}]\nsinks = [\"out\"]",
            topics.join(", ")
        );
        text
    }
}

/// Counters and gauges of one `/metrics` scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// `flatsync_events_pending`.
    pub(crate) events_pending: u64,
    /// `flatsync_rows_delivered_total`, over every label.
    pub(crate) rows_delivered: u64,
}

/// A running daemon.
#[derive(Debug)]
pub(crate) struct Daemon {
    process: Running,
    log: PathBuf,
    webhook_url: String,
    metrics_url: String,
    agent: ureq::Agent,
}

impl Daemon {
    /// Writes the config and starts `flatsync run`, returning once its ready line is out.
    pub(crate) fn start(setup: &Setup) -> Result<Daemon, BenchError> {
        std::fs::create_dir_all(&setup.dir).map_err(BenchError::io(format!(
            "cannot create {}",
            setup.dir.display()
        )))?;
        let config = setup.dir.join("flatsync.toml");
        std::fs::write(&config, setup.config())
            .map_err(BenchError::io(format!("cannot write {}", config.display())))?;
        let mut command = Command::new(setup.bin_dir.join("flatsync"));
        command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env(LEGACY_KEY_ENV, flatfile_sim::DEFAULT_LEGACY_API_KEY)
            .env(SECRET_KEY_ENV, flatfile_sim::DEFAULT_SECRET_KEY)
            .env("NO_COLOR", "1")
            .env_remove("FLATSYNC_PLUGIN_PATH")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC");
        match &setup.stall_file {
            Some(file) => command.env(STALL_FILE_ENV, file),
            None => command.env_remove(STALL_FILE_ENV),
        };
        match &setup.state {
            State::Postgres(url) => command.env(STATE_URL_ENV, url),
            State::Sqlite => command.env_remove(STATE_URL_ENV),
        };
        let log = setup.dir.join("flatsync.log");
        let ready = |line: &str| line.contains("\"flatsync\":\"ready\"");
        let (process, line) = Running::spawn(command, &log, ready, Duration::from_secs(60))?;
        let info: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| BenchError::Failed(format!("unreadable ready line {line:?}: {e}")))?;
        let address = |key: &str| {
            info[key].as_str().map(str::to_owned).ok_or_else(|| {
                BenchError::Failed(format!("the ready line names no {key} address: {line}"))
            })
        };
        Ok(Daemon {
            webhook_url: format!("http://{}{WEBHOOK_PATH}", address("webhook")?),
            metrics_url: format!("http://{}/metrics", address("admin")?),
            process,
            log,
            agent: http::agent(),
        })
    }

    /// `http://ADDR/flatfile/webhook`.
    pub(crate) fn webhook_url(&self) -> &str {
        &self.webhook_url
    }

    /// Posts one webhook body, requiring a 2xx answer.
    pub(crate) fn post(&self, body: &str) -> Result<(), BenchError> {
        http::post_ok(&self.agent, &self.webhook_url, body).map(|_| ())
    }

    /// One scrape of `/metrics`.
    pub(crate) fn progress(&mut self) -> Result<Progress, BenchError> {
        self.process.check_alive(&self.log)?;
        let text = http::get_ok(&self.agent, &self.metrics_url)?;
        Ok(parse_progress(&text))
    }

    /// Scrapes every `every` until `done` says so, at most `limit`; once the wait is long, every
    /// half percent of the time waited so far instead, so that the scrapes' own work stays
    /// small beside what is measured. Each scrape counts the pending events: on the PostgreSQL
    /// state at 300,000 pending that took 32 ms, so scraping every 50 ms kept a core of this
    /// 2-core machine busy for the whole of a drain it was meant to time.
    pub(crate) fn wait_until(
        &mut self,
        what: &str,
        every: Duration,
        limit: Duration,
        mut done: impl FnMut(Progress) -> Result<bool, BenchError>,
    ) -> Result<Progress, BenchError> {
        let started = Instant::now();
        loop {
            let progress = self.progress()?;
            if done(progress)? {
                return Ok(progress);
            }
            if started.elapsed() > limit {
                return Err(BenchError::Failed(format!(
                    "{what}: not done within {limit:?} ({progress:?}); see {}",
                    self.log.display()
                )));
            }
            std::thread::sleep(every.max(started.elapsed() / 200));
        }
    }

    /// CPU seconds and peak RSS so far.
    pub(crate) fn usage(&self) -> Result<Usage, BenchError> {
        proc::usage(self.process.pid())
    }

    /// Stops it with SIGTERM.
    pub(crate) fn stop(self) -> Result<(), BenchError> {
        self.process.stop(Duration::from_secs(90))
    }

    /// Kills it with SIGKILL.
    pub(crate) fn kill(self) -> Result<(), BenchError> {
        self.process.kill()
    }
}

/// The two families the benchmark reads from a Prometheus text exposition.
fn parse_progress(text: &str) -> Progress {
    let mut progress = Progress::default();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        match &line[..name_end] {
            "flatsync_events_pending" => progress.events_pending = value,
            "flatsync_rows_delivered_total" => progress.rows_delivered += value,
            _ => {}
        }
    }
    progress
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_sums_rows_over_labels_and_reads_the_pending_gauge() {
        let text = "# HELP flatsync_rows_delivered_total Rows.\n\
            # TYPE flatsync_rows_delivered_total counter\n\
            flatsync_rows_delivered_total{sink=\"out\"} 1500\n\
            flatsync_rows_delivered_total{sink=\"other\"} 500\n\
            flatsync_rows_delivered_by_kind_total{sink=\"out\",kind=\"x\"} 99\n\
            flatsync_events_pending 3\n";
        assert_eq!(
            parse_progress(text),
            Progress {
                events_pending: 3,
                rows_delivered: 2000
            }
        );
    }

    #[test]
    fn the_config_routes_the_topics_to_the_one_sink() {
        let setup = Setup {
            dir: PathBuf::from("/tmp/run \"1\""),
            bin_dir: PathBuf::from("/opt/bin"),
            sim_url: Some("http://127.0.0.1:1234".to_owned()),
            sink: Sink::Csv,
            topics: vec!["portalImportSubmitted", "job:ready"],
            pages_in_flight: Some(8),
            stall_file: None,
            state: State::Sqlite,
        };
        let config = setup.config();
        let parsed: toml_like::Doc = toml_like::parse(&config);
        assert_eq!(
            parsed.get("legacy_api_url"),
            Some("\"http://127.0.0.1:1234\"")
        );
        assert_eq!(parsed.get("pages_in_flight"), Some("8"));
        assert_eq!(parsed.get("plugin"), Some("\"csv-folder\""));
        assert_eq!(
            parsed.get("topics"),
            Some("[\"portalImportSubmitted\", \"job:ready\"]")
        );
        assert!(config.contains(r#"state_dir = "/tmp/run \"1\"/state""#));
        assert!(!config.contains("state_url"), "{config}");
    }

    #[test]
    fn a_postgres_state_is_named_by_variable_and_replaces_the_state_dir() {
        let setup = Setup {
            dir: PathBuf::from("/tmp/run"),
            bin_dir: PathBuf::from("/opt/bin"),
            sim_url: None,
            sink: Sink::Jsonl,
            topics: vec!["*"],
            pages_in_flight: None,
            stall_file: None,
            state: State::Postgres("postgres://bench:hunter2@127.0.0.1:5432/run_state".to_owned()),
        };
        let config = setup.config();
        let parsed = toml_like::parse(&config);
        assert_eq!(
            parsed.get("state_url_env"),
            Some("\"FLATSYNC_BENCH_STATE_URL\"")
        );
        assert!(!config.contains("state_dir"), "{config}");
        assert!(!config.contains("hunter2"), "{config}");
        assert!(!format!("{setup:?}").contains("hunter2"));
    }

    /// Just enough to look keys up in the config the benchmark writes.
    mod toml_like {
        pub(super) struct Doc(Vec<(String, String)>);

        impl Doc {
            pub(super) fn get(&self, key: &str) -> Option<&str> {
                self.0
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.as_str())
            }
        }

        pub(super) fn parse(text: &str) -> Doc {
            Doc(text
                .lines()
                .filter_map(|line| line.split_once(" = "))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect())
        }
    }
}
