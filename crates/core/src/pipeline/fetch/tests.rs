//! The paging decisions against fake servers: every cap, both `pageNumber` conventions, ends
//! on and off page boundaries, empty sources, resumed streams and sources that shrink.

use std::sync::Mutex;

use super::*;

/// What `pageNumber` counts in when a server caps the page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Offsets {
    /// `(pageNumber - 1) × pageSize asked for`.
    Requested,
    /// `(pageNumber - 1) × page size applied`.
    Applied,
}

const BOTH: [Offsets; 2] = [Offsets::Requested, Offsets::Applied];

/// A numbered-page server over a list of item numbers, capping pages at `cap`.
struct Numbered {
    items: Mutex<Vec<u64>>,
    cap: u64,
    offsets: Offsets,
    /// `(page_number, page_size)` of every request.
    requests: Mutex<Vec<(u64, u64)>>,
    /// Before answering request N (from 1), drop this many items from the front.
    shrink_at: Option<(usize, usize)>,
}

impl Numbered {
    fn new(items: Vec<u64>, cap: u64, offsets: Offsets) -> Numbered {
        Numbered {
            items: Mutex::new(items),
            cap,
            offsets,
            requests: Mutex::default(),
            shrink_at: None,
        }
    }

    fn counting(total: u64, cap: u64, offsets: Offsets) -> Numbered {
        Numbered::new((0..total).collect(), cap, offsets)
    }

    fn page(&self, number: u64, size: u64) -> std::future::Ready<Result<PageRead, ApiError>> {
        assert!(number >= 1 && size >= 1, "page {number} of size {size}");
        let mut requests = self.requests.lock().expect("lock");
        requests.push((number, size));
        let mut items = self.items.lock().expect("lock");
        if let Some((at, count)) = self.shrink_at
            && requests.len() == at
        {
            let count = count.min(items.len());
            items.drain(..count);
        }
        let applied = size.min(self.cap);
        let stride = match self.offsets {
            Offsets::Requested => size,
            Offsets::Applied => applied,
        };
        let offset = usize::try_from((number - 1) * stride).expect("small");
        let served: Vec<u64> = items
            .iter()
            .skip(offset)
            .take(usize::try_from(applied).expect("small"))
            .copied()
            .collect();
        std::future::ready(Ok(page_of(&served)))
    }

    fn requests(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }
}

fn page_of(items: &[u64]) -> PageRead {
    let mut ndjson = Vec::new();
    for item in items {
        ndjson.extend_from_slice(format!("{item}\n").as_bytes());
    }
    PageRead {
        ndjson,
        rows: items.len() as u64,
        items: items.len() as u64,
        total: None,
        limit: None,
    }
}

fn items_of(ndjson: &[u8]) -> Vec<u64> {
    std::str::from_utf8(ndjson)
        .expect("utf-8")
        .lines()
        .map(|line| line.parse().expect("an item number"))
        .collect()
}

async fn numbered(
    server: &Numbered,
    seq: u64,
    page_size: u64,
    end: End,
    paging: &Paging,
) -> Result<BatchRead, ReadError> {
    read_numbered_batch(
        |number, size| server.page(number, size),
        seq * page_size,
        page_size,
        end,
        paging,
    )
    .await
}

/// Reads a counted stream like the pipeline does: the first batch alone, then every other
/// batch of the page count fetched together.
async fn counted_stream(
    server: &Numbered,
    total: u64,
    page_size: u64,
    from_seq: u64,
) -> Result<Vec<BatchRead>, ReadError> {
    let paging = Paging::new("test");
    let page_count = total.div_ceil(page_size).max(1);
    let end = End::Counted(total);
    let first = numbered(server, from_seq, page_size, end, &paging).await?;
    let rest = futures_util::future::join_all(
        ((from_seq + 1)..page_count).map(|seq| numbered(server, seq, page_size, end, &paging)),
    )
    .await;
    let mut batches = vec![first];
    for batch in rest {
        batches.push(batch?);
    }
    Ok(batches)
}

/// Reads an unknown-end stream batch by batch until a batch proves the end.
async fn unknown_stream(
    server: &Numbered,
    page_size: u64,
    from_seq: u64,
) -> Result<Vec<BatchRead>, ReadError> {
    let paging = Paging::new("test");
    let mut batches = Vec::new();
    for seq in from_seq.. {
        let batch = numbered(server, seq, page_size, End::Unknown, &paging).await?;
        let end = batch.end;
        batches.push(batch);
        if end {
            return Ok(batches);
        }
        assert!(seq < 10_000, "the stream never ended");
    }
    unreachable!()
}

/// Asserts batch `from_seq + i` holds exactly the items `[seq·P, (seq+1)·P)` of `0..total`.
fn assert_exact_batches(
    batches: &[BatchRead],
    total: u64,
    page_size: u64,
    from_seq: u64,
    what: &str,
) {
    for (i, batch) in batches.iter().enumerate() {
        let seq = from_seq + i as u64;
        let want: Vec<u64> = (seq * page_size..((seq + 1) * page_size).min(total)).collect();
        assert_eq!(items_of(&batch.ndjson), want, "{what}: batch {seq}");
        assert_eq!(batch.rows, want.len() as u64, "{what}: batch {seq} rows");
    }
}

const CAPS: [u64; 7] = [1, 7, 50, 99, 100, 1000, 10_000];

fn totals(page_size: u64) -> Vec<u64> {
    vec![
        0,
        1,
        page_size - 1,
        page_size,
        page_size + 1,
        2 * page_size,
        2 * page_size + page_size / 2,
        250,
        500,
    ]
}

#[tokio::test]
async fn counted_streams_hold_every_item_once_whatever_the_cap_and_offsets() {
    for page_size in [100, 1000] {
        for total in totals(page_size) {
            for cap in CAPS {
                for offsets in BOTH {
                    let what = format!("P={page_size} total={total} cap={cap} {offsets:?}");
                    let server = Numbered::counting(total, cap, offsets);
                    let batches = counted_stream(&server, total, page_size, 0)
                        .await
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(
                        batches.len() as u64,
                        total.div_ceil(page_size).max(1),
                        "{what}"
                    );
                    assert_exact_batches(&batches, total, page_size, 0, &what);
                    let last = batches.last().expect("a batch");
                    assert!(last.end, "{what}: the last batch proves the end");
                    if cap >= page_size {
                        assert_eq!(
                            server.requests(),
                            batches.len(),
                            "{what}: one request per batch without a cap"
                        );
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_resumed_counted_stream_reads_exact_batches_before_it_knows_the_cap() {
    for total in [1000_u64, 2500, 3000] {
        for cap in CAPS {
            for offsets in BOTH {
                for from_seq in [1, total.div_ceil(1000) - 1] {
                    let what = format!("total={total} cap={cap} {offsets:?} from batch {from_seq}");
                    let server = Numbered::counting(total, cap, offsets);
                    let batches = counted_stream(&server, total, 1000, from_seq)
                        .await
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_exact_batches(&batches, total, 1000, from_seq, &what);
                    assert!(batches.last().expect("a batch").end, "{what}");
                }
            }
        }
    }
}

#[tokio::test]
async fn unknown_end_streams_page_until_an_empty_page_whatever_the_cap_and_offsets() {
    for page_size in [100, 1000] {
        for total in totals(page_size) {
            for cap in CAPS {
                for offsets in BOTH {
                    for from_seq in [0, 1] {
                        if from_seq * page_size > total {
                            continue;
                        }
                        let what = format!(
                            "P={page_size} total={total} cap={cap} {offsets:?} from batch {from_seq}"
                        );
                        let server = Numbered::counting(total, cap, offsets);
                        let batches = unknown_stream(&server, page_size, from_seq)
                            .await
                            .unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert_exact_batches(&batches, total, page_size, from_seq, &what);
                        let want_batches = total / page_size + 1 - from_seq;
                        assert_eq!(batches.len() as u64, want_batches, "{what}");
                        if cap >= page_size && from_seq == 0 {
                            assert_eq!(
                                server.requests() as u64,
                                total.div_ceil(page_size) + 1,
                                "{what}: without a cap, one request per batch and one empty page"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn id_chunks_end_at_their_bound_or_an_empty_page() {
    // 100 ids asked for; some records were deleted since, so fewer exist.
    for present in [0_u64, 1, 37, 97, 100] {
        for cap in [1, 7, 30, 50, 100, 10_000] {
            for offsets in BOTH {
                let what = format!("{present} of 100 present, cap={cap} {offsets:?}");
                let items: Vec<u64> = (0..present).map(|i| i * 3).collect();
                let server = Numbered::new(items.clone(), cap, offsets);
                let paging = Paging::new("test");
                let batch = numbered(&server, 0, 100, End::AtMost(100), &paging)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(items_of(&batch.ndjson), items, "{what}");
                assert!(batch.end, "{what}");
                if cap >= 100 {
                    // One request, and one more to prove the end when the bound is not reached.
                    let want = if present == 100 || present == 0 { 1 } else { 2 };
                    assert_eq!(server.requests(), want, "{what}: requests");
                }
            }
        }
    }
}

#[tokio::test]
async fn a_counted_stream_whose_data_shrinks_fails_naming_the_counts() {
    for cap in [7, 50, 100, 10_000] {
        for offsets in BOTH {
            let what = format!("cap={cap} {offsets:?}");
            // 250 counted; 30 records deleted from the front while batch 0 is being read.
            let mut server = Numbered::counting(250, cap, offsets);
            server.shrink_at = Some((2, 30));
            match counted_stream(&server, 250, 100, 0).await {
                Err(ReadError::Shortfall { received, expected }) => {
                    assert_eq!(expected, 250, "{what}");
                    assert!(
                        (200..250).contains(&received),
                        "{what}: received {received}"
                    );
                }
                other => panic!("{what}: want a shortfall, got {other:?}"),
            }
        }
    }
    // Counts that promise more than the records hold, found on the last batch.
    let server = Numbered::counting(200, 10_000, Offsets::Requested);
    match counted_stream(&server, 250, 100, 0).await {
        Err(ReadError::Shortfall { received, expected }) => {
            assert_eq!((received, expected), (200, 250));
        }
        other => panic!("want a shortfall, got {other:?}"),
    }
    // ... and on a middle batch, under a cap, after adapting to it.
    let server = Numbered::counting(150, 50, Offsets::Applied);
    match counted_stream(&server, 500, 100, 0).await {
        Err(ReadError::Shortfall { received, expected }) => {
            assert_eq!((received, expected), (150, 500));
        }
        other => panic!("want a shortfall, got {other:?}"),
    }
}

#[tokio::test]
async fn once_adapted_to_a_cap_a_short_sub_page_fails_without_reading_again() {
    for offsets in BOTH {
        // 500 counted, 130 served, 50 a page at most.
        let server = Numbered::counting(130, 50, offsets);
        let paging = Paging::new("test");
        let end = End::Counted(500);
        let first = numbered(&server, 0, 100, end, &paging)
            .await
            .expect("batch 0 is whole");
        assert_eq!(items_of(&first.ndjson), (0..100).collect::<Vec<_>>());
        assert_eq!(paging.learned(), Learned::SubPages(50));
        assert_eq!(
            server.requests(),
            3,
            "{offsets:?}: a capped page, then two sub-pages"
        );
        match numbered(&server, 1, 100, end, &paging).await {
            Err(ReadError::Shortfall { received, expected }) => {
                assert_eq!((received, expected), (130, 500), "{offsets:?}");
            }
            other => panic!("{offsets:?}: want a shortfall, got {other:?}"),
        }
        assert_eq!(
            server.requests(),
            4,
            "{offsets:?}: a sub-page below the known cap is the end, not another cap"
        );
    }
}

#[tokio::test]
async fn a_server_answering_more_than_asked_is_refused() {
    let paging = Paging::new("test");
    let err = read_numbered_batch(
        |_, _| std::future::ready(Ok(page_of(&(0..20).collect::<Vec<_>>()))),
        0,
        10,
        End::Unknown,
        &paging,
    )
    .await
    .expect_err("20 items for a page of 10");
    assert!(
        matches!(err, ReadError::Overfull { asked: 10, got: 20 }),
        "{err:?}"
    );
}

/// A skip/take server over items with a deleted flag each, capping `take` at `cap`.
struct SkipTake {
    items: Vec<(u64, bool)>,
    cap: u64,
    says_total: bool,
    says_limit: bool,
    requests: Mutex<Vec<(u64, u64)>>,
}

impl SkipTake {
    fn page(&self, skip: u64, take: u64) -> std::future::Ready<Result<PageRead, ApiError>> {
        self.requests.lock().expect("lock").push((skip, take));
        let applied = take.min(self.cap);
        let on_page: Vec<(u64, bool)> = self
            .items
            .iter()
            .skip(usize::try_from(skip).expect("small"))
            .take(usize::try_from(applied).expect("small"))
            .copied()
            .collect();
        let delivered: Vec<u64> = on_page
            .iter()
            .filter(|(_, deleted)| !deleted)
            .map(|(item, _)| *item)
            .collect();
        let mut page = page_of(&delivered);
        page.items = on_page.len() as u64;
        page.total = self.says_total.then_some(self.items.len() as u64);
        page.limit = self.says_limit.then_some(applied);
        std::future::ready(Ok(page))
    }
}

#[tokio::test]
async fn skip_take_batches_hold_their_range_whatever_the_cap() {
    for total in [0_u64, 1, 99, 100, 101, 250, 500] {
        for cap in [1, 7, 50, 100, 10_000] {
            for (says_total, says_limit) in
                [(true, true), (true, false), (false, true), (false, false)]
            {
                let what =
                    format!("total={total} cap={cap} totalCount={says_total} limit={says_limit}");
                // Every seventh row was deleted in the importer: counted on pages, not delivered.
                let items: Vec<(u64, bool)> = (0..total).map(|i| (i, i % 7 == 3)).collect();
                let server = SkipTake {
                    items,
                    cap,
                    says_total,
                    says_limit,
                    requests: Mutex::default(),
                };
                let mut known_total = None;
                let mut seq = 0;
                loop {
                    let batch = read_skip_take_batch(
                        |skip, take| server.page(skip, take),
                        seq * 100,
                        100,
                        known_total,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                    let want: Vec<u64> = (seq * 100..((seq + 1) * 100).min(total))
                        .filter(|i| i % 7 != 3)
                        .collect();
                    assert_eq!(items_of(&batch.ndjson), want, "{what}: batch {seq}");
                    known_total = known_total.or(batch.total);
                    if batch.end {
                        break;
                    }
                    seq += 1;
                    assert!(seq <= total / 100 + 1, "{what}: no end after batch {seq}");
                }
                let batches = seq + 1;
                assert_eq!(
                    batches,
                    if says_total {
                        total.div_ceil(100).max(1)
                    } else {
                        total / 100 + 1
                    },
                    "{what}"
                );
                if cap >= 100 && says_total {
                    assert_eq!(
                        server.requests.lock().expect("lock").len() as u64,
                        batches,
                        "{what}: one request per batch"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn a_skip_take_source_short_of_its_total_fails_naming_the_counts() {
    let server = SkipTake {
        items: (0..300).map(|i| (i, false)).collect(),
        cap: 100,
        says_total: false,
        says_limit: true,
        requests: Mutex::default(),
    };
    // The first page said 500; the rows end at 300.
    let err = read_skip_take_batch(|skip, take| server.page(skip, take), 200, 1000, Some(500))
        .await
        .expect_err("short of the total");
    assert!(
        matches!(
            err,
            ReadError::Shortfall {
                received: 300,
                expected: 500
            }
        ),
        "{err:?}"
    );
}

#[test]
fn fit_picks_the_largest_page_size_that_starts_exactly_at_the_offset() {
    assert_eq!(fit(0, 7), 7);
    assert_eq!(fit(1000, 100), 100);
    assert_eq!(fit(1000, 7), 5);
    assert_eq!(fit(100, 30), 25);
    assert_eq!(fit(1537, 37), 29);
    assert_eq!(fit(97, 50), 1);
    assert_eq!(fit(10_000, 1), 1);
    assert_eq!(fit(12, 0), 1, "a page holds at least one item");
    for offset in 1..300_u64 {
        for at_most in 1..40_u64 {
            let size = fit(offset, at_most);
            assert!(
                size <= at_most && offset % size == 0,
                "fit({offset}, {at_most}) = {size}"
            );
            assert!(
                (size + 1..=at_most).all(|bigger| offset % bigger != 0),
                "fit({offset}, {at_most}) = {size} is not the largest"
            );
        }
    }
}

#[test]
fn a_shortfall_names_what_was_received_and_who_said_more() {
    let error = FetchError::Shortfall {
        received: 200,
        expected: 250,
        noun: "records",
        said: "GET /v1/sheets/us_sh_1/counts said 250".to_owned(),
    };
    assert_eq!(
        format!("stream contacts-us_evt_1: {error}"),
        "stream contacts-us_evt_1: received 200 of 250 records (GET /v1/sheets/us_sh_1/counts said 250); \
         the API returned fewer records than asked for"
    );
}

#[tokio::test]
async fn what_a_cap_and_a_resume_cost_in_requests() {
    for offsets in BOTH {
        // 500 records in batches of 1000, pages capped at 100: the capped page is read again
        // as five sub-pages, the last of which reaches the count.
        let server = Numbered::counting(500, 100, offsets);
        let batches = counted_stream(&server, 500, 1000, 0).await.expect("read");
        assert_exact_batches(&batches, 500, 1000, 0, "capped");
        assert_eq!(server.requests(), 6, "{offsets:?}");
        // Resuming at the last, partial batch without a cap: the first page is ambiguous, so
        // the batch is read again in one sub-page that reaches the count.
        let server = Numbered::counting(250, 10_000, offsets);
        let batches = counted_stream(&server, 250, 100, 2).await.expect("read");
        assert_exact_batches(&batches, 250, 100, 2, "resumed");
        assert_eq!(server.requests(), 2, "{offsets:?}");
    }
}

/// Reads every batch of a counted stream from `from_seq` at once, each page answered only
/// after every read has had its turn: no batch knows what the others learned when it starts.
async fn counted_stream_at_once(
    server: &Numbered,
    total: u64,
    page_size: u64,
    from_seq: u64,
) -> Result<Vec<BatchRead>, ReadError> {
    let paging = Paging::new("test");
    let page_count = total.div_ceil(page_size).max(1);
    let end = End::Counted(total);
    let reads = (from_seq..page_count).map(|seq| {
        read_numbered_batch(
            |number, size| async move {
                tokio::task::yield_now().await;
                server.page(number, size).await
            },
            seq * page_size,
            page_size,
            end,
            &paging,
        )
    });
    futures_util::future::join_all(reads)
        .await
        .into_iter()
        .collect()
}

#[tokio::test]
async fn counted_streams_read_all_at_once_hold_every_item_once_whatever_the_cap() {
    for page_size in [100, 1000] {
        for total in totals(page_size) {
            for cap in CAPS {
                for offsets in BOTH {
                    let page_count = total.div_ceil(page_size).max(1);
                    for from_seq in [0, 1, page_count - 1] {
                        if from_seq >= page_count {
                            continue;
                        }
                        let what = format!(
                            "P={page_size} total={total} cap={cap} {offsets:?} from batch {from_seq}"
                        );
                        let server = Numbered::counting(total, cap, offsets);
                        let batches = counted_stream_at_once(&server, total, page_size, from_seq)
                            .await
                            .unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert_exact_batches(&batches, total, page_size, from_seq, &what);
                        assert!(batches.last().expect("a batch").end, "{what}");
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_last_batch_read_early_is_read_again_alone_without_capping_the_stream() {
    for offsets in BOTH {
        // 250 counted in batches of 100, no cap: batch 2's first page holds exactly the 50 the
        // count leaves, which a cap of 50 under the applied convention would also serve.
        let server = Numbered::counting(250, 10_000, offsets);
        let paging = Paging::new("test");
        let last = numbered(&server, 2, 100, End::Counted(250), &paging)
            .await
            .expect("read");
        assert_eq!(items_of(&last.ndjson), (200..250).collect::<Vec<_>>());
        assert!(last.end);
        assert_eq!(
            server.requests(),
            2,
            "{offsets:?}: the page, then one sub-page"
        );
        assert_eq!(
            paging.learned(),
            Learned::Unknown,
            "{offsets:?}: the other batches still read whole pages"
        );
        // A short page holding less than the count leaves proves a cap, for the whole stream.
        let server = Numbered::counting(250, 30, offsets);
        let paging = Paging::new("test");
        let middle = numbered(&server, 1, 100, End::Counted(250), &paging)
            .await
            .expect("read");
        assert_eq!(items_of(&middle.ndjson), (100..200).collect::<Vec<_>>());
        assert_eq!(paging.learned(), Learned::SubPages(25), "{offsets:?}");
    }
}

mod ahead {
    //! The read-ahead against fake batch sources: bytes held, order, the window opening before
    //! the first batch, and the adaptive window.

    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::task::Poll;
    use std::time::Duration;

    use tokio::sync::watch;
    use tokio::time::Instant;

    use super::{End, Numbered, Offsets, Paging, items_of, read_numbered_batch};
    use crate::config::FetchConfig;
    use crate::pipeline::fetch::read_ahead::{BatchSource, PRIOR_ROW_BYTES, ReadAhead, Window};
    use crate::pipeline::fetch::{Batch, FetchError};

    fn config(pages_in_flight: usize, read_ahead_bytes: u64) -> FetchConfig {
        FetchConfig {
            legacy_page_size: 1000,
            records_page_size: 1000,
            pages_in_flight,
            read_ahead_bytes,
            adaptive_pages_in_flight: false,
            max_pages_in_flight: pages_in_flight,
        }
    }

    /// What a fake source saw.
    #[derive(Default)]
    struct Log {
        /// Batches requested, in order.
        requested: Vec<u64>,
        /// Bytes of batches requested and not yet handed to the delivery loop.
        outstanding: u64,
        /// The most `outstanding` ever was.
        peak_outstanding: u64,
        /// Requests started and not answered.
        in_flight: usize,
        peak_in_flight: usize,
        /// 429 answers the fake's client counted.
        throttled: u64,
        /// Bytes of bodies read (past their gates) and not yet handed to the delivery loop.
        read: u64,
        peak_read: u64,
    }

    /// Batches of `sizes[seq]` bytes whose lines name their batch, each answered once the
    /// test lets it (`released` passes its seq) and after a few turns of the scheduler.
    #[derive(Clone)]
    struct Fake {
        sizes: Arc<Vec<u64>>,
        log: Arc<Mutex<Log>>,
        released: watch::Receiver<u64>,
        /// Whether answers wait at the fetch's gate before their bodies are read, as the
        /// client's do.
        answers_gated: bool,
        /// A batch answered only once the receiver holds `true`, whatever `released` says.
        hung: Option<(u64, watch::Receiver<bool>)>,
        /// How long each answer takes (on the test's clock).
        latency: Duration,
        /// From this batch on, each answer takes this long instead.
        slower: Option<(u64, Duration)>,
        /// How long reading and converting a body takes once past its gate: batch 0's, then
        /// every other batch's.
        conversion: (Duration, Duration),
    }

    impl Fake {
        /// A source whose batches are answered as soon as asked; the sender releases nothing.
        fn new(sizes: Vec<u64>) -> (Fake, watch::Sender<u64>) {
            let (release, released) = watch::channel(u64::MAX);
            let fake = Fake {
                sizes: Arc::new(sizes),
                log: Arc::default(),
                released,
                answers_gated: false,
                hung: None,
                latency: Duration::ZERO,
                slower: None,
                conversion: (Duration::ZERO, Duration::ZERO),
            };
            (fake, release)
        }

        /// This source with answers taking `latency` from batch `seq` on.
        fn slower_from(self, seq: u64, latency: Duration) -> Fake {
            Fake {
                slower: Some((seq, latency)),
                ..self
            }
        }

        /// This source with each body taking `first` (batch 0) or `rest` to read and convert.
        fn converting(self, first: Duration, rest: Duration) -> Fake {
            Fake {
                conversion: (first, rest),
                ..self
            }
        }

        /// This source with its answers waiting at their gates, as the client's do, each
        /// answer `latency` late.
        fn answering_through_gates(self, latency: Duration) -> Fake {
            Fake {
                answers_gated: true,
                latency,
                ..self
            }
        }

        /// This source with batch `seq` unanswered until the returned sender says `true`.
        fn hanging(self, seq: u64) -> (Fake, watch::Sender<bool>) {
            let (go, hung) = watch::channel(false);
            let fake = Fake {
                hung: Some((seq, hung)),
                ..self
            };
            (fake, go)
        }

        /// A source whose batch `seq` is answered once the sender holds more than `seq`.
        fn gated(sizes: Vec<u64>) -> (Fake, watch::Sender<u64>) {
            let (fake, release) = Fake::new(sizes);
            release.send_replace(0);
            (fake, release)
        }

        fn log(&self) -> std::sync::MutexGuard<'_, Log> {
            self.log.lock().expect("lock")
        }

        /// Counts a batch as handed to the delivery loop.
        fn delivered(&self, batch: &Batch) {
            let mut log = self.log();
            log.outstanding -= batch.ndjson.len() as u64;
            log.read -= batch.ndjson.len() as u64;
        }
    }

    /// `bytes` bytes of lines naming `seq`.
    fn batch_bytes(seq: u64, bytes: u64) -> Vec<u8> {
        let bytes = usize::try_from(bytes).expect("small");
        let line = format!("{seq}\n");
        // Exactly `bytes` of capacity: the read-ahead counts what a batch holds.
        let mut ndjson = Vec::with_capacity(bytes);
        while ndjson.len() + line.len() <= bytes {
            ndjson.extend_from_slice(line.as_bytes());
        }
        ndjson.resize(bytes, b'\n');
        ndjson
    }

    impl BatchSource for Fake {
        async fn batch(&self, seq: u64) -> Result<Batch, FetchError> {
            let size = self.sizes[usize::try_from(seq).expect("small")];
            {
                let mut log = self.log();
                log.requested.push(seq);
                log.outstanding += size;
                log.peak_outstanding = log.peak_outstanding.max(log.outstanding);
                log.in_flight += 1;
                log.peak_in_flight = log.peak_in_flight.max(log.in_flight);
            }
            let mut released = self.released.clone();
            released
                .wait_for(|released| *released > seq)
                .await
                .expect("the test holds the sender");
            if let Some((hung, go)) = &self.hung
                && *hung == seq
            {
                go.clone()
                    .wait_for(|go| *go)
                    .await
                    .expect("the test holds the sender");
            }
            let latency = match self.slower {
                Some((from, slower)) if seq >= from => slower,
                _ => self.latency,
            };
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            // Later batches take fewer turns, so they finish out of order.
            for _ in 0..(seq % 5) * 3 {
                tokio::task::yield_now().await;
            }
            self.log().in_flight -= 1;
            if self.answers_gated {
                flatsync_flatfile::answer_arrived(Duration::from_secs(3600)).await;
            }
            {
                let mut log = self.log();
                log.read += size;
                log.peak_read = log.peak_read.max(log.read);
            }
            let conversion = if seq == 0 {
                self.conversion.0
            } else {
                self.conversion.1
            };
            if !conversion.is_zero() {
                tokio::time::sleep(conversion).await;
            }
            Ok(Batch {
                ndjson: batch_bytes(seq, size),
                rows: 1,
                end: seq + 1 == self.sizes.len() as u64,
                total: None,
            })
        }

        fn throttled_answers(&self) -> u64 {
            self.log().throttled
        }

        fn answers_gated(&self) -> bool {
            self.answers_gated
        }
    }

    /// Delivers every batch, checking each holds its own seq's lines.
    async fn deliver_all(pages: &mut ReadAhead<Fake>, fake: &Fake, from_seq: u64) -> u64 {
        let mut seq = from_seq;
        loop {
            let batch = pages.next().await.expect("a batch");
            fake.delivered(&batch);
            let want = batch_bytes(seq, fake.sizes[usize::try_from(seq).expect("small")]);
            assert!(batch.ndjson == want, "batch {seq} holds its own lines");
            if batch.end {
                return seq + 1 - from_seq;
            }
            seq += 1;
        }
    }

    #[tokio::test]
    async fn bytes_held_ahead_stay_within_the_budget_and_fill_it() {
        // Batches of 3,000 bytes, a budget of 10,000: three ahead at most, whatever the window.
        let (fake, _release) = Fake::new(vec![3_000; 40]);
        let mut pages = ReadAhead::new(fake.clone(), 0, Some(40), &config(64, 10_000), 3_000);
        assert_eq!(deliver_all(&mut pages, &fake, 0).await, 40);
        let log = fake.log();
        assert_eq!(
            log.requested,
            (0..40).collect::<Vec<_>>(),
            "each batch once, in order"
        );
        assert!(
            log.peak_outstanding <= 10_000 + 3_000,
            "held {} bytes, budget 10,000 and one batch",
            log.peak_outstanding
        );
        assert_eq!(
            log.peak_in_flight, 3,
            "the budget is used, not just respected"
        );
    }

    #[tokio::test]
    async fn the_budget_holds_when_the_first_guess_was_too_small() {
        // Guessed at 100 bytes, batches are 4,000: the first window overshoots at most by its
        // own guess, then the largest batch seen bounds every request.
        let (fake, _release) = Fake::new(vec![4_000; 30]);
        let mut pages = ReadAhead::new(fake.clone(), 0, Some(30), &config(4, 10_000), 100);
        assert_eq!(deliver_all(&mut pages, &fake, 0).await, 30);
        let log = fake.log();
        assert_eq!(log.requested, (0..30).collect::<Vec<_>>());
        assert!(
            log.peak_outstanding <= 4 * 4_000 + 4_000,
            "the first window of four"
        );
    }

    #[tokio::test]
    async fn a_batch_bigger_than_the_budget_still_delivers_one_at_a_time() {
        let (fake, _release) = Fake::new(vec![50_000; 8]);
        let mut pages = ReadAhead::new(fake.clone(), 0, Some(8), &config(4, 10_000), 50_000);
        assert_eq!(deliver_all(&mut pages, &fake, 0).await, 8);
        let log = fake.log();
        assert_eq!(log.requested, (0..8).collect::<Vec<_>>());
        assert_eq!(log.peak_in_flight, 1);
        assert!(
            log.peak_outstanding <= 2 * 50_000,
            "the one fetched and the one delivered"
        );
    }

    #[tokio::test]
    async fn without_a_page_count_batches_are_read_one_at_a_time_until_the_end() {
        let (fake, _release) = Fake::new(vec![300; 6]);
        let mut pages = ReadAhead::new(fake.clone(), 2, None, &config(4, 1 << 20), 300);
        assert_eq!(deliver_all(&mut pages, &fake, 2).await, 4);
        let log = fake.log();
        assert_eq!(
            log.requested,
            vec![2, 3, 4, 5],
            "nothing past the batch that ends it"
        );
        assert_eq!(log.peak_in_flight, 1);
    }

    /// Polls `next` until the source has seen `want` requests, asserting `next` stays pending.
    async fn until_requested<F: Future>(
        next: &mut std::pin::Pin<&mut F>,
        fake: &Fake,
        want: usize,
    ) {
        for _ in 0..1000 {
            let polled = std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx).is_ready()));
            assert!(
                !polled.await,
                "no batch can be ready before the test releases it"
            );
            if fake.log().requested.len() >= want {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{} requests, want {want}", fake.log().requested.len());
    }

    #[tokio::test]
    async fn with_a_known_page_count_the_window_opens_before_the_first_batch() {
        let (fake, release) = Fake::gated(vec![1_000; 10]);
        let mut pages = ReadAhead::new(fake.clone(), 0, Some(10), &config(4, 1 << 20), 1_000);
        {
            let next = pages.next();
            tokio::pin!(next);
            until_requested(&mut next, &fake, 4).await;
            assert_eq!(fake.log().requested, vec![0, 1, 2, 3]);
            assert_eq!(
                fake.log().in_flight,
                4,
                "batches 0..4 wait on the wire together"
            );
            release.send_replace(u64::MAX);
            let first = next.await.expect("batch 0");
            fake.delivered(&first);
        }
        assert_eq!(deliver_all(&mut pages, &fake, 1).await, 9);
        assert_eq!(fake.log().requested, (0..10).collect::<Vec<_>>());
    }

    /// A [`Fake`] whose batch 0 is answered only once the test lets it.
    #[derive(Clone)]
    struct SlowFirst {
        fake: Fake,
        first: watch::Receiver<bool>,
    }

    impl BatchSource for SlowFirst {
        async fn batch(&self, seq: u64) -> Result<Batch, FetchError> {
            let batch = self.fake.batch(seq).await;
            if seq == 0 {
                let mut first = self.first.clone();
                first
                    .wait_for(|go| *go)
                    .await
                    .expect("the test holds the sender");
            }
            batch
        }

        fn throttled_answers(&self) -> u64 {
            0
        }

        fn answers_gated(&self) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn a_fetched_batch_keeps_its_place_in_the_window_until_it_is_handed_out() {
        // Two pages in flight; batch 0 hangs on the wire, the others come back at once. Batch 1,
        // fetched, still holds its place: nothing more is requested behind batch 0 (the budget
        // would allow six), so a crash now would fetch again no more than the window.
        let (fake, _release) = Fake::new(vec![1_000; 10]);
        let (go, first) = watch::channel(false);
        let source = SlowFirst {
            fake: fake.clone(),
            first,
        };
        let mut pages = ReadAhead::new(source, 0, Some(10), &config(2, 6_000), 1_000);
        {
            let next = pages.next();
            tokio::pin!(next);
            until_requested(&mut next, &fake, 2).await;
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            assert_eq!(
                fake.log().requested,
                vec![0, 1],
                "a window of two holds batch 0 and batch 1 fetched behind it, and no more"
            );
            go.send_replace(true);
            let first = next.await.expect("batch 0");
            fake.delivered(&first);
        }
        let mut seq = 1;
        loop {
            let batch = pages.next().await.expect("a batch");
            fake.delivered(&batch);
            assert_eq!(batch.ndjson, batch_bytes(seq, 1_000), "batch {seq}");
            if batch.end {
                break;
            }
            seq += 1;
        }
        let log = fake.log();
        assert_eq!(log.requested, (0..10).collect::<Vec<_>>());
        assert!(log.peak_in_flight <= 2, "{} in flight", log.peak_in_flight);
    }

    /// Lets the fetch tasks run on the paused clock until the source has seen `want`
    /// requests, and 200 ms more, asserting `next` stays pending.
    async fn settle<F: Future>(next: &mut std::pin::Pin<&mut F>, fake: &Fake, want: usize) {
        let mut after = 0;
        for _ in 0..2_000 {
            let polled = std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx).is_ready()));
            assert!(!polled.await, "the hung batch cannot be ready");
            if fake.log().requested.len() >= want {
                after += 1;
                if after > 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{} requests, want {want}", fake.log().requested.len());
    }

    #[tokio::test(start_paused = true)]
    async fn while_the_wire_is_slow_each_answer_frees_its_place_up_to_twice_the_window() {
        // Two pages in flight, answers 50 ms late and converted at once: the wire sets the
        // pace. Batch 0 hangs unanswered. Like two connections, the window holds two requests
        // waiting for answers: the answered ones make room for more, up to four requested and
        // not handed out.
        let (fake, _release) = Fake::new(vec![1_000; 10]);
        let (fake, go) = fake
            .answering_through_gates(Duration::from_millis(50))
            .hanging(0);
        let mut pages = ReadAhead::new(fake.clone(), 0, Some(10), &config(2, 1 << 20), 1_000);
        {
            let next = pages.next();
            tokio::pin!(next);
            settle(&mut next, &fake, 4).await;
            assert_eq!(
                fake.log().requested,
                vec![0, 1, 2, 3],
                "twice the window behind the unanswered batch 0, and no more"
            );
            go.send_replace(true);
            let first = next.await.expect("batch 0");
            fake.delivered(&first);
        }
        rest_delivered_once(&mut pages, &fake, 1, 10).await;
    }

    /// Delivers the stream of `total` batches from `from_seq` on, and checks that each batch was
    /// requested once and at most two (the window of these tests) waited for answers at once.
    async fn rest_delivered_once(
        pages: &mut ReadAhead<Fake>,
        fake: &Fake,
        from_seq: u64,
        total: u64,
    ) {
        assert_eq!(deliver_all(pages, fake, from_seq).await, total - from_seq);
        let log = fake.log();
        assert_eq!(
            log.requested,
            (0..total).collect::<Vec<_>>(),
            "each batch once"
        );
        assert!(log.peak_in_flight <= 2, "{} unanswered", log.peak_in_flight);
    }

    /// Polls `next` on the paused clock until `at`, asserting it stays pending.
    async fn pending_until<F: Future>(next: &mut std::pin::Pin<&mut F>, at: Instant) {
        while Instant::now() < at {
            let polled = std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx).is_ready()));
            assert!(!polled.await, "no batch is converted yet");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_answers_of_a_distant_server_send_the_next_requests_before_any_batch_is_converted()
     {
        // Two pages in flight, batches of 1,000 rows (the prior: 1 ms each to convert), answers
        // 50 ms late, and each body 30 ms to read and convert. At 60 ms the first answers are
        // in and no batch is converted yet: against the prior, the wire is the slower side, so
        // the next two requests went out with those answers, not only once batch 0 is
        // converted at 80 ms (a whole conversion added to every request's latency).
        let bytes = 1_000 * PRIOR_ROW_BYTES;
        let (fake, _release) = Fake::new(vec![bytes; 10]);
        let fake = fake
            .answering_through_gates(Duration::from_millis(50))
            .converting(Duration::from_millis(30), Duration::from_millis(30));
        let started = Instant::now();
        let mut pages = ReadAhead::new(fake.clone(), 0, Some(10), &config(2, 1 << 30), bytes);
        {
            let next = pages.next();
            tokio::pin!(next);
            pending_until(&mut next, started + Duration::from_millis(60)).await;
            assert_eq!(
                fake.log().requested,
                vec![0, 1, 2, 3],
                "two answered and being converted, two more on the wire"
            );
            let first = next.await.expect("batch 0");
            fake.delivered(&first);
        }
        rest_delivered_once(&mut pages, &fake, 1, 10).await;
    }

    #[tokio::test(start_paused = true)]
    async fn conversions_slowed_by_sharing_the_cores_do_not_hold_the_next_requests_back() {
        // Two pages in flight, answers 50 ms late. Batch 0 converts in 5 ms, every later batch
        // in 40 ms, as conversions sharing the cores with each other and the sinks do: more
        // than half an answer's latency, but what the daemon's work takes is what it took
        // alone. So the wire stays the slower side: batch 1 is handed out at 90 ms, batches 2
        // and 3 are answered at 100 ms, and batches 4 and 5 are requested then, not after
        // batch 2 is converted at 140 ms.
        let (fake, _release) = Fake::new(vec![1_000; 10]);
        let fake = fake
            .answering_through_gates(Duration::from_millis(50))
            .converting(Duration::from_millis(5), Duration::from_millis(40));
        let started = Instant::now();
        let mut pages = ReadAhead::new(fake.clone(), 0, Some(10), &config(2, 1 << 30), 1_000);
        for seq in 0..2 {
            let batch = pages.next().await.expect("a batch");
            fake.delivered(&batch);
            assert_eq!(batch.ndjson, batch_bytes(seq, 1_000), "batch {seq}");
        }
        {
            let next = pages.next();
            tokio::pin!(next);
            pending_until(&mut next, started + Duration::from_millis(120)).await;
            assert_eq!(
                fake.log().requested,
                (0..6).collect::<Vec<_>>(),
                "two being converted, two more on the wire"
            );
            let batch = next.await.expect("batch 2");
            fake.delivered(&batch);
        }
        assert_eq!(deliver_all(&mut pages, &fake, 3).await, 7);
        assert!(fake.log().peak_in_flight <= 2);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_slowed_by_a_busy_server_do_not_pass_for_a_distant_one() {
        // Two pages in flight, batches of 1,000 rows (the prior: 1 ms each to convert), each
        // 1 ms to convert. The first answers take 1 ms; from batch 3 on the server is busy and
        // answers in 10 ms, more than twice the daemon's work. A server that answered in 1 ms
        // is near: more requests would only load it further, so no more than the window is
        // ever requested and not handed out.
        let (fake, _release) = Fake::new(vec![1_000; 12]);
        let fake = fake
            .answering_through_gates(Duration::from_millis(1))
            .slower_from(3, Duration::from_millis(10))
            .converting(Duration::from_millis(1), Duration::from_millis(1));
        let prior = 1_000 * PRIOR_ROW_BYTES;
        let mut pages = ReadAhead::new(fake.clone(), 0, Some(12), &config(2, 1 << 30), prior);
        assert_eq!(deliver_all(&mut pages, &fake, 0).await, 12);
        let log = fake.log();
        assert_eq!(log.requested, (0..12).collect::<Vec<_>>());
        assert!(
            log.peak_outstanding <= 2 * 1_000,
            "{} bytes requested and not handed out, the window is two batches of 1,000",
            log.peak_outstanding
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_past_the_budget_wait_unread_at_their_gates() {
        // A budget of three batches, eight pages in flight, answers 50 ms late; batch 0 hangs
        // unanswered, its share of the budget reserved. Two more bodies are read; the other
        // answers wait unread until batch 0 is handed out and the budget has room.
        let (fake, _release) = Fake::new(vec![1_000; 12]);
        let (fake, go) = fake
            .answering_through_gates(Duration::from_millis(50))
            .hanging(0);
        let mut pages = ReadAhead::new(fake.clone(), 0, Some(12), &config(8, 3_000), 1_000);
        {
            let next = pages.next();
            tokio::pin!(next);
            settle(&mut next, &fake, 8).await;
            assert_eq!(fake.log().read, 2_000, "bodies read while batch 0 hangs");
            assert_eq!(
                fake.log().in_flight,
                1,
                "every answer but batch 0's arrived"
            );
            go.send_replace(true);
            let first = next.await.expect("batch 0");
            fake.delivered(&first);
        }
        assert_eq!(deliver_all(&mut pages, &fake, 1).await, 11);
        let log = fake.log();
        assert_eq!(
            log.requested,
            (0..12).collect::<Vec<_>>(),
            "each batch once"
        );
        assert!(
            log.peak_read <= 3_000 + 1_000,
            "read {} bytes ahead, budget 3,000 and the oldest batch",
            log.peak_read
        );
    }

    /// Reads 30 batches of 100 bytes, answered in 5 ms each, with a window of three, the sinks
    /// taking 20 ms a batch (every fetch in flight ends meanwhile), `at_sinks` of them counted as
    /// still held by the sinks. Returns how many were requested ahead after each batch.
    async fn requested_ahead_while_the_sinks_write(at_sinks: usize) -> Vec<usize> {
        let (fake, _release) = Fake::new(vec![100; 30]);
        let fake = fake.answering_through_gates(Duration::from_millis(5));
        let mut pages = ReadAhead::new(fake.clone(), 0, Some(30), &config(3, 1 << 20), 100)
            .with_batches_at_sinks(at_sinks);
        let mut ahead = Vec::new();
        for seq in 0..30 {
            let batch = pages.next().await.expect("a batch");
            fake.delivered(&batch);
            assert_eq!(batch.ndjson, batch_bytes(seq, 100), "batch {seq}");
            tokio::time::sleep(Duration::from_millis(20)).await;
            ahead.push(fake.log().requested.len() - usize::try_from(seq).expect("small") - 1);
        }
        assert_eq!(fake.log().requested, (0..30).collect::<Vec<_>>());
        ahead
    }

    #[tokio::test(start_paused = true)]
    async fn while_the_sinks_are_slow_at_most_the_window_is_requested_ahead() {
        // Every batch is fetched before the delivery loop asks for it, so no more than the
        // window is requested and not handed out (what a crash would fetch again), however the
        // first batch was waited for.
        let ahead = requested_ahead_while_the_sinks_write(0).await;
        assert!(
            ahead[6..].iter().all(|&n| n <= 3),
            "requested ahead after each batch: {ahead:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_the_sinks_still_hold_counts_in_the_window_while_they_set_the_pace() {
        // As above, but the delivery loop sends each batch to the sinks ahead of the answer to
        // the one before: one handed-out batch stays with the sinks while the next are fetched,
        // so one fewer is requested ahead, and no more is held than without it.
        let ahead = requested_ahead_while_the_sinks_write(1).await;
        assert!(
            // The last two run out of batches to request.
            ahead[..28].iter().all(|&n| n == 2),
            "requested ahead after each batch: {ahead:?}"
        );
    }

    /// A counted numbered-page stream through the read-ahead, as `StreamReader` reads sheets.
    #[derive(Clone)]
    struct Sheet {
        server: Arc<Numbered>,
        paging: Arc<Paging>,
        total: u64,
        page_size: u64,
    }

    impl BatchSource for Sheet {
        async fn batch(&self, seq: u64) -> Result<Batch, FetchError> {
            let server = &self.server;
            let read = read_numbered_batch(
                |number, size| async move {
                    tokio::task::yield_now().await;
                    server.page(number, size).await
                },
                seq * self.page_size,
                self.page_size,
                End::Counted(self.total),
                &self.paging,
            )
            .await
            .map_err(|e| {
                FetchError::Api(flatsync_flatfile::ApiError::Decode {
                    url: String::new(),
                    message: e.to_string(),
                })
            })?;
            Ok(Batch {
                ndjson: read.ndjson,
                rows: read.rows,
                end: read.end,
                total: None,
            })
        }

        fn throttled_answers(&self) -> u64 {
            0
        }

        fn answers_gated(&self) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn a_capped_sheet_read_ahead_from_the_start_yields_every_record_once() {
        for cap in [7, 50, 99, 100, 10_000] {
            for offsets in [Offsets::Requested, Offsets::Applied] {
                for (total, from_seq) in [(250, 0), (1_000, 0), (1_250, 0), (1_250, 3), (999, 9)] {
                    let what = format!("total={total} cap={cap} {offsets:?} from {from_seq}");
                    let sheet = Sheet {
                        server: Arc::new(Numbered::counting(total, cap, offsets)),
                        paging: Arc::new(Paging::new("test")),
                        total,
                        page_size: 100,
                    };
                    let page_count = total.div_ceil(100);
                    let mut pages =
                        ReadAhead::new(sheet, from_seq, Some(page_count), &config(4, 1 << 20), 1);
                    let mut items = Vec::new();
                    for seq in from_seq..page_count {
                        let batch = pages.next().await.unwrap_or_else(|e| panic!("{what}: {e}"));
                        let want: Vec<u64> = (seq * 100..((seq + 1) * 100).min(total)).collect();
                        assert_eq!(items_of(&batch.ndjson), want, "{what}: batch {seq}");
                        assert_eq!(batch.end, seq + 1 == page_count, "{what}: batch {seq}");
                        items.extend(items_of(&batch.ndjson));
                    }
                    assert_eq!(items, (from_seq * 100..total).collect::<Vec<_>>(), "{what}");
                }
            }
        }
    }

    fn adaptive(start: usize, max: usize) -> Window {
        Window::new(&FetchConfig {
            adaptive_pages_in_flight: true,
            max_pages_in_flight: max,
            ..config(start, 1 << 20)
        })
    }

    #[test]
    fn the_adaptive_window_grows_by_one_per_window_of_batches_waited_for() {
        let mut window = adaptive(2, 4);
        let mut sizes = BTreeMap::new();
        for seq in 0..20 {
            window.delivered(seq, 0, true, seq + 5);
            sizes.insert(seq, window.size());
        }
        // Two waits grow 2 to 3, three more grow 3 to 4, then the maximum holds.
        assert_eq!(sizes[&0], 2);
        assert_eq!(sizes[&1], 3);
        assert_eq!(sizes[&3], 3);
        assert_eq!(sizes[&4], 4);
        assert_eq!(sizes[&19], 4);
    }

    #[test]
    fn the_adaptive_window_holds_while_the_sinks_set_the_pace() {
        let mut window = adaptive(3, 16);
        for seq in 0..30 {
            // Every other batch was ready when asked for: never a whole window of waits.
            window.delivered(seq, 0, seq % 2 == 0, seq + 4);
        }
        assert_eq!(window.size(), 3);
    }

    #[test]
    fn the_adaptive_window_halves_once_per_throttling() {
        let mut window = adaptive(8, 16);
        window.delivered(0, 0, false, 8);
        // Batches 1 to 7 were all in flight when the API answered them 429, one by one.
        window.delivered(1, 1, true, 9);
        assert_eq!(window.size(), 4);
        for seq in 2..8 {
            window.delivered(seq, seq, true, 9);
        }
        assert_eq!(
            window.size(),
            4,
            "fetches requested before the halving count once"
        );
        // A batch requested after it, throttled again.
        window.delivered(9, 8, true, 13);
        assert_eq!(window.size(), 2);
        window.delivered(13, 9, true, 15);
        window.delivered(15, 10, true, 17);
        assert_eq!(window.size(), 1, "never below one page");
        // No new 429, however the batches were waited for: not throttled.
        let mut window = adaptive(8, 16);
        window.delivered(0, 0, false, 8);
        window.delivered(1, 0, true, 9);
        assert_eq!(window.size(), 8);
    }

    #[test]
    fn a_fixed_window_never_changes() {
        let mut window = Window::new(&config(4, 1 << 20));
        window.delivered(0, 0, true, 4);
        for seq in 1..40 {
            window.delivered(seq, seq / 10, true, seq + 4);
        }
        assert_eq!(window.size(), 4);
    }

    #[tokio::test]
    async fn an_adaptive_read_ahead_grows_while_every_batch_is_waited_for() {
        let (fake, release) = Fake::gated(vec![100; 40]);
        let config = FetchConfig {
            adaptive_pages_in_flight: true,
            max_pages_in_flight: 6,
            ..config(1, 1 << 20)
        };
        let mut pages = ReadAhead::new(fake.clone(), 0, Some(40), &config, 100);
        for seq in 0..40 {
            let next = pages.next();
            tokio::pin!(next);
            until_requested(&mut next, &fake, usize::try_from(seq).expect("small") + 1).await;
            // Only the batch asked for comes off the wire: the loop waits on every one.
            release.send_replace(seq + 1);
            let batch = next.await.expect("a batch");
            fake.delivered(&batch);
        }
        assert_eq!(pages.window_size(), 6);
        assert_eq!(fake.log().peak_in_flight, 6);
        assert_eq!(fake.log().requested, (0..40).collect::<Vec<_>>());
    }
}
