//! Writing a plugin: the crate `flatsync plugin new` writes builds on its own and receives rows,
//! and the jsonl-folder sink (the guide's example) delivers imports exactly once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use flatfile_sim::{
    SimConfig, legacy_row_ids, legacy_webhook_body, record_ids, submit_event_body, workbook_sheets,
};
use flatsync_tests::check::{
    assert_same_lines, jsonl_files, jsonl_leftovers, line_ids, read_lines, row_json, values_json,
};
use flatsync_tests::daemon::toml_string;
use flatsync_tests::sim::SourceRow;
use flatsync_tests::{Artifacts, Daemon, DaemonProcess, Sim, TestDir};

use crate::common::EVENT_DEADLINE;

const LEGACY_BATCH: &str = "b-plugin-1";
const LEGACY_EVENT: &str = "evt-plugin-legacy-1";
const WORKBOOK: &str = "us_wb_plugin1";
const SUBMIT_EVENT: &str = "us_evt_plugin1";

/// A simulator whose legacy batch and workbook (two sheets) together hold a few pages of rows.
fn sim() -> Sim {
    Sim::start(SimConfig {
        rows: 450,
        sheets_per_workbook: 2,
        ..SimConfig::default()
    })
}

/// Sends one legacy import and one workbook submission (of `job`) and waits until both are
/// delivered.
fn import_both(daemon: &DaemonProcess, rows: u64, job: &str) {
    for body in [
        legacy_webhook_body(LEGACY_BATCH, LEGACY_EVENT, rows),
        submit_event_body(SUBMIT_EVENT, WORKBOOK, job),
    ] {
        let reply = daemon.post(&body);
        assert_eq!(reply.status, 200, "webhook answer: {}", reply.text());
        assert_eq!(reply.json()["status"], "accepted", "{}", reply.text());
    }
    daemon.wait_done(&[LEGACY_EVENT, SUBMIT_EVENT], EVENT_DEADLINE);
}

/// Every stream of the two imports, as (stream id, rows in source order).
fn streams(sim: &Sim) -> Vec<(String, Vec<SourceRow>)> {
    let legacy = sim.legacy_rows(LEGACY_BATCH);
    assert_eq!(
        legacy.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        legacy_row_ids(sim.config(), LEGACY_BATCH),
        "the simulator serves the rows its library describes"
    );
    let mut streams = vec![(format!("legacy-{LEGACY_BATCH}"), legacy)];
    let sheets = workbook_sheets(sim.config(), WORKBOOK);
    assert_eq!(sheets.len(), 2, "the workbook has the sheets asked for");
    for (sheet_id, slug, count) in sheets {
        let records = sim.sheet_records(&sheet_id);
        assert_eq!(records.len() as u64, count);
        assert_eq!(
            records.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            record_ids(sim.config(), &sheet_id)
        );
        streams.push((format!("{slug}-{SUBMIT_EVENT}"), records));
    }
    streams
}

/// The cargo that runs this test, so the scaffold is built by the same toolchain.
fn cargo() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

/// Runs cargo in `crate_dir` with its own target directory inside it, offline: the workspace
/// build (a prerequisite of these tests) has put every dependency in the local cache.
fn run_cargo(crate_dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(cargo())
        .args(args)
        .arg("--offline")
        .current_dir(crate_dir)
        .env("CARGO_TARGET_DIR", crate_dir.join("target"))
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo().display()));
    assert!(
        output.status.success(),
        "`cargo {}` in {} failed ({}):\n{}\n{}",
        args.join(" "),
        crate_dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn scaffolded_plugin_builds_on_its_own_and_receives_every_row_once() {
    let dir = TestDir::new("scaffold");
    let created = Command::new(Artifacts::locate().flatsync())
        .args(["plugin", "new", "e2e-rows", "--path"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("cannot run flatsync plugin new");
    let stdout = String::from_utf8_lossy(&created.stdout);
    assert!(
        created.status.success(),
        "flatsync plugin new failed: {stdout}{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let crate_dir = dir.path().join("e2e-rows");
    assert!(
        stdout.contains(&format!("cd {}", crate_dir.display())),
        "{stdout}"
    );

    // The next steps it printed, as written: test, build, then load the library it names.
    let tested = run_cargo(&crate_dir, &["test"]);
    let test_output = String::from_utf8_lossy(&tested.stdout);
    assert!(
        test_output.contains("test result: ok. 2 passed"),
        "the scaffold's own tests: {test_output}"
    );
    run_cargo(&crate_dir, &["build", "--release"]);
    let plugin_line = stdout
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("plugin = "))
        .unwrap_or_else(|| panic!("no `plugin = ` line in the next steps:\n{stdout}"));
    let library: String = serde_json::from_str(plugin_line.trim_start_matches("plugin = "))
        .unwrap_or_else(|e| panic!("{plugin_line}: not a quoted path ({e})"));
    assert_eq!(
        Path::new(&library),
        crate_dir.join("target/release/libe2e_rows.so")
    );
    assert!(Path::new(&library).is_file(), "{library} was not built");

    // A second `plugin new` with the same name must not touch the crate.
    let again = Command::new(Artifacts::locate().flatsync())
        .args(["plugin", "new", "e2e-rows", "--path"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("cannot run flatsync plugin new");
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let sim = sim();
    let out = dir.path().join("rows-out");
    let settings = Daemon::new(&dir.path().join("daemon"))
        .sim(&sim)
        .sink(
            "rows",
            &library,
            &format!("{{ dir = {} }}", toml_string(&out)),
        )
        .route(&["portalImportSubmitted", "job:ready"], &["rows"])
        .page_size(100);
    let check = settings.check();
    assert_eq!(check.code, Some(0), "{}{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains("plugin e2e-rows 0.1.0"),
        "{}",
        check.stdout
    );
    let daemon = settings.start();
    import_both(&daemon, sim.config().rows, &sim.job_for(WORKBOOK));

    for (stream, rows) in streams(&sim) {
        let lines = read_lines(&out.join(format!("{stream}.rows")));
        let want: Vec<String> = rows
            .iter()
            .map(|row| {
                let id = serde_json::to_string(&row.id).expect("a string serialises");
                format!("{{\"id\":{id},\"values\":{}}}", values_json(row))
            })
            .collect();
        assert_same_lines(&format!("{stream}.rows"), &lines, &want);
        let expected: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        line_ids(&lines).assert_exactly(&expected, &format!("{stream}.rows"));
    }
}

#[test]
fn jsonl_folder_receives_legacy_and_platform_imports_once() {
    let plugin = Artifacts::locate()
        .dir
        .join("libflatsync_sink_jsonl_folder.so");
    assert!(
        plugin.is_file(),
        "run `cargo build --workspace` first: {} is missing",
        plugin.display()
    );
    let sim = sim();
    let dir = TestDir::new("jsonl");
    let (rows_dir, values_dir) = (dir.path().join("rows"), dir.path().join("values"));
    let daemon = Daemon::new(dir.path())
        .sim(&sim)
        .sink(
            "rows",
            "jsonl-folder",
            &format!("{{ dir = {} }}", toml_string(&rows_dir)),
        )
        .sink(
            "values",
            "jsonl-folder",
            &format!("{{ dir = {}, envelope = false }}", toml_string(&values_dir)),
        )
        .route(&["portalImportSubmitted", "job:ready"], &["rows", "values"])
        .page_size(100)
        .start();
    import_both(&daemon, sim.config().rows, &sim.job_for(WORKBOOK));

    let streams = streams(&sim);
    for sink_dir in [&rows_dir, &values_dir] {
        assert!(
            jsonl_leftovers(sink_dir).is_empty(),
            "{}: {:?}",
            sink_dir.display(),
            jsonl_leftovers(sink_dir)
        );
        let mut names: Vec<String> = jsonl_files(sink_dir).into_keys().collect();
        let mut want: Vec<String> = streams.iter().map(|(s, _)| format!("{s}.jsonl")).collect();
        names.sort();
        want.sort();
        assert_eq!(names, want, "one file per stream in {}", sink_dir.display());
    }
    let with_envelope = jsonl_files(&rows_dir);
    let values_only = jsonl_files(&values_dir);
    for (stream, rows) in &streams {
        let name = format!("{stream}.jsonl");
        let lines = &with_envelope[&name];
        let expected: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        line_ids(lines).assert_exactly(&expected, &name);
        // Byte for byte: the batch row with the source's key order and value text.
        let want: Vec<String> = rows.iter().map(row_json).collect();
        assert_same_lines(&name, lines, &want);
        let want: Vec<String> = rows.iter().map(values_json).collect();
        assert_same_lines(
            &format!("{name} (envelope = false)"),
            &values_only[&name],
            &want,
        );
    }
}
