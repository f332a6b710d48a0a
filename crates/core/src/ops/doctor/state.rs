//! The doctor's state database repair: quarantine a damaged `state.db` and put the copy
//! salvaged by [`crate::state::health::salvage`] in its place, once no daemon uses it.
//!
//! A damaged `state.db` is never deleted and never patched in place. [`repair_state`] builds a
//! fresh database from every row it can still read, table by table (the inbox first), then
//! moves the damaged file and its `-wal` and `-shm` into `<state_dir>/quarantine/<UTC time>/`
//! and puts the fresh one in its place.
//!
//! Why this is safe: every sink keeps its own applied position per stream, so a lost
//! checkpoint only makes the daemon re-send batches the sink skips, never duplicates. Lost
//! inbox rows are the only real loss (those events are neither delivered nor retried); their
//! ids are listed when the inbox's key index or another table still names them. Deliveries,
//! streams and checkpoints of lost events are dropped, so a webhook sent again for one of them
//! is delivered afresh; a pending event whose stream plan lost rows is planned again.
//!
//! The repair refuses to run while a daemon uses the state directory. It can tell when another
//! process has `state.db` (or its `-wal`/`-shm`) open, read from `/proc/<pid>/fd` (Linux;
//! processes of other users are only visible to root), or when the config's webhook or admin
//! address accepts connections.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::ops::OpsError;
use crate::state::health::{TableSalvage, salvage};
use crate::state::{StateDb, StateError, now_ms};
use crate::time::compact_utc;

/// Says why a repair of `state_dir` must wait, when a daemon seems to use it: another process
/// has the database open, or an address of `config` (webhook, admin) accepts connections.
pub fn daemon_using_state(state_dir: &Path, config: Option<&Config>) -> Option<String> {
    if let Some(holder) = process_holding(state_dir) {
        return Some(holder);
    }
    let config = config?;
    let mut addresses: Vec<(SocketAddr, &str)> = Vec::new();
    if let Some(webhook) = &config.webhook {
        addresses.push((webhook.listen, "[webhook] listen"));
    }
    if let Some(admin) = &config.admin {
        addresses.push((admin.listen, "[admin] listen"));
    }
    for (mut addr, key) in addresses {
        if addr.port() == 0 {
            continue;
        }
        match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            _ => {}
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return Some(format!(
                "something accepts connections on {addr} ({key} of {}): is the daemon running?",
                config.path.display()
            ));
        }
    }
    None
}

/// Another process with the state database or its WAL files open, from `/proc/*/fd`.
fn process_holding(state_dir: &Path) -> Option<String> {
    let db = state_dir.join(StateDb::FILE_NAME);
    let db = std::fs::canonicalize(&db).unwrap_or(db);
    let watched: Vec<PathBuf> = ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let mut name = db.clone().into_os_string();
            name.push(suffix);
            PathBuf::from(name)
        })
        .collect();
    let own = std::process::id().to_string();
    for process in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = process.file_name();
        let Some(pid) = pid.to_str() else { continue };
        if pid == own || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && watched.contains(&target)
            {
                let name = std::fs::read_to_string(process.path().join("comm"))
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_else(|_| "?".to_owned());
                return Some(format!(
                    "process {pid} ({name}) has {} open: stop the daemon first",
                    target.display()
                ));
            }
        }
    }
    None
}

/// What [`repair_state`] did.
#[derive(Clone, Debug)]
pub struct RepairReport {
    /// Where the damaged files went.
    pub quarantine_dir: PathBuf,
    /// The files moved there.
    pub moved: Vec<PathBuf>,
    /// Per table, the inbox first.
    pub tables: Vec<TableSalvage>,
    /// Ids of inbox events known to be lost: named by the inbox's key index or by another
    /// table, but not salvaged. Lost events may exist beyond this list (see the inbox's `lost`).
    pub lost_event_ids: Vec<String>,
    /// Deliveries, streams and checkpoints dropped because their event was lost.
    pub orphans_dropped: u64,
    /// Pending events whose stream plan lost rows; the daemon plans them again.
    pub replanned: Vec<String>,
    /// Why nothing at all could be read, when that is the case (say, a destroyed header).
    pub unreadable: Option<String>,
}

impl RepairReport {
    /// Inbox rows lost: the larger of the inbox's count and the ids known.
    pub fn events_lost(&self) -> u64 {
        let counted = self
            .tables
            .iter()
            .find(|t| t.table == "inbox")
            .map_or(0, |t| t.lost);
        counted.max(self.lost_event_ids.len() as u64)
    }

    /// The explanation written next to the quarantined files and printed by the doctor.
    pub fn explanation(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "The state database was damaged. flatsync moved it, unchanged, to\n  {}\nand built a \
             fresh state.db from every row it could read.",
            self.quarantine_dir.display()
        );
        if let Some(why) = &self.unreadable {
            let _ = writeln!(text, "Nothing could be read from it: {why}");
        }
        for table in &self.tables {
            let _ = write!(
                text,
                "  {:<12} {} salvaged, {} lost",
                table.table, table.salvaged, table.lost
            );
            if let Some(error) = &table.first_error {
                let _ = write!(text, " (first error: {error})");
            }
            text.push('\n');
        }
        let lost = self.events_lost();
        if lost == 0 && self.unreadable.is_none() {
            let _ = writeln!(text, "No event was lost.");
        } else if self.lost_event_ids.is_empty() {
            let _ = writeln!(
                text,
                "{lost} event(s) were lost; their ids could not be read. Ask Flatfile to send \
                 their webhooks again, or replay the imports from Flatfile."
            );
        } else {
            let _ = writeln!(
                text,
                "{lost} event(s) were lost; these ids are known: {}. Send their webhooks again \
                 to deliver them.",
                self.lost_event_ids.join(", ")
            );
        }
        if self.orphans_dropped > 0 {
            let _ = writeln!(
                text,
                "{} delivery, stream and checkpoint row(s) of lost events were dropped.",
                self.orphans_dropped
            );
        }
        if !self.replanned.is_empty() {
            let _ = writeln!(
                text,
                "Pending event(s) {} lost part of their stream plan and will be planned again.",
                self.replanned.join(", ")
            );
        }
        let _ = writeln!(
            text,
            "Why this is safe: every sink keeps its own position in each stream, so a lost \
             checkpoint only makes flatsync re-send batches the sink skips; nothing is \
             duplicated. Lost inbox rows are the only real loss."
        );
        text
    }
}

/// Quarantines a damaged `<state_dir>/state.db` and puts a salvaged copy in its place; see
/// the module documentation. Call it only when no daemon uses the directory
/// ([`daemon_using_state`]).
pub fn repair_state(state_dir: &Path) -> Result<RepairReport, OpsError> {
    let db_path = state_dir.join(StateDb::FILE_NAME);
    if !db_path.exists() {
        return Err(StateError::NoDatabase { path: db_path }.into());
    }
    let quarantine_dir = fresh_quarantine_dir(state_dir);
    let rebuild_dir = quarantine_dir.join("rebuilt");
    std::fs::create_dir_all(&rebuild_dir).map_err(io("create", &rebuild_dir))?;

    // Build the fresh database first, reading the damaged one where it lies: until the files
    // are swapped at the end, an interrupted repair leaves the state directory as it was.
    let fresh = StateDb::open(&rebuild_dir).map_err(|e| OpsError::Refused(e.to_string()))?;
    let fresh_path = fresh.path().to_owned();
    drop(fresh);
    let salvaged = salvage(&db_path, &fresh_path)?;
    let mut report = RepairReport {
        quarantine_dir: quarantine_dir.clone(),
        moved: Vec::new(),
        tables: salvaged.tables,
        lost_event_ids: salvaged.lost_event_ids,
        orphans_dropped: salvaged.orphans_dropped,
        replanned: salvaged.replanned,
        unreadable: salvaged.unreadable,
    };
    give_owner_and_mode(&db_path, &fresh_path)?;
    report.moved = swap_in(&db_path, &fresh_path, &quarantine_dir)?;
    let _ = std::fs::remove_dir(&rebuild_dir);
    for dir in [state_dir, quarantine_dir.as_path()] {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync", dir))?;
    }
    let readme = quarantine_dir.join("README.txt");
    std::fs::write(&readme, report.explanation()).map_err(io("write", &readme))?;
    tracing::warn!(
        quarantine = %quarantine_dir.display(),
        events_lost = report.events_lost(),
        "State database quarantined and salvaged"
    );
    Ok(report)
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OpsError {
    let path = path.to_owned();
    move |error| OpsError::Io { what, path, error }
}

/// `<state_dir>/quarantine/<UTC time>`, with a counter when a repair in the same second made
/// one already.
fn fresh_quarantine_dir(state_dir: &Path) -> PathBuf {
    let quarantine_root = state_dir.join("quarantine");
    let stamp = compact_utc(now_ms());
    let mut quarantine_dir = quarantine_root.join(&stamp);
    let mut attempt = 1;
    while quarantine_dir.exists() {
        attempt += 1;
        quarantine_dir = quarantine_root.join(format!("{stamp}-{attempt}"));
    }
    quarantine_dir
}

/// `path` with `suffix` appended to its file name (`-wal`, `-shm`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.to_owned().into_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The daemon must be able to open what replaces its database, also when an operator ran
/// the repair as root: same owner and mode as the damaged file.
fn give_owner_and_mode(damaged: &Path, fresh: &Path) -> Result<(), OpsError> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(original) = std::fs::metadata(damaged) else {
        return Ok(());
    };
    for suffix in ["", "-wal", "-shm"] {
        let file = with_suffix(fresh, suffix);
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        std::fs::set_permissions(&file, original.permissions())
            .map_err(io("set the mode of", &file))?;
        if (meta.uid(), meta.gid()) != (original.uid(), original.gid()) {
            std::os::unix::fs::chown(&file, Some(original.uid()), Some(original.gid()))
                .map_err(io("give the damaged file's owner to", &file))?;
        }
    }
    Ok(())
}

/// Moves the damaged files into the quarantine and the fresh ones into their place; the
/// files quarantined.
fn swap_in(
    db_path: &Path,
    fresh_path: &Path,
    quarantine_dir: &Path,
) -> Result<Vec<PathBuf>, OpsError> {
    let mut moved = Vec::new();
    // WAL and shared-memory files go first: a stale WAL next to the fresh database would be
    // replayed into it.
    for suffix in ["-wal", "-shm", ""] {
        let from = with_suffix(db_path, suffix);
        if !from.exists() {
            continue;
        }
        let to = quarantine_dir.join(from.file_name().unwrap_or_default());
        std::fs::rename(&from, &to).map_err(io("move", &from))?;
        moved.push(to);
    }
    for suffix in ["", "-wal", "-shm"] {
        let from = with_suffix(fresh_path, suffix);
        if !from.exists() {
            continue;
        }
        std::fs::rename(&from, with_suffix(db_path, suffix)).map_err(io("move", &from))?;
    }
    Ok(moved)
}
