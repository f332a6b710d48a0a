//! Read-only views: `flatsync status`, `events list` and `events show`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{EventDetail, EventSummary, LastError, OpsDb, OpsError, PollStatus, UploadStatus};
use crate::config::Config;
use crate::daemon::DaemonState;
use crate::daemon::presence::{daemon_state, hostname, process_exists};
use crate::pipeline::route::TopicPattern;
use crate::state::report::Snapshot;
use crate::state::{DaemonRecord, DeliveryStatus, EventStatus, StateError, now_ms};

/// How many daemons `flatsync status` lists, the ones seen last first.
const DAEMONS_LISTED: usize = 20;

/// What `flatsync status --json` prints.
///
/// ```json
/// {
///   "generated_at_ms": 1714564800000,
///   "state_db": "/var/lib/flatsync/state.db",
///   "events": {"pending": 0, "done": 12, "failed": 1, "skipped": 2, "unrouted": 0},
///   "sinks": [{
///     "name": "archive", "configured": true,
///     "pending": 0, "done": 13, "failed": 0, "dropped": 0,
///     "rows_delivered": 15000, "lag_secs": null, "last_error": null,
///     "last_update_ms": 1714564790000
///   }],
///   "routes": [{"index": 0, "topics": ["portalImportSubmitted"], "sinks": ["archive"],
///               "events_pending": 0}],
///   "last_delivery_update_ms": 1714564790000,
///   "daemons": [{
///     "daemon_id": "5f0c3a9e1b7d2468", "pid": 4242, "hostname": "sync-1", "version": "0.1.0",
///     "started_at_ms": 1714564000000, "last_seen_ms": 1714564798000, "stopped_at_ms": null,
///     "webhook_addr": "127.0.0.1:8787", "admin_addr": "127.0.0.1:9187", "state": "running"
///   }]
/// }
/// ```
///
/// `events` always has the five statuses. `sinks` lists every sink that has deliveries, plus
/// the configured ones, by name. `routes` is `null` when no config was read (`--state-dir`).
/// `daemons` lists the 20 daemons (one per start) seen last on this state, most recent first.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    /// When the report was made, ms since the Unix epoch.
    pub generated_at_ms: i64,
    /// The state database read.
    pub state_db: String,
    /// Inbox events by status.
    pub events: BTreeMap<String, u64>,
    /// Per sink.
    pub sinks: Vec<SinkStatus>,
    /// Per configured route, in config order; `None` without a config.
    pub routes: Option<Vec<RouteStatus>>,
    /// The newest change to any delivery (planned, checkpointed into a final state, retried),
    /// ms since the Unix epoch; `None` before the first delivery.
    pub last_delivery_update_ms: Option<i64>,
    /// Per polled environment: its cursor and the events not yet acknowledged to Flatfile.
    pub polling: Vec<PollStatus>,
    /// Uploads whose rows travel in webhook bodies (Portal 2.0 `batch.upload`, a forwarded
    /// flatsync stream) with parts still missing: nothing of them is delivered until the last
    /// part arrives.
    pub incomplete_uploads: Vec<UploadStatus>,
    /// The daemons that run or ran on this state (one per start), seen last first.
    pub daemons: Vec<DaemonStatus>,
}

/// A daemon of this state, in a [`StatusReport`]: its row, and where it stands now.
#[derive(Clone, Debug, Serialize)]
pub struct DaemonStatus {
    /// Who it is, where it listens, when it was last seen.
    #[serde(flatten)]
    pub daemon: DaemonRecord,
    /// `running` (seen within the last 15 s and, when it ran on this host, its process
    /// exists), `stopped` (stopped cleanly) or `gone` (killed, crashed, or its host is down).
    pub state: DaemonState,
    /// It holds the active role: it polls Flatfile and writes grouped event rows. On an SQLite
    /// state, the running daemon; on a PostgreSQL state, the one whose session holds the role.
    pub active: bool,
    /// On a PostgreSQL state, the events it has claimed (is working on) now; `None` on SQLite
    /// or for a daemon that is not running.
    pub claims: Option<u64>,
}

/// One sink's share of the work, in a [`StatusReport`].
#[derive(Clone, Debug, Serialize)]
pub struct SinkStatus {
    /// Sink name.
    pub name: String,
    /// Whether the config names it; `None` without a config. Deliveries to sinks no longer
    /// configured stay in the database.
    pub configured: Option<bool>,
    /// Deliveries still to do.
    pub pending: u64,
    /// Deliveries finished.
    pub done: u64,
    /// Dead letters: deliveries that failed for good until retried or dropped.
    pub failed: u64,
    /// Dead letters an operator dropped.
    pub dropped: u64,
    /// Rows the sink made durable: the rows of done deliveries plus the rows already
    /// checkpointed for pending ones.
    pub rows_delivered: u64,
    /// Age in seconds of the oldest event with a pending delivery to this sink; `None` when
    /// nothing is pending.
    pub lag_secs: Option<u64>,
    /// The newest failed delivery.
    pub last_error: Option<LastError>,
    /// The newest change to one of its deliveries, ms since the Unix epoch.
    pub last_update_ms: Option<i64>,
}

/// One configured route, in a [`StatusReport`].
#[derive(Clone, Debug, Serialize)]
pub struct RouteStatus {
    /// Position in the config's `[[routes]]`, from 0.
    pub index: usize,
    /// Topic patterns.
    pub topics: Vec<String>,
    /// Sinks.
    pub sinks: Vec<String>,
    /// Pending inbox events whose topic the route matches.
    pub events_pending: u64,
}

/// Which events `events list` shows.
#[derive(Clone, Debug)]
pub struct EventFilter {
    /// Only events with this status.
    pub status: Option<EventStatus>,
    /// Only events whose topic matches this glob.
    pub topic: Option<TopicPattern>,
    /// At most this many, newest first.
    pub limit: usize,
}

impl Default for EventFilter {
    fn default() -> EventFilter {
        EventFilter {
            status: None,
            topic: None,
            limit: 50,
        }
    }
}

impl OpsDb {
    /// The overview `flatsync status` prints. Routes and the `configured` flags come from
    /// `config` when given.
    pub fn status(&self, config: Option<&Config>) -> Result<StatusReport, OpsError> {
        let now = now_ms();
        // One snapshot: every number comes from the same moment.
        self.db
            .read(|snapshot| Ok(self.status_in(snapshot, config, now)?))
    }

    /// The overview of [`OpsDb::status`], read from `snapshot` as of `now`.
    pub(super) fn status_in(
        &self,
        snapshot: &Snapshot<'_>,
        config: Option<&Config>,
        now: i64,
    ) -> Result<StatusReport, StateError> {
        Ok(StatusReport {
            generated_at_ms: now,
            state_db: self.path().display().to_string(),
            events: event_totals(snapshot)?,
            sinks: sink_statuses(snapshot, config, now)?,
            routes: config.map(|c| route_statuses(snapshot, c)).transpose()?,
            last_delivery_update_ms: snapshot.last_delivery_update_ms()?,
            polling: snapshot.polling()?,
            incomplete_uploads: snapshot.incomplete_uploads()?,
            daemons: daemon_statuses(snapshot, now)?,
        })
    }

    /// Events for `events list`, newest first.
    pub fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, OpsError> {
        let keep = |event: &EventSummary| {
            filter
                .topic
                .as_ref()
                .is_none_or(|p| p.matches(&event.topic))
        };
        Ok(self
            .db
            .read(|snapshot| snapshot.events(filter.status, keep, filter.limit))?)
    }

    /// Everything about one event, for `events show`; `None` when it is not in the inbox.
    pub fn show_event(&self, event_id: &str) -> Result<Option<EventDetail>, OpsError> {
        Ok(self.db.read(|snapshot| snapshot.event_detail(event_id))?)
    }
}

/// The daemons seen last, each with where it stands at `now`.
fn daemon_statuses(snapshot: &Snapshot<'_>, now: i64) -> Result<Vec<DaemonStatus>, StateError> {
    let this_host = hostname();
    let shared = snapshot.is_postgres();
    let active = snapshot.active_daemon()?;
    let claims = snapshot.claims()?;
    Ok(snapshot
        .daemons(DAEMONS_LISTED)?
        .into_iter()
        .map(|daemon| {
            let state = daemon_state(&daemon, now, &this_host, process_exists);
            let running = state == DaemonState::Running;
            // A daemon's sessions name its pid and host (cut to 63 bytes).
            let session = format!("flatsync/{}@{}", daemon.pid, daemon.hostname);
            let is = |name: &str| running && session.starts_with(name);
            let active = match &active {
                Some(name) => is(name),
                None => !shared && running,
            };
            let claims = (shared && running).then(|| {
                claims
                    .iter()
                    .filter(|(name, _)| is(name))
                    .map(|(_, n)| *n)
                    .sum()
            });
            DaemonStatus {
                state,
                active,
                claims,
                daemon,
            }
        })
        .collect())
}

/// Inbox events by status, every status listed.
fn event_totals(snapshot: &Snapshot<'_>) -> Result<BTreeMap<String, u64>, StateError> {
    let mut events: BTreeMap<String, u64> = EventStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    for (status, count) in snapshot.event_counts()? {
        *events.entry(status.as_str().to_owned()).or_default() += count;
    }
    Ok(events)
}

/// Every sink with deliveries, and every configured one, by name.
fn sink_statuses(
    snapshot: &Snapshot<'_>,
    config: Option<&Config>,
    now: i64,
) -> Result<Vec<SinkStatus>, StateError> {
    let blank = |name: &str| SinkStatus {
        name: name.to_owned(),
        configured: config.map(|c| c.sinks.contains_key(name)),
        pending: 0,
        done: 0,
        failed: 0,
        dropped: 0,
        rows_delivered: 0,
        lag_secs: None,
        last_error: None,
        last_update_ms: None,
    };
    let mut sinks: BTreeMap<String, SinkStatus> = BTreeMap::new();
    for name in config.iter().flat_map(|c| c.sinks.keys()) {
        sinks.insert(name.clone(), blank(name));
    }
    for count in snapshot.delivery_counts()? {
        let entry = sinks
            .entry(count.sink.clone())
            .or_insert_with(|| blank(&count.sink));
        *match count.status {
            DeliveryStatus::Pending => &mut entry.pending,
            DeliveryStatus::Done => &mut entry.done,
            DeliveryStatus::Failed => &mut entry.failed,
            DeliveryStatus::Dropped => &mut entry.dropped,
        } += count.count;
        entry.rows_delivered += count.done_rows;
        entry.last_update_ms = entry.last_update_ms.max(count.last_update_ms);
    }
    // Pending deliveries count the rows already checkpointed for them.
    for (sink, rows) in snapshot.pending_checkpointed_rows()? {
        if let Some(entry) = sinks.get_mut(&sink) {
            entry.rows_delivered += rows;
        }
    }
    for (sink, oldest) in snapshot.oldest_pending()? {
        if let Some(entry) = sinks.get_mut(&sink) {
            entry.lag_secs = Some((now.saturating_sub(oldest).max(0) / 1_000) as u64);
        }
    }
    for entry in sinks.values_mut().filter(|s| s.failed > 0) {
        entry.last_error = snapshot.last_error(&entry.name)?;
    }
    Ok(sinks.into_values().collect())
}

/// The configured routes, each with the pending events whose topic it matches.
fn route_statuses(
    snapshot: &Snapshot<'_>,
    config: &Config,
) -> Result<Vec<RouteStatus>, StateError> {
    let pending = snapshot.pending_topics()?;
    Ok(config
        .routes
        .iter()
        .enumerate()
        .map(|(index, route)| RouteStatus {
            index,
            topics: route.topics.iter().map(|t| t.as_str().to_owned()).collect(),
            sinks: route.sinks.clone(),
            events_pending: pending
                .iter()
                .filter(|(topic, _)| route.topics.iter().any(|p| p.matches(topic)))
                .map(|(_, n)| n)
                .sum(),
        })
        .collect())
}
