//! Requests and answers of the admin API (`/_sim/...`), shared by the server, [`RunningSim`]'s
//! in-process methods and [`AdminClient`]. Their JSON is what the HTTP endpoints take and give.
//!
//! [`RunningSim`]: crate::RunningSim
//! [`AdminClient`]: crate::AdminClient

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value as Json};

/// `POST /_sim/submit`: a submit action, as when a user clicks Submit on a workbook or a sheet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmitRequest {
    /// Environment of the job and of a new workbook [default: the default environment, or the
    /// given workbook's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<String>,
    /// An existing workbook: one created by an earlier submit, or any on-the-fly `us_wb_<x>`.
    /// Without it a new workbook is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workbook_id: Option<String>,
    /// Submit one sheet (a `sheet:` job with `sheetId` and `sheetSlug` in its context) instead of
    /// the whole workbook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sheet_slug: Option<String>,
    /// The job name, `<domain>:<operation>` [default: `workbook:submitActionFg`, or
    /// `sheet:submitActionFg` with `sheet_slug`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Rows of a new workbook in all, split over its sheets [default: `SimConfig::rows`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Split the job into this many part jobs, as Flatfile does for a large submit: the parent's
    /// `job:ready` says `payload.isPart = false`, and each part job (its own id, `parentId` = the
    /// parent, `part` and `partData: {part, total}`) gets a `job:ready` of the same job name
    /// with `payload.isPart = true`. At least 1 [default: no parts].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u64>,
    /// `false` leaves `workbookId`, `sheetId` and `sheetSlug` out of the context of the submit's
    /// job events, so a client must read the job (`GET /v1/jobs/{id}`, whose `source` names the
    /// workbook or sheet) to know what to export [default: true].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_ids: Option<bool>,
}

/// The answer to a submit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Submitted {
    /// The `job:ready` event, which a client handles like a submit webhook.
    pub event_id: String,
    /// The job, `us_jb_...`.
    pub job_id: String,
    /// The submitted workbook.
    pub workbook_id: String,
    /// Its environment.
    pub environment_id: String,
    /// The sheets the job covers (one for a sheet submit), in order.
    pub sheets: Vec<SubmittedSheet>,
    /// The part jobs of a submit with `parts`, in order; empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<SubmittedPart>,
}

/// A part job of a multi-part submit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmittedPart {
    /// The part job, `us_jb_...`; its `parentId` is the submit's job.
    pub job_id: String,
    /// Its `job:ready` event (`payload.isPart = true`).
    pub event_id: String,
    /// Which part, from 1.
    pub part: u64,
    /// How many parts the submit has.
    pub total: u64,
}

/// `POST /_sim/jobs`: a job for a workbook or a sheet, created without any event, as when a
/// `job:ready` reaches a client by a way the simulator does not see (a webhook a test sends
/// itself). Exactly one of `workbook_id` and `sheet_id`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRequest {
    /// The job name, `<type>:<operation>` [default: `workbook:submitActionFg`, or
    /// `sheet:submitActionFg` with `sheet_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The workbook the job is for (its `source`): a submitted one or any `us_wb_<x>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workbook_id: Option<String>,
    /// The sheet the job is for (its `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sheet_id: Option<String>,
    /// Environment of the job [default: the workbook's, or the default environment].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<String>,
}

impl JobRequest {
    /// A `workbook:submitActionFg` job for this workbook.
    pub fn workbook(workbook_id: impl Into<String>) -> JobRequest {
        JobRequest {
            workbook_id: Some(workbook_id.into()),
            ..JobRequest::default()
        }
    }

    /// A `sheet:submitActionFg` job for this sheet.
    pub fn sheet(sheet_id: impl Into<String>) -> JobRequest {
        JobRequest {
            sheet_id: Some(sheet_id.into()),
            ..JobRequest::default()
        }
    }
}

/// The answer to `POST /_sim/jobs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedJob {
    /// The new job, `us_jb_...`, in status `ready`.
    pub job_id: String,
    /// Its name, `<type>:<operation>`.
    pub job: String,
    /// The workbook or sheet it is for.
    pub source: String,
    /// Its environment.
    pub environment_id: String,
}

/// How the `records:*` and `commit:*` events of a record change name what changed
/// (`"eventShape"` of the record admin requests). Flatfile has published several payloads over
/// time; each shape is one a client must cope with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EventShape {
    /// `"recordIds"`: `records:*` carry `payload: {sheetId, recordIds, recordCount}`
    /// (`records:updated`: `{sheetId, recordIds, changes}`); `commit:*` carry `commitId` and
    /// `versionId` in the context, `commit:created` a `dataUrl`.
    #[default]
    RecordIds,
    /// `"count"`: `records:*` carry `payload: {count}` only: no record ids, no commit id in
    /// the context or the payload, no `dataUrl`, as the older published payloads. `commit:*` as
    /// with `recordIds`. The only shape besides `recordIds` a deletion takes.
    Count,
    /// `"dataUrl"`: `records:*` carry `payload: {count}` and a top-level `dataUrl`,
    /// `v1/sheets/<sheetId>/records?commitId=<commit>` relative to the API root (as Flatfile's
    /// listener resolves it); the commit is named nowhere else. `commit:*` as with `recordIds`.
    DataUrl,
    /// `"versionId"`: `records:*` carry `payload: {count}`, and they and `commit:*` name the
    /// commit only as `context.versionId` (the deprecated name), never `commitId`; no `dataUrl`,
    /// no commit id in any payload.
    VersionId,
}

impl EventShape {
    /// The JSON name, e.g. `recordIds`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventShape::RecordIds => "recordIds",
            EventShape::Count => "count",
            EventShape::DataUrl => "dataUrl",
            EventShape::VersionId => "versionId",
        }
    }

    /// The shape of a JSON name.
    pub fn parse(name: &str) -> Option<EventShape> {
        [
            EventShape::RecordIds,
            EventShape::Count,
            EventShape::DataUrl,
            EventShape::VersionId,
        ]
        .into_iter()
        .find(|shape| shape.as_str() == name)
    }
}

/// A sheet covered by a submit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmittedSheet {
    /// Sheet id, `us_sh_...`.
    pub id: String,
    /// Sheet slug, e.g. `contacts`.
    pub slug: String,
    /// Records it has now.
    pub rows: u64,
}

/// `POST /_sim/sheets/{sheetId}/records`: records to add.
#[derive(Clone, Debug, PartialEq)]
pub enum NewRecords {
    /// These records, each a map from field key to value; missing fields are null. JSON
    /// `{"records": [{"firstName": "Ada"}]}`.
    Values(Vec<Map<String, Json>>),
    /// This many records with generated values (about one in ten invalid, like imported rows).
    /// JSON `{"count": 5}`.
    Count(u64),
}

impl Serialize for NewRecords {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            NewRecords::Values(records) => map.serialize_entry("records", records)?,
            NewRecords::Count(count) => map.serialize_entry("count", count)?,
        }
        map.end()
    }
}

/// `PATCH /_sim/sheets/{sheetId}/records`: new values for some fields of a record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordEdit {
    /// Record id.
    pub id: String,
    /// Field key to new value.
    pub values: Map<String, Json>,
}

/// What a record change did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordsChange {
    /// The records added, edited or deleted, in request order.
    pub record_ids: Vec<String>,
    /// The commit of an add or an edit (deletions make none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_id: Option<String>,
    /// The events emitted, in order.
    pub events: Vec<EventRef>,
}

/// An emitted event, named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRef {
    /// Event id.
    pub id: String,
    /// Its topic.
    pub topic: String,
}

/// `POST /_sim/events`: an event of any topic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmitEvent {
    /// Environment whose feed gets the event [default: `context.environmentId`, else the default
    /// environment].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<String>,
    /// Topic, e.g. `space:created`.
    pub topic: String,
    /// Domain [default: the domain of the topic's family, see [`crate::domain_of_topic`]].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Context, merged over `{accountId, environmentId, spaceId}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Map<String, Json>>,
    /// Payload [default: `{}`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Json>,
    /// Accept a domain outside the Platform's enumeration ([`crate::DOMAINS`]), to test how a
    /// client copes with one; refused otherwise.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_unknown_domain: bool,
    /// `createdAt`, ISO 8601 [default: now, and after the previous event]. It may repeat the
    /// previous event's time, so that a burst of events shares one timestamp as on a busy
    /// Platform, but never be earlier than it: listings are ordered by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

fn is_false(flag: &bool) -> bool {
    !*flag
}

impl EmitEvent {
    /// An event of this topic with default context and an empty payload.
    pub fn new(topic: impl Into<String>) -> EmitEvent {
        EmitEvent {
            topic: topic.into(),
            ..EmitEvent::default()
        }
    }
}

/// An event of the simulator's log, as `GET /_sim/events` shows it: the Platform event plus
/// `ackCount`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimEvent {
    /// `us_evt_...`.
    pub id: String,
    /// Topic, e.g. `records:created`.
    pub topic: String,
    /// Domain, one of [`crate::DOMAINS`] (unless emitted with `allowUnknownDomain`).
    pub domain: String,
    /// `accountId`, `environmentId`, `spaceId` and the topic's ids (`workbookId`, `sheetId`,
    /// `sheetSlug`, `jobId`, `commitId`...).
    pub context: Map<String, Json>,
    /// Topic-specific payload.
    pub payload: Json,
    /// ISO 8601 UTC with milliseconds.
    pub created_at: String,
    /// Where a commit's records are (`v1/sheets/{id}/records?commitId=...`, relative to the API
    /// root), on `commit:created`, and on `records:*` of the `dataUrl` [`EventShape`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_url: Option<String>,
    /// When the first ack arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<String>,
    /// Who acknowledged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    /// How many times `POST /v1/events/{id}/ack` was called for it.
    #[serde(default)]
    pub ack_count: u64,
}

impl SimEvent {
    /// `context.environmentId`.
    pub fn environment_id(&self) -> Option<&str> {
        self.context.get("environmentId").and_then(Json::as_str)
    }

    /// The event as the Platform API serves it (and as a webhook would carry it): without
    /// `ackCount`.
    pub fn to_platform_json(&self) -> Json {
        let mut json = serde_json::to_value(self).expect("a SimEvent always serializes");
        if let Some(object) = json.as_object_mut() {
            object.remove("ackCount");
        }
        json
    }
}

/// A record of a sheet as it is now (`GET /_sim/sheets/{sheetId}/records`), reduced to what a
/// sink receives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SheetRow {
    /// Record id.
    pub id: String,
    /// Whether the record is valid.
    pub valid: bool,
    /// Field key and value, in schema order (a JSON object on the wire, in that order).
    #[serde(
        serialize_with = "serialize_ordered",
        deserialize_with = "deserialize_ordered"
    )]
    pub values: Vec<(String, Json)>,
}

fn serialize_ordered<S: Serializer>(
    values: &[(String, Json)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(values.len()))?;
    for (key, value) in values {
        map.serialize_entry(key, value)?;
    }
    map.end()
}

fn deserialize_ordered<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<(String, Json)>, D::Error> {
    struct Pairs;
    impl<'de> Visitor<'de> for Pairs {
        type Value = Vec<(String, Json)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::new();
            while let Some(pair) = map.next_entry::<String, Json>()? {
                pairs.push(pair);
            }
            Ok(pairs)
        }
    }
    deserializer.deserialize_map(Pairs)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sheet_rows_keep_the_schema_order_on_the_wire() {
        let row = SheetRow {
            id: "us_rc_1".to_owned(),
            valid: true,
            values: vec![
                ("zeta".to_owned(), json!(1)),
                ("alpha".to_owned(), json!("a")),
            ],
        };
        let text = serde_json::to_string(&row).expect("serializes");
        assert_eq!(
            text,
            r#"{"id":"us_rc_1","valid":true,"values":{"zeta":1,"alpha":"a"}}"#
        );
        let back: SheetRow = serde_json::from_str(&text).expect("deserializes");
        assert_eq!(back, row);
    }

    #[test]
    fn requests_serialize_as_the_admin_api_reads_them() {
        let submit = SubmitRequest {
            sheet_slug: Some("contacts".to_owned()),
            rows: Some(4),
            ..SubmitRequest::default()
        };
        assert_eq!(
            serde_json::to_value(&submit).expect("serializes"),
            json!({"sheetSlug": "contacts", "rows": 4})
        );
        assert_eq!(
            serde_json::to_value(NewRecords::Count(3)).expect("serializes"),
            json!({"count": 3})
        );
        let mut values = Map::new();
        values.insert("firstName".to_owned(), json!("Ada"));
        assert_eq!(
            serde_json::to_value(NewRecords::Values(vec![values])).expect("serializes"),
            json!({"records": [{"firstName": "Ada"}]})
        );
    }
}
