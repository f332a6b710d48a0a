//! Reading a stream batch by batch from paged APIs, so that no stream ends on a page whose end
//! is not proven.
//!
//! Flatfile documents neither the largest page it serves nor, for numbered pages, whether
//! `pageNumber` counts in the page size asked for or in the one it applied. Whatever the server
//! does, batch `seq` of a stream with page size `P` holds exactly the source's items
//! `[seq·P, (seq+1)·P)`, so a batch read again after a crash has the same rows:
//!
//! - **Numbered pages** ([`read_numbered_batch`], `pageSize`/`pageNumber` from 1). A page of `P`
//!   items proves the server serves whole batches. With a known total (a sheet's `/counts`), a
//!   page short of the counted end is a cap: the batch is read again in sub-pages of `s` items,
//!   `s` dividing `P` and at most what the short page held, so that `s` is below the cap and every
//!   `pageNumber` names the same offset under either convention; `s` is kept for the rest of the
//!   stream ([`Paging`]), and a sub-page short of the counted end fails the batch with the counts.
//!   Without a total only an empty page proves the end: after a short page of `k` items the next
//!   request starts exactly at the next item, with a page size that divides its offset and is at
//!   most `k`, so one more request tells a cap from the end.
//! - **Skip/take** ([`read_skip_take_batch`]): offsets are exact, so a page short of the batch
//!   is followed by a request for the rest of it. A total proves the end; without one, a page
//!   with fewer items than the `limit` the server says it applied does, else an empty page.
//!
//! Only page 1 means the same items under both `pageNumber` conventions. A later batch read
//! before anything is known about the server's pages therefore takes a short first page as
//! ambiguous and reads the batch again in sub-pages. With a known total the pipeline fetches
//! the first batches together ([`read_ahead`]), so this can happen to each batch of the first
//! window (or of the first window after a resume): a short page holding fewer items than the
//! count leaves proves a cap, kept for the stream; one holding exactly what the count leaves
//! (the last batch) may be the end or a cap of that size, so only that batch is read again.
//! Without a total the pipeline reads a stream's first batch alone before fetching ahead.
//!
//! [`StreamReader`] applies these readers to each kind of stream source.

pub(crate) mod read_ahead;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flatsync_flatfile::{
    ApiError, Buffers, FlatfileClient, LegacyPage, RecordsPage, RecordsSelection,
};

use crate::pipeline::plan;
use crate::state::{StateDb, StateError, StoredEvent, StreamPlan, StreamSource};

/// One page as a source answered it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PageRead {
    /// Batch lines of the items flatsync delivers.
    pub(crate) ndjson: Vec<u8>,
    /// Lines in `ndjson`.
    pub(crate) rows: u64,
    /// Items the API returned on the page, those not delivered (deleted legacy rows) included;
    /// offsets advance by this.
    pub(crate) items: u64,
    /// Items the source holds in all, when the page says (skip/take sources).
    pub(crate) total: Option<u64>,
    /// The page size the server says it applied (skip/take sources).
    pub(crate) limit: Option<u64>,
}

/// One batch of a source, read from one or more pages.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct BatchRead {
    /// Batch lines, in the source's order.
    pub(crate) ndjson: Vec<u8>,
    /// Lines in `ndjson`.
    pub(crate) rows: u64,
    /// Items of the source in this batch, delivered or not.
    pub(crate) items: u64,
    /// The source's end is proven to lie in this batch.
    pub(crate) end: bool,
    /// Items the source holds in all, when known (skip/take sources report it).
    pub(crate) total: Option<u64>,
}

impl BatchRead {
    fn push(&mut self, page: PageRead) {
        if self.ndjson.is_empty() {
            // The common case, one page per batch, moves the page instead of copying it.
            self.ndjson = page.ndjson;
        } else {
            self.ndjson.extend_from_slice(&page.ndjson);
        }
        self.rows += page.rows;
        self.items += page.items;
    }
}

/// Why a batch could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The request failed (after the client's retries).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The source ended before the total it announced.
    #[error("received {received} of {expected}")]
    Shortfall {
        /// Items of the source read up to the end it showed.
        received: u64,
        /// Items it said it holds.
        expected: u64,
    },
    /// A page held more items than asked for, so offsets cannot be trusted.
    #[error("a page of {asked} held {got}")]
    Overfull {
        /// The page size asked for.
        asked: u64,
        /// Items the page held.
        got: u64,
    },
}

/// How a numbered-page source's end is proven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The source holds this many items (a sheet's `/counts`): a page short of that is a cap,
    /// and a source that still ends short fails the batch.
    Counted(u64),
    /// The source holds at most this many items (the ids a request names): reaching the bound
    /// or an empty page ends it.
    AtMost(u64),
    /// Only an empty page ends it (a commit's records).
    Unknown,
}

/// What one stream learned about how the server pages, shared by its batch reads.
#[derive(Debug)]
pub(crate) struct Paging {
    /// [`UNKNOWN`], [`WHOLE`], or the sub-page size in use.
    state: AtomicU64,
    /// For the log line when a cap is found.
    stream: String,
}

const UNKNOWN: u64 = 0;
const WHOLE: u64 = u64::MAX;

/// What [`Paging`] knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Learned {
    /// Nothing yet.
    Unknown,
    /// A page of a whole batch came back full: the server does not cap below the batch size.
    Whole,
    /// The server capped a page: batches are read in sub-pages of this many items.
    SubPages(u64),
}

impl Paging {
    pub(crate) fn new(stream: impl Into<String>) -> Paging {
        Paging {
            state: AtomicU64::new(UNKNOWN),
            stream: stream.into(),
        }
    }

    pub(crate) fn learned(&self) -> Learned {
        match self.state.load(Ordering::Acquire) {
            UNKNOWN => Learned::Unknown,
            WHOLE => Learned::Whole,
            size => Learned::SubPages(size),
        }
    }

    fn whole(&self) {
        let _ = self
            .state
            .compare_exchange(UNKNOWN, WHOLE, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Reads batches of `page_size` in sub-pages of `sub_page` from now on, unless a smaller
    /// sub-page size is in use already.
    fn cap(&self, sub_page: u64, page_size: u64) {
        let sub_page = sub_page.max(1);
        let before = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current == UNKNOWN || current == WHOLE || sub_page < current).then_some(sub_page)
            });
        if let Ok(before) = before
            && (before == UNKNOWN || before == WHOLE)
        {
            tracing::info!(
                stream = %self.stream,
                page_size,
                sub_page_size = sub_page,
                "API caps pages; reading each batch in sub-pages"
            );
        }
    }
}

/// The largest page size at most `at_most` (and at least 1) that divides `offset`, so that
/// `pageNumber = offset / size + 1` starts exactly at `offset`.
pub(crate) fn fit(offset: u64, at_most: u64) -> u64 {
    let at_most = at_most.max(1);
    if offset.is_multiple_of(at_most) {
        return at_most;
    }
    let mut best = 1;
    let mut divisor = 1;
    while divisor <= offset / divisor {
        if offset.is_multiple_of(divisor) {
            let pair = offset / divisor;
            if pair <= at_most {
                // Pairs shrink as divisors grow: the first that fits is the largest.
                return pair;
            }
            if divisor <= at_most {
                best = divisor;
            }
        }
        divisor += 1;
    }
    best
}

/// Whether a numbered batch holding `items` of its `len`, the next at `offset`, is complete
/// without another request: `Some(end)`, with `end` saying whether the source ends with it.
fn complete_without_request(end: End, items: u64, len: u64, offset: u64) -> Option<bool> {
    let bound = match end {
        End::Counted(total) | End::AtMost(total) => Some(total),
        End::Unknown => None,
    };
    if items >= len {
        return Some(bound.is_some_and(|total| offset >= total));
    }
    if let End::AtMost(most) = end
        && offset >= most
    {
        return Some(true);
    }
    if let End::Counted(total) = end
        && items > 0
        && offset >= total
    {
        // Sub-pages reached the counted end: no request needed to prove it.
        return Some(true);
    }
    None
}

/// Reads items `[start, start + page_size)` of a numbered-page source (`start` a multiple of
/// `page_size`). `fetch(page_number, page_size)` answers one page, numbered from 1.
pub(crate) async fn read_numbered_batch<F, Fut>(
    mut fetch: F,
    start: u64,
    page_size: u64,
    end: End,
    paging: &Paging,
) -> Result<BatchRead, ReadError>
where
    F: FnMut(u64, u64) -> Fut,
    Fut: Future<Output = Result<PageRead, ApiError>>,
{
    let len = page_size.max(1);
    // Sub-pages for this batch alone, when its first page was ambiguous but proved no cap.
    let mut alone: Option<u64> = None;
    'batch: loop {
        let (mut size, trusted, mut probing) = match (paging.learned(), alone) {
            (Learned::SubPages(sub_page), _) => (sub_page.min(len), true, false),
            (_, Some(sub_page)) => (sub_page, true, false),
            (Learned::Whole, None) => (len, false, false),
            (Learned::Unknown, None) => (len, false, start > 0),
        };
        let mut out = BatchRead::default();
        // Items of the last short page while the end is unknown: a cap if more items follow.
        let mut short: Option<u64> = None;
        loop {
            let offset = start + out.items;
            if let Some(ended) = complete_without_request(end, out.items, len, offset) {
                out.end = ended;
                return Ok(out);
            }
            size = fit(offset, size.min(len - out.items));
            let page = fetch(offset / size + 1, size).await?;
            let got = page.items;
            if got > size {
                return Err(ReadError::Overfull { asked: size, got });
            }
            if std::mem::take(&mut probing) && got > 0 && got < size {
                // Under one convention these are the batch's first items, under the other
                // items of an earlier batch: read the batch again in sub-pages below the cap.
                if matches!(end, End::Counted(total) if got == total.saturating_sub(start)) {
                    // Exactly what the count leaves for this last batch: a cap of that size,
                    // or none at all. Only this batch is read again, the stream's paging
                    // stays as it was.
                    alone = Some(fit(len, got));
                } else {
                    paging.cap(fit(len, got), len);
                }
                continue 'batch;
            }
            if got == len {
                paging.whole();
            }
            if got > 0
                && let Some(previous) = short.take()
            {
                paging.cap(fit(len, previous), len);
            }
            out.push(page);
            if got == size {
                continue;
            }
            match end {
                End::Counted(total) => {
                    let expected = total.saturating_sub(start).min(len);
                    if out.items >= expected {
                        out.end = true;
                        return Ok(out);
                    }
                    if trusted || got == 0 {
                        return Err(ReadError::Shortfall {
                            received: start + out.items,
                            expected: total,
                        });
                    }
                    paging.cap(fit(len, got), len);
                    continue 'batch;
                }
                End::AtMost(_) | End::Unknown => {
                    if got == 0 {
                        out.end = true;
                        return Ok(out);
                    }
                    short = Some(got);
                    size = got;
                }
            }
        }
    }
}

/// Reads items `[start, start + page_size)` of a skip/take source. `fetch(skip, take)` answers
/// one page; `total` is the source's size when already known (a page may say it too).
pub(crate) async fn read_skip_take_batch<F, Fut>(
    mut fetch: F,
    start: u64,
    page_size: u64,
    total: Option<u64>,
) -> Result<BatchRead, ReadError>
where
    F: FnMut(u64, u64) -> Fut,
    Fut: Future<Output = Result<PageRead, ApiError>>,
{
    let len = page_size.max(1);
    let mut out = BatchRead {
        total,
        ..BatchRead::default()
    };
    loop {
        let take = len - out.items;
        let page = fetch(start + out.items, take).await?;
        let got = page.items;
        if got > take {
            return Err(ReadError::Overfull { asked: take, got });
        }
        let limit = page.limit;
        if page.total.is_some() {
            out.total = page.total;
        }
        out.push(page);
        let reached = start + out.items;
        match out.total {
            Some(total) => {
                if reached >= total {
                    out.end = true;
                    return Ok(out);
                }
                if out.items >= len {
                    return Ok(out);
                }
                if got == 0 {
                    return Err(ReadError::Shortfall {
                        received: reached,
                        expected: total,
                    });
                }
            }
            None => {
                if out.items >= len {
                    return Ok(out);
                }
                // Fewer items than the server says it applied: it had no more.
                if got == 0 || limit.is_some_and(|limit| got < limit.min(take)) {
                    out.end = true;
                    return Ok(out);
                }
            }
        }
    }
}

/// A stream's batch, ready for the sinks.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Batch lines.
    pub(crate) ndjson: Vec<u8>,
    /// Lines in `ndjson`.
    pub(crate) rows: u64,
    /// The stream's end is proven to lie in this batch: it is the last.
    pub(crate) end: bool,
    /// Items the source holds in all, when this batch's pages said so.
    pub(crate) total: Option<u64>,
}

/// Why a stream's batch could not be read, phrased to follow `stream <id>: `.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// The request failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The source ended before the total it announced.
    #[error(
        "received {received} of {expected} {noun} ({said}); the API returned fewer {noun} than asked for"
    )]
    Shortfall {
        received: u64,
        expected: u64,
        /// `records` or `rows`.
        noun: &'static str,
        /// Which answer announced the total, e.g. `GET /v1/sheets/us_sh_1/counts said 250`.
        said: String,
    },
    /// A page held more than asked for.
    #[error("{request} answered {got} {noun} to a request for {asked}; paging cannot continue")]
    Overfull {
        request: String,
        asked: u64,
        got: u64,
        noun: &'static str,
    },
    /// The state database, where carried rows are kept, failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A part of an upload the plan counts is not in the state database.
    #[error("part {part} of upload {upload} is not in the state database")]
    MissingPart { upload: String, part: u64 },
}

/// One stream's source, read batch by batch. Cheap to clone into the tasks that fetch ahead;
/// clones share what was learned about the server's paging.
#[derive(Clone, Debug)]
pub(crate) struct StreamReader {
    client: FlatfileClient,
    state: StateDb,
    event: Arc<StoredEvent>,
    plan: Arc<StreamPlan>,
    paging: Arc<Paging>,
    total: Option<u64>,
    /// The stream's spare page buffers: its pages' bodies and lines are written into them.
    buffers: Buffers,
}

impl StreamReader {
    /// Reads the stream's size where the source tells it up front (`/counts` of a sheet).
    pub(crate) async fn open(
        client: &FlatfileClient,
        state: &StateDb,
        event: &StoredEvent,
        plan: &StreamPlan,
    ) -> Result<StreamReader, ApiError> {
        let total = match &plan.source {
            // Legacy pages carry pagination.totalCount; the first batch tells.
            StreamSource::LegacyBatch => None,
            StreamSource::Sheet => Some(client.record_count(&plan.source_ref).await?),
            StreamSource::SheetIds { ids } | StreamSource::Deletions { ids } => {
                Some(ids.len() as u64)
            }
            StreamSource::Event => Some(1),
            // A commit's size is only known once it has been paged through.
            StreamSource::SheetCommit { .. } | StreamSource::SheetSinceCommit { .. } => None,
            // One stored part per batch (the plan's page size is 1).
            StreamSource::Carried { parts, .. } => Some(*parts),
            // Like legacy batches: the first page's pagination tells.
            StreamSource::WorkspaceSheet { .. } => None,
            StreamSource::DataUrl { .. } => None,
        };
        Ok(StreamReader {
            client: client.clone(),
            state: state.clone(),
            event: Arc::new(event.clone()),
            plan: Arc::new(plan.clone()),
            paging: Arc::new(Paging::new(plan.stream.clone())),
            total,
            buffers: Buffers::default(),
        })
    }

    /// The stream's spare page buffers, for the batches handed to the sinks to give back.
    pub(crate) fn buffers(&self) -> &Buffers {
        &self.buffers
    }

    /// Items of the source, when known: from `/counts`, the ids, or a legacy page.
    pub(crate) fn total(&self) -> Option<u64> {
        self.total
    }

    /// Batches of the stream when its size is known (at least one, even when empty).
    pub(crate) fn page_count(&self) -> Option<u64> {
        let page_size = self.page_size();
        self.total.map(|total| total.div_ceil(page_size).max(1))
    }

    /// Takes the total a batch reported, when none was known.
    pub(crate) fn learn_total(&mut self, total: Option<u64>) {
        if self.total.is_none() {
            self.total = total;
        }
    }

    /// Reads batch `seq`: the items `[seq·P, (seq+1)·P)` of the source (for id streams, the
    /// records of the `seq`th chunk of ids).
    pub(crate) async fn batch(&self, seq: u64) -> Result<Batch, FetchError> {
        let start = seq.saturating_mul(self.page_size());
        match &self.plan.source {
            StreamSource::LegacyBatch => self.finish(self.read_legacy(start).await, None),
            StreamSource::Sheet => {
                let end = self.total.map_or(End::Unknown, End::Counted);
                let read = self.read_records(RecordsSelection::All, start, end).await;
                self.finish(read, None)
            }
            StreamSource::SheetCommit { commit_id } => {
                let selection = RecordsSelection::Commit(commit_id.clone());
                let read = self.read_records(selection, start, End::Unknown).await;
                self.finish(read, None)
            }
            StreamSource::SheetSinceCommit { commit_id } => {
                let selection = RecordsSelection::SinceCommit(commit_id.clone());
                let read = self.read_records(selection, start, End::Unknown).await;
                self.finish(read, None)
            }
            StreamSource::SheetIds { ids } => self.read_id_chunk(ids, seq).await,
            StreamSource::Deletions { ids } => {
                let chunk = chunk_of(ids, seq, self.page_size());
                Ok(Batch {
                    ndjson: plan::deletion_rows(chunk),
                    rows: chunk.len() as u64,
                    end: self.chunk_is_last(ids, seq),
                    total: None,
                })
            }
            StreamSource::Event => Ok(Batch {
                ndjson: plan::event_row(&self.event.event_id, &self.event.topic, &self.event.body),
                rows: 1,
                end: true,
                total: None,
            }),
            StreamSource::Carried { parts, .. } => self.read_carried_part(seq, *parts).await,
            StreamSource::WorkspaceSheet { workspace_id } => {
                self.finish(self.read_workspace(workspace_id, start).await, None)
            }
            StreamSource::DataUrl { relative } => {
                self.finish(self.read_data_url(relative, start).await, None)
            }
        }
    }

    fn page_size(&self) -> u64 {
        self.plan.page_size.max(1)
    }

    /// Whether chunk `seq` of `ids` is the last one.
    fn chunk_is_last(&self, ids: &[String], seq: u64) -> bool {
        let start = seq.saturating_mul(self.page_size());
        start.saturating_add(self.page_size()) >= ids.len() as u64
    }

    /// A batch of a legacy Portal batch's rows (skip/take).
    async fn read_legacy(&self, start: u64) -> Result<BatchRead, ReadError> {
        let client = &self.client;
        let source_ref = self.plan.source_ref.as_str();
        let buffers = &self.buffers;
        read_skip_take_batch(
            |skip, take| async move {
                client
                    .legacy_rows_page(source_ref, skip, take, buffers)
                    .await
                    .map(|page| PageRead::from_legacy(page, skip))
            },
            start,
            self.page_size(),
            self.total,
        )
        .await
    }

    /// A batch of a Platform sheet's records (numbered pages) as `selection` picks them.
    async fn read_records(
        &self,
        selection: RecordsSelection,
        start: u64,
        end: End,
    ) -> Result<BatchRead, ReadError> {
        let client = &self.client;
        let source_ref = self.plan.source_ref.as_str();
        let selection = &selection;
        read_numbered_batch(
            |page_number, size| async move {
                client
                    .records_selection_page(source_ref, selection, page_number, size)
                    .await
                    .map(PageRead::from)
            },
            start,
            self.page_size(),
            end,
            &self.paging,
        )
        .await
    }

    /// The records of chunk `seq` of the ids an event named.
    async fn read_id_chunk(&self, ids: &[String], seq: u64) -> Result<Batch, FetchError> {
        let chunk = chunk_of(ids, seq, self.page_size());
        if chunk.is_empty() {
            return Ok(Batch {
                ndjson: Vec::new(),
                rows: 0,
                end: true,
                total: None,
            });
        }
        // Each chunk is its own selection, paged from 1. Records deleted since the
        // event are simply absent from the answer.
        let bound = End::AtMost(chunk.len() as u64);
        let read = self
            .read_records(RecordsSelection::Ids(chunk.to_vec()), 0, bound)
            .await;
        self.finish(read, Some(self.chunk_is_last(ids, seq)))
    }

    /// Stored part `seq` of an upload whose rows came in webhook bodies.
    async fn read_carried_part(&self, seq: u64, parts: u64) -> Result<Batch, FetchError> {
        let source_ref = self.plan.source_ref.as_str();
        let (ndjson, rows) = self
            .state
            .carried_rows(source_ref, seq)
            .await?
            .ok_or_else(|| FetchError::MissingPart {
                upload: source_ref.to_owned(),
                part: seq + 1,
            })?;
        Ok(Batch {
            ndjson,
            rows,
            end: seq + 1 >= parts,
            total: None,
        })
    }

    /// A batch of a Workspaces sheet's records (skip/take).
    async fn read_workspace(&self, workspace_id: &str, start: u64) -> Result<BatchRead, ReadError> {
        let client = &self.client;
        let source_ref = self.plan.source_ref.as_str();
        read_skip_take_batch(
            |skip, take| async move {
                client
                    .workspace_records_page(workspace_id, source_ref, skip, take)
                    .await
                    .map(|page| PageRead {
                        ndjson: page.ndjson,
                        rows: page.rows,
                        items: page.rows,
                        total: page.total_count,
                        limit: page.limit,
                    })
            },
            start,
            self.page_size(),
            self.total,
        )
        .await
    }

    /// A batch of the records behind an event's `dataUrl` (numbered pages).
    async fn read_data_url(&self, relative: &str, start: u64) -> Result<BatchRead, ReadError> {
        let client = &self.client;
        read_numbered_batch(
            |page_number, size| async move {
                client
                    .data_url_records_page(relative, page_number, size)
                    .await
                    .map(PageRead::from)
            },
            start,
            self.page_size(),
            End::Unknown,
            &self.paging,
        )
        .await
    }

    /// Names the counts and requests of a failed read; `end` overrides the read's own end.
    fn finish(
        &self,
        read: Result<BatchRead, ReadError>,
        end: Option<bool>,
    ) -> Result<Batch, FetchError> {
        let source_ref = &self.plan.source_ref;
        // Skip/take sources state their own total; numbered sheet pages are counted by /counts.
        let (legacy, noun, request) = match &self.plan.source {
            StreamSource::LegacyBatch => {
                (true, "rows", format!("GET /rest/batch/{source_ref}/rows"))
            }
            StreamSource::WorkspaceSheet { workspace_id } => (
                true,
                "records",
                format!("GET /workspace/{workspace_id}/sheet/{source_ref}/records"),
            ),
            StreamSource::DataUrl { relative } => (false, "records", format!("GET {relative}")),
            _ => (
                false,
                "records",
                format!("GET /v1/sheets/{source_ref}/records"),
            ),
        };
        match read {
            Ok(read) => Ok(Batch {
                ndjson: read.ndjson,
                rows: read.rows,
                end: end.unwrap_or(read.end),
                total: read.total,
            }),
            Err(ReadError::Api(e)) => Err(FetchError::Api(e)),
            Err(ReadError::Shortfall { received, expected }) => Err(FetchError::Shortfall {
                received,
                expected,
                noun,
                said: if legacy {
                    format!("{request} said totalCount {expected}")
                } else {
                    format!("GET /v1/sheets/{source_ref}/counts said {expected}")
                },
            }),
            Err(ReadError::Overfull { asked, got }) => Err(FetchError::Overfull {
                request,
                asked,
                got,
                noun,
            }),
        }
    }
}

impl From<RecordsPage> for PageRead {
    fn from(page: RecordsPage) -> PageRead {
        PageRead {
            ndjson: page.ndjson,
            rows: page.rows,
            items: page.rows,
            total: None,
            limit: None,
        }
    }
}

impl PageRead {
    /// A legacy rows page asked for at `skip`. The take the server applied is `limit`, else
    /// what `nextOffset` implies.
    fn from_legacy(page: LegacyPage, skip: u64) -> PageRead {
        let implied = page
            .next_offset
            .and_then(|next| next.checked_sub(skip))
            .filter(|take| *take > 0);
        PageRead {
            ndjson: page.ndjson,
            rows: page.rows_delivered,
            items: page.rows_on_page,
            total: page.total_count,
            limit: page.limit.or(implied),
        }
    }
}

/// The ids of batch `seq` when a stream pages through a list of ids.
fn chunk_of(ids: &[String], seq: u64, page_size: u64) -> &[String] {
    let start = usize::try_from(seq.saturating_mul(page_size)).unwrap_or(usize::MAX);
    let end = start.saturating_add(usize::try_from(page_size).unwrap_or(usize::MAX));
    ids.get(start.min(ids.len())..end.min(ids.len()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
