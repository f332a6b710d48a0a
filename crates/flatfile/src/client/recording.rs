//! What the client tells the process-wide `metrics` recorder (a no-op until one is installed)
//! about its requests.
//!
//! This crate cannot depend on flatsync-core, so the names are spelled here too: they MUST equal
//! the constants of `flatsync_core::metrics` (a core test drives a client and looks for each).
//! Every label is bounded: `endpoint` is one of the fixed names `execute` is called with, never
//! a URL, and `status` is one of a fixed set of strings ([`status_label`]).

use std::time::Duration;

use crate::error::ApiError;

/// Histogram of one HTTP attempt's duration in seconds; labels `endpoint` and `status`.
/// `flatsync_core::metrics::FETCH_SECONDS`.
const REQUEST_SECONDS: &str = "flatsync_fetch_seconds";
/// Counter of HTTP attempts; labels `endpoint` and `status`.
/// `flatsync_core::metrics::API_REQUESTS`.
const REQUESTS: &str = "flatsync_api_requests_total";
/// Counter of attempts repeated after a retryable failure; labels `endpoint` and `reason`.
/// `flatsync_core::metrics::FETCH_RETRIES`.
const RETRIES: &str = "flatsync_fetch_retries_total";
/// Counter of the body bytes of 2xx answers; label `endpoint`.
/// `flatsync_core::metrics::FETCH_BYTES`.
const BODY_BYTES: &str = "flatsync_fetch_bytes_total";

/// Counts one attempt, answered or not, and its duration.
pub(super) fn attempt_finished(endpoint: &'static str, status: &'static str, took: Duration) {
    metrics::histogram!(REQUEST_SECONDS, "endpoint" => endpoint, "status" => status)
        .record(took.as_secs_f64());
    metrics::counter!(REQUESTS, "endpoint" => endpoint, "status" => status).increment(1);
}

/// Counts the body of a 2xx answer, read whole (whether or not it then decodes).
pub(super) fn body_received(endpoint: &'static str, bytes: usize) {
    let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
    metrics::counter!(BODY_BYTES, "endpoint" => endpoint).increment(bytes);
}

/// Counts an attempt that is about to be repeated after `error`.
pub(super) fn retried(endpoint: &'static str, error: &ApiError) {
    metrics::counter!(RETRIES, "endpoint" => endpoint, "reason" => retry_reason(error))
        .increment(1);
}

/// The `status` label of an attempt that failed with `error`: the answer's status, or
/// `transport` when none arrived whole, or `decode` when a 2xx body was not what was expected.
pub(super) fn error_status(error: &ApiError) -> &'static str {
    match error {
        ApiError::Status { status, .. } => status_label(*status),
        ApiError::Transport { .. } => "transport",
        ApiError::Decode { .. } => "decode",
        _ => "other",
    }
}

/// An HTTP status as a label value: the code itself for the statuses Flatfile is known to
/// answer or that an operator acts on, its class (`2xx`, `4xx`, ...) for any other, so a
/// misbehaving server or proxy cannot grow the number of series.
pub(super) fn status_label(status: u16) -> &'static str {
    if let Some((_, label)) = CODES.iter().find(|(code, _)| *code == status) {
        return label;
    }
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

/// The statuses labelled by their own code.
const CODES: [(u16, &str); 25] = [
    (200, "200"),
    (201, "201"),
    (202, "202"),
    (204, "204"),
    (301, "301"),
    (302, "302"),
    (307, "307"),
    (308, "308"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (410, "410"),
    (413, "413"),
    (422, "422"),
    (425, "425"),
    (429, "429"),
    (500, "500"),
    (501, "501"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
];

/// The `reason` label of a retry: `http_<status>` (only 408, 429 and 5xx are retried, so at
/// most a hundred values), `transport` or `decode`.
fn retry_reason(error: &ApiError) -> String {
    match error {
        ApiError::Status { status, .. } => format!("http_{status}"),
        ApiError::Transport { .. } => "transport".to_owned(),
        ApiError::Decode { .. } => "decode".to_owned(),
        _ => "other".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_codes_or_classes_from_a_fixed_set() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(429), "429");
        assert_eq!(status_label(503), "503");
        assert_eq!(status_label(299), "2xx");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(599), "5xx");
        assert_eq!(status_label(999), "other");
        let distinct: std::collections::BTreeSet<&str> = (0..=u16::MAX).map(status_label).collect();
        assert!(
            distinct.len() <= 32,
            "every u16 maps into a small set of labels, got {}: {distinct:?}",
            distinct.len()
        );
    }

    #[test]
    fn failed_attempts_are_labelled_by_what_went_wrong() {
        let status = ApiError::Status {
            method: "GET",
            url: "http://127.0.0.1/v1/sheets".to_owned(),
            status: 429,
            body: String::new(),
        };
        assert_eq!(error_status(&status), "429");
        assert_eq!(retry_reason(&status), "http_429");
        let decode = ApiError::Decode {
            url: "http://127.0.0.1/v1/sheets".to_owned(),
            message: "expected an object".to_owned(),
        };
        assert_eq!(error_status(&decode), "decode");
        assert_eq!(retry_reason(&decode), "decode");
    }
}
