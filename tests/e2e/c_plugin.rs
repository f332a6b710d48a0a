//! A sink plugin written in plain C (`tests/fixtures/c-plugin/sink.c`), compiled here with the
//! system `cc` and run by the real daemon: plugins need neither Rust nor flatsync's compiler.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flatfile_sim::{
    SimConfig, legacy_row_ids, legacy_webhook_body, record_ids, submit_event_body, workbook_sheets,
};
use flatsync_test_kit::cc::CBuild;
use flatsync_tests::check::Tally;
use flatsync_tests::daemon::toml_string;
use flatsync_tests::sim::SourceRow;
use flatsync_tests::{Daemon, Sim, TestDir};

use crate::common::EVENT_DEADLINE;

/// The plugin's name in its descriptor.
const PLUGIN_NAME: &str = "c-ndjson";

/// `tests/fixtures/c-plugin/<name>`.
pub(crate) fn c_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("c-plugin")
        .join(name)
}

/// Compiles `tests/fixtures/c-plugin/sink.c` as strict C99 into `<dir>/<file_name>`, with `-D`
/// `defines` (e.g. `SINK_ABI_MAJOR=2`), and returns its canonical path.
pub(crate) fn build_c_sink(dir: &Path, file_name: &str, defines: &[&str]) -> PathBuf {
    let out = CBuild::new(c_fixture("sink.c"), "c99")
        .pedantic()
        .defines(defines)
        .shared_library(&dir.join(file_name));
    // flatsync names a plugin by its canonical path; compare like with like.
    std::fs::canonicalize(&out).expect("the compiled plugin exists")
}

/// Adds a C sink named `name` writing into `out`.
fn with_c_sink(settings: Daemon, plugin: &Path, name: &str, out: &Path) -> Daemon {
    let config = format!("{{ dir = {} }}", toml_string(out));
    let plugin = plugin.to_str().expect("test paths are UTF-8");
    settings.sink(name, plugin, &config)
}

/// Every `.ndjson` file the sink wrote, by file name, as its lines parsed.
fn ndjson_files(dir: &Path) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut files = BTreeMap::new();
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list the sink's folder {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a readable directory entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 file names")
            .to_owned();
        if name.starts_with('.') || !name.ends_with(".ndjson") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{name} does not end with a complete line"
        );
        let lines = text
            .lines()
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{name}:{}: not JSON ({e}): {line}", i + 1))
            })
            .collect();
        files.insert(name, lines);
    }
    files
}

/// How often each record id occurs in the lines.
fn tally(lines: &[serde_json::Value]) -> Tally {
    let mut tally = Tally::default();
    for line in lines {
        let id = line["id"]
            .as_str()
            .unwrap_or_else(|| panic!("a row without a string id: {line}"));
        *tally.seen.entry(id.to_owned()).or_default() += 1;
    }
    tally
}

/// Asserts every line equals the source row of the same position: id, validity and values.
fn assert_rows_match(file: &str, lines: &[serde_json::Value], source: &[SourceRow]) {
    assert_eq!(lines.len(), source.len(), "{file}: row count");
    for (line, row) in lines.iter().zip(source) {
        let values: serde_json::Map<String, serde_json::Value> = row
            .values
            .iter()
            .map(|(key, raw)| {
                let value = serde_json::from_str(raw.get()).expect("the simulator serves JSON");
                (key.clone(), value)
            })
            .collect();
        let expected = serde_json::json!({ "id": row.id, "valid": row.valid, "values": values });
        assert_eq!(
            line, &expected,
            "{file}: row {} differs from the source",
            row.id
        );
    }
}

#[test]
fn a_sink_written_in_c_receives_every_row_once() {
    let sim = Sim::start(SimConfig {
        rows: 1_201,
        sheets_per_workbook: 2,
        ..SimConfig::default()
    });
    let dir = TestDir::new("c-plugin");
    let plugin = build_c_sink(dir.path(), "libflatsync_sink_c_ndjson.so", &[]);
    let out = dir.path().join("inbox");
    let settings = Daemon::new(dir.path()).sim(&sim).page_size(100);
    let settings = with_c_sink(settings, &plugin, "inbox", &out)
        .route(&["portalImportSubmitted", "job:ready"], &["inbox"]);

    let check = settings.check();
    assert_eq!(check.code, Some(0), "flatsync check: {check:?}");
    assert!(
        check.stdout.contains(&format!(
            "sink `inbox`: plugin {PLUGIN_NAME} 1.0.0 (ABI 1.{}) from {}",
            flatsync_plugin_api::ABI_MINOR,
            plugin.display()
        )),
        "check names the C plugin and its ABI: {}",
        check.stdout
    );

    let mut daemon = settings.start();
    let (batch, legacy_event) = ("b-c-sink", "evt-c-sink");
    let (submit_event, workbook) = ("us_evt_cSink1", "us_wb_cSink1");
    let job = sim.job_for(workbook);
    let reply = daemon.post(&legacy_webhook_body(batch, legacy_event, sim.config().rows));
    assert!(reply.is_success(), "legacy webhook: {}", reply.text());
    let reply = daemon.post(&submit_event_body(submit_event, workbook, &job));
    assert!(reply.is_success(), "submit webhook: {}", reply.text());
    daemon.wait_done(&[legacy_event, submit_event], EVENT_DEADLINE);

    let files = ndjson_files(&out);
    let legacy_file = format!("legacy-{batch}.ndjson");
    let sheets = workbook_sheets(sim.config(), workbook);
    let mut expected_files = vec![legacy_file.clone()];
    expected_files.extend(
        sheets
            .iter()
            .map(|(_, slug, _)| format!("{slug}-{submit_event}.ndjson")),
    );
    expected_files.sort();
    assert_eq!(
        files.keys().cloned().collect::<Vec<_>>(),
        expected_files,
        "one file per stream"
    );

    tally(&files[&legacy_file])
        .assert_exactly(&legacy_row_ids(sim.config(), batch), "C sink, legacy batch");
    assert_rows_match(&legacy_file, &files[&legacy_file], &sim.legacy_rows(batch));
    for (sheet_id, slug, rows) in &sheets {
        let file = format!("{slug}-{submit_event}.ndjson");
        let expected = record_ids(sim.config(), sheet_id);
        assert_eq!(expected.len() as u64, *rows);
        tally(&files[&file]).assert_exactly(&expected, &format!("C sink, sheet {slug}"));
        assert_rows_match(&file, &files[&file], &sim.sheet_records(sheet_id));
    }

    let status = daemon.stop();
    assert!(status.success(), "flatsync should stop cleanly: {status}");
    let log = daemon.log();
    // The plugin logs through the host callback; its lines carry the sink's name.
    assert!(
        log.lines()
            .any(|l| l.contains("Sink written in C ready") && l.contains("inbox")),
        "the C plugin's log line reaches the daemon's log:\n{}",
        daemon.log_tail()
    );
    assert!(
        log.contains(&format!("Stream complete: file={legacy_file} rows=1201")),
        "{}",
        daemon.log_tail()
    );
    // C cannot unwind, and the plugin says so: no warning that a panic would abort flatsync.
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(PLUGIN_NAME) && l.to_lowercase().contains("panic"))
        .collect();
    assert!(
        warnings.is_empty(),
        "no panic warning for a C plugin: {warnings:?}"
    );
}

#[test]
fn the_c_sink_keeps_every_row_once_across_kill_9() {
    const ROWS: u64 = 30_000;
    const KILLS: u32 = 3;
    let sim = Sim::start(SimConfig {
        rows: ROWS,
        page_latency: Duration::from_millis(60),
        ..SimConfig::default()
    });
    let dir = TestDir::new("c-plugin-kill9");
    let plugin = build_c_sink(dir.path(), "libflatsync_sink_c_ndjson.so", &[]);
    let out = dir.path().join("inbox");
    let settings = Daemon::new(dir.path()).sim(&sim).page_size(250).set(
        "daemon",
        "checkpoint_interval_ms",
        "200",
    );
    let settings =
        with_c_sink(settings, &plugin, "inbox", &out).route(&["portalImportSubmitted"], &["inbox"]);
    let mut daemon = settings.start();

    let (batch, event) = ("b-c-kill", "evt-c-kill");
    let data_file = out.join(format!("legacy-{batch}.ndjson"));
    let reply = daemon.post(&legacy_webhook_body(batch, event, ROWS));
    assert!(reply.is_success(), "webhook: {}", reply.text());

    let mut rng = fastrand::Rng::with_seed(0xc5_1c);
    let mut kills_mid_stream = 0;
    for _ in 0..KILLS {
        // Let this run write more than the last one left, then kill it at a random moment.
        let before = file_len(&data_file);
        let started = Instant::now();
        while file_len(&data_file) <= before && started.elapsed() < EVENT_DEADLINE {
            daemon.assert_alive("while rows were delivered");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng.u64(50..=600)));
        let pending = daemon.pending_events().iter().any(|id| id == event);
        daemon.kill9();
        if !pending {
            break;
        }
        kills_mid_stream += 1;
        daemon.restart();
    }
    if !daemon.is_running() {
        daemon.restart();
    }
    daemon.wait_done(&[event], EVENT_DEADLINE);
    assert!(
        kills_mid_stream > 0,
        "no kill landed while the import was in progress: the test proved nothing"
    );

    let files = ndjson_files(&out);
    let file_name = format!("legacy-{batch}.ndjson");
    assert_eq!(files.keys().collect::<Vec<_>>(), [&file_name]);
    tally(&files[&file_name]).assert_exactly(
        &legacy_row_ids(sim.config(), batch),
        &format!("C sink after {kills_mid_stream} kill -9"),
    );
    assert_rows_match(&file_name, &files[&file_name], &sim.legacy_rows(batch));
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn the_c_sink_reports_config_mistakes_through_the_host() {
    let dir = TestDir::new("c-plugin-config");
    let plugin = build_c_sink(dir.path(), "libflatsync_sink_c_ndjson.so", &[]);
    let plugin = plugin.to_str().expect("test paths are UTF-8");
    let cases = [
        (
            format!(
                "{{ dir = {}, colour = \"blue\" }}",
                toml_string(dir.path().join("out"))
            ),
            "config key `colour` is unknown; this sink takes only `dir`",
        ),
        (
            "{}".to_owned(),
            "config key `dir` is required: the folder the .ndjson files go to",
        ),
        (
            "{ dir = 7 }".to_owned(),
            "config key `dir` must be a plain path string: expected a string",
        ),
        (
            format!(
                "{{ dir = {} }}",
                toml_string(dir.path().join("no/such/parent"))
            ),
            "config key `dir`: cannot create",
        ),
    ];
    for (config, message) in cases {
        let settings = Daemon::new(dir.path())
            .sink("picky", plugin, &config)
            .route(&["*"], &["picky"]);
        let output = settings.check();
        assert_eq!(output.code, Some(1), "config {config}: {output:?}");
        assert!(
            output.stderr.contains("picky") && output.stderr.contains(message),
            "config {config}: stderr should name the sink and say `{message}`: {}",
            output.stderr
        );
    }
}
