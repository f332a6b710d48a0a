//! Helpers shared by the test modules.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flatfile_sim::{RecordsChange, SimError, Submitted};
use flatsync_tests::check::{CsvFile, Tally};
use flatsync_tests::daemon::toml_string;
use flatsync_tests::sim::SourceRow;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use standardwebhooks::Webhook;

/// Generous limit for an event of a few thousand rows in a debug build on 2 busy cores.
pub(crate) const EVENT_DEADLINE: Duration = Duration::from_secs(180);

/// Asserts the source data exercises what breaks naive CSV writers, so that a test reading the
/// values back proves quoting works rather than passing on tame data.
pub(crate) fn assert_has_csv_edge_cases(rows: &[SourceRow]) {
    let strings: Vec<String> = rows
        .iter()
        .flat_map(|row| row.values.iter())
        .filter_map(|(_, raw)| serde_json::from_str::<String>(raw.get()).ok())
        .collect();
    for (what, found) in [
        ("a comma", strings.iter().any(|s| s.contains(','))),
        ("a double quote", strings.iter().any(|s| s.contains('"'))),
        ("a newline", strings.iter().any(|s| s.contains('\n'))),
        ("non-ASCII text", strings.iter().any(|s| !s.is_ascii())),
    ] {
        assert!(
            found,
            "the simulator's data has no string with {what}: the test would prove nothing"
        );
    }
    assert!(
        rows.iter().any(|r| !r.valid) && rows.iter().any(|r| r.valid),
        "the simulator's data should mix valid and invalid rows"
    );
}

/// Unwraps an admin API answer, naming the request that failed.
pub(crate) fn admin_ok<T>(result: Result<T, SimError>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("simulator admin request `{what}` failed: {e}"))
}

/// An `[environments.NAME]` table that polls from the beginning of the simulator's event log,
/// five times a second.
pub(crate) fn polling_environment(name: &str, id: &str, key_env: Option<&str>) -> String {
    let key = key_env.map_or_else(String::new, |var| {
        format!("secret_key_env = {}\n", toml_string(var))
    });
    format!(
        "[environments.{name}]\nid = {}\n{key}poll = true\npoll_interval_ms = 200\npoll_page_size = 25\npoll_start = \"beginning\"\n",
        toml_string(id)
    )
}

/// Record id counts of one CSV file (column `_id`).
pub(crate) fn csv_ids(file: &CsvFile) -> Tally {
    let id = file.column("_id").unwrap_or_else(|| {
        panic!(
            "{} has no _id column: {:?}",
            file.path.display(),
            file.headers
        )
    });
    let mut tally = Tally::default();
    for record in &file.records {
        *tally.seen.entry(record[id].clone()).or_default() += 1;
    }
    tally
}

/// The file `name` of a csv-folder listing.
pub(crate) fn csv_file<'a>(files: &'a BTreeMap<String, CsvFile>, name: &str) -> &'a CsvFile {
    files
        .get(name)
        .unwrap_or_else(|| panic!("no {name} among {:?}", files.keys()))
}

/// The id of the change's event of `topic`.
pub(crate) fn event_of(change: &RecordsChange, topic: &str) -> String {
    change
        .events
        .iter()
        .find(|e| e.topic == topic)
        .unwrap_or_else(|| panic!("the change emitted no {topic}: {:?}", change.events))
        .id
        .clone()
}

/// The id of the submit's sheet with this slug.
pub(crate) fn sheet_of(submitted: &Submitted, slug: &str) -> String {
    submitted
        .sheets
        .iter()
        .find(|s| s.slug == slug)
        .unwrap_or_else(|| panic!("the submit has no {slug} sheet: {submitted:?}"))
        .id
        .clone()
}

/// The body `@flatfile/plugin-webhook-event-forwarder` posts: `JSON.stringify` of the
/// listener's event object, the raw event under `src`, the listener's token and API URL next
/// to it, and no `id` of its own.
pub(crate) fn forwarded(raw: &Value, token: &str) -> Value {
    json!({
        "src": raw,
        "topic": raw["topic"],
        "domain": raw["domain"],
        "context": raw["context"],
        "payload": raw["payload"],
        "target": "",
        "origin": raw["origin"],
        "action": "",
        "namespace": ["space:portal"],
        "createdAt": raw["createdAt"],
        "cache": { "cache": {} },
        "afterAllCallbacks": {},
        "_accessToken": token,
        "_apiUrl": "https://platform.flatfile.com/api",
    })
}

/// Every file of the state directory, by name, as bytes: the database, its WAL and anything
/// else SQLite keeps there.
pub(crate) fn state_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the state directory exists") {
        let path = entry.expect("a directory entry").path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            files.push((path.display().to_string(), bytes));
        }
    }
    files
}

pub(crate) fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// Standard Webhooks headers for `body`, one `v1,` signature per secret (as http-forward sends
/// them during a rotation).
pub(crate) fn signed(
    secrets: &[&str],
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(String, String)> {
    let signature = secrets
        .iter()
        .map(|secret| {
            Webhook::new(secret)
                .expect("a whsec_ secret")
                .sign(webhook_id, timestamp, body)
                .expect("a UTF-8 body")
        })
        .collect::<Vec<_>>()
        .join(" ");
    vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("webhook-id".to_owned(), webhook_id.to_owned()),
        ("webhook-timestamp".to_owned(), timestamp.to_string()),
        ("webhook-signature".to_owned(), signature),
    ]
}

pub(crate) fn jwt(claims: &Value, key: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .expect("a JWT")
}
