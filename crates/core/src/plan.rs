//! What an event means for the sinks: its family (a legacy batch, a submitted workbook or
//! sheet, a records delta, deletions, or an event without rows) and the streams that carry it.
//!
//! Planning happens once per event; the plan is stored with the event so a restart pages the
//! same streams the same way.

use flatsync_flatfile::{
    ApiError, FlatfileClient, IncomingEvent, PlatformEvent, Sheet, sanitize_stream_component,
};

use crate::config::Config;
use crate::pipeline::LEGACY_KIND;
use crate::route::RoutedSink;
use crate::state::{StreamPlan, StreamSource};

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

/// What an event asks flatsync to deliver.
#[derive(Debug)]
pub(crate) enum Family {
    /// Every row of a legacy Portal batch.
    LegacyBatch { batch_id: String },
    /// Every record of a workbook's sheets (`job:ready` of a workbook submit action).
    Workbook { workbook_id: String },
    /// Every record of one sheet (a sheet-level submit action, a legacy Workspaces
    /// notification naming a sheet).
    WholeSheet { sheet_id: String },
    /// Records one event created or changed; a snapshot route takes the whole sheet instead.
    Delta {
        sheet_id: String,
        source: StreamSource,
    },
    /// Records deleted from a sheet.
    Deletions { sheet_id: String, ids: Vec<String> },
    /// No rows to fetch: the event itself is the row.
    EventRow,
    /// Nothing to deliver, and why.
    Nothing { reason: String },
}

/// The `job:ready` job id of a submit action flatsync handles, to acknowledge and complete.
pub(crate) fn submit_job_id(config: &Config, event: &IncomingEvent) -> Option<String> {
    match event {
        IncomingEvent::Platform(e) if is_submit(config, e) => e.job_id().map(str::to_owned),
        _ => None,
    }
}

fn is_submit(config: &Config, e: &PlatformEvent) -> bool {
    e.topic == "job:ready"
        && e.job_name()
            .is_some_and(|job| config.flatfile.submit_jobs.iter().any(|p| p.matches(job)))
}

/// Sorts an event into its family.
pub(crate) fn family(config: &Config, event: &IncomingEvent) -> Family {
    let e = match event {
        IncomingEvent::Legacy(n) => {
            return match (&n.batch_id, &n.sheet_id) {
                (Some(batch_id), _) => Family::LegacyBatch {
                    batch_id: batch_id.clone(),
                },
                (None, Some(sheet_id)) => Family::WholeSheet {
                    sheet_id: sheet_id.clone(),
                },
                (None, None) => Family::Nothing {
                    reason: "legacy notification names no batchId or sheetId (the dashboard's sample payload?)"
                        .to_owned(),
                },
            };
        }
        IncomingEvent::Platform(e) => e,
    };
    let sheet = e.sheet_id().map(str::to_owned);
    match e.topic.as_str() {
        "job:ready" if is_submit(config, e) => {
            let job = e.job_name().unwrap_or_default();
            let sheet_level = job.starts_with("sheet:") || e.workbook_id().is_none();
            match (sheet_level, sheet, e.workbook_id()) {
                (true, Some(sheet_id), _) => Family::WholeSheet { sheet_id },
                (false, _, Some(workbook_id)) => Family::Workbook {
                    workbook_id: workbook_id.to_owned(),
                },
                _ => Family::Nothing {
                    reason: format!(
                        "job `{job}` names no {}",
                        if sheet_level {
                            "context.sheetId"
                        } else {
                            "context.workbookId"
                        }
                    ),
                },
            }
        }
        "records:created" | "records:updated" => match (sheet, e.record_ids(), e.commit_id()) {
            (Some(sheet_id), Some(ids), _) if !ids.is_empty() => Family::Delta {
                sheet_id,
                source: StreamSource::SheetIds { ids },
            },
            (Some(sheet_id), _, Some(commit)) => Family::Delta {
                sheet_id,
                source: StreamSource::SheetCommit {
                    commit_id: commit.to_owned(),
                },
            },
            _ => Family::EventRow,
        },
        "commit:created" | "commit:updated" | "commit:completed" => {
            match (sheet, e.since_commit_id(), e.commit_id()) {
                (Some(sheet_id), Some(since), _) => Family::Delta {
                    sheet_id,
                    source: StreamSource::SheetSinceCommit {
                        commit_id: since.to_owned(),
                    },
                },
                (Some(sheet_id), None, Some(commit)) => Family::Delta {
                    sheet_id,
                    source: StreamSource::SheetCommit {
                        commit_id: commit.to_owned(),
                    },
                },
                _ => Family::EventRow,
            }
        }
        "records:deleted" => match (sheet, e.record_ids()) {
            (Some(sheet_id), Some(ids)) if !ids.is_empty() => Family::Deletions { sheet_id, ids },
            _ => Family::EventRow,
        },
        _ => Family::EventRow,
    }
}

/// Works out the streams of an event for the routed sinks.
pub(crate) async fn streams(
    config: &Config,
    client: &FlatfileClient,
    event_id: &str,
    incoming: &IncomingEvent,
    family: &Family,
    routed: &[RoutedSink],
) -> Result<Vec<StreamPlan>, ApiError> {
    let event_part = sanitize_stream_component(event_id);
    let records_page_size = config.fetch.records_page_size;
    let sheet_stream = |sheet: &Sheet, infix: &str, source: StreamSource| StreamPlan {
        stream: format!(
            "{}{infix}-{event_part}",
            sanitize_stream_component(&sheet.slug)
        ),
        kind: sheet.slug.clone(),
        source_ref: sheet.id.clone(),
        fields_json: serde_json::to_string(&sheet.field_keys).unwrap_or_else(|_| "[]".to_owned()),
        page_size: match &source {
            StreamSource::SheetIds { .. } => records_page_size.min(MAX_IDS_PER_REQUEST as u64),
            _ => records_page_size,
        },
        source,
        sinks: None,
    };
    Ok(match family {
        Family::Nothing { .. } => Vec::new(),
        Family::LegacyBatch { batch_id } => vec![StreamPlan {
            stream: format!("legacy-{}", sanitize_stream_component(batch_id)),
            kind: LEGACY_KIND.to_owned(),
            source_ref: batch_id.clone(),
            fields_json: "[]".to_owned(),
            page_size: config.fetch.legacy_page_size,
            source: StreamSource::LegacyBatch,
            sinks: None,
        }],
        Family::Workbook { workbook_id } => {
            let workbook = client.workbook(workbook_id).await?;
            let sheets = if workbook.sheets.is_empty() {
                client.sheets(workbook_id).await?
            } else {
                workbook.sheets
            };
            sheets
                .iter()
                .map(|sheet| sheet_stream(sheet, "", StreamSource::Sheet))
                .collect()
        }
        Family::WholeSheet { sheet_id } => {
            let sheet = client.sheet(sheet_id).await?;
            vec![sheet_stream(&sheet, "", StreamSource::Sheet)]
        }
        Family::Delta { sheet_id, source } => {
            let sheet = client.sheet(sheet_id).await?;
            let (snapshot, delta): (Vec<&RoutedSink>, Vec<&RoutedSink>) =
                routed.iter().partition(|r| r.snapshot);
            let names = |sinks: &[&RoutedSink]| sinks.iter().map(|r| r.sink.clone()).collect();
            match (snapshot.is_empty(), delta.is_empty()) {
                (true, _) => vec![sheet_stream(&sheet, "", source.clone())],
                (false, true) => vec![sheet_stream(&sheet, "", StreamSource::Sheet)],
                (false, false) => vec![
                    StreamPlan {
                        sinks: Some(names(&delta)),
                        ..sheet_stream(&sheet, "", source.clone())
                    },
                    StreamPlan {
                        sinks: Some(names(&snapshot)),
                        ..sheet_stream(&sheet, "-snapshot", StreamSource::Sheet)
                    },
                ],
            }
        }
        Family::Deletions { sheet_id, ids } => {
            // The records are gone; the sheet usually is not, and its slug names the table the
            // deletions apply to. The event's own slug saves a request.
            let slug = match incoming {
                IncomingEvent::Platform(e) => e.sheet_slug().map(str::to_owned),
                IncomingEvent::Legacy(_) => None,
            };
            let sheet = match slug {
                Some(slug) => Sheet {
                    id: sheet_id.clone(),
                    slug,
                    name: None,
                    field_keys: Vec::new(),
                },
                None => client.sheet(sheet_id).await?,
            };
            vec![StreamPlan {
                fields_json: "[]".to_owned(),
                ..sheet_stream(
                    &sheet,
                    "-deleted",
                    StreamSource::Deletions { ids: ids.clone() },
                )
            }]
        }
        Family::EventRow => vec![StreamPlan {
            stream: format!("{EVENTS_KIND}-{event_part}"),
            kind: EVENTS_KIND.to_owned(),
            source_ref: String::new(),
            fields_json: serde_json::to_string(&EVENT_FIELDS).unwrap_or_else(|_| "[]".to_owned()),
            page_size: 1,
            source: StreamSource::Event,
            sinks: None,
        }],
    })
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

    fn config() -> Config {
        Config::parse(
            "[daemon]\nstate_dir = \"/tmp/x\"\n",
            std::path::Path::new("/tmp/flatsync.toml"),
        )
        .expect("config")
    }

    fn family_of(body: &str) -> Family {
        family(
            &config(),
            &parse_webhook_body(body.as_bytes()).expect("parses"),
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
        let f = family_of(
            r#"{"id":"e","topic":"job:ready","context":{"workbookId":"w","jobId":"j"},"payload":{"job":"workbook:submitActionFg"}}"#,
        );
        assert!(matches!(f, Family::Workbook { .. }));
        let f = family_of(
            r#"{"id":"e","topic":"job:ready","context":{"workbookId":"w","sheetId":"s","jobId":"j"},"payload":{"job":"sheet:submitActionFg"}}"#,
        );
        assert!(matches!(f, Family::WholeSheet { ref sheet_id } if sheet_id == "s"));
        for topic in [
            "job:ready",
            "space:created",
            "records:created",
            "cron:hourly",
            "something:new",
        ] {
            let f = family_of(&format!(r#"{{"id":"e","topic":"{topic}","payload":{{}}}}"#));
            assert!(matches!(f, Family::EventRow), "{topic}: {f:?}");
        }
        let f = family_of(
            r#"{"type":"New records added","scope":{"eventId":"e","sheetId":"us_sh_1"}}"#,
        );
        assert!(matches!(f, Family::WholeSheet { .. }));
        let f = family_of(r#"{"scope":{"eventId":"e"}}"#);
        assert!(matches!(f, Family::Nothing { .. }));
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
    fn deletion_rows_name_each_id() {
        let rows = deletion_rows(&["a".to_owned(), "b\"c".to_owned()]);
        assert_eq!(
            String::from_utf8(rows).expect("utf-8"),
            "{\"id\":\"a\",\"valid\":true,\"values\":{}}\n{\"id\":\"b\\\"c\",\"valid\":true,\"values\":{}}\n"
        );
    }
}
