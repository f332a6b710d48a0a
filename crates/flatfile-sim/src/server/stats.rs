//! The request counters of [`SimStats`]: which endpoint a request went to, whether it came
//! back before its `Retry-After`, and which fault it got.

use axum::http::Method;

use super::faults::Fault;
use crate::SimStats;

/// The endpoint a request is counted under.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    LegacyRows,
    WorkspaceRecords,
    Workbooks,
    Sheets,
    Counts,
    Records,
    Jobs,
    Events,
    EventGet,
    EventAck,
    Other,
}

pub(super) fn classify(method: &Method, path: &str) -> Kind {
    if let Some(rest) = path.strip_prefix("/rest/batch/") {
        return if rest.ends_with("/rows") && rest.matches('/').count() == 1 {
            Kind::LegacyRows
        } else {
            Kind::Other
        };
    }
    if let Some(rest) = path.strip_prefix("/workspace/") {
        let parts: Vec<&str> = rest.split('/').collect();
        return match parts.as_slice() {
            [_, "sheet", _, "records"] => Kind::WorkspaceRecords,
            _ => Kind::Other,
        };
    }
    if path.starts_with("/v1/workbooks/") {
        return Kind::Workbooks;
    }
    if path == "/v1/sheets" {
        return Kind::Sheets;
    }
    if let Some(rest) = path.strip_prefix("/v1/sheets/") {
        return match rest.split_once('/') {
            None => Kind::Sheets,
            Some((_, "counts")) => Kind::Counts,
            Some((_, "records")) => Kind::Records,
            Some(_) => Kind::Other,
        };
    }
    if path == "/v1/jobs" || path.starts_with("/v1/jobs/") {
        return Kind::Jobs;
    }
    if path == "/v1/events" && method == Method::GET {
        return Kind::Events;
    }
    if let Some(rest) = path.strip_prefix("/v1/events/") {
        return match rest.split_once('/') {
            None if method == Method::GET => Kind::EventGet,
            Some((_, "ack")) if method == Method::POST => Kind::EventAck,
            _ => Kind::Other,
        };
    }
    Kind::Other
}

/// Counts one API request.
pub(super) fn tally(stats: &mut SimStats, kind: Kind, early: bool, fault: Fault) {
    stats.requests += 1;
    let counter = match kind {
        Kind::LegacyRows => &mut stats.legacy_rows,
        Kind::WorkspaceRecords => &mut stats.workspace_records,
        Kind::Workbooks => &mut stats.workbooks,
        Kind::Sheets => &mut stats.sheets,
        Kind::Counts => &mut stats.counts,
        Kind::Records => &mut stats.records,
        Kind::Jobs => &mut stats.jobs,
        Kind::Events => &mut stats.events,
        Kind::EventGet => &mut stats.event_gets,
        Kind::EventAck => &mut stats.event_acks,
        Kind::Other => &mut stats.other,
    };
    *counter += 1;
    if early {
        stats.early_retries += 1;
    }
    match fault {
        Fault::None => {}
        Fault::Error => stats.injected_errors += 1,
        Fault::RateLimit => stats.injected_rate_limits += 1,
        Fault::Drop => stats.injected_drops += 1,
    }
}
