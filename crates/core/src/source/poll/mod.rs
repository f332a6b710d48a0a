//! The polling source: `GET /v1/events` of every environment with `poll = true`, from a cursor
//! kept in the state database, into the same inbox the webhook writes to.
//!
//! Each poll asks for events since `cursor - overlap` and pages until an EMPTY page: Flatfile
//! documents neither the listing's order nor its largest page, so a page shorter than asked may
//! be a cap rather than the end. When the first page is short, the poll goes on with `pageSize`
//! set to what it held, so that `pageNumber` means the same offset whether the server counts
//! it in the size asked for or the size it applied; after any short page the next request
//! starts exactly at the next event. Page numbers, not `since`, carry a poll through a burst
//! larger than a page at one timestamp.
//!
//! Events go into the inbox by id, so one seen twice (the overlap, the webhook) is stored once.
//! Each page is stored before the next is asked for; only stored events are acknowledged to
//! Flatfile, after the listing, so acknowledgements never shift the pages being read. The
//! cursor moves only over what is stored: after a poll that reached the empty page, to the
//! newest `createdAt` stored; after a poll cut short, to the newest stored only if the events
//! came oldest first, else not at all; never backwards.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use flatsync_flatfile::{
    ApiError, EventsPage, EventsQuery, FlatfileClient, ListedEvent, scrub_webhook_body,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{EnvironmentConfig, PollConfig};
use crate::pipeline::dispatch::AcceptedTx;
use crate::pipeline::engine::{EngineSlot, current};
use crate::pipeline::fetch::fit;
use crate::state::{PolledEvent, StateDb, StateError, now_ms};
use crate::time::{format_utc_millis, parse_rfc3339};

/// How often the poller looks at which environment is due; polls themselves follow each
/// environment's `poll_interval_ms`.
const TICK: Duration = Duration::from_millis(100);

/// Pages one poll reads at most; the next poll goes on from what this one proved.
const MAX_PAGES_PER_POLL: u64 = 10_000;

/// Acknowledgements sent per poll and environment; the rest wait for the next poll.
const ACKS_PER_POLL: usize = 1_000;

/// Polls every environment with polling enabled until `drain` turns true. The environments,
/// their intervals and keys are read from the current engine before each poll, so a reload
/// applies to the next poll.
pub(crate) async fn run(slot: EngineSlot, accepted: AcceptedTx, mut drain: watch::Receiver<bool>) {
    let mut next_due: BTreeMap<String, Instant> = BTreeMap::new();
    // What each environment's events API showed of a page cap, by environment id.
    let mut caps: BTreeMap<String, CapSightings> = BTreeMap::new();
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
            let cap = match &outcome {
                Ok(report) => report.cap,
                Err(failure) => failure.cap,
            };
            if let Some(cap) = cap
                && caps.entry(env.id.clone()).or_default().confirms(cap)
            {
                tracing::info!(environment = %name, page_size = cap, "Events API caps pages");
            }
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
                Err(failure) => {
                    tracing::warn!(environment = %name, error = %failure.error, "Poll failed; retrying at the next interval")
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
    /// The page size the events API capped pages at, when this poll showed one.
    cap: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// A poll that failed, with the cap it may have shown before.
#[derive(Debug)]
struct PollFailure {
    error: PollError,
    cap: Option<u64>,
}

impl<E: Into<PollError>> From<E> for PollFailure {
    fn from(error: E) -> PollFailure {
        PollFailure {
            error: error.into(),
            cap: None,
        }
    }
}

async fn poll_once(
    state: &StateDb,
    client: &FlatfileClient,
    environment_id: &str,
    poll: &PollConfig,
    accepted: &AcceptedTx,
) -> Result<PollReport, PollFailure> {
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
    let listing = list_events(
        |page_number, page_size| {
            let query = EventsQuery {
                environment_id: environment_id.to_owned(),
                since: since.clone(),
                page_size,
                page_number,
                include_acknowledged: poll.include_acknowledged,
            };
            async move { client.events_page(&query).await }
        },
        poll.page_size,
        state,
        environment_id,
        accepted,
        &mut report,
    )
    .await;
    report.cap = listing.cap;
    let finish = async {
        if let Some(cursor) = listing.cursor {
            state
                .insert_polled(environment_id, Vec::new(), Some(cursor))
                .await?;
        }
        // Acknowledged after the listing: an acknowledged event leaves listings without
        // `includeAcknowledged`, which would shift the pages under a poll still reading them.
        report.acked = acknowledge(state, client, environment_id).await?;
        Ok::<(), StateError>(())
    };
    let finished = finish.await;
    match (listing.error, finished) {
        (Some(error), _) => Err(PollFailure {
            error,
            cap: report.cap,
        }),
        (None, Err(error)) => Err(PollFailure {
            error: error.into(),
            cap: report.cap,
        }),
        (None, Ok(())) => Ok(report),
    }
}

/// The page caps one environment's polls showed. Events arriving between two pages of a poll
/// can make the end of a listing look like a cap, so a cap is believed (and logged, once) only
/// when two polls in a row show the same one.
#[derive(Debug, Default)]
struct CapSightings {
    last: Option<u64>,
    believed: Option<u64>,
}

impl CapSightings {
    /// Records a cap a poll showed; true when it is newly believed.
    fn confirms(&mut self, cap: u64) -> bool {
        let again = self.last.replace(cap) == Some(cap);
        if again && self.believed != Some(cap) {
            self.believed = Some(cap);
            return true;
        }
        false
    }
}

/// How one poll's listing ended.
#[derive(Debug, Default)]
struct Listing {
    /// Where the cursor may move: what the stored events prove was seen.
    cursor: Option<i64>,
    /// An empty page was reached.
    complete: bool,
    /// Events on the first page when it held fewer than asked and the second page, asked for
    /// that many, was full: the cap, unless events arrived between the two requests.
    cap: Option<u64>,
    /// Why the listing stopped early, if it failed.
    error: Option<PollError>,
}

/// Pages through one listing from page 1 until an empty page, storing each page before asking
/// for the next. `fetch(page_number, page_size)` answers one page.
async fn list_events<F, Fut>(
    mut fetch: F,
    page_size: u64,
    state: &StateDb,
    environment_id: &str,
    accepted: &AcceptedTx,
    report: &mut PollReport,
) -> Listing
where
    F: FnMut(u64, u64) -> Fut,
    Fut: Future<Output = Result<EventsPage, ApiError>>,
{
    let mut listing = Listing::default();
    let mut order = Order::default();
    // Events listed so far: the offset of the next page.
    let mut offset = 0u64;
    let mut size = page_size.max(1);
    // The ids of the previous page only, so memory stays flat however long the backlog.
    let mut previous: Vec<String> = Vec::new();
    for _ in 0..MAX_PAGES_PER_POLL {
        let page_number = offset / size + 1;
        let page = match fetch(page_number, size).await {
            Ok(page) => page,
            Err(e) => {
                listing.error = Some(e.into());
                break;
            }
        };
        for reason in &page.skipped {
            tracing::warn!(environment_id, page_number, reason = %reason, "Polled event skipped");
        }
        let items = page.items_on_page;
        if items == 0 {
            listing.complete = true;
            break;
        }
        let ids: Vec<String> = page.events.iter().map(|e| e.id.clone()).collect();
        if repeats(&previous, &ids) {
            tracing::warn!(
                environment_id,
                page_number,
                "The events API answered a page already seen; it may ignore pageNumber. Stopping this poll"
            );
            break;
        }
        if page_number == 2 && offset < page_size && items == size {
            // Page 1 held fewer than asked, and as many followed: the server caps pages.
            listing.cap = Some(offset);
        }
        let stored = store_page(page.events, state, environment_id, accepted, report).await;
        match stored {
            Ok(created) => created.into_iter().for_each(|at| order.observe(at)),
            Err(e) => {
                listing.error = Some(e.into());
                break;
            }
        }
        if items > size {
            // Stored, but where the next page would start is unknown.
            tracing::warn!(
                environment_id,
                page_number,
                page_size = size,
                events = items,
                "The events API answered more events than asked for; stopping this poll"
            );
            break;
        }
        offset += items;
        if items < size {
            // The end or a cap: the next request starts exactly after this page, with a page
            // size no larger than what the server just served.
            size = fit(offset, items);
        }
        previous = ids;
    }
    listing.cursor = order.proven(listing.complete);
    listing
}

/// Stores a page's events in the inbox, scrubbed, and hints the dispatcher of the new ones.
/// Returns the events' `createdAt` times, for the cursor.
async fn store_page(
    events: Vec<ListedEvent>,
    state: &StateDb,
    environment_id: &str,
    accepted: &AcceptedTx,
    report: &mut PollReport,
) -> Result<Vec<Option<i64>>, StateError> {
    let created: Vec<Option<i64>> = events
        .iter()
        .map(|e| e.created_at.as_deref().and_then(parse_rfc3339))
        .collect();
    let polled: Vec<PolledEvent> = events
        .into_iter()
        .map(|event| PolledEvent {
            event_id: event.id,
            topic: event.topic,
            // The API's events carry no credentials that flatsync knows of, but what reaches
            // the inbox is scrubbed the same way whichever source it came from.
            // A listed body is a JSON object flatsync compacted itself, which scrubbing
            // always takes; the fallback only keeps this total.
            body: match scrub_webhook_body(&event.body) {
                Ok(scrubbed) => scrubbed.body,
                Err(_) => event.body,
            },
        })
        .collect();
    report.seen += polled.len();
    for (id, topic) in state.insert_polled(environment_id, polled, None).await? {
        crate::metrics::event_received("poll", &topic);
        report.fresh += 1;
        accepted.notify(id, "platform", &topic);
    }
    Ok(created)
}

/// Whether a page repeats the previous one (the same events from the start, the shorter a
/// prefix of the longer), as a server ignoring `pageNumber` would answer.
fn repeats(previous: &[String], page: &[String]) -> bool {
    let shorter = previous.len().min(page.len());
    shorter > 0 && previous[..shorter] == page[..shorter]
}

/// The `createdAt` order of the events stored by one poll.
#[derive(Debug, Default)]
struct Order {
    newest: Option<i64>,
    last: Option<i64>,
    rising: bool,
    falling: bool,
}

impl Order {
    fn observe(&mut self, created: Option<i64>) {
        let Some(created) = created else { return };
        if let Some(last) = self.last {
            self.rising |= created > last;
            self.falling |= created < last;
        }
        self.last = Some(created);
        self.newest = self.newest.max(Some(created));
    }

    /// How far the cursor may move. After a complete listing everything up to the newest
    /// stored event was seen. A listing cut short proves that only if it ran oldest first:
    /// newest first, older events may still wait on later pages.
    fn proven(&self, complete: bool) -> Option<i64> {
        if complete || (self.rising && !self.falling) {
            self.newest
        } else {
            None
        }
    }
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

#[cfg(test)]
mod tests;
