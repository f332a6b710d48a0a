use std::path::{Path, PathBuf};

use flatsync_plugin_sdk::{CreateContext, Held, Logger, Sink, SinkError, serde_json};
use flatsync_table_sink_contract::{Delivery, Message, TableSink, row, send, table_sink_scenarios};
use rusqlite::Connection;
use rusqlite::types::Value;
use serde_json::json;

use crate::SqliteSink;
use crate::checkpointer::LogLimits;

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

    fn db(&self) -> Connection {
        Connection::open(&self.path).expect("database opens")
    }
}

impl TableSink for Fixture {
    type Sink = SqliteSink;

    fn sink(&self) -> SqliteSink {
        create(&self.path, json!({})).expect("valid config")
    }

    fn marking_sink(&self) -> SqliteSink {
        create(&self.path, json!({"deletions": "mark"})).expect("valid config")
    }

    /// Every value of the query's rows as text, NULL as `None`.
    fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let db = self.db();
        let mut statement = db.prepare(sql).expect("valid SQL");
        let width = statement.column_count();
        statement
            .query_map([], |row| {
                (0..width)
                    .map(|index| {
                        Ok(match row.get(index)? {
                            Value::Null => None,
                            Value::Integer(v) => Some(v.to_string()),
                            Value::Real(v) => Some(format!("{v:?}")),
                            Value::Text(v) => Some(v),
                            Value::Blob(_) => Some("BLOB".to_owned()),
                        })
                    })
                    .collect()
            })
            .expect("query runs")
            .collect::<Result<_, _>>()
            .expect("rows read")
    }

    fn columns(&self, name: &str) -> Vec<String> {
        let db = self.db();
        let mut statement = db
            .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
            .expect("valid SQL");
        statement
            .query_map([name], |row| row.get(0))
            .expect("query runs")
            .collect::<Result<_, _>>()
            .expect("rows read")
    }

    fn shown_bool(&self, value: bool) -> &'static str {
        if value { "1" } else { "0" }
    }

    fn shown_time(&self, rfc3339: &str) -> String {
        rfc3339.to_owned()
    }

    fn unusable_kinds(&self) -> Vec<String> {
        vec!["sqlite_master".to_owned(), "SQLite_x".to_owned()]
    }

    fn refused_keys(&self) -> Vec<(String, Message)> {
        vec![(
            r#"{"Email":1,"email":2}"#.to_owned(),
            Message::Is(
                "table `contacts`: field keys `email` and `Email` differ only in letter case, \
                 which SQLite column names ignore"
                    .to_owned(),
            ),
        )]
    }
}

table_sink_scenarios!(Fixture::new());

fn create(path: &Path, extra: serde_json::Value) -> Result<SqliteSink, SinkError> {
    let mut config = json!({ "path": path });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    SqliteSink::create(&CreateContext::new("db", Logger::discard()), config)
}

#[test]
fn values_keep_their_types() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    let values = r#"{"s":"text \"q\" é","i":-42,"r":1.5,"e":1e3,"big":12345678901234567890,"t":true,"f":false,"n":null,"o":{"k": [1, "a b"]},"numstr":"007"}"#;
    send(&mut sink, Delivery::default(), &[row("r1", true, values)]).expect("written");
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
fn a_busy_database_asks_for_a_retry() {
    let fx = Fixture::new();
    let mut sink = create(&fx.path, json!({"busy_timeout_ms": 50})).expect("valid config");
    let other = fx.db();
    other.execute_batch("BEGIN IMMEDIATE").expect("lock taken");
    let error = send(&mut sink, Delivery::default(), &[row("r1", true, "{}")]).expect_err("busy");
    assert!(error.is_retry(), "{}", error.message());
    assert!(sink.check().expect_err("busy").is_retry());
    other.execute_batch("ROLLBACK").expect("lock released");
    sink.check().expect("writable");
    send(&mut sink, Delivery::default(), &[row("r1", true, "{}")]).expect("retried");
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
    for limit in [0, 65537] {
        assert_eq!(
            message(json!({"wal_limit_mib": limit})),
            format!("config key `wal_limit_mib` must be between 1 and 65536, got {limit}")
        );
    }
    assert!(message(json!({"journal": "wal"})).starts_with("unknown config key `journal`"));
    let missing = SqliteSink::create(&CreateContext::new("db", Logger::discard()), json!({}))
        .expect_err("no path");
    assert_eq!(missing.message(), "config key `path` is required");
}

/// Every value of table `contacts`, typed, ordered by record id.
fn dump(fx: &Fixture) -> Vec<Vec<Value>> {
    let db = fx.db();
    let mut statement = db
        .prepare("SELECT * FROM contacts ORDER BY _record_id")
        .expect("valid SQL");
    let width = statement.column_count();
    statement
        .query_map([], |row| (0..width).map(|index| row.get(index)).collect())
        .expect("query runs")
        .collect::<Result<_, _>>()
        .expect("rows read")
}

/// Rows of many shapes (key sets, key orders, repeated keys, widths past one statement's
/// parameters), with records repeated within and across runs of one shape.
fn mixed_rows() -> Vec<String> {
    const VALUES: [&str; 8] = [
        "1",
        "-2.5",
        "null",
        "true",
        r#""plain""#,
        r#""esc \"q\" \u00e9 \ud83d\ude00""#,
        r#"{"k": [1, "a b"]}"#,
        "12345678901234567890",
    ];
    (0..600_usize)
        .map(|index| {
            let value = |offset: usize| VALUES[(index + offset) % VALUES.len()];
            let values = match index / 7 % 6 {
                0 | 1 => format!(r#"{{"a":{},"b":{}}}"#, value(0), value(1)),
                2 => format!(r#"{{"b":{},"a":{}}}"#, value(2), value(3)),
                3 => format!(r#"{{"a":{},"a":{},"c":{}}}"#, value(4), value(5), value(6)),
                4 => {
                    let wide: Vec<String> = (0..60)
                        .map(|key| format!(r#""w{key}":{}"#, value(key)))
                        .collect();
                    format!("{{{}}}", wide.join(","))
                }
                _ => "{}".to_owned(),
            };
            row(&format!("r{:03}", index % 101), index % 3 != 0, &values)
        })
        .collect()
}

#[test]
fn multi_row_statements_write_what_one_row_statements_do() {
    let rows = mixed_rows();
    let together = Fixture::new();
    send(&mut together.sink(), Delivery::default(), &rows).expect("written");
    let apart = Fixture::new();
    let mut sink = apart.sink();
    for (seq, line) in (0..).zip(&rows) {
        let how = Delivery {
            seq,
            ..Delivery::default()
        };
        send(&mut sink, how, std::slice::from_ref(line)).expect("written");
    }
    let expected = dump(&apart);
    assert_eq!(expected.len(), 101);
    assert_eq!(dump(&together), expected);
}

#[test]
fn flush_syncs_in_either_mode() {
    for synchronous in ["full", "normal"] {
        let fx = Fixture::new();
        let mut sink = create(&fx.path, json!({ "synchronous": synchronous })).expect("config");
        sink.flush().expect("nothing written yet");
        send(&mut sink, Delivery::default(), &[row("r1", true, "{}")]).expect("written");
        sink.flush().expect("flushed");
        sink.flush().expect("flushed again");
        assert_eq!(
            fx.rows("PRAGMA synchronous"),
            [["2"]],
            "a fresh connection's default"
        );
        assert_eq!(fx.rows("SELECT count(*) FROM contacts"), [["1"]]);
    }
}

#[test]
fn held_reports_the_committed_position_and_rows_of_a_stream_in_progress() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    let batch = |seq, last| Delivery {
        stream: "contacts-ev1",
        kind: "contacts",
        seq,
        last,
        ..Delivery::default()
    };
    send(
        &mut sink,
        batch(0, false),
        &[row("r1", true, r#"{"a":1}"#), row("r2", true, r#"{"a":2}"#)],
    )
    .expect("seq 0");
    send(&mut sink, batch(1, false), &[row("r3", true, r#"{"a":3}"#)]).expect("seq 1");
    // No flush: a crash of the daemon leaves the commits in place all the same.
    drop(sink);
    let mut sink = fx.sink();
    assert_eq!(
        sink.held("contacts-ev1").expect("held answers"),
        Some(Held { seq: 1, rows: 3 })
    );
    assert_eq!(sink.held("other").expect("held answers"), None, "unknown");
    send(&mut sink, batch(2, true), &[row("r4", true, r#"{"a":4}"#)]).expect("seq 2");
    assert_eq!(
        sink.held("contacts-ev1").expect("held answers"),
        None,
        "a complete stream has nothing to tell"
    );
}

#[test]
fn a_bookkeeping_table_without_rows_gains_the_column_and_its_streams_tell_nothing() {
    let fx = Fixture::new();
    std::fs::create_dir_all(fx.path.parent().expect("a parent")).expect("mkdir");
    // As an older sink left it, with a stream in progress.
    fx.db()
        .execute_batch(
            "CREATE TABLE _flatsync_streams (
                 stream TEXT PRIMARY KEY,
                 kind TEXT NOT NULL,
                 applied_seq INTEGER NOT NULL,
                 complete INTEGER NOT NULL,
                 updated_at TEXT NOT NULL
             );
             INSERT INTO _flatsync_streams VALUES ('old', 'contacts', 3, 0, 'then');",
        )
        .expect("old schema");
    let mut sink = fx.sink();
    assert!(
        fx.columns("_flatsync_streams")
            .contains(&"stream_rows".to_owned())
    );
    assert_eq!(
        sink.held("old").expect("held answers"),
        None,
        "rows unknown"
    );
    let batch = |seq| Delivery {
        stream: "old",
        kind: "contacts",
        seq,
        ..Delivery::default()
    };
    send(&mut sink, batch(4), &[row("r1", true, r#"{"a":1}"#)]).expect("seq 4");
    assert_eq!(
        sink.held("old").expect("held answers"),
        None,
        "still unknown"
    );
    // A second instance opening the migrated database changes nothing.
    drop(fx.sink());
}

/// A log limit the tests below pass with a few thousand pages: 4096 pages of 4 KiB, the
/// thread starting at 1024.
const SMALL_LOG_MIB: u32 = 16;

/// A sink whose write-ahead log may grow to [`SMALL_LOG_MIB`].
fn small_log_sink(fx: &Fixture) -> SqliteSink {
    create(&fx.path, json!({"wal_limit_mib": SMALL_LOG_MIB})).expect("valid config")
}

/// Batches of `rows` rows, each about one database page of text, numbered from `first`.
fn page_rows(first: usize, rows: usize) -> Vec<String> {
    let text = "x".repeat(3000);
    (first..first + rows)
        .map(|index| {
            row(
                &format!("r{index}"),
                true,
                &format!(r#"{{"note":"{text}"}}"#),
            )
        })
        .collect()
}

/// Writes `batches` batches of 50 page-sized rows into stream `contacts-ev1` from `seq` 0.
fn write_pages(sink: &mut SqliteSink, batches: u64) {
    for seq in 0..batches {
        let first = usize::try_from(seq).expect("small") * 50;
        let how = Delivery {
            seq,
            last: seq + 1 == batches,
            ..Delivery::default()
        };
        send(sink, how, &page_rows(first, 50)).expect("written");
    }
}

#[test]
fn the_write_ahead_log_stays_bounded_while_batches_keep_coming() {
    let fx = Fixture::new();
    let wal = fx.path.with_extension("db-wal");
    let mut sink = small_log_sink(&fx);
    // 12,000 pages of rows, about three times the log's limit.
    write_pages(&mut sink, 240);
    let frame = 24 + 4096;
    let limit = LogLimits::new(SMALL_LOG_MIB, 4096).limit();
    let bound = (u64::try_from(limit).expect("positive") + 2 * 60) * frame + 32;
    let size = std::fs::metadata(&wal).expect("log exists").len();
    assert!(
        size <= bound,
        "the log grew to {size} bytes, past the limit plus a batch ({bound})"
    );
    assert_eq!(fx.rows("SELECT count(*) FROM contacts"), [["12000"]]);
    drop(sink);
    assert!(
        !wal.exists(),
        "the last connection to close copies the log and removes it"
    );
    assert_eq!(fx.rows("SELECT count(*) FROM contacts"), [["12000"]]);
}

#[test]
fn the_checkpoint_thread_copies_the_log_into_the_database_before_the_writer_must() {
    let fx = Fixture::new();
    let mut sink = small_log_sink(&fx);
    // About 2,600 pages: past the thread's start (1024), short of the writer's limit (4096).
    write_pages(&mut sink, 50);
    sink.checkpointer.wait_idle();
    let database = std::fs::metadata(&fx.path).expect("database exists").len();
    assert!(
        database >= 1000 * 4096,
        "the database file holds {database} bytes: the thread copied nothing of the log"
    );
}

#[test]
fn a_reader_on_an_old_snapshot_keeps_the_log_long_but_fails_no_batch() {
    let fx = Fixture::new();
    let config = json!({"busy_timeout_ms": 50, "wal_limit_mib": SMALL_LOG_MIB});
    let mut sink = create(&fx.path, config).expect("valid config");
    send(&mut sink, Delivery::default(), &[row("r0", true, "{}")]).expect("written");
    let reader = fx.db();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM contacts;")
        .expect("snapshot held");
    // Past the limit the writer checkpoints before every batch, and the reader keeps the log
    // from restarting: a log that cannot restart yet is no reason to fail a batch.
    let stream = "contacts-ev2";
    for seq in 0..120 {
        let how = Delivery {
            stream,
            seq,
            ..Delivery::default()
        };
        let first = usize::try_from(seq).expect("small") * 50 + 1;
        send(&mut sink, how, &page_rows(first, 50)).expect("written past the reader");
    }
    let count: i64 = reader
        .query_row("SELECT count(*) FROM contacts", [], |row| row.get(0))
        .expect("read");
    assert_eq!(count, 1, "the reader's snapshot is the one it began with");
    reader.execute_batch("COMMIT").expect("snapshot released");
    assert_eq!(fx.rows("SELECT count(*) FROM contacts"), [["6001"]]);
}
