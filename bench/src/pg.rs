//! The postgres sink's database of a run: named after the run's directory, created before the
//! daemon starts, counted and dropped after it stops.

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
    let mut name: String = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    // PostgreSQL keeps 63 bytes of a name.
    name.truncate(63);
    name
}

/// The URL of the run's database: the server's URL with the database's name as its path.
pub(crate) fn database_url(dir: &Path) -> String {
    let server = server_url();
    let authority_start = server.find("://").map_or(0, |at| at + 3);
    let rest = &server[authority_start..];
    let authority_end = rest
        .find(['/', '?'])
        .map_or(server.len(), |at| authority_start + at);
    let query = server[authority_end..]
        .find('?')
        .map_or("", |at| &server[authority_end + at..]);
    format!("{}/{}{query}", &server[..authority_end], database_name(dir))
}

fn connect(url: &str) -> Result<postgres::Client, BenchError> {
    postgres::Client::connect(url, postgres::NoTls).map_err(|e| {
        BenchError::Failed(format!(
            "cannot connect to PostgreSQL for the postgres sink ({URL_ENV} or {DEFAULT_SERVER_URL}): {}",
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

fn admin(dir: &Path, sql: &str) -> Result<(), BenchError> {
    let name = database_name(dir);
    connect(&server_url())?
        .batch_execute(&sql.replace("{name}", &name))
        .map_err(|e| BenchError::Failed(format!("database {name}: {}", describe(&e))))
}

/// Creates the run's database.
pub(crate) fn create_database(dir: &Path) -> Result<(), BenchError> {
    admin(dir, "CREATE DATABASE \"{name}\"")
}

/// Drops the run's database, even with sessions still connected.
pub(crate) fn drop_database(dir: &Path) -> Result<(), BenchError> {
    admin(dir, "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")
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
}
