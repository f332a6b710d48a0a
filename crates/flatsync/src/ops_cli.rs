//! The operator commands: `status`, `events`, `replay`, `dead-letter`, `doctor` and `plugins`.
//! The work is done by `flatsync_core::ops`; this module parses arguments and prints.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Args, Subcommand};
use flatsync_core::Config;
use flatsync_core::ops::{
    self, DeadLetterReport, DeadLetterSelector, EventDetail, EventFilter, EventSummary, OpsDb,
    ReplaySelector, StateHealth, StatusReport,
};
use flatsync_core::route::TopicPattern;
use flatsync_core::state::{EventStatus, now_ms};

/// Where the config is read from when neither `--config` nor `FLATSYNC_CONFIG` says.
const DEFAULT_CONFIG: &str = "/etc/flatsync/config.toml";

/// How a command finds the state database.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// The TOML config file; the state database is in its `[daemon] state_dir`
    /// [default: /etc/flatsync/config.toml].
    #[arg(long, short, env = "FLATSYNC_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Use the state database in this directory; no config is read (takes precedence over
    /// --config).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// The state directory, and the config when one was read.
pub(crate) struct Located {
    pub(crate) state_dir: PathBuf,
    pub(crate) config: Option<Config>,
}

impl Located {
    /// Opens the state database: the SQLite file in `state_dir`, or the PostgreSQL database
    /// of the config's `[daemon] state_url`. Read-only for the commands that only read.
    pub(crate) fn open(&self, read_only: bool) -> anyhow::Result<OpsDb> {
        let db = match &self.config {
            Some(config) if config.daemon.state_postgres.is_some() => {
                OpsDb::open_configured(config, read_only)?
            }
            _ if read_only => OpsDb::open_read_only(&self.state_dir)?,
            _ => OpsDb::open_for_update(&self.state_dir)?,
        };
        Ok(db)
    }

    /// Whether the state is a PostgreSQL database (`[daemon] state_url`).
    pub(crate) fn is_postgres(&self) -> bool {
        self.config
            .as_ref()
            .is_some_and(|c| c.daemon.state_postgres.is_some())
    }
}

impl Target {
    pub(crate) fn locate(&self) -> anyhow::Result<Located> {
        if let Some(state_dir) = &self.state_dir {
            return Ok(Located {
                state_dir: state_dir.clone(),
                config: None,
            });
        }
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let config = Config::load(&path)?;
        Ok(Located {
            state_dir: config.daemon.state_dir.clone(),
            config: Some(config),
        })
    }
}

/// The operator commands, flattened into `flatsync`'s own.
#[derive(Debug, Subcommand)]
pub(crate) enum OpsCommand {
    /// Show per sink and route: deliveries pending, done and failed, rows delivered, lag.
    ///
    /// Reads the state database, so it works while the daemon runs. Also shows each sink's
    /// last error, the totals of events by status, and the daemons on this state with their
    /// bound addresses: running, stopped, or gone (killed without stopping).
    Status {
        #[command(flatten)]
        target: Target,
        /// Print one JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// List events, or show one with its body, deliveries, streams and checkpoints.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Deliver events again in full, into fresh streams.
    ///
    /// Replayed deliveries go into streams named `<stream>-r<N>`, so sinks take every row
    /// again. The running daemon picks them up within seconds, a stopped one on its next start.
    Replay {
        #[command(flatten)]
        target: Target,
        /// The event to replay.
        #[arg(
            long,
            value_name = "ID",
            required_unless_present = "since",
            conflicts_with = "since"
        )]
        event: Option<String>,
        /// Replay every finished event received since TIME: RFC 3339 (2024-05-01T12:00:00Z)
        /// or a duration back from now (30m, 2h, 7d).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Replay to this sink only; a sink the event was not routed to is added.
        #[arg(long, value_name = "NAME")]
        sink: Option<String>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// List, retry or drop deliveries that failed for good.
    DeadLetter {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
    /// Check the state database, every sink's plugin and the Flatfile API keys.
    ///
    /// Prints one line per check and exits 1 when something needs attention. A damaged state
    /// database is quarantined and salvaged with --repair, never deleted.
    Doctor {
        #[command(flatten)]
        target: Target,
        /// Quarantine a damaged state database and salvage what can be read into a fresh one.
        /// Refused while the daemon runs.
        #[arg(long)]
        repair: bool,
    },
    /// List the installed sink plugins with their ABI versions.
    ///
    /// Loads every `.so` on the plugin search path and marks which configured sinks use it;
    /// a library that does not load is listed with the reason.
    Plugins {
        /// The TOML config file, for `[daemon] plugin_dir` and the sinks
        /// [default: /etc/flatsync/config.toml when it exists].
        #[arg(long, short, env = "FLATSYNC_CONFIG", value_name = "PATH")]
        config: Option<PathBuf>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

/// `flatsync events ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum EventsCommand {
    /// Events, newest first.
    List {
        #[command(flatten)]
        target: Target,
        /// Only events with this status: pending, done, failed, skipped or unrouted.
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// Only events whose topic matches this glob (`*` matches any run of characters).
        #[arg(long, value_name = "GLOB")]
        topic: Option<String>,
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// One event: its body pretty-printed, deliveries, streams and checkpoints.
    Show {
        /// The event id.
        id: String,
        #[command(flatten)]
        target: Target,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

/// Which dead letters `retry` and `drop` act on.
#[derive(Debug, Args)]
pub(crate) struct Which {
    /// The dead letters of this event.
    #[arg(
        long,
        value_name = "ID",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    event: Option<String>,
    /// Every dead letter.
    #[arg(long)]
    all: bool,
    /// Only the dead letters of this sink.
    #[arg(long, value_name = "NAME")]
    sink: Option<String>,
}

impl Which {
    fn selector(&self) -> DeadLetterSelector {
        match &self.event {
            Some(event_id) => DeadLetterSelector::Event {
                event_id: event_id.clone(),
                sink: self.sink.clone(),
            },
            None => DeadLetterSelector::All {
                sink: self.sink.clone(),
            },
        }
    }
}

/// `flatsync dead-letter ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum DeadLetterCommand {
    /// Failed deliveries, newest first.
    List {
        #[command(flatten)]
        target: Target,
        /// Only this sink's.
        #[arg(long, value_name = "NAME")]
        sink: Option<String>,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Set dead letters back to pending: delivery resumes from the checkpoint, so nothing the
    /// sink already holds is sent again.
    Retry {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        which: Which,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Give up on dead letters: they are kept as `dropped` and the event finishes without them.
    Drop {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        which: Which,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an operator command.
pub(crate) async fn run(command: OpsCommand) -> anyhow::Result<()> {
    match command {
        OpsCommand::Status { target, json } => status(&target, json),
        OpsCommand::Events { command } => events(command),
        OpsCommand::Replay {
            target,
            event,
            since,
            sink,
            json,
        } => replay(&target, event, since, sink.as_deref(), json),
        OpsCommand::DeadLetter { command } => dead_letter(command),
        OpsCommand::Doctor { target, repair } => doctor(&target, repair).await,
        OpsCommand::Plugins { config, json } => plugins(config, json),
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `2024-05-01T12:00:00Z (3m ago)`.
fn when(ms: i64, now: i64) -> String {
    format!(
        "{} ({} ago)",
        ops::format_utc(ms),
        age((now - ms).max(0) / 1_000)
    )
}

/// `42s`, `3m`, `5h`, `2d`.
pub(crate) fn age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

/// Lays rows out in left-aligned columns under a header.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// The first line of a message, at most `max` characters.
pub(crate) fn short(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() <= max && !text.contains('\n') {
        line.to_owned()
    } else {
        let cut: String = line.chars().take(max.saturating_sub(3)).collect();
        format!("{cut}...")
    }
}

fn status(target: &Target, json: bool) -> anyhow::Result<()> {
    let located = target.locate()?;
    let db = located.open(true)?;
    let report = db.status(located.config.as_ref())?;
    if json {
        return print_json(&report);
    }
    let now = report.generated_at_ms;
    println!("State database: {}", report.state_db);
    let events: Vec<String> = EventStatus::ALL
        .iter()
        .map(|s| {
            format!(
                "{} {s}",
                report.events.get(s.as_str()).copied().unwrap_or(0)
            )
        })
        .collect();
    println!("Events: {}", events.join(", "));
    if let Some(ms) = report.last_delivery_update_ms {
        println!("Last delivery update: {}", when(ms, now));
    }
    print_sinks(&report);
    print_routes(&report);
    print_polling(&report);
    print_uploads(&report, now);
    print_daemons(&report, now);
    Ok(())
}

fn print_daemons(report: &StatusReport, now: i64) {
    println!();
    if report.daemons.is_empty() {
        println!("No daemon has run on this state yet.");
        return;
    }
    let address = |addr: &Option<String>| addr.clone().unwrap_or_else(|| "-".to_owned());
    let rows: Vec<Vec<String>> = report
        .daemons
        .iter()
        .map(|d| {
            let status = &d.daemon;
            let seen = match status.stopped_at_ms {
                Some(ms) => format!("stopped {}", when(ms, now)),
                None => format!("seen {}", when(status.last_seen_ms, now)),
            };
            let mut state = d.state.as_str().to_owned();
            if d.active && report.daemons.len() > 1 {
                state.push_str(" (active)");
            }
            if let Some(claims) = d.claims {
                let _ = write!(state, ", {claims} events");
            }
            vec![
                status.daemon_id.clone(),
                state,
                status.pid.to_string(),
                status.hostname.clone(),
                address(&status.webhook_addr),
                address(&status.admin_addr),
                seen,
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["DAEMON", "STATE", "PID", "HOST", "WEBHOOK", "ADMIN", "LAST"],
            &rows
        )
    );
}

fn print_sinks(report: &StatusReport) {
    println!();
    if report.sinks.is_empty() {
        println!("No sinks: nothing has been routed yet and no config was read.");
    } else {
        let rows: Vec<Vec<String>> = report
            .sinks
            .iter()
            .map(|s| {
                let name = match s.configured {
                    Some(false) => format!("{} (not configured)", s.name),
                    _ => s.name.clone(),
                };
                vec![
                    name,
                    s.pending.to_string(),
                    s.done.to_string(),
                    s.failed.to_string(),
                    s.dropped.to_string(),
                    s.rows_delivered.to_string(),
                    s.lag_secs.map_or_else(|| "-".to_owned(), |l| age(l as i64)),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "SINK", "PENDING", "DONE", "FAILED", "DROPPED", "ROWS", "LAG"
                ],
                &rows
            )
        );
        let errors: Vec<_> = report
            .sinks
            .iter()
            .filter_map(|s| s.last_error.as_ref().map(|e| (&s.name, e)))
            .collect();
        if !errors.is_empty() {
            println!("\nLast errors:");
            for (sink, error) in errors {
                println!(
                    "  {sink}: event {} at {}: {}",
                    error.event_id,
                    ops::format_utc(error.at_ms),
                    short(&error.error, 200)
                );
            }
        }
    }
}

fn print_routes(report: &StatusReport) {
    if let Some(routes) = &report.routes {
        println!();
        let rows: Vec<Vec<String>> = routes
            .iter()
            .map(|r| {
                vec![
                    r.index.to_string(),
                    r.topics.join(", "),
                    r.sinks.join(", "),
                    r.events_pending.to_string(),
                ]
            })
            .collect();
        print!("{}", table(&["ROUTE", "TOPICS", "SINKS", "PENDING"], &rows));
    }
}

fn print_polling(report: &StatusReport) {
    if !report.polling.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = report
            .polling
            .iter()
            .map(|p| {
                vec![
                    p.environment_id.clone(),
                    ops::format_utc(p.cursor_ms),
                    p.unacknowledged.to_string(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(&["POLLED ENVIRONMENT", "CURSOR", "UNACKNOWLEDGED"], &rows)
        );
    }
}

fn print_uploads(report: &StatusReport, now: i64) {
    if !report.incomplete_uploads.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = report
            .incomplete_uploads
            .iter()
            .map(|u| {
                vec![
                    u.upload.clone(),
                    u.origin.clone(),
                    match u.parts_expected {
                        Some(expected) => format!("{} of {expected}", u.parts_received),
                        None => format!("{} (last not yet seen)", u.parts_received),
                    },
                    when(u.first_received_at_ms, now),
                ]
            })
            .collect();
        print!(
            "{}",
            table(&["INCOMPLETE UPLOAD", "FROM", "PARTS", "FIRST PART"], &rows)
        );
    }
}

fn events(command: EventsCommand) -> anyhow::Result<()> {
    match command {
        EventsCommand::List {
            target,
            status,
            topic,
            limit,
            json,
        } => {
            let status = match status.as_deref() {
                None => None,
                Some(text) => match ops::parse_event_status(text) {
                    Some(status) => Some(status),
                    None => {
                        bail!("--status `{text}`: use pending, done, failed, skipped or unrouted")
                    }
                },
            };
            let located = target.locate()?;
            let db = located.open(true)?;
            let events = db.list_events(&EventFilter {
                status,
                topic: topic.as_deref().map(TopicPattern::new),
                limit,
            })?;
            if json {
                return print_json(&events);
            }
            print_events(&events);
            Ok(())
        }
        EventsCommand::Show { id, target, json } => {
            let located = target.locate()?;
            let db = located.open(true)?;
            let Some(event) = db.show_event(&id)? else {
                bail!("no event `{id}` in {}", db.path().display());
            };
            if json {
                return print_json(&event);
            }
            print_event(&event)
        }
    }
}

fn print_events(events: &[EventSummary]) {
    if events.is_empty() {
        println!("No events.");
        return;
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let sinks = e
                .deliveries
                .iter()
                .map(|d| format!("{}:{}", d.sink, d.status))
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                ops::format_utc(e.received_at_ms),
                e.event_id.clone(),
                e.status.to_string(),
                e.topic.clone(),
                if sinks.is_empty() {
                    "-".to_owned()
                } else {
                    sinks
                },
                e.detail
                    .as_deref()
                    .map_or_else(String::new, |d| short(d, 80)),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["RECEIVED", "EVENT", "STATUS", "TOPIC", "SINKS", "DETAIL"],
            &rows
        )
    );
}

fn print_event(event: &EventDetail) -> anyhow::Result<()> {
    let now = now_ms();
    println!("Event {}", event.event_id);
    println!("  kind:     {}", event.kind);
    println!("  topic:    {}", event.topic);
    println!("  status:   {}", event.status);
    if let Some(detail) = &event.detail {
        println!("  detail:   {detail}");
    }
    println!("  received: {}", when(event.received_at_ms, now));
    println!("  updated:  {}", when(event.updated_at_ms, now));
    println!("Deliveries:");
    if event.deliveries.is_empty() {
        println!("  none: the event was not planned");
    }
    for d in &event.deliveries {
        println!(
            "  {}: {}, {} rows, generation {}, streams [{}]{}",
            d.sink,
            d.status,
            d.rows,
            d.generation,
            d.streams.join(", "),
            d.error
                .as_deref()
                .map_or_else(String::new, |e| format!("\n    error: {e}"))
        );
    }
    println!("Streams:");
    for s in &event.streams {
        println!(
            "  {}. {} (kind {}, source {}, {} rows per page{})",
            s.ordinal,
            s.stream,
            s.kind,
            s.source_ref,
            s.page_size,
            s.total_rows
                .map_or_else(String::new, |t| format!(", {t} rows"))
        );
    }
    println!("Checkpoints:");
    for c in &event.checkpoints {
        println!("  {}", checkpoint_line(c));
    }
    if !event.group_batches.is_empty() {
        println!("Group batches:");
    }
    for b in &event.group_batches {
        match (&b.stream, b.seq) {
            (Some(stream), Some(seq)) => println!(
                "  {}: generation {}, stream {stream} batch {seq} row {}, {}",
                b.sink,
                b.generation,
                b.position.unwrap_or(0),
                if b.durable {
                    "durable"
                } else {
                    "not yet flushed"
                }
            ),
            _ => println!(
                "  {}: generation {}, group {}, waiting for a batch",
                b.sink, b.generation, b.group
            ),
        }
    }
    println!("Body:");
    match &event.body {
        serde_json::Value::String(text) => println!("{text}"),
        body => println!("{}", serde_json::to_string_pretty(body)?),
    }
    Ok(())
}

fn replay(
    target: &Target,
    event: Option<String>,
    since: Option<String>,
    sink: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let selector = match (event, since) {
        (Some(event), _) => ReplaySelector::Event(event),
        (None, Some(since)) => ReplaySelector::Since(ops::parse_since(&since, now_ms())?),
        (None, None) => bail!("say what to replay: --event ID or --since TIME"),
    };
    let located = target.locate()?;
    let mut db = located.open(false)?;
    let report = db.replay(&selector, sink, located.config.as_ref())?;
    if json {
        return print_json(&report);
    }
    for q in &report.queued {
        let into = if q.generation == 0 {
            "its planned streams".to_owned()
        } else {
            format!("streams ending in -r{}", q.generation)
        };
        let added = if q.added {
            " (sink added to the event)"
        } else {
            ""
        };
        println!(
            "Queued event {} for sink {}{added}: delivered again in full into {into}",
            q.event_id, q.sink
        );
    }
    for id in &report.replanned {
        println!("Queued event {id} to be routed again with the daemon's current config");
    }
    for s in &report.skipped {
        println!("Skipped event {}: {}", s.event_id, s.reason);
    }
    if report.queued.is_empty() && report.replanned.is_empty() {
        println!("Nothing was queued.");
    } else {
        println!(
            "The running daemon picks these up within seconds; a stopped one on its next start."
        );
    }
    Ok(())
}

fn dead_letter(command: DeadLetterCommand) -> anyhow::Result<()> {
    match command {
        DeadLetterCommand::List { target, sink, json } => {
            let located = target.locate()?;
            let db = located.open(true)?;
            let letters = db.dead_letters(sink.as_deref())?;
            if json {
                return print_json(&letters);
            }
            if letters.is_empty() {
                println!("No dead letters.");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = letters
                .iter()
                .map(|l| {
                    vec![
                        ops::format_utc(l.failed_at_ms),
                        l.event_id.clone(),
                        l.topic.clone(),
                        l.sink.clone(),
                        l.rows.to_string(),
                        short(l.error.as_deref().unwrap_or(""), 120),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["FAILED", "EVENT", "TOPIC", "SINK", "ROWS", "ERROR"],
                    &rows
                )
            );
            Ok(())
        }
        DeadLetterCommand::Retry {
            target,
            which,
            json,
        } => {
            let located = target.locate()?;
            let mut db = located.open(false)?;
            let report = db.retry_dead_letters(&which.selector())?;
            print_dead_letter_change(&report, "Retrying", json)
        }
        DeadLetterCommand::Drop {
            target,
            which,
            json,
        } => {
            let located = target.locate()?;
            let mut db = located.open(false)?;
            let report = db.drop_dead_letters(&which.selector())?;
            print_dead_letter_change(&report, "Dropped", json)
        }
    }
}

fn print_dead_letter_change(
    report: &DeadLetterReport,
    verb: &str,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        return print_json(report);
    }
    for change in &report.changed {
        println!("{verb} event {} for sink {}", change.event_id, change.sink);
    }
    for event in &report.events {
        println!(
            "Event {} is now {}{}",
            event.event_id,
            event.status,
            event
                .detail
                .as_deref()
                .map_or_else(String::new, |d| format!(": {d}"))
        );
    }
    for s in &report.skipped {
        println!(
            "Skipped event {} for sink {}: {}",
            s.event_id,
            s.sink.as_deref().unwrap_or("-"),
            s.reason
        );
    }
    if report.changed.is_empty() {
        println!("No dead letter was changed.");
    }
    Ok(())
}

/// Prints the doctor's verdict lines and counts the problems.
#[derive(Debug, Default)]
struct Verdicts {
    problems: usize,
}

impl Verdicts {
    fn ok(&self, what: &str) {
        println!("ok       {what}");
    }

    fn problem(&mut self, what: &str) {
        self.problems += 1;
        let mut lines = what.lines();
        println!("PROBLEM  {}", lines.next().unwrap_or(""));
        for line in lines {
            println!("         {line}");
        }
    }
}

async fn doctor(target: &Target, repair: bool) -> anyhow::Result<()> {
    let located = target.locate()?;
    let mut verdicts = Verdicts::default();
    let active_daemon = if located.is_postgres() {
        check_postgres_state(&located, &mut verdicts)
    } else {
        check_state(&located, repair, &mut verdicts);
        None
    };
    match &located.config {
        Some(config) => {
            let daemon_running = active_daemon.is_some()
                || ops::daemon_using_state(&located.state_dir, Some(config)).is_some();
            for check in ops::check_sinks(config, !daemon_running).await {
                let line = format!(
                    "sink `{}` ({}): {}",
                    check.sink, check.plugin, check.message
                );
                if check.ok {
                    verdicts.ok(&line);
                } else {
                    verdicts.problem(&line);
                }
            }
            if config.sinks.is_empty() {
                verdicts.problem(&format!(
                    "no sinks are configured in {}: events have nowhere to go",
                    config.path.display()
                ));
            }
            for check in ops::check_flatfile(config).await {
                let line = match check.outcome {
                    ops::ApiOutcome::NotConfigured => {
                        format!("Flatfile API keys: {}", check.outcome.explain())
                    }
                    _ => format!(
                        "{} {} with the key from {}: {}",
                        check.api,
                        check.url,
                        check.key_source,
                        check.outcome.explain()
                    ),
                };
                if check.outcome.is_ok() {
                    verdicts.ok(&line);
                } else {
                    verdicts.problem(&line);
                }
            }
        }
        None => println!(
            "note     sinks and Flatfile API keys not checked: no config read (--state-dir)"
        ),
    }
    match verdicts.problems {
        0 => Ok(()),
        1 => bail!("doctor found 1 problem"),
        n => bail!("doctor found {n} problems"),
    }
}

/// Checks a PostgreSQL state: reachable, this build's schema, the role's privileges, and
/// which daemon is active (returned). There is no file to repair: `--repair` does nothing here.
fn check_postgres_state(located: &Located, verdicts: &mut Verdicts) -> Option<String> {
    let health = located
        .open(true)
        .and_then(|db| Ok((db.path().display().to_string(), db.postgres_health()?)));
    let (at, health) = match health {
        Ok((at, Some(health))) => (at, health),
        Ok((at, None)) => {
            verdicts.problem(&format!("state database {at}: not PostgreSQL"));
            return None;
        }
        Err(e) => {
            verdicts.problem(&format!("state database: {e:#}"));
            return None;
        }
    };
    verdicts.ok(&format!(
        "state database {at}: reachable as {} (PostgreSQL {}), schema version {}, {} events",
        health.user,
        health.server_version,
        flatsync_core::state::SCHEMA_VERSION,
        health.events
    ));
    if health.missing_privileges.is_empty() {
        verdicts.ok(&format!(
            "state database {at}: {} may read and write every state table",
            health.user
        ));
    } else {
        verdicts.problem(&format!(
            "state database {at}: {} lacks SELECT, INSERT, UPDATE or DELETE on {}",
            health.user,
            health.missing_privileges.join(", ")
        ));
    }
    if !health.ends_idle_sessions() {
        verdicts.problem(&format!(
            "state database {at}: PostgreSQL {} does not end idle sessions \
             (idle_session_timeout, PostgreSQL 14): a paused daemon keeps the active role",
            health.server_version
        ));
    }
    match &health.active_daemon {
        Some(daemon) => verdicts.ok(&format!("state database {at}: active daemon {daemon}")),
        None => verdicts.ok(&format!("state database {at}: no daemon is active")),
    }
    health.active_daemon
}

fn check_state(located: &Located, repair: bool, verdicts: &mut Verdicts) {
    let inspection = ops::inspect_state(&located.state_dir);
    let path = inspection.path.display().to_string();
    match inspection.health {
        StateHealth::Missing => verdicts.ok(&format!(
            "state database {path}: not created yet; the daemon creates it on its first start"
        )),
        StateHealth::Healthy => verdicts.ok(&format!(
            "state database {path}: integrity ok, schema version {}, {} events",
            inspection
                .schema_version
                .map_or_else(|| "?".to_owned(), |v| v.to_string()),
            inspection
                .events
                .map_or_else(|| "no".to_owned(), |n| n.to_string())
        )),
        StateHealth::Unusable => verdicts.problem(&format!(
            "state database {path}: {}",
            inspection.problems.join("; ")
        )),
        StateHealth::Damaged if !repair => {
            let mut text = format!("state database {path} is damaged:\n");
            for problem in inspection.problems.iter().take(5) {
                let _ = writeln!(text, "  {problem}");
            }
            text.push_str(
                "Stop the daemon and run `flatsync doctor --repair`: it moves the damaged file \
                 to a quarantine folder next to it\nand rebuilds the database from every row \
                 that can still be read, telling which events, if any, were lost.",
            );
            verdicts.problem(&text);
        }
        StateHealth::Damaged => repair_state(located, &path, &inspection.problems, verdicts),
    }
}

fn repair_state(located: &Located, path: &str, problems: &[String], verdicts: &mut Verdicts) {
    println!(
        "         state database {path} is damaged: {}",
        problems.first().map_or("", String::as_str)
    );
    if let Some(reason) = ops::daemon_using_state(&located.state_dir, located.config.as_ref()) {
        verdicts.problem(&format!("state database {path} not repaired: {reason}"));
        return;
    }
    match ops::repair_state(&located.state_dir) {
        Err(error) => verdicts.problem(&format!("state database {path}: repair failed: {error}")),
        Ok(report) => {
            for line in report.explanation().lines() {
                println!("         {line}");
            }
            let after = ops::inspect_state(&located.state_dir);
            if after.health == StateHealth::Healthy {
                verdicts.ok(&format!(
                    "state database {path}: repaired; {} events salvaged, {} lost; the damaged \
                     files are in {}",
                    after.events.unwrap_or(0),
                    report.events_lost(),
                    report.quarantine_dir.display()
                ));
            } else {
                verdicts.problem(&format!(
                    "state database {path}: still not healthy after the repair: {}",
                    after.problems.join("; ")
                ));
            }
        }
    }
}

fn plugins(config: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => Some(Config::load(&path)?),
        None if Path::new(DEFAULT_CONFIG).exists() => {
            Some(Config::load(Path::new(DEFAULT_CONFIG))?)
        }
        None => None,
    };
    let plugin_dir = config.as_ref().and_then(|c| c.daemon.plugin_dir.as_deref());
    let sinks = config.as_ref().map(|c| c.sinks.clone()).unwrap_or_default();
    let scan = ops::scan_plugins(plugin_dir, &sinks);
    if json {
        return print_json(&scan);
    }
    println!("Plugin search path, in order:");
    for dir in &scan.search_dirs {
        println!("  {}", dir.display());
    }
    println!();
    if scan.plugins.is_empty() {
        println!("No plugin libraries (*.so) found.");
    } else {
        let rows: Vec<Vec<String>> = scan
            .plugins
            .iter()
            .map(|p| match &p.error {
                None => vec![
                    p.name.clone().unwrap_or_default(),
                    p.version.clone().unwrap_or_default(),
                    format!(
                        "{}.{}",
                        p.abi_major.unwrap_or_default(),
                        p.abi_minor.unwrap_or_default()
                    ),
                    if p.used_by.is_empty() {
                        "-".to_owned()
                    } else {
                        p.used_by.join(", ")
                    },
                    p.path.display().to_string(),
                ],
                Some(error) => vec![
                    "(not loadable)".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    if p.used_by.is_empty() {
                        "-".to_owned()
                    } else {
                        p.used_by.join(", ")
                    },
                    format!("{}: {}", p.path.display(), short(error, 200)),
                ],
            })
            .collect();
        print!(
            "{}",
            table(&["PLUGIN", "VERSION", "ABI", "USED BY", "PATH"], &rows)
        );
    }
    for sink in scan.sinks.iter().filter(|s| s.error.is_some()) {
        println!(
            "\nsink `{}`: plugin `{}` not found: {}",
            sink.sink,
            sink.plugin,
            sink.error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// One checkpoint as `events show` and `flatsync top`'s detail print it.
pub(crate) fn checkpoint_line(c: &flatsync_core::ops::CheckpointInfo) -> String {
    format!(
        "{} {}: next batch {}, {} rows{}",
        c.sink,
        c.stream,
        c.next_seq,
        c.rows,
        if c.complete { ", complete" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_trim_the_last() {
        let text = table(
            &["A", "LONGER"],
            &[
                vec!["x".to_owned(), "1".to_owned()],
                vec!["wide cell".to_owned(), "2".to_owned()],
            ],
        );
        assert_eq!(text, "A          LONGER\nx          1\nwide cell  2\n");
    }

    #[test]
    fn ages_and_messages_are_shortened_for_terminals() {
        assert_eq!(age(59), "59s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 3_600), "3h");
        assert_eq!(age(3 * 86_400), "3d");
        assert_eq!(short("one line", 20), "one line");
        assert_eq!(short("first\nsecond", 20), "first...");
        assert_eq!(short("abcdefghij", 6), "abc...");
    }
}
