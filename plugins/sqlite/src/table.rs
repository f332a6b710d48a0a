//! One destination table: its columns, the upsert statement text and value binding.

use std::collections::HashMap;

use flatsync_plugin_sdk::{FieldColumns, Row, SinkError};
use rusqlite::Connection;
use rusqlite::types::ValueRef;

use crate::sql_error;

/// The sink's own columns, first in every table.
pub(crate) const RESERVED_COLUMNS: [&str; 4] =
    ["_record_id", "_event_id", "_valid", "_received_at"];

/// When the record was deleted in Flatfile, under `deletions = "mark"`; NULL while it lives.
/// Reserved like the columns above, but only present in tables that have seen mark mode.
pub(crate) const DELETED_AT_COLUMN: &str = "_deleted_at";

/// Refuses kinds that would collide with the sink's or SQLite's own tables.
pub(crate) fn check_table_name(kind: &str) -> Result<(), SinkError> {
    let lower = kind.to_ascii_lowercase();
    if kind.is_empty() || lower.starts_with("_flatsync") || lower.starts_with("sqlite_") {
        return Err(SinkError::fatal(format!(
            "stream kind {kind:?} cannot be a table name: it is empty or starts with \
             `_flatsync` or `sqlite_`"
        )));
    }
    if kind.contains('\0') {
        return Err(SinkError::fatal(format!(
            "stream kind {kind:?} cannot be a table name: it contains a NUL character"
        )));
    }
    Ok(())
}

/// `"name"` with inner quotes doubled: safe for any text without NUL.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Which field columns a row sets, in the order of its values.
#[derive(Debug, Default)]
pub(crate) struct UpsertShape {
    /// Field column indexes, each once, in the row's order: what the statement text depends on.
    pub(crate) columns: Vec<usize>,
    /// For each entry of `columns`, the position of the value in the row.
    pub(crate) positions: Vec<usize>,
}

/// A table's field columns as committed to the database (plus any added by the open
/// transaction, which the caller forgets if it rolls back).
#[derive(Debug)]
pub(crate) struct Table {
    name: String,
    quoted: String,
    fields: FieldColumns,
    /// Lowercased name to column: SQLite treats `Email` and `email` as one column.
    folded: HashMap<String, usize>,
    /// Whether the table has the `_deleted_at` column, which every upsert then clears.
    has_deleted_at: bool,
    /// Per column, the row generation that last used it, to spot repeated keys in a row.
    seen_in_row: Vec<u64>,
    row_generation: u64,
}

impl Table {
    /// Creates the table if needed and reads its columns. With `mark_deletions` the table gets
    /// the `_deleted_at` column too.
    pub(crate) fn load(
        conn: &Connection,
        kind: &str,
        mark_deletions: bool,
    ) -> Result<Self, SinkError> {
        let quoted = quote(kind);
        let deleted_at = if mark_deletions {
            format!(",\n \"{DELETED_AT_COLUMN}\" TEXT")
        } else {
            String::new()
        };
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {quoted} (
                 \"_record_id\" TEXT PRIMARY KEY,
                 \"_event_id\" TEXT NOT NULL,
                 \"_valid\" INTEGER NOT NULL,
                 \"_received_at\" TEXT NOT NULL{deleted_at}
             )"
        ))
        .map_err(|error| sql_error(format!("table `{kind}`: cannot create"), error))?;
        let names = read_columns(conn, kind)?;
        Self::from_columns(conn, kind, names, mark_deletions)
    }

    /// Like [`load`](Self::load), but a table that does not exist stays so: `None`.
    pub(crate) fn load_existing(
        conn: &Connection,
        kind: &str,
        mark_deletions: bool,
    ) -> Result<Option<Self>, SinkError> {
        let names = read_columns(conn, kind)?;
        if names.is_empty() {
            return Ok(None);
        }
        Self::from_columns(conn, kind, names, mark_deletions).map(Some)
    }

    fn from_columns(
        conn: &Connection,
        kind: &str,
        names: Vec<String>,
        mark_deletions: bool,
    ) -> Result<Self, SinkError> {
        for reserved in RESERVED_COLUMNS {
            if !names.iter().any(|name| name.eq_ignore_ascii_case(reserved)) {
                return Err(SinkError::fatal(format!(
                    "table `{kind}` exists without the sink's column `{reserved}`; \
                     it was not created by this sink"
                )));
            }
        }
        let mut table = Self {
            name: kind.to_owned(),
            quoted: quote(kind),
            fields: FieldColumns::new(),
            folded: HashMap::new(),
            has_deleted_at: false,
            seen_in_row: Vec::new(),
            row_generation: 0,
        };
        for name in names {
            if name.eq_ignore_ascii_case(DELETED_AT_COLUMN) {
                table.has_deleted_at = true;
            } else if !is_reserved(&name) {
                table.remember(name);
            }
        }
        if mark_deletions && !table.has_deleted_at {
            // A table from before mark mode was configured: its rows are all alive.
            conn.execute_batch(&format!(
                "ALTER TABLE {} ADD COLUMN \"{DELETED_AT_COLUMN}\" TEXT",
                table.quoted
            ))
            .map_err(|error| {
                table.error(&format!("cannot add column `{DELETED_AT_COLUMN}`"), error)
            })?;
            table.has_deleted_at = true;
        }
        Ok(table)
    }

    fn remember(&mut self, name: String) -> usize {
        self.folded
            .insert(name.to_ascii_lowercase(), self.fields.len());
        let column = self.fields.push(name);
        self.seen_in_row.push(0);
        column
    }

    /// The column of field `key`, added to the table if new.
    pub(crate) fn column(&mut self, conn: &Connection, key: &str) -> Result<usize, SinkError> {
        if let Some(column) = self.fields.get(key) {
            return Ok(column);
        }
        if is_reserved(key) {
            return Err(SinkError::fatal(format!(
                "table `{}`: field key `{key}` clashes with the sink's column of that name",
                self.name
            )));
        }
        let folded = key.to_ascii_lowercase();
        if let Some(&other) = self.folded.get(&folded) {
            return Err(SinkError::fatal(format!(
                "table `{}`: field keys `{key}` and `{}` differ only in letter case, which \
                 SQLite column names ignore",
                self.name,
                self.fields.name(other)
            )));
        }
        if key.contains('\0') {
            return Err(SinkError::fatal(format!(
                "table `{}`: field key {key:?} contains a NUL character",
                self.name
            )));
        }
        conn.execute_batch(&format!(
            "ALTER TABLE {} ADD COLUMN {}",
            self.quoted,
            quote(key)
        ))
        .map_err(|error| self.error(&format!("cannot add column `{key}`"), error))?;
        Ok(self.remember(key.to_owned()))
    }

    fn column_at(
        &mut self,
        conn: &Connection,
        position: usize,
        key: &str,
    ) -> Result<usize, SinkError> {
        if let Some(column) = self.fields.at(position, key) {
            return Ok(column);
        }
        let column = self.column(conn, key)?;
        self.fields.remember_at(position, column);
        Ok(column)
    }

    /// Maps a row's keys to columns (adding new ones). A key repeated in the row keeps its
    /// last value, as a JSON parser would.
    pub(crate) fn shape_row(
        &mut self,
        conn: &Connection,
        row: &Row<'_>,
        shape: &mut UpsertShape,
    ) -> Result<(), SinkError> {
        shape.columns.clear();
        shape.positions.clear();
        self.row_generation += 1;
        for (position, (key, _)) in row.values.iter().enumerate() {
            let column = self.column_at(conn, position, key)?;
            if self.seen_in_row[column] == self.row_generation {
                let index = shape
                    .columns
                    .iter()
                    .position(|&seen| seen == column)
                    .expect("a column seen in this row is in its shape");
                shape.positions[index] = position;
            } else {
                self.seen_in_row[column] = self.row_generation;
                shape.columns.push(column);
                shape.positions.push(position);
            }
        }
        Ok(())
    }

    /// The upsert of `rows` rows setting the given field columns, in one `INSERT` with a
    /// `VALUES` list. `?1` is the event id and `?2` the time received, shared by every row;
    /// row `r` (from 0) then has its record id at `?(3 + r * w)`, its validity next and its
    /// field values after, where `w` is [`upsert_row_width`]. SQLite applies the rows in
    /// order, so a record repeated in the list is inserted and then updated, as by one
    /// statement per row.
    pub(crate) fn upsert_sql(&self, columns: &[usize], rows: usize) -> String {
        use std::fmt::Write as _;

        let names: Vec<String> = RESERVED_COLUMNS
            .iter()
            .map(|name| quote(name))
            .chain(
                columns
                    .iter()
                    .map(|&column| quote(self.fields.name(column))),
            )
            .collect();
        let width = upsert_row_width(columns.len());
        let mut values = String::with_capacity(rows * width * 8);
        for row in 0..rows {
            let first = 3 + row * width;
            let separator = if row == 0 { "" } else { ", " };
            // Writing to a String cannot fail.
            let _ = write!(values, "{separator}(?{first}, ?1, ?{}, ?2", first + 1);
            for value in first + 2..first + width {
                let _ = write!(values, ", ?{value}");
            }
            values.push(')');
        }
        let mut updates: Vec<String> = names[1..]
            .iter()
            .map(|name| format!("{name} = excluded.{name}"))
            .collect();
        if self.has_deleted_at {
            // A record written again after its deletion was re-created (or restored): alive.
            updates.push(format!("\"{DELETED_AT_COLUMN}\" = NULL"));
        }
        format!(
            "INSERT INTO {} ({}) VALUES {values} ON CONFLICT (\"_record_id\") DO UPDATE SET {}",
            self.quoted,
            names.join(", "),
            updates.join(", ")
        )
    }

    /// The name of field column `column`.
    pub(crate) fn field_name(&self, column: usize) -> &str {
        self.fields.name(column)
    }

    /// The table's name: its stream kind.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Removes the row of one record: `?1` is the record id.
    pub(crate) fn delete_sql(&self) -> String {
        format!("DELETE FROM {} WHERE \"_record_id\" = ?1", self.quoted)
    }

    /// Marks the row of one record deleted: `?1` is the time, `?2` the record id.
    pub(crate) fn mark_deleted_sql(&self) -> String {
        format!(
            "UPDATE {} SET \"{DELETED_AT_COLUMN}\" = ?1 WHERE \"_record_id\" = ?2",
            self.quoted
        )
    }

    /// A database error in the context of this table.
    pub(crate) fn error(&self, what: &str, error: rusqlite::Error) -> SinkError {
        sql_error(format!("table `{}`: {what}", self.name), error)
    }
}

fn is_reserved(name: &str) -> bool {
    RESERVED_COLUMNS
        .iter()
        .chain(&[DELETED_AT_COLUMN])
        .any(|reserved| reserved.eq_ignore_ascii_case(name))
}

/// The table's column names in order; none when there is no such table.
fn read_columns(conn: &Connection, kind: &str) -> Result<Vec<String>, SinkError> {
    conn.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
        .and_then(|mut statement| {
            statement
                .query_map([kind], |row| row.get(0))?
                .collect::<Result<_, _>>()
        })
        .map_err(|error| sql_error(format!("table `{kind}`: cannot read its columns"), error))
}

/// How many parameters an upsert binds per row setting `fields` field columns: the record
/// id, the validity and the values (the event id and the time are shared by all rows).
pub(crate) fn upsert_row_width(fields: usize) -> usize {
    2 + fields
}

pub(crate) fn number(text: &str) -> ValueRef<'static> {
    if !text.contains(['.', 'e', 'E'])
        && let Ok(integer) = text.parse::<i64>()
    {
        return ValueRef::Integer(integer);
    }
    // Valid JSON numbers always parse; a huge exponent becomes an infinity, as in SQLite.
    ValueRef::Real(text.parse().unwrap_or(f64::NAN))
}
