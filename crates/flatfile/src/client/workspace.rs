//! Legacy Workspaces records: `GET /workspace/{workspaceId}/sheet/{sheetId}/records?skip=&take=`
//! with the legacy `X-Api-Key` (flatfile-api.md §5.2). "New records added" and "Record status
//! modified" notifications of a Workspaces sheet are read here, not from the Platform API.
//!
//! Nobody has published an answer of this endpoint. flatsync assumes the paginated envelope of
//! the batch rows endpoint (`{pagination: {limit, totalCount, …}, data: [row, …]}`) and reads
//! each row leniently: `id` (string or number), `valid` (default true), the values from
//! `mapped`, else `data`, else `values`, and a string `status` (`review`, `accepted`,
//! `dismissed`) as the extra value `_status`, since a status change is what "Record status
//! modified" reports.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Api, FlatfileClient, HttpMethod, check_paging, endpoint};
use crate::convert::{count_value, push_compact, push_json_string};
use crate::error::ApiError;

/// One page of a legacy Workspaces sheet, converted to batch lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspacePage {
    /// One line per record: `{"id":…,"valid":…,"values":{…,"_status":…}}`.
    pub ndjson: Vec<u8>,
    /// Records on the page (all of them are delivered).
    pub rows: u64,
    /// `pagination.totalCount`, when present.
    pub total_count: Option<u64>,
    /// `pagination.limit`: the page size the server applied, when present.
    pub limit: Option<u64>,
}

impl FlatfileClient {
    /// `GET {legacy}/workspace/{workspace_id}/sheet/{sheet_id}/records?skip=&take=`.
    pub async fn workspace_records_page(
        &self,
        workspace_id: &str,
        sheet_id: &str,
        skip: u64,
        take: u64,
    ) -> Result<WorkspacePage, ApiError> {
        check_paging(1, take)?;
        let mut url = endpoint(
            &self.inner.legacy_base,
            &["workspace", workspace_id, "sheet", sheet_id, "records"],
        )?;
        url.query_pairs_mut()
            .append_pair("skip", &skip.to_string())
            .append_pair("take", &take.to_string());
        let sheet = sheet_id.to_owned();
        self.execute(
            HttpMethod::Get,
            Api::Legacy,
            "legacy_workspace_records",
            url,
            None,
            move |body| workspace_page(body, &sheet, skip),
        )
        .await
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    pagination: Option<serde_json::Value>,
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Row<'a> {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    valid: Option<bool>,
    #[serde(default)]
    status: Option<String>,
    #[serde(borrow, default)]
    mapped: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    values: Option<&'a RawValue>,
}

fn count(pagination: Option<&serde_json::Value>, key: &str) -> Option<u64> {
    pagination?.get(key).and_then(count_value)
}

/// Converts one page; rows without an id are named `<sheet>#<position in the sheet>`.
pub(crate) fn workspace_page(
    body: &[u8],
    sheet_id: &str,
    skip: u64,
) -> Result<WorkspacePage, serde_json::Error> {
    use serde::de::Error as _;
    let envelope: Envelope<'_> = serde_json::from_slice(body)?;
    let mut ndjson = Vec::with_capacity(body.len() / 2);
    for (index, raw) in envelope.data.iter().enumerate() {
        let row: Row<'_> = serde_json::from_str(raw.get())
            .map_err(|e| serde_json::Error::custom(format!("data[{index}]: {e}")))?;
        ndjson.extend_from_slice(b"{\"id\":");
        match row.id {
            Some(serde_json::Value::String(id)) if !id.is_empty() => {
                push_json_string(&mut ndjson, &id)
            }
            Some(serde_json::Value::Number(n)) => push_json_string(&mut ndjson, &n.to_string()),
            _ => push_json_string(&mut ndjson, &format!("{sheet_id}#{}", skip + index as u64)),
        }
        ndjson.extend_from_slice(if row.valid.unwrap_or(true) {
            b",\"valid\":true,\"values\":"
        } else {
            b",\"valid\":false,\"values\":"
        });
        let values = [row.mapped, row.data, row.values]
            .into_iter()
            .flatten()
            .find(|v| v.get().starts_with('{'));
        let start = ndjson.len();
        match values {
            Some(values) => push_compact(&mut ndjson, values.get().as_bytes()),
            None => ndjson.extend_from_slice(b"{}"),
        }
        if let Some(status) = row.status {
            // Reopen the object just written to add the status as one more value.
            ndjson.pop();
            if ndjson.len() > start + 1 {
                ndjson.push(b',');
            }
            ndjson.extend_from_slice(b"\"_status\":");
            push_json_string(&mut ndjson, &status);
            ndjson.push(b'}');
        }
        ndjson.extend_from_slice(b"}\n");
    }
    let pagination = envelope.pagination.as_ref();
    Ok(WorkspacePage {
        rows: envelope.data.len() as u64,
        total_count: count(pagination, "totalCount"),
        limit: count(pagination, "limit"),
        ndjson,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_their_values_and_gain_their_status() {
        let body = br#"{"pagination":{"currentPage":1,"limit":2,"offset":0,"onPage":3,"nextOffset":2,"totalCount":5,"pageCount":3},
          "data":[{"id":7,"status":"accepted","valid":true,"mapped":{"name":"Ada","age":36}},
                  {"id":"r-2","valid":false,"data":{}, "status":"review"},
                  {"values":{"x":1}}]}"#;
        let page = workspace_page(body, "sh1", 10).expect("parses");
        assert_eq!(
            (page.rows, page.total_count, page.limit),
            (3, Some(5), Some(2))
        );
        assert_eq!(
            String::from_utf8(page.ndjson).expect("utf-8"),
            "{\"id\":\"7\",\"valid\":true,\"values\":{\"name\":\"Ada\",\"age\":36,\"_status\":\"accepted\"}}\n\
             {\"id\":\"r-2\",\"valid\":false,\"values\":{\"_status\":\"review\"}}\n\
             {\"id\":\"sh1#12\",\"valid\":true,\"values\":{\"x\":1}}\n"
        );
        assert!(workspace_page(br#"{"data":[1]}"#, "s", 0).is_err());
        assert!(workspace_page(br#"{"rows":[]}"#, "s", 0).is_err());
    }
}
