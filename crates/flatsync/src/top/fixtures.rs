//! Readings made up for the unit tests of the views and the keys.

use std::collections::BTreeMap;

use flatsync_core::ops::{
    InFlight, LastError, LiveReport, PollStatus, SinkStatus, StatusReport, StreamProgress,
};

use super::sample::{Rates, Sample};
use super::scrape::Scrape;

/// Ms since the epoch the fixtures are made at.
pub(super) const NOW: i64 = 1_714_564_800_000;

/// One in-flight delivery of 20,000 rows to `archive` per event, `done` rows checkpointed in
/// each; a dead letter in `warehouse`; one polled environment.
pub(super) fn report(events: &[(&str, u64)]) -> LiveReport {
    let in_flight: Vec<InFlight> = events
        .iter()
        .enumerate()
        .map(|(i, (event, done))| InFlight {
            event_id: (*event).to_owned(),
            topic: "portalImportSubmitted".to_owned(),
            received_at_ms: NOW - 60_000 + i as i64,
            sink: "archive".to_owned(),
            generation: 0,
            streams: vec![StreamProgress {
                stream: format!("legacy-{event}"),
                rows: *done,
                total_rows: Some(20_000),
                complete: false,
            }],
        })
        .collect();
    let sink = |name: &str, pending: u64, failed: u64, rows: u64| SinkStatus {
        name: name.to_owned(),
        configured: Some(true),
        pending,
        done: 4,
        failed,
        dropped: 0,
        rows_delivered: rows,
        lag_secs: (pending > 0).then_some(60),
        last_error: (failed > 0).then(|| LastError {
            event_id: "evt-bad".to_owned(),
            at_ms: NOW - 120_000,
            error: "disk full".to_owned(),
        }),
        last_update_ms: Some(NOW),
    };
    let done: u64 = events.iter().map(|(_, d)| d).sum();
    LiveReport {
        status: StatusReport {
            generated_at_ms: NOW,
            state_db: "/var/lib/flatsync/state.db".to_owned(),
            events: BTreeMap::from([
                ("pending".to_owned(), events.len() as u64),
                ("done".to_owned(), 4),
            ]),
            sinks: vec![
                sink("archive", events.len() as u64, 0, 80_000 + done),
                sink("warehouse", 0, 1, 80_000),
            ],
            routes: None,
            last_delivery_update_ms: Some(NOW),
            daemons: Vec::new(),
            polling: vec![PollStatus {
                environment_id: "us_env_1".to_owned(),
                cursor_ms: NOW - 30_000,
                unacknowledged: 2,
            }],
            incomplete_uploads: Vec::new(),
        },
        in_flight,
        in_flight_total: events.len() as u64,
    }
}

/// Two samples 2 s apart of the deliveries in `events`, each 2,000 rows further in the second:
/// 1,000 rows/s.
pub(super) fn sample(events: &[(&str, u64)]) -> Sample {
    let mut rates = Rates::default();
    let before: Vec<(&str, u64)> = events.iter().map(|(e, d)| (*e, d - 2_000)).collect();
    let unavailable = || Scrape::Unavailable("no [admin] listener configured".to_owned());
    rates.apply(10.0, report(&before), unavailable());
    rates.apply(12.0, report(events), unavailable())
}
