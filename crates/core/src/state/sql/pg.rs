//! The PostgreSQL side of [`Db`](super::Db): connecting (and connecting again after the
//! connection broke), the statement cache with the placeholder spelling, and what its errors
//! mean.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};

use super::{DbError, Result, Value};

/// Where a PostgreSQL state database is, with its credentials. Shown only as
/// [`PgTarget::redacted`]: the URL without its password.
#[derive(Clone)]
pub(crate) struct PgTarget {
    config: postgres::Config,
    redacted: String,
    lease: Duration,
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// `flatsync/<pid>@<host>`, at most the 63 bytes PostgreSQL keeps: with it,
/// `pg_stat_activity` and `flatsync status` tell the daemons on one database apart.
pub(crate) fn application_name() -> String {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    let mut name = format!("flatsync/{}@{host}", std::process::id());
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// `[daemon] state_lease_secs` unless set.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// How long a connection attempt may take unless the URL says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl PgTarget {
    /// The same database as another role (tests of what a role may do).
    #[cfg(test)]
    pub(crate) fn as_user(&self, user: &str) -> PgTarget {
        let mut target = self.clone();
        target.config.user(user);
        target.redacted = format!("{} as {user}", self.redacted);
        target
    }

    /// Reads a `postgres://` URL (or a `key=value` connection string). The error never
    /// repeats the text, which may hold a password.
    pub(crate) fn parse(url: &str) -> std::result::Result<PgTarget, String> {
        // verify-ca and verify-full are not read by the client at all: refused by name here.
        for mode in ["verify-ca", "verify-full"] {
            if url.contains(&format!("sslmode={mode}")) {
                return Err(no_tls(mode));
            }
        }
        let mut config = postgres::Config::from_str(url)
            .map_err(|e| format!("not a PostgreSQL connection URL ({e})"))?;
        if config.get_ssl_mode() == postgres::config::SslMode::Require {
            return Err(no_tls("require"));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name(&application_name());
        }
        let redacted = redact(&config);
        Ok(PgTarget {
            config,
            redacted,
            lease: DEFAULT_LEASE,
        })
    }

    /// The same target with `lease`: how long the server keeps a silent daemon's session.
    pub(crate) fn with_lease(mut self, lease: Duration) -> PgTarget {
        self.lease = lease;
        self
    }

    /// How long the server keeps a silent daemon's session, and with it the active role.
    pub(crate) fn lease(&self) -> Duration {
        self.lease
    }

    /// Whether the URL holds a password.
    pub(crate) fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    /// The same target with `password`.
    pub(crate) fn with_password(mut self, password: &[u8]) -> PgTarget {
        self.config.password(password);
        self.redacted = redact(&self.config);
        self
    }

    /// `postgres://user@host:port/database`, never the password.
    pub(crate) fn redacted(&self) -> &str {
        &self.redacted
    }
}

fn no_tls(mode: &str) -> String {
    format!(
        "sslmode={mode} is not supported yet: the state connection does not use TLS. Use \
         sslmode=disable (or prefer) on a trusted network, a Unix socket or a tunnel"
    )
}

fn redact(config: &postgres::Config) -> String {
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    let db = config.get_dbname().unwrap_or("");
    let password = if config.get_password().is_some() {
        ":***"
    } else {
        ""
    };
    let user = if password.is_empty() {
        user
    } else {
        format!("{}{password}@", user.trim_end_matches('@'))
    };
    format!("postgres://{user}{}/{db}", hosts.join(","))
}

/// Runs `f` where the synchronous client may block: it drives its own small runtime, which
/// cannot run on a thread of the daemon's runtime, so from there `f` runs on a thread of its
/// own. The blocking threads the state calls run on are fine as they are.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Which of a daemon's two connections this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Session {
    /// Webhook intake: storing an event is safe from any daemon at any time.
    Intake,
    /// Everything else. The server ends this session when it stays idle past `lease` (a
    /// paused or cut-off daemon), which frees the active role it may hold for another daemon.
    Work {
        /// How long the session may stay idle.
        lease: Duration,
    },
}

/// The advisory lock of the active role: one daemon at a time polls Flatfile and writes the
/// grouped event rows on one state database.
const ROLE_LOCK: i64 = 7_310_152;

/// The class of the advisory locks that claim one event each (`pg_try_advisory_lock(class,
/// hashtext(event_id))`; the two-key locks do not overlap the one-key role lock). Two ids
/// with the same hash share a lock: the second waits for the first, nothing worse.
const EVENT_LOCK_CLASS: i32 = 7_310_153;

pub(super) struct PgConn {
    target: PgTarget,
    session: Session,
    /// This session held the active role. A new session must take it again before anything
    /// is written, and cannot when another daemon took it meanwhile.
    role_held: bool,
    /// The role went to another daemon: every query fails from now on.
    role_lost: bool,
    /// The events this session claimed: a new session claims them again before anything is
    /// written, or fails for good, as for the role.
    events: HashSet<String>,
    /// A transaction is open on this session: if the connection breaks now, the statements
    /// still to come must fail, not run on a new session outside the transaction.
    in_transaction: bool,
    /// Always `Some` but in `drop`, which may have to close it on another thread.
    client: Option<Client>,
    /// Each statement prepared once per connection, keyed by the text the state code wrote.
    statements: HashMap<String, Statement>,
}

impl PgConn {
    pub(super) fn connect(target: PgTarget, session: Session) -> Result<PgConn> {
        let client = off_runtime(|| open_session(&target, session))?;
        Ok(PgConn {
            target,
            session,
            role_held: false,
            role_lost: false,
            events: HashSet::new(),
            in_transaction: false,
            client: Some(client),
            statements: HashMap::new(),
        })
    }

    /// The client, connected again if the connection broke since the last query: a daemon
    /// outlives a restart of its database. A session that held the active role takes it
    /// again first, or fails for good with [`DbError::RoleLost`].
    fn client(&mut self) -> Result<&mut Client> {
        if self.role_lost {
            return Err(DbError::RoleLost);
        }
        let broken = self.client.as_ref().is_none_or(Client::is_closed);
        if broken && self.in_transaction {
            return Err(DbError::BrokenTransaction);
        }
        if broken {
            self.statements.clear();
            self.client = None;
            let mut client = open_session(&self.target, self.session)?;
            let mut kept = !self.role_held || try_lock_role(&mut client)?;
            for event_id in &self.events {
                kept = kept && try_lock_event(&mut client, event_id)?;
            }
            if !kept {
                self.role_lost = true;
                return Err(DbError::RoleLost);
            }
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Claims `event_id` for this session unless another session holds it.
    pub(super) fn claim_event(&mut self, event_id: &str) -> Result<bool> {
        if self.events.contains(event_id) {
            return Ok(true);
        }
        let claimed = try_lock_event(self.client()?, event_id)?;
        if claimed {
            self.events.insert(event_id.to_owned());
        }
        Ok(claimed)
    }

    /// Lets go of `event_id` once this daemon is done with it (for now).
    pub(super) fn release_event(&mut self, event_id: &str) -> Result<()> {
        if self.events.remove(event_id) {
            self.client()?.query_one(
                "SELECT pg_advisory_unlock($1, hashtext($2))",
                &[&EVENT_LOCK_CLASS, &event_id],
            )?;
        }
        Ok(())
    }

    /// Takes the active role if no other daemon's session holds it.
    pub(super) fn take_role(&mut self) -> Result<bool> {
        if self.role_held {
            // Asking the server again proves the session (and so the role) is still there.
            self.client()?.batch_execute("SELECT 1")?;
            return Ok(true);
        }
        let taken = try_lock_role(self.client()?)?;
        self.role_held = taken;
        Ok(taken)
    }

    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let text = placeholders(&sql.replace(
            "NOW_MS()",
            "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        ));
        let statement = self.client()?.prepare(&text)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    pub(super) fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<usize> {
        let statement = self.statement(sql)?;
        let params = refs(params);
        let n = self.client()?.execute(&statement, &params)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub(super) fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<postgres::Row>> {
        let statement = self.statement(sql)?;
        let params = refs(params);
        Ok(self.client()?.query(&statement, &params)?)
    }

    pub(super) fn batch_execute(&mut self, sql: &str) -> Result<()> {
        Ok(self.client()?.batch_execute(sql)?)
    }

    /// Marks a transaction begun or ended on this session (see `in_transaction`).
    pub(super) fn set_in_transaction(&mut self, open: bool) {
        self.in_transaction = open;
    }

    pub(super) fn rollback(&mut self) {
        self.in_transaction = false;
        if let Some(client) = self.client.as_mut().filter(|c| !c.is_closed()) {
            // A failure here means the connection broke; the next query connects again.
            let _ = client.batch_execute("ROLLBACK");
        }
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // Closing says goodbye to the server with the client's own runtime.
        if let Some(client) = self.client.take() {
            off_runtime(move || drop(client));
        }
    }
}

fn open_session(target: &PgTarget, session: Session) -> Result<Client> {
    let mut client = target.config.connect(NoTls)?;
    // Statements are prepared once per session and run for as long as it lives, while the
    // state's tables grow from empty to a backlog of any size. After five runs PostgreSQL may
    // keep a generic plan made when a table was nearly empty (a nested loop scanning
    // `deliveries` for every pending event took minutes per query on a 100,000-event backlog):
    // plan every run with the tables as they are now.
    //
    // And without JIT: once the planner's estimate of a query passes `jit_above_cost`, as a
    // large backlog's keyed walks do (a subquery per row is costed for every row of the
    // table, though the walk stops at its page), PostgreSQL compiles the query with LLVM
    // first: 130 ms for a page of waiting group members that ran in 2.1 ms (EXPLAIN ANALYZE
    // with 100,000 waiting). Every statement here is a small keyed one run once. Through
    // `pg_settings`, so that a server without the setting (before 11) is no error.
    let mut settings = vec![("jit", "off".to_owned())];
    if let Session::Work { lease } = session {
        // `idle_session_timeout` came with PostgreSQL 14: an older server runs without it
        // (a paused daemon is then not fenced off, as `doctor` says).
        let ms = lease.as_millis().to_string();
        settings.push(("idle_session_timeout", ms.clone()));
        settings.push(("idle_in_transaction_session_timeout", ms));
    }
    let values: Vec<String> = settings
        .iter()
        .map(|(name, value)| format!("('{name}', '{value}')"))
        .collect();
    client.batch_execute(&format!(
        "SET plan_cache_mode = force_custom_plan;
         SELECT set_config(s.name, v.value, false)
         FROM pg_settings s JOIN (VALUES {}) AS v(name, value) ON v.name = s.name",
        values.join(", ")
    ))?;
    Ok(client)
}

fn try_lock_role(client: &mut Client) -> Result<bool> {
    Ok(client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&ROLE_LOCK])?
        .get(0))
}

fn try_lock_event(client: &mut Client, event_id: &str) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&EVENT_LOCK_CLASS, &event_id],
        )?
        .get(0))
}

fn refs<'a>(params: &'a [Value<'a>]) -> Vec<&'a (dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| p as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

/// `?1` → `$1`, outside quoted text and identifiers.
pub(super) fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '?' => {
                out.push('$');
                continue;
            }
            None => {}
        }
        out.push(c);
    }
    out
}

/// The message of `e`: the server's own message and SQLSTATE when it answered, the
/// client's otherwise. Neither holds the password.
pub(super) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "PostgreSQL: {} (SQLSTATE {}){}",
            db.message(),
            db.code().code(),
            db.detail().map(|d| format!(": {d}")).unwrap_or_default()
        ),
        None => format!("PostgreSQL: {e}"),
    }
}

pub(super) fn is_serialization_failure(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE | &SqlState::T_R_DEADLOCK_DETECTED)
    )
}

pub(super) fn is_unavailable(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.as_db_error() {
        // Class 08 (connection exception), 57P (operator intervention: shutdown, restart).
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08")
                || code.starts_with("57P")
                || is_serialization_failure(e)
                || db.code() == &SqlState::TOO_MANY_CONNECTIONS
        }
        // No answer from a server: refused, reset, timed out.
        None => true,
    }
}
