//! A local simulator of the Flatfile HTTP API, for trying flatsync without a Flatfile account and
//! for end-to-end, crash and fault tests.
//!
//! One server answers both APIs flatsync reads:
//! - the legacy Portal REST API: `GET /rest/batch/{batchId}/rows` and the Workspaces records,
//!   `GET /workspace/{workspaceId}/sheet/{sheetId}/records` (auth: `X-Api-Key`);
//! - the Platform API: events, workbooks, sheets, record counts, records and jobs under `/v1`
//!   (auth: `Authorization: Bearer <secret key>`).
//!
//! Its Platform answers are checked against the serialization schemas of Flatfile's own SDK,
//! `@flatfile/api`, in strict mode by `tests/contract/check.mjs`: no key, enumeration value or
//! union member the SDK does not know.
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
//! # Environments and events
//!
//! Every configured environment ([`SimConfig::secret_key`] for [`DEFAULT_ENVIRONMENT_ID`], plus
//! [`SimConfig::environments`]) has its own secret key, and every key is a valid bearer token.
//! Workbooks created with `POST /_sim/submit` belong to one environment: the other environments'
//! keys get 404 for them, their sheets, counts and records. The on-the-fly `us_wb_<x>` workbooks
//! are readable with any key.
//!
//! The simulator keeps an event log per environment, served like the Platform's:
//! `GET /v1/events?environmentId=&since=&pageSize=&pageNumber=&includeAcknowledged=&topic=&domain=&spaceId=`
//! (`{"data": [Event]}`, ascending by `createdAt` unless [`SimConfig::events_order`] says
//! newest first, `since` inclusive, `pageSize` 10 by default,
//! `pageNumber` from 1, acknowledged events left out unless `includeAcknowledged=true`; a key
//! asking for another environment gets 403), `GET /v1/events/{id}` and
//! `POST /v1/events/{id}/ack`. Events have ids `us_evt_<tag>_<n>`, where the tag is drawn when
//! the simulator starts, so a restarted simulator never reuses an id a client may have stored.
//! Their `createdAt` values are strictly increasing, at least 1 ms apart, except that an event
//! emitted through the admin API may name its `createdAt`: the previous event's time or later.
//!
//! # Jobs
//!
//! A job exists only once created: by `POST /_sim/submit`, by `POST /_sim/jobs` or by
//! `POST /v1/jobs`. `GET /v1/jobs/{id}`, `POST /v1/jobs/{id}/ack|complete|fail` and
//! `PATCH /v1/jobs/{id}` answer any other id (or another environment's job) 404 with
//! `{"errors": [{"key": "jobId", "message": "Job <id> not found"}]}`, as the Platform does.
//! Their bodies are checked against the SDK's `JobAckDetails`, `JobCompleteDetails` and
//! `JobUpdate`. A job reaching `complete` or `failed` emits `job:completed` or `job:failed`;
//! the last part of a multi-part job to complete also emits the parent's `job:parts-completed`.
//!
//! # Event domains
//!
//! Every event's `domain` is one of [`DOMAINS`], the SDK's enumeration, chosen from the
//! topic's family by [`domain_of_topic`] (`records:*` and `commit:*` are `workbook`).
//! `POST /_sim/events` refuses any other domain unless the request says
//! `"allowUnknownDomain": true`.
//!
//! # Legacy shapes and senders
//!
//! Beside the batch rows: the Workspaces records endpoint ([`workspace_rows`] lists what it
//! serves, [`workspace_webhook_body`] builds its notification), the Portal 2.0 `batch.upload`
//! request bodies ([`portal2_upload_bodies`], [`portal2_upload_rows`]) and the body
//! `@flatfile/plugin-webhook-event-forwarder` POSTs ([`forwarded_event_body`]).
//!
//! # Record changes and commits
//!
//! Records can be added, edited and deleted through the admin API. The records and counts
//! endpoints then serve the generated rows minus the deleted ones, with edited values, followed
//! by the added records (ids `us_rc_<tag>_a<n>`). Each add or edit is one commit
//! (`us_vr_<tag>_<n>`); the sheet's import itself is the commit named in `commitId` of a page of an
//! unchanged sheet. `GET /v1/sheets/{id}/records` understands `ids` (repeated keys, at most 100),
//! `commitId` (the records a commit touched, as they are now) and `sinceCommitId` (the records
//! later commits touched); deleted records are never served.
//!
//! # Admin API
//!
//! No auth, JSON in and out; a refused request answers 400 or 404 with
//! `{"errors": [{"key": "<the bad field>", "message": "..."}]}`. [`AdminClient`] calls it from
//! another process; [`RunningSim`] has the same operations in-process.
//!
//! | Request | Does | Answers |
//! |---|---|---|
//! | `POST /_sim/submit` `{environmentId?, workbookId?, sheetSlug?, job?, rows?, parts?, contextIds?}` | creates a workbook (unless `workbookId`), a job, and the events `job:created`, `job:ready`; `parts: N` adds N part jobs with their `job:ready` (`isPart: true`); `contextIds: false` leaves the workbook and sheet ids out of the job events | [`Submitted`] |
//! | `POST /_sim/jobs` `{job?, workbookId \| sheetId, environmentId?}` | creates a job, in status `ready`, without any event | [`CreatedJob`] |
//! | `POST /_sim/sheets/{sheetId}/records` `{records: [{field: value}]}` or `{count: n}`, `eventShape?` | adds records: `records:created`, `commit:created`, `commit:completed` | [`RecordsChange`] |
//! | `PATCH /_sim/sheets/{sheetId}/records` `{records: [{id, values: {field: value}}], eventShape?}` | edits records: `records:updated` and the commit events | [`RecordsChange`] |
//! | `DELETE /_sim/sheets/{sheetId}/records` `{ids: [id], eventShape?}` | deletes records: `records:deleted` | [`RecordsChange`] |
//! | `GET /_sim/sheets/{sheetId}/records` | the sheet as it is now | `[`[`SheetRow`]`]` |
//! | `POST /_sim/events` `{environmentId?, topic, domain?, context?, payload?, allowUnknownDomain?, createdAt?}` | emits any event | [`SimEvent`] |
//! | `GET /_sim/events?environmentId=` | every event, with `acknowledgedAt` and `ackCount` | `[`[`SimEvent`]`]` |
//! | `GET /_sim/jobs`, `GET /_sim/jobs/{id}` | the jobs seen | `[`[`JobState`]`]`, [`JobState`] |
//! | `GET /_sim/stats` | the counters | [`SimStats`] |
//!
//! `eventShape` ([`EventShape`]) is `recordIds` (the default), `count`, `dataUrl` or
//! `versionId`: how the `records:*` and `commit:*` events name what changed.
//!
//! ```text
//! $ curl -s -X POST localhost:8788/_sim/submit -d '{"rows": 50}'
//! {"eventId":"us_evt_3f9a0c12_2","jobId":"us_jb_3f9a0c12_1","workbookId":"us_wb_3f9a0c12_1",
//!  "environmentId":"us_env_demo","sheets":[{"id":"us_sh_3f9a0c12_1-contacts","slug":"contacts","rows":25},
//!  {"id":"us_sh_3f9a0c12_1-companies","slug":"companies","rows":25}]}
//! $ curl -s -X POST localhost:8788/_sim/sheets/us_sh_3f9a0c12_1-contacts/records \
//!     -d '{"records": [{"firstName": "Ada", "email": "ada@example.com"}]}'
//! {"recordIds":["us_rc_3f9a0c12_a1"],"commitId":"us_vr_3f9a0c12_1","events":[...]}
//! $ curl -s -X PATCH localhost:8788/_sim/sheets/us_sh_3f9a0c12_1-contacts/records \
//!     -d '{"records": [{"id": "us_rc_3f9a0c12_a1", "values": {"age": 36}}]}'
//! $ curl -s -X DELETE localhost:8788/_sim/sheets/us_sh_3f9a0c12_1-contacts/records \
//!     -d '{"ids": ["us_rc_3f9a0c12_a1"]}'
//! $ curl -s -X POST localhost:8788/_sim/events -d '{"topic": "space:created"}'
//! $ curl -s 'localhost:8788/_sim/events?environmentId=us_env_demo'
//! $ curl -s -H 'Authorization: Bearer sk_demo' 'localhost:8788/v1/events?since=2024-05-02T00:00:00.000Z'
//! ```
//!
//! Admin endpoints are never subject to fault injection and are not counted in [`SimStats`].

mod admin;
mod client;
mod clock;
mod fields;
mod generate;
mod jobs;
mod legacy;
mod lock;
mod net;
pub mod receiver;
mod rejection;
mod server;
mod state;
mod webhook;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use admin::{
    CreatedJob, EmitEvent, EventRef, EventShape, JobRequest, NewRecords, RecordEdit, RecordsChange,
    SheetRow, SimEvent, SubmitRequest, Submitted, SubmittedPart, SubmittedSheet,
};
pub use client::AdminClient;
pub use legacy::{
    Portal2Row, WorkspaceNotification, WorkspaceRow, portal2_upload_bodies, portal2_upload_rows,
    workspace_rows, workspace_webhook_body,
};
pub use server::RunningSim;
pub use webhook::{
    WebhookReply, forwarded_event_body, legacy_webhook_body, post_webhook, send_webhook,
    submit_event_body,
};

/// Default `X-Api-Key` of the legacy API (`<access key id>+<secret>`).
pub const DEFAULT_LEGACY_API_KEY: &str = "demo-key+demo-secret";
/// Default Platform secret key, expected as `Authorization: Bearer sk_demo`; the key of
/// [`DEFAULT_ENVIRONMENT_ID`].
pub const DEFAULT_SECRET_KEY: &str = "sk_demo";
/// Id of the environment whose key is [`SimConfig::secret_key`]. The on-the-fly workbooks and
/// the events of the legacy-style helpers ([`submit_event_body`]) name it.
pub const DEFAULT_ENVIRONMENT_ID: &str = "us_env_demo";
/// The Platform's event domains (`Domain` of `@flatfile/api`). Every event the simulator emits
/// has one of them, except an admin-emitted event with `allowUnknownDomain`.
pub const DOMAINS: [&str; 15] = [
    "file",
    "space",
    "workbook",
    "flag",
    "job",
    "document",
    "sheet",
    "program",
    "secret",
    "cron",
    "environment",
    "data-clip",
    "canvas",
    "canvas-area",
    "thread",
];

/// The domain of an event of `topic`, by its family (the part before `:`).
///
/// A family named like a domain is that domain. The others: `records:*` and `commit:*` are
/// `workbook`, as in Flatfile's record-hook fixtures; `snapshot:*` and `layer:*` are `sheet`
/// (both belong to one sheet's data); `agent:*` is `environment` (an agent is deployed to one);
/// `action:*` is `space` (actions are mounted on a space or on what it holds). An unknown family
/// is returned as it is, which is not a domain.
pub fn domain_of_topic(topic: &str) -> &str {
    let family = topic.split_once(':').map_or(topic, |(family, _)| family);
    match family {
        "records" | "commit" => "workbook",
        "snapshot" | "layer" => "sheet",
        "agent" => "environment",
        "action" => "space",
        other => other,
    }
}

/// Slugs of the sheets a workbook can have, in order; a workbook has the first
/// [`SimConfig::sheets_per_workbook`] of them.
pub const SHEET_SLUGS: [&str; 4] = ["contacts", "companies", "deals", "tickets"];

/// What the simulator serves and how badly it behaves.
#[derive(Clone)]
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
    /// Secret key of the default environment, [`DEFAULT_ENVIRONMENT_ID`].
    pub secret_key: String,
    /// Further environments, each with its own key. Every key is a valid bearer token; a
    /// workbook created in one environment is invisible to the others' keys.
    pub environments: Vec<SimEnvironment>,
    /// Cap for `take` (legacy) and `pageSize` (Platform).
    pub max_page_size: u64,
    /// Order of `GET /v1/events` listings. Flatfile documents none, so clients must cope with
    /// both.
    pub events_order: EventsOrder,
    /// Render each data page (legacy rows, Platform records of an unchanged sheet) once, keep
    /// it in memory and serve the same bytes on every later request for it: a page server that
    /// is not the bottleneck of a benchmark. Memory grows with the pages read.
    pub prerender: bool,
}

/// The order `GET /v1/events` lists events in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventsOrder {
    /// Oldest first (ascending `createdAt`; emission order among equal timestamps).
    #[default]
    Oldest,
    /// Newest first (descending `createdAt`; the latest emitted first among equal timestamps).
    Newest,
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
            environments: Vec::new(),
            max_page_size: 10_000,
            events_order: EventsOrder::Oldest,
            prerender: false,
        }
    }
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("rows", &self.rows)
            .field("seed", &self.seed)
            .field("sheets_per_workbook", &self.sheets_per_workbook)
            .field("page_latency", &self.page_latency)
            .field("faults", &self.faults)
            .field("legacy_api_key", &"<redacted>")
            .field("secret_key", &"<redacted>")
            .field("environments", &self.environments)
            .field("max_page_size", &self.max_page_size)
            .field("events_order", &self.events_order)
            .field("prerender", &self.prerender)
            .finish()
    }
}

/// A Platform environment of the simulator and its secret key.
#[derive(Clone, PartialEq, Eq)]
pub struct SimEnvironment {
    /// Environment id, e.g. `us_env_other`.
    pub id: String,
    /// Its secret key, expected as `Authorization: Bearer <key>`.
    pub secret_key: String,
}

impl SimEnvironment {
    /// An environment with this id and key.
    pub fn new(id: impl Into<String>, secret_key: impl Into<String>) -> SimEnvironment {
        SimEnvironment {
            id: id.into(),
            secret_key: secret_key.into(),
        }
    }
}

impl std::fmt::Debug for SimEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimEnvironment")
            .field("id", &self.id)
            .field("secret_key", &"<redacted>")
            .finish()
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
        let mut ids = vec![DEFAULT_ENVIRONMENT_ID];
        let mut keys = vec![self.secret_key.as_str()];
        if self.secret_key.is_empty() {
            return Err(SimError::InvalidConfig(
                "the secret key of the default environment is empty".to_owned(),
            ));
        }
        for environment in &self.environments {
            let id = environment.id.as_str();
            if id.is_empty()
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(SimError::InvalidConfig(format!(
                    "environment id {id:?} must be non-empty letters, digits, '_' or '-'"
                )));
            }
            if ids.contains(&id) {
                return Err(SimError::InvalidConfig(format!(
                    "environment {id} is configured twice"
                )));
            }
            // Keys are never repeated in messages; the environment names which one is wrong.
            if environment.secret_key.is_empty() {
                return Err(SimError::InvalidConfig(format!(
                    "the secret key of environment {id} is empty"
                )));
            }
            if keys.contains(&environment.secret_key.as_str()) {
                return Err(SimError::InvalidConfig(format!(
                    "the secret key of environment {id} is also another environment's key"
                )));
            }
            ids.push(id);
            keys.push(&environment.secret_key);
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

    /// Ids of every environment, the default one first.
    pub fn environment_ids(&self) -> Vec<&str> {
        std::iter::once(DEFAULT_ENVIRONMENT_ID)
            .chain(self.environments.iter().map(|e| e.id.as_str()))
            .collect()
    }

    /// The environment a bearer token belongs to, if it is one of the configured keys.
    pub fn environment_of_key(&self, token: &str) -> Option<&str> {
        if token == self.secret_key {
            return Some(DEFAULT_ENVIRONMENT_ID);
        }
        self.environments
            .iter()
            .find(|environment| environment.secret_key == token)
            .map(|environment| environment.id.as_str())
    }

    /// The secret key of an environment.
    pub fn key_of_environment(&self, environment_id: &str) -> Option<&str> {
        if environment_id == DEFAULT_ENVIRONMENT_ID {
            return Some(&self.secret_key);
        }
        self.environments
            .iter()
            .find(|environment| environment.id == environment_id)
            .map(|environment| environment.secret_key.as_str())
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
    /// The job id, `us_jb_...`.
    pub id: String,
    /// A Platform `JobStatus`: `ready` once created by the admin API, `created` by
    /// `POST /v1/jobs`, then `executing` after an ack, `complete` or `failed`, or whatever a
    /// `PATCH` set.
    pub status: String,
    /// Every `progress` value sent with `ack` or `PATCH`, in order.
    pub progress: Vec<u8>,
    /// The last `info` sent with `ack`, `complete` or `fail`.
    pub info: Option<String>,
    /// `outcome.message` of the last `complete` or `fail`.
    pub outcome_message: Option<String>,
    /// How many `complete` and `fail` calls the job received.
    #[serde(default)]
    pub finishes: u32,
}

/// Counters of a running simulator. Request counters cover every `/rest`, `/workspace` and `/v1`
/// request,
/// including those answered with an injected fault or a 401.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// All `/rest` and `/v1` requests.
    pub requests: u64,
    /// `GET /rest/batch/{id}/rows`.
    pub legacy_rows: u64,
    /// `GET /workspace/{id}/sheet/{id}/records`.
    #[serde(default)]
    pub workspace_records: u64,
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
    /// `GET /v1/events` (the list).
    #[serde(default)]
    pub events: u64,
    /// `GET /v1/events/{id}`.
    #[serde(default)]
    pub event_gets: u64,
    /// `POST /v1/events/{id}/ack`.
    #[serde(default)]
    pub event_acks: u64,
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
    /// The simulator refused an admin request (`POST /_sim/submit`, a record change...).
    #[error("the simulator refused the request ({status}): {message}")]
    Rejected {
        /// HTTP status: 400 for a bad field, 404 for an unknown sheet or workbook.
        status: u16,
        /// The field at fault, e.g. `rows` or `records[2].id`.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// An admin request to a simulator in another process failed or got an unexpected answer.
    #[error("admin request {what} failed: {detail}")]
    Admin {
        /// Method and path.
        what: String,
        /// What went wrong.
        detail: String,
    },
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

/// Ids of the generated records of an on-the-fly sheet, in order; empty when the sheet does not
/// exist. Records changed through the admin API, and sheets of workbooks created by a submit
/// with their own `rows`, are read with [`RunningSim::sheet_rows`] or [`AdminClient::sheet_rows`].
pub fn record_ids(config: &SimConfig, sheet_id: &str) -> Vec<String> {
    match generate::decode_sheet(config, sheet_id) {
        Some(sheet) => {
            let key = generate::SheetKey::new(config.seed, &sheet);
            (0..sheet.rows).map(|index| key.record_id(index)).collect()
        }
        None => Vec::new(),
    }
}

/// The commit that imported a sheet's generated rows: the `commitId` of its pages until the admin
/// API changes the sheet, and a valid `commitId` or `sinceCommitId` after that. `None` when the id
/// is not a sheet id of this configuration.
pub fn import_commit_id(config: &SimConfig, sheet_id: &str) -> Option<String> {
    let sheet = generate::decode_sheet(config, sheet_id)?;
    Some(generate::SheetKey::new(config.seed, &sheet).commit_id())
}
