//! Re-delivered webhooks: Flatfile (and proxies) may send the same notification again.

use std::sync::{Arc, Barrier};

use flatfile_sim::{legacy_row_ids, legacy_webhook_body};
use flatsync_tests::check::{csv_rows, sqlite_rows};
use flatsync_tests::{Daemon, Sim, TestDir};

use crate::common::EVENT_DEADLINE;

#[test]
fn the_same_webhook_sent_again_is_answered_duplicate_and_delivered_once() {
    let rows = 300;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("duplicates");
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["*"], &["archive", "warehouse"])
        .token("dup-token-0123")
        .page_size(64);
    let (csv_dir, db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
    );
    let daemon = settings.start();

    // Sent twice in a row.
    let first = legacy_webhook_body("b-dup-serial", "evt-dup-serial", rows);
    let reply = daemon.post(&first);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["status"], "accepted", "{}", reply.text());
    let reply = daemon.post(&first);
    assert_eq!(
        reply.status,
        200,
        "a repeat is still a success: {}",
        reply.text()
    );
    assert_eq!(reply.json()["status"], "duplicate", "{}", reply.text());
    assert_eq!(
        reply.json()["eventId"],
        "evt-dup-serial",
        "{}",
        reply.text()
    );

    // Sent three times at once: exactly one of them is the one that counts.
    let second = Arc::new(legacy_webhook_body(
        "b-dup-parallel",
        "evt-dup-parallel",
        rows,
    ));
    let barrier = Arc::new(Barrier::new(3));
    let url = daemon.url();
    let senders: Vec<_> = (0..3)
        .map(|_| {
            let (body, barrier, url) = (Arc::clone(&second), Arc::clone(&barrier), url.clone());
            std::thread::spawn(move || {
                let bytes = serde_json::to_vec(&*body).expect("serialisable");
                barrier.wait();
                flatsync_tests::http::post_json(&url, Some("dup-token-0123"), &bytes)
            })
        })
        .collect();
    let mut statuses: Vec<String> = senders
        .into_iter()
        .map(|sender| {
            let reply = sender
                .join()
                .expect("sender thread")
                .expect("the webhook is answered");
            assert_eq!(reply.status, 200, "{}", reply.text());
            reply.json()["status"]
                .as_str()
                .expect("a status string")
                .to_owned()
        })
        .collect();
    statuses.sort();
    assert_eq!(statuses, ["accepted", "duplicate", "duplicate"]);

    daemon.wait_done(&["evt-dup-serial", "evt-dup-parallel"], EVENT_DEADLINE);
    let mut expected = legacy_row_ids(sim.config(), "b-dup-serial");
    expected.extend(legacy_row_ids(sim.config(), "b-dup-parallel"));
    csv_rows(&csv_dir).assert_exactly(&expected, "csv-folder sink");
    sqlite_rows(&db).assert_exactly(&expected, "sqlite sink");
    let files = flatsync_tests::check::csv_files(&csv_dir);
    assert_eq!(files.len(), 2, "one file per batch: {:?}", files.keys());
}
