//! Sink workers driving the C counter sink (tests/c/counter_sink.c) through the real ABI.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flatsync_plugin_host::{
    HeldBatches, LoadedPlugin, OwnedBatch, SinkError, SinkOptions, SinkWorker,
};

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

impl Fixture {
    /// Starts an instance of the counter sink that is expected to start.
    async fn start(&self, name: &str, config: String, options: SinkOptions) -> SinkWorker {
        SinkWorker::spawn(Arc::clone(&self.plugin), name, config, options)
            .await
            .unwrap_or_else(|e| panic!("sink {name} does not start: {e}"))
    }
}

/// A file the counter sink waits for before going on with a call (its `gate` and
/// `destroy_gate` keys). While it is shut, a test knows the call is still inside the plugin,
/// however slow the machine, instead of guessing it from a sleep.
struct Gate {
    path: PathBuf,
}

impl Gate {
    fn new(dir: &Path, name: &str) -> Gate {
        Gate {
            path: dir.join(name),
        }
    }

    /// `config` with `key` naming this gate.
    fn in_config(&self, config: String, key: &str) -> String {
        let object = config.strip_suffix('}').expect("a JSON object");
        format!(r#"{object}, "{key}": "{}"}}"#, self.path.display())
    }

    fn open(&self) {
        std::fs::write(&self.path, b"").expect("open the gate");
    }
}

/// A guard against a hang, not a speed claim: only a broken worker comes near it.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// The call timeout of the tests about timeouts: far beyond what a loaded machine takes for a
/// quick call on the real clock, and reached at once on the paused one. Below [`HANG_GUARD`].
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// `call`, failing instead of hanging if it never returns. On a paused clock the guard fires
/// as soon as nothing else can happen, so a broken worker fails at once.
async fn bounded<T>(what: &str, call: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, call)
        .await
        .unwrap_or_else(|_| panic!("{what} never returned"))
}

/// Waits until the counter sink recorded `line`.
async fn until_recorded(record: &Path, line: &str) {
    let deadline = std::time::Instant::now() + HANG_GUARD;
    while !common::recorded(record).iter().any(|l| l == line) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never recorded {line:?}: {:#?}",
            record.display(),
            common::recorded(record)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Asserts that the paused clock moved by `expected`, up to the millisecond tokio's timer
/// rounds a deadline up to: a wait on a paused clock ends at the timer that fires, never later.
fn assert_waited(elapsed: Duration, expected: Duration, what: &str) {
    assert!(
        elapsed >= expected && elapsed <= expected + Duration::from_millis(1),
        "waited {elapsed:?} for {what}, expected {expected:?}"
    );
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
    let worker = fx
        .start("orders", config(&record, &[]), fast_options())
        .await;
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
    let worker = fx
        .start(
            "flaky",
            config(&record, &[("retries", 2), ("flush_retries", 1)]),
            fast_options(),
        )
        .await;

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

/// The seqs of the writes the counter sink recorded, in order.
fn written_seqs(record: &Path) -> Vec<u64> {
    writes(&common::recorded(record))
        .iter()
        .map(|line| {
            let seq = line.split(" seq=").nth(1).expect("a seq");
            seq.split(' ')
                .next()
                .unwrap_or(seq)
                .parse()
                .expect("a number")
        })
        .collect()
}

#[tokio::test]
async fn queued_writes_go_from_one_batch_to_the_next_without_their_caller() {
    let fx = fixture();
    let record = fx.root.join("queued.log");
    let worker = fx
        .start("ahead", config(&record, &[]), fast_options())
        .await;
    let first = worker.queue_write(batch(0, false), None);
    let second = worker.queue_write(batch(1, false), Some(&first));
    // Neither is finished yet: the instance wrote both on its own.
    bounded("both writes", until_recorded_seq(&record, 1)).await;
    bounded("seq 0", first.finish())
        .await
        .expect("seq 0 accepted");
    let third = worker.queue_write(batch(2, true), Some(&second));
    bounded("seq 1", second.finish())
        .await
        .expect("seq 1 accepted");
    bounded("seq 2", third.finish())
        .await
        .expect("seq 2 accepted");
    worker.shutdown().await;
    assert_eq!(written_seqs(&record), [0, 1, 2]);
}

/// Waits until the counter sink recorded a write of `seq`.
async fn until_recorded_seq(record: &Path, seq: u64) {
    while !written_seqs(record).contains(&seq) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_queued_write_not_accepted_leaves_its_chain_unwritten_and_each_is_sent_again_in_order() {
    let fx = fixture();
    let record = fx.root.join("chain.log");
    // Every batch is answered RETRY once, then OK.
    let worker = fx
        .start("flaky", config(&record, &[("retries", 1)]), fast_options())
        .await;
    let first = worker.queue_write(batch(0, false), None);
    let second = worker.queue_write(batch(1, false), Some(&first));
    let third = worker.queue_write(batch(2, true), Some(&second));
    bounded("seq 0", first.finish())
        .await
        .expect("seq 0 accepted on its retry");
    assert!(second.chain_broken(), "seq 0's RETRY broke the chain");
    bounded("seq 1", second.finish())
        .await
        .expect("seq 1 sent again");
    bounded("seq 2", third.finish())
        .await
        .expect("seq 2 sent again");
    // Queued once the broken chain's writes are finished, the next starts a chain of its own:
    // written, not left unwritten.
    let fresh = worker.queue_write(batch(3, true), None);
    assert!(!fresh.chain_broken());
    bounded("seq 3", fresh.finish())
        .await
        .expect("seq 3 accepted on its retry");
    worker.shutdown().await;
    // Had the instance written seq 1 after seq 0's RETRY, it would have come before seq 0's
    // retry (and been accepted there, the counter's RETRY being spent).
    assert_eq!(written_seqs(&record), [0, 0, 1, 1, 2, 2, 3, 3]);
}

#[tokio::test]
async fn a_fatal_queued_write_fails_and_nothing_queued_behind_it_is_written() {
    let fx = fixture();
    let record = fx.root.join("fatal-chain.log");
    let worker = fx
        .start("full", config(&record, &[("fatal", 1)]), fast_options())
        .await;
    let first = worker.queue_write(batch(0, false), None);
    let second = worker.queue_write(batch(1, true), Some(&first));
    let err = bounded("seq 0", first.finish()).await.expect_err("fatal");
    assert!(
        matches!(err, SinkError::Fatal { ref message, .. } if message == "disk full"),
        "{err:?}"
    );
    assert!(second.chain_broken());
    // The caller gives up on the stream: seq 1 is dropped unfinished. The shutdown is served
    // after it, so by then the instance has passed it over.
    drop(second);
    worker.shutdown().await;
    assert_eq!(written_seqs(&record), [0]);
}

#[tokio::test]
async fn retries_run_out_with_the_last_message() {
    let fx = fixture();
    let record = fx.root.join("exhausted.log");
    let options = SinkOptions {
        max_attempts: 3,
        ..fast_options()
    };
    let worker = fx
        .start("busy", config(&record, &[("retries", 100)]), options)
        .await;
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
    let worker = fx
        .start("full", config(&record, &[("fatal", 1)]), fast_options())
        .await;
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
        let worker = fx
            .start(
                "odd",
                config(&record, &[("status", status)]),
                fast_options(),
            )
            .await;
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
    let gate = Gate::new(&fx.root, "slow.gate");
    let call_timeout = CALL_TIMEOUT;
    let options = SinkOptions {
        call_timeout,
        ..fast_options()
    };
    let worker = fx
        .start(
            "slow",
            gate.in_config(config(&record, &[]), "gate"),
            options,
        )
        .await;

    // From here the clock moves only when every task waits for a timer: a wait is measured
    // exactly, and "at once" means no time passed at all.
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let err = bounded("the slow write", worker.write_batch(batch(0, false)))
        .await
        .expect_err("times out");
    assert!(
        matches!(err, SinkError::Stalled { after, .. } if after == call_timeout),
        "{err:?}"
    );
    assert_waited(started.elapsed(), call_timeout, "the call timeout");
    assert!(worker.is_stalled());

    // Later calls fail at once rather than queueing behind the stuck one.
    let started = tokio::time::Instant::now();
    assert!(matches!(
        bounded("flush", worker.flush()).await,
        Err(SinkError::Stalled { .. })
    ));
    assert!(matches!(
        bounded("a second write", worker.write_batch(batch(1, false))).await,
        Err(SinkError::Stalled { .. })
    ));
    bounded("shutdown", worker.shutdown()).await;
    assert_eq!(started.elapsed(), Duration::ZERO, "no call waited");

    // All of that happened while the first write was inside the plugin, and it still is.
    tokio::time::resume();
    until_recorded(&record, "enter seq=0").await;
    let lines = common::recorded(&record);
    assert!(writes(&lines).is_empty(), "{lines:#?}");
    gate.open();
}

#[tokio::test]
async fn shutdown_gives_up_on_a_slow_destroy() {
    let fx = fixture();
    let record = fx.root.join("slow-destroy.log");
    let gate = Gate::new(&fx.root, "destroy.gate");
    let call_timeout = CALL_TIMEOUT;
    let options = SinkOptions {
        call_timeout,
        ..fast_options()
    };
    let config = gate.in_config(config(&record, &[]), "destroy_gate");
    let worker = fx.start("lingering", config, options).await;
    worker.write_batch(batch(0, true)).await.expect("accepted");

    tokio::time::pause();
    let started = tokio::time::Instant::now();
    bounded("shutdown", worker.shutdown()).await;
    assert_waited(
        started.elapsed(),
        call_timeout,
        "destroy, up to the call timeout",
    );
    tokio::time::resume();
    until_recorded(&record, "enter destroy").await;
    assert!(!common::recorded(&record).contains(&"destroy".to_owned()));

    // The thread left behind finishes destroy once the plugin returns.
    gate.open();
    until_recorded(&record, "destroy").await;
}

/// What a stopping daemon does with a sink whose thread is inside a call that outlives the
/// drain: the caller gave up (its task was aborted), the worker is not yet stalled, and
/// `shutdown_by` must return at its deadline instead of after the call timeout.
#[tokio::test]
async fn shutdown_by_leaves_a_thread_busy_in_a_call_at_its_deadline() {
    let fx = fixture();
    let record = fx.root.join("busy.log");
    let gate = Gate::new(&fx.root, "busy.gate");
    let options = SinkOptions {
        call_timeout: Duration::from_secs(3600),
        ..fast_options()
    };
    let worker = fx
        .start(
            "busy",
            gate.in_config(config(&record, &[]), "gate"),
            options,
        )
        .await;
    let caller = {
        let worker = worker.clone();
        tokio::spawn(async move { worker.write_batch(batch(0, true)).await })
    };
    until_recorded(&record, "enter seq=0").await;
    caller.abort();
    assert!(!worker.is_stalled(), "the call timeout is far away");

    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let drain = Duration::from_millis(300);
    bounded("shutdown_by", worker.shutdown_by(started + drain)).await;
    assert_waited(started.elapsed(), drain, "its deadline");
    // Returned while the plugin still waits in write_batch: neither the write nor destroy
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
        bounded("flush", worker.flush()).await,
        Err(SinkError::Stalled { .. })
    ));
    gate.open();
}

#[tokio::test]
async fn dropping_every_handle_destroys_the_instance() {
    let fx = fixture();
    let record = fx.root.join("dropped.log");
    let worker = fx
        .start("dropped", config(&record, &[]), fast_options())
        .await;
    let clone = worker.clone();
    worker.write_batch(batch(0, true)).await.expect("accepted");
    drop(worker);
    drop(clone);
    until_recorded(&record, "destroy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_run_on_their_own_threads_in_parallel() {
    let fx = fixture();
    let record_a = fx.root.join("a.log");
    let record_b = fx.root.join("b.log");
    // Every write waits at one gate, opened only once both sinks are inside a write: if one
    // sink's call held up the other's, the second would never get in.
    let gate = Gate::new(&fx.root, "parallel.gate");
    let options = SinkOptions {
        call_timeout: Duration::from_secs(3600),
        ..fast_options()
    };
    let a = fx
        .start(
            "alpha",
            gate.in_config(config(&record_a, &[]), "gate"),
            options.clone(),
        )
        .await;
    let b = fx
        .start(
            "beta",
            gate.in_config(config(&record_b, &[]), "gate"),
            options,
        )
        .await;

    let run = |worker: SinkWorker| async move {
        for seq in 0..3 {
            worker.write_batch(batch(seq, seq == 2)).await?;
        }
        worker.flush().await?;
        worker.shutdown().await;
        Ok::<_, SinkError>(())
    };
    let (ra, rb) = (tokio::spawn(run(a)), tokio::spawn(run(b)));
    until_recorded(&record_a, "enter seq=0").await;
    until_recorded(&record_b, "enter seq=0").await;
    gate.open();
    ra.await.expect("alpha task").expect("alpha ok");
    rb.await.expect("beta task").expect("beta ok");

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
    let worker = fx
        .start("serial", config(&record, &[("retries", 2)]), fast_options())
        .await;
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

/// The `held` lines the counter sink recorded, from a fresh build with `defines` asked about
/// `contacts-evt_1` with `extra` config keys, and what the worker answered.
async fn held_as_seen_by(
    defines: &[&str],
    extra: &[(&str, i64)],
) -> (Result<Option<HeldBatches>, SinkError>, Vec<String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = common::compile_c(
        "counter_sink.c",
        dir.path(),
        "libflatsync_sink_counter.so",
        defines,
    );
    let plugin = LoadedPlugin::load(&path, Some("counter")).expect("counter sink loads");
    let record = dir.path().join("held.log");
    let worker = SinkWorker::spawn(plugin, "h", config(&record, extra), fast_options())
        .await
        .expect("sink starts");
    let answer = bounded("held", worker.held("contacts-evt_1")).await;
    worker.shutdown().await;
    let lines = common::recorded(&record)
        .into_iter()
        .filter(|line| line.starts_with("held "))
        .collect();
    (answer, lines)
}

#[tokio::test]
async fn a_1_2_plugin_is_asked_what_it_holds_on_its_own_thread() {
    let (answer, lines) =
        held_as_seen_by(&[], &[("held", 1), ("held_seq", 6), ("held_rows", 700)]).await;
    assert_eq!(
        answer.expect("held answers"),
        Some(HeldBatches { seq: 6, rows: 700 })
    );
    assert_eq!(
        lines,
        ["held thread=sink-h size=24 holds=0 stream=contacts-evt_1"],
        "asked once, on the instance's thread, with the host's struct size and NOTHING preset"
    );

    let (answer, lines) = held_as_seen_by(&[], &[]).await;
    assert_eq!(answer.expect("held answers"), None, "nothing to tell");
    assert_eq!(lines.len(), 1, "{lines:?}");
}

#[tokio::test]
async fn held_is_retried_like_any_call() {
    let (answer, lines) = held_as_seen_by(
        &[],
        &[
            ("held", 1),
            ("held_seq", 2),
            ("held_rows", 5),
            ("held_retries", 2),
        ],
    )
    .await;
    assert_eq!(
        answer.expect("held answers after two RETRYs"),
        Some(HeldBatches { seq: 2, rows: 5 })
    );
    assert_eq!(lines.len(), 3, "two RETRYs and the answer: {lines:?}");
}

#[tokio::test]
async fn a_1_1_descriptor_loads_and_is_never_asked_what_it_holds() {
    // Its `held` pointer is set, but its struct_size ends before it: a 1.1 plugin has no such
    // field, and whatever follows its descriptor in memory is not the host's to read.
    let (answer, lines) = held_as_seen_by(
        &["VARIANT_ABI_1_1"],
        &[("held", 1), ("held_seq", 6), ("held_rows", 700)],
    )
    .await;
    assert_eq!(
        answer.expect("a 1.1 plugin answers"),
        None,
        "nothing to tell"
    );
    assert!(lines.is_empty(), "held was called: {lines:?}");
}
