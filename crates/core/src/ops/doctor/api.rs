//! The doctor's Flatfile check: one cheap authenticated request per configured API key.

use std::time::Duration;

use flatsync_flatfile::{ApiError, ClientConfig, FlatfileClient, RetryPolicy};

use crate::config::{Config, SecretSource};

/// How a Flatfile API answered the doctor's probe with a configured key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiOutcome {
    /// The key was accepted.
    Ok {
        /// The HTTP status.
        status: u16,
    },
    /// 401 or 403: the API refused the key.
    KeyRejected {
        /// The HTTP status.
        status: u16,
    },
    /// No answer: DNS, connection, TLS or timeout.
    Unreachable {
        /// What failed.
        message: String,
    },
    /// An answer that says nothing about the key (a 5xx, a redirect, ...).
    UnexpectedStatus {
        /// The HTTP status.
        status: u16,
    },
    /// The key's source is configured but holds nothing (the variable or file is missing).
    NotSet {
        /// Where the key should be.
        source: String,
    },
    /// The key or URL cannot be used at all.
    Invalid {
        /// Why.
        message: String,
    },
    /// Neither a legacy key nor a Platform secret key is configured.
    NotConfigured,
}

impl ApiOutcome {
    /// Whether this is a pass.
    pub fn is_ok(&self) -> bool {
        matches!(self, ApiOutcome::Ok { .. })
    }

    /// One line for the operator; never contains the key.
    pub fn explain(&self) -> String {
        match self {
            ApiOutcome::Ok { status } => format!("key accepted (HTTP {status})"),
            ApiOutcome::KeyRejected { status } => format!(
                "key rejected (HTTP {status}): the key is wrong, revoked, or for another \
                 environment or region"
            ),
            ApiOutcome::Unreachable { message } => format!("unreachable: {message}"),
            ApiOutcome::UnexpectedStatus { status } => format!(
                "unexpected answer HTTP {status}: check the configured API URL, or try again \
                 later"
            ),
            ApiOutcome::NotSet { source } => {
                format!("the key is configured to come from {source}, which is not set")
            }
            ApiOutcome::Invalid { message } => message.clone(),
            ApiOutcome::NotConfigured => "no API key is configured in [flatfile] \
                 (legacy_api_key_* or secret_key_*): no import can be fetched"
                .to_owned(),
        }
    }
}

/// One API probe of the doctor.
#[derive(Clone, Debug)]
pub struct ApiCheck {
    /// `legacy API` or `Platform API`.
    pub api: &'static str,
    /// The base URL probed.
    pub url: String,
    /// Where the key comes from (never the key).
    pub key_source: String,
    /// The verdict.
    pub outcome: ApiOutcome,
}

/// Probes each Flatfile API a key is configured for with one cheap authenticated GET
/// (`FlatfileClient::probe_legacy_key`, `probe_secret_key`), without retries and with a
/// request timeout of at most 15 s.
pub async fn check_flatfile(config: &Config) -> Vec<ApiCheck> {
    let flatfile = &config.flatfile;
    if flatfile.legacy_api_key.is_none() && flatfile.secret_key.is_none() {
        return vec![ApiCheck {
            api: "Flatfile API",
            url: flatfile.api_url.clone(),
            key_source: "none".to_owned(),
            outcome: ApiOutcome::NotConfigured,
        }];
    }
    let mut checks = Vec::new();
    for (api, url, source, legacy) in [
        (
            "legacy API",
            &flatfile.legacy_api_url,
            &flatfile.legacy_api_key,
            true,
        ),
        (
            "Platform API",
            &flatfile.api_url,
            &flatfile.secret_key,
            false,
        ),
    ] {
        let Some(source) = source else { continue };
        let outcome = probe_api(config, source, legacy).await;
        checks.push(ApiCheck {
            api,
            url: url.clone(),
            key_source: source.describe(),
            outcome,
        });
    }
    checks
}

async fn probe_api(config: &Config, source: &SecretSource, legacy: bool) -> ApiOutcome {
    let key = match source.read() {
        Ok(Some(key)) => key,
        Ok(None) => {
            return ApiOutcome::NotSet {
                source: source.describe(),
            };
        }
        Err(message) => return ApiOutcome::Invalid { message },
    };
    let (legacy_api_key, secret_key) = if legacy {
        (Some(key), None)
    } else {
        (None, Some(key))
    };
    let client = FlatfileClient::new(ClientConfig {
        legacy_api_url: config.flatfile.legacy_api_url.clone(),
        legacy_api_key,
        api_url: config.flatfile.api_url.clone(),
        secret_key,
        request_timeout: config.flatfile.request_timeout.min(Duration::from_secs(15)),
        connect_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
    });
    let client = match client {
        Ok(client) => client,
        Err(error) => {
            return ApiOutcome::Invalid {
                message: error.to_string(),
            };
        }
    };
    let answer = if legacy {
        client.probe_legacy_key().await
    } else {
        client.probe_secret_key().await
    };
    match answer {
        Ok(status @ (401 | 403)) => ApiOutcome::KeyRejected { status },
        Ok(status @ 200..=299) => ApiOutcome::Ok { status },
        // The legacy probe asks for a batch that does not exist: a 404 comes after the key
        // was accepted.
        Ok(404) if legacy => ApiOutcome::Ok { status: 404 },
        Ok(status) => ApiOutcome::UnexpectedStatus { status },
        Err(ApiError::Transport { message, .. }) => ApiOutcome::Unreachable { message },
        Err(error) => ApiOutcome::Invalid {
            message: error.to_string(),
        },
    }
}
