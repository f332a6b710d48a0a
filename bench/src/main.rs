//! `flatsync-bench`: builds the release binaries, runs the benchmark of issue 12 and prints its
//! table (see BENCHMARKS.md).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::Parser;
use flatsync_bench::{DEFAULT_PAGES_IN_FLIGHT, Plan};

/// What `cargo build --release` builds for the benchmark.
const PACKAGES: [&str; 6] = [
    "flatsync",
    "flatfile-sim",
    "flatsync-sink-csv-folder",
    "flatsync-sink-sqlite",
    "flatsync-sink-jsonl-folder",
    "flatsync-sink-postgres",
];

#[derive(Debug, Parser)]
#[command(
    name = "flatsync-bench",
    about = "Runs the flatsync benchmark (issue 12) and prints one line per case",
    long_about = "Runs the flatsync benchmark (issue 12) and prints one line per case.\n\n\
Builds the release binaries (flatsync, flatfile-sim, the csv-folder, sqlite, jsonl-folder and \
postgres plugins) with cargo, unless --bin-dir names a directory that holds them. Every process runs on \
127.0.0.1 with its state in a temporary directory; the postgres sink, and the daemon's state \
in the `(postgres state)` intake and drain cases, go into databases of each run's own on the \
server of FLATSYNC_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres), \
dropped after the run. See BENCHMARKS.md for what each line measures."
)]
struct Cli {
    /// One run per case and the 100,000 sizes only (rows, pending events, restart stream).
    #[arg(long)]
    quick: bool,
    /// Runs per case; each line is the median [default: 3, or 1 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    runs: Option<u64>,
    /// Only the cases whose name contains PATTERN, e.g. "legacy csv", "intake" or
    /// "postgres" (the postgres sink and the postgres state); several patterns separated by
    /// commas select the cases of each.
    #[arg(long, value_name = "PATTERN")]
    only: Option<String>,
    /// Events posted at 32 connections, and so drained as the backlog [default: 100,000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    events: Option<u64>,
    /// Events pending in the memory case [default: 1,000,000, or 100,000 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pending_events: Option<u64>,
    /// Also write the table as Markdown to FILE.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Use the binaries and plugins in DIR instead of building them.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Set [fetch] pages_in_flight in the daemon's config (and read the wire floor over as
    /// many connections) [default: the daemon's own default, 4].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pages_in_flight: Option<u64>,
    /// Directory for the runs' temporary directories [default: the system's].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("flatsync-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let bin_dir = match cli.bin_dir {
        Some(dir) => dir,
        None => build_release()?,
    };
    let mut plan = if cli.quick {
        Plan::quick(bin_dir)
    } else {
        Plan::full(bin_dir)
    };
    if let Some(runs) = cli.runs {
        plan.runs = usize::try_from(runs).context("--runs is too large")?;
    }
    if let Some(pages) = cli.pages_in_flight {
        let pages = usize::try_from(pages).context("--pages-in-flight is too large")?;
        plan.pages_in_flight = Some(pages);
        plan.wire_connections = pages;
    } else {
        plan.wire_connections = DEFAULT_PAGES_IN_FLIGHT;
    }
    if let Some(dir) = cli.work_dir {
        plan.work_dir = dir;
    }
    plan.only = cli.only;
    if let Some(events) = cli.events {
        plan.intake_events = events;
    }
    if let Some(events) = cli.pending_events {
        plan.pending_events = events;
    }
    eprintln!(
        "flatsync-bench: {} run(s) per case, binaries from {}",
        plan.runs,
        plan.bin_dir.display()
    );
    let lines = flatsync_bench::run(&plan, |line| {
        eprintln!(
            "{}",
            flatsync_bench::plain(std::slice::from_ref(line))
                .lines()
                .nth(1)
                .unwrap_or_default()
        );
    })?;
    if lines.is_empty() {
        bail!("no case matches --only");
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(flatsync_bench::plain(&lines).as_bytes())
        .context("cannot write the table")?;
    if let Some(path) = cli.markdown {
        std::fs::write(&path, flatsync_bench::markdown(&lines))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// `cargo build --release` of the benchmarked packages; the directory they land in (this
/// binary's own, since `cargo run --release` built it there).
fn build_release() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "--release"]);
    for package in PACKAGES {
        command.args(["-p", package]);
    }
    eprintln!("flatsync-bench: building the release binaries");
    let status = command.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let dir = exe
        .parent()
        .context("this binary is in no directory")?
        .to_path_buf();
    if !dir.join("flatsync").is_file() {
        bail!(
            "{} holds no flatsync binary: run this with `cargo run --release -p flatsync-bench`, or pass --bin-dir",
            dir.display()
        );
    }
    Ok(dir)
}
