//! Reading what the sinks wrote and comparing it with what the simulator served.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::daemon::open_read_only;
use crate::sim::SourceRow;

/// How often each record id was seen in a sink.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Record id -> times seen.
    pub seen: HashMap<String, u64>,
}

/// `expected` compared with a [`Tally`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Expected ids never seen.
    pub lost: Vec<String>,
    /// Ids seen more than once, with the count.
    pub duplicated: Vec<(String, u64)>,
    /// Ids seen but not expected.
    pub unexpected: Vec<String>,
}

impl Comparison {
    /// Whether every expected id was seen exactly once and nothing else was.
    pub fn is_exact(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.unexpected.is_empty()
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sample = |ids: Vec<String>| ids.into_iter().take(5).collect::<Vec<_>>().join(", ");
        write!(
            f,
            "lost {} [{}], duplicated {} [{}], unexpected {} [{}]",
            self.lost.len(),
            sample(self.lost.clone()),
            self.duplicated.len(),
            sample(
                self.duplicated
                    .iter()
                    .map(|(id, n)| format!("{id} x{n}"))
                    .collect()
            ),
            self.unexpected.len(),
            sample(self.unexpected.clone()),
        )
    }
}

impl Tally {
    /// Total rows seen, duplicates included.
    pub fn total(&self) -> u64 {
        self.seen.values().sum()
    }

    /// Compares with the expected ids.
    pub fn compare<S: AsRef<str>>(&self, expected: &[S]) -> Comparison {
        let expected: HashSet<&str> = expected.iter().map(AsRef::as_ref).collect();
        let mut lost: Vec<String> = expected
            .iter()
            .filter(|id| !self.seen.contains_key(**id))
            .map(|id| (*id).to_owned())
            .collect();
        let mut duplicated: Vec<(String, u64)> = self
            .seen
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| (id.clone(), *n))
            .collect();
        let mut unexpected: Vec<String> = self
            .seen
            .keys()
            .filter(|id| !expected.contains(id.as_str()))
            .cloned()
            .collect();
        lost.sort();
        duplicated.sort();
        unexpected.sort();
        Comparison {
            lost,
            duplicated,
            unexpected,
        }
    }

    /// Asserts every expected id was seen exactly once and nothing else: lost, duplicated and
    /// unexpected are all 0.
    pub fn assert_exactly<S: AsRef<str>>(&self, expected: &[S], what: &str) {
        let comparison = self.compare(expected);
        assert!(
            comparison.is_exact(),
            "{what}: expected {} rows exactly once, saw {} rows: {comparison}",
            expected.len(),
            self.total()
        );
    }
}

/// A CSV file read back with the csv crate.
#[derive(Clone, Debug)]
pub struct CsvFile {
    /// The file.
    pub path: PathBuf,
    /// The header row.
    pub headers: Vec<String>,
    /// The data rows.
    pub records: Vec<Vec<String>>,
}

impl CsvFile {
    /// Reads a whole file; panics naming the file when it is not valid CSV.
    pub fn read(path: &Path) -> CsvFile {
        let (mut reader, headers) = open_csv(path, false);
        let records = reader
            .records()
            .enumerate()
            .map(|(i, record)| {
                record
                    .unwrap_or_else(|e| {
                        panic!("{} record {i} is not valid CSV: {e}", path.display())
                    })
                    .iter()
                    .map(str::to_owned)
                    .collect()
            })
            .collect();
        CsvFile {
            path: path.to_path_buf(),
            headers,
            records,
        }
    }

    /// Index of a column.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.headers.iter().position(|h| h == name)
    }

    /// The whole records of a partial file the sink may be writing, or cutting back after a
    /// write a full disk stopped halfway: such a torn record is not counted, and can only be
    /// the last (panics naming the file otherwise).
    pub fn whole_records_of_partial(path: &Path) -> u64 {
        let (mut reader, headers) = open_csv(path, true);
        let mut whole = 0;
        let mut torn = None;
        for (index, record) in reader.records().enumerate() {
            if let Some(torn) = torn {
                panic!(
                    "{}: record {torn} is cut short, yet record {index} follows it",
                    path.display()
                );
            }
            match record {
                Ok(record) if record.len() >= headers.len() => whole += 1,
                _ => torn = Some(index),
            }
        }
        whole
    }
}

/// A CSV file opened and its header read; panics naming the file when either fails.
/// `flexible` lets records have other lengths than the header.
fn open_csv(path: &Path, flexible: bool) -> (csv::Reader<std::fs::File>, Vec<String>) {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(flexible)
        .from_path(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let headers = reader
        .headers()
        .unwrap_or_else(|e| panic!("{} has no valid header: {e}", path.display()))
        .iter()
        .map(str::to_owned)
        .collect();
    (reader, headers)
}

/// The finished CSV files of a csv-folder directory, by file name.
pub fn csv_files(dir: &Path) -> BTreeMap<String, CsvFile> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list the CSV directory {}: {e}", dir.display()));
    let mut files = BTreeMap::new();
    for entry in entries {
        let path = entry.expect("readable directory entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 file names")
            .to_owned();
        if !name.starts_with('.') && name.ends_with(".csv") {
            files.insert(name, CsvFile::read(&path));
        }
    }
    files
}

/// Names of in-progress files (`.partial`, `.state`, temporaries) left in a csv-folder
/// directory.
pub fn csv_leftovers(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|name| !name.ends_with(".csv") || name.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Asserts a csv-folder directory holds no in-progress files: call it once the events are done.
pub fn assert_no_csv_leftovers(dir: &Path) {
    let leftovers = csv_leftovers(dir);
    assert!(
        leftovers.is_empty(),
        "{} holds in-progress files after every event finished: {leftovers:?}",
        dir.display()
    );
}

/// Record id counts over every finished CSV file of a csv-folder sink (column `_id`). Also
/// asserts the sink left no in-progress files behind: call it once the events are done.
pub fn csv_rows(dir: &Path) -> Tally {
    assert_no_csv_leftovers(dir);
    let mut tally = Tally::default();
    for (name, file) in csv_files(dir) {
        let id = file
            .column("_id")
            .unwrap_or_else(|| panic!("{name} has no _id column: {:?}", file.headers));
        for record in &file.records {
            *tally.seen.entry(record[id].clone()).or_default() += 1;
        }
    }
    tally
}

/// The user tables of an sqlite sink database (not `_flatsync*`, not `sqlite_*`).
pub fn sqlite_tables(db: &Path) -> Vec<String> {
    let conn = open_read_only(db)
        .unwrap_or_else(|| panic!("cannot open the sink database {}", db.display()));
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .expect("sqlite_master is readable");
    let names: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .expect("sqlite_master query")
        .filter_map(Result::ok)
        .collect();
    names
        .into_iter()
        .filter(|n| !n.starts_with("_flatsync") && !n.starts_with("sqlite_"))
        .collect()
}

/// Record id counts over every user table of an sqlite sink database (column `_record_id`).
pub fn sqlite_rows(db: &Path) -> Tally {
    let conn = open_read_only(db)
        .unwrap_or_else(|| panic!("cannot open the sink database {}", db.display()));
    let mut tally = Tally::default();
    for table in sqlite_tables(db) {
        let mut stmt = conn
            .prepare(&format!("SELECT _record_id FROM {}", quote_ident(&table)))
            .unwrap_or_else(|e| panic!("table {table} has no _record_id column: {e}"));
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .expect("query runs");
        for id in ids {
            *tally
                .seen
                .entry(id.expect("_record_id is text"))
                .or_default() += 1;
        }
    }
    tally
}

/// Rows of one table by `_record_id`: column name -> value, for value checks.
pub fn sqlite_table(db: &Path, table: &str) -> HashMap<String, HashMap<String, SqlValue>> {
    let conn = open_read_only(db)
        .unwrap_or_else(|| panic!("cannot open the sink database {}", db.display()));
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM {}", quote_ident(table)))
        .unwrap_or_else(|e| panic!("cannot read table {table}: {e}"));
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let mut rows = HashMap::new();
    let mut query = stmt.query([]).expect("query runs");
    while let Some(row) = query.next().expect("row readable") {
        let mut values = HashMap::new();
        for (i, name) in columns.iter().enumerate() {
            let value = match row.get_ref(i).expect("column readable") {
                ValueRef::Null => SqlValue::Null,
                ValueRef::Integer(n) => SqlValue::Integer(n),
                ValueRef::Real(x) => SqlValue::Real(x),
                ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
            };
            values.insert(name.clone(), value);
        }
        let id = match values.get("_record_id") {
            Some(SqlValue::Text(id)) => id.clone(),
            other => panic!("table {table} has a row whose _record_id is {other:?}"),
        };
        rows.insert(id, values);
    }
    rows
}

/// An SQLite value as stored.
#[derive(Clone, Debug, PartialEq)]
pub enum SqlValue {
    /// NULL.
    Null,
    /// INTEGER.
    Integer(i64),
    /// REAL.
    Real(f64),
    /// TEXT.
    Text(String),
    /// BLOB.
    Blob(Vec<u8>),
}

/// `PRAGMA integrity_check` of a database; `"ok"` when sound.
pub fn integrity_check(db: &Path) -> String {
    let conn = open_read_only(db)
        .unwrap_or_else(|| panic!("cannot open {} for an integrity check", db.display()));
    let lines: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect())
        })
        .unwrap_or_else(|e| vec![format!("integrity_check failed to run: {e}")]);
    lines.join("\n")
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// What a JSON value from the source should look like in a sink.
enum Expected {
    Null,
    Bool(bool),
    /// The exact JSON text of the number.
    Number(String),
    String(String),
    /// An array or object.
    Json(Value),
}

fn expected(raw: &RawValue) -> Expected {
    let value: Value = serde_json::from_str(raw.get()).expect("the simulator serves valid JSON");
    match value {
        Value::Null => Expected::Null,
        Value::Bool(b) => Expected::Bool(b),
        Value::Number(_) => Expected::Number(raw.get().trim().to_owned()),
        Value::String(s) => Expected::String(s),
        json @ (Value::Array(_) | Value::Object(_)) => Expected::Json(json),
    }
}

/// The text the csv-folder sink writes for a value (formula neutralisation off).
fn csv_cell_matches(raw: &RawValue, cell: &str) -> bool {
    match expected(raw) {
        Expected::Null => cell.is_empty(),
        Expected::Bool(b) => cell == if b { "true" } else { "false" },
        Expected::Number(text) => cell == text,
        Expected::String(s) => cell == s,
        Expected::Json(json) => serde_json::from_str::<Value>(cell).is_ok_and(|v| v == json),
    }
}

/// The value the sqlite sink stores for a JSON value.
fn sql_value_matches(raw: &RawValue, stored: &SqlValue) -> bool {
    match (expected(raw), stored) {
        (Expected::Null, SqlValue::Null) => true,
        (Expected::Bool(b), SqlValue::Integer(n)) => *n == i64::from(b),
        (Expected::Number(text), SqlValue::Integer(n)) => text.parse::<i64>() == Ok(*n),
        (Expected::Number(text), SqlValue::Real(x)) => {
            text.parse::<i64>().is_err() && text.parse::<f64>().is_ok_and(|want| want == *x)
        }
        (Expected::String(s), SqlValue::Text(t)) => s == *t,
        (Expected::Json(json), SqlValue::Text(t)) => {
            serde_json::from_str::<Value>(t).is_ok_and(|v| v == json)
        }
        _ => false,
    }
}

/// Asserts that a CSV file holds exactly `rows`, in any order, with every cell equal to the
/// source's value (read back through the csv crate, so quoting must have survived), and that
/// its header starts with `_id,_valid`.
pub fn assert_csv_matches(file: &CsvFile, rows: &[SourceRow]) {
    assert_eq!(
        file.headers.get(..2),
        Some(&["_id".to_owned(), "_valid".to_owned()][..]),
        "{}: header starts {:?}",
        file.path.display(),
        file.headers
    );
    assert_eq!(
        file.records.len(),
        rows.len(),
        "{}: row count",
        file.path.display()
    );
    let by_id: HashMap<&str, &Vec<String>> =
        file.records.iter().map(|r| (r[0].as_str(), r)).collect();
    let mut problems = String::new();
    let mut count = 0;
    for row in rows {
        let Some(record) = by_id.get(row.id.as_str()) else {
            count += 1;
            let _ = writeln!(problems, "row {} missing", row.id);
            continue;
        };
        let valid = if row.valid { "true" } else { "false" };
        if record[1] != valid {
            count += 1;
            let _ = writeln!(
                problems,
                "row {}: _valid {:?}, want {valid}",
                row.id, record[1]
            );
        }
        for (key, raw) in &row.values {
            let cell = file
                .column(key)
                .and_then(|i| record.get(i))
                .map_or("<no column>", String::as_str);
            if !csv_cell_matches(raw, cell) {
                count += 1;
                if count <= 20 {
                    let _ = writeln!(
                        problems,
                        "row {} column {key}: CSV has {cell:?}, source has {}",
                        row.id,
                        raw.get()
                    );
                }
            }
        }
    }
    assert!(
        count == 0,
        "{}: {count} cells differ from the source:\n{problems}",
        file.path.display()
    );
}

/// Asserts that table `table` of an sqlite sink holds every row of `rows` with the value types
/// and values the sink promises (TEXT, INTEGER, REAL, 0/1, NULL, JSON text), and `_event_id`.
pub fn assert_sqlite_matches(db: &Path, table: &str, event_id: &str, rows: &[SourceRow]) {
    let stored = sqlite_table(db, table);
    let mut problems = String::new();
    let mut count = 0;
    for row in rows {
        let Some(values) = stored.get(&row.id) else {
            count += 1;
            let _ = writeln!(problems, "row {} missing", row.id);
            continue;
        };
        let mut check = |column: &str, ok: bool, got: Option<&SqlValue>, want: &str| {
            if !ok {
                count += 1;
                if count <= 20 {
                    let _ = writeln!(
                        problems,
                        "row {} column {column}: stored {got:?}, source has {want}",
                        row.id
                    );
                }
            }
        };
        let valid = values.get("_valid");
        check(
            "_valid",
            valid == Some(&SqlValue::Integer(i64::from(row.valid))),
            valid,
            &row.valid.to_string(),
        );
        let event = values.get("_event_id");
        check(
            "_event_id",
            event == Some(&SqlValue::Text(event_id.to_owned())),
            event,
            event_id,
        );
        for (key, raw) in &row.values {
            let got = values.get(key);
            check(
                key,
                got.is_some_and(|v| sql_value_matches(raw, v)),
                got,
                raw.get(),
            );
        }
    }
    assert!(
        count == 0,
        "{} table {table}: {count} values differ from the source:\n{problems}",
        db.display()
    );
}

/// The `values` object of a source row as a sink that copies each value's JSON text writes it:
/// `{"<key>":<value>,...}` in the source's key order.
pub fn values_json(row: &SourceRow) -> String {
    let pairs: Vec<String> = row
        .values
        .iter()
        .map(|(key, raw)| {
            let key = serde_json::to_string(key).expect("a string serialises");
            format!("{key}:{}", raw.get())
        })
        .collect();
    format!("{{{}}}", pairs.join(","))
}

/// A source row as a batch line: `{"id":"..","valid":..,"values":{..}}`.
pub fn row_json(row: &SourceRow) -> String {
    format!(
        "{{\"id\":{},\"valid\":{},\"values\":{}}}",
        serde_json::to_string(&row.id).expect("a string serialises"),
        row.valid,
        values_json(row)
    )
}

/// The finished files of a jsonl-folder directory (`*.jsonl`, not dot-files), by file name,
/// as lines without their line breaks. Panics on a last line without a line break.
pub fn jsonl_files(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list the JSONL directory {}: {e}", dir.display()));
    let mut files = BTreeMap::new();
    for entry in entries {
        let path = entry.expect("readable directory entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 file names")
            .to_owned();
        if !name.starts_with('.') && name.ends_with(".jsonl") {
            files.insert(name, read_lines(&path));
        }
    }
    files
}

/// Names of in-progress files (`.partial`, `.state`, temporaries) left in a jsonl-folder
/// directory.
pub fn jsonl_leftovers(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|name| !name.ends_with(".jsonl") || name.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// The lines of a text file, each of which must end with a line break.
pub fn read_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{}: the last line has no line break",
        path.display()
    );
    text.lines().map(str::to_owned).collect()
}

/// Record id counts over JSON lines that carry an `"id"` string.
pub fn line_ids<'a>(lines: impl IntoIterator<Item = &'a String>) -> Tally {
    #[derive(serde::Deserialize)]
    struct WithId {
        id: String,
    }
    let mut tally = Tally::default();
    for line in lines {
        let row: WithId = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line with an id ({e}): {line}"));
        *tally.seen.entry(row.id).or_default() += 1;
    }
    tally
}

/// Asserts two lists of lines are equal, reporting the first difference readably.
pub fn assert_same_lines(what: &str, got: &[String], want: &[String]) {
    if let Some(index) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
        panic!(
            "{what}: {} lines, want {}; first difference at line {}:\n got: {}\nwant: {}",
            got.len(),
            want.len(),
            index + 1,
            got.get(index).map_or("<none>", String::as_str),
            want.get(index).map_or("<none>", String::as_str),
        );
    }
}
