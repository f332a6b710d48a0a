//! Hostile clients and a busy state database: the listener limits (`header_timeout_secs`,
//! `body_timeout_secs`, `idle_timeout_secs`, `max_header_bytes`, `max_connections`) cut slow and
//! oversized requests, idle connections cannot take the daemon off the air even with few file
//! descriptors, and an inbox that cannot store is answered 503 + `Retry-After`, never 2xx.
//!
//! These tests are the reproduction of the attacks in the README's operations section. Times are
//! printed, not asserted: a loaded machine must not fail them; deadlines only bound a hang.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use flatfile_sim::legacy_webhook_body;
use flatsync_tests::daemon::free_port;
use flatsync_tests::{Daemon, DaemonProcess, TestDir, http, wait};
use rusqlite::Connection;

const TOKEN: &str = "hostile-token-0123456789";

/// Only bounds a hang: every wait below ends long before on any machine that works.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn webhook_addr(daemon: &DaemonProcess) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, daemon.port()))
}

/// Reads until the server closes the connection (EOF or reset); what it sent and how long
/// that took.
fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(HANG_GUARD))
        .expect("read timeout");
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the server did not close the connection within {HANG_GUARD:?}")
            }
            Err(_) => break,
        }
    }
    (
        String::from_utf8_lossy(&seen).into_owned(),
        started.elapsed(),
    )
}

/// Whether the server has closed `stream`, looking for at most a moment.
fn is_closed(stream: &TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("read timeout");
    let mut byte = [0u8; 512];
    let mut reader = stream;
    match reader.read(&mut byte) {
        Ok(0) => true,
        // A shed connection may first get its 503; the close follows.
        Ok(_) => is_closed(stream),
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

fn legit_body(event: &str) -> Vec<u8> {
    serde_json::to_vec(&legacy_webhook_body(&format!("b-{event}"), event, 10)).expect("JSON")
}

/// A daemon with a bearer token and no routes (an accepted event ends `unrouted`), with the
/// given `[webhook]` settings.
fn daemon(name: &str, webhook: &[(&str, &str)]) -> (TestDir, Daemon) {
    let dir = TestDir::new(name);
    let mut settings = Daemon::new(dir.path()).token(TOKEN);
    for (key, value) in webhook {
        settings = settings.set("webhook", key, value);
    }
    (dir, settings)
}

#[test]
fn a_half_sent_head_is_closed_after_the_header_timeout() {
    let (_dir, settings) = daemon("hostile-head", &[("header_timeout_secs", "1")]);
    let daemon = settings.start();
    let mut attacker = TcpStream::connect(webhook_addr(&daemon)).expect("connect");
    attacker
        .write_all(b"POST /flatfile/webhook HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .expect("write");
    let (sent, took) = read_until_closed(&mut attacker);
    assert!(!sent.contains(" 200 "), "{sent}");
    println!("half-sent head closed after {took:?} (header_timeout_secs = 1)");
    daemon.assert_alive("after a slow head");
}

#[test]
fn a_trickled_body_is_answered_408_after_the_body_timeout_and_nothing_is_stored() {
    let (_dir, settings) = daemon("hostile-body", &[("body_timeout_secs", "2")]);
    let daemon = settings.start();
    let body = legit_body("evt-trickled");
    let mut attacker = TcpStream::connect(webhook_addr(&daemon)).expect("connect");
    let head = format!(
        "POST /flatfile/webhook HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    attacker.write_all(head.as_bytes()).expect("write head");
    let started = Instant::now();
    let mut writer = attacker.try_clone().expect("clone");
    // One byte a second, as the attacker did, until the server hangs up.
    let trickle = std::thread::spawn(move || {
        for byte in body.iter().take(100) {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let (sent, _) = read_until_closed(&mut attacker);
    let took = started.elapsed();
    // The 408 is written before the close; a reset for the unread bytes may overtake it.
    assert!(
        sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
        "{sent}"
    );
    let answer = if sent.is_empty() { "closed" } else { "408" };
    println!("trickled body: {answer} after {took:?} (body_timeout_secs = 2)");
    let _ = attacker.shutdown(std::net::Shutdown::Both);
    trickle.join().expect("trickle thread");
    assert_eq!(daemon.inbox_len(), 0, "{:?}", daemon.inbox());
    daemon.assert_alive("after a slow body");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (_dir, settings) = daemon("hostile-idle", &[("idle_timeout_secs", "2")]);
    let daemon = settings.start();
    let mut client = TcpStream::connect(webhook_addr(&daemon)).expect("connect");
    // A whole request on a keep-alive connection: the 405 answer leaves the connection open.
    client
        .write_all(b"GET /flatfile/webhook HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    client
        .set_read_timeout(Some(HANG_GUARD))
        .expect("read timeout");
    let mut answer = [0u8; 1024];
    let n = client.read(&mut answer).expect("the answer");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    let (sent, took) = read_until_closed(&mut client);
    assert_eq!(sent, "", "nothing more is sent before the close");
    println!("idle keep-alive connection closed after {took:?} (idle_timeout_secs = 2)");
}

#[test]
fn an_oversized_head_is_refused_with_431() {
    let (_dir, settings) = daemon("hostile-oversize", &[("max_header_bytes", "4096")]);
    let daemon = settings.start();
    let mut client = TcpStream::connect(webhook_addr(&daemon)).expect("connect");
    let head = format!(
        "POST /flatfile/webhook HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(8192)
    );
    client.write_all(head.as_bytes()).expect("write");
    let (sent, _) = read_until_closed(&mut client);
    assert!(sent.starts_with("HTTP/1.1 431"), "{sent}");
    // A head within the limit still gets through.
    let reply = daemon.post_raw(&legit_body("evt-after-oversize"), Some(TOKEN));
    assert_eq!(reply.expect("answered").status, 200);
}

/// Connections that send half a head and then nothing, as in the issue.
fn attack(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).expect("connect attacker");
            // A write to a socket the server already closed can fail: that is the shedding.
            let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
            stream
        })
        .collect()
}

fn open_descriptors(daemon: &DaemonProcess) -> usize {
    let pid = daemon.pid().expect("the daemon runs");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .expect("the daemon's descriptors are listed")
}

#[test]
fn with_twice_max_connections_idle_attackers_webhooks_and_health_checks_are_still_served() {
    const MAX: usize = 64;
    const ADMIN_MAX: usize = 8;
    // The attackers alone would need 144 descriptors: only shedding keeps the daemon going.
    const FILES: u64 = 128;
    let admin_port = free_port();
    let (_dir, settings) = daemon(
        "hostile-flood",
        &[
            // Long timeouts: the attackers stay until the limit itself makes them go.
            ("header_timeout_secs", "300"),
            ("idle_timeout_secs", "300"),
            ("max_connections", &MAX.to_string()),
        ],
    );
    let daemon = settings
        .set("admin", "listen", &format!("\"127.0.0.1:{admin_port}\""))
        .set("admin", "header_timeout_secs", "300")
        .set("admin", "idle_timeout_secs", "300")
        .set("admin", "max_connections", &ADMIN_MAX.to_string())
        .nofile_limit(FILES)
        .start();
    println!(
        "descriptors before the attack: {}",
        open_descriptors(&daemon)
    );
    let admin_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port));
    wait::until(
        "the admin listener",
        HANG_GUARD,
        || TcpStream::connect(admin_addr).ok(),
        || daemon.log_tail(),
    );
    let mut attackers = attack(webhook_addr(&daemon), 2 * MAX);
    attackers.extend(attack(admin_addr, 2 * ADMIN_MAX));

    // Beyond the limits, attackers lose their connection at once, oldest first.
    let beyond = 2 * MAX - MAX + 2 * ADMIN_MAX - ADMIN_MAX;
    let closed = wait::until(
        "the attackers beyond the limits to be closed",
        HANG_GUARD,
        || {
            let closed = attackers.iter().filter(|s| is_closed(s)).count();
            (closed >= beyond).then_some(closed)
        },
        || daemon.log_tail(),
    );
    let descriptors = open_descriptors(&daemon);
    println!(
        "attackers: {}, closed by the daemon: {closed}, its descriptors: {descriptors} of {FILES}",
        attackers.len()
    );
    assert!(descriptors < FILES as usize);

    let started = Instant::now();
    let reply = daemon
        .post_raw(&legit_body("evt-under-attack"), Some(TOKEN))
        .expect("the webhook is answered");
    let latency = started.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["status"], "accepted", "{}", reply.text());
    println!("signed webhook under attack answered 200 in {latency:?}");
    let event = daemon.wait_final("evt-under-attack", HANG_GUARD);
    assert_eq!(event.status, "unrouted", "{event:?}");

    let started = Instant::now();
    let health = http::get(&format!("http://{admin_addr}/healthz"), &[]).expect("answered");
    assert_eq!(health.status, 200, "{}", health.text());
    println!("/healthz under attack answered in {:?}", started.elapsed());

    // An operator sees the attack in the metrics.
    let metrics = http::get(&format!("http://{admin_addr}/metrics"), &[]).expect("answered");
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    let evicted = |listener: &str| {
        closed_connections(&metrics.text(), listener, "evicted")
            .unwrap_or_else(|| panic!("no {listener} eviction counted:\n{}", metrics.text()))
    };
    assert!(evicted("webhook") >= (2 * MAX - MAX) as f64);
    assert!(evicted("admin") >= (2 * ADMIN_MAX - ADMIN_MAX) as f64);
    daemon.assert_alive("under the connection flood");
    drop(attackers);
}

/// The value of `flatsync_connections_closed_total` for a listener and reason.
fn closed_connections(exposition: &str, listener: &str, reason: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|line| line.starts_with("flatsync_connections_closed_total{"))
        .filter(|line| line.contains(&format!("listener=\"{listener}\"")))
        .find(|line| line.contains(&format!("reason=\"{reason}\"")))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[test]
fn a_write_locked_state_database_answers_503_with_retry_after_and_stores_nothing() {
    let (_dir, settings) = daemon("hostile-locked", &[]);
    let daemon = settings.start();
    let lock = Connection::open(daemon.settings().state_db()).expect("open the state database");
    lock.busy_timeout(HANG_GUARD).expect("busy timeout");
    // Another process holding the write lock, as a backup tool or a stuck operator might.
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");

    let body = legit_body("evt-locked");
    let started = Instant::now();
    let refused = daemon.post_raw(&body, Some(TOKEN)).expect("answered");
    let took = started.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.text());
    let retry_after = refused.header("retry-after").expect("a Retry-After header");
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s > 0),
        "{retry_after}"
    );
    println!("webhook against a locked state database answered 503 after {took:?}");
    // A WAL reader is not blocked by the writer's lock.
    assert!(
        daemon.event("evt-locked").is_none(),
        "a refused webhook was stored"
    );
    lock.execute_batch("COMMIT").expect("release the lock");

    // The sender's retry.
    let accepted = daemon.post_raw(&body, Some(TOKEN)).expect("answered");
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert_eq!(accepted.json()["status"], "accepted", "{}", accepted.text());
    let event = daemon.wait_final("evt-locked", HANG_GUARD);
    assert_eq!(event.status, "unrouted", "{event:?}");
    assert_eq!(daemon.inbox_len(), 1, "{:?}", daemon.inbox());
    assert!(daemon.log().contains("Could not store webhook"));
}
