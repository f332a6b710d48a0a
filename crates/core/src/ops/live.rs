//! What `flatsync top` samples: the overview of `flatsync status` and the deliveries in flight
//! with their progress, read in one snapshot so that the counts and the bars agree.

use super::{OpsDb, OpsError, StatusReport};
use crate::config::Config;
use crate::state::now_ms;
use crate::state::report::InFlight;

/// One sample of the state database for `flatsync top`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LiveReport {
    /// The overview `flatsync status` prints, taken at the same moment.
    pub status: StatusReport,
    /// Pending deliveries, newest event first, at most the limit asked for.
    pub in_flight: Vec<InFlight>,
    /// Pending deliveries in all, also those past the limit.
    pub in_flight_total: u64,
}

impl OpsDb {
    /// Samples the state database for `flatsync top`: the status overview (routes and the
    /// `configured` flags from `config` when given) and at most `limit` deliveries in flight.
    pub fn live(&self, config: Option<&Config>, limit: usize) -> Result<LiveReport, OpsError> {
        let now = now_ms();
        self.db.read(|snapshot| {
            let status = self.status_in(snapshot, config, now)?;
            let in_flight_total = status.sinks.iter().map(|s| s.pending).sum();
            Ok(LiveReport {
                status,
                in_flight: snapshot.in_flight(limit)?,
                in_flight_total,
            })
        })
    }
}
