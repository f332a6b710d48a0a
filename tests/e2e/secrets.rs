//! Every secret flatsync knows, each set to a recognisable value, through webhooks of every
//! kind, polling, a failed API call, a failed sink, the operator commands and debug logs: none
//! of the values appears in any output, log line, state database file, argv or metric.

use std::time::Duration;

use flatfile_sim::receiver::{Fault, ReceiverConfig, RunningReceiver};
use flatfile_sim::{EmitEvent, SimConfig, SimEnvironment, legacy_webhook_body, submit_event_body};
use flatsync_tests::daemon::{free_port, toml_string};
use flatsync_tests::{Daemon, DaemonProcess, HttpReply, Sim, TestDir, http, wait};
use serde_json::json;

use crate::common::{
    EVENT_DEADLINE, contains, forwarded, jwt, now, polling_environment, signed, state_files,
};

/// The legacy API key, `<key id>+<secret>`.
const LEGACY_KEY: &str = "canaryKeyId0001+CANARYlegacySecret0001";
const PLATFORM_KEY: &str = "sk_CANARYplatformKey0002";
const ENVIRONMENT_KEY: &str = "sk_CANARYenvironmentKey0003";
const WEBHOOK_TOKEN: &str = "CANARYwebhookToken0004";
const PATH_SECRET: &str = "CANARYpathSecret0005_0123456789abc";
/// `whsec_` + base64 of the 32 bytes `CANARYsigning0006-thirty-two-byt`.
const SIGNING_SECRET: &str = "whsec_Q0FOQVJZc2lnbmluZzAwMDYtdGhpcnR5LXR3by1ieXQ=";
const JWT_KEY: &str = "CANARYjwtKey0007";
/// `whsec_` + base64 of the 32 bytes `CANARYforward0008-thirty-two-byt`.
const FORWARD_SECRET: &str = "whsec_Q0FOQVJZZm9yd2FyZDAwMDgtdGhpcnR5LXR3by1ieXQ=";
/// Credentials that arrive inside event bodies.
const FORWARDER_TOKEN: &str = "sk_CANARYforwarderToken0009";
const POLLED_TOKEN: &str = "sk_CANARYpolledToken0010";
/// The key of an environment Flatfile does not know: every API call with it fails.
const STALE_KEY: &str = "sk_CANARYstaleKey0011";

const ENVIRONMENT_ID: &str = "us_env_canary";

/// What to look for: each configured value, the part of the legacy key after its id, and the
/// decoded bytes of the signing secrets.
fn canaries() -> Vec<(&'static str, &'static str)> {
    vec![
        ("legacy API key secret", "CANARYlegacySecret0001"),
        ("Platform secret key", PLATFORM_KEY),
        ("environment secret key", ENVIRONMENT_KEY),
        ("webhook bearer token", WEBHOOK_TOKEN),
        ("webhook path secret", PATH_SECRET),
        ("webhook signing secret", &SIGNING_SECRET[6..]),
        ("webhook signing secret bytes", "CANARYsigning0006"),
        ("legacy JWT key", JWT_KEY),
        ("http-forward secret", &FORWARD_SECRET[6..]),
        ("http-forward secret bytes", "CANARYforward0008"),
        ("forwarded listener token", FORWARDER_TOKEN),
        ("polled event token", POLLED_TOKEN),
        ("refused environment key", STALE_KEY),
    ]
}

/// Everything a user or a log shipper could read, by where it came from.
#[derive(Default)]
struct Seen(Vec<(String, Vec<u8>)>);

impl Seen {
    fn add(&mut self, place: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.0.push((place.into(), bytes.into()));
    }

    fn reply(&mut self, what: &str, reply: &HttpReply) {
        let headers = format!("{:?}", reply.headers);
        self.add(format!("{what}: response headers"), headers);
        self.add(format!("{what}: response body"), reply.text());
    }

    fn assert_no_canary(&self) {
        let mut leaks = Vec::new();
        for (place, bytes) in &self.0 {
            for (secret, value) in canaries() {
                if contains(bytes, value) {
                    leaks.push(format!("{secret} in {place}"));
                }
            }
        }
        assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    }

    fn assert_saw(&self, marker: &str, what: &str) {
        assert!(
            self.0.iter().any(|(_, bytes)| contains(bytes, marker)),
            "nothing read holds {marker:?} ({what}), so the search proves nothing"
        );
    }
}

fn canary_sim() -> Sim {
    Sim::start(SimConfig {
        rows: 40,
        legacy_api_key: LEGACY_KEY.to_owned(),
        secret_key: PLATFORM_KEY.to_owned(),
        environments: vec![SimEnvironment {
            id: ENVIRONMENT_ID.to_owned(),
            secret_key: ENVIRONMENT_KEY.to_owned(),
        }],
        ..SimConfig::default()
    })
}

/// A receiver for the http-forward sink that refuses every request: a failed sink.
fn refusing_receiver() -> RunningReceiver {
    let config = ReceiverConfig {
        script: vec![Fault::Status {
            requests: 1_000,
            status: 422,
            body: "refused by the e2e receiver".to_owned(),
        }],
        ..ReceiverConfig::new(vec![FORWARD_SECRET.to_owned()])
    };
    RunningReceiver::start(config, "127.0.0.1:0".parse().expect("a socket address"))
        .expect("the receiver starts")
}

fn settings(dir: &TestDir, sim: &Sim, receiver: &RunningReceiver, admin_port: u16) -> Daemon {
    let credential = |settings: Daemon, key: &str, variable: &str, value: &str| {
        settings
            .set("webhook", key, &toml_string(variable))
            .env(variable, value)
    };
    let settings = Daemon::new(dir.path())
        .sim(sim)
        .token(WEBHOOK_TOKEN)
        .set(
            "admin",
            "listen",
            &toml_string(format!("127.0.0.1:{admin_port}")),
        )
        .env("FLATSYNC_LOG", "debug")
        .sink_csv("archive")
        .sink_http("hook", &receiver.url(), "FLATSYNC_E2E_FORWARD_SECRET", "")
        .env("FLATSYNC_E2E_FORWARD_SECRET", FORWARD_SECRET)
        .route(&["portalImportSubmitted"], &["archive", "hook"])
        .route(&["*"], &["archive"])
        .raw(&polling_environment(
            "canary",
            ENVIRONMENT_ID,
            Some("FLATSYNC_E2E_ENVIRONMENT_KEY"),
        ))
        .env("FLATSYNC_E2E_ENVIRONMENT_KEY", ENVIRONMENT_KEY)
        .raw(
            "[environments.stale]\nid = \"us_env_stale\"\n\
             secret_key_env = \"FLATSYNC_E2E_STALE_KEY\"\n",
        )
        .env("FLATSYNC_E2E_STALE_KEY", STALE_KEY);
    let settings = credential(
        settings,
        "path_secret_env",
        "FLATSYNC_E2E_PATH_SECRET",
        PATH_SECRET,
    );
    let settings = credential(
        settings,
        "signing_secret_env",
        "FLATSYNC_E2E_SIGNING_SECRET",
        SIGNING_SECRET,
    );
    credential(
        settings,
        "legacy_jwt_secret_env",
        "FLATSYNC_E2E_JWT_KEY",
        JWT_KEY,
    )
}

fn post(daemon: &DaemonProcess, suffix: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpReply {
    let url = format!("{}{suffix}", daemon.url());
    http::request("POST", &url, headers, body)
        .unwrap_or_else(|e| panic!("POST failed: {e}\n{}", daemon.log_tail()))
}

/// Sends one webhook of every kind of sender; returns the ids of the events it expects stored.
fn send_every_kind(daemon: &DaemonProcess, seen: &mut Seen) -> Vec<String> {
    let bearer = format!("Bearer {WEBHOOK_TOKEN}");
    let json_bearer = [
        ("Content-Type", "application/json"),
        ("Authorization", bearer.as_str()),
    ];

    // A legacy notification with the embed's JWT in `env`, and a bearer token.
    let mut legacy = legacy_webhook_body("b-canary", "evt-legacy", 40);
    legacy["env"] =
        json!({ "token": jwt(&json!({ "embed": "emb-1", "sub": "jo@example.com" }), JWT_KEY) });
    let reply = post(daemon, "", &json_bearer, legacy.to_string().as_bytes());
    assert_eq!(reply.status, 200, "legacy: {}", reply.text());
    seen.reply("legacy webhook", &reply);

    // A Platform job of an environment whose key Flatfile refuses: its API calls fail.
    let mut missing = submit_event_body("evt-missing", "us_wb_missing", "us_jb_missing");
    missing["context"]["environmentId"] = json!("us_env_stale");
    let reply = post(daemon, "", &json_bearer, missing.to_string().as_bytes());
    assert_eq!(reply.status, 200, "job: {}", reply.text());
    seen.reply("job webhook", &reply);

    // A forwarded listener event, carrying the listener's token, on the secret path.
    let raw = json!({
        "id": "evt-forwarded", "topic": "space:created", "domain": "space",
        "context": { "accountId": "us_acc_1", "environmentId": ENVIRONMENT_ID, "spaceId": "us_sp_1" },
        "payload": {}, "createdAt": "2026-12-04T10:00:00.000Z",
    });
    let reply = post(
        daemon,
        &format!("/{PATH_SECRET}"),
        &[("Content-Type", "application/json")],
        forwarded(&raw, FORWARDER_TOKEN).to_string().as_bytes(),
    );
    assert_eq!(reply.status, 200, "forwarded: {}", reply.text());
    seen.reply("forwarded webhook", &reply);

    // A Standard Webhooks signed event.
    let body = json!({
        "id": "evt-signed", "topic": "space:updated", "domain": "space",
        "context": { "accountId": "us_acc_1" }, "payload": {},
    })
    .to_string();
    let headers = signed(&[SIGNING_SECRET], "msg_canary", now(), body.as_bytes());
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let reply = post(daemon, "", &headers, body.as_bytes());
    assert_eq!(reply.status, 200, "signed: {}", reply.text());
    seen.reply("signed webhook", &reply);

    // Refused senders: a wrong token, a wrong signature, a wrong path secret.
    let wrong = [
        ("Content-Type", "application/json"),
        ("Authorization", "Bearer CANARYwebhookToken0004-not"),
    ];
    let reply = post(daemon, "", &wrong, legacy.to_string().as_bytes());
    assert_eq!(reply.status, 401, "{}", reply.text());
    seen.reply("wrong-token webhook", &reply);
    let reply = post(
        daemon,
        &format!("/{PATH_SECRET}x"),
        &[("Content-Type", "application/json")],
        b"{}",
    );
    assert_eq!(reply.status, 404, "{}", reply.text());
    seen.reply("wrong-path webhook", &reply);

    ["evt-legacy", "evt-missing", "evt-forwarded", "evt-signed"]
        .map(str::to_owned)
        .to_vec()
}

/// Runs an operator command with debug logs and keeps both of its outputs.
fn operator(settings: &Daemon, seen: &mut Seen, args: &[&str]) {
    let config = settings.config_path();
    let mut all = vec!["--log", "debug"];
    all.extend_from_slice(args);
    all.extend(["--config", config.to_str().expect("UTF-8 path")]);
    let output = settings.cli(&all);
    let place = format!("flatsync {}", args.join(" "));
    seen.add(format!("{place}: stdout"), output.stdout);
    seen.add(format!("{place}: stderr"), output.stderr);
}

#[test]
fn no_secret_reaches_any_output_log_state_file_argv_or_metric() {
    let sim = canary_sim();
    let polled = sim
        .admin()
        .emit_event(&EmitEvent {
            environment_id: Some(ENVIRONMENT_ID.to_owned()),
            topic: "space:created".to_owned(),
            payload: Some(json!({ "name": "polled-marker", "accessToken": POLLED_TOKEN })),
            ..EmitEvent::default()
        })
        .expect("the simulator emits the event");
    let receiver = refusing_receiver();
    let dir = TestDir::new("secrets");
    let admin_port = free_port();
    let daemon = settings(&dir, &sim, &receiver, admin_port).start();
    let mut seen = Seen::default();

    let mut ids = send_every_kind(&daemon, &mut seen);
    ids.push(polled.id.clone());
    for id in &ids {
        let event = daemon.wait_final(id, EVENT_DEADLINE);
        // The failed API call and the failed sink end as failures; the rest are delivered.
        let expected = if id == "evt-missing" || id == "evt-legacy" {
            "failed"
        } else {
            "done"
        };
        assert_eq!(event.status, expected, "{id}: {:?}", event.detail);
    }
    assert!(
        receiver.stats().faulted > 0,
        "the http-forward sink never reached its receiver"
    );

    let settings = daemon.settings();
    for args in [
        &["check"][..],
        &["doctor"],
        &["status"],
        &["status", "--json"],
        &["events", "list"],
        &["dead-letter", "list"],
        &["plugins"],
    ] {
        operator(settings, &mut seen, args);
    }
    for id in &ids {
        operator(settings, &mut seen, &["events", "show", id]);
        operator(settings, &mut seen, &["events", "show", id, "--json"]);
    }
    let metrics = wait::until(
        "a metrics scrape",
        Duration::from_secs(30),
        || http::get(&format!("http://127.0.0.1:{admin_port}/metrics"), &[]).ok(),
        || daemon.log_tail(),
    );
    seen.reply("GET /metrics", &metrics);
    if let Some(pid) = daemon.pid() {
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        seen.add("the daemon's argv", argv);
    }
    seen.add(
        "the config file",
        std::fs::read(settings.config_path()).expect("config"),
    );
    for (name, bytes) in state_files(&dir.path().join("state")) {
        seen.add(name, bytes);
    }
    seen.add("the daemon's log", daemon.log());

    // The search read the right places: the events, their failures, debug lines, metrics.
    seen.assert_saw("polled-marker", "the polled event's body");
    seen.assert_saw("evt-forwarded", "the forwarded event");
    seen.assert_saw("us_wb_missing", "the failed API call");
    seen.assert_saw("HTTP 422", "the failed sink");
    seen.assert_saw("DEBUG", "debug log lines");
    seen.assert_saw("flatsync_events_received_total", "the metrics");
    seen.assert_no_canary();
}
