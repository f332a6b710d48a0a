//! The `flatsync` command: run the daemon, check a config, or try everything with `demo`.

mod demo;
mod scaffold;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flatsync_core::{Config, RunningDaemon};

#[derive(Parser)]
#[command(
    name = "flatsync",
    version,
    about = "Moves imported data out of Flatfile into CSV folders, SQLite and your own sinks."
)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, `flatsync_core=debug` [default: info; warn for demo].
    #[arg(long, global = true, env = "FLATSYNC_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGINT or SIGTERM.
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own summary; its per-batch logs would bury it.
    let default_filter = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

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
            Command::Run { config } => run(load(&config)?).await,
            Command::Check { config } => check(load(&config)?).await,
            Command::Demo { rows, out } => demo::run(rows, out).await,
            Command::Plugin { command } => scaffold::run(command),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<flatsync_core::ConfigError>() {
                Some(_) => ExitCode::from(2),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let path = config.path.clone();
    let daemon = RunningDaemon::start(config)
        .await
        .with_context(|| format!("cannot start with {}", path.display()))?;
    tracing::info!(config = %path.display(), "flatsync running");
    wait_for_stop_signal().await?;
    tracing::info!("Stopping");
    daemon.shutdown().await;
    tracing::info!("Stopped");
    Ok(())
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot watch SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

async fn check(config: Config) -> anyhow::Result<()> {
    println!("{}: config is valid", config.path.display());
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
    if config.webhook.is_none() {
        println!("warning: no [webhook] section: flatsync run would receive no events");
    }
    Ok(())
}
