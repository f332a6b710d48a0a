//! The Flatfile API clients a config names, with their secrets read.

use std::collections::BTreeMap;

use flatsync_flatfile::{ClientConfig, FlatfileClient, RetryPolicy, Secret};

use super::StartError;
use crate::config::{self, Config};
use crate::pipeline::engine::Clients;

fn read_secret(
    source: Option<&config::SecretSource>,
    what: &'static str,
) -> Result<Option<Secret>, StartError> {
    match source {
        None => Ok(None),
        Some(source) => source
            .read()
            .map_err(|message| StartError::Secret { what, message }),
    }
}

/// Builds the Flatfile clients: `[flatfile]`'s, and one per `[environments.NAME]` that has a
/// key of its own.
pub(crate) fn flatfile_clients(config: &Config) -> Result<Clients, StartError> {
    let default = flatfile_client(config)?;
    let mut by_environment = BTreeMap::new();
    for (name, env) in &config.environments {
        let Some(source) = &env.secret_key else {
            continue;
        };
        let what = format!("environments.{name}.secret_key");
        let key = source
            .read()
            .map_err(|message| StartError::Secret {
                what: "an environment's secret key",
                message: format!("{what}: {message}"),
            })?
            .ok_or_else(|| StartError::Secret {
                what: "an environment's secret key",
                message: format!("{what}: {} is not set or empty", source.describe()),
            })?;
        by_environment.insert(env.id.clone(), client_with_key(config, Some(key))?);
    }
    Ok(Clients {
        default,
        by_environment,
    })
}

/// Builds the Flatfile API client from the config, reading its secrets.
pub fn flatfile_client(config: &Config) -> Result<FlatfileClient, StartError> {
    let legacy_api_key = read_secret(
        config.flatfile.legacy_api_key.as_ref(),
        "flatfile.legacy_api_key",
    )?;
    let secret_key = read_secret(config.flatfile.secret_key.as_ref(), "flatfile.secret_key")?;
    for (value, source, what) in [
        (
            &legacy_api_key,
            &config.flatfile.legacy_api_key,
            "legacy API key",
        ),
        (
            &secret_key,
            &config.flatfile.secret_key,
            "Platform secret key",
        ),
    ] {
        if let (None, Some(source)) = (value, source) {
            tracing::warn!(source = %source.describe(), "The {what} is not set; fetches that need it will fail");
        }
    }
    client_with_keys(config, legacy_api_key, secret_key)
}

fn client_with_key(
    config: &Config,
    secret_key: Option<Secret>,
) -> Result<FlatfileClient, StartError> {
    let legacy_api_key = read_secret(
        config.flatfile.legacy_api_key.as_ref(),
        "flatfile.legacy_api_key",
    )?;
    client_with_keys(config, legacy_api_key, secret_key)
}

fn client_with_keys(
    config: &Config,
    legacy_api_key: Option<Secret>,
    secret_key: Option<Secret>,
) -> Result<FlatfileClient, StartError> {
    Ok(FlatfileClient::new(ClientConfig {
        legacy_api_url: config.flatfile.legacy_api_url.clone(),
        legacy_api_key,
        api_url: config.flatfile.api_url.clone(),
        secret_key,
        request_timeout: config.flatfile.request_timeout,
        connect_timeout: std::time::Duration::from_secs(10),
        retry: RetryPolicy {
            max_attempts: config.flatfile.max_attempts,
            ..RetryPolicy::default()
        },
    })?)
}
