//! Flatfile on the wire: webhook bodies in, row pages out.
//!
//! Two halves, both used by `flatsync-core`:
//! - [`parse_webhook_body`] turns the body of an incoming webhook (a legacy Portal notification or
//!   a Platform event) into an [`IncomingEvent`]. It is pure: no I/O, no clock.
//! - [`FlatfileClient`] talks to the legacy REST API and the Platform `/v1` API with retries, and
//!   converts row pages straight into the NDJSON batch format the sinks receive
//!   (`{"id":…,"valid":…,"values":{…}}\n` per row) without building a JSON tree per row.
//!
//! Secrets travel only in request headers, wrapped in [`Secret`], so URLs in errors and logs are
//! safe to print.
#![warn(missing_docs)]

mod buffers;
mod carried;
mod client;
mod convert;
mod error;
mod scrub;
mod secret;
mod webhook;

pub use buffers::Buffers;
pub use carried::{
    CarriedEnd, CarriedOrigin, CarriedPart, TOPIC_FORWARDED, TOPIC_PORTAL2_UPLOAD, portal2_stream,
};
pub use client::{
    AnswerGate, ClientConfig, DataUrlTarget, EventsQuery, FlatfileClient, JobInfo,
    RecordsSelection, RetryPolicy, WorkspacePage, answer_arrived, error_chain, with_answer_gate,
};
pub use convert::{EventsPage, LegacyPage, ListedEvent, RecordsPage, Sheet, Workbook};
pub use error::ApiError;
pub use scrub::{
    CREDENTIAL_KEYS, ROW_DATA_LOCATIONS, ScrubbedBody, ScrubbedEvent, is_credential_key,
    scrub_and_parse_webhook_body, scrub_value, scrub_webhook_body,
};
pub use secret::Secret;
pub use webhook::{
    IncomingEvent, LEGACY_TOPIC_IMPORT_SUBMITTED, LEGACY_TOPIC_RECORD_STATUS_MODIFIED,
    LEGACY_TOPIC_RECORDS_ADDED, LegacyNotification, PlatformEvent, TOPIC_WEBHOOK_EGRESS,
    WebhookBodyError, legacy_topic, parse_webhook_body,
};

/// Stream kind (and so SQLite table, CSV file prefix) of legacy Portal rows.
pub const LEGACY_BATCH_KIND: &str = "legacy_batch";

/// Makes `s` safe to use as part of a stream id: every char outside `[A-Za-z0-9_.-]` becomes `_`.
///
/// Stream ids end up in file names and SQL keys of the sinks, so they are kept to a set of
/// characters that needs no quoting anywhere.
pub fn sanitize_stream_component(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::sanitize_stream_component;

    #[test]
    fn sanitize_keeps_safe_chars_and_replaces_the_rest() {
        assert_eq!(
            sanitize_stream_component("contacts-us_evt_3Kd9.v2"),
            "contacts-us_evt_3Kd9.v2"
        );
        assert_eq!(sanitize_stream_component("a b/c:d\\é\"\n"), "a_b_c_d____");
        assert_eq!(sanitize_stream_component(""), "");
    }
}
