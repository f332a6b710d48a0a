//! The upsert of a record batch, in record id order: consecutive rows that set the same
//! columns go to SQLite together, several rows per statement.
//!
//! A statement per row paid SQLite's per-statement work (opening the table's cursors,
//! starting and resetting the program) and a bind of the event id and time for every row;
//! a multi-row `VALUES` list pays them once per chunk of rows.

use flatsync_plugin_sdk::{Batch, Row, SinkError};
use rusqlite::types::ToSqlOutput;
use rusqlite::{CachedStatement, Connection};

use crate::table::{self, Table, UpsertShape};
use crate::value;

/// Most rows one statement carries. Past a few rows the per-statement work is spread thin,
/// while each bound text takes one of SQLite's per-connection lookaside slots until the next
/// bind replaces it: with more rows the slots run out and every bind falls through to
/// `malloc`. Measured with callgrind on the write bench (10 fields): 8 rows per statement
/// cost 19.0k instructions per row, 4 rows 19.8k, 16 rows 19.2k, 64 rows 21.4k.
const MAX_ROWS: usize = 8;

/// Most parameters a statement binds, for the same reason: wider rows go fewer at a time.
/// Far below SQLite's own limit (999 before 3.32, 32,766 since).
const MAX_PARAMETERS: usize = 100;

/// Upserts the rows of a record batch by `_record_id`, in the order of their ids. Returns how
/// many rows it wrote.
///
/// Flatfile's record ids are random, so rows in the order they came land all over the
/// table's index. With the connection's small page cache, a leaf page of the index written
/// early in the batch's transaction was often spilled to the write-ahead log before a later
/// row of the batch came to it, and then read and written again. In id order each leaf is
/// visited once per batch. Rows with the same id keep their order (a stable sort), so the
/// last one still wins; columns are added in the order the rows came, as before the sort.
pub(crate) fn upsert_rows(
    conn: &Connection,
    table: &mut Table,
    batch: &Batch<'_>,
) -> Result<u64, SinkError> {
    let mut rows = batch.rows();
    let mut row = Row::default();
    let mut shape = UpsertShape::default();
    let mut marks = Vec::with_capacity(usize::try_from(batch.row_count()).unwrap_or(0));
    while rows.read_into(&mut row)? {
        // Adds the row's new columns now, in the order the rows came.
        table.shape_row(conn, &row, &mut shape)?;
        let mark = rows.mark().expect("a row was just read");
        marks.push((std::mem::take(&mut row.id), mark));
    }
    // Byte order, as the index's BINARY collation orders the ids.
    marks.sort_by(|(a, _), (b, _)| a.cmp(b));

    let received_at = batch.received_at_rfc3339();
    let mut writer = Writer {
        conn,
        event_id: batch.event_id(),
        received_at: &received_at,
        statements: Vec::new(),
        scratch: String::new(),
    };
    // Rows read but not yet written, all of one shape; the entries past `held` are spares
    // whose buffers the next rows reuse.
    let mut pending: Vec<(Row<'_>, UpsertShape)> = Vec::new();
    let mut held = 0;
    for (_, mark) in &marks {
        if pending.len() == held {
            pending.push(Default::default());
        }
        let (row, shape) = &mut pending[held];
        rows.read_at(*mark, row)?;
        table.shape_row(conn, row, shape)?;
        if held > 0 && pending[held].1.columns != pending[0].1.columns {
            writer.write(table, &pending[..held])?;
            pending.swap(0, held);
            held = 0;
        }
        held += 1;
        if held == chunk_limit(pending[0].1.columns.len()) {
            writer.write(table, &pending[..held])?;
            held = 0;
        }
    }
    writer.write(table, &pending[..held])?;
    Ok(u64::try_from(marks.len()).expect("a batch has fewer rows than u64::MAX"))
}

/// Most rows per statement for rows setting `fields` field columns: a power of two, so a
/// run of rows splits into few distinct statement lengths. A row too wide for
/// [`MAX_PARAMETERS`] goes alone, as it always did.
fn chunk_limit(fields: usize) -> usize {
    let fit = (MAX_PARAMETERS - 2) / table::upsert_row_width(fields);
    let rows = fit.clamp(1, MAX_ROWS);
    // The largest power of two not above `rows`.
    1 << rows.ilog2()
}

/// The upsert statements of one batch, kept prepared while the batch is written.
struct Writer<'c, 'b> {
    conn: &'c Connection,
    event_id: &'b str,
    received_at: &'b str,
    /// By field columns and row count; `?1` and `?2` already bound.
    statements: Vec<(Vec<usize>, usize, CachedStatement<'c>)>,
    /// Holds an unescaped string value until it is bound (SQLite copies it).
    scratch: String,
}

impl<'c> Writer<'c, '_> {
    /// Writes `rows`, all setting the same columns, in as few statements as their count
    /// allows: chunks of falling powers of two.
    fn write(
        &mut self,
        table: &Table,
        mut rows: &[(Row<'_>, UpsertShape)],
    ) -> Result<(), SinkError> {
        while !rows.is_empty() {
            let chunk = 1 << rows.len().ilog2();
            let (now, rest) = rows.split_at(chunk);
            self.write_chunk(table, now)?;
            rows = rest;
        }
        Ok(())
    }

    fn write_chunk(
        &mut self,
        table: &Table,
        rows: &[(Row<'_>, UpsertShape)],
    ) -> Result<(), SinkError> {
        let columns = &rows[0].1.columns;
        let statement = self.statement(table, columns, rows.len())?;
        let statement = &mut self.statements[statement].2;
        let width = table::upsert_row_width(columns.len());
        for (index, (row, shape)) in rows.iter().enumerate() {
            bind_row(
                statement,
                3 + index * width,
                row,
                shape,
                table,
                &mut self.scratch,
            )?;
        }
        statement.raw_execute().map_err(|error| {
            let first = &rows[0].0.id;
            let what = match rows {
                [_] => format!("cannot upsert record `{first}`"),
                [.., (last, _)] => format!(
                    "cannot upsert the {} records from `{first}` to `{}`",
                    rows.len(),
                    last.id
                ),
                [] => "cannot upsert no records".to_owned(),
            };
            table.error(&what, error)
        })?;
        Ok(())
    }

    /// The index in `statements` of the prepared upsert of `rows` rows setting `columns`.
    fn statement(
        &mut self,
        table: &Table,
        columns: &[usize],
        rows: usize,
    ) -> Result<usize, SinkError> {
        let found = self
            .statements
            .iter()
            .position(|(held, count, _)| *count == rows && held == columns);
        let index = match found {
            Some(index) => index,
            None => {
                let mut statement = self
                    .conn
                    .prepare_cached(&table.upsert_sql(columns, rows))
                    .map_err(|error| table.error("cannot prepare the upsert", error))?;
                statement
                    .raw_bind_parameter(1, self.event_id)
                    .and_then(|()| statement.raw_bind_parameter(2, self.received_at))
                    .map_err(|error| table.error("cannot bind the event of the upsert", error))?;
                self.statements.push((columns.to_vec(), rows, statement));
                self.statements.len() - 1
            }
        };
        Ok(index)
    }
}

/// Binds one row's id, validity and values from parameter `first` on.
fn bind_row(
    statement: &mut CachedStatement<'_>,
    first: usize,
    row: &Row<'_>,
    shape: &UpsertShape,
    table: &Table,
    scratch: &mut String,
) -> Result<(), SinkError> {
    statement
        .raw_bind_parameter(first, row.id.as_ref())
        .and_then(|()| statement.raw_bind_parameter(first + 1, row.valid))
        .map_err(|error| table.error(&format!("cannot bind record `{}`", row.id), error))?;
    for (index, (&column, &position)) in shape.columns.iter().zip(&shape.positions).enumerate() {
        let name = || table.field_name(column);
        let value = value::sql_value(row.values[position].1, scratch).map_err(|error| {
            error.context(format!(
                "table `{}`, column `{}`, record `{}`",
                table.name(),
                name(),
                row.id
            ))
        })?;
        statement
            .raw_bind_parameter(first + 2 + index, ToSqlOutput::Borrowed(value))
            .map_err(|error| {
                table.error(
                    &format!("cannot bind column `{}` of record `{}`", name(), row.id),
                    error,
                )
            })?;
    }
    Ok(())
}
