//! Write flatsync sink plugins in safe Rust.
//!
//! A sink plugin is a `cdylib` that flatsync loads at start-up. The plugin implements [`Sink`]
//! and names itself with [`export_sink!`]; this crate supplies the C ABI underneath (the
//! descriptor, the `extern "C"` trampolines, panic containment), so the plugin crate itself
//! needs no `unsafe`.
//!
//! # The contract
//!
//! **Streams and batches.** flatsync delivers rows in *streams*: one legacy Portal batch, or one
//! Platform sheet within one event. [`Batch::stream`] is a stable id made of `[A-Za-z0-9_.-]`,
//! suitable for a file name; [`Batch::kind`] says what the rows are (a sheet slug or
//! `legacy_batch`) and suits a table name. A stream arrives as batches numbered
//! [`Batch::seq`] 0, 1, 2, …; the last carries [`Batch::is_last`]. An empty stream is a single
//! batch with seq 0, no rows and the last flag. [`Batch::rows`] parses the rows lazily,
//! borrowing from the host's buffer.
//!
//! **Statuses.** Every method returns `Ok` or a [`SinkError`]. [`SinkError::retry`] asks the
//! host to back off and repeat the *same* call with the *same* bytes (a busy database, a disk
//! being cleaned up). [`SinkError::fatal`] stops the instance: the host freezes its checkpoint
//! and reports the message. A panic is caught and becomes a fatal error
//! (`plugin panicked: <message>`); the instance is then *poisoned* and every later call fails
//! without reaching your code, because its state can no longer be trusted.
//!
//! **Durability.** `Ok` from [`Sink::write_batch`] means *accepted*, not necessarily durable.
//! [`Sink::flush`] is the durability point: when it returns `Ok`, every batch accepted so far
//! must survive a crash or a power cut. The host advances its own checkpoint only after a
//! successful flush. A sink that commits each batch durably inside `write_batch` can make
//! `flush` a no-op.
//!
//! **Delivery is at least once.** After a retry, a crash or a restart the host re-sends batches
//! from its checkpoint, with the same `seq` and identical bytes. Its checkpoint is never ahead
//! of what your sink made durable, but it can be behind. To be exactly-once, keep *your own*
//! durable position per stream (the last applied seq), stored atomically with the data, and on
//! each batch:
//!
//! - `seq` at or below the applied position (or already accepted in this process): skip it
//!   and return `Ok`;
//! - `seq` equal to the next expected one: apply it;
//! - `seq` beyond that: a gap, which must not happen; return a fatal error.
//!
//! **Resuming without fetching again (optional).** A sink that keeps batches somewhere that
//! survives a crash of the daemon's process before it flushed them (bytes written to a file,
//! not yet synced) can say so in [`Sink::held`]: before resuming a stream the host asks, and
//! sends only the batches after those. It still records them as delivered only after your next
//! successful `flush`. [`files::StreamFolder::held`] answers it for a folder sink.
//!
//! [`StreamPosition::step`] is this rule: build the position from what the sink stored and do
//! what the [`BatchStep`] says. A sink writing one file per stream gets the rest too from
//! [`files::StreamFolder`]: the partial file, the state file holding the position, the syncs in
//! a crash-safe order, and the final name once the stream is complete. A sink giving every
//! field key a column of its own (a table, a CSV header) finds the column of each value with
//! [`FieldColumns`].
//!
//! **Threads.** The host gives every instance its own thread: all calls on one instance come
//! from that thread, one at a time, so the sink needs `Send` but not `Sync` and may hold
//! non-thread-safe handles (a database connection). Different instances, possibly of the same
//! plugin, run in parallel, so any global state must be thread-safe.
//!
//! **Logging.** [`CreateContext::logger`] forwards to the daemon's log, attributed to the
//! instance. Keep a clone in the sink. Never log secrets.
//!
//! **Build.** Keep `panic = "unwind"` (the default): under `panic = "abort"` a panic in a plugin
//! kills the daemon, and the descriptor says so to the host.
//!
//! # Example
//!
//! ```
//! use std::collections::HashMap;
//!
//! use flatsync_plugin_sdk::{
//!     Batch, BatchParts, BatchStep, CellValue, ConfigReader, CreateContext, Logger, Sink,
//!     SinkError, StreamPosition, export_sink, serde_json,
//! };
//!
//! /// Sums the numeric cells of every row. A real sink would store its positions durably.
//! struct Summer {
//!     logger: Logger,
//!     /// How far each stream is applied, so that re-delivered batches are skipped.
//!     positions: HashMap<String, StreamPosition>,
//!     total: f64,
//! }
//!
//! impl Sink for Summer {
//!     fn create(ctx: &CreateContext<'_>, config: serde_json::Value) -> Result<Self, SinkError> {
//!         ConfigReader::new(config)?.finish()?;
//!         Ok(Self { logger: ctx.logger().clone(), positions: HashMap::new(), total: 0.0 })
//!     }
//!
//!     fn write_batch(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
//!         let position = self.positions.get(batch.stream()).copied().unwrap_or_default();
//!         match position.step(batch)? {
//!             // Already applied: a re-delivery. (Nothing here needs finishing after the
//!             // last batch.)
//!             BatchStep::Skip | BatchStep::Finish => return Ok(()),
//!             BatchStep::Apply => {}
//!         }
//!         for row in batch.rows() {
//!             for (_key, raw) in row?.values {
//!                 if let CellValue::Number(text) = CellValue::parse(raw)? {
//!                     self.total += text.parse::<f64>().map_err(SinkError::fatal)?;
//!                 }
//!             }
//!         }
//!         self.positions.insert(batch.stream().to_owned(), StreamPosition::Applied(batch.seq()));
//!         Ok(())
//!     }
//!
//!     fn flush(&mut self) -> Result<(), SinkError> {
//!         self.logger.info(&format!("Total so far: {}", self.total));
//!         Ok(())
//!     }
//! }
//!
//! export_sink!(Summer, name = "summer");
//!
//! # fn main() -> Result<(), SinkError> {
//! // Sinks can be tested without the host:
//! let mut sink = Summer::create(&CreateContext::new("t", Logger::discard()), serde_json::json!({}))?;
//! let batch = Batch::from_parts(BatchParts {
//!     stream: "contacts-ev1",
//!     seq: 0,
//!     row_count: 1,
//!     ndjson: br#"{"id":"r1","valid":true,"values":{"age":41,"name":"Ada"}}
//! "#,
//!     last: true,
//!     ..BatchParts::default()
//! });
//! sink.write_batch(&batch)?;
//! sink.write_batch(&batch)?; // Re-delivered: skipped.
//! assert_eq!(sink.total, 41.0);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]
// The SDK implements the C ABI trampolines and the descriptor, which need raw pointers; every
// unsafe block carries its own SAFETY argument, and plugin crates stay free of `unsafe`.
#![allow(unsafe_code)]

mod batch;
mod columns;
mod config;
mod error;
mod ffi;
pub mod files;
mod host;
mod seq;
pub mod time;

pub use flatsync_plugin_api as abi;
pub use serde_json;

pub use batch::{
    Batch, BatchParts, CellValue, LineMark, Row, RowJson, Rows, compact_json, unescape_json_string,
    write_json_string,
};
pub use columns::FieldColumns;
pub use config::ConfigReader;
pub use error::{ErrorKind, SinkError};
pub use ffi::PluginDescriptor;
pub use host::{CreateContext, LogLevel, Logger};
pub use seq::{BatchStep, StreamPosition};

/// What a sink holds of a stream beyond what its last flush made durable, as [`Sink::held`]
/// reports it: batches `0..=seq`, `rows` rows in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The last batch seq held; every batch before it is held too.
    pub seq: u64,
    /// The rows of batches `0..=seq`, in all.
    pub rows: u64,
}

/// The descriptor of sink type `S`, for running it inside the program that embeds flatsync,
/// with no shared library: hand it to `flatsync_core::DaemonBuilder::plugin`. Calls go through
/// the same ABI, checks and one-thread-per-instance model as a loaded plugin.
///
/// Each call leaks one small descriptor (it must live as long as the process), so register
/// each sink type once.
///
/// ```
/// use flatsync_plugin_sdk::{Batch, CreateContext, Sink, SinkError, serde_json};
///
/// struct Count(u64);
///
/// impl Sink for Count {
///     fn create(_: &CreateContext<'_>, _: serde_json::Value) -> Result<Self, SinkError> {
///         Ok(Count(0))
///     }
///     fn write_batch(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
///         self.0 += batch.row_count();
///         Ok(())
///     }
///     fn flush(&mut self) -> Result<(), SinkError> {
///         Ok(())
///     }
/// }
///
/// let descriptor = flatsync_plugin_sdk::in_process::<Count>("count");
/// assert_eq!(descriptor.abi_major, flatsync_plugin_sdk::abi::ABI_MAJOR);
/// ```
pub fn in_process<S: Sink>(name: &str) -> &'static abi::FlatsyncPlugin {
    let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
    let descriptor: &'static PluginDescriptor = Box::leak(Box::new(PluginDescriptor::new::<S>(
        name,
        env!("CARGO_PKG_VERSION"),
        cfg!(panic = "unwind"),
    )));
    descriptor.get()
}

/// A sink: what a plugin implements. See the [crate docs](crate) for the contract.
pub trait Sink: Send + Sized + 'static {
    /// Whether the sink handles deletion batches ([`Batch::is_deletions`]). When `false`, the
    /// host hands deletions over as ordinary rows of kind `<kind>_deleted` instead.
    const HANDLES_DELETIONS: bool = false;

    /// Builds an instance from the `[sink.config]` table of the daemon's config, as JSON (an
    /// empty object when the table is absent). Any error is fatal and stops the daemon's
    /// start-up, so validate the whole config here and name the key at fault
    /// ([`ConfigReader`] does).
    fn create(ctx: &CreateContext<'_>, config: serde_json::Value) -> Result<Self, SinkError>;

    /// Accepts one batch. The batch's bytes are only valid during the call.
    fn write_batch(&mut self, batch: &Batch<'_>) -> Result<(), SinkError>;

    /// Makes every accepted batch durable.
    fn flush(&mut self) -> Result<(), SinkError>;

    /// Start-up health check, called once after `create` (e.g. the destination is writable).
    fn check(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Which batches of `stream` the sink holds beyond what its last `flush` made durable, in
    /// a form that survives a crash of this process (written to the operating system, not yet
    /// synced), or `None`: nothing to tell (a fresh or complete stream, nothing beyond the
    /// durable position, or unknown). The host asks before it resumes a stream that may have
    /// been started before and then sends only the batches after `seq`; the next `flush` must
    /// make them durable. Once the stream's last batch was given, answer `None`.
    ///
    /// The default answers `None`, which is always safe: the host re-sends from its checkpoint.
    fn held(&mut self, stream: &str) -> Result<Option<Held>, SinkError> {
        let _ = stream;
        Ok(None)
    }
}

/// Exports `$sink` as this library's plugin, under `name` (the name a daemon config's
/// `plugin = "..."` refers to).
///
/// `version` defaults to the plugin crate's `CARGO_PKG_VERSION`. Use it once per `cdylib`,
/// at the crate root.
///
/// Usage (the [crate docs](crate) have a complete example):
///
/// ```text
/// flatsync_plugin_sdk::export_sink!(CsvFolder, name = "csv-folder");
/// flatsync_plugin_sdk::export_sink!(CsvFolder, name = "csv-folder", version = "2.1.0");
/// ```
#[macro_export]
macro_rules! export_sink {
    ($sink:ty, name = $name:expr $(,)?) => {
        $crate::export_sink!($sink, name = $name, version = env!("CARGO_PKG_VERSION"));
    };
    ($sink:ty, name = $name:expr, version = $version:expr $(,)?) => {
        /// The flatsync plugin entry point: returns this library's static descriptor.
        #[allow(unsafe_code, unreachable_pub)]
        #[unsafe(no_mangle)]
        pub extern "C" fn flatsync_plugin_entry() -> *const $crate::abi::FlatsyncPlugin {
            // `cfg!` here is evaluated in the plugin crate, whose build decides how panics work.
            static DESCRIPTOR: $crate::PluginDescriptor =
                $crate::PluginDescriptor::new::<$sink>($name, $version, cfg!(panic = "unwind"));
            DESCRIPTOR.as_ptr()
        }
    };
}

#[cfg(test)]
mod tests;
