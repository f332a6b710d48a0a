//! End-to-end tests: the real `flatsync` binary and plugin libraries against the `flatfile-sim`
//! binary, all on 127.0.0.1. Run `cargo build --workspace` first; the harness takes every
//! artifact from the target directory this test binary was built into.

mod abi;
mod addresses;
mod auth;
mod bad_input;
mod boundaries;
mod c_plugin;
mod caps;
mod common;
mod crash;
mod disk;
mod drain;
mod duplicates;
mod events;
mod faults;
mod grouped;
mod hostile;
mod http_forward;
mod init;
mod legacy;
mod metrics;
mod misbehave;
mod operator;
mod packaging;
mod platform;
mod reload;
mod resume;
mod scaffold;
mod secrets;
mod service;
mod shapes;
mod shared_state;
mod top;
mod uploads;
