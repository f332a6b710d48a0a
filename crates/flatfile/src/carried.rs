//! Webhook bodies that carry rows themselves, instead of naming rows to fetch: Portal 2.0
//! `batch.upload` requests, and the batches another flatsync's `http-forward` sink posts (so
//! instances can be chained, edge to central).
//!
//! Either sender splits one upload over several requests. Each request is a [`CarriedPart`]:
//! its rows, already in the batch line format sinks receive, and its place in the upload, so the
//! receiver can store the parts as they come and deliver them as one stream, in order, once every
//! part has arrived.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::convert::{push_compact, push_json_string};

/// Who sent a [`CarriedPart`], which decides how its parts are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarriedOrigin {
    /// A Portal 2.0 `batch.upload` request: part `sequence.index` (from 1) of
    /// `sequence.count`, at most 1,000 rows each (flatfile-api.md §5.4).
    Portal2Upload,
    /// A batch of another flatsync's `http-forward` sink (format `"flatsync"`): part `part` of
    /// `parts` of batch `seq`; the stream ends with the part marked `last`.
    FlatsyncForward,
}

impl CarriedOrigin {
    /// The stored name of the origin.
    pub fn as_str(self) -> &'static str {
        match self {
            CarriedOrigin::Portal2Upload => "portal2",
            CarriedOrigin::FlatsyncForward => "flatsync",
        }
    }

    /// The inverse of [`CarriedOrigin::as_str`].
    pub fn parse(text: &str) -> Option<CarriedOrigin> {
        match text {
            "portal2" => Some(CarriedOrigin::Portal2Upload),
            "flatsync" => Some(CarriedOrigin::FlatsyncForward),
            _ => None,
        }
    }

    /// The topic routes see for a completed upload of this origin.
    pub fn topic(self) -> &'static str {
        match self {
            CarriedOrigin::Portal2Upload => TOPIC_PORTAL2_UPLOAD,
            CarriedOrigin::FlatsyncForward => TOPIC_FORWARDED,
        }
    }
}

/// Topic of a completed Portal 2.0 upload.
pub const TOPIC_PORTAL2_UPLOAD: &str = "batch.upload";
/// Topic of a completed stream forwarded by another flatsync's `http-forward` sink.
pub const TOPIC_FORWARDED: &str = "flatsync:forwarded";

/// One request of an upload whose rows travel in the webhook bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedPart {
    /// Who sent it.
    pub origin: CarriedOrigin,
    /// What the parts of one upload share: the Portal 2.0 batch id (else its event id), or the
    /// forwarded stream's id. Never empty.
    pub upload: String,
    /// The sender's event id: Portal 2.0 `event.id`, or the forwarded batch's `eventId`.
    pub event_id: Option<String>,
    /// Where the part goes in the stream: `(sequence.index, 0)` for Portal 2.0, `(seq, part)`
    /// for a forwarded batch. Parts are delivered in this order.
    pub position: (u64, u64),
    /// How the part says the upload ends.
    pub end: CarriedEnd,
    /// Stream kind the rows are delivered as: `legacy_batch` for Portal 2.0, the forwarded
    /// batch's `kind`.
    pub kind: String,
    /// Field keys in order, when the sender names them (a forwarded batch's `fields`).
    pub fields: Vec<String>,
    /// The rows name deleted records (a forwarded `"type":"deletions"` batch).
    pub deletions: bool,
    /// The rows, one batch line each: `{"id":…,"valid":…,"values":{…}}\n`.
    pub ndjson: Vec<u8>,
    /// Lines in `ndjson`.
    pub rows: u64,
}

/// What a part tells about the end of its upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarriedEnd {
    /// Portal 2.0: the upload has exactly this many parts, numbered from 1.
    Count(u64),
    /// A forwarded batch: its `seq` has `parts` parts, and `last` marks the stream's final
    /// part.
    Batch {
        /// Parts of this part's batch.
        parts: u64,
        /// This is the stream's final part.
        last: bool,
    },
}

/// Why a body that looks like a carried part cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CarriedError(pub(crate) String);

/// The stream id given to a Portal 2.0 upload's rows.
pub fn portal2_stream(upload: &str) -> String {
    format!("upload-{}", crate::sanitize_stream_component(upload))
}

/// Whether `object` is shaped like a carried part; then [`parse_carried`] decides whether it
/// is a good one.
pub(crate) fn looks_carried(object: &serde_json::Map<String, serde_json::Value>) -> bool {
    let portal2 = object
        .get("event")
        .and_then(|e| e.get("type"))
        .and_then(serde_json::Value::as_str)
        == Some(TOPIC_PORTAL2_UPLOAD)
        && object
            .get("data")
            .is_some_and(|d| d.get("validRows").is_some() || d.get("invalidRows").is_some());
    let forwarded = matches!(
        object.get("type").and_then(serde_json::Value::as_str),
        Some("rows" | "deletions")
    ) && object.get("stream").is_some()
        && object.get("rows").is_some();
    portal2 || forwarded
}

/// Reads a body [`looks_carried`] accepted. Row values are copied as sent, in the sender's key
/// order.
pub(crate) fn parse_carried(body: &[u8]) -> Result<CarriedPart, CarriedError> {
    let head: Head<'_> = serde_json::from_slice(body)
        .map_err(|e| CarriedError(format!("the rows body cannot be read: {e}")))?;
    if let Some(event) = head.event {
        return portal2(event, head.data);
    }
    forwarded(head)
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    event: Option<Portal2Event<'a>>,
    #[serde(borrow, default)]
    data: Option<Portal2Data<'a>>,
    // A forwarded batch.
    #[serde(default, rename = "type")]
    kind_of_batch: Option<String>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default, rename = "eventId")]
    event_id: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    part: Option<u64>,
    #[serde(default)]
    parts: Option<u64>,
    #[serde(default)]
    last: Option<bool>,
    #[serde(default)]
    fields: Option<Vec<String>>,
    #[serde(borrow, default)]
    rows: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct Portal2Event<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    sequence: Option<Sequence>,
}

#[derive(Deserialize)]
struct Sequence {
    count: u64,
    index: u64,
}

#[derive(Deserialize)]
struct Portal2Data<'a> {
    #[serde(borrow, default)]
    meta: Option<Portal2Meta<'a>>,
    #[serde(borrow, default, rename = "validRows")]
    valid_rows: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default, rename = "invalidRows")]
    invalid_rows: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct Portal2Meta<'a> {
    #[serde(borrow, default)]
    batch: Option<Portal2Batch<'a>>,
}

#[derive(Deserialize)]
struct Portal2Batch<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// An id sent as a JSON string or number, as text; `None` for anything else or empty.
fn id_text(raw: Option<&RawValue>) -> Option<String> {
    let raw = raw?;
    match serde_json::from_str::<serde_json::Value>(raw.get()).ok()? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn portal2(
    event: Portal2Event<'_>,
    data: Option<Portal2Data<'_>>,
) -> Result<CarriedPart, CarriedError> {
    let event_id = id_text(event.id);
    let data =
        data.ok_or_else(|| CarriedError("a batch.upload body has no \"data\"".to_owned()))?;
    let batch_id = data
        .meta
        .as_ref()
        .and_then(|m| m.batch.as_ref())
        .and_then(|b| id_text(b.id));
    let upload = batch_id.or_else(|| event_id.clone()).ok_or_else(|| {
        CarriedError(
            "a batch.upload body names neither data.meta.batch.id nor event.id, so its parts cannot be put together"
                .to_owned(),
        )
    })?;
    // A single-request upload may leave the sequence out.
    let (count, index) = match event.sequence {
        Some(Sequence { count, index }) => (count, index),
        None => (1, 1),
    };
    if count == 0 || index == 0 || index > count {
        return Err(CarriedError(format!(
            "batch.upload event.sequence is index {index} of {count}; expected 1 <= index <= count"
        )));
    }
    let mut ndjson = Vec::new();
    let mut rows = 0;
    for (valid, list, tag) in [
        (true, data.valid_rows.unwrap_or_default(), 'v'),
        (false, data.invalid_rows.unwrap_or_default(), 'i'),
    ] {
        for (position, row) in list.iter().enumerate() {
            if !row.get().starts_with('{') {
                return Err(CarriedError(format!(
                    "batch.upload data.{}Rows[{position}] is not an object",
                    if valid { "valid" } else { "invalid" }
                )));
            }
            // Portal 2.0 rows carry no id; this one is stable across re-deliveries of the part.
            ndjson.extend_from_slice(b"{\"id\":");
            push_json_string(&mut ndjson, &format!("{upload}:{index}:{tag}{position}"));
            ndjson.extend_from_slice(if valid {
                b",\"valid\":true,\"values\":"
            } else {
                b",\"valid\":false,\"values\":"
            });
            push_compact(&mut ndjson, row.get().as_bytes());
            ndjson.extend_from_slice(b"}\n");
            rows += 1;
        }
    }
    Ok(CarriedPart {
        origin: CarriedOrigin::Portal2Upload,
        upload,
        event_id,
        position: (index, 0),
        end: CarriedEnd::Count(count),
        kind: crate::LEGACY_BATCH_KIND.to_owned(),
        fields: Vec::new(),
        deletions: false,
        ndjson,
        rows,
    })
}

fn forwarded(head: Head<'_>) -> Result<CarriedPart, CarriedError> {
    let missing = |key: &str| CarriedError(format!("a forwarded batch has no usable \"{key}\""));
    let stream = head
        .stream
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("stream"))?;
    let deletions = match head.kind_of_batch.as_deref() {
        Some("rows") => false,
        Some("deletions") => true,
        _ => return Err(missing("type")),
    };
    let seq = head.seq.ok_or_else(|| missing("seq"))?;
    let part = head.part.ok_or_else(|| missing("part"))?;
    let parts = head.parts.ok_or_else(|| missing("parts"))?;
    let last = head.last.ok_or_else(|| missing("last"))?;
    if parts == 0 || part >= parts {
        return Err(CarriedError(format!(
            "a forwarded batch is part {part} of {parts}; expected part < parts"
        )));
    }
    let kind = head
        .kind
        .filter(|k| !k.is_empty())
        .ok_or_else(|| missing("kind"))?;
    let mut ndjson = Vec::new();
    let mut rows = 0;
    for (position, row) in head.rows.unwrap_or_default().iter().enumerate() {
        let line: ForwardedRow<'_> = serde_json::from_str(row.get())
            .map_err(|e| CarriedError(format!("rows[{position}] of a forwarded batch: {e}")))?;
        if line.id.is_empty() {
            // Sinks key rows on the id: two rows without one would be one.
            return Err(CarriedError(format!(
                "rows[{position}] of a forwarded batch has an empty \"id\""
            )));
        }
        ndjson.extend_from_slice(b"{\"id\":");
        push_json_string(&mut ndjson, &line.id);
        ndjson.extend_from_slice(if line.valid.unwrap_or(true) {
            b",\"valid\":true,\"values\":"
        } else {
            b",\"valid\":false,\"values\":"
        });
        match line.values {
            Some(values) if values.get().starts_with('{') => {
                push_compact(&mut ndjson, values.get().as_bytes())
            }
            Some(_) => {
                return Err(CarriedError(format!(
                    "rows[{position}].values of a forwarded batch is not an object"
                )));
            }
            None => ndjson.extend_from_slice(b"{}"),
        }
        ndjson.extend_from_slice(b"}\n");
        rows += 1;
    }
    Ok(CarriedPart {
        origin: CarriedOrigin::FlatsyncForward,
        upload: stream,
        event_id: head.event_id.filter(|e| !e.is_empty()),
        position: (seq, part),
        end: CarriedEnd::Batch { parts, last },
        kind,
        fields: head.fields.unwrap_or_default(),
        deletions,
        ndjson,
        rows,
    })
}

#[derive(Deserialize)]
struct ForwardedRow<'a> {
    id: String,
    #[serde(default)]
    valid: Option<bool>,
    #[serde(borrow, default)]
    values: Option<&'a RawValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(part: &CarriedPart) -> Vec<serde_json::Value> {
        part.ndjson
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("each line is JSON"))
            .collect()
    }

    #[test]
    fn a_forwarded_row_with_an_empty_id_is_refused_naming_it() {
        let error = parse_carried(
            br#"{"type":"rows","stream":"s","kind":"k","seq":0,"part":0,"parts":1,"last":true,"rows":[{"id":"r1"},{"id":""}]}"#,
        )
        .expect_err("an empty id is refused");
        assert_eq!(error.0, "rows[1] of a forwarded batch has an empty \"id\"");
    }

    #[test]
    fn the_portal_2_fixture_is_one_part_of_one() {
        let body = include_bytes!("../testdata/legacy-webhook-v2-batch-upload.json");
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).expect("object");
        assert!(looks_carried(&object));
        let part = parse_carried(body).expect("parses");
        assert_eq!(part.origin, CarriedOrigin::Portal2Upload);
        assert_eq!(part.upload, "596c2c5f-2884-4444-9ccb-2f0772877508");
        assert_eq!(
            part.event_id.as_deref(),
            Some("0bce4ec0-7058-4e71-a5a4-78b4155edd2f")
        );
        assert_eq!(part.position, (1, 0));
        assert_eq!(part.end, CarriedEnd::Count(1));
        assert_eq!(part.rows, 2);
        let rows = lines(&part);
        assert_eq!(rows[0]["values"]["name"], "Rack 9823");
        assert_eq!(rows[0]["valid"], true);
        assert_eq!(
            rows[0]["id"], "596c2c5f-2884-4444-9ccb-2f0772877508:1:v0",
            "a stable id from batch, index and position"
        );
        // Key order is the sender's, not sorted.
        let text = String::from_utf8(part.ndjson.clone()).expect("utf-8");
        assert!(text.contains(r#""values":{"name":"Rack 9823","color":"black","nick":"Snarlz","helmet":"triangle"}"#), "{text}");
    }

    #[test]
    fn portal_2_invalid_rows_follow_valid_ones_and_bad_sequences_are_refused() {
        let body = br#"{"event":{"type":"batch.upload","id":"e","sequence":{"count":3,"index":2}},
            "data":{"meta":{"batch":{"id":77}},"validRows":[{"a":1}],"invalidRows":[{"a":2},{"a":3}]}}"#;
        let part = parse_carried(body).expect("parses");
        assert_eq!(part.upload, "77");
        assert_eq!(part.position, (2, 0));
        assert_eq!(part.end, CarriedEnd::Count(3));
        let rows = lines(&part);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[1]["id"].as_str(), rows[1]["valid"].as_bool()),
            (Some("77:2:i0"), Some(false))
        );
        for bad in [
            r#"{"event":{"type":"batch.upload","id":"e","sequence":{"count":2,"index":3}},"data":{"validRows":[]}}"#,
            r#"{"event":{"type":"batch.upload","id":"e","sequence":{"count":0,"index":0}},"data":{"validRows":[]}}"#,
            r#"{"event":{"type":"batch.upload"},"data":{"validRows":[]}}"#,
            r#"{"event":{"type":"batch.upload","id":"e"},"data":{"validRows":[1]}}"#,
        ] {
            assert!(parse_carried(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_forwarded_batch_keeps_ids_validity_and_values() {
        let body = br#"{"type":"rows","stream":"contacts-us_evt_1","kind":"contacts","eventId":"us_evt_1",
            "seq":3,"part":1,"parts":2,"last":true,"fields":["email","age"],"receivedAt":"2024-05-02T13:58:40.012Z",
            "rows":[{"id":"us_rc_1","valid":false,"values":{"email":"a@example.com","age":41}}]}"#;
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).expect("object");
        assert!(looks_carried(&object));
        let part = parse_carried(body).expect("parses");
        assert_eq!(part.origin, CarriedOrigin::FlatsyncForward);
        assert_eq!(part.upload, "contacts-us_evt_1");
        assert_eq!(part.position, (3, 1));
        assert_eq!(
            part.end,
            CarriedEnd::Batch {
                parts: 2,
                last: true
            }
        );
        assert_eq!(part.kind, "contacts");
        assert_eq!(part.fields, vec!["email", "age"]);
        assert_eq!(
            String::from_utf8(part.ndjson).expect("utf-8"),
            "{\"id\":\"us_rc_1\",\"valid\":false,\"values\":{\"email\":\"a@example.com\",\"age\":41}}\n"
        );
        let deletions = parse_carried(
            br#"{"type":"deletions","stream":"contacts-deleted-e","kind":"contacts","seq":0,"part":0,"parts":1,"last":true,"rows":[{"id":"us_rc_9"}]}"#,
        )
        .expect("parses");
        assert!(deletions.deletions);
        assert_eq!(deletions.rows, 1);
        assert!(
            parse_carried(br#"{"type":"rows","stream":"s","kind":"k","seq":0,"part":2,"parts":2,"last":true,"rows":[]}"#)
                .is_err()
        );
    }
}
