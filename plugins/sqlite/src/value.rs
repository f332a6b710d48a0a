//! JSON values to SQLite values (the mapping is in the crate docs), on the per-value path.
//!
//! [`CellValue::parse`] is the definition. The common shapes are typed here straight from
//! the value's text: a string without escapes is bound as it stands, and one with escapes
//! is unescaped into a buffer reused for every value instead of a new `String` each.
//! Anything unusual (whitespace around the value, an array or object, a lone surrogate
//! half, a control character) goes to the definition, so the result is the same for every
//! input.

use std::borrow::Cow;

use flatsync_plugin_sdk::serde_json::value::RawValue;
use flatsync_plugin_sdk::{CellValue, SinkError, unescape_json_string};
use rusqlite::types::ValueRef;

use crate::table::number;

/// The SQLite value of `raw`. An unescaped string lives in `scratch` until the next call.
pub(crate) fn sql_value<'v>(
    raw: &'v RawValue,
    scratch: &'v mut String,
) -> Result<ValueRef<'v>, SinkError> {
    let text = raw.get();
    match text.as_bytes() {
        [b'"', inner @ .., b'"'] => {
            if !inner.contains(&b'\\') {
                return Ok(ValueRef::Text(inner));
            }
            if unescape_json_string(&text[1..text.len() - 1], scratch) {
                return Ok(ValueRef::Text(scratch.as_bytes()));
            }
        }
        // A JSON number starts with `-` or a digit and ends with a digit.
        [b'-' | b'0'..=b'9', .., b'0'..=b'9'] | [b'0'..=b'9'] => return Ok(number(text)),
        b"null" => return Ok(ValueRef::Null),
        b"true" => return Ok(ValueRef::Integer(1)),
        b"false" => return Ok(ValueRef::Integer(0)),
        _ => {}
    }
    by_definition(raw, scratch)
}

/// [`sql_value`] through [`CellValue::parse`].
pub(crate) fn by_definition<'v>(
    raw: &'v RawValue,
    scratch: &'v mut String,
) -> Result<ValueRef<'v>, SinkError> {
    Ok(match CellValue::parse(raw)? {
        CellValue::Null => ValueRef::Null,
        CellValue::Bool(value) => ValueRef::Integer(i64::from(value)),
        CellValue::Number(text) => number(text),
        CellValue::String(Cow::Borrowed(text)) | CellValue::Json(Cow::Borrowed(text)) => {
            ValueRef::Text(text.as_bytes())
        }
        CellValue::String(Cow::Owned(text)) | CellValue::Json(Cow::Owned(text)) => {
            *scratch = text;
            ValueRef::Text(scratch.as_bytes())
        }
    })
}

#[cfg(test)]
mod tests {
    use flatsync_plugin_sdk::{Batch, BatchParts, Row};
    use rusqlite::types::{Value, ValueRef};

    use super::{by_definition, sql_value};

    /// Pieces of JSON string text, escapes of every kind among them.
    const PIECES: [&str; 24] = [
        "a",
        "Zoë",
        "😀",
        " ",
        ",",
        "\\\"",
        "\\\\",
        "\\/",
        "\\b",
        "\\f",
        "\\n",
        "\\r",
        "\\t",
        "\\u0041",
        "\\u00e9",
        "\\u20AC",
        "\\ud83d\\ude00",
        "\\uDBFF\\uDFFF",
        "\\ud83d",
        "\\ude00",
        "\\u0000",
        "\\u001f",
        "\\\\u0041",
        "\\ud83d\\u0041",
    ];

    fn owned(value: ValueRef<'_>) -> Value {
        match value {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(value) => Value::Integer(value),
            ValueRef::Real(value) => Value::Real(value),
            ValueRef::Text(text) => Value::Text(String::from_utf8_lossy(text).into_owned()),
            ValueRef::Blob(blob) => Value::Blob(blob.to_vec()),
        }
    }

    /// JSON values of every type, and strings made of [`PIECES`].
    fn corpus() -> Vec<String> {
        let mut values: Vec<String> = [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "7",
            "-42",
            "1.5",
            "-2.5e-3",
            "1e3",
            "1E400",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "12345678901234567890",
            " 1",
            "1 ",
            " \"x\" ",
            " null",
            "[]",
            "{}",
            "[1, \"a b\"]",
            "{\"k\": [1, \"a b\"]}",
            "\"\"",
            "\"plain\"",
        ]
        .iter()
        .map(|value| (*value).to_owned())
        .collect();
        // A fixed linear congruential sequence: the same strings on every run.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3000 {
            let mut text = String::from("\"");
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            for _ in 0..(state >> 60) % 7 {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                text.push_str(PIECES[(state >> 33) as usize % PIECES.len()]);
            }
            text.push('"');
            values.push(text);
        }
        values
    }

    #[test]
    fn typing_from_the_text_matches_the_definition() {
        let (mut fast_scratch, mut scratch) = (String::new(), String::new());
        let mut compared = 0;
        for value in corpus() {
            let line = format!("{{\"id\":\"r\",\"valid\":true,\"values\":{{\"v\":{value}}}}}\n");
            let batch = Batch::from_parts(BatchParts {
                stream: "s",
                kind: "k",
                event_id: "e",
                row_count: 1,
                ndjson: line.as_bytes(),
                ..BatchParts::default()
            });
            let mut row = Row::default();
            if !batch.rows().read_into(&mut row).unwrap_or(false) {
                continue;
            }
            let raw = row.values[0].1;
            let fast = sql_value(raw, &mut fast_scratch)
                .map(owned)
                .map_err(|error| error.message().to_owned());
            let defined = by_definition(raw, &mut scratch)
                .map(owned)
                .map_err(|error| error.message().to_owned());
            assert_eq!(fast, defined, "{}", raw.get());
            compared += 1;
        }
        assert!(compared > 3000, "only {compared} values were read");
    }
}
