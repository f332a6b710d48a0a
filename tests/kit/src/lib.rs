//! Test helpers that more than one of flatsync's test suites needs, kept here once.
//!
//! `flatsync-core`'s unit tests cannot depend on the end-to-end harness (`flatsync-tests`
//! depends on the simulator and runs binaries), and the plugin host's tests cannot depend on
//! core; so what they share lives in this small crate, a dev-dependency of each. It depends on
//! no flatsync crate, so it can never close a cycle.
//!
//! - [`bench`](mod@bench): batches and the write-path timing the criterion benchmarks share.
//! - [`prometheus`]: a strict parser of the Prometheus text format and lookups over a scrape.
//! - [`fs`]: the sorted names in a folder a sink wrote.
//! - [`sqlite`]: damaging the pages of an SQLite file that hold a marker.
//! - [`postgres`](mod@postgres): a uniquely named PostgreSQL database per test, dropped at its
//!   end, on the server of `FLATSYNC_TEST_POSTGRES_URL`.
//! - [`cc`]: compiling a C test plugin or program with the system compiler and the plugin
//!   header.
//!
//! Helpers panic with a message instead of returning errors: they run only inside tests.

pub mod bench;
pub mod cc;
pub mod fs;
pub mod postgres;
pub mod prometheus;
pub mod sqlite;
