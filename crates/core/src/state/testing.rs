//! Both backends for the state tests: an SQLite file in a temporary directory, and a
//! PostgreSQL database of its own (the test kit's [`TestDatabase`], on the server
//! `FLATSYNC_TEST_POSTGRES_URL` names, by default the local one), dropped when the test ends,
//! so that tests run in parallel.
//!
//! Without a reachable server the PostgreSQL half panics with a message saying how to
//! provide one: the tests never pass by skipping it.

use flatsync_test_kit::postgres::TestDatabase;

use super::sql::{Db, PgTarget, off_runtime};
use super::{StateDb, StateLocation};

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

/// A database of its own on the test server ([`TestDatabase`], created and dropped off the
/// async runtime, where its synchronous client may block).
#[derive(Debug)]
pub(crate) struct TestPostgres(Option<TestDatabase>);

impl TestPostgres {
    fn create(label: &str) -> TestPostgres {
        let prefix = format!("flatsync_{label}");
        TestPostgres(Some(off_runtime(|| TestDatabase::create(&prefix))))
    }

    /// The test database's connection settings.
    pub(crate) fn target(&self) -> PgTarget {
        PgTarget::parse(self.url()).expect("test database URL")
    }

    /// Its URL.
    pub(crate) fn url(&self) -> &str {
        self.0.as_ref().expect("dropped only at the end").url()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Some(db) = self.0.take() {
            off_runtime(move || drop(db));
        }
    }
}
