//! A webhook receiver that stands in for a user's service in tests of the `http-forward` sink.
//!
//! [`RunningReceiver::start`] serves `POST /hook` on a local port from a background thread with
//! its own tokio runtime, so synchronous tests (and async ones) can start it alike. Every request
//! is checked the way a careful receiver would:
//!
//! 1. The [Standard Webhooks] signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`)
//!    is verified with [`standardwebhooks::Webhook::verify`] against each configured secret; one
//!    match is enough, which is how secret rotation works. A missing or wrong signature, a body
//!    that is not the signed one, or a timestamp outside [`ReceiverConfig::tolerance`] is
//!    answered `401` with a short reason.
//! 2. `Idempotency-Key` must equal `webhook-id` (else `400`), and `Content-Type` must be
//!    `application/json` (else `415`).
//! 3. The [`Fault`] script, if any, decides the answer; otherwise the request is accepted with
//!    `200 {"ok":true}`.
//!
//! Every request is recorded ([`ReceivedRequest`]) with what it was answered, and
//! [`ReceiverStats`] counts accepted, rejected and duplicate deliveries and clients that came back
//! before a `429`'s `Retry-After` had elapsed. [`FlatsyncBody`] parses the sink's `"flatsync"`
//! body format; [`sign_request`] builds the headers a correct sender would send, for tests that
//! talk to the receiver directly.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};
use standardwebhooks::{Webhook, WebhookError};
use tokio::sync::oneshot;

use crate::clock;
use crate::lock::lock;

/// The longest timestamp tolerance: [`Webhook::verify`] enforces 5 minutes itself, so a wider
/// window could not be honoured.
pub const MAX_TOLERANCE: Duration = Duration::from_secs(300);

/// The path the receiver answers on.
pub const HOOK_PATH: &str = "/hook";

/// Header carrying the idempotency key; the sink sets it to the webhook id.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Bodies up to this size are read; the sink's parts are far smaller, and axum's 2 MB default
/// could refuse a large but legitimate part.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// How long [`RunningReceiver::shutdown`] lets requests in flight finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the receiver accepts and how it misbehaves.
#[derive(Clone)]
pub struct ReceiverConfig {
    /// Signing secrets (`whsec_<base64>`); a request passes if its signature matches any of them.
    pub secrets: Vec<String>,
    /// Faults applied in order to verified requests; when it runs out, requests are accepted.
    pub script: Vec<Fault>,
    /// Largest difference between `webhook-timestamp` and the receiver's clock, in whole seconds,
    /// at most [`MAX_TOLERANCE`].
    pub tolerance: Duration,
}

impl ReceiverConfig {
    /// A receiver that accepts requests signed with any of `secrets`, with the default 5-minute
    /// tolerance and no faults.
    pub fn new(secrets: Vec<String>) -> ReceiverConfig {
        ReceiverConfig {
            secrets,
            ..ReceiverConfig::default()
        }
    }

    /// Checks the configuration and builds one verifier per secret.
    fn verifiers(&self) -> Result<Vec<Webhook>, ReceiverError> {
        if self.secrets.is_empty() {
            return Err(ReceiverError::NoSecret);
        }
        if self.tolerance > MAX_TOLERANCE {
            return Err(ReceiverError::ToleranceTooLarge(self.tolerance));
        }
        for fault in &self.script {
            if let Fault::Status { status, .. } = fault
                && StatusCode::from_u16(*status).is_err()
            {
                return Err(ReceiverError::InvalidStatus(*status));
            }
        }
        self.secrets
            .iter()
            .enumerate()
            .map(|(index, secret)| {
                webhook_for(secret).map_err(|_| ReceiverError::InvalidSecret { index })
            })
            .collect()
    }
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            secrets: Vec::new(),
            script: Vec::new(),
            tolerance: MAX_TOLERANCE,
        }
    }
}

impl std::fmt::Debug for ReceiverConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of test output and logs: only their number is shown.
        f.debug_struct("ReceiverConfig")
            .field(
                "secrets",
                &format_args!("<{} redacted>", self.secrets.len()),
            )
            .field("script", &self.script)
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

/// One step of a receiver's fault script. Steps apply in order to verified requests (those that
/// passed the signature, idempotency-key and content-type checks); a request the current step no
/// longer applies to moves on to the next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The next `requests` requests are answered `429` with `Retry-After: retry_after_secs`.
    RateLimit {
        /// How many requests get the 429.
        requests: u32,
        /// Seconds announced in `Retry-After`.
        retry_after_secs: u64,
    },
    /// Every request during `duration`, counted from the first request this step applies to, is
    /// answered `503` without `Retry-After`.
    Unavailable {
        /// How long the outage lasts.
        duration: Duration,
    },
    /// The next `requests` requests are answered `status` with `body` (a 2xx status counts as
    /// accepted).
    Status {
        /// How many requests get this answer.
        requests: u32,
        /// The HTTP status, 100 to 999.
        status: u16,
        /// The response body, sent as JSON when it parses as JSON, else as plain text.
        body: String,
    },
    /// The next `requests` requests are accepted, but answered only after `delay`. They are
    /// recorded as accepted when they arrive, as a service that commits before answering would,
    /// so a client that times out and sends again produces a duplicate.
    Delay {
        /// How many requests are delayed.
        requests: u32,
        /// How long each answer is held back.
        delay: Duration,
    },
}

/// One request to `POST /hook`, as received and answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedRequest {
    /// The `webhook-id` header, if present and readable.
    pub webhook_id: Option<String>,
    /// The `Idempotency-Key` header, if present and readable.
    pub idempotency_key: Option<String>,
    /// The `webhook-timestamp` header (seconds since the Unix epoch), if it is an integer.
    pub timestamp: Option<i64>,
    /// When the request arrived, in milliseconds since the receiver started.
    pub at_ms: u64,
    /// The HTTP status it was answered with.
    pub status: u16,
    /// Whether the signature matched one of the secrets within the tolerance.
    pub verified: bool,
    /// Why the request was refused (401, 400 or 415); `None` when it passed the checks, even if
    /// the script answered it with an error.
    pub reason: Option<String>,
    /// The raw body.
    pub body: Vec<u8>,
}

impl ReceivedRequest {
    /// Whether the request was answered with a 2xx status.
    pub fn is_accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Parses the body as the sink's `"flatsync"` format.
    pub fn flatsync(&self) -> Result<FlatsyncBody, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A request body in the `http-forward` sink's `"flatsync"` format: one part of one batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlatsyncBody {
    /// `"rows"` or `"deletions"`.
    #[serde(rename = "type")]
    pub body_type: String,
    /// The stream id.
    pub stream: String,
    /// What the rows are: a sheet slug, `events` or `legacy_batch`.
    pub kind: String,
    /// Id of the Flatfile event the stream belongs to.
    pub event_id: String,
    /// Position of the batch in its stream, from 0.
    pub seq: u64,
    /// Position of this part in its batch, from 0.
    pub part: u64,
    /// Number of parts of the batch.
    pub parts: u64,
    /// Whether the batch is the last of its stream.
    pub last: bool,
    /// Field keys in schema order, empty when the source has no schema.
    pub fields: Vec<String>,
    /// When flatsync received the event (ISO 8601).
    pub received_at: String,
    /// The rows of this part (deletions carry only `id`).
    pub rows: Vec<FlatsyncRow>,
}

impl FlatsyncBody {
    /// Whether the rows name deleted records.
    pub fn is_deletions(&self) -> bool {
        self.body_type == "deletions"
    }

    /// The record ids of the rows, in order.
    pub fn row_ids(&self) -> Vec<String> {
        self.rows.iter().map(|row| row.id.clone()).collect()
    }
}

/// One row of a [`FlatsyncBody`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlatsyncRow {
    /// The record id.
    pub id: String,
    /// Whether the record passed validation; absent in deletions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
    /// Field values by key; absent in deletions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Map<String, Json>>,
}

/// Counters of a running receiver.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverStats {
    /// Every request to `POST /hook`.
    pub requests: u64,
    /// Requests answered 2xx.
    pub accepted: u64,
    /// Requests refused by the checks: 401 (signature, timestamp), 400 (idempotency key), 415.
    pub rejected: u64,
    /// Verified requests the script answered with a non-2xx status.
    pub faulted: u64,
    /// Accepted requests whose `webhook-id` had been accepted before.
    pub duplicates: u64,
    /// Distinct `webhook-id`s accepted.
    pub distinct_ids: u64,
    /// Requests that arrived before the moment a previous 429's `Retry-After` allowed. Any
    /// request counts (the sink is one client). A well-behaved sender keeps this at 0.
    pub early_retries: u64,
}

/// Errors of the receiver's configuration and of [`sign_request`]. Secrets never appear in them.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// [`ReceiverConfig::secrets`] is empty.
    #[error("the receiver needs at least one signing secret")]
    NoSecret,
    /// A secret is empty or not base64 after its `whsec_` prefix.
    #[error("signing secret #{index} is not whsec_ followed by non-empty base64")]
    InvalidSecret {
        /// Position of the secret in the list (0 for [`sign_request`]).
        index: usize,
    },
    /// [`ReceiverConfig::tolerance`] is over [`MAX_TOLERANCE`].
    #[error("the timestamp tolerance is {0:?}, more than the 300 s the verifier allows")]
    ToleranceTooLarge(Duration),
    /// A [`Fault::Status`] status is not a valid HTTP status.
    #[error("{0} is not a valid HTTP status")]
    InvalidStatus(u16),
    /// The body to sign is not UTF-8, which Standard Webhooks signing requires.
    #[error("the body to sign is not UTF-8")]
    BodyNotUtf8,
    /// The webhook id cannot be sent in a header.
    #[error("the webhook id contains characters not allowed in an HTTP header")]
    InvalidWebhookId,
}

impl From<ReceiverError> for io::Error {
    fn from(err: ReceiverError) -> Self {
        io::Error::new(io::ErrorKind::InvalidInput, err)
    }
}

/// Headers a correct sender sends with `body`: `webhook-id`, `webhook-timestamp`,
/// `webhook-signature` (signed with `secret`), `Idempotency-Key` equal to the id, and
/// `Content-Type: application/json`. Tests change the body or a header afterwards to check that
/// the receiver refuses it.
pub fn sign_request(
    secret: &str,
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<HeaderMap, ReceiverError> {
    let webhook = webhook_for(secret).map_err(|_| ReceiverError::InvalidSecret { index: 0 })?;
    let signature = webhook
        .sign(webhook_id, timestamp, body)
        .map_err(|_| ReceiverError::BodyNotUtf8)?;
    let id = HeaderValue::from_str(webhook_id).map_err(|_| ReceiverError::InvalidWebhookId)?;
    let signature = HeaderValue::from_str(&signature)
        .expect("a signature is base64 text, always a valid header value");
    let mut headers = HeaderMap::new();
    headers.insert(standardwebhooks::HEADER_WEBHOOK_ID, id.clone());
    headers.insert(
        standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
        HeaderValue::from(timestamp),
    );
    headers.insert(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature);
    headers.insert(IDEMPOTENCY_KEY, id);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(headers)
}

/// Seconds since the Unix epoch on the receiver's clock, the value to put in `webhook-timestamp`.
pub fn unix_now() -> i64 {
    i64::try_from(clock::now_ms() / 1000).unwrap_or(i64::MAX)
}

/// A verifier for `secret`, refusing an empty key (which would make every HMAC forgeable by
/// anyone who knows the scheme).
fn webhook_for(secret: &str) -> Result<Webhook, WebhookError> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    if encoded.is_empty() {
        return Err(WebhookError::InvalidSignature);
    }
    Webhook::new(secret)
}

/// A receiver serving on a local port until [`RunningReceiver::shutdown`] (or drop).
pub struct RunningReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Stopped>>,
}

impl std::fmt::Debug for RunningReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningReceiver")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RunningReceiver {
    /// Checks `config`, binds `listen` (port 0 picks a free port) and serves from a background
    /// thread with its own runtime. Callable from synchronous code and from inside a runtime.
    pub fn start(config: ReceiverConfig, listen: SocketAddr) -> io::Result<RunningReceiver> {
        let webhooks = config.verifiers()?;
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            // Registering the socket needs the runtime's reactor, not a running executor.
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let shared = Arc::new(Shared {
            started: Instant::now(),
            webhooks,
            tolerance_secs: i64::try_from(config.tolerance.as_secs())
                .expect("the tolerance is at most 300 s"),
            state: Mutex::new(ReceiverState {
                script: config.script.into_iter().map(Step::from).collect(),
                ..ReceiverState::default()
            }),
        });
        let app = Router::new()
            .route(HOOK_PATH, post(hook))
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("webhook-receiver".to_owned())
            .spawn(move || serve(runtime, listener, app, stopped))?;
        tracing::debug!(%addr, "Webhook receiver listening");
        Ok(RunningReceiver {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT/hook`, the URL to configure in the sink. A wildcard listen address is
    /// replaced by loopback.
    pub fn url(&self) -> String {
        format!("http://{}{HOOK_PATH}", crate::net::reachable(self.addr))
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.shared.state).requests.clone()
    }

    /// The requests answered 2xx, in arrival order (duplicates included).
    pub fn accepted(&self) -> Vec<ReceivedRequest> {
        lock(&self.shared.state)
            .requests
            .iter()
            .filter(|request| request.is_accepted())
            .cloned()
            .collect()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ReceiverStats {
        lock(&self.shared.state).stats.clone()
    }

    /// Stops accepting connections, lets requests in flight finish (at most 5 s), and returns
    /// once the server thread has ended.
    pub fn shutdown(self) {
        self.stop();
    }

    /// [`RunningReceiver::shutdown`], telling how the server ended; `None` if its thread
    /// panicked.
    fn stop(mut self) -> Option<Stopped> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let thread = self.thread.take()?;
        let stopped = thread.join().ok();
        if stopped.is_none() {
            tracing::error!("Webhook receiver thread panicked");
        }
        stopped
    }
}

/// How the server thread ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stopped {
    /// Every connection closed within [`SHUTDOWN_GRACE`].
    WithinGrace,
    /// Requests still in flight at the end of the grace were cut.
    Aborted,
}

impl Drop for RunningReceiver {
    fn drop(&mut self) {
        // Without a join: dropping must not block; the thread ends on its own.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The server thread: serves until `stopped` fires (or its sender is dropped), then gives
/// requests in flight [`SHUTDOWN_GRACE`] before dropping the runtime cancels them.
fn serve(
    runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    app: Router,
    stopped: oneshot::Receiver<()>,
) -> Stopped {
    runtime.block_on(async move {
        let (graceful, graceful_signal) = oneshot::channel::<()>();
        let mut server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = graceful_signal.await;
                })
                .await
        });
        let _ = stopped.await;
        let _ = graceful.send(());
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => tracing::error!(error = %err, "Webhook receiver stopped"),
            Ok(Err(err)) => tracing::error!(error = %err, "Webhook receiver task failed"),
            Err(_) => {
                tracing::warn!("Webhook receiver did not stop within 5 s, aborting it");
                server.abort();
                return Stopped::Aborted;
            }
        }
        Stopped::WithinGrace
    })
}

struct Shared {
    started: Instant,
    webhooks: Vec<Webhook>,
    tolerance_secs: i64,
    state: Mutex<ReceiverState>,
}

#[derive(Default)]
struct ReceiverState {
    requests: Vec<ReceivedRequest>,
    stats: ReceiverStats,
    accepted_ids: HashSet<String>,
    script: VecDeque<Step>,
    /// Set by each 429: a request before this instant is an early retry.
    retry_not_before: Option<Instant>,
}

/// A script step with its progress.
enum Step {
    RateLimit {
        remaining: u32,
        retry_after_secs: u64,
    },
    Unavailable {
        duration: Duration,
        until: Option<Instant>,
    },
    Status {
        remaining: u32,
        status: StatusCode,
        body: String,
    },
    Delay {
        remaining: u32,
        delay: Duration,
    },
}

impl From<Fault> for Step {
    fn from(fault: Fault) -> Step {
        match fault {
            Fault::RateLimit {
                requests,
                retry_after_secs,
            } => Step::RateLimit {
                remaining: requests,
                retry_after_secs,
            },
            Fault::Unavailable { duration } => Step::Unavailable {
                duration,
                until: None,
            },
            Fault::Status {
                requests,
                status,
                body,
            } => Step::Status {
                remaining: requests,
                status: StatusCode::from_u16(status)
                    .expect("ReceiverConfig::verifiers checked every status"),
                body,
            },
            Fault::Delay { requests, delay } => Step::Delay {
                remaining: requests,
                delay,
            },
        }
    }
}

/// What a verified request is answered.
enum Answer {
    Accept { delay: Option<Duration> },
    RateLimit { retry_after_secs: u64 },
    Unavailable,
    Status { status: StatusCode, body: String },
}

impl Answer {
    fn status(&self) -> StatusCode {
        match self {
            Answer::Accept { .. } => StatusCode::OK,
            Answer::RateLimit { .. } => StatusCode::TOO_MANY_REQUESTS,
            Answer::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Answer::Status { status, .. } => *status,
        }
    }
}

impl ReceiverState {
    /// The answer the script gives a verified request arriving at `now`, advancing the script.
    fn next_answer(&mut self, now: Instant) -> Answer {
        while let Some(step) = self.script.front_mut() {
            match step {
                Step::RateLimit {
                    remaining,
                    retry_after_secs,
                } if *remaining > 0 => {
                    *remaining -= 1;
                    return Answer::RateLimit {
                        retry_after_secs: *retry_after_secs,
                    };
                }
                Step::Unavailable { duration, until } => {
                    let until = *until.get_or_insert(now + *duration);
                    if now < until {
                        return Answer::Unavailable;
                    }
                }
                Step::Status {
                    remaining,
                    status,
                    body,
                } if *remaining > 0 => {
                    *remaining -= 1;
                    return Answer::Status {
                        status: *status,
                        body: body.clone(),
                    };
                }
                Step::Delay { remaining, delay } if *remaining > 0 => {
                    *remaining -= 1;
                    return Answer::Accept {
                        delay: Some(*delay),
                    };
                }
                Step::RateLimit { .. } | Step::Status { .. } | Step::Delay { .. } => {}
            }
            self.script.pop_front();
        }
        Answer::Accept { delay: None }
    }

    /// Counts and stores a request; `accepted_id` is the webhook id of a 2xx answer.
    fn record(&mut self, request: ReceivedRequest, rejected: bool) {
        self.stats.requests += 1;
        if rejected {
            self.stats.rejected += 1;
        } else if request.is_accepted() {
            self.stats.accepted += 1;
            if let Some(id) = &request.webhook_id {
                if self.accepted_ids.insert(id.clone()) {
                    self.stats.distinct_ids += 1;
                } else {
                    self.stats.duplicates += 1;
                }
            }
        } else {
            self.stats.faulted += 1;
        }
        self.requests.push(request);
    }
}

/// A refusal by the checks, before the script.
struct Rejection {
    status: StatusCode,
    verified: bool,
    reason: String,
}

impl Shared {
    /// Runs the signature, idempotency-key and content-type checks.
    fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Rejection> {
        self.verify_signature(headers, body)
            .map_err(|reason| Rejection {
                status: StatusCode::UNAUTHORIZED,
                verified: false,
                reason,
            })?;
        let id = header_text(headers, standardwebhooks::HEADER_WEBHOOK_ID);
        match header_text(headers, IDEMPOTENCY_KEY.as_str()) {
            None => {
                return Err(Rejection {
                    status: StatusCode::BAD_REQUEST,
                    verified: true,
                    reason: "missing Idempotency-Key header".to_owned(),
                });
            }
            Some(key) if Some(key) != id => {
                return Err(Rejection {
                    status: StatusCode::BAD_REQUEST,
                    verified: true,
                    reason: "Idempotency-Key differs from webhook-id".to_owned(),
                });
            }
            Some(_) => {}
        }
        let json_body = header_text(headers, CONTENT_TYPE.as_str()).is_some_and(|value| {
            let media_type = value.split(';').next().unwrap_or_default().trim();
            media_type.eq_ignore_ascii_case("application/json")
        });
        if !json_body {
            return Err(Rejection {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                verified: true,
                reason: "Content-Type is not application/json".to_owned(),
            });
        }
        Ok(())
    }

    /// Verifies with every secret until one matches, then applies the configured tolerance,
    /// which may be tighter than the verifier's own 5 minutes.
    fn verify_signature(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
        let mut first_error = None;
        let verified = self
            .webhooks
            .iter()
            .any(|webhook| match webhook.verify(body, headers) {
                Ok(()) => true,
                Err(err) => {
                    first_error.get_or_insert(err);
                    false
                }
            });
        if !verified {
            return Err(first_error.map_or_else(
                || "no signing secret configured".to_owned(),
                |err| rejection_reason(&err),
            ));
        }
        let timestamp = header_text(headers, standardwebhooks::HEADER_WEBHOOK_TIMESTAMP)
            .and_then(|text| text.parse::<i64>().ok())
            .expect("the verifier accepted the timestamp, so it is an integer");
        let now = unix_now();
        if now.saturating_sub(timestamp) > self.tolerance_secs {
            return Err("timestamp too old".to_owned());
        }
        if timestamp.saturating_sub(now) > self.tolerance_secs {
            return Err("timestamp too far in the future".to_owned());
        }
        Ok(())
    }
}

/// A short reason for a failed verification; none of them quotes the request.
fn rejection_reason(err: &WebhookError) -> String {
    match err {
        WebhookError::MissingHeader(name) => format!("missing webhook-{name} header"),
        WebhookError::InvalidHeader(name) => format!("webhook-{name} header is not text"),
        WebhookError::InvalidTimestamp => "webhook-timestamp is not an integer".to_owned(),
        WebhookError::TimestampTooOldError => "timestamp too old".to_owned(),
        WebhookError::FutureTimestampError => "timestamp too far in the future".to_owned(),
        WebhookError::InvalidSignature => "no signature matches".to_owned(),
        WebhookError::InvalidPayload => "body is not UTF-8".to_owned(),
        WebhookError::InvalidSecret(_) => "invalid signing secret".to_owned(),
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

async fn hook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = Instant::now();
    let checked = shared.check(&headers, &body);
    let webhook_id = header_text(&headers, standardwebhooks::HEADER_WEBHOOK_ID).map(str::to_owned);
    let mut request = ReceivedRequest {
        webhook_id: webhook_id.clone(),
        idempotency_key: header_text(&headers, IDEMPOTENCY_KEY.as_str()).map(str::to_owned),
        timestamp: header_text(&headers, standardwebhooks::HEADER_WEBHOOK_TIMESTAMP)
            .and_then(|text| text.parse().ok()),
        at_ms: u64::try_from(arrived.duration_since(shared.started).as_millis())
            .unwrap_or(u64::MAX),
        status: 0,
        verified: false,
        reason: None,
        body: body.to_vec(),
    };
    let answer = {
        let mut state = lock(&shared.state);
        let early = state
            .retry_not_before
            .is_some_and(|not_before| arrived < not_before);
        if early {
            state.stats.early_retries += 1;
            tracing::warn!(webhook_id = ?webhook_id, "Request sent before Retry-After elapsed");
        }
        match checked {
            Err(rejection) => {
                request.status = rejection.status.as_u16();
                request.verified = rejection.verified;
                request.reason = Some(rejection.reason.clone());
                state.record(request, true);
                Err(rejection)
            }
            Ok(()) => {
                let answer = state.next_answer(arrived);
                if let Answer::RateLimit { retry_after_secs } = answer {
                    // Taken after the request arrived, so a client that waits the announced
                    // seconds after reading the answer is never counted as early.
                    state.retry_not_before =
                        Some(Instant::now() + Duration::from_secs(retry_after_secs));
                }
                request.status = answer.status().as_u16();
                request.verified = true;
                state.record(request, false);
                Ok(answer)
            }
        }
    };
    match answer {
        Err(rejection) => {
            tracing::debug!(webhook_id = ?webhook_id, status = rejection.status.as_u16(), reason = %rejection.reason, "Webhook refused");
            json_response(
                rejection.status,
                &json!({ "ok": false, "error": rejection.reason }),
            )
        }
        Ok(answer) => {
            tracing::debug!(webhook_id = ?webhook_id, status = answer.status().as_u16(), "Webhook answered");
            respond(answer).await
        }
    }
}

async fn respond(answer: Answer) -> Response {
    match answer {
        Answer::Accept { delay } => {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            json_response(StatusCode::OK, &json!({ "ok": true }))
        }
        Answer::RateLimit { retry_after_secs } => {
            let mut response = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({ "ok": false, "error": "rate limited" }),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            response
        }
        Answer::Unavailable => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "ok": false, "error": "unavailable" }),
        ),
        Answer::Status { status, body } => {
            let content_type = if serde_json::from_str::<Json>(&body).is_ok() {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            (
                status,
                [(CONTENT_TYPE, HeaderValue::from_static(content_type))],
                body,
            )
                .into_response()
        }
    }
}

fn json_response(status: StatusCode, body: &Json) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    use super::{
        Fault, FlatsyncBody, ReceiverConfig, ReceiverError, ReceiverStats, RunningReceiver,
        Stopped, sign_request, unix_now,
    };

    // Vector A and B secrets of the Standard Webhooks test suite.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const UNKNOWN_SECRET: &str = "whsec_dW5rbm93bi1zZWNyZXQta2V5LTEyMzQ1Njc4";

    const BODY: &str = r#"{"type":"rows","stream":"contacts-evt_1","kind":"contacts","eventId":"evt_1","seq":0,"part":0,"parts":1,"last":true,"fields":["name"],"receivedAt":"2026-01-02T03:04:05.006Z","rows":[{"id":"rec_1","valid":true,"values":{"name":"Ann"}},{"id":"rec_2","valid":false,"values":{"name":null}}]}"#;

    fn local() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn start(config: ReceiverConfig) -> RunningReceiver {
        RunningReceiver::start(config, local()).expect("the receiver starts")
    }

    fn receiver(script: Vec<Fault>) -> RunningReceiver {
        start(ReceiverConfig {
            script,
            ..ReceiverConfig::new(vec![SECRET.to_owned()])
        })
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("the HTTP client builds")
    }

    struct Reply {
        status: u16,
        headers: HeaderMap,
        body: String,
    }

    async fn post(url: &str, headers: HeaderMap, body: &str) -> Reply {
        let response = client()
            .post(url)
            .headers(headers)
            .body(body.to_owned())
            .send()
            .await
            .expect("the receiver answers");
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.expect("the answer has a body"),
        }
    }

    async fn send_signed(url: &str, id: &str, body: &str) -> Reply {
        let headers = sign_request(SECRET, id, unix_now(), body.as_bytes()).expect("signs");
        post(url, headers, body).await
    }

    #[tokio::test]
    async fn accepts_a_correctly_signed_request() {
        let receiver = receiver(Vec::new());
        assert!(receiver.url().starts_with("http://127.0.0.1:"));
        assert!(receiver.url().ends_with("/hook"));
        let before = unix_now();
        let reply = send_signed(&receiver.url(), "msg_one", BODY).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, r#"{"ok":true}"#);

        let requests = receiver.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.webhook_id.as_deref(), Some("msg_one"));
        assert_eq!(request.idempotency_key.as_deref(), Some("msg_one"));
        assert!(request.timestamp.is_some_and(|ts| ts >= before));
        assert_eq!(request.status, 200);
        assert!(request.verified);
        assert_eq!(request.reason, None);
        assert_eq!(request.body, BODY.as_bytes());
        assert_eq!(
            receiver.stats(),
            ReceiverStats {
                requests: 1,
                accepted: 1,
                distinct_ids: 1,
                ..ReceiverStats::default()
            }
        );
        receiver.shutdown();
    }

    #[tokio::test]
    async fn parses_the_flatsync_body() {
        let receiver = receiver(Vec::new());
        send_signed(&receiver.url(), "msg_body", BODY).await;
        let body: FlatsyncBody = receiver.accepted()[0].flatsync().expect("parses");
        assert_eq!(body.body_type, "rows");
        assert!(!body.is_deletions());
        assert_eq!(body.stream, "contacts-evt_1");
        assert_eq!(body.kind, "contacts");
        assert_eq!(body.event_id, "evt_1");
        assert_eq!(
            (body.seq, body.part, body.parts, body.last),
            (0, 0, 1, true)
        );
        assert_eq!(body.fields, ["name"]);
        assert_eq!(body.row_ids(), ["rec_1", "rec_2"]);
        assert_eq!(body.rows[1].valid, Some(false));

        let deletions = r#"{"type":"deletions","stream":"contacts-deleted-evt_2","kind":"contacts","eventId":"evt_2","seq":3,"part":1,"parts":2,"last":false,"fields":[],"receivedAt":"2026-01-02T03:04:05.006Z","rows":[{"id":"rec_9"}]}"#;
        send_signed(&receiver.url(), "msg_deletions", deletions).await;
        let body = receiver.accepted()[1].flatsync().expect("parses");
        assert!(body.is_deletions());
        assert_eq!((body.seq, body.part, body.parts), (3, 1, 2));
        assert_eq!(body.row_ids(), ["rec_9"]);
        assert_eq!(body.rows[0].values, None);
        receiver.shutdown();
    }

    #[tokio::test]
    async fn rejects_a_tampered_body() {
        let receiver = receiver(Vec::new());
        let headers = sign_request(SECRET, "msg_tamper", unix_now(), BODY.as_bytes()).unwrap();
        let tampered = BODY.replace("Ann", "Eve");
        let reply = post(&receiver.url(), headers, &tampered).await;
        assert_eq!(reply.status, 401);
        assert!(
            reply.body.contains("no signature matches"),
            "{}",
            reply.body
        );

        let request = &receiver.requests()[0];
        assert!(!request.verified);
        assert_eq!(request.status, 401);
        assert_eq!(request.reason.as_deref(), Some("no signature matches"));
        assert_eq!(request.body, tampered.as_bytes());
        let stats = receiver.stats();
        assert_eq!(
            (stats.rejected, stats.accepted, stats.distinct_ids),
            (1, 0, 0)
        );
        receiver.shutdown();
    }

    #[tokio::test]
    async fn rejects_a_wrong_secret_and_a_missing_signature() {
        let receiver = receiver(Vec::new());
        let headers =
            sign_request(UNKNOWN_SECRET, "msg_wrong", unix_now(), BODY.as_bytes()).unwrap();
        assert_eq!(post(&receiver.url(), headers, BODY).await.status, 401);

        let mut headers =
            sign_request(SECRET, "msg_unsigned", unix_now(), BODY.as_bytes()).unwrap();
        headers.remove("webhook-signature");
        let reply = post(&receiver.url(), headers, BODY).await;
        assert_eq!(reply.status, 401);
        assert!(
            reply.body.contains("missing webhook-signature header"),
            "{}",
            reply.body
        );
        assert_eq!(receiver.stats().rejected, 2);
        assert_eq!(receiver.stats().accepted, 0);
        receiver.shutdown();
    }

    #[tokio::test]
    async fn rejects_timestamps_outside_the_tolerance() {
        let receiver = start(ReceiverConfig {
            tolerance: Duration::from_secs(60),
            ..ReceiverConfig::new(vec![SECRET.to_owned()])
        });
        let url = receiver.url();
        let cases = [
            (unix_now() - 120, 401, Some("timestamp too old")),
            (
                unix_now() + 120,
                401,
                Some("timestamp too far in the future"),
            ),
            (unix_now() - 400, 401, Some("timestamp too old")),
            (unix_now() - 30, 200, None),
        ];
        for (index, (timestamp, status, reason)) in cases.into_iter().enumerate() {
            let id = format!("msg_ts_{index}");
            let headers = sign_request(SECRET, &id, timestamp, BODY.as_bytes()).unwrap();
            assert_eq!(
                post(&url, headers, BODY).await.status,
                status,
                "case {index}"
            );
            let request = receiver.requests().pop().expect("recorded");
            assert_eq!(request.reason.as_deref(), reason, "case {index}");
            assert_eq!(request.timestamp, Some(timestamp));
        }
        receiver.shutdown();
    }

    #[tokio::test]
    async fn accepts_any_of_the_rotated_secrets() {
        let receiver = start(ReceiverConfig::new(vec![
            SECRET.to_owned(),
            OTHER_SECRET.to_owned(),
        ]));
        let url = receiver.url();
        for (id, secret) in [("msg_old", SECRET), ("msg_new", OTHER_SECRET)] {
            let headers = sign_request(secret, id, unix_now(), BODY.as_bytes()).unwrap();
            assert_eq!(post(&url, headers, BODY).await.status, 200, "{id}");
        }
        // A sender in the middle of a rotation sends one signature per secret.
        let ts = unix_now();
        let mut headers = sign_request(UNKNOWN_SECRET, "msg_both", ts, BODY.as_bytes()).unwrap();
        let known = sign_request(OTHER_SECRET, "msg_both", ts, BODY.as_bytes()).unwrap();
        let both = format!(
            "{} {}",
            headers["webhook-signature"].to_str().unwrap(),
            known["webhook-signature"].to_str().unwrap()
        );
        headers.insert("webhook-signature", HeaderValue::from_str(&both).unwrap());
        assert_eq!(post(&url, headers, BODY).await.status, 200);

        let headers = sign_request(UNKNOWN_SECRET, "msg_none", ts, BODY.as_bytes()).unwrap();
        assert_eq!(post(&url, headers, BODY).await.status, 401);
        let stats = receiver.stats();
        assert_eq!((stats.accepted, stats.rejected), (3, 1));
        receiver.shutdown();
    }

    #[tokio::test]
    async fn requires_the_idempotency_key_and_json() {
        let receiver = receiver(Vec::new());
        let url = receiver.url();
        let mut headers = sign_request(SECRET, "msg_key", unix_now(), BODY.as_bytes()).unwrap();
        headers.insert("idempotency-key", HeaderValue::from_static("other"));
        let reply = post(&url, headers.clone(), BODY).await;
        assert_eq!(reply.status, 400);
        assert!(reply.body.contains("Idempotency-Key"), "{}", reply.body);

        headers.remove("idempotency-key");
        assert_eq!(post(&url, headers, BODY).await.status, 400);

        let mut headers = sign_request(SECRET, "msg_key", unix_now(), BODY.as_bytes()).unwrap();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        assert_eq!(post(&url, headers, BODY).await.status, 415);

        let requests = receiver.requests();
        assert!(requests.iter().all(|request| request.verified));
        assert_eq!(receiver.stats().rejected, 3);
        assert_eq!(receiver.stats().accepted, 0);
        receiver.shutdown();
    }

    #[tokio::test]
    async fn counts_duplicates_by_webhook_id() {
        let receiver = receiver(Vec::new());
        let url = receiver.url();
        for id in ["msg_a", "msg_b", "msg_a", "msg_a"] {
            assert_eq!(send_signed(&url, id, BODY).await.status, 200);
        }
        let stats = receiver.stats();
        assert_eq!(
            (stats.accepted, stats.distinct_ids, stats.duplicates),
            (4, 2, 2)
        );
        receiver.shutdown();
    }

    #[tokio::test]
    async fn rate_limits_and_counts_early_retries() {
        // An hour of Retry-After: the retry below comes before it elapses however slow the
        // machine.
        let receiver = receiver(vec![Fault::RateLimit {
            requests: 2,
            retry_after_secs: 3600,
        }]);
        let url = receiver.url();
        // Unsigned requests do not use up the script.
        assert_eq!(post(&url, HeaderMap::new(), BODY).await.status, 401);

        let first = send_signed(&url, "msg_rl", BODY).await;
        assert_eq!(first.status, 429);
        assert_eq!(first.headers[RETRY_AFTER], "3600");
        // Straight back: early, and still rate limited (the script has one more 429).
        let second = send_signed(&url, "msg_rl", BODY).await;
        assert_eq!(second.status, 429);
        // The script is used up: accepted, and early all the same.
        assert_eq!(send_signed(&url, "msg_rl", BODY).await.status, 200);
        let stats = receiver.stats();
        assert_eq!(stats.early_retries, 2);
        assert_eq!(
            (
                stats.requests,
                stats.rejected,
                stats.faulted,
                stats.accepted
            ),
            (4, 1, 2, 1)
        );
        let statuses: Vec<u16> = receiver.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [401, 429, 429, 200]);
        receiver.shutdown();
    }

    #[tokio::test]
    async fn a_retry_after_retry_after_is_not_early() {
        let receiver = receiver(vec![Fault::RateLimit {
            requests: 1,
            retry_after_secs: 1,
        }]);
        let url = receiver.url();
        let first = send_signed(&url, "msg_rl", BODY).await;
        assert_eq!(first.status, 429);
        assert_eq!(first.headers[RETRY_AFTER], "1");
        // The whole Retry-After from reading the answer: a lower bound, never early.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(send_signed(&url, "msg_rl", BODY).await.status, 200);
        let stats = receiver.stats();
        assert_eq!(stats.early_retries, 0);
        assert_eq!((stats.faulted, stats.accepted), (1, 1));
        receiver.shutdown();
    }

    #[tokio::test]
    async fn answers_503_while_unavailable() {
        // An hour: every request below falls inside it however slow the machine.
        let receiver = receiver(vec![Fault::Unavailable {
            duration: Duration::from_secs(3600),
        }]);
        let url = receiver.url();
        let first = send_signed(&url, "msg_u1", BODY).await;
        assert_eq!(first.status, 503);
        assert!(first.headers.get(RETRY_AFTER).is_none());
        assert_eq!(send_signed(&url, "msg_u2", BODY).await.status, 503);
        let stats = receiver.stats();
        assert_eq!((stats.faulted, stats.accepted), (2, 0));
        assert_eq!(stats.early_retries, 0);
        receiver.shutdown();
    }

    #[tokio::test]
    async fn accepts_again_once_unavailability_ends() {
        let duration = Duration::from_millis(400);
        let receiver = receiver(vec![Fault::Unavailable { duration }]);
        let url = receiver.url();
        assert_eq!(send_signed(&url, "msg_u1", BODY).await.status, 503);
        // The unavailability started when that request arrived, before its answer was read.
        tokio::time::sleep(duration).await;
        assert_eq!(send_signed(&url, "msg_u1", BODY).await.status, 200);
        assert_eq!(receiver.stats().accepted, 1);
        assert_eq!(receiver.stats().early_retries, 0);
        receiver.shutdown();
    }

    #[tokio::test]
    async fn scripted_status_and_delay() {
        let receiver = receiver(vec![
            Fault::Status {
                requests: 1,
                status: 422,
                body: "row 7 is not acceptable".to_owned(),
            },
            Fault::Delay {
                requests: 1,
                delay: Duration::from_millis(300),
            },
        ]);
        let url = receiver.url();
        let rejected = send_signed(&url, "msg_s1", BODY).await;
        assert_eq!(rejected.status, 422);
        assert_eq!(rejected.body, "row 7 is not acceptable");

        let sent = Instant::now();
        let delayed = send_signed(&url, "msg_s2", BODY).await;
        assert_eq!(delayed.status, 200);
        assert!(sent.elapsed() >= Duration::from_millis(300));

        assert_eq!(send_signed(&url, "msg_s3", BODY).await.status, 200);
        let stats = receiver.stats();
        assert_eq!((stats.faulted, stats.accepted), (1, 2));
        let request = &receiver.requests()[0];
        assert!(request.verified);
        assert_eq!(request.reason, None);
        receiver.shutdown();
    }

    #[test]
    fn refuses_bad_configurations_without_showing_secrets() {
        let refuse = |config: ReceiverConfig| match RunningReceiver::start(config, local()) {
            Ok(_) => panic!("the configuration was accepted"),
            Err(err) => err.to_string(),
        };
        assert!(refuse(ReceiverConfig::default()).contains("at least one signing secret"));
        let message = refuse(ReceiverConfig::new(vec![
            SECRET.to_owned(),
            "whsec_not base64!".to_owned(),
        ]));
        assert!(message.contains("#1"), "{message}");
        assert!(!message.contains("not base64!"), "{message}");
        assert!(refuse(ReceiverConfig::new(vec!["whsec_".to_owned()])).contains("#0"));
        assert!(
            refuse(ReceiverConfig {
                tolerance: Duration::from_secs(301),
                ..ReceiverConfig::new(vec![SECRET.to_owned()])
            })
            .contains("tolerance")
        );
        assert!(
            refuse(ReceiverConfig {
                script: vec![Fault::Status {
                    requests: 1,
                    status: 42,
                    body: String::new(),
                }],
                ..ReceiverConfig::new(vec![SECRET.to_owned()])
            })
            .contains("42")
        );

        let debug = format!("{:?}", ReceiverConfig::new(vec![SECRET.to_owned()]));
        assert!(!debug.contains("MfKQ9r8G"), "{debug}");
        assert!(debug.contains("1 redacted"), "{debug}");
    }

    #[test]
    fn signs_like_the_published_vector() {
        // Standard Webhooks vector A: the helper must produce exactly this signature.
        let headers = sign_request(
            SECRET,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(
            headers["webhook-signature"],
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(headers["webhook-timestamp"], "1614265330");
        assert_eq!(headers["idempotency-key"], "msg_p5jXN8AQM9LWM0D4loKWxJek");
        assert_eq!(headers["content-type"], "application/json");
        assert!(matches!(
            sign_request(SECRET, "msg", 1, &[0xff]),
            Err(ReceiverError::BodyNotUtf8)
        ));
        assert!(matches!(
            sign_request("whsec_%%%", "msg", 1, b"{}"),
            Err(ReceiverError::InvalidSecret { index: 0 })
        ));
    }

    #[tokio::test]
    async fn shuts_down_promptly_with_an_idle_keep_alive_connection() {
        let receiver = receiver(Vec::new());
        let client = client();
        let headers = sign_request(SECRET, "msg_idle", unix_now(), BODY.as_bytes()).unwrap();
        let response = client
            .post(receiver.url())
            .headers(headers)
            .body(BODY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        // The client's pool now holds an idle connection; shutdown must not wait for it,
        // which only the abort at the end of the grace would end.
        assert_eq!(receiver.stop(), Some(Stopped::WithinGrace));
        drop(client);
    }

    #[test]
    fn starts_and_stops_from_synchronous_code() {
        let receiver = receiver(Vec::new());
        let addr = receiver.addr();
        assert!(std::net::TcpStream::connect(addr).is_ok());
        receiver.shutdown();
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
