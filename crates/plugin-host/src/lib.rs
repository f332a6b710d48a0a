//! Loads flatsync sink plugins and runs their instances.
//!
//! This is the only crate that talks to `dlopen`. It speaks nothing but the C ABI of
//! [`flatsync_plugin_api`], so a plugin written in C loads exactly like one built with the SDK.
//!
//! - [`resolve_plugin`] and [`default_search_dirs`] turn a config's `plugin = "..."` into a file.
//! - [`LoadedPlugin::load`] opens that file, checks its descriptor (magic, ABI version, size,
//!   required functions, name) and keeps the library loaded for the rest of the process.
//! - [`SinkWorker`] runs one sink instance on its own thread and offers async calls with
//!   retry, backoff and a per-call timeout; [`SinkWorker::held`] asks a sink (ABI 1.2) which
//!   batches it holds beyond its last flush, so a resumed stream is not fetched again.
#![warn(missing_docs)]
// Reason: this crate sits on the C ABI (dlopen, calls through plugin function pointers).
#![allow(unsafe_code)]

mod error;
mod load;
mod search;
mod worker;

pub use error::{LoadError, SinkError};
pub use load::LoadedPlugin;
pub use search::{default_search_dirs, resolve_plugin};
pub use worker::{HeldBatches, OwnedBatch, QueuedWrite, SinkOptions, SinkWorker};

/// Environment variable that, set to `1` or `true`, lets a plugin load although its file or
/// directory is writable by group or others or belongs to another user (see
/// [`LoadedPlugin::load`]). For development only: each such load logs a warning.
pub const ALLOW_INSECURE_PLUGINS_ENV: &str = "FLATSYNC_ALLOW_INSECURE_PLUGINS";
