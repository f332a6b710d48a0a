//! Events without data (`space:created`, `file:created`, ...) grouped into streams of many
//! events (`[events] streams = "grouped"`, the default): a folder sink holds a file per topic
//! family and window, not one per event, every event exactly once, across a SIGKILL in the
//! middle of the drain and across a sink that fails and is retried.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
use std::time::{SystemTime, UNIX_EPOCH};

use flatsync_tests::check::{Tally, csv_files, csv_leftovers};
use flatsync_tests::daemon::toml_string;
use flatsync_tests::{Artifacts, Daemon, DaemonProcess, TestDir, wait};
use serde_json::{Value, json};

use crate::common::{EVENT_DEADLINE, csv_ids};

/// The window of the tests' groups: short, so that streams close (and folder sinks publish
/// their files) while the test waits.
const WINDOW_SECS: u64 = 2;

/// The two topic families posted.
const TOPICS: [&str; 2] = ["space:created", "file:created"];

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// The `n`th event of a run: the two families in turn.
fn event_body(run: &str, n: usize) -> Value {
    let topic = TOPICS[n % 2];
    json!({
        "id": format!("us_evt_{run}_{n:05}"),
        "topic": topic,
        "domain": topic.split(':').next(),
        "createdAt": "2026-01-01T00:00:00.000Z",
        "context": {"environmentId": "us_env_grouped", "spaceId": format!("us_sp_{n}")},
        "payload": {"n": n},
    })
}

fn event_ids(run: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("us_evt_{run}_{n:05}")).collect()
}

/// Posts events `from..to` of `run`, each answered 200.
fn post_events(daemon: &DaemonProcess, run: &str, from: usize, to: usize) {
    for n in from..to {
        let reply = daemon.post(&event_body(run, n));
        assert_eq!(reply.status, 200, "event {n}: {}", reply.text());
    }
}

/// Runs an operator command on the daemon's config; panics naming the command if it fails.
fn cli(settings: &Daemon, args: &[&str]) -> Output {
    let config = settings.config_path();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", config.to_str().expect("UTF-8 test paths")]);
    let output = settings.cli(&all);
    assert!(
        output.status.success(),
        "flatsync {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn grouped_daemon(dir: &Path, extra: &str) -> Daemon {
    Daemon::new(dir)
        .sink_csv("archive")
        .route(&["*"], &["archive"])
        .raw(&format!(
            "[events]\nstreams = \"grouped\"\ngroup_window_secs = {WINDOW_SECS}\n{extra}"
        ))
}

/// Waits until the sink's folder holds only published files (every group stream closed).
fn wait_published(daemon: &DaemonProcess, csv_dir: &Path) {
    wait::until(
        "every group stream to close and its file to be published",
        EVENT_DEADLINE,
        || {
            daemon.assert_alive("while group streams closed");
            let left = csv_leftovers(csv_dir);
            (left.is_empty() && csv_dir.is_dir()).then_some(())
        },
        || {
            format!(
                "in progress: {:?}\n{}",
                csv_leftovers(csv_dir),
                daemon.log_tail()
            )
        },
    );
}

/// Every event id over every published file, with its count, and the files by name.
fn ids_in_files(csv_dir: &Path) -> (Tally, Vec<String>) {
    let files = csv_files(csv_dir);
    let mut tally = Tally::default();
    for file in files.values() {
        for (id, count) in csv_ids(file).seen {
            *tally.seen.entry(id).or_default() += count;
        }
    }
    (tally, files.keys().cloned().collect())
}

/// Windows of [`WINDOW_SECS`] touched between two times (seconds since the epoch).
fn windows_between(first: u64, last: u64) -> usize {
    (last / WINDOW_SECS - first / WINDOW_SECS + 1) as usize
}

#[test]
fn a_thousand_event_rows_land_in_a_handful_of_files_each_once() {
    let count = 1000;
    let dir = TestDir::new("grouped-thousand");
    let settings = grouped_daemon(dir.path(), "batch_events = 100\n");
    let csv_dir = settings.csv_dir("archive");
    let daemon = settings.start();
    let first = now_secs();
    post_events(&daemon, "k", 0, count);
    let last = now_secs();
    let ids = event_ids("k", count);
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    daemon.wait_done(&id_refs, EVENT_DEADLINE);
    wait_published(&daemon, &csv_dir);

    let (tally, files) = ids_in_files(&csv_dir);
    tally.assert_exactly(&ids, "the csv sink");
    let most = TOPICS.len() * windows_between(first, last);
    assert!(
        files.len() <= most,
        "{} files for {count} events over {} windows of {WINDOW_SECS} s: {files:?}",
        files.len(),
        windows_between(first, last)
    );
    for name in &files {
        assert!(
            name.starts_with("events-space-") || name.starts_with("events-file-"),
            "a file per topic family and window: {name}"
        );
    }
    // Each file holds one family's events only.
    for file in csv_files(&csv_dir).values() {
        let topic = file.column("topic").expect("a topic column");
        let topics: BTreeSet<&str> = file.records.iter().map(|r| r[topic].as_str()).collect();
        assert_eq!(topics.len(), 1, "{}: {topics:?}", file.path.display());
    }

    // `events show` names the stream and batch that carried an event; status counts its row.
    let detail = daemon.event_detail(&ids[7]).expect("stored");
    assert_eq!(detail.group_batches.len(), 1, "{:?}", detail.group_batches);
    let batch = &detail.group_batches[0];
    assert!(batch.durable, "{batch:?}");
    let stream = batch.stream.clone().expect("in a batch");
    assert!(
        files.contains(&format!("{stream}.csv")),
        "{stream} not in {files:?}"
    );
    assert!(batch.seq.is_some(), "{batch:?}");
    assert_eq!(detail.deliveries[0].streams, std::slice::from_ref(&stream));
    assert_eq!(daemon.checkpointed_rows_of("archive"), count as u64);
    let shown = cli(daemon.settings(), &["events", "show", &ids[7]]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    let seq = batch.seq.unwrap_or_default();
    assert!(
        shown.contains(&format!("stream {stream} batch {seq} ")),
        "{shown}"
    );
}

#[test]
fn a_kill_in_the_middle_of_the_drain_repeats_and_loses_nothing() {
    let count = 2000;
    let dir = TestDir::new("grouped-kill");
    let stall = dir.path().join("stall");
    std::fs::write(&stall, b"").expect("stall file");
    // The backlog piles up while the writer stands still, then drains in small batches.
    let settings =
        grouped_daemon(dir.path(), "batch_events = 25\n").env("FLATSYNC_TEST_STALL_FILE", &stall);
    let csv_dir = settings.csv_dir("archive");
    let mut daemon = settings.start();
    let first = now_secs();
    post_events(&daemon, "x", 0, count);
    assert_eq!(
        daemon.pending_events().len(),
        count,
        "a backlog of event rows"
    );
    std::fs::remove_file(&stall).expect("remove the stall file");
    wait::until(
        "part of the backlog to drain",
        EVENT_DEADLINE,
        || (daemon.pending_events().len() < count - 100).then_some(()),
        || daemon.log_tail(),
    );
    daemon.kill9();
    let pending = daemon.pending_events().len();
    assert!(
        pending > 0 && pending < count,
        "the kill landed in the middle of the drain: {pending} of {count} pending"
    );
    let partial = csv_leftovers(&csv_dir);
    daemon.restart();
    let ids = event_ids("x", count);
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    daemon.wait_done(&id_refs, EVENT_DEADLINE);
    wait_published(&daemon, &csv_dir);
    let last = now_secs();

    let (tally, files) = ids_in_files(&csv_dir);
    tally.assert_exactly(&ids, "the csv sink after a SIGKILL mid-drain");
    assert!(
        files.len() <= TOPICS.len() * windows_between(first, last),
        "{files:?} (in progress at the kill: {partial:?})"
    );
    assert_eq!(daemon.checkpointed_rows_of("archive"), count as u64);
}

/// The row ids a `fx-misbehave` ledger holds: what the sink made durable, flush by flush.
fn ledger_rows(path: &Path) -> Tally {
    let mut tally = Tally::default();
    if let Ok(content) = std::fs::read_to_string(path) {
        for id in content.lines() {
            *tally.seen.entry(id.to_owned()).or_default() += 1;
        }
    }
    tally
}

#[test]
fn a_failing_sink_marks_nothing_done_before_it_flushed_and_a_retry_sends_the_same_batch() {
    let count = 200;
    let dir = TestDir::new("grouped-failing");
    let plugin = Artifacts::locate()
        .fx_misbehave_plugin()
        .display()
        .to_string();
    let ledger = dir.path().join("ledger");
    let flaky = |mode: &str| {
        format!(
            "{{ mode = {}, after = 6, ledger = {} }}",
            toml_string(mode),
            toml_string(&ledger)
        )
    };
    let stall = dir.path().join("stall");
    std::fs::write(&stall, b"").expect("stall file");
    let settings = Daemon::new(dir.path())
        .sink("flaky", &plugin, &flaky("retry"))
        .route(&["*"], &["flaky"])
        .set("daemon", "sink_retry_attempts", "2")
        .set("daemon", "sink_retry_backoff_max_ms", "50")
        .raw("[events]\nbatch_events = 20\n")
        .env("FLATSYNC_TEST_STALL_FILE", &stall);
    let mut daemon = settings.start();
    post_events(&daemon, "f", 0, count);
    std::fs::remove_file(&stall).expect("remove the stall file");
    let ids = event_ids("f", count);
    let finals: BTreeMap<String, String> = ids
        .iter()
        .map(|id| (id.clone(), daemon.wait_final(id, EVENT_DEADLINE).status))
        .collect();

    // Six calls (batches of 20 and a flush) went through; then the sink answers RETRY until it
    // fails. Which events made it depends on how the batches fell; each is done exactly when
    // the sink flushed it.
    let durable = ledger_rows(&ledger);
    let done: Vec<&String> = finals
        .iter()
        .filter(|(_, s)| *s == "done")
        .map(|(id, _)| id)
        .collect();
    assert!(!done.is_empty() && done.len() < count, "{finals:?}");
    for id in &done {
        assert_eq!(
            durable.seen.get(*id),
            Some(&1),
            "{id} done but not flushed once"
        );
    }
    for (id, status) in &finals {
        if status != "done" {
            assert_eq!(status, "failed", "{id}");
            assert!(!durable.seen.contains_key(id), "{id} flushed but not done");
        }
    }
    let failed = daemon.event(&ids[100]).expect("stored");
    assert!(
        failed
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("sink `flaky`")),
        "{failed:?}"
    );
    let letters = cli(daemon.settings(), &["dead-letter", "list", "--json"]);
    let letters: Value = serde_json::from_slice(&letters.stdout).expect("dead letters as JSON");
    assert_eq!(letters.as_array().map(Vec::len), Some(count - done.len()));

    // Fixed and retried: the failed batch is sent again as it was, then the rest; each once.
    daemon.kill9();
    daemon.update_config(|s| s.replace_sink("flaky", &plugin, &flaky("ok")));
    daemon.restart();
    cli(daemon.settings(), &["dead-letter", "retry", "--all"]);
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    daemon.wait_done(&id_refs, EVENT_DEADLINE);
    ledger_rows(&ledger).assert_exactly(&ids, "the fixed sink's ledger");
    let detail = daemon.event_detail(&ids[100]).expect("stored");
    assert!(
        detail.group_batches.iter().all(|b| b.durable),
        "{:?}",
        detail.group_batches
    );
}
