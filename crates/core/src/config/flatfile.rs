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
    /// Pages requested ahead of the one being delivered (while the API's latency sets the
    /// pace, requests waiting for their answers, up to twice this requested); where the
    /// adaptive window starts.
    pub pages_in_flight: usize,
    /// Bytes of batches fetched ahead and not yet delivered, bodies being read estimated,
    /// beyond which answers wait unread (the oldest batch always passes).
    pub read_ahead_bytes: u64,
    /// Grow the pages in flight while the wire is the bottleneck, halve on throttling.
    pub adaptive_pages_in_flight: bool,
    /// The most pages in flight the adaptive window grows to.
    pub max_pages_in_flight: usize,
}

/// `[fetch] read_ahead_bytes` when unset: 10 MiB, the least that keeps the default four pages
/// in flight with 10,000-record Platform pages (about 2.2 MB of lines each). Batches beyond
/// that wait on slow sinks without making them faster, and cost resident memory.
const DEFAULT_READ_AHEAD_BYTES: u64 = 10 << 20;

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
    read_ahead_bytes: Option<Spanned<ByteSize>>,
    adaptive_pages_in_flight: Option<bool>,
    max_pages_in_flight: Option<Spanned<u64>>,
}

/// A size in bytes: a number, or a string such as `"16MiB"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ByteSize {
    Bytes(u64),
    Text(String),
}

/// `"16MiB"`, `"512 KiB"`, `"1GiB"`, `"4096"` (bytes); binary units only, as memory is counted.
fn parse_byte_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(scale)
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

/// Bounds of `[fetch] read_ahead_bytes`: below 64 KiB not even small pages overlap; above
/// 16 GiB is a typo.
const READ_AHEAD_BYTES: (u64, u64) = (64 << 10, 16 << 30);

/// Bounds of `[fetch] max_pages_in_flight` (its least is `pages_in_flight`).
const MAX_PAGES_IN_FLIGHT: u64 = 256;

pub(super) fn parse_fetch(raw: RawFetch, p: &Parser<'_>) -> Result<FetchConfig, ConfigError> {
    let pages_in_flight = p.positive_usize(raw.pages_in_flight, "fetch.pages_in_flight", 4)?;
    let read_ahead_bytes = match raw.read_ahead_bytes {
        None => DEFAULT_READ_AHEAD_BYTES,
        Some(size) => {
            let span = size.span();
            let key = "fetch.read_ahead_bytes";
            let bytes = match size.into_inner() {
                ByteSize::Bytes(bytes) => bytes,
                ByteSize::Text(text) => parse_byte_size(&text).ok_or_else(|| {
                    p.locate(
                        Some(span.clone()),
                        Some(key),
                        format!(
                            "`{text}` is not a size: use bytes or e.g. \"16MiB\" (KiB, MiB, GiB)"
                        ),
                    )
                })?,
            };
            p.within(
                Some(Spanned::new(span, bytes)),
                key,
                DEFAULT_READ_AHEAD_BYTES,
                READ_AHEAD_BYTES,
            )?
        }
    };
    let most = pages_in_flight as u64;
    let max_pages_in_flight = p.within(
        raw.max_pages_in_flight,
        "fetch.max_pages_in_flight",
        (4 * most).clamp(16, MAX_PAGES_IN_FLIGHT.max(most)),
        (most, MAX_PAGES_IN_FLIGHT.max(most)),
    )?;
    Ok(FetchConfig {
        legacy_page_size: p.positive(raw.legacy_page_size, "fetch.legacy_page_size", 1000)?,
        records_page_size: p.positive(raw.records_page_size, "fetch.records_page_size", 1000)?,
        pages_in_flight,
        read_ahead_bytes,
        adaptive_pages_in_flight: raw.adaptive_pages_in_flight.unwrap_or(false),
        max_pages_in_flight: usize::try_from(max_pages_in_flight).unwrap_or(usize::MAX),
    })
}
