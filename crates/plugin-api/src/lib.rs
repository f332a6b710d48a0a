//! The C ABI spoken between the flatsync host and sink plugins.
//!
//! This crate is the whole contract and has no dependencies: a plugin written in C includes
//! `include/flatsync_plugin.h`, a plugin written in Rust uses `flatsync-plugin-sdk` (which builds
//! on these types), and the host (`flatsync-plugin-host`) checks every descriptor against the
//! constants here before calling anything.
//!
//! Rules of the boundary:
//! - A plugin exports one function, [`ENTRY_SYMBOL`], returning a pointer to a static
//!   [`FlatsyncPlugin`] descriptor.
//! - Only borrowed bytes cross: every [`FlatsyncStr`] is valid for the duration of the call that
//!   received it. Whoever wants to keep bytes copies them. Nothing allocated on one side is freed
//!   on the other; the one plugin-owned object, the instance, is freed by the plugin's `destroy`.
//! - Calls return a [`FlatsyncStatus`]: [`STATUS_OK`], [`STATUS_RETRY`] or [`STATUS_FATAL`].
//!   The host treats any other value as fatal.
//! - The host never calls one instance from two threads at once; all calls on an instance come
//!   from the same thread.
//!
//! Versioning: [`ABI_MAJOR`] changes when an existing field changes meaning or place. Within a
//! major version, structs only grow at the end, and each carries its size so the reader can tell
//! which fields exist. The host loads a plugin of the same major whatever its minor, and refuses
//! any other major with a message saying which side is out of date. `docs/abi-versioning.md`
//! in the repository has the whole policy and the exact messages.
#![warn(missing_docs)]
#![no_std]

use core::ffi::c_void;

/// First eight bytes of every descriptor.
pub const MAGIC: [u8; 8] = *b"FLATSYNC";

/// The major ABI version this crate describes. A host loads only plugins of the same major.
pub const ABI_MAJOR: u32 = 1;

/// The minor ABI version. Minor versions only add: fields appended to structs (gated by their
/// `struct_size`), optional function pointers, flag bits an older reader may ignore. A host
/// loads a plugin of its major whatever its minor, older or newer.
pub const ABI_MINOR: u32 = 2;

/// Name of the one symbol a plugin exports, without the trailing NUL.
pub const ENTRY_SYMBOL: &str = "flatsync_plugin_entry";

/// Status returned by every fallible plugin call.
pub type FlatsyncStatus = i32;
/// The call succeeded.
pub const STATUS_OK: FlatsyncStatus = 0;
/// The call failed for a reason that may pass (a busy database, a full disk being cleaned up);
/// the host backs off and repeats the same call with the same bytes.
pub const STATUS_RETRY: FlatsyncStatus = 1;
/// The call failed for good; the host stops using this instance for the stream.
pub const STATUS_FATAL: FlatsyncStatus = 2;

/// Descriptor flag: no panic or exception can escape any of the plugin's functions.
///
/// A Rust plugin sets it when built with `panic = "unwind"`, so the SDK can catch every panic
/// and turn it into [`STATUS_FATAL`]. A plugin in a language without unwinding (C, Zig, ...),
/// or in C++ with every entry point catching all exceptions, sets it too: nothing can unwind out
/// of it. When the bit is clear the host warns that a panic in the plugin aborts the daemon.
pub const PLUGIN_FLAG_PANIC_UNWIND: u32 = 1;

/// Descriptor flag (ABI 1.1): the plugin handles deletion batches ([`BATCH_FLAG_DELETIONS`]).
///
/// A host sets [`BATCH_FLAG_DELETIONS`] only on batches for plugins with this bit. A plugin
/// without it receives deletions as ordinary rows of kind `<kind>_deleted`, so a sink that knows
/// nothing of deletions stores them apart from the live rows instead of inserting them among
/// them.
pub const PLUGIN_FLAG_DELETIONS: u32 = 2;

/// Batch flag: this batch is the last of its stream; after it the stream is complete.
pub const BATCH_FLAG_LAST: u32 = 1;

/// Batch flag (ABI 1.1): every row names a record of `kind` that was deleted in Flatfile, as
/// `{"id":"<record id>","valid":true,"values":{}}`. The sink removes (or marks) the record.
/// Set only for plugins that declare [`PLUGIN_FLAG_DELETIONS`].
pub const BATCH_FLAG_DELETIONS: u32 = 2;

/// [`FlatsyncHeld::holds`] (ABI 1.2): the sink has nothing to tell about the stream (a fresh or
/// complete stream, one it holds nothing of beyond what it made durable, or one it cannot say).
pub const HELD_NOTHING: u32 = 0;
/// [`FlatsyncHeld::holds`] (ABI 1.2): the sink holds batches `0..=seq` of the stream, `rows` rows
/// in all, and they survive a restart of the host process (not necessarily a power cut).
pub const HELD_BATCHES: u32 = 1;

/// Log levels for [`FlatsyncHost::log`].
pub const LOG_ERROR: u32 = 1;
/// Warning level.
pub const LOG_WARN: u32 = 2;
/// Info level.
pub const LOG_INFO: u32 = 3;
/// Debug level.
pub const LOG_DEBUG: u32 = 4;

/// Borrowed UTF-8 (or, for `ndjson`, byte) string: pointer and length, no terminating NUL.
/// Valid only for the duration of the call that received it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlatsyncStr {
    /// First byte; may be dangling when `len` is 0.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

/// Host-owned sink for an error message, passed to every fallible call. The plugin calls `set`
/// (any number of times; the last message wins) and the host copies the bytes inside the call.
#[repr(C)]
#[derive(Debug)]
pub struct FlatsyncError {
    /// Host context; pass back unchanged.
    pub ctx: *mut c_void,
    /// Records `message` as the error of the current call.
    pub set: Option<unsafe extern "C" fn(ctx: *mut c_void, message: FlatsyncStr)>,
}

/// Services the host offers a plugin instance. Valid from `create` until `destroy` returns.
#[repr(C)]
#[derive(Debug)]
pub struct FlatsyncHost {
    /// Size of this struct as the host compiled it.
    pub struct_size: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Host context; pass back unchanged.
    pub ctx: *mut c_void,
    /// Writes a log line into the host's log, attributed to the instance. Thread-safe.
    pub log: Option<unsafe extern "C" fn(ctx: *mut c_void, level: u32, message: FlatsyncStr)>,
}

/// One batch of rows of one stream.
///
/// A stream is the unit a sink turns into one file or one set of rows: one legacy batch, or one
/// Platform sheet within one event. Batches of a stream arrive in `seq` order starting at 0, and
/// a batch that is delivered again (after a retry or a restart) carries the same `seq` and the
/// same bytes, so a sink can skip what it already made durable.
#[repr(C)]
#[derive(Debug)]
pub struct FlatsyncBatch {
    /// Size of this struct as the host compiled it.
    pub struct_size: u32,
    /// `BATCH_FLAG_*` bits.
    pub flags: u32,
    /// Stable stream id, unique per stream, made of `[A-Za-z0-9_.-]`.
    pub stream: FlatsyncStr,
    /// What the stream's rows are: a sheet slug or `legacy_batch`. Suits a table name.
    pub kind: FlatsyncStr,
    /// Id of the Flatfile event the stream belongs to.
    pub event_id: FlatsyncStr,
    /// JSON array of the field keys in schema order, `[]` when the source has no schema.
    pub fields_json: FlatsyncStr,
    /// Position of this batch in its stream, from 0.
    pub seq: u64,
    /// Number of rows in `ndjson`.
    pub row_count: u64,
    /// `row_count` JSON objects, each followed by `\n`:
    /// `{"id":"<record id>","valid":true,"values":{"<field key>":<value>,...}}`.
    pub ndjson: FlatsyncStr,
    /// When flatsync received the event, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
}

/// What a sink holds of one stream, filled in by [`HeldFn`] (ABI 1.2).
///
/// The host sets `struct_size` and `holds` = [`HELD_NOTHING`] before the call; a plugin writes
/// only the fields the host's `struct_size` covers. Any `holds` value other than
/// [`HELD_BATCHES`] means nothing to tell.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FlatsyncHeld {
    /// Size of this struct as the host compiled it.
    pub struct_size: u32,
    /// [`HELD_NOTHING`] or [`HELD_BATCHES`].
    pub holds: u32,
    /// With [`HELD_BATCHES`]: the last batch seq the sink holds; every batch before it is held.
    pub seq: u64,
    /// With [`HELD_BATCHES`]: the rows of batches `0..=seq`, in all.
    pub rows: u64,
}

/// Creates an instance from its name and its JSON config, stores it in `out`.
pub type CreateFn = unsafe extern "C" fn(
    instance_name: FlatsyncStr,
    config_json: FlatsyncStr,
    host: *const FlatsyncHost,
    out: *mut *mut c_void,
    err: *const FlatsyncError,
) -> FlatsyncStatus;
/// Hands a batch to the instance. OK means accepted, not necessarily durable.
pub type WriteBatchFn = unsafe extern "C" fn(
    instance: *mut c_void,
    batch: *const FlatsyncBatch,
    err: *const FlatsyncError,
) -> FlatsyncStatus;
/// Makes every accepted batch durable. The host advances checkpoints only after OK.
pub type FlushFn =
    unsafe extern "C" fn(instance: *mut c_void, err: *const FlatsyncError) -> FlatsyncStatus;
/// Frees the instance. Never fails.
pub type DestroyFn = unsafe extern "C" fn(instance: *mut c_void);
/// Optional start-up health check.
pub type CheckFn =
    unsafe extern "C" fn(instance: *mut c_void, err: *const FlatsyncError) -> FlatsyncStatus;
/// Optional (ABI 1.2): which batches of `stream` the instance holds beyond what its last `flush`
/// made durable, in a form that survives a restart of the host process (bytes written to the
/// operating system, not yet synced). The host asks before it resumes a stream that may have
/// been started before, and then sends only the batches after `seq`; it records them in its
/// checkpoint only after the next successful `flush`, which must make them durable. A sink
/// that was given the stream's last batch, or holds nothing beyond its durable position,
/// reports [`HELD_NOTHING`].
pub type HeldFn = unsafe extern "C" fn(
    instance: *mut c_void,
    stream: FlatsyncStr,
    out: *mut FlatsyncHeld,
    err: *const FlatsyncError,
) -> FlatsyncStatus;

/// The descriptor a plugin's entry function returns. It must live as long as the library.
#[repr(C)]
#[derive(Debug)]
pub struct FlatsyncPlugin {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`ABI_MAJOR`] of the ABI the plugin was built against.
    pub abi_major: u32,
    /// [`ABI_MINOR`] of the ABI the plugin was built against.
    pub abi_minor: u32,
    /// Size of this struct as the plugin compiled it.
    pub struct_size: u32,
    /// `PLUGIN_FLAG_*` bits.
    pub flags: u32,
    /// Plugin name, e.g. `csv-folder`; the name a config's `plugin = "..."` uses.
    pub name: FlatsyncStr,
    /// The plugin's own version, informational.
    pub version: FlatsyncStr,
    /// Free text such as the compiler and SDK versions: logged, never compared.
    pub build_info: FlatsyncStr,
    /// Required.
    pub create: Option<CreateFn>,
    /// Required.
    pub write_batch: Option<WriteBatchFn>,
    /// Required.
    pub flush: Option<FlushFn>,
    /// Required.
    pub destroy: Option<DestroyFn>,
    /// Optional; null when absent.
    pub check: Option<CheckFn>,
    /// Optional (ABI 1.2); null when absent, and absent when `struct_size` does not cover it.
    pub held: Option<HeldFn>,
}

/// Type of the exported entry function.
pub type EntryFn = unsafe extern "C" fn() -> *const FlatsyncPlugin;

// The layout is the ABI: these numbers are repeated as `_Static_assert`s in the C header, so a
// change to either side fails to build (x86_64 and aarch64 Linux: 8-byte pointers).
#[cfg(target_pointer_width = "64")]
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<FlatsyncStr>() == 16);
    assert!(size_of::<FlatsyncError>() == 16);
    assert!(size_of::<FlatsyncHost>() == 24);
    assert!(offset_of!(FlatsyncHost, log) == 16);
    assert!(size_of::<FlatsyncBatch>() == 112);
    assert!(offset_of!(FlatsyncBatch, stream) == 8);
    assert!(offset_of!(FlatsyncBatch, seq) == 72);
    assert!(offset_of!(FlatsyncBatch, ndjson) == 88);
    assert!(offset_of!(FlatsyncBatch, received_at_ms) == 104);
    assert!(size_of::<FlatsyncHeld>() == 24);
    assert!(offset_of!(FlatsyncHeld, seq) == 8);
    assert!(offset_of!(FlatsyncHeld, rows) == 16);
    assert!(size_of::<FlatsyncPlugin>() == 120);
    assert!(offset_of!(FlatsyncPlugin, abi_major) == 8);
    assert!(offset_of!(FlatsyncPlugin, struct_size) == 16);
    assert!(offset_of!(FlatsyncPlugin, name) == 24);
    assert!(offset_of!(FlatsyncPlugin, create) == 72);
    assert!(offset_of!(FlatsyncPlugin, check) == 104);
    assert!(offset_of!(FlatsyncPlugin, held) == 112);
};

/// Smallest descriptor a major-1 host accepts: everything up to and including `check`.
///
/// It never grows within a major version: fields a later minor appends are optional, and a host
/// reads them only when the descriptor's `struct_size` covers them.
pub const MIN_PLUGIN_STRUCT_SIZE: u32 = 112;
