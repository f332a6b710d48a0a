//! `flatsync completions` and `flatsync man`: shell completions and manual pages generated from
//! the command-line definition itself, so they cannot drift from the commands they describe.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use clap_complete::Shell;

/// `flatsync completions`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell whose completion script is printed to stdout.
    #[arg(value_enum, required_unless_present = "out", conflicts_with = "out")]
    shell: Option<Shell>,
    /// Write the scripts of every shell into this folder instead: flatsync.bash, _flatsync
    /// (zsh), flatsync.fish, flatsync.elv and _flatsync.ps1.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Prints one shell's completion script, or writes every shell's into a folder.
pub(crate) fn completions(mut command: clap::Command, args: CompletionsArgs) -> anyhow::Result<()> {
    let name = command.get_name().to_owned();
    let mut stdout = std::io::stdout().lock();
    if let Some(shell) = args.shell {
        // Generated into memory first: clap_complete panics on a failed write, and a closed
        // pipe (`| head`) is an error to report, not a crash.
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, name, &mut script);
        stdout
            .write_all(&script)
            .context("cannot print the completion script")?;
        return Ok(());
    }
    let dir = args.out.context("give a shell or --out")?;
    create_dir(&dir)?;
    for shell in Shell::value_variants() {
        let path =
            clap_complete::generate_to(*shell, &mut command, &name, &dir).with_context(|| {
                format!(
                    "cannot write the {shell} completions into {}",
                    dir.display()
                )
            })?;
        writeln!(stdout, "wrote {}", path.display())?;
    }
    Ok(())
}

/// Writes `flatsync.1` and a page per subcommand, nested ones included
/// (`flatsync-events-list.1`), into `dir`.
pub(crate) fn man(command: clap::Command, dir: &Path) -> anyhow::Result<()> {
    create_dir(dir)?;
    // `help` is no command of its own: each page already lists the options.
    let mut command = command.disable_help_subcommand(true);
    // Building names every subcommand after its parents (`flatsync-events-list`), the page name.
    command.build();
    let source = format!(
        "{} {}",
        command.get_name(),
        command.get_version().unwrap_or_default()
    );
    let mut written = Vec::new();
    write_pages(&command, &source, dir, &mut written)?;
    let mut stdout = std::io::stdout().lock();
    for path in &written {
        writeln!(stdout, "wrote {}", path.display())?;
    }
    Ok(())
}

/// Writes the page of `command` and of each of its subcommands. `source` is the footer of
/// every page: flatsync and its version, also on the pages of subcommands, which have none.
fn write_pages(
    command: &clap::Command,
    source: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let page = clap_mangen::Man::new(command.clone()).source(source);
    let path = page
        .generate_to(dir)
        .with_context(|| format!("cannot write a manual page into {}", dir.display()))?;
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, source, dir, written)?;
    }
    Ok(())
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}
