//! Event processing: plan the streams of an event, page through the source, hand each page to
//! every routed sink in order, and advance checkpoints only after the sinks flushed.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flatsync_flatfile::{ApiError, FlatfileClient, IncomingEvent, parse_webhook_body};
use flatsync_plugin_host::{OwnedBatch, SinkWorker};
use futures_util::StreamExt;

use crate::config::Config;
use crate::health::Health;
use crate::pipeline::fetch::{Batch, FetchError, StreamReader};
use crate::pipeline::plan::{self, Family, SubmitJob};
use crate::pipeline::route::{RoutedEvent, route_event};
use crate::state::{
    CARRIED_KIND, Checkpoint, DeliveryStatus, EventStatus, StateDb, StateError, StoredEvent,
    StreamPlan, StreamSource, stream_for_generation,
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
}

impl Engine {
    /// Processes one event to a final status, or leaves it pending when interrupted.
    pub(crate) async fn process(self: &Arc<Self>, event_id: &str) {
        match self.process_inner(event_id).await {
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

    async fn process_inner(self: &Arc<Self>, event_id: &str) -> Result<(), Interrupted> {
        if self.health.is_draining() {
            return Err(Interrupted::Draining);
        }
        let Some(event) = self.state.event(event_id).await? else {
            return Ok(());
        };
        if event.status.is_final() {
            return Ok(());
        }
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
                    return Ok(());
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
                    return Ok(());
                }
            },
            None => None,
        };
        let job_id = job.as_ref().map(|j| j.job_id.clone());

        if !self.state.is_planned(event_id).await?
            && !self
                .route_and_plan(&event, incoming.as_ref(), &client, job.as_ref())
                .await?
        {
            return Ok(());
        }

        let deliveries = self.state.deliveries(event_id).await?;
        let streams = self.state.streams(event_id).await?;
        let mut checkpoints = self.state.checkpoints(event_id).await?;
        let started = Instant::now();
        tracing::info!(
            event_id,
            topic = %event.topic,
            streams = streams.len(),
            sinks = %deliveries.iter().map(|d| d.sink.as_str()).collect::<Vec<_>>().join(","),
            "Event processing started"
        );

        // A sink that failed before keeps its error; only pending deliveries are worked on.
        let mut sink_errors: BTreeMap<String, String> = deliveries
            .iter()
            .filter(|d| d.status == DeliveryStatus::Failed)
            .map(|d| (d.sink.clone(), d.error.clone().unwrap_or_default()))
            .collect();
        let pending: Vec<String> = deliveries
            .iter()
            .filter(|d| d.status == DeliveryStatus::Pending)
            .map(|d| d.sink.clone())
            .collect();

        // A replayed sink delivers into streams of its own generation, so sinks that skip
        // batches they already hold take every row again; sinks on the same generation share
        // one pass over the source.
        let generation_of: BTreeMap<&str, u32> = deliveries
            .iter()
            .map(|d| (d.sink.as_str(), d.generation))
            .collect();
        let mut generations: Vec<u32> = pending
            .iter()
            .map(|s| generation_of.get(s.as_str()).copied().unwrap_or(0))
            .collect();
        generations.sort_unstable();
        generations.dedup();
        let passes: Vec<(&StreamPlan, u32)> = streams
            .iter()
            .flat_map(|p| generations.iter().map(|g| (p, *g)).collect::<Vec<_>>())
            .collect();
        for (planned, generation) in passes {
            if self.health.is_draining() {
                return Err(Interrupted::Draining);
            }
            let plan = &StreamPlan {
                stream: stream_for_generation(&planned.stream, generation),
                ..planned.clone()
            };
            let mut cursors = Vec::new();
            for sink in &pending {
                if sink_errors.contains_key(sink)
                    || !planned.is_for(sink)
                    || generation_of.get(sink.as_str()).copied().unwrap_or(0) != generation
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
                    sink_errors.insert(
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
                });
            }
            if cursors.is_empty() {
                continue;
            }
            let cursors = self
                .deliver_stream(&client, &event, plan, cursors, job_id.as_deref())
                .await?;
            for cursor in cursors {
                if let Some(error) = cursor.error {
                    sink_errors.insert(cursor.sink.clone(), error);
                }
            }
        }

        checkpoints = self.state.checkpoints(event_id).await?;
        let mut total_rows = 0;
        for sink in &pending {
            let generation = generation_of.get(sink.as_str()).copied().unwrap_or(0);
            let own_streams: HashSet<String> = streams
                .iter()
                .map(|p| stream_for_generation(&p.stream, generation))
                .collect();
            let rows: u64 = checkpoints
                .iter()
                .filter(|c| &c.sink == sink && own_streams.contains(&c.stream))
                .map(|c| c.rows)
                .sum();
            match sink_errors.get(sink) {
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
        let seconds = started.elapsed().as_secs_f64();
        if sink_errors.is_empty() {
            tracing::info!(event_id, rows = total_rows, seconds, "Event delivered");
            if let Some(job_id) = &job_id {
                let message = format!(
                    "Delivered {total_rows} records from {} sheet(s) to {}.",
                    streams.len(),
                    pending.join(", ")
                );
                if let Err(e) = client.job_complete(job_id, &message).await {
                    tracing::warn!(event_id, job_id = %job_id, error = %e, "Could not complete the Flatfile job");
                }
            }
            self.state
                .set_event_status(event_id, EventStatus::Done, None)
                .await?;
        } else {
            let detail = sink_errors
                .iter()
                .map(|(sink, error)| format!("sink `{sink}`: {error}"))
                .collect::<Vec<_>>()
                .join("; ");
            tracing::error!(event_id, error = %detail, "Event failed");
            self.fail_job(&client, job_id.as_deref(), &detail).await;
            self.state
                .set_event_status(event_id, EventStatus::Failed, Some(detail))
                .await?;
        }
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
    ) -> Result<bool, Interrupted> {
        let event_id = event.event_id.as_str();
        let job_id = job.map(|j| j.job_id.as_str());
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
        if routed.is_empty() {
            let detail = format!(
                "no route matches topic `{}`{}",
                event.topic,
                environment.map_or(String::new(), |e| format!(" in environment `{e}`"))
            );
            tracing::info!(event_id, topic = %event.topic, "Event unrouted");
            self.state
                .set_event_status(event_id, EventStatus::Unrouted, Some(detail))
                .await?;
            return Ok(false);
        }
        let family = match incoming {
            Some(incoming) => plan::family(client, incoming, job),
            None => Family::Carried,
        };
        match family {
            Family::Nothing { reason } => {
                tracing::info!(event_id, topic = %event.topic, reason = %reason, "Event skipped");
                self.state
                    .set_event_status(event_id, EventStatus::Skipped, Some(reason))
                    .await?;
                return Ok(false);
            }
            Family::Refused { reason } => {
                tracing::error!(event_id, topic = %event.topic, error = %reason, "Event failed");
                self.fail_job(client, job_id, &reason).await;
                self.state
                    .set_event_status(event_id, EventStatus::Failed, Some(reason))
                    .await?;
                return Ok(false);
            }
            Family::JobPart { parent } => {
                self.settle_job_part(event_id, client, job_id, parent.as_deref())
                    .await?;
                return Ok(false);
            }
            _ => {}
        }
        if let Some(job_id) = job_id {
            // Acknowledge first, as Flatfile's job handler does, so the user sees the job
            // accepted while the workbook is read.
            if let Err(e) = client.job_ack(job_id, "Accepted by flatsync", 0).await {
                tracing::warn!(job_id = %job_id, error = %e, "Could not acknowledge the Flatfile job");
            }
        }
        // A completed upload is planned from its stored parts; everything else from the event.
        let planned = match incoming {
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
                plan::streams(&self.config, client, event_id, incoming, &family, &routed)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        let streams = match planned {
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
        let start = cursors.iter().map(|c| c.next_seq).min().unwrap_or(0);
        let page_size = plan.page_size.max(1);
        let stream_started = Instant::now();
        tracing::info!(event_id = %event.event_id, stream = %plan.stream, from_seq = start, "Stream delivery started");

        let fail_all = |cursors: &mut Vec<Cursor>, message: String| {
            for c in cursors.iter_mut().filter(|c| c.error.is_none()) {
                c.error = Some(message.clone());
            }
        };

        let mut reader = match StreamReader::open(client, &self.state, event, plan).await {
            Ok(reader) => reader,
            Err(e) => {
                fail_all(&mut cursors, format!("stream {}: {e}", plan.stream));
                return Ok(cursors);
            }
        };
        // The first batch is read alone: what it shows about the server's paging (whole pages
        // or a cap) is known before any batch is fetched ahead.
        let first = reader.batch(start).await;
        if let Ok(batch) = &first {
            reader.learn_total(batch.total);
        }
        let total_rows = reader.total();
        let page_count = reader.page_count();

        // With a known page count, keep `pages_in_flight` batches going ahead of delivery;
        // without one, read sequentially until a batch proves the end.
        let in_flight = if page_count.is_some() {
            self.config.fetch.pages_in_flight
        } else {
            1
        };
        let end = page_count.unwrap_or(u64::MAX);
        let ahead = reader.clone();
        let mut rest = futures_util::stream::iter((start + 1)..end)
            .map(move |seq| {
                let reader = ahead.clone();
                // A spawned task keeps fetching while the loop below waits on the sinks; a
                // plain future inside `buffered` would only progress while it is polled.
                let mut task = AbortOnDrop(tokio::spawn(async move { reader.batch(seq).await }));
                async move {
                    (&mut task.0).await.unwrap_or_else(|e| {
                        Err(FetchError::Api(ApiError::Transport {
                            method: "GET",
                            url: String::new(),
                            attempts: 0,
                            message: format!("page fetch task ended: {e}"),
                        }))
                    })
                }
            })
            .buffered(in_flight.max(1));

        let mut since_flush = 0u64;
        let mut last_flush = Instant::now();
        let mut last_progress = Instant::now();
        let mut last_progress_log = Instant::now();
        let mut rows_this_run = 0u64;
        let mut seq = start;
        let mut page = first;
        loop {
            let current = match page {
                Ok(batch) => batch,
                Err(e) => {
                    // A batch whose end is not proven is never delivered: the stream fails here,
                    // checkpointed after the last whole batch.
                    self.checkpoint(event, plan, &mut cursors, false).await?;
                    fail_all(&mut cursors, format!("stream {}: {e}", plan.stream));
                    break;
                }
            };
            let last = current.end || page_count.is_some_and(|count| seq + 1 >= count);
            let batch = Arc::new(OwnedBatch {
                stream: plan.stream.clone(),
                kind: plan.kind.clone(),
                event_id: event.event_id.clone(),
                fields_json: plan.fields_json.clone(),
                seq,
                row_count: current.rows,
                ndjson: Bytes::from(current.ndjson),
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
            });
            let writes = cursors
                .iter_mut()
                .filter(|c| c.error.is_none() && c.next_seq <= seq && c.unflushed_next_seq <= seq)
                .map(|c| {
                    let batch = Arc::clone(&batch);
                    async move {
                        let result = c.worker.write_batch(batch).await;
                        (c, result)
                    }
                });
            for (cursor, result) in futures_util::future::join_all(writes).await {
                crate::metrics::sink_call(&cursor.sink, result.as_ref().map(|_| ()));
                match result {
                    Ok(()) => {
                        cursor.unflushed_rows += current.rows;
                        cursor.unflushed_next_seq = seq + 1;
                    }
                    Err(e) => {
                        tracing::error!(sink = %cursor.sink, stream = %plan.stream, seq, error = %e, "Sink failed");
                        crate::metrics::rows_failed(&cursor.sink, current.rows);
                        cursor.error = Some(e.to_string());
                    }
                }
            }
            rows_this_run += current.rows;
            since_flush += 1;
            let due = last
                || since_flush >= self.config.daemon.checkpoint_batches
                || last_flush.elapsed() >= self.config.daemon.checkpoint_interval;
            if due {
                self.checkpoint(event, plan, &mut cursors, last).await?;
                since_flush = 0;
                last_flush = Instant::now();
                if let Some(job_id) = job_id
                    && !last
                    && last_progress.elapsed() >= Duration::from_secs(2)
                {
                    let progress =
                        page_count.map_or(0, |c| ((seq + 1) * 100 / c.max(1)).min(99) as u8);
                    let info = format!(
                        "Delivering {}: page {} of {}",
                        plan.kind,
                        seq + 1,
                        page_count.unwrap_or(0)
                    );
                    if let Err(e) = client.job_ack(job_id, &info, progress).await {
                        tracing::warn!(job_id, error = %e, "Could not report job progress");
                    }
                    last_progress = Instant::now();
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
            if last_progress_log.elapsed() >= self.config.daemon.progress_interval {
                let seconds = stream_started.elapsed().as_secs_f64().max(1e-9);
                let rows_per_sec = rows_this_run as f64 / seconds;
                let done = (seq + 1) * page_size;
                let eta_secs = total_rows
                    .filter(|_| rows_per_sec > 0.0)
                    .map(|total| (total.saturating_sub(done) as f64 / rows_per_sec).ceil() as u64);
                tracing::info!(
                    event_id = %event.event_id,
                    stream = %plan.stream,
                    rows = done.min(total_rows.unwrap_or(u64::MAX)),
                    total = total_rows,
                    rows_per_sec = rows_per_sec as u64,
                    eta_secs,
                    "Stream progress"
                );
                last_progress_log = Instant::now();
            }
            seq += 1;
            page = match rest.next().await {
                Some(next) => next,
                // Only a stream of known page count runs out, and its last batch ended the
                // loop before.
                None => Ok(Batch {
                    ndjson: Vec::new(),
                    rows: 0,
                    end: true,
                    total: None,
                }),
            };
        }
        let rows = cursors.iter().map(|c| c.rows).max().unwrap_or(0);
        let seconds = stream_started.elapsed().as_secs_f64();
        tracing::info!(
            event_id = %event.event_id,
            stream = %plan.stream,
            rows,
            seconds,
            rows_per_sec = (rows as f64 / seconds.max(1e-9)) as u64,
            "Stream delivery finished"
        );
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
                crate::metrics::rows_delivered(&sink, rows);
            }
        }
        Ok(())
    }
}

/// Aborts a spawned page fetch nobody waits for any more (the stream stopped early).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
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
