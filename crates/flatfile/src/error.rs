/// A failed Flatfile API call.
///
/// URLs in these errors never carry secrets: credentials travel in headers only, and base URLs
/// with a user name or password are refused when the client is built.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The call needs a credential that is not configured.
    #[error("no {which} is configured, and this Flatfile request needs it")]
    MissingCredential {
        /// Which credential and the setting that provides it, e.g.
        /// `legacy API key ([flatfile] legacy_api_key_env or legacy_api_key_file)`.
        which: &'static str,
    },
    /// A configured credential cannot be sent in an HTTP header (it contains control characters
    /// or non-ASCII text).
    #[error("the {which} cannot be sent in an HTTP header: {reason}")]
    InvalidCredential {
        /// Which credential.
        which: &'static str,
        /// What is wrong with it (never the value itself).
        reason: &'static str,
    },
    /// The server answered with an error status: a 4xx that retrying cannot fix, a redirect, or
    /// a 5xx/408/429 that persisted through every attempt.
    #[error("{method} {url} returned HTTP {status}{}", detail_suffix(.body))]
    Status {
        /// HTTP method.
        method: &'static str,
        /// Request URL.
        url: String,
        /// HTTP status code.
        status: u16,
        /// The server's error message(s) when the body is a known Flatfile error envelope
        /// (`{"errors":[{key,message}]}` or legacy `{statusCode,message,error}`), otherwise the
        /// start of the body; at most 512 bytes.
        body: String,
    },
    /// The request could not be completed (connection refused or reset, timeout, the body broke
    /// off) on every attempt.
    #[error("{method} {url} failed after {attempts} attempt(s): {message}")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// Request URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        message: String,
    },
    /// A 2xx response whose body is not the expected JSON shape on every attempt.
    #[error("unexpected response from {url}: {message}")]
    Decode {
        /// Request URL.
        url: String,
        /// What did not match.
        message: String,
    },
    /// A configured base URL, or an id that must become part of a URL, is unusable.
    #[error("invalid Flatfile API URL {url}: {message}")]
    InvalidUrl {
        /// The URL (user name and password removed).
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The caller asked for something this client refuses to send (e.g. more record ids than
    /// the API accepts in one request, or an empty id that would widen the selection to a whole
    /// sheet). No request was sent.
    #[error("invalid Flatfile request: {message}")]
    InvalidRequest {
        /// What is wrong and, where there is one, the limit that was exceeded.
        message: String,
    },
    /// The HTTP client could not be set up (e.g. the TLS backend failed to initialise).
    #[error("could not set up the HTTP client: {message}")]
    HttpClient {
        /// The underlying error.
        message: String,
    },
}

impl ApiError {
    /// Whether repeating the same call later cannot succeed without a change of configuration
    /// or data: bad credentials, URLs or requests, 4xx answers other than 408 and 429,
    /// redirects, and bodies that did not decode on any attempt (the API returns a shape this
    /// client does not understand). Server errors, rate limiting and transport errors are not
    /// permanent.
    pub fn is_permanent(&self) -> bool {
        match self {
            ApiError::MissingCredential { .. }
            | ApiError::InvalidCredential { .. }
            | ApiError::InvalidUrl { .. }
            | ApiError::InvalidRequest { .. }
            | ApiError::HttpClient { .. }
            | ApiError::Decode { .. } => true,
            ApiError::Status { status, .. } => !is_retryable_status(*status),
            ApiError::Transport { .. } => false,
        }
    }
}

/// Statuses worth repeating: the server or a proxy was busy or failing, not the request wrong.
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

fn detail_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

#[cfg(test)]
mod tests {
    use super::ApiError;

    fn status(status: u16, body: &str) -> ApiError {
        ApiError::Status {
            method: "GET",
            url: "https://api.example/v1/sheets/us_sh_1".to_owned(),
            status,
            body: body.to_owned(),
        }
    }

    #[test]
    fn status_display_includes_the_server_message_when_there_is_one() {
        assert_eq!(
            status(404, "sheetId: Sheet us_sh_1 not found").to_string(),
            "GET https://api.example/v1/sheets/us_sh_1 returned HTTP 404: sheetId: Sheet us_sh_1 not found"
        );
        assert_eq!(
            status(502, "").to_string(),
            "GET https://api.example/v1/sheets/us_sh_1 returned HTTP 502"
        );
    }

    #[test]
    fn permanence_follows_the_status() {
        assert!(status(400, "").is_permanent());
        assert!(status(401, "").is_permanent());
        assert!(status(404, "").is_permanent());
        assert!(status(301, "").is_permanent());
        assert!(!status(408, "").is_permanent());
        assert!(!status(429, "").is_permanent());
        assert!(!status(500, "").is_permanent());
        assert!(!status(503, "").is_permanent());
        assert!(
            ApiError::MissingCredential {
                which: "secret key"
            }
            .is_permanent()
        );
        assert!(
            !ApiError::Transport {
                method: "GET",
                url: String::new(),
                attempts: 8,
                message: String::new()
            }
            .is_permanent()
        );
    }
}
