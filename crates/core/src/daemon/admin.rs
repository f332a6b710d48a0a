//! The admin listener: `/healthz`, `/readyz` and Prometheus `/metrics`.
//!
//! - `/healthz` (liveness): 200 while the main loop's heartbeat moved within the last
//!   [`STALL_AFTER`]; 503 once it stalls, so a supervisor restarts a wedged daemon. Draining
//!   is not a liveness failure.
//! - `/readyz` (readiness): 200 while the daemon takes events; 503 with `Retry-After` while it
//!   is starting or draining, so a load balancer sends webhooks elsewhere.
//! - `/metrics`: the Prometheus text format, version 0.0.4.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ListenerLimits;
use crate::health::Health;
use crate::state::{StateDb, StateError, now_ms};

/// What the admin endpoints read.
#[derive(Debug)]
pub(crate) struct AdminState {
    /// The state database; `/metrics` reads its gauges through a connection of its own.
    pub(crate) db: StateDb,
    /// Liveness and readiness.
    pub(crate) health: Arc<Health>,
}

/// How long the main loop's heartbeat may stand still before `/healthz` reports a stall: many
/// heartbeat intervals, so a slow disk or a busy machine is not taken for a wedged loop.
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(5);

/// How long connections still open at stop may take to finish their request before the
/// server returns anyway: a scraper must not hold the daemon's exit.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Seconds a client is asked to wait when `/readyz` answers 503.
const RETRY_AFTER_SECS: &str = "5";

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
/// The Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Shared {
    state_db: PathBuf,
    /// A PostgreSQL state's handle, whose gauges are read on the daemon's connection; `None`
    /// for SQLite, read through a connection of its own from `state_db`.
    postgres: Option<StateDb>,
    health: Arc<Health>,
    last_beat: Mutex<Instant>,
    stall_after: Duration,
}

impl Shared {
    fn since_last_beat(&self) -> Duration {
        self.last_beat
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }
}

/// Serves the admin endpoints on `listener` within `limits` until `stop` turns true (or its
/// sender is gone), then returns within [`STOP_GRACE`] even if a client holds a connection
/// open. Counters recorded before [`crate::metrics::install`] was called are lost, so call
/// that first.
pub(crate) async fn serve(
    listener: TcpListener,
    state: AdminState,
    limits: ListenerLimits,
    stop: watch::Receiver<bool>,
) {
    serve_with(listener, state, limits, stop, STALL_AFTER).await;
}

async fn serve_with(
    listener: TcpListener,
    state: AdminState,
    limits: ListenerLimits,
    stop: watch::Receiver<bool>,
    stall_after: Duration,
) {
    let shared = Arc::new(Shared {
        // Only the path: connections still open after stop must not keep an SQLite file open.
        state_db: state.db.path().to_owned(),
        postgres: state.db.is_postgres().then(|| state.db.clone()),
        health: Arc::clone(&state.health),
        last_beat: Mutex::new(Instant::now()),
        stall_after,
    });
    drop(state);
    let beats = tokio::spawn(track_heartbeat(
        shared.health.heartbeat(),
        Arc::clone(&shared),
    ));
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::clone(&shared));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            addr = %addr,
            max_connections = limits.max_connections,
            "Admin listener ready"
        );
    }
    crate::daemon::listener::serve(listener, app, limits, "admin", stop, Some(STOP_GRACE)).await;
    beats.abort();
}

/// Notes when the heartbeat moves. If the `Health` goes away, the beats stop and `/healthz`
/// reports a stall, which is the truth.
async fn track_heartbeat(mut beats: watch::Receiver<u64>, shared: Arc<Shared>) {
    while beats.changed().await.is_ok() {
        *shared
            .last_beat
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, TEXT_PLAIN)], body).into_response()
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let since = shared.since_last_beat();
    if since <= shared.stall_after {
        text(StatusCode::OK, "ok\n".to_owned())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stalled: the main loop has not moved for {:.1} s\n",
                since.as_secs_f64()
            ),
        )
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.health.is_ready() {
        return text(StatusCode::OK, "ready\n".to_owned());
    }
    let why = if shared.health.is_draining() {
        "draining\n"
    } else {
        "starting\n"
    };
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, why.to_owned());
    response.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    response
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let handle = match crate::metrics::install() {
        Ok(handle) => handle,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let read = match &shared.postgres {
        // One read on the daemon's own connection: PostgreSQL serves it beside the writes.
        Some(state) => Ok(state.gauges().await),
        // SQLite: a connection of its own, so a slow scrape never holds the daemon's.
        None => {
            let path = shared.state_db.clone();
            tokio::task::spawn_blocking(move || crate::state::report::read_gauges(&path)).await
        }
    };
    let gauges = match read {
        Ok(Ok(gauges)) => gauges,
        Ok(Err(e)) => {
            // The body names SQLite's complaint only; the file's path goes to the log.
            let e = match e {
                StateError::Sqlite { error, .. } => error.to_string(),
                other => other.to_string(),
            };
            // Failing the whole scrape is loud on purpose: gauges left out would read as
            // "no dead letters, no lag".
            tracing::warn!(error = %e, path = %shared.state_db.display(), "Metrics cannot read the state database");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the state database: {e}\n"),
            );
        }
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("state database read failed: {e}\n"),
            );
        }
    };
    let mut body = handle.render();
    crate::metrics::render_state_gauges(&mut body, &gauges, now_ms());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::metrics::tests::{parse_exposition, value_of};
    use crate::metrics::{CHECKPOINT_LAG, DEAD_LETTERS, EVENTS_PENDING, ROWS_DELIVERED};

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// One HTTP/1.1 GET with `Connection: close`, read to the end.
    async fn get(addr: SocketAddr, path: &str) -> Reply {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .expect("the answer arrives")
            .expect("read answer");
        let raw = String::from_utf8(raw).expect("UTF-8 answer");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect::<Vec<_>>();
        let reply = Reply {
            status,
            headers,
            body: body.to_owned(),
        };
        if let Some(length) = reply.header("content-length") {
            assert_eq!(length.parse::<usize>().ok(), Some(reply.body.len()));
        }
        reply
    }

    struct Running {
        addr: SocketAddr,
        health: Arc<Health>,
        db: StateDb,
        stop: watch::Sender<bool>,
        server: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    async fn start(stall_after: Duration) -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(dir.path()).expect("open state");
        let health = Arc::new(Health::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stop_rx) = watch::channel(false);
        let state = AdminState {
            db: db.clone(),
            health: Arc::clone(&health),
        };
        let server = tokio::spawn(serve_with(
            listener,
            state,
            ListenerLimits::ADMIN_DEFAULTS,
            stop_rx,
            stall_after,
        ));
        Running {
            addr,
            health,
            db,
            stop,
            server,
            _dir: dir,
        }
    }

    #[tokio::test]
    async fn healthz_follows_the_heartbeat() {
        let admin = start(Duration::from_millis(400)).await;
        admin.health.beat();
        let reply = get(admin.addr, "/healthz").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));

        // No beats: the loop is stalled.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let reply = get(admin.addr, "/healthz").await;
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(reply.body.contains("main loop"), "{}", reply.body);

        // Beats again: healthy again.
        admin.health.beat();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(get(admin.addr, "/healthz").await.status, 200);
        let _ = admin.stop.send(true);
        admin.server.await.expect("server task");
    }

    #[tokio::test]
    async fn readyz_tells_starting_ready_and_draining_apart() {
        let admin = start(STALL_AFTER).await;
        let reply = get(admin.addr, "/readyz").await;
        assert_eq!((reply.status, reply.body.as_str()), (503, "starting\n"));
        assert_eq!(reply.header("retry-after"), Some(RETRY_AFTER_SECS));

        admin.health.set_ready();
        let reply = get(admin.addr, "/readyz").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ready\n"));
        assert_eq!(reply.header("retry-after"), None);

        admin.health.set_draining();
        let reply = get(admin.addr, "/readyz").await;
        assert_eq!((reply.status, reply.body.as_str()), (503, "draining\n"));
        assert_eq!(reply.header("retry-after"), Some(RETRY_AFTER_SECS));
        // Draining is not death: liveness stays up while the loop runs.
        admin.health.beat();
        assert_eq!(get(admin.addr, "/healthz").await.status, 200);

        assert_eq!(get(admin.addr, "/nope").await.status, 404);
        assert_eq!(get(admin.addr, "/").await.status, 404);
        let _ = admin.stop.send(true);
        admin.server.await.expect("server task");
    }

    #[tokio::test]
    async fn metrics_show_counters_and_the_state_database() {
        let admin = start(STALL_AFTER).await;
        let db = &admin.db;
        let now = now_ms();
        // e1: done for both sinks. e2: failed at "admin-test-a", still pending at
        // "admin-test-b" since 30 s. e3: pending, not routed yet.
        for (id, received) in [("e1", now - 90_000), ("e2", now - 30_000), ("e3", now)] {
            db.insert_event(id.into(), "legacy", "t".into(), b"{}".to_vec(), received)
                .await
                .expect("insert");
        }
        let sinks = vec!["admin-test-a".to_owned(), "admin-test-b".to_owned()];
        for id in ["e1", "e2"] {
            db.plan_event(id, sinks.clone(), Vec::new())
                .await
                .expect("plan");
        }
        for sink in &sinks {
            db.set_delivery("e1", sink, crate::state::DeliveryStatus::Done, 10, None)
                .await
                .expect("done");
        }
        db.set_event_status("e1", crate::EventStatus::Done, None)
            .await
            .expect("status");
        db.set_delivery(
            "e2",
            "admin-test-a",
            crate::state::DeliveryStatus::Failed,
            0,
            Some("refused".into()),
        )
        .await
        .expect("failed");
        crate::metrics::rows_delivered("admin-test-a", "admin_test", 10);

        let reply = get(admin.addr, "/metrics").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("content-type"), Some(PROMETHEUS_TEXT));
        let samples =
            parse_exposition(&reply.body).unwrap_or_else(|e| panic!("{e}\n{}", reply.body));
        let a = [("sink", "admin-test-a")];
        let b = [("sink", "admin-test-b")];
        assert_eq!(value_of(&samples, ROWS_DELIVERED, &a), Some(10.0));
        assert_eq!(value_of(&samples, EVENTS_PENDING, &[]), Some(2.0));
        assert_eq!(value_of(&samples, DEAD_LETTERS, &a), Some(1.0));
        assert_eq!(value_of(&samples, DEAD_LETTERS, &b), Some(0.0));
        assert_eq!(value_of(&samples, CHECKPOINT_LAG, &a), Some(0.0));
        let lag = value_of(&samples, CHECKPOINT_LAG, &b).expect("lag of b");
        assert!((30.0..60.0).contains(&lag), "lag {lag}");

        // A retried dead letter leaves the gauge at once.
        db.set_delivery(
            "e2",
            "admin-test-a",
            crate::state::DeliveryStatus::Pending,
            0,
            None,
        )
        .await
        .expect("retry");
        let samples = parse_exposition(&get(admin.addr, "/metrics").await.body).expect("parses");
        assert_eq!(value_of(&samples, DEAD_LETTERS, &a), Some(0.0));
        assert!(value_of(&samples, CHECKPOINT_LAG, &a).is_some_and(|lag| lag >= 30.0));

        let _ = admin.stop.send(true);
        admin.server.await.expect("server task");
    }

    #[tokio::test]
    async fn an_unreadable_state_database_fails_the_scrape_loudly() {
        let admin = start(STALL_AFTER).await;
        let path = admin.db.path().to_owned();
        drop(admin.db);
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(&file);
        }
        let reply = get(admin.addr, "/metrics").await;
        assert_eq!(reply.status, 500, "{}", reply.body);
        assert!(reply.body.contains("state database"), "{}", reply.body);
        let _ = admin.stop.send(true);
        admin.server.await.expect("server task");
    }

    #[tokio::test]
    async fn stop_ends_the_server_even_with_a_connection_held_open() {
        let admin = start(STALL_AFTER).await;
        // A client that connects and never finishes its request.
        let mut idle = TcpStream::connect(admin.addr).await.expect("connect");
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        assert_eq!(get(admin.addr, "/readyz").await.status, 503);
        let _ = admin.stop.send(true);
        // A hang guard, not a speed claim: without the stop grace the held connection keeps
        // `serve` waiting for ever.
        tokio::time::timeout(Duration::from_secs(120), admin.server)
            .await
            .expect("serve returned although a client held a connection")
            .expect("server task");
        // The listener is closed: nothing answers any more.
        let refused = TcpStream::connect(admin.addr).await;
        assert!(refused.is_err(), "the port still accepts after stop");
    }

    #[tokio::test]
    async fn a_dropped_stop_sender_also_stops_the_server() {
        let admin = start(STALL_AFTER).await;
        drop(admin.stop);
        tokio::time::timeout(Duration::from_secs(5), admin.server)
            .await
            .expect("serve returns")
            .expect("server task");
    }
}
