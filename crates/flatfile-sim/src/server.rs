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
use serde_json::{Map, Value as Json, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::admin::{
    CreatedJob, EmitEvent, EventShape, JobRequest, NewRecords, RecordEdit, RecordsChange, SheetRow,
    SimEvent, SubmitRequest, Submitted,
};
use crate::generate::{self, SheetRef};
use crate::rejection::Rejection;
use crate::state::{EventsQuery, RecordsQuery, World};
use crate::{JobState, SimConfig, SimError, SimStats, clock};
use crate::{jobs, legacy};

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

    /// The configuration it serves.
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// The state of a job, if the simulator created it.
    pub fn job(&self, job_id: &str) -> Option<JobState> {
        self.shared.job_state(job_id)
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> Vec<JobState> {
        self.shared.world().jobs()
    }

    /// Like `POST /_sim/submit`: a workbook (unless `request.workbook_id`), a job, and the
    /// events `job:created` and `job:ready`.
    pub fn submit(&self, request: &SubmitRequest) -> Result<Submitted, SimError> {
        let shared = &self.shared;
        Ok(shared.world().submit(&shared.config, request)?)
    }

    /// Like `POST /_sim/jobs`: a job for a workbook or a sheet, in status `ready`, without any
    /// event (a test then sends its `job:ready` itself, e.g. with [`crate::submit_event_body`]).
    pub fn create_job(&self, request: &JobRequest) -> Result<CreatedJob, SimError> {
        let shared = &self.shared;
        Ok(shared.world().create_job(&shared.config, request)?)
    }

    /// The id of a new `workbook:submitActionFg` job for `workbook_id` ([`RunningSim::create_job`]).
    pub fn workbook_job(&self, workbook_id: &str) -> Result<String, SimError> {
        self.create_job(&JobRequest::workbook(workbook_id))
            .map(|created| created.job_id)
    }

    /// Like `POST /_sim/sheets/{sheet_id}/records`: adds records, emits `records:created`,
    /// `commit:created` and `commit:completed`.
    pub fn add_records(
        &self,
        sheet_id: &str,
        records: &NewRecords,
    ) -> Result<RecordsChange, SimError> {
        self.add_records_as(sheet_id, records, EventShape::RecordIds)
    }

    /// [`RunningSim::add_records`] with events of another [`EventShape`].
    pub fn add_records_as(
        &self,
        sheet_id: &str,
        records: &NewRecords,
        shape: EventShape,
    ) -> Result<RecordsChange, SimError> {
        let shared = &self.shared;
        Ok(shared
            .world()
            .add_records(&shared.config, sheet_id, records, shape)?)
    }

    /// Like `PATCH /_sim/sheets/{sheet_id}/records`: edits records, emits `records:updated`,
    /// `commit:created` and `commit:completed`.
    pub fn edit_records(
        &self,
        sheet_id: &str,
        edits: &[RecordEdit],
    ) -> Result<RecordsChange, SimError> {
        self.edit_records_as(sheet_id, edits, EventShape::RecordIds)
    }

    /// [`RunningSim::edit_records`] with events of another [`EventShape`].
    pub fn edit_records_as(
        &self,
        sheet_id: &str,
        edits: &[RecordEdit],
        shape: EventShape,
    ) -> Result<RecordsChange, SimError> {
        let shared = &self.shared;
        Ok(shared
            .world()
            .edit_records(&shared.config, sheet_id, edits, shape)?)
    }

    /// Like `DELETE /_sim/sheets/{sheet_id}/records`: deletes records, emits `records:deleted`.
    pub fn delete_records(
        &self,
        sheet_id: &str,
        ids: &[String],
    ) -> Result<RecordsChange, SimError> {
        self.delete_records_as(sheet_id, ids, EventShape::RecordIds)
    }

    /// [`RunningSim::delete_records`] with an event of another [`EventShape`] (`RecordIds` or
    /// `Count`: a deletion makes no commit to name).
    pub fn delete_records_as(
        &self,
        sheet_id: &str,
        ids: &[String],
        shape: EventShape,
    ) -> Result<RecordsChange, SimError> {
        let shared = &self.shared;
        Ok(shared
            .world()
            .delete_records(&shared.config, sheet_id, ids, shape)?)
    }

    /// Like `POST /_sim/events`: emits an event of any topic.
    pub fn emit_event(&self, event: &EmitEvent) -> Result<SimEvent, SimError> {
        let shared = &self.shared;
        Ok(shared.world().emit_custom(&shared.config, event)?)
    }

    /// Every event, or those of one environment, oldest first, with their acks.
    pub fn events(&self, environment_id: Option<&str>) -> Vec<SimEvent> {
        self.shared.world().events(environment_id)
    }

    /// A sheet's records as they are now (generated rows minus deletions, with edits, then the
    /// added records); `None` when there is no such sheet.
    pub fn sheet_rows(&self, sheet_id: &str) -> Option<Vec<SheetRow>> {
        self.shared
            .world()
            .sheet_rows(&self.shared.config, sheet_id)
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
    world: Mutex<World>,
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
    WorkspaceRecords,
    Workbooks,
    Sheets,
    Counts,
    Records,
    Jobs,
    Events,
    EventGet,
    EventAck,
    Other,
}

fn classify(method: &Method, path: &str) -> Kind {
    if let Some(rest) = path.strip_prefix("/rest/batch/") {
        return if rest.ends_with("/rows") && rest.matches('/').count() == 1 {
            Kind::LegacyRows
        } else {
            Kind::Other
        };
    }
    if let Some(rest) = path.strip_prefix("/workspace/") {
        let parts: Vec<&str> = rest.split('/').collect();
        return match parts.as_slice() {
            [_, "sheet", _, "records"] => Kind::WorkspaceRecords,
            _ => Kind::Other,
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
    if path == "/v1/jobs" || path.starts_with("/v1/jobs/") {
        return Kind::Jobs;
    }
    if path == "/v1/events" && method == Method::GET {
        return Kind::Events;
    }
    if let Some(rest) = path.strip_prefix("/v1/events/") {
        return match rest.split_once('/') {
            None if method == Method::GET => Kind::EventGet,
            Some((_, "ack")) if method == Method::POST => Kind::EventAck,
            _ => Kind::Other,
        };
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
            world: Mutex::new(World::new(format!("{:08x}", fastrand::u32(..)))),
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
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
        self.world().job_state(id)
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
        .route(
            "/workspace/{workspace_id}/sheet/{sheet_id}/records",
            get(workspace_records),
        )
        .route("/v1/jobs", get(list_jobs).post(create_job))
        .route("/v1/jobs/{job_id}", get(get_job).patch(patch_job))
        .route("/v1/jobs/{job_id}/ack", post(ack_job))
        .route("/v1/jobs/{job_id}/complete", post(complete_job))
        .route("/v1/jobs/{job_id}/fail", post(fail_job))
        .route("/v1/events", get(list_events))
        .route("/v1/events/{event_id}", get(get_event))
        .route("/v1/events/{event_id}/ack", post(ack_event))
        .route("/_sim/jobs", get(admin_jobs).post(admin_create_job))
        .route("/_sim/jobs/{job_id}", get(admin_job))
        .route("/_sim/stats", get(admin_stats))
        .route("/_sim/submit", post(admin_submit))
        .route(
            "/_sim/sheets/{sheet_id}/records",
            get(admin_sheet_rows)
                .post(admin_add_records)
                .patch(admin_edit_records)
                .delete(admin_delete_records),
        )
        .route("/_sim/events", get(admin_events).post(admin_emit_event))
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
    let legacy = path.starts_with("/rest/") || path.starts_with("/workspace/");
    if !(legacy || path.starts_with("/v1/") || path == "/v1") {
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
    let alternate_error = {
        let mut stats = lock(&sim.stats);
        stats.requests += 1;
        match classify(&method, &path) {
            Kind::LegacyRows => stats.legacy_rows += 1,
            Kind::WorkspaceRecords => stats.workspace_records += 1,
            Kind::Workbooks => stats.workbooks += 1,
            Kind::Sheets => stats.sheets += 1,
            Kind::Counts => stats.counts += 1,
            Kind::Records => stats.records += 1,
            Kind::Jobs => stats.jobs += 1,
            Kind::Events => stats.events += 1,
            Kind::EventGet => stats.event_gets += 1,
            Kind::EventAck => stats.event_acks += 1,
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
/// `{statusCode, message, error}`, Platform (and admin) `{errors: [{key?, message}]}`.
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
    key: Option<String>,
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

    fn platform(status: StatusCode, key: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            legacy: false,
            status,
            key: key.map(str::to_owned),
            message: message.into(),
        }
    }

    fn bad(key: &str, message: impl Into<String>) -> ApiError {
        ApiError::platform(StatusCode::BAD_REQUEST, Some(key), message)
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> ApiError {
        ApiError {
            legacy: false,
            status: rejection.status,
            key: rejection.key,
            message: rejection.message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        api_error(self.legacy, self.status, self.key.as_deref(), &self.message)
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

/// Checks the bearer token and returns the environment it is the key of.
fn platform_auth(sim: &Shared, headers: &HeaderMap) -> Result<String, ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(environment_id) = token.and_then(|token| sim.config.environment_of_key(token)) {
        return Ok(environment_id.to_owned());
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
            key: Some(name.to_owned()),
            message: format!("{name} must be a non-negative integer"),
        }),
    }
}

/// `pageSize` and `pageNumber` of a Platform list: both from 1, the size capped.
fn platform_page(
    sim: &Shared,
    query: &HashMap<String, String>,
    default_size: u64,
) -> Result<(u64, u64), ApiError> {
    let page_size = query_u64(query, "pageSize", default_size, false)?;
    let page_number = query_u64(query, "pageNumber", 1, false)?;
    if page_size == 0 {
        return Err(ApiError::bad("pageSize", "pageSize starts at 1"));
    }
    if page_number == 0 {
        return Err(ApiError::bad("pageNumber", "pageNumber starts at 1"));
    }
    Ok((page_size.min(sim.config.max_page_size), page_number))
}

/// Checks the legacy key and reads `skip` and `take` (default 50, capped at `--max-page-size`)
/// of a legacy list.
fn legacy_paging(
    sim: &Shared,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<(u64, u64), ApiError> {
    legacy_auth(sim, headers)?;
    let skip = query_u64(query, "skip", 0, true)?;
    let take = query_u64(query, "take", 50, true)?;
    if take == 0 {
        return Err(ApiError::legacy(
            StatusCode::BAD_REQUEST,
            "take must be at least 1",
        ));
    }
    Ok((skip, take.min(sim.config.max_page_size)))
}

async fn legacy_rows(
    State(sim): State<Arc<Shared>>,
    Path(batch_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (skip, take) = legacy_paging(&sim, &headers, &query)?;
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

/// `GET /workspace/{workspaceId}/sheet/{sheetId}/records?skip=&take=`: a legacy Workspaces
/// sheet, [`SimConfig::rows`] records for every (workspace, sheet).
async fn workspace_records(
    State(sim): State<Arc<Shared>>,
    Path((workspace_id, sheet_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (skip, take) = legacy_paging(&sim, &headers, &query)?;
    pause(&sim).await;
    let mut body = Vec::with_capacity(page_capacity(take, sim.config.rows, 300));
    legacy::write_workspace_page(
        &mut body,
        sim.config.seed,
        (&workspace_id, &sheet_id),
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

/// The sheet, if the key of `environment_id` may read it: another environment's sheet is
/// answered like one that does not exist.
fn find_sheet(sim: &Shared, sheet_id: &str, environment_id: &str) -> Result<SheetRef, ApiError> {
    sim.world()
        .find_sheet(&sim.config, sheet_id)
        .filter(|scope| scope.readable_by(environment_id))
        .map(|scope| scope.sheet)
        .ok_or_else(|| Rejection::sheet_not_found(sheet_id).into())
}

/// The workbook's sheets and environment, if the key of `environment_id` may read it.
fn find_workbook(
    sim: &Shared,
    workbook_id: &str,
    environment_id: &str,
) -> Result<(Vec<SheetRef>, String), ApiError> {
    sim.world()
        .find_workbook(&sim.config, workbook_id)
        .filter(|scope| scope.readable_by(environment_id))
        .map(|scope| {
            let owner = scope.environment_id().to_owned();
            (scope.sheets, owner)
        })
        .ok_or_else(|| {
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
    let environment = platform_auth(&sim, &headers)?;
    let (sheets, owner) = find_workbook(&sim, &workbook_id, &environment)?;
    let workbook = generate::workbook_json(sim.config.seed, &workbook_id, &owner, &sheets);
    Ok(json_value(StatusCode::OK, &json!({ "data": workbook })))
}

async fn list_sheets(
    State(sim): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let Some(workbook_id) = query.get("workbookId") else {
        return Err(ApiError::bad("workbookId", "workbookId is required"));
    };
    let sheets: Vec<Json> = find_workbook(&sim, workbook_id, &environment)?
        .0
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
    let environment = platform_auth(&sim, &headers)?;
    let sheet = find_sheet(&sim, &sheet_id, &environment)?;
    let body = json!({ "data": generate::sheet_json(sim.config.seed, &sheet) });
    Ok(json_value(StatusCode::OK, &body))
}

async fn sheet_counts(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let sheet = find_sheet(&sim, &sheet_id, &environment)?;
    let counts = sim.world().counts(&sheet);
    let body =
        json!({ "data": { "counts": generate::counts_json(&sheet, counts), "success": true } });
    Ok(json_value(StatusCode::OK, &body))
}

/// Most record ids one records request may name, as on the Platform.
const MAX_IDS: usize = 100;

async fn sheet_records(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    // `ids` repeats; every other parameter is single (the last one wins).
    let ids: Vec<String> = pairs
        .iter()
        .filter(|(name, _)| name == "ids")
        .map(|(_, id)| id.clone())
        .collect();
    let query: HashMap<String, String> = pairs
        .into_iter()
        .filter(|(name, _)| name != "ids")
        .collect();
    let (page_size, page_number) = platform_page(&sim, &query, 10_000)?;
    if ids.len() > MAX_IDS {
        return Err(ApiError::bad(
            "ids",
            format!("ids names at most {MAX_IDS} records, not {}", ids.len()),
        ));
    }
    let nonempty = |name: &str| query.get(name).filter(|value| !value.is_empty()).cloned();
    let records_query = RecordsQuery {
        page_number,
        page_size,
        ids,
        // versionId and sinceVersionId are the deprecated names of the same parameters.
        commit_id: nonempty("commitId").or_else(|| nonempty("versionId")),
        since_commit_id: nonempty("sinceCommitId").or_else(|| nonempty("sinceVersionId")),
    };
    let sheet = find_sheet(&sim, &sheet_id, &environment)?;
    let plain = records_query.is_plain() && !sim.world().has_overlay(&sheet.id);
    pause(&sim).await;
    let mut body = Vec::with_capacity(page_capacity(page_size, sheet.rows, 750));
    if plain {
        // No lock while generating: the common case of an unchanged sheet serves pages in
        // parallel.
        generate::write_records_page(&mut body, sim.config.seed, &sheet, page_number, page_size);
    } else {
        sim.world()
            .write_records(sim.config.seed, &sheet, &records_query, &mut body)?;
    }
    Ok(json_bytes(StatusCode::OK, body))
}

/// `GET /v1/events`: the caller's environment's events, in the configured `events_order`.
async fn list_events(
    State(sim): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    if let Some(asked) = query.get("environmentId")
        && *asked != environment
    {
        return Err(ApiError::platform(
            StatusCode::FORBIDDEN,
            Some("environmentId"),
            format!("This key does not belong to environment {asked}"),
        ));
    }
    let since_ms = match query.get("since") {
        None => None,
        Some(text) => Some(clock::parse_iso_millis(text.trim()).ok_or_else(|| {
            ApiError::bad(
                "since",
                "since must be an ISO 8601 date-time, e.g. 2024-05-02T13:58:40.012Z",
            )
        })?),
    };
    let include_acknowledged = match query.get("includeAcknowledged").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::bad(
                "includeAcknowledged",
                "includeAcknowledged must be true or false",
            ));
        }
    };
    let (page_size, page_number) = platform_page(&sim, &query, 10)?;
    let events_query = EventsQuery {
        environment_id: environment,
        since_ms,
        topic: query.get("topic").cloned(),
        domain: query.get("domain").cloned(),
        space_id: query.get("spaceId").cloned(),
        include_acknowledged,
        page_number,
        page_size,
        order: sim.config.events_order,
    };
    let data = sim.world().list_events(&events_query);
    Ok(json_value(StatusCode::OK, &json!({ "data": data })))
}

fn event_not_found(event_id: &str) -> ApiError {
    ApiError::platform(
        StatusCode::NOT_FOUND,
        Some("eventId"),
        format!("Event {event_id} not found"),
    )
}

async fn get_event(
    State(sim): State<Arc<Shared>>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let event = sim
        .world()
        .event(&event_id, &environment)
        .ok_or_else(|| event_not_found(&event_id))?;
    Ok(json_value(StatusCode::OK, &json!({ "data": event })))
}

async fn ack_event(
    State(sim): State<Arc<Shared>>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    if !sim.world().ack_event(&event_id, &environment) {
        return Err(event_not_found(&event_id));
    }
    Ok(json_value(
        StatusCode::OK,
        &json!({ "data": { "success": true } }),
    ))
}

/// Parses an optional JSON object body (`{}` when empty).
fn json_body(body: &Bytes) -> Result<Map<String, Json>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
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

fn optional_string(body: &Map<String, Json>, key: &str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(ApiError::bad(key, format!("{key} must be a string"))),
    }
}

fn optional_bool(body: &Map<String, Json>, key: &str) -> Result<Option<bool>, ApiError> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Bool(flag)) => Ok(Some(*flag)),
        Some(_) => Err(ApiError::bad(key, format!("{key} must be true or false"))),
    }
}

fn job_answer(job: Result<Json, Rejection>) -> Result<Response, ApiError> {
    Ok(json_value(StatusCode::OK, &json!({ "data": job? })))
}

/// `GET /v1/jobs?pageSize=&pageNumber=&parentId=`: the key's environment's jobs, oldest first,
/// in the Platform's list envelope `{pagination: {currentPage, pageCount, totalCount}, data}`.
async fn list_jobs(
    State(sim): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let page_size = query_u64(&query, "pageSize", 20, false)?.max(1);
    let page_number = query_u64(&query, "pageNumber", 1, false)?.max(1);
    let jobs = sim
        .world()
        .list_jobs(&environment, query.get("parentId").map(String::as_str));
    let total = jobs.len() as u64;
    let skip = usize::try_from((page_number - 1).saturating_mul(page_size)).unwrap_or(usize::MAX);
    let take = usize::try_from(page_size).unwrap_or(usize::MAX);
    let data: Vec<Json> = jobs.into_iter().skip(skip).take(take).collect();
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

/// `POST /v1/jobs` with a `JobConfig`: a job of the key's environment, and its `job:created`.
async fn create_job(
    State(sim): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let request = jobs::parse_config(&json_body(&body)?)?;
    job_answer(
        sim.world()
            .api_create_job(&sim.config, &environment, request),
    )
}

async fn get_job(
    State(sim): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    job_answer(sim.world().job_json(&environment, &job_id))
}

async fn patch_job(
    State(sim): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let update = jobs::parse_update(&json_body(&body)?)?;
    job_answer(sim.world().update_job(&environment, &job_id, update))
}

async fn ack_job(
    State(sim): State<Arc<Shared>>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let environment = platform_auth(&sim, &headers)?;
    let details = jobs::parse_ack(&json_body(&body)?)?;
    job_answer(sim.world().ack_job(&environment, &job_id, details))
}

async fn finish_job(
    sim: &Shared,
    job_id: &str,
    headers: &HeaderMap,
    body: &Bytes,
    status: &'static str,
) -> Result<Response, ApiError> {
    let environment = platform_auth(sim, headers)?;
    let details = jobs::parse_complete(&json_body(body)?)?;
    job_answer(
        sim.world()
            .finish_job(&environment, job_id, status, details),
    )
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
            &format!("Job {job_id} not found"),
        ),
    }
}

async fn admin_jobs(State(sim): State<Arc<Shared>>) -> Response {
    let jobs = sim.world().jobs();
    json_value(
        StatusCode::OK,
        &serde_json::to_value(jobs).expect("JobState serializes"),
    )
}

async fn admin_create_job(
    State(sim): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_body(&body)?;
    known_keys(
        &body,
        "",
        &["job", "workbookId", "sheetId", "environmentId"],
    )?;
    let request = JobRequest {
        job: optional_string(&body, "job")?,
        workbook_id: optional_string(&body, "workbookId")?,
        sheet_id: optional_string(&body, "sheetId")?,
        environment_id: optional_string(&body, "environmentId")?,
    };
    let created = sim.world().create_job(&sim.config, &request)?;
    Ok(json_answer(&created))
}

async fn admin_stats(State(sim): State<Arc<Shared>>) -> Response {
    let stats = lock(&sim.stats).clone();
    json_value(
        StatusCode::OK,
        &serde_json::to_value(stats).expect("SimStats serializes"),
    )
}

/// Refuses keys an admin request does not know, naming the first one.
fn known_keys(body: &Map<String, Json>, at: &str, known: &[&str]) -> Result<(), ApiError> {
    match body.keys().find(|key| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some(unknown) => {
            let field = if at.is_empty() {
                unknown.clone()
            } else {
                format!("{at}.{unknown}")
            };
            Err(ApiError::bad(
                &field,
                format!("unknown field {field}; expected {}", known.join(", ")),
            ))
        }
    }
}

fn optional_u64(body: &Map<String, Json>, key: &str) -> Result<Option<u64>, ApiError> {
    match body.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::bad(key, format!("{key} must be a non-negative integer"))),
    }
}

fn json_answer<T: serde::Serialize>(value: &T) -> Response {
    // Straight to bytes: a detour through `serde_json::Value` would sort the keys of
    // `SheetRow::values`, which are in schema order.
    json_bytes(
        StatusCode::OK,
        serde_json::to_vec(value).expect("admin answers serialize"),
    )
}

async fn admin_submit(State(sim): State<Arc<Shared>>, body: Bytes) -> Result<Response, ApiError> {
    let body = json_body(&body)?;
    known_keys(
        &body,
        "",
        &[
            "environmentId",
            "workbookId",
            "sheetSlug",
            "job",
            "rows",
            "parts",
            "contextIds",
        ],
    )?;
    let request = SubmitRequest {
        environment_id: optional_string(&body, "environmentId")?,
        workbook_id: optional_string(&body, "workbookId")?,
        sheet_slug: optional_string(&body, "sheetSlug")?,
        job: optional_string(&body, "job")?,
        rows: optional_u64(&body, "rows")?,
        parts: optional_u64(&body, "parts")?,
        context_ids: optional_bool(&body, "contextIds")?,
    };
    let submitted = sim.world().submit(&sim.config, &request)?;
    Ok(json_answer(&submitted))
}

/// `eventShape` of a record change [default: `recordIds`].
fn event_shape(body: &Map<String, Json>) -> Result<EventShape, ApiError> {
    match optional_string(body, "eventShape")? {
        None => Ok(EventShape::RecordIds),
        Some(name) => EventShape::parse(&name).ok_or_else(|| {
            ApiError::bad(
                "eventShape",
                format!("eventShape {name:?} is not one of recordIds, count, dataUrl, versionId"),
            )
        }),
    }
}

fn object_at<'a>(value: &'a Json, at: &str) -> Result<&'a Map<String, Json>, ApiError> {
    value
        .as_object()
        .ok_or_else(|| ApiError::bad(at, format!("{at} must be an object")))
}

fn array_at<'a>(body: &'a Map<String, Json>, key: &str) -> Result<&'a Vec<Json>, ApiError> {
    body.get(key)
        .ok_or_else(|| ApiError::bad(key, format!("{key} is required")))?
        .as_array()
        .ok_or_else(|| ApiError::bad(key, format!("{key} must be an array")))
}

async fn admin_add_records(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_body(&body)?;
    known_keys(&body, "", &["records", "count", "eventShape"])?;
    let shape = event_shape(&body)?;
    let records = match (body.contains_key("records"), optional_u64(&body, "count")?) {
        (true, Some(_)) => {
            return Err(ApiError::bad(
                "count",
                "give either records or count, not both",
            ));
        }
        (false, Some(count)) => NewRecords::Count(count),
        (true, None) => NewRecords::Values(
            array_at(&body, "records")?
                .iter()
                .enumerate()
                .map(|(at, record)| object_at(record, &format!("records[{at}]")).cloned())
                .collect::<Result<_, _>>()?,
        ),
        (false, None) => {
            return Err(ApiError::bad("records", "give records: [...] or count: n"));
        }
    };
    let change = sim
        .world()
        .add_records(&sim.config, &sheet_id, &records, shape)?;
    Ok(json_answer(&change))
}

async fn admin_edit_records(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_body(&body)?;
    known_keys(&body, "", &["records", "eventShape"])?;
    let shape = event_shape(&body)?;
    let mut edits = Vec::new();
    for (at, record) in array_at(&body, "records")?.iter().enumerate() {
        let at = format!("records[{at}]");
        let record = object_at(record, &at)?;
        known_keys(record, &at, &["id", "values"])?;
        let id = match record.get("id") {
            Some(Json::String(id)) => id.clone(),
            _ => {
                return Err(ApiError::bad(
                    &format!("{at}.id"),
                    format!("{at}.id must be a string"),
                ));
            }
        };
        let values_at = format!("{at}.values");
        let values = object_at(
            record
                .get("values")
                .ok_or_else(|| ApiError::bad(&values_at, format!("{values_at} is required")))?,
            &values_at,
        )?
        .clone();
        edits.push(RecordEdit { id, values });
    }
    let change = sim
        .world()
        .edit_records(&sim.config, &sheet_id, &edits, shape)?;
    Ok(json_answer(&change))
}

async fn admin_delete_records(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_body(&body)?;
    known_keys(&body, "", &["ids", "eventShape"])?;
    let shape = event_shape(&body)?;
    let ids = array_at(&body, "ids")?
        .iter()
        .enumerate()
        .map(|(at, id)| {
            id.as_str()
                .map(str::to_owned)
                .ok_or_else(|| ApiError::bad("ids", format!("ids[{at}] must be a string")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let change = sim
        .world()
        .delete_records(&sim.config, &sheet_id, &ids, shape)?;
    Ok(json_answer(&change))
}

async fn admin_sheet_rows(
    State(sim): State<Arc<Shared>>,
    Path(sheet_id): Path<String>,
) -> Result<Response, ApiError> {
    let rows = sim
        .world()
        .sheet_rows(&sim.config, &sheet_id)
        .ok_or_else(|| ApiError::from(Rejection::sheet_not_found(&sheet_id)))?;
    Ok(json_answer(&rows))
}

async fn admin_emit_event(
    State(sim): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_body(&body)?;
    known_keys(
        &body,
        "",
        &[
            "environmentId",
            "topic",
            "domain",
            "context",
            "payload",
            "allowUnknownDomain",
            "createdAt",
        ],
    )?;
    let context = match body.get("context") {
        None | Some(Json::Null) => None,
        Some(context) => Some(object_at(context, "context")?.clone()),
    };
    let request = EmitEvent {
        environment_id: optional_string(&body, "environmentId")?,
        topic: optional_string(&body, "topic")?
            .ok_or_else(|| ApiError::bad("topic", "topic is required"))?,
        domain: optional_string(&body, "domain")?,
        context,
        payload: body.get("payload").cloned(),
        allow_unknown_domain: optional_bool(&body, "allowUnknownDomain")?.unwrap_or(false),
        created_at: optional_string(&body, "createdAt")?,
    };
    let event = sim.world().emit_custom(&sim.config, &request)?;
    Ok(json_answer(&event))
}

async fn admin_events(
    State(sim): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let environment = query.get("environmentId").map(String::as_str);
    if let Some(environment) = environment
        && !sim.config.environment_ids().contains(&environment)
    {
        return Err(ApiError::bad(
            "environmentId",
            format!("environment {environment} is not configured"),
        ));
    }
    let events = sim.world().events(environment);
    Ok(json_answer(&events))
}

async fn not_found(method: Method, request: Request) -> Response {
    let path = request.uri().path();
    let legacy = path.starts_with("/rest/") || path.starts_with("/workspace/");
    api_error(
        legacy,
        StatusCode::NOT_FOUND,
        None,
        &format!("No route for {method} {}", request.uri().path()),
    )
}
