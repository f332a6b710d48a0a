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
