//! The SDK's batch parsing: a batch of 1,000 rows of 10 fields in flatsync's line layout, read
//! row by row as every sink reads it, then each cell typed as the CSV and SQLite sinks type it.
//!
//! Run with `cargo bench -p flatsync-plugin-sdk --bench batch`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flatsync_plugin_sdk::{Batch, BatchParts, CellValue, Row};
use flatsync_test_kit::bench;

const ROWS: u64 = 1_000;

fn parsing(c: &mut Criterion) {
    let lines = bench::ndjson_rows(0, ROWS);
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
