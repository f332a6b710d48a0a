//! The sqlite sink's write path: `write_batch` of batches of 1,000 rows of 10 fields, in
//! flatsync's line layout, each the next batch of one long stream.
//!
//! Run with `cargo bench -p flatsync-sink-sqlite --bench write`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flatsync_plugin_sdk::serde_json::{Value, json};
use flatsync_plugin_sdk::{Batch, BatchParts, CreateContext, Logger, Sink};
use flatsync_sink_sqlite::SqliteSink;
use flatsync_test_kit::bench;

const ROWS: u64 = 1_000;

/// Batches between two flushes: the daemon's default `checkpoint_batches`, so that the
/// durable configuration pays its syncs as often as a delivered stream does.
const CHECKPOINT_BATCHES: u64 = 64;

/// A sink's config for a folder to write into.
type Config = fn(&std::path::Path) -> Value;

/// The configurations measured: the default (`synchronous = "full"`: every flush syncs, as
/// the checkpoints need) and `"normal"`, which shows the CPU cost alone.
const CONFIGS: &[(&str, Config)] = &[
    (
        "write_batch_full",
        |dir| json!({ "path": dir.join("bench.db") }),
    ),
    (
        "write_batch_normal",
        |dir| json!({ "path": dir.join("bench.db"), "synchronous": "normal" }),
    ),
];

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

/// Times `iters` batches written after a first one, with a flush every
/// [`CHECKPOINT_BATCHES`] and at the end, into a fresh folder per sample so the files stay
/// small.
fn write_batches(config: impl Fn(&std::path::Path) -> Value, iters: u64) -> Duration {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let context = CreateContext::new("bench", Logger::discard());
    let mut sink = SqliteSink::create(&context, config(dir.path())).expect("the sink starts");
    let elapsed = bench::time_batches(iters, ROWS, |lines, seq| {
        sink.write_batch(&batch(lines, seq))
            .expect("the batch is written");
        if seq % CHECKPOINT_BATCHES == 0 {
            sink.flush().expect("the sink flushes");
        }
    });
    let start = std::time::Instant::now();
    sink.flush().expect("the sink flushes");
    elapsed + start.elapsed()
}

fn writing(c: &mut Criterion) {
    let mut group = c.benchmark_group("sqlite");
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
