//! The polling source: `GET /v1/events` of every environment with `poll = true`, from a cursor
//! kept in the state database, into the same inbox the webhook writes to.
//!
//! Each poll asks for events since `cursor - overlap` and pages until a short page. Events go
//! into the inbox by id, so one seen twice (the overlap, the webhook) is stored once. Only
//! after a page is durably stored are its events acknowledged to Flatfile, and only after the
//! whole poll is stored does the cursor move, to the newest `createdAt` seen. A crash anywhere
//! makes the next poll ask again for what it may not have stored.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flatsync_flatfile::{EventsQuery, FlatfileClient};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{EnvironmentConfig, PollConfig};
use crate::pipeline::{EngineSlot, current};
use crate::state::{PolledEvent, StateDb, StateError, now_ms};
use crate::time::{format_utc_millis, parse_rfc3339};

/// How often the poller looks at which environment is due; polls themselves follow each
/// environment's `poll_interval_ms`.
const TICK: Duration = Duration::from_millis(100);

/// Pages one poll reads at most: a server that ignored `pageNumber` would otherwise hand out
/// the same full page forever.
const MAX_PAGES_PER_POLL: u64 = 10_000;

/// Acknowledgements sent per poll and environment; the rest wait for the next poll.
const ACKS_PER_POLL: usize = 1_000;

/// Polls every environment with polling enabled until `drain` turns true. The environments,
/// their intervals and keys are read from the current engine before each poll, so a reload
/// applies to the next poll.
pub(crate) async fn run(
    slot: EngineSlot,
    accepted: mpsc::UnboundedSender<String>,
    mut drain: watch::Receiver<bool>,
) {
    let mut next_due: BTreeMap<String, Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = drain.changed() => {
                if changed.is_err() || *drain.borrow() {
                    return;
                }
            }
        }
        let engine = current(&slot);
        let due: Vec<(String, EnvironmentConfig, PollConfig)> = engine
            .config
            .environments
            .iter()
            .filter_map(|(name, env)| {
                let poll = env.poll.clone()?;
                let is_due = next_due
                    .get(&env.id)
                    .is_none_or(|due| *due <= Instant::now());
                is_due.then(|| (name.clone(), env.clone(), poll))
            })
            .collect();
        for (name, env, poll) in due {
            let client = engine.clients.for_environment(Some(&env.id)).clone();
            let outcome = tokio::select! {
                outcome = poll_once(&engine.state, &client, &env.id, &poll, &accepted) => outcome,
                _ = drain.changed() => return,
            };
            match outcome {
                Ok(report) if report.fresh > 0 || report.acked > 0 => tracing::info!(
                    environment = %name,
                    events = report.fresh,
                    seen = report.seen,
                    acked = report.acked,
                    "Events polled"
                ),
                Ok(report) => {
                    tracing::debug!(environment = %name, seen = report.seen, "Events polled")
                }
                Err(e) => {
                    tracing::warn!(environment = %name, error = %e, "Poll failed; retrying at the next interval")
                }
            }
            next_due.insert(env.id.clone(), Instant::now() + poll.interval);
        }
    }
}

/// What one poll did.
#[derive(Debug, Default)]
struct PollReport {
    /// Events listed.
    seen: usize,
    /// Events that were new to the inbox.
    fresh: usize,
    /// Events acknowledged to Flatfile.
    acked: usize,
}

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error(transparent)]
    Api(#[from] flatsync_flatfile::ApiError),
    #[error(transparent)]
    State(#[from] StateError),
}

async fn poll_once(
    state: &StateDb,
    client: &FlatfileClient,
    environment_id: &str,
    poll: &PollConfig,
    accepted: &mpsc::UnboundedSender<String>,
) -> Result<PollReport, PollError> {
    let cursor = match state.poll_cursor(environment_id).await? {
        Some(cursor) => cursor,
        None => {
            // A new cursor is stored before the first request, so "now" means the moment
            // polling was first enabled, not the moment a first poll happened to succeed.
            let start = poll.start_ms.unwrap_or_else(now_ms);
            state
                .insert_polled(environment_id, Vec::new(), Some(start))
                .await?;
            start
        }
    };
    let overlap = i64::try_from(poll.overlap.as_millis()).unwrap_or(i64::MAX);
    let since = (cursor > 0).then(|| format_utc_millis(cursor.saturating_sub(overlap).max(0)));
    let mut report = PollReport::default();
    let mut newest = cursor;
    let mut seen_ids: HashSet<String> = HashSet::new();
    for page_number in 1..=MAX_PAGES_PER_POLL {
        let page = client
            .events_page(&EventsQuery {
                environment_id: environment_id.to_owned(),
                since: since.clone(),
                page_size: poll.page_size,
                page_number,
                include_acknowledged: poll.include_acknowledged,
            })
            .await?;
        for reason in &page.skipped {
            tracing::warn!(environment_id, page_number, reason = %reason, "Polled event skipped");
        }
        let mut repeated = !page.events.is_empty();
        let mut polled = Vec::with_capacity(page.events.len());
        for event in page.events {
            repeated &= !seen_ids.insert(event.id.clone());
            if let Some(created) = event.created_at.as_deref().and_then(parse_rfc3339) {
                newest = newest.max(created);
            }
            polled.push(PolledEvent {
                event_id: event.id,
                topic: event.topic,
                body: event.body,
            });
        }
        report.seen += polled.len();
        let fresh = state.insert_polled(environment_id, polled, None).await?;
        for (id, topic) in fresh {
            crate::metrics::event_received("poll", &topic);
            report.fresh += 1;
            // The dispatcher also rescans the inbox, so a closed channel (stopping) loses
            // nothing.
            let _ = accepted.send(id);
        }
        if page.items_on_page < poll.page_size {
            break;
        }
        if repeated {
            tracing::warn!(
                environment_id,
                page_number,
                "The events API answered a page already seen; it may ignore pageNumber. Stopping this poll"
            );
            break;
        }
    }
    state
        .insert_polled(environment_id, Vec::new(), Some(newest))
        .await?;
    report.acked = acknowledge(state, client, environment_id).await?;
    Ok(report)
}

/// Acknowledges the environment's stored events that Flatfile has not heard back about.
async fn acknowledge(
    state: &StateDb,
    client: &FlatfileClient,
    environment_id: &str,
) -> Result<usize, StateError> {
    let mut acked = 0;
    for event_id in state.unacked_events(environment_id, ACKS_PER_POLL).await? {
        match client.event_ack(&event_id).await {
            Ok(()) => {
                state.set_acked(&event_id, Ok(())).await?;
                acked += 1;
            }
            Err(e) => {
                tracing::warn!(environment_id, event_id = %event_id, error = %e, "Event acknowledgement failed; retrying at the next poll");
                state.set_acked(&event_id, Err(e.to_string())).await?;
                // One failure usually means the API is unwell: leave the rest for later.
                break;
            }
        }
    }
    Ok(acked)
}

/// Starts the poller. It runs even when no environment polls, since a reload may enable
/// polling; idle, it only reads the current config every tick.
pub(crate) fn spawn(
    slot: &EngineSlot,
    accepted: mpsc::UnboundedSender<String>,
    drain: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(Arc::clone(slot), accepted, drain))
}
