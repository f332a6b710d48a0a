//! Response bodies to results: row pages into NDJSON batch lines, event listings into one
//! compact JSON body per event, and the small Platform objects (workbooks, sheets, counts) into
//! plain structs.
//!
//! Row pages are the hot path (the daemon targets hundreds of thousands of rows per second), so
//! they are converted in one pass with hand-written serde visitors: cell values are borrowed from
//! the body as `&RawValue` and copied into the output buffer, and no `serde_json::Value` is built
//! per row. Each output line is
//! `{"id":"<id>","valid":<bool>,"values":{<key>:<json>,…}}\n`.

use std::fmt;

use serde::Deserialize;
use serde::de::{
    self, DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::Value;
use serde_json::value::RawValue;

mod fast;
mod stream;

pub(crate) use stream::{Fed, Finished, RecordsStream};

/// One page of `GET /rest/batch/{batchId}/rows`, converted to batch lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyPage {
    /// One line per delivered row: `id` is the row's id (a number becomes a string; a missing or
    /// empty id becomes `<batchId>#<skip + index on page>`), `valid` the row's flag (missing: `true`),
    /// `values` the row's `mapped` object as sent (missing or `null`: `{}`).
    pub ndjson: Vec<u8>,
    /// Lines in `ndjson`.
    pub rows_delivered: u64,
    /// Rows the API returned on this page, deleted ones included; advance `skip` by this.
    pub rows_on_page: u64,
    /// Rows with `"deleted": true`. They are not delivered: a row the user deleted in the
    /// importer is not part of the data they submitted.
    pub rows_skipped_deleted: u64,
    /// `pagination.totalCount`, when present.
    pub total_count: Option<u64>,
    /// `pagination.limit`, the `take` the server applied, when present. Below the `take` asked
    /// for, the server caps pages: the rest of the range needs further requests.
    pub limit: Option<u64>,
    /// `pagination.nextOffset`, when present: where the server says the next page starts.
    pub next_offset: Option<u64>,
}

/// One page of `GET /v1/sheets/{sheetId}/records`, converted to batch lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsPage {
    /// One line per record: `id` is the record id (a record without one, or with `""`, fails
    /// the page), `valid` the record's flag (missing: `true`),
    /// `values` maps each field key to its cell's `value` (a cell without one: `null`), in the
    /// record's key order.
    pub ndjson: Vec<u8>,
    /// Lines in `ndjson`.
    pub rows: u64,
    /// `data.commitId` (or the older `data.versionId`).
    pub commit_id: Option<String>,
}

/// One page of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsPage {
    /// The usable events, in the API's order.
    pub events: Vec<ListedEvent>,
    /// Items in the page's `data` array, unusable ones included. The listing has no pagination
    /// object and the API may serve fewer items than the page size asked for, so only an empty
    /// page proves the end of the listing.
    pub items_on_page: u64,
    /// Why each unusable item was left out, e.g. `event 3 of the page has no string "id"`.
    pub skipped: Vec<String>,
}

/// One event from an events listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEvent {
    /// Event id (`us_evt_…`), never empty.
    pub id: String,
    /// Topic, e.g. `records:created`, never empty. Unknown topics are kept.
    pub topic: String,
    /// `createdAt` as sent, when it is a string.
    pub created_at: Option<String>,
    /// The event object as compact single-line JSON with every field kept, in the API's key
    /// order and with numbers as sent: the same shape a Platform webhook body has.
    pub body: Vec<u8>,
}

/// A Platform workbook with its sheets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workbook {
    /// Workbook id (`us_wb_…`).
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// Sheets, in the API's order.
    pub sheets: Vec<Sheet>,
}

/// A Platform sheet and its schema order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sheet {
    /// Sheet id (`us_sh_…`).
    pub id: String,
    /// `slug`, else `config.slug`, else `name`, else `id`: never empty.
    pub slug: String,
    /// Display name.
    pub name: Option<String>,
    /// `config.fields[].key`, in schema order (fields without a key are left out).
    pub field_keys: Vec<String>,
}

impl LegacyPage {
    /// Converts the body of a legacy rows page, as [`FlatfileClient::legacy_rows_page`] does with
    /// the response it receives: the entry point for tools and fuzzers that have the bytes.
    ///
    /// [`FlatfileClient::legacy_rows_page`]: crate::FlatfileClient::legacy_rows_page
    pub fn parse(body: &[u8], batch_id: &str, skip: u64) -> Result<LegacyPage, serde_json::Error> {
        legacy_page(body, batch_id, skip)
    }
}

impl RecordsPage {
    /// Converts the body of a Platform records page, as [`FlatfileClient::records_page`] does
    /// with the response it receives.
    ///
    /// [`FlatfileClient::records_page`]: crate::FlatfileClient::records_page
    pub fn parse(body: &[u8]) -> Result<RecordsPage, serde_json::Error> {
        records_page(body)
    }

    /// Converts the body of a Platform records page given in chunks, as the client converts
    /// a body while it arrives: the same page [`RecordsPage::parse`] gives for the whole body,
    /// or `None` where the client would read the page again whole and convert it with
    /// [`RecordsPage::parse`].
    /// `announced` is the body's length when known (its `Content-Length`), which sizes the
    /// lines' buffer up front.
    pub fn parse_chunks<'a>(
        announced: Option<u64>,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Option<Result<RecordsPage, serde_json::Error>> {
        let mut stream = RecordsStream::new(announced);
        for chunk in chunks {
            if stream.feed(chunk) == Fed::ReadAgain {
                return None;
            }
        }
        match stream.finish() {
            Ok(Finished::Page(page)) => Some(Ok(page)),
            Ok(Finished::ReadAgain) => None,
            Err(error) => Some(Err(error)),
        }
    }
}

impl EventsPage {
    /// Reads the body of a `GET /v1/events` response, as [`FlatfileClient::events_page`] does.
    ///
    /// [`FlatfileClient::events_page`]: crate::FlatfileClient::events_page
    pub fn parse(body: &[u8]) -> Result<EventsPage, serde_json::Error> {
        events_page(body)
    }
}

/// Converts a legacy rows page. `batch_id` and `skip` name rows that arrive without an id.
pub(crate) fn legacy_page(
    body: &[u8],
    batch_id: &str,
    skip: u64,
) -> Result<LegacyPage, serde_json::Error> {
    legacy_page_into(
        body,
        batch_id,
        skip,
        Vec::with_capacity(legacy_lines_capacity(body)),
    )
}

/// Room for a legacy page's lines: each row carries `raw` and `mapped`, so the output is
/// roughly half the body.
pub(crate) fn legacy_lines_capacity(body: &[u8]) -> usize {
    body.len() / 2
}

/// [`legacy_page`] writing the lines into `ndjson`, an empty buffer given by the caller.
pub(crate) fn legacy_page_into(
    body: &[u8],
    batch_id: &str,
    skip: u64,
    mut ndjson: Vec<u8>,
) -> Result<LegacyPage, serde_json::Error> {
    ndjson.clear();
    let summary = match fast::legacy_page(body, batch_id, skip, &mut ndjson) {
        Some(summary) => summary,
        None => {
            ndjson.clear();
            legacy_page_serde(body, batch_id, skip, &mut ndjson)?
        }
    };
    replace_lone_surrogates(&mut ndjson);
    Ok(LegacyPage {
        ndjson,
        rows_delivered: summary.delivered,
        rows_on_page: summary.on_page,
        rows_skipped_deleted: summary.skipped,
        total_count: summary.total_count,
        limit: summary.limit,
        next_offset: summary.next_offset,
    })
}

/// The definition of a legacy page's conversion: what [`fast::legacy_page`] does quickly for
/// the usual body, this does for every body, and says what is wrong with a bad one.
fn legacy_page_serde(
    body: &[u8],
    batch_id: &str,
    skip: u64,
    ndjson: &mut Vec<u8>,
) -> Result<LegacySummary, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let summary = de.deserialize_map(LegacyBody {
        out: ndjson,
        batch_id,
        skip,
    })?;
    de.end()?;
    Ok(summary)
}

/// Converts a Platform records page.
pub(crate) fn records_page(body: &[u8]) -> Result<RecordsPage, serde_json::Error> {
    // Cells carry `valid`, `messages` and `updatedAt` beside the value, so the output is a
    // fraction of the body.
    let mut ndjson = Vec::with_capacity(body.len() / 3);
    let mut scratch = Vec::new();
    let summary = match fast::records_page(body, &mut ndjson, &mut scratch) {
        Some(summary) => summary,
        None => {
            ndjson.clear();
            records_page_serde(body, &mut ndjson, &mut scratch)?
        }
    };
    replace_lone_surrogates(&mut ndjson);
    Ok(RecordsPage {
        ndjson,
        rows: summary.rows,
        commit_id: summary.commit_id,
    })
}

/// The definition of a records page's conversion, as [`legacy_page_serde`] is for legacy pages.
fn records_page_serde(
    body: &[u8],
    ndjson: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<RecordsSummary, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let summary = de.deserialize_map(RecordsBody {
        out: ndjson,
        scratch,
    })?;
    de.end()?;
    Ok(summary)
}

/// `GET /v1/workbooks/{id}` → `{data: Workbook}`.
pub(crate) fn workbook(body: &[u8]) -> Result<Workbook, serde_json::Error> {
    let envelope: DataEnvelope<WireWorkbook> = serde_json::from_slice(body)?;
    let wire = envelope.data;
    Ok(Workbook {
        id: wire.id,
        name: wire.name,
        sheets: wire
            .sheets
            .unwrap_or_default()
            .into_iter()
            .map(Sheet::from)
            .collect(),
    })
}

/// `GET /v1/sheets?workbookId=` → `{data: Sheet[]}`.
pub(crate) fn sheets(body: &[u8]) -> Result<Vec<Sheet>, serde_json::Error> {
    let envelope: DataEnvelope<Vec<WireSheet>> = serde_json::from_slice(body)?;
    Ok(envelope.data.into_iter().map(Sheet::from).collect())
}

/// `GET /v1/sheets/{id}` → `{data: Sheet}`.
pub(crate) fn sheet(body: &[u8]) -> Result<Sheet, serde_json::Error> {
    let envelope: DataEnvelope<WireSheet> = serde_json::from_slice(body)?;
    Ok(Sheet::from(envelope.data))
}

/// `GET /v1/sheets/{id}/counts` → `data.counts.total`.
pub(crate) fn record_count(body: &[u8]) -> Result<u64, serde_json::Error> {
    let envelope: DataEnvelope<WireCountsData> = serde_json::from_slice(body)?;
    Ok(envelope.data.counts.total)
}

/// `GET /v1/events` → `{data: Event[]}`.
///
/// The envelope must be an object with a `data` array; anything else is an error naming what was
/// found. Items are judged one by one: an item that is not an object, or lacks a non-empty string
/// `id` or `topic`, is recorded in [`EventsPage::skipped`] and still counted, so paging by page
/// size stays right.
pub(crate) fn events_page(body: &[u8]) -> Result<EventsPage, serde_json::Error> {
    const EXPECTED: &str = "expected an object with a \"data\" array";
    let whole: &RawValue = serde_json::from_slice(body)?;
    let whole = whole.get().as_bytes();
    if whole.first() != Some(&b'{') {
        return Err(serde_json::Error::custom(format_args!(
            "{EXPECTED}, found {}",
            json_kind(whole)
        )));
    }
    let envelope: EventsEnvelope<'_> = serde_json::from_slice(body)?;
    let data = match envelope.data {
        None => {
            return Err(serde_json::Error::custom(format_args!(
                "{EXPECTED}, found an object without \"data\""
            )));
        }
        Some(data) if data.get().starts_with('[') => data,
        Some(data) => {
            return Err(serde_json::Error::custom(format_args!(
                "{EXPECTED}, found \"data\" as {}",
                json_kind(data.get().as_bytes())
            )));
        }
    };
    let items: Vec<&RawValue> = serde_json::from_str(data.get())?;
    let mut page = EventsPage {
        events: Vec::with_capacity(items.len()),
        items_on_page: u64::try_from(items.len()).expect("a page's length fits in u64"),
        skipped: Vec::new(),
    };
    for (index, item) in items.into_iter().enumerate() {
        match listed_event(item) {
            Ok(event) => page.events.push(event),
            Err(reason) => page
                .skipped
                .push(format!("event {index} of the page {reason}")),
        }
    }
    Ok(page)
}

/// One listed event, or why it is unusable (phrased to follow "event N of the page").
fn listed_event(item: &RawValue) -> Result<ListedEvent, String> {
    let text = item.get().as_bytes();
    if text.first() != Some(&b'{') {
        return Err(format!("is {}, expected an object", json_kind(text)));
    }
    let head: EventHead =
        serde_json::from_str(item.get()).map_err(|error| format!("cannot be read: {error}"))?;
    // The poller hands each event to the scrubber and the classifier, which read a `Value`: an
    // item they would refuse (a number beyond f64, such as `1e400`) is skipped here, with its
    // reason, rather than stored unscrubbed and then never processed.
    serde_json::from_str::<Value>(item.get())
        .map_err(|error| format!("cannot be read: {error}"))?;
    let id = match head.id {
        Value::String(id) if !id.is_empty() => id,
        other => return Err(format!("has no usable \"id\": {}", describe(&other))),
    };
    let topic = match head.topic {
        Value::String(topic) if !topic.is_empty() => topic,
        other => {
            return Err(format!(
                "({id}) has no usable \"topic\": {}",
                describe(&other)
            ));
        }
    };
    let created_at = match head.created_at {
        Value::String(created_at) => Some(created_at),
        _ => None,
    };
    let mut body = Vec::with_capacity(text.len());
    push_compact(&mut body, text);
    Ok(ListedEvent {
        id,
        topic,
        created_at,
        body,
    })
}

/// What a field that should have been a non-empty string held, for a skip reason.
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "it is missing or null",
        Value::String(_) => "it is an empty string",
        Value::Bool(_) => "it is a boolean",
        Value::Number(_) => "it is a number",
        Value::Array(_) => "it is an array",
        Value::Object(_) => "it is an object",
    }
}

#[derive(Deserialize)]
struct EventsEnvelope<'a> {
    // `Option` turns `"data": null` into `None`, reported like a missing `data`.
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// The fields of a listed event this crate reads; the rest travel in [`ListedEvent::body`].
/// A missing field reads as `null`.
#[derive(Deserialize)]
struct EventHead {
    #[serde(default)]
    id: Value,
    #[serde(default)]
    topic: Value,
    #[serde(default, rename = "createdAt")]
    created_at: Value,
}

#[derive(Deserialize)]
struct DataEnvelope<T> {
    data: T,
}

#[derive(Deserialize)]
struct WireWorkbook {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    sheets: Option<Vec<WireSheet>>,
}

#[derive(Deserialize)]
struct WireSheet {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    slug: Option<String>,
    #[serde(default)]
    config: Option<WireSheetConfig>,
}

#[derive(Deserialize)]
struct WireSheetConfig {
    #[serde(default)]
    slug: Option<String>,
    #[serde(default)]
    fields: Option<Vec<WireField>>,
}

#[derive(Deserialize)]
struct WireField {
    #[serde(default)]
    key: Option<String>,
}

#[derive(Deserialize)]
struct WireCountsData {
    counts: WireCounts,
}

#[derive(Deserialize)]
struct WireCounts {
    total: u64,
}

impl From<WireSheet> for Sheet {
    fn from(wire: WireSheet) -> Self {
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let (config_slug, fields) = match wire.config {
            Some(config) => (config.slug, config.fields.unwrap_or_default()),
            None => (None, Vec::new()),
        };
        let slug = non_empty(wire.slug)
            .or_else(|| non_empty(config_slug))
            .or_else(|| non_empty(wire.name.clone()))
            .unwrap_or_else(|| wire.id.clone());
        Sheet {
            id: wire.id,
            slug,
            name: wire.name,
            field_keys: fields.into_iter().filter_map(|field| field.key).collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Legacy rows page: {"pagination": {…}, "data": [row, …]}

struct LegacyBody<'o> {
    out: &'o mut Vec<u8>,
    batch_id: &'o str,
    skip: u64,
}

struct LegacySummary {
    delivered: u64,
    on_page: u64,
    skipped: u64,
    total_count: Option<u64>,
    limit: Option<u64>,
    next_offset: Option<u64>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum LegacyBodyField {
    Pagination,
    Data,
    #[serde(other)]
    Other,
}

impl<'de> Visitor<'de> for LegacyBody<'_> {
    type Value = LegacySummary;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a rows page object with \"data\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut rows: Option<LegacyRowCounts> = None;
        let (mut total_count, mut limit, mut next_offset) = (None, None, None);
        while let Some(field) = map.next_key::<LegacyBodyField>()? {
            match field {
                LegacyBodyField::Pagination => {
                    // Small and once per page, and its keys are only partly verified: a `Value`
                    // is the lenient choice.
                    let pagination = map.next_value::<Option<Value>>()?;
                    let count = |key: &str| {
                        pagination
                            .as_ref()
                            .and_then(|p| p.get(key))
                            .and_then(count_value)
                    };
                    total_count = count("totalCount");
                    limit = count("limit");
                    next_offset = count("nextOffset");
                }
                LegacyBodyField::Data => {
                    if rows.is_some() {
                        return Err(A::Error::duplicate_field("data"));
                    }
                    rows = Some(map.next_value_seed(LegacyRows {
                        out: &mut *self.out,
                        batch_id: self.batch_id,
                        skip: self.skip,
                    })?);
                }
                LegacyBodyField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let rows = rows.ok_or_else(|| A::Error::missing_field("data"))?;
        Ok(LegacySummary {
            delivered: rows.delivered,
            on_page: rows.on_page,
            skipped: rows.skipped,
            total_count,
            limit,
            next_offset,
        })
    }
}

/// A count that may arrive as a number or a numeric string.
pub(crate) fn count_value(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

struct LegacyRows<'o> {
    out: &'o mut Vec<u8>,
    batch_id: &'o str,
    skip: u64,
}

struct LegacyRowCounts {
    delivered: u64,
    on_page: u64,
    skipped: u64,
}

#[derive(Deserialize)]
struct LegacyRow<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    valid: Option<bool>,
    #[serde(default)]
    deleted: Option<bool>,
    #[serde(borrow, default)]
    mapped: Option<&'a RawValue>,
}

impl<'de> DeserializeSeed<'de> for LegacyRows<'_> {
    type Value = LegacyRowCounts;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for LegacyRows<'_> {
    type Value = LegacyRowCounts;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut counts = LegacyRowCounts {
            delivered: 0,
            on_page: 0,
            skipped: 0,
        };
        while let Some(row) = seq.next_element::<LegacyRow<'de>>()? {
            let index = counts.on_page;
            counts.on_page += 1;
            if row.deleted == Some(true) {
                counts.skipped += 1;
                continue;
            }
            let cells = LegacyCells {
                id: row.id.map(RawValue::get),
                valid: row.valid,
                mapped: row.mapped.map(RawValue::get),
            };
            write_legacy_row(
                self.out,
                &cells,
                self.batch_id,
                self.skip.saturating_add(index),
            )
            .map_err(|problem| A::Error::custom(format_args!("row {index}: {problem}")))?;
            counts.delivered += 1;
        }
        Ok(counts)
    }
}

/// What a legacy row contributes to its line, as JSON text from the body.
pub(super) struct LegacyCells<'a> {
    pub(super) id: Option<&'a str>,
    pub(super) valid: Option<bool>,
    pub(super) mapped: Option<&'a str>,
}

pub(super) fn write_legacy_row(
    out: &mut Vec<u8>,
    row: &LegacyCells<'_>,
    batch_id: &str,
    position: u64,
) -> Result<(), String> {
    out.extend_from_slice(b"{\"id\":");
    // An empty id is named like a missing one: sinks key rows on the id.
    match row.id.filter(|id| !is_empty_string(id)) {
        Some(id) => push_id(out, id)?,
        None => push_json_string(out, &format!("{batch_id}#{position}")),
    }
    push_valid(out, row.valid.unwrap_or(true));
    match row.mapped {
        None => out.extend_from_slice(b"{}"),
        Some(mapped) => {
            let text = mapped.as_bytes();
            if text.first() != Some(&b'{') {
                return Err(format!(
                    "\"mapped\" is {}, expected an object",
                    json_kind(text)
                ));
            }
            push_single_line(out, text);
        }
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Platform records page: {"data": {"records": [record, …], "commitId": …, …}}

struct RecordsBody<'o> {
    out: &'o mut Vec<u8>,
    scratch: &'o mut Vec<u8>,
}

struct RecordsSummary {
    rows: u64,
    commit_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum RecordsBodyField {
    Data,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for RecordsBody<'_> {
    type Value = RecordsSummary;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordsBody<'_> {
    type Value = RecordsSummary;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a records response object with \"data\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut summary = None;
        while let Some(field) = map.next_key::<RecordsBodyField>()? {
            match field {
                RecordsBodyField::Data => {
                    if summary.is_some() {
                        return Err(A::Error::duplicate_field("data"));
                    }
                    summary = Some(map.next_value_seed(RecordsData {
                        out: &mut *self.out,
                        scratch: &mut *self.scratch,
                    })?);
                }
                RecordsBodyField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        summary.ok_or_else(|| A::Error::missing_field("data"))
    }
}

struct RecordsData<'o> {
    out: &'o mut Vec<u8>,
    scratch: &'o mut Vec<u8>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum RecordsDataField {
    Records,
    CommitId,
    VersionId,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for RecordsData<'_> {
    type Value = RecordsSummary;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordsData<'_> {
    type Value = RecordsSummary;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with \"records\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut rows = None;
        let mut commit_id = None;
        let mut version_id = None;
        while let Some(field) = map.next_key::<RecordsDataField>()? {
            match field {
                RecordsDataField::Records => {
                    if rows.is_some() {
                        return Err(A::Error::duplicate_field("records"));
                    }
                    rows = Some(map.next_value_seed(RecordList {
                        out: &mut *self.out,
                        scratch: &mut *self.scratch,
                    })?);
                }
                RecordsDataField::CommitId => {
                    commit_id = map
                        .next_value::<Option<Value>>()?
                        .as_ref()
                        .and_then(id_text);
                }
                RecordsDataField::VersionId => {
                    version_id = map
                        .next_value::<Option<Value>>()?
                        .as_ref()
                        .and_then(id_text);
                }
                RecordsDataField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(RecordsSummary {
            rows: rows.ok_or_else(|| A::Error::missing_field("records"))?,
            commit_id: commit_id.or(version_id),
        })
    }
}

pub(super) fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

struct RecordList<'o> {
    out: &'o mut Vec<u8>,
    scratch: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for RecordList<'_> {
    type Value = u64;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecordList<'_> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut rows = 0u64;
        while seq
            .next_element_seed(RecordSeed {
                out: &mut *self.out,
                scratch: &mut *self.scratch,
                index: rows,
            })?
            .is_some()
        {
            rows += 1;
        }
        Ok(rows)
    }
}

/// Writes one record's line into `out`. `values` may precede `id` and `valid` in the body, so it
/// is rendered into `scratch` (reused across records) and copied once the line can be written.
struct RecordSeed<'o> {
    out: &'o mut Vec<u8>,
    scratch: &'o mut Vec<u8>,
    index: u64,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum RecordField {
    Id,
    Values,
    Valid,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let index = self.index;
        let mut id: Option<&'de RawValue> = None;
        let mut valid = None;
        let mut has_values = false;
        self.scratch.clear();
        while let Some(field) = map.next_key::<RecordField>()? {
            match field {
                RecordField::Id => id = map.next_value::<Option<&'de RawValue>>()?,
                RecordField::Valid => valid = map.next_value::<Option<bool>>()?,
                RecordField::Values => {
                    if has_values {
                        return Err(A::Error::duplicate_field("values"));
                    }
                    map.next_value_seed(ValuesSeed {
                        out: &mut *self.scratch,
                    })?;
                    has_values = true;
                }
                RecordField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        // An empty id names nothing: sinks key rows on it, so two such records would be one.
        let id = id
            .map(RawValue::get)
            .filter(|id| !is_empty_string(id))
            .ok_or_else(|| A::Error::custom(format_args!("record {index} has no id")))?;

        let out = &mut *self.out;
        out.extend_from_slice(b"{\"id\":");
        push_id(out, id)
            .map_err(|problem| A::Error::custom(format_args!("record {index}: {problem}")))?;
        push_valid(out, valid.unwrap_or(true));
        if has_values {
            out.extend_from_slice(self.scratch);
        } else {
            out.extend_from_slice(b"{}");
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }
}

/// Renders a record's `values` (`{key: cell, …}`) as `{key: cell.value, …}`.
struct ValuesSeed<'o> {
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for ValuesSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ValuesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of cells")
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"{}");
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.out.push(b'{');
        let mut first = true;
        while let Some(key) = map.next_key::<FieldKey<'de>>()? {
            if !first {
                self.out.push(b',');
            }
            first = false;
            push_json_string(self.out, key.as_str());
            self.out.push(b':');
            map.next_value_seed(CellSeed {
                out: &mut *self.out,
            })?;
        }
        self.out.push(b'}');
        Ok(())
    }
}

/// Writes a cell's `value` (or `null`).
struct CellSeed<'o> {
    out: &'o mut Vec<u8>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum CellField {
    Value,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for CellSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CellSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a cell object with \"value\"")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut value: Option<&'de RawValue> = None;
        while let Some(field) = map.next_key::<CellField>()? {
            match field {
                CellField::Value => value = map.next_value::<Option<&'de RawValue>>()?,
                CellField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match value {
            Some(raw) => push_single_line(self.out, raw.get().as_bytes()),
            None => self.out.extend_from_slice(b"null"),
        }
        Ok(())
    }
}

/// A map key, borrowed from the body unless it contained escapes.
enum FieldKey<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl FieldKey<'_> {
    fn as_str(&self) -> &str {
        match self {
            FieldKey::Borrowed(s) => s,
            FieldKey::Owned(s) => s,
        }
    }
}

impl<'de> Deserialize<'de> for FieldKey<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = FieldKey<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field key")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FieldKey::Borrowed(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FieldKey::Owned(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(FieldKey::Owned(v))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Output helpers

pub(super) fn push_valid(out: &mut Vec<u8>, valid: bool) {
    out.extend_from_slice(if valid {
        b",\"valid\":true,\"values\":"
    } else {
        b",\"valid\":false,\"values\":"
    });
}

/// Writes an id as a JSON string. A string literal is copied as sent (it is valid JSON and cannot
/// hold a raw newline); a number is quoted.
pub(super) fn push_id(out: &mut Vec<u8>, id: &str) -> Result<(), String> {
    let text = id.as_bytes();
    match text.first() {
        Some(b'"') => out.extend_from_slice(text),
        Some(b'-' | b'0'..=b'9') => {
            out.push(b'"');
            out.extend_from_slice(text);
            out.push(b'"');
        }
        _ => {
            return Err(format!(
                "the id is {}, expected a string or a number",
                json_kind(text)
            ));
        }
    }
    Ok(())
}

/// Rewrites in place each `\uXXXX` escape of half a surrogate pair as `\uFFFD` (same length).
///
/// Cells, keys and ids are copied from the API's JSON as sent, and JSON allows such an escape
/// (JavaScript writes one for a string cut inside an emoji), but no Rust string can hold one:
/// a sink could not read the row's id or keys. U+FFFD is what JavaScript's own UTF-8 encoder
/// puts in its place, and what the SDK makes of such a cell. `json` is batch lines, valid JSON,
/// so every backslash is inside a string; whole pairs are left alone.
pub(super) fn replace_lone_surrogates(json: &mut [u8]) {
    fn unit_at(json: &[u8], at: usize) -> Option<u16> {
        let escape = json.get(at..at + 6)?;
        if escape[0] != b'\\' || escape[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&escape[2..]).ok()?, 16).ok()
    }
    let mut at = 0;
    while let Some(offset) = json.get(at..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        at += offset;
        match unit_at(json, at) {
            Some(0xD800..=0xDBFF)
                if unit_at(json, at + 6).is_some_and(|low| (0xDC00..=0xDFFF).contains(&low)) =>
            {
                at += 12;
            }
            Some(0xD800..=0xDFFF) => {
                json[at + 2..at + 6].copy_from_slice(b"FFFD");
                at += 6;
            }
            Some(_) => at += 6,
            // `\\`, `\"` and the other two-byte escapes.
            None => at += 2,
        }
    }
}

/// Whether a raw id is `""`, the only JSON text of an empty string.
pub(super) fn is_empty_string(id: &str) -> bool {
    id == "\"\""
}

/// Writes `s` as a JSON string literal.
pub(crate) fn push_json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("serialising a str into a Vec cannot fail");
    }
}

/// Copies a raw JSON value so that it fits on one NDJSON line. Raw values keep the body's
/// formatting, and a pretty-printed body spreads objects and arrays over several lines; then
/// insignificant whitespace is dropped. Strings never hold raw line breaks (JSON requires them
/// escaped), so a value without `\n` or `\r` is copied as is.
pub(super) fn push_single_line(out: &mut Vec<u8>, raw: &[u8]) {
    if memchr::memchr2(b'\n', b'\r', raw).is_none() {
        out.extend_from_slice(raw);
        return;
    }
    push_compact(out, raw);
}

/// Copies a raw JSON value without insignificant whitespace. Everything else (key order,
/// duplicate keys, number and string spellings) stays as it was.
pub(crate) fn push_compact(out: &mut Vec<u8>, raw: &[u8]) {
    out.reserve(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' => {
                    in_string = true;
                    out.push(b);
                }
                _ => out.push(b),
            }
        }
    }
}

fn json_kind(text: &[u8]) -> &'static str {
    match text.first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests;
