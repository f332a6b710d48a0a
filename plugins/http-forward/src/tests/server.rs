//! A tiny HTTP/1.1 receiver on 127.0.0.1 for the tests: it records every request and answers
//! what the test's responder says.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use flatsync_plugin_sdk::serde_json::{self, Value};
use ureq::http::{HeaderMap, HeaderName, HeaderValue};

/// One request as the server read it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// When the whole request had been read.
    pub(crate) at: Instant,
    /// The status answered.
    pub(crate) status: u16,
    /// Just before the answer was written: the client cannot have seen it earlier.
    pub(crate) replied_at: Instant,
}

impl Received {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub(crate) fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("the client sent a valid name"),
                HeaderValue::from_str(value).expect("the client sent a valid value"),
            );
        }
        map
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    /// The `part` of a "flatsync" body.
    pub(crate) fn part(&self) -> u64 {
        self.json()["part"].as_u64().expect("a part number")
    }
}

/// What to answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn ok() -> Self {
        Self::status(200, r#"{"ok":true}"#)
    }

    pub(crate) fn status(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }

    pub(crate) fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

type Responder = Box<dyn FnMut(&Received) -> Reply + Send>;

/// The running server; its threads end with the test process.
#[derive(Debug)]
pub(crate) struct TestServer {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Received>>>,
}

impl TestServer {
    /// Answers each request with `responder(request)`.
    pub(crate) fn start(responder: impl FnMut(&Received) -> Reply + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let log = Arc::new(Mutex::new(Vec::new()));
        let responder: Arc<Mutex<Responder>> = Arc::new(Mutex::new(Box::new(responder)));
        let accept_log = Arc::clone(&log);
        std::thread::spawn(move || {
            for connection in listener.incoming() {
                let Ok(connection) = connection else { continue };
                let log = Arc::clone(&accept_log);
                let responder = Arc::clone(&responder);
                std::thread::spawn(move || serve(connection, &log, &responder));
            }
        });
        Self { addr, log }
    }

    /// Answers with `replies` in order, then 200 to everything.
    pub(crate) fn scripted(replies: Vec<Reply>) -> Self {
        let mut replies = replies.into_iter();
        Self::start(move |_| replies.next().unwrap_or_else(Reply::ok))
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub(crate) fn requests(&self) -> Vec<Received> {
        lock(&self.log).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Serves requests on one keep-alive connection until the client closes it.
fn serve(connection: TcpStream, log: &Mutex<Vec<Received>>, responder: &Mutex<Responder>) {
    let Ok(writer) = connection.try_clone() else {
        return;
    };
    let mut writer = writer;
    let mut reader = BufReader::new(connection);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        let length = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut received = Received {
            method,
            target,
            headers,
            body,
            at: Instant::now(),
            status: 0,
            replied_at: Instant::now(),
        };
        let reply = (lock(responder))(&received);
        received.status = reply.status;
        received.replied_at = Instant::now();
        lock(log).push(received);
        let mut response = format!(
            "HTTP/1.1 {} Scripted\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
            reply.status,
            reply.body.len()
        );
        for (name, value) in &reply.headers {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\n");
        response.push_str(&reply.body);
        if writer.write_all(response.as_bytes()).is_err() || writer.flush().is_err() {
            return;
        }
    }
}
