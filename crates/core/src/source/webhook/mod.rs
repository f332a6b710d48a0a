//! The webhook source: an HTTP endpoint that accepts Flatfile notifications, checks who sent
//! them (`auth`), scrubs credentials out of them and commits them to the inbox
//! before answering 2xx.
//!
//! Order of the checks, so that nothing is read, parsed or stored for a request that cannot
//! be let in: the path (404), draining (503), the headers (401), the body's size (413), the
//! signature over the raw bytes (401), scrubbing and parsing (400, 422), a legacy
//! notification's JWT (401), the event's environment against the credential's (403), then the
//! inbox.

pub(crate) mod auth;
pub(crate) mod carried;
pub(crate) mod commit;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use flatsync_flatfile::{
    CarriedPart, IncomingEvent, ScrubbedEvent, WebhookBodyError, parse_webhook_body,
    scrub_and_parse_webhook_body,
};
use serde_json::{Value, json};

use self::auth::{Gate, Rejection, WebhookAuth};
use self::commit::{InboxQueue, Unstored};
use crate::health::Health;
use crate::state::{InboxWrite, PartOutcome, now_ms};

/// The credentials in force; a reload swaps them for new requests.
pub(crate) type AuthSlot = Arc<RwLock<Arc<WebhookAuth>>>;

pub(crate) struct WebhookState {
    /// `[webhook] path`.
    pub(crate) path: String,
    pub(crate) auth: AuthSlot,
    pub(crate) max_body_bytes: usize,
    /// `[webhook] body_timeout_secs`.
    pub(crate) body_timeout: Duration,
    pub(crate) health: Arc<Health>,
    /// Where accepted events and parts go to be committed, in groups, to the inbox.
    pub(crate) inbox: InboxQueue,
}

/// Seconds a sender is asked to wait before retrying while the daemon stops or cannot store.
const RETRY_AFTER_SECS: &str = "10";

/// Answer to every path that is not served, secret paths with a wrong secret included, so a
/// prober cannot tell a secret path from any other.
const NOT_FOUND: &str = "not found";

fn unavailable(error: &str, path: &str) -> Response {
    let mut response = reject(StatusCode::SERVICE_UNAVAILABLE, error, json!({}), path);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        RETRY_AFTER_SECS.parse().expect("static header"),
    );
    response
}

/// Every path goes to [`receive`], which does its own routing: a secret path is a path like
/// any other until its secret is compared, and unknown paths get the same answer as wrong
/// secrets.
pub(crate) fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .fallback(receive)
        .with_state(state)
        .layer(axum::middleware::map_response(count_answer))
}

/// Counts every answer [`receive`] gives, whichever of its many returns gave it.
async fn count_answer(response: Response) -> Response {
    crate::metrics::webhook_response(response.status());
    response
}

fn reject(status: StatusCode, error: &str, extra: serde_json::Value, path: &str) -> Response {
    let mut body = json!({ "error": error });
    if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    tracing::warn!(
        status = status.as_u16(),
        reason = error,
        path,
        "Webhook rejected"
    );
    (status, axum::Json(body)).into_response()
}

fn refuse(rejection: Rejection, path: &str) -> Response {
    let mut response = reject(rejection.status, rejection.reason, json!({}), path);
    if rejection.bearer_challenge {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("static header"),
        );
    }
    response
}

/// Where a request is going.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// `[webhook] path` itself.
    Base,
    /// `{path}/{secret}`, with the scope of the secret.
    SecretPath(usize),
    /// Anything else: 404.
    Unknown,
}

fn target(path: &str, base: &str, auth: &WebhookAuth) -> Target {
    if path == base {
        return if auth.serves_base_path() {
            Target::Base
        } else {
            Target::Unknown
        };
    }
    let segment = path
        .strip_prefix(base.trim_end_matches('/'))
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|segment| !segment.is_empty() && !segment.contains('/'));
    match segment.and_then(|segment| auth.path_secret_scope(segment)) {
        Some(scope) => Target::SecretPath(scope),
        None => Target::Unknown,
    }
}

/// The request path as logs may show it: segments of `[webhook] path` as they are, every
/// other segment `<redacted>`, since it may be a path secret (right or nearly right).
fn redacted_path(path: &str, base: &str) -> String {
    if path == base {
        // Every segment is the webhook path's: the common case, without splitting.
        return path.to_owned();
    }
    let mut base_segments = base.split('/');
    path.split('/')
        .map(|segment| match base_segments.next() {
            Some(expected) if expected == segment => segment,
            _ => "<redacted>",
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Legacy notifications whose `env` must carry a JWT when a JWT key applies: all of them but
/// Portal 2.0 `batch.upload` bodies (an `event` object and no `scope`), which have no `env`.
fn carries_env(event: &IncomingEvent, body: &Value) -> bool {
    matches!(event, IncomingEvent::Legacy(_))
        && !(body.get("scope").is_none() && body.get("event").is_some_and(Value::is_object))
}

/// Reads the body within `[webhook] body_timeout_secs`; a sender that trickles it is answered
/// 408 and its connection closed.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    state: &WebhookState,
    path: &str,
) -> Result<Bytes, Response> {
    let reading = read_body_unbounded(body, headers, state.max_body_bytes, path);
    match tokio::time::timeout(state.body_timeout, reading).await {
        Ok(read) => read,
        Err(_) => {
            let mut response = reject(
                StatusCode::REQUEST_TIMEOUT,
                "the body was not received in time",
                json!({ "timeout_secs": state.body_timeout.as_secs() }),
                path,
            );
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            Err(response)
        }
    }
}

async fn read_body_unbounded(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    path: &str,
) -> Result<Bytes, Response> {
    let too_large = || {
        reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body too large",
            json!({ "limit_bytes": limit }),
            path,
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            // to_bytes reports the limit through a boxed error whose source is LengthLimitError.
            let over_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.to_string().contains("length limit"));
            if over_limit || e.to_string().contains("length limit") {
                return Err(too_large());
            }
            Err(reject(
                StatusCode::BAD_REQUEST,
                "could not read the body",
                json!({ "message": e.to_string() }),
                path,
            ))
        }
    }
}

fn body_error(error: WebhookBodyError, path: &str) -> Response {
    match error {
        WebhookBodyError::Malformed {
            line,
            column,
            message,
        } => reject(
            StatusCode::BAD_REQUEST,
            "malformed JSON",
            json!({ "line": line, "column": column, "message": message }),
            path,
        ),
        e @ WebhookBodyError::UnknownShape { .. } => reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unrecognised event shape",
            json!({ "message": e.to_string() }),
            path,
        ),
        e @ WebhookBodyError::BadRows { .. } => reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unusable rows",
            json!({ "message": e.to_string() }),
            path,
        ),
    }
}

async fn receive(
    State(state): State<Arc<WebhookState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let auth = Arc::clone(
        &state
            .auth
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let shown_path = redacted_path(uri.path(), &state.path);
    let path_scope = match admit_request(&state, &auth, &method, uri.path(), &shown_path) {
        Ok(path_scope) => path_scope,
        Err(response) => return response,
    };
    let gate = match auth.gate(path_scope, &headers) {
        Ok(gate) => gate,
        Err(rejection) => return refuse(rejection, &shown_path),
    };
    let bytes = match read_body(body, &headers, &state, &shown_path).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let (method_used, request_scope) = match gate {
        Gate::Open => (auth::Method::Open, None),
        Gate::Admitted(method, scope) => (method, Some(scope)),
        Gate::VerifySignature => match auth.verify_signature(&headers, &bytes) {
            Ok((method, scope)) => (method, Some(scope)),
            Err(rejection) => return refuse(rejection, &shown_path),
        },
        Gate::JwtOnly => (auth::Method::Jwt, None),
    };

    // One parse scrubs and classifies the body; the scrub decides what is stored.
    let scrubbed = match scrub_and_parse_webhook_body(&bytes) {
        Ok(scrubbed) => scrubbed,
        Err(e) => return body_error(e, &shown_path),
    };
    if scrubbed.scrubbed.unwrapped || scrubbed.scrubbed.removed > 0 {
        tracing::debug!(
            unwrapped = scrubbed.scrubbed.unwrapped,
            removed_keys = scrubbed.scrubbed.removed,
            "Webhook body scrubbed"
        );
    }
    let admitted = Admitted {
        method: method_used,
        request_scope,
        jwt_only: matches!(gate, Gate::JwtOnly),
    };
    let verified = match verify_event(&auth, admitted, scrubbed, &shown_path) {
        Ok(verified) => verified,
        Err(response) => return response,
    };
    let (event_id, kind, topic) = match verified.event {
        IncomingEvent::Legacy(n) => (n.event_id, "legacy", n.topic),
        IncomingEvent::Platform(e) => (e.id, "platform", e.topic),
        IncomingEvent::Carried(part) => return accept_part(&state, part, &shown_path).await,
    };
    let accepted = Accepted {
        event_id,
        kind,
        topic,
        body: verified.body,
        method: verified.method,
        scope_label: verified.scope_label,
    };
    accept_event(&state, accepted, &shown_path).await
}

/// Refuses a request that is not for the webhook path, not a POST, or comes while the daemon
/// stops, before anything else is looked at. Returns the scope of the secret path it came on.
#[allow(
    clippy::result_large_err,
    reason = "the error is the response to send; it exists only on the refusal path"
)]
fn admit_request(
    state: &WebhookState,
    auth: &WebhookAuth,
    method: &Method,
    path: &str,
    shown_path: &str,
) -> Result<Option<usize>, Response> {
    let path_scope = match target(path, &state.path, auth) {
        Target::Base => None,
        Target::SecretPath(scope) => Some(scope),
        Target::Unknown => {
            // Under the webhook path it is most likely a sender with a wrong secret, which an
            // operator wants to see; elsewhere it is a scanner, which they do not.
            if shown_path.starts_with(state.path.trim_end_matches('/')) {
                return Err(reject(
                    StatusCode::NOT_FOUND,
                    NOT_FOUND,
                    json!({}),
                    shown_path,
                ));
            }
            tracing::debug!(path = %shown_path, "Webhook rejected: unknown path");
            return Err((
                StatusCode::NOT_FOUND,
                axum::Json(json!({ "error": NOT_FOUND })),
            )
                .into_response());
        }
    };
    if *method != Method::POST {
        // Health checkers and browsers GET the path; not worth a warning each time.
        tracing::debug!(method = %method, path = %shown_path, "Webhook rejected: not a POST");
        let mut response = (
            StatusCode::METHOD_NOT_ALLOWED,
            axum::Json(json!({ "error": "only POST is accepted" })),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, "POST".parse().expect("static header"));
        return Err(response);
    }
    if state.health.is_draining() {
        // Refused before reading the body: nothing is accepted that a stopping daemon might not
        // commit, and the sender's retry reaches the next instance.
        return Err(unavailable("flatsync is stopping; retry later", shown_path));
    }
    Ok(path_scope)
}

/// How the request itself was let in, before its body was looked at.
struct Admitted {
    method: auth::Method,
    /// The scope the request's credential admits, when it had one.
    request_scope: Option<usize>,
    /// Only a legacy notification with a valid `env` JWT may be let in.
    jwt_only: bool,
}

/// An event whose sender is proven for its environment.
struct Verified {
    event: IncomingEvent,
    /// The body to store: scrubbed, and for a legacy notification with a JWT, with the JWT's
    /// verified claims as its `env`.
    body: Vec<u8>,
    method: auth::Method,
    scope_label: String,
}

/// Takes the scrubbed body's event and proves the sender may send it: a legacy
/// notification's `env` JWT is verified (its claims replace `env`), and every scope that let
/// the request in must admit the event's environment.
#[allow(
    clippy::result_large_err,
    reason = "the error is the response to send; it exists only on the refusal path"
)]
fn verify_event(
    auth: &WebhookAuth,
    admitted: Admitted,
    scrubbed: ScrubbedEvent,
    shown_path: &str,
) -> Result<Verified, Response> {
    let Admitted {
        method: mut method_used,
        request_scope,
        jwt_only,
    } = admitted;
    let ScrubbedEvent {
        scrubbed,
        mut value,
        event,
    } = scrubbed;
    let mut stored = scrubbed.body;
    let mut event = event.map_err(|e| body_error(e, shown_path))?;
    let mut jwt_scope = None;
    if matches!(event, IncomingEvent::Legacy(_)) && !auth.is_open() && carries_env(&event, &value) {
        match auth.verify_legacy_env(&value, request_scope, event.environment_id()) {
            Ok(None) => {}
            Ok(Some((claims, scope))) => {
                // Only verified claims reach route filters: the sender's own `env` (and
                // the JWT string in it) is not stored.
                value["env"] = Value::Object(claims);
                stored = serde_json::to_vec(&value).expect("a JSON value serialises");
                event = parse_webhook_body(&stored).map_err(|e| body_error(e, shown_path))?;
                jwt_scope = Some(scope);
                if request_scope.is_none() {
                    method_used = auth::Method::Jwt;
                }
            }
            Err(rejection) => return Err(refuse(rejection, shown_path)),
        }
    }
    if jwt_only && jwt_scope.is_none() {
        return Err(refuse(
            Rejection {
                status: StatusCode::UNAUTHORIZED,
                reason: "missing credentials: only legacy notifications with a valid env JWT \
                         are admitted",
                bearer_challenge: false,
            },
            shown_path,
        ));
    }
    for scope in [request_scope, jwt_scope].into_iter().flatten() {
        if !auth.scope_admits(scope, event.environment_id()) {
            return Err(reject(
                StatusCode::FORBIDDEN,
                "the credential does not admit events of this environment",
                json!({ "environmentId": event.environment_id() }),
                shown_path,
            ));
        }
    }
    let scope_label = request_scope
        .or(jwt_scope)
        .map_or("*", |scope| auth.scope(scope).label())
        .to_owned();
    Ok(Verified {
        event,
        body: stored,
        method: method_used,
        scope_label,
    })
}

/// A verified event to commit to the inbox.
struct Accepted {
    event_id: String,
    kind: &'static str,
    topic: String,
    body: Vec<u8>,
    method: auth::Method,
    scope_label: String,
}

/// Commits the event to the inbox before answering: 200 once it is stored (or was before),
/// 503 when it could not be.
async fn accept_event(state: &WebhookState, accepted: Accepted, shown_path: &str) -> Response {
    let Accepted {
        event_id,
        kind,
        topic,
        body,
        method: method_used,
        scope_label,
    } = accepted;
    let write = InboxWrite::Event {
        event_id: event_id.clone(),
        kind,
        topic: topic.clone(),
        body,
        received_at_ms: now_ms(),
    };
    match state.inbox.event(write).await {
        Ok(true) => {
            tracing::debug!(
                event_id = %event_id,
                topic = %topic,
                kind,
                auth = method_used.as_str(),
                scope = %scope_label,
                "Webhook accepted"
            );
            crate::metrics::event_received("webhook", &topic);
            event_answer("accepted", &event_id)
        }
        Ok(false) => {
            tracing::debug!(event_id = %event_id, topic = %topic, "Webhook repeated, already accepted");
            event_answer("duplicate", &event_id)
        }
        Err(Unstored::Busy) => {
            tracing::warn!(event_id = %event_id, "Webhook refused: the inbox is busy");
            unavailable("the inbox is busy; retry later", shown_path)
        }
        Err(Unstored::Failed(e)) => {
            tracing::error!(error = %e, event_id = %event_id, "Could not store webhook");
            unavailable("could not store the event; retry later", shown_path)
        }
    }
}

/// The 200 answer to an event: `{"status":…,"eventId":…}`, the bytes `axum::Json` of the
/// `json!` object would give, written without building the object.
fn event_answer(status: &'static str, event_id: &str) -> Response {
    let mut body = Vec::with_capacity(40 + event_id.len());
    body.extend_from_slice(b"{\"status\":\"");
    body.extend_from_slice(status.as_bytes());
    body.extend_from_slice(b"\",\"eventId\":");
    // Escaped as serde_json escapes any string; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut body, event_id);
    body.push(b'}');
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Stores one part of an upload whose rows travel in the bodies, before answering 2xx; the
/// part that completes the upload also puts its event into the inbox.
async fn accept_part(state: &WebhookState, part: CarriedPart, path: &str) -> Response {
    let upload = part.upload.clone();
    let position = part.position;
    let rows = part.rows;
    let topic = part.origin.topic();
    match state.inbox.part(carried::part_write(part)).await {
        Ok(PartOutcome::Stored {
            received,
            expected,
            completed,
        }) => {
            tracing::info!(
                upload = %upload,
                part = ?position,
                rows,
                received,
                expected,
                "Upload part accepted"
            );
            if let Some(event_id) = &completed {
                crate::metrics::event_received("webhook", topic);
                tracing::info!(event_id = %event_id, parts = received, "Upload complete");
            }
            (
                StatusCode::OK,
                axum::Json(json!({
                    "status": "accepted",
                    "upload": upload,
                    "partsReceived": received,
                    "partsExpected": expected,
                    "eventId": completed,
                })),
            )
                .into_response()
        }
        Ok(PartOutcome::Duplicate) => {
            tracing::info!(upload = %upload, part = ?position, "Upload part repeated, already accepted");
            (
                StatusCode::OK,
                axum::Json(json!({ "status": "duplicate", "upload": upload })),
            )
                .into_response()
        }
        Ok(PartOutcome::Refused(reason)) => reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "inconsistent upload part",
            json!({ "message": reason }),
            path,
        ),
        Err(Unstored::Busy) => {
            tracing::warn!(upload = %upload, "Upload part refused: the inbox is busy");
            unavailable("the inbox is busy; retry later", path)
        }
        Err(Unstored::Failed(e)) => {
            tracing::error!(error = %e, upload = %upload, "Could not store upload part");
            unavailable("could not store the upload part; retry later", path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_paths_never_show_a_segment_beyond_the_webhook_path() {
        let base = "/flatfile/webhook";
        assert_eq!(redacted_path(base, base), base);
        assert_eq!(
            redacted_path("/flatfile/webhook/s3cr3t-s3cr3t-s3cr3t", base),
            "/flatfile/webhook/<redacted>"
        );
        assert_eq!(
            redacted_path("/flatfile/hook/abc", base),
            "/flatfile/<redacted>/<redacted>"
        );
        assert_eq!(redacted_path("/x", "/"), "/<redacted>");
    }

    #[tokio::test]
    async fn an_event_answer_is_what_the_json_object_gave() {
        for (status, event_id) in [
            ("accepted", "us_evt_1"),
            ("duplicate", "legacy-0123"),
            ("accepted", "quote\" back\\ slash \u{1} é \u{2028}"),
            ("duplicate", ""),
        ] {
            let fast = event_answer(status, event_id);
            let slow = (
                StatusCode::OK,
                axum::Json(json!({ "status": status, "eventId": event_id })),
            )
                .into_response();
            assert_eq!(fast.status(), slow.status());
            assert_eq!(fast.headers(), slow.headers());
            let fast = axum::body::to_bytes(fast.into_body(), usize::MAX).await;
            let slow = axum::body::to_bytes(slow.into_body(), usize::MAX).await;
            assert_eq!(fast.expect("body"), slow.expect("body"), "{event_id}");
        }
    }

    fn auth(text: &str) -> WebhookAuth {
        let mut config =
            crate::Config::parse(text, std::path::Path::new("/c.toml")).expect("valid config");
        let webhook = &mut config.webhook.as_mut().expect("[webhook]").auth;
        // The tests give values in code; the config only says which kinds are set.
        for source in [
            &mut webhook.token,
            &mut webhook.path_secret,
            &mut webhook.legacy_jwt_secret,
        ] {
            if let Some(crate::SecretSource::Env(name)) = source {
                *source = Some(crate::SecretSource::Value(crate::Secret::new(format!(
                    "{name}-0123456789abcdef"
                ))));
            }
        }
        WebhookAuth::from_config(&config).expect("credentials")
    }

    #[test]
    fn secret_paths_route_like_unknown_paths_unless_the_secret_matches() {
        let base = "/flatfile/webhook";
        let only_path = auth("[webhook]\npath_secret_env = \"P\"\n");
        let secret = "/flatfile/webhook/P-0123456789abcdef";
        assert_eq!(target(secret, base, &only_path), Target::SecretPath(0));
        assert_eq!(target(base, base, &only_path), Target::Unknown);
        for other in [
            "/flatfile/webhook/P-0123456789abcdeF",
            "/flatfile/webhook/P-0123456789abcdef/",
            "/flatfile/webhook/P-0123456789abcdef/x",
            "/flatfile/webhook/",
            "/flatfile/webhookP-0123456789abcdef",
            "/P-0123456789abcdef",
        ] {
            assert_eq!(target(other, base, &only_path), Target::Unknown, "{other}");
        }
        let with_token = auth("[webhook]\npath_secret_env = \"P\"\ntoken_env = \"T\"\n");
        assert_eq!(target(base, base, &with_token), Target::Base);
        assert_eq!(target(secret, base, &with_token), Target::SecretPath(0));
        let open = auth("[webhook]\n");
        assert_eq!(target(base, base, &open), Target::Base);
        assert_eq!(target(secret, base, &open), Target::Unknown);
        let jwt_only = auth("[webhook]\nlegacy_jwt_secret_env = \"J\"\n");
        assert_eq!(target(base, base, &jwt_only), Target::Base);
        // A base path with a trailing slash still takes one segment after it.
        assert_eq!(
            target("/hook/P-0123456789abcdef", "/hook/", &only_path),
            Target::SecretPath(0)
        );
    }

    #[test]
    fn only_portal_3_style_notifications_carry_an_env_jwt() {
        let check = |body: serde_json::Value| {
            let event = parse_webhook_body(body.to_string().as_bytes()).expect("parses");
            carries_env(&event, &body)
        };
        assert!(check(json!({ "env": {}, "scope": { "batchId": "b" } })));
        assert!(check(json!({ "type": "recordStatusModified", "env": {} })));
        assert!(!check(json!({
            "event": { "type": "batch.upload", "id": "e" },
            "data": { "meta": { "batch": { "id": "b" } }, "validRows": [] }
        })));
        assert!(!check(
            json!({ "id": "us_evt_1", "topic": "job:ready", "env": {} })
        ));
    }
}
