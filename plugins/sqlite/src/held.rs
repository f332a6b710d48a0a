//! The rows count of `_flatsync_streams`, and what the sink holds of a stream (`Sink::held`).
//!
//! Every batch commits its rows and its stream's position in one transaction, which survives a
//! crash of the daemon (the write-ahead log is written, synced only at `flush` or per commit),
//! so the position the table records is what the sink holds after a restart. With the stream's
//! rows counted beside it, the daemon can resume after it instead of fetching again.

use flatsync_plugin_sdk::{Held, SinkError};
use rusqlite::{Connection, OptionalExtension};

use crate::{BOOKKEEPING_TABLE, sql_error};

/// The column counting a stream's rows. A database written before it existed gets it, NULL
/// for the streams it already had: their rows are unknown, so they have nothing to tell.
const ROWS_COLUMN: &str = "stream_rows";

/// Adds the rows column to a bookkeeping table that lacks it. Another instance adding it at
/// the same moment is no error.
pub(crate) fn add_rows_column(conn: &Connection) -> Result<(), SinkError> {
    if has_rows_column(conn)? {
        return Ok(());
    }
    let added = conn.execute_batch(&format!(
        "ALTER TABLE {BOOKKEEPING_TABLE} ADD COLUMN {ROWS_COLUMN} INTEGER"
    ));
    match added {
        Ok(()) => Ok(()),
        Err(_) if has_rows_column(conn)? => Ok(()),
        Err(error) => Err(sql_error(
            format!("adding column {ROWS_COLUMN} to {BOOKKEEPING_TABLE}"),
            error,
        )),
    }
}

fn has_rows_column(conn: &Connection) -> Result<bool, SinkError> {
    conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [BOOKKEEPING_TABLE, ROWS_COLUMN],
        |row| row.get::<_, i64>(0),
    )
    .map(|count| count > 0)
    .map_err(|error| sql_error(format!("reading the columns of {BOOKKEEPING_TABLE}"), error))
}

/// `SET` clause of the bookkeeping upsert for the rows column: the batch's rows added to the
/// stream's (NULL, unknown, stays NULL).
pub(crate) const ROWS_UPSERT: &str =
    "stream_rows = _flatsync_streams.stream_rows + excluded.stream_rows";

/// What the database holds of `stream`: batches up to its applied seq with their rows, unless
/// the stream is complete, unknown, or its rows were not counted.
pub(crate) fn held(conn: &Connection, stream: &str) -> Result<Option<Held>, SinkError> {
    let found: Option<(i64, bool, Option<i64>)> = conn
        .prepare_cached(&format!(
            "SELECT applied_seq, complete, {ROWS_COLUMN} FROM {BOOKKEEPING_TABLE} \
             WHERE stream = ?1"
        ))
        .and_then(|mut statement| {
            statement
                .query_row([stream], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .optional()
        })
        .map_err(|error| sql_error(format!("reading the position of stream {stream}"), error))?;
    Ok(match found {
        Some((seq, false, Some(rows))) => match (u64::try_from(seq), u64::try_from(rows)) {
            (Ok(seq), Ok(rows)) => Some(Held { seq, rows }),
            _ => None,
        },
        _ => None,
    })
}
