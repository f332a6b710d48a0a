//! One sink instance on its own thread, driven from async code.
//!
//! Threads: every instance lives on a dedicated `std::thread` named `sink-<instance>`, which
//! makes every call on it (create, check, write_batch, flush, held, destroy), so a plugin may keep
//! thread-bound state and never sees two calls at once. Async callers send commands over a
//! channel and await a one-shot reply; nothing ever blocks a runtime thread.
//!
//! Writes sent ahead: [`SinkWorker::queue_write`] sends a batch before the answer to the one
//! before it, so the thread goes from one batch to the next instead of waiting for its caller
//! to be scheduled again between them. Writes queued one behind another form a chain whose
//! flag the thread sets when one of them is not accepted; it then leaves the rest of the chain
//! unwritten, and each of those is sent again the ordinary way when its caller finishes it, in
//! order. So a plugin still sees a stream's batches in order, none after one it refused.
//!
//! Timeouts: each call is awaited for at most [`SinkOptions::call_timeout`]. A call that takes
//! longer marks the worker stalled: the plugin is still running on its thread, which cannot be
//! interrupted, so the worker refuses every later call with [`SinkError::Stalled`] and
//! [`SinkWorker::shutdown`] leaves that thread behind instead of waiting for it.

use std::ffi::c_void;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flatsync_plugin_api::{
    BATCH_FLAG_DELETIONS, BATCH_FLAG_LAST, FlatsyncBatch, FlatsyncError, FlatsyncHeld,
    FlatsyncHost, FlatsyncStatus, FlatsyncStr, HELD_BATCHES, HELD_NOTHING, LOG_DEBUG, LOG_ERROR,
    LOG_INFO, LOG_WARN, STATUS_FATAL, STATUS_OK, STATUS_RETRY,
};
use tokio::sync::oneshot;

use crate::load::PluginFunctions;
use crate::{LoadedPlugin, SinkError};

/// Target of the log lines plugins write through the host API, so they can be filtered apart.
const PLUGIN_LOG_TARGET: &str = "flatsync::plugin";

/// Histogram of one plugin call's duration in seconds, labels `sink` (the instance name, from
/// the config) and `call` (`create`, `write_batch`, `flush`, `held`), sent to the process-wide
/// `metrics` recorder (a no-op until one is installed). This crate cannot depend on flatsync-core, so the
/// name is spelled here too: it MUST equal `flatsync_core::metrics::SINK_CALL_SECONDS` (a core
/// test drives a worker and looks for it).
const SINK_CALL_SECONDS: &str = "flatsync_sink_call_seconds";

/// Records how long one plugin call took, as seen from the async side: from handing the
/// command to the instance's thread until its answer, or until the call timeout gave up on it.
/// A queued write's is measured on the thread, from the call's start, so its wait behind the
/// write before it is not counted twice.
fn record_call(sink: &str, call: &'static str, took: Duration) {
    metrics::histogram!(SINK_CALL_SECONDS, "sink" => sink.to_owned(), "call" => call)
        .record(took.as_secs_f64());
}

const HOST_STRUCT_SIZE: u32 = size_of::<FlatsyncHost>() as u32;
const BATCH_STRUCT_SIZE: u32 = size_of::<FlatsyncBatch>() as u32;
const HELD_STRUCT_SIZE: u32 = size_of::<FlatsyncHeld>() as u32;

/// What a sink says it holds of a stream beyond what it made durable (ABI 1.2 `held`):
/// batches `0..=seq`, `rows` rows in all, surviving a restart of this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldBatches {
    /// The last batch held; every batch before it is held too.
    pub seq: u64,
    /// Rows of batches `0..=seq`, in all.
    pub rows: u64,
}

/// How the worker calls its instance.
#[derive(Clone, Debug)]
pub struct SinkOptions {
    /// Longest wait for one plugin call; past it the worker is stalled. Default 60 s.
    pub call_timeout: Duration,
    /// Backoff cap after the first RETRY. Default 200 ms.
    pub retry_initial: Duration,
    /// Largest backoff cap. Default 30 s.
    pub retry_max: Duration,
    /// Calls made for one operation before giving up, the first included. Default 10.
    pub max_attempts: u32,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(60),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            max_attempts: 10,
        }
    }
}

/// An owned batch the pipeline builds once and shares among sinks.
///
/// The worker lends its bytes to the plugin as a `FlatsyncBatch` for the duration of one call.
#[derive(Debug)]
pub struct OwnedBatch {
    /// Stream id, `[A-Za-z0-9_.-]`.
    pub stream: String,
    /// Sheet slug or `legacy_batch`.
    pub kind: String,
    /// Id of the Flatfile event the stream belongs to.
    pub event_id: String,
    /// JSON array of field keys in schema order, `[]` without a schema.
    pub fields_json: String,
    /// Position of the batch in its stream, from 0.
    pub seq: u64,
    /// Number of lines in `ndjson`.
    pub row_count: u64,
    /// `row_count` JSON objects, each followed by `\n`.
    pub ndjson: bytes::Bytes,
    /// When flatsync received the event, milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// Whether this is the stream's last batch.
    pub last: bool,
    /// Whether the rows name deleted records (`BATCH_FLAG_DELETIONS`). A plugin that does not
    /// declare `PLUGIN_FLAG_DELETIONS` gets them as ordinary rows of kind `<kind>_deleted`.
    pub deletions: bool,
}

/// Handle to one sink instance running on its own thread. Cheap to clone; all clones drive the
/// same instance, one operation at a time.
///
/// Dropping every clone without [`shutdown`](Self::shutdown) still destroys the instance (on its
/// thread, once it notices), but nobody waits for it.
#[derive(Clone)]
pub struct SinkWorker {
    inner: Arc<Inner>,
}

struct Inner {
    instance_name: String,
    plugin: Arc<LoadedPlugin>,
    options: SinkOptions,
    /// `None` once shut down.
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stalled: AtomicBool,
    /// Held for a whole operation, retries included, so that a batch being retried is never
    /// overtaken by the next one from another caller.
    operation: tokio::sync::Mutex<()>,
}

enum Command {
    Write {
        batch: Arc<OwnedBatch>,
        reply: oneshot::Sender<CallResult>,
    },
    /// A write of a chain ([`SinkWorker::queue_write`]): answered `None`, unwritten, when its
    /// chain is broken.
    QueuedWrite {
        batch: Arc<OwnedBatch>,
        chain: Arc<AtomicBool>,
        reply: oneshot::Sender<Option<QueuedAnswer>>,
    },
    Flush {
        reply: oneshot::Sender<CallResult>,
    },
    Held {
        stream: Arc<str>,
        reply: oneshot::Sender<CallResult>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// What a queued write's call returned, and how long the plugin took over it (its wait behind
/// the calls before it left out).
struct QueuedAnswer {
    result: CallResult,
    took: Duration,
}

/// What one plugin call returned.
struct CallResult {
    status: FlatsyncStatus,
    message: Option<String>,
    /// What a successful `held` call reported; `None` for every other call.
    held: Option<HeldBatches>,
}

impl CallResult {
    fn message(self) -> String {
        self.message
            .unwrap_or_else(|| format!("plugin returned status {} without a message", self.status))
    }
}

#[derive(Clone, Copy)]
enum Operation {
    Write,
    Flush,
    Held,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Write => "write_batch",
            Self::Flush => "flush",
            Self::Held => "held",
        }
    }
}

impl fmt::Debug for SinkWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkWorker")
            .field("instance_name", &self.inner.instance_name)
            .field("plugin", &self.inner.plugin.name())
            .field("stalled", &self.is_stalled())
            .finish_non_exhaustive()
    }
}

impl SinkWorker {
    /// Starts the instance: spawns the thread `sink-<instance_name>`, which calls
    /// `create(instance_name, config_json, host)` and then `check` if the plugin has one.
    ///
    /// A non-OK status from either is [`SinkError::Create`] with the plugin's message, and the
    /// thread ends (destroying the instance if `create` had made one). Start-up is awaited for
    /// at most `options.call_timeout` ([`SinkError::Stalled`] past it).
    ///
    /// Log lines the plugin writes go to the `tracing` dispatcher current at this call, with
    /// target `flatsync::plugin` and the fields `sink` and `plugin`.
    pub async fn spawn(
        plugin: Arc<LoadedPlugin>,
        instance_name: &str,
        config_json: String,
        options: SinkOptions,
    ) -> Result<SinkWorker, SinkError> {
        let (command_tx, command_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let worker = WorkerThread {
            functions: plugin.functions(),
            handles_deletions: plugin.handles_deletions(),
            instance_name: instance_name.to_owned(),
            plugin_name: plugin.name().to_owned(),
            config_json,
            dispatch,
        };
        // A NUL cannot be part of a thread name (spawn would panic); names come from config.
        let thread_name = format!("sink-{}", instance_name.replace('\0', "?"));
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || worker.run(command_rx, ready_tx))
            .map_err(|err| SinkError::Create {
                sink: instance_name.to_owned(),
                plugin: plugin.name().to_owned(),
                message: format!("cannot start the worker thread: {err}"),
            })?;

        let started = Instant::now();
        let ready = tokio::time::timeout(options.call_timeout, ready_rx).await;
        // `create` and `check` run back to back on the thread and are timed as one call.
        record_call(instance_name, "create", started.elapsed());
        match ready {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(result))) => {
                return Err(SinkError::Create {
                    sink: instance_name.to_owned(),
                    plugin: plugin.name().to_owned(),
                    message: result.message(),
                });
            }
            Ok(Err(_)) => {
                return Err(SinkError::Stopped {
                    sink: instance_name.to_owned(),
                });
            }
            Err(_) => {
                tracing::error!(
                    sink = %instance_name,
                    plugin = %plugin.name(),
                    timeout = ?options.call_timeout,
                    "Sink start-up timed out; leaving its thread behind"
                );
                return Err(SinkError::Stalled {
                    sink: instance_name.to_owned(),
                    plugin: plugin.name().to_owned(),
                    after: options.call_timeout,
                });
            }
        }
        Ok(SinkWorker {
            inner: Arc::new(Inner {
                instance_name: instance_name.to_owned(),
                plugin,
                options,
                commands: Mutex::new(Some(command_tx)),
                thread: Mutex::new(Some(thread)),
                stalled: AtomicBool::new(false),
                operation: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Hands `batch` to the instance.
    ///
    /// On RETRY, sleeps (exponential backoff with full jitter, on the async side) and sends the
    /// same batch again, up to `max_attempts` calls in all. OK means accepted, not durable: only
    /// a later successful [`flush`](Self::flush) makes it durable.
    ///
    /// After [`SinkError::Stalled`] the call may still complete on the worker thread, so the
    /// batch may or may not have been applied; the sink's own per-stream position makes the
    /// re-delivery after a restart harmless.
    pub async fn write_batch(&self, batch: Arc<OwnedBatch>) -> Result<(), SinkError> {
        self.write_after(batch, None).await
    }

    /// [`write_batch`](Self::write_batch), `answered` being the answer to a first attempt
    /// already made (a queued write's).
    async fn write_after(
        &self,
        batch: Arc<OwnedBatch>,
        answered: Option<CallResult>,
    ) -> Result<(), SinkError> {
        let _serialised = self.inner.operation.lock().await;
        let command = |reply| Command::Write {
            batch: Arc::clone(&batch),
            reply,
        };
        self.attempts(Operation::Write, &command, answered)
            .await
            .map(drop)
    }

    /// Sends `batch` to the instance now, to be written after everything sent before it, and
    /// returns the write for [`QueuedWrite::finish`], which waits for its answer. A caller that
    /// queues a stream's next batch before finishing the last keeps the instance busy: it goes
    /// from one batch to the next without waiting for the caller to be scheduled in between.
    ///
    /// `after` is the caller's write queued before this one and not finished yet, if any: this
    /// one joins its chain. When a write of a chain is not accepted (RETRY, FATAL), the
    /// instance leaves the writes queued behind it in the chain unwritten, and their
    /// [`finish`](QueuedWrite::finish) sends each again the ordinary way
    /// ([`write_batch`](Self::write_batch)). So finish a chain's writes in the order they were
    /// queued, and once one says [`QueuedWrite::chain_broken`], finish it before queuing the
    /// next: the next then starts a chain of its own. A write dropped unfinished is still made
    /// unless its chain is broken by then; like a stalled call's, it may or may not be applied.
    pub fn queue_write(&self, batch: Arc<OwnedBatch>, after: Option<&QueuedWrite>) -> QueuedWrite {
        let chain = after.map_or_else(Arc::default, |write| Arc::clone(&write.chain));
        let reply = if self.is_stalled() {
            Err(self.stalled_error())
        } else {
            let (reply_tx, reply_rx) = oneshot::channel();
            let command = Command::QueuedWrite {
                batch: Arc::clone(&batch),
                chain: Arc::clone(&chain),
                reply: reply_tx,
            };
            if self.send(command) {
                Ok(reply_rx)
            } else {
                Err(self.stopped_error())
            }
        };
        QueuedWrite {
            worker: self.clone(),
            batch,
            chain,
            reply,
        }
    }

    /// Calls `flush`, with the same RETRY handling. `Ok` means every batch accepted so far is
    /// durable in the sink.
    pub async fn flush(&self) -> Result<(), SinkError> {
        self.call(Operation::Flush, |reply| Command::Flush { reply })
            .await
            .map(drop)
    }

    /// Asks the instance which batches of `stream` it holds beyond what it made durable (ABI
    /// 1.2 `held`), with the same RETRY handling and timeout as the other calls. `None` when it
    /// has nothing to tell, and always for a plugin without the function: the host then resumes
    /// from its checkpoint as before.
    pub async fn held(&self, stream: &str) -> Result<Option<HeldBatches>, SinkError> {
        if self.inner.plugin.functions().held.is_none() {
            return Ok(None);
        }
        let stream: Arc<str> = Arc::from(stream);
        let result = self
            .call(Operation::Held, |reply| Command::Held {
                stream: Arc::clone(&stream),
                reply,
            })
            .await?;
        Ok(result.held)
    }

    /// Destroys the instance on its thread and joins the thread, waiting at most
    /// `call_timeout`; see [`shutdown_by`](Self::shutdown_by).
    pub async fn shutdown(&self) {
        self.shutdown_by(tokio::time::Instant::now() + self.inner.options.call_timeout)
            .await;
    }

    /// Destroys the instance on its thread and joins the thread, giving up at `deadline`.
    ///
    /// The thread runs destroy after any call it is in; one stuck inside the plugin never gets
    /// there. So when the worker is stalled, or the deadline passes first, this logs and leaves
    /// the thread behind: a process that is stopping exits anyway (the thread dies with it),
    /// and what the sink made durable is what the checkpoints say. Later calls fail with
    /// [`SinkError::Stopped`]. Calling it again does nothing.
    pub async fn shutdown_by(&self, deadline: tokio::time::Instant) {
        let Some(sender) = lock(&self.inner.commands).take() else {
            return;
        };
        let sink = &self.inner.instance_name;
        let plugin = self.inner.plugin.name();
        let (reply_tx, reply_rx) = oneshot::channel();
        // If the thread is alive it runs destroy after whatever call it is in; a stalled
        // thread gets to it if the plugin ever returns.
        let sent = sender.send(Command::Shutdown { reply: reply_tx }).is_ok();
        drop(sender);
        if self.is_stalled() {
            tracing::warn!(sink = %sink, plugin = %plugin, "Sink is stalled; leaving its thread behind");
            return;
        }
        if !sent {
            tracing::warn!(sink = %sink, plugin = %plugin, "Sink thread already gone");
            return;
        }
        match tokio::time::timeout_at(deadline, reply_rx).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                tracing::warn!(sink = %sink, plugin = %plugin, "Sink thread ended without confirming destroy");
            }
            Err(_) => {
                self.inner.stalled.store(true, Ordering::SeqCst);
                tracing::warn!(
                    sink = %sink,
                    plugin = %plugin,
                    "Sink did not shut down in time (busy in a plugin call); leaving its thread behind"
                );
                return;
            }
        }
        // The thread has sent its last message; what remains is thread-local destructors.
        // Poll instead of a blocking join so a runtime thread never waits on plugin code.
        let Some(handle) = lock(&self.inner.thread).take() else {
            return;
        };
        while !handle.is_finished() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(sink = %sink, plugin = %plugin, "Sink thread did not exit in time; leaving it behind");
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if handle.join().is_err() {
            tracing::error!(sink = %sink, plugin = %plugin, "Sink thread panicked while exiting");
        }
        tracing::debug!(sink = %sink, plugin = %plugin, "Sink shut down");
    }

    /// The instance name from the config.
    pub fn instance_name(&self) -> &str {
        &self.inner.instance_name
    }

    /// The plugin this instance belongs to.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.inner.plugin
    }

    /// Whether a call timed out; a stalled worker refuses every call.
    pub fn is_stalled(&self) -> bool {
        self.inner.stalled.load(Ordering::SeqCst)
    }

    async fn call(
        &self,
        operation: Operation,
        command: impl Fn(oneshot::Sender<CallResult>) -> Command,
    ) -> Result<CallResult, SinkError> {
        let _serialised = self.inner.operation.lock().await;
        self.attempts(operation, &command, None).await
    }

    /// Calls until an answer settles the operation, RETRY answers waited out with backoff.
    /// `answered` is the answer to an attempt already made (a queued write's), counted as the
    /// first. The caller holds the operation lock.
    async fn attempts(
        &self,
        operation: Operation,
        command: &impl Fn(oneshot::Sender<CallResult>) -> Command,
        mut answered: Option<CallResult>,
    ) -> Result<CallResult, SinkError> {
        let options = &self.inner.options;
        let max_attempts = options.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match answered.take() {
                Some(result) => result,
                None => self.call_once(operation, command).await?,
            };
            match result.status {
                STATUS_OK => return Ok(result),
                STATUS_RETRY => {
                    let message = result.message();
                    if attempt >= max_attempts {
                        return Err(SinkError::RetriesExhausted {
                            sink: self.inner.instance_name.clone(),
                            plugin: self.inner.plugin.name().to_owned(),
                            attempts: attempt,
                            message,
                        });
                    }
                    let delay = backoff_delay(options, attempt);
                    tracing::warn!(
                        sink = %self.inner.instance_name,
                        plugin = %self.inner.plugin.name(),
                        call = operation.as_str(),
                        attempt,
                        delay_ms = delay.as_millis(),
                        error = %message,
                        "Sink asked to retry"
                    );
                    tokio::time::sleep(delay).await;
                }
                STATUS_FATAL => {
                    return Err(self.fatal(result.message()));
                }
                other => {
                    let message = match result.message {
                        Some(message) => format!(
                            "plugin returned unknown status {other}, treated as fatal: {message}"
                        ),
                        None => format!("plugin returned status {other} without a message"),
                    };
                    return Err(self.fatal(message));
                }
            }
        }
    }

    async fn call_once(
        &self,
        operation: Operation,
        command: &impl Fn(oneshot::Sender<CallResult>) -> Command,
    ) -> Result<CallResult, SinkError> {
        if self.is_stalled() {
            return Err(self.stalled_error());
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        if !self.send(command(reply_tx)) {
            return Err(self.stopped_error());
        }
        let started = Instant::now();
        let reply = tokio::time::timeout(self.inner.options.call_timeout, reply_rx).await;
        record_call(
            &self.inner.instance_name,
            operation.as_str(),
            started.elapsed(),
        );
        match reply {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(self.stopped_error()),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// Hands `command` to the thread; `false` once the worker is shut down.
    fn send(&self, command: Command) -> bool {
        let commands = lock(&self.inner.commands);
        commands
            .as_ref()
            .is_some_and(|sender| sender.send(command).is_ok())
    }

    /// Marks the worker stalled after a call outlived the call timeout.
    fn timed_out(&self) -> SinkError {
        self.inner.stalled.store(true, Ordering::SeqCst);
        tracing::error!(
            sink = %self.inner.instance_name,
            plugin = %self.inner.plugin.name(),
            timeout = ?self.inner.options.call_timeout,
            "Sink call timed out; marking it stalled"
        );
        self.stalled_error()
    }

    fn fatal(&self, message: String) -> SinkError {
        SinkError::Fatal {
            sink: self.inner.instance_name.clone(),
            plugin: self.inner.plugin.name().to_owned(),
            message,
        }
    }

    fn stalled_error(&self) -> SinkError {
        SinkError::Stalled {
            sink: self.inner.instance_name.clone(),
            plugin: self.inner.plugin.name().to_owned(),
            after: self.inner.options.call_timeout,
        }
    }

    fn stopped_error(&self) -> SinkError {
        SinkError::Stopped {
            sink: self.inner.instance_name.clone(),
        }
    }
}

/// A write sent with [`SinkWorker::queue_write`], not finished yet.
pub struct QueuedWrite {
    worker: SinkWorker,
    batch: Arc<OwnedBatch>,
    /// Set by the instance's thread when a write of this chain was not accepted.
    chain: Arc<AtomicBool>,
    /// The answer to come, or why the write was never sent.
    reply: Result<oneshot::Receiver<Option<QueuedAnswer>>, SinkError>,
}

impl fmt::Debug for QueuedWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuedWrite")
            .field("sink", &self.worker.inner.instance_name)
            .field("stream", &self.batch.stream)
            .field("seq", &self.batch.seq)
            .field("chain_broken", &self.chain_broken())
            .finish_non_exhaustive()
    }
}

impl QueuedWrite {
    /// Whether a write of this chain was not accepted, so the instance leaves this one (if it
    /// came after) unwritten: finish it before queuing the stream's next batch.
    pub fn chain_broken(&self) -> bool {
        self.chain.load(Ordering::Acquire)
    }

    /// Waits for the write's answer, as [`SinkWorker::write_batch`] would: a RETRY is retried
    /// the ordinary way (the queued call counted as the first attempt), and a write its broken
    /// chain left unwritten is sent again the ordinary way. The call timeout runs from here,
    /// not from queuing, so a write queued behind a slow one is not taken for a stalled one.
    pub async fn finish(self) -> Result<(), SinkError> {
        let QueuedWrite {
            worker,
            batch,
            reply,
            ..
        } = self;
        let reply = reply?;
        let answer = match tokio::time::timeout(worker.inner.options.call_timeout, reply).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err(worker.stopped_error()),
            Err(_) => return Err(worker.timed_out()),
        };
        let Some(QueuedAnswer { result, took }) = answer else {
            return worker.write_batch(batch).await;
        };
        record_call(&worker.inner.instance_name, Operation::Write.as_str(), took);
        if result.status == STATUS_OK {
            return Ok(());
        }
        worker.write_after(batch, Some(result)).await
    }
}

/// Full jitter: uniform in `[0, min(retry_max, retry_initial * 2^(attempt-1))]`, so sinks that
/// fail together do not retry in lockstep.
fn backoff_delay(options: &SinkOptions, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let cap = options
        .retry_initial
        .saturating_mul(factor)
        .min(options.retry_max);
    let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=cap_nanos))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values stay consistent even if a holder panicked (plain take/send).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Everything the worker thread needs, moved onto it.
struct WorkerThread {
    functions: PluginFunctions,
    handles_deletions: bool,
    instance_name: String,
    plugin_name: String,
    config_json: String,
    dispatch: tracing::Dispatch,
}

/// Context behind `FlatsyncHost::ctx`; read from any thread the plugin logs on.
struct LogContext {
    sink: String,
    plugin: String,
    dispatch: tracing::Dispatch,
}

impl WorkerThread {
    fn run(
        self,
        commands: mpsc::Receiver<Command>,
        ready: oneshot::Sender<Result<(), CallResult>>,
    ) {
        let dispatch = self.dispatch.clone();
        tracing::dispatcher::with_default(&dispatch, || self.serve(commands, ready));
    }

    fn serve(
        self,
        commands: mpsc::Receiver<Command>,
        ready: oneshot::Sender<Result<(), CallResult>>,
    ) {
        let functions = self.functions;
        // Both boxes must outlive the instance: the plugin may log until destroy returns. They
        // are dropped at the end of this function, after every path that destroys it.
        let log_context = Box::new(LogContext {
            sink: self.instance_name.clone(),
            plugin: self.plugin_name.clone(),
            dispatch: self.dispatch.clone(),
        });
        let host = Box::new(FlatsyncHost {
            struct_size: HOST_STRUCT_SIZE,
            reserved: 0,
            ctx: std::ptr::from_ref::<LogContext>(&log_context)
                .cast_mut()
                .cast(),
            log: Some(host_log),
        });

        let mut instance: *mut c_void = std::ptr::null_mut();
        let created = call_with_error(|err| {
            // SAFETY: `create` was checked non-null at load and has the ABI's signature. The
            // strings are borrowed for the call; `host` lives until after destroy; `instance`
            // is a valid out-pointer; `err` is valid for the call.
            unsafe {
                (functions.create)(
                    borrowed(self.instance_name.as_bytes()),
                    borrowed(self.config_json.as_bytes()),
                    &raw const *host,
                    &raw mut instance,
                    err,
                )
            }
        });
        if created.status != STATUS_OK {
            // A failed create made no instance: nothing to destroy.
            let _ = ready.send(Err(created));
            return;
        }
        if let Some(check) = functions.check {
            // SAFETY: `check` has the ABI's signature; `instance` came from a successful create
            // and is used only on this thread.
            let checked = call_with_error(|err| unsafe { check(instance, err) });
            if checked.status != STATUS_OK {
                destroy(functions, instance);
                let _ = ready.send(Err(checked));
                return;
            }
        }
        if ready.send(Ok(())).is_err() {
            // The spawner gave up waiting (start-up timeout): nobody will use this instance.
            destroy(functions, instance);
            return;
        }
        tracing::info!(sink = %self.instance_name, plugin = %self.plugin_name, "Sink started");

        while let Ok(command) = commands.recv() {
            if let Some(reply) = answer(functions, instance, self.handles_deletions, command) {
                destroy(functions, instance);
                drop(host);
                drop(log_context);
                tracing::debug!(sink = %self.instance_name, plugin = %self.plugin_name, "Sink destroyed");
                let _ = reply.send(());
                return;
            }
        }
        // Every handle was dropped without a shutdown.
        destroy(functions, instance);
    }
}

/// Makes the call `command` asks for on the instance's thread and answers it; a shutdown is
/// handed back, for the caller to destroy the instance.
fn answer(
    functions: PluginFunctions,
    instance: *mut c_void,
    handles_deletions: bool,
    command: Command,
) -> Option<oneshot::Sender<()>> {
    match command {
        Command::Write { batch, reply } => {
            let _ = reply.send(write_batch(functions, instance, &batch, handles_deletions));
        }
        Command::QueuedWrite {
            batch,
            chain,
            reply,
        } => {
            if chain.load(Ordering::Acquire) {
                let _ = reply.send(None);
                return None;
            }
            let started = Instant::now();
            let result = write_batch(functions, instance, &batch, handles_deletions);
            if result.status != STATUS_OK {
                chain.store(true, Ordering::Release);
            }
            let _ = reply.send(Some(QueuedAnswer {
                result,
                took: started.elapsed(),
            }));
        }
        Command::Flush { reply } => {
            // SAFETY: `flush` has the ABI's signature; `instance` is live and used only on this
            // thread.
            let result = call_with_error(|err| unsafe { (functions.flush)(instance, err) });
            let _ = reply.send(result);
        }
        Command::Held { stream, reply } => {
            let _ = reply.send(held(functions, instance, &stream));
        }
        Command::Shutdown { reply } => return Some(reply),
    }
    None
}

fn write_batch(
    functions: PluginFunctions,
    instance: *mut c_void,
    batch: &OwnedBatch,
    handles_deletions: bool,
) -> CallResult {
    let mut flags = if batch.last { BATCH_FLAG_LAST } else { 0 };
    // A plugin that never heard of deletions would insert the deleted ids among the live rows;
    // a kind of their own keeps them apart (a table or file of deletions).
    let kind = match (batch.deletions, handles_deletions) {
        (true, true) => {
            flags |= BATCH_FLAG_DELETIONS;
            std::borrow::Cow::Borrowed(batch.kind.as_str())
        }
        (true, false) => std::borrow::Cow::Owned(format!("{}_deleted", batch.kind)),
        (false, _) => std::borrow::Cow::Borrowed(batch.kind.as_str()),
    };
    let raw = FlatsyncBatch {
        struct_size: BATCH_STRUCT_SIZE,
        flags,
        stream: borrowed(batch.stream.as_bytes()),
        kind: borrowed(kind.as_bytes()),
        event_id: borrowed(batch.event_id.as_bytes()),
        fields_json: borrowed(batch.fields_json.as_bytes()),
        seq: batch.seq,
        row_count: batch.row_count,
        ndjson: borrowed(&batch.ndjson),
        received_at_ms: batch.received_at_ms,
    };
    // SAFETY: `write_batch` has the ABI's signature; `instance` is live and used only on this
    // thread; `raw` and the bytes it points to (owned by `batch`) outlive the call.
    call_with_error(|err| unsafe { (functions.write_batch)(instance, &raw const raw, err) })
}

/// Calls `held` for `stream`; a plugin without it (never sent here) has nothing to tell.
fn held(functions: PluginFunctions, instance: *mut c_void, stream: &str) -> CallResult {
    let Some(held) = functions.held else {
        return CallResult {
            status: STATUS_OK,
            message: None,
            held: None,
        };
    };
    let mut out = FlatsyncHeld {
        struct_size: HELD_STRUCT_SIZE,
        holds: HELD_NOTHING,
        seq: 0,
        rows: 0,
    };
    // SAFETY: `held` has the ABI's signature (the descriptor's `struct_size` covered it);
    // `instance` is live and used only on this thread; the stream bytes and `out` outlive the
    // call.
    let mut result = call_with_error(|err| unsafe {
        held(instance, borrowed(stream.as_bytes()), &raw mut out, err)
    });
    // Any `holds` but HELD_BATCHES means nothing to tell, as the ABI says.
    if result.status == STATUS_OK && out.holds == HELD_BATCHES {
        result.held = Some(HeldBatches {
            seq: out.seq,
            rows: out.rows,
        });
    }
    result
}

fn destroy(functions: PluginFunctions, instance: *mut c_void) {
    // SAFETY: `destroy` has the ABI's signature; `instance` came from a successful create, is
    // used only on this thread, and is never used again after this call.
    unsafe { (functions.destroy)(instance) };
}

/// Lends bytes to the plugin for one call.
fn borrowed(bytes: &[u8]) -> FlatsyncStr {
    FlatsyncStr {
        ptr: bytes.as_ptr(),
        len: bytes.len(),
    }
}

/// Runs one plugin call with a fresh error sink and collects the status and message.
fn call_with_error(call: impl FnOnce(*const FlatsyncError) -> FlatsyncStatus) -> CallResult {
    // A Mutex rather than a Cell: the plugin may report from a helper thread during the call.
    let slot: Mutex<Option<String>> = Mutex::new(None);
    let error = FlatsyncError {
        ctx: std::ptr::from_ref(&slot).cast_mut().cast(),
        set: Some(host_set_error),
    };
    let status = call(&raw const error);
    CallResult {
        status,
        message: slot
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
        held: None,
    }
}

/// Copies plugin bytes as lossy UTF-8. A null pointer reads as empty.
///
/// # Safety
/// Unless null or empty, `text.ptr` points to `text.len` readable bytes for this call.
unsafe fn copy_text(text: FlatsyncStr) -> String {
    if text.len == 0 || text.ptr.is_null() || text.len > isize::MAX as usize {
        return String::new();
    }
    // SAFETY: guaranteed by the caller; the bytes are copied before returning.
    let bytes = unsafe { std::slice::from_raw_parts(text.ptr, text.len) };
    String::from_utf8_lossy(bytes).into_owned()
}

/// `FlatsyncError::set`: records the message of the current call; the last one wins.
unsafe extern "C" fn host_set_error(ctx: *mut c_void, message: FlatsyncStr) {
    if ctx.is_null() {
        return;
    }
    // SAFETY: `ctx` is the slot `call_with_error` passed in the FlatsyncError, which lives for
    // the whole plugin call this callback runs within; only shared access is taken.
    let slot = unsafe { &*ctx.cast_const().cast::<Mutex<Option<String>>>() };
    // SAFETY: per the ABI, `message` is valid for the duration of this callback.
    let text = unsafe { copy_text(message) };
    *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(text);
}

/// `FlatsyncHost::log`: forwards a plugin's log line into `tracing`. Thread-safe.
unsafe extern "C" fn host_log(ctx: *mut c_void, level: u32, message: FlatsyncStr) {
    if ctx.is_null() {
        return;
    }
    // SAFETY: `ctx` is the worker's LogContext, alive until after the instance's destroy
    // returns, which is as long as the ABI lets the plugin log; only shared access is taken.
    let context = unsafe { &*ctx.cast_const().cast::<LogContext>() };
    // SAFETY: per the ABI, `message` is valid for the duration of this callback.
    let text = unsafe { copy_text(message) };
    let (sink, plugin) = (&context.sink, &context.plugin);
    tracing::dispatcher::with_default(&context.dispatch, || match level {
        LOG_ERROR => {
            tracing::error!(target: PLUGIN_LOG_TARGET, sink = %sink, plugin = %plugin, "{text}")
        }
        LOG_WARN => {
            tracing::warn!(target: PLUGIN_LOG_TARGET, sink = %sink, plugin = %plugin, "{text}")
        }
        LOG_INFO => {
            tracing::info!(target: PLUGIN_LOG_TARGET, sink = %sink, plugin = %plugin, "{text}")
        }
        LOG_DEBUG => {
            tracing::debug!(target: PLUGIN_LOG_TARGET, sink = %sink, plugin = %plugin, "{text}")
        }
        _ => tracing::trace!(target: PLUGIN_LOG_TARGET, sink = %sink, plugin = %plugin, "{text}"),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps_and_stays_within_bounds() {
        let options = SinkOptions {
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_millis(1_000),
            ..SinkOptions::default()
        };
        for _ in 0..200 {
            assert!(backoff_delay(&options, 1) <= Duration::from_millis(100));
            assert!(backoff_delay(&options, 3) <= Duration::from_millis(400));
            assert!(backoff_delay(&options, 10) <= Duration::from_millis(1_000));
            assert!(backoff_delay(&options, u32::MAX) <= Duration::from_millis(1_000));
        }
        // Jittered, not fixed: 200 draws under a 1 s cap are not all equal.
        let draws: Vec<Duration> = (0..200).map(|_| backoff_delay(&options, 10)).collect();
        assert!(draws.iter().any(|d| *d != draws[0]));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(500)));
    }

    #[test]
    fn missing_message_names_the_status() {
        let result = CallResult {
            status: 7,
            message: None,
            held: None,
        };
        assert_eq!(
            result.message(),
            "plugin returned status 7 without a message"
        );
    }

    #[test]
    fn error_callback_keeps_the_last_message() {
        let result = call_with_error(|err| {
            // SAFETY: `err` is the live FlatsyncError of this call; the strings outlive the calls.
            unsafe {
                let set = (*err).set.expect("host always sets the callback");
                set((*err).ctx, borrowed(b"first"));
                set((*err).ctx, borrowed(b"second \xff"));
            }
            STATUS_FATAL
        });
        assert_eq!(result.status, STATUS_FATAL);
        assert_eq!(result.message.as_deref(), Some("second \u{fffd}"));
    }
}
