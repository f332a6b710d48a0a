//! The paging and cursor decisions of a poll against fake events APIs: caps, both listing
//! orders, both `pageNumber` conventions, bursts at one timestamp, failures mid-poll and a
//! server that ignores `pageNumber`.

use std::collections::BTreeSet;
use std::sync::Mutex;

use flatsync_flatfile::ListedEvent;

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listed {
    OldestFirst,
    NewestFirst,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Offsets {
    Requested,
    Applied,
}

/// An events API over a log of `(id, createdAt ms)` in emission order.
struct FakeEvents {
    log: Vec<(String, i64)>,
    listed: Listed,
    cap: u64,
    offsets: Offsets,
    ignores_page_number: bool,
    /// This request (from 1) fails.
    fails_at: Option<usize>,
    requests: Mutex<Vec<(u64, u64)>>,
}

impl FakeEvents {
    fn new(log: Vec<(String, i64)>, listed: Listed, cap: u64, offsets: Offsets) -> FakeEvents {
        FakeEvents {
            log,
            listed,
            cap,
            offsets,
            ignores_page_number: false,
            fails_at: None,
            requests: Mutex::default(),
        }
    }

    fn page(&self, number: u64, size: u64) -> std::future::Ready<Result<EventsPage, ApiError>> {
        let mut requests = self.requests.lock().expect("lock");
        requests.push((number, size));
        if self.fails_at == Some(requests.len()) {
            return std::future::ready(Err(ApiError::Transport {
                method: "GET",
                url: "http://127.0.0.1/v1/events".to_owned(),
                attempts: 8,
                message: "connection refused".to_owned(),
            }));
        }
        let applied = size.min(self.cap);
        let stride = match self.offsets {
            Offsets::Requested => size,
            Offsets::Applied => applied,
        };
        let skip = if self.ignores_page_number {
            0
        } else {
            usize::try_from((number - 1) * stride).expect("small")
        };
        let ordered: Vec<&(String, i64)> = match self.listed {
            Listed::OldestFirst => self.log.iter().collect(),
            Listed::NewestFirst => self.log.iter().rev().collect(),
        };
        let events: Vec<ListedEvent> = ordered
            .into_iter()
            .skip(skip)
            .take(usize::try_from(applied).expect("small"))
            .map(|(id, created)| {
                let created_at = format_utc_millis(*created);
                ListedEvent {
                    id: id.clone(),
                    topic: "space:updated".to_owned(),
                    body: format!(
                        r#"{{"id":"{id}","topic":"space:updated","createdAt":"{created_at}"}}"#
                    )
                    .into_bytes(),
                    created_at: Some(created_at),
                }
            })
            .collect();
        std::future::ready(Ok(EventsPage {
            items_on_page: events.len() as u64,
            events,
            skipped: Vec::new(),
        }))
    }

    fn requests(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }
}

/// `earlier` events a second apart, then a burst of `burst` events at one millisecond.
fn log_with_burst(earlier: usize, burst: usize) -> (Vec<(String, i64)>, i64) {
    let base = 1_767_225_600_000_i64;
    let mut log: Vec<(String, i64)> = (0..earlier)
        .map(|n| (format!("us_evt_early_{n}"), base + 1000 * n as i64))
        .collect();
    let burst_at = base + 1000 * earlier as i64 + 5;
    log.extend((0..burst).map(|n| (format!("us_evt_burst_{n}"), burst_at)));
    (log, burst_at)
}

/// Runs one listing against `server` into a fresh state database; returns the listing, the
/// report and the ids now in the inbox.
async fn listing_of(
    server: &FakeEvents,
    page_size: u64,
) -> (Listing, PollReport, BTreeSet<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDb::open(dir.path()).expect("state database");
    let (accepted, mut received) = AcceptedTx::channel();
    let mut report = PollReport::default();
    let listing = list_events(
        |number, size| server.page(number, size),
        page_size,
        &state,
        "us_env_test",
        &accepted,
        &mut report,
    )
    .await;
    let stored: BTreeSet<String> = state
        .pending_events()
        .await
        .expect("inbox")
        .into_iter()
        .collect();
    let mut announced = 0;
    while received.try_recv().is_ok() {
        announced += 1;
    }
    assert_eq!(
        announced,
        stored.len(),
        "each stored event is handed to the dispatcher once"
    );
    (listing, report, stored)
}

#[tokio::test]
async fn a_burst_larger_than_a_page_at_one_timestamp_is_listed_whole() {
    let (log, burst_at) = log_with_burst(20, 500);
    let want: BTreeSet<String> = log.iter().map(|(id, _)| id.clone()).collect();
    for listed in [Listed::OldestFirst, Listed::NewestFirst] {
        for offsets in [Offsets::Requested, Offsets::Applied] {
            for cap in [1, 7, 50, 99, 100, 1000] {
                let what = format!("{listed:?} {offsets:?} cap={cap}");
                let server = FakeEvents::new(log.clone(), listed, cap, offsets);
                let (listing, report, stored) = listing_of(&server, 100).await;
                assert!(listing.error.is_none(), "{what}: {:?}", listing.error);
                assert!(listing.complete, "{what}: the poll reaches the empty page");
                assert_eq!(stored, want, "{what}: every event stored");
                assert_eq!(report.fresh, 520, "{what}");
                assert_eq!(
                    listing.cursor,
                    Some(burst_at),
                    "{what}: the cursor moves to the newest event stored"
                );
                let want_cap = (cap < 100).then_some(cap);
                assert_eq!(listing.cap, want_cap, "{what}: the cap is recognised");
            }
        }
    }
}

#[tokio::test]
async fn without_a_cap_a_poll_costs_one_request_more_than_its_pages() {
    for (events, want_requests) in [(0_usize, 1_usize), (3, 2), (100, 2), (250, 4)] {
        let (log, _) = log_with_burst(events, 0);
        let server = FakeEvents::new(log, Listed::OldestFirst, 10_000, Offsets::Requested);
        let (listing, _, stored) = listing_of(&server, 100).await;
        assert_eq!(stored.len(), events);
        assert!(listing.complete);
        assert_eq!(server.requests(), want_requests, "{events} events");
        assert_eq!(
            listing.cap, None,
            "{events} events: a short last page is no cap"
        );
    }
}

#[tokio::test]
async fn a_poll_cut_short_moves_the_cursor_only_over_what_it_proved() {
    let (log, _) = log_with_burst(300, 0);
    for listed in [Listed::OldestFirst, Listed::NewestFirst] {
        // Pages of 50 (capped), the third request fails: 100 events stored.
        let mut server = FakeEvents::new(log.clone(), listed, 50, Offsets::Applied);
        server.fails_at = Some(3);
        let (listing, _, stored) = listing_of(&server, 100).await;
        assert!(
            matches!(listing.error, Some(PollError::Api(_))),
            "{listed:?}: {:?}",
            listing.error
        );
        assert!(!listing.complete);
        assert_eq!(
            stored.len(),
            100,
            "{listed:?}: the pages before the failure are stored"
        );
        match listed {
            Listed::OldestFirst => {
                assert_eq!(
                    listing.cursor,
                    Some(log[99].1),
                    "oldest first: everything up to the newest stored was seen"
                );
            }
            Listed::NewestFirst => {
                assert_eq!(
                    listing.cursor, None,
                    "newest first: older events may still wait on later pages"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_server_ignoring_page_numbers_ends_the_poll_after_one_page() {
    let (log, _) = log_with_burst(300, 0);
    for cap in [50, 10_000] {
        let mut server = FakeEvents::new(log.clone(), Listed::OldestFirst, cap, Offsets::Requested);
        server.ignores_page_number = true;
        let (listing, _, stored) = listing_of(&server, 100).await;
        let first_page = cap.min(100) as usize;
        assert_eq!(stored.len(), first_page, "cap={cap}");
        assert_eq!(
            server.requests(),
            2,
            "cap={cap}: the repeated page stops the poll"
        );
        assert!(!listing.complete && listing.error.is_none(), "cap={cap}");
        assert_eq!(listing.cursor, Some(log[first_page - 1].1), "cap={cap}");
    }
}

#[test]
fn a_page_repeats_the_previous_one_when_it_starts_with_the_same_events() {
    let ids = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert!(repeats(&ids(&["a", "b", "c"]), &ids(&["a", "b", "c"])));
    assert!(
        repeats(&ids(&["a", "b", "c"]), &ids(&["a", "b"])),
        "a smaller page of the same start"
    );
    assert!(!repeats(&ids(&["a", "b", "c"]), &ids(&["d", "e"])));
    assert!(!repeats(&ids(&["a", "b"]), &ids(&["b", "c"])));
    assert!(
        !repeats(&[], &ids(&["a"])),
        "the first page repeats nothing"
    );
}

#[test]
fn a_cap_is_believed_once_two_polls_in_a_row_show_it() {
    let mut sightings = CapSightings::default();
    // The end of a listing looked like a cap once, as events arrived mid-poll.
    assert!(!sightings.confirms(2));
    assert!(!sightings.confirms(50));
    assert!(
        sightings.confirms(50),
        "the second sighting in a row is believed"
    );
    assert!(!sightings.confirms(50), "and logged once");
    assert!(!sightings.confirms(3));
    assert!(
        !sightings.confirms(50),
        "a believed cap is not announced again"
    );
    assert!(!sightings.confirms(80));
    assert!(
        sightings.confirms(80),
        "a changed cap is announced when confirmed"
    );
}

#[tokio::test]
async fn a_short_first_page_is_a_cap_only_when_the_next_is_full() {
    // Three events when the poll starts; two more arrive before the second page is asked for.
    let (log, _) = log_with_burst(5, 0);
    let server = FakeEvents::new(log, Listed::OldestFirst, 10_000, Offsets::Requested);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDb::open(dir.path()).expect("state database");
    let (accepted, _received) = AcceptedTx::channel();
    let mut report = PollReport::default();
    let listing = list_events(
        |number, size| {
            let mut page = server.page(number, size).into_inner().expect("page");
            if number == 1 {
                page.events.truncate(3);
                page.items_on_page = 3;
            }
            std::future::ready(Ok(page))
        },
        100,
        &state,
        "us_env_test",
        &accepted,
        &mut report,
    )
    .await;
    assert!(listing.complete);
    assert_eq!(
        report.fresh, 5,
        "the late events are read on the following pages"
    );
    assert_eq!(
        listing.cap, None,
        "2 events after a first page of 3 are no cap"
    );
}
