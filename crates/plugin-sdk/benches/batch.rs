//! The SDK's batch parsing: a batch of 1,000 rows of 10 fields in flatsync's line layout, read
//! row by row as every sink reads it, then each cell typed as the CSV and SQLite sinks type it.
//!
//! Run with `cargo bench -p flatsync-plugin-sdk --bench batch`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flatsync_plugin_sdk::{Batch, BatchParts, CellValue, Row};

const ROWS: u64 = 1_000;

/// One line per row, 10 fields of mixed types, as the converter writes them.
fn ndjson(rows: u64) -> Vec<u8> {
    const NAMES: [&str; 5] = ["Ada", "Grace", "Linus", "Zo\\u00eb", "Ken"];
    const NOTES: [&str; 4] = ["", "likes \\\"quotes\\\"", "a, b and c", "plain note"];
    let mut out = String::new();
    for index in 0..rows {
        let name = NAMES[(index % 5) as usize];
        let age = if index.is_multiple_of(8) {
            "null".to_owned()
        } else {
            (18 + index % 70).to_string()
        };
        out.push_str(&format!(
            "{{\"id\":\"3f1c2a9e-6b7d-4e2f-9a10-{index:012x}\",\"valid\":{},\"values\":{{\
             \"first_name\":\"{name}\",\"last_name\":\"Smith-{index}\",\
             \"email\":\"user.{index}@example.com\",\"age\":{age},\
             \"phone\":\"+1 555 {:04}\",\"city\":\"Berlin\",\"note\":\"{}\",\
             \"score\":{}.{:02},\"active\":{},\"signup\":\"2024-05-02\"}}}}\n",
            index % 10 != 7,
            index % 10_000,
            NOTES[(index % 4) as usize],
            index % 100,
            index % 97,
            !index.is_multiple_of(3),
        ));
    }
    out.into_bytes()
}

fn parsing(c: &mut Criterion) {
    let lines = ndjson(ROWS);
    let batch = Batch::from_parts(BatchParts {
        stream: "legacy-b",
        kind: "legacy_batch",
        row_count: ROWS,
        ndjson: &lines,
        ..BatchParts::default()
    });
    let mut group = c.benchmark_group("sdk");
    group.throughput(Throughput::Elements(ROWS));
    group.bench_function(BenchmarkId::new("rows", ROWS), |b| {
        b.iter(|| {
            let mut row = Row::default();
            let mut rows = black_box(batch).rows();
            let mut cells = 0_usize;
            while rows.read_into(&mut row).expect("the batch parses") {
                cells += row.values.len();
            }
            assert_eq!(cells, 10 * ROWS as usize);
            cells
        });
    });
    group.bench_function(BenchmarkId::new("rows_and_cells", ROWS), |b| {
        b.iter(|| {
            let mut row = Row::default();
            let mut rows = black_box(batch).rows();
            let mut strings = 0_usize;
            while rows.read_into(&mut row).expect("the batch parses") {
                for (_, value) in &row.values {
                    if let CellValue::String(_) = CellValue::parse(value).expect("JSON") {
                        strings += 1;
                    }
                }
            }
            strings
        });
    });
    group.finish();
}

criterion_group!(benches, parsing);
criterion_main!(benches);
