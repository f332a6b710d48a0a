//! Unit tests of the operator commands, on temporary state databases filled through the
//! public [`StateDb`] API.

use std::path::Path;

use flatsync_test_kit::sqlite::damage_pages_holding;

use super::*;
use crate::config::{Config, SecretSource};
use crate::pipeline::route::TopicPattern;
use crate::state::{
    Checkpoint, DeliveryStatus, SCHEMA_VERSION, StateDb, StateError, StreamPlan, now_ms,
};

const TOPIC: &str = "portalImportSubmitted";

fn config(state_dir: &Path) -> Config {
    let text = format!(
        r#"
[daemon]
state_dir = "{}"

[sinks.archive]
plugin = "csv-folder"

[sinks.warehouse]
plugin = "sqlite"

[sinks.spare]
plugin = "csv-folder"

[[routes]]
topics = ["portal*"]
sinks = ["archive", "warehouse"]

[[routes]]
topics = ["job:ready"]
sinks = ["spare"]
"#,
        state_dir.display()
    );
    Config::parse(&text, Path::new("/etc/flatsync/config.toml")).expect("valid test config")
}

fn plan(stream: &str) -> StreamPlan {
    StreamPlan {
        stream: stream.to_owned(),
        kind: "legacy_batch".to_owned(),
        source_ref: stream.to_owned(),
        fields_json: "[]".to_owned(),
        page_size: 100,
        source: crate::state::StreamSource::LegacyBatch,
        sinks: None,
    }
}

fn checkpoint(sink: &str, stream: &str, next_seq: u64, rows: u64, complete: bool) -> Checkpoint {
    Checkpoint {
        sink: sink.to_owned(),
        stream: stream.to_owned(),
        next_seq,
        complete,
        rows,
    }
}

async fn add_event(db: &StateDb, id: &str, topic: &str, received_at_ms: i64) {
    let body = format!(r#"{{"event":"{id}","rows":[1,2]}}"#).into_bytes();
    assert!(
        db.insert_event(
            id.to_owned(),
            "legacy",
            topic.to_owned(),
            body,
            received_at_ms
        )
        .await
        .expect("insert")
    );
}

/// e-done: delivered to archive and warehouse (250 rows each).
/// e-fail: archive done (80 rows), warehouse failed after 40 rows.
/// e-pend: planned, archive has 30 rows checkpointed, warehouse none yet.
/// e-skip: skipped, never planned.
async fn sample(dir: &Path) -> StateDb {
    let db = StateDb::open(dir).expect("open state");
    fill(&db).await;
    db
}

/// Four events in `db`: `e-done` (both sinks done), `e-fail` (a dead letter in `warehouse`),
/// `e-pend` (`archive` part way), `e-skip` (no rows).
async fn fill(db: &StateDb) {
    let now = now_ms();
    add_event(db, "e-done", TOPIC, now - 60_000).await;
    add_event(db, "e-fail", TOPIC, now - 50_000).await;
    add_event(db, "e-pend", TOPIC, now - 40_000).await;
    add_event(db, "e-skip", "records:created", now - 30_000).await;
    let sinks = || vec!["archive".to_owned(), "warehouse".to_owned()];

    db.plan_event("e-done", sinks(), vec![plan("legacy-b1")])
        .await
        .unwrap();
    db.advance(
        "e-done",
        vec![
            checkpoint("archive", "legacy-b1", 3, 250, true),
            checkpoint("warehouse", "legacy-b1", 3, 250, true),
        ],
    )
    .await
    .unwrap();
    db.set_delivery("e-done", "archive", DeliveryStatus::Done, 250, None)
        .await
        .unwrap();
    db.set_delivery("e-done", "warehouse", DeliveryStatus::Done, 250, None)
        .await
        .unwrap();
    db.set_event_status("e-done", EventStatus::Done, None)
        .await
        .unwrap();

    db.plan_event("e-fail", sinks(), vec![plan("legacy-b2")])
        .await
        .unwrap();
    db.advance(
        "e-fail",
        vec![
            checkpoint("archive", "legacy-b2", 1, 80, true),
            checkpoint("warehouse", "legacy-b2", 1, 40, false),
        ],
    )
    .await
    .unwrap();
    db.set_delivery("e-fail", "archive", DeliveryStatus::Done, 80, None)
        .await
        .unwrap();
    db.set_delivery(
        "e-fail",
        "warehouse",
        DeliveryStatus::Failed,
        40,
        Some("disk full".to_owned()),
    )
    .await
    .unwrap();
    db.set_event_status(
        "e-fail",
        EventStatus::Failed,
        Some("sink `warehouse`: disk full".to_owned()),
    )
    .await
    .unwrap();

    db.plan_event("e-pend", sinks(), vec![plan("legacy-b3")])
        .await
        .unwrap();
    db.advance(
        "e-pend",
        vec![checkpoint("archive", "legacy-b3", 1, 30, false)],
    )
    .await
    .unwrap();

    db.set_event_status(
        "e-skip",
        EventStatus::Skipped,
        Some("carries no rows".to_owned()),
    )
    .await
    .unwrap();
}

fn sink<'a>(report: &'a StatusReport, name: &str) -> &'a SinkStatus {
    report
        .sinks
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no sink {name} in {report:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_events_deliveries_rows_lag_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    for backend in crate::state::testing::TestBackend::both("ops_status") {
        fill(&backend.state()).await;
        let ops = OpsDb::open_location(&backend.location(), true).expect("open read-only");
        status_of_the_sample(&ops, &config);
    }
}

/// What `status` says of [`fill`]'s events.
fn status_of_the_sample(ops: &OpsDb, config: &Config) {
    let report = ops.status(Some(config)).unwrap();

    let events: Vec<(&str, u64)> = report
        .events
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        events,
        [
            ("done", 1),
            ("failed", 1),
            ("pending", 1),
            ("skipped", 1),
            ("unrouted", 0)
        ]
    );

    let archive = sink(&report, "archive");
    assert_eq!(
        (archive.pending, archive.done, archive.failed),
        (1, 2, 0),
        "{archive:?}"
    );
    assert_eq!(
        archive.rows_delivered,
        250 + 80 + 30,
        "done rows plus checkpointed"
    );
    let lag = archive.lag_secs.expect("a pending delivery has a lag");
    assert!((39..=45).contains(&lag), "e-pend arrived 40 s ago: {lag}");
    assert!(archive.last_error.is_none());
    assert_eq!(archive.configured, Some(true));

    let warehouse = sink(&report, "warehouse");
    assert_eq!(
        (warehouse.pending, warehouse.done, warehouse.failed),
        (1, 1, 1)
    );
    assert_eq!(
        warehouse.rows_delivered, 250,
        "failed rows are not delivered rows"
    );
    let error = warehouse.last_error.as_ref().expect("a dead letter");
    assert_eq!(
        (error.event_id.as_str(), error.error.as_str()),
        ("e-fail", "disk full")
    );

    let spare = sink(&report, "spare");
    assert_eq!((spare.pending, spare.done, spare.rows_delivered), (0, 0, 0));
    assert_eq!(spare.lag_secs, None);

    let routes = report.routes.as_ref().expect("routes from the config");
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0].topics, ["portal*"]);
    assert_eq!(routes[0].sinks, ["archive", "warehouse"]);
    assert_eq!(routes[0].events_pending, 1);
    assert_eq!(routes[1].events_pending, 0);
    assert!(report.last_delivery_update_ms.is_some());

    // Without a config: no routes, no `configured` flags, only sinks with deliveries.
    let bare = ops.status(None).unwrap();
    assert!(bare.routes.is_none());
    assert_eq!(
        bare.sinks
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["archive", "warehouse"]
    );
    assert_eq!(bare.sinks[0].configured, None);
    let json = serde_json::to_value(&bare).unwrap();
    assert_eq!(json["events"]["pending"], 1);
    assert_eq!(json["sinks"][1]["last_error"]["event_id"], "e-fail");
}

#[tokio::test]
async fn live_lists_pending_deliveries_with_each_stream_s_rows_and_total() {
    let dir = tempfile::tempdir().unwrap();
    let db = sample(dir.path()).await;
    db.set_stream_total("e-pend", "legacy-b3", 1_000)
        .await
        .unwrap();
    // A newer event with two streams: `contacts` for both sinks, `extra` for archive only,
    // whose total is not known yet.
    add_event(&db, "e-two", TOPIC, now_ms() - 1_000).await;
    let mut extra = plan("extra");
    extra.sinks = Some(vec!["archive".to_owned()]);
    db.plan_event(
        "e-two",
        vec!["archive".to_owned(), "warehouse".to_owned()],
        vec![plan("contacts"), extra],
    )
    .await
    .unwrap();
    db.set_stream_total("e-two", "contacts", 500).await.unwrap();
    db.advance(
        "e-two",
        vec![
            checkpoint("archive", "contacts", 2, 200, false),
            checkpoint("archive", "extra", 1, 50, false),
            checkpoint("warehouse", "contacts", 5, 500, true),
        ],
    )
    .await
    .unwrap();

    let ops = OpsDb::open_read_only(dir.path()).unwrap();
    let live = ops.live(Some(&config(dir.path())), 10).unwrap();
    let bars: Vec<(&str, &str, u64, Option<u64>)> = live
        .in_flight
        .iter()
        .map(|d| {
            (
                d.event_id.as_str(),
                d.sink.as_str(),
                d.rows_done(),
                d.rows_expected(),
            )
        })
        .collect();
    assert_eq!(
        bars,
        [
            ("e-two", "archive", 250, None),
            ("e-two", "warehouse", 500, Some(500)),
            ("e-pend", "archive", 30, Some(1_000)),
            ("e-pend", "warehouse", 0, Some(1_000)),
        ],
        "newest event first; a sink counts only the streams it takes; one unknown total \
         leaves the expected rows unknown"
    );
    assert_eq!(live.in_flight_total, 4);
    assert_eq!(
        live.in_flight[0].streams,
        [
            StreamProgress {
                stream: "contacts".to_owned(),
                rows: 200,
                total_rows: Some(500),
                complete: false,
            },
            StreamProgress {
                stream: "extra".to_owned(),
                rows: 50,
                total_rows: None,
                complete: false,
            },
        ]
    );
    assert_eq!(
        sink(&live.status, "archive").pending,
        2,
        "the status comes along"
    );

    let one = ops.live(None, 1).unwrap();
    assert_eq!(one.in_flight.len(), 1, "the limit holds");
    assert_eq!(one.in_flight_total, 4, "the total counts past the limit");

    let detail = ops.show_event("e-two").unwrap().expect("stored");
    let totals: Vec<Option<u64>> = detail.streams.iter().map(|s| s.total_rows).collect();
    assert_eq!(totals, [Some(500), None], "events show carries the totals");

    // A replay delivers into fresh streams: its bars start from 0, not from the old checkpoints.
    drop(ops);
    OpsDb::open_for_update(dir.path())
        .unwrap()
        .replay(&ReplaySelector::Event("e-done".to_owned()), None, None)
        .unwrap();
    let live = OpsDb::open_read_only(dir.path())
        .unwrap()
        .live(None, 10)
        .unwrap();
    let replayed: Vec<_> = live
        .in_flight
        .iter()
        .filter(|d| d.event_id == "e-done")
        .collect();
    assert_eq!(replayed.len(), 2, "{live:?}");
    for delivery in replayed {
        assert_eq!(delivery.generation, 1);
        assert_eq!(delivery.streams[0].stream, "legacy-b1-r1");
        assert_eq!(delivery.rows_done(), 0, "{delivery:?}");
    }
}

#[tokio::test]
async fn events_are_listed_newest_first_with_filters_and_shown_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let _db = sample(dir.path()).await;
    let ops = OpsDb::open_read_only(dir.path()).unwrap();

    let all = ops.list_events(&EventFilter::default()).unwrap();
    let ids: Vec<&str> = all.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["e-skip", "e-pend", "e-fail", "e-done"]);
    assert_eq!(all[2].deliveries.len(), 2);
    assert_eq!(all[2].deliveries[1].status, DeliveryStatus::Failed);

    let failed = ops
        .list_events(&EventFilter {
            status: parse_event_status("failed"),
            ..EventFilter::default()
        })
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].event_id, "e-fail");

    let portal = ops
        .list_events(&EventFilter {
            topic: Some(TopicPattern::new("portal*")),
            limit: 2,
            ..EventFilter::default()
        })
        .unwrap();
    let ids: Vec<&str> = portal.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["e-pend", "e-fail"]);

    let shown = ops.show_event("e-fail").unwrap().expect("known event");
    assert_eq!(shown.body["event"], "e-fail");
    assert_eq!(shown.body["rows"][1], 2);
    assert_eq!(shown.streams.len(), 1);
    assert_eq!(shown.streams[0].stream, "legacy-b2");
    assert_eq!(shown.deliveries[1].error.as_deref(), Some("disk full"));
    assert_eq!(shown.deliveries[1].streams, ["legacy-b2"]);
    assert_eq!(shown.checkpoints.len(), 2);
    assert!(ops.show_event("nope").unwrap().is_none());
    assert!(parse_event_status("bogus").is_none());
}

#[tokio::test]
async fn replaying_an_event_bumps_every_delivery_into_fresh_streams() {
    let dir = tempfile::tempdir().unwrap();
    let db = sample(dir.path()).await;
    let mut ops = OpsDb::open_for_update(dir.path()).unwrap();
    let report = ops
        .replay(&ReplaySelector::Event("e-done".to_owned()), None, None)
        .unwrap();
    assert_eq!(
        report.queued,
        [
            QueuedDelivery {
                event_id: "e-done".into(),
                sink: "archive".into(),
                generation: 1,
                added: false
            },
            QueuedDelivery {
                event_id: "e-done".into(),
                sink: "warehouse".into(),
                generation: 1,
                added: false
            },
        ]
    );
    let event = db.event("e-done").await.unwrap().unwrap();
    assert_eq!(event.status, EventStatus::Pending);
    assert_eq!(event.detail, None);
    for delivery in db.deliveries("e-done").await.unwrap() {
        assert_eq!(
            (
                delivery.status.as_str(),
                delivery.rows,
                delivery.generation,
                delivery.error
            ),
            ("pending", 0, 1, None)
        );
    }
    // The first generation's checkpoints stay: they name the old streams.
    assert_eq!(db.checkpoints("e-done").await.unwrap().len(), 2);
    assert!(
        db.pending_events()
            .await
            .unwrap()
            .contains(&"e-done".to_owned())
    );

    // Status counts the new generation's checkpoints only.
    db.advance(
        "e-done",
        vec![checkpoint("archive", "legacy-b1-r1", 1, 100, false)],
    )
    .await
    .unwrap();
    let status = ops.status(None).unwrap();
    assert_eq!(sink(&status, "archive").rows_delivered, 80 + 30 + 100);

    // A second replay of the same event waits until the daemon is done with it.
    let err = ops
        .replay(&ReplaySelector::Event("e-done".to_owned()), None, None)
        .unwrap_err();
    assert!(err.to_string().contains("pending"), "{err}");
    let err = ops
        .replay(&ReplaySelector::Event("e-nope".to_owned()), None, None)
        .unwrap_err();
    assert!(matches!(err, OpsError::UnknownEvent(_)), "{err}");
}

#[tokio::test]
async fn replaying_for_one_sink_leaves_the_others_and_can_add_a_sink() {
    let dir = tempfile::tempdir().unwrap();
    let db = sample(dir.path()).await;
    let config = config(dir.path());
    let mut ops = OpsDb::open_for_update(dir.path()).unwrap();

    let report = ops
        .replay(
            &ReplaySelector::Event("e-fail".to_owned()),
            Some("archive"),
            Some(&config),
        )
        .unwrap();
    assert_eq!(report.queued.len(), 1);
    assert_eq!(report.queued[0].generation, 1);
    let deliveries = db.deliveries("e-fail").await.unwrap();
    assert_eq!(
        (deliveries[0].status.as_str(), deliveries[0].generation),
        ("pending", 1)
    );
    assert_eq!(
        (
            deliveries[1].status.as_str(),
            deliveries[1].generation,
            deliveries[1].rows
        ),
        ("failed", 0, 40),
        "warehouse untouched"
    );

    // A sink the event was never routed to gets a first delivery.
    db.set_event_status("e-fail", EventStatus::Failed, None)
        .await
        .unwrap();
    let report = ops
        .replay(
            &ReplaySelector::Event("e-fail".to_owned()),
            Some("spare"),
            Some(&config),
        )
        .unwrap();
    assert_eq!(
        report.queued,
        [QueuedDelivery {
            event_id: "e-fail".into(),
            sink: "spare".into(),
            generation: 0,
            added: true
        }]
    );
    assert_eq!(db.deliveries("e-fail").await.unwrap().len(), 3);

    let err = ops
        .replay(
            &ReplaySelector::Event("e-done".to_owned()),
            Some("nowhere"),
            Some(&config),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("no sink is named `nowhere`"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unplanned_event_is_only_set_back_to_pending_to_be_routed_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = sample(dir.path()).await;
    let mut ops = OpsDb::open_for_update(dir.path()).unwrap();
    let err = ops
        .replay(
            &ReplaySelector::Event("e-skip".to_owned()),
            Some("archive"),
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("never planned"), "{err}");

    let report = ops
        .replay(&ReplaySelector::Event("e-skip".to_owned()), None, None)
        .unwrap();
    assert_eq!(report.replanned, ["e-skip"]);
    assert!(report.queued.is_empty());
    assert!(db.deliveries("e-skip").await.unwrap().is_empty());
    let event = db.event("e-skip").await.unwrap().unwrap();
    assert_eq!((event.status, event.detail), (EventStatus::Pending, None));
}

#[tokio::test]
async fn replay_since_takes_every_finished_event_from_that_time_and_skips_pending_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = sample(dir.path()).await;
    let mut ops = OpsDb::open_for_update(dir.path()).unwrap();
    // e-fail (50 s ago), e-pend (40 s) and e-skip (30 s); e-done (60 s) is older.
    let since = parse_since("55s", now_ms()).unwrap();
    let report = ops
        .replay(&ReplaySelector::Since(since), None, None)
        .unwrap();
    let queued: Vec<(&str, &str)> = report
        .queued
        .iter()
        .map(|q| (q.event_id.as_str(), q.sink.as_str()))
        .collect();
    assert_eq!(queued, [("e-fail", "archive"), ("e-fail", "warehouse")]);
    assert_eq!(report.replanned, ["e-skip"]);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].event_id, "e-pend");
    assert_eq!(
        db.event("e-done").await.unwrap().unwrap().status,
        EventStatus::Done
    );
}

#[tokio::test]
async fn dead_letters_are_listed_retried_from_their_checkpoint_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = sample(dir.path()).await;
    let mut ops = OpsDb::open_for_update(dir.path()).unwrap();

    let letters = ops.dead_letters(None).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (
            letters[0].event_id.as_str(),
            letters[0].sink.as_str(),
            letters[0].rows
        ),
        ("e-fail", "warehouse", 40)
    );
    assert_eq!(letters[0].topic, TOPIC);
    assert!(ops.dead_letters(Some("archive")).unwrap().is_empty());

    let err = ops
        .retry_dead_letters(&DeadLetterSelector::Event {
            event_id: "e-done".to_owned(),
            sink: None,
        })
        .unwrap_err();
    assert!(err.to_string().contains("no dead letter"), "{err}");

    let report = ops
        .retry_dead_letters(&DeadLetterSelector::All { sink: None })
        .unwrap();
    assert_eq!(
        report.changed,
        [DeliveryRef {
            event_id: "e-fail".into(),
            sink: "warehouse".into()
        }]
    );
    let warehouse = db.deliveries("e-fail").await.unwrap().remove(1);
    assert_eq!(
        (
            warehouse.status.as_str(),
            warehouse.generation,
            warehouse.error
        ),
        ("pending", 0, None),
        "the generation stays: delivery resumes from the checkpoint"
    );
    let event = db.event("e-fail").await.unwrap().unwrap();
    assert_eq!((event.status, event.detail), (EventStatus::Pending, None));
    assert!(ops.dead_letters(None).unwrap().is_empty());

    // The daemon fails it again; this time the operator drops it.
    db.set_delivery(
        "e-fail",
        "warehouse",
        DeliveryStatus::Failed,
        40,
        Some("disk full".to_owned()),
    )
    .await
    .unwrap();
    db.set_event_status("e-fail", EventStatus::Failed, Some("x".to_owned()))
        .await
        .unwrap();
    let report = ops
        .drop_dead_letters(&DeadLetterSelector::Event {
            event_id: "e-fail".to_owned(),
            sink: Some("warehouse".to_owned()),
        })
        .unwrap();
    assert_eq!(report.changed.len(), 1);
    assert_eq!(report.events[0].status, EventStatus::Done);
    let event = db.event("e-fail").await.unwrap().unwrap();
    assert_eq!(event.status, EventStatus::Done);
    assert!(
        event
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("`warehouse`"),
        "{event:?}"
    );
    assert_eq!(
        db.deliveries("e-fail").await.unwrap()[1].status,
        DeliveryStatus::Dropped
    );
    assert_eq!(sink(&ops.status(None).unwrap(), "warehouse").dropped, 1);
}

#[tokio::test]
async fn dropping_one_of_two_dead_letters_keeps_the_event_failed_with_the_other_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = sample(dir.path()).await;
    db.set_delivery(
        "e-fail",
        "archive",
        DeliveryStatus::Failed,
        80,
        Some("gone".to_owned()),
    )
    .await
    .unwrap();
    let mut ops = OpsDb::open_for_update(dir.path()).unwrap();
    let report = ops
        .drop_dead_letters(&DeadLetterSelector::All {
            sink: Some("warehouse".to_owned()),
        })
        .unwrap();
    assert_eq!(report.events[0].status, EventStatus::Failed);
    assert_eq!(
        report.events[0].detail.as_deref(),
        Some("sink `archive`: gone")
    );
    // Dead letters of an event the daemon is working on are left alone.
    db.set_event_status("e-fail", EventStatus::Pending, None)
        .await
        .unwrap();
    let report = ops
        .retry_dead_letters(&DeadLetterSelector::All { sink: None })
        .unwrap();
    assert!(report.changed.is_empty());
    assert_eq!(report.skipped.len(), 1);
}

#[tokio::test]
async fn commands_need_an_existing_database_and_read_only_ones_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let err = OpsDb::open_read_only(dir.path()).unwrap_err();
    assert!(
        matches!(err, OpsError::State(StateError::NoDatabase { .. })),
        "{err}"
    );
    let err = OpsDb::open_for_update(dir.path()).unwrap_err();
    assert!(
        matches!(err, OpsError::State(StateError::NoDatabase { .. })),
        "{err}"
    );
    assert!(
        !dir.path().join(StateDb::FILE_NAME).exists(),
        "nothing created"
    );

    // That a read-only handle cannot write, and leaves the journal mode as it is, is
    // `state::operator`'s test.
    let _db = sample(dir.path()).await;
    assert!(OpsDb::open_read_only(dir.path()).is_ok());
}

/// Five pending events (one planned, with a checkpoint) then 60 done events whose 3 kB bodies
/// take a page each, so damaging the pages of two of them loses exactly those two.
async fn damaged_database(dir: &Path) {
    let db = StateDb::open(dir).unwrap();
    for i in 0..5 {
        add_event(&db, &format!("keep-{i}"), TOPIC, 1_000 + i).await;
    }
    db.plan_event(
        "keep-0",
        vec!["archive".to_owned()],
        vec![plan("legacy-k0")],
    )
    .await
    .unwrap();
    db.set_stream_total("keep-0", "legacy-k0", 900)
        .await
        .unwrap();
    db.advance(
        "keep-0",
        vec![checkpoint("archive", "legacy-k0", 2, 200, false)],
    )
    .await
    .unwrap();
    for i in 0..60 {
        let id = format!("filler-{i:02}");
        let body = format!("BODYMARK-{i:02}-").repeat(250).into_bytes();
        db.insert_event(id.clone(), "legacy", TOPIC.to_owned(), body, 2_000 + i)
            .await
            .unwrap();
        db.set_event_status(&id, EventStatus::Done, None)
            .await
            .unwrap();
    }
    drop(db);
    let path = dir.join(StateDb::FILE_NAME);
    assert!(
        !dir.join("state.db-wal").exists(),
        "closing folded the WAL in"
    );
    assert_eq!(damage_pages_holding(&path, b"BODYMARK-30-"), 1);
    assert_eq!(damage_pages_holding(&path, b"BODYMARK-31-"), 1);
}

#[tokio::test]
async fn a_damaged_database_is_quarantined_and_every_readable_row_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    damaged_database(dir.path()).await;

    let inspection = inspect_state(dir.path());
    assert_eq!(
        inspection.health,
        StateHealth::Damaged,
        "{:?}",
        inspection.problems
    );
    assert!(!inspection.problems.is_empty());
    assert!(daemon_using_state(dir.path(), None).is_none());

    let report = repair_state(dir.path()).unwrap();
    let inbox = &report.tables[0];
    assert_eq!(inbox.table, "inbox");
    assert_eq!((inbox.salvaged, inbox.lost), (63, 2), "{report:?}");
    assert!(inbox.first_error.is_some());
    assert_eq!(report.lost_event_ids, ["filler-30", "filler-31"]);
    assert_eq!(report.events_lost(), 2);
    let deliveries = &report.tables[1];
    assert_eq!((deliveries.salvaged, deliveries.lost), (1, 0));
    let explanation = report.explanation();
    assert!(
        explanation.contains("filler-30, filler-31"),
        "{explanation}"
    );
    assert!(!explanation.contains("delete"), "{explanation}");

    // The damaged file sits in the quarantine, unchanged, with the explanation.
    assert!(
        report
            .quarantine_dir
            .starts_with(dir.path().join("quarantine"))
    );
    assert!(report.quarantine_dir.join("state.db").is_file());
    assert!(report.quarantine_dir.join("README.txt").is_file());
    assert_eq!(
        inspect_state(&report.quarantine_dir).health,
        StateHealth::Damaged
    );

    // The fresh database is healthy and the daemon's API finds the pending work in it.
    assert_eq!(inspect_state(dir.path()).health, StateHealth::Healthy);
    let db = StateDb::open(dir.path()).unwrap();
    let pending = db.pending_events().await.unwrap();
    assert_eq!(pending, ["keep-0", "keep-1", "keep-2", "keep-3", "keep-4"]);
    assert_eq!(
        db.checkpoints("keep-0").await.unwrap(),
        [checkpoint("archive", "legacy-k0", 2, 200, false)]
    );
    assert_eq!(db.streams("keep-0").await.unwrap(), [plan("legacy-k0")]);
    let kept = OpsDb::open_read_only(dir.path())
        .unwrap()
        .show_event("keep-0")
        .unwrap()
        .expect("salvaged");
    assert_eq!(
        kept.streams[0].total_rows,
        Some(900),
        "the salvage copies the stream's total"
    );
    assert!(db.event("filler-29").await.unwrap().is_some());
    assert!(db.event("filler-30").await.unwrap().is_none());
    assert_eq!(
        db.event("filler-32").await.unwrap().unwrap().status,
        EventStatus::Done
    );
}

#[tokio::test]
async fn a_destroyed_header_is_reported_as_not_a_database_and_replaced_by_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = sample(dir.path()).await;
    drop(db);
    let path = dir.path().join(StateDb::FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..100].fill(0x5a);
    std::fs::write(&path, bytes).unwrap();

    let inspection = inspect_state(dir.path());
    assert_eq!(inspection.health, StateHealth::Damaged);
    assert!(
        inspection.problems[0].contains("not a database"),
        "{:?}",
        inspection.problems
    );
    let report = repair_state(dir.path()).unwrap();
    assert!(report.unreadable.is_some(), "{report:?}");
    assert!(report.explanation().contains("Nothing could be read"));
    assert_eq!(inspect_state(dir.path()).health, StateHealth::Healthy);
    assert!(report.quarantine_dir.join("state.db").is_file());
}

#[tokio::test]
async fn a_healthy_or_missing_database_needs_no_repair() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(inspect_state(dir.path()).health, StateHealth::Missing);
    let _db = sample(dir.path()).await;
    let inspection = inspect_state(dir.path());
    assert_eq!(inspection.health, StateHealth::Healthy);
    assert_eq!(inspection.schema_version, Some(SCHEMA_VERSION));
    assert_eq!(inspection.events, Some(4));
}

#[tokio::test]
async fn a_repair_waits_while_a_process_holds_the_database_or_the_daemon_port_answers() {
    let dir = tempfile::tempdir().unwrap();
    drop(sample(dir.path()).await);
    let db = dir.path().join(StateDb::FILE_NAME);
    let mut holder = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec 3<\"$1\"; echo ready; exec sleep 30")
        .arg("sh")
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sh runs");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let found = daemon_using_state(dir.path(), None);
    let _ = holder.kill();
    let _ = holder.wait();
    let found = found.expect("the holder is seen");
    assert!(found.contains(&holder.id().to_string()), "{found}");
    assert!(daemon_using_state(dir.path(), None).is_none());

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = config(dir.path());
    config.admin = Some(crate::config::AdminConfig {
        listen: listener.local_addr().unwrap(),
        limits: crate::config::ListenerLimits::ADMIN_DEFAULTS,
    });
    let found = daemon_using_state(dir.path(), Some(&config)).expect("the port answers");
    assert!(found.contains("[admin] listen"), "{found}");
}

#[tokio::test]
async fn the_flatfile_probe_tells_accepted_rejected_unset_and_unreachable_keys_apart() {
    use flatfile_sim::{RunningSim, SimConfig};

    let sim = RunningSim::start(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.flatfile.legacy_api_url = sim.base_url();
    config.flatfile.api_url = sim.base_url();
    let value = |s: &str| Some(SecretSource::Value(crate::Secret::new(s.to_owned())));
    config.flatfile.legacy_api_key = value(flatfile_sim::DEFAULT_LEGACY_API_KEY);
    config.flatfile.secret_key = value(flatfile_sim::DEFAULT_SECRET_KEY);
    let checks = check_flatfile(&config).await;
    assert_eq!(checks.len(), 2);
    assert!(checks.iter().all(|c| c.outcome.is_ok()), "{checks:?}");

    config.flatfile.secret_key = value("sk_wrong");
    config.flatfile.legacy_api_key = Some(SecretSource::Env(
        "FLATSYNC_OPS_TEST_UNSET_VARIABLE".to_owned(),
    ));
    let checks = check_flatfile(&config).await;
    assert_eq!(
        checks[0].outcome,
        ApiOutcome::NotSet {
            source: "environment variable FLATSYNC_OPS_TEST_UNSET_VARIABLE".to_owned()
        }
    );
    assert_eq!(checks[1].outcome, ApiOutcome::KeyRejected { status: 401 });
    assert!(!checks[1].outcome.explain().contains("sk_wrong"));

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    config.flatfile.api_url = format!("http://{closed}");
    let checks = check_flatfile(&config).await;
    assert!(
        matches!(checks[1].outcome, ApiOutcome::Unreachable { .. }),
        "{checks:?}"
    );

    config.flatfile.legacy_api_key = None;
    config.flatfile.secret_key = None;
    let checks = check_flatfile(&config).await;
    assert_eq!(checks[0].outcome, ApiOutcome::NotConfigured);
    sim.shutdown().await;
}

#[tokio::test]
async fn sink_checks_report_each_sink_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.daemon.plugin_dir = Some(dir.path().join("no-plugins-here"));
    for create in [true, false] {
        let checks = check_sinks(&config, create).await;
        assert_eq!(checks.len(), 3);
        for check in &checks {
            assert!(!check.ok, "{check:?}");
            assert!(
                check.message.contains(&format!("sink `{}`", check.sink)),
                "{check:?}"
            );
            assert!(check.message.contains("no-plugins-here"), "{check:?}");
        }
    }
}

#[test]
fn the_plugin_scan_lists_files_that_do_not_load_with_their_error() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("libflatsync_sink_csv_folder.so");
    std::fs::write(&bogus, b"not an ELF file").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let config = config(dir.path());
    let scan = scan_plugins(Some(dir.path()), &config.sinks);
    assert_eq!(scan.search_dirs, [dir.path()]);
    assert_eq!(scan.plugins.len(), 1);
    let plugin = &scan.plugins[0];
    assert_eq!(plugin.path, bogus);
    assert!(plugin.name.is_none());
    assert!(plugin.error.is_some());
    assert_eq!(plugin.used_by, ["archive", "spare"]);
    let warehouse = scan.sinks.iter().find(|s| s.sink == "warehouse").unwrap();
    assert!(warehouse.path.is_none());
    assert!(warehouse.error.as_deref().unwrap_or("").contains("sqlite"));
}

/// The commands' main reads and changes give the same answers on SQLite and PostgreSQL:
/// events listed and shown, dead letters listed, retried and dropped, and a replay (the status
/// overview: `status_counts_events_deliveries_rows_lag_and_errors`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_reports_and_changes_read_alike_on_both_backends() {
    for backend in crate::state::testing::TestBackend::both("ops_main") {
        let db = backend.state();
        fill(&db).await;
        let location = backend.location();
        let ops = OpsDb::open_location(&location, true).expect("open read-only");

        let all = ops.list_events(&EventFilter::default()).expect("list");
        let ids: Vec<&str> = all.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["e-skip", "e-pend", "e-fail", "e-done"], "{backend:?}");
        assert_eq!(
            all[2].deliveries[1].status,
            DeliveryStatus::Failed,
            "{backend:?}"
        );
        let portal = ops
            .list_events(&EventFilter {
                topic: Some(TopicPattern::new("portal*")),
                limit: 2,
                ..EventFilter::default()
            })
            .expect("list portal events");
        let ids: Vec<&str> = portal.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["e-pend", "e-fail"], "{backend:?}");
        let failed = ops
            .list_events(&EventFilter {
                status: Some(EventStatus::Failed),
                ..EventFilter::default()
            })
            .expect("list failed events");
        assert_eq!(failed.len(), 1, "{backend:?}");

        let shown = ops
            .show_event("e-fail")
            .expect("show")
            .expect("known event");
        assert_eq!(shown.body["event"], "e-fail", "{backend:?}");
        assert_eq!(shown.streams[0].stream, "legacy-b2", "{backend:?}");
        assert_eq!(
            shown.deliveries[1].error.as_deref(),
            Some("disk full"),
            "{backend:?}"
        );
        assert_eq!(shown.deliveries[1].streams, ["legacy-b2"], "{backend:?}");
        assert_eq!(shown.checkpoints.len(), 2, "{backend:?}");
        assert!(shown.group_batches.is_empty(), "{backend:?}");
        assert!(
            ops.show_event("nope").expect("show").is_none(),
            "{backend:?}"
        );

        let letters = ops.dead_letters(None).expect("dead letters");
        assert_eq!(letters.len(), 1, "{backend:?}");
        assert_eq!(
            (
                letters[0].event_id.as_str(),
                letters[0].sink.as_str(),
                letters[0].rows,
                letters[0].topic.as_str()
            ),
            ("e-fail", "warehouse", 40, TOPIC),
            "{backend:?}"
        );
        assert!(
            ops.dead_letters(Some("archive"))
                .expect("dead letters")
                .is_empty(),
            "{backend:?}"
        );
        let live = ops.live(None, 10).expect("live");
        assert_eq!(live.in_flight_total, 2, "{backend:?}");
        assert_eq!(live.in_flight[0].event_id, "e-pend", "{backend:?}");
        assert_eq!(live.in_flight[0].rows_done(), 30, "{backend:?}");
        drop(ops);

        let mut ops = OpsDb::open_location(&location, false).expect("open for update");
        let report = ops
            .replay(&ReplaySelector::Event("e-done".to_owned()), None, None)
            .expect("replay");
        let queued: Vec<(&str, u32, bool)> = report
            .queued
            .iter()
            .map(|q| (q.sink.as_str(), q.generation, q.added))
            .collect();
        assert_eq!(
            queued,
            [("archive", 1, false), ("warehouse", 1, false)],
            "{backend:?}"
        );
        let event = db.event("e-done").await.expect("read").expect("stored");
        assert_eq!(
            (event.status, event.detail),
            (EventStatus::Pending, None),
            "{backend:?}"
        );
        let shown = ops
            .show_event("e-done")
            .expect("show")
            .expect("known event");
        for delivery in &shown.deliveries {
            assert_eq!(
                (delivery.status, delivery.rows, delivery.generation),
                (DeliveryStatus::Pending, 0, 1),
                "{backend:?}: {delivery:?}"
            );
            assert_eq!(delivery.streams, ["legacy-b1-r1"], "{backend:?}");
        }
        let err = ops
            .replay(&ReplaySelector::Event("e-done".to_owned()), None, None)
            .expect_err("a pending event waits");
        assert!(err.to_string().contains("pending"), "{backend:?}: {err}");

        let report = ops
            .retry_dead_letters(&DeadLetterSelector::All { sink: None })
            .expect("retry");
        assert_eq!(
            report.changed,
            [DeliveryRef {
                event_id: "e-fail".into(),
                sink: "warehouse".into()
            }],
            "{backend:?}"
        );
        let shown = ops
            .show_event("e-fail")
            .expect("show")
            .expect("known event");
        assert_eq!(shown.status, EventStatus::Pending, "{backend:?}");
        assert_eq!(
            (
                shown.deliveries[1].status,
                shown.deliveries[1].generation,
                shown.deliveries[1].error.as_deref()
            ),
            (DeliveryStatus::Pending, 0, None),
            "{backend:?}: the retry resumes from the checkpoint"
        );
        assert!(
            ops.dead_letters(None).expect("dead letters").is_empty(),
            "{backend:?}"
        );

        // The daemon fails it again; this time the operator drops it.
        db.set_delivery(
            "e-fail",
            "warehouse",
            DeliveryStatus::Failed,
            40,
            Some("disk full".to_owned()),
        )
        .await
        .expect("fail the delivery");
        db.set_event_status("e-fail", EventStatus::Failed, Some("x".to_owned()))
            .await
            .expect("fail the event");
        let report = ops
            .drop_dead_letters(&DeadLetterSelector::Event {
                event_id: "e-fail".to_owned(),
                sink: Some("warehouse".to_owned()),
            })
            .expect("drop");
        assert_eq!(report.changed.len(), 1, "{backend:?}");
        assert_eq!(report.events[0].status, EventStatus::Done, "{backend:?}");
        assert_eq!(
            sink(&ops.status(None).expect("status"), "warehouse").dropped,
            1,
            "{backend:?}"
        );
    }
}

/// `replay --since` and a replay that adds a sink do the same on SQLite and PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_since_and_to_a_new_sink_work_alike_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    for backend in crate::state::testing::TestBackend::both("ops_replay") {
        let db = backend.state();
        fill(&db).await;
        let mut ops = OpsDb::open_location(&backend.location(), false).expect("open for update");
        // e-fail (50 s ago), e-pend (40 s) and e-skip (30 s); e-done (60 s) is older.
        let since = parse_since("55s", now_ms()).unwrap();
        let report = ops
            .replay(&ReplaySelector::Since(since), None, None)
            .expect("replay since");
        let queued: Vec<(&str, &str)> = report
            .queued
            .iter()
            .map(|q| (q.event_id.as_str(), q.sink.as_str()))
            .collect();
        assert_eq!(
            queued,
            [("e-fail", "archive"), ("e-fail", "warehouse")],
            "{backend:?}"
        );
        assert_eq!(report.replanned, ["e-skip"], "{backend:?}");
        let skipped: Vec<&str> = report.skipped.iter().map(|s| s.event_id.as_str()).collect();
        assert_eq!(skipped, ["e-pend"], "{backend:?}");

        // e-done, older than the replay above, is still done.
        let report = ops
            .replay(
                &ReplaySelector::Event("e-done".to_owned()),
                Some("spare"),
                Some(&config),
            )
            .expect("replay to a new sink");
        assert_eq!(
            report.queued,
            [QueuedDelivery {
                event_id: "e-done".into(),
                sink: "spare".into(),
                generation: 0,
                added: true
            }],
            "{backend:?}"
        );
        let shown = ops
            .show_event("e-done")
            .expect("show")
            .expect("known event");
        let sinks: Vec<(&str, DeliveryStatus)> = shown
            .deliveries
            .iter()
            .map(|d| (d.sink.as_str(), d.status))
            .collect();
        let (done, pending) = (DeliveryStatus::Done, DeliveryStatus::Pending);
        // An event's deliveries are listed as they were planned, on both backends.
        let expected = [("archive", done), ("warehouse", done), ("spare", pending)];
        assert_eq!(sinks, expected, "{backend:?}");
    }
}
