//! Prometheus metrics: names, recording helpers and the process-wide recorder.
//!
//! Two kinds of series end up on `/metrics`:
//! - counters and the fetch histogram are recorded as things happen, through the `metrics`
//!   facade, into the recorder [`install`] puts in place once per process;
//! - gauges that describe the state database ([`DEAD_LETTERS`], [`CHECKPOINT_LAG`],
//!   [`EVENTS_PENDING`]) are read from the database when `/metrics` is scraped, so they are
//!   exact after a restart or an operator command, never stale, and two daemons in one process
//!   each report their own database.
//!
//! Labels stay few: `sink` is a name from the config, `endpoint` one of a fixed set of Flatfile
//! calls, `status` an HTTP status from a fixed set (or its class), `call` one of the plugin
//! calls, and `topic` (which a webhook sender chooses) and `kind` (a sheet's slug, which the
//! Flatfile workbook chooses) are cut short, reduced to safe characters and limited to
//! [`MAX_TOPIC_LABELS`] and [`MAX_KIND_LABELS`] distinct values per process.
//!
//! `flatsync-flatfile` and `flatsync-plugin-host` cannot depend on this crate, so they spell the
//! names of what they record ([`FETCH_SECONDS`], [`API_REQUESTS`], [`FETCH_RETRIES`],
//! [`FETCH_BYTES`], [`SINK_CALL_SECONDS`]) themselves; the tests below drive both and look for
//! each name here. [`FAMILIES`] lists every family, and the end-to-end tests check it against a
//! real scrape and the shipped dashboard and alert rules against it.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

// The tests build gauges by hand.
#[cfg_attr(not(test), allow(unused_imports))]
use crate::state::report::SinkGauges;
use crate::state::report::StateGauges;

/// Events accepted into the inbox; labels `source` (`webhook` or `poll`) and `topic`.
pub const EVENTS_RECEIVED: &str = "flatsync_events_received_total";
/// Rows a sink made durable (counted once its checkpoint advanced); label `sink`.
pub const ROWS_DELIVERED: &str = "flatsync_rows_delivered_total";
/// [`ROWS_DELIVERED`] split by stream: labels `sink` and `kind` (the stream's table: a sheet's
/// slug, `legacy_batch`, `events`, ...), at most [`MAX_KIND_LABELS`] kinds, the rest counted
/// under [`OTHER_KINDS`].
pub const ROWS_DELIVERED_BY_KIND: &str = "flatsync_rows_delivered_by_kind_total";
/// Rows of batches a sink refused; label `sink`.
pub const ROWS_FAILED: &str = "flatsync_rows_failed_total";
/// Histogram of Flatfile API request durations in seconds, one sample per HTTP attempt (a
/// retried request gives several); labels `endpoint` (`legacy_rows`,
/// `legacy_workspace_records`, `records`, `sheet`, `sheets`, `workbook`, `counts`, `job`,
/// `events`, `event_ack`, `data_url`) and `status` (see [`API_REQUESTS`]). Recorded by
/// `flatsync-flatfile`, which spells the same name.
pub const FETCH_SECONDS: &str = "flatsync_fetch_seconds";
/// Flatfile API requests, one per HTTP attempt; labels `endpoint` (as [`FETCH_SECONDS`]) and
/// `status`: the answer's code (`200`, `429`, `503`, ... from a fixed set, else its class such
/// as `4xx`), `transport` when no answer arrived whole, `decode` when a 2xx body was not the
/// expected JSON. Recorded by `flatsync-flatfile`, which spells the same name.
pub const API_REQUESTS: &str = "flatsync_api_requests_total";
/// Body bytes of the Flatfile API's 2xx answers; label `endpoint`. Recorded by
/// `flatsync-flatfile`, which spells the same name.
pub const FETCH_BYTES: &str = "flatsync_fetch_bytes_total";
/// Flatfile API requests repeated after a retryable failure; labels `endpoint` and `reason`
/// (`http_<status>`, `transport` or `decode`). Recorded by `flatsync-flatfile`, which spells
/// the same name.
pub const FETCH_RETRIES: &str = "flatsync_fetch_retries_total";
/// Histogram of plugin call durations in seconds, one sample per call (a call the plugin asked
/// to retry gives several); labels `sink` and `call` (`create`, covering `create` and `check`;
/// `write_batch`; `flush`). A call past `sink_call_timeout_secs` is recorded at the timeout.
/// Recorded by `flatsync-plugin-host`, which spells the same name.
pub const SINK_CALL_SECONDS: &str = "flatsync_sink_call_seconds";
/// Per sink: 1 while it takes calls and its last call succeeded, 0 once a call failed (FATAL,
/// a panic, retries exhausted) or it stalled; label `sink`, one series per sink started.
pub const SINK_UP: &str = "flatsync_sink_up";
/// Per sink: 1 once a plugin call outran `[daemon] sink_call_timeout_secs`, so the sink takes
/// no more calls until a restart or a config reload replaces its instance; label `sink`.
pub const SINK_STALLED: &str = "flatsync_sink_stalled";
/// Connections a listener closed to protect itself; labels `listener` (`webhook` or `admin`)
/// and `reason` (`header_timeout`, `idle_timeout`, `evicted` to make room at
/// `max_connections`, `shed` when every connection was busy).
pub const CONNECTIONS_CLOSED: &str = "flatsync_connections_closed_total";
/// Answers of the webhook listener's handler; label `status` (`200`, `401`, `503`, ...: the
/// codes the handler gives). Connections the listener closes before a request reaches the
/// handler are counted by [`CONNECTIONS_CLOSED`].
pub const WEBHOOK_RESPONSES: &str = "flatsync_webhook_responses_total";
/// Always 1; labels `version` (this crate's version) and `plugin_abi` (the plugin ABI this
/// build speaks, `major.minor`), so a dashboard can show what runs where.
pub const BUILD_INFO: &str = "flatsync_build_info";
/// Deliveries that failed for good (dead letters), per sink, read from the state database.
pub const DEAD_LETTERS: &str = "flatsync_dead_letters";
/// Per sink: seconds since the oldest event with a delivery to it still pending was received,
/// 0 when none is pending; read from the state database.
pub const CHECKPOINT_LAG: &str = "flatsync_checkpoint_lag_seconds";
/// Events in the inbox that still need work, read from the state database.
pub const EVENTS_PENDING: &str = "flatsync_events_pending";

/// Every family `/metrics` can show, as named in the exposition (a histogram by its base name).
/// A family appears once it has a sample: [`CONNECTIONS_CLOSED`] only after a listener closed
/// a connection, the fetch families after the first Flatfile request, and so on.
pub const FAMILIES: &[&str] = &[
    EVENTS_RECEIVED,
    ROWS_DELIVERED,
    ROWS_DELIVERED_BY_KIND,
    ROWS_FAILED,
    FETCH_SECONDS,
    API_REQUESTS,
    FETCH_RETRIES,
    FETCH_BYTES,
    SINK_CALL_SECONDS,
    SINK_UP,
    SINK_STALLED,
    CONNECTIONS_CLOSED,
    WEBHOOK_RESPONSES,
    BUILD_INFO,
    DEAD_LETTERS,
    CHECKPOINT_LAG,
    EVENTS_PENDING,
];

/// Longest topic label, in characters; longer topics are cut.
pub const MAX_TOPIC_LABEL_LEN: usize = 64;
/// Distinct topic labels one process reports; events with further topics count under
/// [`OTHER_TOPICS`], so a sender inventing topics cannot grow memory or the scrape without end.
pub const MAX_TOPIC_LABELS: usize = 200;
/// Topic label of events beyond [`MAX_TOPIC_LABELS`]. The parentheses never survive
/// sanitising, so no real topic can be counted under this label.
pub const OTHER_TOPICS: &str = "(other)";
/// Topic label of an event without a topic.
pub const NO_TOPIC: &str = "(none)";
/// Distinct stream kinds one process reports in [`ROWS_DELIVERED_BY_KIND`]; rows of further
/// kinds count under [`OTHER_KINDS`]. Kinds are sheet slugs, which whoever designs the
/// workbooks chooses, so they are capped like topics.
pub const MAX_KIND_LABELS: usize = 200;
/// Kind label of rows beyond [`MAX_KIND_LABELS`]; like [`OTHER_TOPICS`], no real kind can
/// be counted under it.
pub const OTHER_KINDS: &str = "(other)";

/// Upper bounds (seconds) of the fetch histogram's buckets: from a local cache hit to a page
/// that takes most of the default 60 s request timeout.
const FETCH_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds (seconds) of the sink call histogram's buckets: from an in-memory append to a
/// flush that fsyncs a large file or waits on a remote service, up to the default 120 s
/// `sink_call_timeout_secs`.
const SINK_CALL_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];

/// How often histogram samples are folded into buckets between scrapes, so memory stays flat
/// when nobody scrapes for a long time.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Why the Prometheus recorder is not available.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// The embedding program installed its own `metrics` recorder first: flatsync's metrics
    /// are recorded into that one, and this process's `/metrics` cannot render them.
    #[error(
        "another metrics recorder is already installed in this process; flatsync's metrics are \
         recorded there and /metrics cannot show them"
    )]
    OtherRecorder,
    /// The recorder could not be built.
    #[error("cannot build the Prometheus recorder: {0}")]
    Build(String),
}

static RECORDER: OnceLock<Result<PrometheusHandle, MetricsError>> = OnceLock::new();

/// Installs flatsync's Prometheus recorder as the process-wide `metrics` recorder, once; later
/// calls return the same handle (or the same error). Call it before the daemon starts:
/// anything recorded before a recorder exists is not counted.
///
/// Fails with [`MetricsError::OtherRecorder`] when the embedding program installed a recorder
/// of its own; the daemon runs on and `/metrics` reports the error.
pub fn install() -> Result<&'static PrometheusHandle, MetricsError> {
    RECORDER
        .get_or_init(install_once)
        .as_ref()
        .map_err(Clone::clone)
}

fn install_once() -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(FETCH_SECONDS.to_owned()), &FETCH_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full(SINK_CALL_SECONDS.to_owned()),
                &SINK_CALL_BUCKETS,
            )
        })
        .map_err(|e| MetricsError::Build(e.to_string()))?
        .install_recorder()
        .map_err(|e| match e {
            BuildError::FailedToSetGlobalRecorder(_) => MetricsError::OtherRecorder,
            other => MetricsError::Build(other.to_string()),
        })?;
    describe();
    build_info();
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("flatsync-metrics".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        // Scrapes still fold samples in; only memory between scrapes is at stake.
        tracing::warn!(error = %e, "Cannot start the metrics upkeep thread");
    }
    Ok(handle)
}

fn describe() {
    metrics::describe_counter!(
        EVENTS_RECEIVED,
        Unit::Count,
        "Events accepted into the inbox, by source and topic."
    );
    metrics::describe_counter!(
        ROWS_DELIVERED,
        Unit::Count,
        "Rows a sink made durable, counted when its checkpoint advanced."
    );
    metrics::describe_counter!(ROWS_FAILED, Unit::Count, "Rows of batches a sink refused.");
    metrics::describe_gauge!(
        SINK_UP,
        "1 while the sink takes calls and its last call succeeded, 0 once one failed or it stalled."
    );
    metrics::describe_gauge!(
        SINK_STALLED,
        "1 once a plugin call outran sink_call_timeout_secs: the sink takes no more calls until a restart or reload."
    );
    metrics::describe_counter!(
        ROWS_DELIVERED_BY_KIND,
        Unit::Count,
        "Rows a sink made durable, by sink and stream kind (table)."
    );
    metrics::describe_histogram!(
        FETCH_SECONDS,
        Unit::Seconds,
        "Duration of one Flatfile API request, by endpoint and status."
    );
    metrics::describe_counter!(
        API_REQUESTS,
        Unit::Count,
        "Flatfile API requests, one per attempt, by endpoint and status (HTTP code, transport or decode)."
    );
    metrics::describe_counter!(
        FETCH_BYTES,
        Unit::Bytes,
        "Body bytes of the Flatfile API's successful answers, by endpoint."
    );
    metrics::describe_histogram!(
        SINK_CALL_SECONDS,
        Unit::Seconds,
        "Duration of one plugin call, by sink and call (create, write_batch, flush)."
    );
    metrics::describe_counter!(
        WEBHOOK_RESPONSES,
        Unit::Count,
        "Answers of the webhook handler, by HTTP status."
    );
    metrics::describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels say which flatsync version and plugin ABI run."
    );
    metrics::describe_counter!(
        CONNECTIONS_CLOSED,
        Unit::Count,
        "Connections a listener closed to protect itself, by listener and reason."
    );
    metrics::describe_counter!(
        FETCH_RETRIES,
        Unit::Count,
        "Flatfile API requests repeated after a retryable failure, by endpoint and reason."
    );
}

/// Sets [`BUILD_INFO`]: once per process, with the recorder.
fn build_info() {
    let abi = format!(
        "{}.{}",
        flatsync_plugin_api::ABI_MAJOR,
        flatsync_plugin_api::ABI_MINOR
    );
    metrics::gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "plugin_abi" => abi
    )
    .set(1.0);
}

/// Marks a freshly started sink instance as up and not stalled, and shows its row counters
/// from 0, so that a rate or an alert on them has a series before the first row arrives.
pub(crate) fn sink_started(sink: &str) {
    metrics::gauge!(SINK_UP, "sink" => sink.to_owned()).set(1.0);
    metrics::gauge!(SINK_STALLED, "sink" => sink.to_owned()).set(0.0);
    metrics::counter!(ROWS_DELIVERED, "sink" => sink.to_owned()).increment(0);
    metrics::counter!(ROWS_FAILED, "sink" => sink.to_owned()).increment(0);
}

/// Records how a call on a sink instance ended: up after a success, down after any failure,
/// and stalled for good after a timeout.
pub(crate) fn sink_call(sink: &str, result: Result<(), &flatsync_plugin_host::SinkError>) {
    let up = if result.is_ok() { 1.0 } else { 0.0 };
    metrics::gauge!(SINK_UP, "sink" => sink.to_owned()).set(up);
    if let Err(flatsync_plugin_host::SinkError::Stalled { .. }) = result {
        metrics::gauge!(SINK_STALLED, "sink" => sink.to_owned()).set(1.0);
    }
}

/// Counts an event accepted into the inbox. `source` is `"webhook"` or `"poll"`.
pub(crate) fn event_received(source: &'static str, topic: &str) {
    let topic = topic_label(&TOPIC_LABELS, topic);
    metrics::counter!(EVENTS_RECEIVED, "source" => source, "topic" => topic).increment(1);
}

/// Counts a connection a listener closed: timed out, evicted or shed.
pub(crate) fn connection_closed(listener: &'static str, reason: &'static str) {
    metrics::counter!(CONNECTIONS_CLOSED, "listener" => listener, "reason" => reason).increment(1);
}

/// Counts rows of a stream of `kind` a sink made durable; call after the checkpoint that covers
/// them advanced.
pub(crate) fn rows_delivered(sink: &str, kind: &str, rows: u64) {
    metrics::counter!(ROWS_DELIVERED, "sink" => sink.to_owned()).increment(rows);
    let kind = bounded_label(&KIND_LABELS, MAX_KIND_LABELS, OTHER_KINDS, kind);
    metrics::counter!(ROWS_DELIVERED_BY_KIND, "sink" => sink.to_owned(), "kind" => kind)
        .increment(rows);
}

/// Counts an answer of the webhook handler.
pub(crate) fn webhook_response(status: axum::http::StatusCode) {
    // The handler's answers are a fixed set of codes; `as_u16` keeps the label a number.
    metrics::counter!(WEBHOOK_RESPONSES, "status" => status.as_u16().to_string()).increment(1);
}

/// Counts the rows of a batch a sink refused.
pub(crate) fn rows_failed(sink: &str, rows: u64) {
    metrics::counter!(ROWS_FAILED, "sink" => sink.to_owned()).increment(rows);
}

/// Topics given a label so far in this process.
static TOPIC_LABELS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
/// Stream kinds given a label so far in this process.
static KIND_LABELS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// The label an event's topic is counted under, given the labels handed out so far: see
/// [`sanitize_topic`] and [`MAX_TOPIC_LABELS`].
fn topic_label(seen: &Mutex<BTreeSet<String>>, topic: &str) -> String {
    bounded_label(seen, MAX_TOPIC_LABELS, OTHER_TOPICS, topic)
}

/// `value` as a label ([`sanitize_topic`]), or `other` once `max` distinct labels were handed
/// out from `seen`; a value labelled before keeps its label.
fn bounded_label(
    seen: &Mutex<BTreeSet<String>>,
    max: usize,
    other: &'static str,
    value: &str,
) -> String {
    let label = sanitize_topic(value);
    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    if seen.contains(&label) {
        return label;
    }
    if seen.len() >= max {
        return other.to_owned();
    }
    seen.insert(label.clone());
    label
}

/// A topic as a label value: its first [`MAX_TOPIC_LABEL_LEN`] characters, each outside
/// `[A-Za-z0-9:_.*-]` replaced by `_`; [`NO_TOPIC`] for an empty topic.
pub fn sanitize_topic(topic: &str) -> String {
    if topic.is_empty() {
        return NO_TOPIC.to_owned();
    }
    topic
        .chars()
        .take(MAX_TOPIC_LABEL_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '*' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Appends the gauges in the Prometheus text format (0.0.4), lag measured up to `now_ms`.
pub(crate) fn render_state_gauges(out: &mut String, gauges: &StateGauges, now_ms: i64) {
    family_head(
        out,
        EVENTS_PENDING,
        "Events in the inbox that still need work.",
    );
    let _ = writeln!(out, "{EVENTS_PENDING} {}\n", gauges.events_pending);

    family_head(
        out,
        DEAD_LETTERS,
        "Deliveries that failed for good, waiting for `flatsync dead-letter retry` or `drop`.",
    );
    for (sink, g) in &gauges.sinks {
        let _ = writeln!(
            out,
            "{DEAD_LETTERS}{{sink=\"{}\"}} {}",
            escape_label_value(sink),
            g.dead_letters
        );
    }
    out.push('\n');

    family_head(
        out,
        CHECKPOINT_LAG,
        "Seconds since the oldest event still pending for the sink was received; 0 when none.",
    );
    for (sink, g) in &gauges.sinks {
        let lag_ms = g
            .oldest_pending_ms
            .map_or(0, |t| now_ms.saturating_sub(t).max(0));
        let _ = writeln!(
            out,
            "{CHECKPOINT_LAG}{{sink=\"{}\"}} {}",
            escape_label_value(sink),
            lag_ms as f64 / 1000.0
        );
    }
    out.push('\n');
}

fn family_head(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
pub(crate) mod tests {
    // The scrape parser is shared with the e2e tests; admin's tests import it from here.
    pub(crate) use flatsync_test_kit::prometheus::{parse_exposition, value_of};

    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn topics_are_cut_and_reduced_to_safe_characters() {
        assert_eq!(
            sanitize_topic("portalImportSubmitted"),
            "portalImportSubmitted"
        );
        assert_eq!(sanitize_topic("job:ready"), "job:ready");
        assert_eq!(sanitize_topic("records:*"), "records:*");
        assert_eq!(sanitize_topic("a-b_c.d"), "a-b_c.d");
        assert_eq!(
            sanitize_topic("x\"} 1\nevil{y=\"z"),
            "x___1_evil_y__z",
            "quotes, braces and newlines could forge series"
        );
        assert_eq!(sanitize_topic("é/ü"), "___");
        assert_eq!(sanitize_topic(""), NO_TOPIC);
        let long = "t".repeat(500);
        assert_eq!(sanitize_topic(&long), "t".repeat(MAX_TOPIC_LABEL_LEN));
        let long_wide = "é".repeat(100);
        assert_eq!(sanitize_topic(&long_wide).len(), MAX_TOPIC_LABEL_LEN);
    }

    #[test]
    fn distinct_topic_labels_are_capped() {
        let seen = Mutex::new(BTreeSet::new());
        assert_eq!(topic_label(&seen, "job:ready"), "job:ready");
        for i in 1..MAX_TOPIC_LABELS {
            assert_eq!(topic_label(&seen, &format!("t{i}")), format!("t{i}"));
        }
        assert_eq!(topic_label(&seen, "one-too-many"), OTHER_TOPICS);
        assert_eq!(topic_label(&seen, "a/b"), OTHER_TOPICS);
        assert_eq!(
            topic_label(&seen, "job:ready"),
            "job:ready",
            "a topic seen before the cap keeps its label"
        );
        assert_eq!(
            topic_label(&seen, "job ready"),
            OTHER_TOPICS,
            "a new spelling is a new label"
        );
        assert_eq!(seen.lock().expect("not poisoned").len(), MAX_TOPIC_LABELS);
    }

    #[test]
    fn distinct_kind_labels_are_capped_like_topics() {
        let seen = Mutex::new(BTreeSet::new());
        for i in 0..MAX_KIND_LABELS {
            assert_eq!(
                bounded_label(&seen, MAX_KIND_LABELS, OTHER_KINDS, &format!("sheet_{i}")),
                format!("sheet_{i}")
            );
        }
        assert_eq!(
            bounded_label(&seen, MAX_KIND_LABELS, OTHER_KINDS, "one_sheet_too_many"),
            OTHER_KINDS,
            "kinds past the cap share one label"
        );
        assert_eq!(
            bounded_label(&seen, MAX_KIND_LABELS, OTHER_KINDS, "sheet_0"),
            "sheet_0",
            "a kind seen before the cap keeps its label"
        );
        assert_eq!(
            bounded_label(&seen, MAX_KIND_LABELS, OTHER_KINDS, "x\"}"),
            OTHER_KINDS
        );
        assert_eq!(seen.lock().expect("not poisoned").len(), MAX_KIND_LABELS);
    }

    #[test]
    fn install_returns_the_same_handle_every_time() {
        let first = install().expect("no other recorder in this test process");
        let second = install().expect("still installed");
        assert!(std::ptr::eq(first, second));
    }

    #[test]
    fn recorded_series_appear_in_the_rendered_text() {
        let handle = install().expect("no other recorder in this test process");
        event_received("webhook", "render-test:topic");
        event_received("webhook", "render-test:topic");
        event_received("poll", "render-test:topic");
        rows_delivered("render-test-sink", "contacts", 1500);
        rows_delivered("render-test-sink", "companies", 500);
        rows_failed("render-test-sink", 7);
        webhook_response(axum::http::StatusCode::OK);
        webhook_response(axum::http::StatusCode::UNAUTHORIZED);
        let text = handle.render();
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let get = |name, labels: &[(&str, &str)]| value_of(&samples, name, labels);
        assert_eq!(
            get(
                EVENTS_RECEIVED,
                &[("source", "webhook"), ("topic", "render-test:topic")]
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            get(
                EVENTS_RECEIVED,
                &[("source", "poll"), ("topic", "render-test:topic")]
            ),
            Some(1.0)
        );
        assert_eq!(
            get(ROWS_DELIVERED, &[("sink", "render-test-sink")]),
            Some(2000.0)
        );
        assert_eq!(
            get(
                ROWS_DELIVERED_BY_KIND,
                &[("sink", "render-test-sink"), ("kind", "contacts")]
            ),
            Some(1500.0),
            "{text}"
        );
        assert_eq!(
            get(
                ROWS_DELIVERED_BY_KIND,
                &[("sink", "render-test-sink"), ("kind", "companies")]
            ),
            Some(500.0)
        );
        assert_eq!(get(ROWS_FAILED, &[("sink", "render-test-sink")]), Some(7.0));
        // Other tests of this process answer webhooks too: only that both codes show.
        assert!(
            get(WEBHOOK_RESPONSES, &[("status", "200")]).is_some_and(|n| n >= 1.0),
            "{text}"
        );
        assert!(
            get(WEBHOOK_RESPONSES, &[("status", "401")]).is_some_and(|n| n >= 1.0),
            "{text}"
        );
        assert_eq!(
            get(
                BUILD_INFO,
                &[
                    ("version", env!("CARGO_PKG_VERSION")),
                    (
                        "plugin_abi",
                        &format!(
                            "{}.{}",
                            flatsync_plugin_api::ABI_MAJOR,
                            flatsync_plugin_api::ABI_MINOR
                        )
                    )
                ]
            ),
            Some(1.0),
            "{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {ROWS_DELIVERED} counter")),
            "{text}"
        );
        assert!(
            text.contains(&format!("# HELP {ROWS_DELIVERED} ")),
            "{text}"
        );
    }

    /// The Flatfile client spells the metric names itself; a real client against a local
    /// server must produce series under the names this module documents.
    #[tokio::test]
    async fn the_flatfile_client_records_under_the_documented_names() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU32, Ordering};

        use axum::http::StatusCode;
        use axum::routing::get;

        let handle = install().expect("no other recorder in this test process");
        let calls = Arc::new(AtomicU32::new(0));
        let served = Arc::clone(&calls);
        // First answer 503 (retried), then a count.
        let app = axum::Router::new().route(
            "/v1/sheets/{id}/counts",
            get(move || {
                let served = Arc::clone(&served);
                async move {
                    if served.fetch_add(1, Ordering::SeqCst) == 0 {
                        (StatusCode::SERVICE_UNAVAILABLE, "busy".to_owned())
                    } else {
                        (
                            StatusCode::OK,
                            r#"{"data":{"counts":{"total":42,"valid":42,"error":0}}}"#.to_owned(),
                        )
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let client = flatsync_flatfile::FlatfileClient::new(flatsync_flatfile::ClientConfig {
            api_url: format!("http://{addr}"),
            secret_key: Some(flatsync_flatfile::Secret::new("sk_test".to_owned())),
            retry: flatsync_flatfile::RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(5),
            },
            ..flatsync_flatfile::ClientConfig::default()
        })
        .expect("client");
        let before = parse_exposition(&handle.render()).expect("parses");
        let count = client.record_count("us_sh_metrics").await.expect("count");
        assert_eq!(count, 42);
        server.abort();

        let text = handle.render();
        let after = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let delta = |name: &str, labels: &[(&str, &str)]| {
            value_of(&after, name, labels).unwrap_or_else(|| panic!("no {name} in\n{text}"))
                - value_of(&before, name, labels).unwrap_or(0.0)
        };
        for status in ["503", "200"] {
            let labels = [("endpoint", "counts"), ("status", status)];
            assert_eq!(
                delta(&format!("{FETCH_SECONDS}_count"), &labels),
                1.0,
                "one sample per attempt, by the status it got"
            );
            assert_eq!(
                delta(
                    &format!("{FETCH_SECONDS}_bucket"),
                    &[("endpoint", "counts"), ("status", status), ("le", "+Inf")]
                ),
                1.0
            );
            assert_eq!(
                delta(API_REQUESTS, &labels),
                1.0,
                "requests answered {status}"
            );
        }
        assert_eq!(
            delta(
                FETCH_RETRIES,
                &[("endpoint", "counts"), ("reason", "http_503")]
            ),
            1.0
        );
        let body = r#"{"data":{"counts":{"total":42,"valid":42,"error":0}}}"#;
        assert_eq!(
            delta(FETCH_BYTES, &[("endpoint", "counts")]),
            body.len() as f64,
            "the bytes of the one 2xx body; an error body is not counted"
        );
        assert!(
            text.contains(&format!("# TYPE {FETCH_SECONDS} histogram")),
            "{text}"
        );
    }

    /// The plugin host spells the sink call histogram's name itself; a real worker driving an
    /// in-process sink must produce series under the name this module documents.
    #[tokio::test]
    async fn the_plugin_host_records_sink_calls_under_the_documented_name() {
        use std::sync::Arc;

        use flatsync_plugin_host::{LoadedPlugin, OwnedBatch, SinkOptions, SinkWorker};
        use flatsync_plugin_sdk::{Batch, CreateContext, Sink, SinkError, serde_json};

        struct Accept;
        impl Sink for Accept {
            fn create(_: &CreateContext<'_>, _: serde_json::Value) -> Result<Self, SinkError> {
                Ok(Accept)
            }
            fn write_batch(&mut self, _: &Batch<'_>) -> Result<(), SinkError> {
                Ok(())
            }
            fn flush(&mut self) -> Result<(), SinkError> {
                Ok(())
            }
        }

        let handle = install().expect("no other recorder in this test process");
        let descriptor = flatsync_plugin_sdk::in_process::<Accept>("metrics-accept");
        let plugin = LoadedPlugin::from_static(descriptor, "in-process:metrics-accept")
            .expect("the SDK's descriptor loads");
        let sink = "sink-call-test";
        let worker = SinkWorker::spawn(plugin, sink, "{}".to_owned(), SinkOptions::default())
            .await
            .expect("the sink starts");
        for seq in 0..3 {
            let batch = OwnedBatch {
                stream: "s1".to_owned(),
                kind: "contacts".to_owned(),
                event_id: "e1".to_owned(),
                fields_json: "[]".to_owned(),
                seq,
                row_count: 1,
                ndjson: bytes::Bytes::from_static(b"{\"id\":\"r1\",\"values\":{}}\n"),
                received_at_ms: 0,
                last: seq == 2,
                deletions: false,
            };
            worker.write_batch(Arc::new(batch)).await.expect("written");
        }
        worker.flush().await.expect("flushed");
        worker.shutdown().await;

        let text = handle.render();
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let count = |call| {
            value_of(
                &samples,
                &format!("{SINK_CALL_SECONDS}_count"),
                &[("sink", sink), ("call", call)],
            )
        };
        assert_eq!(count("create"), Some(1.0), "{text}");
        assert_eq!(count("write_batch"), Some(3.0), "one sample per batch");
        assert_eq!(count("flush"), Some(1.0));
        assert!(
            text.contains(&format!("# TYPE {SINK_CALL_SECONDS} histogram")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{SINK_CALL_SECONDS}_bucket{{sink=\"{sink}\",call=\"flush\",le=\"0.001\"}}"
            )),
            "the sink call buckets start at a millisecond:\n{text}"
        );
    }

    #[test]
    fn state_gauges_render_as_valid_text() {
        let mut gauges = StateGauges {
            events_pending: 3,
            sinks: BTreeMap::new(),
        };
        gauges.sinks.insert(
            "archive".to_owned(),
            SinkGauges {
                dead_letters: 2,
                oldest_pending_ms: Some(10_000),
            },
        );
        gauges
            .sinks
            .insert("odd \"name\"\\\n".to_owned(), SinkGauges::default());
        let mut text = String::new();
        render_state_gauges(&mut text, &gauges, 12_500);
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(value_of(&samples, EVENTS_PENDING, &[]), Some(3.0));
        assert_eq!(
            value_of(&samples, DEAD_LETTERS, &[("sink", "archive")]),
            Some(2.0)
        );
        assert_eq!(
            value_of(&samples, CHECKPOINT_LAG, &[("sink", "archive")]),
            Some(2.5)
        );
        assert_eq!(
            value_of(&samples, CHECKPOINT_LAG, &[("sink", "odd \"name\"\\\n")]),
            Some(0.0),
            "{text}"
        );
    }
}
