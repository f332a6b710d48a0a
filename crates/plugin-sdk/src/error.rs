//! The error a sink returns from its trait methods.

use std::fmt::Display;

/// Whether the host should try the same call again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The failure may pass (a busy database, a full disk being cleaned up): the host backs off
    /// and repeats the same call with the same bytes.
    Retry,
    /// The failure is permanent: the host stops using the instance.
    Fatal,
}

/// An error returned by a [`Sink`](crate::Sink) method, carried to the host as
/// [`STATUS_RETRY`](crate::abi::STATUS_RETRY) or [`STATUS_FATAL`](crate::abi::STATUS_FATAL)
/// plus the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    kind: ErrorKind,
    message: String,
}

impl SinkError {
    /// A failure the host should retry after a back-off.
    pub fn retry(message: impl Display) -> Self {
        Self {
            kind: ErrorKind::Retry,
            message: message.to_string(),
        }
    }

    /// A failure that stops the instance.
    pub fn fatal(message: impl Display) -> Self {
        Self {
            kind: ErrorKind::Fatal,
            message: message.to_string(),
        }
    }

    /// Retry or fatal.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True when the host should retry the call.
    pub fn is_retry(&self) -> bool {
        self.kind == ErrorKind::Retry
    }

    /// The message the host logs.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with `context: `, keeping the kind.
    #[must_use]
    pub fn context(mut self, context: impl Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}
