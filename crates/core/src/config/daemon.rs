//! `[daemon]`: the state folder, plugins, concurrency, checkpoints, sink call limits and the
//! ready file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Parser, SecretSource};
use crate::state::StateLocation;
use crate::state::sql::PgTarget;

/// `[daemon]`.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Directory of the state database (SQLite, the default).
    pub state_dir: PathBuf,
    /// A PostgreSQL state database instead (`state_url`, `state_url_env`...), which several
    /// daemons can share; `None`: the SQLite file in `state_dir`.
    pub state_postgres: Option<PostgresState>,
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
    /// Where the daemon writes the JSON of its start line once it is ready (bound addresses,
    /// pid); removed when it stops cleanly. `None`: no file.
    pub ready_file: Option<PathBuf>,
}

/// Where a PostgreSQL state database is and how flatsync proves who it is.
#[derive(Clone, Debug)]
pub struct PostgresState {
    /// The URL: written in the config (without a password) or read from a secret.
    pub url: StateUrl,
    /// The password, when it is not in a secret URL.
    pub password: Option<SecretSource>,
    /// How long the database keeps a silent daemon's session, and with it the active role
    /// (`state_lease_secs`): the longest a paused or cut-off daemon keeps a standby waiting.
    pub lease: Duration,
}

/// `state_url`, or the secret holding the whole URL (`state_url_env`, `_file`, `_credential`).
#[derive(Clone, Debug)]
pub enum StateUrl {
    /// Written in the config file; it holds no password.
    Inline(String),
    /// Read at start from a secret, password included.
    Secret(SecretSource),
}

impl PostgresState {
    /// Where it is, for messages and for telling whether a reload changed it: the inline URL
    /// (which holds no password) or the secrets' sources, never a secret.
    pub fn describe(&self) -> String {
        let url = match &self.url {
            StateUrl::Inline(url) => url.clone(),
            StateUrl::Secret(source) => format!("the URL in {}", source.describe()),
        };
        let url = match &self.password {
            Some(source) => format!("{url} with the password in {}", source.describe()),
            None => url,
        };
        format!("{url}, lease {} s", self.lease.as_secs())
    }

    /// Reads the secrets and makes the connection settings. The error names the key or the
    /// secret's source, never the secret.
    pub(crate) fn resolve(&self) -> Result<StateLocation, String> {
        let url = match &self.url {
            StateUrl::Inline(url) => url.clone(),
            StateUrl::Secret(source) => read(source, "daemon.state_url")?,
        };
        let mut target = PgTarget::parse(&url).map_err(|e| format!("daemon.state_url: {e}"))?;
        if let Some(source) = &self.password {
            target = target.with_password(read(source, "daemon.state_password")?.as_bytes());
        }
        Ok(StateLocation::Postgres(Box::new(
            target.with_lease(self.lease),
        )))
    }
}

fn read(source: &SecretSource, key: &str) -> Result<String, String> {
    match source.read() {
        Ok(Some(secret)) => Ok(secret.expose().to_owned()),
        Ok(None) => Err(format!("{key}: {} is not set or empty", source.describe())),
        Err(e) => Err(format!("{key}: {e}")),
    }
}

impl DaemonConfig {
    /// Where the state database is, with its secrets read.
    pub(crate) fn state_location(&self) -> Result<StateLocation, String> {
        match &self.state_postgres {
            None => Ok(StateLocation::Dir(self.state_dir.clone())),
            Some(pg) => pg.resolve(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    state_dir: Option<Spanned<PathBuf>>,
    state_url: Option<Spanned<String>>,
    state_url_env: Option<String>,
    state_url_file: Option<PathBuf>,
    state_url_credential: Option<String>,
    state_password_env: Option<String>,
    state_password_file: Option<PathBuf>,
    state_password_credential: Option<String>,
    state_lease_secs: Option<Spanned<u64>>,
    plugin_dir: Option<PathBuf>,
    max_concurrent_events: Option<Spanned<usize>>,
    checkpoint_interval_ms: Option<u64>,
    checkpoint_batches: Option<Spanned<u64>>,
    sink_call_timeout_secs: Option<u64>,
    sink_retry_attempts: Option<Spanned<u32>>,
    sink_retry_backoff_max_ms: Option<u64>,
    drain_timeout_secs: Option<u64>,
    progress_interval_secs: Option<Spanned<u64>>,
    ready_file: Option<Spanned<PathBuf>>,
}

pub(super) fn parse(mut raw: RawDaemon, p: &Parser<'_>) -> Result<DaemonConfig, ConfigError> {
    let state_postgres = postgres_state(&mut raw, p)?;
    Ok(DaemonConfig {
        state_dir: p.absolute(
            raw.state_dir
                .map(Spanned::into_inner)
                .unwrap_or_else(|| PathBuf::from("/var/lib/flatsync")),
        ),
        state_postgres,
        plugin_dir: raw.plugin_dir.map(|d| p.absolute(d)),
        max_concurrent_events: p.positive_usize(
            raw.max_concurrent_events,
            "daemon.max_concurrent_events",
            2,
        )?,
        checkpoint_interval: Duration::from_millis(raw.checkpoint_interval_ms.unwrap_or(1000)),
        checkpoint_batches: p.positive(raw.checkpoint_batches, "daemon.checkpoint_batches", 64)?,
        sink_call_timeout: Duration::from_secs(raw.sink_call_timeout_secs.unwrap_or(120)),
        sink_retry_attempts: p.positive_u32(
            raw.sink_retry_attempts,
            "daemon.sink_retry_attempts",
            10,
        )?,
        sink_retry_backoff_max: Duration::from_millis(
            raw.sink_retry_backoff_max_ms.unwrap_or(30_000),
        ),
        drain_timeout: Duration::from_secs(raw.drain_timeout_secs.unwrap_or(30)),
        progress_interval: Duration::from_secs(p.positive(
            raw.progress_interval_secs,
            "daemon.progress_interval_secs",
            10,
        )?),
        ready_file: raw.ready_file.map(|f| ready_file(f, p)).transpose()?,
    })
}

/// `state_url` and its secrets: one URL (inline without a password, or a secret), a password
/// only beside an inline URL, and not with `state_dir`.
fn postgres_state(
    raw: &mut RawDaemon,
    p: &Parser<'_>,
) -> Result<Option<PostgresState>, ConfigError> {
    let secret_url = p.secret(
        raw.state_url_env.take(),
        raw.state_url_file.take(),
        raw.state_url_credential.take(),
        "daemon.state_url",
    )?;
    let password = p.secret(
        raw.state_password_env.take(),
        raw.state_password_file.take(),
        raw.state_password_credential.take(),
        "daemon.state_password",
    )?;
    let url = match (raw.state_url.take(), secret_url) {
        (Some(_), Some(_)) => {
            return Err(p.locate(
                None,
                Some("daemon.state_url"),
                "set `state_url` or one of `state_url_env`, `state_url_file`, \
                 `state_url_credential`, not both"
                    .to_owned(),
            ));
        }
        (Some(inline), None) => {
            let span = inline.span();
            let text = inline.into_inner();
            let target = PgTarget::parse(&text)
                .map_err(|e| p.locate(Some(span.clone()), Some("daemon.state_url"), e))?;
            if target.has_password() {
                return Err(p.locate(
                    Some(span),
                    Some("daemon.state_url"),
                    "the URL holds a password; keep it out of the config file: \
                     `state_password_env`, `_file` or `_credential`, or the whole URL in \
                     `state_url_env`, `_file` or `_credential`"
                        .to_owned(),
                ));
            }
            StateUrl::Inline(text)
        }
        (None, Some(source)) => StateUrl::Secret(source),
        (None, None) => {
            if password.is_some() {
                return Err(p.locate(
                    None,
                    Some("daemon.state_password"),
                    "a state password without `state_url`: the SQLite state needs none".to_owned(),
                ));
            }
            return Ok(None);
        }
    };
    if let Some(dir) = &raw.state_dir {
        return Err(p.locate(
            Some(dir.span()),
            Some("daemon.state_dir"),
            "the state is in PostgreSQL (`state_url`); remove `state_dir` or `state_url`"
                .to_owned(),
        ));
    }
    let lease = lease(raw.state_lease_secs.take(), p)?;
    if password.is_some() && matches!(url, StateUrl::Secret(_)) {
        return Err(p.locate(
            None,
            Some("daemon.state_password"),
            "the password goes in the secret URL or beside an inline `state_url`, not both"
                .to_owned(),
        ));
    }
    Ok(Some(PostgresState {
        url,
        password,
        lease,
    }))
}

/// `state_lease_secs`: at least 3 s, since the daemon speaks every third of it.
fn lease(value: Option<Spanned<u64>>, p: &Parser<'_>) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(crate::state::sql::DEFAULT_LEASE),
        Some(secs) if *secs.get_ref() >= 3 => Ok(Duration::from_secs(*secs.get_ref())),
        Some(secs) => Err(p.locate(
            Some(secs.span()),
            Some("daemon.state_lease_secs"),
            "must be at least 3: the daemon renews its session every third of it".to_owned(),
        )),
    }
}

/// `ready_file`, resolved like `state_dir`; it must name a file, since it is replaced by a
/// rename in its folder.
fn ready_file(value: Spanned<PathBuf>, p: &Parser<'_>) -> Result<PathBuf, ConfigError> {
    let span = value.span();
    let path = value.into_inner();
    let names_a_file =
        path.file_name().is_some() && !path.as_os_str().to_string_lossy().ends_with('/');
    if !names_a_file {
        return Err(p.locate(
            Some(span),
            Some("daemon.ready_file"),
            format!(
                "`{}` does not name a file (say \"/run/flatsync/ready.json\")",
                path.display()
            ),
        ));
    }
    Ok(p.absolute(path))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(text, Path::new("/etc/flatsync/config.toml"))
    }

    #[test]
    fn the_ready_file_is_optional_and_resolved_like_the_state_dir() {
        let config = parse("[daemon]\n").expect("valid config");
        assert_eq!(config.daemon.ready_file, None, "no ready file unless asked");
        let config =
            parse("[daemon]\nready_file = \"/run/flatsync/ready.json\"\n").expect("valid config");
        assert_eq!(
            config.daemon.ready_file,
            Some(PathBuf::from("/run/flatsync/ready.json"))
        );
        let config = parse("[daemon]\nstate_dir = \"state\"\nready_file = \"run/ready.json\"\n")
            .expect("valid config");
        assert_eq!(
            config.daemon.ready_file,
            Some(PathBuf::from("/etc/flatsync/run/ready.json")),
            "a relative ready_file is read from the config file's folder, as state_dir is"
        );
        assert_eq!(
            config.daemon.state_dir,
            PathBuf::from("/etc/flatsync/state")
        );
    }

    #[test]
    fn a_ready_file_that_names_no_file_is_refused_where_it_is_written() {
        for bad in ["", "/run/flatsync/", "..", "."] {
            let err = parse(&format!("[daemon]\nready_file = \"{bad}\"\n"))
                .expect_err("a folder is not a ready file");
            assert_eq!(
                err.key.as_deref(),
                Some("daemon.ready_file"),
                "`{bad}`: {err}"
            );
            assert_eq!(err.location, Some((2, 14)), "`{bad}`: {err}");
            assert!(
                err.message.contains("does not name a file"),
                "`{bad}`: {err}"
            );
        }
    }

    #[test]
    fn a_postgres_state_url_is_taken_without_a_password_and_its_secrets_by_reference() {
        let config = parse(
            "[daemon]\nstate_url = \"postgres://flatsync@db.internal/flatsync\"\n\
             state_password_env = \"FLATSYNC_TEST_NO_SUCH_PASSWORD\"\n",
        )
        .expect("valid config");
        let pg = config.daemon.state_postgres.expect("postgres state");
        assert_eq!(
            pg.describe(),
            "postgres://flatsync@db.internal/flatsync with the password in environment \
             variable FLATSYNC_TEST_NO_SUCH_PASSWORD, lease 15 s"
        );
        let err = pg.resolve().expect_err("the variable is not set");
        assert!(
            err.contains("daemon.state_password") && err.contains("not set"),
            "{err}"
        );
        let config = parse("[daemon]\nstate_url_file = \"/etc/flatsync/state-url\"\n")
            .expect("valid config");
        assert!(matches!(
            config.daemon.state_postgres.expect("postgres state").url,
            super::StateUrl::Secret(crate::config::SecretSource::File(_))
        ));
        assert!(
            parse("[daemon]\n")
                .expect("valid config")
                .daemon
                .state_postgres
                .is_none(),
            "SQLite stays the default"
        );
    }

    #[test]
    fn a_password_in_the_config_file_or_two_places_for_the_state_are_refused_where_written() {
        let cases = [
            (
                "[daemon]\nstate_url = \"postgres://app:hunter2@db/flatsync\"\n",
                "daemon.state_url",
                Some((2, 13)),
                "holds a password",
            ),
            (
                "[daemon]\nstate_url = \"postgres://app@db:notaport/flatsync\"\n",
                "daemon.state_url",
                Some((2, 13)),
                "not a PostgreSQL connection URL",
            ),
            (
                "[daemon]\nstate_dir = \"/var/lib/x\"\nstate_url = \"postgres://app@db/f\"\n",
                "daemon.state_dir",
                Some((2, 13)),
                "remove `state_dir` or `state_url`",
            ),
            (
                "[daemon]\nstate_url = \"postgres://app@db/f\"\nstate_url_env = \"U\"\n",
                "daemon.state_url",
                None,
                "not both",
            ),
            (
                "[daemon]\nstate_password_env = \"P\"\n",
                "daemon.state_password",
                None,
                "without `state_url`",
            ),
        ];
        for (text, key, location, message) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
            if location.is_some() {
                assert_eq!(err.location, location, "{text}: {err}");
            }
            assert!(err.message.contains(message), "{text}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }
}
