use super::*;
use crate::state::testing::TestBackend;
use crate::state::{DeliveryStatus, EventStatus};

fn each_backend(test: impl Fn(&mut Db)) {
    for backend in TestBackend::both("sql") {
        let mut db = backend.db();
        test(&mut db);
    }
}

const TABLE: &str = "CREATE TABLE t (id TEXT PRIMARY KEY, n BIGINT, body BYTEA, note TEXT)";

fn create_table(db: &mut Db) {
    let ddl = match db.backend() {
        Backend::Sqlite => TABLE.replace("BYTEA", "BLOB"),
        Backend::Postgres => TABLE.to_owned(),
    };
    db.execute_batch(&ddl).expect("create table");
}

fn ids(db: &mut Db) -> Vec<String> {
    db.query_map("SELECT id FROM t ORDER BY id", params![], |r| r.get(0))
        .expect("ids")
}

#[test]
fn values_go_in_and_come_out_unchanged_on_both_backends() {
    each_backend(|db| {
        create_table(db);
        let body = vec![0_u8, 159, 146, 150, 255];
        let n = db
            .execute(
                "INSERT INTO t (id, n, body, note) VALUES (?1, ?2, ?3, ?4)",
                params!["a", i64::MAX, body, Option::<String>::None],
            )
            .expect("insert");
        assert_eq!(n, 1, "{:?}", db.backend());
        let (id, got_n, got_body, note): (String, i64, Vec<u8>, Option<String>) = db
            .query_row(
                "SELECT id, n, body, note FROM t WHERE id = ?1",
                params!["a"],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .expect("select");
        assert_eq!(
            (id.as_str(), got_n, got_body, note),
            ("a", i64::MAX, body, None)
        );
        let missing = db
            .query_row("SELECT id FROM t WHERE id = ?1", params!["zz"], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .expect("query");
        assert_eq!(missing, None);
    });
}

#[test]
fn the_portable_spellings_mean_the_same_on_both_backends() {
    each_backend(|db| {
        create_table(db);
        for (id, n) in [("a", 5_i64), ("b", 7)] {
            db.execute(
                "INSERT INTO t (id, n) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![id, n],
            )
            .expect("insert");
        }
        let ignored = db
            .execute(
                "INSERT INTO t (id, n) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params!["a", 1_i64],
            )
            .expect("insert again");
        assert_eq!(ignored, 0, "a duplicate id is ignored");
        db.execute(
            "INSERT INTO t (id, n) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET n = GREATEST(t.n, excluded.n)",
            params!["b", 3_i64],
        )
        .expect("upsert");
        let rows: Vec<(String, i64)> = db
            .query_map(
                "SELECT id, LEAST(n, 6) FROM t ORDER BY id",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("read");
        assert_eq!(rows, vec![("a".into(), 5), ("b".into(), 6)]);
        let total: i64 = db
            .query_row("SELECT CAST(SUM(n) AS BIGINT) FROM t", params![], |r| {
                r.get(0)
            })
            .expect("sum");
        assert_eq!(total, 12);
        let now: i64 = db
            .query_row("SELECT NOW_MS()", params![], |r| r.get(0))
            .expect("now");
        let local = crate::state::now_ms();
        assert!(
            (now - local).abs() < 60_000,
            "NOW_MS() is a time in ms near the local clock: {now} vs {local}"
        );
        let pending: Vec<String> = db
            .query_map(
                "SELECT id FROM t WHERE id = ?1 AND ?2 = 'pending' AND ?3 = 'done'
                 FOR UPDATE SKIP LOCKED",
                params!["a", EventStatus::Pending, DeliveryStatus::Done],
                |r| r.get(0),
            )
            .expect("statuses as text");
        assert_eq!(pending, vec!["a".to_owned()]);
    });
}

#[test]
fn a_transaction_commits_all_or_nothing_and_a_savepoint_drops_only_its_piece() {
    each_backend(|db| {
        create_table(db);
        let failed: Result<()> = db.transaction(|tx| {
            tx.execute("INSERT INTO t (id) VALUES (?1)", params!["x"])?;
            tx.execute("INSERT INTO t (id) VALUES (?1)", params!["x"])?;
            Ok(())
        });
        assert!(failed.is_err(), "the duplicate fails the transaction");
        assert!(ids(db).is_empty(), "{:?}: nothing stays", db.backend());
        db.transaction(|tx| {
            tx.execute("INSERT INTO t (id) VALUES (?1)", params!["a"])?;
            let piece = tx.savepoint(|sp| {
                sp.execute("INSERT INTO t (id) VALUES (?1)", params!["b"])?;
                sp.execute("INSERT INTO t (id) VALUES (?1)", params!["a"])
            });
            assert!(piece.is_err(), "the piece fails");
            tx.execute("INSERT INTO t (id) VALUES (?1)", params!["c"])?;
            Ok(())
        })
        .expect("the transaction goes on past the failed piece");
        assert_eq!(
            ids(db),
            vec!["a".to_owned(), "c".to_owned()],
            "{:?}",
            db.backend()
        );
    });
}

#[test]
fn a_wrong_column_type_is_an_error_naming_the_column() {
    each_backend(|db| {
        create_table(db);
        db.execute(
            "INSERT INTO t (id, note) VALUES (?1, ?2)",
            params!["a", "text"],
        )
        .expect("insert");
        let err = db
            .query_row("SELECT id, note FROM t", params![], |r| r.get::<_, i64>(1))
            .expect_err("text is not an integer");
        assert!(err.to_string().contains("column 1"), "{err}");
    });
}

#[test]
fn placeholders_are_rewritten_outside_quotes_only() {
    assert_eq!(
        pg::placeholders("SELECT '?', \"a?\" FROM t WHERE a = ?1 AND b = ?12"),
        "SELECT '?', \"a?\" FROM t WHERE a = $1 AND b = $12"
    );
}

#[test]
fn a_url_is_shown_without_its_password() {
    let target = PgTarget::parse("postgres://app:s3cret@db.example:5433/flatsync").expect("url");
    assert_eq!(
        target.redacted(),
        "postgres://app:***@db.example:5433/flatsync"
    );
    assert!(!format!("{target:?}").contains("s3cret"));
    let err = PgTarget::parse("postgres://app:s3cret@db.example:notaport/x").expect_err("bad");
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn tls_is_refused_by_name_rather_than_dropped() {
    for mode in ["require", "verify-ca", "verify-full"] {
        let err = PgTarget::parse(&format!("postgres://app:s3cret@db/x?sslmode={mode}"))
            .expect_err("not supported");
        assert!(
            err.contains(&format!("sslmode={mode} is not supported yet")),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }
    PgTarget::parse("postgres://app@db/x?sslmode=disable").expect("without TLS");
}

#[test]
fn an_unreachable_server_is_an_unavailable_error() {
    // Nothing listens on port 1 of 127.0.0.1.
    let target = PgTarget::parse("postgres://postgres@127.0.0.1:1/postgres").expect("url");
    let err = Db::postgres(target).expect_err("refused");
    assert!(err.is_unavailable(), "{err}");
}

#[test]
fn a_connection_lost_inside_a_transaction_fails_the_rest_of_it_and_commits_nothing() {
    let backend = TestBackend::postgres("sql_broken");
    let mut db = backend.db();
    create_table(&mut db);
    let mut admin = backend.db();
    let outcome = db.transaction(|tx| {
        tx.execute("INSERT INTO t (id) VALUES (?1)", params!["before"])?;
        let own: i64 = tx.query_row("SELECT CAST(pg_backend_pid() AS BIGINT)", params![], |r| {
            r.get(0)
        })?;
        admin.query_row(
            "SELECT CASE WHEN pg_terminate_backend(CAST(?1 AS INTEGER)) THEN 1 ELSE 0 END",
            params![own],
            |r| r.get::<_, i64>(0),
        )?;
        // The first statement finds the session gone; the next must not run on a new one,
        // outside the transaction: it fails too, as a broken transaction once the client has
        // seen the connection close, or as the same lost connection before.
        let first = tx.execute("INSERT INTO t (id) VALUES (?1)", params!["after"]);
        assert!(first.is_err(), "the session is gone");
        let second = tx.execute("INSERT INTO t (id) VALUES (?1)", params!["after"]);
        assert!(
            second.as_ref().is_err_and(DbError::is_unavailable),
            "{second:?}"
        );
        second.map(drop)
    });
    assert!(
        outcome.as_ref().is_err_and(DbError::is_unavailable),
        "{outcome:?}"
    );
    assert!(
        ids(&mut db).is_empty(),
        "nothing of the transaction was committed"
    );
    db.execute("INSERT INTO t (id) VALUES (?1)", params!["later"])
        .expect("a later statement connects again");
    assert_eq!(ids(&mut db), vec!["later".to_owned()]);
}

#[test]
fn a_postgres_session_plans_every_run_afresh_and_never_compiles_a_query() {
    for backend in TestBackend::both("sql_session") {
        let mut db = backend.db();
        if db.backend() != Backend::Postgres {
            continue;
        }
        let settings: (String, String) = db
            .query_row(
                "SELECT current_setting('plan_cache_mode'), current_setting('jit')",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("settings");
        assert_eq!(settings, ("force_custom_plan".to_owned(), "off".to_owned()));
    }
}

#[test]
fn a_postgres_work_session_ends_when_idle_past_its_lease() {
    for backend in TestBackend::both("sql_work_session") {
        let TestBackend::Postgres(pg) = &backend else {
            continue;
        };
        let lease = std::time::Duration::from_secs(7);
        let mut db = Db::postgres_session(pg.target(), Session::Work { lease }).expect("connect");
        let timeouts: (String, String) = db
            .query_row(
                "SELECT current_setting('idle_session_timeout'),
                        current_setting('idle_in_transaction_session_timeout')",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("settings");
        assert_eq!(timeouts, ("7s".to_owned(), "7s".to_owned()));
    }
}
