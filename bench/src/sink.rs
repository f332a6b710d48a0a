//! The sinks of the import cases, and how many rows each holds after a run.

use std::path::Path;

use crate::error::BenchError;
use crate::pg;

/// A built-in sink plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// `csv-folder`: one CSV file per stream.
    Csv,
    /// `sqlite`: one table per stream kind, durable at every checkpoint.
    Sqlite,
    /// `jsonl-folder`: one JSON Lines file per stream.
    Jsonl,
    /// `postgres`: one table per stream kind in a database of the run's own, on the server of
    /// `FLATSYNC_TEST_POSTGRES_URL` (default: the local one).
    Postgres,
}

impl Sink {
    /// Every sink, in table order.
    pub const ALL: [Sink; 4] = [Sink::Csv, Sink::Sqlite, Sink::Jsonl, Sink::Postgres];

    /// Its name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Sink::Csv => "csv",
            Sink::Sqlite => "sqlite",
            Sink::Jsonl => "jsonl",
            Sink::Postgres => "postgres",
        }
    }

    pub(crate) fn plugin(self) -> &'static str {
        match self {
            Sink::Csv => "csv-folder",
            Sink::Sqlite => "sqlite",
            Sink::Jsonl => "jsonl-folder",
            Sink::Postgres => "postgres",
        }
    }

    /// Its `config` table, writing under `dir`.
    pub(crate) fn config(self, dir: &Path) -> String {
        let quote = |p: &Path| serde_json::Value::from(p.to_string_lossy()).to_string();
        match self {
            Sink::Csv | Sink::Jsonl => format!("{{ dir = {} }}", quote(&self.output(dir))),
            Sink::Sqlite => format!("{{ path = {} }}", quote(&self.output(dir))),
            Sink::Postgres => {
                let url = serde_json::Value::from(pg::database_url(dir)).to_string();
                format!("{{ url = {url} }}")
            }
        }
    }

    /// Makes what the sink writes into for a run in `dir`: the postgres sink's database.
    pub(crate) fn prepare(self, dir: &Path) -> Result<(), BenchError> {
        match self {
            Sink::Postgres => pg::create_database(dir),
            Sink::Csv | Sink::Sqlite | Sink::Jsonl => Ok(()),
        }
    }

    /// Removes what [`prepare`](Self::prepare) made; the folder sinks' output goes with `dir`.
    pub(crate) fn clean_up(self, dir: &Path) -> Result<(), BenchError> {
        match self {
            Sink::Postgres => pg::drop_database(dir),
            Sink::Csv | Sink::Sqlite | Sink::Jsonl => Ok(()),
        }
    }

    fn output(self, dir: &Path) -> std::path::PathBuf {
        match self {
            Sink::Csv => dir.join("out-csv"),
            // In a folder of its own, as the others' output is, away from the config file.
            Sink::Sqlite => dir.join("out-sqlite").join("out.db"),
            Sink::Jsonl => dir.join("out-jsonl"),
            Sink::Postgres => dir.to_owned(),
        }
    }

    /// Rows the sink holds after a run in `dir`: records of the complete `.csv` files (each
    /// starts with a header), lines of the complete `.jsonl` files, or rows of `table`
    /// (`SELECT count(*)`).
    pub(crate) fn rows(self, dir: &Path, table: &str) -> Result<u64, BenchError> {
        let output = self.output(dir);
        match self {
            Sink::Csv => sum_files(&output, "csv", |path| {
                let mut reader = csv::Reader::from_path(path).map_err(|e| {
                    BenchError::Failed(format!("cannot read {}: {e}", path.display()))
                })?;
                let mut rows = 0;
                for record in reader.records() {
                    record.map_err(|e| {
                        BenchError::Failed(format!("bad CSV in {}: {e}", path.display()))
                    })?;
                    rows += 1;
                }
                Ok(rows)
            }),
            Sink::Jsonl => sum_files(&output, "jsonl", |path| {
                let bytes = std::fs::read(path)
                    .map_err(BenchError::io(format!("cannot read {}", path.display())))?;
                Ok(bytes.iter().filter(|&&b| b == b'\n').count() as u64)
            }),
            Sink::Sqlite => {
                let db = rusqlite::Connection::open(&output).map_err(|e| {
                    BenchError::Failed(format!("cannot open {}: {e}", output.display()))
                })?;
                let quoted = format!("\"{}\"", table.replace('"', "\"\""));
                db.query_row(&format!("SELECT count(*) FROM {quoted}"), [], |row| {
                    row.get::<_, i64>(0)
                })
                .map(|rows| rows as u64)
                .map_err(|e| {
                    BenchError::Failed(format!("cannot count {table} in {}: {e}", output.display()))
                })
            }
            Sink::Postgres => pg::count_rows(dir, table),
        }
    }
}

/// Lines of a JSON Lines folder sink's complete files and of its open streams' partial files
/// (`.<stream>.jsonl.partial`). Event rows share streams that close only when their window
/// has ended, so right after a drain they sit in partial files; each batch there was flushed
/// before its events were settled, so its lines are durable.
pub(crate) fn jsonl_rows_with_open_streams(dir: &Path) -> Result<u64, BenchError> {
    let output = Sink::Jsonl.output(dir);
    let lines = |path: &Path| {
        let bytes = std::fs::read(path)
            .map_err(BenchError::io(format!("cannot read {}", path.display())))?;
        Ok(bytes.iter().filter(|&&b| b == b'\n').count() as u64)
    };
    Ok(sum_files(&output, "jsonl", lines)? + sum_files(&output, "partial", lines)?)
}

/// `count` summed over the files of `dir` ending in `.extension` (a missing folder holds none).
fn sum_files(
    dir: &Path,
    extension: &str,
    count: impl Fn(&Path) -> Result<u64, BenchError>,
) -> Result<u64, BenchError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(BenchError::io(format!("cannot list {}", dir.display()))(e)),
    };
    let mut total = 0;
    for entry in entries {
        let path = entry
            .map_err(BenchError::io(format!("cannot list {}", dir.display())))?
            .path();
        if path.is_file() && path.extension().is_some_and(|e| e == extension) {
            total += count(&path)?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_sinks_count_complete_files_only() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let csv_dir = dir.path().join("out-csv");
        std::fs::create_dir_all(&csv_dir).expect("mkdir");
        std::fs::write(csv_dir.join("a.csv"), "_id,x\n1,\"two\nlines\"\n2,b\n").expect("write");
        std::fs::write(csv_dir.join("b.csv"), "_id,x\n3,c\n").expect("write");
        std::fs::write(csv_dir.join(".b.csv.tmp"), "_id,x\n4,d\n").expect("write");
        assert_eq!(Sink::Csv.rows(dir.path(), "ignored").expect("count"), 3);
        let jsonl_dir = dir.path().join("out-jsonl");
        std::fs::create_dir_all(&jsonl_dir).expect("mkdir");
        std::fs::write(jsonl_dir.join("a.jsonl"), "{}\n{}\n").expect("write");
        assert_eq!(Sink::Jsonl.rows(dir.path(), "ignored").expect("count"), 2);
        std::fs::write(jsonl_dir.join(".events-space.jsonl.partial"), "{}\n").expect("write");
        assert_eq!(Sink::Jsonl.rows(dir.path(), "ignored").expect("count"), 2);
        assert_eq!(jsonl_rows_with_open_streams(dir.path()).expect("count"), 3);
        assert_eq!(
            Sink::Jsonl
                .rows(&dir.path().join("none"), "x")
                .expect("count"),
            0
        );
    }
}
