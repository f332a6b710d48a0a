//! Scrubbing of event bodies before they are stored: credentials out, row data untouched.
//!
//! `@flatfile/plugin-webhook-event-forwarder` posts `JSON.stringify` of the listener's event
//! object, which carries the listener's API token (`_accessToken`) and API URL next to the raw
//! Flatfile event (`src`). Whatever is stored in the state database is kept in its file and WAL
//! and shown by `flatsync events show`, so a token must be dropped before the body is stored.
//!
//! [`scrub_webhook_body`] is pure and total: JSON in, compact JSON out, or the same
//! [`WebhookBodyError::Malformed`] that [`crate::parse_webhook_body`] would report.

use serde_json::{Map, Value};

use crate::WebhookBodyError;
use crate::webhook::{egress_event, is_egress, malformed};

/// Keys that hold credentials, removed at any depth of an event's envelope (compared
/// case-insensitively). Row data is never searched: see [`ROW_DATA_LOCATIONS`].
pub const CREDENTIAL_KEYS: [&str; 14] = [
    "_accessToken",
    "accessToken",
    "access_token",
    "_apiUrl",
    "apiKey",
    "api_key",
    "secretKey",
    "secret_key",
    "x-api-key",
    "authorization",
    "password",
    "privateKey",
    "private_key",
    "bearerToken",
];

/// Where a body carries the user's rows, left byte-for-byte alone by the scrubber (a column
/// may well be called `password`), as paths from the body's root; `*` is any array index.
pub const ROW_DATA_LOCATIONS: [&str; 5] = [
    // Portal 2.0 `batch.upload` bodies.
    "data.validRows",
    "data.invalidRows",
    // Batches posted by another flatsync's http-forward sink (`"type": "rows" | "deletions"`).
    "rows",
    // `@flatfile/plugin-webhook-egress` bodies, and http-forward's `flatfile-egress` format.
    "workbook.sheets.*.records",
    "workbook.sheets.*.deletedRecords",
];

/// Whether `key` is one of [`CREDENTIAL_KEYS`], ignoring ASCII case.
pub fn is_credential_key(key: &str) -> bool {
    CREDENTIAL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key))
}

/// A scrubbed body and what was done to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubbedBody {
    /// The body to store and parse: compact JSON.
    pub body: Vec<u8>,
    /// The body was a forwarded listener event and is now the raw Flatfile event it wrapped.
    pub unwrapped: bool,
    /// How many credential keys were removed (the wrapper's own keys not counted).
    pub removed: usize,
}

/// Scrubs a webhook (or polled) body: a forwarded listener event is reduced to the raw event
/// it wraps (`src`), and [`CREDENTIAL_KEYS`] are removed everywhere except in row data.
///
/// A body that is not JSON is refused with the error [`crate::parse_webhook_body`] gives for
/// it; JSON that is not an object is returned re-serialised, for the parser to refuse.
pub fn scrub_webhook_body(body: &[u8]) -> Result<ScrubbedBody, WebhookBodyError> {
    let value: Value = serde_json::from_slice(body).map_err(malformed)?;
    let (value, unwrapped, removed) = scrub_value(value);
    let body = serde_json::to_vec(&value).expect("a JSON value always serialises");
    Ok(ScrubbedBody {
        body,
        unwrapped,
        removed,
    })
}

/// A webhook body scrubbed and classified from one parse of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrubbedEvent {
    /// What [`scrub_webhook_body`] gives for the body: the bytes to store.
    pub scrubbed: ScrubbedBody,
    /// The stored bytes as JSON: what `serde_json::from_slice(&scrubbed.body)` gives.
    pub value: Value,
    /// What [`crate::parse_webhook_body`] gives for the stored bytes.
    pub event: Result<crate::IncomingEvent, WebhookBodyError>,
}

/// [`scrub_webhook_body`], then [`crate::parse_webhook_body`] of the scrubbed bytes, with one
/// JSON parse instead of two: the scrubbed value is classified as it is, since serialising
/// and reading it again gives it back unchanged (`float_roundtrip`, `preserve_order`). The
/// scrub stays the definition of what is stored.
pub fn scrub_and_parse_webhook_body(body: &[u8]) -> Result<ScrubbedEvent, WebhookBodyError> {
    let value: Value = serde_json::from_slice(body).map_err(malformed)?;
    let (value, unwrapped, removed) = scrub_value(value);
    let body = serde_json::to_vec(&value).expect("a JSON value always serialises");
    let event = crate::webhook::classify(&value, &body);
    Ok(ScrubbedEvent {
        scrubbed: ScrubbedBody {
            body,
            unwrapped,
            removed,
        },
        value,
        event,
    })
}

/// [`scrub_webhook_body`] on a parsed value: returns the scrubbed value, whether a forwarded
/// event was unwrapped, and how many credential keys were removed.
pub fn scrub_value(value: Value) -> (Value, bool, usize) {
    let (mut value, unwrapped) = match value {
        Value::Object(mut object) if is_forwarded_event(&object) => {
            match object.remove("src") {
                Some(src) => (src, true),
                // is_forwarded_event saw `src`; this arm only keeps the match total.
                None => (Value::Object(object), false),
            }
        }
        other => (other, false),
    };
    let exempt_rows = matches!(
        value.get("type").and_then(Value::as_str),
        Some("rows" | "deletions")
    );
    let mut removed = 0;
    scrub_in_place(&mut value, Place::Root, exempt_rows, &mut removed);
    // An egress body is a workbook with its first page of records; flatsync keeps the event it
    // stands for and reads the records from the API.
    let value = match &value {
        Value::Object(object) if is_egress(object) => {
            let bytes = serde_json::to_vec(&value).expect("a JSON value always serialises");
            egress_event(object, &bytes).unwrap_or(value)
        }
        _ => value,
    };
    (value, unwrapped, removed)
}

/// A listener event as the forwarder serialises it: no `id` of its own (the class does not
/// set one), and the raw event, which has an `id` and a `topic`, under `src`.
fn is_forwarded_event(object: &Map<String, Value>) -> bool {
    if object.get("id").is_some_and(Value::is_string) {
        return false;
    }
    object
        .get("src")
        .and_then(Value::as_object)
        .is_some_and(|src| {
            src.get("id").is_some_and(Value::is_string)
                && src.get("topic").is_some_and(Value::is_string)
        })
}

/// Where the walk is, as far as [`ROW_DATA_LOCATIONS`] care: a prefix of one of them, or
/// anywhere else.
#[derive(Clone, Copy)]
enum Place {
    Root,
    Data,
    Workbook,
    Sheets,
    Sheet,
    Elsewhere,
}

impl Place {
    /// The place of `key` inside this place; `None` when that child is row data.
    fn key(self, key: &str, exempt_rows: bool) -> Option<Place> {
        match (self, key) {
            (Place::Root, "data") => Some(Place::Data),
            (Place::Root, "workbook") => Some(Place::Workbook),
            (Place::Root, "rows") if exempt_rows => None,
            (Place::Data, "validRows" | "invalidRows") => None,
            (Place::Workbook, "sheets") => Some(Place::Sheets),
            (Place::Sheet, "records" | "deletedRecords") => None,
            _ => Some(Place::Elsewhere),
        }
    }

    /// The place of an item of an array at this place.
    fn item(self) -> Place {
        match self {
            Place::Sheets => Place::Sheet,
            _ => Place::Elsewhere,
        }
    }
}

fn scrub_in_place(value: &mut Value, place: Place, exempt_rows: bool, removed: &mut usize) {
    match value {
        Value::Object(map) => {
            let before = map.len();
            map.retain(|key, _| !is_credential_key(key));
            *removed += before - map.len();
            for (key, child) in map.iter_mut() {
                if let Some(inner) = place.key(key, exempt_rows) {
                    scrub_in_place(child, inner, exempt_rows, removed);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                scrub_in_place(item, place.item(), exempt_rows, removed);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{IncomingEvent, parse_webhook_body};

    fn scrub_json(value: &Value) -> Value {
        let scrubbed = scrub_webhook_body(value.to_string().as_bytes()).expect("JSON scrubs");
        serde_json::from_slice(&scrubbed.body).expect("the scrubbed body is JSON")
    }

    /// A body shaped the way the forwarder builds it: `JSON.stringify` of a listener event.
    fn forwarded(raw_event: &Value, token: &str) -> Value {
        json!({
            "src": raw_event,
            "topic": raw_event["topic"],
            "domain": raw_event["domain"],
            "context": raw_event["context"],
            "payload": raw_event["payload"],
            "target": "",
            "origin": {},
            "action": "",
            "namespace": ["space:portal"],
            "createdAt": raw_event["createdAt"],
            "cache": { "cache": {} },
            "afterAllCallbacks": {},
            "_accessToken": token,
            "_apiUrl": "https://platform.flatfile.com/api",
        })
    }

    fn raw_event() -> Value {
        serde_json::from_slice(include_bytes!("../testdata/event-records-created.json"))
            .expect("fixture is JSON")
    }

    #[test]
    fn a_forwarded_event_becomes_the_raw_event_without_the_token() {
        let raw = raw_event();
        let body = forwarded(&raw, "sk_forwarder_TOKEN_1234");
        let text = body.to_string();
        let scrubbed = scrub_webhook_body(text.as_bytes()).expect("scrubs");
        assert!(scrubbed.unwrapped, "the wrapper should be dropped");
        let stored = String::from_utf8(scrubbed.body.clone()).expect("UTF-8");
        assert!(!stored.contains("sk_forwarder_TOKEN_1234"), "{stored}");
        assert!(!stored.contains("_apiUrl"), "{stored}");
        assert_eq!(
            serde_json::from_str::<Value>(&stored).expect("JSON"),
            raw,
            "the stored body is exactly the raw event"
        );
        // The event processed is the one the wrapper carried.
        assert_eq!(
            parse_webhook_body(&scrubbed.body),
            parse_webhook_body(text.as_bytes())
        );
    }

    #[test]
    fn a_body_with_its_own_id_is_not_unwrapped() {
        let body =
            json!({"id": "us_evt_1", "topic": "job:ready", "src": {"id": "x", "topic": "y"}});
        let scrubbed = scrub_webhook_body(body.to_string().as_bytes()).expect("scrubs");
        assert!(!scrubbed.unwrapped);
        assert_eq!(
            serde_json::from_slice::<Value>(&scrubbed.body).expect("JSON"),
            body
        );
    }

    #[test]
    fn credential_keys_go_at_any_depth_whatever_their_case() {
        let body = json!({
            "id": "us_evt_1",
            "topic": "job:ready",
            "Authorization": "Bearer abc",
            "context": { "environmentId": "us_env_1", "X-API-KEY": "k", "accessToken": "t" },
            "payload": {
                "job": "workbook:submitActionFg",
                "input": [ { "apiKey": "k1", "keep": 1 }, { "nested": { "PASSWORD": "p", "private_key": "pk" } } ],
                "secret_key": "s", "SecretKey": "s2", "bearerToken": "b", "access_token": "a",
                "privateKey": "p2", "api_key": "k2", "_accessToken": "t2", "_apiUrl": "u"
            }
        });
        let scrubbed = scrub_webhook_body(body.to_string().as_bytes()).expect("scrubs");
        assert_eq!(
            scrubbed.removed,
            14,
            "{}",
            String::from_utf8_lossy(&scrubbed.body)
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&scrubbed.body).expect("JSON"),
            json!({
                "id": "us_evt_1",
                "topic": "job:ready",
                "context": { "environmentId": "us_env_1" },
                "payload": {
                    "job": "workbook:submitActionFg",
                    "input": [ { "keep": 1 }, { "nested": {} } ]
                }
            })
        );
    }

    #[test]
    fn the_readme_lists_every_credential_key() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .expect("README.md is readable");
        let section = readme
            .split("**What is stored.**")
            .nth(1)
            .expect("README has a 'What is stored.' paragraph");
        let paragraph = section.split("\n\n").next().unwrap_or_default();
        for key in CREDENTIAL_KEYS {
            assert!(
                paragraph.contains(&format!("`{key}`")),
                "README's 'What is stored.' paragraph does not list `{key}`"
            );
        }
    }

    #[test]
    fn every_listed_key_is_recognised_in_any_case() {
        for key in CREDENTIAL_KEYS {
            assert!(is_credential_key(key), "{key}");
            assert!(is_credential_key(&key.to_ascii_uppercase()), "{key}");
        }
        for key in [
            "token",
            "id",
            "apiUrl",
            "passwords",
            "environmentId",
            "secret",
        ] {
            assert!(!is_credential_key(key), "{key} is not a credential key");
        }
    }

    #[test]
    fn portal_2_rows_are_user_data_and_stay_as_sent() {
        let rows = json!([
            { "email": "a@example.com", "password": "hunter2", "apiKey": "user-data" },
            { "Authorization": "a cell", "nested": { "accessToken": "cell" } }
        ]);
        let body = json!({
            "event": { "type": "batch.upload", "id": "b-1", "sequence": { "count": 1, "index": 1 } },
            "data": {
                "meta": { "batch": { "id": "batch-1" }, "apiKey": "envelope secret" },
                "validRows": rows,
                "invalidRows": rows,
                "password": "envelope secret"
            }
        });
        let scrubbed = scrub_json(&body);
        assert_eq!(scrubbed["data"]["validRows"], rows);
        assert_eq!(scrubbed["data"]["invalidRows"], rows);
        assert!(
            scrubbed["data"]["meta"].get("apiKey").is_none(),
            "{scrubbed}"
        );
        assert!(scrubbed["data"].get("password").is_none(), "{scrubbed}");
        let reparsed = parse_webhook_body(scrubbed.to_string().as_bytes()).expect("parses");
        assert_eq!(reparsed.id(), "batch-1", "an upload is known by its batch");
    }

    #[test]
    fn http_forward_and_egress_rows_stay_as_sent() {
        let rows = json!([{ "id": "us_rc_1", "valid": true, "values": { "password": "x", "apiKey": "y" } }]);
        for kind in ["rows", "deletions"] {
            let body = json!({ "type": kind, "stream": "s", "seq": 0, "rows": rows, "authorization": "z" });
            let scrubbed = scrub_json(&body);
            assert_eq!(scrubbed["rows"], rows, "{kind}");
            assert!(scrubbed.get("authorization").is_none(), "{scrubbed}");
        }
        // Without the batch type, `rows` is an ordinary key and is scrubbed.
        let body = json!({ "type": "other", "rows": rows });
        assert_eq!(
            scrub_json(&body)["rows"],
            json!([{ "id": "us_rc_1", "valid": true, "values": {} }])
        );
    }

    #[test]
    fn an_egress_body_becomes_the_workbook_submit_it_stands_for() {
        let mut egress: Value =
            serde_json::from_slice(include_bytes!("../testdata/webhook-egress-body.json"))
                .expect("fixture is JSON");
        egress["workbook"]["sheets"][0]["config"]["apiKey"] = json!("envelope secret");
        let scrubbed = scrub_json(&egress);
        assert_eq!(scrubbed["topic"], crate::TOPIC_WEBHOOK_EGRESS, "{scrubbed}");
        assert_eq!(scrubbed["context"]["workbookId"], "us_wb_Qm5Zt1Xc");
        assert_eq!(scrubbed["context"]["environmentId"], "us_env_Rk2v9WqA");
        assert_eq!(scrubbed["payload"]["sheets"][0]["id"], "us_sh_Jp4Ls8Dn");
        assert_eq!(scrubbed["payload"]["sheets"][0]["recordsInBody"], 2);
        let text = scrubbed.to_string();
        assert!(
            !text.contains("envelope secret") && !text.contains("john.smith"),
            "neither credentials nor the body's records are kept: {text}"
        );
        // The same delivery is the same event; another one is another.
        assert_eq!(scrub_json(&egress)["id"], scrubbed["id"]);
        egress["workbook"]["updatedAt"] = json!("2024-05-02T14:00:00.000Z");
        assert_ne!(scrub_json(&egress)["id"], scrubbed["id"]);
        assert!(
            scrubbed["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("egress-")),
            "{scrubbed}"
        );
        let event = parse_webhook_body(text.as_bytes()).expect("a Platform event");
        assert_eq!(event.topic(), crate::TOPIC_WEBHOOK_EGRESS);
        assert_eq!(event.environment_id(), Some("us_env_Rk2v9WqA"));
    }

    #[test]
    fn a_legacy_id_derived_from_the_body_survives_scrubbing_and_redelivery() {
        let delivery = |token: &str| {
            json!({
                "type": "portalImportSubmitted",
                "env": { "customerId": "cus_1", "password": token },
                "scope": { "batchId": "b-1" }
            })
            .to_string()
        };
        let first = scrub_webhook_body(delivery("one").as_bytes()).expect("scrubs");
        let again = scrub_webhook_body(delivery("one").as_bytes()).expect("scrubs");
        let other_token = scrub_webhook_body(delivery("two").as_bytes()).expect("scrubs");
        let id = |body: &[u8]| parse_webhook_body(body).expect("parses").id().to_owned();
        assert!(id(&first.body).starts_with("legacy-"));
        assert_eq!(
            id(&first.body),
            id(&again.body),
            "a re-delivery is a duplicate"
        );
        assert_eq!(
            id(&first.body),
            id(&other_token.body),
            "the removed key plays no part"
        );
        // Storing and re-reading the stored body gives the same event.
        let stored = first.body.clone();
        let rescrubbed = scrub_webhook_body(&stored).expect("scrubs");
        assert_eq!(rescrubbed.body, stored);
        assert_eq!(parse_webhook_body(&stored), parse_webhook_body(&first.body));
    }

    #[test]
    fn a_body_that_is_not_json_gets_the_parsers_error() {
        for body in [&b"{\n  \"id\": x\n}"[..], b"", b"{\"a\":", b"{} trailing"] {
            assert_eq!(
                scrub_webhook_body(body).map(|s| s.body),
                parse_webhook_body(body).map(|_| Vec::new()),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // JSON that is not an object passes through for the parser to refuse.
        let scrubbed = scrub_webhook_body(b" [1, 2] ").expect("JSON");
        assert_eq!(scrubbed.body, b"[1,2]");
        assert!(matches!(
            parse_webhook_body(&scrubbed.body),
            Err(WebhookBodyError::UnknownShape { .. })
        ));
    }

    #[test]
    fn scrubbing_keeps_a_platform_event_the_same_event() {
        let raw = raw_event();
        let original = parse_webhook_body(raw.to_string().as_bytes()).expect("parses");
        let scrubbed = scrub_json(&raw);
        assert_eq!(scrubbed, raw, "nothing to remove from a plain event");
        let IncomingEvent::Platform(event) =
            parse_webhook_body(scrubbed.to_string().as_bytes()).expect("parses")
        else {
            panic!("a Platform event");
        };
        assert_eq!(IncomingEvent::Platform(event), original);
    }

    /// A random JSON value whose keys are drawn from a small set that includes credential
    /// keys in several cases and the row-data key names, so both rules are hit often.
    fn random_value(rng: &mut fastrand::Rng, depth: usize) -> Value {
        const KEYS: [&str; 14] = [
            "id",
            "topic",
            "src",
            "data",
            "validRows",
            "invalidRows",
            "rows",
            "type",
            "workbook",
            "sheets",
            "records",
            "_accessToken",
            "PassWord",
            "x-API-key",
        ];
        let leaf = |rng: &mut fastrand::Rng| match rng.u8(0..4) {
            0 => Value::Null,
            1 => Value::Bool(rng.bool()),
            2 => json!(rng.i64(-1000..1000)),
            _ => json!(["rows", "deletions", "us_evt_1", "job:ready", "x"][rng.usize(0..5)]),
        };
        if depth == 0 {
            return leaf(rng);
        }
        match rng.u8(0..5) {
            0 | 1 => {
                let mut map = Map::new();
                for _ in 0..rng.usize(0..6) {
                    map.insert(
                        KEYS[rng.usize(0..KEYS.len())].to_owned(),
                        random_value(rng, depth - 1),
                    );
                }
                Value::Object(map)
            }
            2 => Value::Array(
                (0..rng.usize(0..4))
                    .map(|_| random_value(rng, depth - 1))
                    .collect(),
            ),
            _ => leaf(rng),
        }
    }

    fn contains_credential_key(value: &Value, place: Place, exempt_rows: bool) -> bool {
        match value {
            Value::Object(map) => map.iter().any(|(key, child)| {
                is_credential_key(key)
                    || place
                        .key(key, exempt_rows)
                        .is_some_and(|inner| contains_credential_key(child, inner, exempt_rows))
            }),
            Value::Array(items) => items
                .iter()
                .any(|item| contains_credential_key(item, place.item(), exempt_rows)),
            _ => false,
        }
    }

    #[test]
    fn property_scrubbing_is_idempotent_and_never_touches_row_arrays() {
        let mut rng = fastrand::Rng::with_seed(0x5C2B);
        for case in 0..3000 {
            let mut value = random_value(&mut rng, 6);
            if case % 3 == 0 {
                // Make sure the row-data locations are present with credential-like cells.
                let rows = random_value(&mut rng, 4);
                value = json!({ "data": { "validRows": [rows.clone()], "invalidRows": [rows] }, "x": value });
            } else if case % 3 == 1 {
                let rows = random_value(&mut rng, 4);
                value = json!({ "type": "rows", "rows": [rows], "x": value });
            }
            let once = scrub_json(&value);
            let twice = scrub_json(&once);
            assert_eq!(once, twice, "not idempotent for {value}");
            let exempt = matches!(
                once.get("type").and_then(Value::as_str),
                Some("rows" | "deletions")
            );
            assert!(
                !contains_credential_key(&once, Place::Root, exempt),
                "a credential key survived in {once} (from {value})"
            );
            if value.get("src").is_none() {
                for (a, b) in [("data", "validRows"), ("data", "invalidRows")] {
                    if let Some(rows) = value.get(a).and_then(|d| d.get(b)) {
                        assert_eq!(once[a][b], *rows, "row data changed in {value}");
                    }
                }
                if exempt {
                    assert_eq!(
                        once.get("rows"),
                        value.get("rows"),
                        "rows changed in {value}"
                    );
                }
            }
        }
    }
}
