//! The databases of a run on the local PostgreSQL server, named after the run's directory: the
//! postgres sink's (created before the daemon starts, counted and dropped after it stops) and
//! the daemon's state database of the event cases (a [`StateDatabase`]).

use std::path::Path;

use crate::error::BenchError;

/// The environment variable naming the server, shared with the tests.
const URL_ENV: &str = "FLATSYNC_TEST_POSTGRES_URL";
const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn server_url() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned())
}

/// The database of the run in `dir`: the directory's name (`flatsync-bench-import-<random>`,
/// unique among the runs) with `_` for anything but letters and digits.
fn database_name(dir: &Path) -> String {
    sanitized_name(dir, "")
}

/// `dir`'s name with `_` for anything but letters and digits, then `suffix`.
fn sanitized_name(dir: &Path, suffix: &str) -> String {
    let mut name: String = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    // PostgreSQL keeps 63 bytes of a name: the suffix must survive the cut.
    name.truncate(63 - suffix.len());
    name.push_str(suffix);
    name
}

/// The URL of the run's database: the server's URL with the database's name as its path.
pub(crate) fn database_url(dir: &Path) -> String {
    url_of(&database_name(dir))
}

/// The server's URL with `name` as its path.
fn url_of(name: &str) -> String {
    let server = server_url();
    let authority_start = server.find("://").map_or(0, |at| at + 3);
    let rest = &server[authority_start..];
    let authority_end = rest
        .find(['/', '?'])
        .map_or(server.len(), |at| authority_start + at);
    let query = server[authority_end..]
        .find('?')
        .map_or("", |at| &server[authority_end + at..]);
    format!("{}/{name}{query}", &server[..authority_end])
}

fn connect(url: &str) -> Result<postgres::Client, BenchError> {
    postgres::Client::connect(url, postgres::NoTls).map_err(|e| {
        BenchError::Failed(format!(
            "cannot connect to PostgreSQL ({URL_ENV} or {DEFAULT_SERVER_URL}): {}",
            describe(&e)
        ))
    })
}

fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        },
    }
}

fn admin(name: &str, sql: &str) -> Result<(), BenchError> {
    connect(&server_url())?
        .batch_execute(&sql.replace("{name}", name))
        .map_err(|e| BenchError::Failed(format!("database {name}: {}", describe(&e))))
}

const CREATE: &str = "CREATE DATABASE \"{name}\"";
/// Even with sessions still connected.
const DROP: &str = "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)";

/// Creates the run's sink database.
pub(crate) fn create_database(dir: &Path) -> Result<(), BenchError> {
    admin(&database_name(dir), CREATE)
}

/// Drops the run's sink database.
pub(crate) fn drop_database(dir: &Path) -> Result<(), BenchError> {
    admin(&database_name(dir), DROP)
}

/// The daemon's state database of a run (`[daemon] state_url`), empty when made: dropped by
/// [`StateDatabase::drop_now`], or when dropped itself (a failed run: what was in it is in
/// the daemon's log, and a database left behind would pile up on the shared server).
#[derive(Debug)]
pub(crate) struct StateDatabase {
    name: Option<String>,
}

impl StateDatabase {
    /// Creates the state database of the run in `dir`, named apart from its sink database.
    pub(crate) fn create(dir: &Path) -> Result<StateDatabase, BenchError> {
        let name = sanitized_name(dir, "_state");
        admin(&name, CREATE)?;
        Ok(StateDatabase { name: Some(name) })
    }

    /// Its URL, without a password: the daemon's `state_url`.
    pub(crate) fn url(&self) -> String {
        url_of(self.name.as_deref().unwrap_or_default())
    }

    /// Drops it, with the error if that fails.
    pub(crate) fn drop_now(mut self) -> Result<(), BenchError> {
        match self.name.take() {
            Some(name) => admin(&name, DROP),
            None => Ok(()),
        }
    }
}

impl Drop for StateDatabase {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            let _ = admin(&name, DROP);
        }
    }
}

/// Rows of `table` in the run's database.
pub(crate) fn count_rows(dir: &Path, table: &str) -> Result<u64, BenchError> {
    let quoted = format!("\"{}\"", table.replace('"', "\"\""));
    let count: i64 = connect(&database_url(dir))?
        .query_one(&format!("SELECT count(*) FROM public.{quoted}"), &[])
        .map_err(|e| {
            BenchError::Failed(format!(
                "cannot count {table} in database {}: {}",
                database_name(dir),
                describe(&e)
            ))
        })?
        .get(0);
    u64::try_from(count).map_err(|_| BenchError::Failed(format!("{table} counts {count} rows")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_run_directory_names_its_own_database() {
        let dir = Path::new("/tmp/flatsync-bench-import-Ab3xYz");
        assert_eq!(database_name(dir), "flatsync_bench_import_Ab3xYz");
        assert!(
            database_url(dir).ends_with("/flatsync_bench_import_Ab3xYz"),
            "{}",
            database_url(dir)
        );
    }

    #[test]
    fn a_state_database_keeps_its_suffix_under_the_length_limit() {
        let long = format!("flatsync-bench-{}", "x".repeat(80));
        let name = sanitized_name(Path::new(&long), "_state");
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("x_state"), "{name}");
        assert_eq!(
            sanitized_name(Path::new("/tmp/flatsync-bench-intake-Q1"), "_state"),
            "flatsync_bench_intake_Q1_state"
        );
    }
}
