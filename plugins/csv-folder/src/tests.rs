use flatsync_test_kit::fs::entries;
use std::fs;
use std::path::Path;

use flatsync_plugin_sdk::{
    Batch, BatchParts, CreateContext, Held, Logger, Sink, SinkError, serde_json,
};
use serde_json::json;

use crate::CsvFolder;

fn create(dir: &Path, extra: serde_json::Value) -> Result<CsvFolder, SinkError> {
    let mut config = json!({ "dir": dir });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    CsvFolder::create(&CreateContext::new("csv", Logger::discard()), config)
}

fn sink(dir: &Path) -> CsvFolder {
    create(dir, json!({})).expect("valid config")
}

/// One NDJSON line; `values` is JSON object text, so the test controls key order.
fn row(id: &str, valid: bool, values: &str) -> String {
    format!("{{\"id\":\"{id}\",\"valid\":{valid},\"values\":{values}}}\n")
}

fn send(
    sink: &mut CsvFolder,
    stream: &str,
    fields: &str,
    seq: u64,
    rows: &[String],
    last: bool,
) -> Result<(), SinkError> {
    let ndjson = rows.concat();
    sink.write_batch(&Batch::from_parts(BatchParts {
        stream,
        kind: "contacts",
        event_id: "ev1",
        fields_json: fields,
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
    sink: &mut CsvFolder,
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

fn read(dir: &Path, stream: &str) -> String {
    fs::read_to_string(dir.join(format!("{stream}.csv"))).expect("final file exists")
}

fn records(text: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
        .records()
        .map(|record| {
            record
                .expect("valid CSV")
                .iter()
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

#[test]
fn header_follows_schema_then_first_seen_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    let rows = [
        row("r1", true, r#"{"name":"Ada","extra":1,"email":"ada@x.io"}"#),
        row("r2", false, r#"{"email":"bob@x.io","later":"z"}"#),
    ];
    send(
        &mut sink,
        "contacts-ev1",
        r#"["email","name"]"#,
        0,
        &rows,
        true,
    )
    .expect("written");
    assert_eq!(
        read(dir.path(), "contacts-ev1"),
        "_id,_valid,email,name,extra,later\n\
         r1,true,ada@x.io,Ada,1,\n\
         r2,false,bob@x.io,,,z\n"
    );
    assert_eq!(entries(dir.path()), ["contacts-ev1.csv"]);
}

#[test]
fn key_first_seen_in_a_later_batch_pads_earlier_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    send(
        &mut sink,
        "legacy-b1",
        "[]",
        0,
        &[row("r1", true, r#"{"a":1}"#)],
        false,
    )
    .expect("batch 0");
    sink.flush().expect("flush");
    let batch1 = [
        row("r2", true, r#"{"a":2}"#),
        row("r3", true, r#"{"b":"x","a":3}"#),
        row("r4", true, r#"{"a":4}"#),
    ];
    send(&mut sink, "legacy-b1", "[]", 1, &batch1, false).expect("batch 1");
    send(
        &mut sink,
        "legacy-b1",
        "[]",
        2,
        &[row("r5", false, r#"{"c":true}"#)],
        true,
    )
    .expect("batch 2");
    let text = read(dir.path(), "legacy-b1");
    assert_eq!(
        text,
        "_id,_valid,a,b,c\n\
         r1,true,1,,\n\
         r2,true,2,,\n\
         r3,true,3,x,\n\
         r4,true,4,,\n\
         r5,false,,,true\n"
    );
    assert!(records(&text).iter().all(|record| record.len() == 5));
    assert_eq!(
        entries(dir.path()),
        ["legacy-b1.csv"],
        "no partial, state or temp file left"
    );
}

#[test]
fn cells_are_quoted_and_typed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    let rows = [row(
        "r,1",
        true,
        r#"{"comma":"a,b","quote":"say \"hi\"","newline":"l1\nl2","unicode":"Zoë 日本 😀","num":1.50,"big":123456789012345678901234567890,"yes":false,"nil":null,"obj":{"k": [1, "a b"]}}"#,
    )];
    send(&mut sink, "s", "[]", 0, &rows, true).expect("written");
    let text = read(dir.path(), "s");
    let parsed = records(&text);
    assert_eq!(
        parsed[0],
        [
            "_id", "_valid", "comma", "quote", "newline", "unicode", "num", "big", "yes", "nil",
            "obj"
        ]
    );
    assert_eq!(
        parsed[1],
        [
            "r,1",
            "true",
            "a,b",
            "say \"hi\"",
            "l1\nl2",
            "Zoë 日本 😀",
            "1.50",
            "123456789012345678901234567890",
            "false",
            "",
            r#"{"k":[1,"a b"]}"#,
        ]
    );
    assert!(text.contains(r#""say ""hi""""#), "{text}");
    assert!(text.contains("\"l1\nl2\""), "{text}");
}

#[test]
fn formulas_are_neutralised_only_when_asked() {
    let values = r#"{"f":"=SUM(A1)","p":"+1","m":"-x","at":"@cmd","tab":"\tx","cr":"\rx","n":-5,"ok":"safe"}"#;
    for (neutralize, expected) in [
        (
            false,
            ["=SUM(A1)", "+1", "-x", "@cmd", "\tx", "\rx", "-5", "safe"],
        ),
        (
            true,
            [
                "'=SUM(A1)",
                "'+1",
                "'-x",
                "'@cmd",
                "'\tx",
                "'\rx",
                "-5",
                "safe",
            ],
        ),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sink = create(
            dir.path(),
            json!({"neutralize_formulas": neutralize, "meta_columns": false}),
        )
        .expect("valid config");
        send(&mut sink, "s", "[]", 0, &[row("r1", true, values)], true).expect("written");
        let parsed = records(&read(dir.path(), "s"));
        assert_eq!(parsed[1], expected, "neutralize_formulas = {neutralize}");
    }
}

#[test]
fn resumes_after_a_crash_with_every_row_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let batch = |seq: u64| [row(&format!("r{seq}"), true, &format!(r#"{{"n":{seq}}}"#))];
    let mut first = sink(dir.path());
    for seq in 0..2 {
        send(&mut first, "st", "[]", seq, &batch(seq), false).expect("written");
    }
    first.flush().expect("flush");
    // Accepted but never flushed: kept through the "crash" below (the progress record vouches
    // for them), and skipped when the host re-sends them.
    for seq in 2..4 {
        send(&mut first, "st", "[]", seq, &batch(seq), false).expect("written");
    }
    drop(first);

    let mut second = sink(dir.path());
    // The host's checkpoint may be behind the sink's: it re-sends from seq 0.
    for seq in 0..5 {
        send(&mut second, "st", "[]", seq, &batch(seq), seq == 4).expect("written");
    }
    assert_eq!(
        read(dir.path(), "st"),
        "_id,_valid,n\nr0,true,0\nr1,true,1\nr2,true,2\nr3,true,3\nr4,true,4\n"
    );
    assert_eq!(entries(dir.path()), ["st.csv"]);
}

#[test]
fn resume_restores_columns_added_after_the_header() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = sink(dir.path());
    send(
        &mut first,
        "st",
        "[]",
        0,
        &[row("r0", true, r#"{"a":0}"#)],
        false,
    )
    .expect("b0");
    send(
        &mut first,
        "st",
        "[]",
        1,
        &[row("r1", true, r#"{"a":1,"b":1}"#)],
        false,
    )
    .expect("b1");
    first.flush().expect("flush");
    drop(first);

    let mut second = sink(dir.path());
    send(
        &mut second,
        "st",
        "[]",
        2,
        &[row("r2", true, r#"{"a":2}"#)],
        true,
    )
    .expect("b2");
    assert_eq!(
        read(dir.path(), "st"),
        "_id,_valid,a,b\nr0,true,0,\nr1,true,1,1\nr2,true,2,\n"
    );
}

#[test]
fn complete_stream_skips_every_batch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = sink(dir.path());
    send(
        &mut first,
        "done",
        "[]",
        0,
        &[row("r0", true, r#"{"a":0}"#)],
        true,
    )
    .expect("b0");
    let before = read(dir.path(), "done");
    // Re-delivered to the same instance and to a new one.
    send(
        &mut first,
        "done",
        "[]",
        0,
        &[row("x", true, r#"{"a":9}"#)],
        true,
    )
    .expect("skipped");
    let mut second = sink(dir.path());
    for seq in 0..3 {
        send(
            &mut second,
            "done",
            "[]",
            seq,
            &[row("x", true, "{}")],
            false,
        )
        .expect("skipped");
    }
    second.flush().expect("flush");
    assert_eq!(read(dir.path(), "done"), before);
    assert_eq!(entries(dir.path()), ["done.csv"]);
}

#[test]
fn leftovers_next_to_a_final_file_are_removed() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("s.csv"), "_id,_valid\n").expect("write");
    fs::write(dir.path().join(".s.csv.state"), "{}").expect("write");
    fs::write(dir.path().join(".s.csv.partial"), "junk").expect("write");
    let mut sink = sink(dir.path());
    send(&mut sink, "s", "[]", 0, &[], true).expect("skipped");
    assert_eq!(entries(dir.path()), ["s.csv"]);
}

#[test]
fn empty_stream_gives_a_header_only_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    send(&mut sink, "with-schema", r#"["a","b"]"#, 0, &[], true).expect("written");
    send(&mut sink, "no-schema", "[]", 0, &[], true).expect("written");
    assert_eq!(read(dir.path(), "with-schema"), "_id,_valid,a,b\n");
    assert_eq!(read(dir.path(), "no-schema"), "_id,_valid\n");
    assert_eq!(entries(dir.path()), ["no-schema.csv", "with-schema.csv"]);
}

#[test]
fn gap_is_fatal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    let error = send(&mut sink, "s", "[]", 1, &[], false).expect_err("gap");
    assert!(!error.is_retry());
    assert_eq!(
        error.message(),
        "stream s: got batch seq 1 but the next expected is 0; batches are missing"
    );
}

#[test]
fn failed_batch_leaves_no_bytes_and_can_be_resent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    send(
        &mut sink,
        "s",
        "[]",
        0,
        &[row("r0", true, r#"{"a":0}"#)],
        false,
    )
    .expect("b0");
    let bad = [
        row("r1", true, r#"{"a":1,"new":1}"#),
        row("r2", true, r#"{"a":2}"#),
        "{\"id\":\"r3\",\"valid\":tru\n".to_owned(),
    ];
    let error = send(&mut sink, "s", "[]", 1, &bad, false).expect_err("malformed line 3");
    assert!(error.message().contains("line 3"), "{}", error.message());
    let partial = fs::read_to_string(dir.path().join(".s.csv.partial")).expect("partial");
    assert_eq!(
        partial, "_id,_valid,a\nr0,true,0\n",
        "rows 1 and 2 were cut back"
    );

    let good = [row("r1", true, r#"{"a":1}"#), row("r2", true, r#"{"a":2}"#)];
    send(&mut sink, "s", "[]", 1, &good, true).expect("re-sent");
    assert_eq!(
        read(dir.path(), "s"),
        "_id,_valid,a\nr0,true,0\nr1,true,1\nr2,true,2\n",
        "the column seen only in the failed batch is gone"
    );
}

#[test]
fn failed_first_batch_resets_the_header() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    let bad = [row("r0", true, r#"{"x":0}"#), "not json\n".to_owned()];
    send(&mut sink, "s", r#"["a"]"#, 0, &bad, false).expect_err("malformed");
    send(
        &mut sink,
        "s",
        r#"["a"]"#,
        0,
        &[row("r0", true, r#"{"a":0}"#)],
        true,
    )
    .expect("ok");
    assert_eq!(read(dir.path(), "s"), "_id,_valid,a\nr0,true,0\n");
}

#[test]
fn delimiter_and_meta_columns_are_configurable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink =
        create(dir.path(), json!({"delimiter": ";", "meta_columns": false})).expect("valid config");
    send(
        &mut sink,
        "s",
        "[]",
        0,
        &[row("r0", true, r#"{"a":"x;y","b":"1,5"}"#)],
        true,
    )
    .expect("written");
    assert_eq!(read(dir.path(), "s"), "a;b\n\"x;y\";1,5\n");
}

#[test]
fn flush_writes_state_and_the_partial_survives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    send(
        &mut sink,
        "s",
        "[]",
        0,
        &[row("r0", true, r#"{"a":0}"#)],
        false,
    )
    .expect("b0");
    sink.flush().expect("flush");
    assert_eq!(
        entries(dir.path()),
        [".s.csv.partial", ".s.csv.progress", ".s.csv.state"]
    );
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join(".s.csv.state")).expect("state"))
            .expect("JSON");
    assert_eq!(
        state,
        json!({"applied_seq": 0, "offset": 23, "columns": ["a"], "header_columns": 1, "stream_rows": 1})
    );
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let message = |extra: serde_json::Value| {
        create(dir.path(), extra)
            .expect_err("invalid config")
            .message()
            .to_owned()
    };
    assert!(message(json!({"colour": 1})).starts_with("unknown config key `colour`"));
    assert!(message(json!({"delimiter": ",,"})).starts_with("config key `delimiter` must be"));
    assert!(message(json!({"delimiter": "é"})).starts_with("config key `delimiter` must be"));
    assert!(message(json!({"meta_columns": "yes"})).starts_with("config key `meta_columns`:"));
    let missing = CsvFolder::create(&CreateContext::new("csv", Logger::discard()), json!({}))
        .expect_err("no dir");
    assert_eq!(missing.message(), "config key `dir` is required");
}

#[test]
fn create_makes_the_folder_and_clears_stale_temporaries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nested = dir.path().join("a/b");
    fs::create_dir_all(&nested).expect("mkdir");
    fs::write(nested.join(".s.csv.state.tmp"), "x").expect("write");
    fs::write(nested.join("keep.csv"), "x").expect("write");
    let mut sink = sink(&nested);
    sink.check().expect("writable");
    assert_eq!(entries(&nested), ["keep.csv"]);
    let fresh = dir.path().join("new/dir");
    create(&fresh, json!({})).expect("created");
    assert!(fresh.is_dir());
}

#[test]
fn unsafe_stream_names_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    for name in ["../x", "a/b", "", "..", "sp ace"] {
        let error = send(&mut sink, name, "[]", 0, &[], true).expect_err("refused");
        assert!(!error.is_retry(), "{name}");
    }
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn a_deletion_stream_writes_a_deletions_file() {
    for config in [
        json!({}),
        json!({"meta_columns": false, "neutralize_formulas": true}),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sink = create(dir.path(), config.clone()).expect("valid config");
        send_deletions(&mut sink, "contacts-deleted-ev2", 0, &["r1", "r,2"], false).expect("seq 0");
        send_deletions(&mut sink, "contacts-deleted-ev2", 1, &["-r3"], true).expect("seq 1");
        assert_eq!(
            read(dir.path(), "contacts-deleted-ev2"),
            "_id,_deleted_at\n\
             r1,2024-05-03T14:03:11.517Z\n\
             \"r,2\",2024-05-03T14:03:11.517Z\n\
             -r3,2024-05-03T14:03:11.517Z\n",
            "config {config}"
        );
        assert_eq!(entries(dir.path()), ["contacts-deleted-ev2.csv"]);
    }
}

#[test]
fn an_empty_deletion_stream_gives_a_header_only_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sink = sink(dir.path());
    send_deletions(&mut sink, "contacts-deleted-ev2", 0, &[], true).expect("written");
    assert_eq!(
        read(dir.path(), "contacts-deleted-ev2"),
        "_id,_deleted_at\n"
    );
}

#[test]
fn deletions_are_written_exactly_once_across_a_crash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stream = "contacts-deleted-ev2";
    let ids = |seq: u64| [format!("r{seq}a"), format!("r{seq}b")];
    let send_seq = |sink: &mut CsvFolder, seq: u64, last: bool| {
        let ids = ids(seq);
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        send_deletions(sink, stream, seq, &ids, last)
    };
    let mut first = sink(dir.path());
    send_seq(&mut first, 0, false).expect("seq 0");
    first.flush().expect("flush");
    let state: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(dir.path().join(format!(".{stream}.csv.state"))).expect("state"),
    )
    .expect("JSON");
    assert_eq!(state["deletions"], true, "{state}");
    // Accepted but never flushed: kept through the "crash", skipped when sent again.
    send_seq(&mut first, 1, false).expect("seq 1");
    drop(first);

    let mut second = sink(dir.path());
    for seq in 0..3 {
        send_seq(&mut second, seq, seq == 2).expect("written");
    }
    // The whole stream once more, to a new instance: every batch is skipped.
    let mut third = sink(dir.path());
    for seq in 0..3 {
        send_seq(&mut third, seq, seq == 2).expect("skipped");
    }
    let expected: String = std::iter::once("_id,_deleted_at\n".to_owned())
        .chain(
            (0..3)
                .flat_map(ids)
                .map(|id| format!("{id},2024-05-03T14:03:11.517Z\n")),
        )
        .collect();
    assert_eq!(read(dir.path(), stream), expected);
    assert_eq!(entries(dir.path()), [format!("{stream}.csv")]);
}

#[test]
fn a_stream_never_mixes_records_and_deletions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = sink(dir.path());
    send_deletions(&mut first, "d", 0, &["r1"], false).expect("seq 0");
    first.flush().expect("flush");
    let error = send(&mut first, "d", "[]", 1, &[row("r2", true, "{}")], true)
        .expect_err("records in a deletion stream");
    assert!(!error.is_retry());
    assert_eq!(
        error.message(),
        "stream d: a record batch in a stream of deletions; a stream never mixes the two"
    );
    drop(first);

    // After a restart the state file still says what the stream is.
    let mut second = sink(dir.path());
    let error = send(&mut second, "d", "[]", 1, &[row("r2", true, "{}")], true)
        .expect_err("records in a resumed deletion stream");
    assert!(!error.is_retry());
    send(&mut second, "r", "[]", 0, &[row("r1", true, "{}")], false).expect("records");
    let error = send_deletions(&mut second, "r", 1, &["r1"], true).expect_err("mixed");
    assert_eq!(
        error.message(),
        "stream r: a deletion batch in a stream of records; a stream never mixes the two"
    );
    send_deletions(&mut second, "d", 1, &["r2"], true).expect("seq 1");
    assert_eq!(
        read(dir.path(), "d"),
        "_id,_deleted_at\nr1,2024-05-03T14:03:11.517Z\nr2,2024-05-03T14:03:11.517Z\n"
    );
}

#[test]
fn after_a_crash_the_sink_holds_its_unflushed_batches_with_their_columns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = sink(dir.path());
    send(
        &mut first,
        "st",
        "[]",
        0,
        &[row("r0", true, r#"{"a":0}"#)],
        false,
    )
    .expect("b0");
    first.flush().expect("flush");
    // Never flushed, and it adds a column after the header was written.
    send(
        &mut first,
        "st",
        "[]",
        1,
        &[
            row("r1", true, r#"{"a":1,"b":1}"#),
            row("r1b", true, r#"{"a":1}"#),
        ],
        false,
    )
    .expect("b1");
    drop(first);

    let mut second = sink(dir.path());
    assert_eq!(
        second.held("st").expect("held answers"),
        Some(Held { seq: 1, rows: 3 })
    );
    assert_eq!(second.held("other").expect("held answers"), None, "fresh");
    // The host sends only what comes after: the columns of batch 1 are still known.
    send(
        &mut second,
        "st",
        "[]",
        2,
        &[row("r2", true, r#"{"b":2}"#)],
        true,
    )
    .expect("b2");
    assert_eq!(
        read(dir.path(), "st"),
        "_id,_valid,a,b\nr0,true,0,\nr1,true,1,1\nr1b,true,1,\nr2,true,,2\n"
    );
    assert_eq!(second.held("st").expect("held answers"), None, "complete");
}
