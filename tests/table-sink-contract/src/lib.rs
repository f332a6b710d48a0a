//! What every flatsync table sink promises, as test scenarios run against any of them.
//!
//! The `sqlite` and `postgres` sinks keep one table per stream kind, upserted by record id,
//! exactly once per batch, with the same deletion modes. Each sink's tests implement
//! [`TableSink`] for a fixture of their own (a temporary file, a test database) and call
//! [`table_sink_scenarios!`] once; what is specific to one database (WAL, locks, connection
//! loss, value types) stays in that sink's tests.
//!
//! The scenarios read tables back through [`TableSink::query`] as text, so one expectation
//! serves both databases; where they print a value differently (booleans, times) the
//! expectation goes through [`TableSink::shown_bool`] and [`TableSink::shown_time`].
//!
//! [`Delivery`], [`row`], [`deleted`], [`deletion`] and [`send`] build and send batches as the
//! host would; the sinks' own tests use them too.
//!
//! Helpers panic with a message instead of returning errors: they run only inside tests.

pub mod scenarios;

use std::collections::BTreeMap;

use flatsync_plugin_sdk::{Batch, BatchParts, Sink, SinkError};

/// When the records of the default [`Delivery`] were received, in Unix milliseconds.
pub const RECEIVED_MS: i64 = 1_714_658_591_517;

/// [`RECEIVED_MS`] in RFC 3339, as [`TableSink::shown_time`] takes it.
pub const RECEIVED: &str = "2024-05-02T14:03:11.517Z";

/// A day after [`RECEIVED_MS`]: when [`deletion`] batches and later events were received.
pub const LATER_MS: i64 = 1_714_744_991_517;

/// [`LATER_MS`] in RFC 3339.
pub const LATER: &str = "2024-05-03T14:03:11.517Z";

/// A table's rows as the test reads them back: record id, then column name to value as text
/// (`None` for NULL). The sink's own columns (`_record_id`, `_valid`...) are included.
pub type TableRows = BTreeMap<String, BTreeMap<String, Option<String>>>;

/// One row of the sink's `_flatsync_streams` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRow {
    /// The stream's name.
    pub stream: String,
    /// Its kind: the table it writes to.
    pub kind: String,
    /// The last batch seq applied.
    pub applied_seq: u64,
    /// Whether the batch marked `last` was applied.
    pub complete: bool,
}

impl StreamRow {
    /// A row from its parts.
    pub fn new(stream: &str, kind: &str, applied_seq: u64, complete: bool) -> Self {
        Self {
            stream: stream.to_owned(),
            kind: kind.to_owned(),
            applied_seq,
            complete,
        }
    }
}

/// What an error message must be.
#[derive(Debug, Clone)]
pub enum Message {
    /// Exactly this text.
    Is(String),
    /// This text, then anything (a database's own words, which vary by version).
    StartsWith(String),
}

impl Message {
    /// Panics unless `actual` is what `self` says.
    pub fn assert_matches(&self, actual: &str) {
        match self {
            Self::Is(expected) => assert_eq!(actual, expected),
            Self::StartsWith(prefix) => {
                assert!(actual.starts_with(prefix.as_str()), "{actual}")
            }
        }
    }
}

/// A table sink under test with a destination of its own, empty at first, that every sink
/// this fixture makes writes to.
pub trait TableSink {
    /// The sink's type.
    type Sink: Sink;

    /// A new instance with `deletions = "delete"` (the default).
    fn sink(&self) -> Self::Sink;

    /// A new instance with `deletions = "mark"`.
    fn marking_sink(&self) -> Self::Sink;

    /// Every value of the rows `sql` returns as text, NULL as `None`: the database's own
    /// query, on a connection of the test's.
    fn query(&self, sql: &str) -> Vec<Vec<Option<String>>>;

    /// The column names of table `name`, in the table's order; none when there is no table.
    fn columns(&self, name: &str) -> Vec<String>;

    /// How `_valid` reads back for `value`.
    fn shown_bool(&self, value: bool) -> &'static str;

    /// How `_received_at` and `_deleted_at` read back for an RFC 3339 UTC time such as
    /// [`RECEIVED`].
    fn shown_time(&self, rfc3339: &str) -> String;

    /// Stream kinds the database cannot take as a table name, besides the empty one and those
    /// starting with `_flatsync`, which every table sink refuses.
    fn unusable_kinds(&self) -> Vec<String>;

    /// Field values (a JSON object) whose keys this database refuses with a fatal error, and
    /// the message; every table sink also refuses the names of its own columns.
    fn refused_keys(&self) -> Vec<(String, Message)>;

    /// Like [`query`](Self::query), with NULL as `"NULL"`: the form tests compare.
    fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        self.query(sql)
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|value| value.unwrap_or_else(|| "NULL".to_owned()))
                    .collect()
            })
            .collect()
    }

    /// The rows of table `name`; `None` when there is no such table.
    fn table(&self, name: &str) -> Option<TableRows> {
        let columns = self.columns(name);
        if columns.is_empty() {
            return None;
        }
        // Both databases quote identifiers the standard way.
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let rows = self.query(&format!("SELECT * FROM {quoted}"));
        Some(
            rows.into_iter()
                .map(|values| {
                    let values: BTreeMap<String, Option<String>> =
                        columns.iter().cloned().zip(values).collect();
                    let id = values
                        .get("_record_id")
                        .cloned()
                        .flatten()
                        .expect("every row has a record id");
                    (id, values)
                })
                .collect(),
        )
    }

    /// The rows of `_flatsync_streams`, ordered by stream.
    fn streams(&self) -> Vec<StreamRow> {
        let complete = self.shown_bool(true);
        self.rows("SELECT stream, kind, applied_seq, complete FROM _flatsync_streams ORDER BY 1")
            .into_iter()
            .map(|row| StreamRow {
                applied_seq: row[2].parse().expect("applied_seq is a number"),
                complete: row[3] == complete,
                stream: row[0].clone(),
                kind: row[1].clone(),
            })
            .collect()
    }
}

/// The values of `columns` in each row of `table`, by record id, NULL as `"NULL"`. Panics
/// when there is no such table.
pub fn select(fx: &impl TableSink, table: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let rows = fx
        .table(table)
        .unwrap_or_else(|| panic!("there is no table `{table}`"));
    rows.values()
        .map(|values| {
            columns
                .iter()
                .map(|&column| match values.get(column) {
                    Some(Some(value)) => value.clone(),
                    Some(None) => "NULL".to_owned(),
                    None => panic!("table `{table}` has no column `{column}`"),
                })
                .collect()
        })
        .collect()
}

/// How many rows `table` has. Panics when there is no such table.
pub fn count(fx: &impl TableSink, table: &str) -> usize {
    fx.table(table)
        .unwrap_or_else(|| panic!("there is no table `{table}`"))
        .len()
}

/// One NDJSON line of a batch: record `id`, its validity and its `values` (a JSON object).
pub fn row(id: &str, valid: bool, values: &str) -> String {
    format!("{{\"id\":\"{id}\",\"valid\":{valid},\"values\":{values}}}\n")
}

/// A deletion row, as the host sends it.
pub fn deleted(id: &str) -> String {
    row(id, true, "{}")
}

/// The header of a batch; the default is seq 0 of stream `contacts-ev1`, kind `contacts`,
/// received at [`RECEIVED_MS`].
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The stream's name.
    pub stream: &'a str,
    /// The stream's kind: the table.
    pub kind: &'a str,
    /// The Flatfile event the stream carries.
    pub event_id: &'a str,
    /// The sheet's field keys, a JSON array.
    pub fields: &'a str,
    /// The batch's position in its stream.
    pub seq: u64,
    /// Whether it is the stream's last batch.
    pub last: bool,
    /// Whether its rows are deletions.
    pub deletions: bool,
    /// When the event was received, in Unix milliseconds.
    pub received_at_ms: i64,
}

impl Default for Delivery<'_> {
    fn default() -> Self {
        Self {
            stream: "contacts-ev1",
            kind: "contacts",
            event_id: "ev1",
            fields: "[]",
            seq: 0,
            last: false,
            deletions: false,
            received_at_ms: RECEIVED_MS,
        }
    }
}

/// A batch of deletion stream `stream` of kind `contacts` for event `event_id`, received at
/// [`LATER_MS`].
pub fn deletion<'a>(event_id: &'a str, stream: &'a str, seq: u64, last: bool) -> Delivery<'a> {
    Delivery {
        stream,
        event_id,
        seq,
        last,
        deletions: true,
        received_at_ms: LATER_MS,
        ..Delivery::default()
    }
}

/// Sends `rows` to `sink` as one batch with the header `how`.
pub fn send<S: Sink>(sink: &mut S, how: Delivery<'_>, rows: &[String]) -> Result<(), SinkError> {
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

/// One `#[test]` per scenario of [`scenarios`], each on a fresh fixture made by `$fixture`
/// (an expression of a type implementing [`TableSink`]), in the module where it is called.
#[macro_export]
macro_rules! table_sink_scenarios {
    ($fixture:expr) => {
        $crate::table_sink_scenarios!(@each $fixture;
            redelivery_upserts_without_duplicates,
            applied_seq_survives_reopening_and_a_complete_stream_takes_nothing,
            columns_follow_schema_then_first_seen_and_grow_later,
            new_columns_follow_the_rows_order_not_their_ids,
            a_row_updates_only_the_columns_it_has_and_repeated_ids_apply_in_order,
            reserved_keys_are_fatal_and_roll_back,
            gap_is_fatal,
            empty_stream_creates_the_table_and_completes,
            unusable_table_names_are_fatal,
            an_update_stream_after_a_create_stream_upserts_the_record,
            deletions_remove_rows_exactly_once_across_a_restart,
            mark_mode_keeps_the_rows_and_an_upsert_clears_the_mark,
            mark_mode_adds_deleted_at_to_an_existing_table,
            deletions_of_a_kind_without_a_table_create_nothing,
            a_failed_deletion_batch_deletes_nothing_and_can_be_sent_again,
        );
    };
    (@each $fixture:expr; $($scenario:ident),* $(,)?) => {
        $(
            #[test]
            fn $scenario() {
                $crate::scenarios::$scenario(&$fixture);
            }
        )*
    };
}
