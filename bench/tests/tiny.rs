//! The whole benchmark, end to end, on tiny sizes and against the debug binaries cargo built
//! for the workspace (`cargo build --workspace` first, as for the e2e tests). It proves the
//! harness works, not any speed: no figure is compared with a bound.

use std::path::PathBuf;

use flatsync_bench::{Line, Plan, markdown, plain};

/// `target/debug`, from this test's own path (`target/debug/deps/tiny-<hash>`).
fn debug_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test has a path");
    let mut dir = exe.parent().expect("in a directory").to_path_buf();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    for file in [
        "flatsync",
        "flatfile-sim",
        "libflatsync_sink_csv_folder.so",
        "libflatsync_sink_sqlite.so",
        "libflatsync_sink_jsonl_folder.so",
        "libflatsync_sink_postgres.so",
    ] {
        assert!(
            dir.join(file).is_file(),
            "run `cargo build --workspace` first: {} is missing",
            dir.join(file).display()
        );
    }
    dir
}

fn tiny_plan() -> Plan {
    Plan {
        runs: 1,
        rows: vec![2_000],
        latencies_ms: vec![0],
        intake_events: 300,
        intake_events_4: 100,
        pending_events: 300,
        watch_s: 1.0,
        // Slow pages, so the kill surely lands while the stream runs: a third of 40 pages is
        // served when it comes, and the other 27 take at least 7 rounds of 50 ms.
        restart_rows: 40_000,
        restart_latency_ms: 50,
        ..Plan::quick(debug_dir())
    }
}

fn find<'a>(lines: &'a [Line], case: &str) -> &'a Line {
    lines
        .iter()
        .find(|line| line.case == case)
        .unwrap_or_else(|| panic!("no line {case:?} in\n{}", plain(lines)))
}

#[test]
fn every_case_runs_on_tiny_sizes_and_prints_every_figure() {
    let mut reported = 0;
    let lines = flatsync_bench::run(&tiny_plan(), |_| reported += 1).expect("the benchmark runs");
    let table = plain(&lines);
    // Shown with --nocapture: the figures of a tiny debug run, for the eye only.
    println!("{table}");
    assert_eq!(reported, lines.len());

    let mut expected = Vec::new();
    for api in ["legacy", "platform"] {
        for sink in ["csv", "sqlite", "jsonl", "postgres"] {
            expected.push(format!("{api} {sink} 2k 0ms"));
        }
    }
    for case in [
        "intake 32 conns",
        "backlog drain",
        "intake 32 conns (postgres state)",
        "backlog drain (postgres state)",
        "intake 4 conns",
        "intake 4 conns (postgres state)",
        "memory 300 pending",
        "restart after SIGKILL 40k",
    ] {
        expected.push(case.to_owned());
    }
    let cases: Vec<&str> = lines.iter().map(|line| line.case.as_str()).collect();
    assert_eq!(cases, expected, "{table}");

    for line in &lines {
        let context = format!("{}:\n{table}", line.case);
        assert!(line.count > 0, "{context}");
        assert!(line.wall_s > 0.0 && line.rate > 0.0, "{context}");
        // /proc counts CPU in 10 ms ticks: a tiny case may stay under one.
        assert!(line.cpu_s >= 0.0, "{context}");
        assert!(line.peak_rss_mib > 0.0, "{context}");
    }
    // Imports: the harness counted exactly the rows sent in the sink, and the wire floor ran.
    for case in &expected[..8] {
        let line = find(&lines, case);
        assert_eq!(line.count, 2_000, "{table}");
        assert!(line.wire.is_some_and(|w| w > 0.0), "{table}");
    }
    for state in ["", " (postgres state)"] {
        for case in ["intake 32 conns", "intake 4 conns"] {
            assert!(
                find(&lines, &format!("{case}{state}"))
                    .extra("p99 ms")
                    .is_some_and(|p| p > 0.0),
                "{table}"
            );
        }
        assert_eq!(
            find(&lines, &format!("intake 32 conns{state}")).count,
            300,
            "{table}"
        );
        assert_eq!(
            find(&lines, &format!("intake 4 conns{state}")).count,
            100,
            "{table}"
        );
        // The drain checked that the sink holds one row per acknowledged event.
        assert_eq!(
            find(&lines, &format!("backlog drain{state}")).count,
            300,
            "{table}"
        );
    }
    let memory = find(&lines, "memory 300 pending");
    assert!(memory.extra("idle MiB").is_some_and(|m| m > 0.0), "{table}");
    let restart = find(&lines, "restart after SIGKILL 40k");
    assert!(
        restart.extra("first row s").is_some_and(|s| s > 0.0),
        "{table}"
    );
    assert!(
        restart.extra("pages again").is_some_and(|p| p >= 0.0),
        "{table}"
    );

    // Every line is printed with its figures, in both forms.
    let md = markdown(&lines);
    assert_eq!(md.lines().count(), lines.len() + 2, "{md}");
    for line in &lines {
        assert!(
            table.contains(&line.case) && md.contains(&line.case),
            "{table}"
        );
    }
    assert!(
        table.contains("p99 ") && table.contains("first new row after"),
        "{table}"
    );
}
