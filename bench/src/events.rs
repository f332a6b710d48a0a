//! Event cases: webhook intake at 32 and 4 connections, the drain of the backlog that intake
//! filled, and the daemon's memory with a large backlog against its memory idle.
//!
//! A backlog is filled through the webhook while delivery is held back: the daemon runs with
//! its test hook `FLATSYNC_TEST_STALL_FILE`, whose dispatcher stands still while the named
//! file exists, so every acknowledged event stays pending. That daemon is then killed with
//! SIGKILL (what was answered 2xx is durable), and a fresh daemon, without the hook, starts on
//! the same state: its CPU and memory are the drain's alone.
//!
//! Intake and drain run on both state backends: SQLite in the run's directory, and PostgreSQL
//! in a fresh database of the run's own (`... (postgres state)` lines).
//!
//! The intake lines' sender is kept cheap, since it runs on the daemon's cores and every CPU
//! second it spends is one the daemon does not get: each connection is a plain keep-alive
//! socket ([`http::KeepAlive`]) that writes a request rendered into a reused buffer
//! ([`render_event`]: a Platform `space:created` without rows) in one write and reads back only the
//! status line, `Content-Length` and the body's bytes. Every answer must still be 2xx, and
//! each request's latency runs from before its write to the end of its answer, as with the
//! general HTTP client (ureq) it replaced.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::daemon::{Daemon, Setup, State};
use crate::error::BenchError;
use crate::pg::StateDatabase;
use crate::proc::Usage;
use crate::sink::Sink;
use crate::table::{Line, median};
use crate::{Plan, RunDir, http, size_label};

/// The longest a backlog may take to drain.
const DRAIN_LIMIT: Duration = Duration::from_secs(7200);

/// An event without rows: a Platform `space:created`, delivered as one row of its own. What
/// [`render_event`] writes, built as a JSON value: the test holds the two together.
#[cfg(test)]
fn event_body(tag: &str, n: u64) -> String {
    serde_json::json!({
        "id": format!("us_evt_{tag}_{n}"),
        "topic": "space:created",
        "domain": "space",
        "context": {
            "environmentId": flatfile_sim::DEFAULT_ENVIRONMENT_ID,
            "spaceId": "us_sp_bench",
            "accountId": "us_acc_bench",
        },
        "payload": { "n": n },
        "createdAt": "2026-01-01T00:00:00.000Z",
    })
    .to_string()
}

/// An event without rows, a Platform `space:created` delivered as one row of its own, written
/// into `out` (cleared first) without building a JSON value: the intake lines' sender renders
/// each request with it.
fn render_event(tag: &str, n: u64, out: &mut Vec<u8>) {
    use std::io::Write as _;
    out.clear();
    // The tag is ours (`bench`): nothing in it needs escaping, as the test checks.
    let _ = write!(
        out,
        "{{\"id\":\"us_evt_{tag}_{n}\",\"topic\":\"space:created\",\"domain\":\"space\",\
         \"context\":{{\"environmentId\":\"{env}\",\"spaceId\":\"us_sp_bench\",\
         \"accountId\":\"us_acc_bench\"}},\"payload\":{{\"n\":{n}}},\
         \"createdAt\":\"2026-01-01T00:00:00.000Z\"}}",
        env = flatfile_sim::DEFAULT_ENVIRONMENT_ID,
    );
}

/// Where the daemons of an event case keep their state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The SQLite file in the run's directory.
    Sqlite,
    /// A PostgreSQL database made for the run and dropped after it.
    Postgres,
}

impl Backend {
    /// Both, in table order.
    pub(crate) const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

    /// The case's name on this backend: SQLite's lines keep their names.
    fn case(self, name: &str) -> String {
        match self {
            Backend::Sqlite => name.to_owned(),
            Backend::Postgres => format!("{name} (postgres state)"),
        }
    }
}

/// One run's directory (config, logs, sink output, and the SQLite state) and its PostgreSQL
/// state database, if it has one.
#[derive(Debug)]
struct EventRun {
    dir: RunDir,
    database: Option<StateDatabase>,
}

impl EventRun {
    fn new(plan: &Plan, what: &str, backend: Backend) -> Result<EventRun, BenchError> {
        let dir = plan.run_dir(what)?;
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(StateDatabase::create(dir.path())?),
        };
        Ok(EventRun { dir, database })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Every event routed (`topics = ["*"]`) to a JSON Lines folder sink.
    fn setup(&self, plan: &Plan, stall_file: Option<PathBuf>) -> Setup {
        Setup {
            dir: self.path().to_owned(),
            bin_dir: plan.bin_dir.clone(),
            sim_url: None,
            sink: Sink::Jsonl,
            topics: vec!["*"],
            pages_in_flight: plan.pages_in_flight,
            stall_file,
            state: self
                .database
                .as_ref()
                .map_or(State::Sqlite, |db| State::Postgres(db.url())),
        }
    }

    /// Removes the directory and drops the database.
    fn done(self) -> Result<(), BenchError> {
        let EventRun { dir, database } = self;
        if let Some(database) = database {
            database.drop_now()?;
        }
        dir.done();
        Ok(())
    }
}

/// Posts `events` distinct events over `connections` keep-alive connections, each request
/// waiting for its answer: the wall seconds and the 99th percentile latency in ms.
fn post_events(
    url: &str,
    tag: &str,
    events: u64,
    connections: usize,
) -> Result<(f64, f64), BenchError> {
    let next = AtomicU64::new(0);
    let latencies = Mutex::new(Vec::with_capacity(usize::try_from(events).unwrap_or(0)));
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..connections)
            .map(|_| {
                scope.spawn(|| -> Result<(), BenchError> {
                    let mut connection = http::KeepAlive::connect(url)?;
                    let mut body = Vec::with_capacity(512);
                    let mut mine = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= events {
                            break;
                        }
                        render_event(tag, n, &mut body);
                        let sent = Instant::now();
                        connection.post_ok(&body)?;
                        mine.push(sent.elapsed());
                    }
                    latencies
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend(mine);
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|worker| worker.join().expect("a webhook sender panicked"))
    })?;
    let wall_s = started.elapsed().as_secs_f64();
    let mut latencies = latencies
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    latencies.sort();
    let p99 = latencies
        .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Ok((wall_s, p99))
}

/// Fills the run's state with `events` pending events over `connections` connections, then
/// kills that daemon; the intake line.
fn fill(
    plan: &Plan,
    run: &EventRun,
    case: String,
    events: u64,
    connections: usize,
) -> Result<Line, BenchError> {
    let stall = run.path().join("hold-delivery");
    std::fs::write(&stall, b"")
        .map_err(BenchError::io(format!("cannot write {}", stall.display())))?;
    let daemon = Daemon::start(&run.setup(plan, Some(stall)))?;
    let before = daemon.usage()?;
    let (wall_s, p99_ms) = post_events(daemon.webhook_url(), "bench", events, connections)?;
    let after = daemon.usage()?;
    daemon.kill()?;
    Ok(Line {
        case,
        count: events,
        wall_s,
        rate: events as f64 / wall_s,
        cpu_s: after.cpu_s - before.cpu_s,
        peak_rss_mib: after.peak_rss_mib,
        wire: None,
        extras: vec![("p99 ms", p99_ms)],
    })
}

/// A fresh daemon on the run's state; `watch` decides when to stop watching it. The time
/// from the start, the first and last progress, and the process's usage at the end.
fn resume(
    plan: &Plan,
    run: &EventRun,
    what: &str,
    limit: Duration,
    watch: impl FnMut(crate::daemon::Progress) -> Result<bool, BenchError>,
) -> Result<(f64, u64, u64, Usage), BenchError> {
    let started = Instant::now();
    let mut daemon = Daemon::start(&run.setup(plan, None))?;
    let first = daemon.progress()?;
    let last = daemon.wait_until(what, Duration::from_millis(50), limit, watch)?;
    let wall_s = started.elapsed().as_secs_f64();
    let usage = daemon.usage()?;
    daemon.stop()?;
    Ok((wall_s, first.events_pending, last.events_pending, usage))
}

/// `intake 32 conns` and `backlog drain` on `backend`: the events posted are the backlog
/// drained.
pub(crate) fn intake_and_backlog(
    plan: &Plan,
    backend: Backend,
    keep: &mut impl FnMut(Line),
) -> Result<(), BenchError> {
    let (intake_case, drain_case) = (
        backend.case("intake 32 conns"),
        backend.case("backlog drain"),
    );
    let (take_intake, take_drain) = (plan.selected(&intake_case), plan.selected(&drain_case));
    if !take_intake && !take_drain {
        return Ok(());
    }
    let events = plan.intake_events;
    let (mut intakes, mut drains) = (Vec::new(), Vec::new());
    for _ in 0..plan.runs {
        let run = EventRun::new(plan, "intake", backend)?;
        intakes.push(fill(plan, &run, intake_case.clone(), events, 32)?);
        if !take_drain {
            run.done()?;
            continue;
        }
        let (wall_s, _, _, usage) = resume(plan, &run, "the backlog", DRAIN_LIMIT, |p| {
            Ok(p.events_pending == 0)
        })?;
        let held = crate::sink::jsonl_rows_with_open_streams(run.path())?;
        if held != events {
            return Err(BenchError::Failed(format!(
                "{drain_case}: the folder sink holds {held} event rows after {events} events were acknowledged; see {}",
                run.path().display()
            )));
        }
        run.done()?;
        drains.push(Line {
            case: drain_case.clone(),
            count: events,
            wall_s,
            rate: events as f64 / wall_s,
            cpu_s: usage.cpu_s,
            peak_rss_mib: usage.peak_rss_mib,
            wire: None,
            extras: Vec::new(),
        });
    }
    if take_intake {
        keep(median(&intakes).expect("at least one run"));
    }
    if let Some(line) = median(&drains) {
        keep(line);
    }
    Ok(())
}

/// `intake 4 conns` on `backend`.
pub(crate) fn intake_4(
    plan: &Plan,
    backend: Backend,
    keep: &mut impl FnMut(Line),
) -> Result<(), BenchError> {
    let case = backend.case("intake 4 conns");
    if !plan.selected(&case) {
        return Ok(());
    }
    let mut runs = Vec::new();
    for _ in 0..plan.runs {
        let run = EventRun::new(plan, "intake4", backend)?;
        runs.push(fill(plan, &run, case.clone(), plan.intake_events_4, 4)?);
        run.done()?;
    }
    keep(median(&runs).expect("at least one run"));
    Ok(())
}

/// `memory N pending`: the peak RSS of a daemon working through `pending_events` pending
/// events for `watch_s` seconds, beside that of an idle daemon watched as long.
pub(crate) fn memory(plan: &Plan, keep: &mut impl FnMut(Line)) -> Result<(), BenchError> {
    let case = format!("memory {} pending", size_label(plan.pending_events));
    if !plan.selected(&case) {
        return Ok(());
    }
    let watch = Duration::from_secs_f64(plan.watch_s);
    let mut runs = Vec::new();
    for _ in 0..plan.runs {
        let idle_run = EventRun::new(plan, "idle", Backend::Sqlite)?;
        let watch_for = |started: Instant| move |_| Ok(started.elapsed() >= watch);
        let (_, _, _, idle) = resume(
            plan,
            &idle_run,
            "idle",
            watch * 2,
            watch_for(Instant::now()),
        )?;
        idle_run.done()?;
        let run = EventRun::new(plan, "pending", Backend::Sqlite)?;
        fill(plan, &run, case.clone(), plan.pending_events, 32)?;
        let (wall_s, first, last, usage) = resume(
            plan,
            &run,
            "the watch",
            watch * 2,
            watch_for(Instant::now()),
        )?;
        run.done()?;
        runs.push(Line {
            case: case.clone(),
            count: first,
            wall_s,
            rate: first.saturating_sub(last) as f64 / wall_s,
            cpu_s: usage.cpu_s,
            peak_rss_mib: usage.peak_rss_mib,
            wire: None,
            extras: vec![("idle MiB", idle.peak_rss_mib)],
        });
    }
    keep(median(&runs).expect("at least one run"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_event_is_the_json_event_body() {
        let mut out = Vec::new();
        for n in [0, 7, 99_999, u64::MAX] {
            render_event("bench", n, &mut out);
            assert_eq!(
                std::str::from_utf8(&out).expect("UTF-8"),
                event_body("bench", n)
            );
        }
    }
}
