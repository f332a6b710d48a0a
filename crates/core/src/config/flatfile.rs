//! `[flatfile]` (the APIs, their keys, the submit jobs) and `[fetch]` (page sizes).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::filter::TopicPattern;
use super::{ConfigError, Parser, SecretSource};

/// `[flatfile]`.
#[derive(Clone, Debug)]
pub struct FlatfileConfig {
    /// Legacy Portal API root.
    pub legacy_api_url: String,
    /// Legacy `X-Api-Key`, `<keyId>+<secret>`.
    pub legacy_api_key: Option<SecretSource>,
    /// Platform API root; requests go to `{api_url}/v1/...`.
    pub api_url: String,
    /// Platform secret key.
    pub secret_key: Option<SecretSource>,
    /// Job names (`payload.job`, globs allowed) whose `job:ready` means "export this workbook".
    pub submit_jobs: Vec<TopicPattern>,
    /// Timeout of one API request.
    pub request_timeout: Duration,
    /// Attempts per API request before the stream fails.
    pub max_attempts: u32,
}

/// `[fetch]`.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Rows per legacy page (`take`).
    pub legacy_page_size: u64,
    /// Records per Platform page (`pageSize`).
    pub records_page_size: u64,
    /// Pages requested ahead of the one being delivered.
    pub pages_in_flight: usize,
}

const DEFAULT_SUBMIT_JOBS: [&str; 5] = [
    "workbook:submitActionFg",
    "workbook:submitAction",
    "workbook:simpleSubmitAction",
    "sheet:submitActionFg",
    "sheet:submitAction",
];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlatfile {
    legacy_api_url: Option<Spanned<String>>,
    legacy_api_key_env: Option<String>,
    legacy_api_key_file: Option<PathBuf>,
    legacy_api_key_credential: Option<String>,
    api_url: Option<Spanned<String>>,
    secret_key_env: Option<String>,
    secret_key_file: Option<PathBuf>,
    secret_key_credential: Option<String>,
    submit_jobs: Option<Vec<Spanned<String>>>,
    request_timeout_secs: Option<u64>,
    max_attempts: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFetch {
    legacy_page_size: Option<Spanned<u64>>,
    records_page_size: Option<Spanned<u64>>,
    pages_in_flight: Option<Spanned<usize>>,
}

pub(super) fn parse(f: RawFlatfile, p: &Parser<'_>) -> Result<FlatfileConfig, ConfigError> {
    let submit_jobs = match f.submit_jobs {
        None => DEFAULT_SUBMIT_JOBS
            .iter()
            .map(|j| TopicPattern::new(j))
            .collect(),
        Some(jobs) => jobs
            .iter()
            .map(|j| TopicPattern::new(j.get_ref()))
            .collect(),
    };
    Ok(FlatfileConfig {
        legacy_api_url: p.url(
            f.legacy_api_url,
            "flatfile.legacy_api_url",
            "https://api.us.flatfile.io",
        )?,
        legacy_api_key: p.secret(
            f.legacy_api_key_env,
            f.legacy_api_key_file,
            f.legacy_api_key_credential,
            "flatfile.legacy_api_key",
        )?,
        api_url: p.url(
            f.api_url,
            "flatfile.api_url",
            "https://platform.flatfile.com/api",
        )?,
        secret_key: p.secret(
            f.secret_key_env,
            f.secret_key_file,
            f.secret_key_credential,
            "flatfile.secret_key",
        )?,
        submit_jobs,
        request_timeout: Duration::from_secs(f.request_timeout_secs.unwrap_or(60).max(1)),
        max_attempts: p.positive_u32(f.max_attempts, "flatfile.max_attempts", 8)?,
    })
}

pub(super) fn parse_fetch(raw: RawFetch, p: &Parser<'_>) -> Result<FetchConfig, ConfigError> {
    Ok(FetchConfig {
        legacy_page_size: p.positive(raw.legacy_page_size, "fetch.legacy_page_size", 1000)?,
        records_page_size: p.positive(raw.records_page_size, "fetch.records_page_size", 1000)?,
        pages_in_flight: p.positive_usize(raw.pages_in_flight, "fetch.pages_in_flight", 4)?,
    })
}
