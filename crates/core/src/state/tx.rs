//! The connection of one operator transaction, shared by its reads (`report`) and its
//! changes (`repair`).

use std::path::Path;

use rusqlite::Connection;

use super::StateError;

/// The connection and file of one operator transaction, with the helpers its reads
/// ([`Snapshot`]) and changes ([`Change`]) share.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tx<'a> {
    pub(super) conn: &'a Connection,
    pub(super) path: &'a Path,
}

impl Tx<'_> {
    pub(super) fn error(&self, error: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.to_owned(),
            error,
        }
    }

    /// Runs `sql` and collects its rows.
    pub(super) fn rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StateError> {
        let run = || -> rusqlite::Result<Vec<T>> {
            let mut stmt = self.conn.prepare_cached(sql)?;
            let rows = stmt.query_map(params, row)?;
            rows.collect()
        };
        run().map_err(|e| self.error(e))
    }

    pub(super) fn execute(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<(), StateError> {
        self.conn
            .execute(sql, params)
            .map(drop)
            .map_err(|e| self.error(e))
    }
}
