use std::ffi::OsString;

use flatsync_plugin_sdk::{CreateContext, Logger, Sink, SinkError, serde_json};
use flatsync_table_sink_contract::{
    Delivery, Message, RECEIVED, TableSink, row, send, table_sink_scenarios,
};
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

    /// A sink on the test database, with `extra` config keys.
    fn create(&self, extra: serde_json::Value) -> Result<PostgresSink, SinkError> {
        let mut config = json!({ "url": self.db.url() });
        if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
            config.extend(extra.clone());
        }
        create(config)
    }

    /// The record ids in `contacts`, in order.
    fn record_ids(&self) -> Vec<Vec<String>> {
        self.rows("SELECT _record_id FROM contacts ORDER BY 1")
    }
}

impl TableSink for Fixture {
    type Sink = PostgresSink;

    fn sink(&self) -> PostgresSink {
        self.create(json!({})).expect("valid config")
    }

    fn marking_sink(&self) -> PostgresSink {
        self.create(json!({"deletions": "mark"}))
            .expect("valid config")
    }

    /// Every value of the query's rows as PostgreSQL prints it (times in UTC), NULL as `None`.
    fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let mut client = self.db.client();
        let messages = client
            .simple_query(&format!("SET TimeZone = 'UTC'; {sql}"))
            .expect("query runs");
        messages
            .iter()
            .filter_map(|message| match message {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|index| row.get(index).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    fn columns(&self, name: &str) -> Vec<String> {
        self.rows(&format!(
            "SELECT column_name FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = '{}' ORDER BY ordinal_position",
            name.replace('\'', "''")
        ))
        .into_iter()
        .map(|mut row| row.remove(0))
        .collect()
    }

    fn shown_bool(&self, value: bool) -> &'static str {
        if value { "t" } else { "f" }
    }

    fn shown_time(&self, rfc3339: &str) -> String {
        // `timestamptz` prints as `2024-05-02 14:03:11.517+00` in UTC.
        let utc = rfc3339.strip_suffix('Z').expect("a UTC time");
        format!("{}+00", utc.replacen('T', " ", 1))
    }

    fn unusable_kinds(&self) -> Vec<String> {
        // PostgreSQL would cut a longer name to 63 bytes, so two kinds could share a table.
        vec!["k".repeat(64)]
    }

    fn refused_keys(&self) -> Vec<(String, Message)> {
        vec![
            (
                format!(r#"{{"{}":1}}"#, "k".repeat(64)),
                Message::StartsWith(
                    "table `contacts`: field key cannot be a column name".to_owned(),
                ),
            ),
            (
                r#"{"nul":"a\u0000b"}"#.to_owned(),
                Message::StartsWith("table `contacts`, column `nul`, record `r1`:".to_owned()),
            ),
        ]
    }
}

table_sink_scenarios!(Fixture::new());

/// A sink with the test's whole `config`.
fn create(config: serde_json::Value) -> Result<PostgresSink, SinkError> {
    PostgresSink::create(&CreateContext::new("db", Logger::discard()), config)
}

#[test]
fn rows_land_with_the_sinks_columns_and_every_value_as_text() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    let received = fx.shown_time(RECEIVED);
    let values = r#"{"s":"text \"q\" é\ttab\\back\nline","i":-42,"r":1.50,"e":1e3,"big":12345678901234567890,"t":true,"f":false,"n":null,"o":{"k": [1, "a b"]},"numstr":"007"}"#;
    send(
        &mut sink,
        Delivery {
            fields: r#"["s","i"]"#,
            ..Delivery::default()
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
            received.as_str(),
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
fn empty_stream_creates_the_table_in_the_configured_schema_and_completes() {
    let fx = Fixture::new();
    let mut sink = fx
        .create(json!({"schema": "Flat \"Sync\""}))
        .expect("valid config");
    let how = Delivery {
        kind: "my \"odd\" sheet",
        stream: "odd-ev1",
        fields: r#"["a b","c"]"#,
        last: true,
        ..Delivery::default()
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
fn keys_differing_only_in_letter_case_are_two_columns() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    let rows = [
        row("r1", true, r#"{"email":"a@x.io"}"#),
        row("r2", true, r#"{"email":"b@x.io","Email":"upper"}"#),
    ];
    send(&mut sink, Delivery::default(), &rows).expect("written");
    assert_eq!(
        fx.columns("contacts"),
        [
            "_record_id",
            "_event_id",
            "_valid",
            "_received_at",
            "email",
            "Email"
        ]
    );
    assert_eq!(
        fx.rows(r#"SELECT _record_id, email, "Email" FROM contacts ORDER BY 1"#),
        [["r1", "a@x.io", "NULL"], ["r2", "b@x.io", "upper"]]
    );
}

#[test]
fn a_table_not_made_by_the_sink_is_fatal() {
    let fx = Fixture::new();
    fx.rows("CREATE TABLE contacts (id int)");
    let mut sink = fx.sink();
    let error =
        send(&mut sink, Delivery::default(), &[row("r1", true, "{}")]).expect_err("foreign");
    assert!(!error.is_retry());
    assert_eq!(
        error.message(),
        "table `contacts` in schema `public` exists without the sink's column `_record_id`; it \
         was not created by this sink"
    );
}

#[test]
fn a_value_refused_late_in_a_long_batch_writes_nothing_of_it_and_the_sink_goes_on() {
    // Long enough that the COPY has sent several chunks before the last row is refused.
    let fx = Fixture::new();
    let mut sink = fx.sink();
    let rows: Vec<String> = (0..3_000)
        .map(|n| {
            row(
                &format!("r{n:04}"),
                true,
                &format!(r#"{{"note":"row {n} of a long batch"}}"#),
            )
        })
        .collect();
    let mut refused = rows.clone();
    refused[2_999] = row("r2999", true, r#"{"note":"a \u0000 inside"}"#);
    let error = send(&mut sink, Delivery::default(), &refused).expect_err("NUL refused");
    assert!(!error.is_retry(), "{}", error.message());
    for part in [
        "table `contacts`, column `note`, record `r2999`",
        "NUL character",
    ] {
        assert!(error.message().contains(part), "{}", error.message());
    }
    // The batch's transaction rolled back whole, down to the table it created.
    assert_eq!(fx.rows("SELECT to_regclass('contacts') IS NULL"), [["t"]]);

    send(&mut sink, Delivery::default(), &rows).expect("the same batch without the NUL");
    assert_eq!(fx.rows("SELECT count(*) FROM contacts"), [["3000"]]);
    assert_eq!(
        fx.rows("SELECT note FROM contacts WHERE _record_id = 'r2999'"),
        [["row 2999 of a long batch"]]
    );
}

/// Sends a batch; a RETRY error (a deadlock, a lost serialization) is answered as the host
/// would, by sending the batch again, which must then pass.
fn send_retrying_once(sink: &mut PostgresSink, how: Delivery<'_>, rows: &[String]) {
    if let Err(error) = send(sink, how, rows) {
        assert!(error.is_retry(), "{}", error.message());
        send(sink, how, rows).expect("the retry passes");
    }
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
        let how = Delivery {
            seq,
            last: seq + 1 == BATCHES,
            fields: r#"["seq","n"]"#,
            ..Delivery::default()
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
                    send_retrying_once(sink, how, &rows);
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
                    let how = Delivery {
                        stream: &stream,
                        seq,
                        ..Delivery::default()
                    };
                    let rows = [row(&format!("r{index}-{seq}"), true, &values)];
                    send_retrying_once(sink, how, &rows);
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
    send(&mut sink, Delivery::default(), &[row("r1", true, "{}")]).expect("seq 0");
    let terminated = fx.rows(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{}' AND application_name = 'flatsync'",
        fx.db.name()
    ));
    assert_eq!(terminated, [["t"]]);
    let next = Delivery {
        seq: 1,
        ..Delivery::default()
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        match send(&mut sink, next, &[row("r2", true, "{}")]) {
            Ok(()) => break,
            Err(error) => {
                assert!(error.is_retry(), "{}", error.message());
                assert!(attempts < 3, "{}", error.message());
            }
        }
    }
    assert_eq!(fx.record_ids(), [["r1"], ["r2"]]);
}

#[test]
fn a_stream_locked_elsewhere_past_the_lock_timeout_is_a_retry_naming_the_server() {
    let fx = Fixture::new();
    let mut sink = fx.sink();
    send(&mut sink, Delivery::default(), &[row("r1", true, "{}")]).expect("seq 0");
    let url = format!("{}?options=-c%20lock_timeout%3D200", fx.db.url());
    let mut impatient = create(json!({ "url": url })).expect("valid config");
    let mut other = fx.db.client();
    let mut holder = other.transaction().expect("begins");
    holder
        .execute(
            "SELECT 1 FROM _flatsync_streams WHERE stream = 'contacts-ev1' FOR UPDATE",
            &[],
        )
        .expect("locked");
    let next = Delivery {
        seq: 1,
        ..Delivery::default()
    };
    let error =
        send(&mut impatient, next, &[row("r2", true, "{}")]).expect_err("the row is locked");
    assert!(error.is_retry(), "{}", error.message());
    assert!(
        error.message().starts_with(&format!("{url}: ")) && error.message().contains("55P03"),
        "{}",
        error.message()
    );
    holder.rollback().expect("released");
    send(&mut impatient, next, &[row("r2", true, "{}")]).expect("the retry passes");
    assert_eq!(fx.record_ids(), [["r1"], ["r2"]]);
}

#[test]
fn an_unreachable_server_is_a_retry() {
    let error =
        create(json!({"url": "postgres://postgres@127.0.0.1:9/db", "connect_timeout_ms": 2000}))
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

/// Panics unless `error` is fatal, its message holds each of `parts`, and never the password
/// `s3cret-pw` of the test's URLs.
fn assert_fatal_without_password(error: &SinkError, parts: &[&str]) {
    let message = error.message();
    assert!(!error.is_retry(), "{message}");
    for part in parts {
        assert!(message.contains(part), "no {part:?} in: {message}");
    }
    assert!(!message.contains("s3cret"), "{message}");
}

#[test]
fn an_unknown_role_or_database_is_fatal_and_never_shows_the_password() {
    let fx = Fixture::new();
    let url = fx.db.url();
    let (_, after_user) = url.split_once('@').expect("the URL has a user");
    let role_url = format!("postgres://nobody_here:s3cret-pw@{after_user}");
    let error = create_with_env(json!({"url_env": "PG_URL"}), &[("PG_URL", &role_url)])
        .expect_err("no such role");
    assert_fatal_without_password(&error, &["28000", "postgres://nobody_here:***@"]);

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
    assert_fatal_without_password(&error, &["3D000", "no_such_database_here", "password=***"]);

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
    let refused =
        |schema: &str| create(json!({"url": url, "schema": schema})).expect_err("no privilege");
    let error = refused("public");
    assert!(!error.is_retry(), "{}", error.message());
    assert_eq!(
        error.message(),
        format!(
            "schema `public`: user `{0}` may not create tables in it (42501); grant it with \
             GRANT CREATE ON SCHEMA \"public\" TO \"{0}\"",
            role.name
        )
    );
    let error = refused("other");
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
