//! The daemon's lifecycle: start every part from a config, reload a changed config without
//! dropping accepted work, and drain on shutdown. `sinks` and `clients` build the parts a config
//! names; `listener` serves both HTTP listeners and `admin` is the health and metrics one.

pub(crate) mod admin;
mod clients;
pub(crate) mod listener;
pub(crate) mod presence;
mod ready_file;
mod sinks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use flatsync_flatfile::ApiError;
use flatsync_plugin_host::{LoadError, SinkError, SinkWorker};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use clients::flatfile_client;
pub(crate) use clients::flatfile_clients;
pub use presence::{DaemonState, ReadyInfo};
pub(crate) use sinks::start_sinks_reusing;
pub use sinks::{InProcessPlugins, load_sink_plugin, start_sinks};

use crate::config::{self, Config};
use crate::health::Health;
use crate::metrics;
use crate::pipeline::dispatch::DrainReport;
use crate::pipeline::{dispatch, engine as pipeline};
use crate::source::webhook::auth as webhook_auth;
use crate::source::webhook::auth::WebhookAuthError;
use crate::source::{poll, webhook};
use crate::state::{StateDb, StateError};
use flatsync_plugin_api::FlatsyncPlugin;

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state database could not be opened.
    #[error(transparent)]
    State(#[from] StateError),
    /// A sink's plugin could not be found or loaded.
    #[error("sink `{sink}`: {error}")]
    Plugin {
        /// Sink name from the config.
        sink: String,
        /// What went wrong.
        error: LoadError,
    },
    /// A sink instance could not be created.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The webhook listener could not bind.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The I/O error.
        error: std::io::Error,
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
    /// A webhook credential is missing, unreadable or unusable.
    #[error("webhook authentication: {0}")]
    WebhookAuth(#[from] WebhookAuthError),
    /// `[daemon] ready_file` could not be written.
    #[error("cannot write daemon.ready_file {path}: {error}")]
    ReadyFile {
        /// The configured file.
        path: std::path::PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// The webhook credentials `config` configures, one line per scope (`any environment: bearer
/// token (2)`), after reading and checking every secret as `flatsync run` would: what
/// `flatsync check` prints. Empty when the listener would be open.
pub fn webhook_auth_summary(config: &Config) -> Result<Vec<String>, WebhookAuthError> {
    Ok(webhook_auth::WebhookAuth::from_config(config)?.describe())
}

/// How long sinks still get to be destroyed after a drain that used its whole deadline.
const SINK_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Builds a [`RunningDaemon`], with sinks that run inside this program when wanted.
///
/// ```no_run
/// # async fn run(my_sink: &'static flatsync_core::FlatsyncPlugin) -> Result<(), Box<dyn std::error::Error>> {
/// let config = flatsync_core::Config::parse(
///     r#"
///     [daemon]
///     state_dir = "/var/lib/my-service/flatsync"
///     [webhook]
///     listen = "127.0.0.1:8787"
///     [sinks.mine]
///     plugin = "my-sink"
///     [[routes]]
///     topics = ["*"]
///     sinks = ["mine"]
///     "#,
///     "<embedded>".as_ref(),
/// )?;
/// // `my_sink` comes from `flatsync_plugin_sdk::in_process::<MySink>("my-sink")`.
/// let daemon = flatsync_core::DaemonBuilder::new(config).plugin("my-sink", my_sink).start().await?;
/// daemon.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DaemonBuilder {
    config: Config,
    in_process: InProcessPlugins,
}

impl DaemonBuilder {
    /// Starts from a validated config ([`Config::load`] for a file, [`Config::parse`] for text).
    pub fn new(config: Config) -> DaemonBuilder {
        DaemonBuilder {
            config,
            in_process: BTreeMap::new(),
        }
    }

    /// Registers a sink plugin compiled into this program under `name`, which the config's
    /// `plugin = "..."` then names. Build the descriptor with `flatsync_plugin_sdk::in_process`.
    pub fn plugin(mut self, name: &str, descriptor: &'static FlatsyncPlugin) -> DaemonBuilder {
        self.in_process.insert(name.to_owned(), descriptor);
        self
    }

    /// Starts the daemon; see [`RunningDaemon::start`].
    pub async fn start(self) -> Result<RunningDaemon, StartError> {
        RunningDaemon::start_with(self.config, self.in_process).await
    }
}

/// What a [`RunningDaemon::reload`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Sinks started for the new config.
    pub sinks_added: Vec<String>,
    /// Sinks whose plugin or config changed: a new instance serves new events.
    pub sinks_changed: Vec<String>,
    /// Sinks no longer configured; their instances end once in-flight events finish.
    pub sinks_removed: Vec<String>,
    /// Settings that differ but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// A running flatsync instance: webhook listener, dispatcher and sink workers.
#[derive(Debug)]
pub struct RunningDaemon {
    /// Who this daemon is and where its listeners are bound.
    ready: ReadyInfo,
    /// `[daemon] ready_file` as it was at start; a reload does not move it.
    ready_file: Option<std::path::PathBuf>,
    /// Keeps the daemon's row in the state fresh; aborted when it stops.
    presence: JoinHandle<()>,
    state: StateDb,
    health: Arc<Health>,
    /// Turns true when a stop begins: the dispatcher drains.
    drain: watch::Sender<bool>,
    dispatcher: JoinHandle<DrainReport>,
    /// Polls the events API of environments with `poll = true`; ends when the drain begins.
    poller: JoinHandle<()>,
    /// Turns true once draining is over: the listeners close.
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    engine: pipeline::EngineSlot,
    /// The webhook credentials in force; `reload` swaps them.
    webhook_auth: webhook::AuthSlot,
    in_process: InProcessPlugins,
    reload_lock: tokio::sync::Mutex<()>,
}

impl RunningDaemon {
    /// Opens the state database, starts every sink, binds the webhook listener and resumes any
    /// pending events. Returns once the listener accepts connections, the daemon is recorded
    /// in the state database and `[daemon] ready_file`, if set, is written.
    pub async fn start(config: Config) -> Result<RunningDaemon, StartError> {
        RunningDaemon::start_with(config, BTreeMap::new()).await
    }

    async fn start_with(
        config: Config,
        in_process: InProcessPlugins,
    ) -> Result<RunningDaemon, StartError> {
        let config = Arc::new(config);
        if config.admin.is_some()
            && let Err(e) = metrics::install()
        {
            tracing::warn!(error = %e, "Metrics are not available on the admin listener");
        }
        let location = config
            .daemon
            .state_location()
            .map_err(|message| StartError::Secret {
                what: "state database",
                message,
            })?;
        let state = StateDb::open_at(&location)?;
        let clients = flatfile_clients(&config)?;
        let auth = webhook_auth::WebhookAuth::from_config(&config)?;
        let auth_summary = auth.describe();
        let webhook_auth: webhook::AuthSlot = Arc::new(std::sync::RwLock::new(Arc::new(auth)));
        let sinks = start_sinks(&config, &in_process).await?;
        let health = Arc::new(Health::default());
        let (stop, stop_rx) = watch::channel(false);
        let (drain, drain_rx) = watch::channel(false);
        let (accepted_tx, accepted_rx) = dispatch::AcceptedTx::channel();
        let listeners = Listeners::start(
            &config,
            &state,
            &webhook_auth,
            &auth_summary,
            &accepted_tx,
            &health,
            stop_rx,
        )
        .await;
        let started = match listeners {
            Ok(listeners) => listeners.register(&config, &state).await,
            Err(e) => Err(e),
        };
        let (listeners, ready) = match started {
            Ok(started) => started,
            Err(e) => {
                // Stops a listener already serving, if any.
                let _ = stop.send(true);
                shut_down_sinks(&sinks).await;
                return Err(e);
            }
        };

        let engine = Arc::new(pipeline::Engine {
            config: Arc::clone(&config),
            state: state.clone(),
            clients,
            sinks,
            health: Arc::clone(&health),
        });
        let slot: pipeline::EngineSlot = Arc::new(std::sync::RwLock::new(engine));
        let (poller, dispatcher) =
            spawn_workers(&slot, &state, &health, (accepted_tx, accepted_rx), drain_rx);
        let presence = presence::spawn(&state, &ready, &health);
        health.set_ready();
        RunningDaemon {
            ready,
            ready_file: config.daemon.ready_file.clone(),
            presence,
            state,
            health,
            drain,
            dispatcher,
            poller,
            stop,
            servers: listeners.servers,
            engine: slot,
            webhook_auth,
            in_process,
            reload_lock: tokio::sync::Mutex::new(()),
        }
        .announce()
        .await
    }

    /// Writes `[daemon] ready_file` when one is set; a daemon that cannot is stopped again,
    /// since a script waiting for the file would wait forever.
    async fn announce(self) -> Result<RunningDaemon, StartError> {
        let Some(path) = self.ready_file.clone() else {
            return Ok(self);
        };
        match ready_file::write(&path, &self.ready) {
            Ok(()) => Ok(self),
            Err(error) => {
                self.shutdown().await;
                Err(StartError::ReadyFile { path, error })
            }
        }
    }

    /// Where the webhook listener is bound, when there is one: with `listen = "127.0.0.1:0"`,
    /// the port the system chose.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.ready.webhook
    }

    /// Where the admin listener (`/healthz`, `/readyz`, `/metrics`) is bound, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.ready.admin
    }

    /// What the daemon announces once ready: its id, pid, version and bound addresses, as
    /// `flatsync run` prints them on stdout and `[daemon] ready_file` holds them.
    pub fn ready_info(&self) -> &ReadyInfo {
        &self.ready
    }

    /// The state database.
    pub fn state(&self) -> &StateDb {
        &self.state
    }

    /// Resolves when another daemon took over this daemon's shared state (it was paused or cut
    /// off past `[daemon] state_lease_secs`): everything it would still write is refused,
    /// so it should stop; started again, it stands by.
    pub async fn lost_state_role(&self) {
        self.state.role_lost().await;
    }

    /// Liveness and readiness: what a service manager's watchdog and a load balancer's
    /// health check look at.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// The config new events are processed with.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&pipeline::current(&self.engine).config)
    }

    /// Applies a new config without stopping: routes, sinks and Flatfile settings take effect
    /// for events that start after this returns; events already being delivered finish with the
    /// config and sink instances they started with, so nothing is lost or duplicated. Sinks
    /// whose plugin and config are unchanged keep their instance.
    ///
    /// Everything new is started before anything is swapped: if a sink fails to start or a
    /// secret cannot be read, the error is returned and the running config stays as it was.
    /// Settings that need a restart (`[daemon] state_dir`, `max_concurrent_events` and
    /// `ready_file`, `[webhook]` `listen`, `path`, `max_body_bytes` and the listener limits,
    /// the `[admin]` section) are listed in the summary and left as they were. Webhook
    /// credentials are read again and replaced for the requests that arrive after this returns.
    pub async fn reload(&self, config: Config) -> Result<ReloadSummary, StartError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let old = pipeline::current(&self.engine);
        let mut summary = ReloadSummary::default();
        let config = keep_start_settings(config, &old.config, &mut summary);

        let clients = flatfile_clients(&config)?;
        // Read before anything starts: an unreadable or invalid secret leaves everything as it
        // was, the old credentials included.
        let auth = Arc::new(webhook_auth::WebhookAuth::from_config(&config)?);
        let reuse = reusable_sinks(&config, &old, &mut summary);
        let sinks = start_sinks_reusing(&config, &self.in_process, reuse).await?;
        let engine = Arc::new(pipeline::Engine {
            config: Arc::new(config),
            state: self.state.clone(),
            clients,
            sinks,
            health: Arc::clone(&self.health),
        });
        *self
            .engine
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = engine;
        let auth_summary = auth.describe();
        *self
            .webhook_auth
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = auth;
        tracing::info!(
            added = ?summary.sinks_added,
            changed = ?summary.sinks_changed,
            removed = ?summary.sinks_removed,
            needs_restart = ?summary.needs_restart,
            webhook_auth = ?auth_summary,
            "Config reloaded"
        );
        Ok(summary)
    }

    /// Stops gracefully: webhooks are answered 503 with `Retry-After` from now on, no new
    /// event starts, events in flight pause at their next batch boundary after a flush and a
    /// checkpoint, and whatever still runs when `[daemon] drain_timeout_secs` is up is cut at
    /// its last checkpoint. Then the listeners close and the sink instances are destroyed, all
    /// by that same deadline (or 1 s after the drain when it used the whole deadline): a sink
    /// whose thread is stuck inside a plugin call is left behind, since it cannot be
    /// interrupted, and the process exits anyway.
    /// Nothing accepted is lost: paused and cut events resume on the next start, and sinks
    /// skip the batches they already hold.
    ///
    /// `[daemon] ready_file` is removed as the stop begins; once everything is stopped, the
    /// daemon's row in the state database is marked stopped.
    pub async fn shutdown(self) -> DrainReport {
        let drain_deadline = tokio::time::Instant::now()
            + pipeline::current(&self.engine).config.daemon.drain_timeout;
        if let Some(path) = &self.ready_file {
            ready_file::remove(path, &self.ready);
        }
        self.health.set_draining();
        let _ = self.drain.send(true);
        if let Err(e) = self.poller.await {
            tracing::error!(error = %e, "Poller ended abnormally");
        }
        let report = match self.dispatcher.await {
            Ok(report) => report,
            Err(e) => {
                tracing::error!(error = %e, "Dispatcher ended abnormally");
                DrainReport::default()
            }
        };
        let _ = self.stop.send(true);
        for server in self.servers {
            let _ = server.await;
        }
        // A thread stuck inside a plugin call cannot be joined, and waiting a whole call
        // timeout for it would outlast the drain deadline the operator set: every sink gets
        // until that deadline (a moment more when the drain used it up, so idle sinks are
        // still destroyed), all at once, and a thread still busy then is left behind.
        let sinks_deadline = drain_deadline.max(tokio::time::Instant::now() + SINK_STOP_GRACE);
        let engine = pipeline::current(&self.engine);
        futures_util::future::join_all(
            engine
                .sinks
                .values()
                .map(|sink| sink.shutdown_by(sinks_deadline)),
        )
        .await;
        self.presence.abort();
        if let Err(e) = self
            .state
            .mark_daemon_stopped(&self.ready.daemon_id, crate::state::now_ms())
            .await
        {
            tracing::warn!(error = %e, "Cannot record in the state database that the daemon stopped");
        }
        report
    }
}

/// Starts the poller and the dispatcher. On a shared PostgreSQL state every daemon works on
/// events (each claimed by one at a time); only the one holding the active role polls and
/// writes grouped event rows.
fn spawn_workers(
    slot: &pipeline::EngineSlot,
    state: &StateDb,
    health: &Arc<Health>,
    (accepted_tx, accepted_rx): (
        dispatch::AcceptedTx,
        tokio::sync::mpsc::Receiver<dispatch::Accepted>,
    ),
    drain: watch::Receiver<bool>,
) -> (JoinHandle<()>, JoinHandle<DrainReport>) {
    let active = active_role(state, &drain);
    let poller = {
        let (slot, mut active, mut drain) = (Arc::clone(slot), active.clone(), drain.clone());
        tokio::spawn(async move {
            if dispatch::until_active(&mut active, &mut drain).await {
                poll::run(slot, accepted_tx, drain).await;
            }
        })
    };
    let dispatcher = tokio::spawn(dispatch::dispatch(
        Arc::clone(slot),
        accepted_rx,
        drain,
        Arc::clone(health),
        active,
    ));
    (poller, dispatcher)
}

/// Turns true once this daemon holds the active role on its state (at once on SQLite).
fn active_role(state: &StateDb, drain: &watch::Receiver<bool>) -> watch::Receiver<bool> {
    let (active, active_rx) = watch::channel(false);
    let (state, mut drain) = (state.clone(), drain.clone());
    tokio::spawn(async move {
        if state.wait_for_role(&mut drain).await {
            active.send_replace(true);
            state.keep_role(&mut drain).await;
        }
    });
    active_rx
}

/// The HTTP listeners a config asks for, bound and serving.
struct Listeners {
    webhook_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    servers: Vec<JoinHandle<()>>,
}

impl Listeners {
    /// Binds and serves the webhook listener, then the admin one, until `stop` turns true.
    /// On an error the caller stops the ones already serving.
    async fn start(
        config: &Config,
        state: &StateDb,
        webhook_auth: &webhook::AuthSlot,
        auth_summary: &[String],
        accepted: &dispatch::AcceptedTx,
        health: &Arc<Health>,
        stop: watch::Receiver<bool>,
    ) -> Result<Listeners, StartError> {
        let mut listeners = Listeners {
            webhook_addr: None,
            admin_addr: None,
            servers: Vec::new(),
        };
        if let Some(webhook) = &config.webhook {
            let webhook_state = webhook::WebhookState {
                path: webhook.path.clone(),
                auth: Arc::clone(webhook_auth),
                max_body_bytes: webhook.max_body_bytes,
                body_timeout: webhook.body_timeout,
                health: Arc::clone(health),
                inbox: webhook::commit::start(state.clone(), accepted.clone()),
            };
            let (addr, server) =
                serve_webhook(webhook, webhook_state, auth_summary, stop.clone()).await?;
            listeners.servers.push(server);
            listeners.webhook_addr = Some(addr);
        }
        if let Some(admin) = &config.admin {
            let admin_state = admin::AdminState {
                db: state.clone(),
                health: Arc::clone(health),
            };
            let (addr, server) = serve_admin(admin, admin_state, stop).await?;
            listeners.servers.push(server);
            listeners.admin_addr = Some(addr);
        }
        Ok(listeners)
    }

    /// Records the daemon in the state database, with the addresses these listeners are bound
    /// to.
    async fn register(
        self,
        config: &Config,
        state: &StateDb,
    ) -> Result<(Listeners, ReadyInfo), StartError> {
        let ready = ReadyInfo::new(&config.daemon.state_dir, self.webhook_addr, self.admin_addr);
        presence::register(state, &ready).await?;
        Ok((self, ready))
    }
}

/// Binds the webhook listener and serves it until `stop` turns true; returns where it is bound.
/// A bind failure is returned as it is: the caller stops what it started before.
async fn serve_webhook(
    webhook: &config::WebhookConfig,
    webhook_state: webhook::WebhookState,
    auth_summary: &[String],
    stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), StartError> {
    let listener = tokio::net::TcpListener::bind(webhook.listen)
        .await
        .map_err(|error| StartError::Bind {
            addr: webhook.listen,
            error,
        })?;
    let addr = listener.local_addr().map_err(|error| StartError::Bind {
        addr: webhook.listen,
        error,
    })?;
    let app = webhook::router(Arc::new(webhook_state));
    if auth_summary.is_empty() && !addr.ip().is_loopback() {
        tracing::warn!(
            addr = %addr,
            "Webhook listener is open to the network: no sender credential is configured"
        );
    }
    // No grace: connections with a request in progress finish it (the limits bound
    // how long that takes), so no accepted webhook goes unanswered.
    let server = tokio::spawn(listener::serve(
        listener,
        app,
        webhook.limits,
        "webhook",
        stop,
        None,
    ));
    tracing::info!(
        addr = %addr,
        path = %webhook.path,
        auth = ?auth_summary,
        max_connections = webhook.limits.max_connections,
        "Webhook listener ready"
    );
    Ok((addr, server))
}

/// Binds the admin listener and serves it until `stop` turns true; returns where it is bound.
async fn serve_admin(
    admin: &config::AdminConfig,
    admin_state: admin::AdminState,
    stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), StartError> {
    let bound = match tokio::net::TcpListener::bind(admin.listen).await {
        Ok(listener) => listener.local_addr().map(|addr| (listener, addr)),
        Err(e) => Err(e),
    };
    let (listener, addr) = bound.map_err(|error| StartError::Bind {
        addr: admin.listen,
        error,
    })?;
    let server = tokio::spawn(admin::serve(listener, admin_state, admin.limits, stop));
    Ok((addr, server))
}

/// Stops the sinks of a start that failed part way.
async fn shut_down_sinks(sinks: &BTreeMap<String, SinkWorker>) {
    for worker in sinks.values() {
        worker.shutdown().await;
    }
}

/// `config` with the settings only a restart applies (`[daemon] state_dir`,
/// `max_concurrent_events` and `ready_file`, the `[webhook]` listener, `[admin]`) put back as
/// `old` has them; each one that differed is listed in `summary`.
fn keep_start_settings(mut config: Config, old: &Config, summary: &mut ReloadSummary) -> Config {
    if config.daemon.state_dir != old.daemon.state_dir {
        summary.needs_restart.push("daemon.state_dir");
    }
    let postgres = |c: &Config| c.daemon.state_postgres.as_ref().map(|pg| pg.describe());
    if postgres(&config) != postgres(old) {
        summary.needs_restart.push("daemon.state_url");
    }
    if config.daemon.max_concurrent_events != old.daemon.max_concurrent_events {
        summary.needs_restart.push("daemon.max_concurrent_events");
    }
    if config.daemon.ready_file != old.daemon.ready_file {
        summary.needs_restart.push("daemon.ready_file");
    }
    // The listener's address, path and limits are bound at start; its credentials are
    // re-read on every reload, so a secret can be rotated without a restart.
    let listener = |w: &config::WebhookConfig| {
        (
            w.listen,
            w.path.clone(),
            w.max_body_bytes,
            w.body_timeout,
            w.limits,
        )
    };
    let webhook_kept = match (&config.webhook, &old.webhook) {
        (Some(new), Some(old)) => {
            if listener(new) != listener(old) {
                summary.needs_restart.push("webhook");
            }
            true
        }
        (None, None) => true,
        _ => {
            summary.needs_restart.push("webhook");
            false
        }
    };
    if config.admin != old.admin {
        summary.needs_restart.push("admin");
    }
    config.daemon.state_dir = old.daemon.state_dir.clone();
    config.daemon.state_postgres = old.daemon.state_postgres.clone();
    config.daemon.max_concurrent_events = old.daemon.max_concurrent_events;
    config.daemon.ready_file = old.daemon.ready_file.clone();
    match (&mut config.webhook, &old.webhook) {
        (Some(new), Some(old)) if webhook_kept => {
            new.listen = old.listen;
            new.path = old.path.clone();
            new.max_body_bytes = old.max_body_bytes;
            new.body_timeout = old.body_timeout;
            new.limits = old.limits;
        }
        _ => config.webhook = old.webhook.clone(),
    }
    config.admin = old.admin.clone();
    config
}

/// The running sink instances the new config can keep: same plugin, same config, not stalled.
/// Sinks added and changed are listed in `summary`, and so are the removed ones.
fn reusable_sinks(
    config: &Config,
    old: &pipeline::Engine,
    summary: &mut ReloadSummary,
) -> BTreeMap<String, SinkWorker> {
    let mut reuse = BTreeMap::new();
    for (name, sink) in &config.sinks {
        match (old.config.sinks.get(name), old.sinks.get(name)) {
            (Some(before), Some(worker))
                if before.plugin == sink.plugin
                    && before.config_json == sink.config_json
                    && !worker.is_stalled() =>
            {
                reuse.insert(name.clone(), worker.clone());
            }
            (Some(_), _) => summary.sinks_changed.push(name.clone()),
            (None, _) => summary.sinks_added.push(name.clone()),
        }
    }
    summary.sinks_removed = old
        .config
        .sinks
        .keys()
        .filter(|name| !config.sinks.contains_key(*name))
        .cloned()
        .collect();
    reuse
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn config(daemon: &str) -> Config {
        Config::parse(
            &format!("[daemon]\nstate_dir = \"/var/lib/flatsync\"\n{daemon}\n"),
            Path::new("/etc/flatsync/config.toml"),
        )
        .expect("valid config")
    }

    #[test]
    fn a_changed_ready_file_waits_for_a_restart() {
        let old = config("ready_file = \"/run/flatsync/ready.json\"");
        for new in [config("ready_file = \"/run/other.json\""), config("")] {
            let mut summary = ReloadSummary::default();
            let kept = keep_start_settings(new, &old, &mut summary);
            assert_eq!(summary.needs_restart, ["daemon.ready_file"]);
            assert_eq!(
                kept.daemon.ready_file,
                Some(PathBuf::from("/run/flatsync/ready.json")),
                "the running daemon keeps the file it wrote"
            );
        }
        let mut summary = ReloadSummary::default();
        keep_start_settings(old.clone(), &old, &mut summary);
        assert!(summary.needs_restart.is_empty(), "{summary:?}");
    }
}
