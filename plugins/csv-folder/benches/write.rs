//! The csv-folder sink's write path: `write_batch` of batches of 1,000 rows of 10 fields, in
//! flatsync's line layout, each the next batch of one long stream.
//!
//! Run with `cargo bench -p flatsync-sink-csv-folder --bench write`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flatsync_plugin_sdk::serde_json::{Value, json};
use flatsync_plugin_sdk::{Batch, BatchParts, CreateContext, Logger, Sink};
use flatsync_sink_csv_folder::CsvFolder;

const ROWS: u64 = 1_000;

/// A sink's config for a folder to write into.
type Config = fn(&std::path::Path) -> Value;

/// The configurations measured: the defaults, and formula neutralisation on.
const CONFIGS: &[(&str, Config)] = &[
    ("write_batch", |dir| json!({ "dir": dir })),
    (
        "write_batch_neutralize",
        |dir| json!({ "dir": dir, "neutralize_formulas": true }),
    ),
];

/// One line per row, 10 fields of mixed types, as the converter writes them. `first` offsets
/// the record ids, so each batch holds new records.
fn ndjson(first: u64, rows: u64) -> Vec<u8> {
    const NAMES: [&str; 5] = ["Ada", "Grace", "Linus", "Zo\\u00eb", "Ken"];
    const NOTES: [&str; 4] = ["", "likes \\\"quotes\\\"", "a, b and c", "plain note"];
    let mut out = String::new();
    for index in first..first + rows {
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

fn batch(lines: &[u8], seq: u64) -> Batch<'_> {
    Batch::from_parts(BatchParts {
        stream: "legacy-bench",
        kind: "legacy_batch",
        event_id: "evt_bench",
        seq,
        row_count: ROWS,
        ndjson: lines,
        received_at_ms: 1_714_658_591_517,
        ..BatchParts::default()
    })
}

/// Times `iters` batches written after a first one (which opens the stream and writes any
/// header), into a fresh folder per sample so the files stay small.
fn write_batches(config: impl Fn(&std::path::Path) -> Value, iters: u64) -> Duration {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let context = CreateContext::new("bench", Logger::discard());
    let mut sink = CsvFolder::create(&context, config(dir.path())).expect("the sink starts");
    // Distinct ids per batch: the SQLite sink upserts, and updates cost more than inserts.
    let pages: Vec<Vec<u8>> = (0..=iters).map(|page| ndjson(page * ROWS, ROWS)).collect();
    sink.write_batch(&batch(&pages[0], 0))
        .expect("the first batch");
    let start = Instant::now();
    for (seq, lines) in pages.iter().enumerate().skip(1) {
        sink.write_batch(black_box(&batch(lines, seq as u64)))
            .expect("the batch is written");
    }
    let elapsed = start.elapsed();
    sink.flush().expect("the sink flushes");
    elapsed
}

fn writing(c: &mut Criterion) {
    let mut group = c.benchmark_group("csv-folder");
    group.throughput(Throughput::Elements(ROWS));
    for (name, config) in CONFIGS {
        group.bench_function(BenchmarkId::new(*name, ROWS), |b| {
            b.iter_custom(|iters| write_batches(config, iters));
        });
    }
    group.finish();
}

criterion_group!(benches, writing);
criterion_main!(benches);
