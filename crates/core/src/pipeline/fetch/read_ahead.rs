//! A stream's batches in order, fetched ahead of delivery so the wire is busy while the sinks
//! write, within a memory budget.
//!
//! Three bounds hold the batches requested ahead of the one being delivered:
//!
//! - **Bytes**: the batches fetched but not yet handed out, plus an estimate (the largest batch
//!   of the stream so far) for each body being read, stay within `[fetch] read_ahead_bytes`.
//!   A request is either made within the budget, its estimate reserved (its body is read as
//!   soon as it is answered), or, while the wire sets the pace, made ahead of it: then its
//!   answer waits at the fetch's gate ([`flatsync_flatfile::AnswerGate`]) until the budget has
//!   room for its body, which meanwhile stays unread in the socket. The oldest batch is always
//!   let through, so a batch larger than the budget still progresses. A body gated
//!   longer than half the request timeout is read anyway, so a stalled sink never makes a page
//!   time out: only then can the budget be exceeded, by at most the window.
//! - **Pages**: the window, `[fetch] pages_in_flight` (or, when `adaptive_pages_in_flight` is
//!   on, a window that grows by one after a full window of batches the delivery loop had to
//!   wait for, up to `max_pages_in_flight`, and halves when the API answers 429; [`Window`]).
//!   How it counts depends on which side is slower:
//!   - While the sinks are (the delivery loop finds its next batch fetched), at most the window
//!     is requested and not yet handed out, less the batches handed out that the sinks may
//!     still hold ([`ReadAhead::with_batches_at_sinks`]: the delivery loop sends each batch
//!     ahead of the answer to the one before): batches queued behind the sinks would only hold
//!     memory, and everything requested is fetched again after a crash, so a restart then
//!     fetches again at most the window and the batch the sinks were writing.
//!   - While the wire is ([`ReadAhead::wire_bound`]: the delivery loop waits for its next
//!     batch, and the stream's quickest answer took more than twice the daemon's own work on a
//!     batch, its quickest conversion and the sinks writing the one before; before the first
//!     batch is converted, the first answers are held against a prior of [`PRIOR_ROW_NANOS`]
//!     per row, so the next requests go out with them), at most the window of requests waits
//!     for its answers, as many as the wire floor's connections, and a new request goes out as
//!     each answer arrives, up to twice the window requested and not handed out: converting
//!     and writing pages no longer holds the next pages' latency back. Its bodies are not
//!     reserved: they wait at their gates for the budget.
//! - **The end**: with a known page count every request is of a batch that exists; without one
//!   the stream is read one batch at a time until a batch proves the end.
//!
//! When the total is known before the first batch (a sheet's `/counts`, an event's ids, stored
//! parts), the window opens at once: batches read early are safe because the numbered-page
//! reader re-reads a batch whose first page is ambiguous (see the parent module).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flatsync_flatfile::{AnswerGate, ApiError};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::FetchConfig;
use crate::pipeline::fetch::{Batch, FetchError, StreamReader};
use crate::state::StreamSource;

/// Bytes per row assumed before a stream's first batch is seen: generous for flat records of a
/// dozen short fields, so the first window rarely overshoots the budget.
pub(super) const PRIOR_ROW_BYTES: u64 = 256;

/// Converting a row, assumed until a stream's first batch is fetched: about what a record of
/// a dozen fields takes on a small machine, so that answers of a nearby server (a few
/// milliseconds for a page) never pass for latency, while those of a distant one (tens of
/// milliseconds) let the next requests go out with the first answers.
const PRIOR_ROW_NANOS: u64 = 1000;

/// Where batches come from: a [`StreamReader`], or a fake in tests.
pub(crate) trait BatchSource: Clone + Send + Sync + 'static {
    /// Reads batch `seq`.
    fn batch(&self, seq: u64) -> impl Future<Output = Result<Batch, FetchError>> + Send;

    /// `429 Too Many Requests` answers the source's API client received so far: the window
    /// halves when it grows.
    fn throttled_answers(&self) -> u64;

    /// Whether every batch is read from answers that wait at the fetch's [`AnswerGate`]: only
    /// then may requests outrun the budget while the wire is slow, the gates holding it.
    fn answers_gated(&self) -> bool;
}

impl BatchSource for StreamReader {
    fn batch(&self, seq: u64) -> impl Future<Output = Result<Batch, FetchError>> + Send {
        StreamReader::batch(self, seq)
    }

    fn answers_gated(&self) -> bool {
        // The rest are read from the state or made up locally, through no HTTP answer.
        !matches!(
            self.plan.source,
            StreamSource::Event | StreamSource::Deletions { .. } | StreamSource::Carried { .. }
        )
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
    stage: Arc<Stage>,
}

/// Where a requested batch is: [`AWAITING`] its answer, [`GATED`] (answered, its body unread
/// until the budget has room), [`ADMITTED`] (its body being read), or, once fetched, its
/// bytes. The fetch task moves it forward; the read-ahead admits gated bodies.
struct Stage {
    state: AtomicU64,
    /// Requested within the budget, an estimate counted for it: its body is read as soon as
    /// it is answered, without waiting for the read-ahead to admit it.
    reserved: bool,
    requested: Instant,
    /// Microseconds from the request to its answer, then to the batch fetched; 0 until then.
    answered_after: AtomicU64,
    fetched_after: AtomicU64,
    /// Lets a gated body be read.
    admit: Notify,
    /// The read-ahead's: an answer or a fetch's end may let more be requested or admitted.
    wake: Arc<Notify>,
}

const AWAITING: u64 = u64::MAX;
const GATED: u64 = u64::MAX - 1;
const ADMITTED: u64 = u64::MAX - 2;

impl Stage {
    /// A batch requested now, awaiting its answer.
    fn new(reserved: bool, wake: Arc<Notify>) -> Stage {
        Stage {
            state: AtomicU64::new(AWAITING),
            reserved,
            requested: Instant::now(),
            answered_after: AtomicU64::new(0),
            fetched_after: AtomicU64::new(0),
            admit: Notify::new(),
            wake,
        }
    }

    fn state(&self) -> u64 {
        self.state.load(Ordering::Acquire)
    }

    fn fetched(&self, bytes: u64) {
        self.fetched_after
            .store(micros_since(self.requested), Ordering::Release);
        self.state.store(bytes.min(ADMITTED - 1), Ordering::Release);
        self.wake.notify_one();
    }

    /// How long the answer took, once it arrived.
    fn answer(&self) -> Option<u64> {
        let answered = self.answered_after.load(Ordering::Acquire);
        (answered > 0).then_some(answered)
    }

    /// How long the answer took, and then the batch's reading and conversion, once known.
    fn timings(&self) -> Option<(u64, u64)> {
        let answered = self.answered_after.load(Ordering::Acquire);
        let fetched = self.fetched_after.load(Ordering::Acquire);
        (answered > 0 && fetched >= answered).then(|| (answered, fetched - answered))
    }
}

fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl AnswerGate for Stage {
    fn answered(&self, wait_at_most: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let next = if self.reserved { ADMITTED } else { GATED };
            let answered =
                self.state
                    .compare_exchange(AWAITING, next, Ordering::AcqRel, Ordering::Acquire);
            if answered.is_err() {
                // Admitted for an earlier answer of the same fetch (a retry, a page read again).
                return;
            }
            self.answered_after
                .store(micros_since(self.requested), Ordering::Release);
            self.wake.notify_one();
            if next == ADMITTED {
                return;
            }
            if tokio::time::timeout(wait_at_most, self.admit.notified())
                .await
                .is_err()
            {
                // Read anyway, counted from now: see the module's note on stalled sinks.
                let _ = self.state.compare_exchange(
                    GATED,
                    ADMITTED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
        })
    }
}

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
    /// Batches handed out that the sinks may still hold while later ones are fetched (the
    /// delivery loop's writes sent ahead): while the sinks set the pace, they count in the
    /// window, which bounds what is held ahead of the sinks.
    at_sinks: usize,
    /// Woken by each answer and each fetch that ends, so the next request goes out and gated
    /// bodies are read before their batch's turn.
    fetched: Arc<Notify>,
    /// The delivery loop is waiting for its next batch.
    waiting: bool,
    /// Whether the wire's latency or the daemon's own work sets the pace: the least time an
    /// answer of the stream took, against the least time a batch took to
    /// be read and converted (before any, the prior) plus how long the sinks took with the batch
    /// before. The least of each, because what is measured while the cores are shared (by
    /// conversions, the sinks, a page server on the same machine) stretches, and only the
    /// wire's own latency is a reason for more requests.
    answer_micros: Option<u64>,
    conversion_micros: Option<u64>,
    prior_conversion_micros: u64,
    /// When the delivery loop last took a batch, and how long the sinks then kept it.
    handed_out: Option<Instant>,
    sink_micros: u64,
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
            at_sinks: 0,
            fetched: Arc::new(Notify::new()),
            waiting: false,
            answer_micros: None,
            conversion_micros: None,
            prior_conversion_micros: prior / PRIOR_ROW_BYTES * PRIOR_ROW_NANOS / 1000,
            handed_out: None,
            sink_micros: 0,
            total_rows: None,
            page_count,
        }
        .counting_throttles_from_now()
    }

    /// Counts `batches` handed out as still held by the sinks while the next are fetched.
    pub(crate) fn with_batches_at_sinks(mut self, batches: usize) -> ReadAhead<S> {
        self.at_sinks = batches;
        self
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
                self.pump();
            }
            self.handed_out = Some(Instant::now());
            return first;
        }
        if let Some(at) = self.handed_out {
            self.sink_micros = micros_since(at);
        }
        self.pump();
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
            self.pump();
        }
        self.handed_out = Some(Instant::now());
        result
    }

    /// Waits for the oldest fetch, and takes it off the queue. Meanwhile the wire is the slower
    /// side: each answer or fetch that ends lets more be admitted and requested.
    async fn front_fetched(&mut self) -> (Result<FetchOutcome, tokio::task::JoinError>, u64) {
        let fetched = self.front_fetched_waiting().await;
        self.waiting = false;
        fetched
    }

    async fn front_fetched_waiting(
        &mut self,
    ) -> (Result<FetchOutcome, tokio::task::JoinError>, u64) {
        loop {
            let fetched = Arc::clone(&self.fetched);
            let notified = fetched.notified();
            let joined = match self.queue.front_mut() {
                Some(front) => {
                    tokio::select! {
                        // A fetched front is taken at once: a wake-up stored earlier does not
                        // mean the loop waits.
                        biased;
                        joined = &mut front.task.0 => Some(joined),
                        () = notified => None,
                    }
                }
                None => None,
            };
            match joined {
                Some(joined) => {
                    let front = self.queue.pop_front();
                    if let Some(timings) = front.as_ref().and_then(|f| f.stage.timings()) {
                        self.learn_pace(timings);
                    }
                    return (joined, front.map_or(self.next_seq, |f| f.seq));
                }
                None => {
                    self.waiting = true;
                    self.pump();
                }
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

    /// Lets gated bodies be read, then requests batches, as far as the bounds allow.
    fn pump(&mut self) {
        let latest = self.queue.iter().rev().find_map(|f| f.stage.timings());
        if let Some(timings) = latest {
            self.learn_pace(timings);
        } else if let Some(answer) = self.queue.iter().rev().find_map(|f| f.stage.answer()) {
            // Nothing queued is fetched yet: what answers take shows in the answered ones.
            self.learn_answer(answer);
        }
        self.admit_gated();
        self.request_more();
    }

    /// Keeps the least time an answer of the stream took: answers slowed by a busy server or
    /// machine (a page server sharing the cores answers in 2-3 ms instead of 0.3) are no sign
    /// of a distant one, and more requests would only slow both further.
    fn learn_answer(&mut self, answer: u64) {
        keep_least(&mut self.answer_micros, answer);
    }

    /// Learns from a fetched batch's timings how long its answer took, and how long reading and
    /// converting it took, keeping the least of each for the stream.
    fn learn_pace(&mut self, (answer, conversion): (u64, u64)) {
        self.learn_answer(answer);
        keep_least(&mut self.conversion_micros, conversion);
    }

    /// Whether the wire's latency sets the pace: the delivery loop waits for its next batch,
    /// and the stream's quickest answer took more than twice the daemon's own work on a batch
    /// (its quickest conversion, or the prior, and the sinks writing the batch before). The
    /// margin keeps fast answers (pages from a server nearby) from passing for latency on a
    /// busy machine, where more requests would only hold connections and buffers.
    fn wire_bound(&self) -> bool {
        let conversion = self
            .conversion_micros
            .unwrap_or(self.prior_conversion_micros);
        let work = conversion.saturating_add(self.sink_micros);
        self.waiting
            && self.source.answers_gated()
            && self.answer_micros.unwrap_or(0) > work.saturating_mul(2)
    }

    /// Lets gated bodies be read, oldest first, while the budget has room; the oldest batch's
    /// always, so the stream progresses.
    fn admit_gated(&self) {
        let mut held = self.held(0);
        for (index, fetch) in self.queue.iter().enumerate() {
            if fetch.stage.state() != GATED {
                continue;
            }
            if index > 0 && held.saturating_add(self.estimate) > self.budget {
                break;
            }
            let admitted = fetch.stage.state.compare_exchange(
                GATED,
                ADMITTED,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if admitted.is_ok() {
                fetch.stage.admit.notify_one();
                held = held.saturating_add(self.estimate);
            }
        }
    }

    /// Requests batches while the window, the budget and the end allow.
    fn request_more(&mut self) {
        while self.next_seq < self.end {
            let Some(reserved) = self.may_request() else {
                break;
            };
            let seq = self.next_seq;
            let source = self.source.clone();
            let stage = Arc::new(Stage::new(reserved, Arc::clone(&self.fetched)));
            let gate = Arc::clone(&stage);
            // A spawned task keeps fetching while the delivery loop waits on the sinks; a plain
            // future would only progress while polled.
            let task = tokio::spawn(async move {
                let answers: Arc<dyn AnswerGate> = gate.clone();
                let result = flatsync_flatfile::with_answer_gate(answers, source.batch(seq)).await;
                gate.fetched(result.as_ref().map_or(0, held_bytes));
                result
            });
            self.queue.push_back(Fetch {
                seq,
                task: AbortOnDrop(task),
                stage,
            });
            self.next_seq += 1;
        }
    }

    /// Bytes the batches requested ahead hold: each fetched batch its own, each body being
    /// read or reserved the estimate, and each fetch not yet admitted `unadmitted`.
    fn held(&self, unadmitted: u64) -> u64 {
        self.queue.iter().fold(0_u64, |held, fetch| {
            let bytes = match fetch.stage.state() {
                AWAITING if fetch.stage.reserved => self.estimate,
                AWAITING | GATED => unadmitted,
                ADMITTED => self.estimate,
                bytes => bytes,
            };
            held.saturating_add(bytes)
        })
    }

    /// Whether another batch may be requested now, and if so whether its body has the budget
    /// reserved (`Some(true)`: read as soon as answered) or waits at its gate (`Some(false)`).
    fn may_request(&self) -> Option<bool> {
        if self.queue.is_empty() {
            // At least one batch in flight, however large: the stream must progress.
            return Some(true);
        }
        if !self.ahead {
            return None;
        }
        let window = self.window.size();
        if self.wire_bound() {
            // The wire is the slower side: see the module's note. The gates hold the budget.
            let unanswered = self
                .queue
                .iter()
                .filter(|fetch| fetch.stage.state() == AWAITING)
                .count();
            return (unanswered < window && self.queue.len() < window.saturating_mul(2))
                .then_some(false);
        }
        (self.queue.len().saturating_add(self.at_sinks) < window
            && self.held(self.estimate).saturating_add(self.estimate) <= self.budget)
            .then_some(true)
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

/// `least` becomes `value` if that is less, or if nothing was measured yet.
fn keep_least(least: &mut Option<u64>, value: u64) {
    *least = Some(least.map_or(value, |least| least.min(value)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(reserved: bool) -> Stage {
        Stage::new(reserved, Arc::new(Notify::new()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_gated_past_its_wait_is_read_and_counted_as_admitted() {
        let gated = stage(false);
        gated.answered(Duration::from_secs(30)).await;
        assert_eq!(
            gated.state(),
            ADMITTED,
            "read anyway, before the request could time out"
        );
        assert!(gated.answered_after.load(Ordering::Acquire) > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reserved_body_is_read_at_once_and_a_second_answer_passes() {
        let reserved = stage(true);
        reserved.answered(Duration::from_secs(30)).await;
        assert_eq!(reserved.state(), ADMITTED);
        let started = Instant::now();
        reserved.answered(Duration::from_secs(30)).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a retry's answer does not wait again"
        );
    }
}
