//! The sink's config: where the server is (the URL and its password never shown), the schema
//! and the deletion mode.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use flatsync_plugin_sdk::{ConfigReader, SinkError, serde_json};

/// Reads an environment variable; the tests pass their own.
pub(crate) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// PostgreSQL keeps 63 bytes of an identifier and silently cuts the rest.
pub(crate) const MAX_IDENTIFIER: usize = 63;

/// The keys that can say where the server is; exactly one must be set.
const URL_KEYS: &str = "`url`, `url_env`, `url_file` or `url_credential`";

/// What a deletion batch does to the rows of its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deletions {
    /// Remove the rows.
    Delete,
    /// Keep the rows and set their `_deleted_at`.
    Mark,
}

/// A parsed config.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// How to connect, password included; never printed (its `Debug` hides the password).
    pub(crate) connect: postgres::Config,
    /// The URL as errors and logs show it: `postgres://user:***@host/db`.
    pub(crate) shown_url: String,
    pub(crate) schema: String,
    pub(crate) deletions: Deletions,
}

impl Config {
    pub(crate) fn parse(value: serde_json::Value, env: EnvLookup<'_>) -> Result<Self, SinkError> {
        let mut reader = ConfigReader::new(value)?;
        let url: Option<String> = reader.optional("url")?;
        let url_env: Option<String> = reader.optional("url_env")?;
        let url_file: Option<PathBuf> = reader.optional("url_file")?;
        let url_credential: Option<String> = reader.optional("url_credential")?;
        let schema: Option<String> = reader.optional("schema")?;
        let deletions: Option<String> = reader.optional("deletions")?;
        let connect_timeout_ms: Option<u32> = reader.optional("connect_timeout_ms")?;
        reader.finish()?;

        let (text, source, inline) = url_text(
            UrlKeys {
                url,
                url_env,
                url_file,
                url_credential,
            },
            env,
        )?;
        let text = text.trim();
        let (mut connect, shown_url) = parse_url(text, &source)?;
        if inline && connect.get_password().is_some() {
            return Err(SinkError::fatal(
                "config key `url` holds a password; config files are often readable by more \
                 people than the database should be. Put the whole URL in an environment \
                 variable (`url_env`), a private file (`url_file`) or a systemd credential \
                 (`url_credential`) instead",
            ));
        }

        let schema = schema.unwrap_or_else(|| "public".to_owned());
        check_identifier(&schema)
            .map_err(|problem| SinkError::fatal(format!("config key `schema` {problem}")))?;
        let deletions = match deletions.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("delete") => Deletions::Delete,
            Some("mark") => Deletions::Mark,
            Some(other) => {
                return Err(SinkError::fatal(format!(
                    "config key `deletions` must be \"delete\" or \"mark\", got {other:?}"
                )));
            }
        };
        let connect_timeout_ms = connect_timeout_ms.unwrap_or(5000);
        if connect_timeout_ms == 0 {
            return Err(SinkError::fatal(
                "config key `connect_timeout_ms` must be at least 1",
            ));
        }
        connect.connect_timeout(Duration::from_millis(connect_timeout_ms.into()));
        if connect.get_application_name().is_none() {
            // So that pg_stat_activity shows whose sessions these are.
            connect.application_name("flatsync");
        }
        Ok(Self {
            connect,
            shown_url,
            schema,
            deletions,
        })
    }
}

/// Where the URL may come from: exactly one of these keys.
struct UrlKeys {
    url: Option<String>,
    url_env: Option<String>,
    url_file: Option<PathBuf>,
    url_credential: Option<String>,
}

/// The URL's text, where it came from (for messages), and whether it was written inline.
fn url_text(keys: UrlKeys, env: EnvLookup<'_>) -> Result<(String, String, bool), SinkError> {
    let UrlKeys {
        url,
        url_env,
        url_file,
        url_credential,
    } = keys;
    // These keys take a name, not a URL: a URL pasted here must not be quoted below.
    for (key, name) in [
        ("url_env", url_env.as_deref()),
        ("url_file", url_file.as_deref().and_then(Path::to_str)),
        ("url_credential", url_credential.as_deref()),
    ] {
        if name.is_some_and(|name| name.contains("://")) {
            return Err(SinkError::fatal(format!(
                "config key `{key}` holds a URL itself; it takes the name of where the URL \
                 is"
            )));
        }
    }
    let set: Vec<&str> = [
        ("`url`", url.is_some()),
        ("`url_env`", url_env.is_some()),
        ("`url_file`", url_file.is_some()),
        ("`url_credential`", url_credential.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, is_set)| is_set.then_some(key))
    .collect();
    if set.len() > 1 {
        return Err(SinkError::fatal(format!(
            "config keys {} are all set; set exactly one of {URL_KEYS}",
            set.join(" and ")
        )));
    }
    Ok(match (url, url_env, url_file, url_credential) {
        (Some(url), ..) => (url, "config key `url`".to_owned(), true),
        (_, Some(name), ..) => {
            let source = format!("config key `url_env` (variable {name})");
            let value = env(&name)
                .ok_or_else(|| SinkError::fatal(format!("{source}: the variable is not set")))?;
            let text = value
                .into_string()
                .map_err(|_| SinkError::fatal(format!("{source}: the value is not UTF-8")))?;
            (text, source, false)
        }
        (_, _, Some(path), _) => {
            let source = format!("config key `url_file` ({})", path.display());
            (read_url_file(&path, &source)?, source, false)
        }
        (.., Some(name)) => {
            let source = format!("config key `url_credential` ({name})");
            let path = credential_path(&name, &source, env)?;
            (read_url_file(&path, &source)?, source, false)
        }
        (None, None, None, None) => {
            return Err(SinkError::fatal(format!(
                "set one of the config keys {URL_KEYS} to say where the PostgreSQL server is"
            )));
        }
    })
}

/// Why `name` cannot be an identifier, if it cannot.
pub(crate) fn check_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.contains('\0') {
        return Err(format!("{name:?} contains a NUL character"));
    }
    if name.len() > MAX_IDENTIFIER {
        return Err(format!(
            "{name:?} is longer than PostgreSQL's {MAX_IDENTIFIER} bytes for a name"
        ));
    }
    Ok(())
}

/// A file in `$CREDENTIALS_DIRECTORY`, which systemd fills from `LoadCredential=`.
fn credential_path(name: &str, source: &str, env: EnvLookup<'_>) -> Result<PathBuf, SinkError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(SinkError::fatal(format!(
            "{source}: must be a plain file name inside $CREDENTIALS_DIRECTORY"
        )));
    }
    let dir = env("CREDENTIALS_DIRECTORY").ok_or_else(|| {
        SinkError::fatal(format!(
            "{source}: $CREDENTIALS_DIRECTORY is not set (give the service the credential with \
             LoadCredential= in its systemd unit)"
        ))
    })?;
    Ok(PathBuf::from(dir).join(name))
}

fn read_url_file(path: &Path, source: &str) -> Result<String, SinkError> {
    std::fs::read_to_string(path)
        .map_err(|error| SinkError::fatal(format!("{source}: cannot read: {error}")))
}

/// Parses a `postgres://` URL. Errors name `source` and never quote the URL.
fn parse_url(text: &str, source: &str) -> Result<(postgres::Config, String), SinkError> {
    if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        return Err(SinkError::fatal(format!(
            "{source}: the URL must start with postgres:// or postgresql://"
        )));
    }
    let shown = redact_url(text);
    if let Some(mode) = query_value(text, "sslmode")
        && !matches!(mode, "disable" | "prefer")
    {
        return Err(SinkError::fatal(format!(
            "{source}: sslmode={mode} is not supported yet: the postgres sink connects without \
             TLS. Use sslmode=disable (or prefer) on a trusted network, a Unix socket or an SSH \
             tunnel"
        )));
    }
    let connect = postgres::Config::from_str(text).map_err(|error| {
        let cause = std::error::Error::source(&error)
            .map(|cause| format!(": {cause}"))
            .unwrap_or_default();
        SinkError::fatal(format!("{source}: {shown} is not a valid URL{cause}"))
    })?;
    Ok((connect, shown))
}

/// The value of query parameter `key` in `url`, if present.
fn query_value<'u>(url: &'u str, key: &str) -> Option<&'u str> {
    let query = &url[url.find('?')? + 1..];
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == key).then_some(value)
    })
}

/// `url` with the password of its user info and any `password=` parameter replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |at| at + 3);
    let rest = &url[authority_start..];
    let authority_end = authority_start + rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &url[authority_start..authority_end];
    let mut shown = match authority.rfind('@') {
        Some(at) if authority[..at].contains(':') => {
            let user_end = authority_start + authority[..at].find(':').unwrap_or(at);
            format!(
                "{}:***{}",
                &url[..user_end],
                &url[authority_start + at..authority_end]
            )
        }
        _ => url[..authority_end].to_owned(),
    };
    let tail = &url[authority_end..];
    match tail.find('?') {
        None => shown.push_str(tail),
        Some(at) => {
            shown.push_str(&tail[..=at]);
            let pairs: Vec<String> = tail[at + 1..]
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => pair.to_owned(),
                })
                .collect();
            shown.push_str(&pairs.join("&"));
        }
    }
    shown
}
