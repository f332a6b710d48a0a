//! Full disks, on small tmpfs mounts: a full state directory refuses webhooks with 503 and
//! recovers by itself; a full sink folder pauses that sink with a retry naming the path and
//! `ENOSPC`, other deliveries go on, and the sink resumes from its checkpoint once space
//! returns. Nothing accepted is lost, nothing is counted that is not on disk.
//!
//! Mounting needs root, or `unshare -rm cargo test ...` as a normal user.

use std::path::Path;
use std::time::Duration;

use flatfile_sim::{SimConfig, legacy_row_ids, legacy_webhook_body};
use flatsync_tests::check::{CsvFile, csv_rows, jsonl_files, line_ids, sqlite_rows};
use flatsync_tests::daemon::{open_read_only, toml_string};
use flatsync_tests::disk::SmallDisk;
use flatsync_tests::{Daemon, HttpReply, Sim, TestDir, wait};

use crate::common::EVENT_DEADLINE;

/// Rows per legacy batch in these tests.
const ROWS: u64 = 3_000;

/// A legacy webhook body made large with an extra field, so a few of them fill a small disk.
fn padded_body(batch: &str, event: &str) -> Vec<u8> {
    let mut body = legacy_webhook_body(batch, event, ROWS);
    body["padding"] = serde_json::Value::String("x".repeat(48 * 1024));
    serde_json::to_vec(&body).expect("serialisable")
}

fn retry_after_secs(reply: &HttpReply) -> Option<u64> {
    reply
        .headers
        .iter()
        .find(|(name, _)| name == "retry-after")
        .and_then(|(_, value)| value.parse().ok())
}

#[test]
fn a_full_state_disk_answers_503_keeps_every_accepted_event_and_recovers_by_itself() {
    let sim = Sim::start(SimConfig {
        rows: ROWS,
        page_latency: Duration::from_millis(100),
        ..SimConfig::default()
    });
    let dir = TestDir::new("disk-state");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .route(&["portalImportSubmitted"], &["archive"])
        .page_size(500);
    let csv_dir = settings.csv_dir("archive");
    let state_disk = SmallDisk::mount(&dir.path().join("state"), 2 << 20);
    let daemon = settings.start();

    // Four events in delivery when the disk fills: their checkpoints and final statuses
    // cannot be written until space returns.
    let mut accepted = Vec::new();
    for n in 0..4 {
        let reply = daemon
            .post_raw(&padded_body(&format!("b-{n}"), &format!("evt-{n}")), None)
            .expect("the daemon answers");
        assert_eq!(reply.status, 200, "{}", reply.text());
        accepted.push(n.to_string());
    }
    wait::until(
        "the first rows checkpointed",
        EVENT_DEADLINE,
        || (daemon.checkpointed_rows() > 0).then_some(()),
        || daemon.log_tail(),
    );
    state_disk.fill();
    let accepted_before = accepted.len();
    // SQLite may still have room in pages it holds; the inbox refuses once it needs more.
    let mut refused = None;
    for n in 4..=200 {
        let reply = daemon
            .post_raw(&padded_body(&format!("b-{n}"), &format!("evt-{n}")), None)
            .expect("the daemon answers while its disk is full");
        match reply.status {
            200 => accepted.push(n.to_string()),
            503 => {
                refused = Some((n, reply));
                break;
            }
            other => panic!("webhook {n} on a full disk got {other}: {}", reply.text()),
        }
    }
    let (refused_n, reply) = refused.unwrap_or_else(|| {
        panic!(
            "200 webhooks were all answered 200 on a full state disk\n{}",
            daemon.log_tail()
        )
    });
    assert!(
        retry_after_secs(&reply).is_some(),
        "503 without Retry-After: {:?}",
        reply.headers
    );
    assert!(
        daemon.event(&format!("evt-{refused_n}")).is_none(),
        "a refused webhook is in the inbox"
    );
    // Events in delivery cannot write their checkpoints: they stop and stay pending.
    wait::until(
        "an event in delivery interrupted by the full state disk",
        EVENT_DEADLINE,
        || {
            daemon
                .log()
                .contains("Event processing interrupted; it stays pending")
                .then_some(())
        },
        || daemon.log_tail(),
    );
    daemon.assert_alive("with its state disk full");

    state_disk.empty();
    // The sender retries the refused webhook, as Flatfile would after Retry-After.
    wait::until(
        "the refused webhook accepted once space returned",
        EVENT_DEADLINE,
        || {
            let body = padded_body(&format!("b-{refused_n}"), &format!("evt-{refused_n}"));
            let reply = daemon.post_raw(&body, None).ok()?;
            (reply.status == 200).then_some(())
        },
        || daemon.log_tail(),
    );
    accepted.push(refused_n.to_string());

    let ids: Vec<String> = accepted.iter().map(|n| format!("evt-{n}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    daemon.wait_done(&ids, EVENT_DEADLINE * 2);
    let expected: Vec<String> = accepted
        .iter()
        .flat_map(|n| legacy_row_ids(sim.config(), &format!("b-{n}")))
        .collect();
    csv_rows(&csv_dir).assert_exactly(&expected, "archive after the state disk filled up");
    eprintln!(
        "state disk full: {accepted_before} events in delivery, {} more accepted while full, \
         webhook {refused_n} refused with 503 and accepted on retry; {} rows delivered once",
        accepted.len() - accepted_before - 1,
        expected.len()
    );
}

/// CSV records in every file of a csv-folder directory, finished or partial.
fn csv_records_on_disk(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter_map(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".csv") {
                Some(CsvFile::read(&p).records.len() as u64)
            } else if name.ends_with(".csv.partial") {
                Some(CsvFile::whole_records_of_partial(&p))
            } else {
                None
            }
        })
        .sum()
}

/// Where the sink under test keeps its rows, and how to count them there.
struct SinkOnSmallDisk {
    plugin: &'static str,
    /// The sink's inline config, given the mounted directory.
    config: fn(&Path) -> String,
    /// Rows on the disk now, finished or not.
    rows_on_disk: fn(&Path) -> u64,
    /// Record ids once the event is done.
    final_ids: fn(&Path) -> flatsync_tests::Tally,
}

fn sqlite_db(dir: &Path) -> std::path::PathBuf {
    dir.join("full.db")
}

const CSV_ON_SMALL_DISK: SinkOnSmallDisk = SinkOnSmallDisk {
    plugin: "csv-folder",
    config: |dir| format!("{{ dir = {} }}", toml_string(dir)),
    rows_on_disk: csv_records_on_disk,
    final_ids: csv_rows,
};

const SQLITE_ON_SMALL_DISK: SinkOnSmallDisk = SinkOnSmallDisk {
    plugin: "sqlite",
    config: |dir| format!("{{ path = {} }}", toml_string(sqlite_db(dir))),
    rows_on_disk: |dir| {
        open_read_only(&sqlite_db(dir)).map_or(0, |_| sqlite_rows(&sqlite_db(dir)).total())
    },
    final_ids: |dir| sqlite_rows(&sqlite_db(dir)),
};

#[test]
fn a_full_sink_folder_pauses_only_that_sink_and_it_resumes_from_its_checkpoint() {
    full_sink_disk(&CSV_ON_SMALL_DISK, "disk-csv");
}

#[test]
fn a_full_sink_database_disk_pauses_only_that_sink_and_it_resumes_from_its_checkpoint() {
    full_sink_disk(&SQLITE_ON_SMALL_DISK, "disk-sqlite");
}

fn full_sink_disk(sink: &SinkOnSmallDisk, name: &str) {
    let sim = Sim::start(SimConfig {
        rows: ROWS,
        ..SimConfig::default()
    });
    let dir = TestDir::new(name);
    let full_dir = dir.path().join("small-disk");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink("full", sink.plugin, &(sink.config)(&full_dir))
        .sink_jsonl("spare")
        .route(&["portalImportSubmitted"], &["spare"])
        .raw(
            "[[routes]]\ntopics = [\"portalImportSubmitted\"]\nsinks = [\"full\"]\n\
             filter = { batchId = \"b-full-*\" }\n",
        )
        .page_size(500)
        .set("daemon", "checkpoint_batches", "1");
    let spare_dir = settings.csv_dir("spare");
    // Room for the whole stream once emptied. Flatfile's record ids are random, so each batch
    // rewrites pages all over the table's index: in a like table the 3,000 rows leave 1.1 MB
    // of write-ahead log until it is copied back (0.8 MB with ids in order), besides the
    // 0.65 MB table, and 1 MB stayed full after emptying.
    let disk = SmallDisk::mount(&full_dir, 4 << 20);
    // Filled after the start, which checks that the sink can write. The room left takes a
    // few batches, so the disk fills up in the middle of the stream.
    let daemon = settings.start();
    disk.fill_leaving(160 * 1024);

    let reply = daemon.post(&legacy_webhook_body("b-full-1", "evt-both", ROWS));
    assert_eq!(reply.status, 200, "{}", reply.text());
    wait::until(
        "the full sink asking to retry with the path and ENOSPC",
        EVENT_DEADLINE,
        || {
            daemon
                .log()
                .lines()
                .any(|line| {
                    line.contains("Sink asked to retry")
                        && line.contains("ENOSPC")
                        && line.contains(&*full_dir.to_string_lossy())
                })
                .then_some(())
        },
        || daemon.log_tail(),
    );
    // Another event for the other sink is delivered while the full one waits for space.
    let reply = daemon.post(&legacy_webhook_body("b-other-1", "evt-spare", ROWS));
    assert_eq!(reply.status, 200, "{}", reply.text());
    daemon.wait_done(&["evt-spare"], EVENT_DEADLINE);
    assert_eq!(
        daemon.event("evt-both").map(|e| e.status).as_deref(),
        Some("pending"),
        "the event of the full sink must wait, neither done nor failed"
    );
    let counted = daemon.checkpointed_rows_of("full");
    let on_disk = (sink.rows_on_disk)(&full_dir);
    assert!(
        counted > 0,
        "no batch fitted before the disk filled: the test would prove nothing"
    );
    assert!(
        counted <= on_disk,
        "{counted} rows checkpointed for the full sink, {on_disk} on its disk"
    );

    disk.empty();
    daemon.wait_done(&["evt-both"], EVENT_DEADLINE * 2);
    let both = legacy_row_ids(sim.config(), "b-full-1");
    (sink.final_ids)(&full_dir).assert_exactly(&both, "the sink whose disk was full");
    let spare_lines: Vec<String> = jsonl_files(&spare_dir).into_values().flatten().collect();
    let mut expected = both.clone();
    expected.extend(legacy_row_ids(sim.config(), "b-other-1"));
    line_ids(&spare_lines).assert_exactly(&expected, "the other sink");
    eprintln!(
        "{} on a full disk: {counted} rows checkpointed with {on_disk} on disk while full",
        sink.plugin
    );
}
