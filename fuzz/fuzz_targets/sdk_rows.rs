//! The sink side: how a plugin built on the SDK reads a batch's NDJSON rows and fields JSON.
//!
//! Input: one byte for `row_count` (high bit set: the number of lines, so the fuzzer explores
//! contents rather than miscounts), then `fields_json`, a NUL byte, then the NDJSON.
#![no_main]

use flatsync_plugin_sdk::{Batch, BatchParts, CellValue, Row, compact_json};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|input: &[u8]| {
    let Some((&count_byte, rest)) = input.split_first() else {
        return;
    };
    let (fields_json, ndjson) = match rest.iter().position(|&b| b == 0) {
        Some(nul) => (&rest[..nul], &rest[nul + 1..]),
        None => (&b""[..], rest),
    };
    let Ok(fields_json) = std::str::from_utf8(fields_json) else {
        return;
    };
    let lines = ndjson.split(|&b| b == b'\n').count() as u64
        - u64::from(ndjson.is_empty() || ndjson.ends_with(b"\n"));
    let row_count = if count_byte & 0x80 != 0 {
        lines
    } else {
        u64::from(count_byte)
    };
    let batch = Batch::from_parts(BatchParts {
        stream: "fuzz-stream",
        kind: "fuzz",
        event_id: "us_evt_fuzz",
        fields_json,
        seq: 7,
        row_count,
        ndjson,
        ..BatchParts::default()
    });

    match batch.fields() {
        Ok(fields) => {
            let expected: Vec<String> = if fields_json.trim().is_empty() {
                Vec::new()
            } else {
                // The SDK trims any Unicode whitespace around the array, JSON's and more.
                serde_json::from_str(fields_json.trim())
                    .expect("the SDK accepted it as an array of strings")
            };
            assert_eq!(fields, expected);
        }
        Err(error) => assert!(error.to_string().contains("fuzz-stream"), "{error}"),
    }

    let mut rows = batch.rows();
    let mut row = Row::default();
    let mut read = 0u64;
    let failed = loop {
        match rows.read_into(&mut row) {
            Ok(true) => {
                read += 1;
                check_row(&row);
            }
            Ok(false) => break false,
            Err(error) => {
                assert!(error.to_string().contains("fuzz-stream"), "{error}");
                break true;
            }
        }
    };
    // After the end or an error the iterator stays finished.
    assert!(matches!(rows.read_into(&mut row), Ok(false)));
    assert!(read <= row_count, "read {read} rows of {row_count}");
    if !failed {
        assert_eq!(read, row_count, "the rows ended early without an error");
    }
});

fn check_row(row: &Row<'_>) {
    for (_, raw) in &row.values {
        let typed = CellValue::parse(raw).expect("a cell from a row always types");
        // serde_json's `Value` refuses numbers beyond f64 (`1e400`), which are still JSON and
        // are passed on as their text; only the typing is checked for those.
        let Ok(expected) = serde_json::from_str::<Value>(raw.get()) else {
            continue;
        };
        match typed {
            CellValue::Null => assert!(expected.is_null()),
            CellValue::Bool(b) => assert_eq!(expected.as_bool(), Some(b)),
            CellValue::Number(text) => {
                assert!(expected.is_number());
                assert_eq!(serde_json::from_str::<Value>(text).ok(), Some(expected));
            }
            CellValue::String(s) => assert_eq!(expected.as_str(), Some(s.as_ref())),
            CellValue::Json(text) => {
                assert_eq!(serde_json::from_str::<Value>(&text).ok(), Some(expected));
                assert_eq!(compact_json(&text), text, "compacting is idempotent");
            }
        }
    }
    // The values a sink writes out read back as the same pairs.
    let mut values = Vec::new();
    row.write_values_json(&mut values);
    assert!(!values.contains(&b'\n'), "written values span lines");
    let mut line = br#"{"id":"r","valid":true,"values":"#.to_vec();
    line.extend_from_slice(&values);
    line.extend_from_slice(b"}\n");
    let batch = Batch::from_parts(BatchParts {
        row_count: 1,
        ndjson: &line,
        ..BatchParts::default()
    });
    let again = batch
        .rows()
        .next()
        .expect("one row")
        .expect("written values read back");
    assert_eq!(again.values.len(), row.values.len());
    for ((k1, v1), (k2, v2)) in row.values.iter().zip(&again.values) {
        assert_eq!(k1, k2);
        assert_eq!(v1.get(), v2.get());
    }
}
