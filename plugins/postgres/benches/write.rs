//! The postgres sink's write path: `write_batch` of batches of 1,000 rows of 10 fields, in
//! flatsync's line layout, each the next batch of one long stream, into a database of its own
//! on the server of `FLATSYNC_TEST_POSTGRES_URL` (default: the local one).
//!
//! Run with `cargo bench -p flatsync-sink-postgres --bench write`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flatsync_plugin_sdk::serde_json::json;
use flatsync_plugin_sdk::{Batch, BatchParts, CreateContext, Logger, Sink};
use flatsync_sink_postgres::PostgresSink;
use flatsync_test_kit::bench;
use flatsync_test_kit::postgres::TestDatabase;

const ROWS: u64 = 1_000;

fn batch<'a>(kind: &'a str, lines: &'a [u8], seq: u64) -> Batch<'a> {
    Batch::from_parts(BatchParts {
        stream: kind,
        kind,
        event_id: "evt_bench",
        seq,
        row_count: ROWS,
        ndjson: lines,
        received_at_ms: 1_714_658_591_517,
        ..BatchParts::default()
    })
}

/// Times `iters` batches written after a first one, into a new table per sample so that every
/// row is an insert and the tables stay small.
fn write_batches(db: &TestDatabase, sample: u64, iters: u64) -> Duration {
    let context = CreateContext::new("bench", Logger::discard());
    let mut sink =
        PostgresSink::create(&context, json!({ "url": db.url() })).expect("the sink starts");
    let kind = format!("bench_{sample}");
    let elapsed = bench::time_batches(iters, ROWS, |lines, seq| {
        sink.write_batch(&batch(&kind, lines, seq))
            .expect("the batch is written");
    });
    sink.flush().expect("the sink flushes");
    elapsed
}

fn writing(c: &mut Criterion) {
    let db = TestDatabase::create("bench_pg_sink");
    let mut group = c.benchmark_group("postgres");
    group.throughput(Throughput::Elements(ROWS));
    let mut sample = 0;
    group.bench_function(BenchmarkId::new("write_batch", ROWS), |b| {
        b.iter_custom(|iters| {
            sample += 1;
            write_batches(&db, sample, iters)
        });
    });
    group.finish();
}

criterion_group!(benches, writing);
criterion_main!(benches);
