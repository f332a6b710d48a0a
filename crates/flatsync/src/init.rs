//! `flatsync init`: a first, minimal config from a few answers, asked on a terminal or given as
//! flags, then checked the way `flatsync check` checks a config.
//!
//! The file names every secret by an environment variable and never holds one, so init never
//! asks for a secret: the next steps it prints say which variables to set.

use std::fmt;
use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

/// Environment variable the written config names for the Platform secret key.
const SECRET_KEY_ENV: &str = "FLATFILE_SECRET_KEY";
/// Environment variable the written config names for the legacy Portal API key.
const LEGACY_KEY_ENV: &str = "FLATFILE_LEGACY_API_KEY";
/// Environment variable the written config names for the webhook's secret path segment.
const PATH_SECRET_ENV: &str = "FLATSYNC_WEBHOOK_PATH_SECRET";
/// Environment variable the written config names for the webhook's bearer token.
const TOKEN_ENV: &str = "FLATSYNC_WEBHOOK_TOKEN";
const DEFAULT_API_URL: &str = "https://platform.flatfile.com/api";
const DEFAULT_LEGACY_API_URL: &str = "https://api.us.flatfile.io";
const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
const WEBHOOK_PATH: &str = "/flatfile/webhook";
/// The name of the one `[environments.NAME]` table init writes.
const ENVIRONMENT_NAME: &str = "main";

/// `flatsync init`'s flags. Each choice left out is asked for when stdin is a terminal.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// How events reach flatsync [asked for on a terminal; required otherwise].
    #[arg(long, value_enum)]
    source: Option<Source>,
    /// The Flatfile environment id (us_env_...): required to poll; with webhooks, optional.
    #[arg(long, value_name = "ID", value_parser = parse_environment_id)]
    environment: Option<String>,
    /// Where the imported rows go [asked for on a terminal; required otherwise].
    #[arg(long, value_enum)]
    sink: Option<SinkKind>,
    /// The sink's folder (csv, jsonl) or database file (sqlite) [default: csv/, jsonl/ or
    /// imports.db next to the config file].
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Where flatsync keeps its state database [default: state/ next to the config file].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Address the webhook listener binds (webhook source) [default: 127.0.0.1:8787].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// How webhook senders prove who they are (webhook source) [default: path-secret].
    #[arg(long, value_enum, value_name = "HOW")]
    webhook_auth: Option<WebhookAuth>,
    // The help is an attribute, not a doc comment: rustdoc would want the URLs as links.
    #[arg(
        long,
        value_name = "URL",
        help = "Flatfile's Platform API root [default: https://platform.flatfile.com/api]"
    )]
    api_url: Option<String>,
    #[arg(
        long,
        value_name = "URL",
        help = "Flatfile's legacy Portal API (webhook source) [default: https://api.us.flatfile.io]"
    )]
    legacy_api_url: Option<String>,
    /// The config file to write.
    #[arg(long, short, value_name = "PATH", default_value = "flatsync.toml")]
    config: PathBuf,
    /// Replace the config file when it exists.
    #[arg(long)]
    force: bool,
}

/// How events reach flatsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Source {
    /// Flatfile posts events to flatsync's listener (legacy Portal and Platform)
    Webhook,
    /// flatsync polls the Platform events API; nothing to expose
    Poll,
}

/// The one sink a first config has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SinkKind {
    /// One CSV file per import or sheet, in a folder
    Csv,
    /// One table per sheet in a SQLite database, one row per record
    Sqlite,
    /// One JSON Lines file per import or sheet, in a folder
    Jsonl,
}

impl SinkKind {
    /// The sink's name in the config, as config.example.toml names sinks of this plugin.
    fn name(self) -> &'static str {
        match self {
            SinkKind::Csv => "archive",
            SinkKind::Sqlite => "warehouse",
            SinkKind::Jsonl => "lines",
        }
    }

    fn plugin(self) -> &'static str {
        match self {
            SinkKind::Csv => "csv-folder",
            SinkKind::Sqlite => "sqlite",
            SinkKind::Jsonl => "jsonl-folder",
        }
    }

    /// The output's default name next to the config file.
    fn default_out(self) -> &'static str {
        match self {
            SinkKind::Csv => "csv",
            SinkKind::Sqlite => "imports.db",
            SinkKind::Jsonl => "jsonl",
        }
    }
}

/// How webhook senders authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WebhookAuth {
    /// A secret path segment in the URL, for senders that take only a URL (the legacy
    /// dashboard, Flatfile's forwarder and egress plugins)
    PathSecret,
    /// An `Authorization: Bearer` token, for your own listener code
    Token,
    /// None: only behind a proxy that authenticates senders
    None,
}

/// A choice with no flag and no terminal to ask on: a usage error, exit status 2.
#[derive(Debug)]
pub(crate) struct MissingChoice {
    flag: &'static str,
    why: &'static str,
}

impl fmt::Display for MissingChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is required: {}", self.flag, self.why)
    }
}

impl std::error::Error for MissingChoice {}

/// One question: the flag that answers it instead, and what is asked.
struct Question {
    flag: &'static str,
    text: &'static str,
}

const SOURCE: Question = Question {
    flag: "--source",
    text: "How do events reach flatsync?",
};
const ENVIRONMENT: Question = Question {
    flag: "--environment",
    text: "Flatfile environment id (us_env_...)",
};
const LISTEN: Question = Question {
    flag: "--listen",
    text: "Address the webhook listener binds",
};
const WEBHOOK_AUTH: Question = Question {
    flag: "--webhook-auth",
    text: "How do webhook senders prove who they are?",
};
const SINK: Question = Question {
    flag: "--sink",
    text: "Where do the imported rows go?",
};
const OUT: Question = Question {
    flag: "--out",
    text: "The sink's folder or database file",
};
const STATE_DIR: Question = Question {
    flag: "--state-dir",
    text: "Where flatsync keeps its state database",
};

/// Asks on a terminal, or, without one, takes the default or names the missing flag. Generic
/// over the streams so the questions are tested without a terminal.
struct Prompts<R, W> {
    terminal: Option<(R, W)>,
}

impl<R: BufRead, W: Write> Prompts<R, W> {
    fn missing(question: &Question) -> anyhow::Error {
        MissingChoice {
            flag: question.flag,
            why: "stdin is not a terminal to ask on, so give it as a flag",
        }
        .into()
    }

    /// One line of input, trimmed, after `prompt`; `None` at the end of input.
    fn line(&mut self, question: &Question, prompt: &str) -> anyhow::Result<String> {
        let Some((input, output)) = self.terminal.as_mut() else {
            return Err(Self::missing(question));
        };
        write!(output, "{prompt}")?;
        output.flush()?;
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            writeln!(output)?;
            return Err(MissingChoice {
                flag: question.flag,
                why: "the input ended before it was answered",
            }
            .into());
        }
        Ok(line.trim().to_owned())
    }

    fn say(&mut self, text: &str) -> anyhow::Result<()> {
        if let Some((_, output)) = self.terminal.as_mut() {
            writeln!(output, "{text}")?;
        }
        Ok(())
    }

    /// `given` when a flag gave it; else one of `T`'s values, by number or name, or `default`.
    fn choice<T: ValueEnum + Copy>(
        &mut self,
        given: Option<T>,
        question: &Question,
        default: Option<T>,
    ) -> anyhow::Result<T> {
        if let Some(value) = given {
            return Ok(value);
        }
        if self.terminal.is_none() {
            return default.ok_or_else(|| Self::missing(question));
        }
        let variants = T::value_variants();
        self.say(question.text)?;
        for (number, variant) in variants.iter().enumerate() {
            let value = possible_value(variant);
            let help = value.get_help().map(|h| h.to_string()).unwrap_or_default();
            self.say(&format!(
                "  {}) {:<12} {help}",
                number + 1,
                value.get_name()
            ))?;
        }
        let prompt = match default {
            Some(d) => format!("{} [{}]: ", question.flag, possible_value(&d).get_name()),
            None => format!("{} [1-{}]: ", question.flag, variants.len()),
        };
        loop {
            let answer = self.line(question, &prompt)?;
            if answer.is_empty() {
                match default {
                    Some(d) => return Ok(d),
                    None => continue,
                }
            }
            if let Some(value) = answer
                .parse::<usize>()
                .ok()
                .and_then(|n| variants.get(n.checked_sub(1)?))
            {
                return Ok(*value);
            }
            if let Ok(value) = T::from_str(&answer, true) {
                return Ok(value);
            }
            self.say(&format!(
                "`{answer}` is none of these: type its number or name"
            ))?;
        }
    }

    /// `given` when a flag gave it; else a typed answer `parse` accepts (an empty answer is
    /// `default` when there is one), or `default` without a terminal.
    fn text<T>(
        &mut self,
        given: Option<T>,
        question: &Question,
        default: Option<&str>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> anyhow::Result<T> {
        if let Some(value) = given {
            return Ok(value);
        }
        if self.terminal.is_none() {
            let default = default.ok_or_else(|| Self::missing(question))?;
            return parse(default).map_err(anyhow::Error::msg);
        }
        let prompt = match default {
            Some("") => format!("{} ({}; empty for none): ", question.text, question.flag),
            Some(d) => format!("{} ({}) [{d}]: ", question.text, question.flag),
            None => format!("{} ({}): ", question.text, question.flag),
        };
        loop {
            let mut answer = self.line(question, &prompt)?;
            if answer.is_empty() {
                match default {
                    Some(d) => d.clone_into(&mut answer),
                    None => continue,
                }
            }
            match parse(&answer) {
                Ok(value) => return Ok(value),
                Err(e) => self.say(&e)?,
            }
        }
    }
}

fn possible_value<T: ValueEnum>(value: &T) -> clap::builder::PossibleValue {
    value
        .to_possible_value()
        .expect("init's choices skip no variant")
}

/// Accepts what looks like a Flatfile environment id: `<region>_env_<id>`, nothing a TOML
/// string or a shell would need to quote.
fn parse_environment_id(text: &str) -> Result<String, String> {
    let id = text.trim();
    let (region, rest) = id.split_once("_env_").unwrap_or(("", ""));
    let plain = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric());
    if region.is_empty() || rest.is_empty() || !plain(region) || !plain(rest) {
        return Err(format!(
            "`{text}` is not a Flatfile environment id such as us_env_AbC123 \
             (Flatfile shows it under Developer Settings)"
        ));
    }
    Ok(id.to_owned())
}

fn parse_path(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("type a path".to_owned());
    }
    Ok(PathBuf::from(text))
}

/// The webhook listener's answers.
#[derive(Debug)]
struct WebhookAnswers {
    listen: SocketAddr,
    auth: WebhookAuth,
}

/// Everything the config is written from; paths absolute.
#[derive(Debug)]
struct Answers {
    environment: Option<String>,
    webhook: Option<WebhookAnswers>,
    sink: SinkKind,
    out: PathBuf,
    state_dir: PathBuf,
    api_url: String,
    legacy_api_url: String,
}

impl Answers {
    fn source(&self) -> Source {
        match self.webhook {
            Some(_) => Source::Webhook,
            None => Source::Poll,
        }
    }
}

/// Settles every choice: flags first, then the terminal, then defaults. `config_dir` is the
/// absolute folder of the config file, where default paths go.
fn answers<R: BufRead, W: Write>(
    args: &InitArgs,
    config_dir: &Path,
    prompts: &mut Prompts<R, W>,
) -> anyhow::Result<Answers> {
    let source = prompts.choice(args.source, &SOURCE, None)?;
    let environment = match source {
        Source::Poll => Some(prompts.text(
            args.environment.clone(),
            &ENVIRONMENT,
            None,
            parse_environment_id,
        )?),
        Source::Webhook => prompts.text(
            args.environment.clone().map(Some),
            &ENVIRONMENT,
            Some(""),
            |text| match text {
                "" => Ok(None),
                id => parse_environment_id(id).map(Some),
            },
        )?,
    };
    let webhook = match source {
        Source::Webhook => Some(WebhookAnswers {
            listen: prompts.text(args.listen, &LISTEN, Some(DEFAULT_LISTEN), |text| {
                text.parse()
                    .map_err(|_| format!("`{text}` is not an address such as {DEFAULT_LISTEN}"))
            })?,
            auth: prompts.choice(
                args.webhook_auth,
                &WEBHOOK_AUTH,
                Some(WebhookAuth::PathSecret),
            )?,
        }),
        Source::Poll => {
            refuse_webhook_flags(args)?;
            None
        }
    };
    let sink = prompts.choice(args.sink, &SINK, None)?;
    let default_out = config_dir.join(sink.default_out());
    let out = prompts.text(
        args.out.clone(),
        &OUT,
        Some(&default_out.to_string_lossy()),
        parse_path,
    )?;
    let default_state = config_dir.join("state");
    let state_dir = prompts.text(
        args.state_dir.clone(),
        &STATE_DIR,
        Some(&default_state.to_string_lossy()),
        parse_path,
    )?;
    Ok(Answers {
        environment,
        webhook,
        sink,
        out: absolute(&out, OUT.flag)?,
        state_dir: absolute(&state_dir, STATE_DIR.flag)?,
        api_url: args
            .api_url
            .as_deref()
            .unwrap_or(DEFAULT_API_URL)
            .to_owned(),
        legacy_api_url: args
            .legacy_api_url
            .as_deref()
            .unwrap_or(DEFAULT_LEGACY_API_URL)
            .to_owned(),
    })
}

/// Flags that only a webhook config uses are refused for polling instead of being dropped.
fn refuse_webhook_flags(args: &InitArgs) -> anyhow::Result<()> {
    for (flag, given) in [
        ("--listen", args.listen.is_some()),
        ("--webhook-auth", args.webhook_auth.is_some()),
        ("--legacy-api-url", args.legacy_api_url.is_some()),
    ] {
        if given {
            bail!("{flag} is for --source webhook; polling uses only the Platform API");
        }
    }
    Ok(())
}

/// `path` made absolute against the current folder (a sink's paths are not resolved against
/// the config file, so the config holds absolute ones), and UTF-8 to be written as TOML.
fn absolute(path: &Path, flag: &str) -> anyhow::Result<PathBuf> {
    let absolute = std::path::absolute(path)
        .with_context(|| format!("{flag}: cannot make {} absolute", path.display()))?;
    if absolute.to_str().is_none() {
        bail!("{flag}: {} is not valid UTF-8", path.display());
    }
    Ok(absolute)
}

/// A TOML string, quoted and escaped as TOML wants.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn toml_path(path: &Path) -> String {
    toml_string(&path.to_string_lossy())
}

/// The config file: every key with one line saying what it is.
fn config_text(answers: &Answers) -> String {
    let mut text = String::from(
        "# flatsync config written by `flatsync init`. Check it with `flatsync check --config FILE`.\n\
         # Every key, with the ones left out here, is explained in config.example.toml (installed in\n\
         # /usr/share/doc/flatsync/ by the Debian package). Secrets are never written here: each is\n\
         # named by an environment variable (`*_env`), a file (`*_file`) or a systemd credential\n\
         # (`*_credential`).\n\n",
    );
    let _ = write!(
        text,
        "[daemon]\n\
         # Where flatsync keeps its state database: accepted events, progress and checkpoints.\n\
         state_dir = {}\n\
         # Sink plugins are looked for next to the flatsync binary, then in /usr/lib/flatsync/plugins;\n\
         # set plugin_dir = \"/path\" to use another folder.\n\n",
        toml_path(&answers.state_dir)
    );
    flatfile_section(&mut text, answers);
    environment_section(&mut text, answers);
    webhook_section(&mut text, answers);
    sink_and_route(&mut text, answers);
    text
}

fn flatfile_section(text: &mut String, answers: &Answers) {
    let _ = write!(
        text,
        "[flatfile]\n\
         # Flatfile's Platform API root; requests go to {{api_url}}/v1/...\n\
         api_url = {}\n\
         # Environment variable holding the Platform secret key (sk_...). Or: secret_key_file = \"/path\".\n\
         secret_key_env = {}\n",
        toml_string(&answers.api_url),
        toml_string(SECRET_KEY_ENV)
    );
    if answers.source() == Source::Webhook {
        let _ = write!(
            text,
            "# Flatfile's legacy Portal API, which the rows of legacy \"Import submitted\" webhooks come from.\n\
             legacy_api_url = {}\n\
             # Environment variable holding the legacy API key (<keyId>+<secret>); Platform users need none.\n\
             legacy_api_key_env = {}\n",
            toml_string(&answers.legacy_api_url),
            toml_string(LEGACY_KEY_ENV)
        );
    }
    text.push('\n');
}

fn environment_section(text: &mut String, answers: &Answers) {
    let Some(id) = &answers.environment else {
        return;
    };
    let _ = write!(
        text,
        "# A Flatfile environment; routes can be limited to it with environments = [\"{ENVIRONMENT_NAME}\"].\n\
         [environments.{ENVIRONMENT_NAME}]\n\
         # Flatfile's id of the environment; its events use [flatfile]'s secret key.\n\
         id = {}\n",
        toml_string(id)
    );
    if answers.source() == Source::Poll {
        text.push_str(
            "# List the events API (GET /v1/events) every 5 s and acknowledge each event once stored.\n\
             poll = true\n\
             # Where polling starts the first time: \"now\", \"beginning\" or a time such as 2026-01-31T00:00:00Z.\n\
             poll_start = \"now\"\n",
        );
    }
    text.push('\n');
}

fn webhook_section(text: &mut String, answers: &Answers) {
    let Some(webhook) = &answers.webhook else {
        return;
    };
    let _ = write!(
        text,
        "[webhook]\n\
         # Address the webhook listener binds; put a TLS-terminating proxy in front of it.\n\
         listen = {}\n\
         # Path that accepts POSTed events.\n\
         path = {}\n",
        toml_string(&webhook.listen.to_string()),
        toml_string(WEBHOOK_PATH)
    );
    let _ = match webhook.auth {
        WebhookAuth::PathSecret => write!(
            text,
            "# Environment variable holding the secret path segment (16+ characters of A-Z a-z 0-9 . _ ~ -):\n\
             # senders post to {{path}}/{{secret}}. Or: path_secret_file = \"/path\".\n\
             path_secret_env = {}\n",
            toml_string(PATH_SECRET_ENV)
        ),
        WebhookAuth::Token => write!(
            text,
            "# Environment variable holding the token senders present as `Authorization: Bearer <token>`.\n\
             # Or: token_file = \"/path\".\n\
             token_env = {}\n",
            toml_string(TOKEN_ENV)
        ),
        WebhookAuth::None => {
            text.push_str(
                "# No sender authentication: keep the listener on loopback behind a proxy that authenticates.\n",
            );
            Ok(())
        }
    };
    text.push('\n');
}

fn sink_and_route(text: &mut String, answers: &Answers) {
    let sink = answers.sink;
    let (what, key) = match sink {
        SinkKind::Csv => ("One CSV file per import or sheet, <stream>.csv", "dir"),
        SinkKind::Sqlite => ("One table per sheet, one row per record id", "path"),
        SinkKind::Jsonl => (
            "One JSON Lines file per import or sheet, <stream>.jsonl",
            "dir",
        ),
    };
    let output = match sink {
        SinkKind::Sqlite => "the database file, created if missing",
        SinkKind::Csv | SinkKind::Jsonl => "the output folder, created if missing",
    };
    let (topics, which) = match answers.source() {
        Source::Webhook => (
            "\"portalImportSubmitted\", \"job:ready\"",
            "Legacy imports (portalImportSubmitted) and Platform workbook submissions (job:ready)",
        ),
        Source::Poll => ("\"job:ready\"", "Platform workbook submissions (job:ready)"),
    };
    let _ = write!(
        text,
        "# {what}.\n\
         [sinks.{name}]\n\
         # The plugin that writes it.\n\
         plugin = {plugin}\n\
         # The plugin's settings; {key}: {output}.\n\
         config = {{ {key} = {out} }}\n\n\
         # {which}\n\
         # go to the sink; config.example.toml lists the other topics (records:*, \"*\", ...) and filters.\n\
         [[routes]]\n\
         # The event topics this route takes.\n\
         topics = [{topics}]\n\
         # The sinks they go to.\n\
         sinks = [{sinks}]\n",
        name = sink.name(),
        plugin = toml_string(sink.plugin()),
        out = toml_path(&answers.out),
        sinks = toml_string(sink.name()),
    );
}

/// Runs `flatsync init`: settles the answers, writes the file, checks it, prints what is next.
pub(crate) async fn run(args: InitArgs) -> anyhow::Result<()> {
    let path = args.config.clone();
    // Before any question, so nobody answers six of them to be told the file is there.
    if !args.force && path.exists() {
        bail!(refusal(&path));
    }
    let config_dir = absolute(&path, "--config")?
        .parent()
        .map(Path::to_path_buf)
        .context("--config names no file")?;
    let answers = if std::io::stdin().is_terminal() {
        let mut prompts = Prompts {
            terminal: Some((std::io::stdin().lock(), std::io::stderr())),
        };
        answers(&args, &config_dir, &mut prompts)?
    } else {
        let mut prompts = Prompts::<std::io::Empty, std::io::Sink> { terminal: None };
        answers(&args, &config_dir, &mut prompts)?
    };
    let text = config_text(&answers);
    // A bad --api-url is refused here, whole, before anything is written.
    flatsync_core::Config::parse(&text, &path)
        .context("these answers do not make a valid config; nothing was written")?;
    write_new(&path, &text, args.force)?;
    println!("wrote {}", path.display());
    let config = crate::load(&path)?;
    crate::check(config).await.with_context(|| {
        format!(
            "{} was written, but it does not pass the check",
            path.display()
        )
    })?;
    print!("{}", next_steps(&answers, &path));
    Ok(())
}

fn refusal(path: &Path) -> String {
    format!(
        "{} exists; pass --force to replace it, or --config to write another file",
        path.display()
    )
}

/// Writes the file, refusing to replace one unless `force` (created exclusively, so a file
/// that appeared while the questions were asked is not replaced either).
fn write_new(path: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(refusal(path)),
        _ => anyhow::Error::new(e).context(format!("cannot write {}", path.display())),
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// What to do after init: the secrets to provide (by variable name, never a value) and the
/// commands that run and watch the daemon.
fn next_steps(answers: &Answers, path: &Path) -> String {
    let config = shell_word(&path.to_string_lossy());
    let mut steps = vec![format!(
        "Give flatsync the Platform secret key (sk_...) in {SECRET_KEY_ENV}, typed so it stays \
         out of your shell history:\n       read -rs {SECRET_KEY_ENV} && export {SECRET_KEY_ENV}"
    )];
    if let Some(webhook) = &answers.webhook {
        steps.push(format!(
            "For legacy Portal imports, the legacy API key (<keyId>+<secret>) likewise in \
             {LEGACY_KEY_ENV}."
        ));
        let url = format!("https://YOUR-HOST{WEBHOOK_PATH}");
        steps.push(match webhook.auth {
            WebhookAuth::PathSecret => format!(
                "Pick the webhook's secret path segment:\n       export \
                 {PATH_SECRET_ENV}=$(openssl rand -hex 24)\n     and subscribe \
                 {url}/${PATH_SECRET_ENV} in Flatfile, through a TLS proxy to {}.",
                webhook.listen
            ),
            WebhookAuth::Token => format!(
                "Pick a bearer token for webhook senders:\n       export \
                 {TOKEN_ENV}=$(openssl rand -hex 24)\n     and have them post to {url} with \
                 `Authorization: Bearer ${TOKEN_ENV}`, through a TLS proxy to {}.",
                webhook.listen
            ),
            WebhookAuth::None => format!(
                "Have your authenticating proxy forward {url} to {}.",
                webhook.listen
            ),
        });
    }
    steps.push(format!(
        "Run it: flatsync run -c {config}\n     (as a service: see \"Install as a service\" in \
         the README for secrets as systemd credentials)"
    ));
    steps.push(format!("Watch it: flatsync status -c {config}"));
    let mut text = String::from("\nNext steps:\n");
    for (number, step) in steps.iter().enumerate() {
        let _ = writeln!(text, "  {}. {step}", number + 1);
    }
    text
}

/// `text` quoted for a POSIX shell when it holds anything but plain path characters.
fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:,@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    fn args(flags: &[&str]) -> InitArgs {
        Cli::try_parse_from(std::iter::once("init").chain(flags.iter().copied()))
            .unwrap_or_else(|e| panic!("flags {flags:?}: {e}"))
            .init
    }

    /// The answers typed as `input` (one line each), and what the terminal showed.
    fn ask(flags: &[&str], input: &str) -> (anyhow::Result<Answers>, String) {
        let mut prompts = Prompts {
            terminal: Some((input.as_bytes(), Vec::new())),
        };
        let answers = answers(&args(flags), Path::new("/srv/imports"), &mut prompts);
        let shown = prompts.terminal.map(|(_, out)| out).unwrap_or_default();
        (
            answers,
            String::from_utf8(shown).expect("prompts are UTF-8"),
        )
    }

    fn without_terminal(flags: &[&str]) -> anyhow::Result<Answers> {
        let mut prompts = Prompts::<&[u8], Vec<u8>> { terminal: None };
        answers(&args(flags), Path::new("/srv/imports"), &mut prompts)
    }

    #[test]
    fn a_terminal_is_asked_each_choice_left_out_and_takes_numbers_names_and_defaults() {
        // Source by number, environment, sink by name, then the two default paths.
        let (answers, shown) = ask(&[], "2\nus_env_Ab12\nsqlite\n\n\n");
        let answers = answers.expect("every question answered");
        assert_eq!(answers.source(), Source::Poll);
        assert_eq!(answers.environment.as_deref(), Some("us_env_Ab12"));
        assert_eq!(answers.sink, SinkKind::Sqlite);
        assert_eq!(answers.out, Path::new("/srv/imports/imports.db"));
        assert_eq!(answers.state_dir, Path::new("/srv/imports/state"));
        for asked in [
            SOURCE.text,
            ENVIRONMENT.text,
            SINK.text,
            OUT.text,
            STATE_DIR.text,
        ] {
            assert!(shown.contains(asked), "not asked `{asked}`:\n{shown}");
        }
        assert!(
            !shown.contains(LISTEN.text),
            "a polling config has no listener to ask about:\n{shown}"
        );
    }

    #[test]
    fn flags_are_not_asked_again_and_a_wrong_answer_is_asked_again() {
        let (answers, shown) = ask(
            &["--source", "webhook", "--out", "/data/csv"],
            // Environment (refused, then none), listen and authentication by default, sink
            // (refused twice, then by number), state folder by default.
            "eu_env_\n\n\n\ncarrier-pigeon\n9\n1\n\n",
        );
        let answers = answers.expect("every question answered");
        assert!(!shown.contains(SOURCE.text), "--source was given:\n{shown}");
        assert!(!shown.contains(OUT.text), "--out was given:\n{shown}");
        assert!(
            shown.contains("`eu_env_` is not a Flatfile environment id"),
            "an id without its part after _env_ is refused:\n{shown}"
        );
        assert_eq!(answers.environment, None, "an empty answer means none");
        assert!(
            shown.contains("`carrier-pigeon` is none of these"),
            "{shown}"
        );
        assert!(shown.contains("`9` is none of these"), "{shown}");
        let webhook = answers.webhook.expect("a webhook config");
        assert_eq!(webhook.listen, DEFAULT_LISTEN.parse().expect("an address"));
        assert_eq!(webhook.auth, WebhookAuth::PathSecret);
        assert_eq!(answers.sink, SinkKind::Csv);
        assert_eq!(answers.out, Path::new("/data/csv"));
    }

    #[test]
    fn input_that_ends_before_an_answer_names_the_flag() {
        let (answers, _) = ask(&["--source", "poll"], "");
        let error = answers.expect_err("no environment was typed");
        let missing = error
            .downcast_ref::<MissingChoice>()
            .expect("a missing choice");
        assert_eq!(missing.flag, "--environment", "{error}");
    }

    #[test]
    fn without_a_terminal_a_required_choice_names_its_flag_and_the_rest_take_defaults() {
        for (flags, flag) in [
            (&[][..], "--source"),
            (&["--source", "webhook"][..], "--sink"),
            (&["--source", "poll", "--sink", "csv"][..], "--environment"),
        ] {
            let error = without_terminal(flags).expect_err("a choice is missing");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("{flag} is required")),
                "flags {flags:?}: {error}"
            );
        }
        let answers = without_terminal(&["--source", "webhook", "--sink", "jsonl"])
            .expect("everything else has a default");
        assert_eq!(answers.out, Path::new("/srv/imports/jsonl"));
        assert_eq!(answers.state_dir, Path::new("/srv/imports/state"));
        assert_eq!(answers.api_url, DEFAULT_API_URL);
        assert_eq!(answers.legacy_api_url, DEFAULT_LEGACY_API_URL);
    }

    #[test]
    fn webhook_flags_are_refused_for_polling() {
        let error = without_terminal(&[
            "--source",
            "poll",
            "--environment",
            "us_env_x1",
            "--sink",
            "csv",
            "--listen",
            "127.0.0.1:9000",
        ])
        .expect_err("--listen means nothing to a poller");
        assert!(error.to_string().contains("--listen"), "{error}");
    }

    #[test]
    fn an_environment_flag_is_checked_by_clap() {
        let parsed = Cli::try_parse_from(["init", "--environment", "production"]);
        let error = parsed.err().expect("`production` is a name, not an id");
        assert!(
            error
                .to_string()
                .contains("is not a Flatfile environment id"),
            "{error}"
        );
    }

    /// Every combination of source, sink and webhook authentication.
    fn every_config() -> Vec<(String, String)> {
        let mut configs = Vec::new();
        for sink in ["csv", "sqlite", "jsonl"] {
            let poll = [
                "--source",
                "poll",
                "--environment",
                "us_env_x1",
                "--sink",
                sink,
            ];
            configs.push(poll.join(" "));
            for auth in ["path-secret", "token", "none"] {
                let webhook = [
                    "--source",
                    "webhook",
                    "--sink",
                    sink,
                    "--webhook-auth",
                    auth,
                ];
                configs.push(webhook.join(" "));
            }
        }
        configs.push(
            "--source webhook --environment us_env_x1 --sink csv --out /tmp/a\"quote\\d".to_owned(),
        );
        configs
            .into_iter()
            .map(|flags| {
                let flags: Vec<&str> = flags.split(' ').collect();
                let answers = without_terminal(&flags).expect("flags answer everything");
                (flags.join(" "), config_text(&answers))
            })
            .collect()
    }

    #[test]
    fn every_written_config_is_valid_and_explains_each_key() {
        for (flags, text) in every_config() {
            let config = flatsync_core::Config::parse(&text, Path::new("/srv/imports/f.toml"))
                .unwrap_or_else(|e| panic!("{flags}: {e}\n{text}"));
            assert_eq!(config.sinks.len(), 1, "{flags}");
            assert_eq!(config.routes.len(), 1, "{flags}");
            assert_eq!(
                config.webhook.is_some(),
                flags.contains("webhook"),
                "{flags}"
            );
            let lines: Vec<&str> = text.lines().collect();
            for (number, line) in lines.iter().enumerate() {
                let is_key = !line.is_empty() && !line.starts_with('#') && !line.starts_with('[');
                if is_key {
                    assert!(
                        number > 0 && lines[number - 1].starts_with('#'),
                        "{flags}: line {} `{line}` has no comment above it\n{text}",
                        number + 1
                    );
                }
            }
        }
    }

    #[test]
    fn a_polling_config_polls_its_environment_with_the_platform_key_only() {
        let answers = without_terminal(&[
            "--source",
            "poll",
            "--environment",
            "us_env_x1",
            "--sink",
            "sqlite",
            "--out",
            "/data/imports.db",
        ])
        .expect("flags answer everything");
        let text = config_text(&answers);
        let config = flatsync_core::Config::parse(&text, Path::new("/srv/imports/f.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let environment = &config.environments[ENVIRONMENT_NAME];
        assert_eq!(environment.id, "us_env_x1");
        assert!(environment.poll.is_some(), "{text}");
        assert!(config.flatfile.secret_key.is_some(), "{text}");
        assert!(config.flatfile.legacy_api_key.is_none(), "{text}");
        assert_eq!(
            config.sinks["warehouse"].config_json,
            r#"{"path":"/data/imports.db"}"#
        );
        let topics: Vec<&str> = config.routes[0].topics.iter().map(|t| t.as_str()).collect();
        assert_eq!(topics, ["job:ready"]);
    }

    #[test]
    fn next_steps_name_the_variables_and_quote_the_config_path() {
        let answers = without_terminal(&["--source", "webhook", "--sink", "csv"])
            .expect("flags answer everything");
        let steps = next_steps(&answers, Path::new("/srv/my imports/flatsync.toml"));
        for expected in [
            SECRET_KEY_ENV,
            LEGACY_KEY_ENV,
            PATH_SECRET_ENV,
            "flatsync run -c '/srv/my imports/flatsync.toml'",
        ] {
            assert!(steps.contains(expected), "no `{expected}` in:\n{steps}");
        }
        assert!(!steps.contains(TOKEN_ENV), "{steps}");
    }
}
