//! A local simulator of the Flatfile HTTP API, for trying flatsync without a Flatfile account and
//! for end-to-end, crash and fault tests.
//!
//! One server answers both APIs flatsync reads:
//! - the legacy Portal REST API: `GET /rest/batch/{batchId}/rows` (auth: `X-Api-Key`);
//! - the Platform API: workbooks, sheets, record counts, records and jobs under `/v1`
//!   (auth: `Authorization: Bearer <secret key>`).
//!
//! Every batch id and every `us_wb_<x>` workbook id exists. Their rows are generated on the fly,
//! deterministically from ([`SimConfig::seed`], id, row index), so the same configuration always
//! serves the same bytes and tests can compute the expected data with [`legacy_row_ids`],
//! [`workbook_sheets`] and [`record_ids`] instead of generating it again. Generated values
//! deliberately contain what breaks naive exporters: commas, double quotes, newlines, non-ASCII
//! text, cells starting with `=`, `+`, `-` or `@`, empty strings, nulls, negative and decimal
//! numbers, and about one invalid row in ten.
//!
//! [`Faults`] injects 500/503 answers, 429 answers with `Retry-After`, and connections cut in the
//! middle of a body, chosen by a deterministic generator so a failing run can be repeated.
//! [`SimStats::early_retries`] counts clients that came back before a `Retry-After` had elapsed.
//!
//! Admin endpoints without auth: `GET /_sim/jobs/{id}` ([`JobState`]) and `GET /_sim/stats`
//! ([`SimStats`]).

mod clock;
mod generate;
mod server;
mod webhook;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use server::RunningSim;
pub use webhook::{
    WebhookReply, legacy_webhook_body, post_webhook, send_webhook, submit_event_body,
};

/// Default `X-Api-Key` of the legacy API (`<access key id>+<secret>`).
pub const DEFAULT_LEGACY_API_KEY: &str = "demo-key+demo-secret";
/// Default Platform secret key, expected as `Authorization: Bearer sk_demo`.
pub const DEFAULT_SECRET_KEY: &str = "sk_demo";
/// Slugs of the sheets a workbook can have, in order; a workbook has the first
/// [`SimConfig::sheets_per_workbook`] of them.
pub const SHEET_SLUGS: [&str; 4] = ["contacts", "companies", "deals", "tickets"];

/// What the simulator serves and how badly it behaves.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Rows per legacy batch, and rows per workbook in all (split over its sheets).
    pub rows: u64,
    /// Seed of all generated data and of fault injection.
    pub seed: u64,
    /// Sheets per workbook, 1 to 4: contacts, companies, deals, tickets.
    pub sheets_per_workbook: usize,
    /// Delay added to every data request (legacy rows, Platform records).
    pub page_latency: Duration,
    /// Injected failures.
    pub faults: Faults,
    /// Expected `X-Api-Key` header of legacy requests.
    pub legacy_api_key: String,
    /// Expected bearer token of Platform requests.
    pub secret_key: String,
    /// Cap for `take` (legacy) and `pageSize` (Platform).
    pub max_page_size: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            rows: 1000,
            seed: 0,
            sheets_per_workbook: 2,
            page_latency: Duration::ZERO,
            faults: Faults::default(),
            legacy_api_key: DEFAULT_LEGACY_API_KEY.to_owned(),
            secret_key: DEFAULT_SECRET_KEY.to_owned(),
            max_page_size: 10_000,
        }
    }
}

impl SimConfig {
    /// Checks the ranges the server relies on; [`RunningSim::start`] calls it.
    pub fn validate(&self) -> Result<(), SimError> {
        if !(1..=SHEET_SLUGS.len()).contains(&self.sheets_per_workbook) {
            return Err(SimError::InvalidConfig(format!(
                "sheets_per_workbook must be between 1 and {}, not {}",
                SHEET_SLUGS.len(),
                self.sheets_per_workbook
            )));
        }
        if self.max_page_size == 0 {
            return Err(SimError::InvalidConfig(
                "max_page_size must be at least 1".to_owned(),
            ));
        }
        let rates = [
            ("error_rate", self.faults.error_rate),
            ("rate_limit_rate", self.faults.rate_limit_rate),
            ("drop_rate", self.faults.drop_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(SimError::InvalidConfig(format!(
                    "{name} must be between 0 and 1, not {rate}"
                )));
            }
        }
        let sum: f64 = rates.iter().map(|(_, rate)| rate).sum();
        if sum > 1.0 + 1e-9 {
            return Err(SimError::InvalidConfig(format!(
                "the fault rates add up to {sum}, more than 1"
            )));
        }
        Ok(())
    }
}

/// Fractions of `/rest` and `/v1` requests answered with a failure. Each request gets at most one
/// fault; the rates must add up to at most 1.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Fraction answered 500 or 503 (alternately).
    pub error_rate: f64,
    /// Fraction answered 429 with `Retry-After: retry_after_secs`.
    pub rate_limit_rate: f64,
    /// Seconds announced in `Retry-After`.
    pub retry_after_secs: u64,
    /// Fraction whose connection is cut after part of the body was sent. The request itself is
    /// carried out (a job ack is recorded), as when a real response is lost on the way.
    pub drop_rate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            retry_after_secs: 1,
            drop_rate: 0.0,
        }
    }
}

/// What happened to a job, as recorded by the simulator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// The job id, as the client sent it.
    pub id: String,
    /// `created`, `executing`, `complete` or `failed`.
    pub status: String,
    /// Every `progress` value sent with `ack`, in order.
    pub progress: Vec<u8>,
    /// The last `info` sent with `ack`, `complete` or `fail`.
    pub info: Option<String>,
    /// `outcome.message` of the last `complete` or `fail`.
    pub outcome_message: Option<String>,
}

/// Counters of a running simulator. Request counters cover every `/rest` and `/v1` request,
/// including those answered with an injected fault or a 401.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// All `/rest` and `/v1` requests.
    pub requests: u64,
    /// `GET /rest/batch/{id}/rows`.
    pub legacy_rows: u64,
    /// `GET /v1/workbooks/{id}`.
    pub workbooks: u64,
    /// `GET /v1/sheets` and `GET /v1/sheets/{id}`.
    pub sheets: u64,
    /// `GET /v1/sheets/{id}/counts`.
    pub counts: u64,
    /// `GET /v1/sheets/{id}/records`.
    pub records: u64,
    /// Any `/v1/jobs` request.
    pub jobs: u64,
    /// Any other `/rest` or `/v1` path (answered 404).
    pub other: u64,
    /// Requests refused for a missing or wrong key.
    pub unauthorized: u64,
    /// Injected 500 and 503 answers.
    pub injected_errors: u64,
    /// Injected 429 answers.
    pub injected_rate_limits: u64,
    /// Injected cut connections.
    pub injected_drops: u64,
    /// Requests that came for the same method, path and query as an earlier 429 before its
    /// `Retry-After` had elapsed. A well-behaved client keeps this at 0.
    pub early_retries: u64,
}

/// Errors of the simulator library.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A [`SimConfig`] value is out of range.
    #[error("invalid simulator configuration: {0}")]
    InvalidConfig(String),
    /// The webhook URL does not parse.
    #[error("invalid webhook URL")]
    InvalidUrl,
    /// The bearer token cannot be sent in a header.
    #[error("the bearer token contains characters not allowed in an HTTP header")]
    InvalidToken,
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The webhook request failed before a complete response arrived.
    #[error("webhook request to {url} failed")]
    Request {
        /// The target, without its query string (which may carry a token).
        url: String,
        /// What went wrong.
        #[source]
        source: reqwest::Error,
    },
}

impl From<SimError> for std::io::Error {
    fn from(err: SimError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, err)
    }
}

/// Ids of the rows of a legacy batch, in order (`sequence` 1, 2, ...).
pub fn legacy_row_ids(config: &SimConfig, batch_id: &str) -> Vec<String> {
    let batch = generate::BatchKey::new(config.seed, batch_id);
    (0..config.rows).map(|index| batch.row_id(index)).collect()
}

/// Sheets of a workbook as `(sheet id, slug, rows)`, in order; empty when the id is not
/// `us_wb_<x>`. The rows add up to [`SimConfig::rows`].
pub fn workbook_sheets(config: &SimConfig, workbook_id: &str) -> Vec<(String, String, u64)> {
    generate::workbook_sheet_refs(config, workbook_id)
        .unwrap_or_default()
        .into_iter()
        .map(|sheet| (sheet.id, sheet.kind.slug().to_owned(), sheet.rows))
        .collect()
}

/// Ids of the records of a sheet, in order; empty when the sheet does not exist.
pub fn record_ids(config: &SimConfig, sheet_id: &str) -> Vec<String> {
    match generate::decode_sheet(config, sheet_id) {
        Some(sheet) => {
            let key = generate::SheetKey::new(config.seed, &sheet);
            (0..sheet.rows).map(|index| key.record_id(index)).collect()
        }
        None => Vec::new(),
    }
}
