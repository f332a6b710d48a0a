//! What the simulator's test files share: addresses and keys, an HTTP client, a harness around
//! a simulator, the ids of a records page, a webhook receiver, and starting the binary.

#![allow(dead_code, reason = "each test file uses a part of it")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flatfile_sim::{RunningSim, SimConfig};
use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;

/// The default environment's secret key.
pub(crate) const SECRET: &str = "sk_demo";
/// The default legacy `X-Api-Key`.
pub(crate) const LEGACY_KEY: &str = "demo-key+demo-secret";
/// How long the binary may take to print its start line; a guard against a hang, not a
/// measure of speed.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Port 0 on loopback: a free port.
pub(crate) fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("HTTP client builds")
}

/// A simulator on a free port of 127.0.0.1 and a client for it; each test file adds the
/// requests it makes in an `impl Harness` of its own.
pub(crate) struct Harness {
    pub(crate) sim: RunningSim,
    pub(crate) http: reqwest::Client,
}

impl Harness {
    pub(crate) async fn start(config: SimConfig) -> Harness {
        let sim = RunningSim::start(config, local())
            .await
            .expect("simulator starts");
        Harness { sim, http: http() }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }
}

/// The record ids of a `GET /v1/sheets/{id}/records` page, in order.
pub(crate) fn record_ids_of(page: &Value) -> Vec<String> {
    page["data"]["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|record| record["id"].as_str().expect("id").to_owned())
        .collect()
}

/// What a [`receiver`] got: the `Authorization` header and the JSON body of each request.
pub(crate) type Received = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// A webhook receiver on 127.0.0.1 at `/hook`, answering `statuses` in turn (the last one from
/// then on).
pub(crate) async fn receiver(
    statuses: Vec<u16>,
) -> (SocketAddr, Received, tokio::task::JoinHandle<()>) {
    use axum::http::{HeaderMap, StatusCode};
    let received: Received = Arc::default();
    let store = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let store = Arc::clone(&store);
            let statuses = statuses.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .map(|v| v.to_str().expect("ASCII").to_owned());
                let body: Value = serde_json::from_slice(&body).expect("webhook body is JSON");
                let mut store = store.lock().expect("not poisoned");
                let status = statuses[store.len().min(statuses.len() - 1)];
                store.push((auth, body));
                (
                    StatusCode::from_u16(status).expect("valid status"),
                    "{\"accepted\":true}",
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(local())
        .await
        .expect("receiver binds");
    let addr = listener.local_addr().expect("bound address");
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("receiver serves");
    });
    (addr, received, task)
}

/// A `flatfile-sim` serving as `command` says (flags and environment), killed when dropped.
pub(crate) struct Binary {
    pub(crate) child: tokio::process::Child,
    /// The line it printed at start.
    pub(crate) start_line: String,
    /// Its base URL, from the start line.
    pub(crate) base_url: String,
}

/// Starts the binary and waits for its start line.
pub(crate) async fn start_binary(mut command: tokio::process::Command) -> Binary {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut start_line = String::new();
    tokio::time::timeout(
        START_TIMEOUT,
        tokio::io::BufReader::new(stdout).read_line(&mut start_line),
    )
    .await
    .unwrap_or_else(|_| panic!("no start line within {START_TIMEOUT:?}"))
    .expect("stdout readable");
    let base_url = start_line
        .split_whitespace()
        .nth(3)
        .expect("URL in the start line")
        .to_owned();
    Binary {
        child,
        start_line,
        base_url,
    }
}
