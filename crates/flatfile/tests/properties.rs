//! Property tests of the pure parsers: webhook scrubbing and classification, row page
//! conversion and the events listing. The fuzz targets in `fuzz/` call the same functions with
//! unstructured bytes; these build well-formed inputs and check what each must preserve.

use flatsync_flatfile::{
    CREDENTIAL_KEYS, EventsPage, IncomingEvent, LegacyPage, RecordsPage, is_credential_key,
    parse_webhook_body, scrub_and_parse_webhook_body, scrub_webhook_body,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Few cases: each is a pure call, and `cargo test` runs unoptimised.
fn config() -> ProptestConfig {
    ProptestConfig::with_cases(96)
}

/// A credential key in a random ASCII case: the scrubber compares case-insensitively.
fn credential_key() -> impl Strategy<Value = String> {
    (prop::sample::select(CREDENTIAL_KEYS.to_vec()), any::<u64>()).prop_map(|(key, bits)| {
        key.chars()
            .enumerate()
            .map(|(i, c)| {
                if bits >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    })
}

/// Keys that are neither credentials nor on the way to a row data location or a wrapper.
fn plain_key() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_ -]{0,10}".prop_filter("not a key with a meaning to the scrubber", |k| {
        !is_credential_key(k)
            && !matches!(
                k.as_str(),
                "data" | "workbook" | "rows" | "src" | "type" | "id" | "topic"
            )
    })
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
    ]
}

/// A JSON tree whose objects may hold credential keys (each with a value naming it, so a leak
/// is recognisable) at any depth.
fn tree_with_credentials() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                prop_oneof![
                    3 => (plain_key(), inner.clone()),
                    1 => (credential_key(), inner.clone()).prop_map(|(k, v)| {
                        let planted = json!({ "leak": format!("LEAKED-{k}"), "inner": v });
                        (k, planted)
                    }),
                ],
                0..5,
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// What the scrubber must leave: the tree without any entry whose key is a credential.
fn without_credentials(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !is_credential_key(k))
                .map(|(k, v)| (k.clone(), without_credentials(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_credentials).collect()),
        other => other.clone(),
    }
}

fn scrub(value: &Value) -> (Value, bool, usize) {
    let scrubbed = scrub_webhook_body(value.to_string().as_bytes()).expect("JSON scrubs");
    let body = serde_json::from_slice(&scrubbed.body).expect("the scrubbed body is JSON");
    (body, scrubbed.unwrapped, scrubbed.removed)
}

fn count_credentials(value: &Value) -> usize {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                if is_credential_key(k) {
                    1
                } else {
                    count_credentials(v)
                }
            })
            .sum(),
        Value::Array(items) => items.iter().map(count_credentials).sum(),
        _ => 0,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn scrubbing_removes_every_credential_key_at_any_depth(
        tree in tree_with_credentials(),
        id in "us_evt_[a-z0-9]{4}",
    ) {
        // As a Platform event body, with the tree as its payload and context.
        let body = json!({ "id": id, "topic": "job:ready", "payload": tree, "context": tree });
        let (stored, unwrapped, removed) = scrub(&body);
        prop_assert!(!unwrapped);
        prop_assert!(!stored.to_string().contains("LEAKED-"), "{stored}");
        prop_assert_eq!(&stored, &without_credentials(&body));
        prop_assert_eq!(removed, count_credentials(&body));
    }

    #[test]
    fn scrubbing_is_idempotent(tree in tree_with_credentials(), forwarded in any::<bool>()) {
        let raw = json!({ "id": "us_evt_1", "topic": "records:created", "payload": tree });
        let body = if forwarded {
            json!({ "src": raw, "topic": "records:created", "_accessToken": "sk_tok", "cache": tree })
        } else {
            raw
        };
        let (once, unwrapped, _) = scrub(&body);
        prop_assert_eq!(unwrapped, forwarded);
        let (twice, unwrapped_again, removed_again) = scrub(&once);
        prop_assert_eq!(&twice, &once);
        prop_assert!(!unwrapped_again);
        prop_assert_eq!(removed_again, 0);
    }

    #[test]
    fn row_data_keeps_columns_named_like_credentials(
        columns in prop::collection::vec((credential_key(), "[ -~]{0,8}"), 1..4),
        rows in 1usize..4,
    ) {
        let row: Map<String, Value> =
            columns.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        let valid_rows: Vec<Value> = (0..rows).map(|i| json!({ "row": i, "data": row })).collect();
        let body = json!({
            "event": { "type": "batch.upload", "id": "evt_1", "apiKey": "k" },
            "data": { "meta": { "batch": { "id": "b1" } }, "validRows": valid_rows, "password": "p" },
        });
        let (stored, _, removed) = scrub(&body);
        prop_assert_eq!(&stored["data"]["validRows"], &body["data"]["validRows"]);
        prop_assert!(stored["data"].get("password").is_none());
        prop_assert!(stored["event"].get("apiKey").is_none());
        prop_assert_eq!(removed, 2);
    }

    #[test]
    fn classifying_never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(scrubbed) = scrub_webhook_body(&body) {
            let _ = parse_webhook_body(&scrubbed.body);
        }
        let _ = parse_webhook_body(&body);
    }

    #[test]
    fn a_platform_event_classifies_with_its_id_and_topic(
        id in "[a-zA-Z0-9_]{1,12}",
        topic in "[a-z]{1,8}:[a-z]{1,8}",
        payload in tree_with_credentials(),
    ) {
        let body = json!({ "id": id, "topic": topic, "payload": payload });
        let scrubbed = scrub_webhook_body(body.to_string().as_bytes()).expect("scrubs");
        match parse_webhook_body(&scrubbed.body).expect("classifies") {
            IncomingEvent::Platform(event) => {
                prop_assert_eq!(event.id, id);
                prop_assert_eq!(&event.topic, &topic);
                prop_assert_eq!(event.domain, topic.split(':').next().unwrap_or_default());
            }
            other => prop_assert!(false, "classified as {other:?}"),
        }
    }
}

/// A body of any shape the webhook classifies, with credentials and floats anywhere.
fn any_webhook_body() -> impl Strategy<Value = Value> {
    let tree = || {
        prop_oneof![
            3 => tree_with_credentials(),
            1 => any::<f64>().prop_filter("JSON has no NaN or infinity", |f| f.is_finite()).prop_map(Value::from),
        ]
    };
    prop_oneof![
        (tree(), tree()).prop_map(|(payload, context)| {
            json!({ "id": "us_evt_1", "topic": "job:ready", "payload": payload, "context": context })
        }),
        tree().prop_map(|cache| json!({
            "src": { "id": "us_evt_2", "topic": "records:created", "payload": cache },
            "_accessToken": "sk_tok",
            "cache": cache,
        })),
        tree().prop_map(|env| json!({ "type": "recordStatusModified", "env": env })),
        tree().prop_map(|meta| json!({ "scope": { "batchId": "b", "eventId": 7 }, "meta": meta })),
        tree().prop_map(|row| json!({
            "event": { "type": "batch.upload", "id": "evt_1", "apiKey": "k" },
            "data": { "meta": { "batch": { "id": "b1" } }, "validRows": [{ "row": 1, "data": row }] },
        })),
        tree().prop_map(|records| json!({
            "workbook": { "id": "us_wb_1", "sheets": [{ "id": "us_sh_1", "records": [records] }] },
        })),
        tree(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn one_parse_scrubs_and_classifies_as_the_two_did(body in any_webhook_body()) {
        let bytes = body.to_string().into_bytes();
        let merged = scrub_and_parse_webhook_body(&bytes).expect("JSON scrubs");
        let scrubbed = scrub_webhook_body(&bytes).expect("JSON scrubs");
        prop_assert_eq!(&merged.scrubbed, &scrubbed);
        let stored: Value = serde_json::from_slice(&scrubbed.body).expect("the stored body is JSON");
        prop_assert_eq!(&merged.value, &stored);
        prop_assert_eq!(merged.event, parse_webhook_body(&scrubbed.body));
    }

    #[test]
    fn one_parse_refuses_bytes_as_the_two_did(body in prop::collection::vec(any::<u8>(), 0..64)) {
        match (scrub_and_parse_webhook_body(&body), scrub_webhook_body(&body)) {
            (Ok(merged), Ok(scrubbed)) => {
                prop_assert_eq!(&merged.scrubbed, &scrubbed);
                prop_assert_eq!(merged.event, parse_webhook_body(&scrubbed.body));
            }
            (Err(merged), Err(scrubbed)) => prop_assert_eq!(merged, scrubbed),
            (merged, scrubbed) => prop_assert!(false, "{merged:?} against {scrubbed:?}"),
        }
    }
}

/// One legacy row as the API may send it; `None` fields are left out of the JSON.
#[derive(Debug, Clone)]
struct LegacyRowSpec {
    id: Option<Value>,
    valid: Option<bool>,
    deleted: Option<bool>,
    mapped: Option<Value>,
}

fn legacy_row() -> impl Strategy<Value = LegacyRowSpec> {
    let id = prop::option::of(prop_oneof![
        "[a-z0-9-]{0,12}".prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
    ]);
    let mapped = prop::option::of(
        prop::collection::btree_map("[a-zA-Z ]{1,8}", leaf(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
    );
    (id, any::<Option<bool>>(), any::<Option<bool>>(), mapped).prop_map(
        |(id, valid, deleted, mapped)| LegacyRowSpec {
            id,
            valid,
            deleted,
            mapped,
        },
    )
}

fn lines(ndjson: &[u8]) -> Vec<Value> {
    ndjson
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).expect("each batch line is JSON"))
        .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_legacy_page_yields_one_line_per_row_not_deleted(
        rows in prop::collection::vec(legacy_row(), 0..12),
        skip in 0u64..1_000,
        pretty in any::<bool>(),
    ) {
        let data: Vec<Value> = rows
            .iter()
            .map(|row| {
                let mut object = Map::new();
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        object.insert(k.to_owned(), v);
                    }
                };
                put("id", row.id.clone());
                put("valid", row.valid.map(Value::from));
                put("deleted", row.deleted.map(Value::from));
                put("mapped", row.mapped.clone());
                put("raw", Some(json!({ "First": "x" })));
                Value::Object(object)
            })
            .collect();
        let body = json!({ "pagination": { "totalCount": rows.len() }, "data": data });
        let text = if pretty {
            serde_json::to_vec_pretty(&body).expect("serialises")
        } else {
            serde_json::to_vec(&body).expect("serialises")
        };
        let page = LegacyPage::parse(&text, "b1", skip).expect("a well-formed page converts");
        let kept: Vec<(usize, &LegacyRowSpec)> =
            rows.iter().enumerate().filter(|(_, r)| r.deleted != Some(true)).collect();
        prop_assert_eq!(page.rows_on_page, rows.len() as u64);
        prop_assert_eq!(page.rows_delivered, kept.len() as u64);
        prop_assert_eq!(page.rows_skipped_deleted, (rows.len() - kept.len()) as u64);
        prop_assert_eq!(page.total_count, Some(rows.len() as u64));
        let out = lines(&page.ndjson);
        prop_assert_eq!(out.len(), kept.len());
        for (line, (index, row)) in out.iter().zip(&kept) {
            let id = match &row.id {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => format!("b1#{}", skip + *index as u64),
            };
            prop_assert_eq!(&line["id"], &Value::from(id));
            prop_assert_eq!(&line["valid"], &Value::from(row.valid.unwrap_or(true)));
            let values = row.mapped.clone().unwrap_or_else(|| json!({}));
            prop_assert_eq!(&line["values"], &values);
        }
    }

    #[test]
    fn a_records_page_yields_one_line_per_record(
        records in prop::collection::vec(
            (
                "us_rc_[a-z0-9]{1,8}",
                any::<Option<bool>>(),
                prop::collection::btree_map("[a-zA-Z]{1,6}", prop::option::of(leaf()), 0..4),
            ),
            0..10,
        ),
        pretty in any::<bool>(),
    ) {
        let json_records: Vec<Value> = records
            .iter()
            .map(|(id, valid, cells)| {
                let values: Map<String, Value> = cells
                    .iter()
                    .map(|(k, v)| {
                        let cell = match v {
                            Some(v) => json!({ "value": v, "messages": [], "valid": true }),
                            None => json!({ "messages": [] }),
                        };
                        (k.clone(), cell)
                    })
                    .collect();
                let mut record = json!({ "id": id, "values": values, "metadata": {} });
                if let Some(valid) = valid {
                    record["valid"] = Value::from(*valid);
                }
                record
            })
            .collect();
        let body = json!({ "data": { "records": json_records, "commitId": "us_vr_1" } });
        let text = if pretty {
            serde_json::to_vec_pretty(&body).expect("serialises")
        } else {
            serde_json::to_vec(&body).expect("serialises")
        };
        let page = RecordsPage::parse(&text).expect("a well-formed page converts");
        prop_assert_eq!(page.rows, records.len() as u64);
        prop_assert_eq!(page.commit_id.as_deref(), Some("us_vr_1"));
        let out = lines(&page.ndjson);
        prop_assert_eq!(out.len(), records.len());
        for (line, (id, valid, cells)) in out.iter().zip(&records) {
            prop_assert_eq!(&line["id"], &Value::from(id.as_str()));
            prop_assert_eq!(&line["valid"], &Value::from(valid.unwrap_or(true)));
            let expected: Map<String, Value> = cells
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().unwrap_or(Value::Null)))
                .collect();
            prop_assert_eq!(&line["values"], &Value::Object(expected));
        }
    }

    #[test]
    fn an_events_page_keeps_good_items_and_counts_every_item(
        items in prop::collection::vec(
            prop_oneof![
                ("us_evt_[a-z0-9]{1,8}", "[a-z]{1,8}:[a-z]{1,8}", tree_with_credentials())
                    .prop_map(|(id, topic, payload)| json!({
                        "id": id, "topic": topic, "payload": payload,
                        "createdAt": "2024-05-02T13:58:39.774Z",
                    })),
                leaf(),
                Just(json!({ "id": "", "topic": "job:ready" })),
                Just(json!({ "id": "us_evt_x" })),
            ],
            0..10,
        ),
    ) {
        let body = json!({ "data": items });
        let page = EventsPage::parse(body.to_string().as_bytes()).expect("a data array reads");
        prop_assert_eq!(page.items_on_page, items.len() as u64);
        let good: Vec<&Value> = items
            .iter()
            .filter(|item| {
                item["id"].as_str().is_some_and(|s| !s.is_empty())
                    && item["topic"].as_str().is_some_and(|s| !s.is_empty())
            })
            .collect();
        prop_assert_eq!(page.events.len(), good.len());
        prop_assert_eq!(page.skipped.len(), items.len() - good.len());
        for (event, item) in page.events.iter().zip(good) {
            prop_assert_eq!(Some(event.id.as_str()), item["id"].as_str());
            let body: Value = serde_json::from_slice(&event.body).expect("JSON");
            prop_assert_eq!(&body, item, "the whole event is kept");
        }
    }
}

/// Found by the `webhook_body` fuzz target (its input is kept in the corpus): without
/// serde_json's `float_roundtrip`, `60e210` was read one ulp off, so the scrubbed body held a
/// different number than the sender's and scrubbing it again changed it again.
#[test]
fn scrubbing_keeps_every_float_and_is_idempotent_on_it() {
    let body = include_bytes!("../../../fuzz/corpus/webhook_body/regression-float-roundtrip.json");
    let once = scrub_webhook_body(body).expect("a number is JSON");
    let twice = scrub_webhook_body(&once.body).expect("scrubs again");
    assert_eq!(
        String::from_utf8_lossy(&twice.body),
        String::from_utf8_lossy(&once.body)
    );
    let sent: f64 = std::str::from_utf8(body)
        .expect("ASCII")
        .trim()
        .parse()
        .expect("a float");
    let stored: f64 = serde_json::from_slice(&once.body).expect("a number");
    assert_eq!(stored, sent, "the stored number is the one sent");

    let row = json!({
        "type": "rows", "stream": "s", "kind": "k", "seq": 0, "part": 0, "parts": 1, "last": true,
        "rows": [{ "id": "r1", "valid": true, "values": { "x": 0.1, "y": 2.2250738585072014e-308 } }],
    });
    let text = br#"{"type":"rows","stream":"s","kind":"k","seq":0,"part":0,"parts":1,"last":true,"rows":[{"id":"r1","valid":true,"values":{"x":0.1,"y":2.2250738585072014e-308,"z":60e210}}]}"#;
    let scrubbed = scrub_webhook_body(text).expect("scrubs");
    let stored: Value = serde_json::from_slice(&scrubbed.body).expect("JSON");
    assert_eq!(
        stored["rows"][0]["values"]["x"],
        row["rows"][0]["values"]["x"]
    );
    assert_eq!(
        stored["rows"][0]["values"]["y"],
        row["rows"][0]["values"]["y"]
    );
    assert_eq!(stored["rows"][0]["values"]["z"].as_f64(), Some(60e210));
}
