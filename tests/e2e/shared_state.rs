//! Several daemons on one PostgreSQL state (issue 14): any daemon stores the webhooks it is
//! sent, one at a time (the active one) dispatches and polls, and when it dies, pauses past
//! its lease or loses the database, another takes over without losing or duplicating a row.
//!
//! Each test has a database of its own on the local PostgreSQL server
//! (`FLATSYNC_TEST_POSTGRES_URL`, by default `postgres://postgres@127.0.0.1:5432/postgres`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flatfile_sim::{SimConfig, legacy_row_ids, legacy_webhook_body};
use flatsync_test_kit::postgres::TestDatabase;
use flatsync_tests::check::sqlite_rows;
use flatsync_tests::postgres::{active_daemon, inbox};
use flatsync_tests::{Daemon, DaemonProcess, Sim, TestDir, wait};

/// The shortest lease the config takes: a paused daemon is replaced 3 s after it went quiet.
const LEASE_SECS: u64 = 3;
/// Longest wait for a standby to take over, well past the lease.
const TAKEOVER: Duration = Duration::from_secs(60);
/// Longest wait for a whole test's imports to be delivered.
const DELIVERY: Duration = Duration::from_secs(300);

/// Daemons sharing one state database and one SQLite sink file.
struct Cluster {
    db: TestDatabase,
    sim: Sim,
    /// One test directory per daemon (its config and log), and one for the sink.
    _dirs: Vec<TestDir>,
    sink: PathBuf,
    daemons: Vec<DaemonProcess>,
}

impl Cluster {
    /// `n` daemons on a new database, reading legacy batches of `rows` from one simulator
    /// with `page_latency` per page, delivering `portalImportSubmitted` into one SQLite file.
    fn start(label: &str, n: usize, rows: u64, page_latency: Duration) -> Cluster {
        let db = TestDatabase::create(label);
        let sim = Sim::start(SimConfig {
            rows,
            page_latency,
            ..SimConfig::default()
        });
        let sink_dir = TestDir::new(&format!("{label}-sink"));
        let sink = sink_dir.path().join("warehouse.db");
        let mut dirs = vec![sink_dir];
        let mut daemons = Vec::new();
        for i in 0..n {
            let dir = TestDir::new(&format!("{label}-{i}"));
            daemons.push(
                settings(dir.path(), &db, &sim, &sink)
                    .start_on_any_port(),
            );
            dirs.push(dir);
        }
        Cluster {
            db,
            sim,
            _dirs: dirs,
            sink,
            daemons,
        }
    }

    /// Sends legacy import `name` to daemon `to`; its event id and batch id. The daemon must
    /// answer 2xx: it then promised delivery.
    fn send(&self, to: usize, name: &str) -> (String, String) {
        let (batch, event) = (format!("b-{name}"), format!("evt-{name}"));
        let body = legacy_webhook_body(&batch, &event, self.sim.config().rows);
        let reply = self.daemons[to].post(&body);
        assert!(
            reply.is_success(),
            "daemon {to} answered {} to {event}\n{}",
            reply.status,
            self.daemons[to].log_tail()
        );
        (event, batch)
    }

    /// The index of the daemon holding the active role.
    fn active(&self) -> Option<usize> {
        let pid = active_daemon(self.db.url())?;
        self.daemons.iter().position(|d| d.pid() == Some(pid))
    }

    /// Waits until a daemon other than `not` (any, for `None`) is active.
    fn wait_active(&self, not: Option<usize>) -> usize {
        wait::until(
            "a daemon to hold the active role",
            TAKEOVER,
            || self.active().filter(|&i| Some(i) != not),
            || self.describe(),
        )
    }

    /// Waits until every event of `events` is `done` in the shared inbox.
    fn wait_done(&self, events: &BTreeSet<String>) {
        wait::until(
            "every event to be done",
            DELIVERY,
            || {
                let inbox = inbox(self.db.url());
                events
                    .iter()
                    .all(|e| inbox.get(e).is_some_and(|s| s == "done"))
                    .then_some(())
            },
            || self.describe(),
        );
    }

    /// Checks the sink holds every row of `batches` exactly once.
    fn assert_every_row_once(&self, batches: &[String]) {
        let expected: Vec<String> = batches
            .iter()
            .flat_map(|b| legacy_row_ids(self.sim.config(), b))
            .collect();
        sqlite_rows(&self.sink).assert_exactly(&expected, "rows in the shared SQLite sink");
    }

    fn describe(&self) -> String {
        let inbox = inbox(self.db.url());
        let mut text = format!("inbox: {inbox:?}\nactive: {:?}\n", self.active());
        for (i, daemon) in self.daemons.iter().enumerate() {
            text.push_str(&format!("--- daemon {i} (pid {:?}) ---\n{}\n", daemon.pid(), daemon.log_tail()));
        }
        text
    }
}

/// One daemon's config: the shared state and sink, legacy imports routed to the sink.
fn settings(dir: &Path, db: &TestDatabase, sim: &Sim, sink: &Path) -> Daemon {
    Daemon::new(dir)
        .state_postgres(db.url())
        .set("daemon", "state_lease_secs", &LEASE_SECS.to_string())
        .set("daemon", "checkpoint_interval_ms", "200")
        .legacy_sim(sim)
        .sink(
            "warehouse",
            "sqlite",
            &format!("{{ path = {} }}", serde_json::Value::from(sink.to_string_lossy())),
        )
        .route(&["portalImportSubmitted"], &["warehouse"])
        .page_size(1_000)
}

#[test]
fn three_daemons_on_one_postgres_state_deliver_every_row_once() {
    let cluster = Cluster::start("pg-three", 3, 10_000, Duration::ZERO);
    let mut events = BTreeSet::new();
    let mut batches = Vec::new();
    for n in 0..20 {
        let (event, batch) = cluster.send(n % 3, &format!("three{n}"));
        events.insert(event);
        batches.push(batch);
    }
    cluster.wait_done(&events);
    cluster.assert_every_row_once(&batches);
    let standing_by = cluster
        .daemons
        .iter()
        .filter(|d| d.log().contains("standing by"))
        .count();
    assert_eq!(
        standing_by,
        2,
        "one daemon is active, the two others stand by\n{}",
        cluster.describe()
    );
}

#[test]
fn killing_the_active_daemon_ten_times_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::start("pg-kill", 3, 10_000, Duration::from_millis(40));
    let mut rng = fastrand::Rng::with_seed(0x14_1a5e);
    let mut events = BTreeSet::new();
    let mut batches = Vec::new();
    for n in 0..20 {
        let (event, batch) = cluster.send(n % 3, &format!("kill{n}"));
        events.insert(event);
        batches.push(batch);
    }
    let mut journal = String::new();
    for round in 0..10 {
        let active = cluster.wait_active(None);
        std::thread::sleep(Duration::from_millis(rng.u64(300..=1_500)));
        let pending = inbox(cluster.db.url())
            .values()
            .filter(|s| *s == "pending")
            .count();
        journal.push_str(&format!("round {round}: kill daemon {active}, {pending} pending\n"));
        cluster.daemons[active].kill9();
        let next = cluster.wait_active(Some(active));
        journal.push_str(&format!("round {round}: daemon {next} took over\n"));
        cluster.daemons[active].restart();
    }
    cluster.wait_done(&events);
    println!("{journal}");
    cluster.assert_every_row_once(&batches);
}
