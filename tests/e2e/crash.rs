//! `kill -9` at random moments while rows are being delivered, with webhooks arriving around
//! the kills. The central promise: nothing lost, nothing duplicated, every answered webhook
//! delivered.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use flatfile_sim::{
    SimConfig, legacy_row_ids, legacy_webhook_body, record_ids, submit_event_body, workbook_sheets,
};
use flatsync_tests::check::{csv_leftovers, csv_rows, integrity_check, sqlite_rows};
use flatsync_tests::{Daemon, DaemonProcess, Sim, TestDir};

/// Seed of the kill schedule; set `FLATSYNC_E2E_SEED` to replay another one.
const DEFAULT_SEED: u64 = 0x5eed_f1a7;
/// Kills that must land while an event is pending.
const KILLS: u32 = 10;
/// Upper bound on kill rounds, so the test ends even if delivery outruns the kills.
const MAX_ROUNDS: u32 = 30;
/// Rows of the big import being delivered across the kills.
const BIG_ROWS: u64 = 100_000;
/// Rows of the imports whose webhooks race the kills.
const SMALL_ROWS: u64 = 2_000;

/// Which Flatfile API an import comes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Legacy,
    Platform,
}

/// A webhook the test sent, and what it asked for.
#[derive(Debug)]
struct Sent {
    event_id: String,
    api: Api,
    /// Batch id (legacy) or workbook id (Platform).
    source: String,
    /// Job id of a Platform submit.
    job: Option<String>,
    /// The daemon answered 2xx: it promised to deliver.
    answered: bool,
}

/// The two simulators: one per API, so that the big import and the racing ones can differ in
/// size (a simulator serves the same row count for every batch or workbook).
struct Sims {
    legacy: Sim,
    platform: Sim,
}

impl Sims {
    fn of(&self, api: Api) -> &Sim {
        match api {
            Api::Legacy => &self.legacy,
            Api::Platform => &self.platform,
        }
    }

    /// The webhook body for import `name` through `api`.
    fn webhook(&self, api: Api, name: &str) -> (Sent, serde_json::Value) {
        match api {
            Api::Legacy => {
                let (batch, event) = (format!("b-{name}"), format!("evt-{name}"));
                let body = legacy_webhook_body(&batch, &event, self.legacy.config().rows);
                let sent = Sent {
                    event_id: event,
                    api,
                    source: batch,
                    job: None,
                    answered: false,
                };
                (sent, body)
            }
            Api::Platform => {
                let (event, workbook) = (format!("us_evt_{name}"), format!("us_wb_{name}"));
                let job = self.platform.job_for(&workbook);
                let body = submit_event_body(&event, &workbook, &job);
                let sent = Sent {
                    event_id: event,
                    api,
                    source: workbook,
                    job: Some(job),
                    answered: false,
                };
                (sent, body)
            }
        }
    }

    /// Record ids the import of `sent` delivers.
    fn expected_ids(&self, sent: &Sent) -> Vec<String> {
        let config = self.of(sent.api).config();
        match sent.api {
            Api::Legacy => legacy_row_ids(config, &sent.source),
            Api::Platform => workbook_sheets(config, &sent.source)
                .into_iter()
                .flat_map(|(sheet_id, _, _)| record_ids(config, &sheet_id))
                .collect(),
        }
    }
}

fn post_answered(daemon: &DaemonProcess, body: &serde_json::Value) -> bool {
    let bytes = serde_json::to_vec(body).expect("serialisable");
    daemon
        .post_raw(&bytes, None)
        .is_ok_and(|reply| reply.is_success())
}

/// Delivers a [`BIG_ROWS`] import through `big`, killing the daemon with SIGKILL at random
/// moments and restarting it, while small imports through the other API are sent close to
/// the kills. Then checks both sinks hold every row of every stored event exactly once.
fn survives_kill_9_during_delivery(big: Api, label: &str) {
    let seed = std::env::var("FLATSYNC_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut journal = format!("{label}: seed {seed} (replay with FLATSYNC_E2E_SEED={seed})\n");
    let racing = match big {
        Api::Legacy => Api::Platform,
        Api::Platform => Api::Legacy,
    };

    // Small pages and latency make the big import take several seconds, so the kills land
    // in the middle of it; the checkpoint interval is short so progress survives them.
    let sim_config = |api: Api, seed: u64| {
        let big_one = api == big;
        SimConfig {
            rows: if big_one { BIG_ROWS } else { SMALL_ROWS },
            seed,
            sheets_per_workbook: 2,
            page_latency: Duration::from_millis(if big_one { 150 } else { 20 }),
            ..SimConfig::default()
        }
    };
    let sims = Sims {
        legacy: Sim::start(sim_config(Api::Legacy, 11)),
        platform: Sim::start(sim_config(Api::Platform, 12)),
    };
    let dir = TestDir::new(label);
    let settings = Daemon::new(dir.path())
        .legacy_sim(&sims.legacy)
        .platform_sim(&sims.platform)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(
            &["portalImportSubmitted", "job:ready"],
            &["archive", "warehouse"],
        )
        .page_size(500)
        .set("daemon", "checkpoint_interval_ms", "250");
    let (csv_dir, db, state_db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
        settings.state_db(),
    );
    let mut daemon = settings.start();

    let mut sent = Vec::new();
    let (mut main, body) = sims.webhook(big, "main");
    main.answered = post_answered(&daemon, &body);
    assert!(main.answered, "{}", daemon.log_tail());
    sent.push(main);

    let mut kills_during_delivery = 0;
    let mut kills_mid_stream = 0;
    let mut extra = 0;
    for round in 0..MAX_ROUNDS {
        if kills_during_delivery >= KILLS {
            break;
        }
        // Keep work pending: a finished backlog gets another big import.
        if daemon.pending_events().is_empty() {
            extra += 1;
            let (mut more, body) = sims.webhook(big, &format!("extra{extra}"));
            more.answered = post_answered(&daemon, &body);
            let _ = writeln!(
                journal,
                "round {round}: sent {}, answered {}",
                more.event_id, more.answered
            );
            sent.push(more);
        }
        let delay = rng.u64(200..=1500);
        // Every other round a small import's webhook races the kill, arriving just before or
        // just after it: it may be answered, cut off or refused, and each outcome has its own
        // promise to check at the end.
        let racer = (round % 2 == 1).then(|| {
            let (sent, body) = sims.webhook(racing, &format!("race{round}"));
            let url = daemon.url();
            let at = (delay + 5).saturating_sub(rng.u64(0..=25));
            let handle = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(at));
                let bytes = serde_json::to_vec(&body).expect("serialisable");
                flatsync_tests::http::post_json(&url, None, &bytes)
                    .is_ok_and(|reply| reply.is_success())
            });
            (sent, handle)
        });
        std::thread::sleep(Duration::from_millis(delay));
        daemon.assert_alive(&format!("before kill {round}\n{journal}"));
        daemon.kill9();
        // Read after the kill: the state database holds exactly what was committed.
        let pending = daemon.pending_events();
        if !pending.is_empty() {
            kills_during_delivery += 1;
        }
        // In-progress CSV files mean the kill cut a stream in the middle.
        let partial = csv_leftovers(&csv_dir)
            .iter()
            .filter(|name| name.ends_with(".partial"))
            .count();
        if partial > 0 {
            kills_mid_stream += 1;
        }
        let mut line = format!(
            "round {round}: kill -9 after {delay} ms with {} event(s) pending, {partial} stream(s) half-written",
            pending.len()
        );
        if let Some((mut racer, handle)) = racer {
            racer.answered = handle.join().expect("racer thread");
            let _ = write!(
                line,
                "; racing webhook {} answered {}",
                racer.event_id, racer.answered
            );
            sent.push(racer);
        }
        let _ = writeln!(journal, "{line}");
        daemon.restart();
    }
    assert!(
        kills_during_delivery >= KILLS,
        "only {kills_during_delivery} kills hit pending work\n{journal}"
    );
    assert!(
        kills_mid_stream >= KILLS / 2,
        "only {kills_mid_stream} kills cut a stream in the middle\n{journal}"
    );

    // Every event the daemon stored must be delivered, whether or not its sender heard back;
    // an event it did not store must leave no row behind.
    let started = Instant::now();
    let mut expected: Vec<String> = Vec::new();
    let mut stored: Vec<&Sent> = Vec::new();
    for s in &sent {
        let in_inbox = daemon.event(&s.event_id).is_some();
        assert!(
            in_inbox || !s.answered,
            "{} was answered 2xx but is not in the inbox\n{journal}",
            s.event_id
        );
        if in_inbox {
            stored.push(s);
            expected.extend(sims.expected_ids(s));
        }
    }
    let stored_ids: Vec<&str> = stored.iter().map(|s| s.event_id.as_str()).collect();
    daemon.wait_done(&stored_ids, Duration::from_secs(600));
    let _ = writeln!(
        journal,
        "{} of {} events stored, {} rows expected, all delivered {:.1} s after the last restart",
        stored.len(),
        sent.len(),
        expected.len(),
        started.elapsed().as_secs_f64()
    );
    let status = daemon.stop();
    assert!(
        status.success(),
        "clean stop after the crashes: {status}\n{journal}"
    );

    csv_rows(&csv_dir).assert_exactly(&expected, &format!("csv-folder sink\n{journal}"));
    sqlite_rows(&db).assert_exactly(&expected, &format!("sqlite sink\n{journal}"));
    for s in &stored {
        if let Some(job) = &s.job {
            let job_state = sims
                .platform
                .job(job)
                .unwrap_or_else(|| panic!("the simulator never saw job {job}\n{journal}"));
            assert_eq!(job_state.status, "complete", "{job_state:?}\n{journal}");
        }
    }
    assert_eq!(
        integrity_check(&state_db),
        "ok",
        "state database\n{journal}"
    );
    assert_eq!(
        integrity_check(&db),
        "ok",
        "sqlite sink database\n{journal}"
    );
    println!("{journal}");
}

#[test]
fn kill_9_during_a_legacy_import_of_100k_rows_loses_and_duplicates_nothing() {
    survives_kill_9_during_delivery(Api::Legacy, "crash-legacy");
}

#[test]
fn kill_9_during_a_workbook_submit_of_100k_records_loses_and_duplicates_nothing() {
    survives_kill_9_during_delivery(Api::Platform, "crash-platform");
}
