//! Several daemons on one PostgreSQL state (issue 14): any daemon stores the webhooks it is
//! sent, one at a time (the active one) dispatches and polls, and when it dies, pauses past
//! its lease or loses the database, another takes over without losing or duplicating a row.
//!
//! Each test has a database of its own on the local PostgreSQL server
//! (`FLATSYNC_TEST_POSTGRES_URL`, by default `postgres://postgres@127.0.0.1:5432/postgres`).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use flatfile_sim::{
    EmitEvent, SimConfig, legacy_row_ids, legacy_webhook_body, record_ids, submit_event_body,
    workbook_sheets,
};
use flatsync_test_kit::postgres::TestDatabase;
use flatsync_tests::postgres::{Relay, active_daemon, inbox, sink_tables};
use flatsync_tests::{Daemon, DaemonProcess, Sim, TestDir, wait};

/// The shortest lease the config takes: a paused daemon is replaced 3 s after it went quiet.
const LEASE_SECS: u64 = 3;
/// Longest wait for a standby to take over, well past the lease.
const TAKEOVER: Duration = Duration::from_secs(60);
/// Longest wait for a whole test's imports to be delivered.
const DELIVERY: Duration = Duration::from_secs(300);

/// Daemons sharing one state database and one `postgres` sink (schema [`SINK_SCHEMA`] of the
/// same database).
struct Cluster {
    db: TestDatabase,
    sim: Sim,
    /// One test directory per daemon (its config and log).
    _dirs: Vec<TestDir>,
    daemons: Vec<DaemonProcess>,
}

/// The schema the `postgres` sink writes its tables in.
const SINK_SCHEMA: &str = "warehouse";

impl Cluster {
    /// `n` daemons on a new database, reading legacy batches of `rows` from one simulator
    /// with `page_latency` per page, delivering imports into the `postgres` sink.
    fn start(label: &str, n: usize, rows: u64, page_latency: Duration) -> Cluster {
        Cluster::start_with(label, n, rows, page_latency, |daemon, _| daemon)
    }

    /// [`Cluster::start`], each daemon's settings changed by `change` (given the database).
    fn start_with(
        label: &str,
        n: usize,
        rows: u64,
        page_latency: Duration,
        change: impl Fn(Daemon, &TestDatabase) -> Daemon,
    ) -> Cluster {
        let db = TestDatabase::create(label);
        let sim = Sim::start(SimConfig {
            rows,
            page_latency,
            sheets_per_workbook: 2,
            ..SimConfig::default()
        });
        let mut dirs = Vec::new();
        let mut daemons = Vec::new();
        for i in 0..n {
            let dir = TestDir::new(&format!("{label}-{i}"));
            daemons.push(change(settings(dir.path(), &db, &sim), &db).start_on_any_port());
            dirs.push(dir);
        }
        Cluster {
            db,
            sim,
            _dirs: dirs,
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

    /// Sends the Platform submit of workbook `name` to daemon `to`; its event id, workbook id
    /// and job id.
    fn send_submit(&self, to: usize, name: &str) -> (String, String, String) {
        let (event, workbook) = (format!("us_evt_{name}"), format!("us_wb_{name}"));
        let job = self.sim.job_for(&workbook);
        let reply = self.daemons[to].post(&submit_event_body(&event, &workbook, &job));
        assert!(
            reply.is_success(),
            "daemon {to} answered {} to {event}\n{}",
            reply.status,
            self.daemons[to].log_tail()
        );
        (event, workbook, job)
    }

    /// The shared inbox: every event with its status.
    fn inbox(&self) -> std::collections::BTreeMap<String, String> {
        inbox(&self.daemons[0].settings().config_path())
    }

    /// The number of events still pending in the shared inbox.
    fn pending(&self) -> usize {
        self.inbox().values().filter(|s| *s == "pending").count()
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
                let inbox = self.inbox();
                events
                    .iter()
                    .all(|e| inbox.get(e).is_some_and(|s| s == "done"))
                    .then_some(())
            },
            || self.describe(),
        );
    }

    /// Checks the sink holds every row of the legacy `batches` and the Platform `workbooks`
    /// and nothing else, each written once: no row updated (a batch applied twice would update
    /// its rows).
    fn assert_every_row_once(&self, batches: &[String], workbooks: &[String]) {
        let config = self.sim.config();
        let mut expected: Vec<String> = batches
            .iter()
            .flat_map(|b| legacy_row_ids(config, b))
            .chain(workbooks.iter().flat_map(|w| {
                workbook_sheets(config, w)
                    .into_iter()
                    .flat_map(|(sheet, _, _)| record_ids(config, &sheet))
            }))
            .collect();
        expected.sort();
        let rows = expected.len() as i64;
        // The statistics reach the server's view within a second or so of each commit.
        let tables = wait::until(
            "the sink tables' statistics to count every insert",
            TAKEOVER,
            || {
                let tables = sink_tables(self.db.url(), SINK_SCHEMA);
                (tables.inserted >= rows).then_some(tables)
            },
            || format!("{:?}", sink_tables(self.db.url(), SINK_SCHEMA).inserted),
        );
        assert!(
            tables.record_ids == expected,
            "the sink holds {} rows, {} expected",
            tables.record_ids.len(),
            expected.len()
        );
        // A batch cut by a kill before its commit counts as inserted too (its rows were
        // rolled back), so only the updates tell: a batch applied a second time would update
        // its rows.
        assert_eq!(
            tables.updated,
            0,
            "no row written twice ({} inserted for {rows} rows)\n{}",
            tables.inserted,
            self.describe()
        );
    }

    fn describe(&self) -> String {
        let inbox = self.inbox();
        let mut text = format!("inbox: {inbox:?}\nactive: {:?}\n", self.active());
        for (i, daemon) in self.daemons.iter().enumerate() {
            text.push_str(&format!(
                "--- daemon {i} (pid {:?}) ---\n{}\n",
                daemon.pid(),
                daemon.log_tail()
            ));
        }
        text
    }
}

/// One daemon's config: the shared state and sink, imports routed to the sink.
fn settings(dir: &Path, db: &TestDatabase, sim: &Sim) -> Daemon {
    let url = serde_json::Value::from(db.url());
    Daemon::new(dir)
        .state_postgres(db.url())
        .set("daemon", "state_lease_secs", &LEASE_SECS.to_string())
        .set("daemon", "checkpoint_interval_ms", "200")
        .legacy_sim(sim)
        .sink(
            "warehouse",
            "postgres",
            &format!("{{ url = {url}, schema = \"{SINK_SCHEMA}\" }}"),
        )
        .platform_sim(sim)
        .route(&["portalImportSubmitted", "job:ready"], &["warehouse"])
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
    cluster.assert_every_row_once(&batches, &[]);
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
fn killing_daemons_ten_times_in_the_middle_of_delivery_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::start("pg-kill", 3, 10_000, Duration::from_millis(100));
    let mut rng = fastrand::Rng::with_seed(0x14_1a5e);
    let mut events = BTreeSet::new();
    let mut batches = Vec::new();
    let send = |cluster: &Cluster, events: &mut BTreeSet<String>, batches: &mut Vec<String>| {
        let n = batches.len();
        let (event, batch) = cluster.send(n % 3, &format!("kill{n}"));
        events.insert(event);
        batches.push(batch);
    };
    for _ in 0..20 {
        send(&cluster, &mut events, &mut batches);
    }
    let mut journal = String::new();
    let mut kills = 0;
    while kills < 10 {
        let active = cluster.wait_active(None);
        std::thread::sleep(Duration::from_millis(rng.u64(300..=1_500)));
        let pending = cluster.pending();
        if pending == 0 {
            // Every kill must land in the middle of a delivery: more work first.
            send(&cluster, &mut events, &mut batches);
            continue;
        }
        // Every other kill is the active daemon's, so the role moves too; the others are any
        // daemon's, each working on events of its own.
        let victim = if kills % 2 == 0 {
            active
        } else {
            rng.usize(0..3)
        };
        journal.push_str(&format!(
            "kill {kills}: daemon {victim} (active: {active}), {pending} events pending\n"
        ));
        cluster.daemons[victim].kill9();
        if victim == active {
            let next = cluster.wait_active(Some(active));
            journal.push_str(&format!("kill {kills}: daemon {next} took the role\n"));
        }
        kills += 1;
        cluster.daemons[victim].restart();
    }
    cluster.wait_done(&events);
    println!("{journal}");
    cluster.assert_every_row_once(&batches, &[]);
}

#[test]
fn a_daemon_paused_past_its_lease_is_refused_every_write_when_it_wakes() {
    let mut cluster = Cluster::start("pg-pause", 2, 10_000, Duration::from_millis(100));
    let (mut events, mut batches, mut workbooks, mut jobs) =
        (BTreeSet::new(), Vec::new(), Vec::new(), Vec::new());
    for n in 0..3 {
        let (event, batch) = cluster.send(n % 2, &format!("pause{n}"));
        events.insert(event);
        batches.push(batch);
        let (event, workbook, job) = cluster.send_submit(n % 2, &format!("pause{n}"));
        events.insert(event);
        workbooks.push(workbook);
        jobs.push(job);
    }
    let paused = cluster.wait_active(None);
    wait::until(
        "a delivery under way",
        DELIVERY,
        || (cluster.pending() < events.len()).then_some(()),
        || cluster.describe(),
    );
    assert!(cluster.pending() > 0, "the pause lands during delivery");
    cluster.daemons[paused].signal("STOP");
    let standby = cluster.wait_active(Some(paused));
    assert_ne!(standby, paused);
    cluster.daemons[paused].signal("CONT");
    let status = cluster.daemons[paused]
        .wait_exit(TAKEOVER)
        .unwrap_or_else(|| panic!("the woken daemon keeps running\n{}", cluster.describe()));
    assert!(!status.success(), "it exits with a failure: {status}");
    assert!(
        cluster.daemons[paused]
            .log()
            .contains("another daemon took over"),
        "it says why\n{}",
        cluster.describe()
    );
    cluster.wait_done(&events);
    cluster.assert_every_row_once(&batches, &workbooks);
    for job in &jobs {
        let state = cluster.sim.job(job).expect("the simulator knows the job");
        assert_eq!(
            (state.status.as_str(), state.finishes),
            ("complete", 1),
            "job {job} is completed once\n{}",
            cluster.describe()
        );
    }
}

#[test]
fn when_the_polling_daemon_dies_another_polls_and_skips_no_event() {
    let mut cluster = Cluster::start_with("pg-poll", 2, 10, Duration::ZERO, |daemon, _| {
        daemon.raw(
            "[environments.demo]\nid = \"us_env_demo\"\npoll = true\npoll_interval_ms = 200\n\
             poll_page_size = 25\npoll_start = \"beginning\"\n",
        )
    });
    let admin = cluster.sim.admin();
    let emit = |n: u32| {
        admin
            .emit_event(&EmitEvent {
                payload: Some(serde_json::json!({ "n": n })),
                ..EmitEvent::new("space:updated")
            })
            .expect("the simulator logs the event");
    };
    for n in 0..50 {
        emit(n);
    }
    let polling = cluster.wait_active(None);
    wait::until(
        "the first events to be polled",
        DELIVERY,
        || (!cluster.inbox().is_empty()).then_some(()),
        || cluster.describe(),
    );
    cluster.daemons[polling].kill9();
    for n in 50..100 {
        emit(n);
    }
    let next = cluster.wait_active(Some(polling));
    assert_ne!(next, polling);
    let logged: BTreeSet<String> = admin
        .events(None)
        .expect("the simulator lists its events")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(logged.len(), 100);
    wait::until(
        "every logged event to be stored",
        DELIVERY,
        || {
            let stored: BTreeSet<String> = cluster.inbox().into_keys().collect();
            logged.is_subset(&stored).then_some(())
        },
        || cluster.describe(),
    );
}

#[test]
fn while_postgres_is_unreachable_webhooks_get_503_and_delivery_resumes_after() {
    let relay = Relay::start("127.0.0.1:5432".parse().expect("address"));
    let cluster = Cluster::start_with(
        "pg-away",
        1,
        10_000,
        Duration::from_millis(100),
        |daemon, db| daemon.state_postgres(&through(db.url(), &relay)),
    );
    let mut events = BTreeSet::new();
    let mut batches = Vec::new();
    for n in 0..4 {
        let (event, batch) = cluster.send(0, &format!("away{n}"));
        events.insert(event);
        batches.push(batch);
    }
    wait::until(
        "a delivery under way",
        DELIVERY,
        || (cluster.pending() < events.len()).then_some(()),
        || cluster.describe(),
    );
    relay.cut();
    let body = legacy_webhook_body("b-during", "evt-during", 10);
    let during = wait::until(
        "a webhook refused while the database is away",
        TAKEOVER,
        || {
            let reply = cluster.daemons[0].post(&body);
            (!reply.is_success()).then_some(reply.status)
        },
        || cluster.describe(),
    );
    assert_eq!(during, 503, "intake answers 503 while it cannot store");
    std::thread::sleep(Duration::from_secs(3));
    cluster.daemons[0].assert_alive("while the database was away");
    relay.restore();
    cluster.wait_done(&events);
    cluster.daemons[0].assert_alive("after the database came back");
    cluster.assert_every_row_once(&batches, &[]);
}

/// `url` with its host and port replaced by the relay's.
fn through(url: &str, relay: &Relay) -> String {
    let database = url.rsplit('/').next().expect("a database name");
    format!("postgres://postgres@{}/{database}", relay.addr())
}

#[test]
fn the_operator_commands_read_and_check_a_postgres_state() {
    let cluster = Cluster::start("pg-ops", 2, 100, Duration::ZERO);
    let (event, batch) = cluster.send(1, "ops");
    cluster.wait_done(&BTreeSet::from([event.clone()]));
    cluster.assert_every_row_once(&[batch], &[]);
    let active = cluster.wait_active(None);
    let daemon = &cluster.daemons[active];
    let config = daemon.settings().config_path();
    let config = config.to_str().expect("UTF-8 path");
    let run = |args: &[&str]| {
        let output = daemon.settings().cli(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    };

    let (ok, text) = run(&["status", "--json", "--config", config]);
    assert!(ok, "{text}");
    let status: serde_json::Value = serde_json::from_str(&text).expect("status JSON");
    assert_eq!(status["events"]["done"], 1, "{text}");
    assert!(
        text.contains(cluster.db.name()) && !text.contains("state.db"),
        "the status names the PostgreSQL database\n{text}"
    );
    let pid = daemon.pid().expect("running");
    let active: Vec<u64> = status["daemons"]
        .as_array()
        .expect("daemons")
        .iter()
        .filter(|d| d["active"] == true)
        .filter_map(|d| d["pid"].as_u64())
        .collect();
    assert_eq!(
        active,
        [u64::from(pid)],
        "one daemon is shown active\n{text}"
    );
    let claims: Vec<u64> = status["daemons"]
        .as_array()
        .expect("daemons")
        .iter()
        .filter_map(|d| d["claims"].as_u64())
        .collect();
    assert_eq!(
        claims,
        [0, 0],
        "both running daemons show their claims, none left once every event is done\n{text}"
    );

    let (ok, text) = run(&["events", "show", &event, "--config", config]);
    assert!(
        ok && text.contains(&event) && text.contains("done"),
        "{text}"
    );

    let (ok, text) = run(&["status", "--config", config]);
    assert!(ok && text.contains("running (active)"), "{text}");

    let (ok, text) = run(&["doctor", "--config", config]);
    assert!(ok, "{text}");
    assert!(
        text.contains("reachable as postgres")
            && text.contains(&format!("active daemon flatsync/{pid}")),
        "{text}"
    );

    let (ok, text) = run(&["check", "--config", config]);
    assert!(ok && text.contains("schema version"), "{text}");

    // A database nobody created the schema in is reachable and said to be empty; one that
    // does not exist is an error that names it.
    let empty = TestDatabase::create("pg-ops-empty");
    let other = TestDir::new("pg-ops-check");
    let settings = settings(other.path(), &empty, &cluster.sim);
    let path = settings.config_path();
    let path = path.to_str().expect("UTF-8 path");
    std::fs::write(path, settings.config_text(0)).expect("write config");
    let check = |what: &str| {
        let output = settings.cli(&["check", "--config", path]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(text.contains("state database"), "{what}: {text}");
        (output.status.success(), text)
    };
    let (ok, text) = check("an empty database");
    assert!(ok && text.contains("no flatsync schema yet"), "{text}");
    let gone = empty
        .url()
        .replace(empty.name(), "flatsync_no_such_database");
    std::fs::write(path, settings.config_text(0).replace(empty.url(), &gone)).expect("write");
    let (ok, text) = check("a database that does not exist");
    assert!(!ok && text.contains("flatsync_no_such_database"), "{text}");
}
