//! What an event means for the sinks: its family (a legacy batch or Workspaces sheet, a
//! submitted workbook or sheet, a records delta, deletions, rows carried in webhook bodies, or an
//! event without rows) and the streams that carry it.
//!
//! Planning happens once per event; the plan is stored with the event so a restart pages the
//! same streams the same way.
//!
//! The records a records or commit event is about are found in this order, the first that is
//! there winning: `payload.recordIds` (records events), `sinceCommitId` (commit events), the
//! commit (`commitId`, else the deprecated `versionId`, in the payload, else the context), the
//! event's `dataUrl`. An event naming none of them is delivered as its route says
//! (`unnamed_records`: the whole sheet by default, or a failure); it never ends `done` with its
//! records left out.

use flatsync_flatfile::{
    ApiError, DataUrlTarget, FlatfileClient, IncomingEvent, JobInfo,
    LEGACY_TOPIC_RECORD_STATUS_MODIFIED, LEGACY_TOPIC_RECORDS_ADDED, LegacyNotification,
    PlatformEvent, RecordsSelection, Sheet, TOPIC_WEBHOOK_EGRESS, sanitize_stream_component,
};

use std::time::Duration;

use crate::config::{Config, UnnamedRecords};
use crate::pipeline::route::RoutedSink;
use crate::state::{StreamPlan, StreamSource};

/// Stream kind of legacy batches (the SQLite sink's table name for them).
pub const LEGACY_KIND: &str = flatsync_flatfile::LEGACY_BATCH_KIND;

/// Stream kind (and so SQLite table, CSV file prefix) of row-less events.
pub(crate) const EVENTS_KIND: &str = "events";

/// The columns of an `events` row, in order.
pub(crate) const EVENT_FIELDS: [&str; 6] = [
    "topic",
    "domain",
    "environmentId",
    "createdAt",
    "context",
    "payload",
];

/// The most record ids one records request may name (`ids`, flatfile-api.md §3.2).
const MAX_IDS_PER_REQUEST: usize = 100;

/// The Platform topics whose rows are not the event itself, or may not be (`job:ready` of a
/// submit job; telling needs the job). Every other Platform topic is an event without data
/// ([`Family::EventRow`]), which the group writer plans without the per-event engine.
pub(crate) const ROW_TOPICS: [&str; 8] = [
    "records:created",
    "records:updated",
    "records:deleted",
    "commit:created",
    "commit:updated",
    "commit:completed",
    TOPIC_WEBHOOK_EGRESS,
    "job:ready",
];

/// Whether an event of this kind and topic is an event without data, which the group writer may
/// plan ([`ROW_TOPICS`]); the rest are the per-event engine's.
pub(crate) fn is_event_row(kind: &str, topic: &str) -> bool {
    kind == "platform" && !ROW_TOPICS.contains(&topic)
}

/// The group an event's row goes into: its topic family and the window it was received in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EventGroup {
    /// `events-<topic family>-<UTC window start>`, the name of the group's first stream: a
    /// window with more than `group_max_events` continues in `<name>-2`, `<name>-3`, ...
    pub(crate) name: String,
    /// When the window ends, ms since the Unix epoch.
    pub(crate) window_end_ms: i64,
}

/// The group of an event of `topic` received at `received_at_ms`: `events-space-20240501T120000Z`
/// for a `space:created` received between 12:00 and 13:00 UTC with hour windows. The family is
/// the topic up to its first `:`. Receipt time, not the event's `createdAt`, so that a window
/// fills in the order the inbox drains and every event has one.
pub(crate) fn event_group(topic: &str, received_at_ms: i64, window: Duration) -> EventGroup {
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
    let start = received_at_ms - received_at_ms.rem_euclid(window_ms);
    let family = topic.split(':').next().unwrap_or_default();
    let family = if family.is_empty() {
        "other".to_owned()
    } else {
        sanitize_stream_component(family)
    };
    EventGroup {
        name: format!("{EVENTS_KIND}-{family}-{}", crate::time::compact_utc(start)),
        window_end_ms: start.saturating_add(window_ms),
    }
}

/// What an event asks flatsync to deliver.
#[derive(Debug)]
pub(crate) enum Family {
    /// Every row of a legacy Portal batch, into `legacy-<batch>`, or, for a status change,
    /// into a stream of the event's own so sinks that hold the batch take the rows again.
    LegacyBatch { batch_id: String, per_event: bool },
    /// Every record of a legacy Workspaces sheet.
    WorkspaceSheet {
        workspace_id: String,
        sheet_id: String,
    },
    /// Every record of a workbook's sheets (`job:ready` of a workbook submit action).
    Workbook { workbook_id: String },
    /// Every record of one sheet (a sheet-level submit action).
    WholeSheet { sheet_id: String },
    /// Records one event created or changed; a snapshot route takes the whole sheet instead.
    Delta {
        sheet_id: String,
        source: StreamSource,
    },
    /// A records or commit event naming no records: each sink gets the whole sheet or a
    /// failure, as its routes say.
    Unnamed { sheet_id: String, why: String },
    /// Records deleted from a sheet.
    Deletions { sheet_id: String, ids: Vec<String> },
    /// No rows to fetch: the event itself is the row.
    EventRow,
    /// One part of a multi-part submit job: acknowledged and completed, nothing exported (the
    /// parent's `job:ready` exports the workbook once).
    JobPart { parent: Option<String> },
    /// Rows that arrived in webhook bodies, stored in the state database.
    Carried,
    /// Nothing to deliver, and why.
    Nothing { reason: String },
    /// The event cannot be delivered as it is, and why: it fails, naming what is missing.
    Refused { reason: String },
}

/// A `job:ready` of a submit job flatsync handles: acknowledged, then completed or failed.
#[derive(Debug, Clone)]
pub(crate) struct SubmitJob {
    /// `context.jobId`.
    pub(crate) job_id: String,
    /// `payload.job`, or `<type>:<operation>` of the job.
    pub(crate) name: String,
    /// The job as the API describes it, when the event alone did not say enough.
    pub(crate) info: Option<JobInfo>,
    /// The job is one part of a multi-part job.
    pub(crate) is_part: bool,
}

/// Whether `event` is the `job:ready` of a submit job flatsync handles, and which. The job is
/// read (`GET /v1/jobs/{id}`) when the event leaves out its name, whether it is a part, or what
/// it is about (`context.workbookId` of a workbook job, `context.sheetId` of a sheet job).
pub(crate) async fn submit_job(
    config: &Config,
    client: &FlatfileClient,
    event: &IncomingEvent,
) -> Result<Option<SubmitJob>, ApiError> {
    let IncomingEvent::Platform(e) = event else {
        return Ok(None);
    };
    if e.topic != "job:ready" {
        return Ok(None);
    }
    let Some(job_id) = e.job_id() else {
        return Ok(None);
    };
    let is_submit = |name: &str| config.flatfile.submit_jobs.iter().any(|p| p.matches(name));
    if let Some(name) = e.job_name()
        && !is_submit(name)
    {
        return Ok(None);
    }
    let names_target = match e.job_name() {
        Some(name) if name.starts_with("sheet:") => e.sheet_id().is_some(),
        Some(_) => e.workbook_id().is_some(),
        None => false,
    };
    let info = if e.job_name().is_none() || e.is_part().is_none() || !names_target {
        Some(client.job(job_id).await?)
    } else {
        None
    };
    let name = match (e.job_name(), info.as_ref().and_then(JobInfo::name)) {
        (Some(name), _) => name.to_owned(),
        (None, Some(name)) if is_submit(&name) => name,
        _ => return Ok(None),
    };
    // Either the event or the job saying so makes it a part.
    let is_part = e.is_part() == Some(true) || info.as_ref().is_some_and(JobInfo::is_part);
    Ok(Some(SubmitJob {
        job_id: job_id.to_owned(),
        name,
        info,
        is_part,
    }))
}

/// Sorts an event into its family. `submit` is what [`submit_job`] found.
pub(crate) fn family(
    client: &FlatfileClient,
    event: &IncomingEvent,
    submit: Option<&SubmitJob>,
) -> Family {
    match event {
        IncomingEvent::Legacy(n) => legacy_family(n),
        IncomingEvent::Carried(_) => Family::Carried,
        IncomingEvent::Platform(e) => match submit {
            Some(job) => submit_family(e, job),
            None => platform_family(client, e),
        },
    }
}

fn legacy_family(n: &LegacyNotification) -> Family {
    let workspace_sheet = || match (&n.workspace_id, &n.sheet_id) {
        (Some(workspace_id), Some(sheet_id)) => Some(Family::WorkspaceSheet {
            workspace_id: workspace_id.clone(),
            sheet_id: sheet_id.clone(),
        }),
        _ => None,
    };
    let batch = |per_event| {
        n.batch_id.as_ref().map(|batch_id| Family::LegacyBatch {
            batch_id: batch_id.clone(),
            per_event,
        })
    };
    let found = if n.topic == LEGACY_TOPIC_RECORDS_ADDED {
        // "New records added" is a Workspaces event: its sheet, not a batch it may also name.
        workspace_sheet().or_else(|| batch(false))
    } else if n.topic == LEGACY_TOPIC_RECORD_STATUS_MODIFIED {
        batch(true).or_else(workspace_sheet)
    } else {
        batch(false).or_else(workspace_sheet)
    };
    match (found, &n.sheet_id) {
        (Some(family), _) => family,
        (None, Some(sheet_id)) => Family::Refused {
            reason: format!(
                "legacy notification `{}` names Workspaces sheet {sheet_id} but no scope.workspaceId, \
                 which the legacy records endpoint needs",
                n.topic
            ),
        },
        (None, None) => Family::Nothing {
            reason:
                "legacy notification names no batchId or sheetId (the dashboard's sample payload?)"
                    .to_owned(),
        },
    }
}

fn submit_family(e: &PlatformEvent, job: &SubmitJob) -> Family {
    if job.is_part {
        return Family::JobPart {
            parent: job.info.as_ref().and_then(|i| i.parent_id.clone()),
        };
    }
    let source = job.info.as_ref().and_then(|i| i.source.clone());
    let sheet_level = job.name.starts_with("sheet:");
    let workbook = e.workbook_id().map(str::to_owned).or_else(|| {
        source
            .clone()
            .filter(|s| !sheet_level && !s.starts_with("us_sh_"))
    });
    let sheet = e
        .sheet_id()
        .map(str::to_owned)
        .or_else(|| source.filter(|s| sheet_level && !s.starts_with("us_wb_")));
    match (sheet_level, sheet, workbook) {
        (true, Some(sheet_id), _) => Family::WholeSheet { sheet_id },
        (false, _, Some(workbook_id)) => Family::Workbook { workbook_id },
        // A sheet job naming only its workbook: export the workbook rather than nothing.
        (true, None, Some(workbook_id)) => Family::Workbook { workbook_id },
        _ => Family::Refused {
            reason: format!(
                "submit job {} (`{}`) names no {} in its event or its job",
                job.job_id,
                job.name,
                if sheet_level { "sheet" } else { "workbook" }
            ),
        },
    }
}

fn platform_family(client: &FlatfileClient, e: &PlatformEvent) -> Family {
    let records_event = matches!(e.topic.as_str(), "records:created" | "records:updated");
    let commit_event = matches!(
        e.topic.as_str(),
        "commit:created" | "commit:updated" | "commit:completed"
    );
    if e.topic == TOPIC_WEBHOOK_EGRESS {
        return egress_family(e);
    }
    if e.topic == "records:deleted" {
        return deletions_family(e);
    }
    if !records_event && !commit_event {
        return Family::EventRow;
    }
    records_family(client, e, records_event, commit_event)
}

/// A webhook-egress body stands for its workbook's submit.
fn egress_family(e: &PlatformEvent) -> Family {
    // The body held the first page of each sheet only; the API has every record.
    match e.workbook_id() {
        Some(workbook_id) => Family::Workbook {
            workbook_id: workbook_id.to_owned(),
        },
        None => Family::Refused {
            reason: "the webhook-egress body names no workbook".to_owned(),
        },
    }
}

/// `records:deleted` must name its sheet and the deleted ids: the records cannot be read back.
fn deletions_family(e: &PlatformEvent) -> Family {
    match (e.sheet_id(), e.record_ids()) {
        (Some(sheet_id), Some(ids)) if !ids.is_empty() => Family::Deletions {
            sheet_id: sheet_id.to_owned(),
            ids,
        },
        (None, _) => Family::Refused {
            reason: "records:deleted names no sheet (context.sheetId or payload.sheetId)"
                .to_owned(),
        },
        _ => Family::Refused {
            reason: "records:deleted names no record ids (payload.recordIds); the deleted \
                     records cannot be read back, so flatsync cannot tell the sinks which to delete"
                .to_owned(),
        },
    }
}

/// A records or commit event: the records it names (ids, a commit, a `dataUrl`) of its sheet.
fn records_family(
    client: &FlatfileClient,
    e: &PlatformEvent,
    records_event: bool,
    commit_event: bool,
) -> Family {
    let data_url = e
        .data_url
        .as_deref()
        .map(|url| (url, client.resolve_data_url(url)));
    let sheet = e.sheet_id().map(str::to_owned).or_else(|| match &data_url {
        Some((_, Ok(DataUrlTarget::SheetRecords { sheet_id, .. }))) => Some(sheet_id.clone()),
        Some((_, Ok(DataUrlTarget::Other { sheet_id, .. }))) => sheet_id.clone(),
        _ => None,
    });
    let Some(sheet_id) = sheet else {
        return Family::Refused {
            reason: format!(
                "{} names no sheet (context.sheetId, payload.sheetId or a dataUrl of a sheet)",
                e.topic
            ),
        };
    };
    let delta = |source| Family::Delta {
        sheet_id: sheet_id.clone(),
        source,
    };
    if records_event && let Some(ids) = e.record_ids().filter(|ids| !ids.is_empty()) {
        return delta(StreamSource::SheetIds { ids });
    }
    if commit_event && let Some(since) = e.since_commit_id() {
        return delta(StreamSource::SheetSinceCommit {
            commit_id: since.to_owned(),
        });
    }
    if let Some(commit) = e.commit_id() {
        return delta(StreamSource::SheetCommit {
            commit_id: commit.to_owned(),
        });
    }
    match data_url {
        Some((_, Ok(DataUrlTarget::SheetRecords { selection, .. }))) => match selection {
            RecordsSelection::Ids(ids) => delta(StreamSource::SheetIds { ids }),
            RecordsSelection::Commit(commit_id) => delta(StreamSource::SheetCommit { commit_id }),
            RecordsSelection::SinceCommit(commit_id) => {
                delta(StreamSource::SheetSinceCommit { commit_id })
            }
            RecordsSelection::All => delta(StreamSource::Sheet),
        },
        Some((_, Ok(DataUrlTarget::Other { relative, .. }))) => {
            delta(StreamSource::DataUrl { relative })
        }
        Some((url, Err(error))) => Family::Refused {
            reason: format!("{}: its dataUrl `{url}` cannot be read: {error}", e.topic),
        },
        None => Family::Unnamed {
            sheet_id,
            why: format!(
                "{} names no records: no payload.recordIds, commitId, versionId or dataUrl",
                e.topic
            ),
        },
    }
}

/// The streams of an event for the routed sinks, and the sinks refused outright with why.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    pub(crate) plans: Vec<StreamPlan>,
    pub(crate) refused: Vec<(String, String)>,
}

/// Works out the streams of an event for the routed sinks.
pub(crate) async fn streams(
    config: &Config,
    client: &FlatfileClient,
    event_id: &str,
    incoming: &IncomingEvent,
    family: &Family,
    routed: &[RoutedSink],
) -> Result<Streams, ApiError> {
    let planner = Planner {
        config,
        client,
        event_part: sanitize_stream_component(event_id),
    };
    let plans = match family {
        Family::Nothing { .. } | Family::Refused { .. } | Family::JobPart { .. } => Vec::new(),
        // Planned from the state database, where the parts are.
        Family::Carried => Vec::new(),
        Family::LegacyBatch {
            batch_id,
            per_event,
        } => vec![planner.legacy_batch(batch_id, *per_event)],
        Family::WorkspaceSheet {
            workspace_id,
            sheet_id,
        } => vec![planner.workspace_sheet(workspace_id, sheet_id)],
        Family::Workbook { workbook_id } => planner.workbook(workbook_id).await?,
        Family::WholeSheet { sheet_id } => {
            let sheet = client.sheet(sheet_id).await?;
            vec![planner.sheet_stream(&sheet, "", StreamSource::Sheet)]
        }
        Family::Delta { sheet_id, source } => planner.delta(sheet_id, source, routed).await?,
        Family::Unnamed { sheet_id, why } => return planner.unnamed(sheet_id, why, routed).await,
        Family::Deletions { sheet_id, ids } => {
            vec![planner.deletions(incoming, sheet_id, ids).await?]
        }
        Family::EventRow => vec![planner.event_row()],
    };
    Ok(Streams {
        plans,
        refused: Vec::new(),
    })
}

/// Builds the stream plans of one event; stream names end with the event's id.
struct Planner<'a> {
    config: &'a Config,
    client: &'a FlatfileClient,
    event_part: String,
}

impl Planner<'_> {
    /// A stream of a Platform sheet's records, named after its slug.
    fn sheet_stream(&self, sheet: &Sheet, infix: &str, source: StreamSource) -> StreamPlan {
        let records_page_size = self.config.fetch.records_page_size;
        StreamPlan {
            stream: format!(
                "{}{infix}-{}",
                sanitize_stream_component(&sheet.slug),
                self.event_part
            ),
            kind: sheet.slug.clone(),
            source_ref: sheet.id.clone(),
            fields_json: serde_json::to_string(&sheet.field_keys)
                .unwrap_or_else(|_| "[]".to_owned()),
            page_size: match &source {
                StreamSource::SheetIds { .. } => records_page_size.min(MAX_IDS_PER_REQUEST as u64),
                _ => records_page_size,
            },
            source,
            sinks: None,
        }
    }

    fn legacy_batch(&self, batch_id: &str, per_event: bool) -> StreamPlan {
        StreamPlan {
            stream: if per_event {
                format!(
                    "legacy-{}-{}",
                    sanitize_stream_component(batch_id),
                    self.event_part
                )
            } else {
                format!("legacy-{}", sanitize_stream_component(batch_id))
            },
            kind: LEGACY_KIND.to_owned(),
            source_ref: batch_id.to_owned(),
            fields_json: "[]".to_owned(),
            page_size: self.config.fetch.legacy_page_size,
            source: StreamSource::LegacyBatch,
            sinks: None,
        }
    }

    fn workspace_sheet(&self, workspace_id: &str, sheet_id: &str) -> StreamPlan {
        StreamPlan {
            stream: format!(
                "workspace-{}-{}",
                sanitize_stream_component(sheet_id),
                self.event_part
            ),
            kind: format!("workspace_{}", sanitize_stream_component(sheet_id)),
            source_ref: sheet_id.to_owned(),
            fields_json: "[]".to_owned(),
            page_size: self.config.fetch.legacy_page_size,
            source: StreamSource::WorkspaceSheet {
                workspace_id: workspace_id.to_owned(),
            },
            sinks: None,
        }
    }

    /// One stream per sheet of the workbook.
    async fn workbook(&self, workbook_id: &str) -> Result<Vec<StreamPlan>, ApiError> {
        let workbook = self.client.workbook(workbook_id).await?;
        let sheets = if workbook.sheets.is_empty() {
            self.client.sheets(workbook_id).await?
        } else {
            workbook.sheets
        };
        Ok(sheets
            .iter()
            .map(|sheet| self.sheet_stream(sheet, "", StreamSource::Sheet))
            .collect())
    }

    /// The records the event names, and the whole sheet for sinks whose routes ask for a
    /// snapshot: one stream when every sink wants the same, two when they differ.
    async fn delta(
        &self,
        sheet_id: &str,
        source: &StreamSource,
        routed: &[RoutedSink],
    ) -> Result<Vec<StreamPlan>, ApiError> {
        let sheet = self.client.sheet(sheet_id).await?;
        let (snapshot, delta): (Vec<&RoutedSink>, Vec<&RoutedSink>) =
            routed.iter().partition(|r| r.snapshot);
        Ok(match (snapshot.is_empty(), delta.is_empty()) {
            (true, _) => vec![self.sheet_stream(&sheet, "", source.clone())],
            (false, true) => vec![self.sheet_stream(&sheet, "", StreamSource::Sheet)],
            (false, false) => vec![
                StreamPlan {
                    sinks: Some(sink_names(&delta)),
                    ..self.sheet_stream(&sheet, "", source.clone())
                },
                StreamPlan {
                    sinks: Some(sink_names(&snapshot)),
                    ..self.sheet_stream(&sheet, "-snapshot", StreamSource::Sheet)
                },
            ],
        })
    }

    /// A records or commit event naming no records: the whole sheet for sinks whose routes
    /// take a snapshot then, a refusal for the others.
    async fn unnamed(
        &self,
        sheet_id: &str,
        why: &str,
        routed: &[RoutedSink],
    ) -> Result<Streams, ApiError> {
        let (snapshot, refused): (Vec<&RoutedSink>, Vec<&RoutedSink>) = routed
            .iter()
            .partition(|r| r.snapshot || r.unnamed_records == UnnamedRecords::Snapshot);
        let refused = refused
            .iter()
            .map(|r| {
                (
                    r.sink.clone(),
                    format!("{why} (the sink's routes say unnamed_records = \"fail\")"),
                )
            })
            .collect();
        let plans = if snapshot.is_empty() {
            Vec::new()
        } else {
            let sheet = self.client.sheet(sheet_id).await?;
            vec![StreamPlan {
                sinks: Some(sink_names(&snapshot)),
                ..self.sheet_stream(&sheet, "-snapshot", StreamSource::Sheet)
            }]
        };
        Ok(Streams { plans, refused })
    }

    async fn deletions(
        &self,
        incoming: &IncomingEvent,
        sheet_id: &str,
        ids: &[String],
    ) -> Result<StreamPlan, ApiError> {
        // The records are gone; the sheet usually is not, and its slug names the table the
        // deletions apply to. The event's own slug saves a request.
        let slug = match incoming {
            IncomingEvent::Platform(e) => e.sheet_slug().map(str::to_owned),
            IncomingEvent::Legacy(_) | IncomingEvent::Carried(_) => None,
        };
        let sheet = match slug {
            Some(slug) => Sheet {
                id: sheet_id.to_owned(),
                slug,
                name: None,
                field_keys: Vec::new(),
            },
            None => self.client.sheet(sheet_id).await?,
        };
        Ok(StreamPlan {
            fields_json: "[]".to_owned(),
            ..self.sheet_stream(
                &sheet,
                "-deleted",
                StreamSource::Deletions { ids: ids.to_vec() },
            )
        })
    }

    fn event_row(&self) -> StreamPlan {
        StreamPlan {
            stream: format!("{EVENTS_KIND}-{}", self.event_part),
            kind: EVENTS_KIND.to_owned(),
            source_ref: String::new(),
            fields_json: serde_json::to_string(&EVENT_FIELDS).unwrap_or_else(|_| "[]".to_owned()),
            page_size: 1,
            source: StreamSource::Event,
            sinks: None,
        }
    }
}

fn sink_names(sinks: &[&RoutedSink]) -> Vec<String> {
    sinks.iter().map(|r| r.sink.clone()).collect()
}

/// The one row of an `events` stream: the event itself, with `context` and `payload` as JSON
/// text so that every sink stores them alike.
pub(crate) fn event_row(event_id: &str, topic: &str, body: &[u8]) -> Vec<u8> {
    let parsed: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => serde_json::Value::Null,
        Some(v) => serde_json::Value::String(v.to_string()),
    };
    let str_at = |path: &[&str]| {
        path.iter()
            .try_fold(&parsed, |v, k| v.get(k))
            .and_then(serde_json::Value::as_str)
            .map_or(serde_json::Value::Null, |s| s.into())
    };
    let legacy = parsed.get("topic").is_none();
    let values = if legacy {
        serde_json::json!({
            "topic": topic,
            "domain": "legacy",
            "environmentId": str_at(&["scope", "environmentId"]),
            "createdAt": serde_json::Value::Null,
            "context": text(parsed.get("scope")),
            "payload": text(Some(&parsed)),
        })
    } else {
        serde_json::json!({
            "topic": topic,
            "domain": str_at(&["domain"]),
            "environmentId": str_at(&["context", "environmentId"]),
            "createdAt": str_at(&["createdAt"]),
            "context": text(parsed.get("context")),
            "payload": text(parsed.get("payload")),
        })
    };
    let mut line = serde_json::to_vec(&serde_json::json!({
        "id": event_id,
        "valid": true,
        "values": values,
    }))
    .expect("a JSON value always serializes");
    line.push(b'\n');
    line
}

/// Rows naming deleted records, as deletion batches carry them.
pub(crate) fn deletion_rows(ids: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 48);
    for id in ids {
        out.extend_from_slice(b"{\"id\":");
        out.extend_from_slice(
            serde_json::to_string(id)
                .expect("a string always serializes")
                .as_bytes(),
        );
        out.extend_from_slice(b",\"valid\":true,\"values\":{}}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flatsync_flatfile::parse_webhook_body;

    fn client() -> FlatfileClient {
        FlatfileClient::new(flatsync_flatfile::ClientConfig::default()).expect("client")
    }

    fn family_of(body: &str) -> Family {
        family(
            &client(),
            &parse_webhook_body(body.as_bytes()).expect("parses"),
            None,
        )
    }

    #[test]
    fn each_topic_family_is_recognised() {
        let f = family_of(
            r#"{"id":"e","topic":"records:created","context":{"sheetId":"s"},"payload":{"recordIds":["a","b"]}}"#,
        );
        assert!(
            matches!(f, Family::Delta { source: StreamSource::SheetIds { ref ids }, .. } if ids == &["a", "b"])
        );
        let f = family_of(
            r#"{"id":"e","topic":"records:updated","context":{"sheetId":"s","commitId":"us_vr_1"},"payload":{}}"#,
        );
        assert!(matches!(
            f,
            Family::Delta {
                source: StreamSource::SheetCommit { .. },
                ..
            }
        ));
        let f = family_of(
            r#"{"id":"e","topic":"commit:created","context":{"sheetId":"s"},"payload":{"versionId":"us_vr_2"}}"#,
        );
        assert!(
            matches!(f, Family::Delta { source: StreamSource::SheetCommit { ref commit_id }, .. } if commit_id == "us_vr_2")
        );
        let f = family_of(
            r#"{"id":"e","topic":"commit:completed","context":{"sheetId":"s","commitId":"c9"},"payload":{"sinceCommitId":"c5"}}"#,
        );
        assert!(
            matches!(f, Family::Delta { source: StreamSource::SheetSinceCommit { ref commit_id }, .. } if commit_id == "c5")
        );
        let f = family_of(
            r#"{"id":"e","topic":"records:deleted","payload":{"sheetId":"s","recordIds":["x"]}}"#,
        );
        assert!(matches!(f, Family::Deletions { ref ids, .. } if ids == &["x"]));
        for topic in ["job:ready", "space:created", "cron:hourly", "something:new"] {
            let f = family_of(&format!(r#"{{"id":"e","topic":"{topic}","payload":{{}}}}"#));
            assert!(matches!(f, Family::EventRow), "{topic}: {f:?}");
        }
        let f = family_of(
            r#"{"type":"New records added","scope":{"eventId":"e","sheetId":"3","workspaceId":"w"}}"#,
        );
        assert!(
            matches!(f, Family::WorkspaceSheet { ref workspace_id, ref sheet_id } if workspace_id == "w" && sheet_id == "3")
        );
        let f = family_of(r#"{"scope":{"eventId":"e"}}"#);
        assert!(matches!(f, Family::Nothing { .. }));
    }

    #[test]
    fn records_events_in_every_shape_name_their_records_or_say_they_do_not() {
        // `{count}` only: the route decides; never an `events` row.
        let f = family_of(
            r#"{"id":"e","topic":"records:created","context":{"sheetId":"s"},"payload":{"count":2}}"#,
        );
        assert!(
            matches!(f, Family::Unnamed { ref sheet_id, .. } if sheet_id == "s"),
            "{f:?}"
        );
        // An empty id list names nothing either.
        let f = family_of(
            r#"{"id":"e","topic":"records:updated","context":{"sheetId":"s"},"payload":{"recordIds":[]}}"#,
        );
        assert!(matches!(f, Family::Unnamed { .. }), "{f:?}");
        // `versionId` in the context.
        let f = family_of(
            r#"{"id":"e","topic":"records:created","context":{"sheetId":"s","versionId":"v"},"payload":{"count":2}}"#,
        );
        assert!(
            matches!(f, Family::Delta { source: StreamSource::SheetCommit { ref commit_id }, .. } if commit_id == "v"),
            "{f:?}"
        );
        // A dataUrl, relative to the API root, names the sheet and the commit.
        let f = family_of(
            r#"{"id":"e","topic":"records:created","payload":{"count":2},"dataUrl":"v1/sheets/us_sh_9/records?commitId=us_vr_3"}"#,
        );
        assert!(
            matches!(f, Family::Delta { ref sheet_id, source: StreamSource::SheetCommit { ref commit_id } } if sheet_id == "us_sh_9" && commit_id == "us_vr_3"),
            "{f:?}"
        );
        let f = family_of(
            r#"{"id":"e","topic":"commit:created","context":{"sheetId":"s"},"dataUrl":"v1/sheets/s/records?for=e"}"#,
        );
        assert!(
            matches!(f, Family::Delta { source: StreamSource::DataUrl { ref relative }, .. } if relative == "v1/sheets/s/records?for=e"),
            "{f:?}"
        );
        let f = family_of(
            r#"{"id":"e","topic":"records:created","context":{"sheetId":"s"},"dataUrl":"https://elsewhere.example/v1/sheets/s/records"}"#,
        );
        assert!(
            matches!(f, Family::Refused { ref reason } if reason.contains("outside the configured API")),
            "{f:?}"
        );
        // No sheet at all, and deletions without ids, fail by name.
        let f = family_of(r#"{"id":"e","topic":"records:created","payload":{"count":2}}"#);
        assert!(
            matches!(f, Family::Refused { ref reason } if reason.contains("names no sheet")),
            "{f:?}"
        );
        let f = family_of(
            r#"{"id":"e","topic":"records:deleted","context":{"sheetId":"s"},"payload":{"count":2}}"#,
        );
        assert!(
            matches!(f, Family::Refused { ref reason } if reason.contains("payload.recordIds")),
            "{f:?}"
        );
    }

    #[test]
    fn legacy_notifications_go_to_the_legacy_api() {
        let f = family_of(
            r#"{"type":"Record status modified","scope":{"eventId":"e","batchId":"b","sheetId":"3","workspaceId":"w"}}"#,
        );
        assert!(
            matches!(
                f,
                Family::LegacyBatch {
                    per_event: true,
                    ..
                }
            ),
            "{f:?}"
        );
        let f = family_of(
            r#"{"type":"Record status modified","scope":{"eventId":"e","sheetId":"3","workspaceId":"w"}}"#,
        );
        assert!(matches!(f, Family::WorkspaceSheet { .. }), "{f:?}");
        let f = family_of(r#"{"type":"New records added","scope":{"eventId":"e","sheetId":"3"}}"#);
        assert!(
            matches!(f, Family::Refused { ref reason } if reason.contains("workspaceId")),
            "{f:?}"
        );
        let f = family_of(
            r#"{"type":"Import submitted","scope":{"eventId":"e","batchId":"b","sheetId":"3","workspaceId":"w"}}"#,
        );
        assert!(
            matches!(
                f,
                Family::LegacyBatch {
                    per_event: false,
                    ..
                }
            ),
            "{f:?}"
        );
    }

    #[test]
    fn submit_jobs_export_once_and_parts_export_nothing() {
        let event = parse_webhook_body(
            br#"{"id":"e","topic":"job:ready","context":{"jobId":"j"},"payload":{"job":"workbook:submitActionFg","isPart":false}}"#,
        )
        .expect("parses");
        let IncomingEvent::Platform(platform) = &event else {
            panic!("platform event")
        };
        let job = |is_part: bool, source: Option<&str>, name: &str| SubmitJob {
            job_id: "j".to_owned(),
            name: name.to_owned(),
            info: Some(JobInfo {
                id: "j".to_owned(),
                job_type: None,
                operation: None,
                source: source.map(str::to_owned),
                parent_id: is_part.then(|| "p".to_owned()),
                part: None,
                parts_total: None,
                status: None,
            }),
            is_part,
        };
        assert!(matches!(
            submit_family(platform, &job(true, Some("us_wb_1"), "workbook:submitActionFg")),
            Family::JobPart { parent: Some(ref p) } if p == "p"
        ));
        assert!(matches!(
            submit_family(platform, &job(false, Some("us_wb_1"), "workbook:submitActionFg")),
            Family::Workbook { ref workbook_id } if workbook_id == "us_wb_1"
        ));
        assert!(matches!(
            submit_family(platform, &job(false, Some("us_sh_1"), "sheet:submitActionFg")),
            Family::WholeSheet { ref sheet_id } if sheet_id == "us_sh_1"
        ));
        assert!(matches!(
            submit_family(platform, &job(false, None, "workbook:submitActionFg")),
            Family::Refused { .. }
        ));
    }

    #[test]
    fn an_event_row_carries_the_event() {
        let body = br#"{"id":"us_evt_1","topic":"space:created","domain":"space","createdAt":"2026-01-01T00:00:00.000Z","context":{"environmentId":"us_env_1","spaceId":"us_sp_1"},"payload":{"a":1}}"#;
        let line = event_row("us_evt_1", "space:created", body);
        assert_eq!(line.last(), Some(&b'\n'));
        let row: serde_json::Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(row["id"], "us_evt_1");
        assert_eq!(row["values"]["environmentId"], "us_env_1");
        assert_eq!(row["values"]["domain"], "space");
        assert_eq!(row["values"]["payload"], r#"{"a":1}"#);
        assert_eq!(
            event_row("us_evt_1", "space:created", body),
            line,
            "same bytes every time"
        );
    }

    #[test]
    fn every_platform_topic_outside_the_row_topics_is_an_event_row() {
        for topic in [
            "space:created",
            "file:created",
            "cron:hourly",
            "something:new",
            "x",
        ] {
            assert!(!ROW_TOPICS.contains(&topic));
            let f = family_of(&format!(r#"{{"id":"e","topic":"{topic}","payload":{{}}}}"#));
            assert!(matches!(f, Family::EventRow), "{topic}: {f:?}");
        }
        for topic in ROW_TOPICS.iter().filter(|t| **t != "job:ready") {
            let f = family_of(&format!(
                r#"{{"id":"e","topic":"{topic}","context":{{"sheetId":"s"}},"payload":{{}}}}"#
            ));
            assert!(!matches!(f, Family::EventRow), "{topic}: {f:?}");
        }
    }

    #[test]
    fn events_are_grouped_by_topic_family_and_utc_window() {
        let hour = Duration::from_secs(3600);
        // 2024-05-01T12:34:56.789Z
        let at = 1_714_566_896_789;
        let group = event_group("space:created", at, hour);
        assert_eq!(group.name, "events-space-20240501T120000Z");
        assert_eq!(group.window_end_ms, 1_714_568_400_000);
        assert_eq!(event_group("space:deleted", at, hour), group, "one family");
        assert_eq!(
            event_group("file:created", at, hour).name,
            "events-file-20240501T120000Z"
        );
        assert_eq!(
            event_group("space:created", at, Duration::from_secs(300)).name,
            "events-space-20240501T123000Z"
        );
        assert_eq!(
            event_group("odd topic/x", at, hour).name,
            "events-odd_topic_x-20240501T120000Z"
        );
        assert_eq!(
            event_group(":x", 1_714_568_400_000, hour).name,
            "events-other-20240501T130000Z",
            "a window includes its start"
        );
    }

    #[test]
    fn deletion_rows_name_each_id() {
        let rows = deletion_rows(&["a".to_owned(), "b\"c".to_owned()]);
        assert_eq!(
            String::from_utf8(rows).expect("utf-8"),
            "{\"id\":\"a\",\"valid\":true,\"values\":{}}\n{\"id\":\"b\\\"c\",\"valid\":true,\"values\":{}}\n"
        );
    }
}
