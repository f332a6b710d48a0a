//! A proxy in front of the simulator that lets a set number of HTTP requests through and holds
//! every later one. A test can then stop the daemon while it waits for a page that cannot
//! arrive, and show what the daemon does by the order of events instead of by timing it.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The proxy: listens on 127.0.0.1 and forwards to one upstream address. Answers pass freely;
/// requests beyond the allowance wait until the gate is dropped, then their connection closes.
#[derive(Debug)]
pub struct RequestGate {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    counts: Mutex<Counts>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Counts {
    allowed: u64,
    passed: u64,
    held: u64,
    closed: bool,
}

impl RequestGate {
    /// Forwards to `upstream_url` (`http://127.0.0.1:<port>`), letting the first `allowed`
    /// requests through.
    pub fn start(upstream_url: &str, allowed: u64) -> RequestGate {
        let upstream: SocketAddr = upstream_url
            .strip_prefix("http://")
            .and_then(|rest| rest.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("the gate forwards to http://IP:PORT, not {upstream_url}"));
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the gate on 127.0.0.1");
        let addr = listener.local_addr().expect("the gate's address");
        let shared = Arc::new(Shared {
            counts: Mutex::new(Counts {
                allowed,
                ..Counts::default()
            }),
            changed: Condvar::new(),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.lock().closed {
                    break;
                }
                let Ok(client) = client else { continue };
                let shared = Arc::clone(&accepting);
                std::thread::spawn(move || forward(client, upstream, &shared));
            }
        });
        RequestGate { addr, shared }
    }

    /// The URL to give the daemon instead of the upstream's.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests let through so far.
    pub fn passed(&self) -> u64 {
        self.shared.lock().passed
    }

    /// Requests waiting at the gate now.
    pub fn held(&self) -> u64 {
        self.shared.lock().held
    }
}

impl Drop for RequestGate {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        // Wakes the accept loop so it sees the gate closed.
        let _ = TcpStream::connect(self.addr);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a request may pass; false once the gate is closed.
    fn admit(&self) -> bool {
        let mut counts = self.lock();
        counts.held += 1;
        while !counts.closed && counts.passed >= counts.allowed {
            counts = self.changed.wait(counts).unwrap_or_else(|e| e.into_inner());
        }
        counts.held -= 1;
        if counts.closed {
            return false;
        }
        counts.passed += 1;
        true
    }
}

/// Copies answers back as they come, and requests forward one whole request at a time, each
/// only once admitted.
fn forward(client: TcpStream, upstream: SocketAddr, shared: &Shared) {
    let Ok(mut to_upstream) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(mut from_upstream), Ok(mut to_client)) = (to_upstream.try_clone(), client.try_clone())
    else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_upstream, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
    });
    let mut requests = BufReader::new(client);
    while let Some(request) = read_request(&mut requests) {
        if !shared.admit() || to_upstream.write_all(&request).is_err() {
            break;
        }
    }
    let _ = to_upstream.shutdown(Shutdown::Both);
}

/// One HTTP/1.1 request: its head and a `Content-Length` body. None at the end of the
/// connection, or for a chunked body, which the daemon's requests never have.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut request = Vec::new();
    let mut body_len = 0;
    loop {
        let start = request.len();
        if reader.read_until(b'\n', &mut request).ok()? == 0 {
            return None;
        }
        let line = String::from_utf8_lossy(&request[start..]).to_ascii_lowercase();
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.strip_prefix("content-length:") {
            body_len = value.trim().parse().ok()?;
        }
        if line.starts_with("transfer-encoding:") {
            return None;
        }
    }
    let start = request.len();
    request.resize(start + body_len, 0);
    reader.read_exact(&mut request[start..]).ok()?;
    Some(request)
}
