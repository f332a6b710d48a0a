//! The daemon's presence in the state database (`state::daemons`) and in the ready line: who
//! it is (a random id per start, pid, host, version), where its listeners are bound, and that
//! it still runs. `flatsync status` reads the rows back and tells running daemons from
//! stopped and gone ones ([`DaemonState`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::health::Health;
use crate::state::{
    DAEMON_RETENTION, DAEMON_TOUCH_INTERVAL, DaemonRecord, StateDb, StateError, now_ms,
};

/// What a daemon announces once it is ready: the JSON line `flatsync run` prints on stdout
/// and `[daemon] ready_file` holds. A stable interface for scripts: fields are only ever
/// added.
///
/// ```json
/// {"flatsync":"ready","version":"0.1.0","pid":4242,"daemon_id":"5f0c3a9e1b7d2468",
///  "webhook":"127.0.0.1:41234","admin":"127.0.0.1:9187","state_dir":"/var/lib/flatsync"}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReadyInfo {
    /// Always `"ready"`: tells this line from anything else a wrapper prints.
    pub flatsync: &'static str,
    /// flatsync's version.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// The random id of this start, as `flatsync status` shows it.
    pub daemon_id: String,
    /// Where the webhook listener is bound; `None` (JSON `null`) without `[webhook]`.
    pub webhook: Option<SocketAddr>,
    /// Where the admin listener is bound; `None` (JSON `null`) without `[admin]`.
    pub admin: Option<SocketAddr>,
    /// The state directory, as an absolute path.
    pub state_dir: String,
}

impl ReadyInfo {
    /// A fresh daemon id for this process, bound to these addresses.
    pub(crate) fn new(
        state_dir: &Path,
        webhook: Option<SocketAddr>,
        admin: Option<SocketAddr>,
    ) -> ReadyInfo {
        ReadyInfo {
            flatsync: "ready",
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            daemon_id: format!("{:016x}", fastrand::u64(..)),
            webhook,
            admin,
            // A script may read the line from another working directory.
            state_dir: std::path::absolute(state_dir)
                .unwrap_or_else(|_| state_dir.to_owned())
                .to_string_lossy()
                .into_owned(),
        }
    }

    /// The announcement as one line of JSON, without the newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("strings, numbers and addresses serialise to JSON")
    }
}

/// Registers this start in the state: first forgets the daemons that ended more than
/// [`DAEMON_RETENTION`] ago, so the table stays small however often the daemon restarts.
pub(crate) async fn register(state: &StateDb, ready: &ReadyInfo) -> Result<(), StateError> {
    let now = now_ms();
    let retention = i64::try_from(DAEMON_RETENTION.as_millis()).unwrap_or(i64::MAX);
    let pruned = state.prune_daemons(now.saturating_sub(retention)).await?;
    if pruned > 0 {
        tracing::debug!(daemons = pruned, "Forgot daemons that ended long ago");
    }
    state
        .register_daemon(DaemonRecord {
            daemon_id: ready.daemon_id.clone(),
            pid: ready.pid,
            hostname: hostname(),
            version: ready.version.clone(),
            started_at_ms: now,
            last_seen_ms: now,
            stopped_at_ms: None,
            webhook_addr: ready.webhook.map(|a| a.to_string()),
            admin_addr: ready.admin.map(|a| a.to_string()),
        })
        .await
}

/// Starts [`keep_seen`] for the daemon `ready` announces.
pub(crate) fn spawn(state: &StateDb, ready: &ReadyInfo, health: &Arc<Health>) -> JoinHandle<()> {
    tokio::spawn(keep_seen(
        state.clone(),
        ready.daemon_id.clone(),
        Arc::clone(health),
    ))
}

/// Touches the daemon's `last_seen_ms` every [`DAEMON_TOUCH_INTERVAL`] while the main loop's
/// heartbeat moves: a wedged loop (or a state database that stopped answering) stops the
/// touches, as it stops the watchdog. Runs until aborted.
async fn keep_seen(state: StateDb, daemon_id: String, health: Arc<Health>) {
    let mut heartbeat: watch::Receiver<u64> = health.heartbeat();
    let mut last_touch = tokio::time::Instant::now();
    while heartbeat.changed().await.is_ok() {
        if last_touch.elapsed() < DAEMON_TOUCH_INTERVAL {
            continue;
        }
        last_touch = tokio::time::Instant::now();
        if let Err(e) = state.touch_daemon(&daemon_id, now_ms()).await {
            tracing::warn!(error = %e, "Cannot record that the daemon is alive");
        }
    }
}

/// Where a daemon of `flatsync status` stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DaemonState {
    /// Seen within the last three touches, and, on this host, its process exists.
    Running,
    /// Stopped cleanly.
    Stopped,
    /// Neither stopped cleanly nor seen: killed, crashed, or its host is down. On the host
    /// that ran it, a process that no longer exists makes it `gone` at once.
    Gone,
}

impl DaemonState {
    /// The word `flatsync status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            DaemonState::Running => "running",
            DaemonState::Stopped => "stopped",
            DaemonState::Gone => "gone",
        }
    }
}

/// How many touch intervals may pass without one before a daemon counts as gone.
const MISSED_TOUCHES: u32 = 3;

/// Where `daemon` stands at `now_ms`, seen from `this_host`: stopped when it said so; gone
/// when not seen for three touch intervals, or when it ran on this host and its process no
/// longer exists (`process_exists`); running otherwise.
pub(crate) fn daemon_state(
    daemon: &DaemonRecord,
    now_ms: i64,
    this_host: &str,
    process_exists: impl Fn(u32) -> bool,
) -> DaemonState {
    let silence =
        i64::try_from((DAEMON_TOUCH_INTERVAL * MISSED_TOUCHES).as_millis()).unwrap_or(i64::MAX);
    if daemon.stopped_at_ms.is_some() {
        DaemonState::Stopped
    } else if now_ms.saturating_sub(daemon.last_seen_ms) > silence
        || (daemon.hostname == this_host && !process_exists(daemon.pid))
    {
        DaemonState::Gone
    } else {
        DaemonState::Running
    }
}

/// This host's name (`uname -n`), as daemons record it.
pub(crate) fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Whether a process `pid` exists on this host (`kill(pid, 0)`); one owned by another user
/// exists too.
pub(crate) fn process_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(last_seen_ms: i64, stopped_at_ms: Option<i64>) -> DaemonRecord {
        DaemonRecord {
            daemon_id: "d".to_owned(),
            pid: 4242,
            hostname: "here".to_owned(),
            version: "0.1.0".to_owned(),
            started_at_ms: 0,
            last_seen_ms,
            stopped_at_ms,
            webhook_addr: None,
            admin_addr: None,
        }
    }

    #[test]
    fn a_daemon_is_running_while_seen_and_alive_stopped_when_it_said_so_gone_otherwise() {
        let alive = |_| true;
        let dead = |_| false;
        let now = 1_000_000;
        assert_eq!(
            daemon_state(&record(now - 14_000, None), now, "here", alive),
            DaemonState::Running,
            "seen 14 s ago, within three 5 s touches"
        );
        assert_eq!(
            daemon_state(&record(now - 16_000, None), now, "here", alive),
            DaemonState::Gone,
            "not seen for more than three touches"
        );
        assert_eq!(
            daemon_state(&record(now - 1_000, None), now, "here", dead),
            DaemonState::Gone,
            "its process is gone from this host, however recently it was seen"
        );
        assert_eq!(
            daemon_state(&record(now - 1_000, None), now, "elsewhere", dead),
            DaemonState::Running,
            "a process of another host cannot be looked up here"
        );
        assert_eq!(
            daemon_state(&record(now - 60_000, Some(now - 60_000)), now, "here", dead),
            DaemonState::Stopped
        );
    }

    #[test]
    fn this_process_exists_and_one_that_ended_does_not() {
        assert!(
            process_exists(std::process::id()),
            "this test's own process"
        );
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("cannot run `true`");
        let pid = child.id();
        child.wait().expect("`true` ends");
        assert!(
            !process_exists(pid),
            "process {pid} ended and was reaped, yet counts as existing"
        );
        assert!(!process_exists(0), "pid 0 names no single process");
        assert!(!hostname().is_empty(), "uname gives this host a name");
    }

    #[test]
    fn the_ready_line_is_one_line_of_json_with_null_for_a_missing_listener() {
        let ready = ReadyInfo::new(
            Path::new("/var/lib/flatsync"),
            Some("127.0.0.1:41234".parse().expect("address")),
            None,
        );
        let line = ready.to_json();
        assert!(!line.contains('\n'), "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(value["flatsync"], "ready", "{line}");
        assert_eq!(value["webhook"], "127.0.0.1:41234", "{line}");
        assert!(value["admin"].is_null(), "{line}");
        assert_eq!(value["state_dir"], "/var/lib/flatsync", "{line}");
        assert_eq!(value["pid"], std::process::id(), "{line}");
        assert_eq!(
            value["daemon_id"].as_str().map(str::len),
            Some(16),
            "{line}"
        );
        let relative = ReadyInfo::new(Path::new("state"), None, None);
        assert_eq!(
            Path::new(&relative.state_dir),
            std::env::current_dir().expect("cwd").join("state"),
            "a script in another folder can use the state_dir of the line"
        );
        assert_ne!(
            relative.daemon_id, ready.daemon_id,
            "each start has its own id"
        );
    }
}
