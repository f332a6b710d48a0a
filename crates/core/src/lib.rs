//! flatsync's core: configuration, the state database, the webhook source, routing and the
//! delivery pipeline. The `flatsync` binary is a thin CLI over this crate, and a Rust program
//! can run a daemon in-process with [`RunningDaemon::start`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = flatsync_core::Config::load("/etc/flatsync/config.toml".as_ref())?;
//! let daemon = flatsync_core::RunningDaemon::start(config).await?;
//! // ... serve until told to stop ...
//! daemon.shutdown().await;
//! # Ok(()) }
//! ```

pub mod config;
mod pipeline;
pub mod route;
pub mod state;
mod webhook;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use flatsync_flatfile::{ApiError, ClientConfig, FlatfileClient, RetryPolicy};
use flatsync_plugin_host::{LoadError, LoadedPlugin, SinkError, SinkOptions, SinkWorker};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use config::{Config, ConfigError, SecretSource};
pub use flatsync_flatfile::Secret;
pub use pipeline::LEGACY_KIND;
pub use state::{EventStatus, StateDb, StateError};

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state database could not be opened.
    #[error(transparent)]
    State(#[from] StateError),
    /// A sink's plugin could not be found or loaded.
    #[error("sink `{sink}`: {source}")]
    Plugin {
        /// Sink name from the config.
        sink: String,
        /// What went wrong.
        #[source]
        source: LoadError,
    },
    /// A sink instance could not be created.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The webhook listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A secret the config requires is missing or unreadable.
    #[error("{what}: {message}")]
    Secret {
        /// Which secret, by config key.
        what: &'static str,
        /// What is wrong, never the secret itself.
        message: String,
    },
    /// The Flatfile client could not be built.
    #[error("Flatfile client: {0}")]
    Client(#[from] ApiError),
}

/// Loads every configured sink's plugin and creates its instance on its own thread.
pub async fn start_sinks(config: &Config) -> Result<BTreeMap<String, SinkWorker>, StartError> {
    let dirs = flatsync_plugin_host::default_search_dirs(config.daemon.plugin_dir.as_deref());
    let options = SinkOptions {
        call_timeout: config.daemon.sink_call_timeout,
        ..SinkOptions::default()
    };
    let mut workers = BTreeMap::new();
    for (name, sink) in &config.sinks {
        let plugin_error = |source| StartError::Plugin {
            sink: name.clone(),
            source,
        };
        let path =
            flatsync_plugin_host::resolve_plugin(&sink.plugin, &dirs).map_err(plugin_error)?;
        let expected = (!sink.plugin.contains('/') && !sink.plugin.ends_with(".so"))
            .then_some(sink.plugin.as_str());
        let plugin = LoadedPlugin::load(&path, expected).map_err(plugin_error)?;
        tracing::info!(
            sink = %name,
            plugin = %plugin.name(),
            version = %plugin.version(),
            path = %plugin.path().display(),
            "Plugin loaded"
        );
        let worker = match SinkWorker::spawn(
            plugin,
            name,
            sink.config_json.clone(),
            options.clone(),
        )
        .await
        {
            Ok(worker) => worker,
            Err(e) => {
                for started in workers.values() {
                    SinkWorker::shutdown(started).await;
                }
                return Err(e.into());
            }
        };
        workers.insert(name.clone(), worker);
    }
    Ok(workers)
}

fn read_secret(
    source: Option<&config::SecretSource>,
    what: &'static str,
) -> Result<Option<Secret>, StartError> {
    match source {
        None => Ok(None),
        Some(source) => source
            .read()
            .map_err(|message| StartError::Secret { what, message }),
    }
}

/// Builds the Flatfile API client from the config, reading its secrets.
pub fn flatfile_client(config: &Config) -> Result<FlatfileClient, StartError> {
    let legacy_api_key = read_secret(
        config.flatfile.legacy_api_key.as_ref(),
        "flatfile.legacy_api_key",
    )?;
    let secret_key = read_secret(config.flatfile.secret_key.as_ref(), "flatfile.secret_key")?;
    for (value, source, what) in [
        (
            &legacy_api_key,
            &config.flatfile.legacy_api_key,
            "legacy API key",
        ),
        (
            &secret_key,
            &config.flatfile.secret_key,
            "Platform secret key",
        ),
    ] {
        if let (None, Some(source)) = (value, source) {
            tracing::warn!(source = %source.describe(), "The {what} is not set; fetches that need it will fail");
        }
    }
    let client = FlatfileClient::new(ClientConfig {
        legacy_api_url: config.flatfile.legacy_api_url.clone(),
        legacy_api_key,
        api_url: config.flatfile.api_url.clone(),
        secret_key,
        request_timeout: config.flatfile.request_timeout,
        connect_timeout: std::time::Duration::from_secs(10),
        retry: RetryPolicy {
            max_attempts: config.flatfile.max_attempts,
            ..RetryPolicy::default()
        },
    })?;
    Ok(client)
}

/// A running flatsync instance: webhook listener, dispatcher and sink workers.
#[derive(Debug)]
pub struct RunningDaemon {
    webhook_addr: Option<SocketAddr>,
    state: StateDb,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    sinks: Vec<SinkWorker>,
}

impl RunningDaemon {
    /// Opens the state database, starts every sink, binds the webhook listener and resumes any
    /// pending events. Returns once the listener accepts connections.
    pub async fn start(config: Config) -> Result<RunningDaemon, StartError> {
        let config = Arc::new(config);
        let state = StateDb::open(&config.daemon.state_dir)?;
        let client = flatfile_client(&config)?;
        let token = match &config.webhook {
            Some(webhook) => match &webhook.token {
                Some(source) => {
                    Some(read_secret(Some(source), "webhook.token")?.ok_or_else(|| {
                        StartError::Secret {
                            what: "webhook.token",
                            message: format!("{} is not set or empty", source.describe()),
                        }
                    })?)
                }
                None => None,
            },
            None => None,
        };
        let sinks = start_sinks(&config).await?;
        let workers: Vec<SinkWorker> = sinks.values().cloned().collect();
        let (stop, stop_rx) = watch::channel(false);
        let (accepted_tx, accepted_rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();

        let mut webhook_addr = None;
        if let Some(webhook) = &config.webhook {
            let listener = tokio::net::TcpListener::bind(webhook.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: webhook.listen,
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                addr: webhook.listen,
                source,
            })?;
            let app = webhook::router(
                &webhook.path,
                Arc::new(webhook::WebhookState {
                    db: state.clone(),
                    token,
                    max_body_bytes: webhook.max_body_bytes,
                    accepted: accepted_tx.clone(),
                }),
            );
            let mut stop_server = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop_server.changed().await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "Webhook server stopped");
                }
            }));
            tracing::info!(addr = %addr, path = %webhook.path, "Webhook listener ready");
            webhook_addr = Some(addr);
        }

        let engine = Arc::new(pipeline::Engine {
            config: Arc::clone(&config),
            state: state.clone(),
            client,
            sinks,
        });
        tasks.push(tokio::spawn(pipeline::dispatch(
            engine,
            accepted_rx,
            stop_rx,
        )));
        drop(accepted_tx);
        Ok(RunningDaemon {
            webhook_addr,
            state,
            stop,
            tasks,
            sinks: workers,
        })
    }

    /// Where the webhook listener is bound, when there is one.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook_addr
    }

    /// The state database.
    pub fn state(&self) -> &StateDb {
        &self.state
    }

    /// Stops intake and processing, then destroys the sink instances. Work in progress is left
    /// at its last checkpoint and resumes on the next start.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        for sink in &self.sinks {
            sink.shutdown().await;
        }
    }
}
