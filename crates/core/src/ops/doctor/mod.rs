//! `flatsync doctor`: the state database's integrity (with quarantine and salvage, in
//! [`state`]), every sink's plugin ([`sinks`]), and the Flatfile API keys ([`api`]).

mod api;
mod sinks;
mod state;

pub use api::{ApiCheck, ApiOutcome, check_flatfile};
pub use sinks::{SinkCheck, check_sinks};
pub use state::{RepairReport, daemon_using_state, repair_state};
