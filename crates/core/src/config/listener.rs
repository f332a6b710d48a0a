//! What `[webhook]` and `[admin]` share: the listener's connection and time limits; and
//! `[admin]` itself.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Parser};

/// Connection and time limits of an HTTP listener (`[webhook]`, `[admin]`), so that clients
/// that connect and then stall cannot hold the process's file descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Longest time from the first byte of a request head to its end (`header_timeout_secs`).
    pub header_timeout: Duration,
    /// Longest time a connection may sit with no request in progress, before its first request
    /// or between two (`idle_timeout_secs`).
    pub idle_timeout: Duration,
    /// Most connections open at once (`max_connections`). Past it, the connection idle the
    /// longest (no request in progress) is closed to make room; when every connection is in
    /// the middle of a request the new one is answered 503 and closed.
    pub max_connections: usize,
    /// Largest request head, request line included (`max_header_bytes`); larger heads are
    /// answered 431 and the connection closed.
    pub max_header_bytes: usize,
}

impl ListenerLimits {
    /// The webhook listener's defaults. 1024 connections stay well below the shipped unit's
    /// `LimitNOFILE=4096`, leaving room for the state database, sinks and plugins.
    pub const WEBHOOK_DEFAULTS: ListenerLimits = ListenerLimits {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 1024,
        max_header_bytes: 16 * 1024,
    };

    /// The admin listener's defaults: scrapers and health checkers need few connections.
    pub const ADMIN_DEFAULTS: ListenerLimits = ListenerLimits {
        max_connections: 64,
        ..ListenerLimits::WEBHOOK_DEFAULTS
    };
}

/// `[admin]`: health and metrics endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// Connection and time limits of the listener. The admin endpoints read no request body,
    /// so there is no body timeout: a request's unread body ends its connection.
    pub limits: ListenerLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    listen: Option<Spanned<String>>,
    header_timeout_secs: Option<Spanned<u64>>,
    idle_timeout_secs: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
    max_header_bytes: Option<Spanned<u64>>,
}

/// The listener limit keys, which `[webhook]` and `[admin]` share. (serde cannot flatten them
/// into both tables and still refuse unknown keys.)
pub(super) struct RawLimits {
    pub(super) header_timeout_secs: Option<Spanned<u64>>,
    pub(super) idle_timeout_secs: Option<Spanned<u64>>,
    pub(super) max_connections: Option<Spanned<u64>>,
    pub(super) max_header_bytes: Option<Spanned<u64>>,
}

/// Accepted ranges of the listener settings: wide enough for any real deployment, narrow
/// enough that a typo (a timeout in milliseconds, a missing digit) is caught.
pub(super) const TIMEOUT_SECS: (u64, u64) = (1, 3600);
const MAX_CONNECTIONS: (u64, u64) = (1, 65_536);
/// hyper needs at least 1 KiB to read any real request line; 256 KiB stays below the read
/// buffer hyper keeps per connection, so the limit and not the buffer decides.
const MAX_HEADER_BYTES: (u64, u64) = (1024, 256 * 1024);

/// The listener limits of `[table]`, each key defaulting to `defaults`.
pub(super) fn listener_limits(
    raw: RawLimits,
    table: &str,
    defaults: ListenerLimits,
    p: &Parser<'_>,
) -> Result<ListenerLimits, ConfigError> {
    let secs = |value, name: &str, default: Duration| {
        p.within(
            value,
            &format!("{table}.{name}"),
            default.as_secs(),
            TIMEOUT_SECS,
        )
        .map(Duration::from_secs)
    };
    let count = |value, name: &str, default: usize, range| {
        p.within(value, &format!("{table}.{name}"), default as u64, range)
            .map(|n| n as usize)
    };
    Ok(ListenerLimits {
        header_timeout: secs(
            raw.header_timeout_secs,
            "header_timeout_secs",
            defaults.header_timeout,
        )?,
        idle_timeout: secs(
            raw.idle_timeout_secs,
            "idle_timeout_secs",
            defaults.idle_timeout,
        )?,
        max_connections: count(
            raw.max_connections,
            "max_connections",
            defaults.max_connections,
            MAX_CONNECTIONS,
        )?,
        max_header_bytes: count(
            raw.max_header_bytes,
            "max_header_bytes",
            defaults.max_header_bytes,
            MAX_HEADER_BYTES,
        )?,
    })
}

pub(super) fn parse_admin(a: RawAdmin, p: &Parser<'_>) -> Result<AdminConfig, ConfigError> {
    Ok(AdminConfig {
        listen: match a.listen {
            None => SocketAddr::from(([127, 0, 0, 1], 9187)),
            Some(v) => p.address(v, "admin.listen")?,
        },
        limits: listener_limits(
            RawLimits {
                header_timeout_secs: a.header_timeout_secs,
                idle_timeout_secs: a.idle_timeout_secs,
                max_connections: a.max_connections,
                max_header_bytes: a.max_header_bytes,
            },
            "admin",
            ListenerLimits::ADMIN_DEFAULTS,
            p,
        )?,
    })
}
