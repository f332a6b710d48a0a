//! The sink's config, validated in full at `create` so that a mistake stops start-up with a
//! message naming the key at fault, and never the secret or header value behind it.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flatsync_plugin_sdk::serde_json::Value;
use flatsync_plugin_sdk::{ConfigReader, SinkError};
use standardwebhooks::Webhook;
use ureq::http::{HeaderName, HeaderValue, Uri};

/// The keys that can hold the signing secrets; exactly one must be set.
const SECRET_KEYS: [&str; 4] = ["secret_env", "secret_file", "secret_credential", "secrets"];

/// Headers the sink sets itself (or that would break the request's framing), so a config
/// cannot override them.
const RESERVED_HEADERS: [&str; 5] = [
    "content-type",
    "content-length",
    "host",
    "idempotency-key",
    "transfer-encoding",
];

/// The most a `write_batch` call may take. The host marks a sink stalled when one call runs
/// past `sink_call_timeout_secs` (120 s by default), and a stalled sink is stopped for good.
pub(crate) const MAX_RETRY_BUDGET_SECS: u64 = 100;

/// Standard Webhooks secrets are 24 to 64 random bytes.
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// How a request body is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// flatsync's own envelope: one object per part with the stream's coordinates and rows.
    Flatsync,
    /// The body Flatfile's webhook-egress plugin posts: `{"workbook":{..,"sheets":[..]}}`.
    FlatfileEgress,
}

/// Looks up an environment variable; injected so tests need not touch the process environment.
pub(crate) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// The validated config.
pub(crate) struct Config {
    /// The URL requests go to, as configured (it may carry a token in its query).
    pub(crate) url: String,
    /// The URL without userinfo and query, safe for logs and errors.
    pub(crate) url_display: String,
    pub(crate) batch_size: usize,
    pub(crate) timeout: Duration,
    /// Extra headers, names lower-cased. Values may be credentials: never print them.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) format: Format,
    pub(crate) signer: Signer,
    pub(crate) retry_initial: Duration,
    pub(crate) retry_max: Duration,
    pub(crate) retry_budget: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Config")
            .field("url", &self.url_display)
            .field("batch_size", &self.batch_size)
            .field("timeout", &self.timeout)
            .field("headers", &header_names)
            .field("format", &self.format)
            .field("signer", &self.signer)
            .field("retry_initial", &self.retry_initial)
            .field("retry_max", &self.retry_max)
            .field("retry_budget", &self.retry_budget)
            .finish()
    }
}

impl Config {
    /// Reads and checks every key of the sink's `[sinks.NAME.config]` table.
    pub(crate) fn parse(config: Value, env: EnvLookup<'_>) -> Result<Self, SinkError> {
        let mut reader = ConfigReader::new(config)?;
        // `url`, `headers` and `secrets` are read as raw JSON: a type error from serde would
        // quote the value, and these values can hold credentials.
        let url: Value = reader.required("url")?;
        let (url, url_display) = parse_url(url)?;
        let batch_size: u64 = reader.optional("batch_size")?.unwrap_or(500);
        if batch_size == 0 {
            return Err(SinkError::fatal(
                "config key `batch_size` must be at least 1",
            ));
        }
        let batch_size = usize::try_from(batch_size)
            .map_err(|_| SinkError::fatal("config key `batch_size` is too large"))?;
        let timeout_secs: u64 = reader.optional("timeout_secs")?.unwrap_or(30);
        if timeout_secs == 0 {
            return Err(SinkError::fatal(
                "config key `timeout_secs` must be at least 1",
            ));
        }
        let headers = match reader.optional::<Value>("headers")? {
            None => Vec::new(),
            Some(value) => parse_headers(value)?,
        };
        let format = match reader.optional::<String>("format")?.as_deref() {
            None | Some("flatsync") => Format::Flatsync,
            Some("flatfile-egress") => Format::FlatfileEgress,
            Some(other) => {
                return Err(SinkError::fatal(format!(
                    "config key `format`: unknown format {other:?} (use \"flatsync\" or \"flatfile-egress\")"
                )));
            }
        };
        let signer = Signer::from_config(&mut reader, env)?;
        let retry_initial_ms: u64 = reader.optional("retry_initial_ms")?.unwrap_or(500);
        if retry_initial_ms == 0 {
            return Err(SinkError::fatal(
                "config key `retry_initial_ms` must be at least 1",
            ));
        }
        let retry_max_ms: u64 = reader.optional("retry_max_ms")?.unwrap_or(30_000);
        if retry_max_ms < retry_initial_ms {
            return Err(SinkError::fatal(format!(
                "config key `retry_max_ms` ({retry_max_ms}) must not be below `retry_initial_ms` ({retry_initial_ms})"
            )));
        }
        let retry_budget_secs: u64 = reader.optional("retry_budget_secs")?.unwrap_or(60);
        if !(1..=MAX_RETRY_BUDGET_SECS).contains(&retry_budget_secs) {
            return Err(SinkError::fatal(format!(
                "config key `retry_budget_secs` must be 1 to {MAX_RETRY_BUDGET_SECS}, got \
                 {retry_budget_secs}: one write must end well before the daemon's \
                 `sink_call_timeout_secs` (120 s by default) or the sink is marked stalled"
            )));
        }
        reader.finish()?;
        Ok(Self {
            url,
            url_display,
            batch_size,
            timeout: Duration::from_secs(timeout_secs),
            headers,
            format,
            signer,
            retry_initial: Duration::from_millis(retry_initial_ms),
            retry_max: Duration::from_millis(retry_max_ms),
            retry_budget: Duration::from_secs(retry_budget_secs),
        })
    }
}

fn parse_url(value: Value) -> Result<(String, String), SinkError> {
    let Value::String(url) = value else {
        return Err(SinkError::fatal("config key `url` must be a string"));
    };
    let uri: Uri = url
        .parse()
        .map_err(|_| SinkError::fatal("config key `url` is not a valid URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(SinkError::fatal(
            "config key `url` must start with http:// or https://",
        ));
    }
    let Some(authority) = uri.authority() else {
        return Err(SinkError::fatal("config key `url` has no host"));
    };
    if authority.host().is_empty() {
        return Err(SinkError::fatal("config key `url` has no host"));
    }
    if authority.as_str().contains('@') {
        // The HTTP client would not turn them into an Authorization header.
        return Err(SinkError::fatal(
            "config key `url`: user:password in the URL is not supported; set an \
             `Authorization` entry in `headers` instead",
        ));
    }
    let display = redact_uri(&uri);
    Ok((url, display))
}

/// `scheme://host[:port]/path`: what may be printed of a URL (no userinfo, no query).
pub(crate) fn redact_uri(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri.host().unwrap_or("");
    let port = uri
        .port_u16()
        .map(|port| format!(":{port}"))
        .unwrap_or_default();
    format!("{scheme}://{host}{port}{}", uri.path())
}

fn parse_headers(value: Value) -> Result<Vec<(HeaderName, HeaderValue)>, SinkError> {
    let Value::Object(entries) = value else {
        return Err(SinkError::fatal(
            "config key `headers` must be a table of header names to string values",
        ));
    };
    let mut headers = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            SinkError::fatal(format!(
                "config key `headers`: {name:?} is not a valid header name"
            ))
        })?;
        let lower = header.as_str();
        if RESERVED_HEADERS.contains(&lower) || lower.starts_with("webhook-") {
            return Err(SinkError::fatal(format!(
                "config key `headers`: header `{name}` is set by the sink itself and cannot be configured"
            )));
        }
        let Value::String(text) = value else {
            return Err(SinkError::fatal(format!(
                "config key `headers`: the value of header `{name}` must be a string"
            )));
        };
        let value = HeaderValue::from_str(&text).map_err(|_| {
            SinkError::fatal(format!(
                "config key `headers`: the value of header `{name}` is not a valid header value"
            ))
        })?;
        headers.push((header, value));
    }
    Ok(headers)
}

/// Signs request bodies with every configured secret.
pub(crate) struct Signer {
    webhooks: Vec<Webhook>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("secrets", &self.webhooks.len())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for `secrets` (`whsec_` + base64 each); `source` names where they came from,
    /// for error messages.
    pub(crate) fn new<'s>(
        secrets: impl IntoIterator<Item = &'s str>,
        source: &str,
    ) -> Result<Self, SinkError> {
        let mut webhooks = Vec::new();
        for (index, secret) in secrets.into_iter().enumerate() {
            let number = index + 1;
            let Some(encoded) = secret.strip_prefix("whsec_") else {
                return Err(SinkError::fatal(format!(
                    "{source}: secret {number} does not start with `whsec_`"
                )));
            };
            let webhook = Webhook::new(secret).map_err(|_| {
                SinkError::fatal(format!(
                    "{source}: secret {number} is not `whsec_` followed by padded base64"
                ))
            })?;
            // Decoding succeeded, so the text is canonical padded base64.
            let padding = encoded
                .bytes()
                .rev()
                .take_while(|&byte| byte == b'=')
                .count();
            let bytes = encoded.len() / 4 * 3 - padding;
            if !SECRET_BYTES.contains(&bytes) {
                return Err(SinkError::fatal(format!(
                    "{source}: secret {number} holds {bytes} bytes; Standard Webhooks secrets \
                     hold {} to {}",
                    SECRET_BYTES.start(),
                    SECRET_BYTES.end()
                )));
            }
            webhooks.push(webhook);
        }
        if webhooks.is_empty() {
            return Err(SinkError::fatal(format!("{source}: no secret found")));
        }
        Ok(Self { webhooks })
    }

    fn from_config(reader: &mut ConfigReader, env: EnvLookup<'_>) -> Result<Self, SinkError> {
        match SecretSource::read(reader)? {
            SecretSource::Env(name) => {
                let source = format!("config key `secret_env` (variable {name})");
                let value = env(&name).ok_or_else(|| {
                    SinkError::fatal(format!("{source}: the variable is not set"))
                })?;
                let text = value
                    .into_string()
                    .map_err(|_| SinkError::fatal(format!("{source}: the value is not UTF-8")))?;
                Self::new(text.split_whitespace(), &source)
            }
            SecretSource::File(path) => {
                let source = format!("config key `secret_file` ({})", path.display());
                Self::from_file(&path, &source)
            }
            SecretSource::Credential(name) => Self::from_credential(&name, env),
            SecretSource::Inline(secrets) => Self::from_inline(secrets),
        }
    }

    /// A file in `$CREDENTIALS_DIRECTORY`, which systemd fills from `LoadCredential=`.
    fn from_credential(name: &str, env: EnvLookup<'_>) -> Result<Self, SinkError> {
        let source = format!("config key `secret_credential` ({name})");
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(SinkError::fatal(format!(
                "{source}: must be a plain file name inside $CREDENTIALS_DIRECTORY"
            )));
        }
        let dir = env("CREDENTIALS_DIRECTORY").ok_or_else(|| {
            SinkError::fatal(format!(
                "{source}: $CREDENTIALS_DIRECTORY is not set (give the service the \
                 credential with LoadCredential= in its systemd unit)"
            ))
        })?;
        Self::from_file(&PathBuf::from(dir).join(name), &source)
    }

    /// The `secrets` array of the config. Read as raw JSON: serde's type errors would quote it.
    fn from_inline(secrets: Value) -> Result<Self, SinkError> {
        let Value::Array(items) = secrets else {
            return Err(SinkError::fatal(
                "config key `secrets` must be an array of strings",
            ));
        };
        let mut texts = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let Value::String(text) = item else {
                return Err(SinkError::fatal(format!(
                    "config key `secrets`: entry {} is not a string",
                    index + 1
                )));
            };
            texts.push(text.as_str());
        }
        Self::new(texts, "config key `secrets`")
    }

    /// One secret per line; blank lines and `#` comments are skipped.
    fn from_file(path: &Path, source: &str) -> Result<Self, SinkError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| SinkError::fatal(format!("{source}: cannot read: {error}")))?;
        let secrets = text
            .lines()
            .map(|line| line.split('#').next().unwrap_or("").trim())
            .filter(|line| !line.is_empty());
        Self::new(secrets, source)
    }

    /// The `webhook-signature` header: one `v1,<base64>` per secret, space-separated, so a
    /// receiver holding any one of the secrets verifies the request.
    pub(crate) fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SinkError> {
        let mut header = String::new();
        for webhook in &self.webhooks {
            let signature = webhook
                .sign(id, timestamp, body)
                .map_err(|_| SinkError::fatal("cannot sign a request body that is not UTF-8"))?;
            if !header.is_empty() {
                header.push(' ');
            }
            header.push_str(&signature);
        }
        Ok(header)
    }
}

/// Where the signing secrets come from: the one of the secret keys the config sets.
enum SecretSource {
    Env(String),
    File(PathBuf),
    Credential(String),
    Inline(Value),
}

impl SecretSource {
    /// Reads the secret keys, refusing a config that sets none or several of them, or that puts
    /// a secret where a name belongs.
    fn read(reader: &mut ConfigReader) -> Result<Self, SinkError> {
        let secret_env: Option<String> = reader.optional("secret_env")?;
        let secret_file: Option<PathBuf> = reader.optional("secret_file")?;
        let secret_credential: Option<String> = reader.optional("secret_credential")?;
        let secrets: Option<Value> = reader.optional("secrets")?;
        let present = [
            secret_env.is_some(),
            secret_file.is_some(),
            secret_credential.is_some(),
            secrets.is_some(),
        ];
        let set: Vec<String> = SECRET_KEYS
            .iter()
            .zip(present)
            .filter(|(_, is_set)| *is_set)
            .map(|(key, _)| format!("`{key}`"))
            .collect();
        let all = "`secret_env`, `secret_file`, `secret_credential` or `secrets`";
        // These keys take a name, not a secret; a secret pasted here by mistake must not end
        // up quoted in the error below.
        let names = [
            ("secret_env", secret_env.as_deref()),
            ("secret_file", secret_file.as_deref().and_then(Path::to_str)),
            ("secret_credential", secret_credential.as_deref()),
        ];
        for (key, name) in names {
            if name.is_some_and(|name| name.trim_start().starts_with("whsec_")) {
                return Err(SinkError::fatal(format!(
                    "config key `{key}` holds a secret itself; it takes the name of where the \
                     secret is (use `secrets` for secrets written in the config)"
                )));
            }
        }
        if set.len() > 1 {
            return Err(SinkError::fatal(format!(
                "config keys {} are all set; set exactly one of {all}",
                set.join(" and ")
            )));
        }
        Ok(
            match (secret_env, secret_file, secret_credential, secrets) {
                (Some(name), ..) => Self::Env(name),
                (_, Some(path), ..) => Self::File(path),
                (_, _, Some(name), _) => Self::Credential(name),
                (.., Some(secrets)) => Self::Inline(secrets),
                (None, None, None, None) => {
                    return Err(SinkError::fatal(format!(
                        "requests must be signed: set one of the config keys {all}"
                    )));
                }
            },
        )
    }
}
