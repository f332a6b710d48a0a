use std::path::{Path, PathBuf};

use flatsync_plugin_sdk::{Batch, BatchParts, CreateContext, Logger, Sink, SinkError, serde_json};
use rusqlite::Connection;
use serde_json::json;

use crate::SqliteSink;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested/warehouse.db");
        Self { _dir: dir, path }
    }

    fn sink(&self) -> SqliteSink {
        create(&self.path, json!({})).expect("valid config")
    }

    /// A sink with `deletions = "mark"`.
    fn marking_sink(&self) -> SqliteSink {
        create(&self.path, json!({"deletions": "mark"})).expect("valid config")
    }

    fn db(&self) -> Connection {
        Connection::open(&self.path).expect("database opens")
    }

    fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        let db = self.db();
        let mut statement = db.prepare(sql).expect("valid SQL");
        let width = statement.column_count();
        statement
            .query_map([], |row| {
                (0..width)
                    .map(|index| {
                        let value: rusqlite::types::Value = row.get(index)?;
                        Ok(match value {
                            rusqlite::types::Value::Null => "NULL".to_owned(),
                            rusqlite::types::Value::Integer(v) => v.to_string(),
                            rusqlite::types::Value::Real(v) => format!("{v:?}"),
                            rusqlite::types::Value::Text(v) => v,
                            rusqlite::types::Value::Blob(_) => "BLOB".to_owned(),
                        })
                    })
                    .collect()
            })
            .expect("query runs")
            .collect::<Result<_, _>>()
            .expect("rows read")
    }

    fn columns(&self, table: &str) -> Vec<String> {
        let db = self.db();
        let mut statement = db
            .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
            .expect("valid SQL");
        statement
            .query_map([table], |row| row.get(0))
            .expect("query runs")
            .collect::<Result<_, _>>()
            .expect("rows read")
    }
}

fn create(path: &Path, extra: serde_json::Value) -> Result<SqliteSink, SinkError> {
    let mut config = json!({ "path": path });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    SqliteSink::create(&CreateContext::new("db", Logger::discard()), config)
}

fn row(id: &str, valid: bool, values: &str) -> String {
    format!("{{\"id\":\"{id}\",\"valid\":{valid},\"values\":{values}}}\n")
}

struct Send<'a> {
    stream: &'a str,
    kind: &'a str,
    event_id: &'a str,
    fields: &'a str,
    seq: u64,
    last: bool,
    deletions: bool,
    received_at_ms: i64,
}

impl Default for Send<'_> {
    fn default() -> Self {
        Self {
            stream: "contacts-ev1",
            kind: "contacts",
            event_id: "ev1",
            fields: "[]",
            seq: 0,
            last: false,
            deletions: false,
            received_at_ms: 1_714_658_591_517,
        }
    }
}

/// A deletion stream of kind `contacts` for event `event_id`.
fn deletion<'a>(event_id: &'a str, stream: &'a str, seq: u64, last: bool) -> Send<'a> {
    Send {
        stream,
        event_id,
        seq,
        last,
        deletions: true,
        // A day after the records were received.
        received_at_ms: 1_714_744_991_517,
        ..Send::default()
    }
}

/// A deletion row, as the host sends it.
fn deleted(id: &str) -> String {
    row(id, true, "{}")
}

fn send(sink: &mut SqliteSink, how: Send<'_>, rows: &[String]) -> Result<(), SinkError> {
    let ndjson = rows.concat();
    sink.write_batch(&Batch::from_parts(BatchParts {
        stream: how.stream,
        kind: how.kind,
        event_id: how.event_id,
        fields_json: how.fields,
        seq: how.seq,
        row_count: rows.len() as u64,
        ndjson: ndjson.as_bytes(),
        received_at_ms: how.received_at_ms,
        last: how.last,
        deletions: how.deletions,
    }))
}

#[test]
fn redelivery_upserts_without_duplicates() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    let batch0 = [
        row("r1", true, r#"{"name":"Ada"}"#),
        row("r2", false, r#"{"name":"Bob"}"#),
    ];
    send(&mut sink, Send::default(), &batch0).expect("batch 0");
    // The same batch again: already applied, skipped.
    send(&mut sink, Send::default(), &batch0).expect("skipped");
    // Another stream (a later event) carries r1 again: its row is updated in place.
    let later = Send {
        stream: "contacts-ev2",
        ..Send::default()
    };
    send(
        &mut sink,
        later,
        &[row("r1", false, r#"{"name":"Ada L."}"#)],
    )
    .expect("ev2");
    assert_eq!(
        fx.rows(
            r#"SELECT _record_id, _event_id, _valid, _received_at, name FROM contacts ORDER BY 1"#
        ),
        [
            ["r1", "ev1", "0", "2024-05-02T14:03:11.517Z", "Ada L."],
            ["r2", "ev1", "0", "2024-05-02T14:03:11.517Z", "Bob"],
        ]
    );
}

#[test]
fn applied_seq_survives_reopening() {
    let fx = Fixture::new();
    let mut first = fx.sink();
    for seq in 0..3 {
        let rows = [row(&format!("r{seq}"), true, &format!(r#"{{"n":{seq}}}"#))];
        send(
            &mut first,
            Send {
                seq,
                ..Send::default()
            },
            &rows,
        )
        .expect("written");
    }
    first.flush().expect("flush is a no-op");
    drop(first);

    let mut second = fx.sink();
    // The host re-sends from an older checkpoint with different bytes to prove nothing
    // already applied is touched.
    for seq in 0..3 {
        let rows = [row("intruder", true, r#"{"n":99}"#)];
        send(
            &mut second,
            Send {
                seq,
                ..Send::default()
            },
            &rows,
        )
        .expect("skipped");
    }
    let rows = [row("r3", true, r#"{"n":3}"#)];
    send(
        &mut second,
        Send {
            seq: 3,
            last: true,
            ..Send::default()
        },
        &rows,
    )
    .expect("seq 3");
    assert_eq!(
        fx.rows("SELECT _record_id, n FROM contacts ORDER BY 1"),
        [["r0", "0"], ["r1", "1"], ["r2", "2"], ["r3", "3"]]
    );
    assert_eq!(
        fx.rows("SELECT stream, kind, applied_seq, complete FROM _flatsync_streams"),
        [["contacts-ev1", "contacts", "3", "1"]]
    );
    // Complete: even the next seq is ignored.
    let more = Send {
        seq: 4,
        ..Send::default()
    };
    send(&mut second, more, &[row("late", true, "{}")]).expect("skipped");
    assert_eq!(fx.rows("SELECT count(*) FROM contacts"), [["4"]]);
}

#[test]
fn columns_follow_schema_then_first_seen_and_grow_later() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    let first = Send {
        fields: r#"["email","name"]"#,
        ..Send::default()
    };
    send(
        &mut sink,
        first,
        &[row("r1", true, r#"{"extra":1,"email":"a@x.io"}"#)],
    )
    .expect("b0");
    let second = Send {
        seq: 1,
        ..Send::default()
    };
    send(
        &mut sink,
        second,
        &[row("r2", true, r#"{"email":"b@x.io","late":"z"}"#)],
    )
    .expect("b1");
    assert_eq!(
        fx.columns("contacts"),
        [
            "_record_id",
            "_event_id",
            "_valid",
            "_received_at",
            "email",
            "name",
            "extra",
            "late"
        ]
    );
    assert_eq!(
        fx.rows("SELECT _record_id, email, name, extra, late FROM contacts ORDER BY 1"),
        [
            ["r1", "a@x.io", "NULL", "1", "NULL"],
            ["r2", "b@x.io", "NULL", "NULL", "z"],
        ]
    );
}

#[test]
fn a_row_updates_only_the_columns_it_has() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    send(
        &mut sink,
        Send::default(),
        &[row("r1", true, r#"{"a":1,"b":2}"#)],
    )
    .expect("b0");
    let next = Send {
        seq: 1,
        ..Send::default()
    };
    send(&mut sink, next, &[row("r1", true, r#"{"a":3}"#)]).expect("b1");
    assert_eq!(fx.rows("SELECT a, b FROM contacts"), [["3", "2"]]);
}

#[test]
fn reserved_and_case_clashing_keys_are_fatal_and_roll_back() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    let rows = [
        row("r1", true, r#"{"ok":1}"#),
        row("r2", true, r#"{"_VALID":1}"#),
    ];
    let error = send(&mut sink, Send::default(), &rows).expect_err("reserved key");
    assert!(!error.is_retry());
    assert_eq!(
        error.message(),
        "table `contacts`: field key `_VALID` clashes with the sink's column of that name"
    );
    let schema = Send {
        fields: r#"["_record_id"]"#,
        ..Send::default()
    };
    let error = send(&mut sink, schema, &[]).expect_err("reserved schema key");
    assert!(
        error.message().contains("`_record_id`"),
        "{}",
        error.message()
    );

    let error = send(
        &mut sink,
        Send::default(),
        &[row("r1", true, r#"{"Email":1,"email":2}"#)],
    )
    .expect_err("case clash");
    assert_eq!(
        error.message(),
        "table `contacts`: field keys `email` and `Email` differ only in letter case, which \
         SQLite column names ignore"
    );

    // Nothing from the failed batches was committed, not even the table.
    assert_eq!(
        fx.rows("SELECT count(*) FROM sqlite_master WHERE name = 'contacts'"),
        [["0"]]
    );
    assert_eq!(fx.rows("SELECT count(*) FROM _flatsync_streams"), [["0"]]);
    send(
        &mut sink,
        Send::default(),
        &[row("r1", true, r#"{"ok":1}"#)],
    )
    .expect("seq 0 again");
    assert_eq!(
        fx.rows("SELECT _record_id, ok FROM contacts"),
        [["r1", "1"]]
    );
    assert_eq!(
        fx.columns("contacts"),
        ["_record_id", "_event_id", "_valid", "_received_at", "ok"]
    );
}

#[test]
fn gap_is_fatal() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    send(&mut sink, Send::default(), &[]).expect("seq 0");
    let error = send(
        &mut sink,
        Send {
            seq: 2,
            ..Send::default()
        },
        &[],
    )
    .expect_err("gap");
    assert!(!error.is_retry());
    assert_eq!(
        error.message(),
        "stream contacts-ev1: got batch seq 2 but the next expected is 1; batches are missing"
    );
}

#[test]
fn values_keep_their_types() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    let values = r#"{"s":"text \"q\" é","i":-42,"r":1.5,"e":1e3,"big":12345678901234567890,"t":true,"f":false,"n":null,"o":{"k": [1, "a b"]},"numstr":"007"}"#;
    send(&mut sink, Send::default(), &[row("r1", true, values)]).expect("written");
    assert_eq!(
        fx.rows(
            "SELECT typeof(s), s, typeof(i), i, typeof(r), r, typeof(e), e, typeof(big), \
             typeof(t), t, f, typeof(n), typeof(o), o, typeof(numstr), numstr FROM contacts"
        ),
        [[
            "text",
            "text \"q\" é",
            "integer",
            "-42",
            "real",
            "1.5",
            "real",
            "1000.0",
            "real",
            "integer",
            "1",
            "0",
            "null",
            "text",
            r#"{"k":[1,"a b"]}"#,
            "text",
            "007",
        ]]
    );
}

#[test]
fn empty_stream_creates_the_table_and_completes() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    let how = Send {
        kind: "my \"odd\" sheet",
        stream: "odd-ev1",
        fields: r#"["a b","c"]"#,
        last: true,
        ..Send::default()
    };
    send(&mut sink, how, &[]).expect("written");
    assert_eq!(
        fx.columns("my \"odd\" sheet"),
        [
            "_record_id",
            "_event_id",
            "_valid",
            "_received_at",
            "a b",
            "c"
        ]
    );
    assert_eq!(
        fx.rows("SELECT stream, applied_seq, complete FROM _flatsync_streams"),
        [["odd-ev1", "0", "1"]]
    );
}

#[test]
fn unusable_table_names_are_fatal() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    for kind in [
        "",
        "_flatsync_streams",
        "_FLATSYNC_x",
        "sqlite_master",
        "SQLite_x",
    ] {
        let error = send(
            &mut sink,
            Send {
                kind,
                ..Send::default()
            },
            &[],
        )
        .expect_err("refused");
        assert!(!error.is_retry(), "{kind}");
        assert!(
            error.message().starts_with("stream kind"),
            "{}",
            error.message()
        );
    }
}

#[test]
fn a_busy_database_asks_for_a_retry() {
    let fx = Fixture::new();
    let mut sink = create(&fx.path, json!({"busy_timeout_ms": 50})).expect("valid config");
    let other = fx.db();
    other.execute_batch("BEGIN IMMEDIATE").expect("lock taken");
    let error = send(&mut sink, Send::default(), &[row("r1", true, "{}")]).expect_err("busy");
    assert!(error.is_retry(), "{}", error.message());
    assert!(sink.check().expect_err("busy").is_retry());
    other.execute_batch("ROLLBACK").expect("lock released");
    sink.check().expect("writable");
    send(&mut sink, Send::default(), &[row("r1", true, "{}")]).expect("retried");
    assert_eq!(fx.rows("SELECT count(*) FROM contacts"), [["1"]]);
}

#[test]
fn database_is_in_wal_mode() {
    let fx = Fixture::new();
    let _sink = fx.sink();
    assert_eq!(fx.rows("PRAGMA journal_mode"), [["wal"]]);
    let _normal = create(&fx.path, json!({"synchronous": "normal"})).expect("valid config");
}

#[test]
fn config_errors_name_the_key() {
    let fx = Fixture::new();
    let message = |extra: serde_json::Value| {
        create(&fx.path, extra)
            .expect_err("invalid config")
            .message()
            .to_owned()
    };
    assert_eq!(
        message(json!({"synchronous": "off"})),
        "config key `synchronous` must be \"full\" or \"normal\", got \"off\""
    );
    assert!(message(json!({"busy_timeout_ms": -1})).starts_with("config key `busy_timeout_ms`:"));
    assert!(
        message(json!({"busy_timeout_ms": 4_000_000_000_u64}))
            .starts_with("config key `busy_timeout_ms`")
    );
    assert_eq!(
        message(json!({"deletions": "purge"})),
        "config key `deletions` must be \"delete\" or \"mark\", got \"purge\""
    );
    assert!(message(json!({"deletions": true})).starts_with("config key `deletions`:"));
    assert!(message(json!({"journal": "wal"})).starts_with("unknown config key `journal`"));
    let missing = SqliteSink::create(&CreateContext::new("db", Logger::discard()), json!({}))
        .expect_err("no path");
    assert_eq!(missing.message(), "config key `path` is required");
}

#[test]
fn an_update_stream_after_a_create_stream_upserts_the_record() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    let created = Send {
        fields: r#"["name","age"]"#,
        last: true,
        ..Send::default()
    };
    send(
        &mut sink,
        created,
        &[
            row("r1", true, r#"{"name":"Ada","age":36}"#),
            row("r2", true, r#"{"name":"Bob","age":40}"#),
        ],
    )
    .expect("records:created");
    let updated = Send {
        stream: "contacts-ev2",
        event_id: "ev2",
        fields: r#"["name","age"]"#,
        last: true,
        received_at_ms: 1_714_744_991_517,
        ..Send::default()
    };
    send(
        &mut sink,
        updated,
        &[row("r1", false, r#"{"name":"Ada L.","age":37}"#)],
    )
    .expect("records:updated");
    assert_eq!(
        fx.rows(
            "SELECT _record_id, _event_id, _valid, _received_at, name, age FROM contacts ORDER BY 1"
        ),
        [
            ["r1", "ev2", "0", "2024-05-03T14:03:11.517Z", "Ada L.", "37"],
            ["r2", "ev1", "1", "2024-05-02T14:03:11.517Z", "Bob", "40"],
        ]
    );
}

#[test]
fn deletions_remove_rows_exactly_once_across_a_restart() {
    let fx = Fixture::new();
    let mut first = fx.sink();
    let rows = [
        row("r1", true, r#"{"name":"Ada"}"#),
        row("r2", true, r#"{"name":"Bob"}"#),
        row("r3", true, r#"{"name":"Cy"}"#),
    ];
    send(
        &mut first,
        Send {
            last: true,
            ..Send::default()
        },
        &rows,
    )
    .expect("created");
    let batch0 = [deleted("r1"), deleted("unknown")];
    send(
        &mut first,
        deletion("ev2", "contacts-deleted-ev2", 0, false),
        &batch0,
    )
    .expect("deletions seq 0");
    drop(first);

    let mut second = fx.sink();
    // r1 is re-created by a later event before the deletion stream is re-delivered: the
    // re-delivered batch must not delete it again.
    send(
        &mut second,
        Send {
            stream: "contacts-ev3",
            event_id: "ev3",
            last: true,
            ..Send::default()
        },
        &[row("r1", true, r#"{"name":"Ada again"}"#)],
    )
    .expect("re-created");
    send(
        &mut second,
        deletion("ev2", "contacts-deleted-ev2", 0, false),
        &batch0,
    )
    .expect("skipped");
    send(
        &mut second,
        deletion("ev2", "contacts-deleted-ev2", 1, true),
        &[deleted("r2")],
    )
    .expect("deletions seq 1");
    assert_eq!(
        fx.rows("SELECT _record_id, _event_id, name FROM contacts ORDER BY 1"),
        [["r1", "ev3", "Ada again"], ["r3", "ev1", "Cy"]]
    );
    assert_eq!(
        fx.rows(
            "SELECT stream, kind, applied_seq, complete FROM _flatsync_streams \
             WHERE stream = 'contacts-deleted-ev2'"
        ),
        [["contacts-deleted-ev2", "contacts", "1", "1"]]
    );
    assert_eq!(
        fx.columns("contacts"),
        ["_record_id", "_event_id", "_valid", "_received_at", "name"],
        "delete mode adds no column"
    );
}

#[test]
fn mark_mode_keeps_the_rows_and_an_upsert_clears_the_mark() {
    let fx = Fixture::new();
    let mut first = fx.marking_sink();
    send(
        &mut first,
        Send {
            last: true,
            ..Send::default()
        },
        &[
            row("r1", true, r#"{"name":"Ada"}"#),
            row("r2", true, r#"{"name":"Bob"}"#),
        ],
    )
    .expect("created");
    assert_eq!(
        fx.columns("contacts"),
        [
            "_record_id",
            "_event_id",
            "_valid",
            "_received_at",
            "_deleted_at",
            "name"
        ]
    );
    send(
        &mut first,
        deletion("ev2", "contacts-deleted-ev2", 0, true),
        &[deleted("r1"), deleted("r2")],
    )
    .expect("deleted");
    assert_eq!(
        fx.rows("SELECT _record_id, name, _deleted_at FROM contacts ORDER BY 1"),
        [
            ["r1", "Ada", "2024-05-03T14:03:11.517Z"],
            ["r2", "Bob", "2024-05-03T14:03:11.517Z"],
        ]
    );
    drop(first);

    let mut second = fx.marking_sink();
    // r1 comes back: alive again, with its new values.
    send(
        &mut second,
        Send {
            stream: "contacts-ev3",
            event_id: "ev3",
            last: true,
            ..Send::default()
        },
        &[row("r1", true, r#"{"name":"Ada again"}"#)],
    )
    .expect("re-created");
    // The complete deletion stream delivered again after the restart changes nothing.
    send(
        &mut second,
        deletion("ev2", "contacts-deleted-ev2", 0, true),
        &[deleted("r1"), deleted("r2")],
    )
    .expect("skipped");
    assert_eq!(
        fx.rows("SELECT _record_id, _event_id, name, _deleted_at FROM contacts ORDER BY 1"),
        [
            ["r1", "ev3", "Ada again", "NULL"],
            ["r2", "ev1", "Bob", "2024-05-03T14:03:11.517Z"],
        ]
    );
}

#[test]
fn mark_mode_adds_deleted_at_to_an_existing_table() {
    let fx = Fixture::new();
    let mut before = fx.sink();
    send(
        &mut before,
        Send {
            last: true,
            ..Send::default()
        },
        &[
            row("r1", true, r#"{"name":"Ada"}"#),
            row("r2", true, r#"{"name":"Bob"}"#),
        ],
    )
    .expect("created in delete mode");
    drop(before);
    assert_eq!(
        fx.columns("contacts"),
        ["_record_id", "_event_id", "_valid", "_received_at", "name"]
    );

    let mut after = fx.marking_sink();
    send(
        &mut after,
        deletion("ev2", "contacts-deleted-ev2", 0, true),
        &[deleted("r2")],
    )
    .expect("marked");
    assert_eq!(
        fx.columns("contacts"),
        [
            "_record_id",
            "_event_id",
            "_valid",
            "_received_at",
            "name",
            "_deleted_at"
        ]
    );
    assert_eq!(
        fx.rows("SELECT _record_id, name, _deleted_at FROM contacts ORDER BY 1"),
        [
            ["r1", "Ada", "NULL"],
            ["r2", "Bob", "2024-05-03T14:03:11.517Z"]
        ]
    );

    // Back in delete mode, the column stays, and an upsert still clears a mark.
    drop(after);
    let mut delete_mode = fx.sink();
    send(
        &mut delete_mode,
        Send {
            stream: "contacts-ev3",
            event_id: "ev3",
            last: true,
            ..Send::default()
        },
        &[row("r2", true, r#"{"name":"Bob again"}"#)],
    )
    .expect("re-created");
    assert_eq!(
        fx.rows("SELECT _record_id, name, _deleted_at FROM contacts ORDER BY 1"),
        [["r1", "Ada", "NULL"], ["r2", "Bob again", "NULL"]]
    );
    let error = send(
        &mut delete_mode,
        Send {
            stream: "contacts-ev4",
            ..Send::default()
        },
        &[row("r3", true, r#"{"_Deleted_At":"x"}"#)],
    )
    .expect_err("reserved key");
    assert_eq!(
        error.message(),
        "table `contacts`: field key `_Deleted_At` clashes with the sink's column of that name"
    );
}

#[test]
fn deletions_of_a_kind_without_a_table_create_nothing() {
    let fx = Fixture::new();
    for (mut sink, stream) in [
        (fx.sink(), "contacts-deleted-ev2"),
        (fx.marking_sink(), "contacts-deleted-ev3"),
    ] {
        send(
            &mut sink,
            deletion("ev2", stream, 0, true),
            &[deleted("r1")],
        )
        .expect("nothing to do");
        assert_eq!(
            fx.rows("SELECT count(*) FROM sqlite_master WHERE name = 'contacts'"),
            [["0"]]
        );
        assert_eq!(
            fx.rows(&format!(
                "SELECT applied_seq, complete FROM _flatsync_streams WHERE stream = '{stream}'"
            )),
            [["0", "1"]]
        );
    }
}

#[test]
fn a_failed_deletion_batch_deletes_nothing_and_can_be_sent_again() {
    let fx = Fixture::new();
    let mut before = fx.sink();
    send(
        &mut before,
        Send {
            last: true,
            ..Send::default()
        },
        &[row("r1", true, "{}"), row("r2", true, "{}")],
    )
    .expect("created in delete mode");
    drop(before);

    let mut sink = fx.marking_sink();
    let bad = [deleted("r1"), "{\"id\":\"r2\",\"valid\":tru\n".to_owned()];
    let error = send(
        &mut sink,
        deletion("ev2", "contacts-deleted-ev2", 0, true),
        &bad,
    )
    .expect_err("malformed line 2");
    assert!(!error.is_retry());
    assert!(error.message().contains("line 2"), "{}", error.message());
    // Not even the column added on the way survived the rollback.
    assert_eq!(
        fx.columns("contacts"),
        ["_record_id", "_event_id", "_valid", "_received_at"]
    );
    assert_eq!(
        fx.rows("SELECT count(*) FROM _flatsync_streams WHERE stream = 'contacts-deleted-ev2'"),
        [["0"]]
    );

    send(
        &mut sink,
        deletion("ev2", "contacts-deleted-ev2", 0, true),
        &[deleted("r1"), deleted("r2")],
    )
    .expect("sent again");
    assert_eq!(
        fx.rows("SELECT _record_id, _deleted_at FROM contacts ORDER BY 1"),
        [
            ["r1", "2024-05-03T14:03:11.517Z"],
            ["r2", "2024-05-03T14:03:11.517Z"]
        ]
    );
}
