use flatsync_test_kit::fs::entries;
use std::fs;
use std::path::Path;

use flatsync_plugin_sdk::{
    Batch, BatchParts, CreateContext, Held, Logger, Sink, SinkError, serde_json,
};
use serde_json::{Value, json};

use crate::JsonlFolder;

fn create(config: Value) -> Result<JsonlFolder, SinkError> {
    JsonlFolder::create(&CreateContext::new("jsonl", Logger::discard()), config)
}

fn sink(dir: &Path) -> JsonlFolder {
    create(json!({ "dir": dir })).expect("valid config")
}

/// One batch line; `values` is JSON object text, so the test controls key order and escapes.
fn row(id: &str, valid: bool, values: &str) -> String {
    format!("{{\"id\":\"{id}\",\"valid\":{valid},\"values\":{values}}}\n")
}

fn send(
    sink: &mut JsonlFolder,
    stream: &str,
    seq: u64,
    rows: &[String],
    last: bool,
) -> Result<(), SinkError> {
    let ndjson = rows.concat();
    sink.write_batch(&Batch::from_parts(BatchParts {
        stream,
        kind: "contacts",
        event_id: "ev1",
        fields_json: "[]",
        seq,
        row_count: rows.len() as u64,
        ndjson: ndjson.as_bytes(),
        received_at_ms: 1_714_658_591_517,
        last,
        deletions: false,
    }))
}

/// A batch of the deletion stream `stream`: one row per deleted record id.
fn send_deletions(
    sink: &mut JsonlFolder,
    stream: &str,
    seq: u64,
    ids: &[&str],
    last: bool,
) -> Result<(), SinkError> {
    let ndjson: String = ids.iter().map(|id| row(id, true, "{}")).collect();
    sink.write_batch(&Batch::from_parts(BatchParts {
        stream,
        kind: "contacts",
        event_id: "ev2",
        fields_json: "[]",
        seq,
        row_count: ids.len() as u64,
        ndjson: ndjson.as_bytes(),
        received_at_ms: 1_714_744_991_517,
        last,
        deletions: true,
    }))
}

/// The line of a record deleted at the time `send_deletions` gives.
fn deletion_line(id: &str) -> String {
    format!("{{\"_id\":\"{id}\",\"_deleted\":true,\"_deleted_at\":\"2024-05-03T14:03:11.517Z\"}}\n")
}

/// One row per batch, seq `seq`, id `r<seq>`.
fn numbered(seq: u64) -> [String; 1] {
    [row(&format!("r{seq}"), true, &format!(r#"{{"n":{seq}}}"#))]
}

fn read(dir: &Path, stream: &str) -> String {
    fs::read_to_string(dir.join(format!("{stream}.jsonl"))).expect("final file exists")
}

#[test]
fn rows_become_lines_in_order_with_values_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    let rows = [
        row(
            "r1",
            true,
            r#"{"z":"last key first","a":1.50,"big":123456789012345678901234567890}"#,
        ),
        row(
            "r\\\"2",
            false,
            r#"{"quote":"say \"hi\"","nl":"l1\nl2","uni":"Zoë 日本 😀","nil":null,"obj":{"k":[1,"a b"]}}"#,
        ),
        row("r3", true, "{}"),
    ];
    send(&mut sink, "contacts-ev1", 0, &rows, true).expect("written");
    assert_eq!(
        read(dir.path(), "contacts-ev1"),
        rows.concat(),
        "with the envelope, each line is the batch row as delivered"
    );
    let text = read(dir.path(), "contacts-ev1");
    let second: Value = serde_json::from_str(text.lines().nth(1).expect("3 lines")).expect("JSON");
    assert_eq!(second["id"], "r\"2");
    assert_eq!(second["values"]["nl"], "l1\nl2");
    assert_eq!(entries(dir.path()), ["contacts-ev1.jsonl"]);
}

#[test]
fn without_the_envelope_lines_are_the_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = create(json!({ "dir": dir.path(), "envelope": false })).expect("valid config");
    let rows = [
        row("r1", true, r#"{"b":"x","a":[1,2]}"#),
        row("r2", false, r#"{"k\"ey":null}"#),
    ];
    send(&mut sink, "s", 0, &rows, true).expect("written");
    assert_eq!(
        read(dir.path(), "s"),
        "{\"b\":\"x\",\"a\":[1,2]}\n{\"k\\\"ey\":null}\n"
    );
}

#[test]
fn resumes_after_a_crash_with_every_row_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = sink(dir.path());
    for seq in 0..2 {
        send(&mut first, "st", seq, &numbered(seq), false).expect("written");
    }
    first.flush().expect("flush");
    // Accepted but never flushed: kept through the "crash" below (the progress record vouches
    // for them), and skipped when the host sends them again.
    for seq in 2..4 {
        send(&mut first, "st", seq, &numbered(seq), false).expect("written");
    }
    drop(first);

    let mut second = sink(dir.path());
    assert_eq!(
        second.held("st").expect("held answers"),
        Some(Held { seq: 3, rows: 4 })
    );
    // The host's checkpoint may be behind the sink's: here it starts again from seq 0.
    for seq in 0..5 {
        send(&mut second, "st", seq, &numbered(seq), seq == 4).expect("written");
    }
    let expected: String = (0..5).map(|seq| numbered(seq).concat()).collect();
    assert_eq!(read(dir.path(), "st"), expected);
    assert_eq!(
        entries(dir.path()),
        ["st.jsonl"],
        "no partial or state left"
    );
}

#[test]
fn a_crash_before_the_first_flush_keeps_what_was_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = sink(dir.path());
    send(&mut first, "st", 0, &numbered(0), false).expect("written");
    drop(first);
    let mut second = sink(dir.path());
    assert_eq!(
        second.held("st").expect("held answers"),
        Some(Held { seq: 0, rows: 1 })
    );
    // The last batch of a stream whose batch 0 the sink holds: appended after it.
    send(&mut second, "st", 1, &numbered(1), true).expect("written");
    assert_eq!(
        read(dir.path(), "st"),
        [numbered(0), numbered(1)].concat().concat()
    );
}

#[test]
fn a_crash_that_lost_the_progress_record_starts_the_stream_afresh() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = sink(dir.path());
    send(&mut first, "st", 0, &numbered(0), false).expect("written");
    drop(first);
    // As after a power cut that took the unsynced record.
    fs::remove_file(dir.path().join(".st.jsonl.progress")).expect("remove");
    let mut second = sink(dir.path());
    assert_eq!(second.held("st").expect("held answers"), None);
    send(&mut second, "st", 0, &numbered(0), true).expect("written");
    assert_eq!(read(dir.path(), "st"), numbered(0).concat());
}

#[test]
fn flush_records_the_applied_seq_and_length() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    send(&mut sink, "s", 0, &numbered(0), false).expect("b0");
    sink.flush().expect("flush");
    assert_eq!(
        entries(dir.path()),
        [".s.jsonl.partial", ".s.jsonl.progress", ".s.jsonl.state"]
    );
    let state: Value =
        serde_json::from_slice(&fs::read(dir.path().join(".s.jsonl.state")).expect("state"))
            .expect("JSON");
    let len = numbered(0).concat().len();
    let rows = numbered(0).len();
    assert_eq!(
        state,
        json!({ "applied_seq": 0, "len": len, "stream_rows": rows })
    );
}

#[test]
fn complete_stream_skips_every_batch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = sink(dir.path());
    send(&mut first, "done", 0, &numbered(0), true).expect("b0");
    let before = read(dir.path(), "done");
    // Sent again to the same instance and to a new one.
    send(&mut first, "done", 0, &[row("x", true, "{}")], true).expect("skipped");
    let mut second = sink(dir.path());
    for seq in 0..3 {
        send(&mut second, "done", seq, &[row("x", true, "{}")], false).expect("skipped");
    }
    second.flush().expect("flush");
    assert_eq!(read(dir.path(), "done"), before);
    assert_eq!(entries(dir.path()), ["done.jsonl"]);
}

#[test]
fn leftovers_next_to_a_final_file_are_removed() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("s.jsonl"), "").expect("write");
    fs::write(dir.path().join(".s.jsonl.state"), "{}").expect("write");
    fs::write(dir.path().join(".s.jsonl.state.tmp"), "{").expect("write");
    fs::write(dir.path().join(".s.jsonl.partial"), "junk").expect("write");
    let mut sink = sink(dir.path());
    send(&mut sink, "s", 0, &[], true).expect("skipped");
    assert_eq!(entries(dir.path()), ["s.jsonl"]);
}

#[test]
fn empty_stream_gives_an_empty_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    send(&mut sink, "empty", 0, &[], true).expect("written");
    assert_eq!(read(dir.path(), "empty"), "");
    assert_eq!(entries(dir.path()), ["empty.jsonl"]);
}

#[test]
fn gap_is_fatal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    send(&mut sink, "s", 0, &numbered(0), false).expect("b0");
    let error = send(&mut sink, "s", 2, &numbered(2), false).expect_err("gap");
    assert!(!error.is_retry());
    assert_eq!(
        error.message(),
        "stream s: got batch seq 2 but the next expected is 1; batches are missing"
    );
}

#[test]
fn malformed_batch_writes_nothing_and_can_be_sent_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    send(&mut sink, "s", 0, &numbered(0), false).expect("b0");
    let bad = [
        numbered(1)[0].clone(),
        "{\"id\":\"r2\",\"valid\":tru\n".to_owned(),
    ];
    let error = send(&mut sink, "s", 1, &bad, false).expect_err("line 2 is malformed");
    assert!(!error.is_retry());
    assert!(error.message().contains("line 2"), "{}", error.message());
    let partial = fs::read_to_string(dir.path().join(".s.jsonl.partial")).expect("partial");
    assert_eq!(partial, numbered(0).concat(), "nothing of batch 1 written");

    send(&mut sink, "s", 1, &numbered(1), true).expect("sent again");
    assert_eq!(
        read(dir.path(), "s"),
        [numbered(0), numbered(1)].concat().concat()
    );
}

#[test]
fn failed_publish_is_finished_when_the_last_batch_comes_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    send(&mut sink, "s", 0, &numbered(0), false).expect("b0");
    // A directory under the final name makes the rename fail.
    let blocker = dir.path().join("s.jsonl");
    fs::create_dir(&blocker).expect("mkdir");
    let error = send(&mut sink, "s", 1, &numbered(1), true).expect_err("rename fails");
    assert!(error.is_retry(), "{}", error.message());
    assert!(
        error.message().starts_with("cannot rename"),
        "{}",
        error.message()
    );

    fs::remove_dir(&blocker).expect("rmdir");
    send(&mut sink, "s", 1, &numbered(1), true).expect("retried");
    assert_eq!(
        read(dir.path(), "s"),
        [numbered(0), numbered(1)].concat().concat(),
        "batch 1 appended once"
    );
    assert_eq!(entries(dir.path()), ["s.jsonl"]);
}

#[test]
fn streams_are_independent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    send(&mut sink, "a", 0, &numbered(0), false).expect("a0");
    send(&mut sink, "b", 0, &numbered(5), true).expect("b0");
    send(&mut sink, "a", 1, &numbered(1), true).expect("a1");
    assert_eq!(
        read(dir.path(), "a"),
        [numbered(0), numbered(1)].concat().concat()
    );
    assert_eq!(read(dir.path(), "b"), numbered(5).concat());
    assert_eq!(entries(dir.path()), ["a.jsonl", "b.jsonl"]);
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let message = |config: Value| {
        create(config)
            .expect_err("invalid config")
            .message()
            .to_owned()
    };
    assert_eq!(message(json!({})), "config key `dir` is required");
    assert_eq!(
        message(json!({ "dir": dir.path(), "colour": 1 })),
        "unknown config key `colour` (known keys: dir, envelope)"
    );
    assert!(
        message(json!({ "dir": dir.path(), "envelope": "yes" }))
            .starts_with("config key `envelope`:")
    );
    assert_eq!(
        message(json!({ "dir": "" })),
        "config key `dir` must not be empty"
    );
}

#[test]
fn create_makes_the_folder_and_check_probes_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nested = dir.path().join("a/b");
    let mut sink = sink(&nested);
    assert!(nested.is_dir());
    sink.check().expect("writable");
    assert!(entries(&nested).is_empty(), "the probe is removed");
}

#[test]
fn unsafe_stream_names_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    for name in ["../x", "a/b", "", "..", "sp ace"] {
        let error = send(&mut sink, name, 0, &[], true).expect_err("refused");
        assert!(!error.is_retry(), "{name}");
    }
    assert!(entries(dir.path()).is_empty());
}

/// The plugin guide quotes this crate; each quote must still be in the source, verbatim.
#[test]
fn the_guide_quotes_the_current_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let guide_path = root.join("docs/writing-a-sink-plugin.md");
    let guide = fs::read_to_string(&guide_path).expect("the guide exists");
    let mut lines = guide.lines();
    let mut excerpts = 0;
    while let Some(line) = lines.next() {
        let Some(source) = line
            .strip_prefix("<!-- excerpt: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(
            lines.next(),
            Some("```rust"),
            "the excerpt of {source} starts with a rust code block"
        );
        let block: Vec<&str> = lines.by_ref().take_while(|line| *line != "```").collect();
        assert!(!block.is_empty(), "an empty excerpt of {source}");
        let code = fs::read_to_string(root.join(source))
            .unwrap_or_else(|error| panic!("the guide quotes {source}: {error}"));
        let block = block.join("\n");
        assert!(
            code.contains(&block),
            "the guide quotes {source}, but the file no longer holds:\n{block}"
        );
        excerpts += 1;
    }
    assert!(excerpts >= 5, "only {excerpts} excerpts found in the guide");
}

#[test]
fn deletion_lines_name_the_record_and_when_with_or_without_the_envelope() {
    for envelope in [true, false] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sink =
            create(json!({ "dir": dir.path(), "envelope": envelope })).expect("valid config");
        send_deletions(
            &mut sink,
            "contacts-deleted-ev2",
            0,
            &["r1", "r\\\"2"],
            true,
        )
        .expect("written");
        let text = read(dir.path(), "contacts-deleted-ev2");
        assert_eq!(
            text,
            [deletion_line("r1"), deletion_line("r\\\"2")].concat(),
            "envelope = {envelope}"
        );
        let second: Value =
            serde_json::from_str(text.lines().nth(1).expect("2 lines")).expect("JSON");
        assert_eq!(
            second,
            json!({"_id": "r\"2", "_deleted": true, "_deleted_at": "2024-05-03T14:03:11.517Z"})
        );
        assert_eq!(entries(dir.path()), ["contacts-deleted-ev2.jsonl"]);
    }
}

#[test]
fn deletions_are_written_exactly_once_across_a_crash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stream = "contacts-deleted-ev2";
    let id = |seq: u64| format!("r{seq}");
    let mut first = sink(dir.path());
    send_deletions(&mut first, stream, 0, &[&id(0)], false).expect("seq 0");
    first.flush().expect("flush");
    // Accepted but never flushed: lost with the "crash", sent again by the host.
    send_deletions(&mut first, stream, 1, &[&id(1)], false).expect("seq 1");
    drop(first);

    let mut second = sink(dir.path());
    for seq in 0..3 {
        send_deletions(&mut second, stream, seq, &[&id(seq)], seq == 2).expect("written");
    }
    // The whole stream once more, to a new instance: every batch is skipped.
    let mut third = sink(dir.path());
    for seq in 0..3 {
        send_deletions(&mut third, stream, seq, &[&id(seq)], seq == 2).expect("skipped");
    }
    let expected: String = (0..3).map(|seq| deletion_line(&id(seq))).collect();
    assert_eq!(read(dir.path(), stream), expected);
    assert_eq!(entries(dir.path()), [format!("{stream}.jsonl")]);
}

/// Compact lines are copied as they are; one spaced line in the batch makes every row rendered,
/// with the same result for the compact ones.
#[test]
fn a_spaced_line_among_compact_lines_is_written_compact() {
    let compact = row("r1", true, r#"{"a":[1, 2],"b":"x"}"#);
    let spaced =
        "{ \"id\" : \"r2\", \"valid\" : false, \"values\" : { \"c\" : null } }\n".to_owned();
    for (envelope, first, second) in [
        (
            true,
            compact.as_str(),
            "{\"id\":\"r2\",\"valid\":false,\"values\":{\"c\":null}}\n",
        ),
        (false, "{\"a\":[1, 2],\"b\":\"x\"}\n", "{\"c\":null}\n"),
    ] {
        for rows in [vec![compact.clone(), spaced.clone()], vec![compact.clone()]] {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut sink =
                create(json!({ "dir": dir.path(), "envelope": envelope })).expect("valid config");
            send(&mut sink, "s", 0, &rows, true).expect("written");
            let expected = if rows.len() == 2 {
                format!("{first}{second}")
            } else {
                first.to_owned()
            };
            assert_eq!(read(dir.path(), "s"), expected, "envelope {envelope}");
        }
    }
}
