//! Checks the fuzz targets share: what a batch line must look like wherever it is produced.

use flatsync_plugin_sdk::{Batch, BatchParts, CellValue, Row};
use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// Asserts that `ndjson` holds exactly `rows` batch lines, each
/// `{"id":<non-empty string>,"valid":<bool>,"values":{…}}` on one line, and that a sink reading
/// them through the SDK sees the same rows: the contract between the host and every plugin.
pub fn assert_batch_lines(ndjson: &[u8], rows: u64, what: &str) {
    if rows == 0 {
        assert!(
            ndjson.is_empty(),
            "{what}: 0 rows but {} bytes",
            ndjson.len()
        );
        return;
    }
    assert_eq!(
        ndjson.last(),
        Some(&b'\n'),
        "{what}: the last line is unterminated"
    );
    let lines: Vec<&[u8]> = ndjson[..ndjson.len() - 1].split(|&b| b == b'\n').collect();
    assert_eq!(
        lines.len() as u64,
        rows,
        "{what}: line count and row count differ"
    );
    for (index, line) in lines.iter().enumerate() {
        // Raw values: a cell may hold a number no f64 can (`1e400`), which is still JSON and
        // reaches the sink as the text it was.
        let fields: BTreeMap<String, &RawValue> =
            serde_json::from_slice(line).unwrap_or_else(|e| {
                panic!(
                    "{what}: line {index} is not a JSON object ({e}): {}",
                    String::from_utf8_lossy(line)
                )
            });
        let shown = String::from_utf8_lossy(line);
        let id = fields
            .get("id")
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
        assert!(
            id.is_some_and(|id| !id.is_empty()),
            "{what}: line {index} has no id: {shown}"
        );
        let valid = fields.get("valid").map(|raw| raw.get());
        assert!(
            matches!(valid, Some("true" | "false")),
            "{what}: line {index}: {shown}"
        );
        let values = fields.get("values").map(|raw| raw.get());
        assert!(
            values.is_some_and(|v| v.starts_with('{')),
            "{what}: line {index}: {shown}"
        );
        assert_eq!(
            fields.len(),
            3,
            "{what}: line {index} has extra keys: {shown}"
        );
    }

    let batch = Batch::from_parts(BatchParts {
        stream: "fuzz",
        kind: "fuzz",
        event_id: "fuzz",
        row_count: rows,
        ndjson,
        ..BatchParts::default()
    });
    let mut read = 0u64;
    let mut row = Row::default();
    let mut sdk_rows = batch.rows();
    while sdk_rows
        .read_into(&mut row)
        .unwrap_or_else(|e| panic!("{what}: the SDK refuses row {read}: {e}"))
    {
        let line: BTreeMap<String, &RawValue> =
            serde_json::from_slice(lines[read as usize]).expect("checked above");
        let id: String = serde_json::from_str(line["id"].get()).expect("checked above");
        assert_eq!(row.id.as_ref(), id, "{what}: row {read} id");
        assert_eq!(
            row.valid,
            line["valid"].get() == "true",
            "{what}: row {read} valid"
        );
        for (_, raw) in &row.values {
            CellValue::parse(raw).unwrap_or_else(|e| panic!("{what}: row {read} cell: {e}"));
        }
        read += 1;
    }
    assert_eq!(
        read, rows,
        "{what}: the SDK read a different number of rows"
    );
}
