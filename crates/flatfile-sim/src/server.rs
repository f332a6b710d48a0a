//! The HTTP server: routes, auth, fault injection, job bookkeeping and statistics.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use serde_json::{Value as Json, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::generate::{self, SheetRef};
use crate::{JobState, SimConfig, SimStats, clock};

/// A simulator serving on a local port until [`RunningSim::shutdown`] (or drop).
pub struct RunningSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningSim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RunningSim {
    /// Binds `listen` (port 0 picks a free port) and serves in a task of the current tokio
    /// runtime.
    pub async fn start(config: SimConfig, listen: SocketAddr) -> io::Result<RunningSim> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let app = router(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    // A dropped sender means the handle is gone: stop as well.
                    let _ = stopped.await;
                })
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "Simulator server stopped");
            }
        });
        tracing::debug!(%addr, "Simulator listening");
        Ok(RunningSim {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, the base URL of both the legacy and the Platform API (Platform paths
    /// start with `/v1`). A wildcard listen address is replaced by loopback.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// The state of a job the server has seen, if any.
    pub fn job(&self, job_id: &str) -> Option<JobState> {
        self.shared.job_state(job_id)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        lock(&self.shared.stats).clone()
    }

    /// Stops accepting connections, lets requests in flight finish (at most 5 s), and returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            tracing::warn!("Simulator did not stop within 5 s, aborting it");
            task.abort();
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Locks a mutex, ignoring poisoning: every critical section leaves the data consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Shared {
    config: SimConfig,
    fault_seed: u64,
    requests: AtomicU64,
    stats: Mutex<SimStats>,
    /// Method + path + query -> instant before which a retry is early.
    retry_not_before: Mutex<HashMap<String, Instant>>,
    jobs: Mutex<HashMap<String, JobRecord>>,
}

#[derive(Clone, Debug)]
struct JobRecord {
    status: &'static str,
    progress: Vec<u8>,
    info: Option<String>,
    outcome: Option<Json>,
    created_ms: u64,
    updated_ms: u64,
    started_ms: Option<u64>,
    finished_ms: Option<u64>,
}

impl JobRecord {
    fn new() -> JobRecord {
        let now = clock::now_ms();
        JobRecord {
            status: "created",
            progress: Vec::new(),
            info: None,
            outcome: None,
            created_ms: now,
            updated_ms: now,
            started_ms: None,
            finished_ms: None,
        }
    }

    fn is_finished(&self) -> bool {
        matches!(self.status, "complete" | "failed")
    }

    fn state(&self, id: &str) -> JobState {
        JobState {
            id: id.to_owned(),
            status: self.status.to_owned(),
            progress: self.progress.clone(),
            info: self.info.clone(),
            outcome_message: self
                .outcome
                .as_ref()
                .and_then(|outcome| outcome.get("message"))
                .and_then(Json::as_str)
                .map(str::to_owned),
        }
    }

    fn to_json(&self, id: &str) -> Json {
        // The simulator does not link jobs to workbooks: the job:ready event carries the
        // workbook id, and nothing in flatsync reads it from the job.
        let source = "us_wb_sim";
        json!({ "data": {
            "id": id,
            "createdBy": generate::ACTOR_ID,
            "createdAt": clock::iso_millis(self.created_ms),
            "updatedAt": clock::iso_millis(self.updated_ms),
            "startedAt": self.started_ms.map(clock::iso_millis),
            "finishedAt": self.finished_ms.map(clock::iso_millis),
            "environmentId": generate::ENVIRONMENT_ID,
            "spaceId": generate::SPACE_ID,
            "type": "workbook",
            "operation": "submitActionFg",
            "source": source,
            "config": {},
            "trigger": "immediate",
            "status": self.status,
            "progress": self.progress.last().copied().unwrap_or(0),
            "mode": "foreground",
            "input": {},
            "subject": { "type": "resource", "id": source },
            "info": self.info,
            "outcome": self.outcome,
            "managed": true,
        }})
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Error,
    RateLimit,
    Drop,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    LegacyRows,
    Workbooks,
    Sheets,
    Counts,
    Records,
    Jobs,
    Other,
}

fn classify(path: &str) -> Kind {
    if let Some(rest) = path.strip_prefix("/rest/batch/") {
        return if rest.ends_with("/rows") && rest.matches('/').count() == 1 {
            Kind::LegacyRows
        } else {
            Kind::Other
        };
    }
    if path.starts_with("/v1/workbooks/") {
        return Kind::Workbooks;
    }
    if path == "/v1/sheets" {
        return Kind::Sheets;
    }
    if let Some(rest) = path.strip_prefix("/v1/sheets/") {
        return match rest.split_once('/') {
            None => Kind::Sheets,
            Some((_, "counts")) => Kind::Counts,
            Some((_, "records")) => Kind::Records,
            Some(_) => Kind::Other,
        };
    }
    if path.starts_with("/v1/jobs/") {
        return Kind::Jobs;
    }
    Kind::Other
}

impl Shared {
    fn new(config: SimConfig) -> Shared {
        Shared {
            fault_seed: generate::mix(config.seed ^ 0xFA01_7FA0_17FA_017F),
            config,
            requests: AtomicU64::new(0),
            stats: Mutex::new(SimStats::default()),
            retry_not_before: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
        }
    }

    /// Fault for the `n`-th request: one uniform draw split into the configured fractions, so the
    /// rates hold exactly in expectation and a seed replays the same sequence.
    fn fault_for(&self, n: u64) -> Fault {
        let draw = generate::mix(self.fault_seed.wrapping_add(n));
        let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
        let faults = &self.config.faults;
        let mut threshold = faults.error_rate;
        if unit < threshold {
            return Fault::Error;
        }
        threshold += faults.rate_limit_rate;
        if unit < threshold {
            return Fault::RateLimit;
        }
        threshold += faults.drop_rate;
        if unit < threshold {
            return Fault::Drop;
        }
        Fault::None
    }

    fn job_state(&self, id: &str) -> Option<JobState> {
        lock(&self.jobs).get(id).map(|job| job.state(id))
    }

    fn count_unauthorized(&self) {
        lock(&self.stats).unauthorized += 1;
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/rest/batch/{batch_id}/rows", get(legacy_rows))
        .route("/v1/workbooks/{workbook_id}", get(get_workbook))
        .route("/v1/sheets", get(list_sheets))
        .route("/v1/sheets/{sheet_id}", get(get_sheet))
        .route("/v1/sheets/{sheet_id}/counts", get(sheet_counts))
        .route("/v1/sheets/{sheet_id}/records", get(sheet_records))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{job_id}", get(get_job))
        .route("/v1/jobs/{job_id}/ack", post(ack_job))
        .route("/v1/jobs/{job_id}/complete", post(complete_job))
        .route("/v1/jobs/{job_id}/fail", post(fail_job))
        .route("/_sim/jobs/{job_id}", get(admin_job))
        .route("/_sim/stats", get(admin_stats))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            count_and_inject_faults,
        ))
        .with_state(shared)
}

/// Counts every API request, notes early retries, and replaces the answer with an injected fault
/// when the draw says so.
async fn count_and_inject_faults(
    State(sim): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    if !(path.starts_with("/rest/") || path.starts_with("/v1/") || path == "/v1") {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let retry_key = format!(
        "{method} {}",
        request
            .uri()
            .path_and_query()
            .map_or(path.as_str(), |target| target.as_str())
    );
    let arrived = Instant::now();
    let early = {
        let mut not_before = lock(&sim.retry_not_before);
        match not_before.get(&retry_key) {
            Some(deadline) if arrived < *deadline => true,
            Some(_) => {
                not_before.remove(&retry_key);
                false
            }
            None => false,
        }
    };
    let fault = sim.fault_for(sim.requests.fetch_add(1, Ordering::Relaxed));
    let legacy = path.starts_with("/rest/");
    let alternate_error = {
        let mut stats = lock(&sim.stats);
        stats.requests += 1;
        match classify(&path) {
            Kind::LegacyRows => stats.legacy_rows += 1,
            Kind::Workbooks => stats.workbooks += 1,
            Kind::Sheets => stats.sheets += 1,
            Kind::Counts => stats.counts += 1,
            Kind::Records => stats.records += 1,
            Kind::Jobs => stats.jobs += 1,
            Kind::Other => stats.other += 1,
        }
        if early {
            stats.early_retries += 1;
        }
        match fault {
            Fault::None => {}
            Fault::Error => stats.injected_errors += 1,
            Fault::RateLimit => stats.injected_rate_limits += 1,
            Fault::Drop => stats.injected_drops += 1,
        }
        stats.injected_errors % 2 == 0
    };
    if early {
        tracing::warn!(method = %method, path = %path, "Request retried before Retry-After elapsed");
    }
    let response = match fault {
        Fault::None => next.run(request).await,
        Fault::Error => {
            let status = if alternate_error {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            api_error(legacy, status, None, "Simulated server error")
        }
        Fault::RateLimit => {
            let retry_after = sim.config.faults.retry_after_secs;
            let mut not_before = lock(&sim.retry_not_before);
            // URLs that were never retried would pile up in a long run: drop elapsed deadlines.
            if not_before.len() >= 10_000 {
                not_before.retain(|_, deadline| *deadline > arrived);
            }
            not_before.insert(retry_key, arrived + Duration::from_secs(retry_after));
            drop(not_before);
            let mut response = api_error(
                legacy,
                StatusCode::TOO_MANY_REQUESTS,
                None,
                "Too many requests",
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after));
            response
        }
        Fault::Drop => cut_short(next.run(request).await).await,
    };
    tracing::debug!(
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        fault = ?fault,
        "Request served"
    );
    response
}

/// Sends the head and half of the body, then fails the body stream so hyper aborts the
/// connection: the client sees a truncated body, as when a proxy or the network cuts it.
async fn cut_short(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let head = bytes.slice(..bytes.len() / 2);
    parts.headers.remove(CONTENT_LENGTH);
    let chunks = futures_util::stream::unfold(Some(head), |state| async move {
        let head = state?;
        Some((Ok::<Bytes, io::Error>(head), None))
    });
    let failure = futures_util::stream::once(async {
        // Let hyper flush the first half before the error tears the connection down.
        tokio::time::sleep(Duration::from_millis(20)).await;
        Err::<Bytes, io::Error>(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection cut by flatfile-sim fault injection",
        ))
    });
    Response::from_parts(parts, Body::from_stream(chunks.chain(failure)))
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json_value(status: StatusCode, body: &Json) -> Response {
    json_bytes(
        status,
        serde_json::to_vec(body).expect("a serde_json::Value always serializes"),
    )
}

/// An error in the envelope of the API the request belongs to: legacy
/// `{statusCode, message, error}`, Platform `{errors: [{key?, message}]}`.
fn api_error(legacy: bool, status: StatusCode, key: Option<&str>, message: &str) -> Response {
    let body = if legacy {
        json!({
            "statusCode": status.as_u16(),
            "message": message,
            "error": status.canonical_reason().unwrap_or("Error"),
        })
    } else {
        let mut error = json!({ "message": message });
        if let Some(key) = key {
            error["key"] = json!(key);
        }
        json!({ "errors": [error] })
    };
    json_value(status, &body)
}

/// A refused request; answered in the envelope of its API (see [`api_error`]).
#[derive(Debug)]
struct ApiError {
    legacy: bool,
    status: StatusCode,
    key: Option<&'static str>,
    message: String,
}

impl ApiError {
    fn legacy(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            legacy: true,
            status,
            key: None,
            message: message.into(),
        }
    }

    fn platform(
        status: StatusCode,
        key: Option<&'static str>,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            legacy: false,
            status,
            key,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        api_error(self.legacy, self.status, self.key, &self.message)
    }
}

fn legacy_auth(sim: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    if given == Some(sim.config.legacy_api_key.as_str()) {
        return Ok(());
    }
    sim.count_unauthorized();
    Err(ApiError::legacy(StatusCode::UNAUTHORIZED, "Unauthorized"))
}

fn platform_auth(sim: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if token == Some(sim.config.secret_key.as_str()) {
        return Ok(());
    }
    sim.count_unauthorized();
    let message = if token.is_some() {
        "Invalid bearer token"
    } else {
        "Missing bearer token"
    };
    Err(ApiError::platform(StatusCode::UNAUTHORIZED, None, message))
}

/// Reads an optional unsigned integer query parameter.
fn query_u64(
    query: &HashMap<String, String>,
    name: &'static str,
    default: u64,
    legacy: bool,
) -> Result<u64, ApiError> {
    match query.get(name) {
        None => Ok(default),
        Some(text) => text.trim().parse().map_err(|_| ApiError {
            legacy,
            status: StatusCode::BAD_REQUEST,
            key: Some(name),
            message: format!("{name} must be a non-negative integer"),
        }),
    }
}

async fn legacy_rows(
    State(sim): State<Arc<Shared>>,
    Path(batch_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    legacy_auth(&sim, &headers)?;
    let skip = query_u64(&query, "skip", 0, true)?;
    let take = query_u64(&query, "take", 50, true)?;
    if take == 0 {
        return Err(ApiError::legacy(
            StatusCode::BAD_REQUEST,
            "take must be at least 1",
        ));
    }
    let take = take.min(sim.config.max_page_size);
    pause(&sim).await;
    let mut body = Vec::with_capacity(page_capacity(take, sim.config.rows, 500));
    generate::write_legacy_page(
        &mut body,
        sim.config.seed,
        &batch_id,
        sim.config.rows,
        skip,
        take,
    );
    Ok(json_bytes(StatusCode::OK, body))
}

async fn pause(sim: &Shared) {
    if !sim.config.page_latency.is_zero() {
        tokio::time::sleep(sim.config.page_latency).await;
    }
}

/// Buffer to reserve for a page, from the measured size of generated rows; bounded so a huge
/// page size does not reserve gigabytes up front.
fn page_capacity(page_size: u64, rows: u64, bytes_per_row: u64) -> usize {
    usize::try_from(page_size.min(rows).min(20_000) * bytes_per_row + 256).unwrap_or(1 << 20)
}

fn find_sheet(sim: &Shared, sheet_id: &str) -> Result<SheetRef, ApiError> {
    generate::decode_sheet(&sim.config, sheet_id).ok_or_else(|| {
        ApiError::platform(
            StatusCode::NOT_FOUND,
            Some("sheetId"),
            format!("Sheet {sheet_id} not found"),
        )
    })
}

fn find_workbook(sim: &Shared, workbook_id: &str) -> Result<Vec<SheetRef>, ApiError> {
    generate::workbook_sheet_refs(&sim.config, workbook_id).ok_or_else(|| {
        ApiError::platform(
            StatusCode::NOT_FOUND,
            Some("workbookId"),
            format!("Workbook {workbook_id} not found"),
        )
    })
}

async fn get_workbook(
    State(sim): State<Arc<Shared>>,
    Path(workbook_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    platform_auth(&sim, &headers)?;
    let sheets = find_workbook(&sim, &workbook_id)?;
    let workbook = generate::workbook_json(sim.config.seed, &workbook_id, &sheets);
    Ok(json_value(StatusCode::OK, &json!({ "data": workbook })))
}

async fn list_sheets(
    State(sim): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    platform_auth(&sim, &headers)?;
    let Some(workbook_id) = query.get("workbookId") else {
        return Err(ApiError::platform(
            StatusCode::BAD_REQUEST,
            Some("workbookId"),
            "workbookId is required",
        ));
    };
    let sheets: Vec<Json> = find_workbook(&sim, workbook_id)?
        .iter()
        .map(|sheet| generate::sheet_json(sim.config.seed, sheet))
        .collect();
    Ok(json_value(StatusCode::OK, &json!({ "data": sheets })))
}

async fn get_sheet(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    platform_auth(&sim, &headers)?;
    let sheet = find_sheet(&sim, &sheet_id)?;
    let body = json!({ "data": generate::sheet_json(sim.config.seed, &sheet) });
    Ok(json_value(StatusCode::OK, &body))
}

async fn sheet_counts(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    platform_auth(&sim, &headers)?;
    let sheet = find_sheet(&sim, &sheet_id)?;
    let body = json!({ "data": { "counts": generate::counts_json(&sheet), "success": true } });
    Ok(json_value(StatusCode::OK, &body))
}

async fn sheet_records(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    platform_auth(&sim, &headers)?;
    let sheet = find_sheet(&sim, &sheet_id)?;
    let page_size = query_u64(&query, "pageSize", 10_000, false)?;
    let page_number = query_u64(&query, "pageNumber", 1, false)?;
    if page_size == 0 || page_number == 0 {
        return Err(ApiError::platform(
            StatusCode::BAD_REQUEST,
            Some(if page_size == 0 {
                "pageSize"
            } else {
                "pageNumber"
            }),
            "pageSize and pageNumber start at 1",
        ));
    }
    let page_size = page_size.min(sim.config.max_page_size);
    pause(&sim).await;
    let mut body = Vec::with_capacity(page_capacity(page_size, sheet.rows, 750));
    generate::write_records_page(&mut body, sim.config.seed, &sheet, page_number, page_size);
    Ok(json_bytes(StatusCode::OK, body))
}

/// Parses an optional JSON object body (`{}` when empty).
fn json_body(body: &Bytes) -> Result<serde_json::Map<String, Json>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::platform(
            StatusCode::BAD_REQUEST,
            None,
            "The body must be a JSON object",
        )),
        Err(err) => Err(ApiError::platform(
            StatusCode::BAD_REQUEST,
            None,
            format!("The body is not valid JSON: {err}"),
        )),
    }
}

fn optional_string(
    body: &serde_json::Map<String, Json>,
    key: &'static str,
) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(ApiError::platform(
            StatusCode::BAD_REQUEST,
            Some(key),
            format!("{key} must be a string"),
        )),
    }
}

/// Applies `change` to the job (creating it on first sight) and answers `{data: Job}`.
fn with_job(sim: &Shared, job_id: &str, change: impl FnOnce(&mut JobRecord, u64)) -> Response {
    let mut jobs = lock(&sim.jobs);
    let job = jobs.entry(job_id.to_owned()).or_insert_with(JobRecord::new);
    change(job, clock::now_ms());
    let body = job.to_json(job_id);
    drop(jobs);
    json_value(StatusCode::OK, &body)
}

/// `GET /v1/jobs?pageSize=&pageNumber=`: the jobs the server has seen, oldest first, in the
/// Platform's list envelope `{pagination: {currentPage, pageCount, totalCount}, data: Job[]}`.
async fn list_jobs(
    State(sim): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    platform_auth(&sim, &headers)?;
    let page_size = query_u64(&query, "pageSize", 20, false)?.max(1);
    let page_number = query_u64(&query, "pageNumber", 1, false)?.max(1);
    let jobs = lock(&sim.jobs);
    let mut ids: Vec<&String> = jobs.keys().collect();
    ids.sort_by_key(|id| (jobs[*id].created_ms, (*id).clone()));
    let total = ids.len() as u64;
    let skip = usize::try_from((page_number - 1).saturating_mul(page_size)).unwrap_or(usize::MAX);
    let take = usize::try_from(page_size).unwrap_or(usize::MAX);
    let data: Vec<Json> = ids
        .into_iter()
        .skip(skip)
        .take(take)
        .map(|id| jobs[id].to_json(id)["data"].take())
        .collect();
    drop(jobs);
    Ok(json_value(
        StatusCode::OK,
        &json!({
            "pagination": {
                "currentPage": page_number,
                "pageCount": total.div_ceil(page_size),
                "totalCount": total,
            },
            "data": data,
        }),
    ))
}

async fn get_job(
    State(sim): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    platform_auth(&sim, &headers)?;
    Ok(with_job(&sim, &job_id, |_, _| {}))
}

async fn ack_job(
    State(sim): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    platform_auth(&sim, &headers)?;
    let body = json_body(&body)?;
    let info = optional_string(&body, "info")?;
    let progress = match body.get("progress") {
        None | Some(Json::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .filter(|p| *p <= 100)
                .and_then(|p| u8::try_from(p).ok())
                .ok_or_else(|| {
                    ApiError::platform(
                        StatusCode::BAD_REQUEST,
                        Some("progress"),
                        "progress must be an integer from 0 to 100",
                    )
                })?,
        ),
    };
    Ok(with_job(&sim, &job_id, |job, now| {
        // A finished job stays finished: a late ack (say, a retry whose first answer was lost)
        // must not reopen it.
        if job.is_finished() {
            return;
        }
        job.status = "executing";
        job.started_ms.get_or_insert(now);
        job.updated_ms = now;
        if let Some(progress) = progress {
            job.progress.push(progress);
        }
        if info.is_some() {
            job.info = info;
        }
    }))
}

async fn finish_job(
    sim: &Shared,
    job_id: &str,
    headers: &HeaderMap,
    body: &Bytes,
    status: &'static str,
) -> Result<Response, ApiError> {
    platform_auth(sim, headers)?;
    let body = json_body(body)?;
    let info = optional_string(&body, "info")?;
    let outcome = match body.get("outcome") {
        None | Some(Json::Null) => None,
        Some(outcome @ Json::Object(_)) => Some(outcome.clone()),
        Some(_) => {
            return Err(ApiError::platform(
                StatusCode::BAD_REQUEST,
                Some("outcome"),
                "outcome must be an object",
            ));
        }
    };
    Ok(with_job(sim, job_id, |job, now| {
        job.status = status;
        job.updated_ms = now;
        job.finished_ms = Some(now);
        if info.is_some() {
            job.info = info;
        }
        job.outcome = outcome;
    }))
}

async fn complete_job(
    State(sim): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    finish_job(&sim, &job_id, &headers, &body, "complete").await
}

async fn fail_job(
    State(sim): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    finish_job(&sim, &job_id, &headers, &body, "failed").await
}

async fn admin_job(State(sim): State<Arc<Shared>>, Path(job_id): Path<String>) -> Response {
    match sim.job_state(&job_id) {
        Some(state) => json_value(
            StatusCode::OK,
            &serde_json::to_value(state).expect("JobState serializes"),
        ),
        None => api_error(
            false,
            StatusCode::NOT_FOUND,
            Some("jobId"),
            &format!("Job {job_id} was never seen"),
        ),
    }
}

async fn admin_stats(State(sim): State<Arc<Shared>>) -> Response {
    let stats = lock(&sim.stats).clone();
    json_value(
        StatusCode::OK,
        &serde_json::to_value(stats).expect("SimStats serializes"),
    )
}

async fn not_found(method: Method, request: Request) -> Response {
    let legacy = request.uri().path().starts_with("/rest/");
    api_error(
        legacy,
        StatusCode::NOT_FOUND,
        None,
        &format!("No route for {method} {}", request.uri().path()),
    )
}
