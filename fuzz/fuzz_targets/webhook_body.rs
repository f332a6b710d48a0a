//! A webhook body as the listener handles it: scrubbed, then classified into an event.
#![no_main]

use flatsync_flatfile::{
    IncomingEvent, ROW_DATA_LOCATIONS, is_credential_key, parse_webhook_body, scrub_webhook_body,
};
use flatsync_fuzz::assert_batch_lines;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    let scrubbed = match scrub_webhook_body(body) {
        Ok(scrubbed) => scrubbed,
        Err(error) => {
            // The scrubber refuses only what is not JSON, with the parser's own 400.
            assert_eq!(parse_webhook_body(body), Err(error));
            return;
        }
    };
    let stored: Value = serde_json::from_slice(&scrubbed.body).expect("a scrubbed body is JSON");
    let rows_exempt = matches!(
        stored.get("type").and_then(Value::as_str),
        Some("rows" | "deletions")
    );
    let mut path = Vec::new();
    assert_no_credential(&stored, &mut path, rows_exempt);

    // Scrubbing what was stored changes nothing: a body re-read from the inbox (or posted back
    // by another instance) is stored the same.
    let again = scrub_webhook_body(&scrubbed.body).expect("a scrubbed body scrubs");
    assert_eq!(again.removed, 0, "a second scrub removed keys");
    assert!(!again.unwrapped, "a second scrub unwrapped again");
    assert_eq!(
        String::from_utf8_lossy(&again.body),
        String::from_utf8_lossy(&scrubbed.body)
    );

    match parse_webhook_body(&scrubbed.body) {
        Ok(IncomingEvent::Legacy(notification)) => {
            // An id is always found or derived from the body: the inbox keys on it.
            assert!(!notification.event_id.is_empty());
        }
        Ok(IncomingEvent::Platform(event)) => {
            // The inbox keys on the id and routes on the topic.
            assert!(!event.id.is_empty() && !event.topic.is_empty(), "{event:?}");
        }
        Ok(IncomingEvent::Carried(part)) => {
            assert!(!part.upload.is_empty(), "an upload without a key");
            assert_batch_lines(&part.ndjson, part.rows, "carried part");
        }
        Err(error) => {
            // Whatever is refused is refused with a message.
            assert!(!error.to_string().is_empty());
        }
    }
});

/// Fails on a credential key anywhere outside the row data the scrubber must leave alone.
fn assert_no_credential(value: &Value, path: &mut Vec<String>, rows_exempt: bool) {
    let is_row_data = |path: &[String]| {
        ROW_DATA_LOCATIONS.iter().any(|location| {
            let parts: Vec<&str> = location.split('.').collect();
            parts.len() == path.len()
                && parts.iter().zip(path).all(|(p, s)| p == s)
                && (*location != "rows" || rows_exempt)
        })
    };
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                assert!(
                    !is_credential_key(key),
                    "credential key {key:?} kept at {}",
                    path.join(".")
                );
                path.push(key.clone());
                if !is_row_data(path) {
                    assert_no_credential(child, path, rows_exempt);
                }
                path.pop();
            }
        }
        Value::Array(items) => {
            for item in items {
                path.push("*".to_owned());
                assert_no_credential(item, path, rows_exempt);
                path.pop();
            }
        }
        _ => {}
    }
}
