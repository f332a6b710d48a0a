//! Harness for flatsync's end-to-end tests.
//!
//! The tests drive the real artifacts a user runs: the `flatsync` binary, the `flatfile-sim`
//! binary and the plugin libraries, all taken from the cargo target directory the test binary
//! lives in (so `cargo build --workspace && cargo test --workspace` tests what was just built).
//!
//! - [`Sim`] runs `flatfile-sim` on 127.0.0.1 and reads its admin API.
//! - [`Daemon`] writes a config file into a test directory and runs `flatsync run` on it
//!   ([`DaemonProcess`]), with `kill9`, `restart` and `stop`.
//! - [`http`] is a tiny blocking HTTP/1.1 client for webhooks and the simulator.
//! - [`check`] reads what the sinks wrote and compares it with what the simulator served.
//! - [`wait`] polls with deadlines and explains what it was waiting for when it gives up.
//! - [`postgres`] reads a PostgreSQL state directly (which daemon is active, the inbox) and
//!   relays connections to the database through a port a test can cut.
//! - [`gate`] holds the daemon's requests to the simulator, so a test can stop the daemon while
//!   a page it waits for cannot arrive.
//!
//! Everything binds 127.0.0.1 and lives in its own temporary directory, so tests run in
//! parallel. Every loop is bounded in time.

pub mod artifacts;
pub mod check;
pub mod daemon;
pub mod disk;
pub mod gate;
pub mod http;
pub mod postgres;
pub mod sim;
pub mod wait;

pub use artifacts::Artifacts;
pub use check::{CsvFile, Tally};
pub use daemon::{Daemon, DaemonProcess, EventRow};
pub use gate::RequestGate;
pub use http::HttpReply;
pub use sim::Sim;
pub use wait::TestDir;

/// The daemon's test hook (`flatsync_core::STALL_FILE_ENV`): while the named file exists, its
/// main loop stops turning. Spelled out here because the harness does not link the daemon.
pub const STALL_FILE_ENV: &str = "FLATSYNC_TEST_STALL_FILE";
