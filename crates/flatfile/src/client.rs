//! HTTP client for the legacy REST API and the Platform `/v1` API.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde::Serialize;
use serde_json::Value;

use crate::buffers::Buffers;
use crate::convert::{self, LegacyPage, RecordsPage, Sheet, Workbook};
use crate::error::{ApiError, is_retryable_status};
use crate::secret::Secret;
use body::{BodyChunks, BodyGate, BodyPermit};

/// How failed requests are repeated.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (0 counts as 1).
    pub max_attempts: u32,
    /// Upper bound of the first backoff; it doubles per attempt up to `max_backoff`, and the
    /// actual wait is drawn uniformly below it ("full jitter").
    pub initial_backoff: Duration,
    /// Upper bound of any backoff. A server's `Retry-After` may ask for longer and is obeyed.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Where and how to reach Flatfile.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Legacy REST API base, e.g. `https://api.us.flatfile.io` (a trailing slash is fine).
    pub legacy_api_url: String,
    /// Legacy API key `<keyId>+<secret>`, sent as `X-Api-Key`.
    pub legacy_api_key: Option<Secret>,
    /// Platform API base, e.g. `https://platform.flatfile.com/api`; requests go to
    /// `{api_url}/v1/…`. A base that already ends in `/v1` is used as is.
    pub api_url: String,
    /// Platform secret key, sent as `Authorization: Bearer`.
    pub secret_key: Option<Secret>,
    /// Limit for one attempt, from connecting until the whole body has arrived.
    pub request_timeout: Duration,
    /// Limit for establishing a connection.
    pub connect_timeout: Duration,
    /// Retry behaviour.
    pub retry: RetryPolicy,
}

impl ClientConfig {
    /// Default legacy API base.
    pub const DEFAULT_LEGACY_API_URL: &'static str = "https://api.us.flatfile.io";
    /// Default Platform API base (the host Flatfile's CLI and plugins use).
    pub const DEFAULT_API_URL: &'static str = "https://platform.flatfile.com/api";
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            legacy_api_url: Self::DEFAULT_LEGACY_API_URL.to_owned(),
            legacy_api_key: None,
            api_url: Self::DEFAULT_API_URL.to_owned(),
            secret_key: None,
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }
}

const LEGACY_KEY: &str = "legacy API key ([flatfile] legacy_api_key_env or legacy_api_key_file)";
const PLATFORM_KEY: &str = "Platform secret key ([flatfile] secret_key_env or secret_key_file)";

/// Bytes of an error body kept for the error message.
const ERROR_DETAIL_LIMIT: usize = 512;
/// Bytes of an error body read to look for a JSON error envelope.
const ERROR_BODY_READ_LIMIT: usize = 64 * 1024;

/// Most bytes reserved for a success body from its `Content-Length` before any arrive.
const PREALLOCATE_LIMIT: u64 = 64 * 1024 * 1024;
/// Bytes of success bodies read whole held at once, from the first byte read until decoded,
/// across every request of the client (one body is always allowed, however large). Requests
/// waiting on the server hold nothing, so the pages in flight are not limited by it; only
/// bodies that arrive together wait here, in their socket buffers, for the ones before them to
/// be converted. With 6.7 MB Platform pages, four bodies arriving at once took 27 MB beside
/// their batches; records pages are now converted as they arrive
/// ([`FlatfileClient::attempt_records`]) and take a share only when held whole.
const BODY_BYTES_AT_ONCE: u64 = 8 << 20;
/// Bodies smaller than this are read without a share of [`BODY_BYTES_AT_ONCE`]: answers such
/// as a sheet's counts or a job's never wait behind a page.
const UNGATED_BODY: u64 = 256 << 10;
/// A `Retry-After` longer than this is taken as a refusal: the call fails instead of hanging.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// One [`FlatfileClient::events_page`] request (`GET /v1/events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    /// `environmentId` (`us_env_…`); must not be empty.
    pub environment_id: String,
    /// `since`: only events created from this time on (whether the bound is inclusive is not
    /// documented), as an ISO 8601 date-time such as `2024-05-01T12:00:00.000Z`. Left out of
    /// the request when `None`; must not be empty.
    pub since: Option<String>,
    /// `pageSize`, at least 1 (the API's default is 10).
    pub page_size: u64,
    /// `pageNumber`, from 1.
    pub page_number: u64,
    /// `includeAcknowledged`: also list events that were already acknowledged.
    pub include_acknowledged: bool,
}

/// Which records of a sheet [`FlatfileClient::records_selection_page`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordsSelection {
    /// Every record of the sheet.
    All,
    /// The records with these ids, sent as repeated `ids=` keys: at most
    /// [`RecordsSelection::MAX_IDS`], none empty. An empty list selects nothing, so its page is
    /// empty and no request is sent.
    Ids(Vec<String>),
    /// The records changed in this commit (`commitId=`, a `us_vr_…` id).
    Commit(String),
    /// The records changed since this commit (`sinceCommitId=`).
    SinceCommit(String),
}

impl RecordsSelection {
    /// Most record ids the API accepts in one request.
    pub const MAX_IDS: usize = 100;
}

/// Client for both Flatfile APIs. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct FlatfileClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    legacy_base: Url,
    api_base: Url,
    legacy_key: Option<HeaderValue>,
    bearer: Option<HeaderValue>,
    retry: RetryPolicy,
    bodies: BodyGate,
    /// How long a success body waits at the fetch's [`AnswerGate`] at most.
    gate_wait: Duration,
    /// `429 Too Many Requests` answers so far, for callers that slow down when throttled.
    throttled: AtomicU64,
}

impl fmt::Debug for FlatfileClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlatfileClient")
            .field("legacy_api_url", &self.inner.legacy_base.as_str())
            .field(
                "legacy_api_key",
                &self.inner.legacy_key.as_ref().map(|_| "<redacted>"),
            )
            .field("api_url", &self.inner.api_base.as_str())
            .field(
                "secret_key",
                &self.inner.bearer.as_ref().map(|_| "<redacted>"),
            )
            .field("retry", &self.inner.retry)
            .finish()
    }
}

#[derive(Clone, Copy)]
enum Api {
    Legacy,
    Platform,
}

#[derive(Clone, Copy)]
enum HttpMethod {
    Get,
    Post,
}

impl HttpMethod {
    fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
        }
    }

    fn to_reqwest(self) -> Method {
        match self {
            HttpMethod::Get => Method::GET,
            HttpMethod::Post => Method::POST,
        }
    }
}

/// One request as every attempt sends it.
#[derive(Clone, Copy)]
struct Call<'a> {
    method: HttpMethod,
    /// The `endpoint` label of its metrics.
    endpoint: &'static str,
    url: &'a Url,
    headers: &'a HeaderMap,
    body: Option<&'a Bytes>,
    /// Where a success body's buffer comes from and goes back to, when the caller keeps spare
    /// ones.
    buffers: Option<&'a Buffers>,
}

/// A 2xx answer to one attempt, its body read whole but not decoded yet.
struct Answered {
    status: u16,
    body: Bytes,
    /// The body's share of [`BODY_BYTES_AT_ONCE`], held until it is decoded and dropped.
    _share: BodyPermit,
}

/// Why one attempt failed.
enum AttemptError {
    /// Worth another attempt (after at least `retry_after`, when the server said so).
    Retryable {
        error: ApiError,
        retry_after: Option<Duration>,
    },
    /// Final.
    Fatal(ApiError),
}

impl FlatfileClient {
    /// `429 Too Many Requests` answers this client (and its clones) received so far, retried
    /// or not: a caller that sees it grow is being throttled.
    pub fn throttled_answers(&self) -> u64 {
        self.inner.throttled.load(Ordering::Relaxed)
    }

    /// Builds the client: checks both base URLs and the credentials' header form, and sets up
    /// one connection pool. Redirects are not followed, so credentials never reach another host.
    pub fn new(config: ClientConfig) -> Result<Self, ApiError> {
        let legacy_base = parse_base_url(&config.legacy_api_url)?;
        let mut api_base = parse_base_url(&config.api_url)?;
        let ends_in_v1 = api_base
            .path_segments()
            .is_some_and(|mut segments| segments.rfind(|s| !s.is_empty()) == Some("v1"));
        if !ends_in_v1 {
            api_base
                .path_segments_mut()
                .expect("checked to be an http(s) URL, which has a path")
                .pop_if_empty()
                .push("v1");
        }
        let legacy_key = config
            .legacy_api_key
            .as_ref()
            .map(|key| header_value(key, "", LEGACY_KEY))
            .transpose()?;
        let bearer = config
            .secret_key
            .as_ref()
            .map(|key| header_value(key, "Bearer ", PLATFORM_KEY))
            .transpose()?;
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            // One connection per page in flight, each answer waiting in its own socket until the
            // read-ahead budget takes it; the workspace's Cargo.toml says why not HTTP/2.
            .http1_only()
            .user_agent(concat!("flatsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| ApiError::HttpClient {
                message: error_chain(&error),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                legacy_base,
                api_base,
                legacy_key,
                bearer,
                retry: config.retry,
                bodies: BodyGate::new(BODY_BYTES_AT_ONCE, UNGATED_BODY),
                gate_wait: config.request_timeout / 2,
                throttled: AtomicU64::new(0),
            }),
        })
    }

    /// `GET {legacy}/rest/batch/{batch_id}/rows?skip=&take=`: one page of a legacy import,
    /// converted to batch lines. The body is read into, and the lines written into, buffers
    /// from `buffers`; the body's goes back there once converted.
    pub async fn legacy_rows_page(
        &self,
        batch_id: &str,
        skip: u64,
        take: u64,
        buffers: &Buffers,
    ) -> Result<LegacyPage, ApiError> {
        let mut url = endpoint(
            &self.inner.legacy_base,
            &["rest", "batch", batch_id, "rows"],
        )?;
        url.query_pairs_mut()
            .append_pair("skip", &skip.to_string())
            .append_pair("take", &take.to_string());
        let headers = self.headers(Api::Legacy)?;
        let call = Call {
            method: HttpMethod::Get,
            endpoint: "legacy_rows",
            url: &url,
            headers: &headers,
            body: None,
            buffers: Some(buffers),
        };
        self.execute_call(call, |body| {
            let lines = buffers.take(convert::legacy_lines_capacity(body));
            convert::legacy_page_into(body, batch_id, skip, lines)
        })
        .await
    }

    /// `GET /v1/workbooks/{id}`.
    pub async fn workbook(&self, workbook_id: &str) -> Result<Workbook, ApiError> {
        let url = endpoint(&self.inner.api_base, &["workbooks", workbook_id])?;
        self.execute(
            HttpMethod::Get,
            Api::Platform,
            "workbook",
            url,
            None,
            convert::workbook,
        )
        .await
    }

    /// `GET /v1/sheets?workbookId=`.
    pub async fn sheets(&self, workbook_id: &str) -> Result<Vec<Sheet>, ApiError> {
        let mut url = endpoint(&self.inner.api_base, &["sheets"])?;
        url.query_pairs_mut().append_pair("workbookId", workbook_id);
        self.execute(
            HttpMethod::Get,
            Api::Platform,
            "sheets",
            url,
            None,
            convert::sheets,
        )
        .await
    }

    /// `GET /v1/sheets/{id}`.
    pub async fn sheet(&self, sheet_id: &str) -> Result<Sheet, ApiError> {
        let url = endpoint(&self.inner.api_base, &["sheets", sheet_id])?;
        self.execute(
            HttpMethod::Get,
            Api::Platform,
            "sheet",
            url,
            None,
            convert::sheet,
        )
        .await
    }

    /// `GET /v1/sheets/{id}/counts` → `data.counts.total`.
    pub async fn record_count(&self, sheet_id: &str) -> Result<u64, ApiError> {
        let url = endpoint(&self.inner.api_base, &["sheets", sheet_id, "counts"])?;
        self.execute(
            HttpMethod::Get,
            Api::Platform,
            "counts",
            url,
            None,
            convert::record_count,
        )
        .await
    }

    /// `GET /v1/sheets/{id}/records?pageSize=&pageNumber=`: one page (numbered from 1) of the
    /// whole sheet, converted to batch lines.
    pub async fn records_page(
        &self,
        sheet_id: &str,
        page_number: u64,
        page_size: u64,
    ) -> Result<RecordsPage, ApiError> {
        self.records_selection_page(sheet_id, &RecordsSelection::All, page_number, page_size)
            .await
    }

    /// `GET /v1/sheets/{id}/records?pageSize=&pageNumber=` plus the selection's keys (`ids=`
    /// repeated, `commitId=` or `sinceCommitId=`): one page (numbered from 1) of the selected
    /// records, converted to batch lines.
    ///
    /// Refused with [`ApiError::InvalidRequest`] before any request: page number or size 0, more
    /// than [`RecordsSelection::MAX_IDS`] ids, an empty record or commit id (the API would
    /// ignore it and answer with the whole sheet).
    pub async fn records_selection_page(
        &self,
        sheet_id: &str,
        selection: &RecordsSelection,
        page_number: u64,
        page_size: u64,
    ) -> Result<RecordsPage, ApiError> {
        check_paging(page_number, page_size)?;
        let mut url = endpoint(&self.inner.api_base, &["sheets", sheet_id, "records"])?;
        let mut query = Query::default();
        query
            .push("pageSize", &page_size.to_string())
            .push("pageNumber", &page_number.to_string());
        match selection {
            RecordsSelection::All => {}
            RecordsSelection::Ids(ids) => {
                if ids.len() > RecordsSelection::MAX_IDS {
                    return Err(ApiError::InvalidRequest {
                        message: format!(
                            "{} record ids asked for in one request; the API accepts at most {}",
                            ids.len(),
                            RecordsSelection::MAX_IDS
                        ),
                    });
                }
                if let Some(index) = ids.iter().position(String::is_empty) {
                    return Err(ApiError::InvalidRequest {
                        message: format!("record id {index} of the selection is empty"),
                    });
                }
                if ids.is_empty() {
                    return Ok(RecordsPage {
                        ndjson: Vec::new(),
                        rows: 0,
                        commit_id: None,
                    });
                }
                for id in ids {
                    query.push("ids", id);
                }
            }
            RecordsSelection::Commit(commit_id) => {
                check_not_empty(commit_id, "the commit id of the selection")?;
                query.push("commitId", commit_id);
            }
            RecordsSelection::SinceCommit(commit_id) => {
                check_not_empty(commit_id, "the since-commit id of the selection")?;
                query.push("sinceCommitId", commit_id);
            }
        }
        query.set_on(&mut url);
        self.execute_records(url).await
    }

    /// `POST /v1/jobs/{id}/ack` with `{info, progress}`; also used for progress updates.
    /// `progress` is a percentage and is capped at 100.
    pub async fn job_ack(&self, job_id: &str, info: &str, progress: u8) -> Result<(), ApiError> {
        #[derive(Serialize)]
        struct Ack<'a> {
            info: &'a str,
            progress: u8,
        }
        let body = Ack {
            info,
            progress: progress.min(100),
        };
        self.post_job(job_id, "ack", &body).await
    }

    /// `POST /v1/jobs/{id}/complete` with a success outcome the user acknowledges.
    pub async fn job_complete(&self, job_id: &str, message: &str) -> Result<(), ApiError> {
        #[derive(Serialize)]
        struct Outcome<'a> {
            acknowledge: bool,
            heading: &'a str,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct Complete<'a> {
            outcome: Outcome<'a>,
            info: &'a str,
        }
        let body = Complete {
            outcome: Outcome {
                acknowledge: true,
                heading: "Success",
                message,
            },
            info: message,
        };
        self.post_job(job_id, "complete", &body).await
    }

    /// `POST /v1/jobs/{id}/fail` with a failure outcome the user acknowledges.
    pub async fn job_fail(&self, job_id: &str, message: &str) -> Result<(), ApiError> {
        #[derive(Serialize)]
        struct Outcome<'a> {
            acknowledge: bool,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct Fail<'a> {
            info: &'a str,
            outcome: Outcome<'a>,
        }
        let body = Fail {
            info: message,
            outcome: Outcome {
                acknowledge: true,
                message,
            },
        };
        self.post_job(job_id, "fail", &body).await
    }

    async fn post_job<B: Serialize>(
        &self,
        job_id: &str,
        action: &str,
        body: &B,
    ) -> Result<(), ApiError> {
        let url = endpoint(&self.inner.api_base, &["jobs", job_id, action])?;
        let body = serde_json::to_vec(body).expect("job bodies are plain structs of strings");
        // The answer is the updated job, which nothing here needs; any 2xx is success.
        self.execute(
            HttpMethod::Post,
            Api::Platform,
            "job",
            url,
            Some(Bytes::from(body)),
            |_| Ok(()),
        )
        .await
    }

    /// Sends a request until it succeeds, fails for good, or runs out of attempts.
    ///
    /// `endpoint` names the kind of call in metrics: a small fixed set, never the URL, whose ids
    /// would give every import its own series.
    async fn execute<T>(
        &self,
        method: HttpMethod,
        api: Api,
        endpoint: &'static str,
        url: Url,
        body: Option<Bytes>,
        decode: impl Fn(&[u8]) -> Result<T, serde_json::Error>,
    ) -> Result<T, ApiError> {
        let headers = self.headers(api)?;
        let call = Call {
            method,
            endpoint,
            url: &url,
            headers: &headers,
            body: body.as_ref(),
            buffers: None,
        };
        self.execute_call(call, decode).await
    }

    /// [`Self::execute`] for a call already made up.
    async fn execute_call<T>(
        &self,
        call: Call<'_>,
        decode: impl Fn(&[u8]) -> Result<T, serde_json::Error>,
    ) -> Result<T, ApiError> {
        self.with_retries(call, |attempt| {
            self.attempt_and_decode(call, &decode, attempt)
        })
        .await
    }

    /// [`Self::execute`] for a records page, converted as its body arrives
    /// ([`convert::RecordsStream`]).
    async fn execute_records(&self, url: Url) -> Result<RecordsPage, ApiError> {
        let headers = self.headers(Api::Platform)?;
        let call = Call {
            method: HttpMethod::Get,
            endpoint: "records",
            url: &url,
            headers: &headers,
            body: None,
            buffers: None,
        };
        self.with_retries(call, |attempt| self.attempt_records(call, attempt))
            .await
    }

    /// Runs `once` as attempt 1, 2, ... until it succeeds, fails for good, or no attempt is
    /// left ([`Self::wait_to_retry`]), recording each attempt's status and duration.
    async fn with_retries<T, Attempt>(
        &self,
        call: Call<'_>,
        mut once: impl FnMut(u32) -> Attempt,
    ) -> Result<T, ApiError>
    where
        Attempt: Future<Output = Result<(T, u16), AttemptError>>,
    {
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let outcome = once(attempt).await;
            let status = match &outcome {
                Ok((_, status)) => recording::status_label(*status),
                Err(AttemptError::Retryable { error, .. } | AttemptError::Fatal(error)) => {
                    recording::error_status(error)
                }
            };
            recording::attempt_finished(call.endpoint, status, started.elapsed());
            let (error, retry_after) = match outcome {
                Ok((value, _)) => return Ok(value),
                Err(AttemptError::Fatal(error)) => return Err(error),
                Err(AttemptError::Retryable { error, retry_after }) => (error, retry_after),
            };
            self.wait_to_retry(call, error, retry_after, attempt)
                .await?;
            attempt += 1;
        }
    }

    /// Waits before attempt `attempt + 1` after `error`, or gives `error` back when no further
    /// attempt is allowed.
    async fn wait_to_retry(
        &self,
        call: Call<'_>,
        error: ApiError,
        retry_after: Option<Duration>,
        attempt: u32,
    ) -> Result<(), ApiError> {
        let Call {
            method,
            endpoint,
            url,
            ..
        } = call;
        if attempt >= self.inner.retry.max_attempts.max(1) {
            return Err(error);
        }
        if retry_after.is_some_and(|wait| wait > MAX_RETRY_AFTER) {
            tracing::warn!(
                method = method.as_str(),
                url = %url,
                retry_after_s = retry_after.map_or(0, |d| d.as_secs()),
                "Flatfile asked to wait too long, giving up"
            );
            return Err(error);
        }
        let delay = self.backoff(attempt).max(retry_after.unwrap_or_default());
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        recording::retried(endpoint, &error);
        match &error {
            ApiError::Status { status, .. } => tracing::warn!(
                method = method.as_str(),
                url = %url,
                status,
                attempt,
                delay_ms,
                "Retrying Flatfile request"
            ),
            ApiError::Transport { message, .. } | ApiError::Decode { message, .. } => {
                tracing::warn!(
                    method = method.as_str(),
                    url = %url,
                    error = %message,
                    attempt,
                    delay_ms,
                    "Retrying Flatfile request"
                );
            }
            other => tracing::warn!(
                method = method.as_str(),
                url = %url,
                error = %other,
                attempt,
                delay_ms,
                "Retrying Flatfile request"
            ),
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// One attempt, its answer decoded and its body's bytes recorded by `endpoint`; the
    /// answer's status beside it, for [`Self::with_retries`] to record.
    async fn attempt_and_decode<T>(
        &self,
        call: Call<'_>,
        decode: &impl Fn(&[u8]) -> Result<T, serde_json::Error>,
        attempt: u32,
    ) -> Result<(T, u16), AttemptError> {
        let Call { endpoint, url, .. } = call;
        match self.attempt(call, attempt).await {
            Ok(answered) => {
                recording::body_received(endpoint, answered.body.len());
                // A connection that drops mid-body can leave a truncated but well-framed body
                // (e.g. a proxy that ends a chunked response early), so a decode failure is
                // retried.
                decode(&answered.body)
                    .map(|value| (value, answered.status))
                    .map_err(|error| AttemptError::Retryable {
                        error: ApiError::Decode {
                            url: url.to_string(),
                            message: error.to_string(),
                        },
                        retry_after: None,
                    })
            }
            Err(error) => Err(error),
        }
    }

    async fn attempt(&self, call: Call<'_>, attempt: u32) -> Result<Answered, AttemptError> {
        let response = self.send(call, attempt).await?;
        let status = response.status();
        let share = self.inner.bodies.admit(response.content_length()).await;
        let bytes = read_success_body(response, call.buffers)
            .await
            .map_err(|error| transport_error(call, attempt, error))?;
        self.inner.bodies.read(bytes.len());
        tracing::debug!(
            method = call.method.as_str(),
            url = %call.url,
            status = status.as_u16(),
            bytes = bytes.len(),
            "Flatfile response"
        );
        Ok(Answered {
            status: status.as_u16(),
            body: bytes,
            _share: share,
        })
    }

    /// One attempt at a records page, converted chunk by chunk as the body arrives, so no
    /// share of [`BODY_BYTES_AT_ONCE`] is taken: what is held is the page's lines, which the
    /// caller's read-ahead budgets. A body the stream cannot take (another opening than
    /// `{"data":{"records":[`) is held whole within the budget; one it gave up on part way is
    /// read again whole, in the same attempt, and converted as a whole body is.
    async fn attempt_records(
        &self,
        call: Call<'_>,
        attempt: u32,
    ) -> Result<(RecordsPage, u16), AttemptError> {
        let response = self.send(call, attempt).await?;
        let status = response.status().as_u16();
        let announced = response.content_length();
        let mut chunks = BodyChunks::new(response);
        let mut stream = convert::RecordsStream::new(announced);
        let mut whole_share: Option<BodyPermit> = None;
        let mut received = 0;
        let mut read_again = false;
        while let Some(chunk) = chunks
            .next()
            .await
            .map_err(|error| transport_error(call, attempt, error))?
        {
            received += chunk.len();
            match stream.feed(&chunk) {
                convert::Fed::Streaming => {}
                convert::Fed::HeldWhole => {
                    if whole_share.is_none() {
                        whole_share = Some(self.inner.bodies.admit(announced).await);
                    }
                }
                convert::Fed::ReadAgain => {
                    read_again = true;
                    break;
                }
            }
        }
        drop(chunks);
        recording::body_received(call.endpoint, received);
        let decode_error = |error: serde_json::Error| AttemptError::Retryable {
            error: ApiError::Decode {
                url: call.url.to_string(),
                message: error.to_string(),
            },
            retry_after: None,
        };
        if !read_again {
            let held = stream.held_bytes();
            match stream.finish().map_err(decode_error)? {
                convert::Finished::Page(page) => {
                    tracing::debug!(
                        url = %call.url,
                        status,
                        bytes = received,
                        held,
                        lines_bytes = page.ndjson.len(),
                        "Flatfile records page converted as it arrived"
                    );
                    return Ok((page, status));
                }
                convert::Finished::ReadAgain => {}
            }
        }
        drop(whole_share);
        // Rare: the fast conversion met something it cannot vouch for after letting go of
        // records it had converted, so the definition (serde) converts the page read whole.
        tracing::debug!(url = %call.url, "Reading the records page again whole");
        let answered = self.attempt(call, attempt).await?;
        recording::body_received(call.endpoint, answered.body.len());
        let page = convert::records_page(&answered.body).map_err(decode_error)?;
        Ok((page, answered.status))
    }

    /// Sends one attempt; a success answer comes back with its body not read yet.
    async fn send(&self, call: Call<'_>, attempt: u32) -> Result<reqwest::Response, AttemptError> {
        let Call {
            method,
            url,
            headers,
            body,
            ..
        } = call;
        let mut request = self
            .inner
            .http
            .request(method.to_reqwest(), url.clone())
            .headers(headers.clone());
        if let Some(body) = body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        } else if matches!(method, HttpMethod::Post) {
            // Without a body the request would carry no length at all, which some proxies
            // answer with 411 Length Required; browsers and Node send an explicit 0 too.
            request = request.header(header::CONTENT_LENGTH, "0");
        }
        let response = request
            .send()
            .await
            .map_err(|error| transport_error(call, attempt, error))?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            self.inner.throttled.fetch_add(1, Ordering::Relaxed);
        }
        if status.is_success() {
            answer::answer_arrived(self.inner.gate_wait).await;
            return Ok(response);
        }

        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let detail = if status.is_redirection() {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("no Location");
            // Following it would send the credentials along; the configured URL must be fixed.
            truncate_detail(format!(
                "redirect to {location} not followed; check the configured API URL"
            ))
        } else {
            error_detail(response).await
        };
        let error = ApiError::Status {
            method: method.as_str(),
            url: url.to_string(),
            status: status.as_u16(),
            body: detail,
        };
        if is_retryable_status(status.as_u16()) {
            Err(AttemptError::Retryable { error, retry_after })
        } else {
            Err(AttemptError::Fatal(error))
        }
    }

    fn headers(&self, api: Api) -> Result<HeaderMap, ApiError> {
        let mut headers = HeaderMap::with_capacity(3);
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        match api {
            Api::Legacy => {
                let key = self
                    .inner
                    .legacy_key
                    .clone()
                    .ok_or(ApiError::MissingCredential { which: LEGACY_KEY })?;
                headers.insert(HeaderName::from_static("x-api-key"), key);
            }
            Api::Platform => {
                let bearer = self
                    .inner
                    .bearer
                    .clone()
                    .ok_or(ApiError::MissingCredential {
                        which: PLATFORM_KEY,
                    })?;
                headers.insert(header::AUTHORIZATION, bearer);
                // What Flatfile's own SDK sends on every call: reading must not trigger the
                // customer's hooks.
                headers.insert(
                    HeaderName::from_static("x-disable-hooks"),
                    HeaderValue::from_static("true"),
                );
            }
        }
        Ok(headers)
    }

    /// Full-jitter exponential backoff before attempt `attempt + 1`.
    fn backoff(&self, attempt: u32) -> Duration {
        let policy = &self.inner.retry;
        let ceiling = policy
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(policy.max_backoff);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=ceiling_ms))
    }
}

fn parse_base_url(raw: &str) -> Result<Url, ApiError> {
    let invalid = |url: String, message: &str| ApiError::InvalidUrl {
        url,
        message: message.to_owned(),
    };
    let url = Url::parse(raw.trim()).map_err(|error| ApiError::InvalidUrl {
        url: redact_userinfo(raw),
        message: error.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            redact_userinfo(raw),
            "the scheme must be http or https",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(redact_userinfo(raw), "the URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            redact_userinfo(raw),
            "the URL must not contain a user name or password; configure the API key instead",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            url.to_string(),
            "the URL must not contain a query or fragment",
        ));
    }
    Ok(url)
}

/// A query string whose keys and values are percent-encoded strictly: every byte except
/// `A-Za-z0-9-._~` becomes `%XX`. Unlike the form encoding of `Url::query_pairs_mut`, a space
/// becomes `%20` rather than `+`, which a server that does not decode forms would keep as a `+`.
#[derive(Default)]
struct Query(String);

impl Query {
    fn push(&mut self, key: &str, value: &str) -> &mut Self {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        push_percent_encoded(&mut self.0, key);
        self.0.push('=');
        push_percent_encoded(&mut self.0, value);
        self
    }

    fn set_on(&self, url: &mut Url) {
        url.set_query(Some(&self.0));
    }
}

fn push_percent_encoded(out: &mut String, text: &str) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            write!(out, "%{byte:02X}").expect("writing to a String cannot fail");
        }
    }
}

/// Page numbers start at 1, and a page of size 0 would make "a short page is the last" loop
/// forever.
fn check_paging(page_number: u64, page_size: u64) -> Result<(), ApiError> {
    if page_number == 0 {
        return Err(ApiError::InvalidRequest {
            message: "page numbers start at 1, got 0".to_owned(),
        });
    }
    if page_size == 0 {
        return Err(ApiError::InvalidRequest {
            message: "the page size must be at least 1".to_owned(),
        });
    }
    Ok(())
}

/// An empty filter value is ignored by the API, which would then answer with more than was
/// asked for.
fn check_not_empty(value: &str, what: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::InvalidRequest {
            message: format!("{what} is empty"),
        });
    }
    Ok(())
}

/// `base` with `segments` appended, each percent-encoded as one path segment, so an id from a
/// webhook body cannot change the path's shape.
fn endpoint(base: &Url, segments: &[&str]) -> Result<Url, ApiError> {
    if let Some(bad) = segments
        .iter()
        .find(|s| s.is_empty() || **s == "." || **s == "..")
    {
        return Err(ApiError::InvalidUrl {
            url: base.to_string(),
            message: format!("{bad:?} cannot be used as an id in a URL path"),
        });
    }
    let mut url = base.clone();
    url.path_segments_mut()
        .expect("base URLs are checked to be http(s), which have a path")
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// Removes `user:password@` from something that looks like a URL, for error messages.
fn redact_userinfo(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &raw[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_len].rfind('@') {
        Some(at) => format!(
            "{}<redacted>@{}",
            &raw[..authority_start],
            &raw[authority_start + at + 1..]
        ),
        None => raw.to_owned(),
    }
}

fn header_value(
    secret: &Secret,
    prefix: &str,
    which: &'static str,
) -> Result<HeaderValue, ApiError> {
    // A key read from a file usually ends with a newline; keys themselves never hold whitespace.
    let key = secret.expose().trim();
    if key.is_empty() {
        return Err(ApiError::InvalidCredential {
            which,
            reason: "it is empty",
        });
    }
    let mut value = HeaderValue::from_str(&format!("{prefix}{key}")).map_err(|_| {
        ApiError::InvalidCredential {
            which,
            reason: "it contains characters that are not allowed in an HTTP header",
        }
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// A failure of the connection during `attempt` of `call`.
fn transport_error(call: Call<'_>, attempt: u32, error: reqwest::Error) -> AttemptError {
    AttemptError::Retryable {
        error: ApiError::Transport {
            method: call.method.as_str(),
            url: call.url.to_string(),
            attempts: attempt,
            message: error_chain(&error.without_url()),
        },
        retry_after: None,
    }
}

/// A success body, read chunk by chunk into one buffer sized from `Content-Length`.
/// `Response::bytes` gathers the chunks and then copies them into a second buffer, so a
/// 7 MB records page briefly took 14 MB for every page in flight.
/// The buffer comes from `buffers` when given, and goes back there when the body is dropped.
async fn read_success_body(
    response: reqwest::Response,
    buffers: Option<&Buffers>,
) -> Result<Bytes, reqwest::Error> {
    // The announced length only sizes the first allocation; a server that announces more
    // than it sends costs at most this much up front.
    let announced = response.content_length().unwrap_or(0);
    let reserve = usize::try_from(announced.min(PREALLOCATE_LIMIT)).unwrap_or(0);
    let mut body = match buffers {
        Some(buffers) => buffers.take(reserve),
        None => Vec::with_capacity(reserve),
    };
    let mut chunks = BodyChunks::new(response);
    while let Some(chunk) = chunks.next().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(match buffers {
        Some(buffers) => buffers.share(body),
        None => Bytes::from(body),
    })
}

/// `Retry-After` as delta-seconds or an HTTP-date; a date in the past means "now".
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The useful part of an error response: the message(s) of a Flatfile error envelope, or the
/// start of the body.
async fn error_detail(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    // Best effort: a body that breaks off still yields what arrived.
    while body.len() < ERROR_BODY_READ_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    if let Some(message) = envelope_message(&body) {
        return truncate_detail(message);
    }
    let start = &body[..body.len().min(ERROR_DETAIL_LIMIT)];
    truncate_detail(String::from_utf8_lossy(start).trim().to_owned())
}

/// Messages from `{"errors":[{"key","message"}]}` (Platform) or `{"statusCode","message","error"}`
/// (legacy; `message` may be a list).
fn envelope_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    if let Some(errors) = value.get("errors").and_then(Value::as_array) {
        let messages: Vec<String> = errors
            .iter()
            .filter_map(|error| {
                let message = error.get("message").and_then(Value::as_str)?;
                Some(match error.get("key").and_then(Value::as_str) {
                    Some(key) if !key.is_empty() => format!("{key}: {message}"),
                    _ => message.to_owned(),
                })
            })
            .collect();
        if !messages.is_empty() {
            return Some(messages.join("; "));
        }
    }
    let message = match value.get("message")? {
        Value::String(message) => message.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("; "),
        _ => return None,
    };
    match value.get("error").and_then(Value::as_str) {
        Some(error) if !error.is_empty() && error != message => Some(format!("{error}: {message}")),
        _ => Some(message),
    }
}

/// Caps a detail at [`ERROR_DETAIL_LIMIT`] bytes, on a char boundary.
fn truncate_detail(mut detail: String) -> String {
    if detail.len() > ERROR_DETAIL_LIMIT {
        let mut end = ERROR_DETAIL_LIMIT;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
    }
    detail
}

/// An error and its causes, `outer: inner: …`, skipping causes the outer text already contains.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

mod answer;
mod body;
mod data_url;
mod events;
mod jobs;
mod probe;
mod recording;
mod workspace;

pub use answer::{AnswerGate, answer_arrived, with_answer_gate};
pub use data_url::DataUrlTarget;
pub use jobs::JobInfo;
pub use workspace::WorkspacePage;

#[cfg(test)]
mod tests;
