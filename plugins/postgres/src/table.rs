//! One destination table: its columns, the DDL that creates and widens it, and the statements
//! that write to it.

use flatsync_plugin_sdk::{FieldColumns, Row, SinkError};
use postgres::Transaction;

use crate::config::check_identifier;
use crate::pg_error;

/// The sink's own columns, first in every table.
pub(crate) const RESERVED_COLUMNS: [&str; 4] =
    ["_record_id", "_event_id", "_valid", "_received_at"];

/// When the record was deleted in Flatfile, under `deletions = "mark"`; NULL while it lives.
/// Reserved like the columns above, but only present in tables that have seen mark mode.
pub(crate) const DELETED_AT_COLUMN: &str = "_deleted_at";

/// Refuses kinds that cannot be a table name, or would be the sink's own table.
pub(crate) fn check_table_name(kind: &str) -> Result<(), SinkError> {
    check_identifier(kind).map_err(|problem| {
        SinkError::fatal(format!("stream kind cannot be a table name: it {problem}"))
    })?;
    if kind.to_ascii_lowercase().starts_with("_flatsync") {
        return Err(SinkError::fatal(format!(
            "stream kind {kind:?} cannot be a table name: names starting with `_flatsync` \
             are the sink's own"
        )));
    }
    Ok(())
}

/// `"name"` with inner quotes doubled: safe for any text without NUL.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A table's field columns as committed to the database (plus any added by the open
/// transaction, which the caller forgets if it rolls back).
#[derive(Debug)]
pub(crate) struct Table {
    name: String,
    /// `"schema"."table"`.
    qualified: String,
    schema: String,
    fields: FieldColumns,
    /// Whether the table has the `_deleted_at` column, which every upsert then clears.
    has_deleted_at: bool,
}

impl Table {
    /// Creates the table if needed and reads its columns. With `mark_deletions` the table gets
    /// the `_deleted_at` column too.
    pub(crate) fn load(
        tx: &mut Transaction<'_>,
        schema: &str,
        kind: &str,
        mark_deletions: bool,
    ) -> Result<Self, SinkError> {
        lock_ddl(tx, schema, kind)?;
        let mut names = read_columns(tx, schema, kind)?;
        if names.is_empty() {
            let deleted_at = if mark_deletions {
                format!(", \"{DELETED_AT_COLUMN}\" TIMESTAMPTZ")
            } else {
                String::new()
            };
            tx.batch_execute(&format!(
                "CREATE TABLE {}.{} (
                     \"_record_id\" TEXT PRIMARY KEY,
                     \"_event_id\" TEXT NOT NULL,
                     \"_valid\" BOOLEAN NOT NULL,
                     \"_received_at\" TIMESTAMPTZ NOT NULL{deleted_at}
                 )",
                quote(schema),
                quote(kind)
            ))
            .map_err(|error| pg_error(format!("table `{kind}`: cannot create"), &error))?;
            names = read_columns(tx, schema, kind)?;
        }
        Self::from_columns(tx, schema, kind, names, mark_deletions)
    }

    /// Like [`load`](Self::load), but a table that does not exist stays so: `None`.
    pub(crate) fn load_existing(
        tx: &mut Transaction<'_>,
        schema: &str,
        kind: &str,
        mark_deletions: bool,
    ) -> Result<Option<Self>, SinkError> {
        let names = read_columns(tx, schema, kind)?;
        if names.is_empty() {
            return Ok(None);
        }
        Self::from_columns(tx, schema, kind, names, mark_deletions).map(Some)
    }

    fn from_columns(
        tx: &mut Transaction<'_>,
        schema: &str,
        kind: &str,
        names: Vec<String>,
        mark_deletions: bool,
    ) -> Result<Self, SinkError> {
        for reserved in RESERVED_COLUMNS {
            if !names.iter().any(|name| name == reserved) {
                return Err(SinkError::fatal(format!(
                    "table `{kind}` in schema `{schema}` exists without the sink's column \
                     `{reserved}`; it was not created by this sink"
                )));
            }
        }
        let mut table = Self {
            name: kind.to_owned(),
            qualified: format!("{}.{}", quote(schema), quote(kind)),
            schema: schema.to_owned(),
            fields: FieldColumns::new(),
            has_deleted_at: false,
        };
        for name in names {
            if name == DELETED_AT_COLUMN {
                table.has_deleted_at = true;
            } else if !is_reserved(&name) {
                table.fields.push(name);
            }
        }
        if mark_deletions && !table.has_deleted_at {
            // A table from before mark mode was configured: its rows are all alive. Another
            // daemon may add the column at the same time, hence the lock and IF NOT EXISTS.
            lock_ddl(tx, schema, kind)?;
            tx.batch_execute(&format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS \"{DELETED_AT_COLUMN}\" TIMESTAMPTZ",
                table.qualified
            ))
            .map_err(|error| {
                table.error(&format!("cannot add column `{DELETED_AT_COLUMN}`"), &error)
            })?;
            table.has_deleted_at = true;
        }
        Ok(table)
    }

    /// The name of column `column`.
    pub(crate) fn column_name(&self, column: usize) -> &str {
        self.fields.name(column)
    }

    /// The table's name (the stream kind).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The column of field `key`, added to the table if new.
    pub(crate) fn column(
        &mut self,
        tx: &mut Transaction<'_>,
        key: &str,
    ) -> Result<usize, SinkError> {
        if let Some(column) = self.fields.get(key) {
            return Ok(column);
        }
        if is_reserved(key) {
            return Err(SinkError::fatal(format!(
                "table `{}`: field key `{key}` clashes with the sink's column of that name",
                self.name
            )));
        }
        check_identifier(key).map_err(|problem| {
            SinkError::fatal(format!(
                "table `{}`: field key cannot be a column name: it {problem}",
                self.name
            ))
        })?;
        // Another daemon writing another stream of this kind may add the same key at the same
        // time: the lock orders the two, and IF NOT EXISTS makes the second a no-op.
        lock_ddl(tx, &self.schema, &self.name)?;
        tx.batch_execute(&format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} TEXT",
            self.qualified,
            quote(key)
        ))
        .map_err(|error| self.error(&format!("cannot add column `{key}`"), &error))?;
        Ok(self.fields.push(key.to_owned()))
    }

    /// The column of the key at `position` of a row, through the cache of the previous row.
    pub(crate) fn column_at(
        &mut self,
        tx: &mut Transaction<'_>,
        position: usize,
        key: &str,
    ) -> Result<usize, SinkError> {
        if let Some(column) = self.fields.at(position, key) {
            return Ok(column);
        }
        let column = self.column(tx, key)?;
        self.fields.remember_at(position, column);
        Ok(column)
    }

    /// The column of the value at `position` under `key`, if the table has it already:
    /// [`Table::column_at`] without adding one, so it needs no transaction.
    pub(crate) fn known_column_at(&self, position: usize, key: &str) -> Option<usize> {
        self.fields
            .at(position, key)
            .or_else(|| self.fields.get(key))
    }

    /// Maps a row's keys to columns (adding new ones) into `columns`, in the row's order.
    pub(crate) fn row_columns(
        &mut self,
        tx: &mut Transaction<'_>,
        row: &Row<'_>,
        columns: &mut Vec<usize>,
    ) -> Result<(), SinkError> {
        columns.clear();
        for (position, (key, _)) in row.values.iter().enumerate() {
            columns.push(self.column_at(tx, position, key)?);
        }
        Ok(())
    }

    /// The upsert of the staged rows that set exactly `columns`: `staged[i]` is the staging
    /// column of `columns[i]`, `filter` selects the rows. `$1` is the event id, `$2` the
    /// time received (RFC 3339).
    pub(crate) fn upsert_sql(
        &self,
        columns: &[usize],
        staged: &[String],
        staging: &str,
        filter: &str,
    ) -> String {
        let mut targets: Vec<String> = RESERVED_COLUMNS.iter().map(|name| quote(name)).collect();
        targets.extend(
            columns
                .iter()
                .map(|&column| quote(self.fields.name(column))),
        );
        let mut sources = vec![
            "\"_record_id\"".to_owned(),
            "$1::text".to_owned(),
            "\"_valid\"".to_owned(),
            "$2::text::timestamptz".to_owned(),
        ];
        sources.extend(staged.iter().cloned());
        let mut updates: Vec<String> = targets[1..]
            .iter()
            .map(|name| format!("{name} = EXCLUDED.{name}"))
            .collect();
        if self.has_deleted_at {
            // A record written again after its deletion was re-created (or restored): alive.
            updates.push(format!("\"{DELETED_AT_COLUMN}\" = NULL"));
        }
        format!(
            "INSERT INTO {} ({}) SELECT {} FROM {staging}{filter} \
             ON CONFLICT (\"_record_id\") DO UPDATE SET {}",
            self.qualified,
            targets.join(", "),
            sources.join(", "),
            updates.join(", ")
        )
    }

    /// Removes the rows of the records in the text array `$1`.
    pub(crate) fn delete_sql(&self) -> String {
        format!(
            "DELETE FROM {} WHERE \"_record_id\" = ANY($1::text[])",
            self.qualified
        )
    }

    /// Marks deleted the rows of the records in `$2`, at the time `$1` (RFC 3339).
    pub(crate) fn mark_deleted_sql(&self) -> String {
        format!(
            "UPDATE {} SET \"{DELETED_AT_COLUMN}\" = $1::text::timestamptz \
             WHERE \"_record_id\" = ANY($2::text[])",
            self.qualified
        )
    }

    /// A database error in the context of this table.
    pub(crate) fn error(&self, what: &str, error: &postgres::Error) -> SinkError {
        pg_error(format!("table `{}`: {what}", self.name), error)
    }
}

/// Column names are compared without regard to ASCII case here, as in the sqlite sink: a
/// `_Valid` field next to `_valid` would only confuse whoever reads the table.
fn is_reserved(name: &str) -> bool {
    RESERVED_COLUMNS
        .iter()
        .chain(&[DELETED_AT_COLUMN])
        .any(|reserved| reserved.eq_ignore_ascii_case(name))
}

/// Serialises changes to the table's definition between daemons until the transaction ends,
/// so two creating or widening the same table at once wait instead of failing on each other.
fn lock_ddl(tx: &mut Transaction<'_>, schema: &str, kind: &str) -> Result<(), SinkError> {
    let key = format!("flatsync table {schema}.{kind}");
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))",
        &[&key],
    )
    .map(drop)
    .map_err(|error| {
        pg_error(
            format!("table `{kind}`: cannot lock its definition"),
            &error,
        )
    })
}

/// The table's column names in order; none when there is no such table.
fn read_columns(
    tx: &mut Transaction<'_>,
    schema: &str,
    kind: &str,
) -> Result<Vec<String>, SinkError> {
    let rows = tx
        .query(
            "SELECT a.attname::text FROM pg_catalog.pg_attribute a
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&schema, &kind],
        )
        .map_err(|error| pg_error(format!("table `{kind}`: cannot read its columns"), &error))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
