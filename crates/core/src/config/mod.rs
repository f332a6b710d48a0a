//! The TOML configuration: parsing, validation with file:line:column errors, and secrets.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flatsync_flatfile::Secret;
use serde::Deserialize;
use toml::Spanned;

pub mod filter;

use filter::{RouteFilter, TopicPattern};

/// A configuration error, located in the file when it can be.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file the error is in (`<inline>` for configs built in code).
    pub path: PathBuf,
    /// 1-based line and column, when known.
    pub location: Option<(usize, usize)>,
    /// Dotted key path such as `sinks.archive.plugin`, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, column)) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Where a secret comes from. Secrets are never written inline in the config file.
#[derive(Clone, Debug)]
pub enum SecretSource {
    /// An environment variable, by name.
    Env(String),
    /// A file whose content, without surrounding whitespace, is the secret.
    File(PathBuf),
    /// A systemd credential (`LoadCredential=NAME:...`), read from
    /// `$CREDENTIALS_DIRECTORY/NAME`.
    Credential(String),
    /// A value handed over in code by an embedding program or `flatsync demo`.
    Value(Secret),
}

impl SecretSource {
    /// Reads the secret. `Ok(None)` means the variable or file is not there.
    pub fn read(&self) -> Result<Option<Secret>, String> {
        match self {
            SecretSource::Env(name) => match std::env::var(name) {
                Ok(value) if !value.trim().is_empty() => {
                    Ok(Some(Secret::new(value.trim().to_owned())))
                }
                Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(format!("environment variable {name} is not valid UTF-8"))
                }
            },
            SecretSource::File(path) => match std::fs::read_to_string(path) {
                Ok(text) if !text.trim().is_empty() => {
                    Ok(Some(Secret::new(text.trim().to_owned())))
                }
                Ok(_) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("cannot read secret file {}: {e}", path.display())),
            },
            SecretSource::Credential(name) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) => SecretSource::File(Path::new(&dir).join(name)).read(),
                None => Err(format!(
                    "credential `{name}`: $CREDENTIALS_DIRECTORY is not set; \
                     run under systemd with `LoadCredential={name}:<file>` or use a `_file` or `_env` key"
                )),
            },
            SecretSource::Value(secret) => Ok(Some(secret.clone())),
        }
    }

    /// Names the source for messages, without the secret.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Env(name) => format!("environment variable {name}"),
            SecretSource::File(path) => format!("file {}", path.display()),
            SecretSource::Credential(name) => format!("systemd credential {name}"),
            SecretSource::Value(_) => "a value set in code".to_owned(),
        }
    }
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[flatfile]`.
    pub flatfile: FlatfileConfig,
    /// `[webhook]`; `None` when the section is absent.
    pub webhook: Option<WebhookConfig>,
    /// `[admin]`; `None` when the section is absent.
    pub admin: Option<AdminConfig>,
    /// `[fetch]`.
    pub fetch: FetchConfig,
    /// `[environments.NAME]`, by name: Flatfile environments with their own key and cursor.
    pub environments: BTreeMap<String, EnvironmentConfig>,
    /// `[sinks.NAME]`, by name.
    pub sinks: BTreeMap<String, SinkConfig>,
    /// `[[routes]]`, in file order.
    pub routes: Vec<RouteConfig>,
}

impl Config {
    /// Whether any webhook credential is configured, in `[webhook]` or in any environment:
    /// then every webhook request must present one.
    pub fn webhook_auth_configured(&self) -> bool {
        self.webhook.as_ref().is_some_and(|w| !w.auth.is_empty())
            || self
                .environments
                .values()
                .any(|e| !e.webhook_auth.is_empty())
    }

    /// The name of the `[environments.NAME]` entry whose `id` is `environment_id`.
    pub fn environment_named_by_id(&self, environment_id: &str) -> Option<&str> {
        self.environments
            .iter()
            .find(|(_, e)| e.id == environment_id)
            .map(|(name, _)| name.as_str())
    }
}

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

/// `[daemon]`.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Directory of the state database.
    pub state_dir: PathBuf,
    /// Where plugins are looked up; `None` means the default search path.
    pub plugin_dir: Option<PathBuf>,
    /// Events processed at the same time.
    pub max_concurrent_events: usize,
    /// Longest time between two sink flushes (and so checkpoints) while a stream is delivered.
    pub checkpoint_interval: Duration,
    /// Most batches between two sink flushes.
    pub checkpoint_batches: u64,
    /// Longest wait for a plugin call before the sink is declared stalled.
    pub sink_call_timeout: Duration,
    /// Calls made for one batch or flush while the plugin answers RETRY, the first included,
    /// before the delivery fails.
    pub sink_retry_attempts: u32,
    /// Largest pause between two of those calls (the pause doubles from 200 ms up to this).
    pub sink_retry_backoff_max: Duration,
    /// How long a stop (SIGTERM, SIGINT) lets in-flight batches finish before cutting them at
    /// their last checkpoint.
    pub drain_timeout: Duration,
    /// How often a long delivery logs its progress.
    pub progress_interval: Duration,
}

/// `[flatfile]`.
#[derive(Clone, Debug)]
pub struct FlatfileConfig {
    /// Legacy Portal API root.
    pub legacy_api_url: String,
    /// Legacy `X-Api-Key`, `<keyId>+<secret>`.
    pub legacy_api_key: Option<SecretSource>,
    /// Platform API root; requests go to `{api_url}/v1/...`.
    pub api_url: String,
    /// Platform secret key.
    pub secret_key: Option<SecretSource>,
    /// Job names (`payload.job`, globs allowed) whose `job:ready` means "export this workbook".
    pub submit_jobs: Vec<TopicPattern>,
    /// Timeout of one API request.
    pub request_timeout: Duration,
    /// Attempts per API request before the stream fails.
    pub max_attempts: u32,
}

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

/// `[admin]`: health and metrics endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// Connection and time limits of the listener. The admin endpoints read no request body,
    /// so there is no body timeout: a request's unread body ends its connection.
    pub limits: ListenerLimits,
}

/// `[fetch]`.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Rows per legacy page (`take`).
    pub legacy_page_size: u64,
    /// Records per Platform page (`pageSize`).
    pub records_page_size: u64,
    /// Pages requested ahead of the one being delivered.
    pub pages_in_flight: usize,
}

/// `[sinks.NAME]`.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// Plugin name or path.
    pub plugin: String,
    /// The `config` table as JSON, handed to the plugin's `create`.
    pub config_json: String,
}

/// `[[routes]]`.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// Topics that select the route.
    pub topics: Vec<TopicPattern>,
    /// Sinks the route delivers to.
    pub sinks: Vec<String>,
    /// Names of `[environments.NAME]` the route is limited to; empty = any environment.
    pub environments: Vec<String>,
    /// `[routes.filter]`: every key must match a field of the event.
    pub filter: RouteFilter,
    /// Deliver the whole sheet instead of the records the event names.
    pub snapshot: bool,
    /// What a records or commit event that names no records (no `recordIds`, no commit, no
    /// `dataUrl`) delivers to this route's sinks.
    pub unnamed_records: UnnamedRecords,
}

/// `unnamed_records`: what to do with a records or commit event that names no records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnnamedRecords {
    /// Deliver the whole sheet: every record the event could be about, and more.
    #[default]
    Snapshot,
    /// Fail the delivery, naming what the event lacked.
    Fail,
}

const DEFAULT_SUBMIT_JOBS: [&str; 5] = [
    "workbook:submitActionFg",
    "workbook:submitAction",
    "workbook:simpleSubmitAction",
    "sheet:submitActionFg",
    "sheet:submitAction",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    flatfile: RawFlatfile,
    webhook: Option<RawWebhook>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    fetch: RawFetch,
    #[serde(default)]
    environments: BTreeMap<String, RawEnvironment>,
    #[serde(default)]
    sinks: BTreeMap<String, RawSink>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    state_dir: Option<PathBuf>,
    plugin_dir: Option<PathBuf>,
    max_concurrent_events: Option<Spanned<usize>>,
    checkpoint_interval_ms: Option<u64>,
    checkpoint_batches: Option<Spanned<u64>>,
    sink_call_timeout_secs: Option<u64>,
    sink_retry_attempts: Option<Spanned<u32>>,
    sink_retry_backoff_max_ms: Option<u64>,
    drain_timeout_secs: Option<u64>,
    progress_interval_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFlatfile {
    legacy_api_url: Option<Spanned<String>>,
    legacy_api_key_env: Option<String>,
    legacy_api_key_file: Option<PathBuf>,
    legacy_api_key_credential: Option<String>,
    api_url: Option<Spanned<String>>,
    secret_key_env: Option<String>,
    secret_key_file: Option<PathBuf>,
    secret_key_credential: Option<String>,
    submit_jobs: Option<Vec<Spanned<String>>>,
    request_timeout_secs: Option<u64>,
    max_attempts: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    header_timeout_secs: Option<Spanned<u64>>,
    idle_timeout_secs: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
    max_header_bytes: Option<Spanned<u64>>,
}

/// The listener limit keys, which `[webhook]` and `[admin]` share. (serde cannot flatten them
/// into both tables and still refuse unknown keys.)
struct RawLimits {
    header_timeout_secs: Option<Spanned<u64>>,
    idle_timeout_secs: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
    max_header_bytes: Option<Spanned<u64>>,
}

/// Accepted ranges of the listener settings: wide enough for any real deployment, narrow
/// enough that a typo (a timeout in milliseconds, a missing digit) is caught.
const TIMEOUT_SECS: (u64, u64) = (1, 3600);
const MAX_CONNECTIONS: (u64, u64) = (1, 65_536);
/// hyper needs at least 1 KiB to read any real request line; 256 KiB stays below the read
/// buffer hyper keeps per connection, so the limit and not the buffer decides.
const MAX_HEADER_BYTES: (u64, u64) = (1024, 256 * 1024);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFetch {
    legacy_page_size: Option<Spanned<u64>>,
    records_page_size: Option<Spanned<u64>>,
    pages_in_flight: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    plugin: Spanned<String>,
    config: Option<Spanned<toml::Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    topics: Spanned<Vec<Spanned<String>>>,
    sinks: Spanned<Vec<Spanned<String>>>,
    environments: Option<Vec<Spanned<String>>>,
    filter: Option<Spanned<toml::Table>>,
    snapshot: Option<bool>,
    unnamed_records: Option<Spanned<String>>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            location: None,
            key: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Validates config text; `path` is used in error messages and to resolve relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let locate = |span: Option<Range<usize>>, key: Option<&str>, message: String| ConfigError {
            path: path.to_owned(),
            location: span.map(|s| line_column(text, s.start)),
            key: key.map(str::to_owned),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e.span().and_then(|span| key_at(text, span.start));
            locate(e.span(), key.as_deref(), e.message().trim().to_owned())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let absolute = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };

        let positive = |value: Option<Spanned<u64>>, key: &str, default: u64| match value {
            None => Ok(default),
            Some(v) if *v.get_ref() == 0 => Err(locate(
                Some(v.span()),
                Some(key),
                "must be at least 1".to_owned(),
            )),
            Some(v) => Ok(v.into_inner()),
        };
        let positive_usize = |value: Option<Spanned<usize>>, key: &str, default: usize| {
            positive(
                value.map(|v| Spanned::new(v.span(), *v.get_ref() as u64)),
                key,
                default as u64,
            )
            .map(|v| v as usize)
        };
        let secret = |env: Option<String>,
                      file: Option<PathBuf>,
                      credential: Option<String>,
                      key: &str| match (env, file, credential) {
            (Some(env), None, None) => Ok(Some(SecretSource::Env(env))),
            (None, Some(file), None) => Ok(Some(SecretSource::File(absolute(file)))),
            (None, None, Some(name)) => {
                if name.is_empty() || name.contains('/') {
                    Err(locate(
                        None,
                        Some(&format!("{key}_credential")),
                        format!("`{name}` is not a credential name (a file name, no `/`)"),
                    ))
                } else {
                    Ok(Some(SecretSource::Credential(name)))
                }
            }
            (None, None, None) => Ok(None),
            _ => Err(locate(
                None,
                Some(key),
                format!("set one of `{key}_env`, `{key}_file` or `{key}_credential`, not several"),
            )),
        };
        // `legacy_jwt_field` only says where the JWT is; without a key to check it with it would
        // do nothing, which is worth an error rather than a silently open door.
        let with_jwt_field =
            |mut auth: SenderAuth, field: Option<Spanned<String>>, table: &str| match field {
                None => Ok(auth),
                Some(field) => {
                    let key = format!("{table}.legacy_jwt_field");
                    if field.get_ref().trim().is_empty() {
                        return Err(locate(
                            Some(field.span()),
                            Some(&key),
                            "is empty; name the key of `env` that holds the JWT".to_owned(),
                        ));
                    }
                    if auth.legacy_jwt_secret.is_none() {
                        return Err(locate(
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
            };
        let address = |value: Spanned<String>, key: &str| {
            value.get_ref().parse::<SocketAddr>().map_err(|_| {
                locate(
                    Some(value.span()),
                    Some(key),
                    format!(
                        "`{}` is not an address like 127.0.0.1:8787",
                        value.get_ref()
                    ),
                )
            })
        };
        let url = |value: Option<Spanned<String>>, key: &str, default: &str| match value {
            None => Ok(default.to_owned()),
            Some(v) => {
                let s = v.get_ref().trim_end_matches('/');
                if s.starts_with("http://") || s.starts_with("https://") {
                    Ok(s.to_owned())
                } else {
                    Err(locate(
                        Some(v.span()),
                        Some(key),
                        format!("`{}` is not an http(s) URL", v.get_ref()),
                    ))
                }
            }
        };

        let daemon = DaemonConfig {
            state_dir: absolute(
                raw.daemon
                    .state_dir
                    .unwrap_or_else(|| PathBuf::from("/var/lib/flatsync")),
            ),
            plugin_dir: raw.daemon.plugin_dir.map(absolute),
            max_concurrent_events: positive_usize(
                raw.daemon.max_concurrent_events,
                "daemon.max_concurrent_events",
                2,
            )?,
            checkpoint_interval: Duration::from_millis(
                raw.daemon.checkpoint_interval_ms.unwrap_or(1000),
            ),
            checkpoint_batches: positive(
                raw.daemon.checkpoint_batches,
                "daemon.checkpoint_batches",
                64,
            )?,
            sink_call_timeout: Duration::from_secs(
                raw.daemon.sink_call_timeout_secs.unwrap_or(120),
            ),
            sink_retry_attempts: positive(
                raw.daemon
                    .sink_retry_attempts
                    .map(|v| Spanned::new(v.span(), u64::from(*v.get_ref()))),
                "daemon.sink_retry_attempts",
                10,
            )? as u32,
            sink_retry_backoff_max: Duration::from_millis(
                raw.daemon.sink_retry_backoff_max_ms.unwrap_or(30_000),
            ),
            drain_timeout: Duration::from_secs(raw.daemon.drain_timeout_secs.unwrap_or(30)),
            progress_interval: Duration::from_secs(positive(
                raw.daemon.progress_interval_secs,
                "daemon.progress_interval_secs",
                10,
            )?),
        };

        let f = raw.flatfile;
        let submit_jobs = match f.submit_jobs {
            None => DEFAULT_SUBMIT_JOBS
                .iter()
                .map(|j| TopicPattern::new(j))
                .collect(),
            Some(jobs) => jobs
                .iter()
                .map(|j| TopicPattern::new(j.get_ref()))
                .collect(),
        };
        let flatfile = FlatfileConfig {
            legacy_api_url: url(
                f.legacy_api_url,
                "flatfile.legacy_api_url",
                "https://api.us.flatfile.io",
            )?,
            legacy_api_key: secret(
                f.legacy_api_key_env,
                f.legacy_api_key_file,
                f.legacy_api_key_credential,
                "flatfile.legacy_api_key",
            )?,
            api_url: url(
                f.api_url,
                "flatfile.api_url",
                "https://platform.flatfile.com/api",
            )?,
            secret_key: secret(
                f.secret_key_env,
                f.secret_key_file,
                f.secret_key_credential,
                "flatfile.secret_key",
            )?,
            submit_jobs,
            request_timeout: Duration::from_secs(f.request_timeout_secs.unwrap_or(60).max(1)),
            max_attempts: positive(
                f.max_attempts
                    .map(|v| Spanned::new(v.span(), u64::from(*v.get_ref()))),
                "flatfile.max_attempts",
                8,
            )? as u32,
        };

        let webhook = match raw.webhook {
            None => None,
            Some(w) => {
                let listen = match w.listen {
                    None => SocketAddr::from(([127, 0, 0, 1], 8787)),
                    Some(v) => address(v, "webhook.listen")?,
                };
                let path = match w.path {
                    None => "/flatfile/webhook".to_owned(),
                    Some(v) if v.get_ref().starts_with('/') => v.into_inner(),
                    Some(v) => {
                        return Err(locate(
                            Some(v.span()),
                            Some("webhook.path"),
                            "must start with `/`".to_owned(),
                        ));
                    }
                };
                let auth = SenderAuth {
                    token: secret(
                        w.token_env,
                        w.token_file,
                        w.token_credential,
                        "webhook.token",
                    )?,
                    path_secret: secret(
                        w.path_secret_env,
                        w.path_secret_file,
                        w.path_secret_credential,
                        "webhook.path_secret",
                    )?,
                    signing_secret: secret(
                        w.signing_secret_env,
                        w.signing_secret_file,
                        w.signing_secret_credential,
                        "webhook.signing_secret",
                    )?,
                    legacy_jwt_secret: secret(
                        w.legacy_jwt_secret_env,
                        w.legacy_jwt_secret_file,
                        w.legacy_jwt_secret_credential,
                        "webhook.legacy_jwt_secret",
                    )?,
                    legacy_jwt_field: DEFAULT_LEGACY_JWT_FIELD.to_owned(),
                };
                let auth = with_jwt_field(auth, w.legacy_jwt_field, "webhook")?;
                let limits = RawLimits {
                    header_timeout_secs: w.header_timeout_secs,
                    idle_timeout_secs: w.idle_timeout_secs,
                    max_connections: w.max_connections,
                    max_header_bytes: w.max_header_bytes,
                };
                Some(WebhookConfig {
                    listen,
                    path,
                    auth,
                    max_body_bytes: positive_usize(
                        w.max_body_bytes,
                        "webhook.max_body_bytes",
                        1 << 20,
                    )?,
                    body_timeout: Duration::from_secs(within(
                        w.body_timeout_secs,
                        "webhook.body_timeout_secs",
                        DEFAULT_BODY_TIMEOUT.as_secs(),
                        TIMEOUT_SECS,
                        &locate,
                    )?),
                    limits: listener_limits(
                        limits,
                        "webhook",
                        ListenerLimits::WEBHOOK_DEFAULTS,
                        &locate,
                    )?,
                })
            }
        };

        let admin = match raw.admin {
            None => None,
            Some(a) => Some(AdminConfig {
                listen: match a.listen {
                    None => SocketAddr::from(([127, 0, 0, 1], 9187)),
                    Some(v) => address(v, "admin.listen")?,
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
                    &locate,
                )?,
            }),
        };

        let fetch = FetchConfig {
            legacy_page_size: positive(raw.fetch.legacy_page_size, "fetch.legacy_page_size", 1000)?,
            records_page_size: positive(
                raw.fetch.records_page_size,
                "fetch.records_page_size",
                1000,
            )?,
            pages_in_flight: positive_usize(raw.fetch.pages_in_flight, "fetch.pages_in_flight", 4)?,
        };

        let mut environments = BTreeMap::new();
        for (name, env) in raw.environments {
            let key = |k: &str| format!("environments.{name}.{k}");
            if env.id.get_ref().trim().is_empty() {
                return Err(locate(
                    Some(env.id.span()),
                    Some(&key("id")),
                    "is empty; set the Flatfile environment id (us_env_...)".to_owned(),
                ));
            }
            if let Some((other, _)) = environments
                .iter()
                .find(|(_, e): &(&String, &EnvironmentConfig)| e.id == *env.id.get_ref())
            {
                return Err(locate(
                    Some(env.id.span()),
                    Some(&key("id")),
                    format!(
                        "`{}` is already the id of environment `{other}`",
                        env.id.get_ref()
                    ),
                ));
            }
            let secret_key = secret(
                env.secret_key_env,
                env.secret_key_file,
                env.secret_key_credential,
                &key("secret_key"),
            )?;
            let poll_keys_set = env.poll_interval_ms.is_some()
                || env.poll_page_size.is_some()
                || env.poll_overlap_secs.is_some()
                || env.poll_include_acknowledged.is_some()
                || env.poll_start.is_some();
            let poll = if env.poll.unwrap_or(false) {
                if secret_key.is_none() && flatfile.secret_key.is_none() {
                    return Err(locate(
                        Some(env.id.span()),
                        Some(&key("poll")),
                        "polling needs a Platform secret key: set `secret_key_env`, \
                         `secret_key_file` or `secret_key_credential` here or in [flatfile]"
                            .to_owned(),
                    ));
                }
                let start_ms = match env.poll_start {
                    None => None,
                    Some(v) => Some(parse_poll_start(v.get_ref()).ok_or_else(|| {
                        locate(
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
                Some(PollConfig {
                    interval: Duration::from_millis(positive(
                        env.poll_interval_ms,
                        &key("poll_interval_ms"),
                        5000,
                    )?),
                    page_size: positive(env.poll_page_size, &key("poll_page_size"), 100)?,
                    overlap: Duration::from_secs(env.poll_overlap_secs.unwrap_or(10)),
                    include_acknowledged: env.poll_include_acknowledged.unwrap_or(true),
                    start_ms,
                })
            } else if poll_keys_set {
                return Err(locate(
                    Some(env.id.span()),
                    Some(&key("poll")),
                    "poll_* settings are given but `poll = true` is not".to_owned(),
                ));
            } else {
                None
            };
            let webhook_auth = SenderAuth {
                token: secret(
                    env.webhook_token_env,
                    env.webhook_token_file,
                    env.webhook_token_credential,
                    &key("webhook_token"),
                )?,
                path_secret: secret(
                    env.webhook_path_secret_env,
                    env.webhook_path_secret_file,
                    env.webhook_path_secret_credential,
                    &key("webhook_path_secret"),
                )?,
                signing_secret: secret(
                    env.webhook_signing_secret_env,
                    env.webhook_signing_secret_file,
                    env.webhook_signing_secret_credential,
                    &key("webhook_signing_secret"),
                )?,
                legacy_jwt_secret: secret(
                    env.legacy_jwt_secret_env,
                    env.legacy_jwt_secret_file,
                    env.legacy_jwt_secret_credential,
                    &key("legacy_jwt_secret"),
                )?,
                legacy_jwt_field: DEFAULT_LEGACY_JWT_FIELD.to_owned(),
            };
            let webhook_auth = with_jwt_field(
                webhook_auth,
                env.legacy_jwt_field,
                &format!("environments.{name}"),
            )?;
            if !webhook_auth.is_empty() && webhook.is_none() {
                return Err(locate(
                    Some(env.id.span()),
                    Some(&format!("environments.{name}")),
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

        let mut sinks = BTreeMap::new();
        for (name, sink) in raw.sinks {
            let key = format!("sinks.{name}.config");
            let config_json = match &sink.config {
                None => serde_json::Value::Object(serde_json::Map::new()),
                Some(table) => table_to_json(table.get_ref())
                    .map_err(|m| locate(Some(table.span()), Some(&key), m))?,
            };
            if sink.plugin.get_ref().trim().is_empty() {
                return Err(locate(
                    Some(sink.plugin.span()),
                    Some(&format!("sinks.{name}.plugin")),
                    "names no plugin".to_owned(),
                ));
            }
            sinks.insert(
                name,
                SinkConfig {
                    plugin: sink.plugin.into_inner(),
                    config_json: config_json.to_string(),
                },
            );
        }

        let mut routes = Vec::new();
        for (index, route) in raw.routes.into_iter().enumerate() {
            if route.topics.get_ref().is_empty() {
                return Err(locate(
                    Some(route.topics.span()),
                    Some(&format!("routes[{index}].topics")),
                    "lists no topic".to_owned(),
                ));
            }
            if route.sinks.get_ref().is_empty() {
                return Err(locate(
                    Some(route.sinks.span()),
                    Some(&format!("routes[{index}].sinks")),
                    "lists no sink".to_owned(),
                ));
            }
            let mut names = Vec::new();
            for sink in route.sinks.into_inner() {
                if !sinks.contains_key(sink.get_ref()) {
                    let known = sinks
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(locate(
                        Some(sink.span()),
                        Some(&format!("routes[{index}].sinks")),
                        format!(
                            "no sink is named `{}` (defined sinks: {})",
                            sink.get_ref(),
                            if known.is_empty() { "none" } else { &known }
                        ),
                    ));
                }
                if !names.contains(sink.get_ref()) {
                    names.push(sink.into_inner());
                }
            }
            let mut route_environments = Vec::new();
            for env in route.environments.unwrap_or_default() {
                if !environments.contains_key(env.get_ref()) {
                    let known = environments
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(locate(
                        Some(env.span()),
                        Some(&format!("routes[{index}].environments")),
                        format!(
                            "no environment is named `{}` (defined: {})",
                            env.get_ref(),
                            if known.is_empty() { "none" } else { &known }
                        ),
                    ));
                }
                route_environments.push(env.into_inner());
            }
            let filter = match route.filter {
                None => RouteFilter::default(),
                Some(table) => RouteFilter::from_toml(table.get_ref()).map_err(|m| {
                    locate(
                        Some(table.span()),
                        Some(&format!("routes[{index}].filter")),
                        m,
                    )
                })?,
            };
            let unnamed_records = match route.unnamed_records {
                None => UnnamedRecords::default(),
                Some(v) => match v.get_ref().as_str() {
                    "snapshot" => UnnamedRecords::Snapshot,
                    "fail" => UnnamedRecords::Fail,
                    other => {
                        return Err(locate(
                            Some(v.span()),
                            Some(&format!("routes[{index}].unnamed_records")),
                            format!("`{other}` is not \"snapshot\" or \"fail\""),
                        ));
                    }
                },
            };
            routes.push(RouteConfig {
                topics: route
                    .topics
                    .get_ref()
                    .iter()
                    .map(|t| TopicPattern::new(t.get_ref()))
                    .collect(),
                sinks: names,
                environments: route_environments,
                filter,
                snapshot: route.snapshot.unwrap_or(false),
                unnamed_records,
            });
        }

        Ok(Config {
            path: path.to_owned(),
            daemon,
            flatfile,
            webhook,
            admin,
            fetch,
            environments,
            sinks,
            routes,
        })
    }
}

/// Builds a [`ConfigError`] located at a span, for a key.
type Locate<'a> = dyn Fn(Option<Range<usize>>, Option<&str>, String) -> ConfigError + 'a;

/// `value`, or `default` when unset; an error naming `key` when outside `min..=max`.
fn within(
    value: Option<Spanned<u64>>,
    key: &str,
    default: u64,
    (min, max): (u64, u64),
    locate: &Locate<'_>,
) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if (min..=max).contains(v.get_ref()) => Ok(v.into_inner()),
        Some(v) => Err(locate(
            Some(v.span()),
            Some(key),
            format!("{} is out of range: use {min} to {max}", v.get_ref()),
        )),
    }
}

/// The listener limits of `[table]`, each key defaulting to `defaults`.
fn listener_limits(
    raw: RawLimits,
    table: &str,
    defaults: ListenerLimits,
    locate: &Locate<'_>,
) -> Result<ListenerLimits, ConfigError> {
    let secs = |value, name: &str, default: Duration| {
        within(
            value,
            &format!("{table}.{name}"),
            default.as_secs(),
            TIMEOUT_SECS,
            locate,
        )
        .map(Duration::from_secs)
    };
    let count = |value, name: &str, default: usize, range| {
        within(
            value,
            &format!("{table}.{name}"),
            default as u64,
            range,
            locate,
        )
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

/// `poll_start`: `Some(None)` = now, `Some(Some(ms))` = a time, `None` = not understood.
fn parse_poll_start(text: &str) -> Option<Option<i64>> {
    match text.trim() {
        "now" => Some(None),
        "beginning" => Some(Some(0)),
        other => crate::time::parse_rfc3339(other).map(Some),
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The dotted key whose value starts at `offset`: serde's errors from the `toml` crate carry a
/// span but not the key path, and "wrong type" alone does not say which setting to fix.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    let line = &line[..line.find('\n').unwrap_or(line.len())];
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('#') || key.starts_with('[') {
        return None;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['));
    Some(match table {
        Some(header) => format!(
            "{}.{key}",
            header.trim_matches(|c| c == '[' || c == ']').trim()
        ),
        None => key.to_owned(),
    })
}

/// Converts a TOML table to JSON by an explicit walk: the `toml` crate's own serialisation
/// would turn datetimes into a private wrapper table, which plugins must never see.
fn table_to_json(table: &toml::Table) -> Result<serde_json::Value, String> {
    let mut map = serde_json::Map::new();
    for (key, value) in table {
        map.insert(
            key.clone(),
            value_to_json(value).map_err(|m| format!("key `{key}`: {m}"))?,
        );
    }
    Ok(serde_json::Value::Object(map))
}

fn value_to_json(value: &toml::Value) -> Result<serde_json::Value, String> {
    Ok(match value {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(x) => serde_json::Number::from_f64(*x)
            .map(serde_json::Value::Number)
            .ok_or_else(|| format!("{x} cannot be passed to a plugin (not a finite number)"))?,
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(value_to_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(t) => table_to_json(t)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/flatsync/config.toml"))
    }

    const GOOD: &str = r#"
[daemon]
state_dir = "state"

[webhook]
listen = "127.0.0.1:0"
token_env = "TOKEN"

[sinks.archive]
plugin = "csv-folder"
config = { dir = "/tmp/csv", when = 1979-05-27T07:32:00Z, ratio = 0.5 }

[[routes]]
topics = ["portalImportSubmitted", "job:ready"]
sinks = ["archive"]
"#;

    #[test]
    fn a_good_config_parses_with_defaults() {
        let config = parse(GOOD).expect("valid config");
        assert_eq!(
            config.daemon.state_dir,
            PathBuf::from("/etc/flatsync/state")
        );
        assert_eq!(config.fetch.pages_in_flight, 4);
        assert_eq!(config.flatfile.api_url, "https://platform.flatfile.com/api");
        let json: serde_json::Value =
            serde_json::from_str(&config.sinks["archive"].config_json).expect("json");
        assert_eq!(json["dir"], "/tmp/csv");
        assert_eq!(json["when"], "1979-05-27T07:32:00Z");
        assert_eq!(config.routes[0].sinks, vec!["archive".to_owned()]);
    }

    #[test]
    fn an_unknown_key_is_located() {
        let err = parse("[webhook]\nlisten = \"127.0.0.1:1\"\nport = 3\n").unwrap_err();
        assert_eq!(err.location, Some((3, 1)), "{err}");
        assert!(err.to_string().contains("unknown field `port`"), "{err}");
        assert!(
            err.to_string()
                .starts_with("/etc/flatsync/config.toml:3:1: "),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_type_is_located() {
        let err = parse("[fetch]\npages_in_flight = \"four\"\n").unwrap_err();
        assert_eq!(err.location.map(|l| l.0), Some(2), "{err}");
        assert!(err.message.contains("invalid type"), "{err}");
        assert_eq!(err.key.as_deref(), Some("fetch.pages_in_flight"), "{err}");
    }

    #[test]
    fn a_route_to_a_missing_sink_names_it() {
        let text = GOOD.replace(
            "sinks = [\"archive\"]",
            "sinks = [\"archive\", \"warehouse\"]",
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("routes[0].sinks"));
        assert!(
            err.message.contains("no sink is named `warehouse`"),
            "{err}"
        );
        let line = text
            .lines()
            .position(|l| l.contains("warehouse"))
            .expect("line")
            + 1;
        assert_eq!(err.location.map(|l| l.0), Some(line));
    }

    #[test]
    fn secrets_come_from_env_or_file_not_both() {
        let err =
            parse("[flatfile]\nsecret_key_env = \"A\"\nsecret_key_file = \"b\"\n").unwrap_err();
        assert!(err.message.contains("not several"), "{err}");
    }

    #[test]
    fn a_credential_is_read_from_the_credentials_directory() {
        let config = parse("[flatfile]\nsecret_key_credential = \"flatfile_secret_key\"\n")
            .expect("valid config");
        let source = config.flatfile.secret_key.expect("secret configured");
        assert_eq!(source.describe(), "systemd credential flatfile_secret_key");
        let err = parse("[webhook]\ntoken_credential = \"../token\"\n").unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("webhook.token_credential"),
            "{err}"
        );
    }

    #[test]
    fn webhook_credentials_parse_globally_and_per_environment() {
        let config = parse(
            "[webhook]\ntoken_env = \"T\"\npath_secret_file = \"path-secret\"\n\
             signing_secret_credential = \"whsec\"\nlegacy_jwt_secret_env = \"J\"\n\
             [environments.prod]\nid = \"us_env_1\"\nwebhook_token_env = \"PT\"\n\
             webhook_path_secret_env = \"PP\"\nwebhook_signing_secret_file = \"/s\"\n\
             legacy_jwt_secret_env = \"PJ\"\nlegacy_jwt_field = \"signed\"\n\
             [environments.test]\nid = \"us_env_2\"\n",
        )
        .expect("valid");
        let global = &config.webhook.as_ref().expect("[webhook]").auth;
        let describe = |s: &Option<SecretSource>| s.as_ref().map(SecretSource::describe);
        assert_eq!(
            describe(&global.token).as_deref(),
            Some("environment variable T")
        );
        assert_eq!(
            describe(&global.path_secret).as_deref(),
            Some("file /etc/flatsync/path-secret")
        );
        assert_eq!(
            describe(&global.signing_secret).as_deref(),
            Some("systemd credential whsec")
        );
        assert_eq!(global.legacy_jwt_field, "token", "the default field");
        let prod = &config.environments["prod"].webhook_auth;
        assert_eq!(
            describe(&prod.token).as_deref(),
            Some("environment variable PT")
        );
        assert_eq!(
            describe(&prod.path_secret).as_deref(),
            Some("environment variable PP")
        );
        assert_eq!(describe(&prod.signing_secret).as_deref(), Some("file /s"));
        assert_eq!(
            describe(&prod.legacy_jwt_secret).as_deref(),
            Some("environment variable PJ")
        );
        assert_eq!(prod.legacy_jwt_field, "signed");
        assert!(config.environments["test"].webhook_auth.is_empty());
        assert!(config.webhook_auth_configured());
        assert!(
            !parse("[webhook]\n")
                .expect("valid")
                .webhook_auth_configured()
        );
    }

    #[test]
    fn webhook_credential_mistakes_are_named() {
        let err =
            parse("[webhook]\npath_secret_env = \"A\"\npath_secret_file = \"b\"\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("webhook.path_secret"), "{err}");
        let err = parse("[webhook]\nlegacy_jwt_field = \"token\"\n").unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("webhook.legacy_jwt_field"),
            "{err}"
        );
        assert!(err.message.contains("legacy_jwt_secret_env"), "{err}");
        assert_eq!(err.location.map(|l| l.0), Some(2), "{err}");
        let err = parse("[webhook]\nlegacy_jwt_secret_env = \"J\"\nlegacy_jwt_field = \" \"\n")
            .unwrap_err();
        assert!(err.message.contains("is empty"), "{err}");
        let err = parse("[environments.prod]\nid = \"us_env_1\"\nwebhook_token_env = \"T\"\n")
            .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("environments.prod"), "{err}");
        assert!(err.message.contains("no [webhook] section"), "{err}");
        let err = parse(
            "[webhook]\n[environments.prod]\nid = \"x\"\nwebhook_signing_secret_credential = \"a/b\"\n",
        )
        .unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("environments.prod.webhook_signing_secret_credential"),
            "{err}"
        );
        let err = parse("[webhook]\nsigning_secret = \"whsec_inline\"\n").unwrap_err();
        assert!(
            err.message.contains("unknown field `signing_secret`"),
            "{err}"
        );
    }

    #[test]
    fn the_admin_listener_defaults_to_loopback() {
        let config = parse("[admin]\n").expect("valid config");
        assert_eq!(
            config.admin.map(|a| a.listen.to_string()),
            Some("127.0.0.1:9187".to_owned())
        );
        let err = parse("[admin]\nlisten = \"nowhere\"\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("admin.listen"), "{err}");
    }

    #[test]
    fn listener_limits_have_safe_defaults_and_name_a_bad_value() {
        let config = parse("[webhook]\n[admin]\n").expect("valid config");
        let webhook = config.webhook.expect("[webhook]");
        assert_eq!(webhook.limits, ListenerLimits::WEBHOOK_DEFAULTS);
        assert_eq!(webhook.limits.header_timeout, Duration::from_secs(10));
        assert_eq!(webhook.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(webhook.limits.max_connections, 1024);
        assert_eq!(webhook.limits.max_header_bytes, 16384);
        assert_eq!(webhook.body_timeout, Duration::from_secs(30));
        let admin = config.admin.expect("[admin]");
        assert_eq!(admin.limits.max_connections, 64);
        assert_eq!(admin.limits.header_timeout, Duration::from_secs(10));

        let config = parse(
            "[webhook]\nheader_timeout_secs = 2\nbody_timeout_secs = 3\nidle_timeout_secs = 4\n\
             max_connections = 5\nmax_header_bytes = 2048\n\
             [admin]\nheader_timeout_secs = 6\nidle_timeout_secs = 7\nmax_connections = 8\n\
             max_header_bytes = 4096\n",
        )
        .expect("valid config");
        let webhook = config.webhook.expect("[webhook]");
        assert_eq!(
            (webhook.limits, webhook.body_timeout),
            (
                ListenerLimits {
                    header_timeout: Duration::from_secs(2),
                    idle_timeout: Duration::from_secs(4),
                    max_connections: 5,
                    max_header_bytes: 2048,
                },
                Duration::from_secs(3)
            )
        );
        assert_eq!(
            config.admin.expect("[admin]").limits,
            ListenerLimits {
                header_timeout: Duration::from_secs(6),
                idle_timeout: Duration::from_secs(7),
                max_connections: 8,
                max_header_bytes: 4096,
            }
        );

        for (text, key, location) in [
            (
                "[webhook]\nheader_timeout_secs = 0\n",
                "webhook.header_timeout_secs",
                (2, 23),
            ),
            (
                "[webhook]\nbody_timeout_secs = 0\n",
                "webhook.body_timeout_secs",
                (2, 21),
            ),
            (
                "[webhook]\nidle_timeout_secs = 9000\n",
                "webhook.idle_timeout_secs",
                (2, 21),
            ),
            (
                "[webhook]\nmax_connections = 0\n",
                "webhook.max_connections",
                (2, 19),
            ),
            (
                "[webhook]\nmax_header_bytes = 100\n",
                "webhook.max_header_bytes",
                (2, 20),
            ),
            (
                "[admin]\nmax_connections = 100000\n",
                "admin.max_connections",
                (2, 19),
            ),
            (
                "[admin]\nheader_timeout_secs = 0\n",
                "admin.header_timeout_secs",
                (2, 23),
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{err}");
            assert_eq!(err.location, Some(location), "{err}");
            assert!(err.to_string().contains("out of range"), "{err}");
        }
        // The admin endpoints read no body, so a body timeout there would do nothing.
        let err = parse("[admin]\nbody_timeout_secs = 5\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown field `body_timeout_secs`"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_listen_address_is_located() {
        let err = parse("[webhook]\nlisten = \"localhost\"\n").unwrap_err();
        assert_eq!(err.location, Some((2, 10)), "{err}");
    }

    #[test]
    fn environments_poll_with_their_own_key_and_name_their_mistakes() {
        let config = parse(
            "[environments.prod]\nid = \"us_env_1\"\nsecret_key_env = \"K\"\npoll = true\npoll_start = \"2026-01-01T00:00:00Z\"\n\
             [environments.test]\nid = \"us_env_2\"\n",
        )
        .expect("valid");
        let poll = config.environments["prod"].poll.clone().expect("polls");
        assert_eq!(poll.page_size, 100);
        assert_eq!(poll.start_ms, Some(1_767_225_600_000));
        assert!(config.environments["test"].poll.is_none());
        assert_eq!(config.environment_named_by_id("us_env_2"), Some("test"));

        let err =
            parse("[environments.a]\nid = \"x\"\n[environments.b]\nid = \"x\"\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("environments.b.id"), "{err}");
        assert!(err.message.contains("environment `a`"), "{err}");
        let err = parse("[environments.a]\nid = \"x\"\npoll = true\n").unwrap_err();
        assert!(err.message.contains("secret key"), "{err}");
        let err = parse("[environments.a]\nid = \"x\"\npoll_page_size = 5\n").unwrap_err();
        assert!(err.message.contains("poll = true"), "{err}");
        let err = parse(
            "[flatfile]\nsecret_key_env = \"K\"\n[environments.a]\nid = \"x\"\npoll = true\npoll_start = \"yesterday\"\n",
        )
        .unwrap_err();
        assert_eq!(err.location.map(|l| l.0), Some(6), "{err}");
    }

    #[test]
    fn routes_name_unknown_environments_and_bad_filters() {
        let base = "[sinks.s]\nplugin = \"csv-folder\"\n[environments.prod]\nid = \"us_env_1\"\n";
        let err = parse(&format!(
            "{base}[[routes]]\ntopics = [\"*\"]\nsinks = [\"s\"]\nenvironments = [\"staging\"]\n"
        ))
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("routes[0].environments"), "{err}");
        assert!(err.message.contains("defined: prod"), "{err}");
        let err = parse(&format!(
            "{base}[[routes]]\ntopics = [\"*\"]\nsinks = [\"s\"]\nfilter = {{ job = {{ a = 1 }} }}\n"
        ))
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("routes[0].filter"), "{err}");
        assert!(err.message.contains("`job`"), "{err}");
        let config = parse(&format!(
            "{base}[[routes]]\ntopics = [\"records:*\"]\nsinks = [\"s\"]\nsnapshot = true\nfilter = {{ sheetSlug = \"contacts\" }}\n"
        ))
        .expect("valid");
        assert!(config.routes[0].snapshot);
        assert!(!config.routes[0].filter.is_empty());
        assert_eq!(config.routes[0].unnamed_records, UnnamedRecords::Snapshot);
        let err = parse(&format!(
            "{base}[[routes]]\ntopics = [\"records:*\"]\nsinks = [\"s\"]\nunnamed_records = \"maybe\"\n"
        ))
        .unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("routes[0].unnamed_records"),
            "{err}"
        );
        assert_eq!(err.location.map(|l| l.0), Some(8), "{err}");
        let config = parse(&format!(
            "{base}[[routes]]\ntopics = [\"records:*\"]\nsinks = [\"s\"]\nunnamed_records = \"fail\"\n"
        ))
        .expect("valid");
        assert_eq!(config.routes[0].unnamed_records, UnnamedRecords::Fail);
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.example.toml");
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.sinks.len(), 3);
        assert_eq!(config.environments.len(), 2);
        assert!(config.environments["production"].poll.is_some());
        assert!(config.routes.iter().any(|r| !r.filter.is_empty()));
        assert_eq!(
            config.routes[0].sinks,
            vec!["archive".to_owned(), "warehouse".to_owned()]
        );
        assert!(config.webhook.is_some_and(|w| w.auth.token.is_some()));
    }

    #[test]
    fn sink_retries_default_to_ten_calls_up_to_30_s_apart_and_can_be_lowered() {
        let config = parse(GOOD).expect("valid config");
        assert_eq!(config.daemon.sink_retry_attempts, 10);
        assert_eq!(
            config.daemon.sink_retry_backoff_max,
            Duration::from_secs(30)
        );
        let text = GOOD.replace(
            "state_dir = \"state\"",
            "state_dir = \"state\"\nsink_retry_attempts = 3\nsink_retry_backoff_max_ms = 50",
        );
        let config = parse(&text).expect("valid config");
        assert_eq!(config.daemon.sink_retry_attempts, 3);
        assert_eq!(
            config.daemon.sink_retry_backoff_max,
            Duration::from_millis(50)
        );
        let err = parse(&GOOD.replace(
            "state_dir = \"state\"",
            "state_dir = \"state\"\nsink_retry_attempts = 0",
        ))
        .unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("daemon.sink_retry_attempts"),
            "{err}"
        );
        assert!(err.message.contains("at least 1"), "{err}");
    }

    #[test]
    fn non_finite_floats_are_refused_for_plugins() {
        let err = parse("[sinks.a]\nplugin = \"x\"\nconfig = { v = nan }\n").unwrap_err();
        assert!(err.message.contains("not a finite number"), "{err}");
    }
}
