//! `[daemon]`: the state folder, plugins, concurrency, checkpoints, sink call limits and the
//! ready file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Parser};

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
    /// Where the daemon writes the JSON of its start line once it is ready (bound addresses,
    /// pid); removed when it stops cleanly. `None`: no file.
    pub ready_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
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
    ready_file: Option<Spanned<PathBuf>>,
}

pub(super) fn parse(raw: RawDaemon, p: &Parser<'_>) -> Result<DaemonConfig, ConfigError> {
    Ok(DaemonConfig {
        state_dir: p.absolute(
            raw.state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/flatsync")),
        ),
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
}
