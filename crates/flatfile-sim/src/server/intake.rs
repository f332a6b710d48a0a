//! The first stop of every `/rest`, `/workspace` and `/v1` request: it is counted, an early
//! retry is noted, and the answer is replaced by an injected fault when the draw says so. Admin
//! requests pass untouched.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::faults::{self, Fault};
use super::reply::{api_error, is_legacy_path};
use super::shared::Shared;
use super::stats;
use crate::lock::lock;

pub(super) async fn count_and_inject_faults(
    State(sim): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let legacy = is_legacy_path(&path);
    if !(legacy || path.starts_with("/v1/") || path == "/v1") {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let retry_key = format!(
        "{method} {}",
        request
            .uri()
            .path_and_query()
            .map_or(path.as_str(), |target| target.as_str())
    );
    let arrived = Instant::now();
    let early = sim.faults.is_early(&retry_key, arrived);
    let fault = sim.faults.draw();
    let alternate_error = {
        let mut stats = lock(&sim.stats);
        stats::tally(&mut stats, stats::classify(&method, &path), early, fault);
        stats.injected_errors % 2 == 0
    };
    if early {
        tracing::warn!(method = %method, path = %path, "Request retried before Retry-After elapsed");
    }
    let response = match fault {
        Fault::None => next.run(request).await,
        Fault::Error => {
            let status = if alternate_error {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            api_error(legacy, status, None, "Simulated server error")
        }
        Fault::RateLimit => {
            let retry_after = sim.faults.hold_off(retry_key, arrived);
            let mut response = api_error(
                legacy,
                StatusCode::TOO_MANY_REQUESTS,
                None,
                "Too many requests",
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after));
            response
        }
        Fault::Drop => faults::cut_short(next.run(request).await).await,
    };
    tracing::debug!(
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        fault = ?fault,
        "Request served"
    );
    response
}
