//! `[webhook]`, and the sender credentials it shares with `[environments.NAME]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::listener::{ListenerLimits, RawLimits, TIMEOUT_SECS, listener_limits};
use super::{ConfigError, Parser, SecretSource};

/// `[webhook]`.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// URL path that accepts POSTs.
    pub path: String,
    /// Credentials that admit events of any environment.
    pub auth: SenderAuth,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Longest time to read a request body, from the moment the handler starts reading it.
    pub body_timeout: Duration,
    /// Connection and time limits of the listener.
    pub limits: ListenerLimits,
}

/// `[webhook] body_timeout_secs` when not set.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The credentials webhook senders may present: in `[webhook]` they admit any event, in
/// `[environments.NAME]` only that environment's events. Every secret may hold several
/// whitespace-separated values, so a rotation can overlap.
#[derive(Clone, Debug)]
pub struct SenderAuth {
    /// Bearer tokens: `Authorization: Bearer <token>`.
    pub token: Option<SecretSource>,
    /// Secret path segments: a POST to `{path}/{secret}` needs no header, for senders that can
    /// only be given a URL.
    pub path_secret: Option<SecretSource>,
    /// Standard Webhooks secrets (`whsec_...`): `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature` headers, as another flatsync's http-forward sink sends them.
    pub signing_secret: Option<SecretSource>,
    /// HS256 keys of the JWT a legacy Portal notification carries in its `env`.
    pub legacy_jwt_secret: Option<SecretSource>,
    /// The key of `env` that holds the JWT (`env` may also be the JWT itself).
    pub legacy_jwt_field: String,
}

/// Where a legacy notification's JWT is looked for when `legacy_jwt_field` is not set.
pub const DEFAULT_LEGACY_JWT_FIELD: &str = "token";

impl Default for SenderAuth {
    fn default() -> Self {
        SenderAuth {
            token: None,
            path_secret: None,
            signing_secret: None,
            legacy_jwt_secret: None,
            legacy_jwt_field: DEFAULT_LEGACY_JWT_FIELD.to_owned(),
        }
    }
}

impl SenderAuth {
    /// Whether no credential is configured here.
    pub fn is_empty(&self) -> bool {
        self.token.is_none()
            && self.path_secret.is_none()
            && self.signing_secret.is_none()
            && self.legacy_jwt_secret.is_none()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    listen: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    token_credential: Option<String>,
    path_secret_env: Option<String>,
    path_secret_file: Option<PathBuf>,
    path_secret_credential: Option<String>,
    signing_secret_env: Option<String>,
    signing_secret_file: Option<PathBuf>,
    signing_secret_credential: Option<String>,
    legacy_jwt_secret_env: Option<String>,
    legacy_jwt_secret_file: Option<PathBuf>,
    legacy_jwt_secret_credential: Option<String>,
    legacy_jwt_field: Option<Spanned<String>>,
    max_body_bytes: Option<Spanned<usize>>,
    body_timeout_secs: Option<Spanned<u64>>,
    header_timeout_secs: Option<Spanned<u64>>,
    idle_timeout_secs: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
    max_header_bytes: Option<Spanned<u64>>,
}

pub(super) fn parse(w: RawWebhook, p: &Parser<'_>) -> Result<WebhookConfig, ConfigError> {
    let listen = match w.listen {
        None => SocketAddr::from(([127, 0, 0, 1], 8787)),
        Some(v) => p.address(v, "webhook.listen")?,
    };
    let path = match w.path {
        None => "/flatfile/webhook".to_owned(),
        Some(v) if v.get_ref().starts_with('/') => v.into_inner(),
        Some(v) => {
            return Err(p.locate(
                Some(v.span()),
                Some("webhook.path"),
                "must start with `/`".to_owned(),
            ));
        }
    };
    let auth = SenderAuth {
        token: p.secret(
            w.token_env,
            w.token_file,
            w.token_credential,
            "webhook.token",
        )?,
        path_secret: p.secret(
            w.path_secret_env,
            w.path_secret_file,
            w.path_secret_credential,
            "webhook.path_secret",
        )?,
        signing_secret: p.secret(
            w.signing_secret_env,
            w.signing_secret_file,
            w.signing_secret_credential,
            "webhook.signing_secret",
        )?,
        legacy_jwt_secret: p.secret(
            w.legacy_jwt_secret_env,
            w.legacy_jwt_secret_file,
            w.legacy_jwt_secret_credential,
            "webhook.legacy_jwt_secret",
        )?,
        legacy_jwt_field: DEFAULT_LEGACY_JWT_FIELD.to_owned(),
    };
    let auth = with_jwt_field(auth, w.legacy_jwt_field, "webhook", p)?;
    let limits = RawLimits {
        header_timeout_secs: w.header_timeout_secs,
        idle_timeout_secs: w.idle_timeout_secs,
        max_connections: w.max_connections,
        max_header_bytes: w.max_header_bytes,
    };
    Ok(WebhookConfig {
        listen,
        path,
        auth,
        max_body_bytes: p.positive_usize(w.max_body_bytes, "webhook.max_body_bytes", 1 << 20)?,
        body_timeout: Duration::from_secs(p.within(
            w.body_timeout_secs,
            "webhook.body_timeout_secs",
            DEFAULT_BODY_TIMEOUT.as_secs(),
            TIMEOUT_SECS,
        )?),
        limits: listener_limits(limits, "webhook", ListenerLimits::WEBHOOK_DEFAULTS, p)?,
    })
}

/// `auth` with the `legacy_jwt_field` of `[table]`, when set.
///
/// `legacy_jwt_field` only says where the JWT is; without a key to check it with it would do
/// nothing, which is worth an error rather than a silently open door.
pub(super) fn with_jwt_field(
    mut auth: SenderAuth,
    field: Option<Spanned<String>>,
    table: &str,
    p: &Parser<'_>,
) -> Result<SenderAuth, ConfigError> {
    let Some(field) = field else {
        return Ok(auth);
    };
    let key = format!("{table}.legacy_jwt_field");
    if field.get_ref().trim().is_empty() {
        return Err(p.locate(
            Some(field.span()),
            Some(&key),
            "is empty; name the key of `env` that holds the JWT".to_owned(),
        ));
    }
    if auth.legacy_jwt_secret.is_none() {
        return Err(p.locate(
            Some(field.span()),
            Some(&key),
            format!(
                "is set, but [{table}] has no `legacy_jwt_secret_env`, \
                 `legacy_jwt_secret_file` or `legacy_jwt_secret_credential` \
                 to check the JWT with"
            ),
        ));
    }
    auth.legacy_jwt_field = field.into_inner().trim().to_owned();
    Ok(auth)
}
