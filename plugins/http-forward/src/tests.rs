mod server;

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flatsync_plugin_sdk::{
    Batch, BatchParts, CreateContext, LogLevel, Logger, Sink, SinkError, serde_json,
};
use serde_json::{Value, json};
use standardwebhooks::Webhook;
use ureq::http::{HeaderMap, HeaderValue, header};

use crate::HttpForward;
use crate::config::Signer;
use crate::deliver::{Clock, SystemClock, retry_after};
use server::{Received, Reply, TestServer};

/// Published Standard Webhooks vector A (reliability.md (c)).
const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Published Standard Webhooks vector B.
const SECRET_B: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

const RECEIVED_AT_MS: i64 = 1_714_658_320_012; // 2024-05-02T13:58:40.012Z

fn no_env(_: &str) -> Option<OsString> {
    None
}

fn create_with_logger(config: Value, logger: Logger) -> Result<HttpForward, SinkError> {
    HttpForward::with_env(
        &CreateContext::new("http", logger),
        config,
        &no_env,
        Arc::new(SystemClock),
    )
}

fn create(config: Value) -> Result<HttpForward, SinkError> {
    create_with_logger(config, Logger::discard())
}

/// A config for `url` with fast retries; `extra` keys are merged in.
fn config(url: &str, extra: Value) -> Value {
    let mut config = json!({
        "url": url,
        "secrets": [SECRET_A],
        "retry_initial_ms": 10,
        "retry_max_ms": 50,
    });
    let (Value::Object(base), Value::Object(extra)) = (&mut config, extra) else {
        panic!("configs are objects");
    };
    base.extend(extra);
    config
}

fn sink(url: &str, extra: Value) -> HttpForward {
    create(config(url, extra)).expect("valid config")
}

/// A sink whose time is `clock`'s.
fn sink_with_clock(url: &str, extra: Value, clock: &Arc<ManualClock>) -> HttpForward {
    let clock: Arc<dyn Clock> = Arc::clone(clock) as _;
    HttpForward::with_env(
        &CreateContext::new("http", Logger::discard()),
        config(url, extra),
        &no_env,
        clock,
    )
    .expect("valid config")
}

/// A clock that moves only when the sink sleeps: a test reads how long the sink waited,
/// exactly, whatever the load on the machine. The requests still go over real sockets.
#[derive(Debug)]
struct ManualClock {
    start: Instant,
    slept: Mutex<Duration>,
}

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            slept: Mutex::new(Duration::ZERO),
        })
    }

    /// How long the sink has slept in all.
    fn slept(&self) -> Duration {
        *self.slept.lock().expect("clock lock")
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.slept()
    }

    fn sleep(&self, duration: Duration) {
        *self.slept.lock().expect("clock lock") += duration;
    }
}

fn row(id: &str, values: &str) -> String {
    format!("{{\"id\":\"{id}\",\"valid\":true,\"values\":{values}}}\n")
}

fn rows(count: usize) -> Vec<String> {
    (0..count)
        .map(|n| row(&format!("r{n}"), &format!(r#"{{"n":{n}}}"#)))
        .collect()
}

/// Writes a batch of stream `s1` (kind `contacts`, event `ev1`).
fn write(
    sink: &mut HttpForward,
    seq: u64,
    lines: &[String],
    last: bool,
    deletions: bool,
) -> Result<(), SinkError> {
    write_stream(sink, "contacts-ev1", seq, lines, last, deletions)
}

fn write_stream(
    sink: &mut HttpForward,
    stream: &str,
    seq: u64,
    lines: &[String],
    last: bool,
    deletions: bool,
) -> Result<(), SinkError> {
    let ndjson = lines.concat();
    sink.write_batch(&Batch::from_parts(BatchParts {
        stream,
        kind: "contacts",
        event_id: "ev1",
        fields_json: r#"["n","email"]"#,
        seq,
        row_count: lines.len() as u64,
        ndjson: ndjson.as_bytes(),
        received_at_ms: RECEIVED_AT_MS,
        last,
        deletions,
    }))
}

type LogLines = Arc<Mutex<Vec<(LogLevel, String)>>>;

fn collecting_logger() -> (Logger, LogLines) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let logger = Logger::from_fn(move |level, message| {
        sink.lock()
            .expect("log lock")
            .push((level, message.to_owned()));
    });
    (logger, lines)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

#[test]
fn published_standard_webhooks_vectors_reproduce() {
    let a = Signer::new([SECRET_A], "test").expect("vector A's secret");
    assert_eq!(
        a.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#
        )
        .expect("sign"),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
    // Re-serialising the body changes the signature (derived vector in reliability.md (c)).
    assert_eq!(
        a.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test":2432232314}"#
        )
        .expect("sign"),
        "v1,Vif40peJBP7Iyl0XGmu61n4MwdrcHov5CFREBpE0svs="
    );
    let b = Signer::new([SECRET_B], "test").expect("vector B's secret");
    let vector_b = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
    assert_eq!(
        b.sign(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1_649_367_553,
            br#"{"email":"test@example.com","username":"test_user"}"#
        )
        .expect("sign"),
        vector_b
    );
    // Rotation: one signature per secret, space-separated, in configuration order.
    let both = Signer::new([SECRET_A, SECRET_B], "test").expect("both secrets");
    let header = both
        .sign(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1_649_367_553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        )
        .expect("sign");
    let signatures: Vec<&str> = header.split(' ').collect();
    assert_eq!(signatures.len(), 2);
    assert_eq!(signatures[1], vector_b);
}

#[test]
fn requests_are_signed_with_every_secret_and_verify() {
    let server = TestServer::scripted(Vec::new());
    let mut sink = sink(
        &server.url(),
        json!({
            "secrets": [SECRET_A, SECRET_B],
            "headers": {"Authorization": "Bearer test-token", "X-Source": "flatsync"},
        }),
    );
    let before = unix_now();
    write(&mut sink, 0, &rows(2), true, false).expect("delivered");
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/hook");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("authorization"), Some("Bearer test-token"));
    assert_eq!(request.header("x-source"), Some("flatsync"));
    let id = request.header("webhook-id").expect("webhook-id");
    assert!(id.starts_with("msg_"), "{id}");
    assert_eq!(id.len(), 4 + 32);
    assert!(id[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(request.header("idempotency-key"), Some(id));
    let timestamp: i64 = request
        .header("webhook-timestamp")
        .expect("timestamp")
        .parse()
        .expect("integer timestamp");
    assert!((before..=unix_now()).contains(&timestamp));
    let signature = request.header("webhook-signature").expect("signature");
    assert_eq!(signature.split(' ').count(), 2);

    let headers = request.header_map();
    for secret in [SECRET_A, SECRET_B] {
        let webhook = Webhook::new(secret).expect("secret");
        webhook
            .verify(&request.body, &headers)
            .unwrap_or_else(|error| panic!("verifies with one secret: {error}"));
        let mut tampered = request.body.clone();
        let at = tampered
            .iter()
            .position(|&byte| byte == b'0')
            .expect("a digit");
        tampered[at] = b'9';
        assert!(webhook.verify(&tampered, &headers).is_err());
    }
    let stranger = Webhook::new("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").expect("secret");
    assert!(stranger.verify(&request.body, &headers).is_err());
}

#[test]
fn flatsync_body_carries_the_batch_and_its_rows() {
    let server = TestServer::scripted(Vec::new());
    let mut sink = sink(&server.url(), json!({}));
    let lines = [
        row("r1", r#"{"n":1.50,"email":"a@x.org"}"#),
        "{\"id\":\"r2\",\"valid\":false,\"values\":{\"email\":null,\"n\":[1, 2]}}\n".to_owned(),
    ];
    write(&mut sink, 0, &lines, true, false).expect("delivered");
    let requests = server.requests();
    assert_eq!(
        String::from_utf8(requests[0].body.clone()).expect("UTF-8"),
        concat!(
            r#"{"type":"rows","stream":"contacts-ev1","kind":"contacts","eventId":"ev1","#,
            r#""seq":0,"part":0,"parts":1,"last":true,"fields":["n","email"],"#,
            r#""receivedAt":"2024-05-02T13:58:40.012Z","rows":["#,
            r#"{"id":"r1","valid":true,"values":{"n":1.50,"email":"a@x.org"}},"#,
            r#"{"id":"r2","valid":false,"values":{"email":null,"n":[1, 2]}}]}"#
        )
    );
}

#[test]
fn batches_are_split_into_parts_of_batch_size() {
    let server = TestServer::scripted(Vec::new());
    let mut sink = sink(&server.url(), json!({"batch_size": 2}));
    write(&mut sink, 0, &rows(5), false, false).expect("seq 0");
    write(&mut sink, 1, &rows(2), true, false).expect("seq 1");
    let requests = server.requests();
    let bodies: Vec<Value> = requests.iter().map(Received::json).collect();
    let summary: Vec<(u64, u64, u64, bool, Vec<&str>)> = bodies
        .iter()
        .map(|body| {
            let ids = body["rows"]
                .as_array()
                .expect("rows")
                .iter()
                .map(|row| row["id"].as_str().expect("id"))
                .collect();
            (
                body["seq"].as_u64().expect("seq"),
                body["part"].as_u64().expect("part"),
                body["parts"].as_u64().expect("parts"),
                body["last"].as_bool().expect("last"),
                ids,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, 0, 3, false, vec!["r0", "r1"]),
            (0, 1, 3, false, vec!["r2", "r3"]),
            (0, 2, 3, false, vec!["r4"]),
            (1, 0, 1, true, vec!["r0", "r1"]),
        ]
    );
    let mut ids: Vec<&str> = requests
        .iter()
        .map(|request| request.header("webhook-id").expect("id"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4, "every part has its own webhook id");
}

#[test]
fn an_empty_batch_still_sends_one_part_without_rows() {
    let server = TestServer::scripted(Vec::new());
    let mut sink = sink(&server.url(), json!({}));
    write(&mut sink, 0, &[], true, false).expect("delivered");
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let body = requests[0].json();
    assert_eq!(body["rows"], json!([]));
    assert_eq!(body["parts"], 1);
    assert_eq!(body["last"], true);
}

#[test]
fn a_resend_after_a_crash_has_the_same_id_key_and_body() {
    let server = TestServer::scripted(Vec::new());
    let lines = rows(3);
    for _ in 0..2 {
        // A fresh instance each time: nothing survives in memory, as after kill -9.
        let mut sink = sink(&server.url(), json!({"batch_size": 2}));
        write(&mut sink, 4, &lines, false, false).expect("delivered");
    }
    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    for part in 0..2 {
        let (first, again) = (&requests[part], &requests[part + 2]);
        assert_eq!(first.header("webhook-id"), again.header("webhook-id"));
        assert_eq!(
            first.header("idempotency-key"),
            again.header("idempotency-key")
        );
        assert_eq!(first.body, again.body);
    }
    assert_ne!(
        requests[0].header("webhook-id"),
        requests[1].header("webhook-id")
    );
}

#[test]
fn a_different_batch_size_gives_the_resplit_parts_new_ids() {
    let server = TestServer::scripted(Vec::new());
    let lines = rows(4);
    let mut small = sink(&server.url(), json!({"batch_size": 2}));
    write(&mut small, 0, &lines, true, false).expect("delivered");
    let mut large = sink(&server.url(), json!({"batch_size": 4}));
    write(&mut large, 0, &lines, true, false).expect("delivered");
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    // Part 0 holds rows 0-1 in one run and rows 0-3 in the other: a receiver must not drop
    // the second as a duplicate of the first.
    assert_ne!(
        requests[0].header("webhook-id"),
        requests[2].header("webhook-id")
    );
}

#[test]
fn retry_after_is_honoured_even_when_the_backoff_is_shorter() {
    let server = TestServer::scripted(vec![
        Reply::status(429, "slow down").with_header("Retry-After", "1"),
    ]);
    let mut sink = sink(&server.url(), json!({}));
    write(&mut sink, 0, &rows(1), true, false).expect("delivered after the wait");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].at.duration_since(requests[0].replied_at);
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
    assert_eq!(requests[0].body, requests[1].body);
}

#[test]
fn retry_after_beyond_the_budget_holds_the_next_call_back_too() {
    let clock = ManualClock::new();
    // When each request arrived, by the sink's clock.
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let mut replies =
        vec![Reply::status(503, "maintenance").with_header("Retry-After", "2")].into_iter();
    let server = TestServer::start({
        let (clock, arrivals) = (Arc::clone(&clock), Arc::clone(&arrivals));
        move |_| {
            arrivals.lock().expect("arrivals lock").push(clock.slept());
            replies.next().unwrap_or_else(Reply::ok)
        }
    });
    let mut sink = sink_with_clock(&server.url(), json!({"retry_budget_secs": 1}), &clock);
    let error = write(&mut sink, 0, &rows(1), true, false).expect_err("budget too short");
    assert!(error.is_retry(), "{error}");
    assert!(error.message().contains("Retry-After"), "{error}");
    assert_eq!(
        clock.slept(),
        Duration::from_secs(1),
        "the call waits out its own budget, not the receiver's two seconds"
    );
    // The host repeats the call at once; the sink still waits for the receiver's time, across
    // as many calls as that takes.
    let mut calls = 1;
    while let Err(error) = write(&mut sink, 0, &rows(1), true, false) {
        assert!(error.is_retry(), "{error}");
        calls += 1;
        assert!(calls <= 4, "still failing after {calls} calls: {error}");
    }
    let arrivals = arrivals.lock().expect("arrivals lock").clone();
    assert_eq!(arrivals.len(), 2, "{arrivals:?}");
    assert!(
        arrivals[1] >= arrivals[0] + Duration::from_secs(2),
        "the second request went out before the receiver's Retry-After: {arrivals:?}"
    );
}

#[test]
fn unavailable_twice_then_ok_is_delivered_and_logged() {
    let server = TestServer::scripted(vec![Reply::status(503, "busy"), Reply::status(503, "busy")]);
    let (logger, lines) = collecting_logger();
    let mut sink = create_with_logger(config(&server.url(), json!({})), logger).expect("sink");
    write(&mut sink, 0, &rows(2), true, false).expect("delivered");
    let requests = server.requests();
    let statuses: Vec<u16> = requests.iter().map(|request| request.status).collect();
    assert_eq!(statuses, [503, 503, 200]);
    assert!(requests.windows(2).all(|pair| pair[0].body == pair[1].body
        && pair[0].header("webhook-id") == pair[1].header("webhook-id")));
    let lines = lines.lock().expect("log lock");
    let retried: Vec<&String> = lines
        .iter()
        .filter(|(level, message)| {
            *level == LogLevel::Warn && message.starts_with("Request retried")
        })
        .map(|(_, message)| message)
        .collect();
    assert_eq!(retried.len(), 2);
    assert!(retried[0].contains("status=503") && retried[0].contains("attempt=1"));
    assert!(retried[1].contains("attempt=2"));
    assert!(lines.iter().any(
        |(level, message)| *level == LogLevel::Debug && message.starts_with("Batch forwarded")
    ));
}

#[test]
fn a_client_error_is_fatal_and_quotes_the_response_body() {
    let server = TestServer::scripted(vec![Reply::status(
        422,
        r#"{"error":"field email is required"}"#,
    )]);
    let url = format!("{}?token=query-secret", server.url());
    let mut sink = sink(&url, json!({}));
    let error = write(&mut sink, 3, &rows(1), false, false).expect_err("422 is final");
    assert!(!error.is_retry());
    let id = server.requests()[0]
        .header("webhook-id")
        .expect("id")
        .to_owned();
    assert_eq!(
        error.message(),
        format!(
            "HTTP 422 from {} for stream contacts-ev1 batch 3 part 0 (webhook-id {id}): \
             {{\"error\":\"field email is required\"}}",
            server.url()
        )
    );
    assert_eq!(server.requests().len(), 1, "a 4xx is not retried");
}

#[test]
fn a_long_error_body_is_cut_at_two_kib() {
    let long = "x".repeat(10_000);
    let server = TestServer::scripted(vec![Reply::status(400, &long)]);
    let mut sink = sink(&server.url(), json!({}));
    let error = write(&mut sink, 0, &rows(1), true, false).expect_err("400 is final");
    let quoted = error.message().rsplit(": ").next().expect("body");
    assert_eq!(quoted.len(), 2048);
}

#[test]
fn a_redirect_is_fatal_and_names_the_location() {
    let server = TestServer::scripted(vec![
        Reply::status(308, "").with_header("Location", "https://elsewhere.example/hook?sig=abc"),
    ]);
    let mut sink = sink(&server.url(), json!({}));
    let error = write(&mut sink, 0, &rows(1), true, false).expect_err("redirects are final");
    assert!(!error.is_retry());
    assert!(error.message().starts_with("HTTP 308 from"), "{error}");
    assert!(
        error
            .message()
            .contains("Location: https://elsewhere.example/hook"),
        "{error}"
    );
    assert!(!error.message().contains("sig=abc"), "{error}");
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn an_exhausted_budget_is_a_retry_and_the_next_call_skips_accepted_parts() {
    let failing = Arc::new(AtomicBool::new(true));
    let server = TestServer::start({
        let failing = Arc::clone(&failing);
        move |request: &Received| {
            if request.part() == 1 && failing.load(Ordering::SeqCst) {
                Reply::status(503, "down")
            } else {
                Reply::ok()
            }
        }
    });
    let clock = ManualClock::new();
    let mut sink = sink_with_clock(
        &server.url(),
        json!({"batch_size": 1, "retry_budget_secs": 1}),
        &clock,
    );
    let lines = rows(3);
    let error = write(&mut sink, 0, &lines, true, false).expect_err("part 1 keeps failing");
    assert!(error.is_retry(), "{error}");
    assert!(error.message().contains("retry budget of 1 s"), "{error}");
    assert!(error.message().contains("HTTP 503"), "{error}");
    assert!(
        clock.slept() <= Duration::from_secs(1),
        "the sink backed off past its budget: {:?}",
        clock.slept()
    );

    failing.store(false, Ordering::SeqCst);
    write(&mut sink, 0, &lines, true, false).expect("the host's repeat goes through");
    let parts: Vec<(u64, u16)> = server
        .requests()
        .iter()
        .map(|request| (request.part(), request.status))
        .collect();
    let count = |part: u64, status: u16| {
        parts
            .iter()
            .filter(|(p, s)| *p == part && *s == status)
            .count()
    };
    assert_eq!(count(0, 200), 1, "part 0 was accepted once and not resent");
    assert!(count(1, 503) >= 2, "{parts:?}");
    assert_eq!(count(1, 200), 1);
    assert_eq!(count(2, 200), 1);
    assert_eq!(parts.len(), count(1, 503) + 3);
}

#[test]
fn an_unreachable_receiver_is_a_retry() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let clock = ManualClock::new();
    let mut sink = sink_with_clock(
        &format!("http://127.0.0.1:{port}/hook"),
        json!({"retry_budget_secs": 1}),
        &clock,
    );
    let error = write(&mut sink, 0, &rows(1), true, false).expect_err("nobody listens");
    assert!(error.is_retry(), "{error}");
    assert!(error.message().contains("retry budget"), "{error}");
    assert!(
        error.message().contains("last failure:"),
        "it tried at least once: {error}"
    );
    assert!(
        clock.slept() <= Duration::from_secs(1),
        "the sink backed off past its budget: {:?}",
        clock.slept()
    );
}

#[test]
fn a_slow_receiver_times_out_within_the_budget() {
    // The receiver holds the request until the test lets it go. Its minute of patience only
    // turns a sink that waits for the answer into a failure instead of a hang.
    let (release, released) = mpsc::channel::<()>();
    let held = Arc::new(AtomicBool::new(false));
    let server = TestServer::start({
        let held = Arc::clone(&held);
        move |_| {
            held.store(true, Ordering::SeqCst);
            let _ = released.recv_timeout(Duration::from_secs(60));
            Reply::ok()
        }
    });
    let mut sink = sink(
        &server.url(),
        json!({"timeout_secs": 600, "retry_budget_secs": 1}),
    );
    let error = write(&mut sink, 0, &rows(1), true, false).expect_err(
        "a request must not outlive the budget: it gives up while the receiver holds it",
    );
    assert!(error.is_retry(), "{error}");
    assert!(error.message().contains("retry budget of 1 s"), "{error}");
    assert!(
        held.load(Ordering::SeqCst),
        "the request reached the receiver"
    );
    release.send(()).expect("the server is still running");
}

#[test]
fn deletion_batches_name_the_deleted_ids() {
    let server = TestServer::scripted(Vec::new());
    let mut sink = sink(&server.url(), json!({}));
    let deleted = [row("r7", "{}"), row("r8", "{}")];
    write_stream(&mut sink, "contacts-deleted-ev1", 0, &deleted, true, true).expect("delivered");
    write_stream(&mut sink, "contacts-deleted-ev1", 0, &deleted, true, false).expect("delivered");
    let requests = server.requests();
    let body = requests[0].json();
    assert_eq!(body["type"], "deletions");
    assert_eq!(body["kind"], "contacts");
    assert_eq!(body["rows"], json!([{"id": "r7"}, {"id": "r8"}]));
    assert_ne!(
        requests[0].header("webhook-id"),
        requests[1].header("webhook-id"),
        "the type is part of the id"
    );
}

#[test]
fn egress_format_has_the_webhook_egress_shape() {
    let server = TestServer::scripted(Vec::new());
    let mut sink = sink(
        &server.url(),
        json!({"format": "flatfile-egress", "batch_size": 1}),
    );
    let lines = [
        row("r1", r#"{"n":1,"email":"a@x.org"}"#),
        "{\"id\":\"r2\",\"valid\":false,\"values\":{\"email\":\"b@\"}}\n".to_owned(),
    ];
    write(&mut sink, 0, &lines, true, false).expect("rows");
    write_stream(
        &mut sink,
        "contacts-deleted-ev1",
        0,
        &[row("r9", "{}")],
        true,
        true,
    )
    .expect("deletions");
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "one request per part");
    let first = requests[0].json();
    let workbook = &first["workbook"];
    assert_eq!(
        workbook["metadata"]["flatsync"],
        json!({"type": "rows", "stream": "contacts-ev1", "eventId": "ev1", "seq": 0, "part": 0,
               "parts": 2, "last": false, "receivedAt": "2024-05-02T13:58:40.012Z"})
    );
    let sheet = &workbook["sheets"][0];
    assert_eq!(sheet["slug"], "contacts");
    assert_eq!(sheet["name"], "contacts");
    assert_eq!(
        sheet["config"]["fields"],
        json!([{"key": "n"}, {"key": "email"}])
    );
    assert_eq!(
        sheet["records"],
        json!([{"id": "r1", "valid": true, "metadata": {}, "values": {
            "n": {"value": 1, "valid": true, "messages": []},
            "email": {"value": "a@x.org", "valid": true, "messages": []}}}])
    );
    let second = requests[1].json();
    assert_eq!(second["workbook"]["metadata"]["flatsync"]["last"], true);
    assert_eq!(
        second["workbook"]["sheets"][0]["records"][0]["values"]["email"],
        json!({"value": "b@", "valid": false, "messages": []})
    );
    let deletions = requests[2].json();
    assert_eq!(
        deletions["workbook"]["metadata"]["flatsync"]["type"],
        "deletions"
    );
    let sheet = &deletions["workbook"]["sheets"][0];
    assert_eq!(sheet["records"], json!([]));
    assert_eq!(sheet["deletedRecords"], json!([{"id": "r9"}]));
}

#[test]
fn a_gap_in_a_stream_is_fatal_and_a_redelivery_is_sent_again() {
    let server = TestServer::scripted(Vec::new());
    let mut sink = sink(&server.url(), json!({}));
    write(&mut sink, 0, &rows(1), false, false).expect("seq 0");
    write(&mut sink, 0, &rows(1), false, false).expect("seq 0 again");
    let error = write(&mut sink, 2, &rows(1), false, false).expect_err("seq 1 is missing");
    assert!(!error.is_retry());
    assert!(error.message().contains("next expected is 1"), "{error}");
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "the gap was not sent");
    assert_eq!(requests[0].body, requests[1].body);
}

fn config_error(config: Value) -> String {
    create(config)
        .expect_err("invalid config")
        .message()
        .to_owned()
}

#[test]
fn config_errors_name_the_key() {
    let url = "http://127.0.0.1:9/hook";
    let cases: Vec<(Value, &str)> = vec![
        (json!({"secrets": [SECRET_A]}), "`url` is required"),
        (config("ftp://127.0.0.1/x", json!({})), "`url`"),
        (config("not a url", json!({})), "`url`"),
        (config("http://user:pw@127.0.0.1/x", json!({})), "`url`"),
        (config(url, json!({"batch_size": 0})), "`batch_size`"),
        (config(url, json!({"timeout_secs": 0})), "`timeout_secs`"),
        (config(url, json!({"format": "csv"})), "`format`"),
        (
            config(url, json!({"headers": {"Content-Type": "text/plain"}})),
            "`headers`",
        ),
        (
            config(url, json!({"headers": {"Webhook-Id": "x"}})),
            "`headers`",
        ),
        (
            config(url, json!({"headers": {"Idempotency-Key": "x"}})),
            "`headers`",
        ),
        (config(url, json!({"headers": {"Host": "x"}})), "`headers`"),
        (
            config(url, json!({"headers": {"Content-Length": "1"}})),
            "`headers`",
        ),
        (config(url, json!({"headers": {"X-Count": 3}})), "`headers`"),
        (
            config(url, json!({"headers": {"bad name": "x"}})),
            "`headers`",
        ),
        (
            config(url, json!({"retry_initial_ms": 0})),
            "`retry_initial_ms`",
        ),
        (
            config(url, json!({"retry_initial_ms": 100, "retry_max_ms": 50})),
            "`retry_max_ms`",
        ),
        (
            config(url, json!({"retry_budget_secs": 101})),
            "`retry_budget_secs` must be 1 to 100",
        ),
        (
            config(url, json!({"retry_budget_secs": 0})),
            "`retry_budget_secs`",
        ),
        (config(url, json!({"secrets": []})), "`secrets`"),
        (config(url, json!({"secrets": ["whsec_"]})), "`secrets`"),
        (
            config(url, json!({"secrets": ["whsec_AAAA"]})),
            "holds 3 bytes",
        ),
        (
            config(url, json!({"secret_env": "NO_SUCH_VARIABLE"})),
            "`secret_env`",
        ),
        (
            config(url, json!({"secret_credential": "../x"})),
            "`secret_credential`",
        ),
        (
            config(url, json!({"secret_file": "/nonexistent/flatsync-secrets"})),
            "`secret_file`",
        ),
        (
            config(url, json!({"surprise": true})),
            "unknown config key `surprise`",
        ),
    ];
    for (config, expected) in cases {
        let message = config_error(config.clone());
        assert!(
            message.contains(expected),
            "{config}: {message:?} should contain {expected:?}"
        );
    }
    let no_secret = config_error(json!({"url": url}));
    for key in ["secret_env", "secret_file", "secret_credential", "secrets"] {
        assert!(no_secret.contains(&format!("`{key}`")), "{no_secret}");
    }
    let two = config_error(config(url, json!({"secret_env": "X"})));
    assert!(
        two.contains("`secret_env`") && two.contains("`secrets`"),
        "{two}"
    );
}

#[test]
fn secrets_and_credentials_never_appear_in_errors_or_debug() {
    let marker = "SeCrEtMaRkEr";
    let leaky: Vec<Value> = vec![
        json!({"secrets": [format!("whsec_{marker}!!")]}),
        json!({"secrets": [format!("{marker}AAAAAAAAAAAAAAAAAAAAAAAA")]}),
        json!({"secrets": format!("whsec_{marker}")}),
        json!({"secrets": [SECRET_A, format!("whsec_{marker}AAAAAAAAAAAA")]}),
        json!({"secret_env": format!("whsec_{marker}")}),
        json!({"secret_file": format!("whsec_{marker}")}),
        json!({"secret_credential": format!("whsec_{marker}")}),
        json!({"secrets": [SECRET_A], "headers": {"Authorization": format!("Bearer {marker}\n")}}),
    ];
    for extra in leaky {
        let mut config = json!({"url": "http://127.0.0.1:9/hook"});
        if let (Value::Object(base), Value::Object(extra)) = (&mut config, extra.clone()) {
            base.extend(extra);
        }
        let message = config_error(config);
        assert!(!message.contains(marker), "{extra}: {message}");
        assert!(!message.contains("MfKQ9r8G"), "{extra}: {message}");
    }

    let sink = create(json!({
        "url": format!("http://127.0.0.1:9/hook?key={marker}"),
        "secrets": [SECRET_A, SECRET_B],
        "headers": {"Authorization": format!("Bearer {marker}")},
    }))
    .expect("valid config");
    let debug = format!("{sink:?}");
    for secret in [marker, "MfKQ9r8G", "C2FVsBQI"] {
        assert!(!debug.contains(secret), "{debug}");
    }
    assert!(debug.contains("http://127.0.0.1:9/hook"), "{debug}");
    assert!(debug.contains("authorization"), "{debug}");
}

#[test]
fn secrets_load_from_env_file_and_credentials_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("webhook-secrets");
    std::fs::write(
        &file,
        format!("# current key\n{SECRET_A}\n\n{SECRET_B}   # next key, rotating in\n"),
    )
    .expect("write secrets");
    let variables: HashMap<&str, OsString> = HashMap::from([
        (
            "HOOK_SECRETS",
            OsString::from(format!(" {SECRET_A}\t{SECRET_B}\n")),
        ),
        ("CREDENTIALS_DIRECTORY", dir.path().as_os_str().to_owned()),
    ]);
    let env = |name: &str| variables.get(name).cloned();
    let server = TestServer::scripted(Vec::new());
    let sources = [
        json!({"secret_env": "HOOK_SECRETS"}),
        json!({"secret_file": file}),
        json!({"secret_credential": "webhook-secrets"}),
    ];
    for source in sources {
        let mut config = json!({"url": server.url()});
        if let (Value::Object(base), Value::Object(source)) = (&mut config, source.clone()) {
            base.extend(source);
        }
        let mut sink = HttpForward::with_env(
            &CreateContext::new("http", Logger::discard()),
            config,
            &env,
            Arc::new(SystemClock),
        )
        .unwrap_or_else(|error| panic!("{source}: {error}"));
        write(&mut sink, 0, &rows(1), true, false).expect("delivered");
        let request = server.requests().pop().expect("a request");
        let headers = request.header_map();
        for secret in [SECRET_A, SECRET_B] {
            Webhook::new(secret)
                .expect("secret")
                .verify(&request.body, &headers)
                .unwrap_or_else(|error| panic!("{source}: {error}"));
        }
    }
}

#[test]
fn flush_and_check_never_call_the_receiver() {
    let server = TestServer::scripted(Vec::new());
    let mut sink = sink(&server.url(), json!({}));
    sink.check().expect("check validates only");
    sink.flush().expect("flush is a no-op");
    assert!(server.requests().is_empty());
    // A receiver that is down at start-up does not fail the check.
    let mut down = sink_for_closed_port();
    down.check()
        .expect("check passes while the receiver is down");
}

fn sink_for_closed_port() -> HttpForward {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    sink(&format!("http://127.0.0.1:{port}/hook"), json!({}))
}

#[test]
fn retry_after_reads_seconds_and_http_dates() {
    // 2015-10-21T07:28:00.5Z: half a second past the date below.
    let now = UNIX_EPOCH + Duration::from_millis(1_445_412_480_500);
    let with = |value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(value).expect("header value"),
        );
        retry_after(&headers, now)
    };
    assert_eq!(with("7"), Some(Duration::from_secs(7)));
    assert_eq!(with(" 0 "), Some(Duration::ZERO));
    assert_eq!(with("soon"), None);
    assert_eq!(with("-3"), None);
    assert_eq!(
        with("Wed, 21 Oct 2015 07:29:00 GMT"),
        Some(Duration::from_millis(59_500)),
        "a date is a wait from now"
    );
    assert_eq!(
        with("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO),
        "a date in the past means now"
    );
    assert_eq!(retry_after(&HeaderMap::new(), now), None);
}

#[test]
fn the_plugin_declares_that_it_handles_deletions() {
    let descriptor = flatsync_plugin_sdk::in_process::<HttpForward>("http-forward");
    assert_ne!(
        descriptor.flags & flatsync_plugin_sdk::abi::PLUGIN_FLAG_DELETIONS,
        0
    );
}
