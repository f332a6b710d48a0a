//! Who may post to the webhook listener.
//!
//! Four kinds of credential, each configured in `[webhook]` (admits any event) or in
//! `[environments.NAME]` (admits that environment's events only), each secret holding one or
//! more whitespace-separated values so a rotation can overlap:
//!
//! - a **bearer token**, `Authorization: Bearer <token>`;
//! - a **secret path**, POST `{path}/{secret}`, for senders that can only be given a URL;
//! - a **Standard Webhooks signature** (`webhook-id`, `webhook-timestamp`, `webhook-signature`),
//!   verified over the raw body before anything parses it;
//! - a **legacy embed JWT** (HS256) in a legacy notification's `env`, checked after parsing.
//!
//! With any credential configured every request must present a bearer token, a secret path or
//! a signature; only when JWT keys are all there is may a legacy notification with a valid JWT
//! stand on its own. Whenever a JWT key applies to a legacy notification, its JWT must verify
//! whatever else the request presented, and the verified claims replace `env`.
//!
//! Everything here is decided from the request and the configured secrets only, so it is unit
//! tested without a listener; `webhook.rs` does the HTTP.

use std::fmt;

use axum::http::{HeaderMap, StatusCode, header};
use flatsync_flatfile::Secret;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use standardwebhooks::{Webhook, WebhookError};

use crate::config::{Config, SecretSource, SenderAuth};

/// Shortest accepted path secret: it is the whole credential of a URL-only sender.
pub const PATH_SECRET_MIN_CHARS: usize = 16;

/// Bytes a Standard Webhooks secret holds after `whsec_` and base64 (the spec's range, and
/// what the http-forward sink accepts).
const SIGNING_SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// Seconds of clock difference allowed on a JWT's `exp` and `nbf`.
const JWT_LEEWAY_SECS: u64 = 60;

/// Why the webhook credentials could not be set up. Names the config key, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum WebhookAuthError {
    /// The variable, file or credential a key names is not there or empty.
    #[error("`{key}`: {source_name} is not set or empty")]
    Missing {
        /// The config key, e.g. `webhook.path_secret`.
        key: String,
        /// Where the secret should have come from.
        source_name: String,
    },
    /// The secret could not be read.
    #[error("`{key}`: {message}")]
    Unreadable {
        /// The config key.
        key: String,
        /// What went wrong.
        message: String,
    },
    /// The secret was read but cannot be used as it is.
    #[error("`{key}`: {message}")]
    Invalid {
        /// The config key.
        key: String,
        /// What is wrong with it (never the value).
        message: String,
    },
    /// Two scopes hold the same value, so a request could not say which one it speaks for.
    #[error("`{first}` and `{second}` hold the same value; give each its own")]
    Duplicate {
        /// The first key holding the value.
        first: String,
        /// The second.
        second: String,
    },
}

impl WebhookAuthError {
    /// Whether the error is about reading the secret (it may be readable where the daemon
    /// runs) rather than about its value.
    pub fn is_unreadable(&self) -> bool {
        matches!(
            self,
            WebhookAuthError::Missing { .. } | WebhookAuthError::Unreadable { .. }
        )
    }
}

/// What a credential admits: any event, or the events of one environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Global,
    Environment { name: String, id: String },
}

impl Scope {
    /// The environment name for logs, `*` for any.
    pub(crate) fn label(&self) -> &str {
        match self {
            Scope::Global => "*",
            Scope::Environment { name, .. } => name,
        }
    }
}

/// How a request was let in, for the log line of an accepted webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Open,
    Bearer,
    PathSecret,
    Signature,
    Jwt,
}

impl Method {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Method::Open => "none",
            Method::Bearer => "bearer",
            Method::PathSecret => "path secret",
            Method::Signature => "signature",
            Method::Jwt => "jwt",
        }
    }
}

/// A refusal: status, and a reason safe to send and log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
    /// Answer with `WWW-Authenticate: Bearer`.
    pub(crate) bearer_challenge: bool,
}

fn unauthorized(reason: &'static str) -> Rejection {
    Rejection {
        status: StatusCode::UNAUTHORIZED,
        reason,
        bearer_challenge: false,
    }
}

/// The claims of a verified legacy JWT, and the scope of the key that verified them.
pub(crate) type VerifiedEnv = (Map<String, Value>, usize);

/// What the request's path and headers decided, before the body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// No credential is configured: everyone is let in.
    Open,
    /// Let in by a bearer token or a secret path, for this scope (an index of
    /// [`WebhookAuth::scope`]).
    Admitted(Method, usize),
    /// Signature headers came: read the body, then [`WebhookAuth::verify_signature`].
    VerifySignature,
    /// Only JWT keys are configured and nothing else was presented: the body must be a legacy
    /// notification with a valid JWT.
    JwtOnly,
}

struct Held<T> {
    value: T,
    scope: usize,
}

struct JwtKey {
    key: DecodingKey,
    field: String,
    scope: usize,
}

/// The credentials of one daemon, read from their sources.
pub(crate) struct WebhookAuth {
    scopes: Vec<Scope>,
    bearer: Vec<Held<Secret>>,
    path: Vec<Held<Secret>>,
    signing: Vec<Held<Webhook>>,
    jwt: Vec<JwtKey>,
}

impl fmt::Debug for WebhookAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookAuth")
            .field("scopes", &self.scopes)
            .field("bearer_tokens", &self.bearer.len())
            .field("path_secrets", &self.path.len())
            .field("signing_secrets", &self.signing.len())
            .field("jwt_keys", &self.jwt.len())
            .finish()
    }
}

/// Compares without an early exit, so the time taken does not reveal how much of a guessed
/// secret was right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The values of a secret: whitespace-separated, so two can be given during a rotation.
fn read_values(source: &SecretSource, key: &str) -> Result<Vec<String>, WebhookAuthError> {
    let secret = source
        .read()
        .map_err(|message| WebhookAuthError::Unreadable {
            key: key.to_owned(),
            message,
        })?
        .ok_or_else(|| WebhookAuthError::Missing {
            key: key.to_owned(),
            source_name: source.describe(),
        })?;
    Ok(secret
        .expose()
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

/// Which value of a secret a message is about, when it has several.
fn nth(index: usize, count: usize) -> String {
    if count == 1 {
        "the value".to_owned()
    } else {
        format!("value {} of {count}", index + 1)
    }
}

fn check_path_secret(value: &str) -> Result<(), String> {
    if value.chars().count() < PATH_SECRET_MIN_CHARS {
        return Err(format!(
            "is shorter than {PATH_SECRET_MIN_CHARS} characters; a path secret is the whole \
             credential of a URL, use a long random string"
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
    {
        return Err(
            "holds a character other than A-Z, a-z, 0-9, `.`, `_`, `~` and `-`, which a URL \
             path would have to escape"
                .to_owned(),
        );
    }
    Ok(())
}

fn signing_key(value: &str) -> Result<Webhook, String> {
    let Some(encoded) = value.strip_prefix("whsec_") else {
        return Err("does not start with `whsec_`".to_owned());
    };
    let webhook =
        Webhook::new(value).map_err(|_| "is not `whsec_` followed by padded base64".to_owned())?;
    // Decoding succeeded, so the text is canonical padded base64.
    let padding = encoded.bytes().rev().take_while(|&b| b == b'=').count();
    let bytes = encoded.len() / 4 * 3 - padding;
    if !SIGNING_SECRET_BYTES.contains(&bytes) {
        return Err(format!(
            "holds {bytes} bytes; Standard Webhooks secrets hold {} to {}",
            SIGNING_SECRET_BYTES.start(),
            SIGNING_SECRET_BYTES.end()
        ));
    }
    Ok(webhook)
}

impl WebhookAuth {
    /// Reads every credential of `config`: `[webhook]`'s and each environment's.
    pub(crate) fn from_config(config: &Config) -> Result<WebhookAuth, WebhookAuthError> {
        let mut auth = WebhookAuth {
            scopes: Vec::new(),
            bearer: Vec::new(),
            path: Vec::new(),
            signing: Vec::new(),
            jwt: Vec::new(),
        };
        // Values seen so far per kind, with the key that holds them, to refuse duplicates.
        let mut seen: [Vec<(String, String, usize)>; 4] = Default::default();
        if let Some(webhook) = &config.webhook {
            auth.add_scope(Scope::Global, &webhook.auth, "webhook.", "", &mut seen)?;
        }
        for (name, env) in &config.environments {
            let scope = Scope::Environment {
                name: name.clone(),
                id: env.id.clone(),
            };
            let prefix = format!("environments.{name}.");
            auth.add_scope(scope, &env.webhook_auth, &prefix, "webhook_", &mut seen)?;
        }
        Ok(auth)
    }

    /// Adds one scope's credentials. Keys are `{prefix}{kind_prefix}token` and so on, except
    /// the JWT key, which is `legacy_jwt_secret` everywhere.
    fn add_scope(
        &mut self,
        scope: Scope,
        auth: &SenderAuth,
        prefix: &str,
        kind_prefix: &str,
        seen: &mut [Vec<(String, String, usize)>; 4],
    ) -> Result<(), WebhookAuthError> {
        let index = self.scopes.len();
        self.scopes.push(scope);
        let kinds = [
            (auth.token.as_ref(), format!("{prefix}{kind_prefix}token")),
            (
                auth.path_secret.as_ref(),
                format!("{prefix}{kind_prefix}path_secret"),
            ),
            (
                auth.signing_secret.as_ref(),
                format!("{prefix}{kind_prefix}signing_secret"),
            ),
            (
                auth.legacy_jwt_secret.as_ref(),
                format!("{prefix}legacy_jwt_secret"),
            ),
        ];
        for (kind, (source, key)) in kinds.into_iter().enumerate() {
            let Some(source) = source else { continue };
            let values = read_values(source, &key)?;
            let count = values.len();
            for (n, value) in values.into_iter().enumerate() {
                let invalid = |message: String| WebhookAuthError::Invalid {
                    key: key.clone(),
                    message: format!("{} {message}", nth(n, count)),
                };
                if let Some((first, _, _)) = seen[kind].iter().find(|(_, v, s)| {
                    *s != index && constant_time_eq(v.as_bytes(), value.as_bytes())
                }) {
                    return Err(WebhookAuthError::Duplicate {
                        first: first.clone(),
                        second: key.clone(),
                    });
                }
                match kind {
                    0 => self.bearer.push(Held {
                        value: Secret::new(value.clone()),
                        scope: index,
                    }),
                    1 => {
                        check_path_secret(&value).map_err(invalid)?;
                        self.path.push(Held {
                            value: Secret::new(value.clone()),
                            scope: index,
                        });
                    }
                    2 => self.signing.push(Held {
                        value: signing_key(&value).map_err(invalid)?,
                        scope: index,
                    }),
                    _ => self.jwt.push(JwtKey {
                        key: DecodingKey::from_secret(value.as_bytes()),
                        field: auth.legacy_jwt_field.clone(),
                        scope: index,
                    }),
                }
                seen[kind].push((key.clone(), value, index));
            }
        }
        Ok(())
    }

    /// The scope at `index`.
    pub(crate) fn scope(&self, index: usize) -> &Scope {
        &self.scopes[index]
    }

    /// Whether no credential is configured: the listener is open.
    pub(crate) fn is_open(&self) -> bool {
        self.bearer.is_empty()
            && self.path.is_empty()
            && self.signing.is_empty()
            && self.jwt.is_empty()
    }

    /// Whether anything may be posted to `{path}` itself. Not when secret paths are the only
    /// way in: then `{path}` answers 404 like any unknown path.
    pub(crate) fn serves_base_path(&self) -> bool {
        !self.bearer.is_empty() || !self.signing.is_empty() || self.path.is_empty()
    }

    /// Whether a bearer token is configured (401 answers then carry `WWW-Authenticate`).
    pub(crate) fn wants_bearer(&self) -> bool {
        !self.bearer.is_empty()
    }

    /// A short description of what is configured, for `flatsync check` and the start log.
    pub(crate) fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (index, scope) in self.scopes.iter().enumerate() {
            let count = |n: usize, what: &str| (n > 0).then(|| format!("{what} ({n})"));
            let methods: Vec<String> = [
                count(
                    self.bearer.iter().filter(|v| v.scope == index).count(),
                    "bearer token",
                ),
                count(
                    self.path.iter().filter(|v| v.scope == index).count(),
                    "secret path",
                ),
                count(
                    self.signing.iter().filter(|v| v.scope == index).count(),
                    "Standard Webhooks signature",
                ),
                count(
                    self.jwt.iter().filter(|v| v.scope == index).count(),
                    "legacy env JWT",
                ),
            ]
            .into_iter()
            .flatten()
            .collect();
            if methods.is_empty() {
                continue;
            }
            let admits = match scope {
                Scope::Global => "any environment".to_owned(),
                Scope::Environment { name, id } => format!("environment `{name}` ({id})"),
            };
            lines.push(format!("{admits}: {}", methods.join(", ")));
        }
        lines
    }

    /// Which secret path `segment` is, if any. Every configured value is compared, so the time
    /// taken does not depend on which one matched.
    pub(crate) fn path_secret_scope(&self, segment: &str) -> Option<usize> {
        let mut found = None;
        for value in &self.path {
            if constant_time_eq(value.value.expose().as_bytes(), segment.as_bytes()) {
                found = Some(value.scope);
            }
        }
        found
    }

    /// Decides what the path and headers allow, before the body is read. `path_scope` is the
    /// scope of the secret path the request came by, if it did.
    pub(crate) fn gate(
        &self,
        path_scope: Option<usize>,
        headers: &HeaderMap,
    ) -> Result<Gate, Rejection> {
        if self.is_open() {
            return Ok(Gate::Open);
        }
        if let Some(scope) = path_scope {
            return Ok(Gate::Admitted(Method::PathSecret, scope));
        }
        let mut bearer_failure = None;
        if self.wants_bearer() {
            match bearer_token(headers) {
                Some(presented) => {
                    let mut found = None;
                    for value in &self.bearer {
                        if constant_time_eq(value.value.expose().as_bytes(), presented.as_bytes()) {
                            found = Some(value.scope);
                        }
                    }
                    match found {
                        Some(scope) => return Ok(Gate::Admitted(Method::Bearer, scope)),
                        None => bearer_failure = Some("wrong bearer token"),
                    }
                }
                None if headers.contains_key(header::AUTHORIZATION) => {
                    bearer_failure = Some("the Authorization header is not `Bearer <token>`");
                }
                None => {}
            }
        }
        if !self.signing.is_empty() && has_signature_headers(headers) {
            return Ok(Gate::VerifySignature);
        }
        let challenge = |rejection: Rejection| Rejection {
            bearer_challenge: self.wants_bearer(),
            ..rejection
        };
        if let Some(reason) = bearer_failure {
            return Err(challenge(unauthorized(reason)));
        }
        if self.bearer.is_empty() && self.signing.is_empty() && self.path.is_empty() {
            return Ok(Gate::JwtOnly);
        }
        let reason = match (self.wants_bearer(), !self.signing.is_empty()) {
            (true, true) => "missing bearer token or webhook signature",
            (true, false) => "missing bearer token",
            (false, true) => "missing webhook signature headers",
            // Only secret paths (and maybe JWTs): `{path}` itself is not served, so a request
            // gets here only through a misrouted call; say what would work.
            (false, false) => "missing credentials: post to the secret path",
        };
        Err(challenge(unauthorized(reason)))
    }

    /// Verifies Standard Webhooks headers over the raw body with every signing secret; the
    /// scope of the first that verifies.
    pub(crate) fn verify_signature(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(Method, usize), Rejection> {
        let mut failure = unauthorized("bad signature");
        for value in &self.signing {
            match value.value.verify(body, headers) {
                Ok(()) => return Ok((Method::Signature, value.scope)),
                Err(error) => {
                    // Headers and timestamp are checked before the signature and give the same
                    // answer for every secret.
                    failure = unauthorized(signature_reason(&error));
                }
            }
        }
        Err(Rejection {
            bearer_challenge: self.wants_bearer(),
            ..failure
        })
    }

    /// The JWT check of a legacy notification (`body` is its scrubbed JSON): `Ok(None)` when no
    /// JWT key applies, else the verified claims and the scope of the key that verified them.
    ///
    /// The keys that apply: every key when the request presented nothing else (`admitted` is
    /// `None`); otherwise `[webhook]`'s, those of the scope the request was admitted for, and
    /// those of the environment the event names.
    pub(crate) fn verify_legacy_env(
        &self,
        body: &Value,
        admitted: Option<usize>,
        event_environment: Option<&str>,
    ) -> Result<Option<VerifiedEnv>, Rejection> {
        let applies = |key: &JwtKey| match admitted {
            None => true,
            Some(scope) => {
                key.scope == scope
                    || match &self.scopes[key.scope] {
                        Scope::Global => true,
                        Scope::Environment { id, .. } => event_environment == Some(id.as_str()),
                    }
            }
        };
        let keys: Vec<&JwtKey> = self.jwt.iter().filter(|k| applies(k)).collect();
        if keys.is_empty() {
            return Ok(None);
        }
        let env = body.get("env");
        let mut failure = JwtFailure::Missing;
        for key in keys {
            let token = match env {
                Some(Value::String(token)) => Some(token.as_str()),
                Some(Value::Object(env)) => env.get(&key.field).and_then(Value::as_str),
                _ => None,
            };
            let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
                continue;
            };
            match verify_jwt(token, &key.key) {
                Ok(claims) => return Ok(Some((claims, key.scope))),
                Err(why) => failure = failure.max(why),
            }
        }
        Err(unauthorized(failure.reason()))
    }

    /// Whether a request admitted for `scope` may carry an event of `event_environment`: a
    /// credential of one environment admits that environment's events and events that name
    /// none.
    pub(crate) fn scope_admits(&self, scope: usize, event_environment: Option<&str>) -> bool {
        match (&self.scopes[scope], event_environment) {
            (Scope::Global, _) | (_, None) => true,
            (Scope::Environment { id, .. }, Some(event)) => id == event,
        }
    }
}

/// `Authorization: Bearer <token>`, the token trimmed.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn has_signature_headers(headers: &HeaderMap) -> bool {
    ["webhook-id", "webhook-timestamp", "webhook-signature"]
        .iter()
        .any(|name| headers.contains_key(*name))
}

fn signature_reason(error: &WebhookError) -> &'static str {
    match error {
        WebhookError::MissingHeader("id") => "missing webhook-id header",
        WebhookError::MissingHeader("timestamp") => "missing webhook-timestamp header",
        WebhookError::MissingHeader(_) => "missing webhook-signature header",
        WebhookError::InvalidHeader(_) | WebhookError::InvalidTimestamp => {
            "malformed webhook signature headers"
        }
        WebhookError::TimestampTooOldError | WebhookError::FutureTimestampError => {
            "stale timestamp"
        }
        WebhookError::InvalidSignature | WebhookError::InvalidPayload => "bad signature",
        WebhookError::InvalidSecret(_) => "bad signature",
    }
}

/// Why a JWT did not verify, ordered from least to most telling: with several keys, the most
/// telling failure is reported (an expired token that one key verified says more than the
/// other keys' "bad signature").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum JwtFailure {
    Missing,
    Malformed,
    WrongAlgorithm,
    BadSignature,
    BadClaims,
    NotYetValid,
    Expired,
}

impl JwtFailure {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            JwtFailure::Missing => "missing JWT",
            JwtFailure::Malformed => "malformed JWT",
            JwtFailure::WrongAlgorithm => "JWT not signed with HS256",
            JwtFailure::BadSignature => "bad JWT signature",
            JwtFailure::BadClaims => "JWT claims malformed (exp and nbf must be numbers)",
            JwtFailure::NotYetValid => "JWT not valid yet",
            JwtFailure::Expired => "expired JWT",
        }
    }
}

/// Verifies an HS256 JWT: signature, then `exp` and `nbf` when present (a token without `exp`
/// is accepted: Flatfile's embed examples sign `{embed, sub}` only).
pub(crate) fn verify_jwt(token: &str, key: &DecodingKey) -> Result<Map<String, Value>, JwtFailure> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.required_spec_claims.clear();
    validation.leeway = JWT_LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    match jsonwebtoken::decode::<Value>(token, key, &validation) {
        Ok(data) => match data.claims {
            // jsonwebtoken skips a time claim it cannot read as a number, which would let a
            // token with `"exp": "tomorrow"` through as one that never expires.
            Value::Object(claims)
                if ["exp", "nbf"]
                    .iter()
                    .any(|k| claims.get(*k).is_some_and(|v| !v.is_number())) =>
            {
                Err(JwtFailure::BadClaims)
            }
            Value::Object(claims) => Ok(claims),
            // Unreachable in practice: the claims check already wants an object.
            _ => Err(JwtFailure::Malformed),
        },
        Err(error) => Err(match error.kind() {
            ErrorKind::ExpiredSignature => JwtFailure::Expired,
            ErrorKind::ImmatureSignature => JwtFailure::NotYetValid,
            ErrorKind::InvalidSignature => JwtFailure::BadSignature,
            // An `exp` or `nbf` that is there but not a number.
            ErrorKind::MissingRequiredClaim(_) => JwtFailure::BadClaims,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => JwtFailure::WrongAlgorithm,
            _ => JwtFailure::Malformed,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use axum::http::HeaderValue;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const TOKEN_A: &str = "token-A-0123456789";
    const TOKEN_B: &str = "token-B-9876543210";
    const PATH_SECRET: &str = "p4th-s3cret_0123456789~.";
    const PROD_PATH_SECRET: &str = "prod-path-secret-0123456789";
    // `whsec_` + base64 of 24 and 32 bytes.
    const WHSEC_OLD: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1u";
    const WHSEC_NEW: &str = "whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldy1zZWNyZXQ=";
    const JWT_KEY: &str = "embed-private-key-1";
    const PROD_JWT_KEY: &str = "prod-embed-private-key";

    fn value(text: &str) -> Option<SecretSource> {
        Some(SecretSource::Value(Secret::new(text.to_owned())))
    }

    /// A config with `[webhook]` and environments `prod` (us_env_prod) and `test`
    /// (us_env_test), and no credential yet.
    fn config() -> Config {
        Config::parse(
            "[webhook]\n[environments.prod]\nid = \"us_env_prod\"\n[environments.test]\nid = \"us_env_test\"\n",
            Path::new("/etc/flatsync/config.toml"),
        )
        .expect("valid config")
    }

    fn global(config: &mut Config) -> &mut SenderAuth {
        &mut config.webhook.as_mut().expect("[webhook]").auth
    }

    fn env<'c>(config: &'c mut Config, name: &str) -> &'c mut SenderAuth {
        &mut config
            .environments
            .get_mut(name)
            .expect("environment")
            .webhook_auth
    }

    fn scope_named(auth: &WebhookAuth, name: &str) -> usize {
        auth.scopes
            .iter()
            .position(|s| s.label() == name)
            .unwrap_or_else(|| panic!("no scope {name}"))
    }

    fn build(config: &Config) -> WebhookAuth {
        WebhookAuth::from_config(config).unwrap_or_else(|e| panic!("credentials: {e}"))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    fn reason(result: Result<Gate, Rejection>) -> &'static str {
        match result {
            Err(rejection) => {
                assert_eq!(rejection.status, StatusCode::UNAUTHORIZED);
                rejection.reason
            }
            Ok(gate) => panic!("expected a 401, got {gate:?}"),
        }
    }

    #[test]
    fn with_nothing_configured_everyone_is_let_in() {
        let auth = build(&config());
        assert!(auth.is_open());
        assert!(auth.serves_base_path());
        assert_eq!(auth.gate(None, &HeaderMap::new()), Ok(Gate::Open));
        assert!(auth.describe().is_empty());
    }

    #[test]
    fn either_of_two_rotation_bearer_tokens_is_accepted() {
        let mut config = config();
        global(&mut config).token = value(&format!("{TOKEN_A}\n{TOKEN_B}\n"));
        let auth = build(&config);
        for token in [TOKEN_A, TOKEN_B] {
            let bearer = format!("Bearer {token}");
            assert_eq!(
                auth.gate(None, &headers(&[("authorization", &bearer)])),
                Ok(Gate::Admitted(Method::Bearer, 0)),
                "{token}"
            );
        }
        let wrong = auth.gate(
            None,
            &headers(&[("authorization", "Bearer token-A-012345678")]),
        );
        assert_eq!(wrong.unwrap_err().reason, "wrong bearer token");
        assert!(
            auth.gate(None, &HeaderMap::new())
                .unwrap_err()
                .bearer_challenge,
            "401s to a bearer listener carry WWW-Authenticate"
        );
        assert_eq!(
            reason(auth.gate(None, &HeaderMap::new())),
            "missing bearer token"
        );
        assert_eq!(
            reason(auth.gate(None, &headers(&[("authorization", "Basic dXNlcjpwYXNz")]))),
            "the Authorization header is not `Bearer <token>`"
        );
        // Both values together are not a token.
        let both = format!("Bearer {TOKEN_A} {TOKEN_B}");
        assert_eq!(
            reason(auth.gate(None, &headers(&[("authorization", &both)]))),
            "wrong bearer token"
        );
        assert_eq!(
            auth.describe(),
            vec!["any environment: bearer token (2)".to_owned()]
        );
    }

    #[test]
    fn a_secret_path_admits_its_scope_and_hides_the_base_path_when_alone() {
        let mut config = config();
        global(&mut config).path_secret = value(PATH_SECRET);
        env(&mut config, "prod").path_secret = value(PROD_PATH_SECRET);
        let auth = build(&config);
        assert!(
            !auth.serves_base_path(),
            "only secret paths: `{{path}}` is 404"
        );
        assert_eq!(auth.path_secret_scope(PATH_SECRET), Some(0));
        let prod = auth
            .path_secret_scope(PROD_PATH_SECRET)
            .expect("prod's secret");
        assert_eq!(auth.scope(prod).label(), "prod");
        assert_eq!(auth.path_secret_scope(&PATH_SECRET[1..]), None);
        assert_eq!(auth.path_secret_scope(&format!("{PATH_SECRET}x")), None);
        assert_eq!(auth.path_secret_scope(""), None);
        assert_eq!(
            auth.gate(Some(prod), &HeaderMap::new()),
            Ok(Gate::Admitted(Method::PathSecret, prod))
        );

        global(&mut config).token = value(TOKEN_A);
        let auth = build(&config);
        assert!(
            auth.serves_base_path(),
            "a bearer token makes `{{path}}` useful again"
        );
    }

    #[test]
    fn short_or_unsafe_path_secrets_are_refused_naming_the_key_not_the_value() {
        for (secret, expected) in [
            ("short-secret", "shorter than 16"),
            ("slash/in-the-secret-0123", "other than A-Z"),
            ("percent%20encoded-0123456", "other than A-Z"),
            ("ünïcödé-secret-0123456789", "other than A-Z"),
        ] {
            let mut config = config();
            env(&mut config, "test").path_secret = value(&format!("{PATH_SECRET} {secret}"));
            let error = WebhookAuth::from_config(&config).expect_err(secret);
            let text = error.to_string();
            assert!(
                text.starts_with("`environments.test.webhook_path_secret`: value 2 of 2"),
                "{text}"
            );
            assert!(text.contains(expected), "{secret}: {text}");
            assert!(!text.contains(secret), "the secret is quoted: {text}");
            assert!(!error.is_unreadable());
        }
    }

    #[test]
    fn a_missing_secret_names_its_key_and_source() {
        let mut config = config();
        global(&mut config).signing_secret = Some(SecretSource::Env(
            "FLATSYNC_TEST_SURELY_UNSET_VARIABLE".to_owned(),
        ));
        let error = WebhookAuth::from_config(&config).expect_err("unset");
        assert!(error.is_unreadable());
        assert_eq!(
            error.to_string(),
            "`webhook.signing_secret`: environment variable FLATSYNC_TEST_SURELY_UNSET_VARIABLE is not set or empty"
        );
    }

    #[test]
    fn one_value_in_two_scopes_is_refused() {
        let mut config = config();
        global(&mut config).token = value(TOKEN_A);
        env(&mut config, "prod").token = value(&format!("{TOKEN_B} {TOKEN_A}"));
        match WebhookAuth::from_config(&config) {
            Err(WebhookAuthError::Duplicate { first, second }) => {
                assert_eq!(first, "webhook.token");
                assert_eq!(second, "environments.prod.webhook_token");
            }
            other => panic!("expected a duplicate, got {other:?}"),
        }
        // The same value twice in one scope is harmless.
        let mut config = self::config();
        global(&mut config).token = value(&format!("{TOKEN_A} {TOKEN_A}"));
        build(&config);
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs() as i64
    }

    /// Standard Webhooks headers as http-forward sends them: one `v1,` signature per secret.
    fn signed(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> HeaderMap {
        let signature = secrets
            .iter()
            .map(|s| {
                Webhook::new(s)
                    .expect("secret")
                    .sign(id, timestamp, body)
                    .expect("signs")
            })
            .collect::<Vec<_>>()
            .join(" ");
        headers(&[
            ("webhook-id", id),
            ("webhook-timestamp", &timestamp.to_string()),
            ("webhook-signature", &signature),
        ])
    }

    #[test]
    fn standard_webhooks_signatures_verify_with_either_rotation_secret() {
        let mut config = config();
        global(&mut config).signing_secret = value(&format!("{WHSEC_OLD} {WHSEC_NEW}"));
        let auth = build(&config);
        let body = br#"{"type":"rows","stream":"contacts-us_evt_1","seq":0,"part":0,"parts":1,"last":true,"rows":[]}"#;
        for secrets in [&[WHSEC_OLD][..], &[WHSEC_NEW], &[WHSEC_OLD, WHSEC_NEW]] {
            let headers = signed(secrets, "msg_1", now(), body);
            assert_eq!(auth.gate(None, &headers), Ok(Gate::VerifySignature));
            assert_eq!(
                auth.verify_signature(&headers, body),
                Ok((Method::Signature, 0)),
                "{secrets:?}"
            );
        }
        // The sender rotated first: its new secret is unknown here, the old one still signs.
        let unknown = "whsec_dW5rbm93bi11bmtub3duLXVua25vd24tdW5rbm93bg==";
        let headers = signed(&[unknown, WHSEC_OLD], "msg_2", now(), body);
        assert_eq!(
            auth.verify_signature(&headers, body),
            Ok((Method::Signature, 0))
        );

        let headers = signed(&[WHSEC_NEW], "msg_3", now(), body);
        let mut tampered = body.to_vec();
        tampered[10] ^= 1;
        let refused = |headers: &HeaderMap, body: &[u8]| {
            auth.verify_signature(headers, body)
                .expect_err("refused")
                .reason
        };
        assert_eq!(refused(&headers, &tampered), "bad signature");
        assert_eq!(
            refused(&signed(&[unknown], "msg_4", now(), body), body),
            "bad signature"
        );
        let stale = signed(&[WHSEC_NEW], "msg_5", now() - 6 * 60, body);
        assert_eq!(refused(&stale, body), "stale timestamp");
        let future = signed(&[WHSEC_NEW], "msg_6", now() + 6 * 60, body);
        assert_eq!(refused(&future, body), "stale timestamp");
        // A different id or timestamp than the one signed.
        let mut other_id = headers.clone();
        other_id.insert("webhook-id", HeaderValue::from_static("msg_other"));
        assert_eq!(refused(&other_id, body), "bad signature");

        assert_eq!(
            reason(auth.gate(None, &HeaderMap::new())),
            "missing webhook signature headers"
        );
        let mut partial = headers.clone();
        partial.remove("webhook-id");
        assert_eq!(auth.gate(None, &partial), Ok(Gate::VerifySignature));
        assert_eq!(refused(&partial, body), "missing webhook-id header");
        let mut partial = headers.clone();
        partial.remove("webhook-timestamp");
        assert_eq!(refused(&partial, body), "missing webhook-timestamp header");
        let mut partial = headers;
        partial.insert("webhook-timestamp", HeaderValue::from_static("yesterday"));
        assert_eq!(
            refused(&partial, body),
            "malformed webhook signature headers"
        );
    }

    #[test]
    fn a_good_signature_wins_over_a_wrong_bearer_token() {
        let mut config = config();
        global(&mut config).token = value(TOKEN_A);
        global(&mut config).signing_secret = value(WHSEC_NEW);
        let auth = build(&config);
        let body = b"{}";
        let mut headers = signed(&[WHSEC_NEW], "msg_1", now(), body);
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer for-a-proxy"),
        );
        assert_eq!(auth.gate(None, &headers), Ok(Gate::VerifySignature));
        assert_eq!(
            auth.verify_signature(&headers, body),
            Ok((Method::Signature, 0))
        );
        assert_eq!(
            reason(auth.gate(None, &HeaderMap::new())),
            "missing bearer token or webhook signature"
        );
    }

    #[test]
    fn signing_secrets_must_be_standard_webhooks_secrets() {
        for (secret, expected) in [
            (
                "MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1u",
                "does not start with `whsec_`",
            ),
            ("whsec_not base64!", "padded base64"),
            ("whsec_c2hvcnQ=", "holds 5 bytes"),
        ] {
            let mut config = config();
            global(&mut config).signing_secret = value(secret);
            let error = WebhookAuth::from_config(&config)
                .expect_err(secret)
                .to_string();
            assert!(error.starts_with("`webhook.signing_secret`: "), "{error}");
            assert!(error.contains(expected), "{secret}: {error}");
        }
    }

    fn jwt(claims: &Value, key: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(key.as_bytes()),
        )
        .expect("encodes")
    }

    /// base64url without padding, for tokens jsonwebtoken refuses to make.
    fn b64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }

    fn legacy(env: Value, environment_id: &str) -> Value {
        json!({
            "type": "portalImportSubmitted",
            "env": env,
            "scope": { "eventId": "e-1", "batchId": "b-1", "environmentId": environment_id }
        })
    }

    #[test]
    fn legacy_jwts_are_verified_and_their_claims_returned() {
        let mut config = config();
        global(&mut config).legacy_jwt_secret = value(&format!("old-embed-key {JWT_KEY}"));
        let auth = build(&config);
        assert_eq!(auth.gate(None, &HeaderMap::new()), Ok(Gate::JwtOnly));
        assert!(auth.serves_base_path());
        let verify =
            |env: Value| auth.verify_legacy_env(&legacy(env, "uuid-1"), None, Some("uuid-1"));

        // Flatfile's own embed examples sign no `exp`.
        let claims = json!({ "embed": "emb-1", "sub": "a@example.com", "customerId": "cus_123" });
        let (verified, scope) = verify(json!({ "token": jwt(&claims, JWT_KEY) }))
            .expect("valid")
            .expect("a key applies");
        assert_eq!(Value::Object(verified), claims);
        assert_eq!(scope, 0);
        // `env` may be the JWT itself; the other rotation key verifies too.
        let (verified, _) = verify(json!(jwt(&claims, "old-embed-key")))
            .expect("valid")
            .expect("applies");
        assert_eq!(verified["customerId"], "cus_123");

        let hour = 3600;
        let refused = |env: Value| verify(env).expect_err("refused").reason;
        assert_eq!(
            refused(json!({ "token": jwt(&json!({ "exp": now() - hour }), JWT_KEY) })),
            "expired JWT"
        );
        assert!(verify(json!({ "token": jwt(&json!({ "exp": now() + hour }), JWT_KEY) })).is_ok());
        assert!(
            verify(json!({ "token": jwt(&json!({ "exp": now() - 10 }), JWT_KEY) })).is_ok(),
            "a few seconds of clock skew are allowed"
        );
        assert_eq!(
            refused(json!({ "token": jwt(&json!({ "nbf": now() + hour }), JWT_KEY) })),
            "JWT not valid yet"
        );
        assert_eq!(
            refused(json!({ "token": jwt(&json!({ "exp": "tomorrow" }), JWT_KEY) })),
            "JWT claims malformed (exp and nbf must be numbers)",
            "an `exp` that is not a number is not a missing `exp`"
        );
        assert_eq!(
            refused(json!({ "token": jwt(&claims, "another-key") })),
            "bad JWT signature"
        );
        let unsigned = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none","typ":"JWT"}"#),
            b64url(claims.to_string().as_bytes())
        );
        assert_eq!(refused(json!({ "token": unsigned })), "malformed JWT");
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(JWT_KEY.as_bytes()),
        )
        .expect("encodes");
        assert_eq!(
            refused(json!({ "token": hs512 })),
            "JWT not signed with HS256"
        );
        assert_eq!(refused(json!({ "token": "not.a.jwt" })), "malformed JWT");
        assert_eq!(refused(json!({ "customerId": "cus_123" })), "missing JWT");
        assert_eq!(refused(json!({})), "missing JWT");
        assert_eq!(refused(Value::Null), "missing JWT");
        // With several keys the most telling failure is given: this one verified and expired.
        let expired = jwt(&json!({ "exp": now() - hour }), "old-embed-key");
        assert_eq!(refused(json!({ "token": expired })), "expired JWT");
    }

    #[test]
    fn the_jwt_field_is_configurable_per_scope() {
        let mut config = config();
        env(&mut config, "prod").legacy_jwt_secret = value(PROD_JWT_KEY);
        env(&mut config, "prod").legacy_jwt_field = "signed".to_owned();
        env(&mut config, "prod").token = value(TOKEN_B);
        let auth = build(&config);
        let token = jwt(&json!({ "customerId": "cus_9" }), PROD_JWT_KEY);
        let body = legacy(json!({ "signed": token }), "us_env_prod");
        let (claims, scope) = auth
            .verify_legacy_env(&body, None, Some("us_env_prod"))
            .expect("valid")
            .expect("applies");
        assert_eq!(claims["customerId"], "cus_9");
        assert_eq!(auth.scope(scope).label(), "prod");
        let body = legacy(json!({ "token": token }), "us_env_prod");
        assert_eq!(
            auth.verify_legacy_env(&body, None, Some("us_env_prod"))
                .expect_err("wrong field")
                .reason,
            "missing JWT"
        );
        let array = legacy(
            json!({ "signed": jwt(&json!([1, 2]), PROD_JWT_KEY) }),
            "us_env_prod",
        );
        assert_eq!(
            auth.verify_legacy_env(&array, None, Some("us_env_prod"))
                .expect_err("not claims")
                .reason,
            "malformed JWT"
        );
    }

    #[test]
    fn which_jwt_keys_apply_to_an_admitted_request() {
        let mut config = config();
        global(&mut config).token = value(TOKEN_A);
        env(&mut config, "prod").legacy_jwt_secret = value(PROD_JWT_KEY);
        env(&mut config, "test").token = value(TOKEN_B);
        let auth = build(&config);
        let test = scope_named(&auth, "test");
        let unsigned = |environment: &str| legacy(json!({ "customerId": "cus_1" }), environment);

        // Admitted by the global token, event of `test`: no JWT key applies, `env` stays.
        assert_eq!(
            auth.verify_legacy_env(&unsigned("us_env_test"), Some(0), Some("us_env_test")),
            Ok(None)
        );
        // Event of `prod`: prod's key applies whoever admitted the request.
        for admitted in [0, test] {
            assert_eq!(
                auth.verify_legacy_env(
                    &unsigned("us_env_prod"),
                    Some(admitted),
                    Some("us_env_prod")
                )
                .expect_err("a JWT is required")
                .reason,
                "missing JWT"
            );
        }
        let signed = legacy(
            json!({ "token": jwt(&json!({ "customerId": "cus_1" }), PROD_JWT_KEY) }),
            "us_env_prod",
        );
        let (_, scope) = auth
            .verify_legacy_env(&signed, Some(0), Some("us_env_prod"))
            .expect("valid")
            .expect("applies");
        assert!(auth.scope_admits(scope, Some("us_env_prod")));
        // Admitted by test's token but carrying prod's event: the JWT verifies, the scope
        // check (403) then refuses test's credential for prod's event.
        assert!(!auth.scope_admits(test, Some("us_env_prod")));
        // With a global JWT key too, every legacy notification needs a JWT.
        global(&mut config).legacy_jwt_secret = value(JWT_KEY);
        let auth = build(&config);
        assert_eq!(
            auth.verify_legacy_env(&unsigned("us_env_test"), Some(0), Some("us_env_test"))
                .expect_err("required")
                .reason,
            "missing JWT"
        );
    }

    #[test]
    fn an_environment_credential_admits_its_own_events_and_those_naming_none() {
        let mut config = config();
        env(&mut config, "prod").token = value(TOKEN_A);
        let auth = build(&config);
        let Ok(Gate::Admitted(Method::Bearer, prod)) = auth.gate(
            None,
            &headers(&[("authorization", &format!("Bearer {TOKEN_A}"))]),
        ) else {
            panic!("prod's token admits");
        };
        assert_eq!(
            auth.scope(prod),
            &Scope::Environment {
                name: "prod".to_owned(),
                id: "us_env_prod".to_owned()
            }
        );
        assert!(auth.scope_admits(prod, Some("us_env_prod")));
        assert!(auth.scope_admits(prod, None));
        assert!(!auth.scope_admits(prod, Some("us_env_test")));
        assert!(
            auth.scope_admits(0, Some("us_env_test")),
            "[webhook]'s credentials admit any"
        );
        assert_eq!(
            auth.describe(),
            vec!["environment `prod` (us_env_prod): bearer token (1)".to_owned()]
        );
    }
}
