//! Classification of incoming webhook bodies.
//!
//! Webhook bodies are small and arrive rarely compared with row pages, so they are parsed into a
//! `serde_json::Value` and inspected; leniency matters more here than speed, because most of the
//! legacy shapes are only partly documented.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::carried::CarriedPart;

/// A webhook body, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncomingEvent {
    /// A legacy Portal notification (Portal 3.0 REST webhook or Portal 2.0 `batch.upload`).
    Legacy(LegacyNotification),
    /// A Platform event (`{id, topic, domain, context, payload, createdAt, …}`).
    Platform(PlatformEvent),
    /// One request of an upload whose rows travel in the bodies: a Portal 2.0 `batch.upload`,
    /// or a batch another flatsync's `http-forward` sink posted.
    Carried(CarriedPart),
}

/// A legacy Portal webhook, reduced to what is needed to fetch its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyNotification {
    /// `scope.eventId`, else `event.id` (Portal 2.0), else `legacy-` followed by the first 32 hex
    /// digits of the SHA-256 of the body, so that a re-delivery of the same body has the same id.
    pub event_id: String,
    /// `type` (e.g. `portalImportSubmitted`); for Portal 2.0 `event.type` (`batch.upload`); when
    /// neither is present but `scope.batchId` is, `portalImportSubmitted`; otherwise `unknown`.
    pub topic: String,
    /// `scope.batchId`, else `data.meta.batch.id` (Portal 2.0). `None` for the dashboard's
    /// "send sample payload" ping and for notifications that carry no rows.
    pub batch_id: Option<String>,
    /// `scope.environmentId`.
    pub environment_id: Option<String>,
    /// `scope.sheetId`.
    pub sheet_id: Option<String>,
    /// `scope.workbookId`.
    pub workbook_id: Option<String>,
    /// `scope.workspaceId`: the legacy Workspaces workspace a sheet belongs to.
    pub workspace_id: Option<String>,
}

/// A Platform event as delivered to a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformEvent {
    /// Event id (`us_evt_…`), never empty.
    pub id: String,
    /// Topic, e.g. `job:ready` or `commit:created`, never empty.
    pub topic: String,
    /// `domain`, or the part of `topic` before `:` when the body has none.
    pub domain: String,
    /// `context` (`accountId`, `environmentId`, `workbookId`, `sheetId`, `jobId`, …); empty when
    /// the body has none.
    pub context: Map<String, Value>,
    /// `payload`; `Value::Null` when the body has none.
    pub payload: Value,
    /// `createdAt`, as sent.
    pub created_at: Option<String>,
    /// `dataUrl`: where the event's data can be read, relative to the API root (e.g.
    /// `v1/sheets/us_sh_1/records?commitId=us_vr_1`), as Flatfile's listener resolves it.
    /// `None` when absent or empty.
    pub data_url: Option<String>,
}

impl PlatformEvent {
    /// The string value of `context[key]`, if it is a string.
    pub fn context_str(&self, key: &str) -> Option<&str> {
        self.context.get(key).and_then(Value::as_str)
    }

    /// `payload.job`, the job name of a `job:*` event (e.g. `workbook:submitActionFg`).
    pub fn job_name(&self) -> Option<&str> {
        self.payload.get("job").and_then(Value::as_str)
    }

    /// `context.jobId`.
    pub fn job_id(&self) -> Option<&str> {
        self.context_str("jobId")
    }

    /// `context.workbookId`, else `payload.workbookId`.
    pub fn workbook_id(&self) -> Option<&str> {
        self.context_or_payload(&["workbookId"])
    }

    /// `context.environmentId`.
    pub fn environment_id(&self) -> Option<&str> {
        self.context_str("environmentId")
    }

    /// The sheet the event is about: `context.sheetId`, else `payload.sheetId`.
    pub fn sheet_id(&self) -> Option<&str> {
        self.context_or_payload(&["sheetId"])
    }

    /// `context.sheetSlug`, `context.slugs.sheet` or `payload.sheetSlug`.
    pub fn sheet_slug(&self) -> Option<&str> {
        self.context_str("sheetSlug")
            .or_else(|| {
                self.context
                    .get("slugs")
                    .and_then(|s| s.get("sheet"))
                    .and_then(Value::as_str)
            })
            .or_else(|| self.payload_str("sheetSlug"))
            .filter(|s| !s.is_empty())
    }

    /// The commit the event is about: `commitId`, or the deprecated `versionId`, from the
    /// context or the payload.
    pub fn commit_id(&self) -> Option<&str> {
        self.context_or_payload(&["commitId", "versionId"])
    }

    /// `payload.sinceCommitId` (or the deprecated `sinceVersionId`): the event covers every
    /// commit after that one.
    pub fn since_commit_id(&self) -> Option<&str> {
        self.payload_str("sinceCommitId")
            .or_else(|| self.payload_str("sinceVersionId"))
            .or_else(|| self.context_str("sinceCommitId"))
            .filter(|s| !s.is_empty())
    }

    /// `payload.isPart`: whether a `job:*` event is about one part of a multi-part job. `None`
    /// when the payload does not say (a boolean, or the strings `"true"`/`"false"`).
    pub fn is_part(&self) -> Option<bool> {
        match self.payload.get("isPart")? {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s == "true" => Some(true),
            Value::String(s) if s == "false" => Some(false),
            _ => None,
        }
    }

    /// `payload.recordIds`, the string ids in it; `None` when the payload has no such list.
    pub fn record_ids(&self) -> Option<Vec<String>> {
        let ids = self.payload.get("recordIds")?.as_array()?;
        Some(
            ids.iter()
                .filter_map(|id| match id {
                    Value::String(s) if !s.is_empty() => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        )
    }

    fn payload_str(&self, key: &str) -> Option<&str> {
        self.payload.get(key).and_then(Value::as_str)
    }

    fn context_or_payload(&self, keys: &[&str]) -> Option<&str> {
        keys.iter()
            .find_map(|k| self.context_str(k).or_else(|| self.payload_str(k)))
            .filter(|s| !s.is_empty())
    }
}

impl IncomingEvent {
    /// The Flatfile environment the event belongs to, when it says.
    pub fn environment_id(&self) -> Option<&str> {
        match self {
            IncomingEvent::Legacy(n) => n.environment_id.as_deref(),
            IncomingEvent::Platform(e) => e.environment_id(),
            IncomingEvent::Carried(_) => None,
        }
    }

    /// The event's id; for a carried part, the id of the upload it belongs to.
    pub fn id(&self) -> &str {
        match self {
            IncomingEvent::Legacy(n) => &n.event_id,
            IncomingEvent::Platform(e) => &e.id,
            IncomingEvent::Carried(p) => &p.upload,
        }
    }

    /// The topic routes match.
    pub fn topic(&self) -> &str {
        match self {
            IncomingEvent::Legacy(n) => &n.topic,
            IncomingEvent::Platform(e) => &e.topic,
            IncomingEvent::Carried(p) => p.origin.topic(),
        }
    }
}

/// Why a webhook body could not be turned into an [`IncomingEvent`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookBodyError {
    /// The body is not JSON. A server answers 400.
    #[error("the webhook body is not valid JSON: {message} at line {line}, column {column}")]
    Malformed {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in bytes) of the error; 0 when the body is empty.
        column: usize,
        /// What the JSON parser expected or found.
        message: String,
    },
    /// The body is JSON, but neither a Platform event nor a legacy notification. A server
    /// answers 422.
    #[error("the webhook body is JSON but not a Flatfile event: {reason}")]
    UnknownShape {
        /// What was expected and what was found.
        reason: String,
    },
    /// The body carries rows (a Portal 2.0 `batch.upload`, a forwarded flatsync batch) but
    /// cannot be taken as it is. A server answers 422.
    #[error("the webhook body carries rows but {reason}")]
    BadRows {
        /// What is wrong, naming the field.
        reason: String,
    },
}

/// Keys looked for, quoted in [`WebhookBodyError::UnknownShape`] so the sender can see what is
/// missing.
const EXPECTED_KEYS: &str = "expected a Platform event (non-empty string \"id\" and \"topic\") or a legacy \
     Portal notification (a \"scope\" object, a string \"type\", or \"event.type\")";

/// Topic given to a legacy notification that names none and has no batch.
const LEGACY_TOPIC_UNKNOWN: &str = "unknown";

/// Topic of the event flatsync makes of a body `@flatfile/plugin-webhook-egress` posted: a
/// workbook submitted, whose records flatsync reads from the API (the body holds only the first
/// page of each sheet).
pub const TOPIC_WEBHOOK_EGRESS: &str = "webhook-egress";

/// Topic of the Portal "Import submitted" notification, and of a Portal 3.0 notification that
/// carries a batch but no `type`.
pub const LEGACY_TOPIC_IMPORT_SUBMITTED: &str = "portalImportSubmitted";
/// Topic of the Workspaces "New records added" notification.
pub const LEGACY_TOPIC_RECORDS_ADDED: &str = "newRecordsAdded";
/// Topic of the Portal and Workspaces "Record status modified" notification.
pub const LEGACY_TOPIC_RECORD_STATUS_MODIFIED: &str = "recordStatusModified";

/// The topic routes see for a legacy notification type. The dashboard shows the types as
/// "Import submitted", "New records added" and "Record status modified"; what the body's `type`
/// says is not documented, so spellings that differ only in case, spaces, `_`, `-` or `.` map
/// to one topic each. Other types keep their own name.
pub fn legacy_topic(type_name: &str) -> String {
    let folded: String = type_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    match folded.as_str() {
        "importsubmitted" | "portalimportsubmitted" => LEGACY_TOPIC_IMPORT_SUBMITTED.to_owned(),
        "newrecordsadded" | "recordsadded" | "workspacerecordsadded" => {
            LEGACY_TOPIC_RECORDS_ADDED.to_owned()
        }
        "recordstatusmodified" | "recordstatuschanged" => {
            LEGACY_TOPIC_RECORD_STATUS_MODIFIED.to_owned()
        }
        _ => type_name.to_owned(),
    }
}

/// Parses and classifies a webhook body. Pure: it only looks at `body`.
pub fn parse_webhook_body(body: &[u8]) -> Result<IncomingEvent, WebhookBodyError> {
    let value: Value = serde_json::from_slice(body).map_err(malformed)?;
    classify(&value, body)
}

/// [`parse_webhook_body`] of a body already parsed: `value` is what `body` parses to. `body`
/// is still read, for the id of a legacy notification without one and for carried rows.
pub(crate) fn classify(value: &Value, body: &[u8]) -> Result<IncomingEvent, WebhookBodyError> {
    let Value::Object(object) = value else {
        return Err(WebhookBodyError::UnknownShape {
            reason: format!("{EXPECTED_KEYS}, found {}", describe_type(value)),
        });
    };

    if crate::carried::looks_carried(object) {
        return crate::carried::parse_carried(body)
            .map(IncomingEvent::Carried)
            .map_err(|e| WebhookBodyError::BadRows { reason: e.0 });
    }
    if let Some(event) = platform_event(object) {
        return Ok(IncomingEvent::Platform(event));
    }
    // `@flatfile/plugin-webhook-event-forwarder` posts the listener's event object, which keeps
    // the raw event under `src`.
    if let Some(event) = object
        .get("src")
        .and_then(Value::as_object)
        .and_then(platform_event)
    {
        return Ok(IncomingEvent::Platform(event));
    }
    if let Some(notification) = legacy_notification(object, body) {
        return Ok(IncomingEvent::Legacy(notification));
    }
    if is_egress(object) {
        return Err(WebhookBodyError::UnknownShape {
            reason:
                "a webhook-egress body (`workbook` with `sheets`) whose workbook has no \"id\", \
                     so its records cannot be read; another flatsync's http-forward sink must use \
                     format = \"flatsync\" (the default) to chain instances"
                    .to_owned(),
        });
    }
    Err(WebhookBodyError::UnknownShape {
        reason: format!("{EXPECTED_KEYS}, found {}", describe_keys(object)),
    })
}

/// The error for a body that is not JSON; the scrubber reports its parse errors with it too, so
/// the webhook answers 400 with the same line, column and message whichever looks first.
pub(crate) fn malformed(error: serde_json::Error) -> WebhookBodyError {
    let (line, column) = (error.line(), error.column());
    let full = error.to_string();
    // serde_json appends the position to its message; it is reported in its own fields.
    let suffix = format!(" at line {line} column {column}");
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    WebhookBodyError::Malformed {
        line,
        column,
        message,
    }
}

fn platform_event(object: &Map<String, Value>) -> Option<PlatformEvent> {
    // The inbox keys on the id and routes on the topic: empty ones name nothing (a second event
    // with an empty id would be taken for a repeat of the first and dropped).
    let id = object.get("id")?.as_str().filter(|s| !s.is_empty())?;
    let topic = object.get("topic")?.as_str().filter(|s| !s.is_empty())?;
    let domain = match object.get("domain").and_then(Value::as_str) {
        Some(domain) => domain.to_owned(),
        None => topic.split_once(':').map_or(topic, |(d, _)| d).to_owned(),
    };
    let context = match object.get("context") {
        Some(Value::Object(context)) => context.clone(),
        _ => Map::new(),
    };
    Some(PlatformEvent {
        id: id.to_owned(),
        topic: topic.to_owned(),
        domain,
        context,
        payload: object.get("payload").cloned().unwrap_or(Value::Null),
        created_at: object
            .get("createdAt")
            .and_then(Value::as_str)
            .map(str::to_owned),
        data_url: object
            .get("dataUrl")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned),
    })
}

fn legacy_notification(object: &Map<String, Value>, body: &[u8]) -> Option<LegacyNotification> {
    let scope = object.get("scope").and_then(Value::as_object);
    let event = object.get("event").and_then(Value::as_object);
    let type_field = object.get("type").and_then(Value::as_str);
    let event_type = event.and_then(|e| e.get("type")).and_then(Value::as_str);
    if scope.is_none() && type_field.is_none() && event_type.is_none() {
        return None;
    }

    let scope_id = |key: &str| scope.and_then(|s| s.get(key)).and_then(id_string);
    let batch_id = scope_id("batchId").or_else(|| {
        object
            .get("data")
            .and_then(|d| d.get("meta"))
            .and_then(|m| m.get("batch"))
            .and_then(|b| b.get("id"))
            .and_then(id_string)
    });
    let event_id = scope_id("eventId")
        .or_else(|| event.and_then(|e| e.get("id")).and_then(id_string))
        .unwrap_or_else(|| body_event_id(body));
    let topic = match (type_field, event_type) {
        (Some(topic), _) | (None, Some(topic)) => legacy_topic(topic),
        (None, None) if batch_id.is_some() => LEGACY_TOPIC_IMPORT_SUBMITTED.to_owned(),
        (None, None) => LEGACY_TOPIC_UNKNOWN.to_owned(),
    };
    Some(LegacyNotification {
        event_id,
        topic,
        batch_id,
        environment_id: scope_id("environmentId"),
        sheet_id: scope_id("sheetId"),
        workbook_id: scope_id("workbookId"),
        workspace_id: scope_id("workspaceId"),
    })
}

/// Whether `object` is the body `@flatfile/plugin-webhook-egress` posts:
/// `{"workbook": {…, "sheets": [{…, "records": […]}]}}`.
pub(crate) fn is_egress(object: &Map<String, Value>) -> bool {
    object
        .get("workbook")
        .and_then(|w| w.get("sheets"))
        .is_some_and(Value::is_array)
}

/// The Platform event flatsync stores for an egress body (`is_egress`) whose workbook has an
/// id: topic [`TOPIC_WEBHOOK_EGRESS`], the workbook, space and environment in the context, the
/// sheets and how many records the body carried in the payload. The body's records are not
/// kept: the workbook is read from the API, every page, like a submit's. The id is derived from
/// the body, so a re-delivery of the same body is a duplicate. `None` without a workbook id.
pub(crate) fn egress_event(object: &Map<String, Value>, body: &[u8]) -> Option<Value> {
    let workbook = object.get("workbook")?.as_object()?;
    let workbook_id = workbook
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())?;
    let mut context = Map::new();
    context.insert("workbookId".to_owned(), Value::from(workbook_id));
    for key in ["environmentId", "spaceId"] {
        if let Some(value) = workbook.get(key).and_then(Value::as_str) {
            context.insert(key.to_owned(), Value::from(value));
        }
    }
    let sheets: Vec<Value> = workbook
        .get("sheets")
        .and_then(Value::as_array)
        .map(|sheets| {
            sheets
                .iter()
                .map(|sheet| {
                    serde_json::json!({
                        "id": sheet.get("id"),
                        "slug": sheet.get("slug"),
                        "recordsInBody": sheet.get("records").and_then(Value::as_array).map_or(0, Vec::len),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(serde_json::json!({
        "id": body_digest_id("egress-", body),
        "topic": TOPIC_WEBHOOK_EGRESS,
        "domain": "workbook",
        "context": context,
        "payload": { "sheets": sheets },
    }))
}

/// An id that may be sent as a string or a number. Empty strings count as absent: they cannot
/// name anything to fetch.
fn id_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A stable id for a notification that carries none: the same body always maps to the same id,
/// so a re-delivery is recognised as a duplicate.
fn body_event_id(body: &[u8]) -> String {
    body_digest_id("legacy-", body)
}

/// `prefix` and the first 32 hex digits of the SHA-256 of `body`.
fn body_digest_id(prefix: &str, body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut id = String::with_capacity(prefix.len() + 32);
    id.push_str(prefix);
    for byte in &digest[..16] {
        id.push(hex_digit(byte >> 4));
        id.push(hex_digit(byte & 0x0f));
    }
    id
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble)])
}

fn describe_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn describe_keys(object: &Map<String, Value>) -> String {
    const SHOWN: usize = 10;
    const KEY_CHARS: usize = 40;
    if object.is_empty() {
        return "an empty object".to_owned();
    }
    let mut keys: Vec<String> = object
        .keys()
        .take(SHOWN)
        .map(|key| {
            let short: String = key.chars().take(KEY_CHARS).collect();
            format!("{short:?}")
        })
        .collect();
    if object.len() > SHOWN {
        keys.push(format!("and {} more", object.len() - SHOWN));
    }
    format!("an object with keys {}", keys.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_platform_event_needs_a_non_empty_id_and_topic() {
        for body in [
            r#"{"id":"","topic":"job:ready"}"#,
            r#"{"id":"us_evt_1","topic":""}"#,
            r#"{"src":{"id":"","topic":"job:ready"}}"#,
        ] {
            match parse_webhook_body(body.as_bytes()) {
                Err(WebhookBodyError::UnknownShape { reason }) => {
                    assert!(reason.contains("non-empty string \"id\""), "{reason}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    fn parse_ok(body: &[u8]) -> IncomingEvent {
        match parse_webhook_body(body) {
            Ok(event) => event,
            Err(error) => panic!("body should parse, got: {error}"),
        }
    }

    fn legacy(body: &[u8]) -> LegacyNotification {
        match parse_ok(body) {
            IncomingEvent::Legacy(notification) => notification,
            other => panic!("expected a legacy notification, got {other:?}"),
        }
    }

    fn platform(body: &[u8]) -> PlatformEvent {
        match parse_ok(body) {
            IncomingEvent::Platform(event) => event,
            other => panic!("expected a Platform event, got {other:?}"),
        }
    }

    fn unknown_shape_reason(body: &[u8]) -> String {
        match parse_webhook_body(body) {
            Err(WebhookBodyError::UnknownShape { reason }) => reason,
            other => panic!("expected UnknownShape, got {other:?}"),
        }
    }

    #[test]
    fn portal_3_notification_fixture() {
        let n = legacy(include_bytes!(
            "../testdata/legacy-webhook-portal-import-submitted.json"
        ));
        assert_eq!(
            n,
            LegacyNotification {
                event_id: "5925a293-695a-4cc4-bf78-ba43f376cc1d".to_owned(),
                topic: "portalImportSubmitted".to_owned(),
                batch_id: Some("596c2c5f-2884-4444-9ccb-2f0772877508".to_owned()),
                environment_id: Some("1388de39-108b-4fc0-aa10-9eb35f43e7ec".to_owned()),
                sheet_id: None,
                workbook_id: None,
                workspace_id: None,
            }
        );
    }

    #[test]
    fn rest_webhooks_docs_example() {
        let n = legacy(include_bytes!(
            "../testdata/legacy-webhook-docs-example.json"
        ));
        assert_eq!(
            n,
            LegacyNotification {
                event_id: "5925a293-695a-4cc4-bf78-ba43f376cc1d".to_owned(),
                topic: "portalImportSubmitted".to_owned(),
                batch_id: Some("dfb18803-a1b7-45be-b773-0154860463f1".to_owned()),
                environment_id: Some("89793a77-8d53-46df-b562-5867f09fa1f8".to_owned()),
                sheet_id: Some("1bcc9eab-6046-44d5-bdbd-0eb239232322".to_owned()),
                workbook_id: Some("f5e72614-fa3b-4fa9-ba55-664d6814543e".to_owned()),
                workspace_id: Some("1faa5914-1cb1-49cb-9031-50fc3c054686".to_owned()),
            }
        );
    }

    #[test]
    fn portal_2_batch_upload_fixture_carries_its_rows() {
        match parse_ok(include_bytes!(
            "../testdata/legacy-webhook-v2-batch-upload.json"
        )) {
            IncomingEvent::Carried(part) => {
                assert_eq!(part.upload, "596c2c5f-2884-4444-9ccb-2f0772877508");
                assert_eq!(part.rows, 2);
            }
            other => panic!("expected carried rows, got {other:?}"),
        }
        // A batch.upload without rows (a notification only) is still a legacy notification
        // naming its batch.
        let n = legacy(
            br#"{"event":{"type":"batch.upload","id":"e1"},"data":{"meta":{"batch":{"id":"b1"}}}}"#,
        );
        assert_eq!(n.batch_id.as_deref(), Some("b1"));
        assert_eq!(n.topic, "batch.upload");
        // Bad rows are refused with the field named.
        match parse_webhook_body(br#"{"event":{"type":"batch.upload","id":"e","sequence":{"count":1,"index":2}},"data":{"validRows":[]}}"#) {
            Err(WebhookBodyError::BadRows { reason }) => assert!(reason.contains("sequence"), "{reason}"),
            other => panic!("expected BadRows, got {other:?}"),
        }
    }

    #[test]
    fn numeric_ids_are_stringified() {
        let n = legacy(br#"{"scope":{"eventId":42,"batchId":1234567890123,"sheetId":7}}"#);
        assert_eq!(n.event_id, "42");
        assert_eq!(n.batch_id.as_deref(), Some("1234567890123"));
        assert_eq!(n.sheet_id.as_deref(), Some("7"));
        assert_eq!(n.topic, "portalImportSubmitted");

        let n = legacy(
            br#"{"event":{"type":"batch.upload","id":9},"data":{"meta":{"batch":{"id":77}}}}"#,
        );
        assert_eq!(n.event_id, "9");
        assert_eq!(n.batch_id.as_deref(), Some("77"));
    }

    #[test]
    fn notification_without_event_id_gets_a_stable_body_hash_id() {
        let body = br#"{"type":"portalImportSubmitted","scope":{"batchId":"b-1"}}"#;
        let first = legacy(body);
        assert_eq!(first, legacy(body));
        // sha256 of the body above, first 16 bytes in hex.
        let digest = Sha256::digest(body);
        let expected: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(first.event_id, format!("legacy-{expected}"));
        assert_eq!(first.event_id.len(), "legacy-".len() + 32);

        let other = legacy(br#"{"type":"portalImportSubmitted","scope":{"batchId":"b-2"}}"#);
        assert_ne!(first.event_id, other.event_id);
    }

    #[test]
    fn sample_payload_ping_has_no_batch() {
        let n = legacy(br#"{"env":{},"scope":{"eventId":"e-1","team":{"id":1}}}"#);
        assert_eq!(n.batch_id, None);
        assert_eq!(n.topic, "unknown");
        assert_eq!(n.event_id, "e-1");

        let n = legacy(br#"{"type":"recordStatusModified","scope":{"batchId":""}}"#);
        assert_eq!(n.batch_id, None, "an empty batch id cannot be fetched");
        assert_eq!(n.topic, "recordStatusModified");
    }

    #[test]
    fn legacy_dashboard_names_map_to_one_topic_each() {
        for (sent, topic) in [
            ("Import submitted", "portalImportSubmitted"),
            ("import_submitted", "portalImportSubmitted"),
            ("New records added", "newRecordsAdded"),
            ("new-records-added", "newRecordsAdded"),
            ("Record status modified", "recordStatusModified"),
            ("recordStatusModified", "recordStatusModified"),
            ("batch.upload", "batch.upload"),
        ] {
            let body =
                format!(r#"{{"type":"{sent}","scope":{{"eventId":"e","sheetId":"us_sh_1"}}}}"#);
            let n = legacy(body.as_bytes());
            assert_eq!(n.topic, topic, "{sent}");
            assert_eq!(n.sheet_id.as_deref(), Some("us_sh_1"));
        }
    }

    #[test]
    fn platform_job_ready_fixture() {
        let event = platform(include_bytes!("../testdata/event-job-ready-submit.json"));
        assert_eq!(event.id, "us_evt_3Kd9QwPz7Lm2Xa1B");
        assert_eq!(event.topic, "job:ready");
        assert_eq!(event.domain, "job");
        assert_eq!(event.job_name(), Some("workbook:submitActionFg"));
        assert_eq!(event.job_id(), Some("us_jb_T7uY3kPz"));
        assert_eq!(event.workbook_id(), Some("us_wb_Qm5Zt1Xc"));
        assert_eq!(event.context_str("environmentId"), Some("us_env_Rk2v9WqA"));
        assert_eq!(event.context_str("namespaces"), None, "not a string");
        assert_eq!(
            event.created_at.as_deref(),
            Some("2024-05-02T14:03:11.517Z")
        );
    }

    #[test]
    fn platform_commit_and_records_fixtures() {
        let commit = platform(include_bytes!("../testdata/event-commit-created.json"));
        assert_eq!(commit.topic, "commit:created");
        assert_eq!(commit.domain, "workbook");
        assert_eq!(commit.context_str("sheetId"), Some("us_sh_Jp4Ls8Dn"));
        assert_eq!(commit.context_str("commitId"), Some("us_vr_Wc9Hx4Ra"));
        assert_eq!(commit.payload["trackChanges"], Value::Bool(true));
        assert_eq!(commit.job_name(), None);

        let records = platform(include_bytes!("../testdata/event-records-created.json"));
        assert_eq!(records.id, "us_evt_5Pa8Lx2Nc6Vd3Mz9");
        assert_eq!(records.topic, "records:created");
        assert_eq!(records.context_str("sheetSlug"), Some("contacts"));
    }

    #[test]
    fn platform_event_missing_parts_are_filled_leniently() {
        let event = platform(br#"{"id":"us_evt_1","topic":"job:ready"}"#);
        assert_eq!(event.domain, "job");
        assert!(event.context.is_empty());
        assert_eq!(event.payload, Value::Null);
        assert_eq!(event.created_at, None);
        assert_eq!(event.job_id(), None);

        let event = platform(br#"{"id":"us_evt_2","topic":"ping","context":null,"domain":7}"#);
        assert_eq!(event.domain, "ping", "no ':' in the topic: the whole topic");
        assert!(event.context.is_empty());
    }

    #[test]
    fn forwarded_listener_event_uses_src() {
        let event = platform(
            br#"{"src":{"id":"us_evt_9","topic":"job:ready","context":{"jobId":"us_jb_1"}},
                 "topic":"job:ready","payload":{}}"#,
        );
        assert_eq!(event.id, "us_evt_9");
        assert_eq!(event.job_id(), Some("us_jb_1"));
    }

    #[test]
    fn malformed_bodies_report_line_and_column() {
        assert_eq!(
            parse_webhook_body(b"{\n  \"id\": x\n}"),
            Err(WebhookBodyError::Malformed {
                line: 2,
                column: 9,
                message: "expected value".to_owned(),
            })
        );
        assert_eq!(
            parse_webhook_body(b""),
            Err(WebhookBodyError::Malformed {
                line: 1,
                column: 0,
                message: "EOF while parsing a value".to_owned(),
            })
        );
        match parse_webhook_body(b"{\"scope\": {}} trailing") {
            Err(WebhookBodyError::Malformed {
                line,
                column,
                message,
            }) => {
                assert_eq!((line, column), (1, 15));
                assert_eq!(message, "trailing characters");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        let error = parse_webhook_body(b"{\"a\":").expect_err("truncated");
        assert_eq!(
            error.to_string(),
            "the webhook body is not valid JSON: EOF while parsing a value at line 1, column 5"
        );
    }

    #[test]
    fn unknown_shapes_say_what_was_expected() {
        let reason = unknown_shape_reason(b"[1,2]");
        assert!(reason.contains("\"scope\""), "{reason}");
        assert!(reason.ends_with("found an array"), "{reason}");
        assert!(unknown_shape_reason(b"\"hello\"").ends_with("found a string"));
        assert!(unknown_shape_reason(b"null").ends_with("found null"));
        assert!(unknown_shape_reason(b"{}").ends_with("found an empty object"));

        // Key order depends on serde_json's `preserve_order` feature, so only membership is checked.
        let reason = unknown_shape_reason(br#"{"id":"us_evt_1","foo":1}"#);
        assert!(reason.contains("found an object with keys "), "{reason}");
        assert!(
            reason.contains(r#""id""#) && reason.contains(r#""foo""#),
            "{reason}"
        );
        // A number `type` or `topic` does not count.
        unknown_shape_reason(br#"{"type":1,"topic":2,"id":"x"}"#);
        unknown_shape_reason(br#"{"event":{"id":"x"}}"#);
        // The `GET /events/{id}` response wraps the event in `data`; it is not a webhook body.
        unknown_shape_reason(include_bytes!("../testdata/event-get-response.json"));
        // An egress body without a workbook id (http-forward's flatfile-egress format) cannot
        // be read back from the API.
        let reason = unknown_shape_reason(
            br#"{"workbook":{"metadata":{"flatsync":{"seq":0}},"sheets":[{"records":[]}]}}"#,
        );
        assert!(reason.contains("format = \"flatsync\""), "{reason}");

        let error = parse_webhook_body(b"{}").expect_err("empty object");
        assert!(error.to_string().starts_with(
            "the webhook body is JSON but not a Flatfile event: expected a Platform event"
        ));
    }

    #[test]
    fn many_keys_are_listed_briefly() {
        let body: String = format!(
            "{{{}}}",
            (0..15)
                .map(|i| format!("\"k{i}\":1"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let reason = unknown_shape_reason(body.as_bytes());
        assert!(reason.ends_with(", and 5 more"), "{reason}");
        assert_eq!(reason.matches("\"k").count(), 10, "{reason}");
    }
}
