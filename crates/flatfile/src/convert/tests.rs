use serde_json::{Value, json};

use super::*;

fn lines(ndjson: &[u8]) -> Vec<&str> {
    let text = std::str::from_utf8(ndjson).expect("NDJSON is UTF-8");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "every line ends with a newline"
    );
    text.lines().collect()
}

/// Checks the batch row format of the common brief on every line: an object with exactly
/// `id` (string), `valid` (bool) and `values` (object), in that order.
fn assert_row_format(ndjson: &[u8]) {
    for line in lines(ndjson) {
        assert!(line.starts_with("{\"id\":\""), "{line}");
        let value: Value = serde_json::from_str(line).expect("each line is JSON");
        let object = value.as_object().expect("each line is an object");
        assert_eq!(object.len(), 3, "{line}");
        assert!(object["id"].is_string(), "{line}");
        assert!(object["valid"].is_boolean(), "{line}");
        assert!(object["values"].is_object(), "{line}");
    }
}

#[test]
fn legacy_fixture_page() {
    let body = include_bytes!("../../testdata/legacy-batch-rows-page.json");
    let page = legacy_page(body, "596c2c5f-2884-4444-9ccb-2f0772877508", 0).expect("converts");
    assert_eq!(
        lines(&page.ndjson),
        [
            r#"{"id":"3f1c2a9e-6b7d-4e2f-9a10-5c4b3a2d1e0f","valid":true,"values":{"name":"John","email":"john.smith@example.com"}}"#,
            r#"{"id":"8a7b6c5d-4e3f-4a2b-9c1d-0e9f8a7b6c5d","valid":false,"values":{"name":"Suzie","email":"suzie.q@"}}"#,
        ]
    );
    assert_eq!(page.rows_delivered, 2);
    assert_eq!(page.rows_on_page, 2);
    assert_eq!(page.rows_skipped_deleted, 0);
    assert_eq!(page.total_count, Some(2));
    assert_eq!(page.limit, Some(50), "pagination.limit is the take applied");
    assert_eq!(page.next_offset, Some(50));
    assert_row_format(&page.ndjson);
}

#[test]
fn legacy_mapped_on_one_line_is_copied_byte_for_byte() {
    let body = br#"{"data":[{"id":"r1","mapped":{"b" : "x  y", "a":[1, 2.50, -0.0e3],"c":{"d":null}},"valid":true}]}"#;
    let page = legacy_page(body, "b", 0).expect("converts");
    assert_eq!(
        page.ndjson,
        b"{\"id\":\"r1\",\"valid\":true,\"values\":{\"b\" : \"x  y\", \"a\":[1, 2.50, -0.0e3],\"c\":{\"d\":null}}}\n"
    );
    assert_eq!(page.total_count, None, "no pagination object");
    assert_eq!((page.limit, page.next_offset), (None, None));
}

#[test]
fn legacy_rows_lenient_fields_and_deleted_rows() {
    let body = br#"{
      "pagination": {"totalCount": "7", "onPage": 6},
      "data": [
        {"id": 17, "mapped": {"n": 1}, "valid": true, "deleted": false},
        {"id": "gone", "mapped": {"n": 2}, "valid": true, "deleted": true},
        {"mapped": {"n": 3}},
        {"id": "q\"uote\u00e9", "mapped": null, "valid": false},
        {"id": null, "deleted": null},
        {"id": "ml", "mapped": {
            "text": "keeps  inner  spaces",
            "list": [ 1,
                      2 ]
        }}
      ]
    }"#;
    let page = legacy_page(body, "ba\"tch", 40).expect("converts");
    assert_eq!(
        lines(&page.ndjson),
        [
            r#"{"id":"17","valid":true,"values":{"n": 1}}"#,
            r#"{"id":"ba\"tch#42","valid":true,"values":{"n": 3}}"#,
            r#"{"id":"q\"uote\u00e9","valid":false,"values":{}}"#,
            r#"{"id":"ba\"tch#44","valid":true,"values":{}}"#,
            r#"{"id":"ml","valid":true,"values":{"text":"keeps  inner  spaces","list":[1,2]}}"#,
        ]
    );
    assert_eq!(page.rows_on_page, 6);
    assert_eq!(page.rows_delivered, 5);
    assert_eq!(page.rows_skipped_deleted, 1);
    assert_eq!(page.total_count, Some(7));
    assert_eq!(
        (page.limit, page.next_offset),
        (None, None),
        "keys missing from pagination"
    );
    assert_row_format(&page.ndjson);
}

#[test]
fn legacy_pagination_counts_may_be_strings() {
    let body = br#"{"pagination":{"limit":"100","nextOffset":"600","totalCount":500,"pageCount":"5"},"data":[]}"#;
    let page = legacy_page(body, "b", 500).expect("converts");
    assert_eq!(
        (page.limit, page.next_offset, page.total_count),
        (Some(100), Some(600), Some(500))
    );
}

#[test]
fn legacy_empty_page() {
    let page =
        legacy_page(br#"{"pagination":{"totalCount":0},"data":[]}"#, "b", 0).expect("converts");
    assert!(page.ndjson.is_empty());
    assert_eq!(
        (page.rows_delivered, page.rows_on_page, page.total_count),
        (0, 0, Some(0))
    );
}

#[test]
fn legacy_bad_shapes_are_errors() {
    let error = legacy_page(
        br#"{"data":[{"id":"a","mapped":{}},{"id":"b","mapped":"x"}]}"#,
        "b",
        0,
    )
    .expect_err("mapped must be an object");
    assert!(
        error
            .to_string()
            .starts_with("row 1: \"mapped\" is a string, expected an object"),
        "{error}"
    );
    let error = legacy_page(br#"{"data":[{"id":true}]}"#, "b", 0).expect_err("bool id");
    assert!(
        error
            .to_string()
            .contains("the id is a boolean, expected a string or a number"),
        "{error}"
    );
    let error = legacy_page(br#"{"pagination":{}}"#, "b", 0).expect_err("no data");
    assert!(
        error.to_string().contains("missing field `data`"),
        "{error}"
    );
    legacy_page(br#"{"data":{}}"#, "b", 0).expect_err("data is not an array");
    legacy_page(br#"[]"#, "b", 0).expect_err("not an object");
    let truncated = &include_bytes!("../../testdata/legacy-batch-rows-page.json")[..600];
    let error = legacy_page(truncated, "b", 0).expect_err("truncated");
    assert!(error.is_eof(), "{error}");
}

#[test]
fn records_fixture_page() {
    let body = include_bytes!("../../testdata/records-page.json");
    let page = records_page(body).expect("converts");
    assert_eq!(
        lines(&page.ndjson),
        [
            r#"{"id":"us_rc_7f3a9c2e41d84b0f9a6e2d1c5b8a7e30","valid":true,"values":{"firstName":"John","lastName":"Smith","email":"john.smith@example.com"}}"#,
            r#"{"id":"us_rc_0c9e8d7b6a5f4e3d2c1b0a9f8e7d6c5b","valid":false,"values":{"firstName":"Suzie","lastName":"Q","email":"suzie.q@"}}"#,
        ]
    );
    assert_eq!(page.rows, 2);
    assert_eq!(page.commit_id.as_deref(), Some("us_vr_Wc9Hx4Ra"));
    assert_row_format(&page.ndjson);
}

#[test]
fn records_lenient_cells_and_key_order() {
    let body = br#"{"data":{"versionId":"us_vr_old","records":[
        {"values":{"z":{"value":1},"a":{"valid":false,"messages":[]},"m":{"value":null},"n":null,
                   "k\"ey":{"value":"x"},"\u00e9":{"value":[ "a  b",
                       {"deep": true} ]}},
         "id":"us_rc_1"},
        {"id":"us_rc_2","valid":false},
        {"id":99,"values":null,"valid":null,"metadata":{"values":{"ignored":{}}}}
    ]}}"#;
    let page = records_page(body).expect("converts");
    assert_eq!(
        lines(&page.ndjson),
        [
            r#"{"id":"us_rc_1","valid":true,"values":{"z":1,"a":null,"m":null,"n":null,"k\"ey":"x","é":["a  b",{"deep":true}]}}"#,
            r#"{"id":"us_rc_2","valid":false,"values":{}}"#,
            r#"{"id":"99","valid":true,"values":{}}"#,
        ]
    );
    assert_eq!(page.rows, 3);
    assert_eq!(page.commit_id.as_deref(), Some("us_vr_old"));
    assert_row_format(&page.ndjson);
}

#[test]
fn records_empty_and_bad_shapes() {
    let page = records_page(br#"{"data":{"records":[],"success":true}}"#).expect("converts");
    assert_eq!((page.rows, page.ndjson.len(), page.commit_id), (0, 0, None));

    let error = records_page(br#"{"data":{"records":[{"values":{}}]}}"#).expect_err("no id");
    assert!(
        error.to_string().starts_with("record 0 has no id"),
        "{error}"
    );
    let error = records_page(br#"{"data":{"success":true}}"#).expect_err("no records");
    assert!(
        error.to_string().contains("missing field `records`"),
        "{error}"
    );
    let error = records_page(br#"{"errors":[]}"#).expect_err("no data");
    assert!(
        error.to_string().contains("missing field `data`"),
        "{error}"
    );
    records_page(br#"{"data":{"records":[{"id":"a","values":{"k":"bare"}}]}}"#)
        .expect_err("a cell must be an object");
    let body = include_bytes!("../../testdata/records-page.json");
    records_page(&body[..body.len() - 3]).expect_err("truncated");
}

/// Builds a pretty-printed records page from `records` (as `(id, valid, [(key, value)])`) and
/// checks that every line parses back to the expected record.
#[test]
fn records_round_trip_of_tricky_values() {
    let samples: Vec<Value> = vec![
        json!("plain"),
        json!("line\nbreak and \"quotes\" and \\ backslash and \t tab"),
        json!("unicode ✓ é 中文 🎉"),
        json!(""),
        json!(0),
        json!(-12345678901234i64),
        json!(18446744073709551615u64),
        json!(3.5e-7),
        json!(true),
        json!(null),
        json!(["a", 1, [null, {"x": "y\n"}]]),
        json!({"nested": {"deeper": ["  spaced  "]}}),
    ];
    let mut records = Vec::new();
    let mut expected = Vec::new();
    for i in 0..200usize {
        let mut cells = serde_json::Map::new();
        let mut values = serde_json::Map::new();
        for (j, sample) in samples.iter().enumerate().filter(|(j, _)| (i + j) % 3 != 0) {
            let key = format!("field_{j}{}", if j % 4 == 0 { "\"q" } else { "" });
            cells.insert(
                key.clone(),
                json!({"value": sample, "valid": true, "messages": [], "updatedAt": "2024-05-02T13:58:40.012Z"}),
            );
            values.insert(key, sample.clone());
        }
        let id = format!("us_rc_{i:04}");
        let valid = i % 5 != 0;
        records.push(json!({"id": id, "values": cells, "valid": valid, "metadata": {}}));
        expected.push(json!({"id": id, "valid": valid, "values": values}));
    }
    let body = serde_json::to_vec_pretty(&json!({"data": {"records": records, "commitId": "c"}}))
        .expect("serialises");
    let page = records_page(&body).expect("converts");
    assert_eq!(page.rows, 200);
    let parsed: Vec<Value> = lines(&page.ndjson)
        .into_iter()
        .map(|line| serde_json::from_str(line).expect("line is JSON"))
        .collect();
    assert_eq!(parsed, expected);
    assert_row_format(&page.ndjson);
}

#[test]
fn workbook_fixture() {
    let workbook = workbook(include_bytes!("../../testdata/workbook-get.json")).expect("parses");
    assert_eq!(workbook.id, "us_wb_Qm5Zt1Xc");
    assert_eq!(workbook.name.as_deref(), Some("Contacts import"));
    assert_eq!(
        workbook.sheets,
        [
            Sheet {
                id: "us_sh_Jp4Ls8Dn".to_owned(),
                slug: "contacts".to_owned(),
                name: Some("Contacts".to_owned()),
                field_keys: [
                    "firstName",
                    "lastName",
                    "email",
                    "age",
                    "subscribed",
                    "tier"
                ]
                .map(str::to_owned)
                .to_vec(),
            },
            Sheet {
                id: "us_sh_Vb6Nw2Ke".to_owned(),
                slug: "companies".to_owned(),
                name: Some("Companies".to_owned()),
                field_keys: vec!["name".to_owned()],
            },
        ]
    );
}

#[test]
fn sheets_list_fixture_matches_the_workbook() {
    let listed = sheets(include_bytes!("../../testdata/sheets-list.json")).expect("parses");
    let workbook = workbook(include_bytes!("../../testdata/workbook-get.json")).expect("parses");
    assert_eq!(listed, workbook.sheets);
}

#[test]
fn sheet_slug_falls_back() {
    let parse = |body: &str| sheet(body.as_bytes()).expect("parses");
    assert_eq!(
        parse(
            r#"{"data":{"id":"s1","slug":"","config":{"slug":"cfg","fields":[{"key":"a"},{"label":"no key"},{"key":"b"}]}}}"#
        ),
        Sheet {
            id: "s1".to_owned(),
            slug: "cfg".to_owned(),
            name: None,
            field_keys: vec!["a".to_owned(), "b".to_owned()],
        }
    );
    assert_eq!(
        parse(r#"{"data":{"id":"s1","name":"Sheet One","config":{"fields":null}}}"#).slug,
        "Sheet One"
    );
    let bare = parse(r#"{"data":{"id":"s1"}}"#);
    assert_eq!((bare.slug.as_str(), bare.field_keys.len()), ("s1", 0));

    let workbook = workbook(br#"{"data":{"id":"w"}}"#).expect("no sheets key");
    assert!(workbook.sheets.is_empty());
}

#[test]
fn record_count_fixture() {
    assert_eq!(
        record_count(include_bytes!("../../testdata/record-counts-response.json")).expect("parses"),
        2
    );
    record_count(br#"{"data":{"counts":{}}}"#).expect_err("no total");
}

#[test]
fn single_line_compaction_respects_strings() {
    let mut out = Vec::new();
    push_single_line(
        &mut out,
        b"{\r\n  \"a b\" : \"x \\\" y \\\\\",\n  \"c\": [ 1 ,\t2 ]\n}",
    );
    assert_eq!(out, b"{\"a b\":\"x \\\" y \\\\\",\"c\":[1,2]}");
}

#[test]
fn events_fixture_page_keeps_every_field_of_every_event() {
    let body = include_bytes!("../../testdata/events-list-page.json");
    let page = events_page(body).expect("converts");
    assert_eq!(page.items_on_page, 4);
    assert!(page.skipped.is_empty(), "{:?}", page.skipped);
    let heads: Vec<(&str, &str, Option<&str>)> = page
        .events
        .iter()
        .map(|e| (e.id.as_str(), e.topic.as_str(), e.created_at.as_deref()))
        .collect();
    assert_eq!(
        heads,
        [
            (
                "us_evt_5Pa8Lx2Nc6Vd3Mz9",
                "records:created",
                Some("2024-05-02T13:58:39.774Z")
            ),
            (
                "us_evt_8Tn2Vc5Rb1Qx7Hk4",
                "commit:created",
                Some("2024-05-02T13:58:40.090Z")
            ),
            (
                "us_evt_1Bv7Gh4Js9Kl2Qp6",
                "workbook:updated",
                Some("2024-05-02T13:58:41.300Z")
            ),
            (
                "us_evt_3Kd9QwPz7Lm2Xa1B",
                "job:ready",
                Some("2024-05-02T14:03:11.517Z")
            ),
        ]
    );
    let fixture: Value = serde_json::from_slice(body).expect("fixture is JSON");
    for (index, event) in page.events.iter().enumerate() {
        assert!(
            !event.body.contains(&b'\n') && !event.body.contains(&b' '),
            "compact: {}",
            String::from_utf8_lossy(&event.body)
        );
        let parsed: Value = serde_json::from_slice(&event.body).expect("body is JSON");
        assert_eq!(parsed, fixture["data"][index], "event {index}");
    }
    // The API's key order is kept.
    assert!(page.events[3].body.starts_with(
        br#"{"id":"us_evt_3Kd9QwPz7Lm2Xa1B","topic":"job:ready","domain":"job","context":{"accountId""#
    ));
}

#[test]
fn events_body_keeps_numbers_and_strings_as_sent() {
    let body = br#"{"data":[{"id":"e1","topic":"t:x","payload":{"n":1.50e2,"big":123456789012345678901234567890,"s":"a  b\n\"c\""}}]}"#;
    let page = events_page(body).expect("converts");
    assert_eq!(
        page.events[0].body,
        br#"{"id":"e1","topic":"t:x","payload":{"n":1.50e2,"big":123456789012345678901234567890,"s":"a  b\n\"c\""}}"#
    );
    assert_eq!(page.events[0].created_at, None);
}

#[test]
fn events_unusable_items_are_skipped_and_counted() {
    let body = br#"{"data":[
        {"id":"e0","topic":"space:created","createdAt":"2026-01-02T03:04:05.006Z"},
        "us_evt_1",
        {"topic":"space:created"},
        {"id":"","topic":"space:created"},
        {"id":"e4","topic":7},
        {"id":"e5","topic":"file:created","createdAt":5},
        null,
        {"id":"e7","id":"e7b","topic":"space:created"},
        {"id":42,"topic":"space:created"},
        {"id":"e9","topic":null}
    ],"extra":{"ignored":true}}"#;
    let page = events_page(body).expect("converts");
    assert_eq!(page.items_on_page, 10);
    let ids: Vec<&str> = page.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e0", "e5"]);
    assert_eq!(page.events[1].created_at, None, "a non-string createdAt");
    assert_eq!(page.skipped.len(), 8, "{:?}", page.skipped);
    assert_eq!(
        page.skipped[..5],
        [
            "event 1 of the page is a string, expected an object",
            "event 2 of the page has no usable \"id\": it is missing or null",
            "event 3 of the page has no usable \"id\": it is an empty string",
            "event 4 of the page (e4) has no usable \"topic\": it is a number",
            "event 6 of the page is null, expected an object",
        ]
    );
    assert!(
        page.skipped[5].starts_with("event 7 of the page cannot be read: duplicate field `id`"),
        "{}",
        page.skipped[5]
    );
    assert_eq!(
        page.skipped[6..],
        [
            "event 8 of the page has no usable \"id\": it is a number",
            "event 9 of the page (e9) has no usable \"topic\": it is missing or null",
        ]
    );
}

#[test]
fn events_envelope_must_be_an_object_with_a_data_array() {
    for (body, expected) in [
        (
            &br#"[{"id":"e1","topic":"t"}]"#[..],
            "expected an object with a \"data\" array, found an array",
        ),
        (
            br#"{"errors":[{"message":"nope"}]}"#,
            "expected an object with a \"data\" array, found an object without \"data\"",
        ),
        (
            br#"{"data":null}"#,
            "expected an object with a \"data\" array, found an object without \"data\"",
        ),
        (
            br#"{"data":{"id":"e1","topic":"t"}}"#,
            "expected an object with a \"data\" array, found \"data\" as an object",
        ),
        (
            br#""events""#,
            "expected an object with a \"data\" array, found a string",
        ),
    ] {
        let error = events_page(body).expect_err("not an events page");
        assert_eq!(error.to_string(), expected);
    }
    let empty = events_page(b" {\"data\": []}\n").expect("an empty page");
    assert_eq!(
        (empty.events.len(), empty.items_on_page, empty.skipped.len()),
        (0, 0, 0)
    );
    let truncated = events_page(br#"{"data":[{"id":"e1","#).expect_err("truncated");
    assert!(truncated.is_eof(), "{truncated}");
}

/// Found by the `events_page` fuzz target (its input is kept in the corpus): a listed event
/// with a number beyond f64 was listed as usable, but the poller's scrubber could not read it,
/// so the event was stored unscrubbed and could never be classified.
#[test]
fn events_an_item_the_scrubber_cannot_read_is_skipped_with_its_reason() {
    let body =
        include_bytes!("../../../../fuzz/corpus/events_page/regression-number-beyond-f64.json");
    let page = events_page(body).expect("the page itself reads");
    assert!(
        page.skipped
            .iter()
            .any(|r| r.contains("number out of range")),
        "{:?}",
        page.skipped
    );
    for event in &page.events {
        crate::scrub_webhook_body(&event.body).expect("every listed event scrubs");
    }
    assert_eq!(
        (page.events.len() + page.skipped.len()) as u64,
        page.items_on_page
    );

    let page = events_page(
        br#"{"data":[{"id":"e1","topic":"t:x","payload":{"n":1e400}},{"id":"e2","topic":"t:x"}]}"#,
    )
    .expect("converts");
    let ids: Vec<&str> = page.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e2"]);
    assert_eq!(page.items_on_page, 2);
    assert!(
        page.skipped[0].starts_with("event 0 of the page cannot be read: number out of range"),
        "{:?}",
        page.skipped
    );
}

/// Found by the `row_pages` fuzz target (its input is kept in the corpus): a record whose id
/// was `""` became a batch row with an empty id, and sinks key rows on the id (the sqlite
/// sink's `_record_id` is the primary key), so two such records would have been one.
#[test]
fn an_empty_record_id_fails_the_page_like_a_missing_one() {
    let input = include_bytes!("../../../../fuzz/corpus/row_pages/regression-empty-record-id");
    // The target's first byte picks the converter; an odd one is the records page.
    assert_eq!(input[0] & 1, 1);
    let error = records_page(&input[1..]).expect_err("an empty id is refused");
    assert!(error.to_string().contains("record 0 has no id"), "{error}");

    let page = legacy_page(
        br#"{"data":[{"id":"","mapped":{"a":1}},{"id":"r2"},{"mapped":{}}]}"#,
        "b9",
        40,
    )
    .expect("converts");
    let ids: Vec<Value> = lines(&page.ndjson)
        .into_iter()
        .map(|line| serde_json::from_str::<Value>(line).expect("JSON")["id"].clone())
        .collect();
    assert_eq!(ids, [json!("b9#40"), json!("r2"), json!("b9#42")]);
}

/// Found by the `row_pages` fuzz target (its input is kept in the corpus): a record id holding
/// half a surrogate pair (`"\udbbd"`) was copied into the batch line as sent, and no sink
/// could read the line. Lone halves become U+FFFD in ids, keys and cells; pairs stay.
#[test]
fn half_a_surrogate_pair_becomes_a_replacement_character_in_batch_lines() {
    let input = include_bytes!("../../../../fuzz/corpus/row_pages/regression-lone-surrogate-id");
    assert_eq!(input[0] & 1, 1, "an odd first byte is the records page");
    let page = records_page(&input[1..]).expect("converts");
    let first: Value = serde_json::from_str(lines(&page.ndjson)[0]).expect("JSON");
    assert_eq!(first["id"], "pbdd\u{fffd}our1");

    let page = legacy_page(
        br#"{"data":[{"id":"a\ud83d","mapped":{"k\udc00":"\ud83d\ude00 \\ud83d \ud83d\ud83d\ude00"}}]}"#,
        "b",
        0,
    )
    .expect("converts");
    assert_eq!(
        lines(&page.ndjson),
        [
            r#"{"id":"a\uFFFD","valid":true,"values":{"k\uFFFD":"\ud83d\ude00 \\ud83d \uFFFD\ud83d\ude00"}}"#
        ]
    );
}
