//! An event's `dataUrl`: where Flatfile says the event's data can be read. Flatfile's listener
//! appends it to the API root (`https://platform.flatfile.com/api/` + `v1/sheets/…/records?…`)
//! and reads it with the same bearer token (flatfile-api.md §2.6).
//!
//! flatsync resolves it the same way, against its own configured API root, and only ever sends
//! the key to that root: an absolute `dataUrl` on another host is refused. A records URL whose
//! query flatsync understands (`commitId`, `sinceCommitId`, `ids`, or their deprecated
//! `versionId` spellings) becomes the matching [`RecordsSelection`], so it is paged like any
//! other records stream; anything else is read as records pages of the URL as given, with
//! `pageSize` and `pageNumber` set by flatsync.

use reqwest::Url;

use super::{Api, FlatfileClient, HttpMethod, Query, RecordsSelection, check_paging};
use crate::convert::{self, RecordsPage};
use crate::error::ApiError;

/// What an event's `dataUrl` points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataUrlTarget {
    /// `v1/sheets/{sheet_id}/records` with a selection flatsync can page itself.
    SheetRecords {
        /// The sheet.
        sheet_id: String,
        /// Which of its records.
        selection: RecordsSelection,
    },
    /// Any other URL under the API root, kept as a path and query relative to it.
    Other {
        /// Path and query relative to the API root, e.g. `v1/sheets/us_sh_1/records?for=us_evt_1`.
        relative: String,
        /// The sheet, when the path names one (`…/sheets/{id}/…`).
        sheet_id: Option<String>,
    },
}

impl FlatfileClient {
    /// The API root `dataUrl`s are relative to: the configured API URL without its `/v1`.
    fn api_root(&self) -> Url {
        let mut root = self.inner.api_base.clone();
        if let Ok(mut segments) = root.path_segments_mut() {
            segments.pop_if_empty().pop();
        }
        if !root.path().ends_with('/') {
            let path = format!("{}/", root.path());
            root.set_path(&path);
        }
        root
    }

    /// Resolves an event's `dataUrl` against the configured API root. Refused with
    /// [`ApiError::InvalidRequest`]: an absolute URL outside the root, or one that cannot be
    /// parsed.
    pub fn resolve_data_url(&self, data_url: &str) -> Result<DataUrlTarget, ApiError> {
        let root = self.api_root();
        let url = self.data_url_to_url(&root, data_url)?;
        let relative = url
            .as_str()
            .strip_prefix(root.as_str())
            .unwrap_or_default()
            .to_owned();
        let segments: Vec<String> = url
            .path()
            .strip_prefix(root.path())
            .unwrap_or_default()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let sheet_id = match segments.iter().position(|s| s == "sheets") {
            Some(at) => segments.get(at + 1).cloned(),
            None => None,
        };
        let is_records = matches!(
            segments
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
            ["v1", "sheets", _, "records"]
        );
        let other = || DataUrlTarget::Other {
            relative: relative.clone(),
            sheet_id: sheet_id.clone(),
        };
        let Some(sheet) = sheet_id.clone().filter(|_| is_records) else {
            return Ok(other());
        };
        let mut commit = None;
        let mut since = None;
        let mut ids = Vec::new();
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "commitId" | "versionId" if !value.is_empty() => commit = Some(value.into_owned()),
                "sinceCommitId" | "sinceVersionId" if !value.is_empty() => {
                    since = Some(value.into_owned())
                }
                "ids" if !value.is_empty() => ids.push(value.into_owned()),
                // flatsync pages itself.
                "pageSize" | "pageNumber" => {}
                _ => return Ok(other()),
            }
        }
        let selection = match (commit, since, ids.is_empty()) {
            (Some(commit), None, true) => RecordsSelection::Commit(commit),
            (None, Some(since), true) => RecordsSelection::SinceCommit(since),
            (None, None, false) if ids.len() <= RecordsSelection::MAX_IDS => {
                RecordsSelection::Ids(ids)
            }
            (None, None, true) => RecordsSelection::All,
            _ => return Ok(other()),
        };
        Ok(DataUrlTarget::SheetRecords {
            sheet_id: sheet,
            selection,
        })
    }

    fn data_url_to_url(&self, root: &Url, data_url: &str) -> Result<Url, ApiError> {
        let refuse = |message: String| ApiError::InvalidRequest { message };
        let text = data_url.trim();
        let url = if text.starts_with("http://") || text.starts_with("https://") {
            Url::parse(text).map_err(|e| refuse(format!("dataUrl `{text}` is not a URL: {e}")))?
        } else {
            root.join(text.trim_start_matches('/'))
                .map_err(|e| refuse(format!("dataUrl `{text}` cannot be resolved: {e}")))?
        };
        let same_origin = url.scheme() == root.scheme()
            && url.host_str() == root.host_str()
            && url.port_or_known_default() == root.port_or_known_default();
        if !same_origin || !url.path().starts_with(root.path()) {
            // The API key would travel with the request: only to the configured API.
            return Err(refuse(format!(
                "dataUrl {}://{}{} is outside the configured API {root}; not read",
                url.scheme(),
                url.host_str().unwrap_or(""),
                url.path()
            )));
        }
        Ok(url)
    }

    /// One page (from 1) of the records behind a `dataUrl` that is not a plain records
    /// selection: `GET {root}/{relative}` with `pageSize` and `pageNumber` replaced by these.
    pub async fn data_url_records_page(
        &self,
        relative: &str,
        page_number: u64,
        page_size: u64,
    ) -> Result<RecordsPage, ApiError> {
        check_paging(page_number, page_size)?;
        let root = self.api_root();
        let mut url = self.data_url_to_url(&root, relative)?;
        let mut query = Query::default();
        for (key, value) in url.query_pairs() {
            if key != "pageSize" && key != "pageNumber" {
                query.push(&key, &value);
            }
        }
        query
            .push("pageSize", &page_size.to_string())
            .push("pageNumber", &page_number.to_string());
        query.set_on(&mut url);
        self.execute(
            HttpMethod::Get,
            Api::Platform,
            "data_url",
            url,
            None,
            convert::records_page,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientConfig;

    fn client(api_url: &str) -> FlatfileClient {
        FlatfileClient::new(ClientConfig {
            api_url: api_url.to_owned(),
            ..ClientConfig::default()
        })
        .expect("client")
    }

    #[test]
    fn records_urls_become_selections() {
        let c = client("https://platform.flatfile.com/api");
        assert_eq!(
            c.resolve_data_url("v1/sheets/us_sh_1/records?commitId=us_vr_2")
                .expect("ok"),
            DataUrlTarget::SheetRecords {
                sheet_id: "us_sh_1".to_owned(),
                selection: RecordsSelection::Commit("us_vr_2".to_owned())
            }
        );
        assert_eq!(
            c.resolve_data_url("/v1/sheets/us_sh_1/records?versionId=v&pageSize=5")
                .expect("ok"),
            DataUrlTarget::SheetRecords {
                sheet_id: "us_sh_1".to_owned(),
                selection: RecordsSelection::Commit("v".to_owned())
            }
        );
        assert_eq!(
            c.resolve_data_url("v1/sheets/s/records?ids=a&ids=b")
                .expect("ok"),
            DataUrlTarget::SheetRecords {
                sheet_id: "s".to_owned(),
                selection: RecordsSelection::Ids(vec!["a".to_owned(), "b".to_owned()])
            }
        );
        assert_eq!(
            c.resolve_data_url(
                "https://platform.flatfile.com/api/v1/sheets/s/records?sinceCommitId=c"
            )
            .expect("ok"),
            DataUrlTarget::SheetRecords {
                sheet_id: "s".to_owned(),
                selection: RecordsSelection::SinceCommit("c".to_owned())
            }
        );
    }

    #[test]
    fn other_urls_are_kept_relative_and_foreign_hosts_refused() {
        let c = client("http://127.0.0.1:8788/api/v1");
        assert_eq!(
            c.resolve_data_url("v1/sheets/us_sh_1/records?for=us_evt_1")
                .expect("ok"),
            DataUrlTarget::Other {
                relative: "v1/sheets/us_sh_1/records?for=us_evt_1".to_owned(),
                sheet_id: Some("us_sh_1".to_owned())
            }
        );
        assert_eq!(
            c.resolve_data_url("v1/commits/us_vr_1").expect("ok"),
            DataUrlTarget::Other {
                relative: "v1/commits/us_vr_1".to_owned(),
                sheet_id: None
            }
        );
        for foreign in [
            "https://evil.example.com/api/v1/sheets/s/records",
            "http://127.0.0.1:9999/api/v1/sheets/s/records",
            "http://127.0.0.1:8788/other/v1/sheets/s/records",
            "../../etc/passwd",
        ] {
            let err = c.resolve_data_url(foreign).expect_err(foreign);
            assert!(
                err.to_string().contains("outside the configured API"),
                "{foreign}: {err}"
            );
        }
    }
}
