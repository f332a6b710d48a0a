//! The `flatfile-sim` binary, run on 127.0.0.1 for one test.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use flatfile_sim::{EventsOrder, JobState, SimConfig, SimStats};
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::artifacts::Artifacts;
use crate::http;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running simulator; killed when dropped.
#[derive(Debug)]
pub struct Sim {
    child: Child,
    url: String,
    config: SimConfig,
    log: tempfile::NamedTempFile,
}

/// A row or record as the simulator serves it, reduced to what a sink receives.
#[derive(Debug, Clone)]
pub struct SourceRow {
    /// Record id.
    pub id: String,
    /// Whether the row is valid.
    pub valid: bool,
    /// Field key and raw JSON value, in the source's order.
    pub values: Vec<(String, Box<RawValue>)>,
}

impl Sim {
    /// Starts `flatfile-sim --listen 127.0.0.1:0` with flags matching `config`, so that the
    /// library's `legacy_row_ids`/`record_ids` called with the same `config` describe what it
    /// serves. Keys go through the environment, never argv.
    pub fn start(config: SimConfig) -> Sim {
        let binary = Artifacts::locate().flatfile_sim();
        let log = tempfile::Builder::new()
            .prefix("flatfile-sim-")
            .suffix(".log")
            .tempfile()
            .expect("cannot create the simulator's log file");
        let stderr = log
            .reopen()
            .expect("cannot reopen the simulator's log file");
        let mut child = command(&binary, &config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let first_line = start_line(&mut child, &log);
        let url = first_line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .map(|url| url.trim_end_matches(['/', ',', ';']).to_owned())
            .unwrap_or_else(|| {
                panic!("flatfile-sim's start line names no http:// URL: {first_line:?}")
            });
        Sim {
            child,
            url,
            config,
            log,
        }
    }

    /// Starts a simulator with `rows` rows per batch/workbook and otherwise default settings.
    pub fn with_rows(rows: u64) -> Sim {
        Sim::start(SimConfig {
            rows,
            ..SimConfig::default()
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The configuration the simulator was started with.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// A client of the simulator's admin API: submit workbooks, add, edit and delete records,
    /// emit events, read events and jobs.
    pub fn admin(&self) -> flatfile_sim::AdminClient {
        flatfile_sim::AdminClient::new(&self.url).expect("an admin client for the simulator")
    }

    /// Creates a `workbook:submitActionFg` job for `workbook_id` (`POST /_sim/jobs`, no events)
    /// and returns its id: the job a test's own `job:ready` webhook names, since the simulator
    /// answers 404 for any job it did not create.
    pub fn job_for(&self, workbook_id: &str) -> String {
        self.admin()
            .workbook_job(workbook_id)
            .unwrap_or_else(|e| panic!("cannot create a job for {workbook_id}: {e}"))
    }

    /// What the simulator logged so far.
    pub fn log(&self) -> String {
        read_file(self.log.path())
    }

    /// A job as the simulator recorded it (`GET /_sim/jobs/{id}`), `None` if never seen.
    pub fn job(&self, job_id: &str) -> Option<JobState> {
        let reply = http::get(&format!("{}/_sim/jobs/{job_id}", self.url), &[])
            .expect("the simulator's admin API answers");
        match reply.status {
            404 => None,
            200 => Some(serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
                panic!(
                    "GET /_sim/jobs/{job_id} is not a JobState ({e}): {}",
                    reply.text()
                )
            })),
            other => panic!("GET /_sim/jobs/{job_id} answered {other}: {}", reply.text()),
        }
    }

    /// The simulator's counters (`GET /_sim/stats`).
    pub fn stats(&self) -> SimStats {
        let reply = http::get(&format!("{}/_sim/stats", self.url), &[])
            .expect("the simulator's admin API answers");
        assert_eq!(reply.status, 200, "GET /_sim/stats: {}", reply.text());
        serde_json::from_slice(&reply.body)
            .unwrap_or_else(|e| panic!("GET /_sim/stats is not SimStats ({e}): {}", reply.text()))
    }

    /// GETs an API path with the right credentials, honouring `Retry-After` on 429 and retrying
    /// other failures a few times, so it also works against a simulator injecting faults.
    fn api_get(&self, path_and_query: &str) -> Vec<u8> {
        let url = format!("{}{path_and_query}", self.url);
        let bearer = format!("Bearer {}", self.config.secret_key);
        let headers = [
            ("X-Api-Key", self.config.legacy_api_key.as_str()),
            ("Authorization", bearer.as_str()),
        ];
        let mut last = String::new();
        for _ in 0..20 {
            match http::get(&url, &headers) {
                Ok(reply) if reply.status == 200 => {
                    if serde_json::from_slice::<serde::de::IgnoredAny>(&reply.body).is_ok() {
                        return reply.body;
                    }
                    last = "a truncated body".to_owned();
                }
                Ok(reply) if reply.status == 429 => {
                    let secs: u64 = reply
                        .header("retry-after")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(1);
                    std::thread::sleep(Duration::from_secs(secs) + Duration::from_millis(100));
                    last = "429".to_owned();
                    continue;
                }
                Ok(reply) => last = format!("{}: {}", reply.status, reply.text()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("GET {url} kept failing; last: {last}")
    }

    /// Every row of a legacy batch, read through the legacy API like flatsync reads it.
    pub fn legacy_rows(&self, batch_id: &str) -> Vec<SourceRow> {
        #[derive(Deserialize)]
        struct Page {
            data: Vec<LegacyRow>,
        }
        #[derive(Deserialize)]
        struct LegacyRow {
            id: serde_json::Value,
            #[serde(default = "yes")]
            valid: bool,
            #[serde(default)]
            deleted: bool,
            mapped: Option<OrderedObject>,
        }
        let take = self.config.max_page_size.min(10_000);
        let mut rows = Vec::new();
        for page_index in 0..=(self.config.rows / take + 1) {
            let body = self.api_get(&format!(
                "/rest/batch/{batch_id}/rows?skip={}&take={take}",
                page_index * take
            ));
            let page: Page = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("legacy rows page does not parse: {e}"));
            let on_page = page.data.len() as u64;
            for row in page.data.into_iter().filter(|r| !r.deleted) {
                rows.push(SourceRow {
                    id: match row.id {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    },
                    valid: row.valid,
                    values: row.mapped.map(|m| m.0).unwrap_or_default(),
                });
            }
            if on_page < take {
                break;
            }
        }
        rows
    }

    /// Every record of a sheet, read through the Platform API, with `values` reduced to each
    /// cell's `value` like flatsync delivers them.
    pub fn sheet_records(&self, sheet_id: &str) -> Vec<SourceRow> {
        #[derive(Deserialize)]
        struct Page {
            data: PageData,
        }
        #[derive(Deserialize)]
        struct PageData {
            records: Vec<Record>,
        }
        #[derive(Deserialize)]
        struct Record {
            id: String,
            #[serde(default = "yes")]
            valid: bool,
            values: OrderedObject,
        }
        #[derive(Deserialize)]
        struct Cell {
            value: Option<Box<RawValue>>,
        }
        let size = self.config.max_page_size.min(10_000);
        let mut rows = Vec::new();
        for page_number in 1..=(self.config.rows / size + 2) {
            let body = self.api_get(&format!(
                "/v1/sheets/{sheet_id}/records?pageSize={size}&pageNumber={page_number}"
            ));
            let page: Page = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("records page does not parse: {e}"));
            let on_page = page.data.records.len() as u64;
            for record in page.data.records {
                let values = record
                    .values
                    .0
                    .into_iter()
                    .map(|(key, cell)| {
                        let cell: Cell = serde_json::from_str(cell.get())
                            .unwrap_or_else(|e| panic!("cell {key} does not parse: {e}"));
                        let null = || RawValue::from_string("null".to_owned()).expect("valid JSON");
                        (key, cell.value.unwrap_or_else(null))
                    })
                    .collect();
                rows.push(SourceRow {
                    id: record.id,
                    valid: record.valid,
                    values,
                });
            }
            if on_page < size {
                break;
            }
        }
        rows
    }

    /// The field keys of a sheet's schema, in order (`GET /v1/sheets/{id}`).
    pub fn sheet_field_keys(&self, sheet_id: &str) -> Vec<String> {
        let body = self.api_get(&format!("/v1/sheets/{sheet_id}"));
        let sheet: serde_json::Value = serde_json::from_slice(&body).expect("checked JSON");
        sheet["data"]["config"]["fields"]
            .as_array()
            .unwrap_or_else(|| panic!("sheet {sheet_id} has no config.fields: {sheet}"))
            .iter()
            .map(|field| {
                field["key"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a field of {sheet_id} has no key: {field}"))
                    .to_owned()
            })
            .collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            if !log.trim().is_empty() {
                eprintln!(
                    "--- flatfile-sim log ({}) ---\n{}",
                    self.url,
                    tail(&log, 80)
                );
            }
        }
    }
}

/// `flatfile-sim` with the flags and environment that make it serve `config`.
fn command(binary: &std::path::Path, config: &SimConfig) -> Command {
    let f = &config.faults;
    let mut command = Command::new(binary);
    command
        .args(["--listen", "127.0.0.1:0"])
        .args(["--rows", &config.rows.to_string()])
        .args(["--seed", &config.seed.to_string()])
        .args(["--sheets", &config.sheets_per_workbook.to_string()])
        .args([
            "--page-latency-ms",
            &config.page_latency.as_millis().to_string(),
        ])
        .args(["--error-rate", &f.error_rate.to_string()])
        .args(["--rate-limit-rate", &f.rate_limit_rate.to_string()])
        .args(["--retry-after-secs", &f.retry_after_secs.to_string()])
        .args(["--drop-rate", &f.drop_rate.to_string()])
        .args(["--max-page-size", &config.max_page_size.to_string()])
        .args([
            "--events-order",
            match config.events_order {
                EventsOrder::Oldest => "oldest",
                EventsOrder::Newest => "newest",
            },
        ])
        .env("FLATFILE_SIM_LEGACY_API_KEY", &config.legacy_api_key)
        .env("FLATFILE_SIM_SECRET_KEY", &config.secret_key)
        .env(
            "FLATFILE_SIM_ENVIRONMENTS",
            config
                .environments
                .iter()
                .map(|e| format!("{}={}", e.id, e.secret_key))
                .collect::<Vec<_>>()
                .join(","),
        )
        .env_remove("RUST_LOG");
    command
}

/// The first line the simulator prints, which names its URL; kills it and shows its log when
/// none comes within [`START_TIMEOUT`].
fn start_line(child: &mut Child, log: &tempfile::NamedTempFile) -> String {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        // Keep draining so the simulator never blocks on a full pipe.
        for _ in lines {}
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "flatfile-sim printed no start line within {START_TIMEOUT:?}; its log:\n{}",
                read_file(log.path())
            );
        }
    }
}

fn yes() -> bool {
    true
}

/// A JSON object kept as (key, raw value) pairs in document order.
struct OrderedObject(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut pairs = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    pairs.push((key, value));
                }
                Ok(OrderedObject(pairs))
            }
        }
        deserializer.deserialize_map(PairsVisitor)
    }
}

/// Reads a log file, tolerating a missing one.
pub(crate) fn read_file(path: &std::path::Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

/// The last `lines` lines of a text.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("[... {start} earlier lines ...]\n"));
    }
    out.push_str(&all[start..].join("\n"));
    out
}
