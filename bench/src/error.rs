//! What can stop a benchmark.

/// A step of the benchmark that failed; the message names the step and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file, directory or process could not be used.
    #[error("{what}: {source}")]
    Io {
        /// The step, e.g. `cannot start target/release/flatsync`.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A request to the daemon or the simulator failed or was answered unexpectedly.
    #[error("{what}: {message}")]
    Http {
        /// The request, e.g. `POST http://127.0.0.1:4242/flatfile/webhook`.
        what: String,
        /// The transport error, or the status and body.
        message: String,
    },
    /// A run did not go as the benchmark needs: a process exited, a wait ran out, a sink
    /// holds other rows than were sent.
    #[error("{0}")]
    Failed(String),
}

impl BenchError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}
