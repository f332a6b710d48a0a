//! The HTTP server: one router for the legacy, Platform and admin APIs. By job:
//! - this module: [`RunningSim`], the handle that starts and stops a server, and the route table;
//! - `intake`: what every API request passes first: counted (`stats`), checked for an early
//!   retry and maybe answered by an injected fault (`faults`);
//! - `legacy`, `platform`, `events`, `jobs`: the API a client reads, one module per family of
//!   endpoints, each checking the caller's key (`auth`) and reading its parameters (`params`);
//! - `admin`: the `/_sim` API that drives and inspects the simulator;
//! - `shared`: the state every handler reads (configuration, counters, the world);
//! - `reply`: JSON answers and errors in the envelope of the API a request belongs to.
//!
//! Requests flow top-down: the router hands a request to `intake`, then to one handler module,
//! which goes through `shared` to the world in `crate::state`. No module below the router
//! depends back on one above it.

mod admin;
mod auth;
mod events;
mod faults;
mod intake;
mod jobs;
mod legacy;
mod pages;
mod params;
mod platform;
mod reply;
mod shared;
mod stats;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware;
use axum::routing::{get, post};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use self::shared::Shared;
use crate::admin::{
    CreatedJob, EmitEvent, EventShape, JobRequest, NewRecords, RecordEdit, RecordsChange, SheetRow,
    SimEvent, SubmitRequest, Submitted,
};
use crate::lock::lock;
use crate::{JobState, SimConfig, SimError, SimStats};

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
        format!("http://{}", crate::net::reachable(self.addr))
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

/// Every route, each API request first through the intake.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/rest/batch/{batch_id}/rows", get(legacy::batch_rows))
        .route(
            "/workspace/{workspace_id}/sheet/{sheet_id}/records",
            get(legacy::workspace_records),
        )
        .route("/v1/workbooks/{workbook_id}", get(platform::get_workbook))
        .route("/v1/sheets", get(platform::list_sheets))
        .route("/v1/sheets/{sheet_id}", get(platform::get_sheet))
        .route("/v1/sheets/{sheet_id}/counts", get(platform::sheet_counts))
        .route(
            "/v1/sheets/{sheet_id}/records",
            get(platform::sheet_records),
        )
        .route("/v1/jobs", get(jobs::list_jobs).post(jobs::create_job))
        .route(
            "/v1/jobs/{job_id}",
            get(jobs::get_job).patch(jobs::patch_job),
        )
        .route("/v1/jobs/{job_id}/ack", post(jobs::ack_job))
        .route("/v1/jobs/{job_id}/complete", post(jobs::complete_job))
        .route("/v1/jobs/{job_id}/fail", post(jobs::fail_job))
        .route("/v1/events", get(events::list_events))
        .route("/v1/events/{event_id}", get(events::get_event))
        .route("/v1/events/{event_id}/ack", post(events::ack_event))
        .route("/_sim/jobs", get(admin::jobs).post(admin::create_job))
        .route("/_sim/jobs/{job_id}", get(admin::job))
        .route("/_sim/stats", get(admin::stats))
        .route("/_sim/submit", post(admin::submit))
        .route(
            "/_sim/sheets/{sheet_id}/records",
            get(admin::sheet_rows)
                .post(admin::add_records)
                .patch(admin::edit_records)
                .delete(admin::delete_records),
        )
        .route("/_sim/events", get(admin::events).post(admin::emit_event))
        .fallback(reply::not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            intake::count_and_inject_faults,
        ))
        .with_state(shared)
}
