//! What users see when they send or configure something wrong.

use std::time::Duration;

use flatfile_sim::{legacy_row_ids, legacy_webhook_body};
use flatsync_tests::check::csv_rows;
use flatsync_tests::daemon::{CheckOutput, check_config_file};
use flatsync_tests::{Artifacts, Daemon, Sim, TestDir};

use crate::common::EVENT_DEADLINE;

/// A daemon with a token and a csv sink, reading from nowhere: none of these tests needs rows.
fn daemon_with_token(dir: &TestDir, token: &str) -> flatsync_tests::DaemonProcess {
    Daemon::new(dir.path())
        .sink_csv("archive")
        .route(&["portalImportSubmitted"], &["archive"])
        .token(token)
        .start()
}

#[test]
fn malformed_json_is_answered_400_naming_line_and_column() {
    let dir = TestDir::new("malformed");
    let daemon = daemon_with_token(&dir, "tok-malformed");
    let body = "{\n  \"id\": \"us_evt_1\",\n  \"topic\": ,\n}";
    let parse_error = serde_json::from_str::<serde_json::Value>(body).expect_err("malformed");

    let reply = daemon
        .post_raw(body.as_bytes(), Some("tok-malformed"))
        .expect("answered");
    assert_eq!(reply.status, 400, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["line"], parse_error.line(), "{json}");
    assert_eq!(json["column"], parse_error.column(), "{json}");
    assert!(json["error"].is_string(), "a JSON error message: {json}");
}

#[test]
fn a_body_over_one_mebibyte_is_answered_413() {
    let dir = TestDir::new("too-large");
    let daemon = daemon_with_token(&dir, "tok-large");
    let limit = 1 << 20;
    let mut body = String::from("{\"id\":\"us_evt_big\",\"topic\":\"job:ready\",\"pad\":\"");
    body.push_str(&"x".repeat(limit + 1 - body.len() - 2));
    body.push_str("\"}");
    assert_eq!(body.len(), limit + 1);

    let reply = daemon
        .post_raw(body.as_bytes(), Some("tok-large"))
        .expect("answered");
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(reply.json()["error"].is_string(), "{}", reply.text());
    assert!(
        daemon.event("us_evt_big").is_none(),
        "a refused body must not be stored"
    );

    // The limit itself is allowed.
    let at_limit =
        body.replacen("us_evt_big", "us_evt_lim", 1)
            .replacen("\"pad\":\"x", "\"pad\":\"", 1);
    assert_eq!(at_limit.len(), limit);
    let reply = daemon
        .post_raw(at_limit.as_bytes(), Some("tok-large"))
        .expect("answered");
    assert_eq!(
        reply.status,
        200,
        "a body of exactly 1 MiB: {}",
        reply.text()
    );

    // Without a Content-Length (chunked, as proxies send), the limit must hold all the same.
    let port = daemon.port();
    let mut raw = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nAuthorization: Bearer tok-large\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        flatsync_tests::daemon::WEBHOOK_PATH
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(64 * 1024) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let reply = flatsync_tests::http::exchange(&daemon.url(), raw).expect("answered");
    assert_eq!(reply.status, 413, "chunked: {}", reply.text());
    assert!(reply.json()["error"].is_string(), "{}", reply.text());
    assert!(daemon.event("us_evt_big").is_none());
}

#[test]
fn a_missing_or_wrong_token_is_answered_401_and_never_logged() {
    let dir = TestDir::new("token");
    let token = "tok-Secret-7f3a9c";
    let daemon = daemon_with_token(&dir, token);
    // Unrouted topic: accepted and stored, but nothing is fetched.
    let body = br#"{"id":"us_evt_tok","topic":"space:created","context":{},"payload":{}}"#;

    for (bearer, what) in [
        (None, "no token"),
        (Some("tok-Secret-7f3a9d"), "a wrong token"),
        (Some(""), "an empty token"),
    ] {
        let reply = daemon.post_raw(body, bearer).expect("answered");
        assert_eq!(reply.status, 401, "{what}: {}", reply.text());
        assert!(
            reply.json()["error"].is_string(),
            "{what}: {}",
            reply.text()
        );
    }
    assert!(
        daemon.event("us_evt_tok").is_none(),
        "refused bodies are not stored"
    );

    let reply = daemon.post_raw(body, Some(token)).expect("answered");
    assert_eq!(reply.status, 200, "the right token: {}", reply.text());
    let event = daemon.wait_final("us_evt_tok", EVENT_DEADLINE);
    assert_eq!(event.status, "unrouted", "{event:?}");

    let log = daemon.log();
    for secret in [token, "demo-key+demo-secret", "sk_demo"] {
        assert!(!log.contains(secret), "the log shows a secret ({secret})");
    }
}

#[test]
fn an_unknown_json_shape_is_answered_422() {
    let dir = TestDir::new("shape");
    let daemon = daemon_with_token(&dir, "tok-shape");
    for body in [&br#"{"hello":"world"}"#[..], b"[1,2,3]", b"\"text\""] {
        let reply = daemon.post_raw(body, Some("tok-shape")).expect("answered");
        assert_eq!(
            reply.status,
            422,
            "{}: {}",
            String::from_utf8_lossy(body),
            reply.text()
        );
        let json = reply.json();
        assert!(json["error"].is_string(), "{json}");
    }
}

/// Writes `text` as a config file in `dir` and runs `flatsync check` on it.
fn check_text(dir: &TestDir, text: &str) -> (String, CheckOutput) {
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, text).expect("config written");
    let output = check_config_file(&Daemon::new(dir.path()), &path);
    (path.display().to_string(), output)
}

/// 1-based line of the first line containing `needle`, and 1-based column of `needle` in it.
fn locate(text: &str, needle: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, line)| line.find(needle).map(|c| (i + 1, c + 1)))
        .unwrap_or_else(|| panic!("{needle:?} not in the config"))
}

/// A valid config to break in the tests below.
fn good_config(dir: &TestDir) -> String {
    Daemon::new(dir.path())
        .sink_csv("archive")
        .route(&["portalImportSubmitted"], &["archive"])
        .config_text(8787)
}

#[test]
fn check_accepts_a_good_config() {
    let dir = TestDir::new("check-ok");
    let (_, output) = check_text(&dir, &good_config(&dir));
    assert_eq!(output.code, Some(0), "{output:?}");
    assert!(output.stdout.contains("archive"), "{output:?}");
}

#[test]
fn check_locates_an_unknown_key_and_exits_2() {
    let dir = TestDir::new("check-unknown-key");
    let text = good_config(&dir).replace("[fetch]\n", "[fetch]\npage_sise = 50\n");
    let (path, output) = check_text(&dir, &text);
    assert_eq!(output.code, Some(2), "{output:?}");
    let (line, column) = locate(&text, "page_sise");
    assert!(
        output.stderr.contains(&format!("{path}:{line}:{column}")),
        "stderr should locate the key at {path}:{line}:{column}: {}",
        output.stderr
    );
    assert!(output.stderr.contains("page_sise"), "{}", output.stderr);
}

#[test]
fn check_locates_a_value_of_the_wrong_type_and_exits_2() {
    let dir = TestDir::new("check-wrong-type");
    let text = good_config(&dir).replace("[fetch]\n", "[fetch]\npages_in_flight = \"four\"\n");
    let (path, output) = check_text(&dir, &text);
    assert_eq!(output.code, Some(2), "{output:?}");
    let (line, column) = locate(&text, "\"four\"");
    assert!(
        output.stderr.contains(&format!("{path}:{line}:{column}")),
        "stderr should locate the value at {path}:{line}:{column}: {}",
        output.stderr
    );
    assert!(
        output.stderr.contains("pages_in_flight"),
        "stderr should name the key: {}",
        output.stderr
    );
}

#[test]
fn check_locates_a_route_to_a_missing_sink_and_exits_2() {
    let dir = TestDir::new("check-missing-sink");
    let text = good_config(&dir).replace(
        "sinks = [\"archive\"]",
        "sinks = [\"archive\", \"warehouse\"]",
    );
    let (path, output) = check_text(&dir, &text);
    assert_eq!(output.code, Some(2), "{output:?}");
    let (line, column) = locate(&text, "\"warehouse\"");
    assert!(
        output.stderr.contains(&format!("{path}:{line}:{column}")),
        "stderr should locate the sink name at {path}:{line}:{column}: {}",
        output.stderr
    );
    assert!(output.stderr.contains("routes"), "{}", output.stderr);
    assert!(output.stderr.contains("warehouse"), "{}", output.stderr);
}

#[test]
fn check_names_the_sink_and_every_path_searched_for_a_missing_plugin() {
    let dir = TestDir::new("check-no-plugin");
    let settings = Daemon::new(dir.path())
        .sink("ghost", "no-such-plugin", "{}")
        .route(&["*"], &["ghost"]);
    let output = settings.check();
    assert_ne!(output.code, Some(0), "{output:?}");
    assert!(
        output.stderr.contains("ghost"),
        "names the sink: {}",
        output.stderr
    );
    assert!(
        output.stderr.contains("no-such-plugin"),
        "names the plugin: {}",
        output.stderr
    );
    let next_to_flatsync = Artifacts::locate()
        .dir
        .join("libflatsync_sink_no_such_plugin.so");
    assert!(
        output
            .stderr
            .contains(&next_to_flatsync.display().to_string()),
        "lists the paths searched, e.g. {}: {}",
        next_to_flatsync.display(),
        output.stderr
    );
}

#[test]
fn a_plugin_built_for_another_abi_is_refused_naming_the_file_and_both_versions() {
    let dir = TestDir::new("check-wrong-abi");
    let plugin = Artifacts::locate().fx_wrong_abi_plugin();
    let plugin_text = plugin.display().to_string();
    let settings = Daemon::new(dir.path())
        .sink("future", &plugin_text, "{}")
        .route(&["*"], &["future"]);
    let output = settings.check();
    assert_ne!(output.code, Some(0), "{output:?}");
    assert!(
        output.stderr.contains(&plugin_text),
        "names the file: {}",
        output.stderr
    );
    assert!(
        output.stderr.contains("999.0"),
        "the plugin's ABI: {}",
        output.stderr
    );
    // The host's version, not to be confused with the plugin's or a crate version.
    let rest = output.stderr.replace("999.0", "").replace("0.1.0", "");
    let host_abi = format!(
        "{}.{}",
        flatsync_plugin_api::ABI_MAJOR,
        flatsync_plugin_api::ABI_MINOR
    );
    assert!(
        rest.contains(&host_abi),
        "the host's ABI: {}",
        output.stderr
    );
}

#[test]
fn a_plugin_panicking_in_create_fails_check_with_the_panic_message_and_sink_name() {
    let dir = TestDir::new("check-panic-create");
    let plugin = Artifacts::locate().fx_panic_plugin();
    let settings = Daemon::new(dir.path())
        .sink(
            "bomb",
            &plugin.display().to_string(),
            "{ panic_in = \"create\" }",
        )
        .route(&["*"], &["bomb"]);
    let output = settings.check();
    assert_ne!(output.code, Some(0), "{output:?}");
    assert!(
        output.code.is_some(),
        "check must not crash with a signal: {output:?}"
    );
    assert!(
        output
            .stderr
            .contains("fx-panic was told to panic in create"),
        "{}",
        output.stderr
    );
    assert!(
        output.stderr.contains("bomb"),
        "names the sink: {}",
        output.stderr
    );
}

#[test]
fn a_sink_panicking_in_write_batch_fails_its_event_while_the_daemon_and_other_sinks_carry_on() {
    let rows = 250;
    let sim = Sim::with_rows(rows);
    let dir = TestDir::new("panic-write");
    let plugin = Artifacts::locate().fx_panic_plugin();
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .sink(
            "bomb",
            &plugin.display().to_string(),
            "{ panic_in = \"write_batch\" }",
        )
        .route(&["portalImportSubmitted"], &["archive", "bomb"])
        .page_size(100);
    let csv_dir = settings.csv_dir("archive");
    let daemon = settings.start();

    let reply = daemon.post(&legacy_webhook_body("b-panic-1", "evt-panic-1", rows));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let event = daemon.wait_final("evt-panic-1", EVENT_DEADLINE);
    assert_eq!(event.status, "failed", "{event:?}");
    let detail = event.detail.unwrap_or_default();
    assert!(
        detail.contains("panicked"),
        "the detail says the sink panicked: {detail}"
    );
    assert!(
        detail.contains("bomb"),
        "the detail names the sink: {detail}"
    );
    assert!(
        daemon.is_running(),
        "a plugin panic must not take the daemon down"
    );

    // Still serving: the next webhook is answered and handled the same way.
    let reply = daemon.post(&legacy_webhook_body("b-panic-2", "evt-panic-2", rows));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let event = daemon.wait_final("evt-panic-2", EVENT_DEADLINE);
    assert_eq!(event.status, "failed", "{event:?}");
    assert!(daemon.is_running());

    let mut expected = legacy_row_ids(sim.config(), "b-panic-1");
    expected.extend(legacy_row_ids(sim.config(), "b-panic-2"));
    csv_rows(&csv_dir).assert_exactly(&expected, "the csv sink beside the panicking one");
    std::thread::sleep(Duration::from_millis(200));
    assert!(daemon.is_running());
}
