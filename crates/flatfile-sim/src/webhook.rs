//! Webhook bodies as Flatfile sends them, and a small sender for them.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

use crate::generate::{self, ACCOUNT_ID, ACTOR_ID, ENVIRONMENT_ID, SPACE_ID};
use crate::{SimError, clock};

/// The legacy environment id of the simulator's legacy notifications (a UUID, as the legacy
/// dashboard's).
pub(crate) const LEGACY_ENVIRONMENT_ID: &str = "00000000-0000-4000-8000-000000000002";

/// The Portal 3.0 "Import submitted" notification for a legacy batch of `rows` rows.
///
/// `validRows`/`invalidRows` match what the simulator serves for a batch of that size.
pub fn legacy_webhook_body(batch_id: &str, event_id: &str, rows: u64) -> Value {
    let invalid = generate::invalid_rows(rows);
    json!({
        "env": { "customerId": "cus_sim" },
        "scope": {
            "eventId": event_id,
            "team": { "id": 1, "name": "flatfile-sim" },
            "company": { "id": "1", "name": "Simulated Company" },
            "endUser": { "id": "sim-user", "email": "demo@example.com", "name": "Demo User" },
            "embedId": "00000000-0000-4000-8000-000000000001",
            "environmentId": LEGACY_ENVIRONMENT_ID,
            "teamId": 1,
            "batchId": batch_id,
        },
        "type": "portalImportSubmitted",
        "payload": {
            "portalImportSubmitted": {
                "totalRows": rows,
                "validRows": rows - invalid,
                "invalidRows": invalid,
            }
        }
    })
}

/// The Platform `job:ready` event of a workbook submit action (`workbook:submitActionFg`).
pub fn submit_event_body(event_id: &str, workbook_id: &str, job_id: &str) -> Value {
    let now = clock::now_ms();
    json!({
        "id": event_id,
        "topic": "job:ready",
        "domain": "job",
        "context": {
            "accountId": ACCOUNT_ID,
            "environmentId": ENVIRONMENT_ID,
            "spaceId": SPACE_ID,
            "workbookId": workbook_id,
            "jobId": job_id,
            "actorId": ACTOR_ID,
            "namespaces": ["space:portal"],
        },
        "payload": {
            "job": "workbook:submitActionFg",
            "domain": "workbook",
            "operation": "submitActionFg",
            "status": "ready",
            "isPart": false,
            "input": {},
        },
        "attributes": { "targetUpdatedAt": clock::iso_millis(now.saturating_sub(100)) },
        "createdAt": clock::iso_millis(now),
        "callbackUrl": "",
        "dataUrl": "",
        "namespaces": ["space:portal"],
        "origin": { "id": job_id },
    })
}

/// What `@flatfile/plugin-webhook-event-forwarder` POSTs for the Platform event `event`: the
/// JSON of the listener's `FlatfileEvent` instance, which is the raw event as `src` beside the
/// fields the class copies from it (`topic`, `domain`, `context`, `payload`, `target` or `""`,
/// `origin` or `{}`, `action` = `context.actionName` or `""`, `namespace` = `namespaces` or `[]`,
/// `createdAt` when set), its empty `cache` (`{"eventCache": {}}`: an `EventCache` holding an
/// empty `Map`) and `afterAllCallbacks` (`{}`), and the `_accessToken` and `_apiUrl` (with one
/// trailing slash) of its client: the bearer token travels in the body. There is no top-level
/// `id`: the class declares the field but never assigns it.
///
/// Facts from FlatFilers/flatfile-core-libraries,
/// `packages/listener/src/events/{flatfile.event,authenticated.client,cache}.ts`.
pub fn forwarded_event_body(event: &Value, access_token: &str, api_url: &str) -> Value {
    // `a || b` in the class: a falsy value (absent, null, "") gives the fallback.
    let or = |key: &str, fallback: Value| {
        event
            .get(key)
            .filter(|value| !value.is_null() && value.as_str() != Some(""))
            .cloned()
            .unwrap_or(fallback)
    };
    let mut body = serde_json::Map::new();
    body.insert("_accessToken".to_owned(), json!(access_token));
    body.insert(
        "_apiUrl".to_owned(),
        json!(format!("{}/", api_url.trim_end_matches('/'))),
    );
    body.insert("src".to_owned(), event.clone());
    body.insert("afterAllCallbacks".to_owned(), json!({}));
    body.insert("cache".to_owned(), json!({ "eventCache": {} }));
    // Copied as they are: JSON.stringify leaves out what the event does not have (undefined).
    for key in ["domain", "topic", "context", "payload"] {
        if let Some(value) = event.get(key) {
            body.insert(key.to_owned(), value.clone());
        }
    }
    body.insert("target".to_owned(), or("target", json!("")));
    body.insert("origin".to_owned(), or("origin", json!({})));
    let action = event
        .pointer("/context/actionName")
        .filter(|name| !name.is_null() && name.as_str() != Some(""))
        .cloned()
        .unwrap_or_else(|| json!(""));
    body.insert("action".to_owned(), action);
    body.insert("namespace".to_owned(), or("namespaces", json!([])));
    let created_at = or("createdAt", Value::Null);
    if !created_at.is_null() {
        body.insert("createdAt".to_owned(), created_at);
    }
    Value::Object(body)
}

/// The answer to a webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookReply {
    /// HTTP status code.
    pub status: u16,
    /// Response body, decoded as UTF-8 with replacement characters.
    pub body: String,
}

/// POSTs `body` as JSON to `url` and returns the HTTP status.
///
/// Proxy settings of the environment are ignored: the receiver is a local daemon.
pub async fn post_webhook(
    url: &str,
    bearer_token: Option<&str>,
    body: &Value,
) -> Result<u16, SimError> {
    send_webhook(url, bearer_token, body)
        .await
        .map(|reply| reply.status)
}

/// Like [`post_webhook`], but also returns the response body.
pub async fn send_webhook(
    url: &str,
    bearer_token: Option<&str>,
    body: &Value,
) -> Result<WebhookReply, SimError> {
    let target = reqwest::Url::parse(url).map_err(|_| SimError::InvalidUrl)?;
    let mut shown = target.clone();
    shown.set_query(None);
    // Credentials in the URL must not reach error messages either.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let shown = shown.to_string();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("flatfile-sim/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(SimError::Client)?;
    let mut request = client
        .post(target)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(serde_json::to_vec(body).expect("a serde_json::Value always serializes"));
    if let Some(token) = bearer_token {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| SimError::InvalidToken)?;
        value.set_sensitive(true);
        request = request.header(AUTHORIZATION, value);
    }
    let failed = |source: reqwest::Error| SimError::Request {
        url: shown.clone(),
        source: source.without_url(),
    };
    let response = request.send().await.map_err(failed)?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(failed)?;
    Ok(WebhookReply {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}
