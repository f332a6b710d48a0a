//! The TOML configuration: parsing, validation with file:line:column errors, and secrets.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use flatsync_flatfile::Secret;
use serde::Deserialize;
use toml::Spanned;

mod daemon;
mod environments;
mod events;
pub mod filter;
mod flatfile;
mod listener;
mod routes;
mod sinks;
mod webhook;

pub use daemon::DaemonConfig;
pub use environments::{EnvironmentConfig, PollConfig};
pub use events::{EventStreams, EventsConfig};
pub use flatfile::{FetchConfig, FlatfileConfig};
pub use listener::{AdminConfig, ListenerLimits};
pub use routes::{RouteConfig, UnnamedRecords};
pub use sinks::SinkConfig;
pub use webhook::{DEFAULT_BODY_TIMEOUT, DEFAULT_LEGACY_JWT_FIELD, SenderAuth, WebhookConfig};

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
    /// `[events]`.
    pub events: EventsConfig,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: daemon::RawDaemon,
    #[serde(default)]
    flatfile: flatfile::RawFlatfile,
    webhook: Option<webhook::RawWebhook>,
    admin: Option<listener::RawAdmin>,
    #[serde(default)]
    fetch: flatfile::RawFetch,
    #[serde(default)]
    environments: BTreeMap<String, environments::RawEnvironment>,
    #[serde(default)]
    sinks: BTreeMap<String, sinks::RawSink>,
    #[serde(default)]
    routes: Vec<routes::RawRoute>,
    #[serde(default)]
    events: events::RawEvents,
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
    ///
    /// Sections are checked in this order, so the first error reported stays the same: later
    /// sections refer to earlier ones (environments to `[flatfile]` and `[webhook]`, routes to
    /// sinks and environments).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let p = Parser { text, path };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e.span().and_then(|span| key_at(text, span.start));
            p.locate(e.span(), key.as_deref(), e.message().trim().to_owned())
        })?;
        let daemon = daemon::parse(raw.daemon, &p)?;
        let flatfile = flatfile::parse(raw.flatfile, &p)?;
        let webhook = raw.webhook.map(|w| webhook::parse(w, &p)).transpose()?;
        let admin = raw
            .admin
            .map(|a| listener::parse_admin(a, &p))
            .transpose()?;
        let fetch = flatfile::parse_fetch(raw.fetch, &p)?;
        let environments = environments::parse(raw.environments, &flatfile, webhook.is_some(), &p)?;
        let sinks = sinks::parse(raw.sinks, &p)?;
        let routes = routes::parse(raw.routes, &sinks, &environments, &p)?;
        let events = events::parse(raw.events, &p)?;
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
            events,
        })
    }
}

/// What every section's checks share: the text and file errors point into, and the folder
/// relative paths are resolved against.
struct Parser<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Parser<'_> {
    /// An error located at `span`, for `key`.
    fn locate(
        &self,
        span: Option<Range<usize>>,
        key: Option<&str>,
        message: String,
    ) -> ConfigError {
        ConfigError {
            path: self.path.to_owned(),
            location: span.map(|s| line_column(self.text, s.start)),
            key: key.map(str::to_owned),
            message,
        }
    }

    /// `p` resolved against the config file's folder.
    fn absolute(&self, p: PathBuf) -> PathBuf {
        if p.is_relative() {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        } else {
            p
        }
    }

    /// `value`, or `default` when unset; an error naming `key` when it is 0.
    fn positive(
        &self,
        value: Option<Spanned<u64>>,
        key: &str,
        default: u64,
    ) -> Result<u64, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) if *v.get_ref() == 0 => {
                Err(self.locate(Some(v.span()), Some(key), "must be at least 1".to_owned()))
            }
            Some(v) => Ok(v.into_inner()),
        }
    }

    fn positive_usize(
        &self,
        value: Option<Spanned<usize>>,
        key: &str,
        default: usize,
    ) -> Result<usize, ConfigError> {
        self.positive(
            value.map(|v| Spanned::new(v.span(), *v.get_ref() as u64)),
            key,
            default as u64,
        )
        .map(|v| v as usize)
    }

    fn positive_u32(
        &self,
        value: Option<Spanned<u32>>,
        key: &str,
        default: u32,
    ) -> Result<u32, ConfigError> {
        self.positive(
            value.map(|v| Spanned::new(v.span(), u64::from(*v.get_ref()))),
            key,
            u64::from(default),
        )
        .map(|v| v as u32)
    }

    /// `value`, or `default` when unset; an error naming `key` when outside `min..=max`.
    fn within(
        &self,
        value: Option<Spanned<u64>>,
        key: &str,
        default: u64,
        (min, max): (u64, u64),
    ) -> Result<u64, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) if (min..=max).contains(v.get_ref()) => Ok(v.into_inner()),
            Some(v) => Err(self.locate(
                Some(v.span()),
                Some(key),
                format!("{} is out of range: use {min} to {max}", v.get_ref()),
            )),
        }
    }

    /// The secret named by one of `<key>_env`, `<key>_file` and `<key>_credential`.
    fn secret(
        &self,
        env: Option<String>,
        file: Option<PathBuf>,
        credential: Option<String>,
        key: &str,
    ) -> Result<Option<SecretSource>, ConfigError> {
        match (env, file, credential) {
            (Some(env), None, None) => Ok(Some(SecretSource::Env(env))),
            (None, Some(file), None) => Ok(Some(SecretSource::File(self.absolute(file)))),
            (None, None, Some(name)) => {
                if name.is_empty() || name.contains('/') {
                    Err(self.locate(
                        None,
                        Some(&format!("{key}_credential")),
                        format!("`{name}` is not a credential name (a file name, no `/`)"),
                    ))
                } else {
                    Ok(Some(SecretSource::Credential(name)))
                }
            }
            (None, None, None) => Ok(None),
            _ => Err(self.locate(
                None,
                Some(key),
                format!("set one of `{key}_env`, `{key}_file` or `{key}_credential`, not several"),
            )),
        }
    }

    fn address(&self, value: Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        value.get_ref().parse::<SocketAddr>().map_err(|_| {
            self.locate(
                Some(value.span()),
                Some(key),
                format!(
                    "`{}` is not an address like 127.0.0.1:8787",
                    value.get_ref()
                ),
            )
        })
    }

    /// An http(s) URL without trailing `/`, or `default` when unset.
    fn url(
        &self,
        value: Option<Spanned<String>>,
        key: &str,
        default: &str,
    ) -> Result<String, ConfigError> {
        match value {
            None => Ok(default.to_owned()),
            Some(v) => {
                let s = v.get_ref().trim_end_matches('/');
                if s.starts_with("http://") || s.starts_with("https://") {
                    Ok(s.to_owned())
                } else {
                    Err(self.locate(
                        Some(v.span()),
                        Some(key),
                        format!("`{}` is not an http(s) URL", v.get_ref()),
                    ))
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn the_read_ahead_budget_and_window_default_and_name_bad_values() {
        let config = parse(GOOD).expect("valid config");
        assert_eq!(config.fetch.read_ahead_bytes, 10 << 20);
        assert!(!config.fetch.adaptive_pages_in_flight);
        assert_eq!(config.fetch.max_pages_in_flight, 16);
        for (value, bytes) in [
            ("\"16MiB\"", 16 << 20),
            ("\"512 KiB\"", 512 << 10),
            ("\"1GiB\"", 1 << 30),
            ("1048576", 1 << 20),
            ("\"65536\"", 65536),
        ] {
            let text = format!("[fetch]\nread_ahead_bytes = {value}\n");
            let config = parse(&text).unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(config.fetch.read_ahead_bytes, bytes, "{value}");
        }
        for (value, says) in [
            ("\"16MB\"", "is not a size"),
            ("\"lots\"", "is not a size"),
            ("\"\"", "is not a size"),
            ("1000", "out of range"),
            ("\"32GiB\"", "out of range"),
        ] {
            let text = format!("[fetch]\npages_in_flight = 2\nread_ahead_bytes = {value}\n");
            let err = parse(&text).expect_err(value);
            assert_eq!(err.key.as_deref(), Some("fetch.read_ahead_bytes"), "{err}");
            assert_eq!(err.location.map(|l| l.0), Some(3), "{err}");
            assert!(err.message.contains(says), "{value}: {err}");
        }
        let text = "[fetch]\npages_in_flight = 8\nadaptive_pages_in_flight = true\n";
        let config = parse(text).expect("valid");
        assert!(config.fetch.adaptive_pages_in_flight);
        assert_eq!(
            config.fetch.max_pages_in_flight, 32,
            "four times the start by default"
        );
        let err = parse("[fetch]\npages_in_flight = 8\nmax_pages_in_flight = 4\n")
            .expect_err("a maximum below the start");
        assert_eq!(
            err.key.as_deref(),
            Some("fetch.max_pages_in_flight"),
            "{err}"
        );
        assert!(err.message.contains("use 8 to 256"), "{err}");
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
