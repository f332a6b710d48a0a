//! The http-forward sink against a receiver that checks what a careful service checks: Standard
//! Webhooks signatures (with a key rotation), stable ids and bodies across retries and
//! `kill -9`, `Retry-After`, and a refusal that ends in the dead-letter list.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use flatfile_sim::receiver::{
    Fault, FlatsyncBody, ReceivedRequest, ReceiverConfig, RunningReceiver, sign_request, unix_now,
};
use flatfile_sim::{SimConfig, record_ids, submit_event_body, workbook_sheets};
use flatsync_tests::check::{Tally, csv_rows, integrity_check, sqlite_rows};
use flatsync_tests::{Daemon, DaemonProcess, Sim, TestDir, http, wait};
use serde_json::Value;

use crate::common::EVENT_DEADLINE;

/// The secret being rotated out. Test-only values: 32 random bytes each.
const OLD_SECRET: &str = "whsec_Yo/su/ZxZnGt54e8sG43V0nVG7e8xVzdJlDkKuBYxyc=";
/// The secret being rotated in.
const NEW_SECRET: &str = "whsec_HLPC+cRrEGmlvU15Tnhl+sO3z2C0FW/IvdWF4mTzsxY=";
/// A secret the receiver does not know.
const UNKNOWN_SECRET: &str = "whsec_UEuxohvlmZRSHIHpamrYoXYn1nMNfSKAMzWPAoPtMBo=";
/// The environment variable the sink reads its secrets from.
const SECRET_ENV: &str = "FLATSYNC_FORWARD_SECRET";
/// Name of the http-forward sink in every config here.
const SINK: &str = "forward";

/// Seed of the crash test's kill schedule; set `FLATSYNC_E2E_SEED` to replay another one.
const DEFAULT_SEED: u64 = 0x4774_f0d5;
/// Kills that must land while the event is pending.
const KILLS: u32 = 10;
/// Upper bound on kill rounds.
const MAX_ROUNDS: u32 = 30;
/// Rows of the crash test's workbook.
const BIG_ROWS: u64 = 100_000;

/// A receiver on 127.0.0.1 accepting `secrets`, answering as `script` says.
fn receiver(secrets: &[&str], script: Vec<Fault>) -> RunningReceiver {
    let config = ReceiverConfig {
        script,
        ..ReceiverConfig::new(secrets.iter().map(|s| (*s).to_owned()).collect())
    };
    RunningReceiver::start(config, "127.0.0.1:0".parse().expect("a socket address"))
        .expect("the receiver starts")
}

/// A daemon config reading `sim`, with an http-forward sink posting to `receiver` signed with
/// `secrets` (space-separated in the environment) in parts of `batch_size` rows, and the
/// `job:ready` route to it.
fn forwarding_daemon(
    dir: &Path,
    sim: &Sim,
    receiver: &RunningReceiver,
    secrets: &[&str],
    batch_size: u64,
) -> Daemon {
    Daemon::new(dir)
        .sim(sim)
        .sink_http(
            SINK,
            &receiver.url(),
            SECRET_ENV,
            &format!("batch_size = {batch_size}"),
        )
        .env(SECRET_ENV, secrets.join(" "))
        .route(&["job:ready"], &[SINK])
}

/// Every record id of a workbook, by stream name `<slug>-<event>`.
fn expected_streams(
    sim: &Sim,
    workbook: &str,
    event: &str,
) -> BTreeMap<String, (String, Vec<String>)> {
    let sheets = workbook_sheets(sim.config(), workbook);
    assert!(
        !sheets.is_empty(),
        "the simulator knows workbook {workbook}"
    );
    sheets
        .into_iter()
        .map(|(sheet_id, slug, rows)| {
            let ids = record_ids(sim.config(), &sheet_id);
            assert_eq!(ids.len() as u64, rows, "sheet {sheet_id}");
            (format!("{slug}-{event}"), (slug, ids))
        })
        .collect()
}

/// What the receiver accepted, checked for the promises a deduplicating service relies on.
#[derive(Debug)]
struct Delivered {
    /// One body per (stream, seq, part).
    parts: BTreeMap<(String, u64, u64), FlatsyncBody>,
    /// (stream, seq, part) accepted more than once.
    repeated_parts: usize,
    /// (stream, seq) with at least one part accepted more than once.
    repeated_batches: usize,
}

/// Checks the accepted requests of one event against the workbook's records:
/// - requests with the same webhook id carry identical bodies and an equal `Idempotency-Key`;
/// - each (stream, seq, part) went out under exactly one webhook id;
/// - every stream of the workbook is there, with contiguous seqs, every part of every batch,
///   and `last` on the last part of the last batch only;
/// - taking one body per (stream, seq, part), every record id appears exactly once, in the
///   stream of its sheet; and over all requests, every id arrived at least once.
fn assert_delivered(
    accepted: &[ReceivedRequest],
    streams: &BTreeMap<String, (String, Vec<String>)>,
    event: &str,
) -> Delivered {
    let mut by_id: BTreeMap<String, Vec<&ReceivedRequest>> = BTreeMap::new();
    for request in accepted {
        let id = request
            .webhook_id
            .clone()
            .expect("an accepted request carries a webhook-id");
        by_id.entry(id).or_default().push(request);
    }
    let mut ids_of_part: BTreeMap<(String, u64, u64), BTreeSet<String>> = BTreeMap::new();
    let mut count_of_part: BTreeMap<(String, u64, u64), usize> = BTreeMap::new();
    let mut parts: BTreeMap<(String, u64, u64), FlatsyncBody> = BTreeMap::new();
    let mut every_arrival = Tally::default();
    for (id, requests) in &by_id {
        let first = requests[0];
        for request in requests {
            assert_eq!(
                request.body, first.body,
                "requests with webhook-id {id} carry different bodies"
            );
            assert_eq!(
                request.idempotency_key.as_deref(),
                Some(id.as_str()),
                "Idempotency-Key of webhook-id {id}"
            );
        }
        let body = first.flatsync().unwrap_or_else(|e| {
            panic!(
                "webhook-id {id}: not a flatsync body ({e}): {}",
                String::from_utf8_lossy(&first.body)
            )
        });
        assert_eq!(body.body_type, "rows", "webhook-id {id}");
        assert_eq!(body.event_id, event, "webhook-id {id}");
        for row in &body.rows {
            *every_arrival.seen.entry(row.id.clone()).or_default() += requests.len() as u64;
        }
        let key = (body.stream.clone(), body.seq, body.part);
        ids_of_part
            .entry(key.clone())
            .or_default()
            .insert(id.clone());
        *count_of_part.entry(key.clone()).or_default() += requests.len();
        parts.insert(key, body);
    }
    for (key, ids) in &ids_of_part {
        assert_eq!(
            ids.len(),
            1,
            "stream {} batch {} part {} went out under several webhook ids: {ids:?}",
            key.0,
            key.1,
            key.2
        );
    }
    let every_id: Vec<&String> = streams.values().flat_map(|(_, ids)| ids).collect();
    let arrivals = every_arrival.compare(&every_id);
    assert!(
        arrivals.lost.is_empty() && arrivals.unexpected.is_empty(),
        "the receiver did not get every row at least once: {arrivals}"
    );

    let seen_streams: BTreeSet<&String> = parts.keys().map(|(s, _, _)| s).collect();
    assert_eq!(
        seen_streams,
        streams.keys().collect::<BTreeSet<_>>(),
        "streams the receiver got"
    );
    for (stream, (slug, ids)) in streams {
        let mut batches: BTreeMap<u64, Vec<&FlatsyncBody>> = BTreeMap::new();
        for ((s, seq, _), body) in &parts {
            if s == stream {
                batches.entry(*seq).or_default().push(body);
            }
        }
        let seqs: Vec<u64> = batches.keys().copied().collect();
        let contiguous: Vec<u64> = (0..seqs.len() as u64).collect();
        assert_eq!(seqs, contiguous, "batches of stream {stream}");
        let last_seq = seqs.len() as u64 - 1;
        let mut tally = Tally::default();
        for (seq, bodies) in &batches {
            let count = bodies[0].parts;
            let numbers: Vec<u64> = bodies.iter().map(|b| b.part).collect();
            assert_eq!(
                numbers,
                (0..count).collect::<Vec<_>>(),
                "parts of stream {stream} batch {seq}"
            );
            for body in bodies {
                assert_eq!(body.parts, count, "stream {stream} batch {seq}");
                assert_eq!(body.kind, *slug, "stream {stream} batch {seq}");
                let should_be_last = *seq == last_seq && body.part + 1 == count;
                assert_eq!(
                    body.last, should_be_last,
                    "`last` of stream {stream} batch {seq} part {}",
                    body.part
                );
                for id in body.row_ids() {
                    *tally.seen.entry(id).or_default() += 1;
                }
            }
        }
        tally.assert_exactly(ids, &format!("stream {stream}, one body per part"));
    }

    let repeated: Vec<&(String, u64, u64)> = count_of_part
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(key, _)| key)
        .collect();
    let repeated_batches = repeated
        .iter()
        .map(|(s, seq, _)| (s, seq))
        .collect::<BTreeSet<_>>()
        .len();
    Delivered {
        parts,
        repeated_parts: repeated.len(),
        repeated_batches,
    }
}

/// The headers a sender signing with `secrets` sends for `body` under `webhook_id` at
/// `timestamp`: one signature per secret, in order, like the sink.
fn signed_headers(
    secrets: &[&str],
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut signatures = Vec::new();
    for secret in secrets {
        let signed = sign_request(secret, webhook_id, timestamp, body).expect("signable");
        for (name, value) in &signed {
            let value = value.to_str().expect("text headers").to_owned();
            if name.as_str() == "webhook-signature" {
                signatures.push(value);
            } else if !headers.iter().any(|(n, _)| n == name.as_str()) {
                headers.push((name.as_str().to_owned(), value));
            }
        }
    }
    headers.push(("webhook-signature".to_owned(), signatures.join(" ")));
    headers
}

/// POSTs `body` with `headers` straight to the receiver, from the test.
fn post_to(receiver: &RunningReceiver, headers: &[(String, String)], body: &[u8]) -> u16 {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    http::request("POST", &receiver.url(), &headers, body)
        .expect("the receiver answers")
        .status
}

/// The same body with one byte of a record id changed (to another ASCII letter or digit, so
/// the body stays valid UTF-8 and valid JSON).
fn tamper(body: &[u8]) -> Vec<u8> {
    let marker = br#""rows":[{"id":""#;
    let start = body
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("a body with rows")
        + marker.len();
    let mut changed = body.to_vec();
    let at = (start..changed.len())
        .find(|&i| changed[i].is_ascii_alphanumeric())
        .expect("a record id with a letter or digit");
    changed[at] = match changed[at] {
        b'0' => b'1',
        b'a' => b'b',
        b'A' => b'B',
        _ => b'0',
    };
    assert_ne!(changed, body);
    changed
}

/// A workbook submit through http-forward in several parts per batch, with the receiver
/// knowing the old and the new secret and the daemon signing with `daemon_secrets`; then a
/// tampered copy of a request the daemon sent, and one signed with an unknown secret, are
/// refused.
fn signed_requests_verify_and_tampered_ones_are_refused(label: &str, daemon_secrets: &[&str]) {
    let sim = Sim::start(SimConfig {
        rows: 1_201,
        sheets_per_workbook: 2,
        ..SimConfig::default()
    });
    let receiver = receiver(&[OLD_SECRET, NEW_SECRET], Vec::new());
    let dir = TestDir::new(label);
    let daemon = forwarding_daemon(dir.path(), &sim, &receiver, daemon_secrets, 100)
        .page_size(250)
        .start();
    let (event, workbook) = (format!("us_evt_{label}"), format!("us_wb_{label}"));
    let job = sim.job_for(&workbook);
    let reply = daemon.post(&submit_event_body(&event, &workbook, &job));
    assert_eq!(reply.status, 200, "webhook answer: {}", reply.text());
    daemon.wait_done(&[&event], EVENT_DEADLINE);

    let requests = receiver.requests();
    for request in &requests {
        assert!(
            request.verified && request.status == 200,
            "a request of the daemon was answered {} ({:?}), verified {}",
            request.status,
            request.reason,
            request.verified
        );
    }
    let streams = expected_streams(&sim, &workbook, &event);
    let delivered = assert_delivered(&requests, &streams, &event);
    assert!(
        delivered.parts.values().any(|b| b.parts > 1),
        "batch_size 100 with pages of 250 rows should split batches into parts"
    );

    // The rows are the source's records, values and validity included.
    for (sheet_id, slug, _) in workbook_sheets(sim.config(), &workbook) {
        let keys = sim.sheet_field_keys(&sheet_id);
        let source: BTreeMap<String, _> = sim
            .sheet_records(&sheet_id)
            .into_iter()
            .map(|row| (row.id.clone(), row))
            .collect();
        let stream = format!("{slug}-{event}");
        for ((s, seq, part), body) in &delivered.parts {
            if *s != stream {
                continue;
            }
            assert_eq!(body.fields, keys, "fields of {s} batch {seq} part {part}");
            for row in &body.rows {
                let want = &source[&row.id];
                assert_eq!(row.valid, Some(want.valid), "valid of {}", row.id);
                let values = row.values.as_ref().expect("a row has values");
                let want_values: serde_json::Map<String, Value> = want
                    .values
                    .iter()
                    .map(|(key, raw)| {
                        let value = serde_json::from_str(raw.get()).expect("source JSON");
                        (key.clone(), value)
                    })
                    .collect();
                assert_eq!(*values, want_values, "values of {}", row.id);
            }
        }
    }

    let log = daemon.log();
    for secret in [OLD_SECRET, NEW_SECRET] {
        let key = secret.trim_start_matches("whsec_");
        assert!(
            !log.contains(key),
            "a signing secret is in the daemon's log"
        );
    }

    // The same headers rebuilt from the daemon's secrets, the request's id and timestamp: the
    // untouched body passes again (so they are the headers the daemon sent), a changed byte
    // does not.
    let sent = &requests[0];
    let id = sent.webhook_id.as_deref().expect("a webhook-id");
    let timestamp = sent.timestamp.expect("a webhook-timestamp");
    let headers = signed_headers(daemon_secrets, id, timestamp, &sent.body);
    assert_eq!(
        post_to(&receiver, &headers, &sent.body),
        200,
        "the daemon's request sent again as it was"
    );
    let tampered = tamper(&sent.body);
    assert_eq!(
        post_to(&receiver, &headers, &tampered),
        401,
        "a body with one byte changed"
    );
    let refused = receiver.requests().pop().expect("recorded");
    assert_eq!(refused.body, tampered);
    assert_eq!(refused.reason.as_deref(), Some("no signature matches"));

    let forged = signed_headers(&[UNKNOWN_SECRET], id, unix_now(), &sent.body);
    assert_eq!(
        post_to(&receiver, &forged, &sent.body),
        401,
        "a request signed with a secret the receiver does not know"
    );
    let stats = receiver.stats();
    assert_eq!(stats.rejected, 2, "{stats:?}");
    assert_eq!(stats.faulted, 0, "{stats:?}");
    receiver.shutdown();
}

#[test]
fn requests_signed_with_the_new_secret_verify_during_a_rotation_and_tampering_is_refused() {
    signed_requests_verify_and_tampered_ones_are_refused("hf-sign-new", &[NEW_SECRET]);
}

#[test]
fn requests_signed_with_both_secrets_verify_and_tampering_is_refused() {
    signed_requests_verify_and_tampered_ones_are_refused("hf-sign-both", &[OLD_SECRET, NEW_SECRET]);
}

#[test]
fn kill_9_during_forwarding_of_100k_rows_repeats_batches_only_under_the_same_id() {
    let seed = std::env::var("FLATSYNC_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut journal = format!("hf-crash: seed {seed} (replay with FLATSYNC_E2E_SEED={seed})\n");

    // Page latency keeps the 100 pages in flight for long enough that every kill lands
    // mid-delivery; the short checkpoint interval lets progress survive the kills.
    let sim = Sim::start(SimConfig {
        rows: BIG_ROWS,
        seed: 21,
        sheets_per_workbook: 2,
        page_latency: Duration::from_millis(250),
        ..SimConfig::default()
    });
    let receiver = receiver(&[NEW_SECRET], Vec::new());
    let dir = TestDir::new("hf-crash");
    let settings = forwarding_daemon(dir.path(), &sim, &receiver, &[NEW_SECRET], 500)
        .sink_csv("archive")
        .sink_sqlite("warehouse")
        .route(&["job:ready"], &["archive", "warehouse"])
        .page_size(1000)
        .set("daemon", "checkpoint_interval_ms", "250");
    let (csv_dir, db, state_db) = (
        settings.csv_dir("archive"),
        settings.sqlite_path("warehouse"),
        settings.state_db(),
    );
    let mut daemon = settings.start();
    let (event, workbook) = ("us_evt_hfCrash", "us_wb_hfCrash");
    let job = sim.job_for(workbook);
    let reply = daemon.post(&submit_event_body(event, workbook, &job));
    assert_eq!(reply.status, 200, "webhook answer: {}", reply.text());

    let mut kills = 0;
    for round in 0..MAX_ROUNDS {
        if kills >= KILLS || daemon.pending_events().is_empty() {
            break;
        }
        let delay = rng.u64(200..=1500);
        std::thread::sleep(Duration::from_millis(delay));
        daemon.assert_alive(&format!("before kill {round}\n{journal}"));
        daemon.kill9();
        // Read after the kill: the state database holds exactly what was committed.
        let pending = !daemon.pending_events().is_empty();
        if pending {
            kills += 1;
        }
        let _ = writeln!(
            journal,
            "round {round}: kill -9 after {delay} ms, event pending {pending}, {} requests accepted so far",
            receiver.stats().accepted
        );
        daemon.restart();
    }
    assert!(
        kills >= KILLS,
        "only {kills} kills hit the pending event\n{journal}"
    );

    let started = Instant::now();
    daemon.wait_done(&[event], Duration::from_secs(600));
    let status = daemon.stop();
    assert!(
        status.success(),
        "clean stop after the crashes: {status}\n{journal}"
    );

    let requests = receiver.requests();
    let unverified: Vec<&ReceivedRequest> = requests.iter().filter(|r| !r.verified).collect();
    assert!(
        unverified.is_empty(),
        "{} requests failed verification, first: {:?}\n{journal}",
        unverified.len(),
        unverified.first().map(|r| &r.reason)
    );
    let streams = expected_streams(&sim, workbook, event);
    let delivered = assert_delivered(&receiver.accepted(), &streams, event);
    let stats = receiver.stats();
    let _ = writeln!(
        journal,
        "{kills} kills while pending; done {:.1} s after the last restart; receiver: {} requests \
         accepted for {} parts, {} parts repeated in {} repeated batches ({} duplicates by webhook-id)",
        started.elapsed().as_secs_f64(),
        stats.accepted,
        delivered.parts.len(),
        delivered.repeated_parts,
        delivered.repeated_batches,
        stats.duplicates
    );

    let expected: Vec<&String> = streams.values().flat_map(|(_, ids)| ids).collect();
    csv_rows(&csv_dir).assert_exactly(&expected, &format!("csv-folder sink\n{journal}"));
    sqlite_rows(&db).assert_exactly(&expected, &format!("sqlite sink\n{journal}"));
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
    let job_state = sim
        .job(&job)
        .unwrap_or_else(|| panic!("the simulator never saw job {job}\n{journal}"));
    assert_eq!(job_state.status, "complete", "{job_state:?}\n{journal}");
    println!("{journal}");
    receiver.shutdown();
}

#[test]
fn a_429_with_retry_after_and_a_503_outage_are_waited_out_and_every_row_arrives() {
    let sim = Sim::start(SimConfig {
        rows: 600,
        sheets_per_workbook: 2,
        ..SimConfig::default()
    });
    let receiver = receiver(
        &[NEW_SECRET],
        vec![
            Fault::RateLimit {
                requests: 1,
                retry_after_secs: 2,
            },
            Fault::Unavailable {
                duration: Duration::from_secs(3),
            },
            Fault::RateLimit {
                requests: 1,
                retry_after_secs: 1,
            },
        ],
    );
    let dir = TestDir::new("hf-backoff");
    let daemon = forwarding_daemon(dir.path(), &sim, &receiver, &[NEW_SECRET], 100)
        .page_size(200)
        .start();
    let (event, workbook) = ("us_evt_hfBackoff", "us_wb_hfBackoff");
    let job = sim.job_for(workbook);
    let reply = daemon.post(&submit_event_body(event, workbook, &job));
    assert_eq!(reply.status, 200, "webhook answer: {}", reply.text());
    daemon.wait_done(&[event], EVENT_DEADLINE);

    let streams = expected_streams(&sim, workbook, event);
    assert_delivered(&receiver.accepted(), &streams, event);
    let stats = receiver.stats();
    assert_eq!(
        stats.early_retries, 0,
        "a request went out before Retry-After elapsed: {stats:?}"
    );
    assert_eq!(stats.rejected, 0, "{stats:?}");
    let statuses: Vec<u16> = receiver.requests().iter().map(|r| r.status).collect();
    let count = |status: u16| statuses.iter().filter(|s| **s == status).count();
    assert_eq!(
        count(429),
        2,
        "both 429s of the script were served: {statuses:?}"
    );
    assert!(count(503) >= 1, "the outage was hit: {statuses:?}");
    assert_eq!(statuses.first(), Some(&429), "{statuses:?}");

    let log = daemon.log();
    let retried: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Request retried"))
        .collect();
    for status in ["status=429", "status=503"] {
        assert!(
            retried.iter().any(|line| line.contains(status)),
            "no `Request retried` line with {status} in the daemon's log:\n{}",
            retried.join("\n")
        );
    }
    receiver.shutdown();
}

/// Runs `flatsync ARGS --config <the daemon's config>`; panics unless it succeeds.
fn cli_ok(settings: &Daemon, args: &[&str]) -> String {
    let config = settings.config_path();
    let config = config.to_str().expect("test paths are UTF-8");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", config]);
    let output: Output = settings.cli(&all);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    assert!(
        output.status.success(),
        "flatsync {all:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Waits for the event to be `done` again after a retry, with `check` true.
fn wait_redelivered(daemon: &DaemonProcess, event: &str, check: impl Fn() -> bool) {
    wait::until(
        "the retried delivery",
        EVENT_DEADLINE,
        || {
            daemon.assert_alive("during the retried delivery");
            let done = daemon.event(event).is_some_and(|e| e.status == "done");
            (done && check()).then_some(())
        },
        || {
            format!(
                "event now: {:?}\n{}",
                daemon.event(event),
                daemon.log_tail()
            )
        },
    );
}

#[test]
fn a_422_dead_letters_the_delivery_with_its_body_and_a_retry_delivers_every_row() {
    let sim = Sim::start(SimConfig {
        rows: 500,
        sheets_per_workbook: 2,
        ..SimConfig::default()
    });
    let receiver = receiver(
        &[NEW_SECRET],
        vec![Fault::Status {
            requests: 1,
            status: 422,
            body: "bad row 7".to_owned(),
        }],
    );
    let dir = TestDir::new("hf-refused");
    let daemon = forwarding_daemon(dir.path(), &sim, &receiver, &[NEW_SECRET], 100)
        .page_size(200)
        .start();
    let (event, workbook) = ("us_evt_hfRefused", "us_wb_hfRefused");
    let job = sim.job_for(workbook);
    let reply = daemon.post(&submit_event_body(event, workbook, &job));
    assert_eq!(reply.status, 200, "webhook answer: {}", reply.text());
    let ended = daemon.wait_final(event, EVENT_DEADLINE);
    assert_eq!(ended.status, "failed", "{ended:?}\n{}", daemon.log_tail());

    let refused = receiver.requests()[0].clone();
    assert_eq!(refused.status, 422);
    assert!(refused.verified, "{refused:?}");
    let refused_id = refused.webhook_id.clone().expect("a webhook-id");

    let listed = cli_ok(daemon.settings(), &["dead-letter", "list", "--json"]);
    let letters: Value = serde_json::from_str(&listed)
        .unwrap_or_else(|e| panic!("dead-letter list printed no JSON ({e}):\n{listed}"));
    let letters = letters.as_array().expect("an array of dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["event_id"], event, "{letters:?}");
    assert_eq!(letters[0]["sink"], SINK, "{letters:?}");
    let error = letters[0]["error"].as_str().unwrap_or_default();
    for needle in ["HTTP 422", "bad row 7", refused_id.as_str()] {
        assert!(
            error.contains(needle),
            "the dead letter's error lacks {needle:?}: {error}"
        );
    }

    // The receiver is fixed (its script is used up): the retry delivers everything.
    let out = cli_ok(daemon.settings(), &["dead-letter", "retry", "--all"]);
    assert!(out.contains(event) && out.contains(SINK), "{out}");
    let streams = expected_streams(&sim, workbook, event);
    let total: usize = streams.values().map(|(_, ids)| ids.len()).sum();
    wait_redelivered(&daemon, event, || {
        receiver
            .accepted()
            .iter()
            .filter_map(|r| r.flatsync().ok())
            .map(|b| b.rows.len())
            .sum::<usize>()
            >= total
    });
    let accepted = receiver.accepted();
    assert_delivered(&accepted, &streams, event);
    assert!(
        accepted
            .iter()
            .any(|r| r.webhook_id.as_deref() == Some(refused_id.as_str())),
        "the refused part was delivered under its webhook-id {refused_id} after the retry"
    );
    let listed = cli_ok(daemon.settings(), &["dead-letter", "list", "--json"]);
    let letters: Value = serde_json::from_str(&listed).expect("JSON");
    assert_eq!(
        letters,
        serde_json::json!([]),
        "dead letters after the retry"
    );
    receiver.shutdown();
}
