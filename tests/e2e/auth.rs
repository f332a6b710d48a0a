//! Who may post webhooks, as real senders do it: a forwarder that can only be given a URL, a
//! Standard Webhooks signer (another flatsync's http-forward sink), the legacy embed JWT in
//! `env`, bearer tokens with a rotation, and environment-scoped credentials. Refused requests
//! store nothing, and a forwarded listener's API token is stored, logged and printed nowhere.

use std::path::Path;
use std::time::Duration;

use flatfile_sim::{
    DEFAULT_ENVIRONMENT_ID, EmitEvent, SimConfig, legacy_row_ids, legacy_webhook_body, record_ids,
    submit_event_body, workbook_sheets,
};
use flatsync_tests::check::csv_rows;
use flatsync_tests::daemon::{check_config_file, free_port, toml_string};
use flatsync_tests::{Daemon, DaemonProcess, HttpReply, Sim, TestDir, http, wait};
use serde_json::{Value, json};

use crate::common::{
    EVENT_DEADLINE, contains, forwarded, jwt, now, polling_environment, signed, state_files,
};

/// A path secret: 31 characters of the allowed set.
const PATH_SECRET: &str = "e2e-path-secret_0123456789.abc~";
/// The variable the configs here name for the path secret.
const PATH_SECRET_ENV: &str = "FLATSYNC_E2E_PATH_SECRET";
/// The listener's API token a forwarded event carries: recognisable in any file or output.
const FORWARDER_TOKEN: &str = "sk_forwarderToken_7f3a9c2e41d84b0f";
/// Standard Webhooks secrets (32 bytes each): the one rotated out, the one rotated in, and
/// one the receiver does not know.
const OLD_SECRET: &str = "whsec_ZTJlLWF1dGgtb2xkLXNpZ25pbmctc2VjcmV0LTAwMDE=";
const NEW_SECRET: &str = "whsec_ZTJlLWF1dGgtbmV3LXNpZ25pbmctc2VjcmV0LTAwMDI=";
const UNKNOWN_SECRET: &str = "whsec_ZTJlLWF1dGgtdW5rbm93bi1zaWduaW5nLXNlY3JldDM=";
const SIGNING_ENV: &str = "FLATSYNC_E2E_SIGNING_SECRETS";
/// The embed's private keys: the current one and the one being rotated out.
const JWT_KEY: &str = "embed-private-key-e2e-5c1d";
const OLD_JWT_KEY: &str = "embed-private-key-e2e-old";
const JWT_ENV: &str = "FLATSYNC_E2E_JWT_KEYS";

/// A webhook config key naming environment variable `variable`.
fn from_env(settings: Daemon, key: &str, variable: &str, value: &str) -> Daemon {
    settings
        .set("webhook", key, &toml_string(variable))
        .env(variable, value)
}

/// POSTs `body` to the webhook URL with `suffix` appended (`/<secret>`), with only `headers`.
fn post(daemon: &DaemonProcess, suffix: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpReply {
    let url = format!("{}{suffix}", daemon.url());
    http::request("POST", &url, headers, body)
        .unwrap_or_else(|e| panic!("POST {suffix:?} failed: {e}\n{}", daemon.log_tail()))
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// A Platform event no route takes: accepted and stored, nothing fetched.
fn unrouted_event(id: &str, environment: Option<&str>) -> Vec<u8> {
    let mut context = json!({ "accountId": "us_acc_1" });
    if let Some(environment) = environment {
        context["environmentId"] = json!(environment);
    }
    serde_json::to_vec(&json!({
        "id": id, "topic": "space:created", "domain": "space", "context": context, "payload": {}
    }))
    .expect("JSON")
}

/// Runs `flatsync ARGS --config <the daemon's config>` and returns its stdout; panics unless it
/// succeeds.
fn cli(settings: &Daemon, args: &[&str]) -> String {
    let config = settings.config_path();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", config.to_str().expect("UTF-8 path")]);
    let output = settings.cli(&all);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "flatsync {all:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Asserts `secret` is in none of the state directory's files, and that `marker` (something
/// stored with it) is in one of them, so the search looked at the right bytes.
fn assert_state_never_holds(dir: &Path, secret: &str, marker: &str, when: &str) {
    let files = state_files(dir);
    let names: Vec<&String> = files.iter().map(|(name, _)| name).collect();
    assert!(
        files.iter().any(|(_, bytes)| contains(bytes, marker)),
        "{when}: no file of {names:?} holds {marker:?}, so the search proves nothing"
    );
    for (name, bytes) in &files {
        assert!(
            !contains(bytes, secret),
            "{when}: {name} holds the secret {secret:?}"
        );
    }
}

fn post_signed(daemon: &DaemonProcess, headers: &[(String, String)], body: &[u8]) -> HttpReply {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    post(daemon, "", &headers, body)
}

/// Asserts a 401 whose JSON body gives `reason` and quotes no secret.
fn assert_401(reply: &HttpReply, reason: &str, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {}", reply.text());
    assert_eq!(reply.json()["error"], reason, "{what}: {}", reply.text());
    for secret in ["whsec_", JWT_KEY, OLD_JWT_KEY, "tok-"] {
        assert!(!reply.text().contains(secret), "{what}: {}", reply.text());
    }
}

#[test]
fn a_forwarded_event_on_the_secret_path_is_delivered_and_its_token_is_kept_nowhere() {
    let sim = Sim::start(SimConfig {
        rows: 300,
        ..SimConfig::default()
    });
    let dir = TestDir::new("auth-forwarded");
    let settings = from_env(
        Daemon::new(dir.path()).sim(&sim),
        "path_secret_env",
        PATH_SECRET_ENV,
        PATH_SECRET,
    )
    .sink_csv("archive")
    .route(&["job:ready"], &["archive"])
    .env("FLATSYNC_LOG", "debug");
    let csv_dir = settings.csv_dir("archive");
    let state_dir = dir.path().join("state");
    let mut daemon = settings.start();

    let (event, workbook, job) = ("us_evt_fwdAuth", "us_wb_fwdAuth", "us_jb_fwdAuth");
    let raw = submit_event_body(event, workbook, job);
    let body = serde_json::to_vec(&forwarded(&raw, FORWARDER_TOKEN)).expect("JSON");
    // No header but Content-Type, as the forwarder sends it.
    let reply = post(&daemon, &format!("/{PATH_SECRET}"), &[JSON], &body);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["eventId"], event, "{}", reply.text());
    assert_state_never_holds(&state_dir, FORWARDER_TOKEN, event, "while the daemon runs");

    daemon.wait_done(&[event], EVENT_DEADLINE);
    let expected: Vec<String> = workbook_sheets(sim.config(), workbook)
        .into_iter()
        .flat_map(|(sheet, _, _)| record_ids(sim.config(), &sheet))
        .collect();
    assert_eq!(expected.len(), 300);
    csv_rows(&csv_dir).assert_exactly(&expected, "the forwarded submit's records");

    let settings = daemon.settings().clone();
    let shown: Value = serde_json::from_str(&cli(&settings, &["events", "show", event, "--json"]))
        .expect("events show --json prints JSON");
    assert_eq!(
        shown["body"], raw,
        "the stored body is the raw Flatfile event the forwarder wrapped"
    );
    for (what, output) in [
        ("events show", cli(&settings, &["events", "show", event])),
        (
            "events show --json",
            cli(&settings, &["events", "show", event, "--json"]),
        ),
        ("events list", cli(&settings, &["events", "list"])),
        (
            "events list --json",
            cli(&settings, &["events", "list", "--json"]),
        ),
        ("status --json", cli(&settings, &["status", "--json"])),
    ] {
        assert!(
            output.contains(event) || what.starts_with("status"),
            "{what} does not show the event at all:\n{output}"
        );
        assert!(
            !output.contains(FORWARDER_TOKEN),
            "{what} prints the token:\n{output}"
        );
        assert!(
            !output.contains("_apiUrl"),
            "{what} prints the wrapper:\n{output}"
        );
    }

    let log = daemon.log();
    assert!(
        log.contains("DEBUG"),
        "the daemon logged at debug level:\n{log}"
    );
    assert!(
        log.contains("Webhook body scrubbed"),
        "{}",
        daemon.log_tail()
    );
    assert!(
        log.contains("path secret"),
        "the accepted line names the method"
    );
    for secret in [FORWARDER_TOKEN, PATH_SECRET, &PATH_SECRET[..12]] {
        assert!(!log.contains(secret), "the log shows {secret:?}");
    }

    assert!(daemon.stop().success());
    assert_state_never_holds(
        &state_dir,
        FORWARDER_TOKEN,
        event,
        "after the daemon stopped",
    );
    let log = daemon.log();
    assert!(!log.contains(FORWARDER_TOKEN) && !log.contains(PATH_SECRET));
}

#[test]
fn wrong_secret_paths_and_the_bare_path_get_the_unknown_path_404_and_store_nothing() {
    let dir = TestDir::new("auth-404");
    let daemon = from_env(
        Daemon::new(dir.path()),
        "path_secret_env",
        PATH_SECRET_ENV,
        PATH_SECRET,
    )
    .start();
    let body = unrouted_event("us_evt_404", None);
    let unknown = http::request(
        "POST",
        &format!("http://127.0.0.1:{}/nowhere", daemon.port()),
        &[JSON],
        &body,
    )
    .expect("answered");
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    let near = &PATH_SECRET[..PATH_SECRET.len() - 1];
    for (suffix, what) in [
        (format!("/{PATH_SECRET}x"), "a longer secret"),
        (format!("/{near}"), "a secret one character short"),
        (
            format!("/{}", PATH_SECRET.to_uppercase()),
            "the secret in upper case",
        ),
        (format!("/{PATH_SECRET}/more"), "a segment after the secret"),
        (String::new(), "the bare webhook path"),
        ("/".to_owned(), "the webhook path with a slash"),
    ] {
        let reply = post(&daemon, &suffix, &[JSON], &body);
        assert_eq!(reply.status, 404, "{what}: {}", reply.text());
        assert_eq!(
            reply.body, unknown.body,
            "{what}: the 404 must not differ from an unknown path's"
        );
        // A bearer token does not open the bare path either: none is configured.
        let reply = post(
            &daemon,
            &suffix,
            &[JSON, ("Authorization", "Bearer x")],
            &body,
        );
        assert_eq!(reply.status, 404, "{what} with a token: {}", reply.text());
    }
    assert_eq!(daemon.inbox_len(), 0, "a refused request stored something");

    let reply = post(&daemon, &format!("/{PATH_SECRET}"), &[JSON], &body);
    assert_eq!(reply.status, 200, "the right secret path: {}", reply.text());
    assert_eq!(daemon.inbox_len(), 1);

    let log = daemon.log();
    assert!(
        log.contains("Webhook rejected") && log.contains("<redacted>"),
        "wrong secrets are logged with the secret redacted:\n{log}"
    );
    assert!(
        !log.contains(&PATH_SECRET[..12]),
        "the log shows the secret:\n{log}"
    );
}

#[test]
fn standard_webhooks_signatures_of_either_rotation_secret_pass_and_bad_ones_get_401() {
    let dir = TestDir::new("auth-signed");
    let daemon = from_env(
        Daemon::new(dir.path()),
        "signing_secret_env",
        SIGNING_ENV,
        &format!("{OLD_SECRET}\n{NEW_SECRET}"),
    )
    .start();

    for (n, secrets) in [
        &[OLD_SECRET][..],
        &[NEW_SECRET],
        &[UNKNOWN_SECRET, NEW_SECRET],
    ]
    .into_iter()
    .enumerate()
    {
        let body = unrouted_event(&format!("us_evt_signed{n}"), None);
        let reply = post_signed(
            &daemon,
            &signed(secrets, &format!("msg_{n}"), now(), &body),
            &body,
        );
        assert_eq!(
            reply.status,
            200,
            "signed with {secrets:?}: {}",
            reply.text()
        );
    }
    assert_eq!(daemon.inbox_len(), 3);

    let body = unrouted_event("us_evt_refused", None);
    let headers = signed(&[NEW_SECRET], "msg_refused", now(), &body);
    let mut changed = body.clone();
    let at = changed.len() - 3;
    changed[at] ^= 0x01;
    assert_401(
        &post_signed(&daemon, &headers, &changed),
        "bad signature",
        "one byte changed",
    );
    let stale = signed(&[NEW_SECRET], "msg_stale", now() - 6 * 60, &body);
    assert_401(
        &post_signed(&daemon, &stale, &body),
        "stale timestamp",
        "6 minutes old",
    );
    let unknown = signed(&[UNKNOWN_SECRET], "msg_unknown", now(), &body);
    assert_401(
        &post_signed(&daemon, &unknown, &body),
        "bad signature",
        "an unknown secret",
    );
    assert_401(
        &post(&daemon, "", &[JSON], &body),
        "missing webhook signature headers",
        "no headers",
    );
    let without_id: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| n != "webhook-id")
        .cloned()
        .collect();
    assert_401(
        &post_signed(&daemon, &without_id, &body),
        "missing webhook-id header",
        "no webhook-id",
    );
    assert_eq!(daemon.inbox_len(), 3, "a refused request stored something");

    // What http-forward posts is a batch of rows, not a Flatfile event: it must get past
    // authentication, whatever the parser then says of it.
    let rows = br#"{"type":"rows","stream":"contacts-us_evt_1","kind":"contacts","eventId":"us_evt_1","seq":0,"part":0,"parts":1,"last":true,"fields":["email"],"rows":[{"id":"us_rc_1","valid":true,"values":{"email":"a@example.com"}}]}"#;
    let reply = post_signed(
        &daemon,
        &signed(&[OLD_SECRET], "msg_rows", now(), rows),
        rows,
    );
    assert!(
        ![401, 403, 404].contains(&reply.status),
        "a signed rows body was refused as unauthenticated: {} {}",
        reply.status,
        reply.text()
    );
    let log = daemon.log();
    for secret in [OLD_SECRET, NEW_SECRET, &OLD_SECRET[6..20]] {
        assert!(!log.contains(secret), "the log shows a secret");
    }
}

#[test]
fn another_flatsyncs_http_forward_sink_gets_past_authentication_and_a_wrong_secret_does_not() {
    let central_dir = TestDir::new("auth-central");
    let central = from_env(
        Daemon::new(central_dir.path()),
        "signing_secret_env",
        SIGNING_ENV,
        NEW_SECRET,
    )
    .start();
    let sim = Sim::start(SimConfig {
        rows: 150,
        sheets_per_workbook: 1,
        ..SimConfig::default()
    });
    let edge_dir = TestDir::new("auth-edge");
    let edge = Daemon::new(edge_dir.path())
        .sim(&sim)
        .sink_http(
            "good",
            &central.url(),
            "FLATSYNC_E2E_GOOD",
            "batch_size = 100",
        )
        .env("FLATSYNC_E2E_GOOD", format!("{OLD_SECRET} {NEW_SECRET}"))
        .sink_http(
            "bad",
            &central.url(),
            "FLATSYNC_E2E_BAD",
            "batch_size = 100",
        )
        .env("FLATSYNC_E2E_BAD", UNKNOWN_SECRET)
        .route(&["job:ready"], &["good", "bad"])
        .start();
    let event = "us_evt_chain";
    let reply = edge.post(&submit_event_body(event, "us_wb_chain", "us_jb_chain"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let ended = edge.wait_final(event, EVENT_DEADLINE);
    assert_eq!(
        ended.status, "failed",
        "the bad sink cannot deliver: {ended:?}"
    );

    let letters: Value =
        serde_json::from_str(&cli(edge.settings(), &["dead-letter", "list", "--json"]))
            .expect("JSON");
    let error_of = |sink: &str| {
        letters
            .as_array()
            .expect("an array")
            .iter()
            .find(|l| l["sink"] == sink)
            .map(|l| l["error"].as_str().unwrap_or_default().to_owned())
    };
    let bad = error_of("bad").unwrap_or_else(|| panic!("no dead letter for `bad`: {letters:#}"));
    assert!(
        bad.contains("HTTP 401") && bad.contains("bad signature"),
        "the wrongly signed sink was refused for its signature: {bad}"
    );
    // The rows family is not an event flatsync stores yet; central may refuse it, but never as
    // unauthenticated. Either way central must have answered the good sink.
    match error_of("good") {
        Some(good) => {
            assert!(
                good.contains("HTTP "),
                "central did not answer the good sink: {good}"
            );
            for status in ["HTTP 401", "HTTP 403", "HTTP 404"] {
                assert!(
                    !good.contains(status),
                    "the correctly signed sink got {status}: {good}"
                );
            }
        }
        None => {
            let status: Value =
                serde_json::from_str(&cli(edge.settings(), &["status", "--json"])).expect("JSON");
            let good = status["sinks"]
                .as_array()
                .and_then(|sinks| sinks.iter().find(|s| s["name"] == "good"))
                .unwrap_or_else(|| panic!("no sink `good` in {status:#}"));
            assert_eq!(good["done"], 1, "the good sink delivered: {good:#}");
        }
    }
    let log = central.log();
    assert!(!log.contains(NEW_SECRET) && !log.contains(UNKNOWN_SECRET));
}

/// base64url without padding, for a token jsonwebtoken will not make (`alg: none`).
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[test]
fn legacy_notifications_need_a_valid_env_jwt_and_only_its_claims_reach_route_filters() {
    let rows = 60;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("auth-jwt");
    let daemon = from_env(
        Daemon::new(dir.path()).sim(&sim),
        "legacy_jwt_secret_env",
        JWT_ENV,
        &format!("{JWT_KEY} {OLD_JWT_KEY}"),
    )
    .sink_csv("archive")
    .raw("[[routes]]\ntopics = [\"portalImportSubmitted\"]\nsinks = [\"archive\"]\nfilter = { \"env.customerId\" = \"cus_jwt\" }\n");
    let csv_dir = daemon.csv_dir("archive");
    let daemon = daemon.start();
    let notification = |batch: &str, event: &str, env: Value| {
        let mut body = legacy_webhook_body(batch, event, rows);
        body["env"] = env;
        serde_json::to_vec(&body).expect("JSON")
    };

    // Flatfile's embed examples sign {embed, sub}; no `exp`.
    let claims = json!({ "embed": "emb-1", "sub": "jo@example.com", "customerId": "cus_jwt" });
    let token = jwt(&claims, JWT_KEY);
    let reply = post(
        &daemon,
        "",
        &[JSON],
        &notification("b-jwt", "evt-jwt", json!({ "token": token })),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    daemon.wait_done(&["evt-jwt"], EVENT_DEADLINE);
    csv_rows(&csv_dir).assert_exactly(
        &legacy_row_ids(sim.config(), "b-jwt"),
        "the JWT-routed import",
    );
    let shown: Value = serde_json::from_str(&cli(
        daemon.settings(),
        &["events", "show", "evt-jwt", "--json"],
    ))
    .expect("JSON");
    assert_eq!(
        shown["body"]["env"], claims,
        "the stored env is the verified claims"
    );
    let stored = shown["body"].to_string();
    assert!(
        !stored.contains(&token),
        "the JWT itself is stored: {stored}"
    );

    // `env` as the JWT itself, signed with the key being rotated out.
    let reply = post(
        &daemon,
        "",
        &[JSON],
        &notification("b-jwt2", "evt-jwt2", json!(jwt(&claims, OLD_JWT_KEY))),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    daemon.wait_done(&["evt-jwt2"], EVENT_DEADLINE);

    // The sender's unsigned `env` says cus_jwt, the signed claims say otherwise: the claims win.
    let other = jwt(&json!({ "customerId": "cus_other" }), JWT_KEY);
    let env = json!({ "customerId": "cus_jwt", "token": other });
    let reply = post(
        &daemon,
        "",
        &[JSON],
        &notification("b-other", "evt-other", env),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let ended = daemon.wait_final("evt-other", EVENT_DEADLINE);
    assert_eq!(
        ended.status, "unrouted",
        "an unverified env value reached the filter: {ended:?}"
    );
    assert_eq!(daemon.inbox_len(), 3);

    let hour = 3600;
    let unsigned = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    );
    for (env, reason, what) in [
        (
            json!({ "token": jwt(&claims, "somebody-elses-key") }),
            "bad JWT signature",
            "another key",
        ),
        (
            json!({ "token": jwt(&json!({ "customerId": "cus_jwt", "exp": now() - hour }), JWT_KEY) }),
            "expired JWT",
            "expired",
        ),
        (json!({ "token": unsigned }), "malformed JWT", "alg none"),
        (json!({ "customerId": "cus_jwt" }), "missing JWT", "no JWT"),
    ] {
        let body = notification("b-refused", "evt-refused", env);
        assert_401(&post(&daemon, "", &[JSON], &body), reason, what);
    }
    // With JWT keys the only credential, nothing but a legacy notification can get in.
    let reply = post(&daemon, "", &[JSON], &unrouted_event("us_evt_nojwt", None));
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(daemon.inbox_len(), 3, "a refused request stored something");
    assert!(!daemon.log().contains(JWT_KEY));
}

#[test]
fn two_rotation_bearer_tokens_work_and_an_environment_token_admits_only_its_environment() {
    let dir = TestDir::new("auth-bearer");
    let daemon = from_env(Daemon::new(dir.path()), "token_env", "FLATSYNC_E2E_TOKENS", "tok-A-123 tok-B-456")
        .raw(
            "[environments.prod]\nid = \"us_env_prod\"\nwebhook_token_env = \"FLATSYNC_E2E_PROD_TOKEN\"\n\n\
             [environments.test]\nid = \"us_env_test\"\n",
        )
        .env("FLATSYNC_E2E_PROD_TOKEN", "tok-prod-789")
        .start();
    let bearer = |token: &str| format!("Bearer {token}");
    let send = |token: &str, id: &str, environment: Option<&str>| {
        let auth = bearer(token);
        post(
            &daemon,
            "",
            &[JSON, ("Authorization", &auth)],
            &unrouted_event(id, environment),
        )
    };

    assert_eq!(send("tok-A-123", "us_evt_a", None).status, 200);
    assert_eq!(
        send("tok-B-456", "us_evt_b", Some("us_env_test")).status,
        200
    );
    assert_401(
        &send("tok-A-123 tok-B-456", "us_evt_ab", None),
        "wrong bearer token",
        "both",
    );
    let missing = post(&daemon, "", &[JSON], &unrouted_event("us_evt_none", None));
    assert_401(&missing, "missing bearer token", "no token");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));

    let refused = send("tok-prod-789", "us_evt_cross", Some("us_env_test"));
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.json()["environmentId"], "us_env_test");
    let legacy = serde_json::to_vec(&json!({
        "type": "recordStatusModified",
        "scope": { "eventId": "evt-cross-legacy", "environmentId": "us_env_test", "sheetId": "1" }
    }))
    .expect("JSON");
    let auth = bearer("tok-prod-789");
    let refused = post(&daemon, "", &[JSON, ("Authorization", &auth)], &legacy);
    assert_eq!(
        refused.status,
        403,
        "a legacy event of another environment: {}",
        refused.text()
    );
    assert_eq!(daemon.inbox_len(), 2, "a refused request stored something");

    assert_eq!(
        send("tok-prod-789", "us_evt_prod", Some("us_env_prod")).status,
        200
    );
    assert_eq!(
        send("tok-prod-789", "us_evt_noenv", None).status,
        200,
        "an event naming no environment is accepted"
    );
    assert_eq!(daemon.inbox_len(), 4);
    let log = daemon.log();
    for token in ["tok-A-123", "tok-B-456", "tok-prod-789"] {
        assert!(!log.contains(token), "the log shows {token}");
    }
}

#[test]
fn a_reload_rotates_the_bearer_token_without_a_restart() {
    let dir = TestDir::new("auth-reload");
    let token_file = dir.path().join("webhook-token");
    std::fs::write(&token_file, "tok-one-0001\n").expect("token written");
    let daemon = Daemon::new(dir.path())
        .set("webhook", "token_file", &toml_string(&token_file))
        .start();
    let send = |token: &str, id: &str| {
        let auth = format!("Bearer {token}");
        post(
            &daemon,
            "",
            &[JSON, ("Authorization", &auth)],
            &unrouted_event(id, None),
        )
        .status
    };
    assert_eq!(send("tok-one-0001", "us_evt_one"), 200);
    std::fs::write(&token_file, "tok-two-0002\n").expect("token rotated");
    daemon.signal("HUP");
    let mut attempt = 0;
    wait::until(
        "the rotated token to be accepted",
        Duration::from_secs(60),
        || {
            attempt += 1;
            (send("tok-two-0002", &format!("us_evt_two{attempt}")) == 200).then_some(())
        },
        || daemon.log_tail(),
    );
    assert_eq!(
        send("tok-one-0001", "us_evt_old"),
        401,
        "the old token still works"
    );
    assert!(daemon.event("us_evt_old").is_none());
}

#[test]
fn check_warns_about_an_open_network_listener_and_a_weak_path_secret_stops_run() {
    let dir = TestDir::new("auth-check");
    let settings = Daemon::new(dir.path())
        .sink_csv("archive")
        .route(&["portalImportSubmitted"], &["archive"]);
    let port = free_port();
    let on_network = |settings: &Daemon, name: &str| {
        let text = settings
            .config_text(port)
            .replace(&format!("127.0.0.1:{port}"), &format!("0.0.0.0:{port}"));
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("config written");
        check_config_file(settings, &path)
    };

    let open = on_network(&settings, "open.toml");
    assert_eq!(open.code, Some(0), "{open:?}");
    assert!(
        open.stdout.contains("warning: [webhook] listen = 0.0.0.0:")
            && open.stdout.contains("not a loopback address"),
        "{open:?}"
    );
    let loopback = settings.check();
    assert_eq!(loopback.code, Some(0), "{loopback:?}");
    assert!(!loopback.stdout.contains("not a loopback"), "{loopback:?}");

    let guarded = from_env(
        settings.clone(),
        "path_secret_env",
        PATH_SECRET_ENV,
        PATH_SECRET,
    );
    let output = on_network(&guarded, "guarded.toml");
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(!output.stdout.contains("not a loopback"), "{output:?}");
    assert!(
        output
            .stdout
            .contains("webhook authentication: any environment: secret path (1)"),
        "{output:?}"
    );

    let weak = from_env(settings, "path_secret_env", PATH_SECRET_ENV, "tiny-secret");
    let output = weak.check();
    assert_ne!(output.code, Some(0), "{output:?}");
    assert!(
        output.stderr.contains("`webhook.path_secret`"),
        "{output:?}"
    );
    assert!(output.stderr.contains("shorter than 16"), "{output:?}");
    assert!(!output.stderr.contains("tiny-secret"), "{output:?}");
    let run = weak.run_expecting_exit(free_port(), Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.contains("`webhook.path_secret`") && stderr.contains("shorter than 16"),
        "flatsync run names the key it refuses: {stderr}"
    );
    assert!(!stderr.contains("tiny-secret"), "{stderr}");
}

#[test]
fn a_polled_event_carrying_a_credential_is_scrubbed_before_it_is_stored() {
    const POLLED_TOKEN: &str = "sk_polled_e2e_token_4f1b";
    let sim = Sim::start(SimConfig {
        rows: 10,
        ..SimConfig::default()
    });
    let admin = sim.admin();
    let emitted = admin
        .emit_event(&EmitEvent {
            topic: "space:created".to_owned(),
            payload: Some(json!({ "name": "polled-marker", "accessToken": POLLED_TOKEN })),
            ..EmitEvent::default()
        })
        .expect("the simulator emits the event");
    let dir = TestDir::new("auth-polled");
    let daemon = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .route(&["*"], &["archive"])
        .raw(&polling_environment("demo", DEFAULT_ENVIRONMENT_ID, None))
        .start();
    daemon.wait_done(&[&emitted.id], EVENT_DEADLINE);
    assert_state_never_holds(
        &dir.path().join("state"),
        POLLED_TOKEN,
        "polled-marker",
        "after polling",
    );
    let shown = cli(daemon.settings(), &["events", "show", &emitted.id]);
    assert!(
        shown.contains("polled-marker") && !shown.contains(POLLED_TOKEN),
        "{shown}"
    );
}
