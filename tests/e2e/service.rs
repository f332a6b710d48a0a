//! The systemd notify protocol, seen from a fake service manager: a datagram socket named by
//! `NOTIFY_SOCKET`, and `WATCHDOG_USEC` set as systemd sets it for `WatchdogSec=`.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flatsync_tests::{Daemon, TestDir};

/// `WATCHDOG_USEC` the tests give: systemd expects a ping at least every half of it.
const WATCHDOG: Duration = Duration::from_secs(2);

/// One datagram from the daemon, when it arrived, and for `READY=1` whether the webhook port
/// accepted a connection the moment the datagram was read.
#[derive(Debug)]
struct Notification {
    at: Instant,
    text: String,
    port_accepted: Option<bool>,
}

/// The service manager's side: reads datagrams on a thread until dropped.
struct FakeSystemd {
    socket_path: PathBuf,
    received: mpsc::Receiver<Notification>,
    log: Vec<Notification>,
}

impl FakeSystemd {
    /// Binds the socket. On `READY=1`, the reader connects to the webhook address it reads from
    /// `config` at that moment, so "ready" is checked against what a client would see.
    fn bind(dir: &Path, config: PathBuf) -> FakeSystemd {
        let socket_path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).expect("cannot bind the notify socket");
        let (send, received) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let at = Instant::now();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let port_accepted = text
                    .lines()
                    .any(|l| l == "READY=1")
                    .then(|| webhook_accepts(&config));
                if send
                    .send(Notification {
                        at,
                        text,
                        port_accepted,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        FakeSystemd {
            socket_path,
            received,
            log: Vec::new(),
        }
    }

    /// Collects whatever arrives within `span`.
    fn collect_for(&mut self, span: Duration) {
        let until = Instant::now() + span;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.received.recv_timeout(left) {
                Ok(n) => self.log.push(n),
                Err(_) => break,
            }
        }
    }

    /// Waits until a datagram holding `line` arrives; returns its index in the log.
    fn wait_for(&mut self, line: &str, limit: Duration) -> usize {
        if let Some(i) = self.find(line, 0) {
            return i;
        }
        let until = Instant::now() + limit;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.received.recv_timeout(left) {
                Ok(n) => {
                    self.log.push(n);
                    if let Some(i) = self.find(line, self.log.len() - 1) {
                        return i;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no `{line}` within {limit:?}; received: {:#?}", self.log);
    }

    fn find(&self, line: &str, from: usize) -> Option<usize> {
        (from..self.log.len()).find(|&i| self.log[i].text.lines().any(|l| l == line))
    }

    fn pings_between(&self, from: Instant, to: Instant) -> Vec<Instant> {
        self.log
            .iter()
            .filter(|n| n.at >= from && n.at <= to && n.text.lines().any(|l| l == "WATCHDOG=1"))
            .map(|n| n.at)
            .collect()
    }
}

/// Whether the webhook address in the config file accepts a TCP connection right now.
fn webhook_accepts(config: &Path) -> bool {
    let text = std::fs::read_to_string(config).unwrap_or_default();
    let addr = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .and_then(|a| a.parse::<SocketAddr>().ok());
    addr.is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

fn largest_gap(start: Instant, pings: &[Instant], end: Instant) -> Duration {
    let mut points = vec![start];
    points.extend_from_slice(pings);
    points.push(end);
    points
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

#[test]
fn ready_watchdog_and_stopping_follow_the_daemon_s_real_state() {
    let dir = TestDir::new("service-notify");
    let stall_file = dir.path().join("stall");
    let settings = Daemon::new(dir.path());
    let mut systemd = FakeSystemd::bind(dir.path(), settings.config_path());
    let settings = settings
        .env("NOTIFY_SOCKET", &systemd.socket_path)
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .env(flatsync_tests::STALL_FILE_ENV, &stall_file);

    let mut daemon = settings.start();
    for start in 1..=5 {
        // READY=1 means the listener accepts: the reader connected when the datagram came.
        let ready = systemd.wait_for("READY=1", Duration::from_secs(30));
        assert_eq!(
            systemd.log[ready].port_accepted,
            Some(true),
            "start {start}: READY=1 was sent before the webhook port accepted connections"
        );
        if start == 5 {
            break;
        }
        let status = daemon.stop();
        assert!(status.success(), "start {start}: stop ended {status}");
        systemd.wait_for("STOPPING=1", Duration::from_secs(5));
        systemd.collect_for(Duration::from_millis(100));
        systemd.log.clear();
        daemon.restart();
    }

    // Pings at least every half of WATCHDOG_USEC while the loop runs.
    let watch_from = Instant::now();
    systemd.collect_for(Duration::from_secs(4));
    let watch_to = Instant::now();
    let pings = systemd.pings_between(watch_from, watch_to);
    let gap = largest_gap(watch_from, &pings, watch_to);
    assert!(
        gap <= WATCHDOG / 2,
        "largest gap between watchdog pings {gap:?} > {:?} ({} pings in 4 s)",
        WATCHDOG / 2,
        pings.len()
    );

    // A stalled main loop stops the pings; it pings again once the loop runs.
    std::fs::write(&stall_file, b"").expect("create the stall file");
    let stalled_at = Instant::now();
    systemd.collect_for(Duration::from_secs(4));
    let late = systemd.pings_between(stalled_at + Duration::from_secs(2), Instant::now());
    assert!(
        late.is_empty(),
        "{} watchdog pings arrived more than 2 s into a stall of the main loop",
        late.len()
    );
    daemon.assert_alive("while its main loop was stalled by the test");
    std::fs::remove_file(&stall_file).expect("remove the stall file");
    let resumed_at = Instant::now();
    systemd.collect_for(Duration::from_secs(2));
    assert!(
        !systemd
            .pings_between(resumed_at, resumed_at + Duration::from_millis(1500))
            .is_empty(),
        "no watchdog ping within 1.5 s of the main loop running again"
    );

    let status_lines: Vec<&str> = systemd
        .log
        .iter()
        .flat_map(|n| n.text.lines())
        .filter(|l| l.starts_with("STATUS="))
        .collect();
    // `Running: <n> pending, <n> failed events`: what the inbox holds undone, read on the
    // status index (the done events, which the inbox keeps, are not counted every 5 s).
    let counts = |line: &str| -> Option<(u64, u64)> {
        let rest = line.strip_prefix("STATUS=Running: ")?;
        let (pending, rest) = rest.split_once(" pending, ")?;
        let failed = rest.strip_suffix(" failed events")?;
        Some((pending.parse().ok()?, failed.parse().ok()?))
    };
    assert!(
        status_lines.iter().any(|l| counts(l).is_some()),
        "no `STATUS=Running: <n> pending, <n> failed events` line: {status_lines:?}"
    );

    daemon.signal("TERM");
    let exit = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("flatsync did not exit within 30 s of SIGTERM");
    assert!(exit.success(), "SIGTERM should end with exit 0, got {exit}");
    // The datagram is queued on the socket before the process can exit, so it is read here.
    systemd.wait_for("STOPPING=1", Duration::from_secs(2));
}

#[test]
fn without_a_service_manager_nothing_is_sent_and_logs_can_be_json() {
    let dir = TestDir::new("service-plain");
    let mut daemon = Daemon::new(dir.path())
        .env("FLATSYNC_LOG_FORMAT", "json")
        .start();
    let status = daemon.stop();
    assert!(status.success(), "stop ended {status}");
    let log = daemon.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("=== "))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(!lines.is_empty(), "the daemon logged nothing");
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(
            value.get("level").is_some() && value.get("message").is_some(),
            "a JSON log line lacks level or message: {line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("\"message\":\"Stopped\"")),
        "no Stopped line in:\n{log}"
    );
}

/// Text logs written to a file carry no colour codes, so grep and log shippers read them as
/// they are; `CLICOLOR_FORCE` still forces colours, and `NO_COLOR` wins over it.
#[test]
fn text_logs_in_a_file_carry_colour_codes_only_when_forced() {
    /// A case: its name, the environment the daemon gets, whether colour codes are expected.
    type Case = (&'static str, &'static [(&'static str, &'static str)], bool);
    let cases: [Case; 3] = [
        ("plain", &[("NO_COLOR", "")], false),
        ("forced", &[("NO_COLOR", ""), ("CLICOLOR_FORCE", "1")], true),
        (
            "no-color-wins",
            &[("NO_COLOR", "1"), ("CLICOLOR_FORCE", "1")],
            false,
        ),
    ];
    for (name, env, coloured) in cases {
        let dir = TestDir::new(&format!("service-colour-{name}"));
        let mut daemon = Daemon::new(dir.path()).env("FLATSYNC_LOG_FORMAT", "text");
        for (key, value) in env {
            daemon = daemon.env(key, value);
        }
        let mut daemon = daemon.start();
        let status = daemon.stop();
        assert!(status.success(), "{name}: stop ended {status}");
        let log = daemon.log();
        assert!(
            log.contains("Stopped"),
            "{name}: no Stopped line in:\n{log}"
        );
        assert_eq!(
            log.contains('\u{1b}'),
            coloured,
            "{name} ({env:?}): escape codes in the log file should be {coloured}:\n{log}"
        );
    }
}
