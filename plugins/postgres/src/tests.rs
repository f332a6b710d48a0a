use std::ffi::OsString;

use flatsync_plugin_sdk::{Batch, BatchParts, CreateContext, Logger, Sink, SinkError, serde_json};
use flatsync_test_kit::postgres::TestDatabase;
use postgres::SimpleQueryMessage;
use serde_json::json;

use crate::PostgresSink;
use crate::config::{Config, redact_url};

struct Fixture {
    db: TestDatabase,
}

impl Fixture {
    fn new() -> Self {
        Self {
            db: TestDatabase::create("pg_sink"),
        }
    }

    fn create(&self, extra: serde_json::Value) -> Result<PostgresSink, SinkError> {
        let mut config = json!({ "url": self.db.url() });
        if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
            config.extend(extra.clone());
        }
        PostgresSink::create(&CreateContext::new("db", Logger::discard()), config)
    }

    fn sink(&self) -> PostgresSink {
        self.create(json!({})).expect("valid config")
    }

    /// A sink with `deletions = "mark"`.
    fn marking_sink(&self) -> PostgresSink {
        self.create(json!({"deletions": "mark"}))
            .expect("valid config")
    }

    /// Every value of the query's rows as PostgreSQL prints it (times in UTC), NULL as "NULL".
    fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        let mut client = self.db.client();
        let messages = client
            .simple_query(&format!("SET TimeZone = 'UTC'; {sql}"))
            .expect("query runs");
        messages
            .iter()
            .filter_map(|message| match message {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|index| row.get(index).unwrap_or("NULL").to_owned())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    fn columns(&self, table: &str) -> Vec<String> {
        self.rows(&format!(
            "SELECT column_name FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = '{table}' ORDER BY ordinal_position"
        ))
        .into_iter()
        .map(|mut row| row.remove(0))
        .collect()
    }
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

fn send(sink: &mut PostgresSink, how: Send<'_>, rows: &[String]) -> Result<(), SinkError> {
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

const RECEIVED: &str = "2024-05-02 14:03:11.517+00";
const DELETED: &str = "2024-05-03 14:03:11.517+00";

#[test]
fn rows_land_with_the_sinks_columns_and_every_value_as_text() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    let values = r#"{"s":"text \"q\" é\ttab\\back\nline","i":-42,"r":1.50,"e":1e3,"big":12345678901234567890,"t":true,"f":false,"n":null,"o":{"k": [1, "a b"]},"numstr":"007"}"#;
    send(
        &mut sink,
        Send {
            fields: r#"["s","i"]"#,
            ..Send::default()
        },
        &[row("r1", true, values)],
    )
    .expect("written");
    assert_eq!(
        fx.rows(
            "SELECT _record_id, _event_id, _valid, _received_at, s, i, r, e, big, t, f, n, o, \
             numstr FROM contacts"
        ),
        [[
            "r1",
            "ev1",
            "t",
            RECEIVED,
            "text \"q\" é\ttab\\back\nline",
            "-42",
            "1.50",
            "1e3",
            "12345678901234567890",
            "true",
            "false",
            "NULL",
            r#"{"k":[1,"a b"]}"#,
            "007",
        ]]
    );
    assert_eq!(
        fx.rows(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
             WHERE table_name = 'contacts' ORDER BY ordinal_position LIMIT 6"
        ),
        [
            ["_record_id", "text", "NO"],
            ["_event_id", "text", "NO"],
            ["_valid", "boolean", "NO"],
            ["_received_at", "timestamp with time zone", "NO"],
            ["s", "text", "YES"],
            ["i", "text", "YES"],
        ]
    );
    assert_eq!(
        fx.rows(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a \
             ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = 'contacts'::regclass AND i.indisprimary"
        ),
        [["_record_id"]]
    );
    // The JSON text casts back to its type.
    assert_eq!(
        fx.rows("SELECT o::jsonb -> 'k' ->> 1, i::int + 1 FROM contacts"),
        [["a b", "-41"]]
    );
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
        event_id: "ev2",
        received_at_ms: 1_714_744_991_517,
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
            "SELECT _record_id, _event_id, _valid, _received_at, name FROM contacts ORDER BY 1"
        ),
        [
            ["r1", "ev2", "f", DELETED, "Ada L."],
            ["r2", "ev1", "f", RECEIVED, "Bob"],
        ]
    );
}

#[test]
fn applied_seq_survives_reopening_and_a_complete_stream_takes_nothing() {
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
    second.check().expect("healthy");
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
        [["contacts-ev1", "contacts", "3", "t"]]
    );
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
        &[row(
            "r2",
            true,
            r#"{"email":"b@x.io","late":"z","Email":"upper"}"#,
        )],
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
            "late",
            "Email"
        ]
    );
    assert_eq!(
        fx.rows(r#"SELECT _record_id, email, name, extra, late, "Email" FROM contacts ORDER BY 1"#),
        [
            ["r1", "a@x.io", "NULL", "1", "NULL", "NULL"],
            ["r2", "b@x.io", "NULL", "NULL", "z", "upper"],
        ]
    );
}

#[test]
fn a_row_updates_only_the_columns_it_has_and_repeated_ids_apply_in_order() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    send(
        &mut sink,
        Send::default(),
        &[row("r1", true, r#"{"a":1,"b":2}"#)],
    )
    .expect("b0");
    // Three shapes, and r1 twice: the second line's `a` wins, `c` of the first line stays.
    let rows = [
        row("r1", true, r#"{"a":3,"c":"x"}"#),
        row("r2", true, r#"{"b":"only b"}"#),
        row("r1", false, r#"{"a":4}"#),
        row("r3", true, r#"{"a":5,"a":6}"#),
    ];
    send(
        &mut sink,
        Send {
            seq: 1,
            ..Send::default()
        },
        &rows,
    )
    .expect("b1");
    assert_eq!(
        fx.rows("SELECT _record_id, _valid, a, b, c FROM contacts ORDER BY 1"),
        [
            ["r1", "f", "4", "2", "x"],
            ["r2", "t", "NULL", "only b", "NULL"],
            ["r3", "t", "6", "NULL", "NULL"],
        ]
    );
}

#[test]
fn reserved_and_overlong_keys_are_fatal_and_roll_back() {
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
    let long = "k".repeat(64);
    let error = send(
        &mut sink,
        Send::default(),
        &[row("r1", true, &format!(r#"{{"{long}":1}}"#))],
    )
    .expect_err("too long");
    assert!(!error.is_retry());
    assert!(
        error
            .message()
            .starts_with("table `contacts`: field key cannot be a column name"),
        "{}",
        error.message()
    );
    let error = send(
        &mut sink,
        Send::default(),
        &[row("r1", true, r#"{"nul":"a\u0000b"}"#)],
    )
    .expect_err("NUL");
    assert!(!error.is_retry());
    assert!(
        error
            .message()
            .starts_with("table `contacts`, column `nul`, record `r1`:"),
        "{}",
        error.message()
    );

    // Nothing from the failed batches was committed, not even the table.
    assert_eq!(fx.rows("SELECT to_regclass('contacts') IS NULL"), [["t"]]);
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
    let error = send(
        &mut sink,
        Send {
            stream: "contacts-ev9",
            seq: 1,
            ..Send::default()
        },
        &[],
    )
    .expect_err("a new stream starts at 0");
    assert!(!error.is_retry());
    assert_eq!(
        fx.rows("SELECT stream, applied_seq FROM _flatsync_streams"),
        [["contacts-ev1", "0"]]
    );
}

#[test]
fn empty_stream_creates_the_table_in_the_configured_schema_and_completes() {
    let fx = Fixture::new();
    let mut sink = fx
        .create(json!({"schema": "Flat \"Sync\""}))
        .expect("valid config");
    let how = Send {
        kind: "my \"odd\" sheet",
        stream: "odd-ev1",
        fields: r#"["a b","c"]"#,
        last: true,
        ..Send::default()
    };
    send(&mut sink, how, &[]).expect("written");
    assert_eq!(
        fx.rows(
            "SELECT table_name, column_name FROM information_schema.columns \
             WHERE table_schema = 'Flat \"Sync\"' ORDER BY table_name, ordinal_position"
        ),
        [
            ["_flatsync_streams", "stream"],
            ["_flatsync_streams", "kind"],
            ["_flatsync_streams", "applied_seq"],
            ["_flatsync_streams", "complete"],
            ["_flatsync_streams", "updated_at"],
            ["my \"odd\" sheet", "_record_id"],
            ["my \"odd\" sheet", "_event_id"],
            ["my \"odd\" sheet", "_valid"],
            ["my \"odd\" sheet", "_received_at"],
            ["my \"odd\" sheet", "a b"],
            ["my \"odd\" sheet", "c"],
        ]
    );
    assert_eq!(
        fx.rows(
            "SELECT stream, applied_seq, complete FROM \"Flat \"\"Sync\"\"\"._flatsync_streams"
        ),
        [["odd-ev1", "0", "t"]]
    );
    assert_eq!(
        fx.rows("SELECT to_regclass('_flatsync_streams')"),
        [["NULL"]]
    );
}

#[test]
fn unusable_table_names_are_fatal() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    let long = "k".repeat(64);
    for kind in ["", "_flatsync_streams", "_FLATSYNC_x", &long] {
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
fn a_table_not_made_by_the_sink_is_fatal() {
    let fx = Fixture::new();
    fx.rows("CREATE TABLE contacts (id int)");
    let mut sink = fx.sink();
    let error = send(&mut sink, Send::default(), &[row("r1", true, "{}")]).expect_err("foreign");
    assert!(!error.is_retry());
    assert_eq!(
        error.message(),
        "table `contacts` in schema `public` exists without the sink's column `_record_id`; it \
         was not created by this sink"
    );
}

#[test]
fn two_daemons_delivering_one_stream_apply_each_batch_once() {
    const BATCHES: u64 = 30;
    const ROWS: u64 = 50;
    let fx = Fixture::new();
    let batch = |seq: u64| {
        let rows: Vec<String> = (0..ROWS)
            .map(|n| {
                row(
                    &format!("r{seq}-{n}"),
                    true,
                    &format!(r#"{{"seq":{seq},"n":{n}}}"#),
                )
            })
            .collect();
        let how = Send {
            seq,
            last: seq + 1 == BATCHES,
            fields: r#"["seq","n"]"#,
            ..Send::default()
        };
        (how, rows)
    };
    let (how, rows) = batch(0);
    send(&mut fx.sink(), how, &rows).expect("seq 0 creates the table");
    // Upserts hide a batch applied twice in the table itself: a trigger counts every write.
    fx.rows(
        "CREATE TABLE writes (n int);
         CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN INSERT INTO writes VALUES (1); RETURN NULL; END $$;
         CREATE TRIGGER counted AFTER INSERT OR UPDATE ON contacts
             FOR EACH ROW EXECUTE FUNCTION count_write();",
    );

    let mut sinks = [fx.sink(), fx.sink()];
    std::thread::scope(|scope| {
        for sink in &mut sinks {
            scope.spawn(move || {
                // Both deliver the whole stream, seq 0 included, as a daemon that slept
                // through the other's delivery would.
                for seq in 0..BATCHES {
                    let (how, rows) = batch(seq);
                    if let Err(error) = send(sink, how, &rows) {
                        // A deadlock or lost serialization is a RETRY: the host sends the
                        // batch again, and so does this test.
                        assert!(error.is_retry(), "{}", error.message());
                        let (how, rows) = batch(seq);
                        send(sink, how, &rows).expect("the retry passes");
                    }
                }
            });
        }
    });
    assert_eq!(
        fx.rows("SELECT count(*) FROM writes"),
        [[((BATCHES - 1) * ROWS).to_string()]],
        "every batch after seq 0 written once"
    );
    assert_eq!(
        fx.rows("SELECT count(*), count(DISTINCT _record_id), sum(seq::int) FROM contacts"),
        [[
            (BATCHES * ROWS).to_string(),
            (BATCHES * ROWS).to_string(),
            (ROWS * BATCHES * (BATCHES - 1) / 2).to_string(),
        ]]
    );
    assert_eq!(
        fx.rows("SELECT stream, applied_seq, complete FROM _flatsync_streams"),
        [["contacts-ev1", (BATCHES - 1).to_string().as_str(), "t"]]
    );
}

#[test]
fn two_daemons_adding_the_same_columns_to_one_table_both_succeed() {
    let fx = Fixture::new();
    let mut sinks = [fx.sink(), fx.sink()];
    std::thread::scope(|scope| {
        for (index, sink) in sinks.iter_mut().enumerate() {
            scope.spawn(move || {
                for seq in 0..20_u64 {
                    let stream = format!("contacts-ev{index}");
                    let values = format!(r#"{{"k{seq}":{seq},"k{}":1}}"#, seq + 1);
                    let how = || Send {
                        stream: &stream,
                        seq,
                        ..Send::default()
                    };
                    let rows = [row(&format!("r{index}-{seq}"), true, &values)];
                    if let Err(error) = send(sink, how(), &rows) {
                        assert!(error.is_retry(), "{}", error.message());
                        send(sink, how(), &rows).expect("the retry passes");
                    }
                }
            });
        }
    });
    assert_eq!(fx.rows("SELECT count(*) FROM contacts"), [["40"]]);
    assert_eq!(fx.columns("contacts").len(), 4 + 21);
}

#[test]
fn a_lost_connection_is_a_retry_and_the_next_call_reconnects() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    send(&mut sink, Send::default(), &[row("r1", true, "{}")]).expect("seq 0");
    let terminated = fx.rows(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{}' AND application_name = 'flatsync'",
        fx.db.name()
    ));
    assert_eq!(terminated, [["t"]]);
    let next = Send {
        seq: 1,
        ..Send::default()
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        let how = Send { ..next };
        match send(&mut sink, how, &[row("r2", true, "{}")]) {
            Ok(()) => break,
            Err(error) => {
                assert!(error.is_retry(), "{}", error.message());
                assert!(attempts < 3, "{}", error.message());
            }
        }
    }
    assert_eq!(
        fx.rows("SELECT _record_id FROM contacts ORDER BY 1"),
        [["r1"], ["r2"]]
    );
}

#[test]
fn a_stream_locked_elsewhere_past_the_lock_timeout_is_a_retry_naming_the_server() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    send(&mut sink, Send::default(), &[row("r1", true, "{}")]).expect("seq 0");
    let url = format!("{}?options=-c%20lock_timeout%3D200", fx.db.url());
    let mut impatient = PostgresSink::create(
        &CreateContext::new("db", Logger::discard()),
        json!({ "url": url }),
    )
    .expect("valid config");
    let mut other = fx.db.client();
    let mut holder = other.transaction().expect("begins");
    holder
        .execute(
            "SELECT 1 FROM _flatsync_streams WHERE stream = 'contacts-ev1' FOR UPDATE",
            &[],
        )
        .expect("locked");
    let next = Send {
        seq: 1,
        ..Send::default()
    };
    let error = send(&mut impatient, Send { ..next }, &[row("r2", true, "{}")])
        .expect_err("the row is locked");
    assert!(error.is_retry(), "{}", error.message());
    assert!(
        error.message().starts_with(&format!("{url}: ")) && error.message().contains("55P03"),
        "{}",
        error.message()
    );
    holder.rollback().expect("released");
    send(&mut impatient, next, &[row("r2", true, "{}")]).expect("the retry passes");
    assert_eq!(
        fx.rows("SELECT _record_id FROM contacts ORDER BY 1"),
        [["r1"], ["r2"]]
    );
}

#[test]
fn an_unreachable_server_is_a_retry() {
    let error = PostgresSink::create(
        &CreateContext::new("db", Logger::discard()),
        json!({"url": "postgres://postgres@127.0.0.1:9/db", "connect_timeout_ms": 2000}),
    )
    .expect_err("nothing listens on port 9");
    assert!(error.is_retry(), "{}", error.message());
    assert!(
        error
            .message()
            .starts_with("cannot connect to postgres://postgres@127.0.0.1:9/db: "),
        "{}",
        error.message()
    );
}

fn create_with_env(
    config: serde_json::Value,
    env: &[(&str, &str)],
) -> Result<PostgresSink, SinkError> {
    // `create` reads the process environment, which tests must not change; this is `create`
    // with `env` instead.
    let lookup = |name: &str| {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| OsString::from(value))
    };
    let config = Config::parse(config, &lookup)?;
    PostgresSink::open(config, Logger::discard())
}

#[test]
fn an_unknown_role_or_database_is_fatal_and_never_shows_the_password() {
    let fx = Fixture::new();
    let url = fx.db.url();
    let (_, after_user) = url.split_once('@').expect("the URL has a user");
    let role_url = format!("postgres://nobody_here:s3cret-pw@{after_user}");
    let error = create_with_env(json!({"url_env": "PG_URL"}), &[("PG_URL", &role_url)])
        .expect_err("no such role");
    assert!(!error.is_retry(), "{}", error.message());
    assert!(error.message().contains("28000"), "{}", error.message());
    assert!(
        error.message().contains("postgres://nobody_here:***@"),
        "{}",
        error.message()
    );
    assert!(!error.message().contains("s3cret"), "{}", error.message());

    let base = url.rsplit_once('/').expect("a path").0;
    let db_url = format!("{base}/no_such_database_here?password=s3cret-pw");
    let db_url = db_url.replacen("postgres://", "postgresql://", 1);
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("pg-url"), format!("{db_url}\n")).expect("written");
    let error = create_with_env(
        json!({"url_credential": "pg-url"}),
        &[("CREDENTIALS_DIRECTORY", dir.path().to_str().expect("UTF-8"))],
    )
    .expect_err("no such database");
    assert!(!error.is_retry(), "{}", error.message());
    assert!(error.message().contains("3D000"), "{}", error.message());
    assert!(
        error.message().contains("no_such_database_here"),
        "{}",
        error.message()
    );
    assert!(
        error.message().contains("password=***"),
        "{}",
        error.message()
    );
    assert!(!error.message().contains("s3cret"), "{}", error.message());

    // The same URL from `url_file` works as well as from the other keys.
    std::fs::write(dir.path().join("good"), url).expect("written");
    create_with_env(json!({"url_file": dir.path().join("good")}), &[]).expect("connects");
}

/// A login role without privileges, dropped at the end of the test.
struct Role<'f> {
    fx: &'f Fixture,
    name: String,
}

impl Drop for Role<'_> {
    fn drop(&mut self) {
        self.fx.rows(&format!("DROP ROLE IF EXISTS {}", self.name));
    }
}

#[test]
fn a_user_who_may_not_create_tables_is_fatal_at_start_up() {
    let fx = Fixture::new();
    let role = Role {
        name: format!("reader_{}", fx.db.name()),
        fx: &fx,
    };
    fx.rows(&format!(
        "CREATE ROLE {0} LOGIN; REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        role.name
    ));
    let url = fx
        .db
        .url()
        .replacen("postgres@", &format!("{}@", role.name), 1);
    let create = |schema: &str| {
        PostgresSink::create(
            &CreateContext::new("db", Logger::discard()),
            json!({"url": url, "schema": schema}),
        )
        .expect_err("no privilege")
    };
    let error = create("public");
    assert!(!error.is_retry(), "{}", error.message());
    assert_eq!(
        error.message(),
        format!(
            "schema `public`: user `{0}` may not create tables in it (42501); grant it with \
             GRANT CREATE ON SCHEMA \"public\" TO \"{0}\"",
            role.name
        )
    );
    let error = create("other");
    assert!(!error.is_retry(), "{}", error.message());
    assert!(
        error.message().starts_with(&format!(
            "schema `other`: cannot create it as user `{}`: ",
            role.name
        )),
        "{}",
        error.message()
    );
    assert!(error.message().contains("42501"), "{}", error.message());
    drop(role);
}

#[test]
fn config_errors_name_the_key_and_never_the_password() {
    let message = |config: serde_json::Value| {
        Config::parse(config, &|_| None)
            .expect_err("invalid config")
            .message()
            .to_owned()
    };
    let inline = message(json!({"url": "postgres://u:hunter2@127.0.0.1/db"}));
    assert!(
        inline.starts_with("config key `url` holds a password;"),
        "{inline}"
    );
    assert!(
        inline.contains("`url_env`") && !inline.contains("hunter2"),
        "{inline}"
    );
    let query = message(json!({"url": "postgres://u@127.0.0.1/db?password=hunter2"}));
    assert!(
        query.starts_with("config key `url` holds a password;"),
        "{query}"
    );
    assert_eq!(
        message(json!({})),
        "set one of the config keys `url`, `url_env`, `url_file` or `url_credential` to say \
         where the PostgreSQL server is"
    );
    assert_eq!(
        message(json!({"url": "postgres://u@h/db", "url_env": "X"})),
        "config keys `url` and `url_env` are all set; set exactly one of `url`, `url_env`, \
         `url_file` or `url_credential`"
    );
    assert_eq!(
        message(json!({"url_env": "postgres://u:hunter2@h/db"})),
        "config key `url_env` holds a URL itself; it takes the name of where the URL is"
    );
    assert_eq!(
        message(json!({"url_env": "PG_URL"})),
        "config key `url_env` (variable PG_URL): the variable is not set"
    );
    assert_eq!(
        message(json!({"url_credential": "pg"})),
        "config key `url_credential` (pg): $CREDENTIALS_DIRECTORY is not set (give the \
         service the credential with LoadCredential= in its systemd unit)"
    );
    assert_eq!(
        message(json!({"url": "host=h user=u"})),
        "config key `url`: the URL must start with postgres:// or postgresql://"
    );
    for mode in ["require", "verify-ca", "verify-full"] {
        let refused = message(json!({"url": format!("postgres://u@h/db?sslmode={mode}")}));
        assert!(
            refused.starts_with(&format!(
                "config key `url`: sslmode={mode} is not supported yet"
            )),
            "{refused}"
        );
    }
    assert!(
        message(json!({"url": "postgres://u@h:notaport/db"}))
            .starts_with("config key `url`: postgres://u@h:notaport/db is not a valid URL"),
    );
    assert_eq!(
        message(json!({"url": "postgres://u@h/db", "deletions": "purge"})),
        "config key `deletions` must be \"delete\" or \"mark\", got \"purge\""
    );
    assert_eq!(
        message(json!({"url": "postgres://u@h/db", "schema": ""})),
        "config key `schema` must not be empty"
    );
    assert_eq!(
        message(json!({"url": "postgres://u@h/db", "connect_timeout_ms": 0})),
        "config key `connect_timeout_ms` must be at least 1"
    );
    assert!(
        message(json!({"url": "postgres://u@h/db", "path": "x"}))
            .starts_with("unknown config key `path`")
    );

    let parsed = Config::parse(json!({"url_env": "PG"}), &|_| {
        Some(OsString::from(
            "  postgresql://u:pw@h:5433/db?sslmode=disable\n",
        ))
    })
    .expect("valid");
    assert_eq!(
        parsed.shown_url,
        "postgresql://u:***@h:5433/db?sslmode=disable"
    );
    assert_eq!(parsed.schema, "public");
    assert_eq!(
        parsed.connect.get_connect_timeout(),
        Some(&std::time::Duration::from_secs(5))
    );
    assert_eq!(parsed.connect.get_application_name(), Some("flatsync"));
    assert!(!format!("{parsed:?}").contains("pw@"), "{parsed:?}");
}

#[test]
fn urls_are_shown_without_their_password() {
    assert_eq!(
        redact_url("postgres://u:p@ss:w@host:5432/db"),
        "postgres://u:***@host:5432/db"
    );
    assert_eq!(redact_url("postgres://u@host/db"), "postgres://u@host/db");
    assert_eq!(
        redact_url("postgres://host/db?user=u&password=x&sslmode=disable"),
        "postgres://host/db?user=u&password=***&sslmode=disable"
    );
    assert_eq!(redact_url("postgres://u:x@host"), "postgres://u:***@host");
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
            "SELECT _record_id, _event_id, _valid, _received_at, name, age FROM contacts \
             ORDER BY 1"
        ),
        [
            ["r1", "ev2", "f", DELETED, "Ada L.", "37"],
            ["r2", "ev1", "t", RECEIVED, "Bob", "40"],
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
        [["contacts-deleted-ev2", "contacts", "1", "t"]]
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
        [["r1", "Ada", DELETED], ["r2", "Bob", DELETED]]
    );
    drop(first);

    let mut second = fx.marking_sink();
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
        deletion("ev2", "contacts-deleted-ev2", 0, true),
        &[deleted("r1"), deleted("r2")],
    )
    .expect("skipped");
    assert_eq!(
        fx.rows("SELECT _record_id, _event_id, name, _deleted_at FROM contacts ORDER BY 1"),
        [
            ["r1", "ev3", "Ada again", "NULL"],
            ["r2", "ev1", "Bob", DELETED],
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
        [["r1", "Ada", "NULL"], ["r2", "Bob", DELETED]]
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
        assert_eq!(fx.rows("SELECT to_regclass('contacts') IS NULL"), [["t"]]);
        assert_eq!(
            fx.rows(&format!(
                "SELECT applied_seq, complete FROM _flatsync_streams WHERE stream = '{stream}'"
            )),
            [["0", "t"]]
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
        [["r1", DELETED], ["r2", DELETED]]
    );
}
