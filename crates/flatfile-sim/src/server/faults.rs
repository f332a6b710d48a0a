//! Fault injection: which request fails and how, the `Retry-After` each 429 announced (to notice
//! a client that comes back early), and cutting a body short.

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_LENGTH;
use axum::response::Response;
use futures_util::StreamExt as _;

use crate::lock::lock;
use crate::{Faults, SimConfig, generate};

/// URLs whose 429 was never retried would pile up in a long run: past this many, elapsed
/// deadlines are dropped.
const MAX_PENDING_RETRIES: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    None,
    Error,
    RateLimit,
    Drop,
}

/// Draws the fault of each request and remembers when each rate-limited request may come back.
pub(super) struct Injector {
    faults: Faults,
    seed: u64,
    requests: AtomicU64,
    /// Method + path + query -> instant before which a retry is early.
    retry_not_before: Mutex<HashMap<String, Instant>>,
}

impl Injector {
    pub(super) fn new(config: &SimConfig) -> Injector {
        Injector {
            faults: config.faults.clone(),
            seed: generate::mix(config.seed ^ 0xFA01_7FA0_17FA_017F),
            requests: AtomicU64::new(0),
            retry_not_before: Mutex::new(HashMap::new()),
        }
    }

    /// The fault of the next request: one uniform draw split into the configured fractions, so
    /// the rates hold exactly in expectation and a seed replays the same sequence.
    pub(super) fn draw(&self) -> Fault {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let draw = generate::mix(self.seed.wrapping_add(n));
        let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
        let mut threshold = self.faults.error_rate;
        if unit < threshold {
            return Fault::Error;
        }
        threshold += self.faults.rate_limit_rate;
        if unit < threshold {
            return Fault::RateLimit;
        }
        threshold += self.faults.drop_rate;
        if unit < threshold {
            return Fault::Drop;
        }
        Fault::None
    }

    /// Whether the request `retry_key` arriving at `arrived` comes before the `Retry-After` of
    /// its last 429; a deadline that has passed is forgotten.
    pub(super) fn is_early(&self, retry_key: &str, arrived: Instant) -> bool {
        let mut not_before = lock(&self.retry_not_before);
        match not_before.get(retry_key) {
            Some(deadline) if arrived < *deadline => true,
            Some(_) => {
                not_before.remove(retry_key);
                false
            }
            None => false,
        }
    }

    /// Notes the 429 answered to `retry_key` at `arrived`; returns its `Retry-After` seconds.
    pub(super) fn hold_off(&self, retry_key: String, arrived: Instant) -> u64 {
        let retry_after = self.faults.retry_after_secs;
        let mut not_before = lock(&self.retry_not_before);
        if not_before.len() >= MAX_PENDING_RETRIES {
            not_before.retain(|_, deadline| *deadline > arrived);
        }
        not_before.insert(retry_key, arrived + Duration::from_secs(retry_after));
        retry_after
    }
}

/// Sends the head and half of the body, then fails the body stream so hyper aborts the
/// connection: the client sees a truncated body, as when a proxy or the network cuts it.
pub(super) async fn cut_short(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let head = bytes.slice(..bytes.len() / 2);
    parts.headers.remove(CONTENT_LENGTH);
    let chunks = futures_util::stream::unfold(Some(head), |state| async move {
        let head = state?;
        Some((Ok::<Bytes, io::Error>(head), None))
    });
    let failure = futures_util::stream::once(async {
        // Let hyper flush the first half before the error tears the connection down.
        tokio::time::sleep(Duration::from_millis(20)).await;
        Err::<Bytes, io::Error>(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection cut by flatfile-sim fault injection",
        ))
    });
    Response::from_parts(parts, Body::from_stream(chunks.chain(failure)))
}
