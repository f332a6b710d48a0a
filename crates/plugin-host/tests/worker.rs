//! Sink workers driving the C counter sink (tests/c/counter_sink.c) through the real ABI.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flatsync_plugin_host::{LoadedPlugin, OwnedBatch, SinkError, SinkOptions, SinkWorker};

struct Fixture {
    // Kept for its Drop: the directory holds the library and the record files.
    _dir: tempfile::TempDir,
    plugin: Arc<LoadedPlugin>,
    root: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = common::counter_sink(dir.path());
    let plugin = LoadedPlugin::load(&path, Some("counter")).expect("counter sink loads");
    let root = dir.path().to_path_buf();
    Fixture {
        _dir: dir,
        plugin,
        root,
    }
}

/// Config for the counter sink: records into `record`, plus extra integer keys.
fn config(record: &Path, extra: &[(&str, i64)]) -> String {
    let mut json = format!(r#"{{"record": "{}""#, record.display());
    for (key, value) in extra {
        json.push_str(&format!(r#", "{key}": {value}"#));
    }
    json.push('}');
    json
}

fn fast_options() -> SinkOptions {
    SinkOptions {
        call_timeout: Duration::from_secs(10),
        retry_initial: Duration::from_millis(1),
        retry_max: Duration::from_millis(5),
        max_attempts: 10,
    }
}

fn batch(seq: u64, last: bool) -> Arc<OwnedBatch> {
    let ndjson = format!(
        "{{\"id\":\"r{seq}a\",\"valid\":true,\"values\":{{\"email\":\"a@example.com\"}}}}\n\
         {{\"id\":\"r{seq}b\",\"valid\":false,\"values\":{{\"email\":null}}}}\n"
    );
    Arc::new(OwnedBatch {
        stream: "contacts-evt_1".to_owned(),
        kind: "contacts".to_owned(),
        event_id: "evt_1".to_owned(),
        fields_json: r#"["email"]"#.to_owned(),
        seq,
        row_count: 2,
        ndjson: ndjson.into_bytes().into(),
        received_at_ms: 1_700_000_000_123,
        last,
        deletions: false,
    })
}

fn deletion_batch() -> Arc<OwnedBatch> {
    let ndjson = "{\"id\":\"r1\",\"valid\":true,\"values\":{}}\n";
    Arc::new(OwnedBatch {
        stream: "contacts-deleted-evt_2".to_owned(),
        kind: "contacts".to_owned(),
        event_id: "evt_2".to_owned(),
        fields_json: "[]".to_owned(),
        seq: 0,
        row_count: 1,
        ndjson: ndjson.as_bytes().to_vec().into(),
        received_at_ms: 1_700_000_000_123,
        last: true,
        deletions: true,
    })
}

fn byte_sum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

fn writes(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.starts_with("write ")).collect()
}

/// What the counter sink recorded for one deletion batch, built with `defines`.
async fn deletion_as_seen_by(defines: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = common::compile_c(
        "counter_sink.c",
        dir.path(),
        "libflatsync_sink_counter.so",
        defines,
    );
    let plugin = LoadedPlugin::load(&path, Some("counter")).expect("counter sink loads");
    let record = dir.path().join("deletions.log");
    let worker = SinkWorker::spawn(plugin, "d", config(&record, &[]), fast_options())
        .await
        .expect("sink starts");
    worker
        .write_batch(deletion_batch())
        .await
        .expect("accepted");
    worker.shutdown().await;
    let lines = common::recorded(&record);
    writes(&lines)
        .first()
        .map(|l| (*l).clone())
        .expect("one write recorded")
}

#[tokio::test]
async fn deletions_go_flagged_only_to_plugins_that_declare_them() {
    let declared = deletion_as_seen_by(&["VARIANT_DELETIONS"]).await;
    assert!(
        declared.contains(" flags=3 ") && declared.contains(" kind=contacts "),
        "LAST|DELETIONS on the sheet's own kind: {declared}"
    );
    let undeclared = deletion_as_seen_by(&[]).await;
    assert!(
        undeclared.contains(" flags=1 ") && undeclared.contains(" kind=contacts_deleted "),
        "a plugin that never heard of deletions gets them as rows of their own kind: {undeclared}"
    );
}

#[tokio::test]
async fn create_write_flush_shutdown_round_trip() {
    let fx = fixture();
    let record = fx.root.join("round-trip.log");
    let worker = SinkWorker::spawn(
        Arc::clone(&fx.plugin),
        "orders",
        config(&record, &[]),
        fast_options(),
    )
    .await
    .expect("sink starts");
    assert_eq!(worker.instance_name(), "orders");
    assert_eq!(worker.plugin().name(), "counter");

    let first = batch(0, false);
    let second = batch(1, true);
    worker
        .write_batch(Arc::clone(&first))
        .await
        .expect("seq 0 accepted");
    worker
        .write_batch(Arc::clone(&second))
        .await
        .expect("seq 1 accepted");
    worker.flush().await.expect("flush ok");
    worker.shutdown().await;

    let lines = common::recorded(&record);
    assert_eq!(lines.len(), 6, "{lines:#?}");
    assert_eq!(
        lines[0],
        "create name=orders thread=sink-orders host_size=24"
    );
    assert_eq!(lines[1], "check");
    let expected_write = |b: &OwnedBatch, flags: u32| {
        format!(
            "write thread=sink-orders size=112 flags={flags} stream=contacts-evt_1 kind=contacts \
             event=evt_1 fields=[\"email\"] seq={} rows=2 received=1700000000123 bytes={} sum={}",
            b.seq,
            b.ndjson.len(),
            byte_sum(&b.ndjson)
        )
    };
    assert_eq!(lines[2], expected_write(&first, 0));
    assert_eq!(lines[3], expected_write(&second, 1));
    assert_eq!(lines[4], "flush");
    assert_eq!(lines[5], "destroy");

    // Stopped for good, and a second shutdown is harmless.
    let err = worker
        .write_batch(batch(2, false))
        .await
        .expect_err("stopped");
    assert!(
        matches!(err, SinkError::Stopped { ref sink } if sink == "orders"),
        "{err:?}"
    );
    assert!(matches!(
        worker.flush().await,
        Err(SinkError::Stopped { .. })
    ));
    worker.shutdown().await;
    assert_eq!(common::recorded(&record).len(), 6);
}

#[tokio::test]
async fn retry_resends_the_same_batch_until_ok() {
    let fx = fixture();
    let record = fx.root.join("retry.log");
    let worker = SinkWorker::spawn(
        Arc::clone(&fx.plugin),
        "flaky",
        config(&record, &[("retries", 2), ("flush_retries", 1)]),
        fast_options(),
    )
    .await
    .expect("sink starts");

    worker
        .write_batch(batch(0, false))
        .await
        .expect("ok on the third attempt");
    worker
        .write_batch(batch(1, true))
        .await
        .expect("ok on the third attempt");
    worker.flush().await.expect("ok on the second attempt");
    worker.shutdown().await;

    let lines = common::recorded(&record);
    let writes = writes(&lines);
    assert_eq!(writes.len(), 6, "{lines:#?}");
    // Identical bytes on every attempt, and seq 1 only after seq 0 succeeded.
    assert!(
        writes[0..3]
            .iter()
            .all(|w| *w == writes[0] && w.contains(" seq=0 "))
    );
    assert!(
        writes[3..6]
            .iter()
            .all(|w| *w == writes[3] && w.contains(" seq=1 "))
    );
    assert_eq!(lines.iter().filter(|l| *l == "flush").count(), 2);
}

#[tokio::test]
async fn retries_run_out_with_the_last_message() {
    let fx = fixture();
    let record = fx.root.join("exhausted.log");
    let options = SinkOptions {
        max_attempts: 3,
        ..fast_options()
    };
    let worker = SinkWorker::spawn(
        Arc::clone(&fx.plugin),
        "busy",
        config(&record, &[("retries", 100)]),
        options,
    )
    .await
    .expect("sink starts");
    let err = worker
        .write_batch(batch(0, false))
        .await
        .expect_err("always busy");
    let SinkError::RetriesExhausted {
        ref sink,
        ref plugin,
        attempts,
        ref message,
    } = err
    else {
        panic!("expected RetriesExhausted, got {err:?}");
    };
    assert_eq!(
        (sink.as_str(), plugin.as_str(), attempts),
        ("busy", "counter", 3)
    );
    assert_eq!(message, "busy, attempt 3");
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
    worker.shutdown().await;
    assert_eq!(writes(&common::recorded(&record)).len(), 3);
}

#[tokio::test]
async fn fatal_carries_the_plugin_message() {
    let fx = fixture();
    let record = fx.root.join("fatal.log");
    let worker = SinkWorker::spawn(
        Arc::clone(&fx.plugin),
        "full",
        config(&record, &[("fatal", 1)]),
        fast_options(),
    )
    .await
    .expect("sink starts");
    let err = worker
        .write_batch(batch(0, false))
        .await
        .expect_err("fatal");
    assert!(
        matches!(err, SinkError::Fatal { ref message, .. } if message == "disk full"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "sink `full` (plugin `counter`) failed: disk full"
    );
    worker.shutdown().await;
    // FATAL is not retried.
    assert_eq!(writes(&common::recorded(&record)).len(), 1);
}

#[tokio::test]
async fn unknown_status_is_fatal() {
    let fx = fixture();
    for status in [7_i64, -1] {
        let record = fx.root.join(format!("status{status}.log"));
        let worker = SinkWorker::spawn(
            Arc::clone(&fx.plugin),
            "odd",
            config(&record, &[("status", status)]),
            fast_options(),
        )
        .await
        .expect("sink starts");
        let err = worker
            .write_batch(batch(0, false))
            .await
            .expect_err("fatal");
        let SinkError::Fatal { message, .. } = err else {
            panic!("expected Fatal, got {err:?}");
        };
        assert_eq!(
            message,
            format!("plugin returned status {status} without a message")
        );
        worker.shutdown().await;
        assert_eq!(writes(&common::recorded(&record)).len(), 1);
    }
}

#[tokio::test]
async fn create_failure_reports_the_plugin_message() {
    let fx = fixture();
    let record = fx.root.join("create.log");
    let err = SinkWorker::spawn(
        Arc::clone(&fx.plugin),
        "broken",
        config(&record, &[("fail_create", 1)]),
        fast_options(),
    )
    .await
    .expect_err("create fails");
    let SinkError::Create {
        ref sink,
        ref plugin,
        ref message,
    } = err
    else {
        panic!("expected Create, got {err:?}");
    };
    assert_eq!(
        (sink.as_str(), plugin.as_str(), message.as_str()),
        ("broken", "counter", "bad config: fail_create is set")
    );
    assert_eq!(
        err.to_string(),
        "sink `broken` (plugin `counter`) could not start: bad config: fail_create is set"
    );

    let err = SinkWorker::spawn(
        Arc::clone(&fx.plugin),
        "silent",
        config(&record, &[("create_status", 5)]),
        fast_options(),
    )
    .await
    .expect_err("create returns 5");
    assert!(
        matches!(err, SinkError::Create { ref message, .. }
            if message == "plugin returned status 5 without a message"),
        "{err:?}"
    );
}

#[tokio::test]
async fn failed_check_destroys_the_instance() {
    let fx = fixture();
    let record = fx.root.join("check.log");
    let err = SinkWorker::spawn(
        Arc::clone(&fx.plugin),
        "unreachable",
        config(&record, &[("fail_check", 1)]),
        fast_options(),
    )
    .await
    .expect_err("check fails");
    assert!(
        matches!(err, SinkError::Create { ref message, .. }
            if message == "check failed: target unreachable"),
        "{err:?}"
    );
    let lines = common::recorded(&record);
    assert_eq!(lines[1..], ["check", "destroy"], "{lines:#?}");
}

#[tokio::test]
async fn slow_call_stalls_the_worker_and_shutdown_does_not_wait() {
    let fx = fixture();
    let record = fx.root.join("slow.log");
    let options = SinkOptions {
        call_timeout: Duration::from_millis(300),
        ..fast_options()
    };
    let worker = SinkWorker::spawn(
        Arc::clone(&fx.plugin),
        "slow",
        config(&record, &[("sleep_ms", 3_000)]),
        options,
    )
    .await
    .expect("sink starts");

    let started = Instant::now();
    let err = worker
        .write_batch(batch(0, false))
        .await
        .expect_err("times out");
    let waited = started.elapsed();
    assert!(
        matches!(err, SinkError::Stalled { after, .. } if after == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert!(worker.is_stalled());

    // Later calls fail at once rather than queueing behind the stuck one.
    let started = Instant::now();
    assert!(matches!(
        worker.flush().await,
        Err(SinkError::Stalled { .. })
    ));
    assert!(matches!(
        worker.write_batch(batch(1, false)).await,
        Err(SinkError::Stalled { .. })
    ));
    worker.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn shutdown_gives_up_on_a_slow_destroy() {
    let fx = fixture();
    let record = fx.root.join("slow-destroy.log");
    let options = SinkOptions {
        call_timeout: Duration::from_millis(300),
        ..fast_options()
    };
    let worker = SinkWorker::spawn(
        Arc::clone(&fx.plugin),
        "lingering",
        config(&record, &[("destroy_sleep_ms", 3_000)]),
        options,
    )
    .await
    .expect("sink starts");
    worker.write_batch(batch(0, true)).await.expect("accepted");
    let started = Instant::now();
    worker.shutdown().await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert!(!common::recorded(&record).contains(&"destroy".to_owned()));
}

/// What a stopping daemon does with a sink whose thread is inside a call that outlives the
/// drain: the caller gave up (its task was aborted), the worker is not yet stalled, and
/// `shutdown_by` must return at its deadline instead of after the call timeout.
#[tokio::test]
async fn shutdown_by_leaves_a_thread_busy_in_a_call_at_its_deadline() {
    let fx = fixture();
    let record = fx.root.join("busy.log");
    let options = SinkOptions {
        call_timeout: Duration::from_secs(3600),
        ..fast_options()
    };
    let worker = SinkWorker::spawn(
        Arc::clone(&fx.plugin),
        "busy",
        config(&record, &[("sleep_ms", 20_000)]),
        options,
    )
    .await
    .expect("sink starts");
    let caller = {
        let worker = worker.clone();
        tokio::spawn(async move { worker.write_batch(batch(0, true)).await })
    };
    // The call is on the sink thread once the caller is waiting for its reply.
    tokio::time::sleep(Duration::from_millis(200)).await;
    caller.abort();
    assert!(!worker.is_stalled(), "the call timeout is far away");

    worker
        .shutdown_by(tokio::time::Instant::now() + Duration::from_millis(300))
        .await;
    // Returned while the plugin still sleeps in write_batch: neither the write nor destroy
    // has been recorded, and the worker takes no more calls.
    let lines = common::recorded(&record);
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("write") || l == "destroy"),
        "{lines:#?}"
    );
    assert!(worker.is_stalled());
    assert!(matches!(
        worker.flush().await,
        Err(SinkError::Stalled { .. })
    ));
}

#[tokio::test]
async fn dropping_every_handle_destroys_the_instance() {
    let fx = fixture();
    let record = fx.root.join("dropped.log");
    let worker = SinkWorker::spawn(
        Arc::clone(&fx.plugin),
        "dropped",
        config(&record, &[]),
        fast_options(),
    )
    .await
    .expect("sink starts");
    let clone = worker.clone();
    worker.write_batch(batch(0, true)).await.expect("accepted");
    drop(worker);
    drop(clone);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !common::recorded(&record).contains(&"destroy".to_owned()) {
        assert!(Instant::now() < deadline, "destroy never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_run_on_their_own_threads_in_parallel() {
    let fx = fixture();
    let record_a = fx.root.join("a.log");
    let record_b = fx.root.join("b.log");
    // Each write takes 400 ms; run in parallel, 3 writes on each of two sinks take ~1.2 s,
    // one after the other they would take 2.4 s.
    let a = SinkWorker::spawn(
        Arc::clone(&fx.plugin),
        "alpha",
        config(&record_a, &[("sleep_ms", 400)]),
        fast_options(),
    )
    .await
    .expect("alpha starts");
    let b = SinkWorker::spawn(
        Arc::clone(&fx.plugin),
        "beta",
        config(&record_b, &[("sleep_ms", 400)]),
        fast_options(),
    )
    .await
    .expect("beta starts");

    let started = Instant::now();
    let run = |worker: SinkWorker| async move {
        for seq in 0..3 {
            worker.write_batch(batch(seq, seq == 2)).await?;
        }
        worker.flush().await?;
        worker.shutdown().await;
        Ok::<_, SinkError>(())
    };
    let (ra, rb) = tokio::join!(run(a), run(b));
    ra.expect("alpha ok");
    rb.expect("beta ok");
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        started.elapsed()
    );

    for (record, thread) in [(&record_a, "sink-alpha"), (&record_b, "sink-beta")] {
        let lines = common::recorded(record);
        let writes = writes(&lines);
        assert_eq!(writes.len(), 3);
        for (seq, line) in writes.iter().enumerate() {
            assert!(line.contains(&format!("thread={thread} ")), "{line}");
            assert!(line.contains(&format!(" seq={seq} ")), "{line}");
        }
        assert_eq!(lines.last().map(String::as_str), Some("destroy"));
    }
}

#[tokio::test]
async fn concurrent_callers_never_interleave_a_retried_batch() {
    let fx = fixture();
    let record = fx.root.join("serial.log");
    let worker = SinkWorker::spawn(
        Arc::clone(&fx.plugin),
        "serial",
        config(&record, &[("retries", 2)]),
        fast_options(),
    )
    .await
    .expect("sink starts");
    let other = worker.clone();
    let (first, second) = tokio::join!(
        worker.write_batch(batch(0, false)),
        other.write_batch(batch(1, true))
    );
    first.expect("seq 0");
    second.expect("seq 1");
    worker.shutdown().await;

    let lines = common::recorded(&record);
    let seqs: Vec<&str> = writes(&lines)
        .iter()
        .map(|l| if l.contains(" seq=0 ") { "0" } else { "1" })
        .collect();
    // Each batch's three attempts are contiguous.
    assert!(
        seqs == ["0", "0", "0", "1", "1", "1"] || seqs == ["1", "1", "1", "0", "0", "0"],
        "{seqs:?}"
    );
}
