//! The legacy Portal shapes beside the batch rows: the Workspaces records endpoint and its
//! notification, and the Portal 2.0 `batch.upload` webhook.
//!
//! Nobody has published a Workspaces record as the REST API serves it; the simulator serves
//! `{id, status, valid, mapped, createdAt, updatedAt}`: `mapped` like a batch row's, `status`
//! one of the endpoint's `filter` values (`review`, `accepted`, `dismissed`), and a numeric `id`
//! as the legacy GraphQL rows have (`getFinalDatabaseView`). A client should treat all of it as
//! a guess. The Portal 2.0 body follows Flatfile's 2.0 webhook documentation.

use serde_json::{Map, Value as Json, json};

use crate::generate::{
    self, DAY_MS, IMPORT_EPOCH_MS, LEGACY_COLUMNS, hash_str, is_invalid_row, legacy_row, put,
    put_display, put_legacy_pagination, put_str,
};
use crate::{SimConfig, clock};

/// A record of a legacy Workspaces sheet, as `GET /workspace/{w}/sheet/{s}/records` serves it,
/// reduced to what a sink receives.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkspaceRow {
    /// Record id: a number, given here as its decimal text.
    pub id: String,
    /// Whether the record is valid.
    pub valid: bool,
    /// `review`, `accepted` or `dismissed`.
    pub status: String,
    /// `mapped`: field key and value, in the served order.
    pub values: Vec<(String, Json)>,
}

/// Identity of a Workspaces sheet under a seed.
#[derive(Clone, Copy, Debug)]
struct WorkspaceKey {
    hash: u64,
}

impl WorkspaceKey {
    fn new(seed: u64, workspace_id: &str, sheet_id: &str) -> WorkspaceKey {
        WorkspaceKey {
            hash: hash_str(
                seed,
                "workspace",
                &format!("{workspace_id}\u{1f}{sheet_id}"),
            ),
        }
    }

    /// Ids are `base + index`: distinct within a sheet, and within 2^53 so a JavaScript client
    /// reads them exactly.
    fn record_id(self, index: u64) -> u64 {
        (100_000 + self.hash % 900_000) * 10_000_000 + index
    }

    fn status(self, index: u64) -> &'static str {
        if is_invalid_row(index) {
            return "review";
        }
        match (self.hash.wrapping_add(index)) % 7 {
            0 => "dismissed",
            1 | 2 => "review",
            _ => "accepted",
        }
    }

    fn created_at(self) -> String {
        clock::iso_millis(IMPORT_EPOCH_MS + self.hash % DAY_MS)
    }

    fn updated_at(self) -> String {
        clock::iso_millis(IMPORT_EPOCH_MS + self.hash % DAY_MS + 61_042)
    }
}

/// The records of a Workspaces sheet in served order: [`SimConfig::rows`] of them for every
/// (workspace, sheet).
pub fn workspace_rows(config: &SimConfig, workspace_id: &str, sheet_id: &str) -> Vec<WorkspaceRow> {
    let key = WorkspaceKey::new(config.seed, workspace_id, sheet_id);
    (0..config.rows)
        .map(|index| WorkspaceRow {
            id: key.record_id(index).to_string(),
            valid: !is_invalid_row(index),
            status: key.status(index).to_owned(),
            values: LEGACY_COLUMNS
                .iter()
                .zip(legacy_row(key.hash, index))
                .map(|((_, field), value)| ((*field).to_owned(), value.to_json()))
                .collect(),
        })
        .collect()
}

/// Writes one page of `GET /workspace/{workspaceId}/sheet/{sheetId}/records`, with the
/// `pagination` object of the legacy batch rows.
pub(crate) fn write_workspace_page(
    out: &mut Vec<u8>,
    seed: u64,
    (workspace_id, sheet_id): (&str, &str),
    total: u64,
    skip: u64,
    take: u64,
) {
    let key = WorkspaceKey::new(seed, workspace_id, sheet_id);
    let start = skip.min(total);
    let end = skip.saturating_add(take).min(total);
    put_legacy_pagination(out, total, skip, take);
    let mut tail = Vec::new();
    put(&mut tail, ",\"createdAt\":");
    put_str(&mut tail, &key.created_at());
    put(&mut tail, ",\"updatedAt\":");
    put_str(&mut tail, &key.updated_at());
    put(&mut tail, "}");
    for index in start..end {
        if index > start {
            put(out, ",");
        }
        put(out, "{\"id\":");
        put_display(out, key.record_id(index));
        put(out, ",\"status\":");
        put_str(out, key.status(index));
        put(out, ",\"valid\":");
        put_display(out, !is_invalid_row(index));
        put(out, ",\"mapped\":{");
        for (position, ((_, field), value)) in LEGACY_COLUMNS
            .iter()
            .zip(legacy_row(key.hash, index))
            .enumerate()
        {
            if position > 0 {
                put(out, ",");
            }
            put_str(out, field);
            put(out, ":");
            value.write_json(out);
        }
        put(out, "}");
        out.extend_from_slice(&tail);
    }
    put(out, "]}");
}

/// The two notifications a legacy Workspaces sheet sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkspaceNotification {
    /// "New records added".
    NewRecordsAdded,
    /// "Record status modified".
    RecordStatusModified,
}

impl WorkspaceNotification {
    /// The `type` of the body, as the dashboard names the notification.
    pub fn type_name(self) -> &'static str {
        match self {
            WorkspaceNotification::NewRecordsAdded => "New records added",
            WorkspaceNotification::RecordStatusModified => "Record status modified",
        }
    }
}

/// The legacy notification of a Workspaces sheet: `{"env": {}, "scope": {"eventId", "team",
/// "workspaceId", "sheetId", "environmentId"}, "type"}`. Like every Portal 3.0 notification it
/// carries no rows; a client reads them from the Workspaces records endpoint.
pub fn workspace_webhook_body(
    event_id: &str,
    workspace_id: &str,
    sheet_id: &str,
    notification: WorkspaceNotification,
) -> Json {
    json!({
        "env": {},
        "scope": {
            "eventId": event_id,
            "team": { "id": 1, "name": "flatfile-sim" },
            "workspaceId": workspace_id,
            "sheetId": sheet_id,
            "environmentId": crate::webhook::LEGACY_ENVIRONMENT_ID,
        },
        "type": notification.type_name(),
    })
}

/// A row of a Portal 2.0 upload.
#[derive(Clone, Debug, PartialEq)]
pub struct Portal2Row {
    /// The request (`event.sequence.index`, from 1) whose `validRows` or `invalidRows` hold it.
    pub request: u64,
    /// `true` in `validRows`, `false` in `invalidRows`.
    pub valid: bool,
    /// Field key and value, in column order.
    pub values: Vec<(String, Json)>,
}

fn upload_row_values(hash: u64, index: u64) -> Vec<(String, Json)> {
    LEGACY_COLUMNS
        .iter()
        .zip(legacy_row(hash, index))
        .map(|((_, field), value)| ((*field).to_owned(), value.to_json()))
        .collect()
}

/// The rows of a Portal 2.0 upload of `rows` rows in upload order, as
/// [`portal2_upload_bodies`] with the same arguments sends them (within one request, its valid
/// rows keep their order in `validRows` and its invalid ones in `invalidRows`). Rows have no
/// ids on this webhook.
pub fn portal2_upload_rows(
    config: &SimConfig,
    batch_id: &str,
    rows: u64,
    per_request: u64,
) -> Vec<Portal2Row> {
    let per_request = per_request.max(1);
    let hash = hash_str(config.seed, "portal2", batch_id);
    (0..rows)
        .map(|index| Portal2Row {
            request: index / per_request + 1,
            valid: !is_invalid_row(index),
            values: upload_row_values(hash, index),
        })
        .collect()
}

/// The request bodies of one Portal 2.0 `batch.upload` of `rows` rows, at most `per_request`
/// (Flatfile: 1,000) rows each, in sending order:
/// `{"event": {"type": "batch.upload", "id", "sequence": {"count", "index"}}, "data": {"meta":
/// {"batch": {"id"}, "schema": {"id": 8}, "count"}, "validRows": [...], "invalidRows": [...]}}`.
/// Every request carries the same event id; `index` counts from 1; `meta.count` is the rows in
/// that request. Rows come from the seed, about one in ten invalid. An upload of no rows is one
/// request with empty lists; `per_request` 0 counts as 1.
pub fn portal2_upload_bodies(
    config: &SimConfig,
    batch_id: &str,
    rows: u64,
    per_request: u64,
) -> Vec<Json> {
    let per_request = per_request.max(1);
    let hash = hash_str(config.seed, "portal2", batch_id);
    let event_hash = generate::mix(hash ^ 0x002E_7E17);
    let event_id = format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        event_hash >> 32,
        (event_hash >> 16) & 0xFFFF,
        event_hash & 0xFFF,
        0x8000 | (hash & 0x3FFF),
        generate::mix(event_hash) & 0xFFFF_FFFF_FFFF
    );
    let count = rows.div_ceil(per_request).max(1);
    (0..count)
        .map(|request| {
            let start = request * per_request;
            let end = (start + per_request).min(rows);
            let (mut valid, mut invalid) = (Vec::new(), Vec::new());
            for index in start..end {
                let values: Map<String, Json> =
                    upload_row_values(hash, index).into_iter().collect();
                if is_invalid_row(index) {
                    invalid.push(Json::Object(values));
                } else {
                    valid.push(Json::Object(values));
                }
            }
            json!({
                "event": {
                    "type": "batch.upload",
                    "id": event_id,
                    "sequence": { "count": count, "index": request + 1 },
                },
                "data": {
                    "meta": {
                        "batch": { "id": batch_id },
                        "schema": { "id": 8 },
                        "count": end - start,
                    },
                    "validRows": valid,
                    "invalidRows": invalid,
                },
            })
        })
        .collect()
}
