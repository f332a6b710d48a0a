//! Liveness and readiness, shared by the dispatcher (which proves the main loop runs), the
//! webhook source (which refuses intake while draining) and the admin endpoints.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// Where a running daemon stands; see [`crate::RunningDaemon::health`].
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    draining: AtomicBool,
    heartbeat: watch::Sender<u64>,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            heartbeat: watch::channel(0).0,
        }
    }
}

impl Health {
    /// Whether the daemon takes events: started, and not stopping.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.is_draining()
    }

    /// Whether a stop has begun: intake is refused and in-flight work is being finished.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Counts the main loop's turns. A turn happens at least every
    /// [`HEARTBEAT_INTERVAL`] while the loop runs and the state database answers, so a
    /// watchdog should ping only when it sees the count move.
    pub fn heartbeat(&self) -> watch::Receiver<u64> {
        self.heartbeat.subscribe()
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub(crate) fn beat(&self) {
        self.heartbeat.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Longest time between two heartbeats of a healthy main loop.
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
