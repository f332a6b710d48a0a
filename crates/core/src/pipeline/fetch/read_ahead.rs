//! A stream's batches in order, fetched ahead of delivery so the wire is busy while the sinks
//! write, within a memory budget.
//!
//! Three bounds hold the batches requested ahead of the one being delivered:
//!
//! - **Bytes**: the batches fetched but not yet handed out, plus an estimate for each fetch in
//!   flight (the largest batch of the stream so far), stay within `[fetch] read_ahead_bytes`.
//!   One batch is always allowed in flight, so a batch larger than the budget still progresses.
//! - **Pages**: at most the window of pages in flight, requested and not yet handed out, on the
//!   wire or fetched and waiting for the sinks: `[fetch] pages_in_flight`, or, when
//!   `adaptive_pages_in_flight` is on, a window that grows by one after a full window of batches
//!   the delivery loop had to wait for (the wire, not the sinks, is slow), up to
//!   `max_pages_in_flight`, and halves when the API answers 429 (the client counts them; [`Window`]).
//!   A fetched batch keeps its place until the sinks take it: while the sinks are the slower
//!   side, batches queued behind them would only hold memory, and everything requested is
//!   fetched again after a crash, so a restart fetches again at most the window and the batch
//!   the sinks were writing. Measured (`BENCHMARKS.md`), letting twice the window be held made
//!   no import faster, and cost 3 MiB with 10,000-record Platform pages.
//! - **The end**: with a known page count every request is of a batch that exists; without one
//!   the stream is read one batch at a time until a batch proves the end.
//!
//! When the total is known before the first batch (a sheet's `/counts`, an event's ids, stored
//! parts), the window opens at once: batches read early are safe because the numbered-page
//! reader re-reads a batch whose first page is ambiguous (see the parent module).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flatsync_flatfile::ApiError;
use tokio::sync::Notify;

use crate::config::FetchConfig;
use crate::pipeline::fetch::{Batch, FetchError, StreamReader};

/// Bytes per row assumed before a stream's first batch is seen: generous for flat records of a
/// dozen short fields, so the first window rarely overshoots the budget.
const PRIOR_ROW_BYTES: u64 = 256;

/// Where batches come from: a [`StreamReader`], or a fake in tests.
pub(crate) trait BatchSource: Clone + Send + Sync + 'static {
    /// Reads batch `seq`.
    fn batch(&self, seq: u64) -> impl Future<Output = Result<Batch, FetchError>> + Send;

    /// `429 Too Many Requests` answers the source's API client received so far: the window
    /// halves when it grows.
    fn throttled_answers(&self) -> u64;
}

impl BatchSource for StreamReader {
    fn batch(&self, seq: u64) -> impl Future<Output = Result<Batch, FetchError>> + Send {
        StreamReader::batch(self, seq)
    }

    fn throttled_answers(&self) -> u64 {
        self.client.throttled_answers()
    }
}

/// How many pages may be in flight, and, when adaptive, how that changes (AIMD).
#[derive(Debug)]
pub(crate) struct Window {
    size: usize,
    max: usize,
    adaptive: bool,
    /// Batches in a row the delivery loop had to wait for.
    waited_in_row: usize,
    /// The client's count of 429 answers when the last batch was handed out: a larger count
    /// means the API throttled a request since.
    throttled_seen: u64,
    /// Throttled fetches requested before this batch do not halve the window again: they were
    /// in flight when it was halved.
    calm_from: u64,
}

impl Window {
    pub(crate) fn new(config: &FetchConfig) -> Window {
        let size = config.pages_in_flight.max(1);
        Window {
            size,
            max: config.max_pages_in_flight.max(size),
            adaptive: config.adaptive_pages_in_flight,
            waited_in_row: 0,
            throttled_seen: 0,
            calm_from: 0,
        }
    }

    /// Pages that may be in flight now.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Learns from batch `seq`, handed out after the delivery loop `waited` for it, when the
    /// client had received `throttled_answers` 429s in all; `next_seq` is the next batch to be
    /// requested. The API's own signal, not a fetch's duration, tells throttling: a slow page
    /// is latency, which more pages in flight hide.
    pub(crate) fn delivered(
        &mut self,
        seq: u64,
        throttled_answers: u64,
        waited: bool,
        next_seq: u64,
    ) {
        let throttled = throttled_answers > self.throttled_seen;
        self.throttled_seen = self.throttled_seen.max(throttled_answers);
        if !self.adaptive {
            return;
        }
        if throttled && seq < self.calm_from {
            // In flight when the window was halved for the same throttling; no reason to grow.
            self.waited_in_row = 0;
            return;
        }
        if throttled {
            let halved = (self.size / 2).max(1);
            tracing::info!(
                seq,
                pages_in_flight = halved,
                throttled_answers,
                "API throttled; halving pages in flight"
            );
            self.size = halved;
            self.waited_in_row = 0;
            self.calm_from = next_seq;
            return;
        }
        if !waited {
            // The batch was ready: the sinks, not the wire, set the pace.
            self.waited_in_row = 0;
            return;
        }
        self.waited_in_row += 1;
        if self.waited_in_row >= self.size && self.size < self.max {
            self.size += 1;
            self.waited_in_row = 0;
            tracing::debug!(
                pages_in_flight = self.size,
                "Wire-bound; one more page in flight"
            );
        }
    }
}

/// What a fetch task ends with.
type FetchOutcome = Result<Batch, FetchError>;

/// One batch requested ahead.
struct Fetch {
    seq: u64,
    task: AbortOnDrop<FetchOutcome>,
    /// The batch's bytes once fetched; [`PENDING`] until then.
    bytes: Arc<AtomicU64>,
}

const PENDING: u64 = u64::MAX;

/// A stream's batches in order, fetched ahead within the budget.
pub(crate) struct ReadAhead<S: BatchSource = StreamReader> {
    source: S,
    /// A batch read alone before the window opened (when the total was not known).
    first: Option<Result<Batch, FetchError>>,
    /// Requested, not yet handed out, in order.
    queue: VecDeque<Fetch>,
    /// The next batch to request.
    next_seq: u64,
    /// Batches end before this one (`u64::MAX` while unknown).
    end: u64,
    /// Whether batches may be requested before the one before them is handed out.
    ahead: bool,
    budget: u64,
    /// The largest batch so far, or the prior guess before any.
    estimate: u64,
    seen_batch: bool,
    window: Window,
    /// Woken by each fetch that ends, so the next request goes out before its batch's turn.
    fetched: Arc<Notify>,
    /// Rows in the stream, when known.
    pub(crate) total_rows: Option<u64>,
    /// Batches in the stream, when known.
    pub(crate) page_count: Option<u64>,
}

impl ReadAhead<StreamReader> {
    /// Starts reading `reader`'s stream at batch `start`.
    pub(crate) async fn open(
        reader: &mut StreamReader,
        start: u64,
        config: &FetchConfig,
    ) -> ReadAhead<StreamReader> {
        let mut first = None;
        if reader.page_count().is_none() {
            // Only a batch tells the total (legacy pages) or the end (a commit's records):
            // read the first alone, then fetch ahead if it told the total.
            let batch = reader.batch(start).await;
            if let Ok(batch) = &batch {
                reader.learn_total(batch.total);
            }
            first = Some(batch);
        }
        let prior = reader.page_size().saturating_mul(PRIOR_ROW_BYTES);
        let mut pages = ReadAhead::new(reader.clone(), start, reader.page_count(), config, prior);
        pages.total_rows = reader.total();
        if let Some(first) = first {
            pages.first = Some(first);
            pages.next_seq = start + 1;
        }
        pages
    }
}

impl<S: BatchSource> ReadAhead<S> {
    /// Batches `start..page_count` of `source` (or until a batch proves the end), each batch
    /// guessed at `prior` bytes until one is seen.
    pub(crate) fn new(
        source: S,
        start: u64,
        page_count: Option<u64>,
        config: &FetchConfig,
        prior: u64,
    ) -> ReadAhead<S> {
        ReadAhead {
            source,
            first: None,
            queue: VecDeque::new(),
            next_seq: start,
            end: page_count.unwrap_or(u64::MAX),
            ahead: page_count.is_some(),
            budget: config.read_ahead_bytes,
            estimate: prior,
            seen_batch: false,
            window: Window::new(config),
            fetched: Arc::new(Notify::new()),
            total_rows: None,
            page_count,
        }
        .counting_throttles_from_now()
    }

    fn counting_throttles_from_now(mut self) -> ReadAhead<S> {
        self.window.throttled_seen = self.source.throttled_answers();
        self
    }

    /// The next batch of the stream.
    pub(crate) async fn next(&mut self) -> Result<Batch, FetchError> {
        if let Some(first) = self.first.take() {
            if let Ok(batch) = &first {
                self.learn_size(held_bytes(batch));
                if batch.end {
                    self.end = self.end.min(self.next_seq);
                }
                self.request_more();
            }
            return first;
        }
        self.request_more();
        let Some(front) = self.queue.front() else {
            // Only a stream of known page count runs out, and its last batch ended the
            // delivery loop before.
            return Ok(Batch {
                ndjson: Vec::new(),
                rows: 0,
                end: true,
                total: None,
            });
        };
        let waited = !front.task.0.is_finished();
        let (joined, seq) = self.front_fetched().await;
        let result = joined.unwrap_or_else(|e| {
            let error = FetchError::Api(ApiError::Transport {
                method: "GET",
                url: String::new(),
                attempts: 0,
                message: format!("page fetch task ended: {e}"),
            });
            Err(error)
        });
        if let Ok(batch) = &result {
            self.learn_size(held_bytes(batch));
            if batch.end {
                self.end = self.end.min(seq + 1);
            }
            let throttled = self.source.throttled_answers();
            self.window.delivered(seq, throttled, waited, self.next_seq);
            // The batch leaves the budget now: what it freed is fetched while the sinks write.
            self.request_more();
        }
        result
    }

    /// Waits for the oldest fetch, requesting more each time another fetch ends (it left the
    /// window), and takes it off the queue.
    async fn front_fetched(&mut self) -> (Result<FetchOutcome, tokio::task::JoinError>, u64) {
        loop {
            let fetched = Arc::clone(&self.fetched);
            let notified = fetched.notified();
            let joined = match self.queue.front_mut() {
                Some(front) => {
                    tokio::select! {
                        joined = &mut front.task.0 => Some(joined),
                        () = notified => None,
                    }
                }
                None => None,
            };
            match joined {
                Some(joined) => {
                    let seq = self.queue.pop_front().map_or(self.next_seq, |f| f.seq);
                    return (joined, seq);
                }
                None => self.request_more(),
            }
        }
    }

    fn learn_size(&mut self, bytes: u64) {
        self.estimate = if self.seen_batch {
            self.estimate.max(bytes)
        } else {
            bytes
        };
        self.seen_batch = true;
    }

    /// Requests batches while the window, the budget and the end allow.
    fn request_more(&mut self) {
        while self.next_seq < self.end && self.may_request() {
            let seq = self.next_seq;
            let source = self.source.clone();
            let bytes = Arc::new(AtomicU64::new(PENDING));
            let fetched = Arc::clone(&bytes);
            let wake = Arc::clone(&self.fetched);
            // A spawned task keeps fetching while the delivery loop waits on the sinks; a plain
            // future would only progress while polled.
            let task = tokio::spawn(async move {
                let result = source.batch(seq).await;
                let size = result.as_ref().map_or(0, held_bytes);
                fetched.store(size, Ordering::Release);
                wake.notify_one();
                result
            });
            self.queue.push_back(Fetch {
                seq,
                task: AbortOnDrop(task),
                bytes,
            });
            self.next_seq += 1;
        }
    }

    fn may_request(&self) -> bool {
        if self.queue.is_empty() {
            // At least one batch in flight, however large: the stream must progress.
            return true;
        }
        if !self.ahead {
            return false;
        }
        if self.queue.len() >= self.window.size() {
            return false;
        }
        let held = self.queue.iter().fold(0_u64, |held, fetch| {
            match fetch.bytes.load(Ordering::Acquire) {
                PENDING => held.saturating_add(self.estimate),
                bytes => held.saturating_add(bytes),
            }
        });
        held.saturating_add(self.estimate) <= self.budget
    }

    /// Pages that may be in flight now (the adaptive window's current size).
    #[cfg(test)]
    pub(crate) fn window_size(&self) -> usize {
        self.window.size()
    }
}

/// The memory a fetched batch holds: its buffer's capacity, which the converters size from the
/// page's body before they know how many bytes of lines it makes.
fn held_bytes(batch: &Batch) -> u64 {
    batch.ndjson.capacity() as u64
}

/// Aborts a spawned page fetch nobody waits for any more (the stream stopped early).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
