//! The `postgres` sink: one table per stream kind in a PostgreSQL schema, rows bulk-loaded with
//! `COPY` and upserted by record id, exactly once.
//!
//! It is the `sqlite` sink's model on PostgreSQL 11 or later: the same tables, columns,
//! deletions and bookkeeping, with the server's own types and locks.
//!
//! # Config
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `url` | | `postgres://user@host:port/database`, without a password |
//! | `url_env` | | name of an environment variable holding the whole URL, password included |
//! | `url_file` | | file holding the whole URL (surrounding whitespace ignored) |
//! | `url_credential` | | a file name in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), as `url_file` |
//! | `schema` | `"public"` | schema of the tables; created if missing |
//! | `deletions` | `"delete"` | what a deleted Flatfile record does to its row: `"delete"` removes it, `"mark"` keeps it and sets `_deleted_at` (see [Deletions](#deletions)) |
//! | `connect_timeout_ms` | `5000` | how long to wait for the server when connecting |
//!
//! Exactly one of `url`, `url_env`, `url_file` and `url_credential` must be set. A password in
//! `url` (in its user info or a `password=` parameter) is refused: config files are read by
//! more people than the database should be. Errors and logs show a URL with its password
//! replaced by `***`. The sink connects without TLS: `sslmode=require`, `verify-ca` and
//! `verify-full` are refused as not supported yet; use a trusted network, a Unix socket
//! (`?host=/run/postgresql`) or a tunnel. The URL's other parameters (`application_name`,
//! `options`, `keepalives`, ...) are passed on; `application_name` defaults to `flatsync`.
//!
//! `create` connects, creates the schema if it is missing and the bookkeeping table, and checks
//! that the user may create tables in the schema, so a wrong URL, credential or grant stops the
//! daemon's start-up with a message saying which.
//!
//! # Tables
//!
//! The table of a stream is named after its kind (the sheet slug, or `legacy_batch`), quoted,
//! in the configured schema; any text of at most 63 bytes works except names starting with
//! `_flatsync`. Its columns: `_record_id TEXT PRIMARY KEY`, `_event_id TEXT NOT NULL`,
//! `_valid BOOLEAN NOT NULL`, `_received_at TIMESTAMPTZ NOT NULL`, then one `TEXT` column per
//! field key in schema order, then first-seen order, added with `ALTER TABLE ADD COLUMN` as
//! keys appear. With `deletions = "mark"` the table also has `_deleted_at TIMESTAMPTZ`
//! (nullable). A field key equal to a reserved column (those five, in any letter case), or
//! longer than 63 bytes (PostgreSQL would cut it), is a fatal error. Unlike SQLite, PostgreSQL
//! keeps `Email` and `email` apart, and so does the sink.
//!
//! Every field column is `TEXT`, whatever its values: a column's type is fixed when it is
//! added, but Flatfile sends one key with different JSON types (a number here, a string or an
//! empty `null` there, a field whose type changed between workbooks), and a typed column would
//! turn the first odd value into an error that stops the stream. Strings are stored as they
//! are, numbers as their JSON text (exactly as sent, no rounding), booleans as `true` /
//! `false`, null as NULL, arrays and objects as compact JSON text. Cast in SQL where a type is
//! wanted: `age::numeric`, `tags::jsonb`. A string holding U+0000, which PostgreSQL text cannot
//! store, is a fatal error naming the table, column and record.
//!
//! A row updates only the columns it has values for. A record that arrives again in a later
//! event's stream (a `records:updated`, a new commit) is an upsert: its row takes the new
//! values, `_event_id` and `_received_at`.
//!
//! # Loading
//!
//! A batch's rows are sent with one text-format `COPY` into a temporary staging table of the
//! session (emptied at every commit), then moved into the real table with one
//! `INSERT ... SELECT ... ON CONFLICT (_record_id) DO UPDATE` per set of columns the rows have
//! (usually one). A record id repeated within a batch is applied in line order, the later
//! line's values winning, as if each line were written alone.
//!
//! # Deletions
//!
//! The sink handles deletion streams (`<sheetSlug>-deleted-<eventId>`, kind = the sheet slug):
//! each row names a record deleted in Flatfile, and the sink acts on the kind's table.
//!
//! - `deletions = "delete"`: the rows with those `_record_id`s are removed.
//! - `deletions = "mark"`: the rows stay, and `_deleted_at` is set to the time flatsync
//!   received the deletion. The column is added to a table that lacks it (one written before
//!   mark mode was configured) the first time the table is used. A later upsert of the same
//!   record id (the record re-created or restored) sets it back to NULL, in either mode,
//!   whenever the table has the column.
//!
//! A record id the table does not hold changes nothing, and a kind without a table is left
//! without one.
//!
//! # Exactly once
//!
//! `_flatsync_streams(stream, kind, applied_seq, complete, updated_at)`, in the same schema,
//! records each stream's progress. Every batch is one transaction that locks its stream's row
//! (`SELECT ... FOR UPDATE`, inserting the row first if the stream is new), skips a batch
//! already applied, refuses a gap, writes (or deletes, or marks) the rows, and advances
//! `applied_seq` (setting `complete` on the last batch) before committing. Data and position
//! commit together, and a second daemon delivering the same stream (one that was paused and
//! woke up) waits on the row lock, then sees the batch applied and skips it. Table changes
//! (creating a table, adding a column) take a per-table advisory lock, so daemons writing
//! different streams of one kind do not trip over each other's `ALTER TABLE`.
//!
//! # Errors
//!
//! RETRY (the host calls again later; a closed connection is opened again on the next call):
//! the server unreachable or the connection lost, SQLSTATE class `08` (connection exception),
//! `57P01`/`57P02`/`57P03` (shutdown, crash, starting up), `40001` (serialization failure),
//! `40P01` (deadlock), `55P03` (lock not available), `57014` (statement cancelled) and class
//! `53` (disk full, out of memory, too many connections).
//!
//! FATAL, with a message naming the table and column where there is one: every other SQLSTATE,
//! among them `28P01` and `28000` (wrong password, no `pg_hba.conf` entry), `3D000` (no such
//! database), `3F000` (no such schema), `42501` (permission denied) and the table problems
//! (`42xxx`); and the sink's own refusals (a reserved or too long field key, a table without
//! the sink's columns, a gap in a stream).

mod config;
mod table;

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::io::Write as _;

use flatsync_plugin_sdk::serde_json::value::RawValue;
use flatsync_plugin_sdk::{
    Batch, BatchStep, CellValue, CreateContext, Logger, Row, Sink, SinkError, StreamPosition,
    export_sink, serde_json,
};
use postgres::{Client, IsolationLevel, NoTls, Transaction};

use config::{Config, Deletions};
use table::{Table, quote};

const BOOKKEEPING_TABLE: &str = "_flatsync_streams";

/// The postgres sink instance: one connection, used from the instance's thread only.
pub struct PostgresSink {
    config: Config,
    /// The open connection; `None` after it was lost, until the next call reconnects.
    client: Option<Client>,
    /// `"schema"."_flatsync_streams"`.
    bookkeeping: String,
    logger: Logger,
    /// Columns of each table this process has written to, as committed.
    tables: HashMap<String, Table>,
    /// Widths of the staging tables that exist in this session.
    staging: HashSet<usize>,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("url", &self.config.shown_url)
            .field("schema", &self.config.schema)
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl Sink for PostgresSink {
    const HANDLES_DELETIONS: bool = true;

    fn create(ctx: &CreateContext<'_>, config: serde_json::Value) -> Result<Self, SinkError> {
        let config = Config::parse(config, &|name| std::env::var_os(name))?;
        Self::open(config, ctx.logger().clone())
    }

    fn write_batch(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        let kind = batch.kind();
        table::check_table_name(kind)?;
        let result = self.apply(batch);
        if let Err(error) = &result {
            // The transaction rolled back, and with it any table, column or staging table
            // created on its way; the next batch reads them again from the database.
            self.tables.remove(kind);
            self.staging.clear();
            // A retry waits on the server: name it, unless the message already does.
            if error.is_retry() && !error.message().contains(&self.config.shown_url) {
                return Err(SinkError::retry(error.message()).context(&self.config.shown_url));
            }
        }
        result
    }

    /// Nothing to do: every batch is committed by `write_batch` in its own transaction, and a
    /// commit is durable when it returns (unless the server runs with `synchronous_commit`
    /// off).
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn check(&mut self) -> Result<(), SinkError> {
        let schema = self.config.schema.clone();
        let bookkeeping = self.bookkeeping.clone();
        let shown_url = self.config.shown_url.clone();
        let client = self.client()?;
        let row = client
            .query_one(
                "SELECT has_schema_privilege($1, 'CREATE'),
                        has_table_privilege($2, 'SELECT, INSERT, UPDATE')",
                &[&schema, &bookkeeping],
            )
            .map_err(|error| pg_error(format!("checking {shown_url}"), &error))?;
        if !row.get::<_, bool>(0) || !row.get::<_, bool>(1) {
            return Err(SinkError::fatal(format!(
                "{shown_url}: the user may not create tables in schema `{schema}` or write \
                 to its table {BOOKKEEPING_TABLE}"
            )));
        }
        Ok(())
    }
}

impl PostgresSink {
    /// Connects and prepares the schema.
    fn open(config: Config, logger: Logger) -> Result<Self, SinkError> {
        let mut client = connect(&config)?;
        let bookkeeping = format!("{}.{BOOKKEEPING_TABLE}", quote(&config.schema));
        prepare_schema(&mut client, &config.schema, &bookkeeping)?;
        Ok(Self {
            config,
            client: Some(client),
            bookkeeping,
            logger,
            tables: HashMap::new(),
            staging: HashSet::new(),
        })
    }

    /// The connection, opened again if the last one was lost.
    fn client(&mut self) -> Result<&mut Client, SinkError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            // Temporary tables went with the session.
            self.staging.clear();
            self.client = Some(connect(&self.config)?);
            self.logger.info(&format!(
                "Reconnected to PostgreSQL: url={}",
                self.config.shown_url
            ));
        }
        Ok(self.client.as_mut().expect("connected just above"))
    }

    fn apply(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        let stream = batch.stream();
        let kind = batch.kind();
        let seq = i64::try_from(batch.seq()).map_err(|_| {
            SinkError::fatal(format!(
                "stream {stream}: batch seq {} is too large",
                batch.seq()
            ))
        })?;
        self.client()?;
        let Self {
            config,
            client,
            bookkeeping,
            tables,
            staging,
            logger,
        } = self;
        let client = client.as_mut().expect("connected by client()");
        // Read committed, whatever the server's default: the stream row's lock must see the
        // position another daemon committed while this one waited for it.
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .map_err(|error| pg_error("cannot start a transaction", &error))?;

        match lock_stream(&mut tx, bookkeeping, stream, kind)?.step(batch)? {
            // The last batch commits the stream's completion with its rows, so a batch held
            // here never leaves anything to finish.
            BatchStep::Skip | BatchStep::Finish => {
                return tx
                    .commit()
                    .map_err(|error| pg_error(format!("stream {stream}: cannot commit"), &error));
            }
            BatchStep::Apply => {}
        }

        let schema = config.schema.as_str();
        let count = if batch.is_deletions() {
            apply_deletions(&mut tx, tables, schema, batch, config.deletions)?
        } else {
            let mark = config.deletions == Deletions::Mark;
            let table = cached_table(&mut tx, tables, schema, kind, mark)?;
            upsert_rows(&mut tx, table, staging, batch)?
        };

        tx.execute(
            &format!(
                "UPDATE {bookkeeping} SET kind = $2, applied_seq = $3, complete = $4, \
                 updated_at = now() WHERE stream = $1"
            ),
            &[&stream, &kind, &seq, &batch.is_last()],
        )
        .map_err(|error| pg_error(format!("recording the position of stream {stream}"), &error))?;
        tx.commit().map_err(|error| {
            pg_error(format!("committing batch {seq} of stream {stream}"), &error)
        })?;
        if batch.is_last() {
            let what = match (batch.is_deletions(), config.deletions) {
                (false, _) => "rows",
                (true, Deletions::Delete) => "records deleted",
                (true, Deletions::Mark) => "records marked deleted",
            };
            logger.info(&format!(
                "Stream complete: {stream} into table {kind} ({count} {what} in its last batch)"
            ));
        }
        Ok(())
    }
}

fn connect(config: &Config) -> Result<Client, SinkError> {
    config
        .connect
        .connect(NoTls)
        .map_err(|error| pg_error(format!("cannot connect to {}", config.shown_url), &error))
}

/// Creates the schema if missing and the bookkeeping table, and checks the user may create
/// tables in the schema.
fn prepare_schema(client: &mut Client, schema: &str, bookkeeping: &str) -> Result<(), SinkError> {
    let fail = |what: &str| {
        let what = what.to_owned();
        move |error: postgres::Error| pg_error(format!("schema `{schema}`: {what}"), &error)
    };
    let mut tx = client
        .transaction()
        .map_err(fail("cannot start a transaction"))?;
    // Two daemons starting at once would otherwise both try to create the schema and table.
    let key = format!("flatsync schema {schema}");
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))",
        &[&key],
    )
    .map_err(fail("cannot lock"))?;
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1),
                    current_user::text",
            &[&schema],
        )
        .map_err(fail("cannot look it up"))?;
    let user: String = row.get(1);
    if !row.get::<_, bool>(0) {
        tx.batch_execute(&format!("CREATE SCHEMA {}", quote(schema)))
            .map_err(fail(&format!("cannot create it as user `{user}`")))?;
    }
    let can_create: bool = tx
        .query_one("SELECT has_schema_privilege($1, 'CREATE')", &[&schema])
        .map_err(fail("cannot read its privileges"))?
        .get(0);
    if !can_create {
        return Err(SinkError::fatal(format!(
            "schema `{schema}`: user `{user}` may not create tables in it (42501); grant it \
             with GRANT CREATE ON SCHEMA {} TO {}",
            quote(schema),
            quote(&user)
        )));
    }
    let exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2)",
            &[&schema, &BOOKKEEPING_TABLE],
        )
        .map_err(fail("cannot look up its tables"))?
        .get(0);
    if !exists {
        tx.batch_execute(&format!(
            "CREATE TABLE {bookkeeping} (
                 stream TEXT PRIMARY KEY,
                 kind TEXT NOT NULL,
                 applied_seq BIGINT NOT NULL,
                 complete BOOLEAN NOT NULL,
                 updated_at TIMESTAMPTZ NOT NULL
             )"
        ))
        .map_err(fail(&format!("cannot create table {BOOKKEEPING_TABLE}")))?;
    }
    tx.commit().map_err(fail("cannot commit its set-up"))
}

/// Locks `stream`'s bookkeeping row until the transaction ends, inserting it if the stream is
/// new, and returns how far the database holds the stream.
fn lock_stream(
    tx: &mut Transaction<'_>,
    bookkeeping: &str,
    stream: &str,
    kind: &str,
) -> Result<StreamPosition, SinkError> {
    let fail = |error: postgres::Error| {
        pg_error(format!("reading the position of stream {stream}"), &error)
    };
    let select =
        format!("SELECT applied_seq, complete FROM {bookkeeping} WHERE stream = $1 FOR UPDATE");
    let mut row = tx.query_opt(&select, &[&stream]).map_err(fail)?;
    if row.is_none() {
        // applied_seq -1: nothing applied. The row commits only with batch 0 applied, which
        // sets it; until then it exists only to be locked. Another daemon inserting the same
        // stream makes this wait, then do nothing, and the select below waits for its lock.
        tx.execute(
            &format!(
                "INSERT INTO {bookkeeping} (stream, kind, applied_seq, complete, updated_at)
                 VALUES ($1, $2, -1, false, now()) ON CONFLICT (stream) DO NOTHING"
            ),
            &[&stream, &kind],
        )
        .map_err(fail)?;
        row = tx.query_opt(&select, &[&stream]).map_err(fail)?;
    }
    let row = row.ok_or_else(|| {
        SinkError::retry(format!(
            "stream {stream}: its row in {BOOKKEEPING_TABLE} vanished while being locked"
        ))
    })?;
    let applied: i64 = row.get(0);
    let complete: bool = row.get(1);
    Ok(match (applied, complete) {
        (_, true) => StreamPosition::Complete,
        (-1, false) => StreamPosition::Start,
        (applied, false) => StreamPosition::Applied(u64::try_from(applied).map_err(|_| {
            SinkError::fatal(format!(
                "stream {stream}: {BOOKKEEPING_TABLE} records applied seq {applied}, which no \
                 batch has"
            ))
        })?),
    })
}

/// The table of `kind` from the cache, loaded (and created) on first use.
fn cached_table<'t>(
    tx: &mut Transaction<'_>,
    tables: &'t mut HashMap<String, Table>,
    schema: &str,
    kind: &str,
    mark_deletions: bool,
) -> Result<&'t mut Table, SinkError> {
    if !tables.contains_key(kind) {
        let table = Table::load(tx, schema, kind, mark_deletions)?;
        tables.insert(kind.to_owned(), table);
    }
    Ok(tables.get_mut(kind).expect("inserted just above"))
}

/// Where a row of the batch goes: its application round (how many earlier lines of the batch
/// have its record id) and its shape (which columns it sets).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Placement {
    round: u32,
    shape: u32,
}

/// A record batch laid out for the staging table: where each row goes, the staging column
/// (slot) of every table column the batch sets, and the distinct sets of columns rows set
/// (shapes). The rows themselves are not kept: the COPY reads them from the batch again, so
/// a batch costs this sink a few bytes per row, not a parsed copy of it.
struct Staged {
    placements: Vec<Placement>,
    slot_of: Vec<usize>,
    slots: usize,
    shapes: Vec<Vec<usize>>,
}

/// COPY text gathered before it is handed to the connection: the client copies what it is
/// given into a buffer of its own and sends it whole, so a batch written at once would be held
/// twice.
const COPY_CHUNK_BYTES: usize = 64 * 1024;

/// Upserts the rows of a record batch by `_record_id` through a staging table. Returns how
/// many rows it wrote.
fn upsert_rows(
    tx: &mut Transaction<'_>,
    table: &mut Table,
    staging: &mut HashSet<usize>,
    batch: &Batch<'_>,
) -> Result<u64, SinkError> {
    for field in batch.fields()? {
        table.column(tx, &field)?;
    }
    let staged = stage_rows(tx, table, batch)?;
    if staged.placements.is_empty() {
        return Ok(0);
    }
    let stage = staging_table(tx, table, staging, staged.slots)?;
    copy_into_stage(tx, table, batch, &staged, &stage)?;
    apply_stage(tx, table, batch, &staged, &stage)
}

/// First pass: every row's columns (adding new ones), its shape and round, and the staging
/// column (slot) of every table column the batch sets.
fn stage_rows(
    tx: &mut Transaction<'_>,
    table: &mut Table,
    batch: &Batch<'_>,
) -> Result<Staged, SinkError> {
    let mut staged = Staged {
        placements: Vec::new(),
        slot_of: Vec::new(),
        slots: 0,
        shapes: Vec::new(),
    };
    let mut shape_of: HashMap<Vec<usize>, u32> = HashMap::new();
    let mut rounds: HashMap<std::borrow::Cow<'_, str>, u32> = HashMap::new();
    let mut columns = Vec::new();
    for row in batch.rows() {
        let row = row?;
        table.row_columns(tx, &row, &mut columns)?;
        columns.sort_unstable();
        columns.dedup();
        for &column in &columns {
            if staged.slot_of.len() <= column {
                staged.slot_of.resize(column + 1, usize::MAX);
            }
            if staged.slot_of[column] == usize::MAX {
                staged.slot_of[column] = staged.slots;
                staged.slots += 1;
            }
        }
        let shape = match shape_of.get(columns.as_slice()) {
            Some(&shape) => shape,
            None => {
                let shape = u32::try_from(staged.shapes.len()).expect("fewer shapes than rows");
                staged.shapes.push(columns.clone());
                shape_of.insert(columns.clone(), shape);
                shape
            }
        };
        let seen = rounds.entry(row.id.clone()).or_insert(0);
        let round = *seen;
        *seen += 1;
        staged.placements.push(Placement { round, shape });
    }
    Ok(staged)
}

/// The session's staging table of `slots` value columns, created on first use; its name.
fn staging_table(
    tx: &mut Transaction<'_>,
    table: &Table,
    staging: &mut HashSet<usize>,
    slots: usize,
) -> Result<String, SinkError> {
    if !staging.contains(&slots) {
        let values: String = (1..=slots)
            .map(|slot| format!(", \"v{slot}\" TEXT"))
            .collect();
        tx.batch_execute(&format!(
            "CREATE TEMPORARY TABLE IF NOT EXISTS \"_flatsync_stage_{slots}\" (
                 \"_round\" INTEGER NOT NULL,
                 \"_shape\" INTEGER NOT NULL,
                 \"_record_id\" TEXT NOT NULL,
                 \"_valid\" BOOLEAN NOT NULL{values}
             ) ON COMMIT DELETE ROWS"
        ))
        .map_err(|error| table.error("cannot create the staging table", &error))?;
        staging.insert(slots);
    }
    Ok(format!("pg_temp.\"_flatsync_stage_{slots}\""))
}

/// Second pass: COPYs the rows into the staging table `stage`, one line per row and a column
/// per slot, handing the text over in chunks of [`COPY_CHUNK_BYTES`].
fn copy_into_stage(
    tx: &mut Transaction<'_>,
    table: &Table,
    batch: &Batch<'_>,
    staged: &Staged,
    stage: &str,
) -> Result<(), SinkError> {
    let mut copy = tx
        .copy_in(&format!("COPY {stage} FROM STDIN"))
        .map_err(|error| table.error("cannot start copying the batch", &error))?;
    let mut text = Vec::with_capacity(COPY_CHUNK_BYTES + COPY_CHUNK_BYTES / 4);
    let mut cells: Vec<Option<&RawValue>> = vec![None; staged.slots];
    let mut rows = batch.rows();
    let mut sent = Ok(());
    for placement in &staged.placements {
        // The first pass read every row, so the batch has as many again. An error here
        // returns with the COPY unfinished, and dropping it aborts the statement.
        let row = rows.next().ok_or_else(|| {
            SinkError::fatal(format!(
                "table `{}`: the batch held fewer rows on its second reading",
                table.name()
            ))
        })??;
        copy_line(&mut text, table, staged, &mut cells, &row, *placement)?;
        if text.len() >= COPY_CHUNK_BYTES {
            sent = copy.write_all(&text);
            text.clear();
            if sent.is_err() {
                break;
            }
        }
    }
    if sent.is_ok() {
        sent = copy.write_all(&text);
    }
    if let Err(error) = sent {
        // The connection failed under the copy; the server's own reason, if any, comes from
        // `finish`.
        return Err(match copy.finish() {
            Err(pg) => table.error("cannot copy the batch", &pg),
            Ok(_) => SinkError::retry(format!(
                "table `{}`: cannot copy the batch: {error}",
                table.name()
            )),
        });
    }
    copy.finish()
        .map_err(|error| table.error("cannot copy the batch", &error))?;
    Ok(())
}

/// Appends the COPY line of `row`: round, shape, record id, validity, then a value or `\N`
/// per slot. `cells` is scratch space of one entry per slot.
fn copy_line<'r>(
    text: &mut Vec<u8>,
    table: &Table,
    staged: &Staged,
    cells: &mut [Option<&'r RawValue>],
    row: &Row<'r>,
    placement: Placement,
) -> Result<(), SinkError> {
    cells.fill(None);
    for (position, (key, value)) in row.values.iter().enumerate() {
        let column = table.known_column_at(position, key).ok_or_else(|| {
            SinkError::fatal(format!(
                "table `{}`: field `{key}` has no column on the batch's second reading",
                table.name()
            ))
        })?;
        cells[staged.slot_of[column]] = Some(value);
    }
    if row.id.contains('\0') {
        return Err(SinkError::fatal(format!(
            "table `{}`: record id {:?} holds a NUL character, which PostgreSQL text \
             cannot store",
            table.name(),
            row.id
        )));
    }
    write!(text, "{}\t{}\t", placement.round, placement.shape).expect("writing to a Vec");
    copy_text(text, &row.id);
    text.extend_from_slice(if row.valid { b"\tt" } else { b"\tf" });
    for (slot, cell) in cells.iter().enumerate() {
        text.push(b'\t');
        let Some(raw) = cell else {
            text.extend_from_slice(b"\\N");
            continue;
        };
        copy_value(text, raw).map_err(|error| {
            let column = staged
                .slot_of
                .iter()
                .position(|&at| at == slot)
                .map_or("?", |column| table.column_name(column));
            error.context(format!(
                "table `{}`, column `{column}`, record `{}`",
                table.name(),
                row.id
            ))
        })?;
    }
    text.push(b'\n');
    Ok(())
}

/// Upserts the staged rows into the table, one statement per round and shape, so that a
/// record repeated in the batch is applied in line order. Returns the rows written.
fn apply_stage(
    tx: &mut Transaction<'_>,
    table: &Table,
    batch: &Batch<'_>,
    staged: &Staged,
    stage: &str,
) -> Result<u64, SinkError> {
    let mut groups = staged.placements.clone();
    groups.sort_unstable();
    groups.dedup();
    let event_id = batch.event_id();
    let received_at = batch.received_at_rfc3339();
    let mut count = 0;
    for &Placement { round, shape } in &groups {
        let filter = if groups.len() == 1 {
            String::new()
        } else {
            format!(" WHERE \"_round\" = {round} AND \"_shape\" = {shape}")
        };
        let columns = &staged.shapes[shape as usize];
        let values: Vec<String> = columns
            .iter()
            .map(|&column| format!("\"v{}\"", staged.slot_of[column] + 1))
            .collect();
        let sql = table.upsert_sql(columns, &values, stage, &filter);
        count += tx
            .execute(&sql, &[&event_id, &received_at])
            .map_err(|error| table.error("cannot upsert the batch", &error))?;
    }
    Ok(count)
}

/// Appends a value in COPY text form; see the crate docs for the mapping.
fn copy_value(out: &mut Vec<u8>, raw: &RawValue) -> Result<(), SinkError> {
    match CellValue::parse(raw)? {
        CellValue::Null => out.extend_from_slice(b"\\N"),
        CellValue::Bool(true) => out.extend_from_slice(b"true"),
        CellValue::Bool(false) => out.extend_from_slice(b"false"),
        CellValue::Number(text) => out.extend_from_slice(text.as_bytes()),
        CellValue::String(text) | CellValue::Json(text) => {
            if text.contains('\0') {
                return Err(SinkError::fatal(
                    "the value holds a NUL character, which PostgreSQL text cannot store",
                ));
            }
            copy_text(out, &text);
        }
    }
    Ok(())
}

/// Appends `text` with COPY's text-format escapes for the backslash and the separators.
fn copy_text(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    if !bytes
        .iter()
        .any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
    {
        out.extend_from_slice(bytes);
        return;
    }
    for &byte in bytes {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
}

/// Deletes or marks the rows of the records a deletion batch names. Returns how many rows it
/// changed: records never written here, or already deleted, change nothing.
fn apply_deletions(
    tx: &mut Transaction<'_>,
    tables: &mut HashMap<String, Table>,
    schema: &str,
    batch: &Batch<'_>,
    mode: Deletions,
) -> Result<u64, SinkError> {
    let kind = batch.kind();
    let mark = mode == Deletions::Mark;
    // The rows are read first, so a malformed batch fails here as it would elsewhere.
    let rows: Vec<Row<'_>> = batch.rows().collect::<Result<_, _>>()?;
    if !tables.contains_key(kind) {
        // Without a table no record of this kind was ever written: nothing to delete or mark,
        // and no reason to create an empty table.
        let Some(table) = Table::load_existing(tx, schema, kind, mark)? else {
            return Ok(0);
        };
        tables.insert(kind.to_owned(), table);
    }
    let table = tables.get(kind).expect("inserted just above");
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = rows.iter().map(|row| row.id.as_ref()).collect();
    let deleted_at = batch.received_at_rfc3339();
    match mode {
        Deletions::Delete => tx
            .execute(&table.delete_sql(), &[&ids])
            .map_err(|error| table.error("cannot delete the records", &error)),
        Deletions::Mark => tx
            .execute(&table.mark_deleted_sql(), &[&deleted_at, &ids])
            .map_err(|error| table.error("cannot mark the records deleted", &error)),
    }
}

/// A PostgreSQL error with its context: RETRY when waiting can help, FATAL otherwise (the
/// crate docs list the SQLSTATEs).
pub(crate) fn pg_error(context: impl Display, error: &postgres::Error) -> SinkError {
    let message = format!("{context}: {}", describe(error));
    if is_transient(error) {
        SinkError::retry(message)
    } else {
        SinkError::fatal(message)
    }
}

fn is_transient(error: &postgres::Error) -> bool {
    if let Some(code) = error.code() {
        let code = code.code();
        return code.starts_with("08")
            || code.starts_with("53")
            || matches!(
                code,
                "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03"
            );
    }
    // Without a server's answer: refused, reset or timed out connections, and a connection
    // that closed, can all pass; a bad URL or authentication method cannot.
    error.is_closed() || causes(error).any(|cause| cause.is::<std::io::Error>())
}

fn causes<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'e (dyn std::error::Error + 'static)> {
    std::iter::successors(error.source(), |cause| cause.source())
}

/// The error with its causes; the server's errors as `SEVERITY CODE: message (detail)`.
fn describe(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        return text;
    }
    let mut text = error.to_string();
    for cause in causes(error) {
        text.push_str(": ");
        text.push_str(&cause.to_string());
    }
    text
}

export_sink!(PostgresSink, name = "postgres");

#[cfg(test)]
mod tests;
