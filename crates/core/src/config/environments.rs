//! `[environments.NAME]`: Flatfile environments with their own key, polling and webhook
//! credentials.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::flatfile::FlatfileConfig;
use super::webhook::{DEFAULT_LEGACY_JWT_FIELD, SenderAuth, with_jwt_field};
use super::{ConfigError, Parser, SecretSource};

/// `[environments.NAME]`: one Flatfile environment (test, production, ...). Events whose
/// `context.environmentId` is `id` are fetched with this environment's key and can be routed by
/// the environment's name.
#[derive(Clone, Debug)]
pub struct EnvironmentConfig {
    /// Flatfile's environment id, `us_env_...`.
    pub id: String,
    /// Platform secret key of this environment; `None` falls back to `[flatfile]`'s.
    pub secret_key: Option<SecretSource>,
    /// Polling of the events API, when enabled.
    pub poll: Option<PollConfig>,
    /// Webhook credentials that admit this environment's events only (`webhook_token_*`,
    /// `webhook_path_secret_*`, `webhook_signing_secret_*`, `legacy_jwt_secret_*`).
    pub webhook_auth: SenderAuth,
}

/// Polling settings of one environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollConfig {
    /// Pause between two polls.
    pub interval: Duration,
    /// `pageSize` of each events request.
    pub page_size: u64,
    /// How far before the cursor each poll asks again (`since = cursor - overlap`), so events
    /// that become visible late, or share the cursor's timestamp, are not missed.
    pub overlap: Duration,
    /// Ask for events other listeners already acknowledged too.
    pub include_acknowledged: bool,
    /// Where a new cursor starts: `None` = now, `Some(ms)` = that time (0 = the beginning).
    pub start_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvironment {
    id: Spanned<String>,
    secret_key_env: Option<String>,
    secret_key_file: Option<PathBuf>,
    secret_key_credential: Option<String>,
    poll: Option<bool>,
    poll_interval_ms: Option<Spanned<u64>>,
    poll_page_size: Option<Spanned<u64>>,
    poll_overlap_secs: Option<u64>,
    poll_include_acknowledged: Option<bool>,
    poll_start: Option<Spanned<String>>,
    webhook_token_env: Option<String>,
    webhook_token_file: Option<PathBuf>,
    webhook_token_credential: Option<String>,
    webhook_path_secret_env: Option<String>,
    webhook_path_secret_file: Option<PathBuf>,
    webhook_path_secret_credential: Option<String>,
    webhook_signing_secret_env: Option<String>,
    webhook_signing_secret_file: Option<PathBuf>,
    webhook_signing_secret_credential: Option<String>,
    legacy_jwt_secret_env: Option<String>,
    legacy_jwt_secret_file: Option<PathBuf>,
    legacy_jwt_secret_credential: Option<String>,
    legacy_jwt_field: Option<Spanned<String>>,
}

pub(super) fn parse(
    raw: BTreeMap<String, RawEnvironment>,
    flatfile: &FlatfileConfig,
    has_webhook: bool,
    p: &Parser<'_>,
) -> Result<BTreeMap<String, EnvironmentConfig>, ConfigError> {
    let mut environments = BTreeMap::new();
    for (name, env) in raw {
        let key = |k: &str| format!("environments.{name}.{k}");
        check_id(&env.id, &environments, &key, p)?;
        let secret_key = p.secret(
            env.secret_key_env,
            env.secret_key_file,
            env.secret_key_credential,
            &key("secret_key"),
        )?;
        let has_secret_key = secret_key.is_some() || flatfile.secret_key.is_some();
        let poll = poll_config(
            RawPoll {
                poll: env.poll,
                interval_ms: env.poll_interval_ms,
                page_size: env.poll_page_size,
                overlap_secs: env.poll_overlap_secs,
                include_acknowledged: env.poll_include_acknowledged,
                start: env.poll_start,
            },
            &env.id,
            has_secret_key,
            &key,
            p,
        )?;
        let webhook_auth = SenderAuth {
            token: p.secret(
                env.webhook_token_env,
                env.webhook_token_file,
                env.webhook_token_credential,
                &key("webhook_token"),
            )?,
            path_secret: p.secret(
                env.webhook_path_secret_env,
                env.webhook_path_secret_file,
                env.webhook_path_secret_credential,
                &key("webhook_path_secret"),
            )?,
            signing_secret: p.secret(
                env.webhook_signing_secret_env,
                env.webhook_signing_secret_file,
                env.webhook_signing_secret_credential,
                &key("webhook_signing_secret"),
            )?,
            legacy_jwt_secret: p.secret(
                env.legacy_jwt_secret_env,
                env.legacy_jwt_secret_file,
                env.legacy_jwt_secret_credential,
                &key("legacy_jwt_secret"),
            )?,
            legacy_jwt_field: DEFAULT_LEGACY_JWT_FIELD.to_owned(),
        };
        let table = format!("environments.{name}");
        let webhook_auth = with_jwt_field(webhook_auth, env.legacy_jwt_field, &table, p)?;
        if !webhook_auth.is_empty() && !has_webhook {
            return Err(p.locate(
                Some(env.id.span()),
                Some(&table),
                "sets webhook credentials, but there is no [webhook] section to receive \
                 webhooks with"
                    .to_owned(),
            ));
        }
        environments.insert(
            name,
            EnvironmentConfig {
                id: env.id.into_inner(),
                secret_key,
                poll,
                webhook_auth,
            },
        );
    }
    Ok(environments)
}

/// Refuses an empty id, or one an environment parsed before already has.
fn check_id(
    id: &Spanned<String>,
    earlier: &BTreeMap<String, EnvironmentConfig>,
    key: &dyn Fn(&str) -> String,
    p: &Parser<'_>,
) -> Result<(), ConfigError> {
    if id.get_ref().trim().is_empty() {
        return Err(p.locate(
            Some(id.span()),
            Some(&key("id")),
            "is empty; set the Flatfile environment id (us_env_...)".to_owned(),
        ));
    }
    if let Some((other, _)) = earlier.iter().find(|(_, e)| e.id == *id.get_ref()) {
        return Err(p.locate(
            Some(id.span()),
            Some(&key("id")),
            format!(
                "`{}` is already the id of environment `{other}`",
                id.get_ref()
            ),
        ));
    }
    Ok(())
}

/// An environment's `poll` and `poll_*` keys.
struct RawPoll {
    poll: Option<bool>,
    interval_ms: Option<Spanned<u64>>,
    page_size: Option<Spanned<u64>>,
    overlap_secs: Option<u64>,
    include_acknowledged: Option<bool>,
    start: Option<Spanned<String>>,
}

/// The polling settings, `None` when polling is off; errors are located at the environment's
/// `id`, the one key every environment has.
fn poll_config(
    raw: RawPoll,
    id: &Spanned<String>,
    has_secret_key: bool,
    key: &dyn Fn(&str) -> String,
    p: &Parser<'_>,
) -> Result<Option<PollConfig>, ConfigError> {
    if !raw.poll.unwrap_or(false) {
        let keys_set = raw.interval_ms.is_some()
            || raw.page_size.is_some()
            || raw.overlap_secs.is_some()
            || raw.include_acknowledged.is_some()
            || raw.start.is_some();
        if keys_set {
            return Err(p.locate(
                Some(id.span()),
                Some(&key("poll")),
                "poll_* settings are given but `poll = true` is not".to_owned(),
            ));
        }
        return Ok(None);
    }
    if !has_secret_key {
        return Err(p.locate(
            Some(id.span()),
            Some(&key("poll")),
            "polling needs a Platform secret key: set `secret_key_env`, \
             `secret_key_file` or `secret_key_credential` here or in [flatfile]"
                .to_owned(),
        ));
    }
    let start_ms = match raw.start {
        None => None,
        Some(v) => Some(parse_poll_start(v.get_ref()).ok_or_else(|| {
            p.locate(
                Some(v.span()),
                Some(&key("poll_start")),
                format!(
                    "`{}` is not \"now\", \"beginning\" or a time like 2026-01-31T12:00:00Z",
                    v.get_ref()
                ),
            )
        })?),
    }
    .flatten();
    Ok(Some(PollConfig {
        interval: Duration::from_millis(p.positive(
            raw.interval_ms,
            &key("poll_interval_ms"),
            5000,
        )?),
        page_size: p.positive(raw.page_size, &key("poll_page_size"), 100)?,
        overlap: Duration::from_secs(raw.overlap_secs.unwrap_or(10)),
        include_acknowledged: raw.include_acknowledged.unwrap_or(true),
        start_ms,
    }))
}

/// `poll_start`: `Some(None)` = now, `Some(Some(ms))` = a time, `None` = not understood.
fn parse_poll_start(text: &str) -> Option<Option<i64>> {
    match text.trim() {
        "now" => Some(None),
        "beginning" => Some(Some(0)),
        other => crate::time::parse_rfc3339(other).map(Some),
    }
}
