//! A caller's say over when an answer's body is read.
//!
//! A read-ahead wants the next page's request on the wire as soon as a page in flight has its
//! answer, like a connection that is free again, but must not hold more pages' lines than its
//! memory budget. Its fetches run inside [`with_answer_gate`]: the client tells the gate when a
//! success answer's headers arrive and reads the body only once the gate lets it, so a body the
//! budget has no room for waits in the socket, not in memory. The gate is task-local rather
//! than a parameter of every page method: it belongs to the fetch, not to any one request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Told by the client when a success answer arrives, before its body is read.
pub trait AnswerGate: Send + Sync {
    /// Returns once the body may be read. The client waits at most `wait_at_most` (half its
    /// request timeout), so a gate that stays shut can never make the request time out; a
    /// gate should count the body as admitted when that time runs out. A fetch can make
    /// several requests (retries, a page read again): the gate is told of each answer.
    fn answered(&self, wait_at_most: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

tokio::task_local! {
    static GATE: Arc<dyn AnswerGate>;
}

/// Runs `fetch` with `gate` told of every success answer the client receives within it.
pub async fn with_answer_gate<F: Future>(gate: Arc<dyn AnswerGate>, fetch: F) -> F::Output {
    GATE.scope(gate, fetch).await
}

/// Waits at the gate of the running fetch, if it has one: what the client does when a success
/// answer arrives. A source that reads answers by other means (a test's fake) calls it too.
pub async fn answer_arrived(wait_at_most: Duration) {
    if let Ok(gate) = GATE.try_with(Arc::clone) {
        gate.answered(wait_at_most).await;
    }
}
