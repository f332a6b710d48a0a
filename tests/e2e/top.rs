//! `flatsync top`: the full-screen view driven in a pseudo-terminal (tmux) during a running
//! import, and the plain text it prints into a pipe.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use flatfile_sim::{SimConfig, legacy_webhook_body};
use flatsync_tests::artifacts::Artifacts;
use flatsync_tests::daemon::free_port;
use flatsync_tests::{Daemon, DaemonProcess, Sim, TestDir, wait};

use crate::common::EVENT_DEADLINE;

/// Rows of the import: at one page of 500 per 250 ms it stays in flight for 25 s or more,
/// long enough to see it move.
const ROWS: u64 = 50_000;

/// How long a screen or a process gets to show what is waited for.
const SCREEN_DEADLINE: Duration = Duration::from_secs(60);

/// A daemon (with an admin listener) delivering a slow import of [`ROWS`] rows to `archive`,
/// started and with some rows checkpointed.
fn slow_import(dir: &TestDir, event: &str) -> (Sim, DaemonProcess) {
    let sim = Sim::start(SimConfig {
        rows: ROWS,
        page_latency: Duration::from_millis(250),
        ..SimConfig::default()
    });
    let settings = Daemon::new(dir.path())
        .sim(&sim)
        .sink_csv("archive")
        .route(&["portalImportSubmitted"], &["archive"])
        .page_size(500)
        .set("fetch", "pages_in_flight", "1")
        .set("daemon", "checkpoint_interval_ms", "200")
        .set("admin", "listen", &format!("\"127.0.0.1:{}\"", free_port()));
    let daemon = settings.start();
    let reply = daemon.post(&legacy_webhook_body(&format!("b-{event}"), event, ROWS));
    assert_eq!(reply.status, 200, "webhook answer: {}", reply.text());
    wait::until(
        "the first rows checkpointed",
        EVENT_DEADLINE,
        || (daemon.checkpointed_rows() > 0).then_some(()),
        || daemon.log_tail(),
    );
    (sim, daemon)
}

/// The number before `/<ROWS>` on the screen line that names `event`: the rows done.
fn rows_done(screen: &str, event: &str) -> Option<u64> {
    let needle = format!("/{ROWS}");
    screen
        .lines()
        .filter(|line| line.contains(event))
        .find_map(|line| {
            let before = &line[..line.find(&needle)?];
            let digits: String = before
                .chars()
                .rev()
                .take_while(char::is_ascii_digit)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            digits.parse().ok()
        })
}

/// A tmux server of its own (`-L`), killed when the test ends however it ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(label: &str, width: u16, height: u16, command: &str) -> Tmux {
        let binary = Path::new("/usr/bin/tmux");
        assert!(
            binary.is_file(),
            "tmux is missing ({}): this test drives `flatsync top` in a tmux pseudo-terminal; \
             install it (apt-get install tmux)",
            binary.display()
        );
        let tmux = Tmux {
            socket: format!("flatsync-{label}-{}", std::process::id()),
        };
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "-s",
            "top",
            command,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("/usr/bin/tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("cannot run tmux")
    }

    fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-t", "top"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let out = self.run(&["send-keys", "-t", "top", keys]);
        assert!(out.status.success(), "tmux send-keys {keys} failed");
    }

    /// Waits until the screen satisfies `test`, which returns what it found.
    fn wait_for<T>(&self, what: &str, mut test: impl FnMut(&str) -> Option<T>) -> T {
        wait::until(
            what,
            SCREEN_DEADLINE,
            || test(&self.screen()),
            || format!("screen:\n{}", self.screen()),
        )
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// Quotes `text` for `sh`.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[test]
fn top_in_a_terminal_shows_growing_progress_and_restores_the_terminal_on_q() {
    let dir = TestDir::new("top-tty");
    let event = "evt-top-tty";
    let (_sim, mut daemon) = slow_import(&dir, event);
    let flatsync = Artifacts::locate().flatsync();
    let config = daemon.settings().config_path();
    // After top exits, the shell prints the terminal's modes, then top's status: the status
    // line comes last, so a screen that shows it shows the modes too. It then waits to be read;
    // the tmux server is killed when the test ends.
    let script = format!(
        "{} top --config {} --interval 0.5; status=$?; stty -a; echo \"top exited with $status\"; sleep 600",
        sh_quote(&flatsync.to_string_lossy()),
        sh_quote(&config.to_string_lossy()),
    );
    // Through `sh` whatever the user's shell is, for `$?`.
    let tmux = Tmux::start("top", 160, 40, &format!("sh -c {}", sh_quote(&script)));

    let first = tmux.wait_for("the event's progress bar on screen", |screen| {
        rows_done(screen, event).filter(|&n| n > 0)
    });
    let screen = tmux.screen();
    assert!(
        screen.contains("archive") && screen.contains("In flight"),
        "the bar names the sink, under the in-flight pane:\n{screen}"
    );
    let later = tmux.wait_for("the rows done to grow", |screen| {
        rows_done(screen, event).filter(|&n| n > first)
    });
    assert!(
        later < ROWS,
        "the import ended before a second reading: the test proves nothing"
    );
    let screen = tmux.screen();
    assert!(
        screen.contains("rows/s") && screen.contains("ETA"),
        "a rate and an ETA follow the second sample:\n{screen}"
    );
    assert!(
        screen.contains("Sinks:") && screen.contains("archive up"),
        "the admin listener's /metrics says the sink is up:\n{screen}"
    );

    tmux.keys("s");
    tmux.wait_for("the sort to change", |screen| {
        screen.contains("sort: slowest").then_some(())
    });
    tmux.keys("Enter");
    tmux.wait_for("the event's detail", |screen| {
        (screen.contains(&format!("Event {event}"))
            && screen.contains("Checkpoints")
            && screen.contains(&format!("{ROWS} rows)")))
        .then_some(())
    });
    tmux.keys("Escape");
    tmux.wait_for("the overview again", |screen| {
        screen.contains("In flight").then_some(())
    });

    tmux.keys("q");
    let screen = tmux.wait_for("top to exit", |screen| {
        screen
            .contains("top exited with")
            .then(|| screen.to_owned())
    });
    assert!(
        screen.contains("top exited with 0"),
        "top should exit 0 on q:\n{screen}"
    );
    let modes: Vec<&str> = screen.split_whitespace().collect();
    assert!(
        modes.contains(&"icanon") && modes.contains(&"echo"),
        "the terminal is back in canonical mode with echo (stty -a):\n{screen}"
    );
    let alternate = tmux.run(&["display-message", "-p", "-t", "top", "#{alternate_on}"]);
    assert_eq!(
        String::from_utf8_lossy(&alternate.stdout).trim(),
        "0",
        "top left the alternate screen"
    );
    drop(tmux);
    assert!(daemon.stop().success(), "{}", daemon.log_tail());
}

#[test]
fn top_into_a_pipe_prints_plain_blocks_naming_the_event_sink_and_rows() {
    let dir = TestDir::new("top-pipe");
    let event = "evt-top-pipe";
    let (_sim, mut daemon) = slow_import(&dir, event);
    let config = daemon.settings().config_path();
    let config = config.to_str().expect("test paths are UTF-8");

    let once = daemon
        .settings()
        .cli(&["top", "--once", "--config", config]);
    let text = String::from_utf8_lossy(&once.stdout).into_owned();
    assert!(
        once.status.success(),
        "top --once failed: {}\n{text}",
        String::from_utf8_lossy(&once.stderr)
    );
    assert!(
        !once.stdout.contains(&0x1b),
        "escape codes in the plain output:\n{text}"
    );
    let line = text
        .lines()
        .find(|line| line.contains(event))
        .unwrap_or_else(|| panic!("no line names {event}:\n{text}"));
    assert!(line.contains("archive"), "the line names the sink: {line}");
    let done = rows_done(&text, event)
        .unwrap_or_else(|| panic!("no rows done/expected (`N/{ROWS}`) in: {line}"));
    assert!(
        done > 0 && done < ROWS,
        "rows done {done} of {ROWS}: {line}"
    );
    assert_eq!(
        text.matches("flatsync top at").count(),
        1,
        "--once prints one block:\n{text}"
    );

    // Without --plain or --once: stdout is a pipe, so blocks of plain text, one per interval.
    let two = daemon.settings().cli(&[
        "top",
        "--iterations",
        "2",
        "--interval",
        "0.5",
        "--config",
        config,
    ]);
    let text = String::from_utf8_lossy(&two.stdout).into_owned();
    assert!(
        two.status.success(),
        "top --iterations 2 failed: {}\n{text}",
        String::from_utf8_lossy(&two.stderr)
    );
    assert!(!two.stdout.contains(&0x1b), "escape codes in:\n{text}");
    assert_eq!(
        text.matches("flatsync top at").count(),
        2,
        "two blocks for --iterations 2:\n{text}"
    );
    assert!(
        text.contains("API retries:") && text.contains("archive up"),
        "the metrics lines come from the admin listener:\n{text}"
    );
    assert!(daemon.stop().success(), "{}", daemon.log_tail());
}
