//! Event processing: plan the streams of an event, page through the source, hand each page to
//! every routed sink in order, and advance checkpoints only after the sinks flushed.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flatsync_flatfile::{Buffers, FlatfileClient, IncomingEvent, parse_webhook_body};
use flatsync_plugin_host::{HeldBatches, OwnedBatch, QueuedWrite, SinkWorker};

use crate::config::{Config, DaemonConfig};
use crate::health::Health;
use crate::pipeline::fetch::read_ahead::ReadAhead;
use crate::pipeline::fetch::{Batch, StreamReader};
use crate::pipeline::plan::{self, Family, SubmitJob};
use crate::pipeline::route::{RoutedEvent, RoutedSink, route_event};
use crate::state::{
    CARRIED_KIND, Checkpoint, Delivery, DeliveryStatus, EventStatus, GroupPlan, StateDb,
    StateError, StoredEvent, StreamPlan, StreamSource, stream_for_generation,
};

/// Everything event processing needs, shared by all event tasks.
pub(crate) struct Engine {
    pub(crate) config: Arc<Config>,
    pub(crate) state: StateDb,
    pub(crate) clients: Clients,
    pub(crate) sinks: BTreeMap<String, SinkWorker>,
    pub(crate) health: Arc<Health>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config.path)
            .field("state", &self.state.path())
            .field("sinks", &self.sinks.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The Flatfile clients: one per `[environments.NAME]` with its own key, and the `[flatfile]`
/// one for every other event.
#[derive(Clone, Debug)]
pub(crate) struct Clients {
    pub(crate) default: FlatfileClient,
    /// By environment id.
    pub(crate) by_environment: BTreeMap<String, FlatfileClient>,
}

impl Clients {
    pub(crate) fn for_environment(&self, environment_id: Option<&str>) -> &FlatfileClient {
        environment_id
            .and_then(|id| self.by_environment.get(id))
            .unwrap_or(&self.default)
    }
}

/// A failure that ends an event's processing for now without a final status: the event stays
/// pending and is picked up again on the next start.
#[derive(Debug, thiserror::Error)]
enum Interrupted {
    #[error(transparent)]
    State(#[from] StateError),
    /// The daemon is stopping: delivery was cut at a checkpoint and resumes on the next start.
    #[error("the daemon is stopping")]
    Draining,
}

/// A sink's progress through one stream during delivery.
struct Cursor {
    sink: String,
    worker: SinkWorker,
    next_seq: u64,
    rows: u64,
    unflushed_rows: u64,
    unflushed_next_seq: u64,
    error: Option<String>,
    /// The stream may have been started before (a checkpoint, or the event planned before this
    /// run), so the sink may hold batches its checkpoint does not: worth asking (`held`).
    may_hold: bool,
    /// The writes sent ahead and not finished yet, oldest (batch `unflushed_next_seq`) first:
    /// at most [`WRITES_AHEAD`] between batches, none after a checkpoint.
    queued: VecDeque<Queued>,
}

impl Engine {
    /// Processes one event to a final status, or leaves it pending when interrupted.
    /// `grouping`: the dispatcher leaves event rows to the group writer (`[events] streams`
    /// as the daemon started), so an unplanned one is not this task's.
    pub(crate) async fn process(self: &Arc<Self>, event_id: &str, grouping: bool) {
        match self.process_inner(event_id, grouping).await {
            Ok(()) => {}
            Err(Interrupted::Draining) => {
                tracing::info!(
                    event_id,
                    "Event paused for shutdown at its last checkpoint; it resumes on the next start"
                );
            }
            Err(e) => {
                tracing::error!(event_id, error = %e, "Event processing interrupted; it stays pending")
            }
        }
    }

    async fn process_inner(
        self: &Arc<Self>,
        event_id: &str,
        grouping: bool,
    ) -> Result<(), Interrupted> {
        if self.health.is_draining() {
            return Err(Interrupted::Draining);
        }
        let Some(event) = self.state.event(event_id).await? else {
            return Ok(());
        };
        if event.status.is_final() || self.state.is_grouped(event_id).await? {
            // A grouped event is the group writer's, whoever was told about it.
            return Ok(());
        }
        let event_row = plan::is_event_row(&event.kind, &event.topic);
        if grouping && event_row && !self.state.is_planned(event_id).await? {
            return Ok(());
        }
        let Some(received) = self.read_received(&event).await? else {
            return Ok(());
        };
        let Received {
            incoming,
            client,
            job,
        } = received;
        let job_id = job.as_ref().map(|j| j.job_id.clone());

        let planned_before = self.state.is_planned(event_id).await?;
        if !planned_before
            && !self
                .route_and_plan(&event, incoming.as_ref(), &client, job.as_ref(), grouping)
                .await?
        {
            return Ok(());
        }

        let deliveries = self.state.deliveries(event_id).await?;
        let streams = self.state.streams(event_id).await?;
        let started = Instant::now();
        tracing::info!(
            event_id,
            topic = %event.topic,
            streams = streams.len(),
            sinks = %deliveries.iter().map(|d| d.sink.as_str()).collect::<Vec<_>>().join(","),
            "Event processing started"
        );
        let mut work = SinkWork::from_deliveries(&deliveries, planned_before);
        self.deliver_streams(&client, &event, &streams, &mut work, job_id.as_deref())
            .await?;
        let run = Run {
            event_id,
            client: &client,
            job_id: job_id.as_deref(),
            resumed: planned_before,
            started,
        };
        self.settle(&run, &streams, &work).await
    }

    /// Reads what a run of the event works with from its stored body and its Flatfile job.
    /// `None` when that settled the event: a body that no longer parses, a job that cannot be
    /// read.
    async fn read_received(&self, event: &StoredEvent) -> Result<Option<Received>, Interrupted> {
        let event_id = event.event_id.as_str();
        // A completed upload of rows carried in webhook bodies is described, not received, by
        // its stored body; everything else is the event as received.
        let incoming = if event.kind == CARRIED_KIND {
            None
        } else {
            match parse_webhook_body(&event.body) {
                Ok(incoming) => Some(incoming),
                Err(e) => {
                    let detail = format!("stored body no longer parses: {e}");
                    self.state
                        .set_event_status(event_id, EventStatus::Failed, Some(detail))
                        .await?;
                    return Ok(None);
                }
            }
        };
        let environment_id = incoming
            .as_ref()
            .and_then(IncomingEvent::environment_id)
            .map(str::to_owned);
        let client = self
            .clients
            .for_environment(environment_id.as_deref())
            .clone();
        // Looked at on every run, since the job is completed or failed when delivery ends.
        let job = match &incoming {
            Some(incoming) => match plan::submit_job(&self.config, &client, incoming).await {
                Ok(job) => job,
                Err(e) => {
                    let detail = format!("could not read the event's job: {e}");
                    tracing::error!(event_id, error = %e, "Event failed");
                    self.state
                        .set_event_status(event_id, EventStatus::Failed, Some(detail))
                        .await?;
                    return Ok(None);
                }
            },
            None => None,
        };
        Ok(Some(Received {
            incoming,
            client,
            job,
        }))
    }

    /// Delivers every stream to the pending sinks that still need it, one pass per stream and
    /// replay generation, recording the sinks that failed in `work`.
    async fn deliver_streams(
        self: &Arc<Self>,
        client: &FlatfileClient,
        event: &StoredEvent,
        streams: &[StreamPlan],
        work: &mut SinkWork,
        job_id: Option<&str>,
    ) -> Result<(), Interrupted> {
        let checkpoints = self.state.checkpoints(&event.event_id).await?;
        for (planned, generation) in work.passes(streams) {
            if self.health.is_draining() {
                return Err(Interrupted::Draining);
            }
            let plan = &StreamPlan {
                stream: stream_for_generation(&planned.stream, generation),
                ..planned.clone()
            };
            let cursors = self.cursors(planned, plan, generation, &checkpoints, work);
            if cursors.is_empty() {
                continue;
            }
            let cursors = self
                .deliver_stream(client, event, plan, cursors, job_id)
                .await?;
            for cursor in cursors {
                if let Some(error) = cursor.error {
                    work.sink_errors.insert(cursor.sink.clone(), error);
                }
            }
        }
        Ok(())
    }

    /// A cursor at its checkpoint for each pending sink of `generation` that `planned` is for
    /// and that has not completed `plan`'s stream. A sink no longer configured fails here.
    fn cursors(
        &self,
        planned: &StreamPlan,
        plan: &StreamPlan,
        generation: u32,
        checkpoints: &[Checkpoint],
        work: &mut SinkWork,
    ) -> Vec<Cursor> {
        let mut cursors = Vec::new();
        for sink in &work.pending {
            if work.sink_errors.contains_key(sink)
                || !planned.is_for(sink)
                || work.generation(sink) != generation
            {
                continue;
            }
            let cp = checkpoints
                .iter()
                .find(|c| &c.sink == sink && c.stream == plan.stream);
            if cp.is_some_and(|c| c.complete) {
                continue;
            }
            let Some(worker) = self.sinks.get(sink) else {
                work.sink_errors.insert(
                    sink.clone(),
                    format!("sink `{sink}` is not configured any more"),
                );
                continue;
            };
            cursors.push(Cursor {
                sink: sink.clone(),
                worker: worker.clone(),
                next_seq: cp.map_or(0, |c| c.next_seq),
                rows: cp.map_or(0, |c| c.rows),
                unflushed_rows: 0,
                unflushed_next_seq: cp.map_or(0, |c| c.next_seq),
                error: None,
                may_hold: work.resumed || cp.is_some(),
                queued: VecDeque::new(),
            });
        }
        cursors
    }

    /// Records each pending sink's delivery as done or failed with the rows its checkpoints
    /// hold, then the event's final status, completing or failing its Flatfile job.
    async fn settle(
        &self,
        run: &Run<'_>,
        streams: &[StreamPlan],
        work: &SinkWork,
    ) -> Result<(), Interrupted> {
        let event_id = run.event_id;
        let checkpoints = self.state.checkpoints(event_id).await?;
        let mut total_rows = 0;
        for sink in &work.pending {
            let generation = work.generation(sink);
            let own_streams: HashSet<String> = streams
                .iter()
                .map(|p| stream_for_generation(&p.stream, generation))
                .collect();
            let rows: u64 = checkpoints
                .iter()
                .filter(|c| &c.sink == sink && own_streams.contains(&c.stream))
                .map(|c| c.rows)
                .sum();
            match work.sink_errors.get(sink) {
                Some(error) => {
                    self.state
                        .set_delivery(
                            event_id,
                            sink,
                            DeliveryStatus::Failed,
                            rows,
                            Some(error.clone()),
                        )
                        .await?;
                }
                None => {
                    total_rows = total_rows.max(rows);
                    self.state
                        .set_delivery(event_id, sink, DeliveryStatus::Done, rows, None)
                        .await?;
                }
            }
        }
        if work.sink_errors.is_empty() {
            self.settle_done(run, total_rows, streams.len(), &work.pending)
                .await
        } else {
            self.settle_failed(run, &work.sink_errors).await
        }
    }

    async fn settle_done(
        &self,
        run: &Run<'_>,
        total_rows: u64,
        stream_count: usize,
        sinks: &[String],
    ) -> Result<(), Interrupted> {
        let event_id = run.event_id;
        let seconds = run.started.elapsed().as_secs_f64();
        tracing::info!(event_id, rows = total_rows, seconds, "Event delivered");
        if let Some(job_id) = run.job_id {
            let message = format!(
                "Delivered {total_rows} records from {stream_count} sheet(s) to {}.",
                sinks.join(", ")
            );
            // On a shared state, asked through the session holding the event's claim right
            // before the request: a daemon that lost it (paused past its lease) stops here.
            self.state.probe().await?;
            if !self.finished_elsewhere(run, job_id).await
                && let Err(e) = run.client.job_complete(job_id, &message).await
            {
                tracing::warn!(event_id, job_id = %job_id, error = %e, "Could not complete the Flatfile job");
            }
        }
        self.state
            .set_event_status(event_id, EventStatus::Done, None)
            .await?;
        Ok(())
    }

    async fn settle_failed(
        &self,
        run: &Run<'_>,
        sink_errors: &BTreeMap<String, String>,
    ) -> Result<(), Interrupted> {
        let detail = sink_errors
            .iter()
            .map(|(sink, error)| format!("sink `{sink}`: {error}"))
            .collect::<Vec<_>>()
            .join("; ");
        tracing::error!(event_id = run.event_id, error = %detail, "Event failed");
        // As before completing a job: still holding the event's claim.
        self.state.probe().await?;
        match run.job_id {
            Some(job_id) if self.finished_elsewhere(run, job_id).await => {}
            job_id => self.fail_job(run.client, job_id, &detail).await,
        }
        self.state
            .set_event_status(run.event_id, EventStatus::Failed, Some(detail))
            .await?;
        Ok(())
    }

    /// Routes and plans an event the first time it is processed, and records both. Returns
    /// `false` when that settled the event (unrouted, skipped, refused, a job part), `true`
    /// when it has streams to deliver.
    async fn route_and_plan(
        &self,
        event: &StoredEvent,
        incoming: Option<&IncomingEvent>,
        client: &FlatfileClient,
        job: Option<&SubmitJob>,
        grouping: bool,
    ) -> Result<bool, Interrupted> {
        let event_id = event.event_id.as_str();
        let job_id = job.map(|j| j.job_id.as_str());
        let Some(routed) = self.route(event, incoming).await? else {
            return Ok(false);
        };
        let family = match incoming {
            Some(incoming) => plan::family(client, incoming, job),
            None => Family::Carried,
        };
        if self
            .settle_without_streams(event, &family, client, job_id)
            .await?
        {
            return Ok(false);
        }
        if matches!(family, Family::EventRow) && grouping {
            self.leave_to_group_writer(event, routed).await?;
            return Ok(false);
        }
        if let Some(job_id) = job_id {
            // Acknowledge first, as Flatfile's job handler does, so the user sees the job
            // accepted while the workbook is read.
            if let Err(e) = client.job_ack(job_id, "Accepted by flatsync", 0).await {
                tracing::warn!(job_id = %job_id, error = %e, "Could not acknowledge the Flatfile job");
            }
        }
        let streams = match self
            .plan_streams(event_id, incoming, client, &family, &routed)
            .await?
        {
            Ok(streams) => streams,
            Err(e) => {
                let detail = format!("could not plan the event: {e}");
                tracing::error!(event_id, error = %e, "Event failed");
                self.fail_job(client, job_id, &detail).await;
                self.state
                    .set_event_status(event_id, EventStatus::Failed, Some(detail))
                    .await?;
                return Ok(false);
            }
        };
        let sinks: Vec<String> = routed.into_iter().map(|r| r.sink).collect();
        self.state
            .plan_event(event_id, sinks, streams.plans)
            .await?;
        for (sink, reason) in streams.refused {
            tracing::error!(event_id, sink = %sink, error = %reason, "Sink refused the event");
            self.state
                .set_delivery(event_id, &sink, DeliveryStatus::Failed, 0, Some(reason))
                .await?;
        }
        Ok(true)
    }

    /// Plans an event without data that only the engine could tell apart (a `job:ready` that is
    /// not a submit job) into its group; the group writer delivers it from there.
    async fn leave_to_group_writer(
        &self,
        event: &StoredEvent,
        routed: Vec<RoutedSink>,
    ) -> Result<(), Interrupted> {
        let group = plan::event_group(
            &event.topic,
            event.received_at_ms,
            self.config.events.group_window,
        );
        tracing::info!(event_id = %event.event_id, group = %group.name, "Event row left to the group writer");
        let plan = GroupPlan {
            event_id: event.event_id.clone(),
            sinks: routed.into_iter().map(|r| r.sink).collect(),
            group: Arc::from(group.name),
            window_end_ms: group.window_end_ms,
        };
        self.state.plan_grouped(vec![plan], Vec::new()).await?;
        Ok(())
    }

    /// The sinks the event's routes send it to; `None` when no route matches, which settles
    /// the event as unrouted.
    async fn route(
        &self,
        event: &StoredEvent,
        incoming: Option<&IncomingEvent>,
    ) -> Result<Option<Vec<RoutedSink>>, Interrupted> {
        let event_id = event.event_id.as_str();
        let body: serde_json::Value = serde_json::from_slice(&event.body).unwrap_or_default();
        let environment = incoming
            .and_then(IncomingEvent::environment_id)
            .and_then(|id| self.config.environment_named_by_id(id));
        let routed = route_event(
            &self.config.routes,
            RoutedEvent {
                topic: &event.topic,
                environment,
                body: &body,
            },
        );
        if !routed.is_empty() {
            return Ok(Some(routed));
        }
        let detail = format!(
            "no route matches topic `{}`{}",
            event.topic,
            environment.map_or(String::new(), |e| format!(" in environment `{e}`"))
        );
        tracing::info!(event_id, topic = %event.topic, "Event unrouted");
        self.state
            .set_event_status(event_id, EventStatus::Unrouted, Some(detail))
            .await?;
        Ok(None)
    }

    /// Settles an event whose family has no streams (skipped, refused, a job part) and
    /// returns `true`; `false` for every family that is planned into streams.
    async fn settle_without_streams(
        &self,
        event: &StoredEvent,
        family: &Family,
        client: &FlatfileClient,
        job_id: Option<&str>,
    ) -> Result<bool, Interrupted> {
        let event_id = event.event_id.as_str();
        match family {
            Family::Nothing { reason } => {
                tracing::info!(event_id, topic = %event.topic, reason = %reason, "Event skipped");
                self.state
                    .set_event_status(event_id, EventStatus::Skipped, Some(reason.clone()))
                    .await?;
            }
            Family::Refused { reason } => {
                tracing::error!(event_id, topic = %event.topic, error = %reason, "Event failed");
                self.fail_job(client, job_id, reason).await;
                self.state
                    .set_event_status(event_id, EventStatus::Failed, Some(reason.clone()))
                    .await?;
            }
            Family::JobPart { parent } => {
                self.settle_job_part(event_id, client, job_id, parent.as_deref())
                    .await?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The event's streams: a completed upload's from its stored parts, every other event's
    /// from the event. The inner error is why the event cannot be planned.
    async fn plan_streams(
        &self,
        event_id: &str,
        incoming: Option<&IncomingEvent>,
        client: &FlatfileClient,
        family: &Family,
        routed: &[RoutedSink],
    ) -> Result<Result<plan::Streams, String>, Interrupted> {
        Ok(match incoming {
            None => match self.state.carried_plan(event_id).await? {
                Some(plan) => Ok(plan::Streams {
                    plans: vec![plan],
                    refused: Vec::new(),
                }),
                None => Err(format!(
                    "upload {event_id} is not complete in the state database"
                )),
            },
            Some(incoming) => {
                plan::streams(&self.config, client, event_id, incoming, family, routed)
                    .await
                    .map_err(|e| e.to_string())
            }
        })
    }

    /// A part of a multi-part submit job: the parent's `job:ready` exports the workbook once,
    /// so the part is only acknowledged and completed, as Flatfile's job handler expects of
    /// every job it is given.
    async fn settle_job_part(
        &self,
        event_id: &str,
        client: &FlatfileClient,
        job_id: Option<&str>,
        parent: Option<&str>,
    ) -> Result<(), Interrupted> {
        let parent_text = parent.map_or(String::new(), |p| format!(" of job {p}"));
        let message =
            format!("Part{parent_text}: flatsync exports the workbook once, with the parent job.");
        if let Some(job_id) = job_id {
            if let Err(e) = client.job_ack(job_id, "Accepted by flatsync", 0).await {
                tracing::warn!(job_id, error = %e, "Could not acknowledge the Flatfile job");
            }
            if let Err(e) = client.job_complete(job_id, &message).await {
                tracing::warn!(job_id, error = %e, "Could not complete the Flatfile job");
            }
        }
        let reason = format!(
            "part{parent_text} of a multi-part job: acknowledged and completed, nothing exported (the parent job exports the workbook)"
        );
        tracing::info!(
            event_id,
            job_id,
            parent,
            "Job part completed without export"
        );
        self.state
            .set_event_status(event_id, EventStatus::Skipped, Some(reason))
            .await?;
        Ok(())
    }

    /// Whether the job of a resumed run already ended in Flatfile. A run that stopped after
    /// finishing the job and before recording the event settled (killed, or paused past its
    /// lease on a shared state while another daemon took over) leaves its job finished, and
    /// finishing it again would replace the outcome its user saw. A job that cannot be read is
    /// finished here as before: a second outcome is better than none.
    async fn finished_elsewhere(&self, run: &Run<'_>, job_id: &str) -> bool {
        if !run.resumed {
            return false;
        }
        match run.client.job(job_id).await {
            Ok(job) if job.is_finished() => {
                tracing::info!(
                    event_id = run.event_id,
                    job_id,
                    status = job.status.as_deref().unwrap_or_default(),
                    "Flatfile job already finished; left as it is"
                );
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(event_id = run.event_id, job_id, error = %e, "Could not read the Flatfile job before finishing it");
                false
            }
        }
    }

    async fn fail_job(&self, client: &FlatfileClient, job_id: Option<&str>, detail: &str) {
        if let Some(job_id) = job_id
            && let Err(e) = client.job_fail(job_id, detail).await
        {
            tracing::warn!(job_id, error = %e, "Could not fail the Flatfile job");
        }
    }

    /// Delivers one stream to the given sinks, resuming each from its checkpoint.
    async fn deliver_stream(
        self: &Arc<Self>,
        client: &FlatfileClient,
        event: &StoredEvent,
        plan: &StreamPlan,
        mut cursors: Vec<Cursor>,
        job_id: Option<&str>,
    ) -> Result<Vec<Cursor>, Interrupted> {
        ask_held(plan, &mut cursors).await;
        let Some(start) = cursors
            .iter()
            .filter(|c| c.error.is_none())
            .map(|c| c.unflushed_next_seq)
            .min()
        else {
            return Ok(cursors);
        };
        let started = Instant::now();
        tracing::info!(event_id = %event.event_id, stream = %plan.stream, from_seq = start, "Stream delivery started");
        let mut reader = match StreamReader::open(client, &self.state, event, plan).await {
            Ok(reader) => reader,
            Err(e) => {
                fail_all(&mut cursors, format!("stream {}: {e}", plan.stream));
                return Ok(cursors);
            }
        };
        let buffers = reader.buffers().clone();
        let mut pages = ReadAhead::open(&mut reader, start, &self.config.fetch)
            .await
            .with_batches_at_sinks(WRITES_AHEAD);
        if let Some(count) = pages.page_count {
            refuse_held_past_the_end(plan, &mut cursors, count);
            if cursors.iter().all(|c| c.error.is_some()) {
                return Ok(cursors);
            }
        }
        if let Some(total) = pages.total_rows {
            self.state
                .set_stream_total(&event.event_id, &plan.stream, total)
                .await?;
        }
        let mut flushes = FlushClock::new();
        let mut progress = Progress::new(event, plan, started);
        let mut seq = start;
        loop {
            let current = match pages.next().await {
                Ok(batch) => batch,
                Err(e) => {
                    // A batch whose end is not proven is never delivered: the stream fails here,
                    // checkpointed after the last whole batch.
                    self.checkpoint(event, plan, &mut cursors, false).await?;
                    fail_all(&mut cursors, format!("stream {}: {e}", plan.stream));
                    break;
                }
            };
            let last = current.end || pages.page_count.is_some_and(|count| seq + 1 >= count);
            let rows = current.rows;
            write_to_sinks(
                &mut cursors,
                owned_batch(event, plan, seq, current, last, &buffers),
                plan,
            )
            .await;
            progress.rows_this_run += rows;
            if flushes.due(last, &self.config.daemon) {
                self.checkpoint(event, plan, &mut cursors, last).await?;
                flushes.flushed();
                if let Some(job_id) = job_id
                    && !last
                {
                    progress
                        .report_to_job(client, job_id, seq, pages.page_count)
                        .await;
                }
            }
            if last || cursors.iter().all(|c| c.error.is_some()) {
                break;
            }
            if self.health.is_draining() {
                // Cut here, at a batch boundary, with everything written so far made durable:
                // the next start resumes from this checkpoint.
                self.checkpoint(event, plan, &mut cursors, false).await?;
                return Err(Interrupted::Draining);
            }
            progress.log_if_due(self.config.daemon.progress_interval, seq, pages.total_rows);
            seq += 1;
        }
        progress.finished(&cursors);
        Ok(cursors)
    }

    /// Flushes every sink holding unflushed batches of this stream, then records the new
    /// positions of the sinks whose flush succeeded. Never advances a sink that did not flush.
    async fn checkpoint(
        &self,
        event: &StoredEvent,
        plan: &StreamPlan,
        cursors: &mut [Cursor],
        last: bool,
    ) -> Result<(), Interrupted> {
        finish_writes(cursors, plan, |_| 0).await;
        let flushes = cursors
            .iter_mut()
            .filter(|c| c.error.is_none() && c.unflushed_next_seq > c.next_seq)
            .map(|c| async move {
                let result = c.worker.flush().await;
                (c, result)
            });
        let mut advanced = Vec::new();
        let mut flushed_rows = Vec::new();
        for (cursor, result) in futures_util::future::join_all(flushes).await {
            crate::metrics::sink_call(&cursor.sink, result.as_ref().map(|_| ()));
            match result {
                Ok(()) => {
                    cursor.next_seq = cursor.unflushed_next_seq;
                    cursor.rows += cursor.unflushed_rows;
                    flushed_rows.push((cursor.sink.clone(), cursor.unflushed_rows));
                    cursor.unflushed_rows = 0;
                    advanced.push(Checkpoint {
                        sink: cursor.sink.clone(),
                        stream: plan.stream.clone(),
                        next_seq: cursor.next_seq,
                        complete: last,
                        rows: cursor.rows,
                    });
                }
                Err(e) => {
                    tracing::error!(sink = %cursor.sink, stream = %plan.stream, error = %e, "Sink flush failed");
                    crate::metrics::rows_failed(&cursor.sink, cursor.unflushed_rows);
                    cursor.error = Some(e.to_string());
                }
            }
        }
        if !advanced.is_empty() {
            self.state.advance(&event.event_id, advanced).await?;
            for (sink, rows) in flushed_rows {
                crate::metrics::rows_delivered(&sink, &plan.kind, rows);
            }
        }
        Ok(())
    }
}

/// What a run of an event works with: the event as received (`None` for a completed upload
/// of carried rows), the Flatfile client of its environment and the job it answers, if any.
struct Received {
    incoming: Option<IncomingEvent>,
    client: FlatfileClient,
    job: Option<SubmitJob>,
}

/// What settling a run needs to know about it.
struct Run<'a> {
    event_id: &'a str,
    client: &'a FlatfileClient,
    job_id: Option<&'a str>,
    /// Planned by an earlier run, which may have finished the job before it stopped.
    resumed: bool,
    started: Instant,
}

/// The sinks a run works on: the pending deliveries with their replay generations, and the
/// errors of the sinks that failed, before this run (kept) or during it.
struct SinkWork {
    pending: Vec<String>,
    generation_of: BTreeMap<String, u32>,
    sink_errors: BTreeMap<String, String>,
    /// The event was planned before this run: its streams may have been started before.
    resumed: bool,
}

impl SinkWork {
    fn from_deliveries(deliveries: &[Delivery], resumed: bool) -> SinkWork {
        // A sink that failed before keeps its error; only pending deliveries are worked on.
        SinkWork {
            resumed,
            sink_errors: deliveries
                .iter()
                .filter(|d| d.status == DeliveryStatus::Failed)
                .map(|d| (d.sink.clone(), d.error.clone().unwrap_or_default()))
                .collect(),
            pending: deliveries
                .iter()
                .filter(|d| d.status == DeliveryStatus::Pending)
                .map(|d| d.sink.clone())
                .collect(),
            generation_of: deliveries
                .iter()
                .map(|d| (d.sink.clone(), d.generation))
                .collect(),
        }
    }

    fn generation(&self, sink: &str) -> u32 {
        self.generation_of.get(sink).copied().unwrap_or(0)
    }

    /// Each stream once per generation of the pending sinks. A replayed sink delivers into
    /// streams of its own generation, so sinks that skip batches they already hold take every
    /// row again; sinks on the same generation share one pass over the source.
    fn passes<'p>(&self, streams: &'p [StreamPlan]) -> Vec<(&'p StreamPlan, u32)> {
        let mut generations: Vec<u32> = self.pending.iter().map(|s| self.generation(s)).collect();
        generations.sort_unstable();
        generations.dedup();
        streams
            .iter()
            .flat_map(|p| generations.iter().map(|g| (p, *g)).collect::<Vec<_>>())
            .collect()
    }
}

/// Marks every sink still going as failed with `message`.
fn fail_all(cursors: &mut [Cursor], message: String) {
    for c in cursors.iter_mut().filter(|c| c.error.is_none()) {
        c.error = Some(message.clone());
    }
}

/// Asks the sink of each cursor that may hold batches of `plan`'s stream beyond its checkpoint
/// (ABI 1.2 `held`), all at once, and takes each answer ([`Cursor::take_held`]). A failed call
/// fails that sink's delivery, as a failed write would.
async fn ask_held(plan: &StreamPlan, cursors: &mut [Cursor]) {
    let asks = cursors
        .iter_mut()
        .filter(|c| c.may_hold && c.error.is_none())
        .map(|c| async move {
            let result = c.worker.held(&plan.stream).await;
            (c, result)
        });
    for (cursor, result) in futures_util::future::join_all(asks).await {
        match result {
            Ok(Some(held)) => cursor.take_held(held, &plan.stream),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(sink = %cursor.sink, stream = %plan.stream, error = %e, "Sink failed");
                cursor.error = Some(e.to_string());
            }
        }
    }
}

impl Cursor {
    /// Takes what the sink says it holds: batches through `held.seq` that its checkpoint does
    /// not cover count as written but not flushed, so they are not sent again and the next
    /// checkpoint records them only after the sink's flush made them durable. An answer with
    /// fewer rows than the checkpoint makes no sense: ignored with a warning, and the stream
    /// resumes from the checkpoint as if the sink had nothing to tell.
    fn take_held(&mut self, held: HeldBatches, stream: &str) {
        let Some(next_seq) = held.seq.checked_add(1) else {
            tracing::warn!(sink = %self.sink, stream, seq = held.seq, "Sink reported holding an impossible batch; resuming from its checkpoint");
            return;
        };
        if next_seq <= self.next_seq {
            return;
        }
        if held.rows < self.rows {
            tracing::warn!(
                sink = %self.sink,
                stream,
                held_seq = held.seq,
                held_rows = held.rows,
                checkpoint_rows = self.rows,
                "Sink reported holding fewer rows than its checkpoint; resuming from its checkpoint"
            );
            return;
        }
        tracing::info!(
            sink = %self.sink,
            stream,
            checkpoint_seq = self.next_seq,
            held_seq = held.seq,
            "Sink holds batches beyond its checkpoint; not fetching them again"
        );
        self.unflushed_next_seq = next_seq;
        self.unflushed_rows = held.rows - self.rows;
    }
}

/// Fails the delivery of each sink that said it holds batches up to or past the stream's last
/// (`count` batches): a sink given the last batch has nothing to tell, so the answer was wrong,
/// and the batches after it that the stream was read from do not exist.
fn refuse_held_past_the_end(plan: &StreamPlan, cursors: &mut [Cursor], count: u64) {
    for cursor in cursors
        .iter_mut()
        .filter(|c| c.error.is_none() && c.unflushed_next_seq > c.next_seq)
        .filter(|c| c.unflushed_next_seq >= count)
    {
        let error = format!(
            "the sink said it holds batches 0 to {} of stream {}, which has {count} batch(es) \
             and is not complete in it",
            cursor.unflushed_next_seq - 1,
            plan.stream
        );
        tracing::error!(sink = %cursor.sink, stream = %plan.stream, error = %error, "Sink failed");
        cursor.error = Some(error);
    }
}

/// Batch `seq` of `plan`'s stream as handed to the sinks; its lines' buffer goes back to
/// `buffers` once every sink is done with it.
fn owned_batch(
    event: &StoredEvent,
    plan: &StreamPlan,
    seq: u64,
    page: Batch,
    last: bool,
    buffers: &Buffers,
) -> Arc<OwnedBatch> {
    Arc::new(OwnedBatch {
        stream: plan.stream.clone(),
        kind: plan.kind.clone(),
        event_id: event.event_id.clone(),
        fields_json: plan.fields_json.clone(),
        seq,
        row_count: page.rows,
        ndjson: buffers.share(page.ndjson),
        received_at_ms: event.received_at_ms,
        last,
        deletions: matches!(
            plan.source,
            StreamSource::Deletions { .. }
                | StreamSource::Carried {
                    deletions: true,
                    ..
                }
        ),
    })
}

/// Writes a sink is sent ahead of the answers to them. With none, a sink waited between
/// batches until this task ran again to send the next, which the workers' page conversions
/// delayed: legacy into CSV, the sink thread waited for its next batch a third of the time
/// (`BENCHMARKS.md`, eleventh round). Two were no faster than one and held one more batch.
const WRITES_AHEAD: usize = 1;

/// Sends `batch` to every sink still going that has not taken it yet, behind the batches before
/// it, then waits for the oldest writes beyond [`WRITES_AHEAD`], moving each sink's unflushed
/// position past them or recording its failure. So a sink goes from one batch to the next
/// without waiting for this task; the writes left are finished by later calls, or by the next
/// checkpoint. Every way out of delivery passes a checkpoint, so none is left unfinished.
async fn write_to_sinks(cursors: &mut [Cursor], batch: Arc<OwnedBatch>, plan: &StreamPlan) {
    let seq = batch.seq;
    let rows = batch.row_count;
    // A sink leaves the writes queued behind one it did not accept unwritten; finishing them
    // first (each is sent again) lets this batch start a chain of its own.
    finish_writes(cursors, plan, |queued| {
        if queued.back().is_some_and(|q| q.write.chain_broken()) {
            0
        } else {
            queued.len()
        }
    })
    .await;
    for c in cursors
        .iter_mut()
        .filter(|c| c.error.is_none() && c.next_seq <= seq && c.unflushed_next_seq <= seq)
    {
        let after = c.queued.back().map(|queued| &queued.write);
        let write = c.worker.queue_write(Arc::clone(&batch), after);
        c.queued.push_back(Queued { write, seq, rows });
    }
    finish_writes(cursors, plan, |_| WRITES_AHEAD).await;
}

/// Waits for each sink's oldest writes sent ahead, in order, until `keep` of its queue are
/// left, all sinks at once, and moves each sink's unflushed position past them or records its
/// failure. A sink that failed drops the rest: its chain is broken (or it stalled).
async fn finish_writes(
    cursors: &mut [Cursor],
    plan: &StreamPlan,
    keep: impl Fn(&VecDeque<Queued>) -> usize,
) {
    let sinks = cursors.iter_mut().filter_map(|c| {
        let keep = keep(&c.queued);
        (c.queued.len() > keep).then_some(async move {
            while c.error.is_none()
                && c.queued.len() > keep
                && let Some(queued) = c.queued.pop_front()
            {
                let result = queued.write.finish().await;
                crate::metrics::sink_call(&c.sink, result.as_ref().map(|_| ()));
                match result {
                    Ok(()) => {
                        c.unflushed_rows += queued.rows;
                        c.unflushed_next_seq = queued.seq + 1;
                    }
                    Err(e) => {
                        let seq = queued.seq;
                        tracing::error!(sink = %c.sink, stream = %plan.stream, seq, error = %e, "Sink failed");
                        crate::metrics::rows_failed(&c.sink, queued.rows);
                        c.error = Some(e.to_string());
                        c.queued.clear();
                    }
                }
            }
        })
    });
    futures_util::future::join_all(sinks).await;
}

/// A batch's write sent ahead to a sink ([`SinkWorker::queue_write`]).
struct Queued {
    write: QueuedWrite,
    seq: u64,
    rows: u64,
}

/// When the sinks flush next: every `checkpoint_batches` batches, every
/// `checkpoint_interval` and at the last batch.
struct FlushClock {
    since_flush: u64,
    last_flush: Instant,
}

impl FlushClock {
    fn new() -> FlushClock {
        FlushClock {
            since_flush: 0,
            last_flush: Instant::now(),
        }
    }

    /// Counts one more batch written and says whether a flush is due.
    fn due(&mut self, last: bool, daemon: &DaemonConfig) -> bool {
        self.since_flush += 1;
        last || self.since_flush >= daemon.checkpoint_batches
            || self.last_flush.elapsed() >= daemon.checkpoint_interval
    }

    fn flushed(&mut self) {
        self.since_flush = 0;
        self.last_flush = Instant::now();
    }
}

/// A stream delivery's progress: the `Stream progress` and `Stream delivery finished` logs and
/// the progress of the Flatfile job it works for.
struct Progress<'a> {
    event: &'a StoredEvent,
    plan: &'a StreamPlan,
    started: Instant,
    rows_this_run: u64,
    last_job_report: Instant,
    last_log: Instant,
}

impl<'a> Progress<'a> {
    /// Progress of a delivery that started at `started`, counted from its first batch.
    fn new(event: &'a StoredEvent, plan: &'a StreamPlan, started: Instant) -> Progress<'a> {
        Progress {
            event,
            plan,
            started,
            rows_this_run: 0,
            last_job_report: Instant::now(),
            last_log: Instant::now(),
        }
    }

    /// Tells the job how far delivery got, at most every 2 s.
    async fn report_to_job(
        &mut self,
        client: &FlatfileClient,
        job_id: &str,
        seq: u64,
        page_count: Option<u64>,
    ) {
        if self.last_job_report.elapsed() < Duration::from_secs(2) {
            return;
        }
        let progress = page_count.map_or(0, |c| ((seq + 1) * 100 / c.max(1)).min(99) as u8);
        let info = format!(
            "Delivering {}: page {} of {}",
            self.plan.kind,
            seq + 1,
            page_count.unwrap_or(0)
        );
        if let Err(e) = client.job_ack(job_id, &info, progress).await {
            tracing::warn!(job_id, error = %e, "Could not report job progress");
        }
        self.last_job_report = Instant::now();
    }

    /// Logs rows, rows/s and the ETA when `every` has passed since the last time.
    fn log_if_due(&mut self, every: Duration, seq: u64, total_rows: Option<u64>) {
        if self.last_log.elapsed() < every {
            return;
        }
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        let rows_per_sec = self.rows_this_run as f64 / seconds;
        let done = (seq + 1) * self.plan.page_size.max(1);
        let eta_secs = total_rows
            .filter(|_| rows_per_sec > 0.0)
            .map(|total| (total.saturating_sub(done) as f64 / rows_per_sec).ceil() as u64);
        tracing::info!(
            event_id = %self.event.event_id,
            stream = %self.plan.stream,
            rows = done.min(total_rows.unwrap_or(u64::MAX)),
            total = total_rows,
            rows_per_sec = rows_per_sec as u64,
            eta_secs,
            "Stream progress"
        );
        self.last_log = Instant::now();
    }

    fn finished(&self, cursors: &[Cursor]) {
        let rows = cursors.iter().map(|c| c.rows).max().unwrap_or(0);
        let seconds = self.started.elapsed().as_secs_f64();
        tracing::info!(
            event_id = %self.event.event_id,
            stream = %self.plan.stream,
            rows,
            seconds,
            rows_per_sec = (rows as f64 / seconds.max(1e-9)) as u64,
            "Stream delivery finished"
        );
    }
}

/// The engine new events start on. A reload swaps it; an event keeps the engine (config and
/// sink instances) it started with until it finishes.
pub(crate) type EngineSlot = Arc<std::sync::RwLock<Arc<Engine>>>;

pub(crate) fn current(slot: &EngineSlot) -> Arc<Engine> {
    Arc::clone(
        &slot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}
