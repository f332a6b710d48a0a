use std::fmt;

/// A secret (API key, bearer token) read from an environment variable or a file.
///
/// `Debug` and `Display` print `<redacted>`, so a secret inside a config struct cannot leak into
/// logs or error messages by accident. Only [`Secret::expose`] gives the value, and the client
/// calls it only to build a request header.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`. Surrounding whitespace (a trailing newline from a key file) is ignored when
    /// the secret is put into a header.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret value. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn debug_and_display_hide_the_value() {
        let secret = Secret::new("sk_live_123".to_owned());
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(secret.to_string(), "<redacted>");
        assert_eq!(secret.expose(), "sk_live_123");
    }
}
