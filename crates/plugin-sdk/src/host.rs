//! What the host lends an instance: its name and a log channel.

use std::ffi::c_void;
use std::fmt;
use std::sync::Arc;

use flatsync_plugin_api::{self as abi, FlatsyncHost, FlatsyncStr};

/// Severity of a log line sent to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something looks wrong but work goes on.
    Warn,
    /// Normal operation worth recording.
    Info,
    /// Detail for troubleshooting.
    Debug,
}

impl LogLevel {
    /// The `LOG_*` constant of the ABI.
    pub fn as_abi(self) -> u32 {
        match self {
            LogLevel::Error => abi::LOG_ERROR,
            LogLevel::Warn => abi::LOG_WARN,
            LogLevel::Info => abi::LOG_INFO,
            LogLevel::Debug => abi::LOG_DEBUG,
        }
    }
}

type LogCallback = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;

/// Writes lines into the host's log, attributed to the instance.
///
/// Cheap to clone and usable from any thread, but only while the instance exists: the host
/// keeps its side valid from `create` until `destroy` returns, so a sink must not hand a
/// `Logger` to a thread that outlives it.
#[derive(Clone)]
pub struct Logger {
    target: LogTarget,
}

#[derive(Clone)]
enum LogTarget {
    Host(HostLog),
    Callback(LogCallback),
    Discard,
}

#[derive(Clone, Copy)]
struct HostLog {
    ctx: *mut c_void,
    log: unsafe extern "C" fn(*mut c_void, u32, FlatsyncStr),
}

// SAFETY: the ABI documents `FlatsyncHost::log` as thread-safe, and `ctx` is only ever passed
// back to that function, never dereferenced here.
unsafe impl Send for HostLog {}
// SAFETY: as for `Send`: the only use of the pair is calling the thread-safe `log`.
unsafe impl Sync for HostLog {}

impl Logger {
    /// A logger that drops every line, for tests.
    pub fn discard() -> Self {
        Self {
            target: LogTarget::Discard,
        }
    }

    /// A logger that hands every line to `callback`, for tests and tools that run a sink
    /// without the host.
    pub fn from_fn(callback: impl Fn(LogLevel, &str) + Send + Sync + 'static) -> Self {
        Self {
            target: LogTarget::Callback(Arc::new(callback)),
        }
    }

    /// Wraps the host's log function.
    ///
    /// # Safety
    /// `host` must be a host descriptor whose `ctx` and `log` stay valid for as long as the
    /// returned logger (and its clones) is used.
    pub(crate) unsafe fn from_host(host: &FlatsyncHost) -> Self {
        let target = match host.log {
            Some(log) => LogTarget::Host(HostLog { ctx: host.ctx, log }),
            None => LogTarget::Discard,
        };
        Self { target }
    }

    /// Sends one line at `level`.
    pub fn log(&self, level: LogLevel, message: &str) {
        match &self.target {
            LogTarget::Host(host) => {
                let message = FlatsyncStr {
                    ptr: message.as_ptr(),
                    len: message.len(),
                };
                // SAFETY: `from_host`'s caller guaranteed `ctx` and `log` are valid while this
                // logger is in use; the message is borrowed for the call only, as the ABI asks.
                unsafe { (host.log)(host.ctx, level.as_abi(), message) }
            }
            LogTarget::Callback(callback) => callback(level, message),
            LogTarget::Discard => {}
        }
    }

    /// Sends an error line.
    pub fn error(&self, message: &str) {
        self.log(LogLevel::Error, message);
    }

    /// Sends a warning line.
    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message);
    }

    /// Sends an info line.
    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message);
    }

    /// Sends a debug line.
    pub fn debug(&self, message: &str) {
        self.log(LogLevel::Debug, message);
    }
}

impl fmt::Debug for Logger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match self.target {
            LogTarget::Host(_) => "host",
            LogTarget::Callback(_) => "callback",
            LogTarget::Discard => "discard",
        };
        f.debug_struct("Logger").field("target", &target).finish()
    }
}

/// What [`Sink::create`](crate::Sink::create) receives besides the config.
#[derive(Debug, Clone)]
pub struct CreateContext<'a> {
    instance_name: &'a str,
    logger: Logger,
}

impl<'a> CreateContext<'a> {
    /// A context for running a sink without the host (tests, tools).
    pub fn new(instance_name: &'a str, logger: Logger) -> Self {
        Self {
            instance_name,
            logger,
        }
    }

    /// The `name` of the `[[sink]]` entry this instance serves.
    pub fn instance_name(&self) -> &'a str {
        self.instance_name
    }

    /// The instance's log channel; clone it to keep it.
    pub fn logger(&self) -> &Logger {
        &self.logger
    }
}
