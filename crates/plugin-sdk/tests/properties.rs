//! Property tests of how a sink reads a batch: rows written as the host writes them read back
//! as the same ids, flags and values; the fuzz target `sdk_rows` feeds the same parser bytes.

use flatsync_plugin_sdk::{
    Batch, BatchParts, CellValue, Row, RowJson, compact_json, write_json_string,
};
use proptest::prelude::*;
use serde_json::Value;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(128)
}

fn cell() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
struct RowSpec {
    id: String,
    valid: bool,
    values: Vec<(String, Value)>,
}

fn row() -> impl Strategy<Value = RowSpec> {
    (
        any::<String>(),
        any::<bool>(),
        prop::collection::vec((any::<String>(), cell()), 0..5),
    )
        .prop_map(|(id, valid, values)| RowSpec { id, valid, values })
}

/// One batch line as the host writes it, cells pretty-printed at times (a sink must not care
/// about whitespace inside a value, only about line breaks between rows).
fn write_line(out: &mut Vec<u8>, row: &RowSpec, spaced: bool) {
    out.extend_from_slice(b"{\"id\":");
    write_json_string(out, &row.id);
    out.extend_from_slice(if row.valid {
        b",\"valid\":true,\"values\":{"
    } else {
        b",\"valid\":false,\"values\":{"
    });
    for (index, (key, value)) in row.values.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_json_string(out, key);
        out.push(b':');
        if spaced {
            out.push(b' ');
            let pretty = serde_json::to_string_pretty(value).expect("serialises");
            // Pretty printing breaks lines; a batch line may hold spaces and tabs, not breaks.
            out.extend_from_slice(pretty.replace('\n', " \t").as_bytes());
        } else {
            serde_json::to_writer(&mut *out, value).expect("serialises");
        }
    }
    out.extend_from_slice(b"}}\n");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn rows_round_trip_through_the_batch_parser(
        rows in prop::collection::vec(row(), 0..6),
        spaced in any::<bool>(),
    ) {
        let mut ndjson = Vec::new();
        for row in &rows {
            write_line(&mut ndjson, row, spaced);
        }
        let batch = Batch::from_parts(BatchParts {
            stream: "s",
            row_count: rows.len() as u64,
            ndjson: &ndjson,
            ..BatchParts::default()
        });
        let read: Vec<Row<'_>> = batch
            .rows()
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(read.len(), rows.len());
        for (got, want) in read.iter().zip(&rows) {
            prop_assert_eq!(got.id.as_ref(), want.id.as_str());
            prop_assert_eq!(got.valid, want.valid);
            prop_assert_eq!(got.values.len(), want.values.len());
            for ((key, raw), (want_key, want_value)) in got.values.iter().zip(&want.values) {
                prop_assert_eq!(key.as_ref(), want_key.as_str());
                let value: Value = serde_json::from_str(raw.get()).expect("a cell is JSON");
                prop_assert_eq!(&value, want_value);
                let typed = CellValue::parse(raw).map_err(|e| TestCaseError::fail(e.to_string()))?;
                match (typed, want_value) {
                    (CellValue::Null, Value::Null) => {}
                    (CellValue::Bool(b), Value::Bool(w)) => prop_assert_eq!(b, *w),
                    (CellValue::Number(text), Value::Number(_)) => {
                        prop_assert_eq!(&serde_json::from_str::<Value>(text).expect("number"), want_value);
                    }
                    (CellValue::String(s), Value::String(w)) => prop_assert_eq!(s.as_ref(), w.as_str()),
                    (CellValue::Json(text), Value::Array(_) | Value::Object(_)) => {
                        prop_assert_eq!(&serde_json::from_str::<Value>(&text).expect("JSON"), want_value);
                        // Compact: re-serialising the value gives the same text.
                        prop_assert_eq!(text.as_ref(), want_value.to_string());
                    }
                    (typed, want) => prop_assert!(false, "{typed:?} typed from {want}"),
                }
            }
            // What a sink writes back out is the same object, on one line.
            let mut written = Vec::new();
            got.write_values_json(&mut written);
            prop_assert!(!written.contains(&b'\n'));
            let written: Value = serde_json::from_slice(&written).expect("written values are JSON");
            let want_values: serde_json::Map<String, Value> = want.values.iter().cloned().collect();
            prop_assert_eq!(written, Value::Object(want_values));
            // Without the spaces, the whole row comes back as the line the host wrote.
            if !spaced {
                let (mut line, mut want_line) = (Vec::new(), Vec::new());
                got.write_json(RowJson::Full, &mut line);
                line.push(b'\n');
                write_line(&mut want_line, want, false);
                prop_assert_eq!(line, want_line);
            }
        }
    }

    #[test]
    fn a_miscounted_batch_is_refused_naming_the_stream(
        rows in prop::collection::vec(row(), 1..4),
        off_by in 1u64..3,
        more in any::<bool>(),
    ) {
        let mut ndjson = Vec::new();
        for row in &rows {
            write_line(&mut ndjson, row, false);
        }
        let lines = rows.len() as u64;
        let row_count = if more { lines + off_by } else { lines.saturating_sub(off_by) };
        let batch = Batch::from_parts(BatchParts {
            stream: "contacts-us_evt_1",
            row_count,
            ndjson: &ndjson,
            ..BatchParts::default()
        });
        let results: Vec<_> = batch.rows().collect();
        let errors: Vec<String> =
            results.iter().filter_map(|r| r.as_ref().err()).map(ToString::to_string).collect();
        prop_assert_eq!(errors.len(), 1, "exactly one error, then the rows end");
        prop_assert!(results.last().is_some_and(Result::is_err), "the error comes last");
        prop_assert!(errors[0].contains("contacts-us_evt_1"), "{}", errors[0]);
        prop_assert!(results.len() as u64 <= lines.max(row_count) + 1);
    }

    #[test]
    fn fields_round_trip(fields in prop::collection::vec(any::<String>(), 0..6), spaced in any::<bool>()) {
        let text = if spaced {
            serde_json::to_string_pretty(&fields).expect("serialises")
        } else {
            serde_json::to_string(&fields).expect("serialises")
        };
        let batch = Batch::from_parts(BatchParts { fields_json: &text, ..BatchParts::default() });
        let read = batch.fields().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let read: Vec<&str> = read.iter().map(AsRef::as_ref).collect();
        prop_assert_eq!(read, fields.iter().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn compacting_keeps_the_value_and_is_idempotent(value in cell()) {
        let pretty = serde_json::to_string_pretty(&value).expect("serialises");
        let compact = compact_json(&pretty);
        prop_assert_eq!(compact.as_ref(), value.to_string());
        let again = compact_json(&compact);
        prop_assert_eq!(again.as_ref(), compact.as_ref());
    }
}
