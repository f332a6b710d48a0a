//! The `flatsync` command: write a first config (`init`), check it, run the daemon, or try
//! everything with `demo`.

mod allocator;
mod demo;
mod generate;
mod init;
mod ops_cli;
mod scaffold;
mod service;
mod top;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use flatsync_core::Config;

/// Keeps one freed HTTP read buffer for the next: see `allocator::ReadBufferSlot`.
#[global_allocator]
static ALLOCATOR: allocator::ReadBufferSlot = allocator::ReadBufferSlot::new();

#[derive(Parser)]
#[command(
    name = "flatsync",
    version,
    about = "Moves imported data out of Flatfile into CSV folders, SQLite and your own sinks."
)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, `flatsync_core=debug` [default: info for run, warn for
    /// the other commands].
    #[arg(long, global = true, env = "FLATSYNC_LOG")]
    log: Option<String>,
    /// Log lines as text (for terminals) or JSON objects (for journald and log shippers);
    /// `auto` picks JSON when stderr is connected to the journal.
    #[arg(long, global = true, env = "FLATSYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGINT or SIGTERM; SIGHUP or an edit of the file reloads the config.
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file, then load every plugin and create every sink once.
    Check {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the whole pipeline against a built-in Flatfile simulator: no account needed.
    Demo {
        /// Rows in the legacy import, and rows in the Platform workbook in all.
        #[arg(long, default_value_t = 10_000)]
        rows: u64,
        /// Where the CSV files, the SQLite database and the state go.
        #[arg(long, default_value = "flatsync-demo")]
        out: PathBuf,
    },
    /// Work with sink plugins: `flatsync plugin new NAME` writes a plugin crate to start from.
    Plugin {
        #[command(subcommand)]
        command: scaffold::PluginCommand,
    },
    /// Watch deliveries live: progress bars per event and sink, sink throughput, dead letters,
    /// poll cursors, retries.
    ///
    /// Reads the state database read-only (and the admin listener's /metrics when the config
    /// has one), every --interval. Keys: q quit, s sort, arrows or j/k select, Enter detail,
    /// Esc back. When stdout is not a terminal, or with --plain, prints a plain text block per
    /// interval instead; --once prints one.
    Top(top::TopArgs),
    /// Write a first config from a few answers (asked on a terminal, or given as flags), then
    /// check it.
    ///
    /// The config has one source (webhook or polling), one sink and one route, each key
    /// explained; secrets are named by environment variables, never written or asked for.
    /// Choices left out are asked for when stdin is a terminal; otherwise --source, --sink and,
    /// to poll, --environment are required.
    Init(init::InitArgs),
    /// Print the completion script of a shell (bash, zsh, fish, elvish, powershell).
    ///
    /// For example `flatsync completions bash > ~/.local/share/bash-completion/completions/flatsync`.
    /// The Debian package installs them for bash, zsh and fish.
    Completions(generate::CompletionsArgs),
    /// Write the manual pages: flatsync.1 and one per subcommand (flatsync-events-list.1, ...).
    Man {
        /// The folder to write them into, created if missing.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    #[command(flatten)]
    Ops(ops_cli::OpsCommand),
}

fn main() -> ExitCode {
    allocator::tune();
    let cli = Cli::parse();
    // The demo prints its own summary; its per-batch logs would bury it.
    // Commands that print their own report keep the log to warnings; the daemon logs its work.
    let default_filter = if matches!(cli.command, Command::Run { .. }) {
        "info"
    } else {
        "warn"
    };
    let filter = match &cli.log {
        Some(filter) => match tracing_subscriber::EnvFilter::try_new(filter) {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("error: --log `{filter}` is not a log filter: {e}");
                return ExitCode::from(2);
            }
        },
        None => tracing_subscriber::EnvFilter::new(default_filter),
    };
    // systemd sets JOURNAL_STREAM when stderr goes to the journal.
    let json = match cli.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(!json && text_log_colours(std::io::stderr().is_terminal()))
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.init();
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => service::run(config).await,
            Command::Check { config } => check(load(&config)?).await,
            Command::Demo { rows, out } => demo::run(rows, out).await,
            Command::Plugin { command } => scaffold::run(command),
            Command::Top(args) => top::run(args),
            Command::Init(args) => init::run(args).await,
            Command::Completions(args) => generate::completions(Cli::command(), args),
            Command::Man { out } => generate::man(Cli::command(), &out),
            Command::Ops(command) => ops_cli::run(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let usage = e.downcast_ref::<flatsync_core::ConfigError>().is_some()
                || e.downcast_ref::<init::MissingChoice>().is_some();
            if usage {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Colours in text logs only for a person at a terminal: a file, a pipe or the journal gets
/// plain text that grep and log shippers read as it is. `NO_COLOR` (no-color.org) turns them off
/// and `CLICOLOR=0` keeps them off; `CLICOLOR_FORCE` (bixense.com/clicolors) turns them on even
/// into a file. `NO_COLOR` wins over `CLICOLOR_FORCE`.
fn text_log_colours(stderr_is_terminal: bool) -> bool {
    if anstyle_query::no_color() {
        false
    } else if anstyle_query::clicolor_force() {
        true
    } else {
        stderr_is_terminal && anstyle_query::clicolor().unwrap_or(true)
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

async fn check(config: Config) -> anyhow::Result<()> {
    println!("{}: config is valid", config.path.display());
    if config.daemon.state_postgres.is_some() {
        check_postgres_state(&config)?;
    }
    let sinks = flatsync_core::start_sinks(&config, &Default::default()).await?;
    for (name, worker) in &sinks {
        let plugin = worker.plugin();
        let (major, minor) = plugin.abi();
        println!(
            "sink `{name}`: plugin {} {} (ABI {major}.{minor}) from {}: created and checked",
            plugin.name(),
            plugin.version(),
            plugin.path().display()
        );
        worker.shutdown().await;
    }
    for (index, route) in config.routes.iter().enumerate() {
        let topics: Vec<&str> = route.topics.iter().map(|t| t.as_str()).collect();
        println!(
            "route {index}: [{}] -> [{}]",
            topics.join(", "),
            route.sinks.join(", ")
        );
    }
    let polled: Vec<&str> = config
        .environments
        .iter()
        .filter(|(_, environment)| environment.poll.is_some())
        .map(|(name, _)| name.as_str())
        .collect();
    if !polled.is_empty() {
        println!("polling: environment(s) {}", polled.join(", "));
    }
    match &config.webhook {
        None if polled.is_empty() => {
            println!(
                "warning: no [webhook] section and no environment with `poll = true`: \
                 flatsync run would receive no events"
            );
        }
        None => {}
        Some(webhook) => check_webhook_auth(&config, webhook)?,
    }
    Ok(())
}

/// Connects to the PostgreSQL state as the daemon would: reachable, with this build's schema
/// (or none yet: the daemon creates it) and the privileges it needs.
fn check_postgres_state(config: &Config) -> anyhow::Result<()> {
    use flatsync_core::StateError;
    use flatsync_core::ops::{OpsDb, OpsError};
    match OpsDb::open_configured(config, true) {
        Ok(db) => {
            let at = db.path().display().to_string();
            let Some(health) = db.postgres_health()? else {
                anyhow::bail!("state database {at}: not PostgreSQL");
            };
            if !health.missing_privileges.is_empty() {
                anyhow::bail!(
                    "state database {at}: {} lacks SELECT, INSERT, UPDATE or DELETE on {}",
                    health.user,
                    health.missing_privileges.join(", ")
                );
            }
            println!(
                "state database {at}: reachable as {}, schema version {}, {} events",
                health.user,
                flatsync_core::state::SCHEMA_VERSION,
                health.events
            );
            Ok(())
        }
        Err(OpsError::State(StateError::Schema { path, found: 0, .. })) => {
            println!(
                "state database {}: reachable, no flatsync schema yet: the daemon creates it \
                 on its first start",
                path.display()
            );
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context("state database")),
    }
}

/// Reads every webhook credential as `flatsync run` would and says what each admits; warns
/// when a listener reachable from the network lets anyone in.
fn check_webhook_auth(
    config: &Config,
    webhook: &flatsync_core::config::WebhookConfig,
) -> anyhow::Result<()> {
    match flatsync_core::webhook_auth_summary(config) {
        Ok(lines) if lines.is_empty() => {
            if webhook.listen.ip().is_loopback() {
                println!(
                    "webhook authentication: none (the listener is on loopback; a proxy in \
                     front of it must authenticate senders)"
                );
            } else {
                println!(
                    "warning: [webhook] listen = {} is not a loopback address and no sender \
                     authentication is configured: anyone who can reach it can post events \
                     (set token_*, path_secret_*, signing_secret_* or legacy_jwt_secret_*)",
                    webhook.listen
                );
            }
        }
        Ok(lines) => {
            for line in lines {
                println!("webhook authentication: {line}");
            }
        }
        // A secret the daemon reads from systemd credentials or its own environment may well
        // be absent where `check` runs; a secret that is there but unusable is an error.
        Err(e) if e.is_unreadable() => {
            println!(
                "warning: webhook authentication: {e} (flatsync run refuses to start without it)"
            );
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
