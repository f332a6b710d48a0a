//! A PostgreSQL database of a test's own, dropped when the test ends.
//!
//! Tests that need PostgreSQL each create a uniquely named database on one server, so they run
//! in parallel without seeing each other's tables:
//!
//! ```no_run
//! let db = flatsync_test_kit::postgres::TestDatabase::create("sink");
//! let mut client = db.client();
//! client.batch_execute("CREATE TABLE t (x int)").expect("created");
//! // `db.url()` is the URL to hand to the code under test.
//! ```
//!
//! The server is the one in `FLATSYNC_TEST_POSTGRES_URL` ([`URL_ENV`]), or
//! [`DEFAULT_SERVER_URL`]; its user must be allowed to create databases. An unreachable server
//! fails the test with a message naming the URL it tried, never a silent pass.

use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the server: a `postgres://` URL of any database on it.
pub const URL_ENV: &str = "FLATSYNC_TEST_POSTGRES_URL";

/// The server used when [`URL_ENV`] is not set: the local one, trust auth.
pub const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// PostgreSQL keeps 63 bytes of an identifier and silently cuts the rest.
const MAX_NAME: usize = 63;

/// A database created for one test, dropped (with any session still connected) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    server_url: String,
}

impl TestDatabase {
    /// Creates a database named `<prefix>_<pid>_<n>` on the server of [`URL_ENV`].
    ///
    /// Panics when the server cannot be reached or refuses, naming the URL (its password
    /// hidden) and the variable that sets it.
    pub fn create(prefix: &str) -> Self {
        let server_url = std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned());
        Self::create_on(&server_url, prefix)
    }

    /// Like [`create`](Self::create), on the server of `server_url`.
    pub fn create_on(server_url: &str, prefix: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let number = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut name: String = format!("{prefix}_{}_{number}", std::process::id())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        if name.len() > MAX_NAME {
            name.drain(..name.len() - MAX_NAME);
        }
        let mut admin = connect(server_url);
        // A database left by an earlier run whose process had the same id goes first. Two
        // statements, not one string: several would run as one transaction, which neither
        // may run in.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .and_then(|()| admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")))
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create database {name} on {}: {}",
                    redact(server_url),
                    describe(&e)
                )
            });
        Self {
            url: with_database(server_url, &name),
            name,
            server_url: server_url.to_owned(),
        }
    }

    /// The database's URL: the server's URL with this database's name as its path.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new connection to the database.
    pub fn client(&self) -> ::postgres::Client {
        connect(&self.url)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let dropped = ::postgres::Client::connect(&self.server_url, ::postgres::NoTls).and_then(
            |mut admin| {
                admin.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                ))
            },
        );
        // A second panic while the test is already failing would abort the whole run.
        if let Err(e) = dropped
            && !std::thread::panicking()
        {
            panic!(
                "cannot drop test database {} on {}: {}",
                self.name,
                redact(&self.server_url),
                describe(&e)
            );
        }
    }
}

fn connect(url: &str) -> ::postgres::Client {
    ::postgres::Client::connect(url, ::postgres::NoTls).unwrap_or_else(|e| {
        panic!(
            "cannot connect to the test PostgreSQL server at {}: {}; start one there, or set \
             {URL_ENV} to the postgres:// URL of a server whose user may create databases",
            redact(url),
            describe(&e)
        )
    })
}

/// The error with its cause: the client's own text is only its kind ("db error").
fn describe(error: &::postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        },
    }
}

/// `url` with the database path replaced by `/<name>`, keeping any query.
fn with_database(url: &str, name: &str) -> String {
    let authority_start = url.find("://").map_or(0, |at| at + 3);
    let rest = &url[authority_start..];
    let authority_end = rest
        .find(['/', '?'])
        .map_or(url.len(), |at| authority_start + at);
    let query = url[authority_end..]
        .find('?')
        .map_or("", |at| &url[authority_end + at..]);
    format!("{}/{name}{query}", &url[..authority_end])
}

/// `url` with the password of its user info replaced by `***`.
fn redact(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |at| at + 3);
    let rest = &url[authority_start..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) if authority[..at].contains(':') => {
            let user_end = authority_start + authority[..at].find(':').expect("checked");
            format!("{}:***{}", &url[..user_end], &url[authority_start + at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exists(name: &str) -> bool {
        let mut admin = connect(DEFAULT_SERVER_URL);
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .expect("pg_database is readable");
        row.get::<_, i64>(0) == 1
    }

    #[test]
    fn a_database_is_created_reachable_by_its_url_and_dropped() {
        let db = TestDatabase::create_on(DEFAULT_SERVER_URL, "Kit-Test");
        assert!(db.name().starts_with("kit_test_"), "{}", db.name());
        assert_eq!(
            db.url(),
            format!("postgres://postgres@127.0.0.1:5432/{}", db.name())
        );
        let mut client = db.client();
        let current: String = client
            .query_one("SELECT current_database()", &[])
            .expect("query runs")
            .get(0);
        assert_eq!(current, db.name());
        let other = TestDatabase::create_on(DEFAULT_SERVER_URL, "Kit-Test");
        assert_ne!(other.name(), db.name());

        let name = db.name().to_owned();
        // Still connected: the drop must end the session to drop the database.
        drop(db);
        assert!(!exists(&name));
        drop(client);
    }

    #[test]
    fn an_unreachable_server_panics_naming_the_url_and_the_variable() {
        let panic = std::panic::catch_unwind(|| {
            TestDatabase::create_on("postgres://tester:hunter2@127.0.0.1:9/postgres", "x")
        })
        .expect_err("nothing listens on port 9");
        let message = panic.downcast_ref::<String>().expect("a formatted message");
        assert!(
            message.contains("postgres://tester:***@127.0.0.1:9/postgres"),
            "{message}"
        );
        assert!(message.contains(URL_ENV), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn urls_get_the_database_name_and_lose_the_password() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres?sslmode=disable", "t1"),
            "postgres://u@h:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t1"), "postgres://u@h/t1");
        assert_eq!(
            with_database("postgres://u@h?x=1", "t1"),
            "postgres://u@h/t1?x=1"
        );
        assert_eq!(
            redact("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db",
            "the last @ ends the user info"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
