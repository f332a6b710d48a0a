//! Both backends for the state tests: an SQLite file in a temporary directory, and a
//! PostgreSQL database of its own, created on the server `FLATSYNC_TEST_POSTGRES_URL` names
//! (default: the local server, `postgres://postgres@127.0.0.1:5432/postgres`) and dropped
//! when the test ends, so that tests run in parallel.
//!
//! Without a reachable server the PostgreSQL half panics with a message saying how to
//! provide one: the tests never pass by skipping it.

use std::sync::atomic::{AtomicU32, Ordering};

use super::sql::{Db, PgTarget, off_runtime};
use super::{StateDb, StateLocation};

/// The variable naming the server the PostgreSQL tests create their databases on.
pub(crate) const SERVER_VAR: &str = "FLATSYNC_TEST_POSTGRES_URL";
const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A state database for one test, removed when dropped.
#[derive(Debug)]
pub(crate) enum TestBackend {
    Sqlite(tempfile::TempDir),
    Postgres(TestPostgres),
}

impl TestBackend {
    /// An SQLite state, then a PostgreSQL one; `label` names the test's databases.
    pub(crate) fn both(label: &str) -> Vec<TestBackend> {
        vec![TestBackend::sqlite(), TestBackend::postgres(label)]
    }

    pub(crate) fn sqlite() -> TestBackend {
        TestBackend::Sqlite(tempfile::tempdir().expect("tempdir"))
    }

    pub(crate) fn postgres(label: &str) -> TestBackend {
        TestBackend::Postgres(TestPostgres::create(label))
    }

    /// Where the state is, as the daemon's config would say.
    pub(crate) fn location(&self) -> StateLocation {
        match self {
            TestBackend::Sqlite(dir) => StateLocation::Dir(dir.path().to_owned()),
            TestBackend::Postgres(pg) => StateLocation::Postgres(Box::new(pg.target())),
        }
    }

    /// The state database, opened (and created or migrated) as the daemon opens it.
    pub(crate) fn state(&self) -> StateDb {
        StateDb::open_at(&self.location()).expect("open the test state")
    }

    /// A bare connection, without the state schema.
    pub(crate) fn db(&self) -> Db {
        match self {
            TestBackend::Sqlite(dir) => Db::sqlite(
                rusqlite::Connection::open(dir.path().join("bare.db")).expect("open sqlite"),
            ),
            TestBackend::Postgres(pg) => Db::postgres(pg.target()).expect("connect"),
        }
    }
}

/// A database of its own on the test server.
#[derive(Debug)]
pub(crate) struct TestPostgres {
    server: String,
    name: String,
}

impl TestPostgres {
    fn create(label: &str) -> TestPostgres {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let server = std::env::var(SERVER_VAR).unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
        let name = format!(
            "flatsync_{}_{}_{}_{}",
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            fastrand::u32(..)
        );
        off_runtime(|| {
            admin(&server)
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        });
        TestPostgres { server, name }
    }

    /// The test database's connection settings.
    pub(crate) fn target(&self) -> PgTarget {
        PgTarget::parse(&self.url()).expect("test database URL")
    }

    /// Its URL (the server's, with the database name replaced).
    pub(crate) fn url(&self) -> String {
        url_of(&self.server, &self.name)
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // A failure leaves a database behind on a test server; it must not hide the test's
        // own result.
        off_runtime(|| {
            if let Ok(mut admin) = postgres::Client::connect(&self.server, postgres::NoTls) {
                let _ = admin.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                ));
            }
        });
    }
}

fn admin(server: &str) -> postgres::Client {
    postgres::Client::connect(server, postgres::NoTls).unwrap_or_else(|e| {
        panic!(
            "these tests need a PostgreSQL server they may create databases on; {server} \
             refused ({e}). Start one there, or set {SERVER_VAR} to the URL of one \
             (postgres://user@host:port/database)"
        )
    })
}

/// `server` with its database name replaced by `name`.
fn url_of(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    let mut url = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}
