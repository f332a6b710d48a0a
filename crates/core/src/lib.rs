//! flatsync's core: configuration, the sources (webhook and poll), the inbox and checkpoints in
//! the state database, routing, planning and the delivery pipeline. The `flatsync` binary is a
//! thin CLI over this crate, and a Rust program can run a daemon in-process with
//! [`RunningDaemon::start`].
//!
//! The folders follow an event: `source` receives it and commits it to the inbox in
//! [`state`]; `pipeline` routes and plans it, fetches its rows and hands them to the sinks,
//! then checkpoints in [`state`]; `daemon` starts and reloads all of it; [`ops`] are the
//! operator commands over the same state.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = flatsync_core::Config::load("/etc/flatsync/config.toml".as_ref())?;
//! let daemon = flatsync_core::RunningDaemon::start(config).await?;
//! // ... serve until told to stop ...
//! daemon.shutdown().await;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod config;
mod daemon;
pub mod health;
pub mod metrics;
pub mod ops;
mod pipeline;
mod source;
pub mod state;
mod time;

pub use pipeline::route;

pub use config::{Config, ConfigError, SecretSource};
pub use daemon::{
    DaemonBuilder, InProcessPlugins, ReadyInfo, ReloadSummary, RunningDaemon, StartError,
    flatfile_client, load_sink_plugin, start_sinks, webhook_auth_summary,
};
pub use flatsync_flatfile::Secret;
pub use flatsync_plugin_api::FlatsyncPlugin;
pub use flatsync_plugin_host::LoadedPlugin;
pub use health::Health;
pub use pipeline::dispatch::{DrainReport, STALL_FILE_ENV};
pub use pipeline::plan::LEGACY_KIND;
pub use source::webhook::auth::{PATH_SECRET_MIN_CHARS, WebhookAuthError};
pub use state::{DeliveryStatus, EventStatus, StateDb, StateError};
