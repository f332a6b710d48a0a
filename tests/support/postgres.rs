//! What the tests of several daemons on one PostgreSQL state read from it directly, and a
//! TCP relay a test can cut to make the database unreachable for a while.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A connection to the state database at `url`, panicking with the error.
pub fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// The pid of the daemon holding the active role of the state at `url`, from the
/// `application_name` (`flatsync/<pid>@<host>`) of the session holding the role's advisory lock.
pub fn active_daemon(url: &str) -> Option<u32> {
    let mut client = postgres::Client::connect(url, postgres::NoTls).ok()?;
    let row = client
        .query_opt(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.objid = 7310152 AND l.granted
               AND a.datname = current_database()",
            &[],
        )
        .ok()??;
    let name: String = row.get(0);
    let pid = name.strip_prefix("flatsync/")?;
    pid.split('@').next()?.parse().ok()
}

/// Every event of the inbox of the state `config` names, with its status, read as `flatsync
/// events list` reads it (empty while the database cannot be read).
pub fn inbox(config: &Path) -> BTreeMap<String, String> {
    let Ok(config) = flatsync_core::Config::load(config) else {
        return BTreeMap::new();
    };
    let Ok(db) = flatsync_core::ops::OpsDb::open_configured(&config, true) else {
        return BTreeMap::new();
    };
    let all = flatsync_core::ops::EventFilter {
        limit: usize::MAX,
        ..flatsync_core::ops::EventFilter::default()
    };
    db.list_events(&all)
        .map(|events| {
            events
                .into_iter()
                .map(|e| (e.event_id, e.status.as_str().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// A relay from a local port to `target` that the test can cut: while cut, it refuses new
/// connections and has broken the open ones, as a database that went away would.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    /// Starts relaying a new local port to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().expect("relay address");
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (accept_cut, accept_open) = (Arc::clone(&cut), Arc::clone(&open));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if accept_cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
                    continue;
                };
                let mut open = accept_open.lock().unwrap_or_else(|e| e.into_inner());
                for stream in [&client, &server] {
                    if let Ok(clone) = stream.try_clone() {
                        open.push(clone);
                    }
                }
                pipe(&client, &server);
                pipe(&server, &client);
            }
        });
        Relay { addr, cut, open }
    }

    /// The relay's local address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Breaks every open connection and refuses new ones until [`Relay::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for stream in open.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on a thread until either side closes.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0_u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// What a `postgres` sink wrote into `schema`: every `_record_id` of its tables (the
/// bookkeeping table aside), and how many rows PostgreSQL counted inserted and updated in them
/// (rolled-back transactions included). A batch applied twice updates its rows, so an import
/// delivered exactly once shows no update.
#[derive(Debug)]
pub struct SinkTables {
    /// Every record id, sorted.
    pub record_ids: Vec<String>,
    /// Rows inserted, from `pg_stat_user_tables`.
    pub inserted: i64,
    /// Rows updated, from `pg_stat_user_tables`.
    pub updated: i64,
}

/// Reads [`SinkTables`] of `schema` in the database at `url`.
pub fn sink_tables(url: &str, schema: &str) -> SinkTables {
    let mut client = connect(url);
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = $1 AND table_name <> '_flatsync_streams'",
            &[&schema],
        )
        .expect("list the sink's tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut record_ids = Vec::new();
    for table in &tables {
        let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
        let sql = format!(
            "SELECT _record_id FROM {}.{}",
            quoted(schema),
            quoted(table)
        );
        for row in client.query(&sql, &[]).expect("read a sink table") {
            record_ids.push(row.get(0));
        }
    }
    record_ids.sort();
    let counts = client
        .query_one(
            "SELECT COALESCE(SUM(n_tup_ins), 0)::bigint, COALESCE(SUM(n_tup_upd), 0)::bigint
             FROM pg_stat_user_tables WHERE schemaname = $1 AND relname <> '_flatsync_streams'",
            &[&schema],
        )
        .expect("read the table statistics");
    SinkTables {
        record_ids,
        inserted: counts.get(0),
        updated: counts.get(1),
    }
}
