//! The HTTP/1.1 serving loop of both listeners (webhook and admin), with the limits that keep
//! hostile or broken clients from holding the process's file descriptors:
//!
//! - a connection with no request in progress is closed after `idle_timeout`, before its first
//!   request or between two;
//! - a request head must be complete `header_timeout` after its first byte;
//! - heads larger than `max_header_bytes` are answered 431 by hyper, and the connection closed;
//! - at most `max_connections` are open. At the limit, the connection that has waited longest
//!   without a request in progress is closed to make room for the new one, so idle attackers
//!   cannot lock legitimate senders out; when every connection is busy with a request, the new
//!   one gets a best-effort `503` and is closed at once. Either way a descriptor is always left
//!   for the next sender.
//!
//! hyper's own `header_read_timeout` is not used: it also runs while a keep-alive connection
//! waits for its next request, so it cannot be told apart from the idle timeout. Instead every
//! connection has a [`Tracker`] fed by its socket (the first byte of a head) and its service (a
//! request started or answered), and a watchdog that closes it when its phase runs over.
//! Request bodies are timed by the handlers that read them (see `webhook.rs`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::config::ListenerLimits;

/// What a connection shed at the limit is told, written without waiting: the socket may not
/// take it, and nothing may wait on an attacker.
const SHED_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\
Connection: close\r\nContent-Length: 0\r\n\r\n";

/// How long the accept loop waits for an evicted connection to give its place back. It is
/// closed by its own task, normally within microseconds; a shed is the fallback.
const EVICTION_WAIT: Duration = Duration::from_millis(250);

/// Pause after an accept error that is not about one connection (EMFILE, ENFILE, ENOBUFS), so
/// the loop does not spin while the process is out of descriptors or memory.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Shortest time between two warnings about sheds or accept errors: an attack must not turn
/// into a log flood.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stop` turns true (or its sender is gone), then stops
/// accepting, closes connections with no request in progress and waits for the requests in
/// progress: at most `grace` when given, else until they end (the limits bound that).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    name: &'static str,
    mut stop: watch::Receiver<bool>,
    grace: Option<Duration>,
) {
    let server = Server {
        app,
        limits,
        name,
        permits: Arc::new(Semaphore::new(limits.max_connections)),
        registry: Arc::new(Registry::default()),
        stop: stop.clone(),
    };
    let mut crowded = Throttle::default();
    let mut failing = Throttle::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((stream, _)) => server.admit(stream, &mut crowded).await,
            Err(e) if per_connection(&e) => {}
            Err(e) => {
                if let Some(repeats) = failing.due() {
                    tracing::warn!(listener = name, error = %e, repeats, "Cannot accept connections");
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
    drop(listener);
    server.wait_for_connections(grace).await;
}

/// Accept errors that concern one connection only, after which accepting the next is fine.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

struct Server {
    app: Router,
    limits: ListenerLimits,
    name: &'static str,
    /// One permit per open connection, held by its task.
    permits: Arc<Semaphore>,
    registry: Arc<Registry>,
    stop: watch::Receiver<bool>,
}

impl Server {
    /// Gives `stream` a place, evicting the longest-idle connection when there is none, or
    /// sheds it.
    async fn admit(&self, stream: TcpStream, crowded: &mut Throttle) {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let evicted = self.registry.evict_longest_idle();
                if let Some(repeats) = crowded.due() {
                    tracing::warn!(
                        listener = self.name,
                        max_connections = self.limits.max_connections,
                        evicted,
                        repeats,
                        "Listener at its connection limit"
                    );
                }
                if evicted {
                    let freed = Arc::clone(&self.permits).acquire_owned();
                    tokio::time::timeout(EVICTION_WAIT, freed)
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    None
                }
            }
        };
        match permit {
            Some(permit) => {
                let tracker = self.registry.register();
                tokio::spawn(connection(
                    stream,
                    self.app.clone(),
                    self.limits,
                    self.name,
                    tracker,
                    self.stop.clone(),
                    permit,
                ));
            }
            None => {
                // Best effort and never waiting; dropping the stream closes it.
                let _ = stream.try_write(SHED_ANSWER);
                crate::metrics::connection_closed(self.name, "shed");
            }
        }
    }

    async fn wait_for_connections(&self, grace: Option<Duration>) {
        let all = u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX);
        let drained = self.permits.acquire_many(all);
        let left_behind = match grace {
            None => drained.await.is_err(),
            Some(grace) => !matches!(tokio::time::timeout(grace, drained).await, Ok(Ok(_))),
        };
        if left_behind {
            tracing::debug!(
                listener = self.name,
                "Connections still open at stop were left behind"
            );
        }
    }
}

/// Counts events and says when one is worth a warning: the first, then one per
/// [`WARN_EVERY`] with how many happened since.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    since: u64,
}

impl Throttle {
    fn due(&mut self) -> Option<u64> {
        self.since += 1;
        let now = Instant::now();
        if self.last.is_some_and(|last| now - last < WARN_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No request in progress and no byte of the next one read.
    Idle,
    /// Some of a request head read, not all of it.
    Head,
    /// A request is being handled (its body read, its answer computed).
    Busy,
}

/// The phase of one connection and since when, shared by its socket, its service and its
/// watchdog.
struct Tracker {
    id: u64,
    phase: Mutex<(Phase, Instant)>,
    changed: Notify,
    evicted: AtomicBool,
}

impl Tracker {
    fn snapshot(&self) -> (Phase, Instant) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enter(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = (phase, Instant::now());
        self.changed.notify_one();
    }

    /// Bytes came in: an idle connection has started a request head.
    fn bytes_read(&self) {
        let mut state = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if state.0 == Phase::Idle {
            *state = (Phase::Head, Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.changed.notify_one();
    }
}

/// The open connections of one listener, so the longest-idle one can be found at the limit.
/// Holds at most `max_connections` entries: one per connection task, removed when it ends.
#[derive(Default)]
struct Registry {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Tracker>>>,
}

impl Registry {
    fn register(self: &Arc<Self>) -> Registered {
        let tracker = Arc::new(Tracker {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            phase: Mutex::new((Phase::Idle, Instant::now())),
            changed: Notify::new(),
            evicted: AtomicBool::new(false),
        });
        self.lock().insert(tracker.id, Arc::clone(&tracker));
        Registered {
            registry: Arc::clone(self),
            tracker,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Tracker>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks for closing the connection that has been without a request in progress (idle, or
    /// still sending its head) the longest. `false` when every connection is busy.
    fn evict_longest_idle(&self) -> bool {
        let open = self.lock();
        let victim = open
            .values()
            .filter(|t| !t.evicted.load(Ordering::Acquire))
            .map(|t| (t, t.snapshot()))
            .filter(|(_, (phase, _))| *phase != Phase::Busy)
            .min_by_key(|(_, (_, since))| *since);
        match victim {
            Some((tracker, _)) => {
                tracker.evict();
                true
            }
            None => false,
        }
    }
}

/// A connection's entry in the registry, removed when the connection task ends however it
/// ends.
struct Registered {
    registry: Arc<Registry>,
    tracker: Arc<Tracker>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.tracker.id);
    }
}

/// Why the watchdog ended a connection.
#[derive(Debug)]
enum Closed {
    HeaderTimeout,
    IdleTimeout,
    Evicted,
    Stopping,
}

impl Closed {
    /// The `reason` label of [`crate::metrics::CONNECTIONS_CLOSED`]; `None` for a stop.
    fn reason(&self) -> Option<&'static str> {
        match self {
            Closed::HeaderTimeout => Some("header_timeout"),
            Closed::IdleTimeout => Some("idle_timeout"),
            Closed::Evicted => Some("evicted"),
            Closed::Stopping => None,
        }
    }
}

/// Serves one connection until it ends, its phase runs over or it is evicted.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: ListenerLimits,
    name: &'static str,
    entry: Registered,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let tracker = &entry.tracker;
    let io = TokioIo::new(Watched {
        stream,
        tracker: Arc::clone(tracker),
    });
    let service = Tracked {
        inner: TowerToHyperService::new(app),
        tracker: Arc::clone(tracker),
    };
    let conn = http1::Builder::new()
        .header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    let ended = loop {
        tokio::select! {
            served = conn.as_mut() => break served.err().map(|e| e.to_string()),
            closed = watchdog(tracker, &limits, stopping) => {
                if let Some(reason) = closed.reason() {
                    crate::metrics::connection_closed(name, reason);
                }
                break Some(format!("{closed:?}"));
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                // Finish a request in progress, without keep-alive; the watchdog closes the
                // connection at once if none is.
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Some(reason) = ended {
        tracing::debug!(listener = name, reason, "Connection closed");
    }
}

/// Resolves when the connection must be closed: its phase ran over its limit, it was
/// evicted, or the listener is stopping and no request is in progress.
async fn watchdog(tracker: &Tracker, limits: &ListenerLimits, stopping: bool) -> Closed {
    loop {
        let (phase, since) = tracker.snapshot();
        if tracker.evicted.load(Ordering::Acquire) {
            if phase != Phase::Busy {
                return Closed::Evicted;
            }
            // Chosen just as its request started: a request in progress is never cut, so the
            // newcomer waiting for this place is shed instead.
            tracker.evicted.store(false, Ordering::Release);
        }
        let (limit, closed) = match phase {
            _ if stopping && phase != Phase::Busy => return Closed::Stopping,
            Phase::Idle => (limits.idle_timeout, Closed::IdleTimeout),
            Phase::Head => (limits.header_timeout, Closed::HeaderTimeout),
            Phase::Busy => {
                tracker.changed.notified().await;
                continue;
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(since + limit) => {
                if tracker.snapshot() == (phase, since) {
                    return closed;
                }
            }
            () = tracker.changed.notified() => {}
        }
    }
}

/// The socket, telling the tracker when bytes arrive.
struct Watched {
    stream: TcpStream,
    tracker: Arc<Tracker>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.tracker.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The router, telling the tracker when a request starts and when its answer is ready.
struct Tracked {
    inner: TowerToHyperService<Router>,
    tracker: Arc<Tracker>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request<Incoming>) -> Answer {
        self.tracker.enter(Phase::Busy);
        let tracker = Arc::clone(&self.tracker);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            // From here the connection waits for the next request; a client that does not
            // read the answer is bounded by the idle timeout too.
            tracker.enter(Phase::Idle);
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Bounds a hang only; the behaviour is asserted, the time printed.
    const HANG_GUARD: Duration = Duration::from_secs(30);

    fn limits(max_connections: usize) -> ListenerLimits {
        ListenerLimits {
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(2),
            max_connections,
            max_header_bytes: 2048,
        }
    }

    struct Running {
        addr: SocketAddr,
        stop: watch::Sender<bool>,
        server: tokio::task::JoinHandle<()>,
    }

    async fn start(limits: ListenerLimits) -> Running {
        let app = Router::new().route("/", get(|| async { "ok" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                "slow ok"
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, app, limits, "test", stop_rx, None));
        Running { addr, stop, server }
    }

    fn request(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
    }

    /// Reads until the server closes the connection; what it sent and how long that took.
    async fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
        let started = Instant::now();
        let mut seen = Vec::new();
        let read = tokio::time::timeout(HANG_GUARD, async {
            let mut chunk = [0u8; 4096];
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the server never closed the connection");
        (
            String::from_utf8_lossy(&seen).into_owned(),
            started.elapsed(),
        )
    }

    /// Reads one answer of a keep-alive connection (enough for the tiny test bodies).
    async fn read_answer(stream: &mut TcpStream) -> String {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(HANG_GUARD, stream.read(&mut chunk))
            .await
            .expect("an answer arrives")
            .expect("read");
        String::from_utf8_lossy(&chunk[..n]).into_owned()
    }

    #[tokio::test]
    async fn a_head_sent_too_slowly_is_cut_even_while_bytes_trickle_in() {
        let server = start(limits(8)).await;
        let mut stalled = TcpStream::connect(server.addr).await.expect("connect");
        stalled
            .write_all(b"GET / HTTP/1.1\r\nHo")
            .await
            .expect("write");
        let mut trickling = TcpStream::connect(server.addr).await.expect("connect");
        // Six seconds of head, one byte per 100 ms: the header timeout runs from the first
        // byte, so the server must cut it while it is still being sent.
        let trickle = tokio::spawn(async move {
            let head = format!("GET / HTTP/1.1\r\nX-Slow: {}", "a".repeat(44));
            for byte in head.as_bytes() {
                if trickling.write_all(&[*byte]).await.is_err() {
                    return (trickling, true);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (trickling, false)
        });
        let (sent, took) = read_until_closed(&mut stalled).await;
        assert!(!sent.contains("200"), "{sent}");
        println!("stalled head closed after {took:?} (header timeout 1 s)");
        let (mut trickling, cut) = trickle.await.expect("trickle task");
        assert!(cut, "a head trickled for 6 s was not cut");
        let (sent, _) = read_until_closed(&mut trickling).await;
        assert!(!sent.contains("200"), "{sent}");
        // The listener still serves.
        let mut fine = TcpStream::connect(server.addr).await.expect("connect");
        fine.write_all(&request("/")).await.expect("write");
        assert!(read_answer(&mut fine).await.starts_with("HTTP/1.1 200"));
        let _ = server.stop.send(true);
        server.server.await.expect("server task");
    }

    #[tokio::test]
    async fn idle_keep_alive_connections_are_closed_but_slow_answers_are_not() {
        let server = start(limits(8)).await;
        // A request that takes longer than both timeouts is answered: it is in progress.
        let mut slow = TcpStream::connect(server.addr).await.expect("connect");
        slow.write_all(&request("/slow")).await.expect("write");
        let answer = read_answer(&mut slow).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("slow ok"), "{answer}");
        // Then it sits idle on keep-alive and is closed.
        let (sent, took) = read_until_closed(&mut slow).await;
        assert_eq!(sent, "");
        println!("idle keep-alive connection closed after {took:?} (idle timeout 2 s)");
        // A connection that never sends anything is idle too.
        let mut silent = TcpStream::connect(server.addr).await.expect("connect");
        let (sent, took) = read_until_closed(&mut silent).await;
        assert_eq!(sent, "");
        println!("silent connection closed after {took:?}");
        let _ = server.stop.send(true);
        server.server.await.expect("server task");
    }

    #[tokio::test]
    async fn an_oversized_head_is_answered_431() {
        let server = start(limits(8)).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let head = format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
            "a".repeat(4096)
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let (sent, _) = read_until_closed(&mut stream).await;
        assert!(sent.starts_with("HTTP/1.1 431"), "{sent}");
        let _ = server.stop.send(true);
        server.server.await.expect("server task");
    }

    #[tokio::test]
    async fn at_the_limit_the_longest_idle_connection_makes_room() {
        let server = start(limits(2)).await;
        let mut oldest = TcpStream::connect(server.addr).await.expect("connect");
        oldest.write_all(b"GET / HT").await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut newer = TcpStream::connect(server.addr).await.expect("connect");
        newer.write_all(b"GET / HT").await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;

        let mut legit = TcpStream::connect(server.addr).await.expect("connect");
        let started = Instant::now();
        legit.write_all(&request("/")).await.expect("write");
        let answer = read_answer(&mut legit).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        println!("answered at the limit after {:?}", started.elapsed());
        // The oldest was closed to make room; the newer one still has its place.
        let (sent, _) = read_until_closed(&mut oldest).await;
        assert_eq!(sent, "");
        newer
            .write_all(b"TP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        assert!(read_answer(&mut newer).await.starts_with("HTTP/1.1 200"));
        let _ = server.stop.send(true);
        server.server.await.expect("server task");
    }

    #[tokio::test]
    async fn when_every_connection_is_busy_a_new_one_is_shed_at_once_with_503() {
        let server = start(limits(1)).await;
        let mut busy = TcpStream::connect(server.addr).await.expect("connect");
        busy.write_all(&request("/slow")).await.expect("write");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut shed = TcpStream::connect(server.addr).await.expect("connect");
        let (sent, took) = read_until_closed(&mut shed).await;
        assert!(sent.starts_with("HTTP/1.1 503"), "{sent}");
        assert!(sent.contains("Retry-After: 5"), "{sent}");
        println!("shed after {took:?}");
        // The busy request is not disturbed.
        assert!(read_answer(&mut busy).await.starts_with("HTTP/1.1 200"));
        let _ = server.stop.send(true);
        server.server.await.expect("server task");
    }

    #[tokio::test]
    async fn a_body_nobody_reads_ends_its_connection_after_the_answer() {
        // The admin endpoints rely on this instead of a body timeout.
        let server = start(limits(8)).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nx")
            .await
            .expect("write");
        let (sent, took) = read_until_closed(&mut stream).await;
        assert!(sent.starts_with("HTTP/1.1 200"), "{sent}");
        println!("closed {took:?} after the request, 99 body bytes never sent");
        let _ = server.stop.send(true);
        server.server.await.expect("server task");
    }

    #[tokio::test]
    async fn stop_closes_idle_connections_and_lets_a_request_in_progress_finish() {
        let server = start(limits(8)).await;
        let mut idle = TcpStream::connect(server.addr).await.expect("connect");
        idle.write_all(b"GET / HTTP/1.1\r\nHo")
            .await
            .expect("write");
        let mut busy = TcpStream::connect(server.addr).await.expect("connect");
        busy.write_all(&request("/slow")).await.expect("write");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = server.stop.send(true);
        let (sent, _) = read_until_closed(&mut idle).await;
        assert_eq!(sent, "");
        let (sent, _) = read_until_closed(&mut busy).await;
        assert!(sent.starts_with("HTTP/1.1 200"), "{sent}");
        assert!(sent.ends_with("slow ok"), "{sent}");
        tokio::time::timeout(HANG_GUARD, server.server)
            .await
            .expect("serve returns once the request is answered")
            .expect("server task");
        assert!(TcpStream::connect(server.addr).await.is_err());
    }
}
