//! A child process the benchmark started: its first matching stdout line, signals, and a
//! bounded wait for its exit.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::error::BenchError;

/// A started process; killed when dropped, so a failed run leaves nothing behind.
#[derive(Debug)]
pub(crate) struct Running {
    child: Child,
    name: String,
}

impl Running {
    /// Starts `command` with stderr appended to `log` and returns once a stdout line
    /// satisfies `ready` (that line is returned), within `limit`. The rest of stdout is read
    /// and dropped, so the process never blocks on a full pipe.
    pub(crate) fn spawn(
        mut command: Command,
        log: &Path,
        ready: impl Fn(&str) -> bool + Send + 'static,
        limit: Duration,
    ) -> Result<(Running, String), BenchError> {
        let name = command.get_program().to_string_lossy().into_owned();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(BenchError::io(format!("cannot open {}", log.display())))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(BenchError::io(format!("cannot start {name}")))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (found, line) = mpsc::sync_channel::<String>(1);
        std::thread::spawn(move || {
            let mut sent = false;
            for text in BufReader::new(stdout).lines() {
                let Ok(text) = text else { break };
                if !sent && ready(&text) {
                    sent = true;
                    let _ = found.send(text);
                }
            }
        });
        let mut running = Running { child, name };
        let started = Instant::now();
        loop {
            match line.recv_timeout(Duration::from_millis(50)) {
                Ok(text) => return Ok((running, text)),
                Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() < limit => {
                    running.check_alive(log)?;
                }
                Err(_) => {
                    running.check_alive(log)?;
                    return Err(BenchError::Failed(format!(
                        "{} printed no ready line within {limit:?}; see {}",
                        running.name,
                        log.display()
                    )));
                }
            }
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error naming `log` if the process has exited.
    pub(crate) fn check_alive(&mut self, log: &Path) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Failed(format!(
                "{} exited ({status}); its log: {}",
                self.name,
                log.display()
            ))),
            Err(e) => Err(BenchError::io(format!("cannot wait for {}", self.name))(e)),
        }
    }

    /// Sends `signal` to the process.
    pub(crate) fn signal(&self, signal: Signal) -> Result<(), BenchError> {
        let pid = Pid::from_raw(i32::try_from(self.pid()).unwrap_or(i32::MAX))
            .ok_or_else(|| BenchError::Failed(format!("{} has no valid pid", self.name)))?;
        rustix::process::kill_process(pid, signal).map_err(|e| {
            BenchError::io(format!("cannot signal {}", self.name))(std::io::Error::from(e))
        })
    }

    /// SIGTERM, then waits up to `limit` for the exit (SIGKILL after it); an error if the
    /// process had to be killed or exited with a failure.
    pub(crate) fn stop(mut self, limit: Duration) -> Result<(), BenchError> {
        self.signal(Signal::TERM)?;
        let started = Instant::now();
        while started.elapsed() < limit {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(BenchError::Failed(format!(
                        "{} stopped with {status}",
                        self.name
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(BenchError::io(format!("cannot wait for {}", self.name))(e)),
            }
        }
        Err(BenchError::Failed(format!(
            "{} did not stop within {limit:?} of SIGTERM",
            self.name
        )))
    }

    /// SIGKILL and the exit, at once.
    pub(crate) fn kill(mut self) -> Result<(), BenchError> {
        self.signal(Signal::KILL)?;
        self.child
            .wait()
            .map(|_| ())
            .map_err(BenchError::io(format!("cannot wait for {}", self.name)))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
