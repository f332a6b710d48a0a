//! `flatsync run`: the daemon as a service. It speaks systemd's notify protocol (READY,
//! WATCHDOG, STATUS, RELOADING, STOPPING), prints one JSON line on stdout once ready (its bound
//! addresses, for scripts), reloads its config when the file changes or on SIGHUP, and drains
//! on SIGTERM or SIGINT.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flatsync_core::{Config, ConfigError, EventStatus, Health, RunningDaemon, StateDb};
use notify::Watcher;
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// How long a burst of file events is collected before the config is read: editors write a
/// file in several steps (truncate, write, rename).
const SETTLE: Duration = Duration::from_millis(300);

/// How often `STATUS=` is refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

pub(crate) async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&config_path)?;
    let mut applied_text = std::fs::read(&config_path).ok();
    // Watched before the start, which can take a while (sinks, the state database's locks)
    // while the webhook port already accepts: a stop then ends the start (what was accepted is
    // stored), and a SIGHUP is a reload once it is over, not the end of the process.
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let started = tokio::select! {
        started = RunningDaemon::start(config) => started,
        _ = term.recv() => return stopped_while_starting("SIGTERM"),
        _ = interrupt.recv() => return stopped_while_starting("SIGINT"),
    };
    let daemon = started.with_context(|| format!("cannot start with {}", config_path.display()))?;
    notify(&[NotifyState::Ready, NotifyState::Status("Running")]);
    let ready = daemon.ready_info();
    announce_ready(&ready.to_json());
    tracing::info!(
        config = %config_path.display(),
        webhook = %address(ready.webhook),
        admin = %address(ready.admin),
        pid = ready.pid,
        daemon_id = %ready.daemon_id,
        "Flatsync running"
    );

    let health = daemon.health();
    tokio::spawn(watchdog(Arc::clone(&health)));
    // The status line counts every event the inbox kept, by status: only worth it when a
    // service manager listens for it.
    let status_task = std::env::var_os("NOTIFY_SOCKET")
        .is_some()
        .then(|| tokio::spawn(report_status(daemon.state().clone())));

    // One pending "changed" is all a reload needs: a burst of file events coalesces into it.
    let (file_events, mut file_changed) = mpsc::channel(1);
    // Kept alive for the life of the loop; dropping it stops the watch.
    let _watcher = match watch_config(&config_path, file_events) {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            tracing::warn!(
                config = %config_path.display(),
                error = %e,
                "Cannot watch the config file; reload with SIGHUP"
            );
            None
        }
    };

    let signal_name = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            () = daemon.lost_state_role() => break LOST_ROLE,
            _ = hangup.recv() => {
                tracing::info!("SIGHUP received, reloading the config");
                reload(&daemon, &config_path, &mut applied_text, true).await;
            }
            Some(()) = file_changed.recv() => {
                tokio::time::sleep(SETTLE).await;
                while file_changed.try_recv().is_ok() {}
                reload(&daemon, &config_path, &mut applied_text, false).await;
            }
        }
    };
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("Draining in-flight events"),
    ]);
    if let Some(status_task) = status_task {
        status_task.abort();
    }
    tracing::info!(signal = signal_name, "Stopping");
    let started = Instant::now();
    let report = daemon.shutdown().await;
    tracing::info!(
        in_flight = report.in_flight,
        cut_at_deadline = report.cut_at_deadline,
        seconds = started.elapsed().as_secs_f64(),
        "Stopped"
    );
    if signal_name == LOST_ROLE {
        // A failure, so that the service manager starts it again: as a standby.
        anyhow::bail!(
            "another daemon took over the shared state while this one was paused or cut off; \
             stopped so that it can start again as a standby"
        );
    }
    Ok(())
}

/// Why the main loop ended when another daemon took over the state.
const LOST_ROLE: &str = "lost the active role";

fn stopped_while_starting(signal_name: &str) -> anyhow::Result<()> {
    tracing::info!(
        signal = signal_name,
        "Stopped before the start was complete"
    );
    Ok(())
}

/// Prints the ready line on stdout, which `run` uses for nothing else, and flushes it: a script
/// reading the pipe gets it at once. A closed stdout is not a reason to stop.
fn announce_ready(line: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        tracing::warn!(error = %e, "Cannot print the ready line on stdout");
    }
}

/// A bound address for the log, `none` for a listener not configured.
fn address(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "none".to_owned(), |a| a.to_string())
}

/// Sends a notification to the service manager when there is one (`NOTIFY_SOCKET`).
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "Cannot notify the service manager");
    }
}

/// Pings the systemd watchdog only when the main loop's heartbeat moved, so a wedged loop (or
/// a state database that stopped answering) stops the pings and systemd restarts the service.
async fn watchdog(health: Arc<Health>) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    // Pinging at a quarter of the timeout keeps the interval under half of it even when a
    // heartbeat arrives just after the quarter passed.
    let period = timeout / 4;
    tracing::info!(
        timeout_secs = timeout.as_secs_f64(),
        "Watchdog enabled; pinging while the main loop runs"
    );
    let mut heartbeat = health.heartbeat();
    let mut last_ping: Option<Instant> = None;
    while heartbeat.changed().await.is_ok() {
        if last_ping.is_none_or(|at| at.elapsed() >= period) {
            notify(&[NotifyState::Watchdog]);
            last_ping = Some(Instant::now());
        }
    }
}

/// Keeps `STATUS=` a one-line summary of the inbox: the pending and failed events, each a
/// range of the status index. Not the done ones: the inbox keeps every event it settled, so
/// counting those every few seconds would cost more the longer the daemon runs.
async fn report_status(state: StateDb) {
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    loop {
        tick.tick().await;
        let counts = async {
            Ok::<_, flatsync_core::state::StateError>((
                state.count_with_status(EventStatus::Pending).await?,
                state.count_with_status(EventStatus::Failed).await?,
            ))
        };
        match counts.await {
            Ok((pending, failed)) => {
                let line = format!("Running: {pending} pending, {failed} failed events");
                notify(&[NotifyState::Status(&line)]);
            }
            Err(e) => tracing::warn!(error = %e, "Cannot read the inbox for the status line"),
        }
    }
}

/// How often the config file is looked at for an edit.
const CONFIG_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Watches the config file by looking at it every [`CONFIG_POLL_INTERVAL`] (its contents, not
/// only its time). An inotify watch would have to be on the file's folder, since editors and
/// config management replace the file by renaming a new one over it, and inotify reports every
/// open and write of every file in that folder: with a SQLite sink's database beside the
/// config, the watcher's thread and the kernel's notifications took a quarter of the daemon's
/// CPU (`BENCHMARKS.md`). Looking at one small file twice a second costs nothing, whatever
/// lies beside it.
fn watch_config(path: &Path, changed: mpsc::Sender<()>) -> notify::Result<notify::PollWatcher> {
    let config = notify::Config::default()
        .with_poll_interval(CONFIG_POLL_INTERVAL)
        .with_compare_contents(true);
    let mut watcher = notify::PollWatcher::new(
        move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(
                event.kind,
                notify::EventKind::Create(_) | notify::EventKind::Modify(_)
            ) {
                // Full means a reload is already due; closed means the daemon is stopping.
                let _ = changed.try_send(());
            }
        },
        config,
    )?;
    watcher.watch(path, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Validates the config file and applies it. A file that did not change since the last
/// attempt is left alone unless `forced` (SIGHUP), so a broken edit is reported once.
async fn reload(
    daemon: &RunningDaemon,
    path: &Path,
    applied_text: &mut Option<Vec<u8>>,
    forced: bool,
) {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) => {
            tracing::error!(config = %path.display(), error = %e, "Config reload failed; the running config stays");
            return;
        }
    };
    if !forced && applied_text.as_deref() == Some(text.as_slice()) {
        return;
    }
    *applied_text = Some(text);
    let monotonic = NotifyState::monotonic_usec_now().ok();
    let mut states = vec![NotifyState::Reloading];
    states.extend(monotonic);
    notify(&states);
    match Config::load(path) {
        Err(e) => log_config_error(&e),
        Ok(config) => match daemon.reload(config).await {
            Ok(summary) => {
                if !summary.needs_restart.is_empty() {
                    tracing::warn!(
                        settings = ?summary.needs_restart,
                        "Some changed settings take effect only after a restart"
                    );
                }
            }
            Err(e) => {
                tracing::error!(config = %path.display(), error = %e, "Config reload failed; the running config stays");
            }
        },
    }
    notify(&[NotifyState::Ready]);
}

fn log_config_error(e: &ConfigError) {
    let (line, column) = e.location.unzip();
    tracing::error!(
        file = %e.path.display(),
        line,
        column,
        key = %e.key.as_deref().unwrap_or("-"),
        error = %e.message,
        "Config reload rejected; the running config stays"
    );
}
